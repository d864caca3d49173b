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

# libbraid-glib, when it was built: braid-glib.pc brings braid and glib-2.0.
if [ -f "$libdir/pkgconfig/braid-glib.pc" ]; then
    cat >"$prefix/hello-glib.c" <<'C'
#include <braid/glib.h>
#include <braid/time.h>
#include <stdio.h>
static void tick(braid_timer *t, void *arg) { (void)t; g_main_loop_quit(arg); }
int main(void) {
    braid_loop *loop; braid_glib_source *src; braid_timer t;
    if (braid_loop_new(&loop, NULL) < 0) return 1;
    if (braid_glib_source_new(loop, NULL, NULL, &src) < 0) return 1;
    GMainLoop *ml = g_main_loop_new(NULL, FALSE);
    braid_timer_init(loop, &t, tick, ml);
    braid_timer_start(&t, BRAID_MSEC(1));
    g_main_loop_run(ml);                 /* GLib drives; the braid timer quits it */
    printf("braid-glib: timer fired under GLib\n");
    g_main_loop_unref(ml);
    braid_glib_source_free(src);
    return braid_loop_destroy(loop) < 0;
}
C
    "$cc" -o "$prefix/hello-glib" "$prefix/hello-glib.c" $(pkg-config --cflags --libs braid-glib)
    LD_LIBRARY_PATH="$libdir" "$prefix/hello-glib"
fi
