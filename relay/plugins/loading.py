"""Finding plugins and collecting the named components they register.

A plugin manager is built per relay (never at import time), from the built-ins, installed
packages (entry point group ``relay``), modules named in ``[relay] plugins`` and every ``*.py`` in
the plugins directory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
import traceback
from collections.abc import Callable
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
    """A plugin could not be loaded, or two plugins claim the same name: one line for a person,
    starting with where the plugin is (its file, entry point or ``[relay] plugins``)."""


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
    """The plugin manager for ``config``; raise PluginError naming the plugin that is wrong
    (its file, its entry point or its line in ``[relay] plugins``) and how, never a traceback.
    """
    pm = pluggy.PluginManager("relay")
    pm.add_hookspecs(hookspecs)
    places: dict[str, str] = {}  # plugin name -> where a person finds it
    for name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(name), name=name)
    if entry_points:
        _load_entry_points(pm, places)
    if config is not None:
        filename = config.path.name
        for module_name in config.relay.plugins:
            place = f"{filename}: [relay] plugins: {module_name!r}"
            try:
                module = importlib.import_module(module_name)
            except Exception as e:  # noqa: BLE001 - any import failure is the user's to see
                raise PluginError(
                    f"{filename}: [relay] plugins: cannot import {module_name!r}: {_failure(e)}"
                ) from None
            if not pm.is_registered(module):
                _register(pm, module, module_name, place, places)
        for path in plugin_files(config.relay.plugins_dir):
            place = _shown(path, config.path.parent)
            _register(pm, _module_from_path(path, place), str(path), place, places)
    _check_pending(pm, places)
    return pm


def _load_entry_points(pm: pluggy.PluginManager, places: dict[str, str]) -> None:
    """pluggy's ``load_setuptools_entrypoints``, but a broken one is named, not a traceback."""
    for ep in importlib.metadata.entry_points(group="relay"):
        if pm.has_plugin(ep.name) or pm.is_blocked(ep.name):
            continue
        dist = ep.dist
        place = f"entry point {ep.name!r}" + (f" ({dist.name} {dist.version})" if dist else "")
        try:
            plugin = ep.load()
        except Exception as e:  # noqa: BLE001
            raise PluginError(f"{place}: cannot load plugin: {_failure(e)}") from None
        _register(pm, plugin, ep.name, place, places)


def _register(pm, plugin, name: str, place: str, places: dict[str, str]) -> None:
    try:
        pm.register(plugin, name=name)
    except pluggy.PluginValidationError as e:
        raise PluginError(f"{place}: {_invalid(pm, plugin, e)}") from None
    places[name] = place


def _invalid(pm: pluggy.PluginManager, plugin, error: pluggy.PluginValidationError) -> str:
    """Why pluggy refused ``plugin``, in a line: most often a misspelt argument, which pluggy
    reports in three lines naming the module object."""
    for attr in dir(plugin):
        opts = pm.parse_hookimpl_opts(plugin, attr)
        hook = getattr(pm.hook, (opts or {}).get("specname") or attr, None)
        if opts is None or hook is None or hook.spec is None:
            continue
        impl = pluggy.HookImpl(plugin, "", getattr(plugin, attr), opts)
        takes = (*hook.spec.argnames, *hook.spec.kwargnames)
        unknown = [a for a in impl.argnames if a not in takes]
        if unknown:
            s = "s" if len(unknown) > 1 else ""
            return (
                f"hook {hook.name} has no argument{s} {', '.join(map(repr, unknown))} "
                f"(it takes {', '.join(takes) or 'none'})"
            )
    return "; ".join(str(error).splitlines()[1:]) or str(error)


def _check_pending(pm: pluggy.PluginManager, places: dict[str, str]) -> None:
    """A hook implementation whose name is no hook of relay's (misspelt, most likely)."""
    for name, hook in vars(pm.hook).items():
        if name.startswith("_") or hook.has_spec():
            continue
        for impl in hook.get_hookimpls():
            if not impl.optionalhook:
                place = places.get(impl.plugin_name, impl.plugin_name)
                known = ", ".join(sorted(n for n, h in vars(pm.hook).items() if h.has_spec()))
                raise PluginError(f"{place}: {name} is not a hook of relay's (hooks: {known})")


def plugin_files(directory: Path | None) -> list[Path]:
    """The files in the plugins directory that load as plugins, in the order they load."""
    if directory is None or not directory.is_dir():
        return []
    return sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))


def plugin_file_digests(directory: Path | None) -> dict[str, str]:
    """Each plugin file's name and a digest of its content: a running relay compares what it
    loaded at start with what a restart would load."""
    digests = {}
    for path in plugin_files(directory):
        try:
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            digests[path.name] = "unreadable"
    return digests


def _shown(path: Path, base: Path) -> str:
    """``plugins/x.py`` when it is beside the configuration file, else the whole path."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _module_from_path(path: Path, place: str):
    name = f"relay_plugins_dir.{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a plugin's sys.exit() too
        del sys.modules[name]
        raise PluginError(f"{place}: cannot load plugin: {_failure(e, path)}") from None
    return module


def _failure(error: BaseException, path: Path | None = None) -> str:
    """``RuntimeError: boom (line 3)``: the error and where it was raised, without a traceback
    (the line in ``path`` when it is the plugin's own file)."""
    text = str(error) if isinstance(error, ModuleNotFoundError) else _named(error)
    frames = [
        f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith("<")
    ]
    if isinstance(error, SyntaxError):  # its message holds the file and line already
        return text
    if path is not None:
        lines = [f.lineno for f in frames if Path(f.filename) == path]
        return f"{text} (line {lines[-1]})" if lines else text
    if frames and not isinstance(error, ModuleNotFoundError):
        return f"{text} ({frames[-1].filename}, line {frames[-1].lineno})"
    return text


def _named(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


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

                try:
                    impl.function(register=register)
                except PluginError:
                    raise
                except Exception as e:  # noqa: BLE001 - the plugin's mistake, named
                    raise PluginError(
                        f"{plugin_name}: register_{kind} failed: {_failure(e)}"
                    ) from None
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
