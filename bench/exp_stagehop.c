/* stagehop: what a hop between two SEDA stages costs in braid.
 *
 * Within a domain (issue 16's target: <= 20 ns per hop): a chain of 8
 * stages on the loop's domain, each handler forwarding every event of its
 * batch to the next (braid_stage_enqueue, a direct call within the domain);
 * N events go in with one enqueue_many into the first stage and the loop
 * runs once. ns per hop = elapsed / (N x 8). Rows: batched (batch_max 64)
 * and unbatched (batch_max 1), each without and with per-event timing
 * (the clock reads behind the queueing/service histograms); beside them
 * "call", the same chain as plain function calls through a pointer, for
 * scale.
 *
 * Between domains (target: <= braid's own pool round trip): one event from
 * the loop to a stage in a pool domain that forwards it to a stage on the
 * loop — a round trip loop -> pool -> loop — against braid_pool_defer of
 * an empty function, the pool's own round trip. Unbatched: one in flight at
 * a time (the next sent when the previous came back). Batched: N in flight
 * at once, time until the last is back / N. ns per round trip. */
#include "bench.h"

#include <braid.h>
#include <braid/stage.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CHAIN 8

/* ---- within a domain ------------------------------------------------------------------------- */
static long hops_done;
static void nofree(void *p) { (void)p; }

typedef struct chain { braid_stage *st[CHAIN]; } chain;
static chain ch;
static void fwd(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    long i = (long)(intptr_t)arg;
    if (i + 1 < CHAIN) {
        braid_stage *next = ch.st[i + 1];
        for (size_t k = 0; k < n; k++) (void)braid_stage_enqueue(next, &evs[k]);
    } else {
        for (size_t k = 0; k < n; k++) evs[k].data = NULL;
    }
    hops_done += (long)n;
}

typedef void (*call_fn)(void **ev, long i);
static volatile call_fn call_ptr;
__attribute__((noinline)) static void call_hop(void **ev, long i) {
    hops_done++;
    if (i + 1 < CHAIN) call_ptr(ev, i + 1);
}

static double within(long n, size_t batch, unsigned flags, bool plain) {
    if (plain) {
        call_ptr = call_hop;
        void *ev = &ev;
        uint64_t t0 = bench_now_ns();
        for (long k = 0; k < n; k++) call_ptr(&ev, 0);
        return (double)(bench_now_ns() - t0) / (double)(n * CHAIN);
    }
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return NAN;
    braid_stage_domain *d;
    braid_stage_domain_new(loop, NULL, NULL, &d);
    /* Queues of 1024 (the default), fed 1024 at a time: a ring that fits in
     * the cache, as in a server; one enqueue_many and one loop iteration
     * per chunk are part of the cost. */
    const long chunk = 1024;
    braid_stage_options o = { .queue_limit = (size_t)chunk, .batch_max = batch, .flags = flags };
    for (long i = 0; i < CHAIN; i++)
        if (braid_stage_new(d, "hop", fwd, (void *)(intptr_t)i, &o, &ch.st[i]) < 0) abort();
    braid_stage_event *evs = malloc((size_t)chunk * sizeof *evs);
    double best = INFINITY;
    for (int rep = 0; rep < 11; rep++) {   /* the first warms the rings and the cache */
        hops_done = 0;
        uint64_t t0 = bench_now_ns();
        for (long sent = 0; sent < n; sent += chunk) {
            for (long k = 0; k < chunk; k++) evs[k] = BRAID_STAGE_EVENT(&evs[k], nofree);
            if (braid_stage_enqueue_many(ch.st[0], evs, (size_t)chunk) < 0) abort();
            while (hops_done < (sent + chunk) * CHAIN) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        }
        double ns = (double)(bench_now_ns() - t0) / (double)(n * CHAIN);
        if (rep && ns < best) best = ns;
    }
    free(evs);
    for (int i = 0; i < CHAIN; i++) braid_stage_free(ch.st[i]);
    braid_stage_domain_free(d);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_loop_free(loop);
    return best;
}

/* ---- between domains ------------------------------------------------------------------------- */
typedef struct xd {
    braid_loop *loop;
    braid_stage *work, *back;
    long back_count;
} xd;
static void x_work(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    xd *x = arg;
    (void)braid_stage_enqueue_many(x->back, evs, n);
}
static void x_back(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    xd *x = arg;
    for (size_t k = 0; k < n; k++) evs[k].data = NULL;
    x->back_count += (long)n;
}

