#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs every
# step and prints a summary, even when an early step fails (the exit status says whether all
# passed).
#
# Needs: a Rust toolchain (rust-toolchain.toml), python3 and node + npm. Installs: curl from
# Debian if missing (apt, as root or through sudo); the Python packages of
# scripts/requirements.txt into a virtualenv under target/; the npm packages of
# tests/sdk/package-lock.json into tests/sdk/node_modules. The load smoke run installs nginx,
# HAProxy, wrk and valgrind from Debian (benches/load.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh

# The dev-mode test pastes the curl commands `twilio-sidecar dev` prints into a shell.
have curl || apt_install curl
# The SDK interop test: the official Twilio SDKs (PyPI, npm) and Stoplight Prism (npm).
source scripts/python-env.sh
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
summary=()
failed=0
step() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    summary+=("ok    $name")
  else
    summary+=("FAIL  $name (exit $?)")
    failed=1
  fi
}

# The committed operation catalogue matches the vendored Twilio specs.
step "catalogue matches vendor/twilio-oai" python3 scripts/gen_catalogue.py --check

rust_tests() {
  cargo test --locked --no-fail-fast 2>&1 | tee "$work/cargo.log"
}
sdk_tests() {
  # Needs the packages above, so it is #[ignore]d in a plain `cargo test`.
  # Two at a time: each starts a sidecar, SDK processes and (for some) Prism, on 2 cores.
  cargo test --locked --test sdk_interop -- --ignored --test-threads=2 2>&1 | tee -a "$work/cargo.log"
}
soak() {
  # The short profile of the soak under faults (the long one: benches/SOAK.md).
  SOAK_SECONDS=60 cargo test --locked --test soak -- --ignored --nocapture 2>&1 | tee -a "$work/cargo.log"
}
step "cargo test" rust_tests
step "SDK interop (twilio-python, twilio-node, Prism)" sdk_tests
step "soak under faults, 60 s" soak
# deploy/: Kubernetes manifests (as kustomize renders them) against the Kubernetes schemas,
# embedded configs, the dashboard and alert rules, the systemd unit.
step "deploy/ validation" bash scripts/validate-deploy.sh target/debug/twilio-sidecar
# The load benchmark's smoke mode: a few seconds, keeps benches/load.sh from rotting.
step "load benchmark smoke run" bash benches/load.sh --smoke

passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$work/cargo.log" | awk '{s+=$4} END {print s+0}')
failures=$(grep -Eo '[0-9]+ failed' "$work/cargo.log" | awk '{s+=$1} END {print s+0}')
echo
echo "== summary"
printf '%s\n' "${summary[@]}"
# One closing line for the whole Rust suite.
echo "tests: ${passed} passed, ${failures} failed"
exit "$failed"
