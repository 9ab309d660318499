"""Site profiles: the limits in force for a site and its devices, changed with a record."""

from __future__ import annotations

from typing import Any

from weijian.alerts import repository
from weijian.alerts.profiles import default_profile
from weijian.db.connection import AsyncConn
from weijian.devices import service as devices


class ProfileError(ValueError):
    """An unknown setting, a value of the wrong type, or an unknown site/device."""


def parse_value(key: str, text: str, default: Any) -> Any:
    """A `key=value` text as the type of the setting's default ("default" removes an override)."""
    if isinstance(default, bool):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise ProfileError(f"{key} is true or false, not {text!r}")
    if isinstance(default, int | float) or default is None:
        try:
            number = float(text)
        except ValueError:
            raise ProfileError(f"{key} is a number, not {text!r}") from None
        if number < 0:
            raise ProfileError(f"{key} cannot be negative")
        return int(number) if isinstance(default, int) and number.is_integer() else number
    return text


def parse_assignments(site_kind: str, assignments: list[str]) -> dict[str, Any]:
    """`["steam.min_hold_s=900", ...]` → typed overrides, checked against the kind's settings."""
    defaults = default_profile(site_kind)
    values: dict[str, Any] = {}
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep:
            raise ProfileError(f"expected key=value, got {item!r}")
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ProfileError(f"unknown setting {key!r} for a {site_kind}; one of: {known}")
        values[key] = None if text.strip() == "default" else parse_value(key, text, defaults[key])
    return values


async def effective(*, conn: AsyncConn, site_id: str) -> dict[str, Any]:
    """Defaults, site overrides and per-device overrides of a site, side by side."""
    site = await devices.get_site(conn=conn, site_id=site_id)
    if site is None:
        raise ProfileError(f"no site {site_id!r}")
    defaults = default_profile(site.kind)
    device_overrides = {
        d.id: d.profile for d in await devices.list_devices(conn=conn, site_id=site_id) if d.profile
    }
    return {
        "site_id": site.id,
        "kind": site.kind.value,
        "defaults": defaults,
        "site_overrides": site.profile,
        "device_overrides": device_overrides,
        "effective": {**defaults, **site.profile},
        "changes": await repository.profile_changes(conn=conn, site_id=site_id),
    }


async def update(
    *, conn: AsyncConn, actor: str, site_id: str, device_id: str | None, assignments: list[str]
) -> dict[str, Any]:
    """Apply `key=value` overrides to a site (or one of its devices), recording each change."""
    site = await devices.get_site(conn=conn, site_id=site_id)
    if site is None:
        raise ProfileError(f"no site {site_id!r}")
    values = parse_assignments(site.kind.value, assignments)
    if device_id is not None:
        device = await devices.get_device(conn=conn, device_id=device_id)
        if device is None or device.site_id != site_id:
            raise ProfileError(f"no device {device_id!r} at site {site_id!r}")
        current = dict(device.profile)
    else:
        current = dict(site.profile)
    for key, value in values.items():
        old = current.get(key)
        if value is None:
            current.pop(key, None)
        else:
            current[key] = value
        if old != value:
            await repository.record_profile_change(
                conn=conn,
                actor=actor,
                site_id=site_id if device_id is None else None,
                device_id=device_id,
                key=key,
                old=old,
                new=value,
            )
    if device_id is not None:
        await devices.set_device_profile(conn=conn, device_id=device_id, profile=current)
    else:
        await devices.set_site_profile(conn=conn, site_id=site_id, profile=current)
    return await effective(conn=conn, site_id=site_id)
