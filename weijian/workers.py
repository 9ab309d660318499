"""Worker processes of one kind (ingest, detection), restarted if one dies.

Each worker is a fresh interpreter (spawn) handed the settings as plain values and its index;
SIGTERM asks it to stop. Where prometheus' multiprocess mode is on, a worker that is gone is
marked dead so its live gauges leave /metrics.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from typing import Any

from weijian.config import Settings

log = logging.getLogger(__name__)

# A worker process: (settings as values, its index, the log level, *args) → runs until SIGTERM.
WorkerMain = Callable[..., None]


class WorkerPool:
    """Starts worker processes `indices` of `kind` and keeps them running until `stop()`."""

    def __init__(
        self,
        settings: Settings,
        *,
        kind: str,
        target: WorkerMain,
        indices: range,
        args: tuple[Any, ...] = (),
    ) -> None:
        self._settings = settings
        self._args = args
        self._kind = kind
        self._target = target
        self._indices = indices
        self._ctx = multiprocessing.get_context("spawn")
        self._procs: dict[int, BaseProcess] = {}
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=f"{kind}-pool-watch", daemon=True)

    def _spawn(self, index: int) -> None:
        values = self._settings.model_dump(exclude={"mqtt"})
        proc = self._ctx.Process(
            target=self._target,
            args=(values, index, self._settings.log_level.upper(), *self._args),
            name=f"weijian-{self._kind}-{index}",
            daemon=False,
        )
        proc.start()
        self._procs[index] = proc

    def start(self) -> None:
        for index in self._indices:
            self._spawn(index)
        self._watcher.start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            for index, proc in list(self._procs.items()):
                if not proc.is_alive() and not self._stopping.is_set():
                    log.error(
                        "%s worker %d exited with %s; restarting", self._kind, index, proc.exitcode
                    )
                    _forget(proc)
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
                proc.join(timeout)
            _forget(proc)


def _forget(proc: BaseProcess) -> None:
    """Drop a dead worker's live gauges from the shared metrics (multiprocess mode)."""
    if proc.pid is not None and os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(proc.pid)  # type: ignore[no-untyped-call]
