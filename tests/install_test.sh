#!/bin/sh
# Builds and runs a tiny program with pkg-config, four ways:
#   1. against the build tree, not installed (braid-uninstalled.pc, found with
#      PKG_CONFIG_PATH=<build dir>), linked with the shared library;
#   2. the same, fully static (cc -static, pkg-config --static);
#   3. against the tree installed into a scratch prefix (braid.pc), shared;
#   4. the same, static.
# The static links prove the private dependencies (liburing, OpenSSL,
# pthread) are all in Libs.private / Requires.private: no other flag is given.
set -e
build=$(cd "$1" && pwd); cc=${2:-cc}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cat >"$work/hello.c" <<'C'
#include <braid.h>
#include <stdio.h>
static void tick(braid_timer *t, void *arg) { (void)t; ++*(int *)arg; }
int main(void) {
    braid_loop *loop; int fired = 0; braid_timer t;
    if (braid_loop_new(NULL, &loop) < 0) return 1;
    braid_timer_init(loop, &t, tick, &fired);
    braid_timer_start(&t, BRAID_MSEC(1));
    braid_loop_run(loop);
    printf("backend=%s fired=%d\n", braid_loop_backend(loop), fired);
    return braid_loop_free(loop) < 0 || fired != 1;
}
C
fail() { echo "install_test: $*" >&2; exit 1; }

# The private dependencies a static link needs, from the .pc file alone.
check_static_libs() {
    libs=$(pkg-config --static --libs braid)
    for l in -lssl -lcrypto -lpthread; do
        case " $libs " in *" $l "*) ;; *) fail "$1: 'pkg-config --static --libs braid' lacks $l: $libs" ;; esac
    done
    if grep -q '^Requires.private:.*liburing' "$2"; then
        case " $libs " in *" -luring "*) ;; *) fail "$1: lacks -luring: $libs" ;; esac
    fi
}

# 1-2: the build tree, no install. A stale build/braid.pc must not be there
# to be picked up instead (it used to point at a prefix that did not exist).
[ -f "$build/braid-uninstalled.pc" ] || fail "no $build/braid-uninstalled.pc"
[ ! -e "$build/braid.pc" ] || fail "$build/braid.pc is back: it describes the installed tree"
export PKG_CONFIG_PATH="$build"
src=$(cd "$(dirname "$0")/.." && pwd)
case " $(pkg-config --cflags braid) " in
    *" -I$src/include "*) ;;
    *) fail "uninstalled cflags do not name $src/include: $(pkg-config --cflags braid)" ;;
esac
check_static_libs uninstalled "$build/braid-uninstalled.pc"
"$cc" -o "$work/hello-tree" "$work/hello.c" $(pkg-config --cflags --libs braid)
"$work/hello-tree"                                     # found through the rpath, no LD_LIBRARY_PATH
ldd "$work/hello-tree" | grep -q "$build/libbraid.so" || fail "hello-tree does not use $build/libbraid.so"
"$cc" -static -o "$work/hello-tree-static" "$work/hello.c" $(pkg-config --cflags --libs --static braid)
"$work/hello-tree-static"

# 3-4: installed into a scratch prefix.
prefix="$work/prefix"
cmake --install "$build" --prefix "$prefix" >/dev/null
libdir=$(ls -d "$prefix"/lib*/pkgconfig | head -n1); libdir=${libdir%/pkgconfig}
# A header is installed only with its library: glib.h with libbraid-glib,
# db.h with libbraid-db (a program must not find a header it cannot link).
for m in glib db; do
    if [ -f "$prefix/include/braid/$m.h" ] && ! ls "$libdir"/libbraid-$m.* >/dev/null 2>&1; then
        fail "include/braid/$m.h is installed without libbraid-$m"
    fi
    if [ ! -f "$prefix/include/braid/$m.h" ] && ls "$libdir"/libbraid-$m.* >/dev/null 2>&1; then
        fail "libbraid-$m is installed without include/braid/$m.h"
    fi
done
export PKG_CONFIG_PATH="$libdir/pkgconfig"
check_static_libs installed "$libdir/pkgconfig/braid.pc"
"$cc" -o "$work/hello" "$work/hello.c" $(pkg-config --cflags --libs braid)
LD_LIBRARY_PATH="$libdir" "$work/hello"
"$cc" -static -o "$work/hello-static" "$work/hello.c" $(pkg-config --cflags --libs --static braid)
"$work/hello-static"

# 5: libbraid-glib, when it was built: braid-glib.pc brings braid and glib-2.0.
if [ -f "$libdir/pkgconfig/braid-glib.pc" ]; then
    cat >"$work/hello-glib.c" <<'C'
#include <braid/glib.h>
#include <braid/time.h>
#include <stdio.h>
static void tick(braid_timer *t, void *arg) { (void)t; g_main_loop_quit(arg); }
int main(void) {
    braid_loop *loop; braid_glib_source *src; braid_timer t;
    if (braid_loop_new(NULL, &loop) < 0) return 1;
    if (braid_glib_source_new(loop, NULL, NULL, &src) < 0) return 1;
    GMainLoop *ml = g_main_loop_new(NULL, FALSE);
    braid_timer_init(loop, &t, tick, ml);
    braid_timer_start(&t, BRAID_MSEC(1));
    g_main_loop_run(ml);                 /* GLib drives; the braid timer quits it */
    printf("braid-glib: timer fired under GLib\n");
    g_main_loop_unref(ml);
    braid_glib_source_free(src);
    return braid_loop_free(loop) < 0;
}
C
    "$cc" -o "$work/hello-glib" "$work/hello-glib.c" $(pkg-config --cflags --libs braid-glib)
    LD_LIBRARY_PATH="$libdir" "$work/hello-glib" || fail "hello-glib failed"
fi
