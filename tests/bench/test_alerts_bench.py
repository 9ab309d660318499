"""The alert-latency benchmark at a tiny scale: every probe raises its alert, the report has
every field, and the run leaves no database behind (no speed is asserted)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from weijian.bench import repository as repo
from weijian.bench.alerts import AlertBenchConfig, _free_port, run_alert_bench
from weijian.bench.context import with_database
from weijian.config import get_settings

FIELDS = {
    "machine": {"cores", "python", "postgres", "loadavg_at_start", "loadavg_at_end"},
    "config": {"sites", "duration_s", "probe_interval_s", "rule", "target_s", "database"},
    "probes": {"sent", "alerted", "missed"},
    "latency": {"p50_s", "p95_s", "p99_s", "max_s", "p99_vs_target", "stages_p50_p99_s"},
    "background": {"sites", "devices", "messages_per_s", "window_s"},
    "detector": {
        "evaluations",
        "by_trigger",
        "evaluation_s",
        "busy_fraction",
        "mean_evaluation_ms",
        "loop_held",
    },
    "cpu": {"seconds", "machine_busy_pct"},
    "startup": {"history_messages", "history_sent_s", "detection_caught_up_s"},
}


@pytest.mark.parametrize("detect_workers", [1, 2])
def test_every_probe_is_alerted_and_the_report_is_complete(detect_workers: int) -> None:
    # Two detection processes: the probes' sites are split between them (8 sites: both get
    # some but once in 128 runs), and /metrics sums both.
    settings = get_settings(_env_file=None)
    config = AlertBenchConfig(
        sites=8 if detect_workers > 1 else 2,
        duration_s=3.0,
        probe_interval_s=0.5,
        warmup_s=1.0,
        history_s=60.0,
        detect_workers=detect_workers,
    )
    lines: list[str] = []
    report = run_alert_bench(settings, config, lines.append)

    assert set(report) == set(FIELDS)
    for part, fields in FIELDS.items():
        assert fields <= set(report[part]), part
    probes = report["probes"]
    assert probes["sent"] >= 5
    assert probes["alerted"] == probes["sent"]
    assert probes["missed"] == 0
    assert report["latency"]["p99_s"] is not None
    assert set(report["latency"]["stages_p50_p99_s"]) == {"ingest", "to_evaluation", "evaluation"}
    assert report["background"]["devices"] == 5 * config.sites
    assert report["config"]["detect_workers"] == detect_workers
    assert sum(report["config"]["sites_per_shard"]) == config.sites
    assert report["detector"]["evaluations"] > 0
    assert set(report["detector"]["by_trigger"]) == {"stream", "scan", "full_scan"}
    assert any("probes alerted" in line for line in lines)
    admin = with_database(settings.database_url, "postgres")
    assert not repo.database_exists(admin_url=admin, name=report["config"]["database"])


def test_the_api_port_is_free_and_outside_the_ephemeral_range() -> None:
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(20):
        port = _free_port()
        assert port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free
