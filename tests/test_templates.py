"""relay.compose on its own: compiling, looking values up, encoding, rendering requests."""

import email.parser
import email.policy
import json
from urllib.parse import parse_qs, urlsplit

import pytest

from relay.compose import RenderError, compile_request, resolve_secrets
from relay.model import PermanentFailure
from relay.plugins import Components, make_plugin_manager
from tests.conftest import seed_events

STATUS, INCOMING, MEDIA = seed_events()
# What the built-in plugin declares, collected as the relay collects it.
REFERENCE = Components.collect(make_plugin_manager(entry_points=False)).variables
SEED_ID = "a418d672-9781-4d97-b517-a56f7d95ad8a"
SEED_STATUS = "sent%7Cdelivered%7Cread%7Cfailed%7Cdeleted"  # '|' is not allowed raw in a query


def compiled(url="https://example.com/hook", secrets=None, **keys):
    keys = {"method": None, "headers": None, "body": None, "body_format": None, **keys}
    template, problems = compile_request(
        url=url, on_missing=keys.pop("on_missing", "empty"), secrets=secrets or {}, **keys
    )
    assert problems == []
    return template and template.with_variables(REFERENCE)


def problems_of(url="https://example.com/hook", secrets=None, **keys):
    keys = {"method": None, "headers": None, "body": None, "body_format": None, **keys}
    template, problems = compile_request(url=url, on_missing="empty", secrets=secrets or {}, **keys)
    assert template is None
    return problems


def render(envelope=STATUS, **keys):
    return compiled(**keys).render(envelope, json.dumps(envelope).encode())


def json_body(envelope=STATUS, **values):
    return json.loads(render(envelope, body=values).body)


def test_seed_url_examples_byte_for_byte():
    first = "https://www.domain.com/ack/receive?id=@{{id}}&mobile=@{{payload.mobile}}&status=@{{payload.status}}"  # noqa: E501
    second = "https://www.domain.com/ack/receive?message_id=@{{payload.id}}&mobile_number=@{{payload.mobile}}&message_status=@{{payload.status}}"  # noqa: E501
    assert render(url=first).url == (
        f"https://www.domain.com/ack/receive?id={SEED_ID}&mobile=9190199xxxxx&status={SEED_STATUS}"
    )
    assert render(url=second).url == (
        f"https://www.domain.com/ack/receive?message_id={SEED_ID}"
        f"&mobile_number=9190199xxxxx&message_status={SEED_STATUS}"
    )


def test_seed_curl_example_byte_for_byte():
    request = render(
        method="POST",
        url="https://www.domain.com/ack/receive?id=@{{payload.id}}",
        headers={"content-type": "application/json", "Authorization": "Bearer %token%"},
        body={
            "id": "@{{payload.id}}",
            "mobile": "@{{payload.mobile}}",
            "message_status": "@{{payload.status}}",
            "read_at": "@{{payload.read_at}}",
        },
        secrets={"token": "t0ken"},
    )
    assert request.method == "POST"
    assert request.url == f"https://www.domain.com/ack/receive?id={SEED_ID}"
    assert request.headers == (
        ("content-type", "application/json"),
        ("Authorization", "Bearer t0ken"),
    )
    assert request.body == (
        b'{"id":"a418d672-9781-4d97-b517-a56f7d95ad8a","mobile":"9190199xxxxx",'
        b'"message_status":"sent|delivered|read|failed|deleted",'
        b'"read_at":"2021-06-18T14:48:06.886358Z"}'
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("id", SEED_ID),
        ("from", "919019120xxx"),
        ("to", "9190199xxxxx"),
        ("status", "sent|delivered|read|failed|deleted"),
        ("delivered_at", "2021-06-18T14:48:06.886358Z"),
        ("read_at", "2021-06-18T14:48:06.886358Z"),
        ("processed_at", "2021-06-18T14:48:06.886358Z"),
        ("submit_time", ""),  # in the seed's table, not in its status example: missing
        ("foreign_id", "your-business-identifier"),
        ("mobile", "9190199xxxxx"),
    ],
)
def test_replaced_variables_of_the_seed_bare_and_under_payload(name, expected):
    assert json_body(bare=f"@{{{{{name}}}}}", rooted=f"@{{{{payload.{name}}}}}") == {
        "bare": expected,
        "rooted": expected,
    }


