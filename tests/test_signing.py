"""Every signed request is signed over the data it carries, checked at a real receiver.

The receiver is h11 (tests/test_compose.py's RawReceiver), which records the request target
and body as they came off the wire; the verifier is the README's recipe, written out here, not
relay's code. A verifier that cannot fail proves nothing, so each test also tampers with what
arrived and checks that the signature no longer holds.
"""

import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest

from relay.model import Request
from relay.plugins import request_target, signed_content
from relay.plugins.builtin.signature import signature
from tests import test_compose
from tests.conftest import seed_events
from tests.test_compose import STATUS, Arrived
from tests.test_templates import SEED_ID, SEED_STATUS

# test_compose's fixtures: an h11 receiver, and a relay with a [secrets] table.
raw_receiver = test_compose.raw_receiver
start_composed = test_compose.start_composed

README = Path(__file__).parent.parent / "README.md"
VECTORS = json.loads((Path(__file__).parent / "vectors.json").read_text())


def verify(secret: str, method: str, target: bytes, body: bytes, signature: str) -> bool:
    """The README's recipe ("What a webhook receives")."""
    signed = body if body else method.encode("ascii") + b" " + target
    expected = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def verified(secret: str, arrived: Arrived) -> bool:
    return verify(
        secret, arrived.method, arrived.target.encode(), arrived.body, arrived.header("Signature")
    )


def tampered_target(arrived: Arrived, old: str, new: str) -> Arrived:
    assert old in arrived.target
    return Arrived(arrived.method, arrived.target.replace(old, new), arrived.headers, arrived.body)


async def test_a_composed_get_is_signed_over_its_request_target(start_composed, raw_receiver):
    running = await start_composed(
        [
            {
                "id": "ack",
                "method": "GET",
                "url": f"{raw_receiver.origin}/ack/receive?id=@{{{{payload.id}}}}"
                "&mobile=@{{payload.mobile}}&status=@{{payload.status}}",
                "secret": "s3cr3t",
            }
        ]
    )
    await running.post(STATUS)
    (arrived,) = await raw_receiver.wait_for(1)
    assert arrived.method == "GET" and arrived.body == b""
    # The placeholders' values travel in the target, percent-encoded ("|" is %7C) ...
    assert arrived.target == (f"/ack/receive?id={SEED_ID}&mobile=9190199xxxxx&status={SEED_STATUS}")
    assert "%7C" in arrived.target
    # ... and the signature covers them, byte for byte as they stood on the request line.
    assert verified("s3cr3t", arrived)
    assert not verified("s3cr3t", tampered_target(arrived, "9190199xxxxx", "9190199xxxxy"))
    assert not verified("s3cr3t", tampered_target(arrived, "%7C", "|"))
    assert not verified("ack", arrived)  # the secret, not the id, when there is one
    # The method is signed too: the same target under another method does not verify.
    delete = Arrived("DELETE", arrived.target, arrived.headers, arrived.body)
    assert not verified("s3cr3t", delete)
    # Not the empty body's HMAC, the same for every GET.
    assert arrived.header("Signature") != hmac.new(b"s3cr3t", b"", hashlib.sha256).hexdigest()


async def test_two_gets_for_different_events_carry_different_signatures(
    start_composed, raw_receiver
):
    running = await start_composed(
        [
            {
                "id": "ack",
                "method": "GET",
                "url": f"{raw_receiver.origin}/ack?id=@{{{{payload.id}}}}"
                "&s=@{{payload.status}}",
            }
        ]
    )
    first = {"event": "whatsapp:message:status", "payload": {"id": "m1", "status": "read"}}
    second = {"event": "whatsapp:message:status", "payload": {"id": "m2", "status": "read"}}
    await running.post(first)
    await raw_receiver.wait_for(1)
    await running.post(second)
    one, two = await raw_receiver.wait_for(2)
    assert (one.target, two.target) == ("/ack?id=m1&s=read", "/ack?id=m2&s=read")
    assert one.header("Signature") != two.header("Signature")
    assert verified("ack", one) and verified("ack", two)  # keyed with the id: no secret


async def test_a_delete_is_signed_over_its_method_and_target(start_composed, raw_receiver):
    running = await start_composed(
        [
            {
                "id": "gone",
                "method": "DELETE",
                "url": f"{raw_receiver.origin}/messages/@{{{{payload.id}}}}",
                "secret": "k",
            }
        ]
    )
    await running.post(STATUS)
    (arrived,) = await raw_receiver.wait_for(1)
    assert (arrived.method, arrived.target, arrived.body) == (
        "DELETE",
        f"/messages/{SEED_ID}",
        b"",
    )
    assert verified("k", arrived)
    assert arrived.header("Signature") == (
        hmac.new(b"k", f"DELETE /messages/{SEED_ID}".encode(), hashlib.sha256).hexdigest()
    )
    assert not verified("k", tampered_target(arrived, SEED_ID, "someone-else"))


