"""The deploy files, checked by their own tools and against each other:
hadolint on the Dockerfile, yamllint on every YAML file, promtool on the
Prometheus configuration as compose mounts it and on the alerts' unit tests
(deploy/prometheus/alerts.test.yml), `haproxy -c` on the HAProxy
file, shellcheck on local-cluster.sh, `herald-gateway check-config` on the
herald.toml files, the Grafana dashboard against a live /metrics, and
compose.yaml against the files it mounts.
"""

import json
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

from conftest import DEPLOY, ROOT, tool

COMPOSE = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
GATEWAYS = ["gateway-1", "gateway-2", "gateway-3"]


def run(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=120, **kwargs)


def test_hadolint_dockerfile():
    result = run(tool("hadolint"), DEPLOY / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) == 2, "a builder stage and a runtime stage"
    assert "cargo build --release --locked -p herald-gateway -p herald-admin-api" in text
    assert re.search(r"^HEALTHCHECK ", text, re.M) and re.search(r"^LABEL ", text, re.M)
    user = re.findall(r"^USER (\S+)", text, re.M)[-1]
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0", "a numeric non-root user"
    assert "ca-certificates.crt" in text
    # The build context: the workspace goes in, the rest stays out.
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line and not line.startswith("#")]
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    assert not set(members) & set(ignored), "cargo --locked needs every workspace member"
    assert {".git", "**/target"} <= set(ignored) and "!deploy/image/" in ignored


def test_yamllint_everything():
    result = run(tool("yamllint"), "--strict", ".", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_shellcheck_local_cluster():
    result = run(tool("shellcheck"), DEPLOY / "local-cluster.sh", ROOT / "scripts" / "test-deploy.sh")
    assert result.returncode == 0, result.stdout


def test_promtool_check_config_as_compose_mounts_it(tmp_path):
    """The same layout as the Prometheus container: the file, its rules and
    the compose target files under targets/."""
    shutil.copy(DEPLOY / "prometheus" / "prometheus.yml", tmp_path)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path)
    shutil.copytree(DEPLOY / "prometheus" / "compose-targets", tmp_path / "targets")
    result = run(tool("promtool"), "check", "config", tmp_path / "prometheus.yml")
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "WARNING" not in output, output
    rules = run(tool("promtool"), "check", "rules", DEPLOY / "prometheus" / "alerts.yml")
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_promtool_alert_unit_tests():
    """Each alert fires on synthetic series of a cluster in trouble and
    stays quiet on a healthy one (deploy/prometheus/alerts.test.yml)."""
    result = run(tool("promtool"), "test", "rules", "alerts.test.yml", cwd=DEPLOY / "prometheus")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case():
    """alerts.test.yml covers every alert both ways: a case where it fires,
    and one where it stays quiet (no alert expected, or, for a per-instance
    alert, an input instance that the expected alerts leave out)."""
    alerts = {r["alert"] for g in yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
              for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "alerts.test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires, quiet = set(), set()
    for group in tests["tests"]:
        instances = {i for s in group["input_series"] for i in re.findall(r'instance="([^"]+)"', s["series"])}
        for case in group["alert_rule_test"]:
            expected = case.get("exp_alerts") or []
            if expected:
                fires.add(case["alertname"])
            alerted = {a["exp_labels"].get("instance") for a in expected}
            if not expected or (None not in alerted and instances - alerted):
                quiet.add(case["alertname"])
    assert fires == alerts, f"alerts with no firing case: {alerts - fires}"
    assert quiet == alerts, f"alerts with no quiet case: {alerts - quiet}"


def test_operations_md_shows_the_shipped_alerts():
    """docs/operations.md#alerts prints the rules; they are alerts.yml's."""
    text = (ROOT / "docs" / "operations.md").read_text()
    section = text.split("\n## Alerts\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    assert yaml.safe_load(block) == yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())


LOCAL_LB_ENV = {"HERALD_GW1": "127.0.0.1:18010", "HERALD_GW2": "127.0.0.1:18020", "HERALD_GW3": "127.0.0.1:18030",
                "HERALD_LB_BIND": "127.0.0.1:18000", "HERALD_LB_STATS_BIND": "127.0.0.1:18001"}


@pytest.mark.parametrize("where", ["compose", "local"])
def test_haproxy_config_is_valid_and_clean(where):
    lb_env = COMPOSE["services"]["haproxy"]["environment"] if where == "compose" else LOCAL_LB_ENV
    result = run(tool("haproxy"), "-c", "-f", DEPLOY / "haproxy" / "haproxy.cfg",
                 env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **lb_env})
    output = result.stdout + result.stderr
    warnings = [line for line in output.splitlines() if "[WARNING]" in line or "[ALERT]" in line]
    if where == "compose":
        # The compose service names resolve only inside compose's network:
        # HAProxy starts anyway and resolves them at run time.
        warnings = [w for w in warnings if not re.search(r"could not resolve address 'gateway-[123]'", w)]
    assert result.returncode == 0 and not warnings, output


def test_haproxy_routes_websockets_as_herald_needs():
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    for line in ["balance leastconn", "http-check send meth GET uri /readyz", "timeout tunnel 1h",
                 "retry-on conn-failure empty-response 503", "option redispatch"]:
        assert line in cfg, line
    assert not re.search(r"^\s*(cookie|stick|balance source|hash-type)", cfg, re.M), "no stickiness"
    assert "on-marked-down shutdown-sessions" not in cfg, "established WebSockets are never cut"


@pytest.mark.parametrize("path", ["deploy/herald.toml", "deploy/image/herald.toml"])
def test_herald_toml_files_pass_check_config(herald_bin, tmp_path, path):
    env = {"PATH": "/usr/bin:/bin", "HERALD_JWT__HS256_SECRET": "0123456789abcdef0123", "HERALD_ADMIN__API_KEYS": "k"}
    result = run(herald_bin / "herald-gateway", "check-config", "--config", ROOT / path, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "herald.json").read_text())


