/* Worker-process pools: round trips and least-loaded dispatch, remote
 * failures, a worker that crashes, hangs past a call's timeout, sends a
 * malformed or an oversized frame, idempotent calls sent again, recycling,
 * the bounded queue and cancellation, shutdown (drain and cancel), a
 * program that cannot start, and the allocation-failure walk over a call.
 * In every fault case every pending call is resolved.
 *
 * The workers are this very program re-run by the pool: the constructor
 * below serves the pool before the harness's main ever runs. */
#include "harness.h"
#include <braid/process.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the worker ------------------------------------------------------------------------ */
static void h_echo(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    braid_worker_call_reply(c, buf, len);
}
static void h_pid(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    char s[32];
    int n = snprintf(s, sizeof s, "%d", (int)getpid());
    braid_worker_call_reply(c, s, (size_t)n);
}
static void h_fail(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_worker_call_fail(c, -EDOM, "bad domain");
}
static void h_hold(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;   /* never answers */
}
static void h_crash(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    signal(SIGABRT, SIG_DFL);
    _exit(70);
}
static void h_hang(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    for (;;) pause();   /* blocks its loop for good */
}
static void h_garbage(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    static const unsigned char g[] = { 0, 0, 0, 6, 9, 9, 0, 0, 0, 0 };   /* version 9 */
    if (write(3, g, sizeof g) != sizeof g) _exit(5);
}
static void h_huge(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    static const unsigned char g[] = { 0x40, 0, 0, 0, 1, 2, 0, 0, 0, 1 };   /* 1 GiB announced */
    if (write(3, g, sizeof g) != sizeof g) _exit(5);
}
static void h_crash_once(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    const char *marker = braid_worker_role();
    if (access(marker, F_OK) != 0) {
        FILE *f = fopen(marker, "w");
        if (f) fclose(f);
        _exit(71);
    }
    braid_worker_call_reply(c, "second", 6);
}
/* A handler answering from a Deferred's callback. */
static braid_result later_fire(braid_result r, void *arg) {
    braid_worker_call_reply(arg, "later", 5);
    return r;
}
static void h_later(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_deferred *d = braid_deferred_later(braid_worker_call_loop(c), BRAID_MSEC(1), NULL, NULL);
    braid_deferred_add_callback(d, later_fire, c);
    braid_deferred_unref(d);
}

static const braid_worker_command cmds[] = {
    { "echo", h_echo, NULL }, { "pid", h_pid, NULL }, { "fail", h_fail, NULL },
    { "hold", h_hold, NULL }, { "crash", h_crash, NULL }, { "hang", h_hang, NULL },
    { "garbage", h_garbage, NULL }, { "huge", h_huge, NULL }, { "crash_once", h_crash_once, NULL },
    { "later", h_later, NULL },
};

__attribute__((constructor)) static void worker_entry(void) {
    if (!braid_worker_is_child()) return;
    int rc = braid_worker_main(NULL, cmds, sizeof cmds / sizeof cmds[0]);
    _exit(rc == 0 ? 0 : 1);
}

/* ---- helpers ------------------------------------------------------------------------------ */
typedef struct res {
    int done;
    int code;
    char data[256];
    char msg[512];
} res;

