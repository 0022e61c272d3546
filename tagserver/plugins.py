"""The plugin API: what a client or a tag type declares and implements.

Built-in clients and tags use exactly this API and register through the same entry points a
third-party package would (`tagserver.clients`, `tagserver.tags` in its pyproject.toml).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from .event import Event, RequestContext
from .settings import Setting, Settings, core_setting_names

if TYPE_CHECKING:
    import httpx
    from starlette.requests import Request
    from starlette.responses import Response

    from .visitor.cookie_keeper import CookieKeeper

ParamType = Literal["string", "number", "integer", "boolean", "object", "array", "any"]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "number": (int, float),
    "integer": (int,),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


@dataclass(frozen=True)
class Param:
    """One declared parameter of a client or tag: validated at load, shown in the schema."""

    name: str
    type: ParamType = "string"
    required: bool = False
    default: Any = None
    secret: bool = False
    choices: tuple[Any, ...] | None = None
    description: str = ""

    def check(self, value: Any) -> str | None:
        """A problem with a literal value, or None. Templated values are checked when resolved."""
        if self.type == "any" or value is None:
            return None
        allowed = _JSON_TYPES[self.type]
        if isinstance(value, bool) and self.type != "boolean":
            return f"expected {self.type}, got boolean"
        if not isinstance(value, allowed):
            return f"expected {self.type}, got {_json_type(value)}"
        if self.choices is not None and value not in self.choices:
            options = ", ".join(repr(c) for c in self.choices)
            return f"{value!r} is not one of {options}"
        return None

    def json_schema(self) -> dict[str, Any]:
        schema: dict[str, Any] = {}
        if self.type != "any":
            # a "{{variable}}" string is always allowed in place of the declared type
            schema["anyOf"] = [
                {"type": self.type},
                {"type": "string", "pattern": r"^\{\{.+\}\}$"},
            ]
            if self.choices is not None:
                schema["anyOf"][0]["enum"] = list(self.choices)
        if self.default is not None:
            schema["default"] = self.default
        description = self.description + (" (secret: redacted everywhere)" if self.secret else "")
        if description:
            schema["description"] = description
        return schema


def _json_type(value: Any) -> str:
    for name, types in _JSON_TYPES.items():
        if name != "integer" and isinstance(value, types):
            return name
    return "null" if value is None else type(value).__name__


def params_schema(params: Sequence[Param]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {p.name: p.json_schema() for p in params},
        "required": [p.name for p in params if p.required],
        "additionalProperties": False,
    }


# -- what tags produce and senders report ---------------------------------------------------


@dataclass
class Outgoing:
    """One message for a vendor, built by a tag. Its payload is final: PII already hashed.

    `destination` groups messages that may share one vendor request and is safe to show
    (a tag type plus a non-secret identity, e.g. `meta:<pixel>:<token hash>`). `route` holds
    what the sender needs to reach the vendor (URL, token ...): it is stored once per
    destination and never shown.
    """

    destination: str
    payload: Any
    dedup_id: str
    tag_type: str = ""  # set by the engine: the name the tag type is registered under
    tag_name: str = ""
    route: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None  # unix seconds; past it the vendor would refuse the message
    created_at: float = field(default_factory=time.time)
    trace_id: str | None = None  # set when the hit is previewed, so delivery shows there too
    preview: dict[str, Any] | None = None  # optional human-friendly view for preview
    # set by the engine: the values of the tag's `secret=True` params, stored with the route
    # and redacted from everything its delivery shows (errors, responses, logs)
    secrets: tuple[str, ...] = ()


Outcome = Literal["delivered", "retry", "permanent"]


@dataclass
class Delivery:
    """The sender's verdict for one message of a batch."""

    outcome: Outcome
    status: int | None = None  # HTTP status of the vendor request, when there was one
    error: str = ""  # vendor's message (secrets already removed)
    code: str = ""  # vendor's error code/subcode, e.g. "100/2804003"
    trace: str = ""  # vendor's trace id (fbtrace_id ...)
    retry_after: float | None = None  # seconds, when the vendor said
    response: Any = None  # parsed vendor response body, for preview
    latency_ms: float | None = None
    request: dict[str, Any] | None = None  # summary of the vendor request for preview, no secrets
    # why it failed, for metrics and alerts: "auth" (the token or key was refused: an operator
    # must act), "throttled", "invalid" (the event itself was refused), "unavailable",
    # "network", "refused"; empty: the dispatcher guesses from the HTTP status
    error_class: str = ""


