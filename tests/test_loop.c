/* The loop on every backend: watchers, stale events, self-close, iteration
 * order, posted calls from many threads, signals, stop, holds, the leak gate. */
// ctest-labels: loop threads
#include "harness.h"
#include "support/net.h"
#include "loop/loop_module.h"
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct hits { int reads, writes, errors; unsigned last; char buf[64]; } hits;

static void on_io(braid_watch *w, unsigned ev, void *arg) {
    hits *h = arg;
    h->last = ev;
    if (ev & BRAID_WATCH_READ) {
        h->reads++;
        ssize_t n = read(w->fd, h->buf, sizeof h->buf);
        (void)n;
    }
    if (ev & BRAID_WATCH_WRITE) h->writes++;
    if (ev & (BRAID_WATCH_ERROR | BRAID_WATCH_HUP)) h->errors++;
}

BT_IO_TEST(read_and_write_readiness) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_ERR(braid_watch_init(loop, &(braid_watch){0}, sv[0], on_io, &h), BRAID_EEXIST);
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_WRITE));
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(h.writes, 1); BT_EQ(h.reads, 0);
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.reads, 0);                       /* nothing to read yet */
    BT_EQ(write(sv[1], "hello", 5), 5);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(h.reads, 1);
    BT_TRUE(memcmp(h.buf, "hello", 5) == 0);
    BT_OK(braid_watch_set_interest(&w, 0));           /* no interest: nothing delivered */
    BT_EQ(write(sv[1], "x", 1), 1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.reads, 1);
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

BT_IO_TEST(hangup_wakes_reader) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    close(sv[1]);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(h.reads, 1);                       /* EOF is readable */
    braid_watch_close(&w);
    close(sv[0]);
    bt_loop_destroy(loop);
}

/* Two sockets ready in the same batch: the first callback closes the second's
 * watcher and its fd, then opens a new socket that reuses the fd number and
 * watches it. The stale event collected for the old fd must not reach either
 * the old watcher (freed) or the new one (never ready). */
typedef struct stale_ctx {
    braid_watch a, *b, b2;
    int sv_a[2], sv_b[2];
    int a_hits, b_hits, b2_hits, reused_fd;
    braid_loop *loop;
} stale_ctx;

static void stale_b2(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; ((stale_ctx *)arg)->b2_hits++; }
static void stale_b(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; ((stale_ctx *)arg)->b_hits++; }
static void stale_a(braid_watch *w, unsigned ev, void *arg) {
    stale_ctx *c = arg;
    (void)ev;
    c->a_hits++;
    char buf[8];
    (void)!read(w->fd, buf, sizeof buf);
    if (c->b) {
        int old = c->b->fd;
        braid_watch_close(c->b);
        free(c->b);                          /* memory gone: a stale event would be UAF */
        c->b = NULL;
        close(old);
        int fds[2];
        bt_socketpair(fds);                           /* lowest free fd: old's number comes back */
        c->reused_fd = fds[0] == old ? 1 : 0;
        c->sv_b[0] = fds[0];
        close(c->sv_b[1]);
        c->sv_b[1] = fds[1];
        BT_OK(braid_watch_init(c->loop, &c->b2, fds[0], stale_b2, c));
        BT_OK(braid_watch_set_interest(&c->b2, BRAID_WATCH_READ));   /* not readable: nothing written */
    }
}

