"""The real server process: events in, fired tags out, client IP from trusted proxies only."""

import json

import httpx
from support import ServerProcess, minimal_container

AUTH = {"Authorization": "Bearer test-key"}


def ip_logging_container():
    # the request's address is the customer's only when the events API client opts in
    container = minimal_container()
    container["clients"][0]["params"] = {"use_request_ip_and_user_agent": True}
    container["tags"][0]["params"] = {
        "fields": {"ip": "{{client_ip}}"},
        "include_event": False,
        "ip_addresses": "full",  # (the log tag masks the host part by default)
    }
    return container


def logged_ips(server):
    return [
        json.loads(line.split(": ", 1)[1])["fields"]["ip"]
        for line in server.logs().splitlines()
        if "tagserver.tag.log" in line
    ]


def test_real_server_runs_events_and_logs_fired_tags(tmp_path):
    with ServerProcess(tmp_path, minimal_container()) as server:
        r = httpx.post(server.url + "/api/events", json={"event_name": "signup"}, headers=AUTH)
        assert r.status_code == 200
        assert r.json()["results"][0]["tags_fired"] == ["log_all"]
    assert '"event_name":"signup"' in server.logs()


def test_forwarded_for_is_believed_only_from_trusted_proxies(tmp_path):
    forwarded = {**AUTH, "X-Forwarded-For": "198.51.100.23, 127.0.0.1"}
    (tmp_path / "a").mkdir()
    with ServerProcess(tmp_path / "a", ip_logging_container()) as server:
        httpx.post(server.url + "/api/events", json={"event_name": "e"}, headers=forwarded)
    assert logged_ips(server) == ["198.51.100.23"]

    (tmp_path / "b").mkdir()
    env = {"TAGSERVER_TRUSTED_PROXIES": "192.0.2.0/24"}
    with ServerProcess(tmp_path / "b", ip_logging_container(), env=env) as server:
        httpx.post(server.url + "/api/events", json={"event_name": "e"}, headers=forwarded)
    assert logged_ips(server) == ["127.0.0.1"]
