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
 *   braid-1t/4t braid_pool_defer on a pool of 1 / 4 threads
 *   libuv-1t/4t uv_queue_work, UV_THREADPOOL_SIZE=1 / 4
 *   naive-1t/4t a minimal pthread + condvar + eventfd pool (the practical
 *               limit of the naive design: one mutex, one condvar, results
 *               on a list, one eventfd write per batch, epoll on the loop)
 *   twisted-1t/4t  Twisted's deferToThreadPool with its own ThreadPool
 *               (bench/peers/twisted_pool.py under /usr/bin/python3)
 * Also: CPU time of an idle started pool (4 threads, after 1,000 round
 * trips) over 5 s (quick: 1 s), braid beside libuv, from getrusage.
 *
 * Blocking work (the heavy case beside the micro-case): bursts of 1, 4 and
 * 16 jobs submitted at once from the loop thread — jobs that sleep 1 ms or
 * 50 ms, or spin until they have used 1 ms or 50 ms of CPU time (quick
 * mode: 1 ms and 10 ms) — against pools
 * of 4 and 16 threads (braid with min_threads 0, libuv with
 * UV_THREADPOOL_SIZE set to the same count, the naive pool), each (impl,
 * threads, job) in a fresh child that first runs one untimed burst of
 * `threads` 1 ms sleeps (so every pool has started its threads). Reported:
 * the time from the first submission to the last result on the loop
 * (burst_ms), and that over the ideal (x_ideal): ceil(N/threads) jobs in a
 * row for sleeps; for CPU work also the cores' share, N x job / min(threads,
 * cores). */
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

static braid_result braid_f(void *arg) { return braid_result_ok((void *)f_ptr((intptr_t)arg)); }

static void braid_issue(bcaller *c);
static braid_result braid_got(braid_result r, void *p) {
    bcaller *c = p;
    check((intptr_t)r.value, c->x + 1);
    c->x = (intptr_t)r.value;
    if (--c->left > 0) braid_issue(c);
    return braid_result_ok(NULL);
}
static void braid_issue(bcaller *c) {
    braid_deferred *d = braid_pool_defer(c->loop, c->pool, braid_f, (void *)c->x);
    if (!d || braid_deferred_add_callback(d, braid_got, c) < 0 || braid_deferred_is_failure(d)) {
        fprintf(stderr, "pool bench: braid_pool_defer failed\n");
        exit(3);
    }
    braid_deferred_unref(d);
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
    if (braid_loop_new(NULL, loop) < 0) return -1;
    braid_pool_options o = { .min_threads = (unsigned)threads, .max_threads = (unsigned)threads,
                             .name = "bench", .loop = *loop };
    /* For exploring the spin settings by hand (the experiment uses defaults). */
    const char *e;
    if ((e = getenv("BENCH_POOL_SPIN_NS"))) o.spin_ns = strtoull(e, NULL, 10);
    if ((e = getenv("BENCH_POOL_LOOP_SPIN_NS"))) o.loop_spin_ns = strtoull(e, NULL, 10);
    if (getenv("BENCH_POOL_NO_SPIN")) o.flags |= BRAID_POOL_NO_SPIN;
    return braid_pool_new(&o, pool);
}