@pytest.mark.parametrize("body_format", ["json", "form"])
async def test_a_composed_post_is_signed_over_its_body_as_before(
    start_composed, raw_receiver, body_format
):
    running = await start_composed(
        [
            {
                "id": "ack",
                "method": "POST",
                "url": f"{raw_receiver.origin}/ack/receive?id=@{{{{payload.id}}}}",
                "body_format": body_format,
                "body": {"id": "@{{payload.id}}", "status": "@{{payload.status}}"},
                "secret": "s3cr3t",
            }
        ]
    )
    await running.post(STATUS)
    (arrived,) = await raw_receiver.wait_for(1)
    assert arrived.body  # json or urlencoded, as composed
    assert verified("s3cr3t", arrived)
    # Exactly the HMAC of the body, as the reference defines it and relay always sent: the
    # URL is not part of it.
    assert arrived.header("Signature") == (
        hmac.new(b"s3cr3t", arrived.body, hashlib.sha256).hexdigest()
    )
    assert verified("s3cr3t", tampered_target(arrived, SEED_ID, "other"))
    longer = Arrived("POST", arrived.target, arrived.headers, arrived.body + b" ")
    assert not verified("s3cr3t", longer)


async def test_a_plain_webhook_is_signed_over_the_event_json(start_composed, raw_receiver):
    running = await start_composed([{"id": "crm", "url": f"{raw_receiver.origin}/hooks"}])
    event = seed_events()[1]
    await running.post(event)
    (arrived,) = await raw_receiver.wait_for(1)
    assert (arrived.method, arrived.target) == ("POST", "/hooks")
    assert json.loads(arrived.body) == event
    assert verified("crm", arrived)
    assert arrived.header("Signature") == hmac.new(b"crm", arrived.body, hashlib.sha256).hexdigest()
    changed = arrived.body.replace(b"whatsapp:message:in", b"whatsapp:message:ni")
    assert changed != arrived.body
    assert not verified("crm", Arrived("POST", "/hooks", arrived.headers, changed))


@pytest.mark.parametrize(
    "url,target",
    [
        ("{origin}", "/"),  # no path at all
        ("{origin}?a=1", "/?a=1"),
        ("{origin}/p?", "/p"),  # an empty query is not sent
        ("{origin}/p#frag", "/p"),  # nor a fragment
        ("{origin}/a%20b/c;x?q=%2F&r=a+b", "/a%20b/c;x?q=%2F&r=a+b"),  # encoding as written
    ],
)
async def test_what_is_signed_is_the_target_the_client_sends(
    start_composed, raw_receiver, url, target
):
    url = url.format(origin=raw_receiver.origin)
    running = await start_composed([{"id": "t", "method": "GET", "url": url}])
    await running.post(STATUS)
    (arrived,) = await raw_receiver.wait_for(1)
    assert arrived.target == target == request_target(url)
    assert signed_content(Request("GET", url)) == f"GET {target}".encode()
    assert verified("t", arrived)


def test_a_body_is_signed_as_the_vectors_say():
    vector = next(v for v in VECTORS["signatures"] if v["scheme"] == "signature")
    body = vector["body"].encode()
    content = signed_content(Request("POST", "http://x/?q=1", body=body))
    assert content == body
    assert signature(vector["secret"].encode(), content) == vector["expected"]


def test_the_readme_recipe_is_the_one_tested_here():
    """The README's code is what receivers copy: it must be the verifier these tests use."""
    namespace = {}
    for block in re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.M | re.S):
        exec(compile(block, "README.md", "exec"), namespace)  # as tests/test_readme.py does
    readme_verify = namespace["verify_request"]
    good = hmac.new(b"s", b"GET /a?b=1", hashlib.sha256).hexdigest()
    cases = [
        ("GET", b"/a?b=1", b"", good),
        ("GET", b"/a?b=2", b"", good),
        ("DELETE", b"/a?b=1", b"", good),
        ("POST", b"/a?b=1", b"GET /a?b=1", good),
        ("POST", b"/", b"{}", hmac.new(b"s", b"{}", hashlib.sha256).hexdigest()),
    ]
    answers = [readme_verify("s", *case) for case in cases]
    assert answers == [verify("s", *case) for case in cases] == [True, False, False, True, True]
