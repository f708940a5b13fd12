"""Sieve's exceptions: the root and the contract's error (defined in ``schemas.errors``, the
bottom layer, and re-exported here) and the runtime's own.

An error says what happened and what to do and carries its context as attributes. Bad input
is terminal (retrying cannot help: the input goes to the dead-letter topic); a
``TransientError`` says the same call may succeed later.
"""

from __future__ import annotations

from schemas.errors import InvalidEventError, SieveError

__all__ = ["ConfigurationError", "InvalidEventError", "SieveError", "TransientError"]


class ConfigurationError(SieveError):
    """A setting or a file it names is missing or wrong; the message names which."""

    exit_code = 2


class TransientError(SieveError):
    """Something outside Sieve is away (broker, disk); the same call may succeed later."""
