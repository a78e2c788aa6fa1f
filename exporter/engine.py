"""The running exporter: current config, scheduler (with its runner, history and self-watch),
registries and resources, and reload."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Gauge,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from exporter import __version__, config, metrics, templates
from exporter.docker.images import ImageRefresher
from exporter.history import History
from exporter.metrics import SelfMetrics
from exporter.model import Config, Shard
from exporter.resources import Resources
from exporter.runner import Runner
from exporter.scheduler import Scheduler
from exporter.selfwatch import SelfWatch
from exporter.source import ConfigError

log = logging.getLogger("exporter")
# Seconds between looks at the file_sd files (a stat of each; inotify is not portable).
DISCOVERY_POLL = 5.0


class Engine:
    """Owns everything long-lived. Create, `start(config)`, and always `await aclose()`."""

    def __init__(
        self,
        loader: Callable[[], Config] | None = None,
        path: Path | None = None,
        shard: Shard | None = None,
    ):
        self.path = path
        # Each file_sd file's last good groups: a file that turns bad keeps them.
        self.sd_cache: templates.SdCache = {}
        self._loader = loader or (lambda: config.load(self._require_path(), shard, self.sd_cache))
        self._sd_seen: tuple[tuple[str, int, int], ...] | None = None
        self._sd_task: asyncio.Task[None] | None = None
        # `_created` series would be extra families outside the catalogue, with a value that
        # changes every start; Prometheus does not need them for counters it scrapes itself.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.metrics = SelfMetrics(self.registry)
        # Read from the loop at scrape time; set up in `start`, where the loop is known.
        self.tasks = Gauge(metrics.TASKS.name, metrics.TASKS.help, registry=self.registry)
        self.metrics.build_info.labels(
            version=__version__, python_version=platform.python_version()
        ).set(1)
        self.resources = Resources()
        # Shared by the scheduler and the web handlers: /probe runs the scheduler's probe, the
        # status page shows its history and overload verdict.
        self.runner = Runner(self.resources)
        self.history = History()
        self.selfwatch = SelfWatch(self.metrics)
        self.scheduler = Scheduler(
            self.metrics,
            self.resources,
            runner=self.runner,
            history=self.history,
            selfwatch=self.selfwatch,
        )
        # Image metadata is read in the background and rendered from its cached snapshot.
        self.images = ImageRefresher(self.resources)
        self.registry.register(self.images)
        self.config: Config | None = None
        # Run-time maintenance flags by (service, region), over the config's (POST
        # /-/maintenance); kept across reloads, lost on restart: the config is the durable place.
        self.maintenance: dict[tuple[str, str], bool] = {}
        self.last_reload_errors: list[str] = []
        # One reload at a time: two loads finishing out of order would apply the older file.
        self._reload_lock = asyncio.Lock()
        self._reloads: set[asyncio.Task[bool]] = set()

    def _require_path(self) -> Path:
        if self.path is None:
            raise RuntimeError("no config path")
        return self.path

    def start(self, cfg: Config) -> None:
        loop = asyncio.get_running_loop()
        self.tasks.set_function(lambda: len(asyncio.all_tasks(loop)))
        self._use(cfg)
        self._sd_task = loop.create_task(self._watch_discovery())
        log.info(
            "config loaded",
            extra={"file": cfg.source, "targets": len(cfg.targets), "digest": cfg.digest},
        )

    def _use(self, cfg: Config) -> None:
        for warning in cfg.warnings:
            log.warning("file_sd file not applied", extra={"error": warning})
        self._sd_seen = self._sd_signature(cfg)
        self.scheduler.apply(cfg)
        self.images.apply(cfg)
        self.config = cfg
        self.last_reload_errors = []
        self.metrics.reload_ok.set(1)
        self.metrics.reload_ts.set(time.time())

    def in_maintenance(self, service: str, region: str) -> bool:
        if (service, region) in self.maintenance:
            return self.maintenance[(service, region)]
        cfg = self.config
        regions = cfg.regions if cfg else ()
        return any(r.maintenance for r in regions if (r.service, r.name) == (service, region))

    @staticmethod
    def _sd_signature(cfg: Config | None) -> tuple[tuple[str, int, int], ...]:
        """The file_sd files the config reads and their mtime and size: a change of any (a file
        added, removed, rewritten) means a reload."""
        if cfg is None or not cfg.watched:
            return ()
        out = []
        for path in templates.sd_files(list(cfg.watched)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            out.append((path, st.st_mtime_ns, st.st_size))
        return tuple(out)

    async def poll_discovery(self) -> bool | None:
        """One watch step: reload if a file_sd file changed. None when nothing changed.

        The background watcher calls this every DISCOVERY_POLL seconds; tests call it directly,
        so that no test waits for a timer."""
        seen = await asyncio.to_thread(self._sd_signature, self.config)
        if seen == self._sd_seen:
            return None
        ok = await self.reload()
        # A failed reload keeps the old config; do not retry it every poll until files change.
        self._sd_seen = seen
        return ok

    async def _watch_discovery(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_POLL)
            if self.config is not None and self.config.watched:
                await self.poll_discovery()

    def request_reload(self) -> None:
        """Reload in the background (for the SIGHUP handler)."""
        task = asyncio.get_running_loop().create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def reload(self) -> bool:
        """Load the config again; on any error keep the running one and say so in metrics.

        Loading runs in a thread: parsing and validating hundreds of targets takes long enough
        (about a millisecond each) to stall the loop and time out the probes in flight.
        """
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> bool:
        try:
            cfg = await asyncio.to_thread(self._loader)
        except ConfigError as exc:
            self.metrics.reload_ok.set(0)
            self.last_reload_errors = [str(i) for i in exc.issues]
            for issue in exc.issues:
                log.error(
                    "config reload failed; keeping the running config", extra={"error": str(issue)}
                )
            return False
        old = self.config
        self._use(cfg)
        if gc.get_freeze_count():
            # serve() froze the start-up heap; let the replaced config's cycles be collected.
            gc.unfreeze()
            gc.collect()
            gc.freeze()
        log.info(
            "config reloaded",
            extra={
                "file": cfg.source,
                "targets": len(cfg.targets),
                "digest": cfg.digest,
                "previous_digest": old.digest if old else None,
            },
        )
        return True

    async def aclose(self) -> None:
        tasks = [*self._reloads, *([self._sd_task] if self._sd_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.scheduler.stop()
            await self.images.stop()
        finally:
            # Last: closing the Docker handles removes any cold-start container still around.
            await self.resources.aclose()
