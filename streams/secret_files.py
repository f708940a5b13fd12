"""Reading files that hold secrets (the keyring, the collector's write keys).

One place for the rules: the file must be a regular file readable by its owner only, and no
error message may quote its contents (a JSON error's ``doc`` attribute is the whole file).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from streams.errors import ConfigurationError


def read_private_text(path: Path, what: str, missing_hint: str) -> str:
    """The text of ``path`` after checking it is private; errors name ``what`` and the path."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(f"{what} {path} does not exist ({missing_hint})") from None
    except OSError as exc:
        raise ConfigurationError(f"{what} {path} cannot be read ({type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        raise ConfigurationError(f"{what} {path} is not a regular file")
    # Windows has no POSIX modes (st_mode always looks world-readable there).
    if os.name == "posix" and info.st_mode & 0o077:
        raise ConfigurationError(
            f"{what} {path} is accessible by group or others"
            f" (mode {stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}`"
        )
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{what} {path} cannot be read ({type(exc).__name__})") from None


def parse_secret_json(text: str, what: str, source: str) -> Any:
    """JSON of a secret file; a syntax error reports only its position."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(
            f"{what} {source} is not valid JSON (line {exc.lineno}, column {exc.colno})"
        ) from None
