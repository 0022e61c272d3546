"""Helpers for building events the way the built-in clients do."""

from __future__ import annotations

import re

from ..container.refs import text as value_text
from ..engine.event_checks import EventError, check_event, parse_event_time
from ..event import CONSENT_TYPES, add_page_parts, get_path, page_parts

_PREVIEW_PARAM = re.compile(r"([?&])tagserver_preview=[^&#]*(&?)")


def strip_preview(url: str) -> str:
    """The URL without its `tagserver_preview` token: it must not reach logs or vendors."""
    url = _PREVIEW_PARAM.sub(lambda m: m.group(1) if m.group(2) else "", url)
    return url[:-1] if url.endswith("?") else url


__all__ = [
    "CONSENT_TYPES", "EventError", "add_page_parts", "check_event", "get_path", "page_parts",
    "parse_event_time", "strip_preview", "value_text",
]  # fmt: skip
