"""The ingest worker: one persistent MQTT session, batches committed before they are acknowledged.

The subscriber's network thread (subscriber.py) queues the PUBLISHes of each read; the writer
thread decodes a batch, writes it in one transaction and only then has the subscriber send the
PUBACKs. The in-flight window (Receive Maximum) bounds what is held in memory: under a backlog
the broker keeps the rest.
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

import psycopg

from weijian.clock import Clock, SystemClock
from weijian.config import Settings
from weijian.devices.kinds import DeviceKind
from weijian.ingest import metrics
from weijian.ingest import repository as repo
from weijian.ingest.decode import (
    METRIC_NAMES,
    Decoded,
    ReadingRow,
    Rejected,
    TimeWindow,
    Topic,
    decode,
    parse_topic,
    reading_rows,
)
from weijian.ingest.presence import PresenceThrottle
from weijian.ingest.subscriber import Delivery, MqttSubscriber, SessionOptions
from weijian.telemetry import Event

log = logging.getLogger(__name__)

_RECEIVE_MAXIMUM = 20000
_REGISTRY_REFRESH_S = 5.0
# Parsed topics kept per worker (one per device and channel); cleared when it grows past this.
_TOPIC_CACHE_MAX = 200_000


@dataclass
class IngestStats:
    messages: int = 0
    readings_new: int = 0
    events_new: int = 0
    dead_letters: int = 0
    batches: int = 0
    # NOTIFY payloads sent on commit (counted before `messages`: a reader that sees the
    # messages committed also sees every announcement of them).
    notifications: int = 0


class TelemetryIngestor:
    """Subscribes to the device topics and commits what arrives, exactly once per row."""

    def __init__(
        self,
        settings: Settings,
        *,
        worker_index: int = 0,
        clock: Clock | None = None,
        on_commit: Callable[[list[str]], None] | None = None,
        receive_maximum: int = _RECEIVE_MAXIMUM,
    ) -> None:
        self._settings = settings
        self._clock = clock or SystemClock()
        self._root = settings.mqtt_topic_root
        self._client_id = f"{settings.mqtt_client_id}-{worker_index}"
        self._queue: queue.SimpleQueue[Delivery] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._kinds: dict[str, DeviceKind] = {}
        self._kinds_loaded = float("-inf")
        self._batch_started = 0.0
        self._max_offset = timedelta(days=settings.ingest_max_clock_offset_days)
        self._topics: dict[bytes, tuple[str, Topic | str]] = {}
        self._presence = PresenceThrottle(settings.ingest_presence_refresh_s)
        self._on_commit = on_commit
        self.stats = IngestStats()
        self._subscriber = MqttSubscriber(
            settings.mqtt,
            SessionOptions(
                client_id=self._client_id,
                topic_filters=tuple(self.topic_filters()),
                session_expiry_s=settings.mqtt_session_expiry_s,
                receive_maximum=receive_maximum,
            ),
            on_delivery=self._on_delivery,
            on_connect=lambda _present: metrics.CONNECTED.set(1),
            on_disconnect=lambda _why: metrics.CONNECTED.set(0),
        )
        self._writer = threading.Thread(
            target=self._write_loop, name=f"ingest-writer-{worker_index}"
        )
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the writer and the subscriber (which connects, subscribes and reconnects)."""
        self._writer.start()
        self._subscriber.start()

    def wait_connected(self, timeout: float = 10.0) -> bool:
        """True once the session is up and the broker has granted the subscriptions."""
        return self._subscriber.connected.wait(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking messages, commit and acknowledge what was received, disconnect.

        Messages the broker sends meanwhile are not taken: unacknowledged, they stay with the
        persistent session and come again on the next start. So a stop under a backlog waits
        for at most the batches already received, not for the backlog.
        """
        self._stop.set()
        self._subscriber.pause()
        self._writer.join(timeout)
        self._subscriber.stop()
        metrics.CONNECTED.set(0)
        if self._conn is not None:
            self._conn.close()

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

    def _on_delivery(self, delivery: Delivery) -> None:
        """Subscriber's network thread: one read's messages, queued for the writer."""
        self._queue.put(delivery)
        metrics.PENDING.inc(len(delivery.ids))

    # -- writer thread ---------------------------------------------------------------------

    def _write_loop(self) -> None:
        batch_max = self._settings.ingest_batch_max
        wait_s = self._settings.ingest_batch_wait_ms / 1000.0
        leftover: Delivery | None = None
        while True:
            if leftover is not None:
                first, leftover = leftover, None
            else:
                try:
                    first = self._queue.get(timeout=0.2)
                except queue.Empty:
                    self._flush_presence()
                    if self._stop.is_set():
                        return
                    continue
            batch = [first]
            count = len(first.ids)
            deadline = time.monotonic() + wait_s
            while count < batch_max:
                # Stopping: take what is queued, wait for nothing more.
                remaining = 0.0 if self._stop.is_set() else deadline - time.monotonic()
                try:
                    part = (
                        self._queue.get(timeout=remaining)
                        if remaining > 0
                        else self._queue.get_nowait()
                    )
                except queue.Empty:
                    break
                batch.append(part)
                count += len(part.ids)
            if count > batch_max:
                batch[-1], leftover = _split(batch[-1], len(batch[-1].ids) - (count - batch_max))
            if not self._commit_with_retry(batch):
                return

    def _commit_with_retry(self, batch: list[Delivery]) -> bool:
        """Commit the batch, retrying while the database is away; False if given up on stop."""
        delay = 0.2
        while True:
            try:
                self._commit(batch)
                return True
            except psycopg.OperationalError as exc:
                metrics.DB_RETRIES.inc()
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                if self._stop.is_set():
                    # Unacknowledged, the messages stay with the broker's session.
                    log.warning("stopping with the database unavailable (%s)", exc)
                    return False
                log.warning(
                    "database unavailable (%s); retrying %d messages in %.1f s",
                    exc,
                    sum(len(d.ids) for d in batch),
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)

    def _flush_presence(self) -> None:
        """Idle: write the presence updates held back, so it is exact while ingest is quiet."""
        if not self._presence.held:
            return
        updates = self._presence.flush(time.monotonic())
        try:
            repo.write_batch(self._connection(), events=[], dead=[], presence=updates, announce=[])
        except psycopg.OperationalError as exc:
            self._presence.restore(updates)
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            log.debug("presence not written (%s); kept for later", exc)

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

    def _commit(self, batch: list[Delivery]) -> None:
        started = self._batch_started = time.monotonic()
        conn = self._connection()
        rows = _BatchRows(self._clock.now(), self._max_offset)
        for delivery in batch:
            for topic, payload in zip(delivery.topics, delivery.payloads, strict=True):
                self._decode_one(conn, topic, payload, rows)
        heard = rows.presence()
        counts = repo.write_batch(
            conn,
            rows=rows.readings,
            events=rows.events,
            dead=rows.dead,
            presence=self._presence.due(heard, time.monotonic()),
            announce=heard,
            topic_root=self._root,
        )
        self._ack(batch)
        self._account(batch, rows, counts, started)
        if self._on_commit is not None and rows.seen:
            self._on_commit(list(rows.seen))

    def _ack(self, batch: list[Delivery]) -> None:
        """Acknowledge the committed messages that came in on the current connection."""
        # Messages of an earlier connection are not acknowledged (the subscriber drops them):
        # if the broker kept the session it has sent them again (committed again, absorbed by
        # the unique keys); if it lost the session, their packet ids now name other,
        # uncommitted messages. One PUBACK write per connection and batch.
        by_connection: dict[int, list[int]] = {}
        for delivery in batch:
            by_connection.setdefault(delivery.connection, []).extend(delivery.ids)
        for connection, ids in by_connection.items():
            self._subscriber.ack(connection, ids)

    def _topic(self, raw: bytes) -> tuple[str, Topic | str]:
        """(topic text, parsed topic or the reason it is rejected), cached per topic."""
        found = self._topics.get(raw)
        if found is None:
            text = raw.decode(errors="replace")
            try:
                found = (text, parse_topic(text, self._root))
            except Rejected as exc:
                found = (text, str(exc))
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[raw] = found
        return found

    def _decode_one(
        self,
        conn: psycopg.Connection[tuple[Any, ...]],
        raw_topic: bytes,
        payload: bytes,
        rows: _BatchRows,
    ) -> None:
        text, topic = self._topic(raw_topic)
        device_id: str | None = None
        try:
            if len(payload) > self._settings.ingest_max_payload_bytes:
                raise Rejected(
                    f"payload of {len(payload)} bytes exceeds the limit of "
                    f"{self._settings.ingest_max_payload_bytes}"
                )
            if isinstance(topic, str):
                raise Rejected(topic)
            device_id = topic.device_id
            kind = self._kind_of(conn, device_id)
            if kind is None:
                raise Rejected(f"unknown device {device_id!r}")
            if topic.channel == "telemetry":
                fast = reading_rows(
                    payload,
                    device_id,
                    allowed=METRIC_NAMES[kind],
                    received_at=rows.received_at,
                    window=rows.window,
                    out=rows.readings,
                )
                if fast is not None:
                    rows.heard(device_id, fast[0], fast[1])
                    return
            decoded = decode(topic, kind, payload, rows.received_at, self._max_offset)
        except Rejected as exc:
            rows.dead.append(repo.DeadLetter(text, device_id, str(exc), payload))
            return
        rows.add(text, device_id, decoded)

    def _account(
        self, batch: list[Delivery], rows: _BatchRows, counts: repo.BatchCounts, started: float
    ) -> None:
        elapsed = time.monotonic() - started
        messages = sum(len(d.ids) for d in batch)
        dead = len(rows.dead) + counts.conflicts
        self.stats.notifications += counts.notifications
        self.stats.messages += messages
        self.stats.readings_new += counts.readings_new
        self.stats.events_new += counts.events_new
        self.stats.dead_letters += dead
        self.stats.batches += 1
        metrics.PENDING.dec(messages)
        metrics.MESSAGES.labels("all").inc(messages)
        metrics.READINGS.inc(counts.readings_new)
        metrics.READINGS_DUPLICATE.inc(len(rows.readings) - counts.readings_new)
        metrics.EVENTS.inc(counts.events_new)
        metrics.DEAD_LETTERS.inc(dead)
        metrics.BATCH_SIZE.observe(messages)
        metrics.COMMIT_SECONDS.observe(elapsed)
        metrics.LAG_SECONDS.set(time.monotonic() - batch[0].received_at)
        log.debug(
            "batch committed messages=%d readings_new=%d events_new=%d dead=%d conflicts=%d"
            " idempotent_path=%s seconds=%.4f",
            messages,
            counts.readings_new,
            counts.events_new,
            len(rows.dead),
            counts.conflicts,
            counts.fell_back,
            elapsed,
        )


def _split(delivery: Delivery, at: int) -> tuple[Delivery, Delivery]:
    """The first `at` messages of a delivery, and the rest."""
    c, t = delivery.connection, delivery.received_at
    head = Delivery(c, t, delivery.ids[:at], delivery.topics[:at], delivery.payloads[:at])
    tail = Delivery(c, t, delivery.ids[at:], delivery.topics[at:], delivery.payloads[at:])
    return head, tail


class _Seen:
    """What one batch says about a device's presence (folded over its messages)."""

    __slots__ = ("earliest", "heard", "last_seq", "online", "status_at")

    def __init__(self) -> None:
        self.earliest: datetime | None = None
        self.heard = False
        self.last_seq: int | None = None
        self.online: bool | None = None
        self.status_at: datetime | None = None

    def data(self, seq: int | None, earliest: datetime | None) -> None:
        if seq is not None and (self.last_seq is None or seq > self.last_seq):
            self.last_seq = seq
        if earliest is not None and (self.earliest is None or earliest < self.earliest):
            self.earliest = earliest


class _BatchRows:
    """The rows, dead letters and presence updates one batch of messages yields."""

    def __init__(self, received_at: datetime, max_offset: timedelta) -> None:
        self.received_at = received_at
        self.window = TimeWindow.around(received_at, max_offset)
        self.readings: list[ReadingRow] = []
        self.events: list[Event] = []
        self.dead: list[repo.DeadLetter] = []
        self.seen: dict[str, _Seen] = {}

    def _device(self, device_id: str) -> _Seen:
        seen = self.seen.get(device_id)
        if seen is None:
            seen = self.seen[device_id] = _Seen()
        return seen

    def heard(self, device_id: str, seq: int, ts: datetime) -> None:
        """A message of the fast path: one reading, already in `readings`."""
        seen = self._device(device_id)
        seen.heard = True
        seen.data(seq, ts)

    def add(self, topic: str, device_id: str, decoded: Decoded) -> None:
        self.readings += [
            (r.ts, r.device_id, r.metric, r.value, r.seq, r.received_at) for r in decoded.readings
        ]
        self.events.extend(decoded.events)
        self.dead.extend(
            repo.DeadLetter(topic, device_id, why, raw) for why, raw in decoded.rejected
        )
        seen = self._device(device_id)
        times = [r.ts for r in decoded.readings] + [e.ts for e in decoded.events]
        seen.data(decoded.max_seq, min(times) if times else None)
        # Presence is what the device itself sends: data, or `online=true`. An `online=false`
        # is usually the broker's Last Will, published when it notices the device gone; taking
        # it as presence would start the offline wait late.
        if decoded.readings or decoded.events or decoded.online is True:
            seen.heard = True
        if decoded.online is not None:
            seen.online = decoded.online
            seen.status_at = self.received_at

    def presence(self) -> list[repo.Presence]:
        """One presence update per device of the batch."""
        return [
            repo.Presence(
                device_id=device_id,
                last_seen_at=self.received_at if seen.heard else None,
                last_seq=seen.last_seq,
                online=seen.online,
                status_at=seen.status_at,
                earliest=seen.earliest,
            )
            for device_id, seen in self.seen.items()
        ]
