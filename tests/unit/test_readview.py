"""callfs._native.readview against its plain-Python oracle: over one shared generation table
and one set of cache entries, random programs of cache fills, writes (begun, ended), evictions
and questions get the same answers, the same calls of `prepare` and the same kept bytes."""
import os
import sys
import tempfile
import types

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import readview_oracle as oracle  # noqa: E402
from callfs._native import readview as native  # noqa: E402
from callfs.metadata.cache import CacheEntry, open_table  # noqa: E402

from callfs._native.perm import Principal  # noqa: E402

PATHS = ["/a", "/b", "/d/c", "/d", "/d/e/f", "/d/e", "/"]
ALICE, BOB, ROOT = Principal("alice"), Principal("bob", ["staff"]), Principal("root")
PRINCIPALS = {"alice": ALICE, "bob": BOB, "root": ROOT}


class Disk:
    """`on_disk` and `prepare` for one view, over a shared set of damaged paths: records
    every call, so that the two views can be compared call for call."""

    def __init__(self, damaged: set):
        self.damaged = damaged
        self.calls = []

    def on_disk(self, inode, limit):
        self.calls.append(("on_disk", inode.path, inode.version, limit))
        if inode.path in self.damaged:
            return False, None
        return True, (b"x" * inode.size if inode.size <= limit else None)

    def prepare(self, inode, content):
        self.calls.append(("prepare", inode.path, inode.version))
        return ("answer", inode.path, inode.version, content), inode.size + 1


def views(entries, table, damaged, budget, keep_limit=16, unix=True):
    disks = [Disk(damaged), Disk(damaged)]
    made = [module.ReadView(entries=entries, table=table, unix=unix,
                            on_disk=disk.on_disk, prepare=disk.prepare, instance_id="node-a",
                            keep_limit=keep_limit, budget=budget)
            for module, disk in zip((native, oracle), disks)]
    return made, disks


operation = st.one_of(
    st.tuples(st.just("fill"), st.sampled_from(PATHS), st.sampled_from(["file", "directory"]),
              st.sampled_from([None, "node-a", "node-b"]),
              st.sampled_from([0o600, 0o644, 0o640, 0o755, 0o711, 0o750, 0o700, 0o1777, 0o000]),
              st.integers(0, 40), st.sampled_from(["alice", "bob", "carol"]),
              st.sampled_from(["alice", "staff", "carol"])),
    st.tuples(st.just("begin"), st.sampled_from(PATHS)),
    st.tuples(st.just("end"), st.sampled_from(PATHS)),
    st.tuples(st.just("begin_all")),
    st.tuples(st.just("end_all")),
    st.tuples(st.just("drop"), st.sampled_from(PATHS)),
    st.tuples(st.sampled_from(["damage", "repair"]), st.sampled_from(PATHS)),
    st.tuples(st.just("ready"), st.sampled_from(sorted(PRINCIPALS)),
              st.sampled_from(PATHS + ["/z"])),
)


