#!/usr/bin/env python3
"""A/B load run of two twilio-sidecar builds, side by side in one run.

Both binaries serve at once in front of the same TLS upstream (benches/load.py's); wrk drives
them in turn, the order alternating every round so machine drift hits both alike. Prints the
median req/s and p99 of each and the ratio new/old. Wall-clock on a shared machine moves by
±10% between runs, so only a ratio from the same run means anything; use
benches/instructions.py (`--compare`) for changes too small to show here.

    python3 benches/ab.py OLD_BINARY NEW_BINARY [--rounds 4] [--concurrency 16,256]
    python3 benches/ab.py OLD NEW --label "what changed" --out benches/ab.json   # for RESULTS.md
    python3 benches/ab.py OLD NEW --upstream-http2   # the upstream offers h2 too
    python3 benches/ab.py BIN BIN --new-clients 20     # the same build with 20 [[clients]]
                                                        # and every request authenticating
"""
import argparse
import json
import pathlib
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import load  # noqa: E402  (the same job, configs and upstream as the load benchmark)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--concurrency", default="16,256")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--upstream-http2", action="store_true",
                    help="the upstream offers h2 as well as http/1.1, as in load.py --upstream-http2")
    ap.add_argument("--new-clients", type=int, default=0,
                    help="run NEW with this many [[clients]], every request authenticating as one")
    ap.add_argument("--label", default="", help="what differs between the builds (for --out)")
    ap.add_argument("--out", help="write the results here as JSON (benches/report.py shows benches/ab.json)")
    args = ap.parse_args()
    concurrencies = [int(c) for c in args.concurrency.split(",")]

    d = pathlib.Path(tempfile.mkdtemp(prefix="ts-ab-"))
    load.make_certs(d)
    upstream = load.start_upstream(d, args.workers, args.upstream_http2)
    binaries = {"old": args.old, "new": args.new}
    procs = {}
    runs = {(name, c): [] for name in binaries for c in concurrencies}
    try:
        for name, binary in binaries.items():
            sub = d / name
            sub.mkdir()
            shutil.copy(d / "ca.pem", sub / "ca.pem")
            clients = args.new_clients if name == "new" else 0
            procs[name] = load.start_sidecar(sub, args.workers, upstream.port, binary, clients=clients)
        url = {name: f"http://127.0.0.1:{p.port}{load.PATH}" for name, p in procs.items()}
        headers = {"old": (), "new": (load.client_header(args.new_clients),) if args.new_clients else ()}
        for c in concurrencies:  # warm-up: pools filled, handshakes done
            for name in binaries:
                load.run_wrk(url[name], c, 2, d, headers[name])
        for r in range(args.rounds):
            order = list(binaries) if r % 2 == 0 else list(reversed(binaries))
            for c in concurrencies:
                for name in order:
                    w = load.run_wrk(url[name], c, args.seconds, d, headers[name])
                    if w["non2xx"] or w["socket_errors"]:
                        raise SystemExit(f"{name} c={c}: {w['non2xx']} non-2xx, socket errors: {w['socket_errors']}")
                    runs[(name, c)].append(w)
    finally:
        for p in procs.values():
            p.stop()
        upstream.stop()
        shutil.rmtree(d, ignore_errors=True)

    rows = []
    for c in concurrencies:
        row = {"concurrency": c}
        for name in binaries:
            row[name] = {"rps": statistics.median(w["rps"] for w in runs[(name, c)]),
                         "p99_us": statistics.median(w["p99_us"] for w in runs[(name, c)]),
                         "runs": [round(w["rps"]) for w in runs[(name, c)]]}
        rows.append(row)
        old, new = row["old"], row["new"]
        print(f"c={c}: old {old['rps']:,.0f} req/s (p99 {old['p99_us']:,.0f} µs)  "
              f"new {new['rps']:,.0f} req/s (p99 {new['p99_us']:,.0f} µs)  "
              f"new/old {new['rps'] / old['rps']:.3f}×   runs old {old['runs']} new {new['runs']}")
    if args.out:
        result = {"label": args.label, "rounds": args.rounds, "seconds": args.seconds, "workers": args.workers,
                  "old": args.old, "new": args.new, "rows": rows}
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")

if __name__ == "__main__":
    main()
