"""A replay that keeps an old message's time but alters its values: ingest keeps the stored
reading, dead-letters the altered copy, and the `data.replay` detector sees it."""

from __future__ import annotations

import asyncio
import random
import time
from datetime import UTC, datetime

from tests.factories import drop_devices, make_device, make_site
from tests.mqtt_helpers import DevicePublisher
from weijian.alerts.detectors import catalogue
from weijian.alerts.flows import evaluate_sites
from weijian.config import Settings
from weijian.db.connection import connect
from weijian.ingest.worker import TelemetryIngestor


def test_an_altered_resend_raises_a_replay_alert(
    settings: Settings, event_loop_runner: asyncio.Runner
) -> None:
    site_id = event_loop_runner.run(make_site(settings))
    device = event_loop_runner.run(make_device(settings, site_id))
    ingestor = TelemetryIngestor(settings)
    ingestor.start()
    publisher = DevicePublisher(device)
    try:
        assert ingestor.wait_connected(10)
        start = int(datetime.now(UTC).timestamp() * 1000) - 600_000
        for seq in range(1, 11):  # ten minutes of ordinary readings, one a minute
            body = {"seq": seq, "ts": start + seq * 60_000, "metrics": {"temp_c": 20 + seq / 10}}
            publisher.publish("telemetry", body)
        # Message 4 again, same time, temperature altered: a forged or replayed copy.
        forged = {"seq": 4, "ts": start + 4 * 60_000, "metrics": {"temp_c": 9.0}}
        publisher.publish("telemetry", forged)
        deadline = time.monotonic() + 15
        while ingestor.stats.messages < 11 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ingestor.stats.messages == 11

        async def evaluate() -> list[str]:
            conn = await connect(settings.database_url)
            async with conn:
                result = await evaluate_sites(
                    conn=conn,
                    site_ids=[site_id],
                    detectors=catalogue(),
                    now=datetime.now(UTC),
                    rng=random.Random(1),
                    sign="卫生监督所",
                )
            return [c.rule for c in result.changes if c.kind == "fired"]

        assert "data.replay" in event_loop_runner.run(evaluate())
    finally:
        publisher.close()
        ingestor.stop()
        drop_devices(settings, [device.device_id])
