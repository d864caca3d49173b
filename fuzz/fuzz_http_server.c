// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/fiber/*.c src/fiber/*.S src/net/*.c src/framing/*.c src/fstream/*.c src/endpoint/*.c src/tls/*.c src/http/*.c
// fuzz-libs: -lssl -lcrypto -lpthread
/* libFuzzer: a whole HTTP server connection fed network input, beyond the
 * parser (fuzz_http_request): pipelining, bodies (Content-Length, chunked,
 * 100-continue), answers queued in order — synchronous ones (any path),
 * Deferred ones that fire later on the loop clock (/d...; /df... fails and
 * becomes a 500), streamed ones written over several timer ticks (/s...) —
 * back-pressure, timeouts, the error answers and the close that follows
 * them, and static files under /f/ (path decoding, ranges,
 * If-Modified-Since) from a directory made at start, beside which lies a
 * file that must never be served (a symlink inside the root points at it). The server runs on a loop with a fake clock over the memory
 * transport. The first byte sets the size of the pieces the rest is fed in
 * (1..128) and whether the "peer" reads the answers as they come (bit 7
 * clear) or never does (set: the pending-answer bound must hold).
 *
 * The loop and the server live across inputs (making them per input cost
 * more than most inputs do); each input is one connection. After the peer's
 * EOF, every timer run out and the connection freed, the leak check holds
 * per input: the server has no connection, the loop no timer or ready call,
 * no Deferred is alive, braid's allocation count is back to where it was
 * (the Deferred free list is filled up front so reuse does not move it) and
 * no file descriptor was left open (the lowest free one is as it was).
 * Every 4,096 inputs the world is torn down through the loop's own leak gate
 * (braid_loop_free refuses a loop with anything left open) and rebuilt. */
#include <braid.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "fuzz_world.h"

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

static braid_fake_clock *fc;
static braid_loop *loop;
static braid_http_server *server;
static long base_allocs;
static unsigned inputs;
static char root[64];
/* Control bytes: no route can echo them (the parser refuses them in a request
 * line or a header), so seeing them means the file was served. */
#define SECRET "\x01\x02secret\x03\x04outside\x05\x06"

static void put_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) abort();
}

static char top[32];
static void remove_root(void) {
    static const char *const files[] = { "www/link", "www/sub/b.txt", "www/index.html", "www/a.txt", "secret.txt" };
    static const char *const dirs[] = { "www/sub", "www" };
    char path[128];
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", top, files[i]);
        unlink(path);
    }
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", top, dirs[i]);
        rmdir(path);
    }
    rmdir(top);
}

/* A directory tree for /f/: root/a.txt, root/index.html, root/sub/b.txt,
 * root/link -> ../secret.txt (outside the root: must never be served). */
static void make_root(void) {
    char dir[] = "/tmp/braid-fuzz-XXXXXX", path[128];
    if (!mkdtemp(dir)) abort();
    snprintf(top, sizeof top, "%s", dir);
    atexit(remove_root);
    snprintf(path, sizeof path, "%s/secret.txt", dir);
    put_file(path, SECRET "\n");
    snprintf(root, sizeof root, "%s/www", dir);
    if (mkdir(root, 0700) < 0) abort();
    snprintf(path, sizeof path, "%s/a.txt", root);
    put_file(path, "0123456789abcdefghijklmnopqrstuvwxyz\n");
    snprintf(path, sizeof path, "%s/index.html", root);
    put_file(path, "<p>index</p>\n");
    snprintf(path, sizeof path, "%s/sub", root);
    if (mkdir(path, 0700) < 0) abort();
    snprintf(path, sizeof path, "%s/sub/b.txt", root);
    put_file(path, "b\n");
    snprintf(path, sizeof path, "%s/link", root);
    if (symlink("../secret.txt", path) < 0) abort();
}

static int lowest_free_fd(void) {
    int fd = fcntl(0, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) abort();
    close(fd);
    return fd;
}

/* The answers as the peer reads them, searched for the secret (also across
 * two reads: the last bytes of each are kept). */
static unsigned char seen_tail[sizeof SECRET];
static size_t seen_len;
static bool has_secret(const unsigned char *p, size_t n) {
    /* memchr, not a byte loop: answers run to megabytes, and every compare
     * in this file is instrumented for coverage */
    const unsigned char *end = p + n, *q = p;
    while (n >= sizeof SECRET - 1 && (q = memchr(q, 1, (size_t)(end - q))) != NULL) {
        if ((size_t)(end - q) < sizeof SECRET - 1) return false;
        if (!memcmp(q, SECRET, sizeof SECRET - 1)) return true;
        q++;
    }
    return false;
}
static void peer_reads(const void *data, size_t n) {
    const unsigned char *p = data;
    unsigned char buf[2 * sizeof SECRET];
    size_t k = n < sizeof SECRET - 1 ? n : sizeof SECRET - 1;
    memcpy(buf, seen_tail, seen_len);
    memcpy(buf + seen_len, p, k);
    if (has_secret(buf, seen_len + k) || has_secret(p, n)) abort();   /* a file outside the root was served */
    size_t keep = n < sizeof SECRET - 1 ? n : sizeof SECRET - 1;
    if (keep < sizeof SECRET - 1 && seen_len + keep > sizeof SECRET - 1) {
        memmove(seen_tail, seen_tail + (seen_len + keep - (sizeof SECRET - 1)), sizeof SECRET - 1 - keep);
        seen_len = sizeof SECRET - 1 - keep;
    } else if (keep == sizeof SECRET - 1) {
        seen_len = 0;
    }
    memcpy(seen_tail + seen_len, p + n - keep, keep);
    seen_len += keep;
}

