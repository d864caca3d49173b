/* pool: the deferToThread experiment of "Why deferToThread is so slow?"
 * (Twisted-Python list, 2016), exactly. A trivial function
 * f(x) = x + 1 is run in a thread pool and its result awaited on the loop
 * thread, 10,000 times in a row per caller, with 1, 8 and 16 callers
 * running concurrently on the loop thread (each awaits its result before
 * issuing the next call). Reported: µs per call as a caller sees it
 * (elapsed / calls per caller) and calls per second (all callers).
 *
 * Implementations, alternating run by run, each measurement in a fresh
 * child process (`braid-bench serve pool ...`), so a pool's threads, and
 * libuv's process-global pool sized by UV_THREADPOOL_SIZE before it starts,
 * belong to that measurement only:
 *   sync        the plain synchronous call (not inlined), per call
 *   braid-1t/4t braid_defer_to_pool on a pool of 1 / 4 threads
 *   libuv-1t/4t uv_queue_work, UV_THREADPOOL_SIZE=1 / 4
 *   naive-1t/4t a minimal pthread + condvar + eventfd pool (the practical
 *               limit of the naive design: one mutex, one condvar, results
 *               on a list, one eventfd write per batch, epoll on the loop)
 *   twisted-1t/4t  Twisted's deferToThreadPool with its own ThreadPool
 *               (bench/peers/twisted_pool.py under /usr/bin/python3)
 * Also: CPU time of an idle started pool (4 threads, after 1,000 round
 * trips) over 5 s (quick: 1 s), braid beside libuv, from getrusage. */
#include "bench.h"

#include <braid.h>
#include <braid/pool.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>
#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif

enum { I_SYNC, I_BRAID1, I_BRAID4, I_UV1, I_UV4, I_NAIVE1, I_NAIVE4, I_TW1, I_TW4, NIMPL };
static const char *const impl_names[NIMPL] = { "sync", "braid-1t", "braid-4t", "libuv-1t", "libuv-4t",
                                               "naive-1t", "naive-4t", "twisted-1t", "twisted-4t" };
static const int impl_threads[NIMPL] = { 0, 1, 4, 1, 4, 1, 4, 1, 4 };
static const int loads[] = { 1, 8, 16 };
#define NLOADS 3
#define MAX_LOAD 16

__attribute__((noinline)) static intptr_t f(intptr_t x) {
    __asm__ volatile("" ::: "memory");
    return x + 1;
}
static intptr_t (*volatile f_ptr)(intptr_t) = f;

static void check(intptr_t got, intptr_t want) {
    if (got != want) {
        fprintf(stderr, "pool bench: wrong result %ld, want %ld\n", (long)got, (long)want);
        exit(3);
    }
}

/* ---- sync ------------------------------------------------------------------------------------ */
static double run_sync(int load, long calls) {
    long n = (long)load * calls;
    intptr_t x = 0;
    intptr_t (*fn)(intptr_t) = f_ptr;
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) x = fn(x);
    uint64_t dt = bench_now_ns() - t0;
    check(x, n);
    return (double)dt;
}

/* ---- braid ------------------------------------------------------------------------------------ */
typedef struct bcaller {
    braid_loop *loop;
    braid_pool *pool;
    long left;
    intptr_t x;
} bcaller;

static braid_result braid_f(void *arg) { return braid_ok((void *)f_ptr((intptr_t)arg)); }

static void braid_issue(bcaller *c);
static braid_result braid_got(braid_result r, void *p) {
    bcaller *c = p;
    check((intptr_t)r.value, c->x + 1);
    c->x = (intptr_t)r.value;
    if (--c->left > 0) braid_issue(c);
    return braid_ok(NULL);
}
static void braid_issue(bcaller *c) {
    braid_deferred *d = braid_defer_to_pool(c->loop, c->pool, braid_f, (void *)c->x);
    if (!d || braid_deferred_add_callback(d, braid_got, c) < 0 || braid_deferred_is_failure(d)) {
        fprintf(stderr, "pool bench: braid_defer_to_pool failed\n");
        exit(3);
    }
    braid_deferred_release(d);
}

