"""Plain-Python specification of callfs._native.perm (the Unix model of API.md §7). The native
module must answer exactly like this (test_perm.py)."""

READ, WRITE, SEARCH, STICKY = 4, 2, 1, 0o1000
REACHED, MISSING, BLOCKED, HIDDEN, DENIED = range(5)
ADMINS = {"root", "internal-proxy"}


def is_admin(user):
    return user in ADMINS


def allows(user, groups, inode, want):
    if is_admin(user):
        return True
    if inode.owner == user:
        bits = (inode.mode >> 6) & 7
    elif inode.group in groups or inode.group == user:
        bits = (inode.mode >> 3) & 7
    else:
        bits = inode.mode & 7
    return bits & want == want


def may_remove(user, groups, parent, entry):
    if is_admin(user):
        return True
    if not allows(user, groups, parent, WRITE | SEARCH):
        return False
    if parent.mode & STICKY:
        return user in (entry.owner, parent.owner)
    return True


def reach(user, groups, chain):
    for i, inode in enumerate(chain[:-1]):
        if inode is None:
            return MISSING, i
        if inode.type == "file":
            return BLOCKED, i
        if not allows(user, groups, inode, SEARCH):
            if chain[i + 1] is not None and allows(user, groups, inode, READ):
                return DENIED, i
            return HIDDEN, i
    return REACHED, len(chain) - 1
