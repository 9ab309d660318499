"""The simulator meets the platform: scenario sites and devices registered in the registry."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from weijian.config import Settings
from weijian.db.connection import AsyncConn, connect
from weijian.devices import service as devices
from weijian.devices.broker import DynamicSecurity
from weijian.devices.models import DeviceCreate, SiteCreate
from weijian.simulator.plan import device_ref
from weijian.simulator.provision import DeviceCredentials
from weijian.simulator.scenario import Scenario

_NOT_ID = re.compile(r"[^a-z0-9-]+")


class SharedAccount:
    """Credential store for simulated devices that publish through the platform's own account.

    Used by evaluation runs, which test detection rather than device authentication; the
    devices are registered as usual, only no broker account is made for each.
    """

    def create_device(self, device_id: str, password: str, topics: list[str]) -> None:
        del device_id, password, topics

    def set_password(self, device_id: str, password: str) -> None:
        del device_id, password

    def delete_device(self, device_id: str) -> None:
        del device_id


def platform_id(*parts: str) -> str:
    """A registry id (lowercase letters, digits, '-') from scenario keys."""
    return _NOT_ID.sub("-", "-".join(parts).lower()).strip("-")[:63]


class RegistryProvisioner:
    """Registers a scenario's sites and devices (idempotently) and returns their credentials.

    With `own_credentials` every device gets its own broker account and ACL, exactly as
    `weijian devices add` does (an existing device gets a new password); otherwise devices
    publish through the platform's account.
    """

    def __init__(
        self, settings: Settings, *, own_credentials: bool = True, phones: list[str] | None = None
    ) -> None:
        self._settings = settings
        self._own = own_credentials
        self._phones = phones or []

    def provision(self, scenario: Scenario) -> dict[str, DeviceCredentials]:
        return asyncio.run(self._provision(scenario))

    async def _provision(self, scenario: Scenario) -> dict[str, DeviceCredentials]:
        conn = await connect(self._settings.database_url)
        async with conn:
            out: dict[str, DeviceCredentials] = {}
            for site in scenario.sites:
                site_id = platform_id(site.key)
                await self._site(conn, scenario, site_id, site)
                for device in site.devices:
                    async with conn.transaction():
                        creds = await self._device(
                            conn, site_id, platform_id(site.key, device.key), device
                        )
                    out[device_ref(site.key, device.key)] = creds
            return out

    async def _site(self, conn: AsyncConn, scenario: Scenario, site_id: str, site: Any) -> None:
        if await devices.get_site(conn=conn, site_id=site_id) is None:
            await devices.add_site(
                conn=conn,
                new=SiteCreate(
                    id=site_id,
                    name=site.name,
                    kind=site.kind,
                    district=site.district,
                    address=getattr(site, "address", None),
                    phones=self._phones,
                ),
            )
        await devices.set_site_profile(
            conn=conn, site_id=site_id, profile=dict(scenario.site_profile(site.key))
        )

    async def _device(
        self, conn: AsyncConn, site_id: str, device_id: str, device: Any
    ) -> DeviceCredentials:
        settings = self._settings
        store = (
            DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
            if self._own
            else SharedAccount()
        )
        common = {"topic_root": settings.mqtt_topic_root, "broker_url": settings.broker_public_url}
        if await devices.get_device(conn=conn, device_id=device_id) is None:
            _, issued = await devices.add_device(
                conn=conn,
                new=DeviceCreate(
                    id=device_id,
                    site_id=site_id,
                    kind=device.kind,
                    interval_s=max(1, round(device.interval_s)),
                ),
                store=store,
                **common,
            )
        else:
            issued = await devices.rotate_credentials(
                conn=conn, device_id=device_id, store=store, **common
            )
        if device.profile:
            await devices.set_device_profile(
                conn=conn, device_id=device_id, profile=dict(device.profile)
            )
        if self._own:
            return DeviceCredentials.from_topics(
                device_id=issued.device_id,
                username=issued.username,
                password=issued.password,
                broker=issued.broker,
                topics=issued.topics,
                site_id=site_id,
            )
        target = settings.mqtt
        return DeviceCredentials(
            device_id,
            target.username or "",
            target.password or "",
            target.public_url,
            settings.mqtt_topic_root,
            site_id,
        )
