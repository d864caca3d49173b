/* TLS as a protocol wrapper: over the in-memory pump, TCP, Unix sockets and
 * pipes; STARTTLS; handshake timeout on the fake clock; close_notify; flow
 * control through TLS (a never-reading peer keeps the writer under the cap);
 * small writes aggregated into few records; bad input fails one connection
 * only; allocation-failure walk. */
// ctest-labels: tls
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include "support/tls.h"
#include "support/walk.h"
#include <braid/stream.h>
#include <braid/tls.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <unistd.h>


/* ---- a recording application protocol (test-owned) ----------------------------- */
typedef struct app {
    braid_protocol base;
    char in[1 << 16];
    size_t inlen;
    uint64_t total_in;
    int made, lost, lost_code, handshakes;
    bool echo;
    bool reused;
    char alpn[32];
    char peer[256];
    char lost_detail[256];
    int tls_error;
    /* STARTTLS roles */
    braid_tls_ctx *starttls_ctx;
    bool starttls_client;
} app;

static void app_made(braid_protocol *p) { ((app *)p)->made++; }
static void app_data(braid_protocol *p, const void *buf, size_t len) {
    app *a = (app *)p;
    size_t room = sizeof a->in - a->inlen;
    memcpy(a->in + a->inlen, buf, len < room ? len : room);
    a->inlen += len < room ? len : room;
    a->total_in += len;
    if (a->echo) braid_transport_write(p->transport, buf, len);
}
static void app_lost(braid_protocol *p, const braid_failure *f) {
    app *a = (app *)p;
    a->lost++;
    a->lost_code = f->code;
    const char *d = "";
    a->tls_error = braid_tls_transport_error(p->transport, &d);
    snprintf(a->lost_detail, sizeof a->lost_detail, "%s", d);
}
static const braid_protocol_ops app_ops = { .connection_made = app_made, .data_received = app_data,
                                            .connection_lost = app_lost };

static void on_hs(braid_protocol *p, const braid_tls_info *info, void *arg) {
    app *a = (app *)p;
    (void)arg;
    a->handshakes++;
    a->reused = info->session_reused;
    snprintf(a->alpn, sizeof a->alpn, "%s", info->alpn);
    snprintf(a->peer, sizeof a->peer, "%s", info->peer_subject);
    BT_TRUE(braid_tls_transport_info(p->transport) == info);
}

typedef struct afactory { braid_factory f; app *pool; int n, used; } afactory;
static braid_protocol *af_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    afactory *af = (afactory *)f;
    if (af->used == af->n) return NULL;
    return &af->pool[af->used++].base;
}
static void af_init(afactory *af, app *pool, int n) {
    memset(af, 0, sizeof *af);
    memset(pool, 0, sizeof *pool * (size_t)n);
    for (int i = 0; i < n; i++) pool[i].base.ops = &app_ops;
    af->f.build_protocol = af_build;
    af->pool = pool;
    af->n = n;
}

/* A TLS pair over the memory pump. */
typedef struct pair {
    braid_loop *loop;
    braid_tls_ctx *sctx, *cctx;
    afactory sf, cf;
    app s[2], c[2];
    braid_tls_factory stf, ctf;
    braid_pump *pump;
} pair;

static void pair_open(pair *pr, braid_loop *loop, const char *host, const char *salpn, const char *calpn,
                      const btc_cert *cert) {
    memset(pr, 0, sizeof *pr);
    pr->loop = loop;
    pr->sctx = bt_tls_server_ctx(cert, &(braid_tls_options){ .alpn = salpn });
    pr->cctx = bt_tls_client_ctx(&(braid_tls_options){ .alpn = calpn });
    af_init(&pr->sf, pr->s, 2);
    af_init(&pr->cf, pr->c, 2);
    BT_OK(braid_tls_factory_init(&pr->stf, &pr->sf.f, &(braid_tls_wrap_options){
        .ctx = pr->sctx, .handshake_done = on_hs }));
    BT_OK(braid_tls_factory_init(&pr->ctf, &pr->cf.f, &(braid_tls_wrap_options){
        .ctx = pr->cctx, .server_name = host, .handshake_done = on_hs }));
    braid_protocol *cg = braid_factory_build(&pr->ctf.base, NULL);
    braid_protocol *sg = braid_factory_build(&pr->stf.base, NULL);
    BT_TRUE(cg && sg);
    braid_pump_new(loop, cg, sg, &pr->pump);
    BT_TRUE(pr->pump != NULL);
    BT_TRUE(braid_tls_wrapped_protocol(cg) == &pr->c[0].base);
}

static void pair_close(pair *pr) {
    braid_pump_flush(pr->pump);
    braid_pump_free(pr->pump);
    braid_loop_run_once(pr->loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&pr->stf);
    braid_tls_factory_close(&pr->ctf);
    braid_tls_ctx_unref(pr->sctx);
    braid_tls_ctx_unref(pr->cctx);
}

BT_TEST(pump_handshake_data_close_notify) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "localhost", "h2,http/1.1", "http/1.1", NULL);
    app *c = &pr.c[0], *s = &pr.s[0];
    BT_EQ(c->made, 1);
    BT_EQ(s->made, 1);
    BT_STREQ(braid_transport_kind(c->base.transport), "tls");
    BT_TRUE(braid_tls_is_transport(c->base.transport));
    BT_STREQ(braid_transport_kind(braid_tls_transport_lower(c->base.transport)), "memory");
    /* Written before the handshake: waits for it. */
    BT_OK(braid_transport_write(c->base.transport, "hello ", 6));
    BT_OK(braid_transport_write(c->base.transport, "server", 6));
    BT_TRUE(braid_tls_transport_info(c->base.transport) == NULL);
    braid_pump_flush(pr.pump);
    BT_EQ(c->handshakes, 1);
    BT_EQ(s->handshakes, 1);
    BT_STREQ(c->alpn, "http/1.1");
    BT_STREQ(s->alpn, "http/1.1");
    BT_TRUE(strstr(c->peer, "CN=localhost") != NULL);
    BT_EQ(s->inlen, 12);
    BT_TRUE(!memcmp(s->in, "hello server", 12));
    BT_OK(braid_transport_write(s->base.transport, "hi", 2));
    braid_pump_flush(pr.pump);
    BT_EQ(c->inlen, 2);
    /* lose_connection: close_notify; the server sees a clean end. */
    braid_transport_close(c->base.transport, BRAID_FOREVER);
    braid_pump_flush(pr.pump);
    BT_EQ(c->lost, 1);
    BT_EQ(s->lost, 1);
    BT_ERR(s->lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(c->lost_code, BRAID_ECONNECTION_DONE);
    BT_EQ(s->tls_error, 0);
    pair_close(&pr);
    bt_loop_destroy(loop);
}

