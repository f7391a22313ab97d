"""One suite for every metadata store: SQLite and PostgreSQL keep the same contract
(callfs/metadata/base.py), checked here against real databases.

SQLite runs in the test's tmp_path. PostgreSQL runs on 127.0.0.1:5432 (user postgres, trust; see
ci/services.sh) in a database created for this module and dropped after it; each test works in
its own schema, so each sees a fresh store. The database uses an ICU (non-byte) collation on
purpose: ordering and path ranges must still come out in byte order.
"""
import asyncio
import os
import secrets
import socket
import sqlite3
import subprocess
import sys
import time
from urllib.parse import quote

import asyncpg
import msgspec
import pytest

from callfs.domain import errors
from callfs.domain.model import DIRECTORY, FILE, NewInode
from callfs.metadata.migrate import migration_files
from callfs.metadata.postgres import PostgresStore
from callfs.metadata.sqlite import SQLiteStore

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_ADMIN = f"postgresql://postgres@{PG_HOST}:{PG_PORT}/postgres"
LATEST = max(number for number, _name, _sql in migration_files("postgres"))
STAMP = 1_700_000_000_123_456_789  # non-zero nanoseconds below the microsecond
TEST_TIMEOUT = 30


def run(coro, timeout: float = TEST_TIMEOUT):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def node(path: str, kind: str = DIRECTORY, *, mtime_ns: int = STAMP, size: int = 0,
         owner: str = "alice", group: str = "staff", mode: int | None = None,
         instance_id: str | None = "node-test") -> NewInode:
    if mode is None:
        mode = 0o755 if kind == DIRECTORY else 0o644
    return NewInode(path=path, type=kind, size=size, mode=mode, owner=owner, group=group,
                    mtime_ns=mtime_ns, backend="localfs", instance_id=instance_id)


def chain(path: str, **fields) -> list[NewInode]:
    """The strict ancestors of `path` as directories to create, root first."""
    parts = path.strip("/").split("/")[:-1]
    found = [node("/", **fields)]
    for index in range(len(parts)):
        found.append(node("/" + "/".join(parts[:index + 1]), **fields))
    return found


async def make(store, path: str, kind: str = FILE, **fields):
    return await store.create(chain(path), node(path, kind, **fields))


# -- PostgreSQL plumbing --------------------------------------------------------------------------

def _pg_unreachable() -> str | None:
    async def probe():
        conn = await asyncpg.connect(PG_ADMIN, timeout=3)
        await conn.close()
    try:
        run(probe(), timeout=5)
    except Exception as exc:  # any failure means: no PostgreSQL to test against
        return (f"PostgreSQL is not reachable on {PG_HOST}:{PG_PORT} as user postgres without a "
                f"password ({type(exc).__name__}: {exc}); run ci/services.sh")
    return None


