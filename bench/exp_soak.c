/* soak: braid's HTTP server under minutes of mixed load, watched every second.
 *
 * Not part of the default set (`make bench` skips it: .explicit_only); run it
 * by name: `braid-bench soak` (3 minutes of load per backend), `--full` (10
 * minutes), `--smoke` (8 seconds, for the tests).
 *
 * The server is `braid-bench serve soak` in its own process: one loop
 * (epoll, then io_uring when available), an HTTP server on a plain port and
 * the same server behind braid's TLS on a second port (a certificate made at
 * start), and a pool of 8 threads. Routes:
 *   GET  /echo?TOKEN      200, the body is TOKEN
 *   POST /echo            200, the body is the request's body
 *   GET  /pool?MS&TOKEN   a pool job blocks MS ms (usleep), then 200 TOKEN
 *   GET  /cpu?N&TOKEN     a pool job hashes TOKEN N times; 200, the hash
 *   GET  /big?BYTES       BYTES of a known pattern, streamed by a producer
 *   GET  /status          the server's own counters: pending timers (the
 *                         loop's timer heap), connections, live Deferreds,
 *                         pool jobs queued and running, requests served
 *
 * The load, from threads of braid-bench with plain blocking sockets and
 * OpenSSL (no braid code on the client side, so a client bug cannot hide a
 * server bug), each checking every answer it gets:
 *   keepalive x3  one connection, GET /echo and POST /echo (0-64 KiB bodies),
 *                 sometimes 2-8 small requests pipelined
 *   newconn       one request per connection (Connection: close)
 *   tls x2        the same over TLS: one keeps its connection for 20
 *                 requests, the other makes a new one (full handshake) each time
 *   pool x2       GET /pool (50 ms blocking jobs) and GET /cpu
 *   slow          GET /big of 0.5-2 MiB, read 8 KiB per 10 ms
 *   vanish        clients that go away mid-request: half a head then FIN or
 *                 RST, a /pool request abandoned before its answer, a /big
 *                 reset after 64 KiB, a body cut short, a /big never read
 *                 for 2 s, a TLS handshake abandoned
 *   garbage       malformed requests (random bytes, an over-long header,
 *                 Content-Length with Transfer-Encoding, a bad chunk size,
 *                 an unknown method, HTTP/2.0) and random bytes to the TLS
 *                 port: an answer must be 4xx/5xx (or none), never 2xx.
 * A request is "ok" when its answer is complete and right, "wrong" when an
 * answer came and is not what was asked for, "lost" when the connection
 * ended or 10 s passed without it (a server that drops requests).
 *
 * Every second a sampler reads the server's RSS (/proc/PID/status VmRSS) and
 * open descriptors (/proc/PID/fd) and GETs /status on its own keep-alive
 * connection. Phases: 3 s idle (the baselines), the load, then the load
 * stops and the sampler waits (up to 30 s) for descriptors, connections and
 * timers to return to their baselines. The figures: RSS growth from the end
 * of warm-up (the first third of the load) to the end of the load (medians
 * of 10 samples each; target <= 1 %), descriptors after the load against the
 * baseline, requests ok / wrong / lost. The timeline (RSS, descriptors,
 * timers, answers per second) is plotted with gnuplot into
 * soak_timeline_<backend>.svg, the samples written to
 * soak_samples_<backend>.csv. */
#include "bench.h"
#include "../tests/support/tls_certs.h"
#include "loop/loop_internal.h"   /* the loop's timer heap size, for /status */

#include <braid.h>
#include <braid/tls.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define BIG_MAX (8u << 20)
static unsigned char pattern_at(uint64_t i) { return (unsigned char)(i * 31 + 7); }

