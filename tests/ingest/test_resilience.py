"""Exactly-once ingest through faults: the ingest killed, the broker restarted, the database down.

Each test streams thousands of distinct QoS 1 readings from a few devices, injects one fault
while they flow, and checks that every reading is stored exactly once. Faults only ever hit
the private broker and database cluster of `private_services`, never the shared ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import REGISTRY

from tests.ingest.private_services import PrivateBroker, PrivatePostgres, available
from weijian.config import MqttTarget, Settings, get_settings
from weijian.db.connection import connect
from weijian.db.migrate import migrate
from weijian.devices import repository as devices_repo
from weijian.devices import service as devices
from weijian.devices.models import SiteCreate
from weijian.ingest.worker import TelemetryIngestor
from weijian.mqtt import new_client, topic

_UNAVAILABLE = available()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]

DEVICES = 4
METRICS = ("temp_c", "door_open")


# -- private services ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def private_postgres() -> Iterator[PrivatePostgres]:
    """One private cluster for the session; a test may stop it, the next finds it running."""
    directory = Path(tempfile.mkdtemp(prefix="weijian-pg-"))
    cluster = PrivatePostgres(directory)
    try:
        cluster.init()
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def private_db(private_postgres: PrivatePostgres) -> Iterator[str]:
    """A fresh, migrated database of this test alone in the private cluster."""
    private_postgres.ensure_running()
    name = f"resilience_{uuid.uuid4().hex[:10]}"
    url = private_postgres.create_database(name)
    migrate(url)
    yield url
    private_postgres.ensure_running()
    private_postgres.drop_database(name)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    """A private Mosquitto of this test alone (persistence on, anonymous)."""
    instance = PrivateBroker(tmp_path / "mosquitto")
    instance.start()
    yield instance
    instance.kill()


@pytest.fixture
def settings(private_db: str, broker: PrivateBroker) -> Settings:
    return get_settings(
        database_url=private_db,
        mqtt_url=broker.url,
        mqtt_topic_root=f"t{uuid.uuid4().hex[:12]}/weijian/v1",
        mqtt_client_id=f"test-{uuid.uuid4().hex[:10]}",
        mqtt_share_group=f"g{uuid.uuid4().hex[:8]}",
        ingest_batch_wait_ms=20,
        mqtt_session_expiry_s=300,
        _env_file=None,
    )


@pytest.fixture
def device_ids(settings: Settings, event_loop_runner: asyncio.Runner) -> list[str]:
    """A site with a few steam cabinets, registered in the database only (anonymous broker)."""

    async def register() -> list[str]:
        conn = await connect(settings.database_url)
        async with conn:
            site = await devices.add_site(
                conn=conn,
                new=SiteCreate(
                    name="韧性测试消毒中心", kind="disinfection_plant", district="城东区"
                ),
            )
            ids = [f"d-{uuid.uuid4().hex[:10]}" for _ in range(DEVICES)]
            for device_id in ids:
                await devices_repo.insert_device(
                    conn=conn,
                    device_id=device_id,
                    site_id=site.id,
                    kind="steam_cabinet",
                    name=None,
                    interval_s=10,
                )
        return ids

    return event_loop_runner.run(register())


# -- devices -----------------------------------------------------------------------------------


class DeviceStream:
    """A device publishing `count` distinct readings with QoS 1 at a steady pace.

    Its session is persistent (same client id, clean start only the first time), so after a
    lost connection paho resends every PUBLISH the broker had not acknowledged. A PUBACK with
    any other reason code than 0 is answered by publishing the reading again, and counted in
    `refused`. That includes 0x10, "no matching subscribers": Mosquitto 2.0 does not restore
    shared subscriptions from its persistence file, so after a broker restart it drops what
    devices publish until the ingest has subscribed again.
    """

    def __init__(
        self, settings: Settings, device_id: str, *, count: int, rate: float, base: datetime
    ) -> None:
        self.device_id = device_id
        self.count = count
        self.base = base
        self.refused: Counter[int] = Counter()  # reason code → readings published again
        self._rate = rate
        self._topic = topic(settings.mqtt_topic_root, device_id, "telemetry")
        self._status = topic(settings.mqtt_topic_root, device_id, "status")
        self._mids: list[int] = []
        self._acks: dict[int, int] = {}  # mid → reason code of its latest PUBACK
        self._thread = threading.Thread(target=self._run, name=f"stream-{device_id}")
        target = MqttTarget(settings.mqtt_url)
        self.client = new_client(target, f"{device_id}-pub")
        self.client.max_inflight_messages_set(200)
        self.client.on_publish = self._on_publish
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 300
        self.client.connect(target.host, target.port, properties=props)
        self.client.loop_start()

    def ts(self, seq: int) -> datetime:
        return self.base + timedelta(seconds=seq)

    def payload(self, seq: int) -> bytes:
        ts_ms = int(self.ts(seq).timestamp() * 1000)
        metrics = {"temp_c": 100 + (seq % 500) / 10, "door_open": seq % 2}
        return orjson.dumps({"seq": seq, "ts": ts_ms, "metrics": metrics})

    def _on_publish(self, _c: mqtt.Client, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._acks[mid] = int(reason.value)

    def announce(self) -> None:
        self.client.publish(self._status, b'{"online": true}', qos=1)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        for seq in range(self.count):
            self._mids.append(self.client.publish(self._topic, self.payload(seq), qos=1).mid)
            ahead = started + (seq + 1) / self._rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)

    @property
    def publishing(self) -> bool:
        return self._thread.is_alive()

    def finish(self, timeout: float = 60.0) -> None:
        """Wait until the broker has acknowledged every reading with success."""
        self._thread.join(timeout)
        deadline = time.monotonic() + timeout
        while True:
            acks = [self._acks.get(mid) for mid in self._mids]
            if all(code == 0 for code in acks):
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.device_id}: {acks.count(None)} readings never acknowledged"
                )
            for seq, code in enumerate(acks):
                if code is not None and code != 0:
                    self.refused[code] += 1
                    self._mids[seq] = self.client.publish(self._topic, self.payload(seq), qos=1).mid
            time.sleep(0.1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def make_streams(
    settings: Settings, device_ids: list[str]
) -> Iterator[Callable[[int, float], list[DeviceStream]]]:
    """Streams of `count` readings per device at `rate` per second per device."""
    made: list[DeviceStream] = []
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=1)

    def make(count: int, rate: float) -> list[DeviceStream]:
        for device_id in device_ids:
            made.append(DeviceStream(settings, device_id, count=count, rate=rate, base=base))
        return made

    yield make
    for stream in made:
        stream.close()


# -- checks ------------------------------------------------------------------------------------


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def readings_count(settings: Settings) -> int:
    with psycopg.connect(settings.database_url, connect_timeout=2) as conn:
        row = conn.execute("SELECT count(*) FROM readings").fetchone()
    return int(row[0]) if row else 0


def wait_until_ingesting(settings: Settings, streams: list[DeviceStream]) -> None:
    """Every device's status reached the database: the ingest is subscribed and committing."""

    def all_online() -> bool:
        for stream in streams:
            stream.announce()
        with psycopg.connect(settings.database_url) as conn:
            row = conn.execute("SELECT count(*) FROM devices WHERE online").fetchone()
        return row is not None and row[0] == len(streams)

    wait_for(all_online, 30, "the ingest to store the devices' status")


