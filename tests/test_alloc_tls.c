/* The allocation-failure walk over TLS connections (SQLite's method): a
 * representative path — a TLS listener and a client connection, the full
 * handshake, a message echoed back, close_notify both ways — run again and
 * again with the Nth allocation failing, N = 1, 2, ... until the path needs
 * fewer allocations than N. Every run must end cleanly: no crash, nothing
 * left allocated, every connection over, and either the whole echo or an
 * error code.
 *
 * Two allocators are walked:
 *  - braid's (braid_test_fail_alloc_after): the glue, the TLS transport, the
 *    engine's buffers, the listener, connector and transports, over real
 *    loopback TCP on every backend;
 *  - OpenSSL's own (CRYPTO_set_mem_functions, installed before OpenSSL
 *    allocates anything in this process): the SSL objects, the handshake's
 *    keys, transcript and records, over the in-memory pump. Its live blocks
 *    are counted here, so a leak on one of its error paths fails the walk. */
// ctest-labels: tls
// ctest-timeout: openssl_allocation_walk 180
#include "harness.h"
#include "support/tls_certs.h"
#include <braid/endpoint.h>
#include <braid/tls.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <signal.h>

/* ---- the application: an echo server, a client that sends one message ----------------- */
typedef struct app {
    braid_protocol base;
    bool echo;
    char in[64];
    size_t inlen;
    int lost, lost_code;
} app;

static void app_data(braid_protocol *p, const void *buf, size_t len) {
    app *a = (app *)p;
    size_t room = sizeof a->in - a->inlen;
    memcpy(a->in + a->inlen, buf, len < room ? len : room);
    a->inlen += len < room ? len : room;
    /* An echo that cannot be written ends the connection (as any server
     * that cannot answer should): the client hears of it. */
    if (a->echo && braid_transport_write(p->transport, buf, len) < 0) braid_transport_abort(p->transport);
}
static void app_lost(braid_protocol *p, const braid_failure *f) {
    app *a = (app *)p;
    a->lost++;
    a->lost_code = f ? f->code : 0;
}
static const braid_protocol_ops app_ops = { .data_received = app_data, .connection_lost = app_lost };

typedef struct afactory {
    braid_factory f;
    app *apps;
    int n, used;
} afactory;
static braid_protocol *af_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    afactory *af = (afactory *)f;
    if (af->used == af->n) return NULL;
    return &af->apps[af->used++].base;
}
static void af_init(afactory *af, app *apps, int n, bool echo) {
    memset(af, 0, sizeof *af);
    memset(apps, 0, sizeof *apps * (size_t)n);
    for (int i = 0; i < n; i++) {
        apps[i].base.ops = &app_ops;
        apps[i].echo = echo;
    }
    af->f.build_protocol = af_build;
    af->apps = apps;
    af->n = n;
}

static const char MSG[] = "ping over tls";
#define MSGLEN (sizeof MSG - 1)

/* ---- OpenSSL's allocator, counted and failable ----------------------------------------- */
static long ossl_live, ossl_countdown;
static bool ossl_failed;

static bool ossl_fail_now(void) {
    if (ossl_countdown <= 0) return false;
    if (--ossl_countdown == 0) {
        ossl_failed = true;
        return true;
    }
    return false;
}
static void *ossl_malloc(size_t n, const char *file, int line) {
    (void)file;
    (void)line;
    if (ossl_fail_now()) return NULL;
    void *p = malloc(n);
    if (p) ossl_live++;
    return p;
}
static void *ossl_realloc(void *p, size_t n, const char *file, int line) {
    if (!p) return ossl_malloc(n, file, line);
    if (ossl_fail_now()) return NULL;
    return realloc(p, n);
}
static void ossl_free(void *p, const char *file, int line) {
    (void)file;
    (void)line;
    if (p) ossl_live--;
    free(p);
}

/* ---- the path over the memory pump ----------------------------------------------------- */
/* 0 when the echo came back and both sides saw close_notify; else the first
 * error code. Always cleans up. */
