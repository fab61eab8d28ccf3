"""What the chart's operational objects do, beyond being valid (that is
test_chart.py): the ServiceMonitor names the jobs the alerts and the dashboard
use, the PrometheusRule is deploy/prometheus/alerts.yml (and passes promtool),
the dashboards ConfigMap is deploy/grafana/herald.json with the sidecar's
label, the NetworkPolicies admit on the admin port only the peers the values
name, the HTTPRoute leads to the public Service, and probes, envFrom, extra
containers and topology spread come from the values.
"""

import json
import re
import subprocess

import helm_python as helm
import pytest
import yaml

from conftest import CHART, DEPLOY, by_kind, render, tool

ALERTS = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
DASHBOARD = json.loads((DEPLOY / "grafana" / "herald.json").read_text())
MONITORING = {"metrics": {"serviceMonitor": {"enabled": True}}, "prometheusRule": {"enabled": True},
              "dashboards": {"enabled": True}}


def test_chart_files_are_the_deploy_files():
    """One source: the chart's files/ are links to deploy/ (helm package
    stores their content); a copy that drifted would fail here."""
    for name, source in [("alerts.yml", DEPLOY / "prometheus" / "alerts.yml"),
                         ("herald.json", DEPLOY / "grafana" / "herald.json")]:
        assert (CHART / "files" / name).read_bytes() == source.read_bytes(), name


# ---- ServiceMonitor: the job label ------------------------------------------

def sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def relabel(labels: dict, rules: list[dict]) -> dict:
    """Prometheus' relabelling, for the actions a ServiceMonitor of this chart
    uses (replace, keep, drop): anchored regex on the joined source labels,
    $1 / ${1} expanded in the replacement."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace").lower()
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule.get("sourceLabels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)
        if action == "keep" and not match or action == "drop" and match:
            return {}
        if action == "replace" and match:
            replacement = re.sub(r"\$\{?(\d+)\}?", r"\\\1", rule.get("replacement", "$1"))
            result = match.expand(replacement)
            if result:
                labels[rule["targetLabel"]] = result
            else:
                labels.pop(rule["targetLabel"], None)
        elif action not in ("replace", "keep", "drop"):
            pytest.fail(f"relabel action {action} not simulated")
    return labels


def selects(selector: dict, labels: dict) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        op, key = expr["operator"], expr["key"]
        if (op == "In" and labels.get(key) not in expr["values"]) or (op == "NotIn" and labels.get(key) in expr["values"]) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def scraped_jobs(objects) -> dict[str, str]:
    """Service name -> the job label Prometheus gives its targets, as the
    Prometheus Operator configures it: the job is the Service's name (no
    jobLabel), then the endpoint's relabelings apply, in order."""
    [monitor] = [o["spec"] for o in objects if o["kind"] == "ServiceMonitor"]
    assert "jobLabel" not in monitor, "the relabelings name the job"
    jobs = {}
    for name, service in by_kind(objects, "Service").items():
        if not selects(monitor["selector"], service["metadata"]["labels"]):
            continue
        for endpoint in monitor["endpoints"]:
            if not any(p["name"] == endpoint["port"] for p in service["spec"]["ports"]):
                continue
            meta = {f"__meta_kubernetes_service_label_{sanitize(k)}": v
                    for k, v in service["metadata"]["labels"].items()}
            labels = relabel({**meta, "__meta_kubernetes_service_name": name, "job": name},
                             endpoint.get("relabelings", []))
            jobs[name] = labels["job"]
    return jobs


def jobs_named_in(expr: str) -> set[str]:
    names = set()
    for op, value in re.findall(r'\bjob\s*(=~|=)\s*"([^"]*)"', expr):
        names |= set(value.split("|")) if op == "=~" else {value}
    return names


