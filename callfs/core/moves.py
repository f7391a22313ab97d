"""Rename and move (API.md §9.6): the checks in the contract's order, the locks, and the one
transaction that moves an entry — a whole subtree for a directory — with its bytes.

Order: bytes first (one rename(2) inside the metadata transaction, undone if the commit
fails), metadata second, under the locks of source and destination taken in one global order
(so two opposite moves never wait on each other). An intent record lets recovery finish or
undo a move a crash interrupted.
"""
import time
from dataclasses import dataclass

from callfs._native.pathnorm import ancestors, split_parent
from callfs.domain import errors
from callfs.domain.model import DIRECTORY, FILE, ROOT, Attributes, Inode, NewInode, now_ns
from callfs.locks.base import dir_key, file_key


@dataclass
class MoveRequest:
    """A PATCH body, parsed and normalised by the API layer (§9.6)."""

    destination: str
    overwrite: bool = False
    create_parents: bool = False
    backend: str | None = None
    instance: str | None = None
    copy: bool = False
    attributes: Attributes = Attributes()  # chmod, chgrp, chown of the destination


PER_KEY_WAIT = 0.002  # seconds a lock acquisition may take per key beyond file_op_timeout


def _lock_wait(engine, keys: list[str]) -> float | None:
    """How long a many-key acquisition may take: `server.file_op_timeout`, plus a little per
    key, since taking each key costs a round trip to the lock manager even when it is free."""
    if engine.lock_timeout is None:
        return None
    return engine.lock_timeout + PER_KEY_WAIT * len(keys)


def lock_keys(*entries: tuple[str, str]) -> list[str]:
    """(path, type) -> the lock key a writer of that entry takes."""
    return [dir_key(path) if kind == DIRECTORY else file_key(path) for path, kind in entries]


class Planner:
    """The checks of §9.6 after the body's own, in the table's order: what the move will do,
    or the error it answers. Run before the locks and again under them."""

    def __init__(self, engine):
        self.engine = engine

    async def plan(self, who, src: str, request: MoveRequest, check=None):
        engine = self.engine
        rules = engine.rules
        dst = request.destination
        # Both paths with all their ancestors, in one query.
        found = await engine.store.get_many(list(dict.fromkeys(
            ancestors(src) + [src] + ancestors(dst) + [dst])))
        source = rules.reach_existing(who, src, found)
        if request.copy:
            allowed = rules.may_read(who, source)
        elif src == ROOT:
            allowed = who.admin  # and then refused as the root (below)
        else:
            allowed = rules.may_remove(who, found.get(split_parent(src)[0]), source)
        if not allowed:
            raise errors.PermissionDenied()
        deepest, blocking = rules.reach_parent(who, dst, found)
        # (At its own path, a file moving to another backend replaces nothing.)
        existing = found.get(dst) if blocking is None and dst != src else None
        dst_parent = found.get(split_parent(dst)[0]) if dst != ROOT else None
        if existing is not None and existing.type == FILE and not (
                rules.may_write(who, existing) if request.copy or not rules.unix
                else rules.may_remove(who, dst_parent, existing)):
            raise errors.PermissionDenied()
        if existing is not None and existing.type == DIRECTORY and request.overwrite \
                and dst != ROOT and not rules.may_remove(who, dst_parent, existing):
            raise errors.PermissionDenied()  # replacing a directory deletes it
        if blocking is not None and not rules.may_write(who, blocking):
            raise errors.PermissionDenied()
        if existing is None and blocking is None and deepest is not None \
                and not rules.may_create_in(who, deepest):
            raise errors.PermissionDenied()
        if request.attributes:
            # Checked as the destination will be: the source itself, or a copy of the caller's.
            target = source if not request.copy else _as_copy(source, who)
            rules.check_attributes(who, target, request.attributes)
        if src == ROOT or dst == ROOT:
            raise errors.BadRequest("cannot rename or move the root directory")
        relocating = self._relocating(source, request)
        if dst == src and not relocating:
            raise errors.BadRequest("destination is the same as the source")
        if dst.startswith(src + "/"):
            raise errors.BadRequest("cannot move a path into itself")
        self._check_known(request)
        parent, _ = split_parent(dst)
        if blocking is None and parent not in found and not request.create_parents:
            raise errors.BadRequest(f'destination parent "{parent}" does not exist')
        if blocking is not None:
            raise errors.NotADirectory("a parent of the destination is a file")
        if existing is not None:
            if not request.overwrite:
                raise errors.AlreadyExists()
            if existing.type != source.type:
                raise errors.AlreadyExists("the destination is of another type")
            if existing.type == DIRECTORY and await engine.store.list_children(existing):
                raise errors.DirectoryNotEmpty()
            if existing.instance_id not in (None, engine.instance_id):
                raise errors.AlreadyExists("the destination is held by another instance")
        if relocating:
            if source.type == DIRECTORY:
                raise errors.BadRequest("a directory cannot move to another backend or "
                                        "instance; move the files in it")
            if request.instance not in (None, engine.instance_id):
                raise errors.BadRequest("moving bytes to another instance is not available "
                                        "on this node")
        if source.instance_id not in (None, engine.instance_id):
            raise errors.InternalError("the source is held by another instance")
        if check is not None:
            check(source)
        return source, existing

    def _relocating(self, source: Inode, request: MoveRequest) -> bool:
        """The request asks for the bytes on another backend or instance than the source's."""
        return ((request.backend is not None and request.backend != source.backend)
                or (request.instance is not None
                    and request.instance != (source.instance_id or self.engine.instance_id)))

    def _check_known(self, request: MoveRequest) -> None:
        engine = self.engine
        if request.backend is not None:
            if request.backend not in ("localfs", "s3", "erasure") \
                    or request.backend not in engine.backends:
                raise errors.BadRequest(f'unknown backend "{request.backend}"')
        if request.instance is not None and request.instance != engine.instance_id \
                and request.instance not in engine.peers:
            raise errors.BadRequest(f'unknown instance "{request.instance}"')


