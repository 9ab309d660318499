"""All SQL of ingest: binary COPY into staging tables, idempotent insert, presence, dead letters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg
from psycopg.types.json import Jsonb

from weijian.telemetry import Event, Reading

# Listeners (the detector runner) learn which devices got new data, once per committed batch.
NOTIFY_CHANNEL = "weijian_ingest"
_NOTIFY_MAX = 7000  # pg_notify payloads must stay under 8000 bytes

_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS readings_stage (
    ts timestamptz, device_id text, metric text, value double precision,
    seq bigint, received_at timestamptz) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS events_stage (
    ts timestamptz, device_id text, type text, data jsonb,
    seq bigint, received_at timestamptz) ON COMMIT DELETE ROWS;
"""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    device_id: str | None
    reason: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Presence:
    device_id: str
    last_seen_at: datetime | None
    last_seq: int | None
    online: bool | None
    status_at: datetime | None
    # Earliest device time of the data in this batch (late data widens what detectors look at).
    earliest: datetime | None = None


@dataclass(frozen=True, slots=True)
class BatchCounts:
    readings_new: int
    events_new: int


def prepare(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the session's staging tables (once per connection)."""
    with conn.transaction():
        conn.execute(_STAGING)


def write_batch(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    readings: Sequence[Reading],
    events: Sequence[Event],
    dead: Sequence[DeadLetter],
    presence: Sequence[Presence],
) -> BatchCounts:
    """Write one batch in one transaction; every resend is absorbed by the unique keys."""
    readings_new = events_new = 0
    with conn.transaction(), conn.cursor() as cur:
        if readings:
            with cur.copy(
                "COPY readings_stage (ts, device_id, metric, value, seq, received_at)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["timestamptz", "text", "text", "float8", "int8", "timestamptz"])
                for r in readings:
                    copy.write_row((r.ts, r.device_id, r.metric, r.value, r.seq, r.received_at))
            cur.execute(
                "INSERT INTO readings SELECT * FROM readings_stage"
                " ON CONFLICT (device_id, metric, ts) DO NOTHING"
            )
            readings_new = cur.rowcount
        if events:
            with cur.copy(
                "COPY events_stage (ts, device_id, type, data, seq, received_at)"
                " FROM STDIN (FORMAT BINARY)"
            ) as copy:
                copy.set_types(["timestamptz", "text", "text", "jsonb", "int8", "timestamptz"])
                for e in events:
                    copy.write_row((e.ts, e.device_id, e.type, Jsonb(e.data), e.seq, e.received_at))
            cur.execute(
                "INSERT INTO events SELECT * FROM events_stage"
                " ON CONFLICT (device_id, type, ts) DO NOTHING"
            )
            events_new = cur.rowcount
        if dead:
            cur.executemany(
                "INSERT INTO dead_letters (topic, device_id, reason, payload, payload_size)"
                " VALUES (%s, %s, %s, %s, %s)",
                [(d.topic, d.device_id, d.reason, d.payload, len(d.payload)) for d in dead],
            )
        if presence:
            _update_presence(cur, presence)
        for payload in _notify_payloads(presence):
            cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
    return BatchCounts(readings_new, events_new)


def _update_presence(cur: psycopg.Cursor[tuple[object, ...]], presence: Sequence[Presence]) -> None:
    # One statement per batch: a device's presence is never written once per message.
    cur.execute(
        """
        UPDATE devices d SET
            last_seen_at = GREATEST(d.last_seen_at, p.last_seen_at),
            last_seq = COALESCE(p.last_seq, d.last_seq),
            online = CASE WHEN p.status_at IS NOT NULL
                               AND (d.status_at IS NULL OR p.status_at >= d.status_at)
                          THEN p.online
                          WHEN p.last_seen_at IS NOT NULL THEN true
                          ELSE d.online END,
            status_at = GREATEST(d.status_at, p.status_at)
        FROM unnest(%s::text[], %s::timestamptz[], %s::bigint[], %s::boolean[], %s::timestamptz[])
             AS p(device_id, last_seen_at, last_seq, online, status_at)
        WHERE d.id = p.device_id
        """,
        (
            [p.device_id for p in presence],
            [p.last_seen_at for p in presence],
            [p.last_seq for p in presence],
            [p.online for p in presence],
            [p.status_at for p in presence],
        ),
    )


def _notify_payloads(presence: Iterable[Presence]) -> list[str]:
    """`{"device": earliest device time (epoch ms) or null}`, split under the size limit."""
    payloads: list[str] = []
    chunk: dict[str, int | None] = {}
    size = 0
    for p in presence:
        if size + len(p.device_id) + 24 > _NOTIFY_MAX and chunk:
            payloads.append(orjson.dumps(chunk).decode())
            chunk, size = {}, 0
        chunk[p.device_id] = int(p.earliest.timestamp() * 1000) if p.earliest else None
        size += len(p.device_id) + 24
    if chunk:
        payloads.append(orjson.dumps(chunk).decode())
    return payloads


def device_kinds(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, str]:
    """Registered device ids and their kinds (the ingest's registry cache)."""
    with conn.transaction():
        rows = conn.execute("SELECT id, kind FROM devices").fetchall()
    return {str(device_id): str(kind) for device_id, kind in rows}
