#!/bin/sh
# CTest bench.smoke: run braid-bench's smallest setting of one experiment
# (lockcall) into a fresh directory, then check what the report promises:
# every results.jsonl line is a row in the documented format with sane
# numbers, index.html / summary.md / the CSV exist, and `serve` dispatch and
# `--list` work. Usage: smoke_test.sh BRAID_BENCH TMPDIR
set -eu
bench=$1
out=$2
rm -rf "$out"
mkdir -p "$out"

"$bench" --list >"$out/list.txt"
grep -q '^lockcall ' "$out/list.txt" || { echo "lockcall missing from --list"; cat "$out/list.txt"; exit 1; }

"$bench" lockcall --smoke --out "$out" >"$out/log.txt" 2>&1 || { cat "$out/log.txt"; exit 1; }

test -s "$out/results.jsonl" || { echo "no results.jsonl"; exit 1; }
test -s "$out/index.html" || { echo "no index.html"; exit 1; }
test -s "$out/summary.md" || { echo "no summary.md"; exit 1; }
test -s "$out/lockcall.csv" || { echo "no lockcall.csv"; exit 1; }
grep -q 'id="lockcall"' "$out/index.html" || { echo "index.html lacks the lockcall section"; exit 1; }

# Rows parse and follow the format (python3's json; Debian's interpreter).
py=/usr/bin/python3
[ -x "$py" ] || py=python3
"$py" - "$out/results.jsonl" <<'EOF'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
assert rows, "no rows"
for r in rows:
    for k in ("experiment", "impl", "backend", "params", "runs", "metrics"):
        assert k in r, f"row lacks {k}: {r}"
    assert r["experiment"] == "lockcall", r
    assert isinstance(r["params"], dict) and isinstance(r["metrics"], dict) and r["metrics"], r
    assert r["runs"] >= 2, r
    for name, m in r["metrics"].items():
        for k in ("median", "min", "max", "unit"):
            assert k in m, f"metric {name} lacks {k}"
        assert m["min"] <= m["median"] <= m["max"], (name, m)
        assert len(m["samples"]) == r["runs"], (name, m)
        assert all(isinstance(s, (int, float)) and math.isfinite(s) and s > 0 for s in m["samples"]), m
impls = {r["impl"] for r in rows}
assert {"call", "mutex"} <= impls, impls
print(f"{len(rows)} rows ok: {sorted(impls)}")
EOF

# Serve-mode arguments: one parser for every experiment (bench_serve_args).
"$bench" serve reqresp --help | grep -q -- '--mode M' || { echo "serve --help lacks the options"; exit 1; }
for args in "http --bogus 1" "http --port x" "tls --port 5" "connscale --model nope" "http --port"; do
    rc=0
    # shellcheck disable=SC2086
    "$bench" serve $args >"$out/serve.txt" 2>&1 || rc=$?
    [ "$rc" = 2 ] && grep -q '^usage: braid-bench serve' "$out/serve.txt" ||
        { echo "serve $args: exit $rc, want 2 and the usage"; cat "$out/serve.txt"; exit 1; }
done

# The multi-loop serve modes (braid_serve): answers, per-loop counts, stop.
"$py" "$(dirname "$0")/serve_check.py" "$bench" "$out" || exit 1

# A second run of nothing keeps the rows (report-only rebuild).
"$bench" --report-only --out "$out" >/dev/null
test "$(wc -l <"$out/results.jsonl")" -ge 1 || { echo "report-only lost rows"; exit 1; }
echo "bench smoke: ok"
