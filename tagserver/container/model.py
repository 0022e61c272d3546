"""container.json: parse, validate as a whole, compile.

Validation never stops at the first mistake: it collects every problem with its JSON path
(`tags[2].fire_on[0]: no trigger named "purchse" — did you mean "purchase"?`) so a marketer
fixes the file in one pass. A container that validates is compiled into plain objects the
runtime walks without parsing anything per event.
"""

from __future__ import annotations

import difflib
import hashlib
import ipaddress
import json
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..event import CONSENT_TYPES, RequestContext
from ..plugins import Client, Param, Registry, Tag
from ..redact import secret_values
from ..settings import Settings
from ..visitor import cookie_keeper
from .problems import describe, line_of, owner_name, plural, value_lines
from .refs import compile_value, has_refs, references
from .transformations import Transformation, compile_all
from .transformations import validate as validate_transformations
from .triggers import OPERATORS, Trigger, variable_name
from .variables import (
    BUILTINS,
    VARIABLE_TYPES,
    FixedScope,
    Scope,
    Variable,
    compile_variable,
    direct_getters,
    is_builtin,
)

TOP_LEVEL_KEYS = (
    "$schema", "name", "version", "description", "consent_mode", "clients", "variables",
    "triggers", "tags", "transformations", "cookie_keeper",
)  # fmt: skip
CLIENT_KEYS = ("name", "type", "priority", "params", "description")
TAG_KEYS = ("name", "type", "fire_on", "block_on", "consent", "paused", "params", "description")
TRIGGER_KEYS = ("name", "event", "conditions", "description")
CONDITION_KEYS = ("variable", "operator", "value", "negate", "ignore_case")
STATIC = ("env", "constant")  # variable types a client param may use: known without an event
NUMERIC_OPERATORS = ("greater_than", "greater_or_equal", "less_than", "less_or_equal")


@dataclass(frozen=True)
class Problem:
    path: str
    message: str
    line: int | None = None  # in the file, when the container came from one
    name: str | None = None  # of the trigger, tag, variable or client the path points into

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message

    def render(self, file: str | None = None) -> str:
        """`container.json:23: triggers[1] "purchase": conditions[0].operator: ...`"""
        return describe(self.path, self.message, self.line, self.name, file)


def locate(found: list[Problem], data: Any, raw: bytes | None) -> list[Problem]:
    """The problems with the line each one is on and the name of the entry it is in."""
    lines = value_lines(raw.decode("utf-8", "replace")) if raw is not None else {}
    return [replace(p, line=line_of(p.path, lines), name=owner_name(p.path, data)) for p in found]


