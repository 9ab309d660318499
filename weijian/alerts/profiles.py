"""Default limits per site kind (../DOMAIN.md); sites and devices override any of them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from weijian.alerts.models import Profile
from weijian.devices.kinds import SiteKind

# Settings shared by every site (data integrity, presence). docs/rules.md explains each key.
COMMON: dict[str, Any] = {
    # Offline after max(factor × interval, min_s); interval None: the kind's default (kinds.py).
    "offline.interval_factor": 3.0,
    "offline.min_s": 600.0,
    "offline.interval_s": None,
    "offline.major_after_h": 24.0,
    "clock_skew.max_s": 300.0,
    # The offset is estimated per bucket of receive time and must hold this many buckets.
    "clock_skew.bucket_s": 300.0,
    "clock_skew.min_buckets": 2,
    # A seq at or below this after a higher one is a reboot (the counter restarts at 0 or 1).
    "seq.restart_max": 1,
    # A gap is lost data only once the message after it has been in this long.
    "seq.gap_grace_s": 300.0,
    # Clean data needed before a data-integrity alert clears.
    "data.clear_after_s": 1800.0,
    # A flat line needs at least this many identical samples as well as its window.
    "flatline.min_samples": 10,
    # behaviour.anomaly: a device's fitted model flags a sample above its own threshold;
    # this many flagged samples in an hour make a finding.
    "anomaly.min_flagged": 3,
}

DEFAULTS: dict[SiteKind, dict[str, Any]] = {
    SiteKind.DISINFECTION_PLANT: {
        **COMMON,
        "steam.min_temp_c": 100.0,
        "steam.min_hold_s": 600.0,
        "infrared.min_temp_c": 120.0,
        "infrared.min_hold_s": 600.0,
        # A run at temperature is broken by a gap between samples longer than this.
        "hold.max_sample_gap_s": 60.0,
        # A batch is judged once a reading at/after its end is stored, or this long after it.
        "hold.settle_s": 300.0,
        "dish.min_rinse_temp_c": 85.0,
        "dish.min_exposure_s": 40.0,
        "dish.zone_length_m": 1.0,
        "chlorine.min_mg_l": 250.0,
        "chlorine.min_immersion_s": 300.0,
        # Packing at t needs a compliant disinfection stage in [t − lag, t]; judged per period.
        "release.max_lag_min": 120.0,
        "release.period_min": 60.0,
        "flatline.dish_window_min": 30.0,
        "flatline.chlorine_window_min": 60.0,
        "flatline.line_window_min": 60.0,
    },
    SiteKind.MEDICAL_INSTITUTION: {
        **COMMON,
        "waste.max_storage_h": 48.0,
        "waste.warn_storage_h": 36.0,
        "waste.weight_tolerance_pct": 2.0,
        "waste.bag_missing_grace_h": 0.0,
        "waste.cold_storage_required": False,
        "waste.max_temp_c": 20.0,
        "waste.temp_sustain_min": 30.0,
        "waste.min_uv_min_per_day": 30.0,
        "waste.uv_after_handover_h": 4.0,
        "waste.min_uv_min_after_handover": 30.0,
        "waste.max_door_open_min": 30.0,
        # Store-environment samples further apart than this do not prove continuity.
        "waste.max_sample_gap_s": 300.0,
        "flatline.store_window_min": 90.0,
    },
}


def default_profile(site_kind: SiteKind | str) -> dict[str, Any]:
    """The default settings of a site kind (a copy)."""
    return dict(DEFAULTS[SiteKind(site_kind)])


def build_profile(
    site_kind: SiteKind | str,
    site_overrides: Mapping[str, Any] | None = None,
    device_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Profile:
    """Defaults of the kind, with the site's overrides on top and per-device overrides."""
    values = default_profile(site_kind)
    values.update(site_overrides or {})
    return Profile(values, device_overrides)
