/* Stream transports: memory transport and pump, TCP and Unix on every
 * backend, flow control (producers paused at the high watermark, a reader
 * that stops reading keeps the writer under the cap), half-close both ways,
 * the hard cap, fd passing, pipes, connect failures, timeout and cancel. */
// ctest-labels: stream
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include "support/tls.h"
#include "support/walk.h"
#include <braid/tls.h>
#include <braid/testing_deferred.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

/* On the uring backend TCP runs on io_uring completions (the library's
 * default; BRAID_STREAM_COMPLETIONS=0 in the environment tests readiness). */

/* ---- a recording protocol (test-owned memory, never freed by braid) ----------- */
typedef struct tp {
    braid_protocol base;
    char in[1 << 16];
    size_t inlen;              /* bytes kept (the first 64 KiB) */
    uint64_t total_in;
    int made, read_lost, write_lost, lost, lost_code;
    char lost_msg[128];
    bool echo;                 /* write back what arrives */
    bool check_pattern;        /* byte k of the stream must be k % 251 */
    int pattern_errors;
    bool close_on_read_lost;   /* shutdown_write when the peer did */
    int fds[8]; int nfds;
} tp;

static void tp_made(braid_protocol *p) { ((tp *)p)->made++; }
static void tp_data(braid_protocol *p, const void *buf, size_t len) {
    tp *t = (tp *)p;
    size_t room = sizeof t->in - t->inlen;
    memcpy(t->in + t->inlen, buf, len < room ? len : room);
    t->inlen += len < room ? len : room;
    if (t->check_pattern)
        for (size_t i = 0; i < len; i++)
            if ((unsigned char)((const char *)buf)[i] != (t->total_in + i) % 251) t->pattern_errors++;
    t->total_in += len;
    if (t->echo) braid_transport_write(p->transport, buf, len);
}
static void tp_read_lost(braid_protocol *p) {
    tp *t = (tp *)p;
    t->read_lost++;
    if (t->close_on_read_lost) braid_transport_shutdown_write(p->transport);
}
static void tp_write_lost(braid_protocol *p) { ((tp *)p)->write_lost++; }
static void tp_lost(braid_protocol *p, const braid_failure *f) {
    tp *t = (tp *)p;
    t->lost++;
    t->lost_code = f->code;
    snprintf(t->lost_msg, sizeof t->lost_msg, "%s", f->message ? f->message : "");
}
static void tp_fds(braid_protocol *p, const int *fds, int n) {
    tp *t = (tp *)p;
    for (int i = 0; i < n && t->nfds < 8; i++) t->fds[t->nfds++] = fds[i];
}
static const braid_protocol_ops tp_ops = {
    .connection_made = tp_made, .data_received = tp_data, .connection_lost = tp_lost,
    .fds_received = tp_fds };
static const braid_protocol_ops tp_half_ops = {
    .connection_made = tp_made, .data_received = tp_data, .connection_lost = tp_lost,
    .read_connection_lost = tp_read_lost, .write_connection_lost = tp_write_lost };

/* A factory handing out test-owned protocols in order. */
typedef struct tfactory { braid_factory f; tp *pool; int n, used; } tfactory;
static braid_protocol *tf_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    tfactory *tf = (tfactory *)f;
    if (tf->used == tf->n) return NULL;
    return &tf->pool[tf->used++].base;
}
static void tf_init(tfactory *tf, tp *pool, int n, const braid_protocol_ops *ops) {
    memset(tf, 0, sizeof *tf);
    memset(pool, 0, sizeof *pool * (size_t)n);
    for (int i = 0; i < n; i++) pool[i].base.ops = ops;
    tf->f.build_protocol = tf_build;
    tf->pool = pool;
    tf->n = n;
}

/* ---- a push producer writing chunks while not paused --------------------------- */
typedef struct pusher {
    braid_producer prod;
    braid_transport *t;
    braid_loop *loop;
    size_t chunk, limit, sent;
    int pauses, resumes, stops;
    bool paused, scheduled;
    size_t max_buffered;
} pusher;
static void push_more(void *arg);
static void push_schedule(pusher *p) {
    if (p->scheduled || p->paused || p->sent >= p->limit || !p->t) return;
    p->scheduled = true;
    braid_loop_soon(p->loop, push_more, p);
}
static void push_more(void *arg) {
    pusher *p = arg;
    p->scheduled = false;
    static char buf[16384];
    while (!p->paused && p->sent < p->limit && p->t) {
        size_t n = p->limit - p->sent < p->chunk ? p->limit - p->sent : p->chunk;
        for (size_t i = 0; i < n; i++) buf[i] = (char)((p->sent + i) % 251);   /* order check */
        if (braid_transport_write(p->t, buf, n) < 0) return;
        p->sent += n;
        size_t b = braid_transport_buffered(p->t);
        if (b > p->max_buffered) p->max_buffered = b;
        /* a real producer yields to the loop now and then */
        if (p->sent % (p->chunk * 8) == 0) { push_schedule(p); return; }
    }
}
static void push_pause(braid_producer *pr) { pusher *p = pr->arg; p->paused = true; p->pauses++; }
static void push_resume(braid_producer *pr) {
    pusher *p = pr->arg;
    p->paused = false;
    p->resumes++;
    push_schedule(p);
}
static void push_stop(braid_producer *pr) { pusher *p = pr->arg; p->stops++; p->t = NULL; }

/* ======================= memory transport ======================================= */
BT_TEST(memory_records_writes_and_close) {
    braid_loop *loop = bt_loop_new(NULL);
    tp p = { .base.ops = &tp_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    BT_TRUE(m);
    BT_EQ(p.made, 1);
    braid_transport *t = p.base.transport;
    BT_STREQ(braid_transport_kind(t), "memory");
    BT_OK(braid_transport_write(t, "hello ", 6));
    struct iovec v[2] = { { "wor", 3 }, { "ld", 2 } };
    BT_OK(braid_transport_writev(t, v, 2));
    size_t len;
    const char *d = braid_memory_transport_data(m, &len);
    BT_EQ(len, 11);
    BT_TRUE(memcmp(d, "hello world", 11) == 0);
    BT_OK(braid_memory_transport_receive(m, "ping", 4));
    BT_EQ(p.inlen, 4);
    braid_transport_close(t, BRAID_FOREVER);
    BT_ERR(braid_transport_write(t, "x", 1), BRAID_ESHUTDOWN);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    struct braid_memory_transport_state s = mstate(m);
    BT_TRUE(s.disconnecting);          /* waits for the peer to read everything */
    BT_FALSE(s.closed);
    braid_memory_transport_consume(m, 5);
    BT_FALSE(mstate(m).closed);
    braid_memory_transport_consume(m, 100);
    BT_TRUE(mstate(m).closed);
    BT_EQ(p.lost, 0);                  /* delivered in the ready phase, not inside consume */
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.lost, 1);
    BT_ERR(p.lost_code, BRAID_ECONNECTION_DONE);
    BT_TRUE(mstate(m).lost_delivered);
    braid_memory_transport_free(m);
    bt_loop_destroy(loop);
}

BT_TEST(memory_push_producer_watermarks_and_cap) {
    braid_loop *loop = bt_loop_new(NULL);
    tp p = { .base.ops = &tp_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    braid_transport *t = p.base.transport;
    BT_ERR(braid_transport_set_limits(t, 100, 50, 0), BRAID_EINVAL);
    BT_OK(braid_transport_set_limits(t, 1000, 4000, 10000));
    pusher pu = { .prod = { push_pause, push_resume, push_stop, &pu }, .t = t, .loop = loop,
                  .chunk = 500, .limit = 1000000 };
    BT_OK(braid_transport_register_producer(t, &pu.prod, true));
    BT_ERR(braid_transport_register_producer(t, &pu.prod, true), BRAID_EBUSY);
    push_schedule(&pu);
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    struct braid_memory_transport_state s = mstate(m);
    BT_TRUE(s.producer_registered && s.producer_streaming && s.producer_paused);
    BT_EQ(pu.pauses, 1);
    BT_EQ(braid_transport_buffered(t), 4000);   /* paused exactly at the high mark */
    braid_memory_transport_consume(m, 2000);     /* 2000 left: above low, still paused */
    BT_EQ(pu.resumes, 0);
    braid_memory_transport_consume(m, 1000);     /* 1000 = low: resumed */
    BT_EQ(pu.resumes, 1);
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(pu.pauses, 2);
    BT_ULE(pu.max_buffered, 4000);
    /* Past the cap: an unregistered writer blows it and the connection aborts. */
    braid_transport_unregister_producer(t);
    static char big[8000];
    BT_ERR(braid_transport_write(t, big, sizeof big), BRAID_EBUFFER_LIMIT);
    s = mstate(m);
    BT_TRUE(s.closed && s.aborted);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.lost, 1);
    BT_ERR(p.lost_code, BRAID_EBUFFER_LIMIT);
    BT_EQ(pu.stops, 0);                          /* it was unregistered */
    braid_memory_transport_free(m);
    bt_loop_destroy(loop);
}