BT_IO_TEST(stale_event_after_close_and_fd_reuse) {
    braid_loop *loop = bt_loop_new(NULL);
    stale_ctx c = { .loop = loop };
    bt_socketpair(c.sv_a); bt_socketpair(c.sv_b);
    /* Make b's fd number smaller or larger than a's: test both orders. */
    for (int round = 0; round < 2; round++) {
        c.b = malloc(sizeof *c.b);
        c.a_hits = c.b_hits = c.b2_hits = 0;
        BT_OK(braid_watch_init(loop, &c.a, c.sv_a[0], stale_a, &c));
        BT_OK(braid_watch_init(loop, c.b, c.sv_b[0], stale_b, &c));
        BT_OK(braid_watch_set_interest(&c.a, BRAID_WATCH_READ));
        BT_OK(braid_watch_set_interest(c.b, BRAID_WATCH_READ));
        BT_EQ(write(c.sv_a[1], "a", 1), 1);
        BT_EQ(write(c.sv_b[1], "b", 1), 1);   /* both ready in one poll */
        BT_OK(braid_loop_run_once(loop, 0));
        BT_EQ(c.a_hits, 1);
        BT_EQ(c.b2_hits, 0);
        /* b may have been dispatched before a (fd order) — but never after its close. */
        BT_LE(c.b_hits, 1);
        if (c.b) { braid_watch_close(c.b); free(c.b); c.b = NULL; }
        else BT_EQ(c.reused_fd, 1);
        if (c.b2.flags & 1) braid_watch_close(&c.b2);
        braid_watch_close(&c.a);
        /* swap the roles' fd order for round 2 */
        int t0 = c.sv_a[0], t1 = c.sv_a[1];
        c.sv_a[0] = c.sv_b[0]; c.sv_a[1] = c.sv_b[1];
        c.sv_b[0] = t0; c.sv_b[1] = t1;
        char buf[8];
        (void)!read(c.sv_a[0], buf, sizeof buf);
        (void)!read(c.sv_b[0], buf, sizeof buf);
    }
    close(c.sv_a[0]); close(c.sv_a[1]); close(c.sv_b[0]); close(c.sv_b[1]);
    bt_loop_destroy(loop);
}

static void self_close(braid_watch *w, unsigned ev, void *arg) {
    (void)ev;
    ++*(int *)arg;
    braid_watch_close(w);
    free(w);
}

