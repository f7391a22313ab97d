CREATE INDEX IF NOT EXISTS idx_links_status ON single_use_links(status);
