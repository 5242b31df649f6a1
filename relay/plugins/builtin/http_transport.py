"""The built-in ``"http"`` transport: keep-alive HTTP/1.1 (see relay/http_client.py)."""

from relay.hookspecs import hookimpl
from relay.http_client import HTTPClient


class HTTPTransport:
    def __init__(self, config):
        self.client = HTTPClient()

    async def send(self, webhook, request):
        return await self.client.send(request)

    async def aclose(self):
        await self.client.aclose()


@hookimpl
def register_transports(register):
    register("http", HTTPTransport)
