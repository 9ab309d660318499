"""Users: registration with hashed passwords, authentication, the inspector roster."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from weijian.db.connection import AsyncConn
from weijian.users import repository
from weijian.users.models import User, UserCreate

_hasher = PasswordHasher()


class UserError(ValueError):
    """A user request that cannot be carried out."""


async def add_user(*, conn: AsyncConn, new: UserCreate) -> User:
    """Register a user; only an argon2id hash of the password is stored."""
    if await repository.get_by_username(conn=conn, username=new.username) is not None:
        raise UserError(f"user {new.username!r} already exists")
    return await repository.insert_user(
        conn=conn,
        username=new.username,
        name=new.name,
        role=new.role.value,
        district=new.district,
        phone=new.phone,
        site_ids=new.site_ids,
        password_hash=_hasher.hash(new.password),
    )


async def authenticate(*, conn: AsyncConn, username: str, password: str) -> User | None:
    """The user if the password matches an active account, else None."""
    stored = await repository.password_hash(conn=conn, username=username)
    if stored is None:
        _hasher.hash(password)  # spend the same time whether or not the user exists
        return None
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if _hasher.check_needs_rehash(stored):
        await repository.set_password_hash(
            conn=conn, username=username, password_hash=_hasher.hash(password)
        )
    return await repository.get_by_username(conn=conn, username=username)


async def get_user(*, conn: AsyncConn, username: str) -> User | None:
    return await repository.get_by_username(conn=conn, username=username)


async def list_users(*, conn: AsyncConn, role: str | None = None) -> list[User]:
    return await repository.list_users(conn=conn, role=role)


async def inspector_roster(*, conn: AsyncConn, district: str) -> list[User]:
    """Active inspectors of a district: the registry the random draw picks from."""
    return await repository.active_inspectors(conn=conn, district=district)