/* pull producer: asked for a chunk each time the buffer drains */
typedef struct puller { braid_producer prod; braid_transport *t; int asked; } puller;
static void pull_more(braid_producer *pr) {
    puller *p = pr->arg;
    p->asked++;
    braid_transport_write(p->t, "0123456789", 10);
}
BT_TEST(memory_pull_producer) {
    braid_loop *loop = bt_loop_new(NULL);
    tp p = { .base.ops = &tp_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    puller pu = { .prod = { NULL, pull_more, NULL, &pu }, .t = p.base.transport };
    BT_OK(braid_transport_register_producer(p.base.transport, &pu.prod, false));
    BT_EQ(pu.asked, 1);
    braid_memory_transport_consume(m, 10);
    BT_EQ(pu.asked, 2);
    BT_EQ(braid_transport_buffered(p.base.transport), 10);
    braid_memory_transport_free(m);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.lost, 1);
    bt_loop_destroy(loop);
}

BT_TEST(memory_half_close) {
    braid_loop *loop = bt_loop_new(NULL);
    tp p = { .base.ops = &tp_half_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    braid_transport *t = p.base.transport;
    BT_OK(braid_transport_write(t, "bye", 3));
    BT_OK(braid_transport_shutdown_write(t));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_FALSE(mstate(m).write_shut);   /* still 3 bytes queued */
    braid_memory_transport_consume(m, 3);
    BT_TRUE(mstate(m).write_shut);
    BT_EQ(p.write_lost, 1);
    BT_OK(braid_memory_transport_receive(m, "more", 4));     /* reading still works */
    BT_EQ(p.inlen, 4);
    braid_memory_transport_peer_eof(m);
    BT_EQ(p.read_lost, 1);
    BT_TRUE(mstate(m).closed);          /* both ways shut */
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.lost, 1);
    BT_ERR(p.lost_code, BRAID_ECONNECTION_DONE);
    braid_memory_transport_free(m);
    bt_loop_destroy(loop);
}

BT_TEST(pump_echo_and_backpressure) {
    braid_loop *loop = bt_loop_new(NULL);
    tp c = { .base.ops = &tp_ops }, s = { .base.ops = &tp_ops, .echo = true };
    braid_pump *pump = NULL;
    braid_pump_new(loop, &c.base, &s.base, &pump);
    BT_TRUE(pump);
    BT_EQ(c.made, 1); BT_EQ(s.made, 1);
    BT_OK(braid_transport_write(c.base.transport, "abc", 3));
    braid_pump_flush(pump);
    BT_EQ(s.inlen, 3); BT_EQ(c.inlen, 3);
    BT_TRUE(memcmp(c.in, "abc", 3) == 0);
    /* the client stops reading: the server's echo piles up in its buffer */
    braid_transport_pause_reading(c.base.transport);
    BT_OK(braid_transport_write(c.base.transport, "defg", 4));
    braid_pump_flush(pump);
    BT_EQ(s.inlen, 7); BT_EQ(c.inlen, 3);
    BT_EQ(braid_transport_buffered(s.base.transport), 4);
    braid_transport_resume_reading(c.base.transport);
    braid_pump_flush(pump);
    BT_EQ(c.inlen, 7);
    /* client closes: the server (not half-close aware) follows */
    braid_transport_close(c.base.transport, BRAID_FOREVER);
    braid_pump_flush(pump);
    BT_EQ(c.lost, 1); BT_EQ(s.lost, 1);
    BT_ERR(s.lost_code, BRAID_ECONNECTION_DONE);
    braid_pump_free(pump);
    bt_loop_destroy(loop);
}

/* The transport as a producer: a memory "proxy" forwarding A -> B with B's
 * buffer pausing A's reading. */
typedef struct fwd { braid_protocol base; braid_transport *to; } fwd;
static void fwd_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(((fwd *)p)->to, buf, len);
}
static const braid_protocol_ops fwd_ops = { .data_received = fwd_data };
BT_TEST(transport_is_a_push_producer) {
    braid_loop *loop = bt_loop_new(NULL);
    fwd a = { .base.ops = &fwd_ops };
    tp b = { .base.ops = &tp_ops };
    braid_memory_transport *ma = NULL;
    braid_memory_transport_new(loop, &a.base, &ma);
    braid_memory_transport *mb = NULL;
    braid_memory_transport_new(loop, &b.base, &mb);
    a.to = b.base.transport;
    BT_OK(braid_transport_set_limits(b.base.transport, 10, 20, 1000));
    BT_OK(braid_transport_register_producer(b.base.transport,
                                            braid_transport_producer(a.base.transport), true));
    static char buf[25];
    BT_OK(braid_memory_transport_receive(ma, buf, sizeof buf));
    BT_TRUE(mstate(ma).reading_paused);      /* B full: A stops reading */
    BT_ERR(braid_memory_transport_receive(ma, buf, 1), BRAID_EAGAIN);
    braid_memory_transport_consume(mb, 15);
    BT_FALSE(mstate(ma).reading_paused);     /* drained to the low mark */
    braid_transport_unregister_producer(b.base.transport);
    braid_memory_transport_free(ma);
    braid_memory_transport_free(mb);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    bt_loop_destroy(loop);
}

/* Allocation-failure walk over the memory scenario: write, produce, close. */
static int memory_scenario(void *arg) {
    (void)arg;
    braid_loop *loop;
    braid_loop_options o = { .flags = 0 };
    int rc = braid_loop_new(&o, &loop);
    if (rc < 0) return rc;
    tp p = { .base.ops = &tp_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    if (!m) { braid_loop_free(loop); return BRAID_ENOMEM; }
    static char big[100000];
    rc = braid_transport_write(p.base.transport, big, sizeof big);
    int rc2 = braid_transport_write(p.base.transport, "x", 1);
    braid_memory_transport_consume(m, 50);
    braid_transport_close(p.base.transport, BRAID_FOREVER);
    braid_memory_transport_consume(m, SIZE_MAX);
    braid_memory_transport_free(m);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    if (p.lost != 1) abort();
    bt_loop_destroy(loop);
    return rc < 0 ? rc : rc2;
}
BT_TEST(memory_alloc_failure_walk) {
    bt_alloc_walk(&(bt_walk){ .name = "memory transport", .body = memory_scenario, .max_runs = 100 });
}

/* ======================= real sockets, every backend ============================== */
typedef struct got { braid_protocol *p; int failed; int code; int done; } got;
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
static void await_connect(braid_loop *loop, braid_deferred *d, got *g) {
    BT_OK(braid_deferred_add(d, got_ok, got_err, g));
    braid_deferred_unref(d);
    bt_run_until(loop, &g->done, 1000);
}

BT_IO_TEST(tcp_echo_roundtrip) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    spool[0].echo = true;
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    BT_FALSE(g.failed);
    BT_TRUE(g.p == &cpool[0].base);
    BT_EQ(cpool[0].made, 1);
    braid_transport *t = g.p->transport;
    BT_STREQ(braid_transport_kind(t), "tcp");
    braid_address peer, host;
    BT_OK(braid_transport_peer(t, &peer));
    BT_OK(braid_transport_host(t, &host));
    BT_EQ(braid_address_port(&peer), port);
    char buf[64];
    BT_STREQ(braid_address_format(&peer, buf, sizeof buf), (snprintf(buf + 32, 32, "127.0.0.1:%d", port), buf + 32));
    BT_OK(braid_transport_set_nodelay(t, true));
    BT_OK(braid_transport_set_keepalive(t, true, 30));
    /* three small writes in one iteration: one buffer, echoed back whole */
    BT_OK(braid_transport_write(t, "one ", 4));
    BT_OK(braid_transport_write(t, "two ", 4));
    BT_OK(braid_transport_write(t, "three", 5));
    BT_RUN_UNTIL(loop, cpool[0].inlen >= 13, 1000);
    BT_EQ(cpool[0].inlen, 13);
    BT_TRUE(memcmp(cpool[0].in, "one two three", 13) == 0);
    BT_EQ(braid_listener_accepted(l), 1);
    braid_transport_close(t, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(spool[0].lost_code, BRAID_ECONNECTION_DONE);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* The reader stops reading: the writer's producer is paused, its buffer stays
 * at the high watermark (far under the cap) however long the writer tries;
 * when the reader resumes, every byte arrives and the producer finishes. */
BT_IO_TEST(tcp_slow_reader_pauses_producer) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    BT_RUN_UNTIL(loop, spool[0].made, 100);
    braid_transport *st = spool[0].base.transport, *ct = g.p->transport;
    cpool[0].check_pattern = true;
    braid_transport_pause_reading(ct);
    const size_t total = 32u << 20;      /* 32 MiB: far more than kernel buffers + cap */
    pusher pu = { .prod = { push_pause, push_resume, push_stop, &pu }, .t = st, .loop = loop,
                  .chunk = 16384, .limit = total };
    BT_OK(braid_transport_register_producer(st, &pu.prod, true));
    push_schedule(&pu);
    for (int i = 0; i < 300; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_TRUE(pu.paused);
    BT_GE(pu.pauses, 1);
    BT_LT(pu.sent, total);
    BT_ULE(pu.max_buffered, 64 * 1024 + 16384);    /* high watermark + one chunk */
    BT_ULE(braid_transport_buffered(st), 4u << 20);
    BT_EQ(cpool[0].total_in, 0);
    uint64_t sent_while_paused = pu.sent;
    for (int i = 0; i < 50; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_UEQ(pu.sent, sent_while_paused);            /* nothing more while paused */
    braid_transport_resume_reading(ct);
    BT_RUN_UNTIL(loop, cpool[0].total_in >= total, 200000);
    BT_UEQ(cpool[0].total_in, total);
    BT_EQ(cpool[0].pattern_errors, 0);             /* every byte, in order, across pauses */
    BT_GE(pu.resumes, 1);
    braid_transport_unregister_producer(st);
    braid_transport_close(st, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    BT_EQ(pu.stops, 0);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* Without a producer a writer to a peer that never reads passes the cap and
 * the connection is aborted with BRAID_EBUFFER_LIMIT. */
BT_IO_TEST(tcp_hard_cap_aborts) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    braid_transport_pause_reading(g.p->transport);
    BT_RUN_UNTIL(loop, spool[0].made, 100);
    braid_transport *st = spool[0].base.transport;
    static char chunk[65536];
    int rc = 0, writes = 0;
    for (; writes < 10000 && rc == 0; writes++) {
        rc = braid_transport_write(st, chunk, sizeof chunk);
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    BT_ERR(rc, BRAID_EBUFFER_LIMIT);
    BT_RUN_UNTIL_NOWAIT(loop, spool[0].lost, 100);
    BT_ERR(spool[0].lost_code, BRAID_EBUFFER_LIMIT);
    braid_transport_abort(g.p->transport);
    BT_RUN_UNTIL(loop, cpool[0].lost, 100);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNECTION_LOST);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* Half-close both ways: the client shuts its write side, the server sees
 * read_connection_lost, answers and shuts its own; both end cleanly. */
BT_IO_TEST(tcp_half_close_both_ways) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_half_ops);
    tf_init(&cf, cpool, 1, &tp_half_ops);
    spool[0].echo = true;
    spool[0].close_on_read_lost = true;
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    braid_transport *ct = g.p->transport;
    BT_OK(braid_transport_write(ct, "request", 7));
    BT_OK(braid_transport_shutdown_write(ct));
    BT_ERR(braid_transport_write(ct, "late", 4), BRAID_ESHUTDOWN);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    BT_EQ(cpool[0].write_lost, 1);
    BT_EQ(spool[0].read_lost, 1);
    BT_EQ(spool[0].write_lost, 1);
    BT_EQ(cpool[0].read_lost, 1);
    BT_EQ(cpool[0].inlen, 7);                      /* the answer came after our FIN */
    BT_TRUE(memcmp(cpool[0].in, "request", 7) == 0);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(spool[0].lost_code, BRAID_ECONNECTION_DONE);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

BT_IO_TEST(tcp6_listen_connect) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    spool[0].echo = true;
    int port;
    braid_listener *l = bt_listen_tcp6(loop, &sf.f, &port);
    if (!l) { bt_loop_destroy(loop); bt_skip("no IPv6 loopback"); }
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "[::1]", .port = port }, &cf.f), &g);
    BT_FALSE(g.failed);
    BT_OK(braid_transport_write(g.p->transport, "v6", 2));
    BT_RUN_UNTIL(loop, cpool[0].inlen >= 2, 1000);
    BT_EQ(cpool[0].inlen, 2);
    braid_transport_abort(g.p->transport);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

BT_IO_TEST(connect_refused_fails) {
    braid_loop *loop = bt_loop_new(NULL);
    tp cpool[1];
    tfactory cf;
    tf_init(&cf, cpool, 1, &tp_ops);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = bt_free_port() }, &cf.f), &g);
    BT_TRUE(g.failed);
    BT_ERR(g.code, -ECONNREFUSED);
    BT_EQ(cpool[0].made, 0);
    bt_loop_destroy(loop);
}

