#!/usr/bin/env bash
# End-to-end load comparison on this machine, in one run: direct (no proxy), nginx, HAProxy and
# twilio-sidecar doing the same job in front of the same TLS upstream, driven by wrk; then the
# same again with an upstream that also offers HTTP/2 (results-h2.json), with one worker each
# and access logs on, plus the sidecar with [[clients]] (results-1w.json), and with TLS from the
# app too — nginx and HAProxy terminating it, the sidecar in transparent mode (CONNECT), driven
# by benches/load_client.rs (results-tls.json). Then counts each proxy's user-space
# instructions per request under callgrind (benches/instructions.py).
# Writes those JSON files, benches/instructions.json, benches/RESULTS.md and benches/load.svg.
#
#   bash benches/load.sh              # the full run (about 45 minutes)
#   bash benches/load.sh --smoke      # a few seconds: checks every target works (run in CI)
#   bash benches/load.sh --label X    # extra arguments go to benches/load.py
#
# To compare two builds of twilio-sidecar alone: python3 benches/ab.py OLD NEW
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }
missing=()
have nginx || missing+=(nginx-light)
have haproxy || missing+=(haproxy)
have wrk || missing+=(wrk)
have openssl || missing+=(openssl)
have pgrep || missing+=(procps)
have valgrind || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${1:-}" = "--smoke" ]; then
  shift
  cargo build --locked --bin twilio-sidecar --example load_client
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  python3 benches/load.py --binary target/debug/twilio-sidecar --smoke --out "$out" "$@"
  python3 benches/load.py --binary target/debug/twilio-sidecar --smoke --upstream-http2 --out "$out" "$@"
  python3 benches/load.py --binary target/debug/twilio-sidecar --smoke --workers 1 --access-logs \
    --results-name results-1w.json --out "$out" "$@"
  python3 benches/load.py --binary target/debug/twilio-sidecar --smoke --tls-in \
    --load-client target/debug/examples/load_client --out "$out" "$@"
  python3 benches/instructions.py --binary target/debug/twilio-sidecar --seconds 1 --out "$out/instructions.json"
  python3 benches/ab.py target/debug/twilio-sidecar target/debug/twilio-sidecar --rounds 1 --seconds 1 \
    --concurrency 4 --label "smoke" --out "$out/ab.json"
  python3 benches/report.py --results "$out/results.json" --before /nonexistent \
    --instructions "$out/instructions.json" --ab "$out/ab.json" --http2 "$out/results-h2.json" \
    --one-worker "$out/results-1w.json" --tls-in "$out/results-tls.json" --out "$out"
  grep -q "twilio-sidecar" "$out/RESULTS.md"
  grep -q "The last change, A/B" "$out/RESULTS.md"
  grep -q "When the upstream offers HTTP/2" "$out/RESULTS.md"
  grep -q "One worker each, access logs on" "$out/RESULTS.md"
  grep -q "TLS from the app: transparent mode" "$out/RESULTS.md"
  echo "load.sh: smoke run OK (RESULTS.md not touched)"
  exit 0
fi

cargo build --locked --release --bin twilio-sidecar --example load_client
python3 benches/load.py --binary target/release/twilio-sidecar "$@"
python3 benches/load.py --binary target/release/twilio-sidecar --upstream-http2 "$@"
python3 benches/load.py --binary target/release/twilio-sidecar --workers 1 --access-logs \
  --results-name results-1w.json "$@"
python3 benches/load.py --binary target/release/twilio-sidecar --tls-in "$@"
python3 benches/instructions.py --binary target/release/twilio-sidecar --out benches/instructions.json
python3 benches/report.py
