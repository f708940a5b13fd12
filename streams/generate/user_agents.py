"""The real user-agent strings the synthetic browsers and clients send."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from schemas.events import MAX_USER_AGENT_BYTES
from streams.errors import ConfigurationError


def load_user_agents(path: Path | None = None) -> tuple[str, ...]:
    """Non-empty lines of ``path`` (default: the packaged ``streams/data/user_agents.txt``).

    Repeated lines are kept: the list's repetitions are how common a browser is. Lines
    the contract would reject (over the size limit) are dropped, so every valid
    generated event stays valid.
    """
    try:
        if path is None:
            text = resources.files("streams.data").joinpath("user_agents.txt").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
    except OSError as missing:
        raise ConfigurationError(f"cannot read the user-agent list: {missing}") from missing
    agents = tuple(
        line.strip()
        for line in text.splitlines()
        if line.strip()
        and not line.startswith("#")
        and len(line.strip().encode("utf-8")) <= MAX_USER_AGENT_BYTES
    )
    if not agents:
        raise ConfigurationError(f"the user-agent list {path or 'user_agents.txt'} is empty")
    return agents
