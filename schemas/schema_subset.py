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
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from schemas.events import HEADER_TEXT_PATTERN, TEXT_PATTERN, python_pattern

# Patterns every string of printable ASCII (U+0020-U+007E) matches.
PRINTABLE_ASCII_PATTERNS: Final = frozenset({TEXT_PATTERN, HEADER_TEXT_PATTERN})

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
_NUMBER_KEYWORDS: Final = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
_NULL: Final = {"type": "null"}


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
    """Validates instances against one schema (and its local ``$defs``).

    Each subschema is also compiled into a predicate (one closure with its constants
    bound), and only a value that fails its predicate is walked keyword by keyword to find
    its errors: a rejected event usually breaks one rule among a dozen fields, and the
    fields that hold cost one call each.
    """

    def __init__(self, schema: Mapping[str, Any], format_ok: FormatCheck) -> None:
        self._root = schema
        self._format_ok = format_ok
        self._check_supported(schema)
        self._predicates: dict[int, Callable[[object], bool]] = {}
        self._step_lists: dict[int, list[tuple[str, Any]]] = {}

    def iter_errors(self, instance: object) -> Iterator[SchemaError]:
        """Every error, as jsonschema's ``iter_errors`` would yield them, in its order."""
        return self._errors(self._root, instance, ())

    def is_valid(self, instance: object) -> bool:
        """True if ``instance`` has no error (without finding them)."""
        return self._predicate(self._root)(instance)

    @property
    def root(self) -> Mapping[str, Any]:
        """The schema this validator checks against."""
        return self._root

    @functools.cached_property
    def property_checks(self) -> dict[str, tuple[Mapping[str, Any], Callable[[object], bool]]]:
        """The root's properties: name -> (subschema, predicate)."""
        return {
            name: (sub, self._predicate(sub))
            for name, sub in self._root.get("properties", {}).items()
        }

    @functools.cached_property
    def required(self) -> tuple[str, ...]:
        """The root's required properties."""
        return tuple(self._root.get("required", ()))

    @functools.cached_property
    def closed(self) -> bool:
        """True if the root allows no property beyond its own."""
        return self._root.get("additionalProperties") is False

    def errors_under(
        self, sub: Mapping[str, Any], value: object, name: str
    ) -> Iterator[SchemaError]:
        """The errors ``iter_errors`` reports under the root's property ``name`` (schema
        ``sub``) holding ``value``, the root's other keywords left out."""
        return self._errors(sub, value, (name,))

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

    def _predicate(self, schema: Mapping[str, Any]) -> Callable[[object], bool]:
        predicate = self._predicates.get(id(schema))
        if predicate is None:
            predicate = self._predicates[id(schema)] = self._compile(schema)
        return predicate

    def _compile(self, schema: Mapping[str, Any]) -> Callable[[object], bool]:
        """One closure deciding what ``_errors(schema, x)`` yields nothing for: a tight one
        for the shapes the contract's fields have, the general one otherwise."""
        return self._compile_shape(schema) or self._compile_general(schema)

    def _compile_shape(self, schema: Mapping[str, Any]) -> Callable[[object], bool] | None:
        keys = set(schema) - _ANNOTATIONS
        kind = schema.get("type")
        if keys == {"anyOf"} and _NULL in schema["anyOf"] and len(schema["anyOf"]) == 2:
            (other,) = [self._predicate(b) for b in schema["anyOf"] if b != _NULL]
            return lambda x: x is None or other(x)  # an optional field
        if keys == {"$ref"}:
            return self._predicate(self._resolve(schema["$ref"]))
        if kind == "string" and keys <= {"type", "minLength", "maxLength", "pattern"}:
            shortest = schema.get("minLength", 0)
            longest = schema.get("maxLength", float("inf"))
            if "pattern" not in schema:
                return lambda x: isinstance(x, str) and shortest <= len(x) <= longest
            search = compiled_pattern(schema["pattern"]).search
            if schema["pattern"] in PRINTABLE_ASCII_PATTERNS:
                # str.isprintable() runs in C; the regex only sees the rare other strings.
                return lambda x: (
                    isinstance(x, str)
                    and shortest <= len(x) <= longest
                    and ((x.isascii() and x.isprintable()) or search(x) is not None)
                )
            return lambda x: (
                isinstance(x, str) and shortest <= len(x) <= longest and search(x) is not None
            )
        if kind == "string" and keys == {"type", "format"}:
            fmt, format_ok = schema["format"], self._format_ok
            return lambda x: isinstance(x, str) and format_ok(fmt, x)
        if kind in ("integer", "number", "boolean") and keys <= {"type", "minimum", "maximum"}:
            is_kind = _TYPES[kind]
            low, high = schema.get("minimum", -math.inf), schema.get("maximum", math.inf)
            return lambda x: is_kind(x) and (kind == "boolean" or low <= x <= high)
        members: list[object] = schema.get("enum", [])
        if keys == {"enum"} and all(isinstance(m, str) for m in members):
            allowed = frozenset(members)
            return lambda x: isinstance(x, str) and x in allowed
        return None

    def _compile_general(self, schema: Mapping[str, Any]) -> Callable[[object], bool]:
        types = schema.get("type")
        type_names = types if isinstance(types, list) else [types] if types else []
        type_checks = [_TYPES[name] for name in type_names]
        one_type = type_checks[0] if len(type_checks) == 1 else None
        min_length = schema.get("minLength", 0)
        max_length = schema.get("maxLength")
        pattern = compiled_pattern(schema["pattern"]) if "pattern" in schema else None
        bounds = [(k, schema[k]) for k in _NUMBER_KEYWORDS if k in schema]
        members = schema.get("enum")
        const = [schema["const"]] if "const" in schema else None
        fmt = schema.get("format")
        format_ok = self._format_ok
        # An optional field is anyOf [T, {"type": "null"}]: None is checked inline.
        nullable = any(b == {"type": "null"} for b in schema.get("anyOf", ()))
        branches = (
            [self._predicate(b) for b in schema["anyOf"] if b != {"type": "null"}]
            if "anyOf" in schema
            else None
        )
        target = self._predicate(self._resolve(schema["$ref"])) if "$ref" in schema else None
        properties = {
            name: self._predicate(sub) for name, sub in schema.get("properties", {}).items()
        }
        required = list(schema.get("required", ()))
        closed = schema.get("additionalProperties") is False

        def holds(x: object) -> bool:
            if one_type is not None:
                if not one_type(x):
                    return False
            elif type_checks and not any([check(x) for check in type_checks]):
                return False
            if isinstance(x, str):
                if len(x) < min_length or (max_length is not None and len(x) > max_length):
                    return False
                if pattern is not None and pattern.search(x) is None:
                    return False
            elif bounds and isinstance(x, int | float) and not isinstance(x, bool):
                if not all(_holds(k, v, x, schema, format_ok) for k, v in bounds):
                    return False
            elif isinstance(x, dict):
                if closed and not all(key in properties for key in x):
                    return False
                if not all(name in x for name in required):
                    return False
                for name, check in properties.items():
                    if name in x and not check(x[name]):
                        return False
            if members is not None and not any(_json_equal(m, x) for m in members):
                return False
            if const is not None and not _json_equal(const[0], x):
                return False
            if fmt is not None and not format_ok(fmt, x):
                return False
            if branches is not None and not (nullable and x is None):
                for branch in branches:
                    if branch(x):
                        break
                else:
                    return False
            return target is None or target(x)

        return holds

    # -- evaluating --------------------------------------------------------------------------

    def _steps(self, schema: Mapping[str, Any]) -> list[tuple[str, Any]]:
        """The schema's keywords in order, annotations left out, each property with its
        predicate; built once per subschema."""
        steps = self._step_lists.get(id(schema))
        if steps is None:
            steps = []
            for keyword, value in schema.items():
                if keyword == "properties":
                    value = [(name, sub, self._predicate(sub)) for name, sub in value.items()]
                if keyword not in _ANNOTATIONS:
                    steps.append((keyword, value))
            self._step_lists[id(schema)] = steps
        return steps

    def _errors(
        self, schema: Mapping[str, Any], instance: object, path: tuple[str | int, ...]
    ) -> Iterator[SchemaError]:
        for keyword, value in self._steps(schema):
            if keyword == "properties":
                if isinstance(instance, dict):
                    for name, sub, holds in value:
                        if name in instance and not holds(instance[name]):
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
            if value in PRINTABLE_ASCII_PATTERNS and instance.isascii() and instance.isprintable():
                return True
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
