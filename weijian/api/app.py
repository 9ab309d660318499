"""The HTTP application: REST under /api/v1, the live stream, the wall and the phone page.

`create_app` only assembles; nothing connects at import time. Without a pool the lifespan opens
(and closes) one; the live-stream listener starts with the first stream client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from weijian import __version__
from weijian.alerts.router import router as alerts_router
from weijian.alerts.service import AlertError
from weijian.api import auth, live, repository, wall
from weijian.clock import Clock, SystemClock
from weijian.config import Settings
from weijian.db.connection import AsyncConn, open_pool
from weijian.devices.router import router as devices_router
from weijian.devices.service import RegistryError
from weijian.inspections.router import router as inspections_router
from weijian.inspections.service import TaskError
from weijian.notify.router import router as notify_router
from weijian.users.router import router as users_router
from weijian.users.service import UserError

log = logging.getLogger(__name__)

API_PREFIX = "/api/v1"
HEALTH_TIMEOUT_S = 3.0

REQUESTS = Counter(
    "weijian_api_requests_total", "HTTP requests by route and status", ["method", "route", "status"]
)
LATENCY = Histogram(
    "weijian_api_request_seconds",
    "Time to answer an HTTP request (live stream excluded)",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class RequestMetrics:
    """Counts requests by route template (not raw path, so ids do not explode the labels)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            route = _route_label(scope)
            REQUESTS.labels(scope["method"], route, str(status_code)).inc()
            if route != f"{API_PREFIX}/stream":
                LATENCY.labels(route).observe(time.perf_counter() - started)


class RevalidatedStaticFiles(StaticFiles):
    """Static assets revalidated (ETag) on every load, so an upgrade is seen at once."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = "no-cache"
        return response


def _route_label(scope: Scope) -> str:
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str):
        return "unmatched"
    # Routes of included routers carry their path without the include prefix.
    if scope["path"].startswith(API_PREFIX + "/") and not path.startswith(API_PREFIX):
        return API_PREFIX + path
    return path


def _error_status(exc: ValueError, *, default: int) -> int:
    text = str(exc)
    if text.startswith("no "):
        return 404
    if "already exists" in text:
        return 409
    return default


def _install_error_handlers(app: FastAPI) -> None:
    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValueError)
        return JSONResponse({"detail": str(exc)}, status_code=_error_status(exc, default=409))

    async def bad_request(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ValueError)
        return JSONResponse({"detail": str(exc)}, status_code=_error_status(exc, default=400))

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable for %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "database unavailable; try again shortly"}, status_code=503)

    # Lifecycle errors (wrong state for the step) are conflicts; registry/user input errors are 400.
    app.add_exception_handler(AlertError, conflict)
    app.add_exception_handler(TaskError, conflict)
    app.add_exception_handler(RegistryError, bad_request)
    app.add_exception_handler(UserError, bad_request)
    app.add_exception_handler(PoolTimeout, unavailable)
    app.add_exception_handler(psycopg.OperationalError, unavailable)


async def _database_status(pool: AsyncConnectionPool[AsyncConn] | None) -> str:
    if pool is None:
        return "no connection pool"
    try:
        async with (
            asyncio.timeout(HEALTH_TIMEOUT_S),
            pool.connection(timeout=HEALTH_TIMEOUT_S) as conn,
        ):
            await repository.ping(conn=conn)
    except TimeoutError:
        return f"no answer within {HEALTH_TIMEOUT_S:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    return "ok"


def create_app(
    settings: Settings,
    *,
    pool: AsyncConnectionPool[AsyncConn] | None = None,
    clock: Clock | None = None,
) -> FastAPI:
    """The API application; pass `pool` to share one (it is then left open on shutdown)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned: AsyncConnectionPool[AsyncConn] | None = None
        if app.state.pool is None:
            owned = await open_pool(settings.database_url)
            app.state.pool = owned
        try:
            yield
        finally:
            await app.state.hub.close()
            if owned is not None:
                await owned.close()
                app.state.pool = None

    app = FastAPI(
        title="Weijian 卫监 API",
        version=__version__,
        description="Monitoring of disinfection plants and medical-waste stores; see docs/api.md.",
        lifespan=lifespan,
        # Swagger UI and ReDoc load their assets from a CDN; the schema stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = pool
    app.state.clock = clock or SystemClock()
    app.state.signing_key = None
    app.state.signing_key_lock = asyncio.Lock()
    app.state.hub = live.EventHub(settings.database_url)

    app.add_middleware(RequestMetrics)
    _install_error_handlers(app)

    for router in (
        auth.router,
        users_router,
        devices_router,
        alerts_router,
        inspections_router,
        notify_router,
        live.router,
        wall.router,
    ):
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(wall.pages)
    app.mount("/static", RevalidatedStaticFiles(directory=wall.STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/wall")

    @app.get(
        "/healthz", tags=["operations"], responses={503: {"description": "database unreachable"}}
    )
    async def healthz() -> JSONResponse:
        """Liveness and database reachability (no auth)."""
        database = await _database_status(app.state.pool)
        body: dict[str, Any] = {
            "status": "ok" if database == "ok" else "error",
            "database": database,
        }
        return JSONResponse(body, status_code=200 if database == "ok" else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def metrics() -> Response:
        """Prometheus metrics of the platform's processes (no auth)."""
        return Response(_metrics_text(), media_type=CONTENT_TYPE_LATEST)

    return app


def _metrics_text() -> bytes:
    """This process's metrics, or with worker processes (prometheus' multiprocess mode) every
    live process's, counters and histograms summed."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return generate_latest()
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return generate_latest(registry)
