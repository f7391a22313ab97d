"""Single-use links (API.md §10): issued for a file the caller may read, redeemed once by whoever
holds the token. The rules and their order live here; api/links.py speaks HTTP.

A redemption is decided by the metadata store in one atomic step (LinkStore.consume_link), so
of concurrent requests for one token exactly one is served, on any node of a cluster. The
link is used up before the file is opened: a failed read still consumes it (API.md §10.4).
"""
import asyncio
import contextlib
import logging
import random

from callfs._native.token import LinkSigner, well_formed
from callfs.core.permissions import INTERNAL
from callfs.domain import errors
from callfs.domain.model import DIRECTORY, Inode, now_ns
from callfs.metadata.base import USED_LINK_RETENTION_NS, LinkOutcome

log = logging.getLogger("callfs.links")

MIN_EXPIRY_SECONDS, MAX_EXPIRY_SECONDS = 1, 86400
SWEEP_INTERVAL = 300.0  # API.md §10.4: a sweep every 5 minutes
USED_RETENTION_NS = USED_LINK_RETENTION_NS


class LinkNotFound(errors.CallFSError):
    status, code, message = 404, "LINK_NOT_FOUND", "link not found"


class LinkExpired(errors.CallFSError):
    status, code, message = 410, "LINK_EXPIRED", "link has expired"


class LinkUsed(errors.CallFSError):
    status, code, message = 410, "LINK_USED", "link has already been used"


class LinkForged(errors.CallFSError):
    """A stored token whose signature does not match its path (the link secret changed, or
    the row was altered): 410 as API.md §10.3 has it, coded as a forged token (§8.2)."""

    status, code, message = 410, "LINK_NOT_FOUND", "link is not valid"


_REFUSALS = {LinkOutcome.UNKNOWN: LinkNotFound, LinkOutcome.EXPIRED: LinkExpired,
             LinkOutcome.USED: LinkUsed, LinkOutcome.FORGED: LinkForged}
# The outcome as callfs_single_use_link_consumptions_total counts it (API.md §15.2).
_CONSUMPTION = {LinkOutcome.CONSUMED: "success", LinkOutcome.EXPIRED: "expired",
                LinkOutcome.USED: "invalid", LinkOutcome.FORGED: "invalid",
                LinkOutcome.UNKNOWN: "not_found"}


@contextlib.contextmanager
def _failures_are_internal(what: str):
    """API.md §10.1, §10.3: a store or backend failure answers 500 (the cause goes to the log,
    never the token or the secret)."""
    try:
        yield
    except errors.CallFSError as exc:
        if exc.status < 500 or isinstance(exc, errors.InternalError):
            raise
        raise errors.InternalError(f"{what}: {exc}") from exc
    except Exception as exc:
        raise errors.InternalError(f"{what}: {type(exc).__name__}: {exc}") from exc


class Links:
    def __init__(self, engine, secret: str, *, clock=now_ns):
        self.engine = engine
        self.store = engine.store
        self._signer = LinkSigner(secret)
        self._clock = clock

    async def generate(self, principal, path: str, expiry_seconds: int) -> tuple[str, int]:
        """A new link to the canonical `path`: (token, expiry instant in ns). The checks run
        in API.md §10.1's order: the path exists (and may be searched), the caller may read
        it, the expiry is in range; only then is anything written."""
        with _failures_are_internal("link generation"):
            inode = await self.engine.stat(principal, path)
        self.engine.check_read(principal, inode)
        if not MIN_EXPIRY_SECONDS <= expiry_seconds <= MAX_EXPIRY_SECONDS:
            raise errors.BadRequest("expiry_seconds must be between 1 and 86400")
        now = self._clock()
        expires = now + expiry_seconds * 1_000_000_000
        token = self._signer.issue(path)
        with _failures_are_internal("link store"):
            await self.store.create_link(token, path, token.partition(".")[2], expires, now)
        self.engine.observer.link_generated()
        return token, expires

    async def redeem(self, token: bytes, ip: str | None) -> tuple[Inode, object]:
        """Use up the link `token` and open its file for reading: (inode, read handle). A
        token of the wrong shape is refused without asking the store."""
        observer = self.engine.observer
        if not well_formed(token):
            observer.link_consumed("invalid")
            raise LinkNotFound()
        text = token.decode("ascii")
        signer = self._signer
        with _failures_are_internal("link store"):
            outcome, path = await self.store.consume_link(
                text, self._clock(), ip, lambda stored: signer.verify(text, stored))
        observer.link_consumed(_CONSUMPTION[outcome])
        if outcome is not LinkOutcome.CONSUMED:
            raise _REFUSALS[outcome]()
        # Consumed: from here on a failure still leaves the link used.
        with _failures_are_internal("link download"):
            inode = await self.engine.stat(INTERNAL, path)
            if inode.type == DIRECTORY:
                raise errors.InternalError("a link names a directory")
            return await self.engine.open_current(INTERNAL, inode)


async def sweep_forever(store, *, interval: float | None = None,
                        retention_ns: int | None = None, clock=now_ns) -> None:
    """Delete expired and long-used links (API.md §10.4), every `interval` seconds give or
    take a quarter, so that the workers of an instance and the nodes of a cluster spread
    their sweeps; a sweep is idempotent, so any number of them may run."""
    while True:
        period = SWEEP_INTERVAL if interval is None else interval
        await asyncio.sleep(period * (0.75 + random.random() / 2))
        try:
            swept = await store.sweep_links(
                clock(), USED_RETENTION_NS if retention_ns is None else retention_ns)
            if swept:
                log.info("links swept", extra={"count": swept})
        except Exception:
            log.exception("link sweep failed; retrying later")
