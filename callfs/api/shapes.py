"""The wire shapes of API.md §6: metadata headers and the file info object; the validators of
API.md §2 (ETag, Last-Modified)."""
from callfs.domain.model import DIRECTORY, Inode, rfc3339_seconds
from callfs.http.conditional import Validators, http_date
from callfs.http.response import header_lines

_NO_VALIDATORS = Validators(None, None)


def mode_text(inode: Inode) -> str:
    return f"{inode.mode:04o}"


def file_info(inode: Inode) -> dict:
    return {
        "name": inode.name,
        "path": inode.path,
        "type": inode.type,
        "size": inode.size if inode.type != DIRECTORY else 0,
        "mode": mode_text(inode),
        "owner": inode.owner,
        "group": inode.group,
        "mtime": rfc3339_seconds(inode.mtime_ns),
    }


def metadata_headers(inode: Inode, *, instance: bool = False) -> bytes:
    pairs = [
        ("X-CallFS-Type", inode.type),
        ("X-CallFS-Size", inode.size if inode.type != DIRECTORY else 0),
        ("X-CallFS-Mode", mode_text(inode)),
        ("X-CallFS-Owner", inode.owner),
        ("X-CallFS-Group", inode.group),
        ("X-CallFS-MTime", rfc3339_seconds(inode.mtime_ns)),
    ]
    if instance and inode.instance_id:
        pairs.append(("X-CallFS-Instance-ID", inode.instance_id))
    return header_lines(pairs)


def etag(inode: Inode) -> str:
    """The strong entity tag: id, content version and mtime, so it changes with every write and
    never repeats for another entry or after a delete and re-create."""
    return f'"{inode.id:x}-{inode.version:x}-{inode.mtime_ns:x}"'


def last_modified(inode: Inode) -> str:
    return http_date(inode.mtime_ns // 1_000_000_000)


def validators(inode: Inode) -> Validators:
    """What conditional requests compare against; a directory has none (its listing changes
    without its mtime changing) but still exists."""
    if inode.type == DIRECTORY:
        return _NO_VALIDATORS
    return Validators(etag(inode), inode.mtime_ns // 1_000_000_000)


def cache_headers(inode: Inode) -> bytes:
    """`Accept-Ranges`, `ETag` and `Last-Modified` of a file (GET/HEAD, also on 206 and 304)."""
    return (b"Accept-Ranges: bytes\r\nETag: " + etag(inode).encode()
            + b"\r\nLast-Modified: " + last_modified(inode).encode() + b"\r\n")
