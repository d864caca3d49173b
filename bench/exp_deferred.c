/* braid-bench experiment `deferred`: what a Deferred costs, beside Twisted's.
 *
 * Rows (each "op" is the whole sequence, release included):
 *   fired_add1          braid_deferred_succeed + 1 callback added to the fired Deferred
 *   create_addK_fire    new + K callbacks (K = 1, 2, 4, 100) + fire
 *   chain               outer's callback returns an unfired inner; fire outer,
 *                       then inner; outer resumes with inner's result
 *   gather1000          1,000 new Deferreds, gather them, fire each
 *   create_add1_fire with context=one: the same as create_add1_fire, run
 *                       with a current context (<braid/context.h>) of one
 *                       value, which the callback captures and restores: the
 *                       row beside the context=none one is the context's cost
 *                       (braid only: Twisted has no such thing)
 *   log_filtered_out    braid_log_emit of a debug event with two fields
 *                       while the logger passes info and up: the price of a
 *                       log line that is switched off (<braid/log.h>)
 *   log_emit_thread     braid_log_emit of an info event with two fields from
 *                       1 and from 2 pool threads at once (threads=1, 2), the
 *                       loop delivering them to a counting observer meanwhile:
 *                       the emitting thread's cost per event (it formats and
 *                       copies the event into the bounded queue); the queue
 *                       is made big enough that nothing is dropped, and the
 *                       row says how many were delivered and dropped
 *   log_filtered_out_thread  the filtered-out debug event, from a pool thread
 * Every callback returns its argument. Twisted runs the same operations in
 * bench/peers/twisted_deferred.py (Debian's python3-twisted), one process
 * per run, alternating with braid run by run (bench_alternate rotates who
 * goes first); speedups are taken per run pair.
 * Allocations per op come from braid's allocator counter
 * (braid_test_alloc_count) over the timed loop, after a warm-up. */
#include "bench.h"
#include <braid.h>
#include <braid/testing.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { OP_FIRED_ADD1, OP_ADD1, OP_ADD2, OP_ADD4, OP_ADD100, OP_CHAIN, OP_GATHER, NOPS };
static const char *const op_names[NOPS] = {
    "fired_add1", "create_add1_fire", "create_add2_fire", "create_add4_fire",
    "create_add100_fire", "chain", "gather1000",
};
static const int op_callbacks[NOPS] = { 1, 1, 2, 4, 100, 1, 0 };
/* Iterations per timed run in quick mode; full runs 4x as many, smoke 1/200.
 * Python's are ~50x fewer so each side takes a similar ~50-100 ms per op. */
static const long op_iters[NOPS] = { 2000000, 2000000, 1000000, 1000000, 40000, 1000000, 400 };
static const long op_py_iters[NOPS] = { 40000, 40000, 20000, 20000, 800, 20000, 8 };

static braid_result pass(braid_result r, void *arg) { (void)arg; return r; }
static braid_result return_arg(braid_result r, void *arg) {
    braid_result_drop(r);
    return braid_result_chain((braid_deferred *)arg);
}

/* The calling thread's CPU time: beside the wall clock for the context
 * rows, whose difference of a few ns drowns in preemption on a loaded
 * machine (time the thread did not run is not counted). */
static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static double last_cpu_ns;   /* CPU ns per op of the last braid_op */

