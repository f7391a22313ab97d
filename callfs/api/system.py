"""`/metrics` (API.md §15); the WebSocket endpoint routed here is served by api/transfer.py."""
from callfs.http.response import Response
from callfs.observability.metrics import CONTENT_TYPE, render

_HEADERS = f"Content-Type: {CONTENT_TYPE}\r\n".encode()


class SystemAPI:
    def __init__(self, transfer, tally):
        self.websocket = transfer.websocket  # GET /v1/files/ws/{path} (API.md §12)
        self.tally = tally  # the instance's shared counts: every worker's, summed at render

    async def metrics(self, request) -> Response:
        return Response(200, _HEADERS, render(self.tally))
