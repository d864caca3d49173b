/* braid-bench experiment `deferred`: what a Deferred costs, beside Twisted's.
 *
 * Rows (each "op" is the whole sequence, release included):
 *   fired_add1          braid_deferred_succeed + 1 callback added to the fired Deferred
 *   create_addK_fire    new + K callbacks (K = 1, 2, 4, 100) + fire
 *   chain               outer's callback returns an unfired inner; fire outer,
 *                       then inner; outer resumes with inner's result
 *   gather1000          1,000 new Deferreds, gather them, fire each
 * Every callback returns its argument. Twisted runs the same operations in
 * bench/peers/twisted_deferred.py (Debian's python3-twisted), one process
 * per run, alternating with braid run by run (bench_alternate rotates who
 * goes first); speedups are taken per run pair.
 * Allocations per op come from braid's allocator counter
 * (braid_test_alloc_count) over the timed loop, after a warm-up. */
#include "bench.h"
#include <braid.h>
#include <braid/testing.h>
#include <stdlib.h>
#include <string.h>

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

/* Run op n times; returns ns per op, stores allocations per op. */
static double braid_op(braid_loop *loop, int op, long n, double *allocs) {
    static braid_deferred *ds[1000];
    long a0 = braid_test_alloc_count();
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
    *allocs = (double)(braid_test_alloc_count() - a0) / (double)n;
    return (double)(t1 - t0) / (double)n;
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
} dstate;

/* One run of one implementation: every op, braid in-process or Twisted in
 * one python process. bench_alternate rotates which goes first. */
static void measure(bench_ctx *ctx, int impl, int r, void *arg) {
    dstate *st = arg;
    if (impl == 0) {
        for (int op = 0; op < NOPS; op++) {
            long n = (long)(op_iters[op] * st->scale);
            st->b_ns[op][r] = braid_op(st->loop, op, n > 0 ? n : 1, &st->b_alloc[op][r]);
        }
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
        bench_row_metric(row, "ns_per_op", st.b_ns[op], runs, "ns");
        bench_row_metric(row, "allocs_per_op", st.b_alloc[op], runs, "allocs");
        if (nt) bench_row_metric(row, "speedup_vs_twisted", ratio, nt, "x");
        bench_row_end(row);
        if (nt) {
            row = bench_row_begin(ctx, "twisted", "none");
            bench_row_param_str(row, "op", op_names[op]);
            bench_row_param_int(row, "callbacks", op_callbacks[op]);
            bench_row_metric(row, "ns_per_op", t, nt, "ns");
            bench_row_end(row);
        }
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
                  "buys, not a statement about Twisted's design.</p>\n");
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