static double braid_round(braid_loop *loop, braid_pool *pool, int load, long calls) {
    bcaller c[MAX_LOAD];
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < load; i++) {
        c[i] = (bcaller){ loop, pool, calls, 0 };
        braid_issue(&c[i]);
    }
    if (braid_loop_run(loop) < 0) exit(3);
    uint64_t dt = bench_now_ns() - t0;
    for (int i = 0; i < load; i++) check(c[i].x, calls);
    return (double)dt;
}

static int braid_setup(braid_loop **loop, braid_pool **pool, int threads) {
    if (braid_loop_new(loop, NULL) < 0) return -1;
    braid_pool_options o = { .min_threads = (unsigned)threads, .max_threads = (unsigned)threads,
                             .name = "bench", .loop = *loop };
    /* For exploring the spin settings by hand (the experiment uses defaults). */
    const char *e;
    if ((e = getenv("BENCH_POOL_SPIN_NS"))) o.spin_ns = strtoull(e, NULL, 10);
    if ((e = getenv("BENCH_POOL_LOOP_SPIN_NS"))) o.loop_spin_ns = strtoull(e, NULL, 10);
    if (getenv("BENCH_POOL_NO_SPIN")) o.flags |= BRAID_POOL_NO_SPIN;
    return braid_pool_new(pool, &o);
}

static double run_braid(int threads, int load, long calls, long warm) {
    braid_loop *loop;
    braid_pool *pool;
    if (braid_setup(&loop, &pool, threads) < 0) return NAN;
    braid_round(loop, pool, load, warm);
    double ns = braid_round(loop, pool, load, calls);
    braid_pool_destroy(pool, BRAID_POOL_FINISH);
    if (braid_loop_destroy(loop) < 0) return NAN;
    return ns;
}

/* ---- libuv ------------------------------------------------------------------------------------ */
#ifdef BENCH_HAVE_LIBUV
typedef struct ucaller {
    uv_work_t req;
    uv_loop_t *loop;
    long left;
    intptr_t x, result;
} ucaller;
static void uv_f(uv_work_t *req) {
    ucaller *c = req->data;
    c->result = f_ptr(c->x);
}
static void uv_got(uv_work_t *req, int status) {
    ucaller *c = req->data;
    if (status) exit(3);
    check(c->result, c->x + 1);
    c->x = c->result;
    if (--c->left > 0 && uv_queue_work(c->loop, &c->req, uv_f, uv_got) != 0) exit(3);
}
static double uv_round(uv_loop_t *loop, int load, long calls) {
    ucaller c[MAX_LOAD];
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < load; i++) {
        memset(&c[i], 0, sizeof c[i]);
        c[i].loop = loop;
        c[i].left = calls;
        c[i].req.data = &c[i];
        if (uv_queue_work(loop, &c[i].req, uv_f, uv_got) != 0) exit(3);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    uint64_t dt = bench_now_ns() - t0;
    for (int i = 0; i < load; i++) check(c[i].x, calls);
    return (double)dt;
}
static double run_uv(int threads, int load, long calls, long warm) {
    char n[16];
    snprintf(n, sizeof n, "%d", threads);
    setenv("UV_THREADPOOL_SIZE", n, 1);   /* before libuv's pool starts (first uv_queue_work) */
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_round(&loop, load, warm);
    double ns = uv_round(&loop, load, calls);
    uv_loop_close(&loop);
    return ns;
}
#endif

/* ---- the naive pool ------------------------------------------------------------------------------ */
typedef struct njob {
    struct njob *next;
    intptr_t x, result;
    long left;
} njob;
typedef struct npool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    njob *head, *tail;       /* submitted */
    njob *done;              /* finished, newest first */
    int efd, ep;
    bool stop;
    pthread_t t[8];
    int nt;
} npool;

