"""Several ingest worker processes on one shared subscription, restarted if one dies.

One Python process drains about one core's worth of MQTT; a shared subscription
(`$share/ingest/...`) lets the broker spread the devices' messages over N processes.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from weijian.config import Settings
from weijian.workers import WorkerPool


def _child(settings_values: dict[str, Any], index: int, log_level: str) -> None:
    logging.basicConfig(
        level=log_level, format=f"%(asctime)s %(levelname)s ingest-{index}: %(message)s"
    )
    from weijian.config import get_settings
    from weijian.ingest.worker import TelemetryIngestor

    settings = get_settings(**settings_values)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = TelemetryIngestor(settings, worker_index=index)
    worker.start()
    stop.wait()
    worker.stop()


class IngestProcessPool(WorkerPool):
    """Starts `settings.ingest_workers` processes and keeps them running until `stop()`."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            settings, kind="ingest", target=_child, indices=range(settings.ingest_workers)
        )
