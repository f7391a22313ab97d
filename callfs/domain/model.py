"""The namespace's record types, shared by the engine, the metadata stores and the API."""
import time
from datetime import datetime, timezone

import msgspec

FILE = "file"
DIRECTORY = "directory"
ROOT = "/"


class Inode(msgspec.Struct):
    """One namespace entry as the metadata store holds it."""

    id: int
    path: str
    parent_id: int | None
    name: str
    type: str
    size: int
    mode: int
    owner: str
    group: str
    mtime_ns: int
    ctime_ns: int
    backend: str
    instance_id: str | None
    version: int

    @property
    def is_dir(self) -> bool:
        return self.type == DIRECTORY


class NewInode(msgspec.Struct):
    """An entry to create: the store assigns id, parent and version."""

    path: str
    type: str
    size: int
    mode: int
    owner: str
    group: str
    mtime_ns: int
    backend: str
    instance_id: str | None
    fence: int = 0  # the fencing number of the lock the writer held (0: none)


class Content(msgspec.Struct, frozen=True):
    """A file's bytes as a move to another backend records them: where they now live and
    what they are (API.md §9.6 `backend`)."""

    backend: str
    instance_id: str | None
    size: int
    mtime_ns: int
    fence: int = 0  # the fencing number of the mover's lock


class Attributes(msgspec.Struct, frozen=True):
    """What a chmod, chgrp or chown changes (API.md §9.6): None leaves a field as it is."""

    mode: int | None = None
    group: str | None = None
    owner: str | None = None

    def __bool__(self) -> bool:
        return self.mode is not None or self.group is not None or self.owner is not None


def now_ns() -> int:
    return time.time_ns()


def rfc3339_seconds(ns: int) -> str:
    """API.md §6.1: UTC, whole seconds, `Z` suffix."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns // 1_000_000_000))


def rfc3339_nanos(ns: int) -> str:
    """The stored form (Appendix A): RFC 3339 UTC with nanoseconds."""
    secs, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{frac:09d}Z"


def parse_rfc3339(text: str) -> int:
    """Reads stored timestamps back, including those written by other servers (any precision)."""
    text = text.strip().replace(" ", "T", 1)
    frac_ns = 0
    if "." in text:
        head, rest = text.split(".", 1)
        digits = ""
        for ch in rest:
            if not ch.isdigit():
                break
            digits += ch
        tail = rest[len(digits):]
        frac_ns = int((digits + "000000000")[:9]) if digits else 0
        text = head + tail
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    stamp = datetime.fromisoformat(text)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return int(stamp.timestamp()) * 1_000_000_000 + frac_ns
