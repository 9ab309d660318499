"""All SQL of users."""

from __future__ import annotations

from collections.abc import Sequence

from weijian.db.connection import AsyncConn
from weijian.users.models import User

_COLUMNS = "id, username, name, role, district, phone, site_ids, active, created_at"


async def insert_user(
    *,
    conn: AsyncConn,
    username: str,
    name: str,
    role: str,
    district: str | None,
    phone: str | None,
    site_ids: Sequence[str],
    password_hash: str,
) -> User:
    cur = await conn.execute(
        f"INSERT INTO users (username, name, role, district, phone, site_ids, password_hash)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_COLUMNS}",
        (username, name, role, district, phone, list(site_ids), password_hash),
    )
    row = await cur.fetchone()
    assert row is not None
    return User.model_validate(row)


async def get_by_username(*, conn: AsyncConn, username: str) -> User | None:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM users WHERE username = %s", (username,))
    row = await cur.fetchone()
    return None if row is None else User.model_validate(row)


async def password_hash(*, conn: AsyncConn, username: str) -> str | None:
    cur = await conn.execute(
        "SELECT password_hash FROM users WHERE username = %s AND active", (username,)
    )
    row = await cur.fetchone()
    return None if row is None else str(row["password_hash"])


async def set_password_hash(*, conn: AsyncConn, username: str, password_hash: str) -> None:
    await conn.execute(
        "UPDATE users SET password_hash = %s WHERE username = %s", (password_hash, username)
    )


async def list_users(
    *, conn: AsyncConn, role: str | None = None, district: str | None = None
) -> list[User]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM users"
        " WHERE (%(role)s::text IS NULL OR role = %(role)s)"
        "   AND (%(district)s::text IS NULL OR district = %(district)s)"
        " ORDER BY id",
        {"role": role, "district": district},
    )
    return [User.model_validate(r) for r in await cur.fetchall()]


async def active_inspectors(*, conn: AsyncConn, district: str) -> list[User]:
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM users WHERE role = 'inspector' AND active AND district = %s"
        " ORDER BY username",
        (district,),
    )
    return [User.model_validate(r) for r in await cur.fetchall()]
