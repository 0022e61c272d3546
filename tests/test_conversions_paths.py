"""The TikTok, Pinterest and Snapchat tags decide the same on their cheap paths as on the full
one, on a few thousand generated events run through the engine (`Runtime.run_event`):

- a dry run nobody sees (not hashed, no body) against the same dry run previewed: status,
  reason (the refusal's) and match report alike;
- a previewed dry run's body against the payload the live tag sends for the same event;
- the three tags sharing one event's memo (normalized, hashed user data, items) against each
  tag alone; and a dry run nobody sees that fills the memo first (not hashed) against the live
  tags after it, which must still hash.
"""

from __future__ import annotations

import hashlib
import random
import time
from typing import Any

from engine import compile_container

from tagserver.engine.runtime import EventResult, Runtime
from tagserver.event import RequestContext
from tagserver.settings import Settings
from tagserver.toolkit.events import EventError, check_event

TAGS = ("tiktok_events", "pinterest_capi", "snapchat_capi")
LIVE = {
    "tiktok_events": {"pixel_code": "C4TIKTOKPIXEL01", "access_token": "tiktok-token-0123"},
    "pinterest_capi": {"ad_account_id": "549755885175", "access_token": "pinterest-token-0123"},
    "snapchat_capi": {
        "pixel_id": "1ec32188-754e-4be2-8e55-c949a984a39f",
        "access_token": "snap-token-0123",
    },
}
# per-event params through templates: phone countries, TikTok's own user_data, custom values
PARAMS: dict[str, dict[str, Any]] = {
    "tiktok_events": {
        "default_phone_country": "{{event.dpc}}",
        "properties": {"coupon": "{{event.coupon}}"},
        "user_data": {"external_id": "{{event.crm_id}}"},
    },
    "pinterest_capi": {
        "default_phone_country": "{{event.dpc}}",
        "custom_data": {"coupon": "{{event.coupon}}"},
    },
    "snapchat_capi": {  # no user_data param: it reads the event's alike with Pinterest
        "default_phone_country": "{{event.snap_dpc}}",
        "custom_data": {"coupon": "{{event.coupon}}"},
    },
}
PEER = "198.51.100.4"  # a trusted proxy: its geo headers fill a missing place
SETTINGS = Settings(trusted_proxies=PEER)
UA = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 Safari/604.1"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def runtime(tags: tuple[str, ...], *, live: tuple[str, ...] = (), shown: bool) -> Runtime:
    data = {
        "name": "paths",
        "clients": [{"name": "api", "type": "events_api"}],
        "triggers": [{"name": "all", "event": "*"}],
        "tags": [
            {"name": t, "type": t, "fire_on": ["all"],
             "params": {**PARAMS[t], **(LIVE[t] if t in live else {})}}
            for t in tags
        ],
        # one tag's event differs from the others': what they share must not leak to it
        "transformations": [
            {"name": "pinterest_email", "type": "augment",
             "set": {"user_data.email_address": "{{event.other_email}}"},
             "conditions": [{"variable": "event.other_email", "operator": "contains",
                             "value": "@"}],
             "tags": ["pinterest_capi"]},
            {"name": "snapchat_items", "type": "exclude", "keys": ["items.1"],
             "conditions": [{"variable": "event.coupon", "operator": "equals",
                             "value": "SPRING"}],
             "tags": ["snapchat_capi"]},
        ],
    }  # fmt: skip
    data["transformations"] = [t for t in data["transformations"] if set(t["tags"]) & set(tags)]
    return Runtime(compile_container(data, SETTINGS), SETTINGS, show_dry_runs=shown)


# -- generated events ---------------------------------------------------------------------------

