/* overload: the SEDA experiment (Welsh et al., SOSP 2001; Welsh and
 * Culler, USITS 2003), done with an open-loop load generator.
 *
 * Every request needs about 1 ms of blocking work on a shared "device" with
 * C channels (a counting semaphore held across a 1 ms nanosleep: a disk, or
 * a database with C connections). So every server has the same capacity,
 * about C / 1 ms, whatever its threads: what differs is what it does with
 * the requests it cannot serve at once.
 *
 * Servers (each its own process, fresh for every point):
 *   braid-stages     a stage on the loop reads the 16-byte requests, hands
 *                    each to a "work" stage in a pool domain (C threads,
 *                    queue 48) whose admission is driven by the response-time
 *                    controller (target 20 ms, AIMD on a token rate); a stage
 *                    on the loop writes the answers. A refused request is
 *                    answered at once with "rejected" (HTTP's 503).
 *   braid-unbounded  braid's loop and braid_pool_defer (C threads), the
 *                    pool's queue made effectively unbounded (2^24).
 *   threads          a thread per connection, blocking reads and writes.
 *   twisted          Twisted, deferToThread (the reactor's pool).
 *
 * Load: open loop (wrk2's method): requests are due at a constant rate R
 * spread over K connections, whatever the answers; each carries its
 * *intended* send time and latency is measured from it, so a server that
 * stops reading (and makes the generator's writes wait) is charged for the
 * wait — no coordinated omission. R = 0.5, 1, 2, 4 x the capacity measured
 * first (quick: 1 and 4). Metrics per point: goodput (answers "ok" received
 * during the run / its length), p50/p99/max latency of the answered
 * requests (max also counts the age, at the end, of any request still
 * unanswered), rejections, requests unanswered at the end, the p99 of the
 * requests due in the first and in the second half of the run (the growth
 * over the run's length), and the server's RSS (peak, and its growth). */
#include "bench.h"

#include <braid.h>
#include <braid/stage.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define REQ 16
#define STATUS_REJECTED (1ull << 63)

/* ==== the device: C channels, ~1 ms each ========================================================= */
static sem_t device;
static long work_ns = 1000000;
static void device_work(void) {
    while (sem_wait(&device) < 0 && errno == EINTR) {}
    struct timespec ts = { 0, work_ns };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {}
    sem_post(&device);
}

/* ==== braid servers ============================================================================== */
typedef struct oconn {
    atomic_int refs;
    braid_transport *t;      /* loop thread; NULL once lost */
} oconn;
static void oconn_unref(oconn *c) {
    if (atomic_fetch_sub(&c->refs, 1) == 1) free(c);
}
typedef struct oreq {
    oconn *c;
    uint64_t id, intended;
} oreq;
static void oreq_free(void *p) {
    oreq *r = p;
    oconn_unref(r->c);
    free(r);
}
static void answer(oreq *r, bool ok) {
    if (!r->c->t) return;
    uint64_t out[2] = { r->id | (ok ? 0 : STATUS_REJECTED), r->intended };
    braid_transport_write(r->c->t, out, sizeof out);
}

typedef struct sproto {
    braid_protocol base;
    oconn *c;
    uint8_t part[REQ];
    size_t plen;
} sproto;

static braid_stage *work_stage, *reply_stage;
static braid_pool *srv_pool;
static braid_loop *srv_loop;
static bool use_stages;

static braid_result pool_work(void *arg) {
    (void)arg;
    device_work();
    return braid_result_ok(NULL);
}
static braid_result pool_done(braid_result res, void *arg) {
    oreq *r = arg;
    answer(r, true);
    oreq_free(r);
    return res;
}

static void take_request(sproto *p, const uint8_t *b) {
    oreq *r = malloc(sizeof *r);
    memcpy(&r->id, b, 8);
    memcpy(&r->intended, b + 8, 8);
    r->c = p->c;
    atomic_fetch_add(&p->c->refs, 1);
    if (use_stages) {
        braid_stage_event e = BRAID_STAGE_EVENT(r, oreq_free);
        if (braid_stage_enqueue(work_stage, &e) < 0) {
            answer(r, false);   /* full or refused by admission: the sender knows at once */
            braid_stage_event_free(&e);
        }
    } else {
        braid_deferred *d = braid_pool_defer(srv_loop, srv_pool, pool_work, NULL);
        braid_deferred_add(d, pool_done, NULL, r);
        braid_deferred_unref(d);
    }
}

