"""Who may do what (API.md §7): the accounts a deployment knows, and the rules of its
permission model, as answers the engine asks for.

`permission_model: unix` (the default) is the full Unix model — owner, group and other bits,
search permission on every ancestor, write and search on the parent to create or remove, the
sticky bit — checked by callfs._native.perm. `permission_model: owner` is the reference's
owner-only table: mode bits are recorded, never enforced. Under both, `root` and
`internal-proxy` pass every check.

What a caller may not search is hidden: a walk that stops at a directory the caller may not
search answers 404, unless the caller could learn of the next entry down anyway (it may read
that directory, and the entry exists), which answers 403. A write that stops there is a 403:
its answer never depends on what lies below.
"""
from callfs._native.perm import (BLOCKED, DENIED, HIDDEN, MISSING, READ, REACHED, SEARCH, WRITE,
                                 Principal, allows, may_remove, reach)
from callfs._native.pathnorm import ancestors
from callfs.domain import errors
from callfs.domain.model import DIRECTORY, Attributes, Inode

ROOT_USER = "root"
INTERNAL_USER = "internal-proxy"
INTERNAL = Principal(INTERNAL_USER)  # node-to-node calls, link downloads: every check passes

__all__ = ["Accounts", "Rules", "Principal", "INTERNAL", "READ", "WRITE", "SEARCH"]


class Accounts:
    """The users and groups a deployment knows (CONFIG.md §5.2): every configured user, `root`
    and `internal-proxy`; every group of `auth.groups`, and one per user named after it."""

    def __init__(self, users, groups: dict[str, list[str]] | None = None):
        self.users = frozenset(users) | {ROOT_USER, INTERNAL_USER}
        members: dict[str, set[str]] = {}
        for group, names in (groups or {}).items():
            for name in names or ():
                members.setdefault(name, set()).add(group)
        self._member_of = {user: frozenset(members.get(user, ())) | {user} for user in self.users}
        self.groups = frozenset(groups or ()) | self.users
        self._principals = {user: Principal(user, self._member_of[user]) for user in self.users}

    def principal(self, user: str) -> Principal:
        """The one principal of a user (made once; every request of the user carries it)."""
        found = self._principals.get(user)
        return found if found is not None else Principal(user)


