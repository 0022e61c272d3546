"""Variables: named values computed per event, lazily and at most once.

User variables are declared in container.json (`event_data`, `request_header`, `cookie`,
`query_parameter`, `constant`, `env`, `lookup_table`, `regex_table`). Built-ins need no
declaration: `event_name`, `client_ip`, `user_agent.is_bot`, `geo.country` (`geo.region`,
`geo.city`, `geo.postal_code`), `event.<dot.path>`,
`cookie.<name>`, `header.<name>`, `query.<name>` and every common event key (`value`,
`currency`, `page_location` ...).
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from ..event import (
    COMMON_KEYS,
    Event,
    RequestContext,
    UserAgentInfo,
    add_page_parts,
    get_path,
    user_agent_info,
)
from ..plugins import Param
from ..visitor.match import geography
from .refs import Compiled, compile_value, text

REDACTED = "[redacted]"

# Declared fields of each user variable type (besides `name` and `type`).
VARIABLE_TYPES: dict[str, tuple[Param, ...]] = {
    "event_data": (
        Param("key", "string", required=True, description="Dot path into the event: `user_data.email_address`."),
        Param("default", "any", description="Value when the key is missing."),
    ),
    "request_header": (
        Param("header", "string", required=True, description="Header name (any case)."),
        Param("default", "any"),
    ),
    "cookie": (
        Param("cookie", "string", required=True, description="Cookie name."),
        Param("default", "any"),
    ),
    "query_parameter": (
        Param("param", "string", required=True, description="Query-string parameter of the hit."),
        Param("default", "any"),
    ),
    "constant": (Param("value", "any", required=True),),
    "env": (
        Param("env", "string", required=True, description="Environment variable name."),
        Param("default", "any"),
        Param("secret", "boolean", default=False, description="Redact the value wherever it could show."),
    ),
    "lookup_table": (
        Param("input", "any", required=True, description="Usually `{{another_variable}}`."),
        Param("table", "any", required=True, description="`{\"in\": \"out\"}` or `[{\"key\", \"value\"}]`."),
        Param("default", "any"),
        Param("ignore_case", "boolean", default=False),
    ),
    "regex_table": (
        Param("input", "any", required=True),
        Param("table", "array", required=True, description="`[{\"pattern\", \"value\"}]`; first match wins; `$1` inserts a group."),
        Param("default", "any"),
        Param("ignore_case", "boolean", default=False),
        Param("full_match", "boolean", default=False),
    ),
}  # fmt: skip


class Scope:
    """Resolves names for one event. Values are computed on first use and cached, and so are
    the outcomes of triggers (`Trigger.matches`): several tags share a trigger."""

    __slots__ = ("event", "request", "client_name", "variables", "_cache", "matched")

    def __init__(
        self,
        event: Event,
        request: RequestContext,
        variables: dict[str, Variable],
        client_name: str = "",
    ) -> None:
        self.event = event
        self.request = request
        self.client_name = client_name
        self.variables = variables
        self._cache: dict[str, Any] = {}
        self.matched: dict[object, bool] = {}  # trigger → whether it matches this event

    def get(self, name: str) -> Any:
        cache = self._cache
        if name in cache:
            return cache[name]
        var = self.variables.get(name)
        if var is not None:
            value = var.resolve(self)
        else:
            fn = BUILTINS.get(name)
            value = fn(self) if fn is not None else prefixed(name, self)
        cache[name] = value
        return value

    def snapshot(self, secret_names: set[str]) -> dict[str, Any]:
        """Every user variable and the common built-ins, for preview (secrets redacted)."""
        out: dict[str, Any] = {}
        for name in list(self.variables) + list(BUILTINS):
            if name == "event":  # the Event data tab shows it already
                continue
            value = self.get(name)
            out[name] = REDACTED if name in secret_names and value not in (None, "") else value
        return out


class NeedsEvent(Exception):
    """A value that only an event can give."""


# variable types whose value needs no event: their resolvers only ask the scope for names
FIXED_VARIABLE_TYPES = frozenset({"constant", "env", "lookup_table", "regex_table"})


class FixedScope:
    """Resolves the names whose values are known before any event (env and constant
    variables, tables over them); any other name raises `NeedsEvent`."""

    def __init__(self, variables: dict[str, Variable]) -> None:
        self.variables = variables

    def get(self, name: str) -> Any:
        variable = self.variables.get(name)
        if variable is None or variable.type not in FIXED_VARIABLE_TYPES:
            raise NeedsEvent(name)
        return variable.resolve(cast(Any, self))  # these resolvers only call `get`


@dataclass
class Variable:
    name: str
    type: str
    resolve: Callable[[Scope], Any]
    secret: bool = False


def compile_variable(spec: dict[str, Any]) -> Variable:
    """Build a resolver from a validated spec (see container.validate)."""
    kind, name = spec["type"], spec["name"]
    default = compile_value(spec.get("default"))
    fn: Callable[[Scope], Any]

    if kind == "event_data":
        path = tuple(spec["key"].split("."))

        def fn(scope: Scope) -> Any:
            value = get_path(scope.event, path)
            return default(scope) if value is None else value

    elif kind in ("request_header", "cookie", "query_parameter"):
        key = spec[
            {"request_header": "header", "cookie": "cookie", "query_parameter": "param"}[kind]
        ]
        attr = {"request_header": "headers", "cookie": "cookies", "query_parameter": "query"}[kind]
        if kind == "request_header":
            key = key.lower()

        def fn(scope: Scope) -> Any:
            value = getattr(scope.request, attr).get(key)
            return default(scope) if value is None else value

    elif kind == "constant":
        fn = compile_value(spec["value"])

    elif kind == "env":
        raw = os.environ.get(spec["env"])

        def fn(scope: Scope) -> Any:
            return default(scope) if raw is None else raw

    elif kind == "lookup_table":
        fn = _compile_lookup(spec, default)

    elif kind == "regex_table":
        fn = _compile_regex_table(spec, default)

    else:  # pragma: no cover - validation rejects unknown types first
        raise ValueError(f"unknown variable type {kind!r}")
    return Variable(name=name, type=kind, resolve=fn, secret=bool(spec.get("secret")))


def _compile_lookup(spec: dict[str, Any], default: Compiled) -> Callable[[Scope], Any]:
    table = spec["table"]
    pairs = table.items() if isinstance(table, dict) else ((r["key"], r["value"]) for r in table)
    ignore_case = bool(spec.get("ignore_case"))
    lookup = {(text(k).lower() if ignore_case else text(k)): compile_value(v) for k, v in pairs}
    source = compile_value(spec["input"])

    def fn(scope: Scope) -> Any:
        key = text(source(scope))
        found = lookup.get(key.lower() if ignore_case else key)
        return default(scope) if found is None else found(scope)

    return fn


def _compile_regex_table(spec: dict[str, Any], default: Compiled) -> Callable[[Scope], Any]:
    flags = re.IGNORECASE if spec.get("ignore_case") else 0
    full = bool(spec.get("full_match"))
    rows = [(re.compile(r["pattern"], flags), compile_value(r["value"])) for r in spec["table"]]
    source = compile_value(spec["input"])

    def fn(scope: Scope) -> Any:
        subject = text(source(scope))
        for pattern, value in rows:
            match = pattern.fullmatch(subject) if full else pattern.search(subject)
            if match:
                out = value(scope)
                return _expand_groups(out, match) if isinstance(out, str) and "$" in out else out
        return default(scope)

    return fn


def _expand_groups(template: str, match: re.Match[str]) -> str:
    """Replace `$1`..`$9` with the match's groups (an unknown group stays as written)."""

    def group(m: re.Match[str]) -> str:
        index = int(m.group(1))
        return (match.group(index) or "") if index <= match.re.groups else m.group(0)

    return _GROUP_REF.sub(group, template)


