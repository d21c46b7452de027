#!/usr/bin/env bash
# Validates everything under deploy/:
#   - each Kubernetes kustomization, rendered as `kubectl kustomize` would
#     (scripts/kustomize_render.py; every manifest must belong to one), against the Kubernetes
#     schemas (kubernetes-validate, strict) for the oldest supported version (1.30: native
#     sidecars, preStop sleep) and the newest;
#   - the sidecar configs they embed, with twilio-sidecar's own validate;
#   - the Grafana dashboard and the Prometheus alert rules: shape, and that every metric they
#     use exists;
#   - the systemd unit with systemd-analyze verify, where systemd-analyze exists.
# Usage: scripts/validate-deploy.sh [path/to/twilio-sidecar]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/apt.sh
source scripts/python-env.sh
bin=${1:-target/debug/twilio-sidecar}
[ -x "$bin" ] || cargo build --locked --bin twilio-sidecar

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

python3 scripts/kustomize_render.py --check-all deploy/kubernetes
rendered=()
for dir in $(find deploy/kubernetes -name kustomization.yaml -printf '%h\n' | sort); do
  out="$tmp/$(echo "$dir" | tr / _).yaml"
  python3 scripts/kustomize_render.py "$dir" >"$out"
  # CRDs (the Prometheus Operator's ServiceMonitor) are not in the Kubernetes schemas; they
  # are checked by check_deploy.py.
  grep -q '^apiVersion: monitoring.coreos.com/' "$out" || rendered+=("$out")
done
for version in 1.30.0 ""; do
  if [ -n "$version" ]; then
    kubernetes-validate --strict --quiet -k "$version" "${rendered[@]}"
  else
    kubernetes-validate --strict --quiet "${rendered[@]}"
  fi
done
echo "validate-deploy: ${#rendered[@]} rendered kustomizations pass strict schema validation (1.30 and latest)"

python3 scripts/check_deploy.py "$bin"

if command -v systemd-analyze >/dev/null 2>&1; then
  sed "s#/usr/local/bin/twilio-sidecar#$(realpath "$bin")#g" deploy/systemd/twilio-sidecar.service >"$tmp/twilio-sidecar.service"
  systemd-analyze verify "$tmp/twilio-sidecar.service"
  echo "validate-deploy: systemd unit verifies"
else
  echo "validate-deploy: systemd-analyze not available; systemd unit not verified"
fi
