"""The stream evaluates the sites of a round in the order their data arrived, a few at once."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Collection, Mapping
from datetime import UTC, datetime

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.factories import make_site
from weijian.alerts.flows import EvaluationResult
from weijian.alerts.jobs import DetectionLoop, arrival_order
from weijian.alerts.shards import Shard
from weijian.clock import ManualClock
from weijian.config import Settings
from weijian.db.connection import AsyncConn, connect, open_pool
from weijian.devices import repository as devices_repo

NOW = datetime(2026, 11, 23, 8, 0, tzinfo=UTC)


def test_arrival_order_keeps_first_announcement_and_drops_unknown_devices() -> None:
    pending = {"d-z1": None, "d-a1": None, "gone": None, "d-z2": None, "d-m1": None}
    sites = {"d-z1": "z", "d-z2": "z", "d-a1": "a", "d-m1": "m"}
    assert arrival_order(pending, sites) == ["z", "a", "m"]


class _Recording(DetectionLoop):
    """A loop on the test's database and a fixed clock that records its evaluations."""

    def __init__(
        self, settings: Settings, pool: AsyncConnectionPool[AsyncConn], **options: object
    ) -> None:
        super().__init__(
            database_url=settings.database_url,
            pool=pool,
            detectors=[],
            clock=ManualClock(NOW),
            rng=random.Random(1),
            sign="test",
            **options,  # type: ignore[arg-type]
        )
        self.calls: list[tuple[list[str], dict[str, datetime]]] = []
        self.focus: list[dict[str, set[str]]] = []
        self.triggers: list[tuple[str, bool]] = []
        self.new_data: list[dict[str, datetime | None]] = []
        self.delay = 0.0  # how long each evaluation takes
        self.running = 0
        self.most = 0  # evaluations under way at once, at most

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
        self.calls.append(([site_id], dict(since or {})))
        self.focus.append({k: set(v) for k, v in (focus or {}).items()})
        self.triggers.append((trigger, narrow))
        self.new_data.append(dict(new_data or {}))
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(self.delay)
        self.running -= 1
        return EvaluationResult()


async def _sites_with_devices(settings: Settings, prefix: str, n: int) -> list[str]:
    """n sites, each with one dish machine `{prefix}-dev-{i}`."""
    site_ids = [await make_site(settings, site_id=f"s-{prefix}-{i}") for i in range(n)]
    conn = await connect(settings.database_url)
    async with conn:
        for i, site_id in enumerate(site_ids):
            await devices_repo.insert_device(
                conn=conn,
                device_id=f"{prefix}-dev-{i}",
                site_id=site_id,
                kind="dish_machine",
                name=None,
                interval_s=10,
            )
    return site_ids


@pytest.mark.anyio
async def test_stream_evaluates_sites_in_arrival_order(settings: Settings) -> None:
    late = await make_site(settings, site_id="s-zz-first")
    early = await make_site(settings, site_id="s-aa-second")
    conn = await connect(settings.database_url)
    async with conn:
        for device_id, site_id in (("dz", late), ("da", early)):
            await devices_repo.insert_device(
                conn=conn,
                device_id=device_id,
                site_id=site_id,
                kind="dish_machine",
                name=None,
                interval_s=10,
            )
    pool = await open_pool(settings.database_url, min_size=1, max_size=2)
    try:
        loop = _Recording(
            settings,
            pool,
            debounce_s=0.01,
        )
        earliest_ms = int(NOW.timestamp() * 1000)
        loop._note("dz", earliest_ms)
        loop._note("da", None)
        loop._note("dz", earliest_ms - 1000)
        loop._wakeup.set()
        task = asyncio.create_task(loop.stream())
        for _ in range(200):
            if len(loop.calls) == 2:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await pool.close()
    assert [sites for sites, _ in loop.calls] == [[late], [early]]
    assert loop.calls[0][1] == {late: datetime.fromtimestamp(earliest_ms / 1000 - 1, UTC)}
    # Each site is judged for its devices with new data (a presence-only change counts), from
    # the earliest device time of what arrived.
    assert loop.focus[0] == {late: {"dz"}, early: {"da"}}
    assert loop.new_data[0] == {
        "dz": datetime.fromtimestamp(earliest_ms / 1000 - 1, UTC),
        "da": None,
    }
    assert loop.triggers[0] == ("stream", True)


