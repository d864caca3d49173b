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
#include "process/process_internal.h"
#include "support/json.h"
#include <braid/introspect.h>
#include <braid/log.h>
#include <braid/process.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the worker ------------------------------------------------------------------------ */
static void h_echo(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    braid_worker_call_reply(c, buf, len);
}
/* Stops reading its calls (closes fd 3, the pipe they come in on) and
 * answers this one: it lives on, deaf. */
static void h_deaf(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    close(3);
    braid_worker_call_reply(c, "deaf", 4);
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
/* Says it has started: a byte on fd 5 when the test passed a pipe there
 * (the gate below). */
static void say_started(void) {
    struct stat st;
    if (fstat(5, &st) == 0 && S_ISFIFO(st.st_mode) && write(5, "s", 1) != 1) _exit(6);
}
static void h_hang(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    say_started();
    for (;;) pause();   /* blocks its loop for good */
}
/* Blocks its loop — a real blocking handler — until the test writes a
 * byte into the pipe at fd 6 (at most 10 s), then answers. */
static void h_block(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    say_started();
    struct pollfd p = { 6, POLLIN, 0 };
    char b;
    bool released = poll(&p, 1, 10000) == 1 && read(6, &b, 1) == 1;
    braid_worker_call_reply(c, released ? "released" : "unreleased", released ? 8 : 10);
}
/* Answers, and then blocks its loop for good from a timer callback: the
 * worker takes no call any more, holding none. */
static braid_result wedge_fire(braid_result r, void *arg) {
    (void)arg;
    say_started();
    for (;;) pause();
    return r;
}
static void h_wedge(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_deferred *d = braid_deferred_later(braid_worker_call_loop(c), BRAID_MSEC(1), NULL, NULL);
    braid_deferred_add_callback(d, wedge_fire, NULL);
    braid_deferred_unref(d);
    braid_worker_call_reply(c, "wedging", 7);
}
/* Frames go to the parent on fd 4 (calls come in on fd 3: a pair of pipes;
 * 4 is the lowest fd the pool's callers here leave free). */
#define UP_FD 4
static void h_garbage(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    static const unsigned char g[] = { 0, 0, 0, 6, 9, 9, 0, 0, 0, 0 };   /* version 9 */
    if (write(UP_FD, g, sizeof g) != sizeof g) _exit(5);
}
static void h_huge(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    static const unsigned char g[] = { 0x40, 0, 0, 0, 1, 2, 0, 0, 0, 1 };   /* 1 GiB announced */
    if (write(UP_FD, g, sizeof g) != sizeof g) _exit(5);
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
/* Never answers, and keeps a timer of an hour running in the worker. */
static void h_holdtimer(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_deferred_unref(braid_deferred_later(braid_worker_call_loop(c), BRAID_SECONDS(3600), NULL, NULL));
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

/* A box call: the box back, with the worker's pid added. */
static void h_boxecho(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    const braid_box *in = braid_worker_call_box(c);
    braid_box *out;
    if (!in) {
        braid_worker_call_fail(c, BRAID_EINVAL, "not a box call");
        return;
    }
    if (braid_box_decode(buf, len, &out) < 0) {   /* the payload is the box's encoding */
        braid_worker_call_fail(c, BRAID_EBOX, "payload is not the box");
        return;
    }
    braid_box_set_i64(out, "pid", getpid());
    braid_worker_call_reply_box(c, out);
    braid_box_free(out);
}
/* The payload as a number (it is not NUL-terminated). */
static long num_of(const void *buf, size_t len) {
    char s[32];
    snprintf(s, sizeof s, "%.*s", (int)(len < 31 ? len : 31), (const char *)buf);
    return atol(s);
}
/* A reply box of N bytes (payload "N"). */
static void h_bigbox(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    size_t n = (size_t)num_of(buf, len);
    char *v = calloc(1, n + 1);
    braid_box *b;
    braid_box_new(&b);
    braid_box_set_bytes(b, "v", v, n);
    braid_worker_call_reply_box(c, b);
    braid_box_free(b);
    free(v);
}
/* A reply of N bytes (payload "N"); what braid_worker_call_reply
 * returned is logged in "app.rc". */
static void h_bigbytes(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    braid_logger *lg = braid_loop_logger(braid_worker_call_loop(c));
    size_t n = (size_t)num_of(buf, len);
    char *v = calloc(1, n + 1);
    int rc = braid_worker_call_reply(c, v, n);
    braid_log_emit(lg, BRAID_LOG_INFO, "app.rc", braid_log_no_fields, "%d", rc);
    free(v);
}
/* A REPLY_BOX frame whose box is garbage (version 2). */
static void h_badbox(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)c; (void)buf; (void)len; (void)arg;
    static const unsigned char g[] = { 0, 0, 0, 9, 1, 8, 0, 0, 0, 0, 2, 0, 0 };
    if (write(UP_FD, g, sizeof g) != sizeof g) _exit(5);
}
/* The request id the call carried (in the handler's context). */
static void h_rid(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    char s[32];
    int n = snprintf(s, sizeof s, "%llu",
                     (unsigned long long)braid_ctx_get_u64(&braid_log_request_id_key, 0));
    braid_worker_call_reply(c, s, (size_t)n);
}

/* The descriptors the worker inherited ("0,1,2,3,5,9": every open one
 * without close-on-exec — what it made itself, its loop's, has the flag)
 * and the first bytes of fd 5. */
static void h_fds(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    char out[256] = "";
    size_t n = 0;
    DIR *d = opendir("/proc/self/fd");
    int fds[64], nf = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d) || nf == 64) continue;
        if (fcntl(atoi(e->d_name), F_GETFD) & FD_CLOEXEC) continue;
        fds[nf++] = atoi(e->d_name);
    }
    if (d) closedir(d);
    for (int i = 0; i < nf; i++)   /* sorted, whatever readdir's order */
        for (int k = i + 1; k < nf; k++)
            if (fds[k] < fds[i]) { int t = fds[i]; fds[i] = fds[k]; fds[k] = t; }
    for (int i = 0; i < nf; i++) n += (size_t)snprintf(out + n, sizeof out - n, "%s%d", i ? "," : "", fds[i]);
    char data[8] = "";
    ssize_t r = pread(5, data, 7, 0);
    n += (size_t)snprintf(out + n, sizeof out - n, " %s", r > 0 ? data : "-");
    braid_worker_call_reply(c, out, n);
}

/* What the worker's connection is: "fifo" or "socket" (fd 3, calls in). */
static void h_conn(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    struct stat st;
    const char *k = fstat(3, &st) < 0 ? "none" : S_ISFIFO(st.st_mode) ? "fifo" : S_ISSOCK(st.st_mode) ? "socket" : "other";
    braid_worker_call_reply(c, k, strlen(k));
}

/* Log events: payload "N" logs N info events in "app.work" (a seq field
 * each), one in "app.quiet" and one debug event, then answers. */
static void h_log(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    braid_logger *lg = braid_loop_logger(braid_worker_call_loop(c));
    int n = (int)num_of(buf, len);
    for (int i = 0; i < n; i++)
        braid_log_emit(lg, BRAID_LOG_INFO, "app.work",
                       braid_log_fields(BRAID_LOG_U64("seq", (uint64_t)i), BRAID_LOG_STR("who", "worker"),
                                        BRAID_LOG_F64("half", i / 2.0), BRAID_LOG_BOOL("odd", i & 1)),
                       "step %d", i);
    braid_log_emit(lg, BRAID_LOG_INFO, "app.quiet", braid_log_no_fields, "filtered by the parent");
    braid_log_emit(lg, BRAID_LOG_DEBUG, "app.work", braid_log_no_fields, "filtered in the worker");
    braid_worker_call_reply(c, "logged", 6);
}
/* Payload "N": N events of 1000 bytes at once — far more than the
 * connection holds while the parent does not read — then a byte on fd 5
 * (the test's pipe) and the answer. */
