"""The composition root: ``sieve <command>``.

Commands are loaded lazily (``module:attribute``), so ``sieve --help`` and light commands
never import faust or DuckDB. Each command builds :class:`streams.settings.Settings` once
and passes it inward.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from streams.errors import SieveError
from streams.settings import declared_settings, describe_environment

COMMANDS: dict[str, tuple[str, str]] = {
    "broker": ("streams.broker.commands:broker", "Start, stop or inspect the local Kafka broker."),
    "topics": ("streams.topics:topics_command", "Create the raw and dead-letter topics."),
    "generate": ("streams.generate.commands:generate", "Produce realistic, deterministic traffic."),
    "replay": ("streams.replay:replay_command", "Replay an access log or JSON lines as events."),
    "collect": ("streams.collector:collect_command", "Run the HTTP collector."),
    "worker": ("streams.worker.commands:worker_command", "Run a stream processor."),
    "status": ("streams.worker.commands:status_command", "Committed counts and lag."),
    "retention": ("streams.subject.commands:retention", "Enforce retention on identifiable logs."),
    "subject": ("streams.subject.commands:subject", "Access export and erasure for one person."),
    "sql": ("aggregations.commands:sql_command", "Query the anonymized datasets with DuckDB."),
    "publish": ("aggregations.commands:publish_command", "Publish metering and analytics."),
    "compact": ("streams.compact_command:compact_command", "Merge closed days' small files."),
    "pricing": ("aggregations.commands:pricing_command", "Invoice lines for a period."),
    "analytics": ("aggregations.commands:analytics_command", "Ready analytics reports."),
    "dashboard": ("aggregations.commands:dashboard_command", "Write or serve the dashboard."),
    "demo": ("streams.demo:demo_command", "Run the whole pipeline end to end."),
    "keys": ("streams.keys_command:keys", "Make a key file (keys new PATH)."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def __init__(self, *args: Any, lazy: dict[str, tuple[str, str]], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module_name, attr = self._lazy[cmd_name][0].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            _with_environment_help(command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every command's module (faust, DuckDB): use the static help.
        rows = [(name, self._lazy[name][1]) for name in sorted(self._lazy)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _with_environment_help(command: click.Command) -> None:
    """A group lists the variables its commands read (each command declares its own with
    ``streams.settings.reads_settings``, and its ``--help`` lists exactly those)."""
    if isinstance(command, click.Group) and command.epilog is None:
        command.epilog = group_environment_help(command)


def group_environment_help(group: click.Group) -> str:
    read: set[str] = set()
    for subcommand in group.commands.values():
        read |= declared_settings(subcommand) or set()
    if not read:
        return "Its commands read no SIEVE_* environment variable."
    return "Environment variables its commands read:\n\n\b\n" + describe_environment(read)


ENV_HELP = (
    "Environment variables (each command's --help lists the ones it reads):\n\n\b\n"
    + describe_environment()
)


@click.group(cls=LazyGroup, lazy=COMMANDS, epilog=ENV_HELP)
@click.version_option(package_name="sieve")
def cli() -> None:
    """Sieve: privacy-first activity logging and aggregation on Kafka."""


def main() -> None:
    """Run the CLI; a SieveError prints one clear line instead of a traceback."""
    try:
        result = cli.main(standalone_mode=False)
        # Without standalone mode click returns ctx.exit()'s code instead of exiting.
        if isinstance(result, int) and not isinstance(result, bool):
            sys.exit(result)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.ClickException as bad_usage:
        bad_usage.show()
        sys.exit(bad_usage.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except SieveError as error:
        click.secho(f"sieve: {error}", fg="red", err=True)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
