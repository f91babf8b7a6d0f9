-- Many `lockstep serve` replicas share one Postgres (SQLite stays one
-- process): presence, wake-ups and events live here, not in a replica.

-- Each running replica, with a lease it renews every few seconds. A replica
-- whose lease ran out is dead: any replica reaps it and its sessions.
CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    started_ms BIGINT NOT NULL,
    lease_until_ms BIGINT NOT NULL
);

-- Each device's agent session: which replica holds its live stream (NULL:
-- none, the device is offline) and the session's epoch, bumped by every new
-- stream, which fences what an older stream may still write or send.
CREATE TABLE agent_sessions (
    device_id TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    replica TEXT,
    epoch BIGINT NOT NULL,
    since_ms BIGINT NOT NULL
);
CREATE INDEX agent_sessions_by_replica ON agent_sessions (replica) WHERE replica IS NOT NULL;

-- Devices another replica asked this device's owner to reconcile (an
-- operation created, an approval given, through a replica that does not
-- hold the device's stream). Claimed, and deleted, by the owner.
CREATE TABLE device_wakes (
    device_id TEXT PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    due_ms BIGINT NOT NULL
);

-- The durable event log: what happened to devices, operations and
-- rollouts, appended in the transaction that caused it. `seq` is global and
-- handed out in commit order (event_seq's row is locked until commit), so a
-- reader that has seen seq N has seen everything before it.
CREATE TABLE event_log (
    seq BIGINT PRIMARY KEY,
    at_ms BIGINT NOT NULL,
    fleet TEXT NOT NULL,
    device_id TEXT,
    operation_id BIGINT,
    rollout_id BIGINT,
    kind TEXT NOT NULL,
    body_json TEXT NOT NULL
);
CREATE INDEX event_log_by_at ON event_log (at_ms);

CREATE TABLE event_seq (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last BIGINT NOT NULL
);
INSERT INTO event_seq (id, last) VALUES (1, 0);
