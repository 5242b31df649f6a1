"""A relay's lifetime in-process: stopping at any moment ends it."""

import trio

from relay.daemon import Relay
from tests.conftest import make_config, relay_of


def make_relay(tmp_path, receiver_url="http://127.0.0.1:9/") -> Relay:
    return relay_of(make_config(tmp_path, [{"id": "crm", "url": receiver_url}]))


async def test_stop_before_it_has_started_ends_it_cleanly(tmp_path):
    relay = make_relay(tmp_path)
    relay.stop()  # a SIGTERM that arrives while it starts
    with trio.fail_after(10):
        await relay.run()
