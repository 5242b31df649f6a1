"""What the soak sends: marked events, and hostile input that must never be accepted.

Every event carries a mark of its own (``payload.soak``); a mark is acknowledged when its
request got a 202. Marks are never sent twice, so that an acknowledged mark the receiver never
saw is an event lost, whatever else happened.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter

import httpx
import trio

J = "application/json"
# (kind, body, content type); each must get a 4xx, and the relay must go on serving.
HOSTILE: list[tuple[str, bytes, str | None]] = [
    ("malformed JSON", b'{"event": "whatsapp:message:status", "payload": {', J),
    ("truncated array", b'[{"event": "x", "payload": {}}, ', J),
    ("NaN", b'{"event": "x", "payload": {"v": NaN}}', J),
    ("Infinity in an array", b'[{"event": "x", "payload": {"v": -Infinity}}]', J),
    ("huge body", b'{"event": "x", "payload": {"v": "' + b"a" * 200_000 + b'"}}', J),
    ("text/plain", b'{"event": "x", "payload": {}}', "text/plain"),
    ("form content type", b"event=x&payload=1", "application/x-www-form-urlencoded"),
    ("no content type", b'{"event": "x", "payload": {}}', None),
    ("not an object", b"[1, 2, 3]", J),
    ("a bare string", b'"whatsapp:message:status"', J),
    ("event not a string", b'{"event": 5, "payload": {}}', J),
    ("payload not an object", b'{"event": "x", "payload": [1]}', J),
    ("unknown webhook_id", b'{"event": "x", "payload": {}, "webhook_id": "nope"}', J),
    ("invalid UTF-8", b'{"event": "\xff\xfe", "payload": {}}', J),
    ("lone surrogate", b'{"event": "\\ud800", "payload": {}}', J),
    ("deep nesting", b"[" * 100_000 + b"]" * 100_000, J),
    ("a 5,000-digit number", b'{"event": "x", "payload": {"n": ' + b"9" * 5000 + b"}}", J),
    ("empty body", b"", J),
    ("not HTTP", b"\x00\x01 this is not HTTP\r\n\r\n", ""),  # over a raw socket
]


class Traffic:
    def __init__(self, rng: random.Random):
        self.rng = rng
        self.url = ""  # where the relay takes events now
        self.acknowledged: set[str] = set()
        self.sent: set[str] = set()
        self.answers: Counter[str] = Counter()  # "202", "503", "no answer", other statuses
        self.hostile: Counter[tuple[str, str]] = Counter()  # (kind, answer)
        self.hostile_accepted: list[str] = []
        self.running = True
        self.in_flight = 0  # requests posted and not yet answered: the drain waits for them
        self.pad = 40  # bytes of filler per event
        self._marks = itertools.count()

    def event(self, mark: str) -> dict:
        return {
            "event": "whatsapp:message:status",
            "payload": {"soak": mark, "status": "read", "pad": "x" * self.pad},
        }

    async def send(self, rate: float, prefix: str = "s") -> None:
        """Post batches of 1-5 marked events, about ``rate`` events a second, until stopped."""
        async with httpx.AsyncClient(timeout=5.0) as client:
            while self.running:
                marks = [f"{prefix}{next(self._marks)}" for _ in range(self.rng.randint(1, 5))]
                self.sent.update(marks)
                events = [self.event(m) for m in marks]
                self.in_flight += 1
                try:
                    answer = await self.post(client, events if len(events) > 1 else events[0])
                finally:
                    self.in_flight -= 1
                if answer == "202":
                    self.acknowledged.update(marks)
                await trio.sleep(self.rng.expovariate(rate / len(marks)))

    async def post(self, client: httpx.AsyncClient, body) -> str:
        try:
            response = await client.post(self.url + "/events", json=body)
        except httpx.HTTPError:
            self.answers["no answer"] += 1
            await trio.sleep(0.05)  # the relay is down: do not spin
            return "no answer"
        answer = str(response.status_code)
        self.answers[answer] += 1
        return answer

    async def send_hostile(self, interval: float = 0.1) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while self.running:
                await trio.sleep(self.rng.expovariate(1 / interval))
                kind, body, content_type = self.rng.choice(HOSTILE)
                if kind == "not HTTP":
                    answer = await self._raw(body)
                else:
                    headers = {"content-type": content_type} if content_type else {}
                    try:
                        response = await client.post(
                            self.url + "/events", content=body, headers=headers
                        )
                        answer = str(response.status_code)
                    except httpx.HTTPError:
                        answer = "no answer"  # the relay was being killed
                self.hostile[(kind, answer)] += 1
                if answer.startswith("2"):
                    self.hostile_accepted.append(kind)

    async def _raw(self, data: bytes) -> str:
        host, port = self.url.removeprefix("http://").rsplit(":", 1)
        try:
            with trio.fail_after(5):
                stream = await trio.open_tcp_stream(host, int(port))
                async with stream:
                    await stream.send_all(data)
                    answer = await stream.receive_some(1000)
        except (OSError, trio.TooSlowError, trio.BrokenResourceError):
            return "no answer"
        return answer[9:12].decode(errors="replace") or "closed"

    def hostile_summary(self) -> dict:
        by_kind: dict[str, dict[str, int]] = {}
        for (kind, answer), n in sorted(self.hostile.items()):
            by_kind.setdefault(kind, {})[answer] = n
        return {
            "tried": sum(self.hostile.values()),
            "accepted": len(self.hostile_accepted),
            "by_kind": by_kind,
        }
