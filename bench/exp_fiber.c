/* braid-bench experiment `fiber`: what a fiber costs.
 *
 * Rows:
 *   switch        one context switch (half a round trip between the loop and
 *                 a fiber, no loop or Deferred in between): braid's
 *                 hand-written assembly vs glibc's swapcontext (which makes a
 *                 sigprocmask system call per switch)
 *   yield         braid_fiber_yield in a fiber: out to the loop, one ready
 *                 phase (the loop's whole iteration, poll included, when the
 *                 fiber is alone), back in
 *   spawn_finish  braid_fiber_spawn of a fiber that returns at once, run,
 *                 its Deferred fired and released — stacks from the pool —
 *                 in batches of 100 per loop iteration; beside it a
 *                 makecontext + switch in + switch out on a reused stack
 *                 (ucontext) and pthread_create + join with a 64 KiB stack
 *   idle_memory   RSS growth per fiber with 100,000 fibers asleep at once
 *                 (default 64 KiB stacks), total in MiB
 *   reqresp       the request/response server of the `reqresp` experiment
 *                 written as one fiber per connection (braid_fstream_factory,
 *                 `serve reqresp --model fiber`, below) beside braid's
 *                 callback server, 64 connections, the same closed-loop load
 *                 generator (exp_reqresp.c's): server CPU µs per request and
 *                 req/s, and the ratio fiber/callback per run pair
 * Targets (issue 9): switch <= 10 ns, spawn_finish <= 150 ns, 100,000 idle
 * fibers <= 1 GiB RSS, fiber server CPU per request <= 1.1x the callback
 * server's. */
#include "bench.h"
#include "reqresp_peers.h"
#include <braid.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <ucontext.h>
#include <unistd.h>

uint64_t braid__fiber_bench_switch(braid_loop *loop, long n);

/* ---- switch ------------------------------------------------------------------------ */
static double braid_switch_ns(braid_loop *loop, long n) {
    uint64_t ns = braid__fiber_bench_switch(loop, n);
    return (double)ns / (double)(2 * n);
}

static ucontext_t uc_main, uc_fib;
static volatile int uc_stop;
static void uc_pingpong(void) {
    while (!uc_stop) swapcontext(&uc_fib, &uc_main);
}
static double ucontext_switch_ns(long n) {
    size_t size = 64 * 1024;
    void *stack = malloc(size);
    if (!stack) return 0;
    getcontext(&uc_fib);
    uc_fib.uc_stack.ss_sp = stack;
    uc_fib.uc_stack.ss_size = size;
    uc_fib.uc_link = &uc_main;
    makecontext(&uc_fib, uc_pingpong, 0);
    uc_stop = 0;
    swapcontext(&uc_main, &uc_fib);
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) swapcontext(&uc_main, &uc_fib);
    uint64_t t1 = bench_now_ns();
    uc_stop = 1;
    swapcontext(&uc_main, &uc_fib);   /* returns through uc_link */
    free(stack);
    return (double)(t1 - t0) / (double)(2 * n);
}

/* ---- yield --------------------------------------------------------------------------- */
typedef struct yield_arg { braid_loop *loop; long n; } yield_arg;
static braid_result yielder(void *arg) {
    yield_arg *y = arg;
    for (long i = 0; i < y->n; i++) braid_fiber_yield(y->loop);
    return braid_result_ok(NULL);
}
static double braid_yield_ns(braid_loop *loop, long n) {
    yield_arg y = { loop, n };
    braid_deferred *d = braid_fiber_spawn(loop, yielder, &y, NULL);
    if (!d) return 0;
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);       /* started */
    uint64_t t0 = bench_now_ns();
    braid_loop_run(loop);
    uint64_t t1 = bench_now_ns();
    braid_deferred_unref(d);
    return (double)(t1 - t0) / (double)n;
}

/* ---- spawn + finish ------------------------------------------------------------------- */
static braid_result nothing(void *arg) { return braid_result_ok(arg); }

#define BATCH 100
static double braid_spawn_ns(braid_loop *loop, long n) {
    long batches = n / BATCH;
    uint64_t t0 = bench_now_ns();
    for (long b = 0; b < batches; b++) {
        for (int i = 0; i < BATCH; i++) braid_deferred_unref(braid_fiber_spawn(loop, nothing, NULL, NULL));
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    uint64_t t1 = bench_now_ns();
    return (double)(t1 - t0) / (double)(batches * BATCH);
}

static volatile long uc_count;
static void uc_nothing(void) { uc_count++; }
static double ucontext_spawn_ns(long n) {
    size_t size = 64 * 1024;
    void *stack = malloc(size);
    if (!stack) return 0;
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        getcontext(&uc_fib);
        uc_fib.uc_stack.ss_sp = stack;
        uc_fib.uc_stack.ss_size = size;
        uc_fib.uc_link = &uc_main;
        makecontext(&uc_fib, uc_nothing, 0);
        swapcontext(&uc_main, &uc_fib);
    }
    uint64_t t1 = bench_now_ns();
    free(stack);
    return (double)(t1 - t0) / (double)n;
}

