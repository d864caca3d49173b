/* The HTTP server: unit cases over the memory transport (fake clock for the
 * timeouts), smuggling shapes, static files, and integration cases on real
 * loopback sockets on every backend. */
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include "support/walk.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

/* braid_http_response_new as an expression: the response, or NULL. */
static braid_http_response *response(int status, const char *type, const void *body, size_t len) {
    braid_http_response *r = NULL;
    return braid_http_response_new(status, type, body, len, &r) < 0 ? NULL : r;
}

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state out;
    braid_memory_transport_state(m, &out);
    return out;
}

/* ---- fixtures ---------------------------------------------------------------------- */
typedef struct fx {
    braid_fake_clock *clock;
    braid_loop *loop;
    braid_http_server *s;
    braid_memory_transport *m;
} fx;

static int hits;

static braid_deferred *h_hello(braid_http_request *req, void *arg) {
    (void)arg;
    hits++;
    braid_http_request_respond(req, 200, "text/plain", "Hello, World!", 13);
    return NULL;
}

/* echoes "<method> <path> q=<query> m=<match_len> body=<body>" */
static braid_deferred *h_echo(braid_http_request *req, void *arg) {
    char out[4096];
    int n = snprintf(out, sizeof out, "%s %.*s %.*s q=%.*s m=%zu body=%.*s", arg ? (const char *)arg : "-",
                     (int)req->method_len, req->method, (int)req->path_len, req->path,
                     (int)req->query_len, req->query ? req->query : "", req->match_len,
                     (int)req->body_len, req->body ? req->body : "");
    braid_http_request_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

static void fx_init(fx *f, const braid_http_server_options *o) {
    memset(f, 0, sizeof *f);
    braid_fake_clock_new(BRAID_SECONDS(1000), &f->clock);
    f->loop = bt_loop_new(braid_fake_clock_base(f->clock));
    BT_OK(braid_http_server_new(f->loop, o, &f->s));
}

static braid_memory_transport *fx_conn(fx *f) {
    braid_protocol *p = braid_factory_build(braid_http_server_factory(f->s), NULL);
    BT_TRUE(p != NULL);
    braid_memory_transport_new(f->loop, p, &f->m);
    BT_TRUE(f->m != NULL);
    return f->m;
}

static void feed(fx *f, const char *s) {
    BT_OK(braid_memory_transport_receive(f->m, s, strlen(s)));
    bt_spin(f->loop, 4);
}

/* Everything written so far, consumed, as a NUL-terminated string (static). */
static const char *take(fx *f) {
    static char buf[1 << 20];
    size_t n;
    const void *d = braid_memory_transport_data(f->m, &n);
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, d, n);
    buf[n] = 0;
    braid_memory_transport_consume(f->m, n);
    bt_spin(f->loop, 4);
    return buf;
}

/* The server is done answering: closed, closing, or lingering (write side shut). */
static bool closed(fx *f) {
    struct braid_memory_transport_state st = mstate(f->m);
    return st.closed || st.disconnecting || st.write_shut;
}

/* A lingering close: the answer was read (take), the write side is shut and
 * the server still reads (and drops) input; the client's FIN ends it. */
static void expect_linger_close(fx *f) {
    struct braid_memory_transport_state st = mstate(f->m);
    BT_TRUE(st.write_shut);
    BT_FALSE(st.closed);
    BT_FALSE(st.reading_paused);
    BT_OK(braid_memory_transport_receive(f->m, "more input", 10));   /* dropped */
    bt_spin(f->loop, 4);
    BT_STREQ(take(f), "");
    braid_memory_transport_peer_eof(f->m);
    bt_spin(f->loop, 4);
    st = mstate(f->m);
    BT_TRUE(st.closed);
    BT_FALSE(st.aborted);
}

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void fx_done(fx *f) {
    if (f->m) braid_memory_transport_free(f->m);
    bt_spin(f->loop, 4);
    BT_OK(braid_http_server_free(f->s));
    bt_loop_destroy(f->loop);
    braid_fake_clock_free(f->clock);
}

/* ---- basics ------------------------------------------------------------------------- */
BT_TEST(get_keepalive_date) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 200 OK\r\n", 17));
    BT_TRUE(strstr(o, "\r\nContent-Length: 13\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\nContent-Type: text/plain\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\nDate: ") != NULL);
    BT_TRUE(strstr(o, "GMT\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\n\r\nHello, World!") != NULL);
    BT_TRUE(strstr(o, "Connection: close") == NULL);
    BT_FALSE(closed(&f));
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_EQ(count(take(&f), "Hello, World!"), 1);
    BT_EQ(braid_http_server_requests(f.s), 2);
    BT_EQ(braid_http_server_connections(f.s), 1);
    fx_done(&f);
}

BT_TEST(pipelined_in_order_and_split) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_echo, NULL));
    fx_conn(&f);
    feed(&f, "GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\nGET /3 HTT");
    const char *o = take(&f);
    const char *a = strstr(o, "GET /1"), *b = strstr(o, "GET /2");
    BT_TRUE(a && b && a < b);
    BT_TRUE(strstr(o, "/3") == NULL);
    feed(&f, "P/1.1\r\nHost: a\r\n\r\n");
    BT_TRUE(strstr(take(&f), "GET /3") != NULL);
    /* byte by byte */
    const char *req = "POST /4?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
    for (size_t i = 0; req[i]; i++) BT_OK(braid_memory_transport_receive(f.m, req + i, 1));
    bt_spin(f.loop, 4);
    BT_TRUE(strstr(take(&f), "POST /4 q=x=1 m=1 body=hello") != NULL);
    fx_done(&f);
}

BT_TEST(head_and_http10) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(strstr(o, "Content-Length: 13\r\n") != NULL);
    BT_TRUE(strstr(o, "Hello") == NULL);
    feed(&f, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    o = take(&f);
    BT_TRUE(strstr(o, "Connection: keep-alive\r\n") != NULL);
    BT_FALSE(closed(&f));
    feed(&f, "GET / HTTP/1.0\r\n\r\n");
    o = take(&f);
    BT_TRUE(strstr(o, "Connection: close\r\n") != NULL);
    BT_TRUE(strstr(o, "Hello, World!") != NULL);
    BT_TRUE(closed(&f));
    fx_done(&f);
}

BT_TEST(routing_404_405_prefix_exact) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/a", 0, h_echo, "exact"));
    BT_OK(braid_http_server_route(f.s, "POST", "/a", 0, h_echo, "post"));
    BT_OK(braid_http_server_route(f.s, "GET", "/a/", BRAID_HTTP_ROUTE_PREFIX, h_echo, "pfx"));
    BT_OK(braid_http_server_route(f.s, "GET", "/a/b/", BRAID_HTTP_ROUTE_PREFIX, h_echo, "longer"));
    BT_ERR(braid_http_server_route(f.s, "GET", "/a", 0, h_echo, NULL), BRAID_EEXIST);
    BT_ERR(braid_http_server_route(f.s, "GET", "a", 0, h_echo, NULL), BRAID_EINVAL);
    BT_ERR(braid_http_server_route(f.s, "G T", "/x", 0, h_echo, NULL), BRAID_EINVAL);
    fx_conn(&f);
    feed(&f, "GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_TRUE(strstr(take(&f), "exact GET /a") != NULL);
    feed(&f, "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    BT_TRUE(strstr(take(&f), "post POST /a") != NULL);
    feed(&f, "GET /a/x HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_TRUE(strstr(take(&f), "pfx GET /a/x q= m=3") != NULL);
    feed(&f, "GET /a/b/c HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_TRUE(strstr(take(&f), "longer GET /a/b/c q= m=5") != NULL);
    feed(&f, "GET /zzz HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 404 Not Found\r\n", 24));
    feed(&f, "DELETE /a HTTP/1.1\r\nHost: a\r\n\r\n");
    o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 405 Method Not Allowed\r\n", 33));
    BT_TRUE(strstr(o, "\r\nAllow: GET, POST, HEAD\r\n") != NULL);
    BT_FALSE(closed(&f));                           /* misses keep the connection */
    feed(&f, "HEAD /a/x HTTP/1.1\r\nHost: a\r\n\r\n");   /* HEAD runs the GET route */
    o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 200 OK", 15));
    BT_TRUE(strstr(o, "pfx") == NULL);
    fx_done(&f);
}

BT_TEST(pipelined_flood_bounded_by_drain) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    enum { N = 3000 };
    static const char one[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    static char flood[N * (sizeof one - 1) + 1];
    for (int i = 0; i < N; i++) memcpy(flood + i * (sizeof one - 1), one, sizeof one - 1);
    hits = 0;
    BT_OK(braid_memory_transport_receive(f.m, flood, N * (sizeof one - 1)));
    bt_spin(f.loop, 4);
    /* the peer reads nothing: parsing stopped near the 64 KiB mark */
    BT_LT(hits, N);
    BT_ULE(braid_transport_buffered(braid_memory_transport_base(f.m)), 80 * 1024);
    BT_TRUE(mstate(f.m).reading_paused);
    int answers = 0;
    for (int i = 0; i < 1000 && answers < N; i++) answers += count(take(&f), "Hello, World!");
    BT_EQ(answers, N);
    BT_EQ(hits, N);
    BT_FALSE(closed(&f));
    fx_done(&f);
}

/* ---- bodies --------------------------------------------------------------------------- */
BT_TEST(chunked_request_body) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "POST", "/", BRAID_HTTP_ROUTE_PREFIX, h_echo, NULL));
    fx_conn(&f);
    feed(&f, "POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel");
    BT_STREQ(take(&f), "");
    feed(&f, "lo\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(strstr(o, "POST /c q= m=1 body=hello world") != NULL);
    BT_TRUE(!strncmp(strstr(o, "body=hello world") + 16, "HTTP/1.1 405", 12));   /* GET /next: POST only */
    fx_done(&f);
}

BT_TEST(expect_100_continue) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "PUT", "/up", 0, h_echo, NULL));
    fx_conn(&f);
    feed(&f, "PUT /up HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    BT_STREQ(take(&f), "HTTP/1.1 100 Continue\r\n\r\n");
    feed(&f, "abc");
    const char *o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 200 OK", 15));
    BT_TRUE(strstr(o, "body=abc") != NULL);
    /* no route: answered at once without asking for the body, then closed */
    feed(&f, "PUT /nope HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n");
    o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 404", 12));
    BT_TRUE(strstr(o, "100 Continue") == NULL);
    BT_TRUE(closed(&f));
    fx_done(&f);
}

