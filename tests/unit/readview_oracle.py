"""Plain-Python specification of callfs._native.readview: the engine's read view. The native
view must answer exactly like this (test_readview.py)."""
import perm_oracle

FILE = "file"


def ancestors(path):
    parts = path.strip("/").split("/")
    return ["/"] + ["/" + "/".join(parts[:i]) for i in range(1, len(parts))] if path != "/" else []


class ReadView:
    def __init__(self, *, entries, table, unix, on_disk, prepare, instance_id, keep_limit,
                 budget):
        self.entries = entries
        self.table = table
        self.unix = unix
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
        if self.unix and not perm_oracle.is_admin(principal.user) \
                and not self._may_read(principal, path, inode):
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

    def _may_read(self, principal, path, inode):
        """Read on the file, search on every ancestor as cached exactly now."""
        user, groups = principal.user, principal.groups
        if not perm_oracle.allows(user, groups, inode, perm_oracle.READ):
            return False
        for parent in ancestors(path):
            entry = self.entries.get(parent)
            if entry is None or not self.table.unchanged(parent, entry.stamp):
                return False
            if entry.inode.type == FILE or not perm_oracle.allows(user, groups, entry.inode,
                                                                  perm_oracle.SEARCH):
                return False
        return True

    def _forget(self, path):
        kept = self.kept.pop(path, None)
        if kept is not None:
            self.kept_bytes -= kept[2]

    def __len__(self):
        return len(self.kept)
