"""The scenario library: every rule covered twice on different sites; faults do not interfere."""

from __future__ import annotations

import itertools
from collections import defaultdict
from pathlib import Path

import pytest

from tests.simulator.helpers import run
from tests.simulator.oracle import violations
from weijian.alerts.rules import RULES
from weijian.alerts.service import REOPEN_WITHIN
from weijian.simulator.labels import Label
from weijian.simulator.plan import plan_scenario
from weijian.simulator.scenario import load_scenario, load_scenarios

LIBRARY = Path(__file__).resolve().parents[2] / "scenarios"
# Statistical rule: no fault of its own (its false alarms show in the clean scenarios).
_UNLABELLED = {"behaviour.anomaly"}


def test_library_plans_and_covers_every_rule_twice() -> None:
    covered: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for path, sc in load_scenarios(LIBRARY):
        plan = plan_scenario(sc)
        assert sc.name == path.stem
        for label in plan.labels:
            assert label.rule in RULES
            covered[label.rule].add((sc.name, label.site))
    assert set(covered) == set(RULES) - _UNLABELLED
    for rule, where in covered.items():
        assert len(where) >= 2, rule


def test_labels_of_one_fingerprint_are_separate_incidents() -> None:
    # The platform folds violations of one (rule, site, device) less than REOPEN_WITHIN apart
    # into one alert; two faults that close would rightly get one alert for two labels.
    for _, sc in load_scenarios(LIBRARY):
        by_target: dict[tuple[str, str, str | None], list[Label]] = defaultdict(list)
        for label in plan_scenario(sc).labels:
            by_target[(label.rule, label.site, label.device)].append(label)
        for target, labels in by_target.items():
            labels.sort(key=lambda lb: lb.detectable_at)
            for a, b in itertools.pairwise(labels):
                assert b.earliest - a.window_end > REOPEN_WITHIN, (sc.name, target)


def test_clean_scenarios_exist() -> None:
    clean = [sc for _, sc in load_scenarios(LIBRARY) if not sc.faults]
    assert len(clean) >= 3
    city = load_scenario(LIBRARY / "clean_city_week.yaml")
    assert len(city.sites) == 20
    assert city.duration.days == 7
    demo = load_scenario(LIBRARY / "demo.yaml")
    kinds = [s.kind.value for s in demo.sites]
    assert kinds.count("disinfection_plant") == 3
    assert kinds.count("medical_institution") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "faults_thermal",
        "faults_line",
        "faults_waste",
        "faults_data",
        "demo",
        "clean_plants",
        "clean_hospitals",
    ],
)
def test_library_scenario_violates_exactly_its_labels(name: str) -> None:
    sc = load_scenario(LIBRARY / f"{name}.yaml")
    sim, sink = run(sc)
    assert violations(sc, sink) == {(lb.rule, lb.site, lb.device) for lb in sim.labels}
