"""`weijian eval`: labelled scenarios through the real platform, scored against ground truth.

Each scenario gets its own database and topic root. The simulator publishes each step over
the real broker, the real ingest commits it (its clock is the simulated clock), and once
everything published has been committed the live detection loop (`alerts/jobs.py`) runs at
the step's simulated time: a stream round for the devices whose data ingest announced, as
the live loop does about 0.1 s after each commit, and a scheduled scan every `scan` of
simulated time (every site over its whole lookback every 15 min, as live). The alerts the
platform raised are then matched to the scenario's labels.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import multiprocessing
import multiprocessing.process
import multiprocessing.queues
import random
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psycopg
from psycopg import sql

import weijian
from weijian.alerts import repository as alerts_repo
from weijian.alerts.detectors import catalogue
from weijian.alerts.jobs import FULL_SCAN_INTERVAL_S, DetectionLoop
from weijian.clock import ManualClock
from weijian.config import Settings
from weijian.db.connection import connect, open_pool
from weijian.db.migrate import migrate
from weijian.ingest.repository import NOTIFY_CHANNEL
from weijian.ingest.worker import TelemetryIngestor
from weijian.signals import sigterm_interrupts
from weijian.simulator.engine import MessageSink, Simulation
from weijian.simulator.labels import Label
from weijian.simulator.matcher import AlertRecord, alerts_from_platform, device_days
from weijian.simulator.platform import RegistryProvisioner, platform_id
from weijian.simulator.publisher import MqttPublisher
from weijian.simulator.scenario import Scenario

log = logging.getLogger(__name__)

# How long to wait for ingest to commit a step before giving up on it.
COMMIT_TIMEOUT_S = 60.0
# How long a step waits for the announcements of what ingest committed (they follow the
# commit within milliseconds; the simulated devices' connections are not serviced meanwhile).
ANNOUNCE_TIMEOUT_S = 5.0
# Keepalive of the simulated devices' connections. They are served between steps only, and a
# round of detection (a full scan on a busy machine) can outlast 1.5 × the usual 60 s, after
# which the broker drops the connection (the likely cause of a run on a loaded machine failing
# "connection lost"). Presence in an evaluation comes from the simulated traffic and Last
# Wills, never from keepalive timeouts.
DEVICE_KEEPALIVE_S = 1800
# Without a terminal, a progress line per this share of the scenario.
PROGRESS_LINES = 10


def _span(duration: timedelta) -> str:
    hours = duration.total_seconds() / 3600
    return f"{hours / 24:g} d" if hours >= 24 else f"{hours:g} h"


@dataclass
class ScenarioResult:
    scenario: Scenario
    labels: list[Label]
    alerts: list[AlertRecord]
    messages: int
    wall_s: float
    detection_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.scenario.faults

    @property
    def device_days(self) -> float:
        return device_days(self.scenario)


_ONE_MESSAGE = frozenset({"publish", "connect", "disconnect_will"})


class CountingSink:
    """Counts what the simulator publishes, so the harness knows when ingest has it all."""

    def __init__(self, inner: MessageSink) -> None:
        self.inner = inner
        self.published = 0

    def send(self, messages: Sequence[Any]) -> None:
        self.inner.send(messages)
        # A connect publishes the retained online status; a disconnect with the Last Will has
        # the broker publish the offline status. Ingest receives each as one message (left
        # uncounted, the will put every later step one message short of waiting for ingest).
        self.published += sum(1 for m in messages if m.action in _ONE_MESSAGE)

    def close(self) -> None:
        self.inner.close()


def _database(base: str, name: str) -> str:
    return f"{base.rsplit('/', 1)[0]}/{name}"


def _admin_url(database_url: str) -> str:
    return _database(database_url, "postgres")


def drop_database(database_url: str) -> None:
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(_admin_url(database_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


class ScenarioEvaluation:
    """One scenario through broker, ingest, detectors and alerts on its own database."""

    def __init__(
        self,
        base: Settings,
        scenario: Scenario,
        *,
        step: timedelta,
        keep: bool = False,
        scan: timedelta | None = None,
        title: str | None = None,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.scenario = scenario
        self.title = title or scenario.name  # in progress lines
        # Publishing steps keep receive times close to device times (the clock-skew rule);
        # the detectors run every `scan` of simulated time, like the live scheduled scan.
        self.step = step
        self.scan = scan or step
        self._next_scan = scenario.start + self.scan
        self.keep = keep
        self.settings = base.model_copy(
            update={
                "database_url": _database(base.database_url, f"weijian_eval_{tag}"),
                "mqtt_topic_root": f"eval{tag}/weijian/v1",
                "mqtt_client_id": f"eval-{tag}",
                "mqtt_share_group": f"eval{tag}",
                "mqtt_session_expiry_s": 60,
                "inspection_seed": 1,
                # A step arrives as one burst and the harness waits for its commit: waiting
                # 50 ms for more messages would only add 50 ms to every step.
                "ingest_batch_wait_ms": 2,
            }
        )
        self.clock = ManualClock(scenario.start)
        self.detection_s = 0.0
        self._progress_at = (
            None if sys.stderr.isatty() else scenario.start + scenario.duration / PROGRESS_LINES
        )

    def run(self) -> ScenarioResult:
        started = time.monotonic()
        migrate(self.settings.database_url)
        try:
            return self._run(started)
        finally:
            if not self.keep:
                drop_database(self.settings.database_url)

    def _run(self, started: float) -> ScenarioResult:
        credentials = RegistryProvisioner(self.settings, own_credentials=False).provision(
            self.scenario
        )
        ingestor = TelemetryIngestor(self.settings, clock=self.clock)
        ingestor.start()
        if not ingestor.wait_connected(15):
            raise RuntimeError(f"ingest could not connect to {self.settings.mqtt.public_url}")
        time.sleep(0.3)  # the subscriptions are in place before anything is published
        sink = CountingSink(MqttPublisher(credentials, keepalive=DEVICE_KEEPALIVE_S))
        runner = asyncio.Runner()
        conn = runner.run(connect(self.settings.database_url))
        pool = runner.run(open_pool(self.settings.database_url, min_size=1, max_size=2))
        # What ingest announces on commit (earliest device time per device), as the live
        # detection loop hears it: the devices a stream round judges, and how far back.
        listener = psycopg.connect(self.settings.database_url, autocommit=True)
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}")
        loop = DetectionLoop(
            database_url=self.settings.database_url,
            pool=pool,
            detectors=catalogue(),
            clock=self.clock,
            rng=random.Random(1),
            sign="卫生监督所",
            # One site at a time, in the round's own task: the simulated clock stands still
            # while a step is judged, so overlapping gains nothing, and a SIGTERM (raised as
            # KeyboardInterrupt) lands where the cleanup that drops the database can follow.
            concurrency=1,
        )
        next_full = self.scenario.start

        heard = 0  # announcements taken in

        def on_step(sim_time: datetime) -> None:
            nonlocal next_full, heard
            self._await_commit(ingestor, sink.published)
            heard = _hear_all(listener, loop, heard, ingestor.stats.notifications)
            pending = loop.take_pending()
            self._report_progress(sim_time, started)
            t0 = time.monotonic()
            if pending:
                runner.run(loop.stream_round(pending))
            if sim_time >= self._next_scan or sim_time >= self.scenario.end:
                while self._next_scan <= sim_time:
                    self._next_scan += self.scan
                full = sim_time >= next_full
                if full:
                    next_full = sim_time + timedelta(seconds=FULL_SCAN_INTERVAL_S)
                runner.run(loop.scan_round(full=full))
            self.detection_s += time.monotonic() - t0

        try:
            simulation = Simulation(
                self.scenario,
                sink=sink,
                step=self.step,
                on_step=on_step,
                clock=self.clock,
                speed=None,
            )
            stats = simulation.run()
            rows = runner.run(alerts_repo.detections(conn=conn))
        finally:
            listener.close()
            runner.run(pool.close())
            runner.run(conn.close())
            runner.close()
            ingestor.stop()
        alerts = alerts_from_platform(rows, credentials, self.scenario.name)
        return ScenarioResult(
            self.scenario,
            simulation.labels,
            alerts,
            stats.messages,
            time.monotonic() - started,
            self.detection_s,
        )

    def _report_progress(self, sim_time: datetime, started: float) -> None:
        """`PROGRESS_LINES` lines on stderr over the run, for runs without a terminal (the
        simulator draws a progress bar when there is one)."""
        if self._progress_at is None or sim_time < self._progress_at:
            return
        self._progress_at += self.scenario.duration / PROGRESS_LINES
        done = (sim_time - self.scenario.start) / self.scenario.duration
        elapsed = time.monotonic() - started
        sys.stderr.write(
            f"eval {self.title}: {done:.0%} of {_span(self.scenario.duration)} simulated"
            f" in {elapsed:.0f} s (detection {self.detection_s:.0f} s)\n"
        )
        sys.stderr.flush()

    @staticmethod
    def _await_commit(ingestor: TelemetryIngestor, published: int) -> None:
        deadline = time.monotonic() + COMMIT_TIMEOUT_S
        while ingestor.stats.messages < published:
            if time.monotonic() > deadline:
                log.warning(
                    "ingest committed %d of %d messages in %.0f s; evaluating anyway",
                    ingestor.stats.messages,
                    published,
                    COMMIT_TIMEOUT_S,
                )
                return
            time.sleep(0.005)


def _hear_all(listener: psycopg.Connection[Any], loop: DetectionLoop, heard: int, sent: int) -> int:
    """Hand the loop every announcement of what is committed (`sent` so far, `heard` of them
    taken in before), not only those already delivered: the listener's backend may send them
    a moment after the commit, and what a step judges must not depend on when they arrive.
    Returns the new count heard."""
    deadline = time.monotonic() + ANNOUNCE_TIMEOUT_S
    while heard < sent and time.monotonic() < deadline:
        # (a packet may carry more than asked for: announcements of later commits, counted)
        for note in listener.notifies(timeout=0.5, stop_after=sent - heard):
            loop.heard(note.payload)
            heard += 1
    if heard < sent:
        log.warning(
            "%d ingest announcements not delivered in %.0f s; judging without them",
            sent - heard,
            ANNOUNCE_TIMEOUT_S,
        )
    return max(heard, sent)


@dataclass(frozen=True)
class _Job:
    """One scenario to evaluate, as handed to a worker process."""

    settings: Settings
    path: Path
    scenario: Scenario
    step: timedelta
    keep: bool
    scan: timedelta | None
    part: str = ""  # "2/3" when the scenario is evaluated in parts

    @property
    def title(self) -> str:
        return f"{self.scenario.name} (part {self.part})" if self.part else self.scenario.name

    @property
    def accounts(self) -> frozenset[str]:
        """The broker accounts the scenario's devices take over (their registry ids)."""
        return frozenset(
            platform_id(site.key, device.key)
            for site in self.scenario.sites
            for device in site.devices
        )

    def run(self) -> ScenarioResult:
        log.info("evaluating %s (%s)", self.path, self.title)
        result = ScenarioEvaluation(
            self.settings,
            self.scenario,
            step=self.step,
            keep=self.keep,
            scan=self.scan,
            title=self.title,
        ).run()
        sys.stderr.write(
            f"eval {self.title}: done in {result.wall_s:.0f} s — {result.messages}"
            f" messages, {len(result.labels)} labels, {len(result.alerts)} alert raises\n"
        )
        return result


