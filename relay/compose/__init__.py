"""Compose webhooks: requests built from ``@{{...}}`` placeholders and ``%secret%`` references.

``placeholders`` is the template language (parsing, looking values up in an event, encoding);
``request`` compiles a webhook's URL, method, headers and body into a ``RequestTemplate`` that
renders an event into a ``relay.model.Request``. Nothing here does I/O; relay.config compiles
every template when the file loads.

Exports ``compile_request``, ``resolve_secrets``, ``RequestTemplate``, ``RenderError`` and
``TemplateError``.
"""

from relay.compose.placeholders import RenderError, TemplateError
from relay.compose.request import RequestTemplate, compile_request, resolve_secrets

__all__ = ["RenderError", "RequestTemplate", "TemplateError", "compile_request", "resolve_secrets"]
