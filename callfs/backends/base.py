"""The byte-store protocol the engine calls. A backend knows objects by canonical path; it knows
nothing of metadata, permissions or HTTP. Writes are staged and published atomically.

What a backend can do beyond the protocol is declared in `capabilities`, and the engine asks
that, never a backend's name or an attribute's presence.
"""
import enum
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

    def write(self, chunk) -> None: ...

    async def fill(self, body: SizedBody) -> None:
        """Take the rest of a body of announced length directly (zero-copy where it can)."""

    async def seal(self) -> None:
        """The body is whole: make the staged bytes durable."""

    async def commit(self, mtime_ns: int | None = None, check=None, new: bool = False) -> None:
        """Publish, stamped `mtime_ns`; `check()` raises to refuse (a lapsed lock)."""

    def finish(self) -> None: ...

    def undo(self) -> None: ...

    def abort(self) -> None: ...


class Removal(Protocol):
    """A file's bytes leaving with its metadata: `publish` runs inside the store's transaction,
    then `finish` (it committed) or `undo` (it did not)."""

    def publish(self) -> None: ...

    def finish(self) -> None: ...

    def undo(self) -> None: ...


class ReadHandle(Protocol):
    """An open object: its size, its stamp (None where bytes carry none), and a descriptor
    the HTTP layer can sendfile from (Capability.DESCRIPTOR)."""

    fd: int
    size: int
    mtime_ns: int | None

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

    # -- reads
    def open_read(self, path: str) -> ReadHandle:
        """NotFound when nothing is at the path; StorageInconsistent for what is not a file."""

    def read_version(self, path: str, size: int, mtime_ns: int) -> bytes | None:
        """A small file's whole content when it is the version of that size and stamp."""

    def disk_version(self, path: str) -> tuple[int, int] | None:
        """(size, mtime_ns) of the file at `path`, or None."""

    def copy_source(self, handle: ReadHandle) -> SizedBody:
        """An open object's bytes as the body of a write (a server-side copy)."""

    # -- writes
    def begin_write(self, path: str) -> Upload: ...

    def begin_remove(self, path: str) -> Removal: ...

    def make_directory(self, path: str) -> None: ...

    def remove(self, path: str, is_dir: bool) -> bool:
        """Remove an entry's bytes; False when there were none at `path`."""

    def begin_move(self, src: str, dst: str, entry_id: int, replace: bool): ...

    # -- recovery after a crash
    def leftovers(self, min_age: float = 0.0, started_ns: int = 0) -> list[Leftover]: ...

    def remove_temporary(self, path: str) -> None: ...

    def restore_removed(self, tmp: str, path: str) -> bool: ...

    def move_intents(self) -> list[tuple[str, dict]]: ...

    def drop_move_intent(self, name: str) -> None: ...

    def recover_move(self, name: str, record: dict, committed: bool) -> None: ...