static int pump_path(braid_loop *loop, braid_tls_ctx *sctx, braid_tls_ctx *cctx) {
    afactory sf, cf;
    app s[1], c[1];
    af_init(&sf, s, 1, true);
    af_init(&cf, c, 1, false);
    braid_tls_factory stf, ctf;
    int rc = braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx });
    if (rc < 0) return rc;
    rc = braid_tls_factory_init(&ctf, &cf.f, &(braid_tls_wrap_options){ .ctx = cctx, .server_name = "localhost" });
    if (rc < 0) {
        braid_tls_factory_close(&stf);
        return rc;
    }
    braid_protocol *cg = braid_factory_build(&ctf.base, NULL), *sg = braid_factory_build(&stf.base, NULL);
    braid_pump *pump = NULL;
    if (cg && sg) braid_pump_new(loop, cg, sg, &pump);
    if (!pump) {
        if (cg) cg->ops->destroy(cg);   /* glue never attached: released as a transport would */
        if (sg) sg->ops->destroy(sg);
        rc = BRAID_ENOMEM;
    } else {
        int wrc = c[0].base.transport && !c[0].lost ? braid_transport_write(c[0].base.transport, MSG, MSGLEN) : 0;
        braid_pump_flush(pump);
        if (c[0].base.transport && !c[0].lost) braid_transport_close(c[0].base.transport, BRAID_FOREVER);
        braid_pump_flush(pump);
        /* Every connection is over, whatever failed: an application protocol
         * that was built heard connection_lost exactly once (a glue that could
         * not start its engine aborts before building one). */
        if (cf.used) BT_EQ(c[0].lost, 1);
        if (sf.used) BT_EQ(s[0].lost, 1);
        bool echoed = c[0].inlen == MSGLEN && !memcmp(c[0].in, MSG, MSGLEN);
        rc = wrc < 0 ? wrc   /* the write failed, and said so */
             : echoed && c[0].lost_code == BRAID_ECONNECTION_DONE && s[0].lost_code == BRAID_ECONNECTION_DONE
                 ? 0
                 : c[0].lost_code < 0 && c[0].lost_code != BRAID_ECONNECTION_DONE ? c[0].lost_code
                 : s[0].lost_code < 0 && s[0].lost_code != BRAID_ECONNECTION_DONE ? s[0].lost_code
                                                                                   : BRAID_ECONNECTION_LOST;
        braid_pump_free(pump);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    braid_tls_factory_close(&stf);
    braid_tls_factory_close(&ctf);
    return rc;
}

BT_TEST(openssl_allocation_walk) {
    /* Before OpenSSL allocates anything: certificates are made after this. */
    if (!CRYPTO_set_mem_functions(ossl_malloc, ossl_realloc, ossl_free))
        bt_skip("OpenSSL allocated before the test could install its allocator");
    btc_world w;
    btc_world_make(&w, BTC_EC);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx, *cctx;
    char err[256];
    BT_OK(braid_tls_ctx_new(BRAID_TLS_SERVER, &(braid_tls_options){ .cert_pem = w.server.cert_pem, .key_pem = w.server.key_pem }, err, sizeof err, &sctx));
    BT_OK(braid_tls_ctx_new(BRAID_TLS_CLIENT, &(braid_tls_options){ .ca_pem = w.ca.cert_pem }, err, sizeof err, &cctx));
    /* Warm up: OpenSSL's per-thread error state, DRBGs and fetched
     * algorithms are made once and kept for the process. */
    for (int i = 0; i < 2; i++) {
        BT_OK(pump_path(loop, sctx, cctx));
        braid_tls_ctx_flush_sessions(cctx);
    }
    ERR_clear_error();
    long base_braid = braid_test_alloc_outstanding();
    int errors = 0, survived = 0;
    long n;
    for (n = 1;; n++) {
        /* OpenSSL keeps some blocks on purpose: its per-thread error queue
         * keeps the buffers of error details for reuse, and its method store
         * caches what it fetched. Those fill up once; a leak leaks again every
         * time. So each failing allocation is replayed until a run leaves
         * OpenSSL's live blocks where it found them (at most 8 runs). */
        int rc = 0;
        bool failed = false, stable = false;
        long before = ossl_live, after = ossl_live;
        for (int rep = 0; rep < 8 && !stable; rep++) {
            before = ossl_live;
            ossl_countdown = n;
            ossl_failed = false;
            rc = pump_path(loop, sctx, cctx);
            ossl_countdown = 0;
            failed = ossl_failed;
            for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
            braid_tls_ctx_flush_sessions(cctx);
            ERR_clear_error();
            after = ossl_live;
            stable = after == before;
            BT_EQ(braid_test_alloc_outstanding(), base_braid);   /* braid's own: exact, every run */
            if (!failed) break;
        }
        if (!stable)
            bt_fail(__FILE__, __LINE__, "OpenSSL allocation %ld failing: each run leaves %ld more blocks (rc %d)", n,
                    after - before, rc);
        if (!failed) {
            BT_OK(rc);
            break;
        }
        if (rc < 0) errors++;
        else survived++;   /* OpenSSL recovered (an optional allocation) */
        BT_LT(n, 20000);
    }
    fprintf(stderr, "openssl_allocation_walk: %ld OpenSSL allocations on the path; %d failures ended the "
                    "connection with an error, %d were absorbed\n", n - 1, errors, survived);
    BT_GT(errors, 100);   /* the walk really went through the handshake */
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
    btc_world_free(&w);
}

