"""Inspection tasks: serious alerts open (or join) the site's open task, inspectors drawn at random.

States: assigned → in_progress → concluded → closed, each step appended to the task's history.
双随机: the two inspectors are drawn at random from the site district's roster.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from weijian.alerts.models import Severity
from weijian.db.connection import AsyncConn
from weijian.devices import service as devices
from weijian.inspections import repository
from weijian.inspections.models import Conclusion, Task, TaskStatus
from weijian.users import service as users

# Alerts of these severities need inspectors on site.
TASK_SEVERITIES = frozenset({Severity.MAJOR, Severity.CRITICAL})
# Due time after opening, by the most severe alert of the task [policy].
DUE_AFTER = {Severity.CRITICAL: timedelta(hours=24), Severity.MAJOR: timedelta(hours=72)}
INSPECTORS_PER_TASK = 2
SYSTEM = "system"


class TaskError(ValueError):
    """A task action that cannot be carried out (unknown task, wrong state, not assigned)."""


@dataclass(frozen=True)
class TaskOutcome:
    task_id: int
    opened: bool
    inspectors: list[str]
    due_at: datetime


def draw_inspectors(
    roster: list[str], rng: random.Random, count: int = INSPECTORS_PER_TASK
) -> list[str]:
    """Draw `count` distinct inspectors at random (fewer if the roster is short)."""
    return sorted(rng.sample(roster, k=min(count, len(roster))))


async def open_or_join(
    *,
    conn: AsyncConn,
    site_id: str,
    alert_id: int,
    severity: Severity,
    summary: str,
    now: datetime,
    rng: random.Random,
) -> TaskOutcome | None:
    """Link a serious alert to the site's open task, opening one if there is none."""
    if severity not in TASK_SEVERITIES:
        return None
    task = await repository.open_task_for_site(conn=conn, site_id=site_id)
    if task is not None:
        if await repository.link_alert(conn=conn, task_id=task.id, alert_id=alert_id):
            due_at = task.due_at
            tighter = now + DUE_AFTER[severity]
            if tighter < due_at:
                due_at = tighter
                await repository.update_task(
                    conn=conn,
                    task_id=task.id,
                    values={"due_at": due_at, "severity": severity.value},
                )
            await repository.add_history(
                conn=conn,
                task_id=task.id,
                action="alert_joined",
                actor=SYSTEM,
                from_status=task.status,
                to_status=task.status,
                at=now,
                note=summary,
                details={"alert_id": alert_id, "due_at": due_at.isoformat()},
            )
            return TaskOutcome(task.id, False, task.inspectors, due_at)
        return None
    site = await devices.get_site(conn=conn, site_id=site_id)
    if site is None:
        raise TaskError(f"no site {site_id!r}")
    roster = [u.username for u in await users.inspector_roster(conn=conn, district=site.district)]
    inspectors = draw_inspectors(roster, rng)
    due_at = now + DUE_AFTER[severity]
    task_id = await repository.insert_task(
        conn=conn,
        site_id=site_id,
        severity=severity.value,
        title=f"{site.name}：{summary}",
        inspectors=inspectors,
        opened_at=now,
        due_at=due_at,
    )
    await repository.link_alert(conn=conn, task_id=task_id, alert_id=alert_id)
    note = (
        None
        if len(inspectors) == INSPECTORS_PER_TASK
        else (
            f"district {site.district} has {len(roster)} active inspector(s); "
            f"{INSPECTORS_PER_TASK} are required"
        )
    )
    await repository.add_history(
        conn=conn,
        task_id=task_id,
        action="opened",
        actor=SYSTEM,
        from_status=None,
        to_status=TaskStatus.ASSIGNED.value,
        at=now,
        note=note,
        details={
            "alert_id": alert_id,
            "inspectors": inspectors,
            "roster_size": len(roster),
            "due_at": due_at.isoformat(),
        },
    )
    return TaskOutcome(task_id, True, inspectors, due_at)


_NEXT = {
    "start": (TaskStatus.ASSIGNED, TaskStatus.IN_PROGRESS),
    "conclude": (TaskStatus.IN_PROGRESS, TaskStatus.CONCLUDED),
    "close": (TaskStatus.CONCLUDED, TaskStatus.CLOSED),
}


