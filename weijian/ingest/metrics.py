"""Prometheus metrics of the ingest stage (served on /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES = Counter("weijian_ingest_messages_total", "MQTT messages committed", ["channel"])
READINGS = Counter("weijian_ingest_readings_total", "Readings committed (new rows)")
READINGS_DUPLICATE = Counter(
    "weijian_ingest_readings_duplicate_total", "Readings absorbed as resends (already stored)"
)
EVENTS = Counter("weijian_ingest_events_total", "Events committed (new rows)")
DEAD_LETTERS = Counter("weijian_ingest_dead_letters_total", "Messages or items dead-lettered")
BATCH_SIZE = Histogram(
    "weijian_ingest_batch_messages",
    "Messages per committed batch",
    buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 10000, 20000),
)
COMMIT_SECONDS = Histogram(
    "weijian_ingest_commit_seconds",
    "Time to write and commit one batch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# Gauges say how to combine worker processes (prometheus multiprocess mode, several ingest workers).
LAG_SECONDS = Gauge(
    "weijian_ingest_lag_seconds",
    "Receive → commit delay of the oldest message of the last batch",
    multiprocess_mode="livemax",
)
PENDING = Gauge(
    "weijian_ingest_pending_messages",
    "Messages received and not yet committed",
    multiprocess_mode="livesum",
)
DB_RETRIES = Counter(
    "weijian_ingest_db_retries_total", "Batch writes retried after a database error"
)
CONNECTED = Gauge(
    "weijian_ingest_broker_connected",
    "Ingest sessions connected to the broker",
    multiprocess_mode="livesum",
)