def test_lookup_nested_paths_list_items_envelope_and_mobile_of_incoming():
    envelope = {**INCOMING, "webhook_id": "ack"}
    assert json_body(
        envelope,
        first_name="@{{payload.recipient.user.first_name}}",
        channel_to="@{{payload.channels.0.to}}",
        bare_nested="@{{recipient.user.user_info.gender}}",
        mobile="@{{payload.mobile}}",
        event="@{{event}}",
        webhook="@{{webhook_id}}",
        past_the_end="@{{payload.channels.1.to}}",
        into_a_string="@{{payload.id.x}}",
    ) == {
        "first_name": "user first name",
        "channel_to": "919019120xxx",
        "bare_nested": "user-gender",
        "mobile": "91XXXXXX",
        "event": "whatsapp:message:in",
        "webhook": "ack",
        "past_the_end": "",
        "into_a_string": "",
    }


def test_precedence_raw_path_then_variable_then_payload_then_envelope():
    known = {"event": "whatsapp:message:status", "payload": {"mobile": "own", "to": "customer"}}
    values = {"bare": "@{{mobile}}", "rooted": "@{{payload.mobile}}", "event": "@{{event}}"}
    # On a type the table knows, a bare variable means what the table says; payload.NAME is the
    # payload's own key when it has one.
    assert json_body(known, **values) == {
        "bare": "customer",
        "rooted": "own",
        "event": "whatsapp:message:status",
    }
    # On a type it does not know, every name is looked up as before: payload, then envelope.
    unknown = {**known, "event": "x:status"}
    assert json_body(unknown, **values) == {"bare": "own", "rooted": "own", "event": "x:status"}
    assert json_body({"event": "x:in", "payload": {"to": "t"}}, m="@{{mobile}}") == {"m": ""}


@pytest.mark.parametrize("event", [INCOMING, MEDIA], ids=["text", "media"])
def test_incoming_messages_fill_from_to_and_mobile_by_meaning(event):
    values = {n: f"@{{{{{n}}}}}" for n in ("id", "from", "to", "mobile")}
    expected = {"id": "our-message-id", "from": "919019120xxx", "to": "91XXXXXX"}
    expected["mobile"] = expected["to"]
    assert json_body(event, **values) == expected
    rooted = {n: f"@{{{{payload.{n}}}}}" for n in values}
    assert json_body(event, **rooted) == expected  # the payload has none of these keys
    # The table's other variables are not an incoming message's, even when a key has the name.
    status_only = {n: f"@{{{{{n}}}}}" for n in ("status", "read_at", "foreign_id")}
    odd = {**event, "payload": {**event["payload"], "status": "not a status event's"}}
    assert json_body(odd, **status_only) == {n: "" for n in status_only}


def test_a_declared_variable_absent_fails_with_on_missing_fail():
    strict = compiled(body={"read": "@{{read_at}}"}, on_missing="fail")
    with pytest.raises(RenderError, match=r"@\{\{read_at\}\} has no value"):
        strict.render(INCOMING, json.dumps(INCOMING).encode())
    assert json.loads(strict.render(STATUS, json.dumps(STATUS).encode()).body) == {
        "read": "2021-06-18T14:48:06.886358Z"
    }


def test_used_variables_are_found_in_url_headers_and_bodies_as_first_written():
    template = compiled(
        method="POST",
        url="https://example.com/?a=@{{payload.read_at}}&b=@{{x.read_at}}",
        headers={"X-From": "@{{from}}"},
        body={"nested": [{"deep": "@{{read_at}} @{{status}}"}], "raw": "@{{payload.user}}"},
    )
    assert template.used_variables() == {
        "read_at": "@{{payload.read_at}}",
        "from": "@{{from}}",
        "status": "@{{status}}",
    }


