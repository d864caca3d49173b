/* http: braid's HTTP/1.1 server against nginx, a hand-written epoll
 * responder and Twisted web, all answering GET / with 200, text/plain and
 * the 13-byte body "Hello, World!" over keep-alive connections.
 *
 * Load: wrk -t1 (one client thread) at 16 and 256 connections. Servers:
 *   braid-1p / braid-2p   `braid-bench serve http --processes 1|2`: 1 or 2
 *                         loops in processes on braid_serve (braid/process.h),
 *                         sharing the port with SO_REUSEPORT (the supervisor
 *                         process idles; its CPU is counted);
 *   nginx-1w / nginx-2w   worker_processes 1 / 2, access_log off,
 *                         `return 200 "Hello, World!"`, non-daemon, temp prefix,
 *                         keepalive_requests raised so wrk never reconnects;
 *   epoll-min             bench/peers/http_epoll.c: counts "\r\n\r\n" and
 *                         writes a canned answer (no parsing, no Date: a floor);
 *   twisted               twisted.web on the epoll reactor (python3).
 * Every server is started once, then the wrk runs alternate among them
 * (rotating which goes first). Metrics per run: wrk's req/s and its p50/p99
 * latency, and server CPU µs per request — utime+stime of the server process
 * and its children (/proc) over the run divided by wrk's request count. On
 * a 2-core machine wrk and the server share the CPUs, so CPU per request is
 * what separates servers; req/s also depends on how the scheduler splits the
 * cores. A missing peer (wrk, nginx, twisted) is skipped with a note. */
#include "bench.h"

#include <braid.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <math.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ==== the braid server ===================================================================== */
static braid_deferred *hello(braid_http_request *req, void *arg) {
    (void)arg;
    braid_http_request_respond(req, 200, "text/plain", "Hello, World!", 13);
    return NULL;
}

static int serve_one(int port, const char *backend, double seconds) {
    braid_loop *loop;
    braid_loop_options o = { .backend = (braid_backend)bench_backend(backend), .flags = BRAID_LOOP_STRICT_BACKEND };
    if (braid_loop_new(&o, &loop) < 0) {
        fprintf(stderr, "serve http: backend %s unavailable\n", backend);
        return 77;
    }
    braid_http_server *s;
    if (braid_http_server_new(loop, NULL, &s) < 0) return 1;
    braid_http_server_route(s, "GET", "/", 0, hello, NULL);
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1:backlog=511", port);
    braid_deferred *d = braid_http_server_listen(s, ep);
    braid_result r;
    if (braid_deferred_take(d, &r) < 0 || r.failure) {
        char buf[256] = "";
        if (r.failure) braid_failure_format(r.failure, buf, sizeof buf);
        fprintf(stderr, "serve http: listen %s: %s\n", ep, buf);
        return 1;
    }
    braid_deferred_unref(d);
    if (seconds > 0) braid_timer_call_later(loop, (uint64_t)(seconds * 1e9), bench_stop_loop, loop);
    braid_loop_run(loop);
    return 0;        /* the process exits; connections close with it */
}

/* N loops on braid_serve (threads or processes), one HTTP server per loop.
 * With a stats file, each loop counts its accepts and requests there
 * (bench_loop_stats: the smp experiment reads the balance between loops). */
typedef struct http_multi {
    braid_http_server *srv[BENCH_LOOP_STATS_MAX];
    braid_factory counting[BENCH_LOOP_STATS_MAX];
    bench_counting link[BENCH_LOOP_STATS_MAX];
    bench_loop_stats *stats;
} http_multi;

static braid_deferred *hello_counted(braid_http_request *req, void *arg) {
    __atomic_fetch_add((uint64_t *)arg, 1, __ATOMIC_RELAXED);
    return hello(req, NULL);
}

static braid_factory *multi_factory(braid_loop *loop, unsigned i, void *arg) {
    http_multi *m = arg;
    if (braid_http_server_new(loop, NULL, &m->srv[i]) < 0) return NULL;
    if (!m->stats) {
        braid_http_server_route(m->srv[i], "GET", "/", 0, hello, NULL);
        return braid_http_server_factory(m->srv[i]);
    }
    braid_http_server_route(m->srv[i], "GET", "/", 0, hello_counted, &m->stats->loop[i].requests);
    m->link[i] = (bench_counting){ braid_http_server_factory(m->srv[i]), &m->stats->loop[i].accepts };
    bench_counting_factory_init(&m->counting[i], &m->link[i]);
    return &m->counting[i];
}

static void multi_factory_done(braid_factory *f, unsigned i, void *arg) {
    (void)f;
    http_multi *m = arg;
    braid_http_server_free(m->srv[i]);
    m->srv[i] = NULL;
}

