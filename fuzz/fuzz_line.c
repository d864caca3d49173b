/* libFuzzer target: the line receiver (delimiter "\r\n"). */
// fuzz-sources: src/framing/framing.c src/base/*.c
#include "fuzz_framer.h"

static void init_line(braid_framer *f, size_t max, fz_rec *r) {
    braid_framer_init_line(f, "\r\n", max, fz_collect, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    return fz_run(init_line, 1, data, size);
}
