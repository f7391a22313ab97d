"""The wire shapes of API.md §6: metadata headers and the file info object."""
from callfs.core.model import DIRECTORY, Inode, rfc3339_seconds
from callfs.http.response import header_lines


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
        "mtime": rfc3339_seconds(inode.mtime_ns),
    }


def metadata_headers(inode: Inode, *, instance: bool = False) -> bytes:
    pairs = [
        ("X-CallFS-Type", inode.type),
        ("X-CallFS-Size", inode.size if inode.type != DIRECTORY else 0),
        ("X-CallFS-Mode", mode_text(inode)),
        ("X-CallFS-Owner", inode.owner),
        ("X-CallFS-MTime", rfc3339_seconds(inode.mtime_ns)),
    ]
    if instance and inode.instance_id:
        pairs.append(("X-CallFS-Instance-ID", inode.instance_id))
    return header_lines(pairs)
