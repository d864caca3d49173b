/* The tuple space over the wire: the codec, a client and a server over a
 * socketpair on every backend, bad frames, a client that goes away holding
 * leases, and worker processes (this program run again as a worker: see
 * worker_main) that take jobs on leases — one of them dies mid-job and
 * every job still completes. */
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include "support/walk.h"
#include "tuplespace/tuplespace_internal.h"
#include <braid/testing_deferred.h>
#include <braid/tuplespace.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

extern char **environ;

#define JOB_TMPL BRAID_FIELDS(braid_field_str("job"), braid_field_any(BRAID_FIELD_INT))

/* ---- the worker process ------------------------------------------------------------ */
/* A worker: takes jobs ("job", id) on leases through the blocking client,
 * writes ("result", id, deliveries) and acks; ("job", -1) tells it to stop.
 * With BT_TS_CRASH_AFTER=k it dies holding the lease of its k-th job. */
static void worker_main(int fd, int wfd, int crash_after) {
    braid_tuplespace_sync *s;
    if ((wfd < 0 ? braid_tuplespace_sync_new(fd, 0, &s) : braid_tuplespace_sync_new_pipes(fd, wfd, 0, &s)) < 0)
        _exit(2);
    for (int k = 1;; k++) {
        braid_tuple *t = NULL;
        int rc = braid_tuplespace_sync_in_lease(s, JOB_TMPL, BRAID_SECONDS(60), BRAID_SECONDS(20), &t);
        if (rc < 0) _exit(4);
        int64_t id = t->f[1].v.i;
        if (id < 0) {
            braid_tuplespace_sync_ack(s, t->lease);
            braid_tuple_free(t);
            break;
        }
        if (k == crash_after) _exit(3);                /* dies holding the lease */
        if (braid_tuplespace_sync_out(s, BRAID_FIELDS(braid_field_str("result"), braid_field_int(id),
                                                      braid_field_int(t->deliveries)), 0) < 0)
            _exit(5);
        if (braid_tuplespace_sync_ack(s, t->lease) < 0) _exit(6);
        braid_tuple_free(t);
    }
    braid_tuplespace_sync_free(s);
    _exit(0);
}

__attribute__((constructor)) static void maybe_worker(void) {
    const char *fd = getenv("BT_TS_WORKER_FD");
    if (!fd) return;
    const char *crash = getenv("BT_TS_CRASH_AFTER");
    const char *wfd = getenv("BT_TS_WORKER_WFD");     /* a pipe pair: requests go there */
    worker_main(atoi(fd), wfd ? atoi(wfd) : -1, crash ? atoi(crash) : 0);
}

/* A worker on fd (a socket), or reading rfd and writing wfd (pipes: wfd >= 0). */
static pid_t spawn_worker_pipes(int fd, int wfd, int crash_after) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd, 3);
    if (wfd >= 0) posix_spawn_file_actions_adddup2(&fa, wfd, 4);
    char crash[64];
    snprintf(crash, sizeof crash, "BT_TS_CRASH_AFTER=%d", crash_after);
    char *env[] = { "BT_TS_WORKER_FD=3", crash, wfd >= 0 ? "BT_TS_WORKER_WFD=4" : NULL, NULL };
    char *argv[] = { "tuplespace-worker", NULL };
    pid_t pid;
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, env);
    posix_spawn_file_actions_destroy(&fa);
    BT_EQ(rc, 0);
    return pid;
}

static pid_t spawn_worker(int fd, int crash_after) { return spawn_worker_pipes(fd, -1, crash_after); }

