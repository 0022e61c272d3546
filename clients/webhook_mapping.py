"""Turning another system's JSON into events: the `mapping` of a `webhook` client.

A mapping is an object from event keys (dotted for nested ones: `user_data.email_address`)
to where each value comes from in the incoming document:

    "value": "total_price"                                  a dotted path (list indices allowed)
    "currency": {"const": "EUR"}                            a constant
    "event_id": {"path": "id", "prefix": "shopify-order-"}  a path, as text with a prefix
    "user_data.email_address": {"first": ["email", "customer.email"]}   the first non-empty
    "x-fb-ck-fbp": {"find": "note_attributes", "where": {"name": "_fbp"}, "take": "value"}
    "items": {"each": "line_items", "map": {"item_id": "sku", "price": "price"}}

Paths are read from the element being mapped; `$.a.b` reads from the document's root (for a
mapping applied to each element of an array with the client's `each` param). A value that is
missing or empty is left out of the event, so the event's own checks (`event_checks`) decide
whether what remains is enough.

Mappings are compiled once, when the container loads, and `compile_mapping` reports every
problem with its place, so a marketer's typo is a validation message, not a 500 at 3 a.m.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tagserver.toolkit.events import get_path

Getter = Callable[[Any, Any], Any]  # (element, root) -> value or None

SPEC_KEYS = frozenset(
    ("path", "const", "first", "find", "where", "take", "each", "map", "prefix", "default")
)


class MappingError(ValueError):
    """A mapping that cannot be compiled; `problems` holds (place, message) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{place}: {message}" for place, message in problems))
        self.problems = problems


def compile_mapping(mapping: Any, place: str = "mapping") -> Callable[[Any, Any], dict[str, Any]]:
    """A function (element, root) → event dict. Raises MappingError naming every problem."""
    problems: list[tuple[str, str]] = []
    if not isinstance(mapping, dict):
        raise MappingError([(place, "expected an object of event key → source")])
    fields: list[tuple[tuple[str, ...], Getter]] = []
    for key, spec in mapping.items():
        if not isinstance(key, str) or not key or any(not p for p in key.split(".")):
            problems.append((f"{place}.{key}", "an event key must be a non-empty dotted name"))
            continue
        getter = _compile_source(spec, f"{place}.{key}", problems)
        if getter is not None:
            fields.append((tuple(key.split(".")), getter))
    if problems:
        raise MappingError(problems)

    def build(element: Any, root: Any) -> dict[str, Any]:
        event: dict[str, Any] = {}
        for parts, getter in fields:
            value = getter(element, root)
            if value is None or value == "" or value == []:
                continue
            _put(event, parts, value)
        return event

    return build


def read(path: str, element: Any, root: Any) -> Any:
    """A dotted path from the element, or from the root when it starts with `$.`."""
    if path.startswith("$."):
        return get_path(root, path[2:])
    if path == "$":
        return root
    return get_path(element, path)


def _put(event: dict[str, Any], parts: tuple[str, ...], value: Any) -> None:
    target = event
    for part in parts[:-1]:
        child = target.get(part)
        if not isinstance(child, dict):
            child = target[part] = {}
        target = child
    target[parts[-1]] = value


def _compile_source(spec: Any, place: str, problems: list[tuple[str, str]]) -> Getter | None:
    if isinstance(spec, str):
        if not spec:
            problems.append((place, "an empty path"))
            return None
        return lambda element, root, _p=spec: read(_p, element, root)
    if not isinstance(spec, dict):
        problems.append(
            (place, "expected a path string or an object ({path|const|first|find|each})")
        )
        return None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        known = ", ".join(sorted(SPEC_KEYS))
        problems.append((place, f"unknown key {unknown[0]!r} (known: {known})"))
        return None
    kinds = [k for k in ("path", "const", "first", "find", "each") if k in spec]
    if len(kinds) != 1:
        problems.append((place, "give exactly one of path, const, first, find, each"))
        return None
    kind = kinds[0]
    getter: Getter | None
    if kind == "const":
        return lambda _element, _root, _v=spec["const"]: _v
    if kind == "path":
        path = spec["path"]
        if not isinstance(path, str) or not path:
            problems.append((f"{place}.path", "expected a dotted path"))
            return None
        getter = lambda element, root, _p=path: read(_p, element, root)  # noqa: E731
    elif kind == "first":
        options = spec["first"]
        if not isinstance(options, list) or not options:
            problems.append((f"{place}.first", "expected a non-empty list of sources"))
            return None
        getters = [
            _compile_source(o, f"{place}.first[{i}]", problems) for i, o in enumerate(options)
        ]
        if any(g is None for g in getters):
            return None
        getter = _first([g for g in getters if g is not None])
    elif kind == "find":
        getter = _compile_find(spec, place, problems)
    else:
        getter = _compile_each(spec, place, problems)
    if getter is None:
        return None
    prefix, default = spec.get("prefix"), spec.get("default")
    if prefix is not None and not isinstance(prefix, str):
        problems.append((f"{place}.prefix", "expected a string"))
        return None
    return _finish(getter, prefix, default)


def _first(getters: list[Getter]) -> Getter:
    def get(element: Any, root: Any) -> Any:
        for getter in getters:
            value = getter(element, root)
            if value not in (None, "", []):
                return value
        return None

    return get


def _finish(getter: Getter, prefix: str | None, default: Any) -> Getter:
    if prefix is None and default is None:
        return getter

    def get(element: Any, root: Any) -> Any:
        value = getter(element, root)
        if value in (None, "", []):
            return default
        if (
            prefix is not None
            and isinstance(value, (str, int, float))
            and not isinstance(value, bool)
        ):
            return f"{prefix}{value}"
        return value

    return get


def _compile_find(
    spec: dict[str, Any], place: str, problems: list[tuple[str, str]]
) -> Getter | None:
    """`find` a list at a path, the first element whose fields equal `where`, and `take` one."""
    where, take = spec.get("where"), spec.get("take")
    if not isinstance(spec["find"], str) or not spec["find"]:
        problems.append((f"{place}.find", "expected a dotted path to a list"))
        return None
    if not isinstance(where, dict) or not where:
        problems.append((f"{place}.where", "expected an object of field → value"))
        return None
    if not isinstance(take, str) or not take:
        problems.append((f"{place}.take", "expected the dotted path of the value to take"))
        return None
    path = spec["find"]

    def get(element: Any, root: Any) -> Any:
        found = read(path, element, root)
        if not isinstance(found, list):
            return None
        for entry in found:
            if isinstance(entry, dict) and all(entry.get(k) == v for k, v in where.items()):
                return get_path(entry, take)
        return None

    return get


def _compile_each(
    spec: dict[str, Any], place: str, problems: list[tuple[str, str]]
) -> Getter | None:
    """A list of objects, one per element of the list at `each`, built with `map`."""
    path = spec["each"]
    if not isinstance(path, str) or not path:
        problems.append((f"{place}.each", "expected a dotted path to a list"))
        return None
    try:
        build = compile_mapping(spec.get("map"), f"{place}.map")
    except MappingError as exc:
        problems.extend(exc.problems)
        return None

    def get(element: Any, root: Any) -> Any:
        found = read(path, element, root)
        if not isinstance(found, list):
            return None
        return [build(item, root) for item in found[:1000] if isinstance(item, dict)]

    return get
