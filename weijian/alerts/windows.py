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

With the rows the cache keeps their message stamps (`models.stamp_runs`), extended the same
way: what was held keeps its stamps and only the rows read anew are stamped, instead of
every evaluation stamping hours of rows again (the per-message rules read them).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import OrderedDict, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from weijian.alerts import repository
from weijian.alerts.models import (
    Message,
    Stamp,
    slice_messages,
    slice_stamps,
    stamp_runs,
    stored_messages,
)
from weijian.db.connection import AsyncConn
from weijian.telemetry import Event, Reading

_Timed = TypeVar("_Timed", Reading, Event)

# Rows of device time within this of the last load's end are read again and merged: rows
# committed slightly out of order (several ingest workers, a batch in flight) are not missed.
DEFAULT_OVERLAP = timedelta(minutes=5)
DEFAULT_MAX_ROWS = 5_000_000
# The store's time resolution: rows after `t − _TICK` are those at `t` or later.
_TICK = timedelta(microseconds=1)


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
    # stamp_runs of readings and of events, and the stored_messages they make
    stamps_r: list[Stamp]
    stamps_e: list[Stamp]
    messages: list[Message]

    @property
    def rows(self) -> int:
        return len(self.readings) + len(self.events)


@dataclass
class Window:
    """What `WindowCache.window` returns: per device its readings and events in device-time
    order, their `stamp_runs` (readings', events') and `stored_messages`. Unpacks as
    (readings, events)."""

    readings: dict[str, list[Reading]]
    events: dict[str, list[Event]]
    stamps: dict[str, tuple[list[Stamp], list[Stamp]]]
    messages: dict[str, list[Message]]

    def __iter__(self) -> Iterator[Any]:
        yield self.readings
        yield self.events


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
        *,
        ahead: timedelta = timedelta(0),
        announced: Mapping[str, datetime | None] | None = None,
    ) -> Window:
        """Each device's readings and events with device time in [its start, now], sorted by
        device time; `late_since` is the earliest device time of data just announced. With
        `ahead`, rows stamped in (now, now + ahead] (a clock running ahead) are read by the
        same queries and appended after them, without being held.

        `announced` (the stream's: device → earliest device time of the data ingest announced
        since the last evaluation, None for presence only) replaces the overlap: a device's
        rows are read again only from its announced time, and a device not announced only
        after what is held. Rows committed but not yet announced when the caller took the
        announcements may then be missing, until their announcement comes (the next stream
        round reads from it); the eval harness hears every announcement before it judges."""
        full: dict[str, _Span] = {}
        tail: dict[str, _Span] = {}
        head: dict[str, _Span] = {}
        for device_id, start in starts.items():
            held = self._held.get(device_id)
            cut = None if held is None else self._cut(held, device_id, start, now, announced)
            if (
                held is None
                or cut is None
                or now <= held.start
                or (
                    announced is None
                    and late_since is not None
                    and late_since <= held.end - self.overlap
                )
            ):
                full[device_id] = _Span(start, now + ahead, lo_in=True)
                continue
            tail[device_id] = _Span(cut, now + ahead, lo_in=False)
            if start < held.start:  # the window reaches further back: read just that part
                head[device_id] = _Span(start, held.start, lo_in=True, hi_in=False)
        fresh_r, fresh_e = await self._read(conn, full)
        new_r, new_e = await self._read(conn, tail)
        head_r, head_e = await self._read(conn, head)
        self.stats.full_loads += len(full)
        self.stats.incremental_loads += len(tail)

        out = Window({}, {}, {}, {})
        for device_id, start in starts.items():
            got_r, beyond_r = _split_at(
                (fresh_r if device_id in full else new_r).get(device_id, []), now
            )
            got_e, beyond_e = _split_at(
                (fresh_e if device_id in full else new_e).get(device_id, []), now
            )
            runs_r, runs_e = stamp_runs(got_r), stamp_runs(got_e)
            if device_id in full:
                held = _Held(
                    start, now, got_r, got_e, runs_r, runs_e, stored_messages(runs_r, runs_e)
                )
            else:
                # What was held keeps its stamps and messages; only the rows read are new.
                # The three parts' device times do not overlap, so neither do their stamp
                # runs or messages (a message is one (ts, seq)).
                old = self._held[device_id]
                cut = tail[device_id].lo
                before_r, before_e = head_r.get(device_id, []), head_e.get(device_id, [])
                head_runs_r, head_runs_e = stamp_runs(before_r), stamp_runs(before_e)
                held = _Held(
                    start,
                    now,
                    _merge(before_r, old.readings, start, cut, got_r),
                    _merge(before_e, old.events, start, cut, got_e),
                    [*head_runs_r, *slice_stamps(old.stamps_r, start, cut), *runs_r],
                    [*head_runs_e, *slice_stamps(old.stamps_e, start, cut), *runs_e],
                    [
                        *stored_messages(head_runs_r, head_runs_e),
                        *slice_messages(old.messages, start, cut),
                        *stored_messages(runs_r, runs_e),
                    ],
                )
            self._store(device_id, held)
            # New lists when rows lie ahead: the held ones must not change.
            if beyond_r or beyond_e:
                ahead_r, ahead_e = stamp_runs(beyond_r), stamp_runs(beyond_e)
                out.readings[device_id] = [*held.readings, *beyond_r]
                out.events[device_id] = [*held.events, *beyond_e]
                out.stamps[device_id] = ([*held.stamps_r, *ahead_r], [*held.stamps_e, *ahead_e])
                out.messages[device_id] = [*held.messages, *stored_messages(ahead_r, ahead_e)]
            else:
                out.readings[device_id] = held.readings
                out.events[device_id] = held.events
                out.stamps[device_id] = (held.stamps_r, held.stamps_e)
                out.messages[device_id] = held.messages
        self._evict(keep=set(starts))
        return out

    def _cut(
        self,
        held: _Held,
        device_id: str,
        start: datetime,
        now: datetime,
        announced: Mapping[str, datetime | None] | None,
    ) -> datetime | None:
        """Device time after which the device's rows are read again (what is held up to it
        is kept), or None when what is held cannot be extended (a full load). An evaluation
        at an earlier `now` than the last (the scan and the stream interleave) keeps what is
        held up to its own `now`."""
        base = min(held.end, now)
        if announced is None:
            if start > held.end - self.overlap:
                return None
            return max(base - self.overlap, start)
        if start > held.end:
            return None
        earliest = announced.get(device_id)
        if earliest is not None and earliest <= base:
            base = earliest - _TICK  # rows stamped exactly then are read again too
            if base < held.start:
                return None  # late data from before what is held
        return max(base, start)

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
