"""`weijian eval` machinery: a small labelled scenario through broker, ingest and detectors."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from weijian.config import Settings
from weijian.simulator import evaluate, match
from weijian.simulator.device import Outgoing, connect_message
from weijian.simulator.engine import MemorySink, Simulation
from weijian.simulator.evaluate import (
    CountingSink,
    PartStore,
    ScenarioEvaluation,
    ScenarioResult,
    _hear_all,
    _Job,
    evaluate_paths,
    next_disjoint,
    split_sites,
)
from weijian.simulator.labels import Label
from weijian.simulator.live import plants_scenario
from weijian.simulator.matcher import AlertRecord
from weijian.simulator.plan import plan_scenario
from weijian.simulator.scenario import Scenario, load_scenario


def test_a_short_hold_is_caught_and_nothing_else_is_raised(settings: Settings) -> None:
    scenario = plants_scenario(
        2,
        fault="under_temp",
        start=datetime(2026, 11, 23, 1, 0, tzinfo=UTC),
        duration=timedelta(hours=1, minutes=30),
    )
    result = ScenarioEvaluation(
        settings, scenario, step=timedelta(seconds=30), scan=timedelta(minutes=2)
    ).run()
    assert [label.rule for label in result.labels] == ["disinfection.hold_time_short"]
    score = match(result.labels, result.alerts).score()
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert result.messages > 500
    # Judged by the stream in the step that brought the cabinet's first reading after the
    # batch end (10 s interval), however busy the machine: simulated time, not wall time.
    assert score.latency_p50_s is not None
    assert score.latency_p50_s <= 30 + 10


class _Ears:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    def heard(self, payload: str) -> None:
        self.payloads.append(payload)


def test_a_step_waits_for_every_announcement_of_what_is_committed(settings: Settings) -> None:
    # The listener's backend may deliver a commit's NOTIFY after the writer saw the commit.
    listener = psycopg.connect(settings.database_url, autocommit=True)
    listener.execute("LISTEN weijian_ingest")

    def announce_late() -> None:
        time.sleep(0.3)
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            for i in range(3):
                conn.execute("SELECT pg_notify('weijian_ingest', %s)", (f'{{"d{i}": null}}',))

    sender = threading.Thread(target=announce_late)
    sender.start()
    ears = _Ears()
    try:
        heard = _hear_all(listener, ears, 0, 3)  # type: ignore[arg-type]
    finally:
        sender.join()
        listener.close()
    assert heard == 3
    assert ears.payloads == ['{"d0": null}', '{"d1": null}', '{"d2": null}']


def test_announcements_beyond_those_asked_for_are_counted(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    # Four commits' announcements already waiting in one packet while a step asks for two
    # (the other two belong to commits its count did not include yet): all four are taken,
    # and the next step does not wait for announcements it already took.
    listener = psycopg.connect(settings.database_url, autocommit=True)
    listener.execute("LISTEN weijian_ingest")
    with psycopg.connect(settings.database_url) as conn:
        for i in range(4):
            conn.execute("SELECT pg_notify('weijian_ingest', %s)", (f'{{"d{i}": null}}',))
    ears = _Ears()
    try:
        first = _hear_all(listener, ears, 0, 2)  # type: ignore[arg-type]
        second = _hear_all(listener, ears, first, 4)  # type: ignore[arg-type]
    finally:
        listener.close()
    assert second == 4
    assert len(ears.payloads) == 4
    assert "not delivered" not in caplog.text


def test_scenarios_sharing_devices_never_run_at_once() -> None:
    a, b, c = frozenset({"plant-a-steam-1"}), frozenset({"plant-b-ir-1"}), frozenset({"x"})
    # a is running: the next waiting one that shares no device starts, the clashing one waits.
    assert next_disjoint([a | b, c], [a]) == 1
    assert next_disjoint([a, b], [a | c]) == 1
    assert next_disjoint([a], [a]) is None
    # Nothing running: the first in line starts.
    assert next_disjoint([a, b], []) == 0
    assert next_disjoint([], [a]) is None


def test_library_scenarios_that_share_devices_are_told_apart() -> None:
    root = Path(__file__).resolve().parents[2] / "scenarios"
    jobs = {
        name: _Job(
            Settings(),
            root / f"{name}.yaml",
            load_scenario(root / f"{name}.yaml"),
            timedelta(seconds=10),
            False,
            None,
        )
        for name in ("faults_thermal", "clean_plants", "faults_waste")
    }
    assert jobs["faults_thermal"].accounts & jobs["clean_plants"].accounts
    assert (
        next_disjoint(
            [jobs["clean_plants"].accounts, jobs["faults_waste"].accounts],
            [jobs["faults_thermal"].accounts],
        )
        == 1
    )


def test_the_counting_sink_counts_every_message_ingest_will_receive() -> None:
    # The connect's online status and the Last Will the broker publishes on a will-disconnect
    # reach ingest like any message; a plain disconnect sends nothing.
    broker = MemorySink()
    sink = CountingSink(broker)
    sink.send(
        [
            connect_message(0.0, "s/d"),
            Outgoing(1.0, "s/d", "telemetry", b"{}"),
            Outgoing(2.0, "s/d", "status", b"", "disconnect_will"),
            Outgoing(3.0, "s/d", "status", b"", "disconnect"),
        ]
    )
    assert sink.published == 3
    assert sink.published == len(broker.messages)  # what the broker passes on: three


def test_a_city_splits_into_parts_of_about_equal_devices() -> None:
    city = load_scenario(Path("scenarios/clean_city_week.yaml"))
    parts = split_sites(city, 2)
    assert [p.device_count() for p in parts] == [40, 40]
    keys = [s.key for p in parts for s in p.sites]
    assert sorted(keys) == sorted(s.key for s in city.sites)
    for part in parts:  # each part keeps the scenario's order of its sites
        order = [s.key for s in city.sites if s.key in {x.key for x in part.sites}]
        assert [s.key for s in part.sites] == order
    assert split_sites(city, 1) == [city]
    assert len(split_sites(city, 50)) == len(city.sites)
    with pytest.raises(ValueError, match="at least 1"):
        split_sites(city, 0)


def test_parts_plan_and_send_exactly_what_the_whole_scenario_does() -> None:
    whole = load_scenario(Path("scenarios/faults_data.yaml"))
    parts = split_sites(whole, 3)
    assert len(parts) == 3

    labels = sorted(repr(lb) for p in parts for lb in plan_scenario(p).labels)
    assert labels == sorted(repr(lb) for lb in plan_scenario(whole).labels)
    assert sorted(f.id or "" for p in parts for f in p.faults) == sorted(
        whole.fault_id(i) for i in range(len(whole.faults))
    )

    def sent(scenario: Scenario) -> dict[str, list[bytes]]:
        sink = MemorySink()
        Simulation(scenario, sink=sink, step=timedelta(seconds=60), progress=False).run()
        out: dict[str, list[bytes]] = {}
        for message in sink.messages:
            out.setdefault(message.device, []).append(message.payload)
        return out

    city = load_scenario(Path("scenarios/clean_city_week.yaml"))
    city = city.model_copy(update={"duration": timedelta(hours=6)})
    together = sent(city)
    apart: dict[str, list[bytes]] = {}
    for part in split_sites(city, 3):
        apart.update(sent(part))
    assert apart == together


def test_a_scenario_evaluated_in_parts_is_scored_as_one(settings: Settings, tmp_path: Path) -> None:
    scenario = plants_scenario(
        2,
        fault="under_temp",
        start=datetime(2026, 11, 23, 1, 0, tzinfo=UTC),
        duration=timedelta(hours=1, minutes=30),
    )
    reported: list[ScenarioResult] = []
    store = PartStore(tmp_path)
    (result,) = evaluate_paths(
        settings,
        [(Path("plants.yaml"), scenario)],
        step=timedelta(seconds=30),
        scan=timedelta(minutes=2),
        parts=2,
        on_result=reported.append,
        store=store,
    )
    assert reported == [result]
    assert result.scenario == scenario
    assert [label.rule for label in result.labels] == ["disinfection.hold_time_short"]
    score = match(result.labels, result.alerts).score()
    assert (score.tp, score.fp, score.fn) == (1, 0, 0)
    assert result.messages > 500

    # Each part was kept as it finished; the same run again takes both from the store
    # (evaluated afresh, the wall time could not be the same to the microsecond).
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"{scenario.name}.part-1-of-2.json",
        f"{scenario.name}.part-2-of-2.json",
    ]
    (again,) = evaluate_paths(
        settings,
        [(Path("plants.yaml"), scenario)],
        step=timedelta(seconds=30),
        scan=timedelta(minutes=2),
        parts=2,
        store=store,
    )
    assert again == result


def test_a_stored_part_is_reused_only_for_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scenario = plants_scenario(
        2,
        fault="under_temp",
        start=datetime(2026, 11, 23, 1, 0, tzinfo=UTC),
        duration=timedelta(hours=1),
    )
    first, second = split_sites(scenario, 2)
    settings = Settings()
    job = _Job(settings, Path("p.yaml"), first, timedelta(seconds=10), False, None, "1/2")
    label = Label(
        "disinfection.hold_time_short",
        "plant-1",
        "cabinet",
        datetime(2026, 11, 23, 2, 0, tzinfo=UTC),
        datetime(2026, 11, 23, 2, 15, tzinfo=UTC),
        scenario.name,
        "f1",
    )
    alert = AlertRecord(
        "disinfection.hold_time_short",
        "plant-1",
        "cabinet",
        datetime(2026, 11, 23, 2, 1, tzinfo=UTC),
        severity="major",
    )
    result = ScenarioResult(first, [label], [alert], 1234, 56.5, 40.25, ["a note"])
    store = PartStore(tmp_path)
    assert store.load(job) is None  # nothing kept yet
    store.save(job, result)
    assert store.load(job) == result
    for other in (
        replace(job, step=timedelta(seconds=30)),
        replace(job, scan=timedelta(minutes=1)),
        replace(job, scenario=first.model_copy(update={"seed": first.seed + 1})),
    ):
        assert store.path(other) == store.path(job)
        assert store.load(other) is None
    assert store.load(replace(job, scenario=second, part="2/2")) is None
    with monkeypatch.context() as patched:  # kept by other code
        patched.setattr(evaluate, "code_digest", lambda: "0" * 64)
        assert store.load(job) is None
    assert store.load(job) == result
    store.path(job).write_text("{not json")
    assert store.load(job) is None
