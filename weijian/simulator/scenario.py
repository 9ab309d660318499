"""Scenario files: sites, devices, profile overrides and faults (docs/simulator.md)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    field_validator,
    model_validator,
)

from weijian.alerts.profiles import build_profile
from weijian.devices.kinds import KINDS, DeviceKind, SiteKind
from weijian.simulator.faults import FAULTS, Duration, FaultParams, fault_type
from weijian.simulator.timeutil import parse_clock, parse_duration

Key = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")]
ProfileValue = float | int | bool | str

DEFAULT_SHIFTS = ("05:00-09:00", "13:00-16:00")
DEFAULT_DEVICES: dict[SiteKind, tuple[tuple[str, DeviceKind], ...]] = {
    SiteKind.DISINFECTION_PLANT: (
        ("steam-1", DeviceKind.STEAM_CABINET),
        ("steam-2", DeviceKind.STEAM_CABINET),
        ("dish-1", DeviceKind.DISH_MACHINE),
        ("chlorine-1", DeviceKind.CHLORINE_TANK),
        ("line-1", DeviceKind.LINE_METER),
    ),
    SiteKind.MEDICAL_INSTITUTION: (
        ("env-1", DeviceKind.WASTE_STORE_ENV),
        ("scale-1", DeviceKind.WASTE_SCALE),
    ),
}


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message is one line naming the problem."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DeviceSpec(_Model):
    key: Key
    kind: DeviceKind
    # Reporting interval; default: the kind's (weijian/devices/kinds.py).
    interval: Duration | None = None
    # Device clock = true time + clock_offset + drift; defaults from the seed (±30 s, ±20 ppm).
    clock_offset: Duration | None = None
    clock_drift_ppm: float | None = None
    # Twin parameters (setpoints, bag rates, ...), see docs/simulator.md.
    params: dict[str, ProfileValue] = Field(default_factory=dict)
    # Per-device profile overrides (limits).
    profile: dict[str, ProfileValue] = Field(default_factory=dict)

    @property
    def interval_s(self) -> float:
        if self.interval is not None:
            return self.interval.total_seconds()
        return float(KINDS[self.kind].interval_s)


class SiteSpec(_Model):
    key: Key
    name: str
    kind: SiteKind
    district: str = ""
    address: str = ""
    # Working shifts in local time (Asia/Shanghai), plants only.
    shifts: tuple[str, ...] = DEFAULT_SHIFTS
    profile: dict[str, ProfileValue] = Field(default_factory=dict)
    devices: tuple[DeviceSpec, ...] = ()

    @field_validator("shifts")
    @classmethod
    def _valid_shifts(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for shift in value:
            begin, sep, end = shift.partition("-")
            if not sep or parse_clock(begin) >= parse_clock(end):
                raise ValueError(f"shift {shift!r} must be HH:MM-HH:MM within one day")
        return value

    @model_validator(mode="after")
    def _devices(self) -> SiteSpec:
        if not self.devices:
            defaults = tuple(DeviceSpec(key=k, kind=kind) for k, kind in DEFAULT_DEVICES[self.kind])
            object.__setattr__(self, "devices", defaults)
        seen: set[str] = set()
        for device in self.devices:
            if device.key in seen:
                raise ValueError(f"duplicate device key {device.key!r} in site {self.key!r}")
            seen.add(device.key)
            if KINDS[device.kind].site_kind != self.kind:
                raise ValueError(
                    f"device {device.key!r} is a {device.kind.value}, which does not belong "
                    f"in a {self.kind.value}"
                )
        return self

    def device(self, key: str) -> DeviceSpec:
        for device in self.devices:
            if device.key == key:
                return device
        raise KeyError(key)

    @property
    def shift_hours(self) -> list[tuple[float, float]]:
        out = []
        for shift in self.shifts:
            begin, _, end = shift.partition("-")
            out.append((parse_clock(begin), parse_clock(end)))
        return out


def _offset_or_instant(value: object) -> timedelta | datetime:
    if isinstance(value, str) and ("T" in value or value.count("-") >= 2):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"not an instant: {value!r}") from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"instant {value.isoformat()} has no UTC offset (add e.g. +08:00)")
        return value
    return parse_duration(value)


class FaultSpec(_Model):
    type: str
    # Offset from the start (`6h30m`) or an instant with offset (2026-11-23T06:00:00+08:00).
    at: Annotated[timedelta | datetime, PlainValidator(_offset_or_instant)]
    site: Key
    device: Key | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    # Name used in labels; default "<index>-<type>".
    id: str | None = None

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str) -> str:
        fault_type(value)
        return value

    def options(self) -> FaultParams:
        """The parsed parameters of this fault."""
        return FAULTS[self.type].params.model_validate(self.params)


class Scenario(_Model):
    name: str
    description: str = ""
    seed: int = 0
    start: AwareDatetime
    duration: Duration
    # Profile overrides for every site (a site's own `profile` wins).
    profile: dict[str, ProfileValue] = Field(default_factory=dict)
    sites: tuple[SiteSpec, ...]
    faults: tuple[FaultSpec, ...] = ()

    @property
    def end(self) -> datetime:
        return self.start + self.duration

    def site(self, key: str) -> SiteSpec:
        for site in self.sites:
            if site.key == key:
                return site
        raise KeyError(key)

    def site_profile(self, site_key: str) -> dict[str, ProfileValue]:
        """Profile overrides of a site: scenario-wide ones that apply to its kind, then its own."""
        site = self.site(site_key)
        known = build_profile(site.kind).as_dict()
        merged = {k: v for k, v in self.profile.items() if k in known or "." not in k}
        merged.update(site.profile)
        return merged

    def fault_at(self, fault: FaultSpec) -> datetime:
        """The absolute instant of a fault."""
        return fault.at if isinstance(fault.at, datetime) else self.start + fault.at

    def fault_id(self, index: int) -> str:
        fault = self.faults[index]
        return fault.id or f"{index}-{fault.type}"

    def device_count(self) -> int:
        return sum(len(site.devices) for site in self.sites)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        if self.duration <= timedelta(0):
            raise ValueError("duration must be positive")
        keys = [s.key for s in self.sites]
        for key in keys:
            if keys.count(key) > 1:
                raise ValueError(f"duplicate site key {key!r}")
        for index, fault in enumerate(self.faults):
            try:
                self._check_fault(fault)
            except ValueError as exc:
                raise ValueError(f"faults[{index}] ({fault.type}): {exc}") from None
        return self

    def _check_fault(self, fault: FaultSpec) -> None:
        spec = FAULTS[fault.type]
        if fault.site not in {s.key for s in self.sites}:
            raise ValueError(f"unknown site {fault.site!r}")
        site = self.site(fault.site)
        if fault.device is None:
            raise ValueError(f"needs a device of site {fault.site!r}")
        try:
            device = site.device(fault.device)
        except KeyError:
            known = ", ".join(d.key for d in site.devices)
            raise ValueError(
                f"unknown device {fault.device!r} in site {fault.site!r}; one of: {known}"
            ) from None
        if device.kind not in spec.kinds:
            kinds = ", ".join(sorted(k.value for k in spec.kinds))
            raise ValueError(f"applies to {kinds}, not to {device.key!r} ({device.kind.value})")
        try:
            fault.options()
        except ValidationError as exc:
            raise ValueError(_one_line(exc)) from None
        at = self.fault_at(fault)
        if not self.start <= at < self.end:
            raise ValueError(f"at {at.isoformat()} is outside the scenario [start, start+duration)")
        if fault.type == "cold_room_warm":
            cold = build_profile(site.kind, self.site_profile(site.key)).get(
                "waste.cold_storage_required"
            )
            if not cold:
                raise ValueError(
                    f"site {site.key!r} has no cold storage; set its profile "
                    "waste.cold_storage_required: true"
                )


def _one_line(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    where = where.lstrip(".")
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown field"
    return f"{where}: {message}" if where else message


def parse_scenario(data: Any, source: str = "<scenario>") -> Scenario:
    """Validate a scenario from its YAML data; ScenarioError with a one-line message if bad."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: a scenario must be a mapping")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_one_line(exc)}") from None


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {' '.join(str(exc).split())}") from None
    return parse_scenario(data, str(path))


def load_scenarios(path: str | Path) -> list[tuple[Path, Scenario]]:
    """A scenario file, or every *.yaml file of a directory (sorted)."""
    path = Path(path)
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [(f, load_scenario(f)) for f in files]