BT_IO_TEST(callback_closes_its_own_watcher) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2]; bt_socketpair(sv);
    int n = 0;
    braid_watch *w = malloc(sizeof *w);
    BT_OK(braid_watch_init(loop, w, sv[0], self_close, &n));
    BT_OK(braid_watch_set_interest(w, BRAID_WATCH_READ | BRAID_WATCH_WRITE));
    BT_EQ(write(sv[1], "z", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(n, 1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(n, 1);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* Many watchers at once, only some ready; each is reported exactly once. */
BT_IO_TEST(many_watchers_only_ready_ones_fire) {
    braid_loop *loop = bt_loop_new(NULL);
    enum { N = 200 };
    int (*sv)[2] = calloc(N, sizeof *sv);
    braid_watch *w = calloc(N, sizeof *w);
    hits *h = calloc(N, sizeof *h);
    for (int i = 0; i < N; i++) {
        bt_socketpair(sv[i]);
        BT_OK(braid_watch_init(loop, &w[i], sv[i][0], on_io, &h[i]));
        BT_OK(braid_watch_set_interest(&w[i], BRAID_WATCH_READ));
    }
    for (int i = 0; i < N; i += 7) BT_EQ(write(sv[i][1], "r", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    for (int i = 0; i < N; i++) BT_EQ(h[i].reads, i % 7 == 0 ? 1 : 0);
    for (int i = 0; i < N; i++) { braid_watch_close(&w[i]); close(sv[i][0]); close(sv[i][1]); }
    free(sv); free(w); free(h);
    bt_loop_destroy(loop);
}

/* ---- iteration order ---------------------------------------------------------- */
static char order[16]; static int norder;
static void ord_io(braid_watch *w, unsigned ev, void *arg) {
    (void)ev; (void)arg; order[norder++] = 'I';
    char b[4]; (void)!read(w->fd, b, sizeof b);
}
static void ord_timer(braid_timer *t, void *arg) { (void)t; (void)arg; order[norder++] = 'T'; }
static void ord_post(void *arg) { (void)arg; order[norder++] = 'P'; }
static void ord_soon(void *arg) { (void)arg; order[norder++] = 'S'; }

BT_IO_TEST(one_iteration_runs_phases_in_order) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    int sv[2]; bt_socketpair(sv);
    braid_watch w; braid_timer t;
    BT_OK(braid_watch_init(loop, &w, sv[0], ord_io, NULL));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    braid_timer_init(loop, &t, ord_timer, NULL);
    BT_OK(braid_timer_start(&t, 0));
    BT_OK(braid_loop_soon(loop, ord_soon, NULL));   /* queued first, runs last */
    BT_OK(braid_loop_post(loop, ord_post, NULL));
    BT_EQ(write(sv[1], "i", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    order[norder] = 0;
    BT_STREQ(order, "ITPS");
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* A ready call queued from a ready call runs in the next iteration. */
static int soon_n; static braid_loop *soon_loop;
static void soon_again(void *arg) { (void)arg; if (++soon_n < 3) braid_loop_soon(soon_loop, soon_again, NULL); }
BT_TEST(ready_calls_added_during_phase_wait) {
    braid_loop *loop = soon_loop = bt_loop_new(NULL);
    BT_OK(braid_loop_soon(loop, soon_again, NULL));
    BT_EQ(braid_loop_run_once(loop, 0), 1);
    BT_EQ(soon_n, 1);
    BT_OK(braid_loop_run(loop));
    BT_EQ(soon_n, 3);
    bt_loop_destroy(loop);
}

/* ---- posted calls from 8 threads --------------------------------------------- */
enum { THREADS = 8, PER_THREAD = 100000 };
typedef struct post_state {
    braid_loop *loop;
    long last[THREADS];
    long count;
    int out_of_order;
    int wrong_thread;
    pthread_t loop_thread;
    int done_threads;
} post_state;
typedef struct post_msg { braid_post node; post_state *s; int thread; long seq; } post_msg;

static void on_post(void *arg) {
    post_msg *m = arg;
    post_state *s = m->s;
    if (!pthread_equal(pthread_self(), s->loop_thread)) s->wrong_thread++;
    if (m->seq != s->last[m->thread] + 1) s->out_of_order++;
    s->last[m->thread] = m->seq;
    if (++s->count == (long)THREADS * PER_THREAD) braid_loop_release(s->loop);
}

typedef struct poster { post_state *s; int id; post_msg *msgs; } poster;
static void *post_thread(void *arg) {
    poster *p = arg;
    for (long i = 0; i < PER_THREAD; i++) {
        post_msg *m = &p->msgs[i];
        m->s = p->s; m->thread = p->id; m->seq = i;
        m->node.fn = on_post; m->node.arg = m;
        braid_loop_post_node(p->s->loop, &m->node);
    }
    return NULL;
}

BT_IO_TEST(eight_threads_post_100k_each_none_lost_order_kept) {
    post_state s = { .loop = bt_loop_new(NULL), .loop_thread = pthread_self() };
    for (int i = 0; i < THREADS; i++) s.last[i] = -1;
    braid_loop_hold(s.loop);                 /* released by the last call */
    pthread_t th[THREADS];
    poster p[THREADS];
    for (int i = 0; i < THREADS; i++) {
        p[i] = (poster){ &s, i, calloc(PER_THREAD, sizeof(post_msg)) };
        BT_EQ(pthread_create(&th[i], NULL, post_thread, &p[i]), 0);
    }
    BT_OK(braid_loop_run(s.loop));
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
    BT_EQ(s.count, (long)THREADS * PER_THREAD);
    BT_EQ(s.out_of_order, 0);
    BT_EQ(s.wrong_thread, 0);
    for (int i = 0; i < THREADS; i++) { BT_EQ(s.last[i], PER_THREAD - 1); free(p[i].msgs); }
    bt_loop_destroy(s.loop);
}

/* braid_loop_post (allocating) from another thread wakes a loop blocked in poll. */
static void set_flag(void *arg) { *(volatile int *)arg = 1; }
typedef struct wake_arg { braid_loop *loop; volatile int *flag; } wake_arg;
static void *wake_thread(void *arg) {
    wake_arg *w = arg;
    braid_loop_post(w->loop, set_flag, (void *)w->flag);
    return NULL;
}
BT_IO_TEST(post_wakes_blocked_loop) {
    braid_loop *loop = bt_loop_new(NULL);
    volatile int flag = 0;
    braid_loop_hold(loop);                   /* blocks forever unless woken */
    wake_arg a = { loop, &flag };
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, wake_thread, &a), 0);
    bt_run_until(loop, &flag, 100);
    pthread_join(th, NULL);
    braid_loop_release(loop);
    bt_loop_destroy(loop);
}

static void *stop_thread(void *arg) { braid_loop_stop(arg); return NULL; }
BT_IO_TEST(stop_from_another_thread) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_loop_hold(loop);
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, stop_thread, loop), 0);
    BT_OK(braid_loop_run(loop));             /* returns because of stop */
    pthread_join(th, NULL);
    braid_loop_release(loop);
    bt_loop_destroy(loop);
}

/* ---- signals -------------------------------------------------------------------- */
static void on_sig(braid_signal *s, int signo, void *arg) {
    (void)s;
    *(int *)arg = signo;
}
BT_IO_TEST(signal_delivered_as_loop_event) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_signal s1, s2;
    int got1 = 0, got2 = 0;
    BT_OK(braid_signal_start(loop, &s1, SIGUSR1, on_sig, &got1));
    BT_OK(braid_signal_start(loop, &s2, SIGUSR1, on_sig, &got2));
    BT_EQ(raise(SIGUSR1), 0);                /* blocked: queued for the signalfd */
    bt_run_until(loop, (volatile int *)&got1, 100);
    BT_EQ(got1, SIGUSR1);
    BT_EQ(got2, SIGUSR1);
    braid_signal_stop(&s1);
    braid_signal_stop(&s2);
    BT_ERR(braid_signal_start(loop, &s1, SIGKILL, on_sig, &got1), BRAID_EINVAL);
    bt_loop_destroy(loop);
}

/* ---- leak gate -------------------------------------------------------------------- */
static int logged_errors;
static char logged[2048];
static void count_log(void *ctx, braid_log_level l, const char *msg) {
    (void)ctx;
    if (l == BRAID_LOG_ERROR) logged_errors++;
    size_t n = strlen(logged);
    snprintf(logged + n, sizeof logged - n, "%s\n", msg);
}
BT_IO_TEST(leak_gate_names_open_watcher_and_handle) {
    braid_loop_options o = { .log = count_log, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop;
    int rc = braid_loop_new(&o, &loop);
    if (rc == BRAID_ENOSYS) bt_skip("backend not available");
    BT_OK(rc);
    int sv[2]; bt_socketpair(sv);
    braid_watch w;
    braid_handle h = { 0 };
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, NULL));
    braid_handle_open(loop, &h, "test-thing");
    braid_deferred *d = braid_deferred_new(loop);
    logged[0] = 0;
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
#ifdef BRAID_DEBUG
    BT_EQ(logged_errors, 4);                     /* and the Deferred's origin */
    BT_TRUE(strstr(logged, "deferred created at ") != NULL);
#else
    BT_EQ(logged_errors, 3);
#endif
    /* A refusal says so: the loop was not destroyed, and what is still open. */
    BT_TRUE(strstr(logged, "loop not destroyed: fd watcher still open (fd ") != NULL);
    BT_TRUE(strstr(logged, "loop not destroyed: test-thing handle still open") != NULL);
    BT_TRUE(strstr(logged, "loop not destroyed: 1 Deferred(s) still alive (1 never fired)") != NULL);
    BT_TRUE(strstr(logged, "destroyed with") == NULL);
    braid_watch_close(&w);
    braid_handle_close(loop, &h);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    braid_deferred_unref(d);
    BT_OK(braid_loop_free(loop));
    close(sv[0]); close(sv[1]);
}

