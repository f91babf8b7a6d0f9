-- Phased rollouts of a release or an OS version to a fleet (or the devices
-- of a fleet with a tag). The plan is stored as members (device, batch,
-- position); a member's operation, once started, tells how it is doing.
-- Replaces the placeholder tables of 0001, which nothing ever wrote.
DROP TABLE rollout_devices;
DROP TABLE rollouts;

CREATE TABLE rollouts (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet                TEXT NOT NULL REFERENCES fleets(id),
    selector_tag         TEXT,
    -- 'release' or 'os': at most one active rollout of each kind per fleet.
    kind                 TEXT NOT NULL,
    -- The release id, or the OS version.
    target               TEXT NOT NULL,
    strategy_json        TEXT NOT NULL,
    -- The planner's seed, as the bits of a u64.
    seed                 INTEGER NOT NULL,
    -- running, paused, aborted, completed, superseded
    state                TEXT NOT NULL,
    current_batch        INTEGER NOT NULL DEFAULT 0,
    batch_met_ms         INTEGER,
    errors_acknowledged  INTEGER NOT NULL DEFAULT 0,
    devices              INTEGER NOT NULL,
    skipped              INTEGER NOT NULL,
    message              TEXT NOT NULL DEFAULT '',
    created_by           TEXT NOT NULL,
    created_ms           INTEGER NOT NULL,
    updated_ms           INTEGER NOT NULL
);
CREATE UNIQUE INDEX rollouts_one_active_per_kind ON rollouts (fleet, kind)
    WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_by_fleet ON rollouts (fleet, id);

CREATE TABLE rollout_members (
    rollout_id    INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    batch         INTEGER NOT NULL,
    position      INTEGER NOT NULL,
    -- Set when the rollout starts this device.
    operation_id  INTEGER REFERENCES operations(id),
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_members_by_batch ON rollout_members (rollout_id, batch, position);
CREATE INDEX rollout_members_by_operation ON rollout_members (operation_id);
