"""`relay --version`, and `relay` by its name after ./scripts/setup."""

import shutil
import subprocess
from importlib import metadata

import pytest

from tests.cli import ROOT, relay_cli

VERSION = metadata.version("relay")


def head() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


async def test_version_names_the_release_and_the_commit_of_the_checkout():
    assert head(), "the suite runs in a git checkout"
    result = await relay_cli("--version")
    assert (result.returncode, result.stdout) == (0, f"relay {VERSION} (git {head()})\n")


async def test_without_git_the_version_alone(tmp_path):
    result = await relay_cli("--version", env={"PATH": str(tmp_path)})  # no git on it
    assert (result.returncode, result.stdout, result.stderr) == (0, f"relay {VERSION}\n", "")


async def test_outside_a_checkout_or_in_another_projects_the_version_alone(tmp_path):
    outside = tmp_path / "plain"
    shutil.copytree(ROOT / "relay", outside / "relay")  # python -m relay imports this copy
    result = await relay_cli("--version", cwd=outside)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"relay {VERSION}\n", "")

    other = tmp_path / "project"  # relay somewhere inside another git repository
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run(
        ["git", "-C", str(other), "-c", "user.name=a", "-c", "user.email=a@b",
         "commit", "-q", "--allow-empty", "-m", "x"],
        check=True,
    )  # fmt: skip
    shutil.copytree(ROOT / "relay", other / "lib" / "relay")
    result = await relay_cli("--version", cwd=other / "lib")
    assert (result.returncode, result.stdout) == (0, f"relay {VERSION}\n")


async def test_the_installed_command_runs_by_its_path_in_the_venv():
    relay = ROOT / ".venv" / "bin" / "relay"
    assert relay.exists(), "./scripts/setup installs relay into .venv/bin"
    done = subprocess.run([str(relay), "--version"], capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, f"relay {VERSION} (git {head()})\n")


def test_setup_says_how_to_put_relay_on_path_until_it_is(tmp_path):
    stamps = list((ROOT / ".venv").glob(".installed-*-test"))
    if not stamps:  # else setup would install, under the running suite
        pytest.skip("run ./scripts/setup test (or ./scripts/test) first")
    bin_dir = ROOT / ".venv" / "bin"

    def setup(path: str) -> str:
        done = subprocess.run(
            [str(ROOT / "scripts" / "setup"), "test"],
            capture_output=True,
            text=True,
            timeout=120,
            env={"PATH": path, "HOME": str(tmp_path)},
        )
        assert done.returncode == 0, done.stderr
        return done.stderr

    hint = setup("/usr/bin:/bin")
    assert f'export PATH="{bin_dir}:$PATH"' in hint
    assert f'source "{bin_dir}/activate"' in hint
    assert f'ln -s "{bin_dir}/relay" ~/.local/bin/relay' in hint
    assert setup(f"{bin_dir}:/usr/bin:/bin") == ""  # on PATH: nothing to say
    linked = tmp_path / "bin"
    linked.mkdir()
    (linked / "relay").symlink_to(bin_dir / "relay")
    assert setup(f"{linked}:/usr/bin:/bin") == ""
