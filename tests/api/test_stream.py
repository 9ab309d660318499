"""The live stream: pg_notify → one LISTEN connection → Server-Sent Events, on a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.api.conftest import World
from weijian.alerts.flows import ALERTS_CHANNEL, TASKS_CHANNEL
from weijian.api.live import EventHub

pytestmark = pytest.mark.anyio


@dataclass
class Frame:
    event: str | None = None
    data: Any = None
    comments: list[str] = field(default_factory=list)


class FrameReader:
    """Reads SSE frames (blank-line separated) from a streaming httpx response."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines = response.aiter_lines()

    async def next(self, within_s: float = 5.0) -> Frame:
        frame = Frame()
        async with asyncio.timeout(within_s):
            async for line in self._lines:
                if line == "":
                    if frame.event or frame.data is not None or frame.comments:
                        return frame
                    continue
                if line.startswith(":"):
                    frame.comments.append(line[1:].strip())
                elif line.startswith("event: "):
                    frame.event = line.removeprefix("event: ")
                elif line.startswith("data: "):
                    frame.data = json.loads(line.removeprefix("data: "))
        raise AssertionError("stream ended")

    async def next_event(self, within_s: float = 5.0) -> Frame:
        """The next frame that is an event (heartbeats skipped)."""
        while True:
            frame = await self.next(within_s)
            if frame.event is not None:
                return frame


@pytest.fixture
async def base_url(app: FastAPI) -> AsyncIterator[str]:
    """The app on a real uvicorn server on a free port (ASGITransport buffers whole responses)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", timeout_graceful_shutdown=2)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task
    sock.close()


@contextlib.asynccontextmanager
async def open_stream(base_url: str, token: str) -> AsyncIterator[FrameReader]:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=10) as http,
        http.stream("GET", "/api/v1/stream", params={"token": token}) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = FrameReader(response)
        hello = await reader.next()
        assert hello.comments == ["connected"]  # subscribed: nothing sent from now on is missed
        yield reader


async def notify(world: World, channel: str, payload: dict[str, Any]) -> None:
    """What the detection flow does when it commits an alert change."""
    async with world.pool.connection() as conn:
        await conn.execute("SELECT pg_notify(%s, %s)", (channel, json.dumps(payload)))


async def test_detection_notifications_and_api_actions_reach_the_wall(
    world: World, base_url: str
) -> None:
    alert_id = await world.fire()
    async with open_stream(base_url, await world.token("chief")) as stream:
        fired = {
            "kind": "fired",
            "alert_id": alert_id,
            "site_id": "site-a",
            "device_id": "stm-a1",
            "rule": "disinfection.temperature_low",
            "severity": "major",
        }
        await notify(world, ALERTS_CHANNEL, fired)
        frame = await stream.next_event(within_s=1.0)  # the wall promises "within a second"
        assert (frame.event, frame.data) == ("alert", fired)

        acked = await world.post("chief", f"/api/v1/alerts/{alert_id}/ack")
        assert acked.status_code == 200
        frame = await stream.next_event()
        assert frame.event == "alert"
        assert frame.data == {**fired, "kind": "acknowledged"}

        task_id = await world.open_task(alert_id)
        await world.post("chief", f"/api/v1/tasks/{task_id}/start")
        frame = await stream.next_event()
        assert (frame.event, frame.data) == (
            "task",
            {"kind": "start", "task_id": task_id, "site_id": "site-a"},
        )


async def test_each_stream_carries_only_what_its_user_may_see(world: World, base_url: str) -> None:
    async with open_stream(base_url, await world.token("op-a")) as operator:
        for site in ("site-c", "site-a"):
            await notify(world, TASKS_CHANNEL, {"kind": "opened", "task_id": 1, "site_id": site})
            await notify(
                world,
                ALERTS_CHANNEL,
                {
                    "kind": "fired",
                    "alert_id": 1,
                    "site_id": site,
                    "device_id": None,
                    "rule": "device.offline",
                    "severity": "warning",
                },
            )
        frame = await operator.next_event()
        assert (frame.event, frame.data["site_id"]) == ("alert", "site-a")  # no task, no site-c


async def test_stream_needs_a_token(world: World, base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/api/v1/stream")).status_code == 401
        bad = await http.get("/api/v1/stream", params={"token": "forged"})
        assert bad.status_code == 401
        assert bad.headers["www-authenticate"] == "Bearer"


async def test_heartbeat_comment_when_idle(world: World, base_url: str, app: FastAPI) -> None:
    app.state.hub.heartbeat_s = 0.2
    async with open_stream(base_url, await world.token("chief")) as stream:
        assert (await stream.next(within_s=2)).comments == ["heartbeat"]


async def test_a_slow_client_is_dropped_not_buffered() -> None:
    hub = EventHub("postgresql://unused", queue_size=3)
    slow = hub.subscribe(lambda event: True)
    picky = hub.subscribe(lambda event: event.payload.get("site_id") == "site-x")
    for i in range(4):
        hub.publish(
            ALERTS_CHANNEL, json.dumps({"kind": "fired", "alert_id": i, "site_id": "site-a"})
        )
    assert slow.dropped
    assert slow.queue.qsize() == 1
    assert slow.queue.get_nowait() is None  # the stream ends
    assert not picky.dropped
    assert picky.queue.empty()  # filtered events never count against it
    assert hub.subscribers == 1
    hub.publish(ALERTS_CHANNEL, "not json")  # ignored, not fatal
    await hub.close()
    assert hub.subscribers == 0
