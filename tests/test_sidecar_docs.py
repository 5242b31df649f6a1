"""docs/sidecar.md's recipes stay true: the systemd unit is valid (systemd-analyze verify) and
keeps the settings relay depends on, the Kubernetes manifests fit together and their relay.toml
passes relay check, and docs/Dockerfile is the page's."""

import re
import shutil
import subprocess
import sys
import tomllib

import pytest
import yaml

from tests.cli import ROOT

DOC = (ROOT / "docs" / "sidecar.md").read_text()
UNIT = ROOT / "docs" / "relay.service"


def block(language: str) -> str:
    (found,) = re.findall(rf"```{language}\n(.*?)```", DOC, re.S)
    return found


def service_settings() -> dict[str, str]:
    settings, section = {}, None
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            settings[key] = value
    return settings


def test_the_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    relay = tmp_path / "relay"  # verify wants ExecStart's program to exist
    relay.write_text("#!/bin/sh\n")
    relay.chmod(0o755)
    unit = tmp_path / "relay.service"
    unit.write_text(UNIT.read_text().replace("/usr/local/bin/relay", str(relay)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and "relay.service" not in done.stderr, done.stderr


def test_the_unit_keeps_what_relay_needs():
    settings = service_settings()
    assert settings["Type"] == "notify"  # relay/notify.py
    assert settings["NotifyAccess"] == "all"  # READY=1 comes from under the bootloader
    assert settings["KillMode"] == "mixed"  # one SIGTERM, forwarded: relay drains
    assert settings["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert settings["Restart"] == "on-failure"
    assert settings["PrivateTmp"] == "yes"  # where the binary unpacks itself
    for key, value in {
        "ProtectSystem": "strict",
        "NoNewPrivileges": "yes",
        "StateDirectory": "relay",
        "RuntimeDirectory": "relay",
        "User": "relay",
    }.items():
        assert settings[key] == value, key
    assert "relay run --config /etc/relay/relay.toml" in settings["ExecStart"]


def test_the_pod_shares_the_socket_probes_relay_health_and_its_relay_toml_checks(tmp_path):
    documents = {d["kind"]: d for d in yaml.safe_load_all(block("yaml"))}
    toml = documents["Secret"]["stringData"]["relay.toml"]
    relay_settings = tomllib.loads(toml)["relay"]
    socket_dir = relay_settings["socket"].rsplit("/", 1)[0]

    pod = documents["Pod"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    containers = {c["name"]: c for c in pod["containers"]}
    mounts = {
        name: {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        for name, c in containers.items()
    }
    shared = mounts["relay"][socket_dir]
    assert mounts["gateway"][socket_dir] == shared and "emptyDir" in volumes[shared]
    state = volumes[mounts["relay"][relay_settings["state_dir"]]]
    assert (
        state["persistentVolumeClaim"]["claimName"]
        == documents["PersistentVolumeClaim"]["metadata"]["name"]
    )
    assert "emptyDir" in volumes[mounts["relay"]["/tmp"]]  # the root file system is read-only
    probe = containers["relay"]["livenessProbe"]["exec"]["command"]
    assert probe == ["relay", "health", "--socket", relay_settings["socket"]]
    assert pod["securityContext"]["runAsUser"] == 10001  # both containers: the socket is 0600

    config = tmp_path / "relay.toml"
    config.write_text(
        toml.replace("/var/lib/relay", str(tmp_path / "state")).replace(
            "/run/relay", str(tmp_path / "run")
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check", "-c", str(config)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_the_dockerfile_is_the_pages_and_runs_on_the_glibc_it_was_built_with():
    dockerfile = (ROOT / "docs" / "Dockerfile").read_text()
    assert dockerfile == block("dockerfile")
    bases = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert len(bases) == 2 and all("bookworm" in base for base in bases), bases
    assert "./scripts/build --no-cache" in dockerfile
    assert "COPY --from=build /src/dist/relay /usr/local/bin/relay" in dockerfile
