"""Finding plugins and collecting the named components they register.

A plugin manager is built per relay (never at import time), from the built-ins, installed
packages (entry point group ``relay``), modules named in ``[relay] plugins`` and every ``*.py`` in
the plugins directory.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
import pluggy
import trio
from attrs import frozen

from relay.compose import VariableError, Variables, VariableTable
from relay.config import Config, ConfigError, load, structure
from relay.plugins import hookspecs

DEFAULT_PLUGINS = (
    "relay.plugins.builtin.plain",
    "relay.plugins.builtin.compose",
    "relay.plugins.builtin.variables",
    "relay.plugins.builtin.signature",
    "relay.plugins.builtin.http_transport",
    "relay.plugins.builtin.backoff",
)


class PluginError(Exception):
    """A plugin could not be loaded, or two plugins claim the same name."""


def load_with_plugins(path: Path) -> tuple[Config, pluggy.PluginManager, Components]:
    """The configuration at ``path`` with its plugins loaded and option tables bound; raises
    ConfigError or PluginError."""
    config = load(path)
    pm = make_plugin_manager(config)
    components = Components.collect(pm)
    return components.bind(config), pm, components


async def close_transports(transports: dict) -> None:
    """Close each; a stuck one must not hang the exit."""
    with trio.move_on_after(5, shield=True):
        for transport in transports.values():
            await transport.aclose()


def make_plugin_manager(config: Config | None = None, *, entry_points: bool = True):
    pm = pluggy.PluginManager("relay")
    pm.add_hookspecs(hookspecs)
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        pm.load_setuptools_entrypoints("relay")
    if config is not None:
        for module_name in config.relay.plugins:
            try:
                module = importlib.import_module(module_name)
            except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
                raise PluginError(f"[relay] plugins: cannot import {module_name!r}: {e}") from e
            if not pm.is_registered(module):
                pm.register(module, name=module_name)
        for path in _plugin_files(config.relay.plugins_dir):
            pm.register(_module_from_path(path), name=str(path))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        raise PluginError(str(e)) from e
    return pm


def _plugin_files(directory: Path | None) -> Iterable[Path]:
    if directory is None or not directory.is_dir():
        return ()
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def _module_from_path(path: Path):
    name = f"relay_plugins_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        del sys.modules[name]
        raise PluginError(f"{path}: cannot load plugin: {e}") from e
    return module


@frozen
class Components:
    """The named signers, transport factories and retry policies, with who registered each,
    and the compose variables plugins declare (``variables.owners`` says who)."""

    signers: dict[str, Callable]
    transports: dict[str, Callable]
    retry_policies: dict[str, Callable]
    webhook_options: dict[str, type]
    owners: dict[tuple[str, str], str]
    variables: Variables = Variables()

    @classmethod
    def collect(cls, pm: pluggy.PluginManager) -> Components:
        owners: dict[tuple[str, str], str] = {}
        tables: dict[str, dict[str, Callable]] = {}
        for kind in ("signers", "transports", "retry_policies", "webhook_options"):
            tables[kind] = {}
            hook = getattr(pm.hook, f"register_{kind}")
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name

                def register(name: str, component: Any, _kind=kind, _plugin=plugin_name):
                    owner = owners.get((_kind, name))
                    if owner is not None:
                        raise PluginError(
                            f"{_plugin} registers {_kind.replace('_', ' ')} {name!r}, "
                            f"already registered by {owner}"
                        )
                    owners[(_kind, name)] = _plugin
                    tables[_kind][name] = component

                impl.function(register=register)
        return cls(
            signers=tables["signers"],
            transports=tables["transports"],
            retry_policies=tables["retry_policies"],
            webhook_options=tables["webhook_options"],
            owners=owners,
            variables=_declared_variables(pm),
        )

    def open_transports(self, config: Config, already: dict | None = None) -> dict:
        """The transports ``config`` uses that are not open yet; each owns its connections."""
        used = {w.transport for w in config.webhooks} - set(already or ())
        return {name: self.transports[name](config) for name in used}

    def bind(self, config: Config) -> Config:
        """Check that every webhook names components that exist, and structure its option
        tables with the classes plugins registered; raise ConfigError naming each problem."""
        errors = []
        webhooks = []
        filename = config.path.name
        for i, webhook in enumerate(config.webhooks):
            for key, table in (
                ("signer", self.signers),
                ("transport", self.transports),
                ("retry", self.retry_policies),
            ):
                name = getattr(webhook, key)
                if name not in table:
                    known = ", ".join(sorted(table))
                    errors.append(
                        f"{filename}: webhooks[{i}].{key}: unknown {key} {name!r} (known: {known})"
                    )
            options = {}
            for key, raw in webhook.options.items():
                cls = self.webhook_options.get(key)
                if cls is None:
                    known = ", ".join(sorted(self.webhook_options)) or "none"
                    errors.append(
                        f"{filename}: webhooks[{i}].{key}: unknown option table "
                        f"(plugins register: {known})"
                    )
                    continue
                if isinstance(raw, cls):  # bound already
                    options[key] = raw
                    continue
                value, problems = structure(raw, cls, f"webhooks[{i}].{key}", filename)
                errors.extend(problems)
                options[key] = value
            template = webhook.template
            if template is not None:
                template = template.with_variables(self.variables)
            webhooks.append(attrs.evolve(webhook, options=options, template=template))
        if errors:
            raise ConfigError(errors)
        return attrs.evolve(config, webhooks=tuple(webhooks))


def _declared_variables(pm: pluggy.PluginManager) -> Variables:
    table = VariableTable()
    for impl in pm.hook.register_variables.get_hookimpls():

        def register(event_type: str, variables: dict, _plugin=impl.plugin_name) -> None:
            try:
                table.add(event_type, variables, _plugin)
            except VariableError as e:
                raise PluginError(f"{_plugin} registers variables: {e}") from None

        impl.function(register=register)
    return table.build()
