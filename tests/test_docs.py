"""Every hook is documented in docs/hooks.md and has a test of its own (datasette's meta-tests)."""

import re
from pathlib import Path

import pytest

from relay.plugins import hookspecs

ROOT = Path(__file__).parent.parent
HOOKS = sorted(name for name, value in vars(hookspecs).items() if hasattr(value, "relay_spec"))


def test_hooks_are_found():
    assert "prepare_request" in HOOKS


@pytest.fixture(scope="module")
def documented() -> set[str]:
    text = (ROOT / "docs" / "hooks.md").read_text()
    return set(re.findall(r"^## (\w+)\(", text, flags=re.MULTILINE))


@pytest.fixture(scope="module")
def test_sources() -> str:
    here = Path(__file__).resolve()
    return "\n".join(
        p.read_text() for p in (ROOT / "tests").rglob("test_*.py") if p.resolve() != here
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_is_documented(hook, documented):
    assert hook in documented, f"docs/hooks.md has no '## {hook}(...)' heading"


def test_no_documented_hook_is_gone(documented):
    assert documented <= set(HOOKS)


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test_implementing_it(hook, test_sources):
    assert re.search(rf"\bdef {hook}\(", test_sources), f"no test implements {hook}"


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(p.name for p in (ROOT / "docs").glob("*.md"))]
)
def test_relative_links_resolve_inside_the_repository(page):
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    for link in links:
        if re.match(r"[a-z]+:", link):  # https:, mailto:
            continue
        target = (path.parent / link).resolve()
        assert target.is_relative_to(ROOT.resolve()), f"{page}: {link} is outside the repository"
        assert target.exists(), f"{page}: {link} does not exist"


def test_every_test_docs_reference_names_exists(test_sources):
    """docs/reference.md proves each statement of the reference document with a named test."""
    cited = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", (ROOT / "docs" / "reference.md").read_text())
    assert len(cited) >= 10
    for path, name in cited:
        assert (ROOT / path).exists(), f"docs/reference.md cites {path}, which does not exist"
        assert re.search(rf"^(async )?def {name}\(", (ROOT / path).read_text(), re.M), (
            f"docs/reference.md cites {path}::{name}, which is not a test there"
        )
