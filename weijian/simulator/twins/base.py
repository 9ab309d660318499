"""What every twin shares: its context, planned events, violations and small physics helpers."""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import numpy as np

from weijian.alerts.models import Profile
from weijian.simulator.faults import FaultParams

Window = tuple[float, float]


@dataclass(frozen=True)
class PlannedEvent:
    """An event a twin will report, at true time `at` (epoch seconds)."""

    at: float
    type: str
    data: dict[str, Any]


@dataclass(frozen=True)
class Violation:
    """A rule the twin's plan violates because of a fault: the seed of a ground-truth label."""

    rule: str
    fault: int  # index of the fault in the scenario
    detectable_at: float
    # Earliest moment an alert still counts (default: detectable_at - the matcher's slack).
    window_start: float | None = None
    # Latest moment a correct system must have alerted (default: detectable_at + tolerance).
    window_end: float | None = None


@dataclass(frozen=True)
class PlannedFault:
    """A fault of the scenario as a twin sees it: index, parameters and true start time."""

    index: int
    type: str
    options: FaultParams
    at: float


@dataclass
class TwinContext:
    """Everything a twin needs to plan itself; all times are epoch seconds (true time)."""

    site: str
    device: str
    start: float
    end: float
    interval: float
    phase: float
    shifts: list[Window]
    profile: Profile
    params: dict[str, Any]
    plan_rng: np.random.Generator
    noise_rng: np.random.Generator
    faults: list[PlannedFault] = field(default_factory=list)
    # Windows in which the twin must not do any process activity (data faults, site blackouts).
    quiet: list[Window] = field(default_factory=list)

    def limit(self, key: str) -> float:
        return self.profile.number(key, self.device)

    def param(self, name: str, default: float) -> float:
        return float(self.params.get(name, default))

    def sample_at_or_after(self, t: float) -> float:
        """The first reporting instant at or after `t`."""
        k = math.ceil((t - self.start - self.phase) / self.interval - 1e-9)
        return self.start + self.phase + max(k, 0) * self.interval

    def sample_before(self, t: float) -> float:
        """The last reporting instant strictly before `t`."""
        k = math.ceil((t - self.start - self.phase) / self.interval - 1e-9) - 1
        return self.start + self.phase + k * self.interval

    def is_quiet(self, a: float, b: float) -> bool:
        return overlaps(a, b, self.quiet)


class Twin:
    """Base of the twins: planned events, violations, and `values(t)` for the readings."""

    metric_names: tuple[str, ...] = ()

    def __init__(self, ctx: TwinContext) -> None:
        self.ctx = ctx
        self.events: list[PlannedEvent] = []
        self.violations: list[Violation] = []
        # Intervals of effective disinfection (plants) that the line meter follows.
        self.effective: list[Window] = []

    def values(self, t: float) -> dict[str, float]:
        """The metrics at true time `t`; called in increasing `t` (noise is drawn in order)."""
        return {}

    def violate(
        self,
        rule: str,
        fault: PlannedFault,
        at: float,
        start: float | None = None,
        end: float | None = None,
    ) -> None:
        self.violations.append(Violation(rule, fault.index, at, start, end))

    def faults_of(self, *types: str) -> list[PlannedFault]:
        return sorted((f for f in self.ctx.faults if f.type in types), key=lambda f: f.at)


def duration_s(options: FaultParams) -> float:
    """The `duration` parameter of a fault, in seconds."""
    value = getattr(options, "duration", None)
    if not isinstance(value, timedelta):
        raise TypeError(f"{type(options).__name__} has no duration")
    return value.total_seconds()


def overlaps(a: float, b: float, windows: Iterable[Window]) -> bool:
    return any(a < w1 and w0 < b for w0, w1 in windows)


def inside(t: float, windows: Sequence[Window]) -> bool:
    return any(w0 <= t < w1 for w0, w1 in windows)


def merge(windows: Iterable[Window]) -> list[Window]:
    out: list[Window] = []
    for w0, w1 in sorted(windows):
        if out and w0 <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], w1))
        else:
            out.append((w0, w1))
    return out


def subtract(windows: Iterable[Window], holes: Iterable[Window]) -> list[Window]:
    """The parts of `windows` outside every hole."""
    out = list(windows)
    for h0, h1 in merge(holes):
        nxt: list[Window] = []
        for w0, w1 in out:
            if h1 <= w0 or w1 <= h0:
                nxt.append((w0, w1))
                continue
            if w0 < h0:
                nxt.append((w0, h0))
            if h1 < w1:
                nxt.append((h1, w1))
        out = nxt
    return out


def bounded_noise(rng: np.random.Generator, sigma: float, bound: float) -> float:
    """Gaussian sensor noise clipped to ±bound."""
    return float(min(bound, max(-bound, rng.normal(0.0, sigma))))


class FirstOrder:
    """A first-order lag through segments: from each segment start the value moves towards
    the segment's target with time constant tau (heating, cooling, decay, re-dosing)."""

    def __init__(self, t0: float, v0: float) -> None:
        self._starts: list[float] = [t0]
        self._values: list[float] = [v0]
        self._targets: list[float] = [v0]
        self._taus: list[float] = [1.0]

    def set(self, t: float, target: float, tau: float) -> None:
        """From `t` on, move towards `target` (t must not precede the last segment)."""
        if t < self._starts[-1]:
            raise ValueError("segments must be added in time order")
        v = self.value(t)
        if t == self._starts[-1]:
            self._values[-1], self._targets[-1], self._taus[-1] = v, target, tau
            return
        self._starts.append(t)
        self._values.append(v)
        self._targets.append(target)
        self._taus.append(tau)

    def value(self, t: float) -> float:
        i = max(bisect.bisect_right(self._starts, t) - 1, 0)
        dt = max(t - self._starts[i], 0.0)
        target = self._targets[i]
        return target + (self._values[i] - target) * math.exp(-dt / self._taus[i])

    def first_crossing(
        self, t0: float, t1: float, level: float, below: bool, step: float
    ) -> float | None:
        """First time in [t0, t1] (on a `step` grid) the value is below (or above) `level`."""
        t = t0
        while t <= t1:
            v = self.value(t)
            if (v < level) if below else (v > level):
                return t
            t += step
        return None


def time_to(v0: float, target: float, level: float, tau: float) -> float:
    """Seconds a first-order lag from v0 towards target needs to reach `level`."""
    if (level - target) * (v0 - target) <= 0 or abs(v0 - target) <= abs(level - target):
        return 0.0
    return tau * math.log((v0 - target) / (level - target))