/* The quiet free braid's modules use while what they closed is still
 * closing (braid_serve's loops): it refuses as braid_loop_free does, and
 * says nothing — a normal stop used to print "loop not destroyed: unix
 * handle still open" now and then. */
BT_IO_TEST(quiet_free_refuses_silently) {
    braid_loop_options o = { .log = count_log, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop;
    int rc = braid_loop_new(&o, &loop);
    if (rc == BRAID_ENOSYS) bt_skip("backend not available");
    BT_OK(rc);
    braid_handle h = { 0 };
    braid_handle_open(loop, &h, "closing-thing");
    braid_deferred *d = braid_deferred_new(loop);
    logged[0] = 0;
    logged_errors = 0;
    BT_ERR(braid__loop_free_quiet(loop), BRAID_EBUSY);
    BT_EQ(logged_errors, 0);
    braid_handle_close(loop, &h);
    BT_ERR(braid__loop_free_quiet(loop), BRAID_EBUSY);   /* the Deferred: a module's report, asked last */
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);          /* which braid_loop_free names */
    BT_GE(logged_errors, 1);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    braid_deferred_unref(d);
    logged_errors = 0;
    BT_OK(braid__loop_free_quiet(loop));
    BT_EQ(logged_errors, 0);
}

/* ---- loop affinity: debug builds name the function called from the wrong thread ---- */
#include <sys/wait.h>