static void *naive_worker(void *p) {
    npool *np = p;
    pthread_mutex_lock(&np->mu);
    for (;;) {
        while (!np->head && !np->stop) pthread_cond_wait(&np->cv, &np->mu);
        if (!np->head) break;
        njob *j = np->head;
        np->head = j->next;
        if (!np->head) np->tail = NULL;
        pthread_mutex_unlock(&np->mu);
        j->result = f_ptr(j->x);
        pthread_mutex_lock(&np->mu);
        bool first = np->done == NULL;
        j->next = np->done;
        np->done = j;
        if (first) {
            uint64_t one = 1;
            if (write(np->efd, &one, sizeof one) < 0) abort();
        }
    }
    pthread_mutex_unlock(&np->mu);
    return NULL;
}
static void naive_submit(npool *np, njob *j) {
    pthread_mutex_lock(&np->mu);
    j->next = NULL;
    if (np->tail) np->tail->next = j;
    else np->head = j;
    np->tail = j;
    pthread_cond_signal(&np->cv);
    pthread_mutex_unlock(&np->mu);
}
static double naive_round(npool *np, int load, long calls) {
    njob c[MAX_LOAD];
    int active = load;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < load; i++) {
        c[i] = (njob){ .x = 0, .left = calls };
        naive_submit(np, &c[i]);
    }
    while (active) {
        struct epoll_event ev;
        if (epoll_wait(np->ep, &ev, 1, -1) < 0) continue;
        uint64_t v;
        if (read(np->efd, &v, sizeof v) < 0) continue;
        pthread_mutex_lock(&np->mu);
        njob *list = np->done;
        np->done = NULL;
        pthread_mutex_unlock(&np->mu);
        while (list) {
            njob *j = list;
            list = j->next;
            check(j->result, j->x + 1);
            j->x = j->result;
            if (--j->left > 0) naive_submit(np, j);
            else active--;
        }
    }
    uint64_t dt = bench_now_ns() - t0;
    for (int i = 0; i < load; i++) check(c[i].x, calls);
    return (double)dt;
}
static double run_naive(int threads, int load, long calls, long warm) {
    npool np;
    memset(&np, 0, sizeof np);
    pthread_mutex_init(&np.mu, NULL);
    pthread_cond_init(&np.cv, NULL);
    np.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    np.ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    if (np.efd < 0 || np.ep < 0 || epoll_ctl(np.ep, EPOLL_CTL_ADD, np.efd, &ev) < 0) return NAN;
    for (np.nt = 0; np.nt < threads; np.nt++)
        if (pthread_create(&np.t[np.nt], NULL, naive_worker, &np)) return NAN;
    naive_round(&np, load, warm);
    double ns = naive_round(&np, load, calls);
    pthread_mutex_lock(&np.mu);
    np.stop = true;
    pthread_cond_broadcast(&np.cv);
    pthread_mutex_unlock(&np.mu);
    for (int i = 0; i < np.nt; i++) pthread_join(np.t[i], NULL);
    close(np.efd);
    close(np.ep);
    return ns;
}

/* ---- idle CPU ------------------------------------------------------------------------------------ */
static double cpu_self_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}
static void sleep_s(double s) {
    struct timespec ts = { (time_t)s, (long)((s - (double)(time_t)s) * 1e9) };
    while (nanosleep(&ts, &ts) < 0) {}
}
/* CPU (µs) the whole process used while the pool sat idle for `secs`. */
static double idle_cpu(const char *impl, double secs) {
    if (!strcmp(impl, "braid")) {
        braid_loop *loop;
        braid_pool *pool;
        if (braid_setup(&loop, &pool, 4) < 0) return NAN;
        braid_round(loop, pool, 4, 1000);
        double c0 = cpu_self_us();
        sleep_s(secs);
        double used = cpu_self_us() - c0;
        braid_pool_destroy(pool, BRAID_POOL_FINISH);
        braid_loop_destroy(loop);
        return used;
    }
#ifdef BENCH_HAVE_LIBUV
    if (!strcmp(impl, "libuv")) {
        setenv("UV_THREADPOOL_SIZE", "4", 1);
        uv_loop_t loop;
        uv_loop_init(&loop);
        uv_round(&loop, 4, 1000);
        double c0 = cpu_self_us();
        sleep_s(secs);
        double used = cpu_self_us() - c0;
        uv_loop_close(&loop);
        return used;
    }
#endif
    return NAN;
}

