"""Statistical behaviour checks (`behaviour.anomaly`, severity info).

Two tools:

- `score_csv` / `RobustScorer`: a streaming univariate scorer. Each value is scored against the
  `window` values before it only, with the modified z-score of Iglewicz and Hoaglin,
  M = 0.6745 · (x − median) / MAD, mapped to [0, 1) as |M| / (|M| + 3.5): the classic outlier
  cut-off |M| = 3.5 is score 0.5. Median and MAD are not dragged by the outliers they look
  for, need no training, cost O(window) per row and explain themselves ("5 MADs above the
  median of the last 120 values"). An IsolationForest refitted on the past window would cost a
  fit per row (or go stale between refits) for a single feature that robust statistics judge
  as well; the forest earns its keep on several features at once, below.
- `DeviceModel`: an IsolationForest fitted on one device's history (features: values, rates of
  change, hour of day; for line meters energy and water per packed piece). `AnomalyDetector`
  scores recent data with the fitted models it is given: the models are an input, so the
  detector stays pure.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TextIO

import numpy as np
import pandas as pd

from weijian.alerts.detectors.common import LOCAL_TZ, floor_to, iso, local_time
from weijian.alerts.models import Finding, SiteData
from weijian.alerts.models import Severity as Sev
from weijian.alerts.rules import rule
from weijian.devices.kinds import KINDS, DeviceKind, kind_spec
from weijian.telemetry import Reading

_HOUR = timedelta(hours=1)
_IH_CUTOFF = 3.5
_MAD_TO_SIGMA = 0.6745
# Mean absolute deviation to sigma, for windows whose MAD is zero (more than half identical).
_MEANAD_TO_SIGMA = 1.253314


class RobustScorer:
    """Scores each value against the previous `window` values (never against itself)."""

    def __init__(self, window: int = 120, min_history: int | None = None) -> None:
        if window < 3:
            raise ValueError(f"window must be at least 3, got {window}")
        self.window = window
        self.min_history = min(window, 20) if min_history is None else min_history
        self._ring = np.empty(window, dtype=np.float64)
        self._count = 0

    def score(self, value: float) -> float:
        """The value's anomaly score in [0, 1); then the value joins the history."""
        filled = min(self._count, self.window)
        score = 0.0
        if filled >= self.min_history:
            score = _robust_score(value, self._ring[:filled])
        self._ring[self._count % self.window] = value
        self._count += 1
        return score