typedef void (*misuse_fn)(braid_loop *loop);
typedef struct misuse { misuse_fn fn; braid_loop *loop; } misuse;
static void *misuse_thread(void *arg) {
    misuse *m = arg;
    m->fn(m->loop);
    return NULL;
}
static void noop_call(void *arg) { (void)arg; }
static void noop_timer(braid_timer *t, void *arg) { (void)t; (void)arg; }
static void noop_io(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; (void)arg; }

static void misuse_call_later(braid_loop *loop) { braid_timer_call_later(loop, BRAID_MSEC(1), noop_call, NULL); }
static void misuse_soon(braid_loop *loop) { braid_loop_soon(loop, noop_call, NULL); }
static braid_timer g_timer;   /* initialised on the loop's thread, started on another */
static void misuse_timer_start(braid_loop *loop) { (void)loop; braid_timer_start(&g_timer, 1); }
static void misuse_watch_init(braid_loop *loop) {
    braid_watch w;
    braid_watch_init(loop, &w, 0, noop_io, NULL);
}
static void misuse_deferred_new(braid_loop *loop) { braid_deferred_new(loop); }
static braid_deferred *g_deferred;   /* made on the loop's thread, fired on another */
static void misuse_deferred_callback(braid_loop *loop) {
    (void)loop;
    braid_deferred_callback(g_deferred, NULL, NULL);
}
static void misuse_hold(braid_loop *loop) { braid_loop_hold(loop); }
static void misuse_run_once(braid_loop *loop) { braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT); }

/* Runs on the loop's thread inside run_once: another thread now tries to
 * run the loop at the same time. */
static void start_second_runner(void *arg) {
    misuse m = { misuse_run_once, arg };
    pthread_t th;
    if (pthread_create(&th, NULL, misuse_thread, &m) == 0) pthread_join(th, NULL);
}

/* In a child: make a loop, let another thread do `fn` to it, report how the
 * child ended and what it wrote to stderr. */
static int run_misuse(misuse_fn fn, bool inside_run, char *out, size_t outlen) {
    int p[2];
    BT_EQ(pipe(p), 0);
    fflush(stderr);
    pid_t pid = fork();
    BT_TRUE(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        braid_loop *loop;
        if (braid_loop_new(NULL, &loop) < 0) _exit(3);   /* default logger: stderr */
        braid_timer_init(loop, &g_timer, noop_timer, NULL);
        g_deferred = braid_deferred_new(loop);
        if (inside_run) {
            braid_loop_soon(loop, start_second_runner, loop);
            braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        } else {
            misuse m = { fn, loop };
            pthread_t th;
            if (pthread_create(&th, NULL, misuse_thread, &m) != 0) _exit(4);
            pthread_join(th, NULL);
        }
        _exit(0);   /* reached only if nothing noticed */
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < outlen && (r = read(p[0], out + n, outlen - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(p[0]);
    int st = 0;
    BT_EQ(waitpid(pid, &st, 0), pid);
    return st;
}

BT_TEST(loop_affine_calls_from_another_thread_abort_naming_the_function) {
    static const struct { misuse_fn fn; const char *name; bool inside_run; } cases[] = {
        { misuse_call_later, "braid_timer_call_later", false },
        { misuse_soon, "braid_loop_soon", false },
        { misuse_timer_start, "braid_timer_start", false },
        { misuse_watch_init, "braid_watch_init", false },
        { misuse_deferred_new, "braid_deferred_new", false },
        { misuse_deferred_callback, "braid_deferred_callback", false },
        { misuse_hold, "braid_loop_hold", false },
        { NULL, "braid_loop_run_once", true },   /* a second thread running it */
    };
#ifndef BRAID_DEBUG
    (void)cases;
    (void)run_misuse;
    bt_skip("the loop-thread check is in debug builds (BRAID_DEBUG) only");
#else
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char out[4096], want[256];
        int st = run_misuse(cases[i].fn, cases[i].inside_run, out, sizeof out);
        snprintf(want, sizeof want, "%s called from a thread that does not own the loop",
                 cases[i].name);
        if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT) || !strstr(out, want))
            bt_fail(__FILE__, __LINE__, "%s from another thread: status %#x, stderr: %s",
                    cases[i].name, st, out);
    }
#endif
}