/* Run op n times; returns ns per op, stores allocations per op. */
static double braid_op(braid_loop *loop, int op, long n, double *allocs) {
    static braid_deferred *ds[1000];
    long a0 = braid_test_alloc_count();
    uint64_t c0 = thread_cpu_ns();
    uint64_t t0 = bench_now_ns();
    switch (op) {
    case OP_FIRED_ADD1:
        for (long i = 0; i < n; i++) {
            braid_deferred *d = braid_deferred_succeed(loop, (void *)(intptr_t)i, NULL);
            braid_deferred_add_callback(d, pass, NULL);
            braid_deferred_unref(d);
        }
        break;
    case OP_ADD1: case OP_ADD2: case OP_ADD4: case OP_ADD100: {
        int k = op_callbacks[op];
        for (long i = 0; i < n; i++) {
            braid_deferred *d = braid_deferred_new(loop);
            for (int j = 0; j < k; j++) braid_deferred_add_callback(d, pass, NULL);
            braid_deferred_callback(d, (void *)(intptr_t)i, NULL);
            braid_deferred_unref(d);
        }
        break;
    }
    case OP_CHAIN:
        for (long i = 0; i < n; i++) {
            braid_deferred *inner = braid_deferred_new(loop);
            braid_deferred *outer = braid_deferred_new(loop);
            braid_deferred_add_callback(outer, return_arg, inner);
            braid_deferred_callback(outer, NULL, NULL);
            braid_deferred_callback(inner, (void *)(intptr_t)i, NULL);
            braid_deferred_unref(outer);
        }
        break;
    case OP_GATHER:
        for (long i = 0; i < n; i++) {
            braid_deferred *fire[1000];
            for (int j = 0; j < 1000; j++) fire[j] = ds[j] = braid_deferred_new(loop);
            braid_deferred *g = braid_deferred_gather(loop, ds, 1000, BRAID_DEFERRED_GATHER_FAIL_FAST);
            for (int j = 0; j < 1000; j++) braid_deferred_callback(fire[j], (void *)(intptr_t)j, NULL);
            braid_deferred_add_callback(g, pass, NULL);
            braid_deferred_unref(g);
        }
        break;
    }
    uint64_t t1 = bench_now_ns();
    last_cpu_ns = (double)(thread_cpu_ns() - c0) / (double)n;
    *allocs = (double)(braid_test_alloc_count() - a0) / (double)n;
    return (double)(t1 - t0) / (double)n;
}

static const braid_ctx_key bench_key = BRAID_CTX_KEY_INIT("bench.id", BRAID_CTX_U64, "a number");

/* create_add1_fire under a context of one value. */
static double braid_op_ctx(braid_loop *loop, long n, double *allocs) {
    braid_ctx_scope s;
    if (braid_ctx_push_u64(&s, &bench_key, 1) < 0) return 0;
    double ns = braid_op(loop, OP_ADD1, n, allocs);
    braid_ctx_pop(&s);
    return ns;
}

/* A debug event the filters drop (the loop's logger passes info and up). */
static double braid_log_off(braid_loop *loop, long n, double *allocs) {
    braid_logger *lg = braid_loop_logger(loop);
    long a0 = braid_test_alloc_count();
    uint64_t c0 = thread_cpu_ns();
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++)
        braid_log_emit(lg, BRAID_LOG_DEBUG, "bench.log",
                       braid_log_fields(BRAID_LOG_I64("i", i), BRAID_LOG_STR("what", "filtered")),
                       "event %ld", i);
    uint64_t t1 = bench_now_ns();
    last_cpu_ns = (double)(thread_cpu_ns() - c0) / (double)n;
    *allocs = (double)(braid_test_alloc_count() - a0) / (double)n;
    return (double)(t1 - t0) / (double)n;
}

/* ---- events from pool threads ----------------------------------------------------------- */
enum { LOG_MAX_THREADS = 2 };
typedef struct log_thread_run {
    braid_logger *lg;
    long n;
    bool filtered;                /* debug events the filters drop, else info ones */
    int nthreads;
    _Atomic int ready, go, done;
    double wall_ns[LOG_MAX_THREADS], cpu_ns[LOG_MAX_THREADS];   /* per event, by thread */
    _Atomic int slot;
} log_thread_run;

