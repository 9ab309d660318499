"""All SQL of inspection tasks and their append-only history."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from weijian.db.connection import AsyncConn
from weijian.inspections.models import Task

_COLUMNS = (
    "t.id, t.site_id, t.status, t.severity, t.title, t.inspectors, t.opened_at, t.due_at,"
    " t.concluded_at, t.conclusion, t.case_filed, t.published_at, t.closed_at,"
    " COALESCE((SELECT array_agg(ta.alert_id ORDER BY ta.alert_id) FROM task_alerts ta"
    "           WHERE ta.task_id = t.id), '{}') AS alert_ids"
)


async def open_task_for_site(*, conn: AsyncConn, site_id: str) -> Task | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM inspection_tasks t"
        " WHERE t.site_id = %s AND t.status IN ('assigned', 'in_progress') FOR UPDATE OF t",
        (site_id,),
    )
    row = await cur.fetchone()
    return None if row is None else Task.model_validate(row)


async def insert_task(
    *,
    conn: AsyncConn,
    site_id: str,
    severity: str,
    title: str,
    inspectors: Sequence[str],
    opened_at: datetime,
    due_at: datetime,
) -> int:
    cur = await conn.execute(
        "INSERT INTO inspection_tasks (site_id, status, severity, title, inspectors, opened_at,"
        " due_at) VALUES (%s, 'assigned', %s, %s, %s, %s, %s) RETURNING id",
        (site_id, severity, title, list(inspectors), opened_at, due_at),
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row["id"])


async def link_alert(*, conn: AsyncConn, task_id: int, alert_id: int) -> bool:
    cur = await conn.execute(
        "INSERT INTO task_alerts (task_id, alert_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (task_id, alert_id),
    )
    return cur.rowcount == 1


async def update_task(*, conn: AsyncConn, task_id: int, values: dict[str, Any]) -> None:
    assignments = ", ".join(f"{k} = %({k})s" for k in values)
    await conn.execute(
        f"UPDATE inspection_tasks SET {assignments} WHERE id = %(_id)s", {**values, "_id": task_id}
    )


async def add_history(
    *,
    conn: AsyncConn,
    task_id: int,
    action: str,
    actor: str,
    from_status: str | None,
    to_status: str | None,
    at: datetime,
    note: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO task_history"
        " (task_id, at, action, from_status, to_status, actor, note, details)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        (task_id, at, action, from_status, to_status, actor, note, Jsonb(details or {})),
    )


async def get_task(*, conn: AsyncConn, task_id: int, lock: bool = False) -> Task | None:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM inspection_tasks t WHERE t.id = %s"
        + (" FOR UPDATE OF t" if lock else ""),
        (task_id,),
    )
    row = await cur.fetchone()
    return None if row is None else Task.model_validate(row)


async def list_tasks(
    *,
    conn: AsyncConn,
    status: str | None = None,
    site_id: str | None = None,
    inspector: str | None = None,
    site_ids: Sequence[str] | None = None,
    limit: int = 200,
) -> list[Task]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM inspection_tasks t"
        " WHERE (%(status)s::text IS NULL OR t.status = %(status)s)"
        "   AND (%(site)s::text IS NULL OR t.site_id = %(site)s)"
        "   AND (%(inspector)s::text IS NULL OR %(inspector)s = ANY(t.inspectors))"
        "   AND (%(ids)s::text[] IS NULL OR t.site_id = ANY(%(ids)s))"
        " ORDER BY t.opened_at DESC, t.id DESC LIMIT %(limit)s",
        {
            "status": status,
            "site": site_id,
            "inspector": inspector,
            "limit": limit,
            "ids": None if site_ids is None else list(site_ids),
        },
    )
    return [Task.model_validate(r) for r in await cur.fetchall()]


async def history(*, conn: AsyncConn, task_id: int) -> list[dict[str, Any]]:
    cur = await conn.execute(
        "SELECT at, action, from_status, to_status, actor, note, details FROM task_history"
        " WHERE task_id = %s ORDER BY id",
        (task_id,),
    )
    return list(await cur.fetchall())


async def kpi_counts(*, conn: AsyncConn, start: datetime, end: datetime) -> dict[str, int]:
    """Counts behind the bureau's measures for tasks due (or concluded) in [start, end)."""
    cur = await conn.execute(
        """
        SELECT
          count(*) FILTER (WHERE due_at >= %(s)s AND due_at < %(e)s) AS due,
          count(*) FILTER (WHERE due_at >= %(s)s AND due_at < %(e)s
                           AND concluded_at IS NOT NULL) AS due_concluded,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s) AS concluded,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND concluded_at <= due_at) AS on_time,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND closed_at IS NOT NULL) AS closed,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND conclusion = 'violation') AS violations,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND conclusion = 'violation' AND case_filed) AS cases,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND closed_at IS NOT NULL AND published_at IS NOT NULL) AS published,
          count(*) FILTER (WHERE concluded_at >= %(s)s AND concluded_at < %(e)s
                           AND conclusion = 'false_alarm') AS false_alarms
        FROM inspection_tasks
        """,
        {"s": start, "e": end},
    )
    row = await cur.fetchone()
    assert row is not None
    return {k: int(v) for k, v in row.items()}


async def list_visible_tasks(
    *,
    conn: AsyncConn,
    site_ids: Sequence[str] | None,
    assigned_to: str | None = None,
    statuses: Sequence[str] | None = None,
    site_id: str | None = None,
    inspector: str | None = None,
    limit: int = 200,
) -> list[Task]:
    """Tasks at `site_ids` (None: all sites) or assigned to `assigned_to`, with filters."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM inspection_tasks t"
        " WHERE (%(ids)s::text[] IS NULL OR t.site_id = ANY(%(ids)s)"
        "        OR (%(assigned)s::text IS NOT NULL AND %(assigned)s = ANY(t.inspectors)))"
        "   AND (%(statuses)s::text[] IS NULL OR t.status = ANY(%(statuses)s))"
        "   AND (%(site)s::text IS NULL OR t.site_id = %(site)s)"
        "   AND (%(inspector)s::text IS NULL OR %(inspector)s = ANY(t.inspectors))"
        " ORDER BY t.opened_at DESC, t.id DESC LIMIT %(limit)s",
        {
            "ids": None if site_ids is None else list(site_ids),
            "assigned": assigned_to,
            "statuses": None if statuses is None else list(statuses),
            "site": site_id,
            "inspector": inspector,
            "limit": limit,
        },
    )
    return [Task.model_validate(r) for r in await cur.fetchall()]
