"""PostgreSQL metadata store: one namespace shared by every CallFS node that points at it.

Same operations and guarantees as the SQLite store (metadata/base.py). The unique index on
`path` arbitrates between writers on different nodes: a creation that loses a race ends in
AlreadyExists. Losing the database is a 503 (ServiceUnavailable), never a 500, and the pool
reconnects by itself once PostgreSQL answers again.

Every statement is a constant string, so asyncpg prepares it once per connection and reuses it.
"""
import asyncio
import re
from datetime import datetime, timedelta, timezone
from typing import NamedTuple
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from callfs.domain import errors
from callfs.domain.model import DIRECTORY, Attributes, Content, Inode, NewInode, now_ns
from callfs.metadata.base import _publish_bytes as _publish
from callfs.metadata.base import wait_out
from callfs.metadata.base import USED_LINK_RETENTION_NS, LinkOutcome, link_refusal
from callfs.metadata.migrate import migration_files

# Serialises migrations of every CallFS instance that starts against the same database.
MIGRATION_LOCK_KEY = 0x43616C6C46530001

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_ATTEMPTS = 4  # a transaction that lost a deadlock or an ancestor race runs again
_CLOSE_TIMEOUT = 10.0

_COLUMNS = ("id, path, parent_id, name, type, size, mode, owner, group_name, mtime, mtime_ns, "
            "ctime, ctime_ns, backend_type, callfs_instance_id, version")

_GET = f"SELECT {_COLUMNS} FROM inodes WHERE path = $1"
_GET_MANY = f"SELECT {_COLUMNS} FROM inodes WHERE path = ANY($1::text[])"
# Byte order (API.md §5): directories before files, then names compared as UTF-8 bytes.
_CHILDREN = (f"SELECT {_COLUMNS} FROM inodes WHERE parent_id = $1 "
             'ORDER BY type COLLATE "C", name COLLATE "C"')
# The range runs on idx_inodes_path_bytes: '/a/' < path < '/a0' ('0' follows '/'), bytewise.
_DESCENDANTS = (f"SELECT {_COLUMNS} FROM inodes "
                'WHERE path COLLATE "C" > $1 AND path COLLATE "C" < $2')
_ANCESTORS = "SELECT path, id, type FROM inodes WHERE path = ANY($1::text[])"
_FIND = "SELECT id, type FROM inodes WHERE path = $1"
# The anchor of a write: the directory its bytes went into must still be at the path it had.
# A share lock on the key waits for a move in progress (which updates the row's path).
_ANCHOR = "SELECT path FROM inodes WHERE id = $1 FOR KEY SHARE"
_LOCK_MOVED = f"SELECT {_COLUMNS} FROM inodes WHERE id = $1 FOR UPDATE"
_MOVE_ROW = (f"UPDATE inodes SET path = $2, parent_id = $3, name = $4 WHERE id = $1"
             f" RETURNING {_COLUMNS}")
# A file's bytes moved to another backend: where they are now, on the version read under the
# mover's lock and its fencing number.
_RELOCATE = (
    "UPDATE inodes SET backend_type = $2, callfs_instance_id = $3, size = $4, mtime = $5,"
    " mtime_ns = $6, updated_at = now(), version = version + 1, fence = $7"
    " WHERE id = $1 AND type = 'file' AND version = $8 AND fence <= $7"
    f" RETURNING {_COLUMNS}")
# Lock every descendant first: this waits for writers that are inserting entries below them
# (their foreign-key checks hold key-share locks), so that the rewrite, a later statement with a
# later snapshot, sees those entries too; later inserts below the subtree wait for the commit.
_LOCK_SUBTREE = ('SELECT id FROM inodes WHERE path COLLATE "C" > $1 AND path COLLATE "C" < $2'
                 ' FOR UPDATE')
# Every descendant in one statement: the old prefix replaced by the new one.
_MOVE_SUBTREE = ('UPDATE inodes SET path = $2 || substr(path, char_length($1) + 1)'
                 ' WHERE path COLLATE "C" > $3 AND path COLLATE "C" < $4')
