"""dist/relay, the one-file binary (scripts/build), run as a service manager would run it: no
virtualenv and no Python on PATH, an empty environment (``env -i``). It checks a configuration,
loads plugins, delivers the reference's three example events with valid signatures, reloads on
SIGHUP, and after kill -9 the next run delivers every event it acknowledged.

Building takes about a minute when relay changed (a few seconds from scripts/build's cache), so
these run in ./scripts/test (which sets RELAY_TEST_BINARY=1) and with ``pytest -m binary``, and
are skipped otherwise.
"""

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import httpx
import pytest
import trio

from relay.children import DELIVERY, WRITER
from tests.cli import ROOT
from tests.conftest import seed_events, start_receiver
from tests.daemon import alive, child_of

pytestmark = pytest.mark.binary

SECRET = "s3cret-of-the-crm"
AUDIT_SECRET = "another-s3cret"


@pytest.fixture(scope="module")
def binary(request) -> Path:
    if (
        os.environ.get("RELAY_TEST_BINARY") != "1"
        and "binary" not in request.config.option.markexpr
    ):
        pytest.skip("builds dist/relay: run by ./scripts/test, or pytest -m binary")
    subprocess.run([str(ROOT / "scripts" / "build")], check=True, timeout=900)
    return ROOT / "dist" / "relay"


