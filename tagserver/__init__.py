"""tagserver: a self-hosted, first-party server-side tagging server.

The public plugin API is re-exported here; everything else may move.
"""

from .errors import BadRequest, HitError, PayloadTooLarge, Unauthorized, Unavailable
from .event import Event, RequestContext
from .hit import Hit
from .plugins import (
    Client,
    Delivery,
    FireContext,
    Message,
    Outgoing,
    Param,
    Sender,
    Tag,
    TagRejected,
)

__all__ = [
    "BadRequest", "Client", "Delivery", "Event", "FireContext", "Hit", "HitError", "Message",
    "Outgoing", "Param", "PayloadTooLarge", "RequestContext", "Sender", "Tag", "TagRejected",
    "Unauthorized", "Unavailable",
]  # fmt: skip