static void s_data(braid_protocol *bp, const void *buf, size_t len) {
    sproto *p = (sproto *)bp;
    const uint8_t *in = buf;
    while (len) {
        size_t take = REQ - p->plen < len ? REQ - p->plen : len;
        memcpy(p->part + p->plen, in, take);
        p->plen += take;
        in += take;
        len -= take;
        if (p->plen == REQ) {
            take_request(p, p->part);
            p->plen = 0;
        }
    }
}
static void s_made(braid_protocol *bp) {
    sproto *p = (sproto *)bp;
    p->c = calloc(1, sizeof *p->c);
    atomic_store(&p->c->refs, 1);
    p->c->t = bp->transport;
}
static void s_lost(braid_protocol *bp, const braid_failure *f) {
    (void)f;
    sproto *p = (sproto *)bp;
    p->c->t = NULL;
    oconn_unref(p->c);
}
static const braid_protocol_ops s_ops = { .connection_made = s_made, .data_received = s_data,
                                          .connection_lost = s_lost };

static void st_work(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st, (void)arg;
    for (size_t i = 0; i < n; i++) {
        device_work();
        if (braid_stage_enqueue(reply_stage, &evs[i]) < 0) abort();   /* reply queue is large */
    }
}
static void st_reply(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st, (void)arg;
    for (size_t i = 0; i < n; i++) answer(evs[i].data, true);
}

/* The controller logs each decision at info level: 20 a second here, too
 * many for the bench's terminal. Warnings and errors go to stderr. */
static void quiet_log(void *ctx, braid_log_level level, const char *msg) {
    (void)ctx;
    if (level >= BRAID_LOG_WARN) fprintf(stderr, "overload server: %s\n", msg);
}

static int serve_braid(int port, int channels, bool stages, double target_ms) {
    braid_loop *loop;
    if (braid_loop_new(&(braid_loop_options){ .log = quiet_log }, &loop) < 0) return 1;
    srv_loop = loop;
    use_stages = stages;
    braid_pool_options po = { .min_threads = (unsigned)channels, .max_threads = (unsigned)channels,
                              .loop = loop, .queue_limit = stages ? 0 : (1u << 24) };
    if (braid_pool_new(&po, &srv_pool) < 0) return 1;
    braid_stage_domain *dl, *dp;
    if (stages) {
        braid_stage_domain_new(loop, NULL, NULL, &dl);
        braid_stage_domain_new(loop, srv_pool, &(braid_stage_domain_options){ .name = "disk" }, &dp);
        /* batch 1: an event held in a batch waits behind the others' work */
        braid_stage_options wo = { .queue_limit = 48, .batch_max = 1, .threads = (unsigned)channels };
        braid_stage_new(dp, "work", st_work, NULL, &wo, &work_stage);
        braid_stage_new(dl, "reply", st_reply, NULL, &(braid_stage_options){ .queue_limit = 1u << 16 },
                        &reply_stage);
        braid_stage_response_control rc = { .period = BRAID_MSEC(50),
                                            .target = (uint64_t)(target_ms * 1e6),
                                            .rate_min = 10, .rate_max = 100000,
                                            .add = 100, .cut = 0.95, .depth = 32 };
        if (braid_stage_control_response(work_stage, &rc) < 0) return 1;
    }
    braid_factory f;
    braid_factory_init(&f, &s_ops, sizeof(sproto), NULL);
    braid_listener *l;
    int rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = port, .backlog = 511 }, &f), &l);
    if (rc < 0) { fprintf(stderr, "serve overload: listen: %s\n", braid_strerror(rc)); return 1; }
    braid_loop_run(loop);
    return 0;   /* killed by the driver */
}

/* ==== thread per connection ===================================================================== */
static void *tpc_conn(void *arg) {
    int fd = (int)(intptr_t)arg;
    uint8_t b[REQ];
    for (;;) {
        size_t got = 0;
        while (got < REQ) {
            ssize_t n = read(fd, b + got, REQ - got);
            if (n <= 0) { close(fd); return NULL; }
            got += (size_t)n;
        }
        device_work();
        if (write(fd, b, REQ) != REQ) { close(fd); return NULL; }
    }
}
static int serve_threads(int port) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 511) < 0) return 1;
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&at, 256 * 1024);
    for (;;) {
        int fd = accept(ls, NULL, NULL);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pthread_t t;
        if (pthread_create(&t, &at, tpc_conn, (void *)(intptr_t)fd) != 0) close(fd);
    }
}