/* ---- smuggling and limits ---------------------------------------------------------------- */
static void expect_rejected(const char *req, const char *status) {
    fx f;
    braid_http_server_options o = { .limits = { .max_body = 1000, .max_head = 2048 } };
    fx_init(&f, &o);
    hits = 0;
    BT_OK(braid_http_server_route(f.s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_hello, NULL));
    fx_conn(&f);
    feed(&f, req);
    const char *out = take(&f);
    if (strncmp(out, status, strlen(status)))
        bt_fail(__FILE__, __LINE__, "request %s\n answered %s, want %s", req, out, status);
    BT_TRUE(strstr(out, "Connection: close\r\n") != NULL);
    BT_EQ(count(out, "HTTP/1.1"), 1);             /* the smuggled request is never answered */
    BT_EQ(hits, 0);
    expect_linger_close(&f);
    fx_done(&f);
}

BT_TEST(smuggling_rejected) {
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n", "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
                    "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 5\r\n\r\nabcde", "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
                    "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nab\r\n0\r\n\r\n",
                    "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n", "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", "HTTP/1.1 400");
    expect_rejected("GET / HTTP/1.1\nHost: a\r\n\r\n", "HTTP/1.1 400");                 /* bare LF */
    expect_rejected("GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n", "HTTP/1.1 400");          /* bare CR */
    expect_rejected("GET / HTTP/1.1\r\nHost: a\r\nX: y\r\n z\r\n\r\n", "HTTP/1.1 400");   /* obs-fold */
    expect_rejected("GET / HTTP/1.1\r\n\r\n", "HTTP/1.1 400");                           /* no Host */
    expect_rejected("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "HTTP/1.1 400");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n", "HTTP/1.1 413");
    expect_rejected("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "3e9\r\n", "HTTP/1.1 413");
    expect_rejected("GET / HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP/1.1 505");
    char big[4096];
    snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: a\r\nX: %03000d\r\n\r\n", 0);
    expect_rejected(big, "HTTP/1.1 431");
}

BT_TEST(oversized_head_in_pieces_431) {
    fx f;
    braid_http_server_options o = { .limits = { .max_head = 1024 } };
    fx_init(&f, &o);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 0; i < 40 && !closed(&f); i++) feed(&f, "X-Filler: 0123456789012345678901234567890\r\n");
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 431", 12));
    BT_TRUE(closed(&f));
    fx_done(&f);
}

/* ---- timeouts (fake clock) --------------------------------------------------------------- */
BT_TEST(slowloris_header_timeout) {
    fx f;
    braid_http_server_options o = { .header_timeout = BRAID_SECONDS(10) };
    fx_init(&f, &o);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\n");
    /* one byte every 3 s: progress does not extend the deadline */
    const char *drip = "Host: aaaa";
    for (int i = 0; i < 3; i++) {
        BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(3)));
        char b[2] = { drip[i], 0 };
        feed(&f, b);
        BT_FALSE(closed(&f));
    }
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(2)));
    bt_spin(f.loop, 4);
    const char *out = take(&f);
    BT_TRUE(!strncmp(out, "HTTP/1.1 408", 12));
    expect_linger_close(&f);
    fx_done(&f);
}

/* BRAID_FOREVER disables a phase's limit (the options convention); it
 * used to be added to the clock, wrap around, and fire at once. */
BT_TEST(forever_timeouts_never_fire) {
    fx f;
    braid_http_server_options o = { .header_timeout = BRAID_FOREVER, .body_timeout = BRAID_FOREVER,
                                    .idle_timeout = BRAID_FOREVER };
    fx_init(&f, &o);
    BT_OK(braid_http_server_route(f.s, "POST", "/", 0, h_echo, NULL));
    fx_conn(&f);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(86400)));          /* idle before the first byte */
    bt_spin(f.loop, 4);
    BT_FALSE(closed(&f));
    feed(&f, "POST / HTTP/1.1\r\n");                                  /* a head that stalls */
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(86400)));
    bt_spin(f.loop, 4);
    BT_FALSE(closed(&f));
    feed(&f, "Host: a\r\nContent-Length: 4\r\n\r\nab");               /* a body that stalls */
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(86400)));
    bt_spin(f.loop, 4);
    BT_FALSE(closed(&f));
    feed(&f, "cd");
    BT_TRUE(strstr(take(&f), "body=abcd") != NULL);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(86400)));          /* idle keep-alive */
    bt_spin(f.loop, 4);
    BT_FALSE(closed(&f));
    BT_EQ(braid_loop_timer_count(f.loop), 0);
    fx_done(&f);
}

BT_TEST(body_and_idle_timeouts) {
    fx f;
    braid_http_server_options o = { .body_timeout = BRAID_SECONDS(5), .idle_timeout = BRAID_SECONDS(7) };
    fx_init(&f, &o);
    BT_OK(braid_http_server_route(f.s, "POST", "/", 0, h_echo, NULL));
    fx_conn(&f);
    feed(&f, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(4)));
    BT_FALSE(closed(&f));
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(2)));
    bt_spin(f.loop, 4);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 408", 12));
    expect_linger_close(&f);
    braid_memory_transport_free(f.m);
    /* idle: closed quietly after idle_timeout since the last answer */
    fx_conn(&f);
    feed(&f, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok");
    BT_TRUE(strstr(take(&f), "body=ok") != NULL);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(6)));
    feed(&f, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok");  /* resets idle */
    take(&f);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(6)));
    BT_FALSE(closed(&f));
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(2)));
    bt_spin(f.loop, 4);
    BT_STREQ(take(&f), "");
    BT_TRUE(mstate(f.m).closed);
    fx_done(&f);
}

/* Deadlines start from the clock when the bytes arrive, not from the loop's
 * cached time of its last timer phase (stale by however long it slept). */
BT_TEST(deadline_from_fresh_clock_after_long_sleep) {
    fx f;
    braid_http_server_options o = { .idle_timeout = BRAID_SECONDS(15) };
    fx_init(&f, &o);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    take(&f);
    braid_fake_clock_advance(f.clock, BRAID_SECONDS(10));   /* the loop "slept" 10 s */
    BT_OK(braid_memory_transport_receive(f.m, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 27));
    BT_TRUE(strstr(take(&f), "Hello, World!") != NULL);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(6)));    /* 16 s after the first, 6 after the second */
    BT_FALSE(closed(&f));
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(10)));
    BT_TRUE(mstate(f.m).closed);
    fx_done(&f);
}

/* ---- asynchronous answers ------------------------------------------------------------------ */
static braid_deferred *pending_d;
static braid_deferred *h_later(braid_http_request *req, void *arg) {
    (void)req;
    braid_loop *loop = arg;
    pending_d = braid_deferred_new(loop);
    return pending_d;
}

BT_TEST(deferred_answer_keeps_order) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/slow", 0, h_later, f.loop));
    BT_OK(braid_http_server_route(f.s, "GET", "/fast", 0, h_echo, NULL));
    fx_conn(&f);
    feed(&f, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\nGET /fast HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_STREQ(take(&f), "");                         /* /fast waits behind /slow */
    braid_http_response *r = response(201, "text/plain", "later", 5);
    BT_OK(braid_http_response_add_header(r, "X-Slow", "1"));
    BT_ERR(braid_http_response_add_header(r, "X-Bad", "a\r\nInjected: 1"), BRAID_EINVAL);
    BT_OK(braid_deferred_callback(pending_d, r, braid_http_response_free));
    bt_spin(f.loop, 4);
    const char *o = take(&f);
    const char *a = strstr(o, "HTTP/1.1 201 Created"), *b = strstr(o, "/fast");
    BT_TRUE(a && b && a < b);
    BT_TRUE(strstr(o, "X-Slow: 1\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\n\r\nlater") != NULL);
    /* a failure becomes 500, the connection stays */
    feed(&f, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_OK(braid_deferred_errback(pending_d, braid_failure_new(BRAID_EINVAL, "db down")));
    bt_spin(f.loop, 4);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 500", 12));
    BT_FALSE(closed(&f));
    fx_done(&f);
}

/* work on a pool: the handler returns the pool's Deferred, whose value is the response */
static braid_result pool_work(void *arg) {
    (void)arg;
    char body[32];
    int n = snprintf(body, sizeof body, "computed %d", 6 * 7);
    return braid_result_ok_owned(response(200, "text/plain", body, (size_t)n),
                          braid_http_response_free);
}
typedef struct pool_ctx { braid_loop *loop; braid_pool *pool; } pool_ctx;
static braid_deferred *h_pool(braid_http_request *req, void *arg) {
    (void)req;
    pool_ctx *pc = arg;
    return braid_pool_defer(pc->loop, pc->pool, pool_work, NULL);
}

BT_TEST(handler_runs_work_on_a_pool) {
    fx f;
    fx_init(&f, NULL);
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .flags = BRAID_POOL_MEMORY }, &pool));
    pool_ctx pc = { f.loop, pool };
    BT_OK(braid_http_server_route(f.s, "GET", "/work", 0, h_pool, &pc));
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET /work HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_STREQ(take(&f), "");                        /* the loop is free; the answer waits for the pool */
    BT_EQ(braid_pool_step(pool), 1);                /* the worker runs the job */
    bt_spin(f.loop, 4);
    const char *o = take(&f);
    const char *a = strstr(o, "computed 42"), *b = strstr(o, "Hello, World!");
    BT_TRUE(a && b && a < b);
    braid_pool_free(pool);
    fx_done(&f);
}

static bool cancelled;
static void on_cancel(braid_deferred *d, void *arg) { (void)d; (void)arg; cancelled = true; }
static braid_deferred *h_forever(braid_http_request *req, void *arg) {
    (void)req;
    return braid_deferred_new_cancellable(arg, on_cancel, NULL);
}

BT_TEST(deferred_cancelled_when_connection_lost) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_forever, f.loop));
    fx_conn(&f);
    cancelled = false;
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_FALSE(cancelled);
    braid_memory_transport_peer_lost(f.m, BRAID_ECONNRESET);
    bt_spin(f.loop, 4);
    BT_TRUE(cancelled);
    BT_EQ(braid_http_server_connections(f.s), 0);
    fx_done(&f);
}