class ContainerError(Exception):
    """The container cannot be used; `problems` lists every reason with its place."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))

    def report(self, file: str | None = None) -> list[str]:
        """A headline (`container.json: 2 problems`) and one line per problem."""
        head = f"{file}: " if file else ""
        return [
            f"{head}{plural(len(self.problems), 'problem')}",
            *(p.render(file) for p in self.problems),
        ]


def did_you_mean(name: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1, cutoff=0.6)
    return f' — did you mean "{close[0]}"?' if close else ""


# what people write for an operator, from other tools and languages: (operator, negate)
OPERATOR_ALIASES: dict[str, tuple[str, bool]] = {
    **dict.fromkeys((">", "gt", "greater", "more_than", "above"), ("greater_than", False)),
    **dict.fromkeys((">=", "=>", "gte", "ge", "at_least"), ("greater_or_equal", False)),
    **dict.fromkeys(("<", "lt", "less", "below"), ("less_than", False)),
    **dict.fromkeys(("<=", "=<", "lte", "le", "at_most"), ("less_or_equal", False)),
    **dict.fromkeys(("=", "==", "===", "eq", "equal", "is", "exact"), ("equals", False)),
    **dict.fromkeys(
        ("!=", "!==", "<>", "ne", "neq", "not_equal", "not_equals", "is_not"), ("equals", True)
    ),
    **dict.fromkeys(("~", "=~", "regex", "matches", "match", "regexp"), ("matches_regex", False)),
    **dict.fromkeys(("!~", "not_matches", "not_regex"), ("matches_regex", True)),
    **dict.fromkeys(("includes", "has", "like"), ("contains", False)),
    **dict.fromkeys(("not_contains", "not_includes", "excludes"), ("contains", True)),
    **dict.fromkeys(("startswith", "begins_with", "prefix"), ("starts_with", False)),
    **dict.fromkeys(("endswith", "suffix"), ("ends_with", False)),
    **dict.fromkeys(("one_of", "in_list", "any_of"), ("in", False)),
    **dict.fromkeys(("not_in", "none_of"), ("in", True)),
    **dict.fromkeys(("cidr", "in_network", "in_subnet", "ip_in"), ("in_cidr", False)),
}


def operator_hint(op: str) -> str:
    """A suggestion for an unknown operator, then the list of valid ones."""
    key = op.strip().lower().replace(" ", "_").replace("-", "_")
    alias = OPERATOR_ALIASES.get(key)
    if alias is not None:
        name, negate = alias
        hint = f' — did you mean "{name}"' + (' with "negate": true?' if negate else "?")
    else:
        hint = did_you_mean(key, OPERATORS)
    return f"{hint} (operators: {', '.join(OPERATORS)})"


# -- compiled form ---------------------------------------------------------------------------


@dataclass
class CompiledTag:
    name: str
    type: str
    instance: Tag
    fire_on: list[Trigger]
    block_on: list[Trigger]
    consent: list[str]
    paused: bool
    params: Callable[[Scope], Any]  # may read the scope directly (`variables.direct_getters`)
    secret_params: frozenset[str]
    templated_params: tuple[Param, ...] = ()  # typed (not `any`): checked once resolved
    # the secret params' values when none is templated (else found per fire): they travel
    # with every message the tag makes (`Outgoing.secrets`)
    secrets: tuple[str, ...] | None = ()
    transformations: tuple[Transformation, ...] = ()  # in order; empty: the plain path


@dataclass
class Container:
    name: str
    version: str
    hash: str
    consent_mode: str
    clients: list[Client]  # highest priority first
    variables: dict[str, Variable]
    triggers: dict[str, Trigger]
    tags: list[CompiledTag]
    secrets: frozenset[str] = field(default_factory=frozenset)
    secret_variables: frozenset[str] = field(default_factory=frozenset)
    source: dict[str, Any] = field(default_factory=dict, repr=False)
    raw: bytes = field(default=b"", repr=False)  # the file as read (kept in the history)
    cookie_keeper: cookie_keeper.CookieKeeper | None = None  # None: off

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hash": self.hash}


# -- loading -----------------------------------------------------------------------------------


def parse_json(raw: str | bytes, where: str = "container.json") -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ContainerError(
            [
                Problem(
                    "", f"{where}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
                )
            ]
        ) from None
    except UnicodeDecodeError as exc:
        raise ContainerError([Problem("", f"{where}: not UTF-8 text ({exc.reason})")]) from None


def load_file(path: str | Path, registry: Registry, settings: Settings) -> Container:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ContainerError([Problem("", f"cannot read {path}: {exc.strerror}")]) from None
    return load(parse_json(raw, str(path)), registry, settings, raw=raw)


def load(data: Any, registry: Registry, settings: Settings, raw: bytes | None = None) -> Container:
    found = validate(data, registry)
    if found:
        raise ContainerError(locate(found, data, raw))
    return _compile(data, registry, settings, raw)


# -- validation ------------------------------------------------------------------------------


class _Validator:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.problems: list[Problem] = []
        self.variable_names: set[str] = set()
        self.trigger_names: set[str] = set()

    def add(self, path: str, message: str) -> None:
        self.problems.append(Problem(path, message))

    def variable_hint(self, name: str) -> str:
        """`did you mean` among the container's variables and the built-ins."""
        return did_you_mean(name, [*self.variable_names, *BUILTINS])

    def unknown_keys(self, obj: dict[str, Any], allowed: Iterable[str], path: str) -> None:
        allowed = tuple(allowed)
        for key in obj:
            if key not in allowed:
                self.add(
                    f"{path}.{key}" if path else key,
                    f'unknown field "{key}"{did_you_mean(key, allowed)}',
                )

    def named_list(self, data: dict[str, Any], key: str) -> list[tuple[str, dict[str, Any]]]:
        """Entries of a list of named objects, with duplicate and shape checks."""
        items = data.get(key, [])
        if not isinstance(items, list):
            self.add(key, f"must be a list, got {type(items).__name__}")
            return []
        seen: dict[str, int] = {}
        out = []
        for i, item in enumerate(items):
            path = f"{key}[{i}]"
            if not isinstance(item, dict):
                self.add(path, "must be an object")
                continue
            name = item.get("name")
            if not isinstance(name, str) or not name.strip():
                self.add(f"{path}.name", "required: a non-empty string")
                continue
            if name in seen:
                self.add(f"{path}.name", f'duplicate name "{name}" (also {key}[{seen[name]}])')
                continue
            seen[name] = i
            out.append((path, item))
        return out

    def params(self, declared: Iterable[Param], given: Any, path: str, what: str) -> None:
        by_name = {p.name: p for p in declared}
        if given is None:
            given = {}
        if not isinstance(given, dict):
            self.add(path, "must be an object")
            return
        for key, value in given.items():
            param = by_name.get(key)
            if param is None:
                self.add(
                    f"{path}.{key}", f'{what} has no parameter "{key}"{did_you_mean(key, by_name)}'
                )
                continue
            self.refs(value, f"{path}.{key}")
            if not has_refs(value):
                problem = param.check(value)
                if problem:
                    self.add(f"{path}.{key}", problem)
        for name, param in by_name.items():
            if param.required and given.get(name) in (None, ""):
                self.add(f"{path}.{name}", f"required parameter of {what} is missing")

    def refs(self, value: Any, path: str) -> None:
        for name in references(value):
            if name not in self.variable_names and not is_builtin(name):
                self.add(path, f'no variable named "{name}"{self.variable_hint(name)}')

    def run(self, data: Any) -> list[Problem]:
        if not isinstance(data, dict):
            self.add("", "the container must be a JSON object")
            return self.problems
        self.unknown_keys(data, TOP_LEVEL_KEYS, "")
        for key in ("name", "version", "description"):
            if key in data and not isinstance(data[key], (str, int)):
                self.add(key, "must be a string")
        if data.get("consent_mode", "basic") not in ("basic", "strict"):
            self.add("consent_mode", 'must be "basic" or "strict"')
        if "cookie_keeper" in data:
            for path, message in cookie_keeper.problems(data["cookie_keeper"]):
                self.add(path, message)

        variables = self.named_list(data, "variables")
        self.variable_names = {item["name"] for _, item in variables}
        self.variable_types = {item["name"]: item.get("type") for _, item in variables}
        triggers = self.named_list(data, "triggers")
        self.trigger_names = {item["name"] for _, item in triggers}

        for path, item in variables:
            self.variable(path, item)
        self.cycles(variables)
        for path, item in triggers:
            self.trigger(path, item)
        for path, item in self.named_list(data, "clients"):
            self.client(path, item)
        tags = data.get("tags")
        for path, item in self.named_list(data, "tags"):
            self.tag(path, item)
        transformations = self.named_list(data, "transformations")
        validate_transformations(self, transformations, tags if isinstance(tags, list) else [])
        return self.problems

    def variable(self, path: str, item: dict[str, Any]) -> None:
        name, kind = item["name"], item.get("type")
        if is_builtin(name):
            self.add(f"{path}.name", f'"{name}" is a built-in variable; choose another name')
        if kind not in VARIABLE_TYPES:
            self.add(
                f"{path}.type",
                f'unknown variable type "{kind}"{did_you_mean(str(kind), VARIABLE_TYPES)}',
            )
            return
        fields = {k: v for k, v in item.items() if k not in ("name", "type", "description")}
        self.params(VARIABLE_TYPES[kind], fields, path, f'variable type "{kind}"')
        table = item.get("table")
        if kind == "regex_table" and isinstance(table, list):
            flags = re.IGNORECASE if item.get("ignore_case") else 0
            for i, row in enumerate(table):
                row_path = f"{path}.table[{i}]"
                if not isinstance(row, dict) or "pattern" not in row or "value" not in row:
                    self.add(row_path, 'must be {"pattern": ..., "value": ...}')
                    continue
                self.regex(row["pattern"], f"{row_path}.pattern", flags)
        well_formed_rows = isinstance(table, list) and all(
            isinstance(r, dict) and "key" in r and "value" in r for r in table
        )
        if kind == "lookup_table" and not isinstance(table, dict) and not well_formed_rows:
            self.add(f"{path}.table", 'must be an object or a list of {"key": ..., "value": ...}')

    def cycles(self, variables: list[tuple[str, dict[str, Any]]]) -> None:
        deps = {
            item["name"]: {r for r in references(item) if r in self.variable_names}
            for _, item in variables
        }
        paths = {item["name"]: path for path, item in variables}
        reported: set[str] = set()
        for start in deps:
            stack, on_path = [(start, iter(sorted(deps[start])))], [start]
            while stack:
                node, children = stack[-1]
                child = next(children, None)
                if child is None:
                    stack.pop()
                    on_path.pop()
                elif child in on_path:
                    cycle = on_path[on_path.index(child) :] + [child]
                    if not reported & set(cycle):
                        self.add(paths[cycle[0]], "reference cycle: " + " → ".join(cycle))
                        reported.update(cycle)
                elif len(stack) < 100:
                    stack.append((child, iter(sorted(deps.get(child, ())))))
                    on_path.append(child)

    def regex(self, pattern: Any, path: str, flags: int = 0) -> None:
        if not isinstance(pattern, str):
            self.add(path, "must be a string (a regular expression)")
            return
        if has_refs(pattern):
            return
        try:
            re.compile(pattern, flags)
        except re.error as exc:
            self.add(path, f"invalid regular expression: {exc}")

    def trigger(self, path: str, item: dict[str, Any]) -> None:
        self.unknown_keys(item, TRIGGER_KEYS, path)
        event = item.get("event", "*")
        if isinstance(event, dict):
            if set(event) - {"regex", "ignore_case"} or "regex" not in event:
                self.add(
                    f"{path}.event", 'must be a name, a list of names, "*" or {"regex": "..."}'
                )
            else:
                self.regex(
                    event["regex"], f"{path}.event.regex", re.I if event.get("ignore_case") else 0
                )
        elif isinstance(event, list):
            if not event or not all(isinstance(e, str) for e in event):
                self.add(f"{path}.event", "must be a non-empty list of event names")
        elif not isinstance(event, str) or not event:
            self.add(f"{path}.event", 'must be a name, a list of names, "*" or {"regex": "..."}')
        conditions = item.get("conditions", [])
        if not isinstance(conditions, list):
            self.add(f"{path}.conditions", "must be a list")
            return
        for i, cond in enumerate(conditions):
            self.condition(f"{path}.conditions[{i}]", cond)

    def condition(self, path: str, cond: Any) -> None:
        if not isinstance(cond, dict):
            self.add(path, "must be an object")
            return
        self.unknown_keys(cond, CONDITION_KEYS, path)
        var = cond.get("variable")
        if not isinstance(var, str) or not var.strip():
            self.add(f"{path}.variable", "required: the name of a variable")
        else:
            name = variable_name(var)
            if name not in self.variable_names and not is_builtin(name):
                self.add(
                    f"{path}.variable",
                    f'no variable named "{name}"{self.variable_hint(name)}',
                )
        op = cond.get("operator")
        if op not in OPERATORS:
            self.add(f"{path}.operator", f'unknown operator "{op}"{operator_hint(str(op))}')
            return
        if "value" not in cond:
            self.add(f"{path}.value", f'required by operator "{op}"')
            return
        value = cond["value"]
        self.refs(value, f"{path}.value")
        for flag in ("negate", "ignore_case"):
            if flag in cond and not isinstance(cond[flag], bool):
                self.add(f"{path}.{flag}", "must be true or false")
        if has_refs(value):
            return
        if op == "matches_regex":
            self.regex(value, f"{path}.value", re.I if cond.get("ignore_case") else 0)
        elif op in NUMERIC_OPERATORS:
            try:
                float(value)
            except (TypeError, ValueError):
                self.add(f"{path}.value", f'operator "{op}" needs a number, got {value!r}')
        elif op == "in_cidr":
            for net in value if isinstance(value, list) else str(value).split(","):
                try:
                    ipaddress.ip_network(str(net).strip(), strict=False)
                except ValueError:
                    self.add(f"{path}.value", f"not an IP network: {net!r}")

    def client(self, path: str, item: dict[str, Any]) -> None:
        self.unknown_keys(item, CLIENT_KEYS, path)
        kind = item.get("type")
        cls = self.registry.clients.get(kind) if isinstance(kind, str) else None
        if cls is None:
            self.add(
                f"{path}.type",
                f'unknown client type "{kind}"{did_you_mean(str(kind), self.registry.clients)}',
            )
            return
        if "priority" in item and (
            not isinstance(item["priority"], int) or isinstance(item["priority"], bool)
        ):
            self.add(f"{path}.priority", "must be an integer")
        params = item.get("params")
        self.params(cls.params, params, f"{path}.params", f'client "{kind}"')
        if isinstance(params, dict):
            for key, value in params.items():
                for name in references(value):
                    if name in self.variable_types and self.variable_types[name] not in STATIC:
                        self.add(
                            f"{path}.params.{key}",
                            f'"{name}" is a {self.variable_types[name]} variable: client params '
                            "may use only env and constant variables (resolved once, at load)",
                        )
                    elif name not in self.variable_types and is_builtin(name):
                        self.add(
                            f"{path}.params.{key}",
                            f'"{name}" is known only per event: client params may use only env '
                            "and constant variables (resolved once, at load)",
                        )
            if not any(p.path.startswith(f"{path}.params") for p in self.problems):
                static = {k: v for k, v in params.items() if not has_refs(v)}
                for where, message in cls.check_params(static):
                    self.add(f"{path}.params.{where}", message)

    def tag(self, path: str, item: dict[str, Any]) -> None:
        self.unknown_keys(item, TAG_KEYS, path)
        kind = item.get("type")
        cls = self.registry.tags.get(kind) if isinstance(kind, str) else None
        if cls is None:
            self.add(
                f"{path}.type",
                f'unknown tag type "{kind}"{did_you_mean(str(kind), self.registry.tags)}',
            )
        else:
            self.params(cls.params, item.get("params"), f"{path}.params", f'tag "{kind}"')
        fire_on = item.get("fire_on")
        if not isinstance(fire_on, list) or not fire_on:
            self.add(f"{path}.fire_on", "required: a non-empty list of trigger names")
        for key in ("fire_on", "block_on"):
            names = item.get(key, [])
            if not isinstance(names, list):
                if key == "block_on":
                    self.add(f"{path}.{key}", "must be a list of trigger names")
                continue
            for i, name in enumerate(names):
                if name not in self.trigger_names:
                    self.add(
                        f"{path}.{key}[{i}]",
                        f'no trigger named "{name}"{did_you_mean(str(name), self.trigger_names)}',
                    )
        consent = item.get("consent", [])
        if not isinstance(consent, list):
            self.add(f"{path}.consent", "must be a list of consent types")
        else:
            for i, ctype in enumerate(consent):
                if ctype not in CONSENT_TYPES:
                    self.add(
                        f"{path}.consent[{i}]",
                        f'unknown consent type "{ctype}"{did_you_mean(str(ctype), CONSENT_TYPES)}',
                    )
        if "paused" in item and not isinstance(item["paused"], bool):
            self.add(f"{path}.paused", "must be true or false")


