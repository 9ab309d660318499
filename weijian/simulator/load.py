"""Load mode: many devices' QoS 1 telemetry from one process over a few connections.

A paho client per device (and a thread each) is far too heavy for thousands of devices, so load
mode publishes every device's topic over `connections` connections of one account (the
platform's by default, whose ACL allows any device topic) and drives them from one thread with
a minimal publish-only MQTT 3.1.1 client (rawmqtt.py): PUBLISHes are written in bursts and the
PUBACKs read in bulk. Each message is recorded as (device, seq, publish time) so a benchmark can
check exactly-once storage and measure end-to-end latency.
"""

from __future__ import annotations

import logging
import selectors
import time
import uuid
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from weijian.config import LOCAL_BROKER_PASSWORD, MqttTarget
from weijian.devices.kinds import KINDS, DeviceKind
from weijian.simulator.publisher import PublishError
from weijian.simulator.rawmqtt import RawMqttError, RawPublisher

log = logging.getLogger(__name__)


@dataclass
class LoadResult:
    """What a load run sent: per message the device index, seq and publish time (ns, epoch)."""

    device_ids: list[str]
    sent: int
    acked: int
    elapsed_s: float
    device_index: array[int] = field(default_factory=lambda: array("I"))
    seq: array[int] = field(default_factory=lambda: array("q"))
    published_ns: array[int] = field(default_factory=lambda: array("q"))

    @property
    def rate(self) -> float:
        """Acknowledged messages per second."""
        return self.acked / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def records(self) -> Iterator[tuple[str, int, int]]:
        """(device_id, seq, publish time in ns since the epoch) of every message."""
        for i, seq, ns in zip(self.device_index, self.seq, self.published_ns, strict=True):
            yield self.device_ids[i], seq, ns

    def summary(self) -> dict[str, Any]:
        return {
            "devices": len(self.device_ids),
            "sent": self.sent,
            "acked": self.acked,
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_msgs_per_s": round(self.rate, 1),
        }


class LoadGenerator:
    """Publishes `devices` devices' readings of `metrics` metrics at `rate` messages/s
    (None: every device once per `interval_s`; 0: as fast as the machine allows)."""

    def __init__(
        self,
        devices: int,
        *,
        interval_s: float = 10.0,
        metrics: int = 4,
        rate: float | None = None,
        broker_url: str = "mqtt://127.0.0.1:1884",
        username: str = "weijian",
        password: str = LOCAL_BROKER_PASSWORD,
        topic_root: str = "weijian/v1",
        device_ids: Sequence[str] | None = None,
        kind: DeviceKind = DeviceKind.DISH_MACHINE,
        connections: int = 4,
        window: int = 20_000,
    ) -> None:
        if devices < 1:
            raise ValueError("devices must be at least 1")
        names = [m.name for m in KINDS[kind].metrics]
        if not 1 <= metrics <= len(names):
            raise ValueError(f"a {kind.value} has {len(names)} metrics; asked for {metrics}")
        self.device_ids = (
            list(device_ids)
            if device_ids is not None
            else [f"load-{i:05d}" for i in range(devices)]
        )
        if len(self.device_ids) != devices:
            raise ValueError("device_ids must name exactly `devices` devices")
        self.metric_names = names[:metrics]
        self.rate = devices / interval_s if rate is None else rate
        self.target = MqttTarget(broker_url)
        self.username, self.password = username, password
        self.topics = [f"{topic_root}/{d}/telemetry".encode() for d in self.device_ids]
        self.connections = max(1, min(connections, devices))
        self.window = window

    def run(
        self,
        *,
        messages: int | None = None,
        duration_s: float | None = None,
        timeout_s: float = 60.0,
    ) -> LoadResult:
        """Publish until `messages` were sent or `duration_s` passed; wait for every PUBACK."""
        if messages is None and duration_s is None:
            raise ValueError("give messages or duration_s")
        links: list[RawPublisher] = []
        sel = selectors.DefaultSelector()
        try:
            for _ in range(self.connections):
                link = RawPublisher(
                    self.target,
                    f"weijian-load-{uuid.uuid4().hex[:10]}",
                    self.username,
                    self.password,
                )
                links.append(link)
                sel.register(link.sock, selectors.EVENT_READ, link)
            return self._publish(sel, links, messages, duration_s, timeout_s)
        except (OSError, RawMqttError) as exc:
            raise PublishError(f"load run against {self.target.public_url} failed: {exc}") from None
        finally:
            for link in links:
                link.close()
            sel.close()

    def _publish(
        self,
        sel: selectors.BaseSelector,
        links: list[RawPublisher],
        messages: int | None,
        duration_s: float | None,
        timeout_s: float,
    ) -> LoadResult:
        n_dev = len(self.device_ids)
        seqs = [0] * n_dev
        last_ts = [0] * n_dev
        result = LoadResult(self.device_ids, 0, 0, 0.0)
        values = [round(20.0 + 3 * i, 1) for i in range(len(self.metric_names))]
        metrics = dict(zip(self.metric_names, values, strict=True))
        burst = 256
        t0 = time.monotonic()
        end = t0 + duration_s if duration_s is not None else float("inf")
        limit = messages if messages is not None else 1 << 62
        sent = 0
        dev = 0
        while sent < limit:
            now = time.monotonic()
            if now >= end:
                break
            if self.rate > 0:
                due = int((now - t0) * self.rate) + 1
                if sent >= due:
                    self._service(sel, links, min(0.002, (sent + 1 - due) / self.rate))
                    continue
            count = min(burst, limit - sent)
            ns = time.time_ns()
            ms = ns // 1_000_000
            for _ in range(count):
                link = links[dev % len(links)]
                if link.outstanding >= self.window:
                    break
                seq = seqs[dev]
                seqs[dev] = seq + 1
                ts = ms if ms > last_ts[dev] else last_ts[dev] + 1
                last_ts[dev] = ts
                link.publish(
                    self.topics[dev], orjson.dumps({"seq": seq, "ts": ts, "metrics": metrics})
                )
                result.device_index.append(dev)
                result.seq.append(seq)
                result.published_ns.append(ns)
                sent += 1
                dev = dev + 1 if dev + 1 < n_dev else 0
            self._service(sel, links, 0.0)
        result.sent = sent
        self._wait(sel, links, timeout_s)
        result.elapsed_s = time.monotonic() - t0
        result.acked = sum(lk.acked for lk in links)
        return result

    @staticmethod
    def _service(sel: selectors.BaseSelector, links: list[RawPublisher], timeout: float) -> None:
        for link in links:
            link.pump()
        if timeout > 0:
            for key, _ in sel.select(timeout):
                key.data.read()

    def _wait(
        self, sel: selectors.BaseSelector, links: list[RawPublisher], timeout_s: float
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while any(link.outstanding for link in links):
            if time.monotonic() > deadline:
                waiting = sum(link.outstanding for link in links)
                raise PublishError(
                    f"{waiting} load messages not acknowledged within {timeout_s:g} s"
                )
            self._service(sel, links, 0.01)
