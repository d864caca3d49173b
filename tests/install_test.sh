#!/bin/sh
# Installs the build tree into a scratch prefix, then compiles and runs a tiny
# program with `pkg-config --cflags --libs braid` against it (shared and static).
set -e
build=$1; cc=${2:-cc}
prefix=$(mktemp -d); trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib*/pkgconfig | head -n1); libdir=${libdir%/pkgconfig}
export PKG_CONFIG_PATH="$libdir/pkgconfig"
cat >"$prefix/hello.c" <<'C'
#include <braid.h>
#include <stdio.h>
static void tick(braid_timer *t, void *arg) { (void)t; ++*(int *)arg; }
int main(void) {
    braid_loop *loop; int fired = 0; braid_timer t;
    if (braid_loop_new(&loop, NULL) < 0) return 1;
    braid_timer_init(loop, &t, tick, &fired);
    braid_timer_start(&t, BRAID_MSEC(1));
    braid_loop_run(loop);
    printf("backend=%s fired=%d\n", braid_loop_backend(loop), fired);
    return braid_loop_destroy(loop) < 0 || fired != 1;
}
C
"$cc" -o "$prefix/hello" "$prefix/hello.c" $(pkg-config --cflags --libs braid)
LD_LIBRARY_PATH="$libdir" "$prefix/hello"
"$cc" -o "$prefix/hello-static" "$prefix/hello.c" $(pkg-config --cflags braid) \
    "$libdir/libbraid.a" $(pkg-config --libs-only-l --static braid | sed 's/-lbraid//')
"$prefix/hello-static"