EMAILS = [
    " Jane.Doe@Example.COM ", "jane.doe@example.com", "not-an-email", "a@b", "Élodie@exemple.fr",
    sha("jane.doe@example.com"), sha("x@y.z").upper(), "", "   ", 42,
    ["jane@shop.test", "JANE@shop.test", "bad"],
]  # fmt: skip
PHONES = [
    "+44 20 7946 0958", "020 7946 0958", "+1 (650) 555-1212", "(650) 555-1212", "6505551212",
    "+86 138 0000 0000", "0044 20 7946 0958", "+44 (0)20 7946 0958", "12", "phone", 16505551212,
    4930123456.0, "+49 30 1234567", "030 1234567", sha("+16505551212"), ["+1 650 555 1212", "x"],
]  # fmt: skip
FIRST = ["Jane", " Mary Ann ", "Valéry", "O'Brien", "José-María", "李", "", sha("jane"), "J.", 7]
LAST = ["Doe", "van der Berg", "Müller", "ÅSTRÖM", "-", "Smith Jr.", sha("doe")]
CITIES = ["London", "San Francisco", "Zürich", "St. Louis", "München", "", "42", "New  York"]
REGIONS = ["California", "CA", "Bavaria", "Île-de-France", "ny", "", "Texas "]
ZIPS = ["SW1A 1AA", "94025-1234", "940251234", 2134, "02134", "8001", "75001", "", "A"]
COUNTRIES = ["GB", "US", "United States", "uk", "Deutschland", "fr", "zz", "", None, "U.S.A."]
GENDERS = ["f", "Female", "M", "n", "non-binary", "x", ""]
BIRTHS = ["1997-02-16", "19970216", "2/16/1997", "16.02.1997", "31/02/1997", "soon", ""]
NAMES = [
    "purchase", "page_view", "add_to_cart", "view_item", "sign_up", "generate_lead", "search",
    "Purchase", "Lead", "my custom event", "custom_event", "x" * 60, "login", "begin_checkout",
]  # fmt: skip
PAGES = [
    "https://www.shop.test/done?ttclid=TT.click-1&epik=dj0yJnU9&ScCid=sc-42",
    "https://www.shop.test/p/1", "https://gtm-msr.appspot.com/render?id=GTM-1",
    "https://GTM-MSR.appspot.com/x", "https://gtm-msr.app\tspot.com/x", "https://[::1/x",
    "http://shop.test:8080/a?sccid=lower", "", None,
]  # fmt: skip


def maybe(rng: random.Random, choices: list[Any], absent: float = 0.3) -> Any:
    return None if rng.random() < absent else rng.choice(choices)


def address(rng: random.Random) -> dict[str, Any]:
    fields = {"first_name": FIRST, "last_name": LAST, "city": CITIES, "region": REGIONS,
              "postal_code": ZIPS, "country": COUNTRIES}  # fmt: skip
    out = {k: v for k, v in ((k, maybe(rng, c)) for k, c in fields.items()) if v is not None}
    if rng.random() < 0.1:
        out["sha256_first_name"] = sha("jane")
    return out


def generated(rng: random.Random, now: float) -> dict[str, Any]:
    event: dict[str, Any] = {"event_name": rng.choice(NAMES)}
    if rng.random() < 0.85:
        event["event_id"] = f"ev-{rng.randrange(10**9)}"
    when = rng.choice([now - 30, now - 3 * 86400, now - 8 * 86400, now + 3600, now + 30, None])
    if when is not None:
        event["event_time"] = int(when)
    for key, choices in (
        ("page_location", PAGES),
        ("page_referrer", ["https://www.shop.test/cart?ttclid=REF-1", "https://else.test/"]),
        ("value", [42.5, 0, "19.90", "abc", "1e3", 10**6, -5]),
        ("currency", ["eur", "EUR", " usd ", "EURO", ""]),
        ("transaction_id", ["T-1", 1001, ""]),
        ("search_term", ["shoes", ""]),
        ("user_id", ["customer-7", "Customer-7", " c-8 "]),
        ("ip_override", ["203.0.113.7", "2001:db8::1", PEER]),
        ("user_agent", [UA]),
        ("language", ["en-GB", "de", "x", " fr "]),
        ("x-tt-ck-ttp", ["ttp.cookie-value-1", "bad value!"]),
        ("x-sc-ck-scid", ["scid-cookie-1234", "no"]),
        ("limited_data_use", [True, False]),
        ("opt_out", [True, False]),
        ("dpc", ["US", "GB", "de", "", "zz"]),
        ("snap_dpc", ["US", "GB", "cn"]),
        ("other_email", ["pin@shop.test", "Other@Shop.test"]),
        ("coupon", ["SPRING", ""]),
        ("crm_id", ["crm-1", ""]),
    ):
        value = maybe(rng, choices, absent=0.35)
        if value is not None:
            event[key] = value
    if rng.random() < 0.6:
        event["items"] = [
            {k: v for k, v in (("item_id", maybe(rng, ["SKU-1", "SKU-2", 3, ""])),
                               ("item_name", maybe(rng, ["Shoe", " Sock "])),
                               ("item_brand", maybe(rng, ["Acme"])),
                               ("item_category", maybe(rng, ["Feet"])),
                               ("price", maybe(rng, [21.25, "9.99", "free", 0])),
                               ("quantity", maybe(rng, [1, 2, "3", 0, -1])))
             if v is not None}
            for _ in range(rng.randrange(1, 4))
        ]  # fmt: skip
    user: dict[str, Any] = {}
    for key, choices in (("email_address", EMAILS), ("phone_number", PHONES),
                         ("gender", GENDERS), ("date_of_birth", BIRTHS)):  # fmt: skip
        value = maybe(rng, choices, absent=0.3)
        if value is not None:
            user[key] = value
    if rng.random() < 0.1:
        user["sha256_email_address"] = sha("jane.doe@example.com")
    shape = rng.random()
    if shape < 0.6:
        user["address"] = address(rng)
    elif shape < 0.75:
        user["address"] = [address(rng) for _ in range(rng.randrange(1, 3))]
    if user or rng.random() < 0.5:
        event["user_data"] = user
    if rng.random() < 0.1:
        event["consent"] = {"ad_user_data": rng.choice(["denied", "granted"])}
    return event


