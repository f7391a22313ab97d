"""S3 calls on the event loop: botocore serialises each request (its rest-xml serializer and
the S3 service model), signs it (SigV4, `UNSIGNED-PAYLOAD`) and parses each answer and error;
CallFS's own HTTP client (callfs/http/client.py) sends it, with pooled keep-alive
connections and bodies streamed both ways. No thread is involved. Measured against botocore's
own client on a thread pool, to the same store in the same run (bench/s3_transport.py), a
small GET took 0.5-0.7 of the time and 0.2-0.4 of the CPU, and multipart uploads went faster;
a large download read through Python costs more CPU than urllib3's reads did, which is why a
download from a plain-HTTP store is spliced, socket to socket (http/sending.py).

- **Addressing**: with `backend.s3_endpoint` (MinIO, Ceph, R2, moto, …) path-style requests to
  that endpoint; without, AWS's regional endpoint, the bucket in the host name where it can
  be (virtual-hosted style), else in the path.
- **Credentials**: the configured key pair, else botocore's standard chain (environment,
  shared files, container and instance roles), resolved off the event loop and refreshed
  there when they expire.
- **Payloads** are not hashed into the signature (`UNSIGNED-PAYLOAD`): over TLS the channel
  protects them, and hashing every part would cost the event loop a pass over each byte.
- **Retries**: throttling (503 SlowDown and its kin), 500/502/503/504 answers, errors S3
  reports inside a 200 (CompleteMultipartUpload, CopyObject), and connections that fail
  before any answer are tried again, `attempts` times in all, after a delay drawn uniformly
  from zero to an exponentially growing bound (full jitter). What remains becomes the API's
  error (`translate`); S3's own text goes to the log, never to a client.
"""
import asyncio
import functools
import logging
import os
import random
import ssl
import urllib.parse
from base64 import b64encode
from hashlib import md5

from callfs.domain import errors
from callfs.http.client import HttpClient, PeerError

log = logging.getLogger("callfs.s3")

_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchUpload"}
_UNAVAILABLE = {"SlowDown", "ServiceUnavailable", "503", "InternalError", "500", "RequestTimeout",
                "Throttling", "ThrottlingException", "RequestTimeTooSkewed", "502", "504"}
_RETRY_STATUS = {500, 502, 503, 504}
_ERROR_IN_200 = {"CompleteMultipartUpload", "CopyObject", "UploadPartCopy"}
_STREAMED = {"GetObject"}  # answers whose body the caller reads as it comes
_ANSWER_LIMIT = 64 * 1024 * 1024  # bytes of an answer that is parsed whole (listings)
BACKOFF_BASE = 0.25  # seconds: the first retry waits up to this, each later one twice as long
BACKOFF_MAX = 5.0


def translate(exc: Exception, what: str) -> Exception:
    """The API's error for a failed S3 call (`what` names it for the log)."""
    from botocore.exceptions import ClientError
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in _MISSING or status == 404:
            return errors.NotFound()
        if code == "PreconditionFailed" or status == 412:
            return errors.WriteConflict(f"{what}: the object changed meanwhile")
        text = f"{what}: S3 answered {status} {code}: {error.get('Message', '')}".strip()
        if code in _UNAVAILABLE or (status or 0) >= 500:
            return errors.ServiceUnavailable(text)
        return errors.InternalError(text)
    if isinstance(exc, PeerError):
        return errors.ServiceUnavailable(f"{what}: the S3 store is unreachable: {exc}")
    return exc


@functools.lru_cache(maxsize=1)
def _botocore():
    """The S3 service model, serializer and parser (loaded once: the model is large)."""
    import botocore.parsers
    import botocore.serialize
    import botocore.session
    model = botocore.session.get_session().get_service_model("s3")
    names = {botocore.xform_name(name): name for name in model.operation_names}
    return (model, names, botocore.serialize.create_serializer("rest-xml", False),
            botocore.parsers.create_parser("rest-xml"))


class S3Body:
    """An object's body as it arrives: `read_some`, then `close` (also when not read whole)."""

    __slots__ = ("_response",)

    def __init__(self, response):
        self._response = response

    async def read_some(self, limit: int) -> bytes:
        return await self._response.read_some(limit)

    def detach(self):
        """The rest of the body in its socket (callfs.http.client.SocketBody), or None."""
        return self._response.detach()

    def close(self) -> None:
        self._response.close()


