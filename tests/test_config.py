"""relay.toml: every mistake reported with its place; defaults inherited; secrets never shown."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relay import config
from relay.cli import main


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
