"""The tree's rules (README, "Layout"), checked so that the layout stays true.

Data flows down: each folder of relay/ may import only the folders listed for it below. A new
import that crosses the line fails here, with the module and the import named; if the arrow is
right, change the table and say why in the commit.
"""

import ast
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parent.parent / "relay"
MAX_LINES = 420  # "no module over ~400 lines": split a module by what it holds before it grows

# What each part of relay may import (besides itself). The most specific prefix applies.
MAY_IMPORT = {
    "relay": set(),  # relay/__init__.py
    "relay.clock": set(),
    "relay.logs": set(),  # the log formats: nothing of relay
    "relay.children": set(),  # how relay starts its own processes: nothing of relay
    "relay.frozen": set(),  # what the one-file binary changes: nothing of relay
    "relay.http": set(),  # only the wire: nothing of relay's model
    "relay.model": {"relay.http.messages"},
    # No HTTP, no plugins, no configuration (relay.children: how to start the writer process).
    "relay.journal": {"relay.model", "relay.clock", "relay.children"},
    "relay.compose": {"relay.model", "relay.http"},
    "relay.config": {"relay.compose", "relay.logs"},  # configure_logging
    # relay.compose: the variables plugins declare are compiled into its tables.
    "relay.plugins": {"relay.compose", "relay.config", "relay.http", "relay.model"},
    # The built-ins use only what a third-party plugin may: relay.plugins' exports, relay.model.
    "relay.plugins.builtin": {"relay.plugins!", "relay.model"},
    "relay.ingest": {"relay.clock", "relay.config", "relay.http", "relay.journal", "relay.model"},
    "relay.delivery": {
        "relay.children",  # the delivery process's command
        "relay.clock",
        "relay.config",
        "relay.journal",
        "relay.logs",  # the delivery process logs as relay run --log says
        "relay.model",
        "relay.plugins",
    },
    # The admin listener: what the daemon wires up, read for operators (and the version).
    "relay.admin": {
        "relay.__version__",
        "relay.clock",
        "relay.config",
        "relay.delivery",
        "relay.http",
        "relay.ingest",
        "relay.journal",
        "relay.plugins",
    },
    # The web console: the admin listener's own modules (its API's endpoints, the webhooks'
    # states), and what they read.
    "relay.admin.console": {
        "relay.__version__",
        "relay.admin",
        "relay.delivery",
        "relay.http",
        "relay.journal",
    },
    "relay.daemon": {
        "relay.admin",
        "relay.clock",
        "relay.config",
        "relay.delivery",
        "relay.http",
        "relay.ingest",
        "relay.journal",
        "relay.plugins",
        "relay.startup",
    },
    "relay.startup": {"relay.config", "relay.http"},
    "relay.notify": {"relay.daemon"},  # sd_notify: the daemon's states, for relay run
    "relay.cli": {"relay"},  # the top: anything
    # The command line, or a child process's main, which it runs without the command line.
    "relay.__main__": {
        "relay.cli",
        "relay.children",
        "relay.frozen",
        "relay.journal.writer",
        "relay.delivery.process",
    },
}


def modules():
    for path in sorted(RELAY.rglob("*.py")):
        parts = path.relative_to(RELAY.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path


def relay_imports(path: Path):
    """Every ``relay...`` module ``path`` imports, at the top or inside a function."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.split(".")[0] == "relay")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "relay":  # from relay import config
                yield from (f"relay.{a.name}" for a in node.names)
            elif node.module.split(".")[0] == "relay":
                yield node.module


def part_of(name: str) -> str:
    matches = [p for p in MAY_IMPORT if name == p or name.startswith(p + ".")]
    assert matches, f"{name}: no row in MAY_IMPORT says what it may import"
    return max(matches, key=len)


def allowed(part: str, target: str) -> bool:
    if target == part or target.startswith(part + "."):
        return True
    for rule in MAY_IMPORT[part]:
        exact = rule.endswith("!")  # the package's own exports, not its modules
        rule = rule.rstrip("!")
        if target == rule or (not exact and target.startswith(rule + ".")):
            return True
    return False


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v))
def test_imports_flow_down(name, path):
    part = part_of(name)
    wrong = sorted({t for t in relay_imports(path) if not allowed(part, t)})
    assert not wrong, f"{path.relative_to(RELAY.parent)} ({part}) may not import {wrong}"


def test_the_rules_can_fail():
    """The check above would see a journal that imports HTTP, or a built-in reaching inside."""
    assert not allowed("relay.journal", "relay.http.client")
    assert not allowed("relay.plugins.builtin", "relay.plugins.loading")
    assert allowed("relay.plugins.builtin", "relay.plugins")
    assert not allowed("relay.http", "relay.model")
    assert part_of("relay.plugins.builtin.signature") == "relay.plugins.builtin"


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v))
def test_modules_stay_small(name, path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(RELAY.parent)}: {lines} lines; split it"


@pytest.mark.parametrize("package", sorted(p.parent for p in RELAY.rglob("__init__.py")))
def test_every_package_says_what_it_is_for(package):
    docstring = ast.get_docstring(ast.parse((package / "__init__.py").read_text()))
    assert docstring and "export" in docstring.lower(), (
        f"{package}/__init__.py: say in its docstring what the package is for and what it exports"
    )