static uint64_t fnv_rounds(const char *s, size_t n, long rounds) {
    uint64_t h = 14695981039346656037ull;
    for (long r = 0; r < rounds; r++)
        for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

/* ==== the server (braid-bench serve soak) ================================================ */
typedef struct soak_server {
    braid_loop *loop;
    braid_http_server *http;
    braid_pool *pool;
    uint64_t requests;
} soak_server;
static soak_server S;

/* The query as (first, second) around '&'. */
static void split_query(const braid_http_request *req, const char **a, size_t *alen, const char **b, size_t *blen) {
    const char *q = req->query ? req->query : "";
    size_t n = req->query ? req->query_len : 0;
    const char *amp = memchr(q, '&', n);
    *a = q;
    *alen = amp ? (size_t)(amp - q) : n;
    *b = amp ? amp + 1 : q + n;
    *blen = amp ? n - *alen - 1 : 0;
}

static braid_deferred *h_echo(braid_http_request *req, void *arg) {
    (void)arg;
    S.requests++;
    if (req->method_len == 4 && !memcmp(req->method, "POST", 4))
        braid_http_request_respond(req, 200, "application/octet-stream", req->body, req->body_len);
    else
        braid_http_request_respond(req, 200, "text/plain", req->query ? req->query : "", req->query ? req->query_len : 0);
    return NULL;
}

typedef struct job {
    long n;           /* ms to sleep, or hash rounds */
    bool cpu;
    size_t len;
    char token[];
} job;

static braid_result run_job(void *arg) {   /* on a pool worker */
    job *j = arg;
    char out[32];
    const char *body = j->token;
    size_t len = j->len;
    if (j->cpu) {
        len = (size_t)snprintf(out, sizeof out, "%016llx", (unsigned long long)fnv_rounds(j->token, j->len, j->n));
        body = out;
    } else {
        usleep((useconds_t)(j->n * 1000));
    }
    braid_http_response *r;
    if (braid_http_response_new(200, "text/plain", body, len, &r) < 0)
        return braid_result_errf(BRAID_ENOMEM, "response");
    return braid_result_ok_owned(r, braid_http_response_free);
}

static braid_deferred *h_job(braid_http_request *req, void *arg) {
    S.requests++;
    const char *a, *b;
    size_t alen, blen;
    split_query(req, &a, &alen, &b, &blen);
    long n = strtol(a, NULL, 10);
    if (n < 0 || n > 100000 || alen == 0) {
        braid_http_request_respond(req, 400, "text/plain", "bad query\n", 10);
        return NULL;
    }
    job *j = malloc(sizeof *j + blen + 1);
    if (!j) {
        braid_http_request_respond(req, 503, "text/plain", "no memory\n", 10);
        return NULL;
    }
    j->n = n;
    j->cpu = arg != NULL;
    j->len = blen;
    memcpy(j->token, b, blen);
    j->token[blen] = 0;
    return braid_pool_defer_full(S.loop, S.pool, 0, run_job, j, free);
}

/* /big: a push producer writing 64 KiB pieces of the pattern until paused. */
typedef struct big {
    braid_producer p;
    braid_http_request *req;
    uint64_t off, total;
    bool paused, done;
} big;
static void big_free(void *arg) { free(arg); }
static void big_end(big *g) {
    if (g->done) return;
    g->done = true;
    braid_http_request_finish(g->req);
    braid_loop_soon(S.loop, big_free, g);   /* after the transport is done with the producer */
}
static void big_pump(big *g) {
    static unsigned char piece[65536];
    static bool made;
    if (!made) {
        made = true;   /* a 64 KiB piece at offset k*64 KiB is the same bytes for every k: 31 * 65536 = 0 mod 256 */
        for (size_t i = 0; i < sizeof piece; i++) piece[i] = pattern_at(i);
    }
    while (!g->paused && !g->done && g->off < g->total) {
        size_t n = g->total - g->off < sizeof piece ? (size_t)(g->total - g->off) : sizeof piece;
        if (braid_http_request_write(g->req, piece, n) < 0) {
            big_end(g);
            return;
        }
        g->off += n;
    }
    if (g->off == g->total) big_end(g);
}
static void big_pause(braid_producer *p) { ((big *)p->arg)->paused = true; }
static void big_resume(braid_producer *p) {
    big *g = p->arg;
    g->paused = false;
    big_pump(g);
}
static void big_stop(braid_producer *p) { big_end(p->arg); }

static braid_deferred *h_big(braid_http_request *req, void *arg) {
    (void)arg;
    S.requests++;
    long n = req->query ? strtol(req->query, NULL, 10) : 0;
    if (n < 0 || n > (long)BIG_MAX) n = 0;
    big *g = calloc(1, sizeof *g);
    if (!g || braid_http_request_respond_start(req, 200, "application/octet-stream", n) < 0) {
        free(g);
        braid_http_request_finish(req);
        return NULL;
    }
    g->req = req;
    g->total = (uint64_t)n;
    g->p = (braid_producer){ big_pause, big_resume, big_stop, g };
    if (braid_http_request_register_producer(req, &g->p, true) < 0) {
        big_end(g);
        return NULL;
    }
    big_pump(g);
    return NULL;
}

static braid_deferred *h_status(braid_http_request *req, void *arg) {
    (void)arg;
    struct braid_pool_stats ps;
    braid_pool_stats(S.pool, &ps);
    char out[512];
    int n = snprintf(out, sizeof out, "timers %zu\nconns %zu\ndeferreds %zu\npool_queued %llu\npool_running %llu\n"
                                      "requests %llu\n",
                     S.loop->heap_len, braid_http_server_connections(S.http), braid_deferred_live(S.loop),
                     (unsigned long long)ps.queued, (unsigned long long)ps.running,
                     (unsigned long long)S.requests);
    braid_http_request_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

/* braid-bench serve soak --port P --tls-port Q [--backend B] */
static int serve(int argc, char **argv) {
    int port = 0, tls_port = 0;
    const char *backend = "epoll";
    const bench_opt opts[] = {
        BENCH_SERVE_PORT(&port),
        { .name = "--tls-port", .kind = BENCH_OPT_INT, .value = &tls_port, .metavar = "Q",
          .help = "port of the same server behind TLS", .required = true },
        BENCH_SERVE_BACKEND(&backend),
        { 0 } };
    int rc;
    if (!bench_serve_args("soak", argc, argv, opts, &rc)) return rc;
    if (port <= 0 || tls_port <= 0) { fprintf(stderr, "serve soak: --port and --tls-port must be ports\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    braid_loop_options lo = { .backend = (braid_backend)bench_backend(backend), .flags = BRAID_LOOP_STRICT_BACKEND };
    if (braid_loop_new(&lo, &S.loop) < 0) {
        fprintf(stderr, "serve soak: backend %s unavailable\n", backend);
        return 77;
    }
    braid_pool_options po = { .max_threads = 8, .name = "soak", .loop = S.loop };
    if (braid_pool_new(&po, &S.pool) < 0 || braid_http_server_new(S.loop, NULL, &S.http) < 0) return 1;
    if (braid_http_server_route(S.http, NULL, "/echo", 0, h_echo, NULL) < 0 ||
        braid_http_server_route(S.http, "GET", "/pool", 0, h_job, NULL) < 0 ||
        braid_http_server_route(S.http, "GET", "/cpu", 0, h_job, &S) < 0 ||
        braid_http_server_route(S.http, "GET", "/big", 0, h_big, NULL) < 0 ||
        braid_http_server_route(S.http, "GET", "/status", 0, h_status, NULL) < 0)
        return 1;
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1:backlog=511", port);
    braid_deferred *d = braid_http_server_listen(S.http, ep);
    braid_result r;
    if (braid_deferred_take(d, &r) < 0 || r.failure) {
        fprintf(stderr, "serve soak: cannot listen on %s\n", ep);
        return 1;
    }
    braid_deferred_unref(d);

    btc_cert ca, cert;
    btc_make(&ca, BTC_EC, "soak CA", NULL, NULL, -3600, 86400);
    btc_make(&cert, BTC_EC, "localhost", "DNS:localhost,IP:127.0.0.1", &ca, -3600, 86400);
    braid_tls_ctx *tctx;
    char err[256];
    if (braid_tls_ctx_new(BRAID_TLS_SERVER, &(braid_tls_options){ .cert_pem = cert.cert_pem, .key_pem = cert.key_pem }, err, sizeof err, &tctx) < 0) {
        fprintf(stderr, "serve soak: %s\n", err);
        return 1;
    }
    static braid_tls_factory tf;
    if (braid_tls_factory_init(&tf, braid_http_server_factory(S.http), &(braid_tls_wrap_options){ .ctx = tctx }) < 0)
        return 1;
    braid_tls_ctx_unref(tctx);
    braid_listener *tl;
    if (braid_endpoint_listener(braid_endpoint_listen_typed(S.loop, &(braid_endpoint){
            .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = tls_port }, &tf.base), &tl) < 0) {
        fprintf(stderr, "serve soak: cannot listen on TLS port %d\n", tls_port);
        return 1;
    }
    braid_loop_run(S.loop);   /* until SIGTERM ends the process */
    return 0;
}

/* ==== the clients ================================================================================ */
enum { K_KEEPALIVE, K_NEWCONN, K_TLS_KEEP, K_TLS_NEW, K_POOL, K_SLOW, K_VANISH, K_GARBAGE, K_COUNT };
static const char *const kind_names[K_COUNT] = { "keepalive", "newconn", "tls-keepalive", "tls-new", "pool",
                                                 "slow", "vanish", "garbage" };

typedef struct soak_load {
    int port, tls_port;
    SSL_CTX *ssl;
    atomic_bool stop;
    atomic_ullong ok[K_COUNT], wrong[K_COUNT], lost[K_COUNT], done[K_COUNT];
    pthread_mutex_t lock;
    char first_wrong[4][200];
    int nwrong_msgs;
} soak_load;

typedef struct client {
    soak_load *L;
    int kind;
    uint64_t rng;
    int fd;
    SSL *ssl;
    char *buf;          /* read buffer (pipelined answers may share a read) */
    size_t blen, bcap;
} client;

static uint64_t rnd(client *c) {
    c->rng ^= c->rng << 13;
    c->rng ^= c->rng >> 7;
    c->rng ^= c->rng << 17;
    return c->rng;
}

static void note_wrong(client *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note_wrong(client *c, const char *fmt, ...) {
    atomic_fetch_add(&c->L->wrong[c->kind], 1);
    pthread_mutex_lock(&c->L->lock);
    if (c->L->nwrong_msgs < 4) {
        va_list ap;
        va_start(ap, fmt);
        int k = snprintf(c->L->first_wrong[c->L->nwrong_msgs], 200, "%s: ", kind_names[c->kind]);
        vsnprintf(c->L->first_wrong[c->L->nwrong_msgs] + k, (size_t)(200 - k), fmt, ap);
        va_end(ap);
        c->L->nwrong_msgs++;
    }
    pthread_mutex_unlock(&c->L->lock);
}

static void c_close(client *c, bool rst) {
    if (c->ssl) {
        if (!rst) SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        if (rst) {
            struct linger lg = { 1, 0 };
            setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        }
        close(c->fd);
        c->fd = -1;
    }
    c->blen = 0;
}

/* A TCP connection to the plain or the TLS port (10 s timeouts on every
 * read and write); with handshake, the TLS handshake too. */
static bool c_tcp(client *c, bool tls_port) {
    c_close(c, false);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c->fd < 0) return false;
    struct timeval tv = { 10, 0 };
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET,
                             .sin_port = htons((uint16_t)(tls_port ? c->L->tls_port : c->L->port)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (connect(c->fd, (struct sockaddr *)&a, sizeof a) < 0) {
        c_close(c, false);
        return false;
    }
    return true;
}

static bool c_connect(client *c, bool tls) {
    if (!c_tcp(c, tls)) return false;
    if (tls) {
        c->ssl = SSL_new(c->L->ssl);
        if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_connect(c->ssl) != 1) {
            ERR_clear_error();
            c_close(c, true);
            return false;
        }
    }
    return true;
}

static bool c_write(client *c, const void *buf, size_t len) {
    const char *p = buf;
    while (len) {
        ssize_t n;
        if (c->ssl) {
            int r = SSL_write(c->ssl, p, (int)(len > 1 << 30 ? 1 << 30 : len));
            if (r <= 0) { ERR_clear_error(); return false; }
            n = r;
        } else {
            n = send(c->fd, p, len, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return false;
        }
        p += n;
        len -= (size_t)n;
    }
    return true;
}

/* Read more into c->buf: bytes read, 0 at EOF, -1 on error or timeout. */
static ssize_t c_fill(client *c, size_t max) {
    if (c->bcap - c->blen < 16384) {
        size_t cap = c->bcap ? c->bcap * 2 : 65536;
        char *nb = realloc(c->buf, cap);
        if (!nb) return -1;
        c->buf = nb;
        c->bcap = cap;
    }
    size_t room = c->bcap - c->blen;
    if (max && room > max) room = max;
    if (c->ssl) {
        int r = SSL_read(c->ssl, c->buf + c->blen, (int)room);
        if (r > 0) { c->blen += (size_t)r; return r; }
        int e = SSL_get_error(c->ssl, r);
        ERR_clear_error();
        return e == SSL_ERROR_ZERO_RETURN ? 0 : -1;
    }
    ssize_t n;
    do n = recv(c->fd, c->buf + c->blen, room, 0); while (n < 0 && errno == EINTR);
    if (n > 0) c->blen += (size_t)n;
    return n < 0 ? -1 : n;
}

static void c_take(client *c, size_t n) {
    memmove(c->buf, c->buf + n, c->blen - n);
    c->blen -= n;
}

/* One answer: its status, whether the server will close, and the body
 * (checked by `check` piece by piece when given, else returned in body).
 * Returns 1 complete, 0 connection ended or timed out before it was. */
typedef struct answer {
    int status;
    bool close;
    uint64_t length;
    char *body;             /* malloc'd, NUL-terminated (when no check) */
    char head[48];          /* the head's first bytes, printable (for reports) */
} answer;
typedef bool (*body_check)(client *c, const char *p, size_t n, uint64_t off, void *arg);

static int read_answer(client *c, answer *a, body_check check, void *arg, size_t slow_piece, int slow_us) {
    memset(a, 0, sizeof *a);
    char *end;
    while (!(end = c->blen ? memmem(c->buf, c->blen, "\r\n\r\n", 4) : NULL)) {
        if (c->blen > 65536 || c_fill(c, 0) <= 0) return 0;
    }
    size_t head = (size_t)(end - c->buf) + 4;
    for (size_t i = 0; i < sizeof a->head - 1 && i < head; i++)
        a->head[i] = c->buf[i] >= 0x20 && c->buf[i] < 0x7f ? c->buf[i] : '.';
    if (sscanf(c->buf, "HTTP/1.%*d %d", &a->status) != 1) a->status = -1;
    bool have_len = false;
    for (char *l = strstr(c->buf, "\r\n"); l && l < end; l = strstr(l + 2, "\r\n")) {
        if (!strncasecmp(l + 2, "Content-Length:", 15)) {
            a->length = strtoull(l + 17, NULL, 10);
            have_len = true;
        } else if (!strncasecmp(l + 2, "Connection: close", 17)) {
            a->close = true;
        }
    }
    c_take(c, head);
    if (!have_len) a->length = 0;   /* every answer of this server has a length */
    if (!check) {
        a->body = malloc(a->length + 1);
        if (!a->body) return 0;
    }
    uint64_t got = 0;
    bool good = true;
    while (got < a->length) {
        if (!c->blen) {
            if (slow_us) usleep((useconds_t)slow_us);
            if (c_fill(c, slow_piece) <= 0) return 0;
        }
        size_t n = c->blen < a->length - got ? c->blen : (size_t)(a->length - got);
        if (check) {
            if (good && !check(c, c->buf, n, got, arg)) good = false;
        } else {
            memcpy(a->body + got, c->buf, n);
        }
        got += n;
        c_take(c, n);
    }
    if (a->body) a->body[a->length] = 0;
    if (!good) a->status = -2;   /* the body was not what was asked for */
    return 1;
}

static void make_token(client *c, char *out, size_t len) {
    static const char al[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
    for (size_t i = 0; i + 1 < len; i++) out[i] = al[rnd(c) % (sizeof al - 1)];
    out[len - 1] = 0;
}

/* A request whose answer must be `want` (length want_len). */
static bool expect(client *c, int status, const char *want, size_t want_len) {
    answer a;
    if (!read_answer(c, &a, NULL, NULL, 0, 0)) {
        atomic_fetch_add(&c->L->lost[c->kind], 1);
        return false;
    }
    bool right = a.status == status && a.length == want_len && !memcmp(a.body, want, want_len);
    if (right) atomic_fetch_add(&c->L->ok[c->kind], 1);
    else note_wrong(c, "status %d, %llu bytes, want %d and %zu bytes; head began \"%s\"", a.status,
                    (unsigned long long)a.length, status, want_len, a.head);
    free(a.body);
    if (a.close) c_close(c, false);
    return right && !a.close;
}

static bool stopping(client *c) { return atomic_load(&c->L->stop); }

/* keep-alive (plain or TLS): GET and POST /echo, sometimes pipelined. */
static void run_keepalive(client *c, bool tls, int per_conn) {
    char *body = malloc(65536), req[2048];
    char toks[8][128];
    while (!stopping(c)) {
        if (!c_connect(c, tls)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);
            usleep(100000);
            continue;
        }
        for (int i = 0; (per_conn == 0 || i < per_conn) && !stopping(c) && c->fd >= 0; i++) {
            int np = rnd(c) % 8 == 0 ? 2 + (int)(rnd(c) % 7) : 1;
            if (np == 1 && rnd(c) % 2) {
                size_t blen = rnd(c) % 4 == 0 ? rnd(c) % 65536 : rnd(c) % 512;
                for (size_t k = 0; k < blen; k++) body[k] = (char)rnd(c);
                int hl = snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: %zu\r\n\r\n", blen);
                if (!c_write(c, req, (size_t)hl) || !c_write(c, body, blen)) {
                    atomic_fetch_add(&c->L->lost[c->kind], 1);
                    break;
                }
                if (!expect(c, 200, body, blen)) break;
                continue;
            }
            size_t rl = 0;
            for (int k = 0; k < np; k++) {
                make_token(c, toks[k], 2 + rnd(c) % 100);
                rl += (size_t)snprintf(req + rl, sizeof req - rl, "GET /echo?%s HTTP/1.1\r\nHost: soak\r\n\r\n", toks[k]);
            }
            if (!c_write(c, req, rl)) {
                atomic_fetch_add(&c->L->lost[c->kind], (unsigned long long)np);
                break;
            }
            int k = 0;
            for (; k < np; k++)
                if (!expect(c, 200, toks[k], strlen(toks[k]))) { k++; break; }
            if (k < np) {   /* the connection ended with answers owed */
                atomic_fetch_add(&c->L->lost[c->kind], (unsigned long long)(np - k));
                break;
            }
        }
        c_close(c, false);
    }
    free(body);
}

/* one request per connection */
static void run_newconn(client *c, bool tls) {
    char tok[64], req[256];
    while (!stopping(c)) {
        if (!c_connect(c, tls)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);
            usleep(100000);
            continue;
        }
        make_token(c, tok, 2 + rnd(c) % 60);
        int n = snprintf(req, sizeof req, "GET /echo?%s HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n", tok);
        if (!c_write(c, req, (size_t)n)) atomic_fetch_add(&c->L->lost[c->kind], 1);
        else expect(c, 200, tok, strlen(tok));
        c_close(c, false);
        usleep(2000);   /* ~400 connections/s at most: TIME_WAIT must not exhaust ports */
    }
}

static void run_pool(client *c) {
    char tok[64], req[256], want[32];
    while (!stopping(c)) {
        if (!c_connect(c, false)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);
            usleep(100000);
            continue;
        }
        while (!stopping(c) && c->fd >= 0) {
            make_token(c, tok, 8 + rnd(c) % 40);
            bool cpu = rnd(c) % 2;
            long n = cpu ? 1000 + (long)(rnd(c) % 4000) : 50;
            int rl = snprintf(req, sizeof req, "GET /%s?%ld&%s HTTP/1.1\r\nHost: soak\r\n\r\n", cpu ? "cpu" : "pool", n, tok);
            if (!c_write(c, req, (size_t)rl)) {
                atomic_fetch_add(&c->L->lost[c->kind], 1);
                break;
            }
            if (cpu) {
                snprintf(want, sizeof want, "%016llx", (unsigned long long)fnv_rounds(tok, strlen(tok), n));
                if (!expect(c, 200, want, 16)) break;
            } else if (!expect(c, 200, tok, strlen(tok))) {
                break;
            }
        }
        c_close(c, false);
    }
}

static bool check_pattern(client *c, const char *p, size_t n, uint64_t off, void *arg) {
    (void)c;
    (void)arg;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] != pattern_at(off + i)) return false;
    return true;
}

static void run_slow(client *c) {
    char req[128];
    while (!stopping(c)) {
        if (!c_connect(c, false)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);
            usleep(100000);
            continue;
        }
        while (!stopping(c) && c->fd >= 0) {
            uint64_t n = (512u << 10) + rnd(c) % (1536u << 10);
            int rl = snprintf(req, sizeof req, "GET /big?%llu HTTP/1.1\r\nHost: soak\r\n\r\n", (unsigned long long)n);
            answer a;
            if (!c_write(c, req, (size_t)rl) || !read_answer(c, &a, check_pattern, NULL, 8192, 10000)) {
                atomic_fetch_add(&c->L->lost[c->kind], 1);
                break;
            }
            if (a.status == 200 && a.length == n) atomic_fetch_add(&c->L->ok[c->kind], 1);
            else note_wrong(c, "/big?%llu: status %d, %llu bytes", (unsigned long long)n, a.status,
                            (unsigned long long)a.length);
        }
        c_close(c, false);
    }
}

