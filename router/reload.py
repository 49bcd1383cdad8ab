"""Reloading the routes file: on SIGHUP, on the admin API's request, or when it changes on disk.

A file that fails validation is logged and counted, and the routes in force stay; the router
never runs with a half-applied or invalid configuration.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from router.core import Router
from serving.spec.routes import ConfigError, RouterConfig, load_config

log = logging.getLogger("turnout.router.reload")


class FileSource:
    def __init__(self, path: Path, *,
                 check: Callable[[RouterConfig], RouterConfig] | None = None) -> None:
        self.path = path
        self._check = check  # refuses, with ConfigError, what this router cannot serve
        self._stamp = self._mtime()

    def _mtime(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def load(self) -> RouterConfig:
        self._stamp = self._mtime()
        config = load_config(self.path)
        return self._check(config) if self._check is not None else config

    def reload_into(self, router: Router) -> bool:
        """Apply the file if it is valid; returns whether it was applied."""
        try:
            config = self.load()
        except ConfigError as exc:
            router.metrics.reloads.labels("rejected").inc()
            log.error("routes not reloaded, keeping the previous ones: %s", exc)
            return False
        router.apply(config)
        return True

    async def watch(self, router: Router, interval: float) -> None:
        """Reload whenever the file's modification time or size changes, until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if self._mtime() != self._stamp:
                self.reload_into(router)
