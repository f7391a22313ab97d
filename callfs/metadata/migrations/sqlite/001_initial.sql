-- The namespace, links and erasure tables (API.md Appendix A; shared with the reference layout).
CREATE TABLE IF NOT EXISTS inodes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    parent_id INTEGER REFERENCES inodes(id),
    name TEXT NOT NULL,
    path TEXT NOT NULL UNIQUE,
    type TEXT NOT NULL CHECK (type IN ('file', 'directory')),
    size INTEGER NOT NULL DEFAULT 0,
    mode TEXT NOT NULL,
    owner TEXT NOT NULL,
    atime TEXT NOT NULL,
    mtime TEXT NOT NULL,
    ctime TEXT NOT NULL,
    backend_type TEXT NOT NULL CHECK (backend_type IN ('localfs', 's3', 'erasure')),
    erasure_coded INTEGER NOT NULL DEFAULT 0,
    callfs_instance_id TEXT,
    symlink_target TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_inodes_parent_id ON inodes(parent_id);

CREATE TABLE IF NOT EXISTS single_use_links (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token TEXT NOT NULL UNIQUE,
    file_path TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'used', 'expired')),
    expires_at TEXT NOT NULL,
    used_at TEXT,
    used_by_ip TEXT,
    hmac_signature TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_links_expires_at ON single_use_links(expires_at);