@pytest.mark.parametrize("release", ["herald", "push-prod"])
def test_service_monitor_names_the_jobs_the_alerts_and_dashboard_use(chart, release):
    objects = render(chart, MONITORING, name=release)
    jobs = scraped_jobs(objects)
    # Every admin listener is scraped (the public Service has no admin
    # port), under the compose job names whatever the release is called.
    fullname = release if "herald" in release else f"{release}-herald"
    assert jobs == {f"{fullname}-gateway-admin": "herald", f"{fullname}-admin": "herald-admin"}
    produced = set(jobs.values())
    alert_jobs = set().union(*(jobs_named_in(r["expr"]) for g in ALERTS["groups"] for r in g["rules"]))
    panel_jobs = set().union(*(jobs_named_in(t["expr"]) for p in DASHBOARD["panels"] for t in p.get("targets", [])))
    compose_jobs = {c["job_name"] for c in yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
                    ["scrape_configs"]}
    assert alert_jobs == {"herald"} and alert_jobs <= produced
    # The dashboard's "Targets up" names the Herald jobs and compose's
    # HAProxy; in Kubernetes exactly the Herald ones exist.
    assert panel_jobs == compose_jobs and produced == panel_jobs - {"haproxy"}


def test_service_monitor_keeps_user_relabelings_after_its_own(chart):
    extra = [{"action": "replace", "targetLabel": "cluster", "replacement": "eu-1"}]
    objects = render(chart, {"metrics": {"serviceMonitor": {"enabled": True, "relabelings": extra}}})
    rules = by_kind(objects, "ServiceMonitor")["herald"]["spec"]["endpoints"][0]["relabelings"]
    assert rules[-1] == extra[0] and [r["targetLabel"] for r in rules[:-1]] == ["job", "job"]


# ---- PrometheusRule ---------------------------------------------------------

def rendered_rule(chart, values) -> dict:
    rules = by_kind(render(chart, values), "PrometheusRule")
    assert list(rules) == ["herald"]
    return rules["herald"]


