"""relay.toml: what it holds (``schema``) and how it is read and checked (``loading``).

Exports the configuration classes (``Config``, ``RelaySettings``, ``DeliverySettings``,
``Webhook``, ``Backoff``), the errors (``ConfigError``, ``FieldError``), ``validator`` for
plugins' option tables, and the readers ``load``, ``loads``, ``parse``, ``load_for_admin``,
``structure``, ``read_text`` and ``configure_logging``.
"""

from relay.config.loading import (
    configure_logging,
    converter,
    load,
    load_for_admin,
    loads,
    parse,
    read_text,
    structure,
)
from relay.config.schema import (
    Backoff,
    Config,
    ConfigError,
    DeliverySettings,
    FieldError,
    RelaySettings,
    Webhook,
    validator,
)

__all__ = [
    "Backoff",
    "Config",
    "ConfigError",
    "DeliverySettings",
    "FieldError",
    "RelaySettings",
    "Webhook",
    "configure_logging",
    "converter",
    "load",
    "load_for_admin",
    "loads",
    "parse",
    "read_text",
    "structure",
    "validator",
]