/* ---- the codec ------------------------------------------------------------------------ */
BT_TEST(codec_roundtrip_and_truncation) {
    ts_buf b = { 0 };
    braid_field tmpl[] = { braid_field_str("job"), braid_field_any(BRAID_FIELD_INT), braid_field_int_range(-5, 5),
                           braid_field_double_range(0.5, 1.5), braid_field_str_prefix("ab"),
                           braid_field_bytes("\0x", 2), braid_field_bool(true), braid_field_double(-2.25),
                           braid_field_int(INT64_MIN) };
    size_t n = sizeof tmpl / sizeof tmpl[0];
    size_t at = braid__ts_wire_begin(&b, TS_OP_IN_LEASE, 77);
    braid__ts_put_u64(&b, 123);
    braid__ts_put_u64(&b, 456);
    braid__ts_put_fields(&b, tmpl, n);
    braid__ts_wire_end(&b, at);
    BT_FALSE(b.failed);
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    ts_msg m;
    BT_OK(braid__ts_wire_decode(b.p + 4, b.len - 4, f, &m));
    BT_EQ(m.op, TS_OP_IN_LEASE);
    BT_EQ(m.id, 77);
    BT_UEQ(m.a, 123);
    BT_UEQ(m.b, 456);
    BT_EQ(m.n, n);
    char want[256], got[256];
    braid_fields_format(tmpl, n, want, sizeof want);
    braid_fields_format(m.f, m.n, got, sizeof got);
    BT_STREQ(got, want);
    /* every truncation is refused, none reads past the end */
    for (size_t len = 0; len < b.len - 4; len++) {
        uint8_t *copy = malloc(len ? len : 1);
        memcpy(copy, b.p + 4, len);
        int rc = braid__ts_wire_decode(copy, len, f, &m);
        BT_TRUE(rc == BRAID_ETUPLE_PROTO || (len == 0 && rc == BRAID_ETUPLE_PROTO));
        free(copy);
    }
    /* a byte too many, another version, a bad bool */
    uint8_t *p = b.p + 4;
    size_t len = b.len - 4;
    uint8_t *more = malloc(len + 1);
    memcpy(more, p, len);
    more[len] = 0;
    BT_ERR(braid__ts_wire_decode(more, len + 1, f, &m), BRAID_ETUPLE_PROTO);
    more[0] = 2;
    BT_ERR(braid__ts_wire_decode(more, len, f, &m), BRAID_ETUPLE_VERSION);
    free(more);
    braid__ts_buf_free(&b);

    /* a tuple may hold no formal */
    at = braid__ts_wire_begin(&b, TS_OP_OUT, 1);
    braid__ts_put_u32(&b, 0);
    braid__ts_put_fields(&b, tmpl, 2);
    braid__ts_wire_end(&b, at);
    BT_ERR(braid__ts_wire_decode(b.p + 4, b.len - 4, f, &m), BRAID_ETUPLE_PROTO);
    braid__ts_buf_free(&b);
}

/* ---- a loop with a space, served over socketpairs ----------------------------------- */
typedef struct rig {
    braid_loop *loop;
    braid_tuplespace *ts;
} rig;

static void rig_open(rig *r, const braid_tuplespace_options *o) {
    r->loop = bt_loop_new(NULL);
    BT_OK(braid_tuplespace_new(r->loop, o, &r->ts));
}

/* A client on the same loop connected to the space through a socketpair. */
static braid_tuplespace_client *rig_client(rig *r, const braid_tuplespace_client_options *o) {
    int sv[2];
    bt_socketpair(sv);
    BT_OK(braid_tuplespace_serve_fd(r->ts, sv[0], NULL));
    braid_tuplespace_client *c = NULL;
    BT_OK(braid_tuplespace_client_adopt(r->loop, sv[1], o, &c));
    return c;
}

static void rig_close(rig *r) {
    BT_RUN_UNTIL_NOWAIT(r->loop, braid_tuplespace_connections(r->ts) == 0, 1000);
    braid_tuplespace_free(r->ts);
    BT_EQ(braid_deferred_live(r->loop), 0);
    bt_loop_destroy(r->loop);
}

/* Run until d has a result; return it (taken) and release d. */
static braid_result wait_result(braid_loop *loop, braid_deferred *d) {
    BT_TRUE(d);
    BT_RUN_UNTIL(loop, braid_deferred_has_result(d), 100000);
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    braid_deferred_unref(d);
    return r;
}
static braid_tuple *wait_tuple(braid_loop *loop, braid_deferred *d) {
    braid_result r = wait_result(loop, d);
    if (r.failure) bt_fail(__FILE__, __LINE__, "failed: %s", braid_strerror(r.failure->code));
    return r.value;              /* the tuple's dtor frees it: we own it now */
}
static int wait_code(braid_loop *loop, braid_deferred *d) {
    braid_result r = wait_result(loop, d);
    int code = r.failure ? r.failure->code : 0;
    braid_result_drop(r);
    return code;
}

