"""Method + route → handler, with authentication, path resolution and the headers every
response carries (API.md §1–§5). Errors raised below are rendered here, once."""
import logging
import re
from urllib.parse import unquote_to_bytes

import orjson

from callfs._native.httphead import client_request_id, random_id
from callfs._native.pathnorm import MalformedURL, PathError, normalize_url_path
from callfs.core.permissions import INTERNAL_USER
from callfs.domain import errors, forwarding
from callfs.domain.errors import CallFSError, ClientGone
from callfs.http.response import JSON, Response, header_lines, text_response
from callfs.http.ratelimit import DOWNLOAD, LINKS_GENERATE, peer_ip, too_many
from callfs.observability import logging as structured
from callfs.observability.metrics import Silent

log = logging.getLogger("callfs.http")

SECURITY_HEADERS = header_lines([
    ("Content-Security-Policy", "default-src 'self'; script-src 'self'; style-src 'self'; "
     "img-src 'self' data:; object-src 'none'; base-uri 'self'; form-action 'self'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "strict-origin-when-cross-origin"),
    ("Permissions-Policy", "geolocation=(), microphone=(), camera=(), payment=(), usb=(), "
     "magnetometer=(), gyroscope=(), accelerometer=()"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
    ("Cross-Origin-Embedder-Policy", "require-corp"),
])
HSTS = b"Strict-Transport-Security: max-age=31536000; includeSubDomains; preload\r\n"
_HEALTH_BODY = b'{"status":"ok"}'
_NOT_FOUND = "404 page not found\n"

_FILES, _FILES_SLASH = b"/v1/files", b"/v1/files/"
_WS = b"/v1/files/ws/"
_DIRS, _DIRS_SLASH = b"/v1/directories", b"/v1/directories/"
_FORWARDED_BY = forwarding.FORWARDED_BY.lower().encode()
_LINKS_GENERATE = b"/v1/links/generate"
_DOWNLOAD = b"/download/"
_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")  # a malformed percent escape
_FILE_METHODS = {b"GET": "get", b"HEAD": "head", b"POST": "post", b"PUT": "put",
                 b"DELETE": "delete", b"PATCH": "patch"}


def error_response(exc: CallFSError) -> Response:
    # A server-side failure's detail is for the log, never the client (API.md §8.2).
    message = type(exc).message if exc.status >= 500 or exc.logged else exc.message
    body = orjson.dumps({"code": exc.code, "message": message})
    return Response(exc.status, JSON, body)


def method_not_allowed(*allowed: str) -> Response:
    return Response(405, header_lines(("Allow", method) for method in allowed))


def take_request_id(request) -> None:
    """The client's X-Request-ID when it may be kept (API.md §3), else a fresh one; every
    record logged while the request is served carries it."""
    given = request.headers.get(b"x-request-id")
    if client_request_id(given):
        request.request_id = given.decode()
    else:
        request.request_id = random_id().decode()
    structured.request_id.set(request.request_id)
    forwarding.forwarded_by.set(None)  # until the request proves it was forwarded


def with_common_headers(request, response: Response) -> Response:
    """The headers every response carries (API.md §3)."""
    extra = SECURITY_HEADERS + b"X-Request-ID: " + request.request_id.encode() + b"\r\n"
    if request.tls:
        extra += HSTS
    response.headers += extra
    return response


class MetricsRouter:
    """The `metrics.listen_addr` listener (API.md §15.2): GET /metrics without a key; other
    methods there 405, other paths 404."""

    def __init__(self, system):
        self.system = system

    async def __call__(self, request) -> Response:
        take_request_id(request)
        if request.path != b"/metrics":
            return with_common_headers(request, text_response(404, _NOT_FOUND))
        request.route = "/metrics"
        if request.method != b"GET":
            return with_common_headers(request, method_not_allowed("GET"))
        return with_common_headers(request, await self.system.metrics(request))


class Router:
    def __init__(self, *, auth, files, directories, system, links=None, limits=None,
                 metrics=None):
        self.auth = auth
        self.metrics = metrics if metrics is not None else Silent()
        self.files = files
        self.directories = directories
        self.system = system
        self.links = links
        self.limits = limits  # the instance's RateLimiter (callfs/_native/ratelimit.pyx)

    async def __call__(self, request) -> Response:
        take_request_id(request)
        try:
            response = await self._dispatch(request)
        except CallFSError as exc:
            if exc.status >= 500 or exc.logged:
                # A failure caused by another exception carries its traceback; a finding the
                # server made itself (bytes that disagree with their record) its message.
                log.error("request failed", exc_info=exc.__cause__ is not None,
                          extra={"status": exc.status, "code": exc.code, "error": str(exc),
                                 "method": request.method.decode("latin-1"),
                                 "route": request.route})
                if exc.status >= 500:
                    self.metrics.error("http", exc.code.lower())
            response = error_response(exc)
        except ClientGone:
            raise
        except Exception:
            log.exception("unexpected failure", extra={"method": request.method.decode("latin-1"),
                                                       "route": request.route})
            self.metrics.error("http", "unexpected")
            response = error_response(errors.InternalError())
        return with_common_headers(request, response)

    async def _dispatch(self, request) -> Response:
        raw = request.path
        method = request.method
        if raw.startswith(b"/v1/") or raw == b"/v1":
            return await self._v1(request, raw, method)
        if raw == b"/health":
            request.route = "/health"
            if method != b"GET":
                return method_not_allowed("GET")
            return Response(200, JSON, _HEALTH_BODY)
        if raw.startswith(_DOWNLOAD):
            request.route = "/download/{token}"
            return await self._download(request, raw[len(_DOWNLOAD):], method)
        if raw == b"/metrics":
            request.route = "/metrics"
            request.principal = self._identify(request)
            return await self.system.metrics(request)
        return text_response(404, _NOT_FOUND)

    def _identify(self, request) -> str:
        presented = request.headers.get(b"authorization")
        principal = self.auth.identify(presented)
        if principal is None:
            reason = "missing" if not presented or not presented.strip() else "unknown_key"
            self.metrics.auth_failed(reason)
            # The peer and the reason; never what was presented.
            log.warning("authentication failed",
                        extra={"peer": peer_ip(request) or "-", "reason": reason,
                               "route": request.route})
            raise errors.AuthenticationFailed()
        if principal.user == INTERNAL_USER:
            forwarder = request.headers.get(_FORWARDED_BY)
            if forwarder:
                forwarding.forwarded_by.set(forwarder.decode("latin-1"))
        return principal

    async def _v1(self, request, raw: bytes, method: bytes) -> Response:
        if raw == _FILES or raw.startswith(_FILES_SLASH):
            request.route = "/v1/files/*"
            handler_name = _FILE_METHODS.get(method)
            if method == b"GET" and raw.startswith(_WS):
                request.route = "/v1/files/ws/*"
                return await self._with_path(request, raw, len(_WS) - 1, self.system.websocket)
            if handler_name is None:
                self._identify_first(request)
                return method_not_allowed("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH")
            handler = getattr(self.files, handler_name)
            return await self._with_path(request, raw, len(_FILES), handler)
        if raw == _DIRS or raw.startswith(_DIRS_SLASH):
            request.route = "/v1/directories/*"
            if method != b"GET":
                self._identify_first(request)
                return method_not_allowed("GET")
            return await self._with_path(request, raw, len(_DIRS), self.directories.get)
        if raw == _LINKS_GENERATE:
            request.route = "/v1/links/generate"
            self._identify_first(request)
            if method != b"POST":
                return method_not_allowed("POST")
            if not self.limits.allow(LINKS_GENERATE, peer_ip(request)):  # after auth (§11)
                return too_many()
            return await self.links.generate(request)
        self._identify_first(request)
        return text_response(404, _NOT_FOUND)

    async def _download(self, request, token: bytes, method: bytes) -> Response:
        """`/download/{token}` (API.md §10.3): one non-empty segment, GET only."""
        if b"%" in token:
            if _ESCAPE.search(token):
                return Response(400, b"Content-Type: text/plain; charset=utf-8\r\n",
                                b"400 Bad Request", close=True)
            token = unquote_to_bytes(token)
        if not token or b"/" in token:
            return text_response(404, _NOT_FOUND)
        if method != b"GET":
            return method_not_allowed("GET")
        ip = peer_ip(request)
        if not self.limits.allow(DOWNLOAD, ip):  # before anything else (API.md §10.3)
            return too_many()
        return await self.links.download(request, token, ip or None)

    def _identify_first(self, request) -> None:
        request.principal = self._identify(request)

    async def _with_path(self, request, raw: bytes, prefix: int, handler) -> Response:
        # A malformed escape is refused before authentication, a rule-breaking path after it.
        path_error = None
        try:
            path, trailing = normalize_url_path(raw[prefix:])
        except MalformedURL:
            return Response(400, b"Content-Type: text/plain; charset=utf-8\r\n",
                            b"400 Bad Request", close=True)
        except PathError as exc:
            path_error = exc
        request.principal = self._identify(request)
        if path_error is not None:
            raise errors.InvalidPath()
        return await handler(request, path, trailing)