/* streaming: a push producer writes 8 KiB pieces until paused */
typedef struct streamer {
    braid_producer p;
    braid_http_request *req;
    bool paused, stopped;
    int sent, total, pauses;
} streamer;
static streamer st;
static void st_pump(streamer *s) {
    static char piece[8192];
    memset(piece, 'x', sizeof piece);
    while (!s->paused && !s->stopped && s->sent < s->total) {
        s->sent++;
        BT_OK(braid_http_request_write(s->req, piece, sizeof piece));
    }
    if (s->sent == s->total && !s->stopped) {
        BT_OK(braid_http_request_finish(s->req));
        s->stopped = true;
    }
}
static void st_pause(braid_producer *p) { streamer *s = p->arg; s->paused = true; s->pauses++; }
static void st_resume(braid_producer *p) { streamer *s = p->arg; s->paused = false; st_pump(s); }
static void st_stop(braid_producer *p) { streamer *s = p->arg; if (!s->stopped) { s->stopped = true; braid_http_request_finish(s->req); } }

static braid_deferred *h_stream(braid_http_request *req, void *arg) {
    (void)arg;
    memset(&st, 0, sizeof st);
    st.req = req;
    st.total = 32;                                 /* 256 KiB, past the 64 KiB watermark */
    st.p = (braid_producer){ st_pause, st_resume, st_stop, &st };
    BT_OK(braid_http_request_respond_start(req, 200, "application/octet-stream", -1));
    BT_OK(braid_http_request_register_producer(req, &st.p, true));
    st_pump(&st);
    return NULL;
}

BT_TEST(streamed_chunked_with_backpressure) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/s", 0, h_stream, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET /s HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n");
    BT_TRUE(st.paused);                            /* the memory peer has not read */
    BT_LT(st.sent, st.total);
    /* read everything, piece by piece, and decode the chunked body */
    static char all[1 << 20];
    size_t have = 0;
    for (int i = 0; i < 200; i++) {
        size_t n;
        const void *d = braid_memory_transport_data(f.m, &n);
        if (!n) break;
        memcpy(all + have, d, n);
        have += n;
        braid_memory_transport_consume(f.m, n);
        bt_spin(f.loop, 4);
    }
    all[have] = 0;
    BT_TRUE(st.stopped);
    BT_GT(st.pauses, 0);
    BT_TRUE(strstr(all, "Transfer-Encoding: chunked\r\n") != NULL);
    char *body = strstr(all, "\r\n\r\n") + 4;
    char *hello = strstr(body, "HTTP/1.1 200 OK");
    BT_TRUE(hello != NULL);                        /* the pipelined request after the stream */
    braid_http_chunked dec;
    braid_http_chunked_init(&dec, 0);
    size_t out;
    ssize_t r = braid_http_chunked_decode(&dec, body, (size_t)(hello - body), &out);
    BT_EQ(r, hello - body);
    BT_EQ(out, 32 * 8192);
    fx_done(&f);
}

static braid_deferred *h_short(braid_http_request *req, void *arg) {
    (void)arg;
    BT_OK(braid_http_request_respond_start(req, 200, NULL, 10));
    BT_ERR(braid_http_request_write(req, "01234567890", 11), BRAID_EMSGSIZE);
    BT_OK(braid_http_request_write(req, "0123", 4));
    BT_OK(braid_http_request_finish(req));                 /* 6 bytes short: the connection must close */
    return NULL;
}

BT_TEST(streamed_content_length_short_closes) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_short, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(strstr(o, "Content-Length: 10\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\n\r\n0123") != NULL);
    BT_TRUE(mstate(f.m).closed);
    fx_done(&f);
}

static braid_deferred *h_headers(braid_http_request *req, void *arg) {
    (void)arg;
    BT_ERR(braid_http_request_add_header(req, "X-A", "v\r\nSet-Cookie: evil=1"), BRAID_EINVAL);
    BT_ERR(braid_http_request_add_header(req, "X A", "v"), BRAID_EINVAL);
    BT_OK(braid_http_request_add_header(req, "X-A", "v"));
    BT_OK(braid_http_request_respond(req, 200, NULL, "", 0));
    BT_ERR(braid_http_request_respond(req, 200, NULL, "", 0), BRAID_EALREADY_CALLED);
    return NULL;
}

static braid_deferred *h_silent(braid_http_request *req, void *arg) {
    (void)req;
    (void)arg;
    return NULL;
}

BT_TEST(headers_validated_and_misuse) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/h", 0, h_headers, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/silent", 0, h_silent, NULL));
    fx_conn(&f);
    feed(&f, "GET /h HTTP/1.1\r\nHost: a\r\n\r\n");
    const char *o = take(&f);
    BT_TRUE(strstr(o, "\r\nX-A: v\r\n") != NULL);
    BT_TRUE(strstr(o, "evil") == NULL);
    feed(&f, "GET /silent HTTP/1.1\r\nHost: a\r\n\r\n");      /* no answer: 500 */
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 500", 12));
    fx_done(&f);
}

BT_TEST(shutdown_closes_idle) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    feed(&f, "GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    take(&f);
    BT_ERR(braid_http_server_free(f.s), BRAID_EBUSY);
    braid_http_server_shutdown(f.s);
    bt_spin(f.loop, 4);
    BT_TRUE(mstate(f.m).closed);
    BT_EQ(braid_http_server_connections(f.s), 0);
    fx_done(&f);
}

/* ---- static files ---------------------------------------------------------------------------- */
static char tmpdir[256];

static void write_file(const char *rel, const char *data, size_t n) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", tmpdir, rel);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    BT_TRUE(fd >= 0);
    BT_EQ(write(fd, data, n), (ssize_t)n);
    close(fd);
}

static void make_tree(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/braid-http-test-XXXXXX");
    BT_TRUE(mkdtemp(tmpdir) != NULL);
    char p[512];
    snprintf(p, sizeof p, "%s/root", tmpdir);
    BT_OK(mkdir(p, 0755));
    snprintf(p, sizeof p, "%s/root/sub", tmpdir);
    BT_OK(mkdir(p, 0755));
    write_file("secret.txt", "TOPSECRET", 9);
    write_file("root/a.txt", "0123456789", 10);
    write_file("root/sub/index.html", "<p>index</p>", 12);
    char target[512];
    snprintf(p, sizeof p, "%s/root/escape.txt", tmpdir);
    snprintf(target, sizeof target, "%s/secret.txt", tmpdir);
    BT_OK(symlink(target, p));
    snprintf(p, sizeof p, "%s/root/inside.txt", tmpdir);
    BT_OK(symlink("a.txt", p));
}

static void rm_tree(void) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    BT_EQ(system(cmd), 0);
}

static const char *get(fx *f, const char *target, const char *extra) {
    char req[1024];
    snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: a\r\n%s\r\n", target, extra ? extra : "");
    feed(f, req);
    return take(f);
}

BT_TEST(static_files_ranges_and_escapes) {
    make_tree();
    fx f;
    fx_init(&f, NULL);
    char root[512];
    snprintf(root, sizeof root, "%s/root", tmpdir);
    BT_OK(braid_http_server_static(f.s, "/files/", root));
    fx_conn(&f);
    const char *o = get(&f, "/files/a.txt", NULL);
    BT_TRUE(!strncmp(o, "HTTP/1.1 200 OK", 15));
    BT_TRUE(strstr(o, "Content-Type: text/plain; charset=utf-8\r\n") != NULL);
    BT_TRUE(strstr(o, "Content-Length: 10\r\n") != NULL);
    BT_TRUE(strstr(o, "Accept-Ranges: bytes\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\n\r\n0123456789") != NULL);
    char lm[64];
    const char *l = strstr(o, "Last-Modified: ");
    BT_TRUE(l != NULL);
    snprintf(lm, sizeof lm, "If-Modified-Since: %.29s\r\n", l + 15);
    o = get(&f, "/files/a.txt", lm);
    BT_TRUE(!strncmp(o, "HTTP/1.1 304 Not Modified", 25));
    BT_TRUE(strstr(o, "0123") == NULL);
    o = get(&f, "/files/a.txt", "If-Modified-Since: Thu, 01 Jan 1970 00:00:00 GMT\r\n");
    BT_TRUE(!strncmp(o, "HTTP/1.1 200", 12));
    o = get(&f, "/files/a.txt", "Range: bytes=2-4\r\n");
    BT_TRUE(!strncmp(o, "HTTP/1.1 206 Partial Content", 28));
    BT_TRUE(strstr(o, "Content-Range: bytes 2-4/10\r\n") != NULL);
    BT_TRUE(strstr(o, "\r\n\r\n234") != NULL && strstr(o, "2345") == NULL);
    o = get(&f, "/files/a.txt", "Range: bytes=-3\r\n");
    BT_TRUE(strstr(o, "Content-Range: bytes 7-9/10\r\n") != NULL);
    o = get(&f, "/files/a.txt", "Range: bytes=8-\r\n");
    BT_TRUE(strstr(o, "\r\n\r\n89") != NULL);
    o = get(&f, "/files/a.txt", "Range: bytes=10-\r\n");
    BT_TRUE(!strncmp(o, "HTTP/1.1 416", 12));
    BT_TRUE(strstr(o, "Content-Range: bytes */10\r\n") != NULL);
    o = get(&f, "/files/a.txt", "Range: bytes=0-1,4-5\r\n");       /* several: the whole file */
    BT_TRUE(!strncmp(o, "HTTP/1.1 200", 12));
    feed(&f, "HEAD /files/a.txt HTTP/1.1\r\nHost: a\r\n\r\n");
    o = take(&f);
    BT_TRUE(strstr(o, "Content-Length: 10\r\n") != NULL && strstr(o, "0123") == NULL);
    o = get(&f, "/files/sub/", NULL);
    BT_TRUE(strstr(o, "<p>index</p>") != NULL);
    BT_TRUE(strstr(o, "text/html") != NULL);
    o = get(&f, "/files/inside.txt", NULL);                       /* a symlink inside is fine */
    BT_TRUE(strstr(o, "0123456789") != NULL);
    static const char *const bad[] = {
        "/files/../secret.txt", "/files/sub/../../secret.txt", "/files/%2e%2e/secret.txt",
        "/files/..%2Fsecret.txt", "/files/sub%2F..%2F..%2Fsecret.txt", "/files/escape.txt",
        "/files/..%5csecret.txt", "/files/a.txt%00", "/files/nothere", "/files/./a.txt",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = get(&f, bad[i], NULL);
        if (strncmp(o, "HTTP/1.1 404", 12) || strstr(o, "TOPSECRET"))
            bt_fail(__FILE__, __LINE__, "%s answered: %.60s", bad[i], o);
    }
    BT_FALSE(closed(&f));
    fx_done(&f);
    rm_tree();
}

