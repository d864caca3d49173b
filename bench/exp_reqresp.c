/* reqresp and echo: braid's stream transports as a server, beside a minimal
 * hand-written epoll server (the practical limit), libuv, libevent and
 * Twisted serving the very same protocols.
 *
 * reqresp: persistent TCP connections on loopback; a request is 16 bytes,
 * two little-endian u64 {seq, x}; the response is {seq, 2x+1}. The load
 * generator (written with braid, epoll backend, in the braid-bench process)
 * runs closed-loop at depth 1 over C = 1, 64, 1024 connections: each
 * connection sends a request, waits for its answer (checked), sends the
 * next. The server runs in its own process (`braid-bench serve reqresp
 * --impl I`, or python3 for Twisted). Metrics per run, over a fixed window
 * after a warm-up: requests/s, p50/p99 latency (client side, from send to
 * complete answer), and the server's CPU time per request (utime+stime from
 * /proc/PID/stat over the window / requests) — the number that separates
 * servers on a 2-core machine where the client competes for the CPUs.
 *
 * echo: bulk throughput; each of C = 1 or 64 connections keeps 64 KiB
 * chunks flowing (a push producer paused by braid's watermarks), the server
 * writes back what it reads; MB/s echoed and server CPU µs per MB.
 *
 * Same work for every server: TCP_NODELAY, backlog 511, 64 KiB reads, all
 * answers to one read in one write. Nothing pinned (taskset): client and
 * server share the 2 cores as the scheduler likes. */
#include "bench.h"
#include "reqresp_peers.h"

#include <braid.h>
#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* ==== the braid server ================================================================== */
typedef struct rr_conn { braid_protocol base; uint8_t part[16]; size_t plen; } rr_conn;

static void rr_data(braid_protocol *p, const void *buf, size_t len) {
    rr_conn *c = (rr_conn *)p;
    uint8_t out[65536 + 16];
    const uint8_t *in = buf;
    while (len) {
        size_t take = len > 65536 ? 65536 : len;
        size_t o = rr_answer(c->part, &c->plen, in, take, out);
        if (o) braid_transport_write(p->transport, out, o);
        in += take;
        len -= take;
    }
}
static void echo_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(p->transport, buf, len);
}
/* The idiomatic braid echo: the transport is the producer of its own writes
 * (reading pauses at the high watermark), so a client slower to read than to
 * write cannot push the server past the hard cap. */
static void echo_made(braid_protocol *p) {
    braid_transport_register_producer(p->transport, braid_transport_producer(p->transport), true);
}
static void echo_lost(braid_protocol *p, const braid_failure *f) {
    (void)f;
    braid_transport_unregister_producer(p->transport);
}
static const braid_protocol_ops rr_ops = { .data_received = rr_data };
static const braid_protocol_ops echo_ops = { .connection_made = echo_made, .data_received = echo_data,
                                             .connection_lost = echo_lost };

static int serve_braid(int port, const char *backend, int mode, double seconds) {
    /* On io_uring, TCP runs by completions (the library's default, see
     * docs/stream.md); BRAID_STREAM_COMPLETIONS=0 measures readiness. */
    braid_loop *loop;
    braid_loop_options o = { .backend = (braid_backend)bench_backend(backend), .flags = BRAID_LOOP_STRICT_BACKEND };
    if (braid_loop_new(&o, &loop) < 0) { fprintf(stderr, "serve: backend %s unavailable\n", backend); return 77; }
    braid_factory f;
    braid_factory_init(&f, mode == RR_MODE_ECHO ? &echo_ops : &rr_ops, sizeof(rr_conn), NULL);
    braid_listener *l;
    int rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .backlog = 511 }, &f), &l);
    if (rc < 0) { fprintf(stderr, "serve: listen: %s\n", braid_strerror(rc)); return 1; }
    if (seconds > 0) braid_timer_call_later(loop, (uint64_t)(seconds * 1e9), bench_stop_loop, loop);
    braid_loop_run(loop);
    return 0;       /* the process exits; connections close with it */
}