static double run_braid(int threads, int load, long calls, long warm) {
    braid_loop *loop;
    braid_pool *pool;
    if (braid_setup(&loop, &pool, threads) < 0) return NAN;
    braid_round(loop, pool, load, warm);
    double ns = braid_round(loop, pool, load, calls);
    braid_pool_free(pool);
    if (braid_loop_free(loop) < 0) return NAN;
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
    void (*work)(void);      /* blocking row: the job instead of f */
} njob;
typedef struct npool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    njob *head, *tail;       /* submitted */
    njob *done;              /* finished, newest first */
    int efd, ep;
    bool stop;
    pthread_t t[16];
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
        if (j->work) j->work();
        else j->result = f_ptr(j->x);
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
static int naive_start(npool *np, int threads) {
    memset(np, 0, sizeof *np);
    pthread_mutex_init(&np->mu, NULL);
    pthread_cond_init(&np->cv, NULL);
    np->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    np->ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN };
    if (np->efd < 0 || np->ep < 0 || epoll_ctl(np->ep, EPOLL_CTL_ADD, np->efd, &ev) < 0) return -1;
    if (threads > (int)(sizeof np->t / sizeof np->t[0])) return -1;
    for (np->nt = 0; np->nt < threads; np->nt++)
        if (pthread_create(&np->t[np->nt], NULL, naive_worker, np)) return -1;
    return 0;
}
static void naive_stop(npool *np) {
    pthread_mutex_lock(&np->mu);
    np->stop = true;
    pthread_cond_broadcast(&np->cv);
    pthread_mutex_unlock(&np->mu);
    for (int i = 0; i < np->nt; i++) pthread_join(np->t[i], NULL);
    close(np->efd);
    close(np->ep);
}
static double run_naive(int threads, int load, long calls, long warm) {
    npool np;
    if (naive_start(&np, threads) < 0) return NAN;
    naive_round(&np, load, warm);
    double ns = naive_round(&np, load, calls);
    naive_stop(&np);
    return ns;
}

/* ---- blocking work: bursts of long jobs -------------------------------------------------------- */
enum { B_BRAID, B_UV, B_NAIVE, NBIMPL };
static const char *const bimpl_names[NBIMPL] = { "braid", "libuv", "naive" };
static const int bursts[] = { 1, 4, 16 };
#define NBURSTS 3
static const int bthreads[] = { 4, 16 };
#define NBTHREADS 2
typedef struct bjob_kind { const char *name; bool cpu; int ms; } bjob_kind;
static const bjob_kind bjobs[] = { { "sleep-1ms", false, 1 }, { "sleep-50ms", false, 50 },
                                   { "cpu-1ms", true, 1 },      { "cpu-10ms", true, 10 },
                                   { "cpu-50ms", true, 50 } };
#define NBJOBS 5
#define MAX_MODE_JOBS 4
/* The kinds measured: --full the 50 ms CPU jobs; quick mode 10 ms ones
 * (16 x 50 ms of CPU on 2 cores is 0.4 s a burst: too long for its budget);
 * smoke only the 1 ms ones. */
static const int jobs_full[] = { 0, 1, 2, 4 }, jobs_quick[] = { 0, 1, 2, 3 }, jobs_smoke[] = { 0, 2 };

/* The job, set once per child before any pool starts. */
static bool bjob_cpu;
static uint64_t bjob_ns;
/* CPU work (bench_cpu_spin) or sleep, bjob_ns long. */
static void bjob_run(void) {
    if (bjob_cpu) {
        bench_cpu_spin(bjob_ns);
    } else {
        struct timespec ts = { (time_t)(bjob_ns / 1000000000ull), (long)(bjob_ns % 1000000000ull) };
        while (nanosleep(&ts, &ts) < 0) {}
    }
}
static void bjob_sleep_1ms(void) {
    struct timespec ts = { 0, 1000000 };
    while (nanosleep(&ts, &ts) < 0) {}
}

/* braid: n jobs at once, the loop runs until every result is in. */
static braid_result braid_bjob(void *arg) {
    ((void (*)(void))arg)();
    return braid_result_ok(NULL);
}
static double braid_burst(braid_loop *loop, braid_pool *pool, int n, void (*job)(void)) {
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < n; i++) {
        braid_deferred *d = braid_pool_defer(loop, pool, braid_bjob, (void *)job);
        if (!d || braid_deferred_is_failure(d)) {
            fprintf(stderr, "pool bench: braid_pool_defer failed\n");
            exit(3);
        }
        braid_deferred_unref(d);
    }
    if (braid_loop_run(loop) < 0) exit(3);
    return (double)(bench_now_ns() - t0);
}

