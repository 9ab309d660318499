-- The same uniqueness, (device, metric, ts) and (device, type, ts), with device time second.
-- The detectors read each device's recent minutes across all its metrics; with the metric
-- second an index range scan walked every metric's entries of the device for the whole
-- chunk (the day so far) to find them. A message's rows now also land side by side, which
-- makes ingest cheaper too (docs/performance.md). ON CONFLICT (device_id, metric, ts) infers
-- the new index: a unique index over the same columns in another order.
CREATE UNIQUE INDEX readings_device_ts_metric ON readings (device_id, ts, metric);
DROP INDEX readings_device_metric_ts;
CREATE UNIQUE INDEX events_device_ts_type ON events (device_id, ts, type);
DROP INDEX events_device_type_ts;