BT_TEST(pump_verification_failure) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "wrong.example", NULL, NULL, NULL);
    BT_OK(braid_transport_write(pr.c[0].base.transport, "never sent", 10));
    braid_pump_flush(pr.pump);
    BT_EQ(pr.c[0].lost, 1);
    BT_ERR(pr.c[0].lost_code, BRAID_ETLS_HOSTNAME);
    BT_ERR(pr.c[0].tls_error, BRAID_ETLS_HOSTNAME);
    BT_TRUE(strstr(pr.c[0].lost_detail, "wrong.example") != NULL);
    BT_EQ(pr.c[0].handshakes, 0);
    BT_EQ(pr.s[0].lost, 1);
    BT_ERR(pr.s[0].lost_code, BRAID_ETLS_ALERT);
    BT_EQ(pr.s[0].inlen, 0);
    pair_close(&pr);
    bt_loop_destroy(loop);
}

static int count_records(const unsigned char *p, size_t n, int type, size_t *consumed) {
    int count = 0;
    size_t i = 0;
    while (i + 5 <= n) {
        size_t l = (size_t)p[i + 3] << 8 | p[i + 4];
        if (i + 5 + l > n) break;
        if (p[i] == type) count++;
        i += 5 + l;
    }
    if (consumed) *consumed = i;
    return count;
}

BT_TEST(small_writes_make_one_record) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "localhost", NULL, NULL, NULL);
    braid_pump_flush(pr.pump);
    BT_EQ(pr.c[0].handshakes, 1);
    braid_memory_transport *cm = braid_pump_client(pr.pump);
    size_t len;
    braid_memory_transport_data(cm, &len);
    BT_EQ(len, 0);
    /* 2000 one-byte writes in one iteration */
    for (int i = 0; i < 2000; i++) BT_OK(braid_transport_write(pr.c[0].base.transport, "x", 1));
    BT_EQ(braid_transport_buffered(pr.c[0].base.transport), 2000);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));   /* the ready phase seals them */
    BT_EQ(braid_transport_buffered(pr.c[0].base.transport), 0);
    const unsigned char *p = braid_memory_transport_data(cm, &len);
    size_t used;
    BT_EQ(count_records(p, len, 23, &used), 1);
    BT_EQ(used, len);
    BT_LT(len, 2000 + 64);
    braid_pump_flush(pr.pump);
    BT_EQ(pr.s[0].inlen, 2000);
    pair_close(&pr);
    bt_loop_destroy(loop);
}

/* A peer that never reads: the writer's producer is paused, the TLS and lower
 * buffers stay near their high watermarks; a writer ignoring that is cut off
 * at the cap, not allowed to grow memory. */
typedef struct pusher {
    braid_producer prod;
    braid_transport *t;
    size_t sent, max_total;
    bool paused;
    int pauses, resumes;
} pusher;
static void p_pause(braid_producer *pr) { pusher *p = pr->arg; p->paused = true; p->pauses++; }
static void p_resume(braid_producer *pr) { pusher *p = pr->arg; p->paused = false; p->resumes++; }
static void p_stop(braid_producer *pr) { pusher *p = pr->arg; p->t = NULL; }

BT_TEST(never_reading_peer_stays_under_cap) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "localhost", NULL, NULL, NULL);
    braid_pump_flush(pr.pump);
    BT_EQ(pr.c[0].handshakes, 1);
    braid_transport *t = pr.c[0].base.transport, *lower = braid_tls_transport_lower(t);
    braid_memory_transport *cm = braid_pump_client(pr.pump);
    pusher pu = { .prod = { p_pause, p_resume, p_stop, NULL }, .t = t };
    pu.prod.arg = &pu;
    BT_OK(braid_transport_register_producer(t, &pu.prod, true));
    static char chunk[4096];
    /* The pump is not flushed: nobody reads the client's ciphertext. */
    for (int round = 0; round < 200 && !pu.paused; round++) {
        for (int i = 0; i < 8 && !pu.paused; i++) {
            BT_OK(braid_transport_write(t, chunk, sizeof chunk));
            pu.sent += sizeof chunk;
        }
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
        size_t total = braid_transport_buffered(t) + braid_transport_buffered(lower);
        if (total > pu.max_total) pu.max_total = total;
    }
    BT_TRUE(pu.paused);
    for (int i = 0; i < 10; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    size_t len;
    braid_memory_transport_data(cm, &len);
    /* lower: at most its high watermark plus one flush's worth of records;
     * TLS: at most its high watermark plus one write burst. */
    BT_LE(len, 64 * 1024 + 17 * 1024 + 1024);
    BT_LE(braid_transport_buffered(t), 64 * 1024 + 8 * sizeof chunk);
    BT_LE(pu.max_total, 2 * 64 * 1024 + 17 * 1024 + 8 * sizeof chunk + 1024);
    /* The reader comes back: the producer resumes and everything arrives. */
    size_t expect = pu.sent;
    braid_pump_flush(pr.pump);
    BT_EQ(pu.resumes, 1);
    BT_EQ(pr.s[0].total_in, expect);
    /* Ignoring the pause: the TLS transport's hard cap cuts the writer off. */
    BT_OK(braid_transport_set_limits(t, 16 * 1024, 64 * 1024, 256 * 1024));
    braid_transport_unregister_producer(t);
    int rc = 0;
    size_t n = 0;
    while (rc == 0 && n < 64 * 1024 * 1024) {
        rc = braid_transport_write(t, chunk, sizeof chunk);
        n += sizeof chunk;
        if ((n / sizeof chunk) % 16 == 0) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    BT_ERR(rc, BRAID_EBUFFER_LIMIT);
    BT_LE(n, 256 * 1024 + 64 * 1024 + 17 * 1024 + 16 * sizeof chunk);
    braid_pump_flush(pr.pump);
    BT_EQ(pr.c[0].lost, 1);
    BT_ERR(pr.c[0].lost_code, BRAID_EBUFFER_LIMIT);
    pair_close(&pr);
    bt_loop_destroy(loop);
}

/* The application pauses reading: plaintext stops (held, then the lower
 * transport pauses) and resumes in order. */
BT_TEST(pause_reading_through_tls) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "localhost", NULL, NULL, NULL);
    braid_pump_flush(pr.pump);
    braid_transport_pause_reading(pr.s[0].base.transport);
    static char big[200000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i % 251);
    BT_OK(braid_transport_write(pr.c[0].base.transport, big, sizeof big));
    braid_pump_flush(pr.pump);
    BT_EQ(pr.s[0].total_in, 0);
    BT_GT(braid_transport_buffered(braid_tls_transport_lower(pr.c[0].base.transport)) +
              braid_transport_buffered(pr.c[0].base.transport), 0);
    braid_transport_resume_reading(pr.s[0].base.transport);
    braid_pump_flush(pr.pump);
    BT_EQ(pr.s[0].total_in, sizeof big);
    BT_TRUE(!memcmp(pr.s[0].in, big, sizeof pr.s[0].in));
    pair_close(&pr);
    bt_loop_destroy(loop);
}