/* Clients that go away: nothing to check but that the server stays well. */
static void run_vanish(client *c) {
    char req[256], tok[32];
    while (!stopping(c)) {
        int what = (int)(rnd(c) % 7);
        if (!c_tcp(c, what == 6)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);   /* the server refused a connection */
            usleep(100000);
            continue;
        }
        make_token(c, tok, 16);
        switch (what) {
        case 0: case 1:   /* half a head, then FIN or RST */
            c_write(c, "GET /echo?half HTTP/1.1\r\nHost: so", 33);
            usleep(1000);
            c_close(c, what == 1);
            break;
        case 2: {         /* a blocking job abandoned before its answer */
            int n = snprintf(req, sizeof req, "GET /pool?300&%s HTTP/1.1\r\nHost: soak\r\n\r\n", tok);
            c_write(c, req, (size_t)n);
            usleep(20000);
            c_close(c, rnd(c) % 2);
            break;
        }
        case 3: {         /* a big answer reset after 64 KiB */
            const char *r = "GET /big?8000000 HTTP/1.1\r\nHost: soak\r\n\r\n";
            c_write(c, r, strlen(r));
            size_t got = 0;
            while (got < 65536) {
                ssize_t k = c_fill(c, 0);
                if (k <= 0) break;
                got += (size_t)k;
                c->blen = 0;
            }
            c_close(c, true);
            break;
        }
        case 4: {         /* a body cut short */
            const char *r = "POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 100000\r\n\r\n";
            c_write(c, r, strlen(r));
            c_write(c, tok, strlen(tok));
            c_close(c, false);
            break;
        }
        case 5: {         /* a big answer never read, for 2 s */
            const char *r = "GET /big?4000000 HTTP/1.1\r\nHost: soak\r\n\r\n";
            c_write(c, r, strlen(r));
            for (int i = 0; i < 20 && !stopping(c); i++) usleep(100000);
            c_close(c, false);
            break;
        }
        case 6: {         /* a TLS handshake abandoned after the ClientHello */
            SSL *s = SSL_new(c->L->ssl);
            if (s) {
                SSL_set_fd(s, c->fd);
                fcntl(c->fd, F_SETFL, O_NONBLOCK);   /* the hello goes out, we do not wait */
                SSL_connect(s);
                ERR_clear_error();
                usleep(5000);
                SSL_free(s);
            }
            c_close(c, rnd(c) % 2);
            break;
        }
        }
        atomic_fetch_add(&c->L->done[c->kind], 1);
        usleep(20000);
    }
}

