/* workers: the round trip of a call to a worker process and back.
 *
 * `load` callers on the parent's loop each issue their next call when the
 * previous reply arrives, to a pool of 2 worker processes (this machine's
 * core count). The call carries 8 bytes (x) and the reply 8 bytes (x+1),
 * checked. Two jobs: "trivial" (the reply at once: the mechanism's floor)
 * and "cpu-1ms" (the worker spins until it has used 1 ms of CPU time: the
 * realistic case, work worth sending to another process). Reported: µs per
 * call as a caller sees it (elapsed / calls per caller) and calls per
 * second (all callers).
 *
 * Implementations, alternating run by run, each measurement a fresh
 * process:
 *   braid   braid_workers_call on braid_workers (count 2, max_in_flight 16),
 *           the workers being braid-bench re-run (`serve workers --worker`)
 *   braid-box  the same calls with a box as the payload both ways (one u64
 *           key "x": made, encoded, decoded and read on each side, each call)
 *   pipe    the hand-written limit: 2 forked children, each reading a
 *           16-byte request from a pipe and writing a 16-byte reply to
 *           another (blocking read/write); the parent keeps `load` requests
 *           in flight across them, round-robin, and waits with poll(2)
 *   sock    the same hand-written program over one socketpair per child
 *           instead of two pipes: the floor of braid's own transport (a
 *           worker's connection is a socketpair), to tell what the socket
 *           costs from what braid adds on top of it
 *   mp      Python's multiprocessing.Pool(2).apply_async, each caller's
 *           callback issuing its next call (bench/peers/workers_mp.py,
 *           /usr/bin/python3); the job in Python spins on time.thread_time */
#include "bench.h"

#include <braid.h>
#include <braid/process.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { I_BRAID, I_BOX, I_PIPE, I_SOCK, I_MP, NIMPL };
static const char *const impl_names[NIMPL] = { "braid", "braid-box", "pipe", "sock", "mp" };
static const int loads[] = { 1, 16 };
#define NLOADS 2
#define MAX_LOAD 16
static const char *const jobs[] = { "trivial", "cpu-1ms" };
#define NJOBS 2
#define NWORKERS 2
/* Where the processes run: wherever the scheduler puts them, or all on CPU
 * 0 (taskset -c 0, inherited by the workers). On this kind of machine
 * (2 cores that halt when idle) the two give different regimes: a wake-up
 * on the other core costs ~30 µs, one on the same core a context switch. */
static const char *const placements[] = { "free", "one-core" };
#define NPL 2

/* ---- the job -------------------------------------------------------------------------------- */
/* Spin until this thread has used 1 ms of CPU time. */
static void cpu_1ms(void) { bench_cpu_spin(1000000); }

/* ---- braid: the worker side ------------------------------------------------------------------ */
static void h_trivial(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    uint64_t x;
    const braid_box *in = braid_worker_call_box(c);
    if (in) {   /* braid-box: x in, x + 1 out, as boxes */
        braid_box *out;
        if (braid_box_u64(in, "x", &x) < 0 || braid_box_new(&out) < 0) {
            braid_worker_call_fail(c, BRAID_EINVAL, "a box with x expected");
            return;
        }
        braid_box_set_u64(out, "x", x + 1);
        braid_worker_call_reply_box(c, out);
        braid_box_free(out);
        return;
    }
    if (len != sizeof x) {
        braid_worker_call_fail(c, BRAID_EINVAL, "8 bytes expected");
        return;
    }
    memcpy(&x, buf, sizeof x);
    x++;
    braid_worker_call_reply(c, &x, sizeof x);
}
static void h_cpu(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    cpu_1ms();
    h_trivial(c, buf, len, arg);
}
static const braid_worker_command cmds[] = { { "trivial", h_trivial, NULL }, { "cpu-1ms", h_cpu, NULL } };

/* ---- braid: the parent side ------------------------------------------------------------------ */
typedef struct bstate bstate;
typedef struct bcaller {
    bstate *s;
    long left;
    uint64_t x;
} bcaller;
struct bstate {
    braid_loop *loop;
    braid_workers *w;
    const char *job;
    int active;
    bool failed, box;
    bcaller c[MAX_LOAD];
};

