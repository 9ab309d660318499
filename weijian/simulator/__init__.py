"""Simulator: digital twins of the field devices, scenarios with faults and ground-truth labels,
an MQTT publisher, a load generator and the matcher that scores detection (docs/simulator.md)."""

from weijian.simulator.device import Outgoing, SimDevice
from weijian.simulator.engine import MemorySink, MessageSink, RunStats, Simulation
from weijian.simulator.faults import FAULTS, FaultType
from weijian.simulator.labels import TOLERANCE, Label
from weijian.simulator.load import LoadGenerator, LoadResult
from weijian.simulator.matcher import (
    AlertRecord,
    Evaluation,
    Score,
    alerts_from_platform,
    device_days,
    match,
    render_table,
    to_dict,
)
from weijian.simulator.plan import ScenarioPlan, device_ref, plan_scenario
from weijian.simulator.provision import DeviceCredentials, Provisioner, StaticProvisioner
from weijian.simulator.publisher import MqttPublisher, PublishError
from weijian.simulator.scenario import (
    Scenario,
    ScenarioError,
    load_scenario,
    load_scenarios,
    parse_scenario,
)

__all__ = [
    "FAULTS",
    "TOLERANCE",
    "AlertRecord",
    "DeviceCredentials",
    "Evaluation",
    "FaultType",
    "Label",
    "LoadGenerator",
    "LoadResult",
    "MemorySink",
    "MessageSink",
    "MqttPublisher",
    "Outgoing",
    "Provisioner",
    "PublishError",
    "RunStats",
    "Scenario",
    "ScenarioError",
    "ScenarioPlan",
    "Score",
    "SimDevice",
    "Simulation",
    "StaticProvisioner",
    "alerts_from_platform",
    "device_days",
    "device_ref",
    "load_scenario",
    "load_scenarios",
    "match",
    "parse_scenario",
    "plan_scenario",
    "render_table",
    "to_dict",
]
