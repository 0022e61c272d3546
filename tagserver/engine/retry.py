"""Retrying dead letters: one code path for `tagserver outbox retry` and the status page.

Each tag's dead letters go where the tag sends now (`reroute.current_routes`: a fixed token
or URL takes effect), unless `keep_route`; a tag that cannot say keeps the stored route. The
answer says, per tag, how many were requeued, where to, and why a route was kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..container.model import Container
from ..delivery.outbox_backend import OutboxAdmin
from .reroute import Route, current_routes

RouteNow = tuple[str, str, dict[str, Any]]  # destination key, tag type, route (secrets)


def routes_now(container: Container) -> tuple[dict[str, RouteNow], dict[str, str]]:
    """Each tag's route now (tag → (key, type, route)), and why some tags have none."""
    routes: dict[str, RouteNow] = {}
    kept: dict[str, str] = {}
    for tag, found in current_routes(container).items():
        if isinstance(found, Route):
            routes[tag] = (found.destination, found.tag_type, found.route)
        else:
            kept[tag] = found
    return routes, kept


@dataclass
class Retried:
    """What a retry did (no routes, no secrets: safe to print and show)."""

    count: int = 0
    expired: int = 0  # past their deadline: the vendor will refuse them, dead-lettered again
    moved: list[dict[str, Any]] = field(default_factory=list)  # per tag: requeued, from, to
    # per tag, for people: where they went, and the repeats not requeued ("" when none)
    lines: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        tags = [f"{where}; {repeats}" if repeats else where for where, repeats in self.lines]
        return {"requeued": self.count, "past_deadline": self.expired, "tags": tags}


def retry_dead_letters(
    admin: OutboxAdmin,
    destination: str | None,
    ids: Sequence[int],
    now: float,
    container: Container | None,
    *,
    container_name: str = "the container",
) -> Retried:
    """Requeue dead letters (all, one destination's, or these ids), attempts reset.

    `container` None keeps each message's stored route (`--keep-route`)."""
    routes: dict[str, RouteNow] = {}
    kept: dict[str, str] = {}
    if container is not None:
        routes, kept = routes_now(container)
    done = Retried(expired=admin.count_past_deadline(destination, ids, now))
    done.moved = admin.requeue(destination, ids, now, routes)
    done.count = sum(r["requeued"] for r in done.moved)
    for r in done.moved:
        tag = r["tag"] or "(no tag)"
        if r["to"] != r["from"]:
            where = f"{r['to']} (where {tag} sends now; was {r['from']})"
        elif container is None:
            where = f"{r['to']} (the stored route, --keep-route)"
        elif r["tag"] in routes:
            where = f"{r['to']} (where {tag} sends now)"
        else:
            reason = kept.get(r["tag"], f"no tag named {tag!r} in {container_name}")
            where = f"{r['to']} (the stored route: {reason})"
        repeats = ""
        if r["already_sent_or_pending"]:
            repeats = (
                f"{r['already_sent_or_pending']} not requeued: the same message is pending "
                "there or was delivered within 48 hours"
            )
        done.lines.append((f"{tag}: {r['requeued']} → {where}", repeats))
    return done
