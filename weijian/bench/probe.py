"""Measuring instruments: a periodic sampler and the publish→commit latency probe."""

from __future__ import annotations

import bisect
import math
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

import orjson

from weijian.bench import repository as repo
from weijian.config import MqttTarget
from weijian.simulator.rawmqtt import RawPublisher

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(ts: datetime) -> int:
    """Exact epoch milliseconds of a stored device time (no float rounding)."""
    return (ts - _EPOCH) // _MS


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Sampler:
    """Calls `read()` every `period_s` on its own thread and keeps (monotonic time, value)."""

    def __init__(
        self,
        read: Callable[[], float],
        period_s: float = 1.0,
        on_sample: Callable[[float, float], None] | None = None,
    ) -> None:
        self._read = read
        self._period = period_s
        self._on_sample = on_sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sampler", daemon=True)
        self.times: list[float] = []
        self.values: list[float] = []

    def start(self) -> None:
        self.sample()
        self._thread.start()

    def sample(self) -> float:
        value = float(self._read())
        self.times.append(time.monotonic())
        self.values.append(value)
        if self._on_sample is not None:
            self._on_sample(self.times[-1], value)
        return value

    def _loop(self) -> None:
        next_at = time.monotonic() + self._period
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            next_at += self._period
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def value_at(self, t: float) -> float:
        """The sampled value at monotonic time `t`, interpolated between samples."""
        i = bisect.bisect_left(self.times, t)
        if i == 0:
            return self.values[0]
        if i >= len(self.times):
            return self.values[-1]
        t0, t1 = self.times[i - 1], self.times[i]
        v0, v1 = self.values[i - 1], self.values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0) if t1 > t0 else v1

    def rate(self, start: float, end: float) -> float:
        """Mean increase per second between two monotonic times."""
        if end <= start:
            return 0.0
        return (self.value_at(end) - self.value_at(start)) / (end - start)


class ProbeDevice:
    """One registered device publishing QoS 1 readings whose `ts` is their publish time."""

    def __init__(
        self,
        target: MqttTarget,
        *,
        username: str,
        password: str,
        topic: str,
        metrics: dict[str, float],
    ) -> None:
        self._link = RawPublisher(target, f"bench-probe-{uuid.uuid4().hex[:8]}", username, password)
        self._topic = topic.encode()
        self._metrics = metrics
        self._seq = 0
        self._last_ms = 0

    def send(self) -> tuple[int, int]:
        """Publish one reading now; returns its device time (epoch ms) and publish time (ns)."""
        ns = time.time_ns()
        ms = max(ns // 1_000_000, self._last_ms + 1)
        self._last_ms = ms
        self._seq += 1
        body = orjson.dumps({"seq": self._seq, "ts": ms, "metrics": self._metrics})
        self._link.publish(self._topic, body)
        self._link.pump()
        return ms, ns

    def pump(self) -> None:
        self._link.pump()

    def close(self) -> None:
        self._link.close()


class LatencyProbe:
    """A probe device publishing every `period_s` and a poller noticing each of its readings
    in `readings` within `poll_s`: latency = start of the first query that sees the row −
    publish time. It overstates the truth by at most one poll period plus one query."""

    def __init__(
        self,
        device: ProbeDevice,
        *,
        conn: repo.Conn,
        device_id: str,
        metric: str,
        period_s: float = 0.02,
        poll_s: float = 0.005,
    ) -> None:
        self._device = device
        self._conn = conn
        self._device_id = device_id
        self._metric = metric
        self._period = period_s
        self._poll = poll_s
        self._lock = threading.Lock()
        self._sent: dict[int, int] = {}
        self._pending: set[int] = set()
        self._seen: dict[int, int] = {}
        self._stop_publishing = threading.Event()
        self._stop_polling = threading.Event()
        self._threads = [
            threading.Thread(target=self._publish_loop, name="bench-probe-pub", daemon=True),
            threading.Thread(target=self._poll_loop, name="bench-probe-poll", daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop_publishing(self) -> None:
        self._stop_publishing.set()
        self._threads[0].join()

    def wait_seen(self, timeout: float) -> bool:
        """Wait until every probe reading published so far has been seen."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False

    def close(self) -> None:
        self._stop_publishing.set()
        self._stop_polling.set()
        for thread in self._threads:
            thread.join()
        self._device.close()

    def latencies(self, since_ns: int, until_ns: int) -> tuple[list[float], int]:
        """Latencies (ms) of the probe readings published in [since, until), and how many of
        them were never seen."""
        out: list[float] = []
        unseen = 0
        with self._lock:
            for ms, published in self._sent.items():
                if not since_ns <= published < until_ns:
                    continue
                seen = self._seen.get(ms)
                if seen is None:
                    unseen += 1
                else:
                    out.append((seen - published) / 1e6)
        return out, unseen

    def _publish_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop_publishing.is_set():
            ms, ns = self._device.send()
            with self._lock:
                self._sent[ms] = ns
                self._pending.add(ms)
            next_at += self._period
            delay = next_at - time.monotonic()
            if delay > 0:
                self._stop_publishing.wait(delay)
            else:
                next_at = time.monotonic()
            self._device.pump()

    def _poll_loop(self) -> None:
        while not self._stop_polling.is_set():
            began = time.monotonic()
            with self._lock:
                lowest = min(self._pending) if self._pending else None
            if lowest is not None:
                query_ns = time.time_ns()
                stored = repo.probe_times(
                    conn=self._conn,
                    device_id=self._device_id,
                    metric=self._metric,
                    since=_EPOCH + lowest * _MS,
                )
                with self._lock:
                    for ts in stored:
                        ms = epoch_ms(ts)
                        if ms in self._pending:
                            self._pending.discard(ms)
                            self._seen[ms] = query_ns
            self._stop_polling.wait(max(0.0, self._poll - (time.monotonic() - began)))
