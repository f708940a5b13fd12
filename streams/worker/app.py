"""The faust application of a worker, built from settings (no module-level App).

Faust owns the process: lifecycle and signals, the web server (``/metrics``), and timers.
The raw topic's hot path is the :class:`~streams.worker.service.RawTopicService` it hosts
(see that module for why it is not a faust agent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import version as package_version

import faust
from mode import Service

from streams.encryption import ParquetEncryption
from streams.monitoring.exposition import METRICS_PATH, render
from streams.privacy.keyring import Keyring
from streams.settings import Settings
from streams.storage import open_data_root
from streams.worker.metrics import WorkerMetrics
from streams.worker.outage_log import OutageLog
from streams.worker.pipeline import PipelineContext
from streams.worker.service import ConsumerOptions, RawTopicService
from streams.worker.sink import RangeWriter
from streams.worker.state.folder import StateFolder
from streams.worker.status_line import StatusReporter

LAG_REFRESH_SECONDS = 5.0


def sieve_version() -> str:
    try:
        return package_version("sieve")
    except Exception:
        return "0+unknown"


@dataclass
class Worker:
    """What ``create_app`` built: the app and the service, for callers and tests."""

    app: faust.App
    service: RawTopicService
    metrics: WorkerMetrics


def build_service(
    settings: Settings,
    keyring: Keyring,
    metrics: WorkerMetrics,
    *,
    dead_letter_max_bytes: int = 1_048_576,
) -> RawTopicService:
    """The raw-topic service with everything it needs, from settings and a loaded keyring.

    ``dead_letter_max_bytes``: the dead-letter topic's max.message.bytes (the worker reads
    it at start, streams.topics.prepare_dead_letter_topic); larger dead letters are cut.
    """
    data_root = open_data_root(settings.data_root, create=True)
    filesystem, root = data_root.fs, data_root.path
    version = sieve_version()
    context = PipelineContext.from_settings(
        settings, keyring, worker_version=version, state=StateFolder(settings.state_folder)
    )
    encryption = ParquetEncryption(*keyring.encryption_keys())
    options = ConsumerOptions(
        bootstrap_servers=settings.bootstrap_servers,
        topic=settings.raw_topic,
        dead_letter_topic=settings.dead_letter_topic,
        group_id=settings.consumer_group,
        batch_max_records=settings.batch_max_records,
        roll_max_records=settings.roll_max_records,
        roll_interval_seconds=settings.roll_interval_seconds,
        session_timeout_seconds=settings.session_timeout_seconds,
        dead_letter_max_bytes=dead_letter_max_bytes,
        roll_max_bytes=settings.roll_max_bytes,
    )
    writer = RangeWriter(filesystem, root, encryption, version)
    return RawTopicService(options, context, filesystem, root, writer, metrics)


def create_app(
    settings: Settings,
    keyring: Keyring,
    *,
    dead_letter_max_bytes: int = 1_048_576,
    outage_log: OutageLog | None = None,
    metrics: WorkerMetrics | None = None,
    status: StatusReporter | None = None,
    after_stop: Callable[[RawTopicService], object] | None = None,
) -> Worker:
    """A faust app hosting the raw-topic service, a /metrics page and a lag timer (and the
    timer that reports the end of a broker outage, given ``outage_log``, and the one that
    shows the worker's status, given ``status``: it must report on ``metrics``).
    ``after_stop`` is called once the raw-topic service has stopped, before faust stops the
    rest (streams.worker.stop_watchdog)."""
    metrics = WorkerMetrics() if metrics is None else metrics
    service = build_service(settings, keyring, metrics, dead_letter_max_bytes=dead_letter_max_bytes)
    app = faust.App(
        f"{settings.consumer_group}-app",
        broker=f"kafka://{settings.bootstrap_servers.split(',')[0]}",
        web_enabled=True,
        # faust binds web_bind (its default: every address); web_host only names it in URLs.
        web_bind=settings.metrics_host,
        web_host="127.0.0.1",
        web_port=settings.metrics_port,
        web_in_thread=False,
        # The worker has no faust tables: nothing for these pages to show, on any address.
        web_router_enabled=False,
        web_tables_enabled=False,
        topic_replication_factor=1,
        # faust's own consumer group (no topics of ours) gates the worker's start: a worker
        # restarted after a kill waits this long for its dead predecessor to leave.
        broker_session_timeout=settings.session_timeout_seconds,
        broker_heartbeat_interval=settings.session_timeout_seconds / 3,
        store="memory://",
        datadir=str(settings.work_dir / "faust"),
    )

    @app.service
    class HostedRawTopicService(Service):
        """Starts and stops the raw-topic service with the faust worker."""

        async def on_start(self) -> None:
            await self.add_runtime_dependency(service)

        async def on_shutdown(self) -> None:
            # The raw-topic service, a runtime dependency, is stopped by now.
            if after_stop is not None:
                after_stop(service)

    @app.page(METRICS_PATH)
    async def metrics_page(view: faust.web.View, request: faust.web.Request) -> faust.web.Response:
        body, content_type = render(metrics.registry)
        return view.bytes(body, headers={"Content-Type": content_type})

    @app.timer(interval=LAG_REFRESH_SECONDS)
    async def refresh_lag() -> None:
        await service.refresh_lag()

    @app.timer(interval=1.0)
    async def report_outage_end() -> None:
        if outage_log is not None:
            outage_log.tick()

    if status is not None:

        @app.timer(interval=status.interval_s)
        async def show_status() -> None:
            status.tick()

        del show_status

    del HostedRawTopicService, metrics_page, refresh_lag, report_outage_end
    return Worker(app=app, service=service, metrics=metrics)