async def run_binary(binary: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    with trio.fail_after(60):
        done = await trio.run_process(
            ["env", "-i", str(binary), *args], capture_stdout=True, capture_stderr=True,
            check=False, cwd=cwd,
        )  # fmt: skip
    return subprocess.CompletedProcess(
        done.args, done.returncode, done.stdout.decode(), done.stderr.decode()
    )


def webhook(webhook_id: str, url: str, secret: str, events: str) -> str:
    return f"""
[[webhooks]]
id = "{webhook_id}"
url = "{url}"
secret = "{secret}"
events = [{events}]
backoff = {{ first = 0.2, factor = 1.0 }}
tries = 1000
"""


def write_config(tmp_path: Path, webhooks: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        """
[relay]
listen = "127.0.0.1:0"
socket = "relay.sock"
state_dir = "state"
grace = 5.0
allow_networks = ["127.0.0.0/8"]
"""
        + webhooks
    )
    return path


class Running:
    """``env -i dist/relay run``, in a session of its own (as a service manager starts it)."""

    def __init__(self, binary: Path, config: Path):
        self.binary = binary
        self.config = config
        self.log = config.parent / "relay.log"
        self.process: trio.Process | None = None
        self.url = ""

    async def start(self) -> "Running":
        self.log.write_text("")
        self.process = await trio.lowlevel.open_process(
            ["env", "-i", str(self.binary), "run", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("a"),
            start_new_session=True,
        )
        with trio.fail_after(30):
            while not (found := re.search(r"taking events on (127\.0\.0\.1:\d+)", self.text())):
                assert self.process.poll() is None, self.text()
                await trio.sleep(0.05)
        self.url = f"http://{found.group(1)}"
        return self

    def text(self) -> str:
        return self.log.read_text()

    async def wait_for_log(self, text: str) -> None:
        with trio.fail_after(20):
            while text not in self.text():
                await trio.sleep(0.05)

    def tree(self) -> dict[str, int]:
        """The bootloader (the process started), relay under it, and relay's two children."""
        (relay,) = (
            Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        )
        return {
            "bootloader": self.process.pid,
            "relay": int(relay),
            "writer": child_of(int(relay), WRITER),
            "delivery": child_of(int(relay), DELIVERY),
        }

    async def post(self, body) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as client:
            return await client.post("/events", json=body)


def unpacked_at(pid: int) -> Path:
    """Where the bootloader unpacked the bundle (it deletes it when it exits, but cannot after
    kill -9)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    (home,) = (v.split(b"=", 1)[1] for v in environ if v.startswith(b"_PYI_APPLICATION_HOME_DIR="))
    return Path(home.decode())


def signed(arrived, secret: str) -> bool:
    expected = hmac.new(secret.encode(), arrived.body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, arrived.headers["signature"])


async def test_version_names_the_release_and_the_commit_it_was_built_at(binary, tmp_path):
    done = await run_binary(binary, "--version", cwd=tmp_path)
    found = re.fullmatch(r"relay (\S+) \(git ([0-9a-f]{7,})(-dirty)?\)\n", done.stdout)
    assert done.returncode == 0 and found, (done.stdout, done.stderr)
    from importlib import metadata

    assert found.group(1) == metadata.version("relay")
    commit = subprocess.run(
        ["git", "cat-file", "-t", found.group(2)], cwd=ROOT, capture_output=True
    )
    assert commit.stdout == b"commit\n", f"{found.group(2)} is no commit of this repository"


async def test_check_and_plugins_by_name_and_from_plugins_dir(binary, tmp_path):
    """The shipped plugins travel in the binary, importable by name; a plugin file in
    plugins_dir loads as from a virtualenv, with what it imports carried too."""
    (tmp_path / "plugins").mkdir()
    shutil.copy(ROOT / "plugins" / "hub_signature.py", tmp_path / "plugins")
    (tmp_path / "plugins" / "stdlib_user.py").write_text(
        '"""What neither relay nor its dependencies import: the binary carries it anyway."""\n'
        "import csv, mailbox, smtplib, wave, xml.dom.minidom  # noqa\n"
    )
    config = write_config(
        tmp_path,
        webhook("crm", "http://127.0.0.1:9/hook", SECRET, '"whatsapp:message:*"')
        + 'signer = "hub_signature"\n'
        + webhook("std", "http://127.0.0.1:9/std", "whsec_" + "QUJD" * 8, '"*"')
        + 'signer = "standard_webhooks"\n',
    )
    config.write_text(
        config.read_text().replace("[relay]\n", '[relay]\nplugins = ["standard_webhooks"]\n')
    )
    done = await run_binary(binary, "check", "--config", str(config), cwd=tmp_path)
    assert (done.returncode, done.stdout.splitlines()[0]) == (0, "relay.toml: ok, 2 webhook(s)"), (
        done
    )
    done = await run_binary(binary, "plugins", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "\nstandard_webhooks\n" in done.stdout and "plugins/hub_signature.py" in done.stdout
    assert "plugins/stdlib_user.py" in done.stdout

    (tmp_path / "plugins" / "hub_signature.py").write_text("import no_such_module\n")
    done = await run_binary(binary, "check", "--config", str(config), cwd=tmp_path)
    assert done.returncode != 0 and "No module named 'no_such_module'" in done.stderr, done


async def test_run_deliver_reload_and_kill_9(binary, tmp_path, nursery):
    crm, audit = await start_receiver(nursery), await start_receiver(nursery)
    config = write_config(tmp_path, webhook("crm", crm.url, SECRET, '"whatsapp:message:*"'))
    done = await run_binary(binary, "check", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    relay = await Running(binary, config).start()
    tree = relay.tree()
    unpacked = [unpacked_at(tree["relay"])]
    try:
        # The reference's three examples, each signed with the webhook's secret.
        events = seed_events()
        assert len(events) == 3
        assert (await relay.post(events)).status_code == 202
        arrived = await crm.wait_for(3)
        bodies = [json.loads(a.body) for a in arrived]
        assert sorted(bodies, key=json.dumps) == sorted(events, key=json.dumps)
        assert all(signed(a, SECRET) for a in arrived)

        # SIGHUP: a webhook added to the file receives the next event, in the delivery process.
        config.write_text(
            config.read_text() + webhook("audit", audit.url, AUDIT_SECRET, '"whatsapp:message:in"')
        )
        os.kill(relay.process.pid, signal.SIGHUP)
        await relay.wait_for_log("reloaded relay.toml: 2 webhooks (added: audit")
        incoming = next(e for e in events if e["event"] == "whatsapp:message:in")
        assert (await relay.post(incoming)).status_code == 202
        (to_audit,) = await audit.wait_for(1)
        assert signed(to_audit, AUDIT_SECRET) and json.loads(to_audit.body) == incoming

        # kill -9 while the crm refuses everything: acknowledged is not delivered yet.
        crm.statuses = [500] * 100_000
        before = len(crm.requests)
        marks = [f"m{n}" for n in range(20)]
        for mark in marks:
            event = {**events[0], "payload": {**events[0]["payload"], "foreign_id": mark}}
            assert (await relay.post(event)).status_code == 202
        await crm.wait_for(before + 1)  # attempts under way
        tree = relay.tree()
        os.kill(relay.process.pid, signal.SIGKILL)  # the process a service manager knows
        assert await relay.process.wait() == -signal.SIGKILL
        with trio.fail_after(20):  # relay dies with the bootloader, and its children after it
            while any(alive(pid) for pid in tree.values()):
                await trio.sleep(0.05)

        crm.statuses = []  # every answer from here on is a 200
        answered = len(crm.requests)
        relay = await Running(binary, config).start()
        tree = relay.tree()
        unpacked.append(unpacked_at(tree["relay"]))
        with trio.fail_after(30):
            while not set(marks) <= {
                json.loads(a.body)["payload"].get("foreign_id") for a in crm.requests[answered:]
            }:
                await trio.sleep(0.05)
        assert all(signed(a, SECRET) for a in crm.requests[answered:])
        # What a Kubernetes exec probe runs (docs/sidecar.md).
        done = await run_binary(binary, "health", "--socket", "relay.sock", cwd=tmp_path)
        assert done.returncode == 0 and json.loads(done.stdout)["status"] == "ok", done

        # Ctrl-C in a terminal signals the whole group: relay must see it once and drain, so
        # it is not in the bootloader's group (which forwards it a copy). Two copies are often
        # one to trio (they arrive together), hence the group checked as well as the drain.
        assert os.getpgid(tree["relay"]) == tree["relay"] != os.getpgid(relay.process.pid)
        os.killpg(relay.process.pid, signal.SIGINT)
        with trio.fail_after(20):
            assert await relay.process.wait() == 0, relay.text()
        assert "SIGINT: stopping" in relay.text() and "again" not in relay.text()
        assert not unpacked[-1].exists()  # a clean exit leaves nothing in /tmp
    finally:
        if relay.process.poll() is None:
            relay.process.kill()  # relay follows the bootloader (PR_SET_PDEATHSIG) ...
            await relay.process.wait()
        if alive(tree["relay"]):  # ... or, if that is what failed, is killed here
            os.kill(tree["relay"], signal.SIGKILL)
        for path in unpacked:  # what kill -9 left behind, and only that
            shutil.rmtree(path, ignore_errors=True)


async def test_the_binary_serves_the_web_console(binary, tmp_path):
    """Its templates, stylesheet and script are package data, which packaging/relay.spec must
    collect: the modules alone would answer 500s."""
    config = write_config(
        tmp_path, 'admin = "127.0.0.1:0"\n' + webhook("crm", "http://127.0.0.1:9/", SECRET, '"*"')
    )
    relay = await Running(binary, config).start()
    try:
        admin = re.search(r"admin listener on (\S+)", relay.text()).group(1)
        async with httpx.AsyncClient(base_url=f"http://{admin}", timeout=10) as client:
            page = await client.get("/console/")
            assert page.status_code == 200 and "<h1>Overview</h1>" in page.text
            for static in re.findall(r'"(/console/static/[^"]+)"', page.text):
                assert (await client.get(static)).status_code == 200, static
            listing = await client.get("/console/deliveries")
            assert listing.status_code == 200 and "<h1>Deliveries</h1>" in listing.text
    finally:
        relay.process.kill()
        await relay.process.wait()
