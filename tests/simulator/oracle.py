"""An independent reading of the simulator's output: which rules its messages violate.

Deliberately simple checks straight from DOMAIN.md, used to show that each fault violates its
own rule and nothing else, and that clean scenarios violate nothing. Thermal batches are judged
by the platform's own detector.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import replace
from datetime import timedelta
from typing import Any

import orjson

from tests.simulator.helpers import by_device, items, site_data
from weijian.alerts.detectors.thermal import ThermalBatchDetector
from weijian.devices.kinds import KINDS, DeviceKind
from weijian.simulator.engine import MemorySink
from weijian.simulator.labels import DEFAULT_FLATLINE_WINDOW_S
from weijian.simulator.scenario import Scenario
from weijian.simulator.timeutil import local_midnight

Target = tuple[str, str, str]  # (rule, site, device)
_ANALOG = {"temp_c", "wash_temp_c", "rinse_temp_c", "chlorine_mg_l", "humidity_pct", "power_kw"}


def violations(sc: Scenario, sink: MemorySink) -> set[Target]:
    """Every (rule, site, device) the messages of a run violate."""
    found: set[Target] = set()
    for site in sc.sites:
        prof = {**_defaults(site.kind.value), **sc.site_profile(site.key)}
        data = site_data(sink, sc, site.key)
        for rule in ("disinfection.temperature_low", "disinfection.hold_time_short"):
            # Judge the whole run, settled: every batch's data is in.
            whole = replace(data, late_since=sc.start)
            for f in ThermalBatchDetector(rule)(whole, sc.end + timedelta(minutes=10)):
                if f.state == "firing" and f.device_id:
                    found.add((rule, site.key, f.device_id.split("/")[1]))
        effective: list[float] = []
        for spec in site.devices:
            ref = f"{site.key}/{spec.key}"
            found |= {
                (r, site.key, spec.key) for r in _integrity(sink, ref, spec.kind, spec.interval_s)
            }
            tel = list(items(sink, ref, "telemetry"))
            ev = items(sink, ref, "events")
            if spec.kind == DeviceKind.DISH_MACHINE:
                zone, min_exp = (
                    float(prof["dish.zone_length_m"]),
                    float(prof["dish.min_exposure_s"]),
                )
                for i in tel:
                    m = i["metrics"]
                    if m["running"] == 1 and m["rinse_temp_c"] < prof["dish.min_rinse_temp_c"]:
                        found.add(("disinfection.temperature_low", site.key, spec.key))
                    if m["running"] == 1 and zone / m["conveyor_speed_m_min"] * 60 < min_exp:
                        found.add(("disinfection.exposure_short", site.key, spec.key))
                    if m["running"] == 1:
                        effective.append(i["ts"] / 1000)
            if spec.kind == DeviceKind.CHLORINE_TANK:
                found |= {(r, site.key, spec.key) for r in _chlorine(tel, ev, prof)}
                effective += [_sec(e["ts"]) for e in ev if e["type"] == "basket_out"]
            if spec.kind in (DeviceKind.STEAM_CABINET, DeviceKind.INFRARED_CABINET):
                effective += [_sec(e["ts"]) for e in ev if e["type"] == "batch_end"]
            if spec.kind == DeviceKind.WASTE_SCALE:
                found |= {(r, site.key, spec.key) for r in _scale(ev, prof, sc)}
            if spec.kind == DeviceKind.WASTE_STORE_ENV:
                found |= {(r, site.key, spec.key) for r in _env(tel, prof)}
        for spec in site.devices:
            if spec.kind == DeviceKind.LINE_METER:
                tel = items(sink, f"{site.key}/{spec.key}", "telemetry")
                if _released(tel, sorted(effective)):
                    found.add(("disinfection.released_undisinfected", site.key, spec.key))
    return found


def _defaults(kind: str) -> dict[str, float]:
    from weijian.alerts.profiles import default_profile

    return dict(default_profile(kind).items())


def _sec(ts: str | int) -> float:
    from datetime import datetime

    return datetime.fromisoformat(ts).timestamp() if isinstance(ts, str) else ts / 1000


def _integrity(sink: MemorySink, ref: str, kind: DeviceKind, interval: float) -> set[str]:
    out: set[str] = set()
    spec = KINDS[kind]
    messages = by_device(sink).get(ref, [])
    if any(m.channel == "status" and m.payload == b'{"online":false}' for m in messages):
        out.add("device.offline")
    arrivals = [m.at for m in messages if m.channel != "status"]
    limit = max(3 * interval, 600)
    if spec.metrics and any(b - a > limit for a, b in itertools.pairwise(arrivals)):
        out.add("device.offline")
    epochs: list[set[int]] = [set()]
    previous: int | None = None
    seen: dict[int, bytes] = {}
    for m in messages:
        if m.channel == "status":
            continue
        body = orjson.loads(m.payload)
        for item in body if isinstance(body, list) else [body]:
            seq = item["seq"]
            if seq == 0 and previous:
                epochs.append(set())  # a reboot: seq starts again
                seen = {}
            elif seq in seen:
                out.add("data.replay")
            seen[seq] = orjson.dumps(item)
            epochs[-1].add(seq)
            previous = seq
            if not isinstance(body, list) and abs(_sec(item["ts"]) - m.at) > 300:
                out.add("data.clock_skew")
            for name, value in item.get("metrics", {}).items():
                ms = spec.metric(name)
                assert ms is not None
                if not ms.low <= value <= ms.high:
                    out.add("data.out_of_range")
    if any(e and max(e) - min(e) + 1 > len(e) for e in epochs):
        out.add("data.sequence_gap")
    tel = [
        i for m in messages if m.channel == "telemetry" for i in _unpack(orjson.loads(m.payload))
    ]
    window = DEFAULT_FLATLINE_WINDOW_S
    for name in spec.metric_names & _ANALOG:
        run_start, last = None, None
        for i in tel:
            v, t = i["metrics"].get(name), i["ts"] / 1000
            if v is None:
                continue
            if v != last:
                run_start, last = t, v
            elif run_start is not None and t - run_start >= window:
                out.add("data.flatline")
    return out


def _unpack(body: Any) -> list[dict[str, Any]]:
    return body if isinstance(body, list) else [body]


def _chlorine(tel: list[dict], ev: list[dict], prof: dict) -> set[str]:  # type: ignore[type-arg]
    out: set[str] = set()
    opened: dict[str, float] = {}
    spans = []
    for e in ev:
        if e["type"] == "basket_in":
            opened[e["data"]["basket_id"]] = _sec(e["ts"])
        elif e["type"] == "basket_out":
            t0 = opened.pop(e["data"]["basket_id"])
            spans.append((t0, _sec(e["ts"])))
            if _sec(e["ts"]) - t0 < prof["chlorine.min_immersion_s"]:
                out.add("disinfection.immersion_short")
    for i in tel:
        t = i["ts"] / 1000
        if i["metrics"]["chlorine_mg_l"] < prof["chlorine.min_mg_l"] and any(
            a <= t <= b for a, b in spans
        ):
            out.add("disinfection.chlorine_low")
    return out


def _released(tel: list[dict], effective: list[float]) -> bool:  # type: ignore[type-arg]
    for prev, cur in itertools.pairwise(tel):
        if cur["metrics"]["packed_total"] > prev["metrics"]["packed_total"]:
            t = cur["ts"] / 1000
            if not any(t - 1200 <= e <= t + 60 for e in effective):
                return True
    return False


def _scale(ev: list[dict], prof: dict, sc: Scenario) -> set[str]:  # type: ignore[type-arg]
    out: set[str] = set()
    bags = {e["data"]["bag_id"]: e for e in ev if e["type"] == "bag_in"}
    out_at: dict[str, float] = {}
    last_out = None
    for e in ev:
        if e["type"] != "bag_out":
            continue
        last_out = _sec(e["ts"])
        total = sum(bags[b]["data"]["weight_kg"] for b in e["data"]["bag_ids"])
        if abs(e["data"]["weight_kg"] - total) > total * prof["waste.weight_tolerance_pct"] / 100:
            out.add("waste.weight_mismatch")
        for b in e["data"]["bag_ids"]:
            assert b not in out_at, "a bag handed over twice"
            out_at[b] = last_out
        for b, bag in bags.items():
            if b not in out_at and _sec(bag["ts"]) < last_out - 120:
                out.add("waste.bag_missing")
    end = sc.end.timestamp()
    for b, bag in bags.items():
        known = b in out_at or "waste.bag_missing" not in out
        if known and out_at.get(b, end) - _sec(bag["ts"]) > prof["waste.max_storage_h"] * 3600:
            out.add("waste.storage_overdue")
    return out


def _env(tel: list[dict], prof: dict) -> set[str]:  # type: ignore[type-arg]
    out: set[str] = set()
    uv_by_day: dict[float, float] = defaultdict(float)
    open_since = None
    for prev, cur in itertools.pairwise(tel):
        t0, t1 = prev["ts"] / 1000, cur["ts"] / 1000
        if prev["metrics"]["uv_on"] == 1 and cur["metrics"]["uv_on"] == 1:
            uv_by_day[local_midnight(t0)] += t1 - t0
        if cur["metrics"]["door_open"] == 1:
            open_since = open_since or t1
            if t1 - open_since > prof["waste.max_door_open_min"] * 60:
                out.add("waste.door_open_long")
        else:
            open_since = None
        if (
            prof["waste.cold_storage_required"]
            and cur["metrics"]["temp_c"] > prof["waste.max_temp_c"]
        ):
            out.add("waste.cold_storage_temp_high")
    first, last = tel[0]["ts"] / 1000, tel[-1]["ts"] / 1000
    for day in sorted({local_midnight(i["ts"] / 1000) for i in tel}):
        if first > day or last < day + 86400:
            continue  # a day the scenario covers only in part
        if uv_by_day[day] < prof["waste.min_uv_min_per_day"] * 60:
            out.add("waste.uv_not_done")
    return out