_GROUP_REF = re.compile(r"\$(\d)")


# -- built-ins ------------------------------------------------------------------------------


def _page_part(key: str) -> Callable[[Scope], Any]:
    def fn(scope: Scope) -> Any:
        if key not in scope.event:
            add_page_parts(scope.event)
        return scope.event.get(key)

    return fn


def _event_key(key: str) -> Callable[[Scope], Any]:
    return lambda s: s.event.get(key)


def _client_ip(scope: Scope) -> Any:
    """The event's `ip_override`, else the request's address when it is the visitor's."""
    ip = scope.event.get("ip_override")
    return ip if ip or not scope.request.is_visitor else scope.request.ip


def _user_agent(scope: Scope) -> Any:
    """The event's `user_agent`, else the request's when the request is the visitor's: a
    server-to-server caller's own agent (`Python-urllib`, `Java`) says nothing of the customer."""
    agent = scope.event.get("user_agent")
    return agent if agent or not scope.request.is_visitor else scope.request.user_agent


def _agent_info(scope: Scope) -> UserAgentInfo:
    agent = _user_agent(scope)
    return user_agent_info(agent if isinstance(agent, str) else "")


BUILTINS: dict[str, Callable[[Scope], Any]] = {
    # all the event data (as transformed for the tag), e.g. a webhook's body; a copy, so what
    # a tag sends does not follow later additions to the event
    "event": lambda s: dict(s.event),
    "event_name": lambda s: s.event.get("event_name"),
    "client_name": lambda s: s.client_name,
    "client_ip": _client_ip,
    "request_path": lambda s: s.request.path,
    "request_method": lambda s: s.request.method,
    "page_location": lambda s: s.event.get("page_location"),
    "page_hostname": _page_part("page_hostname"),
    "page_path": _page_part("page_path"),
    "user_agent": _user_agent,
    "user_agent.browser": lambda s: _agent_info(s).browser,
    "user_agent.os": lambda s: _agent_info(s).os,
    "user_agent.device_type": lambda s: _agent_info(s).device_type,
    "user_agent.is_bot": lambda s: _agent_info(s).is_bot,
    # where the visitor is: a trusted proxy's geo headers or the geo database (geo.py)
    "geo.country": lambda s: geography(s.event, s.request).country,
    "geo.region": lambda s: geography(s.event, s.request).region,
    "geo.city": lambda s: geography(s.event, s.request).city,
    "geo.postal_code": lambda s: geography(s.event, s.request).postal_code,
    "timestamp_ms": lambda s: int(time.time() * 1000),
    "random": lambda s: random.randint(0, 2**31 - 1),
}
for _key in COMMON_KEYS:
    BUILTINS.setdefault(_key, _event_key(_key))

