"""Bearer tokens (HS256 JWT), the current user, and what each role may see.

Scopes: admin and supervisor see everything; an inspector sees every site of its district and
the tasks it is assigned to (and acts only on those); an operator sees only its own sites.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import jwt
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel

from weijian.api import repository
from weijian.api.deps import CONNECTION_WAIT_S, Conn, get_pool
from weijian.config import Settings
from weijian.db.connection import AsyncConn
from weijian.devices import service as devices
from weijian.users import service as users
from weijian.users.models import Role, User

ALGORITHM = "HS256"
SIGNING_KEY_NAME = "jwt_signing_key"
TOKEN_URL = "/api/v1/auth/token"
STAFF = frozenset({Role.ADMIN, Role.SUPERVISOR})

_bearer = OAuth2PasswordBearer(tokenUrl=TOKEN_URL, auto_error=False)
router = APIRouter(tags=["auth"])


class TokenResponse(BaseModel):
    access_token: str
    token_type: str = "bearer"
    expires_in: int
    role: Role
    username: str
    name: str


@dataclass(frozen=True)
class Principal:
    """The authenticated user and the sites it may see (`site_ids=None`: every site)."""

    user: User
    site_ids: frozenset[str] | None

    @property
    def username(self) -> str:
        return self.user.username

    @property
    def role(self) -> Role:
        return self.user.role

    @property
    def is_staff(self) -> bool:
        return self.user.role in STAFF

    @property
    def scope(self) -> list[str] | None:
        """The site filter to pass to a service (sorted list, or None for every site)."""
        return None if self.site_ids is None else sorted(self.site_ids)

    def sees_site(self, site_id: str) -> bool:
        return self.site_ids is None or site_id in self.site_ids


def unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def signing_key(request: Request, conn: AsyncConn) -> str:
    """settings.secret_key, else the key in app_secrets (generated once, shared by processes)."""
    state = request.app.state
    key: str | None = getattr(state, "signing_key", None)
    if key is not None:
        return key
    async with state.signing_key_lock:
        if state.signing_key is None:
            settings: Settings = state.settings
            state.signing_key = settings.secret_key or await repository.get_or_create_secret(
                conn=conn, name=SIGNING_KEY_NAME, candidate=secrets.token_urlsafe(48)
            )
        resolved: str = state.signing_key
        return resolved


def issue_token(*, key: str, user: User, now: datetime, ttl: timedelta) -> str:
    claims = {"sub": user.username, "role": user.role.value, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def _decode(token: str, key: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token, key, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]}
        )
    except jwt.ExpiredSignatureError:
        raise unauthorized("token expired; log in again") from None
    except jwt.InvalidTokenError:
        raise unauthorized("invalid token") from None
    return claims


async def _principal(request: Request, conn: AsyncConn, token: str | None) -> Principal:
    if not token:
        raise unauthorized("not authenticated: send 'Authorization: Bearer <token>'")
    claims = _decode(token, await signing_key(request, conn))
    user = await users.get_user(conn=conn, username=str(claims["sub"]))
    if user is None or not user.active:
        raise unauthorized("the account of this token no longer exists or is disabled")
    site_ids: frozenset[str] | None = None
    if user.role is Role.OPERATOR:
        site_ids = frozenset(user.site_ids)
    elif user.role is Role.INSPECTOR:
        sites = await devices.list_sites_in(conn=conn, site_ids=None, district=user.district)
        site_ids = frozenset(s.id for s in sites)
    return Principal(user, site_ids)


async def current_user(
    request: Request, conn: Conn, token: Annotated[str | None, Depends(_bearer)]
) -> Principal:
    """The user of the request's bearer token; 401 if it is missing, invalid or expired."""
    return await _principal(request, conn, token)


async def stream_user(
    request: Request,
    bearer: Annotated[str | None, Depends(_bearer)],
    token: Annotated[
        str | None, Query(description="Bearer token (EventSource cannot set headers).")
    ] = None,
) -> Principal:
    """Like `current_user`, also accepting `?token=`; holds no connection for the stream's life."""
    pool = get_pool(request)
    async with pool.connection(timeout=min(pool.timeout, CONNECTION_WAIT_S)) as conn:
        return await _principal(request, conn, bearer or token)


CurrentUser = Annotated[Principal, Depends(current_user)]


def require_roles(*roles: Role) -> Callable[[Principal], Awaitable[Principal]]:
    """A dependency admitting only the given roles (403 otherwise)."""
    allowed = frozenset(roles)

    async def check(principal: CurrentUser) -> Principal:
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                f"role {principal.role.value} may not do this (needs {names})",
            )
        return principal

    return check


StaffUser = Annotated[Principal, Depends(require_roles(Role.ADMIN, Role.SUPERVISOR))]
BureauUser = Annotated[
    Principal, Depends(require_roles(Role.ADMIN, Role.SUPERVISOR, Role.INSPECTOR))
]


@router.post("/auth/token", response_model=TokenResponse)
async def login(
    request: Request,
    form: Annotated[OAuth2PasswordRequestForm, Depends()],
    conn: Conn,
) -> TokenResponse:
    """Exchange username and password (OAuth2 password form) for a bearer token."""
    user = await users.authenticate(conn=conn, username=form.username, password=form.password)
    if user is None:
        raise unauthorized("incorrect username or password")
    settings: Settings = request.app.state.settings
    ttl = timedelta(minutes=settings.token_ttl_minutes)
    key = await signing_key(request, conn)
    return TokenResponse(
        # Wall-clock time, not the platform clock: a simulated clock must not expire sessions.
        access_token=issue_token(key=key, user=user, now=datetime.now(UTC), ttl=ttl),
        expires_in=int(ttl.total_seconds()),
        role=user.role,
        username=user.username,
        name=user.name,
    )