static void h_spam(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    braid_logger *lg = braid_loop_logger(braid_worker_call_loop(c));
    int n = (int)num_of(buf, len);
    char pad[1001];
    memset(pad, 'x', 1000);
    pad[1000] = 0;
    for (int i = 0; i < n; i++)
        braid_log_emit(lg, BRAID_LOG_INFO, "app.spam", braid_log_fields(BRAID_LOG_U64("seq", (uint64_t)i)),
                       "%s", pad);
    if (write(5, "!", 1) != 1) _exit(6);
    braid_worker_call_reply(c, "spammed", 7);
}

/* An error logged, then a crash: the event must reach the parent. */
static void h_logdie(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_log_emit(braid_loop_logger(braid_worker_call_loop(c)), BRAID_LOG_ERROR, "app.fatal",
                   braid_log_no_fields, "fatal");
    signal(SIGABRT, SIG_DFL);
    abort();
}
/* An error logged, then the handler blocks for good, after writing the
 * wall-clock time just after the event to fd 5 (the test's pipe). */
static void h_logblock(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)buf; (void)len; (void)arg;
    braid_log_emit(braid_loop_logger(braid_worker_call_loop(c)), BRAID_LOG_ERROR, "app.fatal",
                   braid_log_no_fields, "blocked");
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t t1 = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    if (write(5, &t1, sizeof t1) != sizeof t1) _exit(6);
    for (;;) pause();
}

static const braid_worker_command cmds[] = {
    { "logdie", h_logdie, NULL }, { "logblock", h_logblock, NULL },
    { "log", h_log, NULL }, { "spam", h_spam, NULL },
    { "fds", h_fds, NULL },
    { "conn", h_conn, NULL },
    { "deaf", h_deaf, NULL },
    { "boxecho", h_boxecho, NULL }, { "bigbox", h_bigbox, NULL }, { "bigbytes", h_bigbytes, NULL }, { "badbox", h_badbox, NULL }, { "rid", h_rid, NULL },
    { "echo", h_echo, NULL }, { "pid", h_pid, NULL }, { "fail", h_fail, NULL },
    { "hold", h_hold, NULL }, { "crash", h_crash, NULL }, { "hang", h_hang, NULL },
    { "garbage", h_garbage, NULL }, { "huge", h_huge, NULL }, { "crash_once", h_crash_once, NULL },
    { "later", h_later, NULL }, { "holdtimer", h_holdtimer, NULL },
    { "block", h_block, NULL }, { "wedge", h_wedge, NULL },
};

__attribute__((constructor)) static void worker_entry(void) {
    if (!braid_worker_is_child()) return;
    /* A worker as they were before the slot page: it never maps one. */
    const char *role = braid_worker_role();
    if (role && !strcmp(role, "no-slots")) unsetenv("BRAID_WORKER_SLOTS");
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
    /* The cause is said: in the failure, and in the stats. */
    BT_TRUE(strstr(c.msg, "exit status 70") != NULL);
    BT_TRUE(strstr(h[0].msg, "exit status 70") != NULL);
    struct braid_workers_stats s0;
    braid_workers_stats(w, &s0);
    BT_STREQ(s0.last_exit, "exit status 70");
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

/* A loop on a fake clock (for call timeouts) and a pool of one ready
 * worker, with opts (NULL: the defaults; count is 1 either way). */
static braid_workers *pool_on_fake_clock(braid_fake_clock **fc, braid_loop **loop,
                                         const braid_workers_options *opts) {
    *fc = NULL;
    braid_fake_clock_new(0, fc);
    *loop = bt_loop_new(braid_fake_clock_base(*fc));
    braid_workers_options o = opts ? *opts : (braid_workers_options){ 0 };
    o.count = 1;
    braid_workers *w;
    BT_OK(braid_workers_new(*loop, &o, &w));
    wait_ready(*loop, w, 1);
    return w;
}
static braid_workers *one_worker_on_fake_clock(braid_fake_clock **fc, braid_loop **loop) {
    return pool_on_fake_clock(fc, loop, NULL);
}

/* The gate of a blocking handler: the worker's fd 5 says it has started
 * (h_hang, h_block), a byte into its fd 6 releases h_block. */
typedef struct gate {
    int started[2], release[2];
    braid_process_fd fds[2];
} gate;
static void gate_open(gate *g) {
    BT_OK(pipe2(g->started, O_CLOEXEC));
    BT_OK(pipe2(g->release, O_CLOEXEC));
    g->fds[0] = (braid_process_fd){ 5, BRAID_PROCESS_FD_INHERIT, g->started[1], NULL };
    g->fds[1] = (braid_process_fd){ 6, BRAID_PROCESS_FD_INHERIT, g->release[0], NULL };
}
/* Runs the loop until a handler has said it started (at most 10 s). */
static void gate_wait_started(braid_loop *loop, gate *g) {
    for (int i = 0; i < 10000; i++) {
        struct pollfd p = { g->started[0], POLLIN, 0 };
        if (poll(&p, 1, 1) == 1) {
            char b;
            BT_EQ(read(g->started[0], &b, 1), 1);
            return;
        }
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    bt_fail(__FILE__, __LINE__, "the blocking handler never started");
}
static void gate_release(gate *g) { BT_EQ(write(g->release[1], "r", 1), 1); }
static void gate_close(gate *g) {
    for (int i = 0; i < 2; i++) {
        close(g->started[i]);
        close(g->release[i]);
    }
}
static struct braid_workers_stats stats_of(braid_workers *w) {
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    return s;
}
/* Runs the loop until the pool holds no call in flight. */
static void wait_idle(braid_loop *loop, braid_workers *w) {
    for (int i = 0; i < 200000; i++) {
        if (stats_of(w).in_flight == 0) return;
        braid_loop_run_once(loop, 0);
    }
    bt_fail(__FILE__, __LINE__, "calls stayed in flight");
}

/* A pool of one worker on a fake clock, with the gate at its fds 5 and 6
 * (role: the pool's, or NULL), and the worker's pid. */
typedef struct gated {
    braid_fake_clock *fc;
    braid_loop *loop;
    gate g;
    braid_workers *w;
    pid_t first;
} gated;
static void gated_open(gated *t, const char *role) {
    gate_open(&t->g);
    t->w = pool_on_fake_clock(&t->fc, &t->loop,
                              &(braid_workers_options){ .fds = t->g.fds, .nfds = 2, .role = role });
    braid_workers_pids(t->w, &t->first, 1);
}
static void gated_close(gated *t) {
    finish(t->loop, t->w);
    braid_fake_clock_free(t->fc);
    gate_close(&t->g);
}

/* A worker that blocks past a call's timeout is killed and replaced; the
 * call fails with BRAID_ETIMEDOUT, the other call it held with
 * BRAID_EWORKER_LOST. The timeout runs on the fake clock. */
BT_IO_TEST(workers_timeout) {
    gated t;
    gated_open(&t, NULL);
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res hold, hang;
    call_rel(w, "hold", NULL, &hold, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100) });
    call_rel(w, "hang", NULL, &hang, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    gate_wait_started(loop, &t.g);   /* a call that has started: its timeout kills */
    BT_EQ(hang.done, 0);
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(5));
    bt_run_until(loop, &hang.done, 200000);
    BT_EQ(hang.code, BRAID_ETIMEDOUT);
    BT_TRUE(strstr(hang.msg, "'hang'") != NULL);
    BT_TRUE(hold.done);
    BT_EQ(hold.code, BRAID_EWORKER_LOST);
    errno = 0;
    BT_EQ(kill(t.first, 0), -1);   /* killed and reaped */
    res e;
    call_rel(w, "echo", "after", &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_STREQ(e.data, "after");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.timeouts, 1);
    BT_UEQ(s.cancelled_queued, 0);
    gated_close(&t);
}

static bt_json *doc_of(braid_loop *loop);
static double num(const bt_json *o, const char *key);

