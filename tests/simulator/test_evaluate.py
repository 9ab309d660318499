"""`weijian eval` machinery: a small labelled scenario through broker, ingest and detectors."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from weijian.config import Settings
from weijian.simulator import match
from weijian.simulator.evaluate import ScenarioEvaluation
from weijian.simulator.live import plants_scenario


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
