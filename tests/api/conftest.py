"""API test fixtures: the app on a fresh database, an httpx client, and a small known world.

The world: two districts; 城东区 has a disinfection plant (site-a) and a hospital (site-b),
城西区 has a plant (site-c). Users: an admin, a supervisor, inspectors insp-a and insp-b (城东区)
and insp-c (城西区), and an operator of site-a. Data go through the domain services.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from weijian.alerts import service as alerts
from weijian.alerts.models import Finding, Severity
from weijian.api.app import create_app
from weijian.clock import ManualClock
from weijian.config import Settings
from weijian.db.connection import AsyncConn, open_pool
from weijian.devices import repository as devices_repo
from weijian.devices import service as devices
from weijian.devices.kinds import SiteKind
from weijian.devices.models import SiteCreate
from weijian.inspections import service as inspections
from weijian.users import service as users
from weijian.users.models import Role, UserCreate

PASSWORD = "correct-horse"
NOW = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)


@dataclass
class World:
    """Ids of the known data set, and helpers to add alerts and tasks to it."""

    pool: AsyncConnectionPool[AsyncConn]
    client: httpx.AsyncClient
    clock: ManualClock
    tokens: dict[str, str] = field(default_factory=dict)

    async def token(self, username: str) -> str:
        if username not in self.tokens:
            response = await self.client.post(
                "/api/v1/auth/token", data={"username": username, "password": PASSWORD}
            )
            assert response.status_code == 200, response.text
            self.tokens[username] = response.json()["access_token"]
        return self.tokens[username]

    async def auth(self, username: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {await self.token(username)}"}

    async def get(self, username: str, url: str, **params: Any) -> httpx.Response:
        return await self.client.get(url, params=params, headers=await self.auth(username))

    async def post(self, username: str, url: str, json: object = None) -> httpx.Response:
        return await self.client.post(url, json=json, headers=await self.auth(username))

    async def fire(
        self,
        *,
        site_id: str = "site-a",
        device_id: str | None = "stm-a1",
        rule: str = "disinfection.temperature_low",
        severity: Severity = Severity.MAJOR,
        at: datetime = NOW,
        summary: str = "消毒温度 92.0 °C，低于 100 °C",
        metric: str | None = "temp_c",
    ) -> int:
        """Fire an alert through the lifecycle service; returns its id."""
        finding = Finding(
            rule=rule,
            site_id=site_id,
            device_id=device_id,
            state="firing",
            severity=severity,
            started_at=at - timedelta(minutes=10),
            ended_at=at,
            value=92.0,
            limit=100.0,
            unit="°C",
            summary=summary,
            evidence_from=at - timedelta(minutes=10),
            evidence_to=at,
            evidence_metric=metric,
        )
        async with self.pool.connection() as conn, conn.transaction():
            changes = await alerts.apply_findings(conn=conn, findings=[finding], now=at)
        assert changes
        assert changes[0].kind == "fired"
        return changes[0].alert_id

    async def open_task(
        self,
        alert_id: int,
        *,
        site_id: str = "site-a",
        severity: Severity = Severity.MAJOR,
        at: datetime = NOW,
    ) -> int:
        """Open (or join) the site's inspection task for an alert, as the detection flow does."""
        async with self.pool.connection() as conn, conn.transaction():
            outcome = await inspections.open_or_join(
                conn=conn,
                site_id=site_id,
                alert_id=alert_id,
                severity=severity,
                summary="消毒温度不达标",
                now=at,
                rng=random.Random(7),
            )
        assert outcome is not None
        return outcome.task_id


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[AsyncConn]]:
    opened = await open_pool(database_url, min_size=1, max_size=6)
    yield opened
    await opened.close()


@pytest.fixture
def clock() -> ManualClock:
    """The platform clock of the app under test (tokens still use wall-clock time)."""
    return ManualClock(NOW)


@pytest.fixture
async def app(
    settings: Settings, pool: AsyncConnectionPool[AsyncConn], clock: ManualClock
) -> AsyncIterator[FastAPI]:
    application = create_app(settings, pool=pool, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://weijian.test") as http:
        yield http


async def seed(pool: AsyncConnectionPool[AsyncConn]) -> None:
    """The known world of this module's docstring."""
    sites = [
        ("site-a", "城东餐具消毒中心", "disinfection_plant", "城东区"),
        ("site-b", "城东人民医院", "medical_institution", "城东区"),
        ("site-c", "城西洁净餐具厂", "disinfection_plant", "城西区"),
    ]
    devices_of = [
        ("stm-a1", "site-a", "steam_cabinet", True),
        ("stm-a2", "site-a", "steam_cabinet", False),
        ("wse-b1", "site-b", "waste_store_env", True),
        ("stm-c1", "site-c", "steam_cabinet", None),
    ]
    people: list[tuple[str, str, str, str | None, list[str]]] = [
        ("admin", "管理员", "admin", None, []),
        ("chief", "王科长", "supervisor", None, []),
        ("insp-a", "李明", "inspector", "城东区", []),
        ("insp-b", "赵强", "inspector", "城东区", []),
        ("insp-c", "陈静", "inspector", "城西区", []),
        ("op-a", "消毒中心值班员", "operator", None, ["site-a"]),
    ]
    async with pool.connection() as conn:
        for site_id, name, kind, district in sites:
            await devices.add_site(
                conn=conn,
                new=SiteCreate(
                    id=site_id,
                    name=name,
                    kind=SiteKind(kind),
                    district=district,
                    phones=["13800000000"],
                ),
            )
        for device_id, site_id, kind, online in devices_of:
            await devices_repo.insert_device(
                conn=conn, device_id=device_id, site_id=site_id, kind=kind, name=None, interval_s=10
            )
            if online is not None:
                await conn.execute(
                    "UPDATE devices SET online = %s WHERE id = %s", (online, device_id)
                )
        for username, name, role, home, site_ids in people:
            await users.add_user(
                conn=conn,
                new=UserCreate(
                    username=username,
                    name=name,
                    role=Role(role),
                    password=PASSWORD,
                    district=home,
                    phone="13900000000",
                    site_ids=site_ids,
                ),
            )


@pytest.fixture
async def world(
    pool: AsyncConnectionPool[AsyncConn], client: httpx.AsyncClient, clock: ManualClock
) -> World:
    await seed(pool)
    return World(pool=pool, client=client, clock=clock)