/* ---- real sockets, every backend ---------------------------------------------------------------- */
typedef struct io {
    braid_loop *loop;
    braid_http_server *s;
    braid_listener *l;
    int port;
    braid_fake_clock *clock;       /* io_init_with(.., fake_clock = true) */
} io;

static void io_init_with(io *x, const char *extra_endpoint, const braid_http_server_options *o, bool fake_clock) {
    memset(x, 0, sizeof *x);
    if (fake_clock) braid_fake_clock_new(BRAID_SECONDS(1000), &x->clock);
    x->loop = bt_loop_new(x->clock ? braid_fake_clock_base(x->clock) : NULL);
    BT_OK(braid_http_server_new(x->loop, o, &x->s));
    char ep[128];
    snprintf(ep, sizeof ep, "tcp:0:interface=127.0.0.1%s", extra_endpoint ? extra_endpoint : "");
    braid_deferred *d = braid_http_server_listen(x->s, ep);
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    BT_TRUE(r.failure == NULL);
    x->l = r.value;
    braid_deferred_unref(d);
    braid_address a;
    BT_OK(braid_listener_address(x->l, &a));
    x->port = braid_address_port(&a);
}

static void io_init(io *x, const char *extra_endpoint) { io_init_with(x, extra_endpoint, NULL, false); }

/* Complete answers (Content-Length framed) at the start of buf[0..n). */
static int complete_answers(const char *buf, size_t n) {
    int k = 0;
    size_t off = 0;
    while (off < n) {
        braid_http_header h[32];
        braid_http_message m;
        braid_http_limits lim = { .max_body = 1u << 30 };
        int r = braid_http_parse_response(&m, h, 32, buf + off, n - off, 0, false, &lim);
        if (r <= 0) break;
        uint64_t body = m.body == BRAID_HTTP_BODY_LENGTH ? m.content_length : 0;
        if (n - off - (size_t)r < body) break;
        off += (size_t)r + body;
        k++;
    }
    return k;
}

/* Send req, run the loop until `answers` complete answers (or want bytes,
 * or the close) came back. */
static size_t io_exchange_n(io *x, int fd, const char *req, char *out, size_t want, int answers) {
    if (req) BT_EQ(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    size_t have = 0;
    for (int i = 0; i < 20000 && have < want; i++) {
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
        struct pollfd p = { fd, POLLIN, 0 };
        if (poll(&p, 1, 1) == 1) {
            ssize_t n = recv(fd, out + have, want - have, MSG_DONTWAIT);
            if (n == 0) break;
            if (n > 0) have += (size_t)n;
            if (answers > 0 && complete_answers(out, have) >= answers) break;
        }
    }
    return have;
}
static size_t io_exchange(io *x, int fd, const char *req, char *out, size_t want) {
    return io_exchange_n(x, fd, req, out, want, 1);
}

static void io_done(io *x) {
    braid_listener_close(x->l);
    braid_http_server_shutdown(x->s);
    for (int i = 0; i < 100 && braid_http_server_connections(x->s); i++)
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_http_server_free(x->s));
    bt_loop_destroy(x->loop);
    if (x->clock) braid_fake_clock_free(x->clock);
}

static const char HELLO_ANSWER_END[] = "\r\n\r\nHello, World!";

BT_IO_TEST(io_keepalive_pipelined) {
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_route(x.s, "GET", "/", 0, h_hello, NULL));
    int fd = bt_connect_tcp(x.port, 0);
    char buf[8192] = { 0 };
    /* the answer's length is fixed: head + 13 */
    size_t n = io_exchange(&x, fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", buf, sizeof buf - 1);
    (void)n;
    buf[sizeof buf - 1] = 0;
    char *end = strstr(buf, HELLO_ANSWER_END);
    BT_TRUE(end != NULL);
    size_t one = (size_t)(end - buf) + sizeof HELLO_ANSWER_END - 1;
    char req3[256];
    snprintf(req3, sizeof req3, "%s%s%s", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
             "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    memset(buf, 0, sizeof buf);
    n = io_exchange_n(&x, fd, req3, buf, sizeof buf - 1, 3);
    BT_GE(n, 3 * one);
    BT_EQ(count(buf, "Hello, World!"), 3);
    BT_TRUE(strstr(buf, "Connection: close") != NULL);
    /* closed by the server after the third */
    char c;
    n = io_exchange_n(&x, fd, NULL, &c, 1, 0);
    BT_EQ(n, 0);
    close(fd);
    io_done(&x);
}

BT_IO_TEST(io_static_sendfile_large) {
    make_tree();
    char root[512], p[600];
    snprintf(root, sizeof root, "%s/root", tmpdir);
    snprintf(p, sizeof p, "%s/big.bin", root);
    size_t size = 3u << 20;                       /* 3 MiB: several sendfile rounds */
    char *data = malloc(size);
    for (size_t i = 0; i < size; i++) data[i] = (char)(i * 7 + (i >> 12));
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    BT_EQ(write(fd, data, size), (ssize_t)size);
    close(fd);
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_static(x.s, "/", root));
    int c = bt_connect_tcp(x.port, 0);
    char *buf = malloc(size + 4096);
    size_t n = io_exchange(&x, c, "GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n", buf, size + 4096);
    buf[n < size + 4096 ? n : size + 4095] = 0;
    char *body = strstr(buf, "\r\n\r\n");
    BT_TRUE(body != NULL);
    body += 4;
    BT_EQ(n - (size_t)(body - buf), size);
    BT_TRUE(memcmp(body, data, size) == 0);
    /* a range from the middle, same connection */
    n = io_exchange(&x, c, "GET /big.bin HTTP/1.1\r\nHost: a\r\nRange: bytes=1000000-1000099\r\n\r\n",
                    buf, 4096);
    buf[n] = 0;
    BT_TRUE(strstr(buf, "206 Partial Content") != NULL);
    body = strstr(buf, "\r\n\r\n") + 4;
    BT_EQ(n - (size_t)(body - buf), 100);
    BT_TRUE(memcmp(body, data + 1000000, 100) == 0);
    close(c);
    free(buf);
    free(data);
    io_done(&x);
    rm_tree();
}

BT_IO_TEST(io_reuseport_two_listeners) {
    io x;
    io_init(&x, ":reuseport=1");
    BT_OK(braid_http_server_route(x.s, "GET", "/", 0, h_hello, NULL));
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1:reuseport=1", x.port);
    braid_deferred *d = braid_http_server_listen(x.s, ep);     /* a second listener on the same port */
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    BT_TRUE(r.failure == NULL);
    braid_listener *l2 = r.value;
    braid_deferred_unref(d);
    for (int i = 0; i < 8; i++) {
        int fd = bt_connect_tcp(x.port, 0);
        char buf[1024] = { 0 };
        io_exchange(&x, fd, "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", buf, sizeof buf - 1);
        BT_TRUE(strstr(buf, "Hello, World!") != NULL);
        close(fd);
    }
    braid_listener_close(l2);
    io_done(&x);
}

BT_IO_TEST(io_chunked_upload_and_smuggle) {
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_route(x.s, "POST", "/", 0, h_echo, NULL));
    int fd = bt_connect_tcp(x.port, 0);
    char buf[4096] = { 0 };
    io_exchange(&x, fd, "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                buf, sizeof buf - 1);
    BT_TRUE(strstr(buf, "body=abc") != NULL);
    memset(buf, 0, sizeof buf);
    io_exchange(&x, fd, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                        "0\r\n\r\nPOST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n", buf, sizeof buf - 1);
    BT_TRUE(!strncmp(buf, "HTTP/1.1 400", 12));
    BT_EQ(count(buf, "HTTP/1.1"), 1);
    close(fd);
    io_done(&x);
}

BT_IO_TEST(io_unix_endpoint) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_http_server *s;
    BT_OK(braid_http_server_new(loop, NULL, &s));
    BT_OK(braid_http_server_route(s, "GET", "/", 0, h_hello, NULL));
    char path[108], ep[160];
    snprintf(ep, sizeof ep, "unix:%s", bt_unix_path(path, sizeof path, "http"));
    braid_deferred *d = braid_http_server_listen(s, ep);
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    BT_TRUE(r.failure == NULL);
    braid_listener *l = r.value;
    braid_deferred_unref(d);
    int fd = bt_connect_unix(path, 0);
    io x = { .loop = loop, .s = s, .l = l };
    char buf[1024] = { 0 };
    io_exchange(&x, fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", buf, sizeof buf - 1);
    BT_TRUE(strstr(buf, "Hello, World!") != NULL);
    close(fd);
    io_done(&x);
}

/* ---- hang-ups while an answer is pending (real sockets, every backend) ------------------------------ */
/* Run the loop (with short sleeps: real sockets) until done(arg) or ~4 s. */
static bool io_run_until(io *x, bool (*done)(void *), void *arg) {
    for (int i = 0; i < 8000; i++) {
        if (done(arg)) return true;
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
        usleep(500);
    }
    return done(arg);
}
static bool no_connections(void *arg) { return braid_http_server_connections(((io *)arg)->s) == 0; }
typedef struct want_requests { io *x; uint64_t n; } want_requests;
static bool requests_reached(void *arg) {
    want_requests *w = arg;
    return braid_http_server_requests(w->x->s) >= w->n;
}
static void io_wait_requests(io *x, uint64_t n) {
    want_requests w = { x, n };
    BT_TRUE(io_run_until(x, requests_reached, &w));
}

static int cancels;
static void count_cancel(braid_deferred *d, void *arg) { (void)d; (void)arg; cancels++; }
static braid_deferred *h_pending(braid_http_request *req, void *arg) {
    (void)req;
    return braid_deferred_new_cancellable(arg, count_cancel, NULL);
}

/* a streamed answer that never ends by itself; it learns of the loss from the hook */
typedef struct lost_stream { braid_http_request *req; int lost, write_rc, finish_rc; } lost_stream;
static lost_stream ls;
static void ls_lost(braid_http_request *req, void *arg) {
    lost_stream *l = arg;
    l->lost++;
    l->write_rc = braid_http_request_write(req, "late", 4);
    l->finish_rc = braid_http_request_finish(req);        /* harmless after the loss; releases req */
    l->req = NULL;
}
static braid_deferred *h_stream_forever(braid_http_request *req, void *arg) {
    (void)arg;
    BT_OK(braid_http_request_respond_start(req, 200, "text/plain", -1));
    BT_OK(braid_http_request_write(req, "first", 5));
    ls.req = req;
    BT_OK(braid_http_request_on_lost(req, ls_lost, &ls));
    return NULL;
}

