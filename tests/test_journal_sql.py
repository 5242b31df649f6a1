"""journal_sql: one bad operation in a batch fails alone; listing reads indexes."""

from relay.journal import sqlite as journal_sql
from relay.journal import views


def test_an_operation_sqlite_cannot_bind_fails_alone(tmp_path):
    conn = journal_sql.connect(tmp_path)
    good = ("append", ([("e1", "whatsapp:message:status", b"{}", 1.0)], []))
    bad = ("append", ([("e2", "a\ud800", b"{}", 1.0)], []))  # no UTF-8 text holds a lone surrogate
    (ok_good, _), (ok_bad, error) = journal_sql.run_batch(conn, [good, bad])
    assert ok_good and not ok_bad
    assert "UnicodeEncodeError" in error
    assert conn.execute("SELECT id FROM events").fetchall() == [("e1",)]


def test_failed_deliveries_are_listed_from_an_index_not_a_scan(tmp_path):
    conn = journal_sql.connect(tmp_path)
    events = [(f"e{n}", "whatsapp:message:status", b"{}", 1.0) for n in range(3)]
    deliveries = [(f"d{n}", f"e{n}", "crm", 1.0, 1.0) for n in range(3)]
    journal_sql.run_batch(conn, [("append", (events, deliveries))])
    outcomes = [(s, 1, None, 2.0, "x", f"d{n}") for n, s in enumerate(["delivered", "failed"])]
    journal_sql.run_batch(conn, [("record_attempts", ([], outcomes))])

    listed = views.list_deliveries(tmp_path, state="failed")
    assert [row.id for row in listed] == ["d1"]
    sql, params = views.deliveries_query("failed", None, (), 50)
    plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, params)]
    assert "SEARCH d USING INDEX deliveries_failed (state=?)" in plan
