"""The committed JSON Schema files: fresh, valid draft 2020-12, and usable by any validator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from schemas import jsonschema as contract
from schemas.events import EVENT_TYPES, Event, encode
from tests.fixtures.strategies import events

FILES = sorted(contract.SCHEMA_DIR.glob("*.schema.json"))


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


def test_committed_files_equal_freshly_generated_ones() -> None:
    assert contract.drift() == [], "run `python -m schemas.jsonschema` and commit the result"
    assert {p.name for p in FILES} == set(contract.generate())


def test_there_is_a_file_per_type_and_a_dispatching_one() -> None:
    names = {p.name for p in FILES}
    assert names == {f"{t}.schema.json" for t in EVENT_TYPES} | {"event.schema.json"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_file_is_a_valid_draft_2020_12_schema(path: Path) -> None:
    schema = load(path)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)  # raises SchemaError when invalid
    assert schema["$id"] == contract.BASE_URI + path.name
    assert schema["title"]
    assert schema["description"]


def _event_validator() -> Draft202012Validator:
    # As a producer in another language would: every file loaded, refs resolved by $id, a
    # plain draft 2020-12 validator (no Sieve customisation), formats asserted.
    resources = [(s["$id"], Resource.from_contents(s)) for s in map(load, FILES)]
    registry: Registry[Any] = Registry().with_resources(resources)
    schema = load(contract.SCHEMA_DIR / contract.EVENT_SCHEMA_FILE)
    return Draft202012Validator(
        schema, registry=registry, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


EVENT_VALIDATOR = _event_validator()


@given(events())
def test_event_schema_accepts_every_valid_event(ev: Event) -> None:
    instance = msgspec.json.decode(encode(ev))
    assert list(EVENT_VALIDATOR.iter_errors(instance)) == []


LOGOUT = {
    "type": "logout",
    "schema_version": 1,
    "event_id": "e1",
    "occurred_at": "2024-05-01T00:00:00Z",
    "account_id": "a1",
    "session_duration_s": 12.5,
}


@pytest.mark.parametrize(
    "changes",
    [
        {"type": "click"},
        {"type": None},
        {"session_duration_s": None},  # required by the logout schema the type selects
        {"type": "login"},  # session_duration_s is no field of a login
        {"ip": "999.1.2.3"},
        {"occurred_at": "2024-05-01T00:00:00"},
        {"schema_version": 2},
        {"card_number": "4111111111111111"},
    ],
)
def test_event_schema_dispatches_on_type_and_rejects(changes: dict[str, Any]) -> None:
    assert EVENT_VALIDATOR.is_valid(LOGOUT)
    instance = {k: v for k, v in {**LOGOUT, **changes}.items() if v is not None}
    assert not EVENT_VALIDATOR.is_valid(instance)


def test_check_reports_drift_and_write_repairs_it(tmp_path: Path) -> None:
    assert contract.main(["--check", "--dir", str(tmp_path)]) == 1  # every file missing
    assert contract.main(["--dir", str(tmp_path)]) == 0
    assert contract.main(["--check", "--dir", str(tmp_path)]) == 0

    login = tmp_path / "login.schema.json"
    login.write_text(login.read_text().replace('"sso"', '"saml"'))
    (tmp_path / "click.schema.json").write_text("{}")
    assert contract.drift(tmp_path) == ["login.schema.json", "click.schema.json"]
    assert contract.main(["--check", "--dir", str(tmp_path)]) == 1

    contract.main(["--dir", str(tmp_path)])
    assert contract.drift(tmp_path) == []
    assert not (tmp_path / "click.schema.json").exists()