/* Send req (if any), then read until needle arrived (fails after ~4 s). */
static void io_read_until(io *x, int fd, const char *req, char *buf, size_t cap, const char *needle) {
    if (req) BT_EQ(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
    size_t have = 0;
    buf[0] = 0;
    for (int i = 0; i < 8000 && !strstr(buf, needle); i++) {
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
        ssize_t n = recv(fd, buf + have, cap - 1 - have, MSG_DONTWAIT);
        if (n > 0) {
            have += (size_t)n;
            buf[have] = 0;
        } else {
            BT_NE(n, 0);
            usleep(500);
        }
    }
    if (!strstr(buf, needle)) bt_fail(__FILE__, __LINE__, "no \"%s\" in: %s", needle, buf);
}

static void send_all(int fd, const char *s) {
    BT_EQ(send(fd, s, strlen(s), MSG_NOSIGNAL), (ssize_t)strlen(s));
}

BT_IO_TEST(io_hangup_while_answer_pending) {
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_route(x.s, "GET", "/pending", 0, h_pending, x.loop));
    BT_OK(braid_http_server_route(x.s, "GET", "/stream", 0, h_stream_forever, NULL));
    cancels = 0;
    memset(&ls, 0, sizeof ls);
    int a = bt_connect_tcp(x.port, 0), b = bt_connect_tcp(x.port, 0), c = bt_connect_tcp(x.port, 0);
    send_all(a, "GET /pending HTTP/1.1\r\nHost: a\r\n\r\n");
    send_all(b, "GET /pending HTTP/1.1\r\nHost: a\r\n\r\n");
    char buf[4096] = { 0 };
    io_read_until(&x, c, "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n", buf, sizeof buf, "first");
    io_wait_requests(&x, 3);
    for (int i = 0; i < 20; i++) BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(cancels, 0);
    BT_EQ(ls.lost, 0);
    BT_EQ(braid_http_server_connections(x.s), 3);
    close(a);                                                        /* FIN */
    struct linger lg = { 1, 0 };
    BT_OK(setsockopt(b, SOL_SOCKET, SO_LINGER, &lg, sizeof lg));
    close(b);                                                        /* RST */
    close(c);                                                        /* FIN, everything read */
    BT_TRUE(io_run_until(&x, no_connections, &x));
    BT_EQ(cancels, 2);                                               /* both pending answers cancelled */
    BT_EQ(ls.lost, 1);                                               /* the stream was told */
    BT_ERR(ls.write_rc, BRAID_ESHUTDOWN);
    BT_ERR(ls.finish_rc, BRAID_ESHUTDOWN);
    io_done(&x);
}

/* Clients that give up free the pool: their queued jobs are cancelled, never run. */
static int jobs_run;
static braid_result counted_job(void *arg) {
    (void)arg;
    jobs_run++;
    return braid_result_ok_owned(response(200, "text/plain", "done", 4), braid_http_response_free);
}
static braid_deferred *h_job(braid_http_request *req, void *arg) {
    (void)req;
    pool_ctx *pc = arg;
    return braid_pool_defer(pc->loop, pc->pool, counted_job, NULL);
}

BT_IO_TEST(io_hangup_cancels_queued_pool_work) {
    io x;
    io_init(&x, NULL);
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .flags = BRAID_POOL_MEMORY }, &pool));
    pool_ctx pc = { x.loop, pool };
    BT_OK(braid_http_server_route(x.s, "GET", "/work", 0, h_job, &pc));
    jobs_run = 0;
    enum { N = 8 };
    int fds[N];
    for (int i = 0; i < N; i++) {
        fds[i] = bt_connect_tcp(x.port, 0);
        send_all(fds[i], "GET /work HTTP/1.1\r\nHost: a\r\n\r\n");
    }
    io_wait_requests(&x, N);
    for (int i = 0; i < N; i++) close(fds[i]);                      /* they gave up */
    BT_TRUE(io_run_until(&x, no_connections, &x));
    BT_EQ(braid_pool_step(pool), 0);                                 /* nothing left queued */
    BT_EQ(jobs_run, 0);
    /* a later client gets its answer after one job */
    int fd = bt_connect_tcp(x.port, 0);
    send_all(fd, "GET /work HTTP/1.1\r\nHost: a\r\n\r\n");
    io_wait_requests(&x, N + 1);
    BT_EQ(braid_pool_step(pool), 1);
    char buf[1024] = { 0 };
    io_exchange(&x, fd, NULL, buf, sizeof buf - 1);
    BT_TRUE(strstr(buf, "\r\n\r\ndone") != NULL);
    BT_EQ(jobs_run, 1);
    close(fd);
    io_done(&x);
    braid_pool_free(pool);
}

/* A FIN after the request: the client left (default), or a half-close whose
 * answer is still wanted (allow_half_close). */
BT_IO_TEST(io_half_close_policy) {
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_route(x.s, "GET", "/pending", 0, h_pending, x.loop));
    cancels = 0;
    int fd = bt_connect_tcp(x.port, 0);
    send_all(fd, "GET /pending HTTP/1.1\r\nHost: a\r\n\r\n");
    io_wait_requests(&x, 1);
    BT_OK(shutdown(fd, SHUT_WR));
    BT_TRUE(io_run_until(&x, no_connections, &x));
    BT_EQ(cancels, 1);
    close(fd);
    io_done(&x);

    io_init_with(&x, NULL, &(braid_http_server_options){ .allow_half_close = true }, false);
    BT_OK(braid_http_server_route(x.s, "GET", "/later", 0, h_later, x.loop));
    fd = bt_connect_tcp(x.port, 0);
    send_all(fd, "GET /later HTTP/1.1\r\nHost: a\r\n\r\n");
    io_wait_requests(&x, 1);
    BT_OK(shutdown(fd, SHUT_WR));
    for (int i = 0; i < 50; i++) {
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        usleep(200);
    }
    BT_EQ(braid_http_server_connections(x.s), 1);                    /* still answering */
    BT_OK(braid_deferred_callback(pending_d, response(200, "text/plain", "after FIN", 9),
                                  braid_http_response_free));
    char buf[1024] = { 0 };
    size_t n = io_exchange_n(&x, fd, NULL, buf, sizeof buf - 1, 0);  /* to the server's close */
    BT_GT(n, 0);
    BT_TRUE(strstr(buf, "Connection: close\r\n") != NULL);
    BT_TRUE(strstr(buf, "\r\n\r\nafter FIN") != NULL);
    BT_TRUE(io_run_until(&x, no_connections, &x));
    close(fd);
    io_done(&x);
}

/* ---- pipelining: parse before reading more ------------------------------------------------------- */
static braid_deferred *h_path(braid_http_request *req, void *arg) {
    (void)arg;
    braid_http_request_respond(req, 200, "text/plain", req->path, req->path_len);
    return NULL;
}

/* The answers at the start of buf[0..n): checks each body is "/<next>" and
 * returns the bytes consumed. */
static size_t check_answers(const char *buf, size_t n, int *next) {
    size_t off = 0;
    for (;;) {
        braid_http_header h[32];
        braid_http_message m;
        int r = braid_http_parse_response(&m, h, 32, buf + off, n - off, 0, false, NULL);
        if (r == BRAID_EHTTP_INCOMPLETE) return off;
        BT_GT(r, 0);
        BT_EQ(m.status, 200);
        if (n - off - (size_t)r < m.content_length) return off;
        char want[24];
        int wl = snprintf(want, sizeof want, "/%d", *next);
        if ((size_t)wl != m.content_length || memcmp(buf + off + r, want, (size_t)wl))
            bt_fail(__FILE__, __LINE__, "answer %d is %.*s", *next, (int)m.content_length, buf + off + r);
        (*next)++;
        off += (size_t)r + m.content_length;
    }
}

/* A big pipelined burst from a client that reads its answers (in 16 KiB
 * sips, so output backs up now and then): every request is answered, in
 * order, on the one connection. Small limits make the input bound small. */
BT_IO_TEST(io_pipelined_burst_read_in_order) {
    io x;
    braid_http_server_options o = { .limits = { .max_head = 2048, .max_body = 1024 } };
    io_init_with(&x, NULL, &o, false);
    BT_OK(braid_http_server_route(x.s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_path, NULL));
    enum { N = 20000 };
    size_t cap = (size_t)N * 40, len = 0;
    char *reqs = malloc(cap);
    for (int i = 0; i < N; i++) len += (size_t)snprintf(reqs + len, cap - len, "GET /%d HTTP/1.1\r\nHost: a\r\n\r\n", i);
    int fd = bt_connect_tcp(x.port, 0);
    size_t sent = 0, have = 0, incap = 1 << 20;
    char *in = malloc(incap);
    int next = 0;
    bool eof = false;
    for (int it = 0; it < 400000 && next < N && !eof; it++) {
        if (sent < len) {
            ssize_t k = send(fd, reqs + sent, len - sent, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) sent += (size_t)k;
            else BT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
        }
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        ssize_t k = recv(fd, in + have, (incap - have) < 16384 ? incap - have : 16384, MSG_DONTWAIT);
        if (k == 0) eof = true;
        else if (k < 0) BT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
        else {
            have += (size_t)k;
            size_t used = check_answers(in, have, &next);
            memmove(in, in + used, have - used);
            have -= used;
        }
        if (k <= 0 && sent == len) usleep(100);
    }
    if (next < N) {
        in[have < 200 ? have : 200] = 0;
        bt_fail(__FILE__, __LINE__, "%d of %d answered (eof %d); then: %s", next, N, eof, in);
    }
    BT_EQ(braid_http_server_connections(x.s), 1);
    close(fd);
    free(in);
    free(reqs);
    io_done(&x);
}

/* Counting allocator: braid's heap in bytes (current and peak). */
#include <malloc.h>

