"""Transformations: shape the event data each tag receives, after its triggers decided.

    "transformations": [
      {"name": "no_phone_to_crm", "type": "exclude", "keys": ["user_data.phone_number"],
       "tags": ["crm_webhook"]},
      {"name": "brand", "type": "augment", "set": {"brand": "acme"}, "tag_types": ["meta_capi"]}
    ]

`allow` keeps only the listed dotted paths, `exclude` removes them, `augment` sets them (values
may use `{{variables}}`). A transformation is scoped by tag name, tag type or neither (every
tag), and may carry conditions like a trigger's. They are compiled per tag when the container
loads: a tag no transformation applies to gets an empty tuple and the runtime's plain path.

The event a tag receives is a copy along the changed paths only: other tags, and the
response to the hit, keep seeing the original. Conditions and `{{variables}}` in augment
values read the event as the triggers saw it, so the order of transformations changes only
what overlaps.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from ..event import CONSENT_TYPES, Event
from .refs import compile_value
from .triggers import Trigger, TriggerCheck
from .variables import Scope

if TYPE_CHECKING:
    from ..plugins import Registry

TYPES = ("allow", "exclude", "augment")
KEYS = ("name", "type", "keys", "set", "tags", "tag_types", "conditions", "description")

# sub-keys of the common event data whose structure is fixed (sGTM's names), so a path into
# them can be checked; anything else may be a custom key a client sends
_ADDRESS = ("first_name", "last_name", "street", "city", "region", "postal_code", "country")
_USER_DATA = ("email_address", "phone_number", "gender", "date_of_birth", "address")
_ALIASES = ("email", "phone", "external_id")  # read by the Meta tag beside sGTM's names
FIXED_KEYS: dict[str, tuple[str, ...]] = {
    "user_data": _USER_DATA + tuple(f"sha256_{k}" for k in _USER_DATA if k != "address") + _ALIASES,
    "user_data.address": _ADDRESS + tuple(f"sha256_{k}" for k in _ADDRESS),
    "consent": CONSENT_TYPES,
}


# -- validation --------------------------------------------------------------------------------


class Checker(Protocol):
    """What the container validator offers (see `container._Validator`)."""

    registry: Registry

    def add(self, path: str, message: str) -> None: ...
    def unknown_keys(self, obj: dict[str, Any], allowed: Iterable[str], path: str) -> None: ...
    def refs(self, value: Any, path: str) -> None: ...
    def condition(self, path: str, cond: Any) -> None: ...


def suggestion(name: str, options: Iterable[str]) -> str:
    options = list(options)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    if not close and name:
        close = [o for o in options if o.startswith(name) or name.startswith(o)][:1]
    if not close:
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    return f' — did you mean "{close[0]}"?' if close else ""


def path_problem(value: Any) -> str | None:
    """Why `value` is not a usable dotted path into event data, or None."""
    if not isinstance(value, str) or not value:
        return "must be a dotted path into the event data, e.g. user_data.phone_number"
    if value != value.strip() or any(c.isspace() for c in value):
        return f"{value!r}: a path has no spaces"
    if "{{" in value or "}}" in value:
        return f"{value!r}: a path is a key name, not a {{{{variable}}}}"
    if value.startswith("event."):
        return f'{value!r}: paths start inside the event — write "{value[6:]}"'
    parts = value.split(".")
    if any(p == "" for p in parts):
        return f"{value!r}: empty step in the path (a leading, trailing or double dot)"
    for depth in range(1, len(parts)):
        parent = ".".join(p for p in parts[:depth] if not p.isdigit())
        known = FIXED_KEYS.get(parent)
        child = parts[depth]
        if known is not None and not child.isdigit() and child not in known:
            return (
                f'no key "{child}" in {parent}{suggestion(child, known)} '
                f"({parent} holds: {', '.join(known)})"
            )
    return None


def validate(check: Checker, items: list[tuple[str, dict[str, Any]]], tags: Any) -> None:
    """Check each named transformation; `tags` is the container's raw tag list."""
    tag_names = [t["name"] for t in tags if isinstance(t, dict) and isinstance(t.get("name"), str)]
    tag_types = sorted(check.registry.tags)
    for path, item in items:
        check.unknown_keys(item, KEYS, path)
        kind = item.get("type")
        if kind not in TYPES:
            check.add(
                f"{path}.type",
                f'unknown transformation type "{kind}"{suggestion(str(kind), TYPES)} '
                "(allow, exclude or augment)",
            )
        elif kind == "augment":
            _check_set(check, item, path)
        else:
            _check_keys(check, item, path, kind)
        _check_scope(check, item.get("tags"), f"{path}.tags", tag_names, "tag")
        _check_scope(check, item.get("tag_types"), f"{path}.tag_types", tag_types, "tag type")
        conditions = item.get("conditions", [])
        if not isinstance(conditions, list):
            check.add(f"{path}.conditions", "must be a list")
            continue
        for i, cond in enumerate(conditions):
            check.condition(f"{path}.conditions[{i}]", cond)


