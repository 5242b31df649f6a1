"""relay.toml: every mistake reported with its place; defaults inherited; secrets never shown."""

import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
import trio

from relay import config
from relay.cli import main
from tests.daemon import Daemon, write_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(textwrap.dedent(text))
    return path


def errors_of(tmp_path: Path, text: str) -> list[str]:
    with pytest.raises(config.ConfigError) as caught:
        config.load(write(tmp_path, text))
    return caught.value.errors


def test_the_repository_example_is_valid():
    example = config.load(Path(__file__).parent.parent / "relay.toml")
    assert example.relay.listen == "127.0.0.1:8765"
    assert example.webhooks


def test_defaults_are_the_reference_documents(tmp_path):
    loaded = config.load(write(tmp_path, '[[webhooks]]\nid = "a"\nurl = "https://x.example/"\n'))
    (webhook,) = loaded.webhooks
    assert (webhook.timeout, webhook.tries) == (3.0, 3)
    assert (webhook.backoff.first, webhook.backoff.factor, webhook.backoff.max) == (10, 10, 100000)
    assert webhook.events == ("*",)
    assert webhook.signing_key == b"a"  # "webhook id as secret"


def test_defaults_table_is_inherited_and_overridden_key_by_key(tmp_path):
    loaded = config.load(
        write(
            tmp_path,
            """
            [defaults]
            tries = 5
            backoff = { first = 1.0, max = 50.0 }
            [[webhooks]]
            id = "a"
            url = "https://x.example/"
            backoff = { factor = 2.0 }
            [[webhooks]]
            id = "b"
            url = "https://x.example/"
            tries = 1
            """,
        )
    )
    a, b = loaded.webhooks
    assert a.tries == 5 and (a.backoff.first, a.backoff.factor, a.backoff.max) == (1, 2, 50)
    assert b.tries == 1 and b.backoff.first == 1.0


def test_relative_paths_are_relative_to_the_file(tmp_path):
    loaded = config.load(write(tmp_path, '[relay]\nsocket = "run/r.sock"\nstate_dir = "st"\n'))
    assert loaded.relay.socket == tmp_path / "run" / "r.sock"
    assert loaded.relay.state_dir == tmp_path / "st"
    assert loaded.relay.plugins_dir == tmp_path / "plugins"


def test_every_mistake_is_named_with_its_place(tmp_path):
    errors = errors_of(
        tmp_path,
        """
        [relay]
        surprise = 1
        [defaults]
        tries = "3"
        [[webhooks]]
        id = "a"
        url = "ftp://x.example/"
        [[webhooks]]
        id = "a"
        url = "https://x.example/"
        [[webhooks]]
        id = "c"
        url = "https://@{{payload.host}}/x"
        [[webhooks]]
        id = "d"
        url = "https://x.example/"
        timeout = 0
        backoff = { jitter = 2 }
        [[webhooks]]
        url = "https://x.example/"
        """,
    )
    assert errors == [
        "relay.toml: relay: unknown keys: surprise",
        "relay.toml: defaults.tries: expected an integer, got a string",
        "relay.toml: webhooks[0].url: must start with http:// or https://",
        "relay.toml: webhooks[2].url: placeholders may not appear in the scheme, host or port",
        "relay.toml: webhooks[3].backoff.jitter: must be a fraction between 0 and 1, got 2.0",
        "relay.toml: webhooks[4].id: required key is missing",
    ]


def test_duplicate_ids_and_bad_listen(tmp_path):
    errors = errors_of(
        tmp_path,
        """
        [relay]
        listen = "localhost"
        [[webhooks]]
        id = "a"
        url = "https://x.example/"
        [[webhooks]]
        id = "a"
        url = "https://y.example/"
        """,
    )
    assert errors == [
        "relay.toml: relay.listen: must be HOST:PORT, e.g. 127.0.0.1:8765",
        "relay.toml: webhooks[1].id: duplicate id 'a' (first used by webhooks[0])",
    ]


def test_not_toml_and_missing_file(tmp_path):
    assert errors_of(tmp_path, "[relay\n")[0].startswith("relay.toml: not valid TOML:")
    with pytest.raises(config.ConfigError, match="nope.toml: cannot read"):
        config.load(tmp_path / "nope.toml")


def test_secrets_never_appear_in_errors_or_reprs(tmp_path):
    path = write(
        tmp_path,
        """
        [[webhooks]]
        id = "a"
        url = "https://x.example/"
        secret = "hunter2-very-secret"
        timeout = "soon"
        """,
    )
    with pytest.raises(config.ConfigError) as caught:
        config.load(path)
    assert "hunter2" not in str(caught.value)
    path.write_text(path.read_text().replace('timeout = "soon"', ""))
    assert "hunter2" not in repr(config.load(path))


