"""All SQL of ingest: binary COPY into staging tables, idempotent insert, presence, dead letters."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import orjson
import psycopg
from psycopg.types.json import Jsonb

from weijian.ingest.decode import ReadingRow
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
    # Resends that carried another value than the stored reading (dead-lettered).
    conflicts: int = 0
    # The batch's readings held a stored (device, metric, ts): written the idempotent way.
    fell_back: bool = False
    # NOTIFY payloads the commit sent to the detectors.
    notifications: int = 0


# Dead-letter reason of a reading that came again with another value: a device replaying old
# times with altered data. The payload is the copy as a protocol reading object.
CONFLICTING_DUPLICATE = "conflicting_duplicate"

_READING_COLUMNS = "(ts, device_id, metric, value, seq, received_at)"
_READING_TYPES = ["timestamptz", "text", "text", "float8", "int8", "timestamptz"]


def prepare(conn: psycopg.Connection[tuple[object, ...]]) -> None:
    """Create the session's staging tables (once per connection)."""
    with conn.transaction():
        conn.execute(_STAGING)


def write_batch(
    conn: psycopg.Connection[tuple[object, ...]],
    *,
    readings: Sequence[Reading] = (),
    rows: Sequence[ReadingRow] = (),
    events: Sequence[Event],
    dead: Sequence[DeadLetter],
    presence: Sequence[Presence],
    topic_root: str | None = None,
    announce: Sequence[Presence] | None = None,
) -> BatchCounts:
    """Write one batch in one transaction; every resend is absorbed by the unique keys.

    `presence` rows update the devices' presence; `announce` (default: the same) are the
    devices whose new data the commit announces to the detectors (NOTIFY).

    Readings (`rows`, and `readings` as objects) are COPYed straight into `readings` first, as
    the transaction's first statement. A resend makes that COPY fail on the unique key; the
    transaction is then rolled back and written again through a staging table with
    `INSERT … ON CONFLICT DO NOTHING`, which also dead-letters resends with another value
    (`CONFLICTING_DUPLICATE`, under `topic_root`'s telemetry topic of the device).
    """
    heard = presence if announce is None else announce
    all_rows = list(rows) + [
        (r.ts, r.device_id, r.metric, r.value, r.seq, r.received_at) for r in readings
    ]
    if all_rows:
        try:
            return _write(
                conn, all_rows, events, dead, presence=presence, announce=heard, direct=True
            )
        except psycopg.errors.UniqueViolation:
            pass  # rolled back: nothing of the batch is written
    return _write(
        conn,
        all_rows,
        events,
        dead,
        presence=presence,
        announce=heard,
        direct=False,
        topic_root=topic_root,
    )


def _write(
    conn: psycopg.Connection[tuple[object, ...]],
    rows: Sequence[ReadingRow],
    events: Sequence[Event],
    dead: Sequence[DeadLetter],
    *,
    presence: Sequence[Presence],
    announce: Sequence[Presence],
    direct: bool,
    topic_root: str | None = None,
) -> BatchCounts:
    readings_new = events_new = 0
    conflicts: list[DeadLetter] = []
    with conn.transaction(), conn.cursor() as cur:
        if rows and direct:
            with cur.copy(f"COPY readings {_READING_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(_READING_TYPES)
                for row in rows:
                    copy.write_row(row)
            readings_new = len(rows)
        elif rows:
            readings_new, conflicts = _insert_idempotent(cur, rows, topic_root)
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
        if dead or conflicts:
            cur.executemany(
                "INSERT INTO dead_letters (topic, device_id, reason, payload, payload_size)"
                " VALUES (%s, %s, %s, %s, %s)",
                [
                    (d.topic, d.device_id, d.reason, d.payload, len(d.payload))
                    for d in (*dead, *conflicts)
                ],
            )
        if presence:
            _update_presence(cur, presence)
        payloads = _notify_payloads(announce)
        for payload in payloads:
            cur.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, payload))
    return BatchCounts(
        readings_new,
        events_new,
        len(conflicts),
        fell_back=not direct,
        notifications=len(payloads),
    )


def _insert_idempotent(
    cur: psycopg.Cursor[tuple[object, ...]], rows: Sequence[ReadingRow], topic_root: str | None
) -> tuple[int, list[DeadLetter]]:
    """Staging COPY + `INSERT … ON CONFLICT DO NOTHING`; (new rows, conflicting resends)."""
    with cur.copy(f"COPY readings_stage {_READING_COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(_READING_TYPES)
        for row in rows:
            copy.write_row(row)
    cur.execute(
        "INSERT INTO readings SELECT * FROM readings_stage"
        " ON CONFLICT (device_id, metric, ts) DO NOTHING"
    )
    inserted = cur.rowcount
    if inserted == len(rows):
        return inserted, []
    # Only resends are left: compare them with what is stored. The time bounds let the planner
    # skip other chunks; the index on (device_id, metric, ts) finds each stored row.
    cur.execute(
        """
        SELECT s.device_id, s.seq, s.ts, s.metric, s.value
        FROM readings_stage s
        JOIN readings r ON r.device_id = s.device_id AND r.metric = s.metric AND r.ts = s.ts
        WHERE r.ts BETWEEN %s AND %s AND r.value <> s.value
        ORDER BY s.device_id, s.ts, s.seq, s.metric
        """,
        (min(r[0] for r in rows), max(r[0] for r in rows)),
    )
    return inserted, _conflict_letters(cur.fetchall(), topic_root)


def _conflict_letters(
    found: Sequence[tuple[object, ...]], topic_root: str | None
) -> list[DeadLetter]:
    """One dead letter per conflicting message: {"seq", "ts" (epoch ms), "metrics"} with the
    values of the copy that was not stored."""
    messages: dict[tuple[str, int | None, datetime], dict[str, float]] = {}
    for device_id, seq, ts, metric, value in found:
        key = (str(device_id), seq if isinstance(seq, int) else None, cast(datetime, ts))
        messages.setdefault(key, {})[str(metric)] = cast(float, value)
    letters = []
    for (device_id, seq, ts), metrics in messages.items():
        body = {"seq": seq, "ts": round(ts.timestamp() * 1000), "metrics": metrics}
        topic = f"{topic_root}/{device_id}/telemetry" if topic_root else device_id
        letters.append(DeadLetter(topic, device_id, CONFLICTING_DUPLICATE, orjson.dumps(body)))
    return letters


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