static braid_result res_ok(braid_result r, void *arg) {
    res *x = arg;
    braid_worker_reply *rep = r.value;
    snprintf(x->data, sizeof x->data, "%.*s", (int)rep->len, (const char *)rep->data);
    x->done = 1;
    return r;
}
static braid_result res_err(braid_result r, void *arg) {
    res *x = arg;
    x->code = r.failure->code;
    snprintf(x->msg, sizeof x->msg, "%s", r.failure->message ? r.failure->message : "");
    x->done = 1;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static braid_deferred *call(braid_workers *w, const char *cmd, const char *payload, res *x,
                            const braid_workers_call_options *o) {
    memset(x, 0, sizeof *x);
    braid_deferred *d = braid_workers_call(w, cmd, payload, payload ? strlen(payload) : 0, o);
    BT_TRUE(d != NULL);
    BT_OK(braid_deferred_add(d, res_ok, res_err, x));
    return d;
}
static void call_rel(braid_workers *w, const char *cmd, const char *payload, res *x,
                     const braid_workers_call_options *o) {
    braid_deferred_unref(call(w, cmd, payload, x, o));
}
static void wait_ready(braid_loop *loop, braid_workers *w, unsigned n) {
    struct braid_workers_stats s;
    for (int i = 0; i < 200000; i++) {
        braid_workers_stats(w, &s);
        if (s.ready >= n) return;
        braid_loop_run_once(loop, 0);
    }
    bt_fail(__FILE__, __LINE__, "workers never became ready");
}
static void finish(braid_loop *loop, braid_workers *w) {
    braid_workers_free(w);
    for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(loop);
    errno = 0;
    BT_EQ(waitpid(-1, NULL, WNOHANG), -1);   /* no child left, not even a zombie */
    BT_EQ(errno, ECHILD);
}

/* ---- round trips ------------------------------------------------------------------------------ */
BT_IO_TEST(workers_roundtrip) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 2 }, &w));
    res r[40];
    /* Sent before any worker is ready: they wait in the queue. */
    for (int i = 0; i < 20; i++) {
        char p[16];
        snprintf(p, sizeof p, "m%d", i);
        call_rel(w, "echo", p, &r[i], NULL);
    }
    for (int i = 0; i < 20; i++) {
        bt_run_until(loop, &r[i].done, 200000);
        char p[16];
        snprintf(p, sizeof p, "m%d", i);
        BT_STREQ(r[i].data, p);
    }
    /* Least-loaded: 20 at once land on both workers. */
    wait_ready(loop, w, 2);
    for (int i = 20; i < 40; i++) call_rel(w, "pid", NULL, &r[i], NULL);
    for (int i = 20; i < 40; i++) bt_run_until(loop, &r[i].done, 200000);
    pid_t pids[2];
    BT_EQ(braid_workers_pids(w, pids, 2), 2);
    int on0 = 0, on1 = 0;
    for (int i = 20; i < 40; i++) {
        on0 += atoi(r[i].data) == pids[0];
        on1 += atoi(r[i].data) == pids[1];
    }
    BT_EQ(on0 + on1, 20);
    BT_GT(on0, 0);
    BT_GT(on1, 0);
    /* A handler answering from a Deferred. */
    res l;
    call_rel(w, "later", NULL, &l, NULL);
    bt_run_until(loop, &l.done, 200000);
    BT_STREQ(l.data, "later");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.calls, 41);
    BT_UEQ(s.spawned, 2);
    finish(loop, w);
}

BT_IO_TEST(workers_remote_failure) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    res a, b, c;
    call_rel(w, "fail", NULL, &a, NULL);
    call_rel(w, "no-such-command", NULL, &b, NULL);
    call_rel(w, "echo", "", &c, NULL);
    bt_run_until(loop, &a.done, 200000);
    bt_run_until(loop, &b.done, 200000);
    bt_run_until(loop, &c.done, 200000);
    BT_EQ(a.code, -EDOM);
    BT_TRUE(strstr(a.msg, "bad domain") && strstr(a.msg, "'fail'"));
    BT_EQ(b.code, BRAID_EWORKER_COMMAND);
    BT_EQ(c.code, 0);
    BT_STREQ(c.data, "");
    /* Bad arguments fail at once. */
    res d;
    call_rel(w, "", NULL, &d, NULL);
    BT_EQ(d.code, BRAID_EINVAL);
    finish(loop, w);
}

/* ---- faults --------------------------------------------------------------------------------- */
BT_IO_TEST(workers_crash) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    wait_ready(loop, w, 1);
    pid_t first;
    braid_workers_pids(w, &first, 1);
    res h[3], c;
    for (int i = 0; i < 3; i++) call_rel(w, "hold", NULL, &h[i], NULL);
    call_rel(w, "crash", NULL, &c, NULL);
    bt_run_until(loop, &c.done, 200000);
    for (int i = 0; i < 3; i++) {
        bt_run_until(loop, &h[i].done, 200000);
        BT_EQ(h[i].code, BRAID_EWORKER_LOST);
    }
    BT_EQ(c.code, BRAID_EWORKER_LOST);
    /* Replaced: the next call is answered by a new worker. */
    res e;
    call_rel(w, "pid", NULL, &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_EQ(e.code, 0);
    BT_NE(atoi(e.data), first);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.lost, 1);
    BT_UEQ(s.spawned, 2);
    finish(loop, w);
}

