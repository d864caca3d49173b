/* The HTTP/1.1 client: against scripted server byte streams over memory
 * transports (fake clock: every timeout), against a tiny server written here
 * with the stream API on real loopback sockets (every backend), and HTTPS
 * over braid's TLS with certificates made at test time (memory pump and
 * loopback). */
// ctest-labels: http tls
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include "support/walk.h"
#include "support/tls.h"
#include <braid/http.h>
#include <braid/stream.h>
#include <braid/endpoint.h>
#include <braid/tls.h>

/* braid_http_client_stats as a value, for assertions. */
static struct braid_http_client_stats cstats(const braid_http_client *c) {
    struct braid_http_client_stats st;
    braid_http_client_stats(c, &st);
    return st;
}

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

/* ---- results ----------------------------------------------------------------------- */
typedef struct res {
    int fired;
    int code;                      /* 0: success */
    char msg[512];
    braid_http_client_response *r;        /* buffered mode: owned here */
    /* streaming */
    char body[1 << 16];
    size_t body_len;
    size_t total;
    int ends, end_code, chunks;
    bool pause_at_head;
    bool pause_in_body;
    bool abort_in_body;
} res;

static braid_result got(braid_result r, void *arg) {
    res *s = arg;
    s->fired++;
    s->code = 0;
    s->r = r.value;
    /* buffered: ours now (r.dtor set; freed by res_clear); streaming: borrowed */
    if (s->pause_at_head) braid_http_client_response_pause(s->r);
    return braid_result_ok(NULL);
}
static braid_result failed(braid_result r, void *arg) {
    res *s = arg;
    s->fired++;
    s->code = r.failure->code;
    braid_failure_format(r.failure, s->msg, sizeof s->msg);
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static void on_body(braid_http_client_response *r, const void *buf, size_t len, void *arg) {
    res *s = arg;
    (void)r;
    if (s->body_len + len <= sizeof s->body) {
        memcpy(s->body + s->body_len, buf, len);
        s->body_len += len;
    }
    s->total += len;
    s->chunks++;
    if (s->pause_in_body) braid_http_client_response_pause(r);
    if (s->abort_in_body) braid_http_client_response_abort(r);
}
static void on_end(braid_http_client_response *r, int code, void *arg) {
    res *s = arg;
    (void)r;
    s->ends++;
    s->end_code = code;
}

static void watch(braid_deferred *d, res *s) {
    BT_TRUE(d != NULL);
    BT_OK(braid_deferred_add(d, got, failed, s));
    braid_deferred_unref(d);
}

static void res_clear(res *s, bool owned) {
    if (owned && s->r) braid_http_client_response_free(s->r);
    memset(s, 0, sizeof *s);
}

/* ---- memory connections: the test is the server ------------------------------------ */
typedef struct env {
    braid_loop *loop;
    braid_fake_clock *clock;
    braid_http_client *c;
    braid_memory_transport *m[16];
    int n;
    bool hang;                     /* connects never complete */
    int connects;
    char host[64];
    int port;
} env;

static void no_cancel(braid_deferred *d, void *arg) { (void)d; (void)arg; }

static braid_deferred *mem_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                   braid_factory *f) {
    env *e = arg;
    (void)https;
    e->connects++;
    snprintf(e->host, sizeof e->host, "%s", host);
    e->port = port;
    if (e->hang) return braid_deferred_new_cancellable(loop, no_cancel, NULL);
    braid_protocol *p = braid_factory_build(f, NULL);
    BT_TRUE(p != NULL);
    BT_LT(e->n, 16);
    braid_memory_transport_new(loop, p, &e->m[e->n++]);
    return braid_deferred_succeed(loop, p, NULL);
}

static void env_open(env *e, const braid_http_client_options *o) {
    memset(e, 0, sizeof *e);
    braid_fake_clock_new(BRAID_SECONDS(1000), &e->clock);
    e->loop = bt_loop_new(braid_fake_clock_base(e->clock));
    braid_http_client_options oo = o ? *o : (braid_http_client_options){ 0 };
    oo.connect = mem_connect;
    oo.connect_arg = e;
    BT_OK(braid_http_client_new(e->loop, &oo, &e->c));
}

static void env_close(env *e) {
    braid_http_client_free(e->c);
    braid_loop_run_once(e->loop, BRAID_LOOP_RUN_NOWAIT);
    for (int i = 0; i < e->n; i++) braid_memory_transport_free(e->m[i]);
    braid_loop_run_once(e->loop, BRAID_LOOP_RUN_NOWAIT);
    braid_loop_run_once(e->loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(e->loop);
    braid_fake_clock_free(e->clock);
}

/* What the client wrote on connection i, consumed (static buffer). */
static const char *sent(env *e, int i) {
    static char buf[1 << 16];
    size_t len;
    const void *d = braid_memory_transport_data(e->m[i], &len);
    BT_LT(len, sizeof buf);
    memcpy(buf, d, len);
    buf[len] = 0;
    braid_memory_transport_consume(e->m[i], len);
    return buf;
}

static void feed(env *e, int i, const char *s) {
    /* The server has read the request before it answers. */
    braid_memory_transport_consume(e->m[i], SIZE_MAX);
    BT_OK(braid_memory_transport_receive(e->m[i], s, strlen(s)));
}

static void peer_eof(env *e, braid_memory_transport *m) {
    (void)e;
    braid_memory_transport_consume(m, SIZE_MAX);
    braid_memory_transport_peer_eof(m);
}

static void settle(env *e) {
    for (int i = 0; i < 3; i++) braid_loop_run_once(e->loop, BRAID_LOOP_RUN_NOWAIT);
}

static braid_deferred *get(env *e, const char *url) {
    return braid_http_client_request(e->c, &(braid_http_client_req){ .url = url });
}

/* ---- basics ------------------------------------------------------------------------------- */
BT_TEST(get_content_length) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(get(&e, "http://Example.com/a/b?x=1#frag"), &s);
    BT_EQ(e.n, 1);
    BT_STREQ(e.host, "Example.com");
    BT_EQ(e.port, 80);
    BT_STREQ(sent(&e, 0), "GET /a/b?x=1 HTTP/1.1\r\nHost: Example.com\r\n\r\n");
    BT_EQ(s.fired, 0);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhel");
    BT_EQ(s.fired, 0);
    feed(&e, 0, "lo");
    BT_EQ(s.fired, 1);
    BT_EQ(s.code, 0);
    BT_EQ(s.r->status, 200);
    BT_STREQ(s.r->reason, "OK");
    BT_EQ(s.r->minor_version, 1);
    BT_STREQ(s.r->body, "hello");
    BT_EQ(s.r->body_len, 5);
    BT_STREQ(braid_http_client_response_header(s.r, "content-type"), "text/plain");
    BT_TRUE(braid_http_client_response_header(s.r, "X-None") == NULL);
    BT_STREQ(s.r->url, "http://Example.com/a/b?x=1#frag");
    BT_FALSE(s.r->reused);
    struct braid_http_client_stats st = cstats(e.c);
    BT_EQ(st.idle, 1);
    BT_EQ(st.connections, 1);
    BT_FALSE(mstate(e.m[0]).closed);
    res_clear(&s, true);
    env_close(&e);
}

BT_TEST(pool_reuses_one_connection) {
    env e;
    env_open(&e, NULL);
    for (int i = 0; i < 10; i++) {
        res s = { 0 };
        char url[64];
        snprintf(url, sizeof url, "http://h:8080/%d", i);
        watch(get(&e, url), &s);
        BT_EQ(e.n, 1);
        char want[256];
        snprintf(want, sizeof want, "GET /%d HTTP/1.1\r\nHost: h:8080\r\n\r\n", i);
        BT_STREQ(sent(&e, 0), want);
        feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        BT_EQ(s.fired, 1);
        BT_EQ(s.code, 0);
        BT_EQ(s.r->reused, i > 0);
        res_clear(&s, true);
    }
    struct braid_http_client_stats st = cstats(e.c);
    BT_EQ(st.connections, 1);
    BT_EQ(st.reused, 9);
    BT_EQ(e.connects, 1);
    /* Another origin (scheme, host or port) gets its own connection. */
    res s = { 0 };
    watch(get(&e, "http://h:8081/"), &s);
    BT_EQ(e.n, 2);
    feed(&e, 1, "HTTP/1.1 204 No Content\r\n\r\n");
    BT_EQ(s.r->status, 204);
    BT_EQ(cstats(e.c).idle, 2);
    res_clear(&s, true);
    env_close(&e);
}