@dataclass
class Message:
    """A stored outgoing message as the dispatcher hands it to a sender."""

    id: int
    destination: str
    payload: Any
    dedup_id: str
    attempts: int
    created_at: float
    deadline: float | None = None
    trace_id: str | None = None


class Sender:
    """Delivers batches of messages for one tag type. One instance per process."""

    def __init__(self, http: httpx.AsyncClient, settings: Settings) -> None:
        self.http = http
        self.settings = settings

    async def send(self, route: dict[str, Any], batch: list[Message]) -> list[Delivery]:
        """Deliver `batch` (all for one destination); one Delivery per message, same order."""
        raise NotImplementedError


# -- tags -----------------------------------------------------------------------------------


class TagRejected(Exception):
    """Raised by `Tag.fire` when an event must not be sent; the message says why."""


MATCH_SOURCES = ("event", "identity_cookie", "geography")


@dataclass(frozen=True)
class MatchReport:
    """What a conversions tag tells about one event's match keys: where each came from
    (`tagserver.toolkit.match` builds it) and its local match-quality score with the event's
    own keys (`before`) and as sent (`after`). Preview and the events API show it; the
    engine counts it in the `tagserver_match_*` metrics. Read-only: equal reports may be one
    object, shared by many events."""

    keys: dict[str, str]  # the tag's match key → event | identity_cookie | geography
    before: float
    after: float
    event_name: str  # the vendor's event name (a metric label, bounded by the engine)

    def as_dict(self) -> dict[str, Any]:
        by_source: dict[str, list[str]] = {source: [] for source in MATCH_SOURCES}
        for key, source in self.keys.items():
            by_source.setdefault(source, []).append(key)
        return {
            "keys": by_source,
            "quality_before": self.before,
            "quality_after": self.after,
            "gain": round(self.after - self.before, 2),
        }


@dataclass
class FireContext:
    """What a tag sees beside the event: the request, the settings and a notepad for preview."""

    request: RequestContext
    settings: Settings
    tag_name: str
    notes: dict[str, Any] = field(default_factory=dict)
    redact: Callable[[Any], Any] = lambda value: value  # removes the container's secrets
    dry_runs: list[dict[str, Any]] | None = None  # what `dry_run` recorded, in order
    match: MatchReport | None = None  # set with `report_match`
    # whether anyone will see what `dry_run` records (a previewed hit, a dry-run import); when
    # False a tag may record None instead of building the payload: its status, reason and
    # metrics stay the same
    shows_dry_runs: bool = True
    # one dict for every tag that fires for the same event, dropped with the event: what one
    # tag works out from the event that the others would again (normalized, hashed user data,
    # see `tagserver.toolkit.conversions.Hashes`); keys must say whose they are
    memo: dict[Any, Any] = field(default_factory=dict)

    def note(self, key: str, value: Any) -> None:
        """Attach information to the tag's result (shown in preview, e.g. match quality)."""
        self.notes[key] = value

    def report_match(self, report: MatchReport) -> None:
        """Tell where the event's match keys came from and its score before and after."""
        self.match = report

    def dry_run(self, payload: Any, reason: str) -> None:
        """Record the payload the tag would have sent, and why it sends nothing (say, no
        credentials yet). A tag that records one and returns no message has the status
        `dry_run`: preview shows the payload in Outgoing, metrics count it apart from `fired`.
        When `shows_dry_runs` is False nobody will see the payload: pass None."""
        if self.dry_runs is None:
            self.dry_runs = []
        self.dry_runs.append({"payload": payload, "reason": reason})


