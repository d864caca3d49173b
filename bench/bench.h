/* braid-bench: the experiment interface.
 *
 * Each experiment is one file bench/exp_<name>.c (picked up by the build with
 * no edit elsewhere) that registers itself with BENCH_EXPERIMENT. The driver
 * (bench/main.c) parses `braid-bench [EXPERIMENT...] [--quick|--full]
 * [--backend B...] [--out DIR]`, runs the chosen experiments with a progress
 * line, and writes OUT/results.jsonl, per-experiment CSV, SVG plots and
 * index.html (bench/report.c).
 *
 * Rules every experiment follows (docs/bench.md, "Rules"):
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
    /* ---- extensions (driver v1) ---- */
    bool smoke;                   /* --smoke: smallest setting only, for tests (seconds) */
    const char *const *argv;      /* the command line, for the report */
} bench_ctx;

typedef struct bench_experiment {
    const char *name;
    const char *title;            /* short title for the report */
    const char *question;         /* what it answers, for a reader who never read the sources */
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
    /* ---- extensions (driver v1) ---- */
    /* Ratios in the report are taken against this impl's rows (default: the
     * impl named "braid", else the first impl whose name starts with "braid"). */
    const char *ratio_base;
    /* Estimate of the --full run, for the progress line (default 10x quick). */
    double full_seconds;
    /* Order in the report (lower first; default 100, ties by name). */
    int order;
    /* Metric(s) for the headline table summary.md, comma-separated
     * (default: the first of plot_metric, else every metric). */
    const char *headline;
    /* Alternating runs per implementation in quick mode when --runs is not
     * given (default 5; issue 6 allows 3 for the heavy server experiments). */
    int quick_runs;
    /* Run only when named on the command line (minutes-long experiments such
     * as soak stay out of `make bench`). */
    bool explicit_only;
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
/* A server process started by an experiment: wait (up to 5 s) until
 * 127.0.0.1:port accepts; false if pid exited first or time ran out (the
 * caller then stops it). */
bool bench_wait_accepting(int pid, int port);
/* Send sig (SIGTERM, or nginx's SIGQUIT), reap pid within timeout_s, else
 * SIGKILL and reap. */
void bench_stop_process(int pid, int sig, double timeout_s);
/* A braid backend by name ("select", "poll", "epoll", "uring"; NULL or
 * anything else: epoll), as an int to keep braid out of this header
 * (cast to braid_backend). */
int bench_backend(const char *name);
/* A callback for braid_timer_call_later that stops the loop it is given. */
void bench_stop_loop(void *loop);
/* Is a program on PATH / a python module importable? */
bool bench_have_program(const char *name);
bool bench_have_python_module(const char *module);

/* ---- extensions (driver v1) --------------------------------------------------
 *
 * results.jsonl: each metric object also carries "samples":[...] (one value
 * per run, in run order) so ratios can be taken pair by pair (run i of braid
 * against run i of the peer) by the report and by anyone reading the rows.
 * A param value is a JSON number (bench_row_param_int/_double) or string.
 *
 * Alternating runs: bench_alternate calls measure(ctx, impl, run, arg) for
 * run = 0..ctx->runs-1 and, inside each run, every impl once; the impl that
 * goes first rotates with the run (A B C, B C A, C A B, ...) so no impl is
 * always measured on a cold (or warm) machine. The progress line shows
 * "<label> impl run r/R". measure stores its own samples. */
typedef void (*bench_measure_fn)(bench_ctx *ctx, int impl, int run, void *arg);
void bench_alternate(bench_ctx *ctx, const char *label, int nimpl, const char *const *impl_names,
                     bench_measure_fn measure, void *arg);

void bench_row_param_double(bench_row *r, const char *key, double v);
/* Fraction (0..1) of the experiment done, to refine the progress estimate. */
void bench_progress_fraction(bench_ctx *ctx, double done);

/* Peak resident set size (VmHWM) of pid in KiB; pid 0 = this process.
 * bench_cpu_us and bench_rss_kib also accept pid 0 for this process. */
long bench_peak_rss_kib(int pid);
/* Context switches (voluntary + involuntary) of pid (0 = self) from /proc. */
long long bench_ctxt_switches(int pid);
/* MemAvailable from /proc/meminfo in KiB. */
long bench_mem_available_kib(void);
/* Run a shell command and return its first output line (stdout+stderr) in
 * buf (empty on failure). */
const char *bench_command_line(const char *cmd, char *buf, size_t len);
/* Busy-spin for ns nanoseconds (calibrated handler cost). */
void bench_spin_ns(uint64_t ns);

/* ---- reading rows back (conclude hooks, the report) ------------------------------
 * Rows of the experiment being reported, in the order they were written. */
int bench_nrows(bench_ctx *ctx);
const bench_row *bench_get_row(bench_ctx *ctx, int i);
const char *bench_row_impl(const bench_row *r);
const char *bench_row_backend(const bench_row *r);
/* A param as a number (false if absent or a string) / as a string (NULL if
 * absent; numbers are formatted). */
bool bench_row_param_num(const bench_row *r, const char *key, double *out);
const char *bench_row_param_text(const bench_row *r, const char *key);
/* A metric's median/min/max (false if absent); samples in run order. */
bool bench_row_metric_get(const bench_row *r, const char *name, double *median, double *min,
                          double *max);
const double *bench_row_samples(const bench_row *r, const char *name, int *n);
/* Find the row with this impl and backend (NULL = any) whose params include
 * every "key=value" in the NULL-terminated filter list. */
const bench_row *bench_find_row(bench_ctx *ctx, const char *impl, const char *backend, ...)
    __attribute__((sentinel));
/* Pairwise ratio a/b of a metric: ratios of run i of a to run i of b for the
 * runs both have (pairs with a non-positive or failed value are left out);
 * median/min/max of those. false if no pair is left. */
bool bench_pair_ratio(const bench_row *a, const bench_row *b, const char *metric,
                      double *median, double *min, double *max);
/* Is a larger value better for this unit ("/s" rates)? */
bool bench_unit_higher_is_better(const char *unit);


/* ---- serve-mode arguments ------------------------------------------------------------
 * `braid-bench serve EXP [--name VALUE]...`: every experiment with a serve
 * mode describes its options in one table and parses them here; the usage
 * message is made from the table. An unknown option, a missing or malformed
 * value, a value outside an option's choices or a required option left out
 * is an error that names the option and prints the usage (exit code 2);
 * `--help` prints the usage to stdout (exit code 0).
 *
 *     int port = 0;
 *     const char *backend = "epoll";
 *     int procs = 1;
 *     const bench_opt opts[] = {
 *         BENCH_SERVE_PORT(&port),            // --port P, required
 *         BENCH_SERVE_BACKEND(&backend),      // --backend B, one of braid's
 *         { .name = "--processes", .kind = BENCH_OPT_INT, .value = &procs, .metavar = "N",
 *           .help = "processes" },
 *         { 0 } };
 *     int rc;
 *     if (!bench_serve_args("http", argc, argv, opts, &rc)) return rc;
 *
 * argv[0] is the experiment's name (what main.c hands to serve), options
 * follow. Values keep their default when the option is absent. */
typedef enum {
    BENCH_OPT_INT,        /* int *: a decimal integer */
    BENCH_OPT_LONG,       /* long *: a decimal integer */
    BENCH_OPT_DOUBLE,     /* double *: a number */
    BENCH_OPT_STR,        /* const char **: any text, or one of .choices */
} bench_opt_kind;
typedef struct bench_opt {
    const char *name;     /* "--port"; NULL ends the table */
    bench_opt_kind kind;
    void *value;          /* where the value goes (its type follows kind) */
    const char *metavar;  /* "P" in the usage */
    const char *help;     /* one line in the usage */
    const char *choices;  /* BENCH_OPT_STR: "a|b|c", the only values accepted (NULL: any) */
    bool required;
} bench_opt;
/* The options most serve modes share: a required port, a braid backend,
 * a time limit in seconds (double; 0: until stopped). */
#define BENCH_SERVE_PORT(p) { .name = "--port", .kind = BENCH_OPT_INT, .value = (p), .metavar = "P", \
                            .help = "port to listen on", .required = true }