static void b_issue(bcaller *c);
static braid_result b_got(braid_result r, void *arg) {
    bcaller *c = arg;
    const braid_worker_reply *rep = r.value;
    uint64_t y = 0;
    if (c->s->box) {
        if (!rep->box || braid_box_u64(rep->box, "x", &y) < 0) c->s->failed = true;
    } else if (rep->len != sizeof y) {
        c->s->failed = true;
    } else {
        memcpy(&y, rep->data, sizeof y);
    }
    if (y != c->x + 1) c->s->failed = true;
    c->x = y;
    if (--c->left > 0 && !c->s->failed) b_issue(c);
    else if (--c->s->active == 0) braid_loop_stop(c->s->loop);
    return r;
}
static braid_result b_err(braid_result r, void *arg) {
    bcaller *c = arg;
    fprintf(stderr, "workers bench: call failed: %s\n", r.failure->message ? r.failure->message : "?");
    braid_result_drop(r);
    c->s->failed = true;
    if (--c->s->active == 0) braid_loop_stop(c->s->loop);
    return braid_result_ok(NULL);
}
static void b_issue(bcaller *c) {
    braid_deferred *d;
    if (c->s->box) {
        braid_box *b;
        if (braid_box_new(&b) < 0 || braid_box_set_u64(b, "x", c->x) < 0) exit(3);
        d = braid_workers_call_box(c->s->w, c->s->job, b, NULL);
        braid_box_free(b);
    } else {
        d = braid_workers_call(c->s->w, c->s->job, &c->x, sizeof c->x, NULL);
    }
    if (!d || braid_deferred_add(d, b_got, b_err, c) < 0) exit(3);
    braid_deferred_unref(d);
}
static double b_round(bstate *s, int load, long calls) {
    s->active = load;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < load; i++) {
        s->c[i] = (bcaller){ s, calls, 0 };
        b_issue(&s->c[i]);
    }
    if (braid_loop_run(s->loop) < 0) s->failed = true;
    uint64_t dt = bench_now_ns() - t0;
    return s->failed ? NAN : (double)dt;
}
static double run_braid(const char *job, int load, long calls, long warm, bool box) {
    static const char *const argv[] = { "braid-bench", "serve", "workers", "--worker", NULL };
    bstate s = { .job = job, .box = box };
    if (braid_loop_new(NULL, &s.loop) < 0) return NAN;
    braid_workers_options o = { .program = "/proc/self/exe", .argv = argv, .count = NWORKERS,
                                .max_in_flight = MAX_LOAD };
    if (braid_workers_new(s.loop, &o, &s.w) < 0) return NAN;
    b_round(&s, load, warm);   /* the workers start and say ready */
    double ns = b_round(&s, load, calls);
    braid_workers_free(s.w);
    braid_loop_run(s.loop);   /* the connections close */
    if (braid_loop_free(s.loop) < 0) return NAN;
    return ns;
}

/* ---- the hand-written limit: pipes, blocking children, poll in the parent ------------------- */
typedef struct pmsg {
    uint64_t x;
    uint64_t slot;
} pmsg;

static void pipe_child(int in, int out, bool cpu) {
    pmsg m;
    for (;;) {
        ssize_t n = read(in, &m, sizeof m);
        if (n != (ssize_t)sizeof m) _exit(n == 0 ? 0 : 4);
        if (cpu) cpu_1ms();
        m.x++;
        if (write(out, &m, sizeof m) != (ssize_t)sizeof m) _exit(5);
    }
}

typedef struct pworker {
    pid_t pid;
    int to, from;
} pworker;