@pytest.mark.anyio
async def test_the_scan_lets_the_stream_judge_new_data_first(settings: Settings) -> None:
    site_ids = await _sites_with_devices(settings, "scan", 3)
    pool = await open_pool(settings.database_url, min_size=1, max_size=3)
    try:
        loop = _Recording(
            settings,
            pool,
            debounce_s=0.05,
            scan_interval_s=3600,
        )
        loop._note("scan-dev-2", None)  # new data for the last site, before the scan starts
        loop._wakeup.set()
        tasks = [asyncio.create_task(loop.scan()), asyncio.create_task(loop.stream())]
        for _ in range(300):
            if len(loop.calls) >= 4:
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        await pool.close()
    # The stream's evaluation of the new data comes before any of the scan's.
    assert [sites for sites, _ in loop.calls][:2] == [[site_ids[2]], [site_ids[0]]]
    assert loop.focus[0] == {site_ids[2]: {"scan-dev-2"}}
    # The first scan after a start judges every device over its whole lookback.
    assert loop.triggers[1:4] == [("full_scan", False)] * 3


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 2, 3])
async def test_a_stream_round_overlaps_at_most_its_concurrency_of_sites(
    settings: Settings, concurrency: int
) -> None:
    site_ids = await _sites_with_devices(settings, "par", 5)
    pool = await open_pool(settings.database_url, min_size=1, max_size=2)
    try:
        loop = _Recording(
            settings,
            pool,
            concurrency=concurrency,
        )
        loop.delay = 0.02
        arrival = [4, 0, 3, 1, 2]
        await loop.stream_round({f"par-dev-{i}": None for i in arrival})
    finally:
        await pool.close()
    # Every site once, started in arrival order.
    assert [sites for sites, _ in loop.calls] == [[site_ids[i]] for i in arrival]
    assert loop.most == concurrency
    assert loop.running == 0


@pytest.mark.anyio
async def test_a_sharded_loop_streams_and_scans_only_its_own_sites(settings: Settings) -> None:
    site_ids = await _sites_with_devices(settings, "shard", 6)
    pool = await open_pool(settings.database_url, min_size=1, max_size=2)
    judged: dict[int, list[str]] = {}
    try:
        for index in range(2):
            loop = _Recording(
                settings,
                pool,
                concurrency=1,
                shard=Shard(index, 2),
            )
            await loop.stream_round({f"shard-dev-{i}": None for i in range(6)})
            streamed = [sites[0] for sites, _ in loop.calls]
            # Other shards' devices are no longer pending here once their sites are known.
            for i in range(6):
                loop._note(f"shard-dev-{i}", None)
            assert len(loop.take_pending()) == len(streamed)
            loop.calls.clear()
            await loop.scan_round(full=True)
            scanned = [sites[0] for sites, _ in loop.calls if sites[0] in site_ids]
            assert streamed == scanned == Shard(index, 2).select(site_ids)
            judged[index] = streamed
            # A full scan forgets which devices were foreign (a device may move site).
            loop._note("shard-dev-0", None)
            assert loop.take_pending() == {"shard-dev-0": None}
    finally:
        await pool.close()
    # The two processes between them judge every site, none twice.
    assert sorted(judged[0] + judged[1]) == sorted(site_ids)
    assert judged[0]
    assert judged[1]


def test_a_loop_needs_a_concurrency_of_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        DetectionLoop(
            database_url="postgresql://unused",
            pool=None,  # type: ignore[arg-type]
            detectors=[],
            clock=ManualClock(NOW),
            rng=random.Random(1),
            sign="test",
            concurrency=0,
        )
