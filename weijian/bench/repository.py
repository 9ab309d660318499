"""All SQL of the benchmarks: their own database, bulk registration, counts and verification."""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

Conn = psycopg.Connection[tuple[Any, ...]]

# (ts, device_id, metric, value, seq, received_at), the column order of `readings`.
ReadingRow = tuple[datetime, str, str, float, int, datetime]
_READING_TYPES = ["timestamptz", "text", "text", "float8", "int8", "timestamptz"]


@dataclass(frozen=True, slots=True)
class Verification:
    """How the stored readings of one part compare with what was published."""

    published: int
    stored_readings: int
    # Published messages of which fewer than all metrics were stored.
    lost: int
    # Readings stored more than once (same device, seq and metric).
    duplicates: int
    # Stored (device, seq) pairs that were never published.
    unexpected: int


def drop_database(*, admin_url: str, name: str) -> None:
    """Drop a benchmark database, closing whatever is still connected to it."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def database_exists(*, admin_url: str, name: str) -> bool:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def register_devices(*, conn: Conn, site_id: str, device_ids: Sequence[str], kind: str) -> None:
    """One site and its devices in two statements (no broker credentials: load mode publishes
    through the platform account)."""
    with conn.transaction():
        conn.execute(
            "INSERT INTO sites (id, name, kind, district) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (id) DO NOTHING",
            (site_id, "基准测试", "disinfection_plant", "基准区"),
        )
        conn.execute(
            "INSERT INTO devices (id, site_id, kind, interval_s)"
            " SELECT d, %s, %s, 10 FROM unnest(%s::text[]) AS d",
            (site_id, kind, list(device_ids)),
        )


def server_facts(*, conn: Conn) -> dict[str, str | None]:
    """PostgreSQL and TimescaleDB versions and the durability setting that bounds commits."""
    row = conn.execute(
        "SELECT current_setting('server_version'),"
        " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),"
        " current_setting('synchronous_commit'), current_setting('shared_buffers')"
    ).fetchone()
    assert row is not None
    keys = ("postgres", "timescaledb", "synchronous_commit", "shared_buffers")
    return dict(zip(keys, (None if v is None else str(v) for v in row), strict=True))


def readings_inserted(*, conn: Conn) -> int:
    """Rows inserted into the chunks of `readings` so far, from the statistics collector.

    Cheap at any table size (unlike count(*)), but each backend reports its counts at most
    once a second, so it lags the commits by up to about a second.
    """
    row = conn.execute(
        "SELECT coalesce(sum(s.n_tup_ins), 0) FROM pg_stat_user_tables s"
        " JOIN timescaledb_information.chunks c"
        "   ON s.schemaname = c.chunk_schema AND s.relname = c.chunk_name"
        " WHERE c.hypertable_name = 'readings'"
    ).fetchone()
    return int(row[0]) if row else 0


def sessions_of(*, conn: Conn, application_prefix: str) -> int:
    """Database connections of this database whose application_name starts with the prefix."""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND starts_with(application_name, %s)",
        (application_prefix,),
    ).fetchone()
    return int(row[0]) if row else 0


def server_pids(*, conn: Conn) -> list[int]:
    """PostgreSQL processes working for this database, and the WAL writer, checkpointer and
    background writer every commit leans on."""
    rows = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " OR backend_type IN ('walwriter', 'checkpointer', 'background writer')"
    ).fetchall()
    return [int(r[0]) for r in rows]


def dead_letter_count(*, conn: Conn) -> int:
    row = conn.execute("SELECT count(*) FROM dead_letters").fetchone()
    return int(row[0]) if row else 0


def readings_count(*, conn: Conn, device_prefix: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM readings WHERE starts_with(device_id, %s)", (device_prefix,)
    ).fetchone()
    return int(row[0]) if row else 0


def received_between(*, conn: Conn, device_prefix: str, start: datetime, end: datetime) -> int:
    """Readings of these devices whose batch the ingest began in [start, end)."""
    row = conn.execute(
        "SELECT count(*) FROM readings WHERE starts_with(device_id, %s)"
        " AND received_at >= %s AND received_at < %s",
        (device_prefix, start, end),
    ).fetchone()
    return int(row[0]) if row else 0


def received_timeline(
    *, conn: Conn, device_prefix: str, start: datetime, end: datetime, step_s: float
) -> list[int]:
    """Readings of these devices per `step_s` interval from `start` to `end`, by the time the
    ingest began their batch."""
    rows = conn.execute(
        "SELECT floor(extract(epoch FROM received_at - %(start)s) / %(step)s)::int, count(*)"
        " FROM readings WHERE starts_with(device_id, %(prefix)s)"
        " AND received_at >= %(start)s AND received_at < %(end)s GROUP BY 1",
        {"start": start, "end": end, "step": step_s, "prefix": device_prefix},
    ).fetchall()
    counts: dict[int, int] = {int(k): int(n) for k, n in rows}
    steps = max(0, math.ceil((end - start).total_seconds() / step_s))
    return [counts.get(i, 0) for i in range(steps)]


def received_span(*, conn: Conn, device_prefix: str) -> tuple[datetime | None, datetime | None]:
    """When the ingest began the first and the last batch holding readings of these devices."""
    row = conn.execute(
        "SELECT min(received_at), max(received_at) FROM readings WHERE starts_with(device_id, %s)",
        (device_prefix,),
    ).fetchone()
    return (None, None) if row is None else (row[0], row[1])


def probe_times(*, conn: Conn, device_id: str, metric: str, since: datetime) -> list[datetime]:
    """Device times of the probe's stored readings from `since` on (the unique index serves it)."""
    rows = conn.execute(
        "SELECT ts FROM readings WHERE device_id = %s AND metric = %s AND ts >= %s ORDER BY ts",
        (device_id, metric, since),
    ).fetchall()
    return [r[0] for r in rows]


