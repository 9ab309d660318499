"""Judging only what changed gives the same violations as judging the whole lookback.

A simulated day with a fault of every kind the stream detectors judge is replayed minute by
minute, as the platform receives it (device time, receive time, backlogs after an outage,
a clock that jumps). At every step each site is judged twice: over the whole lookback (what a
scan does), and from each detector's horizon on, given when every (rule, device) was last
judged and the earliest new data since (what the stream does, `SiteData.fresh`). Judged from
the horizon a detector must report no violation the whole lookback does not, and every
violation that is new or changed since the previous step, identically.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.simulator.helpers import hospital, plant, run, scenario
from weijian.alerts.detectors import catalogue
from weijian.alerts.detectors.common import current_state
from weijian.alerts.flows import AHEAD, kind_lookbacks
from weijian.alerts.freshness import Freshness
from weijian.alerts.models import Detector, DeviceData, Finding, SiteData
from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import DeviceKind, SiteKind
from weijian.simulator.engine import MemorySink
from weijian.simulator.scenario import Scenario
from weijian.simulator.timeutil import from_epoch
from weijian.telemetry import Event, Reading

STEP = timedelta(minutes=2)
LOOKBACK = timedelta(hours=13)
# The rules whose detectors judge from a horizon (the others always judge their whole lookback),
# in two groups checked apart (each a test of under a minute).
NARROWED = (
    "disinfection.hold_time_short",
    "disinfection.temperature_low",
    "disinfection.exposure_short",
    "data.out_of_range",
    "data.flatline",
    "waste.cold_storage_temp_high",
    "waste.door_open_long",
    "disinfection.released_undisinfected",
)
NARROWED_SEQ = ("data.sequence_gap", "data.replay")
# Judged on receive time: no horizon, but nothing to judge while present and not alerted.
NARROWED_PRESENCE = ("device.offline",)


SHIFTS = ["01:00-05:30", "06:30-11:30"]


def fault_day() -> Scenario:
    """Half a day with the stream rules' faults close together on three sites."""
    return scenario(
        [
            plant("p1", shifts=SHIFTS),
            plant("p2", shifts=SHIFTS),
            hospital("h1", profile={"waste.cold_storage_required": True}),
        ],
        [
            {"type": "under_temp", "at": "1h30m", "site": "p1", "device": "steam-1"},
            {"type": "no_heat", "at": "2h", "site": "p1", "device": "steam-2"},
            {"type": "short_hold", "at": "3h", "site": "p2", "device": "steam-1"},
            {"type": "conveyor_fast", "at": "2h", "site": "p2", "device": "dish-1"},
            {"type": "rinse_cold", "at": "4h", "site": "p1", "device": "dish-1"},
            {"type": "stuck_sensor", "at": "7h", "site": "p1", "device": "chlorine-1"},
            {"type": "stuck_sensor", "at": "7h", "site": "p2", "device": "dish-1"},
            {"type": "stuck_sensor", "at": "6h", "site": "h1", "device": "env-1"},
            {"type": "out_of_range", "at": "2h30m", "site": "p2", "device": "steam-2"},
            {"type": "out_of_range", "at": "8h", "site": "p1", "device": "dish-1"},
            {"type": "offline", "at": "9h", "site": "p1", "device": "steam-1"},
            {"type": "offline", "at": "9h30m", "site": "p2", "device": "dish-1"},
            {"type": "clock_skew", "at": "8h", "site": "p2", "device": "steam-2"},
            # A clock set back: later messages stamped before earlier ones.
            {
                "type": "clock_skew",
                "at": "6h",
                "site": "p1",
                "device": "line-1",
                "params": {"offset": "-30m"},
            },
            {"type": "reboot", "at": "5h", "site": "p2", "device": "dish-1"},
            {"type": "chlorine_low", "at": "3h", "site": "p2", "device": "chlorine-1"},
            {"type": "packing_without_disinfection", "at": "7h", "site": "p2", "device": "line-1"},
            {"type": "cold_room_warm", "at": "2h", "site": "h1", "device": "env-1"},
            {"type": "door_open", "at": "8h", "site": "h1", "device": "env-1"},
            {"type": "sequence_gap", "at": "3h10m", "site": "p1", "device": "steam-2"},
            {"type": "sequence_gap", "at": "6h", "site": "h1", "device": "env-1"},
            {"type": "replay", "at": "4h20m", "site": "p1", "device": "chlorine-1"},
            {"type": "replay", "at": "10h", "site": "p2", "device": "line-1"},
            {
                "type": "replay",
                "at": "5h",
                "site": "p2",
                "device": "steam-1",
                "params": {"variant": "new_values"},
            },
        ],
        duration="12h",
        seed=11,
    )


