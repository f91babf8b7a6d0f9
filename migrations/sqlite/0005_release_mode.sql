-- Partial releases: 'partial' updates the unlocked blocks of a release now
-- and the locked ones when released; 'atomic' (NULL, the default) waits.
ALTER TABLE fleet_policies ADD COLUMN release_mode TEXT;