static double p_round(pworker *w, int load, long calls) {
    uint64_t x[MAX_LOAD];
    long left[MAX_LOAD];
    int active = load;
    struct pollfd pf[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) pf[i] = (struct pollfd){ .fd = w[i].from, .events = POLLIN };
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < load; i++) {
        x[i] = 0;
        left[i] = calls;
        pmsg m = { 0, (uint64_t)i };
        if (write(w[i % NWORKERS].to, &m, sizeof m) != sizeof m) return NAN;
    }
    while (active > 0) {
        if (poll(pf, NWORKERS, -1) < 0) return NAN;
        for (int k = 0; k < NWORKERS; k++) {
            if (!(pf[k].revents & POLLIN)) continue;
            pmsg m[MAX_LOAD];
            ssize_t n = read(pf[k].fd, m, sizeof m);   /* pipes: whole 16-byte messages */
            if (n <= 0 || n % (ssize_t)sizeof m[0]) return NAN;
            for (int j = 0; j < n / (ssize_t)sizeof m[0]; j++) {
                int i = (int)m[j].slot;
                if (m[j].x != x[i] + 1) return NAN;
                x[i] = m[j].x;
                if (--left[i] > 0) {
                    pmsg q = { x[i], (uint64_t)i };
                    if (write(w[i % NWORKERS].to, &q, sizeof q) != sizeof q) return NAN;
                } else {
                    active--;
                }
            }
        }
    }
    return (double)(bench_now_ns() - t0);
}

/* sock: one socketpair per child (a[0] = b[1] the child's end, a[1] = b[0]
 * the parent's) in place of two pipes; the same program otherwise. */
static double run_pipe(const char *job, int load, long calls, long warm, bool sock) {
    bool cpu = !strcmp(job, "cpu-1ms");
    if (cpu) bench_cpu_calibrate();
    pworker w[NWORKERS];
    for (int i = 0; i < NWORKERS; i++) {
        int a[2], b[2];
        if (sock) {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return NAN;
            a[0] = b[1] = sv[1];
            a[1] = b[0] = sv[0];
        } else if (pipe(a) < 0 || pipe(b) < 0) {
            return NAN;
        }
        pid_t pid = fork();
        if (pid < 0) return NAN;
        if (pid == 0) {
            close(a[1]);
            if (!sock) close(b[0]);
            for (int k = 0; k < i; k++) {
                close(w[k].to);
                if (!sock) close(w[k].from);
            }
            pipe_child(a[0], b[1], cpu);
        }
        close(a[0]);
        if (!sock) close(b[1]);
        w[i] = (pworker){ pid, a[1], b[0] };
    }
    p_round(w, load, warm);
    double ns = p_round(w, load, calls);
    for (int i = 0; i < NWORKERS; i++) {
        close(w[i].to);
        if (!sock) close(w[i].from);
        int st;
        waitpid(w[i].pid, &st, 0);
    }
    return ns;
}

static int serve(int argc, char **argv) {
    if (argc >= 2 && !strcmp(argv[1], "--worker")) {
        if (!braid_worker_is_child()) return 2;
        return braid_worker_main(NULL, cmds, sizeof cmds / sizeof cmds[0]) == 0 ? 0 : 1;
    }
    const char *impl = "braid", *job = "trivial";
    int load = 1;
    long calls = 1000, warm = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--impl")) impl = argv[i + 1];
        else if (!strcmp(argv[i], "--job")) job = argv[i + 1];
        else if (!strcmp(argv[i], "--load")) load = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--calls")) calls = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--warm")) warm = atol(argv[i + 1]);
        else return 2;
    }
    if (load < 1 || load > MAX_LOAD || calls < 1 || warm < 1) return 2;
    if (strcmp(job, "trivial") && strcmp(job, "cpu-1ms")) return 2;
    double ns;
    if (!strcmp(impl, "braid")) ns = run_braid(job, load, calls, warm, false);
    else if (!strcmp(impl, "braid-box")) ns = run_braid(job, load, calls, warm, true);
    else if (!strcmp(impl, "pipe")) ns = run_pipe(job, load, calls, warm, false);
    else if (!strcmp(impl, "sock")) ns = run_pipe(job, load, calls, warm, true);
    else return 2;
    if (!isfinite(ns)) return 1;
    printf("%.0f\n", ns);
    return 0;
}

