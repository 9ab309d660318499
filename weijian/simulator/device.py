"""A simulated device: seq counter, drifting clock, connection, store-and-forward, data faults."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from weijian.devices.kinds import DeviceKind
from weijian.simulator.faults import (
    ClockSkew,
    Offline,
    OutOfRange,
    Replay,
    SequenceGap,
    StuckSensor,
)
from weijian.simulator.timeutil import rfc3339_local
from weijian.simulator.twins.base import PlannedFault, Twin

Action = Literal["publish", "connect", "disconnect_will", "disconnect"]
Channel = Literal["telemetry", "events", "status"]

ONLINE = b'{"online":true}'
OFFLINE = b'{"online":false}'
# Largest number of readings or events in one backlog message (keeps payloads well under 256 KB).
BACKLOG_CHUNK = 200

# Metric a data fault touches by default, and the impossible value out_of_range reports.
DEFAULT_METRIC: dict[DeviceKind, tuple[str, float]] = {
    DeviceKind.STEAM_CABINET: ("temp_c", 250.0),
    DeviceKind.INFRARED_CABINET: ("temp_c", 400.0),
    DeviceKind.DISH_MACHINE: ("rinse_temp_c", 180.0),
    DeviceKind.CHLORINE_TANK: ("chlorine_mg_l", 9000.0),
    DeviceKind.LINE_METER: ("power_kw", 3000.0),
    DeviceKind.WASTE_STORE_ENV: ("temp_c", -60.0),
}


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One thing a device does on the wire at simulated time `at`."""

    at: float
    device: str  # "site/device"
    channel: Channel
    payload: bytes
    action: Action = "publish"
    retain: bool = False


def connect_message(at: float, device: str) -> Outgoing:
    """Connect (Last Will: offline, retained) and publish the retained online status."""
    return Outgoing(at, device, "status", ONLINE, "connect", retain=True)


