"""The fault catalogue: what each fault does, its parameters, and the rule it must violate."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from weijian.devices.kinds import KINDS, DeviceKind
from weijian.simulator.timeutil import parse_duration

Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

_CABINETS = frozenset({DeviceKind.STEAM_CABINET, DeviceKind.INFRARED_CABINET})
_ANY = frozenset(DeviceKind)
_WITH_METRICS = frozenset(k for k, spec in KINDS.items() if spec.metrics)


class FaultParams(BaseModel):
    """Parameters of a fault; unknown names are refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class UnderTemp(FaultParams):
    batches: int = Field(1, ge=1)
    sag: Duration = timedelta(minutes=2)
    depth_c: float = Field(3.0, gt=0.5)


class NoHeat(FaultParams):
    batches: int = Field(1, ge=1)
    # Setpoint this far below the limit, so that even noise and regulation never reach it.
    below_c: float = Field(6.0, ge=1.5)


class ShortHold(FaultParams):
    batches: int = Field(1, ge=1)
    # Time at temperature; default 60 % of the profile's minimum hold.
    hold: Duration | None = None


class ConveyorFast(FaultParams):
    duration: Duration = timedelta(minutes=30)
    # Default: 1.6 × the fastest speed that still gives the minimum exposure.
    speed_m_min: float | None = Field(None, gt=0, le=30)


class RinseCold(FaultParams):
    duration: Duration = timedelta(minutes=30)
    # Default: 7 °C below the profile's minimum rinse temperature.
    rinse_c: float | None = None


class ChlorineLow(FaultParams):
    duration: Duration = timedelta(minutes=40)
    mg_l: float = Field(180.0, ge=0)


class ShortImmersion(FaultParams):
    baskets: int = Field(1, ge=1)
    immersion: Duration = timedelta(minutes=3)


class PackingWithoutDisinfection(FaultParams):
    duration: Duration = timedelta(minutes=30)
    # No disinfection stage of the site runs for this long before the packing.
    quiet_before: Duration = timedelta(hours=3)


class OverdueWaste(FaultParams):
    # The transporter does not come for this long (no hand-over at all).
    duration: Duration = timedelta(hours=60)


class WeightMismatch(FaultParams):
    error_pct: float = 6.0


class MissingBag(FaultParams):
    # The bag disappears from the store this long after it was weighed in.
    after: Duration = timedelta(hours=2)


class ColdRoomWarm(FaultParams):
    duration: Duration = timedelta(hours=3)
    ambient_c: float = 27.0


class NoUv(FaultParams):
    pass


class DoorOpen(FaultParams):
    duration: Duration = timedelta(minutes=45)


class Offline(FaultParams):
    duration: Duration = timedelta(hours=1)
    # Drop the connection (the broker publishes the Last Will) or stay connected but silent.
    disconnect: bool = True
    # Store and forward the readings taken meanwhile; false: the device was powered off
    # (nothing measured) and reboots with seq 0.
    backlog: bool = True


class StuckSensor(FaultParams):
    duration: Duration = timedelta(hours=2)
    metric: str | None = None


class OutOfRange(FaultParams):
    metric: str | None = None
    value: float | None = None
    count: int = Field(3, ge=1)


class ClockSkew(FaultParams):
    offset: Duration = timedelta(minutes=20)
    duration: Duration = timedelta(hours=2)


class SequenceGap(FaultParams):
    skip: int = Field(50, ge=2)


class Replay(FaultParams):
    count: int = Field(5, ge=1)
    age: Duration = timedelta(minutes=10)
    variant: Literal["new_ts", "new_values"] = "new_ts"


class Reboot(FaultParams):
    pass


@dataclass(frozen=True)
class FaultType:
    """A fault type: its parameters, the device kinds it applies to and the rules it violates."""

    name: str
    params: type[FaultParams]
    kinds: frozenset[DeviceKind]
    rules: tuple[str, ...]
    # "process": changes what the twin does; "data": changes what the device reports.
    layer: Literal["process", "data"]
    summary: str