/* The thread-safe entries stay thread-safe in debug builds: posting and
 * stopping from another thread while the loop runs is not misuse. */
static void *post_and_stop(void *arg) {
    braid_loop *loop = arg;
    braid_loop_post(loop, noop_call, NULL);
    braid_loop_stop(loop);
    return NULL;
}
BT_TEST(post_and_stop_from_another_thread_are_not_misuse) {
    char out[4096];
    int p[2];
    BT_EQ(pipe(p), 0);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 2);
        braid_loop *loop;
        if (braid_loop_new(NULL, &loop) < 0) _exit(3);
        braid_loop_hold(loop);
        pthread_t th;
        if (pthread_create(&th, NULL, post_and_stop, loop) != 0) _exit(4);
        braid_loop_run(loop);
        pthread_join(th, NULL);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* the post, if stop came first */
        braid_loop_release(loop);
        _exit(braid_loop_free(loop) == 0 ? 0 : 5);
    }
    close(p[1]);
    ssize_t n = read(p[0], out, sizeof out - 1);
    out[n > 0 ? n : 0] = 0;
    close(p[0]);
    int st = 0;
    BT_EQ(waitpid(pid, &st, 0), pid);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bt_fail(__FILE__, __LINE__, "status %#x: %s", st, out);
}

/* A loop made on one thread may be run by another (the hand-over is the
 * caller's, here pthread_create and join), then destroyed by the first. */
static void *run_loop_thread(void *arg) {
    BT_OK(braid_loop_run(arg));
    return NULL;
}
static void count_call(void *arg) { ++*(int *)arg; }
BT_TEST(loop_handed_to_another_thread_by_running_it) {
    braid_loop *loop;
    BT_OK(braid_loop_new(NULL, &loop));
    int fired = 0;
    BT_TRUE(braid_timer_call_later(loop, BRAID_MSEC(1), count_call, &fired) != NULL);
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, run_loop_thread, loop), 0);
    BT_EQ(pthread_join(th, NULL), 0);
    BT_EQ(fired, 1);
    BT_OK(braid_loop_free(loop));
}

BT_TEST(backend_selection) {
    braid_loop *loop;
    braid_loop_options o = { .backend = BRAID_BACKEND_POLL };
    BT_OK(braid_loop_new(&o, &loop));
    BT_STREQ(braid_loop_backend(loop), "poll");
    BT_OK(braid_loop_free(loop));
    setenv("BRAID_BACKEND", "select", 1);
    BT_OK(braid_loop_new(NULL, &loop));
    BT_STREQ(braid_loop_backend(loop), "select");
    BT_OK(braid_loop_free(loop));
    setenv("BRAID_BACKEND", "kqueue", 1);
    BT_ERR(braid_loop_new(NULL, &loop), BRAID_EINVAL);
    unsetenv("BRAID_BACKEND");
    BT_OK(braid_loop_new(NULL, &loop));
    BT_STREQ(braid_loop_backend(loop), "epoll");
    BT_OK(braid_loop_free(loop));
}

BT_TEST(strerror_names_codes) {
    BT_STREQ(braid_strerror(0), "success");
    BT_STREQ(braid_strerror(BRAID_EALREADY_CALLED), "Deferred already called");
    BT_TRUE(strstr(braid_strerror(BRAID_ENOMEM), "memory") != NULL);
    BT_STREQ(braid_strerror(-4098), "unknown braid error");
    BT_STREQ(braid_strerror(12345), "unknown error");
}

/* ---- cancelling a ready call ---------------------------------------------------------- */
static void soon_count(void *arg) { ++*(int *)arg; }

