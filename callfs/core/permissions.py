"""Who may do what. This is the owner model of API.md §7 (the reference's rules); the full Unix
model (groups, mode bits, sticky bit, search permission) arrives behind the same questions.
"""
from callfs.domain.model import DIRECTORY, Inode

ADMINS = frozenset({"root", "internal-proxy"})


def may_read(identity: str, inode: Inode) -> bool:
    return True


def may_write(identity: str, inode: Inode) -> bool:
    """Overwrite a file, or create entries inside a directory."""
    return inode.type == DIRECTORY or identity in ADMINS or inode.owner == identity


def may_delete(identity: str, inode: Inode) -> bool:
    return identity in ADMINS or inode.owner == identity
