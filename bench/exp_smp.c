/* smp: N loops on one port (braid_serve, braid/process.h) against nginx's
 * worker processes, and the thundering herd they are built to avoid.
 *
 * Servers, all answering GET / with 200 text/plain "Hello, World!"
 * (exp_http.c's handler), each started once and measured in turn:
 *   braid-<method>-<t|p>  `braid-bench serve http --threads|--processes N
 *                         --method M`: N loops (1 and 2) sharing 127.0.0.1:P
 *                         by braid_serve's method M —
 *                           reuseport  a SO_REUSEPORT socket per loop
 *                           exclusive  one socket in every loop, EPOLLEXCLUSIVE (wake-one)
 *                           acceptor   the supervisor accepts, hands out round-robin
 *                           shared     one socket in every loop, every loop woken:
 *                                      accept-wake-all, the herd
 *                         in N threads (t) or N processes (p);
 *   nginx                 worker_processes 1 and 2, access_log off (nginx
 *                         1.22 shares one socket with EPOLLEXCLUSIVE).
 * Two loads, by wrk -t1 on loopback, 64 connections:
 *   keepalive  one connection per wrk connection for the whole run;
 *   churn      `Connection: close`: every request a new TCP connection
 *              (connect, request, answer, the server closes) — connscale's
 *              connect/close churn spoken in HTTP so nginx serves it too.
 * Per run (1 s quick, 5 s full; the servers alternate, rotating who goes
 * first): wrk's req/s; server CPU µs per request (utime+stime of the server
 * process, its threads and children from /proc, over the run, / requests);
 * server context switches per request (every thread of every server
 * process, /proc/PID/task/TID/status) — in churn one request is one accepted
 * connection, so this counts the wake-ups an accept costs, the herd's among
 * them; the busiest loop's share of requests (keepalive) or accepts (churn),
 * from per-loop counters the braid server keeps in a shared file
 * (--stats-file, bench_loop_stats) — nginx's workers cannot be counted so,
 * so for every multi-process server the busiest process's share of the
 * server's CPU is reported too; and wrk's own CPU (its getrusage, % of one
 * core): on this 2-core machine wrk shares the cores with the server, and a
 * wrk near 100 % is the bottleneck, not the server. */
#include "bench.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define SMP_MAX_SRV 20
#define SMP_CONNS 64
#define SMP_MAX_KIDS 8
#define CHURN_HEADER "-H 'Connection: close'"

typedef struct smp_srv {
    char label[48];               /* braid-exclusive-p/2 (progress line) */
    char impl[40];                /* braid-exclusive-p, nginx (rows; loops is a param) */
    const char *method;           /* NULL: nginx */
    int loops;
    bool threads;
    int pid, port;
    char dir[128];                /* nginx prefix */
    char stats_path[128];
    bench_loop_stats *stats;
    bool failed;
} smp_srv;

enum { M_RPS, M_CPU, M_CSW, M_LOOP_SHARE, M_PROC_SHARE, M_WRK_CPU, M_SRV_CPU, NMETRIC };
static const char *const metric_names[NMETRIC] = { "req_per_s", "server_cpu_us_per_req", "ctx_switches_per_req",
                                                   "busiest_loop_share", "busiest_proc_cpu_share", "wrk_cpu_pct",
                                                   "server_cpu_pct" };
static const char *const metric_units[NMETRIC] = { "req/s", "us", "count", "fraction", "fraction", "%", "%" };

typedef struct smp_state {
    smp_srv srv[SMP_MAX_SRV];
    int nsrv, seconds;
    bool churn;
    double v[SMP_MAX_SRV][NMETRIC][BENCH_MAX_RUNS];
} smp_state;

/* ---- servers ------------------------------------------------------------------------------ */
static bool start_server(bench_ctx *ctx, smp_srv *s) {
    s->port = bench_free_port();
    if (s->port <= 0) return false;
    char port[16], loops[16];
    snprintf(port, sizeof port, "%d", s->port);
    snprintf(loops, sizeof loops, "%d", s->loops);
    if (!s->method) {
        s->pid = bench_nginx_hello_start(s->loops, s->port, s->dir, sizeof s->dir);
    } else {
        snprintf(s->stats_path, sizeof s->stats_path, "/tmp/braid-bench-smp-%d-%d.stats", (int)getpid(), s->port);
        char *argv[] = { (char *)ctx->self_exe, "serve", "http", "--port", port,
                         s->threads ? "--threads" : "--processes", loops, "--method", (char *)s->method,
                         "--stats-file", s->stats_path, NULL };
        s->pid = bench_spawn_quiet(argv);
    }
    if (s->pid <= 0 || !bench_wait_accepting(s->pid, s->port)) return false;
    if (s->method && !(s->stats = bench_loop_stats_map(s->stats_path, false))) return false;
    return true;
}

