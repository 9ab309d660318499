"""One violation from a device to an inspection task, through the real broker, ingest, detectors,
alerts, inspections and notify — the device being a stock MQTT client speaking the protocol."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from tests.factories import drop_devices, make_device, make_site, make_user
from tests.mqtt_helpers import DevicePublisher
from weijian.config import Settings
from weijian.runtime import Stages, run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Platform:
    """`weijian up` in a background thread, stopped at the end of the test."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._task = self._loop.create_task(
            run(self.settings, Stages(scan_interval_s=5), ready=self._ready)
        )
        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(self._task)

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._ready.is_set():
            assert time.monotonic() < deadline, "platform did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(20)


@pytest.fixture
def platform(settings: Settings) -> Iterator[Platform]:
    up = Platform(settings.model_copy(update={"http_port": free_port(), "http_host": "127.0.0.1"}))
    up.start()
    yield up
    up.stop()


def ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def test_short_hold_from_a_stock_mqtt_client_reaches_an_inspection_task(
    settings: Settings, platform: Platform, event_loop_runner: asyncio.Runner
) -> None:
    site = event_loop_runner.run(make_site(settings, district="城东区", phones=["13800000001"]))
    for name in ("insp-a", "insp-b", "insp-c"):
        event_loop_runner.run(make_user(settings, username=name, district="城东区"))
    event_loop_runner.run(
        make_user(
            settings, username="admin", role="admin", district=None, password="admin-password"
        )
    )
    creds = event_loop_runner.run(make_device(settings, site))
    device = DevicePublisher(creds)
    try:
        start = datetime.now(UTC) - timedelta(minutes=15)
        device.publish("status", {"online": True})
        device.publish(
            "events", {"seq": 1, "ts": ms(start), "type": "batch_start", "data": {"batch_id": "B1"}}
        )
        backlog = []
        for i, offset in enumerate(range(0, 850, 10)):
            temp = 80.0 if offset < 120 else (101.5 if offset < 600 else 96.0)
            backlog.append(
                {
                    "seq": 2 + i,
                    "ts": ms(start + timedelta(seconds=offset)),
                    "metrics": {"temp_c": temp, "door_open": 0},
                }
            )
        device.publish("telemetry", backlog)
        published = time.monotonic()
        device.publish(
            "events",
            {
                "seq": 100,
                "ts": ms(start + timedelta(seconds=850)),
                "type": "batch_end",
                "data": {"batch_id": "B1"},
            },
        )
        # The cabinet keeps reporting; the batch is judged once data from its end is in.
        device.publish(
            "telemetry",
            {"seq": 101, "ts": ms(start + timedelta(seconds=860)), "metrics": {"temp_c": 70.0}},
        )
        with psycopg.connect(settings.database_url) as conn:
            alert = None
            while time.monotonic() - published < 20:
                alert = conn.execute("SELECT rule, severity, value FROM alerts").fetchone()
                if alert is not None:
                    break
                time.sleep(0.05)
            assert alert == ("disinfection.hold_time_short", "major", 470.0)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                sent = conn.execute(
                    "SELECT count(*) FROM notifications WHERE status = 'sent'"
                ).fetchone()
                if sent == (3,):
                    break
                time.sleep(0.1)
            assert sent == (3,)
            task = conn.execute(
                "SELECT site_id, cardinality(inspectors) FROM inspection_tasks"
            ).fetchone()
            assert task == (site, 2)
        base = f"http://127.0.0.1:{platform.settings.http_port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/api/v1/alerts").status_code == 401
            token = http.post(
                "/api/v1/auth/token", data={"username": "admin", "password": "admin-password"}
            )
            assert token.status_code == 200
            headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
            alerts = http.get("/api/v1/alerts", headers=headers).json()
            assert [a["rule"] for a in alerts] == ["disinfection.hold_time_short"]
            assert http.get("/wall").status_code == 200
    finally:
        device.close()
        drop_devices(settings, [creds.device_id])