BT_TEST(chunked_response_byte_by_byte) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    const char *resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n1;ext=1\r\n \r\n6\r\nworld!\r\n0\r\nTrailer: x\r\n\r\n";
    for (const char *p = resp; *p; p++) {
        BT_EQ(s.fired, 0);
        BT_OK(braid_memory_transport_receive(e.m[0], p, 1));
    }
    BT_EQ(s.fired, 1);
    BT_EQ(s.code, 0);
    BT_STREQ(s.r->body, "hello world!");
    BT_EQ(cstats(e.c).idle, 1);
    res_clear(&s, true);
    /* The connection is reused after a chunked body. */
    watch(get(&e, "http://h/2"), &s);
    BT_EQ(e.n, 1);
    sent(&e, 0);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    BT_EQ(s.code, 0);
    BT_EQ(s.r->body_len, 0);
    BT_STREQ(s.r->body, "");
    res_clear(&s, true);
    env_close(&e);
}

BT_TEST(close_delimited_body) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\n\r\nabc");
    feed(&e, 0, "def");
    BT_EQ(s.fired, 0);
    peer_eof(&e, e.m[0]);
    settle(&e);
    BT_EQ(s.fired, 1);
    BT_EQ(s.code, 0);
    BT_STREQ(s.r->body, "abcdef");
    BT_EQ(cstats(e.c).idle, 0);
    res_clear(&s, true);
    /* Content-Length with "Connection: close": not pooled either. */
    watch(get(&e, "http://h/"), &s);
    BT_EQ(e.n, 2);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx");
    BT_EQ(s.code, 0);
    settle(&e);
    BT_EQ(cstats(e.c).idle, 0);
    BT_TRUE(mstate(e.m[1]).closed || mstate(e.m[1]).disconnecting);
    res_clear(&s, true);
    /* HTTP/1.0 without keep-alive: not pooled. */
    watch(get(&e, "http://h/"), &s);
    BT_EQ(e.n, 3);
    feed(&e, 2, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx");
    BT_EQ(s.code, 0);
    BT_EQ(cstats(e.c).idle, 0);
    res_clear(&s, true);
    /* A body cut short by EOF is an error, not a short body. */
    watch(get(&e, "http://h/"), &s);
    feed(&e, 3, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    peer_eof(&e, e.m[3]);
    settle(&e);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ECONNECTION_LOST);
    BT_TRUE(strstr(s.msg, "middle of the response body") != NULL);
    env_close(&e);
}

BT_TEST(head_204_304_have_no_body) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "HEAD", .url = "http://h/" }), &s);
    BT_STREQ(sent(&e, 0), "HEAD / HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    BT_EQ(s.fired, 1);
    BT_EQ(s.code, 0);
    BT_EQ(s.r->body_len, 0);
    BT_STREQ(braid_http_client_response_header(s.r, "Content-Length"), "1000");
    res_clear(&s, true);
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.r->status, 204);
    res_clear(&s, true);
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: \"x\"\r\n\r\n");
    BT_EQ(s.r->status, 304);
    BT_EQ(s.r->body_len, 0);
    res_clear(&s, true);
    /* 100 Continue before the real response is skipped. */
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    BT_EQ(s.r->status, 200);
    BT_STREQ(s.r->body, "ok");
    res_clear(&s, true);
    BT_EQ(e.n, 1);   /* all on one connection */
    BT_EQ(cstats(e.c).idle, 1);
    env_close(&e);
}

/* ---- requests as sent ---------------------------------------------------------------------- */
BT_TEST(request_bodies_and_headers) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    braid_http_header h[] = { { .name = "X-A", .value = "1" }, { .name = "Accept", .value = "*/*" } };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){
              .method = "POST", .url = "http://h:81/p", .headers = h, .num_headers = 2,
              .body = "hello", .body_len = 5 }), &s);
    BT_STREQ(sent(&e, 0), "POST /p HTTP/1.1\r\nHost: h:81\r\nX-A: 1\r\nAccept: */*\r\n"
                          "Content-Length: 5\r\n\r\nhello");
    feed(&e, 0, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.r->status, 201);
    res_clear(&s, true);
    watch(braid_http_client_request(e.c, &(braid_http_client_req){
              .method = "PUT", .url = "http://h:81/p", .body = "hello world", .body_len = 11,
              .chunked = true }), &s);
    BT_STREQ(sent(&e, 0), "PUT /p HTTP/1.1\r\nHost: h:81\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "b\r\nhello world\r\n0\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s, true);
    /* POST without a body still says Content-Length: 0; a user Host wins. */
    braid_http_header hh[] = { { .name = "Host", .value = "virtual" } };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){
              .method = "POST", .url = "http://h:81/", .headers = hh, .num_headers = 1 }), &s);
    BT_STREQ(sent(&e, 0), "POST / HTTP/1.1\r\nHost: virtual\r\nContent-Length: 0\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s, true);
    /* IPv6 literal: bracketed in Host, bare for connecting. */
    watch(get(&e, "http://[::1]:8080"), &s);
    BT_STREQ(e.host, "::1");
    BT_STREQ(sent(&e, e.n - 1), "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n");
    feed(&e, e.n - 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s, true);
    env_close(&e);
}

BT_TEST(bad_requests_fail_at_once) {
    env e;
    env_open(&e, NULL);
    const char *urls[] = { "ftp://h/", "http://", "http://user@h/", "http://h:0/", "http://h:70000/",
                           "http://h/a b", "http://[::1/", "h/", "http://h:/" };
    for (size_t i = 0; i < sizeof urls / sizeof urls[0]; i++) {
        res s = { 0 };
        watch(get(&e, urls[i]), &s);
        BT_EQ(s.fired, 1);
        BT_ERR(s.code, BRAID_EINVAL);
    }
    braid_http_header inj[] = { { .name = "X", .value = "a\r\nEvil: 1" } };
    braid_http_header badname[] = { { .name = "Bad Name", .value = "1" } };
    braid_http_header cl[] = { { .name = "content-length", .value = "3" } };
    const braid_http_header *hs[] = { inj, badname, cl };
    for (int i = 0; i < 3; i++) {
        res s = { 0 };
        watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .headers = hs[i],
                                                                   .num_headers = 1 }), &s);
        BT_ERR(s.code, BRAID_EINVAL);
    }
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "G T", .url = "http://h/" }), &s);
    BT_ERR(s.code, BRAID_EINVAL);
    BT_EQ(e.n, 0);
    env_close(&e);
}

/* ---- bad responses: a clear failure, and the connection is not reused ----------------------- */
BT_TEST(bad_responses_fail_and_close) {
    struct { const char *resp; int code; } cases[] = {
        { "HTTP/1.1 2x0 OK\r\n\r\n", BRAID_EHTTP_SYNTAX },
        { "HTTX/1.1 200 OK\r\n\r\n", 0 },   /* any parser error */
        { "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", BRAID_EHTTP_FRAMING },
        { "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", BRAID_EHTTP_FRAMING },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", BRAID_EHTTP_CHUNK },
        { "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n", BRAID_EHTTP_CHUNK },
        { "HTTP/1.1 200 OK\nContent-Length: 0\n\n", BRAID_EHTTP_SYNTAX },
        { "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", BRAID_EHTTP },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        env e;
        env_open(&e, NULL);
        res s = { 0 };
        watch(get(&e, "http://h/"), &s);
        feed(&e, 0, cases[i].resp);
        if (!s.fired) bt_fail(__FILE__, __LINE__, "case %zu did not fail", i);
        if (cases[i].code) BT_ERR(s.code, cases[i].code);
        else BT_LT(s.code, 0);
        BT_TRUE(strstr(s.msg, "GET http://h/") != NULL);
        settle(&e);
        BT_TRUE(mstate(e.m[0]).closed);
        BT_EQ(cstats(e.c).idle, 0);
        /* The next request opens a new connection. */
        res s2 = { 0 };
        watch(get(&e, "http://h/"), &s2);
        BT_EQ(e.n, 2);
        feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        BT_EQ(s2.code, 0);
        res_clear(&s2, true);
        env_close(&e);
    }
}