static braid_result empty_job(void *arg) { return braid_result_ok(arg); }
static braid_result pool_back(braid_result r, void *arg) {
    (*(long *)arg)++;
    return r;
}

/* impl 0: stage round trip, 1: defer_to_pool. inflight 1 or n. */
static double across(long n, long inflight, int impl) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return NAN;
    braid_pool *pool;
    braid_pool_new(&(braid_pool_options){ .max_threads = 1, .min_threads = 1, .loop = loop,
                                                 .queue_limit = (size_t)n + 16 }, &pool);
    xd x = { .loop = loop };
    braid_stage_domain *dl = NULL, *dp = NULL;
    if (impl == 0) {
        braid_stage_domain_new(loop, NULL, NULL, &dl);
        braid_stage_domain_new(loop, pool, NULL, &dp);
        braid_stage_options o = { .queue_limit = (size_t)n + 16, .flags = BRAID_STAGE_NO_TIMING };
        braid_stage_new(dp, "work", x_work, &x, &o, &x.work);
        braid_stage_new(dl, "back", x_back, &x, &o, &x.back);
    }
    static char token;
    long done = 0;
    double best = INFINITY;
    for (int rep = 0; rep < 2; rep++) {   /* the first warms up */
        x.back_count = 0;
        done = 0;
        long sent = 0;
        uint64_t t0 = bench_now_ns();
        while ((impl == 0 ? x.back_count : done) < n) {
            long back = impl == 0 ? x.back_count : done;
            while (sent < n && sent - back < inflight) {
                if (impl == 0) {
                    braid_stage_event e = BRAID_STAGE_EVENT(&token, nofree);
                    if (braid_stage_enqueue(x.work, &e) < 0) abort();
                } else {
                    braid_deferred *d = braid_pool_defer(loop, pool, empty_job, NULL);
                    braid_deferred_add(d, pool_back, NULL, &done);
                    braid_deferred_unref(d);
                }
                sent++;
            }
            braid_loop_run_once(loop, 0);
        }
        double ns = (double)(bench_now_ns() - t0) / (double)n;
        if (rep && ns < best) best = ns;
    }
    if (impl == 0) {
        braid_stage_free(x.work);
        braid_stage_free(x.back);
        braid_stage_domain_free(dl);
        braid_stage_domain_free(dp);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    braid_pool_free(pool);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_loop_free(loop);
    return best;
}

/* ---- the experiment -------------------------------------------------------------------------- */
enum { W_CALL, W_B64, W_B64T, W_B1, W_B1T, W_B64L, W_B1L, NW };
static const char *const w_names[NW] = { "call", "stage-batched", "stage-batched-timed", "stage-unbatched",
                                          "stage-unbatched-timed", "stage-batched-looponly",
                                          "stage-unbatched-looponly" };
enum { X_STAGE1, X_POOL1, X_STAGEN, X_POOLN, NX };
static const char *const x_names[NX] = { "stage-roundtrip", "pool-roundtrip", "stage-roundtrip-batched",
                                          "pool-roundtrip-batched" };

typedef struct hs {
    long n, xn;
    double w[NW][BENCH_MAX_RUNS], x[NX][BENCH_MAX_RUNS];
} hs;

static void measure_w(bench_ctx *ctx, int impl, int run, void *arg) {
    (void)ctx;
    hs *s = arg;
    switch (impl) {
    case W_CALL: s->w[impl][run] = within(s->n, 1, 0, true); break;
    case W_B64: s->w[impl][run] = within(s->n, 64, BRAID_STAGE_NO_TIMING, false); break;
    case W_B64T: s->w[impl][run] = within(s->n, 64, 0, false); break;
    case W_B1: s->w[impl][run] = within(s->n, 1, BRAID_STAGE_NO_TIMING, false); break;
    case W_B1T: s->w[impl][run] = within(s->n, 1, 0, false); break;
    case W_B64L: s->w[impl][run] = within(s->n, 64, BRAID_STAGE_NO_TIMING | BRAID_STAGE_LOOP_ONLY, false); break;
    case W_B1L: s->w[impl][run] = within(s->n, 1, BRAID_STAGE_NO_TIMING | BRAID_STAGE_LOOP_ONLY, false); break;
    }
}
static void measure_x(bench_ctx *ctx, int impl, int run, void *arg) {
    (void)ctx;
    hs *s = arg;
    switch (impl) {
    case X_STAGE1: s->x[impl][run] = across(s->xn, 1, 0); break;
    case X_POOL1: s->x[impl][run] = across(s->xn, 1, 1); break;
    case X_STAGEN: s->x[impl][run] = across(s->xn * 10, s->xn * 10, 0); break;
    case X_POOLN: s->x[impl][run] = across(s->xn * 10, s->xn * 10, 1); break;
    }
}

