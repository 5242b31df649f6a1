"""sd_notify(3) for ``relay run``: telling a service manager (systemd's ``Type=notify``,
docs/relay.service) how the relay stands, when it set ``NOTIFY_SOCKET``.

- ``READY=1`` once the relay takes events: the journal is open, the listeners are bound and the
  delivery process has started (where ``Relay.run``'s ``task_status.started`` fires), so a unit
  ordered after relay's never posts to a socket that is not there yet;
- ``STOPPING=1`` when it begins to stop (SIGTERM, SIGINT), before the grace period;
- ``RELOADING=1`` (with ``MONOTONIC_USEC``, which systemd's ``Type=notify-reload`` wants) when a
  reload begins, whoever asked (SIGHUP, ``relay reload``, ``[relay] watch``), and ``READY=1``
  again when it is done, applied or refused.

The protocol is one datagram per message to an AF_UNIX socket (``@`` at the start of the
address is the abstract namespace), a few lines here rather than a dependency: systemd's own
Python bindings are a C extension against libsystemd. A message that cannot be sent is logged
and the relay runs on: a supervisor's socket is never a reason to stop taking events.

Exports ``notify``, ``NotifyingRelay`` and ``serve``.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import trio

from relay import daemon

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``fields`` (``READY=1`` ...) to ``$NOTIFY_SOCKET`` in one datagram; False when
    there is no socket to tell, or it failed (logged)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(2.0)
            sock.connect(address)
            sock.sendall("\n".join(fields).encode())
    except OSError as e:
        log.warning("cannot tell the service manager %s (NOTIFY_SOCKET): %s", fields[0], e)
        return False
    return True


class NotifyingRelay(daemon.Relay):
    """The relay, telling the service manager when it stops and reloads."""

    ready_status = ""  # STATUS=: where it takes events, for `systemctl status`

    def stop(self, grace: float | None = None) -> None:
        if not self.stopping:
            notify("STOPPING=1", "STATUS=stopping")
        super().stop(grace)

    async def try_reload(self) -> tuple[bool, dict]:
        if self.stopping:  # ignored (logged): STOPPING=1 stands
            return await super().try_reload()
        notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}", "STATUS=reloading")
        try:
            return await super().try_reload()
        finally:
            if not self.stopping:
                notify("READY=1", self.ready_status)


async def serve(relay: NotifyingRelay) -> None:
    """``daemon.serve``, and ``READY=1`` once the relay takes events."""
    async with trio.open_nursery() as nursery:
        addresses = await nursery.start(daemon.serve, relay)
        relay.ready_status = f"STATUS=taking events on {', '.join(map(str, addresses))}"
        notify("READY=1", relay.ready_status)
