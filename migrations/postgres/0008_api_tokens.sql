-- API tokens: who may call the API (every service but AgentService), with
-- which role, on which fleets. Only a SHA-256 hash of each token is stored;
-- the token itself is shown once, when it is created.
CREATE TABLE api_tokens (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    -- admin, operator, customer or viewer
    role         TEXT NOT NULL,
    -- A JSON array of fleet ids; [] means every fleet.
    fleets_json  TEXT NOT NULL DEFAULT '[]',
    secret_hash  TEXT NOT NULL,
    created_by   TEXT NOT NULL,
    created_ms   BIGINT NOT NULL,
    -- NULL: never expires.
    expires_ms   BIGINT,
    revoked_ms   BIGINT,
    revoked_by   TEXT
);

-- The fleet an audit entry is about (NULL: none, e.g. a token change, or
-- written before this migration), so a fleet-scoped token reads only its
-- fleets' entries.
ALTER TABLE audit_log ADD COLUMN fleet TEXT;
CREATE INDEX audit_by_fleet ON audit_log (fleet, id);
CREATE INDEX audit_by_action ON audit_log (action, id);