static void *thr_nothing(void *arg) { return arg; }
static double pthread_spawn_ns(long n) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 64 * 1024);
    uint64_t t0 = bench_now_ns();
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, &a, thr_nothing, NULL) != 0) break;
        pthread_join(t, NULL);
    }
    uint64_t t1 = bench_now_ns();
    pthread_attr_destroy(&a);
    return (double)(t1 - t0) / (double)n;
}

/* ---- idle memory -------------------------------------------------------------------- */
typedef struct idle_arg { braid_loop *loop; } idle_arg;
static braid_result idler(void *arg) {
    idle_arg *a = arg;
    braid_fiber_sleep(a->loop, BRAID_SECONDS(3600));
    return braid_result_ok(NULL);
}

/* RSS growth in KiB for nfibers fibers asleep; 0 on failure. */
static double braid_idle_kib(long nfibers) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop_options o = { .clock = braid_fake_clock_base(fc) };
    braid_loop *loop;
    if (!fc || braid_loop_new(&o, &loop) < 0) { braid_fake_clock_free(fc); return 0; }
    braid_fiber_set_pool_max(loop, 0);
    idle_arg a = { loop };
    long before = bench_rss_kib(getpid());
    long made = 0;
    for (; made < nfibers; made++) {
        braid_deferred *d = braid_fiber_spawn(loop, idler, &a, NULL);
        if (!d) break;
        braid_deferred_unref(d);
    }
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);      /* all run to their sleep */
    long after = bench_rss_kib(getpid());
    braid_loop_advance(loop, BRAID_SECONDS(3600));
    while (braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) > 0) {}
    braid_loop_free(loop);
    braid_fake_clock_free(fc);
    if (made < nfibers) return 0;
    return (double)(after - before);
}

/* ---- the fiber reqresp server (`braid-bench serve reqresp --model fiber`) ----------------- */
/* The same work as the callback server in exp_reqresp.c: read what is
 * there (up to 64 KiB), answer every whole 16-byte request in it with one
 * write. Written as the loop a fiber makes of it. The buffers are static:
 * only one fiber runs at a time and nothing waits between filling them and
 * handing the answers to the transport (which copies them). */
static uint8_t rr_in[65536], rr_out[65536 + 16];

static int rr_fiber_conn(braid_fstream *s, void *arg) {
    int mode = *(int *)arg;
    uint8_t part[16];
    size_t plen = 0;
    for (;;) {
        ssize_t n = braid_fstream_read(s, rr_in, sizeof rr_in, BRAID_FOREVER);
        if (n <= 0) return (int)n;
        const uint8_t *out = rr_in;
        size_t o = (size_t)n;
        if (mode != RR_MODE_ECHO) {
            o = rr_answer(part, &plen, rr_in, (size_t)n, rr_out);
            out = rr_out;
        }
        if (o) {
            int rc = braid_fstream_write(s, out, o, BRAID_FOREVER);
            if (rc < 0) return rc;
        }
    }
}


int rr_serve_fiber(int port, const char *backend, int mode, double seconds);
int rr_serve_fiber(int port, const char *backend, int mode, double seconds) {
    braid_backend b = BRAID_BACKEND_EPOLL;
    if (backend && !strcmp(backend, "select")) b = BRAID_BACKEND_SELECT;
    else if (backend && !strcmp(backend, "poll")) b = BRAID_BACKEND_POLL;
    else if (backend && !strcmp(backend, "uring")) b = BRAID_BACKEND_URING;
    braid_loop *loop;
    braid_loop_options o = { .backend = b, .flags = BRAID_LOOP_STRICT_BACKEND };
    if (braid_loop_new(&o, &loop) < 0) { fprintf(stderr, "serve: backend %s unavailable\n", backend); return 77; }
    static int smode;
    smode = mode;
    static braid_fstream_factory ff;
    braid_fiber_options fo = { .name = "rr-conn" };
    braid_fstream_factory_init(loop, &ff, rr_fiber_conn, &smode, &fo);
    braid_listener *l;
    int rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .backlog = 511 }, &ff.base), &l);
    if (rc < 0) { fprintf(stderr, "serve: listen: %s\n", braid_strerror(rc)); return 1; }
    if (seconds > 0) braid_timer_call_later(loop, (uint64_t)(seconds * 1e9), bench_stop_loop, loop);
    braid_loop_run(loop);
    return 0;       /* the process exits; connections close with it */
}