async def transition(
    *,
    conn: AsyncConn,
    task_id: int,
    action: str,
    actor: str,
    now: datetime,
    note: str | None = None,
    conclusion: Conclusion | None = None,
    case_filed: bool = False,
    may_act_for_others: bool = False,
) -> Task:
    """Move a task one step on (start, conclude, close), recorded in its history."""
    if action not in _NEXT:
        raise TaskError(f"unknown action {action!r}; one of {', '.join(_NEXT)}")
    task = await repository.get_task(conn=conn, task_id=task_id, lock=True)
    if task is None:
        raise TaskError(f"no task {task_id}")
    if not may_act_for_others and actor not in task.inspectors:
        raise TaskError(f"task {task_id} is not assigned to {actor}")
    expected, target = _NEXT[action]
    if task.status != expected:
        raise TaskError(f"task {task_id} is {task.status.value}; {action} needs {expected.value}")
    values: dict[str, object] = {"status": target.value}
    if action == "conclude":
        if conclusion is None:
            raise TaskError("conclude needs a conclusion: violation, no_violation or false_alarm")
        if case_filed and conclusion is not Conclusion.VIOLATION:
            raise TaskError("a case can only be filed for a violation")
        values.update(conclusion=conclusion.value, concluded_at=now, case_filed=case_filed)
    elif action == "close":
        values["closed_at"] = now
    await repository.update_task(conn=conn, task_id=task_id, values=values)
    await repository.add_history(
        conn=conn,
        task_id=task_id,
        action=action,
        actor=actor,
        from_status=task.status.value,
        to_status=target.value,
        at=now,
        note=note,
        details={"conclusion": conclusion.value if conclusion else None, "case_filed": case_filed},
    )
    updated = await repository.get_task(conn=conn, task_id=task_id)
    assert updated is not None
    return updated


async def publish(*, conn: AsyncConn, task_id: int, actor: str, now: datetime) -> Task:
    """Record that a closed task's result was made public (一公开)."""
    task = await repository.get_task(conn=conn, task_id=task_id, lock=True)
    if task is None:
        raise TaskError(f"no task {task_id}")
    if task.status is not TaskStatus.CLOSED:
        raise TaskError(f"task {task_id} is {task.status.value}; only a closed task is published")
    if task.published_at is not None:
        raise TaskError(f"task {task_id} was published at {task.published_at.isoformat()}")
    await repository.update_task(conn=conn, task_id=task_id, values={"published_at": now})
    await repository.add_history(
        conn=conn,
        task_id=task_id,
        action="published",
        actor=actor,
        from_status=task.status.value,
        to_status=task.status.value,
        at=now,
    )
    updated = await repository.get_task(conn=conn, task_id=task_id)
    assert updated is not None
    return updated


def _ratio(numerator: int, denominator: int) -> float | None:
    return None if denominator == 0 else round(numerator / denominator, 4)


async def kpis(*, conn: AsyncConn, start: datetime, end: datetime) -> dict[str, float | int | None]:
    """The bureau's measures (DOMAIN.md §4) for tasks of the period [start, end)."""
    c = await repository.kpi_counts(conn=conn, start=start, end=end)
    return {
        **c,
        "completion_rate": _ratio(c["due_concluded"], c["due"]),  # 完成率
        "closure_rate": _ratio(c["closed"], c["concluded"]),  # 完结率
        "timeliness_rate": _ratio(c["on_time"], c["concluded"]),  # 及时率
        "case_rate": _ratio(c["cases"], c["violations"]),  # 办案率
        "publication_rate": _ratio(c["published"], c["closed"]),  # 公开率
        "false_alarm_rate": _ratio(c["false_alarms"], c["concluded"]),  # 误报率
    }


async def get_task(*, conn: AsyncConn, task_id: int) -> Task | None:
    return await repository.get_task(conn=conn, task_id=task_id)


async def list_tasks(
    *,
    conn: AsyncConn,
    status: str | None = None,
    site_id: str | None = None,
    inspector: str | None = None,
    limit: int = 200,
) -> list[Task]:
    return await repository.list_tasks(
        conn=conn, status=status, site_id=site_id, inspector=inspector, limit=limit
    )


async def task_history(*, conn: AsyncConn, task_id: int) -> list[dict[str, object]]:
    return await repository.history(conn=conn, task_id=task_id)


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
    """Tasks a user may see: those at `site_ids` (None: every site) plus those assigned to it."""
    return await repository.list_visible_tasks(
        conn=conn,
        site_ids=site_ids,
        assigned_to=assigned_to,
        statuses=statuses,
        site_id=site_id,
        inspector=inspector,
        limit=limit,
    )
