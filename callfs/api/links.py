"""`POST /v1/links/generate` and `GET /download/{token}` (API.md §10): the request body and the
response shapes; core/links.py decides. The router has authenticated the generation and applied
both rate limits (API.md §11) before these run."""
import json
from urllib.parse import quote

from callfs._native.pathnorm import PathError, normalize_path, split_parent
from callfs.api.files import file_content
from callfs.domain import errors
from callfs.domain.model import rfc3339_nanos
from callfs.http.request import read_limited
from callfs.http.response import OCTETS, Response, header_lines, json_response

MAX_BODY = 4096  # API.md §2: a larger link request is invalid JSON
_INT64 = range(-(1 << 63), 1 << 63)  # what the reference's integer field holds
_INVALID_JSON = "invalid JSON body"
# API.md §10.3: the bytes of a name left as they are in Content-Disposition (besides A-Z a-z 0-9
# and the `-_.~` that quote() never encodes).
_DISPOSITION_SAFE = "$&+:=@"


def link_base(external_url: str) -> str:
    """`<scheme>://<host>` of the link URLs (API.md §10.1, CONFIG.md §5.1): http only for an
    external URL that starts with `http://`."""
    if external_url.startswith("http://"):
        scheme, host = "http", external_url[len("http://"):]
    else:
        scheme = "https"
        host = external_url[len("https://"):] if external_url.startswith("https://") \
            else external_url
    return f"{scheme}://{host.rstrip('/')}"


def content_disposition(path: str) -> str:
    name = split_parent(path)[1]
    return "attachment; filename*=UTF-8''" + quote(name, safe=_DISPOSITION_SAFE)


class LinksAPI:
    def __init__(self, links, external_url: str):
        self.links = links
        self.base = link_base(external_url) + "/download/"

    async def generate(self, request) -> Response:
        path, expiry = await _read_link_request(request.body)
        # The checks of API.md §10.1 in order: the JSON (above), the path's presence and
        # rules (here), then the engine's (existence, read permission, expiry range).
        if not path:
            raise errors.BadRequest("path is required")
        try:
            canonical, _ = normalize_path(path if path.startswith("/") else "/" + path)
        except PathError:
            raise errors.InvalidPath() from None
        token, expires = await self.links.generate(request.principal, canonical, expiry)
        return json_response(201, {"url": self.base + token, "token": token,
                                   "expires": rfc3339_nanos(expires)})

    async def download(self, request, token: bytes, ip: str | None) -> Response:
        inode, handle = await self.links.redeem(token, ip)
        try:
            return _file_response(request, inode, handle)
        except BaseException:
            handle.close()
            raise


def _file_response(request, inode, handle) -> Response:
    """The file's bytes as a GET sends them (a single Range → 206), with the headers of API.md
    §10.3. Conditional headers are not honoured: a 304 would use the link up for nothing."""
    headers = OCTETS + header_lines([("Content-Disposition", content_disposition(inode.path))]) \
        + b"Accept-Ranges: bytes\r\n"
    return file_content(request, headers, inode, handle)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


class _Fields(list):
    """A JSON object's (name, value) pairs, in the order they were written."""


_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_Fields)


async def _read_link_request(body) -> tuple[str, int]:
    """(path, expiry_seconds) of a link request: the first JSON value of at most 4096 bytes,
    an object whose `path` is a string and `expiry_seconds` an integer (null or absent: ""
    and 0). Every other shape is a 400, before anything else is checked (API.md §10.1)."""
    raw = await read_limited(body, MAX_BODY)
    if raw is None:
        raise errors.BadRequest(_INVALID_JSON)
    text = raw.decode("utf-8", "replace").lstrip(" \t\r\n")
    try:
        value, _ = _DECODER.raw_decode(text)  # only the first value counts
    except ValueError:
        raise errors.BadRequest(_INVALID_JSON) from None
    if value is None:
        return "", 0
    if not isinstance(value, _Fields):
        raise errors.BadRequest(_INVALID_JSON)  # not an object
    path, expiry = None, None
    # Field names match as the reference's decoder matches them: exactly, or differing only in
    # case. Every occurrence must have the right type; the last one that is not null counts.
    for key, item in value:
        if item is None:
            continue
        folded = key.casefold()
        if folded == "path":
            if not isinstance(item, str):
                raise errors.BadRequest(_INVALID_JSON)
            path = item
        elif folded == "expiry_seconds":
            # A float (3600.0), a string or a boolean is a type error, as is an integer the
            # reference's 64-bit field cannot hold.
            if type(item) is not int or item not in _INT64:
                raise errors.BadRequest(_INVALID_JSON)
            expiry = item
    return path or "", expiry or 0
