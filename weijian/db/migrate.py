"""Apply the ordered SQL files in weijian/db/migrations, recording each one applied."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

# Any constant works; it serialises concurrent `migrate` runs on the same database.
_LOCK_KEY = 0x57_4A_4D_49


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(RuntimeError):
    """A migration could not be applied, or an applied one was changed afterwards."""


def available() -> list[Migration]:
    """The migrations shipped with the package, in order."""
    folder = resources.files("weijian.db") / "migrations"
    files = sorted((f for f in folder.iterdir() if f.name.endswith(".sql")), key=lambda f: f.name)
    return [Migration(f.name.removesuffix(".sql"), f.read_text(encoding="utf-8")) for f in files]


def ensure_database(database_url: str) -> bool:
    """Create the database named in the URL if it does not exist; True if it was created."""
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    if not name:
        raise MigrationError("the database URL names no database")
    admin_url = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        log.info("created database %s", name)
        return True


def migrate(database_url: str, *, create: bool = True) -> list[str]:
    """Bring the schema up to date; returns the versions applied now (idempotent)."""
    if create:
        ensure_database(database_url)
    applied_now: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = conn.execute("SELECT version, checksum FROM schema_migrations").fetchall()
            done: dict[str, str] = {str(v): str(c) for v, c in rows}
            for migration in available():
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} was changed after it was applied; "
                            "add a new migration instead"
                        )
                    continue
                with conn.transaction():
                    try:
                        conn.execute(migration.sql.encode())
                    except psycopg.errors.InternalError as exc:
                        if "timescaledb" in str(exc):
                            raise MigrationError(
                                "TimescaleDB is not installed or not preloaded on this server "
                                "(`make services` sets it up): " + str(exc).splitlines()[0]
                            ) from None
                        raise
                    conn.execute(
                        "INSERT INTO schema_migrations (version, checksum) VALUES (%s, %s)",
                        (migration.version, migration.checksum),
                    )
                log.info("applied migration %s", migration.version)
                applied_now.append(migration.version)
        finally:
            if not conn.closed:
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied_now
