"""The event contract as JSON Schema (draft 2020-12) files, generated from ``schemas.events``.

One self-contained file per event type (``<type>.schema.json``, its nested records under
``$defs``) and ``event.schema.json``, which accepts any event by dispatching on ``type`` to
those files (``$ref`` relative to its ``$id``), so a producer in any language validates with
one file set. The structs stay the single source: this module only reshapes
``msgspec.json.schema`` output, and ``--check`` (run by the unit tests) fails when the
committed files drift from the structs.

    python -m schemas.jsonschema            # rewrite schemas/json/v1/
    python -m schemas.jsonschema --check    # exit 1 if the committed files are stale
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas.events import (
    BACKFILL_HEADER,
    DEFAULT_BACKFILL_MAX_BEHIND,
    DEFAULT_EVENT_MAX_AHEAD,
    DEFAULT_EVENT_MAX_BEHIND,
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    MAX_NESTING_DEPTH,
    MAX_USER_AGENT_BYTES,
    SCHEMA_VERSION,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
# The `$id`s name the files; nothing is served there (`.invalid` is a reserved TLD, RFC 2606).
# Validators resolve the `$ref`s of event.schema.json against the loaded files, not the network.
BASE_URI: Final = f"https://sieve.invalid/schemas/json/v{SCHEMA_VERSION}/"
SCHEMA_DIR: Final = Path(__file__).parent / "json" / f"v{SCHEMA_VERSION}"
EVENT_SCHEMA_FILE: Final = "event.schema.json"

_GENERATED: Final = (
    "Generated from schemas/events.py by `python -m schemas.jsonschema`; do not edit."
)


def _days(span: timedelta) -> str:
    return f"{span.days} day" if span.days == 1 else f"{span.days} days"


# What JSON Schema cannot say; every Sieve consumer enforces it (schemas.validate,
# schemas.decode, the collector). The time window is relative to the event's arrival,
# which no schema of the event alone can know.
_EXTRA_RULES: Final = (
    f"Rules beyond this schema: the UTF-8 JSON of one event is at most {MAX_EVENT_BYTES} bytes "
    f"and nests at most {MAX_NESTING_DEPTH} levels (the event object is level 1); "
    f"user_agent is at most {MAX_USER_AGENT_BYTES} bytes in UTF-8; integers are written "
    "without a fraction or exponent (200, not 200.0); occurred_at is an instant of the years "
    "0001-9999 in UTC and lies in a window around the event's arrival (the Kafka record "
    "timestamp, or when the collector received it): by default at most "
    f"{_days(DEFAULT_EVENT_MAX_AHEAD)} later and {_days(DEFAULT_EVENT_MAX_BEHIND)} earlier, "
    f"or {_days(DEFAULT_BACKFILL_MAX_BEHIND)} earlier for a record with the Kafka header "
    f"{BACKFILL_HEADER}=1 (a backfill, as `sieve replay` sends); the deployment's settings "
    "SIEVE_EVENT_MAX_AHEAD, SIEVE_EVENT_MAX_BEHIND and SIEVE_BACKFILL_MAX_BEHIND may change "
    "the window."
)


def schema_filename(type_name: str) -> str:
    """The file holding the schema of events whose ``type`` is ``type_name``."""
    return f"{type_name}.schema.json"


def type_schema(type_name: str) -> dict[str, Any]:
    """The standalone schema of one event type, its nested records under ``$defs``."""
    cls = EVENT_TYPES[type_name]
    generated = _portable_patterns(msgspec.json.schema(cls))
    defs: dict[str, Any] = generated["$defs"]
    # msgspec answers {"$ref": "#/$defs/Request", "$defs": {...}}; hoisting the referenced
    # definition to the root makes the file's root the event itself, and the "#/$defs/Geo"
    # references inside it stay valid because $defs stays at the root.
    body: dict[str, Any] = defs.pop(generated["$ref"].rsplit("/", 1)[1])
    docstring = body.pop("description", "")
    body.pop("title", None)
    schema: dict[str, Any] = {
        "$schema": DIALECT,
        "$id": BASE_URI + schema_filename(type_name),
        "$comment": _GENERATED,
        "title": f"Sieve event v{SCHEMA_VERSION}: {type_name}",
        "description": f"{docstring} {_EXTRA_RULES}".strip(),
        **body,
    }
    if defs:
        schema["$defs"] = defs
    return schema


def ecma_pattern(python: str) -> str:
    """The JSON Schema (ECMA-262) form of a pattern msgspec checks in Python: a final
    ``\\Z`` is ECMA's "$" (see ``schemas.events.python_pattern``)."""
    return python[:-2] + "$" if python.endswith("\\Z") else python