BT_IO_TEST(connect_cancel_and_timeout) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    tp spool[2], cpool[2];
    tfactory sf, cf;
    tf_init(&sf, spool, 2, &tp_ops);
    tf_init(&cf, cpool, 2, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    /* cancel before the connect completed */
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "127.0.0.1", .port = port }, &cf.f);
    braid_deferred_expect_no_result(d);
    braid_deferred_cancel(d);
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_ECANCELED);
    braid_failure_free(f);
    braid_deferred_unref(d);
    /* the timeout: the fake clock passes it before the loop sees the socket */
    d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "127.0.0.1", .port = port, .timeout = BRAID_SECONDS(5) }, &cf.f);
    braid_fake_clock_advance(fc, BRAID_SECONDS(5));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    if (braid_deferred_is_called(d) && !braid_deferred_is_failure(d)) {
        /* The I/O phase ran before the timer phase and the connect had completed. */
        braid_result r = braid_deferred_expect_success(d);
        braid_transport_abort(((braid_protocol *)r.value)->transport);
        braid_result_drop(r);
    } else {
        f = braid_deferred_expect_failure(d, BRAID_ETIMEDOUT);
        braid_failure_free(f);
        BT_EQ(cpool[0].made + cpool[1].made, 0);
    }
    braid_deferred_unref(d);
    for (int i = 0; i < 20; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    /* server-side connections opened by the kernel handshake end with EOF */
    for (int i = 0; i < 2; i++)
        if (spool[i].made) {
            BT_RUN_UNTIL(loop, spool[i].lost, 1000);
        }
    braid_listener_close(l);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

BT_IO_TEST(connect_by_name_resolves_off_thread) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "localhost", .port = port }, &cf.f);
    BT_FALSE(braid_deferred_is_called(d));   /* a name goes to the resolver pool */
    await_connect(loop, d, &g);
    BT_FALSE(g.failed);
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

BT_IO_TEST(unix_listen_connect_and_fd_passing) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    braid_endpoint ue = { .kind = BRAID_ENDPOINT_UNIX, .mode = 0600 };
    const char *path = bt_unix_path(ue.path, sizeof ue.path, "fd");
    braid_listener *l = bt_listen(loop, &ue, &sf.f);
    struct stat st;
    BT_OK(stat(path, &st));
    BT_EQ(st.st_mode & 0777, 0600);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &ue, &cf.f), &g);
    BT_FALSE(g.failed);
    braid_transport *ct = g.p->transport;
    BT_STREQ(braid_transport_kind(ct), "unix");
    /* send one end of a pipe with a byte; the server reads through it */
    int pp[2];
    BT_OK(pipe(pp));
    BT_OK(braid_transport_write(ct, "before", 6));
    BT_OK(braid_transport_send_fds(ct, &pp[1], 1, "F", 1));
    BT_OK(braid_transport_write(ct, "after", 5));
    close(pp[1]);
    BT_RUN_UNTIL(loop, spool[0].inlen >= 12, 1000);
    BT_EQ(spool[0].inlen, 12);
    BT_TRUE(memcmp(spool[0].in, "beforeFafter", 12) == 0);
    BT_EQ(spool[0].nfds, 1);
    BT_EQ(write(spool[0].fds[0], "via-fd", 6), 6);
    char buf[16];
    BT_EQ(read(pp[0], buf, sizeof buf), 6);
    BT_TRUE(memcmp(buf, "via-fd", 6) == 0);
    close(spool[0].fds[0]);
    close(pp[0]);
    /* a large message into an empty buffer (the uncopied direct path): the
     * descriptor still travels with its first byte */
    BT_EQ(braid_transport_buffered(ct), 0);
    static char big[20000];
    memset(big, 'B', sizeof big);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    BT_OK(braid_transport_send_fds(ct, &nullfd, 1, big, sizeof big));
    close(nullfd);
    BT_RUN_UNTIL(loop, spool[0].total_in >= 12 + sizeof big, 1000);
    BT_UEQ(spool[0].total_in, 12 + sizeof big);
    BT_EQ(spool[0].nfds, 2);
    close(spool[0].fds[1]);
    int zero = 0;
    BT_ERR(braid_transport_send_fds(spool[0].base.transport, &zero, 0, "x", 1), BRAID_EINVAL);
    braid_transport_close(ct, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    braid_listener_close(l);
    BT_TRUE(stat(path, &st) < 0);                 /* the socket file went with the listener */
    bt_loop_destroy(loop);
}

BT_IO_TEST(pipes_adopted) {
    signal(SIGPIPE, SIG_IGN);
    braid_loop *loop = bt_loop_new(NULL);
    int a[2], b[2];
    BT_OK(pipe(a));
    BT_OK(pipe(b));
    /* x writes to a[1], reads b[0]; y reads a[0], writes b[1] (echo) */
    tp x = { .base.ops = &tp_half_ops }, y = { .base.ops = &tp_ops, .echo = true };
    BT_OK(braid_transport_adopt_pipes(loop, b[0], a[1], &x.base));
    BT_OK(braid_transport_adopt_pipes(loop, a[0], b[1], &y.base));
    BT_STREQ(braid_transport_kind(x.base.transport), "pipe");
    BT_OK(braid_transport_write(x.base.transport, "through pipes", 13));
    BT_RUN_UNTIL(loop, x.inlen >= 13, 1000);
    BT_EQ(x.inlen, 13);
    /* x shuts its write side: y sees EOF, loses its connection (closing b[1]), x sees EOF */
    BT_OK(braid_transport_shutdown_write(x.base.transport));
    BT_RUN_UNTIL(loop, x.lost && y.lost, 1000);
    BT_EQ(x.write_lost, 1);
    BT_EQ(x.read_lost, 1);
    BT_ERR(x.lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(y.lost_code, BRAID_ECONNECTION_DONE);
    bt_loop_destroy(loop);
}

BT_IO_TEST(adopt_socketpair) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2];
    BT_OK(socketpair(AF_UNIX, SOCK_STREAM, 0, sv));
    tp x = { .base.ops = &tp_ops }, y = { .base.ops = &tp_ops, .echo = true };
    BT_OK(braid_transport_adopt(loop, sv[0], &x.base));
    BT_OK(braid_transport_adopt(loop, sv[1], &y.base));
    BT_STREQ(braid_transport_kind(x.base.transport), "unix");
    BT_OK(braid_transport_write(x.base.transport, "pair", 4));
    BT_RUN_UNTIL(loop, x.inlen >= 4, 1000);
    BT_EQ(x.inlen, 4);
    braid_transport_abort(x.base.transport);
    BT_RUN_UNTIL(loop, x.lost && y.lost, 1000);
    BT_ERR(x.lost_code, BRAID_ECONNECTION_LOST);
    bt_loop_destroy(loop);
}