@dataclass
class _Store:
    """One device's data as the platform stores it: unique (metric, ts) and (type, ts), the
    first copy kept; a later copy with other values is a conflict (dead-lettered)."""

    kind: DeviceKind
    readings: list[Reading] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    conflicts: list[Reading] = field(default_factory=list)
    values: dict[tuple[str, datetime], float] = field(default_factory=dict)
    event_keys: set[tuple[str, datetime]] = field(default_factory=set)

    def add_reading(self, reading: Reading) -> None:
        key = (reading.metric, reading.ts)
        if key in self.values:
            if self.values[key] != reading.value:
                self.conflicts.append(reading)
            return
        self.values[key] = reading.value
        bisect.insort(self.readings, reading, key=lambda r: r.ts)

    def add_event(self, event: Event) -> None:
        key = (event.type, event.ts)
        if key not in self.event_keys:
            self.event_keys.add(key)
            bisect.insort(self.events, event, key=lambda e: e.ts)


def _when(value: Any) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else from_epoch(value / 1000)


def arrivals(sc: Scenario, sink: MemorySink) -> Iterator[tuple[datetime, str, list[Any]]]:
    """(receive time, device, stored rows) in the order the platform receives them."""
    for message in sink.messages:
        if message.channel not in ("telemetry", "events"):
            continue
        received = from_epoch(message.at)
        body = orjson.loads(message.payload)
        rows: list[Any] = []
        for item in body if isinstance(body, list) else [body]:
            ts = _when(item["ts"])
            if message.channel == "telemetry":
                rows += [
                    Reading(ts, message.device, m, float(v), item["seq"], received)
                    for m, v in item["metrics"].items()
                ]
            else:
                rows.append(
                    Event(ts, message.device, item["type"], item["data"], item["seq"], received)
                )
        yield received, message.device, rows


def _key(finding: Finding) -> tuple[Any, ...]:
    details = orjson.dumps(finding.details, option=orjson.OPT_SORT_KEYS)
    return (*(getattr(finding, f) for f in _FIELDS), details)