def settings_for(count):
    return settings(max_examples=count, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@settings_for(400)
@given(st.lists(operation, max_size=60), st.integers(0, 60), st.booleans())
@example([("fill", "/", "directory", None, 0o1777, 0, "root", "root"),
          ("fill", "/a", "file", None, 0o644, 3, "alice", "alice"), ("ready", "bob", "/a"),
          ("ready", "bob", "/a"), ("begin", "/a"), ("ready", "bob", "/a"), ("end", "/a"),
          ("ready", "bob", "/a"), ("fill", "/a", "file", None, 0o644, 40, "alice", "alice"),
          ("ready", "bob", "/a"), ("damage", "/a"), ("ready", "bob", "/a"), ("repair", "/a"),
          ("ready", "bob", "/a")], 50, True)
@example([("fill", "/", "directory", None, 0o1777, 0, "root", "root"),
          ("fill", "/d", "directory", None, 0o750, 0, "alice", "staff"),
          ("fill", "/d/c", "file", None, 0o640, 3, "alice", "staff"), ("ready", "bob", "/d/c"),
          ("ready", "alice", "/d/c"), ("fill", "/d", "directory", None, 0o700, 0, "alice",
                                       "staff"),
          ("ready", "bob", "/d/c")], 50, True)
def test_native_and_oracle_agree(program, budget, unix):
    with tempfile.TemporaryDirectory() as tmp:
        table = open_table(os.path.join(tmp, "gen"), slots=8)
        entries, damaged = {}, set()
        both, disks = views(entries, table, damaged, budget, unix=unix)
        version = 0
        for op, *args in program:
            if op == "fill":
                path, kind, node, mode, size, owner, group = args
                version += 1
                inode = types.SimpleNamespace(path=path, type=kind, instance_id=node, mode=mode,
                                              size=size, version=version, owner=owner,
                                              group=group)
                entries[path] = CacheEntry(inode, table.stamp(path))
            elif op == "drop":
                entries.pop(args[0], None)
            elif op == "damage":
                damaged.add(args[0])
            elif op == "repair":
                damaged.discard(args[0])
            elif op in ("begin", "end"):
                getattr(table, op)(args[0])
            elif op in ("begin_all", "end_all"):
                getattr(table, op)()
            else:
                who, path = PRINCIPALS[args[0]], args[1]
                answers = [view.ready(who, path) for view in both]
                assert answers[0] == answers[1], (op, args)
            assert disks[0].calls == disks[1].calls
            assert both[0].kept_bytes == both[1].kept_bytes <= max(budget, 0)
            assert len(both[0]) == len(both[1])


def test_an_answer_is_prepared_once_per_version_and_never_after_a_write_begins():
    with tempfile.TemporaryDirectory() as tmp:
        table = open_table(os.path.join(tmp, "gen"), slots=8)
        inode = types.SimpleNamespace(path="/f", type="file", instance_id=None, mode=0o644,
                                      size=3, version=1, owner="alice", group="alice")
        entries = {"/f": CacheEntry(inode, table.stamp("/f"))}
        (view, _), (disk, _) = views(entries, table, set(), 100, unix=False)
        first = view.ready(BOB, "/f")
        assert first == ("answer", "/f", 1, b"xxx") and view.ready(BOB, "/f") is first
        assert [c[0] for c in disk.calls] == ["on_disk", "prepare"] and view.kept_bytes == 4
        table.begin("/f")
        assert view.ready(BOB, "/f") is None  # a write began: the entry is not exact
        table.end("/f")
        assert view.ready(BOB, "/f") is None  # still the entry from before the write
        entries["/f"] = CacheEntry(types.SimpleNamespace(**{**vars(inode), "version": 2}),
                                   table.stamp("/f"))
        assert view.ready(BOB, "/f") == ("answer", "/f", 2, b"xxx")
        assert view.kept_bytes == 4 and len(view) == 1


def test_an_answer_without_the_content_asks_the_disk_each_time():
    """A large file's answer (its bytes not kept) promises what only the disk holds: once the
    bytes stop being the recorded version, the view sends the request the general route."""
    with tempfile.TemporaryDirectory() as tmp:
        table = open_table(os.path.join(tmp, "gen"), slots=8)
        inode = types.SimpleNamespace(path="/big", type="file", instance_id=None, mode=0o644,
                                      size=1000, version=1, owner="alice", group="alice")
        entries, damaged = {"/big": CacheEntry(inode, table.stamp("/big"))}, set()
        (view, _), (disk, _) = views(entries, table, damaged, 10_000, unix=False)
        assert view.ready(BOB, "/big") == ("answer", "/big", 1, None)
        assert view.ready(BOB, "/big") is not None
        damaged.add("/big")
        assert view.ready(BOB, "/big") is None
        assert disk.calls[-1] == ("on_disk", "/big", 1, -1)