/* The accept budget: many pending connections are accepted over several
 * iterations, budget per iteration, all of them in the end. */
BT_IO_TEST(accept_in_batches_with_budget) {
    braid_loop *loop = bt_loop_new(NULL);
    enum { N = 40 };
    static tp spool[N];
    tfactory sf;
    tf_init(&sf, spool, N, &tp_ops);
    braid_listener *l = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1",
                                                         .accept_budget = 8 }, &sf.f);
    int port = bt_listener_port(l);
    int cl[N];
    for (int i = 0; i < N; i++) cl[i] = bt_connect_tcp(port, 0);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(braid_listener_accepted(l), 8);
    BT_RUN_UNTIL(loop, braid_listener_accepted(l) >= N, 20);
    BT_EQ(braid_listener_accepted(l), N);
    for (int i = 0; i < N; i++) close(cl[i]);
    int lost = 0;
    for (int k = 0; k < 1000 && lost < N; k++) {
        BT_OK(braid_loop_run_once(loop, 0));
        lost = 0;
        for (int i = 0; i < N; i++) lost += spool[i].lost;
    }
    BT_EQ(lost, N);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* ======================= allocation-failure walk over real sockets ================== */
/* listen, connect (with a timeout), accept, small writes + writev echoed back,
 * Unix listen/connect with a descriptor passed, lose_connection on both.
 * Failing the Nth braid allocation anywhere must end in an error or a clean
 * close — never a crash, a hang, or a leaked allocation or handle. */
typedef struct walk_state {
    int server_made, server_lost, client_lost, connect_done, connect_rc;
    braid_protocol *client;
    size_t client_got;
    int fds_got;
} walk_state;
static void ws_server_made(braid_protocol *p) { ((walk_state *)p->user)->server_made++; }
static void ws_server_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(p->transport, buf, len);
}
static void ws_server_fds(braid_protocol *p, const int *fds, int n) {
    ((walk_state *)p->user)->fds_got += n;
    for (int i = 0; i < n; i++) close(fds[i]);
}
static void ws_server_lost(braid_protocol *p, const braid_failure *f) {
    (void)f;
    ((walk_state *)p->user)->server_lost++;
}
static void ws_client_data(braid_protocol *p, const void *buf, size_t len) {
    (void)buf;
    ((walk_state *)p->user)->client_got += len;
}
static void ws_client_lost(braid_protocol *p, const braid_failure *f) {
    (void)f;
    walk_state *st = p->user;
    st->client_lost++;
    st->client = NULL;
}
static const braid_protocol_ops ws_server_ops = {
    .connection_made = ws_server_made, .data_received = ws_server_data,
    .fds_received = ws_server_fds, .connection_lost = ws_server_lost };
static const braid_protocol_ops ws_client_ops = {
    .data_received = ws_client_data, .connection_lost = ws_client_lost };
static braid_result ws_connected(braid_result r, void *arg) {
    walk_state *st = arg;
    st->client = r.value;
    st->connect_done = 1;
    return r;
}
static braid_result ws_connect_failed(braid_result r, void *arg) {
    walk_state *st = arg;
    st->connect_done = 1;
    st->connect_rc = r.failure->code;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
/* Run non-blocking iterations until cond holds (loopback answers at once;
 * the bound only stops a broken run from hanging). */
#define WALK_SPIN(loop, cond)                                                  \
    for (int spin_ = 0; spin_ < 20000 && !(cond); spin_++)                     \
        if (braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) < 0) break

/* One connection over an open listener: connect, exchange, close. Returns 0
 * if every step worked, else the first error; always leaves no connection. */
static int walk_exchange(braid_loop *loop, walk_state *st, braid_deferred *d, bool pass_fd) {
    int rc = 0;
    if (!d) return BRAID_ENOMEM;
    if ((rc = braid_deferred_add(d, ws_connected, ws_connect_failed, st)) < 0) {
        braid_deferred_cancel(d);
        braid_deferred_unref(d);
        return rc;
    }
    braid_deferred_unref(d);
    WALK_SPIN(loop, st->connect_done);
    if (!st->connect_done) abort();                /* loopback never takes this long */
    if (!st->client) return st->connect_rc ? st->connect_rc : BRAID_EINVAL;
    braid_transport *t = st->client->transport;
    size_t want = 0;
    if ((rc = braid_transport_write(t, "abc", 3)) == 0) want += 3;
    if (rc == 0 && (rc = braid_transport_write(t, "defg", 4)) == 0) want += 4;
    struct iovec v[2] = { { "hij", 3 }, { "klmno", 5 } };
    if (rc == 0 && (rc = braid_transport_writev(t, v, 2)) == 0) want += 8;
    if (rc == 0 && pass_fd) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if ((rc = braid_transport_send_fds(t, &fd, 1, "F", 1)) == 0) want += 1;
        close(fd);
    }
    WALK_SPIN(loop, st->client_got >= want || !st->client);
    if (rc == 0 && st->client_got != want) rc = st->client ? BRAID_EINVAL : BRAID_ECONNECTION_LOST;
    if (rc == 0 && pass_fd && st->fds_got != 1) rc = BRAID_EINVAL;
    if (st->client) braid_transport_close(st->client->transport, BRAID_FOREVER);
    WALK_SPIN(loop, !st->client && st->server_lost == st->server_made);
    if (st->client || st->server_lost != st->server_made) abort();
    return rc;
}

static int stream_scenario(void *arg) {
    (void)arg;
    braid_loop *loop;
    int rc = braid_loop_new(&(braid_loop_options){ .flags = BRAID_LOOP_STRICT_BACKEND }, &loop);
    if (rc < 0) return rc;
    walk_state st = { 0 };
    braid_factory sf, cf;
    braid_factory_init(&sf, &ws_server_ops, sizeof(braid_protocol), &st);
    braid_factory_init(&cf, &ws_client_ops, sizeof(braid_protocol), &st);
    braid_listener *l = NULL;
    rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1" }, &sf), &l);
    if (rc == 0) {
        braid_address a;
        if (braid_listener_address(l, &a) < 0) abort();
        rc = walk_exchange(loop, &st, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                               .host = "127.0.0.1", .port = braid_address_port(&a),
                               .timeout = BRAID_SECONDS(30) }, &cf), false);
        braid_listener_close(l);
    }
    if (rc == 0) {
        braid_endpoint ue = { .kind = BRAID_ENDPOINT_UNIX, .timeout = BRAID_SECONDS(30) };
        bt_unix_path(ue.path, sizeof ue.path, "walk");
        rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &ue, &sf), &l);
        if (rc == 0) {
            memset(&st, 0, sizeof st);
            rc = walk_exchange(loop, &st, braid_endpoint_connect_typed(loop, &ue, &cf), true);
            braid_listener_close(l);
        }
    }
    /* the leak gate: nothing may stay open whatever failed */
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(loop);
    return rc;
}

BT_IO_TEST(stream_alloc_failure_walk) {
    bt_loop_destroy(bt_loop_new(NULL));            /* skips if the backend is missing */
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "tcp and unix", .body = stream_scenario,
                                                 .max_runs = 500 });
    BT_GT(r.errors, 10);          /* the walk reached into listen, connect and accept */
}

/* ======================= gaps: coalescing, stdio, adoption, bind, resolver, pull =========== */
static void triple_data(braid_protocol *p, const void *buf, size_t len) {
    char out[4] = { 0, 0, ';', 0 };
    out[0] = len ? ((const char *)buf)[0] : '?';
    for (char k = '1'; k <= '3'; k++) {
        out[1] = k;
        braid_transport_write(p->transport, out, 3);
    }
}
static const braid_protocol_ops triple_ops = { .data_received = triple_data, .connection_lost = tp_lost };

/* Several writes in one iteration leave in one system call: over a
 * SOCK_SEQPACKET pair every send() is one message, so the raw peer sees
 * exactly how many calls the transport made. */
