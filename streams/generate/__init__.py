"""Realistic synthetic traffic with an exact ground truth (``sieve generate``).

The model (:mod:`streams.generate.model`) is pure and deterministic from a seed; the
command (:mod:`streams.generate.commands`) is the adapter that reads the clock, paces,
and sends to Kafka or a file.
"""

from streams.generate.model import MAX_LATENESS, MIN_LATENESS, TrafficConfig, TrafficModel
from streams.generate.records import (
    MALFORMED_REASONS,
    GeneratedRecord,
    GroundTruth,
    tally,
    write_jsonl,
)
from streams.generate.user_agents import load_user_agents

__all__ = [
    "MALFORMED_REASONS",
    "MAX_LATENESS",
    "MIN_LATENESS",
    "GeneratedRecord",
    "GroundTruth",
    "TrafficConfig",
    "TrafficModel",
    "load_user_agents",
    "tally",
    "write_jsonl",
]
