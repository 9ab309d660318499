"""Scoring detection against ground truth: match alerts to labels (pure)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from rich.table import Table

from weijian.alerts.models import Severity
from weijian.simulator.labels import Label
from weijian.simulator.provision import DeviceCredentials, id_maps
from weijian.simulator.scenario import Scenario


@dataclass(frozen=True)
class AlertRecord:
    """An alert as the matcher sees it: scenario keys, and when the platform first detected it
    (simulated time; use the alert's first detection, not the episode's start)."""

    rule: str
    site: str
    device: str | None
    detected_at: datetime
    scenario: str | None = None
    id: str | None = None
    # The highest severity the alert reached (None: unknown, taken as a violation).
    severity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "detected_at": self.detected_at.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertRecord:
        """The record `to_dict` wrote."""
        return cls(**{**data, "detected_at": datetime.fromisoformat(data["detected_at"])})

    @property
    def prewarning(self) -> bool:
        """A pre-warning that never reached its rule's violation severity."""
        needed = VIOLATION_SEVERITY.get(self.rule)
        if needed is None or self.severity is None:
            return False
        return Severity(self.severity).rank < needed.rank


# Rules whose alerts start as a pre-warning below the violation (docs/rules.md): the 36 h
# storage warning is a correct reminder on a compliant site, not a false violation, so an
# alert that never reached the violation severity is reported apart and not scored.
VIOLATION_SEVERITY: dict[str, Severity] = {"waste.storage_overdue": Severity.MAJOR}


@dataclass(frozen=True)
class Match:
    label: Label
    alert: AlertRecord

    @property
    def latency_s(self) -> float:
        return (self.alert.detected_at - self.label.detectable_at).total_seconds()


@dataclass(frozen=True)
class Score:
    """TP/FP/FN and what follows from them, for one rule or overall."""

    rule: str
    tp: int
    fp: int
    fn: int
    latency_p50_s: float | None
    latency_p95_s: float | None

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    @property
    def f1(self) -> float | None:
        p, r = self.precision, self.recall
        if p is None or r is None or p + r == 0:
            return None if p is None or r is None else 0.0
        return 2 * p * r / (p + r)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": _round(self.precision),
            "recall": _round(self.recall),
            "f1": _round(self.f1),
            "latency_p50_s": _round(self.latency_p50_s),
            "latency_p95_s": _round(self.latency_p95_s),
        }


@dataclass
class Evaluation:
    """The outcome of matching: matches, false positives and negatives, scores."""

    matches: list[Match] = field(default_factory=list)
    false_positives: list[AlertRecord] = field(default_factory=list)
    false_negatives: list[Label] = field(default_factory=list)
    # Alerts that stayed pre-warnings (VIOLATION_SEVERITY): neither true nor false positives.
    prewarnings: list[AlertRecord] = field(default_factory=list)
    # Device-days of the clean scenarios (no faults) and the false alerts raised in them.
    clean_device_days: float = 0.0
    clean_false_alerts: int = 0

    @property
    def false_alerts_per_1000_device_days(self) -> float | None:
        if self.clean_device_days <= 0:
            return None
        return self.clean_false_alerts / self.clean_device_days * 1000.0

    def rules(self) -> list[str]:
        names = {m.label.rule for m in self.matches} | {a.rule for a in self.false_positives}
        return sorted(names | {lb.rule for lb in self.false_negatives})

    def score(self, rule: str | None = None) -> Score:
        """The score of one rule, or overall (rule None)."""

        def keep(name: str) -> bool:
            return rule is None or name == rule

        latencies = [m.latency_s for m in self.matches if keep(m.label.rule)]
        return Score(
            rule or "overall",
            tp=len(latencies),
            fp=sum(1 for a in self.false_positives if keep(a.rule)),
            fn=sum(1 for lb in self.false_negatives if keep(lb.rule)),
            latency_p50_s=float(np.percentile(latencies, 50)) if latencies else None,
            latency_p95_s=float(np.percentile(latencies, 95)) if latencies else None,
        )

    def scores(self) -> list[Score]:
        return [self.score(rule) for rule in self.rules()]

    def __add__(self, other: Evaluation) -> Evaluation:
        return Evaluation(
            self.matches + other.matches,
            self.false_positives + other.false_positives,
            self.false_negatives + other.false_negatives,
            self.prewarnings + other.prewarnings,
            self.clean_device_days + other.clean_device_days,
            self.clean_false_alerts + other.clean_false_alerts,
        )


def device_days(scenario: Scenario) -> float:
    """Devices × days of a scenario."""
    return scenario.device_count() * scenario.duration.total_seconds() / 86400.0


