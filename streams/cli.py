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
from streams.settings import describe_environment

COMMANDS: dict[str, str] = {
    "broker": "streams.broker.commands:broker",
    "topics": "streams.topics:topics_command",
    "generate": "streams.generate.commands:generate",
    "replay": "streams.replay:replay_command",
    "collect": "streams.collector:collect_command",
    "worker": "streams.worker.commands:worker_command",
    "status": "streams.worker.commands:status_command",
    "retention": "streams.subject.commands:retention",
    "subject": "streams.subject.commands:subject",
    "sql": "aggregations.commands:sql_command",
    "publish": "aggregations.commands:publish_command",
    "pricing": "aggregations.commands:pricing_command",
    "analytics": "aggregations.commands:analytics_command",
    "dashboard": "aggregations.commands:dashboard_command",
    "demo": "streams.demo:demo_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when used."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self._lazy:
            module_name, attr = self._lazy[cmd_name].split(":")
            command = getattr(importlib.import_module(module_name), attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)


ENV_HELP = "Environment variables (all commands read the ones they need):\n\n\b\n" + (
    describe_environment()
)


@click.group(cls=LazyGroup, lazy=COMMANDS, epilog=ENV_HELP)
@click.version_option(package_name="sieve")
def cli() -> None:
    """Sieve: privacy-first activity logging and aggregation on Kafka."""


def main() -> None:
    """Run the CLI; a SieveError prints one clear line instead of a traceback."""
    try:
        cli.main(standalone_mode=False)
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
