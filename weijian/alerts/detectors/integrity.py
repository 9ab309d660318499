"""Data integrity of the values themselves: flat lines and physically impossible values."""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from functools import partial
from operator import attrgetter
from typing import NamedTuple

from weijian.alerts.detectors.common import (
    DeviceDetector,
    Horizon,
    LevelRule,
    Point,
    Spell,
    all_good_findings,
    between,
    device_now,
    iso,
    level_findings,
    metric_unit,
    mmss,
    previous_sample,
    seconds,
    series,
    spell_episode,
    upto,
    within,
)
from weijian.alerts.detectors.dish import running_at, timeline
from weijian.alerts.detectors.presence import offline_after
from weijian.alerts.detectors.release import increments
from weijian.alerts.detectors.thermal import CABINETS, batches
from weijian.alerts.models import DeviceData, Finding, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import DeviceKind, MetricSpec, kind_spec
from weijian.telemetry import Reading

# Metrics whose physics must vary, and the profile key of the window over which identical
# values are implausible. Flags, counters and set points (belt speed) are never here.
FLAT_WINDOWS: dict[tuple[DeviceKind, str], str] = {
    (DeviceKind.DISH_MACHINE, "rinse_temp_c"): "flatline.dish_window_min",
    (DeviceKind.DISH_MACHINE, "wash_temp_c"): "flatline.dish_window_min",
    (DeviceKind.CHLORINE_TANK, "chlorine_mg_l"): "flatline.chlorine_window_min",
    (DeviceKind.WASTE_STORE_ENV, "temp_c"): "flatline.store_window_min",
    (DeviceKind.WASTE_STORE_ENV, "humidity_pct"): "flatline.store_window_min",
    (DeviceKind.LINE_METER, "power_kw"): "flatline.line_window_min",
    (DeviceKind.LINE_METER, "water_l_min"): "flatline.line_window_min",
}
# Kinds whose runs the stream judges only near the fresh data (`FlatlineDetector._new_runs`).
# Line meters' packing times depend on every earlier counter value; cabinets go by batch.
_RECENT_RUNS = frozenset(
    {DeviceKind.DISH_MACHINE, DeviceKind.CHLORINE_TANK, DeviceKind.WASTE_STORE_ENV}
)
_TS = attrgetter("ts")
# Samples further apart in seq than this are not compared for rate of change: after a clock
# jump, neighbours in device time may come from different hours.
_RATE_MAX_SEQ_STEP = 5


class _Run(NamedTuple):
    """A run of identical values: samples[start:stop]; `end` its last sample time once over
    (None for the run still going on), `changed` whether the value changed right after it
    (rather than data missing for longer than the gap)."""

    start: int
    stop: int
    end: datetime | None
    changed: bool


def _runs(samples: Sequence[Reading], max_gap: timedelta) -> list[_Run]:
    """Runs of consecutive identical values; a gap longer than `max_gap` breaks a run. Index
    ranges, not objects per sample: this runs over hours of samples on every scan."""
    if not samples:
        return []
    runs: list[_Run] = []
    start, value, last = 0, samples[0].value, samples[0].ts
    for i in range(1, len(samples)):
        sample = samples[i]
        step = sample.ts - last
        if sample.value != value or step > max_gap:
            runs.append(_Run(start, i, last, step <= max_gap))
            start, value = i, sample.value
        last = sample.ts
    runs.append(_Run(start, len(samples), None, False))
    return runs


def _spell(samples: Sequence[Reading], run: _Run) -> Spell:
    points = tuple(Point(r.ts, r.value, True) for r in samples[run.start : run.stop])
    return Spell(points, run.end, run.changed)


