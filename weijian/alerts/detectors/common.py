"""Building blocks shared by the detectors: per-device iteration, spells, clears, local time.

Conventions every detector follows (docs/rules.md, "Episodes and clears"):

- A firing finding is either *open* (`ended_at is None`: the violation still holds at the last
  data point) or *closed* (a past episode such as a bad batch, `ended_at` set).
- A clear finding is positive evidence that the condition no longer holds. A detector never
  emits a clear for a (device, rule) while it emits an open firing for it in the same run.
- A closed episode ends (`ended_at`) at its last bad sample, so the sample that ended it is
  later evidence for the clear.
- The state of a (device, rule) after one run is therefore: firing if any open firing, else the
  finding with the latest evidence time (`ended_at`, else `evidence_to`; firing wins a tie), the
  order `alerts/service.py` applies. `current_state` implements this.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Literal, NamedTuple, TypeVar
from zoneinfo import ZoneInfo

from weijian.alerts.models import (
    DeviceData,
    Finding,
    Message,
    RuleSpec,
    Severity,
    SiteData,
    Stamp,
    join_stamps,
    slice_messages,
    slice_stamps,
    stamp_runs,
    stored_messages,
)
from weijian.devices.kinds import DeviceKind
from weijian.telemetry import Event, Reading

_Timed = TypeVar("_Timed", Reading, Event)

LOCAL_TZ = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Horizon:
    """Where a detector's judgement of a device starts when only part of it may have changed.

    `start`: judge the device's data from here on; everything that may have changed since the
    rule last judged the device (`SiteData.since`) lies after it, whole. `slack`: a firing
    finding that begins less than this after `start` may reach back before it (a spell whose
    earlier samples were cut off); the device is then judged over the whole lookback instead.
    """

    start: datetime
    slack: timedelta = timedelta(0)

    def cuts(self, finding: Finding) -> bool:
        """Whether the finding may have been cut off at `start`."""
        begins = finding.started_at or finding.evidence_from or finding.evidence_to
        return begins is None or begins - self.start < self.slack


class DeviceDetector:
    """Base of detectors that judge each device of some kinds on its own."""

    rule: RuleSpec
    device_kinds: frozenset[DeviceKind]
    lookback: timedelta
    scope: Literal["device", "site"] = "device"
    # Judge only data with device time in [now − lookback, now]; detectors that work on receive
    # time (presence, clock skew) window themselves.
    by_device_time: bool = True

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        findings: list[Finding] = []
        for device in site.judged(*sorted(self.device_kinds)):
            findings.extend(settle(self._device_findings(site, device, now)))
        return findings

    def _device_findings(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        if self.by_device_time:
            now = device_now(site, device, now)
        start = site.window_start(now, self.lookback)
        since = site.since(self.rule.id, device.device_id)
        if since is not None and self.by_device_time and device.ordered:
            horizon = self.horizon(site, device, since, now)
            if horizon is not None and horizon.start > start:
                part = self.judge(site, within(device, horizon.start, now), now)
                # No alert of the rule is active for the device (`SiteData.since`): clears
                # have nothing to resolve, only violations are news.
                firing = [f for f in part if f.state == "firing"]
                if not any(horizon.cuts(f) for f in firing):
                    return firing
        recent = within(device, start, now) if self.by_device_time else device
        return self.judge(site, recent, now)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        """Where judging may start given that nothing before `since` changed (None: judge the
        whole lookback). Every firing finding the whole lookback would give that may differ
        from the last judgement must lie after the horizon, whole."""
        return None

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        raise NotImplementedError


# How many of a device's latest readings (in device time) its clock's lead is read from.
_LEAD_SAMPLES = 8


def stamps(device: DeviceData) -> list[Stamp]:
    """The device's messages as (ts, seq, received_at): its readings', then its events', in the
    order held, a run of equal stamps kept once. A message's readings share all three and lie
    side by side in time order, so the rules that look at messages rather than values (clock,
    sequence, presence) loop over messages, not over a cabinet's four or five rows per
    message. Data not in time order may repeat a stamp; callers take sets, maxima or minima,
    which repeats do not change. Read-only: shared by the detectors that ask for the same
    device. The window cache hands them over with the data (`stamp_parts`), carried from one
    evaluation to the next; a slice of a device takes its part of them."""
    return device.memo("stamps", lambda: join_stamps(*stamp_parts(device)))


def stored_messages_of(device: DeviceData) -> list[Message]:
    """`models.stored_messages` of the device (stored data without conflicting copies; the
    window cache hands them over with the data). Read-only."""
    return device.memo("stored_messages", lambda: stored_messages(*stamp_parts(device)))


def stamp_parts(device: DeviceData) -> tuple[list[Stamp], list[Stamp]]:
    """`stamp_runs` of the device's readings and of its events (read-only)."""
    return device.memo(
        "stamp_parts", lambda: (stamp_runs(device.readings), stamp_runs(device.events))
    )