def test_relay_check_lists_webhooks_or_errors(tmp_path, capsys):
    good = write(tmp_path, '[[webhooks]]\nid = "crm"\nurl = "https://x.example/"\n')
    assert main(["check", "--config", str(good)]) == 0
    assert "crm: https://x.example/" in capsys.readouterr().out
    good.write_text('[[webhooks]]\nid = "crm"\nurl = "https://x.example/"\nsigner = "rot13"\n')
    assert main(["check", "--config", str(good)]) == 2
    err = capsys.readouterr().err
    assert "relay.toml: webhooks[0].signer: unknown signer 'rot13' (known: " in err


def test_unknown_option_tables_are_errors(tmp_path):
    path = write(
        tmp_path,
        """
        [[webhooks]]
        id = "crm"
        url = "https://x.example/"
        [webhooks.bakoff]
        first = 1
        """,
    )
    result = subprocess.run(
        [sys.executable, "-m", "relay", "check", "--config", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "relay.toml: webhooks[0].bakoff: unknown option table" in result.stderr


def test_a_string_is_one_pattern_not_its_characters(tmp_path):
    loaded = config.load(
        write(
            tmp_path,
            """
            [relay]
            plugins = "relay_test_one_module"
            [[webhooks]]
            id = "a"
            url = "https://x.example/"
            events = "whatsapp:message:status"
            secret = "s"
            """,
        )
    )
    assert loaded.webhooks[0].events == ("whatsapp:message:status",)  # not ('w', 'h', ..., '*')
    assert loaded.relay.plugins == ("relay_test_one_module",)
    assert loaded.webhooks[0].secrets == ("s",)


def test_a_list_of_strings_of_the_wrong_type_is_named(tmp_path):
    errors = errors_of(
        tmp_path,
        """
        [relay]
        plugins = 7
        [[webhooks]]
        id = "a"
        url = "https://x.example/"
        events = 5
        [[webhooks]]
        id = "b"
        url = "https://x.example/"
        events = ["whatsapp:*", 1.5]
        [[webhooks]]
        id = "c"
        url = "https://x.example/"
        secret = ["rotated", 1]
        """,
    )
    assert errors == [
        "relay.toml: relay.plugins: expected a module name or a list of module names, "
        "got an integer 7",
        "relay.toml: webhooks[0].events: expected a pattern or a list of patterns, "
        "got an integer 5",
        "relay.toml: webhooks[1].events: expected a pattern or a list of patterns, "
        "got an array holding a number 1.5",
        "relay.toml: webhooks[2].secret: expected a string or a non-empty array of strings, "
        "got an array",
    ]


def test_a_plugins_list_of_strings_takes_one_string_too():
    @attrs.frozen
    class Options:
        scopes: tuple[str, ...] = ()

    value, problems = config.structure({"scopes": "read"}, Options, "webhooks[0].o", "relay.toml")
    assert (value, problems) == (Options(scopes=("read",)), [])
    value, problems = config.structure({"scopes": 3}, Options, "webhooks[0].o", "relay.toml")
    assert problems == [
        "relay.toml: webhooks[0].o.scopes: expected a string or a list of strings, got an integer 3"
    ]


def relay_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def busy_port():
    """A port another process (this one) listens on."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        yield held.getsockname()[1]


def test_relay_run_names_the_address_it_cannot_listen_on(tmp_path, busy_port):
    path = write(tmp_path, f'[relay]\nlisten = "127.0.0.1:{busy_port}"\n')
    result = relay_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert (
        f"cannot start: cannot listen on 127.0.0.1:{busy_port} ([relay] listen): "
        "address already in use (is a relay already running with this file?)"
    ) in result.stderr
    assert "Errno" not in result.stderr and "Traceback" not in result.stderr


async def test_relay_run_names_a_socket_another_relay_listens_on(tmp_path, nursery):
    (tmp_path / "first").mkdir()
    first = await Daemon(write_config(tmp_path / "first", "http://127.0.0.1:9/")).start()
    held = tmp_path / "first" / "relay.sock"
    second = write(tmp_path, f'[relay]\nsocket = "{held}"\n')
    result = await trio.run_process(
        [sys.executable, "-m", "relay", "run", "--config", str(second)],
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 1
    assert (
        f"cannot start: cannot listen on {held} ([relay] socket): "
        "address already in use (is a relay already running with this file?)"
    ) in result.stderr.decode()
    first.process.terminate()
    assert await first.wait() == 0


def test_relay_run_names_a_state_dir_or_socket_it_cannot_use(tmp_path):
    (tmp_path / "a-file").write_text("")
    path = write(tmp_path, '[relay]\nstate_dir = "a-file/state"\n')
    result = relay_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert (
        f"cannot start: cannot keep the journal in {tmp_path}/a-file/state ([relay] state_dir): "
        f"{tmp_path}/a-file is not a directory"
    ) in result.stderr
    path.write_text('[relay]\nsocket = "a-file/relay.sock"\nstate_dir = "state"\n')
    result = relay_cli("run", "--config", str(path))
    assert result.returncode == 1
    assert (
        f"cannot start: cannot listen on {tmp_path}/a-file/relay.sock ([relay] socket): "
        f"{tmp_path}/a-file is not a directory"
    ) in result.stderr


def test_relay_check_warns_about_a_webhook_that_signs_with_its_id(tmp_path, capsys):
    path = write(
        tmp_path,
        """
        [[webhooks]]
        id = "crm"
        url = "https://x.example/"
        [[webhooks]]
        id = "erp"
        url = "https://x.example/"
        secret = "s3cr3t"
        [[webhooks]]
        id = "unsigned"
        url = "https://x.example/"
        signer = "none"
        """,
    )
    assert main(["check", "--config", str(path)]) == 0  # the reference's default: only a warning
    assert capsys.readouterr().err.splitlines() == [
        "warning: relay.toml: webhooks[0] (id crm): signs with its id, which is guessable; "
        "set secret"
    ]


def test_relay_check_fails_where_relay_run_would(tmp_path, capsys, busy_port, monkeypatch):
    (tmp_path / "a-file").write_text("")
    path = write(
        tmp_path,
        f"""
        [relay]
        listen = "127.0.0.1:{busy_port}"
        socket = "a-file/relay.sock"
        state_dir = "a-file/state"
        """,
    )
    assert main(["check", "--config", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"relay.toml: cannot keep the journal in {tmp_path}/a-file/state ([relay] state_dir): "
        f"{tmp_path}/a-file is not a directory",
        f"relay.toml: cannot listen on 127.0.0.1:{busy_port} ([relay] listen): "
        "address already in use (is a relay already running with this file?)",
        f"relay.toml: cannot listen on {tmp_path}/a-file/relay.sock ([relay] socket): "
        f"{tmp_path}/a-file is not a directory",
    ]

    # A socket someone else listens on; every {env = ...} of [secrets] set.
    held = tmp_path / "held.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(held))
        other.listen()
        path.write_text(
            '[relay]\nsocket = "held.sock"\nstate_dir = "state"\n'
            '[secrets]\ntoken = { env = "RELAY_TEST_UNSET" }\n'
        )
        monkeypatch.delenv("RELAY_TEST_UNSET", raising=False)
        assert main(["check", "--config", str(path)]) == 2
        assert "relay.toml: secrets.token: environment variable RELAY_TEST_UNSET is not set" in (
            capsys.readouterr().err
        )
        monkeypatch.setenv("RELAY_TEST_UNSET", "set now")
        assert main(["check", "--config", str(path)]) == 2
        assert capsys.readouterr().err.splitlines() == [
            f"relay.toml: cannot listen on {held} ([relay] socket): "
            "in use (is a relay already running with this file?)"
        ]
    assert main(["check", "--config", str(path)]) == 0  # left by a crash: run replaces it
    assert not (tmp_path / "state").exists()  # check creates nothing


async def test_relay_check_beside_the_relay_running_its_file_warns(tmp_path):
    config_path = write_config(tmp_path, "http://127.0.0.1:9/")
    daemon = await Daemon(config_path).start()
    port = daemon.url.rpartition(":")[2]
    config_path.write_text(config_path.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    result = await trio.run_process(
        [sys.executable, "-m", "relay", "check", "--config", str(config_path)],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode().splitlines()[:2] == [
        f"warning: relay.toml: [relay] listen: a relay is running on 127.0.0.1:{port}; if it "
        "runs this file, `relay reload` applies changes (a second `relay run` would fail)",
        f"warning: relay.toml: [relay] socket: a relay is running on {tmp_path}/relay.sock; if "
        "it runs this file, `relay reload` applies changes (a second `relay run` would fail)",
    ]
    daemon.process.terminate()
    assert await daemon.wait() == 0