/* Issue 15: a call that times out while it waits inside its worker behind
 * a long one, not started, fails alone with BRAID_ETIMEDOUT; the worker
 * keeps running the long call (which succeeds), is not replaced, and drops
 * the short one unrun (it is "crash": had it run, the worker would have
 * died). The timeouts run on the fake clock; the long call is a real
 * blocking handler, released by the test. */
BT_IO_TEST(workers_unstarted_timeout_keeps_worker) {
    gated t;
    gated_open(&t, NULL);
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res lng, shrt;
    call_rel(w, "block", NULL, &lng, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100) });
    gate_wait_started(loop, &t.g);
    call_rel(w, "crash", NULL, &shrt, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* written */
    BT_UEQ(stats_of(w).in_flight, 2);
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(5));
    bt_run_until(loop, &shrt.done, 200000);
    BT_EQ(shrt.code, BRAID_ETIMEDOUT);
    BT_EQ(lng.done, 0);   /* still running, its worker alive */
    BT_TRUE(strstr(shrt.msg, "before its worker started it") != NULL);
    struct braid_workers_stats s = stats_of(w);
    BT_UEQ(s.lost, 0);
    BT_UEQ(s.timeouts, 1);
    BT_UEQ(s.cancelled_queued, 1);
    BT_UEQ(s.in_flight, 2);   /* the cancelled one keeps its place until the worker drops it */
    gate_release(&t.g);
    bt_run_until(loop, &lng.done, 200000);
    BT_EQ(lng.code, 0);
    BT_STREQ(lng.data, "released");
    wait_idle(loop, w);
    /* The same worker, never replaced, serves on. */
    res after;
    call_rel(w, "pid", NULL, &after, NULL);
    bt_run_until(loop, &after.done, 200000);
    BT_EQ(atoi(after.data), t.first);
    s = stats_of(w);
    BT_UEQ(s.spawned, 1);
    BT_UEQ(s.lost, 0);
    BT_UEQ(s.calls, 2);   /* the dropped one is no reply */
    /* The worker's own counts agree with the pool's: 2 answered, 1 dropped. */
    bt_json *doc = doc_of(loop);
    const bt_json *k = bt_json_at(bt_json_get(bt_json_at(bt_json_get(doc, "workers"), 0), "workers"), 0);
    BT_EQ(num(k, "calls"), 2);
    BT_EQ(num(k, "failed"), 0);
    BT_EQ(num(k, "dropped"), 1);
    bt_json_free(doc);
    gated_close(&t);
}

/* A call that has started and times out still kills its worker; a call
 * behind it fails with BRAID_EWORKER_LOST, an idempotent one is sent again
 * to the replacement. */
BT_IO_TEST(workers_started_timeout_kills) {
    gated t;
    gated_open(&t, NULL);
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res lng, behind, idem;
    call_rel(w, "block", NULL, &lng, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    gate_wait_started(loop, &t.g);
    call_rel(w, "echo", "b", &behind, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100) });
    call_rel(w, "pid", NULL, &idem, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100), .idempotent = true });
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(5));
    bt_run_until(loop, &lng.done, 200000);
    BT_EQ(lng.code, BRAID_ETIMEDOUT);
    bt_run_until(loop, &behind.done, 200000);
    BT_EQ(behind.code, BRAID_EWORKER_LOST);
    bt_run_until(loop, &idem.done, 200000);
    BT_EQ(idem.code, 0);
    BT_NE(atoi(idem.data), t.first);
    errno = 0;
    BT_EQ(kill(t.first, 0), -1);   /* killed and reaped */
    struct braid_workers_stats s = stats_of(w);
    BT_UEQ(s.lost, 1);
    BT_UEQ(s.resent, 1);
    BT_UEQ(s.cancelled_queued, 0);
    gated_close(&t);
}

/* Cancelling a call that waits inside its worker, not started: it fails at
 * once with BRAID_ECANCELED and the worker drops it unrun (it is "crash").
 * The long call in front succeeds, the worker lives on. */
BT_IO_TEST(workers_cancel_unstarted) {
    gated t;
    gated_open(&t, NULL);
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res lng, q;
    call_rel(w, "block", NULL, &lng, NULL);
    gate_wait_started(loop, &t.g);
    braid_deferred *d = call(w, "crash", NULL, &q, NULL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
    BT_TRUE(q.done);
    BT_EQ(q.code, BRAID_ECANCELED);
    gate_release(&t.g);
    bt_run_until(loop, &lng.done, 200000);
    BT_STREQ(lng.data, "released");   /* had "crash" run, the worker would have died with it */
    wait_idle(loop, w);
    res after;
    call_rel(w, "pid", NULL, &after, NULL);
    bt_run_until(loop, &after.done, 200000);
    BT_EQ(atoi(after.data), t.first);
    struct braid_workers_stats s = stats_of(w);
    BT_UEQ(s.lost, 0);
    BT_UEQ(s.spawned, 1);
    BT_UEQ(s.cancelled_queued, 1);
    gated_close(&t);
}

/* A worker that predates the slot page (it maps none; its ready frame says
 * so): every call sent to it counts as started, as before — the short
 * call's timeout kills it, and the long call fails with it. */
BT_IO_TEST(workers_unstarted_timeout_old_worker) {
    gated t;
    gated_open(&t, "no-slots");
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res lng, shrt;
    call_rel(w, "block", NULL, &lng, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(100) });
    gate_wait_started(loop, &t.g);
    call_rel(w, "echo", "s", &shrt, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(5));
    bt_run_until(loop, &shrt.done, 200000);
    BT_EQ(shrt.code, BRAID_ETIMEDOUT);
    bt_run_until(loop, &lng.done, 200000);
    BT_EQ(lng.code, BRAID_EWORKER_LOST);
    BT_UEQ(stats_of(w).lost, 1);
    BT_UEQ(stats_of(w).cancelled_queued, 0);
    gated_close(&t);
}

/* A worker whose loop is blocked outside any call takes no call: one sent
 * to it times out (not started), and since nothing was in front of it the
 * worker is replaced after the drop grace (1 s, fake clock). Calls made
 * meanwhile wait for the replacement rather than go to it. */
BT_IO_TEST(workers_wedged_worker_replaced) {
    gated t;
    gated_open(&t, NULL);
    braid_loop *loop = t.loop;
    braid_workers *w = t.w;
    res a, x, y;
    call_rel(w, "wedge", NULL, &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_STREQ(a.data, "wedging");
    gate_wait_started(loop, &t.g);   /* its loop is blocked now */
    call_rel(w, "echo", "x", &x, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(5));
    bt_run_until(loop, &x.done, 200000);
    BT_EQ(x.code, BRAID_ETIMEDOUT);
    call_rel(w, "pid", NULL, &y, NULL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(y.done, 0);
    BT_UEQ(stats_of(w).queued, 1);   /* not given to the stuck worker */
    braid_fake_clock_advance(t.fc, BRAID_SECONDS(1));
    bt_run_until(loop, &y.done, 200000);
    BT_EQ(y.code, 0);
    BT_NE(atoi(y.data), t.first);
    BT_UEQ(stats_of(w).lost, 1);
    gated_close(&t);
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

/* recycle_after bounds the calls a worker is given, not the ones it has
 * answered: a burst does not all go to one worker. */
BT_IO_TEST(workers_recycle_burst) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .recycle_after = 2 }, &w));
    wait_ready(loop, w, 1);
    res r[6];
    for (int i = 0; i < 6; i++) call_rel(w, "pid", NULL, &r[i], NULL);
    for (int i = 0; i < 6; i++) {
        bt_run_until(loop, &r[i].done, 400000);
        BT_EQ(r[i].code, 0);
    }
    for (int i = 0; i < 6; i++) {
        int same = 0;
        for (int k = 0; k < 6; k++) same += atoi(r[k].data) == atoi(r[i].data);
        BT_LE(same, 2);
    }
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

/* The reply box's "k" (read without allocating: the walk may be failing allocations). */
static braid_result walk_box_ok(braid_result r, void *arg) {
    res *x = arg;
    braid_worker_reply *rep = r.value;
    const char *k = rep->box ? braid_box_str(rep->box, "k") : NULL;
    snprintf(x->data, sizeof x->data, "%s", k ? k : "(no box)");
    x->done = 1;
    return r;
}

