"""The contract's JSON Schema evaluated without the jsonschema package, for speed.

Explaining a rejected event with jsonschema cost ~0.1 ms, 5.5 times what accepting a valid
one costs the worker (issue 14): a flood of malformed records slowed it down that much, and
12 concurrent batches of invalid events starved the collector. The schemas Sieve generates
(``schemas.jsonschema``) use only a handful of keywords, and evaluating those directly over
the decoded event costs a few microseconds.

:class:`SubsetValidator` reports errors exactly as jsonschema's ``iter_errors`` does for
the keywords in :data:`KEYWORDS` (draft 2020-12 semantics, same order, same attributes:
``validator``, ``validator_value``, ``instance``, ``schema``, ``absolute_path``,
``relative_schema_path``, ``context``), so :mod:`schemas.problems` words both alike. A
schema using any other keyword is refused when the validator is built
(:class:`UnsupportedSchema`), and :mod:`schemas.validate` then uses jsonschema for it: new
keywords in the contract can never be silently ignored. The unit tests run both evaluators
on the same mutated events and require identical problems.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.events import python_pattern

# Keywords that only annotate (no effect on validity in draft 2020-12).
_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$comment", "$defs", "title", "description", "default", "examples"}
)
KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "additionalProperties",
        "enum",
        "const",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "format",
        "anyOf",
        "$ref",
    }
)

FormatCheck = Callable[[str, object], bool]  # (format, instance) -> conforms


class UnsupportedSchema(ValueError):
    """The schema uses something this evaluator does not implement."""


@dataclass(slots=True)
class SchemaError:
    """One failed keyword, with the attributes of jsonschema's ``ValidationError`` that
    :mod:`schemas.problems` reads."""

    validator: str
    validator_value: Any
    instance: Any
    schema: Mapping[str, Any]
    absolute_path: tuple[str | int, ...]
    relative_schema_path: tuple[Any, ...] = ()
    context: list[SchemaError] = field(default_factory=list)


# The type checker of schemas.validate: jsonschema's, with "integer" meaning a JSON integer
# (200.0 is not one, as msgspec decides) and bool never a number.
_TYPES: Final[dict[str, Callable[[object], bool]]] = {
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, int | float) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
}


@functools.cache
def compiled_pattern(ecma: str) -> re.Pattern[str]:
    """A JSON Schema pattern compiled with ECMA-262's meaning of a final "$"."""
    return re.compile(python_pattern(ecma))


def _json_equal(one: object, two: object) -> bool:
    # jsonschema's equality for scalar enum members: bools equal only bools, 1 == 1.0.
    if isinstance(one, str) or isinstance(two, str):
        return one == two
    if isinstance(one, bool) or isinstance(two, bool):
        return one is two
    return one == two


class SubsetValidator:
    """Validates instances against one schema (and its local ``$defs``)."""

    def __init__(self, schema: Mapping[str, Any], format_ok: FormatCheck) -> None:
        self._root = schema
        self._format_ok = format_ok
        self._check_supported(schema)

    def iter_errors(self, instance: object) -> Iterator[SchemaError]:
        """Every error, as jsonschema's ``iter_errors`` would yield them, in its order."""
        return self._errors(self._root, instance, ())

    # -- building ----------------------------------------------------------------------------

    def _check_supported(self, schema: Any) -> None:
        if not isinstance(schema, Mapping):
            raise UnsupportedSchema("a schema that is not an object")
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            if keyword not in KEYWORDS:
                raise UnsupportedSchema(f"the keyword {keyword}")
            if keyword == "properties":
                for sub in value.values():
                    self._check_supported(sub)
            elif keyword == "anyOf":
                for sub in value:
                    self._check_supported(sub)
            elif keyword == "$ref":
                self._check_supported(self._resolve(value))
            elif keyword == "additionalProperties" and value is not False:
                raise UnsupportedSchema("additionalProperties other than false")
            elif keyword in ("enum", "const"):
                members = value if keyword == "enum" else [value]
                if not all(m is None or isinstance(m, str | int | float) for m in members):
                    raise UnsupportedSchema(f"{keyword} members that are not scalars")
            elif keyword == "pattern":
                compiled_pattern(value)
            elif keyword == "type":
                names = value if isinstance(value, list) else [value]
                if not all(name in _TYPES for name in names):
                    raise UnsupportedSchema(f"the type {value}")
        if "patternProperties" in schema:  # additionalProperties would depend on it
            raise UnsupportedSchema("patternProperties")

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        prefix = "#/$defs/"
        if not ref.startswith(prefix):
            raise UnsupportedSchema(f"the reference {ref}")
        try:
            target: Mapping[str, Any] = self._root["$defs"][ref.removeprefix(prefix)]
        except KeyError:
            raise UnsupportedSchema(f"the unresolvable reference {ref}") from None
        return target

    # -- evaluating --------------------------------------------------------------------------

    def _errors(
        self, schema: Mapping[str, Any], instance: object, path: tuple[str | int, ...]
    ) -> Iterator[SchemaError]:
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            if keyword == "properties":
                if isinstance(instance, dict):
                    for name, sub in value.items():
                        if name in instance:
                            yield from self._errors(sub, instance[name], (*path, name))
            elif keyword == "anyOf":
                yield from self._any_of(value, instance, schema, path)
            elif keyword == "$ref":
                yield from self._errors(self._resolve(value), instance, path)
            elif keyword == "required":
                if isinstance(instance, dict):
                    for name in value:
                        if name not in instance:
                            yield SchemaError(keyword, value, instance, schema, path)
            elif not _holds(keyword, value, instance, schema, self._format_ok):
                yield SchemaError(keyword, value, instance, schema, path)

    def _any_of(
        self,
        branches: list[Mapping[str, Any]],
        instance: object,
        schema: Mapping[str, Any],
        path: tuple[str | int, ...],
    ) -> Iterator[SchemaError]:
        context: list[SchemaError] = []
        for index, branch in enumerate(branches):
            errors = list(self._errors(branch, instance, path))
            if not errors:
                return
            for error in errors:
                error.relative_schema_path = (index, *error.relative_schema_path)
            context.extend(errors)
        yield SchemaError("anyOf", branches, instance, schema, path, (), context)


def _holds(
    keyword: str,
    value: Any,
    instance: object,
    schema: Mapping[str, Any],
    format_ok: FormatCheck,
) -> bool:
    """Whether ``instance`` satisfies one leaf keyword (jsonschema's rules: a keyword about
    strings or numbers holds for values of other types)."""
    if keyword == "type":
        names = value if isinstance(value, list) else [value]
        return any(_TYPES[name](instance) for name in names)
    if keyword == "additionalProperties":
        if not isinstance(instance, dict):
            return True
        known = schema.get("properties", {})
        return all(key in known for key in instance)
    if keyword == "enum":
        return any(_json_equal(member, instance) for member in value)
    if keyword == "const":
        return _json_equal(value, instance)
    if keyword == "format":
        return format_ok(value, instance)
    if isinstance(instance, str):
        if keyword == "pattern":
            return compiled_pattern(value).search(instance) is not None
        if keyword == "minLength":
            return len(instance) >= value
        if keyword == "maxLength":
            return len(instance) <= value
        return True
    if isinstance(instance, int | float) and not isinstance(instance, bool):
        if keyword == "minimum":
            return bool(instance >= value)
        if keyword == "maximum":
            return bool(instance <= value)
        if keyword == "exclusiveMinimum":
            return bool(instance > value)
        if keyword == "exclusiveMaximum":
            return bool(instance < value)
    return True
