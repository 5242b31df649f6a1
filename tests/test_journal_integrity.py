"""A damaged journal is refused at start, never replaced by an empty one nor written into;
``relay journal check`` says what is wrong, and ``salvage`` copies out what is readable.

Real journals of thousands of rows in tmp_path, damaged as disks and people damage them: cut to
zero bytes, cut in the middle, garbage written over pages in the middle, moved away.
"""

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import trio

from relay.journal import integrity, repair
from relay.journal import sqlite as journal_sql
from relay.journal.integrity import JournalDamaged
from tests.cli import relay_cli
from tests.daemon import Daemon, write_config

EVENTS = 4000
BODY = b'{"event": "whatsapp:message:status", "payload": {"id": "%05d", "pad": "' + b"x" * 300


def make_journal(state_dir: Path) -> dict[str, list[tuple]]:
    """A journal of ``EVENTS`` events, their deliveries (a quarter still pending) and attempts,
    and some bindings; closed, so that all of it is in the main file. Returns its rows."""
    conn = journal_sql.connect(state_dir)
    for start in range(0, EVENTS, 500):
        n = range(start, start + 500)
        events = [(f"e{i:05d}", "whatsapp:message:status", BODY % i, float(i)) for i in n]
        deliveries = [(f"d{i:05d}", f"e{i:05d}", "crm", float(i), float(i)) for i in n]
        bindings = [(f"m{i:05d}", "crm", 1e12) for i in n if i % 8 == 0]
        finished = [i for i in n if i % 4]
        attempts = [
            (f"d{i:05d}", 1, float(i), 0.1, 200, None, b"= POST u\n\n", b"HTTP/1.1 200 OK")
            for i in finished
        ]
        outcomes = [("delivered", 1, None, i + 0.1, "200", f"d{i:05d}") for i in finished]
        journal_sql.run_batch(
            conn,
            [
                ("append", (events, deliveries, bindings)),
                ("record_attempts", (attempts, outcomes)),
            ],
        )
    # What operators and ordering added (schema 3): keys, replays, a disabled webhook.
    conn.execute("UPDATE deliveries SET order_key = 'k' || (rowid % 7) WHERE rowid % 3 = 0")
    conn.execute("UPDATE deliveries SET attempt_base = 1 WHERE rowid % 5 = 0")
    conn.execute(
        "INSERT INTO replays SELECT id, 5.0, 'ops', 1 FROM deliveries WHERE attempt_base = 1"
    )
    conn.execute("INSERT INTO webhook_state VALUES ('crm', 0, '410 Gone from x', 7.0)")
    conn.close()
    return rows_of(state_dir / journal_sql.FILENAME)


