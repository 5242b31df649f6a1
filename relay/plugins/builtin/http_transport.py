"""The built-in ``"http"`` transport: keep-alive HTTP/1.1 (see relay/http/client.py)."""

from relay.plugins import HTTPClient, NetworkPolicy, hookimpl


class HTTPTransport:
    def __init__(self, config):
        self.client = HTTPClient(network_policy=NetworkPolicy(config.relay.allow_networks))

    async def send(self, webhook, request):
        return await self.client.send(request)

    async def aclose(self):
        await self.client.aclose()


@hookimpl
def register_transports(register):
    register("http", HTTPTransport)