BT_TEST(oversized_head_and_body) {
    env e;
    env_open(&e, &(braid_http_client_options){ .max_head = 256, .max_body = 10 });
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\n");
    char big[300];
    memset(big, 'a', sizeof big);
    memcpy(big, "X-Big: ", 7);
    big[sizeof big - 1] = 0;
    feed(&e, 0, big);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_EHTTP_HEADERS_TOO_LARGE);
    /* Content-Length over the buffered limit fails at the head. */
    res s2 = { 0 };
    watch(get(&e, "http://h/"), &s2);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n");
    BT_ERR(s2.code, BRAID_EHTTP_BODY_TOO_LARGE);
    /* A chunked body past the limit fails as it grows. */
    res s3 = { 0 };
    watch(get(&e, "http://h/"), &s3);
    feed(&e, 2, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n12345678\r\n");
    BT_EQ(s3.fired, 0);
    feed(&e, 2, "8\r\n12345678\r\n");
    BT_ERR(s3.code, BRAID_EHTTP_BODY_TOO_LARGE);
    /* Per-request limit overrides. */
    res s4 = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .max_body = 100 }), &s4);
    feed(&e, 3, "HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world");
    BT_EQ(s4.code, 0);
    res_clear(&s4, true);
    settle(&e);
    for (int i = 0; i < 3; i++) BT_TRUE(mstate(e.m[i]).closed);
    env_close(&e);
}

BT_TEST(stray_bytes_make_connection_unusable) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    /* A second response the client never asked for rides along. */
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naHTTP/1.1 200 OK\r\n");
    BT_EQ(s.code, 0);
    BT_EQ(cstats(e.c).idle, 0);
    res_clear(&s, true);
    /* Bytes arriving on an idle pooled connection: dropped from the pool. */
    watch(get(&e, "http://h/"), &s);
    BT_EQ(e.n, 2);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na");
    BT_EQ(cstats(e.c).idle, 1);
    feed(&e, 1, "junk");
    BT_EQ(cstats(e.c).idle, 0);
    res_clear(&s, true);
    settle(&e);
    BT_TRUE(mstate(e.m[1]).closed);
    env_close(&e);
}

/* ---- the pool: limits, idle timeout, stale connections ------------------------------------- */
BT_TEST(pool_limits_and_idle_timeout) {
    env e;
    env_open(&e, &(braid_http_client_options){ .max_idle_per_host = 2, .idle_timeout = BRAID_SECONDS(5) });
    res s[3] = { 0 };
    for (int i = 0; i < 3; i++) watch(get(&e, "http://h/"), &s[i]);
    BT_EQ(e.n, 3);   /* three concurrent requests: three connections */
    for (int i = 0; i < 3; i++) feed(&e, i, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    for (int i = 0; i < 3; i++) res_clear(&s[i], true);
    struct braid_http_client_stats st = cstats(e.c);
    BT_EQ(st.idle, 2);   /* the oldest surplus one was closed */
    settle(&e);
    BT_TRUE(mstate(e.m[0]).closed);
    BT_FALSE(mstate(e.m[2]).closed);
    /* The most recently used connection serves the next request. */
    watch(get(&e, "http://h/"), &s[0]);
    BT_TRUE(strlen(sent(&e, 2)) > 0);
    feed(&e, 2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s[0].code, 0);
    res_clear(&s[0], true);
    /* Idle for 5 s: closed. */
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(4)));
    BT_EQ(cstats(e.c).idle, 2);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(2)));
    settle(&e);
    BT_EQ(cstats(e.c).idle, 0);
    BT_TRUE(mstate(e.m[1]).closed);
    BT_TRUE(mstate(e.m[2]).closed);
    env_close(&e);
}

BT_TEST(server_closes_pooled_connection) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s, true);
    /* Closed while idle: leaves the pool, the next request connects anew. */
    peer_eof(&e, e.m[0]);
    settle(&e);
    BT_EQ(cstats(e.c).idle, 0);
    watch(get(&e, "http://h/"), &s);
    BT_EQ(e.n, 2);
    sent(&e, 1);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s, true);
    /* Closed just as it was reused (the request already written): an
     * idempotent request is retried once on a fresh connection. */
    watch(get(&e, "http://h/again"), &s);
    BT_EQ(e.n, 2);
    BT_STREQ(sent(&e, 1), "GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    peer_eof(&e, e.m[1]);
    settle(&e);
    BT_EQ(s.fired, 0);
    BT_EQ(e.n, 3);
    BT_STREQ(sent(&e, 2), "GET /again HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 2, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    BT_EQ(s.code, 0);
    BT_STREQ(s.r->body, "ok");
    BT_FALSE(s.r->reused);
    BT_EQ(cstats(e.c).retried, 1);
    res_clear(&s, true);
    /* A POST is not retried. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "POST", .url = "http://h/",
                                                               .body = "x", .body_len = 1 }), &s);
    BT_EQ(e.n, 3);
    braid_memory_transport_consume(e.m[2], SIZE_MAX);
    braid_memory_transport_peer_lost(e.m[2], BRAID_ECONNRESET);
    settle(&e);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ECONNRESET);
    BT_EQ(e.n, 3);
    /* Nor is a request whose fresh connection dies. */
    res s2 = { 0 };
    watch(get(&e, "http://h/"), &s2);
    BT_EQ(e.n, 4);
    peer_eof(&e, e.m[3]);
    settle(&e);
    BT_ERR(s2.code, BRAID_ECONNECTION_LOST);
    BT_EQ(e.n, 4);
    env_close(&e);
}

/* ---- timeouts on the fake clock --------------------------------------------------------------- */
BT_TEST(timeouts) {
    env e;
    env_open(&e, &(braid_http_client_options){ .connect_timeout = BRAID_SECONDS(3),
                                               .header_timeout = BRAID_SECONDS(10),
                                               .body_timeout = BRAID_SECONDS(2) });
    /* connect */
    e.hang = true;
    res s = { 0 };
    watch(get(&e, "http://h/"), &s);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(2)));
    BT_EQ(s.fired, 0);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(2)));
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(s.msg, "connect timeout") != NULL);
    e.hang = false;
    /* response headers: a slow trickle does not extend it */
    res_clear(&s, false);
    watch(get(&e, "http://h/"), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\n");
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(6)));
    feed(&e, 0, "X: 1\r\n");
    BT_EQ(s.fired, 0);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(5)));
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(s.msg, "response header timeout") != NULL);
    settle(&e);
    BT_TRUE(mstate(e.m[0]).closed);
    /* body: the silence between pieces */
    res_clear(&s, false);
    watch(get(&e, "http://h/"), &s);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nab");
    BT_OK(braid_loop_advance(e.loop, BRAID_MSEC(1500)));
    feed(&e, 1, "cd");
    BT_OK(braid_loop_advance(e.loop, BRAID_MSEC(1500)));
    feed(&e, 1, "ef");
    BT_EQ(s.fired, 0);
    BT_OK(braid_loop_advance(e.loop, BRAID_MSEC(2100)));
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(s.msg, "response body timeout") != NULL);
    settle(&e);
    BT_TRUE(mstate(e.m[1]).closed);
    /* Per-request override; BRAID_FOREVER disables. */
    res_clear(&s, false);
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/",
                                                               .header_timeout = BRAID_FOREVER }), &s);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(3600)));
    BT_EQ(s.fired, 0);
    feed(&e, 2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.code, 0);
    res_clear(&s, true);
    env_close(&e);
}

