"""What every part of the ingest benchmark shares: its options, database, topics and devices."""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg

from weijian.bench import repository as repo
from weijian.bench.probe import ProbeDevice
from weijian.bench.processes import BenchError, IngestProcess
from weijian.config import Settings
from weijian.devices.kinds import KINDS, DeviceKind
from weijian.simulator.load import LoadGenerator
from weijian.simulator.rawmqtt import RawMqttError, RawPublisher

PARTS = ("sustained", "latency", "ceilings", "naive", "backlog")
KIND = DeviceKind.DISH_MACHINE
METRICS = [m.name for m in KINDS[KIND].metrics]
PROBE_ID = "bench-probe"
# Device id prefixes: every part has its own devices, so each can be verified on its own
# (the load generator numbers every run's messages from seq 0).
SUSTAINED, LATENCY, BACKLOG, NAIVE = "bs-", "bl-", "bk-", "bn-"
# How long the broker keeps the benchmark ingest's sessions (enough for a backlog run).
_SESSION_EXPIRY_S = 1800

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BenchConfig:
    """Options of `weijian bench ingest` (the defaults are the documented full run)."""

    devices: int = 2000
    workers: int = 2
    duration_s: float = 60.0
    latency_duration_s: float = 30.0
    backlog: int = 0
    skip: frozenset[str] = field(default_factory=frozenset)
    keep: bool = False
    connections: int = 4
    warmup_s: float = 5.0
    copy_rows: int = 1_000_000
    bare_mqtt_s: float = 15.0
    naive_s: float = 20.0
    # Messages/s of the full-speed loads (sustained, bare MQTT, naive); 0 = as fast as possible.
    # Only the tests slow them down, to finish quickly.
    load_rate: float = 0.0
    # Offered load of the sustained part in messages/s (0: as fast as the publisher can): does
    # the ingest keep up with devices publishing at this rate?
    rate: float = 0.0

    def __post_init__(self) -> None:
        unknown = sorted(set(self.skip) - set(PARTS))
        if unknown:
            raise ValueError(f"unknown part {unknown[0]!r} to skip; parts: {', '.join(PARTS)}")
        if "sustained" in self.skip and "latency" not in self.skip:
            raise ValueError("latency runs at half the sustained rate: skip latency too")
        if self.rate < 0:
            raise ValueError("rate must not be negative (0: as fast as possible)")
        if self.devices < 1 or self.workers < 1 or self.backlog < 0:
            raise ValueError("devices and workers must be at least 1, backlog at least 0")
        if min(self.duration_s, self.latency_duration_s, self.bare_mqtt_s, self.naive_s) <= 0:
            raise ValueError("durations must be positive")

    def runs(self, part: str) -> bool:
        if part == "backlog" and self.backlog == 0:
            return False
        return part not in self.skip

    def as_dict(self) -> dict[str, Any]:
        return {
            "devices": self.devices,
            "workers": self.workers,
            "duration_s": self.duration_s,
            "latency_duration_s": self.latency_duration_s,
            "backlog": self.backlog,
            "skip": sorted(self.skip),
            "connections": self.connections,
            "warmup_s": self.warmup_s,
            "copy_rows": self.copy_rows,
            "bare_mqtt_s": self.bare_mqtt_s,
            "naive_s": self.naive_s,
            "load_rate": self.load_rate,
            "rate": self.rate,
        }


