-- Which operation kinds need a customer's approval of a window occurrence
-- (JSON array of kinds; NULL means the default, os_update).
ALTER TABLE fleet_policies ADD COLUMN needs_approval_json TEXT;
