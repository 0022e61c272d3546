"""tagserver: a self-hosted, first-party server-side tagging server.

The public plugin API is re-exported here (with its helpers in `tagserver.toolkit`);
everything else may move. The names are imported on first use, so that a process needing one
module (the outbox writer) starts fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import BadRequest, HitError, PayloadTooLarge, Unauthorized, Unavailable
    from .event import Event, RequestContext
    from .plugins import (
        MAX_EVENTS,
        Client,
        Delivery,
        Example,
        FireContext,
        Hit,
        Message,
        Outcome,
        Outgoing,
        Param,
        RunResult,
        Sender,
        StartupParams,
        Tag,
        TagRejected,
    )
    from .settings import Setting, Settings, SettingsError

_EXPORTS = {
    ".errors": ["BadRequest", "HitError", "PayloadTooLarge", "Unauthorized", "Unavailable"],
    ".event": ["Event", "RequestContext"],
    ".plugins": [
        "MAX_EVENTS", "Client", "Delivery", "Example", "FireContext", "Hit", "Message", "Outcome",
        "Outgoing", "Param", "RunResult", "Sender", "StartupParams", "Tag", "TagRejected",
    ],
    ".settings": ["Setting", "Settings", "SettingsError"],
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = [
    "MAX_EVENTS", "BadRequest", "Client", "Delivery", "Event", "Example", "FireContext", "Hit",
    "HitError", "Message", "Outcome", "Outgoing", "Param", "PayloadTooLarge", "RequestContext",
    "RunResult", "Sender", "Setting", "Settings", "SettingsError", "StartupParams", "Tag",
    "TagRejected", "Unauthorized", "Unavailable",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
