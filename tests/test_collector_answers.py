"""Generated collector hits, answered as the documented cookie rules say (docs/collector.md).

Each example is one visitor state (cookies valid, malformed, expired, forged, sealed with a
previous key), one consent, one page URL (with or without a click id), one `user` call or
logout, over HTTP or HTTPS. The expectations are written from the docs, not from the code:
the Set-Cookie headers the browser gets (names, values, attributes, lifetimes; the identity
cookie opened here with its documented key derivation) and the visitor ids every event of the
hit carries when it reaches the container's tag.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import struct
import time
from collections.abc import Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from starlette.testclient import TestClient
from support import app_client, minimal_container

SECRET, OLD_SECRET = "answers-secret-key-answers-secret-key", "answers-previous-key-0123456789"
DAY = 86400
FBP, FBC, CID, IDENT = "_fbp", "_fbc", "tagserver_cid", "tagserver_ident"
EMAILS = {"jane": "jane.doe@example.com", "john": "john@example.org"}
PHONE, PHONE_DIGITS = "+44 20 7946 0958", "442079460958"
# the documented order of the identity cookie's keys (docs/match.md)
KEYS = ("em", "ph", "fn", "ln", "ge", "db", "ct", "st", "zp", "country", "external_id")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- the identity cookie, sealed and opened as documented (AES-256-GCM, HKDF-SHA256 key) ------


def cipher(secret: str) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"tagserver.identity_cookie.v1")  # fmt: skip
    return AESGCM(hkdf.derive(secret.encode()))


AAD = b"tagserver identity cookie v1"


def seal(secret: str, keys: dict[str, str], issued_at: int) -> str:
    plain = struct.pack(">I", issued_at)
    for key, digest in keys.items():
        plain += bytes([KEYS.index(key)]) + bytes.fromhex(digest)
    nonce = os.urandom(12)
    raw = b"\x01" + nonce + cipher(secret).encrypt(nonce, plain, AAD)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def opened(value: str) -> tuple[dict[str, str], int]:
    raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    assert raw[0] == 1
    plain = cipher(SECRET).decrypt(raw[1:13], raw[13:], AAD)  # sealed with the current key
    keys = {KEYS[plain[i]]: plain[i + 1 : i + 33].hex() for i in range(4, len(plain), 33)}
    return keys, struct.unpack(">I", plain[:4])[0]


# -- generated hits -----------------------------------------------------------------------------

IDENTS = ("none", "jane", "jane, phone, 10 days old", "expired", "forged", "previous key")
hits = st.fixed_dictionaries(
    {
        "fbp": st.sampled_from([None, "fb.1.1700000000000.123456789",
                                "fb.1.1700000000000.123456789.AQ", "not-an-fbp"]),
        "fbc": st.sampled_from([None, "fb.1.1700000000000.ClickA", "fb.1.1700000000000.ClickB",
                                "fb.1.x.y"]),
        "cid": st.sampled_from([None, "1234567890.1700000000", "bad value!"]),
        "ga": st.sampled_from([None, "GA1.1.123.456"]),
        "ident": st.sampled_from(IDENTS),
        "consent": st.fixed_dictionaries(
            {}, optional={k: st.sampled_from(["granted", "denied"])
                          for k in ("ad_storage", "analytics_storage", "ad_user_data")}),
        "click": st.sampled_from([None, "ClickA", "ClickB"]),
        "user": st.sampled_from([None, "jane", "john", "jane+phone"]),
        "logout": st.booleans(),
        "https": st.booleans(),
        "events": st.integers(1, 2),
    }
)  # fmt: skip


def request_for(case: dict[str, Any], now: int) -> tuple[str, dict[str, str], str]:
    """(base URL, headers, body) of the hit `case` describes."""
    jar = {name: case[key] for name, key in ((FBP, "fbp"), (FBC, "fbc"), (CID, "cid"),
                                              ("_ga", "ga")) if case[key]}  # fmt: skip
    jane = {"em": sha(EMAILS["jane"])}
    jar[IDENT] = {
        "jane": seal(SECRET, jane, now - 3600),
        "jane, phone, 10 days old": seal(SECRET, {**jane, "ph": sha(PHONE_DIGITS)}, now - 10 * DAY),
        "expired": seal(SECRET, jane, now - 31 * DAY),
        "forged": base64.urlsafe_b64encode(b"\x01" + bytes(60)).rstrip(b"=").decode(),
        "previous key": seal(OLD_SECRET, jane, now - DAY),
    }.get(case["ident"], "")
    headers = {"content-type": "text/plain;charset=UTF-8", "origin": "https://www.shop.test"}
    cookie = "; ".join(f"{k}={v}" for k, v in jar.items() if v)
    if cookie:
        headers["cookie"] = cookie
    url = "https://www.shop.test/product" + (f"?fbclid={case['click']}" if case["click"] else "")
    user = {"jane": {"email": EMAILS["jane"]}, "john": {"email": EMAILS["john"]},
            "jane+phone": {"email": EMAILS["jane"], "phone": PHONE}}.get(case["user"])  # fmt: skip
    body: dict[str, Any] = {
        "pid": "3f2b8c1e-1d2f-4c4e-9a51-3f7a2b8c9d10",
        "ts": (now - 2) * 1000,
        "consent": case["consent"],
        "events": [{"name": "page_view", "page": {"page_location": url}}] * case["events"],
    }
    if user:
        body["user"] = user
    if case["logout"]:
        body["logout"] = True
    base = "https://sgtm.shop.test" if case["https"] else "http://sgtm.shop.test"
    return base, headers, json.dumps(body)


# -- what the docs promise ------------------------------------------------------------------------


def expected_cookies(case: dict[str, Any], now: int) -> dict[str, Any]:
    """Cookie name → the value the browser must get (a regex for generated ones, a callable
    for the identity cookie), for exactly the cookies that must be set."""
    consent = case["consent"]
    out: dict[str, Any] = {}
    ts_ms = (now - 2) * 1000
    if consent.get("ad_storage") != "denied":
        fbp_ok = case["fbp"] and case["fbp"] != "not-an-fbp"
        out[FBP] = case["fbp"] if fbp_ok else re.compile(rf"fb\.1\.{ts_ms}\.\d+")
        fbc_ok = case["fbc"] and case["fbc"] != "fb.1.x.y"
        if case["click"] and not (fbc_ok and case["fbc"].endswith("." + case["click"])):
            out[FBC] = f"fb.1.{ts_ms}.{case['click']}"
        elif fbc_ok:
            out[FBC] = case["fbc"]
    if consent.get("analytics_storage") != "denied":
        out[CID] = (
            case["cid"] if case["cid"] == "1234567890.1700000000" else re.compile(r"\d+\.\d+")
        )
        if case["ga"]:  # the cookie keeper (analytics_storage for Google Analytics' cookies)
            out["_ga"] = case["ga"]
    ident = case["ident"]
    denied = consent.get("ad_user_data") == "denied" or consent.get("ad_storage") == "denied"
    if denied or case["logout"]:
        if ident != "none":
            out[IDENT] = ""  # removed
        return out
    stored: dict[str, str] = {}
    if ident in ("jane", "jane, phone, 10 days old", "previous key"):
        stored = {"em": sha(EMAILS["jane"])}
        if ident == "jane, phone, 10 days old":
            stored["ph"] = sha(PHONE_DIGITS)
    if case["user"]:
        given = {"em": sha(EMAILS["john" if case["user"] == "john" else "jane"])}
        if case["user"] == "jane+phone":
            given["ph"] = sha(PHONE_DIGITS)
        if stored.get("em", given["em"]) != given["em"]:  # someone else: nothing stored is kept
            stored = {}
        out[IDENT] = ({**stored, **given}, "now", 30 * DAY)
    elif ident == "previous key":  # re-sealed with the current key, its lifetime unchanged
        out[IDENT] = (stored, now - DAY, 29 * DAY)
    elif ident in ("expired", "forged"):
        out[IDENT] = ""
    return out


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    container = minimal_container(
        clients=[{"name": "collector", "type": "collector"}],
        tags=[{"name": "log_all", "type": "log", "fire_on": ["all"]}],
        cookie_keeper={"cookies": ["_ga"]},
    )
    with app_client(tmp_path_factory.mktemp("answers"), container, secret_key=SECRET,
                    previous_secret_keys=OLD_SECRET) as c:  # fmt: skip
        yield c


@hsettings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=hits)
def test_generated_hits_get_the_documented_cookies_and_events(
    client: TestClient, caplog: pytest.LogCaptureFixture, case: dict[str, Any]
) -> None:
    caplog.clear()
    caplog.set_level(logging.INFO, logger="tagserver.tag.log")
    before = int(time.time())
    base, headers, body = request_for(case, before)
    client.cookies.clear()
    response = client.post(base + "/collect", content=body, headers=headers)
    after = int(time.time())
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == case["events"]
    assert response.headers["access-control-allow-origin"] == "https://www.shop.test"
    assert response.headers["access-control-allow-credentials"] == "true"
    assert response.headers["cache-control"] == "no-store"

    secure = "; Secure" if case["https"] else ""
    set_cookie = response.headers.get_list("set-cookie")
    got = {h.split("=", 1)[0]: h for h in set_cookie}
    assert len(got) == len(set_cookie), set_cookie  # no cookie set twice
    want = expected_cookies(case, before)
    assert set(got) == set(want), (case, set_cookie)
    lifetimes = {FBP: 90 * DAY, FBC: 90 * DAY, CID: 400 * DAY, "_ga": 395 * DAY}
    values = {}
    for name, expected in want.items():
        value, _, attrs = got[name].partition("; ")
        value = value.split("=", 1)[1]
        values[name] = value
        http_only = "; HttpOnly" if name in (CID, IDENT) else ""
        if name == IDENT and expected == "":
            assert (
                got[name]
                == f"{IDENT}=; Max-Age=0; Domain=shop.test; Path=/; SameSite=Lax{secure}; HttpOnly"
            )
            continue
        if name == IDENT:
            keys, issued_at = opened(value)
            assert keys == expected[0], case
            age = int(attrs.split(";")[0].removeprefix("Max-Age="))
            if expected[1] == "now":
                assert before <= issued_at <= after and age == expected[2]
            else:
                assert issued_at == expected[1]
                assert expected[2] - (after - before) - 1 <= age <= expected[2]
            max_age = f"Max-Age={age}"
        else:
            max_age = f"Max-Age={lifetimes[name]}"
            if isinstance(expected, re.Pattern):
                assert expected.fullmatch(value), (name, value)
            else:
                assert value == expected, (name, case)
        assert attrs == f"{max_age}; Domain=shop.test; Path=/; SameSite=Lax{secure}{http_only}"

    # every event of the hit reaches the tag with the ids the browser was given
    events = [
        json.loads(r.getMessage())["event"] for r in caplog.records if r.name == "tagserver.tag.log"
    ]
    assert len(events) == case["events"]
    for event in events:
        assert event.get("x-fb-ck-fbp") == values.get(FBP)
        assert event.get("x-fb-ck-fbc") == values.get(FBC)
        assert event.get("client_id") == values.get(CID)
        assert event["event_name"] == "page_view" and event["action_source"] == "website"
