"""Tokens: login, the signing key, and 401 on every endpoint without a valid token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool

from tests.api.conftest import PASSWORD, World
from weijian.api.app import create_app
from weijian.api.auth import ALGORITHM, SIGNING_KEY_NAME
from weijian.config import Settings
from weijian.db.connection import AsyncConn

pytestmark = pytest.mark.anyio


async def test_login_returns_a_bearer_token_with_role_and_lifetime(world: World) -> None:
    response = await world.client.post(
        "/api/v1/auth/token", data={"username": "insp-a", "password": PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["role"] == "inspector"
    assert body["expires_in"] == 12 * 3600
    me = await world.client.get(
        "/api/v1/me", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert me.status_code == 200
    assert me.json()["username"] == "insp-a"
    assert me.json()["visible_site_ids"] == ["site-a", "site-b"]
    assert "password_hash" not in me.json()


@pytest.mark.parametrize(
    ("username", "password"), [("insp-a", "wrong-password"), ("nobody", PASSWORD)]
)
async def test_wrong_password_or_unknown_user_is_401(
    world: World, username: str, password: str
) -> None:
    response = await world.client.post(
        "/api/v1/auth/token", data={"username": username, "password": password}
    )
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"] == "incorrect username or password"


async def test_every_api_endpoint_needs_a_token(world: World, app: FastAPI) -> None:
    paths = {p: ops for p, ops in app.openapi()["paths"].items() if p.startswith("/api/v1")}
    paths.pop("/api/v1/auth/token")
    assert len(paths) >= 20
    for template, operations in paths.items():
        path = (
            template.replace("{site_id}", "site-a")
            .replace("{alert_id}", "1")
            .replace("{task_id}", "1")
        )
        for method in operations:
            response = await world.client.request(method.upper(), path)
            assert response.status_code == 401, (method, path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["detail"].startswith("not authenticated")


async def test_invalid_and_expired_tokens_are_401(
    world: World, pool: AsyncConnectionPool[AsyncConn]
) -> None:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT value FROM app_secrets WHERE name = %s", (SIGNING_KEY_NAME,)
        )
        assert await cur.fetchone() is None  # generated on first use, not before
    await world.token("chief")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT value FROM app_secrets WHERE name = %s", (SIGNING_KEY_NAME,)
        )
        row = await cur.fetchone()
    assert row is not None
    key = str(row["value"])
    past = datetime.now(UTC) - timedelta(hours=1)
    expired = jwt.encode(
        {"sub": "chief", "iat": past, "exp": past + timedelta(minutes=5)}, key, ALGORITHM
    )
    forged = jwt.encode(
        {"sub": "chief", "exp": datetime.now(UTC) + timedelta(hours=1)},
        "not-the-key-" * 4,
        ALGORITHM,
    )
    cases = {
        expired: "token expired; log in again",
        forged: "invalid token",
        "garbage": "invalid token",
    }
    for token, detail in cases.items():
        response = await world.client.get(
            "/api/v1/sites", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401
        assert response.json()["detail"] == detail
    # A valid signature for a user that does not exist is refused too.
    ghost = jwt.encode(
        {"sub": "ghost", "exp": datetime.now(UTC) + timedelta(hours=1)}, key, ALGORITHM
    )
    response = await world.client.get("/api/v1/sites", headers={"Authorization": f"Bearer {ghost}"})
    assert response.status_code == 401


async def test_processes_share_the_stored_signing_key(
    world: World, settings: Settings, pool: AsyncConnectionPool[AsyncConn]
) -> None:
    token = await world.token("chief")
    other = create_app(settings, pool=pool)  # a second process of the same deployment
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=other), base_url="http://b"
    ) as http:
        response = await http.get("/api/v1/sites", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


async def test_a_configured_secret_key_is_used_instead(
    world: World, settings: Settings, pool: AsyncConnectionPool[AsyncConn]
) -> None:
    configured = settings.model_copy(update={"secret_key": "s" * 48})
    app = create_app(configured, pool=pool)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://c"
    ) as http:
        response = await http.post(
            "/api/v1/auth/token", data={"username": "chief", "password": PASSWORD}
        )
        token = response.json()["access_token"]
        assert jwt.decode(token, "s" * 48, algorithms=[ALGORITHM])["sub"] == "chief"
        # The stored key of the other processes does not open it.
        refused = await world.client.get(
            "/api/v1/sites", headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 401