def device_now(site: SiteData, device: DeviceData, now: datetime) -> datetime:
    """`now` on the device's own clock: `now` plus how far its clock is seen to run ahead.

    Rules on device time judge each device up to its own present. Cut at the platform's `now`,
    a cabinet whose clock runs 25 s ahead would have a batch that ended (and was received) a
    moment ago stamped "in the future", judged only 25 s later. The lead is the largest
    `ts − received_at` among the device's last few readings and events received by `now`:
    what its clock said when the platform heard it (transport delay makes it a slight
    underestimate). It is never negative (a clock behind needs no cut later than `now`: its
    data are all stamped before it) and at most `clock_skew.max_s`, so one wild timestamp
    moves the cut by no more than the skew the platform tolerates; beyond it `data.clock_skew`
    speaks. Backtests replay stored `received_at` with the data, so they see the same lead.
    """
    limit = seconds(site.profile.number("clock_skew.max_s", device.device_id))
    return now + device.memo(("lead", now, limit), lambda: _clock_lead(device, now, limit))


def _clock_lead(device: DeviceData, now: datetime, limit: timedelta) -> timedelta:
    return max(
        _lead_of(device.readings, device.ordered, now, limit),
        _lead_of(device.events, device.ordered, now, limit),  # event-only devices (scales)
    )


def _lead_of(items: Sequence[_Timed], ordered: bool, now: datetime, limit: timedelta) -> timedelta:
    if not ordered:
        items = sorted(items, key=lambda x: x.ts)
    # Items stamped further ahead than `limit` say nothing the limit would not cut, and items
    # received after `now` (a backtest loads them) had not arrived yet.
    i = bisect_right(items, now + limit, key=lambda x: x.ts)
    lead, seen = timedelta(0), 0
    for item in reversed(items[max(0, i - 4 * _LEAD_SAMPLES) : i]):
        if item.received_at is not None and item.received_at <= now:
            lead = max(lead, item.ts - item.received_at)
            seen += 1
            if seen == _LEAD_SAMPLES:
                break
    return min(lead, limit)


def within(device: DeviceData, start: datetime, end: datetime) -> DeviceData:
    """The device's data with device time in [start, end]: a detector judges exactly its own
    lookback, however much history the caller loaded (it loads the most any detector needs).
    Detectors with the same lookback share one slice (and the views memoised on it)."""
    return device.memo(("within", start, end), lambda: _within(device, start, end))


def _within(device: DeviceData, start: datetime, end: datetime) -> DeviceData:
    part = replace(
        device,
        readings=_slice(device.readings, start, end, device.ordered),
        events=_slice(device.events, start, end, device.ordered),
        conflicts=_slice(device.conflicts, start, end, ordered=False),
    )
    if device.ordered and device.has("by_metric"):
        # Each metric's series of the part is the same slice of the whole's (both in time
        # order): cheaper than splitting the part's readings again.
        whole = device.metric_index()
        part.seed("by_metric", {m: _slice(rs, start, end, True) for m, rs in whole.items()})
    if device.ordered and device.has("stored_messages"):
        part.seed("stored_messages", slice_messages(stored_messages_of(device), start, end))
    if device.ordered and device.has("stamp_parts"):
        runs_r, runs_e = stamp_parts(device)
        part.seed(
            "stamp_parts",
            (slice_stamps(runs_r, start, end), slice_stamps(runs_e, start, end)),
        )
    return part


