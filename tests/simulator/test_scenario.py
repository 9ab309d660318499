"""Scenario files: parsing, defaults and one-line validation errors."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.simulator.helpers import START, hospital, plant, scenario
from weijian.simulator.scenario import ScenarioError, load_scenario, parse_scenario
from weijian.simulator.timeutil import format_duration, parse_duration


def _error(data: dict[str, Any]) -> str:
    base: dict[str, Any] = {"name": "x", "start": START, "duration": "1d", "sites": [plant()]}
    base.update(data)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(base, "x.yaml")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("x.yaml: ")
    return message


def _fault(**fault: Any) -> dict[str, Any]:
    return {"faults": [{"at": "6h", "site": "p", "device": "steam-1", **fault}]}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("2d", 172800),
        ("-30s", -30),
        (45, 45),
        ("1d 6h", 108000),
        ("500ms", 0.5),
    ],
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5x", "h", "1h-", "ten minutes"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_format_duration_round_trips() -> None:
    assert format_duration(timedelta(hours=26, minutes=3)) == "1d2h3m"
    assert parse_duration(format_duration(timedelta(seconds=3725))) == timedelta(seconds=3725)


def test_default_devices_and_shifts() -> None:
    sc = scenario([plant(), hospital()])
    kinds = [d.kind.value for d in sc.site("p").devices]
    assert kinds.count("steam_cabinet") == 2
    assert {"dish_machine", "chlorine_tank", "line_meter"} <= set(kinds)
    assert [d.key for d in sc.site("h").devices] == ["env-1", "scale-1"]
    assert sc.site("p").shift_hours == [(5.0, 9.0), (13.0, 16.0)]
    assert sc.end - sc.start == timedelta(days=1)


def test_fault_at_offset_or_instant() -> None:
    sc = scenario(
        [plant()],
        [
            {"type": "under_temp", "at": "6h", "site": "p", "device": "steam-1"},
            {
                "type": "under_temp",
                "at": "2026-11-23T13:00:00+08:00",
                "site": "p",
                "device": "steam-2",
            },
        ],
    )
    assert sc.fault_at(sc.faults[0]) == sc.start + timedelta(hours=6)
    assert sc.fault_at(sc.faults[1]) == sc.start + timedelta(hours=13)
    assert sc.fault_id(1) == "1-under_temp"


def test_unknown_fault_type() -> None:
    message = _error(_fault(type="overheat"))
    assert "unknown fault type 'overheat'" in message
    assert "under_temp" in message


def test_unknown_device() -> None:
    message = _error(_fault(type="under_temp", device="steam-9"))
    assert "faults[0] (under_temp): unknown device 'steam-9' in site 'p'" in message


def test_unknown_site() -> None:
    assert "unknown site 'nowhere'" in _error(_fault(type="under_temp", site="nowhere"))


def test_fault_on_wrong_kind() -> None:
    message = _error(_fault(type="no_uv", device="dish-1"))
    assert "applies to waste_store_env, not to 'dish-1' (dish_machine)" in message


def test_unknown_fault_parameter() -> None:
    assert "depth: unknown field" in _error(_fault(type="under_temp", params={"depth": 3}))


def test_bad_fault_parameter_value() -> None:
    assert "batches" in _error(_fault(type="under_temp", params={"batches": 0}))


def test_fault_outside_the_scenario() -> None:
    assert "outside the scenario" in _error(_fault(type="under_temp", at="2d"))


def test_naive_instant_is_refused() -> None:
    assert "has no UTC offset" in _error(_fault(type="under_temp", at="2026-11-23T06:00:00"))


def test_unknown_top_level_field() -> None:
    assert "speed: unknown field" in _error({"speed": 60})


def test_device_of_the_wrong_site_kind() -> None:
    message = _error({"sites": [plant(devices=[{"key": "env-1", "kind": "waste_store_env"}])]})
    assert "does not belong in a disinfection_plant" in message


def test_duplicate_keys() -> None:
    assert "duplicate site key 'p'" in _error({"sites": [plant(), plant()]})
    devices = [{"key": "a", "kind": "steam_cabinet"}, {"key": "a", "kind": "dish_machine"}]
    assert "duplicate device key 'a'" in _error({"sites": [plant(devices=devices)]})


def test_bad_shift() -> None:
    assert "shift" in _error({"sites": [plant(shifts=["09:00-05:00"])]})


def test_cold_room_fault_needs_cold_storage() -> None:
    fault = {"faults": [{"type": "cold_room_warm", "at": "6h", "site": "h", "device": "env-1"}]}
    assert "waste.cold_storage_required" in _error({"sites": [hospital()], **fault})


def test_profile_overrides_merge() -> None:
    sc = scenario(
        [plant(profile={"steam.min_temp_c": 102})],
        profile={"steam.min_hold_s": 900, "waste.max_storage_h": 24},
    )
    assert sc.site_profile("p") == {"steam.min_hold_s": 900, "steam.min_temp_c": 102}


def test_load_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match=r"bad\.yaml"):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match=r"missing\.yaml"):
        load_scenario(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ScenarioError, match="must be a mapping"):
        load_scenario(listing)
