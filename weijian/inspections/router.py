"""HTTP: inspection tasks (list, detail, start → conclude → close → publish) and the KPIs."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict, Field, model_validator

from weijian.alerts import service as alerts
from weijian.alerts.models import Alert
from weijian.api.auth import BureauUser, Principal
from weijian.api.deps import Conn, FromQuery, Limit, Now, ToQuery, time_range
from weijian.api.live import announce_task
from weijian.db.connection import AsyncConn
from weijian.inspections import service
from weijian.inspections.models import Conclusion, Task, TaskStatus
from weijian.users import service as users
from weijian.users.models import Role

router = APIRouter(tags=["inspections"])


class TaskHistoryEntry(BaseModel):
    at: datetime
    action: str
    from_status: str | None
    to_status: str | None
    actor: str
    note: str | None
    details: dict[str, Any]


class TaskDetail(Task):
    inspector_names: dict[str, str]  # username → name, for display
    alerts: list[Alert]
    history: list[TaskHistoryEntry]


class StepBody(BaseModel):
    note: str | None = Field(default=None, max_length=2000)


class ConcludeBody(BaseModel):
    conclusion: Conclusion
    case_filed: bool = False
    note: str | None = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _case_needs_violation(self) -> ConcludeBody:
        if self.case_filed and self.conclusion is not Conclusion.VIOLATION:
            raise ValueError("a case (立案) can only be filed for a violation")
        return self


class Kpis(BaseModel):
    """DOMAIN.md §4 for tasks of the period; rates are null when their denominator is 0."""

    model_config = ConfigDict(extra="allow")

    start: datetime = Field(serialization_alias="from")
    end: datetime = Field(serialization_alias="to")
    due: int
    concluded: int
    completion_rate: float | None  # 完成率
    closure_rate: float | None  # 完结率
    timeliness_rate: float | None  # 及时率
    case_rate: float | None  # 办案率
    publication_rate: float | None  # 公开率
    false_alarm_rate: float | None  # 误报率


def _may_see(principal: Principal, task: Task) -> bool:
    return principal.sees_site(task.site_id) or principal.username in task.inspectors


async def _visible(conn: AsyncConn, principal: Principal, task_id: int) -> Task:
    task = await service.get_task(conn=conn, task_id=task_id)
    if task is None or not _may_see(principal, task):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no task {task_id}")
    return task


async def _actionable(conn: AsyncConn, principal: Principal, task_id: int) -> Task:
    task = await _visible(conn, principal, task_id)
    if not principal.is_staff and principal.username not in task.inspectors:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, f"task {task_id} is not assigned to {principal.username}"
        )
    return task


async def _detail(conn: AsyncConn, task: Task) -> TaskDetail:
    linked = [await alerts.get_alert(conn=conn, alert_id=i) for i in task.alert_ids]
    history = await service.task_history(conn=conn, task_id=task.id)
    people = [await users.get_user(conn=conn, username=name) for name in task.inspectors]
    return TaskDetail(
        **task.model_dump(),
        inspector_names={u.username: u.name for u in people if u is not None},
        alerts=[a for a in linked if a is not None],
        history=[TaskHistoryEntry.model_validate(h) for h in history],
    )


@router.get("/tasks", response_model=list[Task])
async def list_tasks(
    *,
    principal: BureauUser,
    conn: Conn,
    task_status: Annotated[
        list[TaskStatus] | None, Query(alias="status", description="Repeat for several.")
    ] = None,
    site_id: str | None = None,
    mine: Annotated[bool, Query(description="Only the tasks assigned to me.")] = False,
    limit: Limit = 200,
) -> list[Task]:
    """Tasks the user may see (inspectors: their district's and their own), newest first."""
    return await service.list_visible_tasks(
        conn=conn,
        site_ids=principal.scope,
        assigned_to=principal.username if principal.role is Role.INSPECTOR else None,
        statuses=None if not task_status else [s.value for s in task_status],
        site_id=site_id,
        inspector=principal.username if mine else None,
        limit=limit,
    )


@router.get("/tasks/{task_id}", response_model=TaskDetail)
async def get_task(task_id: int, principal: BureauUser, conn: Conn) -> TaskDetail:
    """A task with its alerts and its append-only history."""
    return await _detail(conn, await _visible(conn, principal, task_id))


async def _step(
    conn: AsyncConn, principal: Principal, task_id: int, action: str, now: datetime, **kwargs: Any
) -> TaskDetail:
    await _actionable(conn, principal, task_id)
    async with conn.transaction():
        task = await service.transition(
            conn=conn,
            task_id=task_id,
            action=action,
            actor=principal.username,
            now=now,
            may_act_for_others=principal.is_staff,
            **kwargs,
        )
        await announce_task(conn=conn, kind=action, task=task)
    return await _detail(conn, task)


@router.post("/tasks/{task_id}/start", response_model=TaskDetail)
async def start(
    task_id: int, principal: BureauUser, conn: Conn, now: Now, body: StepBody | None = None
) -> TaskDetail:
    """assigned → in_progress (开始核查)."""
    return await _step(conn, principal, task_id, "start", now, note=body.note if body else None)


@router.post("/tasks/{task_id}/conclude", response_model=TaskDetail)
async def conclude(
    task_id: int, body: ConcludeBody, principal: BureauUser, conn: Conn, now: Now
) -> TaskDetail:
    """in_progress → concluded, with the conclusion and whether a case was filed (立案)."""
    return await _step(
        conn,
        principal,
        task_id,
        "conclude",
        now,
        note=body.note,
        conclusion=body.conclusion,
        case_filed=body.case_filed,
    )


@router.post("/tasks/{task_id}/close", response_model=TaskDetail)
async def close(
    task_id: int, principal: BureauUser, conn: Conn, now: Now, body: StepBody | None = None
) -> TaskDetail:
    """concluded → closed (结案: follow-up and corrections done)."""
    return await _step(conn, principal, task_id, "close", now, note=body.note if body else None)


@router.post("/tasks/{task_id}/publish", response_model=TaskDetail)
async def publish(task_id: int, principal: BureauUser, conn: Conn, now: Now) -> TaskDetail:
    """Record that a closed task's result was published (一公开)."""
    await _actionable(conn, principal, task_id)
    async with conn.transaction():
        task = await service.publish(conn=conn, task_id=task_id, actor=principal.username, now=now)
        await announce_task(conn=conn, kind="published", task=task)
    return await _detail(conn, task)


@router.get("/kpis", response_model=Kpis)
async def kpis(
    _: BureauUser, conn: Conn, now: Now, start: FromQuery = None, end: ToQuery = None
) -> Kpis:
    """The bureau's measures for [from, to) (default: the last 30 days)."""
    window = time_range(start, end, now=now, default_span=timedelta(days=30))
    values = await service.kpis(conn=conn, start=window.start, end=window.end)
    return Kpis(start=window.start, end=window.end, **values)
