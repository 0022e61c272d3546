"""deploy/: every file parses, validates where a validator works offline, and promises what
tagserver really does (setting names, ports, probes, grace periods, volumes).

Compose is validated against the Compose Specification's JSON schema (vendored by
check-jsonschema), the Kubernetes manifests against Kubernetes' own schemas
(kubernetes-validate ships them), the systemd unit with `systemd-analyze verify`, the
Caddyfiles with `caddy adapt`/`caddy validate` and the nginx example with `nginx -t`, each
when the tool is installed (scripts/test.sh installs them on Debian).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from dockerfile import IMAGE
from support import LOOPBACK, ServerProcess, free_port, minimal_container, wait_until

from tagserver.cli.settings import settings_table
from tagserver.container.model import load
from tagserver.plugins import load_registry
from tagserver.settings import PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
SETTINGS = {name for name, _, _ in settings_table()}
CONTAINER_ENV = {
    v["env"] for v in json.loads((ROOT / "container.json").read_text())["variables"]
    if v["type"] == "env"
}  # fmt: skip
DEFAULT_GRACE = Settings().shutdown_grace_seconds


def unknown_names(names: set[str]) -> set[str]:
    """Environment names tagserver would not read: misspelt settings, stray variables."""
    return {
        n
        for n in names
        if not (n in SETTINGS or n in CONTAINER_ENV)
        and (n.startswith(PREFIX) or n.startswith("META_"))
    }


def duration(text: str) -> float:
    """`30s`, `1m30s`, `35s` (compose, systemd) → seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts, text
    return sum(float(n) * units[u] for n, u in parts)


def test_every_deploy_file_is_commented_and_every_yaml_parses():
    paths = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(paths) >= 15
    for path in paths:
        if path.suffix == ".json":  # JSON has no comments: a Grafana dashboard says it here
            assert json.loads(path.read_text()).get("description"), f"{path} has no description"
            continue
        assert path.read_text().lstrip().startswith("#"), f"{path} has no opening comment"
        if path.suffix == ".yaml":
            documents = list(yaml.safe_load_all(path.read_text()))
            assert documents and all(isinstance(d, dict) for d in documents), path


# -- compose -----------------------------------------------------------------------------------


COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
TAGSERVERS = {
    name: service
    for name, service in COMPOSE["services"].items()
    if service.get("image", "").startswith("tagserver")
}


def test_compose_validates_against_the_compose_specification():
    schema_file = files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(COMPOSE, schema)
    broken = {**COMPOSE, "services": {**COMPOSE["services"], "x": {"restart": ["always"]}}}
    with pytest.raises(jsonschema.ValidationError):  # the validator really looks
        jsonschema.validate(broken, schema)


def test_compose_runs_two_instances_on_shared_postgresql_and_redis():
    assert len(TAGSERVERS) == 2
    envs = [service["environment"] for service in TAGSERVERS.values()]
    assert envs[0] == envs[1]  # same settings, same secret key: interchangeable instances
    env = envs[0]
    assert not unknown_names(set(env))
    assert env["TAGSERVER_OUTBOX_URL"].startswith("postgresql://")
    assert "@postgres:5432/" in env["TAGSERVER_OUTBOX_URL"] and "postgres" in COMPOSE["services"]
    assert "@redis:6379/" in env["TAGSERVER_REDIS_URL"] and "redis" in COMPOSE["services"]
    for name in ("TAGSERVER_SECRET_KEY", "TAGSERVER_PREVIEW_PASSWORD"):
        assert env[name].startswith("${") and ":?" in env[name]  # compose refuses to start empty
    grace = float(env["TAGSERVER_SHUTDOWN_GRACE_SECONDS"])
    caddy = COMPOSE["services"]["caddy"]
    caddy_ip = caddy["networks"]["internal"]["ipv4_address"]
    assert env["TAGSERVER_TRUSTED_PROXIES"] == f"{caddy_ip}/32"
    for name, service in TAGSERVERS.items():
        assert duration(service["stop_grace_period"]) > grace, name
        assert service["healthcheck"]["test"][1:] == IMAGE.exec_form("HEALTHCHECK"), name
        assert service["depends_on"]["postgres"] == {"condition": "service_healthy"}
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        # a directory mount (hot reload sees edits), and each instance its own data volume
        assert mounts[str(Path(env["TAGSERVER_CONTAINER"]).parent)] == "./container"
        assert mounts["/data"] == f"{name}-data" and f"{name}-data" in COMPOSE["volumes"]
    assert {"80:80", "443:443"} <= set(caddy["ports"])
    assert set(caddy["depends_on"]) == set(TAGSERVERS)
    assert "./compose.Caddyfile:/etc/caddy/Caddyfile:ro" in caddy["volumes"]