/* Malformed requests: an answer, if any, is an error status. */
static void run_garbage(client *c) {
    char req[24000];
    while (!stopping(c)) {
        int what = (int)(rnd(c) % 7);
        if (!c_tcp(c, what == 6)) {
            atomic_fetch_add(&c->L->lost[c->kind], 1);
            usleep(100000);
            continue;
        }
        if (what == 6) {   /* random bytes to the TLS port: an alert, then the server closes */
            size_t n = 16 + rnd(c) % 2000;
            for (size_t i = 0; i < n; i++) req[i] = (char)rnd(c);
            if (rnd(c) % 2) { req[0] = 0x16; req[1] = 3; req[2] = 1; }   /* looks like a handshake record */
            if (c_write(c, req, n)) {
                char sink[4096];
                while (recv(c->fd, sink, sizeof sink, 0) > 0) {}
            }
            atomic_fetch_add(&c->L->done[c->kind], 1);
            c_close(c, false);
            continue;
        }
        size_t n = 0;
        switch (what) {
        case 0:
            n = 1 + rnd(c) % 300;
            for (size_t i = 0; i < n; i++) req[i] = (char)(rnd(c) % 255 + 1);
            memcpy(req + n, "\r\n\r\n", 4);
            n += 4;
            break;
        case 1:
            n = (size_t)snprintf(req, sizeof req, "GET /echo HTTP/1.1\r\nHost: soak\r\nX-Long: ");
            memset(req + n, 'a', 20000);   /* over the 16 KiB head limit: 431 */
            n += 20000;
            memcpy(req + n, "\r\n\r\n", 4);
            n += 4;
            break;
        case 2:
            n = (size_t)snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: soak\r\nContent-Length: 5\r\n"
                                                  "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
            break;
        case 3:
            n = (size_t)snprintf(req, sizeof req, "POST /echo HTTP/1.1\r\nHost: soak\r\nTransfer-Encoding: chunked\r\n\r\n"
                                                  "zz\r\nhello\r\n0\r\n\r\n");
            break;
        case 4:
            n = (size_t)snprintf(req, sizeof req, "BREW /pool HTTP/1.1\r\nHost: soak\r\n\r\n");   /* 405 */
            break;
        default:
            n = (size_t)snprintf(req, sizeof req, "GET /echo?x HTTP/2.0\r\nHost: soak\r\n\r\n");
            break;
        }
        if (c_write(c, req, n)) {
            answer a;
            if (read_answer(c, &a, NULL, NULL, 0, 0)) {
                if (a.status >= 200 && a.status < 400) note_wrong(c, "malformed request %d answered %d", what, a.status);
                else atomic_fetch_add(&c->L->ok[c->kind], 1);
                free(a.body);
            } else {
                atomic_fetch_add(&c->L->done[c->kind], 1);   /* closed without an answer: allowed */
            }
        }
        c_close(c, false);
        usleep(10000);
    }
}