/* The fiber-per-connection braid server (bench/exp_fiber.c). */
int rr_serve_fiber(int port, const char *backend, int mode, double seconds);

/* braid-bench serve reqresp --port P [--backend B] [--seconds S]
 *                           [--impl braid|epoll|libuv|libevent|fiber] [--mode reqresp|echo]
 *                           [--model callback|fiber]   (braid: --model fiber = --impl fiber) */
static int serve(int argc, char **argv) {
    int port = 0, mode = RR_MODE_REQRESP;
    const char *backend = "epoll", *impl = "braid", *model = "callback";
    double seconds = 0;
    const char *mode_name = "reqresp";
    const bench_opt opts[] = {
        BENCH_SERVE_PORT(&port),
        BENCH_SERVE_BACKEND(&backend),
        BENCH_SERVE_SECONDS(&seconds),
        { .name = "--impl", .kind = BENCH_OPT_STR, .value = &impl, .metavar = "NAME",
          .help = "server", .choices = "braid|epoll|libuv|libevent|fiber" },
        { .name = "--mode", .kind = BENCH_OPT_STR, .value = &mode_name, .metavar = "M",
          .help = "protocol", .choices = "reqresp|echo" },
        { .name = "--model", .kind = BENCH_OPT_STR, .value = &model, .metavar = "M",
          .help = "braid's model (fiber = --impl fiber)",
          .choices = "callback|fiber" },
        { 0 } };
    int rc;
    if (!bench_serve_args("reqresp", argc, argv, opts, &rc)) return rc;
    if (port <= 0) { fprintf(stderr, "braid-bench serve reqresp: --port %d: not a port\n", port); return 2; }
    mode = !strcmp(mode_name, "echo") ? RR_MODE_ECHO : RR_MODE_REQRESP;
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(impl, "fiber") || !strcmp(model, "fiber")) return rr_serve_fiber(port, backend, mode, seconds);
    if (!strcmp(impl, "braid")) return serve_braid(port, backend, mode, seconds);
    if (seconds > 0) alarm((unsigned)ceil(seconds));
    if (!strcmp(impl, "epoll")) return rr_serve_epoll(port, mode);
    if (!strcmp(impl, "libuv")) return rr_serve_libuv(port, mode);
    if (!strcmp(impl, "libevent")) return rr_serve_libevent(port, mode);
    fprintf(stderr, "serve reqresp: unknown --impl %s\n", impl);
    return 2;
}

/* ==== spawning servers ======================================================================= */
typedef struct impl {
    const char *name;         /* row impl */
    const char *backend;      /* row backend */
    const char *serve_impl;   /* --impl, or NULL for twisted */
} impl;

static pid_t spawn_server(bench_ctx *ctx, const impl *im, int port, int mode) {
    char portbuf[16];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    char script[1024];
    const char *modestr = mode == RR_MODE_ECHO ? "echo" : "reqresp";
    char *argv[16];
    int n = 0;
    if (im->serve_impl) {
        argv[n++] = (char *)ctx->self_exe;
        argv[n++] = "serve";
        argv[n++] = "reqresp";
        argv[n++] = "--port"; argv[n++] = portbuf;
        argv[n++] = "--impl"; argv[n++] = (char *)im->serve_impl;
        argv[n++] = "--backend"; argv[n++] = (char *)im->backend;
        argv[n++] = "--mode"; argv[n++] = (char *)modestr;
    } else {
        snprintf(script, sizeof script, "%s/peers/reqresp_twisted.py", ctx->data_dir);
        argv[n++] = "/usr/bin/python3";
        argv[n++] = script;
        argv[n++] = portbuf;
        argv[n++] = (char *)modestr;
    }
    argv[n] = NULL;
    pid_t pid;
    if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0) return -1;
    if (bench_wait_accepting(pid, port)) return pid;   /* ready when it accepts */
    bench_stop_process(pid, SIGKILL, 1.0);
    return -1;
}