/* exp_reqresp.c: one run of its load generator against `serve reqresp --impl I`. */
int rr_run_once(bench_ctx *ctx, const char *serve_impl, int nconn, double warm, double window,
                double *cpu_per_req, double *rps);

/* ---- the experiment ------------------------------------------------------------------- */
static int run(bench_ctx *ctx) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return 1;
    int runs = ctx->runs > BENCH_MAX_RUNS ? BENCH_MAX_RUNS : ctx->runs;
    long div = ctx->smoke ? 100 : ctx->quick ? 5 : 1;
    long nswitch = 10000000 / div;
    long nyield = 1000000 / div;
    long nspawn = 1000000 / div;
    long nthread = 10000 / div;
    long nidle = ctx->smoke ? 10000 : 100000;   /* the target is stated for 100,000 */
    int idle_runs = ctx->full ? runs : 1;
    static double sw_b[BENCH_MAX_RUNS], sw_u[BENCH_MAX_RUNS], sw_ratio[BENCH_MAX_RUNS];
    static double yl_b[BENCH_MAX_RUNS];
    static double sp_b[BENCH_MAX_RUNS], sp_u[BENCH_MAX_RUNS], sp_t[BENCH_MAX_RUNS];
    static double sp_ru[BENCH_MAX_RUNS], sp_rt[BENCH_MAX_RUNS];
    static double idle_kib[BENCH_MAX_RUNS], idle_per[BENCH_MAX_RUNS];
    static double rr_cpu_cb[BENCH_MAX_RUNS], rr_cpu_fb[BENCH_MAX_RUNS], rr_ratio[BENCH_MAX_RUNS];
    static double rr_rps_cb[BENCH_MAX_RUNS], rr_rps_fb[BENCH_MAX_RUNS];
    const int rr_conns = 64;
    double rr_warm = ctx->smoke ? 0.1 : ctx->full ? 1.0 : 0.3;
    double rr_window = ctx->smoke ? 0.3 : ctx->full ? 5.0 : 1.0;
    int rr_failed = 0;

    /* Warm-up: fill the stack pool, fault in the code paths. */
    braid_switch_ns(loop, 10000);
    ucontext_switch_ns(10000);
    braid_spawn_ns(loop, 10000);

    for (int r = 0; r < runs; r++) {          /* alternating braid / peer, run by run */
        bench_progress(ctx, "run %d/%d switch", r + 1, runs);
        sw_b[r] = braid_switch_ns(loop, nswitch);
        sw_u[r] = ucontext_switch_ns(nswitch / 10);
        sw_ratio[r] = sw_u[r] / sw_b[r];
        bench_progress(ctx, "run %d/%d yield", r + 1, runs);
        yl_b[r] = braid_yield_ns(loop, nyield);
        bench_progress(ctx, "run %d/%d spawn", r + 1, runs);
        sp_b[r] = braid_spawn_ns(loop, nspawn);
        sp_u[r] = ucontext_spawn_ns(nspawn / 10);
        sp_t[r] = pthread_spawn_ns(nthread);
        sp_ru[r] = sp_u[r] / sp_b[r];
        sp_rt[r] = sp_t[r] / sp_b[r];
        /* Memory is a count, not a timing: quick mode measures it once
         * (100,000 stacks mapped and unmapped cost seconds of system time). */
        if (r < idle_runs) {
            bench_progress(ctx, "run %d/%d idle memory", r + 1, runs);
            idle_kib[r] = braid_idle_kib(nidle);
            idle_per[r] = idle_kib[r] * 1024.0 / (double)nidle;
        }
        /* reqresp: callback and fiber servers, the first of the pair alternating */
        bench_progress(ctx, "run %d/%d reqresp", r + 1, runs);
        for (int k = 0; k < 2; k++) {
            bool fiber = (k + r) % 2 == 1;
            int rc = rr_run_once(ctx, fiber ? "fiber" : "braid", rr_conns, rr_warm, rr_window,
                                 fiber ? &rr_cpu_fb[r] : &rr_cpu_cb[r], fiber ? &rr_rps_fb[r] : &rr_rps_cb[r]);
            if (rc < 0) rr_failed++;
        }
        rr_ratio[r] = rr_cpu_fb[r] / rr_cpu_cb[r];
    }
    const char *backend = braid_loop_backend(loop);   /* a static string */
    braid_loop_free(loop);

    bench_row *row = bench_row_begin(ctx, "braid", "none");
    bench_row_param_str(row, "op", "switch");
    bench_row_metric(row, "ns_per_op", sw_b, runs, "ns");
    bench_row_metric(row, "speedup_vs_ucontext", sw_ratio, runs, "x");
    bench_row_end(row);
    row = bench_row_begin(ctx, "ucontext", "none");
    bench_row_param_str(row, "op", "switch");
    bench_row_metric(row, "ns_per_op", sw_u, runs, "ns");
    bench_row_end(row);

    row = bench_row_begin(ctx, "braid", backend);
    bench_row_param_str(row, "op", "yield");
    bench_row_metric(row, "ns_per_op", yl_b, runs, "ns");
    bench_row_end(row);

    row = bench_row_begin(ctx, "braid", backend);
    bench_row_param_str(row, "op", "spawn_finish");
    bench_row_metric(row, "ns_per_op", sp_b, runs, "ns");
    bench_row_metric(row, "speedup_vs_ucontext", sp_ru, runs, "x");
    bench_row_metric(row, "speedup_vs_pthread", sp_rt, runs, "x");
    bench_row_end(row);
    row = bench_row_begin(ctx, "ucontext", "none");
    bench_row_param_str(row, "op", "spawn_finish");
    bench_row_metric(row, "ns_per_op", sp_u, runs, "ns");
    bench_row_end(row);
    row = bench_row_begin(ctx, "pthread", "none");
    bench_row_param_str(row, "op", "spawn_finish");
    bench_row_metric(row, "ns_per_op", sp_t, runs, "ns");
    bench_row_end(row);

    row = bench_row_begin(ctx, "braid", "none");
    bench_row_param_str(row, "op", "idle_memory");
    bench_row_param_int(row, "fibers", nidle);
    bench_row_metric(row, "bytes_per_fiber", idle_per, idle_runs, "B");
    for (int r = 0; r < idle_runs; r++) idle_kib[r] /= 1024.0;
    bench_row_metric(row, "rss_total", idle_kib, idle_runs, "MiB");
    bench_row_end(row);

    if (rr_failed) bench_note(ctx, "fiber reqresp: %d server run(s) failed or answered wrongly", rr_failed);
    row = bench_row_begin(ctx, "braid-fiber", "epoll");
    bench_row_param_str(row, "op", "reqresp_server");
    bench_row_param_int(row, "conns", rr_conns);
    bench_row_metric(row, "server_cpu_us_per_req", rr_cpu_fb, runs, "us");
    bench_row_metric(row, "req_per_s", rr_rps_fb, runs, "req/s");
    bench_row_metric(row, "cpu_ratio_vs_callback", rr_ratio, runs, "x");
    bench_row_end(row);
    row = bench_row_begin(ctx, "braid", "epoll");
    bench_row_param_str(row, "op", "reqresp_server");
    bench_row_param_int(row, "conns", rr_conns);
    bench_row_metric(row, "server_cpu_us_per_req", rr_cpu_cb, runs, "us");
    bench_row_metric(row, "req_per_s", rr_rps_cb, runs, "req/s");
    bench_row_end(row);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    (void)ctx;
    fprintf(html,
            "<p>The switch row is the bare cost braid pays per suspension or resumption; "
            "swapcontext pays a system call (the signal mask) each time. A yield adds the "
            "loop's ready phase and, with one fiber alone, a whole loop iteration including "
            "a zero-timeout poll: that is the loop's cost, not the switch's. Spawn+finish "
            "includes the fiber's Deferred (from the loop's free list), its ready-phase "
            "start, two switches and the firing; stacks come from the per-loop pool. Idle "
            "memory is the stack pages an asleep fiber has touched (the control block shares "
            "the top page): the 64 KiB of address space per fiber is not resident. The "
            "reqresp rows run the reqresp experiment's server written as one fiber per "
            "connection against braid's callback server, same load generator: the fiber "
            "server pays, per request, a wake-up through the ready phase, two switches and "
            "one copy of the input into the stream's buffer; the rest (system calls, the "
            "loop) is shared, which is why the CPU ratio sits close to 1.</p>\n");
}

BENCH_EXPERIMENT(fiber,
    .title = "Fibers: switch, spawn, memory",
    .question = "What does straight-line code on fibers cost: a context switch, a "
                "spawn-to-finish, and resident memory per idle fiber — against ucontext and "
                "threads?",
    .method = "Tight loops on one loop thread. switch: ping-pong between the loop's stack and "
              "a bare fiber (braid's assembly) vs glibc swapcontext, ns per one-way switch. "
              "spawn_finish: batches of 100 braid_fiber_spawn of a fiber returning at once, "
              "one loop iteration per batch, Deferred released; vs makecontext+swapcontext on "
              "a reused stack and pthread_create+join (64 KiB stack). idle_memory: RSS of "
              "braid-bench before and after 100,000 fibers asleep on a fake clock. reqresp: "
              "`serve reqresp --model fiber` vs the callback server, 64 connections, the "
              "reqresp experiment's closed-loop client and windows, server CPU from /proc. "
              "Runs alternate braid and peers; ratios per run.",
    .run = run,
    .quick_seconds = 30, .quick_runs = 3,
    .full_seconds = 400,
    .conclude = conclude);