def request() -> RequestContext:
    """One hit's request: every runtime gets the same (its time, its derived event id)."""
    return RequestContext.from_scope(
        method="POST", url="https://sgtm.shop.test/api/events", path="/api/events", query={},
        headers={"host": "sgtm.shop.test", "user-agent": UA, "cf-ipcountry": "US",
                 "cf-region-code": "CA", "cf-ipcity": "San Francisco"},
        cookies={"_ttp": "ttp-from-cookie-1", "_scid": "scid-from-cookie"}, peer_ip=PEER,
        scheme="https", settings=SETTINGS,
    )  # fmt: skip


# -- comparing ----------------------------------------------------------------------------------


def decided(result: EventResult) -> dict[str, tuple[str, str, Any]]:
    """Per tag: status (a dry run and a live send alike are "sent"), reason, match report."""
    out = {}
    for r in result.tags:
        status = "sent" if r.status in ("fired", "dry_run") else r.status
        reason = "" if status == "sent" else r.reason
        match = (r.match.as_dict(), r.match.event_name) if r.match else None
        out[r.tag] = (status, reason, match)
    return out


def payloads(result: EventResult) -> dict[str, Any]:
    """Per tag: what it sends (live) or would send (a previewed dry run's body)."""
    out: dict[str, Any] = {}
    for r in result.tags:
        if r.outgoing:
            out[r.tag] = r.outgoing[0].payload
        elif r.dry_run and r.dry_run[0]["payload"] is not None:
            out[r.tag] = r.dry_run[0]["payload"]["data"][0]
    return out


def test_cheap_paths_decide_and_send_what_the_full_path_does() -> None:
    now = time.time()
    rng = random.Random(20261206)
    unseen = runtime(TAGS, shown=False)
    shown = runtime(TAGS, shown=True)
    live = runtime(TAGS, live=TAGS, shown=False)
    backwards = runtime(TAGS[::-1], shown=False)
    alone = {t: runtime((t,), shown=True) for t in TAGS}
    # TikTok's dry run (nobody sees it) fills the memo first; the live ones must still hash
    mixed = runtime(TAGS, live=TAGS[1:], shown=False)
    compared = sent = refused = gained = 0
    for _ in range(2500):
        req = request()
        try:
            event = check_event(generated(rng, now), req.received_at)
        except EventError:
            continue
        cheap = unseen.run_event(event, req, "api")
        full = shown.run_event(event, req, "api")
        assert decided(cheap) == decided(full), event
        assert all(r.dry_run is None or r.dry_run[0]["payload"] is None for r in cheap.tags)
        assert decided(backwards.run_event(event, req, "api")) == decided(full), event

        sending = live.run_event(event, req, "api")
        assert payloads(sending) == payloads(full), event
        for r in sending.tags:  # a report of this event, not of an earlier one
            if r.outgoing:
                payload = r.outgoing[0].payload
                assert r.match.event_name == payload.get("event_name", payload.get("event"))
        for r_live, r_dry in zip(sending.tags, full.tags, strict=True):
            assert (r_live.status == "rejected") == (r_dry.status == "rejected"), event
            if r_live.status == "rejected":
                assert r_live.reason == r_dry.reason, event

        together = payloads(full)
        for tag in TAGS:
            single = alone[tag].run_event(event, req, "api")
            assert decided(single)[tag] == decided(full)[tag], (tag, event)
            assert payloads(single).get(tag) == together.get(tag), (tag, event)

        both = mixed.run_event(event, req, "api")
        assert decided(both) == decided(full), event
        for tag in TAGS[1:]:
            assert payloads(both).get(tag) == payloads(sending).get(tag), (tag, event)

        compared += 1
        sent += len(payloads(sending))
        refused += sum(r.status == "rejected" for r in sending.tags)
        gained += sum(bool(r.match and r.match.after != r.match.before) for r in full.tags)
    # the generator reaches every branch that matters: sent, refused, enriched events
    assert compared > 2000
    assert sent > 1500 and refused > 1500 and gained > 100, (sent, refused, gained)
