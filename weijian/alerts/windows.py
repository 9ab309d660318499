"""Each device's recent data kept in memory between evaluations, so an evaluation reads only
what arrived since the last one instead of the detectors' whole lookback.

Without it every evaluation of a site loads hours of readings per device (the detectors'
lookback) although only the last seconds or minutes are new; that load was about a third of
the cost of an evaluation. The cache holds, per device, the rows of device time
[start, end] it last loaded; the next request for the device reads only rows with device
time after `end − overlap` and merges them (the overlap absorbs in-time rows committed out
of order). Data older than that arrives only as a late backlog, and ingest announces its
earliest device time (the `since` of the evaluation); such a device is loaded again in full.
A window reaching further back than what is held (the stream widens it by the earliest new
device time) reads just the missing head. What the detectors see is therefore exactly what
a full load would return.

Memory is bounded: past `max_rows` rows in all, the least recently used devices are dropped
(and loaded in full when next needed).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from weijian.alerts import repository
from weijian.db.connection import AsyncConn
from weijian.telemetry import Event, Reading

_Timed = TypeVar("_Timed", Reading, Event)

# Rows of device time within this of the last load's end are read again and merged: rows
# committed slightly out of order (several ingest workers, a batch in flight) are not missed.
DEFAULT_OVERLAP = timedelta(minutes=5)
DEFAULT_MAX_ROWS = 5_000_000


@dataclass(frozen=True)
class _Span:
    """Device times to read: (lo, hi], or [lo, hi] / [lo, hi) as the flags say."""

    lo: datetime
    hi: datetime
    lo_in: bool
    hi_in: bool = True

    def holds(self, ts: datetime) -> bool:
        above = ts >= self.lo if self.lo_in else ts > self.lo
        below = ts <= self.hi if self.hi_in else ts < self.hi
        return above and below


@dataclass
class _Held:
    start: datetime
    end: datetime
    readings: list[Reading]
    events: list[Event]

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events)


@dataclass
class CacheStats:
    full_loads: int = 0
    incremental_loads: int = 0
    rows_read: int = 0
    evictions: int = 0


class WindowCache:
    """Per-device windows of readings and events, extended incrementally (see module doc)."""

    def __init__(
        self, *, overlap: timedelta = DEFAULT_OVERLAP, max_rows: int = DEFAULT_MAX_ROWS
    ) -> None:
        if overlap < timedelta(0):
            raise ValueError("overlap must not be negative")
        self.overlap = overlap
        self.max_rows = max_rows
        self.stats = CacheStats()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._rows = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def rows(self) -> int:
        return self._rows

    def forget(self, device_ids: Sequence[str] | None = None) -> None:
        """Drop what is held (all devices when `device_ids` is None)."""
        for device_id in list(self._held) if device_ids is None else device_ids:
            held = self._held.pop(device_id, None)
            if held is not None:
                self._rows -= held.rows

    async def window(
        self,
        conn: AsyncConn,
        starts: Mapping[str, datetime],
        now: datetime,
        late_since: datetime | None = None,
        ahead: timedelta = timedelta(0),
    ) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
        """Each device's readings and events with device time in [its start, now], sorted by
        device time; `late_since` is the earliest device time of data just announced. With
        `ahead`, rows stamped in (now, now + ahead] (a clock running ahead) are read by the
        same queries and appended after them, without being held."""
        full: dict[str, _Span] = {}
        tail: dict[str, _Span] = {}
        head: dict[str, _Span] = {}
        for device_id, start in starts.items():
            held = self._held.get(device_id)
            if (
                held is None
                or now <= held.start
                or start > held.end - self.overlap
                or (late_since is not None and late_since <= held.end - self.overlap)
            ):
                full[device_id] = _Span(start, now + ahead, lo_in=True)
                continue
            # An evaluation at an earlier `now` than the last (the scan and the stream
            # interleave) keeps what is held up to its own overlap and re-reads after it.
            cut = max(min(held.end, now) - self.overlap, start)
            tail[device_id] = _Span(cut, now + ahead, lo_in=False)
            if start < held.start:  # the window reaches further back: read just that part
                head[device_id] = _Span(start, held.start, lo_in=True, hi_in=False)
        fresh_r, fresh_e = await self._read(conn, full)
        new_r, new_e = await self._read(conn, tail)
        head_r, head_e = await self._read(conn, head)
        self.stats.full_loads += len(full)
        self.stats.incremental_loads += len(tail)

        readings: dict[str, list[Reading]] = {}
        events: dict[str, list[Event]] = {}
        for device_id, start in starts.items():
            got_r, beyond_r = _split_at(
                (fresh_r if device_id in full else new_r).get(device_id, []), now
            )
            got_e, beyond_e = _split_at(
                (fresh_e if device_id in full else new_e).get(device_id, []), now
            )
            if device_id in full:
                held = _Held(start, now, got_r, got_e)
            else:
                old = self._held[device_id]
                cut = tail[device_id].lo
                held = _Held(
                    start,
                    now,
                    _merge(head_r.get(device_id, []), old.readings, start, cut, got_r),
                    _merge(head_e.get(device_id, []), old.events, start, cut, got_e),
                )
            self._store(device_id, held)
            # New lists when rows lie ahead: the held ones must not change.
            readings[device_id] = [*held.readings, *beyond_r] if beyond_r else held.readings
            events[device_id] = [*held.events, *beyond_e] if beyond_e else held.events
        self._evict(keep=set(starts))
        return readings, events

    async def _read(
        self, conn: AsyncConn, spans: Mapping[str, _Span]
    ) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
        """Each device's rows within its own span: one query per table for all the devices."""
        readings: dict[str, list[Reading]] = defaultdict(list)
        events: dict[str, list[Event]] = defaultdict(list)
        if not spans:
            return readings, events
        ids = list(spans)
        lo = min(s.lo for s in spans.values())
        hi = max(s.hi for s in spans.values())
        rows, items = await repository.window_rows(conn=conn, device_ids=ids, start=lo, end=hi)
        for r in rows:
            if spans[r.device_id].holds(r.ts):
                readings[r.device_id].append(r)
        for e in items:
            if spans[e.device_id].holds(e.ts):
                events[e.device_id].append(e)
        self.stats.rows_read += sum(map(len, readings.values())) + sum(map(len, events.values()))
        return readings, events

    def _store(self, device_id: str, held: _Held) -> None:
        old = self._held.pop(device_id, None)
        if old is not None:
            self._rows -= old.rows
        self._held[device_id] = held  # most recently used last
        self._rows += held.rows

    def _evict(self, keep: set[str]) -> None:
        while self._rows > self.max_rows and self._held:
            device_id = next(iter(self._held))
            if device_id in keep:
                break  # everything older is in use right now
            self.forget([device_id])
            self.stats.evictions += 1


def _split_at(rows: list[_Timed], now: datetime) -> tuple[list[_Timed], list[_Timed]]:
    """Rows (sorted by device time) up to `now`, and those after it."""
    i = bisect_right(rows, now, key=lambda x: x.ts)
    return (rows, []) if i == len(rows) else (rows[:i], rows[i:])


def _merge(
    head: list[_Timed],
    held: list[_Timed],
    start: datetime,
    cut: datetime,
    tail: list[_Timed] | None,
) -> list[_Timed]:
    """`head` (rows before what was held), `held` from `start` up to and including `cut`, then
    `tail` (rows after `cut`): a new list — the previous one may be in a detector's hands."""
    lo = bisect_left(held, start, key=lambda x: x.ts)
    hi = bisect_left(held, cut, key=lambda x: x.ts)
    # Rows at exactly `cut` were read before and are not re-read (`tail` starts after it).
    while hi < len(held) and held[hi].ts == cut:
        hi += 1
    out = list(head)
    out.extend(held[lo:hi])
    out.extend(tail or ())
    return out