#define BENCH_SERVE_BACKEND(b) { .name = "--backend", .kind = BENCH_OPT_STR, .value = (b), .metavar = "B", \
                               .help = "braid backend", .choices = "select|poll|epoll|uring|io_uring" }
#define BENCH_SERVE_SECONDS(s) { .name = "--seconds", .kind = BENCH_OPT_DOUBLE, .value = (s), .metavar = "S", \
                               .help = "serve at most S seconds (0: until stopped)" }
/* --method for serve modes on braid_serve: how N loops share the port. */
#define BENCH_SERVE_METHOD(m) { .name = "--method", .kind = BENCH_OPT_STR, .value = (m), .metavar = "M", \
                              .help = "braid_serve method: reuseport, exclusive (EPOLLEXCLUSIVE), acceptor, " \
                                      "shared (every loop woken: the herd)", \
                              .choices = "reuseport|exclusive|acceptor|shared" }
/* The braid_serve_method of a --method value (an int, cast to
 * braid_serve_method, as bench_backend; anything else: REUSEPORT). */
int bench_serve_method(const char *name);
/* true: go on serving; false: stop with *exit_code (usage or error printed). */
bool bench_serve_args(const char *experiment, int argc, char **argv, const bench_opt *opts, int *exit_code);
/* The usage made from the table. */
void bench_serve_usage(FILE *f, const char *experiment, const bench_opt *opts);

