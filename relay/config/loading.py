"""relay.toml, read once into the frozen classes of relay/config/schema.py.

Every mistake in the file becomes one line that names the file, the table and the key
(``relay.toml: webhooks[1].url: ...``), so a person can fix it without reading a traceback.
Values of secrets never appear in those lines.
"""

from __future__ import annotations

import functools
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from relay import logs
from relay.compose import compile_request, resolve_secrets
from relay.config.admin import admin_token, is_loopback
from relay.config.journal import journal_table
from relay.config.schema import (
    WEBHOOK_ID,
    Config,
    ConfigError,
    DeliverySettings,
    Duration,
    FieldError,
    JournalSettings,
    Rate,
    RelaySettings,
    Webhook,
)


@functools.cache
def converter() -> cattrs.Converter:
    c = cattrs.Converter(forbid_extra_keys=True)
    c.register_structure_hook(Path, lambda v, _: Path(_expect(v, str)))
    # Plain `str` accepts any value by default (str(3) == "3"): a number where a name belongs is
    # almost always a mistake in the file, so say so.
    c.register_structure_hook(str, lambda v, _: _expect(v, str))
    c.register_structure_hook(float, lambda v, _: float(_expect(v, (int, float))))
    c.register_structure_hook(int, lambda v, _: _expect(v, int))
    c.register_structure_hook(bool, lambda v, _: _expect_bool(v))
    c.register_structure_hook(Duration, lambda v, _: Duration.parse(v))
    c.register_structure_hook(Rate, lambda v, _: Rate.parse(v))
    secret_type = str | tuple[str, ...] | None
    c.register_structure_hook_func(lambda t: t == secret_type, _structure_secret)
    c.register_structure_hook_func(lambda t: t == dict[str, Any], lambda v, _: dict(v))
    # Plugins' option tables too: no list of strings in relay.toml is split into characters.
    c.register_structure_hook_func(lambda t: t == tuple[str, ...], _one_or_more("a string"))
    c.register_structure_hook_func(
        lambda t: t == list[str], lambda v, t: list(_one_or_more("a string")(v, t))
    )
    c.register_structure_hook_func(lambda t: t == dict[str, Any] | None, _structure_table)
    c.register_structure_hook_func(lambda t: get_origin(t) is Literal, _structure_choice)
    c.register_structure_hook(
        Webhook,
        make_dict_structure_fn(
            Webhook,
            c,
            template=override(omit=True),
            events=override(struct_hook=_one_or_more("a pattern")),
            _cattrs_forbid_extra_keys=True,
        ),
    )
    c.register_structure_hook(
        RelaySettings,
        make_dict_structure_fn(
            RelaySettings, c, plugins=override(struct_hook=_one_or_more("a module name"))
        ),
    )
    return c


def _one_or_more(what: str):
    """A list of strings, or one string as a list of one.

    cattrs would read a string as a sequence of one-character strings: ``events = "whatsapp:*"``
    became ten patterns, one of them ``*``, and the webhook took every event.
    """

    def structure(value, _):
        if isinstance(value, str):
            return (value,)
        if isinstance(value, list):
            wrong = next((v for v in value if not isinstance(v, str)), None)
            if wrong is None:
                return tuple(value)
            got = f"an array holding {_describe_value(wrong)}"
        else:
            got = _describe_value(value)
        raise TypeError(f"expected {what} or a list of {what.removeprefix('a ')}s, got {got}")

    return structure


def _structure_secret(value, _):
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return tuple(value)
    if isinstance(value, str):
        return value
    raise TypeError(f"expected a string or a non-empty array of strings, got {_describe(value)}")


def _structure_choice(value, choices):
    """``log = "xml"``: name the choices, as the validators do (cattrs says "unknown error")."""
    if isinstance(value, str) and value in get_args(choices):
        return value
    got = repr(value) if isinstance(value, str) else _describe_value(value)
    raise ValueError(f"must be one of {', '.join(get_args(choices))}, got {got}")


def _structure_table(value, _):
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a table, got {_describe(value)}")
    return dict(value)


def _expect_bool(value):
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {_describe(value)}")
    return value


def _expect(value, types):
    if isinstance(value, bool) or not isinstance(value, types):
        names = (
            types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        )
        raise TypeError(f"expected {_toml_type(names)}, got {_describe(value)}")
    return value


def _toml_type(name: str) -> str:
    return {"str": "a string", "int": "an integer", "int or float": "a number"}.get(name, name)