/* ---- child side -------------------------------------------------------------------------------- */
/* braid-bench serve pool --impl NAME --load L --calls N --warm W
 *   prints elapsed ns for the measured round;
 * braid-bench serve pool --idle braid|libuv --seconds S
 *   prints CPU µs used while idle. */
static int serve(int argc, char **argv) {
    const char *impl = "braid-1t", *idle = NULL;
    int load = 1;
    long calls = 10000, warm = 1000;
    double secs = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--impl")) impl = argv[i + 1];
        else if (!strcmp(argv[i], "--load")) load = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calls")) calls = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--warm")) warm = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--idle")) idle = argv[i + 1];
        else if (!strcmp(argv[i], "--seconds")) secs = atof(argv[i + 1]);
    }
    if (load < 1 || load > MAX_LOAD || calls < 1) return 2;
    double v = NAN;
    if (idle) {
        v = idle_cpu(idle, secs);
    } else {
        int k = 0;
        while (k < NIMPL && strcmp(impl, impl_names[k])) k++;
        switch (k) {
        case I_SYNC: run_sync(load, warm); v = run_sync(load, calls); break;
        case I_BRAID1: case I_BRAID4: v = run_braid(impl_threads[k], load, calls, warm); break;
#ifdef BENCH_HAVE_LIBUV
        case I_UV1: case I_UV4: v = run_uv(impl_threads[k], load, calls, warm); break;
#endif
        case I_NAIVE1: case I_NAIVE4: v = run_naive(impl_threads[k], load, calls, warm); break;
        default: fprintf(stderr, "pool: unknown or unavailable --impl %s\n", impl); return 2;
        }
    }
    if (!isfinite(v)) return 1;
    printf("%.0f\n", v);
    return 0;
}

/* ---- parent side ----------------------------------------------------------------------------------- */
static double popen_number(const char *cmd) {
    double v = NAN;
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    if (fscanf(p, "%lf", &v) != 1) v = NAN;
    if (pclose(p) != 0) v = NAN;
    return v;
}

typedef struct pool_state {
    long calls, tw_calls, warm;
    double us[NIMPL][NLOADS][BENCH_MAX_RUNS];
    double cps[NIMPL][NLOADS][BENCH_MAX_RUNS];
    double idle[2][BENCH_MAX_RUNS];
    bool have[NIMPL];
} pool_state;

static void measure(bench_ctx *ctx, pool_state *s, int impl, int li, int run) {
    int load = loads[li];
    bool tw = impl == I_TW1 || impl == I_TW4;
    long calls = tw ? s->tw_calls : s->calls;
    char cmd[4400];
    if (tw)
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/peers/twisted_pool.py' --threads %d --load %d --calls %ld --warm %ld",
                 ctx->data_dir, impl_threads[impl], load, calls, s->warm / 10);
    else
        snprintf(cmd, sizeof cmd, "'%s' serve pool --impl %s --load %d --calls %ld --warm %ld", ctx->self_exe,
                 impl_names[impl], load, calls, s->warm);
    double ns = popen_number(cmd);
    if (!isfinite(ns)) bench_note(ctx, "pool: a %s run at load %d failed", impl_names[impl], load);
    if (impl == I_SYNC) {
        /* one call at a time whatever the load: the cost of one call */
        s->us[impl][li][run] = ns / 1e3 / (double)(calls * load);
    } else {
        s->us[impl][li][run] = ns / 1e3 / (double)calls;   /* what each caller waits per call */
    }
    s->cps[impl][li][run] = (double)calls * load / (ns / 1e9);
}