static int run(bench_ctx *ctx) {
    hs *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->n = ctx->smoke ? 2048 : ctx->full ? 204800 : 51200;
    s->xn = ctx->smoke ? 200 : ctx->full ? 20000 : 2000;
    bench_alternate(ctx, "within a domain", NW, w_names, measure_w, s);
    bench_alternate(ctx, "between domains", NX, x_names, measure_x, s);
    for (int i = 0; i < NW; i++) {
        bench_row *r = bench_row_begin(ctx, w_names[i], "");
        bench_row_param_str(r, "edge", "within");
        bench_row_metric(r, "ns_per_hop", s->w[i], ctx->runs, "ns");
        bench_row_end(r);
    }
    for (int i = 0; i < NX; i++) {
        bench_row *r = bench_row_begin(ctx, x_names[i], "");
        bench_row_param_str(r, "edge", "across");
        bench_row_metric(r, "ns_per_hop", s->x[i], ctx->runs, "ns");
        bench_row_end(r);
    }
    free(s);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    double v[NW] = { 0 }, x[NX] = { 0 };
    for (int i = 0; i < NW; i++) {
        const bench_row *r = bench_find_row(ctx, w_names[i], NULL, NULL);
        if (!r || !bench_row_metric_get(r, "ns_per_hop", &v[i], NULL, NULL)) return;
    }
    for (int i = 0; i < NX; i++) {
        const bench_row *r = bench_find_row(ctx, x_names[i], NULL, NULL);
        if (!r || !bench_row_metric_get(r, "ns_per_hop", &x[i], NULL, NULL)) return;
    }
    fprintf(html,
            "<p>Within a domain a hop costs %.1f ns batched (64 per handler call) and %.1f ns unbatched, "
            "against %.1f ns for a plain call through a pointer; per-event timing adds %.1f ns batched. "
            "Stages marked BRAID_STAGE_LOOP_ONLY (every event from the loop's thread: no lock) hop in %.1f ns "
            "batched and %.1f ns unbatched. The target was 20 ns: %s. A hop is an enqueue (the stage's mutex, "
            "admission, a ring slot) and its share of a dispatch (the mutex again, the handler call, the free "
            "check, the statistics).</p>\n"
            "<p>Between the loop and a pool domain, one event at a time, a stage round trip (loop → pool stage → "
            "loop stage) costs %.0f ns against %.0f ns for braid_pool_defer's own round trip (%s). With many "
            "in flight: %.0f ns per event against %.0f ns.</p>\n",
            v[W_B64], v[W_B1], v[W_CALL], v[W_B64T] - v[W_B64], v[W_B64L], v[W_B1L],
            v[W_B64L] <= 20 ? "met by loop-only stages, batched" : v[W_B64] <= 20 ? "met when batched" : "missed", x[X_STAGE1], x[X_POOL1],
            x[X_STAGE1] <= x[X_POOL1] ? "target met" : "target missed", x[X_STAGEN], x[X_POOLN]);
}

BENCH_EXPERIMENT(stagehop,
    .title = "SEDA stage hops: within a domain and across domains",
    .question = "What does handing an event from one braid stage to the next cost, when both run in one execution "
                "domain (a direct call) and when the hop crosses from the loop to a pool and back?",
    .method = "Within: a chain of 8 stages on the loop's domain (queues of 1024), N events (quick 51 200) fed "
              "to the first 1024 at a time (one enqueue_many and one loop iteration per chunk), each handler "
              "forwarding its batch to the next; ns per hop = elapsed / (N × 8), best of 10 after "
              "a warm-up (the machine is shared: the best repetition is the one nobody preempted), batch_max 64 and 1, with and without per-event timing, and with BRAID_STAGE_LOOP_ONLY "
              "(no lock); beside it the same chain as calls "
              "through a function pointer. Across: loop → stage in a 1-thread pool domain → stage on the loop, "
              "against braid_pool_defer of an empty function on the same kind of pool, one in flight (unbatched) "
              "and 10 × N in flight (batched; quick N = 2 000). All in the braid-bench process; rows alternate run by run.",
    .run = run, .conclude = conclude, .ratio_base = "call", .quick_seconds = 8, .full_seconds = 60,
    .order = 60);
