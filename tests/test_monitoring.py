"""Monitoring: the shipped alert rules and dashboard use metrics a live server really exports,
`promtool` accepts the rules, and webhook alerts come once per incident.

A real `tagserver serve` delivers to a fake Graph API that refuses the token, so the delivery,
error-class and dead-letter metrics have samples when /metrics is scraped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fakes.graph import FakeGraph
from fakes.vendor import FakeVendor
from support import ServerProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DASHBOARD = ROOT / "deploy" / "grafana" / "tagserver.json"
PIXEL = "1122334455"
TOKEN = "EAAexpiredTOKEN0000secret"
AUTH = {"Authorization": "Bearer test-key"}
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"
PROMETHEUS_OWN = {"up"}  # series Prometheus makes itself for every scrape target

# -- reading metric names out of PromQL

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_NAME_REGEX = re.compile(r'__name__\s*=~\s*"((?:[^"\\]|\\.)*)"')
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?")


def promql_names(expr: str) -> tuple[set[str], set[str]]:
    """The metric names an expression selects, and the `__name__=~` regexes it uses."""
    regexes = set(_NAME_REGEX.findall(expr))
    text = _MATCHERS.sub(" ", expr)  # label matchers ({...}), after taking __name__ regexes
    text = _STRING.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for name, call in _IDENT.findall(text):
        if call or name.lower() in KEYWORDS:
            continue  # a function (rate, sum …) or an operator keyword
        names.add(name)
    return names, regexes


def test_promql_names_are_read_right() -> None:
    names, regexes = promql_names(
        'sum by (destination) (rate(tagserver_deliveries_total{outcome!="delivered"}[10m])) > 0'
        " unless on (destination) max(tagserver_outbox_pending offset 1d) and up == 0"
        ' / sum(rate({__name__=~"tagserver_.*_sum"}[1h]))'
    )
    assert names == {"tagserver_deliveries_total", "tagserver_outbox_pending", "up"}
    assert regexes == {"tagserver_.*_sum"}


def exported_names(text: str) -> set[str]:
    """Every series name /metrics can show: samples, and each declared family with its
    suffixes (a labelled family has no sample until something is counted)."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            names.add(name)
            suffixes = {
                "counter": ("_total", "_created"),
                "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created"),
            }.get(kind, ())
            names.update(name + s for s in suffixes)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def alert_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(ALERTS.read_text())
    return [(rule["alert"], rule["expr"]) for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]


def meta_container() -> dict[str, Any]:
    return json.loads((ROOT / "container.json").read_text())


def purchase(event_id: str) -> dict[str, Any]:
    return {
        "event_name": "purchase", "event_id": event_id, "user_agent": UA,
        "ip_override": "203.0.113.7", "page_location": "https://www.shop.test/thanks",
        "value": 10, "currency": "EUR", "user_data": {"email_address": "jane@example.com"},
    }  # fmt: skip


def meta_env(graph: FakeGraph, **extra: str) -> dict[str, str]:
    return {
        "META_PIXEL_ID": PIXEL,
        "META_ACCESS_TOKEN": TOKEN,
        "TAGSERVER_META_GRAPH_URL": graph.url,
        "TAGSERVER_RETRY_BASE_SECONDS": "0.05",
        "TAGSERVER_RETRY_CAP_SECONDS": "0.2",
        **extra,
    }


def dead_letters(server: ServerProcess) -> int:
    text = httpx.get(server.url + "/metrics", timeout=5).text
    found = re.findall(r"^tagserver_outbox_dead_letters\{[^}]*\} (\S+)$", text, re.M)
    return int(sum(float(v) for v in found))


# -- the rules and the dashboard against a live server


def test_every_metric_in_the_alerts_and_the_dashboard_is_exported(tmp_path: Path) -> None:
    expressions = alert_expressions() + dashboard_expressions()
    assert len(alert_expressions()) >= 9
    with FakeGraph(token="the-new-one", pixel_ids={PIXEL}, mode="invalid_token") as graph:
        container = meta_container()
        with ServerProcess(tmp_path, container, env=meta_env(graph)) as server:
            r = httpx.post(server.url + "/api/events", json=purchase("m-1"), headers=AUTH)
            assert r.status_code == 200, r.text
            wait_until(lambda: dead_letters(server) == 1, timeout=15)
            text = httpx.get(server.url + "/metrics", timeout=5).text
    exported = exported_names(text)
    assert "tagserver_delivery_errors_total" in exported  # counted, so it has a sample
    assert re.search(r'tagserver_delivery_errors_total\{[^}]*error_class="auth"', text)
    assert TOKEN not in text
    missing = []
    for where, expr in expressions:
        names, regexes = promql_names(expr)
        assert names or regexes, f"{where}: no metric found in {expr!r}"
        for name in names - exported - PROMETHEUS_OWN:
            missing.append(f"{where}: {name}")
        for regex in regexes:
            if not any(re.fullmatch(regex, name) for name in exported):
                missing.append(f"{where}: nothing matches {regex!r}")
    assert not missing, "metrics used but not exported:\n" + "\n".join(missing)


