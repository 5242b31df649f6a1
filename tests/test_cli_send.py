"""`relay send`: events from a file or stdin into the real relay (a subprocess), in batches
under its max_body; ids out, and each rejected event named by its line."""

import json
import sqlite3

import pytest

from tests.cli import relay_cli, relay_on_terminal
from tests.conftest import seed_events, start_receiver
from tests.daemon import Daemon, write_config

GOOD = '{"event": "whatsapp:message:status", "payload": {"n": "%04d"}}'
BAD = '{"event": "whatsapp:message:status", "payload": ["n", "%04d"]}'  # as long as GOOD
assert len(GOOD % 1) == len(BAD % 1)


@pytest.fixture
async def relay(tmp_path, nursery):
    """``await relay(max_body=None)``: a real relay whose webhook is a receiver on loopback."""
    daemons = []

    async def start(max_body: int | None = None) -> Daemon:
        receiver = await start_receiver(nursery)
        config = write_config(tmp_path, receiver.url)
        if max_body is not None:
            config.write_text(
                config.read_text().replace("[relay]", f"[relay]\nmax_body = {max_body}")
            )
        daemon = await Daemon(config).start()
        daemon.receiver = receiver
        daemons.append(daemon)
        return daemon

    yield start
    for daemon in daemons:
        daemon.process.terminate()
        assert await daemon.wait() == 0


def journaled(daemon: Daemon) -> list[tuple[str, bytes]]:
    path = daemon.config.parent / "state" / "journal.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT id, body FROM events ORDER BY rowid").fetchall()


async def test_json_lines_from_stdin_are_journaled_as_written_and_their_ids_printed(relay):
    daemon = await relay()
    lines = [json.dumps(event, indent=None) for event in seed_events()[:3]]
    lines[1] = lines[1].replace(": ", ":")  # the text as written is what goes in, not a rewrite
    result = await relay_cli("send", "-c", str(daemon.config), stdin="\n".join(lines).encode())
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert journaled(daemon) == [
        (i, line.encode()) for i, line in zip(result.stdout.split(), lines, strict=True)
    ]
    assert sorted(r.body for r in await daemon.receiver.wait_for(3)) == sorted(
        line.encode() for line in lines
    )


async def test_an_array_or_a_stream_of_objects_in_a_file_is_split_under_max_body(tmp_path, relay):
    daemon = await relay(max_body=len(GOOD % 0) * 3 + 4)  # three events a request
    events = [GOOD % n for n in range(10)]
    path = tmp_path / "events.json"
    path.write_text("[\n  " + ",\n  ".join(events) + "\n]\n")  # one request would be refused (413)
    result = await relay_cli("send", "-c", str(daemon.config), str(path))
    assert result.returncode == 0, result.stderr
    assert [body.decode() for _, body in journaled(daemon)] == events
    # jq's way: pretty-printed objects one after another.
    pretty = "".join(json.dumps(json.loads(e), indent=2) + "\n" for e in events[:4])
    result = await relay_cli("send", "-c", str(daemon.config), "-", stdin=pretty.encode())
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 4 and len(journaled(daemon)) == 14


async def test_a_rejected_batch_names_each_bad_line_and_keeps_what_was_accepted(tmp_path, relay):
    daemon = await relay(max_body=len(GOOD % 0) * 3 + 4)
    lines = [GOOD % n for n in range(1, 11)]
    lines[7] = BAD % 8  # line 8, in the third batch (lines 7-9)
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = await relay_cli("send", "-c", str(daemon.config), str(path))
    assert result.returncode == 1
    ids = result.stdout.split()
    assert journaled(daemon) == [(i, line.encode()) for i, line in zip(ids, lines[:6], strict=True)]
    assert result.stderr.splitlines() == [
        "relay send: batch 3 of 4 (events 7-9, lines 7-9) rejected: HTTP 422: invalid events",
        "  line 8 (event 8): payload: must be an object",
        "relay send: events 1-6 accepted (their ids are on stdout); events 7-10 not sent, "
        "from line 7 on",
    ]


