"""Tag `log`: write the event as one JSON log line — GTM's "log to console".

Secrets are redacted and personal data (`user_data`) is masked: log lines end up on disk,
and raw personal data must never get there. The visitor's IP address is personal data too:
by default its host part is zeroed (203.0.113.77 → 203.0.113.0, the last 80 bits of an IPv6
address), wherever the line shows it: the event's `ip_override` and any field whose value is
that address. Only those known places are looked at: no scan of every string per event.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import orjson

from tagserver import Event, FireContext, Outgoing, Param, StartupParams, Tag
from tagserver.toolkit.redact import Redactor

log = logging.getLogger("tagserver.tag.log")

PERSONAL = "[personal data]"


def mask_personal_data(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: mask_personal_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [mask_personal_data(v) for v in value]
    return PERSONAL if value not in (None, "") else value


IPV6_HOST_BITS = 80
IPV6_NETWORK_MASK = ((1 << 128) - 1) ^ ((1 << IPV6_HOST_BITS) - 1)
IP_MODES = ("masked", "full", "omit")


def mask_ip(ip: str) -> str:
    """The address with its host part zeroed: the last octet of IPv4, the last 80 bits of IPv6
    (an IPv4-mapped IPv6 address as IPv4). Anything else is not shown at all."""
    head, dot, last = ip.rpartition(".")
    if dot and ":" not in ip and last.isdigit() and head.count(".") == 2:
        return f"{head}.0"  # the common case, without parsing
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return PERSONAL
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return mask_ip(str(address.ipv4_mapped))
        return str(ipaddress.IPv6Address(int(address) & IPV6_NETWORK_MASK))
    return str(ipaddress.IPv4Address(int(address) & 0xFFFFFF00))


class LogTag(Tag):
    description = "Write the event (secrets redacted, personal data masked) as one JSON log line."
    params = (
        Param(
            "message", "string", default="event", description="Text put in the line's `message`."
        ),
        Param("level", "string", default="info", choices=("debug", "info", "warning", "error")),
        Param("include_event", "boolean", default=True, description="Include the whole event."),
        Param("fields", "object", description="Extra fields (values may use {{variables}})."),
        Param(
            "ip_addresses",
            "string",
            default="masked",
            choices=IP_MODES,
            description="The visitor's IP address in the line: `masked` (host part zeroed: "
            "last octet of IPv4, last 80 bits of IPv6), `full`, or `omit`.",
        ),
    )

    def describe(self, params: StartupParams) -> str:
        return f"writes each event it fires on to the log (level {params.get('level', 'info')})"

    def fire(self, event: Event, params: dict[str, Any], ctx: FireContext) -> list[Outgoing]:
        level = logging.getLevelName(str(params.get("level") or "info").upper())
        level = level if isinstance(level, int) else logging.INFO
        if not log.isEnabledFor(level):  # the line would not be written: nothing to build
            return []
        line: dict[str, Any] = {
            "tag": self.name,
            "message": params.get("message") or "event",
            "event_name": event.get("event_name"),
            "event_id": event.get("event_id"),
            "client": ctx.request.client_name,
        }
        ip_mode = params.get("ip_addresses") or "masked"
        ip = event.get("ip_override")
        hide_ip = ip_mode != "full" and isinstance(ip, str) and ip != ""
        shown_ip = mask_ip(ip) if hide_ip and ip_mode == "masked" and isinstance(ip, str) else None
        fields = params.get("fields")
        if fields:
            if hide_ip and isinstance(fields, dict) and ip in fields.values():
                fields = {k: _shown(v, ip, shown_ip) for k, v in fields.items()}
            line["fields"] = fields
        if params.get("include_event", True):
            shown = dict(event)
            if "user_data" in shown:
                shown["user_data"] = mask_personal_data(shown["user_data"])
            if hide_ip:
                if shown_ip is None:
                    del shown["ip_override"]
                else:
                    shown["ip_override"] = shown_ip
            line["event"] = shown
        text = orjson.dumps(line, default=str).decode()
        # Redact by walking the line only when it may hold a secret (rare): a few substring
        # tests on the serialized line instead of a regex over each of the event's strings.
        if not isinstance(ctx.redact, Redactor) or ctx.redact.may_redact_json(text):
            text = orjson.dumps(ctx.redact(line), default=str).decode()
        # queued: a thread writes it (see tagserver.logs), the event loop does not wait
        log.log(level, "%s", text)
        return []


def _shown(value: Any, ip: Any, shown_ip: str | None) -> Any:
    """A field's value as the line shows it: the visitor's IP masked (or left out)."""
    if value == ip:
        return shown_ip
    return value
