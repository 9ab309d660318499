"""Medical-waste store of a hospital: the weighing scale (bags in, hand-overs) and the room."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

from weijian.devices.kinds import WasteCategory
from weijian.simulator.faults import ColdRoomWarm, MissingBag, OverdueWaste, WeightMismatch
from weijian.simulator.timeutil import LOCAL_TZ, local_hour, local_midnight, parse_clock
from weijian.simulator.twins.base import (
    PlannedEvent,
    Twin,
    TwinContext,
    Window,
    bounded_noise,
    duration_s,
    inside,
    merge,
)

# Share of bags by category (infectious dominant) and their weight range in kg.
CATEGORIES: dict[WasteCategory, tuple[float, float, float]] = {
    WasteCategory.INFECTIOUS: (0.70, 1.5, 9.0),
    WasteCategory.SHARPS: (0.12, 0.8, 3.0),
    WasteCategory.PHARMACEUTICAL: (0.08, 0.5, 4.0),
    WasteCategory.PATHOLOGICAL: (0.05, 1.0, 6.0),
    WasteCategory.CHEMICAL: (0.05, 0.5, 5.0),
}
DEPARTMENTS = ("内科", "外科", "妇产科", "儿科", "检验科", "手术室", "急诊科", "口腔科", "放射科")
TRANSPORTER = "市医疗废物集中处置中心"
_BAG_HOURS = (7.0, 20.0)


@dataclass
class Bag:
    bag_id: str
    at: float
    category: str
    weight_kg: float
    dept: str
    # When it left the store: a hand-over time, or the moment it went missing.
    out_at: float | None = None
    missing: bool = False


@dataclass
class HandOver:
    at: float
    bag_ids: list[str]
    weight_kg: float
    manifest_no: str
    extra: dict[str, float] = field(default_factory=dict)


class WasteScale(Twin):
    """The scale at the store door: `bag_in` through the day, `bag_out` at each hand-over."""

    def __init__(self, ctx: TwinContext) -> None:
        super().__init__(ctx)
        self.bags: list[Bag] = []
        self.handovers: list[HandOver] = []
        self.max_storage_s = ctx.limit("waste.max_storage_h") * 3600.0
        self._plan_bags()
        self._plan_handovers()
        self._events()

    def _plan_bags(self) -> None:
        ctx, rng = self.ctx, self.ctx.plan_rng
        per_day = ctx.param("bags_per_day", rng.uniform(15, 40))
        names = list(CATEGORIES)
        shares = [CATEGORIES[c][0] for c in names]
        day = local_midnight(ctx.start)
        while day < ctx.end:
            count = int(rng.poisson(per_day))
            times = sorted(day + rng.uniform(*_BAG_HOURS, size=count) * 3600.0)
            stamp = datetime.fromtimestamp(day + 43200, LOCAL_TZ).strftime("%Y%m%d")
            for n, t in enumerate(times, 1):
                if not ctx.start <= t < ctx.end:
                    continue
                category = names[int(rng.choice(len(names), p=shares))]
                _, low, high = CATEGORIES[category]
                weight = round(float(rng.uniform(low, high)), 2)
                dept = DEPARTMENTS[int(rng.integers(len(DEPARTMENTS)))]
                bag_id = f"YF-{ctx.site}-{stamp}-{n:03d}".upper()
                self.bags.append(Bag(bag_id, float(round(t)), category.value, weight, dept))
            day = local_midnight(day + 36 * 3600)
        for fault in self.faults_of("missing_bag"):
            options = fault.options
            assert isinstance(options, MissingBag)
            bag = next((b for b in self.bags if b.at >= fault.at and not b.missing), None)
            if bag is not None:
                bag.missing = True
                bag.out_at = bag.at + options.after.total_seconds()

    def _plan_handovers(self) -> None:
        ctx, rng = self.ctx, self.ctx.plan_rng
        every = min(ctx.param("pickup_every_h", 24.0), 44.0) * 3600.0
        clock = parse_clock(str(ctx.params.get("pickup_time", "10:00")))
        t = local_midnight(ctx.start) + clock * 3600.0
        while t < ctx.start + 3600:
            t += every
        suspended = [(f.at, f.at + duration_s(f.options)) for f in self.faults_of("overdue_waste")]
        mismatch = self.faults_of("weight_mismatch")
        while t < ctx.end:
            when = float(round(t + rng.uniform(-1800, 1800)))
            t += every
            if inside(when, suspended) or not ctx.start <= when < ctx.end:
                continue
            for bag in self.bags:
                # A missing bag disappears before the next hand-over after it came in.
                if (
                    bag.missing
                    and bag.at < when - 120
                    and bag.out_at is not None
                    and bag.out_at >= when
                ):
                    bag.out_at = when - 600
            taken = [b for b in self.bags if b.at < when - 120 and b.out_at is None]
            if not taken:
                continue
            total = sum(b.weight_kg for b in taken)
            weight = total * (1 + bounded_noise(rng, 0.002, 0.006))
            for fault in mismatch:
                if when >= fault.at and not any(v.fault == fault.index for v in self.violations):
                    options = fault.options
                    assert isinstance(options, WeightMismatch)
                    weight = total * (1 + options.error_pct / 100.0)
                    self.violate("waste.weight_mismatch", fault, when)
            for bag in taken:
                bag.out_at = when
            stamp = datetime.fromtimestamp(when, LOCAL_TZ).strftime("%Y%m%d")
            manifest = f"ZY{stamp}{int(rng.integers(100000, 999999))}"
            self.handovers.append(
                HandOver(when, [b.bag_id for b in taken], round(weight, 2), manifest)
            )
        self._missing_violations()
        self._overdue_violations()

    def _missing_violations(self) -> None:
        for fault in self.faults_of("missing_bag"):
            bag = next((b for b in self.bags if b.at >= fault.at and b.missing), None)
            if bag is None:
                continue
            after = next((h for h in self.handovers if h.at - 120 > bag.at), None)
            if after is not None:
                self.violate("waste.bag_missing", fault, after.at)

    def _overdue_violations(self) -> None:
        warn = self.ctx.limit("waste.warn_storage_h") * 3600.0
        for fault in self.faults_of("overdue_waste"):
            options = fault.options
            assert isinstance(options, OverdueWaste)
            late = [
                b
                for b in self.bags
                if not b.missing
                and (b.out_at if b.out_at is not None else self.ctx.end) - b.at > self.max_storage_s
            ]
            if late:
                oldest = min(b.at for b in late)
                self.violate(
                    "waste.storage_overdue", fault, oldest + self.max_storage_s, start=oldest + warn
                )

    def _events(self) -> None:
        for bag in self.bags:
            data = {
                "bag_id": bag.bag_id,
                "category": bag.category,
                "weight_kg": bag.weight_kg,
                "dept": bag.dept,
            }
            self.events.append(PlannedEvent(bag.at, "bag_in", data))
        transporter = str(self.ctx.params.get("transporter", TRANSPORTER))
        for h in self.handovers:
            data = {
                "bag_ids": h.bag_ids,
                "weight_kg": h.weight_kg,
                "manifest_no": h.manifest_no,
                "transporter": transporter,
            }
            self.events.append(PlannedEvent(h.at, "bag_out", data))
        self.events.sort(key=lambda e: e.at)


class WasteStoreEnv(Twin):
    """The store room: temperature over the day (or a cold room), humidity, door and UV lamp."""

    metric_names = ("temp_c", "humidity_pct", "door_open", "uv_on")

    def __init__(self, ctx: TwinContext, scale: WasteScale | None, cold: bool) -> None:
        super().__init__(ctx)
        rng = ctx.plan_rng
        self.cold = cold
        self.limit = ctx.limit("waste.max_temp_c")
        self.base_c = ctx.param(
            "base_temp_c", rng.uniform(13.0, 15.0) if cold else rng.uniform(21, 24)
        )
        self.swing_c = 1.2 if cold else 4.0
        door: list[Window] = []
        handovers = scale.handovers if scale else []
        for bag in scale.bags if scale else []:
            door.append((bag.at - rng.uniform(10, 40), bag.at + rng.uniform(40, 120)))
        uv: list[Window] = []
        for h in handovers:
            closes = h.at + rng.uniform(180, 480)
            door.append((h.at - rng.uniform(120, 240), closes))
            begin = closes + rng.uniform(300, 900)
            uv.append((begin, begin + rng.uniform(32, 45) * 60))
        daily = parse_clock(str(ctx.params.get("uv_time", "21:30"))) * 3600.0
        day = local_midnight(ctx.start)
        while day < ctx.end:
            begin = day + daily + rng.uniform(0, 900)
            uv.append((begin, begin + rng.uniform(40, 55) * 60))
            day = local_midnight(day + 36 * 3600)
        for fault in self.faults_of("door_open"):
            door.append((fault.at, fault.at + duration_s(fault.options)))
            limit_s = ctx.limit("waste.max_door_open_min") * 60.0
            # Durations are proven from samples: from the first one showing the door open to
            # one strictly more than the limit later.
            opened = ctx.sample_at_or_after(fault.at)
            self.violate(
                "waste.door_open_long", fault, ctx.sample_at_or_after(opened + limit_s + 1e-3)
            )
        for fault in self.faults_of("no_uv"):
            d0 = local_midnight(fault.at)
            d1 = local_midnight(d0 + 36 * 3600)
            uv = [w for w in uv if not (d0 <= w[0] < d1)]
            first = next((h.at for h in handovers if d0 <= h.at < d1), None)
            if first is None:
                self.violate("waste.uv_not_done", fault, d1, end=d1 + 3600)
            else:
                # The after-hand-over check is judged once its window is over.
                after_s = ctx.limit("waste.uv_after_handover_h") * 3600.0
                self.violate(
                    "waste.uv_not_done",
                    fault,
                    min(first + after_s, d1),
                    start=first + 1800,
                    end=d1 + 3600,
                )
        self.door = merge(door)
        self.uv = merge(uv)
        self._warm = [
            (f.at, f.at + duration_s(f.options), f) for f in self.faults_of("cold_room_warm")
        ]
        # The rule fires on a spell at or above the limit lasting the sustain time.
        sustain = ctx.limit("waste.temp_sustain_min") * 60.0
        for a, b, fault in self._warm:
            t = ctx.sample_at_or_after(a)
            while t < b:
                if self._base(t) > self.limit + 0.3:
                    self.violate("waste.cold_storage_temp_high", fault, t + sustain, start=t)
                    break
                t += ctx.interval
        # Activity that a powered-off device would fail to report (checked by the planner).
        self.activity = merge(self.door + self.uv)

    def _base(self, t: float) -> float:
        temp = self.base_c + self.swing_c * math.sin(2 * math.pi * (local_hour(t) - 9.0) / 24.0)
        for a, b, fault in self._warm:
            options = fault.options
            assert isinstance(options, ColdRoomWarm)
            rise = options.ambient_c - self.base_c
            if a <= t < b:
                temp += rise * (1 - math.exp(-(t - a) / 2400.0))
            elif t >= b:
                temp += rise * (1 - math.exp(-(b - a) / 2400.0)) * math.exp(-(t - b) / 1800.0)
        return temp

    def values(self, t: float) -> dict[str, float]:
        rng = self.ctx.noise_rng
        door = inside(t, self.door)
        temp = self._base(t) + (0.8 if door and self.cold else 0.0)
        humidity = 58 - 1.2 * (temp - self.base_c) + 6 * math.sin(2 * math.pi * local_hour(t) / 24)
        return {
            "temp_c": round(temp + bounded_noise(rng, 0.08, 0.2), 2),
            "humidity_pct": round(min(95.0, max(20.0, humidity + bounded_noise(rng, 0.6, 1.5))), 1),
            "door_open": 1.0 if door else 0.0,
            "uv_on": 1.0 if inside(t, self.uv) else 0.0,
        }
