"""SQLite metadata store: the embedded default, correct across the worker processes of one host.

Reads run on the event loop's thread (WAL readers never wait for writers; a point lookup costs
microseconds). Writes run on one dedicated thread, because a durable commit waits for fsync and
another process may hold the write lock for a while. Without durability (no fsync at commit) a
write whose lock is free at once commits on the loop's thread instead, sparing the thread hop;
if anyone holds the lock, it goes to the thread and waits there.
"""
import asyncio
import os
import random
import sqlite3
import threading
import time
from calendar import timegm
from concurrent.futures import ThreadPoolExecutor

from callfs.domain import errors
from callfs.domain.model import (DIRECTORY, Attributes, Content, Inode, NewInode, now_ns,
                                 parse_rfc3339, rfc3339_nanos)
from callfs.metadata.base import _publish_bytes as _publish
from callfs.metadata.base import wait_out
from callfs.metadata.base import USED_LINK_RETENTION_NS, LinkOutcome, link_refusal
from callfs.metadata.migrate import migration_files, split_statements

_COLUMNS = ("id, path, parent_id, name, type, size, mode, owner, group_name, mtime, ctime, "
            "backend_type, callfs_instance_id, version")
_BUSY_TIMEOUT_MS = 30_000
_DAY_NS = 24 * 3600 * 1_000_000_000


def _fast_ns(text: str) -> int:
    # Our own stored form is fixed-width; anything else goes through the general parser.
    if len(text) == 30 and text[19] == "." and text[29] == "Z":
        try:
            secs = timegm((int(text[0:4]), int(text[5:7]), int(text[8:10]),
                           int(text[11:13]), int(text[14:16]), int(text[17:19]), 0, 0, 0))
            return secs * 1_000_000_000 + int(text[20:29])
        except ValueError:
            pass
    return parse_rfc3339(text)


def _inode(row) -> Inode:
    return Inode(
        id=row[0], path=row[1], parent_id=row[2], name=row[3], type=row[4], size=row[5],
        mode=int(row[6], 8), owner=row[7], group=row[8] if row[8] is not None else row[7],
        mtime_ns=_fast_ns(row[9]), ctime_ns=_fast_ns(row[10]), backend=row[11],
        instance_id=row[12], version=row[13],
    )


