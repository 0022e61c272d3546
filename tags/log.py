"""Tag `log`: write the event as one JSON log line — GTM's "log to console".

Secrets are redacted and personal data (`user_data`) is masked: log lines end up on disk,
and raw personal data must never get there.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from tagserver import Event, FireContext, Outgoing, Param, Tag
from tagserver.toolkit.redact import Redactor

log = logging.getLogger("tagserver.tag.log")

PERSONAL = "[personal data]"


def mask_personal_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: mask_personal_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_personal_data(v) for v in value]
    return PERSONAL if value not in (None, "") else value


class LogTag(Tag):
    type_name = "log"
    description = "Write the event (secrets redacted, personal data masked) as one JSON log line."
    params = (
        Param(
            "message", "string", default="event", description="Text put in the line's `message`."
        ),
        Param("level", "string", default="info", choices=("debug", "info", "warning", "error")),
        Param("include_event", "boolean", default=True, description="Include the whole event."),
        Param("fields", "object", description="Extra fields (values may use {{variables}})."),
    )

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        line: dict[str, Any] = {
            "tag": self.name,
            "message": params.get("message") or "event",
            "event_name": event.get("event_name"),
            "event_id": event.get("event_id"),
            "client": ctx.request.client_name,
        }
        if params.get("fields"):
            line["fields"] = params["fields"]
        if params.get("include_event", True):
            shown = dict(event)
            if "user_data" in shown:
                shown["user_data"] = mask_personal_data(shown["user_data"])
            line["event"] = shown
        level = logging.getLevelName(str(params.get("level") or "info").upper())
        text = orjson.dumps(line, default=str).decode()
        # Redact by walking the line only when it may hold a secret (rare): a few substring
        # tests on the serialized line instead of a regex over each of the event's strings.
        if not isinstance(ctx.redact, Redactor) or ctx.redact.may_redact_json(text):
            text = orjson.dumps(ctx.redact(line), default=str).decode()
        log.log(level if isinstance(level, int) else logging.INFO, "%s", text)
        return []