static void stop_server(pid_t pid) { bench_stop_process(pid, SIGTERM, 1.0); }

/* ==== the load generator (braid, epoll) ======================================================== */
#define HIST_BUCKETS (64 * 16)
typedef struct hist { uint64_t b[HIST_BUCKETS]; uint64_t n; } hist;
static int hist_index(uint64_t v) {
    if (v < 16) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    return (msb - 3) * 16 + (int)((v >> (msb - 4)) & 15);
}
static uint64_t hist_value(int i) {
    if (i < 16) return (uint64_t)i;
    int msb = i / 16 + 3;
    return ((uint64_t)(16 + i % 16) << (msb - 4)) + ((uint64_t)1 << (msb - 4)) / 2;
}
static double hist_pct(const hist *h, double p) {
    uint64_t want = (uint64_t)ceil(p * (double)h->n), seen = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        seen += h->b[i];
        if (seen >= want && h->b[i]) return (double)hist_value(i);
    }
    return NAN;
}

typedef struct gen gen;
typedef struct gconn {
    braid_protocol base;
    gen *g;
    uint64_t seq, x, sent_at;
    uint8_t buf[16];
    size_t have;
    braid_producer prod;       /* echo: keeps chunks flowing */
    bool paused;
} gconn;

struct gen {
    braid_loop *loop;
    int mode;
    bool measuring, stopping;
    uint64_t done, bytes, errors;
    hist h;
    int lost;
};

static void g_send(gconn *c) {
    uint8_t req[16];
    c->x = c->seq * 2654435761u;
    memcpy(req, &c->seq, 8);
    memcpy(req + 8, &c->x, 8);
    c->sent_at = bench_now_ns();
    braid_transport_write(c->base.transport, req, 16);
}

static void g_data(braid_protocol *p, const void *buf, size_t len) {
    gconn *c = (gconn *)p;
    gen *g = c->g;
    if (g->mode == RR_MODE_ECHO) {
        if (g->measuring) g->bytes += len;
        return;
    }
    const uint8_t *in = buf;
    while (len) {
        size_t take = 16 - c->have < len ? 16 - c->have : len;
        memcpy(c->buf + c->have, in, take);
        c->have += take;
        in += take;
        len -= take;
        if (c->have < 16) break;
        c->have = 0;
        uint64_t seq, y;
        memcpy(&seq, c->buf, 8);
        memcpy(&y, c->buf + 8, 8);
        if (seq != c->seq || y != 2 * c->x + 1) g->errors++;
        if (g->measuring) {
            uint64_t lat = bench_now_ns() - c->sent_at;
            g->h.b[hist_index(lat)]++;
            g->h.n++;
            g->done++;
        }
        c->seq++;
        if (!g->stopping) g_send(c);
    }
}

static void g_lost(braid_protocol *p, const braid_failure *f) {
    (void)f;
    ((gconn *)p)->g->lost++;
}

/* echo: a push producer writing 64 KiB chunks until paused by the watermarks */
static char chunk[65536];
static void echo_pump(void *arg) {
    gconn *c = arg;
    if (c->paused || c->g->stopping || !c->base.transport) return;
    for (int i = 0; i < 4 && !c->paused; i++)
        if (braid_transport_write(c->base.transport, chunk, sizeof chunk) < 0) return;
    if (!c->paused) braid_loop_soon(c->g->loop, echo_pump, c);
}
static void prod_pause(braid_producer *p) { ((gconn *)p->arg)->paused = true; }
static void prod_resume(braid_producer *p) {
    gconn *c = p->arg;
    c->paused = false;
    braid_loop_soon(c->g->loop, echo_pump, c);
}
static void prod_stop(braid_producer *p) { ((gconn *)p->arg)->paused = true; }

static const braid_protocol_ops gen_ops = { .data_received = g_data, .connection_lost = g_lost };

