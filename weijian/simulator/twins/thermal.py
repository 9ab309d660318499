"""Steam and infrared disinfection cabinets: batches of load, heat-up, hold, cool-down, unload."""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from datetime import datetime

from weijian.devices.kinds import DeviceKind
from weijian.simulator.faults import NoHeat, ShortHold, UnderTemp
from weijian.simulator.timeutil import LOCAL_TZ, local_hour
from weijian.simulator.twins.base import (
    FirstOrder,
    PlannedEvent,
    PlannedFault,
    Twin,
    TwinContext,
    Window,
    bounded_noise,
    inside,
    merge,
    time_to,
)

# kind → (profile prefix, setpoint margin above the limit (low, high), heat-up time constant s)
_KIND = {
    DeviceKind.STEAM_CABINET: ("steam", (4.0, 8.0), 90.0),
    DeviceKind.INFRARED_CABINET: ("infrared", (6.0, 12.0), 120.0),
}
_COOL_TAU_S = 480.0
_OPEN_TAU_S = 240.0
_WOBBLE_C = 0.35
_WOBBLE_PERIOD_S = 170.0
_NOISE_BOUND_C = 0.3
# Readings are at least this far above the limit during a compliant hold (wobble + noise below).
_HOLD_MARGIN_C = 0.5


def ambient_c(t: float) -> float:
    """Room temperature of a plant: 22–26 °C over the day, warmest mid-afternoon."""
    return 24.0 + 2.0 * math.sin(2 * math.pi * (local_hour(t) - 9.0) / 24.0)


@dataclass(frozen=True)
class Batch:
    batch_id: str
    load: float  # door opens for loading
    close: float  # door closes: batch_start
    at_temp: float  # reaches limit + margin (or would have, for a batch that does not heat)
    heat_off: float  # batch_end
    open: float  # door opens to unload
    unloaded: float  # unloading done
    setpoint: float
    fault: str | None = None


class Cabinet(Twin):
    """A steam or infrared cabinet (`temp_c`, `door_open`; `batch_start`/`batch_end`)."""

    metric_names = ("temp_c", "door_open")

    def __init__(self, ctx: TwinContext, kind: DeviceKind) -> None:
        super().__init__(ctx)
        prefix, self._margin, self._tau = _KIND[kind]
        self.limit = ctx.limit(f"{prefix}.min_temp_c")
        self.min_hold = ctx.limit(f"{prefix}.min_hold_s")
        self.model = FirstOrder(ctx.start - 86400, ambient_c(ctx.start))
        self.batches: list[Batch] = []
        self._door: list[Window] = []
        self._pending = self.faults_of("under_temp", "no_heat", "short_hold")
        self._left = {f.index: int(getattr(f.options, "batches", 1)) for f in self._pending}
        self._plan()
        self._closes = [b.close for b in self.batches]
        self._door = merge(self._door)

    # -- planning -------------------------------------------------------------------------
    def _plan(self) -> None:
        rng = self.ctx.plan_rng
        fixed_setpoint = self.ctx.params.get("setpoint_c")
        free = -math.inf  # when the cabinet is empty again (a batch may run past its shift)
        for w0, w1 in self.ctx.shifts:
            t = max(w0 + rng.uniform(120, 480), free)
            while t < w1 - 600:
                load = rng.uniform(180, 300)
                close = t + load
                hold = float(self.ctx.params.get("hold_s", self.min_hold * rng.uniform(1.2, 1.5)))
                span = self._tau * 4 + hold + 900
                quiet = [q for q in self.ctx.quiet if t - 60 < q[1] and q[0] < close + span]
                if quiet:
                    t = max(q[1] for q in quiet) + rng.uniform(120, 300)
                    continue
                setpoint = float(fixed_setpoint or self.limit + rng.uniform(*self._margin))
                t = free = self._batch(t, close, setpoint, hold)

    def _batch(self, load: float, close: float, setpoint: float, hold: float) -> float:
        rng = self.ctx.plan_rng
        fault = self._take_fault(close)
        start_temp = self.model.value(close)
        at_temp = close + time_to(start_temp, setpoint, self.limit + _HOLD_MARGIN_C, self._tau)
        target = setpoint
        if fault is not None and isinstance(fault.options, ShortHold):
            hold = fault.options.hold.total_seconds() if fault.options.hold else 0.6 * self.min_hold
            hold = min(hold, self.min_hold - 3 * self.ctx.interval - 30)
        if fault is not None and isinstance(fault.options, NoHeat):
            target = self.limit - fault.options.below_c
        heat_off = at_temp + hold
        self.model.set(close, target, self._tau)
        if fault is not None and isinstance(fault.options, UnderTemp):
            sag = max(fault.options.sag.total_seconds(), 90.0)
            sag_at = at_temp + hold * rng.uniform(0.4, 0.5) - sag / 2
            self.model.set(sag_at, self.limit - fault.options.depth_c - 1.0, 40.0)
            self.model.set(sag_at + sag, setpoint, 60.0)
        self.model.set(heat_off, ambient_c(heat_off), _COOL_TAU_S)
        opened = heat_off + rng.uniform(120, 240)
        self.model.set(opened, ambient_c(opened), _OPEN_TAU_S)
        unloaded = opened + rng.uniform(120, 240)
        day = datetime.fromtimestamp(close, LOCAL_TZ).strftime("%Y%m%d")
        number = sum(1 for b in self.batches if b.batch_id.startswith(f"{self.ctx.device}-{day}"))
        batch = Batch(
            f"{self.ctx.device}-{day}-{number + 1:03d}",
            load,
            round(close),
            at_temp,
            round(heat_off),
            opened,
            unloaded,
            setpoint,
            fault.type if fault else None,
        )
        self.batches.append(batch)
        self._door += [(load, close), (opened, unloaded)]
        data = {"batch_id": batch.batch_id}
        self.events.append(_event(batch.close, "batch_start", data))
        self.events.append(_event(batch.heat_off, "batch_end", data))
        if fault is None:
            self.effective.append((batch.heat_off, batch.heat_off))
        else:
            rule = (
                "disinfection.temperature_low"
                if isinstance(fault.options, NoHeat)
                else "disinfection.hold_time_short"
            )
            if not any(v.fault == fault.index for v in self.violations):
                self.violate(rule, fault, batch.heat_off)
        return unloaded

    def _take_fault(self, close: float) -> PlannedFault | None:
        """The fault that hits the batch closing at `close` (each fault hits `batches` batches)."""
        for fault in self._pending:
            if close >= fault.at and self._left.get(fault.index, 0) > 0:
                self._left[fault.index] -= 1
                return fault
        return None

    # -- readings -------------------------------------------------------------------------
    def values(self, t: float) -> dict[str, float]:
        temp = self.model.value(t)
        i = bisect.bisect_right(self._closes, t) - 1
        if i >= 0 and t < self.batches[i].heat_off:
            since = t - self.batches[i].close
            ramp = min(1.0, since / (3 * self._tau))
            temp += _WOBBLE_C * ramp * math.sin(2 * math.pi * since / _WOBBLE_PERIOD_S)
        temp += bounded_noise(self.ctx.noise_rng, 0.12, _NOISE_BOUND_C)
        return {"temp_c": round(temp, 2), "door_open": 1.0 if inside(t, self._door) else 0.0}


def _event(at: float, kind: str, data: dict[str, str]) -> PlannedEvent:
    return PlannedEvent(at, kind, dict(data))
