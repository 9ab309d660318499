"""An evaluation focused on the devices with new data judges only those (pure)."""

from __future__ import annotations

from dataclasses import replace

from tests.alerts.detectors.factories import at, constant, device, firing, site, stream
from weijian.alerts.detectors import catalogue
from weijian.alerts.flows import run_detectors
from weijian.alerts.models import DeviceData, Finding
from weijian.devices.kinds import DeviceKind


def _broken_cabinet(device_id: str) -> DeviceData:
    # 900 °C: outside the physical range of a cabinet's thermometer.
    readings = stream(device_id, at(), {"temp_c": constant(900.0, 30)}, seq0=1)
    return device(DeviceKind.STEAM_CABINET, device_id, readings=readings, last_seen=at(minutes=5))


def _rules_by_device(findings: list[Finding]) -> set[tuple[str | None, str]]:
    return {(f.device_id, f.rule) for f in firing(findings)}


def test_only_the_devices_in_focus_are_judged() -> None:
    whole = site(_broken_cabinet("c1"), _broken_cabinet("c2"))
    now = at(minutes=6)
    everything = _rules_by_device(run_detectors(whole, catalogue(), now))
    assert ("c1", "data.out_of_range") in everything
    assert ("c2", "data.out_of_range") in everything

    focused = _rules_by_device(
        run_detectors(replace(whole, focus=frozenset({"c2"})), catalogue(), now)
    )
    assert focused == {(d, r) for d, r in everything if d == "c2"}


def test_per_device_detectors_skip_kinds_out_of_focus_and_cross_device_ones_still_run() -> None:
    meter = device(
        DeviceKind.LINE_METER,
        "m1",
        readings=stream("m1", at(), {"packed_total": [float(i) for i in range(30)]}, seq0=1),
        last_seen=at(minutes=5),
    )
    whole = site(_broken_cabinet("c1"), meter)
    focused = replace(whole, focus=frozenset({"c1"}))
    assert whole.focus_kinds() == {DeviceKind.STEAM_CABINET, DeviceKind.LINE_METER}
    assert focused.focus_kinds() == {DeviceKind.STEAM_CABINET}
    assert [d.device_id for d in focused.judged(DeviceKind.LINE_METER)] == []
    found = {(f.device_id, f.rule) for f in run_detectors(focused, catalogue(), at(minutes=6))}
    # The meter's own rules are not judged; packing (across cabinet and meter) still is.
    assert {d for d, r in found if r.startswith(("data.", "device."))} == {"c1"}
    assert ("m1", "disinfection.released_undisinfected") in found