typedef struct run_result { double rps, p50, p99, cpu_per, mbps; bool ok; } run_result;

static void window_end(void *arg) { gen *g = arg; braid_loop_stop(g->loop); }

static run_result drive(int port, int nconn, int mode, double warm_s, double window_s, pid_t server) {
    run_result res = { .ok = false };
    gen g = { .mode = mode };
    braid_loop_options o = { .backend = BRAID_BACKEND_EPOLL };
    if (braid_loop_new(&o, &g.loop) < 0) return res;
    gconn *conns = calloc((size_t)nconn, sizeof *conns);
    int made = 0;
    for (; made < nconn; made++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof a) < 0) { if (s >= 0) close(s); break; }
        gconn *c = &conns[made];
        c->base.ops = &gen_ops;
        c->g = &g;
        if (braid_transport_adopt(g.loop, s, &c->base) < 0) { close(s); break; }
        if (mode == RR_MODE_ECHO) {
            c->prod = (braid_producer){ prod_pause, prod_resume, prod_stop, c };
            braid_transport_register_producer(c->base.transport, &c->prod, true);
        }
    }
    if (made == nconn) {
        for (int i = 0; i < nconn; i++) {
            if (mode == RR_MODE_ECHO) braid_loop_soon(g.loop, echo_pump, &conns[i]);
            else g_send(&conns[i]);
        }
        braid_timer_call_later(g.loop, (uint64_t)(warm_s * 1e9), window_end, &g);
        braid_loop_run(g.loop);                     /* warm-up */
        double cpu0 = bench_cpu_us(server);
        uint64_t t0 = bench_now_ns();
        g.measuring = true;
        braid_timer_call_later(g.loop, (uint64_t)(window_s * 1e9), window_end, &g);
        braid_loop_run(g.loop);                     /* the window */
        g.measuring = false;
        double cpu1 = bench_cpu_us(server);
        double secs = (double)(bench_now_ns() - t0) / 1e9;
        if (mode == RR_MODE_ECHO) {
            res.mbps = (double)g.bytes / 1e6 / secs;
            res.cpu_per = g.bytes ? (cpu1 - cpu0) / ((double)g.bytes / 1e6) : NAN;
        } else {
            res.rps = (double)g.done / secs;
            res.p50 = hist_pct(&g.h, 0.50) / 1000.0;
            res.p99 = hist_pct(&g.h, 0.99) / 1000.0;
            res.cpu_per = g.done ? (cpu1 - cpu0) / (double)g.done : NAN;
        }
        res.ok = g.errors == 0 && (mode == RR_MODE_ECHO ? g.bytes > 0 : g.done > 0);
    }
    g.stopping = true;
    for (int i = 0; i < made; i++) {
        braid_transport *t = conns[i].base.transport;
        if (!t) continue;                           /* already lost (the server went away) */
        if (mode == RR_MODE_ECHO) braid_transport_unregister_producer(t);
        braid_transport_abort(t);
    }
    while (g.lost < made && braid_loop_run_once(g.loop, BRAID_LOOP_RUN_NOWAIT) >= 0) {}
    braid_loop_run_once(g.loop, BRAID_LOOP_RUN_NOWAIT);   /* queued echo_pump calls */
    braid_loop_free(g.loop);
    free(conns);
    return res;
}

/* ==== the experiments ============================================================================ */
#define MAX_IMPLS 10
typedef struct rr_state {
    int mode, nconn;
    double warm, window;
    impl impls[MAX_IMPLS];
    int nimpl;
    double rps[MAX_IMPLS][BENCH_MAX_RUNS], p50[MAX_IMPLS][BENCH_MAX_RUNS],
           p99[MAX_IMPLS][BENCH_MAX_RUNS], cpu[MAX_IMPLS][BENCH_MAX_RUNS], mbps[MAX_IMPLS][BENCH_MAX_RUNS];
    bool failed[MAX_IMPLS];
} rr_state;

