/* spawn: how many child processes a loop can start and reap per second.
 *
 * Each implementation spawns /bin/true (fds 0-2 inherited, the environment
 * inherited) and reaps it on its loop, N times: sequentially (the next
 * spawn when the previous child has been reaped) and 16 at a time (a new
 * spawn whenever one is reaped). Reported: spawns per second and µs per
 * spawn. Each measurement is a fresh child process (`braid-bench serve
 * spawn ...`, or the Twisted script), so nothing is shared between them.
 *
 * The realistic case beside the flattering one: the same from a parent
 * that has touched 256 MiB of heap (a server with a warm cache), where a
 * fork()-based spawn pays for copying the page tables and posix_spawn
 * (clone(CLONE_VM|CLONE_VFORK)) does not.
 *
 * Implementations, alternating run by run:
 *   braid    braid_process_spawn (posix_spawn + closefrom, exit by pidfd)
 *   libuv    uv_spawn (libuv's version decides fork or posix_spawn; exit by SIGCHLD)
 *   twisted  reactor.spawnProcess (bench/peers/spawn_twisted.py, /usr/bin/python3) */
#include "bench.h"

#include <braid.h>
#include <braid/process.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif

enum { I_BRAID, I_UV, I_TW, NIMPL };
static const char *const impl_names[NIMPL] = { "braid", "libuv", "twisted" };
static const int pars[] = { 1, 16 };
#define NPARS 2
static const int rss_mib[] = { 0, 256 };
#define NRSS 2
#define TRUE_PATH "/bin/true"

/* Touch mib MiB of heap, as a parent that has been serving for a while. */
static void *touch_heap(int mib) {
    if (mib <= 0) return NULL;
    size_t n = (size_t)mib << 20;
    char *p = malloc(n);
    if (!p) exit(3);
    for (size_t i = 0; i < n; i += 4096) p[i] = (char)i;
    return p;
}

/* ---- braid ------------------------------------------------------------------------------------ */
typedef struct bstate {
    braid_loop *loop;
    long left, done, running;
    int par;
    bool failed;
} bstate;

static void b_spawn(bstate *s);
static void b_ended(braid_process *p, const braid_process_status *st) {
    bstate *s = braid_process_user(p);
    if (st->exit_code != 0) s->failed = true;
    braid_process_free(p);
    s->running--;
    s->done++;
    b_spawn(s);
}
static const braid_process_protocol b_proto = { .ended = b_ended };

static void b_spawn(bstate *s) {
    static const char *const argv[] = { TRUE_PATH, NULL };
    while (s->left > 0 && s->running < s->par) {
        braid_process_options o = { .file = TRUE_PATH, .argv = argv, .protocol = &b_proto, .user = s };
        braid_process *p;
        if (braid_process_spawn(s->loop, &o, &p, NULL) < 0) {
            s->failed = true;
            s->left = 0;
            return;
        }
        s->left--;
        s->running++;
    }
}

static double run_braid(int par, long n) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return NAN;
    bstate s = { .loop = loop, .left = n, .par = par };
    uint64_t t0 = bench_now_ns();
    b_spawn(&s);
    if (braid_loop_run(loop) < 0) s.failed = true;
    uint64_t dt = bench_now_ns() - t0;
    if (braid_loop_free(loop) < 0 || s.failed || s.done != n) return NAN;
    return (double)dt;
}

