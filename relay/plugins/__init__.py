"""Plugins: the hooks relay calls, how plugins are found, and the built-in plugins.

Everything a plugin may rely on is exported here: ``hookimpl`` (the marker for hook
implementations, documented in ``hookspecs`` and docs/hooks.md), ``validator`` and
``FieldError`` (checks for a plugin's option table, reported with their place in relay.toml),
``HTTPClient`` (relay's keep-alive HTTP/1.1 client, for transports), ``NetworkPolicy`` (which
addresses it may connect to: ``[relay] allow_networks``), ``request_target`` (the path and query
that client sends for a URL), ``signed_content`` (what a body signer signs: the body, or the
method and request target of a request without one), and ``PermanentFailure``.
The values a hook gets and returns are in relay.model.

For relay itself: ``make_plugin_manager``, ``load_with_plugins``, ``Components`` (the named
signers, transports and retry policies plugins register, and the compose variables they
declare), ``close_transports`` and ``PluginError``. The built-in behaviour is a set of
ordinary plugins in ``builtin/``.
"""

from relay.config import FieldError, validator
from relay.http.client import HTTPClient, request_target
from relay.http.netpolicy import NetworkPolicy
from relay.model import PermanentFailure
from relay.plugins.hookspecs import hookimpl
from relay.plugins.loading import (
    Components,
    PluginError,
    close_transports,
    load_with_plugins,
    make_plugin_manager,
)
from relay.plugins.signing import signed_content

__all__ = [
    "Components",
    "FieldError",
    "HTTPClient",
    "NetworkPolicy",
    "PermanentFailure",
    "PluginError",
    "close_transports",
    "hookimpl",
    "load_with_plugins",
    "make_plugin_manager",
    "request_target",
    "signed_content",
    "validator",
]
