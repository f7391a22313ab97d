"""Bearer API keys (API.md §4). Presented keys are looked up by a keyed digest, so the lookup
time does not depend on how much of a configured key a guess matches."""
import hashlib
import os

INTERNAL_PROXY = "internal-proxy"
KNOWN_LIMIT = 1024
_WHITESPACE = b" \t\n\r\x0b\x0c"


class Authenticator:
    def __init__(self, api_keys: list[str], api_key_users: dict[str, str], internal_secret: str):
        self._salt = os.urandom(32)
        self._by_digest: dict[bytes, str] = {}
        # Authorization values already proven valid, exactly as sent: the hot path's lookup
        # (public, read-only for it; filled by identify_known). Python salts bytes hashes per
        # process, so a probe's timing says nothing of a key.
        self.known: dict[bytes, str] = {}
        for index, key in enumerate(api_keys or ()):
            self._add(key, f"api-user-{index}")
        for user, key in (api_key_users or {}).items():
            self._add(key, user)
        if internal_secret:
            self._add(internal_secret, INTERNAL_PROXY)

    def _digest(self, key: bytes) -> bytes:
        return hashlib.blake2b(key, key=self._salt, digest_size=32).digest()

    def _add(self, key: str, identity: str) -> None:
        self._by_digest.setdefault(self._digest(key.encode()), identity)

    def identify(self, authorization: bytes | None) -> str | None:
        """The identity for an `Authorization` header value, or None."""
        if not authorization:
            return None
        if authorization.startswith(b"Bearer "):
            authorization = authorization[7:]
        presented = authorization.strip(_WHITESPACE)
        if not presented:
            return None
        return self._by_digest.get(self._digest(presented))

    def identify_known(self, authorization: bytes | None) -> str | None:
        """`identify` for a header value seen before; None (not a verdict) otherwise."""
        identity = self.known.get(authorization)
        if identity is None and authorization:
            identity = self.identify(authorization)
            if identity is not None:
                if len(self.known) >= KNOWN_LIMIT:
                    self.known.clear()
                self.known[authorization] = identity
        return identity
