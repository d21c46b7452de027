#!/usr/bin/env python3
"""Checks of deploy/ that need more than a schema (called by scripts/validate-deploy.sh).

- Every sidecar.toml embedded in a ConfigMap passes `twilio-sidecar validate --skip-secrets`.
- The ServiceMonitor has the fields the Prometheus Operator needs.
- Every alert rule has alert, expr, severity and summary, and every twilio_sidecar_* metric it
  uses is one the binary exports (the names registered in src/metrics/).
- The Grafana dashboard is valid JSON with panels whose queries use only exported metrics, and
  every metric the sidecar exports for requests, denials, latency, tokens and reloads appears.
"""
import hashlib
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import tomllib

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def fail(msg: str) -> None:
    print(f"check_deploy: {msg}", file=sys.stderr)
    sys.exit(1)


def check_client_keys() -> int:
    """Every example app key (a Secret with client_id and local_secret) matches a hash in the
    gateway's [[clients]] table for that id, so the example works as shipped."""
    gateway = None
    secrets = []
    for path in sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            data = doc.get("data", {}) or {}
            if doc.get("kind") == "ConfigMap" and doc["metadata"]["name"] == "twilio-gateway":
                gateway = tomllib.loads(data["sidecar.toml"])
            string_data = doc.get("stringData", {}) or {}
            if doc.get("kind") == "Secret" and "local_secret" in string_data:
                secrets.append((path, string_data))
    if gateway is None:
        fail("no twilio-gateway ConfigMap")
    for path, data in secrets:
        client = next((c for c in gateway.get("clients", []) if c["id"] == data["client_id"]), None)
        if client is None:
            fail(f"{path.relative_to(ROOT)}: no [[clients]] entry for {data['client_id']!r} in the gateway")
        digest = hashlib.sha256(data["local_secret"].encode()).hexdigest()
        if digest not in client.get("secret_sha256", []):
            fail(f"{path.relative_to(ROOT)}: its local_secret's SHA-256 is not in the gateway's "
                 f"clients[{data['client_id']!r}].secret_sha256")
    if not secrets:
        fail("no example client key (a Secret with client_id and local_secret)")
    return len(secrets)


def metrics_in(expr: str) -> list:
    return [re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"twilio_sidecar_([a-z_]+)", expr)]


def check_dashboard(exported: set) -> int:
    path = ROOT / "deploy" / "grafana" / "twilio-sidecar.json"
    dash = json.loads(path.read_text())
    used = set()
    panels = dash.get("panels") or fail(f"{path.name}: no panels")
    for panel in panels:
        targets = panel.get("targets") or fail(f"{path.name}: panel {panel.get('title')!r} has no queries")
        for target in targets:
            for metric in metrics_in(target.get("expr", "")):
                if metric not in exported:
                    fail(f"{path.name}: panel {panel['title']!r} uses twilio_sidecar_{metric}, "
                         "which the sidecar does not export")
                used.add(metric)
    for wanted in ("requests_total", "upstream_duration_seconds", "oauth_token_seconds_until_expiry",
                   "config_reloads_total", "credential_generation"):
        if wanted not in used:
            fail(f"{path.name}: no panel shows twilio_sidecar_{wanted}")
    return len(panels)


def main() -> None:
    binary = sys.argv[1]
    configs = 0
    for path in sorted((ROOT / "deploy" / "kubernetes").rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            if doc.get("kind") == "ConfigMap" and "sidecar.toml" in doc.get("data", {}):
                with tempfile.TemporaryDirectory() as tmp:
                    cfg = pathlib.Path(tmp) / "sidecar.toml"
                    cfg.write_text(doc["data"]["sidecar.toml"])
                    run = subprocess.run([binary, "validate", "--config", str(cfg), "--skip-secrets"],
                                         capture_output=True, text=True)
                    if run.returncode != 0:
                        fail(f"{path.relative_to(ROOT)}: embedded sidecar.toml does not validate:\n{run.stderr}{run.stdout}")
                configs += 1
            if doc.get("kind") == "ServiceMonitor":
                eps = doc.get("spec", {}).get("endpoints", [])
                if not doc["spec"].get("selector") or not eps or not all(e.get("port") for e in eps):
                    fail(f"{path.relative_to(ROOT)}: ServiceMonitor needs a selector and endpoints with a port")
    if configs == 0:
        fail("no embedded sidecar.toml found")
    keys = check_client_keys()

    exported = set()
    for source in sorted((ROOT / "src" / "metrics").glob("*.rs")):
        exported |= set(re.findall(r'"([a-z_]+)"', source.read_text()))
    alerts = yaml.safe_load((ROOT / "deploy" / "prometheus" / "alerts.yaml").read_text())
    rules = [r for g in alerts["groups"] for r in g["rules"]]
    panels = check_dashboard(exported)
    for rule in rules:
        for key in ("alert", "expr"):
            if not rule.get(key):
                fail(f"alert rule without {key}: {rule}")
        if rule.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            fail(f"{rule['alert']}: severity must be critical, warning or info")
        if not rule.get("annotations", {}).get("summary"):
            fail(f"{rule['alert']}: no summary")
        for metric in metrics_in(rule["expr"]):
            if metric not in exported:
                fail(f"{rule['alert']}: twilio_sidecar_{metric} is not a metric the sidecar exports")
    print(f"check_deploy: {configs} embedded configs validate; {keys} example client key(s) match "
          f"the gateway's hashes; {len(rules)} alert rules and "
          f"{panels} dashboard panels use only exported metrics")


if __name__ == "__main__":
    main()
