"""`weijian up`: every stage in one process, started in one order and stopped cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Histogram
from psycopg_pool import AsyncConnectionPool

from weijian.alerts.detectors import catalogue
from weijian.alerts.jobs import DetectionLoop, ModelTrainer
from weijian.alerts.shards import Shard
from weijian.clock import Clock, SystemClock
from weijian.config import Settings
from weijian.db import retention
from weijian.db.connection import AsyncConn, open_pool
from weijian.db.migrate import migrate
from weijian.ingest.pool import IngestProcessPool
from weijian.ingest.worker import TelemetryIngestor
from weijian.notify.jobs import OutboxDispatcher
from weijian.notify.providers import provider_from_settings
from weijian.workers import WorkerPool

log = logging.getLogger(__name__)

LOOP_LAG = Histogram(
    "weijian_event_loop_lag_seconds",
    "How late the event loop ran a timer (time it was held by other work)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
# The loop-lag probe's period, and the lag worth a warning in the log.
_LAG_PERIOD_S = 0.05
_LAG_WARN_S = 1.0


@dataclass
class Stages:
    """Which stages this process runs (all of them for `weijian up`)."""

    api: bool = True
    ingest: bool = True
    detectors: bool = True
    notify: bool = True
    scan_interval_s: float = 30.0
    # The sites this process judges; None: all of them, with `settings.detect_workers` − 1
    # further detection processes started here, each owning its share of the sites.
    shard: Shard | None = None
    extra: list[Callable[[], Awaitable[None]]] = field(default_factory=list)


async def run(
    settings: Settings,
    stages: Stages,
    *,
    clock: Clock | None = None,
    ready: asyncio.Event | None = None,
) -> None:
    """Run the chosen stages until cancelled or SIGTERM/SIGINT."""
    clock = clock or SystemClock()
    applied = await asyncio.to_thread(migrate, settings.database_url)
    if applied:
        log.info("database migrated: %s", ", ".join(applied))
    provider = provider_from_settings(settings) if stages.notify else None
    pool = await open_pool(settings.database_url, min_size=2, max_size=10)
    ingestors: list[TelemetryIngestor] = []
    process_pool: IngestProcessPool | None = None
    detect_pool: WorkerPool | None = None
    shard = stages.shard or Shard(0, settings.detect_workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
    try:
        if stages.ingest:
            process_pool = await _start_ingest(settings, clock, ingestors)
        if stages.detectors and stages.shard is None and shard.count > 1:
            detect_pool = _start_detect_pool(settings, stages, shard)
        async with asyncio.TaskGroup() as group:
            tasks: list[asyncio.Task[None]] = []
            if stages.detectors:
                tasks += _detection(group, settings, stages, shard, pool=pool, clock=clock)
            if provider is not None:
                dispatcher = OutboxDispatcher(
                    pool=pool,
                    provider=provider,
                    clock=clock,
                    rate_per_hour=settings.sms_rate_per_recipient_per_hour,
                )
                tasks.append(group.create_task(dispatcher.run(), name="notify-dispatch"))
            tasks.append(group.create_task(_watch_loop_lag(), name="loop-lag"))
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
        if process_pool is not None:
            await asyncio.to_thread(process_pool.stop)
        if detect_pool is not None:
            await asyncio.to_thread(detect_pool.stop)
        await pool.close()


def detection_worker(
    settings_values: dict[str, Any], index: int, log_level: str, scan_interval_s: float
) -> None:
    """A detection process of `weijian up` (`detect_workers` > 1): shard `index` of them."""
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s detect-{index}: %(name)s: %(message)s"
    )
    from weijian.config import get_settings

    settings = get_settings(**settings_values)
    shard = Shard(index, settings.detect_workers)
    stages = Stages(
        api=False, ingest=False, notify=False, shard=shard, scan_interval_s=scan_interval_s
    )
    asyncio.run(run(settings, stages))


def _detection(
    group: asyncio.TaskGroup,
    settings: Settings,
    stages: Stages,
    shard: Shard,
    *,
    pool: AsyncConnectionPool[AsyncConn],
    clock: Clock,
) -> list[asyncio.Task[None]]:
    """The detection stage of this process: its shard's sites, streamed and scanned."""
    seed = settings.inspection_seed
    rng = random.Random(None if seed is None else seed + shard.index)
    detectors = catalogue()
    trainer = ModelTrainer(pool=pool, detectors=detectors, clock=clock, shard=shard)
    detection = DetectionLoop(
        database_url=settings.database_url,
        pool=pool,
        detectors=detectors,
        clock=clock,
        rng=rng,
        sign=settings.sms_sign_name,
        scan_interval_s=stages.scan_interval_s,
        shard=shard,
    )
    tasks = [
        group.create_task(trainer.run(), name="behaviour-models"),
        group.create_task(detection.listen(), name="detector-listen"),
        group.create_task(detection.stream(), name="detector-stream"),
        group.create_task(detection.scan(), name="detector-scan"),
    ]
    if shard.index == 0:  # once, whatever the number of detection processes
        tasks.append(group.create_task(_daily_retention(pool), name="retention"))
    return tasks