/* ---- the driver side ------------------------------------------------------------------------- */
typedef struct wstate {
    double us[NIMPL][NJOBS][NLOADS][NPL][BENCH_MAX_RUNS];
    double cps[NIMPL][NJOBS][NLOADS][NPL][BENCH_MAX_RUNS];
    long calls[NIMPL][NJOBS][NLOADS];
    bool have[NIMPL], pin;
} wstate;

static double popen_number(const char *cmd) {
    double v = NAN;
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    if (fscanf(p, "%lf", &v) != 1) v = NAN;
    if (pclose(p) != 0) v = NAN;
    return v;
}

/* Calls per caller: about the same elapsed time for every case. */
static long calls_for(const bench_ctx *ctx, int impl, int ji, int li) {
    long c = ji == 0 ? (impl == I_MP ? 1500 : 6000) : 300;   /* load 1, quick */
    if (loads[li] > 1) c = c / 8 > 0 ? c / 8 : 1;
    if (ctx->smoke) c = c / 30 + 1;
    else if (ctx->full || !ctx->quick) c *= 4;
    return c;
}

static void measure(bench_ctx *ctx, wstate *s, int impl, int ji, int li, int pl, int run) {
    char cmd[4400];
    long calls = s->calls[impl][ji][li], warm = calls / 10 + 1;
    const char *pin = pl ? "taskset -c 0 " : "";
    if (impl == I_MP)
        snprintf(cmd, sizeof cmd, "%s/usr/bin/python3 '%s/peers/workers_mp.py' --workers %d --job %s --load %d --calls %ld --warm %ld",
                 pin, ctx->data_dir, NWORKERS, jobs[ji], loads[li], calls, warm);
    else
        snprintf(cmd, sizeof cmd, "%s'%s' serve workers --impl %s --job %s --load %d --calls %ld --warm %ld",
                 pin, ctx->self_exe, impl_names[impl], jobs[ji], loads[li], calls, warm);
    double ns = popen_number(cmd);
    if (!isfinite(ns))
        bench_note(ctx, "workers: a %s run (%s, load %d, %s) failed", impl_names[impl], jobs[ji], loads[li], placements[pl]);
    s->us[impl][ji][li][pl][run] = ns / 1e3 / (double)calls;
    s->cps[impl][ji][li][pl][run] = (double)calls * loads[li] / (ns / 1e9);
}

/* The one-core placement for the trivial job only (1 ms of CPU per call on
 * one core for two workers measures the core, not the mechanism). */
static bool placed(const wstate *s, int ji, int pl) { return pl == 0 || (s->pin && ji == 0); }

static int run(bench_ctx *ctx) {
    wstate *s = calloc(1, sizeof *s);
    if (!s) return -1;
    for (int i = 0; i < NIMPL; i++) {
        s->have[i] = true;
        for (int j = 0; j < NJOBS; j++)
            for (int l = 0; l < NLOADS; l++) s->calls[i][j][l] = calls_for(ctx, i, j, l);
    }
    if (!bench_have_python_module("multiprocessing")) {
        s->have[I_MP] = false;
        bench_note(ctx, "workers: /usr/bin/python3 cannot import multiprocessing; its rows are skipped");
    }
    s->pin = system("taskset -c 0 true >/dev/null 2>&1") == 0;
    if (!s->pin) bench_note(ctx, "workers: no taskset (util-linux); the one-core placement is skipped");
    int runs = ctx->runs > BENCH_MAX_RUNS ? BENCH_MAX_RUNS : ctx->runs;
    for (int r = 0; r < runs; r++)
        for (int ji = 0; ji < NJOBS; ji++)
            for (int li = 0; li < NLOADS; li++)
                for (int pl = 0; pl < NPL; pl++)
                    for (int k = 0; k < NIMPL; k++) {
                        int impl = (k + r) % NIMPL;   /* rotate who goes first */
                        if (!s->have[impl] || !placed(s, ji, pl)) continue;
                        bench_progress(ctx, "%s load %d %s %s run %d/%d", jobs[ji], loads[li], placements[pl],
                                       impl_names[impl], r + 1, runs);
                        measure(ctx, s, impl, ji, li, pl, r);
                    }
    for (int ji = 0; ji < NJOBS; ji++)
        for (int li = 0; li < NLOADS; li++)
            for (int pl = 0; pl < NPL; pl++)
                for (int i = 0; i < NIMPL; i++) {
                    if (!s->have[i] || !placed(s, ji, pl)) continue;
                    bench_row *row = bench_row_begin(ctx, impl_names[i], "epoll");
                    bench_row_param_int(row, "load", loads[li]);
                    bench_row_param_str(row, "job", jobs[ji]);
                    bench_row_param_str(row, "placement", placements[pl]);
                    bench_row_param_int(row, "workers", NWORKERS);
                    bench_row_metric(row, "us_per_call", s->us[i][ji][li][pl], runs, "us");
                    bench_row_metric(row, "calls_per_s", s->cps[i][ji][li][pl], runs, "calls/s");
                    bench_row_end(row);
                }
    free(s);
    return 0;
}

