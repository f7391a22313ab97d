"""`/metrics` (API.md §15); the WebSocket endpoint routed here is served by api/transfer.py."""
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from callfs.http.response import Response


class SystemAPI:
    def __init__(self, transfer):
        self.websocket = transfer.websocket  # GET /v1/files/ws/{path} (API.md §12)

    async def metrics(self, request) -> Response:
        body = generate_latest(REGISTRY)
        return Response(200, f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode(), body)
