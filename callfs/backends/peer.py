"""The bytes of local-disk files another instance owns, read through that instance's public
API (API.md §13.4): a GET or HEAD of `<peer base URL>/v1/files/<path>` with the internal
secret, over the internal HTTP client. The forwarding node has authorized its caller against
the shared metadata already; the owner serves the request as `internal-proxy`.

A read asks for the version the forwarding node's metadata describes: the owner's answer must
be of the recorded size (the engine checks), and a second read of the same handle (a range)
is conditional on the ETag the first answer carried. A peer over plain HTTP hands its answer's
socket over, so a proxied download moves socket to socket by splice. Every forward carries
the request's ID (`X-Request-ID`) and the forwarding instance (`X-CallFS-Forwarded-By`), so
one request can be followed across the owners' logs.
"""
import os
import urllib.parse

from callfs.backends.base import Capability
from callfs.backends.streamed import StreamedReadHandle
from callfs.domain import errors
from callfs.domain.forwarding import FORWARDED_BY
from callfs.http.client import HttpClient, PeerError, PeerTimeout
from callfs.observability.logging import request_id


class PeerReadHandle(StreamedReadHandle):
    def __init__(self, peer: "PeerBackend", path: str, size: int, etag: str | None, body=None):
        super().__init__(size, etag, body)
        self.peer = peer
        self.path = path

    @property
    def what(self) -> str:
        return f"{self.peer.instance_id}'s answer for {self.path}"

    async def _ranged(self, offset: int, length: int):
        headers = [("Range", f"bytes={offset}-{offset + length - 1}")]
        if self.etag:
            headers.append(("If-Match", self.etag))
        response = await self.peer.forward("GET", self.path, headers)
        if response.status != 206:
            response.close()
            raise OSError(f"{self.peer.instance_id} answered {response.status} to a range of "
                          f"{self.path}")
        return response


class PeerBackend:
    """Reads of the files one peer instance owns (see the module's docstring)."""

    name = "peer"

    def __init__(self, instance_id: str, base_url: str, *, secret: str, forwarded_by: str,
                 connect_timeout: float = 3.0, read_timeout: float = 30.0,
                 verify_tls: bool = True):
        self.instance_id = instance_id
        url = urllib.parse.urlsplit(base_url)
        self.tls = url.scheme == "https"
        self.host = url.hostname or ""
        self.port = url.port or (443 if self.tls else 80)
        self.secret = secret
        self.forwarded_by = forwarded_by
        self.capabilities = Capability.RANGED_READ | (
            Capability.NONE if self.tls else Capability.SOCKET_BODY)
        self._settings = (connect_timeout, read_timeout, verify_tls)
        self._client = None
        self._pid = -1

    def _http(self) -> HttpClient:
        """This process's client (a connection never crosses a fork)."""
        if self._pid != os.getpid():
            connect_timeout, read_timeout, verify = self._settings
            context = None
            if self.tls:
                import ssl
                context = ssl.create_default_context()
                if not verify:  # backend.internal_proxy_skip_tls_verify
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
            self._client = HttpClient(connect_timeout=connect_timeout,
                                      read_timeout=read_timeout, ssl_context=context,
                                      user_agent="callfs-peer")
            self._pid = os.getpid()
        return self._client

    async def forward(self, method: str, path: str, headers: list[tuple[str, str]]):
        """One request to the owner for `path`; its response once the head has come (a
        PeerError when the owner cannot be reached or is silent)."""
        all_headers = [("Authorization", f"Bearer {self.secret}"),
                       (FORWARDED_BY, self.forwarded_by)]
        rid = request_id.get()
        if rid:
            all_headers.append(("X-Request-ID", rid))
        target = "/v1/files" + urllib.parse.quote(path, safe="/")
        return await self._http().request(method, self.host, self.port, target,
                                          headers=all_headers + headers, tls=self.tls)

    async def open_read(self, path: str, *, content: bool = True) -> PeerReadHandle:
        """The owner's answer to a GET (`content`) or a HEAD: NotFound for its 404,
        PeerUnavailable for anything else it answers or when it cannot be reached (PeerTimedOut
        when it did not answer in time)."""
        try:
            response = await self.forward("GET" if content else "HEAD", path, [])
        except PeerTimeout as exc:
            raise errors.PeerTimedOut(f"{self.instance_id}: {exc}") from None
        except PeerError as exc:
            raise errors.PeerUnavailable(f"{self.instance_id}: {exc}") from None
        if response.status == 404:
            response.close()
            raise errors.NotFound()
        length = response.header("content-length")
        if response.status != 200 or length is None:
            response.close()
            raise errors.PeerUnavailable(f"{self.instance_id} answered {response.status} "
                                         f"for {path}")
        size = int(length)
        if not content:
            response.close()
            return PeerReadHandle(self, path, size, response.header("etag"))
        return PeerReadHandle(self, path, size, response.header("etag"), response)

    async def delete(self, path: str) -> None:
        """Have the owner delete its file: NotFound for its 404, DirectoryNotEmpty for its
        409, PeerUnavailable (or PeerTimedOut) for any other failure."""
        try:
            response = await self.forward("DELETE", path, [])
            await response.read(64 * 1024)
        except PeerTimeout as exc:
            raise errors.PeerTimedOut(f"{self.instance_id}: {exc}") from None
        except PeerError as exc:
            raise errors.PeerUnavailable(f"{self.instance_id}: {exc}") from None
        if response.status == 404:
            raise errors.NotFound()
        if response.status == 409:
            raise errors.DirectoryNotEmpty()
        if response.status != 204:
            raise errors.PeerUnavailable(f"{self.instance_id} answered {response.status} to "
                                         f"the deletion of {path}")

    async def close(self) -> None:
        if self._client is not None and self._pid == os.getpid():
            await self._client.close()
        self._client = None
