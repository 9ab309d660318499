"""HTTP: the current user, and the user list for the bureau's staff."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from weijian.api.auth import CurrentUser, StaffUser
from weijian.api.deps import Conn
from weijian.users import service
from weijian.users.models import Role, User

router = APIRouter(tags=["users"])


class Me(User):
    """The logged-in user, with the sites it may see (null: every site)."""

    visible_site_ids: list[str] | None


@router.get("/me", response_model=Me)
async def me(principal: CurrentUser) -> Me:
    return Me(**principal.user.model_dump(), visible_site_ids=principal.scope)


@router.get("/users", response_model=list[User])
async def list_users(
    _: StaffUser,
    conn: Conn,
    role: Annotated[Role | None, Query(description="Only users of this role.")] = None,
) -> list[User]:
    """Users of the platform (admins and supervisors only)."""
    return await service.list_users(conn=conn, role=None if role is None else role.value)
