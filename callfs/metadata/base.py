"""The metadata store protocol: the namespace's source of truth (ARCHITECTURE.md, Storage).

Every store (SQLite, PostgreSQL) implements the same operations with the same guarantees:
a creation is atomic with the creation of its missing ancestors, and a path is unique.
"""
import asyncio
import enum
from typing import Protocol

from callfs.domain import errors
from callfs.domain.model import Attributes, Content, Inode, NewInode


def _publish_bytes(publish) -> None:
    """Run a bytes callback (a move's, a deletion's) inside a store transaction: its failure
    is the operation's own (never mistaken for a lost database connection, which would run
    the transaction again)."""
    try:
        publish()
    except errors.CallFSError:
        raise
    except Exception as exc:
        raise errors.InternalError("the bytes could not be moved or removed") from exc


async def wait_out(awaitable) -> tuple:
    """Await a commit to its end even when the caller is cancelled meanwhile: the database
    commits or not regardless, and the bytes the caller wrote must follow what happened.
    Returns (result, whether a cancellation was held back); the caller delivers it again
    (`asyncio.current_task().cancel()`) once nothing it still must do can be interrupted.
    When the commit failed, the cancellation is delivered at once (the caller undoes anyway)."""
    future = asyncio.ensure_future(awaitable)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait([future])
        except asyncio.CancelledError:
            cancelled = True
    if cancelled and (future.cancelled() or future.exception() is not None):
        asyncio.current_task().cancel()
        cancelled = False
    return future.result(), cancelled


class MetadataStore(Protocol):
    backend_name: str

    async def open(self) -> None:
        """Connect and apply pending migrations; the root directory exists afterwards."""

    async def close(self) -> None: ...

    async def get(self, path: str) -> Inode | None: ...

    async def get_many(self, paths: list[str]) -> dict[str, Inode]:
        """The entries that exist among `paths`, keyed by path (one round trip)."""

    async def list_children(self, directory: Inode) -> list[Inode]:
        """Immediate children, directories first, then files, each by name in byte order."""

    async def list_descendants(self, directory: Inode) -> list[Inode]:
        """Every entry strictly below `directory`, in any order."""

    async def create(self, ancestors: list[NewInode], entry: NewInode,
                     anchor: tuple[int, str] | None = None) -> Inode:
        """Create `entry` and any of `ancestors` (root first) that are missing, atomically.

        Raises NotADirectory when an ancestor exists as a file, AlreadyExists when `entry`
        exists (carrying the existing inode as `.existing`), ParentMoved when the entry
        `anchor` (id, path: the directory the bytes were written into) has another path now.
        """

    async def set_attributes(self, inode: Inode, attributes: Attributes) -> Inode:
        """chmod, chgrp, chown (the fields of `attributes` that are not None), version + 1.
        NotFound when the entry is gone or moved away from `inode.path`."""

    async def move(self, source: Inode, dest: str, ancestors: list[NewInode],
                   replace: Inode | None, publish, attributes: Attributes | None = None,
                   content: Content | None = None) -> Inode:
        """Give `source` (with its whole subtree, for a directory: one prefix rewrite) the
        path `dest`, in one transaction: `replace` (the entry at `dest`, a file or an empty
        directory) is deleted, missing `ancestors` of `dest` are created, then `publish()`
        moves the bytes before the commit. NotFound when `source` is gone or moved,
        AlreadyExists when `dest` is taken, DirectoryNotEmpty for a `replace` with children.
        `attributes`, when given, change the moved entry in the same transaction.
        `content`, for a file whose bytes moved to another backend (`dest` may then be its
        own path), records where they are now: version + 1, only if `source.version` is
        still the recorded one and no larger fencing number is (WriteConflict otherwise).
        """

    async def path_of(self, inode_id: int) -> str | None:
        """The current path of an entry (it may have moved), or None when it is gone."""

    async def max_fence(self) -> int:
        """The largest fencing number any entry records (0 when none): lock managers start
        their counters above it, so a recorded number never exceeds a new writer's."""

    async def update_content(self, inode: Inode, size: int, mtime_ns: int,
                             fence: int = 0) -> Inode:
        """Record new content of a file: size, mtime, version + 1 and the writer's fencing
        number — only if its version is still `inode.version` and no larger fencing number is
        recorded (WriteConflict otherwise). NotFound if it is gone."""

    async def delete(self, inode: Inode, publish=None) -> None:
        """Remove an entry; DirectoryNotEmpty for a directory with children, NotFound if gone
        or moved away from `inode.path`. `publish()`, when given, takes the bytes away inside
        the transaction, just before the commit (as a move's does)."""


class EngineStore(MetadataStore, Protocol):
    """The store the engine is given: a MetadataStore behind the per-host cache
    (metadata/cache.py), which also says what is in flight and offers the read view."""

    def busy(self, path: str) -> bool:
        """A write, move or delete that may change `path` is in flight (in any process here)."""

    def changing(self, paths: list[str]):
        """Context manager: `paths` count as busy while the caller changes their bytes ahead
        of the record (a publish), so no cached entry of theirs is served meanwhile."""

    def read_view(self, **policy):
        """The native read view over the cached entries (callfs._native.readview)."""


# -- single-use links (API.md §10) -------------------------------------------------------------

USED_LINK_RETENTION_NS = 24 * 3600 * 1_000_000_000  # API.md §10.4: used links kept 24 hours


class LinkOutcome(enum.Enum):
    """What a redemption found, in the order of API.md §10.3's checks."""

    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"
    FORGED = "forged"
    CONSUMED = "consumed"


def link_refusal(status: str | None, expires_ns: int, now_ns: int) -> LinkOutcome | None:
    """Why a stored link (`status` None: no such link) may not be redeemed now, before its
    signature is looked at; None when it may. Expiry comes before use (API.md §10.4: an
    expired token answers 410 whether or not it was used)."""
    if status is None:
        return LinkOutcome.UNKNOWN
    if now_ns > expires_ns or status == "expired":
        return LinkOutcome.EXPIRED
    if status != "active":
        return LinkOutcome.USED
    return None


class LinkStore(Protocol):
    """The `single_use_links` table (Appendix A), shared by every node of a cluster."""

    async def create_link(self, token: str, path: str, signature: str, expires_ns: int,
                          now_ns: int) -> None:
        """Record an active link to the canonical `path`, valid until `expires_ns`."""

    async def consume_link(self, token: str, now_ns: int, ip: str | None,
                           verify) -> tuple[LinkOutcome, str | None]:
        """Redeem `token`: UNKNOWN, EXPIRED or USED as link_refusal says, FORGED when
        `verify(path)` says the token was not signed for the stored path, else CONSUMED: the
        link is marked used (at `now_ns`, by `ip`) atomically, so of concurrent redemptions
        exactly one is CONSUMED. Returns the outcome and the stored path (None if UNKNOWN)."""

    async def sweep_links(self, now_ns: int, used_age_ns: int = USED_LINK_RETENTION_NS) -> int:
        """Delete links whose expiry has passed (never used) and links used more than
        `used_age_ns` before `now_ns`; the number deleted."""
