"""The device vocabulary of the protocol: kinds, their metrics and events (docs/protocol.md)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SiteKind(StrEnum):
    DISINFECTION_PLANT = "disinfection_plant"
    MEDICAL_INSTITUTION = "medical_institution"


class DeviceKind(StrEnum):
    STEAM_CABINET = "steam_cabinet"
    INFRARED_CABINET = "infrared_cabinet"
    DISH_MACHINE = "dish_machine"
    CHLORINE_TANK = "chlorine_tank"
    LINE_METER = "line_meter"
    WASTE_STORE_ENV = "waste_store_env"
    WASTE_SCALE = "waste_scale"


class WasteCategory(StrEnum):
    INFECTIOUS = "infectious"
    SHARPS = "sharps"
    PATHOLOGICAL = "pathological"
    PHARMACEUTICAL = "pharmaceutical"
    CHEMICAL = "chemical"


@dataclass(frozen=True)
class MetricSpec:
    """A metric a device kind reports, with the physically possible range of its values."""

    name: str
    low: float
    high: float
    # Largest plausible change per second (None: no limit, e.g. on/off flags and counters).
    max_rate_per_s: float | None = None


@dataclass(frozen=True)
class KindSpec:
    kind: DeviceKind
    site_kind: SiteKind
    name_zh: str
    metrics: tuple[MetricSpec, ...]
    events: tuple[str, ...]
    # Default reporting interval of a device of this kind, in seconds.
    interval_s: int

    @property
    def metric_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.metrics)

    def metric(self, name: str) -> MetricSpec | None:
        for spec in self.metrics:
            if spec.name == name:
                return spec
        return None


_FLAG = (0.0, 1.0)

KINDS: dict[DeviceKind, KindSpec] = {
    spec.kind: spec
    for spec in (
        KindSpec(
            DeviceKind.STEAM_CABINET,
            SiteKind.DISINFECTION_PLANT,
            "蒸汽消毒柜",
            (MetricSpec("temp_c", -20, 160, 5.0), MetricSpec("door_open", *_FLAG)),
            ("batch_start", "batch_end"),
            10,
        ),
        KindSpec(
            DeviceKind.INFRARED_CABINET,
            SiteKind.DISINFECTION_PLANT,
            "红外线消毒柜",
            (MetricSpec("temp_c", -20, 250, 5.0), MetricSpec("door_open", *_FLAG)),
            ("batch_start", "batch_end"),
            10,
        ),
        KindSpec(
            DeviceKind.DISH_MACHINE,
            SiteKind.DISINFECTION_PLANT,
            "洗碗机",
            (
                MetricSpec("wash_temp_c", -20, 120, 5.0),
                MetricSpec("rinse_temp_c", -20, 120, 5.0),
                MetricSpec("conveyor_speed_m_min", 0, 30),
                MetricSpec("running", *_FLAG),
            ),
            (),
            10,
        ),
        KindSpec(
            DeviceKind.CHLORINE_TANK,
            SiteKind.DISINFECTION_PLANT,
            "化学消毒池",
            (MetricSpec("chlorine_mg_l", 0, 5000),),
            ("basket_in", "basket_out"),
            30,
        ),
        KindSpec(
            DeviceKind.LINE_METER,
            SiteKind.DISINFECTION_PLANT,
            "产线计量",
            (
                MetricSpec("power_kw", 0, 2000),
                MetricSpec("water_l_min", 0, 5000),
                MetricSpec("packed_total", 0, 1e12),
            ),
            (),
            30,
        ),
        KindSpec(
            DeviceKind.WASTE_STORE_ENV,
            SiteKind.MEDICAL_INSTITUTION,
            "暂存间环境",
            (
                MetricSpec("temp_c", -40, 70, 1.0),
                MetricSpec("humidity_pct", 0, 100),
                MetricSpec("door_open", *_FLAG),
                MetricSpec("uv_on", *_FLAG),
            ),
            (),
            60,
        ),
        KindSpec(
            DeviceKind.WASTE_SCALE,
            SiteKind.MEDICAL_INSTITUTION,
            "医废称重",
            (),
            ("bag_in", "bag_out"),
            300,
        ),
    )
}


def kind_spec(kind: str) -> KindSpec:
    """The spec of a device kind; ValueError naming the valid kinds if unknown."""
    try:
        return KINDS[DeviceKind(kind)]
    except ValueError:
        valid = ", ".join(k.value for k in DeviceKind)
        raise ValueError(f"unknown device kind {kind!r}; one of: {valid}") from None
