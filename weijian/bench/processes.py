"""The processes a benchmark runs beside itself: the real ingest, and bare MQTT subscribers.

Each one is its own process so that it has its own interpreter lock, as in production; the
benchmark process only publishes, samples and verifies.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any
from urllib.parse import quote

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from weijian.config import MqttTarget

# The in-flight window the ingest asks for (weijian/ingest/worker.py), so bare subscribers get
# the same flow control from the broker.
_RECEIVE_MAXIMUM = 20000


class BenchError(RuntimeError):
    """The benchmark could not run (a process died, a deadline passed); one line of text."""


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


class IngestProcess:
    """`weijian ingest --workers N` (or another `weijian` command, e.g. `up`) in a subprocess of
    its own session, with WEIJIAN_* settings."""

    def __init__(
        self,
        *,
        env: dict[str, str],
        workers: int,
        log_path: Path,
        command: Sequence[str] | None = None,
    ) -> None:
        self._env = env
        self._workers = workers
        self._log_path = log_path
        self._command = list(command or ("ingest", "--workers", str(workers)))
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise BenchError("the ingest is not running")
        return self._proc.pid

    def start(self) -> None:
        with self._log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "weijian.cli", *self._command],
                env={**os.environ, **self._env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def check_alive(self) -> None:
        """Raise if the ingest has exited (with the end of its log)."""
        if self._proc is not None and self._proc.poll() is not None:
            raise BenchError(
                f"the ingest exited with {self._proc.returncode}: {_tail(self._log_path)}"
            )

    def pids(self) -> list[int]:
        """The ingest process and its workers (empty when stopped)."""
        return [] if self._proc is None else _family(self._proc.pid)

    def rss_mb(self) -> float:
        """Resident memory of the ingest and its worker processes, from /proc (0 if stopped)."""
        if self._proc is None:
            return 0.0
        return sum(_status_kb(pid, "VmRSS") for pid in _family(self.pid)) / 1024

    def peak_rss_mb(self) -> float:
        """The largest resident memory any one process of the ingest has had (VmHWM)."""
        if self._proc is None:
            return 0.0
        return max((_status_kb(pid, "VmHWM") for pid in _family(self.pid)), default=0) / 1024

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (the ingest commits and acknowledges what it holds), SIGKILL if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _family(pid: int) -> list[int]:
    """The process and all its descendants."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in task.read_text().split())
    return found


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


# -- bare subscribers (child processes) ------------------------------------------------------


@dataclass(frozen=True)
class SubscriberJob:
    """What a child subscriber does: count messages, or also INSERT each one (the naive way)."""

    broker_url: str
    username: str
    password: str
    topic_filter: str
    client_id: str
    # Set for the naive baseline: the database each message is inserted into.
    database_url: str | None = None
    topic_root: str = ""
    # > 0: a persistent session (kept this long while away), like the ingest's.
    session_expiry_s: int = 0
    # "lean": the ingest's own receive client (weijian/ingest/subscriber.py), acknowledging
    # each read's messages at once; "paho": a stock paho client with automatic PUBACKs.
    client: str = "paho"