def _check_keys(check: Checker, item: dict[str, Any], path: str, kind: str) -> None:
    if "set" in item:
        check.add(f"{path}.set", f'"set" belongs to augment; {kind} takes "keys"')
    keys = item.get("keys")
    if not isinstance(keys, list) or not keys:
        check.add(f"{path}.keys", f"required by {kind}: a non-empty list of dotted paths")
        return
    for i, key in enumerate(keys):
        problem = path_problem(key)
        if problem:
            check.add(f"{path}.keys[{i}]", problem)


def _check_set(check: Checker, item: dict[str, Any], path: str) -> None:
    if "keys" in item:
        check.add(f"{path}.keys", 'augment takes "set": {"path": value, ...}, not "keys"')
    values = item.get("set")
    if not isinstance(values, dict) or not values:
        check.add(f"{path}.set", 'required by augment: an object {"dotted.path": value, ...}')
        return
    for key, value in values.items():
        where = f'{path}.set["{key}"]' if "." in key else f"{path}.set.{key}"
        problem = path_problem(key)
        if problem:
            check.add(where, problem)
        check.refs(value, where)


def _check_scope(check: Checker, names: Any, path: str, known: list[str], what: str) -> None:
    if names is None:
        return
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        check.add(path, f"must be a non-empty list of {what} names")
        return
    for i, name in enumerate(names):
        if name not in known:
            check.add(f"{path}[{i}]", f'no {what} named "{name}"{suggestion(name, known)}')


# -- compiled form -------------------------------------------------------------------------------


Step = Callable[[Event, Scope], Event]


@dataclass(frozen=True)
class Transformation:
    name: str
    type: str
    apply: Step  # a new event; the one given is never changed
    condition: Trigger | None  # None: always

    def holds(self, scope: Scope, trace: bool) -> tuple[bool, TriggerCheck | None]:
        if self.condition is None:
            return True, None
        if not trace:
            return self.condition.matches(scope), None
        check = self.condition.check(scope)
        return check.matched, check


def compile_all(
    specs: list[dict[str, Any]], tags: list[dict[str, Any]]
) -> dict[str, tuple[Transformation, ...]]:
    """Per tag name, the transformations that apply to it, in container order.

    Tags no transformation applies to are left out: the runtime sees an empty tuple."""
    compiled = [(spec, _compile(spec)) for spec in specs]
    out: dict[str, tuple[Transformation, ...]] = {}
    for tag in tags:
        mine = tuple(t for spec, t in compiled if _applies(spec, tag["name"], tag["type"]))
        if mine:
            out[tag["name"]] = mine
    return out


def _applies(spec: dict[str, Any], tag_name: str, tag_type: str) -> bool:
    names, types = spec.get("tags"), spec.get("tag_types")
    if names is None and types is None:
        return True
    return tag_name in (names or ()) or tag_type in (types or ())


def _compile(spec: dict[str, Any]) -> Transformation:
    kind = spec["type"]
    step: Step
    if kind == "augment":
        assignments = [(tuple(k.split(".")), compile_value(v)) for k, v in spec["set"].items()]

        def step(event: Event, scope: Scope) -> Event:
            for parts, value in assignments:
                event = set_path(event, parts, value(scope))
            return event

    elif kind == "exclude":
        removals = [tuple(k.split(".")) for k in spec["keys"]]

        def step(event: Event, scope: Scope) -> Event:
            for parts in removals:
                event = without_path(event, parts)
            return event

    else:  # allow
        keep = [tuple(k.split(".")) for k in spec["keys"]]

        def step(event: Event, scope: Scope) -> Event:
            return only_paths(event, keep)

    conditions = spec.get("conditions") or []
    condition = Trigger({"name": spec["name"], "conditions": conditions}) if conditions else None
    return Transformation(spec["name"], kind, step, condition)


# -- copy-on-write path operations -----------------------------------------------------------------