static int run(bench_ctx *ctx) {
    pool_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->calls = ctx->smoke ? 200 : ctx->full || !ctx->quick ? 10000 : 4000;   /* as in the 2016 thread: 10,000 per caller */
    s->tw_calls = ctx->full ? 10000 : ctx->smoke ? 50 : 300;   /* Twisted: ~50-500 µs a call */
    s->warm = ctx->smoke ? 50 : 1000;
    double idle_secs = ctx->smoke ? 0.2 : ctx->full || !ctx->quick ? 5 : 1;
    for (int i = 0; i < NIMPL; i++) s->have[i] = true;
#ifndef BENCH_HAVE_LIBUV
    s->have[I_UV1] = s->have[I_UV4] = false;
    bench_note(ctx, "pool: libuv not found at build time; its rows are skipped");
#endif
    if (!bench_have_python_module("twisted")) {
        s->have[I_TW1] = s->have[I_TW4] = false;
        bench_note(ctx, "pool: python3-twisted not importable; its rows are skipped");
    }
    int runs = ctx->runs > BENCH_MAX_RUNS ? BENCH_MAX_RUNS : ctx->runs;
    for (int r = 0; r < runs; r++) {
        for (int li = 0; li < NLOADS; li++)
            for (int k = 0; k < NIMPL; k++) {
                int impl = (k + r) % NIMPL;   /* rotate who goes first */
                if (!s->have[impl]) continue;
                bench_progress(ctx, "load %d %s run %d/%d", loads[li], impl_names[impl], r + 1, runs);
                measure(ctx, s, impl, li, r);
            }
        for (int k = 0; k < 2; k++) {
            int which = (k + r) % 2;
            const char *name = which ? "libuv" : "braid";
            if (which && !s->have[I_UV4]) { s->idle[which][r] = NAN; continue; }
            bench_progress(ctx, "idle %s run %d/%d", name, r + 1, runs);
            char cmd[4200];
            snprintf(cmd, sizeof cmd, "'%s' serve pool --idle %s --seconds %g", ctx->self_exe, name, idle_secs);
            double us = popen_number(cmd);
            s->idle[which][r] = us / (idle_secs * 1e6) * 100.0;   /* % of one core */
        }
    }
    for (int li = 0; li < NLOADS; li++)
        for (int i = 0; i < NIMPL; i++) {
            if (!s->have[i]) continue;
            bench_row *row = bench_row_begin(ctx, impl_names[i], "epoll");
            bench_row_param_int(row, "load", loads[li]);
            bench_row_param_int(row, "threads", impl_threads[i]);
            bench_row_param_int(row, "calls_per_caller", (i == I_TW1 || i == I_TW4) ? s->tw_calls : s->calls);
            bench_row_metric(row, "us_per_call", s->us[i][li], runs, "us");
            bench_row_metric(row, "calls_per_s", s->cps[i][li], runs, "calls/s");
            bench_row_end(row);
        }
    for (int k = 0; k < 2; k++) {
        if (k && !s->have[I_UV4]) continue;
        bench_row *row = bench_row_begin(ctx, k ? "libuv-4t-idle" : "braid-4t-idle", "epoll");
        bench_row_param_int(row, "threads", 4);
        bench_row_param_int(row, "idle_ms", (long long)(idle_secs * 1000));
        bench_row_metric(row, "cpu_pct_of_core", s->idle[k], runs, "%");
        bench_row_end(row);
    }
    /* The headline ratios, on stderr and in the report's notes. */
    double b1 = bench_median(s->us[I_BRAID4][0], runs), u1 = bench_median(s->us[I_UV4][0], runs);
    double b16 = bench_median(s->cps[I_BRAID4][2], runs), u16 = bench_median(s->cps[I_UV4][2], runs);
    if (s->have[I_UV4])
        bench_note(ctx, "pool: load 1 round trip braid-4t %.2f us vs libuv-4t %.2f us (%.3fx); load 16 braid-4t %.0f "
                   "calls/s vs libuv-4t %.0f (%.2fx); idle braid pool %.3f%% of a core",
                   b1, u1, b1 / u1, b16, u16, b16 / u16, bench_median(s->idle[0], runs));
    free(s);
    return 0;
}

