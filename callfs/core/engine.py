"""The engine: filesystem semantics in one place (ARCHITECTURE.md). It decides what a request
may do, takes the path's lock, moves bytes through a backend and records them in the metadata
store. It never sees HTTP; handlers never see a backend or the database.

Order of a write: the body is staged with no lock held (a slow client holds nobody up); then,
under the path's lock, the entry is read again, the bytes published by rename and the metadata
committed (compare-and-set on version, with the fencing number). A reader never sees a
half-written file; a metadata row never appears before its bytes.
"""
import asyncio
import logging
import time

import msgspec
from collections.abc import Callable

from callfs._native.pathnorm import ancestors
from callfs.backends.base import Capability
from callfs._native.pathnorm import split_parent
from callfs.core import moves
from callfs.domain.observer import Observer, Silent
from callfs.core.permissions import Principal, Rules
from callfs.domain import errors, forwarding
from callfs.domain.model import (DIRECTORY, FILE, ROOT, Attributes, Content, Inode, NewInode,
                                 now_ns)
from callfs.locks.base import dir_key, file_key

log = logging.getLogger("callfs.engine")

# A write's precondition (API.md §2: If-Match, If-None-Match, If-Unmodified-Since), built by the
# API layer: called with the entry the write would replace (None when there is none), it raises
# PreconditionFailed to refuse. The engine runs it after the permission checks, once before the
# lock (so a stale request is refused before its body is read) and again under the lock, where
# the answer holds until the write is done.
Check = Callable[[Inode | None], None]

MAX_UPLOAD = 10 * 1024 ** 3  # API.md §2: 10 GiB per file body
MOVE_WAIT = 5.0  # how long a read waits for a move that took its bytes away to commit
READ_VIEW_BUDGET = 64 * 1024 * 1024  # bytes of prepared answers the read view keeps
# What the read view needs of a backend: bytes on this host, stamped with their version.
_NEEDS_LOCAL = Capability.LOCAL | Capability.STAMPED


class CrossServerConflict(errors.CallFSError):
    """POST onto an entry owned by another instance (API.md §13.3): answered with its own body."""

    status, code, message = 409, "FILE_ALREADY_EXISTS", "resource exists on another server"

    def __init__(self, existing: Inode, wanted_type: str):
        super().__init__()
        self.existing = existing
        self.wanted_type = wanted_type