static void stop_server(smp_srv *s) {
    if (!s->method) bench_nginx_stop(s->pid, s->dir);
    else if (s->pid > 0) bench_stop_process(s->pid, SIGTERM, 5.0);
    s->pid = -1;
    bench_loop_stats_unmap(s->stats);
    s->stats = NULL;
    if (s->stats_path[0]) unlink(s->stats_path);
}

/* ---- one run ----------------------------------------------------------------------------------- */
typedef struct snap {
    double cpu;
    long long csw;
    uint64_t loop[BENCH_LOOP_STATS_MAX];
    int kids[SMP_MAX_KIDS], nkids;
    double kid_cpu[SMP_MAX_KIDS];
} snap;

static void take(const smp_srv *s, bool churn, snap *n) {
    n->cpu = bench_tree_cpu_us(s->pid);
    n->csw = bench_tree_ctxt_switches(s->pid);
    for (int i = 0; i < s->loops && s->stats; i++)   /* churn: connections; keepalive: requests */
        n->loop[i] = __atomic_load_n(churn ? &s->stats->loop[i].accepts : &s->stats->loop[i].requests,
                                     __ATOMIC_RELAXED);
    n->nkids = bench_tree_pids(s->pid, n->kids, SMP_MAX_KIDS);
    if (n->nkids > SMP_MAX_KIDS) n->nkids = SMP_MAX_KIDS;
    for (int i = 0; i < n->nkids; i++) n->kid_cpu[i] = bench_cpu_us(n->kids[i]);
}

static void measure(bench_ctx *ctx, int i, int run, void *arg) {
    smp_state *st = arg;
    smp_srv *s = &st->srv[i];
    for (int m = 0; m < NMETRIC; m++) st->v[i][m][run] = NAN;
    if (s->failed) return;
    snap a, b;
    take(s, st->churn, &a);
    uint64_t t0 = bench_now_ns();
    bench_wrk w = bench_wrk_run(s->port, SMP_CONNS, st->seconds, st->churn ? CHURN_HEADER : NULL);
    double wall_us = (double)(bench_now_ns() - t0) / 1e3;
    take(s, st->churn, &b);
    if (!w.ok) {
        bench_note(ctx, "%s, %s: run %d failed (%s)", s->label, st->churn ? "churn" : "keepalive", run,
                   w.errors[0] ? w.errors : "no answers");
        return;
    }
    if (w.errors[0])
        bench_note(ctx, "%s, %s, run %d: wrk reported %s", s->label, st->churn ? "churn" : "keepalive", run, w.errors);
    st->v[i][M_RPS][run] = w.rps;
    st->v[i][M_CPU][run] = (b.cpu - a.cpu) / w.requests;
    if (a.csw >= 0 && b.csw >= a.csw) st->v[i][M_CSW][run] = (double)(b.csw - a.csw) / w.requests;
    st->v[i][M_WRK_CPU][run] = 100.0 * w.cpu_us / wall_us;
    st->v[i][M_SRV_CPU][run] = 100.0 * (b.cpu - a.cpu) / wall_us;
    if (s->stats && s->loops > 1) {
        uint64_t tot = 0, max = 0;
        for (int l = 0; l < s->loops; l++) {
            uint64_t d = b.loop[l] - a.loop[l];
            tot += d;
            if (d > max) max = d;
        }
        if (tot) st->v[i][M_LOOP_SHARE][run] = (double)max / (double)tot;
    }
    /* Worker processes (braid's children, nginx's workers): the busiest's CPU share. */
    if (!s->threads && s->loops > 1) {
        double tot = 0, max = 0;
        for (int k = 0; k < b.nkids; k++)
            for (int j = 0; j < a.nkids; j++)
                if (a.kids[j] == b.kids[k] && isfinite(a.kid_cpu[j]) && isfinite(b.kid_cpu[k])) {
                    double d = b.kid_cpu[k] - a.kid_cpu[j];
                    tot += d;
                    if (d > max) max = d;
                }
        if (tot > 0) st->v[i][M_PROC_SHARE][run] = max / tot;
    }
}

