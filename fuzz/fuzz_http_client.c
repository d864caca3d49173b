// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/fiber/*.c src/fiber/*.S src/net/*.c src/framing/*.c src/fstream/*.c src/endpoint/*.c src/tls/*.c src/http/*.c
// fuzz-libs: -lssl -lcrypto -lpthread
/* libFuzzer: a whole HTTP client fed a server's bytes, the mirror of
 * fuzz_http_server. The client connects over memory transports (its
 * connect hook) on a loop with a fake clock; the input is what "the server"
 * sends, fed in pieces to the newest open connection, while what the client
 * writes is read at once. Beyond the response parser (fuzz_http_response)
 * this reaches the client's own reading of the network: heads split
 * anywhere, Content-Length / chunked / close-delimited bodies, 1xx, HEAD
 * answers, keep-alive and the pool (up to four requests run one after
 * another on one client, so a response's trailing bytes meet the next
 * request), redirects to other origins (new connections, https included:
 * TLS then reads the input), connection refusals, timeouts, max_body, and in
 * streaming mode pause/resume and abort in the middle of a body.
 *
 * Input: byte 0 = piece size (bits 0-6, 1..128) and streaming mode (bit 7);
 * byte 1 = flags: bits 0-1 method (GET, HEAD, POST with a body, PUT with a
 * chunked body), bit 2 follow redirects, bit 3 short timeouts, bit 4 a
 * 64-byte max_body, bit 5 pause in the body (streaming), bit 6 abort in the
 * body (streaming), bit 7 two requests at once on max_per_host = 1. The
 * rest is the server's bytes; "|NEXT|" in it separates the answers to
 * successive requests (the next request is made there, if the previous ones
 * are over).
 *
 * Invariants beyond "no crash, no ASan report": every request's Deferred
 * fires exactly once and a streamed body ends exactly once (unless aborted)
 * by the time the client is freed; a buffered body respects max_body and is
 * NUL-terminated; the loop is destroyed after every input, so its leak gate
 * (no timer, handle or live Deferred left) holds per input. */
#include <braid.h>
#include <braid/tls.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "fuzz_world.h"
#include "../tests/support/tls_certs.h"

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

#define MAX_CONNS 32
#define MAX_REQS 4
/* Splits the input into the answers to successive requests: at each one the
 * "server" waits, and the next request is made once the previous ones are over. */
static const char SEP[] = "|NEXT|";

typedef struct req_state {
    int fired, ends, end_code, chunks;
    bool ok, aborted, streaming;
    uint64_t max_body;
    braid_http_client_response *live;   /* streaming: borrowed until on_end */
} req_state;

typedef struct fz {
    braid_loop *loop;
    braid_fake_clock *fc;
    braid_http_client *c;
    braid_memory_transport *m[MAX_CONNS];
    int n;
    int active;                       /* index of the connection last written to, or -1 */
    req_state reqs[MAX_REQS];
    int nreqs;
    unsigned flags;
    bool streaming;
} fz;

static braid_tls_ctx *tls_client;   /* per process: contexts are expensive */

static braid_deferred *mem_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                   braid_factory *f) {
    fz *z = arg;
    (void)https;
    (void)port;
    if (z->n == MAX_CONNS || host[0] == 'r')   /* "refused.example": a failed connect */
        return braid_deferred_fail(loop, braid_failure_new(-ECONNREFUSED, "connection refused"));
    braid_protocol *p = braid_factory_build(f, NULL);
    if (!p) abort();
    braid_memory_transport_new(loop, p, &z->m[z->n++]);
    return braid_deferred_succeed(loop, p, NULL);
}

static void check_response(const req_state *s, const braid_http_client_response *r) {
    if (!r || r->status < 100 || r->status > 999 || !r->reason) abort();
    for (size_t i = 0; i < r->num_headers; i++)
        if (!r->headers[i].name || !r->headers[i].value) abort();
    if (!s->streaming) {
        if (!r->body && r->body_len) abort();
        if (r->body_len > s->max_body) abort();
        if (r->body && r->body[r->body_len] != 0) abort();
    }
}

