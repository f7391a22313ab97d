"""A per-process cache of point lookups in front of a metadata store, exact across processes.

Every write through this wrapper announces itself in a shared GenerationTable (bumped before
the store commits and again after); a cached entry carries the generation read *before* its
lookup and is used only while that generation is unchanged. So a write by any worker, or by
any process serving the same store on this host, invalidates every copy at once, and an
entry read while a write was in flight is never kept. A process killed mid-write leaves its
slot marked busy: those paths are read through from then on, never served stale.

Point lookups (`get`, `get_many`) are cached; listings always read the store. Reads under a
path's lock may use the cache too: an entry is exact until a write begins, and that write
needs the same lock. The engine's read view (`read_view`) answers from the same entries by the
same rule (GenerationTable.unchanged).
"""
import contextlib
import os

from callfs._native.generations import GenerationTable, table_bytes
from callfs._native.readview import CacheEntry, ReadView  # noqa: F401 (CacheEntry: re-exported)
from callfs.domain.model import DIRECTORY

DEFAULT_SLOTS = 1 << 16
DEFAULT_CAPACITY = 100_000


def open_table(path: str, slots: int = DEFAULT_SLOTS) -> GenerationTable:
    """The generation table kept in the file `path`, created (zero-filled) when missing."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size < table_bytes(slots):
            os.ftruncate(fd, table_bytes(slots))
        return GenerationTable(fd, slots)
    finally:
        os.close(fd)  # the mapping stays valid without the descriptor


class CachedStore:
    def __init__(self, store, table: GenerationTable, capacity: int = DEFAULT_CAPACITY):
        self.store = store
        self.table = table
        self.capacity = capacity
        self.entries: dict[str, CacheEntry] = {}
        self.backend_name = store.backend_name

    def __getattr__(self, name):
        # open, close and anything else that is not a namespace read or write.
        return getattr(self.store, name)

    # -- reads ---------------------------------------------------------------------------------

    def lookup(self, path: str) -> CacheEntry | None:
        """A cached entry that is still exact, or None (without touching the store)."""
        entry = self.entries.get(path)
        if entry is not None and self.table.unchanged(path, entry.stamp):
            return entry
        return None

    def read_view(self, **policy) -> ReadView:
        """A native view over these entries, by their freshness rule, for the engine's read
        policy (the keyword arguments of ReadView but `entries` and `table`)."""
        return ReadView(entries=self.entries, table=self.table, **policy)

    def busy(self, path: str) -> bool:
        """A write or a move that may change `path` is in flight (in any process here)."""
        return self.table.stamp(path) < 0

    @contextlib.contextmanager
    def changing(self, paths):
        """`paths` are busy for every process here while the caller changes their bytes ahead
        of their record (the record itself announces itself too, inside)."""
        table = self.table
        for path in paths:
            table.begin(path)
        try:
            yield
        finally:
            for path in paths:
                table.end(path)
                self._drop(path)

    async def get(self, path: str):
        entry = self.lookup(path)
        if entry is not None:
            return entry.inode
        entry = await self.load(path)
        return entry.inode if isinstance(entry, CacheEntry) else entry

    async def load(self, path: str):
        """Read through: a fresh CacheEntry (kept when no write was in flight), or None."""
        stamp = self.table.stamp(path)
        return self._keep(path, await self.store.get(path), stamp)

    def _keep(self, path: str, inode, stamp: int):
        """Record what a read found (`stamp` taken before the read); the entry, or None."""
        self._drop(path)
        if inode is None:
            return None
        entry = CacheEntry(inode, stamp)
        if stamp >= 0:
            entries = self.entries
            if len(entries) >= self.capacity:
                self._evict(max(1, self.capacity // 8))
            entries[path] = entry
        return entry

    def _drop(self, path: str) -> None:
        self.entries.pop(path, None)

    def _evict(self, count: int) -> None:
        """Drop the oldest `count` entries (dicts keep insertion order)."""
        entries = self.entries
        for key in list(entries)[:count]:
            del entries[key]

    async def get_many(self, paths):
        """Cached entries where exact; one store query for the rest (which are then cached)."""
        found = {}
        missing = []
        for path in paths:
            entry = self.lookup(path)
            if entry is not None:
                found[path] = entry.inode
            else:
                missing.append(path)
        if missing:
            stamps = [self.table.stamp(path) for path in missing]
            fetched = await self.store.get_many(missing)
            for path, stamp in zip(missing, stamps):
                inode = fetched.get(path)
                self._keep(path, inode, stamp)
                if inode is not None:
                    found[path] = inode
        return found

    async def list_children(self, directory):
        return await self.store.list_children(directory)

    async def list_descendants(self, directory):
        return await self.store.list_descendants(directory)

    # -- writes --------------------------------------------------------------------------------

    async def create(self, ancestors, entry, anchor=None):
        paths = [item.path for item in ancestors]
        paths.append(entry.path)
        return await self._announced(paths, self.store.create(ancestors, entry, anchor))

    async def set_attributes(self, inode, attributes):
        """Only the entry's own path: whoever checks access below a directory reads the
        directory's entry too, by its own stamp."""
        return await self._announced([inode.path], self.store.set_attributes(inode, attributes))

    async def move(self, source, dest: str, ancestors, replace, publish, attributes=None,
                   content=None):
        """A file's move invalidates its two paths; a directory's, every entry (the whole
        cache of every process: moves of directories are rare, their subtrees maybe large)."""
        paths = [item.path for item in ancestors] + [source.path, dest]
        operation = self.store.move(source, dest, ancestors, replace, publish, attributes,
                                    content)
        if source.type != DIRECTORY:
            return await self._announced(paths, operation)
        self.table.begin_all()
        try:
            return await self._announced(paths, operation)
        finally:
            self.table.end_all()
            self.entries.clear()

    async def update_content(self, existing, size: int, mtime_ns: int, fence: int = 0):
        return await self._announced([existing.path],
                                     self.store.update_content(existing, size, mtime_ns, fence))

    async def delete(self, inode, publish=None):
        return await self._announced([inode.path], self.store.delete(inode, publish))

    async def _announced(self, paths, operation):
        with self.changing(paths):
            return await operation