/* ---- the allocation-failure walk over a call ------------------------------------------------- */
/* Calls (bytes, or box b when not NULL) under the allocation walk until one
 * runs without reaching the failing allocation: each one fails cleanly or
 * answers, and leaves nothing behind. Returns how many failed. */
static int walk_calls(braid_loop *loop, braid_workers *w, const braid_box *b) {
    long base = braid_test_alloc_outstanding();
    int failures = 0;
    for (long n = 1; n < 100; n++) {
        res r;
        memset(&r, 0, sizeof r);
        braid_test_fail_alloc_after(n, false);
        braid_deferred *d = b ? braid_workers_call_box(w, "boxecho", b, NULL)
                              : braid_workers_call(w, "echo", "walk", 4, NULL);
        if (d) {
            BT_OK(braid_deferred_add(d, b ? walk_box_ok : res_ok, res_err, &r));
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
    return failures;
}

BT_IO_TEST(workers_alloc_walk) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    res r;
    call_rel(w, "echo", "warm", &r, NULL);
    bt_run_until(loop, &r.done, 200000);
    BT_GT(walk_calls(loop, w, NULL), 0);
    /* The same over a box call: the box's encoding into the call and the
     * reply box's decoding fail cleanly too. */
    braid_box *b;
    BT_OK(braid_box_new(&b));
    BT_OK(braid_box_set_str(b, "k", "walk"));
    BT_GT(walk_calls(loop, w, b), 0);
    braid_box_free(b);
    finish(loop, w);
}

/* ---- boxes over the connection ------------------------------------------------------------ */
static braid_box *every_type(size_t big) {
    braid_box *b;
    BT_OK(braid_box_new(&b));
    BT_OK(braid_box_set_str(b, "s", "text \xc3\xa9"));
    BT_OK(braid_box_set_i64(b, "i", -7));
    BT_OK(braid_box_set_u64(b, "u", UINT64_MAX));
    BT_OK(braid_box_set_f64(b, "f", 0.125));
    BT_OK(braid_box_set_bool(b, "t", true));
    BT_OK(braid_box_append(b, "l", "x", 1));
    BT_OK(braid_box_append(b, "l", "yz", 2));
    char *v = malloc(big);
    memset(v, 'v', big);
    BT_OK(braid_box_set_bytes(b, "big", v, big));   /* past AMP's 64 KiB value limit */
    free(v);
    return b;
}

typedef struct boxres {
    int done, code;
    braid_box *box;
    size_t len;
} boxres;
static braid_result box_ok(braid_result r, void *arg) {
    boxres *x = arg;
    braid_worker_reply *rep = r.value;
    x->len = rep->len;
    if (rep->box) {   /* copy it out: the reply goes with the result */
        size_t n = braid_box_encoded_size(rep->box);
        unsigned char *buf = malloc(n);
        BT_OK(braid_box_encode(rep->box, buf, n, NULL));
        BT_EQ(n, rep->len);
        BT_TRUE(!memcmp(buf, rep->data, n));   /* data is the encoding */
        BT_OK(braid_box_decode(buf, n, &x->box));
        free(buf);
    }
    x->done = 1;
    return r;
}
static braid_result box_err(braid_result r, void *arg) {
    boxres *x = arg;
    x->code = r.failure->code;
    x->done = 1;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

BT_IO_TEST(workers_box_call) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .max_frame = 1u << 20 }, &w));
    wait_ready(loop, w, 1);
    pid_t pid;
    braid_workers_pids(w, &pid, 1);
    braid_box *b = every_type(100000);
    boxres x = { 0 };
    braid_deferred *d = braid_workers_call_box(w, "boxecho", b, NULL);
    BT_OK(braid_deferred_add(d, box_ok, box_err, &x));
    braid_deferred_unref(d);
    /* A bytes call beside it is unchanged: bytes back, no box. */
    res e;
    call_rel(w, "echo", "plain", &e, NULL);
    bt_run_until(loop, &x.done, 200000);
    bt_run_until(loop, &e.done, 200000);
    BT_EQ(x.code, 0);
    BT_TRUE(x.box != NULL);
    BT_STREQ(braid_box_str(x.box, "s"), "text \xc3\xa9");
    int64_t i;
    BT_OK(braid_box_i64(x.box, "i", &i));
    BT_EQ(i, -7);
    BT_OK(braid_box_i64(x.box, "pid", &i));
    BT_EQ(i, pid);
    uint64_t u;
    BT_OK(braid_box_u64(x.box, "u", &u));
    BT_TRUE(u == UINT64_MAX);
    double f;
    BT_OK(braid_box_f64(x.box, "f", &f));
    BT_TRUE(f == 0.125);
    bool t;
    BT_OK(braid_box_bool(x.box, "t", &t));
    BT_TRUE(t);
    BT_EQ(braid_box_items(x.box, "l"), 2);
    const void *p;
    size_t n;
    BT_OK(braid_box_bytes(x.box, "big", &p, &n));
    BT_EQ(n, 100000);
    BT_TRUE(((const char *)p)[99999] == 'v');
    braid_box_free(x.box);
    BT_STREQ(e.data, "plain");
    /* A bytes call to a box handler: it sees no box. */
    res nb;
    call_rel(w, "boxecho", "raw", &nb, NULL);
    bt_run_until(loop, &nb.done, 200000);
    BT_EQ(nb.code, BRAID_EINVAL);
    /* A box past the frame limit fails at once; no box is BRAID_EINVAL. */
    braid_box_free(b);
    b = every_type(2u << 20);
    memset(&x, 0, sizeof x);
    d = braid_workers_call_box(w, "boxecho", b, NULL);
    BT_OK(braid_deferred_add(d, box_ok, box_err, &x));
    braid_deferred_unref(d);
    BT_EQ(x.code, BRAID_EMSGSIZE);
    memset(&x, 0, sizeof x);
    d = braid_workers_call_box(w, "boxecho", NULL, NULL);
    BT_OK(braid_deferred_add(d, box_ok, box_err, &x));
    braid_deferred_unref(d);
    BT_EQ(x.code, BRAID_EINVAL);
    braid_box_free(b);
    /* A reply box past the frame limit reaches the caller as BRAID_EMSGSIZE. */
    res big;
    call_rel(w, "bigbox", "2000000", &big, NULL);
    bt_run_until(loop, &big.done, 200000);
    BT_EQ(big.code, BRAID_EMSGSIZE);
    call_rel(w, "bigbox", "500000", &big, NULL);
    bt_run_until(loop, &big.done, 200000);
    BT_EQ(big.code, 0);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.lost, 0);
    finish(loop, w);
}

/* A worker whose reply box is garbage is a worker that sent a garbage
 * frame: killed, its calls failed with BRAID_EWORKER_PROTOCOL, replaced. */
BT_IO_TEST(workers_box_garbage_from_worker) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    res h, g, e;
    call_rel(w, "hold", NULL, &h, NULL);
    call_rel(w, "badbox", NULL, &g, NULL);
    bt_run_until(loop, &g.done, 200000);
    bt_run_until(loop, &h.done, 200000);
    BT_EQ(g.code, BRAID_EWORKER_PROTOCOL);
    BT_EQ(h.code, BRAID_EWORKER_PROTOCOL);
    call_rel(w, "echo", "after", &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_STREQ(e.data, "after");
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.lost, 1);
    finish(loop, w);
}

/* The parent's side written by hand over a socketpair, so that it can send
 * what braid's parent never does: a garbage box is an error reply for that
 * call, and the worker goes on serving; a call's request id reaches the
 * handler's context. */