def set_path(data: Any, parts: tuple[str, ...], value: Any) -> Any:
    """`data` with `parts` set to `value`: copies along the path, makes missing objects.

    A step into a list takes the element with that index, or (a name) every element."""
    if not parts:
        return value
    head, rest = parts[0], parts[1:]
    if isinstance(data, list):
        if head.isdigit():
            index = int(head)
            if index >= len(data):
                return data
            items = list(data)
            items[index] = set_path(data[index], rest, value)
            return items
        return [set_path(d, parts, value) if isinstance(d, dict) else d for d in data]
    copy = dict(data) if isinstance(data, dict) else {}
    copy[head] = set_path(copy.get(head), rest, value)
    return copy


def without_path(data: Any, parts: tuple[str, ...]) -> Any:
    """`data` without `parts` (unchanged, not copied, when the path is not there)."""
    head, rest = parts[0], parts[1:]
    if isinstance(data, list):
        if head.isdigit():
            index = int(head)
            if index >= len(data):
                return data
            if not rest:
                return data[:index] + data[index + 1 :]
            inner = without_path(data[index], rest)
            if inner is data[index]:
                return data
            copy = list(data)
            copy[index] = inner
            return copy
        changed = [without_path(d, parts) if isinstance(d, dict) else d for d in data]
        return data if all(a is b for a, b in zip(changed, data, strict=True)) else changed
    if not isinstance(data, dict) or head not in data:
        return data
    if not rest:
        return {k: v for k, v in data.items() if k != head}
    inner = without_path(data[head], rest)
    if inner is data[head]:
        return data
    return {**data, head: inner}


def only_paths(data: Event, paths: list[tuple[str, ...]]) -> Event:
    """A new event holding only `paths` of `data` (those that exist), in `data`'s key order."""
    out: Any = {}
    for parts in paths:
        out = _copy_path(data, out, parts)
    return {k: out[k] for k in data if k in out}


def _copy_path(source: Any, target: Any, parts: tuple[str, ...]) -> Any:
    if not parts:
        return source
    head, rest = parts[0], parts[1:]
    if isinstance(source, list):
        if head.isdigit():  # a kept list element keeps its place; others are left out
            index = int(head)
            if index >= len(source):
                return target
            kept = target if isinstance(target, list) else []
            return [*kept, _copy_path(source[index], None, rest)]
        prior = target if isinstance(target, list) and len(target) == len(source) else None
        return [
            _copy_path(s, prior[i] if prior else {}, parts) if isinstance(s, dict) else s
            for i, s in enumerate(source)
        ]
    if not isinstance(source, dict) or head not in source:
        return target
    result = dict(target) if isinstance(target, dict) else {}
    result[head] = _copy_path(source[head], result.get(head), rest)
    return result


# -- what changed, for preview -------------------------------------------------------------------


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Leaf values by dotted path (an empty object or list counts as a leaf)."""
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    if isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flatten(value, f"{prefix}{i}."))
        return out
    return {prefix[:-1]: data} if prefix else {}


def changes(before: Event, after: Event, transformation: Transformation) -> list[dict[str, Any]]:
    """Each key `transformation` changed: removed, added or set to another value."""
    old, new = flatten(before), flatten(after)
    out = []
    for key in list(old) + [k for k in new if k not in old]:
        if key in old and key in new and old[key] == new[key]:
            continue
        change = "removed" if key not in new else "added" if key not in old else "changed"
        out.append({
            "key": key,
            "change": change,
            "before": old.get(key),
            "after": new.get(key),
            "transformation": transformation.name,
            "type": transformation.type,
        })  # fmt: skip
    return out


def schema(condition: dict[str, Any], tag_types: list[str]) -> dict[str, Any]:
    """The JSON Schema of the `transformations` list (see `schema.container_schema`)."""
    names = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    base = {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "tags": {**names, "description": "Only these tags (by name)."},
        "tag_types": {
            "type": "array",
            "items": {"enum": tag_types},
            "minItems": 1,
            "description": "Only tags of these types.",
        },
        "conditions": {"type": "array", "items": condition},
    }
    paths = {
        "type": "array",
        "items": {"type": "string", "pattern": r"^[^.\s{}]+(\.[^.\s{}]+)*$"},
        "minItems": 1,
        "description": "Dotted paths into the event data, e.g. user_data.phone_number",
    }
    variants = []
    for kind, field, value in (
        ("allow", "keys", paths),
        ("exclude", "keys", paths),
        (
            "augment",
            "set",
            {
                "type": "object",
                "minProperties": 1,
                "description": "Dotted path → value; values may use {{variables}}",
            },
        ),
    ):
        variants.append({
            "type": "object",
            "properties": {**base, "type": {"const": kind}, field: value},
            "required": ["name", "type", field],
            "additionalProperties": False,
        })  # fmt: skip
    return {"type": "array", "items": {"oneOf": variants}}
