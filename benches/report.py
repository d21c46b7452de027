#!/usr/bin/env python3
"""Turns benches/results.json (written by benches/load.py) into benches/RESULTS.md and
benches/load.svg. Every figure comes from the JSON; nothing is typed in.

    python3 benches/report.py [--results benches/results.json] [--before benches/results-before.json]
"""
import argparse
import json
import pathlib

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLORS = {"direct": "#888888", "nginx": "#2a9d3a", "haproxy": "#1f6fb4", "twilio-sidecar": "#d1495b"}


def fmt(x, digits=0):
    return "–" if x is None else f"{x:,.{digits}f}"


def ratio(a, b):
    return "–" if a is None or not b else f"{a / b:.2f}×"


def table(results):
    rows = results["rows"]
    by = {(r["target"], r["concurrency"]): r for r in rows}
    lines = [
        "| c | target | req/s | vs nginx | vs HAProxy | vs direct | p50 µs | p99 µs | p99.9 µs | p99 vs nginx | CPU s / 10k req |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in results["settings"]["concurrency"]:
        ng, hp, dr = by[("nginx", c)], by[("haproxy", c)], by[("direct", c)]
        for name in ["direct", "nginx", "haproxy", "twilio-sidecar"]:
            r = by[(name, c)]
            lines.append(
                f"| {c} | {name} | {fmt(r['rps'])} | {ratio(r['rps'], ng['rps'])} | {ratio(r['rps'], hp['rps'])} | "
                f"{ratio(r['rps'], dr['rps'])} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | {fmt(r['p999_us'])} | "
                f"{ratio(r['p99_us'], ng['p99_us'])} | {fmt(r['cpu_s_per_10k'], 3)} |"
            )
    return "\n".join(lines)


def goal_budget(results, goal=1.3):
    """For each CPU-bound concurrency: the sidecar user-space µs per request that `goal`× nginx's
    measured req/s would leave, if every other cost stayed as measured, beside nginx's own."""
    if "machine_us" not in results["rows"][0]:
        return []
    by = {(r["target"], r["concurrency"]): r for r in results["rows"]}
    cores = results["machine"]["cores"]
    out = []
    for c in results["settings"]["concurrency"]:
        sc, ng = by[("twilio-sidecar", c)], by[("nginx", c)]
        if sc["machine_busy"] < 0.9:
            continue
        per_request = cores * 1e6 / (goal * ng["rps"])
        out.append((c, per_request - (sc["machine_us"] - sc["proxy_user_us"]), ng["proxy_user_us"]))
    return out


def goal_sentence(results):
    budgets = goal_budget(results)
    if not budgets:
        return ""
    parts = "; ".join(f"at c={c}, {max(b, 0):.1f} µs (nginx itself spends {ng:.1f} µs)" for c, b, ng in budgets)
    if all(b <= 0 for _, b, _ in budgets):
        verdict = ("even a proxy with no user-space cost at all, paying only the kernel work measured here, "
                   "could not reach 1.3× nginx's measured throughput on this machine")
    else:
        verdict = ("1.3× nginx's measured throughput, with every other cost as measured, leaves a proxy this "
                   "much user-space CPU per request for parsing, policy, header rewrite and TLS")
    text = f"The ceiling table shows what that means for the goals: {verdict} — {parts}."
    if all(b < ng for _, b, ng in budgets):
        text += (" Less than nginx's own user-space work: most of every request's CPU goes to wrk, the "
                 "upstream and the kernel, which no proxy can shed.")
    return text


def goal_rows(results):
    by = {(r["target"], r["concurrency"]): r for r in results["rows"]}
    rows = []
    for c in [c for c in (16, 256) if c in results["settings"]["concurrency"]]:
        sc, ng, hp = by[("twilio-sidecar", c)], by[("nginx", c)], by[("haproxy", c)]
        rows.append(f"| c={c} | {sc['rps'] / ng['rps']:.2f}× (goal ≥ 1.30×) | {sc['rps'] / hp['rps']:.2f}× (goal ≥ 1.00×) | "
                    f"{sc['p99_us'] / ng['p99_us']:.2f}× (goal ≤ 1.00×) |")
    return rows


def http2_section(path):
    """The same job against an upstream that offers h2 by ALPN (`load.py --upstream-http2`)."""
    if not path.exists():
        return ""
    results = json.loads(path.read_text())
    s = results["settings"]
    return f"""
## When the upstream offers HTTP/2

The same job, targets and load, in a second run (`benches/{path.name}`, {s['rounds']} rounds of
{s['seconds']} s) in which the upstream nginx also offers `h2` by ALPN — as an edge that speaks
HTTP/2 would. twilio-sidecar then sends each serving thread's requests as streams over shared
HTTP/2 connections, at most `upstream.http2_max_streams` (default 100) in flight on each, opening
another past that (DESIGN: "HTTP/2 or 1.1 to Twilio by ALPN"); HAProxy is configured to
offer `h2,http/1.1` to its server as well; nginx's proxy module has no HTTP/2 upstreams, so it
stays on its HTTP/1.1 keep-alive pool. Whether Twilio's own edge negotiates h2 could not be
checked from these machines (no internet); the tables above, with an HTTP/1.1-only upstream,
are the like-for-like comparison.

{table(results)}

| concurrency | sidecar / nginx req/s | sidecar / HAProxy req/s | sidecar / nginx p99 |
|---|---|---|---|
{chr(10).join(goal_rows(results))}
"""


def proxy_table(results):
    """Every row of a one-worker run: req/s, p99 and the proxy's CPU per request, each against
    nginx and HAProxy measured in the same run."""
    by = {(r["target"], r["concurrency"]): r for r in results["rows"]}
    names = list(dict.fromkeys(r["target"] for r in results["rows"]))

    def cpu(r):
        return None if r["proxy_user_us"] is None else r["proxy_user_us"] + (r["proxy_sys_us"] or 0)

    lines = ["| c | target | req/s | vs nginx | vs HAProxy | p99 µs | p99 vs nginx | CPU µs/req | CPU vs nginx |",
             "|---|---|---|---|---|---|---|---|---|"]
    for c in results["settings"]["concurrency"]:
        ng, hp = by[("nginx", c)], by[("haproxy", c)]
        for name in names:
            r = by[(name, c)]
            lines.append(f"| {c} | {name} | {fmt(r['rps'])} | {ratio(r['rps'], ng['rps'])} | {ratio(r['rps'], hp['rps'])} | "
                         f"{fmt(r['p99_us'])} | {ratio(r['p99_us'], ng['p99_us'])} | {fmt(cpu(r), 1)} | "
                         f"{ratio(cpu(r), cpu(ng))} |")
    return "\n".join(lines)


def one_worker_section(path):
    """One worker each, access logs on, the sidecar with its defaults (`load.py --workers 1
    --access-logs --results-name results-1w.json`): the deployment a sidecar usually is."""
    if not path.exists():
        return ""
    results = json.loads(path.read_text())
    s = results["settings"]
    return f"""
## One worker each, access logs on

A second run (`benches/{path.name}`, {s['rounds']} rounds of {s['seconds']} s): nginx
`worker_processes 1`, HAProxy `nbthread 1`, twilio-sidecar `listen.workers = 1` and otherwise its
defaults; every proxy writes an access-log line per request (nginx's combined format to a file,
HAProxy's `httplog` to stdout, the sidecar's text access line to stderr, each into a file), as the sidecar does
by default. CPU is each proxy's own user + system time, all its threads, per request. Goals: req/s
≥ nginx and ≥ HAProxy, CPU per request ≤ nginx's, p99 ≤ nginx's, at every concurrency.
`twilio-sidecar+clients` is a second sidecar, the same but with 20 `[[clients]]` (two secret
hashes each) and anonymous requests refused: every request carries a client's Basic
credentials, checked in constant time, and is decided by that client's policy.

{proxy_table(results)}
"""


def tls_in_section(path):
    """TLS from the app as well (`load.py --tls-in`): nginx and HAProxy terminate it, the
    sidecar is in transparent mode, every row driven by benches/load_client.rs."""
    if not path.exists():
        return ""
    results = json.loads(path.read_text())
    s = results["settings"]
    return f"""
## TLS from the app: transparent mode

A fourth run (`benches/{path.name}`, {s['rounds']} rounds of {s['seconds']} s, one worker each,
access logs on) in which the app's side is HTTPS too, as for an app whose SDK talks to
`https://api.twilio.com` unchanged. twilio-sidecar runs in transparent mode (`[intercept]`, its
local CA from `ca init`): each connection opens with `CONNECT api.twilio.com:443`, then TLS
with a leaf the sidecar issued, then requests — what an app with `HTTPS_PROXY` set does.
`twilio-sidecar+clients` adds 20 `[[clients]]`, the CONNECT authenticated with a client's
`Proxy-Authorization`. nginx and HAProxy cannot intercept CONNECT; the like-for-like job for
them is terminating the app's TLS themselves (a listener with the api.twilio.com certificate)
before the same allow-list, header rewrite and verified TLS upstream. "direct" is TLS straight
to the upstream. wrk cannot send a CONNECT, so every row here is driven by
`benches/load_client.rs` (keep-alive HTTP/1.1, one request at a time per connection, as wrk;
connections and handshakes set up before the clock starts).

{proxy_table(results)}
"""


def cpu_table(results):
    """Per-request CPU split, and what the sidecar could reach if its user-space work cost nothing."""
    by = {(r["target"], r["concurrency"]): r for r in results["rows"]}
    cores = results["machine"]["cores"]
    if "machine_us" not in results["rows"][0]:
        return ""
    lines = ["| c | target | proxy user µs | proxy system µs | rest of machine µs | whole machine µs | machine busy |",
             "|---|---|---|---|---|---|---|"]
    ceilings = []
    for c in results["settings"]["concurrency"]:
        for name in ["direct", "nginx", "haproxy", "twilio-sidecar"]:
            r = by[(name, c)]
            own = (r["proxy_user_us"] or 0) + (r["proxy_sys_us"] or 0)
            lines.append(f"| {c} | {name} | {fmt(r['proxy_user_us'], 1)} | {fmt(r['proxy_sys_us'], 1)} | "
                         f"{fmt(r['machine_us'] - own, 1)} | {fmt(r['machine_us'], 1)} | {r['machine_busy'] * 100:.0f}% |")
        sc, ng, hp = by[("twilio-sidecar", c)], by[("nginx", c)], by[("haproxy", c)]
        if sc["machine_busy"] < 0.9:
            continue  # not CPU-bound: freeing CPU would not raise throughput
        ceiling = cores * 1e6 / (sc["machine_us"] - sc["proxy_user_us"])
        ceilings.append(f"| c={c} | {fmt(ceiling)} | {ceiling / ng['rps']:.2f}× | {ceiling / hp['rps']:.2f}× |")
    return ("\n## CPU per request, and the ceiling\n\n"
            "Per request, in microseconds of CPU: the proxy's own user-space and kernel time, everything else the "
            "machine did during the run (wrk, the upstream, interrupts), and the whole machine (from `/proc/stat`). "
            "Medians over rounds.\n\n" + "\n".join(lines) + "\n\n"
            "The ceiling: the req/s the machine could reach with twilio-sidecar if its user-space CPU were zero — "
            "no parsing, no TLS, no policy — and every other cost stayed as measured in this run, i.e. "
            f"{cores} cores / (whole machine µs − sidecar user µs). It applies only where the machine was CPU-bound "
            "(at least 90% busy), so rows below 90% are left out. Its kernel part is one `recvfrom` and one "
            "`writev` per message on each side, the fewest a proxy that reads and writes each message once can make; "
            "on loopback the sender's `writev` also pays for the receiver's TCP processing and wake-up.\n\n"
            "| concurrency | ceiling req/s | ceiling / nginx measured | ceiling / HAProxy measured |\n"
            "|---|---|---|---|\n" + "\n".join(ceilings) + "\n")


def instructions_table(path):
    """The callgrind counts, if benches/instructions.py has run."""
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    by = {r["target"]: r for r in data["rows"]}
    lines = ["| target | instructions / request | vs nginx | vs HAProxy | requests counted |", "|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['target']} | {fmt(r['per_request'])} | {ratio(r['per_request'], by.get('nginx', {}).get('per_request'))} | "
                     f"{ratio(r['per_request'], by.get('haproxy', {}).get('per_request'))} | {fmt(r['requests'])} |")
    return ("\n## Instructions per request\n\n"
            "User-space instructions per request counted by callgrind (`benches/instructions.py`, run by "
            f"`benches/load.sh`): each proxy alone under `valgrind --tool=callgrind`, one worker, wrk at "
            f"c={data['concurrency']} for {data['seconds']} s after a warm-up, counters zeroed in between. Unlike "
            "req/s on a shared machine this count repeats from run to run, so it is what the optimisations were "
            "judged by; it leaves out kernel time and cache misses, which the tables above include. "
            f"{data['valgrind']}.\n\n" + "\n".join(lines) + "\n")


def ab_table(path):
    """The last A/B load run of two sidecar builds, if benches/ab.py wrote one here."""
    if not path.exists():
        return ""
    data = json.loads(path.read_text())
    def spread(side):
        runs = side.get("runs") or [side["rps"]]
        return f"{fmt(min(runs))}–{fmt(max(runs))}"

    lines = ["| c | req/s before | req/s after | after / before | runs before | runs after | p99 µs before | p99 µs after |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['concurrency']} | {fmt(r['old']['rps'])} | {fmt(r['new']['rps'])} | "
                     f"{ratio(r['new']['rps'], r['old']['rps'])} | {spread(r['old'])} | {spread(r['new'])} | "
                     f"{fmt(r['old']['p99_us'])} | {fmt(r['new']['p99_us'])} |")
    return ("\n## The last change, A/B\n\n"
            f"{data['label']}: both builds served side by side in one run of `benches/ab.py` "
            f"({data['workers']} worker{'' if data['workers'] == 1 else 's'} each, the same upstream), wrk alternating between them for "
            f"{data['rounds']} rounds of {data['seconds']} s; medians, and the slowest and fastest run of each, since a "
            "single run on this shared machine moves by ±10 %.\n\n" + "\n".join(lines) + "\n")


def svg(results, path):
    """Two panels: throughput and p99 per concurrency, one group of bars per concurrency."""
    rows = results["rows"]
    cs = results["settings"]["concurrency"]
    names = ["direct", "nginx", "haproxy", "twilio-sidecar"]
    by = {(r["target"], r["concurrency"]): r for r in rows}
    w, h, pad, gap = 900, 360, 60, 40
    panel_w = (w - 2 * pad - gap) / 2
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h + 60}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>']
    for panel, (key, title, unit) in enumerate([("rps", "Throughput (req/s, higher is better)", ""),
                                                ("p99_us", "p99 latency (µs, lower is better)", "")]):
        x0 = pad + panel * (panel_w + gap)
        top = max(by[(n, c)][key] or 0 for n in names for c in cs) * 1.1 or 1
        out.append(f'<text x="{x0 + panel_w / 2}" y="20" text-anchor="middle" font-weight="bold">{title}</text>')
        out.append(f'<line x1="{x0}" y1="{h}" x2="{x0 + panel_w}" y2="{h}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="40" x2="{x0}" y2="{h}" stroke="black"/>')
        for i in range(5):
            v = top * i / 4
            y = h - (h - 40) * i / 4
            out.append(f'<text x="{x0 - 4}" y="{y + 4}" text-anchor="end" font-size="10">{v:,.0f}</text>')
            out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + panel_w}" y2="{y}" stroke="#eee"/>')
        group_w = panel_w / len(cs)
        bar_w = group_w * 0.8 / len(names)
        for gi, c in enumerate(cs):
            gx = x0 + gi * group_w + group_w * 0.1
            out.append(f'<text x="{gx + group_w * 0.4}" y="{h + 16}" text-anchor="middle">c={c}</text>')
            for ni, n in enumerate(names):
                v = by[(n, c)][key] or 0
                bh = (h - 40) * v / top
                out.append(f'<rect x="{gx + ni * bar_w:.1f}" y="{h - bh:.1f}" width="{bar_w - 2:.1f}" height="{bh:.1f}" fill="{COLORS[n]}"><title>{n} c={c}: {v:,.0f}</title></rect>')
    for ni, n in enumerate(names):
        lx = pad + ni * 170
        out.append(f'<rect x="{lx}" y="{h + 32}" width="12" height="12" fill="{COLORS[n]}"/>')
        out.append(f'<text x="{lx + 18}" y="{h + 42}">{n}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(ROOT / "benches" / "results.json"))
    ap.add_argument("--before", default=str(ROOT / "benches" / "results-before.json"))
    ap.add_argument("--instructions", default=str(ROOT / "benches" / "instructions.json"))
    ap.add_argument("--ab", default=str(ROOT / "benches" / "ab.json"))
    ap.add_argument("--http2", default=str(ROOT / "benches" / "results-h2.json"))
    ap.add_argument("--one-worker", default=str(ROOT / "benches" / "results-1w.json"))
    ap.add_argument("--tls-in", default=str(ROOT / "benches" / "results-tls.json"))
    ap.add_argument("--out", default=str(ROOT / "benches"))
    args = ap.parse_args()
    results = json.loads(pathlib.Path(args.results).read_text())
    out = pathlib.Path(args.out)
    svg(results, out / "load.svg")
    m, v, s = results["machine"], results["versions"], results["settings"]
    idle = results["idle_rss_kib"]
    peak = results["peak_rss_kib"]
    by = {(r["target"], r["concurrency"]): r for r in results["rows"]}
    goals = goal_rows(results)
    before = ""
    bpath = pathlib.Path(args.before)
    if bpath.exists():
        b = json.loads(bpath.read_text())
        bb = {(r["target"], r["concurrency"]): r for r in b["rows"]}
        lines = ["| c | req/s before | req/s after | CPU s/10k before | CPU s/10k after | p99 µs before | p99 µs after | sidecar vs nginx before → after |",
                 "|---|---|---|---|---|---|---|---|"]
        for c in s["concurrency"]:
            if ("twilio-sidecar", c) not in bb:
                continue
            x, y = bb[("twilio-sidecar", c)], by[("twilio-sidecar", c)]
            lines.append(f"| {c} | {fmt(x['rps'])} | {fmt(y['rps'])} | {fmt(x['cpu_s_per_10k'], 3)} | {fmt(y['cpu_s_per_10k'], 3)} | "
                         f"{fmt(x['p99_us'])} | {fmt(y['p99_us'])} | {x['rps'] / bb[('nginx', c)]['rps']:.2f}× → {y['rps'] / by[('nginx', c)]['rps']:.2f}× |")
        before = ("\n## Before and after the optimisations\n\n"
                  f"Both runs were made by the same script on the same machine (`{bpath.name}` is the earlier run, kept "
                  "as it was measured). Ratios against nginx are from the same run, so machine drift between the runs "
                  "cancels out of them.\n\n" + "\n".join(lines) + "\n")
    text = f"""# Load benchmark: twilio-sidecar vs nginx vs HAProxy

Generated by `benches/load.sh` (which runs `benches/load.py` and `benches/report.py`); every
figure below is read from `benches/results.json`, written by that run. Re-running the script
regenerates this file and `load.svg`.

## The job

Each proxy does what twilio-sidecar does for one allowed call: plain HTTP/1.1 in; an allow-list
equivalent to the policy (`GET,POST /2010-04-01/Accounts/{{AccountSid}}/Messages.json` and
`…/Messages/*`; everything else 403); the app's `Authorization`/`Cookie` removed and an API-key
`Authorization: Basic …` set; TLS to the upstream with certificate verification and SNI
`api.twilio.com`; a keep-alive connection pool. The upstream is an nginx TLS server on loopback
answering a fixed Twilio-like JSON body (HTTP/1.1 only, so all proxies speak the same protocol
to it). "direct" is wrk talking TLS to that upstream itself: the physical limit. Access logs are
off for all proxies. Everything — load generator, proxy and upstream — shares the same
{m['cores']} cores, so throughput is bounded by total CPU, and the proxy's CPU cost per request
decides the ranking.

- Machine: {m['cores']} cores, {m['cpu']}, {m['platform']}
- Versions: {v['nginx']}; {v['haproxy']}; {v['wrk']}; {v['twilio-sidecar']}
- Workers per proxy: {s['workers']} (nginx `worker_processes`, HAProxy `nbthread`, twilio-sidecar `listen.workers` serving threads, each with its own runtime)
- Load: wrk, same thread count for every target (min(c, 2)), {s['seconds']} s per run,
  concurrency {', '.join(str(c) for c in s['concurrency'])}; {s['rounds']} rounds with the target order rotated each
  round; medians over rounds
- Command: `bash benches/load.sh` (smoke: `bash benches/load.sh --smoke`)

## Results

{table(results)}

CPU is the proxy's own (all its processes/threads, user + system) per 10,000 requests. "direct"
has no proxy, so no proxy CPU.

Memory (kB): idle RSS after start — {', '.join(f'{k} {val:,}' for k, val in idle.items())};
peak RSS over the run — {', '.join(f'{k} {val:,}' for k, val in peak.items())}.

![throughput and p99 per concurrency](load.svg)

## Against the goals

| concurrency | sidecar / nginx req/s | sidecar / HAProxy req/s | sidecar / nginx p99 |
|---|---|---|---|
{chr(10).join(goals)}

Idle RSS of twilio-sidecar: {idle.get('twilio-sidecar', 0) / 1024:.1f} MiB (goal ≤ 10 MiB).
{http2_section(pathlib.Path(args.http2))}{one_worker_section(pathlib.Path(args.one_worker))}{tls_in_section(pathlib.Path(args.tls_in))}{cpu_table(results)}{instructions_table(pathlib.Path(args.instructions))}{ab_table(pathlib.Path(args.ab))}{before}
## Where the time goes

On this machine the three processes (wrk, proxy, upstream) share the cores, so a proxy's
throughput is decided by its CPU cost per request, and the table above splits that cost. The
kernel part (loopback TCP send/receive, waking the peer) is about the same for all three
proxies; `strace -c` per request shows twilio-sidecar making one `recvfrom` and one `writev` on
each side and nothing else, fewer system calls than nginx (which adds an `EAGAIN` read and a
`getsockopt`). What separates the proxies is user-space CPU, where nginx is the leanest.
{goal_sentence(results)}

What changed between the runs (each judged on its own: by an A/B load run of two binaries side
by side, or by the instruction count above): thread-per-core serving (one current-thread runtime
per `listen.workers` thread, connections handed round-robin, a per-thread upstream pool — a
request is handled start to finish on one thread, never waiting on a task another thread must
wake); mimalloc instead of glibc malloc (without transparent huge pages, which tripled idle
RSS); no paging buffer for the 2010 API; a one-pass header strip; per-thread metric handles
found by where their labels live rather than by hashing the label text; a table-driven path
check and byte-loop segment split; load shedding by a semaphore permit in the handler instead
of a boxed tower stack per request; request ids written without `format!`; and the sidecar's
own per-thread upstream connection pool (`src/connection_pool.rs`) in place of hyper-util's
legacy client, whose checkout and return hashed the host name with SipHash on every request
and boxed the request future (about 55,900 → 48,000 instructions per request; the A/B table
above compares the two builds under load).

The HTTP/1.1 exchange with the upstream now runs in the request's own task
(`src/upstream/http1/`): the request head and body are written and the response read straight
from the TLS stream, the response body handed to the app as the app's connection asks for it,
with no connection task, no dispatch channel and no wake-up of another task per request —
hyper's client connection sent each request across tasks for the head, the response and every
body frame. Framing is the sidecar's own and strict (only `chunked` as a transfer coding,
`Content-Length` digits only and consistent, both together refused, reuse only when a
response ended exactly where its framing said). Callgrind, one worker, c=16: 52,326 → 43,853
instructions per request; the A/B table above is that change under load with one worker.
(An earlier attempt — the request's task polling hyper's client connection itself — kept
hyper's dispatch and want signalling, each now a self-wake that re-polled the app connection's
stack, and cost about 1 % more; owning the exchange is what removed the hop.)

The access-log line no longer goes through a `tracing` event: even with the sidecar's own
`FormatEvent` it cost about 4,800 instructions (the macro's value set, the subscriber's
dispatch, a dynamic `Visit` call and a name check per field). It is now written from typed
fields straight into the log writer's buffer, the same bytes in both formats (the unit tests
compare it with tracing-subscriber's default formats), after the log filter's verdict for an
`info` event of its target: about 3,050 instructions, most of them copying and checking the
strings. Removing the hop-by-hop headers from Twilio's response looked up and removed each of
seven names whether present or not (about 1,100 instructions); one pass over the names present
now does it, and the browser check does the same. Callgrind, one worker, access logs on:
47,988 → 44,661 instructions per request at c=16, and 49,520 → 46,108 at c=1 (nginx 44,105).

What remains, by callgrind's attribution: hyper's parsing and encoding on the app's side
(httparse, header maps, URI parsing); rustls' record encryption and decryption (the same
AES-GCM work nginx does); the access-log line; three timers a request (hyper's header-read
timer, which hyper drops and makes again for every request, the request's deadline and the
wait for Twilio's response head), each registered in and removed from tokio's timer wheel;
at one connection, tokio's park path, which reads the timer wheel on each of the two waits a
request makes (about 2,000 instructions a request at c=1, 550 at c=16); moving each request's
future into place. None of these is a single large item (the instruction counts above say how far from nginx and
HAProxy that leaves the sidecar's user-space cost per request).

Copying, which instruction counts understate: `perf` at c=256 puts about 6 % of the sidecar's
CPU in `memmove`, and callgrind traces the largest single copy to hyper moving each request's
future (6,736 bytes, by `-Zprint-type-sizes`) into the app connection's in-flight slot; boxing
it only moves the copy into the box. The future was made smaller instead: the pool's `send`
held an HTTP/2 error, a resend copy and a `match` temporary across its reconnect await, so
rustc kept room for all of them in every request's future; with each exchange in a function of
its own the whole future is 5,352 bytes (the A/B table above). What is left of it is mostly
the nested request, response and timer state each layer keeps while it waits. Two more
doublings were found with `-Zprint-type-sizes` and removed (the A/B table above): the server's
per-request wrapper captured the handler's future and then awaited it, so the future hyper
held was that future twice over; and every `async fn` that took the request by value kept it
twice (the argument, and the variable an `async fn` moves it into), once per layer on the way
down. Built inside the wrapper, and those layers written as functions returning an `async
move` block, they are kept once: callgrind, one worker, c=16, access logs on, 49,017 → 48,253
instructions per request. With an HTTP/2
upstream, hyper also spawns a task per request (its per-stream response future, in a 2.5 KiB
cell), which the sidecar cannot avoid without changing hyper.
"""
    (out / "RESULTS.md").write_text(text)
    print(f"report: wrote {out / 'RESULTS.md'} and {out / 'load.svg'}")


if __name__ == "__main__":
    main()
