"""The shape of the custom resources the chart renders, which
kubernetes-validate has no schema for: ServiceMonitor and PrometheusRule
(Prometheus Operator, monitoring.coreos.com/v1) and HTTPRoute (Gateway API,
gateway.networking.k8s.io/v1).

Each check follows the resource's published CRD schema for the fields the
chart writes (known keys only, required fields, enums and patterns), so a
typo or a misplaced key fails here instead of on `kubectl apply`. The
PromQL of a PrometheusRule is checked by promtool in test_chart_objects.py.
"""

import re

import pytest

# Prometheus Operator durations (the CRDs' `pattern`).
PROM_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
# Gateway API durations (GEP-2257).
GATEWAY_DURATION = re.compile(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$")
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

SERVICE_MONITOR_SPEC = {
    "attachMetadata", "bodySizeLimit", "endpoints", "fallbackScrapeProtocol", "jobLabel", "keepDroppedTargets",
    "labelLimit", "labelNameLengthLimit", "labelValueLengthLimit", "namespaceSelector", "podTargetLabels",
    "sampleLimit", "scrapeClass", "scrapeProtocols", "selector", "targetLabels", "targetLimit",
}
ENDPOINT = {
    "authorization", "basicAuth", "bearerTokenSecret", "enableHttp2", "filterRunning", "followRedirects",
    "honorLabels", "honorTimestamps", "interval", "metricRelabelings", "oauth2", "params", "path", "port",
    "proxyUrl", "relabelings", "scheme", "scrapeTimeout", "targetPort", "tlsConfig", "trackTimestampsStaleness",
}
RELABEL = {"action", "modulus", "regex", "replacement", "separator", "sourceLabels", "targetLabel"}
RELABEL_ACTIONS = {"replace", "keep", "drop", "hashmod", "labelmap", "labeldrop", "labelkeep",
                   "lowercase", "uppercase", "keepequal", "dropequal"}
NEEDS_TARGET = {"replace", "hashmod", "lowercase", "uppercase", "keepequal", "dropequal"}
SELECTOR_OPERATORS = {"In", "NotIn", "Exists", "DoesNotExist"}
RULE_GROUP = {"interval", "labels", "limit", "name", "partial_response_strategy", "query_offset", "rules"}
RULE = {"alert", "annotations", "expr", "for", "keep_firing_for", "labels", "record"}
PARENT_REF = {"group", "kind", "namespace", "name", "sectionName", "port"}
ROUTE_RULE = {"name", "matches", "filters", "backendRefs", "timeouts", "retry", "sessionPersistence"}
ROUTE_MATCH = {"path", "headers", "queryParams", "method"}
PATH_TYPES = {"Exact", "PathPrefix", "RegularExpression"}
FILTER_TYPES = {"RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror", "RequestRedirect",
                "URLRewrite", "ExtensionRef", "CORS"}
BACKEND_REF = {"group", "kind", "name", "namespace", "port", "weight", "filters"}


def _keys(where: str, obj: dict, allowed: set, required: set = frozenset()):
    assert isinstance(obj, dict), f"{where}: not an object"
    unknown = set(obj) - allowed
    assert not unknown, f"{where}: unknown keys {sorted(unknown)}"
    missing = set(required) - set(obj)
    assert not missing, f"{where}: missing {sorted(missing)}"


def _string_map(where: str, obj):
    assert isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()), \
        f"{where}: not a map of strings: {obj!r}"