class SQLiteStore:
    backend_name = "sqlite"

    def __init__(self, path: str, *, durable: bool = True):
        self._path = path
        self._durable = durable
        self._reader: sqlite3.Connection | None = None
        self._writer: sqlite3.Connection | None = None
        self._inline: sqlite3.Connection | None = None  # loop-thread writer, never waits
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callfs-sqlite")
        self._write_lock = threading.Lock()
        self._redemptions: list = []  # link redemptions waiting for the next group's commit
        self._redeeming: asyncio.Task | None = None

    def _connect(self, busy_timeout_ms: int = _BUSY_TIMEOUT_MS) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                               timeout=busy_timeout_ms / 1000)
        conn.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA synchronous={'FULL' if self._durable else 'NORMAL'}")
        return conn

    async def open(self) -> None:
        parent = os.path.dirname(os.path.abspath(self._path))
        os.makedirs(parent, exist_ok=True)
        await self._run(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self._writer = self._connect()
            self._use_wal(self._writer)
            self._migrate()
            self._reader = self._connect()
            if not self._durable:
                self._inline = self._connect(busy_timeout_ms=0)
        except sqlite3.Error as exc:
            raise errors.ServiceUnavailable(f"metadata store: {exc}") from exc

    @staticmethod
    def _use_wal(conn) -> None:
        """Switch the database to WAL. SQLite answers "locked" at once, without waiting out
        its busy timeout, when another connection holds the file as the switch happens (stores
        opening together on a fresh database): that is tried again, for as long as the busy
        timeout would have waited."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.005, 0.05))

    def _migrate(self) -> None:
        conn = self._writer
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                         "(version INTEGER NOT NULL PRIMARY KEY, dirty INTEGER NOT NULL)")
            row = conn.execute("SELECT version, dirty FROM schema_migrations").fetchone()
            current = row[0] if row else 0
            if row and row[1]:
                raise sqlite3.DatabaseError(f"schema version {current} is marked dirty")
            for number, _name, sql in migration_files("sqlite"):
                if number <= current:
                    continue
                for stmt in split_statements(sql):
                    conn.execute(stmt)
                conn.execute("DELETE FROM schema_migrations")
                conn.execute("INSERT INTO schema_migrations (version, dirty) VALUES (?, 0)", (number,))
            stamp = rfc3339_nanos(now_ns())
            conn.execute(
                "INSERT OR IGNORE INTO inodes (parent_id, name, path, type, size, mode, owner, group_name,"
                " atime, mtime, ctime, backend_type, callfs_instance_id, created_at, updated_at)"
                " VALUES (NULL, '', '/', 'directory', 0, '1777', 'root', 'root', ?, ?, ?, 'localfs',"
                " NULL, ?, ?)", (stamp, stamp, stamp, stamp, stamp))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def close(self) -> None:
        await self._run(self._close_sync)
        self._pool.shutdown(wait=True)

    def _close_sync(self) -> None:
        for conn in (self._reader, self._writer, self._inline):
            if conn is not None:
                conn.close()
        self._reader = self._writer = self._inline = None

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def _read(self, sql: str, params=()) -> list:
        try:
            return self._reader.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise errors.ServiceUnavailable(f"metadata store: {exc}") from exc

    # -- reads -----------------------------------------------------------------------------

    async def get(self, path: str) -> Inode | None:
        rows = self._read(f"SELECT {_COLUMNS} FROM inodes WHERE path = ?", (path,))
        return _inode(rows[0]) if rows else None

    async def path_of(self, inode_id: int) -> str | None:
        rows = self._read("SELECT path FROM inodes WHERE id = ?", (inode_id,))
        return rows[0][0] if rows else None

    async def max_fence(self) -> int:
        return self._read("SELECT COALESCE(MAX(fence), 0) FROM inodes", ())[0][0]

    async def get_many(self, paths: list[str]) -> dict[str, Inode]:
        if not paths:
            return {}
        marks = ",".join("?" * len(paths))
        rows = self._read(f"SELECT {_COLUMNS} FROM inodes WHERE path IN ({marks})", paths)
        return {row[1]: _inode(row) for row in rows}

    async def list_children(self, directory: Inode) -> list[Inode]:
        rows = self._read(f"SELECT {_COLUMNS} FROM inodes WHERE parent_id = ? ORDER BY type, name",
                          (directory.id,))
        return [_inode(row) for row in rows]

    async def list_descendants(self, directory: Inode) -> list[Inode]:
        # Path range on the unique index: '/a/' <= path < '/a0' ('0' follows '/').
        low = "/" if directory.path == "/" else directory.path + "/"
        high = "0" if directory.path == "/" else directory.path + "0"
        rows = self._read(f"SELECT {_COLUMNS} FROM inodes WHERE path > ? AND path < ?", (low, high))
        return [_inode(row) for row in rows if row[1] != "/"]

    # -- writes ----------------------------------------------------------------------------

    def _transaction(self, fn, *args):
        conn = self._writer
        with self._write_lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise errors.ServiceUnavailable(f"metadata store: {exc}") from exc
            return _in_transaction(conn, fn, *args)

    async def _write(self, fn, *args):
        conn = self._inline
        if conn is not None and self._write_lock.acquire(blocking=False):
            try:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    pass  # another process writes: wait for it on the writer thread
                else:
                    return _in_transaction(conn, fn, *args)
            finally:
                self._write_lock.release()
        # The thread commits or not whatever happens to the caller: wait for its outcome.
        # Nothing between here and the caller's use of it can be interrupted, so a held-back
        # cancellation is delivered at once (it strikes at the caller's next wait).
        result, cancelled = await wait_out(asyncio.get_running_loop().run_in_executor(
            self._pool, self._transaction, fn, *args))
        if cancelled:
            asyncio.current_task().cancel()
        return result

    async def create(self, ancestors: list[NewInode], entry: NewInode,
                     anchor: tuple[int, str] | None = None) -> Inode:
        return await self._write(self._create_tx, ancestors, entry, anchor)

    def _create_tx(self, conn, ancestors: list[NewInode], entry: NewInode,
                   anchor: tuple[int, str] | None = None) -> Inode:
        if anchor is not None:
            # The directory the bytes went into must still be at the path it had.
            row = conn.execute("SELECT path FROM inodes WHERE id = ?", (anchor[0],)).fetchone()
            if row is not None and row[0] != anchor[1]:
                raise errors.ParentMoved()
        parent_id = self._parents_tx(conn, ancestors)
        row = conn.execute(f"SELECT {_COLUMNS} FROM inodes WHERE path = ?", (entry.path,)).fetchone()
        if row is not None:
            exc = errors.AlreadyExists()
            exc.existing = _inode(row)
            raise exc
        new_id = self._insert(conn, entry, parent_id)
        row = conn.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (new_id,)).fetchone()
        return _inode(row)

    def _parents_tx(self, conn, ancestors: list[NewInode]) -> int | None:
        """The id of the last of `ancestors` (root first), creating the missing ones."""
        parent_id = None
        for item in ancestors:
            row = conn.execute("SELECT id, type FROM inodes WHERE path = ?", (item.path,)).fetchone()
            if row is None:
                parent_id = self._insert(conn, item, parent_id)
            elif row[1] != DIRECTORY:
                raise errors.NotADirectory("a parent of the path is a file")
            else:
                parent_id = row[0]
        return parent_id

    @staticmethod
    def _insert(conn, item: NewInode, parent_id: int | None) -> int:
        stamp = rfc3339_nanos(item.mtime_ns)
        name = item.path.rsplit("/", 1)[1]
        cur = conn.execute(
            "INSERT INTO inodes (parent_id, name, path, type, size, mode, owner, group_name, atime,"
            " mtime, ctime, backend_type, callfs_instance_id, created_at, updated_at, fence)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (parent_id, name, item.path, item.type, item.size, f"{item.mode:04o}", item.owner,
             item.group, stamp, stamp, stamp, item.backend, item.instance_id, stamp, stamp,
             item.fence))
        return cur.lastrowid

    async def update_content(self, inode: Inode, size: int, mtime_ns: int,
                             fence: int = 0) -> Inode:
        return await self._write(self._update_content_tx, inode, size, mtime_ns, fence)

    def _update_content_tx(self, conn, inode: Inode, size: int, mtime_ns: int,
                           fence: int) -> Inode:
        stamp = rfc3339_nanos(mtime_ns)
        # Compare-and-set on the version read under the writer's lock and on its fencing
        # number: a writer whose lock expired while it worked cannot record over a newer version.
        cur = conn.execute(
            "UPDATE inodes SET size = ?, mtime = ?, updated_at = ?, version = version + 1,"
            " fence = ? WHERE id = ? AND type = 'file' AND version = ? AND fence <= ? AND path = ?",
            (size, stamp, stamp, fence, inode.id, inode.version, fence, inode.path))
        if cur.rowcount != 1:
            found = conn.execute("SELECT path FROM inodes WHERE id = ? AND type = 'file'",
                                 (inode.id,)).fetchone()
            if found is None:
                raise errors.NotFound()
            if found[0] != inode.path:
                raise errors.ParentMoved()  # the entry moved while it was written
            raise errors.WriteConflict()
        row = conn.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (inode.id,)).fetchone()
        return _inode(row)

    async def set_attributes(self, inode: Inode, attributes: Attributes) -> Inode:
        return await self._write(self._attributes_tx, inode.id, inode.path, attributes)

    @staticmethod
    def _attributes_tx(conn, inode_id: int, path: str, attributes: Attributes) -> Inode:
        mode = None if attributes.mode is None else f"{attributes.mode:04o}"
        # A row written without a group has its owner's: kept when only the owner changes.
        cur = conn.execute(
            "UPDATE inodes SET mode = COALESCE(?, mode),"
            " group_name = COALESCE(?, group_name, owner), owner = COALESCE(?, owner),"
            " version = version + 1, updated_at = ? WHERE id = ? AND path = ?",
            (mode, attributes.group, attributes.owner, rfc3339_nanos(now_ns()), inode_id, path))
        if cur.rowcount != 1:
            raise errors.NotFound()
        row = conn.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (inode_id,)).fetchone()
        return _inode(row)

    async def move(self, source: Inode, dest: str, ancestors: list[NewInode],
                   replace: Inode | None, publish, attributes: Attributes | None = None,
                   content: Content | None = None) -> Inode:
        return await self._write(self._move_tx, source, dest, ancestors, replace, publish,
                                 attributes, content)

    def _move_tx(self, conn, source: Inode, dest: str, ancestors: list[NewInode],
                 replace: Inode | None, publish, attributes: Attributes | None = None,
                 content: Content | None = None) -> Inode:
        row = conn.execute("SELECT path FROM inodes WHERE id = ?", (source.id,)).fetchone()
        if row is None or row[0] != source.path:
            raise errors.NotFound()
        if dest != source.path:
            if replace is not None:
                self._delete_tx(conn, replace)
            parent_id = self._parents_tx(conn, ancestors)
            if conn.execute("SELECT 1 FROM inodes WHERE path = ?", (dest,)).fetchone():
                raise errors.AlreadyExists()
            conn.execute("UPDATE inodes SET path = ?, parent_id = ?, name = ? WHERE id = ?",
                         (dest, parent_id, dest.rsplit("/", 1)[1], source.id))
            if source.type == DIRECTORY:
                # Every descendant in one statement: the old prefix replaced by the new one.
                conn.execute("UPDATE inodes SET path = ? || substr(path, length(?) + 1)"
                             " WHERE path > ? AND path < ?",
                             (dest, source.path, source.path + "/", source.path + "0"))
        if content is not None:
            # Where the bytes are now, on the version read under the mover's lock.
            stamp = rfc3339_nanos(content.mtime_ns)
            cur = conn.execute(
                "UPDATE inodes SET backend_type = ?, callfs_instance_id = ?, size = ?, mtime = ?,"
                " updated_at = ?, version = version + 1, fence = ?"
                " WHERE id = ? AND type = 'file' AND version = ? AND fence <= ?",
                (content.backend, content.instance_id, content.size, stamp,
                 rfc3339_nanos(now_ns()), content.fence, source.id, source.version,
                 content.fence))
            if cur.rowcount != 1:
                raise errors.WriteConflict()
        _publish(publish)
        if attributes:
            return self._attributes_tx(conn, source.id, dest, attributes)
        row = conn.execute(f"SELECT {_COLUMNS} FROM inodes WHERE id = ?", (source.id,)).fetchone()
        return _inode(row)

    async def delete(self, inode: Inode, publish=None) -> None:
        await self._write(self._delete_tx, inode, publish)

    def _delete_tx(self, conn, inode: Inode, publish=None) -> None:
        if conn.execute("SELECT 1 FROM inodes WHERE parent_id = ? LIMIT 1", (inode.id,)).fetchone():
            raise errors.DirectoryNotEmpty()
        # Gone, or moved away from the path the caller named: not found.
        cur = conn.execute("DELETE FROM inodes WHERE id = ? AND path = ?", (inode.id, inode.path))
        if cur.rowcount != 1:
            raise errors.NotFound()
        if publish is not None:
            _publish(publish)

    # -- single-use links (API.md §10; timestamps as Appendix A has them) ------------------

    async def create_link(self, token: str, path: str, signature: str, expires_ns: int,
                          now_ns: int) -> None:
        await self._write(self._create_link_tx, token, path, signature, expires_ns, now_ns)

    @staticmethod
    def _create_link_tx(conn, token: str, path: str, signature: str, expires_ns: int,
                        now_ns: int) -> None:
        stamp = rfc3339_nanos(now_ns)
        conn.execute(
            "INSERT INTO single_use_links (token, file_path, status, expires_at, hmac_signature,"
            " created_at, updated_at) VALUES (?, ?, 'active', ?, ?, ?, ?)",
            (token, path, rfc3339_nanos(expires_ns), signature, stamp, stamp))

    async def consume_link(self, token: str, now_ns: int, ip: str | None,
                           verify) -> tuple[LinkOutcome, str | None]:
        """Redemptions are committed in groups: those that arrive while one group's
        transaction runs (or within one turn of the event loop) go in the next, one
        transaction for all, each decided in turn as if alone (two of one token: the first
        wins). One commit, one fsync where the store is durable, serves the whole group."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._redemptions.append((token, now_ns, ip, verify, future))
        if self._redeeming is None:
            self._redeeming = loop.create_task(self._redeem_groups())
        return await asyncio.shield(future)

    async def _redeem_groups(self) -> None:
        try:
            await asyncio.sleep(0)  # one turn: the redemptions read with this one join it
            while self._redemptions:
                group, self._redemptions = self._redemptions, []
                try:
                    outcomes = await self._write(self._consume_links_tx, group)
                except BaseException as exc:
                    for *_, future in group:
                        if not future.done():
                            future.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (*_, future), outcome in zip(group, outcomes):
                    if not future.done():
                        future.set_result(outcome)
        finally:
            self._redeeming = None

    @classmethod
    def _consume_links_tx(cls, conn, group) -> list:
        return [cls._consume_link_tx(conn, token, now_ns, ip, verify)
                for token, now_ns, ip, verify, _ in group]

    @staticmethod
    def _consume_link_tx(conn, token: str, now_ns: int, ip: str | None,
                         verify) -> tuple[LinkOutcome, str | None]:
        # Read and mark under one write lock (BEGIN IMMEDIATE): no other redemption runs between.
        row = conn.execute("SELECT file_path, status, expires_at FROM single_use_links"
                           " WHERE token = ?", (token,)).fetchone()
        if row is None:
            return LinkOutcome.UNKNOWN, None
        path = row[0]
        refusal = link_refusal(row[1], _fast_ns(row[2]), now_ns)
        if refusal is not None:
            return refusal, path
        if not verify(path):
            return LinkOutcome.FORGED, path
        stamp = rfc3339_nanos(now_ns)
        conn.execute("UPDATE single_use_links SET status = 'used', used_at = ?, used_by_ip = ?,"
                     " updated_at = ? WHERE token = ? AND status = 'active'",
                     (stamp, ip, stamp, token))
        return LinkOutcome.CONSUMED, path

    async def sweep_links(self, now_ns: int, used_age_ns: int = USED_LINK_RETENTION_NS) -> int:
        return await self._write(self._sweep_links_tx, now_ns, used_age_ns)

    @staticmethod
    def _sweep_links_tx(conn, now_ns: int, used_age_ns: int) -> int:
        # Stamps written by another server may be spelt otherwise (another precision, an
        # offset): julianday() compares instants. The text bound a day ahead only lets the
        # index on expires_at narrow the rows; used links are found by the index on status.
        cur = conn.execute(
            "DELETE FROM single_use_links WHERE (status <> 'used' AND expires_at < ?"
            " AND julianday(expires_at) < julianday(?))"
            " OR (status = 'used' AND julianday(used_at) < julianday(?))",
            (rfc3339_nanos(now_ns + _DAY_NS), rfc3339_nanos(now_ns),
             rfc3339_nanos(now_ns - used_age_ns)))
        return cur.rowcount


def _in_transaction(conn, fn, *args):
    """`fn(conn, *args)` inside the transaction just begun on `conn`: committed with its
    result, or rolled back when it raises."""
    try:
        result = fn(conn, *args)
        conn.execute("COMMIT")
        return result
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
