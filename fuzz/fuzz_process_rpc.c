// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/net/*.c src/framing/*.c src/endpoint/*.c src/process/*.c
// fuzz-libs: -lpthread
/* libFuzzer: the worker pool's wire format as either side reads it — a
 * byte stream cut into u32 length-prefixed frames (limit 64 KiB), each
 * parsed by braid__rpc_parse. Invariants beyond "no crash, no ASan
 * report": what a parse accepts lies inside its frame, and encoding it
 * again (braid__rpc_write over a memory transport) gives back the very
 * frame. */
#include "process/process_internal.h"
#include <stdlib.h>
#include <string.h>

static braid_loop *loop;
static braid_memory_transport *mt;
static braid_protocol sink;

static int on_frame(void *ctx, const void *frame, size_t len) {
    (void)ctx;
    braid__rpc_msg m;
    if (braid__rpc_parse(frame, len, &m) < 0) return 0;
    const char *lo = frame, *hi = lo + len;
    if (m.command && (m.command < lo || m.command + m.command_len > hi)) abort();
    if (m.len && ((const char *)m.payload < lo || (const char *)m.payload + m.len > hi)) abort();
    size_t before;
    braid_memory_transport_data(mt, &before);
    if (braid__rpc_write(braid_memory_transport_base(mt), &m, 1u << 16) < 0) abort();
    size_t after;
    const unsigned char *out = braid_memory_transport_data(mt, &after);
    if (after - before != len + 4 || memcmp(out + before + 4, frame, len)) abort();
    braid_memory_transport_consume(mt, after);
    return 0;
}

static const braid_protocol_ops sink_ops = { 0 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!loop) {
        if (braid_loop_new(NULL, &loop) < 0) abort();
        sink.ops = &sink_ops;
        if (braid_memory_transport_new(loop, &sink, &mt) < 0) abort();
    }
    braid_framer f;
    braid_framer_init_u32(&f, 1u << 16, on_frame, NULL);
    size_t step = size ? (size_t)data[0] % 64 + 1 : 1;
    for (size_t i = 1; i < size; i += step) {
        size_t n = size - i < step ? size - i : step;
        if (braid_framer_feed(&f, data + i, n) != 0) break;
    }
    braid_framer_close(&f);
    return 0;
}