def validate(data: Any, registry: Registry) -> list[Problem]:
    """Every problem in the container, each with its JSON path. Empty when valid."""
    return _Validator(registry).run(data)


# -- compiling -------------------------------------------------------------------------------


def _static_params(params: dict[str, Any], declared: Iterable[Param]) -> dict[str, Any]:
    """Literal params with declared defaults filled in (templated ones are left out)."""
    out = {p.name: p.default for p in declared if p.default is not None}
    out.update({k: v for k, v in params.items() if not has_refs(v)})
    return out


def _client_params(
    params: dict[str, Any], declared: Iterable[Param], variables: dict[str, Variable]
) -> dict[str, Any]:
    """A client's params with declared defaults, `{{env}}` and `{{constant}}` variables
    resolved once: a client is built once per container, before any event exists."""
    out = {p.name: p.default for p in declared if p.default is not None}
    scope = Scope({}, RequestContext.empty(), variables)
    for key, value in params.items():
        out[key] = compile_value(value)(scope) if has_refs(value) else value
    return out


def _tag_params(
    given: dict[str, Any],
    params: dict[str, Any],
    declared: Iterable[Param],
    variables: dict[str, Variable],
    direct: dict[str, Callable[[Scope], Any]],
) -> tuple[Callable[[Scope], Any], tuple[Param, ...]]:
    """`CompiledTag.params` and `.templated_params` for a tag's `params` (`given`: with the
    defaults). When no param needs an event (literals; env and constant variables), they are
    resolved now, once, like literal params; a value its check refuses is left to each event,
    which reports it as the tag's error."""
    templated = tuple(p for p in declared if p.type != "any" and has_refs(params.get(p.name)))
    try:
        fixed = compile_value(given)(FixedScope(variables))
    except Exception:  # NeedsEvent, or a variable that fails: resolved per event
        return compile_value(given, direct), templated
    if any(p.check(fixed.get(p.name)) for p in templated):
        return compile_value(given, direct), templated
    return (lambda _scope: fixed), ()