def run_streams_until(settings: Settings, streams: list[DeviceStream], share: float) -> None:
    """Start the streams and return once `share` of the readings are committed."""
    for stream in streams:
        stream.start()
    expected = sum(s.count for s in streams) * len(METRICS)
    wait_for(lambda: readings_count(settings) >= expected * share, 60, "first commits")
    assert all(s.publishing for s in streams), "the fault must hit while readings flow"


def assert_exactly_once(settings: Settings, streams: list[DeviceStream]) -> None:
    """Every published reading is stored once, with its own time and value; no dead letters."""
    for stream in streams:
        stream.finish()
    expected = sum(s.count for s in streams) * len(METRICS)
    deadline = time.monotonic() + 60
    while readings_count(settings) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # resends still on their way must not add rows
    with psycopg.connect(settings.database_url) as conn:
        rows = conn.execute("SELECT device_id, metric, ts, seq FROM readings").fetchall()
        dead = conn.execute("SELECT count(*), min(reason) FROM dead_letters").fetchone()
    assert dead == (0, None)
    stored = Counter((device_id, metric, seq) for device_id, metric, _, seq in rows)
    want = Counter(
        (s.device_id, m, seq) for s in streams for m in METRICS for seq in range(s.count)
    )
    lost, extra = want - stored, stored - want
    assert not lost, f"{lost.total()} of {expected} readings lost, e.g. {sorted(lost)[:3]}"
    assert not extra, f"{extra.total()} readings not published or stored twice"
    assert len({(d, m, ts) for d, m, ts, _ in rows}) == len(rows) == expected
    by_device = {s.device_id: s for s in streams}
    assert all(ts == by_device[d].ts(seq) for d, _, ts, seq in rows)


