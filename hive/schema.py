"""Whether a deployment is valid against its JSON schema, fast: the schema compiled once into
plain Python tests, one per subschema (issue 29: jsonschema spent about 25 µs an instance
walking its keywords, 0.12 s of a 5,000-instance `list`, and its import).

This only accepts. A deployment it does not accept goes to jsonschema (hive/evaluate.py),
which finds and explains the errors as it always has; so what is reported never changes, and
the one thing this module must get right is never to accept what jsonschema rejects. Each
test is jsonschema's own keyword, for the JSON values Nix produces; a keyword it does not
know, or a value it is not sure of (a float where an integer is asked, an enum of numbers),
is decided by jsonschema itself (`Exact`), for that subschema and value only."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Test = Callable[[Any], bool]
Tests = list[tuple[type | None, Test]]  # each with the type of the values it tests (None: all)
JSON = (dict, list, str, int, float, bool, type(None))  # the types of the values json.loads makes

# Keywords that only annotate: they never make a value invalid.
ANNOTATIONS = frozenset({"$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated",
                         "readOnly", "writeOnly"})
# The Python types a JSON type surely is (values parsed by json: dict, list, str, int, float,
# bool, None); a value of another type (a float asked to be an integer) asks jsonschema.
SURELY = {"object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "number": (int, float),
          "boolean": (bool,), "null": (type(None),)}
KNOWN = ANNOTATIONS | {"type", "enum", "pattern", "minimum", "maximum", "required", "properties",
                       "additionalProperties", "propertyNames", "items", "minItems", "uniqueItems", "anyOf",
                       "oneOf", "not"}


class Exact:
    """jsonschema's own answer for one subschema, its validator made when first asked."""

    def __init__(self, schema: Any, draft: Mapping[str, Any]) -> None:
        self.schema, self.draft = schema, draft
        self._valid: Test | None = None

    def __call__(self, value: Any) -> bool:
        if self._valid is None:
            import jsonschema  # only for what the compiled tests leave to it

            cls = jsonschema.validators.validator_for(dict(self.draft))
            self._valid = cls(self.schema).is_valid
        return self._valid(value)


def compile_schema(schema: Any, draft: Mapping[str, Any] | None = None) -> Test:
    """A test of `schema` (with no `$ref` left: hive/evaluate.py inlines them), true exactly
    when jsonschema finds a value valid. `draft`: the root's `$schema`, which says the
    draft's rules for the subschemas jsonschema is asked about."""
    if draft is None:
        draft = {"$schema": schema["$schema"]} if isinstance(schema, dict) and "$schema" in schema else {}
    if schema is True:
        return lambda value: True
    if schema is False:
        return lambda value: False
    if not isinstance(schema, dict) or set(schema) - KNOWN:
        return Exact(schema, draft)
    # each keyword's tests, kept by the Python type of the values they apply to (None: all);
    # a value is then tested by those of its type only
    by_type: dict[type | None, list[Test]] = {}
    for keywords, make in _KEYWORDS:
        if not keywords.isdisjoint(schema):
            for kind, made in make(schema, draft):
                by_type.setdefault(kind, []).append(made)
    every = by_type.pop(None, [])
    tests = {kind: by_type.get(kind, []) + every for kind in JSON}
    exact = [Exact(schema, draft)]  # a value of no JSON type (never from json.loads): jsonschema's answer
    strings = tests[str]
    valid: set[str] = set()  # strings found valid: a system, store or tag repeated on every instance, tested once

    def test(value: Any) -> bool:
        kind = type(value)
        if kind is str:
            if value in valid:
                return True
            for one in strings:
                if not one(value):
                    return False
            valid.add(value)
            return True
        for one in tests.get(kind, exact):  # noqa: SIM110 (a loop: all() and its generator cost twice)
            if not one(value):
                return False
        return True
    return test



def _type(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    surely = {t for n in names for t in SURELY.get(n, ())}  # type(): a bool is no int (nor an integer)
    exact = Exact({"type": schema["type"]}, draft)
    return [(kind, exact) for kind in JSON if kind not in surely]


def _enum(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    exact = Exact({"enum": schema["enum"]}, draft)
    if not all(type(e) is str for e in schema["enum"]):
        return [(None, exact)]
    strings = frozenset(schema["enum"])
    # a string equals only a string; any other value: jsonschema's equality (1 == 1.0, not True)
    return [(str, strings.__contains__)] + [(kind, exact) for kind in JSON if kind is not str]


def _pattern(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    search = re.compile(schema["pattern"]).search  # jsonschema's re.search, on strings only
    return [(str, lambda value: search(value) is not None)]


def _minimum(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    least = schema["minimum"]
    return [(int, lambda value: value >= least), (float, lambda value: value >= least)]


def _maximum(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    most = schema["maximum"]
    return [(int, lambda value: value <= most), (float, lambda value: value <= most)]


def _required(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    names = tuple(schema["required"])
    return [(dict, lambda value: all(n in value for n in names))]


def _properties(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    """properties and additionalProperties, which is read against them."""
    own = {name: compile_schema(sub, draft) for name, sub in schema.get("properties", {}).items()}
    other = compile_schema(schema.get("additionalProperties", True), draft)

    def test(value: dict[str, Any]) -> bool:
        for name, item in value.items():  # noqa: SIM110 (a loop: once an object, all() costs twice)
            if not own.get(name, other)(item):
                return False
        return True
    return [(dict, test)]


def _property_names(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    names = compile_schema(schema["propertyNames"], draft)

    def test(value: dict[str, Any]) -> bool:
        for name in value:  # noqa: SIM110 (as above)
            if not names(name):
                return False
        return True
    return [(dict, test)]


def _items(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    item = compile_schema(schema["items"], draft)

    return [(list, lambda value: all(item(v) for v in value))]


def _min_items(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    least = schema["minItems"]
    return [(list, lambda value: len(value) >= least)]


def _unique_items(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    if schema["uniqueItems"] is False:
        return []
    exact = Exact({"uniqueItems": True}, draft)

    def test(value: list[Any]) -> bool:
        if all(type(v) is str for v in value):
            return len(set(value)) == len(value)
        return exact(value)  # numbers, lists, objects: jsonschema's equality
    return [(list, test)]


def _any_of(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    subs = [compile_schema(s, draft) for s in schema["anyOf"]]

    return [(None, lambda value: any(sub(value) for sub in subs))]


def _one_of(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    subs = [compile_schema(s, draft) for s in schema["oneOf"]]
    return [(None, lambda value: sum(1 for sub in subs if sub(value)) == 1)]


def _not(schema: Mapping[str, Any], draft: Mapping[str, Any]) -> Tests:
    sub = compile_schema(schema["not"], draft)
    return [(None, lambda value: not sub(value))]


# every keyword KNOWN that can make a value invalid, and the test of it (additionalProperties is
# read against properties: one test of both)
_KEYWORDS: tuple[tuple[frozenset[str], Callable[[Mapping[str, Any], Mapping[str, Any]], Tests]], ...] = tuple(
    (frozenset(names.split()), make) for names, make in (
        ("type", _type), ("enum", _enum), ("pattern", _pattern), ("minimum", _minimum), ("maximum", _maximum),
        ("required", _required), ("properties additionalProperties", _properties),
        ("propertyNames", _property_names), ("items", _items), ("minItems", _min_items),
        ("uniqueItems", _unique_items), ("anyOf", _any_of), ("oneOf", _one_of), ("not", _not)))