def _slice(items: Sequence[_Timed], start: datetime, end: datetime, ordered: bool) -> list[_Timed]:
    if ordered:
        # Loaded sorted by device time: bisect instead of scanning every item (an evaluation
        # runs a dozen detectors over hours of data).
        lo = bisect_left(items, start, key=lambda x: x.ts)
        hi = bisect_right(items, end, key=lambda x: x.ts)
        return list(items[lo:hi])
    return [x for x in items if start <= x.ts <= end]


# How far back `previous_sample` looks before giving up (readings, across all metrics).
_PREVIOUS_SCAN = 400


def previous_sample(device: DeviceData, when: datetime, metrics: Iterable[str]) -> datetime | None:
    """The earliest of the metrics' last sample times before `when` (`when` itself if none of
    them has a sample before it), or None when that is not among the last few hundred readings
    (the caller judges the whole window then). The device's readings must be in time order."""
    wanted = set(metrics)
    earliest = when
    i = bisect_left(device.readings, when, key=lambda r: r.ts)
    stop = max(0, i - _PREVIOUS_SCAN)
    while wanted and i > stop:
        i -= 1
        reading = device.readings[i]
        if reading.metric in wanted:
            wanted.discard(reading.metric)
            earliest = reading.ts
    if wanted and i > 0:
        return None
    return earliest


def site_within(
    site: SiteData, kinds: frozenset[DeviceKind], start: datetime, end: datetime
) -> SiteData:
    """The site's devices of `kinds`, each `within` [start, end]."""
    devices = {k: within(d, start, end) for k, d in site.devices.items() if d.kind in kinds}
    return replace(site, devices=devices)


def settle(findings: Sequence[Finding]) -> list[Finding]:
    """Drop clears while an open firing exists: one device's findings for one rule."""
    if any(f.state == "firing" and f.ended_at is None for f in findings):
        return [f for f in findings if f.state == "firing"]
    return list(findings)


def current_state(findings: Iterable[Finding]) -> dict[tuple[str | None, str], Finding]:
    """The finding that decides each (device, rule): open firing, else latest evidence."""
    best: dict[tuple[str | None, str], Finding] = {}
    for finding in findings:
        key = (finding.device_id, finding.rule)
        held = best.get(key)
        if held is None or _rank(finding) > _rank(held):
            best[key] = finding
    return best


def _rank(finding: Finding) -> tuple[int, datetime, int]:
    is_open = finding.state == "firing" and finding.ended_at is None
    when = finding.ended_at or finding.evidence_to or finding.started_at or _EARLIEST
    return (int(is_open), when, int(finding.state == "firing"))


_EARLIEST = datetime.min.replace(tzinfo=UTC)
_NO_SLACK = timedelta(0)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def series(device: DeviceData, metric: str) -> list[Reading]:
    """One metric of a device sorted by device time (data may arrive out of order).
    Read-only: the list is shared by every detector that asks for it."""
    if device.ordered:
        # Loaded in device-time order, and (device, metric, ts) is unique: already sorted.
        return device.series(metric)
    return device.memo(
        ("sorted", metric), lambda: sorted(device.series(metric), key=lambda r: (r.ts, r.seq or 0))
    )


_UNITS = {
    "_c": "°C",
    "_pct": "%",
    "_mg_l": "mg/L",
    "_kw": "kW",
    "_l_min": "L/min",
    "_m_min": "m/min",
    "_total": "件",
}


def upto(samples: Sequence[Reading], end: datetime) -> list[Reading]:
    """The samples (sorted by time) with ts <= end."""
    return list(samples[: bisect_right(samples, end, key=lambda r: r.ts)])


def between(samples: Sequence[Reading], start: datetime, end: datetime) -> list[Reading]:
    """The samples (sorted by time) with start <= ts <= end."""
    lo = bisect_left(samples, start, key=lambda r: r.ts)
    hi = bisect_right(samples, end, key=lambda r: r.ts)
    return list(samples[lo:hi])


def metric_unit(metric: str) -> str:
    """The unit a metric name carries (docs/protocol.md: names end in their unit)."""
    return next((unit for suffix, unit in _UNITS.items() if metric.endswith(suffix)), "")


def seconds(profile_value: float) -> timedelta:
    return timedelta(seconds=profile_value)