static braid_result got(braid_result r, void *arg) {
    req_state *s = arg;
    s->fired++;
    s->ok = true;
    check_response(s, r.value);
    if (s->streaming) s->live = r.value;
    braid_result_drop(r);   /* buffered: frees the response; streaming: borrowed, no dtor */
    return braid_result_ok(NULL);
}
static braid_result failed(braid_result r, void *arg) {
    req_state *s = arg;
    s->fired++;
    if (!r.failure || r.failure->code >= 0) abort();
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static fz *cur;   /* the input being run (callbacks read its flags) */

static void on_body(braid_http_client_response *r, const void *buf, size_t len, void *arg) {
    req_state *s = arg;
    if (!len || !buf || s->ends || s->aborted) abort();
    s->chunks++;
    if (cur->flags & 0x20) braid_http_client_response_pause(r);   /* resumed at the next piece */
    if ((cur->flags & 0x40) && s->chunks == 2) {
        s->aborted = true;
        s->live = NULL;
        braid_http_client_response_abort(r);
    }
}
static void on_end(braid_http_client_response *r, int code, void *arg) {
    req_state *s = arg;
    (void)r;
    if (code > 0 || s->aborted) abort();
    s->ends++;
    s->end_code = code;
    s->live = NULL;
}

static const char *const urls[MAX_REQS] = { "http://h/a", "http://h/b?x=1", "http://h:8080/c", "http://h/d" };

static void issue(fz *z) {
    if (z->nreqs == MAX_REQS) return;
    req_state *s = &z->reqs[z->nreqs];
    static const char *const methods[4] = { "GET", "HEAD", "POST", "PUT" };
    unsigned kind = z->flags & 3;
    braid_http_client_req q = {
        .method = methods[kind],
        .url = urls[z->nreqs],
        .body = kind >= 2 ? "0123456789" : NULL,
        .body_len = kind >= 2 ? 10 : 0,
        .chunked = kind == 3,
        .max_redirects = (z->flags & 0x04) ? 3 : -1,
        .max_body = (z->flags & 0x10) ? 64 : 0,
        .on_body = z->streaming ? on_body : NULL,
        .on_end = z->streaming ? on_end : NULL,
        .arg = s,
    };
    s->streaming = z->streaming;
    s->max_body = (z->flags & 0x10) ? 64 : 8u << 20;
    z->nreqs++;
    braid_deferred *d = braid_http_client_request(z->c, &q);
    if (!d) abort();
    if (braid_deferred_add(d, got, failed, s) < 0) abort();
    braid_deferred_unref(d);
}

/* A request is over once its Deferred fired and, streaming, its body ended. */
static bool all_done(const fz *z) {
    for (int i = 0; i < z->nreqs; i++) {
        const req_state *s = &z->reqs[i];
        if (!s->fired) return false;
        if (s->streaming && s->ok && !s->ends && !s->aborted) return false;
    }
    return true;
}

/* The connection the server answers on: the last one a request was written
 * to, while it is open; else the newest open one (unsolicited bytes). */
static braid_memory_transport *answering(fz *z) {
    if (z->active >= 0 && !mstate(z->m[z->active]).closed) return z->m[z->active];
    for (int i = z->n - 1; i >= 0; i--)
        if (!mstate(z->m[i]).closed) return z->m[i];
    return NULL;
}

/* The server reads whatever the client wrote. */
static void read_requests(fz *z) {
    for (int i = 0; i < z->n; i++) {
        size_t len;
        braid_memory_transport_data(z->m[i], &len);
        if (len) z->active = i;
        braid_memory_transport_consume(z->m[i], len);
    }
}

static void resume_paused(fz *z) {
    for (int i = 0; i < z->nreqs; i++)
        if (z->reqs[i].live) braid_http_client_response_resume(z->reqs[i].live);
}

/* Feed len bytes in pieces to the newest open connection, reading what the
 * client writes and moving the clock on 100 ms per piece. False when the
 * bytes could not be delivered for 50 pieces' time (no open connection, or
 * reading paused for good). */
static bool feed(fz *z, const uint8_t *data, size_t len, size_t piece) {
    int stalled = 0;
    for (size_t off = 0; off < len;) {
        read_requests(z);
        braid_memory_transport *m = answering(z);
        size_t n = len - off < piece ? len - off : piece;
        int rc = m ? braid_memory_transport_receive(m, data + off, n) : BRAID_EAGAIN;
        if (rc == 0) {
            off += n;
            stalled = 0;
        } else if (++stalled > 50) {
            return false;
        }
        fzw_spin(z->loop);
        resume_paused(z);
        braid_fake_clock_advance(z->fc, BRAID_MSEC(100));
        fzw_spin(z->loop);
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    if (!tls_client) {
        static btc_cert ca;
        btc_make(&ca, BTC_EC, "fuzz CA", NULL, NULL, -3600, 86400 * 365);
        braid_tls_options co = { .ca_pem = ca.cert_pem };
        if (braid_tls_ctx_new(BRAID_TLS_CLIENT, &co, NULL, 0, &tls_client) < 0) abort();
    }
    fz z = { .active = -1 };
    cur = &z;
    size_t piece = (size_t)(data[0] & 0x7f) + 1;
    z.streaming = data[0] & 0x80;
    z.flags = data[1];
    data += 2;
    size -= 2;

    braid_fake_clock_new(BRAID_SECONDS(1000), &z.fc);
    braid_loop_options lo = { .backend = BRAID_BACKEND_POLL, .clock = braid_fake_clock_base(z.fc),
                              .log = fzw_log };
    if (!z.fc || braid_loop_new(&lo, &z.loop) < 0) abort();
    braid_http_client_options co = {
        .connect = mem_connect, .connect_arg = &z, .tls_ctx = tls_client,
        .max_per_host = (z.flags & 0x80) ? 1 : 0,
    };
    if (z.flags & 0x08) {
        co.connect_timeout = co.header_timeout = co.body_timeout = BRAID_SECONDS(2);
        co.idle_timeout = BRAID_SECONDS(3);
    }
    if (braid_http_client_new(z.loop, &co, &z.c) < 0) abort();

    issue(&z);
    if (z.flags & 0x80) issue(&z);
    fzw_spin(z.loop);
    const uint8_t *seg = data;
    size_t left = size;
    for (;;) {
        const uint8_t *sep = memmem(seg, left, SEP, sizeof SEP - 1);
        size_t len = sep ? (size_t)(sep - seg) : left;
        if (!feed(&z, seg, len, piece) || !sep) break;
        seg = sep + sizeof SEP - 1;
        left -= len + sizeof SEP - 1;
        /* The server waits for the next request before it answers again. */
        read_requests(&z);
        if (all_done(&z)) {
            if (z.nreqs == MAX_REQS) break;
            issue(&z);
            fzw_spin(z.loop);
        }
    }
    /* The server hangs up; every timer runs out; the client goes. */
    read_requests(&z);
    for (int i = 0; i < z.n; i++) braid_memory_transport_peer_eof(z.m[i]);
    resume_paused(&z);
    fzw_expire(z.loop, z.fc, BRAID_SECONDS(5), 100);
    braid_http_client_free(z.c);
    fzw_spin(z.loop);
    for (int i = 0; i < z.nreqs; i++) {
        const req_state *s = &z.reqs[i];
        if (s->fired != 1) abort();
        if (s->streaming && s->ok && !s->aborted && s->ends != 1) abort();
    }
    for (int i = 0; i < z.n; i++) braid_memory_transport_free(z.m[i]);
    if (!fzw_expire(z.loop, z.fc, BRAID_SECONDS(5), 100)) abort();
    if (braid_loop_free(z.loop) < 0) abort();   /* the leak gate */
    braid_fake_clock_free(z.fc);
    cur = NULL;
    return 0;
}