def _portable_patterns(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: ecma_pattern(value) if key == "pattern" else _portable_patterns(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_portable_patterns(item) for item in node]
    return node


def event_schema() -> dict[str, Any]:
    """The schema of any event: ``type`` names the per-type file the event must satisfy."""
    type_names = sorted(EVENT_TYPES)
    # if/then rather than oneOf: a validator reports the errors of the one schema that
    # applies, not of nine branches that all fail.
    dispatch = [
        {
            "if": {"properties": {"type": {"const": name}}, "required": ["type"]},
            "then": {"$ref": schema_filename(name)},
        }
        for name in type_names
    ]
    return {
        "$schema": DIALECT,
        "$id": BASE_URI + EVENT_SCHEMA_FILE,
        "$comment": _GENERATED,
        "title": f"Sieve event v{SCHEMA_VERSION}",
        "description": (
            "One activity event: a flat JSON object with the envelope fields and the fields "
            "of its type. `type` selects the schema in the file <type>.schema.json beside "
            "this one (load them all; $ref is relative to $id). " + _EXTRA_RULES
        ),
        "type": "object",
        "required": ["type"],
        "properties": {"type": {"enum": type_names}},
        "allOf": dispatch,
    }


def generate() -> dict[str, dict[str, Any]]:
    """Every schema file of the contract: file name -> schema."""
    files = {schema_filename(name): type_schema(name) for name in sorted(EVENT_TYPES)}
    if EVENT_SCHEMA_FILE in files:
        raise ValueError(f"an event type would overwrite {EVENT_SCHEMA_FILE}")
    files[EVENT_SCHEMA_FILE] = event_schema()
    return files


def render(schema: dict[str, Any]) -> str:
    """The committed text of a schema: stable key order, 2-space indent, final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def drift(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the files in ``directory`` that differ from, lack or exceed the generated set."""
    expected = {name: render(schema) for name, schema in generate().items()}
    present = {p.name for p in directory.glob("*.schema.json")} if directory.is_dir() else set()
    stale = sorted(present - expected.keys())
    changed = [
        name
        for name, text in sorted(expected.items())
        if name not in present or (directory / name).read_text(encoding="utf-8") != text
    ]
    return changed + stale


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    """(Re)write every schema file and delete stale ones; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    expected = generate()
    for path in directory.glob("*.schema.json"):
        if path.name not in expected:
            path.unlink()
    written = []
    for name, schema in expected.items():
        path = directory / name
        path.write_text(render(schema), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: write the files, or with ``--check`` report drift (exit 1)."""
    parser = argparse.ArgumentParser(
        prog="python -m schemas.jsonschema",
        description="Generate the JSON Schema files of the event contract from schemas/events.py.",
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on drift")
    parser.add_argument("--dir", type=Path, default=SCHEMA_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift(args.dir)
        if stale:
            print(
                f"JSON Schema files out of date in {args.dir}: {', '.join(stale)}. "
                "Run `python -m schemas.jsonschema` and commit the result.",
                file=sys.stderr,
            )
            return 1
        print(f"JSON Schema files in {args.dir} are up to date.")
        return 0
    for path in write(args.dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
