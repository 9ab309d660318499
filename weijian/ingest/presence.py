"""How often a device's presence row is written: status changes at once, activity at most once
per refresh interval.

A row update per device per batch cost PostgreSQL more than the readings themselves (an UPDATE
writes a new row version and its WAL): with 2,000 devices and a batch every 50 ms that is
tens of thousands of row versions a second for a `last_seen_at` that offline detection judges
in minutes. The throttle keeps what it held back (folded per device) and hands it out once the
device's interval has passed, when the device is heard again, or when the worker is idle, so
the stored presence is never more than one interval behind and exact once ingest is quiet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from datetime import datetime

from weijian.ingest.repository import Presence

# Forget the write times of this many devices at most (junk device ids must not grow memory).
_MAX_TRACKED = 200_000


def _later(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def merge(held: Presence, new: Presence) -> Presence:
    """`held` then `new` of the same device, as one update."""
    newer_status = new.status_at is not None and (
        held.status_at is None or new.status_at >= held.status_at
    )
    earliest = held.earliest if new.earliest is None else new.earliest
    if held.earliest is not None and new.earliest is not None:
        earliest = min(held.earliest, new.earliest)
    last_seq = new.last_seq if new.last_seq is not None else held.last_seq
    if held.last_seq is not None and new.last_seq is not None:
        last_seq = max(held.last_seq, new.last_seq)
    return replace(
        new,
        last_seen_at=_later(held.last_seen_at, new.last_seen_at),
        last_seq=last_seq,
        online=new.online if newer_status else held.online,
        status_at=new.status_at if newer_status else held.status_at,
        earliest=earliest,
    )


class PresenceThrottle:
    """Decides which presence updates a batch writes (`refresh_s` 0: every one)."""

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._written: dict[str, float] = {}
        self._held: dict[str, Presence] = {}
        self._swept = float("-inf")

    @property
    def held(self) -> int:
        """Devices with an update held back."""
        return len(self._held)

    def due(self, heard: Iterable[Presence], now: float) -> list[Presence]:
        """The updates to write with this batch (`now`: a monotonic clock); the rest is held.

        A status (online/offline) is written at once; activity once the device's interval has
        passed since its last write. Held updates whose interval has passed go out too (checked
        every half interval), so a device that fell silent still gets its last activity."""
        if len(self._written) > _MAX_TRACKED:
            self._written.clear()
        out: dict[str, Presence] = {}
        for p in heard:
            held = self._held.pop(p.device_id, None)
            merged = p if held is None else merge(held, p)
            last = self._written.get(p.device_id)
            if p.online is not None or last is None or now - last >= self.refresh_s:
                out[p.device_id] = merged
                self._written[p.device_id] = now
            else:
                self._held[p.device_id] = merged
        if self._held and now - self._swept >= self.refresh_s / 2:
            self._swept = now
            ripe = [d for d in self._held if now - self._written.get(d, -1e18) >= self.refresh_s]
            for device_id in ripe:
                out[device_id] = self._held.pop(device_id)
                self._written[device_id] = now
        return list(out.values())

    def flush(self, now: float) -> list[Presence]:
        """Everything held back (the worker is idle: write it now)."""
        out = list(self._held.values())
        for p in out:
            self._written[p.device_id] = now
        self._held.clear()
        return out

    def restore(self, updates: Iterable[Presence]) -> None:
        """Hold updates again whose write failed (the database went away)."""
        for p in updates:
            held = self._held.get(p.device_id)
            self._held[p.device_id] = p if held is None else merge(p, held)