def _compact(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


class SimDevice:
    """Turns a twin's readings and events into protocol messages, step by step."""

    def __init__(
        self,
        ref: str,
        kind: DeviceKind,
        *,
        twin: Twin,
        clock: tuple[float, float],
        seq0: int,
        data_faults: list[PlannedFault],
    ) -> None:
        self.ref = ref
        self.kind = kind
        self.twin = twin
        self.ctx = twin.ctx
        self.offset_s, self.drift_ppm = clock
        self.seq = seq0
        self.connected = True
        self.silent = False
        self.powered = True
        self._backlog: dict[Channel, list[dict[str, Any]]] = {"telemetry": [], "events": []}
        self._keep_backlog = True
        self._history: deque[tuple[float, dict[str, Any]]] = deque(maxlen=500)
        self._next_sample = self.ctx.sample_at_or_after(self.ctx.start)
        self._event_i = 0
        self._faults = sorted(data_faults, key=lambda f: f.at)
        self._actions = self._boundaries()
        self._action_i = 0
        self._stuck: dict[int, float] = {}
        self._oor_left = {f.index: getattr(f.options, "count", 0) for f in self._faults}
        self.sent = 0

    def _boundaries(self) -> list[tuple[float, str, PlannedFault]]:
        out: list[tuple[float, str, PlannedFault]] = []
        for fault in self._faults:
            options = fault.options
            if isinstance(options, Offline):
                out.append((fault.at, "offline_start", fault))
                out.append((fault.at + options.duration.total_seconds(), "offline_end", fault))
            elif fault.type in ("replay", "sequence_gap", "reboot"):
                out.append((fault.at, fault.type, fault))
        return sorted(out, key=lambda a: a[0])

    # -- time -----------------------------------------------------------------------------
    def device_time(self, t: float) -> float:
        """The device's clock at true time `t`: offset, drift and any clock_skew fault."""
        value = t + self.offset_s + self.drift_ppm * 1e-6 * (t - self.ctx.start)
        for fault in self._faults:
            options = fault.options
            if (
                isinstance(options, ClockSkew)
                and fault.at <= t < fault.at + options.duration.total_seconds()
            ):
                value += options.offset.total_seconds()
        return value

    # -- stepping -------------------------------------------------------------------------
    def step(self, t0: float, t1: float) -> list[Outgoing]:
        """Everything the device does in [t0, t1), in time order."""
        out: list[Outgoing] = []
        timeline: list[tuple[float, int, str, Any]] = []
        while self._action_i < len(self._actions) and self._actions[self._action_i][0] < t1:
            at, name, fault = self._actions[self._action_i]
            timeline.append((at, 0, name, fault))
            self._action_i += 1
        events = self.twin.events
        while self._event_i < len(events) and events[self._event_i].at < t1:
            timeline.append((events[self._event_i].at, 1, "event", events[self._event_i]))
            self._event_i += 1
        if self.twin.metric_names:
            while self._next_sample < t1:
                timeline.append((self._next_sample, 2, "sample", None))
                self._next_sample += self.ctx.interval
        timeline.sort(key=lambda item: (item[0], item[1]))
        for at, _, name, obj in timeline:
            if name == "sample":
                if self.powered:
                    self._send(out, at, "telemetry", self._reading(at))
            elif name == "event":
                if self.powered:
                    item = {
                        "seq": self._next_seq(),
                        "ts": rfc3339_local(self.device_time(at)),
                        "type": obj.type,
                        "data": obj.data,
                    }
                    self._send(out, at, "events", item)
            else:
                self._act(out, at, name, obj)
        return out

    def _next_seq(self) -> int:
        seq = self.seq
        self.seq += 1
        return seq

    def _reading(self, t: float) -> dict[str, Any]:
        metrics = self.twin.values(t)
        for fault in self._faults:
            options = fault.options
            if (
                isinstance(options, StuckSensor)
                and fault.at <= t < fault.at + options.duration.total_seconds()
            ):
                metric = options.metric or DEFAULT_METRIC[self.kind][0]
                self._stuck.setdefault(fault.index, metrics[metric])
                metrics[metric] = self._stuck[fault.index]
            elif (
                isinstance(options, OutOfRange)
                and t >= fault.at
                and self._oor_left[fault.index] > 0
            ):
                metric, value = DEFAULT_METRIC[self.kind]
                metric = options.metric or metric
                metrics[metric] = options.value if options.value is not None else value
                self._oor_left[fault.index] -= 1
        item = {
            "seq": self._next_seq(),
            "ts": round(self.device_time(t) * 1000),
            "metrics": {k: _compact(v) for k, v in metrics.items()},
        }
        self._history.append((t, item))
        return item

    def _send(self, out: list[Outgoing], at: float, channel: Channel, item: dict[str, Any]) -> None:
        if self.silent:
            if self._keep_backlog:
                self._backlog[channel].append(item)
            return
        out.append(Outgoing(at, self.ref, channel, orjson.dumps(item)))
        self.sent += 1

    def _act(self, out: list[Outgoing], at: float, name: str, fault: PlannedFault) -> None:
        options = fault.options
        if name == "offline_start":
            assert isinstance(options, Offline)
            self.silent = True
            self._keep_backlog = options.backlog
            self.powered = options.backlog
            if options.disconnect:
                out.append(Outgoing(at, self.ref, "status", OFFLINE, "disconnect_will"))
                self.connected = False
        elif name == "offline_end":
            if not self.powered:
                self.seq = 0  # it was powered off: it boots afresh
                self.powered = True
            if not self.connected:
                out.append(connect_message(at, self.ref))
                self.connected = True
            self.silent = False
            self._flush_backlog(out, at)
        elif name == "sequence_gap":
            assert isinstance(options, SequenceGap)
            self.seq += options.skip
        elif name == "reboot":
            out.append(Outgoing(at, self.ref, "status", b"", "disconnect"))
            out.append(connect_message(at, self.ref))
            self.seq = 0
        elif name == "replay":
            assert isinstance(options, Replay)
            self._replay(out, at, options)

    def _flush_backlog(self, out: list[Outgoing], at: float) -> None:
        for channel, items in self._backlog.items():
            for i in range(0, len(items), BACKLOG_CHUNK):
                out.append(
                    Outgoing(at, self.ref, channel, orjson.dumps(items[i : i + BACKLOG_CHUNK]))
                )
                self.sent += 1
            items.clear()

    def _replay(self, out: list[Outgoing], at: float, options: Replay) -> None:
        age = options.age.total_seconds()
        recent = [item for t, item in self._history if at - age <= t < at] or [
            item for _, item in self._history
        ]
        for i, old in enumerate(recent[-options.count :]):
            item = dict(old)
            if options.variant == "new_ts":
                item["ts"] = round(self.device_time(at) * 1000) + i * 1000
            else:
                item["metrics"] = {
                    k: _compact(round(v * 1.05 + 1, 2)) if k not in _FLAGS else 1 - v
                    for k, v in old["metrics"].items()
                }
            self._send(out, at, "telemetry", item)


_FLAGS = frozenset({"door_open", "running", "uv_on"})