/* ---- cancel --------------------------------------------------------------------------------------- */
BT_TEST(cancel_aborts_request) {
    env e;
    env_open(&e, NULL);
    res s = { 0 };
    braid_deferred *d = get(&e, "http://h/");
    braid_deferred_ref(d);
    watch(d, &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Le");
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ECANCELED);
    settle(&e);
    BT_TRUE(mstate(e.m[0]).aborted);
    BT_EQ(cstats(e.c).idle, 0);
    /* Cancel while connecting. */
    e.hang = true;
    res_clear(&s, false);
    d = get(&e, "http://h/");
    braid_deferred_ref(d);
    watch(d, &s);
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
    BT_ERR(s.code, BRAID_ECANCELED);
    BT_EQ(braid_loop_timer_count(e.loop), 0);
    env_close(&e);
}

BT_TEST(client_free_fails_requests) {
    env e;
    env_open(&e, NULL);
    res s = { 0 }, s2 = { 0 };
    watch(get(&e, "http://h/"), &s);
    watch(get(&e, "http://h/"), &s2);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    res_clear(&s2, true);
    BT_EQ(cstats(e.c).idle, 1);
    braid_http_client_free(e.c);
    BT_ERR(s.code, BRAID_ESHUTDOWN);
    settle(&e);
    BT_TRUE(mstate(e.m[0]).closed);
    BT_TRUE(mstate(e.m[1]).closed);
    e.c = NULL;
    env_close(&e);
}

/* ---- redirects ------------------------------------------------------------------------------------ */
BT_TEST(redirects) {
    env e;
    env_open(&e, NULL);
    /* Off by default: the 302 is the response. */
    res s = { 0 };
    watch(get(&e, "http://h/a"), &s);
    feed(&e, 0, "HTTP/1.1 302 Found\r\nLocation: /b\r\nContent-Length: 3\r\n\r\nxyz");
    BT_EQ(s.r->status, 302);
    BT_STREQ(s.r->body, "xyz");
    res_clear(&s, true);
    /* Followed when asked: relative, absolute-path and absolute locations. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/dir/a", .max_redirects = 5 }), &s);
    sent(&e, 0);
    feed(&e, 0, "HTTP/1.1 301 Moved\r\nLocation: b?q=1\r\nContent-Length: 3\r\n\r\nxyz");
    BT_STREQ(sent(&e, 0), "GET /dir/b?q=1 HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 307 Temporary\r\nLocation: /c\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n");
    BT_STREQ(sent(&e, 0), "GET /c HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 308 Permanent\r\nLocation: http://other:81/d\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(e.n, 2);
    BT_STREQ(sent(&e, 1), "GET /d HTTP/1.1\r\nHost: other:81\r\n\r\n");
    BT_EQ(s.fired, 0);
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
    BT_EQ(s.code, 0);
    BT_STREQ(s.r->body, "done");
    BT_EQ(s.r->redirects, 3);
    BT_STREQ(s.r->url, "http://other:81/d");
    res_clear(&s, true);
    /* 303 after POST: a GET without the body; credentials stay home. */
    braid_http_header auth[] = { { .name = "Authorization", .value = "secret" } };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){
              .method = "POST", .url = "http://h/form", .body = "a=1", .body_len = 3, .max_redirects = 2,
              .headers = auth, .num_headers = 1 }), &s);
    BT_STREQ(sent(&e, 0), "POST /form HTTP/1.1\r\nHost: h\r\nAuthorization: secret\r\nContent-Length: 3\r\n\r\na=1");
    feed(&e, 0, "HTTP/1.1 303 See Other\r\nLocation: http://third/x\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(e.n, 3);
    BT_STREQ(sent(&e, 2), "GET /x HTTP/1.1\r\nHost: third\r\n\r\n");
    feed(&e, 2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.code, 0);
    res_clear(&s, true);
    /* A loop: too many redirects. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/loop", .max_redirects = 2 }), &s);
    for (int i = 0; i < 3; i++) {
        sent(&e, 0);
        feed(&e, 0, "HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n");
    }
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_EHTTP);
    BT_TRUE(strstr(s.msg, "too many redirects") != NULL);
    env_close(&e);
}

/* A redirect elsewhere than http/https fails with the reason; an empty
 * Location is no redirect at all (the 3xx is the answer). Neither is ever
 * taken for a relative path. */
BT_TEST(redirect_to_other_scheme_or_empty) {
    env e;
    env_open(&e, NULL);
    static const char *const bad[] = { "ftp://files.example/x", "FILE:///etc/passwd", "data:text/plain,hi",
                                       "javascript:alert(1)", "mailto:a@b" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        res s = { 0 };
        watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/dir/a", .max_redirects = 5 }),
              &s);
        int k = e.n - 1;                            /* a failed request closes its connection */
        sent(&e, k);
        char resp[256];
        snprintf(resp, sizeof resp, "HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n", bad[i]);
        feed(&e, k, resp);
        settle(&e);
        BT_EQ(s.fired, 1);
        BT_ERR(s.code, BRAID_EHTTP);
        if (!strstr(s.msg, "redirect to an unsupported scheme") || !strstr(s.msg, bad[i]))
            bt_fail(__FILE__, __LINE__, "Location %s: %s", bad[i], s.msg);
        BT_STREQ(sent(&e, e.n - 1), "");            /* nothing was requested after it */
        res_clear(&s, false);
    }
    /* a relative reference with a colon after a slash is still a path */
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/dir/a", .max_redirects = 5 }), &s);
    sent(&e, e.n - 1);
    feed(&e, e.n - 1, "HTTP/1.1 302 Found\r\nLocation: ./b:c\r\nContent-Length: 0\r\n\r\n");
    BT_STREQ(sent(&e, e.n - 1), "GET /dir/./b:c HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, e.n - 1, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    BT_EQ(s.code, 0);
    BT_EQ(s.r->redirects, 1);
    res_clear(&s, true);
    /* empty: returned, not followed to "/" */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/dir/a", .max_redirects = 5 }), &s);
    sent(&e, e.n - 1);
    feed(&e, e.n - 1, "HTTP/1.1 301 Moved\r\nLocation: \r\nContent-Length: 3\r\n\r\nxyz");
    settle(&e);
    BT_EQ(s.fired, 1);
    BT_EQ(s.code, 0);
    BT_EQ(s.r->status, 301);
    BT_EQ(s.r->redirects, 0);
    BT_STREQ(s.r->body, "xyz");
    BT_STREQ(sent(&e, e.n - 1), "");
    res_clear(&s, true);
    env_close(&e);
}

/* ---- streaming bodies with backpressure ------------------------------------------------------------- */
BT_TEST(streaming_body_pause_resume) {
    env e;
    env_open(&e, &(braid_http_client_options){ .body_timeout = BRAID_SECONDS(1) });
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
    BT_EQ(s.fired, 1);   /* at the head */
    BT_EQ(s.code, 0);
    BT_EQ(s.r->status, 200);
    BT_TRUE(s.r->body == NULL);
    feed(&e, 0, "hello ");
    BT_EQ(s.chunks, 1);
    s.pause_in_body = true;
    feed(&e, 0, "wo");
    BT_EQ(s.chunks, 2);
    BT_TRUE(mstate(e.m[0]).reading_paused);
    BT_ERR(braid_memory_transport_receive(e.m[0], "rld!", 4), BRAID_EAGAIN);
    /* No body timeout while paused. */
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(30)));
    BT_EQ(s.ends, 0);
    s.pause_in_body = false;
    braid_http_client_response_resume(s.r);
    BT_FALSE(mstate(e.m[0]).reading_paused);
    feed(&e, 0, "rld!");
    BT_EQ(s.ends, 1);
    BT_EQ(s.end_code, 0);
    BT_EQ(s.body_len, 12);
    BT_TRUE(memcmp(s.body, "hello world!", 12) == 0);
    BT_EQ(cstats(e.c).idle, 1);
    res_clear(&s, false);
    /* The server closes while we are paused with the rest of the body
     * already buffered (it came with the head): it still completes on resume. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    s.pause_at_head = true;
    feed(&e, 0, "HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
                "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n");
    BT_EQ(s.fired, 1);
    BT_EQ(s.chunks, 0);
    peer_eof(&e, e.m[0]);
    settle(&e);
    settle(&e);
    BT_EQ(s.ends, 0);
    braid_http_client_response_resume(s.r);
    BT_EQ(s.chunks, 1);
    BT_EQ(s.ends, 1);
    BT_EQ(s.end_code, 0);
    BT_TRUE(memcmp(s.body, "abcdef", 6) == 0);
    res_clear(&s, false);
    /* Same, but the buffered bytes fall short: the loss is reported on resume. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    BT_EQ(e.n, 2);
    s.pause_at_head = true;
    feed(&e, 1, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc");
    peer_eof(&e, e.m[1]);
    settle(&e);
    settle(&e);
    BT_EQ(s.ends, 0);
    braid_http_client_response_resume(s.r);
    BT_EQ(s.chunks, 1);
    BT_EQ(s.ends, 1);
    BT_ERR(s.end_code, BRAID_ECONNECTION_LOST);
    res_clear(&s, false);
    /* Close-delimited, paused when EOF arrives with bytes held back. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    BT_EQ(e.n, 3);
    feed(&e, 2, "HTTP/1.1 200 OK\r\n\r\n12345");
    BT_EQ(s.chunks, 1);
    braid_http_client_response_pause(s.r);
    peer_eof(&e, e.m[2]);
    settle(&e);
    BT_EQ(s.ends, 0);   /* paused: no callbacks, not even the end */
    braid_http_client_response_resume(s.r);
    BT_EQ(s.ends, 1);
    BT_EQ(s.end_code, 0);
    res_clear(&s, false);
    /* Abort from inside on_body: the connection is closed, on_end not called. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    BT_EQ(e.n, 4);
    s.abort_in_body = true;
    feed(&e, 3, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
    BT_EQ(s.chunks, 1);
    BT_EQ(s.ends, 0);
    settle(&e);
    BT_TRUE(mstate(e.m[3]).aborted);
    res_clear(&s, false);
    /* A streamed body that stalls: on_end gets the timeout. */
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = on_body,
                                                               .on_end = on_end, .arg = &s }), &s);
    BT_EQ(e.n, 5);
    feed(&e, 4, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nabc");
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(2)));
    BT_EQ(s.ends, 1);
    BT_ERR(s.end_code, BRAID_ETIMEDOUT);
    res_clear(&s, false);
    env_close(&e);
}