static size_t waiters(braid_tuplespace *ts) {
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    return st.waiters;
}

BT_IO_TEST(wire_operations) {
    rig r;
    braid_tuplespace_options o = { .max_tuples = 5 };
    rig_open(&r, &o);
    braid_tuplespace_client *c = rig_client(&r, NULL);
    BT_TRUE(braid_tuplespace_client_is_connected(c));
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0)));
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(2)), 4)));
    /* rd, then in: priority order across the wire */
    braid_tuple *t = wait_tuple(r.loop, braid_tuplespace_client_rd(c, JOB_TMPL, 0));
    BT_EQ(t->f[1].v.i, 2);
    BT_EQ(t->priority, 4);
    BT_STREQ(t->f[0].v.p, "job");
    braid_tuple_free(t);
    t = wait_tuple(r.loop, braid_tuplespace_client_in(c, JOB_TMPL, 0));
    BT_EQ(t->f[1].v.i, 2);
    braid_tuple_free(t);
    /* a waiting in answered by a later out (pipelined on the same connection) */
    braid_deferred *w = braid_tuplespace_client_in(c, BRAID_FIELDS(braid_field_str("late")), BRAID_SECONDS(30));
    braid_deferred *o2 = braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("late")), 0);
    t = wait_tuple(r.loop, w);
    BT_STREQ(t->f[0].v.p, "late");
    braid_tuple_free(t);
    BT_OK(wait_code(r.loop, o2));
    /* leases */
    t = wait_tuple(r.loop, braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(30), 0));
    BT_EQ(t->f[1].v.i, 1);
    BT_EQ(t->deliveries, 1);
    BT_NE(t->lease, 0);
    BT_OK(wait_code(r.loop, braid_tuplespace_client_renew(c, t->lease, BRAID_SECONDS(60))));
    BT_OK(wait_code(r.loop, braid_tuplespace_client_nack(c, t->lease, 0)));
    BT_ERR(wait_code(r.loop, braid_tuplespace_client_ack(c, t->lease)), BRAID_ETUPLE_NOLEASE);
    braid_tuple_free(t);
    t = wait_tuple(r.loop, braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(30), 0));
    BT_EQ(t->deliveries, 2);
    BT_OK(wait_code(r.loop, braid_tuplespace_client_ack(c, t->lease)));
    braid_tuple_free(t);
    /* nothing left, capacity, bad input refused before sending */
    BT_ERR(wait_code(r.loop, braid_tuplespace_client_in(c, JOB_TMPL, 0)), BRAID_ETUPLE_NOMATCH);
    for (int i = 0; i < 5; i++)
        BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(10 + i)), i)));
    BT_ERR(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_int(0)), 0)), BRAID_ETUPLE_FULL);
    BT_ERR(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_any(BRAID_FIELD_INT)), 0)),
           BRAID_EINVAL);
    /* in_all / rd_all */
    braid_result res = wait_result(r.loop, braid_tuplespace_client_rd_all(c, JOB_TMPL, 2));
    braid_tuple_list *l = res.value;
    BT_EQ(l->n, 2);
    BT_EQ(l->t[0]->f[1].v.i, 14);
    BT_EQ(l->t[1]->f[1].v.i, 13);
    braid_result_drop(res);
    res = wait_result(r.loop, braid_tuplespace_client_in_all(c, JOB_TMPL, 0));
    l = res.value;
    BT_EQ(l->n, 5);
    braid_result_drop(res);
    /* cancelling a waiting call: failed at once, and the server forgets it */
    w = braid_tuplespace_client_in(c, JOB_TMPL, BRAID_FOREVER);
    BT_RUN_UNTIL(r.loop, waiters(r.ts) == 1, 1000);
    braid_deferred_cancel(w);
    BT_ERR(wait_code(r.loop, w), BRAID_ECANCELED);
    BT_RUN_UNTIL(r.loop, waiters(r.ts) == 0, 1000);
    /* the client still works after the cancel's late reply */
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("x")), 0)));
    braid_tuplespace_client_free(c);
    rig_close(&r);
}

/* A client that goes away: its leases go back at once, its waiting calls
 * are dropped; pending calls on the client side fail. */
