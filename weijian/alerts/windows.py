"""Each device's recent data kept in memory between evaluations, so an evaluation reads only
what arrived since the last one instead of the detectors' whole lookback.

Without it every evaluation of a site loads hours of readings per device (the detectors'
lookback) although only the last seconds or minutes are new; that load was about a third of
the cost of an evaluation. The cache holds, per device, the rows of device time
[start, end] it last loaded; the next request for the device reads only rows with device
time after `end − overlap` and merges them (the overlap absorbs in-time rows committed out
of order). Data older than that arrives only as a late backlog, and ingest announces its
earliest device time (the `since` of the evaluation); such a device, or a request reaching
further back than what is held, is loaded again in full. What the detectors see is
therefore exactly what a full load would return.

Memory is bounded: past `max_rows` rows in all, the least recently used devices are dropped
(and loaded in full when next needed).
"""

from __future__ import annotations

from bisect import bisect_left
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
    ) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
        """Each device's readings and events with device time in [its start, now], sorted by
        device time; `late_since` is the earliest device time of data just announced."""
        full: dict[str, datetime] = {}
        tail: dict[str, datetime] = {}
        for device_id, start in starts.items():
            held = self._held.get(device_id)
            if (
                held is None
                or start < held.start
                or now < held.end
                or (late_since is not None and late_since <= held.end - self.overlap)
            ):
                full[device_id] = start
            else:
                tail[device_id] = max(held.end - self.overlap, start)
        fresh_r, fresh_e = await self._read(conn, full, now, inclusive=True)
        new_r, new_e = await self._read(conn, tail, now, inclusive=False)
        self.stats.full_loads += len(full)
        self.stats.incremental_loads += len(tail)

        readings: dict[str, list[Reading]] = {}
        events: dict[str, list[Event]] = {}
        for device_id, start in starts.items():
            if device_id in full:
                held = _Held(start, now, fresh_r.get(device_id, []), fresh_e.get(device_id, []))
            else:
                old = self._held[device_id]
                cut = tail[device_id]
                held = _Held(
                    start,
                    now,
                    _merge(old.readings, start, cut, new_r.get(device_id, [])),
                    _merge(old.events, start, cut, new_e.get(device_id, [])),
                )
            self._store(device_id, held)
            readings[device_id] = held.readings
            events[device_id] = held.events
        self._evict(keep=set(starts))
        return readings, events

    async def _read(
        self, conn: AsyncConn, after: Mapping[str, datetime], now: datetime, *, inclusive: bool
    ) -> tuple[dict[str, list[Reading]], dict[str, list[Event]]]:
        """Rows of each device after its own time (from it, when `inclusive`) up to `now`:
        one query per table for all the devices."""
        readings: dict[str, list[Reading]] = defaultdict(list)
        events: dict[str, list[Event]] = defaultdict(list)
        if not after:
            return readings, events
        ids, first = list(after), min(after.values())
        for r in await repository.readings_between(conn=conn, device_ids=ids, start=first, end=now):
            if r.ts > after[r.device_id] or (inclusive and r.ts == after[r.device_id]):
                readings[r.device_id].append(r)
        for e in await repository.events_between(conn=conn, device_ids=ids, start=first, end=now):
            if e.ts > after[e.device_id] or (inclusive and e.ts == after[e.device_id]):
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


def _merge(held: list[_Timed], start: datetime, cut: datetime, new: list[_Timed]) -> list[_Timed]:
    """`held` from `start` up to and including `cut`, then `new` (rows after `cut`): a new
    list — the previous one may still be in a detector's hands."""
    lo = bisect_left(held, start, key=lambda x: x.ts)
    hi = bisect_left(held, cut, key=lambda x: x.ts)
    # Rows at exactly `cut` were read before and are not re-read (`new` starts after it).
    while hi < len(held) and held[hi].ts == cut:
        hi += 1
    out = held[lo:hi]
    out.extend(new)
    return out