/* braid-bench serve overload --port P [--impl I] [--channels C] [--work-us W] [--target-ms T] */
static int serve(int argc, char **argv) {
    const char *impl = "braid-stages";
    int port = 0, channels = 2;
    long work_us = 1000;
    double target_ms = 20;
    const bench_opt opts[] = {
        BENCH_SERVE_PORT(&port),
        { .name = "--impl", .kind = BENCH_OPT_STR, .value = &impl, .metavar = "I", .help = "the server",
          .choices = "braid-stages|braid-unbounded|threads" },
        { .name = "--channels", .kind = BENCH_OPT_INT, .value = &channels, .metavar = "C",
          .help = "device channels (2)" },
        { .name = "--work-us", .kind = BENCH_OPT_LONG, .value = &work_us, .metavar = "W",
          .help = "microseconds a request holds a channel (1000)" },
        { .name = "--target-ms", .kind = BENCH_OPT_DOUBLE, .value = &target_ms, .metavar = "T",
          .help = "braid-stages: the response-time controller's target (20)" },
        { 0 } };
    int rc;
    if (!bench_serve_args("overload", argc, argv, opts, &rc)) return rc;
    work_ns = work_us * 1000;
    sem_init(&device, 0, (unsigned)channels);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(impl, "braid-stages")) return serve_braid(port, channels, true, target_ms);
    if (!strcmp(impl, "braid-unbounded")) return serve_braid(port, channels, false, target_ms);
    return serve_threads(port);
}

/* ==== the open-loop generator =================================================================== */
typedef struct sample { uint64_t intended, latency; uint8_t status; } sample;   /* status 0 ok, 1 rej, 2 none */

typedef struct gconn {
    int fd;
    uint8_t out[1 << 16];
    size_t olen;
    uint8_t in[REQ];
    size_t ilen;
} gconn;