def _unnamed(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A finding's key without its episode name."""
    at = _FIELDS.index("episode")
    return key[:at] + key[at + 1 :]


_FIELDS = (
    "rule",
    "site_id",
    "device_id",
    "state",
    "severity",
    "started_at",
    "ended_at",
    "value",
    "limit",
    "unit",
    "summary",
    "evidence_from",
    "evidence_to",
    "evidence_metric",
    "episode",
)


def _unbounded(detector: Detector) -> Detector:
    for part in [detector, *getattr(detector, "parts", ())]:
        part.lookback = LOOKBACK
    return detector


def _describe(
    what: str, now: datetime, findings: list[Finding], fresh: dict[tuple[str, str], datetime]
) -> str:
    lines = [f"{what} at {now.isoformat()}:"]
    for f in findings:
        since = fresh.get((f.rule, f.device_id or ""))
        lines.append(f"  since={since} {f!r}")
    return "\n".join(lines)


def _site(
    sc: Scenario,
    key: str,
    stores: dict[str, _Store],
    *,
    now: datetime,
    late: datetime | None,
    lookback: dict[DeviceKind, timedelta],
) -> SiteData:
    """The site as the platform loads it: each device's data from its kind's longest lookback
    (earlier for late data) to a day ahead of `now`."""
    spec = sc.site(key)
    devices = {}
    for device in spec.devices:
        ref = f"{key}/{device.key}"
        store = stores[ref]
        start = now - lookback[device.kind]
        if late is not None:
            start = min(start, late - lookback[device.kind])
        end = now + AHEAD
        r0 = bisect.bisect_left(store.readings, start, key=lambda r: r.ts)
        r1 = bisect.bisect_right(store.readings, end, key=lambda r: r.ts)
        e0 = bisect.bisect_left(store.events, start, key=lambda e: e.ts)
        e1 = bisect.bisect_right(store.events, end, key=lambda e: e.ts)
        devices[ref] = DeviceData(
            ref,
            device.kind,
            store.readings[r0:r1],
            store.events[e0:e1],
            last_seen=max(
                (r.received_at for r in store.readings[-50:] if r.received_at), default=None
            ),
            ordered=True,
            conflicts=[c for c in store.conflicts if start <= c.ts <= now],
        )
    profile = build_profile(SiteKind(spec.kind), sc.site_profile(key))
    return SiteData(key, spec.kind, devices, profile, late_since=late)


def _firing(findings: Sequence[Finding]) -> dict[tuple[Any, ...], Finding]:
    return {_key(f): f for f in findings if f.state == "firing"}


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "rules",
    [NARROWED, NARROWED_SEQ, NARROWED_PRESENCE],
    ids=["process", "seq", "presence"],
)
def test_judging_from_the_horizon_finds_every_new_violation_and_nothing_else(
    rules: tuple[str, ...],
) -> None:
    sc = fault_day()
    _sim, sink = run(sc)
    # Lookbacks longer than the day: the whole lookback's edge never moves into the data, so
    # what a step changes is what new data and passing time change (the edge only renames or
    # trims old episodes, which the lifecycle takes for the old news they are).
    detectors = [_unbounded(d) for d in catalogue() if d.rule.id in rules]
    lookback = kind_lookbacks(detectors)
    stores = {f"{s.key}/{d.key}": _Store(d.kind) for s in sc.sites for d in s.devices}
    incoming = list(arrivals(sc, sink))
    freshness = Freshness()
    previous: dict[str, dict[tuple[Any, ...], Finding]] = {}
    # The (rule, device) pairs whose alert would be active: firing after the previous step
    # (an open violation, or a closed one with no later clear). The platform judges those
    # over the whole lookback, as here.
    active: dict[str, frozenset[tuple[str, str | None]]] = {}
    now = sc.start
    i = 0
    compared: dict[str, int] = defaultdict(int)
    narrowed: dict[str, int] = defaultdict(int)
    while now < sc.end:
        now += STEP
        new: dict[str, datetime] = {}
        while i < len(incoming) and incoming[i][0] <= now:
            _, ref, rows = incoming[i]
            i += 1
            for row in rows:
                if isinstance(row, Reading):
                    stores[ref].add_reading(row)
                else:
                    stores[ref].add_event(row)
                new[ref] = min(row.ts, new.get(ref, row.ts))
        for spec in sc.sites:
            refs = [f"{spec.key}/{d.key}" for d in spec.devices]
            late = min((new[d] for d in refs if d in new), default=None)
            site = _site(sc, spec.key, stores, now=now, late=late, lookback=lookback)
            pairs = freshness.pairs(site, detectors)
            full = [f for d in detectors for f in d(site, now)]
            fresh = freshness.fresh(pairs, new)
            part_site = replace(site, fresh=fresh, active=active.get(spec.key, frozenset()))
            part = [f for d in detectors for f in d(part_site, now)]
            freshness.mark(pairs, now)
            whole, narrow = _firing(full), _firing(part)
            extra = [narrow[k] for k in narrow.keys() - whole.keys()]
            assert not extra, _describe("reported only from the horizon", now, extra, fresh)
            before = {_unnamed(k) for k in previous.get(spec.key, {})}
            changed = {k for k in whole if _unnamed(k) not in before}
            missed = [whole[k] for k in changed - narrow.keys()]
            assert not missed, _describe("missed from the horizon", now, missed, fresh)
            previous[spec.key] = whole
            active[spec.key] = frozenset(
                (rule, device)
                for (device, rule), f in current_state(full).items()
                if f.state == "firing"
            )
            for f in whole.values():
                compared[f.rule] += 1
            for (rule, _device), since in fresh.items():
                narrowed[rule] += since is not None
    # The day exercised every rule with a horizon.
    for rule in rules:
        assert compared[rule] > 0, rule
        assert narrowed[rule] > 0, rule