static void raw_write(int fd, const braid__rpc_msg *m) {
    braid_loop *loop;
    BT_OK(braid_loop_new(NULL, &loop));
    braid_protocol sink = { 0 };
    static const braid_protocol_ops ops = { 0 };
    sink.ops = &ops;
    braid_memory_transport *mt;
    BT_OK(braid_memory_transport_new(loop, &sink, &mt));
    BT_OK(braid__rpc_write(braid_memory_transport_base(mt), m, 1u << 20));
    size_t n;
    const unsigned char *out = braid_memory_transport_data(mt, &n);
    BT_EQ(write(fd, out, n), (ssize_t)n);
    braid_memory_transport_free(mt);
    for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_OK(braid_loop_free(loop));
}
static size_t raw_read(int fd, unsigned char *buf, size_t cap) {
    size_t got = 0, want = 4;
    while (got < want) {
        struct pollfd pfd = { fd, POLLIN, 0 };
        BT_EQ(poll(&pfd, 1, 20000), 1);
        ssize_t r = read(fd, buf + got, want - got);
        BT_GT(r, 0);
        got += (size_t)r;
        if (got == 4 && want == 4) {
            want = 4 + ((size_t)buf[0] << 24 | (size_t)buf[1] << 16 | (size_t)buf[2] << 8 | buf[3]);
            BT_TRUE(want <= cap);
        }
    }
    return got;
}

BT_IO_TEST(workers_box_garbage_from_parent) {
    braid_loop *loop = bt_loop_new(NULL);
    int sp[2];
    BT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp), 0);
    const char *env[] = { "BRAID_WORKER=3", NULL };
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_DEVNULL, 0, NULL },
                               { 1, BRAID_PROCESS_FD_INHERIT, 1, NULL },
                               { 2, BRAID_PROCESS_FD_INHERIT, 2, NULL },
                               { 3, BRAID_PROCESS_FD_INHERIT, sp[1], NULL } };
    braid_process *p;
    BT_OK(braid_process_spawn(loop, &(braid_process_options){ .file = "/proc/self/exe",
                                  .env_mode = BRAID_PROCESS_ENV_EXTEND, .env = env, .fds = fds,
                                  .nfds = 4 }, &p, NULL));
    close(sp[1]);
    static unsigned char buf[1 << 16];
    braid__rpc_msg m;
    size_t n = raw_read(sp[0], buf, sizeof buf);
    BT_OK(braid__rpc_parse(buf + 4, n - 4, &m));
    BT_EQ(m.type, BRAID__RPC_READY);
    /* A garbage box (version 9). */
    static const unsigned char bad[] = { 9, 0, 0 };
    raw_write(sp[0], &(braid__rpc_msg){ .type = BRAID__RPC_CALL_EX, .id = 7, .flags = BRAID__RPC_F_BOX,
                                        .command = "boxecho", .command_len = 7, .payload = bad,
                                        .len = sizeof bad });
    n = raw_read(sp[0], buf, sizeof buf);
    BT_OK(braid__rpc_parse(buf + 4, n - 4, &m));
    BT_EQ(m.type, BRAID__RPC_FAIL);
    BT_EQ(m.id, 7);
    BT_EQ(m.code, BRAID_EBOX);
    /* The worker keeps serving: a good box, then a request id. */
    braid_box *b;
    BT_OK(braid_box_new(&b));
    BT_OK(braid_box_set_str(b, "k", "v"));
    unsigned char enc[64];
    size_t el;
    BT_OK(braid_box_encode(b, enc, sizeof enc, &el));
    braid_box_free(b);
    raw_write(sp[0], &(braid__rpc_msg){ .type = BRAID__RPC_CALL_EX, .id = 8, .flags = BRAID__RPC_F_BOX,
                                        .command = "boxecho", .command_len = 7, .payload = enc,
                                        .len = el });
    n = raw_read(sp[0], buf, sizeof buf);
    BT_OK(braid__rpc_parse(buf + 4, n - 4, &m));
    BT_EQ(m.type, BRAID__RPC_REPLY_BOX);
    BT_EQ(m.id, 8);
    BT_OK(braid_box_decode(m.payload, m.len, &b));
    BT_STREQ(braid_box_str(b, "k"), "v");
    braid_box_free(b);
    raw_write(sp[0], &(braid__rpc_msg){ .type = BRAID__RPC_CALL_EX, .id = 9, .flags = BRAID__RPC_F_RID,
                                        .request_id = 123456789012ull, .command = "rid", .command_len = 3 });
    n = raw_read(sp[0], buf, sizeof buf);
    BT_OK(braid__rpc_parse(buf + 4, n - 4, &m));
    BT_EQ(m.type, BRAID__RPC_REPLY);
    BT_EQ(m.len, 12);
    BT_TRUE(!memcmp(m.payload, "123456789012", 12));
    /* EOF: the worker exits 0. */
    close(sp[0]);
    braid_process_status st;
    for (int i = 0; i < 200000 && !braid_process_has_exited(p, &st); i++) braid_loop_run_once(loop, 0);
    BT_TRUE(braid_process_has_exited(p, &st));
    BT_EQ(st.exit_code, 0);
    braid_process_free(p);
    bt_loop_destroy(loop);
}

/* The caller's request id travels with the call. */
BT_IO_TEST(workers_request_id) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    res a, b;
    braid_ctx_scope scope;
    BT_OK(braid_ctx_push_u64(&scope, &braid_log_request_id_key, 4242));
    call_rel(w, "rid", NULL, &a, NULL);
    braid_ctx_pop(&scope);
    call_rel(w, "rid", NULL, &b, NULL);
    bt_run_until(loop, &a.done, 200000);
    bt_run_until(loop, &b.done, 200000);
    BT_STREQ(a.data, "4242");
    BT_STREQ(b.data, "0");
    finish(loop, w);
}

/* An unlinked temporary file holding "dataset", for a worker to read at an
 * extra fd. */
static int data_file(void) {
    char path[] = "/tmp/braid-workers-fds-XXXXXX";
    int data = mkstemp(path);
    BT_GE(data, 0);
    unlink(path);
    BT_EQ(write(data, "dataset", 7), 7);
    return data;
}

/* The connection is a pair of pipes (cheaper per round trip than a
 * socketpair): calls come in on fd 3, and the frames go out on the lowest
 * fd the caller's map leaves free — here 6, past extras at 4 and 5 — which
 * the worker's own children do not inherit. */
BT_IO_TEST(workers_connection_is_pipes) {
    braid_loop *loop = bt_loop_new(NULL);
    int data = data_file();
    braid_process_fd extra[] = { { 4, BRAID_PROCESS_FD_DEVNULL, 0, NULL },
                                 { 5, BRAID_PROCESS_FD_INHERIT, data, NULL } };
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = extra, .nfds = 2 }, &w));
    res a, b;
    call_rel(w, "conn", NULL, &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_STREQ(a.data, "fifo");
    call_rel(w, "fds", NULL, &b, NULL);
    bt_run_until(loop, &b.done, 200000);
    BT_STREQ(b.data, "0,1,2,3,4,5 dataset");
    finish(loop, w);
    close(data);
}

/* A call written to a worker that no longer reads (the pipe to it has no
 * reader on its side) must not raise SIGPIPE in the parent, whose default
 * action would kill it: the call times out, the worker is replaced and the
 * replacement answers. The timeout runs on the fake clock. */
