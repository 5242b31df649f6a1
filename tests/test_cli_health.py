"""`relay health`: GET /healthz of a running relay (the real daemon) as an exit status, for
probes that can only run a command (docs/sidecar.md)."""

import json

from tests.cli import relay_cli
from tests.daemon import Daemon, write_config


async def test_ok_over_the_socket_and_the_port_and_1_when_nobody_answers(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/")
    daemon = await Daemon(config).start()
    for where in (("-c", str(config)), ("--socket", str(tmp_path / "relay.sock"))):
        done = await relay_cli("health", *where)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["status"] == "ok"
    done = await relay_cli("health", "--url", daemon.url)
    assert (done.returncode, json.loads(done.stdout)["webhooks"]) == (0, 1)

    daemon.process.terminate()
    assert await daemon.wait() == 0
    done = await relay_cli("health", "-c", str(config))
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("cannot reach the relay: "), done.stderr
