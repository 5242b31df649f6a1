"""Ids, and the problems parse names: every one, by field."""

import json
import os

import pytest

from relay.ingest import events
from relay.ingest.events import InvalidEvents, new_id


def test_ids_are_unique_32_hex_digits_in_creation_order_across_refills():
    ids = [new_id() for _ in range(3000)]  # several 4 KiB blocks of random bits
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 and i == i.lower() for i in ids)
    assert [i[:16] for i in ids] == sorted(i[:16] for i in ids)


def test_a_forked_child_does_not_repeat_its_parents_ids():
    new_id()  # the pool holds random bits the child must not reuse
    read, write = os.pipe()
    if (pid := os.fork()) == 0:
        os.write(write, new_id()[16:].encode())
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 64).decode() != new_id()[16:]


class Config:
    def webhook(self, webhook_id):
        return object() if webhook_id == "crm" else None


@pytest.mark.parametrize(
    ("item", "problems"),
    [
        ({"event": "a", "payload": {}}, []),
        ({"event": "a", "payload": {}, "webhook_id": "crm"}, []),
        ({"event": "a", "payload": {}, "webhook_id": None}, []),
        ({}, [(".event", "missing"), (".payload", "missing")]),
        (
            {"event": None, "payload": None},
            [(".event", "must be a non-empty string"), (".payload", "must be an object")],
        ),
        (
            {"event": "", "payload": {}, "webhook_id": 1},
            [(".event", "must be a non-empty string"), (".webhook_id", "must be a string")],
        ),
        ({"event": "a", "payload": {}, "webhook_id": "x"}, [(".webhook_id", "no webhook 'x'")]),
        ([], [("", "expected an object")]),
    ],
)
def test_every_problem_of_an_event_is_named(item, problems):
    body = json.dumps([{"event": "ok", "payload": {}}, item]).encode()
    expected = [(f"[1]{field}" if field else "[1]", reason) for field, reason in problems]
    if not problems:
        assert [i.name for i in events.parse(body, Config())] == ["ok", item["event"]]
        return
    with pytest.raises(InvalidEvents) as raised:
        events.parse(body, Config())
    assert raised.value.problems == expected


@pytest.mark.parametrize(
    "text", ['[{"a": 1},{"b": [2, 3]}]', '[ {"a": 1} ,\n\t{"b": 2}\r\n]', "[ ]", '[\n"x"\n]']
)
def test_each_element_of_an_array_comes_with_its_exact_text(text):
    is_array, items = events._split(text)
    assert is_array and [value for value, _ in items] == json.loads(text)
    assert [json.loads(part) for _, part in items] == json.loads(text)
    assert all(part == part.strip() and part in text for _, part in items)


@pytest.mark.parametrize(
    ("text", "error"),
    [("[1 2]", "Expecting ',' delimiter"), ("[1,]", "Expecting value"), ("[1] x", "Extra data")],
)
def test_a_malformed_array_is_not_json(text, error):
    with pytest.raises(json.JSONDecodeError, match=error):
        events._split(text)