#ifdef BENCH_HAVE_LIBUV
static void uv_bjob(uv_work_t *req) { ((void (*)(void))req->data)(); }
static void uv_bdone(uv_work_t *req, int status) {
    (void)req;
    if (status) exit(3);
}
static double uv_burst(uv_loop_t *loop, int n, void (*job)(void)) {
    uv_work_t req[16];
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < n; i++) {
        req[i].data = (void *)job;
        if (uv_queue_work(loop, &req[i], uv_bjob, uv_bdone) != 0) exit(3);
    }
    uv_run(loop, UV_RUN_DEFAULT);
    return (double)(bench_now_ns() - t0);
}
#endif

static double naive_burst(npool *np, int n, void (*job)(void)) {
    njob j[16];
    int active = n;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < n; i++) {
        j[i] = (njob){ .work = job };
        naive_submit(np, &j[i]);
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
        for (; list; list = list->next) active--;
    }
    return (double)(bench_now_ns() - t0);
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Child: one untimed burst of `threads` 1 ms sleeps, then for each burst
 * size `reps` timed bursts; prints the median ns of each size. */
static int serve_blocking(const char *impl, int threads, const char *job, int reps) {
    int k = 0;
    while (k < NBJOBS && strcmp(job, bjobs[k].name)) k++;
    if (k == NBJOBS || threads < 1 || threads > 16 || reps < 1 || reps > 64) return 2;
    bjob_cpu = bjobs[k].cpu;
    bjob_ns = (uint64_t)bjobs[k].ms * 1000000ull;
    if (bjob_cpu) bench_cpu_calibrate();
    double med[NBURSTS], v[64];
    if (!strcmp(impl, "braid")) {
        braid_loop *loop;
        braid_pool *pool;
        if (braid_loop_new(NULL, &loop) < 0) return 1;
        braid_pool_options o = { .max_threads = (unsigned)threads, .name = "bench", .loop = loop };
        if (braid_pool_new(&o, &pool) < 0) return 1;
        braid_burst(loop, pool, threads, bjob_sleep_1ms);
        for (int b = 0; b < NBURSTS; b++) {
            for (int r = 0; r < reps; r++) v[r] = braid_burst(loop, pool, bursts[b], bjob_run);
            qsort(v, (size_t)reps, sizeof v[0], cmp_double);
            med[b] = v[reps / 2];
        }
        braid_pool_free(pool);
        if (braid_loop_free(loop) < 0) return 1;
#ifdef BENCH_HAVE_LIBUV
    } else if (!strcmp(impl, "libuv")) {
        char n[16];
        snprintf(n, sizeof n, "%d", threads);
        setenv("UV_THREADPOOL_SIZE", n, 1);   /* before libuv's pool starts (first uv_queue_work) */
        uv_loop_t loop;
        uv_loop_init(&loop);
        uv_burst(&loop, threads, bjob_sleep_1ms);
        for (int b = 0; b < NBURSTS; b++) {
            for (int r = 0; r < reps; r++) v[r] = uv_burst(&loop, bursts[b], bjob_run);
            qsort(v, (size_t)reps, sizeof v[0], cmp_double);
            med[b] = v[reps / 2];
        }
        uv_loop_close(&loop);
#endif
    } else if (!strcmp(impl, "naive")) {
        npool np;
        if (naive_start(&np, threads) < 0) return 1;
        naive_burst(&np, threads, bjob_sleep_1ms);
        for (int b = 0; b < NBURSTS; b++) {
            for (int r = 0; r < reps; r++) v[r] = naive_burst(&np, bursts[b], bjob_run);
            qsort(v, (size_t)reps, sizeof v[0], cmp_double);
            med[b] = v[reps / 2];
        }
        naive_stop(&np);
    } else {
        fprintf(stderr, "pool: unknown or unavailable --blocking %s\n", impl);
        return 2;
    }
    for (int b = 0; b < NBURSTS; b++) printf("%s%.0f", b ? " " : "", med[b]);
    printf("\n");
    return 0;
}