/* ---- a tiny HTTP server on the stream API (real sockets) ------------------------------------------- */
typedef struct srv {
    braid_listener *l;
    braid_factory f;
    int port;
    int conns, requests, lost;
    bool close_after;              /* close every connection after one response, silently */
} srv;

typedef struct sconn {
    braid_protocol base;
    char in[1 << 16];
    size_t len;
} sconn;

static void s_made(braid_protocol *p) { ((srv *)p->user)->conns++; }
static void s_lost(braid_protocol *p, const braid_failure *f) { (void)f; ((srv *)p->user)->lost++; }

static void s_data(braid_protocol *p, const void *buf, size_t len) {
    sconn *k = (sconn *)p;
    srv *sv = p->user;
    if (k->len + len > sizeof k->in) { braid_transport_abort(p->transport); return; }
    memcpy(k->in + k->len, buf, len);
    k->len += len;
    for (;;) {
        braid_http_header h[32];
        braid_http_message m;
        int n = braid_http_parse_request(&m, h, 32, k->in, k->len, 0, NULL);
        if (n == BRAID_EHTTP_INCOMPLETE) return;
        if (n < 0) { braid_transport_abort(p->transport); return; }
        size_t body = m.body == BRAID_HTTP_BODY_LENGTH ? (size_t)m.content_length : 0;
        if (k->len < (size_t)n + body) return;
        char path[256];
        snprintf(path, sizeof path, "%.*s", (int)m.target_len, m.target);
        sv->requests++;
        char out[8192];
        int ol;
        if (!strcmp(path, "/chunked")) {
            ol = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                           "4\r\nbrai\r\n1\r\nd\r\n0\r\n\r\n");
        } else if (!strcmp(path, "/echo")) {
            ol = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%.*s", body,
                          (int)body, k->in + n);
        } else if (!strcmp(path, "/big")) {
            ol = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n");
            braid_transport_write(p->transport, out, (size_t)ol);
            static char blob[200000];
            memset(blob, 'z', sizeof blob);
            braid_transport_write(p->transport, blob, sizeof blob);
            ol = 0;
        } else {
            ol = snprintf(out, sizeof out, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n%s", strlen(path), path);
        }
        if (ol) braid_transport_write(p->transport, out, (size_t)ol);
        memmove(k->in, k->in + n + body, k->len - (size_t)n - body);
        k->len -= (size_t)n + body;
        if (sv->close_after) { braid_transport_close(p->transport, BRAID_FOREVER); return; }
    }
}
static const braid_protocol_ops s_ops = { .connection_made = s_made, .data_received = s_data,
                                          .connection_lost = s_lost };

static void srv_open(srv *sv, braid_loop *loop, braid_factory *wrap_inner_for) {
    memset(sv, 0, sizeof *sv);
    braid_factory_init(&sv->f, &s_ops, sizeof(sconn), sv);
    (void)wrap_inner_for;
}

static void srv_listen(srv *sv, braid_loop *loop, braid_factory *f) { sv->l = bt_listen_tcp(loop, f, &sv->port); }

BT_IO_TEST(loopback_sequential_requests_one_connection) {
    braid_loop *loop = bt_loop_new(NULL);
    srv sv;
    srv_open(&sv, loop, NULL);
    srv_listen(&sv, loop, &sv.f);
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, NULL, &c));
    char url[128];
    for (int i = 0; i < 20; i++) {
        res s = { 0 };
        snprintf(url, sizeof url, "http://127.0.0.1:%d/n%d", sv.port, i);
        watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
        BT_RUN_UNTIL(loop, s.fired, 10000);
        BT_EQ(s.fired, 1);
        BT_EQ(s.code, 0);
        char want[16];
        snprintf(want, sizeof want, "/n%d", i);
        BT_STREQ(s.r->body, want);
        res_clear(&s, true);
    }
    BT_EQ(sv.conns, 1);
    BT_EQ(sv.requests, 20);
    BT_EQ(cstats(c).connections, 1);
    /* chunked, a POST body, a body larger than one read */
    res s = { 0 };
    snprintf(url, sizeof url, "http://127.0.0.1:%d/chunked", sv.port);
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_STREQ(s.r->body, "braid");
    res_clear(&s, true);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/echo", sv.port);
    watch(braid_http_client_request(c, &(braid_http_client_req){ .method = "POST", .url = url,
                                                             .body = "payload", .body_len = 7 }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_STREQ(s.r->body, "payload");
    res_clear(&s, true);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/big", sv.port);
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_EQ(s.r->body_len, 200000);
    BT_EQ(s.r->body[199999], 'z');
    res_clear(&s, true);
    BT_EQ(sv.conns, 1);
    braid_http_client_free(c);
    braid_listener_close(sv.l);
    BT_RUN_UNTIL_NOWAIT(loop, sv.lost >= sv.conns, 100);
    bt_spin(loop, 5);
    bt_loop_destroy(loop);
}

BT_IO_TEST(loopback_streaming_backpressure) {
    braid_loop *loop = bt_loop_new(NULL);
    srv sv;
    srv_open(&sv, loop, NULL);
    srv_listen(&sv, loop, &sv.f);
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, NULL, &c));
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/big", sv.port);
    static res s;
    memset(&s, 0, sizeof s);
    s.pause_at_head = true;   /* from the Deferred's callback: nothing more is read */
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url, .on_body = on_body, .on_end = on_end,
                                                             .arg = &s }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    /* Paused as soon as the head was in: the body stops arriving. */
    size_t before = s.total;
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(s.total, before);
    BT_EQ(s.ends, 0);
    BT_LT(s.total, 200000);
    /* Then pause after every piece and resume from the loop's side. */
    s.pause_in_body = true;
    int resumes = 0;
    s.chunks = 0;
    braid_http_client_response_resume(s.r);   /* from the pause at the head */
    for (int i = 0; i < 100000 && !s.ends; i++) {
        if (s.chunks > resumes) {   /* paused in on_body: let it go on */
            braid_http_client_response_resume(s.r);
            resumes++;
        }
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    BT_EQ(s.ends, 1);
    BT_EQ(s.end_code, 0);
    BT_EQ(s.total, 200000);
    BT_GT(resumes, 2);
    BT_GT(s.chunks, 2);
    braid_http_client_free(c);
    braid_listener_close(sv.l);
    BT_RUN_UNTIL_NOWAIT(loop, sv.lost >= sv.conns, 100);
    bt_spin(loop, 5);
    bt_loop_destroy(loop);
}

