#!/bin/sh
# Build one libFuzzer target with clang and run it briefly on its seed corpus.
#   run.sh SRCDIR BINDIR NAME SECONDS CLANG "EXTRA_LIBS"
# The library is compiled once into BINDIR/libbraid_fuzz.a (rebuilt when any
# source or header is newer); new inputs go to BINDIR/corpus-NAME, never into
# the seed corpus in the source tree. Exit 77 (skip) when clang is missing.
set -e
src=$1 bin=$2 name=$3 secs=$4 cc=$5 extra=$6
if [ -z "$cc" ] || ! command -v "$cc" >/dev/null 2>&1; then
    echo "clang not found: fuzz target $name skipped"; exit 77
fi
mkdir -p "$bin/obj" "$bin/corpus-$name"
lib=$bin/libbraid_fuzz.a
flags="-g -O1 -std=gnu17 -D_GNU_SOURCE -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined -I$src/include -I$src/src"
stale=0
[ -f "$lib" ] || stale=1
if [ $stale = 0 ] && [ -n "$(find "$src/src" "$src/include" -newer "$lib" \( -name '*.c' -o -name '*.h' \) | head -1)" ]; then
    stale=1
fi
if [ $stale = 1 ]; then
    rm -f "$bin"/obj/*.o "$lib"
    # io_uring needs liburing and a configure-time define: fuzz targets don't need it.
    for f in $(find "$src/src" -name '*.c' ! -name 'uring*.c' | sort); do
        o=$bin/obj/$(echo "${f#$src/src/}" | tr / _ | sed 's/\.c$/.o/')
        "$cc" $flags -fvisibility=hidden -c "$f" -o "$o"
    done
    ar rcs "$lib" "$bin"/obj/*.o
fi
exe=$bin/fuzz_$name
if [ ! -x "$exe" ] || [ "$src/fuzz/fuzz_$name.c" -nt "$exe" ] || [ "$lib" -nt "$exe" ]; then
    "$cc" $flags -fsanitize=fuzzer "$src/fuzz/fuzz_$name.c" "$lib" -o "$exe" -lpthread $extra
fi
seeds=$src/fuzz/corpus/$name
[ -d "$seeds" ] || seeds=
exec "$exe" -max_total_time="$secs" -timeout=10 -error_exitcode=1 -timeout_exitcode=1 -rss_limit_mb=1024 -print_final_stats=1 \
    "$bin/corpus-$name" $seeds
