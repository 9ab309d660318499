"""Small factories for test data, going through the real services."""

from __future__ import annotations

import uuid
from typing import Any

from weijian.config import Settings
from weijian.db.connection import connect
from weijian.devices import service as devices
from weijian.devices.broker import DynamicSecurity
from weijian.devices.models import DeviceCreate, DeviceCredentials, SiteCreate
from weijian.users import service as users
from weijian.users.models import UserCreate


async def make_site(
    settings: Settings,
    *,
    kind: str = "disinfection_plant",
    district: str = "城东区",
    phones: list[str] | None = None,
    site_id: str | None = None,
) -> str:
    conn = await connect(settings.database_url)
    async with conn:
        site = await devices.add_site(
            conn=conn,
            new=SiteCreate(
                id=site_id or f"s-{uuid.uuid4().hex[:6]}",
                name="测试消毒中心",
                kind=kind,
                district=district,
                phones=phones if phones is not None else ["13800000000"],
            ),
        )
    return site.id


async def make_device(
    settings: Settings, site_id: str, kind: str = "steam_cabinet", device_id: str | None = None
) -> DeviceCredentials:
    """Register a device with real broker credentials (deleted again by `drop_devices`)."""
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
    conn = await connect(settings.database_url)
    async with conn, conn.transaction():
        _, credentials = await devices.add_device(
            conn=conn,
            new=DeviceCreate(
                id=device_id or f"d-{uuid.uuid4().hex[:10]}", site_id=site_id, kind=kind
            ),
            store=store,
            topic_root=settings.mqtt_topic_root,
            broker_url=settings.broker_public_url,
        )
    return credentials


async def make_user(settings: Settings, **fields: Any) -> str:
    values: dict[str, Any] = {
        "username": f"u{uuid.uuid4().hex[:8]}",
        "name": "张伟",
        "role": "inspector",
        "password": "correct-horse",
        "district": "城东区",
        "phone": "13900000000",
    }
    values.update(fields)
    conn = await connect(settings.database_url)
    async with conn:
        user = await users.add_user(conn=conn, new=UserCreate(**values))
    return user.username


def drop_devices(settings: Settings, device_ids: list[str]) -> None:
    store = DynamicSecurity(settings.mqtt, settings.mqtt_topic_root)
    for device_id in device_ids:
        store.delete_device(device_id)