@functools.cache
def code_digest() -> str:
    """SHA-256 of the platform's Python sources (paths and contents): results of one code."""
    root = Path(weijian.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


class PartStore:
    """Finished parts of scenarios evaluated in parts, one JSON file each in a folder, so a
    stopped run started again picks up where it stopped (a week of a city can span sessions
    or machines: each part is a scenario of its own sites, judged independently).

    A stored part is reused only for the same part of the same plan (its sites, faults,
    seed, duration), the same step and scan, and the same platform code (`code_digest`);
    anything else is evaluated afresh and the file replaced."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, job: _Job) -> Path:
        number, _, count = job.part.partition("/")
        return self.folder / f"{job.scenario.name}.part-{number}-of-{count}.json"

    @staticmethod
    def fingerprint(job: _Job) -> dict[str, Any]:
        # (the repr of the plain fields: pydantic's JSON of a fault's offset-or-instant warns)
        plan = hashlib.sha256(repr(job.scenario.model_dump()).encode()).hexdigest()
        return {
            "scenario": job.scenario.name,
            "part": job.part,
            "plan_sha256": plan,
            "step_s": job.step.total_seconds(),
            "scan_s": None if job.scan is None else job.scan.total_seconds(),
            "code_sha256": code_digest(),
        }

    def save(self, job: _Job, result: ScenarioResult) -> Path:
        out = self.path(job)
        data = {
            **self.fingerprint(job),
            "messages": result.messages,
            "wall_s": result.wall_s,
            "detection_s": result.detection_s,
            "notes": result.notes,
            "labels": [label.to_dict() for label in result.labels],
            "alerts": [alert.to_dict() for alert in result.alerts],
        }
        temporary = out.with_suffix(".tmp")
        temporary.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2) + b"\n")
        temporary.replace(out)  # a run stopped mid-write leaves no half a file
        return out

    def load(self, job: _Job) -> ScenarioResult | None:
        """The stored result of this part, or None (none stored, or stored for another plan,
        step, scan or code)."""
        try:
            data = orjson.loads(self.path(job).read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, orjson.JSONDecodeError) as exc:
            log.warning("ignoring stored part %s: %s", self.path(job), exc)
            return None
        expected = self.fingerprint(job)
        if {key: data.get(key) for key in expected} != expected:
            log.warning("stored part %s is of another run; evaluating it again", self.path(job))
            return None
        return ScenarioResult(
            job.scenario,
            [Label.from_dict(item) for item in data["labels"]],
            [AlertRecord.from_dict(item) for item in data["alerts"]],
            data["messages"],
            data["wall_s"],
            data["detection_s"],
            data["notes"],
        )


def evaluate_paths(
    base: Settings,
    scenarios: Sequence[tuple[Path, Scenario]],
    *,
    step: timedelta,
    keep: bool = False,
    scan: timedelta | None = None,
    jobs: int = 1,
    parts: int = 1,
    on_result: Callable[[ScenarioResult], None] | None = None,
    store: PartStore | None = None,
) -> list[ScenarioResult]:
    """Evaluate scenarios, each on its own database: one after the other, or `jobs` at a time
    in worker processes (results in the order given). With `parts` > 1 each scenario is
    evaluated as that many scenarios over disjoint sets of its sites (`split_sites`), and
    their results are merged into the scenario's.

    `on_result` sees each scenario as soon as it is done (all its parts), so a run stopped
    later keeps what finished. With a `store`, each part is kept as soon as it is done and a
    part already there is taken from it instead of evaluated again."""
    if jobs < 1:
        raise ValueError("jobs must be at least 1")
    todo: list[_Job] = []
    owner: list[int] = []  # the scenario of each job
    for index, (path, sc) in enumerate(scenarios):
        pieces = split_sites(sc, parts)
        for number, piece in enumerate(pieces, 1):
            part = f"{number}/{len(pieces)}" if len(pieces) > 1 else ""
            todo.append(_Job(base, path, piece, step, keep, scan, part))
            owner.append(index)
    pending: dict[int, list[ScenarioResult]] = {}
    merged: dict[int, ScenarioResult] = {}
    report = on_result or (lambda _result: None)

    def collect(job: int, result: ScenarioResult) -> None:
        index = owner[job]
        pending.setdefault(index, []).append(result)
        if len(pending[index]) == owner.count(index):
            merged[index] = merge_parts(scenarios[index][1], pending.pop(index))
            report(merged[index])

    def done(job: int, result: ScenarioResult) -> None:
        if store is not None and todo[job].part:
            where = store.save(todo[job], result)
            sys.stderr.write(f"eval {todo[job].title}: kept {where}\n")
        collect(job, result)

    def kept(job: _Job) -> ScenarioResult | None:
        if store is None or not job.part:
            return None
        result = store.load(job)
        if result is not None:
            sys.stderr.write(f"eval {job.title}: taken from {store.path(job)}\n")
        return result

    remaining: list[int] = []
    for number, job in enumerate(todo):
        stored = kept(job)
        if stored is None:
            remaining.append(number)
        else:
            collect(number, stored)
    if jobs == 1 or len(remaining) == 1:
        for number in remaining:
            done(number, todo[number].run())
    elif remaining:
        _evaluate_parallel(todo, remaining, jobs, done)
    return [merged[i] for i in range(len(scenarios))]


def split_sites(scenario: Scenario, parts: int) -> list[Scenario]:
    """The scenario as up to `parts` scenarios over disjoint sets of its sites, about equal in
    devices, each with its own sites' faults (under their ids in the whole scenario).

    A part plans and judges its sites exactly as the whole scenario does: each device's plan
    is seeded by the scenario's seed and its own site and device keys, and every detector
    judges one site (the behaviour models, one device). So a week of a city can use as many
    cores as it has parts."""
    if parts < 1:
        raise ValueError("parts must be at least 1")
    count = min(parts, len(scenario.sites))
    if count == 1:
        return [scenario]
    groups: list[set[str]] = [set() for _ in range(count)]
    load = [0] * count
    for site in sorted(scenario.sites, key=lambda s: len(s.devices), reverse=True):
        lightest = load.index(min(load))
        groups[lightest].add(site.key)
        load[lightest] += len(site.devices)
    return [
        scenario.model_copy(
            update={
                "sites": tuple(s for s in scenario.sites if s.key in keys),
                "faults": tuple(
                    fault.model_copy(update={"id": scenario.fault_id(i)})
                    for i, fault in enumerate(scenario.faults)
                    if fault.site in keys
                ),
            }
        )
        for keys in groups
    ]


def merge_parts(scenario: Scenario, results: Sequence[ScenarioResult]) -> ScenarioResult:
    """One result for a scenario evaluated in parts (its wall time: the slowest part's)."""
    if len(results) == 1:
        return results[0]
    return ScenarioResult(
        scenario,
        sorted((lb for r in results for lb in r.labels), key=lambda lb: lb.detectable_at),
        [alert for r in results for alert in r.alerts],
        sum(r.messages for r in results),
        max(r.wall_s for r in results),
        sum(r.detection_s for r in results),
        [note for r in results for note in r.notes],
    )


def _worker(
    index: int, job: _Job, out: multiprocessing.queues.Queue[tuple[int, ScenarioResult | str]]
) -> None:
    """A worker process: one scenario; SIGTERM still drops its database."""
    with sigterm_interrupts():
        try:
            out.put((index, job.run()))
        except KeyboardInterrupt:
            out.put((index, "interrupted"))
        except Exception as exc:
            log.exception("evaluating %s failed", job.path)
            out.put((index, f"{type(exc).__name__}: {exc}"))


def next_disjoint(
    waiting: Sequence[frozenset[str]], running: Sequence[frozenset[str]]
) -> int | None:
    """The first waiting scenario whose devices no running one has (None: none may start now).

    A device's broker account is named by its id alone, so a second scenario provisioning the
    same id takes the account over and the broker disconnects the first one's device."""
    busy = frozenset().union(*running)
    for index, accounts in enumerate(waiting):
        if not accounts & busy:
            return index
    return None


def _evaluate_parallel(
    todo: Sequence[_Job],
    chosen: Sequence[int],
    jobs: int,
    done: Callable[[int, ScenarioResult], None],
) -> None:
    """Run the `chosen` jobs `jobs` at a time; each result goes to `done(job index, result)`."""
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.queues.Queue[tuple[int, ScenarioResult | str]] = ctx.Queue()
    waiting = [(index, todo[index]) for index in chosen]
    running: dict[int, multiprocessing.process.BaseProcess] = {}
    try:
        while waiting or running:
            while len(running) < jobs:
                pick = next_disjoint(
                    [job.accounts for _, job in waiting],
                    [todo[i].accounts for i in running],
                )
                if pick is None:
                    break
                index, job = waiting.pop(pick)
                started = ctx.Process(
                    target=_worker, args=(index, job, out), name=f"eval-{job.title}"
                )
                started.start()
                running[index] = started
            index, outcome = out.get()
            running.pop(index).join()
            if isinstance(outcome, str):
                raise RuntimeError(f"scenario {todo[index].path}: {outcome}")
            done(index, outcome)
    finally:
        for proc in running.values():  # interrupted or failed: stop the others cleanly
            proc.terminate()
        for proc in running.values():
            proc.join(timeout=60)