static void measure(bench_ctx *ctx, int i, int run, void *arg) {
    rr_state *s = arg;
    if (s->failed[i]) { s->rps[i][run] = s->cpu[i][run] = s->p50[i][run] = s->p99[i][run] = s->mbps[i][run] = NAN; return; }
    int port = bench_free_port();
    pid_t pid = spawn_server(ctx, &s->impls[i], port, s->mode);
    if (pid < 0) {
        bench_note(ctx, "%s (%s): server did not start; skipped", s->impls[i].name, s->impls[i].backend);
        s->failed[i] = true;
        s->rps[i][run] = s->cpu[i][run] = s->p50[i][run] = s->p99[i][run] = s->mbps[i][run] = NAN;
        return;
    }
    run_result r = drive(port, s->nconn, s->mode, s->warm, s->window, pid);
    stop_server(pid);
    if (!r.ok) bench_note(ctx, "%s (%s), %d conns: run %d failed or answered wrongly", s->impls[i].name,
                          s->impls[i].backend, s->nconn, run);
    s->rps[i][run] = r.ok ? r.rps : NAN;
    s->p50[i][run] = r.ok ? r.p50 : NAN;
    s->p99[i][run] = r.ok ? r.p99 : NAN;
    s->cpu[i][run] = r.ok ? r.cpu_per : NAN;
    s->mbps[i][run] = r.ok ? r.mbps : NAN;
}

static void build_impls(bench_ctx *ctx, rr_state *s) {
    s->nimpl = 0;
    for (int b = 0; b < ctx->nbackends; b++) {
        /* select cannot watch descriptors >= FD_SETSIZE (1024) */
        if (!strcmp(ctx->backends[b], "select") && s->nconn >= 1000) continue;
        s->impls[s->nimpl++] = (impl){ "braid", ctx->backends[b], "braid" };
    }
    s->impls[s->nimpl++] = (impl){ "epoll-min", "epoll", "epoll" };
#ifdef BENCH_HAVE_LIBUV
    s->impls[s->nimpl++] = (impl){ "libuv", "epoll", "libuv" };
#endif
#ifdef BENCH_HAVE_LIBEVENT
    s->impls[s->nimpl++] = (impl){ "libevent", "epoll", "libevent" };
#endif
    if (bench_have_python_module("twisted")) s->impls[s->nimpl++] = (impl){ "twisted", "epoll", NULL };
}

static int run_mode(bench_ctx *ctx, int mode) {
    static const int rr_conns[] = { 1, 64, 1024 }, echo_conns[] = { 1, 64 };
    const int *conns = mode == RR_MODE_ECHO ? echo_conns : rr_conns;
    int nconns = mode == RR_MODE_ECHO ? 2 : 3;
    if (ctx->smoke) nconns = 1;
    rr_state *s = calloc(1, sizeof *s);
    if (!s) return 1;
    s->mode = mode;
    s->warm = ctx->smoke ? 0.1 : ctx->full ? 1.0 : 0.2;
    s->window = ctx->smoke ? 0.3 : ctx->full ? 5.0 : 0.5;
    signal(SIGPIPE, SIG_IGN);
    for (int k = 0; k < nconns; k++) {
        s->nconn = ctx->smoke ? 64 : conns[k];
        memset(s->failed, 0, sizeof s->failed);
        build_impls(ctx, s);
        const char *names[MAX_IMPLS];
        char labels[MAX_IMPLS][48];
        for (int i = 0; i < s->nimpl; i++) {
            snprintf(labels[i], sizeof labels[i], "%s/%s", s->impls[i].name, s->impls[i].backend);
            names[i] = labels[i];
        }
        char label[64];
        snprintf(label, sizeof label, "%d conns", s->nconn);
        bench_alternate(ctx, label, s->nimpl, names, measure, s);
        for (int i = 0; i < s->nimpl; i++) {
            if (s->failed[i]) continue;
            bench_row *row = bench_row_begin(ctx, s->impls[i].name, s->impls[i].backend);
            bench_row_param_int(row, "conns", s->nconn);
            if (mode == RR_MODE_ECHO) {
                bench_row_metric(row, "mb_per_s", s->mbps[i], ctx->runs, "MB/s");
                bench_row_metric(row, "server_cpu_us_per_mb", s->cpu[i], ctx->runs, "us");
            } else {
                bench_row_metric(row, "req_per_s", s->rps[i], ctx->runs, "req/s");
                bench_row_metric(row, "server_cpu_us_per_req", s->cpu[i], ctx->runs, "us");
                bench_row_metric(row, "p50_us", s->p50[i], ctx->runs, "us");
                bench_row_metric(row, "p99_us", s->p99[i], ctx->runs, "us");
            }
            bench_row_end(row);
        }
    }
    if (!bench_have_python_module("twisted"))
        bench_note(ctx, "python3-twisted not importable: the Twisted server was skipped");
    bench_note(ctx, "client and server unpinned on a shared 2-core machine; the load generator is "
                    "braid (epoll) in the braid-bench process, the server a separate process");
    free(s);
    return 0;
}

