-- The reconciler (src/domain/reconcile.rs) looks at all of a device's
-- operations together and writes one plan per device in one transaction.

-- Every write to an operation compares and bumps its generation, so a plan
-- decided on an older read never lands.
ALTER TABLE operations ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;

-- The operator env (fleet and device variables, merged) each block runs
-- with, recorded when an apply lands: a release keeps it, an env change
-- replaces it for the blocks it is about. JSON object: block -> {name: value}.
ALTER TABLE devices ADD COLUMN applied_env_json TEXT NOT NULL DEFAULT '{}';

-- When the device must be reconciled again at the latest (a window opens or
-- closes, a deferral runs out): timers live in the database.
ALTER TABLE devices ADD COLUMN wake_at_ms INTEGER;
CREATE INDEX devices_by_wake_at ON devices (wake_at_ms) WHERE wake_at_ms IS NOT NULL;

-- A release request whose operation is over is withdrawn (a cancel intent
-- is sent for it); this is when.
ALTER TABLE intents ADD COLUMN withdrawn_ms INTEGER;
CREATE INDEX intents_by_operation ON intents (operation_id) WHERE operation_id IS NOT NULL;
