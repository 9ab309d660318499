"""A private Mosquitto and a private PostgreSQL cluster that resilience tests may kill and restart.

Other test runs share the project's services (PostgreSQL on 5432, Mosquitto on 1884), so
faults are only ever injected into these instances: each runs from its own temporary
directory on its own free port, and comes back on the same port with the same state.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO_TEMPLATE = ROOT / "deploy" / "mosquitto" / "mosquitto.conf"
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
PG_BIN = Path(os.environ.get("WEIJIAN_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((_HOST, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((_HOST, port), timeout=0.2):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


class PrivateBroker:
    """The project's Mosquitto configuration on a free port, anonymous, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "log" / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{_HOST}:{self.port}"

    def _render(self) -> str:
        text = (
            MOSQUITTO_TEMPLATE.read_text()
            .replace("@RUN_DIR@", str(self.directory))
            .replace("@BIND@", _HOST)
            .replace("@PORT@", str(self.port))
            # Keep root when started as root, so the temporary directory stays writable.
            .replace("@USER@", "root")
            .replace("allow_anonymous false", "allow_anonymous true")
        )
        # Authentication is tested against the project's broker; this one has no plugin.
        return "\n".join(line for line in text.splitlines() if not line.startswith("plugin"))

    def start(self, timeout: float = 10.0) -> None:
        """Start (or start again) on the same port, with the same persistence directory."""
        (self.directory / "data").mkdir(parents=True, exist_ok=True)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(self._render() + "\n")
        with (self.directory / "stderr.log").open("ab") as stderr:
            self._proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=stderr
            )
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"private mosquitto did not start:\n{_tail(self.log)}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 15.0) -> None:
        """SIGTERM: mosquitto saves its persistence file and exits."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


class PrivatePostgres:
    """A PostgreSQL cluster with TimescaleDB preloaded, on a free port, in `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "postgres.log"
        self.port = free_port()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@{_HOST}:{self.port}/{database}"

    def _call(self, *args: str) -> subprocess.CompletedProcess[str]:
        # initdb and postgres refuse to run as root.
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        return subprocess.run([*prefix, *args], capture_output=True, text=True, check=False)

    def _run(self, *args: str) -> None:
        done = self._call(*args)
        if done.returncode != 0:
            raise RuntimeError(
                f"{Path(args[0]).name} failed: {done.stderr.strip()}\n{_tail(self.log)}"
            )

    def init(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.directory, "postgres", "postgres")
        self._run(
            str(PG_BIN / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--no-sync",
        )

    def start(self) -> None:
        """Start (or start again) on the same port."""
        options = " ".join(
            (
                f"-p {self.port}",
                f"-k {self.directory}",
                f"-c listen_addresses={_HOST}",
                "-c shared_preload_libraries=timescaledb",
                "-c timescaledb.telemetry_level=off",
                "-c fsync=on",
            )
        )
        pg_ctl = str(PG_BIN / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.log), "start", "-w")

    def stop(self) -> None:
        """Fast shutdown: open sessions are terminated, in-flight transactions rolled back."""
        self._run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "stop", "-m", "fast", "-w")

    def running(self) -> bool:
        return self._call(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "status").returncode == 0

    def ensure_running(self) -> None:
        if not self.running():
            self.start()

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        with (
            contextlib.suppress(psycopg.OperationalError),
            psycopg.connect(self.url(), autocommit=True) as conn,
        ):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def available() -> str | None:
    """Why these private services cannot run on this machine, or None."""
    if not Path(MOSQUITTO).exists():
        return "mosquitto is not installed"
    if not (PG_BIN / "initdb").exists():
        return f"no PostgreSQL binaries in {PG_BIN} (set WEIJIAN_TEST_PG_BIN)"
    return None