BT_IO_TEST(small_writes_in_one_iteration_leave_in_one_syscall) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2];
    BT_OK(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv));
    tp x = { .base.ops = &tp_ops };
    BT_OK(braid_transport_adopt(loop, sv[0], &x.base));
    braid_transport *t = x.base.transport;
    BT_OK(braid_transport_write(t, "one ", 4));
    BT_OK(braid_transport_write(t, "two ", 4));
    struct iovec v[2] = { { "thr", 3 }, { "ee", 2 } };
    BT_OK(braid_transport_writev(t, v, 2));
    BT_EQ(braid_transport_buffered(t), 13);       /* nothing left from inside write */
    char buf[64];
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), -1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_transport_buffered(t), 0);
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), 13);   /* one message: one send() */
    BT_TRUE(memcmp(buf, "one two three", 13) == 0);
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), -1);
    BT_EQ(errno, EAGAIN);
    /* the next iteration's writes are the next call */
    BT_OK(braid_transport_write(t, "four", 4));
    BT_OK(braid_transport_write(t, "five", 4));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), 8);
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), -1);
    /* writes made while handling one read (three answers) leave in one call */
    x.base.ops = &triple_ops;
    BT_EQ(send(sv[1], "q", 1, 0), 1);
    for (int i = 0; i < 100 && recv(sv[1], buf, sizeof buf, MSG_DONTWAIT | MSG_PEEK) < 0; i++)
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), 9);
    BT_TRUE(memcmp(buf, "q1;q2;q3;", 9) == 0);
    BT_EQ(recv(sv[1], buf, sizeof buf, MSG_DONTWAIT), -1);
    braid_transport_abort(t);
    BT_RUN_UNTIL_NOWAIT(loop, x.lost, 100);
    BT_EQ(x.lost, 1);
    close(sv[1]);
    bt_loop_destroy(loop);
}

/* stdio: a child process whose stdin/stdout are pipes runs a braid protocol
 * on dup(0)/dup(1) (upper-casing what it reads); the parent talks to it
 * through adopted pipe ends, half-closes, and reads the answer to EOF. */
static void upper_data(braid_protocol *p, const void *buf, size_t len) {
    char tmp[256];
    const char *in = buf;
    while (len) {
        size_t n = len < sizeof tmp ? len : sizeof tmp;
        for (size_t i = 0; i < n; i++) tmp[i] = (char)toupper((unsigned char)in[i]);
        braid_transport_write(p->transport, tmp, n);
        in += n;
        len -= n;
    }
}
static int upper_lost_code;
static void upper_lost(braid_protocol *p, const braid_failure *f) { (void)p; upper_lost_code = f->code; }
static const braid_protocol_ops upper_ops = { .data_received = upper_data, .connection_lost = upper_lost };

BT_IO_TEST(stdio_child_speaks_through_pipes) {
    signal(SIGPIPE, SIG_IGN);
    bt_loop_destroy(bt_loop_new(NULL));           /* skip before forking if the backend is missing */
    int to_child[2], from_child[2];
    BT_OK(pipe2(to_child, O_CLOEXEC));
    BT_OK(pipe2(from_child, O_CLOEXEC));
    pid_t pid = fork();
    BT_TRUE(pid >= 0);
    if (pid == 0) {
        if (dup2(to_child[0], 0) < 0 || dup2(from_child[1], 1) < 0) _exit(2);
        close(to_child[0]); close(to_child[1]); close(from_child[0]); close(from_child[1]);
        braid_loop *cl;
        if (braid_loop_new(&(braid_loop_options){ .flags = BRAID_LOOP_STRICT_BACKEND }, &cl) < 0) _exit(3);
        braid_protocol up = { .ops = &upper_ops };
        if (braid_transport_adopt_pipes(cl, dup(0), dup(1), &up) < 0) _exit(4);
        braid_loop_run(cl);                       /* until EOF ended the connection */
        if (braid_loop_free(cl) < 0) _exit(5);
        _exit(upper_lost_code == BRAID_ECONNECTION_DONE ? 0 : 6);
    }
    close(to_child[0]);
    close(from_child[1]);
    braid_loop *loop = bt_loop_new(NULL);
    tp x = { .base.ops = &tp_half_ops };
    BT_OK(braid_transport_adopt_pipes(loop, from_child[0], to_child[1], &x.base));
    BT_OK(braid_transport_write(x.base.transport, "hello, ", 7));
    BT_OK(braid_transport_write(x.base.transport, "stdio", 5));
    BT_OK(braid_transport_shutdown_write(x.base.transport));     /* the child's stdin EOF */
    BT_RUN_UNTIL(loop, x.lost, 1000);
    BT_EQ(x.write_lost, 1);
    BT_EQ(x.read_lost, 1);                        /* the child closed its stdout */
    BT_ERR(x.lost_code, BRAID_ECONNECTION_DONE);
    BT_EQ(x.inlen, 12);
    BT_TRUE(memcmp(x.in, "HELLO, STDIO", 12) == 0);
    int st;
    BT_EQ(waitpid(pid, &st, 0), pid);
    BT_TRUE(WIFEXITED(st));
    BT_EQ(WEXITSTATUS(st), 0);
    bt_loop_destroy(loop);
}

/* A listening socket made elsewhere (socket activation, a parent process). */
BT_IO_TEST(listen_on_adopted_socket) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    spool[0].echo = true;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    BT_OK(bind(s, (struct sockaddr *)&sa, sizeof sa));
    BT_OK(listen(s, 16));
    braid_listener *l = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_FD, .fd = s }, &sf.f);
    BT_TRUE(fcntl(s, F_GETFL) & O_NONBLOCK);
    braid_address a;
    BT_OK(braid_listener_address(l, &a));
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = braid_address_port(&a) }, &cf.f), &g);
    BT_FALSE(g.failed);
    BT_OK(braid_transport_write(g.p->transport, "adopted", 7));
    BT_RUN_UNTIL(loop, cpool[0].inlen >= 7, 1000);
    BT_EQ(cpool[0].inlen, 7);
    BT_STREQ(braid_transport_kind(spool[0].base.transport), "tcp");
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    braid_listener_close(l);
    BT_TRUE(fcntl(s, F_GETFD) < 0);               /* the listener owned (and closed) it */
    bt_loop_destroy(loop);
}

/* Connecting from a chosen source address and port; a bad one fails clearly. */
BT_IO_TEST(connect_with_bind_address) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    int src = bt_free_port();   /* a source port that was just free */
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port, .bind_host = "127.0.0.1", .bind_port = src },
                      &cf.f), &g);
    BT_FALSE(g.failed);
    braid_address host;
    BT_OK(braid_transport_host(g.p->transport, &host));
    BT_EQ(braid_address_port(&host), src);
    BT_RUN_UNTIL(loop, spool[0].made, 1000);
    braid_address peer;
    BT_OK(braid_transport_peer(spool[0].base.transport, &peer));
    BT_EQ(braid_address_port(&peer), src);        /* the server sees our chosen port */
    braid_transport_close(g.p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 1000);
    /* not a numeric address */
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "127.0.0.1", .port = port, .bind_host = "nowhere" }, &cf.f);
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_EINVAL);
    BT_TRUE(f->message && strstr(f->message, "nowhere"));
    braid_failure_free(f);
    braid_deferred_unref(d);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* Cancelling a connect while its host name is still being resolved: the
 * Deferred fails with BRAID_ECANCELED at once, no connection is made, and
 * the lookup's late answer is dropped without a leak. */
BT_IO_TEST(connect_cancelled_while_resolving) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
        .host = "localhost", .port = port }, &cf.f);
    braid_deferred_expect_no_result(d);
    braid_deferred_cancel(d);
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_ECANCELED);
    braid_failure_free(f);
    braid_deferred_unref(d);
    braid_listener_close(l);
    BT_OK(braid_loop_run(loop));                  /* returns once the lookup has reported back */
    BT_EQ(cpool[0].made, 0);
    BT_EQ(spool[0].made, 0);
    bt_loop_destroy(loop);
}

/* A pull producer over TCP: asked for one chunk each time the buffer drains
 * below the low watermark, so the buffer never holds more than low + chunk. */
typedef struct tpuller {
    braid_producer prod;
    braid_transport *t;
    int chunks, max, stops;
    size_t max_buffered;
} tpuller;
static void tpull_resume(braid_producer *pr) {
    tpuller *p = pr->arg;
    static char chunk[32768];
    if (p->chunks == p->max) {
        braid_transport_unregister_producer(p->t);
        braid_transport_close(p->t, BRAID_FOREVER);
        return;
    }
    memset(chunk, 'a' + p->chunks % 26, sizeof chunk);
    if (braid_transport_write(p->t, chunk, sizeof chunk) < 0) return;
    p->chunks++;
    size_t b = braid_transport_buffered(p->t);
    if (b > p->max_buffered) p->max_buffered = b;
}
static void tpull_stop(braid_producer *pr) { ((tpuller *)pr->arg)->stops++; }

BT_IO_TEST(tcp_pull_producer) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    tpuller pu = { .prod = { NULL, tpull_resume, tpull_stop, &pu }, .t = g.p->transport, .max = 64 };
    BT_OK(braid_transport_register_producer(pu.t, &pu.prod, false));
    BT_EQ(pu.chunks, 1);                          /* a pull producer produces once at once */
    BT_ERR(braid_transport_register_producer(pu.t, &pu.prod, false), BRAID_EBUSY);
    BT_RUN_UNTIL(loop, cpool[0].lost && spool[0].lost, 100000);
    BT_EQ(pu.chunks, 64);
    BT_UEQ(spool[0].total_in, 64u * 32768);
    BT_ULE(pu.max_buffered, 16384 + 32768);       /* low watermark + one chunk */
    BT_EQ(pu.stops, 0);                           /* unregistered before the end */
    BT_ERR(cpool[0].lost_code, BRAID_ECONNECTION_DONE);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* Half-close the other way round, on a Unix socketpair: the first side to
 * shut its write side keeps receiving, the other keeps sending. */
