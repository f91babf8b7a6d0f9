-- Each device's agent life (issue 13): the epoch its agent named in its
-- latest hello. A hello naming another epoch starts a new fencing life: the
-- device's known lock states are forgotten, so its restarted generations are
-- taken. NULL until an agent names one.
ALTER TABLE devices ADD COLUMN agent_epoch TEXT;
