"""Bearer API keys (API.md §4). Presented keys are looked up by a keyed digest, so the lookup
time does not depend on how much of a configured key a guess matches, and the match is then
confirmed by a constant-time comparison of the keys themselves. A key authenticates as one
principal (user and groups), made once per key and carried by every request it sends."""
import hashlib
import hmac
import os

from callfs.core.permissions import INTERNAL_USER, Accounts, Principal

KNOWN_LIMIT = 1024
_WHITESPACE = b" \t\n\r\x0b\x0c"


class Authenticator:
    def __init__(self, api_keys: list[str], api_key_users: dict[str, str], internal_secret: str,
                 accounts: Accounts | None = None):
        self._salt = os.urandom(32)
        self._by_digest: dict[bytes, tuple[bytes, Principal]] = {}
        # Authorization values already proven valid, exactly as sent: the hot path's lookup
        # (public, read-only for it; filled by identify_known). Python salts bytes hashes per
        # process, so a probe's timing says nothing of a key.
        self.known: dict[bytes, Principal] = {}
        if accounts is None:
            accounts = Accounts(user_ids(api_keys, api_key_users))
        for index, key in enumerate(api_keys or ()):
            self._add(key, accounts.principal(f"api-user-{index}"))
        for user, key in (api_key_users or {}).items():
            self._add(key, accounts.principal(user))
        if internal_secret:
            self._add(internal_secret, accounts.principal(INTERNAL_USER))

    def _digest(self, key: bytes) -> bytes:
        return hashlib.blake2b(key, key=self._salt, digest_size=32).digest()

    def _add(self, key: str, principal: Principal) -> None:
        raw = key.encode()
        self._by_digest.setdefault(self._digest(raw), (raw, principal))

    def identify(self, authorization: bytes | None) -> Principal | None:
        """The principal for an `Authorization` header value, or None."""
        if not authorization:
            return None
        if authorization.startswith(b"Bearer "):
            authorization = authorization[7:]
        presented = authorization.strip(_WHITESPACE)
        if not presented:
            return None
        found = self._by_digest.get(self._digest(presented))
        if found is None or not hmac.compare_digest(found[0], presented):
            return None
        return found[1]

    def identify_known(self, authorization: bytes | None) -> Principal | None:
        """`identify` for a header value seen before; None (not a verdict) otherwise."""
        identity = self.known.get(authorization)
        if identity is None and authorization:
            identity = self.identify(authorization)
            if identity is not None:
                if len(self.known) >= KNOWN_LIMIT:
                    self.known.clear()
                self.known[authorization] = identity
        return identity


def user_ids(api_keys: list[str], api_key_users: dict[str, str]) -> list[str]:
    """Every user an API key authenticates as (API.md §4)."""
    return [f"api-user-{index}" for index in range(len(api_keys or ()))] + list(api_key_users or ())
