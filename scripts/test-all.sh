#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if have apt-get; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    else
      sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    fi
  else
    echo "test-all: please install: $*" >&2
    exit 1
  fi
}

# The dev-mode test pastes the curl commands `twilio-sidecar dev` prints into a shell.
have curl || apt_install curl

# The SDK interop test: the official Twilio SDKs (PyPI, npm) and Stoplight Prism (npm).
python3 -m pip install -q --disable-pip-version-check -r tests/sdk/requirements.txt
(cd tests/sdk && npm ci --no-audit --no-fund --loglevel=error)

# The committed operation catalogue must match Twilio's specs, where they are present.
if [ -d ../shared/twilio-oai/spec/json ]; then
  python3 scripts/gen_catalogue.py --check
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked 2>&1 | tee "$log"
# Needs the packages above and ../shared's specs, so it is #[ignore]d in a plain `cargo test`.
cargo test --locked --test sdk_interop -- --ignored 2>&1 | tee -a "$log"
passed=$(grep -Eo 'test result: [a-zA-Z]+\. [0-9]+ passed' "$log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$log" | awk '{s+=$1} END {print s+0}')

# deploy/: Kubernetes manifests against the Kubernetes schemas, embedded configs, alert rules,
# the systemd unit.
bash scripts/validate-deploy.sh target/debug/twilio-sidecar

# The load benchmark's smoke mode: a few seconds, keeps benches/load.sh from rotting (installs
# nginx, HAProxy and wrk from Debian).
bash benches/load.sh --smoke

# One closing line for the whole Rust suite.
echo "tests: ${passed} passed, ${failed} failed"
