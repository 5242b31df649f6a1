"""The HTTP messages relay sends and receives, as values.

They live with the wire code so that relay/http/ needs nothing from the rest of relay; relay.model
re-exports them, and plugins take them from there. Frozen, so that a plugin can never change what
another plugin, or the journal, sees.
"""

from __future__ import annotations

from attrs import field, frozen


@frozen
class Request:
    """An HTTP request ready to send; signers and auth plugins return changed copies."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)

    def with_headers(self, *pairs: tuple[str, str]) -> Request:
        """A copy with ``pairs`` added, replacing headers of the same names."""
        names = {name.lower() for name, _ in pairs}
        kept = tuple(h for h in self.headers if h[0].lower() not in names)
        return Request(self.method, self.url, kept + tuple(pairs), self.body)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@frozen
class Response:
    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = field(default=b"", repr=False)
    # The head as it came (the status line and the header lines, CRLF between them, without
    # the blank line), for the journal's record of the attempt; b"" from a transport that
    # keeps none, whose record is then made of ``status`` and ``headers``.
    head: bytes = field(default=b"", repr=False, eq=False)


class PermanentFailure(Exception):
    """A request that can never succeed, however often it is tried: a URL or a header that cannot
    be sent, a template that cannot render. Raised by the client and by plugins; the attempt fails
    for good and the retry policy is not asked."""
