"""Planning a scenario: build the twins of every site, apply faults, derive the labels."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from datetime import timedelta

import numpy as np

from weijian.alerts.models import Profile
from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import KINDS, DeviceKind, SiteKind
from weijian.simulator.device import DEFAULT_METRIC, SimDevice
from weijian.simulator.faults import (
    FAULTS,
    ClockSkew,
    Offline,
    OutOfRange,
    PackingWithoutDisinfection,
    Replay,
    StuckSensor,
)
from weijian.simulator.labels import DEFAULT_FLATLINE_WINDOW_S, DEFAULT_TOLERANCE, TOLERANCE, Label
from weijian.simulator.scenario import DeviceSpec, Scenario, ScenarioError, SiteSpec
from weijian.simulator.timeutil import from_epoch, local_midnight
from weijian.simulator.twins.base import PlannedFault, Twin, TwinContext, Window, overlaps
from weijian.simulator.twins.process import ChlorineTank, DishMachine, LineMeter
from weijian.simulator.twins.thermal import Cabinet
from weijian.simulator.twins.waste import WasteScale, WasteStoreEnv

_PROCESS_KINDS = frozenset(
    {
        DeviceKind.STEAM_CABINET,
        DeviceKind.INFRARED_CABINET,
        DeviceKind.DISH_MACHINE,
        DeviceKind.CHLORINE_TANK,
        DeviceKind.LINE_METER,
    }
)
_DISINFECTION_KINDS = _PROCESS_KINDS - {DeviceKind.LINE_METER}
_MARGIN_S = 1800.0


def device_ref(site: str, device: str) -> str:
    """The scenario-wide key of a device: "<site>/<device>"."""
    return f"{site}/{device}"


@dataclass
class ScenarioPlan:
    """A scenario ready to run: its devices (in a stable order) and the ground-truth labels."""

    scenario: Scenario
    devices: list[SimDevice]
    labels: list[Label]

    @property
    def start(self) -> float:
        return self.scenario.start.timestamp()

    @property
    def end(self) -> float:
        return self.scenario.end.timestamp()

    def device(self, ref: str) -> SimDevice:
        for device in self.devices:
            if device.ref == ref:
                return device
        raise KeyError(ref)


def plan_scenario(scenario: Scenario, *, delivery_step: timedelta | None = None) -> ScenarioPlan:
    """Plan every site of a scenario (pure and deterministic given the scenario's seed).

    `delivery_step`: the platform receives what is sent in each step `[t, t + step)` at the
    step's end, as the engine delivers it (None: at once). Only labels that depend on which
    receive-time bucket a message falls in (`data.clock_skew`) use it.
    """
    planner = _Planner(scenario, delivery_step)
    for site in scenario.sites:
        planner.site(site)
    planner.check_process_faults()
    return ScenarioPlan(
        scenario, planner.devices, sorted(planner.labels, key=lambda lb: lb.detectable_at)
    )


class _Planner:
    def __init__(self, scenario: Scenario, delivery_step: timedelta | None = None) -> None:
        self.scenario = scenario
        self.start = scenario.start.timestamp()
        self.end = scenario.end.timestamp()
        self.step = None if delivery_step is None else delivery_step.total_seconds()
        self.devices: list[SimDevice] = []
        self.labels: list[Label] = []
        self.faults: dict[str, list[PlannedFault]] = {}
        for index, fault in enumerate(scenario.faults):
            ref = device_ref(fault.site, fault.device or "")
            planned = PlannedFault(
                index, fault.type, fault.options(), scenario.fault_at(fault).timestamp()
            )
            self.faults.setdefault(ref, []).append(planned)
        self._hit: set[int] = set()

    def site(self, site: SiteSpec) -> None:
        overrides = self.scenario.site_profile(site.key)
        profile = build_profile(site.kind, overrides, {d.key: d.profile for d in site.devices})
        shifts = self._shifts(site) if site.kind == SiteKind.DISINFECTION_PLANT else []
        blackout = self._blackouts(site)
        twins: dict[str, Twin] = {}
        contexts: dict[str, tuple[TwinContext, np.random.Generator]] = {}
        for spec in site.devices:
            contexts[spec.key] = self._context(site, spec, profile, shifts, blackout)
        order = sorted(site.devices, key=lambda d: _ORDER[d.kind])
        for spec in order:
            ctx = contexts[spec.key][0]
            if spec.kind in (DeviceKind.STEAM_CABINET, DeviceKind.INFRARED_CABINET):
                twins[spec.key] = Cabinet(ctx, spec.kind)
            elif spec.kind == DeviceKind.DISH_MACHINE:
                twins[spec.key] = DishMachine(ctx)
            elif spec.kind == DeviceKind.CHLORINE_TANK:
                twins[spec.key] = ChlorineTank(ctx)
            elif spec.kind == DeviceKind.LINE_METER:
                effective = [w for t in twins.values() for w in t.effective]
                twins[spec.key] = LineMeter(ctx, effective)
            elif spec.kind == DeviceKind.WASTE_SCALE:
                twins[spec.key] = WasteScale(ctx)
            else:
                scale = next((t for t in twins.values() if isinstance(t, WasteScale)), None)
                cold = bool(profile.get("waste.cold_storage_required", spec.key))
                twins[spec.key] = WasteStoreEnv(ctx, scale, cold)
        for spec in site.devices:
            ctx, dev_rng = contexts[spec.key]
            twin = twins[spec.key]
            self._process_labels(site, spec, twin)
            data = [
                f
                for f in self.faults.get(device_ref(site.key, spec.key), [])
                if FAULTS[f.type].layer == "data"
            ]
            for fault in data:
                self._data_label(site, spec, twin, fault, profile)
            clock = (
                spec.clock_offset.total_seconds()
                if spec.clock_offset is not None
                else round(float(dev_rng.uniform(-30, 30)), 3),
                spec.clock_drift_ppm
                if spec.clock_drift_ppm is not None
                else float(dev_rng.uniform(-20, 20)),
            )
            seq0 = int(dev_rng.integers(0, 100_000))
            ref = device_ref(site.key, spec.key)
            self.devices.append(
                SimDevice(ref, spec.kind, twin=twin, clock=clock, seq0=seq0, data_faults=data)
            )

    # -- contexts ---------------------------------------------------------------------------
    def _shifts(self, site: SiteSpec) -> list[Window]:
        out: list[Window] = []
        day = local_midnight(self.start - 86400)
        while day < self.end + 86400:
            for begin, end in site.shift_hours:
                w0, w1 = max(day + begin * 3600, self.start), min(day + end * 3600, self.end)
                if w1 - w0 > 600:
                    out.append((w0, w1))
            day = local_midnight(day + 36 * 3600)
        return out

    def _blackouts(self, site: SiteSpec) -> list[Window]:
        out: list[Window] = []
        for spec in site.devices:
            for fault in self.faults.get(device_ref(site.key, spec.key), []):
                if isinstance(fault.options, PackingWithoutDisinfection):
                    before = fault.options.quiet_before.total_seconds()
                    out.append(
                        (fault.at - before, fault.at + fault.options.duration.total_seconds())
                    )
        return out

    def _context(
        self,
        site: SiteSpec,
        spec: DeviceSpec,
        profile: Profile,
        shifts: list[Window],
        blackout: list[Window],
    ) -> tuple[TwinContext, np.random.Generator]:
        seeds = np.random.SeedSequence(
            [self.scenario.seed, zlib.crc32(site.key.encode()), zlib.crc32(spec.key.encode())]
        ).spawn(3)
        plan_rng, noise_rng, dev_rng = (np.random.default_rng(s) for s in seeds)
        faults = self.faults.get(device_ref(site.key, spec.key), [])
        quiet = list(blackout) if spec.kind in _DISINFECTION_KINDS else []
        if spec.kind in _PROCESS_KINDS:
            quiet += [w for f in faults if (w := _quiet_window(f, spec.interval_s)) is not None]
        ctx = TwinContext(
            site=site.key,
            device=spec.key,
            start=self.start,
            end=self.end,
            interval=spec.interval_s,
            phase=float(dev_rng.uniform(0, spec.interval_s)),
            shifts=shifts,
            profile=profile,
            params=dict(spec.params),
            plan_rng=plan_rng,
            noise_rng=noise_rng,
            faults=[f for f in faults if FAULTS[f.type].layer == "process"],
            quiet=quiet,
        )
        return ctx, dev_rng

    # -- labels -----------------------------------------------------------------------------
    def _label(
        self,
        rule: str,
        site: SiteSpec,
        device: str | None,
        fault: int,
        at: float,
        *,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        tolerance = TOLERANCE.get(rule, DEFAULT_TOLERANCE)
        detectable = from_epoch(at)
        self.labels.append(
            Label(
                rule=rule,
                site=site.key,
                device=device,
                detectable_at=detectable,
                window_end=from_epoch(end) if end is not None else detectable + tolerance,
                scenario=self.scenario.name,
                fault=self.scenario.fault_id(fault),
                window_start=from_epoch(start) if start is not None else None,
            )
        )
        self._hit.add(fault)

    def _process_labels(self, site: SiteSpec, spec: DeviceSpec, twin: Twin) -> None:
        for v in twin.violations:
            self._label(
                v.rule,
                site,
                spec.key,
                v.fault,
                v.detectable_at,
                start=v.window_start,
                end=v.window_end,
            )

    def check_process_faults(self) -> None:
        for index, fault in enumerate(self.scenario.faults):
            spec = FAULTS[fault.type]
            if spec.rules and index not in self._hit:
                raise ScenarioError(
                    f"{self.scenario.name}: faults[{index}] ({fault.type}) at "
                    f"{self.scenario.fault_at(fault).isoformat()} found nothing to act on in "
                    f"{fault.site}/{fault.device} before the scenario ends (e.g. no batch, basket, "
                    "running period or hand-over after it); move it or lengthen the scenario"
                )

    def _data_label(
        self, site: SiteSpec, spec: DeviceSpec, twin: Twin, fault: PlannedFault, profile: Profile
    ) -> None:
        options = fault.options
        rules = FAULTS[fault.type].rules
        if not rules:
            return
        name = (
            f"{self.scenario.name}: faults[{fault.index}] ({fault.type}) on {site.key}/{spec.key}"
        )
        has_metrics = bool(KINDS[spec.kind].metrics)
        metric_default = DEFAULT_METRIC.get(spec.kind, ("", 0.0))[0]
        metric = getattr(options, "metric", None) or metric_default
        if (
            isinstance(options, StuckSensor | OutOfRange)
            and metric not in KINDS[spec.kind].metric_names
        ):
            raise ScenarioError(f"{name}: {spec.kind.value} has no metric {metric!r}")
        first = self._first_message(twin, fault.at, has_metrics)
        if isinstance(options, Offline):
            self._offline_label(
                name, site, spec, twin, fault=fault, options=options, profile=profile
            )
            return
        if isinstance(options, StuckSensor):
            window = _flatline_window_s(profile, spec)
            if options.duration.total_seconds() < window + 600:
                raise ScenarioError(
                    f"{name}: duration must be at least the flat-line window "
                    f"({window:g} s) plus 10 min"
                )
            self._label(rules[0], site, spec.key, fault.index, first + window, start=first + 300)
            return
        if isinstance(options, ClockSkew):
            limit = profile.number("clock_skew.max_s", spec.key)
            if abs(options.offset.total_seconds()) <= limit + 60:
                raise ScenarioError(
                    f"{name}: |offset| must exceed clock_skew.max_s ({limit:g} s) "
                    "by at least a minute"
                )
            if first >= fault.at + options.duration.total_seconds():
                raise ScenarioError(f"{name}: the device sends nothing while its clock is off")
        if (
            fault.type == "sequence_gap"
            and self._first_message(twin, self.start, has_metrics) >= fault.at
        ):
            raise ScenarioError(f"{name}: the device has sent nothing before it, so no gap shows")
        at = fault.at if isinstance(options, Replay) else first
        if isinstance(options, ClockSkew):
            # The skew must hold in `clock_skew.min_buckets` consecutive buckets of receive
            # time: provable with the first message of the last of them.
            bucket = profile.number("clock_skew.bucket_s", spec.key)
            buckets = profile.number("clock_skew.min_buckets", spec.key)
            first_bucket = self._received(first) // bucket
            if options.offset.total_seconds() < 0 and (
                self._received(self._last_message(twin, first, has_metrics)) // bucket
                == first_bucket
            ):
                # A bucket's offset is its freshest message's (so a late backlog does not
                # look like a slow clock): a clock set back counts only from the first bucket
                # that receives no message sent before the jump.
                first_bucket += 1
            last_bucket = (first_bucket + buckets - 1) * bucket
            at = self._first_message(twin, max(first, self._sent_from(last_bucket)), has_metrics)
        if fault.type == "sequence_gap":
            # A gap counts once the message after it has been in for the grace time.
            at = first + profile.number("seq.gap_grace_s", spec.key)
        if at >= self.end:
            raise ScenarioError(f"{name}: the device sends nothing after it before the end")
        self._label(rules[0], site, spec.key, fault.index, at)
        self._check_env_activity(name, spec, twin, fault)

    def _offline_label(
        self,
        name: str,
        site: SiteSpec,
        spec: DeviceSpec,
        twin: Twin,
        *,
        fault: PlannedFault,
        options: Offline,
        profile: Profile,
    ) -> None:
        ctx = twin.ctx
        has_metrics = bool(KINDS[spec.kind].metrics)
        threshold = max(
            profile.number("offline.interval_factor", spec.key) * ctx.interval,
            profile.number("offline.min_s", spec.key),
        )
        if has_metrics:
            last = self._last_message(twin, fault.at, has_metrics)
        elif options.disconnect:
            last = fault.at
        else:
            raise ScenarioError(
                f"{name}: a {spec.kind.value} only sends events; an outage without "
                "disconnect cannot be told from a quiet day"
            )
        if not options.backlog and spec.kind == DeviceKind.WASTE_SCALE:
            raise ScenarioError(f"{name}: a powered-off scale would lose bags; use backlog: true")
        end = fault.at + options.duration.total_seconds()
        if end < last + threshold + 60:
            raise ScenarioError(
                f"{name}: duration must exceed the offline threshold ({threshold:g} s) by a minute"
            )
        self._label("device.offline", site, spec.key, fault.index, last + threshold, start=fault.at)
        self._check_env_activity(name, spec, twin, fault)

    def _received(self, sent: float) -> float:
        """When the platform receives a message sent at `sent` (−inf stays −inf)."""
        if self.step is None or not math.isfinite(sent):
            return sent
        return min(
            self.start + (math.floor((sent - self.start) / self.step) + 1) * self.step, self.end
        )

    def _sent_from(self, received: float) -> float:
        """The earliest send time of a message received at or after `received`."""
        if self.step is None:
            return received
        return self.start + (math.ceil((received - self.start) / self.step) - 1) * self.step

    def _first_message(self, twin: Twin, at: float, has_metrics: bool) -> float:
        times = [e.at for e in twin.events if e.at >= at][:1]
        if has_metrics:
            times.append(twin.ctx.sample_at_or_after(at))
        return min(times) if times else float("inf")

    def _last_message(self, twin: Twin, before: float, has_metrics: bool) -> float:
        """When the device last sent something strictly before `before` (−inf: never)."""
        times = [e.at for e in twin.events if e.at < before][-1:]
        if has_metrics:
            times.append(twin.ctx.sample_before(before))
        return max(times) if times else float("-inf")

    def _check_env_activity(
        self, name: str, spec: DeviceSpec, twin: Twin, fault: PlannedFault
    ) -> None:
        """Room activity must not fall where the device is powered off or its clock jumps."""
        if not isinstance(twin, WasteStoreEnv):
            return
        options = fault.options
        windows: list[Window] = []
        if isinstance(options, Offline) and not options.backlog:
            windows.append((fault.at, fault.at + options.duration.total_seconds()))
        if isinstance(options, ClockSkew):
            for edge in (fault.at, fault.at + options.duration.total_seconds()):
                windows.append((edge - 300, edge + 300))
        for w0, w1 in windows:
            if overlaps(w0, w1, twin.activity):
                raise ScenarioError(
                    f"{name}: overlaps door or UV activity around "
                    f"{from_epoch(w0).isoformat()}; move it"
                )


_ORDER = {
    DeviceKind.STEAM_CABINET: 0,
    DeviceKind.INFRARED_CABINET: 0,
    DeviceKind.DISH_MACHINE: 1,
    DeviceKind.CHLORINE_TANK: 2,
    DeviceKind.LINE_METER: 3,
    DeviceKind.WASTE_SCALE: 0,
    DeviceKind.WASTE_STORE_ENV: 1,
}


def _quiet_window(fault: PlannedFault, interval: float) -> Window | None:
    """When a data fault needs its process device idle, so that it violates only its own rule."""
    options = fault.options
    if isinstance(options, Offline):
        if options.backlog:
            return None
        return (fault.at - _MARGIN_S, fault.at + options.duration.total_seconds() + 600)
    if isinstance(options, StuckSensor):
        return (fault.at - _MARGIN_S, fault.at + options.duration.total_seconds() + 600)
    if isinstance(options, OutOfRange):
        return (fault.at - _MARGIN_S, fault.at + options.count * interval + _MARGIN_S)
    if isinstance(options, ClockSkew):
        return (fault.at - _MARGIN_S, fault.at + options.duration.total_seconds() + _MARGIN_S)
    if isinstance(options, Replay):
        return (fault.at - options.age.total_seconds() - _MARGIN_S, fault.at + _MARGIN_S)
    return None


# The flat-line window of the detector per device kind (docs/rules.md §4), in minutes.
_FLATLINE_WINDOW_MIN = {
    DeviceKind.DISH_MACHINE: "flatline.dish_window_min",
    DeviceKind.CHLORINE_TANK: "flatline.chlorine_window_min",
    DeviceKind.LINE_METER: "flatline.line_window_min",
    DeviceKind.WASTE_STORE_ENV: "flatline.store_window_min",
}


def _flatline_window_s(profile: Profile, spec: DeviceSpec) -> float:
    """How long a stuck value must last before `data.flatline` can fire on this device."""
    key = _FLATLINE_WINDOW_MIN.get(spec.kind)
    values = profile.as_dict()
    if key is not None and key in values:
        return profile.number(key, spec.key) * 60.0
    return float(values.get("flatline.window_s", DEFAULT_FLATLINE_WINDOW_S))
