-- The namespace and the single-use download links, in the reference layout (API.md Appendix A),
-- so that a database either server created can be served by the other.
CREATE TABLE IF NOT EXISTS inodes (
    id BIGSERIAL PRIMARY KEY,
    -- The reference removes a directory's rows through this cascade; CallFS deletes an entry
    -- only after it has checked, under a row lock, that no child points at it.
    parent_id BIGINT REFERENCES inodes(id) ON DELETE CASCADE,
    name VARCHAR(255) NOT NULL,
    path TEXT NOT NULL UNIQUE,
    type VARCHAR(20) NOT NULL CHECK (type IN ('file', 'directory')),
    size BIGINT NOT NULL DEFAULT 0,
    mode VARCHAR(10) NOT NULL DEFAULT '0644',
    owner TEXT NOT NULL DEFAULT '',
    atime TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    mtime TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    ctime TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    backend_type VARCHAR(50) NOT NULL CHECK (backend_type IN ('localfs', 's3')),
    callfs_instance_id VARCHAR(100),
    symlink_target TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_inodes_parent_id ON inodes (parent_id);
CREATE INDEX IF NOT EXISTS idx_inodes_callfs_instance_id ON inodes (callfs_instance_id);

CREATE TABLE IF NOT EXISTS single_use_links (
    id BIGSERIAL PRIMARY KEY,
    token VARCHAR(255) NOT NULL UNIQUE,
    file_path TEXT NOT NULL,
    status VARCHAR(20) NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'used', 'expired')),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ,
    used_by_ip INET,
    hmac_signature VARCHAR(512) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT CURRENT_TIMESTAMP
);
CREATE INDEX IF NOT EXISTS idx_single_use_links_expires_at ON single_use_links (expires_at);
CREATE INDEX IF NOT EXISTS idx_single_use_links_file_path ON single_use_links (file_path);

-- updated_at follows every UPDATE, whichever server writes the row.
CREATE OR REPLACE FUNCTION update_updated_at_column() RETURNS TRIGGER AS $$
BEGIN
    NEW.updated_at := CURRENT_TIMESTAMP;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS update_inodes_updated_at ON inodes;
CREATE TRIGGER update_inodes_updated_at BEFORE UPDATE ON inodes
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();

DROP TRIGGER IF EXISTS update_single_use_links_updated_at ON single_use_links;
CREATE TRIGGER update_single_use_links_updated_at BEFORE UPDATE ON single_use_links
    FOR EACH ROW EXECUTE FUNCTION update_updated_at_column();
