// fuzz-sources: src/*.c src/poll/select.c src/poll/poll.c src/poll/epoll.c src/stream/*.c src/http/*.c src/tls/*.c src/fiber/*.c src/fiber/*.S
// fuzz-libs: -lssl -lcrypto -lpthread
/* libFuzzer: a whole HTTP server connection fed network input, beyond the
 * parser (fuzz_http_request): pipelining, bodies (Content-Length, chunked,
 * 100-continue), answers queued in order — synchronous ones (any path),
 * Deferred ones that fire later on the loop clock (/d...; /df... fails and
 * becomes a 500), streamed ones written over several timer ticks (/s...) —
 * back-pressure, timeouts, the error answers and the close that follows
 * them. The server runs on a loop with a fake clock over the memory
 * transport. The first byte sets the size of the pieces the rest is fed in
 * (1..128) and whether the "peer" reads the answers as they come (bit 7
 * clear) or never does (set: the pending-answer bound must hold).
 *
 * The loop and the server live across inputs (making them per input cost
 * more than most inputs do); each input is one connection. After the peer's
 * EOF, every timer run out and the connection freed, the leak check holds
 * per input: the server has no connection, the loop no timer or ready call,
 * no Deferred is alive and braid's allocation count is back to where it was
 * (the Deferred free list is filled up front so reuse does not move it).
 * Every 4,096 inputs the world is torn down through the loop's own leak gate
 * (braid_loop_destroy refuses a loop with anything left open) and rebuilt. */
#include <braid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fuzz_world.h"

static braid_fake_clock *fc;
static braid_loop *loop;
static braid_http_server *server;
static long base_allocs;
static unsigned inputs;