_INSERT = (
    "INSERT INTO inodes (parent_id, name, path, type, size, mode, owner, group_name, atime, mtime,"
    " ctime, mtime_ns, ctime_ns, backend_type, callfs_instance_id, created_at, updated_at,"
    " fence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $9, $10, $10, $11, $12, $9, $9, $13)"
    f" ON CONFLICT (path) DO NOTHING RETURNING {_COLUMNS}")
# Compare-and-set on the version the writer read under its lock, and on its fencing number: a
# writer whose lock expired while it worked cannot record over a newer version.
_UPDATE_CONTENT = (
    "UPDATE inodes SET size = $2, mtime = $3, mtime_ns = $4, updated_at = $3,"
    " version = version + 1, fence = $6"
    " WHERE id = $1 AND type = 'file' AND version = $5 AND fence <= $6 AND path = $7"
    f" RETURNING {_COLUMNS}")
# chmod, chgrp, chown: a row written without a group has its owner's, kept when only the owner
# changes.
_SET_ATTRIBUTES = (
    "UPDATE inodes SET mode = COALESCE($3, mode), group_name = COALESCE($4, group_name, owner),"
    " owner = COALESCE($5, owner), version = version + 1, updated_at = now()"
    f" WHERE id = $1 AND path = $2 RETURNING {_COLUMNS}")
_MAX_FENCE = "SELECT COALESCE(MAX(fence), 0) FROM inodes"
_IS_FILE = "SELECT path FROM inodes WHERE id = $1 AND type = 'file'"
_LOCK_ROW = "SELECT id, path FROM inodes WHERE id = $1 FOR UPDATE"
_PATH_OF = "SELECT path FROM inodes WHERE id = $1"
_HAS_CHILD = "SELECT 1 FROM inodes WHERE parent_id = $1 LIMIT 1"
_DELETE = "DELETE FROM inodes WHERE id = $1"
_ROOT = (
    "INSERT INTO inodes (parent_id, name, path, type, size, mode, owner, group_name, atime, mtime,"
    " ctime, mtime_ns, ctime_ns, backend_type, callfs_instance_id, created_at, updated_at)"
    " VALUES (NULL, '', '/', 'directory', 0, '1777', 'root', 'root', $1, $1, $1, $2, $2,"
    " 'localfs', NULL, $1, $1) ON CONFLICT (path) DO NOTHING")
# Single-use links (API.md §10). updated_at follows every UPDATE by the table's trigger.
_LINK_INSERT = (
    "INSERT INTO single_use_links (token, file_path, status, expires_at, hmac_signature,"
    " created_at, updated_at) VALUES ($1, $2, 'active', $3, $4, $5, $5)")
_LINK_FIND = "SELECT file_path, status, expires_at FROM single_use_links WHERE token = $1"
# The redemption itself: of concurrent ones, exactly one finds the row still active.
_LINK_CONSUME = (
    "UPDATE single_use_links SET status = 'used', used_at = $2, used_by_ip = $3::inet"
    " WHERE token = $1 AND status = 'active' AND expires_at >= $2 RETURNING file_path")
_LINK_SWEEP = (
    "WITH swept AS (DELETE FROM single_use_links WHERE (status <> 'used' AND expires_at < $1)"
    " OR (status = 'used' AND used_at < $2) RETURNING 1) SELECT count(*) FROM swept")


_KEYWORD = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*")


def _keyword_pairs(text: str) -> list[tuple[str, str]]:
    """libpq's `key=value key='quoted value'` connection string, as pairs."""
    pairs = []
    pos = 0
    while text[pos:].strip():
        match = _KEYWORD.match(text, pos)
        if match is None:
            raise ValueError("metadata_store.dsn: expected key=value")
        pos = match.end()
        value = []
        quoted = pos < len(text) and text[pos] == "'"
        pos += quoted
        while pos < len(text):
            ch = text[pos]
            if ch == "\\" and pos + 1 < len(text):
                value.append(text[pos + 1])
                pos += 2
                continue
            if (quoted and ch == "'") or (not quoted and ch.isspace()):
                pos += 1
                break
            value.append(ch)
            pos += 1
        else:
            if quoted:
                raise ValueError("metadata_store.dsn: unterminated quoted value")
        pairs.append((match.group(1), "".join(value)))
    return pairs


