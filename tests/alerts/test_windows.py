"""The detectors' window cache returns what a full load returns, reading only what is new."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from weijian.alerts import repository
from weijian.alerts.models import stamp_runs, stored_messages
from weijian.alerts.windows import Window, WindowCache
from weijian.config import Settings
from weijian.db.connection import AsyncConn, connect
from weijian.telemetry import Event, Reading

T0 = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
LOOKBACK = timedelta(hours=1)
DEVICES = ("dev-a", "dev-b")


def insert(settings: Settings, readings: Iterable[Reading], events: Iterable[Event] = ()) -> None:
    with psycopg.connect(settings.database_url) as conn:
        conn.cursor().executemany(
            "INSERT INTO readings (ts, device_id, metric, value, seq, received_at)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            [(r.ts, r.device_id, r.metric, r.value, r.seq, r.received_at) for r in readings],
        )
        conn.cursor().executemany(
            "INSERT INTO events (ts, device_id, type, data, seq, received_at)"
            " VALUES (%s, %s, %s, '{}', %s, %s)",
            [(e.ts, e.device_id, e.type, e.seq, e.received_at) for e in events],
        )


def minute_of(device: str, minute: int, *, received: datetime | None = None) -> list[Reading]:
    ts = T0 + timedelta(minutes=minute)
    return [
        Reading(ts, device, metric, float(minute), minute, received or ts)
        for metric in ("temp_c", "humidity_pct")
    ]


async def full(
    conn: AsyncConn, starts: dict[str, datetime], now: datetime
) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
    """What a full load returns (the reference)."""
    readings: dict[str, list[Reading]] = {d: [] for d in starts}
    events: dict[str, list[Event]] = {d: [] for d in starts}
    rows = await repository.readings_between(
        conn=conn, device_ids=list(starts), start=min(starts.values()), end=now
    )
    for r in rows:
        if r.ts >= starts[r.device_id]:
            readings[r.device_id].append(r)
    for e in await repository.events_between(
        conn=conn, device_ids=list(starts), start=min(starts.values()), end=now
    ):
        if e.ts >= starts[e.device_id]:
            events[e.device_id].append(e)
    return readings, events


def keys(items: Iterable[Reading | Event]) -> list[tuple[object, ...]]:
    return sorted(
        (x.ts, x.device_id, x.metric if isinstance(x, Reading) else x.type) for x in items
    )


def check_views(window: Window, device: str) -> None:
    """The stamps and messages carried from the last window are those of the rows handed
    over."""
    runs = (stamp_runs(window.readings[device]), stamp_runs(window.events[device]))
    assert window.stamps[device] == runs
    assert window.messages[device] == stored_messages(*runs)


async def check_same(
    cache: WindowCache,
    conn: AsyncConn,
    now: datetime,
    late_since: datetime | None = None,
    *,
    starts: dict[str, datetime] | None = None,
    announced: dict[str, datetime] | None = None,
) -> None:
    starts = starts or dict.fromkeys(DEVICES, now - LOOKBACK)
    window = await cache.window(conn, starts, now, late_since, announced=announced)
    got_r, got_e = window
    want_r, want_e = await full(conn, starts, now)
    for device in DEVICES:
        assert keys(got_r[device]) == keys(want_r[device]), device
        assert keys(got_e[device]) == keys(want_e[device]), device
        check_views(window, device)
        times = [r.ts for r in got_r[device]]
        assert times == sorted(times), "windows stay in device-time order"


@pytest.mark.anyio
async def test_incremental_windows_equal_full_loads_and_read_only_the_new_rows(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 90) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        await check_same(cache, conn, T0 + timedelta(minutes=90))
        assert cache.stats.full_loads == 2
        first_read = cache.stats.rows_read

        # Ten more minutes arrive; the next evaluation reads the overlap and the new rows only.
        insert(settings, [r for m in range(90, 100) for d in DEVICES for r in minute_of(d, m)])
        await check_same(cache, conn, T0 + timedelta(minutes=100))
        assert cache.stats.incremental_loads == 2
        assert cache.stats.rows_read - first_read < first_read / 2

        # A row committed late but within the overlap (several workers) is not missed.
        late = T0 + timedelta(minutes=98, seconds=30)
        insert(settings, [Reading(late, "dev-a", "temp_c", 1.0, 990, T0 + timedelta(minutes=103))])
        insert(settings, [r for m in range(100, 105) for d in DEVICES for r in minute_of(d, m)])
        await check_same(cache, conn, T0 + timedelta(minutes=105))


@pytest.mark.anyio
async def test_a_late_backlog_announced_by_ingest_is_loaded_in_full(settings: Settings) -> None:
    # dev-b was silent for minutes 40-79 and its backlog arrives after the cache has moved on.
    insert(
        settings,
        [
            r
            for m in range(0, 80)
            for d in DEVICES
            if d == "dev-a" or m < 40
            for r in minute_of(d, m)
        ],
    )
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        await check_same(cache, conn, T0 + timedelta(minutes=80))
        backlog = [r for m in range(40, 80) for r in minute_of("dev-b", m)]
        backlog += [r for m in range(80, 85) for d in DEVICES for r in minute_of(d, m)]
        insert(
            settings,
            backlog,
            [
                Event(
                    T0 + timedelta(minutes=41), "dev-b", "reboot", {}, 1, T0 + timedelta(minutes=84)
                )
            ],
        )
        loads = cache.stats.full_loads
        await check_same(cache, conn, T0 + timedelta(minutes=85), late_since=backlog[0].ts)
        assert cache.stats.full_loads == loads + 2


@pytest.mark.anyio
async def test_a_window_reaching_further_back_reads_only_the_missing_head(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 120) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        now = T0 + timedelta(minutes=110)
        await cache.window(conn, dict.fromkeys(DEVICES, now - LOOKBACK), now)
        read = cache.stats.rows_read
        # The stream widens a window by the earliest new device time: ten minutes further back.
        wider = dict.fromkeys(DEVICES, now - LOOKBACK - timedelta(minutes=10))
        got_r, got_e = await cache.window(conn, wider, now)
        want_r, want_e = await full(conn, wider, now)
        for device in DEVICES:
            assert keys(got_r[device]) == keys(want_r[device])
            assert keys(got_e[device]) == keys(want_e[device])
        assert cache.stats.full_loads == 2
        # The ten minutes before, plus the overlap at the end: 2 devices × 2 metrics × 15.
        assert cache.stats.rows_read - read == 2 * 2 * 15


@pytest.mark.anyio
async def test_an_evaluation_at_an_earlier_time_still_gets_exactly_its_window(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 240) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        await check_same(cache, conn, T0 + timedelta(minutes=110))
        # A scan that began before the stream's last evaluation, then a rewind past the window.
        await check_same(cache, conn, T0 + timedelta(minutes=109, seconds=30))
        assert cache.stats.full_loads == 2
        await check_same(cache, conn, T0 + timedelta(minutes=40))
        assert cache.stats.full_loads == 4
        await check_same(cache, conn, T0 + timedelta(minutes=230))  # far ahead: all new
        assert cache.stats.full_loads == 6


@pytest.mark.anyio
async def test_memory_is_bounded_by_evicting_the_least_recently_used_devices(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 60) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache(max_rows=150)
    conn = await connect(settings.database_url)
    async with conn:
        now = T0 + timedelta(minutes=60)
        await cache.window(conn, {"dev-a": now - LOOKBACK}, now)
        await cache.window(conn, {"dev-b": now - LOOKBACK}, now)
        assert cache.stats.evictions == 1
        assert len(cache) == 1
        assert cache.rows <= 150
        await check_same(cache, conn, now)  # the evicted device is simply loaded again


def test_a_negative_overlap_is_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        WindowCache(overlap=-timedelta(seconds=1))


@pytest.mark.anyio
async def test_announced_data_is_read_from_its_time_and_nothing_else_again(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 60) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        await check_same(cache, conn, T0 + timedelta(minutes=60))
        read = cache.stats.rows_read
        starts = dict.fromkeys(DEVICES, T0)
        # dev-a sends a minute (announced); dev-b sends nothing: no overlap is read again.
        insert(settings, minute_of("dev-a", 60))
        now = T0 + timedelta(minutes=61)
        window = await cache.window(
            conn, starts, now, announced={"dev-a": T0 + timedelta(minutes=60)}
        )
        want_r, _ = await full(conn, starts, now)
        assert keys(window.readings["dev-a"]) == keys(want_r["dev-a"])
        assert cache.stats.rows_read - read == 2
        # A row of dev-b committed late, stamped well inside what is held, is read once its
        # announcement comes (the overlap would have missed it too: 30 min old).
        read = cache.stats.rows_read
        late = [Reading(T0 + timedelta(minutes=30, seconds=5), "dev-b", "temp_c", 9.0, 999, now)]
        insert(settings, late)
        now = T0 + timedelta(minutes=62)
        await check_same(cache, conn, now, starts=starts, announced={"dev-b": late[0].ts})
        # From its time on, not the whole window: dev-b's minutes 31-59 and the late row.
        assert cache.stats.full_loads == 2
        assert cache.stats.rows_read - read == 2 * 29 + 1


@pytest.mark.anyio
async def test_rows_ahead_of_now_come_with_their_stamps_but_are_not_held(
    settings: Settings,
) -> None:
    insert(settings, [r for m in range(0, 40) for d in DEVICES for r in minute_of(d, m)])
    cache = WindowCache()
    conn = await connect(settings.database_url)
    async with conn:
        for minute in (20, 25, 25, 30):  # a full load, then extensions (one at the same now)
            now = T0 + timedelta(minutes=minute)
            starts = dict.fromkeys(DEVICES, T0)
            window = await cache.window(conn, starts, now, ahead=timedelta(minutes=5))
            for device in DEVICES:
                assert window.readings[device][-1].ts == now + timedelta(minutes=5)
                check_views(window, device)
        # What lay ahead was not held: the next window reads it as new rows.
        read = cache.stats.rows_read
        await check_same(cache, conn, T0 + timedelta(minutes=36))
        # Minutes 26-36: the 5 min overlap before what is held (to minute 30), then new rows.
        assert cache.stats.rows_read - read == 2 * 2 * 11
