"""Generated events for the `meta_capi` tag, and what the tag makes of each, for comparing two
versions of the tag byte for byte (`test_meta_payloads.py`).

Every case is drawn from a seeded generator: user data in every shape the reference pages
name (valid and invalid emails, phones of several regions, names with accents and spaces,
already-hashed values, numbers, lists, several addresses, the Meta pixel's own keys), items,
values, currencies, click ids and cookies, and the tag's params (configured user data, raw
external ids, a default phone country ...). `outcome` gives what a user of the tag sees: the
stored payload of a live tag (or its refusal), its notes and match report; the same event in a
dry run nobody sees; and the mapping alone, with and without hashing. Times are written
relative to the moment the cases were drawn, so the outcome does not depend on the day.

    python tests/meta_cases.py > tests/fixtures/meta/payloads.json   # with the reference tree's
                                                                    # python (its tagserver)
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import sys
import time
from typing import Any

import orjson
from tagserver.tags.meta_capi import MetaCapiTag
from tagserver.tags.meta_capi.mapping import build

from tagserver.event import RequestContext
from tagserver.plugins import FireContext, TagRejected
from tagserver.settings import Settings
from tagserver.toolkit.conversions import Hashes

SEED = 20261206
COUNT = 3000
PIXEL, TOKEN = "1234567890", "EAAcasesTOKEN"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari"
SETTINGS = Settings()
DAY = 86400

EMAILS = ["Jane.Doe@Example.com", " bob@shop.test ", "ANNA+tag@mail.example.org", "not-an-email",
          "two@@at.example", "a@b", "", "   ", "x@y.co", "Zoë@exämple.de"]  # fmt: skip
PHONES = ["+1 (650) 555-1212", "(650) 555-1212", "650.555.1212", "+44 (0)20 7946 0958",
          "0044 20 7946 0958", "020 7946 0958", "030 1234567", "+49 30 1234567",
          "+33 1 42 68 53 00", "01 42 68 53 00", "+55 11 91234-5678", "+81 3-1234-5678",
          "+91 98765 43210", "16505551212", "123", "tel: +1 650 555 1212", "+1 650 555 121",
          "555-0100", "+7 495 123-45-67", "+86 10 1234 5678"]  # fmt: skip
FIRST = ["Mary", "Zoë", "José", " Anna ", "Mary Ann", "O'Brien", "Jean-Luc", "李", "Ólafur",
         "ANNA", "", "  ", "A.", "Renée\u0301", "Dr. Smith"]  # fmt: skip
LAST = ["Smith", "García", "Müller", "Doe-Smith", "van der Berg", "Nguyễn", "O'Neil", ""]
CITIES = ["San Francisco", "New York", "Zürich", "São Paulo", "München", "St. Louis", "  Paris ",
          "Köln 2", "", "東京"]  # fmt: skip
REGIONS = ["California", "CA", "ny", "New York", "Bavaria", "Île-de-France", "tx", "", "Texas"]
POSTCODES = ["94105-1234", "94105", "2134", "941051234", "SW1A 1AA", "75008", "10115", "8001",
             "123", "A", ""]  # fmt: skip
COUNTRIES = ["US", "us", "United States", "USA", "U.S.A.", "Deutschland", "UK", "gb", "France",
             "Narnia", "", "  ", "Türkiye", "br", "JP", "in"]  # fmt: skip
GENDERS = ["f", "m", "Female", "MALE", "w", "x", "", "girl."]
BIRTHS = ["19900704", "1990-07-04", "7/4/1990", "04.07.1990", "4 Jul 1990", "July 4, 1990",
          "19900230", "18990101", "2999-01-01", "yesterday", "19960229", "19970229"]  # fmt: skip
IPS = ["203.0.113.7", " 198.51.100.4 ", "2001:db8::1", "::ffff:203.0.113.9", "999.1.1.1",
       "not an ip", "", "10.0.0.1"]  # fmt: skip
NAMES = ["purchase"] * 8 + ["page_view"] * 4 + ["add_to_cart", "view_item", "generate_lead",
         "sign_up", "search", "Subscribe", "newsletter_optin", "", "x" * 60]  # fmt: skip
FBC = "fb.1.1700000000000.IwAR2abcdef"
FBP = "fb.1.1700000000000.1234567890"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _maybe(rnd: random.Random, value: Any, p: float = 0.7) -> Any:
    return value if rnd.random() < p else None


def _address(rnd: random.Random) -> dict[str, Any]:
    address: dict[str, Any] = {}
    for field, choices in (("first_name", FIRST), ("last_name", LAST), ("city", CITIES),
                           ("region", REGIONS), ("postal_code", POSTCODES),
                           ("country", COUNTRIES)):  # fmt: skip
        if rnd.random() < 0.8:
            address[field] = rnd.choice(choices)
    if rnd.random() < 0.1:
        address["postal_code"] = rnd.choice([2134, 94105, 94105.0])
    if rnd.random() < 0.1:
        address["sha256_first_name"] = sha("mary")
        if rnd.random() < 0.5:
            address.pop("first_name", None)
    if rnd.random() < 0.05:
        address["sha256_last_name"] = sha("smith").upper()
    return address


def _user_data(rnd: random.Random) -> Any:
    if rnd.random() < 0.05:
        return rnd.choice([None, "text", [], {}])
    ud: dict[str, Any] = {}
    roll = rnd.random()
    if roll < 0.6:
        ud["email_address"] = rnd.choice(EMAILS)
    elif roll < 0.7:
        ud["email_address"] = [rnd.choice(EMAILS), rnd.choice(EMAILS), EMAILS[0]]
    elif roll < 0.8:
        ud["sha256_email_address"] = rnd.choice([sha("jane.doe@example.com"), "AB" * 32, "ab" * 16])
    elif roll < 0.85:
        ud["email"] = rnd.choice(EMAILS)
    roll = rnd.random()
    if roll < 0.6:
        ud["phone_number"] = rnd.choice(PHONES)
    elif roll < 0.7:
        ud["phone_number"] = rnd.choice([16505551212, 6505551212.0, 44.5, True])
    elif roll < 0.75:
        ud["phone_number"] = [rnd.choice(PHONES), rnd.choice(PHONES)]
    elif roll < 0.8:
        ud["sha256_phone_number"] = sha("16505551212")
    elif roll < 0.85:
        ud["phone"] = rnd.choice(PHONES)
    if rnd.random() < 0.6:
        ud["gender"] = rnd.choice(GENDERS)
    if rnd.random() < 0.5:
        ud["date_of_birth"] = rnd.choice(BIRTHS)
    if rnd.random() < 0.1:
        ud["external_id"] = rnd.choice(["ext-1", " ext-2 ", 77, ""])
    roll = rnd.random()
    if roll < 0.65:
        ud["address"] = _address(rnd)
    elif roll < 0.8:
        ud["address"] = [_address(rnd) for _ in range(rnd.randint(0, 3))]
    elif roll < 0.83:
        ud["address"] = rnd.choice(["Main St 1", [None, "x"], 42])
    return ud


def _items(rnd: random.Random) -> Any:
    if rnd.random() < 0.05:
        return rnd.choice(["SKU-1", {}, [None, 3]])
    items = []
    for _ in range(rnd.randint(0, 4)):
        item: dict[str, Any] = {}
        roll = rnd.random()
        if roll < 0.7:
            item["item_id"] = f"SKU-{rnd.randint(1, 50)}"
        elif roll < 0.8:
            item["item_id"] = rnd.choice([123, "", None, 4.5, True])
        if rnd.random() < 0.5:
            item["item_name"] = rnd.choice(["Shirt", "Gift card", "", 7, {"x": 1}])
        if rnd.random() < 0.7:
            item["quantity"] = rnd.choice([1, 2, 3, "2", "1.5", 0, -1, 2.0, "x", None, math.inf])
        if rnd.random() < 0.8:
            item["price"] = rnd.choice([19.99, 5.5, 12, "20", "abc", None, math.nan, -3.0])
        if rnd.random() < 0.1:
            item["delivery_category"] = rnd.choice(["home_delivery", "", 3])
        items.append(item)
    return items


def _event(rnd: random.Random, now: int, i: int) -> dict[str, Any]:
    event: dict[str, Any] = {"event_name": rnd.choice(NAMES)}
    if rnd.random() < 0.9:
        event["event_id"] = rnd.choice([f"ev-{i}", i, f"order-{i % 17}"])
    roll = rnd.random()
    if roll < 0.75:
        event["event_time"] = now - rnd.randint(1, 3000)
    elif roll < 0.8:
        event["event_time"] = now - 10 * DAY - 4000  # too old for a website
    elif roll < 0.83:
        event["event_time"] = now - 30 * DAY - 4000  # a physical store's may be this old
    elif roll < 0.86:
        event["event_time"] = now + 7200  # from the future
    elif roll < 0.9:
        event["event_time"] = rnd.choice(["yesterday", math.nan, None, now - 5.5])
    if rnd.random() < 0.3:
        event["action_source"] = rnd.choice(["website", "app", "physical_store", "bogus", ""])
    if rnd.random() < 0.93:
        url = f"https://www.shop.test/p/{i}"
        if rnd.random() < 0.15:
            url += rnd.choice(["?fbclid=IwAR2abcdef", "?gclid=x&fbclid=IwAR9zz", "?fbclid="])
        event["page_location"] = url
    if rnd.random() < 0.3:
        event["page_referrer"] = rnd.choice(["https://www.google.com/", "", 5])
    if rnd.random() < 0.05:
        event["opt_out"] = rnd.choice([True, False, "yes"])
    if rnd.random() < 0.85:
        event["ip_override"] = rnd.choice(IPS) if rnd.random() < 0.8 else rnd.choice([42, None])
    if rnd.random() < 0.95:
        event["user_agent"] = UA if rnd.random() < 0.8 else rnd.choice([" " + UA, "", "  ", 7])
    if rnd.random() < 0.5:
        event["user_id"] = rnd.choice(["cust-42", " cust-7 ", 42, 42.0, "", "A" * 64, None])
    if rnd.random() < 0.9:
        event["user_data"] = _user_data(rnd)
    for key, choices in (("x-fb-ud-em", EMAILS), ("x-fb-ud-ph", PHONES), ("x-fb-ud-fn", FIRST),
                         ("x-fb-ud-ct", CITIES), ("x-fb-ud-zp", POSTCODES),
                         ("x-fb-ud-country", COUNTRIES), ("x-fb-ud-external_id", ["px-1"])):  # fmt: skip
        if rnd.random() < 0.04:
            event[key] = rnd.choice(choices)
    if rnd.random() < 0.05:
        event["x-fb-ck-fbc"] = rnd.choice([FBC, "fb.1.bad"])
    if rnd.random() < 0.05:
        event["x-fb-ck-fbp"] = rnd.choice([FBP, "nope"])
    if rnd.random() < 0.7:
        event["value"] = rnd.choice([59.9, 10, "12.50", "12", "abc", "", None, math.inf, 1e3])
    if rnd.random() < 0.7:
        event["currency"] = rnd.choice(["usd", "EUR", " eur ", "XYZ", "", 123, "Eur"])
    if rnd.random() < 0.6:
        event["items"] = _items(rnd)
    if rnd.random() < 0.5:
        event["transaction_id"] = rnd.choice(["T-1", 1001, "", 4.5, None])
    if rnd.random() < 0.1:
        event["search_term"] = rnd.choice(["red shoes", "", 3])
    if rnd.random() < 0.1:
        event["custom_data"] = rnd.choice(
            [{"status": "ok", "empty": ""}, {"value": "9.99", "currency": "gbp"}, {}, "x"]
        )
    if rnd.random() < 0.05:
        event["x-fb-cd-content_name"] = rnd.choice(["Shirt", ""])
    if rnd.random() < 0.05:
        event["data_processing_options"] = rnd.choice([["LDU"], "LDU", [], " ", ["ldu", 1], 5])
        if rnd.random() < 0.5:
            event["data_processing_options_country"] = rnd.choice([1, "1", 0, "x", True, -2])
            event["data_processing_options_state"] = rnd.choice([1000, "1000", None])
    return event


def _params(rnd: random.Random) -> dict[str, Any]:
    params: dict[str, Any] = {"api_version": "v25.0", "action_source": "website",
                              "external_id_hashing": "sha256"}  # fmt: skip
    if rnd.random() < 0.1:
        params["external_id_hashing"] = "raw"
    if rnd.random() < 0.15:
        params["default_phone_country"] = rnd.choice(["de", "GB", "Germany", "fr", "", "zz"])
    if rnd.random() < 0.1:
        params["action_source"] = rnd.choice(["app", "physical_store"])
    if rnd.random() < 0.1:
        params["event_name_map"] = {"purchase": "CustomPurchase", "page_view": " ", "sign_up": 3}
    if rnd.random() < 0.08:
        params["custom_data"] = {"brand": "Acme", "status": "override", "none": None, "value": "5"}
    if rnd.random() < 0.05:
        params["data_processing_options"] = rnd.choice([["LDU"], []])
        params["data_processing_options_country"] = 1
    if rnd.random() < 0.12:
        configured: dict[str, Any] = {}
        for key, choices in (("em", EMAILS), ("ph", PHONES), ("fn", FIRST), ("st", REGIONS),
                             ("zp", POSTCODES), ("country", COUNTRIES),
                             ("client_ip_address", IPS), ("client_user_agent", [UA, ""]),
                             ("fbc", [FBC, "bad"]), ("fbp", [FBP, "bad"]),
                             ("external_id", ["conf-1", 5]), ("unknown", ["x"])):  # fmt: skip
            if rnd.random() < 0.3:
                configured[key] = rnd.choice(choices)
        if rnd.random() < 0.2:
            configured["em"] = [rnd.choice(EMAILS), None, ""]
        params["user_data"] = configured
    if rnd.random() < 0.03:
        params["user_data"] = rnd.choice(["x", None, {}])
    return params


def _request(rnd: random.Random, now: int) -> RequestContext:
    cookies: dict[str, str] = {}
    if rnd.random() < 0.15:
        cookies["_fbc"] = rnd.choice([FBC, "fb.1.1700000000000.IwAR9zz", "garbage"])
    if rnd.random() < 0.2:
        cookies["_fbp"] = rnd.choice([FBP, "garbage"])
    return RequestContext(
        method="POST", url="https://sgtm.shop.test/api/events", path="/api/events", query={},
        headers={"user-agent": UA}, cookies=cookies, ip=rnd.choice(["198.51.100.4", "203.0.113.7"]),
        is_https=True, host="sgtm.shop.test", received_at=now + 0.25, settings=SETTINGS,
    )  # fmt: skip


def cases(now: int, count: int = COUNT, seed: int = SEED) -> list[tuple[Any, ...]]:
    """(event, params, request) for each case, the same every time for the same seed."""
    rnd = random.Random(seed)
    return [(_event(rnd, now, i), _params(rnd), _request(rnd, now)) for i in range(count)]


def outcome(event: dict[str, Any], params: dict[str, Any], request: RequestContext) -> Any:
    """What the tag makes of one case, as plain data (bytes where it stores bytes)."""
    return {
        "live": _fire(event, {**params, "pixel_id": PIXEL, "access_token": TOKEN}, request, True),
        "dry": _fire(event, params, request, False),
        "build": _built(build(_copy(event), params, request)),
        "build_unhashed": _built(build(_copy(event), params, request, Hashes({}, digest=False))),
    }


def _copy(event: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(event))  # the tag must not depend on the caller's objects


def _built(built: Any) -> Any:
    return [orjson.dumps(built.event).decode(), built.dropped]


def _fire(
    event: dict[str, Any], params: dict[str, Any], request: RequestContext, seen: bool
) -> Any:
    tag = MetaCapiTag("meta", {}, SETTINGS)
    ctx = FireContext(request=request, settings=SETTINGS, tag_name="meta", shows_dry_runs=seen)
    try:
        sent = tag.fire(_copy(event), params, ctx)
    except TagRejected as refusal:
        code = getattr(refusal, "code", "")
        # an age in seconds moves while the cases run: only the code for those
        reason = "" if code == "event_in_future" else str(refusal)
        result: Any = ["refused", code, reason]
    else:
        result = [[orjson.dumps(o.payload).decode(), o.dedup_id, o.destination, o.deadline]
                  for o in sent]  # fmt: skip
    match = ctx.match
    return [result, ctx.notes, ctx.dry_runs, repr(match)]


def digest(value: Any, now: int) -> str:
    """A short fingerprint of an outcome, its times relative to `now`."""
    text = _relative(json.dumps(value, sort_keys=True, default=repr), now)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _relative(text: str, now: int) -> str:
    """Every time near `now` (seconds, or milliseconds in fbc) written as an offset."""
    out, i = [], 0
    digits = "0123456789"
    while i < len(text):
        if text[i] in digits and (i == 0 or text[i - 1] not in digits):
            j = i
            while j < len(text) and text[j] in digits:
                j += 1
            number = int(text[i:j])
            if abs(number - now) < 100 * DAY:
                out.append(f"now{number - now:+d}")
            elif abs(number - now * 1000) < 100 * DAY * 1000:
                out.append(f"nowms{number - now * 1000:+d}")
            else:
                out.append(text[i:j])
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def main() -> None:
    now = int(time.time())
    digests = [digest(outcome(*case), now) for case in cases(now)]
    json.dump({"seed": SEED, "count": COUNT, "digests": digests}, sys.stdout, indent=0)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