def _describe(value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


def _describe_value(value) -> str:
    """``_describe`` with the value itself where it is short and never a secret."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int):
        return f"an integer {value}"
    if isinstance(value, float):
        return f"a number {value!r}"
    return _describe(value)


def _format_errors(exc: Exception, prefix: str) -> list[str]:
    """cattrs' ``$.webhooks[0].url`` paths become ``webhooks[0].url``."""
    lines = []
    for line in cattrs.transform_error(exc, path=prefix, format_exception=_format_exception):
        message, _, path = line.rpartition(" @ ")
        path = path.removeprefix("$.")
        if message.startswith(_FIELD_MARK):
            field_name, _, message = message[1:].partition(_FIELD_MARK)
            path = f"{path}.{field_name}"
        lines.append(f"{path}: {message}")
    return lines


_FIELD_MARK = "\0"


def _format_exception(exc: BaseException, type_) -> str:
    if isinstance(exc, FieldError):
        return f"{_FIELD_MARK}{exc.field}{_FIELD_MARK}{exc}"
    if isinstance(exc, KeyError):
        return "required key is missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown keys: {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, (TypeError, ValueError)) and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def configure_logging(config: Config, log_format: str | None = None) -> None:
    """Log lines to stderr at ``[relay] log_level`` in ``[relay] log``'s format, or in
    ``log_format`` when given (``relay run --log``): the same in each of relay's processes."""
    logs.configure(config.relay.log_level, log_format or config.relay.log)


def load(path: str | Path) -> Config:
    """Read and validate ``path``; raise ConfigError listing every problem found."""
    path = Path(path).absolute()
    return loads(read_text(path), path)


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"{path.name}: cannot read: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path.name}: not UTF-8 text (byte {e.start})"]) from None


def loads(text: str, path: Path) -> Config:
    """Validate ``text``, the content of ``path`` (relative paths in it are relative to it)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path.name}: not valid TOML: {e}"]) from None
    return parse(data, path)


def load_for_admin(path: str | Path) -> Config:
    """The configuration for commands that talk to a running relay or read its journal.

    They need ``[relay]`` (where the relay listens, where its journal is) even when a webhook
    in the file is broken, which is exactly when someone runs ``relay reload`` to see why.
    """
    try:
        return load(path)
    except ConfigError as e:
        path = Path(path).absolute()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
            table, problems = admin_token(dict(data.get("relay", {})))
            if problems:
                raise e from None
            settings = converter().structure(table, RelaySettings)
            journal, problems = journal_table(dict(data.get("journal", {})))
            if problems:
                raise e from None
            journal = converter().structure(journal, JournalSettings)
        except Exception:  # noqa: BLE001 - then the original errors are the ones to show
            raise e from None
        raw = data.get("webhooks", [])
        ids = {w["id"] for w in raw if isinstance(w, Mapping) and isinstance(w.get("id"), str)}
        webhooks = tuple(
            Webhook(id=i, url="http://unknown/") for i in sorted(ids) if WEBHOOK_ID.match(i)
        )
        return Config(
            path=path,
            relay=_resolve_paths(settings, path.parent),
            defaults=DeliverySettings(),
            webhooks=webhooks,
            journal=journal,
        )


def parse(data: Mapping[str, Any], path: Path) -> Config:
    name = path.name
    errors: list[str] = []

    def structure_or_note(value, cls, where):
        result, problems = structure(value, cls, where, name)
        errors.extend(problems)
        return result

    unknown = set(data) - {"relay", "defaults", "webhooks", "secrets", "journal"}
    if unknown:
        errors.append(f"{name}: unknown tables or keys: {', '.join(sorted(unknown))}")
    secrets, problems = resolve_secrets(data.get("secrets", {}), os.environ)
    errors.extend(f"{name}: {place}: {message}" for place, message in problems)

    relay_table, problems = admin_token(_table(data, "relay", errors, name))
    errors.extend(f"{name}: {line}" for line in problems)
    relay = structure_or_note(relay_table, RelaySettings, "relay")
    if relay is not None and relay.admin and relay.admin_token is None:
        if not problems and not is_loopback(relay.admin):
            errors.append(
                f"{name}: relay.admin_token: required when relay.admin ({relay.admin}) is not a"
                " loopback address"
            )
    journal_raw, problems = journal_table(_table(data, "journal", errors, name))
    errors.extend(f"{name}: {line}" for line in problems)
    journal = structure_or_note(journal_raw, JournalSettings, "journal") if not problems else None
    defaults_table = _table(data, "defaults", errors, name)
    defaults = structure_or_note(defaults_table, DeliverySettings, "defaults")

    raw_webhooks = data.get("webhooks", [])
    if not isinstance(raw_webhooks, list):
        errors.append(f"{name}: webhooks: expected an array of tables ([[webhooks]])")
        raw_webhooks = []
    webhooks = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raw_webhooks):
        if not isinstance(raw, Mapping):
            errors.append(f"{name}: webhooks[{i}]: expected a table")
            continue
        inherited = _inherited(defaults_table) if defaults is not None else {}
        merged = {**inherited, **raw}
        merged["options"] = {
            key: merged.pop(key)
            for key in list(merged)
            if key not in _WEBHOOK_FIELDS and isinstance(merged[key], Mapping)
        }
        if isinstance(raw.get("backoff"), Mapping) and isinstance(
            inherited.get("backoff"), Mapping
        ):
            merged["backoff"] = {**inherited["backoff"], **raw["backoff"]}
        webhook = structure_or_note(merged, Webhook, f"webhooks[{i}]")
        if webhook is None:
            continue
        webhook, problems = _compile(webhook, secrets)
        errors.extend(f"{name}: webhooks[{i}].{place}: {message}" for place, message in problems)
        if webhook.id in seen:
            errors.append(
                f"{name}: webhooks[{i}].id: duplicate id {webhook.id!r} "
                f"(first used by webhooks[{seen[webhook.id]}])"
            )
            continue
        seen[webhook.id] = i
        webhooks.append(webhook)

    if errors:
        raise ConfigError(errors)
    relay = _resolve_paths(relay, path.parent)
    return Config(
        path=path, relay=relay, defaults=defaults, webhooks=tuple(webhooks), journal=journal
    )


def _resolve_paths(relay: RelaySettings, base: Path) -> RelaySettings:
    """Relative paths in [relay] are relative to the configuration file."""
    return attrs.evolve(
        relay,
        socket=_resolve(base, relay.socket),
        state_dir=_resolve(base, relay.state_dir),
        plugins_dir=_resolve(base, relay.plugins_dir)
        if relay.plugins_dir is not None
        else base / "plugins",
    )


def _compile(webhook: Webhook, secrets: Mapping[str, str]) -> tuple[Webhook, list]:
    """Compile a compose webhook's templates now, so a malformed one stops the relay at start."""
    template, problems = compile_request(
        method=webhook.method,
        url=webhook.url,
        headers=webhook.headers,
        body=webhook.body,
        body_format=webhook.body_format,
        on_missing=webhook.on_missing,
        secrets=secrets,
    )
    return attrs.evolve(webhook, template=template), problems