class FlatlineDetector(DeviceDetector):
    """`data.flatline`: identical values where the physics must vary (stuck or faked sensor).

    Cabinets: every temperature sample of a batch identical (a batch always heats up). Other
    metrics in `FLAT_WINDOWS`: identical for at least the window (dish temperatures only while
    running). Runs at a range bound (an empty tank at 0 mg/L, a saturated 100 %) are left to
    `data.out_of_range` and the process rules. Episode = metric@run start (or batch id);
    clears once the values vary again.
    """

    rule = rule("data.flatline")
    device_kinds = frozenset({kind for kind, _ in FLAT_WINDOWS} | CABINETS)
    lookback = timedelta(hours=3)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        if device.kind in CABINETS:
            # A batch is judged once closed: the batches that end after `since`, whole.
            return Horizon(min((b.start for b in batches(device) if b.end >= since), default=since))
        if device.kind == DeviceKind.LINE_METER:
            return None  # busy times come from counter rises, which depend on all earlier samples
        # A run that newly reached its window began less than a window (and a gap) before
        # `since`; the dish timeline holds values for up to a gap, and a run continues across
        # gaps up to one.
        gap = offline_after(site, device)
        window = max(
            timedelta(minutes=site.profile.number(key, device.device_id))
            for (kind, _), key in FLAT_WINDOWS.items()
            if kind == device.kind
        )
        return Horizon(since - window - 3 * gap, 2 * gap)

    def _device_findings(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        since = site.since(self.rule.id, device.device_id)
        if since is None or device.kind not in _RECENT_RUNS or not device.ordered:
            return super()._device_findings(site, device, now)
        now = device_now(site, device, now)
        whole = within(device, site.window_start(now, self.lookback), now)
        return self._new_runs(site, whole, since, now)

    def _new_runs(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> list[Finding]:
        """The firing findings `judge` gives for the runs that may have changed since `since`,
        when no alert of the rule is active for the device (the only news then): the runs
        that reach within a gap of `since`, walked back from there to where the first began,
        instead of every run of the horizon's hour or more. Data before `since` did not
        change, and a run that ended before it and was not flat enough then is not now."""
        max_gap = offline_after(site, device)
        min_samples = int(site.profile.number("flatline.min_samples", device.device_id))
        busy: Callable[[datetime], bool] | None = None
        if device.kind == DeviceKind.DISH_MACHINE:
            busy = partial(running_at, device, max_gap=max_gap)
        findings: list[Finding] = []
        for (kind, metric), key in FLAT_WINDOWS.items():
            if kind != device.kind:
                continue
            window = timedelta(minutes=site.profile.number(key, device.device_id))
            spec = kind_spec(kind).metric(metric)
            samples = _from_run_start(
                device, metric, cut=since - max_gap, now=now, max_gap=max_gap, busy=busy
            )
            for run in _runs(samples, max_gap):
                if _flat(samples, run, window, min_samples, spec):
                    spell = _spell(samples, run)
                    episode = spell_episode(metric, spell, now - self.lookback, max_gap)
                    findings.append(
                        self._firing(site, device, metric, spell, window=window, episode=episode)
                    )
        return findings

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        min_samples = int(site.profile.number("flatline.min_samples", device.device_id))
        if device.kind in CABINETS:
            return self._batches(site, device, now, min_samples)
        findings: list[Finding] = []
        max_gap = offline_after(site, device)
        busy = _busy_times(device, max_gap)
        for (kind, metric), key in FLAT_WINDOWS.items():
            if kind != device.kind:
                continue
            window = timedelta(minutes=site.profile.number(key, device.device_id))
            samples = upto(series(device, metric), now)
            if busy is not None:
                samples = [r for r in samples if r.ts in busy]
            spec = kind_spec(kind).metric(metric)
            runs = _runs(samples, max_gap)
            flat = [r for r in runs if _flat(samples, r, window, min_samples, spec)]
            since = now - self.lookback
            spells = [_spell(samples, r) for r in flat]
            findings += [
                self._firing(
                    site,
                    device,
                    metric,
                    spell,
                    window=window,
                    episode=spell_episode(metric, spell, since, max_gap),
                )
                for spell in spells
            ]
            if not runs:
                continue
            first = [samples[r.start].ts for r in runs]
            if flat:
                if not flat[-1].changed:
                    continue
                after = first[runs.index(flat[-1]) + 1]
                episode = spell_episode(metric, spells[-1], since, max_gap)
            elif len(runs) >= 2:
                after, episode = first[1], f"{metric}@varying"
            else:
                continue
            last = samples[runs[-1].stop - 1].ts
            findings.append(self._clear(site, device, metric, (after, last), episode))
        return findings

    def _batches(
        self, site: SiteData, device: DeviceData, now: datetime, min_samples: int
    ) -> list[Finding]:
        temps = series(device, "temp_c")
        findings: list[Finding] = []
        for batch in batches(device):
            inside = between(temps, batch.start, batch.end)
            if batch.end > now or len(inside) < min_samples:
                continue
            run = Spell(tuple(Point(r.ts, r.value, True) for r in inside), batch.end, True)
            episode = f"temp_c@{batch.batch_id}"
            span = batch.end - batch.start
            finding = self._firing(site, device, "temp_c", run, window=span, episode=episode)
            if len({r.value for r in inside}) > 1:
                finding = replace(finding, state="clear", summary="批次温度数据正常变化")
            findings.append(finding)
        return findings

    def _firing(
        self,
        site: SiteData,
        device: DeviceData,
        metric: str,
        run: Spell,
        *,
        window: timedelta,
        episode: str,
    ) -> Finding:
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="firing",
            severity=Sev.MAJOR,
            started_at=run.first,
            ended_at=run.end,
            value=run.values[0],
            limit=window.total_seconds(),
            unit="s",
            summary=(
                f"{metric} 连续 {len(run.points)} 个数据恒为 {run.values[0]:g}"
                f"（持续 {mmss(run.duration)}），疑似传感器卡死或数据造假"
            ),
            evidence_from=run.first,
            evidence_to=run.end or run.last,
            evidence_metric=metric,
            episode=episode,
            details={"samples": len(run.points), "duration_s": run.duration.total_seconds()},
        )

    def _clear(
        self,
        site: SiteData,
        device: DeviceData,
        metric: str,
        varying: tuple[datetime, datetime],
        episode: str,
    ) -> Finding:
        """Positive evidence: the value changed after the last flat run (or varies at all),
        from `varying[0]` (the first sample after it) to the last sample."""
        since, last = varying
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device.device_id,
            state="clear",
            severity=Sev.MAJOR,
            summary=f"{metric} 数据已恢复变化",
            evidence_from=since,
            evidence_to=max(since, last),
            evidence_metric=metric,
            episode=episode,
        )


