/* braid-bench: the experiment interface.
 *
 * Each experiment is one file bench/exp_<name>.c (picked up by the build with
 * no edit elsewhere) that registers itself with BENCH_EXPERIMENT. The driver
 * (bench/main.c) parses `braid-bench [EXPERIMENT...] [--quick|--full]
 * [--backend B...] [--out DIR]`, runs the chosen experiments with a progress
 * line, and writes OUT/results.jsonl, per-experiment CSV, SVG plots and
 * index.html (bench/report.c).
 *
 * Rules every experiment follows (../shared/BENCHMARKING.md):
 *  - braid and its peers run in the same invocation, alternating A B A B,
 *    ctx->runs times each (>= 5; quick mode may use 3): use bench_alternate().
 *  - every measured row goes through bench_row_*: one JSON object per row in
 *    results.jsonl: {"experiment","impl","backend","params":{...},"runs":n,
 *    "metrics":{"<name>":{"median","min","max","unit"}}}.
 *  - a missing peer (library, python3-twisted, nginx, wrk) is skipped with
 *    bench_note(), never a failure.
 *
 *     static int run(bench_ctx *ctx) {
 *         const char *impls[] = { "braid", "libuv", "libevent" };
 *         double ns[3][BENCH_MAX_RUNS];
 *         for (int r = 0; r < ctx->runs; r++)            // alternating
 *             for (int i = 0; i < 3; i++) ns[i][r] = measure(impls[i]);
 *         for (int i = 0; i < 3; i++) {
 *             bench_row *row = bench_row_begin(ctx, impls[i], "epoll");
 *             bench_row_param_int(row, "pending", 1000);
 *             bench_row_metric(row, "ns_per_op", ns[i], ctx->runs, "ns");
 *             bench_row_end(row);
 *         }
 *         return 0;
 *     }
 *     BENCH_EXPERIMENT(timers, .title = "...", .question = "...", .method = "...",
 *                      .run = run, .quick_seconds = 20);
 */
#ifndef BRAID_BENCH_H
#define BRAID_BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define BENCH_MAX_RUNS 64
#define BENCH_MAX_BACKENDS 4

typedef struct bench_ctx {
    const char *experiment;       /* name of the running experiment */
    bool quick;                   /* --quick (default for make bench) */
    bool full;                    /* --full: publishing-grade sizes */
    int runs;                     /* alternating runs per implementation */
    const char *backends[BENCH_MAX_BACKENDS]; /* braid backends to measure */
    int nbackends;
    const char *out_dir;          /* results go here */
    const char *self_exe;         /* path of braid-bench (to spawn `serve` children) */
    const char *data_dir;         /* bench/ source dir (python peers, configs) */
    void *priv;                   /* driver-private */
} bench_ctx;

typedef struct bench_experiment {
    const char *name;
    const char *title;            /* short title for the report */
    const char *question;         /* what it answers, for a reader who never saw the seeds */
    const char *method;           /* how it is measured, what was tuned */
    int (*run)(bench_ctx *ctx);   /* 0 on success */
    /* optional: `braid-bench serve <name> ...` serves alone so any client can drive it */
    int (*serve)(int argc, char **argv);
    double quick_seconds;         /* estimate for the progress line */
    /* optional: plot description for the report (gnuplot via bench/report.c) */
    const char *plot_x;           /* param name on the x axis, e.g. "pending" */
    const char *plot_metric;      /* metric on the y axis, e.g. "ns_per_op" */
    bool plot_logx, plot_logy;
    /* optional: write the experiment's conclusion paragraph (HTML) from its rows */
    void (*conclude)(bench_ctx *ctx, FILE *html);
} bench_experiment;

void bench_register(const bench_experiment *e);
#define BENCH_EXPERIMENT(id, ...)                                              \
    static const bench_experiment bench_exp_##id = { .name = #id, __VA_ARGS__ }; \
    __attribute__((constructor)) static void bench_reg_##id(void) {            \
        bench_register(&bench_exp_##id);                                       \
    }

/* ---- rows ------------------------------------------------------------------ */
typedef struct bench_row bench_row;
bench_row *bench_row_begin(bench_ctx *ctx, const char *impl, const char *backend);
void bench_row_param_int(bench_row *r, const char *key, long long v);
void bench_row_param_str(bench_row *r, const char *key, const char *v);
/* samples: one value per run; median/min/max computed here. */
void bench_row_metric(bench_row *r, const char *name, const double *samples, int n, const char *unit);
void bench_row_end(bench_row *r);

/* A note in the report and on stderr (skipped peer, tuning, placement). */
void bench_note(bench_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Progress: step text for the progress line. */
void bench_progress(bench_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- helpers ---------------------------------------------------------------- */
uint64_t bench_now_ns(void);                 /* CLOCK_MONOTONIC */
double bench_median(const double *v, int n);
double bench_min(const double *v, int n);
double bench_max(const double *v, int n);
/* utime+stime of process pid and its reaped children, in microseconds (/proc). */
double bench_cpu_us(int pid);
/* Resident set size of pid in KiB (/proc/pid/status VmRSS). */
long bench_rss_kib(int pid);
/* Find a free TCP port on 127.0.0.1. */
int bench_free_port(void);
/* Is a program on PATH / a python module importable? */
bool bench_have_program(const char *name);
bool bench_have_python_module(const char *module);

#endif
