-- Phased rollouts of a release or an OS version to a fleet (or the devices
-- of a fleet with a tag). The plan is stored as members (device, batch,
-- position); a member's operation, once started, tells how it is doing.
-- Replaces the placeholder tables of 0001, which nothing ever wrote.
DROP TABLE rollout_devices;
DROP TABLE rollouts;

CREATE TABLE rollouts (
    id                   BIGSERIAL PRIMARY KEY,
    fleet                TEXT NOT NULL REFERENCES fleets(id),
    selector_tag         TEXT,
    -- 'release' or 'os': at most one active rollout of each kind per fleet.
    kind                 TEXT NOT NULL,
    -- The release id, or the OS version.
    target               TEXT NOT NULL,
    strategy_json        TEXT NOT NULL,
    -- The planner's seed, as the bits of a u64.
    seed                 BIGINT NOT NULL,
    -- running, paused, aborted, completed, superseded
    state                TEXT NOT NULL,
    current_batch        BIGINT NOT NULL DEFAULT 0,
    batch_met_ms         BIGINT,
    errors_acknowledged  BIGINT NOT NULL DEFAULT 0,
    devices              BIGINT NOT NULL,
    skipped              BIGINT NOT NULL,
    message              TEXT NOT NULL DEFAULT '',
    created_by           TEXT NOT NULL,
    created_ms           BIGINT NOT NULL,
    updated_ms           BIGINT NOT NULL
);
CREATE UNIQUE INDEX rollouts_one_active_per_kind ON rollouts (fleet, kind)
    WHERE state IN ('running', 'paused');
CREATE INDEX rollouts_by_fleet ON rollouts (fleet, id);

CREATE TABLE rollout_members (
    rollout_id    BIGINT NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    batch         BIGINT NOT NULL,
    position      BIGINT NOT NULL,
    -- Set when the rollout starts this device.
    operation_id  BIGINT REFERENCES operations(id),
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_members_by_batch ON rollout_members (rollout_id, batch, position);
CREATE INDEX rollout_members_by_operation ON rollout_members (operation_id);
