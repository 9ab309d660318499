"""Shapes of platform users: bureau staff, inspectors and site operators."""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field, field_validator, model_validator

_USERNAME = re.compile(r"^[A-Za-z0-9_.-]{2,64}$")


class Role(StrEnum):
    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    INSPECTOR = "inspector"
    OPERATOR = "operator"


class UserCreate(BaseModel):
    username: str
    name: str = Field(min_length=1, max_length=100)
    role: Role
    password: str = Field(min_length=8, max_length=200)
    district: str | None = None
    phone: str | None = None
    site_ids: list[str] = Field(default_factory=list)

    @field_validator("username")
    @classmethod
    def _username(cls, value: str) -> str:
        if not _USERNAME.match(value):
            raise ValueError("username must be 2-64 letters, digits, '_', '.' or '-'")
        return value

    @model_validator(mode="after")
    def _role_scope(self) -> UserCreate:
        if self.role is Role.INSPECTOR and not self.district:
            raise ValueError("an inspector needs a district (--district)")
        if self.role is Role.OPERATOR and not self.site_ids:
            raise ValueError("an operator needs the sites it operates (--site)")
        return self


class User(BaseModel):
    id: int
    username: str
    name: str
    role: Role
    district: str | None
    phone: str | None
    site_ids: list[str]
    active: bool
    created_at: datetime
