"""What the journal keeps of each attempt (relay/delivery/capture.py), read back as `relay
deliveries show` and the admin API read it (relay/delivery/records.py): the request as sent with
its secrets masked, no second copy of the event's body, the answer's head and first 4 KiB."""

from pathlib import Path

import pytest

from relay import config as config_module
from relay.delivery.capture import BODY_KEPT, Capture
from relay.delivery.records import read_request, read_response
from relay.model import Delivery, Event, Request, Response

SENTINEL = "S3NTINEL-never-shown"
BODY = b'{"event": "whatsapp:message:status", "payload": {"id": "a418d672"}}'


def webhook(**keys):
    config = config_module.parse(
        {
            "relay": {},
            "secrets": {"token": SENTINEL},
            "webhooks": [{"id": "crm", "url": "http://127.0.0.1:9/hook", **keys}],
        },
        Path("/nowhere/relay.toml"),
    )
    return config.webhooks[0]


def delivery(body: bytes = BODY) -> Delivery:
    return Delivery("d1", "crm", Event("e1", "whatsapp:message:status", body, 1.0), 1)


def record(hook, request, response=None):
    return Capture()(hook, delivery(), request, response)


def test_a_plain_request_keeps_no_copy_of_the_events_body():
    hook = webhook(secret="s3cret")
    headers = (("Content-Type", "application/json"), ("Signature", "ab" * 32))
    sent, answer = record(hook, Request("POST", hook.url, headers, BODY), None)
    assert sent == (
        b"= POST http://127.0.0.1:9/hook\nContent-Type: application/json\n"
        b"Signature: " + b"ab" * 32 + b"\n\n"
    )
    assert answer is None  # no answer came
    shown = read_request(sent)
    assert shown["body_is_event"] and shown["body"] is None
    assert shown["headers"] == [["Content-Type", "application/json"], ["Signature", "ab" * 32]]
    # The same bytes, not the same object: still the event's.
    assert record(hook, Request("POST", hook.url, headers, bytes(BODY)), None)[0] == sent


def test_a_composed_request_keeps_its_body_masked_and_cut_at_4_kib():
    hook = webhook(
        method="POST",
        headers={"Authorization": "Bearer %token%", "X-Api-Key": "k1", "X-Source": "relay"},
        body={"token": "%token%", "id": "@{{payload.id}}"},
    )
    long = b'{"token": "' + SENTINEL.encode() + b'", "pad": "' + b"x" * 10_000 + b'"}'
    request = Request(
        "POST",
        f"http://user:{SENTINEL}@127.0.0.1:9/hook?id=7&access_token=abc&k={SENTINEL}",
        (
            ("Authorization", f"Bearer {SENTINEL}"),
            ("X-Api-Key", "k1"),
            ("X-Source", "relay"),
            ("X-Forwarded", f"holds {SENTINEL} inside"),
            ("X-Looks", "Basic dXNlcjpwYXNz"),
            ("Relay-Delivery-Id", "d1"),
        ),
        long,
    )
    sent, _ = record(hook, request)
    assert SENTINEL.encode() not in sent
    shown = read_request(sent)
    assert shown["url"] == "http://***@127.0.0.1:9/hook?id=7&access_token=***&k=***"
    assert dict(shown["headers"]) == {
        "Authorization": "***",  # its template takes a %secret%, and it authorizes
        "X-Api-Key": "***",  # named like a credential
        "X-Source": "relay",
        "X-Forwarded": "***",  # holds a secret
        "X-Looks": "***",  # looks like credentials
        "Relay-Delivery-Id": "d1",
    }
    assert not shown["body_is_event"]
    assert shown["body_length"] == len(long)
    assert len(shown["body"]) == BODY_KEPT
    assert shown["body"].startswith('{"token": "***", "pad": "xxx')


def test_a_secret_cut_by_the_4_kib_bound_is_masked_whole():
    hook = webhook(method="POST", body={"t": "%token%"})
    body = b"x" * (BODY_KEPT - 5) + SENTINEL.encode()
    sent, _ = record(hook, Request("POST", hook.url, (), body))
    assert SENTINEL[:5].encode() not in sent
    assert read_request(sent)["body"] == "x" * (BODY_KEPT - 5) + "***"


def test_the_answer_keeps_its_head_and_first_4_kib_and_masks_what_echoes_a_secret():
    hook = webhook(headers={"Authorization": "Bearer %token%"})
    request = Request("POST", hook.url, (("Authorization", f"Bearer {SENTINEL}"),), BODY)
    head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nSet-Cookie: s=1"
    body = b"you sent Bearer " + SENTINEL.encode() + b"\n" + b"y" * 9000
    headers = (("content-type", "text/plain"), ("set-cookie", "s=1"))
    _, answer = record(hook, request, Response(500, headers, body, head))
    assert SENTINEL.encode() not in answer
    shown = read_response(answer)
    assert shown["status_line"] == "HTTP/1.1 500 Internal Server Error"
    assert shown["headers"] == [["Content-Type", "text/plain"], ["Set-Cookie", "***"]]
    assert shown["body"].startswith("you sent Bearer ***\nyyy")
    assert len(shown["body"]) == BODY_KEPT and shown["body_truncated"]


@pytest.mark.parametrize("body", [b"", b"short"])
def test_a_transport_without_the_raw_head_is_recorded_from_status_and_headers(body):
    hook = webhook()
    response = Response(202, (("X-Request-Id", "r1"), ("X-Api-Token", "t")), body)
    _, answer = record(hook, Request("POST", hook.url, (), BODY), response)
    shown = read_response(answer)
    assert shown["status_line"] == "HTTP 202"
    assert shown["headers"] == [["X-Request-Id", "r1"], ["X-Api-Token", "***"]]
    assert shown["body"] == body.decode() and not shown["body_truncated"]


def test_a_body_that_is_not_text_is_base64():
    hook = webhook()
    response = Response(200, (), b"\xff\xfe\x00", b"HTTP/1.1 200 OK")
    shown = read_response(record(hook, Request("POST", hook.url, (), BODY), response)[1])
    assert shown["body_base64"] and shown["body"] == "//4A"


def test_no_request_built_records_nothing():
    assert record(webhook(), None) == (None, None)