BT_IO_TEST(unix_half_close_receiver_keeps_sending) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2];
    BT_OK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv));
    tp x = { .base.ops = &tp_half_ops }, y = { .base.ops = &tp_half_ops };
    BT_OK(braid_transport_adopt(loop, sv[0], &x.base));
    BT_OK(braid_transport_adopt(loop, sv[1], &y.base));
    BT_OK(braid_transport_write(y.base.transport, "bye", 3));
    BT_OK(braid_transport_shutdown_write(y.base.transport));
    BT_RUN_UNTIL(loop, x.read_lost, 1000);
    BT_EQ(x.read_lost, 1);
    BT_EQ(y.write_lost, 1);
    BT_EQ(x.lost + y.lost, 0);                    /* half open, not closed */
    BT_EQ(x.inlen, 3);
    BT_OK(braid_transport_write(x.base.transport, "still here", 10));
    BT_RUN_UNTIL(loop, y.inlen >= 10, 1000);
    BT_EQ(y.inlen, 10);
    BT_TRUE(memcmp(y.in, "still here", 10) == 0);
    BT_OK(braid_transport_shutdown_write(x.base.transport));
    BT_RUN_UNTIL(loop, x.lost && y.lost, 1000);
    BT_EQ(y.read_lost, 1);
    BT_EQ(x.write_lost, 1);
    BT_ERR(x.lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(y.lost_code, BRAID_ECONNECTION_DONE);
    bt_loop_destroy(loop);
}

/* Data and EOF arrive while the reader is paused: nothing is delivered until
 * it resumes, then all the data, in order, and only then the EOF. Repeated
 * pause/resume in between must not lose or reorder a byte. */
BT_IO_TEST(tcp_eof_while_paused_comes_after_the_data) {
    braid_loop *loop = bt_loop_new(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_half_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    spool[0].check_pattern = true;
    int port;
    braid_listener *l = bt_listen_tcp(loop, &sf.f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf.f), &g);
    BT_RUN_UNTIL(loop, spool[0].made, 1000);
    braid_transport *st = spool[0].base.transport;
    braid_transport_pause_reading(st);
    static char data[200000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)(i % 251);
    BT_OK(braid_transport_write(g.p->transport, data, sizeof data));
    braid_transport_close(g.p->transport, BRAID_FOREVER);         /* FIN after the data */
    BT_RUN_UNTIL(loop, cpool[0].lost, 1000);
    for (int i = 0; i < 20; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(spool[0].total_in, 0);
    BT_EQ(spool[0].read_lost, 0);
    /* resume and pause again a few times while it trickles in */
    for (int k = 0; k < 1000 && !spool[0].read_lost; k++) {
        braid_transport_resume_reading(st);
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
        if (k % 2 == 0 && !spool[0].read_lost) braid_transport_pause_reading(st);
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    BT_EQ(spool[0].read_lost, 1);
    BT_UEQ(spool[0].total_in, sizeof data);                   /* all of it came before the EOF */
    BT_EQ(spool[0].pattern_errors, 0);
    braid_transport_close(st, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, spool[0].lost, 1000);
    BT_ERR(spool[0].lost_code, BRAID_ECONNECTION_DONE);
    braid_listener_close(l);
    bt_loop_destroy(loop);
}

/* ======================= close with a deadline ==================================== */
/* A memory transport whose peer never consumes: close_within aborts it with
 * BRAID_ETIMEDOUT exactly when the deadline passes on the loop clock; one
 * whose peer consumes in time closes cleanly and the deadline is disarmed. */
BT_TEST(memory_close_within_deadline) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(1000, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    /* the peer never reads */
    tp p = { .base.ops = &tp_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &p.base, &m);
    static char big[100000];
    BT_OK(braid_transport_write(p.base.transport, big, sizeof big));
    braid_transport_close(p.base.transport, BRAID_SECONDS(2));
    BT_ERR(braid_transport_write(p.base.transport, "x", 1), BRAID_ESHUTDOWN);
    for (int i = 0; i < 10; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_TRUE(mstate(m).disconnecting);
    /* a later, longer deadline does not postpone it */
    braid_transport_close(p.base.transport, BRAID_SECONDS(60));
    braid_memory_transport_consume(m, 1000);           /* the peer takes a little */
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(2) - 1));
    BT_EQ(p.lost, 0);
    BT_FALSE(mstate(m).closed);
    BT_OK(braid_loop_advance(loop, 1));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.lost, 1);
    BT_ERR(p.lost_code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(p.lost_msg, "close deadline passed with 99000 bytes unsent") != NULL);
    BT_TRUE(mstate(m).aborted);
    braid_memory_transport_free(m);
    /* the peer reads in time */
    tp q = { .base.ops = &tp_ops };
    braid_memory_transport_new(loop, &q.base, &m);
    BT_OK(braid_transport_write(q.base.transport, big, sizeof big));
    braid_transport_close(q.base.transport, BRAID_FOREVER);   /* then a deadline on top */
    braid_transport_close(q.base.transport, BRAID_SECONDS(2));
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(1)));
    braid_memory_transport_consume(m, sizeof big);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(q.lost, 1);
    BT_ERR(q.lost_code, BRAID_ECONNECTION_DONE);
    BT_EQ(braid_loop_timer_count(loop), 0);              /* the deadline went with it */
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(5)));
    BT_EQ(q.lost, 1);
    braid_memory_transport_free(m);
    /* BRAID_FOREVER is plain lose_connection; 0 aborts at the next timer phase */
    tp r = { .base.ops = &tp_ops };
    braid_memory_transport_new(loop, &r.base, &m);
    BT_OK(braid_transport_write(r.base.transport, "abc", 3));
    braid_transport_close(r.base.transport, BRAID_FOREVER);
    BT_EQ(braid_loop_timer_count(loop), 0);
    braid_transport_close(r.base.transport, 0);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(r.lost, 1);
    BT_ERR(r.lost_code, BRAID_ETIMEDOUT);
    braid_memory_transport_free(m);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* Over TCP on every backend, with the fake clock: the server closes with a
 * deadline while 16 MiB are queued for a client that stopped reading. Nothing
 * happens until the deadline; at the deadline (not a nanosecond earlier) the
 * server's connection is lost with BRAID_ETIMEDOUT and the client sees a
 * reset. The loop then has nothing left to run: a server shutting down this
 * way exits however its peers behave. */
static void tcp_pair(braid_loop *loop, tfactory *sf, tfactory *cf, braid_listener **l,
                     braid_transport **st, braid_transport **ct) {
    int port;
    *l = bt_listen_tcp(loop, &sf->f, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port }, &cf->f), &g);
    BT_FALSE(g.failed);
    BT_RUN_UNTIL(loop, sf->pool[0].made, 1000);
    BT_EQ(sf->pool[0].made, 1);
    *st = sf->pool[0].base.transport;
    *ct = g.p->transport;
}

BT_IO_TEST(tcp_close_within_non_reading_peer_aborts_at_deadline) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    braid_listener *l;
    braid_transport *st, *ct;
    tcp_pair(loop, &sf, &cf, &l, &st, &ct);
    braid_listener_close(l);
    braid_transport_pause_reading(ct);
    const size_t total = 16u << 20;      /* far more than loopback's socket buffers */
    char *big = malloc(total);
    BT_TRUE(big);
    memset(big, 'z', total);
    BT_OK(braid_transport_set_limits(st, 0, 0, 2 * total));
    BT_OK(braid_transport_write(st, big, total));
    free(big);
    for (int i = 0; i < 200; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_GT(braid_transport_buffered(st), 0);             /* the kernel took what it could */
    braid_transport_close(st, BRAID_SECONDS(3));
    for (int i = 0; i < 200; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(3) - 1));
    for (int i = 0; i < 50; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(spool[0].lost, 0);                            /* still flushing */
    BT_GT(braid_transport_buffered(st), 0);
    BT_OK(braid_loop_advance(loop, 1));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(spool[0].lost, 1);
    BT_ERR(spool[0].lost_code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(spool[0].lost_msg, "close deadline passed") != NULL);
    /* the client, reading again, gets what was in the kernel and then the reset */
    braid_transport_resume_reading(ct);
    BT_RUN_UNTIL(loop, cpool[0].lost, 100000);
    BT_EQ(cpool[0].lost, 1);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNRESET);
    BT_LT(cpool[0].total_in, total);
    BT_EQ(braid_loop_run(loop), 0);                     /* nothing keeps the loop */
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* The peer reads: the close is clean, before the deadline, and the deadline
 * is disarmed (the fake clock never moves in this test). */
