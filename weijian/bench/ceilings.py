"""What bounds the ingest on this machine: the database's COPY rate (straight, and through the
ingest's own write path), a bare MQTT subscriber's rate, and the naive one-INSERT-per-message
baseline the ingest is compared with."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from weijian.bench import repository as repo
from weijian.bench.context import METRICS, NAIVE, SUSTAINED, BenchContext
from weijian.bench.probe import Sampler
from weijian.bench.processes import Subscriber, SubscriberJob, wait_until
from weijian.ingest import repository as ingest_repo
from weijian.telemetry import Reading


def measure(ctx: BenchContext) -> dict[str, Any]:
    """All ceilings, one after the other, with nothing else of ours running."""
    copy_rate = copy_ceiling(ctx)
    path_rate = ingest_path_ceiling(ctx)
    bare, publisher = bare_mqtt(ctx, subscribers=1)
    paho, paho_publisher = bare_mqtt(ctx, subscribers=1, client="paho")
    shared, shared_publisher = (
        bare_mqtt(ctx, subscribers=ctx.config.workers) if ctx.config.workers > 1 else (None, None)
    )
    drain = bare_mqtt_drain(ctx)
    paho_drain = bare_mqtt_drain(ctx, client="paho")
    return {
        "copy_rows_per_s": round(copy_rate),
        "ingest_path_rows_per_s": round(path_rate),
        "bare_mqtt_client": "lean",
        "bare_mqtt_msgs_per_s": round(bare),
        "publisher_msgs_per_s": round(publisher),
        "bare_mqtt_paho_msgs_per_s": round(paho),
        "paho_publisher_msgs_per_s": round(paho_publisher),
        "bare_mqtt_shared_subscribers": ctx.config.workers,
        "bare_mqtt_shared_msgs_per_s": None if shared is None else round(shared),
        "shared_publisher_msgs_per_s": None
        if shared_publisher is None
        else round(shared_publisher),
        "bare_mqtt_drain_msgs_per_s": round(drain),
        "bare_mqtt_drain_paho_msgs_per_s": round(paho_drain),
        "copy_rows": ctx.config.copy_rows,
        "ingest_path_batch_readings": _batch_readings(ctx),
    }


def _batch_readings(ctx: BenchContext) -> int:
    return ctx.settings.ingest_batch_max * len(METRICS)


def _grid(ctx: BenchContext, rows: int) -> list[tuple[int, str, str, int]]:
    """(round, device, metric, ms offset) for `rows` distinct readings of the load's devices:
    each round gives every device one metric; four rounds share one device time."""
    devices = ctx.ids[SUSTAINED]
    out = []
    for i in range(rows):
        k, d = divmod(i, len(devices))
        out.append((k, devices[d], METRICS[k % len(METRICS)], k // len(METRICS)))
    return out


def copy_ceiling(ctx: BenchContext) -> float:
    """Rows/s of one binary COPY of `copy_rows` readings straight into the hypertable."""
    rows = ctx.config.copy_rows
    ctx.progress(f"ceilings: binary COPY of {rows:,} readings into readings")
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    now = datetime.now(UTC)
    times: dict[int, datetime] = {}
    data = [
        (times.setdefault(ms, base + timedelta(milliseconds=ms)), dev, metric, 20.0, k, now)
        for k, dev, metric, ms in _grid(ctx, rows)
    ]
    with ctx.connect() as conn:
        started = time.perf_counter()
        repo.copy_readings(conn=conn, rows=data)
        elapsed = time.perf_counter() - started
    rate = rows / elapsed
    ctx.progress(f"ceilings: COPY {rate:,.0f} rows/s")
    return rate


def ingest_path_ceiling(ctx: BenchContext) -> float:
    """Rows/s through the ingest's own writer (staging COPY + INSERT … ON CONFLICT, presence,
    notify), in batches as large as the ingest's largest."""
    rows, batch = ctx.config.copy_rows, _batch_readings(ctx)
    ctx.progress(f"ceilings: ingest write path, {rows:,} readings in batches of {batch:,}")
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
    now = datetime.now(UTC)
    times: dict[int, datetime] = {}
    readings = [
        Reading(times.setdefault(ms, base + timedelta(milliseconds=ms)), dev, metric, 20.0, k, now)
        for k, dev, metric, ms in _grid(ctx, rows)
    ]
    batches = [readings[i : i + batch] for i in range(0, len(readings), batch)]
    presence = [_presence(part, now) for part in batches]
    with ctx.connect() as conn:
        conn.autocommit = False
        ingest_repo.prepare(conn)
        started = time.perf_counter()
        for part, seen in zip(batches, presence, strict=True):
            ingest_repo.write_batch(conn, readings=part, events=[], dead=[], presence=seen)
        elapsed = time.perf_counter() - started
    rate = rows / elapsed
    ctx.progress(f"ceilings: ingest write path {rate:,.0f} rows/s")
    return rate


