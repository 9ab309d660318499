"""Registry logic: registering sites, provisioning devices with broker credentials."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from weijian.db.connection import AsyncConn
from weijian.devices import repository
from weijian.devices.broker import CredentialStore
from weijian.devices.kinds import KINDS, DeviceKind
from weijian.devices.models import Device, DeviceCreate, DeviceCredentials, Site, SiteCreate
from weijian.mqtt import topic

_ABBREVIATION = {
    DeviceKind.STEAM_CABINET: "stm",
    DeviceKind.INFRARED_CABINET: "irc",
    DeviceKind.DISH_MACHINE: "dsh",
    DeviceKind.CHLORINE_TANK: "clt",
    DeviceKind.LINE_METER: "lnm",
    DeviceKind.WASTE_STORE_ENV: "wse",
    DeviceKind.WASTE_SCALE: "wsc",
}


class RegistryError(ValueError):
    """A registry request that cannot be carried out (unknown site, duplicate id, ...)."""


def new_password() -> str:
    return secrets.token_urlsafe(18)


async def add_site(*, conn: AsyncConn, new: SiteCreate) -> Site:
    """Register a supervised unit; the id is generated unless given."""
    site_id = new.id or f"s-{secrets.token_hex(3)}"
    if await repository.site_exists(conn=conn, site_id=site_id):
        raise RegistryError(f"site {site_id!r} already exists")
    return await repository.insert_site(
        conn=conn,
        site_id=site_id,
        name=new.name,
        kind=new.kind.value,
        district=new.district,
        address=new.address,
        lat=new.lat,
        lon=new.lon,
        phones=new.phones,
    )


def device_topics(topic_root: str, device_id: str) -> dict[str, str]:
    return {ch: topic(topic_root, device_id, ch) for ch in ("telemetry", "events", "status")}


async def add_device(
    *, conn: AsyncConn, new: DeviceCreate, store: CredentialStore, topic_root: str, broker_url: str
) -> tuple[Device, DeviceCredentials]:
    """Register a device and issue its broker credentials and ACL.

    The row is written in the caller's transaction and the broker account is created before
    the caller commits, so a broker failure leaves no half-registered device behind.
    """
    site = await repository.get_site(conn=conn, site_id=new.site_id)
    if site is None:
        raise RegistryError(f"no site {new.site_id!r}; register it first with `weijian sites add`")
    spec = KINDS[new.kind]
    if spec.site_kind != site.kind:
        raise RegistryError(
            f"a {new.kind.value} belongs to a {spec.site_kind.value}, but site {site.id!r} is a "
            f"{site.kind.value}"
        )
    device_id = new.id or f"{_ABBREVIATION[new.kind]}-{secrets.token_hex(4)}"
    if await repository.get_device(conn=conn, device_id=device_id) is not None:
        raise RegistryError(f"device {device_id!r} already exists")
    device = await repository.insert_device(
        conn=conn,
        device_id=device_id,
        site_id=site.id,
        kind=new.kind.value,
        name=new.name,
        interval_s=new.interval_s or spec.interval_s,
    )
    password = new_password()
    topics = device_topics(topic_root, device_id)
    store.create_device(device_id, password, list(topics.values()))
    return device, DeviceCredentials(
        device_id=device_id, username=device_id, password=password, broker=broker_url, topics=topics
    )


async def rotate_credentials(
    *, conn: AsyncConn, device_id: str, store: CredentialStore, topic_root: str, broker_url: str
) -> DeviceCredentials:
    """Issue a new password for a device; its open sessions are closed."""
    device = await repository.get_device(conn=conn, device_id=device_id)
    if device is None:
        raise RegistryError(f"no device {device_id!r}")
    password = new_password()
    store.set_password(device_id, password)
    await repository.mark_credentials_issued(conn=conn, device_id=device_id, at=datetime.now(UTC))
    return DeviceCredentials(
        device_id=device_id,
        username=device_id,
        password=password,
        broker=broker_url,
        topics=device_topics(topic_root, device_id),
    )


async def list_sites(*, conn: AsyncConn, district: str | None = None) -> list[Site]:
    return await repository.list_sites(conn=conn, district=district)


async def list_devices(*, conn: AsyncConn, site_id: str | None = None) -> list[Device]:
    return await repository.list_devices(conn=conn, site_id=site_id)


async def get_site(*, conn: AsyncConn, site_id: str) -> Site | None:
    return await repository.get_site(conn=conn, site_id=site_id)


async def get_device(*, conn: AsyncConn, device_id: str) -> Device | None:
    return await repository.get_device(conn=conn, device_id=device_id)


# -- reads for the API, scoped to the sites a user may see (None: every site) ----------------


async def list_sites_in(
    *, conn: AsyncConn, site_ids: Sequence[str] | None, district: str | None = None
) -> list[Site]:
    return await repository.list_sites(conn=conn, district=district, site_ids=site_ids)


async def list_devices_in(
    *, conn: AsyncConn, site_ids: Sequence[str] | None, site_id: str | None = None
) -> list[Device]:
    return await repository.list_devices(conn=conn, site_id=site_id, site_ids=site_ids)


async def reading_series(
    *,
    conn: AsyncConn,
    device_id: str,
    metric: str,
    start: datetime,
    end: datetime,
    bucket: timedelta,
) -> list[dict[str, Any]]:
    """avg/min/max/count of one metric per time bucket (evidence charts)."""
    return await repository.reading_series(
        conn=conn, device_id=device_id, metric=metric, start=start, end=end, bucket=bucket
    )


async def presence_counts(
    *, conn: AsyncConn, site_ids: Sequence[str] | None = None
) -> dict[str, int]:
    """{"registered": n, "online": m} for 在线率."""
    return await repository.presence_counts(conn=conn, site_ids=site_ids)


async def set_site_profile(*, conn: AsyncConn, site_id: str, profile: dict[str, Any]) -> None:
    """Replace a site's limit overrides (callers record the change; see alerts.tuning)."""
    await repository.set_site_profile(conn=conn, site_id=site_id, profile=profile)


async def set_device_profile(*, conn: AsyncConn, device_id: str, profile: dict[str, Any]) -> None:
    """Replace a device's limit overrides."""
    await repository.set_device_profile(conn=conn, device_id=device_id, profile=profile)
