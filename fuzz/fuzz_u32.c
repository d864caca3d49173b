/* libFuzzer target: 32-bit big-endian length-prefixed frames. */
// fuzz-sources: src/framing/framing.c src/base/*.c
#include "fuzz_framer.h"

static void init_u32(braid_framer *f, size_t max, fz_rec *r) {
    braid_framer_init_u32(f, max, fz_collect, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fz_run(init_u32, 4, data, size);
}