def _metadata(obj: dict):
    meta = obj["metadata"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", meta["name"]), meta["name"]
    for field in ("labels", "annotations"):
        if field in meta:
            _string_map(f"metadata.{field}", meta[field])


def _relabelings(where: str, rules):
    assert isinstance(rules, list), where
    for i, rule in enumerate(rules):
        at = f"{where}[{i}]"
        _keys(at, rule, RELABEL)
        action = rule.get("action", "replace").lower()
        assert action in RELABEL_ACTIONS, f"{at}: action {rule.get('action')!r}"
        if action in NEEDS_TARGET:
            assert rule.get("targetLabel"), f"{at}: {action} needs targetLabel"
        for label in rule.get("sourceLabels", []):
            assert LABEL_NAME.match(label), f"{at}: source label {label!r}"
        if "regex" in rule:
            re.compile(rule["regex"])


def check_service_monitor(obj: dict):
    _keys("ServiceMonitor", obj, {"apiVersion", "kind", "metadata", "spec"}, {"spec"})
    spec = obj["spec"]
    _keys("spec", spec, SERVICE_MONITOR_SPEC, {"endpoints", "selector"})
    _keys("spec.selector", spec["selector"], {"matchLabels", "matchExpressions"})
    _string_map("spec.selector.matchLabels", spec["selector"].get("matchLabels", {}))
    for expr in spec["selector"].get("matchExpressions", []):
        _keys("spec.selector.matchExpressions[]", expr, {"key", "operator", "values"}, {"key", "operator"})
        assert expr["operator"] in SELECTOR_OPERATORS, expr
    assert spec["endpoints"], "spec.endpoints: empty"
    for i, endpoint in enumerate(spec["endpoints"]):
        at = f"spec.endpoints[{i}]"
        _keys(at, endpoint, ENDPOINT)
        assert isinstance(endpoint.get("port", ""), str), f"{at}.port is a port name"
        for field in ("interval", "scrapeTimeout"):
            if field in endpoint:
                assert PROM_DURATION.match(endpoint[field]), f"{at}.{field}: {endpoint[field]!r}"
        _relabelings(f"{at}.relabelings", endpoint.get("relabelings", []))
        _relabelings(f"{at}.metricRelabelings", endpoint.get("metricRelabelings", []))


def check_prometheus_rule(obj: dict):
    _keys("PrometheusRule", obj, {"apiVersion", "kind", "metadata", "spec"}, {"spec"})
    _keys("spec", obj["spec"], {"groups"}, {"groups"})
    names = set()
    for group in obj["spec"]["groups"]:
        _keys("spec.groups[]", group, RULE_GROUP, {"name"})
        assert group["name"] not in names, f"group {group['name']} twice"
        names.add(group["name"])
        assert group["rules"], f"group {group['name']}: no rules"
        for rule in group["rules"]:
            at = f"group {group['name']}, rule {rule.get('alert') or rule.get('record')}"
            _keys(at, rule, RULE, {"expr"})
            assert ("alert" in rule) != ("record" in rule), f"{at}: exactly one of alert and record"
            assert isinstance(rule["expr"], str) and rule["expr"].strip(), at
            if "for" in rule:
                assert PROM_DURATION.match(rule["for"]), f"{at}: for {rule['for']!r}"
            for field in ("labels", "annotations"):
                if field in rule:
                    _string_map(f"{at}: {field}", rule[field])


def check_http_route(obj: dict):
    _keys("HTTPRoute", obj, {"apiVersion", "kind", "metadata", "spec"}, {"spec"})
    spec = obj["spec"]
    _keys("spec", spec, {"parentRefs", "hostnames", "rules"})
    assert 1 <= len(spec.get("parentRefs", [])) <= 32, "spec.parentRefs: 1 to 32"
    for ref in spec["parentRefs"]:
        _keys("spec.parentRefs[]", ref, PARENT_REF, {"name"})
    for host in spec.get("hostnames", []):
        assert HOSTNAME.match(host) and len(host) <= 253, f"hostname {host!r}"
    assert 1 <= len(spec["rules"]) <= 16, "spec.rules: 1 to 16"
    for i, rule in enumerate(spec["rules"]):
        at = f"spec.rules[{i}]"
        _keys(at, rule, ROUTE_RULE)
        for match in rule.get("matches", []):
            _keys(f"{at}.matches[]", match, ROUTE_MATCH)
            if "path" in match:
                _keys(f"{at}.matches[].path", match["path"], {"type", "value"})
                assert match["path"].get("type", "PathPrefix") in PATH_TYPES, match
                assert match["path"].get("value", "/").startswith("/"), match
        for f in rule.get("filters", []):
            assert f.get("type") in FILTER_TYPES, f"{at}.filters[]: type {f.get('type')!r}"
        for ref in rule.get("backendRefs", []):
            _keys(f"{at}.backendRefs[]", ref, BACKEND_REF, {"name"})
            assert 1 <= ref.get("port", 0) <= 65535, f"{at}.backendRefs[]: a Service needs a port"
        for field, value in rule.get("timeouts", {}).items():
            assert field in {"request", "backendRequest"}, f"{at}.timeouts.{field}"
            assert GATEWAY_DURATION.match(value), f"{at}.timeouts.{field}: {value!r}"


CHECKS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): check_service_monitor,
    ("monitoring.coreos.com/v1", "PrometheusRule"): check_prometheus_rule,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): check_http_route,
}
CUSTOM_KINDS = {kind for _, kind in CHECKS}


def check_custom_resource(obj: dict):
    """Fail the test unless `obj` is a well-formed custom resource of a kind above."""
    check = CHECKS.get((obj.get("apiVersion"), obj.get("kind")))
    if check is None:
        pytest.fail(f"{obj.get('apiVersion')} {obj.get('kind')}: no shape check for this custom resource")
    _metadata(obj)
    try:
        check(obj)
    except AssertionError as e:
        pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {e}")