/* ---- the path over loopback TCP ------------------------------------------------------------ */
typedef struct conn_wait {
    braid_protocol *p;
    int done, code;
} conn_wait;
static braid_result cw_ok(braid_result r, void *arg) {
    conn_wait *w = arg;
    w->p = r.value;
    w->done = 1;
    return r;
}
static braid_result cw_err(braid_result r, void *arg) {
    conn_wait *w = arg;
    w->code = r.failure->code;
    w->done = 1;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

/* Run the loop until *flag (a bounded number of iterations: each waits for
 * I/O or a timer, and the TLS handshake timeout is always armed). */
static bool run_for(braid_loop *loop, const int *flag) {
    for (int i = 0; i < 3000 && !*flag; i++) BT_OK(braid_loop_run_once(loop, 0));
    return *flag;
}

static int tcp_path(braid_loop *loop, braid_tls_ctx *sctx, braid_tls_ctx *cctx) {
    afactory sf, cf;
    app s[1], c[1];
    af_init(&sf, s, 1, true);
    af_init(&cf, c, 1, false);
    braid_tls_factory stf;
    int rc = braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx });
    if (rc < 0) return rc;
    braid_tls_wrap_options cto = { .ctx = cctx, .server_name = "localhost" };
    braid_listener *l = NULL;
    rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1" }, &stf.base), &l);
    conn_wait w = { 0 };
    if (rc == 0) {
        braid_address a;
        BT_OK(braid_listener_address(l, &a));
        braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
            .host = "127.0.0.1", .port = braid_address_port(&a), .tls = &cto }, &cf.f);
        if (!d) {
            rc = BRAID_ENOMEM;
        } else {
            BT_OK(braid_deferred_add(d, cw_ok, cw_err, &w));
            braid_deferred_unref(d);
            BT_TRUE(run_for(loop, &w.done));
            rc = w.code;
        }
    }
    if (rc == 0) {
        /* Connected: the echo, then close_notify; or the error that ended it. */
        int wrc = c[0].lost ? 0 : braid_transport_write(w.p->transport, MSG, MSGLEN);
        for (int i = 0; i < 3000 && wrc == 0 && !c[0].lost && c[0].inlen < MSGLEN; i++)
            BT_OK(braid_loop_run_once(loop, 0));
        if (!c[0].lost) braid_transport_close(w.p->transport, BRAID_FOREVER);
        if (cf.used) BT_TRUE(run_for(loop, &c[0].lost));
        if (sf.used) BT_TRUE(run_for(loop, &s[0].lost));
        bool echoed = c[0].inlen == MSGLEN && !memcmp(c[0].in, MSG, MSGLEN);
        rc = wrc < 0 ? wrc   /* the write failed, and said so */
             : echoed && c[0].lost_code == BRAID_ECONNECTION_DONE ? 0
             : c[0].lost_code < 0 && c[0].lost_code != BRAID_ECONNECTION_DONE ? c[0].lost_code
                                                                               : BRAID_ECONNECTION_LOST;
    }
    if (l) braid_listener_close(l);
    /* A connection the listener accepted after the client gave up ends too. */
    if (sf.used && !s[0].lost) BT_TRUE(run_for(loop, &s[0].lost));
    for (int i = 0; i < 5; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_tls_factory_close(&stf);
    return rc;
}

BT_IO_TEST(tcp_allocation_walk) {
    signal(SIGPIPE, SIG_IGN);
    btc_world w;
    btc_world_make(&w, BTC_EC);
    braid_loop *loop = bt_loop_new(NULL);
    braid_tls_ctx *sctx, *cctx;
    char err[256];
    BT_OK(braid_tls_ctx_new(BRAID_TLS_SERVER, &(braid_tls_options){ .cert_pem = w.server.cert_pem, .key_pem = w.server.key_pem }, err, sizeof err, &sctx));
    BT_OK(braid_tls_ctx_new(BRAID_TLS_CLIENT, &(braid_tls_options){ .ca_pem = w.ca.cert_pem }, err, sizeof err, &cctx));
    for (int i = 0; i < 2; i++) {   /* warm-up: per-loop stream state, the Deferred free list */
        BT_OK(tcp_path(loop, sctx, cctx));
        braid_tls_ctx_flush_sessions(cctx);
    }
    long base = braid_test_alloc_outstanding();
    int errors = 0;
    long n;
    for (n = 1;; n++) {
        braid_test_fail_alloc_after(n, false);
        int rc = tcp_path(loop, sctx, cctx);
        bool failed = braid_test_alloc_failed();
        braid_test_fail_alloc_after(0, false);
        braid_tls_ctx_flush_sessions(cctx);
        BT_EQ(braid_test_alloc_outstanding(), base);
        if (!failed) {
            BT_OK(rc);
            break;
        }
        if (rc < 0) errors++;
        BT_LT(n, 2000);
    }
    fprintf(stderr, "tcp_allocation_walk [%s]: %ld braid allocations on the path, %d failures ended it with an "
                    "error\n", braid_loop_backend(loop), n - 1, errors);
    BT_GT(errors, 10);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
    btc_world_free(&w);
}
