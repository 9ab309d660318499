"""Dish machine, chlorine tank and line meter of a disinfection plant."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime

from weijian.simulator.faults import ChlorineLow, ConveyorFast, RinseCold, ShortImmersion
from weijian.simulator.timeutil import LOCAL_TZ
from weijian.simulator.twins.base import (
    FirstOrder,
    PlannedEvent,
    PlannedFault,
    Twin,
    TwinContext,
    Window,
    bounded_noise,
    duration_s,
    inside,
    merge,
    subtract,
    time_to,
)
from weijian.simulator.twins.thermal import ambient_c

_PREHEAT_S = 45 * 60.0
_RINSE_TAU_S = 600.0
_FAULT_TAU_S = 300.0
_IDLE_TAU_S = 3600.0
# Packing never goes on longer than this after the site's last effective disinfection.
PACKING_TAIL_S = 15 * 60.0


class DishMachine(Twin):
    """A tunnel dish machine: tanks pre-heat before the shift, the conveyor runs in the shift."""

    metric_names = ("wash_temp_c", "rinse_temp_c", "conveyor_speed_m_min", "running")

    def __init__(self, ctx: TwinContext) -> None:
        super().__init__(ctx)
        rng = ctx.plan_rng
        self.limit = ctx.limit("dish.min_rinse_temp_c")
        zone = ctx.limit("dish.zone_length_m")
        self.max_speed = zone / ctx.limit("dish.min_exposure_s") * 60.0
        self.rinse_set = ctx.param("rinse_setpoint_c", self.limit + rng.uniform(2.5, 5.0))
        self.wash_set = ctx.param("wash_setpoint_c", rng.uniform(58.0, 64.0))
        self.speed = ctx.param("speed_m_min", self.max_speed * rng.uniform(0.62, 0.8))
        runs = [(r0, r1) for r0, r1 in subtract(ctx.shifts, ctx.quiet) if r1 - r0 >= 1800]
        heat: list[Window] = []
        for r0, r1 in runs:
            on = r0 if ctx.is_quiet(r0 - _PREHEAT_S, r0) else r0 - _PREHEAT_S
            heat.append((on, r1))
        self._cold = self._fault_windows("rinse_cold")
        self.rinse = self._lag(merge(heat), self.rinse_set, self._cold)
        self.wash = self._lag(merge(heat), self.wash_set, [])
        self.running: list[Window] = []
        for (on, off), (r0, _) in zip(heat, runs, strict=True):
            warm = on + time_to(
                self.rinse.value(on), self.rinse_set, self.limit + 1.5, _RINSE_TAU_S
            )
            if max(warm, r0) < off:
                self.running.append((max(warm, r0), off))
        self._fast = self._fault_windows("conveyor_fast")
        self._violations()
        bad = [(a, b + 900) for a, b, _ in self._cold] + [(a, b) for a, b, _ in self._fast]
        self.effective = subtract(self.running, bad)

    def _fault_windows(self, kind: str) -> list[tuple[float, float, PlannedFault]]:
        out = []
        for fault in self.faults_of(kind):
            duration = duration_s(fault.options)
            out.append((fault.at, fault.at + duration, fault))
        return out

    def _lag(
        self, heat: list[Window], setpoint: float, cold: list[tuple[float, float, PlannedFault]]
    ) -> FirstOrder:
        model = FirstOrder(self.ctx.start - 86400, ambient_c(self.ctx.start))
        bounds = sorted({t for w in heat for t in w} | {t for a, b, _ in cold for t in (a, b)})
        for t in bounds:
            if not inside(t, heat):
                model.set(t, ambient_c(t), _IDLE_TAU_S)
                continue
            target, tau = setpoint, _RINSE_TAU_S
            for a, b, fault in cold:
                if a <= t < b:
                    options = fault.options
                    assert isinstance(options, RinseCold)
                    target, tau = (options.rinse_c or self.limit - 7.0), _FAULT_TAU_S
                elif t == b:
                    tau = _FAULT_TAU_S
            model.set(t, target, tau)
        return model

    def _violations(self) -> None:
        for a, b, fault in self._cold:
            first = _first_sample(
                self.ctx,
                a,
                b,
                lambda t: inside(t, self.running) and self.rinse.value(t) < self.limit - 0.35,
            )
            if first is not None:
                self.violate("disinfection.temperature_low", fault, first)
        for a, b, fault in self._fast:
            first = _first_sample(self.ctx, a, b, lambda t: inside(t, self.running))
            if first is not None:
                self.violate("disinfection.exposure_short", fault, first)

    def values(self, t: float) -> dict[str, float]:
        rng = self.ctx.noise_rng
        running = inside(t, self.running)
        speed = 0.0
        if running:
            speed = self.speed + bounded_noise(rng, 0.01, 0.02)
            for a, b, fault in self._fast:
                if a <= t < b:
                    options = fault.options
                    assert isinstance(options, ConveyorFast)
                    speed = (options.speed_m_min or self.max_speed * 1.6) + bounded_noise(
                        rng, 0.01, 0.02
                    )
        wobble = 0.4 * math.sin(2 * math.pi * t / 200.0)
        return {
            "wash_temp_c": round(self.wash.value(t) + wobble + bounded_noise(rng, 0.15, 0.4), 2),
            "rinse_temp_c": round(self.rinse.value(t) + wobble + bounded_noise(rng, 0.12, 0.3), 2),
            "conveyor_speed_m_min": round(speed, 3),
            "running": 1.0 if running else 0.0,
        }


def _first_sample(
    ctx: TwinContext, a: float, b: float, ok: Callable[[float], bool]
) -> float | None:
    t = ctx.sample_at_or_after(a)
    while t < b:
        if ok(t):
            return t
        t += ctx.interval
    return None


class ChlorineTank(Twin):
    """A chlorine immersion tank: a dosing pump keeps available chlorine up; baskets go in, out."""

    metric_names = ("chlorine_mg_l",)

    def __init__(self, ctx: TwinContext) -> None:
        super().__init__(ctx)
        rng = ctx.plan_rng
        self.limit = ctx.limit("chlorine.min_mg_l")
        self.min_immersion = ctx.limit("chlorine.min_immersion_s")
        self.dose = ctx.param("dose_mg_l", rng.uniform(460.0, 520.0))
        self.redose_at = max(self.limit + 80.0, ctx.param("redose_below_mg_l", 330.0))
        self.model = FirstOrder(ctx.start - 86400, self.dose * rng.uniform(0.85, 0.95))
        self._last_dose_end = ctx.start
        short = self.faults_of("short_immersion")
        left = {f.index: getattr(f.options, "baskets", 1) for f in short}
        self.baskets: list[tuple[str, float, float, PlannedFault | None]] = []
        for w0, w1 in subtract(ctx.shifts, ctx.quiet):
            t = w0 + rng.uniform(300, 900)
            while t + 660 < w1:
                immersion = rng.uniform(max(self.min_immersion, 300) + 60, self.min_immersion + 210)
                hit = next((f for f in short if t >= f.at and left[f.index] > 0), None)
                if hit is not None:
                    left[hit.index] -= 1
                    options = hit.options
                    assert isinstance(options, ShortImmersion)
                    immersion = min(options.immersion.total_seconds(), self.min_immersion - 60)
                self._basket(round(t), round(t + immersion), hit)
                t += immersion + rng.uniform(60, 360)
        self._low = self._plan_low()
        self._plan_dosing()
        bad = [(a - 60, b + 600) for a, b, _ in self._low]
        self.effective = [
            (out, out)
            for _, bin_, out, fault in self.baskets
            if fault is None and not inside(bin_, bad) and not inside(out, bad)
        ]

    def _basket(self, t_in: float, t_out: float, fault: PlannedFault | None) -> None:
        day = datetime.fromtimestamp(t_in, LOCAL_TZ).strftime("%Y%m%d")
        basket_id = f"{self.ctx.device}-{day}-{len(self.baskets) + 1:04d}"
        self.baskets.append((basket_id, t_in, t_out, fault))
        self.events.append(PlannedEvent(t_in, "basket_in", {"basket_id": basket_id}))
        self.events.append(PlannedEvent(t_out, "basket_out", {"basket_id": basket_id}))
        if fault is not None and not any(v.fault == fault.index for v in self.violations):
            self.violate("disinfection.immersion_short", fault, t_out)

    def _plan_low(self) -> list[tuple[float, float, PlannedFault]]:
        out = []
        for fault in self.faults_of("chlorine_low"):
            options = fault.options
            assert isinstance(options, ChlorineLow)
            basket = next((b for b in self.baskets if b[1] >= fault.at and b[3] is None), None)
            if basket is None:
                continue
            drop = basket[1] + 15.0
            out.append((drop, drop + options.duration.total_seconds(), fault))
        return out

    def _plan_dosing(self) -> None:
        """Walk through time: decay (faster in shifts), re-dose at the threshold, dilutions."""
        ctx = self.ctx
        bounds = sorted(
            {t for w in ctx.shifts for t in w}
            | {t for a, b, _ in self._low for t in (a, b)}
            | {ctx.start, ctx.end}
        )
        bounds = [b for b in bounds if ctx.start <= b <= ctx.end]
        tau_shift = 4 * 3600.0 * ctx.plan_rng.uniform(0.8, 1.2)
        tau_idle = 40 * 3600.0
        for i, t in enumerate(bounds[:-1]):
            nxt = bounds[i + 1]
            tau = tau_shift if inside(t, ctx.shifts) else tau_idle
            low = next(((a, b, f) for a, b, f in self._low if a <= t < b), None)
            if low is not None:
                options = low[2].options
                assert isinstance(options, ChlorineLow)
                if t == low[0]:
                    self.model.set(t, options.mg_l * 0.95, 25.0)
                    self.model.set(t + 150.0, 0.0, tau)
                    first = _first_sample(
                        ctx, t, low[1], lambda s: self.model.value(s) < self.limit - 5
                    )
                    if first is not None:
                        self.violate("disinfection.chlorine_low", low[2], first)
                continue  # the pump is off during the fault
            if any(t == b for _, b, _ in self._low):
                self._dose(t)
            self.model.set(max(t, self._last_dose_end), 0.0, tau)
            while True:
                start = max(t, self._last_dose_end)
                value = self.model.value(start)
                due = start + time_to(value, 0.0, self.redose_at, tau)
                if due >= nxt:
                    break
                self._dose(due)
                self.model.set(self._last_dose_end, 0.0, tau)

    def _dose(self, t: float) -> None:
        self.model.set(t, self.dose, 60.0)
        self._last_dose_end = t + 300.0

    def values(self, t: float) -> dict[str, float]:
        value = self.model.value(t) + bounded_noise(self.ctx.noise_rng, 1.2, 3.0)
        return {"chlorine_mg_l": round(max(value, 0.0), 1)}


class LineMeter(Twin):
    """Power, water and the packing counter of a production line; it packs only after the site's
    disinfection stages have worked (within PACKING_TAIL_S of an effective disinfection)."""

    metric_names = ("power_kw", "water_l_min", "packed_total")

    def __init__(self, ctx: TwinContext, effective: list[Window]) -> None:
        super().__init__(ctx)
        rng = ctx.plan_rng
        self.rate = ctx.param("items_per_s", rng.uniform(0.2, 0.3))
        self.base = int(ctx.param("packed_start", float(rng.integers(100_000, 2_000_000))))
        self.kw_idle = rng.uniform(1.5, 3.0)
        self.kw_shift = rng.uniform(15.0, 25.0)
        packing = [(a + rng.uniform(0, 60), b + PACKING_TAIL_S) for a, b in effective]
        packing = subtract(merge(packing), ctx.quiet)
        for fault in self.faults_of("packing_without_disinfection"):
            duration = duration_s(fault.options)
            packing.append((fault.at, fault.at + duration))
            first = ctx.sample_at_or_after(fault.at) + ctx.interval
            # Evidence stamped up to the allowed clock skew after a packing still covers it,
            # so the packing is provably uncovered only that long after it.
            margin = ctx.limit("clock_skew.max_s")
            self.violate("disinfection.released_undisinfected", fault, first + margin, start=first)
        self.packing = merge(packing)
        self._cumulative = [0.0]
        for a, b in self.packing:
            self._cumulative.append(self._cumulative[-1] + (b - a))

    def packed(self, t: float) -> int:
        """Counter value at `t`: the start value plus items packed so far (exact, monotonic)."""
        done = 0.0
        for i, (a, b) in enumerate(self.packing):
            if t <= a:
                break
            done = self._cumulative[i] + (min(t, b) - a)
        return self.base + int(self.rate * done)

    def values(self, t: float) -> dict[str, float]:
        rng = self.ctx.noise_rng
        working = inside(t, self.ctx.shifts)
        packing = inside(t, self.packing)
        power = self.kw_idle + (self.kw_shift if working else 0.0) + (9.0 if packing else 0.0)
        water = 34.0 if working else 0.4
        return {
            "power_kw": round(max(power + bounded_noise(rng, 0.3, 0.9), 0.0), 2),
            "water_l_min": round(max(water + bounded_noise(rng, 0.6, 1.5), 0.05), 2),
            "packed_total": float(self.packed(t)),
        }