static void log_thread_job(void *arg) {
    log_thread_run *lr = arg;
    int me = atomic_fetch_add(&lr->slot, 1);
    atomic_fetch_add(&lr->ready, 1);
    while (!atomic_load(&lr->go)) sched_yield();        /* start together */
    braid_log_level lvl = lr->filtered ? BRAID_LOG_DEBUG : BRAID_LOG_INFO;
    uint64_t c0 = thread_cpu_ns(), t0 = bench_now_ns();
    for (long i = 0; i < lr->n; i++)
        braid_log_emit(lr->lg, lvl, "bench.log",
                       braid_log_fields(BRAID_LOG_I64("i", i), BRAID_LOG_I64("thread", me)), "event %ld", i);
    uint64_t t1 = bench_now_ns(), c1 = thread_cpu_ns();
    lr->wall_ns[me] = (double)(t1 - t0) / (double)lr->n;
    lr->cpu_ns[me] = (double)(c1 - c0) / (double)lr->n;
    atomic_fetch_add(&lr->done, 1);
}

static void count_event(const braid_log_event *ev, void *arg) {
    (void)ev;
    (*(long *)arg)++;
}

/* n events from each of nthreads pool threads at once. Returns 0 and the
 * mean over the threads of their wall and CPU ns per event, and what the
 * loop's observer got and the logger dropped. */