/* ---- libuv ------------------------------------------------------------------------------------ */
#ifdef BENCH_HAVE_LIBUV
typedef struct ustate {
    uv_loop_t *loop;
    long left, done, running;
    int par;
    bool failed;
} ustate;
static void u_spawn(ustate *s);
static void u_closed(uv_handle_t *h) {
    ustate *s = h->data;
    free(h);
    s->running--;
    s->done++;
    u_spawn(s);
}
static void u_exit(uv_process_t *p, int64_t status, int sig) {
    ustate *s = p->data;
    if (status != 0 || sig != 0) s->failed = true;
    uv_close((uv_handle_t *)p, u_closed);
}
static void u_spawn(ustate *s) {
    static char *argv[] = { (char *)TRUE_PATH, NULL };
    while (s->left > 0 && s->running < s->par) {
        uv_process_t *p = calloc(1, sizeof *p);
        if (!p) exit(3);
        p->data = s;
        uv_stdio_container_t io[3];
        for (int i = 0; i < 3; i++) {
            io[i].flags = UV_INHERIT_FD;
            io[i].data.fd = i;
        }
        uv_process_options_t o = { .exit_cb = u_exit, .file = TRUE_PATH, .args = argv, .stdio_count = 3,
                                   .stdio = io };
        if (uv_spawn(s->loop, p, &o) != 0) {
            s->failed = true;
            s->left = 0;
            return;
        }
        s->left--;
        s->running++;
    }
}
static double run_uv(int par, long n) {
    uv_loop_t loop;
    uv_loop_init(&loop);
    ustate s = { .loop = &loop, .left = n, .par = par };
    uint64_t t0 = bench_now_ns();
    u_spawn(&s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uint64_t dt = bench_now_ns() - t0;
    uv_loop_close(&loop);
    if (s.failed || s.done != n) return NAN;
    return (double)dt;
}
#endif

static int serve(int argc, char **argv) {
    const char *impl = "braid";
    int par = 1, mib = 0;
    long n = 100;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--impl")) impl = argv[i + 1];
        else if (!strcmp(argv[i], "--par")) par = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--n")) n = atol(argv[i + 1]);
        else if (!strcmp(argv[i], "--rss-mib")) mib = atoi(argv[i + 1]);
        else return 2;
    }
    if (par < 1 || n < 1) return 2;
    void *heap = touch_heap(mib);
    double ns = NAN;
    long warm = n / 10 + 1;
    if (!strcmp(impl, "braid")) {
        run_braid(par, warm);
        ns = run_braid(par, n);
#ifdef BENCH_HAVE_LIBUV
    } else if (!strcmp(impl, "libuv")) {
        run_uv(par, warm);
        ns = run_uv(par, n);
#endif
    } else {
        return 2;
    }
    free(heap);
    if (!isfinite(ns)) return 1;
    printf("%.0f\n", ns);
    return 0;
}

/* ---- the driver side ------------------------------------------------------------------------- */
typedef struct spawn_state {
    long n, tw_n;
    double rate[NIMPL][NRSS][NPARS][BENCH_MAX_RUNS];
    bool have[NIMPL];
} spawn_state;

static double popen_number(const char *cmd) {
    double v = NAN;
    FILE *p = popen(cmd, "r");
    if (!p) return NAN;
    if (fscanf(p, "%lf", &v) != 1) v = NAN;
    if (pclose(p) != 0) v = NAN;
    return v;
}

/* The large-heap case runs a fifth as many spawns (fork copies page tables:
 * tens of ms a spawn). */
static long spawns_of(const spawn_state *s, int impl, int ri) {
    long n = impl == I_TW ? s->tw_n : s->n;
    return rss_mib[ri] ? n / 5 + 1 : n;
}

static void measure(bench_ctx *ctx, spawn_state *s, int impl, int ri, int pi, int run) {
    char cmd[4400];
    long n = spawns_of(s, impl, ri);
    if (impl == I_TW)
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/peers/spawn_twisted.py' --par %d --n %ld --rss-mib %d",
                 ctx->data_dir, pars[pi], n, rss_mib[ri]);
    else
        snprintf(cmd, sizeof cmd, "'%s' serve spawn --impl %s --par %d --n %ld --rss-mib %d", ctx->self_exe,
                 impl_names[impl], pars[pi], n, rss_mib[ri]);
    double ns = popen_number(cmd);
    if (!isfinite(ns))
        bench_note(ctx, "spawn: a %s run (par %d, rss %d MiB) failed", impl_names[impl], pars[pi], rss_mib[ri]);
    s->rate[impl][ri][pi][run] = (double)n / (ns / 1e9);
}

static int run(bench_ctx *ctx) {
    spawn_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->n = ctx->smoke ? 20 : ctx->full || !ctx->quick ? 2000 : 300;
    s->tw_n = ctx->smoke ? 10 : ctx->full || !ctx->quick ? 1000 : 150;
    for (int i = 0; i < NIMPL; i++) s->have[i] = true;
#ifndef BENCH_HAVE_LIBUV
    s->have[I_UV] = false;
    bench_note(ctx, "spawn: libuv not found at build time; its rows are skipped");
#endif
    if (!bench_have_python_module("twisted")) {
        s->have[I_TW] = false;
        bench_note(ctx, "spawn: python3-twisted not importable; its rows are skipped");
    }
    int nrss = ctx->smoke ? 1 : NRSS;
    int runs = ctx->runs > BENCH_MAX_RUNS ? BENCH_MAX_RUNS : ctx->runs;
    for (int r = 0; r < runs; r++)
        for (int ri = 0; ri < nrss; ri++)
            for (int pi = 0; pi < NPARS; pi++)
                for (int k = 0; k < NIMPL; k++) {
                    int impl = (k + r) % NIMPL;   /* rotate who goes first */
                    if (!s->have[impl]) continue;
                    bench_progress(ctx, "rss %d MiB par %d %s run %d/%d", rss_mib[ri], pars[pi], impl_names[impl],
                                   r + 1, runs);
                    measure(ctx, s, impl, ri, pi, r);
                }
    for (int ri = 0; ri < nrss; ri++)
        for (int pi = 0; pi < NPARS; pi++)
            for (int i = 0; i < NIMPL; i++) {
                if (!s->have[i]) continue;
                double us[BENCH_MAX_RUNS];
                for (int r = 0; r < runs; r++) us[r] = 1e6 / s->rate[i][ri][pi][r];
                bench_row *row = bench_row_begin(ctx, impl_names[i], "epoll");
                bench_row_param_int(row, "par", pars[pi]);
                bench_row_param_int(row, "rss_mib", rss_mib[ri]);
                bench_row_metric(row, "spawns_per_s", s->rate[i][ri][pi], runs, "spawns/s");
                bench_row_metric(row, "us_per_spawn", us, runs, "us");
                bench_row_end(row);
            }
    free(s);
    return 0;
}

