"""The README's examples run as written: its curl commands against a real relay on the shipped
relay.toml, its TOML blocks as configurations, its Python as Python."""

import json
import re
from pathlib import Path

import pytest
import trio

from relay.plugins import load_with_plugins
from tests.conftest import start_receiver
from tests.daemon import Daemon

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[str]:
    """A shell block's commands: continued lines joined, comments and blank lines left out."""
    found, current = [], ""
    for line in block.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.removesuffix("\\")
        if not line.endswith("\\"):
            found.append(current)
            current = ""
    return found


CURLS = [c for block in blocks("sh") for c in commands(block) if c.startswith("curl ")]


def test_the_examples_are_found():
    """The tests below would pass on a README whose blocks they no longer see."""
    assert len(CURLS) >= 2
    assert blocks("toml") and blocks("python")
    assert README.startswith("# relay\n")
    assert "./scripts/run" in blocks("sh")[0] and "./scripts/test" in blocks("sh")[0]


def shipped_config(directory: Path, receiver_url: str) -> Path:
    """The shipped relay.toml in ``directory``: state_dir and socket stay relative to it
    (``var``, ``var/relay.sock``, as the examples expect when run beside it); the port becomes
    one the system picks, so that tests can run side by side, and the webhook's URL a receiver
    of this test's."""
    text = (ROOT / "relay.toml").read_text()
    assert 'listen = "127.0.0.1:8765"' in text and 'url = "http://127.0.0.1:9000/webhooks"' in text
    text = text.replace("127.0.0.1:8765", "127.0.0.1:0")
    text = text.replace("http://127.0.0.1:9000/webhooks", receiver_url)
    path = directory / "relay.toml"
    path.write_text(text)
    return path


async def test_the_curl_examples_run_against_the_shipped_relay_toml(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    daemon = await Daemon(shipped_config(tmp_path, receiver.url)).start()
    address = daemon.url.removeprefix("http://")
    for command in CURLS:
        # The examples say localhost:8765, the shipped port; this relay listens on its own.
        # They run in the configuration's directory, where var/relay.sock is.
        script = command.replace("localhost:8765", address) + " -w '\\n%{http_code}'"
        result = await trio.run_process(
            ["bash", "-c", script],
            cwd=tmp_path,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert result.returncode == 0, (command, result.stderr)
        body, _, status = result.stdout.decode().rpartition("\n")
        assert status.startswith("2"), (command, status, body)
        answer = json.loads(body)
        assert answer.get("ids") or answer.get("bound") == 1, (command, answer)  # events, reports

    # Three events reach the shipped webhook: two by its patterns, one by its id.
    requests = await receiver.wait_for(3)
    verify = python_namespace()["verify"]
    for request in requests:
        assert verify("local-echo", request.body, request.headers["signature"])  # the id signs
        assert not verify("local-echo", request.body + b" ", request.headers["signature"])
    daemon.process.terminate()
    assert await daemon.wait() == 0


def python_namespace() -> dict:
    """What the README's Python blocks define, run one after the other as written."""
    namespace: dict = {}
    for block in blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)
    return namespace


@pytest.mark.parametrize("block", blocks("toml"), ids=lambda b: b.split("\n")[0])
def test_each_toml_block_is_a_configuration_of_its_own(block, tmp_path, monkeypatch):
    """Each block alone is a relay.toml that loads with relay's plugins, given the environment
    variables its [secrets] read (they stand for the user's own)."""
    for variable in re.findall(r'env = "(\w+)"', block):
        # A URL where the key wants one ([journal] url), else any text.
        value = "postgresql://relay@db/relay" if variable.endswith("_URL") else "set by the test"
        monkeypatch.setenv(variable, value)
    path = tmp_path / "relay.toml"
    path.write_text(block)
    config, _, _ = load_with_plugins(path)
    assert len(config.webhooks) == block.count("[[webhooks]]")  # none lost in the reading


def test_the_python_blocks_run():
    verify = python_namespace()["verify"]
    # HMAC-SHA256 of "{}" keyed with "k": echo -n '{}' | openssl dgst -sha256 -hmac k
    good = "add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff"
    assert verify("k", b"{}", good)
    assert not verify("k", b"{}", good.replace("a", "b", 1))
