CREATE TABLE IF NOT EXISTS erasure_profiles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inode_id INTEGER NOT NULL UNIQUE REFERENCES inodes(id) ON DELETE CASCADE,
    data_shards INTEGER NOT NULL,
    parity_shards INTEGER NOT NULL,
    shard_size INTEGER NOT NULL,
    original_size INTEGER NOT NULL,
    created_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS erasure_shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    inode_id INTEGER NOT NULL REFERENCES inodes(id) ON DELETE CASCADE,
    shard_index INTEGER NOT NULL,
    instance_id TEXT,
    endpoint TEXT,
    size INTEGER NOT NULL,
    checksum TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (inode_id, shard_index)
);
