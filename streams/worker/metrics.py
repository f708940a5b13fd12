"""The worker's counters, rendered in the Prometheus text format.

Counters count what this process committed (they move when a range's marker is written,
never before), so they add up: raw = accepted + duplicates + dead-lettered. Totals across
restarts and workers come from the commit markers (``sieve status``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from schemas.commits import RangeCounts


@dataclass
class WorkerMetrics:
    raw: int = 0
    accepted: int = 0
    duplicates: int = 0
    dead_lettered: Counter[str] = field(default_factory=Counter)
    identifiable: Counter[str] = field(default_factory=Counter)
    facts: int = 0
    bytes_written: int = 0
    ranges_committed: int = 0
    lag: dict[int, int] = field(default_factory=dict)  # partition -> records behind

    def add(self, counts: RangeCounts) -> None:
        self.raw += counts.raw
        self.accepted += counts.accepted
        self.duplicates += counts.duplicates
        self.dead_lettered.update(counts.dead_lettered)
        self.identifiable.update(counts.identifiable)
        self.facts += counts.facts
        self.bytes_written += counts.bytes_written
        self.ranges_committed += 1

    def render(self) -> str:
        """The Prometheus exposition text of every counter and gauge."""
        lines = [
            "# HELP sieve_raw_records_total Raw messages committed (accepted+duplicates+dead).",
            "# TYPE sieve_raw_records_total counter",
            f"sieve_raw_records_total {self.raw}",
            "# HELP sieve_accepted_total Events accepted (valid, not duplicates).",
            "# TYPE sieve_accepted_total counter",
            f"sieve_accepted_total {self.accepted}",
            "# HELP sieve_duplicates_total Events dropped as duplicates of an accepted event id.",
            "# TYPE sieve_duplicates_total counter",
            f"sieve_duplicates_total {self.duplicates}",
            "# HELP sieve_dead_lettered_total Raw messages dead-lettered, by reason.",
            "# TYPE sieve_dead_lettered_total counter",
        ]
        lines += [
            f'sieve_dead_lettered_total{{reason="{r}"}} {n}'
            for r, n in sorted(self.dead_lettered.items())
        ]
        lines += [
            "# HELP sieve_identifiable_records_total Identifiable records, by retention class.",
            "# TYPE sieve_identifiable_records_total counter",
        ]
        lines += [
            f'sieve_identifiable_records_total{{retention_class="{c}"}} {n}'
            for c, n in sorted(self.identifiable.items())
        ]
        lines += [
            "# HELP sieve_facts_total Anonymized fact rows written.",
            "# TYPE sieve_facts_total counter",
            f"sieve_facts_total {self.facts}",
            "# HELP sieve_bytes_written_total Bytes of Parquet written.",
            "# TYPE sieve_bytes_written_total counter",
            f"sieve_bytes_written_total {self.bytes_written}",
            "# HELP sieve_ranges_committed_total Offset ranges committed (files + marker).",
            "# TYPE sieve_ranges_committed_total counter",
            f"sieve_ranges_committed_total {self.ranges_committed}",
            "# HELP sieve_consumer_lag Records of the raw topic not yet fetched, by partition.",
            "# TYPE sieve_consumer_lag gauge",
        ]
        lines += [f'sieve_consumer_lag{{partition="{p}"}} {n}' for p, n in sorted(self.lag.items())]
        return "\n".join(lines) + "\n"