def _start_detect_pool(settings: Settings, stages: Stages, shard: Shard) -> WorkerPool:
    """The detection processes of shards 1..N−1 (this process judges shard 0)."""
    detect_pool = WorkerPool(
        settings,
        kind="detect",
        target=detection_worker,
        indices=range(1, shard.count),
        args=(stages.scan_interval_s,),
    )
    detect_pool.start()
    log.info("detection: shard 0/%d here, the others in %s", shard.count, detect_pool.pids)
    return detect_pool


async def _start_ingest(
    settings: Settings, clock: Clock, ingestors: list[TelemetryIngestor]
) -> IngestProcessPool | None:
    """One ingest worker in this process, or a pool of worker processes."""
    if settings.ingest_workers > 1:
        pool = IngestProcessPool(settings)
        pool.start()
        log.info("ingest: %d worker processes %s", settings.ingest_workers, pool.pids)
        return pool
    ingestor = TelemetryIngestor(settings, clock=clock)
    ingestor.start()
    ingestors.append(ingestor)
    if not await asyncio.to_thread(ingestor.wait_connected, 15.0):
        log.warning(
            "ingest is not connected to %s yet; it keeps retrying", settings.mqtt.public_url
        )
    return None


async def _watch_loop_lag() -> None:
    """Measure how long the event loop is held between turns: every stage of `weijian up`
    shares it, and a long hold delays alerts (`weijian_event_loop_lag_seconds`)."""
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(_LAG_PERIOD_S)
        lag = max(0.0, loop.time() - started - _LAG_PERIOD_S)
        LOOP_LAG.observe(lag)
        if lag >= _LAG_WARN_S:
            log.warning("the event loop was held for %.2f s", lag)


async def _daily_retention(pool: AsyncConnectionPool[AsyncConn]) -> None:
    """Apply the default retention policy once a day (the Apache build has no policies)."""
    while True:
        try:
            async with pool.connection() as conn:
                result = await retention.apply(conn=conn, policy=retention.RetentionPolicy())
            log.info("retention: %s", result)
        except Exception:
            log.exception("retention run failed; next attempt in a day")
        await asyncio.sleep(24 * 3600)


async def _serve_api(settings: Settings, pool: object) -> None:
    import uvicorn

    from weijian.api.app import create_app

    app = create_app(settings, pool=pool)  # type: ignore[arg-type]
    config = uvicorn.Config(
        app,
        host=settings.http_host,
        port=settings.http_port,
        log_level=settings.log_level.lower(),
        lifespan="on",
        access_log=settings.log_level.upper() == "DEBUG",
        # Open wall streams must not hold a shutdown forever.
        timeout_graceful_shutdown=5,
    )
    server = uvicorn.Server(config)
    try:
        await server.serve()
    finally:
        server.should_exit = True