typedef struct point {
    double goodput, p50, p99, max, rejected, unanswered, p99_first, p99_second, rss_peak, rss_growth;
    double offered;
} point;

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}
static double pct(uint64_t *v, size_t n, double q) {
    if (!n) return NAN;
    size_t i = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static void gflush(gconn *c) {
    while (c->olen) {
        ssize_t n = write(c->fd, c->out, c->olen);
        if (n <= 0) return;   /* EAGAIN: the server is not reading; the wait is charged */
        memmove(c->out, c->out + n, c->olen - (size_t)n);
        c->olen -= (size_t)n;
    }
}

/* Offer rate req/s for secs over K connections to 127.0.0.1:port, then
 * wait grace seconds for answers. RSS of pid sampled every 100 ms. */
static point drive(int port, int pid, double rate, double secs, double grace, int K) {
    point pt = { .offered = rate };
    size_t total = (size_t)(rate * secs);
    sample *s = calloc(total ? total : 1, sizeof *s);
    gconn *cs = calloc((size_t)K, sizeof *cs);
    int ep = epoll_create1(0);
    for (int i = 0; i < K; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); fd = -1; }
        cs[i].fd = fd;
        if (fd < 0) continue;
        fcntl(fd, F_SETFL, O_NONBLOCK);
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    }
    for (size_t i = 0; i < total; i++) s[i].status = 2;
    long rss0 = bench_rss_kib(pid), rss_peak = rss0, rss_last = rss0;
    uint64_t t0 = bench_now_ns() + 1000000, end = t0 + (uint64_t)(secs * 1e9),
             stop = end + (uint64_t)(grace * 1e9), next_rss = t0;
    size_t sent = 0, answered = 0, ok_in_run = 0;
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= stop || (sent == total && answered == total)) break;
        while (sent < total) {
            uint64_t due = t0 + (uint64_t)((double)sent * 1e9 / rate);
            if (due > now) break;
            gconn *c = &cs[sent % (size_t)K];
            s[sent].intended = due;
            if (c->fd >= 0 && c->olen + REQ <= sizeof c->out) {
                uint64_t rq[2] = { sent, due };
                memcpy(c->out + c->olen, rq, REQ);
                c->olen += REQ;
            }
            sent++;
        }
        for (int i = 0; i < K; i++)
            if (cs[i].olen) gflush(&cs[i]);
        if (now >= next_rss) {
            long r = bench_rss_kib(pid);
            if (r > rss_peak) rss_peak = r;
            if (r > 0) rss_last = r;
            next_rss = now + 100000000;
        }
        struct epoll_event evs[64];
        int n = epoll_wait(ep, evs, 64, 1);
        for (int k = 0; k < n; k++) {
            gconn *c = &cs[evs[k].data.u32];
            uint8_t buf[8192];
            ssize_t got = read(c->fd, buf, sizeof buf);
            uint64_t at = bench_now_ns();
            for (ssize_t off = 0; off < got;) {
                size_t take = REQ - c->ilen < (size_t)(got - off) ? REQ - c->ilen : (size_t)(got - off);
                memcpy(c->in + c->ilen, buf + off, take);
                c->ilen += take;
                off += (ssize_t)take;
                if (c->ilen < REQ) continue;
                c->ilen = 0;
                uint64_t id, intended;
                memcpy(&id, c->in, 8);
                memcpy(&intended, c->in + 8, 8);
                bool rej = id & STATUS_REJECTED;
                id &= ~STATUS_REJECTED;
                if (id >= total || s[id].status != 2) continue;
                s[id].status = rej ? 1 : 0;
                s[id].latency = at - s[id].intended;
                answered++;
                if (!rej && at <= end) ok_in_run++;
            }
        }
    }
    uint64_t fin = bench_now_ns();
    uint64_t *lat = malloc((total ? total : 1) * sizeof *lat), *h1 = malloc((total ? total : 1) * sizeof *h1),
             *h2 = malloc((total ? total : 1) * sizeof *h2);
    size_t nl = 0, n1 = 0, n2 = 0, rej = 0, none = 0;
    uint64_t oldest = 0;
    for (size_t i = 0; i < total; i++) {
        if (s[i].status == 0) {
            lat[nl++] = s[i].latency;
            if (s[i].intended < t0 + (end - t0) / 2) h1[n1++] = s[i].latency;
            else h2[n2++] = s[i].latency;
        } else if (s[i].status == 1) {
            rej++;
        } else {
            none++;
            if (fin - s[i].intended > oldest) oldest = fin - s[i].intended;
        }
    }
    qsort(lat, nl, sizeof *lat, cmp_u64);
    qsort(h1, n1, sizeof *h1, cmp_u64);
    qsort(h2, n2, sizeof *h2, cmp_u64);
    pt.goodput = (double)ok_in_run / secs;
    pt.p50 = pct(lat, nl, 0.5);
    pt.p99 = pct(lat, nl, 0.99);
    double mx = nl ? (double)lat[nl - 1] / 1e6 : 0;
    pt.max = fmax(mx, (double)oldest / 1e6);
    pt.rejected = (double)rej;
    pt.unanswered = (double)none;
    pt.p99_first = pct(h1, n1, 0.99);
    pt.p99_second = pct(h2, n2, 0.99);
    pt.rss_peak = (double)rss_peak;
    pt.rss_growth = (double)(rss_last - rss0);
    for (int i = 0; i < K; i++)
        if (cs[i].fd >= 0) close(cs[i].fd);
    close(ep);
    free(lat); free(h1); free(h2); free(s); free(cs);
    return pt;
}

/* ==== the experiment ============================================================================== */
enum { I_STAGES, I_UNBOUNDED, I_THREADS, I_TWISTED, NI };
static const char *const i_names[NI] = { "braid-stages", "braid-unbounded", "threads", "twisted" };

static pid_t spawn_server(bench_ctx *ctx, int impl, int port, int channels) {
    char portbuf[16], chbuf[16], script[1024];
    snprintf(portbuf, sizeof portbuf, "%d", port);
    snprintf(chbuf, sizeof chbuf, "%d", channels);
    char *argv[16];
    int n = 0;
    if (impl == I_TWISTED) {
        snprintf(script, sizeof script, "%s/peers/overload_twisted.py", ctx->data_dir);
        argv[n++] = "/usr/bin/python3";
        argv[n++] = script;
        argv[n++] = portbuf;
        argv[n++] = chbuf;
    } else {
        argv[n++] = (char *)ctx->self_exe;
        argv[n++] = "serve";
        argv[n++] = "overload";
        argv[n++] = "--impl"; argv[n++] = (char *)i_names[impl];
        argv[n++] = "--port"; argv[n++] = portbuf;
        argv[n++] = "--channels"; argv[n++] = chbuf;
    }
    argv[n] = NULL;
    pid_t pid;
    if (posix_spawn(&pid, argv[0], NULL, NULL, argv, environ) != 0) return -1;
    if (bench_wait_accepting(pid, port)) return pid;
    bench_stop_process(pid, SIGKILL, 1.0);
    return -1;
}