BT_IO_TEST(workers_no_sigpipe_in_parent) {
    braid_fake_clock *fc;
    braid_loop *loop;
    braid_workers *w = one_worker_on_fake_clock(&fc, &loop);
    res a, b, e;
    call_rel(w, "deaf", NULL, &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_EQ(a.code, 0);
    call_rel(w, "echo", "x", &b, &(braid_workers_call_options){ .timeout = BRAID_SECONDS(5) });
    for (int i = 0; i < 50; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* written */
    braid_fake_clock_advance(fc, BRAID_SECONDS(5));
    bt_run_until(loop, &b.done, 200000);
    BT_TRUE(b.code == BRAID_ETIMEDOUT || b.code == BRAID_EWORKER_LOST);
    call_rel(w, "echo", "after", &e, NULL);
    bt_run_until(loop, &e.done, 200000);
    BT_EQ(e.code, 0);
    BT_STREQ(e.data, "after");
    finish(loop, w);
    braid_fake_clock_free(fc);
}

/* Extra descriptors reach every worker at their child numbers — a data
 * file at 5, /dev/null at 9 — and nothing else is open there (a parent fd
 * left inheritable on purpose stays out), replacements included. */
BT_IO_TEST(workers_extra_fds) {
    braid_loop *loop = bt_loop_new(NULL);
    int data = data_file();
    int decoy = open("/dev/null", O_RDONLY);   /* not close-on-exec */
    BT_GE(decoy, 0);
    braid_process_fd extra[] = { { 5, BRAID_PROCESS_FD_INHERIT, data, NULL },
                                 { 9, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = extra, .nfds = 2 }, &w));
    extra[0].child_fd = 99;   /* the pool copied the map */
    res a;
    call_rel(w, "fds", NULL, &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_STREQ(a.data, "0,1,2,3,5,9 dataset");
    /* A replacement gets them too. */
    res c, b;
    call_rel(w, "crash", NULL, &c, NULL);
    bt_run_until(loop, &c.done, 200000);
    call_rel(w, "fds", NULL, &b, NULL);
    bt_run_until(loop, &b.done, 200000);
    BT_STREQ(b.data, "0,1,2,3,5,9 dataset");
    finish(loop, w);
    /* Maps the pool refuses: its own numbers, pipes, duplicates. */
    loop = bt_loop_new(NULL);
    braid_process_fd bad3[] = { { 3, BRAID_PROCESS_FD_INHERIT, data, NULL } };
    braid_process_fd pipe[] = { { 5, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL } };
    braid_process_fd dup[] = { { 5, BRAID_PROCESS_FD_DEVNULL, 0, NULL }, { 5, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    BT_EQ(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = bad3, .nfds = 1 }, &w), BRAID_EINVAL);
    BT_EQ(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = pipe, .nfds = 1 }, &w), BRAID_EINVAL);
    BT_EQ(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = dup, .nfds = 2 }, &w), BRAID_EINVAL);
    bt_loop_destroy(loop);
    close(decoy);
    close(data);
}

/* ---- log events from workers ------------------------------------------------------------- */
typedef struct logseen {
    int events;                    /* in the namespace watched */
    int quiet, debug;
    uint64_t last_seq[2];          /* per worker index, +1 (0: none yet) */
    int per_worker[2];
    bool out_of_order;
    int64_t pid[2];
    uint64_t rid;
    uint64_t reported_dropped;     /* worker_dropped fields */
    int reports;
    const char *ns;
} logseen;

static void seen_cb(const braid_log_event *ev, void *arg) {
    logseen *x = arg;
    uint64_t seq = 0, widx = 9;
    int64_t pid = 0;
    for (size_t i = 0; i < ev->nfields; i++) {
        const braid_log_field *f = &ev->fields[i];
        if (!strcmp(f->key, "seq")) seq = f->v.u64;
        if (!strcmp(f->key, "worker")) widx = f->v.u64;
        if (!strcmp(f->key, "pid")) pid = f->v.i64;
        if (!strcmp(f->key, "worker_dropped")) x->reported_dropped += f->v.u64;
    }
    if (ev->ns && !strcmp(ev->ns, "braid.process") && strstr(ev->msg, "log events dropped")) x->reports++;
    if (ev->ns && !strcmp(ev->ns, "app.quiet")) x->quiet++;
    if (ev->level == BRAID_LOG_DEBUG) x->debug++;
    if (!ev->ns || strcmp(ev->ns, x->ns) || widx > 1) return;
    x->events++;
    x->per_worker[widx]++;
    if (x->last_seq[widx] && seq + 1 <= x->last_seq[widx]) x->out_of_order = true;
    x->last_seq[widx] = seq + 1;
    x->pid[widx] = pid;
    x->rid = ev->request_id;
}

/* Events logged in a worker reach the parent's observers with the worker's
 * index and pid added, in order per worker, carrying the request id of the
 * call; the parent's namespace filters apply, and the worker's own level. */
BT_IO_TEST(workers_log_events) {
    unsetenv("BRAID_LOG_DEBUG");   /* the workers' default level: info */
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    logseen x = { .ns = "app.work" };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(lg, seen_cb, &x, &obs));
    BT_OK(braid_logger_set_level(lg, "app.quiet", BRAID_LOG_ERROR));
    BT_OK(braid_logger_set_level(lg, NULL, BRAID_LOG_DEBUG));
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 2 }, &w));
    wait_ready(loop, w, 2);
    res a, b;
    braid_ctx_scope scope;
    BT_OK(braid_ctx_push_u64(&scope, &braid_log_request_id_key, 77));
    call_rel(w, "log", "200", &a, NULL);
    call_rel(w, "log", "100", &b, NULL);   /* least-loaded: the other worker */
    braid_ctx_pop(&scope);
    bt_run_until(loop, &a.done, 200000);
    bt_run_until(loop, &b.done, 200000);
    BT_STREQ(a.data, "logged");
    BT_EQ(x.events, 300);   /* each before its reply, on the same connection */
    BT_EQ(x.per_worker[0] + x.per_worker[1], 300);
    BT_TRUE(x.per_worker[0] == 100 || x.per_worker[0] == 200);
    BT_FALSE(x.out_of_order);
    BT_EQ(x.quiet, 0);
    BT_EQ(x.debug, 0);
    BT_UEQ(x.rid, 77);
    pid_t pids[2];
    BT_EQ(braid_workers_pids(w, pids, 2), 2);
    BT_TRUE((x.pid[0] == pids[0] && x.pid[1] == pids[1]) || (x.pid[0] == pids[1] && x.pid[1] == pids[0]));
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.log_events, 302);   /* the quiet ones arrive and are filtered here */
    BT_UEQ(s.log_dropped, 0);
    braid_log_observer_remove(obs);
    finish(loop, w);
}

/* A pool of one ready worker whose fd 5 is the write end of pipe pp. */
static braid_workers *one_with_pipe(braid_loop *loop, int pp[2]) {
    BT_EQ(pipe2(pp, O_CLOEXEC), 0);
    braid_process_fd extra[] = { { 5, BRAID_PROCESS_FD_INHERIT, pp[1], NULL } };
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .fds = extra, .nfds = 1 }, &w));
    wait_ready(loop, w, 1);
    return w;
}

/* A worker logging faster than the parent reads never blocks: past its
 * connection's high watermark events are dropped and counted, and once the
 * parent catches up a warning says how many; every event is either
 * delivered, in order, or counted. */
BT_IO_TEST(workers_log_drops) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    logseen x = { .ns = "app.spam" };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(lg, seen_cb, &x, &obs));
    int pp[2];
    braid_workers *w = one_with_pipe(loop, pp);
    res r;
    call_rel(w, "spam", "3000", &r, NULL);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* the call leaves */
    /* The parent does not read while the worker logs: wait on the pipe alone. */
    struct pollfd pfd = { pp[0], POLLIN, 0 };
    BT_EQ(poll(&pfd, 1, 30000), 1);
    bt_run_until(loop, &r.done, 400000);
    BT_STREQ(r.data, "spammed");
    for (int i = 0; i < 400000 && (uint64_t)x.events + x.reported_dropped < 3000; i++)
        braid_loop_run_once(loop, 0);
    BT_UEQ((uint64_t)x.events + x.reported_dropped, 3000);
    BT_GT(x.reported_dropped, 0);
    BT_GT(x.events, 0);
    BT_FALSE(x.out_of_order);
    BT_GE(x.reports, 1);
    struct braid_workers_stats s;
    braid_workers_stats(w, &s);
    BT_UEQ(s.log_dropped, x.reported_dropped);
    braid_log_observer_remove(obs);
    finish(loop, w);
    close(pp[0]);
    close(pp[1]);
}