static double rate_of(bench_ctx *ctx, const char *impl, int par, int mib) {
    char fp[32], fr[32];
    snprintf(fp, sizeof fp, "par=%d", par);
    snprintf(fr, sizeof fr, "rss_mib=%d", mib);
    const bench_row *r = bench_find_row(ctx, impl, NULL, fp, fr, (char *)NULL);
    double v = NAN;
    if (r) bench_row_metric_get(r, "spawns_per_s", &v, NULL, NULL);
    return v;
}
static double ratio_of(bench_ctx *ctx, const char *a, const char *b, int par, int mib) {
    char fp[32], fr[32];
    snprintf(fp, sizeof fp, "par=%d", par);
    snprintf(fr, sizeof fr, "rss_mib=%d", mib);
    const bench_row *ra = bench_find_row(ctx, a, NULL, fp, fr, (char *)NULL);
    const bench_row *rb = bench_find_row(ctx, b, NULL, fp, fr, (char *)NULL);
    double m = NAN;
    if (!ra || !rb || !bench_pair_ratio(ra, rb, "spawns_per_s", &m, NULL, NULL)) return NAN;
    return m;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    fputs("<p>", html);
    for (int ri = 0; ri < NRSS; ri++)
        for (int pi = 0; pi < NPARS; pi++) {
            double b = rate_of(ctx, "braid", pars[pi], rss_mib[ri]);
            if (!isfinite(b)) continue;
            double u = rate_of(ctx, "libuv", pars[pi], rss_mib[ri]), t = rate_of(ctx, "twisted", pars[pi], rss_mib[ri]);
            fprintf(html, "%s, parent heap %d MiB: braid %.0f spawns/s", pars[pi] == 1 ? "Sequential" : "16 at a time",
                    rss_mib[ri], b);
            if (isfinite(u))
                fprintf(html, ", libuv %.0f (braid/libuv %.2f×, pair by pair)", u,
                        ratio_of(ctx, "braid", "libuv", pars[pi], rss_mib[ri]));
            if (isfinite(t))
                fprintf(html, ", Twisted %.0f (%.2f×)", t, ratio_of(ctx, "braid", "twisted", pars[pi], rss_mib[ri]));
            fputs(". ", html);
        }
    fputs("Most of a spawn is the kernel's exec of /bin/true and the dynamic loader in the child, which "
          "every implementation pays alike; what differs is how the parent makes the child (posix_spawn's "
          "clone(CLONE_VM|CLONE_VFORK) in braid, fork in libuv releases before its posix_spawn change, "
          "posix_spawnp or fork in Twisted, by version) and how it learns of the exit (a pidfd per child "
          "in braid; SIGCHLD and a waitpid per child in libuv and Twisted). With a large parent heap fork "
          "copies page tables and the gap grows; with a small one the implementations are close and the "
          "ratio is within this shared machine's noise.</p>\n",
          html);
}

BENCH_EXPERIMENT(spawn,
    .title = "Spawning and reaping child processes",
    .question = "How many child processes per second can a loop start and reap — braid's posix_spawn with a "
                "pidfd per child, against libuv's uv_spawn and Twisted's spawnProcess — one at a time and 16 "
                "at a time, from a small parent and from one holding 256 MiB of touched heap?",
    .method = "Spawn /bin/true (fds 0-2 inherited, environment inherited) and reap it on the loop, N times "
              "(quick: 300, Twisted 150; full: 2000/1000; a fifth of that with the 256 MiB heap) after N/10 untimed warm-up spawns: sequentially "
              "(the next spawn once the previous child is reaped) and 16 at a time (a new spawn whenever one "
              "is reaped). Each measurement is a fresh process; the 256 MiB case mallocs and touches every page "
              "first. spawns_per_s = N / elapsed. Implementations alternate run by run; not pinned.",
    .run = run, .serve = serve, .conclude = conclude, .quick_seconds = 30, .quick_runs = 3, .full_seconds = 200,
    .order = 60, .plot_x = "par", .plot_metric = "spawns_per_s", .headline = "spawns_per_s");