/* A plain protocol that writes garbage at a TLS server. */
BT_TEST(garbage_fails_one_connection) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL);
    afactory sf;
    app s[2];
    af_init(&sf, s, 2);
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    app junk = { .base.ops = &app_ops };
    braid_pump *pump = NULL;
    braid_pump_new(loop, &junk.base, braid_factory_build(&stf.base, NULL), &pump);
    BT_OK(braid_transport_write(junk.base.transport, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27));
    braid_pump_flush(pump);
    BT_EQ(s[0].lost, 1);
    BT_ERR(s[0].lost_code, BRAID_ETLS);
    BT_EQ(junk.lost, 1);        /* the server closed it (after its alert) */
    braid_pump_free(pump);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    /* The same factory serves the next client. */
    braid_tls_ctx *cctx = bt_tls_client_ctx(NULL);
    afactory cf;
    app c[1];
    af_init(&cf, c, 1);
    braid_tls_factory ctf;
    BT_OK(braid_tls_factory_init(&ctf, &cf.f, &(braid_tls_wrap_options){ .ctx = cctx, .server_name = "localhost" }));
    braid_pump_new(loop, braid_factory_build(&ctf.base, NULL), braid_factory_build(&stf.base, NULL), &pump);
    BT_OK(braid_transport_write(c[0].base.transport, "ok", 2));
    braid_pump_flush(pump);
    BT_EQ(s[1].inlen, 2);
    braid_pump_free(pump);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    braid_tls_factory_close(&ctf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* A server that never answers: the client's handshake times out on the
 * loop's (fake) clock. */
BT_TEST(handshake_timeout_on_fake_clock) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(BRAID_SECONDS(100), &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    braid_tls_ctx *cctx = bt_tls_client_ctx(NULL);
    afactory cf;
    app c[1];
    af_init(&cf, c, 1);
    braid_tls_factory ctf;
    BT_OK(braid_tls_factory_init(&ctf, &cf.f, &(braid_tls_wrap_options){
        .ctx = cctx, .server_name = "localhost", .handshake_timeout = BRAID_SECONDS(5) }));
    app silent = { .base.ops = &app_ops };
    braid_pump *pump = NULL;
    braid_pump_new(loop, braid_factory_build(&ctf.base, NULL), &silent.base, &pump);
    braid_pump_flush(pump);
    BT_GT(silent.inlen, 0);            /* the ClientHello arrived, unanswered */
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(4)));
    BT_EQ(c[0].lost, 0);
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(1)));
    braid_pump_flush(pump);
    BT_EQ(c[0].lost, 1);
    BT_ERR(c[0].lost_code, BRAID_ETLS_TIMEOUT);
    BT_EQ(silent.lost, 1);
    braid_pump_free(pump);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&ctf);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* STARTTLS: a line protocol that upgrades its live connection. */
static void st_data(braid_protocol *p, const void *buf, size_t len) {
    app *a = (app *)p;
    if (!braid_tls_is_transport(p->transport)) {
        if (!a->starttls_client && len >= 9 && !memcmp(buf, "STARTTLS\n", 9)) {
            BT_OK(braid_transport_write(p->transport, "GO\n", 3));
            BT_OK(braid_tls_start(p, &(braid_tls_wrap_options){ .ctx = a->starttls_ctx,
                                                                 .handshake_done = on_hs }));
            return;
        }
        if (a->starttls_client && len >= 3 && !memcmp(buf, "GO\n", 3)) {
            BT_OK(braid_tls_start(p, &(braid_tls_wrap_options){ .ctx = a->starttls_ctx,
                                                                 .server_name = "localhost",
                                                                 .handshake_done = on_hs }));
            BT_OK(braid_transport_write(p->transport, "secret", 6));
            return;
        }
    }
    app_data(p, buf, len);
}
static const braid_protocol_ops st_ops = { .connection_made = app_made, .data_received = st_data,
                                           .connection_lost = app_lost };

BT_TEST(starttls_over_pump) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    app c = { .base.ops = &st_ops, .starttls_ctx = cctx, .starttls_client = true };
    app s = { .base.ops = &st_ops, .starttls_ctx = sctx, .echo = true };
    braid_pump *pump = NULL;
    braid_pump_new(loop, &c.base, &s.base, &pump);
    BT_OK(braid_transport_write(c.base.transport, "STARTTLS\n", 9));
    braid_pump_flush(pump);
    BT_EQ(c.handshakes, 1);
    BT_EQ(s.handshakes, 1);
    BT_TRUE(braid_tls_is_transport(c.base.transport));
    BT_TRUE(braid_tls_is_transport(s.base.transport));
    BT_EQ(s.inlen, 6);
    BT_TRUE(!memcmp(s.in, "secret", 6));
    BT_EQ(c.inlen, 6);              /* echoed back through TLS */
    braid_transport_close(c.base.transport, BRAID_FOREVER);
    braid_pump_flush(pump);
    BT_ERR(c.lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(s.lost_code, BRAID_ECONNECTION_DONE);
    braid_pump_free(pump);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* ---- real sockets, every backend ------------------------------------------------------ */
typedef struct got { braid_protocol *p; int failed, code, done; } got;
static braid_result got_ok(braid_result r, void *arg) {
    got *g = arg;
    g->p = r.value;
    g->done = 1;
    return r;
}
static braid_result got_err(braid_result r, void *arg) {
    got *g = arg;
    g->failed = 1;
    g->code = r.failure->code;
    g->done = 1;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

/* The typed endpoint's .tls: TLS on both sides without a wrapper factory of
 * the test's own; a client without server_name checks the certificate
 * against the endpoint's host ("localhost" passes, "127.0.0.2" does not);
 * TLS over a unix endpoint is refused. */
BT_IO_TEST(typed_endpoint_tls_both_sides) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    afactory sf, cf;
    app s[2], c[2];
    af_init(&sf, s, 2);
    af_init(&cf, c, 2);
    s[0].echo = true;
    braid_tls_wrap_options so = { .ctx = sctx, .handshake_done = on_hs };
    braid_tls_wrap_options co = { .ctx = cctx, .handshake_done = on_hs };
    braid_listener *l = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1",
                                                         .tls = &so }, &sf.f);
    int port = bt_listener_port(l);
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "localhost", .port = port, .tls = &co }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    BT_TRUE(g.p == &c[0].base);                       /* the application's protocol */
    BT_TRUE(braid_tls_is_transport(g.p->transport));
    BT_OK(braid_transport_write(g.p->transport, "typed", 5));
    BT_RUN_UNTIL(loop, c[0].inlen >= 5, 2000);
    BT_TRUE(memcmp(c[0].in, "typed", 5) == 0);
    BT_EQ(c[0].handshakes, 1);
    BT_EQ(s[0].handshakes, 1);
    braid_transport_close(g.p->transport, BRAID_SECONDS(5));
    BT_RUN_UNTIL(loop, c[0].lost && s[0].lost, 3000);
    BT_ERR(c[0].lost_code, BRAID_ECONNECTION_DONE);
    /* the name checked is the host's: the certificate has localhost and
     * 127.0.0.1, not 127.0.0.2 (a loopback address all the same) */
    braid_listener *l2 = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.2",
                                                          .tls = &so }, &sf.f);
    got g2 = { 0 };
    d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "127.0.0.2", .port = bt_listener_port(l2), .tls = &co }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g2));
    braid_deferred_unref(d);
    bt_run_until(loop, &g2.done, 1000);
    BT_FALSE(g2.failed);
    BT_OK(braid_transport_write(g2.p->transport, "never", 5));   /* starts the handshake */
    BT_RUN_UNTIL(loop, c[1].lost && s[1].lost, 3000);
    BT_ERR(c[1].lost_code, BRAID_ETLS_HOSTNAME);
    BT_EQ(c[1].handshakes, 0);
    /* TLS is over tcp only */
    braid_endpoint ue = { .kind = BRAID_ENDPOINT_UNIX, .tls = &so };
    bt_unix_path(ue.path, sizeof ue.path, "tls");
    braid_listener *ul = NULL;
    BT_ERR(braid_endpoint_listener(braid_endpoint_listen_typed(loop, &ue, &sf.f), &ul), BRAID_EBAD_ENDPOINT);
    BT_TRUE(ul == NULL);
    braid_listener_close(l);
    braid_listener_close(l2);
    bt_drain(loop);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

