"""The ways plugins get into a relay, and the loud error when two claim the same name."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio

from relay.plugins import Components, PluginError, hookimpl, make_plugin_manager
from tests.conftest import make_config
from tests.daemon import Daemon, add_plugin, write_config

REPO_PLUGINS = Path(__file__).parent.parent / "plugins"


def plugin_source(signer: str) -> str:
    return textwrap.dedent(
        f"""
        from relay.plugins import hookimpl

        @hookimpl
        def register_signers(register):
            register({signer!r}, lambda webhook, delivery, request: request)
        """
    )


def test_an_inline_plugin_registered_in_a_test():
    class Inline:
        @hookimpl
        def register_signers(self, register):
            register("inline", lambda webhook, delivery, request: request)

    pm = make_plugin_manager(entry_points=False)
    plugin = Inline()
    pm.register(plugin)
    try:
        assert "inline" in Components.collect(pm).signers
    finally:
        pm.unregister(plugin)
    assert "inline" not in Components.collect(pm).signers


def test_a_module_named_in_relay_plugins(tmp_path, monkeypatch):
    package = tmp_path / "site"
    package.mkdir()
    (package / "relay_test_named_plugin.py").write_text(plugin_source("named"))
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "relay_test_named_plugin", raising=False)
    config = make_config(tmp_path, [], plugins=["relay_test_named_plugin"])
    pm = make_plugin_manager(config, entry_points=False)
    components = Components.collect(pm)
    assert components.owners[("signers", "named")] == "relay_test_named_plugin"


def test_a_missing_module_in_relay_plugins_is_an_error(tmp_path):
    config = make_config(tmp_path, [], plugins=["relay_test_no_such_plugin"])
    with pytest.raises(PluginError, match="cannot import 'relay_test_no_such_plugin'"):
        make_plugin_manager(config, entry_points=False)


def test_every_file_in_the_plugins_dir_next_to_the_config(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "from_dir.py").write_text(plugin_source("from_dir"))
    config = make_config(tmp_path, [])
    pm = make_plugin_manager(config, entry_points=False)
    owner = Components.collect(pm).owners[("signers", "from_dir")]
    assert owner == str(tmp_path / "plugins" / "from_dir.py")


def test_an_installed_entry_point(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist_info = site / "relay_test_installed-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: relay-test-installed\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[relay]\ninstalled = relay_test_installed\n")
    (site / "relay_test_installed.py").write_text(plugin_source("installed"))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "relay_test_installed", raising=False)

    assert "installed" not in Components.collect(make_plugin_manager(entry_points=False)).signers
    pm = make_plugin_manager()
    assert Components.collect(pm).owners[("signers", "installed")] == "installed"
    assert pm.get_plugin("installed").__name__ == "relay_test_installed"


def test_two_plugins_registering_one_signer_name_is_an_error():
    class Impostor:
        @hookimpl
        def register_signers(self, register):
            register("signature", lambda webhook, delivery, request: request)

    pm = make_plugin_manager(entry_points=False)
    pm.register(Impostor(), name="impostor")
    with pytest.raises(PluginError) as caught:
        Components.collect(pm)
    message = str(caught.value)
    assert "'signature'" in message
    assert "impostor" in message
    assert "relay.plugins.builtin.signature" in message


def test_the_shipped_plugins_load_together_from_a_plugins_dir(tmp_path):
    config = make_config(tmp_path, [], plugins_dir=str(REPO_PLUGINS))
    components = Components.collect(make_plugin_manager(config, entry_points=False))
    assert {"standard_webhooks", "hub_signature"} <= set(components.signers)
    assert "jsonl" in components.transports
    assert {"bearer_auth", "oauth2", "jsonl"} <= set(components.webhook_options)


MISSPELT = textwrap.dedent(
    """
    from relay.plugins import hookimpl

    @hookimpl
    def prepare_request(webhok, delivery, request):
        return request
    """
)
NO_SUCH_ARGUMENT = (
    "hook prepare_request has no argument 'webhok' (it takes webhook, delivery, request, attempt)"
)


def relay_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=30
    )


def test_a_misspelt_argument_in_a_plugin_file_names_the_file_hook_and_argument(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "x.py").write_text(MISSPELT)
    config = tmp_path / "relay.toml"
    config.write_text('[relay]\nstate_dir = "state"\n')
    for command in ("check", "plugins", "run"):
        result = relay_cli(command, "--config", str(config))
        assert (result.returncode, result.stderr) == (2, f"plugins/x.py: {NO_SUCH_ARGUMENT}\n")


def test_a_misspelt_argument_is_named_however_the_plugin_loads(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist_info = site / "relay_test_misspelt-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: relay-test-misspelt\nVersion: 1.0\n"
    )
    (dist_info / "entry_points.txt").write_text("[relay]\nmisspelt = relay_test_misspelt\n")
    (site / "relay_test_misspelt.py").write_text(MISSPELT)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, "relay_test_misspelt", raising=False)

    config = make_config(tmp_path, [], plugins=["relay_test_misspelt"])
    with pytest.raises(PluginError) as caught:
        make_plugin_manager(config, entry_points=False)
    assert str(caught.value) == (
        f"relay.toml: [relay] plugins: 'relay_test_misspelt': {NO_SUCH_ARGUMENT}"
    )
    with pytest.raises(PluginError) as caught:
        make_plugin_manager()
    assert str(caught.value) == (
        f"entry point 'misspelt' (relay-test-misspelt 1.0): {NO_SUCH_ARGUMENT}"
    )


def test_a_hook_name_relay_does_not_have_is_named_with_the_file(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "y.py").write_text(
        "from relay.plugins import hookimpl\n"
        "@hookimpl\n"
        "def prepare_requests(webhook, delivery, request):\n"
        "    return request\n"
    )
    with pytest.raises(PluginError) as caught:
        make_plugin_manager(make_config(tmp_path, []), entry_points=False)
    assert str(caught.value).startswith(
        "plugins/y.py: prepare_requests is not a hook of relay's (hooks: attempt_finished, "
    )


def test_a_plugin_that_raises_at_import_is_named_with_its_error_and_line(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "boom.py").write_text("import os\n\nraise RuntimeError('no config')\n")
    config = tmp_path / "relay.toml"
    config.write_text('[relay]\nstate_dir = "state"\n')
    result = relay_cli("check", "--config", str(config))
    assert (result.returncode, result.stderr) == (
        2,
        "plugins/boom.py: cannot load plugin: RuntimeError: no config (line 3)\n",
    )
    (tmp_path / "plugins" / "boom.py").write_text("def broken(:\n")
    result = relay_cli("check", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr.startswith("plugins/boom.py: cannot load plugin: SyntaxError: ")
    assert "Traceback" not in result.stderr


async def test_relay_reload_says_a_new_or_changed_plugin_file_needs_a_restart(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/")
    add_plugin(tmp_path, "kept", plugin_source("kept"))
    add_plugin(tmp_path, "edited", plugin_source("edited"))
    daemon = await Daemon(config).start()

    async def reload() -> subprocess.CompletedProcess:
        return await trio.run_process(
            [sys.executable, "-m", "relay", "reload", "--config", str(config)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )

    result = await reload()
    assert result.returncode == 0
    assert b"restart to apply" not in result.stdout  # nothing changed

    add_plugin(tmp_path, "new", plugin_source("new"))
    add_plugin(tmp_path, "edited", plugin_source("edited_again"))
    result = await reload()
    assert result.returncode == 0, result.stderr
    assert b"restart to apply: plugins_dir (added: new.py; changed: edited.py)\n" in result.stdout

    # A webhook that needs the new file's signer: rejected, and the answer says why.
    config.write_text(config.read_text() + 'signer = "new"\n')
    result = await reload()
    assert result.returncode == 1
    assert b"unknown signer 'new'" in result.stderr
    assert (
        b"plugins_dir: plugin files load at a restart, not a reload "
        b"(added: new.py; changed: edited.py)" in result.stderr
    )
    daemon.process.terminate()
    assert await daemon.wait() == 0
