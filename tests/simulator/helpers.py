"""Small helpers for the simulator tests: build scenarios, run them in memory, decode messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from weijian.alerts.models import DeviceData, SiteData
from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import DeviceKind, SiteKind
from weijian.simulator.device import Outgoing
from weijian.simulator.engine import MemorySink, Simulation
from weijian.simulator.scenario import Scenario, parse_scenario
from weijian.telemetry import Event, Reading

START = "2026-11-23T00:00:00+08:00"


def scenario(
    sites: list[dict[str, Any]],
    faults: list[dict[str, Any]] | None = None,
    duration: str = "1d",
    seed: int = 7,
    **extra: Any,
) -> Scenario:
    """A scenario from plain data, starting at local midnight."""
    data: dict[str, Any] = {
        "name": "t",
        "seed": seed,
        "start": START,
        "duration": duration,
        "sites": sites,
        "faults": faults or [],
        **extra,
    }
    return parse_scenario(data)


def plant(key: str = "p", **extra: Any) -> dict[str, Any]:
    return {"key": key, "name": key.upper(), "kind": "disinfection_plant", **extra}


def hospital(key: str = "h", **extra: Any) -> dict[str, Any]:
    return {"key": key, "name": key.upper(), "kind": "medical_institution", **extra}


def run(sc: Scenario) -> tuple[Simulation, MemorySink]:
    sink = MemorySink()
    sim = Simulation(sc, sink=sink, progress=False)
    sim.run()
    return sim, sink


def by_device(sink: MemorySink) -> dict[str, list[Outgoing]]:
    """The sink's messages grouped by device (cached on the sink)."""
    cached: dict[str, list[Outgoing]] | None = getattr(sink, "_by_device", None)
    if cached is None or sum(len(v) for v in cached.values()) != len(sink.messages):
        cached = {}
        for message in sink.messages:
            cached.setdefault(message.device, []).append(message)
        sink._by_device = cached  # type: ignore[attr-defined]
    return cached


def items(sink: MemorySink, ref: str, channel: str) -> list[dict[str, Any]]:
    """Every reading or event object a device sent on a channel (arrays unpacked)."""
    out: list[dict[str, Any]] = []
    for message in by_device(sink).get(ref, []):
        if message.channel != channel:
            continue
        body = orjson.loads(message.payload)
        out.extend(body if isinstance(body, list) else [body])
    return out


def _ts(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    from weijian.simulator.timeutil import from_epoch

    return from_epoch(value / 1000)


def device_data(sink: MemorySink, ref: str, kind: DeviceKind) -> DeviceData:
    """What the platform would store for a device, as a detector sees it."""
    readings = [
        Reading(_ts(i["ts"]), ref, name, float(v), i["seq"])
        for i in items(sink, ref, "telemetry")
        for name, v in i["metrics"].items()
    ]
    events = [
        Event(_ts(i["ts"]), ref, i["type"], i["data"], i["seq"]) for i in items(sink, ref, "events")
    ]
    readings.sort(key=lambda r: r.ts)
    events.sort(key=lambda e: e.ts)
    return DeviceData(ref, kind, readings, events)


def site_data(sink: MemorySink, sc: Scenario, site_key: str) -> SiteData:
    site = sc.site(site_key)
    devices = {
        f"{site.key}/{d.key}": device_data(sink, f"{site.key}/{d.key}", d.kind)
        for d in site.devices
    }
    profile = build_profile(SiteKind(site.kind), sc.site_profile(site.key))
    return SiteData(site.key, site.kind, devices, profile)


def series(sink: MemorySink, ref: str, metric: str) -> list[tuple[float, float]]:
    """(device time in s, value) of one metric."""
    return [
        (i["ts"] / 1000, float(i["metrics"][metric]))
        for i in items(sink, ref, "telemetry")
        if metric in i["metrics"]
    ]
