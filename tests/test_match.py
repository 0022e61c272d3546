"""Match quality over HTTP: the identity cookie (kept, used, removed, never trusted when
tampered), geography (trusted proxies' headers, a MaxMind-format file), what each tag's
answer says it gained, and event-id reuse warnings."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY
from starlette.testclient import TestClient
from support import NO_GA4, NO_VENDOR, app_client, minimal_container, write_container

from tagserver import metrics
from tagserver.event import RequestContext
from tagserver.settings import Settings
from tagserver.toolkit import identity
from tagserver.visitor import identity_cookie, match
from tagserver.visitor.identity_cookie import COOKIE, KEYS, Keyring, keyring
from tagserver.web.app import create_app

AUTH = {"Authorization": "Bearer test-key"}
GRANTED = {"ad_storage": "granted", "ad_user_data": "granted"}
EMAIL = "Jane.Doe@Example.com"
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/124.0 Safari/537.36"
IP = "192.0.2.10"
EMAIL_HASH = hashlib.sha256(b"jane.doe@example.com").hexdigest()


def container(**extra: Any) -> dict[str, Any]:
    options: dict[str, Any] = dict(
        clients=[{"name": "events_api", "type": "events_api"}, {"name": "collector", "type": "collector"}],
        tags=[
            {"name": "meta", "type": "meta_capi", "fire_on": ["all"]},
            {"name": "tiktok", "type": "tiktok_events", "fire_on": ["all"]},
            {"name": "meta_plain", "type": "meta_capi", "fire_on": ["all"],
             "params": {"use_identity_cookie": False, "use_geography": False}},
        ],
    )  # fmt: skip
    return minimal_container(**{**options, **extra})


def collect(client: TestClient, **envelope: Any) -> Any:
    body = {"events": [{"name": "purchase", "params": {"value": 5}}], **envelope}
    return client.post("/collect", json=body)


def send(client: TestClient, event: dict[str, Any], **headers: str) -> dict[str, Any]:
    event = {
        "page_location": "https://www.shop.test/",
        "user_agent": UA,
        "ip_override": IP,
        **event,
    }
    response = client.post("/api/events", json=event, headers={**AUTH, **headers})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]  # type: ignore[no-any-return]


def identity_cookie_headers(response: Any) -> list[str]:
    return [v for v in response.headers.get_list("set-cookie") if v.startswith(COOKIE + "=")]


def test_identity_is_kept_encrypted_and_fills_later_events(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        first = collect(
            client,
            consent=GRANTED,
            user={
                "email": EMAIL,
                "phone": "+1 650 555 1212",
                "first_name": "Jane",
                "city": "Paris",
            },
        )
        assert first.status_code == 200
        [header] = identity_cookie_headers(first)
        assert "HttpOnly" in header and "SameSite=Lax" in header and "Domain=shop.test" in header
        value = header.split(";")[0].split("=", 1)[1]
        assert "jane" not in value.lower() and EMAIL_HASH not in value
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        assert bytes.fromhex(EMAIL_HASH) not in raw  # encrypted, not merely encoded
        assert "Max-Age=2592000" in header  # 30 days

        # a later anonymous event from that browser gets the keys it lacks
        row = send(
            client, {"event_name": "page_view", "user_agent": "UA", "ip_override": "198.51.100.7"}
        )
        meta = row["match"]["meta"]
        assert meta["keys"]["identity_cookie"] == ["em", "ph", "fn", "ct"]
        assert meta["quality_after"] > meta["quality_before"]
        assert meta["gain"] == 5.75  # em 3 + ph 2 + fn 0.5 + ct 0.25
        # TikTok normalizes phones its own way: only the email hash fits it
        assert row["match"]["tiktok"]["keys"]["identity_cookie"] == ["email"]
        # the per-tag opt-out
        assert row["match"]["meta_plain"]["keys"]["identity_cookie"] == []

        # an event's own data always wins
        own = send(client, {"event_name": "lead", "user_data": {"email_address": "x@y.org"}})
        assert "em" in own["match"]["meta"]["keys"]["event"]
        assert own["match"]["meta"]["keys"]["identity_cookie"] == ["ph", "fn", "ct"]

        # consent denied on the event: nothing added
        denied = send(client, {"event_name": "page_view", "consent": {"ad_user_data": "denied"}})
        assert denied["match"]["meta"]["keys"]["identity_cookie"] == []


def test_another_person_replaces_the_stored_identity(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        collect(client, user={"email": EMAIL, "phone": "+1 650 555 1212"})
        collect(client, user={"email": "someone.else@example.org"})
        row = send(client, {"event_name": "page_view"})
        assert row["match"]["meta"]["keys"]["identity_cookie"] == ["em"]  # the phone was Jane's


def test_consent_denied_stores_nothing_and_removes_the_cookie(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        none = collect(client, consent={"ad_user_data": "denied"}, user={"email": EMAIL})
        assert identity_cookie_headers(none) == [] and COOKIE not in client.cookies
        collect(client, consent=GRANTED, user={"email": EMAIL})
        assert client.cookies.get(COOKIE)
        removed = collect(client, consent={"ad_storage": "denied"})
        [header] = identity_cookie_headers(removed)
        assert "Max-Age=0" in header
        assert COOKIE not in client.cookies
        assert "identity_cookie" not in str(
            send(client, {"event_name": "x"})["match"]["meta"]["keys"]["identity_cookie"]
        )


def test_logout_removes_the_cookie_even_without_events(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        collect(client, user={"email": EMAIL})
        assert client.cookies.get(COOKIE)
        out = client.post("/collect", json={"logout": True, "events": []})
        assert out.status_code == 200 and out.json() == {"accepted": 0, "rejected": 0, "events": []}
        assert "Max-Age=0" in identity_cookie_headers(out)[0]
        assert COOKIE not in client.cookies
        assert client.post("/collect", json={"events": []}).status_code == 400
        assert client.post("/collect", json={"logout": "yes", "events": []}).status_code == 400


@pytest.mark.parametrize(
    "value",
    ["garbage", "", "A" * 5000, "AQ", base64.urlsafe_b64encode(b"\x01" + b"\x00" * 60).decode()],
)
def test_a_tampered_or_foreign_cookie_is_ignored(tmp_path: Path, value: str) -> None:
    with app_client(tmp_path, container()) as client:
        client.cookies.set(COOKIE, value, domain="sgtm.shop.test")
        row = send(client, {"event_name": "page_view"})
        assert row["match"]["meta"]["keys"]["identity_cookie"] == []
        answer = collect(client)  # the collector removes what it cannot read
        assert answer.status_code == 200
        if value:
            assert "Max-Age=0" in identity_cookie_headers(answer)[0]


def test_a_flipped_bit_or_another_servers_key_is_not_believed(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), secret_key="current-secret-key") as client:
        collect(client, user={"email": EMAIL})
        good = client.cookies[COOKIE]
        raw = bytearray(base64.urlsafe_b64decode(good + "=" * (-len(good) % 4)))
        raw[-20] ^= 1
        client.cookies.clear()
        client.cookies.set(COOKIE, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("="))
        assert send(client, {"event_name": "a"})["match"]["meta"]["keys"]["identity_cookie"] == []
        foreign = Keyring("some-other-server", []).seal({"em": EMAIL_HASH}, int(time.time()))
        client.cookies.clear()
        client.cookies.set(COOKIE, foreign)
        assert send(client, {"event_name": "a"})["match"]["meta"]["keys"]["identity_cookie"] == []


def test_rotation_reads_old_cookies_and_reseals_them(tmp_path: Path) -> None:
    old = Keyring("the-old-secret", []).seal({"em": EMAIL_HASH}, int(time.time()) - 60)
    with app_client(
        tmp_path, container(), secret_key="the-new-secret", previous_secret_keys="the-old-secret"
    ) as client:
        client.cookies.set(COOKIE, old)
        assert send(client, {"event_name": "a"})["match"]["meta"]["keys"]["identity_cookie"] == [
            "em"
        ]
        resealed = collect(client)
        [header] = identity_cookie_headers(resealed)
        value = header.split(";")[0].split("=", 1)[1]
        assert value != old and Keyring("the-new-secret", []).open(value)[0] == {"em": EMAIL_HASH}
        assert Keyring("the-old-secret", []).open(value) is None


def test_an_expired_cookie_is_ignored(tmp_path: Path) -> None:
    stale = Keyring("k-secret", []).seal({"em": EMAIL_HASH}, int(time.time()) - 3 * 86400)
    with app_client(tmp_path, container(), secret_key="k-secret", identity_cookie_days=2) as client:
        client.cookies.set(COOKIE, stale)
        assert send(client, {"event_name": "a"})["match"]["meta"]["keys"]["identity_cookie"] == []


def test_the_sealed_value_is_bounded() -> None:
    ring = Keyring("secret", [])
    full = {key: hashlib.sha256(key.encode()).hexdigest() for key in KEYS}
    value = ring.seal(full, 1_700_000_000)
    assert len(value) < 600
    assert ring.open(value) == (full, 1_700_000_000, False)


# -- geography ----------------------------------------------------------------------------------

CF = {
    "cf-ipcountry": "US",
    "cf-region-code": "CA",
    "cf-ipcity": "Mountain View",
    "cf-postal-code": "94043",
}


def geo_container() -> dict[str, Any]:
    # the events API takes the request's IP and user agent (and so its geography) as the
    # visitor's only when told to: a browser hit's proxy headers describe the visitor
    clients = [{"name": "events_api", "type": "events_api",
                "params": {"use_request_ip_and_user_agent": True}}]  # fmt: skip
    return container(
        clients=clients,
        triggers=[
            {"name": "all", "event": "*"},
            {"name": "in_us", "event": "*",
             "conditions": [{"variable": "geo.country", "operator": "equals", "value": "US"}]},
        ],
    ) | {"tags": [*container()["tags"], {"name": "us_only", "type": "log", "fire_on": ["in_us"]}]}  # fmt: skip


@contextlib.contextmanager
def client_at(tmp_path: Path, peer: str, data: dict[str, Any]) -> Iterator[TestClient]:
    """The app in-process, its requests coming from `peer` (a proxy, or a visitor)."""
    options = {"container": str(write_container(tmp_path, data)), "data_dir": str(tmp_path / "d"),
               "api_keys": "test-key", "meta_graph_url": NO_VENDOR, "ga4_collect_url": NO_GA4}  # fmt: skip
    app = create_app(Settings.from_env({}, **options))
    with TestClient(app, base_url="http://sgtm.shop.test", client=(peer, 4000)) as client:
        yield client


def test_geography_from_a_trusted_proxy(tmp_path: Path) -> None:
    with client_at(tmp_path, "127.0.0.1", geo_container()) as proxied:
        row = send(proxied, {"event_name": "page_view", "ip_override": "127.0.0.1"}, **CF)
        assert row["match"]["meta"]["keys"]["geography"] == ["ct", "st", "zp", "country"]
        assert "us_only" in row["tags_fired"]  # {{geo.country}}
        # TikTok gets the same place, normalized by its own rules
        assert set(row["match"]["tiktok"]["keys"]["geography"]) == {
            "city",
            "state",
            "zip_code",
            "country",
        }
        # an event's own address wins, and another country's city is never mixed in
        own = send(
            proxied,
            {
                "event_name": "a",
                "ip_override": "127.0.0.1",
                "user_data": {"address": {"country": "FR"}},
            },
            **CF,
        )
        assert own["match"]["meta"]["keys"]["geography"] == []
        # an event for another address (server to server): headers describe the caller
        other = send(proxied, {"event_name": "a", "ip_override": "198.51.100.9"}, **CF)
        assert other["match"]["meta"]["keys"]["geography"] == []


def test_geography_headers_from_an_untrusted_peer_are_ignored(tmp_path: Path) -> None:
    with client_at(tmp_path, "203.0.113.50", geo_container()) as direct:
        row = send(direct, {"event_name": "page_view", "ip_override": "203.0.113.50"}, **CF)
        assert row["match"]["meta"]["keys"]["geography"] == []
        assert "us_only" not in row["tags_fired"]


def write_mmdb(path: Path) -> Path:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, database_type="GeoLite2-City", ipv4_compatible=True)
    writer.insert_network(
        IPSet(["198.51.100.0/24"]),
        {"country": {"iso_code": "DE"}, "subdivisions": [{"iso_code": "BE", "names": {"en": "Land Berlin"}}],
         "city": {"names": {"en": "Berlin", "de": "Berlin"}}, "postal": {"code": "10115"}},
    )  # fmt: skip
    writer.to_db_file(str(path))
    return path


def test_geography_from_a_maxmind_format_database(tmp_path: Path) -> None:
    pytest.importorskip("mmdb_writer")
    database = write_mmdb(tmp_path / "tiny.mmdb")
    with app_client(tmp_path, container(), geo_database=str(database)) as client:
        row = send(client, {"event_name": "page_view", "ip_override": "198.51.100.20"})
        assert row["match"]["meta"]["keys"]["geography"] == ["ct", "st", "zp", "country"]
        unknown = send(client, {"event_name": "page_view", "ip_override": "192.0.2.1"})
        assert unknown["match"]["meta"]["keys"]["geography"] == []


def test_a_missing_database_file_is_not_fatal(tmp_path: Path) -> None:
    with app_client(tmp_path, container(), geo_database=str(tmp_path / "nope.mmdb")) as client:
        row = send(client, {"event_name": "page_view", "ip_override": "198.51.100.20"})
        assert row["match"]["meta"]["keys"]["geography"] == []


# -- event-id reuse ---------------------------------------------------------------------------


def test_event_id_reuse_is_reported(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        order = {"event_name": "purchase", "event_id": "ord-1", "transaction_id": "T1", "value": 10}
        assert "warnings" not in send(client, order)
        assert "warnings" not in send(client, {**order, "value": 10.0})  # the same event again
        changed = send(client, {**order, "transaction_id": "T2", "value": 25})
        [warning] = changed["warnings"]
        assert "ord-1" in warning and "T1" in warning and "T2" in warning
        renamed = send(client, {**order, "event_name": "refund"})
        assert "event_name" not in renamed["warnings"][0] or "refund" in renamed["warnings"][0]
        assert "warnings" not in send(client, {"event_name": "purchase", "event_id": "ord-2"})
        browser = client.post("/collect", json={"events": [{"name": "lead", "id": "ord-1"}]})
        assert "reused" in browser.json()["events"][0]["warnings"][0]
        text = client.get("/metrics").text
        for differs in ("transaction_id", "event_name"):  # counters add up across tests
            labels = f'client="events_api",differs="{differs}"'
            found = re.search(r"tagserver_event_id_reuse_total\{" + labels + r"\} (\S+)", text)
            assert found and float(found.group(1)) >= 1


def test_reuse_memory_is_bounded() -> None:
    from tagserver.engine.event_ids import ReuseDetector

    detector = ReuseDetector(window_seconds=100, max_ids=3)
    for n in range(10):
        assert detector.check(f"id-{n}", {"event_name": "a"}, 1000.0, "c") is None
    assert len(detector.seen) == 3
    assert detector.check("id-9", {"event_name": "b"}, 1001.0, "c") is not None
    assert detector.check("id-0", {"event_name": "b"}, 1001.0, "c") is None  # forgotten
    assert detector.check("id-9", {"event_name": "b"}, 1200.0, "c") is None  # out of the window


def test_match_metrics(tmp_path: Path) -> None:
    with app_client(tmp_path, container()) as client:
        collect(client, user={"email": EMAIL})
        send(client, {"event_name": "page_view"})
        text = client.get("/metrics").text
    labels = 'event_name="PageView",stage="enriched",tag_type="meta_capi"'
    assert f"tagserver_match_quality_score_count{{{labels}}}" in text
    assert (
        'tagserver_match_keys_total{key="em",source="identity_cookie",tag_type="meta_capi"}' in text
    )
    gain = re.search(
        r'tagserver_match_quality_gain_total\{event_name="PageView",source="identity_cookie",'
        r'tag_type="meta_capi"\} (\S+)',
        text,
    )
    assert gain and float(gain.group(1)) >= 3.0  # em: 3 points (counters add up across tests)


def test_settings_validate() -> None:
    settings = Settings.from_env(
        {"TAGSERVER_IDENTITY_COOKIE_DAYS": "7", "TAGSERVER_GEO_DATABASE": "/x"}
    )
    assert settings.identity_cookie_days == 7 and settings.geo_database == "/x"


def test_match_metrics_equal_each_report_counted_on_its_own() -> None:
    """`record` works out what a kind of report adds once and `report` shares equal reports:
    the metrics must be what counting every report on its own gives (here computed plainly),
    and each report what its inputs say, over many reports that repeat, differ in keys,
    sources, scores and names, and pass the bound on event names."""
    rng = random.Random(14)
    run = uuid.uuid4().hex[:8]  # fresh label values: the registry outlives each test
    tag_types = [f"test_a_{run}", f"test_b_{run}"]
    all_keys = ("em", "ph", "fn", "ln", "ct", "zp", "country", "external_id")
    sources = (match.IDENTITY_COOKIE, match.GEOGRAPHY)
    names = [f"Event{i}" for i in range(match.MAX_EVENT_NAMES + 20)] + [""]
    cases = []
    for _ in range(1500):
        keys = tuple(k for k in all_keys if rng.random() < 0.6)
        added = {k: rng.choice(sources) for k in keys if rng.random() < 0.2}
        after = len(keys) * 0.75 + rng.choice([0.0, 0.5, 0.1 * rng.randint(0, 30)])
        name = rng.choice(names[:3]) if rng.random() < 0.7 else rng.choice(names)
        cases.append((rng.choice(tag_types), keys, added, after, name))

    def score(own: dict[str, Any]) -> float:
        return len(own) * 0.75

    expected_scores: dict[tuple[str, ...], list[float]] = {}
    expected_keys: dict[tuple[str, ...], int] = {}
    expected_gain: dict[tuple[str, ...], float] = {}
    seen: dict[str, list[str]] = {}

    async def record_all() -> None:  # in a loop, as a server: counted in dicts until a flush
        for tag_type, keys, added, after, name in cases:
            found = match.report(match.Gain(dict(added)), keys, {}, score, after, name)
            own = {k: match.EVENT for k in keys}
            own.update(added)
            before = score({k: True for k in keys if k not in added}) if added else after
            assert (found.keys, found.before, found.after) == (own, before, after)
            assert found.event_name == name
            match.record(tag_type, found)

            label = name or "unknown"  # the plain count of this one report
            names_seen = seen.setdefault(tag_type, [])
            if label not in names_seen:
                if len(names_seen) >= match.MAX_EVENT_NAMES:
                    label = "other"
                else:
                    names_seen.append(label)
            for stage, value in (("event", before), ("enriched", after)):
                expected_scores.setdefault((tag_type, label, stage), []).append(value)
            for key, source in own.items():
                expected_keys[(tag_type, key, source)] = (
                    expected_keys.get((tag_type, key, source), 0) + 1
                )
            if after != before:
                shares = list(added.values())
                for source in set(shares):
                    share = (after - before) * shares.count(source) / len(shares)
                    gain_key = (tag_type, label, source)
                    expected_gain[gain_key] = expected_gain.get(gain_key, 0.0) + share
        metrics.flush()

    asyncio.run(record_all())
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in REGISTRY.collect()
        if family.name.startswith("tagserver_match")
        for s in family.samples
    }

    def sample(name: str, labels: dict[str, str]) -> float | None:
        return samples.get((name, tuple(sorted(labels.items()))))

    assert any(label == "other" for _, label, _ in expected_scores)
    for (tag_type, label, stage), values in expected_scores.items():
        labels = {"tag_type": tag_type, "event_name": label, "stage": stage}
        assert sample("tagserver_match_quality_score_count", labels) == len(values)
        total = 0.0
        for value in values:
            total += value
        assert sample("tagserver_match_quality_score_sum", labels) == total
        for bound in (1, 5, 9, 10):
            below = sum(1 for v in values if v <= bound)
            assert (
                sample("tagserver_match_quality_score_bucket", {**labels, "le": f"{bound}.0"})
                == below
            )
    for (tag_type, key, source), times in expected_keys.items():
        labels = {"tag_type": tag_type, "key": key, "source": source}
        assert sample("tagserver_match_keys_total", labels) == times
    assert expected_gain
    for (tag_type, label, source), total in expected_gain.items():
        labels = {"tag_type": tag_type, "event_name": label, "source": source}
        assert sample("tagserver_match_quality_gain_total", labels) == total


FIELD_NAMES = sorted(
    {"", "x", "user_id", "country", *match._PERSON_TARGET.values(), *match._ADDRESS_TARGET.values()}
    | set(match._PLAIN.values())
    | set(match._ALT.values())
)
field_values = st.sampled_from([None, "", [], 0, "GB", "Jane", ["a"], {"k": 1}, True])
fields = st.dictionaries(st.sampled_from(FIELD_NAMES), field_values, max_size=8)
user_data = fields.flatmap(
    lambda ud: st.sampled_from([None, ud, {**ud, "address": ud}, {**ud, "address": [ud, 3, ud]}])
)


@settings(max_examples=400, deadline=None)
@given(
    ud=user_data,
    top=st.dictionaries(
        st.sampled_from(["user_id", "x-fb-ud-em", "x-fb-ud-ct", "x-fb-ud-zz"]), field_values
    ),
    configured=st.none() | fields,
)
def test_the_keys_an_event_gives_are_found_wherever_sgtm_puts_them(
    ud: Any, top: dict[str, Any], configured: Any
) -> None:
    """`_present` looks each key up in fields named once: it finds what looking up each
    name (sGTM's, the plain one, the other one, "" when none) finds."""
    event = (
        {"event_name": "e", **top} if ud is None else {"event_name": "e", "user_data": ud, **top}
    )
    want: set[str] = set()
    if isinstance(configured, dict):
        want.update(k for k, v in configured.items() if v not in (None, "", []))
    if isinstance(ud, dict):
        for key, target in match._PERSON_TARGET.items():
            names = (target, match._PLAIN.get(key, ""), match._ALT.get(key, ""))
            if any(ud.get(name) for name in names):
                want.add(key)
        addresses = ud.get("address")
        for address in [addresses] if isinstance(addresses, dict) else addresses or []:
            if isinstance(address, dict):
                for key, target in match._ADDRESS_TARGET.items():
                    if address.get(target) or address.get(match._PLAIN.get(key, "")):
                        want.add(key)
    if event.get("user_id"):
        want.add("external_id")
    want.update(k for k in identity.HASHED_KEYS if event.get("x-fb-ud-" + k))
    assert match._present(event, configured)[0] == want


# -- one answer per event for the tags that enrich it alike (FireContext.memo) ------------------

SHARED_SETTINGS = Settings.from_env(
    {}, secret_key="memo-test-secret-key-memo-test-secret-key", trusted_proxies="127.0.0.1"
)
# what a visitor's identity cookie may hold: none, an email, a person in the US or in France
STORED = [
    {},
    identity_cookie.hashed_keys({"email_address": EMAIL}),
    identity_cookie.hashed_keys(
        {"email_address": EMAIL, "phone_number": "+1 650 555 1212",
         "address": {"first_name": "Jane", "city": "Paris", "country": "US"}}, "c-1"
    ),
    identity_cookie.hashed_keys({"address": {"city": "Lyon", "country": "FR"}}),
]  # fmt: skip
requests_ = st.builds(
    lambda stored, geo: RequestContext.from_scope(
        method="POST",
        url="http://sgtm.shop.test/collect",
        path="/collect",
        query={},
        headers={"host": "sgtm.shop.test", **(CF if geo else {})},
        cookies={COOKIE: keyring(SHARED_SETTINGS).seal(stored, int(time.time()))} if stored else {},
        peer_ip="127.0.0.1",
        scheme="https",
        settings=SHARED_SETTINGS,
    ),  # fmt: skip
    st.sampled_from(STORED),
    st.booleans(),
)
events = st.fixed_dictionaries(
    {"event_name": st.just("purchase")},
    optional={
        "user_data": st.sampled_from(
            [
                {},
                {"email_address": "x@y.org"},
                {"address": {"country": "US"}},
                {"address": [{"city": "Nice", "country": "FR"}]},
                {"sha256_phone_number": "ab" * 32},
            ]
        ),  # fmt: skip
        "consent": st.sampled_from(
            [
                {"ad_user_data": "denied"},
                {"ad_storage": "denied"},
                {"ad_storage": "granted"},
            ]
        ),  # fmt: skip
        "ip_override": st.sampled_from(["127.0.0.1", "198.51.100.9", ""]),
        "user_id": st.just("c-2"),
    },
)
# the ways tags enrich: their accepted stored keys (all, TikTok's, Meta's with raw
# external_id) and the params that change the answer, each way once
TAG_SETUPS = [
    ({**cookie, **geo, **own}, accept)
    for accept in (match.ALL_KEYS, frozenset({"em", "external_id"}), match.ALL_KEYS - {"external_id"})
    for cookie in ({}, {"use_identity_cookie": False}, {"use_identity_cookie": True})
    for geo in ({}, {"use_geography": False})
    for own in (
        {}, {"user_data": {}}, {"user_data": {"em": "x@y.org"}}, {"user_data": {"country": "FR"}},
        {"user_data": {"ct": "Paris", "country": "us"}},
    )
]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    requests=st.lists(requests_, min_size=1, max_size=3),
    hit_events=st.lists(events, min_size=1, max_size=3),
    setups=st.permutations(TAG_SETUPS),
)
def test_tags_share_an_enrichment_only_when_it_is_the_same(
    requests: list[RequestContext],
    hit_events: list[dict[str, Any]],
    setups: list[tuple[dict[str, Any], frozenset[str]]],
) -> None:
    """With one memo, every tag gets the answer it gets alone: never another tag's (other
    accepted keys, identity params or `user_data`), another event's or another request's,
    even from a memo wrongly kept across them."""
    memo: dict[Any, Any] = {}
    for given_event in hit_events:
        event = dict(given_event)  # each event its own object, equal ones included
        for request in requests:
            for params, accept in setups:
                alone = match.enrich(event, params, request, accept)
                shared = match.enrich(event, dict(params), request, accept, memo=memo)
                assert shared == alone
                assert event == given_event  # nobody changes the event
    assert 0 < len(memo) <= 4  # one reading per use_identity_cookie × use_geography