static size_t heap_now, heap_peak;
static void heap_add(size_t n) { heap_now += n; if (heap_now > heap_peak) heap_peak = heap_now; }
static void *cnt_malloc(void *ctx, size_t n) {
    (void)ctx;
    void *p = malloc(n);
    if (p) heap_add(malloc_usable_size(p));
    return p;
}
static void *cnt_realloc(void *ctx, void *p, size_t n) {
    (void)ctx;
    size_t old = p ? malloc_usable_size(p) : 0;
    void *q = realloc(p, n);
    if (q) {
        heap_now -= old;
        heap_add(malloc_usable_size(q));
    }
    return q;
}
static void cnt_free(void *ctx, void *p) {
    (void)ctx;
    if (p) heap_now -= malloc_usable_size(p);
    free(p);
}

/* A client that pipelines and never reads: the server holds a bounded amount
 * of input (about max_head plus one read) and of output (the 64 KiB drain
 * mark plus one batch), not a megabyte; once the client reads, every request
 * is answered. */
BT_IO_TEST(io_never_reading_pipeliner_memory_bounded) {
    static const braid_allocator counting = { cnt_malloc, cnt_realloc, cnt_free, NULL };
    BT_OK(braid_allocator_set(&counting));
    io x;
    io_init(&x, NULL);
    BT_OK(braid_http_server_route(x.s, "GET", "/", 0, h_hello, NULL));
    int fd = bt_connect_tcp_rcvbuf(x.port, 0, 4096);
    char buf[4096] = { 0 };
    io_exchange(&x, fd, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", buf, sizeof buf - 1);   /* lazy allocations done */
    BT_TRUE(strstr(buf, "Hello, World!") != NULL);
    size_t base = heap_now;
    heap_peak = heap_now;
    static const char one[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    enum { CHUNK = 1000 };
    static char chunk[CHUNK * (sizeof one - 1)];
    for (int i = 0; i < CHUNK; i++) memcpy(chunk + i * (sizeof one - 1), one, sizeof one - 1);
    size_t sent = 0, limit = 4u << 20, idle = 0;
    while (sent < limit && idle < 400) {
        ssize_t k = send(fd, chunk + sent % sizeof chunk, sizeof chunk - sent % sizeof chunk,
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k > 0) { sent += (size_t)k; idle = 0; }
        else { BT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK); idle++; }
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        if (k <= 0) usleep(200);
    }
    size_t grew = heap_peak - base;
    fprintf(stderr, "never-reading pipeliner: %zu bytes sent, server heap peak +%zu bytes\n", sent, grew);
    if (grew > 512 * 1024)
        bt_fail(__FILE__, __LINE__, "the server's heap grew by %zu bytes for one pipelining client (%zu bytes sent)",
                grew, sent);
    BT_EQ(braid_http_server_connections(x.s), 1);
    /* Finish the last partial request and read everything: all answered. */
    size_t part = sent % (sizeof one - 1), off = part ? part : sizeof one - 1;
    int want = (int)((sent + (sizeof one - 1) - 1) / (sizeof one - 1)), got = 0;
    static char in[1 << 16];
    size_t have = 0;
    for (int it = 0; it < 400000 && got < want; it++) {
        if (off < sizeof one - 1) {
            ssize_t k = send(fd, one + off, sizeof one - 1 - off, MSG_DONTWAIT | MSG_NOSIGNAL);
            if (k > 0) off += (size_t)k;
        }
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        ssize_t k = recv(fd, in + have, sizeof in - have, MSG_DONTWAIT);
        BT_NE(k, 0);
        if (k < 0) {
            BT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
            usleep(100);
            continue;
        }
        have += (size_t)k;
        size_t used = 0;
        /* The complete answers in the buffer, counted once: counting what is
         * left again after each one taken made this loop quadratic (most of
         * the test's time under ASan). */
        for (int n = complete_answers(in, have); n > 0; n--) {
            braid_http_header h[16];
            braid_http_message m;
            int r = braid_http_parse_response(&m, h, 16, in + used, have - used, 0, false, NULL);
            used += (size_t)r + m.content_length;
            got++;
        }
        memmove(in, in + used, have - used);
        have -= used;
    }
    BT_EQ(got, want);
    close(fd);
    BT_TRUE(io_run_until(&x, no_connections, &x));
    io_done(&x);
    BT_OK(braid_allocator_set(NULL));
}

/* ---- error answers close by lingering: the client reads them, no reset ---------------------------- */
/* Send head, then junk bytes of filler while the server runs (as a client
 * still sending its body does); then read to the end. Returns what was read;
 * *last is the final recv's result (0 at a clean end, -errno on a reset),
 * *send_err the error that stopped the sending (0 if all went). */
static size_t error_exchange(io *x, const char *head, size_t junk, char *out, size_t cap, int *last,
                             int *send_err) {
    int fd = bt_connect_tcp(x->port, 0);
    send_all(fd, head);
    static char filler[65536];
    memset(filler, 'j', sizeof filler);
    size_t sent = 0;
    *send_err = 0;
    for (int i = 0; i < 20000 && sent < junk; i++) {
        size_t n = junk - sent < sizeof filler ? junk - sent : sizeof filler;
        ssize_t k = send(fd, filler, n, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (k > 0) sent += (size_t)k;
        else if (errno != EAGAIN && errno != EWOULDBLOCK) { *send_err = -errno; break; }   /* reset */
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
        if (k <= 0) usleep(100);
    }
    if (!*send_err && sent < junk) *send_err = BRAID_ETIMEDOUT;
    size_t have = 0;
    *last = 1;
    for (int i = 0; i < 8000; i++) {
        BT_OK(braid_loop_run_once(x->loop, BRAID_LOOP_RUN_NOWAIT));
        ssize_t k = recv(fd, out + have, cap - 1 - have, MSG_DONTWAIT);
        if (k > 0) { have += (size_t)k; continue; }
        if (k == 0) { *last = 0; break; }
        if (errno != EAGAIN && errno != EWOULDBLOCK) { *last = -errno; break; }
        usleep(500);
    }
    out[have] = 0;
    close(fd);
    BT_TRUE(io_run_until(x, no_connections, x));
    return have;
}

BT_IO_TEST(io_error_answer_lingering_close) {
    io x;
    braid_http_server_options o = { .limits = { .max_body = 4096 } };
    io_init_with(&x, NULL, &o, false);
    BT_OK(braid_http_server_route(x.s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_hello, NULL));
    static const struct { const char *head, *status; } cases[] = {
        { "GET / HTTP/1.1\r\nHost: a\r\nBad Header: x\r\n\r\n", "HTTP/1.1 400" },
        { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n", "HTTP/1.1 413" },
        { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "HTTP/1.1 400" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[4096];
        int last, send_err;
        size_t n = error_exchange(&x, cases[i].head, 512 * 1024, out, sizeof out, &last, &send_err);
        if (strncmp(out, cases[i].status, 12) || complete_answers(out, n) != 1 || last != 0 || send_err)
            bt_fail(__FILE__, __LINE__, "case %zu: sending: %s; end %d (%s), %zu bytes: %s", i,
                    send_err ? braid_strerror(send_err) : "ok", last, last < 0 ? strerror(-last) : "-", n, out);
        BT_TRUE(strstr(out, "Connection: close\r\n") != NULL);
    }
    io_done(&x);
}

/* ---- write progress (send_timeout) ------------------------------------------------------------------ */
static char *big_body;
enum { BIG_BODY = 1 << 20 };
static braid_deferred *h_big(braid_http_request *req, void *arg) {
    (void)arg;
    braid_http_request_respond(req, 200, "application/octet-stream", big_body, BIG_BODY);
    return NULL;
}

/* Progress keeps the connection, however slow; no progress for the timeout aborts it. */
BT_TEST(send_timeout_counts_progress) {
    big_body = calloc(1, BIG_BODY);
    fx f;
    fx_init(&f, &(braid_http_server_options){ .send_timeout = BRAID_SECONDS(10), .idle_timeout = BRAID_SECONDS(3600) });
    BT_OK(braid_http_server_route(f.s, "GET", "/big", 0, h_big, NULL));
    fx_conn(&f);
    feed(&f, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    for (int i = 0; i < 24; i++) {                 /* 2 minutes, 100 bytes every 5 s */
        BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(5)));
        braid_memory_transport_consume(f.m, 100);
        bt_spin(f.loop, 4);
        BT_FALSE(closed(&f));
    }
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(19)));
    BT_FALSE(closed(&f));                           /* within 2 x the timeout of the last progress */
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(2)));
    bt_spin(f.loop, 4);
    struct braid_memory_transport_state ms = mstate(f.m);
    BT_TRUE(ms.closed);
    BT_TRUE(ms.aborted);
    BT_ERR(ms.lost_code, BRAID_ETIMEDOUT);
    BT_EQ(braid_http_server_connections(f.s), 0);
    braid_memory_transport_free(f.m);
    /* a keep-alive connection whose output went out is never touched by it */
    fx_conn(&f);
    feed(&f, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    while (strlen(take(&f)) > 0) {}
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(60)));
    BT_FALSE(closed(&f));
    fx_done(&f);
    free(big_body);
}

/* A client that stops reading a large answer, and one that never reads a
 * static file (sendfile waits for the socket): both are aborted after the
 * timeout on the loop clock. */
BT_IO_TEST(io_send_timeout_aborts_non_reader) {
    make_tree();
    char root[512], p[600];
    snprintf(root, sizeof root, "%s/root", tmpdir);
    snprintf(p, sizeof p, "%s/big.bin", root);
    int ffd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    BT_TRUE(ffd >= 0);
    BT_OK(ftruncate(ffd, 8 << 20));
    close(ffd);
    big_body = calloc(1, BIG_BODY);
    io x;
    io_init_with(&x, NULL, &(braid_http_server_options){ .send_timeout = BRAID_SECONDS(10) }, true);
    BT_OK(braid_http_server_route(x.s, "GET", "/big", 0, h_big, NULL));
    BT_OK(braid_http_server_static(x.s, "/files/", root));
    int fds[2];
    const char *reqs[2] = { "GET /big HTTP/1.1\r\nHost: a\r\n\r\n", "GET /files/big.bin HTTP/1.1\r\nHost: a\r\n\r\n" };
    for (int i = 0; i < 2; i++) {
        fds[i] = bt_connect_tcp_rcvbuf(x.port, 0, 4096);
        send_all(fds[i], reqs[i]);
    }
    io_wait_requests(&x, 2);
    for (int i = 0; i < 200; i++) {                 /* the kernel buffers fill */
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        usleep(100);
    }
    BT_EQ(braid_http_server_connections(x.s), 2);
    for (int s = 0; s < 25 && braid_http_server_connections(x.s); s++) {
        BT_OK(braid_loop_advance(x.loop, BRAID_SECONDS(1)));
        for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        if (s < 9) BT_EQ(braid_http_server_connections(x.s), 2);   /* not before the timeout */
    }
    BT_EQ(braid_http_server_connections(x.s), 0);
    for (int i = 0; i < 2; i++) close(fds[i]);
    io_done(&x);
    free(big_body);
    rm_tree();
}

