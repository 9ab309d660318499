"""The command line: JSON output, one-line errors, non-zero exits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from weijian.config import Settings


def weijian(settings: Settings | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIJIAN_")}
    if settings is not None:
        env["WEIJIAN_DATABASE_URL"] = settings.database_url
        env["WEIJIAN_MQTT_TOPIC_ROOT"] = settings.mqtt_topic_root
    return subprocess.run(
        [sys.executable, "-m", "weijian.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_sites_add_and_list(settings: Settings) -> None:
    out = weijian(
        settings,
        "sites",
        "add",
        "--name",
        "城东餐具消毒中心",
        "--kind",
        "disinfection_plant",
        "--district",
        "城东区",
        "--phone",
        "13800000000",
        "--lat",
        "35.4",
        "--lon",
        "116.6",
    )
    assert out.returncode == 0, out.stderr
    site = json.loads(out.stdout)
    assert site["name"] == "城东餐具消毒中心"
    assert site["phones"] == ["13800000000"]
    listed = json.loads(weijian(settings, "sites", "list").stdout)
    assert [s["id"] for s in listed] == [site["id"]]


def test_users_add_never_prints_the_password(settings: Settings) -> None:
    out = weijian(
        settings,
        "users",
        "add",
        "--role",
        "inspector",
        "--name",
        "李娜",
        "--username",
        "lina",
        "--password",
        "s3cret-pass",
        "--district",
        "城东区",
        "--phone",
        "13900000001",
    )
    assert out.returncode == 0, out.stderr
    assert "s3cret-pass" not in out.stdout
    assert json.loads(out.stdout)["role"] == "inspector"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            (
                "sites",
                "add",
                "--name",
                "x",
                "--kind",
                "bakery",
                "--district",
                "d",
                "--phone",
                "138",
            ),
            "error: kind: Input should be",
        ),
        (
            ("devices", "add", "--site", "nowhere", "--kind", "toaster"),
            "error: unknown device kind 'toaster'",
        ),
        (
            (
                "users",
                "add",
                "--role",
                "inspector",
                "--name",
                "x",
                "--username",
                "xx",
                "--password",
                "longenough",
            ),
            "needs a district",
        ),
        (
            (
                "users",
                "add",
                "--role",
                "admin",
                "--name",
                "x",
                "--username",
                "xx",
                "--password",
                "short",
            ),
            "error: password",
        ),
    ],
)
def test_mistakes_are_one_line_errors(
    settings: Settings, args: tuple[str, ...], message: str
) -> None:
    out = weijian(settings, *args)
    assert out.returncode == 1
    assert message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_usage_error_exits_2() -> None:
    out = weijian(None, "sites", "add", "--name", "x")
    assert out.returncode == 2
    assert "Missing option" in out.stderr


def test_unreachable_database_is_one_line() -> None:
    env_settings = Settings(
        database_url="postgresql://postgres@127.0.0.1:1/nowhere", _env_file=None
    )
    out = weijian(env_settings, "sites", "list")
    assert out.returncode == 1
    assert out.stderr.startswith("error: database unavailable")
    assert len(out.stderr.strip().splitlines()) == 1


def test_eval_prints_overall_and_per_scenario_scores_and_reports_progress(
    settings: Settings, tmp_path: Path
) -> None:
    scenario = tmp_path / "tiny.yaml"
    scenario.write_text(
        "name: tiny\nseed: 3\nstart: 2026-11-23T09:00:00+08:00\nduration: 2h\n"
        "sites:\n  - {key: plant-t, name: 甲, kind: disinfection_plant, district: 东城区,"
        ' shifts: ["09:00-16:00"], devices: [{key: steam-1, kind: steam_cabinet}]}\n'
        "faults:\n  - {type: short_hold, at: 20m, site: plant-t, device: steam-1}\n",
        encoding="utf-8",
    )
    out = weijian(settings, "eval", str(scenario), "--scan", "120", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["overall"]["tp"] == 1
    (run,) = report["scenarios"]
    assert run["scenario"] == "tiny"
    assert run["overall"] == report["overall"]
    assert "eval tiny: 50% of 2 h simulated" in out.stderr
    assert "eval tiny: done in" in out.stderr


def _eval_databases(settings: Settings) -> set[str]:
    import psycopg

    admin = settings.database_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'weijian_eval_%'"
        ).fetchall()
    return {str(r[0]) for r in rows}


def test_a_killed_eval_drops_its_database(settings: Settings, tmp_path: Path) -> None:
    import signal

    scenario = tmp_path / "long.yaml"
    scenario.write_text(
        "name: long\nseed: 3\nstart: 2026-11-23T09:00:00+08:00\nduration: 6h\nsites:\n"
        "  - {key: plant-k, name: 乙, kind: disinfection_plant, district: 东城区}\n",
        encoding="utf-8",
    )
    before = _eval_databases(settings)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WEIJIAN_")}
    env["WEIJIAN_DATABASE_URL"] = settings.database_url
    proc = subprocess.Popen(
        [sys.executable, "-m", "weijian.cli", "eval", str(scenario), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        # The first progress line: the run is under way (warnings may come before it).
        line = ""
        for _ in range(50):
            line = proc.stderr.readline()
            if line.startswith("eval long:") or not line:
                break
        assert "eval long: 10% of 6 h simulated" in line
        assert _eval_databases(settings) - before
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 130
    finally:
        proc.kill()
        proc.communicate()
    assert not _eval_databases(settings) - before


def test_eval_runs_scenarios_in_parallel_and_reports_them_in_order(
    settings: Settings, tmp_path: Path
) -> None:
    for name, fault in (("a-faulty", "short_hold"), ("b-clean", None)):
        site = f"plant-{name[0]}"
        faults = f"faults:\n  - {{type: {fault}, at: 20m, site: {site}, device: steam-1}}\n"
        (tmp_path / f"{name}.yaml").write_text(
            f"name: {name}\nseed: 5\nstart: 2026-11-23T09:00:00+08:00\nduration: 90m\n"
            f"sites:\n  - {{key: {site}, name: 丙, kind: disinfection_plant,"
            ' district: 东城区, shifts: ["09:00-16:00"],'
            " devices: [{key: steam-1, kind: steam_cabinet}]}\n" + (faults if fault else ""),
            encoding="utf-8",
        )
    saved = tmp_path / "results"
    out = weijian(
        settings, "eval", str(tmp_path), "--scan", "120", "--jobs", "2", "--json",
        "--save", str(saved),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert [r["scenario"] for r in report["scenarios"]] == ["a-faulty", "b-clean"]
    assert report["overall"]["tp"] == 1
    assert report["scenarios"][1]["false_alerts_per_1000_device_days"] == 0.0
    assert out.stderr.count("done in") == 2
    # Each scenario was also written on its own as it finished, with what it missed and raised.
    faulty = json.loads((saved / "a-faulty.json").read_text(encoding="utf-8"))
    assert faulty["overall"] == report["scenarios"][0]["overall"]
    assert faulty["false_negatives"] == []
    assert faulty["step_s"] == 10
    clean = json.loads((saved / "b-clean.json").read_text(encoding="utf-8"))
    assert clean["false_positives"] == []
    assert clean["labels"] == 0
    assert out.stderr.count("saved ") == 2


def test_eval_refuses_a_results_folder_it_cannot_write(settings: Settings, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    out = weijian(settings, "eval", "scenarios/demo.yaml", "--save", str(blocker / "sub"))
    assert out.returncode != 0
    assert out.stderr.startswith("error: cannot write results to")


@pytest.mark.parametrize(
    ("shard", "message"),
    [
        ("2/2", "shard index 2 is outside 0..1"),
        ("one/2", "expected a shard as I/N (0 <= I < N), got 'one/2'"),
    ],
)
def test_detect_refuses_a_shard_that_is_not_one(
    settings: Settings, shard: str, message: str
) -> None:
    out = weijian(settings, "detect", "--shard", shard)
    assert out.returncode != 0
    assert out.stderr.strip() == f"error: --shard: {message}"
    assert len(out.stderr.strip().splitlines()) == 1