typedef struct fatalseen {
    int n, two;
    uint64_t time_ns;
    char msg[64];
} fatalseen;
static void fatal_cb(const braid_log_event *ev, void *arg) {
    fatalseen *x = arg;
    if (!ev->ns || strcmp(ev->ns, "app.fatal")) return;
    x->time_ns = ev->time_ns;
    snprintf(x->msg, sizeof x->msg, "%s", ev->msg);
    x->two = ++x->n >= 2;
}

/* A worker's log event leaves when it is logged, not when the handler
 * returns: one logged just before a crash reaches the parent, and one
 * logged by a handler that then blocks arrives while it blocks, stamped
 * with the worker's time (before the time the worker read after it). */
BT_IO_TEST(workers_log_leaves_before_crash) {
    braid_loop *loop = bt_loop_new(NULL);
    fatalseen x = { 0 };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), fatal_cb, &x, &obs));
    int pp[2];
    braid_workers *w = one_with_pipe(loop, pp);
    res a;
    call_rel(w, "logdie", NULL, &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_EQ(a.code, BRAID_EWORKER_LOST);
    BT_TRUE(strstr(a.msg, "signal 6") != NULL);
    BT_EQ(x.n, 1);
    BT_STREQ(x.msg, "fatal");
    wait_ready(loop, w, 1);
    res b;
    call_rel(w, "logblock", NULL, &b, NULL);
    for (int i = 0; i < 3; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* the call leaves */
    /* The parent reads nothing until the worker has logged and read its clock. */
    struct pollfd pfd = { pp[0], POLLIN, 0 };
    BT_EQ(poll(&pfd, 1, 30000), 1);
    uint64_t t1 = 0;
    BT_EQ(read(pp[0], &t1, sizeof t1), (ssize_t)sizeof t1);
    bt_run_until(loop, &x.two, 200000);
    BT_STREQ(x.msg, "blocked");
    BT_UGE(t1, x.time_ns);
    BT_EQ(b.done, 0);
    braid_log_observer_remove(obs);
    finish(loop, w);
    close(pp[0]);
    close(pp[1]);
}

/* A reply written by an earlier call of the same read waits in the
 * worker's buffer until the read is handled; an event logged after it, by
 * a handler that then crashes, takes the reply out with it, first: both
 * reach the parent (both sent in one write, so one read in the worker). */
BT_IO_TEST(workers_log_behind_reply_survives_crash) {
    braid_loop *loop = bt_loop_new(NULL);
    fatalseen x = { 0 };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), fatal_cb, &x, &obs));
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w));
    wait_ready(loop, w, 1);
    res a, b;
    call_rel(w, "echo", "first", &a, NULL);
    call_rel(w, "logdie", NULL, &b, NULL);
    bt_run_until(loop, &b.done, 200000);
    bt_run_until(loop, &a.done, 200000);
    BT_EQ(a.code, 0);
    BT_STREQ(a.data, "first");
    BT_EQ(b.code, BRAID_EWORKER_LOST);
    BT_EQ(x.n, 1);
    BT_STREQ(x.msg, "fatal");
    braid_log_observer_remove(obs);
    finish(loop, w);
}

static void rc_cb(const braid_log_event *ev, void *arg) {
    if (ev->ns && !strcmp(ev->ns, "app.rc")) *(int *)arg = atoi(ev->msg) - 1000000;
}

/* A bytes reply past the pool's frame limit: the caller gets
 * BRAID_EMSGSIZE, and so does the handler from braid_worker_call_reply. */
BT_IO_TEST(workers_reply_too_big) {
    braid_loop *loop = bt_loop_new(NULL);
    int rc = 1;   /* the handler's, - 1000000 once logged */
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), rc_cb, &rc, &obs));
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .max_frame = 4096 }, &w));
    res big;
    call_rel(w, "bigbytes", "5000", &big, NULL);
    bt_run_until(loop, &big.done, 200000);
    BT_EQ(big.code, BRAID_EMSGSIZE);
    for (int i = 0; i < 200000 && rc == 1; i++) braid_loop_run_once(loop, 0);
    BT_EQ(rc + 1000000, BRAID_EMSGSIZE);
    call_rel(w, "bigbytes", "100", &big, NULL);
    bt_run_until(loop, &big.done, 200000);
    BT_EQ(big.code, 0);
    for (int i = 0; i < 200000 && rc + 1000000 != 0; i++) braid_loop_run_once(loop, 0);
    BT_EQ(rc + 1000000, 0);
    braid_log_observer_remove(obs);
    finish(loop, w);
}

static void named_cb(const braid_log_event *ev, void *arg) {
    if (strstr(ev->msg, "loop not destroyed") && strstr(ev->msg, "worker pool 'freeorder'")) (*(int *)arg)++;
}

/* braid_workers_free closes the workers' connections, which go in the
 * loop's next iteration: a braid_loop_free before it refuses and names the
 * pool; one iteration later it succeeds. */
BT_IO_TEST(workers_free_then_loop_free) {
    braid_loop *loop = bt_loop_new(NULL);
    int named = 0;
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), named_cb, &named, &obs));
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 2, .role = "freeorder" }, &w));
    wait_ready(loop, w, 2);
    braid_workers_free(w);
    BT_EQ(braid_loop_free(loop), BRAID_EBUSY);
    BT_EQ(named, 1);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_log_observer_remove(obs);
    bt_loop_destroy(loop);
}

/* A worker told to stop while a handler holds a call (with a timer) exits
 * without a "loop not destroyed" complaint, and what it says on its stderr
 * (the parent's) carries its pid. */
BT_IO_TEST(workers_stop_holding_calls) {
    braid_loop *loop = bt_loop_new(NULL);
    int ep[2];
    BT_EQ(pipe2(ep, O_CLOEXEC | O_NONBLOCK), 0);
    int saved = dup(2);
    BT_GE(saved, 0);
    dup2(ep[1], 2);   /* the worker inherits this as its stderr */
    braid_workers *w;
    int rc = braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &w);
    dup2(saved, 2);
    close(saved);
    BT_OK(rc);
    wait_ready(loop, w, 1);
    pid_t pid;
    braid_workers_pids(w, &pid, 1);
    res h;
    call_rel(w, "holdtimer", NULL, &h, NULL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    int down = 0;
    braid_deferred *d = braid_workers_shutdown(w, false, 0);
    braid_deferred_add_callback(d, set_flag, &down);
    braid_deferred_unref(d);
    bt_run_until(loop, &down, 400000);
    char out[4096];
    ssize_t n = read(ep[0], out, sizeof out - 1);
    out[n > 0 ? n : 0] = 0;
    BT_TRUE(strstr(out, "loop not destroyed") == NULL);
    char tag[64];
    snprintf(tag, sizeof tag, "braid worker pid %d: stopped with 1 call(s) unanswered", (int)pid);
    BT_TRUE(strstr(out, tag) != NULL);
    finish(loop, w);
    close(ep[0]);
    close(ep[1]);
}