BT_IO_TEST(wire_client_gone_returns_leases) {
    rig r;
    rig_open(&r, NULL);
    braid_tuplespace_client *c = rig_client(&r, NULL);
    braid_tuplespace_client *other = rig_client(&r, NULL);
    BT_OK(braid_tuplespace_out(r.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(7)), 0));
    braid_tuple *t = wait_tuple(r.loop, braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(600), 0));
    braid_tuple_free(t);
    braid_deferred *pending = braid_tuplespace_client_in(c, BRAID_FIELDS(braid_field_str("never")), BRAID_FOREVER);
    /* other waits for a job: it gets the one c held, when c goes */
    braid_deferred *next = braid_tuplespace_client_in_lease(other, JOB_TMPL, BRAID_SECONDS(600), BRAID_FOREVER);
    BT_RUN_UNTIL(r.loop, waiters(r.ts) == 2, 1000);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(r.ts, &st);
    BT_EQ(st.leased, 1);
    BT_EQ(st.waiters, 2);
    braid_tuplespace_client_free(c);
    braid_failure *f = braid_deferred_expect_failure(pending, BRAID_ESHUTDOWN);
    braid_failure_free(f);
    braid_deferred_unref(pending);
    t = wait_tuple(r.loop, next);
    BT_EQ(t->f[1].v.i, 7);
    BT_EQ(t->deliveries, 2);
    braid_tuple_free(t);
    braid_tuplespace_stats_get(r.ts, &st);
    BT_EQ(st.waiters, 0);
    BT_EQ(st.nacks, 1);
    braid_tuplespace_client_free(other);
    rig_close(&r);
}

/* Freeing the space closes the connections serving it; their clients see
 * the connection end, and nothing is used after it is freed. */
BT_IO_TEST(wire_space_freed_under_clients) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_tuplespace *ts;
    BT_OK(braid_tuplespace_new(loop, NULL, &ts));
    rig r = { loop, ts };
    braid_tuplespace_client *c = rig_client(&r, NULL);
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0));
    braid_tuple *t = wait_tuple(loop, braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(30), 0));
    braid_tuple_free(t);
    braid_deferred *w = braid_tuplespace_client_in(c, JOB_TMPL, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, waiters(ts) == 1, 1000);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.waiters, 1);
    BT_EQ(st.leased, 1);
    braid_tuplespace_free(ts);
    BT_ERR(wait_code(loop, w), BRAID_ESHUTDOWN);  /* the server's answer, flushed before it closed */
    BT_RUN_UNTIL(loop, !braid_tuplespace_client_is_connected(c), 1000);
    braid_tuplespace_client_free(c);
    bt_drain(loop);
    BT_EQ(braid_deferred_live(loop), 0);
    bt_loop_destroy(loop);
}

/* Bad frames close that connection only. */
static int lost_code;
static void on_lost(braid_tuplespace_client *c, int reason, void *arg) {
    (void)c; (void)arg;
    lost_code = reason;
}

/* Run the loop until the peer of fd closed it (some backends close a
 * descriptor only once their pending operations on it completed). */
static void wait_eof(braid_loop *loop, int fd) {
    BT_EQ(fcntl(fd, F_SETFL, O_NONBLOCK), 0);
    for (int i = 0; i < 20000; i++) {
        char buf[16];
        ssize_t k = read(fd, buf, sizeof buf);
        if (k == 0) return;
        BT_TRUE(k < 0 && errno == EAGAIN);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        struct pollfd p = { fd, POLLIN, 0 };
        poll(&p, 1, 1);
    }
    bt_fail(__FILE__, __LINE__, "the server did not close the connection");
}

