"""The detector catalogue: pure functions from site data to findings (docs/rules.md)."""

from __future__ import annotations

from weijian.alerts.detectors.thermal import ThermalBatchDetector
from weijian.alerts.models import Detector


def catalogue() -> list[Detector]:
    """Every detector the platform runs, one per rule id."""
    return [
        ThermalBatchDetector("disinfection.temperature_low"),
        ThermalBatchDetector("disinfection.hold_time_short"),
    ]
