#!/usr/bin/env bash
# The deploy tests (deploy/tests/, pytest): the Dockerfile (hadolint), every
# YAML file (yamllint), the compose, HAProxy, Prometheus and Grafana files
# (promtool check and the alerts' unit tests with promtool test rules,
# haproxy -c, a live /metrics), the Helm chart (lint and render through
# Helm's Go SDK, kubernetes-validate --strict, custom resources' shapes,
# schema; the ServiceMonitor's job names, PrometheusRule, dashboards,
# NetworkPolicies, HTTPRoute) and deploy/k8s/ drift, and a rolling restart of
# deploy/local-cluster.sh that must lose nothing. Runs the binaries in
# HERALD_BIN_DIR (default target/debug); the tools come from scripts/deps.sh.
# Extra arguments go to pytest (e.g. -k chart, -k configs). About 30 seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

export HERALD_BIN_DIR="${HERALD_BIN_DIR:-$PWD/target/debug}"
export PYTHONDONTWRITEBYTECODE=1
# Bounded: SIGINT first, so that pytest stops the local cluster it started.
exec timeout --signal=INT --kill-after=60 600 python3 -m pytest deploy/tests "$@"