static braid_deferred *h_echo(braid_http_request *req, void *arg) {
    (void)arg;
    char out[512];
    int n = snprintf(out, sizeof out, "%.*s %.*s body=%zu", (int)req->method_len, req->method,
                     (int)req->path_len, req->path, req->body_len);
    braid_http_request_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

/* /d...: the answer comes (path length % 4) * 100 ms later; /df... fails. */
static braid_result later_ok(void *arg) {
    (void)arg;
    braid_http_response *r;
    if (braid_http_response_new(200, "text/plain", "later", 5, &r) < 0)
        return braid_result_errf(BRAID_ENOMEM, "response");
    return braid_result_ok_owned(r, braid_http_response_free);
}
static braid_result later_fail(void *arg) {
    (void)arg;
    return braid_result_errf(BRAID_EINVAL, "handler failed");
}
static braid_deferred *h_later(braid_http_request *req, void *arg) {
    (void)arg;
    bool fail = req->path_len > 2 && req->path[2] == 'f';
    return braid_deferred_later(loop, BRAID_MSEC(100) * (req->path_len % 4),
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
    if (s->left-- > 0 && braid_http_request_write(s->req, piece, sizeof piece) == 0) {
        braid_timer_start(&s->t, BRAID_MSEC(100));
        return;
    }
    braid_http_request_finish(s->req);   /* also after the connection was lost: it releases the request */
    free(s);
}
static braid_deferred *h_stream(braid_http_request *req, void *arg) {
    (void)arg;
    if (braid_http_request_respond_start(req, 200, "application/octet-stream", -1) < 0) {
        braid_http_request_finish(req);
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
    braid_fake_clock_new(BRAID_SECONDS(1000), &fc);
    braid_loop_options lo = { .backend = BRAID_BACKEND_POLL, .clock = braid_fake_clock_base(fc),
                               .log = fzw_log };
    if (!fc || braid_loop_new(&lo, &loop) < 0) abort();
    braid_http_server_options so = { 0 };
    if (braid_http_server_new(loop, &so, &server) < 0) abort();
    if (braid_http_server_route(server, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_echo, NULL) < 0 ||
        braid_http_server_route(server, NULL, "/d", BRAID_HTTP_ROUTE_PREFIX, h_later, NULL) < 0 ||
        braid_http_server_route(server, NULL, "/s", BRAID_HTTP_ROUTE_PREFIX, h_stream, NULL) < 0)
        abort();
    if (!root[0]) make_root();
    if (braid_http_server_static(server, "/f/", root) < 0) abort();
    /* Fill the Deferred free list, so that taking from it and giving back
     * leaves braid's allocation count unchanged. */
    static braid_deferred *ds[4096];
    for (size_t i = 0; i < 4096; i++)
        if (!(ds[i] = braid_deferred_succeed(loop, NULL, NULL))) abort();
    for (size_t i = 0; i < 4096; i++) braid_deferred_unref(ds[i]);
    base_allocs = -1;   /* taken after the first connection (lazy per-loop state) */
}

static void world_free(void) {
    if (braid_http_server_free(server) < 0) abort();
    fzw_spin(loop);
    if (braid_loop_free(loop) < 0) abort();   /* the loop's leak gate */
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
    /* Taken per input: the sanitizer runtime keeps descriptors of its own
     * (a pipe, once it has checked for leaks). */
    int base_free_fd = lowest_free_fd();

    braid_protocol *p = braid_factory_build(braid_http_server_factory(server), NULL);
    if (!p) abort();
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    if (!m) abort();

    int stalled = 0;
    for (size_t off = 0; off < size;) {
        size_t n = size - off < piece ? size - off : piece;
        if (mstate(m).closed) break;
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
        const void *answers = braid_memory_transport_data(m, &out);
        if (reader) {
            peer_reads(answers, out);
            braid_memory_transport_consume(m, out);
        } else if (out > 8u << 20) {
            abort();   /* the pending-answer bound */
        }
        braid_fake_clock_advance(fc, BRAID_MSEC(100));
        fzw_spin(loop);
    }
    braid_memory_transport_peer_eof(m);
    if (reader) {
        size_t out;
        const void *answers = braid_memory_transport_data(m, &out);
        peer_reads(answers, out);
        braid_memory_transport_consume(m, out);
    }
    /* Every timeout fires: the connection ends, whatever the input did. */
    if (!fzw_expire(loop, fc, BRAID_SECONDS(5), 1000)) abort();
    braid_memory_transport_free(m);
    if (!fzw_expire(loop, fc, BRAID_SECONDS(5), 1000)) abort();

    seen_len = 0;
    if (braid_http_server_connections(server) != 0) abort();
    if (lowest_free_fd() != base_free_fd) abort();   /* a file or socket left open */
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