/* The ideal burst time (ms): ceil(n/threads) jobs in a row; CPU work also
 * shares the cores. */
static double ideal_ms(const bjob_kind *k, int n, int threads) {
    double rows = (double)((n + threads - 1) / threads);
    if (k->cpu) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        int par = threads < ncpu ? threads : (int)(ncpu > 0 ? ncpu : 1);
        double share = (double)n / par;
        if (share > rows) rows = share;
    }
    return rows * k->ms;
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
        braid_pool_free(pool);
        braid_loop_free(loop);
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
 *   prints CPU µs used while idle;
 * braid-bench serve pool --blocking braid|libuv|naive --threads T --job KIND --reps R
 *   (KIND: sleep-1ms, sleep-50ms, cpu-1ms, cpu-50ms) prints the median ns of
 *   R bursts of 1, 4 and 16 jobs. */
static int serve(int argc, char **argv) {
    const char *impl = "braid-1t", *idle = NULL, *blocking = NULL, *job = "sleep-1ms";
    int load = 1, threads = 4, reps = 3;
    long calls = 10000, warm = 1000;
    double secs = 2;
    const bench_opt opts[] = {
        { .name = "--impl", .kind = BENCH_OPT_STR, .value = &impl, .metavar = "NAME",
          .help = "implementation timed (sync, braid-1t, braid-4t, libuv-1t, ...)" },
        { .name = "--load", .kind = BENCH_OPT_INT, .value = &load, .metavar = "L", .help = "calls in flight" },
        { .name = "--calls", .kind = BENCH_OPT_LONG, .value = &calls, .metavar = "N",
          .help = "calls in the measured round" },
        { .name = "--warm", .kind = BENCH_OPT_LONG, .value = &warm, .metavar = "W", .help = "calls before it" },
        { .name = "--idle", .kind = BENCH_OPT_STR, .value = &idle, .metavar = "IMPL",
          .help = "instead: CPU used while idle", .choices = "braid|libuv" },
        { .name = "--seconds", .kind = BENCH_OPT_DOUBLE, .value = &secs, .metavar = "S",
          .help = "how long --idle watches" },
        { .name = "--blocking", .kind = BENCH_OPT_STR, .value = &blocking, .metavar = "IMPL",
          .help = "instead: bursts of blocking jobs",
          .choices = "braid|libuv|naive" },
        { .name = "--threads", .kind = BENCH_OPT_INT, .value = &threads, .metavar = "T",
          .help = "threads for --blocking" },
        { .name = "--job", .kind = BENCH_OPT_STR, .value = &job, .metavar = "KIND", .help = "job of --blocking",
          .choices = "sleep-1ms|sleep-50ms|cpu-1ms|cpu-50ms" },
        { .name = "--reps", .kind = BENCH_OPT_INT, .value = &reps, .metavar = "R", .help = "bursts of --blocking" },
        { 0 } };
    int rc;
    if (!bench_serve_args("pool", argc, argv, opts, &rc)) return rc;
    if (blocking) return serve_blocking(blocking, threads, job, reps);
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
    /* blocking work: burst ms per impl, threads, job, burst size, run */
    double burst[NBIMPL][NBTHREADS][MAX_MODE_JOBS][NBURSTS][BENCH_MAX_RUNS];
    bool bhave[NBIMPL];
    const int *jobs;             /* indices into bjobs of the kinds measured */
    int njobs;
} pool_state;

static const bjob_kind *bjob_at(const pool_state *s, int k) { return &bjobs[s->jobs[k]]; }