BT_IO_TEST(tcp_tls_echo_resume_and_bad_client) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, &(braid_tls_options){ .alpn = "h2" }), *cctx = bt_tls_client_ctx(&(braid_tls_options){ .alpn = "h2" });
    afactory sf, cf;
    app s[3], c[2];
    af_init(&sf, s, 3);
    af_init(&cf, c, 2);
    for (int i = 0; i < 3; i++) s[i].echo = true;
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx, .handshake_done = on_hs }));
    braid_tls_wrap_options cto = {
        .ctx = cctx, .server_name = "localhost", .handshake_done = on_hs };
    int port;
    braid_listener *l = bt_listen_tcp(loop, &stf.base, &port);

    /* 1: a full handshake, echo, close_notify */
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    BT_TRUE(g.p == &c[0].base);
    BT_OK(braid_transport_write(g.p->transport, "over tcp", 8));
    BT_RUN_UNTIL(loop, c[0].inlen >= 8, 2000);
    BT_EQ(c[0].inlen, 8);
    BT_EQ(c[0].handshakes, 1);
    BT_STREQ(c[0].alpn, "h2");
    BT_FALSE(c[0].reused);
    braid_address peer;
    BT_OK(braid_transport_peer(g.p->transport, &peer));
    BT_EQ(braid_address_port(&peer), port);
    BT_OK(braid_transport_set_nodelay(g.p->transport, true));
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[0].lost && s[0].lost, 3000);
    BT_ERR(c[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(s[0].lost_code, BRAID_ECONNECTION_DONE);

    /* 2: garbage from a plain TCP client fails that connection only */
    braid_factory plain;
    app junk[1] = { { .base.ops = &app_ops } };
    afactory jf;
    af_init(&jf, junk, 1);
    (void)plain;
    got gj = { 0 };
    d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port }, &jf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &gj));
    braid_deferred_unref(d);
    bt_run_until(loop, &gj.done, 1000);
    BT_OK(braid_transport_write(gj.p->transport, "\x16\x03\x01\x00\x05hello-garbage", 18));
    BT_RUN_UNTIL(loop, junk[0].lost && s[1].lost, 3000);
    BT_ERR(s[1].lost_code, BRAID_ETLS);

    /* 3: the server still serves; the session is resumed */
    got g2 = { 0 };
    d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g2));
    braid_deferred_unref(d);
    bt_run_until(loop, &g2.done, 1000);
    BT_OK(braid_transport_write(g2.p->transport, "again", 5));
    BT_RUN_UNTIL(loop, c[1].inlen >= 5, 2000);
    BT_EQ(c[1].inlen, 5);
    BT_TRUE(c[1].reused);
    BT_TRUE(s[2].reused);
    braid_transport_close(g2.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[1].lost && s[2].lost, 3000);

    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* Unix socketpair and pipes: adopt the descriptors with TLS glue on top. */
