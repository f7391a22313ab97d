"""Plain-Python specification of `callfs._native.token` (API.md §10.2), with hmac, hashlib and
base64 from the standard library. tests/unit/test_token.py checks with hypothesis that native and
oracle agree on every call.

- id = 16 random bytes, base64url with '=' padding (24 characters, ending "==");
- key = SHA-256 digest of the link secret (a str counts as its UTF-8 bytes);
- sig = HMAC-SHA256(key, id + canonical path as UTF-8), base64url with padding (44 characters);
- token = id + "." + sig (69 characters).

A presented token is well formed when it has that exact shape: both parts the canonical
base64url encoding (as an encoder writes it) of 16 and 32 bytes, joined by one '.'.
"""
import base64
import binascii
import hashlib
import hmac
import os
import re

ID_BYTES = 16
ID_CHARS = 24
SIG_CHARS = 44
TOKEN_CHARS = 69
_PART = re.compile(rb"[A-Za-z0-9_-]*=*\Z")


def _as_bytes(value, what: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")  # UnicodeEncodeError for lone surrogates
    if isinstance(value, bytes):
        return value
    raise TypeError(f"{what} is str or bytes")


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


def _canonical(part: bytes, size: int) -> bool:
    if not _PART.match(part):
        return False
    try:
        raw = base64.urlsafe_b64decode(part)
    except (binascii.Error, ValueError):
        return False
    return len(raw) == size and base64.urlsafe_b64encode(raw) == part


def well_formed(token) -> bool:
    data = _as_bytes(token, "a token")
    if len(data) != TOKEN_CHARS or data[ID_CHARS:ID_CHARS + 1] != b".":
        return False
    return _canonical(data[:ID_CHARS], ID_BYTES) and _canonical(data[ID_CHARS + 1:], 32)


def same_bytes(a: bytes, b: bytes) -> bool:
    if not isinstance(a, bytes) or not isinstance(b, bytes):
        raise TypeError("same_bytes() needs bytes")
    return hmac.compare_digest(a, b)


class LinkSigner:
    def __init__(self, secret):
        self._key = hashlib.sha256(_as_bytes(secret, "the link secret")).digest()

    def signature(self, token_id: str, path: str) -> str:
        if not isinstance(token_id, str) or not isinstance(path, str):
            raise TypeError("signature() needs str arguments")
        message = token_id.encode("utf-8") + path.encode("utf-8")
        return _b64url(hmac.new(self._key, message, hashlib.sha256).digest())

    def token_for(self, raw_id: bytes, path: str) -> str:
        if not isinstance(raw_id, bytes) or not isinstance(path, str):
            raise TypeError("token_for() needs bytes and str")
        if len(raw_id) != ID_BYTES:
            raise ValueError("a token id is 16 bytes")
        token_id = _b64url(raw_id)
        return token_id + "." + self.signature(token_id, path)

    def issue(self, path: str) -> str:
        return self.token_for(os.urandom(ID_BYTES), path)

    def verify(self, token, path: str) -> bool:
        if not isinstance(path, str):
            raise TypeError("verify() needs a str path")
        if not well_formed(token):
            return False
        data = _as_bytes(token, "a token")
        expected = self.signature(data[:ID_CHARS].decode("ascii"), path).encode("ascii")
        return hmac.compare_digest(expected, data[ID_CHARS + 1:])