def dashboard_exprs() -> list[str]:
    board = dashboard()
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if v.get("definition")]
    return exprs


def test_dashboard_queries_name_exported_metrics(live_metrics):
    exported = {line.split("{")[0].split(" ")[0] for line in live_metrics.splitlines()
                if line and not line.startswith("#")}
    used = set()
    for expr in dashboard_exprs():
        names = set(re.findall(r"\b((?:herald|process)_[a-z0-9_]+)", expr)) | ({"up"} if re.search(r"\bup\{", expr) else set())
        assert names, f"no metric in {expr!r}"
        unknown = names - exported - {"up"}
        assert not unknown, f"{expr!r} names metrics the gateway does not export: {unknown}"
        used |= names
    # What the dashboard is for: connections, subscriptions, deliveries/s,
    # publish→deliver percentiles, drops by reason, broker up, per node.
    assert {"herald_connections", "herald_subscriptions", "herald_messages_delivered_total",
            "herald_publish_to_deliver_seconds_bucket", "herald_messages_dropped_total",
            "herald_broker_up", "herald_node_info"} <= used
    # Issue 26: a panel for every family an operator watches in production.
    assert {"herald_admin_requests_total", "herald_admin_request_seconds_bucket",
            "herald_handshakes_pending", "herald_connections_shed_total", "herald_handshakes_evicted_total",
            "herald_presence_members", "herald_presence_leaves_total", "herald_redis_failovers_total",
            "herald_history_fenced_total", "herald_pubsub_probe_seconds_bucket",
            "process_resident_memory_bytes", "process_open_fds", "process_max_fds",
            "herald_build_info"} <= used
    assert 'herald_node_info{node="' in live_metrics, "per-node panels join on herald_node_info's node label"


def test_dashboard_is_provisioned_for_compose():
    board = dashboard()
    assert board["uid"] and board["title"] == "Herald"
    datasources = {json.dumps(p["datasource"]) for p in board["panels"] if "datasource" in p}
    assert datasources == {json.dumps({"type": "prometheus", "uid": "${datasource}"})}
    grafana = COMPOSE["services"]["grafana"]
    assert "./grafana/herald.json:/var/lib/grafana/dashboards/herald.json:ro" in grafana["volumes"]
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/herald.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_compose_topology_is_consistent():
    services = COMPOSE["services"]
    assert set(services) == {"redis", *GATEWAYS, "admin", "haproxy", "prometheus", "grafana"}
    # Every bind mount names a file of the repository.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
    # One image, built from deploy/Dockerfile, for the gateways and herald-admin.
    for name in [*GATEWAYS, "admin"]:
        assert services[name]["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
        assert services[name]["image"] == "herald:dev"
    # HAProxy routes to each gateway's public port; Prometheus scrapes each
    # gateway's admin port, herald-admin and HAProxy.
    lb_env = services["haproxy"]["environment"]
    assert [lb_env[f"HERALD_GW{n}"] for n in (1, 2, 3)] == [f"{g}:8080" for g in GATEWAYS]
    cfg = (DEPLOY / "haproxy" / "haproxy.cfg").read_text()
    assert all(f'"${{HERALD_GW{n}}}"' in cfg for n in (1, 2, 3))
    targets = {f.stem: yaml.safe_load(f.read_text())[0]["targets"]
               for f in (DEPLOY / "prometheus" / "compose-targets").glob("*.yml")}
    assert targets == {"gateways": [f"{g}:8081" for g in GATEWAYS], "admin": ["admin:8081"],
                       "haproxy": [f"haproxy{lb_env['HERALD_LB_STATS_BIND']}"]}
    # The grace period outlasts the drain.
    drain = tomllib.loads((DEPLOY / "herald.toml").read_text())["drain_timeout"]
    for name in [*GATEWAYS, "admin"]:
        assert int(services[name]["stop_grace_period"].rstrip("s")) > int(drain.rstrip("s"))
    assert len({services[g]["environment"]["HERALD_NODE_ID"] for g in GATEWAYS}) == 3