#define MAXLOADS 4
typedef struct ov {
    double capacity, secs, grace;
    int K, channels, nloads;
    double loads[MAXLOADS];
    bool have[NI];
    point p[NI][MAXLOADS][BENCH_MAX_RUNS];
    int load_i;
} ov;

static void measure(bench_ctx *ctx, int impl, int run, void *arg) {
    ov *o = arg;
    point *pt = &o->p[impl][o->load_i][run];
    memset(pt, 0, sizeof *pt);
    pt->goodput = NAN;
    if (!o->have[impl]) return;
    int port = bench_free_port();
    pid_t pid = spawn_server(ctx, impl, port, o->channels);
    if (pid < 0) { bench_note(ctx, "overload: %s did not start", i_names[impl]); return; }
    *pt = drive(port, pid, o->capacity * o->loads[o->load_i], o->secs, o->grace, o->K);
    bench_stop_process(pid, SIGKILL, 1.0);
}

static int run(bench_ctx *ctx) {
    ov *o = calloc(1, sizeof *o);
    if (!o) return -1;
    o->channels = 2;
    o->K = 32;
    o->secs = ctx->smoke ? 0.3 : ctx->full ? 10 : 1;
    o->grace = ctx->smoke ? 0.2 : ctx->full ? 3 : 0.5;
    if (ctx->full) { o->nloads = 4; o->loads[0] = 0.5; o->loads[1] = 1; o->loads[2] = 2; o->loads[3] = 4; }
    else if (ctx->smoke) { o->nloads = 1; o->loads[0] = 4; }
    else { o->nloads = 2; o->loads[0] = 1; o->loads[1] = 4; }
    for (int i = 0; i < NI; i++) o->have[i] = true;
    if (!bench_have_python_module("twisted")) {
        o->have[I_TWISTED] = false;
        bench_note(ctx, "python3-twisted not importable: the Twisted server was skipped");
    }
    /* Capacity: the unbounded braid server's goodput when offered twice the nominal rate. */
    double nominal = o->channels * 1000.0;
    int port = bench_free_port();
    pid_t pid = spawn_server(ctx, I_UNBOUNDED, port, o->channels);
    if (pid < 0) { free(o); return -1; }
    bench_progress(ctx, "measuring capacity");
    point cap = drive(port, pid, 2 * nominal, ctx->smoke ? 0.3 : 1.0, 0, o->K);
    bench_stop_process(pid, SIGKILL, 1.0);
    o->capacity = cap.goodput > 0 ? cap.goodput : nominal;
    bench_note(ctx, "overload: measured capacity %.0f req/s (%d device channels x 1 ms; nominal %.0f)",
               o->capacity, o->channels, nominal);
    for (o->load_i = 0; o->load_i < o->nloads; o->load_i++) {
        char label[64];
        snprintf(label, sizeof label, "%.1fx capacity", o->loads[o->load_i]);
        bench_alternate(ctx, label, NI, i_names, measure, o);
    }
    for (int i = 0; i < NI; i++) {
        if (!o->have[i]) continue;
        for (int l = 0; l < o->nloads; l++) {
            bench_row *r = bench_row_begin(ctx, i_names[i], "");
            bench_row_param_double(r, "load", o->loads[l]);
            bench_row_param_double(r, "offered", o->capacity * o->loads[l]);
            double v[BENCH_MAX_RUNS];
#define M(field, name, unit)                                                   \
            for (int k = 0; k < ctx->runs; k++) v[k] = o->p[i][l][k].field; \
            bench_row_metric(r, name, v, ctx->runs, unit);
            M(goodput, "goodput", "req/s")
            M(p50, "p50_ms", "ms")
            M(p99, "p99_ms", "ms")
            M(max, "max_ms", "ms")
            M(rejected, "rejected", "req")
            M(unanswered, "unanswered", "req")
            M(p99_first, "p99_first_half_ms", "ms")
            M(p99_second, "p99_second_half_ms", "ms")
            M(rss_peak, "rss_peak_kib", "KiB")
            M(rss_growth, "rss_growth_kib", "KiB")
#undef M
            bench_row_end(r);
        }
    }
    free(o);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    double top = 0;
    for (int i = 0; i < bench_nrows(ctx); i++) {
        double l;
        if (bench_row_param_num(bench_get_row(ctx, i), "load", &l) && l > top) top = l;
    }
    char lbuf[32];
    snprintf(lbuf, sizeof lbuf, "load=%g", top);
    const bench_row *rs = bench_find_row(ctx, "braid-stages", NULL, lbuf, NULL);
    if (!rs) return;
    double g, p99, mx, rej;
    bench_row_metric_get(rs, "goodput", &g, NULL, NULL);
    bench_row_metric_get(rs, "p99_ms", &p99, NULL, NULL);
    bench_row_metric_get(rs, "max_ms", &mx, NULL, NULL);
    bench_row_metric_get(rs, "rejected", &rej, NULL, NULL);
    double off = 0, cap = 0, gu = NAN;
    bench_row_param_num(rs, "offered", &off);
    cap = off / top;
    const bench_row *ru = bench_find_row(ctx, "braid-unbounded", NULL, lbuf, NULL);
    if (ru) bench_row_metric_get(ru, "goodput", &gu, NULL, NULL);
    fprintf(html,
            "<p>At %g× the measured capacity (%.0f req/s) braid's stages answered %.0f req/s — %.0f %% of that "
            "capacity and %.0f %% of what the unbounded braid server got through the saturated device in the "
            "same run (the better yardstick: the capacity estimate moves with the machine's load) — with p99 "
            "%.1f ms and max %.1f ms against a controller target of 20 ms, refusing %.0f requests at once (the "
            "client sees them).",
            top, cap, g, 100 * g / cap, 100 * g / gu, p99, mx, rej);
    for (int i = 1; i < NI; i++) {
        const bench_row *r = bench_find_row(ctx, i_names[i], NULL, lbuf, NULL);
        if (!r) continue;
        double gi, p99i, mxi, p1, p2, un;
        bench_row_metric_get(r, "goodput", &gi, NULL, NULL);
        bench_row_metric_get(r, "p99_ms", &p99i, NULL, NULL);
        bench_row_metric_get(r, "max_ms", &mxi, NULL, NULL);
        bench_row_metric_get(r, "p99_first_half_ms", &p1, NULL, NULL);
        bench_row_metric_get(r, "p99_second_half_ms", &p2, NULL, NULL);
        bench_row_metric_get(r, "unanswered", &un, NULL, NULL);
        fprintf(html,
                " %s: %.0f req/s, p99 %.0f ms (first half of the run %.0f ms, second half %.0f ms), max %.0f ms "
                "(%.0f× braid-stages' max), %.0f requests unanswered at the end.",
                i_names[i], gi, p99i, p1, p2, mxi, mxi / mx, un);
    }
    fputs(" The unbounded designs keep every request and answer all of them late: their latency is the length of "
          "the backlog, which grows for as long as the overload lasts; they lose nothing and reject nothing, "
          "which is where they win on paper (goodput at or above the stages') and lose in practice (nobody "
          "waits seconds for an answer). Where braid-stages loses: it refuses work a patient client would have "
          "accepted late, and below capacity the controller's token bucket can refuse a burst the queue "
          "would have absorbed.</p>\n",
          html);
}

