"""Background detection: evaluate sites as their data is committed, and scan them all."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import orjson
from prometheus_client import Counter, Gauge, Histogram
from psycopg_pool import AsyncConnectionPool

from weijian.alerts import repository
from weijian.alerts.anomaly import AnomalyDetector, fit_models
from weijian.alerts.flows import EvaluationResult, evaluate_sites
from weijian.alerts.freshness import Freshness
from weijian.alerts.models import Detector
from weijian.alerts.shards import EVERY_SITE, Shard
from weijian.alerts.windows import WindowCache
from weijian.clock import Clock
from weijian.db.connection import AsyncConn, connect
from weijian.ingest.repository import NOTIFY_CHANNEL

log = logging.getLogger(__name__)

EVALUATIONS = Counter("weijian_detector_evaluations_total", "Site evaluations", ["trigger"])
EVALUATION_SECONDS = Histogram(
    "weijian_detector_evaluation_seconds",
    "Time to evaluate a site (stream: its devices with new data; scan: what time changed;"
    " full_scan: everything over the whole lookback)",
    ["trigger"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# The longest the scan waits, before each site, for the stream to take up new data.
SCAN_YIELD_S = 1.0
# An evaluation this slow is logged (it holds the loop every stage shares).
SLOW_EVALUATION_S = 1.0
# How often a scan judges every device over its whole lookback, not only what changed.
FULL_SCAN_INTERVAL_S = 900.0
# Sites a stream round evaluates at once (each on its own pooled connection).
STREAM_CONCURRENCY = 3
ALERT_CHANGES = Counter("weijian_alert_changes_total", "Alert transitions", ["kind"])
PENDING = Gauge(
    "weijian_detector_pending_devices",
    "Devices with committed data the stream has not judged yet (the detection backlog)",
    multiprocess_mode="livesum",
)
SCANS = Counter("weijian_detector_scans_total", "Completed scans of every site", ["kind"])


class DetectionLoop:
    """Runs the detectors on sites whose devices just got data, and on every site periodically."""

    def __init__(
        self,
        *,
        database_url: str,
        pool: AsyncConnectionPool[AsyncConn],
        detectors: Sequence[Detector],
        clock: Clock,
        rng: random.Random,
        sign: str,
        scan_interval_s: float = 60.0,
        debounce_s: float = 0.1,
        full_scan_interval_s: float = FULL_SCAN_INTERVAL_S,
        concurrency: int = STREAM_CONCURRENCY,
        shard: Shard = EVERY_SITE,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._concurrency = concurrency
        # The sites this loop judges (the others belong to other detection processes), and
        # the devices announced that turned out to be of other shards' sites: not pending
        # here. Forgotten at each full scan, so a device moved to another site is followed.
        self._shard = shard
        self._foreign: set[str] = set()
        self._database_url = database_url
        self._pool = pool
        self._detectors = detectors
        self._clock = clock
        self._rng = rng
        self._sign = sign
        self._scan_interval = scan_interval_s
        self._full_scan_interval = full_scan_interval_s
        self._debounce = debounce_s
        # device id → earliest device time of its new data (None: only presence changed)
        self._pending: dict[str, datetime | None] = {}
        self._wakeup = asyncio.Event()
        # Shared by stream and scan: they may interleave, which is safe because each cache
        # entry is replaced whole by a self-consistent window (alerts/windows.py).
        self._windows = WindowCache()
        # When each rule last judged each device: evaluations judge only what changed since.
        self._freshness = Freshness()
        # One evaluation of a site at a time (the stream and the scan interleave).
        self._site_locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._streaming = False  # a stream round is under way

    async def evaluate(
        self,
        site_id: str,
        trigger: str,
        *,
        since: Mapping[str, datetime] | None = None,
        focus: Mapping[str, Collection[str]] | None = None,
        new_data: Mapping[str, datetime | None] | None = None,
        narrow: bool = True,
    ) -> EvaluationResult:
        """Evaluate one site: only what changed since its rules last judged each device
        (`narrow`), or everything over the whole lookback."""
        async with self._site_locks[site_id]:
            started = time.monotonic()
            async with self._pool.connection() as conn:
                result = await evaluate_sites(
                    conn=conn,
                    site_ids=[site_id],
                    detectors=self._detectors,
                    now=self._clock.now(),
                    rng=self._rng,
                    sign=self._sign,
                    since=since,
                    cache=self._windows,
                    focus=focus,
                    freshness=self._freshness,
                    new_data=new_data,
                    narrow=narrow,
                )
            took = time.monotonic() - started
            EVALUATIONS.labels(trigger).inc()
            EVALUATION_SECONDS.labels(trigger).observe(took)
            if took >= SLOW_EVALUATION_S:
                log.warning("%s evaluation of %s took %.2f s", trigger, site_id, took)
        for change in result.changes:
            ALERT_CHANGES.labels(change.kind).inc()
            log.info(
                "alert %s: #%d %s at %s/%s — %s",
                change.kind,
                change.alert_id,
                change.rule,
                change.site_id,
                change.device_id or "-",
                change.summary,
            )
        return result

    async def listen(self) -> None:
        """Collect device ids announced by ingest commits (LISTEN/NOTIFY), reconnecting on loss."""
        delay = 1.0
        while True:
            try:
                conn = await connect(self._database_url)
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    delay = 1.0
                    async for note in conn.notifies():
                        self.heard(note.payload)
                        self._wakeup.set()
            except (OSError, Exception) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                log.warning(
                    "detector listener lost the database (%s); retrying in %.0f s", exc, delay
                )
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 30.0)

    def heard(self, payload: str) -> None:
        """Take in one ingest announcement (`{"device": earliest device time in ms or null}`)."""
        for device_id, earliest_ms in orjson.loads(payload).items():
            self._note(device_id, earliest_ms)
        PENDING.set(len(self._pending))

    def take_pending(self) -> dict[str, datetime | None]:
        """The devices announced since the last call (device → earliest new device time)."""
        pending, self._pending = self._pending, {}
        return pending

    def _note(self, device_id: str, earliest_ms: int | None) -> None:
        """Remember a device with new data, keeping the earliest device time announced."""
        if device_id in self._foreign:
            return
        earliest = None if earliest_ms is None else datetime.fromtimestamp(earliest_ms / 1000, UTC)
        known = self._pending.get(device_id)
        if known is None or (earliest is not None and earliest < known):
            self._pending[device_id] = earliest if earliest is not None else known

    async def stream(self) -> None:
        """Evaluate the sites of devices with new data, shortly after it is committed: a round
        takes the devices announced while the previous one ran (`stream_round`)."""
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self._debounce)
            self._wakeup.clear()
            pending = self.take_pending()
            self._streaming = True
            # Still being judged: a round counts until it is over.
            PENDING.set(len(pending))
            try:
                await self.stream_round(pending)
            except Exception:
                log.exception("stream evaluation failed; the next scan will retry")
            finally:
                self._streaming = False
                PENDING.set(len(self._pending))

    async def stream_round(self, pending: Mapping[str, datetime | None]) -> None:
        """Evaluate the sites of the devices with new data (device → earliest device time of
        it, None when only presence changed).

        The sites are evaluated in the order their data arrived (a few at once), each with its
        own `now`: a site whose data came first is not kept waiting behind every site whose id
        sorts before it. Only the devices with new data are judged (and the detectors across
        devices of their kinds), each rule only from where its verdict may have changed; the
        scheduled scan judges every device, so a device's clears and silences are never left
        out for longer than a scan interval."""
        async with self._pool.connection() as conn:
            sites = await repository.site_of_device(conn=conn, device_ids=list(pending))
        if self._shard.count > 1:
            self._foreign.update(d for d, site in sites.items() if not self._shard.owns(site))
            sites = {d: site for d, site in sites.items() if self._shard.owns(site)}
        since: dict[str, datetime] = {}
        focus: dict[str, set[str]] = defaultdict(set)
        for device_id, earliest in pending.items():
            site_id = sites.get(device_id)
            if site_id is None:
                continue
            focus[site_id].add(device_id)
            if earliest is not None:
                since[site_id] = min(earliest, since.get(site_id, earliest))
        order = arrival_order(pending, sites)
        if self._concurrency == 1:  # in this task: an interrupt lands in the round itself
            for site_id in order:
                await self.evaluate(site_id, "stream", since=since, focus=focus, new_data=pending)
            return
        # Up to `concurrency` sites at once, started in arrival order: while one evaluation
        # waits for the database, another judges (a site is still evaluated once at a time).
        limit = asyncio.Semaphore(self._concurrency)

        async def one(site_id: str) -> None:
            async with limit:
                await self.evaluate(site_id, "stream", since=since, focus=focus, new_data=pending)

        async with asyncio.TaskGroup() as group:
            for site_id in order:
                group.create_task(one(site_id))

    async def scan(self) -> None:
        """Evaluate every site on a schedule (offline devices, overdue waste, daily UV, ...):
        every `full_scan_interval_s` over the whole lookback (the first scan after a start
        always), otherwise what time alone changed (`scan_round`)."""
        full_due = 0.0
        while True:
            full = time.monotonic() >= full_due
            if full:
                full_due = time.monotonic() + self._full_scan_interval
            try:
                await self.scan_round(full=full)
            except Exception:
                log.exception("scheduled scan failed")
            await asyncio.sleep(self._scan_interval)

    async def scan_round(self, *, full: bool) -> None:
        """Evaluate every site, one at a time, each behind the stream: fresh data is judged
        first, and the scan waits for new data to be taken up before its next site (at most
        `SCAN_YIELD_S`, so a busy stream cannot starve the scan). `full`: every device over
        its whole lookback; otherwise what time alone changed since each rule last judged
        each device."""
        if full:
            self._foreign.clear()
        async with self._pool.connection() as conn:
            site_ids = self._shard.select(await repository.all_site_ids(conn=conn))
        for site_id in site_ids:
            await self._stream_first()
            await self.evaluate(site_id, "full_scan" if full else "scan", narrow=not full)
        SCANS.labels("full" if full else "narrow").inc()

    async def _stream_first(self) -> None:
        waited = 0.0
        while (self._pending or self._streaming) and waited < SCAN_YIELD_S:
            await asyncio.sleep(0.01)
            waited += 0.01


def arrival_order(pending: Mapping[str, object], sites: Mapping[str, str]) -> list[str]:
    """The sites of the pending devices (kept in the order they were first announced), each
    once, in the order of their first device."""
    return list(dict.fromkeys(sites[d] for d in pending if d in sites))


class ModelTrainer:
    """Refits the `behaviour.anomaly` models from each device's recent history, on a schedule."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[AsyncConn],
        detectors: Sequence[Detector],
        clock: Clock,
        history: timedelta = timedelta(hours=24),
        interval: timedelta = timedelta(hours=24),
        shard: Shard = EVERY_SITE,
    ) -> None:
        self._pool = pool
        self._shard = shard
        self._target = next((d for d in detectors if isinstance(d, AnomalyDetector)), None)
        self._clock = clock
        self._history = history
        self._interval = interval

    async def train_once(self) -> int:
        """Fit every device with enough history; returns how many models are in use."""
        if self._target is None:
            return 0
        now = self._clock.now()
        async with self._pool.connection() as conn:
            site_ids = self._shard.select(await repository.all_site_ids(conn=conn))
            devices = await repository.site_devices(conn=conn, site_ids=site_ids)
            history = {}
            for row in devices:
                readings = await repository.readings_between(
                    conn=conn, device_ids=[row["id"]], start=now - self._history, end=now
                )
                if readings:
                    history[str(row["id"])] = (str(row["kind"]), readings)
        models = await asyncio.to_thread(fit_models, history)
        self._target.models = models
        log.info("behaviour models fitted for %d of %d devices", len(models), len(devices))
        return len(models)

    async def run(self) -> None:
        while True:
            try:
                await self.train_once()
            except Exception:
                log.exception("fitting behaviour models failed; keeping the previous ones")
            await asyncio.sleep(self._interval.total_seconds())