_WEBHOOK_FIELDS = frozenset(a.name for a in attrs.fields(Webhook)) - {"options"}


def structure(value: Any, cls: type, where: str, filename: str) -> tuple[Any, list[str]]:
    """Structure ``value`` as ``cls``; on failure, None and the error lines, placed at ``where``.

    Unknown keys are reported first and set aside, so that they do not hide the other mistakes
    (cattrs stops at them).
    """
    value, unknown = _set_aside_unknown_keys(value, cls, where)
    lines = [f"{filename}: {line}" for line in unknown]
    try:
        result = converter().structure(value, cls)
    except Exception as e:  # noqa: BLE001 - every failure becomes a message
        return None, lines + [f"{filename}: {line}" for line in _format_errors(e, f"$.{where}")]
    return (None, lines) if lines else (result, [])


def _set_aside_unknown_keys(value: Any, cls: type, where: str) -> tuple[Any, list[str]]:
    if not (attrs.has(cls) and isinstance(value, Mapping)):
        return value, []
    types = get_type_hints(cls)
    fields = {a.name for a in attrs.fields(cls)}
    unknown = sorted(k for k in value if k not in fields)
    lines = [f"{where}: unknown keys: {', '.join(unknown)}"] if unknown else []
    kept = {}
    for key, item in value.items():
        if key in fields:
            kept[key], more = _set_aside_unknown_keys(item, types[key], f"{where}.{key}")
            lines.extend(more)
    return kept, lines


def _table(data, key, errors, name) -> dict:
    value = data.get(key, {})
    if not isinstance(value, Mapping):
        errors.append(f"{name}: {key}: expected a table ([{key}])")
        return {}
    return dict(value)


def _inherited(defaults_table: Mapping) -> dict:
    """Only keys valid in [defaults] reach the webhooks; its own errors are reported once there."""
    fields = {a.name for a in attrs.fields(DeliverySettings)}
    return {k: v for k, v in defaults_table.items() if k in fields}


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    return value if value.is_absolute() else base / value