/* ---- conformance ---------------------------------------------------------------------------------- */
static braid_deferred *h_host(braid_http_request *req, void *arg) {
    (void)arg;
    char out[512];
    int n = snprintf(out, sizeof out, "path=%.*s query=%.*s host=%.*s", (int)req->path_len, req->path,
                     (int)req->query_len, req->query ? req->query : "", (int)req->host_len,
                     req->host ? req->host : "");
    braid_http_request_respond(req, 200, "text/plain", out, (size_t)n);
    return NULL;
}

BT_TEST(absolute_form_targets) {
    fx f;
    fx_init(&f, NULL);
    BT_OK(braid_http_server_route(f.s, "GET", "/a/", BRAID_HTTP_ROUTE_PREFIX, h_host, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_host, NULL));
    fx_conn(&f);
    feed(&f, "GET http://example.com:8080/a/b?x=1 HTTP/1.1\r\nHost: other\r\n\r\n");
    BT_TRUE(strstr(take(&f), "path=/a/b query=x=1 host=example.com:8080") != NULL);
    feed(&f, "GET HTTPS://Example.com HTTP/1.1\r\nHost: other\r\n\r\n");
    BT_TRUE(strstr(take(&f), "path=/ query= host=Example.com") != NULL);
    feed(&f, "GET http://h?q HTTP/1.1\r\nHost: h\r\n\r\n");
    BT_TRUE(strstr(take(&f), "path=/ query=q host=h") != NULL);
    feed(&f, "GET /a/z HTTP/1.1\r\nHost: origin\r\n\r\n");           /* origin form: the Host header */
    BT_TRUE(strstr(take(&f), "path=/a/z query= host=origin") != NULL);
    BT_FALSE(closed(&f));
    feed(&f, "GET http://user@h/a/ HTTP/1.1\r\nHost: h\r\n\r\n");     /* userinfo: refused */
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 400", 12));
    expect_linger_close(&f);
    braid_memory_transport_free(f.m);
    fx_conn(&f);
    feed(&f, "GET http:///a/ HTTP/1.1\r\nHost: h\r\n\r\n");            /* no authority */
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 400", 12));
    fx_done(&f);
}

static void headers_request(char *out, size_t cap, int nfields) {
    size_t n = (size_t)snprintf(out, cap, "GET / HTTP/1.1\r\nHost: a\r\n");
    for (int i = 1; i < nfields; i++) n += (size_t)snprintf(out + n, cap - n, "X-%d: v\r\n", i);
    snprintf(out + n, cap - n, "\r\n");
}

BT_TEST(max_headers_honoured) {
    static char req[65536];
    fx f;
    fx_init(&f, NULL);                              /* the default: 100 fields */
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    headers_request(req, sizeof req, 100);
    feed(&f, req);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 200", 12));
    headers_request(req, sizeof req, 101);
    feed(&f, req);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 431", 12));
    fx_done(&f);
    /* raised: 1000 fields */
    fx_init(&f, &(braid_http_server_options){ .limits = { .max_headers = 1000, .max_head = 32768 } });
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    fx_conn(&f);
    headers_request(req, sizeof req, 1000);
    feed(&f, req);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 200", 12));
    headers_request(req, sizeof req, 1001);
    feed(&f, req);
    BT_TRUE(!strncmp(take(&f), "HTTP/1.1 431", 12));
    fx_done(&f);
}

/* ---- allocation failures: every site on a representative path fails cleanly ---------------------- */
static braid_deferred *h_async_answer(braid_http_request *req, void *arg) {
    (void)req;
    braid_http_response *r = response(201, "text/plain", "later", 5);
    if (!r) return NULL;                            /* no answer: the server answers 500 */
    if (braid_http_response_add_header(r, "X-Later", "1") < 0) {
        braid_http_response_free(r);
        return NULL;
    }
    return braid_deferred_succeed(arg, r, braid_http_response_free);
}
static braid_deferred *h_stream_small(braid_http_request *req, void *arg) {
    (void)arg;
    if (braid_http_request_respond_start(req, 200, "text/plain", -1) < 0) return NULL;
    braid_http_request_write(req, "chunk-one", 9);
    braid_http_request_write(req, "chunk-two", 9);
    braid_http_request_finish(req);
    return NULL;
}

/* One server connection over the memory transport: a pipelined GET, a
 * chunked POST, a Deferred answer, a streamed answer, a 404, then a bad
 * request (400, lingering close) and the client's FIN. 0 when every answer
 * came out right; an error otherwise (never a crash or a leak). */
static int oom_server_scenario(void *arg) {
    braid_loop *loop = arg;
    braid_http_server *s;
    int rc = braid_http_server_new(loop, NULL, &s);
    if (rc < 0) return rc;
    if ((rc = braid_http_server_route(s, "GET", "/", 0, h_hello, NULL)) < 0 ||
        (rc = braid_http_server_route(s, "POST", "/echo", 0, h_echo, NULL)) < 0 ||
        (rc = braid_http_server_route(s, "GET", "/later", 0, h_async_answer, loop)) < 0 ||
        (rc = braid_http_server_route(s, "GET", "/stream", 0, h_stream_small, NULL)) < 0) {
        braid_http_server_free(s);
        return rc;
    }
    braid_protocol *p = braid_factory_build(braid_http_server_factory(s), NULL);
    if (!p) {
        braid_http_server_free(s);
        return BRAID_ENOMEM;
    }
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    if (!m) {
        p->ops->destroy(p);                         /* never attached: ours to release */
        braid_http_server_free(s);
        return BRAID_ENOMEM;
    }
    static const char in[] =
        "GET / HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        "GET /later HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET /nope HTTP/1.1\r\nHost: a\r\n\r\n"
        "GET / HTTP/1.1\r\nHost: a\r\nBad Header: 1\r\n\r\n";
    static char out[8192];
    size_t have = 0;
    /* byte-split delivery too: the request that spans reads is buffered */
    (void)braid_memory_transport_receive(m, in, 20);
    (void)braid_memory_transport_receive(m, in + 20, sizeof in - 1 - 20);
    for (int i = 0; i < 20; i++) {
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        size_t n;
        const void *d = braid_memory_transport_data(m, &n);
        if (n > sizeof out - 1 - have) n = sizeof out - 1 - have;
        memcpy(out + have, d, n);
        have += n;
        braid_memory_transport_consume(m, n);
    }
    out[have] = 0;
    braid_memory_transport_peer_eof(m);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    struct braid_memory_transport_state ms = mstate(m);
    int result = 0;
    const char *a = strstr(out, "Hello, World!"), *b = strstr(out, "body=abc"), *c = strstr(out, "\r\n\r\nlater"),
               *d = strstr(out, "chunk-two"), *e = strstr(out, "HTTP/1.1 404"), *f = strstr(out, "HTTP/1.1 400");
    if (!(a && b && c && d && e && f && a < b && b < c && c < d && d < e && e < f) || !ms.closed || ms.aborted)
        result = BRAID_EINVAL;
    braid_memory_transport_free(m);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    if (braid_http_server_free(s) < 0) abort();     /* every connection must be gone */
    return result;
}

BT_TEST(allocation_failure_walk_server) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "server", .arg = loop, .body = oom_server_scenario,
                                                 .loop = loop, .warm_up = true, .max_runs = 2000 });
    BT_GT(r.injected, 10);                         /* the walk went through the whole path */
    fprintf(stderr, "walk: %ld allocation sites failed in turn\n", r.injected);
    bt_loop_destroy(loop);
}

/* The client and the server together, over the in-memory pump: a GET and a
 * POST on one pooled connection. */
typedef struct pump_env {
    braid_http_server *s;
    braid_pump *pump;
} pump_env;

static braid_deferred *pump_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                    braid_factory *f) {
    pump_env *e = arg;
    (void)host, (void)port, (void)https;
    if (e->pump) return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "one connection only"));
    braid_protocol *cp = braid_factory_build(f, NULL);
    if (!cp) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "client protocol"));
    braid_protocol *sp = braid_factory_build(braid_http_server_factory(e->s), NULL);
    if (!sp) {
        cp->ops->destroy(cp);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "server protocol"));
    }
    braid_pump_new(loop, cp, sp, &e->pump);
    if (!e->pump) {
        cp->ops->destroy(cp);
        sp->ops->destroy(sp);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "pump"));
    }
    return braid_deferred_succeed(loop, cp, NULL);
}

