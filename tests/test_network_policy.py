"""The network policy end to end: with loopback not allowed, no spelling of a loopback address
reaches a receiver listening on it; the delivery fails for good, saying why, and no connection
is made. (relay/http/netpolicy.py's own tests cover the address classes.)"""

import socket

import pytest
import trio

from relay.config import ConfigError
from relay.http.client import HTTPClient
from relay.http.netpolicy import NetworkPolicy, RefusedAddress
from relay.journal import list_deliveries
from relay.model import Request
from tests.conftest import make_config

SPELLINGS = [
    "127.0.0.1",
    "localhost",
    "127.1",
    "2130706433",  # decimal
    "0177.0.0.1",  # octal
    "0x7f.0.0.1",  # hex
    "0x7f000001",
    "[::ffff:127.0.0.1]",  # IPv4-mapped IPv6: connect() on a dual-stack socket reaches 127.0.0.1
]


@pytest.fixture
def listening():
    """A socket listening on loopback that counts the connections it is offered."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.setblocking(False)
    yield listener
    listener.close()


def accepted(listener) -> int:
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


@pytest.mark.parametrize("host", SPELLINGS)
async def test_no_spelling_of_loopback_gets_through_when_it_is_not_allowed(host, listening):
    port = listening.getsockname()[1]
    client = HTTPClient(network_policy=NetworkPolicy(allow=()))
    with pytest.raises(RefusedAddress, match="loopback address, not allowed by"):
        await client.send(Request("POST", f"http://{host}:{port}/hook", body=b"{}"))
    await trio.sleep(0.05)
    assert accepted(listening) == 0
    await client.aclose()


async def test_an_allowed_network_is_reached(listening):
    port = listening.getsockname()[1]
    client = HTTPClient(network_policy=NetworkPolicy(allow=["127.0.0.0/8"]))
    with trio.move_on_after(0.5):  # the listener never answers: what counts is the connection
        await client.send(Request("POST", f"http://localhost:{port}/hook", body=b"{}"))
    assert accepted(listening) == 1
    await client.aclose()


async def test_a_refused_delivery_fails_for_good_with_its_reason(start_relay, listening):
    port = listening.getsockname()[1]
    running = await start_relay(
        [{"id": "inside", "url": f"http://2130706433:{port}/"}], allow_networks=[]
    )
    response = await running.post({"event": "whatsapp:message:status", "payload": {}})
    assert response.status_code == 202
    state_dir = running.relay.config.relay.state_dir
    with trio.fail_after(10):
        while not (failed := list_deliveries(state_dir, state="failed")):
            await trio.sleep(0.05)
    (row,) = failed
    assert row.attempts == 1  # permanent: not retried
    assert "127.0.0.1 is a loopback address, not allowed by" in row.last_error
    assert accepted(listening) == 0


def test_allow_networks_must_be_networks(tmp_path):
    with pytest.raises(ConfigError, match=r"relay\.allow_networks: '10\.0\.0\.300' is not an IP"):
        make_config(tmp_path, [], allow_networks=["10.0.0.300"])
