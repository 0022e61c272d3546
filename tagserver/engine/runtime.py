"""The runtime: for one event, decide every tag, fire those that should, keep why.

The order of decisions for a tag is: paused → firing triggers (any) → blocking triggers
(none) → consent → fire. Each step that stops a tag records the reason with the values it
saw, so preview and the events API can answer "why did (not) my tag fire?".
A tag that raises is recorded as an error and never affects other tags or the response.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import metrics
from ..container.model import CompiledTag, Container
from ..container.refs import text
from ..container.transformations import changes
from ..container.triggers import Trigger, TriggerCheck
from ..container.variables import Scope
from ..event import Event, RequestContext
from ..plugins import FireContext, MatchReport, Outgoing, TagRejected
from ..redact import REDACTED, Redactor, secret_values
from ..settings import Settings
from ..visitor.match import record as record_match

log = logging.getLogger("tagserver.runtime")

TagStatus = Literal[
    "fired", "dry_run", "not_fired", "blocked", "paused", "no_consent", "rejected", "error"
]

GRANTED = frozenset({True, "granted", "1", "true", "yes", "allow", "allowed"})
DENIED = frozenset({False, "denied", "0", "false", "no", "deny"})


@dataclass
class TagResult:
    tag: str
    type: str
    status: TagStatus
    reason: str
    triggers: list[TriggerCheck] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)  # only when traced (preview)
    outgoing: list[Outgoing] = field(default_factory=list)
    params: dict[str, Any] | None = None  # resolved, secrets redacted; only when traced
    duration_ms: float = 0.0
    dry_run: list[dict[str, Any]] | None = None  # payloads a dry run would have sent, and why
    # only when traced and a transformation applies to the tag: the event it received and,
    # per transformation, whether it applied and which keys it changed
    received: Event | None = None
    transformations: list[dict[str, Any]] | None = None
    duplicates: int = 0  # messages the outbox had already (pending or delivered): not sent again
    redact: Redactor | None = None  # when traced and its secret params were templated
    match: MatchReport | None = None  # where the match keys came from, when the tag tells

    @property
    def fired(self) -> bool:
        return self.status == "fired"

    def as_dict(self) -> dict[str, Any]:
        shown = self._as_dict()
        return shown if self.redact is None else self.redact(shown)

    def _as_dict(self) -> dict[str, Any]:
        return {
            "tag": self.tag,
            "type": self.type,
            "status": self.status,
            "fired": self.fired,
            "reason": self.reason,
            "triggers": [t.as_dict() for t in self.triggers],
            "notes": self.notes,
            "params": self.params,
            "outgoing": [
                {"destination": o.destination, "dedup_id": o.dedup_id, "payload": o.payload}
                for o in self.outgoing
            ],
            "duration_ms": round(self.duration_ms, 3),
            "dry_run": self.dry_run,
            "received": self.received,
            "transformations": self.transformations,
            "match": self.match.as_dict() if self.match is not None else None,
        }


@dataclass
class EventResult:
    event: Event
    tags: list[TagResult]
    variables: dict[str, Any] | None = None  # only when traced
    warnings: list[str] | None = None  # e.g. a reused event id (see event_ids.py)

    @property
    def outgoing(self) -> list[Outgoing]:
        return [o for t in self.tags for o in t.outgoing]

    @property
    def fired(self) -> list[str]:
        return [t.tag for t in self.tags if t.fired]

    def summary(self, index: int) -> dict[str, Any]:
        """What the events API tells its caller about the index-th event of a hit."""
        fired, not_fired, repeated = [], {}, []
        match = None
        for t in self.tags:
            if t.status == "fired":
                fired.append(t.tag)
                if t.duplicates:
                    repeated.append(t.tag)
                if t.match is not None:
                    if match is None:
                        match = {}
                    match[t.tag] = t.match.as_dict()
            else:
                not_fired[t.tag] = t.reason
                if t.status == "dry_run" and t.match is not None:  # what it would have sent
                    if match is None:
                        match = {}
                    match[t.tag] = t.match.as_dict()
        summary = {
            "index": index,
            "accepted": True,
            "event_id": self.event.get("event_id"),
            "event_name": self.event.get("event_name"),
            "tags_fired": fired,
            "tags_not_fired": not_fired,
            "duplicate": bool(repeated),
        }
        if repeated:
            # the same event id reached these tags' destinations before (pending, or
            # delivered within 48 hours): it is not sent again
            summary["duplicate_tags"] = repeated
        if match is not None:  # per tag: which keys came from where, score before and after
            summary["match"] = match
        if self.warnings:
            summary["warnings"] = self.warnings
        return summary


def consent_decision(tag: CompiledTag, event: Event, strict: bool) -> str | None:
    """None when the tag may fire, else the reason it may not."""
    if not tag.consent:
        return None
    state = event.get("consent")
    state = state if isinstance(state, dict) else {}
    for ctype in tag.consent:
        value = state.get(ctype)
        if isinstance(value, str):
            value = value.strip().lower()
        if value in GRANTED:
            continue
        if value in DENIED:
            return f"consent: {ctype} is denied"
        if strict:
            return f"consent: {ctype} was not granted (consent_mode is strict)"
    return None


class Runtime:
    """Runs events through one container. Swapped as a whole when the container reloads."""

    def __init__(
        self, container: Container, settings: Settings, *, show_dry_runs: bool = False
    ) -> None:
        self.container = container
        self.settings = settings
        # a dry run's payload is built only for a previewed (traced) hit, or when asked (a
        # dry-run import shows what it would send): nobody else sees it
        self.show_dry_runs = show_dry_runs
        self.redact = Redactor(container.secrets)
        self._redactors: dict[tuple[str, ...], Redactor] = {}
        # templated secret params' text values → their secrets, and the redactor with them
        self._secret_texts: dict[tuple[str, ...], tuple[tuple[str, ...], Redactor]] = {}
        self.strict = container.consent_mode == "strict"
        # Tags planned by event name and client: a tag whose firing triggers are all ruled out
        # by the event's name or its client (`Trigger.ruled_out`: GA4 forwarding for the
        # events API, say) cannot fire, so (unless the hit is previewed) it is skipped without
        # evaluating anything; its result is the same for every such event.
        self._indexed = any(t.may_be_ruled_out for tag in container.tags for t in tag.fire_on)
        self._plans: dict[tuple[str, str], _Plan] = {}

    def run_event(
        self,
        event: Event,
        request: RequestContext,
        client_name: str,
        *,
        trace: bool = False,
        trace_id: str | None = None,
    ) -> EventResult:
        scope = Scope(event, request, self.container.variables, client_name)
        memo: dict[Any, Any] = {}  # shared by the event's tags (FireContext.memo)
        if trace or not self._indexed:
            results = []
            for tag in self.container.tags:
                result = self._decide(tag, event, scope, request, trace, trace_id, memo)
                metrics.count(metrics.TAG_RESULTS, result.tag, result.status)
                results.append(result)
        else:
            plan = self._plan(client_name, text(scope.get("event_name")))
            results = list(plan.results)  # type: ignore[arg-type]  # its Nones: the live tags' places, each filled below
            tags = self.container.tags
            for index in plan.live:
                result = self._decide(tags[index], event, scope, request, trace, trace_id, memo)
                metrics.count(metrics.TAG_RESULTS, result.tag, result.status)
                results[index] = result
            if plan.counted is not None:
                metrics.count_group(plan.counted)
        variables = None
        if trace:
            snapshot = scope.snapshot(set(self.container.secret_variables))
            variables = self.redact(snapshot)
            for result in results:  # a variable may hold what a tag's secret param took
                if result.redact is not None:
                    variables = result.redact(variables)
        return EventResult(event, results, variables)

    def _plan(self, client_name: str, event_name: str) -> _Plan:
        """Which tags an event of this name from this client needs evaluated; the skipped
        ones' results."""
        key = (client_name, event_name)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 512:  # event names come from callers: keep a bounded set
                self._plans.clear()
            plan = self._plans[key] = _Plan.of(self.container.tags, client_name, event_name)
        return plan

    def _decide(
        self,
        tag: CompiledTag,
        event: Event,
        scope: Scope,
        request: RequestContext,
        trace: bool,
        trace_id: str | None,
        memo: dict[Any, Any],
    ) -> TagResult:
        if tag.paused:
            return TagResult(tag.name, tag.type, "paused", "tag is paused")

        # Unless the hit is previewed, a trigger that matches leaves no record: only the
        # reasons a tag did not fire are told (events API, logs), so only those are built.
        checks: list[TriggerCheck] = []
        firing = None
        for trigger in tag.fire_on:
            if not trace and trigger.matches(scope):
                firing = trigger
                break
            check = trigger.check(scope)
            checks.append(check)
            if check.matched:
                firing = trigger
                break
        if firing is None:
            reason = "; ".join(c.explain() for c in checks) or "no firing trigger"
            return TagResult(
                tag.name, tag.type, "not_fired", f"no firing trigger matched: {reason}", checks
            )

        for trigger in tag.block_on:
            if not trace and not trigger.matches(scope):
                continue
            check = trigger.check(scope)
            if check.matched:
                checks.append(check)
                return TagResult(
                    tag.name, tag.type, "blocked", f"blocked by trigger {trigger.name!r}", checks
                )
        return self._fire(tag, firing, checks, event, scope, request, trace, trace_id, memo)

    def _fire(
        self,
        tag: CompiledTag,
        firing: Trigger,
        checks: list[TriggerCheck],
        event: Event,
        scope: Scope,
        request: RequestContext,
        trace: bool,
        trace_id: str | None,
        memo: dict[Any, Any],
    ) -> TagResult:
        if tag.consent:
            denied = consent_decision(tag, event, self.strict)
            if denied:
                return TagResult(tag.name, tag.type, "no_consent", denied, checks)

        started = time.perf_counter() if trace else 0.0
        redact = self.redact  # the container's secrets, and this event's secret params
        shows = trace or self.show_dry_runs
        ctx = FireContext(request, self.settings, tag.name, {}, redact, None, None, shows, memo)
        status: TagStatus = "fired"
        reason = firing.fired_reason
        params: dict[str, Any] = {}
        outgoing: list[Outgoing] = []
        secrets = tag.secrets  # known when compiled (and then in the container's secrets)
        steps: list[dict[str, Any]] | None = None
        try:
            if tag.transformations:
                event, scope, steps = self._transform(tag, event, scope, trace)
            params = tag.params(scope)
            if secrets is None:  # a secret param is templated: its values are this event's
                values = tuple(params.get(name) for name in tag.secret_params)
                secrets, redact = self._secrets_in(values)
                ctx.redact = redact
            for param in tag.templated_params:
                problem = param.check(params.get(param.name))
                if problem:
                    raise TypeError(f"params.{param.name}: {problem}")
            made = tag.instance.fire(event, params, ctx)
            for message in made:
                message.tag_type = tag.type  # the registry's name: it finds the sender
                message.tag_name = tag.name
                message.trace_id = trace_id
                message.secrets = secrets  # stored with the route, redacted by its delivery
            outgoing = made if type(made) is list else list(made)
        except TagRejected as exc:
            status, reason = "rejected", f"not sent: {redact.text(str(exc))}"
            metrics.count(metrics.TAG_REJECTIONS, tag.name, metrics.reason_label(reason))
        except Exception as exc:  # one broken tag never affects the others
            status = "error"
            reason = f"error: {type(exc).__name__}: {redact.text(str(exc))}"
            log.warning("tag %r raised %s", tag.name, reason)
        # built once the tag has run, every field given: no default factories on the hot path;
        # notes are shown in preview only: copied and redacted only when the hit is traced
        notes = redact.data(ctx.notes) if ctx.notes and trace else {}
        dry_run = None
        if ctx.dry_runs and status == "fired" and not outgoing:
            dry_run = redact.data(ctx.dry_runs)
            status, reason = "dry_run", f"dry run: {dry_run[0]['reason']}"
        result = TagResult(tag.name, tag.type, status, reason, checks, notes, outgoing)
        result.dry_run = dry_run
        if ctx.match is not None:
            result.match = ctx.match  # shown for a refused event too: it may say why
            if status == "fired" or status == "dry_run":
                record_match(tag.type, ctx.match)
        if trace:
            result.duration_ms = (time.perf_counter() - started) * 1000
            result.params = redact(
                {k: (REDACTED if k in tag.secret_params and v else v) for k, v in params.items()}
            )
            if redact is not self.redact:
                result.redact = redact
            if steps is not None:
                result.received = redact(event)
                result.transformations = redact(steps)
        return result

    def _secrets_in(self, values: tuple[Any, ...]) -> tuple[tuple[str, ...], Redactor]:
        """The secrets in one event's values of a tag's secret params, and the container's
        redactor with them. The same templated secret (a token from an env variable) comes
        with every event: text values are worked out once and kept."""
        try:
            found = self._secret_texts.get(values)
        except TypeError:  # an object param's values
            found = None
        if found is None:
            secrets = secret_values(*values)
            found = (secrets, self._redactor_with(secrets))
            # only texts are kept: a number and its float are one key, but not one text
            if all(type(value) is str for value in values):
                if len(self._secret_texts) >= 256:  # secrets taken from event data: bounded
                    self._secret_texts.clear()
                self._secret_texts[values] = found
        return found

    def _redactor_with(self, secrets: tuple[str, ...]) -> Redactor:
        """The container's redactor and `secrets` (one event's secret params), kept for reuse."""
        if not secrets:
            return self.redact
        found = self._redactors.get(secrets)
        if found is None:
            if len(self._redactors) >= 256:  # secrets taken from event data: stay bounded
                self._redactors.clear()
            found = self._redactors[secrets] = self.redact.extended(secrets)
        return found

    def _transform(
        self, tag: CompiledTag, event: Event, scope: Scope, trace: bool
    ) -> tuple[Event, Scope, list[dict[str, Any]] | None]:
        """The event `tag` receives, a scope over it, and (traced) what each step did.

        Conditions and augment values read the event as the triggers saw it (`scope`)."""
        received = event
        steps: list[dict[str, Any]] | None = [] if trace else None
        for step in tag.transformations:
            holds, check = step.holds(scope, trace)
            if not holds:
                if steps is not None:
                    failed = [c for c in check.conditions if not c.passed] if check else []
                    reason = failed[0].explain() if failed else "its conditions failed"
                    steps.append({"name": step.name, "type": step.type, "applied": False,
                                  "reason": f"not applied: {reason}", "changes": []})  # fmt: skip
                continue
            after = step.apply(received, scope)
            if steps is not None:
                steps.append({"name": step.name, "type": step.type, "applied": True,
                              "reason": "applied", "changes": changes(received, after, step)})  # fmt: skip
            received = after
        if received is event:
            return event, scope, steps
        return received, Scope(received, scope.request, scope.variables, scope.client_name), steps


@dataclass(frozen=True)
class _Plan:
    """For events of one name from one client: the results of the tags it skips (None where
    a tag runs)."""

    results: tuple[TagResult | None, ...]
    live: tuple[int, ...]  # the tags to evaluate, by index
    counted: metrics.Group | None  # TAG_RESULTS labels of the skipped tags

    @classmethod
    def of(cls, tags: list[CompiledTag], client_name: str, event_name: str) -> _Plan:
        results: list[TagResult | None] = []
        live, counted = [], []
        for index, tag in enumerate(tags):
            found = (
                [] if tag.paused else [t.ruled_out(event_name, client_name) for t in tag.fire_on]
            )
            checks = [check for check in found if check is not None]
            if not found or len(checks) < len(found):
                results.append(None)
                live.append(index)
                continue
            # what _decide finds: each firing trigger checked, none matched
            reason = "; ".join(c.explain() for c in checks)
            results.append(
                TagResult(
                    tag.name, tag.type, "not_fired", f"no firing trigger matched: {reason}", checks
                )
            )
            counted.append((tag.name, "not_fired"))
        group = metrics.Group(metrics.TAG_RESULTS, tuple(counted)) if counted else None
        return cls(tuple(results), tuple(live), group)