def test_payload_prefix_is_rooted_at_the_payload_not_looked_up_in_it():
    envelope = {"event": "e", "payload": {"payload": {"id": "inner"}, "id": "outer"}}
    assert json_body(envelope, a="@{{payload.id}}", b="@{{payload.payload.id}}") == {
        "a": "outer",
        "b": "inner",
    }


def test_json_single_placeholder_keeps_the_type_and_text_interpolates():
    envelope = {
        "event": "e",
        "payload": {"n": 3, "f": 1.5, "t": True, "z": None, "o": {"a": [1, "x"]}, "s": "7"},
    }
    body = json_body(
        envelope,
        n="@{{n}}",
        f="@{{f}}",
        t="@{{t}}",
        z="@{{z}}",
        o="@{{o}}",
        s="@{{s}}",
        text="n=@{{n}} t=@{{t}} z=@{{z}} o=@{{o}}",
        nested={"list": ["@{{n}}", "@{{o.a.1}}", 2, False], "deeper": {"x": "@{{s}}"}},
    )
    assert body == {
        "n": 3,
        "f": 1.5,
        "t": True,
        "z": None,
        "o": {"a": [1, "x"]},
        "s": "7",
        "text": 'n=3 t=true z= o={"a":[1,"x"]}',
        "nested": {"list": [3, "x", 2, False], "deeper": {"x": "7"}},
    }


def test_rendering_is_one_pass_payload_text_is_inserted_literally():
    envelope = {"event": "e", "payload": {"evil": "@{{payload.secret}} %token%", "secret": "no"}}
    request = render(
        envelope,
        url="https://example.com/p?q=@{{evil}}",
        headers={"X-Evil": "@{{evil}}"},
        body={"evil": "@{{evil}}", "mixed": "<@{{evil}}>"},
        secrets={"token": "SECRET"},
    )
    assert json.loads(request.body) == {
        "evil": "@{{payload.secret}} %token%",
        "mixed": "<@{{payload.secret}} %token%>",
    }
    assert request.header("X-Evil") == "@{{payload.secret}} %token%"
    assert parse_qs(urlsplit(request.url).query) == {"q": ["@{{payload.secret}} %token%"]}
    assert b"SECRET" not in request.body


def test_missing_values_render_empty_or_fail_permanently():
    keys = {"url": "https://example.com/?r=@{{payload.nope}}", "body": {"r": "@{{nope.deeper}}"}}
    request = render(**keys)
    assert request.url == "https://example.com/?r="
    assert json.loads(request.body) == {"r": ""}
    with pytest.raises(PermanentFailure, match=r"@\{\{payload.nope\}\} has no value"):
        render(on_missing="fail", **keys)


def test_url_values_are_encoded_for_their_component():
    envelope = {
        "event": "e",
        "payload": {"v": "a&b=c#d", "p": "x/../y?z", "dots": "..", "u": "é +"},
    }
    url = (
        compiled(url="https://example.com/a/@{{p}}/@{{dots}}?v=@{{v}}&u=@{{u}}#@{{v}}")
        .render(envelope, b"")
        .url
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "example.com")
    assert parts.path == "/a/x%2F..%2Fy%3Fz/%2E%2E"
    assert parse_qs(parts.query) == {"v": ["a&b=c#d"], "u": ["é +"]}
    assert parts.fragment == "a%26b%3Dc%23d"


def test_url_keeps_percent_encoding_as_written_and_encodes_secrets():
    template = compiled(url="https://example.com/caf%C3%A9?k=%key%&x=%2F", secrets={"key": "a b"})
    assert template.render(STATUS, b"").url == "https://example.com/caf%C3%A9?k=a%20b&x=%2F"