@contextlib.contextmanager
def device_row_locked(settings: Settings, device_id: str) -> Iterator[Callable[[], None]]:
    """Hold a device's row: a batch with that device's messages waits at its presence update."""
    conn = psycopg.connect(settings.database_url)
    try:
        conn.execute("SELECT 1 FROM devices WHERE id = %s FOR UPDATE", (device_id,))
        yield conn.rollback
    finally:
        conn.close()


# -- the ingest as a separate process ----------------------------------------------------------


class IngestProcess:
    """`weijian ingest` in its own process, configured through WEIJIAN_* variables."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        env = {k: v for k, v in os.environ.items() if not k.startswith("WEIJIAN_")}
        env.update(
            WEIJIAN_DATABASE_URL=settings.database_url,
            WEIJIAN_MQTT_URL=settings.mqtt_url,
            WEIJIAN_MQTT_TOPIC_ROOT=settings.mqtt_topic_root,
            WEIJIAN_MQTT_CLIENT_ID=settings.mqtt_client_id,
            WEIJIAN_MQTT_SHARE_GROUP=settings.mqtt_share_group,
            WEIJIAN_MQTT_SESSION_EXPIRY_S=str(settings.mqtt_session_expiry_s),
            WEIJIAN_INGEST_BATCH_WAIT_MS=str(settings.ingest_batch_wait_ms),
            WEIJIAN_INGEST_BATCH_MAX=str(settings.ingest_batch_max),
            WEIJIAN_INGEST_PRESENCE_REFRESH_S=str(settings.ingest_presence_refresh_s),
        )
        self._env = env

    def start(self) -> None:
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "weijian.cli", "ingest", "--workers", "1"],
                env=self._env,
                cwd=self.log.parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(10)

    def stop(self) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(15)
        except subprocess.TimeoutExpired:
            self.kill()


@pytest.fixture
def make_ingest_process(tmp_path: Path) -> Iterator[Callable[[Settings], IngestProcess]]:
    made: list[IngestProcess] = []

    def make(settings: Settings) -> IngestProcess:
        made.append(IngestProcess(settings, tmp_path / "ingest.log"))
        return made[-1]

    yield make
    for proc in made:
        proc.stop()


@pytest.fixture
def ingestor(settings: Settings) -> Iterator[TelemetryIngestor]:
    worker = TelemetryIngestor(settings)
    worker.start()
    assert worker.wait_connected(10)
    yield worker
    worker.stop()


# -- the tests ---------------------------------------------------------------------------------


def test_ingest_killed_mid_stream_resumes_its_session_and_loses_nothing(
    settings: Settings,
    make_ingest_process: Callable[[Settings], IngestProcess],
    make_streams: Callable[[int, float], list[DeviceStream]],
) -> None:
    """SIGKILL `weijian ingest` with batches in flight; the broker keeps its session and
    resends what was not acknowledged (some of it committed already) to the new process."""
    ingest_process = make_ingest_process(settings)
    streams = make_streams(3000, 400.0)
    ingest_process.start()
    wait_until_ingesting(settings, streams)
    run_streams_until(settings, streams, 0.15)
    ingest_process.kill()
    stored_at_kill = readings_count(settings)
    time.sleep(1.0)  # the broker queues for the dead session meanwhile
    ingest_process.start()
    assert_exactly_once(settings, streams)
    assert stored_at_kill < sum(s.count for s in streams) * len(METRICS)
    assert ingest_process.log.read_text().count("session present: True") == 1
    assert not any(s.refused for s in streams)


def test_broker_restart_mid_stream_loses_and_duplicates_nothing(
    settings: Settings,
    broker: PrivateBroker,
    ingestor: TelemetryIngestor,
    make_streams: Callable[[int, float], list[DeviceStream]],
) -> None:
    """SIGTERM the broker while devices publish and the ingest commits; it saves its sessions
    and comes back on the same port. Devices and the ingest resend what was not acknowledged.
    (Devices also publish again what the broker refused with 0x10 before the ingest had
    subscribed again: see `DeviceStream`.)"""
    streams = make_streams(3000, 400.0)
    wait_until_ingesting(settings, streams)
    run_streams_until(settings, streams, 0.15)
    broker.terminate()
    time.sleep(1.0)
    broker.start()
    assert_exactly_once(settings, streams)
    assert ingestor.stats.readings_new == sum(s.count for s in streams) * len(METRICS)


def test_database_down_for_30_s_the_ingest_waits_and_recovers_by_itself(
    settings: Settings,
    private_postgres: PrivatePostgres,
    ingestor: TelemetryIngestor,
    make_streams: Callable[[int, float], list[DeviceStream]],
) -> None:
    """Stop PostgreSQL (fast shutdown) for 30 s while readings flow: the ingest holds its batch
    unacknowledged, retries with backoff and carries on when the database is back."""
    retries_before = REGISTRY.get_sample_value("weijian_ingest_db_retries_total") or 0.0
    streams = make_streams(1500, 40.0)
    wait_until_ingesting(settings, streams)
    run_streams_until(settings, streams, 0.05)
    private_postgres.stop()
    time.sleep(30)
    private_postgres.start()
    assert_exactly_once(settings, streams)
    retries = REGISTRY.get_sample_value("weijian_ingest_db_retries_total") or 0.0
    assert retries - retries_before >= 3
    assert ingestor.stats.readings_new == sum(s.count for s in streams) * len(METRICS)
    assert not any(s.refused for s in streams)


def test_a_batch_held_across_a_lost_broker_session_acknowledges_nothing_of_the_new_one(
    settings: Settings,
    broker: PrivateBroker,
    make_ingest_process: Callable[[Settings], IngestProcess],
    make_streams: Callable[[int, float], list[DeviceStream]],
) -> None:
    """Packet ids belong to one connection. Device A's readings wait for the database while
    the broker crashes and comes back without the ingest's session; device B's readings then
    arrive on the new session, with packet ids from 1 again. Committing A's readings must not
    acknowledge B's (same ids, not committed yet): the ingest is killed before B's commit, and
    all of B's readings must come back when it resumes its session."""
    # One message per batch: every reading of A is committed before B's first one waits; every
    # batch writes its devices' presence (no refresh interval), so a held row holds the batch.
    ingest_process = make_ingest_process(
        settings.model_copy(update={"ingest_batch_max": 1, "ingest_presence_refresh_s": 0.0})
    )
    streams = make_streams(200, 1000.0)
    held, later = streams[0], streams[1]
    ingest_process.start()
    wait_until_ingesting(settings, streams)
    with device_row_locked(settings, held.device_id) as release_held:
        held.start()
        held.finish()
        time.sleep(1.0)  # delivered to the ingest, whose first batch waits on the lock
        broker.kill()  # no persistence file written yet: the session is gone
        broker.start()
        wait_for(
            lambda: ingest_process.log.read_text().count("session present: False") == 2,
            30,
            "the ingest to open a new session",
        )
        with device_row_locked(settings, later.device_id):
            later.start()
            later.finish()
            time.sleep(0.5)  # delivered to the ingest, queued behind A's readings
            release_held()
            wait_for(
                lambda: readings_count(settings) == held.count * len(METRICS),
                30,
                "A's readings",
            )
            time.sleep(0.5)  # what the ingest acknowledged has reached the broker
            ingest_process.kill()
    ingest_process.start()
    assert_exactly_once(settings, [held, later])