BT_TEST(soon_cancel_takes_a_node_out_of_the_queue) {
    braid_loop *loop = bt_loop_new(NULL);
    int a = 0, b = 0, c = 0;
    braid_soon na = { .fn = soon_count, .arg = &a }, nb = { .fn = soon_count, .arg = &b },
               nc = { .fn = soon_count, .arg = &c };
    braid_loop_soon_node(loop, &na);
    braid_loop_soon_node(loop, &nb);
    braid_loop_soon_node(loop, &nc);
    BT_TRUE(braid_loop_soon_cancel(loop, &nc));    /* the tail */
    BT_TRUE(braid_loop_soon_cancel(loop, &na));    /* the head */
    BT_FALSE(braid_loop_soon_cancel(loop, &na));   /* not queued any more */
    braid_loop_soon_node(loop, &nc);               /* the tail was fixed up */
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(a, 0);
    BT_EQ(b, 1);
    BT_EQ(c, 1);
    /* a cancelled node is no ready call left behind for the leak gate */
    braid_loop_soon_node(loop, &na);
    BT_TRUE(braid_loop_soon_cancel(loop, &na));
    bt_loop_destroy(loop);
}

/* ---- closing a watched descriptor closes it now ------------------------------------------ */
static void never_called(braid_watch *w, unsigned ev, void *arg) {
    (void)w; (void)ev; (void)arg;
    bt_fail(__FILE__, __LINE__, "a closed watcher was called");
}

/* braid_watch_close, then close(fd): the socket is gone at once, on every
 * backend — no loop iteration needed. (io_uring's armed poll holds the
 * file: until its removal reached the kernel, a "closed" listener still
 * completed handshakes and a "closed" UDP port still took datagrams.) */
BT_IO_TEST(closed_watched_listener_refuses_at_once) {
    braid_loop *loop = bt_loop_new(NULL);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    BT_EQ(bind(lfd, (struct sockaddr *)&a, sizeof a), 0);
    BT_EQ(listen(lfd, 16), 0);
    BT_EQ(getsockname(lfd, (struct sockaddr *)&a, &len), 0);
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, lfd, never_called, NULL));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_GE(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT), 0);   /* armed in the kernel */
    braid_watch_close(&w);
    close(lfd);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = connect(c, (struct sockaddr *)&a, sizeof a);
    int err = errno;
    close(c);
    BT_EQ(rc, -1);
    BT_EQ(err, ECONNREFUSED);
    bt_loop_destroy(loop);
}

/* The same while a connection is waking the listener: another thread's
 * connect queues the wakeup of io_uring's poll as task work for the loop's
 * thread, which runs it only at its next system call. A poll removal sent
 * in that window was refused (-EALREADY) and the multishot poll stayed
 * armed, holding the file: the "closed" listener went on completing
 * handshakes until the loop ended (a server's graceful stop waited its
 * whole drain time for clients stuck in connect). The loop's thread makes
 * no system call between the wakeup and the close. */
typedef struct waker {
    struct sockaddr_in a;
    atomic_int connected;
    int fd;
} waker;
static void *connect_thread(void *arg) {
    waker *k = arg;
    k->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int rc = connect(k->fd, (struct sockaddr *)&k->a, sizeof k->a);
    atomic_store(&k->connected, rc == 0 ? 1 : -1);
    return NULL;
}
BT_IO_TEST(closed_listener_refuses_while_a_connection_wakes_it) {
    braid_loop *loop = bt_loop_new(NULL);
    for (int round = 0; round < 20; round++) {
        int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        waker k = { .a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) }, .fd = -1 };
        socklen_t len = sizeof k.a;
        BT_EQ(bind(lfd, (struct sockaddr *)&k.a, sizeof k.a), 0);
        BT_EQ(listen(lfd, 16), 0);
        BT_EQ(getsockname(lfd, (struct sockaddr *)&k.a, &len), 0);
        braid_watch w;
        BT_OK(braid_watch_init(loop, &w, lfd, never_called, NULL));
        BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
        BT_GE(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT), 0);   /* armed in the kernel */
        pthread_t t;
        BT_EQ(pthread_create(&t, NULL, connect_thread, &k), 0);
        while (!atomic_load(&k.connected)) {}   /* spin: no system call here */
        braid_watch_close(&w);
        close(lfd);
        BT_EQ(pthread_join(t, NULL), 0);
        BT_EQ(atomic_load(&k.connected), 1);
        close(k.fd);
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        int rc = connect(c, (struct sockaddr *)&k.a, sizeof k.a);
        int err = errno;
        close(c);
        BT_EQ(rc, -1);
        BT_EQ(err, ECONNREFUSED);
    }
    bt_loop_destroy(loop);
}