def rows_of(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(path)
    try:
        return {
            "events": conn.execute(f"SELECT {repair.EVENTS} FROM events").fetchall(),
            "deliveries": conn.execute(
                "SELECT id, event_id, webhook_id, state, attempts, order_key, attempt_base"
                " FROM deliveries"
            ).fetchall(),
            "attempts": conn.execute("SELECT * FROM attempts").fetchall(),
            "bindings": conn.execute("SELECT * FROM bindings").fetchall(),
            "replays": conn.execute("SELECT * FROM replays").fetchall(),
            "webhook_state": conn.execute("SELECT * FROM webhook_state").fetchall(),
        }
    finally:
        conn.close()


def garbage_in_the_middle(path: Path, pages: int = 3) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek((size // 4096 // 2) * 4096)
        f.write(os.urandom(pages * 4096))


def cut(path: Path, size: int) -> None:
    os.truncate(path, size)


DAMAGE = {
    "cut to half, on a page boundary": lambda p: cut(p, p.stat().st_size // 8192 * 4096),
    "cut to half, mid-page": lambda p: cut(p, p.stat().st_size // 2 + 1000),
    "garbage over three pages in the middle": garbage_in_the_middle,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_journal_is_refused_with_what_to_do(tmp_path, damage):
    state = tmp_path / "state"
    make_journal(state)
    path = state / journal_sql.FILENAME
    DAMAGE[damage](path)
    size = path.stat().st_size
    with pytest.raises(JournalDamaged) as refused:
        journal_sql.connect(state)
    message = str(refused.value)
    assert message.startswith(f"{path} is damaged (")
    assert f'run "relay journal salvage {path} NEW_STATE_DIR"' in message
    assert path.stat().st_size == size  # nothing written into it


@pytest.mark.parametrize("damage", DAMAGE)
def test_salvage_copies_every_readable_row_and_says_what_it_could_not(tmp_path, damage):
    state = tmp_path / "state"
    before = make_journal(state)
    path = state / journal_sql.FILENAME
    DAMAGE[damage](path)

    report = repair.salvage(path, tmp_path / "new")

    after = rows_of(tmp_path / "new" / journal_sql.FILENAME)
    for table, rows in after.items():
        assert set(rows) <= set(before[table]), table  # nothing made up
        assert report.copied[table] == len(rows)
    if damage.startswith("garbage"):
        # Three 4 KiB pages hold at most ~100 rows each, and an event lost takes its delivery
        # with it (which table's pages the garbage hits depends on the schema's layout).
        lost = sum(len(before[table]) - len(after[table]) for table in before)
        assert 0 < lost < 3 * 100 * 2
    else:  # the first half of the file, more or less
        assert EVENTS * 0.2 < len(after["events"]) < EVENTS * 0.8
    assert any(report.unreadable.values())
    # Every delivery salvaged has its event, so a relay can send it; the new journal is sound.
    event_ids = {row[0] for row in after["events"]}
    assert all(row[1] in event_ids for row in after["deliveries"])
    journal_sql.connect(tmp_path / "new").close()


def test_salvage_of_a_sound_journal_copies_everything(tmp_path):
    before = make_journal(tmp_path / "state")
    report = repair.salvage(tmp_path / "state" / journal_sql.FILENAME, tmp_path / "new")
    assert rows_of(tmp_path / "new" / journal_sql.FILENAME) == before
    assert not any(report.unreadable.values())


def test_salvage_of_an_older_schema_copies_what_it_has(tmp_path):
    """A journal from before schema 3 lacks a delivery's attempt_base and the replays and
    webhook_state tables: salvage copies the rest, and the new journal's defaults fill in."""
    before = make_journal(tmp_path / "state")
    path = tmp_path / "state" / journal_sql.FILENAME
    with sqlite3.connect(path) as conn:
        conn.execute("ALTER TABLE deliveries DROP COLUMN attempt_base")
        conn.execute("DROP TABLE replays")
        conn.execute("DROP TABLE webhook_state")
    report = repair.salvage(path, tmp_path / "new")
    after = rows_of(tmp_path / "new" / journal_sql.FILENAME)
    assert after["deliveries"] == [(*row[:6], 0) for row in before["deliveries"]]
    assert after["attempts"] == before["attempts"]
    assert after["replays"] == after["webhook_state"] == []
    assert "replays" not in report.copied and not any(report.unreadable.values())


def test_salvage_never_writes_over_a_journal(tmp_path):
    make_journal(tmp_path / "state")
    make_journal(tmp_path / "other")
    with pytest.raises(repair.SalvageError, match="holds a journal already"):
        repair.salvage(tmp_path / "state" / journal_sql.FILENAME, tmp_path / "other")


def test_a_journal_another_connection_is_checkpointing_is_not_taken_for_cut(tmp_path):
    """A checkpoint writes the new header first, then the pages that grow the file, then
    deletes the WAL: a relay starting meanwhile (beside `relay webhooks disable` closing its
    connection, say) must look again, not refuse a sound journal. Here the checkpoint's
    second half lands 60 ms after the first; a cut that stays is still refused."""
    state = tmp_path / "state"
    make_journal(state)
    path = state / journal_sql.FILENAME
    whole = path.read_bytes()
    cut(path, 4096)  # the header counts every page; the file holds the first

    def finish():
        time.sleep(0.06)
        with path.open("r+b") as f:
            f.write(whole)

    thread = threading.Thread(target=finish)
    thread.start()
    try:
        integrity.check_file(path)  # no JournalDamaged: it looked again
    finally:
        thread.join()
    conn = journal_sql.connect(state)
    conn.close()
    cut(path, 4096)
    with pytest.raises(JournalDamaged, match="cut short"):
        integrity.check_file(path)


def test_a_journal_cut_to_zero_bytes_is_refused_not_replaced(tmp_path):
    state = tmp_path / "state"
    make_journal(state)
    cut(state / journal_sql.FILENAME, 0)
    with pytest.raises(JournalDamaged, match=r"is empty \(0 bytes\), but .*journal\.id says"):
        journal_sql.connect(state)
    assert (state / journal_sql.FILENAME).stat().st_size == 0


def test_a_missing_journal_is_refused_while_the_marker_says_it_existed(tmp_path):
    state = tmp_path / "state"
    make_journal(state)
    (state / journal_sql.FILENAME).rename(tmp_path / "aside.sqlite3")
    with pytest.raises(JournalDamaged, match="is missing, but .*journal.id says"):
        journal_sql.connect(state)
    assert not (state / journal_sql.FILENAME).exists()


def test_an_empty_database_in_its_place_is_refused(tmp_path):
    state = tmp_path / "state"
    make_journal(state)
    (state / journal_sql.FILENAME).unlink()
    sqlite3.connect(state / journal_sql.FILENAME).execute("PRAGMA user_version=0").close()
    with pytest.raises(JournalDamaged, match="holds no journal tables"):
        journal_sql.connect(state)


def test_a_journal_from_before_the_marker_is_adopted(tmp_path):
    state = tmp_path / "state"
    make_journal(state)
    (state / integrity.MARKER).unlink()
    journal_sql.connect(state).close()
    assert (state / integrity.MARKER).read_text().startswith("journal ")


def test_a_large_journal_starts_on_the_checks_that_cost_nothing(tmp_path, monkeypatch):
    """Past QUICK_CHECK_AT_START, garbage mid-file is left to `relay journal check`; a cut
    is still found, from the header."""
    state = tmp_path / "state"
    make_journal(state)
    path = state / journal_sql.FILENAME
    monkeypatch.setattr(integrity, "QUICK_CHECK_AT_START", 4096)
    garbage_in_the_middle(path)
    journal_sql.connect(state).close()
    cut(path, path.stat().st_size // 8192 * 4096)
    with pytest.raises(JournalDamaged, match="it was cut short"):
        journal_sql.connect(state)


async def test_relay_journal_check_says_ok_or_what_is_wrong(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/")
    make_journal(tmp_path / "state")
    done = await relay_cli("journal", "check", "-c", str(config))
    assert done.returncode == 0, done.stderr
    schema = journal_sql.SCHEMA_VERSION
    summary = f"ok (schema {schema}; 4,000 events; deliveries: 3,000 delivered, 1,000 pending)"
    assert f"{tmp_path / 'state' / journal_sql.FILENAME}: {summary}" in done.stdout

    garbage_in_the_middle(tmp_path / "state" / journal_sql.FILENAME)
    done = await relay_cli("journal", "check", "-c", str(config))
    assert done.returncode == 1
    assert "quick_check: " in done.stderr
    assert "relay journal salvage" in done.stderr


async def test_relay_journal_salvage_reports_counts(tmp_path):
    make_journal(tmp_path / "state")
    garbage_in_the_middle(tmp_path / "state" / journal_sql.FILENAME)
    done = await relay_cli("journal", "salvage", str(tmp_path / "state"), str(tmp_path / "new"))
    assert done.returncode == 0, done.stderr
    assert "events: " in done.stdout and " copied" in done.stdout
    assert "could not read" in done.stdout
    assert f'set [relay] state_dir = "{tmp_path / "new"}"' in done.stdout


async def test_the_daemon_refuses_a_damaged_journal_before_it_listens(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/")
    make_journal(tmp_path / "state")
    path = (tmp_path / "state" / journal_sql.FILENAME).absolute()
    garbage_in_the_middle(path)
    daemon = await Daemon(config).launch()
    assert await daemon.wait() == 1
    log = daemon.log.read_text()
    assert f"cannot start: {path} is damaged (quick_check: " in log, log
    assert "taking events" not in log
    # The next start refuses it too: no loop that takes a few events each time.
    daemon = await Daemon(config).launch()
    assert await daemon.wait() == 1
    await trio.sleep(0)
