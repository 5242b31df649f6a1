"""The ways plugins get into a relay, and the loud error when two claim the same name."""

import sys
import textwrap
from pathlib import Path

import pytest

from relay.plugins import Components, PluginError, hookimpl, make_plugin_manager
from tests.conftest import make_config

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
