#!/bin/sh
# Test fixture: run a command against a virtual X display of its own.
#
#     sh tests/with_xvfb.sh COMMAND [ARG...]
#
# Starts Xvfb on a display number it picks itself (-displayfd), waits until the
# server accepts clients, runs COMMAND with DISPLAY set (and GTK kept off the
# session bus and the accessibility bus), then stops the server. Exits with
# COMMAND's status, or 77 (CTest: skipped) only when no X server can be
# started: Xvfb is not installed or does not come up.
set -u
if ! command -v Xvfb >/dev/null 2>&1; then
    echo "with_xvfb: Xvfb is not installed (Debian: xvfb); skipped"
    exit 77
fi
dir=$(mktemp -d)
xpid=
cleanup() {
    [ -n "$xpid" ] && kill "$xpid" 2>/dev/null && wait "$xpid" 2>/dev/null
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
Xvfb -displayfd 3 -screen 0 1280x1024x24 -nolisten tcp -br 3>"$dir/display" 2>"$dir/xvfb.log" &
xpid=$!
i=0
while [ ! -s "$dir/display" ]; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$xpid" 2>/dev/null; then
        echo "with_xvfb: Xvfb did not start; skipped"
        cat "$dir/xvfb.log"
        exit 77
    fi
    sleep 0.1
done
DISPLAY=:$(head -n1 "$dir/display")
export DISPLAY
export NO_AT_BRIDGE=1 GDK_BACKEND=x11 GSETTINGS_BACKEND=memory
export XDG_RUNTIME_DIR="$dir"
"$@"