class Rules:
    """The permission model's answers for one deployment."""

    def __init__(self, model: str = "unix", accounts: Accounts | None = None):
        if model not in ("unix", "owner"):
            raise ValueError(f"unknown permission model {model!r}")
        self.unix = model == "unix"
        self.accounts = accounts or Accounts(())

    # -- one entry ----------------------------------------------------------------------------

    def may_read(self, who: Principal, inode: Inode) -> bool:
        """Read a file's bytes, list a directory."""
        return not self.unix or allows(who, inode, READ)

    def may_write(self, who: Principal, inode: Inode) -> bool:
        """Overwrite a file."""
        if self.unix:
            return allows(who, inode, WRITE)
        return inode.type == DIRECTORY or who.admin or inode.owner == who.user

    def may_create_in(self, who: Principal, directory: Inode) -> bool:
        """Create an entry inside `directory`."""
        return not self.unix or allows(who, directory, WRITE | SEARCH)

    def may_remove(self, who: Principal, parent: Inode | None, entry: Inode) -> bool:
        """Delete `entry`, or rename it away (the root has no parent and never goes)."""
        if parent is None:
            return False
        if self.unix:
            return may_remove(who, parent, entry)
        return who.admin or entry.owner == who.user

    def may_descend(self, who: Principal, directory: Inode) -> bool:
        """Reach the entries inside `directory` (a recursive listing, a copy)."""
        return not self.unix or allows(who, directory, SEARCH)

    # -- a path's ancestors --------------------------------------------------------------------

    def walk(self, who: Principal, path: str, found: dict[str, Inode]):
        """The walk down `path` over `found` (its ancestors and itself, from one query):
        (outcome, index into ancestors + [path]) as callfs._native.perm.reach says, with
        search permission decided by the model (under the owner model every directory may be
        searched)."""
        chain = [found.get(p) for p in ancestors(path)]
        chain.append(found.get(path))
        if self.unix:
            return reach(who, chain)
        return reach(INTERNAL, chain)

    def reach_existing(self, who: Principal, path: str, found: dict[str, Inode]) -> Inode:
        """The entry at `path` for an access that needs it to exist (a read, a stat, a
        deletion, a move's source): NotFound when it does not, or when the caller may not
        learn of it; PermissionDenied when it may learn of it but not reach it."""
        outcome, _ = self.walk(who, path, found)
        if outcome == DENIED:
            raise errors.PermissionDenied()
        inode = found.get(path)
        if outcome != REACHED or inode is None:
            raise errors.NotFound()
        return inode

    def reach_parent(self, who: Principal, path: str, found: dict[str, Inode]):
        """For a creation at `path`: the deepest existing ancestor (where the creation checks
        write permission) and the first file among the ancestors (or None). A walk that stops
        at a directory the caller may not search is refused (403) whatever lies below it."""
        outcome, index = self.walk(who, path, found)
        chain = ancestors(path)
        if outcome in (HIDDEN, DENIED):
            raise errors.PermissionDenied()
        if outcome == MISSING:
            return (found[chain[index - 1]] if index else None), None
        if outcome == BLOCKED:
            return (found[chain[index - 1]] if index else None), found[chain[index]]
        return (found[chain[-1]] if chain else None), None

    def check_parent(self, who: Principal, path: str, found: dict[str, Inode],
                     deepest: Inode, dir_mode: int) -> None:
        """A new entry at `path` below `deepest` (its deepest existing ancestor): write and
        search there, then on each missing ancestor as the caller would create it (its own,
        with `dir_mode`), one level at a time."""
        if not self.may_create_in(who, deepest):
            raise errors.PermissionDenied()
        if self.unix and not who.admin and any(p not in found for p in ancestors(path)):
            owner_bits = (dir_mode >> 6) & 7
            if owner_bits & (WRITE | SEARCH) != WRITE | SEARCH:
                raise errors.PermissionDenied()

    # -- attributes ------------------------------------------------------------------------------

    def check_attributes(self, who: Principal, inode: Inode, attributes: Attributes) -> None:
        """chmod: the owner or root; chgrp: the owner, to a group the owner is in, or root;
        chown: root only (API.md §7). Unknown names are a 400 before any permission."""
        accounts = self.accounts
        mode, group, owner = attributes.mode, attributes.group, attributes.owner
        if group is not None and group not in accounts.groups:
            raise errors.BadRequest(f'unknown group "{group}"')
        if owner is not None and owner not in accounts.users:
            raise errors.BadRequest(f'unknown user "{owner}"')
        if who.admin:
            return
        if owner is not None and owner != inode.owner:
            raise errors.PermissionDenied()
        if (mode is not None or group is not None) and inode.owner != who.user:
            raise errors.PermissionDenied()
        if group is not None and group not in who.groups:
            raise errors.PermissionDenied()

    def group_for_new(self, who: Principal, asked: str | None) -> str:
        """The group of an entry `who` creates: its own-name group, or the one it asked for
        (X-CallFS-Group), which must exist and be one of its groups (root: any)."""
        if asked is None:
            return who.user
        if asked not in self.accounts.groups:
            raise errors.BadRequest(f'unknown group "{asked}"')
        if not who.admin and asked not in who.groups:
            raise errors.PermissionDenied()
        return asked


def parse_mode(text: str) -> int:
    """An octal mode of at most 07777 (`0644`, `644`, `1777`); BadRequest otherwise."""
    text = text.strip()
    if not text or len(text) > 5 or any(ch not in "01234567" for ch in text):
        raise errors.BadRequest("invalid mode")
    value = int(text, 8)
    if value > 0o7777:
        raise errors.BadRequest("invalid mode")
    return value

