"""Operations endpoints and pages: /healthz, /metrics, /openapi.json, /wall, /m, static files."""

from __future__ import annotations

import httpx
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from tests.api.conftest import World
from weijian.api import app as app_module
from weijian.api.app import create_app
from weijian.config import Settings
from weijian.db.connection import AsyncConn

pytestmark = pytest.mark.anyio


async def test_healthz_reports_the_database(world: World) -> None:
    response = await world.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok"}


async def test_healthz_is_503_with_the_reason_when_the_database_is_unreachable(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "HEALTH_TIMEOUT_S", 0.5)
    dead: AsyncConnectionPool[AsyncConn] = AsyncConnectionPool(
        "postgresql://postgres@127.0.0.1:1/weijian",
        open=False,
        min_size=1,
        timeout=1.0,
        kwargs={"row_factory": dict_row, "connect_timeout": 1},
    )
    await dead.open(wait=False)
    try:
        app = create_app(settings, pool=dead)
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://h"
        ) as http:
            response = await http.get("/healthz")
            assert response.status_code == 503
            body = response.json()
            assert body["status"] == "error"
            assert body["database"].startswith("PoolTimeout") or "0.5 s" in body["database"]
            # Other endpoints answer 503 too instead of hanging or failing with 500.
            login = await http.post("/api/v1/auth/token", data={"username": "a", "password": "b"})
            assert login.status_code == 503
    finally:
        await dead.close()


async def test_without_a_pool_the_lifespan_opens_and_closes_its_own(settings: Settings) -> None:
    app = create_app(settings)
    assert app.state.pool is None  # nothing connects before the app starts
    async with app.router.lifespan_context(app):
        pool = app.state.pool
        assert pool is not None
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://o"
        ) as http:
            assert (await http.get("/healthz")).json()["database"] == "ok"
    assert pool.closed
    assert app.state.pool is None


async def test_metrics_are_prometheus_text(world: World) -> None:
    await world.get("chief", "/api/v1/sites")
    await world.get("chief", "/api/v1/sites/site-a")
    response = await world.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert (
        'weijian_api_requests_total{method="GET",route="/api/v1/sites/{site_id}",status="200"}'
        in text
    )
    assert "weijian_api_stream_clients" in text


async def test_openapi_lists_the_api(world: World) -> None:
    spec = (await world.client.get("/openapi.json")).json()
    for path in (
        "/api/v1/alerts",
        "/api/v1/tasks/{task_id}/conclude",
        "/api/v1/readings",
        "/api/v1/stream",
        "/healthz",
    ):
        assert path in spec["paths"], path


@pytest.mark.parametrize(
    ("path", "marker"), [("/wall", "卫生健康监督在线监测大屏"), ("/m", "我的任务")]
)
async def test_pages_are_html_with_a_strict_policy(world: World, path: str, marker: str) -> None:
    response = await world.client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert '<html lang="zh-CN"' in response.text
    assert marker in response.text
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert "http://" not in response.text  # no CDN
    assert "https://" not in response.text


async def test_static_assets_are_served(world: World) -> None:
    for asset in ("/static/wall.js", "/static/wall.css", "/static/m.js", "/static/api.js"):
        response = await world.client.get(asset)
        assert response.status_code == 200, asset
    root = await world.client.get("/")
    assert root.status_code == 307
    assert root.headers["location"] == "/wall"