def _as_copy(source: Inode, who) -> Inode:
    """What a copy of `source` made by `who` starts as: its own, in its own group."""
    return Inode(id=0, path=source.path, parent_id=None, name=source.name, type=source.type,
                 size=source.size, mode=source.mode, owner=who.user, group=who.user,
                 mtime_ns=0, ctime_ns=0, backend=source.backend, instance_id=None, version=0)


def _target(source: Inode, request: MoveRequest) -> str:
    """The backend the destination's bytes go to: the one asked for, else the source's."""
    return request.backend or source.backend


def _relocation_keys(src: str, dst: str) -> list[str]:
    """The locks of a file moving to another backend: both paths, and every directory above
    the destination, whose bytes (on a local disk) must not move away between the new bytes'
    publishing and their record."""
    return list(dict.fromkeys(lock_keys((src, FILE), (dst, FILE))
                              + [dir_key(path) for path in ancestors(dst) if path != ROOT]))


async def move(engine, who, src: str, request: MoveRequest, check=None) -> Inode:
    """Rename or move `src` to `request.destination`; the moved entry."""
    planner = Planner(engine)
    source, existing = await planner.plan(who, src, request, check)
    if source.type == FILE and _target(source, request) != source.backend:
        return await _relocate(engine, planner, who, src, request, source, check)
    dst = request.destination
    keys = lock_keys((src, source.type), (dst, source.type))
    if source.type == DIRECTORY:
        # Every entry of the subtree too: a writer of an entry (by its old name) finishes
        # before the move, and one that comes later finds the entry gone from that name.
        keys += lock_keys(*((e.path, e.type) for e in await engine.store.list_descendants(source)))
    engine.observer.file_operation("move", source.backend)
    async with engine.locks.hold(keys, _lock_wait(engine, keys)):
        source, existing = await planner.plan(who, src, request, check)
        backend = engine.backend_for(source)
        started = time.perf_counter()
        # A replaced file on another backend than the source's: its bytes go in the same
        # transaction (the move itself replaces only what is on its own backend).
        elsewhere = (engine.backend_for(existing).begin_remove(dst)
                     if existing is not None and existing.type == FILE
                     and existing.backend != source.backend else None)
        bytes_move = backend.begin_move(src, dst, source.id,
                                        existing is not None and elsewhere is None)

        def publish() -> None:
            if elsewhere is not None:
                elsewhere.publish()
            bytes_move.publish()

        rows = engine.ancestor_rows(dst, source.owner, now_ns(), source.backend,
                                     group=source.group)
        try:
            await bytes_move.prepare()
            moved = await engine.store.move(source, dst, rows, existing, publish,
                                            request.attributes or None)
        except BaseException:
            if elsewhere is not None:
                await elsewhere.undo()
            await bytes_move.undo()
            raise
        if elsewhere is not None:
            await elsewhere.finish()
        await bytes_move.finish()
        engine.observer.backend_operation(source.backend, "move", time.perf_counter() - started)
        return moved