/* One child per (impl, threads, job): its three burst medians. */
static void measure_blocking(bench_ctx *ctx, pool_state *s, int impl, int ti, int k, int run) {
    const bjob_kind *kind = bjob_at(s, k);
    int reps = ctx->smoke || kind->ms >= 10 ? (ctx->full ? 3 : 1) : ctx->full ? 9 : kind->cpu ? 3 : 5;
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "'%s' serve pool --blocking %s --threads %d --job %s --reps %d", ctx->self_exe,
             bimpl_names[impl], bthreads[ti], kind->name, reps);
    double ns[NBURSTS] = { NAN, NAN, NAN };
    FILE *p = popen(cmd, "r");
    if (p) {
        if (fscanf(p, "%lf %lf %lf", &ns[0], &ns[1], &ns[2]) != 3) ns[0] = ns[1] = ns[2] = NAN;
        if (pclose(p) != 0) ns[0] = ns[1] = ns[2] = NAN;
    }
    if (!isfinite(ns[0]))
        bench_note(ctx, "pool: a blocking-work run of %s (%d threads, %s) failed", bimpl_names[impl], bthreads[ti],
                   kind->name);
    for (int b = 0; b < NBURSTS; b++) s->burst[impl][ti][k][b][run] = ns[b] / 1e6;
}

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
    s->calls = ctx->smoke ? 200 : ctx->full || !ctx->quick ? 10000 : 4000;   /* the 2016 thread: 10,000 per caller */
    s->tw_calls = ctx->full ? 10000 : ctx->smoke ? 50 : 300;   /* Twisted: ~50-500 µs a call */
    s->warm = ctx->smoke ? 50 : 1000;
    double idle_secs = ctx->smoke ? 0.2 : ctx->full || !ctx->quick ? 5 : 1;
    for (int i = 0; i < NIMPL; i++) s->have[i] = true;
    for (int i = 0; i < NBIMPL; i++) s->bhave[i] = true;
    s->jobs = ctx->smoke ? jobs_smoke : ctx->full ? jobs_full : jobs_quick;
    s->njobs = ctx->smoke ? 2 : MAX_MODE_JOBS;
