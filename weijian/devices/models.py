"""Shapes of the registry: supervised sites and their devices."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from weijian.devices.kinds import DeviceKind, SiteKind

_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_PHONE = re.compile(r"^\+?[0-9][0-9-]{4,19}$")


def check_id(value: str) -> str:
    if not _ID.match(value):
        raise ValueError(
            f"invalid id {value!r}: use 2-63 lowercase letters, digits and '-' "
            "(it is an MQTT username)"
        )
    return value


class SiteCreate(BaseModel):
    """A supervised unit to register."""

    id: str | None = None
    name: str = Field(min_length=1, max_length=200)
    kind: SiteKind
    district: str = Field(min_length=1, max_length=100)
    address: str | None = None
    lat: float | None = Field(default=None, ge=-90, le=90)
    lon: float | None = Field(default=None, ge=-180, le=180)
    phones: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value)

    @field_validator("phones")
    @classmethod
    def _phones(cls, value: list[str]) -> list[str]:
        for phone in value:
            if not _PHONE.match(phone):
                raise ValueError(f"invalid phone number {phone!r}")
        return value


class Site(BaseModel):
    id: str
    name: str
    kind: SiteKind
    district: str
    address: str | None
    lat: float | None
    lon: float | None
    phones: list[str]
    profile: dict[str, Any]
    created_at: datetime


class DeviceCreate(BaseModel):
    id: str | None = None
    site_id: str
    kind: DeviceKind
    name: str | None = None
    interval_s: int | None = Field(default=None, gt=0, le=86400)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value)


class Device(BaseModel):
    id: str
    site_id: str
    kind: DeviceKind
    name: str | None
    interval_s: int
    profile: dict[str, Any]
    created_at: datetime
    online: bool | None
    status_at: datetime | None
    last_seen_at: datetime | None


class DeviceCredentials(BaseModel):
    """What a device (or its vendor) needs to connect; the password is shown only once."""

    device_id: str
    username: str
    password: str
    broker: str
    topics: dict[str, str]