@pytest.mark.parametrize(
    "url",
    [
        "https://@{{host}}/x",
        "https://example.com@{{payload.id}}/x",
        "https://example.com:@{{port}}/x",
        "https://user:%pw%@example.com/x",
        "https://@{{a}}",
    ],
)
def test_placeholders_and_secrets_never_in_scheme_host_or_port(url):
    assert problems_of(url=url, secrets={"pw": "p"}) == [
        ("url", "placeholders and secrets may not appear in the scheme, host or port")
    ]


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("@{{payload.id", "unclosed '@{{payload.id': missing }}"),
        ("x @{{}} y", "empty placeholder @{{}}"),
        ("@{{payload..id}}", "bad placeholder @{{payload..id}}"),
        ("@{{ id }}", "bad placeholder @{{ id }}"),
        ("@{{a|upper}}", "bad placeholder @{{a|upper}}"),
        ("%nope%", "unknown secret %nope% (declared in [secrets]: token)"),
    ],
)
def test_malformed_templates_are_reported_with_their_place(source, message):
    problems = problems_of(body={"outer": {"mobile": source}}, secrets={"token": "t"})
    assert len(problems) == 1
    place, text = problems[0]
    assert place == "body.outer.mobile"
    assert text.startswith(message)


def test_request_shape_problems():
    assert problems_of(method="GET", body={"a": "b"}) == [
        ("body", "GET requests carry no body; remove it or use POST")
    ]
    assert problems_of(body_format="form") == [
        ("body_format", "there is no body to format: add a body table")
    ]
    assert problems_of(body={"a": {"b": "c"}}, body_format="form") == [
        ("body.a", "form fields are flat: use a string or an array of them")
    ]
    assert problems_of(headers={"Bad Name": "x", "Host": "h", "a": "1", "A": "2"}) == [
        ('headers."Bad Name"', "not a valid header name"),
        ("headers.Host", "set by the transport; remove it"),
        ("headers.A", "set twice (header names are case-insensitive)"),
    ]
    assert problems_of(
        headers={"Content-Type": "text/plain"}, body={"a": "b"}, body_format="multipart"
    ) == [("headers.Content-Type", "multipart bodies set it, with their boundary; remove it")]
    assert problems_of(url="https://example.com/a b?x=@{{id}}") == [
        ("url", "spaces, control and non-ASCII characters must be percent-encoded")
    ]


def test_header_text_and_secrets_are_checked_when_compiled_without_showing_secrets():
    problems = problems_of(headers={"X-A": "line\r\nInjected: 1"})
    assert problems == [("headers.X-A", "the text has CR, LF, NUL, control or non-ASCII text")]
    problems = problems_of(headers={"X-B": "Bearer %token%"}, secrets={"token": "abc\ndef"})
    assert problems == [
        ("headers.X-B", "secret %token% has CR, LF, NUL, control or non-ASCII text")
    ]
    assert "abc" not in repr(problems)


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "a\nb", "a\rb", "a\0b"])
def test_header_values_with_cr_lf_or_nul_fail_permanently_at_render(value):
    template = compiled(headers={"X-Name": "n=@{{payload.name}}"})
    with pytest.raises(RenderError, match="contains CR, LF or NUL; not sent"):
        template.render({"event": "e", "payload": {"name": value}}, b"")


def test_header_values_other_unsendable_text_fails_and_outer_whitespace_is_trimmed():
    template = compiled(headers={"X-Name": "@{{payload.name}}"})
    with pytest.raises(RenderError, match="non-ASCII or control"):
        template.render({"event": "e", "payload": {"name": "José"}}, b"")
    request = template.render({"event": "e", "payload": {"name": " \t a\tb c \t"}}, b"")
    assert request.header("X-Name") == "a\tb c"


