"""`weijian bench alerts`: live alert latency — a violating reading published → its alert
committed — on the real platform under a simulated city streaming in real time
(docs/performance.md, bench/README.md)."""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from prometheus_client.parser import text_string_to_metric_families

from weijian.alerts.flows import ALERTS_CHANNEL
from weijian.alerts.shards import Shard
from weijian.bench import cpu
from weijian.bench import repository as repo
from weijian.bench.context import BenchConfig, BenchContext, Progress
from weijian.bench.probe import percentile
from weijian.bench.processes import BenchError, IngestProcess, wait_until
from weijian.config import Settings
from weijian.devices.broker import DynamicSecurity, role_name
from weijian.devices.kinds import DeviceKind
from weijian.signals import sigterm_interrupts
from weijian.simulator.device import Outgoing
from weijian.simulator.engine import MessageSink, Simulation
from weijian.simulator.live import run_following_clock
from weijian.simulator.platform import RegistryProvisioner, platform_id
from weijian.simulator.publisher import MqttPublisher
from weijian.simulator.rawmqtt import RawPublisher
from weijian.simulator.scenario import Scenario, parse_scenario

RULE = "data.out_of_range"
PROBE_KIND = DeviceKind.DISH_MACHINE
# A wash temperature no dish machine can report (range −20…120 °C): out of range on one message.
PROBE_METRICS = {
    "wash_temp_c": 500.0,
    "rinse_temp_c": 82.0,
    "conveyor_speed_m_min": 2.0,
    "running": 1.0,
}
TARGET_S = 1.0
# The longest the benchmark waits for detection to judge the history once it is sent.
DETECTION_CATCH_UP_S = 900.0
_MEASURED_TRIGGERS = ("stream", "scan", "full_scan")


@dataclass(frozen=True)
class AlertBenchConfig:
    """Options of `weijian bench alerts` (the defaults are the documented run)."""

    sites: int = 20
    duration_s: float = 60.0
    probe_interval_s: float = 0.5
    warmup_s: float = 10.0
    # Device history the city sends (as a catch-up) before the clock-following part, so the
    # detectors judge windows as full as in steady state (most data rules look back 2–3 h).
    history_s: float = 10800.0
    # The simulator's publishing step: each step's messages go out once its time has passed.
    step_s: float = 1.0
    scan_interval_s: float = 30.0
    # A probe whose alert has not been announced this long after publishing counts as missed.
    probe_timeout_s: float = 60.0
    # Detection processes of the platform, each judging its share of the sites.
    detect_workers: int = 1
    keep: bool = False

    def __post_init__(self) -> None:
        if self.sites < 1:
            raise ValueError("sites must be at least 1")
        if min(self.duration_s, self.probe_interval_s, self.step_s, self.scan_interval_s) <= 0:
            raise ValueError("durations and intervals must be positive")
        if self.warmup_s < 0 or self.history_s < 0:
            raise ValueError("warm-up and history must not be negative")
        if self.detect_workers < 1:
            raise ValueError("detect_workers must be at least 1")

    @property
    def probes(self) -> int:
        """Probe devices to register: one per probe, warm-up included, and a margin."""
        return math.ceil((self.warmup_s + self.duration_s) / self.probe_interval_s) + 5

    def as_dict(self) -> dict[str, Any]:
        return {
            "sites": self.sites,
            "duration_s": self.duration_s,
            "probe_interval_s": self.probe_interval_s,
            "warmup_s": self.warmup_s,
            "history_s": self.history_s,
            "step_s": self.step_s,
            "scan_interval_s": self.scan_interval_s,
            "probe_timeout_s": self.probe_timeout_s,
            "detect_workers": self.detect_workers,
            "rule": RULE,
            "target_s": TARGET_S,
        }


def city_scenario(tag: str, sites: int, *, start: datetime, duration: timedelta) -> Scenario:
    """`sites` disinfection plants with their default devices, working around the clock. The
    keys carry the run's tag: device ids are broker account names, shared by everyone."""
    data = {
        "name": f"bench-city-{sites}",
        "seed": 1,
        "start": start.isoformat(),
        "duration": f"{math.ceil(duration.total_seconds())}s",
        "sites": [
            {
                "key": f"b{tag}-p{i + 1:03d}",
                "name": f"基准消毒中心{i + 1}",
                "kind": "disinfection_plant",
                "district": "基准区",
                "shifts": ["00:00-23:59"],
            }
            for i in range(sites)
        ],
        "faults": [],
    }
    return parse_scenario(data, "bench city")


