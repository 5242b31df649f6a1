"""The console's handler: its routes, the session and the checks on every POST, the rendering.

relay/admin/server.py hands it every request under ``/console/`` (and ``/``, which redirects
here) before the bearer token's check: a browser has a cookie instead (session.py). Each page is
an ``async def page(view, params)`` answering a ``Page``, a ``Redirect`` or a JSON dict.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import parse_qsl, quote

from attrs import define, field
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from relay import __version__
from relay.admin.console import actions, pages, session
from relay.admin.console.format import FILTERS
from relay.admin.console.results import Redirect
from relay.admin.routes import Route, Router
from relay.http.server import HTTPRequest, Reply
from relay.journal import JournalError

HERE = Path(__file__).resolve().parent
STATIC_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Nothing but what relay serves: no inline script or style, no frame, no other origin.
SECURITY = (
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
)
NOTICES = {
    "replayed": "Replayed: it goes again as soon as its webhook's lane has room.",
    "skipped": "Not replayed: it is being attempted, or waits for a replay already.",
    "disabled": "Disabled: its deliveries wait, unattempted, until it is enabled.",
    "enabled": "Enabled: its waiting deliveries go again.",
}

ROUTES = (
    Route("GET", "/console/", pages.overview),
    Route("GET", "/console/live.json", pages.live),
    Route("GET", "/console/deliveries", pages.deliveries),
    Route("GET", "/console/deliveries/{id}", pages.delivery),
    Route("POST", "/console/deliveries/{id}/replay", actions.replay_one),
    Route("POST", "/console/replay", actions.replay_many),
    Route("POST", "/console/webhooks/{id}/disable", actions.disable),
    Route("POST", "/console/webhooks/{id}/enable", actions.enable),
    Route("GET", "/console/login", actions.login_form),
    Route("POST", "/console/login", actions.login),
    Route("POST", "/console/logout", actions.logout),
)
PUBLIC = {"/console/login"}  # served without a session (the token is what makes one)


@define
class View:
    """What a page gets: the console, the request, its form (a POST's), the session."""

    console: Console
    request: HTTPRequest
    session: str | None
    csrf: str
    form: dict[str, str] = field(factory=dict)

    @property
    def relay(self):
        return self.console.admin.relay

    @property
    def admin(self):
        return self.console.admin

    def query(self) -> dict[str, str]:
        return dict(parse_qsl(self.request.query, keep_blank_values=True))


class Console:
    def __init__(self, admin):
        self.admin = admin
        self.router = Router(ROUTES)
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)
        self.static: dict[str, tuple[bytes, str]] = {}
        for path in sorted((HERE / "static").iterdir()):
            self.static[path.name] = (path.read_bytes(), STATIC_TYPES[path.suffix])
        versions = {n: hashlib.sha256(b).hexdigest()[:12] for n, (b, _) in self.static.items()}
        self.env.globals.update(
            static=lambda name: f"/console/static/{name}?v={versions[name]}", version=__version__
        )
        self._run_key = session.process_key()  # sessions' key without admin_token

    @staticmethod
    def serves(path: str) -> bool:
        return path in ("/", "/console") or path.startswith("/console/")

    def key(self) -> bytes:
        # The token as configured now: a reload that changes it ends every session.
        return session.session_key(self.admin.relay.config.relay.admin_token, self._run_key)

    async def __call__(self, request: HTTPRequest) -> tuple[int, Reply]:
        method = "GET" if request.method == "HEAD" else request.method
        if request.path in ("/", "/console"):
            return self.redirect("/console/")
        if request.path.startswith("/console/static/"):
            return self.static_file(request.path.removeprefix("/console/static/"))
        found = self.router.find(request.path)
        if found is None:
            return self.error(404, "Not found", f"No page at {request.path[:200]}.")
        routes, params = found
        route = routes.get(method)
        if route is None:
            allowed = ", ".join(routes)
            return self.error(405, "Method not allowed", f"{request.path} takes {allowed}.")
        key, token = self.key(), self.admin.relay.config.relay.admin_token
        sid = session.valid_session(key, session.cookie_of(request))
        cookie: tuple = ()
        if method == "POST":
            if problem := session.origin_problem(request, self.admin.relay.config):
                return self.error(403, "Refused", problem)
        if sid is None and request.path not in PUBLIC:
            if token is not None:
                if method == "GET":
                    target = request.path + (f"?{request.query}" if request.query else "")
                    return self.redirect(f"/console/login?next={quote(target, safe='')}")
                return self.error(403, "Refused", "No session: log in first.")
            if method != "GET":
                return self.error(403, "Refused", "No session: load the page again first.")
            value = session.new_session(key)
            sid, cookie = session.valid_session(key, value), (session.set_cookie(value),)
        view = View(self, request, sid, session.csrf_token(key, sid) if sid else "")
        if method == "POST":
            view.form = dict(parse_qsl(request.body.decode("utf-8", "replace"), True))
            if request.path not in PUBLIC and not session.csrf_matches(
                key, sid, view.form.get("csrf")
            ):
                return self.error(
                    403, "Refused", "The form's token is not this session's: load the page again."
                )
        try:
            result = await route.endpoint(view, params)
        except JournalError as e:  # a full disk, a database that refuses the read
            return self.error(503, "The journal is unavailable", str(e))
        status, reply = self.answer(view, result)
        return status, reply._replace(headers=reply.headers + cookie)

    def answer(self, view: View, result) -> tuple[int, Reply]:
        if isinstance(result, Redirect):
            return self.redirect(result.location, result.headers)
        if isinstance(result, dict):
            return 200, Reply.json(result, headers=(("Cache-Control", "no-store"), *SECURITY))
        values = {
            "csrf": view.csrf,
            "notice": NOTICES.get(view.query().get("notice", "")),
            "logged_in": view.session is not None
            and view.relay.config.relay.admin_token is not None,
            **result.values,
        }
        return self.html(result.status, result.template, values, result.headers)

    def html(self, status: int, template: str, values: dict, headers=()) -> tuple[int, Reply]:
        values = {
            "nav": "",
            "csrf": "",
            "notice": None,
            "logged_in": False,
            "admin_address": getattr(self.admin.relay, "admin_address", None),
            **values,
        }
        body = self.env.get_template(template).render(values).encode()
        head = (("Cache-Control", "no-store"), *SECURITY, *headers)
        return status, Reply(body, "text/html; charset=utf-8", head)

    def error(self, status: int, title: str, message: str) -> tuple[int, Reply]:
        return self.html(status, "error.html", {"title": title, "message": message})

    @staticmethod
    def redirect(location: str, headers=()) -> tuple[int, Reply]:
        return 303, Reply(b"", "text/plain", (("Location", location), *SECURITY, *headers))

    def static_file(self, name: str) -> tuple[int, Reply]:
        found = self.static.get(name)
        if found is None:
            return 404, Reply(b"not found\n", "text/plain", SECURITY)
        body, content_type = found
        # Its links carry a hash of its content: a new relay's file is a new URL.
        cache = ("Cache-Control", "public, max-age=31536000, immutable")
        return 200, Reply(body, content_type, (cache, *SECURITY))