static double med_of(bench_ctx *ctx, const char *impl, int load, const char *metric) {
    char f[32];
    snprintf(f, sizeof f, "load=%d", load);
    const bench_row *r = bench_find_row(ctx, impl, NULL, f, (char *)NULL);
    double v = NAN;
    if (r) bench_row_metric_get(r, metric, &v, NULL, NULL);
    return v;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    double b1 = med_of(ctx, "braid-4t", 1, "us_per_call"), u1 = med_of(ctx, "libuv-4t", 1, "us_per_call");
    double b1s = med_of(ctx, "braid-1t", 1, "us_per_call"), u1s = med_of(ctx, "libuv-1t", 1, "us_per_call");
    double n1 = med_of(ctx, "naive-1t", 1, "us_per_call"), t1 = med_of(ctx, "twisted-4t", 1, "us_per_call");
    double s1 = med_of(ctx, "sync", 1, "us_per_call");
    double b16 = med_of(ctx, "braid-4t", 16, "calls_per_s"), u16 = med_of(ctx, "libuv-4t", 16, "calls_per_s");
    double b16s = med_of(ctx, "braid-1t", 16, "calls_per_s"), u16s = med_of(ctx, "libuv-1t", 16, "calls_per_s");
    double t16 = med_of(ctx, "twisted-4t", 16, "calls_per_s");
    if (!isfinite(b1)) return;
    fprintf(html, "<p>A round trip to a braid pool and back to the loop took %.1f µs at load 1 with 4 threads "
                  "(%.1f µs with 1), against a plain call's %.3f µs.", b1, b1s, s1);
    if (isfinite(u1))
        fprintf(html, " libuv's uv_queue_work took %.1f µs (1 thread: %.1f): braid's round trip is %.2f× libuv's "
                      "(1 thread: %.2f×).", u1, u1s, b1 / u1, b1s / u1s);
    if (isfinite(n1)) fprintf(html, " The naive pthread+condvar+eventfd pool took %.1f µs.", n1);
    if (isfinite(t1)) fprintf(html, " Twisted's deferToThreadPool took %.0f µs (\"Why deferToThread is so slow?\", 2016, reported 120 µs).", t1);
    if (isfinite(u16))
        fprintf(html, " At load 16 braid ran %.0f calls/s with 4 threads (1: %.0f) against libuv's %.0f (1: %.0f), "
                      "%.1f× (%.1f×).", b16, b16s, u16, u16s, b16 / u16, b16s / u16s);
    if (isfinite(t16)) fprintf(html, " Twisted managed %.0f calls/s.", t16);
    fputs(" braid wins by not sleeping when sleeping costs more than waiting: workers and the loop poll "
          "briefly (adaptive, yielding) before sleeping, wake-ups are chained and skipped when the awake "
          "workers will clear the queue first, and completions come back in batches through the loop's "
          "posted-call stack without allocating. On a machine shared with other work the ~30 µs wake-up of "
          "an idle core shrinks (cores are not halted), which flatters the sleeping designs; the ratios "
          "above come from runs alternating in the same invocation.</p>\n", html);
}

BENCH_EXPERIMENT(pool,
    .title = "Thread-pool round trip (\"Why deferToThread is so slow?\", 2016)",
    .question = "\"Why deferToThread is so slow?\" (Twisted-Python list, 2016): Twisted's deferToThread took 120 µs to run a trivial function in a thread and get "
                "its result back, and much more under load. How fast can a pool round trip be: braid's pools "
                "against libuv's uv_queue_work, a minimal pthread+condvar+eventfd pool and Twisted's own "
                "deferToThreadPool, at 1, 8 and 16 concurrent callers?",
    .method = "f(x) = x+1 run in the pool, result awaited on the loop thread; each caller issues its next call "
              "when the previous result arrives; 10,000 calls per caller (quick mode: 4,000; Twisted: 300), "
              "after 1,000 untimed warm-up calls; 1, 8, 16 callers on the loop thread. us_per_call = elapsed / "
              "calls per caller (the latency a caller sees; for sync, the cost of one call); calls_per_s = all "
              "calls / elapsed. Every measurement is a fresh child process (libuv's UV_THREADPOOL_SIZE is set "
              "before its pool starts); implementations alternate run by run; not pinned. braid: default "
              "pool options (workers and the loop spin up to 50 µs before sleeping, adaptive). Idle: CPU time "
              "(getrusage, whole process) of a started 4-thread pool over 5 s (quick: 1 s) after 1,000 calls.",
    .run = run, .serve = serve, .conclude = conclude, .ratio_base = "braid-4t", .quick_seconds = 40, .quick_runs = 3,
    .full_seconds = 400, .order = 40, .plot_x = "load", .plot_metric = "us_per_call", .plot_logy = true);
