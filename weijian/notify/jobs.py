"""The outbox dispatcher: sends due notifications through the configured provider."""

from __future__ import annotations

import asyncio
import logging

from psycopg_pool import AsyncConnectionPool

from weijian.clock import Clock
from weijian.db.connection import AsyncConn
from weijian.notify.providers import SmsProvider
from weijian.notify.service import dispatch_due

log = logging.getLogger(__name__)


class OutboxDispatcher:
    """Polls the outbox; every claimed row is sent and marked in one transaction."""

    def __init__(
        self,
        *,
        pool: AsyncConnectionPool[AsyncConn],
        provider: SmsProvider,
        clock: Clock,
        rate_per_hour: int,
        interval_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._provider = provider
        self._clock = clock
        self._rate = rate_per_hour
        self._interval = interval_s

    async def run_once(self) -> int:
        async with self._pool.connection() as conn, conn.transaction():
            return await dispatch_due(
                conn=conn, provider=self._provider, now=self._clock.now(), rate_per_hour=self._rate
            )

    async def run(self) -> None:
        while True:
            try:
                handled = await self.run_once()
            except Exception:
                log.exception("outbox dispatch failed; retrying")
                handled = 0
            if handled == 0:
                await asyncio.sleep(self._interval)
