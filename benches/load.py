#!/usr/bin/env python3
"""End-to-end load comparison: direct vs nginx vs HAProxy vs twilio-sidecar, one machine, one run.

Started by benches/load.sh (which installs nginx, HAProxy and wrk and builds the sidecar). Every
proxy does the same job: plain HTTP in; a method + path allow-list equivalent to the sidecar's
policy (anything else gets 403); the app's Authorization/Cookie removed and an API-key
Authorization header set; TLS out with certificate verification and SNI for api.twilio.com;
a keep-alive pool to the upstream. The upstream is an nginx TLS server answering a fixed
Twilio-like JSON body (HTTP/1.1 only, so every proxy speaks the same protocol to it; with
`--upstream-http2` it offers h2 too, and HAProxy and the sidecar multiplex requests over h2
connections while nginx, whose proxy module has no HTTP/2 upstreams, stays on HTTP/1.1). Each proxy
gets the same number of workers (nginx worker_processes, HAProxy nbthread, twilio-sidecar
listen.workers serving threads). Access logs are off everywhere.

The load generator is wrk, with the same thread count for every target; targets are run in a
rotating order within each round so drift hits all alike; figures are medians over rounds.
Reported: req/s, p50/p99/p99.9 latency, proxy CPU seconds per 10k requests, proxy peak RSS,
and ratios against nginx and against direct.

    python3 benches/load.py --binary target/release/twilio-sidecar            # full run
    python3 benches/load.py --binary target/release/twilio-sidecar --upstream-http2   # h2 upstream
    python3 benches/load.py --binary target/debug/twilio-sidecar --smoke      # a few seconds
"""
import argparse
import base64
import hashlib
import json
import os
import pathlib
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parent.parent
SID = "AC0123456789abcdef0123456789abcdef"
KEY_SID = "SK0123456789abcdef0123456789abcdef"
SECRET = "load-test-secret-not-real"
PATH = f"/2010-04-01/Accounts/{SID}/Messages.json"
BODY = json.dumps({
    "first_page_uri": PATH + "?PageSize=1&Page=0", "end": 0, "previous_page_uri": None,
    "messages": [{"sid": "SM" + "a" * 32, "account_sid": SID, "status": "delivered",
                  "body": "hello", "from": "+15005550006", "to": "+15005550006", "num_segments": "1",
                  "date_created": "Thu, 30 Jul 2015 20:12:31 +0000", "price": None, "uri": PATH}],
    "uri": PATH + "?PageSize=1&Page=0", "page_size": 1, "start": 0, "next_page_uri": None, "page": 0,
})
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def version(cmd) -> str:
    out = subprocess.run(cmd, capture_output=True, text=True)
    return (out.stdout + out.stderr).strip().splitlines()[0]


def make_certs(d: pathlib.Path) -> None:
    def run(*args):
        subprocess.run(args, check=True, capture_output=True)
    run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.pem"), "-days", "2", "-subj", "/CN=load test CA")
    run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"), "-subj", "/CN=api.twilio.com")
    (d / "ext.cnf").write_text("subjectAltName=DNS:api.twilio.com\nextendedKeyUsage=serverAuth\n")
    run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.pem"), "-CAkey", str(d / "ca.key"),
        "-CAcreateserial", "-out", str(d / "server.pem"), "-days", "2", "-extfile", str(d / "ext.cnf"))


