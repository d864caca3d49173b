#!/bin/sh
# Run staged-http on a temporary root with a slow "disk" (100 ms a read):
# a file comes back right (a miss, then a hit from the cache stage), /stages
# shows the graph, a client that leaves mid-read does no harm, 200 requests
# at once get some 503s with Retry-After and the rest 200, and SIGTERM stops
# the server with its leak gate passed.
set -u
server=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "examples.staged_http: $*" >&2; cat "$dir"/*.log >&2 2>/dev/null; exit 1; }
command -v curl >/dev/null || { echo "curl not installed"; exit 77; }

mkdir "$dir/root"
printf 'hello from a stage\n' >"$dir/root/hello.txt"
"$server" "$dir/root" "tcp:0:interface=127.0.0.1" 100 >"$dir/out" 2>"$dir/server.log" &
pid=$!
i=0
while ! grep -q "listening on" "$dir/out" 2>/dev/null; do
    i=$((i + 1)); [ $i -gt 200 ] && { kill $pid; fail "server did not start"; }
    sleep 0.05
done
port=$(sed -n 's/^listening on .*:\([0-9]*\)$/\1/p' "$dir/out")
url="http://127.0.0.1:$port"

body=$(curl -s "$url/hello.txt") || { kill $pid; fail "GET failed"; }
[ "$body" = "hello from a stage" ] || { kill $pid; fail "miss: got '$body'"; }
body=$(curl -s "$url/hello.txt") || { kill $pid; fail "GET failed"; }
[ "$body" = "hello from a stage" ] || { kill $pid; fail "hit: got '$body'"; }
code=$(curl -s -o /dev/null -w '%{http_code}' "$url/nope.txt")
[ "$code" = 404 ] || { kill $pid; fail "missing file: $code"; }
curl -s "$url/stages" >"$dir/stages.json"
grep -q '"name":"cache"' "$dir/stages.json" && grep -q '"to":"disk"' "$dir/stages.json" ||
    { kill $pid; fail "stage graph: $(cat "$dir/stages.json")"; }

# A client that gives up while its file is being read (100 ms): its answer
# is dropped, the server goes on.
printf 'late\n' >"$dir/root/late.txt"
curl -s -m 0.03 "$url/late.txt" >/dev/null 2>&1 && { kill $pid; fail "a 30 ms client got a 100 ms answer"; }
sleep 0.2
body=$(curl -s "$url/late.txt") || { kill $pid; fail "GET after a client left failed"; }
[ "$body" = "late" ] || { kill $pid; fail "after a client left: got '$body'"; }

# Overload: 200 requests at once for files not cached yet (each its own path).
for n in $(seq 1 200); do printf 'x\n' >"$dir/root/f$n"; done
args=""
for n in $(seq 1 200); do args="$args $url/f$n"; done
# shellcheck disable=SC2086
curl -s -o /dev/null -w '%{http_code}\n' --parallel --parallel-max 200 $args >"$dir/codes" 2>/dev/null ||
    true
ok=$(grep -c '^200$' "$dir/codes"); busy=$(grep -c '^503$' "$dir/codes")
[ "$ok" -gt 0 ] && [ "$busy" -gt 0 ] && [ $((ok + busy)) -eq 200 ] ||
    { kill $pid; fail "overload: $ok ok, $busy busy of 200"; }
hdr=$(curl -s -D - -o /dev/null --parallel --parallel-max 200 $args 2>/dev/null | grep -i '^Retry-After: 1' | head -1)
[ -n "$hdr" ] || { kill $pid; fail "no Retry-After on a 503"; }

kill -TERM $pid
wait $pid || fail "server exited with $?"
echo "staged_http: $ok answered, $busy refused with 503 under overload"
