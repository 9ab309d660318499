"""Who each simulated device is on the broker: credentials from a provisioning callback."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from weijian.config import LOCAL_BROKER_PASSWORD
from weijian.simulator.plan import device_ref
from weijian.simulator.scenario import Scenario


@dataclass(frozen=True)
class DeviceCredentials:
    """How one simulated device connects: its id (MQTT username and topic segment on the
    platform), password, broker and topic root; `site_id` is the platform id of its site."""

    device_id: str
    username: str
    password: str
    broker_url: str
    topic_root: str = "weijian/v1"
    site_id: str | None = None

    def topic(self, channel: str) -> str:
        return f"{self.topic_root}/{self.device_id}/{channel}"

    @classmethod
    def from_topics(
        cls,
        *,
        device_id: str,
        username: str,
        password: str,
        broker: str,
        topics: Mapping[str, str],
        site_id: str | None = None,
    ) -> DeviceCredentials:
        """From what `weijian devices add` prints (its `topics` map gives the topic root)."""
        suffix = f"/{device_id}/telemetry"
        telemetry = topics["telemetry"]
        if not telemetry.endswith(suffix):
            raise ValueError(f"telemetry topic {telemetry!r} does not end with {suffix!r}")
        return cls(device_id, username, password, broker, telemetry[: -len(suffix)], site_id)


class Provisioner(Protocol):
    """Registers a scenario's sites and devices on the platform and returns their credentials,
    keyed by device ref "<site key>/<device key>" (each carrying its platform site id)."""

    def provision(self, scenario: Scenario) -> dict[str, DeviceCredentials]: ...


class StaticProvisioner:
    """Every device on one account (the platform's, by default), ids "<prefix>-<site>-<device>".

    For tests and load runs against a broker only; the platform itself expects each device
    registered with its own credentials.
    """

    def __init__(
        self,
        *,
        broker_url: str = "mqtt://127.0.0.1:1884",
        username: str = "weijian",
        password: str = LOCAL_BROKER_PASSWORD,
        topic_root: str = "weijian/v1",
        prefix: str = "sim",
    ) -> None:
        self.broker_url = broker_url
        self.username = username
        self.password = password
        self.topic_root = topic_root
        self.prefix = prefix

    def provision(self, scenario: Scenario) -> dict[str, DeviceCredentials]:
        out: dict[str, DeviceCredentials] = {}
        for site in scenario.sites:
            for device in site.devices:
                device_id = f"{self.prefix}-{site.key}-{device.key}"
                out[device_ref(site.key, device.key)] = DeviceCredentials(
                    device_id,
                    self.username,
                    self.password,
                    self.broker_url,
                    self.topic_root,
                    site.key,
                )
        return out


def id_maps(
    credentials: Mapping[str, DeviceCredentials],
) -> tuple[dict[str, tuple[str, str]], dict[str, str]]:
    """(platform device id → (site key, device key), platform site id → site key)."""
    devices: dict[str, tuple[str, str]] = {}
    sites: dict[str, str] = {}
    for ref, cred in credentials.items():
        site, _, device = ref.partition("/")
        devices[cred.device_id] = (site, device)
        sites[cred.site_id or site] = site
    return devices, sites
