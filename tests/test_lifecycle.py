"""A relay's lifetime in-process: stopping at any moment ends it."""

import trio

from relay.daemon import Relay
from relay.plugins import Components, make_plugin_manager
from tests.conftest import make_config


def make_relay(tmp_path, receiver_url="http://127.0.0.1:9/") -> Relay:
    config = make_config(tmp_path, [{"id": "crm", "url": receiver_url}])
    pm = make_plugin_manager(config, entry_points=False)
    return Relay(config, pm, Components.collect(pm))


async def test_stop_before_it_has_started_ends_it_cleanly(tmp_path):
    relay = make_relay(tmp_path)
    relay.stop()  # a SIGTERM that arrives while it starts
    with trio.fail_after(10):
        await relay.run()