/* A worker that blocks past a call's timeout is killed and replaced; the
 * call fails with BRAID_ETIMEDOUT, the other call it held with
 * BRAID_EWORKER_LOST. The timeout runs on the fake clock. */
BT_IO_TEST(workers_timeout) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    wait_ready(loop, w, 1);
    pid_t first;
    braid_workers_pids(w, &first, 1);
    res hold, hang;
    call_rel(w, "hold", NULL, &hold, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100) });
    call_rel(w, "hang", NULL, &hang, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    for (int i = 0; i < 50; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(hang.done, 0);
    braid_fake_clock_advance(fc, BRAID_SECONDS(5));
    bt_run_until(loop, &hang.done, 200000);
    BT_EQ(hang.code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(hang.msg, "'hang'") != NULL);
    BT_TRUE(hold.done);
    BT_EQ(hold.code, BRAID_EWORKER_LOST);
    errno = 0;
    BT_EQ(kill(first, 0), -1);   /* killed and reaped */
    res e;
    call_rel(w, "echo", "after", &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_STREQ(e.data, "after");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.timeouts, 1);
    finish(loop, w);
    braid_fake_clock_free(fc);
}

BT_IO_TEST(workers_bad_frames) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .max_frame = 4096 }, &w));
    res g, g2, h, e;
    call_rel(w, "hold", NULL, &g2, NULL);
    call_rel(w, "garbage", NULL, &g, NULL);
    bt_run_until(loop, &g.done, 200000);
    bt_run_until(loop, &g2.done, 200000);
    BT_EQ(g.code, BRAID_EWORKER_PROTOCOL);
    BT_EQ(g2.code, BRAID_EWORKER_PROTOCOL);
    call_rel(w, "huge", NULL, &h, NULL);
    bt_run_until(loop, &h.done, 200000);
    BT_EQ(h.code, BRAID_EWORKER_FRAME);
    /* A call above the frame limit fails at once, the worker untouched. */
    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    call_rel(w, "echo", big, &e, NULL);
    BT_EQ(e.code, BRAID_EMSGSIZE);
    call_rel(w, "echo", "ok", &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_STREQ(e.data, "ok");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.lost, 2);
    finish(loop, w);
}

/* An idempotent call whose worker dies is sent once more, to a new worker;
 * one that is not fails. */
BT_IO_TEST(workers_idempotent_resend) {
    braid_loop *loop = bt_loop_new(NULL);
    char marker[] = "/tmp/braid-crash-once-XXXXXX";
    int fd = mkstemp(marker);
    BT_GE(fd, 0);
    close(fd);
    unlink(marker);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .role = marker }, &w));
    res a;
    call_rel(w, "crash_once", NULL, &a, &(braid_workers_call_options){ .idempotent = true });
    bt_run_until(loop, &a.done, 200000);
    BT_EQ(a.code, 0);
    BT_STREQ(a.data, "second");
    unlink(marker);
    res b;
    call_rel(w, "crash_once", NULL, &b, NULL);
    bt_run_until(loop, &b.done, 200000);
    BT_EQ(b.code, BRAID_EWORKER_LOST);
    /* Sent again once only: an idempotent call that always crashes fails. */
    res c;
    call_rel(w, "crash", NULL, &c, &(braid_workers_call_options){ .idempotent = true });
    bt_run_until(loop, &c.done, 200000);
    BT_EQ(c.code, BRAID_EWORKER_LOST);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.resent, 2);
    unlink(marker);
    finish(loop, w);
}

BT_IO_TEST(workers_recycle) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .recycle_after = 3 }, &w));
    int distinct = 0, last = 0;
    for (int i = 0; i < 9; i++) {
        res r;
        call_rel(w, "pid", NULL, &r, NULL);
        bt_run_until(loop, &r.done, 200000);
        BT_EQ(r.code, 0);
        if (atoi(r.data) != last) distinct++;
        last = atoi(r.data);
    }
    BT_EQ(distinct, 3);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UGE(s.recycled, 2);
    BT_UEQ(s.lost, 0);
    finish(loop, w);
}

