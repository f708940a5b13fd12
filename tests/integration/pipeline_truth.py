"""Ground truth for worker tests, computed independently of the worker's code.

The rules are re-implemented here from the policy text (docs and policy.toml), not
imported, so a bug in the worker's consent or split logic cannot hide behind itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.events import AccountLifecycle, ConsentChange, Event
from streams.encryption import ParquetEncryption
from streams.generate.model import TrafficConfig
from streams.generate.records import GeneratedRecord
from streams.generate.user_agents import load_user_agents
from streams.privacy.keyring import Keyring

CLASS_OF = {
    "request": "traffic",
    "page_view": "activity",
    "login": "activity",
    "logout": "activity",
    "upload": "content",
    "download": "content",
    "payment": "billing",
    "account": "account",
    "consent": "account",
}
KEPT_DESPITE_OPT_OUT = {"billing", "account"}


TRAFFIC_END = datetime(2026, 11, 1, tzinfo=UTC)
# A Kafka record timestamp for traffic_config's records fed to a pipeline without a broker:
# an hour after the traffic ends, so every event lies inside the arrival window (no event is
# ahead of its arrival, none is older than the live window allows).
TRAFFIC_ARRIVAL_MS = int((TRAFFIC_END + timedelta(hours=1)).timestamp() * 1000)


def traffic_config(
    count: int, seed: int, days: int = 3, end: datetime | None = None, **overrides: float
) -> TrafficConfig:
    end = end or TRAFFIC_END
    return TrafficConfig(
        count=count,
        start=end - timedelta(days=days),
        end=end,
        user_agents=load_user_agents(),
        seed=seed,
        accounts=int(overrides.pop("accounts", 40)),
        **overrides,
    )


def expected_identifiable(records: Iterable[GeneratedRecord]) -> Counter[tuple[str, str]]:
    """Identifiable records per (event type, retention class) the policy promises."""
    opted_out: set[tuple[str, str | None]] = set()
    ended: set[tuple[str, str | None]] = set()
    expected: Counter[tuple[str, str]] = Counter()
    for record in records:
        if record.kind != "event" or record.event is None:
            continue
        event: Event = record.event
        person = (event.account_id, event.user_id)
        account = (event.account_id, None)
        if isinstance(event, ConsentChange):
            (opted_out.add if event.choice == "opt_out" else opted_out.discard)(person)
        if isinstance(event, AccountLifecycle):
            (ended.discard if event.action == "registered" else ended.add)(person)
        keep = not (
            person in opted_out
            or person in ended
            or account in opted_out
            or account in ended
            or event.dnt
            or event.gpc
        )
        tag = type(event).__struct_config__.tag
        assert isinstance(tag, str)
        cls = CLASS_OF[tag]
        if keep or cls in KEPT_DESPITE_OPT_OUT:
            expected[(tag, cls)] += 1
        if keep and cls != "traffic" and (event.ip is not None or event.user_agent is not None):
            expected[(tag, "traffic")] += 1
    return expected


def read_identifiable(
    data_root: Path, keyring_file: Path, relative_paths: list[str] | None = None
) -> pa.Table:
    """Every identifiable row under ``data_root`` (decrypted with the test's keyring), or of
    the files ``relative_paths`` name (relative to the data root)."""
    keys, active = Keyring.load(keyring_file).encryption_keys()
    decryption = ParquetEncryption(keys, active).decryption_properties()
    if relative_paths is None:
        files = sorted(p for p in (data_root / "identifiable").rglob("*.parquet"))
    else:
        files = sorted(data_root / path for path in relative_paths)
    tables = [pq.read_table(path, decryption_properties=decryption) for path in files]
    return pa.concat_tables(tables) if tables else pa.table({})