async def _relocate(engine, planner: Planner, who, src: str, request: MoveRequest,
                    source: Inode, check=None) -> Inode:
    """Move a file, and its bytes to another backend: they are copied there first, with no
    lock held; then, under the locks, if the file is still that version, the copy publishes
    and one transaction records it and takes the old bytes away (Engine.relocate). A write
    that came in between wins: the move answers a conflict, and nothing moved."""
    dst = request.destination
    target = _target(source, request)
    engine.observer.file_operation("move", source.backend)
    started = time.perf_counter()
    source, handle = await engine.open_current(who, source, permission=False)
    try:
        upload = await engine.stage(engine.backend_named(target), dst,
                                    engine.backend_for(source).copy_source(handle))
    finally:
        handle.close()
    try:
        keys = _relocation_keys(src, dst)
        async with engine.locks.hold(keys, _lock_wait(engine, keys)) as lease:
            current, existing = await planner.plan(who, src, request, check)
            if current.id != source.id or current.version != source.version \
                    or _target(current, request) != target:
                raise errors.WriteConflict("the file changed while its bytes moved; "
                                           "try again")
            moved = await engine.relocate(current, dst, existing, upload, target, lease,
                                          current.mtime_ns, request.attributes)
    finally:
        await upload.abort()
    engine.observer.backend_operation(target, "move", time.perf_counter() - started)
    return moved


async def copy(engine, who, src: str, request: MoveRequest, check=None) -> bool:
    """Copy `src` (a directory with its subtree) to `request.destination`: True when created,
    False when an existing file was replaced. The bytes never leave the kernel."""
    planner = Planner(engine)
    source, existing = await planner.plan(who, src, request, check)
    engine.observer.file_operation("copy", source.backend)
    dst = request.destination
    attributes = request.attributes
    if source.type == FILE:
        async with engine.locks.hold([file_key(dst)], engine.lock_timeout) as lease:
            source, existing = await planner.plan(who, src, request, check)
            copied = await _copy_file(engine, who, source, dst, existing, lease, attributes,
                                      _target(source, request))
            if existing is not None and attributes:
                await engine.store.set_attributes(copied, attributes)
            return existing is None
    entries = sorted(await engine.store.list_descendants(source), key=lambda e: e.path)
    rules = engine.rules
    directories = {source.id: source}
    directories.update((e.id, e) for e in entries if e.type == DIRECTORY)
    if not all(rules.may_read(who, entry) and rules.may_descend(who, directories[entry.parent_id])
               for entry in entries):
        raise errors.PermissionDenied()  # before anything is written
    targets = [(dst + entry.path[len(src):], entry) for entry in entries]
    # Every lock of the copy in one acquisition (one global order): the new tree's root and
    # each entry it will hold. Entries the source gains meanwhile are not copied.
    keys = [dir_key(dst)] + lock_keys(*((target, entry.type) for target, entry in targets))
    async with engine.locks.hold(keys, _lock_wait(engine, keys)) as lease:
        source, existing = await planner.plan(who, src, request, check)
        if existing is not None:
            await engine.store.delete(existing)  # an empty directory (checked by the plan)
        created: list[Inode] = []
        try:
            created.append(await _copy_directory(engine, who, source, dst, attributes))
            now = {e.path: e for e in await engine.store.list_descendants(source)}
            for target, entry in targets:
                current = now.get(entry.path)
                if current is None or current.type != entry.type:
                    continue  # gone (or replaced) since the listing
                if current.type == DIRECTORY:
                    created.append(await _copy_directory(engine, who, current, target))
                else:
                    created.append(await _copy_file(engine, who, current, target, None, lease))
        except BaseException:
            await _remove_created(engine, created)
            if existing is not None:
                await _restore_directory(engine, existing)
            raise
    return True


