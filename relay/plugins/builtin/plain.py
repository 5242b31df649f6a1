"""Plain webhooks: POST the event JSON as it came in."""

from relay.model import Request
from relay.plugins import hookimpl

JSON = (("Content-Type", "application/json"),)


@hookimpl(trylast=True)
def render_request(webhook, delivery):
    return Request(method="POST", url=webhook.url, headers=JSON, body=delivery.event.body)
