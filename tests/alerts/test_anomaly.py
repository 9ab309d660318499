"""behaviour.anomaly: the streaming CSV scorer and the per-device model, on synthetic data."""

from __future__ import annotations

import io
import math
import random
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from weijian.alerts.anomaly import (
    AnomalyDetector,
    DeviceModel,
    RobustScorer,
    features,
    fit_models,
    readings_frame,
    score_csv,
)
from weijian.alerts.detectors import catalogue
from weijian.alerts.models import DeviceData, SiteData
from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import DeviceKind, SiteKind
from weijian.telemetry import Reading

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def csv_text(values: list[float], header: bool = True) -> str:
    lines = ["timestamp,value"] if header else []
    lines += [f"{(T0 + timedelta(minutes=i)).isoformat()},{v}" for i, v in enumerate(values)]
    return "\n".join(lines) + "\n"


def scored(text: str, **options: float) -> list[list[str]]:
    out = io.StringIO()
    score_csv(io.StringIO(text), out, **options)  # type: ignore[arg-type]
    return [line.split(",") for line in out.getvalue().splitlines()]


def noisy(count: int, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [round(20 + rng.gauss(0, 0.5), 3) for _ in range(count)]


def test_score_csv_writes_one_scored_row_per_input_row() -> None:
    values = noisy(300)
    values[250] = 35.0
    out = io.StringIO()
    written = score_csv(io.StringIO(csv_text(values)), out)
    rows = [line.split(",") for line in out.getvalue().splitlines()]
    assert written == 300
    assert rows[0] == ["timestamp", "value", "score", "flag"]
    assert rows[251][1] == "35.0"
    assert rows[251][3] == "1"
    assert float(rows[251][2]) > 0.85  # |M| ≈ 30
    scores = [float(r[2]) for r in rows[1:]]
    assert all(0.0 <= s < 1.0 for s in scores)
    false_alarms = sum(int(r[3]) for r in rows[1:]) - 1
    assert false_alarms <= 3  # about 1 % of normal rows


def test_the_header_is_optional() -> None:
    values = noisy(40)
    assert scored(csv_text(values, header=False)) == scored(csv_text(values))


def test_scores_use_only_earlier_rows() -> None:
    values = noisy(200)
    changed = [*values[:150], *[1000.0] * 50]
    assert scored(csv_text(values))[:151] == scored(csv_text(changed))[:151]


def test_warm_up_rows_score_zero() -> None:
    rows = scored(csv_text([1.0, 100.0, 1.0, 5000.0]))
    assert [r[2:] for r in rows[1:]] == [["0.000000", "0"]] * 4


def test_bad_rows_raise_with_their_line_number() -> None:
    good = csv_text(noisy(5))
    with pytest.raises(ValueError, match="line 7: value 'abc' is not a finite number"):
        scored(good + "2026-11-02T00:00:00+00:00,abc\n")
    with pytest.raises(ValueError, match="line 8: expected 2 fields"):
        scored(good + "\n2026-11-02T00:00:00+00:00,1,2\n")
    with pytest.raises(ValueError, match="line 1: timestamp 'yesterday'"):
        scored("yesterday,1.0\n")
    with pytest.raises(ValueError, match="line 2: value 'nan'"):
        scored("timestamp,value\n1795420800000,nan\n")


def test_epoch_timestamps_and_blank_lines_are_fine() -> None:
    rows = scored("1795420800000,1.5\n\n1795420860000,1.6\n")
    assert [r[:2] for r in rows[1:]] == [["1795420800000", "1.5"], ["1795420860000", "1.6"]]


def test_a_flat_window_flags_any_change() -> None:
    scorer = RobustScorer(window=10)
    for _ in range(20):
        assert scorer.score(5.0) == 0.0
    assert scorer.score(5.1) == 1.0


def test_score_csv_scores_a_long_series_row_for_row() -> None:
    # Speed is measured outside the tests (docs/performance.md); here: nothing is lost.
    text = csv_text(noisy(20000))
    out = io.StringIO()
    assert score_csv(io.StringIO(text), out) == 20000
    assert len(out.getvalue().splitlines()) == 20001


def test_threshold_must_be_a_probability() -> None:
    with pytest.raises(ValueError, match="threshold"):
        score_csv(io.StringIO(""), io.StringIO(), threshold=1.5)


# --- per-device model ----------------------------------------------------------------------


def store_history(days: int, seed: int = 3, start: datetime = T0) -> list[Reading]:
    """A waste store: temperature with a daily cycle, humidity, door opened at hand-over times."""
    rng = np.random.default_rng(seed)
    readings: list[Reading] = []
    for i in range(days * 24 * 12):  # every 5 min
        ts = start + timedelta(minutes=5 * i)
        hour = (ts.hour + 8) % 24 + ts.minute / 60
        temp = 16 + 2 * math.sin(2 * math.pi * (hour - 9) / 24) + rng.normal(0, 0.15)
        humidity = 55 + rng.normal(0, 1.0)
        door = 1.0 if hour in (9.0, 9.0833) else 0.0
        for metric, value in (("temp_c", temp), ("humidity_pct", humidity), ("door_open", door)):
            readings.append(Reading(ts, "env", metric, round(float(value), 2), i, ts))
    return readings


def test_features_include_rates_and_hour_of_day() -> None:
    table = features(DeviceKind.WASTE_STORE_ENV, readings_frame(store_history(1)))
    assert {"temp_c", "temp_c_per_s", "humidity_pct", "door_open", "hour_sin", "hour_cos"} <= set(
        table.columns
    )
    assert "door_open_per_s" not in table.columns  # flags have no rate


def test_line_meter_features_use_per_piece_consumption() -> None:
    readings = []
    total = 0.0
    for i in range(100):
        ts = T0 + timedelta(seconds=30 * i)
        total = total + 10 if i != 50 else 4.0  # a counter reset at i = 50
        for metric, value in (("power_kw", 20.0), ("water_l_min", 30.0), ("packed_total", total)):
            readings.append(Reading(ts, "m", metric, value))
    table = features(DeviceKind.LINE_METER, readings_frame(readings))
    assert {"kw_per_piece", "water_per_piece", "packed_total_per_min"} <= set(table.columns)
    assert "packed_total" not in table.columns  # a counter's level says nothing
    assert table["packed_total_per_min"].min() >= 0


def test_model_flags_a_clear_anomaly_and_little_else() -> None:
    model = DeviceModel.fit(DeviceKind.WASTE_STORE_ENV, readings_frame(store_history(7)))
    recent = store_history(1, seed=11, start=T0 + timedelta(days=7))
    normal = model.score(readings_frame(recent))
    assert normal["flag"].mean() < 0.05
    # Cooling fails at night: 35 °C and the door open at 03:00.
    hot_at = T0 + timedelta(days=7, hours=19)
    strange = [
        Reading(
            r.ts,
            r.device_id,
            r.metric,
            35.0 if r.metric == "temp_c" else 1.0 if r.metric == "door_open" else r.value,
        )
        if hot_at <= r.ts < hot_at + timedelta(minutes=30)
        else r
        for r in recent
    ]
    result = model.score(readings_frame(strange))
    window = result[(result.index >= hot_at) & (result.index < hot_at + timedelta(minutes=30))]
    assert window["flag"].all()
    assert window["score"].min() > model.threshold


def test_fitting_needs_enough_history() -> None:
    with pytest.raises(ValueError, match="at least 50"):
        DeviceModel.fit(DeviceKind.WASTE_STORE_ENV, readings_frame(store_history(1)[:90]))
    assert fit_models({"env": (DeviceKind.WASTE_STORE_ENV, store_history(1)[:90])}) == {}


def store_site(readings: list[Reading]) -> SiteData:
    env = DeviceData("env", DeviceKind.WASTE_STORE_ENV, tuple(readings))
    return SiteData(
        "s1", SiteKind.MEDICAL_INSTITUTION, {"env": env}, build_profile("medical_institution")
    )


def test_detector_reports_info_findings_from_the_given_model() -> None:
    models = fit_models({"env": (DeviceKind.WASTE_STORE_ENV, store_history(7))})
    start = T0 + timedelta(days=7)
    recent = [
        Reading(
            r.ts,
            r.device_id,
            r.metric,
            35.0 if r.metric == "temp_c" and r.ts >= start + timedelta(hours=2) else r.value,
        )
        for r in store_history(1, seed=5, start=start)
        if r.ts < start + timedelta(hours=3)
    ]
    now = start + timedelta(hours=3)
    (finding,) = AnomalyDetector(models)(store_site(recent), now)
    assert finding.state == "firing"
    assert finding.severity == "info"
    assert finding.rule == "behaviour.anomaly"
    assert finding.episode == (start + timedelta(hours=2)).isoformat()
    assert finding.evidence_metric == "temp_c"
    assert "供参考" in finding.summary
    calm = [r for r in store_history(1, seed=5, start=start) if r.ts < now]
    assert [f.state for f in AnomalyDetector(models)(store_site(calm), now)] == ["clear"]


def test_without_a_model_the_detector_stays_silent() -> None:
    (detector,) = [d for d in catalogue() if d.rule.id == "behaviour.anomaly"]
    assert detector(store_site(store_history(1)), T0 + timedelta(days=1)) == []
