"""What the rate-limited handlers need around the instance's buckets (API.md §11): the client's
address and the answer over the limit. The buckets are callfs._native.ratelimit.RateLimiter,
made by the master before it forks and handed to the Router as `limits`:

    if not router.limits.allow(LINKS_GENERATE, peer_ip(request)):
        return too_many()
"""
from callfs._native.ratelimit import DOWNLOAD, LINKS_GENERATE  # noqa: F401 (the endpoint ids)
from callfs.http.response import JSON, Response

_BODY = b'{"code":"RATE_LIMIT_EXCEEDED","message":"Rate limit exceeded"}'


def too_many() -> Response:
    """429 with API.md §11's exact body, and no Retry-After."""
    return Response(429, JSON, _BODY)


def peer_ip(request) -> str:
    """The TCP peer's address as the socket gives it (headers such as X-Forwarded-For are
    ignored); "" for a peer without one, which the limiter keeps as one client of its own."""
    peer = request.peer
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        return peer[0]
    return ""
