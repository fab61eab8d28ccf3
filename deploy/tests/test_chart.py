"""The Helm chart helm/herald, linted and rendered by Helm's own Go SDK
(pip: helm-python-sdk; offline, no helm binary, no cluster).

For the default values and for variants (Redis Cluster, Sentinel, TLS,
Ingress on, autoscaling off and on custom metrics, the Prometheus Operator's
objects, existing Secrets, config as a Secret, network policy off and with
custom peers, an HTTPRoute, probes and extra containers from values): lint is
clean, every rendered manifest passes kubernetes-validate --strict on the
oldest and newest Kubernetes the chart supports (the custom resources, which
it has no schema for, are checked by crd_shapes.py), the drain settings hold
together, and the rendered herald.toml is accepted by `herald-gateway
check-config`. Values that break the schema are rejected; deploy/k8s/ matches
a fresh render. What the operational objects do: test_chart_objects.py.
"""

import os
import subprocess
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest

from conftest import CHART, ROOT, by_kind, render, tool
from crd_shapes import CUSTOM_KINDS, check_custom_resource

# The chart's kubeVersion floor, and the newest schemas kubernetes-validate has.
KUBE_VERSIONS = ["1.25.0", kubernetes_validate.latest_version()]

VARIANTS = {
    "default": {},
    "redis-cluster": {"redis": {"cluster": True,
                                "url": "redis://10.0.0.1:6379,redis://10.0.0.2:6379,redis://10.0.0.3:6379"}},
    "redis-sentinel": {"redis": {"url": "redis+sentinel://:pw@sentinel-0.sentinel:26379,sentinel-1.sentinel:26379/mymaster"}},
    "tls": {"redis": {"url": "rediss://:pw@redis.example.com:6380", "caSecret": "redis-ca"},
            "tls": {"enabled": True, "secretName": "herald-tls"},
            "ingress": {"enabled": True, "tls": [{"secretName": "herald-ingress-tls", "hosts": ["herald.example.com"]}]}},
    "ingress": {"ingress": {"enabled": True}},
    "no-hpa": {"autoscaling": {"enabled": False}, "gateway": {"replicas": 4}},
    "hpa-connections": {"autoscaling": {"connections": {"enabled": True, "averageValue": 30000}}},
    "monitoring-and-secrets": {
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"},
                                       "metricRelabelings": [{"action": "drop", "sourceLabels": ["__name__"],
                                                              "regex": "herald_topics"}]}},
        "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
        "dashboards": {"enabled": True, "label": "grafana.example.com/dashboard", "labelValue": "herald",
                       "namespace": "grafana", "annotations": {"grafana_folder": "Herald"}},
        "config": {"limits": {"max_connections": 60000}},
        "auth": {"existingSecret": "my-herald-keys"},
        "redis": {"existingSecret": "my-redis", "existingSecretKey": "url"},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
    },
    "network-policy-off": {"networkPolicy": {"enabled": False}},
    "network-policy-custom": {"networkPolicy": {
        "public": {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}},
                            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]},
        "admin": {"from": [{"namespaceSelector": {"matchLabels": {"team": "backend"}},
                            "podSelector": {"matchLabels": {"app": "publisher"}}},
                           {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "observability"}}}]},
        "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
                    "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]},
                   {"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}], "ports": [{"port": 6379, "protocol": "TCP"}]}],
    }},
    "httproute": {"httpRoute": {
        "enabled": True, "hostnames": ["push.example.com"], "labels": {"route": "public"},
        "annotations": {"example.com/owner": "push"},
        "parentRefs": [{"name": "public", "namespace": "gateway-system", "sectionName": "https"}],
        "matches": [{"path": {"type": "PathPrefix", "value": "/ws"}}, {"path": {"type": "Exact", "value": "/readyz"}}],
        "filters": [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "herald"}]}}],
        "timeouts": {"request": "0s"},
    }},
    "pod-extras": {
        "gateway": {
            "readinessProbe": {"periodSeconds": 3}, "livenessProbe": None,
            "startupProbe": {"failureThreshold": 60},
            "envFrom": [{"secretRef": {"name": "herald-extra-env"}}, {"configMapRef": {"name": "herald-env", "optional": True}}],
            "extraVolumes": [{"name": "jwks", "secret": {"secretName": "herald-jwks"}}],
            "extraVolumeMounts": [{"name": "jwks", "mountPath": "/etc/herald/jwks", "readOnly": True}],
            "extraContainers": [{"name": "log-shipper", "image": "busybox:1.36", "args": ["sleep", "infinity"],
                                 "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
            "extraInitContainers": [{"name": "wait-for-redis", "image": "busybox:1.36",
                                     "command": ["sh", "-c", "until nc -z redis 6379; do sleep 1; done"]}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                           "whenUnsatisfiable": "DoNotSchedule"}],
            "resources": {"requests": {"cpu": "1", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        },
        "admin": {
            "startupProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 1, "failureThreshold": 20},
            "envFrom": [{"secretRef": {"name": "herald-extra-env"}}],
            "extraContainers": [{"name": "proxy", "image": "busybox:1.36"}],
            "extraInitContainers": [{"name": "init", "image": "busybox:1.36"}],
            "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                           "whenUnsatisfiable": "ScheduleAnyway",
                                           "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "admin"}}}],
        },
    },
    "config-as-secret": {
        "configAsSecret": True, "drainTimeoutSeconds": 10,
        "gateway": {"terminationGracePeriodSeconds": 40, "antiAffinity": "hard"},
        "admin": {"enabled": False},
        "config": {"allowed_origins": ["https://app.example.com"], "compression": True,
                   "limits": {"max_connections": 50000, "client_queue": 2048, "max_message_size": "128KiB"},
                   "history": {"size": 5000, "ttl": "1h"}, "jwt": {"leeway": "10s", "issuer": "https://auth.example.com"}},
    },
}

# Values the schema must refuse, and why.
BAD_VALUES = {
    "no replicas": {"gateway": {"replicas": 0}},
    "a URL that is not Redis": {"redis": {"url": "http://redis:6379"}},
    "Redis Cluster through Sentinel": {"redis": {"cluster": True, "url": "redis+sentinel://s:26379/mymaster"}},
    "a chart-owned key in config": {"config": {"drain_timeout": "5s"}},
    "listen in config": {"config": {"listen": "0.0.0.0:9999"}},
    "an unknown top-level key": {"replicaCount": 3},
    "a drain given as a string": {"drainTimeoutSeconds": "30s"},
    "TLS without a Secret": {"tls": {"enabled": True}},
    "a short HS256 secret": {"auth": {"jwtHs256Secret": "short"}},
    "an admin key with a comma": {"auth": {"adminApiKeys": ["a,b"]}},
    "an unknown anti-affinity": {"gateway": {"antiAffinity": "always"}},
    "CPU target over 100%": {"autoscaling": {"targetCPUUtilizationPercentage": 150}},
    "an ingress path without a slash": {"ingress": {"hosts": [{"host": "h", "paths": [{"path": "ws", "pathType": "Prefix"}]}]}},
    "an HTTPRoute without a parent Gateway": {"httpRoute": {"enabled": True}},
    "an HTTPRoute path without a slash": {"httpRoute": {"matches": [{"path": {"type": "PathPrefix", "value": "ws"}}]}},
    "an HTTPRoute timeout that is not a duration": {"httpRoute": {"timeouts": {"request": "forever"}}},
    "a network peer of an unknown kind": {"networkPolicy": {"admin": {"from": [{"pods": {"app": "x"}}]}}},
    "an unknown key under networkPolicy": {"networkPolicy": {"allowAll": True}},
    "a dashboard label that is not a label key": {"dashboards": {"label": "grafana dashboard"}},
    "an unknown key under prometheusRule": {"prometheusRule": {"rules": []}},
    "an envFrom of an unknown kind": {"gateway": {"envFrom": [{"secret": {"name": "x"}}]}},
    "a sidecar without a name": {"gateway": {"extraContainers": [{"image": "busybox"}]}},
    "a probe with an unknown key": {"gateway": {"readinessProbe": {"httpget": {"path": "/readyz"}}}},
    "an unknown topology spread policy": {"admin": {"topologySpreadConstraints": [
        {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "Never"}]}},
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_lint_is_clean(variant):
    report = helm.lint(CHART, VARIANTS[variant], strict=True)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


@pytest.mark.parametrize("variant", VARIANTS)
def test_manifests_are_valid_kubernetes(chart, variant):
    objects = render(chart, VARIANTS[variant])
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            # kubernetes-validate has no schema for custom resources.
            check_custom_resource(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid for Kubernetes {version}: {path}: {e.message}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_rendering_holds_together(chart, variant):
    values = chart.merge_values(VARIANTS[variant])
    objects = render(chart, VARIANTS[variant])
    deployments = by_kind(objects, "Deployment")
    services = by_kind(objects, "Service")
    secrets = by_kind(objects, "Secret")
    gateway = deployments["herald-gateway"]["spec"]
    pod = gateway["template"]["spec"]
    container = pod["containers"][0]

    # Drain: the kubelet waits longer than the preStop sleep plus the drain.
    drain, sleep = values["drainTimeoutSeconds"], values["gateway"]["preStopSleepSeconds"]
    assert pod["terminationGracePeriodSeconds"] > drain + sleep
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(sleep)]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    if values["gateway"].get("livenessProbe"):
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", "never /readyz"
    assert container["name"] == "gateway" and pod["containers"][1:] == values["gateway"]["extraContainers"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert gateway["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    assert "podAntiAffinity" in pod["affinity"]

    # Autoscaling: the HPA owns the replica count.
    hpas = by_kind(objects, "HorizontalPodAutoscaler")
    if values["autoscaling"]["enabled"]:
        hpa = hpas["herald-gateway"]["spec"]
        assert "replicas" not in gateway
        metrics = {m["type"]: m for m in hpa["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        if values["autoscaling"]["connections"]["enabled"]:
            assert metrics["Pods"]["pods"]["metric"]["name"] == "herald_connections"
        else:
            assert "Pods" not in metrics
        assert hpa["behavior"]["scaleDown"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    else:
        assert not hpas and gateway["replicas"] == values["gateway"]["replicas"]
    assert by_kind(objects, "PodDisruptionBudget")["herald-gateway"]["spec"]["maxUnavailable"] == 1

    # Services: the public one serves the WebSocket port only, no affinity;
    # the admin listeners stay cluster-internal.
    public = services["herald"]["spec"]
    assert [p["targetPort"] for p in public["ports"]] == ["ws"] and public["sessionAffinity"] == "None"
    assert services["herald-gateway-admin"]["spec"]["clusterIP"] == "None"
    if values["admin"]["enabled"]:
        assert services["herald-admin"]["spec"]["type"] == "ClusterIP"
        assert deployments["herald-admin"]["spec"]["template"]["spec"]["containers"][0]["args"][0] == "herald-admin"
    else:
        assert "herald-admin" not in deployments and "herald-admin" not in services

    # Ingress: only when enabled, with WebSocket timeouts.
    ingresses = by_kind(objects, "Ingress")
    if values["ingress"]["enabled"]:
        annotations = ingresses["herald"]["metadata"]["annotations"]
        assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    else:
        assert not ingresses

    # Secrets: every reference resolves to a rendered Secret or to one the
    # values name as existing.
    existing = {values["auth"]["existingSecret"], values["redis"]["existingSecret"]} - {""}
    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] in existing or ref["key"] in secrets[ref["name"]]["stringData"], env

    monitors = by_kind(objects, "ServiceMonitor")
    if values["metrics"]["serviceMonitor"]["enabled"]:
        endpoint = monitors["herald"]["spec"]["endpoints"][0]
        assert endpoint["port"] == "admin" and endpoint["path"] == "/metrics"
        assert any(p["name"] == "admin" for p in services["herald-gateway-admin"]["spec"]["ports"])
    else:
        assert not monitors


def herald_toml(objects) -> str:
    for o in objects:
        if o["metadata"]["name"] == "herald-config":
            return (o.get("data") or o.get("stringData"))["herald.toml"]
    raise AssertionError("no herald-config rendered")


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "tls"])
def test_rendered_config_is_accepted_by_the_gateway(chart, herald_bin, variant, tmp_path):
    """The TOML the chart writes is what Herald reads: whole numbers stay
    whole, tables and lists come through (TLS is left out: its files exist
    only in a cluster)."""
    text = herald_toml(render(chart, VARIANTS[variant]))
    config = tomllib.loads(text)
    values = chart.merge_values(VARIANTS[variant])
    assert config["drain_timeout"] == f"{values['drainTimeoutSeconds']}s"
    assert config["limits"]["max_connections"] == values["config"]["limits"]["max_connections"]
    path = tmp_path / "herald.toml"
    path.write_text(text)
    env = {**os.environ, "HERALD_JWT__HS256_SECRET": "0123456789abcdef0123", "HERALD_ADMIN__API_KEYS": "k",
           "HERALD_REDIS_URL": "redis://127.0.0.1:6379"}
    check = subprocess.run([herald_bin / "herald-gateway", "check-config", "--config", path],
                           env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("case", BAD_VALUES)
def test_schema_rejects_bad_values(chart, case):
    with pytest.raises(helm.HelmError):
        chart.validate_schema(BAD_VALUES[case])
    report = helm.lint(CHART, BAD_VALUES[case], strict=True)
    assert report["errors"], f"lint accepted {case}"


def test_grace_period_below_the_drain_is_refused(chart):
    with pytest.raises(helm.HelmError, match="terminationGracePeriodSeconds"):
        chart.render({"drainTimeoutSeconds": 30, "gateway": {"terminationGracePeriodSeconds": 30}}, name="herald")


def test_plain_manifests_match_the_chart():
    check = subprocess.run([sys.executable, ROOT / "scripts" / "render-k8s.py", "--check"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    # The command line itself, as an operator would run it on these files.
    files = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    for version in KUBE_VERSIONS:
        result = subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", version, *files],
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
