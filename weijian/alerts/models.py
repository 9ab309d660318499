"""Shapes of the alerts domain: severities, rules, findings and alert records."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from itertools import chain, compress, groupby
from operator import attrgetter, itemgetter
from typing import Any, Literal, NamedTuple, Protocol, TypeVar, cast

from pydantic import BaseModel

from weijian.devices.kinds import DeviceKind, SiteKind
from weijian.telemetry import Event, Reading

_T = TypeVar("_T")
_METRIC = attrgetter("metric")

# (ts, seq, received_at): what identifies a message and when it came.
Stamp = tuple[datetime, int | None, datetime | None]
_STAMP = attrgetter("ts", "seq", "received_at")
_STAMP_TS = itemgetter(0)


def stamp_runs(rows: Iterable[Reading | Event]) -> list[Stamp]:
    """The rows' stamps in the order given, a run of equal stamps kept once: a message's
    readings share all three and lie side by side in time order. Runs in C."""
    return [stamp for stamp, _ in groupby(map(_STAMP, rows))]


def slice_stamps(runs: list[Stamp], start: datetime, end: datetime) -> list[Stamp]:
    """The part of `stamp_runs` of rows in device-time order that `stamp_runs` of the rows with
    device time in [start, end] gives: runs never span two device times."""
    lo = bisect_left(runs, start, key=_STAMP_TS)
    hi = bisect_right(runs, end, key=_STAMP_TS)
    return runs[lo:hi]


class Message(NamedTuple):
    """One message of a device: its seq, device time and earliest receive time (a tuple: a
    stream round reads hours of them per device)."""

    seq: int
    ts: datetime
    received_at: datetime | None
    # The same (seq, ts) came with different values (a replay that kept the time).
    conflict: bool = False

    @property
    def arrived(self) -> datetime:
        return self.received_at or self.ts


_UNSEEN = datetime.min.replace(tzinfo=UTC)
_MESSAGE_TS = attrgetter("ts")


def stored_messages(readings: list[Stamp], events: list[Stamp]) -> list[Message]:
    """The messages with a seq of stored data without conflicting copies, from the stamp runs
    of its readings and events, in (device time, seq) order: the store keeps one row per
    (metric, ts) and (type, ts), so no (seq, ts) holds two values for one name; only the
    earliest receive time of each message is to find. The messages of the rows with device
    time in [start, end] are the slice of these (`slice_messages`)."""
    received: dict[tuple[datetime, int], datetime | None] = {}
    for ts, seq, at in chain(readings, events):
        if seq is None:
            continue
        key = (ts, seq)
        held = received.get(key, _UNSEEN)
        if held is _UNSEEN or (at is not None and (held is None or at < held)):
            received[key] = at
    return [Message(seq, ts, received[ts, seq]) for ts, seq in sorted(received)]


def slice_messages(found: list[Message], start: datetime, end: datetime) -> list[Message]:
    """The part of `stored_messages` with device time in [start, end]."""
    lo = bisect_left(found, start, key=_MESSAGE_TS)
    hi = bisect_right(found, end, key=_MESSAGE_TS)
    return found[lo:hi]


def join_stamps(readings: list[Stamp], events: list[Stamp]) -> list[Stamp]:
    """`stamp_runs` of readings then events, from the runs of each."""
    if readings and events and readings[-1] == events[0]:
        return readings + events[1:]
    return readings + events


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    MAJOR = "major"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _RANK[self]


_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.MAJOR: 2, Severity.CRITICAL: 3}


class AlertStatus(StrEnum):
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


@dataclass(frozen=True)
class RuleSpec:
    """A rule of the catalogue (docs/rules.md): stable id, names and the source it applies."""

    id: str
    name_zh: str
    name_en: str
    source: str
    level: Literal["reg", "std", "local", "policy"]


@dataclass(frozen=True)
class DeviceData:
    """What a detector sees of one device: its recent readings and events, sorted by time."""

    device_id: str
    kind: DeviceKind
    readings: Sequence[Reading] = ()
    events: Sequence[Event] = ()
    # When the platform last heard from the device (receive time), if ever.
    last_seen: datetime | None = None
    online: bool | None = None
    # True when readings and events are each sorted by device time (as the loader returns them).
    ordered: bool = False
    # Resent copies whose values differ from the stored reading of the same (metric, ts): ingest
    # keeps them out of `readings` (dead letters `conflicting_duplicate`); the replay rule
    # needs them.
    conflicts: Sequence[Reading] = ()
    # When `online` last changed (receive time). For a device that only sends events, the
    # moment the broker reported it gone (`online=false`) is the last it was known present.
    status_at: datetime | None = None
    # Views derived from the data (a metric's series, a time slice, ...), computed once per
    # object: a dozen detectors look at the same device in one evaluation. Never copied by
    # `dataclasses.replace`, so a changed copy starts empty. Callers treat what it holds as
    # read-only.
    _memo: dict[Hashable, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def memo(self, key: Hashable, compute: Callable[[], _T]) -> _T:
        """`compute()` once per key for this object; later calls return the same value."""
        try:
            return cast(_T, self._memo[key])
        except KeyError:
            value = self._memo[key] = compute()
            return value

    def has(self, key: Hashable) -> bool:
        """Whether a view is memoised already."""
        return key in self._memo

    def seed(self, key: Hashable, value: Any) -> None:
        """Provide a memoised view computed elsewhere (e.g. sliced from a larger window)."""
        self._memo[key] = value

    def series(self, metric: str) -> list[Reading]:
        """The readings of one metric, in the order held (read-only: shared between callers)."""
        return self.metric_index().get(metric, [])

    def metric_index(self) -> dict[str, list[Reading]]:
        """Metric → its readings in the order held (read-only)."""

        def split() -> dict[str, list[Reading]]:
            # A pass per metric, each in C (a device has a handful of metrics).
            names = list(map(_METRIC, self.readings))
            return {
                name: list(compress(self.readings, map(name.__eq__, names)))
                for name in dict.fromkeys(names)
            }

        return self.memo("by_metric", split)


@dataclass(frozen=True)
class SiteData:
    """A site with the devices a detector needs, and the profile (limits) in force."""

    site_id: str
    site_kind: SiteKind
    devices: Mapping[str, DeviceData]
    profile: Profile
    # Earliest device time of late data just received (a backlog): detectors look back from
    # there as well as from `now`, so old data arriving late is still judged.
    late_since: datetime | None = None
    # The devices this evaluation is about (those with new data), or None for all of them: a
    # per-device detector judges only these; a detector across devices (release, daily UV)
    # runs when one of them is of its kinds. The scheduled scan judges every device.
    focus: frozenset[str] | None = None
    # (rule id, device id) → the earliest device time whose verdict may have changed since the
    # rule last judged the device: the device's earliest new data, or the time of that last
    # judgement, whichever is earlier. A detector with a horizon judges from there back only
    # as far as its episodes reach (docs/scaling.md, "Detectors"); a pair not in it is judged
    # over the whole lookback, and so is everything when it is None (scans, backtests).
    fresh: Mapping[tuple[str, str], datetime] | None = None
    # (rule id, device id or None) of the site's active alerts: while an alert is active its
    # rule judges the device over the whole lookback, so clears and growing evidence are exact.
    active: frozenset[tuple[str, str | None]] = frozenset()

    def since(self, rule_id: str, device_id: str) -> datetime | None:
        """Where the rule's judgement of the device may have changed (see `fresh`), or None
        when it must judge the whole lookback."""
        if self.fresh is None or (rule_id, device_id) in self.active:
            return None
        return self.fresh.get((rule_id, device_id))

    def window_start(self, now: datetime, lookback: timedelta) -> datetime:
        """Start of the data a detector with `lookback` judges at `now`."""
        start = now - lookback
        return start if self.late_since is None else min(start, self.late_since - lookback)

    def of_kind(self, *kinds: DeviceKind) -> list[DeviceData]:
        return [d for d in self.devices.values() if d.kind in kinds]

    def judged(self, *kinds: DeviceKind) -> list[DeviceData]:
        """The devices of `kinds` a per-device detector judges in this evaluation."""
        return [d for d in self.of_kind(*kinds) if self.focus is None or d.device_id in self.focus]

    def focus_kinds(self) -> frozenset[DeviceKind]:
        """The kinds of the devices in focus (all the site's kinds without a focus)."""
        return frozenset(
            d.kind for d in self.devices.values() if self.focus is None or d.device_id in self.focus
        )


class Profile:
    """Limits in force for a site (defaults < site kind < site < device overrides)."""

    def __init__(
        self,
        values: Mapping[str, Any],
        device_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self._values = dict(values)
        self._device = {k: dict(v) for k, v in (device_overrides or {}).items()}

    def get(self, key: str, device_id: str | None = None) -> Any:
        if device_id is not None and key in self._device.get(device_id, {}):
            return self._device[device_id][key]
        if key not in self._values:
            raise KeyError(f"profile has no setting {key!r}")
        return self._values[key]

    def number(self, key: str, device_id: str | None = None) -> float:
        return float(self.get(key, device_id))

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def device_overrides(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._device.items()}


@dataclass(frozen=True)
class Finding:
    """A detector's verdict on one (rule, site, device) at evaluation time.

    `state="firing"` means the violation holds (or a closed episode, such as a bad batch,
    was found); `state="clear"` is positive evidence that the condition no longer holds
    (e.g. a later compliant batch), which lets the alert resolve.
    """

    rule: str
    site_id: str
    device_id: str | None
    state: Literal["firing", "clear"]
    severity: Severity = Severity.MAJOR
    started_at: datetime | None = None
    ended_at: datetime | None = None
    value: float | None = None
    limit: float | None = None
    unit: str | None = None
    summary: str = ""
    # Evidence window for plotting: (from, to) device time, and the metric concerned.
    evidence_from: datetime | None = None
    evidence_to: datetime | None = None
    evidence_metric: str | None = None
    # Identifies the episode (batch id, bag id, ...) so the same episode is not counted twice.
    episode: str | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


class Detector(Protocol):
    """A pure detector: site data, profile and the evaluation time in, findings out."""

    rule: RuleSpec
    device_kinds: frozenset[DeviceKind]
    # How much history (device time before `now`) the detector needs.
    lookback: timedelta
    # "device": judges the devices in focus one by one; "site": reads every device of its kinds
    # (what it judged, for `SiteData.fresh`).
    scope: Literal["device", "site"]

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]: ...


class Alert(BaseModel):
    """An alert as stored and served by the API."""

    id: int
    fingerprint: str
    rule: str
    severity: Severity
    status: AlertStatus
    site_id: str
    device_id: str | None
    started_at: datetime
    last_seen_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    value: float | None
    limit_value: float | None
    unit: str | None
    source: str
    summary: str
    evidence_from: datetime | None
    evidence_to: datetime | None
    evidence_metric: str | None
    occurrences: int
    details: dict[str, Any]
