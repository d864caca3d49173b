#!/bin/sh
# Run echo-server and echo-client against each other over TCP and a Unix
# socket; the server must stop cleanly (exit 0, leak gate passed) on SIGTERM.
set -u
server=$1; client=$2
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
fail() { echo "examples.echo: $*" >&2; cat "$dir"/*.log >&2 2>/dev/null; exit 1; }

run_case() {
    name=$1; sdesc=$2
    "$server" "$sdesc" >"$dir/$name.out" 2>"$dir/$name.log" &
    pid=$!
    i=0
    while ! grep -q "listening on" "$dir/$name.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 200 ] && { kill $pid; fail "$name: server did not start"; }
        sleep 0.05
    done
    addr=$(sed -n 's/^listening on //p' "$dir/$name.out")
    case $addr in
        unix:*) cdesc="unix:path=${addr#unix:}:timeout=5" ;;
        *) cdesc="tcp:host=127.0.0.1:port=${addr##*:}:timeout=5" ;;
    esac
    out=$("$client" "$cdesc" hello braid) || { kill $pid; fail "$name: client failed"; }
    [ "$out" = "$(printf 'hello\nbraid')" ] || { kill $pid; fail "$name: got '$out'"; }
    kill -TERM $pid
    wait $pid || fail "$name: server exited with $?"
}

run_case tcp "tcp:0:interface=127.0.0.1"
run_case unix "unix:$dir/echo.sock"
"$client" "tcp:host=127.0.0.1:port=1:timeout=2" x 2>/dev/null && fail "connect to a closed port succeeded"
echo "examples.echo: ok"
