"""``sieve broker start|stop|status``: the local Kafka broker for development and the demo."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import cast

import click
from rich.console import Console

from streams.broker.control import BrokerStatus, LocalBroker
from streams.errors import SieveError
from streams.settings import Settings, reads_settings


class BrokerNotRunningError(SieveError):
    """``sieve broker status`` found no running broker (exit code 3, like LSB's status)."""

    exit_code = 3


def _local_broker() -> LocalBroker:
    # Every Settings field has a default, but mypy sees that only with the pydantic plugin
    # (not enabled in pyproject.toml yet): the cast keeps this clean with and without it.
    settings = cast(Callable[[], Settings], Settings)()
    return LocalBroker(settings.broker_dir, settings.broker_port, settings.broker_controller_port)


def _describe(status: BrokerStatus) -> str:
    state = "answering" if status.answering else "running but not answering"
    return (
        f"Kafka {status.version} {state} at {status.bootstrap_servers}"
        f" (pid {status.pid}); log: {status.log_file}"
    )


@click.group()
def broker() -> None:
    """Run a local single-node Apache Kafka broker (jars from Maven Central, in SIEVE_WORK_DIR)."""


@reads_settings("work_dir", "broker_port", "broker_controller_port")
@broker.command()
@click.option("--timeout", default=90.0, show_default=True, help="Seconds to wait for answers.")
def start(timeout: float) -> None:
    """Start the broker (fetching it on first use) and wait until it answers."""
    local = _local_broker()
    console = Console(stderr=True)
    began = time.monotonic()
    with console.status("Starting Kafka") as spinner:
        status = local.start(timeout, progress=lambda step: spinner.update(step))
    elapsed = time.monotonic() - began
    click.echo(f"{_describe(status)}; ready in {elapsed:.1f} s")


@reads_settings("work_dir", "broker_port", "broker_controller_port")
@broker.command()
@click.option("--timeout", default=30.0, show_default=True, help="Seconds before SIGKILL.")
def stop(timeout: float) -> None:
    """Stop the broker (SIGTERM, then SIGKILL after --timeout)."""
    local = _local_broker()
    with Console(stderr=True).status("Stopping Kafka"):
        was_running = local.stop(timeout)
    click.echo("Kafka stopped" if was_running else "Kafka was not running")


@reads_settings("work_dir", "broker_port", "broker_controller_port")
@broker.command()
def status() -> None:
    """Print whether the broker runs and answers; exit code 3 when it does not run."""
    local = _local_broker()
    found = local.status()
    if not found.running:
        raise BrokerNotRunningError(
            f"Kafka is not running at {found.bootstrap_servers}: start it with `sieve broker start`"
        )
    click.echo(_describe(found))
