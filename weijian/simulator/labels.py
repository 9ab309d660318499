"""Ground-truth labels: which alert a correct platform must raise, where, and by when."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

# How long after `detectable_at` a correct system may take to alert, per rule
# (docs/simulator.md explains each): stream rules get a few scan periods, daily or
# slow rules more.
TOLERANCE: dict[str, timedelta] = {
    "disinfection.temperature_low": timedelta(minutes=15),
    "disinfection.hold_time_short": timedelta(minutes=15),
    "disinfection.exposure_short": timedelta(minutes=15),
    "disinfection.chlorine_low": timedelta(minutes=15),
    "disinfection.immersion_short": timedelta(minutes=15),
    "disinfection.released_undisinfected": timedelta(minutes=30),
    "waste.storage_overdue": timedelta(hours=1),
    "waste.weight_mismatch": timedelta(minutes=15),
    "waste.bag_missing": timedelta(hours=1),
    "waste.cold_storage_temp_high": timedelta(minutes=30),
    "waste.uv_not_done": timedelta(hours=1),
    "waste.door_open_long": timedelta(minutes=15),
    "device.offline": timedelta(minutes=15),
    "data.flatline": timedelta(minutes=30),
    "data.out_of_range": timedelta(minutes=10),
    "data.clock_skew": timedelta(minutes=15),
    "data.sequence_gap": timedelta(minutes=15),
    "data.replay": timedelta(minutes=15),
}
DEFAULT_TOLERANCE = timedelta(minutes=15)
# An alert this much before `detectable_at` still counts (device clocks, sampling).
EARLY_SLACK = timedelta(minutes=2)
# Window of the flat-line rule assumed when the profile has no "flatline.window_s".
DEFAULT_FLATLINE_WINDOW_S = 1800.0


@dataclass(frozen=True)
class Label:
    """One violation a correct platform must alert on.

    `site` and `device` are the scenario's keys (device None: a site-level rule). An alert of
    `rule` for that site/device first detected within [window_start, window_end] matches it;
    `window_start` defaults to detectable_at - EARLY_SLACK.
    """

    rule: str
    site: str
    device: str | None
    detectable_at: datetime
    window_end: datetime
    scenario: str
    fault: str
    window_start: datetime | None = None

    @property
    def earliest(self) -> datetime:
        return self.window_start or self.detectable_at - EARLY_SLACK

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("detectable_at", "window_end", "window_start"):
            if out[key] is not None:
                out[key] = out[key].isoformat()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Label:
        """The label `to_dict` wrote."""
        times = {
            key: None if data.get(key) is None else datetime.fromisoformat(data[key])
            for key in ("detectable_at", "window_end", "window_start")
        }
        return cls(**{**data, **times})