def match(
    labels: Sequence[Label],
    alerts: Iterable[AlertRecord],
    *,
    clean_device_days: float = 0.0,
    ignore_rules: Collection[str] = (),
) -> Evaluation:
    """Match alerts to labels of one or more scenarios.

    A label is a true positive when an alert of the same rule and site (and device, when both
    name one; and scenario, when both name one) was first detected within
    [label.earliest, label.window_end]; each alert matches at most one label (the earliest
    label first, the earliest alert in its window). Alerts left over are false positives.
    Alerts that never reached their rule's violation severity (a 36 h storage pre-warning) are
    neither: they are kept apart in `prewarnings`.
    `clean_device_days` > 0 declares the run clean: its false positives count towards false
    alerts per 1,000 device-days.
    """
    kept = [a for a in alerts if a.rule not in ignore_rules]
    pool = sorted((a for a in kept if not a.prewarning), key=lambda a: a.detected_at)
    used = [False] * len(pool)
    out = Evaluation(clean_device_days=clean_device_days)
    out.prewarnings = sorted((a for a in kept if a.prewarning), key=lambda a: a.detected_at)
    for label in sorted(labels, key=lambda lb: lb.detectable_at):
        if label.rule in ignore_rules:
            continue
        for i, alert in enumerate(pool):
            if used[i] or not _same_target(label, alert):
                continue
            if label.earliest <= alert.detected_at <= label.window_end:
                used[i] = True
                out.matches.append(Match(label, alert))
                break
        else:
            out.false_negatives.append(label)
    out.false_positives = [a for i, a in enumerate(pool) if not used[i]]
    if clean_device_days > 0:
        out.clean_false_alerts = len(out.false_positives)
    return out


def _same_target(label: Label, alert: AlertRecord) -> bool:
    if alert.rule != label.rule or alert.site != label.site:
        return False
    if alert.scenario is not None and alert.scenario != label.scenario:
        return False
    return alert.device is None or label.device is None or alert.device == label.device


def alerts_from_platform(
    rows: Iterable[Mapping[str, Any]],
    credentials: Mapping[str, DeviceCredentials],
    scenario: str | None = None,
) -> list[AlertRecord]:
    """AlertRecords from platform alerts (dicts with rule, site_id, device_id,
    first_detected_at or started_at, and severity: the highest reached), translating
    platform ids to scenario keys."""
    devices, sites = id_maps(credentials)
    out = []
    for row in rows:
        device_id = row.get("device_id")
        site_key, device_key = devices.get(device_id, (None, None)) if device_id else (None, None)
        site = site_key or sites.get(str(row.get("site_id")), str(row.get("site_id")))
        when = row.get("first_detected_at") or row.get("started_at")
        if isinstance(when, str):
            when = datetime.fromisoformat(when)
        if not isinstance(when, datetime):
            raise ValueError(f"alert {row.get('id')} has no detection time")
        out.append(
            AlertRecord(
                str(row["rule"]),
                site,
                device_key or device_id,
                when,
                scenario,
                str(row["id"]) if row.get("id") is not None else None,
                str(row["severity"]) if row.get("severity") is not None else None,
            )
        )
    return out


def render_table(evaluation: Evaluation, title: str = "Detection against ground truth") -> Table:
    """A rich table: one row per rule and an overall row."""
    table = Table(title=title)
    for name in ("rule", "TP", "FP", "FN", "precision", "recall", "F1", "p50 s", "p95 s"):
        table.add_column(name, justify="left" if name == "rule" else "right")
    for score in [*evaluation.scores(), evaluation.score()]:
        style = "bold" if score.rule == "overall" else None
        table.add_row(
            score.rule,
            str(score.tp),
            str(score.fp),
            str(score.fn),
            _fmt(score.precision),
            _fmt(score.recall),
            _fmt(score.f1),
            _fmt(score.latency_p50_s, 0),
            _fmt(score.latency_p95_s, 0),
            style=style,
        )
    notes = []
    rate = evaluation.false_alerts_per_1000_device_days
    if rate is not None:
        notes.append(
            f"false alerts per 1,000 device-days on clean scenarios: {rate:.2f} "
            f"({evaluation.clean_false_alerts} in {evaluation.clean_device_days:.1f})"
        )
    if evaluation.prewarnings:
        notes.append(f"pre-warnings (not scored): {len(evaluation.prewarnings)}")
    if notes:
        table.caption = "; ".join(notes)
    return table


def to_dict(evaluation: Evaluation) -> dict[str, Any]:
    """The evaluation as JSON-able data."""
    return {
        "overall": evaluation.score().to_dict(),
        "rules": [s.to_dict() for s in evaluation.scores()],
        "false_alerts_per_1000_device_days": _round(evaluation.false_alerts_per_1000_device_days),
        "clean_device_days": round(evaluation.clean_device_days, 2),
        "false_negatives": [lb.to_dict() for lb in evaluation.false_negatives],
        "false_positives": [_alert_dict(a) for a in evaluation.false_positives],
        "prewarnings": [_alert_dict(a) for a in evaluation.prewarnings],
    }


def _alert_dict(alert: AlertRecord) -> dict[str, Any]:
    return {
        "rule": alert.rule,
        "site": alert.site,
        "device": alert.device,
        "scenario": alert.scenario,
        "detected_at": alert.detected_at.isoformat(),
        "id": alert.id,
        "severity": alert.severity,
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"
