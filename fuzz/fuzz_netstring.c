/* libFuzzer target: netstrings. */
// fuzz-sources: src/framing/framing.c src/base/*.c
#include "fuzz_framer.h"

static void init_netstring(braid_framer *f, size_t max, fz_rec *r) {
    braid_framer_init_netstring(f, max, fz_collect, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    /* header: up to the digits of max, ':' — a partial body is held too, so
     * the bound is max + digits + ':' + ',' */
    return fz_run(init_netstring, 24, data, size);
}