def _presence(readings: list[Reading], now: datetime) -> list[ingest_repo.Presence]:
    """One presence update per device of a batch, as the ingest sends."""
    latest: dict[str, Reading] = {}
    for r in readings:
        latest[r.device_id] = r
    return [
        ingest_repo.Presence(
            device_id=d,
            last_seen_at=now,
            last_seq=r.seq,
            online=None,
            status_at=None,
            earliest=r.ts,
        )
        for d, r in latest.items()
    ]


def bare_mqtt(ctx: BenchContext, *, subscribers: int, client: str = "lean") -> tuple[float, float]:
    """Messages/s that `subscribers` bare clients (QoS 1, every message acknowledged at once,
    one process each, one shared subscription when several) take while the load publishes at
    full speed; and what the publisher achieved meanwhile. `client`: the ingest's own receive
    client ("lean") or a stock paho client ("paho", the reference)."""
    root = f"bench{ctx.tag}/bare{subscribers}{client}/v1"
    plain = f"{root}/+/telemetry"
    topic_filter = plain if subscribers == 1 else f"$share/bench{ctx.tag}/{plain}"
    ctx.progress(
        f"ceilings: {subscribers} bare {client} MQTT subscriber(s) counting for"
        f" {ctx.config.bare_mqtt_s:g} s"
    )
    ids = [f"bench-{ctx.tag}-bare{subscribers}{client}-{i}" for i in range(subscribers)]
    ctx.client_ids.extend(ids)
    subs = [Subscriber(_job(ctx, topic_filter, i, client)) for i in ids]
    rate, publisher = _while_loading(ctx, subs, root, ctx.config.bare_mqtt_s, ctx.ids[SUSTAINED])
    ctx.progress(
        f"ceilings: bare {client} MQTT {rate:,.0f} msg/s (publisher {publisher:,.0f} msg/s)"
    )
    return rate, publisher


def bare_mqtt_drain(ctx: BenchContext, client: str = "lean") -> float:
    """Messages/s one bare subscriber takes from a queue built while it was away, with no
    publisher sharing the cores (compare with the ingest's drain rate)."""
    root = f"bench{ctx.tag}/drain{client}/v1"
    client_id = f"bench-{ctx.tag}-drain-{client}"
    ctx.client_ids.append(client_id)
    job = SubscriberJob(
        **{
            **_job(ctx, f"{root}/+/telemetry", client_id, client).__dict__,
            "session_expiry_s": 1800,
        }
    )
    messages = max(1000, round(ctx.config.bare_mqtt_s * 20_000))
    away = Subscriber(job)
    away.start()
    away.stop()
    ctx.progress(f"ceilings: queueing {messages:,} messages for a bare {client} subscriber")
    ctx.load(ctx.ids[SUSTAINED], rate=0, root=root).run(messages=messages, timeout_s=600)
    back = Subscriber(job)
    try:
        back.start()
        wait_until(lambda: back.count >= messages, timeout=600, stalled=lambda: back.count)
    finally:
        back.stop()
    rate = back.busy_rate()
    ctx.progress(f"ceilings: bare {client} MQTT drain {rate:,.0f} msg/s")
    return rate


def naive(ctx: BenchContext) -> dict[str, Any]:
    """One INSERT per message in autocommit from a paho subscriber, at full publish speed."""
    root = f"bench{ctx.tag}/naive/v1"
    ctx.progress(f"naive: one INSERT per message for {ctx.config.naive_s:g} s")
    job = _job(ctx, f"{root}/+/telemetry", f"bench-{ctx.tag}-naive")
    job = SubscriberJob(**{**job.__dict__, "database_url": ctx.url, "topic_root": root})
    rate, publisher = _while_loading(
        ctx, [Subscriber(job)], root, ctx.config.naive_s, ctx.ids[NAIVE]
    )
    ctx.progress(f"naive: {rate:,.0f} readings/s")
    return {"readings_per_s": round(rate), "publisher_msgs_per_s": round(publisher)}


def _job(
    ctx: BenchContext, topic_filter: str, client_id: str, client: str = "paho"
) -> SubscriberJob:
    return SubscriberJob(
        broker_url=ctx.target.public_url,
        username=ctx.username,
        password=ctx.password,
        topic_filter=topic_filter,
        client_id=client_id,
        client=client,
    )


def _while_loading(
    ctx: BenchContext, subs: list[Subscriber], root: str, seconds: float, device_ids: list[str]
) -> tuple[float, float]:
    """Start the subscribers, publish at full speed for `seconds`; their mean rate after a
    short warm-up, and the publisher's rate."""
    started: list[Subscriber] = []
    try:
        for sub in subs:
            sub.start()
            started.append(sub)
        sampler = Sampler(lambda: sum(s.count for s in subs), 0.25)
        sampler.start()
        t0 = time.monotonic()
        result = ctx.load(device_ids, rate=ctx.config.load_rate, root=root).run(
            duration_s=seconds, timeout_s=600
        )
        end = t0 + min(seconds, result.elapsed_s)
        time.sleep(0.3)  # one more sample after the end of the window
        sampler.stop()
        return sampler.rate(t0 + min(2.0, seconds / 4), end), result.rate
    finally:
        for sub in started:
            sub.stop()