BT_IO_TEST(wire_bad_frames_close_one_connection) {
    rig r;
    rig_open(&r, NULL);
    braid_tuplespace_client *good = rig_client(&r, NULL);
    static const struct { const char *name; uint8_t bytes[16]; size_t len; } bad[] = {
        { "unknown op", { 0, 0, 0, 6, 1, 99, 0, 0, 0, 1 }, 10 },
        { "version 7", { 0, 0, 0, 6, 7, 1, 0, 0, 0, 1 }, 10 },
        { "truncated out", { 0, 0, 0, 7, 1, 1, 0, 0, 0, 1, 0 }, 11 },
        { "oversized", { 0x7f, 0xff, 0xff, 0xff, 1 }, 5 },
        { "a reply to the server", { 0, 0, 0, 10, 1, 64, 0, 0, 0, 1, 0, 0, 0, 0 }, 14 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int sv[2];
        bt_socketpair(sv);
        BT_OK(braid_tuplespace_serve_fd(r.ts, sv[0], NULL));
        BT_EQ(write(sv[1], bad[i].bytes, bad[i].len), (ssize_t)bad[i].len);
        BT_RUN_UNTIL_NOWAIT(r.loop, braid_tuplespace_connections(r.ts) == 1, 1000);
        wait_eof(r.loop, sv[1]);                          /* closed on us */
        close(sv[1]);
    }
    /* the good client never noticed */
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(good, BRAID_FIELDS(braid_field_int(1)), 0)));
    braid_tuplespace_client_free(good);

    /* the client side refuses a malformed reply the same way */
    int sv[2];
    bt_socketpair(sv);
    braid_tuplespace_client *c = NULL;
    braid_tuplespace_client_options co = { .lost = on_lost };
    BT_OK(braid_tuplespace_client_adopt(r.loop, sv[1], &co, &c));
    braid_deferred *d = braid_tuplespace_client_in(c, JOB_TMPL, BRAID_FOREVER);
    static const uint8_t reply_no_tuple[] = { 0, 0, 0, 14, 1, 64, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1 };
    BT_EQ(write(sv[0], reply_no_tuple, sizeof reply_no_tuple), (ssize_t)sizeof reply_no_tuple);
    BT_ERR(wait_code(r.loop, d), BRAID_ETUPLE_PROTO);
    BT_ERR(lost_code, BRAID_ETUPLE_PROTO);
    BT_FALSE(braid_tuplespace_client_is_connected(c));
    BT_ERR(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_int(1)), 0)),
           BRAID_ETUPLE_PROTO);
    braid_tuplespace_client_free(c);
    close(sv[0]);
    rig_close(&r);
}

/* ---- worker processes ------------------------------------------------------------------ */
/* Two worker processes take 24 prioritised jobs on leases through pipes of
 * their own (socketpairs); the first dies holding the lease of its first
 * job. Every job completes; the one it held comes back with deliveries 2. */
BT_IO_TEST(wire_worker_processes_one_dies) {
    rig r;
    rig_open(&r, NULL);
    enum { JOBS = 24, WORKERS = 2 };
    pid_t pids[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        int sv[2];
        BT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        BT_OK(braid_tuplespace_serve_fd(r.ts, sv[0], NULL));
        pids[i] = spawn_worker(sv[1], i == 0 ? 1 : 0);   /* both waiting: each gets a job */
        close(sv[1]);
    }
    /* both wait before the first job is out, so both get a share (a worker
     * that started late could otherwise find the work all done) */
    BT_RUN_UNTIL(r.loop, waiters(r.ts) == WORKERS, 100000);
    for (int j = 0; j < JOBS; j++)
        BT_OK(braid_tuplespace_out(r.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(j)), j % 4));
    /* collect the results, de-duplicated by job id */
    int seen[JOBS] = { 0 }, distinct = 0, redelivered = 0;
    for (int iter = 0; iter < 200000 && distinct < JOBS; iter++) {
        braid_tuple *t = NULL;
        int rc = braid_tuplespace_inp(r.ts, BRAID_FIELDS(braid_field_str("result"), braid_field_any(BRAID_FIELD_INT),
                                                         braid_field_any(BRAID_FIELD_INT)), &t);
        if (rc == BRAID_ETUPLE_NOMATCH) { braid_loop_run_once(r.loop, 0); continue; }
        BT_OK(rc);
        int64_t id = t->f[1].v.i;
        BT_TRUE(id >= 0 && id < JOBS);
        if (!seen[id]++) distinct++;
        if (t->f[2].v.i >= 2) redelivered++;
        braid_tuple_free(t);
    }
    BT_EQ(distinct, JOBS);
    BT_GE(redelivered, 1);
    int status;
    BT_EQ(waitpid(pids[0], &status, 0), pids[0]);
    BT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 3);      /* it did die mid-job */
    /* stop the survivor */
    BT_OK(braid_tuplespace_out(r.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(-1)), -100));
    BT_RUN_UNTIL(r.loop, braid_tuplespace_connections(r.ts) == 0, 100000);
    BT_EQ(waitpid(pids[1], &status, 0), pids[1]);
    BT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(r.ts, &st);
    BT_EQ(st.leased, 0);
    BT_EQ(st.tuples, 0);
    rig_close(&r);
}

