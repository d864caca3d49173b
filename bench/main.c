/* braid-bench: the driver.
 *
 *   braid-bench [EXPERIMENT...] [--quick|--full|--smoke] [--backend B...]
 *               [--out DIR] [--runs N] [--list] [--report-only]
 *   braid-bench serve <experiment> [ARGS...]
 *
 * Runs the chosen experiments (all by default) with a progress line, appends
 * their rows to OUT/results.jsonl (rows of experiments not re-run are kept),
 * then writes the report: per-experiment CSV, SVG plots, index.html and
 * summary.md (report.c). See docs/bench.md. */
#include "driver.h"

#include <braid.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef BENCH_SOURCE_DIR
#define BENCH_SOURCE_DIR "bench"
#endif

static void usage(FILE *f) {
    fprintf(f,
            "usage: braid-bench [EXPERIMENT...] [--quick|--full|--smoke] [--backend B...]\n"
            "                   [--out DIR] [--runs N] [--list] [--report-only]\n"
            "       braid-bench serve EXPERIMENT [ARGS...]\n"
            "  --quick        small sizes, a few minutes for everything (default; `make bench`)\n"
            "  --full         publishing sizes (much longer)\n"
            "  --smoke        the smallest setting of each experiment, 2 runs (tests)\n"
            "  --backend B    braid backend(s) to measure: select poll epoll uring\n"
            "                 (repeat or comma-separate; default: every available one)\n"
            "  --out DIR      output directory (default %s/report)\n"
            "  --runs N       alternating runs per implementation (default 5 quick, 9 full)\n"
            "  --list         list experiments and exit\n"
            "  --report-only  rebuild the report from OUT/results.jsonl without measuring\n",
            BENCH_SOURCE_DIR);
}

/* Is this braid backend really available (no silent fallback)? */
static bool backend_available(const char *name) {
    braid_backend b = !strcmp(name, "select") ? BRAID_BACKEND_SELECT
                      : !strcmp(name, "poll") ? BRAID_BACKEND_POLL
                      : !strcmp(name, "epoll") ? BRAID_BACKEND_EPOLL
                      : !strcmp(name, "uring") ? BRAID_BACKEND_URING
                                               : (braid_backend)-1;
    if ((int)b < 0) return false;
    braid_loop_options o = { .backend = b, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop;
    if (braid_loop_new(&o, &loop) < 0) return false;
    bool same = !strcmp(braid_loop_backend(loop), name);
    braid_loop_free(loop);
    return same;
}

static int add_backends(bench_ctx *ctx, const char *list, bool explicit_) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save, *b = strtok_r(buf, ",", &save); b; b = strtok_r(NULL, ",", &save)) {
        if (!strcmp(b, "io_uring")) b = "uring";
        static const char *const known[] = { "select", "poll", "epoll", "uring" };
        const char *name = NULL;
        for (int i = 0; i < 4; i++) if (!strcmp(known[i], b)) name = known[i];
        if (!name) {
            fprintf(stderr, "braid-bench: unknown backend '%s' (select poll epoll uring)\n", b);
            return -1;
        }
        if (!backend_available(name)) {
            if (explicit_) fprintf(stderr, "braid-bench: backend %s is not available here; skipped\n", name);
            continue;
        }
        bool dup = false;
        for (int i = 0; i < ctx->nbackends; i++) if (!strcmp(ctx->backends[i], name)) dup = true;
        if (!dup && ctx->nbackends < BENCH_MAX_BACKENDS) ctx->backends[ctx->nbackends++] = name;
    }
    return 0;
}

static bool is_backend_name(const char *s) {
    return !strcmp(s, "select") || !strcmp(s, "poll") || !strcmp(s, "epoll") || !strcmp(s, "uring") ||
           !strcmp(s, "io_uring");
}

static void list_experiments(void) {
    for (int i = 0; i < bench_nexperiments; i++) {
        const bench_experiment *e = bench_experiments[i];
        printf("%-12s %s%s (quick ~%.0f s)%s\n", e->name, e->title ? e->title : "",
               e->serve ? " [serve]" : "", e->quick_seconds, e->explicit_only ? " [only when named]" : "");
    }
}