def _from_run_start(
    device: DeviceData,
    metric: str,
    *,
    cut: datetime,
    now: datetime,
    max_gap: timedelta,
    busy: Callable[[datetime], bool] | None,
) -> list[Reading]:
    """The metric's samples (stored data, up to `now`) from `cut` on that count (`busy`, or
    all), preceded by those before `cut` that continue the run of the first: a list whose runs
    (`_runs`) are exactly the runs of all the samples that count which reach `cut` or later.
    Reads the rows near `cut` only (not the metric's whole series)."""
    rows = device.readings
    k = bisect_left(rows, cut, key=_TS)
    end = bisect_right(rows, now, key=_TS)
    tail = [r for r in rows[k:end] if r.metric == metric and (busy is None or busy(r.ts))]
    if not tail:
        return tail
    head: list[Reading] = []
    later = tail[0]
    for i in range(k - 1, -1, -1):
        sample = rows[i]
        if later.ts - sample.ts > max_gap:
            break  # a gap breaks the run (any earlier sample that counts is further still)
        if sample.metric != metric or (busy is not None and not busy(sample.ts)):
            continue
        if sample.value != later.value:
            break
        head.append(sample)
        later = sample
    head.reverse()
    return head + tail


def _busy_times(device: DeviceData, max_gap: timedelta) -> set[datetime] | None:
    """Sample times at which the physics must vary (dish machine running, line packing), or
    None when every sample counts."""
    if device.kind == DeviceKind.DISH_MACHINE:
        return {s.ts for s in timeline(device, max_gap) if s.running}
    if device.kind == DeviceKind.LINE_METER:
        return {i.ts for i in increments(series(device, "packed_total"))}
    return None


def _flat(
    samples: Sequence[Reading],
    run: _Run,
    window: timedelta,
    min_samples: int,
    spec: MetricSpec | None,
) -> bool:
    if run.stop - run.start < min_samples:
        return False
    value = samples[run.start].value
    at_bound = spec is not None and value in (spec.low, spec.high)
    return samples[run.stop - 1].ts - samples[run.start].ts >= window and not at_bound


