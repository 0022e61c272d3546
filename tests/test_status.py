"""The status page over HTTP: its JSON twin, the retry action's rules, tags' rejection
reasons, and how the figures are computed.

The browser side (a refused Meta token, retry after the fix) is in test_status_browser.py;
deliveries over time summed across workers and instances, in test_status_windows.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from fakes.vendor import FakeVendor, webhook_tag
from support import app_client, minimal_container, wait_until

from tagserver import metrics
from tagserver.web.status import History, destination_state, match_quality

PASSWORD = "status password"
AUTH = {"Authorization": "Bearer test-key"}
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"


def signed_in(client: Any) -> Any:
    r = client.post("/preview/login", data={"password": PASSWORD}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return client


def status(client: Any) -> dict[str, Any]:
    r = client.get("/preview/api/status")
    assert r.status_code == 200, r.text
    return r.json()


def destination(figures: dict[str, Any], tag: str) -> dict[str, Any]:
    return next(d for d in figures["destinations"] if tag in d["tags"])


# -- over HTTP, in-process


@pytest.mark.usefixtures("outbox_backend")  # SQLite and PostgreSQL
def test_status_needs_sign_in_and_shows_no_payload(tmp_path: Path) -> None:
    with FakeVendor() as vendor:
        vendor.reject(lambda r: True)  # every message refused: dead letters
        container = minimal_container(tags=[webhook_tag(vendor.url, name="crm_refused")])
        with app_client(tmp_path, container, preview_password=PASSWORD) as client:
            for path in ("/preview/api/status", "/preview/status/live"):
                assert client.get(path).status_code == 401
            assert client.get("/preview/status", follow_redirects=False).status_code == 303
            r = client.post("/preview/api/status/retry", json={"all": True})
            assert r.status_code == 401
            event = {"event_name": "purchase", "event_id": "e-1",
                     "user_data": {"email_address": "jane@example.com"}}  # fmt: skip
            assert client.post("/api/events", json=event, headers=AUTH).status_code == 200
            signed_in(client)
            figures = wait_until(lambda: (f := status(client))["dead_letters"] and f, timeout=10)
    letter = figures["dead_letters"][0]
    assert letter["tag"] == "crm_refused" and letter["status"] == 400
    assert "payload" not in letter
    d = destination(figures, "crm_refused")
    assert d["name"] == "crm_refused (http_request)"
    assert d["dead_letters"] == 1 and d["state"] == "failing"
    assert d["errors_by_class"] == {"refused": 1}
    assert figures["health"]["status"] == "ok"
    assert figures["container"]["name"] == "test"
    assert "jane@example.com" not in str(figures)


def test_retry_says_what_is_wrong_with_the_request(tmp_path: Path) -> None:
    with app_client(tmp_path, minimal_container(), preview_password=PASSWORD) as client:
        signed_in(client)
        r = client.post("/preview/api/status/retry", json={})
        assert r.status_code == 400 and "say what to retry" in r.json()["error"]
        r = client.post("/preview/api/status/retry", json={"id": "seven"})
        assert r.status_code == 400 and "id" in r.json()["error"]
        r = client.post(
            "/preview/api/status/retry", content=b"[1", headers={"content-type": "application/json"}
        )
        assert r.status_code == 400
        r = client.post("/preview/api/status/retry", json={"id": 12345})
        assert r.status_code == 200 and r.json()["requeued"] == 0
        r = client.post(
            "/preview/status/retry", data={"all": "1"}, headers={"Sec-Fetch-Site": "cross-site"}
        )
        assert r.status_code == 403


@pytest.mark.usefixtures("outbox_backend")
def test_retry_one_dead_letter_from_the_page_delivers_it(tmp_path: Path) -> None:
    with FakeVendor() as vendor:
        vendor.fail(2, status=400, body=b'{"error":"bad key"}')  # two refused, then fine
        container = minimal_container(tags=[webhook_tag(vendor.url, name="crm_once")])
        with app_client(tmp_path, container, preview_password=PASSWORD) as client:
            signed_in(client)
            for event_id in ("a-1", "a-2"):
                event = {"event_name": "purchase", "event_id": event_id}
                assert client.post("/api/events", json=event, headers=AUTH).status_code == 200
            letters = wait_until(lambda: len(d := status(client)["dead_letters"]) == 2 and d, 10)
            first = next(d for d in letters if d["dedup_id"] == "a-1")
            r = client.post("/preview/status/retry", data={"id": str(first["id"])},
                            follow_redirects=False)  # fmt: skip
            assert r.status_code == 303
            assert r.headers["location"] == "/preview/status?retried=1&expired=0#dead-letters"
            wait_until(lambda: len(vendor.accepted) == 1, timeout=10)
            figures = wait_until(lambda: len(d := status(client)["dead_letters"]) == 1 and d, 10)
            page = client.get("/preview/status?retried=1&expired=0")
    assert vendor.accepted[0].json()["event_id"] == "a-1"
    assert figures[0]["dedup_id"] == "a-2"  # the other one is still there
    assert "Requeued 1 dead letter." in page.text
    assert page.headers["content-security-policy"].startswith("default-src 'none'")


def test_rejected_events_are_counted_with_their_reasons(tmp_path: Path) -> None:
    container = minimal_container(
        tags=[{"name": "meta_rejecting", "type": "meta_capi", "fire_on": ["all"],
               "params": {"pixel_id": "1122334455", "access_token": "EAAtoken"}}],
    )  # fmt: skip
    with app_client(tmp_path, container, preview_password=PASSWORD) as client:
        signed_in(client)
        for i in range(3):  # a website event ten days old: Meta would refuse it
            event = {"event_name": "purchase", "event_id": f"r-{i}", "ip_override": "203.0.113.9",
                     "page_location": "https://www.shop.test/", "user_agent": UA,
                     "value": 10, "currency": "EUR",
                     "event_time": int(time.time()) - 10 * 86400}  # fmt: skip
            r = client.post("/api/events", json=event, headers=AUTH)
            assert r.status_code == 200, r.text
        time.sleep(metrics.FLUSH_SECONDS * 2)
        tag = next(t for t in status(client)["tags"] if t["tag"] == "meta_rejecting")
        html = client.get("/preview/status").text
    assert tag["total"]["rejected"] == 3
    reason = tag["rejected_reasons"][0]
    assert reason["count"] == 3 and "days old" in reason["reason"]
    assert "203.0.113.9" not in html
    assert "3 × " in html


# -- how the figures are computed


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


def test_tag_windows_are_differences_between_samples() -> None:
    history = History()
    delivered = key("tagserver_tag_results_total", tag="t", status="fired")
    now = 1_000_000.0
    history.samples.clear()
    for minutes_ago, value in ((120, 0.0), (61, 10.0), (2, 40.0), (1, 45.0)):
        history.take({delivered: value}, now - minutes_ago * 60)
    current = {delivered: 50.0}
    assert history.since(current, 60, now)[delivered] == 5.0  # since the sample a minute ago
    assert history.since(current, 3600, now)[delivered] == 40.0  # since 61 minutes ago
    assert history.since(current, 86400, now)[delivered] == 50.0  # since the first sample


def test_old_samples_are_thinned_and_dropped() -> None:
    history = History()
    history.samples.clear()
    now = 2_000_000.0
    name = key("tagserver_tag_results_total", tag="t", status="fired")
    for seconds_ago in range(0, 2 * 86400, 10):
        history.take({name: 1.0}, now - 2 * 86400 + seconds_ago)
    assert len(history.samples) < 360 + 300  # an hour of every sample, then one per 5 min
    assert now - history.samples[0].at <= 86400 + 300


def test_match_quality_reads_any_match_quality_histogram() -> None:
    values = {
        key("tagserver_match_quality_bucket", vendor="tiktok", event_name="Purchase", le="5.0"): 1,
        key("tagserver_match_quality_bucket", vendor="tiktok", event_name="Purchase", le="10.0"): 3,
        key("tagserver_match_quality_bucket", vendor="tiktok", event_name="Purchase", le="+Inf"): 3,
        key("tagserver_match_quality_sum", vendor="tiktok", event_name="Purchase"): 21.0,
        key("tagserver_match_quality_count", vendor="tiktok", event_name="Purchase"): 3,
        key("tagserver_meta_match_quality_count", event_name="Lead"): 0,
    }
    (row,) = match_quality(values)
    assert row["vendor"] == "tiktok" and row["labels"] == {"event_name": "Purchase"}
    assert row["count"] == 3 and row["mean"] == 7.0
    assert [b["count"] for b in row["distribution"]] == [1, 2, 0]


def test_rejection_reasons_are_bounded_and_carry_no_values() -> None:
    label = metrics.reason_label("not sent: event_name 'Jane Doe purchase' is 312 characters long")
    assert "Jane" not in label and "312" not in label
    for i in range(metrics.MAX_REASONS + 5):
        metrics.reason_label(f"reason number {chr(65 + i % 26)}{chr(97 + i // 26)}")
    assert metrics.reason_label("yet another new reason") == "other"


@pytest.mark.parametrize(
    ("row", "state"),
    [
        ({"failing": True}, "paused"),
        ({"in_use": False, "pending": 0, "dead_letters": 0}, "unused"),
        ({"failed": {"hour": 3}, "delivered": {"hour": 0}}, "failing"),
        ({"failed": {"hour": 3}, "delivered": {"hour": 1}}, "healthy"),
    ],
)
def test_destination_states(row: dict[str, Any], state: str) -> None:
    base = {"failing": False, "in_use": True, "pending": 1, "dead_letters": 0,
            "failed": {"hour": 0}, "delivered": {"hour": 0}}  # fmt: skip
    assert destination_state({**base, **row}) == state