/* The server closes each connection after its response without saying so:
 * the client either sees the close while the connection is idle or retries
 * the request once on a fresh connection; every request succeeds. */
BT_IO_TEST(loopback_server_closes_keepalive) {
    braid_loop *loop = bt_loop_new(NULL);
    srv sv;
    srv_open(&sv, loop, NULL);
    srv_listen(&sv, loop, &sv.f);
    sv.close_after = true;
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, NULL, &c));
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/x", sv.port);
    for (int i = 0; i < 5; i++) {
        res s = { 0 };
        watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
        BT_RUN_UNTIL(loop, s.fired, 10000);
        BT_EQ(s.fired, 1);
        BT_EQ(s.code, 0);
        BT_STREQ(s.r->body, "/x");
        res_clear(&s, true);
        if (i == 2) {   /* and once, reuse it before the FIN can have been seen */
            res s2 = { 0 };
            watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s2);
            BT_RUN_UNTIL(loop, s2.fired, 10000);
            BT_EQ(s2.fired, 1);
            BT_EQ(s2.code, 0);
            res_clear(&s2, true);
        }
    }
    BT_EQ(sv.requests, 6);
    BT_EQ(sv.conns, 6);
    braid_http_client_free(c);
    braid_listener_close(sv.l);
    BT_RUN_UNTIL_NOWAIT(loop, sv.lost >= sv.conns, 100);
    bt_spin(loop, 5);
    bt_loop_destroy(loop);
}

BT_IO_TEST(loopback_connection_refused) {
    braid_loop *loop = bt_loop_new(NULL);
    srv sv;
    srv_open(&sv, loop, NULL);
    srv_listen(&sv, loop, &sv.f);
    int port = sv.port;
    braid_listener_close(sv.l);
    bt_spin(loop, 5);
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, NULL, &c));
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/", port);
    res s = { 0 };
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, -ECONNREFUSED);
    BT_TRUE(strstr(s.msg, "cannot connect") != NULL);
    braid_http_client_free(c);
    bt_spin(loop, 5);
    bt_loop_destroy(loop);
}

/* ---- HTTP over TLS --------------------------------------------------------------------------------------- */

/* Memory pump: the client's connection meets a TLS server glue in memory. */
typedef struct tls_env {
    braid_tls_factory stf;
    srv sv;
    braid_pump *pumps[4];
    int n;
} tls_env;

static braid_deferred *pump_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                    braid_factory *f) {
    tls_env *te = arg;
    BT_TRUE(https);
    BT_STREQ(host, "localhost");
    BT_EQ(port, 443);
    braid_protocol *cp = braid_factory_build(f, NULL);
    braid_protocol *sp = braid_factory_build(&te->stf.base, NULL);
    braid_pump_new(loop, cp, sp, &te->pumps[te->n++]);
    return braid_deferred_succeed(loop, cp, NULL);
}

static void pump_until(braid_loop *loop, tls_env *te, res *s) {
    for (int i = 0; i < 1000 && !s->fired; i++) {
        for (int j = 0; j < te->n; j++) braid_pump_flush(te->pumps[j]);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    BT_EQ(s->fired, 1);
}

BT_TEST(https_over_memory_pump) {
    braid_loop *loop = bt_loop_new(NULL);
    tls_env te;
    memset(&te, 0, sizeof te);
    srv_open(&te.sv, loop, NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    BT_OK(braid_tls_factory_init(&te.stf, &te.sv.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, &(braid_http_client_options){ .tls_ctx = cctx, .connect = pump_connect,
                                                                    .connect_arg = &te }, &c));
    for (int i = 0; i < 3; i++) {
        res s = { 0 };
        watch(braid_http_client_request(c, &(braid_http_client_req){ .url = "https://localhost/secret" }), &s);
        pump_until(loop, &te, &s);
        BT_EQ(s.code, 0);
        BT_STREQ(s.r->body, "/secret");
        BT_EQ(s.r->reused, i > 0);
        res_clear(&s, true);
    }
    BT_EQ(te.n, 1);
    BT_EQ(te.sv.conns, 1);
    braid_http_client_free(c);
    for (int j = 0; j < te.n; j++) braid_pump_flush(te.pumps[j]);
    bt_spin(loop, 5);
    for (int j = 0; j < te.n; j++) braid_pump_free(te.pumps[j]);
    bt_spin(loop, 5);
    braid_tls_factory_close(&te.stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

static braid_deferred *loopback_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                        braid_factory *f) {
    (void)arg;
    (void)host;
    (void)https;
    return braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port }, f);
}

BT_IO_TEST(https_over_loopback) {
    braid_loop *loop = bt_loop_new(NULL);
    srv sv;
    srv_open(&sv, loop, NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sv.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    srv_listen(&sv, loop, &stf.base);
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, &(braid_http_client_options){ .tls_ctx = cctx, .connect = loopback_connect },
                                &c));
    char url[128];
    for (int i = 0; i < 5; i++) {
        res s = { 0 };
        snprintf(url, sizeof url, "https://localhost:%d/n%d", sv.port, i);
        watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
        BT_RUN_UNTIL(loop, s.fired, 10000);
        BT_EQ(s.fired, 1);
        if (s.code) bt_fail(__FILE__, __LINE__, "https: %s", s.msg);
        char want[16];
        snprintf(want, sizeof want, "/n%d", i);
        BT_STREQ(s.r->body, want);
        res_clear(&s, true);
    }
    BT_EQ(sv.conns, 1);
    snprintf(url, sizeof url, "https://localhost:%d/big", sv.port);
    res s = { 0 };
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_EQ(s.r->body_len, 200000);
    res_clear(&s, true);
    /* Verification is on: a client that does not trust the test CA refuses. */
    braid_http_client *c2;
    braid_tls_ctx *other = bt_tls_client_ctx(&(braid_tls_options){ .ca_pem = bt_tls_world()->rogue_ca.cert_pem });
    BT_OK(braid_http_client_new(loop, &(braid_http_client_options){ .tls_ctx = other, .connect = loopback_connect },
                                &c2));
    snprintf(url, sizeof url, "https://localhost:%d/", sv.port);
    watch(braid_http_client_request(c2, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ETLS_UNKNOWN_CA);
    /* the message is TLS's reason first, not a "connection closed" of ours */
    char want[256];
    snprintf(want, sizeof want, "GET %s: server certificate is not issued by a trusted CA", url);
    if (strncmp(s.msg, want, strlen(want)) || strstr(s.msg, "connection closed"))
        bt_fail(__FILE__, __LINE__, "TLS failure reads: %s", s.msg);
    res_clear(&s, false);
    /* ... and the name must match. */
    snprintf(url, sizeof url, "https://wrong.example:%d/", sv.port);
    watch(braid_http_client_request(c, &(braid_http_client_req){ .url = url }), &s);
    BT_RUN_UNTIL(loop, s.fired, 10000);
    BT_EQ(s.fired, 1);
    BT_ERR(s.code, BRAID_ETLS_HOSTNAME);
    res_clear(&s, false);
    braid_http_client_free(c);
    braid_http_client_free(c2);
    braid_listener_close(sv.l);
    BT_RUN_UNTIL_NOWAIT(loop, sv.lost >= sv.conns, 200);
    bt_spin(loop, 5);
    braid_tls_factory_close(&stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    braid_tls_ctx_unref(other);
    bt_loop_destroy(loop);
}

/* ---- allocation failures: every one fails cleanly, nothing leaks ------------------------------------ */
static braid_deferred *oom_connect(void *arg, braid_loop *loop, const char *host, int port, bool https,
                                   braid_factory *f) {
    env *e = arg;
    (void)host, (void)port, (void)https;
    braid_protocol *p = braid_factory_build(f, NULL);
    if (!p) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "build"));
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    if (!m) {
        p->ops->destroy(p);   /* never attached: release it ourselves */
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "transport"));
    }
    e->m[e->n++] = m;
    return braid_deferred_succeed(loop, p, NULL);
}