def run_alert_bench(
    settings: Settings, config: AlertBenchConfig, progress: Progress
) -> dict[str, Any]:
    """Run the city, the platform and the probes on a fresh database and topic root."""
    ctx = BenchContext(settings, BenchConfig(devices=1, keep=config.keep), progress)
    bench = AlertBench(ctx, config)
    with sigterm_interrupts():
        try:
            return bench.run()
        finally:
            bench.close()
            ctx.cleanup()


class _CitySink:
    """The city's publisher, counting messages and noting when it follows the clock."""

    def __init__(self, inner: MqttPublisher, step_s: float) -> None:
        self.inner = inner
        self.step_s = step_s
        self.published = 0
        self.caught_up = threading.Event()

    def send(self, messages: Sequence[Outgoing]) -> None:
        self.inner.send(messages)
        self.published += sum(1 for m in messages if m.action == "publish")
        if messages and max(m.at for m in messages) >= time.time() - 2 * self.step_s:
            self.caught_up.set()

    def close(self) -> None:
        self.inner.close()


class AlertListener:
    """LISTEN on the alert channel; the arrival time of the first `fired` of RULE per device."""

    def __init__(self, url: str, device_ids: set[str]) -> None:
        self._conn = psycopg.connect(url, autocommit=True, application_name="weijian-bench-l")
        self._conn.execute(f"LISTEN {ALERTS_CHANNEL}")
        self._devices = device_ids
        self.fired: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-alerts", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.2):
                arrived = time.time_ns()
                body = orjson.loads(note.payload)
                device = body.get("device_id")
                new = device in self._devices and device not in self.fired
                if new and body.get("kind") == "fired" and body.get("rule") == RULE:
                    self.fired[device] = arrived

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self._conn.close()