def test_promtool_accepts_the_rules() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip(
            "promtool not installed (Debian package prometheus; scripts/test.sh installs it)"
        )
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_dashboard_is_an_importable_grafana_dashboard() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "tagserver" and dashboard["panels"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert all(t["expr"].strip() for t in panel["targets"])


# -- webhook alerts


def alert_texts(hook: FakeVendor) -> list[str]:
    return [r.json()["text"] for r in list(hook.received)]


def test_webhook_alerts_once_per_incident(tmp_path: Path) -> None:
    with (
        FakeVendor() as hook,
        FakeGraph(token="the-new-one", pixel_ids={PIXEL}, mode="invalid_token") as graph,
    ):
        hook_url = hook.url + "/services/T000/B000/hook-secret-0042"
        env = meta_env(graph, TAGSERVER_ALERT_WEBHOOK_URL=hook_url)
        container = meta_container()
        with ServerProcess(tmp_path, container, env=env, workers=2) as server:
            # an expired token: every event is dead-lettered, again and again
            for i in range(4):
                r = httpx.post(server.url + "/api/events", json=purchase(f"w-{i}"), headers=AUTH)
                assert r.status_code == 200, r.text
                time.sleep(0.3)
            wait_until(lambda: dead_letters(server) == 4, timeout=15)
            texts = wait_until(lambda: len(alert_texts(hook)) >= 2 and alert_texts(hook), 10)
            time.sleep(1.0)  # nothing more comes: one message per incident, not per event
            texts = alert_texts(hook)
            assert len(texts) == 2, texts
            token_alert = next(t for t in texts if "refused the access token" in t)
            assert "code 190" in token_alert
            assert any("is dead-lettering" in t for t in texts)
            for text in texts:
                assert TOKEN not in text and "jane@example.com" not in text

            # fixed at Meta's end: delivered again, so the incidents end …
            graph.token, graph.mode = TOKEN, "ok"
            r = httpx.post(server.url + "/api/events", json=purchase("w-ok"), headers=AUTH)
            wait_until(lambda: any(req.accepted for req in list(graph.requests)), timeout=15)
            time.sleep(0.5)
            # … and a new failure is a new incident, told again (once)
            graph.mode = "invalid_token"
            for i in range(2):
                httpx.post(server.url + "/api/events", json=purchase(f"x-{i}"), headers=AUTH)
                time.sleep(0.3)
            wait_until(lambda: len(alert_texts(hook)) >= 4, timeout=15)
            time.sleep(1.0)
            assert len(alert_texts(hook)) == 4, alert_texts(hook)

            # a refused edit of the container: told once, however often the file is touched
            server.container_path.write_text('{"name": "broken", "tags": [')
            wait_until(lambda: len(alert_texts(hook)) == 5, timeout=10)
            for _ in range(3):
                time.sleep(0.3)
                server.container_path.write_text('{"name": "broken", "tags": [')
            time.sleep(1.0)
            texts = alert_texts(hook)
            assert len(texts) == 5, texts
            assert "was refused; the running container stays" in texts[-1]
            logs = server.logs()
        assert "hook-secret-0042" not in logs  # the URL is a secret
        assert all(r.path == "/services/T000/B000/hook-secret-0042" for r in hook.received)
        assert all(r.headers.get("content-type") == "application/json" for r in hook.received)


def test_a_webhook_url_that_is_not_one_is_refused_without_repeating_it() -> None:
    from tagserver.settings import Settings, SettingsError

    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"TAGSERVER_ALERT_WEBHOOK_URL": "hooks.example/T0/B0/secret-part-77"})
    assert "TAGSERVER_ALERT_WEBHOOK_URL" in str(refused.value)
    assert "secret-part-77" not in str(refused.value)
    shown = Settings.from_env({"TAGSERVER_ALERT_WEBHOOK_URL": "https://hooks.example/x-secret-9"})
    assert "https://hooks.example/x-secret-9" in shown.secret_values()


def test_every_vendor_reports_a_refused_token_as_auth(tmp_path: Path) -> None:
    """The invalid-token alert reads error_class="auth": TikTok says so with HTTP 200 and its
    own code, Pinterest and Snapchat with 401."""
    from fakes.capi import FakePinterest, FakeSnapchat, FakeTikTok

    with (
        FakeTikTok(token="tt-right", pixel_code="CABC123DEF456") as tt,
        FakePinterest(token="pin-right") as pin,
        FakeSnapchat(token="snap-right") as snap,
    ):
        env = {
            "TIKTOK_PIXEL_CODE": "CABC123DEF456", "TIKTOK_ACCESS_TOKEN": "tt-expired",
            "PINTEREST_AD_ACCOUNT_ID": "549755885175", "PINTEREST_ACCESS_TOKEN": "pin-expired",
            "SNAPCHAT_PIXEL_ID": "1ec32188-754e-4be2-8e55-c949a984a39f",
            "SNAPCHAT_ACCESS_TOKEN": "snap-expired",
            "TAGSERVER_TIKTOK_API_URL": tt.url, "TAGSERVER_PINTEREST_API_URL": pin.url,
            "TAGSERVER_SNAPCHAT_API_URL": snap.url,
        }  # fmt: skip
        with ServerProcess(tmp_path, ROOT / "container.json", env=env) as server:
            r = httpx.post(server.url + "/api/events", json=purchase("v-1"), headers=AUTH)
            assert r.status_code == 200, r.text
            wait_until(lambda: dead_letters(server) == 3, timeout=15)
            text = httpx.get(server.url + "/metrics", timeout=5).text
    refused = set(re.findall(r'tagserver_delivery_errors_total\{[^}]*tag_type="(\w+)"', text))
    assert refused == {"tiktok_events", "pinterest_capi", "snapchat_capi"}
    assert not re.search(r'tagserver_delivery_errors_total\{[^}]*error_class="(?!auth)', text)