def test_env_example_lists_every_variable_compose_requires():
    text = (DEPLOY / "compose.yaml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {line.split("=")[0] for line in (DEPLOY / "env.example").read_text().splitlines()
               if line and not line.startswith("#")}  # fmt: skip
    assert required and required <= example
    assert set(re.findall(r"\$\{(\w+):-", text)) <= example


# -- Caddy and nginx -----------------------------------------------------------------------


def caddy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("caddy is not installed (Debian: apt-get install caddy)")
    environ = {**os.environ, "HOME": "/nonexistent", **(env or {})}
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, timeout=60, env=environ, cwd=DEPLOY
    )


CADDY_ENV = {"TAGGING_DOMAIN": "sgtm.shop.example", "ACME_EMAIL": "ops@shop.example"}


@pytest.mark.parametrize("path", ["compose.Caddyfile", "systemd/Caddyfile"])
def test_caddyfiles_validate_and_proxy_to_tagserver_with_health_checks(path):
    adapted = caddy("adapt", "--config", path, "--adapter", "caddyfile", env=CADDY_ENV)
    assert adapted.returncode == 0, adapted.stderr
    assert '"level":"warn"' not in adapted.stderr, adapted.stderr  # formatted as `caddy fmt`
    config = json.loads(adapted.stdout)
    server = next(iter(config["apps"]["http"]["servers"].values()))
    route = server["routes"][0]
    assert route["match"] == [{"host": ["sgtm.shop.example"]}]  # automatic HTTPS for it
    proxy = route["handle"][0]["routes"][0]["handle"][0]
    assert proxy["handler"] == "reverse_proxy"
    assert proxy["health_checks"]["active"]["uri"] == "/healthz"
    # the preview's live stream is flushed by Caddy itself (text/event-stream); flushing
    # every answer broke hits' answers under load
    assert "flush_interval" not in proxy
    upstreams = [u["dial"] for u in proxy["upstreams"]]
    if path == "compose.Caddyfile":
        port = TAGSERVERS["tagserver-1"]["environment"]["TAGSERVER_PORT"]
        assert upstreams == [f"{name}:{port}" for name in TAGSERVERS]
        assert config["apps"]["tls"]["automation"]["policies"][0]["subjects"] == [
            "sgtm.shop.example"
        ]
    else:
        assert upstreams == [f"127.0.0.1:{UNIT_ENV['TAGSERVER_PORT']}"]
    validated = caddy("validate", "--config", path, "--adapter", "caddyfile", env=CADDY_ENV)
    assert validated.returncode == 0 and "Valid configuration" in validated.stdout + (
        validated.stderr
    ), validated.stderr


