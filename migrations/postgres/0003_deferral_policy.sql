-- Bounded deferral: how long a lock holder may put off a release request,
-- and what happens then ('notify': the operation turns overdue; 'force':
-- the holder's lock is overridden, audited). NULL means the default
-- (24 hours, notify).
ALTER TABLE fleet_policies ADD COLUMN max_deferral_ms BIGINT;
ALTER TABLE fleet_policies ADD COLUMN on_deferral_expiry TEXT;