@pytest.mark.parametrize("max_connections", [None, 60000])
def test_prometheus_rule_is_alerts_yml(chart, tmp_path, max_connections):
    values = {"prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}}}
    if max_connections:
        values["config"] = {"limits": {"max_connections": max_connections}}
    rule = rendered_rule(chart, values)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    want = json.loads(json.dumps(ALERTS["groups"]))
    for group in want:
        for r in group["rules"]:
            if r["alert"] == "HeraldConnectionsNearLimit":
                assert r["expr"] == "herald_connections > 0.8 * 100000"
                r["expr"] = f"herald_connections > 0.8 * {max_connections or 100000}"
    assert rule["spec"]["groups"] == want
    # What the operator hands to Prometheus is a rule file promtool accepts.
    path = tmp_path / "rule.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run([tool("promtool"), "check", "rules", path], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_monitoring_objects_are_off_by_default(chart):
    objects = render(chart, {})
    assert not by_kind(objects, "ServiceMonitor") and not by_kind(objects, "PrometheusRule")
    assert set(by_kind(objects, "ConfigMap")) == {"herald-config"}


# ---- dashboards ConfigMap ---------------------------------------------------

@pytest.mark.parametrize("label,value,namespace", [(None, None, None), ("grafana.example.com/dashboard", "herald", "grafana")])
def test_dashboard_configmap_carries_the_dashboard_and_sidecar_label(chart, label, value, namespace):
    values = {"enabled": True}
    if label:
        values |= {"label": label, "labelValue": value, "namespace": namespace}
    maps = by_kind(render(chart, {"dashboards": values}), "ConfigMap")
    board = maps["herald-dashboards"]
    assert board["metadata"]["labels"][label or "grafana_dashboard"] == (value or "1")
    assert board["metadata"].get("namespace") == namespace
    assert json.loads(board["data"]["herald.json"]) == DASHBOARD


# ---- NetworkPolicy ----------------------------------------------------------

RELEASE_NS = "herald"
NAMESPACES = {"herald": {}, "monitoring": {}, "ingress-nginx": {}, "apps": {"team": "backend"}}


def peer_admits(peer: dict, pod: dict) -> bool:
    """Whether one NetworkPolicyPeer admits a pod {namespace, labels}."""
    if "ipBlock" in peer:
        return False  # pods are matched by selectors here
    ns_labels = {**NAMESPACES[pod["namespace"]], "kubernetes.io/metadata.name": pod["namespace"]}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif pod["namespace"] != RELEASE_NS:
        return False
    return selects(peer.get("podSelector", {}), pod["labels"])


def admitted(policies: dict, target_labels: dict, port: int, source: dict) -> bool:
    """Whether the NetworkPolicies let `source` reach `port` of a pod with
    `target_labels`; a pod no policy selects admits everything."""
    selecting = [p["spec"] for p in policies.values() if selects(p["spec"]["podSelector"], target_labels)
                 and "Ingress" in p["spec"]["policyTypes"]]
    if not selecting:
        return True
    for spec in selecting:
        for rule in spec.get("ingress", []):
            ports = rule.get("ports")
            if ports is not None and not any(p["port"] == port for p in ports):
                continue
            if "from" not in rule or any(peer_admits(peer, source) for peer in rule["from"]):
                return True
    return False


def pod_labels(objects, deployment) -> dict:
    return by_kind(objects, "Deployment")[deployment]["spec"]["template"]["metadata"]["labels"]


SOURCES = {
    "prometheus in monitoring": {"namespace": "monitoring", "labels": {"app": "prometheus"}},
    "a labelled publisher": {"namespace": "herald", "labels": {"herald-admin-client": "true"}},
    "another gateway": {"namespace": "herald", "labels": {"app.kubernetes.io/name": "herald",
                                                          "app.kubernetes.io/instance": "herald",
                                                          "app.kubernetes.io/component": "gateway"}},
    "a pod of the namespace": {"namespace": "herald", "labels": {"app": "other"}},
    "a pod of another namespace": {"namespace": "apps", "labels": {"app": "publisher"}},
    "the ingress controller": {"namespace": "ingress-nginx", "labels": {"app": "ingress-nginx"}},
}


def access(chart, values) -> dict:
    """For each source: may it reach (gateway 8080, gateway 8081, herald-admin 8081)?"""
    objects = render(chart, values)
    policies = by_kind(objects, "NetworkPolicy")
    gateway, admin = pod_labels(objects, "herald-gateway"), pod_labels(objects, "herald-admin")
    return {name: (admitted(policies, gateway, 8080, src), admitted(policies, gateway, 8081, src),
                   admitted(policies, admin, 8081, src)) for name, src in SOURCES.items()}


def test_network_policy_by_default_opens_only_the_public_port(chart):
    objects = render(chart, {})
    policies = by_kind(objects, "NetworkPolicy")
    assert set(policies) == {"herald-gateway", "herald-admin"}
    for policy in policies.values():
        assert policy["spec"]["policyTypes"] == ["Ingress"], "egress unrestricted by default"
        assert all(rule.get("ports") for rule in policy["spec"]["ingress"]), "no rule opens every port"
    # The policies' ports are the containers' ports.
    for name, ports in [("herald-gateway", {"ws": 8080, "admin": 8081}), ("herald-admin", {"admin": 8081})]:
        container = by_kind(objects, "Deployment")[name]["spec"]["template"]["spec"]["containers"][0]
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
    assert access(chart, {}) == {
        "prometheus in monitoring": (True, True, True),
        "a labelled publisher": (True, True, True),
        "another gateway": (True, True, True),
        "a pod of the namespace": (True, False, False),
        "a pod of another namespace": (True, False, False),
        "the ingress controller": (True, False, False),
    }


def test_network_policy_with_custom_peers(chart):
    values = {"networkPolicy": {
        "public": {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}]},
        "admin": {"from": [{"namespaceSelector": {"matchLabels": {"team": "backend"}},
                            "podSelector": {"matchLabels": {"app": "publisher"}}}]},
        "egress": [{"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 6379, "protocol": "TCP"}]}],
    }}
    assert access(chart, values) == {
        "prometheus in monitoring": (False, False, False),
        "a labelled publisher": (False, False, False),
        "another gateway": (False, True, True),
        "a pod of the namespace": (False, False, False),
        "a pod of another namespace": (False, True, True),
        "the ingress controller": (True, False, False),
    }
    for policy in by_kind(render(chart, values), "NetworkPolicy").values():
        assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert policy["spec"]["egress"] == values["networkPolicy"]["egress"]


def test_network_policy_with_no_admin_peers_still_closes_the_admin_port(chart):
    """An empty admin.from must not become a rule without `from` (which
    Kubernetes reads as "from everywhere"): the release's pods stay the only peers."""
    result = access(chart, {"networkPolicy": {"admin": {"from": []}}})
    assert {name for name, (_, gw_admin, admin) in result.items() if gw_admin or admin} == {"another gateway"}


def test_network_policy_off(chart):
    assert not by_kind(render(chart, {"networkPolicy": {"enabled": False}}), "NetworkPolicy")
    assert all(all(v) for v in access(chart, {"networkPolicy": {"enabled": False}}).values())


def test_network_policy_without_herald_admin(chart):
    policies = by_kind(render(chart, {"admin": {"enabled": False}}), "NetworkPolicy")
    assert set(policies) == {"herald-gateway"}


# ---- HTTPRoute --------------------------------------------------------------

def test_http_route_leads_to_the_public_service(chart):
    values = {"httpRoute": {"enabled": True, "parentRefs": [{"name": "public", "namespace": "gateway-system"}],
                            "hostnames": ["push.example.com"]}, "service": {"port": 8000}}
    objects = render(chart, values)
    route = by_kind(objects, "HTTPRoute")["herald"]
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == values["httpRoute"]["parentRefs"]
    assert route["spec"]["hostnames"] == ["push.example.com"]
    [rule] = route["spec"]["rules"]
    assert rule["matches"] == [{"path": {"type": "PathPrefix", "value": "/ws"}}]
    public = by_kind(objects, "Service")["herald"]
    assert rule["backendRefs"] == [{"name": "herald", "port": public["spec"]["ports"][0]["port"]}]
    assert public["spec"]["ports"][0]["port"] == 8000
    assert not by_kind(render(chart, {}), "HTTPRoute")


def test_http_route_needs_a_parent(chart):
    with pytest.raises(helm.HelmError, match="parentRefs"):
        chart.render({"httpRoute": {"enabled": True}}, name="herald")


# ---- pods: probes, envFrom, extras, topology spread -------------------------

def pod_spec(objects, name) -> dict:
    return by_kind(objects, "Deployment")[name]["spec"]["template"]


def test_pod_settings_come_from_values(chart):
    sidecar = {"name": "log-shipper", "image": "busybox:1.36"}
    init = {"name": "wait", "image": "busybox:1.36", "command": ["true"]}
    env_from = [{"secretRef": {"name": "extra"}}]
    spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule"}
    values = {component: {"envFrom": env_from, "extraContainers": [sidecar], "extraInitContainers": [init],
                          "topologySpreadConstraints": [spread], "readinessProbe": {"periodSeconds": 5},
                          "livenessProbe": None} for component in ("gateway", "admin")}
    values["gateway"]["startupProbe"] = {"failureThreshold": 60}
    objects = render(chart, values)
    for name, component in [("herald-gateway", "gateway"), ("herald-admin", "admin")]:
        template = pod_spec(objects, name)
        pod = template["spec"]
        main = pod["containers"][0]
        assert [c["name"] for c in pod["containers"]] == [component, "log-shipper"]
        assert template["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == component
        assert pod["initContainers"] == [init] and main["envFrom"] == env_from
        # A probe field overridden, the rest kept; liveness removed by null.
        assert main["readinessProbe"]["periodSeconds"] == 5
        assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
        assert "livenessProbe" not in main
        # Custom spreading replaces the zone default and selects the component's pods.
        [constraint] = pod["topologySpreadConstraints"]
        assert constraint["topologyKey"] == "kubernetes.io/hostname"
        assert constraint["labelSelector"]["matchLabels"] == template["metadata"]["labels"]
    gateway = pod_spec(objects, "herald-gateway")["spec"]["containers"][0]
    assert gateway["startupProbe"] == {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 1,
                                       "failureThreshold": 60}


def test_pod_defaults(chart):
    objects = render(chart, {})
    gateway = pod_spec(objects, "herald-gateway")
    admin = pod_spec(objects, "herald-admin")
    assert "kubectl.kubernetes.io/default-container" not in gateway["metadata"]["annotations"]
    assert [c["topologyKey"] for c in gateway["spec"]["topologySpreadConstraints"]] == ["topology.kubernetes.io/zone"]
    assert "topologySpreadConstraints" not in admin["spec"] and "initContainers" not in gateway["spec"]
    main = gateway["spec"]["containers"][0]
    assert {"readinessProbe", "livenessProbe", "startupProbe"} <= set(main) and "envFrom" not in main
    assert "startupProbe" not in admin["spec"]["containers"][0]


@pytest.mark.parametrize("component", ["gateway", "admin"])
def test_readiness_cannot_be_removed(chart, component):
    with pytest.raises(helm.HelmError, match="readinessProbe"):
        chart.render({component: {"readinessProbe": None}}, name="herald")
