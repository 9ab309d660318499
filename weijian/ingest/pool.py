"""Several ingest worker processes on one shared subscription, restarted if one dies.

One Python process drains about one core's worth of MQTT; a shared subscription
(`$share/ingest/...`) lets the broker spread the devices' messages over N processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

from weijian.config import Settings

log = logging.getLogger(__name__)


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


class IngestProcessPool:
    """Starts `settings.ingest_workers` processes and keeps them running until `stop()`."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="ingest-pool-watch", daemon=True)

    def _spawn(self, index: int) -> None:
        values = self._settings.model_dump(exclude={"mqtt"})
        proc = self._ctx.Process(
            target=_child,
            args=(values, index, self._settings.log_level.upper()),
            name=f"weijian-ingest-{index}",
            daemon=False,
        )
        proc.start()
        self._procs[index] = proc

    def start(self) -> None:
        for index in range(self._settings.ingest_workers):
            self._spawn(index)
        self._watcher.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for index, proc in list(self._procs.items()):
                if not proc.is_alive() and not self._stopping.is_set():
                    log.error("ingest worker %d exited with %s; restarting", index, proc.exitcode)
                    time.sleep(1.0)
                    self._spawn(index)

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        for proc in self._procs.values():
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self._procs.values():
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
