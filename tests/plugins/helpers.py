"""What the plugin tests share: the peers' test vectors and a look into a relay's journal."""

import json
import sqlite3
from pathlib import Path

import trio

VECTORS = Path(__file__).parent.parent / "vectors.json"


def vector(scheme: str) -> dict:
    return next(v for v in json.loads(VECTORS.read_text())["signatures"] if v["scheme"] == scheme)


def journal_rows(running, sql: str) -> list[tuple]:
    with sqlite3.connect(running.journal_path) as conn:
        return conn.execute(sql).fetchall()


async def wait_until_finished(running, count: int = 1, timeout: float = 10.0) -> None:
    """Wait until ``count`` deliveries are delivered or failed for good."""
    sql = "SELECT count(*) FROM deliveries WHERE state != 'pending'"
    with trio.fail_after(timeout):
        while journal_rows(running, sql) != [(count,)]:
            await trio.sleep(0.02)
