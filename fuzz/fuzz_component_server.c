// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/fiber/*.c src/fiber/*.S src/net/*.c src/component/*.c
// fuzz-libs: -lpthread
/* libFuzzer: network input through the component server (ConnectedServer):
 * bytes from a peer over the memory transport become chunks on an echo
 * handler's small inbox, whose outbox is written back. The first byte sets
 * the piece size (1..64), and bit 7 whether the handler stalls until half
 * the input has been offered (the reads must pause, nothing may be lost).
 * Invariants beyond "no crash, no ASan report": what comes back is exactly
 * what went in, in order; after the peer's EOF everything is reaped and the
 * loop's leak gate lets it be destroyed. */
#include <braid.h>
#include <braid/component.h>
#include <stdlib.h>
#include <string.h>

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

static bool g_stall;

static int echo_run(braid_component *c, void *st) {
    (void)st;
    if (g_stall) return BRAID_COMPONENT_IDLE;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0)
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, m.free) < 0) abort();   /* the socket never fills */
    return braid_component_handle_control(c);
}

static braid_component *g_handler;
static int make_echo(braid_loop *loop, const braid_address *peer, void *arg, braid_component **out) {
    (void)peer;
    (void)arg;
    braid_component_options o = { .name = "echo", .capacity = 3 };
    int rc = braid_component_new(loop, echo_run, NULL, &o, out);
    if (rc == 0) g_handler = *out;
    return rc;
}

static void spin(braid_loop *loop) {
    for (int i = 0; i < 8; i++)
        if (braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) < 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t piece = (size_t)(data[0] & 63) + 1;
    g_stall = (data[0] & 128) != 0;
    data++;
    size--;
    braid_loop *loop;
    braid_loop_options lo = { .backend = BRAID_BACKEND_POLL };
    if (braid_loop_new(&lo, &loop) < 0) abort();
    braid_component_server *s;
    if (braid_component_server_new(loop, make_echo, NULL, &s) < 0) abort();
    braid_protocol *p = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    unsigned char *echoed = malloc(size + 1);
    size_t got = 0, off = 0;
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        int rc = braid_memory_transport_receive(m, data + off, n);
        if (rc == 0) off += n;
        else if (rc != BRAID_EAGAIN) abort();
        if (g_stall && (off >= size / 2 || rc == BRAID_EAGAIN)) {   /* stalled until paused or half way */
            g_stall = false;
            braid_component_wake(g_handler);
        }
        spin(loop);
        size_t len;
        const unsigned char *out = braid_memory_transport_data(m, &len);
        if (got + len > size) abort();
        memcpy(echoed + got, out, len);
        got += len;
        braid_memory_transport_consume(m, len);
        if (rc == BRAID_EAGAIN && !g_stall && mstate(m).reading_paused) {
            spin(loop);   /* the handler pops, the connection resumes */
            if (mstate(m).reading_paused) abort();
        }
    }
    if (g_stall) {   /* short input: it never paused */
        g_stall = false;
        braid_component_wake(g_handler);
    }
    braid_memory_transport_peer_eof(m);
    for (int i = 0; i < 4; i++) {
        spin(loop);
        size_t len;
        const unsigned char *out = braid_memory_transport_data(m, &len);
        if (got + len > size) abort();
        memcpy(echoed + got, out, len);
        got += len;
        braid_memory_transport_consume(m, len);
    }
    if (got != size || (size && memcmp(echoed, data, size) != 0)) abort();
    if (braid_component_server_connections(s) != 0) abort();
    braid_memory_transport_free(m);
    braid_component_server_free(s);
    spin(loop);
    if (braid_loop_free(loop) < 0) abort();
    free(echoed);
    return 0;
}
