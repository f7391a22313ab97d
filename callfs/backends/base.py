"""The byte-store protocol. A backend knows objects by canonical path; it knows nothing of
metadata, permissions or HTTP. Writes are staged and published atomically."""
from typing import Protocol


class Upload(Protocol):
    """A staged write: bytes go to a temporary object until `commit` publishes them whole."""

    size: int

    def write(self, chunk) -> None: ...

    async def commit(self, mtime_ns: int | None = None, check=None) -> None: ...

    def abort(self) -> None: ...


class ReadHandle(Protocol):
    """An open object: a file descriptor the HTTP layer can sendfile from, and its size."""

    fd: int
    size: int

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    async def open(self) -> None: ...

    def open_read(self, path: str) -> ReadHandle: ...

    def begin_write(self, path: str) -> Upload: ...

    def make_directory(self, path: str) -> None: ...

    def remove(self, path: str, is_dir: bool) -> None: ...