typedef struct thread_arg { client c; } thread_arg;
static void *client_main(void *arg) {
    client *c = &((thread_arg *)arg)->c;
    switch (c->kind) {
    case K_KEEPALIVE: run_keepalive(c, false, 0); break;
    case K_NEWCONN: run_newconn(c, false); break;
    case K_TLS_KEEP: run_keepalive(c, true, 20); break;
    case K_TLS_NEW: run_newconn(c, true); break;
    case K_POOL: run_pool(c); break;
    case K_SLOW: run_slow(c); break;
    case K_VANISH: run_vanish(c); break;
    case K_GARBAGE: run_garbage(c); break;
    }
    c_close(c, false);
    free(c->buf);
    return NULL;
}

/* ==== the sampler ==================================================================================== */
#define MAX_SAMPLES 4096
typedef struct sample {
    double t;                 /* s since the start */
    double rss_mib;
    int fds;
    long timers, conns, deferreds, queued, running;
    unsigned long long answered;   /* ok, all kinds, so far */
    int phase;                /* 0 idle baseline, 1 load, 2 after */
} sample;

typedef struct sampler {
    soak_load *L;
    pid_t pid;
    client c;                 /* its own keep-alive connection to /status */
    sample s[MAX_SAMPLES];
    int n;
    atomic_int phase;
    atomic_bool stop;
    uint64_t t0;
    bool server_gone;
} sampler;

