"""The reference's replaced variables, by meaning, on its two event types.

The reference document's table: ``id`` is the message id, ``from`` the WhatsApp business number,
``to`` the customer's number with country code, then the status and its times. relay adds
``mobile``, the customer's number under the name the reference's URL examples use
(``@{{payload.mobile}}``). Each path starts at the envelope; the places are those of the
reference's example events (relay/compose/examples.json). A variable an event type does not
list here has no value on it: an incoming message has no ``read_at``.
"""

from relay.plugins import hookimpl

VARIABLES = {
    "whatsapp:message:status": {
        "id": "payload.id",
        "from": "payload.from",
        "to": "payload.to",
        "mobile": "payload.to",
        "status": "payload.status",
        "delivered_at": "payload.delivered_at",
        "read_at": "payload.read_at",
        "processed_at": "payload.processed_at",
        "submit_time": "payload.submit_time",  # in the table, not in the example: when sent
        "foreign_id": "payload.foreign_id",
    },
    # Text and media alike: the message's own fields differ, not where the numbers are.
    "whatsapp:message:in": {
        "id": "payload.id",
        "from": "payload.channels.0.to",  # the channel the message came in on: the business
        "to": "payload.recipient.from",  # who sent it: the customer
        "mobile": "payload.recipient.from",
    },
}


@hookimpl
def register_variables(register):
    for event_type, variables in VARIABLES.items():
        register(event_type, variables)
