#!/usr/bin/env bash
# The Rust client crate (clients/rust) as it would be published: the files
# `cargo package` puts in it are the expected ones (its tests run with the
# workspace's, under nextest).
set -euo pipefail
cd "$(dirname "$0")/.."

expected=".cargo_vcs_info.json
Cargo.lock
Cargo.toml
Cargo.toml.orig
README.md
src/client.rs
src/error.rs
src/frames.rs
src/lib.rs
src/policy.rs
src/publisher.rs
src/random.rs
src/token.rs"
listed=$(cargo package -p herald-client --no-verify --list --allow-dirty 2>/dev/null)
if [ "$listed" != "$expected" ]; then
  echo "clients/rust: cargo package lists other files than expected:" >&2
  diff <(echo "$expected") <(echo "$listed") >&2 || true
  exit 1
fi
echo "clients/rust: cargo package lists the expected files"