/* ---- a listener and client_connect through endpoint strings ------------------------- */
BT_IO_TEST(wire_listen_and_connect_unix) {
    rig r;
    rig_open(&r, NULL);
    braid_factory f;
    braid_tuplespace_factory_init(&f, r.ts, NULL);
    char path[108], ep[128];
    braid_listener *l = bt_listen_unix(r.loop, &f, path, sizeof path);
    snprintf(ep, sizeof ep, "unix:%s", path);
    braid_result cr = wait_result(r.loop, braid_tuplespace_client_connect(r.loop, ep, NULL));
    BT_TRUE(!cr.failure);
    braid_tuplespace_client *c = cr.value;
    cr.dtor = NULL;                                   /* keep the client */
    braid_result_drop(cr);
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(5)), 2)));
    braid_tuple *t = wait_tuple(r.loop, braid_tuplespace_client_in(c, JOB_TMPL, 0));
    BT_EQ(t->f[1].v.i, 5);
    BT_EQ(t->priority, 2);
    braid_tuple_free(t);
    BT_EQ(braid_tuplespace_connections(r.ts), 1);
    /* a connect to nowhere fails, and frees what it made */
    char nowhere[140];
    snprintf(nowhere, sizeof nowhere, "unix:%s.none", path);
    braid_result nr = wait_result(r.loop, braid_tuplespace_client_connect(r.loop, nowhere, NULL));
    BT_TRUE(nr.failure != NULL);
    braid_result_drop(nr);
    braid_tuplespace_client_free(c);
    braid_listener_close(l);
    rig_close(&r);
}

/* ---- allocation failure over the wire -------------------------------------------------- */
/* A server and a client on one loop; every allocation of the scenario
 * fails once in turn. Whatever fails, every Deferred gets a result, the
 * connection ends cleanly, and nothing leaks. */
static void wire_scenario(braid_loop *loop) {
    braid_tuplespace *ts = NULL;
    if (braid_tuplespace_new(loop, NULL, &ts) < 0) return;
    (void)braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0);
    int sv[2];
    bt_socketpair(sv);
    braid_tuplespace_client *c = NULL;
    if (braid_tuplespace_serve_fd(ts, sv[0], NULL) < 0) {
        close(sv[1]);
        braid_tuplespace_free(ts);
        return;
    }
    if (braid_tuplespace_client_adopt(loop, sv[1], NULL, &c) < 0) c = NULL;
    braid_deferred *d[4] = { NULL, NULL, NULL, NULL };
    if (c) {
        d[0] = braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(2)), 3);
        d[1] = braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(30), 0);
        d[2] = braid_tuplespace_client_rd_all(c, JOB_TMPL, 0);
        d[3] = braid_tuplespace_client_in(c, BRAID_FIELDS(braid_field_str("none")), BRAID_FOREVER);
    }
    for (int i = 0; i < 2000; i++) {
        bool pending = false;
        for (int k = 0; k < 3; k++) pending |= d[k] && !braid_deferred_has_result(d[k]);
        if (!pending) break;
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        usleep(50);
    }
    for (int k = 0; k < 4; k++) {
        if (!d[k]) continue;
        if (k == 3) braid_deferred_cancel(d[k]);
        if (!braid_deferred_has_result(d[k])) bt_fail(__FILE__, __LINE__, "call %d has no result", k);
        braid_result r;
        BT_OK(braid_deferred_take(d[k], &r));
        braid_result_drop(r);
        braid_deferred_unref(d[k]);
    }
    braid_tuplespace_client_free(c);
    for (int i = 0; i < 2000 && braid_tuplespace_connections(ts); i++) {
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        usleep(50);
    }
    BT_EQ(braid_tuplespace_connections(ts), 0);
    braid_tuplespace_free(ts);
    bt_spin(loop, 20);
}

