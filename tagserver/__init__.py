"""tagserver: a self-hosted, first-party server-side tagging server.

The public plugin API is re-exported here; everything else may move. The names are imported
on first use, so that a process needing one module (the outbox writer) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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
        StartupParams,
        Tag,
        TagRejected,
    )

_EXPORTS = {
    ".errors": ["BadRequest", "HitError", "PayloadTooLarge", "Unauthorized", "Unavailable"],
    ".event": ["Event", "RequestContext"],
    ".hit": ["Hit"],
    ".plugins": [
        "Client", "Delivery", "FireContext", "Message", "Outgoing", "Param", "Sender",
        "StartupParams", "Tag", "TagRejected",
    ],
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "BadRequest", "Client", "Delivery", "Event", "FireContext", "Hit", "HitError", "Message",
    "Outgoing", "Param", "PayloadTooLarge", "RequestContext", "Sender", "StartupParams", "Tag",
    "TagRejected", "Unauthorized", "Unavailable",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
