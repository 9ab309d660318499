-- The most recent alert of a fingerprint (active or resolved): the lifecycle looks it up for
-- every new episode without an active alert, to reopen an incident resolved within the hour.
CREATE INDEX alerts_fingerprint_latest ON alerts (fingerprint, id DESC);
