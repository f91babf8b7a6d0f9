-- Per-fleet scheduling policy. A fleet without a row uses the defaults
-- (operations that need a maintenance window: os_update, reboot, shutdown).
CREATE TABLE fleet_policies (
    fleet              TEXT PRIMARY KEY REFERENCES fleets(id) ON DELETE CASCADE,
    needs_window_json  TEXT NOT NULL,
    updated_ms         INTEGER NOT NULL
);
