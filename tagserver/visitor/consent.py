"""A visitor's consent as hits carry it: `{"ad_storage": "denied", ...}`."""

from __future__ import annotations

from typing import Any


def consent_denied(consent: Any, ctype: str) -> bool:
    """True only for an explicit denial ("denied" or false); absent counts as granted."""
    if not isinstance(consent, dict):
        return False
    value = consent.get(ctype)
    if isinstance(value, str):
        return value.strip().lower() == "denied"
    return value is False
