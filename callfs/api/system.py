"""`/metrics` and the WebSocket endpoint's handshake checks (API.md §12, §15)."""
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from callfs.http.response import Response, text_response


class SystemAPI:
    async def metrics(self, request) -> Response:
        body = generate_latest(REGISTRY)
        return Response(200, f"Content-Type: {CONTENT_TYPE_LATEST}\r\n".encode(), body)

    async def websocket(self, request, path: str, trailing: bool) -> Response:
        headers = request.headers
        upgrade = headers.get(b"upgrade", b"").lower() == b"websocket"
        if not upgrade or b"sec-websocket-key" not in headers:
            return text_response(400, "Bad Request\n")
        return text_response(501, "WebSocket transfer is not available in this build\n")
