from support import ServerProcess, minimal_container

import httpx


def test_real_server_runs_events_and_logs_fired_tags(tmp_path):
    with ServerProcess(tmp_path, minimal_container()) as server:
        r = httpx.post(server.url + "/api/events", json={"event_name": "signup"},
                       headers={"Authorization": "Bearer test-key"})
        assert r.status_code == 200
        assert r.json()["results"][0]["tags_fired"] == ["log_all"]
    assert '"event_name":"signup"' in server.logs()
