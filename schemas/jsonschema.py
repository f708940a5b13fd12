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
from pathlib import Path
from typing import Any, Final

import msgspec

from schemas.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
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

# What JSON Schema cannot say; every Sieve consumer enforces it (schemas.validate, schemas.decode).
_EXTRA_RULES: Final = (
    f"Rules beyond this schema: the UTF-8 JSON of one event is at most {MAX_EVENT_BYTES} bytes; "
    f"user_agent is at most {MAX_USER_AGENT_BYTES} bytes in UTF-8; integers are written "
    "without a fraction or exponent (200, not 200.0)."
)


def schema_filename(type_name: str) -> str:
    """The file holding the schema of events whose ``type`` is ``type_name``."""
    return f"{type_name}.schema.json"


def type_schema(type_name: str) -> dict[str, Any]:
    """The standalone schema of one event type, its nested records under ``$defs``."""
    cls = EVENT_TYPES[type_name]
    generated = msgspec.json.schema(cls)
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