typedef struct warned { int n; } warned;
static void startup_cb(const braid_log_event *ev, void *arg) {
    if (strstr(ev->msg, "die at start-up")) ((warned *)arg)->n++;
}
/* Advance the fake clock by step, n times, running the loop between. */
static void advance_running(braid_loop *loop, braid_fake_clock *fc, uint64_t step, int n) {
    for (int i = 0; i < n; i++) {
        braid_fake_clock_advance(fc, step);
        for (int k = 0; k < 200; k++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
}

/* A worker that never sends its ready frame is killed and replaced after
 * start_timeout; after three start-up failures in a row the pool starts no
 * more (a program that exits at once is not respawned forever), says so
 * once, and fails calls at once. On the fake clock. */
BT_IO_TEST(workers_startup_failures) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    warned wn = { 0 };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), startup_cb, &wn, &obs));
    const char *const mute[] = { "sleep", "1000", NULL };
    const char *progs[] = { "/bin/sleep", "/bin/false" };
    for (int p = 0; p < 2; p++) {
        wn.n = 0;
        braid_workers *w;
        BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1, .program = progs[p],
                                                                .argv = p == 0 ? mute : NULL,
                                                                .start_timeout = p == 0 ? BRAID_SECONDS(1)
                                                                                        : BRAID_FOREVER }, &w));
        struct braid_workers_stats s;
        /* /bin/false's exits come in real time: wait for them. */
        for (int i = 0; i < 2000; i++) {
            braid_workers_stats(w, &s);
            if (s.respawn_stopped) break;
            advance_running(loop, fc, BRAID_MSEC(50), 1);
        }
        advance_running(loop, fc, BRAID_MSEC(500), 40);   /* 20 s more: nothing new */
        braid_workers_stats(w, &s);
        BT_UEQ(s.lost, 3);
        BT_UEQ(s.spawned, 3);
        BT_EQ(s.workers, 0);
        BT_TRUE(s.respawn_stopped);
        BT_EQ(wn.n, 1);
        if (p == 1) BT_STREQ(s.last_exit, "exit status 1");
        res r;
        call_rel(w, "echo", "x", &r, NULL);
        BT_EQ(r.code, BRAID_EWORKER_LOST);
        braid_workers_free(w);
        for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    braid_log_observer_remove(obs);
    finish(loop, NULL);
    braid_fake_clock_free(fc);
}

/* braid_worker_main refuses a BRAID_WORKER that is not an AF_UNIX stream
 * socket at fd >= 3 and leaves fds 0-2 alone. */
BT_TEST(workers_main_bad_fd) {
    int saved = dup(1);
    BT_GE(saved, 3);
    char path[] = "/tmp/braid-worker-fd-XXXXXX";
    int file = mkstemp(path);
    BT_GE(file, 3);
    unlink(path);
    int dg[2];
    BT_EQ(socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, dg), 0);
    char v[4][16];
    snprintf(v[0], sizeof v[0], "1");
    snprintf(v[1], sizeof v[1], "%d", file);
    snprintf(v[2], sizeof v[2], "%d", dg[0]);
    snprintf(v[3], sizeof v[3], "3x");
    for (int i = 0; i < 4; i++) {
        setenv("BRAID_WORKER", v[i], 1);
        int rc = braid_worker_main(NULL, cmds, 1);
        BT_EQ(rc, BRAID_EINVAL);
        BT_GE(fcntl(1, F_GETFD), 0);
        BT_GE(fcntl(file, F_GETFD), 0);
    }
    unsetenv("BRAID_WORKER");
    dup2(saved, 1);
    close(saved);
    close(file);
    close(dg[0]);
    close(dg[1]);
}

/* ---- introspection: the "workers" section ------------------------------------------------- */
static bt_json *doc_of(braid_loop *loop) {
    char *text;
    size_t len;
    BT_OK(braid_introspect_json(loop, &text, &len));
    bt_json *doc = bt_json_parse(text, len);
    BT_TRUE(doc != NULL);
    braid_free(text);
    return doc;
}
static double num(const bt_json *o, const char *key) {
    const bt_json *v = bt_json_get(o, key);
    if (bt_json_type(v) != BT_JSON_NUM) bt_fail(__FILE__, __LINE__, "\"%s\" is not a number", key);
    return v->num;
}

BT_IO_TEST(workers_introspection) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_workers *w;
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 2, .role = "intro", .queue_limit = 50 }, &w));
    wait_ready(loop, w, 2);
    res a[4], h, c;
    for (int i = 0; i < 4; i++) call_rel(w, "echo", "x", &a[i], NULL);
    for (int i = 0; i < 4; i++) bt_run_until(loop, &a[i].done, 200000);
    call_rel(w, "hold", NULL, &h, NULL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_json *doc = doc_of(loop);
    const bt_json *sec = bt_json_get(doc, "workers");
    BT_EQ(bt_json_type(sec), BT_JSON_ARR);
    BT_EQ(sec->n, 1);
    const bt_json *e = bt_json_at(sec, 0);
    BT_STREQ(bt_json_get(e, "name")->str, "intro");
    BT_STREQ(bt_json_get(e, "role")->str, "intro");
    BT_EQ(bt_json_type(bt_json_get(e, "program")), BT_JSON_STR);
    BT_STREQ(bt_json_get(e, "state")->str, "running");
    BT_EQ(num(e, "count"), 2);
    BT_EQ(num(e, "alive"), 2);
    BT_EQ(num(e, "ready"), 2);
    BT_EQ(num(e, "queued"), 0);
    BT_EQ(num(e, "queue_limit"), 50);
    BT_EQ(num(e, "in_flight"), 1);
    BT_EQ(num(e, "max_in_flight"), 8);
    BT_EQ(num(e, "calls"), 4);
    BT_EQ(num(e, "spawned"), 2);
    BT_EQ(num(e, "restarts"), 0);
    BT_EQ(num(e, "lost"), 0);
    BT_EQ(num(e, "timeouts"), 0);
    BT_EQ(num(e, "recycled"), 0);
    BT_EQ(num(e, "resent"), 0);
    BT_EQ(num(e, "log_events"), 0);
    BT_EQ(num(e, "log_dropped"), 0);
    const bt_json *ws = bt_json_get(e, "workers");
    BT_EQ(bt_json_type(ws), BT_JSON_ARR);
    BT_EQ(ws->n, 2);
    pid_t pids[2];
    braid_workers_pids(w, pids, 2);
    double calls = 0, inflight = 0, idx = 0;
    for (size_t i = 0; i < 2; i++) {
        const bt_json *k = bt_json_at(ws, i);
        BT_EQ(num(k, "pid"), pids[i]);
        BT_STREQ(bt_json_get(k, "state")->str, "ready");
        calls += num(k, "calls");
        inflight += num(k, "in_flight");
        idx += num(k, "index");
        BT_EQ(num(k, "failed"), 0);
    }
    BT_EQ(calls, 4);
    BT_EQ(inflight, 1);
    BT_EQ(idx, 0 + 1);   /* indexes 0 and 1 */
    bt_json_free(doc);
    /* A crash: counted, and the replacement takes the free index. */
    call_rel(w, "crash", NULL, &c, NULL);
    bt_run_until(loop, &c.done, 200000);
    wait_ready(loop, w, 2);
    doc = doc_of(loop);
    e = bt_json_at(bt_json_get(doc, "workers"), 0);
    BT_EQ(num(e, "restarts"), 1);
    BT_EQ(num(e, "lost"), 1);
    ws = bt_json_get(e, "workers");
    BT_EQ(ws->n, 2);
    BT_EQ(num(bt_json_at(ws, 0), "index") + num(bt_json_at(ws, 1), "index"), 1);
    bt_json_free(doc);
    braid_workers_free(w);
    BT_EQ(h.code, BRAID_ESHUTDOWN);
    doc = doc_of(loop);
    BT_TRUE(bt_json_get(doc, "workers") == NULL);   /* gone with the pool */
    bt_json_free(doc);
    for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(loop);
}

/* An observer may free the pool from a worker's log event: the frame's
 * processing stops there, every call fails with BRAID_ESHUTDOWN. */
typedef struct freer {
    braid_workers *w;
    int seen;
} freer;
static void free_on_event(const braid_log_event *ev, void *arg) {
    freer *f = arg;
    if (!ev->ns || strcmp(ev->ns, "app.work") || !f->w) return;
    f->seen++;
    braid_workers_free(f->w);
    f->w = NULL;
}

BT_IO_TEST(workers_log_observer_frees_pool) {
    braid_loop *loop = bt_loop_new(NULL);
    freer f = { 0 };
    braid_log_observer *obs;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), free_on_event, &f, &obs));
    BT_OK(braid_workers_new(loop, &(braid_workers_options){ .count = 1 }, &f.w));
    res a;
    call_rel(f.w, "log", "50", &a, NULL);
    bt_run_until(loop, &a.done, 200000);
    BT_EQ(a.code, BRAID_ESHUTDOWN);
    BT_EQ(f.seen, 1);
    braid_log_observer_remove(obs);
    for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    bt_loop_destroy(loop);
}