static void oom_feed(env *e, const char *s) {
    if (!e->n) return;
    braid_memory_transport_consume(e->m[e->n - 1], SIZE_MAX);
    (void)braid_memory_transport_receive(e->m[e->n - 1], s, strlen(s));
}

static int oom_scenario(void *arg) {
    braid_loop *loop = arg;
    env e;
    memset(&e, 0, sizeof e);
    e.loop = loop;
    int rc = braid_http_client_new(loop, &(braid_http_client_options){ .connect = oom_connect, .connect_arg = &e },
                                   &e.c);
    if (rc < 0) return rc;
    res s[2];
    memset(s, 0, sizeof s);
    int result = 0;
    for (int i = 0; i < 2 && !result; i++) {
        braid_http_header h[] = { { .name = "X-A", .value = "1" } };
        braid_deferred *d = braid_http_client_request(e.c, &(braid_http_client_req){
            .method = "PUT", .url = "http://h/p", .headers = h, .num_headers = 1, .body = "abc", .body_len = 3,
            .max_redirects = 1 });
        if (!d) {
            result = BRAID_ENOMEM;
            break;
        }
        if (braid_deferred_add(d, got, failed, &s[i]) < 0) {
            braid_deferred_cancel(d);
            braid_deferred_unref(d);
            result = BRAID_ENOMEM;
            break;
        }
        braid_deferred_unref(d);
        if (!s[i].fired) oom_feed(&e, "HTTP/1.1 307 Temporary\r\nLocation: /q\r\nContent-Length: 1\r\n\r\nx");
        if (!s[i].fired) oom_feed(&e, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-B: 2\r\n\r\n"
                                      "5\r\nhello\r\n0\r\n\r\n");
        if (!s[i].fired) result = BRAID_EINVAL;
        else if (s[i].code) result = s[i].code;
        else if (strcmp(s[i].r->body, "hello") || s[i].r->redirects != 1) result = BRAID_EINVAL;
    }
    if (!result && e.n != 1) result = BRAID_EINVAL;   /* one connection for all of it */
    braid_http_client_free(e.c);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    for (int i = 0; i < e.n; i++) braid_memory_transport_free(e.m[i]);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    for (int i = 0; i < 2; i++) res_clear(&s[i], true);
    return result;
}

BT_TEST(allocation_failures) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "client", .arg = loop, .body = oom_scenario,
                                                 .loop = loop, .warm_up = true, .max_runs = 2000 });
    BT_GT(r.runs, 20);   /* the walk went through the whole scenario */
    bt_loop_destroy(loop);
}

/* ---- streamed uploads ------------------------------------------------------------------------------------ */
typedef struct upsrc {
    int calls;
    size_t sent, total, piece;
    bool manual;                   /* the test writes, not the source */
    braid_http_upload *u;
} upsrc;

static void source(braid_http_upload *u, void *arg) {
    upsrc *s = arg;
    s->calls++;
    s->u = u;
    if (s->manual) return;
    static char pattern[65536];
    for (size_t i = 0; i < sizeof pattern; i++) pattern[i] = (char)('a' + i % 26);
    if (s->sent < s->total) {
        size_t n = s->total - s->sent < s->piece ? s->total - s->sent : s->piece;
        BT_OK(braid_http_upload_write(u, pattern, n));
        s->sent += n;
    }
    if (s->sent == s->total) BT_OK(braid_http_upload_end(u));
}

BT_TEST(streamed_chunked_upload_with_backpressure) {
    env e;
    env_open(&e, NULL);
    upsrc up = { .total = 100000, .piece = 30000 };
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "POST", .url = "http://h/up",
                                                               .body_source = source, .arg = &up }), &s);
    static char wire[300000];
    size_t wl = 0;
    BT_EQ(up.calls, 1);   /* produced once; more only as the peer reads */
    for (int i = 0; i < 100 && wl < sizeof wire; i++) {
        size_t len;
        const void *d = braid_memory_transport_data(e.m[0], &len);
        if (!len) break;
        memcpy(wire + wl, d, len);
        wl += len;
        int before = up.calls;
        braid_memory_transport_consume(e.m[0], len);
        if (up.sent < up.total) BT_EQ(up.calls, before + 1);   /* drained: asked for more */
    }
    BT_EQ(up.sent, 100000);
    BT_GE(up.calls, 4);
    /* What the server got: a chunked POST carrying exactly the body. */
    braid_http_header h[16];
    braid_http_message m;
    int n = braid_http_parse_request(&m, h, 16, wire, wl, 0, NULL);
    BT_GT(n, 0);
    BT_EQ(m.body, BRAID_HTTP_BODY_CHUNKED);
    braid_http_chunked ch;
    braid_http_chunked_init(&ch, 0);
    size_t out = 0;
    BT_EQ(braid_http_chunked_decode(&ch, wire + n, wl - (size_t)n, &out), (ssize_t)(wl - (size_t)n));
    BT_EQ(out, 100000);
    for (size_t i = 0; i < out; i++)
        if (wire[n + (ssize_t)i] != (char)('a' + (i % 30000) % 26)) bt_fail(__FILE__, __LINE__, "byte %zu", i);
    BT_EQ(s.fired, 0);
    feed(&e, 0, "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.r->status, 201);
    BT_EQ(cstats(e.c).idle, 1);   /* a finished upload: reusable */
    res_clear(&s, true);
    env_close(&e);
}

BT_TEST(streamed_upload_with_length) {
    env e;
    env_open(&e, &(braid_http_client_options){ .header_timeout = BRAID_SECONDS(5) });
    upsrc up = { .manual = true };
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "PUT", .url = "http://h/f",
                                                               .body_source = source, .body_len = 10,
                                                               .arg = &up }), &s);
    BT_EQ(up.calls, 1);
    /* No header timeout while the upload is open. */
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(60)));
    BT_EQ(s.fired, 0);
    BT_OK(braid_http_upload_write(up.u, "abcd", 4));
    BT_ERR(braid_http_upload_write(up.u, "0123456", 7), BRAID_EINVAL);
    BT_OK(braid_http_upload_write(up.u, "efghij", 6));
    BT_OK(braid_http_upload_end(up.u));
    BT_STREQ(sent(&e, 0), "PUT /f HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\nabcdefghij");
    BT_ERR(braid_http_upload_write(up.u, "x", 1), BRAID_ESHUTDOWN);
    /* ... and it starts once the upload ended. */
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(6)));
    BT_ERR(s.code, BRAID_ETIMEDOUT);
    res_clear(&s, false);
    /* Ending short of the announced length fails the request. */
    memset(&up, 0, sizeof up);
    up.manual = true;
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "PUT", .url = "http://h/f",
                                                               .body_source = source, .body_len = 10,
                                                               .arg = &up }), &s);
    BT_OK(braid_http_upload_write(up.u, "abc", 3));
    BT_ERR(braid_http_upload_end(up.u), BRAID_EINVAL);
    BT_ERR(s.code, BRAID_EINVAL);
    res_clear(&s, false);
    /* The server answers before the upload is over: the response stands,
     * the connection is not reused. */
    memset(&up, 0, sizeof up);
    up.manual = true;
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .method = "POST", .url = "http://h/f",
                                                               .body_source = source, .arg = &up }), &s);
    BT_EQ(e.n, 3);
    BT_OK(braid_http_upload_write(up.u, "abc", 3));
    feed(&e, 2, "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s.r->status, 413);
    BT_EQ(cstats(e.c).idle, 0);
    res_clear(&s, true);
    env_close(&e);
}

