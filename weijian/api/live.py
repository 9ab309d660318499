"""The live stream: PostgreSQL LISTEN, fanned out to Server-Sent-Events clients.

One listener connection per process (`EventHub`) receives `weijian_alerts` and `weijian_tasks`
notifications and copies each into the bounded queue of every client allowed to see it. A client
whose queue is full is dropped (its stream ends; EventSource reconnects and the page reloads
its state), so one stalled screen never makes the process buffer without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.responses import StreamingResponse
from prometheus_client import Counter, Gauge

from weijian.alerts.flows import ALERTS_CHANNEL, TASKS_CHANNEL
from weijian.alerts.models import Alert
from weijian.api import repository
from weijian.api.auth import Principal, stream_user
from weijian.db.connection import AsyncConn, connect
from weijian.inspections.models import Task
from weijian.users.models import Role

log = logging.getLogger(__name__)

CHANNELS = (ALERTS_CHANNEL, TASKS_CHANNEL)
# SSE event name of each channel (EventSource: addEventListener("alert", ...)).
EVENT_NAMES = {ALERTS_CHANNEL: "alert", TASKS_CHANNEL: "task"}
RETRY_MS = 3000

CLIENTS = Gauge("weijian_api_stream_clients", "Connected live-stream (SSE) clients")
EVENTS = Counter(
    "weijian_api_stream_events_total", "Notifications received for the stream", ["channel"]
)
DROPPED = Counter("weijian_api_stream_dropped_total", "Stream clients dropped for not keeping up")
LISTENING = Gauge("weijian_api_stream_listener_connected", "1 while the LISTEN connection is up")


@dataclass(frozen=True)
class LiveEvent:
    channel: str
    payload: dict[str, Any]
    wire: bytes  # the SSE frame, encoded once for every client


EventFilter = Callable[[LiveEvent], bool]


def frame(event: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"


class Subscriber:
    """One SSE client: a bounded queue of frames; `None` in the queue ends the stream."""

    def __init__(self, accept: EventFilter, size: int) -> None:
        self.accept = accept
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=size)
        self.dropped = False


class EventHub:
    """One LISTEN connection, fanned out to every subscriber; started on first use."""

    def __init__(
        self,
        database_url: str,
        *,
        queue_size: int = 256,
        heartbeat_s: float = 15.0,
        liveness_s: float = 30.0,
    ) -> None:
        self._database_url = database_url
        self.queue_size = queue_size
        self.heartbeat_s = heartbeat_s
        self._liveness_s = liveness_s
        self._subscribers: set[Subscriber] = set()
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="api-event-hub")

    async def wait_ready(self, within_s: float) -> bool:
        """Start the listener if needed; True once it is listening."""
        self.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), within_s)
        return self._ready.is_set()

    def subscribe(self, accept: EventFilter) -> Subscriber:
        subscriber = Subscriber(accept, self.queue_size)
        self._subscribers.add(subscriber)
        CLIENTS.set(len(self._subscribers))
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)
        CLIENTS.set(len(self._subscribers))

    def publish(self, channel: str, text: str) -> None:
        """Fan one notification out (called by the listener; public for tests)."""
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError:
            log.warning("ignoring a non-JSON notification on %s: %.200s", channel, text)
            return
        if not isinstance(payload, dict):
            log.warning(
                "ignoring a notification on %s that is not an object: %.200s", channel, text
            )
            return
        EVENTS.labels(channel).inc()
        self._fan_out(
            LiveEvent(channel, payload, frame(EVENT_NAMES.get(channel, channel), payload))
        )

    def _fan_out(self, event: LiveEvent) -> None:
        for subscriber in list(self._subscribers):
            if not subscriber.accept(event):
                continue
            try:
                subscriber.queue.put_nowait(event.wire)
            except asyncio.QueueFull:
                self._drop(subscriber)

    def _drop(self, subscriber: Subscriber) -> None:
        subscriber.dropped = True
        while not subscriber.queue.empty():
            subscriber.queue.get_nowait()
        subscriber.queue.put_nowait(None)
        self.unsubscribe(subscriber)
        DROPPED.inc()
        log.warning("dropped a live-stream client that fell %d events behind", self.queue_size)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for subscriber in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                subscriber.queue.put_nowait(None)
            self.unsubscribe(subscriber)

    async def _run(self) -> None:
        backoff = 0.5
        connected_before = False
        while True:
            try:
                conn = await connect(self._database_url)
                async with conn:
                    await repository.listen(conn=conn, channels=CHANNELS)
                    self._ready.set()
                    LISTENING.set(1)
                    backoff = 0.5
                    if connected_before:
                        # Notifications sent while we were away are lost: clients must reload.
                        self._fan_out(
                            LiveEvent("resync", {}, frame("resync", {"reason": "reconnected"}))
                        )
                    connected_before = True
                    await self._pump(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live-stream listener lost the database (%s); reconnecting", exc)
            finally:
                self._ready.clear()
                LISTENING.set(0)
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 30.0)

    async def _pump(self, conn: AsyncConn) -> None:
        while True:
            async for notify in conn.notifies(timeout=self._liveness_s):
                self.publish(notify.channel, notify.payload)
            # Quiet for a while: make sure the connection is still there (raises if not).
            await repository.ping(conn=conn)


def event_filter(principal: Principal) -> EventFilter:
    """Which notifications a user's stream carries (the same scopes as the REST endpoints)."""

    def accept(event: LiveEvent) -> bool:
        if event.channel == TASKS_CHANNEL and principal.role is Role.OPERATOR:
            return False  # inspection plans are not shown to the inspected unit
        site_id = event.payload.get("site_id")
        if site_id is None:
            return principal.is_staff or event.channel not in EVENT_NAMES
        return principal.sees_site(str(site_id))

    return accept