typedef struct cres { int fired, code, status; char body[64]; } cres;
static braid_result cres_ok(braid_result r, void *arg) {
    cres *c = arg;
    braid_http_client_response *resp = r.value;
    c->fired++;
    c->status = resp->status;
    snprintf(c->body, sizeof c->body, "%s", resp->body);
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static braid_result cres_fail(braid_result r, void *arg) {
    cres *c = arg;
    c->fired++;
    c->code = r.failure->code;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static int oom_client_server_scenario(void *arg) {
    braid_loop *loop = arg;
    pump_env e = { 0 };
    int rc = braid_http_server_new(loop, NULL, &e.s);
    if (rc < 0) return rc;
    if ((rc = braid_http_server_route(e.s, "GET", "/", 0, h_hello, NULL)) < 0 ||
        (rc = braid_http_server_route(e.s, "POST", "/echo", 0, h_echo, NULL)) < 0) {
        braid_http_server_free(e.s);
        return rc;
    }
    braid_http_client *c;
    if ((rc = braid_http_client_new(loop, &(braid_http_client_options){ .connect = pump_connect, .connect_arg = &e },
                                    &c)) < 0) {
        braid_http_server_free(e.s);
        return rc;
    }
    cres r[2];
    memset(r, 0, sizeof r);
    int result = 0;
    for (int i = 0; i < 2 && !result; i++) {
        braid_deferred *d = braid_http_client_request(c, &(braid_http_client_req){
            .method = i ? "POST" : "GET", .url = i ? "http://h/echo" : "http://h/",
            .body = i ? "payload" : NULL, .body_len = i ? 7 : 0 });
        if (!d) { result = BRAID_ENOMEM; break; }
        if (braid_deferred_add(d, cres_ok, cres_fail, &r[i]) < 0) {
            braid_deferred_cancel(d);
            braid_deferred_unref(d);
            result = BRAID_ENOMEM;
            break;
        }
        braid_deferred_unref(d);
        for (int k = 0; k < 10 && !r[i].fired; k++) {
            if (e.pump) braid_pump_flush(e.pump);
            braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        }
        if (!r[i].fired) result = BRAID_EINVAL;
        else if (r[i].code) result = r[i].code;
        else if (r[i].status != 200 || !strstr(r[i].body, i ? "body=payload" : "Hello, World!")) result = BRAID_EINVAL;
    }
    braid_http_client_free(c);
    for (int k = 0; k < 3; k++) {
        if (e.pump) braid_pump_flush(e.pump);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    if (e.pump) braid_pump_free(e.pump);
    for (int k = 0; k < 3; k++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    if (braid_http_server_free(e.s) < 0) abort();
    return result;
}

BT_TEST(allocation_failure_walk_client_and_server) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "client and server", .arg = loop,
                                                 .body = oom_client_server_scenario, .loop = loop,
                                                 .warm_up = true, .max_runs = 2000 });
    BT_GT(r.injected, 10);
    fprintf(stderr, "walk: %ld allocation sites failed in turn\n", r.injected);
    bt_loop_destroy(loop);
}

/* ---- shutdown with a deadline ------------------------------------------------------------------------ */
/* Idle connections close at once, busy ones after their answer; whatever has
 * not closed when shutdown_timeout passes is aborted: a client that does not
 * read its last answer, a Deferred that never fires, a stream that never ends. */
BT_TEST(shutdown_deadline_escalates) {
    fx f;
    fx_init(&f, &(braid_http_server_options){ .shutdown_timeout = BRAID_SECONDS(5),
                                              .send_timeout = BRAID_FOREVER });
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/pending", 0, h_pending, f.loop));
    BT_OK(braid_http_server_route(f.s, "GET", "/stream", 0, h_stream_forever, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/later", 0, h_later, f.loop));
    braid_memory_transport *m[5];
    static const char *const reqs[5] = { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
                                         "GET /pending HTTP/1.1\r\nHost: a\r\n\r\n",
                                         "GET /stream HTTP/1.1\r\nHost: a\r\n\r\n",
                                         "GET /later HTTP/1.1\r\nHost: a\r\n\r\n" };
    cancels = 0;
    memset(&ls, 0, sizeof ls);
    for (int i = 0; i < 5; i++) {
        m[i] = fx_conn(&f);
        BT_OK(braid_memory_transport_receive(m[i], reqs[i], strlen(reqs[i])));
    }
    bt_spin(f.loop, 4);
    braid_memory_transport_consume(m[0], SIZE_MAX);   /* 0: idle, its answer read; 1: answer never read */
    bt_spin(f.loop, 4);
    BT_EQ(braid_http_server_connections(f.s), 5);
    braid_http_server_shutdown(f.s);
    bt_spin(f.loop, 4);
    BT_TRUE(mstate(m[0]).closed);   /* idle: closed at once */
    BT_TRUE(mstate(m[1]).disconnecting);
    BT_EQ(braid_http_server_connections(f.s), 4);
    /* the answer that completes in time closes the connection after it, cleanly */
    BT_OK(braid_deferred_callback(pending_d, response(200, "text/plain", "in time", 7),
                                  braid_http_response_free));
    bt_spin(f.loop, 4);
    size_t n;
    const char *o = braid_memory_transport_data(m[4], &n);
    BT_TRUE(n > 0 && memmem(o, n, "Connection: close\r\n", 19) && memmem(o, n, "in time", 7));
    braid_memory_transport_consume(m[4], SIZE_MAX);
    bt_spin(f.loop, 4);
    struct braid_memory_transport_state st4 = mstate(m[4]);
    BT_TRUE(st4.closed && !st4.aborted);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(4)));
    BT_EQ(braid_http_server_connections(f.s), 3);
    BT_EQ(cancels, 0);
    BT_EQ(ls.lost, 0);
    BT_OK(braid_loop_advance(f.loop, BRAID_SECONDS(2)));
    bt_spin(f.loop, 4);
    BT_EQ(braid_http_server_connections(f.s), 0);
    for (int i = 1; i < 4; i++) {
        struct braid_memory_transport_state ms = mstate(m[i]);
        BT_TRUE(ms.aborted);
        BT_ERR(ms.lost_code, BRAID_ETIMEDOUT);
    }
    BT_EQ(cancels, 1);                                   /* the pending answer was cancelled */
    BT_EQ(ls.lost, 1);                                   /* the stream was told */
    for (int i = 0; i < 5; i++) braid_memory_transport_free(m[i]);
    f.m = NULL;
    fx_done(&f);
}

/* A streamed answer of 64 MiB under the transport's watermarks. */
typedef struct big_stream { braid_producer p; braid_http_request *req; bool paused, done; size_t sent; } big_stream;
static big_stream bs;
static void bs_pump(big_stream *b) {
    while (!b->paused && !b->done && b->sent < (64u << 20)) {
        if (braid_http_request_write(b->req, big_body, 256 * 1024) < 0) return;
        b->sent += 256 * 1024;
    }
}
static void bs_pause(braid_producer *p) { ((big_stream *)p->arg)->paused = true; }
static void bs_resume(braid_producer *p) { big_stream *b = p->arg; b->paused = false; bs_pump(b); }
static void bs_stop(braid_producer *p) {
    big_stream *b = p->arg;
    if (!b->done) { b->done = true; braid_http_request_finish(b->req); }
}
static braid_deferred *h_big_stream(braid_http_request *req, void *arg) {
    (void)arg;
    memset(&bs, 0, sizeof bs);
    bs.req = req;
    bs.p = (braid_producer){ bs_pause, bs_resume, bs_stop, &bs };
    BT_OK(braid_http_request_respond_start(req, 200, "application/octet-stream", -1));
    BT_OK(braid_http_request_register_producer(req, &bs.p, true));
    bs_pump(&bs);
    return NULL;
}

/* The same over TCP: a client that stops reading a long answer does not
 * hold the server's shutdown past the deadline. */
BT_IO_TEST(io_shutdown_deadline_with_non_reader) {
    big_body = calloc(1, BIG_BODY);
    io x;
    io_init_with(&x, NULL, &(braid_http_server_options){ .shutdown_timeout = BRAID_SECONDS(3),
                                                          .send_timeout = BRAID_FOREVER }, true);
    BT_OK(braid_http_server_route(x.s, "GET", "/big", 0, h_big_stream, NULL));
    int fd = bt_connect_tcp_rcvbuf(x.port, 0, 4096);
    send_all(fd, "GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    io_wait_requests(&x, 1);
    for (int i = 0; i < 100; i++) {
        BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        usleep(100);
    }
    braid_listener_close(x.l);
    braid_http_server_shutdown(x.s);
    for (int s = 0; s < 2; s++) {
        BT_OK(braid_loop_advance(x.loop, BRAID_SECONDS(1)));
        for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
        BT_EQ(braid_http_server_connections(x.s), 1);      /* still flushing */
    }
    BT_OK(braid_loop_advance(x.loop, BRAID_SECONDS(1) + 1));
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(x.loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_http_server_connections(x.s), 0);
    BT_TRUE(bs.done);                                       /* the stream was stopped */
    close(fd);
    BT_OK(braid_http_server_free(x.s));
    bt_loop_destroy(x.loop);
    braid_fake_clock_free(x.clock);
    free(big_body);
}

/* Input that arrives while an answer is pending is appended behind requests
 * already answered from the same buffer: those are dropped first (the buffer
 * is compacted under the pending request), so small limits hold. */
BT_TEST(pending_answer_after_buffered_burst_compacts) {
    fx f;
    fx_init(&f, &(braid_http_server_options){ .limits = { .max_head = 1024, .max_body = 512 } });
    BT_OK(braid_http_server_route(f.s, "GET", "/", 0, h_hello, NULL));
    BT_OK(braid_http_server_route(f.s, "GET", "/later", 0, h_later, f.loop));
    fx_conn(&f);
    static const char one[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    enum { N = 2000 };
    static char burst[N * (sizeof one - 1) + 64];
    size_t len = 0;
    for (int i = 0; i < N; i++) { memcpy(burst + len, one, sizeof one - 1); len += sizeof one - 1; }
    len += (size_t)snprintf(burst + len, sizeof burst - len, "GET /later HTTP/1.1\r\nHost: a\r\n\r\n");
    pending_d = NULL;
    hits = 0;
    feed(&f, "GET / HT");                            /* a partial head: the buffered path */
    BT_OK(braid_memory_transport_receive(f.m, "TP/1.1\r\nHost: a\r\n\r\n", 19));
    BT_OK(braid_memory_transport_receive(f.m, burst, len));
    int answers = 0;
    for (int i = 0; i < 1000 && !pending_d; i++) answers += count(take(&f), "Hello, World!");
    if (!pending_d) bt_fail(__FILE__, __LINE__, "%d answers, closed %d", answers, closed(&f));
    answers += count(take(&f), "Hello, World!");     /* the rest of those before /later */
    BT_EQ(answers, N + 1);
    /* one more read of 60 KB while /later is pending (the bound allows a read):
     * it fits once the answered requests are dropped from the buffer */
    enum { M = 2200 };
    static char more[M * (sizeof one - 1)];
    for (int i = 0; i < M; i++) memcpy(more + i * (sizeof one - 1), one, sizeof one - 1);
    BT_OK(braid_memory_transport_receive(f.m, more, sizeof more));
    bt_spin(f.loop, 4);
    BT_FALSE(closed(&f));
    BT_OK(braid_deferred_callback(pending_d, response(200, "text/plain", "later", 5),
                                  braid_http_response_free));
    bt_spin(f.loop, 4);
    const char *o = take(&f);
    BT_TRUE(!strncmp(o, "HTTP/1.1 200", 12) && strstr(o, "\r\n\r\nlater") != NULL);
    answers = count(o, "Hello, World!");
    for (int i = 0; i < 1000 && answers < M; i++) answers += count(take(&f), "Hello, World!");
    BT_EQ(answers, M);
    BT_FALSE(closed(&f));
    fx_done(&f);
}
