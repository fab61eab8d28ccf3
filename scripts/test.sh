#!/usr/bin/env bash
# The whole test suite: formatting, lints, then every test of every crate
# (unit, property, integration; real sockets, real processes).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Multi-process tests run herald-gateway and herald-admin; build every binary.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi
