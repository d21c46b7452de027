#!/usr/bin/env bash
# Validates everything under deploy/:
#   - Kubernetes manifests against the Kubernetes schemas (kubernetes-validate, strict), for
#     the oldest supported version (1.30: native sidecars, preStop sleep) and the newest;
#   - the sidecar configs they embed, with twilio-sidecar's own validate;
#   - the Prometheus alert rules' shape, and that every metric they use exists;
#   - the systemd unit with systemd-analyze verify, where systemd-analyze exists.
# Usage: scripts/validate-deploy.sh [path/to/twilio-sidecar]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/twilio-sidecar}
[ -x "$bin" ] || cargo build --locked --bin twilio-sidecar

if ! command -v kubernetes-validate >/dev/null 2>&1 || ! python3 -c 'import yaml' 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check kubernetes-validate pyyaml
fi

core=(deploy/kubernetes/sidecar/*.yaml)
for f in deploy/kubernetes/gateway/*.yaml; do
  # CRDs (the Prometheus Operator's ServiceMonitor) are not in the Kubernetes schemas.
  grep -q '^apiVersion: monitoring.coreos.com/' "$f" || core+=("$f")
done
for version in 1.30.0 ""; do
  if [ -n "$version" ]; then
    kubernetes-validate --strict --quiet -k "$version" "${core[@]}"
  else
    kubernetes-validate --strict --quiet "${core[@]}"
  fi
done
echo "validate-deploy: ${#core[@]} Kubernetes manifests pass strict schema validation (1.30 and latest)"

python3 scripts/check_deploy.py "$bin"

if command -v systemd-analyze >/dev/null 2>&1; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  sed "s#/usr/local/bin/twilio-sidecar#$(realpath "$bin")#g" deploy/systemd/twilio-sidecar.service >"$tmp/twilio-sidecar.service"
  systemd-analyze verify "$tmp/twilio-sidecar.service"
  echo "validate-deploy: systemd unit verifies"
else
  echo "validate-deploy: systemd-analyze not available; systemd unit not verified"
fi
