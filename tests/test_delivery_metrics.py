"""GET /metrics: what an operator's Prometheus scrapes, with one worker and with several."""

from __future__ import annotations

import time

import httpx
import pytest
from fakes.vendor import Answer, FakeVendor, webhook_tag
from prometheus_client.parser import text_string_to_metric_families
from support import ServerProcess, app_client, minimal_container, wait_until

AUTH = {"Authorization": "Bearer test-key"}
FAST = {"retry_base_seconds": 0.05, "retry_cap_seconds": 0.2}


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(metrics: dict, name: str, **labels: str) -> float | None:
    """The sample with these labels (others ignored), summed when several match."""
    found = [v for (n, ls), v in metrics.items() if n == name and set(labels.items()) <= set(ls)]
    return sum(found) if found else None


def test_metrics_show_hits_tags_outbox_and_deliveries(tmp_path):
    down = FakeVendor()
    try:
        tags = [webhook_tag(down.url + "/hook"), {"name": "log_all", "type": "log", "fire_on": ["all"], "paused": True}]  # fmt: skip
        with app_client(tmp_path, minimal_container(tags=tags), **FAST) as client:
            before = samples(client.get("/metrics").text)
            for i in range(3):
                client.post("/api/events", json={"event_name": "buy", "event_id": f"e{i}"}, headers=AUTH)  # fmt: skip
            client.post("/api/events", json={}, headers=AUTH)  # 400
            time.sleep(0.3)  # a few failed attempts
            r = client.get("/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            after = samples(r.text)

            def delta(name, **labels):
                return (value(after, name, **labels) or 0) - (value(before, name, **labels) or 0)

            assert delta("tagserver_hits_total", client="events_api", status="200") == 3
            assert delta("tagserver_hits_total", client="events_api", status="400") == 1
            assert delta("tagserver_events_total", client="events_api") == 3
            assert delta("tagserver_tag_results_total", tag="hook", status="fired") == 3
            assert delta("tagserver_tag_results_total", tag="log_all", status="paused") == 3
            assert delta("tagserver_deliveries_total", outcome="retry") >= 3
            assert delta("tagserver_vendor_seconds_count", tag_type="http_request") >= 3
            assert delta("tagserver_hit_seconds_count") == 4
            assert delta("tagserver_outbox_commit_seconds_count") >= 3
            (destination,) = {
                dict(ls)["destination"] for (n, ls) in after if n == "tagserver_outbox_pending"
            }
            assert destination.startswith("http_request:127.0.0.1:")
            assert value(after, "tagserver_outbox_pending") == 3
            assert value(after, "tagserver_outbox_oldest_age_seconds") >= 0.2
            assert value(after, "tagserver_outbox_dead_letters") == 0

            down.up()
            down.wait_for(3)
            wait_until(lambda: "tagserver_outbox_pending{" not in client.get("/metrics").text)
            final = samples(client.get("/metrics").text)
            assert (value(final, "tagserver_deliveries_total", outcome="delivered") or 0) - (
                value(before, "tagserver_deliveries_total", outcome="delivered") or 0
            ) == 3
    finally:
        down.close()


@pytest.mark.slow
def test_several_workers_deliver_each_message_once_and_metrics_sum_them(tmp_path):
    with FakeVendor() as vendor:
        vendor.respond(lambda r: Answer(delay=0.002))
        env = {
            "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
            "TAGSERVER_RETRY_CAP_SECONDS": "0.2",
            # a worker that stops answering on a loaded machine (uvicorn's supervisor replaces
            # it) gives its claims back after the lease: short here, so the wait covers it
            "TAGSERVER_OUTBOX_LEASE_SECONDS": "6",
        }
        container = minimal_container(tags=[webhook_tag(vendor.url + "/hook")])
        server = ServerProcess(tmp_path, container, env=env, workers=3)
        new_connections = httpx.Limits(max_keepalive_connections=0)  # spread over the workers
        with (
            server,
            httpx.Client(base_url=server.url, headers=AUTH, limits=new_connections) as http,
        ):
            for n in range(40):
                events = [{"event_name": "buy", "event_id": f"w{n}-{i}"} for i in range(5)]
                assert http.post("/api/events", json={"events": events}).status_code == 200
            vendor.wait_for(200, timeout=30)
            time.sleep(0.3)
            hits = set()
            for _ in range(6):  # whichever worker answers, the numbers are the sums
                scraped = samples(http.get("/metrics").text)
                hits.add(value(scraped, "tagserver_hits_total", status="200"))
                assert value(scraped, "tagserver_deliveries_total", outcome="delivered") == 200
                assert value(scraped, "tagserver_outbox_pending") is None  # all delivered
        sent = [r.json()["event_id"] for r in vendor.received]
        assert len(sent) == 200 and len(set(sent)) == 200
        assert hits == {40.0}
