-- Every poll reads all unexpired revocations (no clock-dependent watermark).
CREATE INDEX revocations_by_expiry ON revocations (expire_time);
