"""`{{name}}` references inside container values, compiled once at load.

A string that is exactly `{{name}}` resolves to the variable's value with its type kept;
`{{name}}` inside a longer string is interpolated as text. Dicts and lists are compiled
recursively; values with no reference compile to a constant, so the hot path only walks what
really varies.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar, overload

REF = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")


class Resolver(Protocol):
    def get(self, name: str) -> Any: ...


Compiled = Callable[[Resolver], Any]
R = TypeVar("R", bound=Resolver)  # a resolver that `direct` getters need more of (a Scope)


def references(value: Any) -> Iterator[str]:
    """Every variable name referenced anywhere inside `value`."""
    if isinstance(value, str):
        yield from REF.findall(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from references(v)
    elif isinstance(value, list):
        for v in value:
            yield from references(v)


def has_refs(value: Any) -> bool:
    return next(references(value), None) is not None


def text(value: Any) -> str:
    """How a resolved value reads inside an interpolated string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (dict, list)):
        import orjson

        return orjson.dumps(value).decode()
    return str(value)


@overload
def compile_value(value: Any) -> Compiled: ...


@overload
def compile_value(value: Any, direct: Mapping[str, Callable[[R], Any]]) -> Callable[[R], Any]: ...


def compile_value(
    value: Any, direct: Mapping[str, Callable[[R], Any]] | None = None
) -> Callable[[R], Any]:
    """A function of the scope that builds `value` with its references resolved.

    `direct` maps names to getters that may replace `scope.get(name)` for a whole-value
    reference: values that need no caching per event (see `variables.direct_getters`); the
    compiled function then takes the resolver those getters take.
    """
    return _compile(value, direct or {})


def _compile(value: Any, direct: Mapping[str, Callable[[R], Any]]) -> Callable[[R], Any]:
    if not has_refs(value):
        return lambda _scope: value
    if isinstance(value, str):
        return _compile_string(value, direct)
    if isinstance(value, dict):
        # a copy of the literal entries, then the templated ones filled in (order kept)
        template = {k: (None if has_refs(v) else v) for k, v in value.items()}
        varying = [(k, _compile(v, direct)) for k, v in value.items() if has_refs(v)]

        def build(scope: R) -> dict[str, Any]:
            out = template.copy()
            for key, fn in varying:
                out[key] = fn(scope)
            return out

        return build
    if isinstance(value, list):
        fns = [_compile(v, direct) for v in value]
        return lambda scope: [fn(scope) for fn in fns]
    return lambda _scope: value


def _compile_string(value: str, direct: Mapping[str, Callable[[R], Any]]) -> Callable[[R], Any]:
    whole = REF.fullmatch(value.strip())
    if whole:
        name = whole.group(1)
        getter = direct.get(name)
        return getter if getter is not None else lambda scope: scope.get(name)
    parts: list[tuple[bool, str]] = []
    pos = 0
    for match in REF.finditer(value):
        if match.start() > pos:
            parts.append((False, value[pos : match.start()]))
        parts.append((True, match.group(1)))
        pos = match.end()
    if pos < len(value):
        parts.append((False, value[pos:]))
    return lambda scope: "".join(text(scope.get(p)) if is_ref else p for is_ref, p in parts)
