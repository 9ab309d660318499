"""The engine: messages on the wire, seq and clocks, steps, pacing and the on_step hook."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime, timedelta

import orjson
import pytest

from tests.simulator.helpers import hospital, items, plant, run, scenario
from weijian.clock import ManualClock
from weijian.simulator.device import Outgoing
from weijian.simulator.engine import MemorySink, Simulation, default_step
from weijian.simulator.plan import plan_scenario

_STEAM = {"key": "steam-1", "kind": "steam_cabinet"}


def test_payloads_follow_the_protocol() -> None:
    _, sink = run(scenario([plant(devices=[_STEAM]), hospital()], duration="12h"))
    reading = orjson.loads(sink.of("p/steam-1", "telemetry")[0].payload)
    assert set(reading) == {"seq", "ts", "metrics"}
    assert isinstance(reading["ts"], int)
    assert reading["ts"] > 1.7e12
    assert set(reading["metrics"]) == {"temp_c", "door_open"}
    event = orjson.loads(sink.of("h/scale-1", "events")[0].payload)
    assert set(event) == {"seq", "ts", "type", "data"}
    assert event["type"] == "bag_in"
    assert datetime.fromisoformat(event["ts"]).utcoffset() == timedelta(hours=8)
    assert set(event["data"]) == {"bag_id", "category", "weight_kg", "dept"}
    first = sink.messages[0]
    assert (first.action, first.channel, first.payload, first.retain) == (
        "connect",
        "status",
        b'{"online":true}',
        True,
    )


def test_readings_and_events_share_one_increasing_seq() -> None:
    _, sink = run(scenario([plant(devices=[_STEAM])], duration="10h"))
    seqs = [orjson.loads(m.payload)["seq"] for m in sink.of("p/steam-1") if m.channel != "status"]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert any(m.channel == "events" for m in sink.of("p/steam-1"))


def test_device_time_is_simulated_time_with_small_drift() -> None:
    sc = scenario(
        [plant(devices=[{**_STEAM, "clock_offset": "12s", "clock_drift_ppm": 0}])], duration="2h"
    )
    _, sink = run(sc)
    for message in sink.of("p/steam-1", "telemetry"):
        ts = orjson.loads(message.payload)["ts"] / 1000
        assert ts - message.at == pytest.approx(12.0, abs=0.002)


def test_reporting_interval_override() -> None:
    sc = scenario([plant(devices=[{**_STEAM, "interval": "30s"}])], duration="1h")
    _, sink = run(sc)
    assert len(sink.of("p/steam-1", "telemetry")) == 120


def test_same_seed_same_messages() -> None:
    sc = scenario([plant(devices=[_STEAM]), hospital()], duration="8h", seed=3)
    first = [(m.device, m.payload) for m in run(sc)[1].messages]
    again = [(m.device, m.payload) for m in run(sc)[1].messages]
    assert first == again


def test_step_size_does_not_change_the_data() -> None:
    sc = scenario([plant(devices=[_STEAM])], duration="3h")
    coarse, fine = MemorySink(), MemorySink()
    Simulation(sc, sink=coarse, step=timedelta(minutes=10), progress=False).run()
    Simulation(sc, sink=fine, step=timedelta(seconds=7), progress=False).run()
    assert [m.payload for m in coarse.messages] == [m.payload for m in fine.messages]


def test_on_step_after_each_step_with_the_clock_set() -> None:
    sc = scenario([plant(devices=[_STEAM])], duration="1h")
    clock = ManualClock(sc.start)
    seen: list[tuple[datetime, datetime]] = []
    sink = MemorySink()
    sim = Simulation(
        sc,
        sink=sink,
        step=timedelta(minutes=15),
        clock=clock,
        on_step=lambda t: seen.append((t, clock.now())),
        progress=False,
    )
    stats = sim.run()
    assert [t for t, _ in seen] == [sc.start + timedelta(minutes=15 * k) for k in range(1, 5)]
    assert all(t == now for t, now in seen)
    assert stats.steps == 4
    assert stats.devices == 1
    assert stats.messages == len(sink.messages)


class _ClockWatchingSink(MemorySink):
    """Notes, for each message it is given, what the platform's clock reads at that moment."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__()
        self.clock = clock
        self.received: list[tuple[float, datetime]] = []

    def send(self, messages: Sequence[Outgoing]) -> None:
        self.received += [(m.at, self.clock.now()) for m in messages]
        super().send(messages)


def test_a_step_is_received_at_its_end_never_before_it_was_sent() -> None:
    sc = scenario([plant(devices=[_STEAM])], duration="1h")
    clock = ManualClock(sc.start)
    sink = _ClockWatchingSink(clock)
    Simulation(sc, sink=sink, step=timedelta(seconds=10), clock=clock, progress=False).run()
    assert sink.received
    for sent, received in sink.received:
        assert sent <= received.timestamp() <= sent + 10


def test_messages_of_a_step_precede_its_end() -> None:
    sim = Simulation(scenario([plant(devices=[_STEAM])], duration="30m"), progress=False)
    for end, messages in sim.steps():
        assert all(m.at < end.timestamp() for m in messages)
        assert [m.at for m in messages] == sorted(m.at for m in messages)


def test_accelerated_mode_keeps_pace() -> None:
    sc = scenario([plant(devices=[_STEAM])], duration="2m")
    started = time.monotonic()
    stats = Simulation(sc, speed=240, progress=False).run()
    assert time.monotonic() - started >= 0.45  # 120 s of simulation at ×240 is paced, not rushed
    assert stats.messages == 12 + 1


def test_default_steps() -> None:
    assert default_step(None) == timedelta(seconds=60)
    assert default_step(1) == timedelta(seconds=1)
    assert default_step(60) == timedelta(seconds=60)
    assert default_step(3600) == timedelta(seconds=60)
    with pytest.raises(ValueError, match="speed"):
        Simulation(scenario([plant(devices=[_STEAM])]), speed=0)


def test_plan_labels_sorted_and_devices_addressable() -> None:
    sc = scenario(
        [plant()],
        [
            {"type": "no_heat", "at": "13h", "site": "p", "device": "steam-2"},
            {"type": "under_temp", "at": "5h", "site": "p", "device": "steam-1"},
        ],
    )
    plan = plan_scenario(sc)
    assert [lb.fault for lb in plan.labels] == ["1-under_temp", "0-no_heat"]
    assert plan.device("p/dish-1").kind.value == "dish_machine"
    assert len(items(run(sc)[1], "p/steam-2", "events")) > 0