@pytest.mark.parametrize(
    "text,message",
    [
        (GOOD % 1 + "\n" + GOOD[:-1] % 2 + "\n" + GOOD % 3, "line 3, column 1: not valid JSON: "
         "Expecting ',' delimiter (in the value that starts on line 2)"),
        ('[{"event": "a", "payload": {}},\n 42]',
         "line 2: expected an event object ({...}), got a number"),
        ("[" + GOOD % 1 + " " + GOOD % 2 + "]",  # "[", 62 characters, " ": "{" at 65
         "line 1, column 65: not valid JSON: Expecting ',' or ']' after an event"),
        ("\n \n", "no events in it"),
    ],
)  # fmt: skip
async def test_input_that_is_not_events_is_a_usage_error_and_nothing_is_sent(
    tmp_path, nursery, text, message
):
    receiver = await start_receiver(nursery)  # as the relay: nothing may reach it
    path = tmp_path / "events.json"
    path.write_text(text)
    result = await relay_cli("send", "--url", receiver.url, str(path))
    assert result.returncode == 2
    assert result.stderr.strip().startswith(f"{path}: {message}")
    assert receiver.requests == []


async def test_a_file_it_cannot_read_is_a_usage_error(tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = await relay_cli("send", "--url", "http://127.0.0.1:9", str(missing))
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"{missing}: cannot read: No such file or directory",
    )
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(b'{"event": "a", "payload": {}}\n{"event": "caf\xe9", "payload": {}}\n')
    result = await relay_cli("send", "--url", "http://127.0.0.1:9", str(bad))
    assert (result.returncode, result.stderr.strip()) == (
        2,
        f"{bad}: line 2: not UTF-8 text (byte 44)",
    )


async def test_with_url_and_no_config_batches_stay_under_one_mib(tmp_path, relay):
    daemon = await relay()  # the relay's own max_body: the default, 1 MiB
    event = {"event": "whatsapp:message:status", "payload": {"text": "x" * 400}}
    line = (json.dumps(event) + "\n").encode()
    lines = line * 4000  # 1.7 MB
    result = await relay_cli("send", "--url", daemon.url, stdin=lines, cwd=tmp_path / "state")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 4000 == len(journaled(daemon))
    result = await relay_cli(
        "send", "--socket", str(daemon.config.parent / "relay.sock"), stdin=line * 10
    )
    assert result.returncode == 0, result.stderr


async def test_an_event_over_max_body_fails_before_anything_is_sent(tmp_path, nursery):
    receiver = await start_receiver(nursery)
    config = tmp_path / "relay.toml"
    config.write_text(f'[relay]\nmax_body = 100\nlisten = "{receiver.url[7:-5]}"\n')
    big = json.dumps({"event": "a", "payload": {"x": "y" * 100}})
    result = await relay_cli("send", "-c", str(config), stdin=f"{GOOD % 1}\n{big}".encode())
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"stdin: line 2 (event 2): {len(big) + 2} bytes as a request, over the relay's "
        "max_body of 100; nothing was sent"
    )
    assert receiver.requests == []


async def test_a_relay_it_cannot_reach_is_reported_with_what_was_not_sent():
    result = await relay_cli("send", "--url", "http://127.0.0.1:9", stdin=(GOOD % 1).encode())
    assert result.returncode == 1
    assert "relay send: cannot reach the relay at http://127.0.0.1:9: " in result.stderr
    assert "event 1 not sent, from line 1 on" in result.stderr


async def test_a_progress_bar_shows_on_a_terminal_and_ids_still_go_to_stdout(tmp_path, relay):
    daemon = await relay(max_body=len(GOOD % 0) * 50)
    path = tmp_path / "events.jsonl"
    path.write_text("".join(GOOD % n + "\n" for n in range(2000)))
    done, screen = await relay_on_terminal(
        "send", "-c", str(daemon.config), str(path), stream="stderr"
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.split()) == 2000 == len(journaled(daemon))
    assert b"sending" in screen and b"2000/2000" in screen