#ifndef BENCH_HAVE_LIBUV
    s->have[I_UV1] = s->have[I_UV4] = false;
    s->bhave[B_UV] = false;
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
        for (int k = 0; k < s->njobs; k++)
            for (int ti = 0; ti < NBTHREADS; ti++)
                for (int i = 0; i < NBIMPL; i++) {
                    int impl = (i + r) % NBIMPL;   /* rotate who goes first */
                    if (!s->bhave[impl]) continue;
                    bench_progress(ctx, "blocking %s x%d threads %s run %d/%d", bjob_at(s, k)->name, bthreads[ti],
                                   bimpl_names[impl], r + 1, runs);
                    measure_blocking(ctx, s, impl, ti, k, r);
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
    for (int k = 0; k < s->njobs; k++)
        for (int ti = 0; ti < NBTHREADS; ti++)
            for (int i = 0; i < NBIMPL; i++) {
                if (!s->bhave[i]) continue;
                for (int b = 0; b < NBURSTS; b++) {
                    const bjob_kind *kind = bjob_at(s, k);
                    double ideal = ideal_ms(kind, bursts[b], bthreads[ti]), x[BENCH_MAX_RUNS];
                    for (int r = 0; r < runs; r++) x[r] = s->burst[i][ti][k][b][r] / ideal;
                    char name[32];
                    snprintf(name, sizeof name, "%s-%dt", bimpl_names[i], bthreads[ti]);
                    bench_row *row = bench_row_begin(ctx, name, "epoll");
                    bench_row_param_int(row, "load", bursts[b]);
                    bench_row_param_int(row, "threads", bthreads[ti]);
                    bench_row_param_str(row, "job", kind->name);
                    bench_row_metric(row, "burst_ms", s->burst[i][ti][k][b], runs, "ms");
                    bench_row_metric(row, "x_ideal", x, runs, "x");
                    for (int r = 0; r < runs; r++) x[r] = ideal;
                    bench_row_metric(row, "ideal_ms", x, runs, "ms");
                    bench_row_end(row);
                }
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

/* The median of metric in the row of impl at this load that has it (the
 * round-trip and blocking-work rows share impl names and loads). */
static double med_of(bench_ctx *ctx, const char *impl, int load, const char *metric) {
    for (int i = 0; i < bench_nrows(ctx); i++) {
        const bench_row *r = bench_get_row(ctx, i);
        double l, v;
        if (strcmp(bench_row_impl(r), impl) || !bench_row_param_num(r, "load", &l) || l != load) continue;
        if (bench_row_metric_get(r, metric, &v, NULL, NULL)) return v;
    }
    return NAN;
}

/* A blocking-work row's median burst time (ms). */
static double burst_of(bench_ctx *ctx, const char *impl, int threads, const char *job, int n) {
    char name[32], fl[32], ft[32], fj[64];
    snprintf(name, sizeof name, "%s-%dt", impl, threads);
    snprintf(fl, sizeof fl, "load=%d", n);
    snprintf(ft, sizeof ft, "threads=%d", threads);
    snprintf(fj, sizeof fj, "job=%s", job);
    const bench_row *r = bench_find_row(ctx, name, NULL, fl, ft, fj, (char *)NULL);
    double v = NAN;
    if (r) bench_row_metric_get(r, "burst_ms", &v, NULL, NULL);
    return v;
}

/* Geometric mean of an impl's x_ideal medians over every blocking burst of
 * one kind of job ("sleep" or "cpu"), and the worst of them. */
static double ideal_gmean(bench_ctx *ctx, const char *impl, const char *kind, double *worst) {
    double logs = 0;
    int n = 0;
    *worst = NAN;
    for (int i = 0; i < bench_nrows(ctx); i++) {
        const bench_row *r = bench_get_row(ctx, i);
        const char *job = bench_row_param_text(r, "job");
        double v;
        if (!job || strncmp(job, kind, strlen(kind)) || strncmp(bench_row_impl(r), impl, strlen(impl)) ||
            bench_row_impl(r)[strlen(impl)] != '-' || !bench_row_metric_get(r, "x_ideal", &v, NULL, NULL) ||
            !(v > 0))
            continue;
        logs += log(v);
        n++;
        if (!(*worst >= v)) *worst = v;
    }
    return n ? exp(logs / n) : NAN;
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
    if (isfinite(t1)) fprintf(html, " Twisted's deferToThreadPool took %.0f µs (the 2016 thread reported 120 µs).", t1);
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

    /* Blocking work. */
    double bw, uw, nw;
    double bs = ideal_gmean(ctx, "braid", "sleep", &bw), us = ideal_gmean(ctx, "libuv", "sleep", &uw);
    double ns = ideal_gmean(ctx, "naive", "sleep", &nw);
    if (!isfinite(bs)) return;
    double bb16 = burst_of(ctx, "braid", 16, "sleep-50ms", 16), ub16 = burst_of(ctx, "libuv", 16, "sleep-50ms", 16);
    double bb4 = burst_of(ctx, "braid", 4, "sleep-50ms", 16), ub4 = burst_of(ctx, "libuv", 4, "sleep-50ms", 16);
    fprintf(html, "<p>Blocking work (the heavy case beside that micro-case): over every burst of sleeping jobs "
                  "(1, 4 and 16 jobs of 1 ms and 50 ms, pools of 4 and 16 threads) braid took %.2f× the ideal "
                  "(geometric mean; worst %.2f×)", bs, bw);
    if (isfinite(us)) fprintf(html, ", libuv %.2f× (worst %.2f×)", us, uw);
    if (isfinite(ns)) fprintf(html, ", the naive pool %.2f× (worst %.2f×)", ns, nw);
    fputs(".", html);
    if (isfinite(bb16))
        fprintf(html, " Sixteen 50 ms sleeps took %.1f ms on 16 braid threads (ideal 50) and %.1f ms on 4 "
                      "(ideal 200)%s", bb16, bb4, isfinite(ub16) ? "" : ".");
    if (isfinite(bb16) && isfinite(ub16)) fprintf(html, "; libuv %.1f and %.1f ms.", ub16, ub4);
    double bc = ideal_gmean(ctx, "braid", "cpu", &bw), uc = ideal_gmean(ctx, "libuv", "cpu", &uw);
    double nc = ideal_gmean(ctx, "naive", "cpu", &nw);
    if (isfinite(bc)) {
        fprintf(html, " CPU-bound jobs (each spinning until it has used its CPU time; the ideal counts this machine's %ld cores) took %.2f× "
                      "the ideal with braid", sysconf(_SC_NPROCESSORS_ONLN), bc);
        if (isfinite(uc)) fprintf(html, ", %.2f× with libuv", uc);
        if (isfinite(nc)) fprintf(html, ", %.2f× with the naive pool", nc);
        fputs(" — on a shared machine other work takes its share of the cores too.", html);
    }
    fputs(" A pool's threads are all busy at once when there is work for them: braid wakes a sleeping "
          "worker, or starts a thread, for each queued job no awake worker has claimed, and counts a "
          "running worker as one only for short jobs and only while a sleeping one keeps watch "
          "(docs/pool.md).</p>\n", html);
}

BENCH_EXPERIMENT(pool,
    .title = "Thread-pool round trip and blocking work",
    .question = "\"Why deferToThread is so slow?\" (Twisted-Python list, 2016): Twisted's deferToThread took "
                "120 µs to run a trivial function in a thread and get its result back, and much more under load. "
                "How fast can a pool round trip be: braid's pools against libuv's uv_queue_work, a minimal "
                "pthread+condvar+eventfd pool and Twisted's own deferToThreadPool, at 1, 8 and 16 concurrent "
                "callers? And for the work pools exist for, jobs that block or compute for milliseconds: does a "
                "burst of them run on all the threads at once, as close to the ideal as the peers?",
    .method = "f(x) = x+1 run in the pool, result awaited on the loop thread; each caller issues its next call "
              "when the previous result arrives; 10,000 calls per caller (quick mode: 4,000; Twisted: 300), "
              "after 1,000 untimed warm-up calls; 1, 8, 16 callers on the loop thread. us_per_call = elapsed / "
              "calls per caller (the latency a caller sees; for sync, the cost of one call); calls_per_s = all "
              "calls / elapsed. Every measurement is a fresh child process (libuv's UV_THREADPOOL_SIZE is set "
              "before its pool starts); implementations alternate run by run; not pinned. braid: default "
              "pool options (workers and the loop spin up to 50 µs before sleeping, adaptive). Idle: CPU time "
              "(getrusage, whole process) of a started 4-thread pool over 5 s (quick: 1 s) after 1,000 calls. "
              "Blocking work: bursts of load = 1, 4, 16 jobs submitted at once from the loop thread — sleeping "
              "1 ms or 50 ms, or spinning until they have used 1 ms or 50 ms of CPU time (quick mode: 1 ms and "
              "10 ms) — on "
              "pools of 4 and 16 threads (braid: min_threads 0, max_threads 4 or 16, default options; libuv: "
              "UV_THREADPOOL_SIZE 4 or 16; the naive pool); one fresh child per implementation, thread count "
              "and job, which first runs one untimed burst of as many 1 ms sleeps as threads, then times 5 "
              "bursts of each size for 1 ms sleeps, 3 for 1 ms spins, 1 for longer jobs (full: 9, 9 and 3) "
              "and keeps the median. "
              "burst_ms = first submission to last result on the loop; x_ideal = burst_ms / ideal, the ideal "
              "being ceil(load/threads) × the job for sleeps and max(that, load × job / min(threads, cores)) "
              "for CPU work.",
    .run = run, .serve = serve, .conclude = conclude, .ratio_base = "braid-4t", .quick_seconds = 55, .quick_runs = 3,
    .full_seconds = 500, .order = 40, .plot_x = "load", .plot_metric = "us_per_call,x_ideal", .plot_logy = true);