/* --seconds: a thread that sends the SIGTERM braid_serve stops on. It is
 * started with every signal blocked: a thread that left SIGCHLD unblocked
 * took the children's exit signals while it lived (the kernel gives a
 * process-wide signal to a thread that does not block it, and SIGCHLD's
 * default action discards it), which left a supervisor that reaped on
 * SIGCHLD alone waiting for ever (braid_serve watches pidfds now). */
static void *stop_later(void *arg) {
    double secs = *(double *)arg;
    struct timespec ts = { (time_t)secs, (long)((secs - (double)(time_t)secs) * 1e9) };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
    kill(getpid(), SIGTERM);
    return NULL;
}

static int serve_multi(int port, const char *backend, double seconds, int loops, bool threads,
                       const char *method, const char *stats_path) {
    http_multi *m = calloc(1, sizeof *m);
    if (!m) return 1;
    if (stats_path && !(m->stats = bench_loop_stats_map(stats_path, true))) {
        fprintf(stderr, "serve http: --stats-file %s: %s\n", stats_path, strerror(errno));
        return 1;
    }
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1:backlog=511", port);
    braid_serve_options o = {
        .loops = (unsigned)loops, .processes = !threads, .method = (braid_serve_method)bench_serve_method(method),
        .backend = (braid_backend)bench_backend(backend), .drain_timeout = BRAID_SECONDS(1),
        .factory = multi_factory, .factory_done = multi_factory_done, .arg = m,
    };
    static double secs;
    secs = seconds;
    /* The stop signals are blocked here already, before the thread exists:
     * a SIGTERM that came before braid_serve blocks them would end the
     * process instead of stopping the run. They stay blocked after it (the
     * process exits next): a late SIGTERM of the thread is then dropped. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGTERM);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    if (seconds > 0) {
        sigset_t all, mine;
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &mine);
        pthread_t t;
        if (pthread_create(&t, NULL, stop_later, &secs) == 0) pthread_detach(t);
        pthread_sigmask(SIG_SETMASK, &mine, NULL);
    }
    int rc = braid_serve(ep, &o, NULL);
    if (rc < 0) fprintf(stderr, "serve http: braid_serve %s: %s\n", ep, braid_strerror(rc));
    bench_loop_stats_unmap(m->stats);
    free(m);
    return rc < 0 ? 1 : 0;
}

/* braid-bench serve http --port P [--processes N | --threads N] [--method M]
 *                        [--stats-file F] [--backend B] [--seconds S] */
static int serve(int argc, char **argv) {
    int port = 0, procs = 0, threads = 0;
    const char *backend = "epoll", *method = "reuseport", *stats_path = NULL;
    double seconds = 0;
    const bench_opt opts[] = {
        BENCH_SERVE_PORT(&port),
        { .name = "--processes", .kind = BENCH_OPT_INT, .value = &procs, .metavar = "N",
          .help = "N loops in N processes on braid_serve (max 64; neither this nor --threads: one loop, no supervisor)" },
        { .name = "--threads", .kind = BENCH_OPT_INT, .value = &threads, .metavar = "N",
          .help = "N loops in N threads on braid_serve (max 64)" },
        BENCH_SERVE_METHOD(&method),
        { .name = "--stats-file", .kind = BENCH_OPT_STR, .value = &stats_path, .metavar = "F",
          .help = "with --processes/--threads: per-loop accept and request counts, mapped shared (bench_loop_stats)" },
        BENCH_SERVE_BACKEND(&backend),
        BENCH_SERVE_SECONDS(&seconds),
        { 0 } };
    int rc;
    if (!bench_serve_args("http", argc, argv, opts, &rc)) return rc;
    if (port <= 0) { fprintf(stderr, "braid-bench serve http: --port %d: not a port\n", port); return 2; }
    if (procs > 0 && threads > 0) { fprintf(stderr, "braid-bench serve http: --processes or --threads, not both\n"); return 2; }
    signal(SIGPIPE, SIG_IGN);
    if (procs <= 0 && threads <= 0) return serve_one(port, backend, seconds);
    int loops = threads > 0 ? threads : procs;
    return serve_multi(port, backend, seconds, loops > 64 ? 64 : loops, threads > 0, method, stats_path);
}

/* ==== peers ================================================================================ */
typedef struct srv {
    const char *name;         /* row impl */
    pid_t pid;
    int port;
    char dir[128];            /* nginx prefix */
    bool failed;
} srv;

static bool start_server(bench_ctx *ctx, srv *s) {
    char portbuf[16];
    s->port = bench_free_port();
    snprintf(portbuf, sizeof portbuf, "%d", s->port);
    if (!strncmp(s->name, "braid-", 6)) {
        char *argv[] = { (char *)ctx->self_exe, "serve", "http", "--port", portbuf, "--processes",
                         !strcmp(s->name, "braid-2p") ? "2" : "1", NULL };
        s->pid = bench_spawn_quiet(argv);
    } else if (!strncmp(s->name, "nginx-", 6)) {
        s->pid = bench_nginx_hello_start(!strcmp(s->name, "nginx-2w") ? 2 : 1, s->port, s->dir, sizeof s->dir);
    } else if (!strcmp(s->name, "epoll-min")) {
        char exe[1024];
        snprintf(exe, sizeof exe, "%s", ctx->self_exe);
        char *slash = strrchr(exe, '/');
        snprintf(slash ? slash + 1 : exe, sizeof exe - (size_t)(slash ? slash + 1 - exe : 0),
                 "braid-bench-http-epoll");
        char *argv[] = { exe, portbuf, NULL };
        s->pid = bench_spawn_quiet(argv);
    } else {
        char script[1024];
        snprintf(script, sizeof script, "%s/peers/http_twisted.py", ctx->data_dir);
        char *argv[] = { "/usr/bin/python3", script, portbuf, NULL };
        s->pid = bench_spawn_quiet(argv);
    }
    if (s->pid < 0 || !bench_wait_accepting(s->pid, s->port)) {
        if (s->pid > 0) { kill(s->pid, SIGKILL); waitpid(s->pid, NULL, 0); }
        return false;
    }
    return true;
}

static void stop_server(srv *s) {
    if (!strncmp(s->name, "nginx-", 6)) bench_nginx_stop(s->pid, s->dir);   /* and its directory */
    else if (s->pid > 0) bench_stop_process(s->pid, SIGTERM, 3.0);
    s->pid = -1;
}

/* ==== the experiment ========================================================================== */
#define MAX_SRV 8
typedef struct hstate {
    srv servers[MAX_SRV];
    int nsrv, conns, seconds;
    double rps[MAX_SRV][BENCH_MAX_RUNS], p50[MAX_SRV][BENCH_MAX_RUNS], p99[MAX_SRV][BENCH_MAX_RUNS],
           cpu[MAX_SRV][BENCH_MAX_RUNS];
} hstate;

static void measure(bench_ctx *ctx, int i, int run, void *arg) {
    hstate *h = arg;
    srv *s = &h->servers[i];
    h->rps[i][run] = h->p50[i][run] = h->p99[i][run] = h->cpu[i][run] = NAN;
    if (s->failed) return;
    double c0 = bench_tree_cpu_us(s->pid);
    bench_wrk r = bench_wrk_run(s->port, h->conns, h->seconds, NULL);
    double c1 = bench_tree_cpu_us(s->pid);
    if (!r.ok) {
        bench_note(ctx, "%s, %d conns: run %d failed (%s)", s->name, h->conns, run,
                   r.errors[0] ? r.errors : "no answers");
        return;
    }
    if (r.errors[0]) bench_note(ctx, "%s, %d conns, run %d: wrk reported %s", s->name, h->conns, run, r.errors);
    h->rps[i][run] = r.rps;
    h->p50[i][run] = r.p50_us;
    h->p99[i][run] = r.p99_us;
    h->cpu[i][run] = (c1 - c0) / r.requests;
}

static int run(bench_ctx *ctx) {
    if (!bench_have_program("wrk")) {
        bench_note(ctx, "wrk not found (apt-get install wrk): the http experiment was skipped");
        return 0;
    }
    hstate *h = calloc(1, sizeof *h);
    if (!h) return 1;
    signal(SIGPIPE, SIG_IGN);
    const char *names[MAX_SRV];
    h->servers[h->nsrv++] = (srv){ .name = "braid-1p" };
    h->servers[h->nsrv++] = (srv){ .name = "braid-2p" };
    if (bench_nginx_bin()) {
        h->servers[h->nsrv++] = (srv){ .name = "nginx-1w" };
        h->servers[h->nsrv++] = (srv){ .name = "nginx-2w" };
    } else {
        bench_note(ctx, "nginx not found (apt-get install nginx-light): its rows were skipped");
    }
    h->servers[h->nsrv++] = (srv){ .name = "epoll-min" };
    if (bench_have_python_module("twisted")) h->servers[h->nsrv++] = (srv){ .name = "twisted" };
    else bench_note(ctx, "python3-twisted not importable: the Twisted web server was skipped");
    for (int i = 0; i < h->nsrv; i++) {
        names[i] = h->servers[i].name;
        if (!start_server(ctx, &h->servers[i])) {
            h->servers[i].failed = true;
            bench_note(ctx, "%s did not start; skipped", h->servers[i].name);
        }
    }
    /* wrk takes whole seconds: 1 s runs (3 alternating runs in quick mode, quick_runs) */
    h->seconds = ctx->full ? 5 : 1;
    static const int levels[] = { 16, 256 };
    for (int k = 0; k < (ctx->smoke ? 1 : 2); k++) {
        h->conns = levels[k];
        if (ctx->full)                           /* warm-up (full mode only: quick stays short) */
            for (int i = 0; i < h->nsrv; i++)
                if (!h->servers[i].failed) (void)bench_wrk_run(h->servers[i].port, h->conns, 1, NULL);
        char label[32];
        snprintf(label, sizeof label, "%d conns", h->conns);
        bench_alternate(ctx, label, h->nsrv, names, measure, h);
        for (int i = 0; i < h->nsrv; i++) {
            if (h->servers[i].failed) continue;
            bench_row *row = bench_row_begin(ctx, h->servers[i].name, "epoll");
            bench_row_param_int(row, "conns", h->conns);
            bench_row_metric(row, "req_per_s", h->rps[i], ctx->runs, "req/s");
            bench_row_metric(row, "server_cpu_us_per_req", h->cpu[i], ctx->runs, "us");
            bench_row_metric(row, "p50_us", h->p50[i], ctx->runs, "us");
            bench_row_metric(row, "p99_us", h->p99[i], ctx->runs, "us");
            bench_row_end(row);
        }
        bench_progress_fraction(ctx, (k + 1) / 2.0);
    }
    for (int i = 0; i < h->nsrv; i++) stop_server(&h->servers[i]);
    bench_note(ctx, "wrk -t1 and the servers unpinned on a shared 2-core machine; wrk %d s per run; "
                    "epoll-min answers without parsing (a floor, no Date header)", h->seconds);
    free(h);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    fprintf(html, "<p>");
    for (int k = 0; k < 2; k++) {
        const char *cv = k ? "conns=256" : "conns=16";
        const bench_row *b = bench_find_row(ctx, "braid-1p", NULL, cv, NULL);
        const bench_row *n = bench_find_row(ctx, "nginx-1w", NULL, cv, NULL);
        if (!b || !n) continue;
        double cr, rr, lo, hi;
        bool okc = bench_pair_ratio(b, n, "server_cpu_us_per_req", &cr, &lo, &hi);
        bool okr = bench_pair_ratio(b, n, "req_per_s", &rr, &lo, &hi);
        fprintf(html, "At %s connections, braid (1 process) against nginx (1 worker): CPU per request %s%.2fx "
                      "(target &le; 0.8x: %s), req/s %s%.2fx (target &ge; 1x: %s)",
                cv + 6, okc ? "" : "n/a ", okc ? cr : 0, okc && cr <= 0.8 ? "met" : "not met",
                okr ? "" : "n/a ", okr ? rr : 0, okr && rr >= 1.0 ? "met" : "not met");
        /* the floor: the epoll responder makes the same two system calls per
         * request and does no HTTP work at all */
        const bench_row *e = bench_find_row(ctx, "epoll-min", NULL, cv, NULL);
        double er, br;
        if (e && bench_pair_ratio(e, n, "server_cpu_us_per_req", &er, &lo, &hi) &&
            bench_pair_ratio(b, e, "server_cpu_us_per_req", &br, &lo, &hi))
            fprintf(html, "; the no-parsing epoll floor costs %.2fx nginx's CPU per request and braid "
                          "%.2fx the floor", er, br);
        fprintf(html, ". ");
    }
    fprintf(html, "Ratios are pairwise medians over alternating runs.</p>\n");
}

BENCH_EXPERIMENT(http,
    .title = "HTTP/1.1 hello world: braid vs nginx, epoll, Twisted web",
    .question = "How much server CPU does one keep-alive HTTP request cost in braid's HTTP server, "
                "against nginx and a hand-written epoll responder, and how many requests per second "
                "does wrk get at 16 and 256 connections?",
    .method = "wrk -t1 -c16/-c256 --latency against each server, alternating runs, servers started "
              "once; server CPU (process + children, /proc) over each run divided by wrk's request "
              "count; GET / answered 200 text/plain \"Hello, World!\" with keep-alive.",
    .run = run, .serve = serve, .conclude = conclude, .quick_seconds = 42, .quick_runs = 3, .full_seconds = 600,
    .ratio_base = "braid-1p", .plot_x = "conns", .plot_metric = "server_cpu_us_per_req",
    .headline = "server_cpu_us_per_req,req_per_s");
