"""The web console on the admin listener (``/console/``): what a browser shows of a running
relay, and the few changes an operator makes there (replays, a webhook disabled or enabled).

Server-rendered HTML (Jinja2, autoescaped) from ``templates/``, one stylesheet and one small
plain script in ``static/`` (the live chart, and the pages' parts that refresh themselves), all
shipped in the package: no build step, nothing fetched from anywhere but the relay.

``app`` is the handler (routes, sessions, the checks on every POST, rendering), ``session`` the
cookie, the CSRF token and the ``Origin`` check, ``pages`` what is shown, ``actions`` what is
changed (through the admin API's own endpoints), ``format`` how times and numbers are written,
``results`` what a page answers.

Exports ``Console`` (relay/admin/server.py hands it the console's requests).
"""

from relay.admin.console.app import Console

__all__ = ["Console"]