async def announce_alert(*, conn: AsyncConn, kind: str, alert: Alert) -> None:
    """Tell live listeners about an alert change (sent when the caller's transaction commits)."""
    await repository.notify(
        conn=conn,
        channel=ALERTS_CHANNEL,
        payload={
            "kind": kind,
            "alert_id": alert.id,
            "site_id": alert.site_id,
            "device_id": alert.device_id,
            "rule": alert.rule,
            "severity": alert.severity.value,
        },
    )


async def announce_task(*, conn: AsyncConn, kind: str, task: Task) -> None:
    """Tell live listeners about a task step (sent when the caller's transaction commits)."""
    await repository.notify(
        conn=conn,
        channel=TASKS_CHANNEL,
        payload={
            "kind": kind,
            "task_id": task.id,
            "site_id": task.site_id,
        },
    )


router = APIRouter(tags=["live"])


async def _frames(hub: EventHub, accept: EventFilter) -> AsyncIterator[bytes]:
    subscriber = hub.subscribe(accept)
    try:
        # Subscribed before this first frame, so a client that has read it misses nothing.
        yield f"retry: {RETRY_MS}\n: connected\n\n".encode()
        while True:
            try:
                item = await asyncio.wait_for(subscriber.queue.get(), hub.heartbeat_s)
            except TimeoutError:
                yield b": heartbeat\n\n"
                continue
            if item is None:
                if subscriber.dropped:
                    yield frame("dropped", {"reason": "the client did not keep up; reconnect"})
                return
            yield item
    finally:
        hub.unsubscribe(subscriber)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-Sent Events: `alert`, `task`, `resync`, `dropped`.",
        }
    },
)
async def stream(
    request: Request, principal: Annotated[Principal, Depends(stream_user)]
) -> StreamingResponse:
    """Live alert and task changes as Server-Sent Events (token in the header or `?token=`)."""
    hub: EventHub = request.app.state.hub
    if not await hub.wait_ready(within_s=10.0):
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, "live stream not available: database unreachable"
        )
    return StreamingResponse(
        _frames(hub, event_filter(principal)),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