class OutOfRangeDetector(DeviceDetector):
    """`data.out_of_range`: a value outside the metric's physical range (kinds.py), or a change
    faster than its `max_rate_per_s` between neighbouring samples.

    Range: one episode per run of out-of-range samples (metric@start), cleared after
    `data.clear_after_s` of in-range data. Rate: a closed episode per jump (metric:rate@ts);
    jumps into or out of range are left to the range check, and only samples adjacent in
    seq are compared, so a clock jump never fakes a rate.
    """

    rule = rule("data.out_of_range")
    device_kinds = frozenset(DeviceKind)
    lookback = timedelta(hours=2)

    def horizon(
        self, site: SiteData, device: DeviceData, since: datetime, now: datetime
    ) -> Horizon | None:
        # Any out-of-range sample fires, so a new spell begins after `since` (a spell continues
        # across gaps up to `max_gap`); a rate compares a new sample with the one before it.
        max_gap = offline_after(site, device)
        rated = [m.name for m in kind_spec(device.kind).metrics if m.max_rate_per_s is not None]
        start = since - max_gap
        if rated:
            before = previous_sample(device, since, rated)
            if before is None:
                return None
            start = min(start, before)
        return Horizon(start, max_gap)

    def judge(self, site: SiteData, device: DeviceData, now: datetime) -> list[Finding]:
        clear_after = seconds(site.profile.number("data.clear_after_s", device.device_id))
        max_gap = offline_after(site, device)
        findings: list[Finding] = []
        for spec in kind_spec(device.kind).metrics:
            samples = upto(series(device, spec.name), now)
            level = LevelRule(
                spec=self.rule,
                metric=spec.name,
                limit=spec.high,
                unit=metric_unit(spec.name),
                severity=Sev.WARNING,
                max_gap=max_gap,
                clear_after=clear_after,
                clear_summary=f"{spec.name} 数据已回到量程内",
                window_start=now - self.lookback,
            )
            values = [r.value for r in samples]
            if not values or (spec.low <= min(values) and max(values) <= spec.high):
                # The usual case, every sample in range: no point object per sample.
                findings += all_good_findings(level, site, device, [r.ts for r in samples])
            else:
                points = [
                    Point(r.ts, v, not spec.low <= v <= spec.high)
                    for r, v in zip(samples, values, strict=True)
                ]
                findings += level_findings(level, site, device, points, _describe_range(spec))
            findings += self._rates(site, device, spec, samples)
        return findings

    def _rates(
        self, site: SiteData, device: DeviceData, spec: MetricSpec, samples: list[Reading]
    ) -> list[Finding]:
        if spec.max_rate_per_s is None:
            return []
        findings: list[Finding] = []
        for a, b in _fast_pairs(samples, spec, spec.max_rate_per_s):
            rate = _rate(a, b, spec)
            if rate is None or rate <= spec.max_rate_per_s:
                continue
            findings.append(
                Finding(
                    rule=self.rule.id,
                    site_id=site.site_id,
                    device_id=device.device_id,
                    state="firing",
                    severity=Sev.WARNING,
                    started_at=a.ts,
                    ended_at=b.ts,
                    value=round(rate, 3),
                    limit=spec.max_rate_per_s,
                    unit=f"{metric_unit(spec.name)}/s",
                    summary=(
                        f"{spec.name} 在 {(b.ts - a.ts).total_seconds():g} 秒内从 {a.value:g} "
                        f"变为 {b.value:g}，变化速率 {rate:.2f}/s 超出物理可能"
                        f"（≤ {spec.max_rate_per_s:g}/s）"
                    ),
                    evidence_from=a.ts,
                    evidence_to=b.ts,
                    evidence_metric=spec.name,
                    episode=f"{spec.name}:rate@{iso(b.ts)}",
                )
            )
        return findings


def _describe_range(spec: MetricSpec) -> Callable[[Spell], tuple[float, str]]:
    def describe(spell: Spell) -> tuple[float, str]:
        worst = max(spell.values, key=lambda v: max(spec.low - v, v - spec.high))
        return worst, (
            f"{spec.name} = {worst:g} 超出物理量程 [{spec.low:g}, {spec.high:g}]"
            f"（{len(spell.points)} 个数据）"
        )

    return describe


def _fast_pairs(
    samples: Sequence[Reading], spec: MetricSpec, limit: float
) -> list[tuple[Reading, Reading]]:
    """The neighbours whose change might be too fast, for `_rate` to judge: a pass without a
    function call per pair (it runs over every sample of every scan). A pair left out changes
    by at most `limit` per second or is never compared."""
    low, high = spec.low, spec.high
    out: list[tuple[Reading, Reading]] = []
    previous: Reading | None = None
    for b in samples:
        a, previous = previous, b
        if a is None:
            continue
        change = b.value - a.value
        if change < 0:
            change = -change
        if change == 0 or not (low <= a.value <= high and low <= b.value <= high):
            continue
        # A hair below the limit, so rounding never hides a pair `_rate` would flag.
        if change >= limit * (b.ts - a.ts).total_seconds() * (1 - 1e-9):
            out.append((a, b))
    return out


def _rate(a: Reading, b: Reading, spec: MetricSpec) -> float | None:
    """|Δvalue| per second between neighbours, or None when they must not be compared."""
    dt = (b.ts - a.ts).total_seconds()
    if dt <= 0 or not all(spec.low <= r.value <= spec.high for r in (a, b)):
        return None
    if a.seq is not None and b.seq is not None and not 0 < b.seq - a.seq <= _RATE_MAX_SEQ_STEP:
        return None
    return abs(b.value - a.value) / dt