@dataclass(frozen=True)
class StartupParams:
    """A tag's params as far as they are known before any event arrives (for `Tag.describe`).

    Literal values and values of `constant` and `env` variables are resolved; a param that
    needs an event (`{{event.value}}`, `{{client_ip}}` ...) is listed in `per_event` instead.
    `sources` says where a value comes from, in the words an operator would fix it with: the
    environment variable (`META_PIXEL_ID`), the template (`{{pixel}}`), or the param's name.
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    per_event: frozenset[str] = frozenset()
    sources: Mapping[str, str] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        value = self.values.get(name)
        return default if value is None else value

    def source(self, name: str) -> str:
        return self.sources.get(name) or name


class Tag:
    """A tag type. One instance per tag in the container, created when the container loads."""

    type_name: str = ""  # set by the engine: the name its entry point registers it under
    description: ClassVar[str] = ""
    params: ClassVar[Sequence[Param]] = ()
    batch_size: ClassVar[int] = 1  # most messages the sender accepts in one call
    sender_class: ClassVar[type[Sender] | None] = None  # None: the tag sends nothing
    server_settings: ClassVar[Sequence[Setting[Any]]] = ()  # TAGSERVER_* settings it adds

    def __init__(self, name: str, static_params: dict[str, Any], settings: Settings) -> None:
        """`static_params` are the literal (non-templated) params, for precomputation."""
        self.name = name
        self.settings = settings

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        """Build the vendor messages for one event: fast, synchronous, no I/O."""
        raise NotImplementedError

    def describe(self, params: StartupParams) -> str:
        """What this tag will do, in one line of the start-up log: `LIVE → pixel 1234…`,
        `DRY RUN — META_PIXEL_ID is empty`. Never include a secret param's value."""
        if self.sender_class is None:
            return "runs in the server, sends nothing"
        return "sends what it fires on through the outbox (its type says no more)"

    def route_for(self, params: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """Where this tag's messages go with these resolved params: (destination, route).

        `tagserver outbox retry` sends dead letters through it, so a fixed token or URL takes
        effect. None (the default) when the tag cannot say without an event, or would send
        nothing (dry run): retry then keeps each message's stored route.
        """
        return None


# -- clients --------------------------------------------------------------------------------


class RunResult(Protocol):
    """What running one event gave: the event as its tags saw it (ids filled in)."""

    @property
    def event(self) -> Event: ...

    @property
    def warnings(self) -> list[str] | None:
        """What the site's developer should know about the event (a reused event id ...)."""
        ...

    def summary(self, index: int) -> dict[str, Any]:
        """The event's id, name, and which tags fired or not and why (as the events API says)."""
        ...


class Hit(Protocol):
    """One incoming request as `Client.handle` sees it. The engine builds it."""

    @property
    def request(self) -> RequestContext: ...

    @property
    def body(self) -> bytes: ...

    @property
    def previewed(self) -> bool:
        """True when the hit belongs to a preview session (log lines are then kept)."""
        ...

    async def run(self, events: list[Event]) -> Sequence[RunResult]:
        """Run the events through the container and store their messages durably; one result
        per event, in order. Raises `Unavailable` when nothing could be stored (answer 503)."""
        ...

    def record_error(self, reason: str) -> None:
        """Why the hit failed, as preview shows it (no-op when not previewed)."""
        ...

    def log(self, level: str, message: str) -> None:
        """A line for preview's Console: `level` is debug, info, warning or error (no-op when
        not previewed)."""
        ...

    def reject(self, index: int, reason: str) -> None:
        """The request's `index`-th event was refused, and why: preview shows it in the hit
        list, the Request tab and the Console (no-op when not previewed)."""
        ...

    @property
    def cookie_keeper(self) -> CookieKeeper | None:
        """The container's cookie keeper (other tools' cookies the server re-sets), None when
        off: hand it to `tagserver.toolkit.cookies.keep_others`."""
        ...


@dataclass(frozen=True)
class Example:
    """A request that sends a client a hit by hand: preview shows it as a curl command, with
    the session's preview header added."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: str = ""


MAX_EVENTS = Param(
    "max_events",
    "integer",
    description="Most events per request (default: TAGSERVER_MAX_EVENTS_PER_REQUEST).",
)
"""The batch limit every client that accepts several events per request declares the same way;
read it with `Client.max_events_from(params)`."""


class Client:
    """A request parser. Exactly one client claims a request; it turns it into events."""

    type_name: str = ""  # set by the engine: the name its entry point registers it under
    description: ClassVar[str] = ""
    params: ClassVar[Sequence[Param]] = ()
    default_priority: ClassVar[int] = 0
    server_settings: ClassVar[Sequence[Setting[Any]]] = ()  # TAGSERVER_* settings it adds
    request_is_visitor: bool = True
    """Whether the request comes from the visitor's own browser or app, so that its IP address
    and User-Agent are the visitor's. A server-to-server client says False (the caller's are
    not the customer's): events then get no `ip_override`/`user_agent` from the request, and
    `client_ip`/`user_agent.*` read only what the event carries. An instance may decide it
    from its params."""
    # set by the container once built: which client asks first (its `priority`, else
    # `default_priority`, then the container's order)
    priority: int
    order: int

    def __init__(self, name: str, params: dict[str, Any], settings: Settings) -> None:
        self.name = name
        self.settings = settings

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> list[tuple[str, str]]:
        """Problems the declared types cannot see, as (place under `params`, message) pairs;
        called by `tagserver validate` with the literal params once their types check."""
        return []

    def max_events_from(self, params: dict[str, Any]) -> int:
        """The `max_events` param, else `TAGSERVER_MAX_EVENTS_PER_REQUEST`."""
        return int(params.get("max_events") or self.settings.max_events_per_request)

    def claim(self, request: Request) -> bool:
        """Cheap, path-based: is this request mine?"""
        raise NotImplementedError

    async def handle(self, request: Request, hit: Hit) -> Response:
        """Parse the request into events, run them with `hit.run(events)`, build the response."""
        raise NotImplementedError

    def example(self) -> Example | None:
        """A request an operator may send by hand to try this client (shown in preview)."""
        return None

    def script_endpoint(self) -> str | None:
        """The path where tagserver's `collector.js` should send hits, when this client takes
        them (the demo page configures the script with it)."""
        return None


# -- registry -------------------------------------------------------------------------------


@dataclass
class Registry:
    clients: dict[str, type[Client]] = field(default_factory=dict)
    tags: dict[str, type[Tag]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # settings declared by plugins, by plugin ("client events_api", "tag meta_capi" ...)
    settings: dict[str, list[Setting[Any]]] = field(default_factory=dict)

    def declared_settings(self) -> list[Setting[Any]]:
        return [s for group in self.settings.values() for s in group]

    def _add_settings(self, plugin: str, declared: Sequence[Setting[Any]]) -> None:
        owners = {s.name: (owner, s) for owner, group in self.settings.items() for s in group}
        core = core_setting_names()
        for setting in declared:
            if not isinstance(setting, Setting):
                self.errors.append(f"{plugin}: server_settings holds {setting!r}, not a Setting")
            elif setting.name in core:
                self.errors.append(f"{plugin}: setting {setting.env} is a core setting")
            elif setting.name in owners:
                owner, known = owners[setting.name]
                if known is not setting:
                    self.errors.append(f"{plugin}: setting {setting.env} is declared by {owner}")
            else:
                self.settings.setdefault(plugin, []).append(setting)
                owners[setting.name] = (plugin, setting)


def load_registry() -> Registry:
    """Every client and tag type registered by an installed distribution's entry points."""
    registry = Registry()
    groups: tuple[tuple[str, dict[str, Any], type[Client] | type[Tag]], ...] = (
        ("tagserver.clients", registry.clients, Client),
        ("tagserver.tags", registry.tags, Tag),
    )
    for group, target, base in groups:
        for ep in entry_points(group=group):
            try:
                cls = ep.load()
            except Exception as exc:  # a broken plugin must not take the server down
                registry.errors.append(f"{group}:{ep.name}: cannot load {ep.value}: {exc}")
                continue
            if not (isinstance(cls, type) and issubclass(cls, base)):
                registry.errors.append(f"{group}:{ep.name}: {ep.value} is not a {base.__name__}")
                continue
            if ep.name in target:
                continue
            target[ep.name] = cls
            kind = "client" if base is Client else "tag"
            registry._add_settings(f"{kind} {ep.name}", cls.server_settings)
    return registry