def test_nginx_example_passes_nginx_t(tmp_path):
    nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")
    openssl = shutil.which("openssl")
    if nginx is None or openssl is None:
        pytest.skip("nginx or openssl is not installed (Debian: apt-get install nginx openssl)")
    if os.geteuid() != 0:
        pytest.skip("nginx -t needs root to read its modules and switch user")
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=sgtm.shop.example", "-keyout", str(tmp_path / "key.pem"),
         "-out", str(tmp_path / "cert.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    site = (DEPLOY / "systemd" / "nginx.conf").read_text()
    live = "/etc/letsencrypt/live/sgtm.shop.example"
    assert f"{live}/fullchain.pem" in site and f"{live}/privkey.pem" in site
    site = site.replace(f"{live}/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace(f"{live}/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n  access_log off;\n  client_body_temp_path {tmp_path};\n"
        f"  include {tmp_path}/site.conf;\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr and "[warn]" not in result.stderr
    assert f"server 127.0.0.1:{UNIT_ENV['TAGSERVER_PORT']};" in site


# -- systemd ---------------------------------------------------------------------------------


UNIT_TEXT = (DEPLOY / "systemd" / "tagserver.service").read_text()
UNIT = [
    tuple(line.split("=", 1))
    for line in UNIT_TEXT.splitlines()
    if "=" in line and not line.startswith("#")
]
UNIT_ENV = dict(value.split("=", 1) for key, value in UNIT if key == "Environment")


def test_systemd_unit_is_hardened_and_waits_longer_than_the_grace():
    settings = dict(UNIT)
    assert settings["ExecStart"] == "/opt/tagserver/bin/tagserver serve"
    for key, value in {
        "DynamicUser": "yes", "StateDirectory": "tagserver", "ProtectSystem": "strict",
        "NoNewPrivileges": "yes", "ProtectHome": "yes", "PrivateTmp": "yes",
        "CapabilityBoundingSet": "", "KillMode": "mixed", "KillSignal": "SIGTERM",
    }.items():  # fmt: skip
        assert settings.get(key) == value, key
    assert UNIT_ENV["TAGSERVER_DATA_DIR"] == "%S/tagserver"  # = StateDirectory
    assert UNIT_ENV["TAGSERVER_HOST"] == "127.0.0.1"  # the proxy on this machine is in front
    assert duration(settings["TimeoutStopSec"]) > float(
        UNIT_ENV["TAGSERVER_SHUTDOWN_GRACE_SECONDS"]
    )
    example = {
        line.split("=")[0]
        for line in (DEPLOY / "systemd" / "tagserver.env").read_text().splitlines()
        if line and not line.startswith("#")
    }
    assert not unknown_names(set(UNIT_ENV) | example)


def systemd_analyze(*args: str, unit: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (Debian: apt-get install systemd)")
    return subprocess.run([binary, *args, str(unit)], capture_output=True, text=True, timeout=60)


def local_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this checkout's `tagserver` (verify checks that
    the program exists)."""
    program = shutil.which("tagserver", path=str(Path(sys.executable).parent))
    assert program is not None
    unit = tmp_path / "tagserver.service"
    unit.write_text(UNIT_TEXT.replace("/opt/tagserver/bin/tagserver", program))
    return unit


def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path):
    unit = local_unit(tmp_path)
    result = systemd_analyze("verify", unit=unit)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    typo = tmp_path / "typo" / "tagserver.service"
    typo.parent.mkdir()
    typo.write_text(unit.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict"))
    assert "Unknown key" in systemd_analyze("verify", unit=typo).stderr  # it really checks


def test_systemd_security_exposure_is_low(tmp_path):
    result = systemd_analyze(
        "security", "--offline=true", "--threshold=20", unit=local_unit(tmp_path)
    )
    if "--offline" in result.stderr and "unrecognized" in result.stderr:
        pytest.skip("this systemd-analyze has no --offline")
    assert result.returncode == 0, result.stdout[-500:] + result.stderr
    assert re.search(r"Overall exposure level for tagserver.service: [01]\.\d OK", result.stdout)


# -- Kubernetes ------------------------------------------------------------------------------


def k8s(name: str) -> dict[str, Any]:
    return yaml.safe_load((K8S / name).read_text())


DEPLOYMENT = k8s("deployment.yaml")
POD = DEPLOYMENT["spec"]["template"]["spec"]
CONTAINER = POD["containers"][0]
POD_ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}


@pytest.mark.parametrize("version", ["1.37.0", "1.30.0"])
def test_kubernetes_manifests_validate_against_the_kubernetes_schemas(version):
    import kubernetes_validate

    manifests = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert manifests == sorted(k8s("kustomization.yaml")["resources"])
    for name in manifests:
        for resource in yaml.safe_load_all((K8S / name).read_text()):
            kubernetes_validate.validate(resource, version, strict=True)
    typo = json.loads(json.dumps(DEPLOYMENT))
    typo["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator really looks
        kubernetes_validate.validate(typo, version, strict=True)


def test_deployment_probes_grace_and_user_match_the_image():
    port = CONTAINER["ports"][0]
    assert port["name"] == "http" and port["containerPort"] == int(POD_ENV["TAGSERVER_PORT"])
    assert int(POD_ENV["TAGSERVER_PORT"]) == int(IMAGE.env()["TAGSERVER_PORT"])
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert CONTAINER[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    pre_stop = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = float(POD_ENV.get("TAGSERVER_SHUTDOWN_GRACE_SECONDS", DEFAULT_GRACE))
    assert POD["terminationGracePeriodSeconds"] > float(pre_stop[1]) + grace
    assert str(POD["securityContext"]["runAsUser"]) == IMAGE.last("USER").split(":")[0]
    assert POD["securityContext"]["runAsNonRoot"] is True
    assert not unknown_names(set(POD_ENV) | set(k8s("secret.yaml")["stringData"]))
    assert DEPLOYMENT["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in DEPLOYMENT["spec"]  # the HPA owns the count


def test_container_json_comes_from_a_configmap_directory_mount():
    configmap = k8s("configmap.yaml")
    mounts = {m["name"]: m for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v for v in POD["volumes"]}
    mount = mounts["container"]
    assert "subPath" not in mount  # subPath mounts never see ConfigMap updates
    assert mount["mountPath"] == str(Path(POD_ENV["TAGSERVER_CONTAINER"]).parent)
    assert volumes["container"]["configMap"]["name"] == configmap["metadata"]["name"]
    assert Path(POD_ENV["TAGSERVER_CONTAINER"]).name in configmap["data"]
    assert mounts["data"]["mountPath"] == POD_ENV["TAGSERVER_DATA_DIR"]
    # the shipped container, as the ConfigMap carries it, is a valid one and the current one
    data = json.loads(configmap["data"]["container.json"])
    assert load(data, load_registry(), Settings()).name == "default"
    assert data == json.loads((ROOT / "container.json").read_text()), (
        "deploy/kubernetes/configmap.yaml carries an old container.json: paste the current one"
    )


def test_service_ingress_pdb_and_hpa_point_at_the_deployment():
    labels = DEPLOYMENT["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = k8s("service.yaml")
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    ingress = k8s("ingress.yaml")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"name": "http"}}
    assert ingress["spec"]["tls"][0]["hosts"] == [ingress["spec"]["rules"][0]["host"]]
    pdb = k8s("pdb.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    hpa = k8s("hpa.yaml")
    assert hpa["spec"]["scaleTargetRef"]["name"] == DEPLOYMENT["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2 > pdb["spec"]["minAvailable"]
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert "cpu" in CONTAINER["resources"]["requests"]  # utilization is of the request


# -- compose's Caddy, for real, in front of two real servers --------------------------------


def logged_ips(server: ServerProcess) -> list[str]:
    return [
        json.loads(line.split(": ", 1)[1])["fields"]["ip"]
        for line in server.logs().splitlines()
        if "tagserver.tag.log" in line
    ]


@pytest.mark.slow
def test_compose_caddy_balances_two_instances_and_skips_one_that_is_down(tmp_path):
    """compose.Caddyfile as it is, but on loopback: plain http on a free port for the site
    (no certificate here), the two upstream names mapped to two `tagserver serve` processes,
    and no admin endpoint (other Caddys may run on this machine)."""
    binary = shutil.which("caddy")
    if binary is None:
        pytest.skip("caddy is not installed (Debian: apt-get install caddy)")
    container = minimal_container()
    # the request's address is the customer's only when the events API client opts in
    container["clients"][0]["params"] = {"use_request_ip_and_user_agent": True}
    container["tags"][0]["params"] = {
        "fields": {"ip": "{{client_ip}}"},
        "include_event": False,
        "ip_addresses": "full",  # (the log tag masks the host part by default)
    }
    servers = []
    for name in TAGSERVERS:
        (tmp_path / name).mkdir()
        servers.append(ServerProcess(tmp_path / name, container).start())
    caddy_port = free_port()
    text = (DEPLOY / "compose.Caddyfile").read_text()
    text = text.replace("{\n", "{\n\tadmin off\n", 1)
    for name, server in zip(TAGSERVERS, servers, strict=True):
        text = text.replace(f"{name}:8080", f"{LOOPBACK}:{server.port}")
    (tmp_path / "Caddyfile").write_text(text)
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path),
           "XDG_CONFIG_HOME": str(tmp_path), "ACME_EMAIL": "ops@shop.example",
           "TAGGING_DOMAIN": f"http://{LOOPBACK}:{caddy_port}"}  # fmt: skip
    proxy = subprocess.Popen(
        [binary, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "caddy.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{caddy_port}/api/events"
    spoofed = {"Authorization": "Bearer test-key", "X-Forwarded-For": "198.51.100.7"}

    def send(count: int) -> list[int]:
        """Status of each hit; 0 for a broken answer (Caddy's log then says why)."""
        codes = []
        with httpx.Client(timeout=10) as http:
            for _ in range(count):
                try:
                    codes.append(
                        http.post(url, json={"event_name": "e"}, headers=spoofed).status_code
                    )
                except httpx.HTTPError:
                    codes.append(0)
        return codes

    def caddy_errors() -> str:
        lines = (tmp_path / "caddy.log").read_text(errors="replace").splitlines()
        return "\n".join(line[:300] for line in lines if '"level":"error"' in line)

    try:
        wait_until(lambda: _answers(url), timeout=20)
        assert send(40) == [200] * 40, caddy_errors()
        # a server's log lines are written by a thread of their own: wait for all 40
        wait_until(lambda: sum(len(logged_ips(s)) for s in servers) >= 40, timeout=10)
        first, second = (logged_ips(s) for s in servers)
        assert first and second  # both instances took hits
        # Caddy replaced the visitor's own X-Forwarded-For; tagserver believed Caddy's
        assert set(first + second) == {LOOPBACK}

        servers[0].stop()  # one instance goes away: once the health check saw it (every 2 s),
        time.sleep(3.5)  # every hit lands on the other (sooner with Caddy's retry fix, #7546)
        before = len(logged_ips(servers[1]))
        assert send(20) == [200] * 20, caddy_errors()
        wait_until(lambda: len(logged_ips(servers[1])) >= before + 20, timeout=10)
        assert len(logged_ips(servers[1])) == before + 20
    finally:
        proxy.terminate()
        proxy.wait(10)
        for server in servers:
            server.stop()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url.replace("/api/events", "/healthz"), timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_the_units_command_and_environment_run_a_server(tmp_path):
    """ExecStart with the unit's Environment= lines (systemd's %S and %E made local, the port
    a free one): the settings it names are accepted and two workers serve."""
    state, etc = tmp_path / "state", tmp_path / "etc"
    (etc / "tagserver").mkdir(parents=True)
    (etc / "tagserver" / "container.json").write_text(json.dumps(minimal_container()))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    for name, value in UNIT_ENV.items():
        env[name] = value.replace("%S", str(state)).replace("%E", str(etc))
    env["TAGSERVER_PORT"] = str(port)
    program = str(Path(sys.executable).parent / "tagserver")
    command = dict(UNIT)["ExecStart"].replace("/opt/tagserver/bin/tagserver", program).split()
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: _answers(f"http://{LOOPBACK}:{port}/api/events"), timeout=30)
    finally:
        proc.terminate()
        code = proc.wait(30)
    text = log.read_text()
    assert code == 0, text
    assert f"listening on http://127.0.0.1:{port} (2 workers)" in text
    assert f"outbox: SQLite at {state}/tagserver/outbox.sqlite3" in text
