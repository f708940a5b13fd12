"""The demo's worker: a real ``sieve worker`` subprocess, and waiting on what it commits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Final

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from streams.broker.control import free_ports
from streams.errors import SieveError
from streams.kafka_clients import admin_client
from streams.settings import ENV_PREFIX, Settings
from streams.worker.commands import committed_totals

WORKER_START_TIMEOUT_S: Final = 120.0
WORKER_STOP_TIMEOUT_S: Final = 60.0
POLL_S: Final = 0.5
CLIENT_ID: Final = "sieve-demo"


class DemoError(SieveError):
    """A step of the demo failed; the message says which and what to do."""


def _env_value(value: object) -> str:
    if isinstance(value, timedelta):
        return f"PT{value.total_seconds()}S"  # ISO 8601: pydantic reads no bare seconds
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):  # a list setting (SIEVE_COLLECTOR_CORS_ORIGINS): comma separated
        return ",".join(str(item) for item in value)
    return str(value)


def worker_environment(settings: Settings, keyring_file: Path, index: int = 0) -> dict[str, str]:
    """This process's environment with every SIEVE_* variable taken from ``settings``: the
    worker sees exactly the demo's configuration, whatever the shell held. Worker ``index``
    > 0 (a second worker beside the first) gets its own state folder and metrics port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is not None:
            env[f"{ENV_PREFIX}{name.upper()}"] = _env_value(value)
    env[f"{ENV_PREFIX}KEYRING_FILE"] = str(keyring_file)
    if index or "metrics_port" not in settings.model_fields_set:
        # The default port may be another worker's (one running beside the demo).
        env[f"{ENV_PREFIX}METRICS_PORT"] = str(free_ports(1)[0])
    if index:
        # A cache of the committed ranges per partition (rebuilt from them when missing):
        # two processes must not open one partition's store at once.
        state = settings.state_dir or settings.work_dir / "state"
        env[f"{ENV_PREFIX}STATE_DIR"] = f"{state}-{index + 1}"
    return env


class WorkerProcess:
    """One ``sieve worker`` subprocess in its own session: Ctrl-C reaches only the demo,
    which then stops the worker with SIGTERM so it commits what it buffered."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._terminated = False
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as log:  # this run's log only: an old one would mislead
            self.process = subprocess.Popen(
                [sys.executable, "-m", "streams.cli", "worker"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int | None:
        """SIGTERM (faust flushes and commits), SIGKILL after ``timeout_s``; the exit code."""
        self.terminate()
        return self.wait_stopped(timeout_s)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: faust flushes and commits), once: a second SIGTERM
        during its shutdown is not asked for. See :meth:`wait_stopped`."""
        if self.alive() and not self._terminated:
            self._terminated = True
            os.killpg(self.process.pid, signal.SIGTERM)

    def wait_stopped(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> int | None:
        """Wait for it to exit after :meth:`terminate`, SIGKILL after ``timeout_s``."""
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)
        return self.process.returncode

    def failed(self, problem: str, console: Console) -> DemoError:
        """The error for ``problem``, after showing the end of the worker's log."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        console.print("\n".join(text.splitlines()[-25:]), style="dim", markup=False)
        return DemoError(f"{problem} (worker log: {self.log_path})")

    def check(self, console: Console, doing: str) -> None:
        if not self.alive():
            code = self.process.returncode
            raise self.failed(f"the worker exited (code {code}) while {doing}", console)


def stop_all(workers: Sequence[WorkerProcess]) -> list[int | None]:
    """Stop ``workers`` together (each commits what it buffered meanwhile); their exit codes."""
    for worker in workers:
        worker.terminate()
    return [worker.wait_stopped() for worker in workers]


def check_all(workers: Sequence[WorkerProcess], console: Console, doing: str) -> None:
    for worker in workers:
        worker.check(console, doing)


def wait_until_ready(
    bootstrap_servers: str, group: str, workers: Sequence[WorkerProcess], console: Console
) -> None:
    """Return once ``group`` is stable with a member per worker. Not needed for correctness
    (the group's position is fixed, the workers catch up), but a worker that never joins
    fails here with that reason rather than later as a stall. (One that exits is caught
    sooner: the demo checks them while generating.)"""
    admin = admin_client(bootstrap_servers=bootstrap_servers, client_id=CLIENT_ID)
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while True:
            described = admin.describe_groups([group])[group]
            members = len(described["members"])
            if described["group_state"] == "Stable" and members >= len(workers):
                return
            check_all(workers, console, "starting")
            if time.monotonic() > deadline:
                timeout = f"{WORKER_START_TIMEOUT_S:.0f} s"
                problem = (
                    f"{len(workers) - members} of the workers did not join {group} in {timeout}"
                )
                raise workers[0].failed(problem, console)
            time.sleep(POLL_S)
    finally:
        admin.close()


def wait_until_committed(
    settings: Settings,
    records: int,
    workers: Sequence[WorkerProcess],
    console: Console,
    stall_s: float,
) -> tuple[Counter[str], Counter[str]]:
    """Poll the commit markers until ``records`` raw records are committed; return the
    totals and the dead letters by reason. Fails when a worker exits or they commit nothing
    for ``stall_s`` seconds."""
    columns = (TextColumn("[bold]process"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("process", total=records)
        last_raw, last_change = -1, time.monotonic()
        while True:
            totals, dead, _, _ = committed_totals(settings.data_root, settings.raw_topic)
            raw = totals["raw"]
            progress.update(task, completed=raw)
            if raw >= records:
                return totals, dead
            if raw != last_raw:
                last_raw, last_change = raw, time.monotonic()
            check_all(workers, console, f"{raw:,} of {records:,} records were committed")
            if time.monotonic() - last_change > stall_s:
                problem = f"the workers committed nothing for {stall_s:.0f} s"
                raise workers[0].failed(f"{problem} ({raw:,} of {records:,} records)", console)
            time.sleep(POLL_S)