/* For the fiber experiment (bench/exp_fiber.c): one reqresp run, this
 * experiment's load generator against `serve reqresp --impl serve_impl`
 * (epoll). 0 and the server's CPU µs per request and req/s, or -1. */
int rr_run_once(bench_ctx *ctx, const char *serve_impl, int nconn, double warm, double window,
                double *cpu_per_req, double *rps) {
    impl im = { serve_impl, "epoll", serve_impl };
    int port = bench_free_port();
    pid_t pid = spawn_server(ctx, &im, port, RR_MODE_REQRESP);
    if (pid < 0) return -1;
    run_result r = drive(port, nconn, RR_MODE_REQRESP, warm, window, pid);
    stop_server(pid);
    *cpu_per_req = r.ok ? r.cpu_per : NAN;
    *rps = r.ok ? r.rps : NAN;
    return r.ok ? 0 : -1;
}

static int run_reqresp(bench_ctx *ctx) { return run_mode(ctx, RR_MODE_REQRESP); }
static int run_echo(bench_ctx *ctx) { return run_mode(ctx, RR_MODE_ECHO); }

BENCH_EXPERIMENT(reqresp,
    .title = "Request/response over TCP: braid vs epoll, libuv, libevent, Twisted",
    .question = "How much server CPU does one small request/response cost over persistent TCP "
                "connections, and how many per second does a closed-loop client get, with 1, 64 "
                "and 1024 connections?",
    .method = "16-byte requests {seq,x} answered with {seq,2x+1}; closed-loop depth-1 braid client "
              "in the bench process, server in its own process; server CPU from /proc over the "
              "measuring window divided by requests (window 0.5 s after 0.2 s of warm-up in quick mode, "
              "5 s after 1 s in --full); TCP_NODELAY and backlog 511 everywhere; "
              "libuv uses uv_try_write, libevent bufferevents, epoll-min direct write(); "
              "braid on uring runs TCP by io_uring completions (the default).",
    .run = run_reqresp, .serve = serve, .quick_seconds = 65, .quick_runs = 3,
    .plot_x = "conns", .plot_metric = "server_cpu_us_per_req", .plot_logx = true);

BENCH_EXPERIMENT(echo,
    .title = "Bulk echo throughput over TCP",
    .question = "How fast does each server echo a continuous stream, over 1 and 64 connections, "
                "and at what CPU cost per megabyte?",
    .method = "each client connection writes 64 KiB chunks from a push producer paused by braid's "
              "watermarks; the server writes back what it reads; MB/s received by the client and "
              "server CPU per MB over the window.",
    .run = run_echo, .quick_seconds = 45, .quick_runs = 3,
    .plot_x = "conns", .plot_metric = "mb_per_s", .plot_logx = true);
