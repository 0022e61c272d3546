"""Counting on the hit path without prometheus-client's per-call locks (see
`tagserver.metrics`). A plugin defines its own prometheus-client metrics, named
`tagserver_<plugin>_...`, and counts them with these."""

from __future__ import annotations

from ..metrics import count, labelled, observe

__all__ = ["count", "labelled", "observe"]
