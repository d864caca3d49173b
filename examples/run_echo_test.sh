#!/bin/sh
# Run echo-server and echo-client against each other over TCP and a Unix
# socket; the server must stop cleanly (exit 0, leak gate passed) on SIGTERM.
# Then a client that sends 1 MiB and never reads the echo: on SIGINT the
# server must still exit (cutting that client off after its close deadline)
# with its leak gate passed, instead of waiting for ever.
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

start_server() {   # name desc -> $pid, $addr
    "$server" "$2" >"$dir/$1.out" 2>"$dir/$1.log" &
    pid=$!
    i=0
    while ! grep -q "listening on" "$dir/$1.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 200 ] && { kill $pid; fail "$1: server did not start"; }
        sleep 0.05
    done
    addr=$(sed -n 's/^listening on //p' "$dir/$1.out")
}

# Wait for process $1, killing it after $2 seconds: false if it had to be
# killed. Its exit status is left in $st. The watchdog's sleep is killed with
# it and holds none of our output: CTest waits until every holder of the
# test's stdout has gone, so a leftover sleep would add its 20 s to the test.
wait_exit() {
    rm -f "$dir/killed"
    ( sleep "$2" & s=$!; trap 'kill $s 2>/dev/null; exit 0' TERM; wait $s
      touch "$dir/killed"; kill -KILL "$1" 2>/dev/null ) >/dev/null 2>&1 &
    watchdog=$!
    wait "$1"; st=$?
    kill "$watchdog" 2>/dev/null; wait "$watchdog" 2>/dev/null
    [ ! -e "$dir/killed" ]
}

non_reading_case() {
    start_server stuck "tcp:0:interface=127.0.0.1"
    port=${addr##*:}
    # A client with a tiny receive buffer sends lines and never reads the
    # echo, until sending has blocked for a second: every buffer between the
    # two is full by then, the server's own write buffer included, so a
    # plain graceful close would wait for ever.
    python3 -c '
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.settimeout(1)
try:
    s.sendall((b"x" * 1023 + b"\n") * 65536)   # 64 MiB: more than all the buffers hold
    print("sent it all: the server never stopped reading", flush=True)
except socket.timeout:
    print("stuck", flush=True)
except OSError as e:
    print("the server cut the connection before it stopped reading:", e, flush=True)
time.sleep(60)
' "$port" >"$dir/stuck-client.out" 2>&1 &
    cpid=$!
    i=0
    while ! grep -q "stuck\|sent it all\|cut the connection" "$dir/stuck-client.out" 2>/dev/null; do
        i=$((i + 1)); [ $i -gt 400 ] && { kill $pid $cpid; fail "stuck: the client did not get going"; }
        sleep 0.05
    done
    grep -q stuck "$dir/stuck-client.out" || { kill $pid $cpid; fail "stuck: $(cat "$dir/stuck-client.out")"; }
    kill -INT $pid
    if ! wait_exit $pid 20; then
        kill $cpid 2>/dev/null
        fail "stuck: server still running 20 s after SIGINT with a non-reading client connected"
    fi
    kill $cpid 2>/dev/null; wait $cpid 2>/dev/null
    [ "$st" -eq 0 ] || fail "stuck: server exited with $st after SIGINT"
    grep -q "did not read" "$dir/stuck.log" || fail "stuck: the server did not say it cut the client off"
}

run_case tcp "tcp:0:interface=127.0.0.1"
run_case unix "unix:$dir/echo.sock"
"$client" "tcp:host=127.0.0.1:port=1:timeout=2" x 2>/dev/null && fail "connect to a closed port succeeded"
non_reading_case
echo "examples.echo: ok"