char bench_load_at_start[128];

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fgets(bench_load_at_start, sizeof bench_load_at_start, la))
            bench_load_at_start[strcspn(bench_load_at_start, "\n")] = 0;
        fclose(la);
    }
    bench_sort_experiments();

    if (argc >= 2 && !strcmp(argv[1], "serve")) {
        if (argc < 3) {
            fprintf(stderr, "usage: braid-bench serve EXPERIMENT [ARGS...]\n");
            return 2;
        }
        const bench_experiment *e = bench_find_experiment(argv[2]);
        if (!e || !e->serve) {
            fprintf(stderr, "braid-bench: no experiment '%s' with a serve mode\n", argv[2]);
            return 2;
        }
        /* The experiment sees argv[0] = its name, then its own arguments. */
        return e->serve(argc - 2, argv + 2);
    }

    static bench_ctx ctx;
    ctx.quick = true;
    ctx.out_dir = BENCH_SOURCE_DIR "/report";
    ctx.data_dir = BENCH_SOURCE_DIR;
    ctx.argv = (const char *const *)argv;
    int runs = 0;
    bool report_only = false;
    const char *names[64];
    int nnames = 0;
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl > 0) { self[sl] = 0; ctx.self_exe = self; }
    else ctx.self_exe = argv[0];

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--quick")) { ctx.quick = true; ctx.full = false; ctx.smoke = false; }
        else if (!strcmp(a, "--full")) { ctx.full = true; ctx.quick = false; ctx.smoke = false; }
        else if (!strcmp(a, "--smoke")) { ctx.smoke = true; ctx.quick = true; ctx.full = false; }
        else if (!strcmp(a, "--backend") && i + 1 < argc) {
            if (add_backends(&ctx, argv[++i], true) < 0) return 2;
            /* --backend epoll uring ...: further bare backend names belong to it */
            while (i + 1 < argc && is_backend_name(argv[i + 1]))
                if (add_backends(&ctx, argv[++i], true) < 0) return 2;
        } else if (!strncmp(a, "--backend=", 10)) {
            if (add_backends(&ctx, a + 10, true) < 0) return 2;
        } else if (!strcmp(a, "--out") && i + 1 < argc) ctx.out_dir = argv[++i];
        else if (!strncmp(a, "--out=", 6)) ctx.out_dir = a + 6;
        else if (!strcmp(a, "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(a, "--list")) { list_experiments(); return 0; }
        else if (!strcmp(a, "--report-only")) report_only = true;
        else if (!strcmp(a, "-h") || !strcmp(a, "--help")) { usage(stdout); return 0; }
        else if (a[0] == '-') { usage(stderr); return 2; }
        else if (!strcmp(a, "all")) continue;
        else {
            if (!bench_find_experiment(a)) {
                fprintf(stderr, "braid-bench: no experiment '%s' (try --list)\n", a);
                return 2;
            }
            if (nnames < 64) names[nnames++] = a;
        }
    }
    if (ctx.nbackends == 0) add_backends(&ctx, "select,poll,epoll,uring", false);
    ctx.runs = runs > 0 ? runs : ctx.smoke ? 2 : ctx.full ? 9 : 5;
    if (ctx.runs > BENCH_MAX_RUNS) ctx.runs = BENCH_MAX_RUNS;
    const int default_runs = ctx.runs;

    /* The experiments to run, in report order. */
    const bench_experiment *todo[64];
    int ntodo = 0;
    for (int i = 0; i < bench_nexperiments; i++) {
        bool want = nnames == 0 && !bench_experiments[i]->explicit_only;
        for (int k = 0; k < nnames; k++) if (!strcmp(names[k], bench_experiments[i]->name)) want = true;
        if (want && !report_only) todo[ntodo++] = bench_experiments[i];
    }
    const char *rerun[64];
    for (int i = 0; i < ntodo; i++) rerun[i] = todo[i]->name;
    if (bench_store_open(ctx.out_dir, rerun, ntodo) < 0) return 1;

    double total_est = 0;
    for (int i = 0; i < ntodo; i++) {
        const bench_experiment *e = todo[i];
        double q = e->quick_seconds > 0 ? e->quick_seconds : 10;
        total_est += ctx.smoke ? 1 : ctx.full ? (e->full_seconds > 0 ? e->full_seconds : 10 * q) : q;
    }
    if (ntodo)
        printf("braid-bench: %d experiment(s), %s mode, %d runs each (or the experiment's quick_runs), backends:", ntodo,
               ctx.smoke ? "smoke" : ctx.full ? "full" : "quick", ctx.runs);
    for (int i = 0; ntodo && i < ctx.nbackends; i++) printf(" %s", ctx.backends[i]);
    if (ntodo) printf("; estimate ~%.0f s; out %s\n", total_est, ctx.out_dir);

    int failures = 0;
    double est_before = 0;
    uint64_t t0 = bench_now_ns();
    for (int i = 0; i < ntodo; i++) {
        const bench_experiment *e = todo[i];
        double q = e->quick_seconds > 0 ? e->quick_seconds : 10;
        double est = ctx.smoke ? 1 : ctx.full ? (e->full_seconds > 0 ? e->full_seconds : 10 * q) : q;
        ctx.experiment = e->name;
        ctx.runs = default_runs;
        if (runs <= 0 && !ctx.smoke && !ctx.full && e->quick_runs > 0)
            ctx.runs = e->quick_runs < BENCH_MAX_RUNS ? e->quick_runs : BENCH_MAX_RUNS;
        bench_progress_begin_experiment(&ctx, e, i, ntodo, est, total_est, est_before);
        est_before += est;
        int rc = e->run(&ctx);
        bench_progress_end_experiment(&ctx);
        if (rc != 0) {
            failures++;
            bench_note(&ctx, "the experiment failed (code %d); its rows may be incomplete", rc);
        }
    }
    double total = (double)(bench_now_ns() - t0) / 1e9;
    ctx.experiment = NULL;
    int rc = bench_report(&ctx, ctx.out_dir, total);
    bench_store_close();
    if (ntodo && rc >= 0) {
        /* The run ends in its summary table (the report's summary.md): braid
         * against each peer, the ratio over all points and at the largest. */
        char path[4096];
        snprintf(path, sizeof path, "%s/summary.md", ctx.out_dir);
        FILE *f = fopen(path, "r");
        if (f) {
            char line[1024];
            printf("\n");
            while (fgets(line, sizeof line, f)) fputs(line, stdout);
            fclose(f);
            printf("\n");
        }
    }
    if (ntodo) printf("braid-bench: measured in %.0f s; report: %s/index.html\n", total, ctx.out_dir);
    return failures || rc < 0 ? 1 : 0;
}
