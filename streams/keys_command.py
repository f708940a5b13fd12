"""``sieve keys new PATH``: make a key file for SIEVE_KEYRING_FILE without writing Python.

The file holds fresh random keys (pseudonymization and encryption, see
:mod:`streams.privacy.keyring`) with mode 0600. Nothing of the key material is printed.
"""

from __future__ import annotations

from pathlib import Path

import click

from streams.errors import ConfigurationError
from streams.privacy.keyring import Keyring, replace_with_new_keyring, write_new_keyring
from streams.settings import reads_settings


@click.group("keys")
def keys() -> None:
    """Key files (SIEVE_KEYRING_FILE)."""


@reads_settings()
@keys.command("new")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Replace an existing file. Its keys are lost: identifiable files encrypted with"
    " them can no longer be read, and pseudonyms change.",
)
@click.option(
    "--exist-ok",
    is_flag=True,
    help="If PATH already holds a valid key file, keep it and succeed (for a setup step that"
    " runs every time, like docker compose's `keys` service).",
)
def new_command(path: Path, force: bool, exist_ok: bool) -> None:
    """Write a new key file to PATH (mode 0600); refuse to overwrite one without --force.

    Point SIEVE_KEYRING_FILE at it.
    """
    if exist_ok and not force and path.exists():
        Keyring.load(path)  # an unreadable or malformed file is an error, not "ok"
        click.echo(f"key file kept: {path} (it exists)")
        return
    if force:
        keyring = replace_with_new_keyring(path)
    else:
        try:
            keyring = write_new_keyring(path)
        except ConfigurationError:
            raise ConfigurationError(
                f"{path} already exists; refusing to overwrite it (its keys may be the only way"
                " to read existing data). Use --force to replace it anyway"
            ) from None
    click.echo(f"key file written: {path} (mode 0600; {keyring!r})")
    click.echo(f"use it with: export SIEVE_KEYRING_FILE={path.absolute()}")
