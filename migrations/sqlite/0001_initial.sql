-- Lockstep's initial schema (SQLite). Timestamps are milliseconds since the
-- Unix epoch (INTEGER) so both backends store them the same way. Structured
-- values (config, env, specs) are JSON text, decoded at the store edge.
-- Never edit a migration once released: add a new one.

CREATE TABLE fleets (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL
);

CREATE TABLE blocks (
    name        TEXT PRIMARY KEY,
    description TEXT NOT NULL DEFAULT '',
    created_ms  INTEGER NOT NULL
);

CREATE TABLE block_versions (
    block            TEXT NOT NULL REFERENCES blocks(name),
    version          TEXT NOT NULL,
    image_digest     TEXT NOT NULL,
    config_json      TEXT NOT NULL,
    env_json         TEXT NOT NULL,
    depends_on_json  TEXT NOT NULL,
    strategy_json    TEXT NOT NULL,
    created_ms       INTEGER NOT NULL,
    PRIMARY KEY (block, version)
);

CREATE TABLE releases (
    id          TEXT PRIMARY KEY,
    fleet       TEXT NOT NULL REFERENCES fleets(id),
    env_json    TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX releases_by_fleet ON releases (fleet, created_ms, id);

CREATE TABLE release_blocks (
    release_id  TEXT NOT NULL REFERENCES releases(id),
    block       TEXT NOT NULL,
    version     TEXT NOT NULL,
    PRIMARY KEY (release_id, block),
    FOREIGN KEY (block, version) REFERENCES block_versions(block, version)
);

CREATE TABLE devices (
    id                  TEXT PRIMARY KEY,
    fleet               TEXT NOT NULL REFERENCES fleets(id),
    credential_hash     TEXT NOT NULL,
    credential_revoked  BOOLEAN NOT NULL DEFAULT 0,
    -- The last intent sequence assigned to this device; bumped in the same
    -- transaction that appends an intent, so sequences have no gaps.
    intent_seq          INTEGER NOT NULL DEFAULT 0,
    status              TEXT NOT NULL DEFAULT 'unknown',
    created_ms          INTEGER NOT NULL
);
CREATE INDEX devices_by_fleet ON devices (fleet, id);
CREATE INDEX devices_by_status ON devices (status, id);

CREATE TABLE device_tags (
    device_id  TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    tag        TEXT NOT NULL,
    PRIMARY KEY (device_id, tag)
);
CREATE INDEX device_tags_by_tag ON device_tags (tag, device_id);

-- What the device agent last reported it runs.
CREATE TABLE device_reports (
    device_id        TEXT PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    agent_version    TEXT NOT NULL,
    current_release  TEXT,
    os_version       TEXT,
    last_intent_seq  INTEGER NOT NULL DEFAULT 0,
    reported_ms      INTEGER NOT NULL
);

CREATE TABLE device_blocks (
    device_id        TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    block            TEXT NOT NULL,
    version          TEXT NOT NULL,
    env_fingerprint  TEXT NOT NULL,
    PRIMARY KEY (device_id, block)
);

-- Current lock state per device and block; only a newer generation replaces it.
CREATE TABLE device_locks (
    device_id   TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    block       TEXT NOT NULL,
    held        BOOLEAN NOT NULL,
    generation  INTEGER NOT NULL,
    since_ms    INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (device_id, block)
);

-- Append-only history of applied lock changes; pruned by age.
CREATE TABLE lock_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    TEXT NOT NULL,
    block        TEXT NOT NULL,
    held         BOOLEAN NOT NULL,
    generation   INTEGER NOT NULL,
    since_ms     INTEGER NOT NULL,
    recorded_ms  INTEGER NOT NULL
);
CREATE INDEX lock_history_by_device ON lock_history (device_id, block, generation);
CREATE INDEX lock_history_by_age ON lock_history (recorded_ms);

-- Operator-set env variables. level: 'fleet' or 'device'; owner: the fleet or
-- device id; block: '' for device-wide, else the block it is scoped to.
CREATE TABLE env_vars (
    level       TEXT NOT NULL CHECK (level IN ('fleet', 'device')),
    owner       TEXT NOT NULL,
    name        TEXT NOT NULL,
    block       TEXT NOT NULL DEFAULT '',
    value       TEXT NOT NULL,
    updated_ms  INTEGER NOT NULL,
    PRIMARY KEY (level, owner, name, block)
);

CREATE TABLE operations (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    spec_json    TEXT NOT NULL,
    force_json   TEXT,
    status       TEXT NOT NULL,
    status_json  TEXT NOT NULL DEFAULT '{}',
    created_ms   INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL
);
CREATE INDEX operations_by_device ON operations (device_id, id);
CREATE INDEX operations_by_status ON operations (status, id);

-- The intent outbox: stored before it is sent, re-sent until acknowledged.
CREATE TABLE intents (
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    seq           INTEGER NOT NULL,
    kind          TEXT NOT NULL,
    body_json     TEXT NOT NULL,
    operation_id  INTEGER REFERENCES operations(id),
    created_ms    INTEGER NOT NULL,
    acked_ms      INTEGER,
    PRIMARY KEY (device_id, seq)
);
CREATE INDEX intents_unacked ON intents (device_id, seq) WHERE acked_ms IS NULL;

CREATE TABLE intent_acks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    device_id    TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    body_json    TEXT NOT NULL,
    received_ms  INTEGER NOT NULL,
    FOREIGN KEY (device_id, seq) REFERENCES intents(device_id, seq) ON DELETE CASCADE
);
CREATE INDEX intent_acks_by_intent ON intent_acks (device_id, seq);

-- Maintenance windows attached to a fleet, a device tag or a device.
CREATE TABLE maintenance_windows (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    scope_kind  TEXT NOT NULL CHECK (scope_kind IN ('fleet', 'tag', 'device')),
    scope       TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    created_ms  INTEGER NOT NULL
);
CREATE INDEX windows_by_scope ON maintenance_windows (scope_kind, scope);

CREATE TABLE approvals (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    operation_id      INTEGER NOT NULL REFERENCES operations(id) ON DELETE CASCADE,
    status            TEXT NOT NULL,
    window_id         INTEGER REFERENCES maintenance_windows(id),
    occurrence_start  INTEGER,
    occurrence_end    INTEGER,
    decided_by        TEXT,
    message           TEXT,
    created_ms        INTEGER NOT NULL,
    decided_ms        INTEGER
);
CREATE INDEX approvals_by_operation ON approvals (operation_id);

CREATE TABLE rollouts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    fleet       TEXT NOT NULL REFERENCES fleets(id),
    kind        TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_ms  INTEGER NOT NULL,
    updated_ms  INTEGER NOT NULL
);
CREATE INDEX rollouts_by_fleet ON rollouts (fleet, status);

CREATE TABLE rollout_devices (
    rollout_id    INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    device_id     TEXT NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    batch         INTEGER NOT NULL,
    operation_id  INTEGER REFERENCES operations(id),
    status        TEXT NOT NULL,
    updated_ms    INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, device_id)
);

CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms         INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    action        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    reason        TEXT NOT NULL DEFAULT '',
    details_json  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_time ON audit_log (at_ms);
