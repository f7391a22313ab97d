"""callfs._native.perm against its plain-Python oracle (tests/unit/perm_oracle.py): on random
trees, users, groups and modes, every question gets the same answer; and the rules of API.md
§7 spelled out on fixed cases."""
import os
import sys
import types

from hypothesis import given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import perm_oracle as oracle  # noqa: E402
from callfs._native import perm as native  # noqa: E402
from callfs._native.perm import Principal  # noqa: E402

USERS = ["alice", "bob", "carol", "root", "internal-proxy"]
GROUPS = ["alice", "bob", "carol", "staff", "ops"]
modes = st.integers(0, 0o7777)


def inode(kind="directory", mode=0o755, owner="alice", group="alice"):
    return types.SimpleNamespace(type=kind, mode=mode, owner=owner, group=group)


inodes = st.builds(inode, st.sampled_from(["file", "directory"]), modes, st.sampled_from(USERS),
                   st.sampled_from(GROUPS))
principals = st.tuples(st.sampled_from(USERS), st.sets(st.sampled_from(GROUPS), max_size=3))
wants = st.integers(0, 7)


def both(user, groups):
    return Principal(user, groups), set(groups) | {user}


@settings(max_examples=3000, deadline=None)
@given(principals, inodes, wants)
def test_allows_agrees(who, entry, want):
    principal, groups = both(*who)
    assert native.allows(principal, entry, want) == oracle.allows(who[0], groups, entry, want)


@settings(max_examples=3000, deadline=None)
@given(principals, inodes, inodes)
def test_may_remove_agrees(who, parent, entry):
    principal, groups = both(*who)
    assert native.may_remove(principal, parent, entry) == oracle.may_remove(who[0], groups,
                                                                            parent, entry)


chains = st.lists(st.one_of(st.none(), inodes), min_size=1, max_size=6)


@settings(max_examples=3000, deadline=None)
@given(principals, chains)
def test_reach_agrees(who, chain):
    principal, groups = both(*who)
    assert native.reach(principal, chain) == oracle.reach(who[0], groups, chain)


def test_exactly_one_class_applies():
    bob = Principal("bob", ["staff"])
    # The owner denied by the owner bits is not rescued by the group's or others' bits.
    assert not native.allows(Principal("alice"), inode(mode=0o077), native.READ)
    assert native.allows(bob, inode(mode=0o040, group="staff"), native.READ)
    assert not native.allows(bob, inode(mode=0o404, group="staff"), native.READ)
    assert native.allows(Principal("carol"), inode(mode=0o004, group="staff"), native.READ)
    assert native.allows(Principal("root"), inode(mode=0), 7)
    assert native.allows(Principal("internal-proxy"), inode(mode=0), 7)


def test_sticky_bit():
    root_dir = inode(mode=0o1777, owner="root", group="root")
    mine, theirs = inode("file", owner="bob"), inode("file", owner="alice")
    bob = Principal("bob")
    assert native.may_remove(bob, root_dir, mine)
    assert not native.may_remove(bob, root_dir, theirs)
    assert native.may_remove(bob, inode(mode=0o1777, owner="bob"), theirs)  # owns the parent
    assert native.may_remove(bob, inode(mode=0o777), theirs)  # no sticky bit
    assert not native.may_remove(bob, inode(mode=0o1775), mine)  # no write on the parent


def test_reach_outcomes():
    bob = Principal("bob")
    top, closed, readable = inode(mode=0o755), inode(mode=0o700), inode(mode=0o744)
    leaf = inode("file")
    assert native.reach(bob, [top, leaf]) == (native.REACHED, 1)
    assert native.reach(bob, [top, None, None]) == (native.MISSING, 1)
    assert native.reach(bob, [top, leaf, None]) == (native.BLOCKED, 1)
    assert native.reach(bob, [top, closed, leaf]) == (native.HIDDEN, 1)
    # May read the directory and the next entry exists: it could learn of it by listing.
    assert native.reach(bob, [top, readable, leaf]) == (native.DENIED, 1)
    assert native.reach(bob, [top, readable, None]) == (native.HIDDEN, 1)
    assert native.reach(Principal("root"), [top, closed, leaf]) == (native.REACHED, 2)


def test_a_principal_is_in_its_own_group():
    assert Principal("bob", ["staff"]).groups == {"bob", "staff"}
    assert Principal("root").admin and not Principal("bob").admin
