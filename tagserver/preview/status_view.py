"""The status page's figures as people read them: ages, times, small SVG charts.

The charts are drawn here, on the server, as inline SVG made of numbers only (the page's
Content-Security-Policy allows no inline style and no script but our own files); every text
in them goes through `escape`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from markupsafe import Markup, escape

STATUS_NAMES = {
    "fired": "fired", "not_fired": "not fired", "blocked": "blocked", "no_consent": "no consent",
    "rejected": "rejected", "error": "errors", "dry_run": "dry run", "paused": "paused",
}  # fmt: skip
CHART_SLOTS = 60  # minutes drawn, whatever history there is yet
STATE_BADGES = {"healthy": "ok", "failing": "bad", "paused": "warn", "unused": ""}


def age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"
    return f"{seconds // 86400} d {seconds // 3600 % 24:02d} h"


def when(timestamp: float | None) -> str:
    if not timestamp:
        return "–"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def chart(series: list[dict[str, Any]], width: int = 360, height: int = 48) -> Markup:
    """Deliveries (up, green) and failures (down, red) per minute, newest on the right."""
    if not series:
        return Markup('<p class="muted">no data yet</p>')
    top = max(1, max(p["delivered"] for p in series))
    bottom = max(1, max(p["failed"] for p in series))
    half = height / 2
    slots = max(len(series), CHART_SLOTS)
    step = width / slots
    offset = slots - len(series)  # the newest minute is always at the right edge
    bars = []
    for i, p in enumerate(series):
        x = round((offset + i) * step, 1)
        w = max(1.0, round(step - 1, 1))
        up = round(half * p["delivered"] / top, 1)
        down = round(half * p["failed"] / bottom, 1)
        label = escape(f"{when(p['at'])}: {p['delivered']} delivered, {p['failed']} failed")
        if up:
            bars.append(
                f'<rect class="ok" x="{x}" y="{round(half - up, 1)}" width="{w}" height="{up}">'
                f"<title>{label}</title></rect>"
            )
        if down:
            bars.append(
                f'<rect class="bad" x="{x}" y="{half}" width="{w}" height="{down}">'
                f"<title>{label}</title></rect>"
            )
    total_ok = sum(p["delivered"] for p in series)
    total_bad = sum(p["failed"] for p in series)
    return Markup(
        f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="last hour: {total_ok} delivered, {total_bad} failed">'
        f'<line class="axis" x1="0" y1="{half}" x2="{width}" y2="{half}"/>{"".join(bars)}</svg>'
    )


def distribution(buckets: list[dict[str, Any]], width: int = 200, height: int = 32) -> Markup:
    """A match-quality histogram: one bar per bucket (score up to `le`)."""
    if not buckets:
        return Markup("")
    top = max(1, max(b["count"] for b in buckets))
    step = width / len(buckets)
    bars = []
    for i, b in enumerate(buckets):
        h = round(height * b["count"] / top, 1)
        le = "more" if b["le"] is None else f"≤ {b['le']:g}"
        bars.append(
            f'<rect class="q" x="{round(i * step, 1)}" y="{round(height - h, 1)}" '
            f'width="{max(1.0, round(step - 2, 1))}" height="{h}">'
            f"<title>{escape(le)}: {b['count']}</title></rect>"
        )
    return Markup(
        f'<svg class="dist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="distribution">{"".join(bars)}</svg>'
    )


def view(figures: dict[str, Any]) -> dict[str, Any]:
    """The template's context: the figures plus what is drawn from them."""
    for d in figures["destinations"]:
        d["chart_svg"] = chart(d["chart"])
        d["badge"] = STATE_BADGES.get(d["state"], "")
    for q in figures["match_quality"]:
        q["svg"] = distribution(q["distribution"])
    names = {d["destination"]: d["name"] for d in figures["destinations"]}
    for letter in figures["dead_letters"]:
        letter["name"] = names.get(letter["destination"], letter["destination"])
    return {
        "s": figures,
        "age": age,
        "when": when,
        "status_names": STATUS_NAMES,
    }