def probe_stages(
    *, conn: Conn, device_ids: Sequence[str], rule: str
) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Per probe device: when the ingest received its first reading (`received_at`) and when
    the evaluation that raised its alert of `rule` began (`detected_at`)."""
    rows = conn.execute(
        "SELECT d,"
        " (SELECT min(r.received_at) FROM readings r WHERE r.device_id = d),"
        " (SELECT min(a.detected_at) FROM alerts a WHERE a.device_id = d AND a.rule = %s)"
        " FROM unnest(%s::text[]) AS d",
        (rule, list(device_ids)),
    ).fetchall()
    return {str(r[0]): (r[1], r[2]) for r in rows}


def verify_exactly_once(
    *, conn: Conn, device_prefix: str, expected: Iterable[tuple[str, int]], metrics: int
) -> Verification:
    """Compare the readings of the devices named `device_prefix…` with the published
    (device, seq) pairs: every message stored with all its metrics, none twice, nothing else."""
    with conn.transaction():
        conn.execute("SET LOCAL work_mem = '256MB'")
        conn.execute("CREATE TEMP TABLE bench_expected (device_id text, seq bigint) ON COMMIT DROP")
        with (
            conn.cursor() as cur,
            cur.copy("COPY bench_expected (device_id, seq) FROM STDIN (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["text", "int8"])
            for pair in expected:
                copy.write_row(pair)
        conn.execute("ANALYZE bench_expected")
        row = conn.execute(
            """
            WITH got AS MATERIALIZED (
                SELECT device_id, seq, count(*) AS n, count(DISTINCT metric) AS m
                FROM readings WHERE starts_with(device_id, %(prefix)s)
                GROUP BY device_id, seq
            )
            SELECT
                (SELECT count(*) FROM bench_expected),
                (SELECT coalesce(sum(n), 0) FROM got),
                (SELECT count(*) FROM bench_expected e
                   LEFT JOIN got g ON g.device_id = e.device_id AND g.seq = e.seq
                  WHERE coalesce(g.m, 0) < %(metrics)s),
                (SELECT coalesce(sum(n - m), 0) FROM got),
                (SELECT count(*) FROM got g WHERE NOT EXISTS (
                    SELECT 1 FROM bench_expected e
                     WHERE e.device_id = g.device_id AND e.seq = g.seq))
            """,
            {"prefix": device_prefix, "metrics": metrics},
        ).fetchone()
    assert row is not None
    return Verification(*(int(v) for v in row))


def copy_readings(*, conn: Conn, rows: Iterable[ReadingRow]) -> None:
    """Binary COPY straight into `readings`, in one transaction (the database's ceiling)."""
    with (
        conn.transaction(),
        conn.cursor() as cur,
        cur.copy(
            "COPY readings (ts, device_id, metric, value, seq, received_at)"
            " FROM STDIN (FORMAT BINARY)"
        ) as copy,
    ):
        copy.set_types(_READING_TYPES)
        for row in rows:
            copy.write_row(row)


def insert_message(*, conn: Conn, rows: Sequence[ReadingRow]) -> None:
    """One INSERT of one message's readings, as a small ingestor does (autocommit: one commit)."""
    conn.execute(_insert_sql(len(rows)), [v for row in rows for v in row])


@functools.cache
def _insert_sql(rows: int) -> str:
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * rows)
    return (
        f"INSERT INTO readings (ts, device_id, metric, value, seq, received_at) VALUES {values}"
        " ON CONFLICT (device_id, metric, ts) DO NOTHING"
    )