def _compile(
    data: dict[str, Any], registry: Registry, settings: Settings, raw: bytes | None
) -> Container:
    variables = {v["name"]: compile_variable(v) for v in data.get("variables", [])}
    secret_variables = frozenset(n for n, v in variables.items() if v.secret)
    secrets: set[str] = set(settings.secret_values())
    for spec in data.get("variables", []):
        if spec.get("secret"):
            for value in (os.environ.get(spec["env"]), spec.get("default")):
                if isinstance(value, str) and value and not has_refs(value):
                    secrets.add(value)

    triggers = {t["name"]: Trigger(t) for t in data.get("triggers", [])}

    clients = []
    for order, spec in enumerate(data.get("clients", [])):
        cls = registry.clients[spec["type"]]
        params = _client_params(spec.get("params") or {}, cls.params, variables)
        for param in cls.params:
            value = params.get(param.name)
            if param.secret and isinstance(value, str) and value:
                secrets.add(value)
        client = cls(spec["name"], params, settings)
        client.type_name = spec["type"]  # the registry's name, whatever the class says
        client.priority = spec.get("priority", cls.default_priority)
        client.order = order
        clients.append(client)
    clients.sort(key=lambda c: (-c.priority, c.order))

    direct = direct_getters(variables)
    transformations = compile_all(data.get("transformations", []), data.get("tags", []))
    tags = []
    for spec in data.get("tags", []):
        tag_cls = registry.tags[spec["type"]]
        params = dict(spec.get("params") or {})
        secret_params = frozenset(p.name for p in tag_cls.params if p.secret)
        defaults = {p.name: p.default for p in tag_cls.params if p.default is not None}
        given = {**defaults, **params}
        for pname in secret_params:
            if not has_refs(given.get(pname)):  # a literal secret (an object's texts too)
                secrets.update(secret_values(given.get(pname)))
        # known now unless templated; else found per event by the runtime
        tag_secrets = (
            None
            if any(has_refs(given.get(name)) for name in secret_params)
            else secret_values(*(given.get(name) for name in sorted(secret_params)))
        )
        tag_params, templated = _tag_params(given, params, tag_cls.params, variables, direct)
        instance = tag_cls(spec["name"], _static_params(params, tag_cls.params), settings)
        instance.type_name = spec["type"]  # the registry's name, whatever the class says
        tags.append(
            CompiledTag(
                name=spec["name"],
                type=spec["type"],
                instance=instance,
                fire_on=[triggers[n] for n in spec["fire_on"]],
                block_on=[triggers[n] for n in spec.get("block_on", [])],
                consent=list(spec.get("consent", [])),
                paused=bool(spec.get("paused", False)),
                params=tag_params,
                secret_params=secret_params,
                templated_params=templated,
                secrets=tag_secrets,
                transformations=transformations.get(spec["name"], ()),
            )
        )

    if raw is None:
        raw = json.dumps(data, sort_keys=True).encode()
    digest = hashlib.sha256(raw)
    return Container(
        name=str(data.get("name", "container")),
        version=str(data.get("version", "")),
        hash=digest.hexdigest()[:12],
        consent_mode=data.get("consent_mode", "basic"),
        clients=clients,
        variables=variables,
        triggers=triggers,
        tags=tags,
        secrets=frozenset(s for s in secrets if len(s) >= 4),
        secret_variables=secret_variables,
        source=data,
        raw=raw,
        cookie_keeper=cookie_keeper.compile_keeper(data.get("cookie_keeper")),
    )