/* CPU work of a given length: bench_cpu_spin(ns) spins until the calling
 * thread has used ns of CPU time (checked every ~10 us of spinning), so a
 * job is the same work whatever the clock speed and however often it is
 * preempted. Call bench_cpu_calibrate() once before starting threads that
 * spin (it sizes the spin between two looks at the CPU clock). */
void bench_cpu_calibrate(void);
void bench_cpu_spin(uint64_t ns);

/* ---- multi-loop servers (braid_serve) ---------------------------------------------------
 * Per-loop counters a server of N loops shares with the experiment driving
 * it: a file mapped MAP_SHARED by both (the serve modes' --stats-file). The
 * server maps it before braid_serve, so forked children and threads write
 * the same pages; loop i writes only slot i (relaxed atomics), the driver
 * reads any time (before and after a run: the run's share per loop). */
#define BENCH_LOOP_STATS_MAX 64
typedef struct bench_loop_stat {
    uint64_t accepts;             /* connections this loop accepted */
    uint64_t requests;            /* requests it answered */
    char pad[48];                 /* one cache line per loop */
} bench_loop_stat;
typedef struct bench_loop_stats {
    bench_loop_stat loop[BENCH_LOOP_STATS_MAX];
} bench_loop_stats;
/* Map path (created, sized and zeroed with create; else it must exist).
 * NULL on failure. */
bench_loop_stats *bench_loop_stats_map(const char *path, bool create);
void bench_loop_stats_unmap(bench_loop_stats *s);
/* A factory f that builds through c->inner and counts each connection in
 * *c->accepts (the accept, seen by the loop that got it); start and stop
 * are passed on to inner. c is borrowed (f->user) and must outlive f. */
struct braid_factory;
typedef struct bench_counting {
    struct braid_factory *inner;
    uint64_t *accepts;
} bench_counting;
void bench_counting_factory_init(struct braid_factory *f, bench_counting *c);

/* wrk -t1 -cCONNS -dSECONDSs --latency [extra] http://127.0.0.1:PORT/ (extra:
 * more wrk arguments, e.g. "-H 'Connection: close'", or NULL). ok: it ran
 * and every answer was 2xx; socket errors (and wrong answers) are listed in
 * errors. cpu_us: wrk's own utime+stime (getrusage of the reaped child: call
 * it with no other child of this process exiting meanwhile). */
typedef struct bench_wrk {
    double rps, requests, p50_us, p99_us, cpu_us;
    bool ok;
    char errors[160];
} bench_wrk;
bench_wrk bench_wrk_run(int port, int conns, int seconds, const char *extra);

/* A server process and its children (nginx's workers, braid_serve's
 * processes), every thread of each: CPU (utime+stime, µs) and context
 * switches (voluntary + involuntary) summed from /proc. Children's pids go
 * to kids (up to cap; kids may be NULL) and their number is returned by
 * bench_tree_pids. */
/* A quiet child: argv (argv[0] looked up in PATH) with stdout on /dev/null. pid or -1. */
int bench_spawn_quiet(char *const *argv);
/* nginx answering GET / with 200 text/plain "Hello, World!" on
 * 127.0.0.1:port (backlog 511) with `workers` worker processes: access_log
 * off, keepalive_requests raised so a keep-alive client never reconnects,
 * non-daemon, its prefix a fresh temporary directory (written to dir).
 * bench_nginx_bin: the binary, or NULL when nginx is not installed. The
 * caller waits for it (bench_wait_accepting); bench_nginx_stop sends
 * SIGQUIT, reaps it and removes dir. */
const char *bench_nginx_bin(void);
int bench_nginx_hello_start(int workers, int port, char *dir, size_t dirlen);
void bench_nginx_stop(int pid, char *dir);
int bench_tree_pids(int pid, int *kids, int cap);
double bench_tree_cpu_us(int pid);
long long bench_tree_ctxt_switches(int pid);

#endif