async def _copy_file(engine, who, source: Inode, dst: str, existing: Inode | None,
                     lease, attributes: Attributes = Attributes(),
                     backend_name: str | None = None) -> Inode:
    """Copy a file's bytes to `dst`, on `backend_name` (the source's when None)."""
    backend_name = backend_name or source.backend
    found, anchor = await engine.check_create(who, dst, FILE)
    if (found is None) != (existing is None) or (found and found.id != existing.id):
        raise errors.AlreadyExists()  # the destination changed since the plan
    source, handle = await engine.open_current(who, source)
    try:
        body = engine.backend_for(source).copy_source(handle)
        if existing is not None:
            return await engine.replace_content(existing, body, lease, backend_name)
        mode = source.mode if attributes.mode is None else attributes.mode
        return await engine.store_new(who, dst, body, lease, anchor, mode, attributes.group,
                                      attributes.owner, backend_name)
    finally:
        handle.close()


async def _copy_directory(engine, who, source: Inode, dst: str,
                          attributes: Attributes = Attributes()) -> Inode:
    backend_name = source.backend  # (a directory never changes backend: §9.6)
    await engine.backends[backend_name].make_directory(dst)
    stamp = now_ns()
    entry = NewInode(path=dst, type=DIRECTORY, size=0,
                     mode=source.mode if attributes.mode is None else attributes.mode,
                     owner=attributes.owner or who.user, group=attributes.group or who.user,
                     mtime_ns=stamp, backend=backend_name,
                     instance_id=engine.owner_for(backend_name))
    return await engine.store.create(engine.ancestor_rows(dst, who.user, stamp, backend_name),
                                     entry)


async def _restore_directory(engine, directory: Inode) -> None:
    """Put back the empty directory a failed copy was to replace."""
    await engine.backend_for(directory).make_directory(directory.path)
    entry = NewInode(path=directory.path, type=DIRECTORY, size=0, mode=directory.mode,
                     owner=directory.owner, group=directory.group, mtime_ns=directory.mtime_ns,
                     backend=directory.backend, instance_id=directory.instance_id)
    try:
        await engine.store.create(engine.ancestor_rows(directory.path, directory.owner,
                                                        now_ns(), directory.backend), entry)
    except errors.CallFSError:
        pass  # taken meanwhile, or the store is away: the copy's own error is what matters


async def _remove_created(engine, created: list[Inode]) -> None:
    """Take back a directory copy that failed part-way: what it created goes, deepest first."""
    for inode in sorted(created, key=lambda e: e.path, reverse=True):
        try:
            await engine.store.delete(inode)
            await engine.backend_for(inode).remove(inode.path, inode.type == DIRECTORY)
        except (errors.CallFSError, OSError):
            continue


def _valid_intent(record) -> bool:
    kinds = {"src": str, "dst": str, "id": int, "replace": bool, "ino": int, "dev": int}
    return isinstance(record, dict) and all(
        isinstance(record.get(key), kind) for key, kind in kinds.items()) and \
        record["src"].startswith("/") and record["dst"].startswith("/")


async def recover_moves(engine, lock_timeout: float) -> int:
    """Finish or undo the moves a crash interrupted (see backends/localmove.py)."""
    handled = 0
    for backend in engine.backends.values():
        for name, record in await backend.move_intents():
            if await engine.store.get("/" + name) is not None:
                continue  # a file of the namespace that merely has such a name
            if not _valid_intent(record):
                await backend.drop_move_intent(name)  # cut short while written: nothing moved yet
                continue
            # Both kinds of key for both paths: the record does not say which kind moved.
            keys = [make(path) for path in (record["src"], record["dst"])
                    for make in (file_key, dir_key)]
            try:
                async with engine.locks.hold(keys, lock_timeout):
                    row = await engine.store.get(record["dst"])
                    committed = row is not None and row.id == record["id"]
                    await backend.recover_move(name, record, committed)
                    engine.observer.recovered("move_finished")
            except errors.LockTimeout:
                continue  # the mover still runs, or a dead one's locks have not expired
            handled += 1
    return handled