class Engine:
    def __init__(self, *, store, locks, backends: dict, default_backend: str, instance_id: str,
                 file_op_timeout: float | None, metadata_op_timeout: float | None,
                 file_mode: int = 0o644, dir_mode: int = 0o755, peers=(),
                 peer_readers: dict | None = None, rules: Rules | None = None,
                 observer: Observer | None = None):
        self.observer = observer if observer is not None else Silent()
        self.store = store
        self.locks = locks
        self.backends = backends
        self.default_backend = default_backend
        self.instance_id = instance_id
        self.lock_timeout = file_op_timeout if file_op_timeout and file_op_timeout > 0 else None
        self.metadata_timeout = (metadata_op_timeout
                                 if metadata_op_timeout and metadata_op_timeout > 0 else None)
        self.file_mode = file_mode
        self.dir_mode = dir_mode
        self.peers = frozenset(peers)  # instance ids this node knows the address of
        # Instance id -> how the files it owns are read (backends/peer.py).
        self.peer_readers = dict(peer_readers or {})
        self.rules = rules if rules is not None else Rules()

    # -- lookups -----------------------------------------------------------------------------

    async def stat(self, who: Principal, path: str) -> Inode:
        """The entry at `path` as `who` may learn of it: search permission on every ancestor
        (API.md §7), which come with the entry in one query. NotFound, or PermissionDenied
        where the caller may know of the entry but not reach it."""
        inode, _ = await self.reach(who, path)
        return inode

    async def reach(self, who: Principal, path: str) -> tuple[Inode, dict[str, Inode]]:
        """`stat`, with everything the lookup found (the ancestors, by path)."""
        found = await self._get_many(ancestors(path) + [path])
        return self.rules.reach_existing(who, path, found), found

    def check_read(self, who: Principal, inode: Inode) -> None:
        """PermissionDenied unless `who` may read the file (or list the directory)."""
        if not self.rules.may_read(who, inode):
            raise errors.PermissionDenied()

    async def _get_many(self, paths: list[str]) -> dict[str, Inode]:
        return await self._metadata(self.store.get_many(paths))

    async def _get(self, path: str) -> Inode | None:
        return await self._metadata(self.store.get(path))

    async def _metadata(self, lookup):
        """A metadata lookup within `server.metadata_op_timeout` (503 when it runs over)."""
        if self.metadata_timeout is None:
            return await lookup
        try:
            return await asyncio.wait_for(lookup, self.metadata_timeout)
        except TimeoutError:
            raise errors.ServiceUnavailable("metadata store timed out") from None

    def owner_for(self, backend_name: str) -> str | None:
        """The instance a new entry on that backend belongs to: this one where the bytes live
        on its own disk (Capability.LOCAL), none where every instance reads them."""
        if Capability.LOCAL in self.backend_named(backend_name).capabilities:
            return self.instance_id
        return None

    def backend_for(self, inode: Inode):
        return self.backend_named(inode.backend)

    def _reader_for(self, inode: Inode):
        """Where a file's bytes are read: its backend, or, for a local-disk file another
        instance owns, that instance (API.md §13.2). A request forwarded here for an entry
        this instance does not own goes no further (domain/forwarding.py)."""
        return self._peer_for(inode) if self._held_elsewhere(inode) else self.backend_for(inode)

    def _held_elsewhere(self, inode: Inode) -> bool:
        """The entry's bytes are on another instance's disk."""
        return inode.instance_id not in (None, self.instance_id)

    def _peer_for(self, inode: Inode):
        """The instance that holds `inode` on its disk, to forward to (backends/peer.py)."""
        owner = inode.instance_id
        if forwarding.forwarded_by.get() is not None:
            raise errors.PeerUnavailable(
                f"{inode.path} was forwarded here by {forwarding.forwarded_by.get()}, but "
                f"the metadata says {owner} holds it: not forwarded again")
        peer = self.peer_readers.get(owner)
        if peer is None:
            raise errors.PeerUnavailable(f"{inode.path} is held by {owner}, and no endpoint "
                                         f"is configured for it")
        return peer

    async def open_file(self, who: Principal, inode: Inode, *, read: bool = True,
                        permission: bool = True):
        """A read handle (size, stamp, bytes) for a file: NotFound when nothing is at its
        name, StorageInconsistent when something other than a regular file is. `read=False`
        opens for a caller that only checks the bytes (HEAD needs no read permission, §7);
        `permission=False` for one that reads them on the entry's behalf (a move to another
        backend, which the right to move the entry allows)."""
        if read and permission:
            self.check_read(who, inode)
        backend = self._reader_for(inode)
        if self.lock_timeout is None or Capability.LOCAL in backend.capabilities:
            return await backend.open_read(inode.path, content=read)  # never waits long
        try:
            return await asyncio.wait_for(backend.open_read(inode.path, content=read),
                                          self.lock_timeout)
        except TimeoutError:
            if self._held_elsewhere(inode):
                raise errors.PeerTimedOut(f"{inode.instance_id} did not answer for "
                                          f"{inode.path} in time") from None
            raise errors.ServiceUnavailable("the backend did not open the file in time") from None

    async def open_current(self, who: Principal, inode: Inode, *, read: bool = True,
                           permission: bool = True):
        """Open a file's bytes with the metadata that describes them: (inode, handle); with
        `read=False` (HEAD) the bytes are only checked and the handle is None.

        Every write stamps its file with the mtime it records and, under the path's lock,
        marks the path busy, publishes the bytes and records them. So bytes newer than their
        record, while the path is busy, belong to the one write in progress, and the record it
        will write is known: the next version, with the file's size and stamp. They are served
        as that, so headers (size, ETag) always describe the bytes sent. Anything else that
        disagrees with the record (not a regular file, another size, newer bytes with no write
        in flight, no bytes) is looked at again once whatever changes the path (a move, a
        delete, a write) is done; if the record still says otherwise, the bytes are not the
        file's: StorageInconsistent, a 500, never a 2xx that cannot be honoured — or, for no
        bytes at all, BytesMissing (API.md §9.1: 404), logged all the same.
        """
        busy = self.store.busy
        loop = asyncio.get_running_loop()
        deadline = loop.time() + MOVE_WAIT
        if read:
            self.observer.file_operation("read", inode.backend)
        while True:
            newer = False
            started = time.perf_counter()
            try:
                handle = await self.open_file(who, inode, read=read, permission=permission)
            except (errors.NotFound, errors.StorageInconsistent) as exc:
                problem = exc
            else:
                self.observer.backend_operation(inode.backend, "read",
                                                time.perf_counter() - started)
                on_disk = handle.mtime_ns
                current = None
                if handle.size == inode.size and (on_disk is None or on_disk <= inode.mtime_ns):
                    current = inode  # (bytes without a stamp: their size is all they tell)
                elif on_disk is not None and on_disk > inode.mtime_ns:
                    newer = True
                    if busy(inode.path):
                        current = msgspec.structs.replace(inode, size=handle.size,
                                                          mtime_ns=on_disk,
                                                          version=inode.version + 1)
                if current is not None:
                    if read:
                        return current, handle
                    handle.close()
                    return current, None
                handle.close()
                problem = errors.StorageInconsistent(
                    f"{inode.path}: {handle.size} bytes on disk, {'newer than ' if newer else ''}"
                    f"the {inode.size} bytes the metadata records")
            # A move or delete may have taken the bytes away, a write be between publishing and
            # recording: the entry as it stands once that is done (NotFound when it is gone).
            fresh = await self._after_move(inode, deadline)
            if fresh != inode and loop.time() < deadline:
                inode = fresh
                continue
            if isinstance(problem, errors.NotFound):
                problem = errors.BytesMissing(
                    f"{inode.path}: no bytes on disk for a file the metadata records")
            raise problem

    async def _after_move(self, inode: Inode, deadline: float) -> Inode:
        """The entry at `inode`'s path once no write, move or delete is changing it (waiting
        until `deadline` at most); NotFound when no file is there any more."""
        loop = asyncio.get_running_loop()
        while self.store.busy(inode.path) and loop.time() < deadline:
            await asyncio.sleep(0.002)
        fresh = await self._get(inode.path)
        if fresh is None or fresh.type != FILE:
            raise errors.NotFound()
        return fresh

    async def list_directory(self, who: Principal, directory: Inode) -> list[Inode]:
        self.check_read(who, directory)
        self.observer.file_operation("list", directory.backend)
        return await self.store.list_children(directory)

    async def list_recursive(self, who: Principal, directory: Inode, max_depth: int) -> list[Inode]:
        """API.md §9.7: each directory's children as one block, then its subdirectories' walks
        in order; directories deeper than `max_depth` are not listed. A subdirectory shows its
        children only where the caller may read it and search every directory on the way
        down to it (as `ls -R` skips what it may not open)."""
        self.check_read(who, directory)
        rules = self.rules
        if max_depth == 0:
            return await self.store.list_children(directory)
        children: dict[int, list[Inode]] = {}
        by_id = {directory.id: directory}
        for inode in await self.store.list_descendants(directory):
            children.setdefault(inode.parent_id, []).append(inode)
            by_id[inode.id] = inode
        for block in children.values():
            block.sort(key=_listing_key)
        items: list[Inode] = []
        stack = [(directory.id, 0)]
        while stack:
            dir_id, level = stack.pop()
            block = children.get(dir_id, ())
            items.extend(block)
            if level < max_depth:
                subdirs = [(entry.id, level + 1) for entry in block if entry.type == DIRECTORY
                           and rules.may_read(who, entry)]
                if subdirs and not rules.may_descend(who, by_id[dir_id]):
                    subdirs = []
                stack.extend(reversed(subdirs))
        return items

    # -- the read view: plain reads answered without a task (synchronous, never waiting) -----

    def read_view(self, prepare, keep_limit: int, budget: int = READ_VIEW_BUDGET):
        """The one native object the request head asks of a plain read (callfs._native.
        readview.ReadView): an entry the metadata cache holds exactly, a file of this instance
        the principal may read and whose bytes are the recorded version, and the answer
        `prepare(inode, content)` made for that version (`content` given up to `keep_limit`
        bytes), kept within `budget` bytes."""
        return self.store.read_view(unix=self.rules.unix, on_disk=self.version_on_disk,
                                    prepare=prepare, instance_id=self.instance_id,
                                    keep_limit=keep_limit, budget=budget)

    def version_on_disk(self, inode: Inode, limit: int) -> tuple[bool, bytes | None]:
        """Whether the bytes at a file's path are the version `inode` records (a regular file
        of its size and stamp), and, when it has at most `limit` bytes, its content."""
        backend = self.backends.get(inode.backend)
        if backend is None or _NEEDS_LOCAL not in backend.capabilities:
            return False, None
        try:
            if inode.size <= limit:
                content = backend.read_version(inode.path, inode.size, inode.mtime_ns)
                return content is not None, content
            return backend.disk_version(inode.path) == (inode.size, inode.mtime_ns), None
        except (OSError, errors.CallFSError):
            return False, None

    # -- creation ----------------------------------------------------------------------------

    def ancestor_rows(self, path: str, owner: str, stamp: int, backend: str,
                       group: str | None = None) -> list[NewInode]:
        return [NewInode(path=p, type=DIRECTORY, size=0, mode=self.dir_mode, owner=owner,
                         group=owner if group is None else group, mtime_ns=stamp, backend=backend,
                         instance_id=self.owner_for(backend))
                for p in ancestors(path)]

    async def check_create(self, who: Principal, path: str, wanted: str):
        """The checks of API.md §9.3/§9.4 that come before any byte is read, in their order
        (with §7's: search on the ancestors, write on an existing file, write and search on
        the parent of a new entry). Returns the existing entry (or None) and the anchor: the
        deepest existing ancestor's (id, path), which must not move while the entry is
        written below it."""
        rules = self.rules
        found = await self.store.get_many(ancestors(path) + [path])
        deepest, blocking_file = rules.reach_parent(who, path, found)
        anchor = None if deepest is None else (deepest.id, deepest.path)
        existing = found.get(path) if blocking_file is None else None
        if existing is not None and existing.type == FILE and not rules.may_write(who, existing):
            raise errors.PermissionDenied()
        if blocking_file is not None and not rules.may_write(who, blocking_file):
            raise errors.PermissionDenied()
        if existing is None and blocking_file is None and deepest is not None:
            rules.check_parent(who, path, found, deepest, self.dir_mode)
        if existing is not None and existing.instance_id not in (None, self.instance_id):
            raise CrossServerConflict(existing, wanted)
        if blocking_file is not None:
            raise errors.NotADirectory("a parent of the path is a file")
        return existing, anchor

    def new_attributes(self, who: Principal, mode: int | None, group: str | None,
                       wanted: str) -> tuple[int, str]:
        """The mode and group of an entry `who` creates: the defaults, or what it asked for
        (X-CallFS-Mode, X-CallFS-Group; the group must be one of its own)."""
        if mode is None:
            mode = self.dir_mode if wanted == DIRECTORY else self.file_mode
        return mode, self.rules.group_for_new(who, group)

    async def create_directory(self, who: Principal, path: str, mode: int | None = None,
                               group: str | None = None) -> bool:
        """POST with a trailing slash: True when created, False when it already existed."""
        mode, group = self.new_attributes(who, mode, group, DIRECTORY)
        self.observer.file_operation("mkdir", self.default_backend)
        existing, _ = await self.check_create(who, path, DIRECTORY)
        if existing is not None:
            return self._directory_exists(existing)
        async with self.locks.hold([dir_key(path)], self.lock_timeout):
            existing, anchor = await self.check_create(who, path, DIRECTORY)
            if existing is not None:
                return self._directory_exists(existing)
            backend_name = self.default_backend
            backend = self.backends[backend_name]
            stamp = now_ns()
            await backend.make_directory(path)
            entry = NewInode(path=path, type=DIRECTORY, size=0, mode=mode, owner=who.user,
                             group=group, mtime_ns=stamp, backend=backend_name,
                             instance_id=self.owner_for(backend_name))
            try:
                await self.store.create(self.ancestor_rows(path, who.user, stamp, backend_name),
                                        entry, anchor)
            except errors.AlreadyExists as exc:
                return self._directory_exists(exc.existing)
            return True

    @staticmethod
    def _directory_exists(existing: Inode) -> bool:
        if existing.type != DIRECTORY:
            raise errors.AlreadyExists("a file exists at this path")
        return False

    async def create_file(self, who: Principal, path: str, body, check: Check | None = None,
                          mode: int | None = None, group: str | None = None) -> None:
        """POST without a trailing slash: a new file; never overwrites. The body is staged
        with no lock held; whether the name is still free is decided when it publishes."""
        attributes = self.new_attributes(who, mode, group, FILE)
        existing, _ = await self.check_create(who, path, FILE)
        if existing is not None:
            raise errors.AlreadyExists()
        if check is not None:
            check(None)
        _check_announced_size(body)
        backend_name = self.default_backend
        self.observer.file_operation("create", backend_name)
        upload = await self.stage(self.backends[backend_name], path, body)
        try:
            async with self.locks.hold([file_key(path)], self.lock_timeout) as lease:
                existing, anchor = await self.check_create(who, path, FILE)
                if existing is not None:
                    raise errors.AlreadyExists()
                if check is not None:
                    check(None)
                await self._publish_new(who, path, upload, backend_name, lease, anchor,
                                        *attributes)
        finally:
            await upload.abort()  # nothing once the write ended; the staged bytes otherwise

    async def put_file(self, who: Principal, path: str, body, check: Check | None = None,
                       mode: int | None = None, group: str | None = None) -> bool:
        """PUT: create (True) or replace the content of an existing file (False).

        The body is staged with no lock held, so a slow client holds no other writer up; the
        path's lock is taken only to publish, where the entry is read again and the
        precondition decided against it: the last writer to publish wins. `mode` and `group`
        apply to a file it creates."""
        attributes = self.new_attributes(who, mode, group, FILE)
        existing, _ = await self.check_create(who, path, FILE)
        if existing is not None and existing.type == DIRECTORY:
            raise errors.IsADirectory()
        if check is not None:
            check(existing)
        _check_announced_size(body)
        backend_name = self.default_backend if existing is None else existing.backend
        self.observer.file_operation("create" if existing is None else "write", backend_name)
        upload = await self.stage(self.backend_named(backend_name), path, body)
        try:
            async with self.locks.hold([file_key(path)], self.lock_timeout) as lease:
                existing, anchor = await self.check_create(who, path, FILE)
                if existing is None:
                    if check is not None:
                        check(None)
                    await self._publish_new(who, path, upload, backend_name, lease, anchor,
                                            *attributes)
                    return True
                if existing.type == DIRECTORY:
                    raise errors.IsADirectory()
                if check is not None:
                    check(existing)
                if existing.backend != backend_name:
                    raise errors.WriteConflict("the file changed while it was written; try again")
                await self._publish_replace(existing, upload, lease)
                return False
        finally:
            await upload.abort()

    async def store_new(self, who: Principal, path: str, body, lease, anchor, mode: int,
                        group: str | None = None, owner: str | None = None,
                        backend_name: str | None = None) -> Inode:
        """Stage and publish a new file while the caller holds the path's lock (a copy), on
        `backend_name` (the default backend when None)."""
        backend_name = backend_name or self.default_backend
        upload = await self.stage(self.backend_named(backend_name), path, body)
        try:
            return await self._publish_new(who, path, upload, backend_name, lease, anchor,
                                           mode, group, owner)
        finally:
            await upload.abort()

    async def replace_content(self, existing: Inode, body, lease,
                              backend_name: str | None = None) -> Inode:
        """Stage and publish a file's new content while the caller holds its lock (a copy),
        on `backend_name` (the file's own backend when None): on another backend the bytes
        move there with it."""
        backend_name = backend_name or existing.backend
        upload = await self.stage(self.backend_named(backend_name), existing.path, body)
        try:
            if backend_name == existing.backend:
                return await self._publish_replace(existing, upload, lease)
            return await self.relocate(existing, existing.path, None, upload, backend_name,
                                       lease, now_ns())
        finally:
            await upload.abort()

    async def relocate(self, source: Inode, dst: str, existing: Inode | None, upload,
                       backend_name: str, lease, stamp: int,
                       attributes: Attributes | None = None) -> Inode:
        """Record a file whose bytes were staged on another backend (`upload`, written on
        `backend_name` for `dst`) as the entry `source` at `dst` — its own path, or one it
        moves to, replacing `existing` — under the caller's locks of both paths. The new
        bytes publish first, stamped `stamp`; the store's transaction then moves the record
        and takes the old bytes away (the source's, and the replaced file's where they were
        on a third backend); if it fails, both are put back."""
        replaced_here = existing is not None and existing.backend == backend_name
        if replaced_here:
            # Newer than the replaced version: a crash before the record lets recovery roll
            # the destination forward (an unstamped backend ignores it).
            stamp = max(stamp, existing.mtime_ns + 1)
        removals = [self.backend_for(source).begin_remove(source.path)]
        if existing is not None and not replaced_here:
            removals.append(self.backend_for(existing).begin_remove(dst))

        def publish() -> None:
            for removal in removals:
                removal.publish()

        content = Content(backend=backend_name, instance_id=self.owner_for(backend_name),
                          size=upload.size, mtime_ns=stamp, fence=lease.fence)
        rows = self.ancestor_rows(dst, source.owner, now_ns(), backend_name, group=source.group)
        with self.store.changing(list(dict.fromkeys([source.path, dst]))):
            await upload.commit(stamp, lease.check, new=not replaced_here)
            try:
                lease.check()
                moved = await self.store.move(source, dst, rows, existing, publish,
                                              attributes or None, content)
            except BaseException:
                for removal in removals:
                    await removal.undo()
                await upload.undo()
                raise
        try:
            for removal in removals:
                await removal.finish()
        finally:
            await upload.finish()
        return moved

    def backend_named(self, name: str):
        backend = self.backends.get(name)
        if backend is None:
            raise errors.InternalError(f"backend {name} is not configured")
        return backend

    async def _publish_new(self, who: Principal, path: str, upload, backend_name: str, lease,
                           anchor, mode: int, group: str | None = None,
                           owner: str | None = None) -> Inode:
        stamp = now_ns()
        entry = NewInode(path=path, type=FILE, size=upload.size, mode=mode,
                         owner=owner or who.user, group=group or who.user, mtime_ns=stamp,
                         backend=backend_name, instance_id=self.owner_for(backend_name),
                         fence=lease.fence)
        ancestors = self.ancestor_rows(path, who.user, stamp, backend_name)
        # Busy from before the bytes are published: a reader meeting them takes them for the
        # write in flight that they are, instead of waiting for their record.
        with self.store.changing([path]):
            await upload.commit(stamp, lease.check, new=True)
            return await self._record(upload, lease, self.store.create, ancestors, entry,
                                      anchor)

    async def _publish_replace(self, existing: Inode, upload, lease) -> Inode:
        stamp = now_ns()
        try:
            with self.store.changing([existing.path]):  # as in _publish_new
                await upload.commit(stamp, lease.check)
                return await self._record(upload, lease, self.store.update_content, existing,
                                          upload.size, stamp, lease.fence)
        except errors.NotFound:
            # Deleted meanwhile under another name (a directory above moved): retryable.
            raise errors.WriteConflict("the file was deleted while it was written; "
                                       "try again") from None

    @staticmethod
    async def _record(upload, lease, record, *args):
        """Bytes are published; record them — unless the lock was lost meanwhile (a lease that
        expired while the store was slow). The store refuses the record, too, when a newer
        writer (a larger fencing number, a newer version) got there first. If recording fails,
        the name gets its old content back, unless a newer writer has published since; if the
        process dies first, the upload's intent lets recovery finish the job."""
        try:
            lease.check()
            inode = await record(*args)
        except BaseException:
            await upload.undo()
            raise
        await upload.finish()
        return inode

    async def stage(self, backend, path: str, body):
        """Stream the body into a staged object and make it durable; no lock is needed (none
        is held by a caller that is not copying). Returns the upload, to `commit` under the
        path's lock, then `finish` or `undo` once recorded (or `abort`)."""
        started = time.perf_counter()
        upload = backend.begin_write(path)
        try:
            if body.expected is not None:
                # A body of announced length (checked against MAX_UPLOAD already) may go
                # straight into the staged file.
                await upload.fill(body)
            while True:
                chunk = await body.read()
                if not chunk:
                    break
                await upload.write(chunk)
                if upload.size > MAX_UPLOAD:
                    raise errors.PayloadTooLarge()
            await upload.seal()
        except BaseException:
            await upload.abort()
            raise
        self.observer.backend_operation(backend.name, "write", time.perf_counter() - started)
        return upload

    # -- rename, move --------------------------------------------------------------------------

    async def move(self, who: Principal, path: str, request, check: Check | None = None) -> Inode:
        """PATCH (API.md §9.6): rename or move an entry, a directory with its subtree."""
        return await moves.move(self, who, path, request, check)

    async def copy(self, who: Principal, path: str, request, check: Check | None = None) -> bool:
        """PATCH with "copy": true: True when the destination was created."""
        return await moves.copy(self, who, path, request, check)

    # -- deletion ----------------------------------------------------------------------------

    async def delete(self, who: Principal, path: str, check: Check | None = None) -> None:
        inode = await self._removable(who, path)
        if check is not None:
            check(inode)
        if inode.type == FILE and self._held_elsewhere(inode):
            # Its bytes are on another instance's disk: that instance deletes the file (its
            # bytes and its record), once this one has allowed it (API.md §13.2).
            await self._peer_for(inode).delete(path)
            return
        key = dir_key(path) if inode.type == DIRECTORY else file_key(path)
        async with self.locks.hold([key], self.lock_timeout):
            inode = await self._removable(who, path)
            if check is not None:
                check(inode)
            backend = self.backend_for(inode)
            self.observer.file_operation("delete", inode.backend)
            if inode.type == FILE:
                # The bytes go inside the store's transaction, so no move comes in between.
                removal = backend.begin_remove(path)
                try:
                    await self.store.delete(inode, removal.publish)
                except BaseException:
                    await removal.undo()
                    raise
                await removal.finish()
                return
            await self.store.delete(inode)
            try:
                if not await backend.remove(path, inode.type == DIRECTORY):
                    await self._remove_moved(inode)
            except OSError as exc:
                # Metadata is the truth: the entry is gone; leftover bytes are only untidy.
                log.warning("bytes of a deleted entry remain: %s", exc)

    async def _remove_moved(self, inode: Inode) -> None:
        """The bytes of a deleted (empty) directory were not at its path: a directory above
        it moved after the entry's row was deleted (the move never saw the row). Follow the
        parent, while a move is in flight."""
        backend = self.backend_for(inode)
        deadline = asyncio.get_running_loop().time() + MOVE_WAIT
        while asyncio.get_running_loop().time() < deadline:
            # Asked before the path is read: a move that was not in flight then has committed,
            # and the path read next is its result.
            moving = self.store.busy(inode.path)
            parent = await self.store.path_of(inode.parent_id)
            if parent is None:
                return
            target = ("" if parent == ROOT else parent) + "/" + inode.name
            if target != inode.path and await backend.remove(target, inode.type == DIRECTORY):
                return
            if not moving:
                return
            await asyncio.sleep(0.005)

    async def _removable(self, who: Principal, path: str) -> Inode:
        """The entry at `path`, when `who` may delete it (the root never goes)."""
        inode, found = await self.reach(who, path)
        parent = found.get(split_parent(path)[0]) if path != ROOT else None
        if not self.rules.may_remove(who, parent, inode):
            raise errors.PermissionDenied()
        return inode

    # -- attributes --------------------------------------------------------------------------

    async def set_attributes(self, who: Principal, path: str, attributes: Attributes,
                             check: Check | None = None) -> Inode:
        """chmod, chgrp, chown (PATCH with attributes only, API.md §9.6): the changed entry."""
        inode = await self.stat(who, path)
        self.rules.check_attributes(who, inode, attributes)
        if check is not None:
            check(inode)
        key = dir_key(path) if inode.type == DIRECTORY else file_key(path)
        async with self.locks.hold([key], self.lock_timeout):
            inode = await self.stat(who, path)
            self.rules.check_attributes(who, inode, attributes)
            if check is not None:
                check(inode)
            return await self.store.set_attributes(inode, attributes)


