"""The webhook receiver, on h11 (not relay's HTTP code), that flaps.

Modes change at random: ``ok`` (200), ``error`` (500), ``hang`` (reads the request, never
answers; relay's attempt times out) and ``refuse`` (the listening socket is closed, so
connecting is refused, and the connections open are dropped). A delivery counts as received
only once its 200 was written to the connection: what relay may have seen as delivered.
"""

from __future__ import annotations

import json
import random
from collections import Counter

import h11
import trio

MODES = {"ok": 0.5, "error": 0.2, "hang": 0.15, "refuse": 0.15}
HANG = 5.0  # seconds a hanging request is held (relay's timeout here is far shorter)


class FlappingReceiver:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.port = 0
        self.mode = "ok"
        self.stable = False  # once set: ok, always
        self.received: Counter[str] = Counter()  # delivery id -> 200s written
        self.marks: set[str] = set()  # the soak marks of the events received
        self.answers: Counter[str] = Counter()  # how requests were answered, by mode
        self.time_in: Counter[str] = Counter()  # seconds spent in each mode
        self._serving: trio.CancelScope | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve, reopening on the same port after each ``refuse``."""
        started = False
        while True:
            listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
            self.port = listeners[0].socket.getsockname()[1]
            with trio.CancelScope() as self._serving:
                if self.mode == "refuse":  # it began again while the listener reopened
                    self._serving.cancel()
                async with trio.open_nursery() as nursery:
                    await nursery.start(trio.serve_listeners, self._serve, listeners)
                    if not started:
                        task_status.started()
                        started = True
            while self.mode == "refuse":
                await trio.sleep(0.01)

    async def flap(self, low: float = 0.1, high: float = 1.0) -> None:
        """Change modes at random intervals until ``settle()``."""
        self.stable = False
        names, weights = list(MODES), list(MODES.values())
        while not self.stable:
            mode = self.rng.choices(names, weights)[0]
            seconds = self.rng.uniform(low, high)
            self.time_in[mode] += seconds
            if mode == "refuse":
                self.mode = "refuse"
                self._serving.cancel()
                await trio.sleep(seconds)
                self.mode = "ok"
            else:
                self.mode = mode
                await trio.sleep(seconds)
            if self.stable:
                self.mode = "ok"

    def settle(self) -> None:
        """Answer 200 from now on (``flap`` returns after its current interval)."""
        self.stable = True
        self.mode = "ok"

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request, body = None, bytearray()
                while not isinstance(event := conn.next_event(), h11.EndOfMessage):
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.receive_some(65536))
                    elif isinstance(event, h11.ConnectionClosed):
                        return
                    elif isinstance(event, h11.Request):
                        request = event
                    elif isinstance(event, h11.Data):
                        body += event.data
                mode = self.mode
                self.answers[mode] += 1
                if mode == "refuse":
                    return  # dropped unanswered, with the listener
                if mode == "hang":
                    await trio.sleep(HANG)
                    return  # never answered
                status = 200 if mode == "ok" else 500
                response = h11.Response(status_code=status, headers=[("content-length", "0")])
                await stream.send_all(conn.send(response) + conn.send(h11.EndOfMessage()))
                if status == 200:
                    self._note(request, bytes(body))
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (h11.ProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _note(self, request: h11.Request, body: bytes) -> None:
        delivery_id = dict(request.headers).get(b"relay-delivery-id", b"").decode()
        self.received[delivery_id] += 1
        try:
            self.marks.add(json.loads(body)["payload"]["soak"])
        except (ValueError, KeyError, TypeError):
            self.answers["not a soak event"] += 1
