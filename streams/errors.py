"""The root of Sieve's exceptions.

An error says what happened and what to do, carries its context as attributes, and says
whether it is terminal (bad input: retrying cannot help, the input goes to the dead-letter
topic) or transient (a broker away: retry).
"""

from __future__ import annotations


class SieveError(Exception):
    """Root of every error Sieve raises on purpose. The CLI prints it as one line."""

    exit_code = 1
    transient = False


class ConfigurationError(SieveError):
    """A setting or a file it names is missing or wrong; the message names which."""

    exit_code = 2


class TransientError(SieveError):
    """Something outside Sieve is away (broker, disk); the same call may succeed later."""

    transient = True


class InvalidEventError(SieveError):
    """An event breaks the contract. ``problems`` lists every (path, reason) found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        summary = "; ".join(f"{path}: {reason}" for path, reason in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid event: {summary}{more}")
