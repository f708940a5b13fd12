"""The root of Sieve's exceptions, and the contract's own error.

They live in the contract package, the bottom layer, so that the contract raises its error
without importing the runtime (``streams.errors`` re-exports both, with the runtime's
errors beside them). An error says what happened and what to do, and carries its context as
attributes.
"""

from __future__ import annotations


class SieveError(Exception):
    """Root of every error Sieve raises on purpose. The CLI prints it as one line."""

    exit_code = 1


class InvalidEventError(SieveError):
    """An event breaks the contract. ``problems`` lists every (path, reason) found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        summary = "; ".join(f"{path}: {reason}" for path, reason in problems[:5])
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid event: {summary}{more}")