async def _admin(sql: str, dsn: str = PG_ADMIN):
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg_database():
    """A database of its own for this module, dropped at the end: its DSN."""
    reason = _pg_unreachable()
    if reason:
        pytest.skip(reason)
    name = f"callfs_test_{secrets.token_hex(6)}"
    try:
        run(_admin(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' "
                   "LOCALE 'C.UTF-8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"))
    except asyncpg.PostgresError:  # a server without ICU: its default collation will do
        run(_admin(f"CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"))
    yield f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{name}"
    run(_admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


class Harness:
    """Fresh stores over one namespace that belongs to a single test."""

    def __init__(self, kind: str, *, sqlite_path: str = "", pg_database: str = ""):
        self.kind = kind
        self.sqlite_path = sqlite_path
        self.database = pg_database
        self.schema = f"t_{secrets.token_hex(6)}"
        self.app = f"callfs_{self.schema}"  # tags this test's own PostgreSQL sessions
        if kind == "postgres":
            run(_admin(f"CREATE SCHEMA {self.schema}", pg_database))

    @property
    def dsn(self) -> str:
        options = quote(f"-c search_path={self.schema}", safe="")
        return f"{self.database}?application_name={self.app}&options={options}"

    def new(self):
        if self.kind == "sqlite":
            return SQLiteStore(self.sqlite_path)
        return PostgresStore(self.dsn, pool_min=1, pool_max=8)

    async def opened(self):
        store = self.new()
        await store.open()
        return store

    def run(self, body, timeout: float = TEST_TIMEOUT):
        """body(store) on a freshly opened store, closed afterwards."""
        async def main():
            store = await self.opened()
            try:
                return await body(store)
            finally:
                await store.close()
        return run(main(), timeout)

    def query(self, sql: str) -> list[tuple]:
        """Rows of `sql` read straight from the database (the state the store left)."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.sqlite_path)
            try:
                return conn.execute(sql).fetchall()
            finally:
                conn.close()
        return run(self.pg_query(sql))

    async def pg_query(self, sql: str) -> list[tuple]:
        dsn = f"{self.database}?options={quote(f'-c search_path={self.schema}', safe='')}"
        return [tuple(row) for row in await _admin(sql, dsn)]


@pytest.fixture(params=["sqlite", "postgres"])
def stores(request, tmp_path) -> Harness:
    if request.param == "sqlite":
        return Harness("sqlite", sqlite_path=str(tmp_path / "metadata.sqlite3"))
    return Harness("postgres", pg_database=request.getfixturevalue("pg_database"))


@pytest.fixture
def pg(pg_database) -> Harness:
    return Harness("postgres", pg_database=pg_database)


# -- the contract, for every store ----------------------------------------------------------------

def test_open_creates_the_root(stores):
    async def body(store):
        root = await store.get("/")
        assert root is not None
        assert (root.path, root.name, root.parent_id, root.type) == ("/", "", None, DIRECTORY)
        assert (root.owner, root.group, root.mode) == ("root", "root", 0o1777)
        assert root.version == 1
        assert store.backend_name == stores.kind
        assert await store.list_children(root) == []
        assert await store.list_descendants(root) == []
    stores.run(body)
    assert stores.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]


def test_open_again_applies_nothing_and_keeps_state(stores):
    async def first(store):
        return await make(store, "/kept/file.txt", size=7)

    async def second(store):
        assert await store.get("/kept/file.txt") == created
        return await store.get("/")

    created = stores.run(first)
    root = stores.run(second)
    assert stores.run(second) == root  # a third open changes nothing either
    assert stores.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]
    assert stores.query("SELECT COUNT(*) FROM inodes WHERE path = '/'") == [(1,)]


def test_create_with_missing_ancestors(stores):
    async def body(store):
        entry = await store.create(chain("/a/b/c.txt"), node(
            "/a/b/c.txt", FILE, size=12, mode=0o640, owner="bob", group="devs",
            instance_id="node-7"))
        assert (entry.path, entry.name, entry.type, entry.size) == ("/a/b/c.txt", "c.txt", FILE, 12)
        assert (entry.mode, entry.owner, entry.group) == (0o640, "bob", "devs")
        assert (entry.backend, entry.instance_id, entry.version) == ("localfs", "node-7", 1)
        assert (entry.mtime_ns, entry.ctime_ns) == (STAMP, STAMP)
        root, a, b = [await store.get(p) for p in ("/", "/a", "/a/b")]
        assert (a.type, a.parent_id, a.name, a.mode) == (DIRECTORY, root.id, "a", 0o755)
        assert (b.type, b.parent_id, b.name) == (DIRECTORY, a.id, "b")
        assert entry.parent_id == b.id
        assert await store.get("/a/b/c.txt") == entry
        # Existing ancestors are reused, not duplicated.
        sibling = await make(store, "/a/b/d.txt")
        assert sibling.parent_id == b.id
        assert [c.name for c in await store.list_children(b)] == ["c.txt", "d.txt"]
        # A directory as the entry itself.
        sub = await make(store, "/a/b/sub", DIRECTORY)
        assert sub.is_dir and sub.parent_id == b.id
    stores.run(body)


def test_create_existing_raises_already_exists_with_the_entry(stores):
    async def body(store):
        first = await make(store, "/dup.txt", size=3)
        with pytest.raises(errors.AlreadyExists) as caught:
            await make(store, "/dup.txt", size=99)
        assert caught.value.existing == first
        directory = await make(store, "/dupdir", DIRECTORY)
        with pytest.raises(errors.AlreadyExists) as caught:
            await make(store, "/dupdir", FILE)
        assert caught.value.existing == directory
        assert (await store.get("/dup.txt")).size == 3
    stores.run(body)


def test_create_below_a_file_raises_not_a_directory_and_creates_nothing(stores):
    async def body(store):
        await make(store, "/plain.txt")
        with pytest.raises(errors.NotADirectory):
            await make(store, "/plain.txt/inside/deeper.txt")
        # Atomic: the missing ancestor inserted before the file was met is rolled back.
        with pytest.raises(errors.NotADirectory):
            await store.create([node("/"), node("/fresh"), node("/plain.txt")],
                               node("/plain.txt/x", FILE))
        assert await store.get("/fresh") is None
        assert await store.get("/plain.txt/inside") is None
        assert [c.path for c in await store.list_descendants(await store.get("/"))] == [
            "/plain.txt"]
    stores.run(body)


def test_get_and_get_many(stores):
    async def body(store):
        assert await store.get("/missing") is None
        assert await store.get_many([]) == {}
        made = {p: await make(store, p) for p in ("/g/one", "/g/two", "/g/ünï")}
        found = await store.get_many(["/g/one", "/g/ünï", "/g/none", "/g/one", "/"])
        assert set(found) == {"/g/one", "/g/ünï", "/"}
        assert found["/g/one"] == made["/g/one"] and found["/g/ünï"] == made["/g/ünï"]
        assert found["/"] == await store.get("/")
        many = [f"/g/n{i}" for i in range(300)]
        assert set(await store.get_many(many + ["/g/two"])) == {"/g/two"}
    stores.run(body)


def test_list_children_directories_first_then_files_in_byte_order(stores):
    dirs = ["b", "A", "é", "_under", "Zed", "a b", "z.d", "日本", "~"]
    files = ["a", "B", "ä", "~tilde", "10", "9", "😀", "ÿ", "Ā", ".hidden", "a.txt", "a-txt",
             "aB", "ab", "e\u0301", "ß", "ss"]

    async def body(store):
        top = await make(store, "/list", DIRECTORY)
        for name in dirs:
            await make(store, f"/list/{name}", DIRECTORY)
        for name in files:
            await make(store, f"/list/{name}")
        await make(store, "/list/b/grandchild.txt")  # not a child of /list
        children = await store.list_children(top)
        by_bytes = lambda names: sorted(names, key=lambda n: n.encode())  # noqa: E731
        assert [c.name for c in children] == by_bytes(dirs) + by_bytes(files)
        assert [c.type for c in children] == [DIRECTORY] * len(dirs) + [FILE] * len(files)
        assert all(c.parent_id == top.id for c in children)
        assert await store.list_children(await store.get("/list/A")) == []
    stores.run(body)


def test_list_descendants_is_exactly_the_subtree(stores):
    inside = ["/a/x", "/a/x/y", "/a/x/y/z.txt", "/a/ space", "/a/-dash", "/a/a0", "/a/é"]
    # Under a linguistic collation "/A/x" and "/a\u0301/x" (decomposed á) fall between "/a/" and
    # "/a0"; bytewise they do not.
    outside = ["/a0", "/a.b", "/a-b", "/ab", "/a b", "/A/x", "/a\u0301/x", "/b/a", "/a0/x", "/a.d"]

    async def body(store):
        a = await make(store, "/a", DIRECTORY)
        for path in inside + outside:
            kind = DIRECTORY if path in ("/a/x", "/a/x/y", "/a0", "/a.d") else FILE
            await make(store, path, kind)
        below_a = sorted(e.path for e in await store.list_descendants(a))
        assert below_a == sorted(inside)
        x = await store.get("/a/x")
        assert sorted(e.path for e in await store.list_descendants(x)) == ["/a/x/y",
                                                                          "/a/x/y/z.txt"]
        assert [e.path for e in await store.list_descendants(await store.get("/a/x/y"))] == [
            "/a/x/y/z.txt"]
        assert [e.path for e in await store.list_descendants(await store.get("/a0"))] == ["/a0/x"]
        assert await store.list_descendants(await store.get("/a.d")) == []
        everything = sorted(e.path for e in await store.list_descendants(await store.get("/")))
        assert everything == sorted(["/a"] + inside + outside + ["/A", "/a\u0301", "/b"])
    stores.run(body)


def test_concurrent_creates_of_one_path_one_wins(stores):
    """Tasks on one store and on several stores (another node, for PostgreSQL) race to create the
    same path below missing ancestors: one succeeds, every other gets AlreadyExists."""
    async def attempt(store, index):
        try:
            return await store.create(chain("/race/deep/target"),
                                      node("/race/deep/target", FILE, size=index))
        except errors.AlreadyExists as exc:
            return exc

    async def main():
        group = [await stores.opened() for _ in range(3)]
        try:
            results = await asyncio.gather(*(attempt(group[i % 3], i) for i in range(24)))
            winners = [r for r in results if not isinstance(r, Exception)]
            losers = [r for r in results if isinstance(r, Exception)]
            assert len(winners) == 1 and len(losers) == 23
            assert all(isinstance(r, errors.AlreadyExists) for r in losers)
            assert all(r.existing == winners[0] for r in losers)
            # Different children below the same missing ancestors: all succeed, one parent.
            made = await asyncio.gather(*(
                group[i % 3].create(chain(f"/fan/out/c{i}"), node(f"/fan/out/c{i}", FILE))
                for i in range(24)))
            parent = await group[0].get("/fan/out")
            assert {m.parent_id for m in made} == {parent.id}
            assert len(await group[1].list_children(parent)) == 24
        finally:
            for store in group:
                await store.close()
    run(main())
    assert stores.query("SELECT COUNT(*) FROM inodes WHERE path = '/race/deep/target'") == [(1,)]
    assert stores.query("SELECT COUNT(*) FROM inodes WHERE path = '/fan'") == [(1,)]


def test_a_directory_deleted_while_a_child_is_created_never_loses_the_child(stores):
    """Delete of a directory racing a creation below it (from another store: another node):
    either the delete sees the child (DirectoryNotEmpty), or it wins and the creation makes the
    directory again. A created entry never vanishes with its parent."""
    async def race(creator, deleter, index):
        directory = await creator.create(chain(f"/r{index}/d"), node(f"/r{index}/d"))
        made, removed = await asyncio.gather(
            creator.create(chain(f"/r{index}/d/child"), node(f"/r{index}/d/child", FILE)),
            deleter.delete(directory), return_exceptions=True)
        assert not isinstance(made, Exception), made
        assert removed is None or isinstance(removed, errors.DirectoryNotEmpty), removed
        child = await deleter.get(f"/r{index}/d/child")
        assert child == made
        parent = await deleter.get(f"/r{index}/d")
        assert parent is not None and child.parent_id == parent.id

    async def main():
        creator, deleter = await stores.opened(), await stores.opened()
        try:
            await asyncio.gather(*(race(creator, deleter, i) for i in range(30)))
        finally:
            await creator.close()
            await deleter.close()
    run(main())


def test_update_content_bumps_the_version(stores):
    async def body(store):
        entry = await make(store, "/up.txt", size=1)
        later = STAMP + 1_000_000_007
        updated = await store.update_content(entry, 4096, later)
        assert (updated.size, updated.mtime_ns, updated.version) == (4096, later, 2)
        assert (updated.id, updated.ctime_ns, updated.owner) == (entry.id, entry.ctime_ns,
                                                                  entry.owner)
        assert await store.get("/up.txt") == updated
        again = await store.update_content(updated, 0, later + 1)
        assert (again.size, again.mtime_ns, again.version) == (0, later + 1, 3)
        # An outdated Inode (a writer whose lock expired) records nothing.
        with pytest.raises(errors.WriteConflict):
            await store.update_content(entry, 5, later + 2)
        assert await store.get("/up.txt") == again
        await store.delete(again)
        with pytest.raises(errors.NotFound):
            await store.update_content(again, 1, later)
        directory = await make(store, "/updir", DIRECTORY)
        with pytest.raises(errors.NotFound):
            await store.update_content(directory, 1, later)
    stores.run(body)


def test_fencing_numbers_are_recorded_and_never_go_back(stores):
    """A write records its lock's fencing number; a write carrying a smaller one than the
    number recorded is refused, even with the current version; max_fence reports the largest."""
    async def body(store):
        assert await store.max_fence() == 0
        fenced = msgspec.structs.replace(node("/fenced.txt", FILE, size=1), fence=40)
        entry = await store.create(chain("/fenced.txt"), fenced)
        assert await store.max_fence() == 40
        with pytest.raises(errors.WriteConflict):
            await store.update_content(entry, 2, STAMP + 1, 39)  # an older lock's writer
        assert await store.get("/fenced.txt") == entry
        newer = await store.update_content(entry, 3, STAMP + 2, 41)
        assert (newer.size, newer.version) == (3, entry.version + 1)
        assert await store.max_fence() == 41
        with pytest.raises(errors.WriteConflict):
            await store.update_content(newer, 4, STAMP + 3, 40)
        assert (await store.get("/fenced.txt")).size == 3
    stores.run(body)


def test_move_rewrites_a_subtree_in_one_transaction(stores):
    """A directory moves with every descendant (ids, parents and the rest kept); the bytes'
    callback runs once, inside the transaction."""
    async def body(store):
        for path in ("/m/a/x", "/m/a/y/z", "/m/a/y/w/deep"):
            await make(store, path, size=len(path))
        await make(store, "/m/a0", DIRECTORY)  # shares the prefix, is not inside
        source = await store.get("/m/a")
        before = {e.path: e for e in await store.list_descendants(source)}
        calls = []
        moved = await store.move(source, "/n/c", chain("/n/c"), None, lambda: calls.append(1))
        assert calls == [1]
        assert (moved.id, moved.path, moved.name) == (source.id, "/n/c", "c")
        assert moved.parent_id == (await store.get("/n")).id
        after = {e.path: e for e in await store.list_descendants(moved)}
        assert sorted(after) == sorted(p.replace("/m/a", "/n/c", 1) for p in before)
        for old, entry in before.items():
            new = after[old.replace("/m/a", "/n/c", 1)]
            assert (new.id, new.parent_id, new.size, new.version, new.mtime_ns) == (
                entry.id, entry.parent_id, entry.size, entry.version, entry.mtime_ns)
        assert await store.get("/m/a") is None and await store.get("/m/a/y/z") is None
        assert await store.get("/m/a0") is not None
        assert [c.name for c in await store.list_children(await store.get("/m"))] == ["a0"]
        assert await store.path_of(before["/m/a/y/z"].id) == "/n/c/y/z"
    stores.run(body)


def test_move_refusals_leave_everything_as_it_was(stores):
    async def body(store):
        src = await make(store, "/s/f", size=1)
        other = await make(store, "/s/g", size=2)
        with pytest.raises(errors.AlreadyExists):
            await store.move(src, "/s/g", chain("/s/g"), None, lambda: None)

        def failing():
            raise OSError("the bytes could not move")
        with pytest.raises(errors.InternalError):  # the move's own failure, not a 503
            await store.move(src, "/s/h", chain("/s/h"), None, failing)
        assert await store.get("/s/f") == src and await store.get("/s/h") is None
        # A source that moved away (or went) since the caller read it.
        stale = msgspec.structs.replace(src, path="/s/elsewhere")
        with pytest.raises(errors.NotFound):
            await store.move(stale, "/s/h", chain("/s/h"), None, lambda: None)
        # Replacing: a file, an empty directory; never a directory with entries.
        replaced = await store.move(src, "/s/g", chain("/s/g"), other, lambda: None)
        assert replaced.id == src.id and (await store.get("/s/g")).size == 1
        empty = await make(store, "/s/empty", DIRECTORY)
        full = await make(store, "/s/full/child")
        tree = await make(store, "/s/tree/leaf")
        tree = await store.get("/s/tree")
        with pytest.raises(errors.DirectoryNotEmpty):
            await store.move(tree, "/s/full", chain("/s/full"), await store.get("/s/full"),
                             lambda: None)
        assert await store.get("/s/full/child") == full
        moved = await store.move(tree, "/s/empty", chain("/s/empty"), empty, lambda: None)
        assert (await store.get("/s/empty/leaf")).parent_id == moved.id
    stores.run(body)


def test_writes_name_the_path_they_expect(stores):
    """After a move, a write or delete through the old name is refused; a creation whose
    directory moved (its anchor) is refused; one whose anchor is gone recreates ancestors."""
    async def body(store):
        entry = await make(store, "/p/d/f", size=1)
        directory = await store.get("/p/d")
        anchor = (directory.id, directory.path)
        await store.move(directory, "/p/e", chain("/p/e"), None, lambda: None)
        with pytest.raises(errors.ParentMoved):
            await store.update_content(entry, 2, STAMP + 1)
        with pytest.raises(errors.NotFound):
            await store.delete(entry)
        with pytest.raises(errors.ParentMoved):
            await store.create(chain("/p/d/new"), node("/p/d/new", FILE), anchor)
        moved = await store.get("/p/e")
        assert (await store.create(chain("/p/e/new"), node("/p/e/new", FILE),
                                   (moved.id, moved.path))).parent_id == moved.id
        lone = await make(store, "/q/r", DIRECTORY)
        await store.delete(lone)
        again = await store.create(chain("/q/r/s"), node("/q/r/s", FILE), (lone.id, lone.path))
        assert (await store.get("/q/r")).id == again.parent_id != lone.id
    stores.run(body)


def test_concurrent_updates_of_one_version_one_wins(stores):
    """Writers holding the same version race to record new content (from several stores: other
    nodes, for PostgreSQL): one succeeds, every other gets WriteConflict."""
    async def attempt(store, entry, index):
        try:
            return await store.update_content(entry, index, STAMP + index)
        except errors.WriteConflict as exc:
            return exc

    async def main():
        group = [await stores.opened() for _ in range(3)]
        try:
            entry = await make(group[0], "/cas.txt")
            results = await asyncio.gather(*(attempt(group[i % 3], entry, i) for i in range(12)))
            winners = [r for r in results if not isinstance(r, Exception)]
            assert len(winners) == 1 and winners[0].version == 2
            assert all(isinstance(r, errors.WriteConflict) for r in results if r not in winners)
            assert await group[1].get("/cas.txt") == winners[0]
        finally:
            for store in group:
                await store.close()
    run(main())


def test_delete(stores):
    async def body(store):
        leaf = await make(store, "/del/sub/leaf.txt")
        sub = await store.get("/del/sub")
        with pytest.raises(errors.DirectoryNotEmpty):
            await store.delete(sub)
        with pytest.raises(errors.DirectoryNotEmpty):
            await store.delete(await store.get("/"))
        await store.delete(leaf)
        assert await store.get("/del/sub/leaf.txt") is None
        with pytest.raises(errors.NotFound):
            await store.delete(leaf)
        await store.delete(sub)
        assert await store.get("/del/sub") is None
        assert await store.list_children(await store.get("/del")) == []
        # The path can be created again, as a new row.
        again = await make(store, "/del/sub/leaf.txt")
        assert again.id != leaf.id and again.version == 1
    stores.run(body)


@pytest.mark.parametrize("mtime_ns", [
    STAMP, 1, 999, 1_000, 999_999_999, 1_700_000_000_000_000_001, 1_700_000_000_999_999_999,
    1_234_567_890_123_456_000, 4_102_444_800_000_000_123, 1_699_999_999_999_999_999,
])
def test_mtime_ns_round_trips_exactly(stores, mtime_ns):
    async def body(store):
        created = await store.create(chain("/t/f", mtime_ns=mtime_ns),
                                     node("/t/f", FILE, mtime_ns=mtime_ns))
        assert (created.mtime_ns, created.ctime_ns) == (mtime_ns, mtime_ns)
        assert (await store.get("/t")).mtime_ns == mtime_ns
        updated = await store.update_content(created, 1, mtime_ns + 1)
        assert updated.mtime_ns == mtime_ns + 1
        return created.id
    stores.run(body)

    async def reread(store):  # a new process's view: nothing kept in memory
        entry = await store.get("/t/f")
        assert (entry.mtime_ns, entry.ctime_ns) == (mtime_ns + 1, mtime_ns)
        children = await store.list_children(await store.get("/t"))
        assert children[0].mtime_ns == mtime_ns + 1
    stores.run(reread)


def test_concurrent_open_of_a_fresh_database(stores):
    """Instances that start together on an empty database migrate it once, safely: several
    processes, then several stores in one process."""
    script = (
        "import asyncio, sys\n"
        "from callfs.metadata.postgres import PostgresStore\n"
        "from callfs.metadata.sqlite import SQLiteStore\n"
        "async def main():\n"
        "    kind, where = sys.argv[1], sys.argv[2]\n"
        "    store = SQLiteStore(where) if kind == 'sqlite' else PostgresStore(where, pool_min=1)\n"
        "    await store.open()\n"
        "    root = await store.get('/')\n"
        "    await store.close()\n"
        "    print(root.id)\n"
        "asyncio.run(main())\n")
    where = stores.sqlite_path if stores.kind == "sqlite" else stores.dsn
    env = dict(os.environ)
    procs = [subprocess.Popen([sys.executable, "-c", script, stores.kind, where], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [proc.communicate(timeout=30) for proc in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    assert len({out.strip() for out, _err in outputs}) == 1  # the same root everywhere
    assert stores.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]
    assert stores.query("SELECT COUNT(*) FROM inodes") == [(1,)]

    fresh = Harness(stores.kind, sqlite_path=stores.sqlite_path + "-2",
                    pg_database=stores.database)

    async def together():
        group = [fresh.new() for _ in range(6)]
        await asyncio.gather(*(store.open() for store in group))
        roots = [await store.get("/") for store in group]
        for store in group:
            await store.close()
        return roots
    roots = run(together())
    assert len({root.id for root in roots}) == 1
    assert fresh.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]
    assert fresh.query("SELECT COUNT(*) FROM inodes") == [(1,)]


def test_a_dirty_schema_is_refused(stores):
    """A migration that failed part-way outside CallFS leaves `dirty` set: no start on that."""
    stores.run(lambda store: asyncio.sleep(0))  # migrate
    if stores.kind == "sqlite":
        conn = sqlite3.connect(stores.sqlite_path)
        conn.execute("UPDATE schema_migrations SET dirty = 1")
        conn.commit()
        conn.close()
    else:
        stores.query("UPDATE schema_migrations SET dirty = true RETURNING version")

    async def attempt():
        store = stores.new()
        with pytest.raises(errors.ServiceUnavailable, match="dirty"):
            await store.open()
    run(attempt())


# -- PostgreSQL: availability, recovery, deployment details ---------------------------------------

class Proxy:
    """A TCP relay to PostgreSQL that a test can cut and restore, on a fixed port."""

    def __init__(self):
        self.port = free_port()
        self.server = None
        self.transports = []

    async def start(self):
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port,
                                                 reuse_address=True)

    async def stop(self):
        self.server.close()
        await self.server.wait_closed()
        for transport in self.transports:
            transport.abort()
        self.transports.clear()

    async def _relay(self, reader, writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(PG_HOST, PG_PORT)
        except OSError:
            writer.transport.abort()
            return
        self.transports += [writer.transport, up_writer.transport]

        async def pump(source, sink):
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def dsn(self, harness: Harness) -> str:
        return harness.dsn.replace(f"@{PG_HOST}:{PG_PORT}/", f"@127.0.0.1:{self.port}/")


def test_pg_unreachable_answers_service_unavailable_quickly(pg):
    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"

    async def body():
        started = time.monotonic()
        with pytest.raises(errors.ServiceUnavailable):
            await PostgresStore(dead, connect_timeout=2).open()
        assert time.monotonic() - started < 5
    run(body(), timeout=15)


def test_pg_outage_is_503_and_recovers_by_itself(pg):
    proxy = Proxy()

    async def body():
        await proxy.start()
        store = PostgresStore(proxy.dsn(pg), pool_min=2, pool_max=4, connect_timeout=2)
        await store.open()
        try:
            before = await make(store, "/outage/before.txt")
            await proxy.stop()  # PostgreSQL is gone: every pooled connection drops
            for operation in (lambda: store.get("/outage/before.txt"),
                              lambda: store.get_many(["/outage/before.txt"]),
                              lambda: store.list_children(before),
                              lambda: make(store, "/outage/during.txt"),
                              lambda: store.update_content(before, 1, STAMP),
                              lambda: store.delete(before)):
                started = time.monotonic()
                with pytest.raises(errors.ServiceUnavailable):
                    await asyncio.wait_for(operation(), 10)
                assert time.monotonic() - started < 5
            await proxy.start()  # back again: the next operations reconnect by themselves
            assert await store.get("/outage/before.txt") == before
            after = await make(store, "/outage/after.txt")
            assert (await store.update_content(after, 2, STAMP + 1)).version == 2
            assert await store.get("/outage/during.txt") is None
        finally:
            await store.close()
            await proxy.stop()
    run(body())


def test_pg_terminated_backends_are_replaced_transparently(pg):
    terminate = ("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
                 f"WHERE application_name = '{pg.app}'")

    async def body(store):
        entry = await make(store, "/term/a.txt")
        # Use several pooled connections, then kill every session of this test's store.
        await asyncio.gather(*(store.get("/term/a.txt") for _ in range(8)))
        killed = (await pg.pg_query(terminate))[0][0]
        assert killed >= 1
        assert await store.get("/term/a.txt") == entry  # reads retry on a fresh connection
        await pg.pg_query(terminate)
        assert (await make(store, "/term/b.txt")).version == 1  # so do writes before COMMIT
        await pg.pg_query(terminate)
        assert (await store.update_content(entry, 3, STAMP + 5)).version == 2
        await pg.pg_query(terminate)
        await asyncio.sleep(0.2)  # the pool has noticed: nothing is retried at all
        assert len(await store.list_children(await store.get("/term"))) == 2
    pg.run(body)


def test_pg_keyword_value_dsn(pg):
    database = pg.database.rsplit("/", 1)[1]
    dsn = (f"host={PG_HOST} port={PG_PORT} user=postgres dbname={database} sslmode=disable "
           f"connect_timeout=5 options='-c search_path={pg.schema}'")

    async def body():
        store = PostgresStore(dsn, pool_min=1)
        await store.open()
        try:
            return (await make(store, "/kv/file")).path
        finally:
            await store.close()
    assert run(body()) == "/kv/file"
    assert pg.query("SELECT COUNT(*) FROM inodes WHERE path = '/kv/file'") == [(1,)]


def test_pg_pool_sized_by_the_dsn_as_pgxpool_reads_it(pg):
    """`pool_max_conns` / `pool_min_conns` size the pool (never sent to the server as
    settings, which it would refuse); nonsense values are refused at open."""
    database = pg.database.rsplit("/", 1)[1]
    base = (f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{database}?sslmode=disable"
            f"&options={quote(f'-c search_path={pg.schema}')}")

    async def sizes(dsn):
        store = PostgresStore(dsn)
        await store.open()
        try:
            await make(store, f"/pool/{secrets.token_hex(4)}")
            return store._pool.get_min_size(), store._pool.get_max_size()
        finally:
            await store.close()
    assert run(sizes(base + "&pool_max_conns=3&pool_min_conns=1")) == (1, 3)
    assert run(sizes(base + "&pool_max_conns=1")) == (1, 1)
    assert run(sizes(base)) == (2, 10)
    for bad in ("pool_max_conns=0", "pool_max_conns=many", "pool_min_conns=-1"):
        with pytest.raises(errors.ServiceUnavailable, match=bad.split("=")[0]):
            run(sizes(f"{base}&{bad}"))


def test_pg_opens_a_database_left_by_the_reference_at_version_3(pg):
    """State compatibility (API.md Appendix A): the reference's tables at version 3, its root
    inserted with an explicit id, rows without CallFS's columns. Opening migrates to the newest
    version and serves those rows."""
    async def seed():
        conn = await asyncpg.connect(pg.dsn)
        try:
            async with conn.transaction():
                for number, _name, sql in migration_files("postgres"):
                    if number <= 3:
                        await conn.execute(sql)
                await conn.execute("CREATE TABLE schema_migrations "
                                   "(version BIGINT NOT NULL PRIMARY KEY, dirty BOOLEAN NOT NULL)")
                await conn.execute("INSERT INTO schema_migrations VALUES (3, false)")
                await conn.execute(
                    "INSERT INTO inodes (id, parent_id, name, path, type, mode, owner,"
                    " backend_type, callfs_instance_id) VALUES (1, NULL, '', '/', 'directory',"
                    " '0755', 'root', 'localfs', 'root')")
                await conn.execute(
                    "INSERT INTO inodes (id, parent_id, name, path, type, size, mode, owner,"
                    " mtime, backend_type, callfs_instance_id) VALUES (2, 1, 'old.txt',"
                    " '/old.txt', 'file', 5, '0600', 'carol', '2024-05-06T07:08:09.123456Z',"
                    " 'localfs', 'node-a')")
        finally:
            await conn.close()
    run(seed())
    # Both rows carry explicit ids, so the id sequence lags behind them: CallFS's inserts must
    # not collide with them.
    reference_mtime = 1_714_979_289_123_456_000

    async def body(store):
        root = await store.get("/")
        assert (root.id, root.mode, root.owner, root.group) == (1, 0o755, "root", "root")
        old = await store.get("/old.txt")
        assert (old.size, old.mode, old.owner, old.group) == (5, 0o600, "carol", "carol")
        assert (old.mtime_ns, old.version, old.instance_id) == (reference_mtime, 1, "node-a")
        fresh = await make(store, "/new/file.txt")
        assert fresh.mtime_ns == STAMP
        updated = await store.update_content(old, 6, STAMP)
        assert (updated.mtime_ns, updated.version) == (STAMP, 2)
    pg.run(body)
    assert pg.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]
    # The reference writes mtime alone: the stale nanosecond column is then ignored.
    pg.query("UPDATE inodes SET mtime = '2025-01-02T03:04:05.678901Z' WHERE path = '/old.txt' "
             "RETURNING id")

    async def after_reference_write(store):
        assert (await store.get("/old.txt")).mtime_ns == 1_735_787_045_678_901_000
        return await store.get_many(["/", "/old.txt", "/new/file.txt"])
    before = pg.run(after_reference_write)
    # Handed back to the reference (version set to 3) and then to CallFS again: 004 applies
    # a second time and changes nothing.
    pg.query("UPDATE schema_migrations SET version = 3 RETURNING version")

    async def reopened(store):
        assert await store.get_many(["/", "/old.txt", "/new/file.txt"]) == before
    pg.run(reopened)
    assert pg.query("SELECT version, dirty FROM schema_migrations") == [(LATEST, False)]


def test_a_cancelled_sqlite_write_learns_its_outcome_first(tmp_path):
    """The writer thread commits whatever happens to its caller. A caller cancelled while it
    waits gets the transaction's outcome first (so the bytes it wrote can follow it), and the
    cancellation right after."""
    async def body():
        where = str(tmp_path / "meta.db")
        store = SQLiteStore(where)
        await store.open()
        blocker = sqlite3.connect(where, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # the writer thread waits for this lock
        seen = {}

        async def write():
            seen["created"] = await make(store, "/d/f")

        task = asyncio.create_task(write())
        await asyncio.sleep(0.2)
        task.cancel()
        await asyncio.sleep(0.2)
        assert not task.done()  # still waiting for the thread
        blocker.execute("COMMIT")
        blocker.close()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen["created"].path == "/d/f"
        assert (await store.get("/d/f")).id == seen["created"].id
        await store.close()
    run(body())


def test_a_cancelled_postgres_commit_is_waited_out(pg):
    """A caller cancelled while its COMMIT is on the wire waits for the outcome (here a
    deferred trigger makes the commit take half a second) before the cancellation reaches it."""
    pg.run(lambda store: asyncio.sleep(0))  # the schema's tables
    pg.query("CREATE FUNCTION slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
             "$$ BEGIN PERFORM pg_sleep(0.5); RETURN NULL; END $$")
    pg.query("CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON inodes "
             "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION slow_commit()")

    async def body(store):
        seen = {}

        async def write():
            seen["created"] = await make(store, "/f")

        task = asyncio.create_task(write())
        await asyncio.sleep(0.25)  # inside the commit
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert seen["created"].path == "/f"
        assert (await store.get("/f")).id == seen["created"].id
    pg.run(body)