static int wire_body(void *loop) {
    wire_scenario(loop);
    return 0;                                     /* every failure is absorbed by the calls' Deferreds */
}

BT_IO_TEST(wire_allocation_failure_walk) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "tuplespace wire", .arg = loop, .body = wire_body,
                                                 .loop = loop, .warm_up = true, .settle = 20 });
    BT_GT(r.injected, 20);                        /* the walk went through server and client */
    bt_loop_destroy(loop);
}

/* ---- pipes and TCP ------------------------------------------------------------------- */
/* The space served over real pipe pairs: a client on the loop, and a worker
 * process with the blocking client. */
BT_IO_TEST(wire_over_pipes) {
    rig r;
    rig_open(&r, NULL);
    int req[2], rep[2];                           /* requests client -> server, replies back */
    BT_EQ(pipe2(req, O_CLOEXEC), 0);
    BT_EQ(pipe2(rep, O_CLOEXEC), 0);
    BT_OK(braid_tuplespace_serve_pipes(r.ts, req[0], rep[1], NULL));
    braid_tuplespace_client *c = NULL;
    BT_OK(braid_tuplespace_client_adopt_pipes(r.loop, rep[0], req[1], NULL, &c));
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0)));
    braid_tuple *t = wait_tuple(r.loop, braid_tuplespace_client_in_lease(c, JOB_TMPL, BRAID_SECONDS(30), 0));
    BT_EQ(t->f[1].v.i, 1);
    BT_OK(wait_code(r.loop, braid_tuplespace_client_ack(c, t->lease)));
    braid_tuple_free(t);
    braid_tuplespace_client_free(c);
    BT_RUN_UNTIL(r.loop, braid_tuplespace_connections(r.ts) == 0, 1000);

    /* a worker process over pipes */
    BT_EQ(pipe2(req, O_CLOEXEC), 0);
    BT_EQ(pipe2(rep, O_CLOEXEC), 0);
    BT_OK(braid_tuplespace_serve_pipes(r.ts, req[0], rep[1], NULL));
    pid_t pid = spawn_worker_pipes(rep[0], req[1], 0);
    close(rep[0]);
    close(req[1]);
    for (int j = 0; j < 5; j++)
        BT_OK(braid_tuplespace_out(r.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(j)), 0));
    BT_OK(braid_tuplespace_out(r.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(-1)), -1));
    BT_RUN_UNTIL(r.loop, braid_tuplespace_connections(r.ts) == 0, 100000);
    int status;
    BT_EQ(waitpid(pid, &status, 0), pid);
    BT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    braid_tuple_list *l = NULL;
    BT_OK(braid_tuplespace_in_all(r.ts, BRAID_FIELDS(braid_field_str("result"), braid_field_any(BRAID_FIELD_INT),
                                                     braid_field_any(BRAID_FIELD_INT)), 0, &l));
    BT_EQ(l->n, 5);
    braid_tuple_list_free(l);
    rig_close(&r);
}

/* The same space over TCP on loopback, through endpoint strings. */
BT_IO_TEST(wire_over_tcp) {
    rig r;
    rig_open(&r, NULL);
    braid_factory f;
    braid_tuplespace_factory_init(&f, r.ts, NULL);
    int port;
    braid_listener *l = bt_listen_tcp(r.loop, &f, &port);
    char ep[64];
    snprintf(ep, sizeof ep, "tcp:host=127.0.0.1:port=%d", port);
    braid_result cr = wait_result(r.loop, braid_tuplespace_client_connect(r.loop, ep, NULL));
    BT_TRUE(!cr.failure);
    braid_tuplespace_client *c = cr.value;
    cr.dtor = NULL;
    braid_result_drop(cr);
    braid_deferred *w = braid_tuplespace_client_rd(c, JOB_TMPL, BRAID_SECONDS(30));
    BT_OK(wait_code(r.loop, braid_tuplespace_client_out(c, BRAID_FIELDS(braid_field_str("job"), braid_field_int(9)), 0)));
    braid_tuple *t = wait_tuple(r.loop, w);
    BT_EQ(t->f[1].v.i, 9);
    braid_tuple_free(t);
    braid_tuplespace_client_free(c);
    braid_listener_close(l);
    rig_close(&r);
}