/* ---- re-entrancy: user code calling back in from the client's callbacks ---------------------------------- */
typedef struct chain {
    env *e;
    int step;
    res last;
    bool free_client;
} chain;

static braid_result chain_next(braid_result r, void *arg) {
    chain *ch = arg;
    ch->step++;
    braid_result_drop(r);   /* frees the response */
    if (ch->free_client) {
        braid_http_client_free(ch->e->c);
        ch->e->c = NULL;
        return braid_result_ok(NULL);
    }
    if (ch->step < 3) {
        braid_deferred *d = get(ch->e, "http://h/next");
        BT_OK(braid_deferred_add(d, chain_next, failed, ch));
        braid_deferred_unref(d);
    }
    return braid_result_ok(NULL);
}

BT_TEST(requests_from_inside_callbacks) {
    env e;
    env_open(&e, NULL);
    chain ch = { .e = &e };
    braid_deferred *d = get(&e, "http://h/first");
    BT_OK(braid_deferred_add(d, chain_next, failed, &ch));
    braid_deferred_unref(d);
    for (int i = 0; i < 3; i++) {
        BT_EQ(ch.step, i);
        feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    }
    BT_EQ(ch.step, 3);
    BT_EQ(e.n, 1);   /* the connection was back in the pool before each callback ran */
    /* Freeing the client from inside a callback. */
    ch.free_client = true;
    d = get(&e, "http://h/last");
    BT_OK(braid_deferred_add(d, chain_next, failed, &ch));
    braid_deferred_unref(d);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    BT_EQ(ch.step, 4);
    BT_TRUE(e.c == NULL);
    settle(&e);
    BT_TRUE(mstate(e.m[0]).closed);
    env_close(&e);
}

static void ignore_body(braid_http_client_response *r, const void *buf, size_t len, void *arg) {
    (void)r, (void)buf, (void)len, (void)arg;
}

static void end_then_free(braid_http_client_response *r, int code, void *arg) {
    env *e = arg;
    (void)r;
    BT_EQ(code, 0);
    braid_http_client_free(e->c);
    e->c = NULL;
}

BT_TEST(client_free_from_on_end) {
    env e;
    env_open(&e, NULL);
    res s0 = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = NULL,
                                                               .on_end = end_then_free, .arg = &e }), &s0);
    /* on_end without on_body is buffered mode: on_end is not called there */
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_TRUE(e.c != NULL);
    BT_EQ(s0.code, 0);
    res_clear(&s0, true);
    res s = { 0 };
    watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .on_body = ignore_body,
                                                               .on_end = end_then_free, .arg = &e }), &s);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc");
    BT_TRUE(e.c == NULL);
    settle(&e);
    env_close(&e);
}

/* ---- max_per_host: requests beyond it wait for a connection ----------------------------------------------- */
BT_TEST(max_per_host_queues_requests) {
    env e;
    env_open(&e, &(braid_http_client_options){ .max_per_host = 2, .connect_timeout = BRAID_SECONDS(5) });
    res s[5];
    memset(s, 0, sizeof s);
    for (int i = 0; i < 4; i++) {
        char url[32];
        snprintf(url, sizeof url, "http://h/%d", i);
        watch(get(&e, url), &s[i]);
    }
    BT_EQ(e.n, 2);
    BT_EQ(cstats(e.c).waiting, 2);
    /* Another origin is not held up. */
    watch(get(&e, "http://other/"), &s[4]);
    BT_EQ(e.n, 3);
    feed(&e, 2, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s[4].code, 0);
    /* The first response frees connection 0: request 2 (in order) takes it. */
    BT_STREQ(sent(&e, 0), "GET /0 HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s[0].code, 0);
    BT_STREQ(sent(&e, 0), "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n");
    BT_EQ(cstats(e.c).waiting, 1);
    /* Connection 1 closes after its response: request 3 gets a new one. */
    feed(&e, 1, "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s[1].code, 0);
    settle(&e);
    BT_EQ(e.n, 4);
    BT_STREQ(sent(&e, 3), "GET /3 HTTP/1.1\r\nHost: h\r\n\r\n");
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    feed(&e, 3, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    for (int i = 0; i < 5; i++) {
        BT_EQ(s[i].fired, 1);
        BT_EQ(s[i].code, 0);
        res_clear(&s[i], true);
    }
    /* Both slots busy: a waiting request times out (connect timeout) or is
     * cancelled without touching the busy connections. */
    watch(get(&e, "http://h/a"), &s[0]);
    watch(get(&e, "http://h/b"), &s[1]);
    BT_EQ(e.n, 4);
    watch(get(&e, "http://h/c"), &s[2]);
    braid_deferred *d = get(&e, "http://h/d");
    braid_deferred_ref(d);
    watch(d, &s[3]);
    BT_EQ(cstats(e.c).waiting, 2);
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
    BT_ERR(s[3].code, BRAID_ECANCELED);
    BT_EQ(cstats(e.c).waiting, 1);
    BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(6)));
    BT_ERR(s[2].code, BRAID_ETIMEDOUT);
    BT_EQ(cstats(e.c).waiting, 0);
    BT_EQ(s[0].fired + s[1].fired, 0);
    feed(&e, 0, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    feed(&e, 3, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    BT_EQ(s[0].code + s[1].code, 0);
    res_clear(&s[0], true);
    res_clear(&s[1], true);
    env_close(&e);
}

/* ---- mangled responses: never a crash, a hang or a leak --------------------------------------------------- */
BT_TEST(mangled_responses) {
    const char *base[] = {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n",
    };
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (int round = 0; round < 300; round++) {
        env e;
        env_open(&e, &(braid_http_client_options){ .header_timeout = BRAID_SECONDS(1),
                                                   .body_timeout = BRAID_SECONDS(1) });
        res s = { 0 };
        bool stream = round % 2;
        watch(braid_http_client_request(e.c, &(braid_http_client_req){ .url = "http://h/", .max_redirects = 1,
                                                                   .on_body = stream ? on_body : NULL,
                                                                   .on_end = on_end, .arg = &s }), &s);
        char buf[256];
        const char *b = base[round % 3];
        size_t len = strlen(b);
        memcpy(buf, b, len);
        for (int m = 0; m < 1 + round % 4; m++) {   /* flip, drop or duplicate a byte */
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t at = (size_t)(seed >> 33) % len;
            int op = (int)(seed >> 20) % 3;
            if (op == 0) buf[at] = (char)(seed >> 40);
            else if (op == 1) { memmove(buf + at, buf + at + 1, len - at - 1); len--; }
            else if (len < sizeof buf - 1) { memmove(buf + at + 1, buf + at, len - at); len++; }
        }
        /* Fed in random slices, then the connection ends; the clock runs out. */
        size_t off = 0;
        while (off < len && e.n && !mstate(e.m[e.n - 1]).closed) {
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            size_t n = 1 + (size_t)(seed >> 40) % 16;
            if (n > len - off) n = len - off;
            braid_memory_transport_consume(e.m[e.n - 1], SIZE_MAX);
            (void)braid_memory_transport_receive(e.m[e.n - 1], buf + off, n);
            off += n;
        }
        for (int i = 0; i < e.n; i++) peer_eof(&e, e.m[i]);
        settle(&e);
        BT_OK(braid_loop_advance(e.loop, BRAID_SECONDS(2)));
        settle(&e);
        BT_EQ(s.fired, 1);
        if (stream && s.code == 0) BT_EQ(s.ends, 1);
        res_clear(&s, !stream);
        env_close(&e);
    }
}
