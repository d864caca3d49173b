#!/bin/sh
# CTest bench.soak: `braid-bench soak --smoke` (8 s of mixed load on the epoll
# backend) must end with every answer right, no request lost, the server
# alive and its descriptors and timers back to their idle baselines. RSS is
# not judged here (8 s is all warm-up); the minutes-long run is
# `braid-bench soak` (docs/reliability.md). Usage: soak_test.sh BRAID_BENCH TMPDIR
set -eu
bench=$1
out=$2
rm -rf "$out"
mkdir -p "$out"
"$bench" soak --smoke --backend epoll --out "$out" >"$out/log.txt" 2>&1 || { cat "$out/log.txt"; exit 1; }
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" - "$out/results.jsonl" "$out/log.txt" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip() and json.loads(l)["experiment"] == "soak"]
assert rows, "no soak row"
bad = []
for r in rows:
    m = {k: v["median"] for k, v in r["metrics"].items()}
    if m["answers_ok"] <= 0: bad.append("no answers")
    if m["answers_wrong"] != 0: bad.append(f"{m['answers_wrong']:.0f} wrong answers")
    if m["requests_lost"] != 0: bad.append(f"{m['requests_lost']:.0f} requests lost")
    if m["fds_after"] != m["fds_baseline"]: bad.append(f"fds {m['fds_after']:.0f} after, {m['fds_baseline']:.0f} at rest")
    if m["timers_after"] > m["timers_baseline"]: bad.append(f"timers {m['timers_after']:.0f} after, {m['timers_baseline']:.0f} at rest")
    if m["deferreds_after"] != 0: bad.append(f"{m['deferreds_after']:.0f} Deferreds alive after")
if bad:
    sys.stdout.write(open(sys.argv[2]).read())
    print("soak smoke FAILED:", "; ".join(bad))
    sys.exit(1)
print("soak smoke: ok", {k: rows[0]["metrics"][k]["median"] for k in ("answers_ok", "fds_after", "timers_after")})
PY
