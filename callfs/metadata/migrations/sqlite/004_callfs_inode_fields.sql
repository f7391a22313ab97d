-- CallFS additions: the Unix group, a content version (ETags, fencing), the fencing number of the
-- last writer, and an index that serves recursive listings by path range.
ALTER TABLE inodes ADD COLUMN group_name TEXT;
ALTER TABLE inodes ADD COLUMN version INTEGER NOT NULL DEFAULT 1;
ALTER TABLE inodes ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