static void tls_over_fds(bool pipes) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    afactory sf, cf;
    app s[1], c[1];
    af_init(&sf, s, 1);
    af_init(&cf, c, 1);
    s[0].echo = true;
    braid_tls_factory stf, ctf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    BT_OK(braid_tls_factory_init(&ctf, &cf.f, &(braid_tls_wrap_options){ .ctx = cctx, .server_name = "localhost" }));
    braid_protocol *cg = braid_factory_build(&ctf.base, NULL), *sg = braid_factory_build(&stf.base, NULL);
    if (pipes) {
        int a[2], b[2];
        BT_OK(pipe(a));
        BT_OK(pipe(b));
        BT_OK(braid_transport_adopt_pipes(loop, b[0], a[1], cg));
        BT_OK(braid_transport_adopt_pipes(loop, a[0], b[1], sg));
        BT_STREQ(braid_transport_kind(braid_tls_transport_lower(c[0].base.transport)), "pipe");
    } else {
        int sv[2];
        BT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
        BT_OK(braid_transport_adopt(loop, sv[0], cg));
        BT_OK(braid_transport_adopt(loop, sv[1], sg));
        BT_STREQ(braid_transport_kind(braid_tls_transport_lower(c[0].base.transport)), "unix");
    }
    static char big[100000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 13);
    BT_OK(braid_transport_write(c[0].base.transport, big, sizeof big));
    BT_RUN_UNTIL(loop, c[0].total_in >= sizeof big, 5000);
    BT_EQ(c[0].total_in, sizeof big);
    BT_TRUE(!memcmp(c[0].in, big, sizeof c[0].in));
    braid_transport_close(c[0].base.transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[0].lost && s[0].lost, 3000);
    BT_ERR(c[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(s[0].lost_code, BRAID_ECONNECTION_DONE);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    braid_tls_factory_close(&ctf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}
BT_IO_TEST(tls_over_unix_socketpair) { tls_over_fds(false); }
BT_IO_TEST(tls_over_pipes) { tls_over_fds(true); }

/* Allocation-failure walk: a pump scenario with handshake, data and close. */
typedef struct pwalk { braid_loop *loop; braid_tls_ctx *sctx, *cctx; } pwalk;
static int pump_scenario(void *arg) {
    pwalk *w = arg;
    braid_loop *loop = w->loop;
    braid_tls_ctx *sctx = w->sctx, *cctx = w->cctx;
    afactory sf, cf;
    app s[1], c[1];
    af_init(&sf, s, 1);
    af_init(&cf, c, 1);
    braid_tls_factory stf, ctf;
    int rc = braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx });
    if (rc < 0) return rc;
    rc = braid_tls_factory_init(&ctf, &cf.f, &(braid_tls_wrap_options){ .ctx = cctx, .server_name = "localhost" });
    if (rc < 0) { braid_tls_factory_close(&stf); return rc; }
    braid_protocol *cg = braid_factory_build(&ctf.base, NULL), *sg = braid_factory_build(&stf.base, NULL);
    braid_pump *pump = NULL;
    if (cg && sg) braid_pump_new(loop, cg, sg, &pump);
    if (!pump) {
        /* glue never attached: release it as a transport would */
        if (cg) cg->ops->destroy(cg);
        if (sg) sg->ops->destroy(sg);
        rc = BRAID_ENOMEM;
    } else {
        if (c[0].base.transport) braid_transport_write(c[0].base.transport, "data", 4);
        braid_pump_flush(pump);
        if (c[0].base.transport && !c[0].lost) braid_transport_close(c[0].base.transport, BRAID_FOREVER);
        braid_pump_flush(pump);
        rc = s[0].inlen == 4 && s[0].lost_code == BRAID_ECONNECTION_DONE ? 0 : BRAID_ECONNECTION_LOST;
        braid_pump_free(pump);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    braid_tls_factory_close(&stf);
    braid_tls_factory_close(&ctf);
    return rc;
}

/* Sessions the client caches live on between runs: dropped after each. */
static void pump_teardown(void *arg, int rc, bool injected) {
    pwalk *w = arg;
    (void)rc, (void)injected;
    for (int i = 0; i < 3; i++) braid_loop_run_once(w->loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_ctx_flush_sessions(w->cctx);
}
BT_TEST(alloc_failure_walk) {
    braid_loop *loop = bt_loop_new(NULL);
    pwalk w = { loop, bt_tls_server_ctx(NULL, NULL), bt_tls_client_ctx(NULL) };
    bt_alloc_walk(&(bt_walk){ .name = "tls pump", .arg = &w, .body = pump_scenario, .teardown = pump_teardown,
                              .loop = loop, .warm_up = true, .max_runs = 2000 });
    braid_tls_ctx_unref(w.sctx);
    braid_tls_ctx_unref(w.cctx);
    bt_loop_destroy(loop);
}

/* ---- endpoint strings ------------------------------------------------------------------- */
static braid_result keep_value(braid_result r, void *arg) {
    got *g = arg;
    g->done = 1;
    if (r.failure) {
        g->failed = 1;
        g->code = r.failure->code;
        braid_result_drop(r);
        return braid_result_ok(NULL);
    }
    g->p = r.value;
    return r;
}

static int endpoint_error(braid_loop *loop, const char *desc, bool server, char *msg, size_t msglen) {
    afactory f;
    app a[1];
    af_init(&f, a, 1);
    braid_deferred *d = server ? braid_endpoint_listen(loop, desc, &f.f)
                               : braid_endpoint_connect(loop, desc, &f.f);
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    BT_TRUE(r.failure != NULL);
    int code = r.failure->code;
    snprintf(msg, msglen, "%s", r.failure->message ? r.failure->message : "");
    braid_result_drop(r);
    braid_deferred_unref(d);
    BT_EQ(f.f.refs, 0);                     /* the wrapper is gone with the failure */
    return code;
}

BT_TEST(endpoint_string_errors) {
    braid_loop *loop = bt_loop_new(NULL);
    char msg[512];
    BT_ERR(endpoint_error(loop, "ssl:8443", true, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(msg, "privateKey") != NULL);
    BT_ERR(endpoint_error(loop, "ssl:8443:privateKey=/nonexistent/k.pem", true, msg, sizeof msg), BRAID_ETLS);
    BT_TRUE(strstr(msg, "/nonexistent/k.pem") != NULL);
    BT_ERR(endpoint_error(loop, "ssl:8443:privateKey=k.pem:bogus=1", true, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(msg, "bogus") != NULL);
    BT_ERR(endpoint_error(loop, "tls:host=x:port=1:verifyClient=required", false, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_ERR(endpoint_error(loop, "tls:host=x:port=1:serverName=", false, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(msg, "serverName") != NULL);
    BT_ERR(endpoint_error(loop, "ssl:8443:privateKey=k.pem:privateKey=k.pem", true, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(msg, "twice") != NULL);
    BT_ERR(endpoint_error(loop, "tls:host=x", false, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(msg, "port") != NULL);
    BT_ERR(endpoint_error(loop, "tls:host=x:port=1:minVersion=1.0", false, msg, sizeof msg), BRAID_EBAD_ENDPOINT);
    bt_loop_destroy(loop);
}

BT_IO_TEST(endpoint_strings_over_tcp) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    char dir[] = "/tmp/braid-tls-XXXXXX";
    BT_TRUE(mkdtemp(dir) != NULL);
    btc_write(&bt_tls_world()->server, dir, "server");
    btc_write(&bt_tls_world()->ca, dir, "ca");
    /* a c_rehash'ed CA directory: <subject hash>.0 */
    char hashed[600];
    snprintf(hashed, sizeof hashed, "%s/cadir", dir);
    BT_OK(mkdir(hashed, 0700));
    snprintf(hashed, sizeof hashed, "%s/cadir/%08lx.0", dir, X509_subject_name_hash(bt_tls_world()->ca.x));
    btc__write_file(hashed, bt_tls_world()->ca.cert_pem);

    afactory sf, cf;
    app s[2], c[2];
    af_init(&sf, s, 2);
    af_init(&cf, c, 2);
    s[0].echo = s[1].echo = true;
    char desc[1024];
    snprintf(desc, sizeof desc, "ssl:0:interface=127.0.0.1:privateKey=%s/server.key:certKey=%s/server.crt:alpn=h2",
             dir, dir);
    got gl = { 0 };
    braid_deferred *d = braid_endpoint_listen(loop, desc, &sf.f);
    BT_OK(braid_deferred_add(d, keep_value, keep_value, &gl));
    braid_deferred_unref(d);
    BT_FALSE(gl.failed);
    braid_listener *l = (braid_listener *)gl.p;
    braid_address a;
    BT_OK(braid_listener_address(l, &a));
    int port = braid_address_port(&a);

    /* tls:host=...:port=...:caCertsDir=... (host name resolved, SNI and verification on it) */
    snprintf(desc, sizeof desc, "tls:host=localhost:port=%d:caCertsDir=%s/cadir:alpn=h2:timeout=5", port, dir);
    got g = { 0 };
    d = braid_endpoint_connect(loop, desc, &cf.f);
    BT_OK(braid_deferred_add(d, keep_value, keep_value, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 2000);
    BT_FALSE(g.failed);
    BT_TRUE(g.p == &c[0].base);
    BT_OK(braid_transport_write(g.p->transport, "endpoint", 8));
    for (int i = 0; i < 2000 && c[0].inlen < 8; i++) BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(c[0].inlen, 8);
    BT_STREQ(braid_tls_transport_info(g.p->transport)->alpn, "h2");
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[0].lost && s[0].lost, 3000);
    BT_ERR(c[0].lost_code, BRAID_ECONNECTION_DONE);

    /* positional tls:HOST:PORT with a CA file, verifying the IP address */
    snprintf(desc, sizeof desc, "tls:127.0.0.1:%d:caCerts=%s/ca.crt", port, dir);
    got g2 = { 0 };
    d = braid_endpoint_connect(loop, desc, &cf.f);
    BT_OK(braid_deferred_add(d, keep_value, keep_value, &g2));
    braid_deferred_unref(d);
    bt_run_until(loop, &g2.done, 2000);
    BT_FALSE(g2.failed);
    BT_OK(braid_transport_write(g2.p->transport, "ip", 2));
    for (int i = 0; i < 2000 && c[1].inlen < 2; i++) BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(c[1].inlen, 2);
    braid_transport_close(g2.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[1].lost && s[1].lost, 3000);

    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(sf.f.refs, 0);                    /* the wrappers went with their listener and connectors */
    BT_EQ(cf.f.refs, 0);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    BT_EQ(system(cmd), 0);
    bt_loop_destroy(loop);
}

/* ---- more real-socket tests: a raw engine on a plain TCP connection --------------------- *
 * rawtls is a plain braid protocol that runs a braid_tls_engine by hand: what
 * the peer sends is kept (to count its records) and fed to the engine; the
 * engine's output is written below. It plays the misbehaving client
 * (renegotiation) and the record-counting server. */
typedef struct rawtls {
    braid_protocol base;
    braid_tls_engine *e;
    unsigned char wire[1 << 17];   /* ciphertext received */
    size_t wirelen;
    size_t wire_at_hs;             /* wirelen when our handshake completed */
    size_t plain;                  /* plaintext bytes delivered */
    int rc, lost, hs;
} rawtls;

static void raw_push(rawtls *r) {
    size_t len;
    const void *p;
    while (r->base.transport && (p = braid_tls_engine_out(r->e, &len))) {
        BT_OK(braid_transport_write(r->base.transport, p, len));
        braid_tls_engine_consume(r->e, len);
    }
}
static void raw_plain(void *arg, const void *buf, size_t len) {
    (void)buf;
    ((rawtls *)arg)->plain += len;
}
static void raw_hs(void *arg, const braid_tls_info *info) {
    rawtls *r = arg;
    (void)info;
    r->hs++;
}
static const braid_tls_engine_ops raw_engine_ops = { .plaintext = raw_plain, .handshake_done = raw_hs };

static void raw_made(braid_protocol *p) { raw_push((rawtls *)p); }
static void raw_data(braid_protocol *p, const void *buf, size_t len) {
    rawtls *r = (rawtls *)p;
    bool before = braid_tls_engine_is_handshake_done(r->e);
    size_t room = sizeof r->wire - r->wirelen;
    memcpy(r->wire + r->wirelen, buf, len < room ? len : room);
    /* Record where the handshake ended: everything fed in this call belongs
     * to the handshake if it completes in it (the peer's first application
     * records come in later reads, after its own handshake_done). */
    r->wirelen += len < room ? len : room;
    int rc = braid_tls_engine_feed(r->e, buf, len);
    if (!before && braid_tls_engine_is_handshake_done(r->e)) r->wire_at_hs = r->wirelen;
    if (rc && !r->rc) r->rc = rc;
    raw_push(r);
}
static void raw_lost(braid_protocol *p, const braid_failure *f) {
    (void)f;
    ((rawtls *)p)->lost++;
}
static const braid_protocol_ops raw_ops = { .connection_made = raw_made, .data_received = raw_data,
                                            .connection_lost = raw_lost };

static braid_protocol *plain_connect(braid_loop *loop, int port, braid_factory *f) {
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port }, f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    return g.p;
}

typedef struct onefactory { braid_factory f; braid_protocol *p; } onefactory;
static braid_protocol *one_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    onefactory *of = (onefactory *)f;
    braid_protocol *p = of->p;
    of->p = NULL;
    return p;
}
static void one_init(onefactory *of, braid_protocol *p) {
    memset(of, 0, sizeof *of);
    of->f.build_protocol = one_build;
    of->p = p;
}

/* A truncated handshake and a renegotiation attempt each fail their own
 * connection with a clear code; the server keeps serving. */
BT_IO_TEST(bad_input_over_tcp_fails_one_connection) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_options so = { .cert_pem = bt_tls_world()->server.cert_pem, .key_pem = bt_tls_world()->server.key_pem,
                             .max_version = BRAID_TLS_V1_2 };   /* renegotiation exists up to 1.2 */
    braid_tls_ctx *sctx, *cctx = bt_tls_client_ctx(NULL);
    BT_OK(braid_tls_ctx_new(BRAID_TLS_SERVER, &so, NULL, 0, &sctx));
    afactory sf;
    app s[3];
    af_init(&sf, s, 3);
    s[2].echo = true;
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    int port;
    braid_listener *l = bt_listen_tcp(loop, &stf.base, &port);

    /* 1: half a ClientHello, then FIN */
    braid_tls_engine *hello_src;
    BT_OK(braid_tls_engine_new(cctx, "localhost", NULL, NULL, &hello_src));
    size_t hlen;
    const void *hello = braid_tls_engine_out(hello_src, &hlen);
    afactory jf;
    app junk[1];
    af_init(&jf, junk, 1);
    braid_protocol *jp = plain_connect(loop, port, &jf.f);
    BT_OK(braid_transport_write(jp->transport, hello, hlen / 2));
    braid_tls_engine_free(hello_src);
    BT_OK(braid_transport_shutdown_write(jp->transport));
    BT_RUN_UNTIL(loop, s[0].lost && junk[0].lost, 3000);
    BT_ERR(s[0].lost_code, BRAID_ETLS_TRUNCATED);
    BT_ERR(s[0].tls_error, BRAID_ETLS_TRUNCATED);
    BT_TRUE(strstr(s[0].lost_detail, "during the handshake") != NULL);

    /* 2: a client that completes the handshake, then asks to renegotiate */
    static rawtls rc1;
    memset(&rc1, 0, sizeof rc1);
    rc1.base.ops = &raw_ops;
    BT_OK(braid_tls_engine_new(cctx, "localhost", &raw_engine_ops, &rc1, &rc1.e));
    onefactory of;
    one_init(&of, &rc1.base);
    plain_connect(loop, port, &of.f);
    bt_run_until(loop, &rc1.hs, 2000);
    BT_RUN_UNTIL(loop, s[1].made, 2000);
    SSL *ssl = braid_tls_engine_ssl(rc1.e);
    SSL_clear_options(ssl, SSL_OP_NO_RENEGOTIATION);
    BT_EQ(SSL_renegotiate(ssl), 1);
    SSL_do_handshake(ssl);          /* the new ClientHello, into the engine's output */
    raw_push(&rc1);
    BT_RUN_UNTIL(loop, s[1].lost && rc1.lost, 3000);
    BT_ERR(s[1].lost_code, BRAID_ETLS_RENEGOTIATION);
    BT_TRUE(strstr(s[1].lost_detail, "renegotiation") != NULL);
    braid_tls_engine_free(rc1.e);

    /* 3: a good client is still served */
    afactory cf;
    app c[1];
    af_init(&cf, c, 1);
    
    braid_tls_wrap_options cto = { .ctx = cctx, .server_name = "localhost" };
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    BT_OK(braid_transport_write(g.p->transport, "still here", 10));
    BT_RUN_UNTIL(loop, c[0].inlen >= 10, 2000);
    BT_EQ(c[0].inlen, 10);
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c[0].lost && s[2].lost, 3000);
    BT_ERR(s[2].lost_code, BRAID_ECONNECTION_DONE);

    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* Wrong host, expired, unknown CA: three distinct codes with clear details
 * on the client; the rejected server sees the client's alert. */
BT_IO_TEST(verification_failures_over_tcp) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    static const struct {
        int which;                 /* 0: server cert, 1: expired, 2: rogue */
        const char *host;
        int code;
        const char *detail;
    } cases[] = {
        { 0, "wrong.example", BRAID_ETLS_HOSTNAME, "does not match \"wrong.example\"" },
        { 1, "localhost", BRAID_ETLS_EXPIRED, "validity period" },
        { 2, "localhost", BRAID_ETLS_UNKNOWN_CA, "trusted CA" },
    };
    braid_tls_ctx *cctx = bt_tls_client_ctx(NULL);
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const btc_cert *cert = cases[k].which == 0 ? &bt_tls_world()->server
                             : cases[k].which == 1 ? &bt_tls_world()->expired : &bt_tls_world()->rogue;
        braid_tls_ctx *sctx = bt_tls_server_ctx(cert, NULL);
        afactory sf, cf;
        app s[1], c[1];
        af_init(&sf, s, 1);
        af_init(&cf, c, 1);
        braid_tls_factory stf;
        BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
        braid_tls_wrap_options cto = {
            .ctx = cctx, .server_name = cases[k].host, .handshake_done = on_hs };
        int port;
        braid_listener *l = bt_listen_tcp(loop, &stf.base, &port);
        got g = { 0 };
        braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
        BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
        braid_deferred_unref(d);
        bt_run_until(loop, &g.done, 1000);
        BT_FALSE(g.failed);
        BT_OK(braid_transport_write(g.p->transport, "never", 5));
        BT_RUN_UNTIL(loop, c[0].lost && s[0].lost, 3000);
        BT_ERR(c[0].lost_code, cases[k].code);
        BT_ERR(c[0].tls_error, cases[k].code);
        BT_EQ(c[0].handshakes, 0);
        if (!strstr(c[0].lost_detail, cases[k].detail))
            bt_fail(__FILE__, __LINE__, "detail \"%s\" lacks \"%s\"", c[0].lost_detail, cases[k].detail);
        BT_ERR(s[0].lost_code, BRAID_ETLS_ALERT);
        BT_EQ(s[0].inlen, 0);
        braid_listener_close(l);
        for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        braid_tls_factory_close(&stf);
        braid_tls_ctx_unref(sctx);
    }
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* 1-byte writes over a real socket: the server (a raw engine) counts the
 * application-data records the client's 3000 writes arrive in. TLS 1.2 so
 * that every type-23 record is application data (in 1.3 the client's
 * Finished is one too). */
typedef struct byter { app a; int writes; } byter;
static void byter_hs(braid_protocol *p, const braid_tls_info *info, void *arg) {
    byter *b = (byter *)p;
    (void)info;
    (void)arg;
    for (int i = 0; i < b->writes; i++) BT_OK(braid_transport_write(p->transport, "y", 1));
}

BT_IO_TEST(one_byte_writes_over_tcp_make_few_records) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_options so = { .cert_pem = bt_tls_world()->server.cert_pem, .key_pem = bt_tls_world()->server.key_pem,
                             .max_version = BRAID_TLS_V1_2 };
    braid_tls_ctx *sctx, *cctx = bt_tls_client_ctx(NULL);
    BT_OK(braid_tls_ctx_new(BRAID_TLS_SERVER, &so, NULL, 0, &sctx));
    static rawtls rs;
    memset(&rs, 0, sizeof rs);
    rs.base.ops = &raw_ops;
    BT_OK(braid_tls_engine_new(sctx, NULL, &raw_engine_ops, &rs, &rs.e));
    onefactory of;
    one_init(&of, &rs.base);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &of.f, &port);
    byter b = { .a.base.ops = &app_ops, .writes = 3000 };
    onefactory cf;
    one_init(&cf, &b.a.base);
    
    braid_tls_wrap_options cto = {
        .ctx = cctx, .server_name = "localhost", .handshake_done = byter_hs };
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    BT_RUN_UNTIL(loop, rs.plain >= 3000, 3000);
    BT_EQ(rs.plain, 3000);
    BT_EQ(rs.rc, 0);
    BT_STREQ(braid_tls_engine_info(rs.e)->version, "TLSv1.2");
    size_t used;
    int handshake_app = count_records(rs.wire, rs.wire_at_hs, 23, &used);
    BT_EQ(handshake_app, 0);
    BT_EQ(used, rs.wire_at_hs);
    int app_records = count_records(rs.wire + rs.wire_at_hs, rs.wirelen - rs.wire_at_hs, 23, &used);
    BT_EQ(used, rs.wirelen - rs.wire_at_hs);
    BT_EQ(app_records, 1);
    BT_LT(rs.wirelen - rs.wire_at_hs, 3000 + 64);
    braid_transport_abort(g.p->transport);
    BT_RUN_UNTIL(loop, b.a.lost && rs.lost, 3000);
    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_engine_free(rs.e);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* A TLS server that never reads, over a real socket: the client's producer
 * is paused with its TLS and TCP buffers near their high watermarks (the
 * kernel's socket buffers take the rest); a writer ignoring the pause is cut
 * off at the TLS transport's cap. */
static void never_read_made(braid_protocol *p) {
    app_made(p);
    braid_transport_pause_reading(p->transport);
}
static const braid_protocol_ops never_read_ops = { .connection_made = never_read_made,
                                                   .data_received = app_data,
                                                   .connection_lost = app_lost };

BT_IO_TEST(never_reading_tls_peer_over_tcp_stays_under_cap) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    afactory sf, cf;
    app s[1], c[1];
    af_init(&sf, s, 1);
    af_init(&cf, c, 1);
    s[0].base.ops = &never_read_ops;
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    braid_tls_wrap_options cto = {
        .ctx = cctx, .server_name = "localhost", .handshake_done = on_hs };
    int port;
    braid_listener *l = bt_listen_tcp(loop, &stf.base, &port);
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f);
    BT_OK(braid_deferred_add(d, got_ok, got_err, &g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g.done, 1000);
    BT_FALSE(g.failed);
    bt_run_until(loop, &c[0].handshakes, 2000);
    braid_transport *t = g.p->transport, *lower = braid_tls_transport_lower(t);
    /* Small socket buffers keep the kernel's share bounded and the test quick. */
    BT_OK(braid_transport_set_limits(t, 16 * 1024, 64 * 1024, 1024 * 1024));
    pusher pu = { .prod = { p_pause, p_resume, p_stop, NULL }, .t = t };
    pu.prod.arg = &pu;
    BT_OK(braid_transport_register_producer(t, &pu.prod, true));
    static char chunk[16384];
    /* Write whenever not paused, until the producer has stayed paused for
     * 50 iterations (the kernel's socket buffers have filled up). */
    int stable = 0;
    for (int round = 0; round < 20000 && stable < 50; round++) {
        for (int i = 0; i < 4 && !pu.paused; i++) {
            BT_OK(braid_transport_write(t, chunk, sizeof chunk));
            pu.sent += sizeof chunk;
        }
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
        size_t total = braid_transport_buffered(t) + braid_transport_buffered(lower);
        if (total > pu.max_total) pu.max_total = total;
        stable = pu.paused ? stable + 1 : 0;
    }
    BT_TRUE(pu.paused);
    BT_GE(stable, 50);
    BT_LE(braid_transport_buffered(t), 64 * 1024 + 4 * sizeof chunk);
    BT_LE(braid_transport_buffered(lower), 64 * 1024 + 17 * 1024);
    BT_LE(pu.max_total, 64 * 1024 + 4 * sizeof chunk + 64 * 1024 + 17 * 1024);
    BT_EQ(s[0].total_in, 0);
    /* Ignoring the pause: cut off at the cap with BRAID_EBUFFER_LIMIT. */
    braid_transport_unregister_producer(t);
    int rc = 0;
    size_t n = 0;
    while (rc == 0 && n < 256u * 1024 * 1024) {
        rc = braid_transport_write(t, chunk, sizeof chunk);
        n += sizeof chunk;
        if ((n / sizeof chunk) % 8 == 0) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    BT_ERR(rc, BRAID_EBUFFER_LIMIT);
    BT_LE(braid_transport_buffered(t), 1024 * 1024);
    bt_run_until(loop, &c[0].lost, 2000);
    BT_ERR(c[0].lost_code, BRAID_EBUFFER_LIMIT);
    /* The server notices the reset once it reads again. */
    braid_transport_resume_reading(s[0].base.transport);
    bt_run_until(loop, &s[0].lost, 5000);
    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* STARTTLS over a real TCP connection. */
BT_IO_TEST(starttls_over_tcp) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    app c = { .base.ops = &st_ops, .starttls_ctx = cctx, .starttls_client = true };
    app s = { .base.ops = &st_ops, .starttls_ctx = sctx, .echo = true };
    onefactory sf, cf;
    one_init(&sf, &s.base);
    one_init(&cf, &c.base);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    braid_protocol *cp = plain_connect(loop, port, &cf.f);
    BT_TRUE(cp == &c.base);
    BT_OK(braid_transport_write(c.base.transport, "STARTTLS\n", 9));
    BT_RUN_UNTIL(loop, c.inlen >= 6, 3000);
    BT_EQ(c.handshakes, 1);
    BT_EQ(s.handshakes, 1);
    BT_TRUE(braid_tls_is_transport(c.base.transport));
    BT_STREQ(braid_transport_kind(braid_tls_transport_lower(s.base.transport)), "tcp");
    BT_EQ(s.inlen, 6);
    BT_EQ(c.inlen, 6);
    BT_TRUE(!memcmp(c.in, "secret", 6));
    braid_transport_close(c.base.transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, c.lost && s.lost, 3000);
    BT_ERR(c.lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(s.lost_code, BRAID_ECONNECTION_DONE);
    braid_listener_close(l);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
}

/* After a burst, an idle TLS connection holds no buffer of braid's: the TLS
 * and lower write buffers are released once flushed, the engine keeps no
 * output, the plaintext queue is freed. */
BT_TEST(idle_connection_releases_buffers) {
    braid_loop *loop = bt_loop_new(NULL);
    pair pr;
    pair_open(&pr, loop, "localhost", NULL, NULL, NULL);
    braid_pump_flush(pr.pump);
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    long idle = braid_test_alloc_outstanding();
    static char big[300000];
    for (int round = 0; round < 3; round++) {
        BT_OK(braid_transport_write(pr.c[0].base.transport, big, sizeof big));
        BT_OK(braid_transport_write(pr.s[0].base.transport, "ack", 3));
        braid_pump_flush(pr.pump);
        for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        BT_EQ(braid_test_alloc_outstanding(), idle);
    }
    BT_EQ(pr.s[0].total_in, 3 * sizeof big);
    BT_EQ(pr.c[0].total_in, 9);
    pair_close(&pr);
    bt_loop_destroy(loop);
}