BT_IO_TEST(workers_queue_full_and_cancel) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .max_in_flight = 1,
                                                            .queue_limit = 2 }, &w));
    wait_ready(loop, w, 1);
    res h, q1, q2, full;
    call_rel(w, "hold", NULL, &h, NULL);
    braid_deferred *d1 = call(w, "echo", "q1", &q1, NULL);
    call_rel(w, "echo", "q2", &q2, NULL);
    call_rel(w, "echo", "full", &full, NULL);
    BT_TRUE(full.done);
    BT_EQ(full.code, BRAID_EQUEUE_FULL);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_EQ(s.queued, 2);
    BT_EQ(s.in_flight, 1);
    braid_deferred_cancel(d1);
    braid_deferred_unref(d1);
    BT_EQ(q1.code, BRAID_ECANCELED);
    braid_workers_stats(w, &s);
    BT_EQ(s.queued, 1);
    /* Freeing the pool resolves every pending call. */
    braid_workers_free(w);
    BT_EQ(h.code, BRAID_ESHUTDOWN);
    BT_EQ(q2.code, BRAID_ESHUTDOWN);
    for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(loop);
}

static braid_result set_flag(braid_result r, void *arg) {
    *(int *)arg = 1;
    return r;
}

BT_IO_TEST(workers_shutdown) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 2 }, &w));
    /* Drain: what is queued and sent finishes first. */
    res r[6];
    for (int i = 0; i < 6; i++) call_rel(w, "later", NULL, &r[i], NULL);
    int down = 0;
    braid_deferred *d = braid_workers_shutdown(w, true, BRAID_SECONDS(30));
    braid_deferred_add_callback(d, set_flag, &down);
    braid_deferred_unref(d);
    res late;
    call_rel(w, "echo", "x", &late, NULL);
    BT_EQ(late.code, BRAID_ESHUTDOWN);
    bt_run_until(loop, &down, 400000);
    for (int i = 0; i < 6; i++) BT_STREQ(r[i].data, "later");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_EQ(s.workers, 0);
    braid_workers_free(w);
    /* Cancel: a held call fails at once, the workers go. */
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    wait_ready(loop, w, 1);
    res h;
    call_rel(w, "hold", NULL, &h, NULL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    down = 0;
    d = braid_workers_shutdown(w, false, 0);
    braid_deferred_add_callback(d, set_flag, &down);
    braid_deferred_unref(d);
    BT_EQ(h.code, BRAID_ESHUTDOWN);
    bt_run_until(loop, &down, 400000);
    finish(loop, w);
}

/* A program that cannot be found fails at once; one that dies at start-up
 * is retried with a back-off, and queued calls fail instead of waiting. */
BT_IO_TEST(workers_bad_program) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_ERR(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .program = "/no/such" }, &w),
           -ENOENT);
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .program = "/bin/false" }, &w));
    res r;
    call_rel(w, "echo", "x", &r, NULL);
    bt_run_until(loop, &r.done, 400000);
    BT_EQ(r.code, BRAID_EWORKER_LOST);
    finish(loop, w);
}

/* ---- the allocation-failure walk over a call ------------------------------------------------- */
BT_IO_TEST(workers_alloc_walk) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    res r;
    call_rel(w, "echo", "warm", &r, NULL);
    bt_run_until(loop, &r.done, 200000);
    long base = braid_test_alloc_outstanding();
    int failures = 0;
    for (long n = 1; n < 100; n++) {
        memset(&r, 0, sizeof r);
        braid_test_fail_alloc_after(n, false);
        braid_deferred *d = braid_workers_call(w, "echo", "walk", 4, NULL);
        if (d) {
            BT_OK(braid_deferred_add(d, res_ok, res_err, &r));
            braid_deferred_unref(d);
            bt_run_until(loop, &r.done, 200000);
        }
        bool failed = braid_test_alloc_failed();
        braid_test_fail_alloc_after(0, false);
        if (!d || r.code) failures++;
        else BT_STREQ(r.data, "walk");
        for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        BT_EQ(braid_test_alloc_outstanding(), base);
        if (!failed) break;
    }
    BT_GT(failures, 0);
    finish(loop, w);
}
