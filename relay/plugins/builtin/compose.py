"""Compose webhooks: the request the user shaped in relay.toml (method, URL, headers, body).

Not ``trylast``, so it answers before the plain renderer; webhooks without a compiled template
(nothing composed) are left to it. The template was compiled when the configuration loaded
(relay/compose/), so rendering here is one pass over an event, and an event that cannot
render is a ``PermanentFailure`` of that delivery.
"""

from relay.plugins import hookimpl


@hookimpl
def render_request(webhook, delivery):
    if webhook.template is None:
        return None
    return webhook.template.render(delivery.event.data, delivery.event.body)
