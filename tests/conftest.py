"""Shared fixtures: a fresh TimescaleDB database per test (cloned from a migrated template),
a unique MQTT topic root per test, and settings pointing at both.

Tests talk to the real PostgreSQL/TimescaleDB and the project's own Mosquitto that
`make services` starts; nothing is mocked.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from weijian.config import Settings, get_settings
from weijian.db.migrate import migrate

ADMIN_URL = os.environ.get(
    "WEIJIAN_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
_PREFIX = f"weijian_t{os.getpid()}"
_counter = itertools.count()


def _url(name: str) -> str:
    base = ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{name}"


def _drop(conn: psycopg.Connection[tuple[object, ...]], name: str) -> None:
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _owner_alive(database: str) -> bool:
    """Whether the test run (pid in the name) that created a database is still running."""
    match = re.match(r"weijian_t(\d+)_", database)
    return bool(match) and os.path.exists(f"/proc/{match.group(1)}")  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def template_db() -> Iterator[str]:
    """A migrated database that every test database is cloned from."""
    name = f"{_PREFIX}_tpl"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        # Leftovers of earlier runs that were killed (another live run's databases are kept).
        names = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'weijian\\_t%%'"
        ).fetchall()
        for (old,) in names:
            if _owner_alive(old):
                continue
            conn.execute(
                sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(old))
            )
            _drop(conn, old)
        _drop(conn, name)
    migrate(_url(name))
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        # No connections to a template (TimescaleDB's scheduler would hold one otherwise).
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(
                sql.Identifier(name)
            )
        )
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,)
        )
    yield name
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name))
        )
        _drop(conn, name)


@pytest.fixture
def database_url(template_db: str) -> Iterator[str]:
    """A fresh, migrated database for this test alone."""
    name = f"{_PREFIX}_{next(_counter)}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for attempt in range(20):
            try:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                        sql.Identifier(name), sql.Identifier(template_db)
                    )
                )
                break
            except psycopg.errors.ObjectInUse:
                if attempt == 19:
                    raise
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (template_db,),
                )
    yield _url(name)
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        _drop(conn, name)


@pytest.fixture
def topic_root() -> str:
    """A topic root of this test alone, so tests sharing the broker never see each other."""
    return f"t{uuid.uuid4().hex[:12]}/weijian/v1"


@pytest.fixture
def settings(database_url: str, topic_root: str) -> Settings:
    return get_settings(
        database_url=database_url,
        mqtt_topic_root=topic_root,
        mqtt_client_id=f"test-{uuid.uuid4().hex[:10]}",
        mqtt_share_group=f"g{uuid.uuid4().hex[:8]}",
        inspection_seed=7,
        ingest_batch_wait_ms=20,
        mqtt_session_expiry_s=120,
        _env_file=None,
    )


@pytest.fixture
def event_loop_runner() -> Iterator[asyncio.Runner]:
    """An asyncio runner for tests that drive async services from sync test code."""
    with asyncio.Runner() as runner:
        yield runner


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (`@pytest.mark.anyio`) run on asyncio."""
    return "asyncio"