static int log_from_threads(int nthreads, long n, bool filtered, double *wall, double *cpu, double *delivered,
                            double *dropped) {
    braid_loop *loop;
    /* room for every event: the row measures emission, not the drop path */
    if (braid_loop_new(&(braid_loop_options){ .log_queue_limit = (size_t)(nthreads * n) + 64 }, &loop) < 0) return -1;
    braid_logger *lg = braid_loop_logger(loop);
    braid_logger_set_level(lg, NULL, BRAID_LOG_INFO);
    long got = 0;
    braid_log_observer *o;
    braid_pool *pool;
    if (braid_logger_add_callback(lg, count_event, &got, &o) < 0) {
        braid_loop_free(loop);
        return -1;
    }
    if (braid_pool_new(&(braid_pool_options){ .name = "bench-log", .min_threads = (unsigned)nthreads,
                                              .max_threads = (unsigned)nthreads }, &pool) < 0) {
        braid_log_observer_remove(o);
        braid_loop_free(loop);
        return -1;
    }
    static log_thread_run lr;
    memset(&lr, 0, sizeof lr);
    lr.lg = lg;
    lr.n = n;
    lr.filtered = filtered;
    lr.nthreads = nthreads;
    int rc = 0;
    for (int i = 0; i < nthreads && rc == 0; i++) rc = braid_pool_call(pool, log_thread_job, &lr);
    if (rc == 0) {
        while (atomic_load(&lr.ready) < nthreads) sched_yield();
        atomic_store(&lr.go, 1);
        long want = filtered ? 0 : (long)nthreads * n;
        /* the loop delivers while the threads emit (each batch posts one wake-up) */
        while (atomic_load(&lr.done) < nthreads || got < want) {
            if (got < want) braid_loop_run_once(loop, 0);
            else sched_yield();
        }
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    braid_pool_free(pool);
    braid_logger_stats ls;
    braid_logger_stats_get(lg, &ls);
    *wall = *cpu = 0;
    for (int i = 0; i < nthreads; i++) {
        *wall += lr.wall_ns[i] / nthreads;
        *cpu += lr.cpu_ns[i] / nthreads;
    }
    *delivered = (double)got;
    *dropped = (double)ls.dropped;
    braid_log_observer_remove(o);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    if (braid_loop_free(loop) < 0) rc = -1;
    return rc;
}

/* One Twisted run: all ops in one python process; fills ns[op]. */
static int twisted_run(bench_ctx *ctx, const char *script, double scale, double ns[NOPS]) {
    char cmd[4096];
    int len = snprintf(cmd, sizeof cmd, "/usr/bin/python3 %s", script);
    for (int op = 0; op < NOPS; op++) {
        long n = (long)(op_py_iters[op] * scale);
        len += snprintf(cmd + len, sizeof cmd - (size_t)len, " %s=%ld", op_names[op], n > 0 ? n : 1);
    }
    FILE *p = popen(cmd, "r");
    if (!p) return -1;
    char line[256];
    int got = 0;
    while (fgets(line, sizeof line, p)) {
        char name[64];
        double v;
        if (sscanf(line, "%63s %lf", name, &v) != 2) continue;
        for (int op = 0; op < NOPS; op++)
            if (!strcmp(name, op_names[op])) { ns[op] = v; got++; }
    }
    int st = pclose(p);
    if (st != 0 || got != NOPS) {
        bench_note(ctx, "deferred: twisted peer failed (status %d, %d of %d ops)", st, got, NOPS);
        return -1;
    }
    return 0;
}

typedef struct dstate {
    braid_loop *loop;
    const char *script;
    double scale;                              /* iterations: quick 1, full 4, smoke 1/200 */
    bool twisted_ok[BENCH_MAX_RUNS];
    double b_ns[NOPS][BENCH_MAX_RUNS], b_alloc[NOPS][BENCH_MAX_RUNS];
    double t_ns[NOPS][BENCH_MAX_RUNS];
    double ctx_ns[BENCH_MAX_RUNS], ctx_alloc[BENCH_MAX_RUNS];
    double log_ns[BENCH_MAX_RUNS], log_alloc[BENCH_MAX_RUNS];
    double cpu_none[BENCH_MAX_RUNS], cpu_one[BENCH_MAX_RUNS], cpu_log[BENCH_MAX_RUNS];
    /* events from pool threads: [0] 1 thread, [1] 2 threads, [2] filtered out, 1 thread */
    double lt_wall[3][BENCH_MAX_RUNS], lt_cpu[3][BENCH_MAX_RUNS], lt_got[3][BENCH_MAX_RUNS],
        lt_drop[3][BENCH_MAX_RUNS];
    bool lt_ok;
} dstate;

/* One run of one implementation: every op, braid in-process or Twisted in
 * one python process. bench_alternate rotates which goes first. */
static void measure(bench_ctx *ctx, int impl, int r, void *arg) {
    dstate *st = arg;
    if (impl == 0) {
        for (int op = 0; op < NOPS; op++) {
            long n = (long)(op_iters[op] * st->scale);
            st->b_ns[op][r] = braid_op(st->loop, op, n > 0 ? n : 1, &st->b_alloc[op][r]);
            if (op == OP_ADD1) st->cpu_none[r] = last_cpu_ns;
        }
        long n = (long)(op_iters[OP_ADD1] * st->scale);
        st->ctx_ns[r] = braid_op_ctx(st->loop, n > 0 ? n : 1, &st->ctx_alloc[r]);
        st->cpu_one[r] = last_cpu_ns;
        st->log_ns[r] = braid_log_off(st->loop, n > 0 ? n : 1, &st->log_alloc[r]);
        st->cpu_log[r] = last_cpu_ns;
        long ln = (long)(100000 * st->scale);
        static const int lt_threads[3] = { 1, 2, 1 };
        for (int k = 0; k < 3; k++)
            if (log_from_threads(lt_threads[k], ln > 0 ? ln : 1, k == 2, &st->lt_wall[k][r], &st->lt_cpu[k][r],
                                 &st->lt_got[k][r], &st->lt_drop[k][r]) < 0)
                st->lt_ok = false;
    } else {
        double ns[NOPS];
        st->twisted_ok[r] = twisted_run(ctx, st->script, st->scale, ns) == 0;
        for (int op = 0; op < NOPS; op++) st->t_ns[op][r] = st->twisted_ok[r] ? ns[op] : 0;
    }
}

static int run(bench_ctx *ctx) {
    static dstate st;
    memset(&st, 0, sizeof st);
    if (braid_loop_new(NULL, &st.loop) < 0) return 1;
    int runs = ctx->runs > BENCH_MAX_RUNS ? BENCH_MAX_RUNS : ctx->runs;
    st.scale = ctx->smoke ? 1.0 / 200 : ctx->full ? 4 : 1;
    char script[1024];
    snprintf(script, sizeof script, "%s/peers/twisted_deferred.py",
             ctx->data_dir ? ctx->data_dir : "bench");
    st.script = script;
    bool twisted = bench_have_python_module("twisted");
    if (!twisted) bench_note(ctx, "deferred: python3-twisted not importable, Twisted rows skipped");
    bench_note(ctx, "deferred: braid rows run on one loop (epoll, unused: Deferreds never touch "
                    "the poller); Twisted %s via /usr/bin/python3, one process per run",
               twisted ? "runs" : "skipped");

    braid_logger_set_level(braid_loop_logger(st.loop), NULL, BRAID_LOG_INFO);
    st.lt_ok = true;
    double scratch;
    for (int op = 0; op < NOPS; op++)   /* warm-up: fill the free list, fault in pages */
        braid_op(st.loop, op, (long)(op_iters[op] * st.scale / 20) + 1, &scratch);

    static const char *const impls[] = { "braid", "twisted" };
    bench_alternate(ctx, "deferred", twisted ? 2 : 1, impls, measure, &st);

    /* Rows; the speedup is taken run by run (Twisted run r / braid run r). */
    for (int op = 0; op < NOPS; op++) {
        double t[BENCH_MAX_RUNS], ratio[BENCH_MAX_RUNS];
        int nt = 0;
        for (int r = 0; r < runs; r++) {
            if (!twisted || !st.twisted_ok[r]) continue;
            t[nt] = st.t_ns[op][r];
            ratio[nt] = st.t_ns[op][r] / st.b_ns[op][r];
            nt++;
        }
        bench_row *row = bench_row_begin(ctx, "braid", "none");
        bench_row_param_str(row, "op", op_names[op]);
        bench_row_param_int(row, "callbacks", op_callbacks[op]);
        bench_row_param_str(row, "context", "none");
        bench_row_metric(row, "ns_per_op", st.b_ns[op], runs, "ns");
        bench_row_metric(row, "allocs_per_op", st.b_alloc[op], runs, "allocs");
        if (op == OP_ADD1) bench_row_metric(row, "cpu_ns_per_op", st.cpu_none, runs, "ns");
        if (nt) bench_row_metric(row, "speedup_vs_twisted", ratio, nt, "x");
        bench_row_end(row);
        if (nt) {
            row = bench_row_begin(ctx, "twisted", "none");
            bench_row_param_str(row, "op", op_names[op]);
            bench_row_param_int(row, "callbacks", op_callbacks[op]);
            bench_row_metric(row, "ns_per_op", t, nt, "ns");
            bench_row_end(row);
        }
        if (op == OP_ADD1) {
            double extra[BENCH_MAX_RUNS], extra_cpu[BENCH_MAX_RUNS];
            for (int r = 0; r < runs; r++) {
                extra[r] = st.ctx_ns[r] - st.b_ns[op][r];
                extra_cpu[r] = st.cpu_one[r] - st.cpu_none[r];
            }
            row = bench_row_begin(ctx, "braid", "none");
            bench_row_param_str(row, "op", op_names[op]);
            bench_row_param_int(row, "callbacks", op_callbacks[op]);
            bench_row_param_str(row, "context", "one");
            bench_row_metric(row, "ns_per_op", st.ctx_ns, runs, "ns");
            bench_row_metric(row, "allocs_per_op", st.ctx_alloc, runs, "allocs");
            bench_row_metric(row, "context_extra_ns", extra, runs, "ns");
            bench_row_metric(row, "cpu_ns_per_op", st.cpu_one, runs, "ns");
            bench_row_metric(row, "context_extra_cpu_ns", extra_cpu, runs, "ns");
            bench_row_end(row);
        }
    }
    bench_row *row = bench_row_begin(ctx, "braid", "none");
    bench_row_param_str(row, "op", "log_filtered_out");
    bench_row_param_int(row, "callbacks", 0);
    bench_row_param_str(row, "context", "none");
    bench_row_metric(row, "ns_per_op", st.log_ns, runs, "ns");
    bench_row_metric(row, "allocs_per_op", st.log_alloc, runs, "allocs");
    bench_row_metric(row, "cpu_ns_per_op", st.cpu_log, runs, "ns");
    bench_row_end(row);
    if (!st.lt_ok) bench_note(ctx, "deferred: a log_emit_thread run could not start its loop or pool");
    static const char *const lt_ops[3] = { "log_emit_thread", "log_emit_thread", "log_filtered_out_thread" };
    static const int lt_n[3] = { 1, 2, 1 };
    for (int k = 0; k < 3; k++) {
        row = bench_row_begin(ctx, "braid", "none");
        bench_row_param_str(row, "op", lt_ops[k]);
        bench_row_param_int(row, "threads", lt_n[k]);
        bench_row_param_str(row, "context", "none");
        bench_row_metric(row, "ns_per_op", st.lt_wall[k], runs, "ns");
        bench_row_metric(row, "cpu_ns_per_op", st.lt_cpu[k], runs, "ns");
        bench_row_metric(row, "delivered", st.lt_got[k], runs, "events");
        bench_row_metric(row, "dropped", st.lt_drop[k], runs, "events");
        bench_row_end(row);
    }
    return braid_loop_free(st.loop) < 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    (void)ctx;
    fprintf(html, "<p>Each row is a whole operation, release included. braid's ready path "
                  "(a Deferred from the per-loop free list, callbacks stored inline) allocates "
                  "nothing; the 100-callback row spills to a heap array and gather allocates "
                  "its state and result array. Twisted's numbers include the Python "
                  "interpreter: the ratio is what moving a Deferred-heavy program to braid "
                  "buys, not a statement about Twisted's design.</p>\n"
                  "<p>The context=one row runs create_add1_fire with a current execution "
                  "context: the Deferred stores one marker slot holding a reference taken from "
                  "the scope's prepaid stash (no atomic operation), and the callback runs "
                  "without a switch because its context is already current; context_extra_ns is its cost over the context=none row of the "
                  "same run, context_extra_cpu_ns the same in thread CPU time (robust to a loaded "
                  "machine). With no context the capture is one thread-local load and a test; "
                  "its cost is measured against a build of the previous commit (docs/context.md). "
                  "log_filtered_out is a debug event with two fields emitted while the "
                  "logger passes info and up: a load and a compare, nothing formatted or "
                  "allocated.</p>\n"
                  "<p>log_emit_thread is the cost, on the emitting pool thread, of an info event "
                  "with two fields that passes the filters: formatted, copied into one allocation "
                  "and queued for the loop, whose observer (a counter) gets every one while the "
                  "threads emit (delivered; dropped stays 0: the queue is made big enough). "
                  "threads=2 is two pool threads emitting at once: their cost includes contention "
                  "on the queue's lock and, on a 2-core machine, sharing the cores with the loop. "
                  "log_filtered_out_thread is the switched-off event from a pool thread.</p>\n");
}

BENCH_EXPERIMENT(deferred,
    .title = "Deferred operations: braid vs Twisted",
    .question = "What does a Deferred cost per operation (create, add callbacks, fire, chain, "
                "gather), in time and allocations, next to Twisted's Deferred?",
    .method = "Tight loops of each operation on one loop thread; braid and a python3-twisted "
              "script doing the same operations alternate run by run (one python process per "
              "run, each op timed after a warm-up); ns/op per run, median and range; speedup "
              "is the per-run ratio Twisted/braid. Allocations counted by braid's allocator.",
    .run = run,
    .quick_seconds = 8,
    .full_seconds = 60,
    .order = 20,
    .conclude = conclude);
