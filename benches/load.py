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
With `--access-logs` a second sidecar joins, with 20 [[clients]] authenticating every request.
With `--tls-in` the app's side is TLS as well: nginx and HAProxy terminate it, the sidecar runs
in transparent mode (CONNECT, then TLS with its local CA's leaf), and every row is driven by
benches/load_client.rs, since wrk cannot send a CONNECT.
Reported: req/s, p50/p99/p99.9 latency, proxy CPU seconds per 10k requests, proxy peak RSS,
and ratios against nginx and against direct.

    python3 benches/load.py --binary target/release/twilio-sidecar            # full run
    python3 benches/load.py --binary target/release/twilio-sidecar --upstream-http2   # h2 upstream
    python3 benches/load.py --binary target/release/twilio-sidecar --tls-in   # transparent mode
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


def start_nginx(d, workers, upstream, auth, wrap=(), access_log=False, tls_in=False) -> Proc:
    """`wrap` is a command prefix (e.g. valgrind); nginx then runs as one process, no master.
    With `access_log`, one line per request to a file (the combined format), unbuffered. With
    `tls_in`, the app's side is TLS too (the api.twilio.com certificate)."""
    port = free_port()
    listen = (f"listen 127.0.0.1:{port} ssl; ssl_certificate {d}/server.pem; "
              f"ssl_certificate_key {d}/server.key;") if tls_in else f"listen 127.0.0.1:{port};"
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
    {listen}
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


def start_haproxy(d, workers, upstream, auth, wrap=(), http2=False, access_log=False, tls_in=False) -> Proc:
    """With `access_log`, HAProxy's HTTP log line per request, to stdout (a file here). With
    `tls_in`, the app's side is TLS too (the api.twilio.com certificate)."""
    port = free_port()
    tls = ""
    if tls_in:
        (d / "server-full.pem").write_text((d / "server.pem").read_text() + (d / "server.key").read_text())
        tls = f" ssl crt {d}/server-full.pem alpn http/1.1"
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
  bind 127.0.0.1:{port}{tls}
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


def start_sidecar(d, workers, upstream, binary, wrap=(), clients=0, access_log=False, defaults=False,
                  intercept=False) -> Proc:
    """The sidecar doing the benchmark's job; with `clients`, that many [[clients]] (two hashes
    each, every one allowed the job) and anonymous requests refused, so every request
    authenticates (client_header() is the last client's). With `intercept`, transparent mode
    is on: a local CA from `ca init` in d/intercept-ca (apps trust its ca.pem)."""
    port, admin = free_port(), free_port()
    intercept_table = ""
    if intercept:
        ca = d / "intercept-ca"
        if not (ca / "ca.pem").exists():
            subprocess.run([binary, "ca", "init", "--dir", str(ca)], check=True, capture_output=True)
        intercept_table = f'[intercept]\nca_cert = "{ca}/ca.pem"\nca_key = {{ file = "{ca}/ca.key" }}\n'
    name = f"sidecar-{port}"
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
    conf = d / f"{name}.toml"
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
{intercept_table}{tables}""")
    # Its access log is on by default (info); the benchmark turns it off unless asked.
    level = "info" if access_log else "warn"
    p = subprocess.Popen([*wrap, binary, "--log-level", level, "run", "--config", str(conf)],
                         stdout=subprocess.DEVNULL, stderr=open(d / f"{name}.log", "w"))
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


def run_load_client(client, mode, port, conns, seconds, ca, path=PATH, proxy_auth=None) -> dict:
    """benches/load_client.rs: what wrk cannot drive (CONNECT then TLS), and TLS to the proxies
    that terminate it, so a table's rows share one load generator."""
    cmd = [client, "--address", f"127.0.0.1:{port}", "--mode", mode, "--path", path,
           "--connections", str(conns), "--seconds", str(seconds), "--threads", str(min(conns, 2))]
    if ca:
        cmd += ["--ca", str(ca)]
    if proxy_auth:
        cmd += ["--proxy-authorization", proxy_auth]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    return {"rps": r["rps"], "requests": r["requests"], "non2xx": r["non2xx"],
            "socket_errors": f"{r['errors']} failed" if r["errors"] else "",
            "p50_us": r["p50_us"], "p99_us": r["p99_us"], "p999_us": r["p999_us"]}


class Target:
    """A row of the table: the proxy (None for direct), how to load it and how to check it."""

    def __init__(self, proc, drive, check):
        self.proc, self.drive, self.check = proc, drive, check


def wrk_target(proc, url, d, headers=()) -> Target:
    def check():
        # Every proxy answers 200 with the body and refuses a path outside the allow-list.
        if proc is None:
            return
        req = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
        with urllib.request.urlopen(req) as r:
            assert r.status == 200 and json.loads(r.read())["messages"], url
        try:
            urllib.request.urlopen(urllib.request.Request(url.replace("Messages", "Calls"), headers=req.headers))
            raise SystemExit(f"{url}: a path outside the allow-list was forwarded")
        except urllib.error.HTTPError as e:
            assert e.code == 403, (url, e.code)
    return Target(proc, lambda c, seconds: run_wrk(url, c, seconds, d, headers), check)


def client_target(proc, client, mode, port, ca, proxy_auth=None) -> Target:
    def drive(c, seconds, path=PATH):
        return run_load_client(client, mode, port, c, seconds, ca, path=path, proxy_auth=proxy_auth)

    def check():
        ok = drive(1, 1)
        assert ok["requests"] and not ok["non2xx"] and not ok["socket_errors"], (mode, port, ok)
        if proc is None:
            return  # direct: the upstream answers any path
        refused = drive(1, 1, path=PATH.replace("Messages", "Calls"))
        if refused["non2xx"] != refused["requests"] or not refused["requests"]:
            raise SystemExit(f"{mode} to {port}: a path outside the allow-list was forwarded: {refused}")
    return Target(proc, drive, check)


def measure(targets, concurrencies, args):
    time.sleep(0.5)
    idle_rss = {name: t.proc.memory_kib("VmRSS") for name, t in targets.items() if t.proc}
    for t in targets.values():
        t.check()

    names = list(targets)
    # Warm-up, not measured: pools filled and TLS handshakes done at every concurrency, so the
    # first round does not pay for them.
    if not args.smoke:
        for c in concurrencies:
            for name in names:
                targets[name].drive(c, 2)

    samples = {}
    for rnd in range(args.rounds):
        for c in concurrencies:
            order = names[rnd % len(names):] + names[:rnd % len(names)]
            for name in order:
                p = targets[name].proc
                user0, sys0 = p.cpu_split() if p else (0.0, 0.0)
                busy0, t0 = machine_busy_seconds(), time.monotonic()
                r = targets[name].drive(c, args.seconds)
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
                print(f"round {rnd + 1} c={c:<4} {name:<24} {r['rps']:>10.0f} req/s  p50 {r['p50_us']:>6} us  "
                      f"p99 {r['p99_us']:>6} us  p99.9 {r['p999_us']:>6} us", flush=True)
    peak_rss = {name: t.proc.memory_kib("VmHWM") for name, t in targets.items() if t.proc}
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
    ap.add_argument("--tls-in", action="store_true",
                    help="the app's side is TLS too: nginx and HAProxy terminate it, the sidecar in "
                         "transparent mode (CONNECT, its local CA), with and without [[clients]]; "
                         "every row driven by benches/load_client.rs; one worker, access logs on")
    ap.add_argument("--load-client", default=str(ROOT / "target/release/examples/load_client"),
                    help="benches/load_client.rs, built (cargo build --release --example load_client)")
    ap.add_argument("--upstream-http2", action="store_true",
                    help="the upstream offers h2 as well as http/1.1 (HAProxy and the sidecar take it, "
                         "nginx cannot); results go to results-h2.json")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.seconds, args.concurrency = 1, 2, "1,16"
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    if args.tls_in:
        args.workers, args.access_logs = 1, True
    # The one-worker, logged run is the deployment a sidecar usually is: it gains rows with
    # [[clients]] authenticating every request (and, with --tls-in, transparent mode).
    with_clients = args.access_logs

    d = pathlib.Path(tempfile.mkdtemp(prefix="ts-load-"))
    make_certs(d)
    auth = "Basic " + base64.b64encode(f"{KEY_SID}:{SECRET}".encode()).decode()
    started = []

    def start(proc):
        started.append(proc)
        return proc

    try:
        upstream = start(start_upstream(d, args.workers, args.upstream_http2))
        tls_in = args.tls_in
        nginx = start(start_nginx(d, args.workers, upstream.port, auth, access_log=args.access_logs, tls_in=tls_in))
        haproxy = start(start_haproxy(d, args.workers, upstream.port, auth, http2=args.upstream_http2,
                                      access_log=args.access_logs, tls_in=tls_in))
        sidecar = start(start_sidecar(d, args.workers, upstream.port, args.binary, access_log=args.access_logs,
                                      defaults=args.access_logs, intercept=tls_in))
        clients = start(start_sidecar(d, args.workers, upstream.port, args.binary, clients=20,
                                      access_log=True, defaults=True, intercept=tls_in)) if with_clients else None
        if tls_in:
            client, ca, sidecar_ca = args.load_client, d / "ca.pem", d / "intercept-ca" / "ca.pem"
            proxy_auth = client_header(20).split(": ", 1)[1]
            targets = {
                "direct": client_target(None, client, "tls", upstream.port, ca),
                "nginx": client_target(nginx, client, "tls", nginx.port, ca),
                "haproxy": client_target(haproxy, client, "tls", haproxy.port, ca),
                "twilio-sidecar": client_target(sidecar, client, "connect", sidecar.port, sidecar_ca),
                "twilio-sidecar+clients": client_target(clients, client, "connect", clients.port, sidecar_ca,
                                                        proxy_auth=proxy_auth),
            }
        else:
            url = lambda p: f"http://127.0.0.1:{p.port}{PATH}"
            targets = {
                "direct": wrk_target(None, f"https://127.0.0.1:{upstream.port}{PATH}", d),
                "nginx": wrk_target(nginx, url(nginx), d),
                "haproxy": wrk_target(haproxy, url(haproxy), d),
                "twilio-sidecar": wrk_target(sidecar, url(sidecar), d),
            }
            if clients:
                targets["twilio-sidecar+clients"] = wrk_target(clients, url(clients), d, (client_header(20),))
        samples, idle_rss, peak_rss, names = measure(targets, concurrencies, args)
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
                     "load": "benches/load_client.rs" if args.tls_in else "wrk", "tls_in": args.tls_in,
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
    name = args.results_name or ("results-h2.json" if args.upstream_http2 else
                                 "results-tls.json" if args.tls_in else "results.json")
    (out / name).write_text(json.dumps(results, indent=1) + "\n")
    shutil.rmtree(d, ignore_errors=True)
    print(json.dumps(results["rows"]))


if __name__ == "__main__":
    main()
