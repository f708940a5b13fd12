"""Running one worker process: wait for the broker, prepare, start faust, start again.

What ``sieve worker`` does once its settings and keys are loaded (streams.worker.commands);
a module of its own so that importing the command line does not import faust.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TextIO

import faust

from streams.privacy.keyring import Keyring
from streams.settings import Settings
from streams.topics import DeadLetterTopic, prepare_dead_letter_topic
from streams.worker.app import create_app
from streams.worker.metrics import WorkerMetrics
from streams.worker.outage_log import OutageLog, install_outage_filter
from streams.worker.service import RawTopicService
from streams.worker.startup import broker_away, wait_for_broker
from streams.worker.status_line import LIVE_INTERVAL_S, StatusReporter, is_terminal
from streams.worker.stop_watchdog import exit_if_stop_hangs


def run_worker(
    settings: Settings, keyring: Keyring, loglevel: str, *, report: Callable[[str], None]
) -> None:
    """Run the worker until it is stopped; never returns normally (faust exits)."""

    def prepare() -> DeadLetterTopic:
        return prepare_dead_letter_topic(
            settings.bootstrap_servers,
            dead_letter_topic=settings.dead_letter_topic,
            raw_topic=settings.raw_topic,
            raw_partitions=settings.raw_partitions,
            retention_hours=settings.dead_letter_retention_hours,
        )

    # Before faust starts: its own clients give up on a broker that is not there yet.
    what = f"Kafka at {settings.bootstrap_servers}"
    stop_cleanly_on_sigterm()
    dead_letter = wait_for_broker(prepare, what=what, report=report)
    if dead_letter.created:
        report(f"created the dead-letter topic {settings.dead_letter_topic} (it was missing)")
    outage = OutageLog()
    install_outage_filter(outage)
    metrics = WorkerMetrics()
    status = status_reporter(settings, metrics, sys.stderr)
    watchdogs: list[threading.Timer] = []

    def arm_watchdog(service: RawTopicService) -> None:
        watchdogs.append(exit_if_stop_hangs(clean=service.stopped_cleanly))

    worker = create_app(
        settings,
        keyring,
        dead_letter_max_bytes=dead_letter.max_message_bytes,
        outage_log=outage,
        metrics=metrics,
        status=status,
        after_stop=arm_watchdog,
    )
    runner = _Worker(worker.app, loglevel=loglevel, quiet=True)
    try:
        runner.execute_from_commandline()
    except SystemExit as exiting:
        for watchdog in watchdogs:  # faust's stop did finish
            watchdog.cancel()
        if status is not None:
            status.finish()
        if not exiting.code or not broker_away(runner.start_error):
            raise
        # The broker went away while faust started its clients. A fresh process is the
        # only clean restart of faust (its loop is closed, its threads stopped); exec keeps
        # the pid, so a supervisor sees one worker that waited.
        report("the broker went away while the worker was starting; starting again once it is back")
        stop_cleanly_on_sigterm()  # faust's loop, now closed, took its own handler with it
        wait_for_broker(prepare, what=what, report=report)
        restart_in_place([sys.executable, *sys.orig_argv[1:]])  # this very command


def stop_cleanly_on_sigterm() -> None:
    """SIGTERM exits 0 while the worker waits for its broker (faust installs its own handler
    once it runs). Nothing is consumed or buffered then, so a stop is clean: without this, a
    worker stopped while it waited died of the signal, which a supervisor reads as a crash.
    A SIGTERM held back by :func:`restart_in_place` is taken now."""
    signal.signal(signal.SIGTERM, lambda _signum, _frame: sys.exit(0))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def restart_in_place(argv: list[str]) -> NoReturn:
    """Replace this process by ``argv``; exec keeps the pid, so a supervisor sees one worker.

    SIGTERM stays blocked through the exec (a signal mask survives it) until the new process
    installs its handler (:func:`stop_cleanly_on_sigterm`): a stop that lands while the new
    interpreter starts is then a clean exit, not a death by the signal.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        os.execv(argv[0], argv)  # noqa: S606 - the caller's own command
    finally:  # only reached if the exec failed
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def status_reporter(
    settings: Settings, metrics: WorkerMetrics, stream: TextIO
) -> StatusReporter | None:
    """A live line when ``stream`` is a terminal, else a line every
    ``settings.status_interval_seconds`` (none if 0). ``stream`` is taken now, before faust
    replaces ``sys.stderr`` with a proxy into its logging."""
    if is_terminal(stream, os.environ.get("TERM")):
        return StatusReporter(metrics, stream, live=True, interval_s=LIVE_INTERVAL_S)
    if settings.status_interval_seconds > 0:
        return StatusReporter(
            metrics, stream, live=False, interval_s=settings.status_interval_seconds
        )
    return None


class _Worker(faust.Worker):
    """faust's worker, remembering why its start failed (mode logs it, then exits 1), and
    without faust's spinner (cursor escape codes, which the status line replaces)."""

    start_error: BaseException | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spinner = None

    async def start(self) -> None:
        try:
            await super().start()
        except BaseException as error:
            self.start_error = error
            raise