PREFIXES: dict[str, Callable[[Scope, str], Any]] = {
    "event.": lambda s, rest: get_path(s.event, rest),
    "cookie.": lambda s, rest: s.request.cookies.get(rest),
    "header.": lambda s, rest: s.request.headers.get(rest.lower()),
    "query.": lambda s, rest: s.request.query.get(rest),
}


# Built-ins that read the same whenever asked during one event: a template may call them
# directly instead of through `Scope.get` and its cache (`random` and `timestamp_ms` may not).
UNCACHED_OK = frozenset(BUILTINS) - {"random", "timestamp_ms"}


def direct_getters(variables: dict[str, Variable]) -> dict[str, Callable[[Scope], Any]]:
    """Getters for `refs.compile_value(..., direct=)`: built-ins no user variable shadows."""
    return {name: BUILTINS[name] for name in UNCACHED_OK if name not in variables}


def is_builtin(name: str) -> bool:
    return name in BUILTINS or any(name.startswith(p) and len(name) > len(p) for p in PREFIXES)


def prefixed(name: str, scope: Scope) -> Any:
    """`event.<path>`, `cookie.<name>`, `header.<name>`, `query.<name>`; else None."""
    for prefix, getter in PREFIXES.items():
        if name.startswith(prefix):
            return getter(scope, name[len(prefix) :])
    return None
