"""`weijian bench ingest`: sustained throughput, latency, ceilings, a naive baseline and a backlog
drain of the real ingest, in one run, verified exactly-once (docs/performance.md)."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from weijian.bench import ceilings, cpu
from weijian.bench import repository as repo
from weijian.bench.context import (
    BACKLOG,
    LATENCY,
    METRICS,
    PROBE_ID,
    SUSTAINED,
    BenchConfig,
    BenchContext,
    Progress,
)
from weijian.bench.probe import LatencyProbe, Sampler, percentile
from weijian.bench.processes import IngestProcess
from weijian.config import Settings
from weijian.signals import sigterm_interrupts
from weijian.simulator.load import LoadResult

_FAR = datetime(9999, 1, 1, tzinfo=UTC)
# Bucket of the committed-readings timeline in the report.
_STEP_S = 5.0
# Parts up to this many readings are counted exactly without waiting for the estimate.
_COUNT_AT_ONCE = 100_000
# An idle backend reports its last counts to the statistics only after 10 s (PostgreSQL 15).
_IDLE_FLUSH_S = 12.0
# Give up waiting for the ingest to catch up when the stored count has not moved for this long.
_STALL_S = 40.0
# An offered load is kept up with when what was left after publishing is committed this fast.
KEPT_UP_DRAIN_S = 1.0


def run_ingest_bench(settings: Settings, config: BenchConfig, progress: Progress) -> dict[str, Any]:
    """Run every part not skipped on a fresh database and topic root; the report as a dict."""
    ctx = BenchContext(settings, config, progress)
    report: dict[str, Any] = {}
    with sigterm_interrupts(), ctx.running():
        progress(f"database {ctx.database}, topics {ctx.root}, {config.devices} devices")
        report["machine"] = ctx.machine()
        report["config"] = {
            **config.as_dict(),
            "ingest_batch_max": settings.ingest_batch_max,
            "ingest_batch_wait_ms": settings.ingest_batch_wait_ms,
            "metrics_per_message": len(METRICS),
            "database": ctx.database,
            "topic_root": ctx.root,
        }
        report["sustained"] = report["latency"] = None
        if config.runs("sustained"):
            client_id = f"bench-{ctx.tag}"
            ingest = ctx.ingest(client_id, config.workers)
            try:
                ingest.start()
                ctx.await_ingest(ingest, client_id, config.workers)
                progress(f"ingest up: {config.workers} worker(s), pid {ingest.pid}")
                report["sustained"] = sustained(ctx, ingest)
                if config.runs("latency"):
                    rate = 0.5 * report["sustained"]["messages_per_s"]
                    report["latency"] = latency(ctx, ingest, rate)
            finally:
                ingest.stop()
        report["backlog"] = backlog(ctx) if config.runs("backlog") else None
        report["ceilings"] = ceilings.measure(ctx) if config.runs("ceilings") else None
        report["naive"] = ceilings.naive(ctx) if config.runs("naive") else None
    report["ratios"] = _ratios(report)
    report["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return report


def sustained(ctx: BenchContext, ingest: IngestProcess) -> dict[str, Any]:
    """Publish for `duration_s`, at the offered `rate` or as fast as possible; the committed
    rate after a warm-up."""
    cfg = ctx.config
    pace = f"{cfg.rate:,.0f} msg/s" if cfg.rate else "full speed"
    ctx.progress(f"sustained: publishing at {pace} for {cfg.duration_s:g} s")
    with ctx.connect() as conn, ctx.connect() as sampler_conn:
        parties = _parties(sampler_conn, ingest)
        # CPU snapshots every second once publishing has stopped, to find the drain's end in.
        snaps: list[tuple[float, cpu.CpuSnapshot]] = []
        draining = threading.Event()

        def each() -> None:
            if draining.is_set():
                snaps.append((time.monotonic(), cpu.snapshot(parties)))

        sampler = Sampler(
            lambda: repo.readings_inserted(conn=sampler_conn),
            1.0,
            _reporter(ctx, "sustained", each),
        )
        sampler.start()
        cpu_before = cpu.snapshot(parties)
        wall0, t0 = datetime.now(UTC), time.monotonic()
        result = ctx.load(ctx.ids[SUSTAINED], rate=cfg.rate or cfg.load_rate).run(
            duration_s=cfg.duration_s, timeout_s=600
        )
        cpu_after = cpu.snapshot(parties)
        draining.set()
        end = t0 + min(cfg.duration_s, result.elapsed_s)
        warm = t0 + min(cfg.warmup_s, cfg.duration_s / 4)
        ctx.progress(
            f"sustained: published {result.sent:,} messages ({result.rate:,.0f}/s); draining"
        )
        expected = len(METRICS) * result.sent
        _wait_drained(ctx, sampler, expected, _counter(conn, SUSTAINED), ingest)
        sampler.stop()

        def wall(t: float) -> datetime:
            return wall0 + timedelta(seconds=t - t0)

        def received(start: float, until: float | None = None) -> int:
            stop = _FAR if until is None else wall(until)
            return repo.received_between(
                conn=conn, device_prefix=SUSTAINED, start=wall(start), end=stop
            )

        _first, last = repo.received_span(conn=conn, device_prefix=SUSTAINED)
        last_t = t0 + (last - wall0).total_seconds() if last else end
        in_window, in_load, after_load = received(warm, end), received(t0, end), received(end)
        timeline = repo.received_timeline(
            conn=conn,
            device_prefix=SUSTAINED,
            start=wall(t0),
            end=wall(last_t + _STEP_S),
            step_s=_STEP_S,
        )
        check = _verify(ctx, conn, SUSTAINED, result)
        dead = repo.dead_letter_count(conn=conn)
    by_received = in_window / (end - warm)
    drain_s = max(0.0, last_t - end)
    # The first snapshot a second after the last batch began: its commit is in.
    done = next((snap for t, snap in snaps if t >= last_t + 1.0), snaps[-1][1] if snaps else None)
    load_msgs, drain_msgs = in_load / len(METRICS), after_load / len(METRICS)
    report = {
        "readings_per_s": round(by_received),
        "messages_per_s": round(by_received / len(METRICS)),
        "published_messages_per_s": round(result.rate),
        "offered_messages_per_s": cfg.rate or None,
        # With an offered rate: the ingest committed what was left within a second of the
        # publisher stopping (it never fell more than a second behind).
        "kept_up": drain_s <= KEPT_UP_DRAIN_S if cfg.rate else None,
        "duration_s": cfg.duration_s,
        "window_s": round(end - warm, 2),
        "drain_s": round(drain_s, 2),
        "published": result.sent,
        "stored_readings": check.stored_readings,
        "lost": check.lost,
        "duplicates": check.duplicates,
        "unexpected": check.unexpected,
        "dead_letters": dead,
        "readings_per_s_polled": round(sampler.rate(warm, end)),
        "drain_readings_per_s": round(after_load / drain_s) if drain_s > 1 else None,
        "cpu_during_load": cpu.breakdown(
            cpu_before,
            cpu_after,
            {
                "ingest": load_msgs,
                "postgres": load_msgs,
                "mosquitto": result.sent,
                "load": result.sent,
            },
        ),
        "cpu_during_drain": cpu.breakdown(
            cpu_after, done, {"ingest": drain_msgs, "postgres": drain_msgs}
        )
        if done is not None and drain_s > 1
        else None,
        "timeline_5s_readings_per_s": [round(n / _STEP_S) for n in timeline],
    }
    ctx.progress(
        f"sustained: {report['readings_per_s']:,} readings/s committed "
        f"({report['messages_per_s']:,} msg/s), drain {report['drain_s']} s, "
        f"lost {check.lost}, duplicates {check.duplicates}"
    )
    return report


def latency(ctx: BenchContext, ingest: IngestProcess, rate: float) -> dict[str, Any]:
    """Publish→commit latency of a probe device while the load runs at `rate` messages/s."""
    cfg = ctx.config
    rate = max(1.0, rate)
    ctx.progress(
        f"latency: load at {rate:,.0f} msg/s for {cfg.latency_duration_s:g} s with a probe"
    )
    with ctx.connect() as conn, ctx.connect() as probe_conn:
        probe = LatencyProbe(
            ctx.probe_device(), conn=probe_conn, device_id=PROBE_ID, metric=METRICS[0]
        )
        # The probe's threads share the interpreter with the load generator: hand over often.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(0.001)
        try:
            probe.start()
            start_ns = time.time_ns()
            result = ctx.load(ctx.ids[LATENCY], rate=rate).run(
                duration_s=cfg.latency_duration_s, timeout_s=600
            )
            until_ns = min(time.time_ns(), start_ns + int(cfg.latency_duration_s * 1e9))
            probe.stop_publishing()
            ingest.check_alive()
            probe.wait_seen(60)
        finally:
            probe.close()
            sys.setswitchinterval(switch)
        ramp_ns = int(min(1.0, cfg.latency_duration_s / 4) * 1e9)
        values, unseen = probe.latencies(start_ns + ramp_ns, until_ns)
        sampler = Sampler(lambda: repo.readings_inserted(conn=conn), 0.5)
        sampler.start()
        _wait_drained(ctx, sampler, len(METRICS) * result.sent, _counter(conn, LATENCY), ingest)
        sampler.stop()
        check = _verify(ctx, conn, LATENCY, result)
    p50, p99, top = (percentile(values, q) for q in (50, 99, 100))
    report = {
        "rate_msgs_per_s": round(rate),
        "published_messages_per_s": round(result.rate),
        "samples": len(values),
        "unseen": unseen,
        "p50_ms": _ms(p50),
        "p99_ms": _ms(p99),
        "max_ms": _ms(top),
        "published": result.sent,
        "lost": check.lost,
        "duplicates": check.duplicates,
    }
    ctx.progress(
        f"latency: p50 {report['p50_ms']} ms, p99 {report['p99_ms']} ms, max {report['max_ms']} ms"
        f" over {len(values)} probes"
    )
    return report


def backlog(ctx: BenchContext) -> dict[str, Any]:
    """Queue `backlog` messages while a lone ingest worker is away, then time its drain and
    watch its memory (the broker's in-flight window should bound it)."""
    cfg = ctx.config
    client_id = f"bench-{ctx.tag}k"
    ingest = ctx.ingest(client_id, 1)
    try:
        ingest.start()
        ctx.await_ingest(ingest, client_id, 1)
        ingest.stop()
        ctx.progress(f"backlog: ingest stopped; queueing {cfg.backlog:,} messages for its session")
        result = ctx.load(ctx.ids[BACKLOG], rate=0).run(messages=cfg.backlog, timeout_s=1200)
        with ctx.connect() as conn, ctx.connect() as sampler_conn:
            rss: list[float] = []
            sampler = Sampler(
                lambda: repo.readings_inserted(conn=sampler_conn),
                0.5,
                _reporter(ctx, "backlog", lambda: rss.append(ingest.rss_mb())),
            )
            sampler.start()
            restarted = datetime.now(UTC)
            ingest.start()
            ctx.progress(f"backlog: ingest restarted (pid {ingest.pid}); draining")
            expected = len(METRICS) * result.sent
            _wait_drained(ctx, sampler, expected, _counter(conn, BACKLOG), ingest)
            rss.append(ingest.rss_mb())
            peak = ingest.peak_rss_mb()
            sampler.stop()
            ingest.stop()
            first, last = repo.received_span(conn=conn, device_prefix=BACKLOG)
            check = _verify(ctx, conn, BACKLOG, result)
            dead = repo.dead_letter_count(conn=conn)
    finally:
        ingest.stop()
    drain_s = (last - restarted).total_seconds() if last else None
    busy_s = (last - first).total_seconds() if first and last else None
    report = {
        "messages": result.sent,
        "published_messages_per_s": round(result.rate),
        "drain_s": None if drain_s is None else round(drain_s, 2),
        "drain_msgs_per_s": round(result.sent / drain_s) if drain_s else None,
        "first_batch_after_s": round((first - restarted).total_seconds(), 2) if first else None,
        "drain_msgs_per_s_after_first_batch": round(result.sent / busy_s) if busy_s else None,
        "max_rss_mb": round(max(rss), 1) if rss else None,
        "peak_rss_mb_vmhwm": round(peak, 1),
        "stored_readings": check.stored_readings,
        "lost": check.lost,
        "duplicates": check.duplicates,
        "dead_letters": dead,
    }
    ctx.progress(
        f"backlog: drained {result.sent:,} messages in {report['drain_s']} s, "
        f"max RSS {report['max_rss_mb']} MB, lost {check.lost}, duplicates {check.duplicates}"
    )
    return report


# -- helpers -----------------------------------------------------------------------------------


def _reporter(
    ctx: BenchContext, part: str, each: Callable[[], None]
) -> Callable[[float, float], None]:
    """A sampler callback: run `each` (a liveness check, a memory sample), print every 5 s."""
    state = {"t": 0.0, "v": 0.0, "start": 0.0}

    def report(t: float, value: float) -> None:
        each()
        if not state["start"]:
            state.update(t=t, v=value, start=t)
            return
        if t - state["t"] >= 5.0:
            rate = (value - state["v"]) / (t - state["t"])
            ctx.progress(f"{part}: {t - state['start']:5.0f} s  {rate:10,.0f} readings/s committed")
            state.update(t=t, v=value)

    return report


def _wait_drained(
    ctx: BenchContext,
    sampler: Sampler,
    expected: int,
    stored: Callable[[], int],
    ingest: IngestProcess,
) -> None:
    """Wait until `stored()` (an exact count, a scan) reaches `expected`. The sampled estimate
    says when to count: once it has grown by `expected`, or has not moved for longer than an
    idle backend takes to report. Gives up when nothing moves for a while; verification then
    says what is missing."""
    base = sampler.values[0]
    moved_at, last, counted_at, count = time.monotonic(), sampler.values[-1], 0.0, -1
    # A small part is counted at once; a large one only when the estimate says so.
    small = expected <= _COUNT_AT_ONCE
    while True:
        ingest.check_alive()
        now = time.monotonic()
        if sampler.values[-1] != last:
            moved_at, last = now, sampler.values[-1]
        due = small or last - base >= expected or now - moved_at > _IDLE_FLUSH_S
        if due and now - counted_at > (0.2 if small else 5.0):
            counted_at, previous, count = now, count, stored()
            if count >= expected:
                return
            if count != previous:
                moved_at = now
            elif now - moved_at > _STALL_S:
                ctx.progress(f"stored count stalled {expected - count:,} readings short")
                return
        time.sleep(0.1)


def _parties(conn: repo.Conn, ingest: IngestProcess) -> dict[str, Callable[[], list[int]]]:
    """Who uses the cores during a load: this process (the load generator), the ingest,
    PostgreSQL (this database's backends and the WAL writer) and the broker."""
    return {
        "load": lambda: [os.getpid()],
        "ingest": ingest.pids,
        "postgres": lambda: repo.server_pids(conn=conn),
        "mosquitto": lambda: cpu.pids_named("mosquitto"),
    }


def _counter(conn: repo.Conn, prefix: str) -> Callable[[], int]:
    return lambda: repo.readings_count(conn=conn, device_prefix=prefix)


def _verify(
    ctx: BenchContext, conn: repo.Conn, prefix: str, result: LoadResult
) -> repo.Verification:
    ids = result.device_ids
    pairs = ((ids[i], seq) for i, seq in zip(result.device_index, result.seq, strict=True))
    check = repo.verify_exactly_once(
        conn=conn, device_prefix=prefix, expected=pairs, metrics=len(METRICS)
    )
    if check.lost or check.duplicates or check.unexpected:
        ctx.progress(f"VERIFICATION FAILED for {prefix}*: {asdict(check)}")
    return check


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _ratios(report: dict[str, Any]) -> dict[str, float | None]:
    sustained_ = report.get("sustained") or {}
    ceiling = report.get("ceilings") or {}
    naive_ = report.get("naive") or {}
    return {
        "sustained_vs_copy": _ratio(
            sustained_.get("readings_per_s"), ceiling.get("copy_rows_per_s")
        ),
        "sustained_vs_ingest_path": _ratio(
            sustained_.get("readings_per_s"), ceiling.get("ingest_path_rows_per_s")
        ),
        "sustained_vs_bare_mqtt": _ratio(
            sustained_.get("messages_per_s"), ceiling.get("bare_mqtt_msgs_per_s")
        ),
        "drain_vs_bare_mqtt_drain": _ratio(
            (sustained_.get("drain_readings_per_s") or 0) / len(METRICS),
            ceiling.get("bare_mqtt_drain_msgs_per_s"),
        ),
        "sustained_vs_naive": _ratio(
            sustained_.get("readings_per_s"), naive_.get("readings_per_s")
        ),
    }