async def recover(engine: "Engine", *, min_age: float = 0.0, started_ns: int = 0,
                  lock_timeout: float = 0.5) -> int:
    """Finish or take back the writes a crash interrupted; returns how many leftovers it
    handled. Each staged file is the intent record of one write (its name tells the entry):

    - not published, or published as a new file the metadata never recorded: taken back;
    - published over an existing file but not recorded: rolled forward (the bytes on disk are
      newer than the record, by their stamp), so the record describes the bytes again;
    - recorded: only the intent remains, and goes;
    - set aside by a deletion that never committed (the metadata still holds the file and
      its name is free): put back.

    A write still staging holds no lock but its staged file's flock, so the backend never
    offers it (`leftovers`). Each entry is handled under its lock, so a write publishing
    (which holds it) is skipped, as is one whose lock a dead process still holds (until the
    lock expires; a later pass finishes it). While serving, only leftovers `min_age` old or
    older than the server (`started_ns`) are handled: a write publishing holds its lock under
    the path it was sent to, which a move of a directory above may have changed since.
    A file of a user's that merely has such a name is an entry of the namespace, and stays.
    """
    handled = await moves.recover_moves(engine, lock_timeout)
    for name, backend in engine.backends.items():
        for item in await backend.leftovers(min_age, started_ns):
            if await engine.store.get(item.tmp) is not None:
                continue
            deleted = False
            if item.target is None:
                item.target = await _deleted_entry(engine, name, backend, item)
                if item.target is None:
                    await backend.remove_temporary(item.tmp)
                    engine.observer.recovered("taken_back")
                    handled += 1
                    continue
                deleted = True
            try:
                async with engine.locks.hold([file_key(item.target)], lock_timeout) as lease:
                    await _recover_one(engine, name, backend, item, lease.fence, deleted)
            except errors.LockTimeout:
                continue  # its write is still running
            handled += 1
    return handled