def _robust_score(value: float, history: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    median = float(np.median(history))
    deviation = np.abs(history - median)
    mad = float(np.median(deviation))
    if mad > 0:
        z = _MAD_TO_SIGMA * (value - median) / mad
    else:
        mean_ad = float(deviation.mean())
        if mean_ad == 0:
            return 0.0 if value == median else 1.0
        z = (value - median) / (_MEANAD_TO_SIGMA * mean_ad)
    return abs(z) / (abs(z) + _IH_CUTOFF)


def score_csv(
    in_stream: TextIO, out_stream: TextIO, *, window: int = 120, threshold: float = 0.5
) -> int:
    """Score `timestamp,value` rows (header optional) as `timestamp,value,score,flag`.

    Streaming: each score uses only earlier rows; a row is written as soon as it is read.
    Blank lines are skipped. A bad row raises ValueError naming its line (rows before it have
    been written). Returns the number of rows written (without the header).
    """
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
    scorer = RobustScorer(window)
    writer = csv.writer(out_stream, lineterminator="\n")
    writer.writerow(["timestamp", "value", "score", "flag"])
    written = 0
    first = True
    reader = csv.reader(in_stream)
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        if first and _is_header(row):
            first = False
            continue
        first = False
        stamp, value = _parse_row(row, reader.line_num)
        score = scorer.score(value)
        writer.writerow([stamp, row[1].strip(), f"{score:.6f}", int(score >= threshold)])
        written += 1
    return written


def _is_header(row: list[str]) -> bool:
    """A first row whose timestamp and value both fail to parse is a header."""
    if len(row) != 2:
        return False
    return not _valid_stamp(row[0].strip()) and _number(row[1]) is None


def _parse_row(row: list[str], line: int) -> tuple[str, float]:
    if len(row) != 2:
        raise ValueError(f"line {line}: expected 2 fields (timestamp,value), got {len(row)}")
    stamp = row[0].strip()
    if not _valid_stamp(stamp):
        raise ValueError(f"line {line}: timestamp {stamp!r} is neither ISO 8601 nor a number")
    value = _number(row[1])
    if value is None:
        raise ValueError(f"line {line}: value {row[1].strip()!r} is not a finite number")
    return stamp, value


def _valid_stamp(text: str) -> bool:
    if not text:
        return False
    if _number(text) is not None:
        return True
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _number(text: str) -> float | None:
    try:
        value = float(text.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) else None


# --- Per-device models -------------------------------------------------------------------


def readings_frame(readings: Iterable[Reading]) -> pd.DataFrame:
    """Readings as a long DataFrame: ts (UTC), metric, value."""
    rows = [(r.ts, r.metric, r.value) for r in readings]
    frame = pd.DataFrame(rows, columns=["ts", "metric", "value"])
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    return frame


def features(kind: DeviceKind, frame: pd.DataFrame) -> pd.DataFrame:
    """One row per sample time: values, rates of change, hour of day (and per-piece use)."""
    spec = kind_spec(kind)
    wide = frame.pivot_table(index="ts", columns="metric", values="value", aggfunc="last")
    wide = wide.sort_index().ffill(limit=3)
    dt_s = wide.index.to_series().diff().dt.total_seconds().to_numpy()
    out = pd.DataFrame(index=wide.index)
    for metric in spec.metrics:
        if metric.name not in wide:
            continue
        values = wide[metric.name].astype(float)
        step = values.diff()
        if metric.name.endswith("_total"):
            # A counter: its rise per minute, the new value itself after a reset.
            rise = step.where(step >= 0, values)
            out[f"{metric.name}_per_min"] = rise / (dt_s / 60.0)
        elif (metric.low, metric.high) == (0.0, 1.0):
            out[metric.name] = values
        else:
            out[metric.name] = values
            out[f"{metric.name}_per_s"] = step / dt_s
    if {"power_kw", "packed_total_per_min"} <= set(out):
        pieces = out["packed_total_per_min"].clip(lower=0) + 1.0  # +1: idle lines stay finite
        out["kw_per_piece"] = out["power_kw"] / pieces
        if "water_l_min" in out:
            out["water_per_piece"] = out["water_l_min"] / pieces
    local = pd.DatetimeIndex(wide.index).tz_convert(LOCAL_TZ)
    hour = local.hour + local.minute / 60.0
    out["hour_sin"] = np.sin(2 * np.pi * hour / 24.0)
    out["hour_cos"] = np.cos(2 * np.pi * hour / 24.0)
    return out.replace([np.inf, -np.inf], np.nan).iloc[1:]


@dataclass(eq=False)
class DeviceModel:
    """An IsolationForest fitted on one device's history, with its own flag threshold.

    The forest's splits are drawn inside the training range, so a value far beyond anything
    the device ever showed scores no higher than the most extreme training sample. The score
    is therefore the larger of the forest's score and an envelope score, 1 − exp(−e / 2), where
    e is how many standard deviations the sample lies outside the training range on its worst
    feature (0 inside it).
    """

    kind: DeviceKind
    columns: list[str]
    medians: pd.Series
    scaler: Any
    forest: Any
    # Training range of each standardised feature.
    low: np.ndarray[Any, np.dtype[np.float64]]
    high: np.ndarray[Any, np.dtype[np.float64]]
    # Score above which a sample is flagged: the (1 − contamination) quantile of training.
    threshold: float

    MIN_ROWS = 50

    @classmethod
    def fit(
        cls,
        kind: DeviceKind | str,
        history: pd.DataFrame,
        *,
        contamination: float = 0.01,
        random_state: int = 0,
    ) -> DeviceModel:
        """Fit on a device's readings (long frame: ts, metric, value)."""
        from sklearn.ensemble import IsolationForest
        from sklearn.preprocessing import StandardScaler

        kind = DeviceKind(kind)
        table = features(kind, history)
        if len(table) < cls.MIN_ROWS:
            raise ValueError(f"need at least {cls.MIN_ROWS} samples to fit, got {len(table)}")
        medians = table.median()
        table = table.fillna(medians).fillna(0.0)
        scaler = StandardScaler().fit(table.to_numpy())
        scaled = scaler.transform(table.to_numpy())
        forest = IsolationForest(n_estimators=200, random_state=random_state).fit(scaled)
        train = -forest.score_samples(scaled)
        threshold = float(np.quantile(train, 1.0 - contamination))
        low, high = scaled.min(axis=0), scaled.max(axis=0)
        return cls(kind, list(table.columns), medians, scaler, forest, low, high, threshold)

    def score(self, recent: pd.DataFrame) -> pd.DataFrame:
        """Per sample time: `score` in (0, 1] (higher is stranger), `flag`, `top_feature`."""
        table = features(self.kind, recent).reindex(columns=self.columns)
        table = table.fillna(self.medians).fillna(0.0)
        if table.empty:
            return pd.DataFrame(columns=["score", "flag", "top_feature"])
        scaled = self.scaler.transform(table.to_numpy())
        outside = np.maximum(scaled - self.high, self.low - scaled).clip(min=0)
        envelope = 1.0 - np.exp(-outside.max(axis=1) / 2.0)
        scores = np.maximum(-self.forest.score_samples(scaled), envelope)
        # The feature furthest outside the training range, else the most unusual one.
        worst = np.where(
            outside.max(axis=1) > 0, outside.argmax(axis=1), np.abs(scaled).argmax(axis=1)
        )
        top = np.asarray(self.columns)[worst]
        return pd.DataFrame(
            {"score": scores, "flag": scores > self.threshold, "top_feature": top},
            index=table.index,
        )


class AnomalyDetector:
    """`behaviour.anomaly` (info): hours in which a device's own model flags at least
    `anomaly.min_flagged` samples. Episode = the hour; clears on a later hour with data that
    is not anomalous. Devices without a model are skipped.
    """

    rule = rule("behaviour.anomaly")
    device_kinds = frozenset(k for k, spec in KINDS.items() if spec.metrics)
    lookback = timedelta(hours=3)
    scope: Literal["device", "site"] = "device"

    def __init__(self, models: Mapping[str, DeviceModel] | None = None) -> None:
        self.models = dict(models or {})

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        findings: list[Finding] = []
        for device in site.judged(*sorted(self.device_kinds)):
            model = self.models.get(device.device_id)
            if model is None or model.kind != device.kind:
                continue
            recent = [r for r in device.readings if now - self.lookback <= r.ts <= now]
            if len(recent) < 2:
                continue
            scored = model.score(readings_frame(recent))
            need = int(site.profile.number("anomaly.min_flagged", device.device_id))
            findings += self._judge(site, device.device_id, model, scored, need)
        return findings

    def _judge(
        self, site: SiteData, device_id: str, model: DeviceModel, scored: pd.DataFrame, need: int
    ) -> list[Finding]:
        if scored.empty:
            return []
        hours = [floor_to(ts.to_pydatetime(), _HOUR) for ts in scored.index]
        findings: list[Finding] = []
        last_bad: datetime | None = None
        latest_ok = False
        keys = np.asarray(hours, dtype=object)
        for start in sorted(set(hours)):
            part = scored[keys == start]
            flagged = part[part["flag"]]
            latest_ok = len(flagged) < need
            if not latest_ok:
                last_bad = start
                findings.append(self._firing(site, device_id, model, start, flagged))
        if latest_ok:
            findings.append(self._clear(site, device_id, scored, last_bad or hours[-1], hours[-1]))
        return findings

    def _firing(
        self,
        site: SiteData,
        device_id: str,
        model: DeviceModel,
        hour: datetime,
        flagged: pd.DataFrame,
    ) -> Finding:
        feature = str(flagged["top_feature"].iloc[int(np.argmax(flagged["score"].to_numpy()))])
        metric = feature.removesuffix("_per_s").removesuffix("_per_min")
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device_id,
            state="firing",
            severity=Sev.INFO,
            started_at=flagged.index[0].to_pydatetime(),
            ended_at=flagged.index[-1].to_pydatetime(),
            value=round(float(flagged["score"].max()), 4),
            limit=round(model.threshold, 4),
            unit="",
            summary=(
                f"{local_time(hour)} 起一小时内 {len(flagged)} 个数据与该设备历史行为明显不同"
                f"（最突出：{feature}），供参考"
            ),
            evidence_from=flagged.index[0].to_pydatetime(),
            evidence_to=flagged.index[-1].to_pydatetime(),
            evidence_metric=metric if metric in kind_spec(model.kind).metric_names else None,
            episode=iso(hour),
            details={"flagged": len(flagged), "top_feature": feature},
        )

    def _clear(
        self,
        site: SiteData,
        device_id: str,
        scored: pd.DataFrame,
        episode: datetime,
        latest: datetime,
    ) -> Finding:
        calm = scored[scored.index >= pd.Timestamp(latest)]
        return Finding(
            rule=self.rule.id,
            site_id=site.site_id,
            device_id=device_id,
            state="clear",
            severity=Sev.INFO,
            summary="设备行为已恢复常态",
            evidence_from=calm.index[0].to_pydatetime(),
            evidence_to=calm.index[-1].to_pydatetime(),
            episode=iso(episode),
        )


def fit_models(
    history: Mapping[str, tuple[DeviceKind | str, Sequence[Reading]]], **options: Any
) -> dict[str, DeviceModel]:
    """Fit a model per device from its readings; devices with too little data are left out."""
    models: dict[str, DeviceModel] = {}
    for device_id, (kind, readings) in history.items():
        try:
            models[device_id] = DeviceModel.fit(kind, readings_frame(readings), **options)
        except ValueError:
            continue
    return models