static int count_fds(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

static long status_num(const char *body, const char *key) {
    const char *p = strstr(body, key);
    return p ? strtol(p + strlen(key) + 1, NULL, 10) : -1;
}

static void take_sample(sampler *sm) {
    if (sm->n == MAX_SAMPLES) return;
    sample *x = &sm->s[sm->n];
    memset(x, 0, sizeof *x);
    x->t = (double)(bench_now_ns() - sm->t0) / 1e9;
    x->phase = atomic_load(&sm->phase);
    x->rss_mib = (double)bench_rss_kib(sm->pid) / 1024.0;
    x->fds = count_fds(sm->pid);
    x->timers = x->conns = x->deferreds = x->queued = x->running = -1;
    if (sm->c.fd < 0) c_connect(&sm->c, false);
    const char *rq = "GET /status HTTP/1.1\r\nHost: soak\r\n\r\n";
    answer a;
    if (sm->c.fd >= 0 && c_write(&sm->c, rq, strlen(rq)) && read_answer(&sm->c, &a, NULL, NULL, 0, 0)) {
        x->timers = status_num(a.body, "timers");
        x->conns = status_num(a.body, "conns");
        x->deferreds = status_num(a.body, "deferreds");
        x->queued = status_num(a.body, "pool_queued");
        x->running = status_num(a.body, "pool_running");
        free(a.body);
    } else {
        c_close(&sm->c, false);
        sm->server_gone = x->fds < 0;
    }
    for (int k = 0; k < K_COUNT; k++) x->answered += atomic_load(&sm->L->ok[k]);
    sm->n++;
}

static void *sampler_main(void *arg) {
    sampler *sm = arg;
    uint64_t next = bench_now_ns();
    while (!atomic_load(&sm->stop)) {
        take_sample(sm);
        next += 1000000000ull;
        uint64_t now = bench_now_ns();
        if (next > now) usleep((useconds_t)((next - now) / 1000));
    }
    return NULL;
}

/* ==== the experiment ====================================================================================== */
static const int kind_threads[K_COUNT] = { 3, 1, 1, 1, 2, 1, 1, 1 };

static double median_of(const double *v, int n) { return n > 0 ? bench_median(v, n) : NAN; }

typedef struct outcome {
    double rss_warm, rss_end, growth_pct, rss_max;
    int fds_base, fds_peak, fds_after;
    long timers_base, timers_peak, timers_after, conns_base, conns_after, deferreds_after;
    double cooldown_s, load_s;
    unsigned long long ok, wrong, lost, done;
    bool server_died;
} outcome;

static void write_timeline(bench_ctx *ctx, const char *backend, const sampler *sm, const outcome *o) {
    char csv[1024], svg[1024], gp[1024];
    snprintf(csv, sizeof csv, "%s/soak_samples_%s.csv", ctx->out_dir, backend);
    FILE *f = fopen(csv, "w");
    if (!f) return;
    fprintf(f, "t_s,phase,rss_mib,fds,timers,conns,deferreds,pool_queued,pool_running,answers_per_s\n");
    for (int i = 0; i < sm->n; i++) {
        const sample *x = &sm->s[i];
        double rate = i ? (double)(x->answered - sm->s[i - 1].answered) / (x->t - sm->s[i - 1].t) : 0;
        fprintf(f, "%.2f,%d,%.2f,%d,%ld,%ld,%ld,%ld,%ld,%.1f\n", x->t, x->phase, x->rss_mib, x->fds, x->timers,
                x->conns, x->deferreds, x->queued, x->running, rate);
    }
    fclose(f);
    if (!bench_have_program("gnuplot")) return;
    snprintf(svg, sizeof svg, "%s/soak_timeline_%s.svg", ctx->out_dir, backend);
    snprintf(gp, sizeof gp, "%s/.soak.gp", ctx->out_dir);
    f = fopen(gp, "w");
    if (!f) return;
    double t1 = NAN, t2 = NAN;
    for (int i = 0; i < sm->n; i++) {
        if (sm->s[i].phase == 1 && isnan(t1)) t1 = sm->s[i].t;
        if (sm->s[i].phase == 2 && isnan(t2)) t2 = sm->s[i].t;
    }
    fprintf(f, "set terminal svg size 820,900 dynamic font 'sans,11' background rgb 'white'\n"
               "set output '%s'\nset datafile separator ','\nset grid\nset key off\n"
               "set multiplot layout 4,1 title \"soak (%s): the server over time; load from %.0f s to %.0f s; "
               "RSS growth after warm-up %+.2f %%\" noenhanced\n",
            svg, backend, t1, t2, o->growth_pct);
    if (isfinite(t1)) fprintf(f, "set arrow 1 from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb 'gray'\n", t1, t1);
    if (isfinite(t2)) fprintf(f, "set arrow 2 from %g, graph 0 to %g, graph 1 nohead dt 2 lc rgb 'gray'\n", t2, t2);
    fprintf(f, "set ylabel 'RSS (MiB)'\nset yrange [0:*]\nplot '%s' every ::1 using 1:3 with lines lw 2\n", csv);
    fprintf(f, "set ylabel 'open fds'\nplot '%s' every ::1 using 1:4 with lines lw 2\n", csv);
    fprintf(f, "set ylabel 'pending timers'\nplot '%s' every ::1 using 1:5 with lines lw 2\n", csv);
    fprintf(f, "set ylabel 'answers/s'\nset xlabel 'seconds'\nplot '%s' every ::2 using 1:10 with lines lw 2\n", csv);
    fprintf(f, "unset multiplot\n");
    fclose(f);
    char cmd[2100];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
    FILE *p = popen(cmd, "r");
    char line[512];
    while (p && fgets(line, sizeof line, p))
        if (strcasestr(line, "error")) fprintf(stderr, "gnuplot: %s", line);
    if (p) pclose(p);
    unlink(gp);
}

static int soak_one(bench_ctx *ctx, const char *backend, double load_s, double max_cool_s) {
    signal(SIGPIPE, SIG_IGN);
    soak_load *L = calloc(1, sizeof *L);
    sampler *sm = calloc(1, sizeof *sm);
    if (!L || !sm) return 1;
    pthread_mutex_init(&L->lock, NULL);
    L->port = bench_free_port();
    L->tls_port = bench_free_port();
    while (L->tls_port == L->port) L->tls_port = bench_free_port();
    char p1[16], p2[16];
    snprintf(p1, sizeof p1, "%d", L->port);
    snprintf(p2, sizeof p2, "%d", L->tls_port);
    char *argv[] = { (char *)ctx->self_exe, "serve", "soak", "--port", p1, "--tls-port", p2, "--backend",
                     (char *)backend, NULL };
    pid_t pid;
    if (posix_spawn(&pid, ctx->self_exe, NULL, NULL, argv, environ) != 0) return 1;
    if (!bench_wait_accepting(pid, L->port) || !bench_wait_accepting(pid, L->tls_port)) {
        bench_note(ctx, "soak (%s): the server did not start", backend);
        bench_stop_process(pid, SIGKILL, 1);
        free(L);
        free(sm);
        return 1;
    }
    L->ssl = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(L->ssl, SSL_VERIFY_NONE, NULL);   /* answers are checked, not the certificate */
    SSL_CTX_set_session_cache_mode(L->ssl, SSL_SESS_CACHE_OFF);

    sm->L = L;
    sm->pid = pid;
    sm->c = (client){ .L = L, .fd = -1, .rng = 1 };
    sm->t0 = bench_now_ns();
    pthread_t st;
    pthread_create(&st, NULL, sampler_main, sm);
    bench_progress(ctx, "%s: idle baseline", backend);
    usleep(3200000);

    /* the load */
    atomic_store(&sm->phase, 1);
    /* BRAID_BENCH_SOAK=kind,kind... runs only those clients (to isolate a failure) */
    int threads_of[K_COUNT];
    const char *only = getenv("BRAID_BENCH_SOAK");
    int nthreads = 0;
    for (int k = 0; k < K_COUNT; k++) {
        threads_of[k] = kind_threads[k];
        if (only && *only) {
            const char *p = strstr(only, kind_names[k]);
            size_t l = strlen(kind_names[k]);
            if (!p || (p != only && p[-1] != ',') || (p[l] && p[l] != ',')) threads_of[k] = 0;
        }
        nthreads += threads_of[k];
    }
    pthread_t *th = calloc((size_t)nthreads, sizeof *th);
    thread_arg *ta = calloc((size_t)nthreads, sizeof *ta);
    for (int k = 0, t = 0; k < K_COUNT; k++)
        for (int i = 0; i < threads_of[k]; i++, t++) {
            ta[t].c = (client){ .L = L, .kind = k, .fd = -1, .rng = 0x9E3779B97F4A7C15ull * (uint64_t)(t + 1) };
            pthread_create(&th[t], NULL, client_main, &ta[t]);
        }
    uint64_t load_start = bench_now_ns();
    for (;;) {
        double el = (double)(bench_now_ns() - load_start) / 1e9;
        if (el >= load_s) break;
        bench_progress(ctx, "%s: load %.0f/%.0f s, %llu answers", backend, el, load_s,
                       sm->n ? sm->s[sm->n - 1].answered : 0ull);
        bench_progress_fraction(ctx, el / (load_s + 10));
        usleep(250000);
    }
    atomic_store(&L->stop, true);
    for (int t = 0; t < nthreads; t++) pthread_join(th[t], NULL);
    double load_real = (double)(bench_now_ns() - load_start) / 1e9;
    atomic_store(&sm->phase, 2);

    /* after: wait for the baselines (descriptors, connections, timers) */
    outcome o = { .load_s = load_real };
    int base_n = 0;
    double base_fds[8];
    long tb = -1, cb = -1;
    for (int i = 0; i < sm->n && sm->s[i].phase == 0; i++) {
        if (sm->s[i].timers < 0) continue;   /* the first sample may precede the sampler's connection */
        base_fds[base_n < 8 ? base_n++ : 7] = sm->s[i].fds;
        tb = sm->s[i].timers;
        cb = sm->s[i].conns;
    }
    o.fds_base = base_n ? (int)base_fds[base_n - 1] : -1;
    o.timers_base = tb;
    o.conns_base = cb;
    uint64_t cool_start = bench_now_ns();
    int seen = sm->n;
    for (;;) {
        usleep(200000);
        double el = (double)(bench_now_ns() - cool_start) / 1e9;
        bench_progress(ctx, "%s: load stopped, waiting for the baselines (%.0f s)", backend, el);
        int n = sm->n;
        bool back = false;
        if (n > seen) {
            const sample *x = &sm->s[n - 1];
            /* at or under the idle values (a probe connection's timer may still be
             * pending in the baseline) */
            back = x->fds <= o.fds_base && x->conns <= o.conns_base && x->timers <= o.timers_base;
            seen = n;
        }
        if (back || el >= max_cool_s || sm->server_gone) break;
    }
    o.cooldown_s = (double)(bench_now_ns() - cool_start) / 1e9;
    usleep(1100000);   /* one more sample at rest */
    atomic_store(&sm->stop, true);
    pthread_join(st, NULL);
    int wst;
    o.server_died = waitpid(pid, &wst, WNOHANG) == pid;
    if (!o.server_died) bench_stop_process(pid, SIGTERM, 3);
    c_close(&sm->c, false);
    free(sm->c.buf);

    /* the figures */
    double *warm = calloc((size_t)sm->n + 1, sizeof *warm), *end = calloc((size_t)sm->n + 1, sizeof *end);
    int nw = 0, ne = 0, first_load = -1, last_load = -1;
    for (int i = 0; i < sm->n; i++)
        if (sm->s[i].phase == 1) {
            if (first_load < 0) first_load = i;
            last_load = i;
        }
    o.fds_peak = 0;
    o.timers_peak = 0;
    o.rss_max = 0;
    if (first_load >= 0) {
        int len = last_load - first_load + 1, wend = first_load + len / 3;
        for (int i = wend; i < wend + 10 && i <= last_load; i++) warm[nw++] = sm->s[i].rss_mib;
        for (int i = last_load; i > last_load - 10 && i >= wend; i--) end[ne++] = sm->s[i].rss_mib;
        for (int i = first_load; i <= last_load; i++) {
            if (sm->s[i].fds > o.fds_peak) o.fds_peak = sm->s[i].fds;
            if (sm->s[i].timers > o.timers_peak) o.timers_peak = sm->s[i].timers;
            if (sm->s[i].rss_mib > o.rss_max) o.rss_max = sm->s[i].rss_mib;
        }
    }
    o.rss_warm = median_of(warm, nw);
    o.rss_end = median_of(end, ne);
    o.growth_pct = (o.rss_end - o.rss_warm) / o.rss_warm * 100.0;
    const sample *last = sm->n ? &sm->s[sm->n - 1] : NULL;
    o.fds_after = last ? last->fds : -1;
    o.timers_after = last ? last->timers : -1;
    o.conns_after = last ? last->conns : -1;
    o.deferreds_after = last ? last->deferreds : -1;
    for (int k = 0; k < K_COUNT; k++) {
        o.ok += atomic_load(&L->ok[k]);
        o.wrong += atomic_load(&L->wrong[k]);
        o.lost += atomic_load(&L->lost[k]);
        o.done += atomic_load(&L->done[k]);
    }
    free(warm);
    free(end);

    bench_row *row = bench_row_begin(ctx, "braid", backend);
    bench_row_param_int(row, "load_s", (long long)llround(load_s));
    bench_row_param_int(row, "client_threads", nthreads);
#define M(name, v, unit) do { double x_ = (double)(v); bench_row_metric(row, name, &x_, 1, unit); } while (0)
    M("answers_ok", o.ok, "req");
    M("answers_wrong", o.wrong, "req");
    M("requests_lost", o.lost, "req");
    M("answers_per_s", (double)o.ok / load_real, "req/s");
    M("abandoned_or_refused", o.done, "req");
    M("rss_after_warmup", o.rss_warm, "MiB");
    M("rss_end_of_load", o.rss_end, "MiB");
    M("rss_growth", o.growth_pct, "%");
    M("rss_peak", o.rss_max, "MiB");
    M("fds_baseline", o.fds_base, "fds");
    M("fds_peak", o.fds_peak, "fds");
    M("fds_after", o.fds_after, "fds");
    M("timers_baseline", o.timers_base, "timers");
    M("timers_peak", o.timers_peak, "timers");
    M("timers_after", o.timers_after, "timers");
    M("deferreds_after", o.deferreds_after, "Deferreds");
    M("back_to_baseline", o.cooldown_s, "s");
#undef M
    bench_row_end(row);
    for (int k = 0; k < K_COUNT; k++)
        bench_note(ctx, "soak (%s) %s x%d: %llu ok, %llu wrong, %llu lost, %llu abandoned/refused by design", backend,
                   kind_names[k], threads_of[k], (unsigned long long)atomic_load(&L->ok[k]),
                   (unsigned long long)atomic_load(&L->wrong[k]), (unsigned long long)atomic_load(&L->lost[k]),
                   (unsigned long long)atomic_load(&L->done[k]));
    for (int i = 0; i < L->nwrong_msgs; i++) bench_note(ctx, "soak (%s) wrong answer: %s", backend, L->first_wrong[i]);
    if (o.server_died) bench_note(ctx, "soak (%s): THE SERVER DIED during the run", backend);
    bench_note(ctx, "soak (%s): %.0f s of load; RSS %.1f MiB after warm-up, %.1f MiB at the end (%+.2f %%), peak %.1f; "
                    "fds %d at rest, %d at peak, %d after (%.1f s after the load stopped); timers %ld / %ld / %ld",
               backend, load_real, o.rss_warm, o.rss_end, o.growth_pct, o.rss_max, o.fds_base, o.fds_peak,
               o.fds_after, o.cooldown_s, o.timers_base, o.timers_peak, o.timers_after);
    write_timeline(ctx, backend, sm, &o);
    SSL_CTX_free(L->ssl);
    pthread_mutex_destroy(&L->lock);
    free(th);
    free(ta);
    free(L);
    free(sm);
    return o.server_died ? 1 : 0;
}

static int run(bench_ctx *ctx) {
    double load = ctx->smoke ? 8 : ctx->full ? 600 : 180;
    double cool = ctx->smoke ? 20 : 40;
    int rc = 0, ran = 0;
    static const char *const want[] = { "epoll", "uring" };
    for (int w = 0; w < 2; w++)
        for (int i = 0; i < ctx->nbackends; i++)
            if (!strcmp(ctx->backends[i], want[w])) {
                rc |= soak_one(ctx, want[w], load, cool);
                ran++;
            }
    if (!ran) rc |= soak_one(ctx, ctx->nbackends ? ctx->backends[0] : "epoll", load, cool);
    bench_note(ctx, "client threads and the server share the machine's 2 cores (unpinned); the load is closed-loop, "
                    "so its rate is whatever the pair reaches, not a target");
    return rc;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    for (int i = 0; i < bench_nrows(ctx); i++) {
        const bench_row *r = bench_get_row(ctx, i);
        const char *b = bench_row_backend(r);
        double ok = 0, wrong = 0, lost = 0, growth = 0, fb = 0, fa = 0, tb = 0, ta = 0, secs = 0;
        bench_row_metric_get(r, "answers_ok", &ok, NULL, NULL);
        bench_row_metric_get(r, "answers_wrong", &wrong, NULL, NULL);
        bench_row_metric_get(r, "requests_lost", &lost, NULL, NULL);
        bench_row_metric_get(r, "rss_growth", &growth, NULL, NULL);
        bench_row_metric_get(r, "fds_baseline", &fb, NULL, NULL);
        bench_row_metric_get(r, "fds_after", &fa, NULL, NULL);
        bench_row_metric_get(r, "timers_baseline", &tb, NULL, NULL);
        bench_row_metric_get(r, "timers_after", &ta, NULL, NULL);
        bench_row_param_num(r, "load_s", &secs);
        fprintf(html, "<p><b>%s</b>, %.0f s of load: %.0f answers right, %.0f wrong, %.0f requests lost "
                      "(target 0 and 0: %s); RSS growth after warm-up %+.2f %% (target &le; 1 %%: %s); descriptors "
                      "%.0f after the load against %.0f at rest (%s); pending timers %.0f against %.0f.</p>\n",
                b, secs, ok, wrong, lost, wrong == 0 && lost == 0 ? "met" : "NOT MET", growth,
                growth <= 1.0 ? "met" : "NOT MET", fa, fb, fa == fb ? "back to baseline" : "NOT back to baseline",
                ta, tb);
        fprintf(html, "<figure><img src=\"soak_timeline_%s.svg\" alt=\"soak timeline, %s\"><figcaption>RSS, open "
                      "descriptors, pending timers and answers per second, sampled every second "
                      "(<a href=\"soak_samples_%s.csv\">samples</a>)</figcaption></figure>\n",
                b, b, b);
    }
}

BENCH_EXPERIMENT(soak,
    .title = "Soak: the HTTP server under minutes of mixed load",
    .question = "Does braid's HTTP server hold up under minutes of mixed, partly hostile load — keep-alive and new "
                "connections, TLS, blocking pool work, slow readers, clients that vanish mid-request, garbage — "
                "without losing or garbling a request, growing its memory, or leaking descriptors or timers?",
    .method = "`braid-bench serve soak` (plain and TLS ports, a pool of 8) under 11 client threads of braid-bench "
              "(plain sockets and OpenSSL, every answer checked); every second the server's RSS and descriptors "
              "from /proc and its timers, connections and live Deferreds from a /status route. Idle baseline 3 s, "
              "load (180 s; --full 600 s; --smoke 8 s), then up to 40 s for the baselines to return. RSS growth: "
              "median of the last 10 samples of the load against the median of 10 samples after warm-up (the "
              "first third). Not in the default set: run it by name.",
    .run = run, .serve = serve, .conclude = conclude, .quick_seconds = 440, .full_seconds = 1330, .order = 900,
    .headline = "rss_growth,requests_lost,answers_wrong", .explicit_only = true);
