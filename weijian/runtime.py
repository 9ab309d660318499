"""`weijian up`: every stage in one process, started in one order and stopped cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from weijian.alerts.detectors import catalogue
from weijian.alerts.jobs import DetectionLoop
from weijian.clock import Clock, SystemClock
from weijian.config import Settings
from weijian.db.connection import open_pool
from weijian.db.migrate import migrate
from weijian.ingest.worker import TelemetryIngestor
from weijian.notify.jobs import OutboxDispatcher
from weijian.notify.providers import provider_from_settings

log = logging.getLogger(__name__)


@dataclass
class Stages:
    """Which stages this process runs (all of them for `weijian up`)."""

    api: bool = True
    ingest: bool = True
    detectors: bool = True
    notify: bool = True
    scan_interval_s: float = 30.0
    extra: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def run(settings: Settings, stages: Stages, *, clock: Clock | None = None,
              ready: asyncio.Event | None = None) -> None:
    """Run the chosen stages until cancelled or SIGTERM/SIGINT."""
    clock = clock or SystemClock()
    applied = await asyncio.to_thread(migrate, settings.database_url)
    if applied:
        log.info("database migrated: %s", ", ".join(applied))
    provider = provider_from_settings(settings) if stages.notify else None
    pool = await open_pool(settings.database_url, min_size=2, max_size=10)
    ingestors: list[TelemetryIngestor] = []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if stages.ingest:
            for index in range(settings.ingest_workers):
                ingestor = TelemetryIngestor(settings, worker_index=index, clock=clock)
                ingestor.start()
                ingestors.append(ingestor)
            if not await asyncio.to_thread(ingestors[0].wait_connected, 15.0):
                log.warning("ingest is not connected to %s yet; it keeps retrying",
                            settings.mqtt.public_url)
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[None]] = []
            if stages.detectors:
                rng = random.Random(settings.inspection_seed)
                detection = DetectionLoop(
                    database_url=settings.database_url, pool=pool, detectors=catalogue(),
                    clock=clock, rng=rng, sign=settings.sms_sign_name,
                    scan_interval_s=stages.scan_interval_s,
                )
                tasks.append(group.create_task(detection.listen(), name="detector-listen"))
                tasks.append(group.create_task(detection.stream(), name="detector-stream"))
                tasks.append(group.create_task(detection.scan(), name="detector-scan"))
            if provider is not None:
                dispatcher = OutboxDispatcher(pool=pool, provider=provider, clock=clock,
                                              rate_per_hour=settings.sms_rate_per_recipient_per_hour)
                tasks.append(group.create_task(dispatcher.run(), name="notify-dispatch"))
            if stages.api:
                tasks.append(group.create_task(_serve_api(settings, pool), name="api"))
            for extra in stages.extra:
                tasks.append(group.create_task(extra()))  # type: ignore[arg-type]
            if ready is not None:
                ready.set()
            await stop.wait()
            log.info("stopping")
            for task in tasks:
                task.cancel()
    finally:
        for ingestor in ingestors:
            await asyncio.to_thread(ingestor.stop)
        await pool.close()


async def _serve_api(settings: Settings, pool: object) -> None:
    import uvicorn

    from weijian.api.app import create_app

    app = create_app(settings, pool=pool)  # type: ignore[arg-type]
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port,
                            log_level=settings.log_level.lower(), lifespan="on")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    try:
        await server.serve()
    finally:
        server.should_exit = True
