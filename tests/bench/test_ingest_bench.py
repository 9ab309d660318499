"""The ingest benchmark's machinery at a tiny scale (no speed is asserted), and its
exactly-once verification on hand-made data."""

from __future__ import annotations

import psycopg
import pytest

from weijian.bench import BenchConfig, run_ingest_bench
from weijian.bench import repository as repo
from weijian.bench.context import with_database
from weijian.config import get_settings

FIELDS = {
    "machine": {"cores", "python", "postgres", "timescaledb"},
    "sustained": {
        "readings_per_s",
        "messages_per_s",
        "published_messages_per_s",
        "offered_messages_per_s",
        "kept_up",
        "duration_s",
        "drain_s",
        "published",
        "stored_readings",
        "lost",
        "duplicates",
        "dead_letters",
        "cpu_during_load",
    },
    "latency": {"rate_msgs_per_s", "samples", "p50_ms", "p99_ms", "max_ms"},
    "ceilings": {
        "copy_rows_per_s",
        "ingest_path_rows_per_s",
        "bare_mqtt_msgs_per_s",
        "publisher_msgs_per_s",
    },
    "naive": {"readings_per_s"},
    "ratios": {
        "sustained_vs_copy",
        "sustained_vs_bare_mqtt",
        "sustained_vs_naive",
    },
    "backlog": {"messages", "drain_s", "drain_msgs_per_s", "max_rss_mb", "lost", "duplicates"},
}


def test_every_part_runs_reports_every_field_and_verification_catches_loss() -> None:
    settings = get_settings(_env_file=None)
    config = BenchConfig(
        devices=20,
        workers=1,
        duration_s=1.5,
        latency_duration_s=1.5,
        backlog=300,
        warmup_s=0.5,
        copy_rows=4000,
        bare_mqtt_s=0.2,
        naive_s=0.5,
        load_rate=1500,
        rate=1200,
        keep=True,
    )
    lines: list[str] = []
    report = run_ingest_bench(settings, config, lines.append)
    name = report["config"]["database"]
    admin = with_database(settings.database_url, "postgres")
    try:
        assert set(report) == {*FIELDS, "config"}
        for part, fields in FIELDS.items():
            assert fields <= set(report[part]), part
        sustained = report["sustained"]
        assert sustained["published"] > 0
        assert sustained["offered_messages_per_s"] == 1200
        assert isinstance(sustained["kept_up"], bool)
        assert sustained["stored_readings"] == 4 * sustained["published"]
        assert (sustained["lost"], sustained["duplicates"], sustained["dead_letters"]) == (0, 0, 0)
        assert report["latency"]["samples"] > 0
        assert (report["latency"]["lost"], report["latency"]["unseen"]) == (0, 0)
        backlog = report["backlog"]
        assert backlog["stored_readings"] == 4 * backlog["messages"] == 1200
        assert (backlog["lost"], backlog["duplicates"]) == (0, 0)
        assert backlog["max_rss_mb"] > 0
        assert any(line.startswith("sustained") for line in lines)
        _verification_catches_tampering(with_database(settings.database_url, name))
    finally:
        repo.drop_database(admin_url=admin, name=name)
    assert not repo.database_exists(admin_url=admin, name=name)


def _verification_catches_tampering(url: str) -> None:
    """On the backlog part's stored readings: one reading deleted (a lost message), one
    stored a second time under another device time, one message nobody published."""
    with psycopg.connect(url, autocommit=True) as conn:
        published = conn.execute(
            "SELECT DISTINCT device_id, seq FROM readings WHERE starts_with(device_id, 'bk-')"
        ).fetchall()
        assert len(published) == 300
        conn.execute(
            "DELETE FROM readings WHERE device_id = 'bk-00000' AND seq = 0 AND metric = 'running'"
        )
        conn.execute(
            "INSERT INTO readings SELECT ts + interval '1 microsecond', device_id, metric,"
            " value, seq, received_at FROM readings"
            " WHERE device_id = 'bk-00001' AND seq = 0 LIMIT 1"
        )
        conn.execute(
            "INSERT INTO readings SELECT ts, 'bk-99999', metric, value, seq, received_at"
            " FROM readings WHERE device_id = 'bk-00002' AND seq = 0"
        )
        check = repo.verify_exactly_once(
            conn=conn,
            device_prefix="bk-",
            expected=[(str(d), int(s)) for d, s in published],
            metrics=4,
        )
    assert (check.published, check.lost, check.duplicates, check.unexpected) == (300, 1, 1, 1)
    assert check.stored_readings == 1200 - 1 + 1 + 4


def test_unknown_part_and_latency_without_sustained_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown part"):
        BenchConfig(skip=frozenset({"warp"}))
    with pytest.raises(ValueError, match="skip latency too"):
        BenchConfig(skip=frozenset({"sustained"}))
