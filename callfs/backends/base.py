"""The byte-store protocol the engine calls. A backend knows objects by canonical path; it knows
nothing of metadata, permissions or HTTP. Writes are staged and published atomically.

Every call that may wait on a disk far away or on the network is a coroutine; what is
synchronous either touches no store (`begin_write`, `copy_source`, `close`) or runs inside the
metadata store's transaction (`publish`) and must not wait. What a backend can do beyond the
protocol is declared in `capabilities`, and the engine asks that, never a backend's name or an
attribute's presence.
"""
import enum
from collections.abc import AsyncIterator
from typing import Protocol


class Capability(enum.Flag):
    NONE = 0
    LOCAL = enum.auto()        # bytes live on this instance's disk: a file is the writer's
    DESCRIPTOR = enum.auto()   # read handles carry a file descriptor: sendfile, kernel copies
    SPLICE = enum.auto()       # a staged write takes a body into a descriptor (splice)
    REFLINK = enum.auto()      # a copy may share extents (FICLONE) where the filesystem can
    KERNEL_COPY = enum.auto()  # a copy may stay in the kernel (copy_file_range, sendfile)
    RANGED_READ = enum.auto()  # part of an object can be read without the rest
    STAMPED = enum.auto()      # bytes carry the mtime their record states (read_version)
    SERVER_COPY = enum.auto()  # a copy within the backend never moves its bytes through us
    SOCKET_BODY = enum.auto()  # a read may hand over the socket its bytes arrive on (splice)


class Body(Protocol):
    """The bytes a write consumes: a request body, a WebSocket upload, a copy's source."""

    expected: int | None  # the announced length; None when only the end tells

    async def read(self) -> bytes:
        """The next chunk; b"" once the body is complete."""


class SizedBody(Body, Protocol):
    """A body of announced length (`expected` is not None), which can also move itself."""

    async def transfer_to(self, fd: int) -> int:
        """Write the rest into the file `fd` (zero-copy where it can); the bytes written."""


class Upload(Protocol):
    """A staged write: bytes go to a temporary object, with no lock held, until `commit`
    (under the path's lock) publishes them whole; then `finish` once the metadata records
    them, or `undo` when it could not; `abort` drops a write that never published."""

    size: int

    async def write(self, chunk) -> None:
        """Append a chunk; may wait (for a part in flight to be taken) — the backpressure."""

    async def fill(self, body: SizedBody) -> None:
        """Take the rest of a body of announced length directly (zero-copy where it can)."""

    async def seal(self) -> None:
        """The body is whole: make the staged bytes durable."""

    async def commit(self, mtime_ns: int | None = None, check=None, new: bool = False) -> None:
        """Publish, stamped `mtime_ns`; `check()` raises to refuse (a lapsed lock)."""

    async def finish(self) -> None: ...

    async def undo(self) -> None: ...

    async def abort(self) -> None:
        """Drop a write that never published (a no-op once it ended); never raises."""


class Removal(Protocol):
    """A file's bytes leaving with its metadata: `publish` runs inside the store's transaction,
    then `finish` (it committed) or `undo` (it did not)."""

    def publish(self) -> None: ...

    async def finish(self) -> None: ...

    async def undo(self) -> None: ...


class Move(Protocol):
    """Moving an entry's bytes (a directory with its subtree) in step with its metadata:
    `prepare` before the store's transaction (where a backend copies what it cannot rename),
    `publish` inside it, then `finish` (it committed) or `undo` (it did not)."""

    async def prepare(self) -> None: ...

    def publish(self) -> None: ...

    async def finish(self) -> None: ...

    async def undo(self) -> None: ...


class SocketBody(Protocol):
    """An object's bytes still in the socket they arrive on: `buffered` first, then
    `remaining` bytes to read from the non-blocking descriptor `fd` (and no more), then
    `done(whole)`."""

    fd: int
    buffered: bytes
    remaining: int
    timeout: float  # the longest wait for the store's next bytes

    def done(self, whole: bool) -> None: ...


class ReadHandle(Protocol):
    """An open object: its size, its stamp (None where bytes carry none), and a descriptor
    the HTTP layer can sendfile from, or -1 where the bytes are not behind one (a backend
    without Capability.DESCRIPTOR); `chunks` gives the bytes of any backend."""

    fd: int
    size: int
    mtime_ns: int | None

    def chunks(self, offset: int, length: int) -> AsyncIterator[bytes]:
        """`length` bytes from `offset`, in pieces as the store gives them; OSError (or a
        CallFSError) when the store fails or gives fewer bytes than the object has."""

    def socket_body(self, offset: int, length: int) -> SocketBody | None:
        """Those bytes as a socket to move them from (splice, socket to socket), where a
        backend with Capability.SOCKET_BODY has them so; None otherwise (then `chunks`)."""

    def close(self) -> None: ...


class Leftover(Protocol):
    """A staged object found by recovery: `tmp` its path, `target` the entry it was written
    for when the names tell it, `same` when both name one object, `parent` its directory."""

    tmp: str
    target: str | None
    same: bool
    parent: str

    def written_for(self, name: str) -> bool: ...


class Backend(Protocol):
    name: str
    capabilities: Capability

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # -- reads
    async def open_read(self, path: str, *, content: bool = True) -> ReadHandle:
        """NotFound when nothing is at the path; StorageInconsistent for what is not a file.
        `content=False`: only the size and stamp will be asked (a HEAD)."""

    async def version(self, path: str) -> tuple[int, int | None] | None:
        """(size, mtime_ns) of the file at `path` (mtime_ns None where bytes carry no
        stamp), or None when no file is there."""

    def copy_source(self, handle: ReadHandle) -> SizedBody:
        """An open object's bytes as the body of a write: one the backend's own uploads copy
        without reading (Capability.SERVER_COPY), and any other backend's read."""

    # -- writes
    def begin_write(self, path: str) -> Upload: ...

    def begin_remove(self, path: str) -> Removal: ...

    async def make_directory(self, path: str) -> None: ...

    async def remove(self, path: str, is_dir: bool) -> bool:
        """Remove an entry's bytes; False when there were none at `path`."""

    def begin_move(self, src: str, dst: str, entry_id: int, replace: bool) -> Move: ...

    # -- recovery after a crash
    async def leftovers(self, min_age: float = 0.0, started_ns: int = 0) -> list[Leftover]: ...

    async def remove_temporary(self, path: str) -> None: ...

    async def restore_removed(self, tmp: str, path: str) -> bool: ...

    async def move_intents(self) -> list[tuple[str, dict]]: ...

    async def drop_move_intent(self, name: str) -> None: ...

    async def recover_move(self, name: str, record: dict, committed: bool) -> None: ...


class LocalBackend(Backend, Protocol):
    """A backend with Capability.LOCAL | Capability.STAMPED: its bytes are on this host's
    disk, read without waiting, so the read view (synchronous, native) may check a version
    and keep a small file's content."""

    def read_version(self, path: str, size: int, mtime_ns: int) -> bytes | None:
        """A small file's whole content when it is the version of that size and stamp."""

    def disk_version(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the file at `path`, or None."""