async def _deleted_entry(engine: "Engine", name: str, backend, item) -> str | None:
    """The file a deletion set `item` aside from, when the deletion never committed (the
    metadata still holds the file, and its name on disk is free); None otherwise."""
    parent = await engine.store.get(item.parent)
    if parent is None or parent.type != DIRECTORY:
        return None
    for child in await engine.store.list_children(parent):
        if (child.type == FILE and child.backend == name and item.written_for(child.name)
                and await backend.version(child.path) is None):
            return child.path
    return None


async def _recover_one(engine: "Engine", name: str, backend, item, fence: int,
                       deleted: bool = False) -> None:
    record = await engine.store.get(item.target)
    if deleted:
        # Still recorded and the name still free: the deletion never committed.
        if (record is not None and record.type == FILE and record.backend == name
                and await backend.version(item.target) is None
                and await backend.restore_removed(item.tmp, item.target)):
            log.info("put back the bytes of a deletion that did not commit",
                     extra={"path": item.target})
            engine.observer.recovered("restored")
        else:
            await backend.remove_temporary(item.tmp)
            engine.observer.recovered("intent_removed")
        return
    disk = await backend.version(item.target)
    if record is None or record.type != FILE or record.backend != name:
        if disk is not None and (item.same or record is None):
            await backend.remove(item.target, False)  # a new file that was never recorded
        engine.observer.recovered("taken_back")
    elif disk is not None and not item.same and disk[1] is not None \
            and disk[1] > record.mtime_ns:
        await engine.store.update_content(record, disk[0], disk[1], fence)
        log.info("recovered an interrupted write", extra={"path": item.target})
        engine.observer.recovered("rolled_forward")
    else:
        engine.observer.recovered("intent_removed")
    await backend.remove_temporary(item.tmp)


def _listing_key(inode: Inode):
    return (inode.type != DIRECTORY, inode.name)


def _check_announced_size(body) -> None:
    expected = body.expected
    if expected is not None and expected > MAX_UPLOAD:
        raise errors.PayloadTooLarge()