BT_IO_TEST(tcp_close_within_reading_peer_closes_cleanly) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    braid_listener *l;
    braid_transport *st, *ct;
    tcp_pair(loop, &sf, &cf, &l, &st, &ct);
    braid_listener_close(l);
    (void)ct;
    const size_t total = 4u << 20;
    char *big = malloc(total);
    BT_TRUE(big);
    memset(big, 'y', total);
    BT_OK(braid_transport_set_limits(st, 0, 0, 2 * total));
    BT_OK(braid_transport_write(st, big, total));
    free(big);
    braid_transport_close(st, BRAID_SECONDS(3));
    BT_RUN_UNTIL(loop, spool[0].lost && cpool[0].lost, 100000);
    BT_ERR(spool[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_UEQ(cpool[0].total_in, total);
    BT_EQ(braid_loop_timer_count(loop), 0);
    BT_EQ(braid_loop_run(loop), 0);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* TLS composes: the TLS transport's deadline also bounds the flush of its
 * lower transport (close_notify behind records a non-reading peer never
 * takes). Without that the application hears "closed cleanly" while the
 * TCP connection under it lingers — and keeps the loop — forever. */
BT_IO_TEST(tls_close_within_bounds_the_lower_transport) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL), *cctx = bt_tls_client_ctx(NULL);
    tp spool[1], cpool[1];
    tfactory sf, cf;
    tf_init(&sf, spool, 1, &tp_ops);
    tf_init(&cf, cpool, 1, &tp_ops);
    braid_tls_factory stf;
    BT_OK(braid_tls_factory_init(&stf, &sf.f, &(braid_tls_wrap_options){ .ctx = sctx }));
    braid_tls_wrap_options cto = { .ctx = cctx, .server_name = "localhost" };
    int port;
    braid_listener *l = bt_listen_tcp(loop, &stf.base, &port);
    got g = { 0 };
    await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                      .host = "127.0.0.1", .port = port, .tls = &cto }, &cf.f), &g);
    BT_FALSE(g.failed);
    braid_listener_close(l);
    /* the handshake completes when the client has something to say */
    BT_OK(braid_transport_write(g.p->transport, "hi", 2));
    BT_RUN_UNTIL(loop, spool[0].total_in >= 2, 10000);
    BT_EQ(spool[0].total_in, 2);
    braid_transport *st = spool[0].base.transport;
    braid_transport_pause_reading(g.p->transport);
    /* Small writes until the kernel is full and the lower (TCP) transport
     * holds ciphertext: the TLS transport's own buffer is then empty, so its
     * close completes at once (close_notify queued behind the records) and
     * only the lower transport's flush is left to bound. */
    static char chunk[4096];
    braid_transport *lower = braid_tls_transport_lower(st);
    for (int k = 0; k < 100000 && braid_transport_buffered(lower) < 8192; k++) {
        BT_OK(braid_transport_write(st, chunk, sizeof chunk));
        for (int i = 0; i < 4; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    BT_GE(braid_transport_buffered(lower), 8192);
    BT_EQ(braid_transport_buffered(st), 0);
    braid_transport_close(st, BRAID_SECONDS(3));
    for (int i = 0; i < 100; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(spool[0].lost, 1);                /* the TLS transport's part is done */
    BT_ERR(spool[0].lost_code, BRAID_ECONNECTION_DONE);
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(3) - 1));
    for (int i = 0; i < 20; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_loop_timer_count(loop), 1);  /* the lower transport's deadline, pending */
    BT_OK(braid_loop_advance(loop, 1));
    for (int i = 0; i < 20; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_loop_timer_count(loop), 0);
    /* the lower transport was reset at the deadline: the client, reading
     * again, meets the reset before any close_notify */
    braid_transport_resume_reading(g.p->transport);
    BT_RUN_UNTIL(loop, cpool[0].lost, 100000);
    BT_EQ(cpool[0].lost, 1);
    BT_ERR(cpool[0].lost_code, BRAID_ECONNRESET);
    BT_EQ(braid_loop_run(loop), 0);
    braid_tls_factory_close(&stf);
    braid_tls_ctx_unref(sctx);
    braid_tls_ctx_unref(cctx);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* ======================= fiber streams: the endpoint parser's reason ================= */
/* braid_fstream_connect returns only a code; for a malformed description the
 * code's text ("malformed endpoint description") does not say what is wrong,
 * so the parser's reason is logged at warning level (shown by default). */
typedef struct logcap { char warn[512]; int warns; } logcap;
static void cap_log(void *ctx, braid_log_level level, const char *msg) {
    logcap *c = ctx;
    if (level == BRAID_LOG_WARN) {
        c->warns++;
        snprintf(c->warn, sizeof c->warn, "%s", msg);
    }
}
typedef struct fsc { braid_loop *loop; int rc; } fsc;
static braid_result fsc_main(void *arg) {
    fsc *c = arg;
    braid_fstream *s = NULL;
    c->rc = braid_fstream_connect(c->loop, "tcp:host=127.0.0.1:port=1:bogus=1", BRAID_SECONDS(1), &s);
    braid_fstream_free(s);
    return braid_result_ok(NULL);
}
BT_TEST(fstream_connect_keeps_the_endpoint_reason) {
    logcap cap = { .warns = 0 };
    braid_loop *loop;
    BT_OK(braid_loop_new(&(braid_loop_options){ .log = cap_log, .log_ctx = &cap }, &loop));
    fsc c = { .loop = loop, .rc = 0 };
    braid_deferred *d = braid_fiber_spawn(loop, fsc_main, &c, NULL);
    BT_TRUE(d != NULL);
    BT_OK(braid_loop_run(loop));
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    braid_result_drop(r);
    braid_deferred_unref(d);
    BT_ERR(c.rc, BRAID_EBAD_ENDPOINT);
    BT_EQ(cap.warns, 1);
    BT_TRUE(strstr(cap.warn, "unknown parameter 'bogus'") != NULL);
    BT_TRUE(strstr(cap.warn, "tcp:host=127.0.0.1:port=1:bogus=1") != NULL);
    bt_loop_destroy(loop);
}

/* ======================= broadcasting: the cap and slow consumers =================== */
/* A broadcaster: whatever its source sends goes to every recipient (here
 * the server side of the reader connections). With `recipe` set it follows
 * docs/stream.md's slow-consumer recipe: each recipient has a push producer
 * whose pause/resume are the high/low watermark callbacks, and a recipient
 * over its high watermark is skipped (its messages dropped) until it drains. */
enum { BC_MAX = 4 };
typedef struct bcast bcast;
typedef struct bc_recipient {
    braid_producer prod;         /* the watermark callbacks */
    bcast *b;
    braid_transport *t;
    bool slow;
    int crossings_high, crossings_low;
    uint64_t dropped;
} bc_recipient;
struct bcast {
    braid_protocol base;         /* the source's protocol */
    bc_recipient r[BC_MAX];
    int n;
    bool recipe;
    uint64_t in;
};
static void bc_high(braid_producer *p) { bc_recipient *r = p->arg; r->slow = true; r->crossings_high++; }
static void bc_low(braid_producer *p) { bc_recipient *r = p->arg; r->slow = false; r->crossings_low++; }
static void bc_gone(braid_producer *p) { bc_recipient *r = p->arg; r->t = NULL; }
static void bc_data(braid_protocol *p, const void *buf, size_t len) {
    bcast *b = (bcast *)p;
    b->in += len;
    for (int i = 0; i < b->n; i++) {
        bc_recipient *r = &b->r[i];
        if (!r->t) continue;
        if (b->recipe && r->slow) { r->dropped += len; continue; }
        /* as a chat server would: one message (here 1 KiB) at a time */
        for (size_t o = 0; o < len && r->t; o += 1024)
            braid_transport_write(r->t, (const char *)buf + o, len - o < 1024 ? len - o : 1024);
    }
}
static const braid_protocol_ops bc_ops = { .data_received = bc_data, .connection_lost = NULL };

static void bc_add(bcast *b, braid_transport *t, size_t cap) {
    bc_recipient *r = &b->r[b->n++];
    r->b = b;
    r->t = t;
    BT_OK(braid_transport_set_limits(t, 16 * 1024, 64 * 1024, cap));
    if (b->recipe) {
        r->prod = (braid_producer){ .pause_producing = bc_high, .resume_producing = bc_low,
                                    .stop_producing = bc_gone, .arg = r };
        BT_OK(braid_transport_register_producer(t, &r->prod, true));
    }
}

/* Set up: a listener whose first connection is the source (bcast protocol)
 * and the next `nr` the recipients' server sides; the readers are braid
 * clients (cpool). */
typedef struct bc_world {
    braid_listener *l;
    int port, src;
    bcast b;
    tp rpool[BC_MAX], cpool[BC_MAX];
    int accepted;
} bc_world;
static braid_protocol *bc_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    bc_world *w = f->user;
    if (w->accepted++ == 0) return &w->b.base;
    return &w->rpool[w->accepted - 2].base;
}

static void bc_open(braid_loop *loop, bc_world *w, braid_factory *sf, tfactory *cf, int nr,
                    bool recipe, size_t cap) {
    memset(w, 0, sizeof *w);
    w->b.base.ops = &bc_ops;
    w->b.recipe = recipe;
    for (int i = 0; i < BC_MAX; i++) w->rpool[i].base.ops = &tp_ops;
    memset(sf, 0, sizeof *sf);
    sf->build_protocol = bc_build;
    sf->user = w;
    w->l = bt_listen_tcp(loop, sf, &w->port);
    w->src = bt_connect_tcp(w->port, BT_CONNECT_NONBLOCK);
    BT_RUN_UNTIL(loop, w->accepted >= 1, 1000);
    tf_init(cf, w->cpool, nr, &tp_ops);
    for (int i = 0; i < nr; i++) {
        w->cpool[i].check_pattern = true;
        got g = { 0 };
        await_connect(loop, braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
                          .host = "127.0.0.1", .port = w->port }, &cf->f), &g);
        BT_FALSE(g.failed);
    }
    BT_RUN_UNTIL(loop, w->accepted >= 1 + nr, 1000);
    BT_EQ(w->accepted, 1 + nr);
    for (int i = 0; i < nr; i++) bc_add(&w->b, w->rpool[i].base.transport, cap);
}