class AlertBench:
    """One run: provisioning, the platform subprocess, the city thread, the probes."""

    def __init__(self, ctx: BenchContext, config: AlertBenchConfig) -> None:
        self.ctx = ctx
        self.config = config
        self.settings = ctx.settings.model_copy(
            update={"database_url": ctx.url, "mqtt_topic_root": ctx.root}
        )
        now = datetime.now(UTC).replace(microsecond=0)
        # Long enough to keep streaming while detection catches up and the probes run.
        span = config.history_s + DETECTION_CATCH_UP_S + config.warmup_s + config.duration_s + 600
        self.scenario = city_scenario(
            ctx.tag,
            config.sites,
            start=now - timedelta(seconds=config.history_s),
            duration=timedelta(seconds=span),
        )
        self.site_ids = [platform_id(s.key) for s in self.scenario.sites]
        self.city_devices = [
            platform_id(s.key, d.key) for s in self.scenario.sites for d in s.devices
        ]
        # Probe devices spread over the plants: each probe's site is a busy one.
        self.probe_ids = [f"b{ctx.tag}-probe-{i:04d}" for i in range(config.probes)]
        self.port = _free_port()
        self.platform: IngestProcess | None = None
        self.sink: _CitySink | None = None
        self._stop_city = threading.Event()
        self._city_error: list[BaseException] = []
        self._city_thread: threading.Thread | None = None
        self._accounts = False

    # -- setup -----------------------------------------------------------------------------

    def _provision(self) -> MqttPublisher:
        from weijian.db.migrate import migrate

        migrate(self.ctx.url)
        self._accounts = True
        credentials = RegistryProvisioner(self.settings, own_credentials=True).provision(
            self.scenario
        )
        with self.ctx.connect() as conn:
            for i, site_id in enumerate(self.site_ids):
                repo.register_devices(
                    conn=conn,
                    site_id=site_id,
                    device_ids=self.probe_ids[i :: len(self.site_ids)],
                    kind=PROBE_KIND.value,
                )
        return MqttPublisher(credentials)

    def _start_platform(self) -> None:
        client_id = f"bench-{self.ctx.tag}"
        env = {
            **self.ctx.platform_env(client_id, 1),
            "WEIJIAN_INGEST_WORKERS": "1",
            "WEIJIAN_HTTP_HOST": "127.0.0.1",
            "WEIJIAN_HTTP_PORT": str(self.port),
            "WEIJIAN_SMS_PROVIDER": "console",
            "WEIJIAN_INSPECTION_SEED": "1",
            "WEIJIAN_DETECT_WORKERS": str(self.config.detect_workers),
        }
        if self.config.detect_workers > 1:  # /metrics sums the detection processes
            metrics_dir = self.ctx.scratch / f"metrics-{client_id}"
            metrics_dir.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.platform = IngestProcess(
            env=env,
            workers=1,
            log_path=self.ctx.scratch / "platform.log",
            command=("up", "--scan-interval", f"{self.config.scan_interval_s:g}"),
        )
        self.platform.start()
        platform = self.platform

        def ready() -> bool:
            platform.check_alive()
            return _scrape(self.port) is not None

        if not wait_until(ready, 90, interval=0.25):
            raise BenchError("the platform did not serve /metrics within 90 s")

    def _start_city(self, publisher: MqttPublisher) -> None:
        self.sink = _CitySink(publisher, self.config.step_s)
        simulation = Simulation(
            self.scenario, step=timedelta(seconds=self.config.step_s), progress=False
        )
        sink: MessageSink = self.sink

        def run() -> None:
            try:
                run_following_clock(simulation, sink, stop=self._stop_city.is_set)
            except BaseException as exc:
                self._city_error.append(exc)

        self._city_thread = threading.Thread(target=run, name="bench-city", daemon=True)
        self._city_thread.start()

    def _check(self) -> None:
        if self.platform is not None:
            self.platform.check_alive()
        if self._city_error:
            raise BenchError(f"the city stopped: {self._city_error[0]}")

    # -- the run ---------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.config
        ctx.progress(
            f"database {ctx.database}, topics {ctx.root}: {cfg.sites} plants, "
            f"{len(self.city_devices)} devices, {len(self.probe_ids)} probe devices"
        )
        publisher = self._provision()
        machine = ctx.machine()
        self._start_platform()
        assert self.platform is not None
        ctx.progress(f"platform up (pid {self.platform.pid}, http :{self.port})")
        self._start_city(publisher)
        assert self.sink is not None
        sink = self.sink
        started = time.monotonic()

        def caught_up() -> bool:
            self._check()
            return sink.caught_up.is_set()

        if not wait_until(caught_up, cfg.history_s + 300, 0.2):
            raise BenchError("the city did not catch up with the clock")
        ctx.progress(
            f"city caught up ({sink.published:,} messages of history in "
            f"{time.monotonic() - started:.1f} s); waiting for detection to catch up"
        )
        caught = time.monotonic()
        if not wait_until(self._detection_caught_up, DETECTION_CATCH_UP_S, 0.5):
            raise BenchError(f"detection did not catch up in {DETECTION_CATCH_UP_S:.0f} s")
        startup = {
            "history_messages": sink.published,
            "history_sent_s": round(caught - started, 1),
            "detection_caught_up_s": round(time.monotonic() - caught, 1),
        }
        ctx.progress(
            f"detection caught up {startup['detection_caught_up_s']} s later (a full scan"
            f" done, no backlog); probing every {cfg.probe_interval_s:g} s"
        )
        measured = self._probe()
        measured["startup"] = startup
        machine["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        return {"machine": machine, "config": self._config(), **measured}

    def _detection_caught_up(self) -> bool:
        """A full scan finished and the stream has judged everything committed (steady state:
        what the latency target is about; the catch-up itself is reported apart)."""
        self._check()
        samples = _scrape(self.port)
        if samples is None:
            return False
        # Each detection process scans its own sites (the counters are summed over them).
        full = samples.get("weijian_detector_scans_total{kind=full}", 0.0)
        return (
            full >= self.config.detect_workers
            and samples.get("weijian_detector_pending_devices{}", 1.0) == 0
        )

    def _probe(self) -> dict[str, Any]:
        ctx, cfg = self.ctx, self.config
        listener = AlertListener(ctx.url, set(self.probe_ids))
        link = RawPublisher(ctx.target, f"bench-{ctx.tag}-probe", ctx.username, ctx.password)
        sent: dict[str, int] = {}
        switch = sys.getswitchinterval()
        # The probe and the listener share the interpreter with the city: hand over often.
        sys.setswitchinterval(0.001)
        try:
            listener.start()
            t0 = time.monotonic()
            warm, end = t0 + cfg.warmup_s, t0 + cfg.warmup_s + cfg.duration_s
            before = after = None
            for i, device in enumerate(self.probe_ids):
                at = t0 + i * cfg.probe_interval_s
                while (wait := at - time.monotonic()) > 0:
                    link.pump()
                    time.sleep(min(wait, 0.05))
                if at >= end:
                    break
                if before is None and at >= warm:
                    before = self._sample()
                    ctx.progress(f"warm-up over; measuring for {cfg.duration_s:g} s")
                ns = time.time_ns()
                body = {"seq": 1, "ts": ns // 1_000_000, "metrics": PROBE_METRICS}
                link.publish(f"{ctx.root}/{device}/telemetry".encode(), orjson.dumps(body))
                link.pump()
                if at >= warm:
                    sent[device] = ns
                if i % 20 == 0:
                    self._check()
            after = self._sample()
            wait_until(lambda: all(d in listener.fired for d in sent), cfg.probe_timeout_s, 0.05)
        finally:
            sys.setswitchinterval(switch)
            with contextlib.suppress(OSError):
                link.close()
            listener.close()
        assert before is not None
        return self._report(sent, listener.fired, before, after)

    def _sample(self) -> dict[str, Any]:
        assert self.platform is not None
        assert self.sink is not None
        with self.ctx.connect() as conn:
            parties = {
                "platform": self.platform.pids,
                "postgres": lambda: repo.server_pids(conn=conn),
                "mosquitto": lambda: cpu.pids_named("mosquitto"),
                "bench": lambda: [os.getpid()],
            }
            snap = cpu.snapshot(parties)
        return {
            "t": time.monotonic(),
            "cpu": snap,
            "published": self.sink.published,
            "metrics": _scrape(self.port),
        }

    # -- the report ------------------------------------------------------------------------

    def _report(
        self,
        sent: dict[str, int],
        fired: dict[str, int],
        before: dict[str, Any],
        after: dict[str, Any],
    ) -> dict[str, Any]:
        window = after["t"] - before["t"]
        latencies = [(fired[d] - ns) / 1e9 for d, ns in sent.items() if d in fired]
        p50, p95, p99, top = (percentile(latencies, q) for q in (50, 95, 99, 100))
        with self.ctx.connect() as conn:
            stages = repo.probe_stages(conn=conn, device_ids=list(sent), rule=RULE)
        parts: dict[str, list[float]] = {"ingest": [], "to_evaluation": [], "evaluation": []}
        for device, (received, detected) in stages.items():
            if device not in fired or received is None or detected is None:
                continue
            published = _from_ns(sent[device])
            parts["ingest"].append((received - published).total_seconds())
            parts["to_evaluation"].append((detected - received).total_seconds())
            parts["evaluation"].append((_from_ns(fired[device]) - detected).total_seconds())
        if after["published"] == before["published"]:
            raise BenchError("the city sent nothing while the probes ran (it ended too soon)")
        latency = {
            "p50_s": _s(p50),
            "p95_s": _s(p95),
            "p99_s": _s(p99),
            "max_s": _s(top),
            "p99_vs_target": None if p99 is None else round(p99 / TARGET_S, 3),
            # publish → the ingest received it → the evaluation round began → NOTIFY arrived
            "stages_p50_p99_s": {
                name: [_s(percentile(values, 50)), _s(percentile(values, 99))]
                for name, values in parts.items()
            },
        }
        report = {
            "probes": {
                "sent": len(sent),
                "alerted": len(latencies),
                "missed": len(sent) - len(latencies),
            },
            "latency": latency,
            "background": {
                "sites": len(self.site_ids),
                "devices": len(self.city_devices),
                "messages_per_s": round((after["published"] - before["published"]) / window, 1),
                "window_s": round(window, 2),
            },
            "detector": _detector(before["metrics"], after["metrics"], window),
            "cpu": cpu.breakdown(before["cpu"], after["cpu"], {}),
        }
        self.ctx.progress(
            f"{len(latencies)}/{len(sent)} probes alerted: p50 {latency['p50_s']} s, "
            f"p99 {latency['p99_s']} s, max {latency['max_s']} s"
        )
        return report

    def _config(self) -> dict[str, Any]:
        workers = self.config.detect_workers
        return {
            **self.config.as_dict(),
            "probes": len(self.probe_ids),
            "database": self.ctx.database,
            "topic_root": self.ctx.root,
            "platform": f"weijian up (ingest_workers 1, detect_workers {workers})",
            "sites_per_shard": [
                len(Shard(i, workers).select(self.site_ids)) for i in range(workers)
            ],
            "debounce_s": 0.1,
        }

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the city and the platform; remove the city's broker accounts and retained
        status messages (the database goes with the context)."""
        self._stop_city.set()
        if self._city_thread is not None:
            self._city_thread.join(30)
        if self.platform is not None:
            self.platform.stop()
        if self._accounts:
            self._forget_accounts()

    def _forget_accounts(self) -> None:
        from weijian.mqtt import new_client

        commands: list[dict[str, Any]] = []
        for device in self.city_devices:
            commands.append({"command": "deleteClient", "username": device})
            commands.append({"command": "deleteRole", "rolename": role_name(device)})
        with contextlib.suppress(Exception):
            DynamicSecurity(self.ctx.target, self.ctx.root).run(commands, tolerate=("not found",))
        # Retained status messages (online, Last Will) would outlive the run in the broker.
        with contextlib.suppress(Exception):
            client = new_client(self.ctx.target, f"bench-{self.ctx.tag}-clear")
            client.connect(self.ctx.target.host, self.ctx.target.port)
            client.loop_start()
            infos = [
                client.publish(f"{self.ctx.root}/{device}/status", b"", qos=1, retain=True)
                for device in self.city_devices
            ]
            for info in infos:
                info.wait_for_publish(5)
            client.disconnect()
            client.loop_stop()


# -- helpers -----------------------------------------------------------------------------------


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _free_port() -> int:
    """A free port for the platform's API, below the kernel's ephemeral range: the benchmark
    opens hundreds of outgoing connections (device accounts, the city's clients) between
    picking the port and the platform binding it, and a port from the ephemeral range can be
    handed to one of them in between (seen once: `[Errno 98]` at start-up)."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for port in random.Random().sample(range(min(20000, low // 2), low), k=100):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # all taken: any free port
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int) -> dict[str, float] | None:
    """The detector's samples from the platform's /metrics (None while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(("weijian_detector_", "weijian_event_loop_")):
            continue
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}"] = sample.value
    return samples


def _detector(
    before: dict[str, float] | None, after: dict[str, float] | None, window: float
) -> dict[str, Any] | None:
    """Evaluations and seconds in the window, per trigger, from the platform's own metrics.
    One evaluation = one `DetectionLoop.evaluate` call: one site (stream: its devices with new
    data; scan: what time changed; full_scan: everything over the whole lookback)."""
    if before is None or after is None:
        return None

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    per: dict[str, dict[str, float | int | None]] = {}
    calls_total = seconds_total = 0.0
    slowest: str | None = None
    for t in _MEASURED_TRIGGERS:
        calls = delta(f"weijian_detector_evaluation_seconds_count{{trigger={t}}}")
        seconds = delta(f"weijian_detector_evaluation_seconds_sum{{trigger={t}}}")
        calls_total += calls
        seconds_total += seconds
        per[t] = {
            "evaluations": int(calls),
            "seconds": round(seconds, 3),
            "mean_ms": round(1000 * seconds / calls, 2) if calls else None,
        }
    # Evaluations per histogram bucket: an upper bound of the slowest one.
    by_le: dict[str, float] = defaultdict(float)
    for key in after:
        if key.startswith("weijian_detector_evaluation_seconds_bucket"):
            by_le[key.split("le=", 1)[1].split(",", 1)[0].rstrip("}")] += delta(key)
    if calls_total:
        slowest = next((le for le, n in by_le.items() if n >= calls_total), None)
    # How long the event loop every stage shares was held (`weijian_event_loop_lag_seconds`).
    lag = {
        key.split("le=", 1)[1].rstrip("}"): delta(key)
        for key in after
        if key.startswith("weijian_event_loop_lag_seconds_bucket")
    }
    turns = delta("weijian_event_loop_lag_seconds_count{}")
    return {
        "source": "/metrics",
        "evaluations": int(calls_total),
        "by_trigger": per,
        "evaluation_s": round(seconds_total, 3),
        "busy_fraction": round(seconds_total / window, 3),
        "mean_evaluation_ms": round(1000 * seconds_total / calls_total, 2) if calls_total else None,
        "slowest_evaluation_le_s": slowest,
        "loop_held": {
            "probes": int(turns),
            "over_0.25_s": int(turns - lag.get("0.25", turns)),
            "over_1_s": int(turns - lag.get("1.0", turns)),
            "longest_le_s": next((le for le, n in lag.items() if n >= turns), None)
            if turns
            else None,
        },
    }


def _from_ns(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)


def _s(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
