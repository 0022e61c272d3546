"""Where dead letters go when they are retried: the route each tag resolves to now.

A message is stored with its destination's route (URL, token …) as it was when the event
fired. A dead letter is usually retried because that route was wrong (an expired token), so
`tagserver outbox retry` asks each tag of the current container, with the current environment,
where its messages go now (`Tag.route_for`), and moves the tag's dead letters there. A tag
that cannot say without an event, or that is gone, keeps the stored route.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..container.model import Container
from ..container.variables import Scope
from ..event import RequestContext


@dataclass(frozen=True)
class Route:
    """Where one tag's messages go now."""

    destination: str
    tag_type: str
    route: dict[str, Any]


def current_routes(container: Container) -> dict[str, Route | str]:
    """Tag name → its route now, or why the stored one is kept.

    Params are resolved without an event: variables read from the environment or constants
    resolve as they would for any event; a route that needs an event's data is not guessed.
    """
    request = RequestContext(
        method="POST", url="", path="", query={}, headers={}, cookies={}, ip="",
        is_https=True, host="",
    )  # fmt: skip
    out: dict[str, Route | str] = {}
    for tag in container.tags:
        try:
            params = tag.params(Scope({}, request, container.variables, ""))
            found = tag.instance.route_for(params)
        except Exception as exc:
            out[tag.name] = f"its params need an event ({type(exc).__name__})"
            continue
        if found is None:
            out[tag.name] = "the tag cannot say where its messages go without an event, or sends nothing now"  # fmt: skip
        else:
            out[tag.name] = Route(found[0], tag.type, found[1])
    return out
