// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/fiber/*.c src/fiber/*.S src/net/*.c src/framing/*.c src/fstream/*.c src/endpoint/*.c src/tls/*.c src/http/*.c
// fuzz-libs: -lssl -lcrypto -lpthread
/* libFuzzer: a whole HTTP server connection fed network input, beyond the
 * parser (fuzz_http_request): pipelining, bodies (Content-Length, chunked,
 * 100-continue), answers queued in order, back-pressure, timeouts, the
 * error answers and the close that follows them. The server runs on a loop
 * with a fake clock over the memory transport. The first byte sets the size
 * of the pieces the rest is fed in (1..128) and whether the "peer" reads the
 * answers as they come (bit 7 clear) or never does (set: the pending-answer
 * bound must hold). Invariants beyond "no crash, no ASan report": the
 * server's output stays bounded while nobody reads it, and after the peer's
 * EOF and the connection's end, server and loop are freed with nothing left
 * open (the loop's leak gate refuses to destroy a loop that still has any). */
#include <braid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static braid_deferred *h_echo(braid_http_request *req, void *arg) {
    (void)arg;
    char out[512];
    int n = snprintf(out, sizeof out, "%.*s %.*s body=%zu", (int)req->method_len, req->method,
                     (int)req->path_len, req->path, req->body_len);
    braid_http_request_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

static void spin(braid_loop *loop) {
    for (int i = 0; i < 3; i++)
        if (braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) < 0) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    size_t piece = (size_t)(data[0] & 0x7f) + 1;
    bool reader = !(data[0] & 0x80);
    data++;
    size--;

    braid_fake_clock *fc = braid_fake_clock_new(BRAID_SECONDS(1000));
    braid_loop *loop;
    braid_loop_options lo = { .backend = BRAID_BACKEND_POLL, .clock = braid_fake_clock_base(fc) };
    if (!fc || braid_loop_new(&loop, &lo) < 0) abort();
    braid_http_server *s;
    braid_http_server_options so = { 0 };
    if (braid_http_server_new(loop, &so, &s) < 0) abort();
    if (braid_http_server_route(s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_echo, NULL) < 0) abort();
    braid_protocol *p = braid_factory_build(braid_http_server_factory(s), NULL);
    if (!p) abort();
    braid_memory_transport *m = braid_memory_transport_new(loop, p);
    if (!m) abort();

    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        braid_memory_state st = braid_memory_transport_state(m);
        if (st.closed) break;
        if (braid_memory_transport_receive(m, data + off, n) < 0) break;
        spin(loop);
        size_t out;
        braid_memory_transport_data(m, &out);
        if (reader) braid_memory_transport_consume(m, out);
        else if (out > 8u << 20) abort();   /* the pending-answer bound */
        braid_fake_clock_advance(fc, BRAID_MSEC(100));
        spin(loop);
    }
    braid_memory_transport_peer_eof(m);
    spin(loop);
    braid_fake_clock_advance(fc, BRAID_SECONDS(600));   /* every timeout fires */
    spin(loop);
    braid_memory_transport_free(m);
    spin(loop);
    if (braid_http_server_free(s) < 0) abort();
    spin(loop);
    if (braid_loop_free(loop) < 0) abort();
    braid_fake_clock_free(fc);
    return 0;
}
