"""Remove secrets (a vendor token ...) from text a sender reports: errors, logs, responses."""

from __future__ import annotations

from ..redact import REDACTED, Redactor

__all__ = ["REDACTED", "Redactor"]
