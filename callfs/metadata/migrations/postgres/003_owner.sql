-- Owners are CallFS user names, not Unix ids. Databases that the reference's first layout
-- created carry uid/gid columns: give them the owner column and drop the ids. A database created
-- by 001 above already has the final shape, and each statement is then a no-op.
ALTER TABLE inodes ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT '';
UPDATE inodes SET owner = 'root' WHERE path = '/' AND owner = '';
ALTER TABLE inodes DROP COLUMN IF EXISTS uid;
ALTER TABLE inodes DROP COLUMN IF EXISTS gid;
CREATE INDEX IF NOT EXISTS idx_single_use_links_status ON single_use_links (status);