def with_database(url: str, name: str) -> str:
    """The same server URL naming another database."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


class BenchContext:
    """A benchmark's own database, topic root, MQTT client ids, devices and scratch directory."""

    def __init__(self, settings: Settings, config: BenchConfig, progress: Progress) -> None:
        self.settings = settings
        self.config = config
        self.progress = progress
        self.tag = uuid.uuid4().hex[:8]
        self.database = f"weijian_bench_{self.tag}"
        self.url = with_database(settings.database_url, self.database)
        self.admin_url = with_database(settings.database_url, "postgres")
        self.root = f"bench{self.tag}/weijian/v1"
        self.target = settings.mqtt
        self.username = self.target.username or ""
        self.password = self.target.password or ""
        self.ids = {
            prefix: [f"{prefix}{i:05d}" for i in range(config.devices)]
            for prefix in (SUSTAINED, LATENCY, BACKLOG, NAIVE)
        }
        self.scratch = Path(tempfile.mkdtemp(prefix="weijian-bench-"))
        self.client_ids: list[str] = []

    # -- resources -------------------------------------------------------------------------

    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        """An autocommit connection to the benchmark database (each statement sees the latest
        commits)."""
        return psycopg.connect(self.url, autocommit=True, application_name="weijian-bench")

    def load(self, device_ids: list[str], *, rate: float, root: str | None = None) -> LoadGenerator:
        return LoadGenerator(
            len(device_ids),
            rate=rate,
            broker_url=self.target.public_url,
            username=self.username,
            password=self.password,
            topic_root=root or self.root,
            device_ids=device_ids,
            kind=KIND,
            connections=self.config.connections,
        )

    def probe_device(self) -> ProbeDevice:
        return ProbeDevice(
            self.target,
            username=self.username,
            password=self.password,
            topic=f"{self.root}/{PROBE_ID}/telemetry",
            metrics={name: 20.0 + i for i, name in enumerate(METRICS)},
        )

    def ingest(self, client_id: str, workers: int) -> IngestProcess:
        """The real ingest (`weijian ingest`) on this benchmark's database and topics."""
        env = self.platform_env(client_id, workers)
        return IngestProcess(env=env, workers=workers, log_path=self.scratch / "ingest.log")

    def platform_env(self, client_id: str, workers: int) -> dict[str, str]:
        """WEIJIAN_* settings of a platform process on this benchmark's database and topics;
        its broker sessions (`client_id`-0 …) are forgotten at cleanup."""
        env = {
            "WEIJIAN_DATABASE_URL": self.url,
            "WEIJIAN_MQTT_URL": self.settings.mqtt_url,
            "WEIJIAN_MQTT_TOPIC_ROOT": self.root,
            "WEIJIAN_MQTT_CLIENT_ID": client_id,
            "WEIJIAN_MQTT_SHARE_GROUP": f"bench{self.tag}",
            "WEIJIAN_MQTT_SESSION_EXPIRY_S": str(_SESSION_EXPIRY_S),
            "WEIJIAN_INGEST_BATCH_MAX": str(self.settings.ingest_batch_max),
            "WEIJIAN_INGEST_BATCH_WAIT_MS": str(self.settings.ingest_batch_wait_ms),
            "WEIJIAN_LOG_LEVEL": "WARNING",
        }
        if workers > 1:
            metrics_dir = self.scratch / f"metrics-{client_id}"
            metrics_dir.mkdir(exist_ok=True)
            env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
        self.client_ids.extend(f"{client_id}-{i}" for i in range(workers))
        return env

    def await_ingest(self, ingest: IngestProcess, client_id: str, workers: int) -> None:
        """Wait until every worker has committed a probe message (so each is subscribed)."""
        deadline = time.monotonic() + 60
        probe = self.probe_device()
        try:
            with self.connect() as conn:
                while repo.sessions_of(conn=conn, application_prefix=f"{client_id}-") < workers:
                    ingest.check_alive()
                    if time.monotonic() > deadline:
                        raise BenchError("the ingest did not start committing within 60 s")
                    probe.send()
                    time.sleep(0.1)
        finally:
            probe.close()

    # -- lifecycle -------------------------------------------------------------------------

    def setup(self) -> None:
        from weijian.db.migrate import migrate

        migrate(self.url)
        with self.connect() as conn:
            for prefix in (SUSTAINED, LATENCY, BACKLOG):
                repo.register_devices(
                    conn=conn, site_id="bench-site", device_ids=self.ids[prefix], kind=KIND.value
                )
            repo.register_devices(
                conn=conn, site_id="bench-site", device_ids=[PROBE_ID], kind=KIND.value
            )

    def cleanup(self) -> None:
        """Forget the ingest's broker sessions; drop the database and the scratch directory
        (logs) unless asked to keep them."""
        for client_id in self.client_ids:
            # A clean-session connect under the same client id discards the stored session.
            with contextlib.suppress(OSError, RawMqttError):
                RawPublisher(self.target, client_id, self.username, self.password).close()
        if self.config.keep:
            self.progress(f"kept database {self.database} and the logs in {self.scratch}")
        else:
            repo.drop_database(admin_url=self.admin_url, name=self.database)
            shutil.rmtree(self.scratch, ignore_errors=True)

    @contextlib.contextmanager
    def running(self) -> Iterator[BenchContext]:
        try:
            self.setup()
            yield self
        finally:
            self.cleanup()

    def machine(self) -> dict[str, Any]:
        with self.connect() as conn:
            server = repo.server_facts(conn=conn)
        return {
            "cores": os.cpu_count(),
            "cpu": _cpu_model(),
            "memory_gb": _memory_gb(),
            "python": platform.python_version(),
            **server,
            "mosquitto": _mosquitto_version(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        }


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _memory_gb() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    return None


def _mosquitto_version() -> str | None:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=5, check=False)
        first = (out.stdout or out.stderr).strip().splitlines()
        if first and "version" in first[0]:
            return first[0].split("version", 1)[1].strip()
    return None