static const bench_row *row_of(bench_ctx *ctx, const char *pl, const char *impl, const char *job, int load) {
    char fl[32], fj[64], fp[64];
    snprintf(fl, sizeof fl, "load=%d", load);
    snprintf(fj, sizeof fj, "job=%s", job);
    snprintf(fp, sizeof fp, "placement=%s", pl);
    return bench_find_row(ctx, impl, NULL, fl, fj, fp, (char *)NULL);
}
static double med_of(bench_ctx *ctx, const char *pl, const char *impl, const char *job, int load, const char *metric) {
    const bench_row *r = row_of(ctx, pl, impl, job, load);
    double v = NAN;
    if (r) bench_row_metric_get(r, metric, &v, NULL, NULL);
    return v;
}
static double pair_of(bench_ctx *ctx, const char *pl, const char *a, const char *b, const char *job, int load, const char *metric) {
    const bench_row *ra = row_of(ctx, pl, a, job, load), *rb = row_of(ctx, pl, b, job, load);
    double m = NAN;
    if (!ra || !rb || !bench_pair_ratio(ra, rb, metric, &m, NULL, NULL)) return NAN;
    return m;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    fputs("<p>", html);
    for (int pj = 0; pj < NJOBS * NPL; pj++) {
        int ji = pj / NPL;
        const char *cur_pl = placements[pj % NPL];
        double b1 = med_of(ctx, cur_pl, "braid", jobs[ji], 1, "us_per_call");
        if (!isfinite(b1)) continue;
        double p1 = med_of(ctx, cur_pl, "pipe", jobs[ji], 1, "us_per_call"), m1 = med_of(ctx, cur_pl, "mp", jobs[ji], 1, "us_per_call");
        double b16 = med_of(ctx, cur_pl, "braid", jobs[ji], 16, "calls_per_s");
        double p16 = med_of(ctx, cur_pl, "pipe", jobs[ji], 16, "calls_per_s"), m16 = med_of(ctx, cur_pl, "mp", jobs[ji], 16, "calls_per_s");
        double rl = pair_of(ctx, cur_pl, "braid", "pipe", jobs[ji], 1, "us_per_call");
        fprintf(html, "Job %s, placement %s: at load 1 a braid round trip took %.1f µs, the hand-written pipe ping-pong %.1f µs: "
                      "<b>braid %.2f× the limit</b> (pair by pair",
                jobs[ji], cur_pl, b1, p1, rl);
        if (ji == 0 && isfinite(rl)) fprintf(html, "; target ≤ 1.5×: %s", rl <= 1.5 ? "met" : "missed");
        fputs(")", html);
        double s1 = med_of(ctx, cur_pl, "sock", jobs[ji], 1, "us_per_call");
        if (isfinite(s1))
            fprintf(html, "; the same hand-written program over a socketpair (braid's transport) %.1f µs, "
                          "%.2f× the pipes, and braid %.2f× that socketpair floor",
                    s1, pair_of(ctx, cur_pl, "sock", "pipe", jobs[ji], 1, "us_per_call"),
                    pair_of(ctx, cur_pl, "braid", "sock", jobs[ji], 1, "us_per_call"));
        if (isfinite(m1))
            fprintf(html, ", multiprocessing's apply_async %.1f µs", m1);
        fprintf(html, "; at load 16 braid ran %.0f calls/s, the pipes %.0f (%.2f×)", b16, p16,
                pair_of(ctx, cur_pl, "braid", "pipe", jobs[ji], 16, "calls_per_s"));
        if (isfinite(m16))
            fprintf(html, ", multiprocessing %.0f (braid %.1f×)", m16,
                    pair_of(ctx, cur_pl, "braid", "mp", jobs[ji], 16, "calls_per_s"));
        double bx = pair_of(ctx, cur_pl, "braid-box", "braid", jobs[ji], 1, "us_per_call");
        if (isfinite(bx))
            fprintf(html, "; a box call (one u64 key each way) took %.1f µs at load 1, %.2f× a bytes call pair by "
                          "pair, and ran %.0f calls/s at load 16",
                    med_of(ctx, cur_pl, "braid-box", jobs[ji], 1, "us_per_call"), bx,
                    med_of(ctx, cur_pl, "braid-box", jobs[ji], 16, "calls_per_s"));
        fputs(". ", html);
    }
    fputs("The pipe limit does the least that can be done: blocking children, fixed 16-byte messages, no "
          "framing, no dispatch, no Deferreds, and pipes, which are cheaper than the socketpair a braid worker "
          "is connected by (the sock row: the same program over a socketpair); braid adds a length-prefixed versioned frame with a command "
          "name, a call id, a Deferred per call and least-loaded dispatch, and its worker runs a loop (one "
          "epoll_wait per wake-up) rather than a blocking read. Where braid loses is this fixed cost on the "
          "trivial call (see the ratio above: a pair of pipes since braid made its worker connection one); with a millisecond of real work per call all three converge on the two cores, and "
          "on this shared 2-core machine the load generator (the parent) competes with the workers.</p>\n",
          html);
}

