"""journal_sql.run_batch: one bad operation fails alone, whatever it raises."""

from relay import journal_sql


def test_an_operation_sqlite_cannot_bind_fails_alone(tmp_path):
    conn = journal_sql.connect(tmp_path)
    good = ("append", ([("e1", "whatsapp:message:status", b"{}", 1.0)], []))
    bad = ("append", ([("e2", "a\ud800", b"{}", 1.0)], []))  # no UTF-8 text holds a lone surrogate
    (ok_good, _), (ok_bad, error) = journal_sql.run_batch(conn, [good, bad])
    assert ok_good and not ok_bad
    assert "UnicodeEncodeError" in error
    assert conn.execute("SELECT id FROM events").fetchall() == [("e1",)]