/* Feed `total` pattern bytes into the source, running the loop meanwhile;
 * the first 384 KiB go in before the loop looks, so one read delivers as
 * much as a read event can. */
static void bc_feed(braid_loop *loop, bc_world *w, size_t total) {
    static char buf[65536];
    size_t off = 0;
    for (int spins = 0; off < total && spins < 2000000; spins++) {
        size_t n = total - off < sizeof buf ? total - off : sizeof buf;
        for (size_t j = 0; j < n; j++) buf[j] = (char)((off + j) % 251);
        ssize_t k = write(w->src, buf, n);
        if (k > 0) { off += (size_t)k; if (off < (384u << 10)) continue; }
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    BT_EQ(off, total);
}

/* Writes to a recipient in one iteration used to wait for the end of the
 * iteration to be flushed: a read event delivering 4 × 64 KiB from the
 * source killed a recipient with a 96 KiB cap although its reader kept up.
 * Now a buffer past its high watermark is flushed at once and a reader that
 * keeps up never comes near the cap. */
BT_IO_TEST(broadcast_small_cap_keeps_readers_that_keep_up) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_factory sf;
    tfactory cf;
    static bc_world w;
    bc_open(loop, &w, &sf, &cf, 2, false, 96 * 1024);
    const size_t total = 4u << 20;
    bc_feed(loop, &w, total);
    for (int i = 0; i < 200000 && (w.cpool[0].total_in < total || w.cpool[1].total_in < total); i++) {
        if (w.rpool[0].lost || w.rpool[1].lost) break;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    for (int i = 0; i < 2; i++) {
        BT_EQ(w.rpool[i].lost, 0);                 /* not aborted: EBUFFER_LIMIT before */
        BT_UEQ(w.cpool[i].total_in, total);
        BT_EQ(w.cpool[i].pattern_errors, 0);
    }
    close(w.src);
    for (int i = 0; i < 2; i++) braid_transport_close(w.rpool[i].base.transport, BRAID_FOREVER);
    for (int i = 0; i < 100000 && !(w.cpool[0].lost && w.cpool[1].lost && w.b.base.transport == NULL); i++)
        BT_OK(braid_loop_run_once(loop, 0));
    braid_listener_close(w.l);
    bt_loop_destroy(loop);
}

/* The slow-consumer recipe: one recipient's reader stops reading. Its
 * watermark callbacks (a push producer) mark it slow at the high watermark
 * and the broadcaster drops its messages until it drains below the low one:
 * it never nears its cap, the reader that keeps up gets every byte. */
BT_IO_TEST(broadcast_slow_consumer_recipe) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_factory sf;
    tfactory cf;
    static bc_world w;
    bc_open(loop, &w, &sf, &cf, 2, true, 256 * 1024);
    braid_transport *slow_reader = w.cpool[1].base.transport;
    braid_transport_pause_reading(slow_reader);
    w.cpool[1].check_pattern = false;              /* it will miss what was dropped */
    const size_t total = 8u << 20;
    bc_feed(loop, &w, total);
    BT_RUN_UNTIL_NOWAIT(loop, w.cpool[0].total_in >= total, 200000);
    BT_UEQ(w.cpool[0].total_in, total);
    BT_EQ(w.cpool[0].pattern_errors, 0);
    BT_EQ(w.rpool[1].lost, 0);                     /* under its cap */
    BT_GE(w.b.r[1].crossings_high, 1);
    BT_TRUE(w.b.r[1].slow);
    BT_GT(w.b.r[1].dropped, 0);
    BT_ULE(braid_transport_buffered(w.b.r[1].t), 256 * 1024);
    BT_EQ(w.b.r[0].dropped, 0);
    /* it reads again: the buffer drains, the low-watermark callback clears it */
    braid_transport_resume_reading(slow_reader);
    BT_RUN_UNTIL_NOWAIT(loop, !w.b.r[1].slow, 100000);
    BT_FALSE(w.b.r[1].slow);
    BT_GE(w.b.r[1].crossings_low, 1);
    for (int i = 0; i < 100000 && w.cpool[1].total_in + w.b.r[1].dropped < total; i++)
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_UEQ(w.cpool[1].total_in + w.b.r[1].dropped, total);   /* each byte: delivered or dropped */
    close(w.src);
    for (int i = 0; i < 2; i++) braid_transport_close(w.rpool[i].base.transport, BRAID_FOREVER);
    for (int i = 0; i < 100000 && !(w.cpool[0].lost && w.cpool[1].lost && w.b.base.transport == NULL); i++)
        BT_OK(braid_loop_run_once(loop, 0));
    braid_listener_close(w.l);
    bt_loop_destroy(loop);
}

/* ---- a descriptor number reused in the iteration that closed it ---------------------------- */
/* A connected TCP pair on loopback, made without braid. */
static void raw_tcp_pair(int sv[2]) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    BT_GE(l, 0);
    BT_EQ(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    BT_EQ(listen(l, 1), 0);
    BT_EQ(getsockname(l, (struct sockaddr *)&a, &al), 0);
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    BT_EQ(connect(sv[0], (struct sockaddr *)&a, sizeof a), 0);
    sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    BT_GE(sv[1], 0);
    close(l);
}

/* The lowest free descriptor number from `from` up names b's socket: what a
 * connection accepted right after a close gets (accept takes the lowest
 * free number; here from `from` up, whatever holes the process has below). */
static int take_number(int b, int from) {
    int fd = fcntl(b, F_DUPFD_CLOEXEC, from);
    BT_GE(fd, 0);
    close(b);
    return fd;
}

/* A connection closed with a send still waiting to go (on io_uring: a send
 * SQE queued for the next wait), and a new connection taking its descriptor
 * number in the same iteration: none of the old connection's bytes may reach
 * the new one. (On io_uring the queued send named the descriptor by number:
 * submitted after the close, it wrote the old client's data to the new one.) */
BT_IO_TEST(tcp_unsent_data_never_reaches_a_reused_descriptor) {
    braid_loop *loop = bt_loop_new(NULL);
    int a[2], b[2];
    raw_tcp_pair(a);
    raw_tcp_pair(b);
    tp x = { .base.ops = &tp_ops };
    BT_OK(braid_transport_adopt(loop, a[1], &x.base));
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(x.made, 1);
    braid_transport *t = x.base.transport;
    const size_t total = 8u << 20;          /* far more than loopback's socket buffers */
    char *big = malloc(total);
    BT_TRUE(big);
    memset(big, 'A', total);
    BT_OK(braid_transport_set_limits(t, 0, 0, 2 * total));
    BT_OK(braid_transport_write(t, big, total));
    free(big);
    BT_GT(braid_transport_buffered(t), 0);  /* the kernel did not take it all: a send waits */
    braid_transport_abort(t);
    int reused = take_number(b[1], a[1]);
    for (int i = 0; i < 50; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(x.lost, 1);
    char buf[4096];
    ssize_t n = recv(b[0], buf, sizeof buf, MSG_DONTWAIT);
    if (n > 0)
        bt_fail(__FILE__, __LINE__, "the new connection (fd %d, was %d) received %zd bytes of the old one's ('%c'...)",
                reused, a[1], n, buf[0]);
    BT_EQ(n, -1);
    BT_TRUE(errno == EAGAIN || errno == EWOULDBLOCK);
    /* the new connection works both ways, untouched */
    BT_EQ(write(reused, "new", 3), 3);
    BT_EQ(recv(b[0], buf, sizeof buf, 0), 3);
    BT_EQ(memcmp(buf, "new", 3), 0);
    close(reused);
    close(b[0]);
    close(a[0]);
    BT_EQ(braid_loop_run(loop), 0);
    bt_loop_destroy(loop);
}

/* The same for a receive: a transport closed before its first receive was
 * submitted (on io_uring: a recv SQE queued for the next wait), and a new
 * connection on its number that already has data: the data stays for the
 * new connection's owner, none of it read away by the closed transport. */
BT_IO_TEST(tcp_closed_before_reading_never_reads_a_reused_descriptor) {
    braid_loop *loop = bt_loop_new(NULL);
    int a[2], b[2];
    raw_tcp_pair(a);
    raw_tcp_pair(b);
    BT_EQ(write(b[0], "GET / HTTP/1.1\r\n\r\n", 18), 18);
    tp x = { .base.ops = &tp_ops };
    BT_OK(braid_transport_adopt(loop, a[1], &x.base));
    braid_transport_abort(x.base.transport);
    int reused = take_number(b[1], a[1]);
    for (int i = 0; i < 50; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(x.total_in, 0);
    char buf[64];
    ssize_t n = recv(reused, buf, sizeof buf, MSG_DONTWAIT);
    if (n != 18)
        bt_fail(__FILE__, __LINE__, "the new connection (fd %d, was %d) kept %zd of its 18 bytes",
                reused, a[1], n);
    BT_EQ(memcmp(buf, "GET / HTTP/1.1\r\n\r\n", 18), 0);
    close(reused);
    close(b[0]);
    close(a[0]);
    BT_EQ(braid_loop_run(loop), 0);
    bt_loop_destroy(loop);
}
