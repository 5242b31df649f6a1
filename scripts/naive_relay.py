#!/usr/bin/env python3
"""The "naive" baseline for scripts/bench: a relay as most people would write it.

Ingest over HTTP (``POST /events``, one event or a JSON array, on TCP and on a Unix socket),
append each event to a log file and fsync it before answering 202, then hand it to 64 workers that
post it with one ``httpx.AsyncClient`` shared by all of them (3 tries, exponential backoff).

It is deliberately plain, not deliberately slow: the ingest server is a small trio + h11 loop (a
framework such as hypercorn would be slower, see ../shared/design/performance.md), so what it
measures is the cost of fsync per event and of httpx.

    naive_relay.py --listen 127.0.0.1:0 --socket /tmp/x.sock --journal /tmp/log \
        --webhook sink=http://127.0.0.1:8000/hook [--webhook ID=URL ...]

Events carrying ``"webhook_id"`` go to that webhook; others go to the first one.
Logs "taking events on ADDRESS" to stderr like ``relay run``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import uuid

import h11
import httpx
import trio


class NaiveRelay:
    def __init__(self, journal_path: str, routes: dict[str, str], workers: int):
        self.journal = open(journal_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.routes = routes
        self.default_url = next(iter(routes.values()))
        self.workers = workers
        self.send, self.receive = trio.open_memory_channel(math.inf)

    async def handle(self, method: bytes, target: bytes, body: bytes) -> tuple[int, dict]:
        if method != b"POST" or target != b"/events":
            return 404, {"error": "POST /events"}
        try:
            data = json.loads(body)
        except ValueError as e:
            return 400, {"error": str(e)}
        items = data if isinstance(data, list) else [data]
        ids = []
        for item in items:
            # Durable before the 202: one append + fsync per event.
            self.journal.write(json.dumps(item).encode() + b"\n")
            self.journal.flush()
            os.fsync(self.journal.fileno())
            ids.append(uuid.uuid4().hex)
            url = self.routes.get(item.get("webhook_id"), self.default_url)
            body = json.dumps(item, ensure_ascii=False, separators=(",", ":")).encode()
            self.send.send_nowait((url, body))
        return 202, {"ids": ids}

    async def deliver(self, client: httpx.AsyncClient) -> None:
        async for url, body in self.receive:
            for attempt in range(3):
                try:
                    response = await client.post(
                        url, content=body, headers={"Content-Type": "application/json"}
                    )
                    if response.status_code < 300:
                        break
                except httpx.HTTPError as e:
                    print(f"delivery failed: {e!r}", file=sys.stderr)
                await trio.sleep(0.5 * 2**attempt)

    async def serve_connection(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                request = await _next_event(conn, stream)
                if not isinstance(request, h11.Request):
                    return
                body = bytearray()
                while True:
                    event = await _next_event(conn, stream)
                    if isinstance(event, h11.Data):
                        body += event.data
                    elif isinstance(event, h11.EndOfMessage):
                        break
                    else:
                        return
                status, payload = await self.handle(request.method, request.target, bytes(body))
                data = json.dumps(payload).encode()
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
                await stream.send_all(
                    conn.send(h11.Response(status_code=status, headers=headers))
                    + conn.send(h11.Data(data=data))
                    + conn.send(h11.EndOfMessage())
                )
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    return
                conn.start_next_cycle()
        except (trio.BrokenResourceError, h11.RemoteProtocolError, ConnectionError):
            pass
        finally:
            await trio.aclose_forcefully(stream)

    async def run(self, listen: str, socket_path: str | None) -> None:
        host, _, port = listen.rpartition(":")
        listeners = list(await trio.open_tcp_listeners(int(port), host=host))
        if socket_path:
            sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            await sock.bind(socket_path)
            sock.listen(128)
            listeners.append(trio.SocketListener(sock))
        for listener in listeners:
            name = listener.socket.getsockname()
            address = name if isinstance(name, str) else f"{name[0]}:{name[1]}"
            print(f"naive relay: taking events on {address}", file=sys.stderr, flush=True)
        async with httpx.AsyncClient(timeout=10.0) as client, trio.open_nursery() as nursery:
            for _ in range(self.workers):
                nursery.start_soon(self.deliver, client)
            nursery.start_soon(trio.serve_listeners, self.serve_connection, listeners)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
            continue
        return event


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:0")
    parser.add_argument("--socket")
    parser.add_argument("--journal", required=True)
    parser.add_argument("--webhook", action="append", required=True, metavar="ID=URL")
    parser.add_argument("--workers", type=int, default=64)
    args = parser.parse_args()
    routes = dict(w.split("=", 1) for w in args.webhook)
    relay = NaiveRelay(args.journal, routes, args.workers)
    try:
        trio.run(relay.run, args.listen, args.socket)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