static braid_deferred *h_echo(braid_http_request *req, void *arg) {
    (void)arg;
    char out[512];
    int n = snprintf(out, sizeof out, "%.*s %.*s body=%zu", (int)req->method_len, req->method,
                     (int)req->path_len, req->path, req->body_len);
    braid_http_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

/* /d...: the answer comes (path length % 4) * 100 ms later; /df... fails. */
static braid_result later_ok(void *arg) {
    (void)arg;
    braid_http_response *r = braid_http_response_new(200, "text/plain", "later", 5);
    if (!r) return braid_errf(BRAID_ENOMEM, "response");
    return braid_ok_owned(r, braid_http_response_free);
}
static braid_result later_fail(void *arg) {
    (void)arg;
    return braid_errf(BRAID_EINVAL, "handler failed");
}
static braid_deferred *h_later(braid_http_request *req, void *arg) {
    (void)arg;
    bool fail = req->path_len > 2 && req->path[2] == 'f';
    return braid_defer_later(loop, BRAID_MSEC(100) * (req->path_len % 4),
                             fail ? later_fail : later_ok, NULL);
}

/* /s...: a streamed answer, 16 KiB every 100 ms, (path length % 5) pieces. */
typedef struct stream_state {
    braid_http_request *req;
    braid_timer t;
    int left;
} stream_state;
static void stream_tick(braid_timer *t, void *arg) {
    (void)t;
    stream_state *s = arg;
    static char piece[16384];
    if (s->left-- > 0 && braid_http_write(s->req, piece, sizeof piece) == 0) {
        braid_timer_start(&s->t, BRAID_MSEC(100));
        return;
    }
    braid_http_finish(s->req);   /* also after the connection was lost: it releases the request */
    free(s);
}
static braid_deferred *h_stream(braid_http_request *req, void *arg) {
    (void)arg;
    if (braid_http_respond_start(req, 200, "application/octet-stream", -1) < 0) {
        braid_http_finish(req);
        return NULL;
    }
    stream_state *s = malloc(sizeof *s);
    if (!s) abort();
    s->req = req;
    s->left = (int)(req->path_len % 5);
    braid_timer_init(loop, &s->t, stream_tick, s);
    braid_timer_start(&s->t, BRAID_MSEC(100));
    return NULL;
}

static void world_new(void) {
    fc = braid_fake_clock_new(BRAID_SECONDS(1000));
    braid_loop_options lo = { .backend = BRAID_BACKEND_POLL, .clock = braid_fake_clock_base(fc),
                               .log = fzw_log };
    if (!fc || braid_loop_new(&loop, &lo) < 0) abort();
    braid_http_server_options so = { 0 };
    if (braid_http_server_new(loop, &so, &server) < 0) abort();
    if (braid_http_route(server, NULL, "/", BRAID_HTTP_PREFIX, h_echo, NULL) < 0 ||
        braid_http_route(server, NULL, "/d", BRAID_HTTP_PREFIX, h_later, NULL) < 0 ||
        braid_http_route(server, NULL, "/s", BRAID_HTTP_PREFIX, h_stream, NULL) < 0)
        abort();
    /* Fill the Deferred free list, so that taking from it and giving back
     * leaves braid's allocation count unchanged. */
    static braid_deferred *ds[4096];
    for (size_t i = 0; i < 4096; i++)
        if (!(ds[i] = braid_succeed(loop, NULL, NULL))) abort();
    for (size_t i = 0; i < 4096; i++) braid_deferred_release(ds[i]);
    base_allocs = -1;   /* taken after the first connection (lazy per-loop state) */
}

static void world_free(void) {
    if (braid_http_server_free(server) < 0) abort();
    fzw_spin(loop);
    if (braid_loop_destroy(loop) < 0) abort();   /* the loop's leak gate */
    braid_fake_clock_free(fc);
    loop = NULL;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t piece = (size_t)(data[0] & 0x7f) + 1;
    bool reader = !(data[0] & 0x80);
    data++;
    size--;
    if (!loop) world_new();

    braid_protocol *p = braid_factory_build(braid_http_server_factory(server), NULL);
    if (!p) abort();
    braid_memory_transport *m = braid_memory_transport_new(loop, p);
    if (!m) abort();

    int stalled = 0;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < piece ? size - off : piece;
        if (braid_memory_transport_state(m).closed) break;
        /* Reading pauses while an answer is pending: the piece is offered
         * again after the clock moves on (a peer that never reads can keep
         * it paused: then the rest of the input is dropped). */
        int rc = braid_memory_transport_receive(m, data + off, n);
        if (rc == BRAID_EAGAIN) {
            if (++stalled > 50) break;
        } else if (rc < 0) {
            break;
        } else {
            off += n;
            stalled = 0;
        }
        fzw_spin(loop);
        size_t out;
        braid_memory_transport_data(m, &out);
        if (reader) braid_memory_transport_consume(m, out);
        else if (out > 8u << 20) abort();   /* the pending-answer bound */
        braid_fake_clock_advance(fc, BRAID_MSEC(100));
        fzw_spin(loop);
    }
    braid_memory_transport_peer_eof(m);
    if (reader) {
        size_t out;
        braid_memory_transport_data(m, &out);
        braid_memory_transport_consume(m, out);
    }
    /* Every timeout fires: the connection ends, whatever the input did. */
    if (!fzw_expire(loop, fc, BRAID_SECONDS(5), 1000)) abort();
    braid_memory_transport_free(m);
    if (!fzw_expire(loop, fc, BRAID_SECONDS(5), 1000)) abort();

    if (braid_http_server_connections(server) != 0) abort();
    if (braid_deferred_live(loop) != 0) abort();
    if (base_allocs < 0) base_allocs = braid_test_alloc_outstanding();
    if (braid_test_alloc_outstanding() != base_allocs) {
        fprintf(stderr, "fuzz_http_server: %ld braid allocations outstanding after the input, %ld before\n",
                braid_test_alloc_outstanding(), base_allocs);
        abort();
    }
    if (++inputs % 4096 == 0) world_free();
    return 0;
}
