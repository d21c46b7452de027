#!/usr/bin/env python3
"""User-space instructions per request, counted by callgrind: nginx, HAProxy and twilio-sidecar
doing the same job as in benches/load.py, one worker each, under the same wrk load.

Wall-clock figures on a shared 2-core machine move by ±10% between runs; an instruction count
does not depend on what else the machine is doing, so it tells a real user-space change from
noise (it is blind to cache misses and to kernel time, which benches/load.py measures).
Started by benches/load.sh; also useful alone for an A/B of two sidecar builds:

    python3 benches/instructions.py --binary target/release/twilio-sidecar
    python3 benches/instructions.py --binary new/twilio-sidecar --compare old/twilio-sidecar --targets twilio-sidecar
    python3 benches/instructions.py --access-logs   # each proxy writing its access log

Each target runs under `valgrind --tool=callgrind`; wrk warms it up, the counters are zeroed,
wrk runs again, the counters are dumped, and the count is divided by the requests wrk made.
"""
import argparse
import base64
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import load  # noqa: E402  (the same job, configs and upstream as the load benchmark)


def callgrind(name, start, d, seconds, conns) -> dict:
    out = d / f"{name}.callgrind"
    wrap = ("valgrind", "--tool=callgrind", f"--callgrind-out-file={out}")
    proc = start(wrap)
    try:
        url = f"http://127.0.0.1:{proc.port}{load.PATH}"
        # Warm-up until every connection has made a few round trips (pools filled, TLS
        # handshakes done, code translated): under valgrind, and with a debug build in the
        # smoke run, the first handshakes alone can take longer than a short wrk run.
        for _ in range(30):
            if load.run_wrk(url, conns, max(1, seconds // 3), d)["requests"] >= 4 * conns:
                break
        else:
            raise SystemExit(f"{name}: still not answering {conns} connections after the warm-up")
        subprocess.run(["callgrind_control", "-z", str(proc.popen.pid)], check=True, capture_output=True)
        r = load.run_wrk(url, conns, seconds, d)
        subprocess.run(["callgrind_control", "-d", str(proc.popen.pid)], check=True, capture_output=True)
        if r["requests"] == 0:
            raise SystemExit(f"{name}: no request completed in the {seconds} s measured")
    finally:
        proc.stop()
    if r["non2xx"] or r["socket_errors"]:
        raise SystemExit(f"{name}: {r['non2xx']} non-2xx responses, socket errors: {r['socket_errors']}")
    dumped = pathlib.Path(f"{out}.1")
    totals = re.search(r"^(?:summary|totals):\s+(\d+)", dumped.read_text(), re.M)
    instructions = int(totals.group(1))
    return {"target": name, "requests": r["requests"], "instructions": instructions,
            "per_request": instructions / r["requests"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", default=str(load.ROOT / "target/release/twilio-sidecar"))
    ap.add_argument("--compare", help="a second twilio-sidecar binary, measured the same way")
    ap.add_argument("--targets", default="nginx,haproxy,twilio-sidecar")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--out", help="write the results here as JSON")
    ap.add_argument("--access-logs", action="store_true",
                    help="every proxy writes an access-log line per request, as in load.py --access-logs")
    ap.add_argument("--keep", action="store_true",
                    help="keep the callgrind files (for callgrind_annotate) and say where")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (benches/load.sh installs it)")

    d = pathlib.Path(tempfile.mkdtemp(prefix="ts-instr-"))
    load.make_certs(d)
    auth = "Basic " + base64.b64encode(f"{load.KEY_SID}:{load.SECRET}".encode()).decode()
    upstream = load.start_upstream(d, 1)
    logs = args.access_logs
    starters = {
        "nginx": lambda w: load.start_nginx(d, 1, upstream.port, auth, w, access_log=logs),
        "haproxy": lambda w: load.start_haproxy(d, 1, upstream.port, auth, w, access_log=logs),
        "twilio-sidecar": lambda w: load.start_sidecar(d, 1, upstream.port, args.binary, w, access_log=logs),
    }
    if args.compare:
        sub = d / "compare"
        sub.mkdir()
        shutil.copy(d / "ca.pem", sub / "ca.pem")
        starters["twilio-sidecar (compare)"] = lambda w: load.start_sidecar(sub, 1, upstream.port, args.compare, w,
                                                                                    access_log=logs)
    wanted = args.targets.split(",") + (["twilio-sidecar (compare)"] if args.compare else [])
    rows = []
    try:
        for name in wanted:
            row = callgrind(name.split()[0] + ("-compare" if "compare" in name else ""), starters[name], d,
                            args.seconds, args.concurrency)
            row["target"] = name
            rows.append(row)
            print(f"{name:<26} {row['per_request']:>10,.0f} instructions/request  ({row['requests']:,} requests)",
                  flush=True)
    finally:
        upstream.stop()
    result = {"concurrency": args.concurrency, "seconds": args.seconds, "workers": 1,
              "access_logs": args.access_logs, "valgrind": load.version(["valgrind", "--version"]),
              "rows": rows}
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    if args.keep:
        print(f"callgrind files kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