BENCH_EXPERIMENT(workers,
    .title = "Worker-process pool round trip",
    .question = "How close does a call to a braid worker process come to the hand-written limit (two processes "
                "ping-ponging over pipes), and how does it compare with what Python users pick "
                "(multiprocessing.Pool.apply_async), for a trivial call and for a call doing 1 ms of CPU work, "
                "at 1 and 16 calls in flight?",
    .method = "2 worker processes. load callers each issue their next call when the previous reply arrives; the "
              "call carries x (8 bytes), the reply x+1, checked. Jobs: trivial (reply at once) and cpu-1ms (spin "
              "until 1 ms of the worker's CPU time is used; Python spins on time.thread_time). Calls per caller "
              "(quick): trivial 6000 (multiprocessing 1500), cpu-1ms 300; at load 16 an eighth; full mode 4×; "
              "after a tenth as many untimed warm-up calls (the workers start then). us_per_call = elapsed / "
              "calls per caller; calls_per_s = all calls / elapsed. Each measurement is a fresh process; "
              "implementations alternate run by run. Two placements (the trivial job only for the second): free "
              "(not pinned: the scheduler may put a worker on the other core, where each wake-up costs ~30 µs) "
              "and one-core (the run under taskset -c 0, workers included: every wake-up a context switch). braid: braid_workers with count 2 and "
              "max_in_flight 16, default options otherwise. braid-box: the same with a box as the payload both "
              "ways (one u64 key, made, encoded, decoded and read on each side per call). pipe: 2 forked children doing blocking read/write "
              "on two pipes each, the parent polling. sock: the same program over one socketpair per child (the "
              "floor of braid's transport). mp: multiprocessing.Pool(2), each caller's apply_async "
              "callback issuing its next call.",
    .run = run, .serve = serve, .conclude = conclude, .quick_seconds = 50, .quick_runs = 3, .full_seconds = 300,
    .order = 61, .plot_x = "load", .plot_metric = "us_per_call,calls_per_s", .plot_logy = true,
    .headline = "us_per_call,calls_per_s");
