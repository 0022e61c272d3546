"""Triggers: an event-name filter plus conditions that must all hold.

Compiled once at load (regexes, CIDR networks, templates). Evaluating a trigger returns a
`TriggerCheck` that says what was compared with what, so "why did my tag not fire?" has an
answer in preview and in the events API response.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from .refs import Compiled, compile_value, has_refs, text
from .variables import Scope

OPERATORS = (
    "equals", "contains", "starts_with", "ends_with", "matches_regex", "greater_than",
    "greater_or_equal", "less_than", "less_or_equal", "in", "in_cidr",
)  # fmt: skip


@dataclass
class ConditionCheck:
    variable: str
    operator: str
    expected: Any
    actual: Any
    passed: bool

    def explain(self) -> str:
        op = self.operator.replace("_", " ")
        verdict = "held" if self.passed else "failed"
        return f"{self.variable} = {self.actual!r}; condition '{op} {self.expected!r}' {verdict}"


@dataclass
class TriggerCheck:
    trigger: str
    matched: bool
    event_name: str
    event_matched: bool
    conditions: list[ConditionCheck] = field(default_factory=list)

    def explain(self) -> str:
        if not self.event_matched:
            return f"trigger {self.trigger!r}: event name {self.event_name!r} does not match"
        failed = [c for c in self.conditions if not c.passed]
        if failed:
            return f"trigger {self.trigger!r}: {failed[0].explain()}"
        return f"trigger {self.trigger!r} matched"

    def as_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "matched": self.matched,
            "event_name": self.event_name,
            "event_matched": self.event_matched,
            "conditions": [c.__dict__ for c in self.conditions],
            "explanation": self.explain(),
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value).strip())
    except (TypeError, ValueError):
        return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _lower(value: str, ignore_case: bool) -> str:
    return value.lower() if ignore_case else value


@lru_cache(maxsize=256)
def _dynamic_regex(pattern: str, flags: int) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None


def compile_operator(operator: str, expected: Any, ignore_case: bool) -> Callable[[Any, Any], bool]:
    """Return `test(actual, expected_resolved) -> bool`, precomputing what is constant."""
    static = not has_refs(expected)

    if operator == "equals":

        def test(actual: Any, exp: Any) -> bool:
            if _is_number(actual) or _is_number(exp):  # 10 equals "10.0"
                a, b = _number(actual), _number(exp)
                if a is not None and b is not None:
                    return a == b
            return _lower(text(actual), ignore_case) == _lower(text(exp), ignore_case)

        return test

    if operator in ("contains", "starts_with", "ends_with"):
        method = {
            "contains": str.__contains__,
            "starts_with": str.startswith,
            "ends_with": str.endswith,
        }[operator]
        return lambda actual, exp: method(
            _lower(text(actual), ignore_case), _lower(text(exp), ignore_case)
        )

    if operator == "matches_regex":
        flags = re.IGNORECASE if ignore_case else 0
        if static:
            pattern = re.compile(text(expected), flags)
            return lambda actual, _exp: pattern.search(text(actual)) is not None

        def test_dynamic(actual: Any, exp: Any) -> bool:
            pattern = _dynamic_regex(text(exp), flags)
            return pattern is not None and pattern.search(text(actual)) is not None

        return test_dynamic

    if operator in ("greater_than", "greater_or_equal", "less_than", "less_or_equal"):
        comparisons: dict[str, Callable[[float, float], bool]] = {
            "greater_than": lambda a, b: a > b,
            "greater_or_equal": lambda a, b: a >= b,
            "less_than": lambda a, b: a < b,
            "less_or_equal": lambda a, b: a <= b,
        }
        compare = comparisons[operator]

        def test_number(actual: Any, exp: Any) -> bool:
            a, b = _number(actual), _number(exp)
            return a is not None and b is not None and compare(a, b)

        return test_number

    if operator == "in":

        def options(exp: Any) -> set[str]:
            items = exp if isinstance(exp, list) else text(exp).split(",")
            return {_lower(text(i).strip(), ignore_case) for i in items}

        if static:
            fixed = options(expected)
            return lambda actual, _exp: _lower(text(actual), ignore_case) in fixed
        return lambda actual, exp: _lower(text(actual), ignore_case) in options(exp)

    if operator == "in_cidr":

        def networks(exp: Any) -> list[Any]:
            items = exp if isinstance(exp, list) else text(exp).split(",")
            out = []
            for item in items:
                try:
                    out.append(ipaddress.ip_network(text(item).strip(), strict=False))
                except ValueError:
                    continue
            return out

        def in_any(actual: Any, nets: list[Any]) -> bool:
            try:
                addr = ipaddress.ip_address(text(actual).strip())
            except ValueError:
                return False
            return any(addr.version == n.version and addr in n for n in nets)

        if static:
            fixed_nets = networks(expected)
            return lambda actual, _exp: in_any(actual, fixed_nets)
        return lambda actual, exp: in_any(actual, networks(exp))

    raise ValueError(f"unknown operator {operator!r}")


@dataclass
class Condition:
    variable: str
    operator: str
    expected: Compiled
    test: Callable[[Any, Any], bool]
    negate: bool
    fixed: bool = False  # the expected value has no {{reference}}: it is `value`
    value: Any = None

    def holds(self, scope: Scope) -> bool:
        """`check(scope).passed`, without building the record."""
        return self.test(scope.get(self.variable), self.expected(scope)) != self.negate

    def check(self, scope: Scope) -> ConditionCheck:
        return self.compare(scope.get(self.variable), self.expected(scope))

    def compare(self, actual: Any, expected: Any) -> ConditionCheck:
        passed = self.test(actual, expected) != self.negate
        operator = ("not " if self.negate else "") + self.operator
        return ConditionCheck(self.variable, operator, expected, actual, passed)


class EventFilter:
    """Which event names a trigger listens to: exact, list, `*`, or `{"regex": ...}`."""

    def __init__(self, spec: Any) -> None:
        self.any = spec in (None, "*")
        self.names: frozenset[str] = frozenset()
        self.pattern: re.Pattern[str] | None = None
        if isinstance(spec, str) and not self.any:
            self.names = frozenset([spec])
        elif isinstance(spec, list):
            self.any = "*" in spec
            self.names = frozenset(spec)
        elif isinstance(spec, dict):
            flags = re.IGNORECASE if spec.get("ignore_case") else 0
            self.pattern = re.compile(spec["regex"], flags)

    def matches(self, name: str) -> bool:
        if self.any:
            return True
        if self.pattern is not None:
            return self.pattern.search(name) is not None
        return name in self.names


class Trigger:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.name: str = spec["name"]
        self.fired_reason = f"fired by trigger {self.name!r}"  # the words of a fired tag
        self.filter = EventFilter(spec.get("event", "*"))
        self.conditions = [
            Condition(
                variable=variable_name(c["variable"]),
                operator=c["operator"],
                expected=compile_value(c.get("value")),
                test=compile_operator(c["operator"], c.get("value"), bool(c.get("ignore_case"))),
                negate=bool(c.get("negate")),
                fixed=not has_refs(c.get("value")),
                value=c.get("value"),
            )
            for c in spec.get("conditions", [])
        ]
        self.always = self.filter.any and not self.conditions  # "every event"

    def matches(self, scope: Scope) -> bool:
        """`check(scope).matched`, without the records: the hit path when nobody watches.
        Worked out once per event (the scope keeps it): tags share triggers."""
        if self.always:
            return True
        known = scope.matched.get(self)
        if known is None:
            name = text(scope.get("event_name"))
            known = self.filter.matches(name) and all(c.holds(scope) for c in self.conditions)
            scope.matched[self] = known
        return known

    @property
    def may_be_ruled_out(self) -> bool:
        """Whether `ruled_out` may find, for some name or client, that it cannot match."""
        return not self.filter.any or self._client_test() is not None

    def ruled_out(self, event_name: str, client_name: str) -> TriggerCheck | None:
        """What `check` records for any event named `event_name` from the client
        `client_name` when that alone rules the trigger out: its event filter refuses the name,
        or its first condition is a fixed test of `client_name` (a built-in: no variable may
        take its name) the client fails. None when only the event can tell."""
        if not self.filter.matches(event_name):
            return TriggerCheck(self.name, False, event_name, False)
        first = self._client_test()
        if first is None:
            return None
        check = first.compare(client_name, first.value)
        if check.passed:
            return None
        return TriggerCheck(self.name, False, event_name, True, [check])

    def _client_test(self) -> Condition | None:
        first = self.conditions[0] if self.conditions else None
        return (
            first if first is not None and first.variable == "client_name" and first.fixed else None
        )

    def check(self, scope: Scope) -> TriggerCheck:
        event_name = text(scope.get("event_name"))
        if not self.filter.matches(event_name):
            return TriggerCheck(self.name, False, event_name, False)
        result = TriggerCheck(self.name, True, event_name, True)
        for condition in self.conditions:
            check = condition.check(scope)
            result.conditions.append(check)
            if not check.passed:
                result.matched = False
                break
        return result


def variable_name(value: str) -> str:
    """Conditions name a variable as `page_path` or `{{page_path}}`; both mean the same."""
    value = value.strip()
    if value.startswith("{{") and value.endswith("}}"):
        return value[2:-2].strip()
    return value
