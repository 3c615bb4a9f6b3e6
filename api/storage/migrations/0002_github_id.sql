-- GitHub's node id of a registered repository: a registration belongs to
-- that repository, not to whichever repository has its name later.
-- NULL for repositories registered before, until their next access check.
ALTER TABLE repositories ADD COLUMN github_id TEXT;
