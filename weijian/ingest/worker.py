"""The ingest worker: one persistent MQTT session, batches committed before they are acknowledged.

Messages arrive on paho's network thread and are queued; the writer thread decodes a batch,
writes it in one transaction and only then sends the PUBACKs. The broker's in-flight window
(Receive Maximum) bounds what is held in memory: under a backlog the broker keeps the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from weijian.clock import Clock, SystemClock
from weijian.config import Settings
from weijian.devices.kinds import DeviceKind
from weijian.ingest import metrics
from weijian.ingest import repository as repo
from weijian.ingest.decode import Decoded, Rejected, decode, parse_topic
from weijian.mqtt import new_client
from weijian.telemetry import Event, Reading

log = logging.getLogger(__name__)

_RECEIVE_MAXIMUM = 20000
_REGISTRY_REFRESH_S = 5.0


@dataclass(slots=True)
class Inbound:
    topic: str
    payload: bytes
    mid: int
    qos: int
    received_at_mono: float
    # The broker connection that delivered it: a packet id means nothing on any other.
    connection: int


@dataclass
class IngestStats:
    messages: int = 0
    readings_new: int = 0
    events_new: int = 0
    dead_letters: int = 0
    batches: int = 0


class TelemetryIngestor:
    """Subscribes to the device topics and commits what arrives, exactly once per row."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_index: int = 0,
        clock: Clock | None = None,
        on_commit: Callable[[list[str]], None] | None = None,
    ) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._root = settings.mqtt_topic_root
        self._client_id = f"{settings.mqtt_client_id}-{worker_index}"
        self._queue: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        # Bumped when a connection is lost; acknowledgements check it under the lock.
        self._connection_no = 0
        self._ack_lock = threading.Lock()
        self._kinds: dict[str, DeviceKind] = {}
        self._kinds_loaded = float("-inf")
        self._batch_started = 0.0
        self._max_offset = timedelta(days=settings.ingest_max_clock_offset_days)
        self._on_commit = on_commit
        self.stats = IngestStats()
        self._client = new_client(settings.mqtt, self._client_id, manual_ack=True)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._writer = threading.Thread(
            target=self._write_loop, name=f"ingest-writer-{worker_index}"
        )
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the broker and start the network and writer threads."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self._settings.mqtt_session_expiry_s
        props.ReceiveMaximum = _RECEIVE_MAXIMUM
        target = self._settings.mqtt
        self._writer.start()
        self._client.connect_async(
            target.host, target.port, keepalive=30, clean_start=False, properties=props
        )
        self._client.loop_start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        return self._connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, commit what was received, acknowledge it, disconnect."""
        self._stop.set()
        self._writer.join(timeout)
        self._client.disconnect()
        self._client.loop_stop()
        if self._conn is not None:
            self._conn.close()

    # -- MQTT callbacks (network thread) ---------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the ingest session: %s", reason)
            return
        metrics.CONNECTED.set(1)
        self._connected.set()
        client.subscribe([(f, 1) for f in self.topic_filters()])
        log.info(
            "ingest %s connected (session present: %s)", self._client_id, flags.session_present
        )

    def topic_filters(self) -> list[str]:
        """The device topics, shared among workers when there are several.

        A lone worker subscribes plainly: Mosquitto 2.0 does not persist shared subscriptions,
        so after a broker restart messages sent before the worker re-subscribed would find no
        subscriber. A plain subscription lives in the persistent session and keeps queueing.
        """
        channels = ("telemetry", "events", "status")
        plain = [f"{self._root}/+/{ch}" for ch in channels]
        if self._settings.ingest_workers == 1:
            return plain
        return [f"$share/{self._settings.mqtt_share_group}/{f}" for f in plain]

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self._ack_lock:
            self._connection_no += 1
        metrics.CONNECTED.set(0)
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest %s lost the broker (%s); reconnecting", self._client_id, reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self._queue.put(
            Inbound(
                msg.topic,
                bytes(msg.payload),
                msg.mid,
                msg.qos,
                time.monotonic(),
                self._connection_no,
            )
        )
        metrics.PENDING.inc()

    # -- writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        batch_max = self._settings.ingest_batch_max
        wait_s = self._settings.ingest_batch_wait_ms / 1000.0
        while True:
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            deadline = time.monotonic() + wait_s
            while len(batch) < batch_max:
                remaining = deadline - time.monotonic()
                try:
                    batch.append(
                        self._queue.get(timeout=max(remaining, 0))
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
            self._commit_with_retry(batch)

    def _commit_with_retry(self, batch: list[Inbound]) -> None:
        delay = 0.2
        while True:
            try:
                self._commit(batch)
                return
            except psycopg.OperationalError as exc:
                metrics.DB_RETRIES.inc()
                log.warning(
                    "database unavailable (%s); retrying %d messages in %.1f s",
                    exc,
                    len(batch),
                    delay,
                )
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._settings.database_url, application_name=self._client_id
            )
            repo.prepare(self._conn)
            self._kinds_loaded = float("-inf")
        return self._conn

    def _kind_of(
        self, conn: psycopg.Connection[tuple[Any, ...]], device_id: str
    ) -> DeviceKind | None:
        now = time.monotonic()
        stale = now - self._kinds_loaded > _REGISTRY_REFRESH_S
        # An unknown id reloads the registry once per batch at most (a new device, or junk).
        missing = device_id not in self._kinds and self._kinds_loaded < self._batch_started
        if stale or missing:
            self._kinds = {d: DeviceKind(k) for d, k in repo.device_kinds(conn).items()}
            self._kinds_loaded = now
        return self._kinds.get(device_id)

    def _commit(self, batch: list[Inbound]) -> None:
        started = self._batch_started = time.monotonic()
        conn = self._connection()
        rows = _BatchRows(self._clock.now())
        for inbound in batch:
            self._decode_one(conn, inbound, rows)
        counts = repo.write_batch(
            conn,
            readings=rows.readings,
            events=rows.events,
            dead=rows.dead,
            presence=list(rows.presence.values()),
        )
        self._ack(batch)
        self._account(batch, rows, counts, started)
        if self._on_commit is not None and rows.presence:
            self._on_commit(list(rows.presence))

    def _ack(self, batch: list[Inbound]) -> None:
        """Acknowledge the committed messages that came in on the current connection."""
        # Messages of an earlier connection are not acknowledged: if the broker kept the
        # session it has sent them again (committed again, absorbed by the unique keys); if
        # it lost the session, their packet ids now name other, uncommitted messages.
        with self._ack_lock:
            for inbound in batch:
                if inbound.qos > 0 and inbound.connection == self._connection_no:
                    self._client.ack(inbound.mid, inbound.qos)

    def _decode_one(
        self, conn: psycopg.Connection[tuple[Any, ...]], inbound: Inbound, rows: _BatchRows
    ) -> None:
        device_id: str | None = None
        try:
            if len(inbound.payload) > self._settings.ingest_max_payload_bytes:
                raise Rejected(
                    f"payload of {len(inbound.payload)} bytes exceeds the limit of "
                    f"{self._settings.ingest_max_payload_bytes}"
                )
            topic = parse_topic(inbound.topic, self._root)
            device_id = topic.device_id
            kind = self._kind_of(conn, device_id)
            if kind is None:
                raise Rejected(f"unknown device {device_id!r}")
            decoded = decode(topic, kind, inbound.payload, rows.received_at, self._max_offset)
        except Rejected as exc:
            rows.dead.append(repo.DeadLetter(inbound.topic, device_id, str(exc), inbound.payload))
            return
        rows.add(inbound.topic, device_id, decoded)

    def _account(
        self, batch: list[Inbound], rows: _BatchRows, counts: repo.BatchCounts, started: float
    ) -> None:
        elapsed = time.monotonic() - started
        self.stats.messages += len(batch)
        self.stats.readings_new += counts.readings_new
        self.stats.events_new += counts.events_new
        self.stats.dead_letters += len(rows.dead)
        self.stats.batches += 1
        metrics.PENDING.dec(len(batch))
        metrics.MESSAGES.labels("all").inc(len(batch))
        metrics.READINGS.inc(counts.readings_new)
        metrics.READINGS_DUPLICATE.inc(len(rows.readings) - counts.readings_new)
        metrics.EVENTS.inc(counts.events_new)
        metrics.DEAD_LETTERS.inc(len(rows.dead))
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.COMMIT_SECONDS.observe(elapsed)
        metrics.LAG_SECONDS.set(time.monotonic() - batch[0].received_at_mono)
        log.debug(
            "batch committed messages=%d readings_new=%d events_new=%d dead=%d seconds=%.4f",
            len(batch),
            counts.readings_new,
            counts.events_new,
            len(rows.dead),
            elapsed,
        )


class _BatchRows:
    """The rows, dead letters and presence updates one batch of messages yields."""

    def __init__(self, received_at: datetime) -> None:
        self.received_at = received_at
        self.readings: list[Reading] = []
        self.events: list[Event] = []
        self.dead: list[repo.DeadLetter] = []
        self.presence: dict[str, repo.Presence] = {}

    def add(self, topic: str, device_id: str, decoded: Decoded) -> None:
        self.readings.extend(decoded.readings)
        self.events.extend(decoded.events)
        self.dead.extend(
            repo.DeadLetter(topic, device_id, why, raw) for why, raw in decoded.rejected
        )
        old = self.presence.get(device_id)
        heard = bool(decoded.readings or decoded.events) or decoded.online is not None
        status = decoded.online is not None
        times = [r.ts for r in decoded.readings] + [e.ts for e in decoded.events]
        earliest = min(times) if times else None
        if old is not None and old.earliest is not None:
            earliest = old.earliest if earliest is None else min(earliest, old.earliest)
        self.presence[device_id] = repo.Presence(
            earliest=earliest,
            device_id=device_id,
            last_seen_at=self.received_at if heard else (old.last_seen_at if old else None),
            last_seq=_max_opt(decoded.max_seq, old.last_seq if old else None),
            online=decoded.online if status else (old.online if old else None),
            status_at=self.received_at if status else (old.status_at if old else None),
        )


def _max_opt(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)