BENCH_EXPERIMENT(overload,
    .title = "Overload: SEDA's admission control against unbounded queues (open loop)",
    .question = "When offered more requests than it can serve, does a server answer fewer of them quickly or all of "
                "them late? SEDA (SOSP 2001) reported a maximum response time of about 3.8 s for Haboob against "
                "about 93 s for Apache at 1,024 clients; this repeats the idea with an open-loop client that does "
                "not hide queueing.",
    .method = "Every request holds one of 2 device channels for 1 ms (a semaphore and a nanosleep), so every server's "
              "capacity is the same (measured first: braid-unbounded's goodput at 2× nominal). Open-loop client "
              "in the braid-bench process (raw epoll, 32 connections, constant rate, latency from each request's "
              "intended send time, sends batched on a 1 ms tick). Servers in their own processes, fresh per point: "
              "braid-stages (loop stage → pool stage with 2 threads, queue 48, response-time controller target "
              "20 ms, period 50 ms, AIMD +100/s per look, ×0.95 of the served rate, starting at 100 000/s; refused requests answered at once), braid-unbounded "
              "(braid_pool_defer, queue 2^24), a thread per connection (blocking I/O), Twisted deferToThread. "
              "Quick: 1× and 4×, 1 s runs + 0.5 s to collect answers; full: 0.5/1/2/4×, 10 s + 3 s.",
    .run = run, .serve = serve, .conclude = conclude, .ratio_base = "braid-stages", .quick_seconds = 45,
    .full_seconds = 1800, .order = 62, .quick_runs = 3, .plot_x = "load", .plot_metric = "p99_ms",
    .plot_logy = true, .headline = "goodput,p99_ms,max_ms");