def mmss(span: timedelta) -> str:
    """A duration as m:ss (or h:mm:ss from one hour), never rounded up."""
    total = int(span.total_seconds())
    hours, rest = divmod(total, 3600)
    if hours:
        return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
    return f"{rest // 60}:{rest % 60:02d}"


def iso(ts: datetime) -> str:
    return ts.isoformat()


def local_time(ts: datetime) -> str:
    """Wall-clock time at the site, for summaries."""
    return ts.astimezone(LOCAL_TZ).strftime("%m-%d %H:%M")


def local_day(ts: datetime) -> date:
    return ts.astimezone(LOCAL_TZ).date()


def day_bounds(day: date) -> tuple[datetime, datetime]:
    """Start and end (exclusive) of a calendar day in the sites' time zone."""
    after = day + timedelta(days=1)
    return (
        datetime(day.year, day.month, day.day, tzinfo=LOCAL_TZ),
        datetime(after.year, after.month, after.day, tzinfo=LOCAL_TZ),
    )


def floor_to(ts: datetime, step: timedelta) -> datetime:
    """`ts` floored to a multiple of `step` since the Unix epoch (buckets stable across runs)."""
    return ts - (ts - _EPOCH) % step


# --- Level conditions: a metric beyond a limit, for long enough ----------------------------


class Point(NamedTuple):
    """A sample judged against a condition: bad, good, or None when not applicable."""

    ts: datetime
    value: float
    bad: bool | None


@dataclass(frozen=True)
class Spell:
    """A run of consecutive bad points (a gap longer than the allowed one breaks it)."""

    points: tuple[Point, ...]
    # The last bad point once the spell is over (so the point that ended it is later evidence
    # of compliance); None while it still holds.
    end: datetime | None
    # Whether a good point ended it (rather than a gap or data that does not apply).
    ended_by_good: bool

    @property
    def first(self) -> datetime:
        return self.points[0].ts

    @property
    def last(self) -> datetime:
        return self.points[-1].ts

    @property
    def duration(self) -> timedelta:
        """Provable duration: first to last bad sample (never overstated)."""
        return self.last - self.first

    @property
    def values(self) -> list[float]:
        return [p.value for p in self.points]


def bad_spells(points: Sequence[Point], max_gap: timedelta) -> list[Spell]:
    """Runs of consecutive bad points, in time order."""
    found: list[Spell] = []
    run: list[Point] = []
    for point in points:
        if run and (point.bad is not True or point.ts - run[-1].ts > max_gap):
            good = point.bad is False and point.ts - run[-1].ts <= max_gap
            found.append(Spell(tuple(run), run[-1].ts, good))
            run = []
        if point.bad is True:
            run.append(point)
    if run:
        found.append(Spell(tuple(run), None, False))
    return found


def good_stretch(
    points: Sequence[Point], after: datetime | None, max_gap: timedelta
) -> tuple[datetime, datetime, timedelta] | None:
    """Compliant evidence after `after`: (first good, last good, good time), if the latest
    applicable point is good. Good time only counts between consecutive good points."""
    # One pass (this runs over hours of samples on every scan).
    start = 0 if after is None else bisect_right(points, after, key=lambda p: p.ts)
    first_good: datetime | None = None
    last_good: datetime | None = None
    latest_bad = False
    good_time = timedelta(0)
    previous: Point | None = None
    for i in range(start, len(points)):
        point = points[i]
        bad = point.bad
        if bad is False:
            if first_good is None:
                first_good = point.ts
            last_good = point.ts
            latest_bad = False
            if previous is not None and previous.bad is False:
                step = point.ts - previous.ts
                if step <= max_gap:
                    good_time += step
        elif bad is True:
            latest_bad = True
        previous = point
    if latest_bad or first_good is None or last_good is None:
        return None
    return first_good, last_good, good_time