/* ---- the experiment ------------------------------------------------------------------------------ */
static void add_srv(smp_state *st, const char *method, bool threads, int loops) {
    if (st->nsrv >= SMP_MAX_SRV) return;
    smp_srv *s = &st->srv[st->nsrv++];
    memset(s, 0, sizeof *s);
    s->method = method;
    s->threads = threads;
    s->loops = loops;
    s->pid = -1;
    char impl[40];
    if (method) snprintf(impl, sizeof impl, "braid-%s-%c", method, threads ? 't' : 'p');
    else snprintf(impl, sizeof impl, "nginx");
    memcpy(s->impl, impl, sizeof impl);
    snprintf(s->label, sizeof s->label, "%s/%d", impl, loops);
}

static int run(bench_ctx *ctx) {
    if (!bench_have_program("wrk")) {
        bench_note(ctx, "wrk not found (apt-get install wrk): the smp experiment was skipped");
        return 0;
    }
    smp_state *st = calloc(1, sizeof *st);
    if (!st) return 1;
    signal(SIGPIPE, SIG_IGN);
    static const char *const methods[] = { "reuseport", "exclusive", "acceptor", "shared" };
    bool nginx = bench_nginx_bin() != NULL;
    if (ctx->full) {
        /* every method, threads and processes, 1 and 2 loops */
        for (int l = 1; l <= 2; l++)
            for (int m = 0; m < 4; m++)
                for (int t = 0; t < 2; t++) add_srv(st, methods[m], t == 0, l);
    } else {
        /* quick (~45 s): processes only, one loop by reuseport, two by every method */
        add_srv(st, "reuseport", false, 1);
        for (int m = 0; m < 4; m++) add_srv(st, methods[m], false, 2);
        if (!ctx->smoke) add_srv(st, "exclusive", true, 2);
        bench_note(ctx, "quick mode measures processes by every method at 2 loops, reuseport at 1 loop and "
                        "exclusive in threads; --full adds threads and processes by every method at 1 and 2 loops");
    }
    if (nginx) {
        add_srv(st, NULL, false, 1);
        add_srv(st, NULL, false, 2);
    } else {
        bench_note(ctx, "nginx not found (apt-get install nginx-light): its rows were skipped");
    }
    const char *names[SMP_MAX_SRV];
    for (int i = 0; i < st->nsrv; i++) {
        names[i] = st->srv[i].label;
        if (!start_server(ctx, &st->srv[i])) {
            st->srv[i].failed = true;
            bench_note(ctx, "%s did not start; skipped", st->srv[i].label);
        }
    }
    st->seconds = ctx->full ? 5 : 1;
    for (int w = 0; w < 2; w++) {
        st->churn = w == 1;
        const char *load = st->churn ? "churn" : "keepalive";
        if (ctx->full)   /* warm-up, untimed */
            for (int i = 0; i < st->nsrv; i++)
                if (!st->srv[i].failed) (void)bench_wrk_run(st->srv[i].port, SMP_CONNS, 1, st->churn ? CHURN_HEADER : NULL);
        bench_alternate(ctx, load, st->nsrv, names, measure, st);
        for (int i = 0; i < st->nsrv; i++) {
            smp_srv *s = &st->srv[i];
            if (s->failed) continue;
            bench_row *row = bench_row_begin(ctx, s->impl, "epoll");
            bench_row_param_str(row, "load", load);
            bench_row_param_int(row, "loops", s->loops);
            for (int m = 0; m < NMETRIC; m++) {
                if ((m == M_LOOP_SHARE && (!s->method || s->loops < 2)) ||
                    (m == M_PROC_SHARE && (s->threads || s->loops < 2)))
                    continue;
                bench_row_metric(row, metric_names[m], st->v[i][m], ctx->runs, metric_units[m]);
            }
            bench_row_end(row);
        }
        bench_progress_fraction(ctx, (w + 1) / 2.0);
    }
    for (int i = 0; i < st->nsrv; i++) stop_server(&st->srv[i]);
    bench_note(ctx, "wrk -t1 -c%d, %d s per run, and the servers unpinned on the same 2 cores: wrk's own CPU is "
                    "the wrk_cpu_pct column (100 = one core)", SMP_CONNS, st->seconds);
    free(st);
    return 0;
}