def _subscribe(job: SubscriberJob, shared: Any, ready: EventType, stop: EventType) -> None:
    """Child process: one client, QoS 1, counting what it handles into `shared` = [count,
    monotonic time of the first message, of the last one]."""
    if job.client == "lean":
        _subscribe_lean(job, shared, ready, stop)
        return
    from weijian.mqtt import new_client

    target = MqttTarget(job.broker_url)
    client = new_client(target, job.client_id, username=job.username, password=job.password)
    handled = [0, 0.0, 0.0]
    handle = _naive_handler(job) if job.database_url else None

    def on_connect(c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe(job.topic_filter, qos=1)

    def on_subscribe(_c: mqtt.Client, _u: Any, _m: Any, _r: Any, _p: Any) -> None:
        ready.set()

    def on_message(_c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if not handled[1]:
            handled[1] = now
        handled[0] += handle(msg.topic, msg.payload) if handle else 1
        handled[2] = now

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = job.session_expiry_s
    props.ReceiveMaximum = _RECEIVE_MAXIMUM
    client.connect(
        target.host, target.port, clean_start=job.session_expiry_s == 0, properties=props
    )
    client.loop_start()
    while not stop.wait(0.05):
        shared[:] = handled
    client.disconnect()
    client.loop_stop()
    shared[:] = handled


def _subscribe_lean(job: SubscriberJob, shared: Any, ready: EventType, stop: EventType) -> None:
    """The ingest's receive client, counting and acknowledging each read's messages at once."""
    from weijian.ingest.subscriber import Delivery, MqttSubscriber, SessionOptions

    target = MqttTarget(job.broker_url)
    scheme = "mqtts" if target.tls else "mqtt"
    creds = MqttTarget(
        f"{scheme}://{quote(job.username)}:{quote(job.password)}@{target.host}:{target.port}"
    )
    handled = [0, 0.0, 0.0]

    def on_delivery(delivery: Delivery) -> None:
        now = time.monotonic()
        if not handled[1]:
            handled[1] = now
        handled[0] += len(delivery.ids)
        handled[2] = now
        sub.ack(delivery.connection, delivery.ids)

    options = SessionOptions(
        client_id=job.client_id,
        topic_filters=(job.topic_filter,),
        # The lean client always resumes a session; 60 s when the job wants none.
        session_expiry_s=job.session_expiry_s or 60,
        receive_maximum=_RECEIVE_MAXIMUM,
    )
    sub = MqttSubscriber(creds, options, on_delivery=on_delivery)
    sub.start()
    while not stop.wait(0.05):
        if sub.connected.is_set():
            ready.set()
        shared[:] = handled
    sub.stop()
    shared[:] = handled


def _naive_handler(job: SubscriberJob) -> Any:
    """Decode a message as the ingest does and INSERT its readings at once, in autocommit."""
    from datetime import UTC, datetime, timedelta

    from weijian.bench.repository import insert_message
    from weijian.devices.kinds import DeviceKind
    from weijian.ingest.decode import Rejected, decode, parse_topic

    assert job.database_url is not None
    conn = psycopg.connect(job.database_url, autocommit=True)
    max_offset = timedelta(days=30)

    def handle(topic: str, payload: bytes) -> int:
        now = datetime.now(UTC)
        try:
            decoded = decode(
                parse_topic(topic, job.topic_root),
                DeviceKind.DISH_MACHINE,
                payload,
                now,
                max_offset,
            )
        except Rejected:
            return 0
        rows = [(r.ts, r.device_id, r.metric, r.value, r.seq or 0, now) for r in decoded.readings]
        insert_message(conn=conn, rows=rows)
        return len(rows)

    return handle


def _context() -> Any:
    """Children forked from a single-threaded server that imported paho once: a fresh process
    in milliseconds instead of a second of imports per subscriber."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(
        ["weijian.bench.processes", "weijian.mqtt", "paho.mqtt.client", "weijian.ingest.subscriber"]
    )
    return ctx


class Subscriber:
    """A bare subscriber in a child process; `count` is what it has handled so far."""

    def __init__(self, job: SubscriberJob) -> None:
        ctx = _context()
        self._shared = ctx.Array("d", 3, lock=False)
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_subscribe,
            args=(job, self._shared, self._ready, self._stop),
            name=f"bench-{job.client_id}",
            daemon=True,
        )

    @property
    def count(self) -> int:
        return int(self._shared[0])

    def busy_rate(self) -> float:
        """Messages/s from its first message to its last."""
        count, first, last = self._shared[:]
        return (count - 1) / (last - first) if count > 1 and last > first else 0.0

    def start(self, timeout: float = 30.0) -> None:
        self._proc.start()
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.05):
            if not self._proc.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise BenchError(
                    f"a bare subscriber did not subscribe (exit code {self._proc.exitcode})"
                )

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)


def wait_until(
    check: Callable[[], bool],
    timeout: float,
    interval: float = 0.1,
    stalled: Callable[[], object] | None = None,
    stall_s: float = 15.0,
) -> bool:
    """Poll `check()` until it is true, `timeout` seconds passed, or `stalled()` (a progress
    value) has not changed for `stall_s` seconds."""
    deadline = time.monotonic() + timeout
    progress, moved = (stalled() if stalled else None), time.monotonic()
    while True:
        if check():
            return True
        now = time.monotonic()
        if stalled is not None:
            value = stalled()
            if value != progress:
                progress, moved = value, now
            elif now - moved > stall_s:
                return False
        if now > deadline:
            return False
        time.sleep(interval)
