"""Plain-Python specification of callfs._native.readview: the engine's read view. The native
view must answer exactly like this (test_readview.py)."""

FILE = "file"


class ReadView:
    def __init__(self, *, entries, table, may_read, on_disk, prepare, instance_id, keep_limit,
                 budget):
        self.entries = entries
        self.table = table
        self.may_read = may_read
        self.on_disk = on_disk
        self.prepare = prepare
        self.instance_id = instance_id
        self.keep_limit = keep_limit
        self.budget = budget
        self.kept = {}  # path -> (stamp, value, cost, recheck), oldest first
        self.kept_bytes = 0

    def ready(self, principal, path):
        entry = self.entries.get(path)
        if entry is None or not self.table.unchanged(path, entry.stamp):
            return None  # not cached, or no longer exact: the cache's own rule
        inode = entry.inode
        if inode.type != FILE or inode.instance_id not in (None, self.instance_id):
            return None
        if not self.may_read(principal, inode):
            return None
        kept = self.kept.get(path)
        if kept is not None and kept[0] == entry.stamp:
            if kept[3] and not self.on_disk(inode, -1)[0]:
                return None  # an answer promising bytes only the disk holds: asked each time
            return kept[1]
        self._forget(path)
        matches, content = self.on_disk(inode, self.keep_limit)
        if not matches:
            return None
        value, cost = self.prepare(inode, content)
        if cost > self.budget:
            return value
        while self.kept and self.kept_bytes + cost > self.budget:
            self._forget(next(iter(self.kept)))
        self.kept[path] = (entry.stamp, value, cost, content is None)
        self.kept_bytes += cost
        return value

    def _forget(self, path):
        kept = self.kept.pop(path, None)
        if kept is not None:
            self.kept_bytes -= kept[2]

    def __len__(self):
        return len(self.kept)