/* ---- the conclusion ------------------------------------------------------------------------------- */
static const bench_row *find(bench_ctx *ctx, const char *impl, const char *load, int loops) {
    char lf[32], nf[32];
    snprintf(lf, sizeof lf, "load=%s", load);
    snprintf(nf, sizeof nf, "loops=%d", loops);
    return bench_find_row(ctx, impl, NULL, lf, nf, NULL);
}

static double median_of(const bench_row *r, const char *metric) {
    double md;
    return r && bench_row_metric_get(r, metric, &md, NULL, NULL) ? md : NAN;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    static const char *const loads[] = { "keepalive", "churn" };
    /* The braid impls present, in row order. */
    const char *impls[SMP_MAX_SRV];
    int ni = 0;
    for (int i = 0; i < bench_nrows(ctx); i++) {
        const char *im = bench_row_impl(bench_get_row(ctx, i));
        bool seen = false;
        for (int k = 0; k < ni; k++) seen |= !strcmp(impls[k], im);
        if (!seen && ni < SMP_MAX_SRV && strncmp(im, "nginx", 5)) impls[ni++] = im;
    }
    for (int l = 0; l < 2; l++) {
        const char *load = loads[l];
        const bench_row *n1 = find(ctx, "nginx", load, 1), *n2 = find(ctx, "nginx", load, 2);
        fprintf(html, "<p><b>%s</b> (%s):</p>\n<ul>\n", load,
                l ? "a new connection per request" : "64 keep-alive connections");
        double r, lo, hi;
        if (n1 && n2 && bench_pair_ratio(n2, n1, "req_per_s", &r, &lo, &hi))
            fprintf(html, "<li>nginx 2 workers &divide; 1 worker: %.2fx req/s (%.2f&ndash;%.2f)</li>\n", r, lo, hi);
        for (int k = 0; k < ni; k++) {   /* one loop against one worker: the cost of the server itself */
            const bench_row *b1 = find(ctx, impls[k], load, 1);
            if (b1 && n1 && bench_pair_ratio(b1, n1, "server_cpu_us_per_req", &r, &lo, &hi))
                fprintf(html, "<li>%s, 1 loop: %.2f &micro;s of server CPU per request, %.2fx nginx 1 worker's "
                              "(%.2f&ndash;%.2f)%s</li>\n", impls[k], median_of(b1, "server_cpu_us_per_req"), r, lo, hi,
                        r > 1.05 ? ": braid loses here" : "");
        }
        for (int k = 0; k < ni; k++) {
            const bench_row *b1 = find(ctx, impls[k], load, 1), *b2 = find(ctx, impls[k], load, 2);
            if (!b2) continue;
            fprintf(html, "<li>%s, 2 loops: %.0f req/s", impls[k], median_of(b2, "req_per_s"));
            if (b1 && bench_pair_ratio(b2, b1, "req_per_s", &r, &lo, &hi))
                fprintf(html, ", %.2fx its 1 loop (target &ge; 1.7x: %s)", r, r >= 1.7 ? "met" : "not met");
            if (n2 && bench_pair_ratio(b2, n2, "req_per_s", &r, &lo, &hi))
                fprintf(html, "; against nginx 2 workers %.2fx req/s (%.2f&ndash;%.2f, target &ge; 1x: %s)", r, lo, hi,
                        r >= 1.0 ? "met" : "not met");
            if (n2 && bench_pair_ratio(b2, n2, "server_cpu_us_per_req", &r, &lo, &hi))
                fprintf(html, " and %.2fx its CPU per request", r);
            double share = median_of(b2, "busiest_loop_share"), csw = median_of(b2, "ctx_switches_per_req");
            if (isfinite(share)) fprintf(html, "; the busier loop took %.0f%% of the %s", 100 * share,
                                         l ? "connections" : "requests");
            if (isfinite(csw)) fprintf(html, "; %.2f context switches per %s", csw, l ? "connection" : "request");
            fprintf(html, "</li>\n");
        }
        if (n2) {
            double share = median_of(n2, "busiest_proc_cpu_share"), csw = median_of(n2, "ctx_switches_per_req");
            fprintf(html, "<li>nginx, 2 workers: %.0f req/s; the busier worker used %.0f%% of the workers' CPU; "
                          "%.2f context switches per %s</li>\n",
                    median_of(n2, "req_per_s"), 100 * share, csw, l ? "connection" : "request");
        }
        const bench_row *sh = find(ctx, "braid-shared-p", load, 2), *ex = find(ctx, "braid-exclusive-p", load, 2);
        if (l && sh && ex && bench_pair_ratio(sh, ex, "ctx_switches_per_req", &r, &lo, &hi))
            fprintf(html, "<li>The herd: with every loop woken (shared), a connection costs %.2fx the context "
                          "switches of wake-one (exclusive), processes, 2 loops (%.2f&ndash;%.2f)</li>\n", r, lo, hi);
        fprintf(html, "</ul>\n");
    }
    /* Who limits req/s: wrk (one thread: at most one core), the server, or
     * the machine (both together near its 2 cores, or other load). */
    double wrk_max = 0, pair_max = 0;
    for (int i = 0; i < bench_nrows(ctx); i++) {
        const bench_row *r = bench_get_row(ctx, i);
        double w = median_of(r, "wrk_cpu_pct"), sv = median_of(r, "server_cpu_pct");
        if (isfinite(w) && w > wrk_max) wrk_max = w;
        if (isfinite(w) && isfinite(sv) && w + sv > pair_max) pair_max = w + sv;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    fprintf(html, "<p>The load generator: wrk -t1 used at most %.0f%% of one core (the largest row's median), and "
                  "wrk and the server together at most %.0f%% of the %ld cores they share. ",
            wrk_max, pair_max, ncpu);
    if (wrk_max >= 85)
        fprintf(html, "wrk is close to a whole core, so it is the bottleneck: a 2-loop server cannot reach 1.7x one "
                      "loop's req/s here whatever it does. ");
    else if (pair_max >= 85.0 * (double)ncpu)
        fprintf(html, "The pair fills the machine: a second loop can only take CPU from wrk, so the 1.7x target for "
                      "2 loops is out of reach on this machine. ");
    else
        fprintf(html, "Neither wrk nor the pair filled the machine: other load took the rest (see the load average), "
                      "so req/s measures the scheduler's share as much as the servers. ");
    fprintf(html, "Server CPU per request is the comparison that does not depend on how the cores are split. Ratios "
                  "are pairwise medians over alternating runs.</p>\n");
}

BENCH_EXPERIMENT(smp,
    .title = "N loops on one port: braid_serve's methods vs nginx workers",
    .question = "When 1 or 2 braid loops serve one port (braid_serve: SO_REUSEPORT, one socket with "
                "EPOLLEXCLUSIVE, an acceptor handing out connections, or one socket waking every loop), in "
                "threads or processes, how many HTTP requests per second and how much CPU per request do they "
                "take, how evenly do the loops share the work, and how many wake-ups does a new connection cost "
                "— against nginx with 1 and 2 workers?",
    .method = "Every server answers GET / with 200 text/plain \"Hello, World!\" on 127.0.0.1 and is started once; "
              "wrk -t1 -c64 runs against each in turn, alternating (1 s per run quick, 5 s full). Loads: keepalive "
              "(64 persistent connections) and churn (wrk -H 'Connection: close': every request a new TCP "
              "connection, the server closing it). braid: `braid-bench serve http --threads|--processes N "
              "--method M` on braid_serve (epoll, drain 1 s); nginx 1.22: worker_processes N, access_log off, "
              "keepalive_requests raised. Server CPU = utime+stime of the server and its children from /proc "
              "over the run / requests; context switches = voluntary + involuntary of every thread of every "
              "server process over the run / requests (in churn: per accepted connection — the herd's extra "
              "wake-ups show here); busiest_loop_share = the busier loop's share of requests (keepalive) or "
              "accepts (churn), from per-loop counters braid-bench's server keeps in a shared file; "
              "busiest_proc_cpu_share = the busiest worker process's share of the workers' CPU (process "
              "servers, nginx included); wrk_cpu_pct and server_cpu_pct = wrk's and the server's CPU over the "
              "run's wall time (100 = one core).",
    .run = run, .conclude = conclude, .quick_seconds = 45, .quick_runs = 3, .full_seconds = 1900,
    .ratio_base = "braid-reuseport-p", .plot_x = "loops",
    .plot_metric = "req_per_s,server_cpu_us_per_req,ctx_switches_per_req",
    .headline = "req_per_s,server_cpu_us_per_req");
