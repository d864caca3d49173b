/* braid-bench driver internals shared by main.c, bench.c and report.c (not
 * part of the experiment interface: experiments use bench.h only). */
#ifndef BRAID_BENCH_DRIVER_H
#define BRAID_BENCH_DRIVER_H

#include "bench.h"

#define BENCH_MAX_PARAMS 16
#define BENCH_MAX_METRICS 24

typedef struct bench_param {
    char *key;
    bool is_str;
    double num;
    char *str;
} bench_param;

typedef struct bench_metric {
    char *name, *unit;
    double median, min, max;
    int n;                    /* number of samples */
    double *samples;          /* may be NULL for rows loaded without samples */
} bench_metric;

struct bench_row {
    char *experiment, *impl, *backend;
    int nparams, nmetrics, runs;
    bench_param params[BENCH_MAX_PARAMS];
    bench_metric metrics[BENCH_MAX_METRICS];
};

typedef struct bench_note_rec {
    char *experiment;
    char *text;
} bench_note_rec;

/* The registry of experiments (constructors fill it before main). */
extern const bench_experiment *bench_experiments[];
extern int bench_nexperiments;
const bench_experiment *bench_find_experiment(const char *name);
void bench_sort_experiments(void);

/* The result store: every row of this invocation plus rows kept from an
 * earlier results.jsonl for experiments not re-run now. */
typedef struct bench_store {
    bench_row **rows;
    int nrows, cap;
    bench_note_rec *notes;
    int nnotes, capnotes;
    FILE *jsonl;              /* OUT/results.jsonl, appended as rows end */
    FILE *notes_file;         /* OUT/notes.jsonl */
} bench_store;
extern bench_store bench_results;

/* Open OUT: load rows/notes of experiments not in `rerun` (names, n), rewrite
 * the files with them, keep the files open for appending. */
int bench_store_open(const char *out_dir, const char *const *rerun, int nrerun);
void bench_store_close(void);

/* Progress state (bench.c). */
void bench_progress_begin_experiment(bench_ctx *ctx, const bench_experiment *e, int index, int total,
                                     double est_seconds, double total_est, double total_elapsed);
void bench_progress_end_experiment(bench_ctx *ctx);
double bench_progress_elapsed(void);   /* seconds since the first experiment began */

/* Report (report.c): CSV, SVG, index.html and summary.md from bench_results. */
int bench_report(bench_ctx *ctx, const char *out_dir, double total_seconds);

/* Small JSON helpers. */
void bench_json_string(FILE *f, const char *s);
void bench_json_number(FILE *f, double v);
/* Parse one results.jsonl / notes.jsonl line (the formats we write). */
bench_row *bench_parse_row(const char *line);
bool bench_parse_note(const char *line, bench_note_rec *out);
void bench_row_free(bench_row *r);

char *bench_xstrdup(const char *s);
void *bench_xmalloc(size_t n);

#endif
