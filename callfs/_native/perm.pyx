# cython: language_level=3
"""The Unix permission model of API.md §7, as three questions the engine and the read view ask.

- `allows(who, inode, want)`: do the entry's mode bits give `who` every bit of `want`
  (READ 4, WRITE 2, SEARCH 1)? The owner's class applies to the owner, the group's to a member
  of the entry's group, the others' to everyone else — exactly one class, as in Unix (an owner
  denied by the owner bits is not rescued by the group or other bits). Administrators pass.
- `may_remove(who, parent, entry)`: may `who` delete `entry` from `parent`, or rename it
  away: write and search on the parent, and under the sticky bit own the entry or the parent.
- `reach(who, chain)`: the walk down a path's ancestors (root first), each an entry or None
  when missing, the path's own entry (or None) last; see REACHED and the other outcomes.

An inode is anything with `mode`, `owner`, `group` and `type` (callfs.domain.model.Inode).
These functions decide nothing about HTTP; callfs/core/permissions.py turns their answers into
the API's (404 or 403). The plain-Python specification is tests/unit/perm_oracle.py.
"""

READ = 4
WRITE = 2
SEARCH = 1
STICKY = 0o1000

# Outcomes of `reach`, with the index into the chain they concern:
REACHED = 0   # every ancestor exists, is a directory and may be searched (index: the last)
MISSING = 1   # the ancestor at index is missing, those above it may be searched
BLOCKED = 2   # the ancestor at index is a file, those above it may be searched
HIDDEN = 3    # the ancestor at index may not be searched, and what lies below it is hidden
DENIED = 4    # the ancestor at index may not be searched, but the caller may know of the
              # next step down (it may read the directory, and the next entry exists)

ADMINS = frozenset(("root", "internal-proxy"))

cdef str _FILE = "file"


cdef class Principal:
    """Who a request acts as: made once per key, carried by every request."""

    def __init__(self, str user not None, groups=()):
        self.user = user
        self.groups = frozenset(groups) | {user}
        self.admin = user in ADMINS

    def __repr__(self):
        return f"Principal({self.user!r}, groups={sorted(self.groups)!r})"

    def __eq__(self, other):
        if not isinstance(other, Principal):
            return NotImplemented
        return self.user == (<Principal>other).user and self.groups == (<Principal>other).groups

    def __hash__(self):
        return hash((self.user, self.groups))


cpdef bint allows(Principal who, object inode, int want):
    return allows_bits(who, inode.mode, inode.owner, inode.group, want)


cdef bint allows_bits(Principal who, long mode, str owner, str group, int want):
    """`allows` over an entry's attributes already read out of it (the read view's)."""
    if who.admin:
        return True
    cdef long bits
    if owner == who.user:
        bits = mode >> 6
    elif group in who.groups:
        bits = mode >> 3
    else:
        bits = mode
    return (bits & want & 7) == want


cpdef bint may_remove(Principal who, object parent, object entry):
    if who.admin:
        return True
    if not allows(who, parent, WRITE | SEARCH):
        return False
    cdef long mode = parent.mode
    if mode & STICKY:
        return entry.owner == who.user or parent.owner == who.user
    return True


cpdef tuple reach(Principal who, list chain):
    """(outcome, index) for `chain`: the ancestors of a path, root first, each an entry or
    None, then the path's own entry or None (never looked at but as the next step down)."""
    cdef Py_ssize_t last = len(chain) - 1
    cdef Py_ssize_t i
    for i in range(last):
        inode = chain[i]
        if inode is None:
            return MISSING, i
        if inode.type == _FILE:
            return BLOCKED, i
        if not allows(who, inode, SEARCH):
            if chain[i + 1] is not None and allows(who, inode, READ):
                return DENIED, i
            return HIDDEN, i
    return REACHED, last