class ConnectArguments(NamedTuple):
    url: str                    # for asyncpg
    settings: dict[str, str]    # server settings (from `options`)
    timeout: float | None       # connect timeout
    pool: dict[str, int]        # pool_min_conns / pool_max_conns, as pgxpool reads them


def connect_arguments(dsn: str) -> ConnectArguments:
    """What to connect with, from a libpq connection string in either form. asyncpg reads URLs
    only, and would send `connect_timeout`, `options` and the pool sizes to the server as
    settings; libpq (and pgxpool, for the pool) give them their own meaning, and so does this."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
    else:
        parts = None
        pairs = _keyword_pairs(dsn)
    settings: dict[str, str] = {}
    pool: dict[str, int] = {}
    timeout = None
    kept = []
    for key, value in pairs:
        if key in ("pool_min_conns", "pool_max_conns"):
            if not value.isdigit() or (key == "pool_max_conns" and int(value) < 1):
                raise ValueError(f"{key} must be a whole number"
                                 f"{' of at least 1' if key == 'pool_max_conns' else ''}")
            pool[key] = int(value)
        elif key == "connect_timeout":
            timeout = float(value) if value and float(value) > 0 else None
        elif key == "options":
            # `-c name=value` or `--name=value`, as the server's command line takes them.
            words = value.split()
            for index, word in enumerate(words):
                if word == "-c" and index + 1 < len(words):
                    word = words[index + 1]
                elif word.startswith("-c"):
                    word = word[2:]
                elif word.startswith("--"):
                    word = word[2:]
                else:
                    continue
                name, sep, setting = word.partition("=")
                if sep:
                    settings[name.replace("-", "_")] = setting
        elif value:  # libpq treats an empty value as unset
            kept.append((key, value))
    if parts is None:
        return ConnectArguments(f"postgresql://?{urlencode(kept)}", settings, timeout, pool)
    url = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(kept), parts.fragment))
    return ConnectArguments(url, settings, timeout, pool)


def _stamp(ns: int) -> datetime:
    """The TIMESTAMPTZ for `ns`, truncated to the microsecond."""
    return _EPOCH + timedelta(microseconds=ns // 1000)


def _ns(stamp: datetime, exact: int | None) -> int:
    # The nanosecond column is trusted only while it agrees with the TIMESTAMPTZ: a server that
    # knows nothing of it (the reference) updates the timestamp alone.
    micros = (stamp - _EPOCH) // _MICROSECOND
    if exact is not None and exact // 1000 == micros:
        return exact
    return micros * 1000


def _inode(row) -> Inode:
    return Inode(
        id=row[0], path=row[1], parent_id=row[2], name=row[3], type=row[4], size=row[5],
        mode=int(row[6], 8), owner=row[7], group=row[8] if row[8] is not None else row[7],
        mtime_ns=_ns(row[9], row[10]), ctime_ns=_ns(row[11], row[12]), backend=row[13],
        instance_id=row[14], version=row[15],
    )


# SQLSTATE classes 08 (connection), 53 (resources: too many connections), 57 (shutdown, cannot
# connect now, statement cancelled) and a read-only server (a standby after a failover).
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError,
                asyncpg.InsufficientResourcesError, asyncpg.OperatorInterventionError,
                asyncpg.ReadOnlySQLTransactionError)
# The pooled connection died (backend terminated, server restarted), or it leads to a server that
# became a read-only standby in a failover: a new connection may work at once. InternalClientError:
# the server's goodbye arrived while the connection was idle and left asyncpg's protocol state
# waiting for more; the connection is unusable either way.
_STALE = (asyncpg.ConnectionDoesNotExistError, asyncpg.AdminShutdownError,
          asyncpg.CrashShutdownError, asyncpg.ConnectionFailureError,
          asyncpg.ReadOnlySQLTransactionError, asyncpg.InternalClientError)
# A transaction that may simply run again: it lost a deadlock, or an ancestor it relied on was
# deleted by another node between its lookup and its insert.
_RERUN = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError,
          asyncpg.ForeignKeyViolationError)


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, _UNAVAILABLE):
        return True
    # The client side of a dropped connection ("connection is closed").
    return isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)


def _unavailable(exc: BaseException) -> errors.ServiceUnavailable:
    return errors.ServiceUnavailable(f"metadata store unavailable: {type(exc).__name__}: {exc}")


class _Rerun(Exception):
    """A concurrent change invalidated what this transaction read; run it again."""


class PostgresStore:
    backend_name = "postgres"

    def __init__(self, dsn: str, *, pool_min: int = 2, pool_max: int = 10,
                 connect_timeout: float = 5.0, acquire_timeout: float = 30.0):
        self._dsn = dsn
        self._pool_min = pool_min
        self._pool_max = pool_max
        self._connect_timeout = connect_timeout
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            url, settings, timeout, sizes = connect_arguments(self._dsn)
            if "application_name" not in url:
                settings.setdefault("application_name", "callfs")
            largest = sizes.get("pool_max_conns", self._pool_max)
            smallest = min(sizes.get("pool_min_conns", min(self._pool_min, largest)), largest)
            pool = await asyncpg.create_pool(
                url, min_size=smallest, max_size=largest,
                timeout=timeout or self._connect_timeout, server_settings=settings or None)
        except Exception as exc:
            if _is_unavailable(exc):
                raise _unavailable(exc) from exc
            raise errors.ServiceUnavailable(
                f"metadata store: cannot connect: {type(exc).__name__}: {exc}") from exc
        try:
            async with pool.acquire(timeout=self._acquire_timeout) as conn:
                await self._migrate(conn)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, errors.CallFSError) or not isinstance(exc, Exception):
                raise
            if _is_unavailable(exc):
                raise _unavailable(exc) from exc
            raise errors.ServiceUnavailable(
                f"metadata store: migration failed: {type(exc).__name__}: {exc}") from exc
        self._pool = pool

    async def _migrate(self, conn) -> None:
        """Bring the schema to the newest migration in one transaction, under an advisory lock
        that makes instances starting together take turns; then make sure the root exists."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            # golang-migrate's table: one row, the version applied last and whether it failed.
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations "
                               "(version BIGINT NOT NULL PRIMARY KEY, dirty BOOLEAN NOT NULL)")
            row = await conn.fetchrow("SELECT version, dirty FROM schema_migrations "
                                      "ORDER BY version DESC LIMIT 1")
            current = row[0] if row else 0
            if row and row[1]:
                raise errors.ServiceUnavailable(
                    f"metadata store: schema version {current} is marked dirty (a migration "
                    "failed part-way); repair the schema by hand, then set dirty = false")
            for number, _name, sql in migration_files("postgres"):
                if number <= current:
                    continue
                await conn.execute(sql)  # no arguments: the simple protocol runs the whole file
                await conn.execute("DELETE FROM schema_migrations")
                await conn.execute("INSERT INTO schema_migrations (version, dirty) "
                                   "VALUES ($1, false)", number)
            stamp = now_ns()
            await conn.execute(_ROOT, _stamp(stamp), stamp)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), _CLOSE_TIMEOUT)
        except Exception:  # includes the timeout: whatever is still busy is cut off
            pool.terminate()

    def _acquire(self):
        if self._pool is None:
            raise errors.ServiceUnavailable("metadata store is not open")
        return self._pool.acquire(timeout=self._acquire_timeout)

    # -- reads -----------------------------------------------------------------------------

    async def _dropped(self, conn, exc: BaseException) -> bool:
        """Whether `exc` says that this pooled connection is no longer of use (see _STALE).
        Then it is closed, and its siblings, which most likely share its fate, are replaced on
        their next use: the next acquire connects afresh."""
        if not (isinstance(exc, _STALE)
                or (isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc))):
            return False
        try:
            conn.terminate()
        except asyncpg.InterfaceError:
            pass  # the pool has already let go of it
        if self._pool is not None:
            await self._pool.expire_connections()
        return True

    async def _fetch(self, sql: str, *args) -> list:
        """Rows of a read. A read that met a connection the server had dropped runs again,
        once, on a fresh one."""
        retried = False
        while True:
            try:
                async with self._acquire() as conn:
                    try:
                        return await conn.fetch(sql, *args)
                    except Exception as exc:
                        if retried or not await self._dropped(conn, exc):
                            raise
                        retried = True
            except Exception as exc:
                _reraise(exc)

    async def get(self, path: str) -> Inode | None:
        rows = await self._fetch(_GET, path)
        return _inode(rows[0]) if rows else None

    async def path_of(self, inode_id: int) -> str | None:
        rows = await self._fetch(_PATH_OF, inode_id)
        return rows[0][0] if rows else None

    async def max_fence(self) -> int:
        return (await self._fetch(_MAX_FENCE))[0][0]

    async def get_many(self, paths: list[str]) -> dict[str, Inode]:
        if not paths:
            return {}
        rows = await self._fetch(_GET_MANY, list(paths))
        return {row[1]: _inode(row) for row in rows}

    async def list_children(self, directory: Inode) -> list[Inode]:
        return [_inode(row) for row in await self._fetch(_CHILDREN, directory.id)]

    async def list_descendants(self, directory: Inode) -> list[Inode]:
        low = "/" if directory.path == "/" else directory.path + "/"
        high = "0" if directory.path == "/" else directory.path + "0"
        return [_inode(row) for row in await self._fetch(_DESCENDANTS, low, high)
                if row[1] != "/"]

    # -- writes ----------------------------------------------------------------------------

    async def _write(self, fn, *args):
        """Run `fn(conn, *args)` in a transaction. It runs again when a concurrent change
        invalidated it, and once when its connection turned out dead before COMMIT was sent
        (nothing was committed then). A connection lost during COMMIT is a 503: the outcome
        is unknown."""
        reconnected = False
        attempt = 0
        while True:
            try:
                async with self._acquire() as conn:
                    tx = conn.transaction()
                    try:
                        await tx.start()
                        result = await fn(conn, *args)
                    except BaseException as exc:
                        if isinstance(exc, Exception) and not reconnected \
                                and await self._dropped(conn, exc):
                            reconnected = True
                            continue
                        try:
                            await tx.rollback()
                        except Exception:
                            pass  # a dead connection rolls back by itself; the pool drops it
                        raise
                    # Once COMMIT is sent, its outcome decides what the caller's bytes do: a
                    # cancellation meanwhile waits for it, and for the connection's release.
                    _, cancelled = await wait_out(tx.commit())
                if cancelled:
                    asyncio.current_task().cancel()
                return result
            except (_Rerun, *_RERUN) as exc:
                attempt += 1
                if attempt >= _ATTEMPTS:
                    raise errors.ServiceUnavailable(
                        "metadata store: too much contention, try again") from exc
            except Exception as exc:
                _reraise(exc)

    async def create(self, ancestors: list[NewInode], entry: NewInode,
                     anchor: tuple[int, str] | None = None) -> Inode:
        return await self._write(self._create_tx, ancestors, entry, anchor)

    @staticmethod
    async def _check_anchor(conn, anchor: tuple[int, str] | None) -> None:
        if anchor is not None:
            row = await conn.fetchrow(_ANCHOR, anchor[0])
            if row is not None and row[0] != anchor[1]:
                raise errors.ParentMoved()

    async def _create_tx(self, conn, ancestors: list[NewInode], entry: NewInode,
                         anchor: tuple[int, str] | None = None) -> Inode:
        await self._check_anchor(conn, anchor)
        parent_id = await self._parents_tx(conn, ancestors) if ancestors else None
        row = await self._insert(conn, entry, parent_id)
        if row is not None:
            return _inode(row)
        row = await conn.fetchrow(_GET, entry.path)
        if row is None:
            raise _Rerun()
        exc = errors.AlreadyExists()
        exc.existing = _inode(row)
        raise exc

    @staticmethod
    async def _insert(conn, item: NewInode, parent_id: int | None):
        """The new row, or None when the path exists (committed by someone else)."""
        name = item.path.rsplit("/", 1)[1]
        return await conn.fetchrow(
            _INSERT, parent_id, name, item.path, item.type, item.size, f"{item.mode:04o}",
            item.owner, item.group, _stamp(item.mtime_ns), item.mtime_ns, item.backend,
            item.instance_id, item.fence)

    async def update_content(self, inode: Inode, size: int, mtime_ns: int,
                             fence: int = 0) -> Inode:
        return await self._write(self._update_content_tx, inode, size, mtime_ns, fence)

    @staticmethod
    async def _update_content_tx(conn, inode: Inode, size: int, mtime_ns: int,
                                 fence: int) -> Inode:
        row = await conn.fetchrow(_UPDATE_CONTENT, inode.id, size, _stamp(mtime_ns), mtime_ns,
                                  inode.version, fence, inode.path)
        if row is None:
            found = await conn.fetchrow(_IS_FILE, inode.id)
            if found is None:
                raise errors.NotFound()
            if found[0] != inode.path:
                raise errors.ParentMoved()
            raise errors.WriteConflict()
        return _inode(row)

    async def set_attributes(self, inode: Inode, attributes: Attributes) -> Inode:
        return await self._write(self._attributes_tx, inode.id, inode.path, attributes)

    @staticmethod
    async def _attributes_tx(conn, inode_id: int, path: str, attributes: Attributes) -> Inode:
        mode = None if attributes.mode is None else f"{attributes.mode:04o}"
        row = await conn.fetchrow(_SET_ATTRIBUTES, inode_id, path, mode, attributes.group,
                                  attributes.owner)
        if row is None:
            raise errors.NotFound()
        return _inode(row)

    async def move(self, source: Inode, dest: str, ancestors: list[NewInode],
                   replace: Inode | None, publish, attributes: Attributes | None = None,
                   content: Content | None = None) -> Inode:
        return await self._write(self._move_tx, source, dest, ancestors, replace, publish,
                                 attributes, content)

    async def _move_tx(self, conn, source: Inode, dest: str, ancestors: list[NewInode],
                       replace: Inode | None, publish, attributes: Attributes | None = None,
                       content: Content | None = None) -> Inode:
        moved = await conn.fetchrow(_LOCK_MOVED, source.id)
        if moved is None or moved[1] != source.path:
            raise errors.NotFound()
        if dest != source.path:
            if replace is not None:
                await self._delete_tx(conn, replace)
            parent_id = await self._parents_tx(conn, ancestors)
            if await conn.fetchrow(_FIND, dest) is not None:
                raise errors.AlreadyExists()
            try:
                moved = await conn.fetchrow(_MOVE_ROW, source.id, dest, parent_id,
                                            dest.rsplit("/", 1)[1])
            except asyncpg.UniqueViolationError:
                raise errors.AlreadyExists() from None
            if source.type == DIRECTORY:
                await conn.execute(_LOCK_SUBTREE, source.path + "/", source.path + "0")
                await conn.execute(_MOVE_SUBTREE, source.path, dest, source.path + "/",
                                   source.path + "0")
        if content is not None:
            moved = await conn.fetchrow(_RELOCATE, source.id, content.backend,
                                        content.instance_id, content.size,
                                        _stamp(content.mtime_ns), content.mtime_ns,
                                        content.fence, source.version)
            if moved is None:
                raise errors.WriteConflict()
        _publish(publish)
        if attributes:
            return await self._attributes_tx(conn, source.id, dest, attributes)
        return _inode(moved)

    async def _parents_tx(self, conn, ancestors: list[NewInode]) -> int | None:
        """The id of the last of `ancestors` (root first), creating the missing ones."""
        parent_id = None
        known = {row[0]: (row[1], row[2])
                 for row in await conn.fetch(_ANCESTORS, [item.path for item in ancestors])}
        for item in ancestors:
            found = known.get(item.path)
            if found is None:
                row = await self._insert(conn, item, parent_id)
                # Another node created it since the lookup: use theirs.
                found = (row[0], row[4]) if row is not None else await conn.fetchrow(
                    _FIND, item.path)
                if found is None:
                    raise _Rerun()  # ... and deleted it again
            if found[1] != DIRECTORY:
                raise errors.NotADirectory("a parent of the path is a file")
            parent_id = found[0]
        return parent_id

    async def delete(self, inode: Inode, publish=None) -> None:
        await self._write(self._delete_tx, inode, publish)

    @staticmethod
    async def _delete_tx(conn, inode: Inode, publish=None) -> None:
        # Lock the row first: a creator inserting a child holds a key-share lock on it (the
        # foreign key), so once the lock is ours every child is committed and visible to the
        # next statement, and later creators fail their foreign-key check and run again.
        row = await conn.fetchrow(_LOCK_ROW, inode.id)
        if row is None or row[1] != inode.path:
            raise errors.NotFound()  # gone, or moved away from the path the caller named
        if await conn.fetchrow(_HAS_CHILD, inode.id) is not None:
            raise errors.DirectoryNotEmpty()
        await conn.execute(_DELETE, inode.id)
        if publish is not None:
            _publish(publish)

    # -- single-use links (API.md §10) -----------------------------------------------------

    async def create_link(self, token: str, path: str, signature: str, expires_ns: int,
                          now_ns: int) -> None:
        await self._fetch(_LINK_INSERT, token, path, _stamp(expires_ns), signature,
                          _stamp(now_ns))

    async def consume_link(self, token: str, now_ns: int, ip: str | None,
                           verify) -> tuple[LinkOutcome, str | None]:
        outcome, path = await self._link_state(token, now_ns)
        if outcome is not None:
            return outcome, path
        if not verify(path):
            return LinkOutcome.FORGED, path
        if await self._fetch(_LINK_CONSUME, token, _stamp(now_ns), ip):
            return LinkOutcome.CONSUMED, path
        # Another redemption won (or a sweep took the link meanwhile): as the row stands now.
        outcome, path = await self._link_state(token, now_ns)
        return outcome or LinkOutcome.USED, path

    async def _link_state(self, token: str, now_ns: int) -> tuple[LinkOutcome | None, str | None]:
        """The refusal link_refusal finds for the stored link (None: it may be redeemed), and
        its path."""
        rows = await self._fetch(_LINK_FIND, token)
        if not rows:
            return LinkOutcome.UNKNOWN, None
        path, status, expires = rows[0]
        return link_refusal(status, _ns(expires, None), now_ns), path

    async def sweep_links(self, now_ns: int, used_age_ns: int = USED_LINK_RETENTION_NS) -> int:
        rows = await self._fetch(_LINK_SWEEP, _stamp(now_ns), _stamp(now_ns - used_age_ns))
        return rows[0][0]


def _reraise(exc: Exception):
    """Raise what a failed store call means: an unreachable server, or a connection left
    stale by one, as 503 SERVICE_UNAVAILABLE; our own errors and anything else as they are."""
    if not isinstance(exc, errors.CallFSError) and (_is_unavailable(exc)
                                                    or isinstance(exc, _STALE)):
        raise _unavailable(exc) from exc
    raise exc