FAULTS: dict[str, FaultType] = {
    f.name: f
    for f in (
        FaultType(
            "under_temp",
            UnderTemp,
            _CABINETS,
            ("disinfection.hold_time_short",),
            "process",
            "temperature sags below the limit in the middle of the hold",
        ),
        FaultType(
            "no_heat",
            NoHeat,
            _CABINETS,
            ("disinfection.temperature_low",),
            "process",
            "the batch never reaches the limit",
        ),
        FaultType(
            "short_hold",
            ShortHold,
            _CABINETS,
            ("disinfection.hold_time_short",),
            "process",
            "the batch ends too soon after reaching the limit",
        ),
        FaultType(
            "conveyor_fast",
            ConveyorFast,
            frozenset({DeviceKind.DISH_MACHINE}),
            ("disinfection.exposure_short",),
            "process",
            "conveyor runs too fast",
        ),
        FaultType(
            "rinse_cold",
            RinseCold,
            frozenset({DeviceKind.DISH_MACHINE}),
            ("disinfection.temperature_low",),
            "process",
            "rinse below the limit while running",
        ),
        FaultType(
            "chlorine_low",
            ChlorineLow,
            frozenset({DeviceKind.CHLORINE_TANK}),
            ("disinfection.chlorine_low",),
            "process",
            "solution diluted during an immersion",
        ),
        FaultType(
            "short_immersion",
            ShortImmersion,
            frozenset({DeviceKind.CHLORINE_TANK}),
            ("disinfection.immersion_short",),
            "process",
            "basket taken out too soon",
        ),
        FaultType(
            "packing_without_disinfection",
            PackingWithoutDisinfection,
            frozenset({DeviceKind.LINE_METER}),
            ("disinfection.released_undisinfected",),
            "process",
            "the line packs while no disinfection stage ran",
        ),
        FaultType(
            "overdue_waste",
            OverdueWaste,
            frozenset({DeviceKind.WASTE_SCALE}),
            ("waste.storage_overdue",),
            "process",
            "no hand-over for longer than 48 h",
        ),
        FaultType(
            "weight_mismatch",
            WeightMismatch,
            frozenset({DeviceKind.WASTE_SCALE}),
            ("waste.weight_mismatch",),
            "process",
            "hand-over weight off by error_pct",
        ),
        FaultType(
            "missing_bag",
            MissingBag,
            frozenset({DeviceKind.WASTE_SCALE}),
            ("waste.bag_missing",),
            "process",
            "a bag weighed in is never handed over",
        ),
        FaultType(
            "cold_room_warm",
            ColdRoomWarm,
            frozenset({DeviceKind.WASTE_STORE_ENV}),
            ("waste.cold_storage_temp_high",),
            "process",
            "cooling fails in a cold store",
        ),
        FaultType(
            "no_uv",
            NoUv,
            frozenset({DeviceKind.WASTE_STORE_ENV}),
            ("waste.uv_not_done",),
            "process",
            "a local day without UV disinfection",
        ),
        FaultType(
            "door_open",
            DoorOpen,
            frozenset({DeviceKind.WASTE_STORE_ENV}),
            ("waste.door_open_long",),
            "process",
            "store door left open",
        ),
        FaultType(
            "offline",
            Offline,
            _ANY,
            ("device.offline",),
            "data",
            "device silent for a while (Last Will if it disconnects)",
        ),
        FaultType(
            "stuck_sensor",
            StuckSensor,
            _WITH_METRICS,
            ("data.flatline",),
            "data",
            "one metric repeats the same value",
        ),
        FaultType(
            "out_of_range",
            OutOfRange,
            _WITH_METRICS,
            ("data.out_of_range",),
            "data",
            "a few physically impossible values",
        ),
        FaultType(
            "clock_skew",
            ClockSkew,
            _ANY,
            ("data.clock_skew",),
            "data",
            "device clock jumps by offset",
        ),
        FaultType(
            "sequence_gap",
            SequenceGap,
            _ANY,
            ("data.sequence_gap",),
            "data",
            "seq counter jumps (messages lost in the device's queue)",
        ),
        FaultType(
            "replay",
            Replay,
            _WITH_METRICS,
            ("data.replay",),
            "data",
            "recent readings re-sent with their old seq",
        ),
        FaultType(
            "reboot",
            Reboot,
            _ANY,
            (),
            "data",
            "benign: the device reboots and seq restarts at 0 (no alert expected)",
        ),
    )
}


def fault_type(name: str) -> FaultType:
    """The fault type called `name`; ValueError listing the valid names if unknown."""
    try:
        return FAULTS[name]
    except KeyError:
        raise ValueError(f"unknown fault type {name!r}; one of: {', '.join(FAULTS)}") from None