def test_form_body_urlencoded_with_repeated_keys_and_constants():
    request = render(
        body={"id": "@{{id}}", "tags": ["a&b", "@{{status}}"], "n": 3, "ok": True},
        body_format="form",
    )
    assert request.header("Content-Type") == "application/x-www-form-urlencoded"
    assert parse_qs(request.body.decode("ascii"), strict_parsing=True) == {
        "id": [SEED_ID],
        "tags": ["a&b", "sent|delivered|read|failed|deleted"],
        "n": ["3"],
        "ok": ["true"],
    }


def parse_multipart(content_type: str, body: bytes) -> list[tuple[str, str]]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
    )
    assert message.is_multipart() and not message.defects
    return [
        (part.get_param("name", header="content-disposition"), part.get_payload(decode=True))
        for part in message.iter_parts()
    ]


def test_multipart_body_parses_back_and_is_the_same_bytes_every_attempt():
    envelope = {"event": "e", "payload": {"text": 'two\r\nlines -- and "quotes"', "n": 1}}
    keys = {
        "body": {"text": "@{{text}}", "n": "@{{n}}", "k": ["x", "y"]},
        "body_format": "multipart",
    }
    request = render(envelope, **keys)
    content_type = request.header("Content-Type")
    assert content_type.startswith("multipart/form-data; boundary=relay-")
    assert parse_multipart(content_type, request.body) == [
        ("text", b'two\r\nlines -- and "quotes"'),
        ("n", b"1"),
        ("k", b"x"),
        ("k", b"y"),
    ]
    assert render(envelope, **keys) == request


def test_multipart_value_holding_a_boundary_cannot_end_its_part():
    keys = {"body": {"v": "@{{v}}"}, "body_format": "multipart"}
    first = render({"event": "e", "payload": {"v": ""}}, **keys)
    boundary = first.header("Content-Type").partition("boundary=")[2]
    clash = render({"event": "e", "payload": {"v": boundary}}, **keys)
    clash_boundary = clash.header("Content-Type").partition("boundary=")[2]
    assert parse_multipart(clash.header("Content-Type"), clash.body) == [("v", boundary.encode())]
    assert clash.body.count(clash_boundary.encode()) == 2


def test_methods_without_body_and_the_event_as_default_body():
    get = render(method="GET", url="https://example.com/?id=@{{id}}", headers={"X": "1"})
    assert (get.method, get.body, get.headers) == ("GET", b"", (("X", "1"),))
    raw = b'{"event":"e","payload":{"id":"1"}}'
    put = compiled(method="PUT").render(json.loads(raw), raw)
    assert (put.method, put.body, put.header("Content-Type")) == ("PUT", raw, "application/json")


def test_plain_webhooks_compile_to_nothing_but_a_templated_url_composes():
    assert compiled(url="https://example.com/caf%C3%A9") is None
    raw = json.dumps(STATUS).encode()
    request = compiled(url="https://example.com/s/@{{status}}").render(STATUS, raw)
    assert (request.method, request.url, request.body) == (
        "POST",
        f"https://example.com/s/{SEED_STATUS}",
        raw,
    )


def test_secrets_resolve_from_environment_or_literal_and_never_show_values():
    values, problems = resolve_secrets(
        {
            "token": {"env": "ACK_TOKEN"},
            "literal": "lit",
            "unset": {"env": "NOT_SET"},
            "empty": {"env": "EMPTY"},
            "bad": 3,
            "1x": "y",
        },
        {"ACK_TOKEN": "from-env", "EMPTY": ""},
    )
    assert values == {"token": "from-env", "literal": "lit", "unset": "", "empty": "", "bad": ""}
    assert problems == [
        ("secrets.unset", "environment variable NOT_SET is not set"),
        ("secrets.empty", "environment variable EMPTY is empty"),
        ("secrets.bad", 'expected a string or { env = "VARIABLE" }'),
        ("secrets.1x", "a secret's name is letters, digits and _, not a digit first"),
    ]
    template = compiled(headers={"A": "%token%"}, secrets=values)
    assert "from-env" not in repr(template)
    assert render(headers={"A": "%token%"}, secrets=values).header("A") == "from-env"