class S3Client:
    """Signed S3 calls of one process (see the module's docstring); made at the first call
    of each process, so no connection crosses a fork."""

    def __init__(self, settings):
        self.settings = settings
        endpoint = urllib.parse.urlsplit(settings.endpoint) if settings.endpoint else None
        if endpoint is not None:
            self.tls = endpoint.scheme == "https"
            self.host = endpoint.hostname or ""
            self.port = endpoint.port or (443 if self.tls else 80)
            self.path_style = True
        else:
            self.tls, self.port = True, 443
            self.host = f"s3.{settings.region}.amazonaws.com"
            # A bucket name with dots breaks the certificate's wildcard: path style then.
            self.path_style = "." in settings.bucket
        self._http = None
        self._pid = -1
        self._credentials = None
        self._auth = None

    def _ready(self) -> HttpClient:
        if self._pid != os.getpid():
            s = self.settings
            self._http = HttpClient(connect_timeout=s.connect_timeout, read_timeout=s.read_timeout,
                                    ssl_context=ssl.create_default_context() if self.tls else None,
                                    user_agent="callfs-s3")
            self._pid = os.getpid()
        return self._http

    async def _signer(self):
        """botocore's S3 SigV4 signer over current credentials."""
        from botocore.auth import S3SigV4Auth
        from botocore.credentials import Credentials
        if self._credentials is None:
            s = self.settings
            if s.access_key or s.secret_key:
                self._credentials = Credentials(s.access_key, s.secret_key)
            else:
                import botocore.session
                found = await asyncio.to_thread(botocore.session.get_session().get_credentials)
                if found is None:
                    raise errors.InternalError("no AWS credentials: set backend.s3_access_key "
                                               "and s3_secret_key, or give the process a role")
                self._credentials = found
        refresh = getattr(self._credentials, "refresh_needed", None)
        if self._auth is None or (refresh is not None and refresh()):
            frozen = await asyncio.to_thread(self._credentials.get_frozen_credentials)
            self._auth = _UnsignedPayloadAuth(Credentials(*frozen[:3]), "s3",
                                              self.settings.region)
        return self._auth

    async def call(self, operation: str, **arguments):
        """One S3 operation (botocore's snake-case name and parameters); the answer as
        botocore's client gives it (GetObject's `Body` an S3Body), or its failure as the
        API's error."""
        model, names, serializer, _ = _botocore()
        op = model.operation_model(names[operation])
        what = f"S3 {operation} {arguments.get('Key', '')}".rstrip()
        request = serializer.serialize_to_request(_prepared(op.name, arguments), op)
        retry = 0
        while True:
            try:
                return await self._send(op, request)
            except _Retryable as exc:
                failure = exc.error
            except PeerError as exc:
                failure = exc
            retry += 1
            if retry >= self.settings.attempts:
                log.warning("an S3 call failed", extra={"call": what, "error": str(failure)})
                raise translate(failure, what) from failure
            delay = random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2 ** (retry - 1)))
            log.info("retrying an S3 call", extra={"call": what, "error": str(failure),
                                                   "retry": retry, "delay_s": round(delay, 3)})
            await asyncio.sleep(delay)

    async def _send(self, op, request: dict):
        from botocore.exceptions import ClientError
        from botocore.awsrequest import AWSRequest
        http = self._ready()
        target, host = self._target(request)
        headers = dict(request["headers"])
        if op.name == "DeleteObjects":  # S3 insists on a checksum of this one's body
            headers["Content-MD5"] = b64encode(md5(request["body"]).digest()).decode()
        default = 443 if self.tls else 80
        netloc = host if self.port == default else f"{host}:{self.port}"
        signed = AWSRequest(method=request["method"],
                            url=f"{'https' if self.tls else 'http'}://{netloc}{target}",
                            headers=headers)
        (await self._signer()).add_auth(signed)
        # (An empty body announces no length on a GET, HEAD or DELETE: http/client.py.)
        response = await http.request(request["method"], host, self.port, target,
                                      headers=list(signed.headers.items()),
                                      body=request["body"], tls=self.tls)
        status = response.status
        if op.name in _STREAMED and status < 300:
            parsed = self._parse(op, status, response.headers, b"")
            parsed["Body"] = S3Body(response)
            return parsed
        try:
            data = await response.read(_ANSWER_LIMIT)
        except PeerError as exc:
            raise _Retryable(exc) from None
        if status < 300 and op.name in _ERROR_IN_200 and b"<Error>" in data[:512]:
            status = 500  # S3 reports some failures inside a 200
        parsed = self._parse(op, status, response.headers, data)
        if status >= 300:
            error = ClientError(parsed, op.name)
            code = str(parsed.get("Error", {}).get("Code", ""))
            if status in _RETRY_STATUS or code in _UNAVAILABLE:
                raise _Retryable(error)
            raise translate(error, f"S3 {op.name}")
        return parsed

    def _target(self, request: dict) -> tuple[str, str]:
        """The request target (path and query) and the host it goes to."""
        path = request["url_path"]
        host = self.host
        bucket = "/" + urllib.parse.quote(self.settings.bucket, safe="")
        if not self.path_style and (path == bucket or path.startswith(bucket + "/")
                                    or path.startswith(bucket + "?")):
            host = f"{self.settings.bucket}.{self.host}"
            path = path[len(bucket):] or "/"
            if path.startswith("?"):
                path = "/" + path
        query = request["query_string"]
        if query:
            encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
            path += ("&" if "?" in path else "?") + encoded
        return path, host

    @staticmethod
    def _parse(op, status: int, headers: list[tuple[str, str]], body: bytes) -> dict:
        from botocore.awsrequest import HeadersDict
        # (A streamed answer is parsed for its headers; its body is set in afterwards.)
        return _botocore()[3].parse({"status_code": status, "headers": HeadersDict(headers),
                                     "body": body, "context": {"operation_name": op.name}},
                                    op.output_shape)

    def close(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._pid == os.getpid():
            http.close_connections()
        self._pid = -1


class _Retryable(Exception):
    def __init__(self, error: Exception):
        self.error = error


def _UnsignedPayloadAuth(credentials, service: str, region: str):
    from botocore.auth import S3SigV4Auth

    class Auth(S3SigV4Auth):
        def _should_sha256_sign_payload(self, request):
            return False  # UNSIGNED-PAYLOAD: see the module's docstring

    return Auth(credentials, service, region)


def _prepared(operation: str, arguments: dict) -> dict:
    """Parameters as botocore's client would pass them to its serializer: a copy source as
    S3 wants it (`bucket/key`, percent-encoded)."""
    source = arguments.get("CopySource")
    if isinstance(source, dict):
        arguments = dict(arguments)
        arguments["CopySource"] = urllib.parse.quote(f"{source['Bucket']}/{source['Key']}",
                                                     safe="/~")
    return arguments
