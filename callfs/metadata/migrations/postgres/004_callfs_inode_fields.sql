-- CallFS additions: the Unix group, a content version (ETags, fencing), the fencing number of the
-- last writer, the exact nanosecond times (TIMESTAMPTZ keeps microseconds; ETags and file stamps
-- need the nanoseconds), and an index in byte order for recursive listings by path range.
-- Every statement also applies to a database the reference created at version 3.
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS group_name TEXT;
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS version BIGINT NOT NULL DEFAULT 1;
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS fence BIGINT NOT NULL DEFAULT 0;
-- NULL where another server wrote the row; the store then reads mtime/ctime (microseconds).
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS mtime_ns BIGINT;
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS ctime_ns BIGINT;

ALTER TABLE inodes DROP CONSTRAINT IF EXISTS inodes_backend_type_check;
ALTER TABLE inodes ADD CONSTRAINT inodes_backend_type_check
    CHECK (backend_type IN ('localfs', 's3', 'erasure'));

-- Serves `path > $1 AND path < $2` compared bytewise, whatever the database's collation.
CREATE INDEX IF NOT EXISTS idx_inodes_path_bytes ON inodes (path COLLATE "C");

-- A row inserted with an explicit id (the reference's root row) leaves the sequence behind it:
-- move the sequence past the highest id, never backwards.
SELECT setval(pg_get_serial_sequence('inodes', 'id'), MAX(id)) FROM inodes
HAVING MAX(id) > COALESCE(
    pg_sequence_last_value(pg_get_serial_sequence('inodes', 'id')::regclass), 0);
