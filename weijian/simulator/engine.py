"""The simulation engine: advances simulated time in steps, hands each step's messages to a sink."""

from __future__ import annotations

import heapq
import logging
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from weijian.clock import ManualClock
from weijian.simulator.device import OFFLINE, Outgoing, connect_message
from weijian.simulator.labels import Label
from weijian.simulator.plan import ScenarioPlan, plan_scenario
from weijian.simulator.scenario import Scenario
from weijian.simulator.timeutil import from_epoch

log = logging.getLogger(__name__)


class MessageSink(Protocol):
    """Where the devices' messages go: an MQTT publisher, or memory in tests."""

    def send(self, messages: Sequence[Outgoing]) -> None:
        """Deliver the messages in order; return once every publish is acknowledged."""

    def close(self) -> None:
        """Disconnect everything cleanly."""


@dataclass
class MemorySink:
    """Keeps every message, and plays the broker's part for the Last Will and retained status."""

    messages: list[Outgoing] = field(default_factory=list)
    retained: dict[str, bytes] = field(default_factory=dict)

    def send(self, messages: Sequence[Outgoing]) -> None:
        for original in messages:
            message = original
            if message.action == "disconnect":
                continue
            if message.action == "disconnect_will":
                message = Outgoing(message.at, message.device, "status", OFFLINE, retain=True)
            if message.retain:
                self.retained[message.device] = message.payload
            self.messages.append(message)

    def close(self) -> None:
        pass

    def of(self, device: str, channel: str | None = None) -> list[Outgoing]:
        return [m for m in self.messages if m.device == device and channel in (None, m.channel)]


@dataclass(frozen=True)
class RunStats:
    """What a run did."""

    scenario: str
    devices: int
    messages: int
    steps: int
    sim_start: datetime
    sim_end: datetime
    wall_s: float

    @property
    def messages_per_s(self) -> float:
        return self.messages / self.wall_s if self.wall_s > 0 else 0.0


def default_step(speed: float | None) -> timedelta:
    """One wall second per step in paced modes (1 s ≤ step ≤ 60 s); 60 s as fast as possible."""
    if speed is None:
        return timedelta(seconds=60)
    return timedelta(seconds=min(60.0, max(1.0, speed)))


class Simulation:
    """Runs a scenario: speed 1 real time, speed N accelerated, speed None as fast as possible.

    Device timestamps are simulated time in every mode. `clock` (if given) is set to a step's
    end before its messages are published, so the platform receives them at the step's end;
    once they are acknowledged `on_step(sim_time)` is called, so an evaluation harness can let
    the platform commit and run its scheduled scans at `sim_time`.
    """

    def __init__(
        self,
        scenario: Scenario | ScenarioPlan,
        *,
        sink: MessageSink | None = None,
        speed: float | None = None,
        step: timedelta | None = None,
        on_step: Callable[[datetime], None] | None = None,
        clock: ManualClock | None = None,
        progress: bool | None = None,
    ) -> None:
        if speed is not None and speed <= 0:
            raise ValueError("speed must be positive (or None for as fast as possible)")
        self.step = step or default_step(speed)
        if self.step <= timedelta(0):
            raise ValueError("step must be positive")
        self.plan = (
            scenario
            if isinstance(scenario, ScenarioPlan)
            else plan_scenario(scenario, delivery_step=self.step)
        )
        self.sink = sink if sink is not None else MemorySink()
        self.speed = speed
        self.on_step = on_step
        self.clock = clock
        self.progress = sys.stderr.isatty() if progress is None else progress

    @property
    def labels(self) -> list[Label]:
        return self.plan.labels

    @property
    def scenario(self) -> Scenario:
        return self.plan.scenario

    def steps(self) -> Iterator[tuple[datetime, list[Outgoing]]]:
        """(step end, messages of the step) for the whole scenario, without sending anything."""
        start, end = self.plan.start, self.plan.end
        width = self.step.total_seconds()
        first = [connect_message(start, d.ref) for d in self.plan.devices]
        t = start
        while t < end:
            t1 = min(t + width, end)
            per_device = [d.step(t, t1) for d in self.plan.devices]
            merged = list(heapq.merge(*per_device, key=lambda m: m.at))
            if first:
                merged, first = first + merged, []
            yield from_epoch(t1), merged
            t = t1

    def run(self) -> RunStats:
        """Run the scenario to its end; close the sink."""
        wall0 = time.monotonic()
        sent = steps = 0
        total = self.plan.end - self.plan.start
        with ExitStack() as stack:
            stack.callback(self.sink.close)
            advance = self._progress(stack, total)
            for sim_time, messages in self.steps():
                if self.clock is not None:
                    # Before sending: whatever the platform takes in of this step is received
                    # at its end, never at its start (before the device sent it).
                    self.clock.set(sim_time)
                self.sink.send(messages)
                sent += sum(1 for m in messages if m.action in {"publish", "connect"})
                steps += 1
                if self.on_step is not None:
                    self.on_step(sim_time)
                advance(sim_time.timestamp() - self.plan.start)
                self._pace(wall0, sim_time.timestamp() - self.plan.start)
        return RunStats(
            self.scenario.name,
            len(self.plan.devices),
            sent,
            steps,
            self.scenario.start,
            self.scenario.end,
            time.monotonic() - wall0,
        )

    def _pace(self, wall0: float, sim_elapsed: float) -> None:
        if self.speed is None:
            return
        delay = wall0 + sim_elapsed / self.speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        elif delay < -5:
            log.debug("simulation is %.1f s behind its pace", -delay)

    def _progress(self, stack: ExitStack, total: float) -> Callable[[float], None]:
        if not self.progress:
            return lambda done: None
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        bar = stack.enter_context(
            Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                TextColumn("{task.fields[sim]}"),
                TimeRemainingColumn(),
                transient=True,
            )
        )
        task = bar.add_task(self.scenario.name, total=total, sim="")

        def advance(done: float) -> None:
            now = from_epoch(self.plan.start + done).astimezone(self.scenario.start.tzinfo)
            bar.update(task, completed=done, sim=now.strftime("%m-%d %H:%M"))

        return advance