@dataclass(frozen=True)
class LevelRule:
    """How a level condition of one metric becomes findings."""

    spec: RuleSpec
    metric: str
    limit: float
    unit: str
    severity: Severity
    max_gap: timedelta
    # A spell fires when it lasts at least `min_duration` (more than it, if `strictly_longer`).
    min_duration: timedelta = timedelta(0)
    strictly_longer: bool = False
    # Compliant time needed after the last firing spell before the rule clears.
    clear_after: timedelta = timedelta(0)
    clear_summary: str = "已恢复正常"
    # Start of the data window (now − lookback), to name spells that began before it.
    window_start: datetime | None = None

    def episode(self, spell: Spell) -> str:
        return spell_episode(self.metric, spell, self.window_start, self.max_gap)

    def qualifies(self, spell: Spell) -> bool:
        if self.strictly_longer:
            return spell.duration > self.min_duration
        return spell.duration >= self.min_duration


def level_findings(
    rule: LevelRule,
    site: SiteData,
    device: DeviceData,
    points: Sequence[Point],
    describe: Callable[[Spell], tuple[float, str]],
) -> list[Finding]:
    """Firing findings for qualifying bad spells, and a clear when compliance is proven.

    `points` in time order; `describe` gives the measured value and the Chinese summary of a
    spell.
    """
    firing = [s for s in bad_spells(points, rule.max_gap) if rule.qualifies(s)]
    findings = [_spell_finding(rule, site, device, s, describe) for s in firing]
    last = firing[-1] if firing else None
    stretch = good_stretch(points, last.last if last else None, rule.max_gap)
    if stretch is not None:
        clear = level_clear(rule, site, device, stretch, last)
        findings += [clear] if clear else []
    return findings


def all_good_findings(
    rule: LevelRule, site: SiteData, device: DeviceData, times: Sequence[datetime]
) -> list[Finding]:
    """What `level_findings` gives when every point (at `times`, in order) is good, without a
    point object per sample: the clear, if the good time reaches `clear_after`."""
    if not times:
        return []
    good_time = timedelta(0)
    gap = rule.max_gap
    previous = times[0]
    for ts in times:
        step = ts - previous
        if step <= gap:
            good_time += step
        previous = ts
    clear = level_clear(rule, site, device, (times[0], times[-1], good_time), None)
    return [clear] if clear else []


def level_clear(
    rule: LevelRule,
    site: SiteData,
    device: DeviceData,
    stretch: tuple[datetime, datetime, timedelta],
    last: Spell | None,
) -> Finding | None:
    """The clear of a level rule: compliant evidence after the last firing spell, if long enough."""
    first_good, last_good, good_time = stretch
    if good_time < rule.clear_after:
        return None
    return Finding(
        rule=rule.spec.id,
        site_id=site.site_id,
        device_id=device.device_id,
        state="clear",
        severity=rule.severity,
        limit=rule.limit,
        unit=rule.unit,
        summary=rule.clear_summary,
        evidence_from=first_good,
        evidence_to=last_good,
        evidence_metric=rule.metric,
        episode=rule.episode(last) if last else f"{rule.metric}@ok",
        details={"compliant_s": good_time.total_seconds()},
    )


def since_label(first: datetime, window_start: datetime | None, slack: timedelta) -> str:
    """When an episode began, as its id. One whose first sample lies within `slack` of the
    start of the data window may have begun before it: its visible start moves with every run,
    so it is named after the local day of the window start instead (stable across runs,
    renewed once a day)."""
    if window_start is not None and first - window_start <= slack:
        return f"before:{local_day(window_start).isoformat()}"
    return iso(first)


def spell_episode(
    metric: str, spell: Spell, window_start: datetime | None = None, slack: timedelta = _NO_SLACK
) -> str:
    return f"{metric}@{since_label(spell.first, window_start, slack)}"


def _spell_finding(
    rule: LevelRule,
    site: SiteData,
    device: DeviceData,
    spell: Spell,
    describe: Callable[[Spell], tuple[float, str]],
) -> Finding:
    value, summary = describe(spell)
    return Finding(
        rule=rule.spec.id,
        site_id=site.site_id,
        device_id=device.device_id,
        state="firing",
        severity=rule.severity,
        started_at=spell.first,
        ended_at=spell.end,
        value=value,
        limit=rule.limit,
        unit=rule.unit,
        summary=summary,
        evidence_from=spell.first,
        evidence_to=spell.end or spell.last,
        evidence_metric=rule.metric,
        episode=rule.episode(spell),
        details={"duration_s": spell.duration.total_seconds(), "samples": len(spell.points)},
    )
