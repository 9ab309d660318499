"""Running simulated sites against the live platform: `weijian simulate` and `make demo`.

A live run may start in the past: the devices first send what they measured since the start
(as fast as the broker takes it, like a backlog after an outage) and then follow the wall
clock, sending each step's messages once its simulated time has passed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from weijian.simulator.engine import MessageSink, Simulation
from weijian.simulator.scenario import Scenario, parse_scenario

log = logging.getLogger(__name__)


@dataclass
class LiveStats:
    messages: int = 0
    caught_up_at: float | None = None


def plants_scenario(
    count: int, *, fault: str | None, start: datetime, duration: timedelta, seed: int = 1
) -> Scenario:
    """`count` plants with one steam cabinet each, working all day; `fault` on the first plant."""
    if count < 1:
        raise ValueError("--plants must be at least 1")
    sites = [
        {
            "key": f"plant-{i + 1}",
            "name": f"第{i + 1}餐具消毒中心",
            "kind": "disinfection_plant",
            "district": "城东区" if i % 2 == 0 else "城西区",
            "shifts": ["00:00-23:59"],
            "devices": [{"key": "steam-1", "kind": "steam_cabinet"}],
        }
        for i in range(count)
    ]
    data: dict[str, Any] = {
        "name": f"plants-{count}",
        "seed": seed,
        "start": start.isoformat(),
        "duration": f"{int(duration.total_seconds())}s",
        "sites": sites,
        "faults": [],
    }
    if fault is not None:
        data["faults"].append({"type": fault, "at": "0s", "site": "plant-1", "device": "steam-1"})
    return parse_scenario(data, "--plants")


def run_following_clock(
    simulation: Simulation,
    sink: MessageSink,
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    stop: Callable[[], bool] = lambda: False,
) -> LiveStats:
    """Send every step once its simulated time has passed on the wall clock (real time).

    Steps already in the past go out at once (the catch-up); device timestamps stay true.
    """
    stats = LiveStats()
    try:
        for step_end, messages in simulation.steps():
            wait = (step_end - now()).total_seconds()
            if wait > 0 and stats.caught_up_at is None:
                stats.caught_up_at = time.monotonic()
                log.info("simulator caught up with the wall clock; now in real time")
            while wait > 0 and not stop():
                time.sleep(min(wait, 0.5))
                wait = (step_end - now()).total_seconds()
            if stop():
                break
            sink.send(messages)
            stats.messages += sum(1 for m in messages if m.action in ("publish", "connect"))
    finally:
        sink.close()
    return stats