class Proc:
    """A started server and the processes whose CPU and memory count as its own."""

    def __init__(self, name, popen, port):
        self.name, self.popen, self.port = name, popen, port

    def pids(self):
        pids = [self.popen.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        except FileNotFoundError:
            pass
        return pids

    def cpu_split(self) -> tuple:
        """(user, system) CPU seconds of all the proxy's processes and threads."""
        user = system = 0
        for pid in self.pids():
            try:
                fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user, system = user + int(fields[11]), system + int(fields[12])  # utime, stime
            except OSError:
                pass
        return user / CLK_TCK, system / CLK_TCK

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def memory_kib(self, key: str) -> int:
        total = 0
        for pid in self.pids():
            try:
                m = re.search(rf"^{key}:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text(), re.M)
                total += int(m.group(1)) if m else 0
            except OSError:
                pass
        return total

    def stop(self):
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent not idle (all cores, every process, interrupts)."""
    fields = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def start_upstream(d, workers, http2=False) -> Proc:
    """With `http2`, the upstream offers h2 by ALPN besides http/1.1, as an edge speaking HTTP/2
    would; each proxy then uses what it can (nginx's proxy module only HTTP/1.1)."""
    port = free_port()
    alpn = " http2" if http2 else ""
    conf = d / "upstream.conf"
    conf.write_text(f"""
daemon off; master_process on; worker_processes {workers}; pid {d}/upstream.pid;
error_log {d}/upstream-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  server {{
    listen 127.0.0.1:{port} ssl{alpn};
    ssl_certificate {d}/server.pem; ssl_certificate_key {d}/server.key;
    ssl_session_cache shared:SSL:1m;
    location / {{ default_type application/json; return 200 '{BODY}'; }}
  }}
}}
""")
    p = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return Proc("upstream", p, port)


def start_nginx(d, workers, upstream, auth, wrap=(), access_log=False) -> Proc:
    """`wrap` is a command prefix (e.g. valgrind); nginx then runs as one process, no master.
    With `access_log`, one line per request to a file (the combined format), unbuffered."""
    port = free_port()
    conf = d / "nginx-proxy.conf"
    master = "off" if wrap else "on"
    log = f"access_log {d}/nginx-access.log combined;" if access_log else "access_log off;"
    conf.write_text(f"""
daemon off; master_process {master}; worker_processes {workers}; pid {d}/nginx-proxy.pid;
error_log {d}/nginx-proxy-error.log warn;
events {{ worker_connections 4096; }}
http {{
  {log}
  keepalive_requests 1000000;
  upstream twilio {{ server 127.0.0.1:{upstream}; keepalive 256; }}
  server {{
    listen 127.0.0.1:{port};
    # The allow-list: what the sidecar's policy allows, and nothing else.
    location ~ ^/2010-04-01/Accounts/{SID}/Messages(\\.json|/.*)?$ {{
      limit_except GET POST {{ deny all; }}
      proxy_pass https://twilio;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host api.twilio.com;
      proxy_set_header Authorization "{auth}";
      proxy_set_header Cookie "";
      proxy_set_header Proxy-Authorization "";
      proxy_ssl_server_name on;
      proxy_ssl_name api.twilio.com;
      proxy_ssl_verify on;
      proxy_ssl_trusted_certificate {d}/ca.pem;
      proxy_ssl_session_reuse on;
    }}
    location / {{ default_type application/json; return 403 '{{"code":70051,"status":403}}'; }}
  }}
}}
""")
    p = subprocess.Popen([*wrap, "nginx", "-c", str(conf), "-p", str(d)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 120 if wrap else 20)
    return Proc("nginx", p, port)


def start_haproxy(d, workers, upstream, auth, wrap=(), http2=False, access_log=False) -> Proc:
    """With `access_log`, HAProxy's HTTP log line per request, to stdout (a file here)."""
    port = free_port()
    alpn = "h2,http/1.1" if http2 else "http/1.1"
    conf = d / "haproxy.cfg"
    glog, dlog = ("\n  log stdout format raw local0", "\n  log global\n  option httplog") if access_log else ("", "")
    conf.write_text(f"""
global
  nbthread {workers}
  maxconn 8000
  ssl-server-verify required{glog}
defaults
  mode http{dlog}
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  http-reuse always
frontend app
  bind 127.0.0.1:{port}
  acl allowed_path path_reg ^/2010-04-01/Accounts/{SID}/Messages(\\.json|/.*)?$
  acl allowed_method method GET POST
  http-request deny deny_status 403 unless allowed_path allowed_method
  http-request del-header Cookie
  http-request del-header Proxy-Authorization
  http-request set-header Authorization "{auth}"
  http-request set-header Host api.twilio.com
  default_backend twilio
backend twilio
  server api 127.0.0.1:{upstream} ssl verify required ca-file {d}/ca.pem sni str(api.twilio.com) verifyhost api.twilio.com alpn {alpn} pool-max-conn 256
""")
    out = open(d / "haproxy-access.log", "w") if access_log else subprocess.DEVNULL
    p = subprocess.Popen([*wrap, "haproxy", "-f", str(conf)], stdout=out, stderr=subprocess.DEVNULL)
    wait_port(port, 120 if wrap else 20)
    return Proc("haproxy", p, port)


CLIENT_SECRET = "load-benchmark-local-secret-0123456789abcdef"


def client_header(clients: int) -> str:
    """The Authorization header of the last of `clients` clients (see start_sidecar)."""
    raw = f"app-{clients - 1:02}:{CLIENT_SECRET}-{clients - 1}".encode()
    return "Authorization: Basic " + base64.b64encode(raw).decode()


def start_sidecar(d, workers, upstream, binary, wrap=(), clients=0, access_log=False, defaults=False) -> Proc:
    """The sidecar doing the benchmark's job; with `clients`, that many [[clients]] (two hashes
    each, every one allowed the job) and anonymous requests refused, so every request
    authenticates (client_header() is the last client's)."""
    port, admin = free_port(), free_port()
    (d / "key_sid").write_text(KEY_SID)
    (d / "secret").write_text(SECRET)
    rules = '["GET,POST /2010-04-01/Accounts/{AccountSid}/Messages.json", "GET,POST /2010-04-01/Accounts/{AccountSid}/Messages/*"]'
    tables = "".join(
        f"""
[[clients]]
id = "app-{i:02}"
secret_sha256 = ["{hashlib.sha256(f'{CLIENT_SECRET}-{i}-old'.encode()).hexdigest()}", "{hashlib.sha256(f'{CLIENT_SECRET}-{i}'.encode()).hexdigest()}"]
allow = {rules}
""" for i in range(clients))
    conf = d / "sidecar.toml"
    conf.write_text(f"""
[listen]
address = "127.0.0.1:{port}"
workers = {workers}
[admin]
address = "127.0.0.1:{admin}"
[upstream]
connect_to = "127.0.0.1:{upstream}"
ca_file = "{d}/ca.pem"
allowed_hosts = ["api.twilio.com"]
{"" if defaults else 'pool_max_idle_per_host = 256'}
[reload]
watch = false
{"" if defaults else '[limits]'}
{"" if defaults else 'max_concurrent_requests = 20000'}
[[accounts]]
sid = "{SID}"
credential = {{ type = "api_key", key_sid = {{ file = "{d}/key_sid" }}, secret = {{ file = "{d}/secret" }} }}
[policy]
allow = {rules}
{tables}""")
    # Its access log is on by default (info); the benchmark turns it off unless asked.
    level = "info" if access_log else "warn"
    p = subprocess.Popen([*wrap, binary, "--log-level", level, "run", "--config", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=open(d / "sidecar.log", "w"))
    wait_port(port, 120 if wrap else 20)
    return Proc("twilio-sidecar", p, port)


LUA = """
done = function(summary, latency, requests)
  io.write(string.format("LAT %d %d %d\\n", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"""


def run_wrk(url, conns, seconds, d, headers=()) -> dict:
    script = d / "report.lua"
    script.write_text(LUA)
    threads = min(conns, 2)
    extra = [a for h in headers for a in ("-H", h)]
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{seconds}s", *extra, "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p50, p99, p999 = (int(x) for x in re.search(r"LAT (\d+) (\d+) (\d+)", out).groups())
    return {"rps": rps, "requests": total, "non2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else "", "p50_us": p50, "p99_us": p99, "p999_us": p999}


def measure(targets, upstream, concurrencies, args, d):
    urls = {name: (f"http://127.0.0.1:{p.port}{PATH}" if p else f"https://127.0.0.1:{upstream.port}{PATH}")
            for name, p in targets.items()}
    time.sleep(0.5)
    idle_rss = {name: p.memory_kib("VmRSS") for name, p in targets.items() if p}

    # Sanity: every proxy answers 200 with the body and refuses a path outside the allow-list.
    for name, p in targets.items():
        if p is None:
            continue
        with urllib.request.urlopen(urls[name]) as r:
            assert r.status == 200 and json.loads(r.read())["messages"], name
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{p.port}/2010-04-01/Accounts/{SID}/Calls.json")
            raise SystemExit(f"{name} forwarded a path outside its allow-list")
        except urllib.error.HTTPError as e:
            assert e.code == 403, (name, e.code)

    names = list(targets)
    # Warm-up, not measured: pools filled and TLS handshakes done at every concurrency, so the
    # first round does not pay for them.
    if not args.smoke:
        for c in concurrencies:
            for name in names:
                run_wrk(urls[name], c, 2, d)

    samples = {}
    for rnd in range(args.rounds):
        for c in concurrencies:
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                p = targets[name]
                user0, sys0 = p.cpu_split() if p else (0.0, 0.0)
                busy0, t0 = machine_busy_seconds(), time.monotonic()
                r = run_wrk(urls[name], c, args.seconds, d)
                busy1, t1 = machine_busy_seconds(), time.monotonic()
                user1, sys1 = p.cpu_split() if p else (0.0, 0.0)
                n = r["requests"] or 1
                r["cpu_s_per_10k"] = ((user1 - user0 + sys1 - sys0) / n * 10_000) if p else None
                # Per-request CPU in microseconds, split so the report can show what a proxy
                # could gain at best: its user-space part is its own, the rest is shared.
                r["proxy_user_us"] = (user1 - user0) / n * 1e6 if p else None
                r["proxy_sys_us"] = (sys1 - sys0) / n * 1e6 if p else None
                r["machine_us"] = (busy1 - busy0) / n * 1e6
                r["machine_busy"] = (busy1 - busy0) / ((t1 - t0) * (os.cpu_count() or 1))
                if r["non2xx"] or r["socket_errors"]:
                    raise SystemExit(f"{name} at c={c}: {r['non2xx']} non-2xx responses, socket errors: {r['socket_errors']}")
                samples.setdefault((name, c), []).append(r)
                print(f"round {rnd + 1} c={c:<4} {name:<15} {r['rps']:>10.0f} req/s  p50 {r['p50_us']:>6} us  "
                      f"p99 {r['p99_us']:>6} us  p99.9 {r['p999_us']:>6} us", flush=True)
    peak_rss = {name: p.memory_kib("VmHWM") for name, p in targets.items() if p}
    return samples, idle_rss, peak_rss, names


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(ROOT / "target/release/twilio-sidecar"))
    ap.add_argument("--smoke", action="store_true", help="a few seconds, checks that every target works")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--concurrency", default="1,16,256")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(ROOT / "benches"), help="where results.json, RESULTS.md and load.svg go")
    ap.add_argument("--label", default="", help="a name for this run in the results (e.g. 'before')")
    ap.add_argument("--access-logs", action="store_true",
                    help="every proxy writes an access-log line per request (nginx combined, HAProxy "
                         "httplog, the sidecar's own), and the sidecar runs with its default limits")
    ap.add_argument("--results-name", help="the results file (default results.json, results-h2.json)")
    ap.add_argument("--upstream-http2", action="store_true",
                    help="the upstream offers h2 as well as http/1.1 (HAProxy and the sidecar take it, "
                         "nginx cannot); results go to results-h2.json")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.concurrency = 1, 2, "1,16"
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    d = pathlib.Path(tempfile.mkdtemp(prefix="ts-load-"))
    make_certs(d)
    auth = "Basic " + base64.b64encode(f"{KEY_SID}:{SECRET}".encode()).decode()
    started = []

    def start(proc):
        started.append(proc)
        return proc

    try:
        upstream = start(start_upstream(d, args.workers, args.upstream_http2))
        targets = {
            "direct": None,
            "nginx": start(start_nginx(d, args.workers, upstream.port, auth, access_log=args.access_logs)),
            "haproxy": start(start_haproxy(d, args.workers, upstream.port, auth, http2=args.upstream_http2,
                                           access_log=args.access_logs)),
            "twilio-sidecar": start(start_sidecar(d, args.workers, upstream.port, args.binary,
                                                  access_log=args.access_logs, defaults=args.access_logs)),
        }
        samples, idle_rss, peak_rss, names = measure(targets, upstream, concurrencies, args, d)
    finally:
        for p in started:
            p.stop()

    def med(xs):
        xs = [x for x in xs if x is not None]
        return statistics.median(xs) if xs else None

    results = {
        "label": args.label,
        "smoke": args.smoke,
        "machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                    "cpu": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")},
        "versions": {"nginx": version(["nginx", "-v"]), "haproxy": version(["haproxy", "-v"]),
                     "wrk": version(["wrk", "--version"]), "twilio-sidecar": version([args.binary, "--version"])},
        "settings": {"rounds": args.rounds, "seconds": args.seconds, "workers": args.workers,
                     "concurrency": concurrencies, "binary": args.binary, "access_logs": args.access_logs,
                     "upstream_alpn": "h2,http/1.1" if args.upstream_http2 else "http/1.1"},
        "idle_rss_kib": idle_rss,
        "peak_rss_kib": peak_rss,
        "rows": [],
    }
    for c in concurrencies:
        for name in names:
            rs = samples[(name, c)]
            results["rows"].append({
                "target": name, "concurrency": c,
                "rps": med([r["rps"] for r in rs]),
                "p50_us": med([r["p50_us"] for r in rs]), "p99_us": med([r["p99_us"] for r in rs]),
                "p999_us": med([r["p999_us"] for r in rs]),
                "cpu_s_per_10k": med([r["cpu_s_per_10k"] for r in rs]),
                "proxy_user_us": med([r["proxy_user_us"] for r in rs]),
                "proxy_sys_us": med([r["proxy_sys_us"] for r in rs]),
                "machine_us": med([r["machine_us"] for r in rs]),
                "machine_busy": med([r["machine_busy"] for r in rs]),
            })
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.results_name or ("results-h2.json" if args.upstream_http2 else "results.json")
    (out / name).write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(results["rows"]))


if __name__ == "__main__":
    main()
