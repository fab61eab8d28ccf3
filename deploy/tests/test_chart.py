"""The Helm chart helm/herald, linted and rendered by Helm's own Go SDK
(pip: helm-python-sdk; offline, no helm binary, no cluster).

For the default values and for variants (Redis Cluster, Sentinel, TLS,
Ingress on, autoscaling off and on custom metrics, ServiceMonitor, existing
Secrets, config as a Secret): lint is clean, every rendered manifest passes
kubernetes-validate --strict on the oldest and newest Kubernetes the chart
supports, the drain settings hold together, and the rendered herald.toml is
accepted by `herald-gateway check-config`. Values that break the schema are
rejected; deploy/k8s/ matches a fresh render.
"""

import os
import subprocess
import sys
import tomllib

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from conftest import CHART, ROOT, tool

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
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}}},
        "auth": {"existingSecret": "my-herald-keys"},
        "redis": {"existingSecret": "my-redis", "existingSecretKey": "url"},
        "service": {"type": "LoadBalancer", "externalTrafficPolicy": "Local"},
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
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart, values) -> list[dict]:
    """Every object the chart renders for `values`."""
    out = chart.render(values, name="herald", namespace="herald", is_install=True)
    objects = []
    for template, text in out.items():
        if template.endswith("NOTES.txt"):
            continue
        objects += [o for o in yaml.safe_load_all(text) if o]
    return objects


def by_kind(objects, kind) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


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
        if obj["kind"] == "ServiceMonitor":
            continue  # a CRD: kubernetes-validate has no schema for it; checked below
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
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
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
