"""Compose webhooks: requests built from ``@{{...}}`` placeholders and ``%secret%`` references.

``placeholders`` is the template language (parsing, looking values up in an event, encoding);
``variables`` is what the reference's replaced variables (``from``, ``to``, ``mobile`` ...) mean
on each event type, as plugins declare it; ``request`` compiles a webhook's URL, method, headers
and body into a ``RequestTemplate`` that renders an event into a ``relay.model.Request``.
Nothing here does I/O; relay.config compiles every template when the file loads, and
relay.plugins binds the declared variables to it. ``examples.json`` holds the reference's three
example events (for ``relay webhooks render``).

Exports ``compile_request``, ``resolve_secrets``, ``RequestTemplate``, ``RenderError``,
``TemplateError``, and for variables ``Variables``, ``VariableTable`` and ``VariableError``.
"""

from relay.compose.placeholders import RenderError, TemplateError
from relay.compose.request import RequestTemplate, compile_request, resolve_secrets
from relay.compose.variables import VariableError, Variables, VariableTable

__all__ = [
    "RenderError",
    "RequestTemplate",
    "TemplateError",
    "VariableError",
    "VariableTable",
    "Variables",
    "compile_request",
    "resolve_secrets",
]
