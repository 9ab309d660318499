"""The detector catalogue: pure functions from site data to findings (docs/rules.md)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from weijian.alerts.detectors.chemical import ChlorineLowDetector, ImmersionShortDetector
from weijian.alerts.detectors.dish import DishExposureDetector, DishRinseDetector
from weijian.alerts.detectors.integrity import FlatlineDetector, OutOfRangeDetector
from weijian.alerts.detectors.presence import OfflineDetector
from weijian.alerts.detectors.release import ReleaseDetector
from weijian.alerts.detectors.store import ColdStorageDetector, DoorOpenDetector, UvDetector
from weijian.alerts.detectors.thermal import ThermalBatchDetector
from weijian.alerts.detectors.transport import (
    ClockSkewDetector,
    ReplayDetector,
    SequenceGapDetector,
)
from weijian.alerts.detectors.waste import (
    BagMissingDetector,
    StorageOverdueDetector,
    WeightMismatchDetector,
)
from weijian.alerts.models import Detector, Finding, RuleSpec, SiteData
from weijian.devices.kinds import DeviceKind

if TYPE_CHECKING:
    from weijian.alerts.anomaly import DeviceModel


class RuleGroup:
    """One rule judged by several detectors on different device kinds (e.g. the temperature
    of cabinet batches and of dish-machine rinses), so the catalogue keeps one entry per rule."""

    def __init__(self, *parts: Detector) -> None:
        rules = {p.rule.id for p in parts}
        if len(rules) != 1:
            raise ValueError(f"a rule group needs parts of one rule, got {sorted(rules)}")
        self.parts = parts
        self.rule: RuleSpec = parts[0].rule
        self.device_kinds: frozenset[DeviceKind] = frozenset().union(
            *(p.device_kinds for p in parts)
        )
        self.lookback: timedelta = max(p.lookback for p in parts)
        self.scope: Literal["device", "site"] = "device"
        if any(p.scope != "device" for p in parts):
            raise ValueError("a rule group's parts judge devices one by one")

    def __call__(self, site: SiteData, now: datetime) -> list[Finding]:
        kinds = {d.kind for d in site.devices.values()}
        return [f for p in self.parts if p.device_kinds & kinds for f in p(site, now)]


def catalogue(models: Mapping[str, DeviceModel] | None = None) -> list[Detector]:
    """Every detector the platform runs, one per rule id.

    `models` are the fitted per-device models of `behaviour.anomaly` (device id → model);
    without them that rule finds nothing.
    """
    from weijian.alerts.anomaly import AnomalyDetector

    detectors: Sequence[Detector] = (
        RuleGroup(ThermalBatchDetector("disinfection.temperature_low"), DishRinseDetector()),
        ThermalBatchDetector("disinfection.hold_time_short"),
        DishExposureDetector(),
        ChlorineLowDetector(),
        ImmersionShortDetector(),
        ReleaseDetector(),
        StorageOverdueDetector(),
        WeightMismatchDetector(),
        BagMissingDetector(),
        ColdStorageDetector(),
        UvDetector(),
        DoorOpenDetector(),
        OfflineDetector(),
        FlatlineDetector(),
        OutOfRangeDetector(),
        ClockSkewDetector(),
        SequenceGapDetector(),
        ReplayDetector(),
        AnomalyDetector(models),
    )
    return list(detectors)
