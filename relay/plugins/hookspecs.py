"""Every hook a relay plugin can implement.

relay's own behaviour is made of plugins that implement these same hooks
(``relay/plugins/builtin``), so anything the built-ins do, a plugin can do differently.

pluggy does not await, so every hook here is an ordinary function. Hooks that need I/O return an
object with async methods (a transport) or an awaitable, which relay awaits.

Named components (signers, transports, retry policies) are handed to relay through ``register_*``
hooks and chosen per webhook in relay.toml (``signer = "..."``, ``transport = "..."``,
``retry = "..."``); ``register_variables`` declares what compose variables mean per event type.
Two plugins registering the same name is an error, never a silent override.
"""

import pluggy

hookspec = pluggy.HookspecMarker("relay")
hookimpl = pluggy.HookimplMarker("relay")


@hookspec
def register_signers(register):
    """Register request signers: ``register(name, sign)``.

    ``sign(webhook, delivery, request) -> Request`` runs once per attempt, after
    ``prepare_request``, and returns the request with its signature headers added. It must sign
    what the request carries: ``relay.plugins.signed_content(request)`` is the exact body bytes,
    or, for a request without a body (a composed GET or DELETE), its method and request target
    as sent (``GET /path?query``). Built in: ``"signature"`` (the seed's ``Signature`` header,
    the default) and ``"none"``.
    """


@hookspec
def register_transports(register):
    """Register transports: ``register(name, factory)``.

    ``factory(config) -> transport`` is called once when relay starts. The transport owns its
    connections and has two async methods: ``send(webhook, request) -> Response``, which raises
    on a connection error (relay bounds it with the webhook's ``timeout`` and cancels it past that),
    and ``aclose()``. Built in: ``"http"``, keep-alive HTTP/1.1 (relay/http/client.py).

    ``send`` may also name an ``attempt`` argument (``send(webhook, request, attempt)``), as a
    hook implementation names the arguments it wants; relay passes it only then. Tasks started in
    ``attempt.nursery`` (racing connections, say) are cancelled when the attempt ends.
    """


@hookspec
def register_retry_policies(register):
    """Register retry policies: ``register(name, policy)``.

    ``policy(webhook, attempt, outcome) -> float | None`` is asked after failed attempt number
    ``attempt`` (1 for the first, counted from the delivery's last replay). It returns how many
    seconds to wait before the next attempt, or None to give up. Built in: ``"exponential"``,
    the seed's 10 s, 100 s, 1000 s ... capped at ``backoff.max``, for ``tries`` attempts in all.
    ``outcome.retry_after`` is the seconds a 429 or 503 asked to wait (its ``Retry-After``), None
    otherwise; the built-in waits ``max(backoff, retry_after)``, capped at ``backoff.max``. A 410
    Gone is never retried (the policy is not asked) and disables the webhook.
    """


@hookspec
def register_webhook_options(register):
    """Register a table of options a webhook may carry: ``register(name, cls)``.

    A webhook's ``[webhooks.NAME]`` table (or ``NAME = { ... }``) is structured into ``cls``, an
    attrs class, when the configuration loads; mistakes are reported in relay.toml's terms
    (``relay.toml: webhooks[2].NAME.token_url: ...``) and the relay does not start. The object is
    then ``webhook.options[NAME]``. A table no plugin registers is a configuration error.
    """


@hookspec
def register_variables(register):
    """Declare what compose placeholders' variables mean on an event type:
    ``register(event_type, {name: path or [paths]})``.

    ``event_type`` is an exact event name; each path starts at the envelope
    (``"payload.recipient.from"``), and with several the first that has a value wins. A bare
    ``@{{name}}`` (or ``@{{payload.name}}`` when the payload has no such key) then takes its
    value there on events of that type. Built in: the reference's table (``id``, ``from``,
    ``to``, ``status`` ...) and ``mobile`` for ``whatsapp:message:status`` and
    ``whatsapp:message:in``. Declaring a variable of an event type twice is an error.
    """


@hookspec(firstresult=True)
def render_request(webhook, delivery):
    """Build the HTTP request for one attempt at ``delivery`` to ``webhook``.

    Return a ``relay.model.Request``, or None to leave the webhook to another plugin. The first
    non-None answer wins. Raise ``relay.model.PermanentFailure`` when the event can never render
    for this webhook (no retries follow). The built-in renderer POSTs the event JSON.
    """


@hookspec
def prepare_request(webhook, delivery, request, attempt):
    """Adjust a rendered request before it is signed: add auth headers, for example.

    Return a new ``Request`` (or an awaitable of one), or None to leave it as it is. Each
    implementation receives the previous one's result. An exception fails the attempt; the
    attempt is recorded with the plugin's name and retried per the retry policy.

    ``attempt`` (name it only if you need it: relay, like pluggy, passes only the arguments an
    implementation names) is the attempt under way. ``attempt.nursery`` is a trio nursery that
    lives exactly as long as the attempt: a task started there (``attempt.nursery.start_soon``)
    is cancelled when the attempt ends, delivered, failed or timed out, so that nothing a
    delivery starts outlives it. Its cancel scope is the attempt's deadline, ``attempt.deadline``
    (trio time): ``inf`` while the request is prepared, then the webhook's ``timeout`` from the
    moment the transport's send starts. A task that raises fails the attempt, unless its outcome
    was already known.
    """


@hookspec
def attempt_finished(webhook, delivery, request, outcome):
    """Observe the end of an attempt (logging, metrics). The return value is ignored.

    Runs after the outcome is known and before the journal records it; it must not block.
    """
