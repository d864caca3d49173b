/* survey: the multiplexer survey "I Can Draw Graphs Too" (2005) wished
 * someone would make. What
 * does one loop iteration cost when N sockets are registered and only a few
 * are active, for each of braid's backends (select, poll, epoll, io_uring)
 * and for libuv's and libevent's loops on the very same sockets?
 *
 * Setup per point: N socketpairs (non-blocking AF_UNIX stream); one end of
 * each is registered for reading with the loop under test. A round: write
 * one byte into A of the pairs (spread evenly over the N; untimed), then
 * time the loop until the A read callbacks ran (each reads its byte) -
 * normally exactly one iteration: one blocking poll call that returns at
 * once, A callbacks. Metric: ns per round. The idle N-A sockets cost
 * nothing with epoll/io_uring and a scan per iteration with select/poll. */
#include "bench.h"

#include <braid.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>
#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif
#ifdef BENCH_HAVE_LIBEVENT
#include <event2/event.h>
#include <event2/event_struct.h>
#endif

#define MAX_IMPLS (BENCH_MAX_BACKENDS + 2)

typedef struct sv_state {
    int npairs, active, rounds;
    int *rd, *wr;            /* registered (read) ends, writer ends */
    int *act;                /* indices of the active pairs */
    long drained;
    int nimpl;
    const char *impl[MAX_IMPLS];     /* "braid", "libuv", "libevent" */
    const char *backend[MAX_IMPLS];
    char label[MAX_IMPLS][32];
    bool skipped[MAX_IMPLS];
    double ns[MAX_IMPLS][BENCH_MAX_RUNS];
} sv_state;

static void drain_fd(int fd, sv_state *s) {
    char b[16];
    if (read(fd, b, sizeof b) > 0) s->drained++;
}

static void poke(sv_state *s) {
    for (int i = 0; i < s->active; i++) {
        ssize_t r = write(s->wr[s->act[i]], "x", 1);
        (void)r;
    }
}

/* ---- braid ------------------------------------------------------------------------ */
static void braid_cb(braid_watch *w, unsigned ev, void *arg) { (void)ev; drain_fd(w->fd, arg); }

static double run_braid(sv_state *s, const char *backend) {
    braid_loop_options o = { .backend = (braid_backend)bench_backend(backend), .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop;
    if (braid_loop_new(&o, &loop) < 0) return NAN;
    braid_watch *w = calloc((size_t)s->npairs, sizeof *w);
    double res = NAN;
    int n = 0;
    if (!w) goto out;
    for (; n < s->npairs; n++) {
        if (braid_watch_init(loop, &w[n], s->rd[n], braid_cb, s) < 0) goto out;
        if (braid_watch_set_interest(&w[n], BRAID_WATCH_READ) < 0) { braid_watch_close(&w[n]); goto out; }
    }
    uint64_t total = 0;
    for (int r = -1; r < s->rounds; r++) {   /* round -1 warms up */
        poke(s);
        s->drained = 0;
        uint64_t t0 = bench_now_ns();
        while (s->drained < s->active) braid_loop_run_once(loop, 0);
        if (r >= 0) total += bench_now_ns() - t0;
    }
    res = (double)total / s->rounds;
out:
    for (int i = 0; i < n; i++) braid_watch_close(&w[i]);
    free(w);
    braid_loop_free(loop);
    return res;
}

/* ---- libuv ----------------------------------------------------------------------------- */
#ifdef BENCH_HAVE_LIBUV
static void uv_cb(uv_poll_t *h, int status, int events) {
    (void)status; (void)events;
    sv_state *s = h->data;
    int fd;
    uv_fileno((uv_handle_t *)h, &fd);
    drain_fd(fd, s);
}

static double run_libuv(sv_state *s) {
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) return NAN;
    uv_poll_t *h = calloc((size_t)s->npairs, sizeof *h);
    double res = NAN;
    int n = 0;
    if (!h) goto out;
    for (; n < s->npairs; n++) {
        if (uv_poll_init(&loop, &h[n], s->rd[n]) != 0) goto out;
        h[n].data = s;
        if (uv_poll_start(&h[n], UV_READABLE, uv_cb) != 0) { n++; goto out; }
    }
    uint64_t total = 0;
    for (int r = -1; r < s->rounds; r++) {
        poke(s);
        s->drained = 0;
        uint64_t t0 = bench_now_ns();
        while (s->drained < s->active) uv_run(&loop, UV_RUN_ONCE);
        if (r >= 0) total += bench_now_ns() - t0;
    }
    res = (double)total / s->rounds;
out:
    for (int i = 0; i < n; i++) uv_close((uv_handle_t *)&h[i], NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    free(h);
    return res;
}
#endif

/* ---- libevent -------------------------------------------------------------------------- */
#ifdef BENCH_HAVE_LIBEVENT
static void ev_cb(evutil_socket_t fd, short what, void *arg) { (void)what; drain_fd(fd, arg); }

static double run_libevent(sv_state *s) {
    struct event_base *base = event_base_new();
    if (!base) return NAN;
    struct event *e = calloc((size_t)s->npairs, sizeof *e);
    double res = NAN;
    int n = 0;
    if (!e) goto out;
    for (; n < s->npairs; n++) {
        event_assign(&e[n], base, s->rd[n], EV_READ | EV_PERSIST, ev_cb, s);
        if (event_add(&e[n], NULL) != 0) goto out;
    }
    uint64_t total = 0;
    for (int r = -1; r < s->rounds; r++) {
        poke(s);
        s->drained = 0;
        uint64_t t0 = bench_now_ns();
        while (s->drained < s->active) event_base_loop(base, EVLOOP_ONCE);
        if (r >= 0) total += bench_now_ns() - t0;
    }
    res = (double)total / s->rounds;
out:
    for (int i = 0; i < n; i++) event_del(&e[i]);
    event_base_free(base);
    free(e);
    return res;
}
#endif

static void measure(bench_ctx *ctx, int impl, int run, void *arg) {
    sv_state *s = arg;
    (void)ctx;
    double v = NAN;
    if (s->skipped[impl]) { s->ns[impl][run] = NAN; return; }
    if (!strcmp(s->impl[impl], "braid")) v = run_braid(s, s->backend[impl]);
#ifdef BENCH_HAVE_LIBUV
    else if (!strcmp(s->impl[impl], "libuv")) v = run_libuv(s);
#endif
#ifdef BENCH_HAVE_LIBEVENT
    else if (!strcmp(s->impl[impl], "libevent")) v = run_libevent(s);
#endif
    s->ns[impl][run] = v;
}

static int make_pairs(sv_state *s, int n) {
    s->rd = malloc((size_t)n * sizeof(int));
    s->wr = malloc((size_t)n * sizeof(int));
    if (!s->rd || !s->wr) return -1;
    for (int i = 0; i < n; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0) {
            for (int k = 0; k < i; k++) { close(s->rd[k]); close(s->wr[k]); }
            return -1;
        }
        s->rd[i] = sv[0];
        s->wr[i] = sv[1];
    }
    s->npairs = n;
    return 0;
}

static void free_pairs(sv_state *s) {
    for (int k = 0; k < s->npairs; k++) { close(s->rd[k]); close(s->wr[k]); }
    free(s->rd);
    free(s->wr);
    s->rd = s->wr = NULL;
    s->npairs = 0;
}

static int run(bench_ctx *ctx) {
    sv_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    for (int b = 0; b < ctx->nbackends; b++) {
        s->impl[s->nimpl] = "braid";
        s->backend[s->nimpl] = ctx->backends[b];
        snprintf(s->label[s->nimpl], sizeof s->label[0], "braid/%s", ctx->backends[b]);
        s->nimpl++;
    }
    bool has_uring = false;
    for (int b = 0; b < ctx->nbackends; b++) if (!strcmp(ctx->backends[b], "uring")) has_uring = true;
    if (!has_uring) bench_note(ctx, "braid's io_uring backend is not available in this build or kernel: no uring rows");
#ifdef BENCH_HAVE_LIBUV
    s->impl[s->nimpl] = "libuv"; s->backend[s->nimpl] = "epoll";
    snprintf(s->label[s->nimpl++], sizeof s->label[0], "libuv");
#else
    bench_note(ctx, "libuv was not found when braid-bench was built: no libuv rows");
#endif
#ifdef BENCH_HAVE_LIBEVENT
    s->impl[s->nimpl] = "libevent"; s->backend[s->nimpl] = "epoll";
    snprintf(s->label[s->nimpl++], sizeof s->label[0], "libevent");
#else
    bench_note(ctx, "libevent was not found when braid-bench was built: no libevent rows");
#endif
    const char *labels[MAX_IMPLS];
    for (int i = 0; i < s->nimpl; i++) labels[i] = s->label[i];

    /* The largest N that fits: 2 fds per pair, plus headroom for the loops'
     * own fds, rounded down to hundreds. */
    struct rlimit rl;
    long maxfd = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? (long)rl.rlim_cur : 1024;
    int maxn = (int)((maxfd - 128) / 2 / 100 * 100);
    if (maxn > 10000) maxn = 10000;
    if (maxn < 10000 && !ctx->smoke)
        bench_note(ctx, "ulimit -n is %ld: 10,000 socketpairs would need 20,000 fds, so the largest point is N = %d "
                        "socketpairs (%d fds)", maxfd, maxn, 2 * maxn);
    int ns_full[] = { 10, 30, 100, 300, 1000, 3000, maxn };
    int ns_quick[] = { 10, 100, 1000, maxn };
    int ns_smoke[] = { 10 };
    int *nlist = ctx->full ? ns_full : ctx->smoke ? ns_smoke : ns_quick;
    int nn = ctx->full ? 7 : ctx->smoke ? 1 : 4;
    static const int actives[] = { 1, 100 };
    bool noted_select = false;
    int step = 0;
    for (int ni = 0; ni < nn; ni++) {
        int N = nlist[ni];
        if (make_pairs(s, N) < 0) {
            bench_note(ctx, "could not create %d socketpairs; stopping at the previous N", N);
            break;
        }
        int maxrd = 0;
        for (int i = 0; i < N; i++) if (s->rd[i] > maxrd) maxrd = s->rd[i];
        for (int ai = 0; ai < 2; ai++, step++) {
            bench_progress_fraction(ctx, (double)step / (2 * nn));
            int A = actives[ai];
            if (A > N) continue;
            s->active = A;
            free(s->act);
            s->act = malloc((size_t)A * sizeof(int));
            for (int i = 0; i < A; i++) s->act[i] = (int)((long)i * N / A);
            /* Rounds: enough to time reliably, bounded for the scanning backends. */
            int base = N <= 100 ? 3000 : N <= 1000 ? 1000 : 200;
            if (A > 1) base /= 4;   /* each round is A reads and writes */
            s->rounds = ctx->smoke ? 100 : ctx->full ? base * 4 : base;
            for (int i = 0; i < s->nimpl; i++) {
                /* + the loop's own fds, created after the pairs */
                s->skipped[i] = !strcmp(s->impl[i], "braid") && !strcmp(s->backend[i], "select") &&
                                maxrd + 16 >= FD_SETSIZE;
                if (s->skipped[i] && !noted_select) {
                    bench_note(ctx, "select is measured only while every fd number is below FD_SETSIZE (%d): "
                                    "skipped from N = %d on",
                               FD_SETSIZE, N);
                    noted_select = true;
                }
            }
            char label[64];
            snprintf(label, sizeof label, "N=%d A=%d", N, A);
            bench_alternate(ctx, label, s->nimpl, labels, measure, s);
            for (int i = 0; i < s->nimpl; i++) {
                if (s->skipped[i]) continue;
                bench_row *r = bench_row_begin(ctx, s->impl[i], s->backend[i]);
                bench_row_param_int(r, "active", A);
                bench_row_param_int(r, "registered", N);
                bench_row_metric(r, "ns_per_iter", s->ns[i], ctx->runs, "ns");
                bench_row_end(r);
            }
        }
        free_pairs(s);
    }
    free(s->act);
    free(s);
    return 0;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    /* Growth with registered fds: the cost at the largest N over the cost at
     * the smallest, per implementation, for 1 active socket. */
    int n = bench_nrows(ctx);
    double nmin = INFINITY, nmax = 0;
    for (int i = 0; i < n; i++) {
        double v;
        if (bench_row_param_num(bench_get_row(ctx, i), "registered", &v)) {
            if (v < nmin) nmin = v;
            if (v > nmax) nmax = v;
        }
    }
    if (!(nmax > nmin)) return;
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, "registered=%.0f", nmin);
    snprintf(hi, sizeof hi, "registered=%.0f", nmax);
    fprintf(html, "<p>Growth from %.0f to %.0f registered sockets with 1 active (cost at the largest N ÷ cost at the "
                  "smallest):</p>\n<ul>\n", nmin, nmax);
    static const char *const impls[] = { "braid", "libuv", "libevent" };
    static const char *const bes[] = { "select", "poll", "epoll", "uring" };
    for (int k = 0; k < 3; k++) {
        for (int b = 0; b < 4; b++) {
            if (k > 0 && b != 2) continue;
            const char *be = k == 0 ? bes[b] : NULL;
            const bench_row *a = bench_find_row(ctx, impls[k], be, "active=1", lo, NULL);
            const bench_row *z = bench_find_row(ctx, impls[k], be, "active=1", hi, NULL);
            double va, vz;
            if (a && z && bench_row_metric_get(a, "ns_per_iter", &va, NULL, NULL) &&
                bench_row_metric_get(z, "ns_per_iter", &vz, NULL, NULL))
                fprintf(html, "<li>%s%s%s%s: %.0f ns → %.0f ns (%.1f×)</li>\n", impls[k], be ? " (" : "",
                        be ? be : "", be ? ")" : "", va, vz, vz / va);
        }
    }
    fputs("</ul>\n<p>epoll (and io_uring) cost what the active sockets cost, whatever is registered; select and poll "
          "pay for every registered socket on every iteration, which is the whole argument for readiness-based "
          "multiplexers at scale.</p>\n", html);
    /* The targets: braid epoll <= libuv and libevent at every point;
     * io_uring against epoll within braid. */
    static const char *const peers[] = { "libuv", "libevent", "braid" };
    for (int k = 0; k < 3; k++) {
        int points = 0, over = 0;
        double logsum = 0, worst = 0;
        char worst_at[96] = "";
        for (int i = 0; i < n; i++) {
            const bench_row *p = bench_get_row(ctx, i);
            const char *be = k == 2 ? "uring" : "epoll";
            if (strcmp(bench_row_impl(p), peers[k]) || strcmp(bench_row_backend(p), be)) continue;
            const char *a = bench_row_param_text(p, "active"), *r = bench_row_param_text(p, "registered");
            char fa[48], fr[48];
            snprintf(fa, sizeof fa, "active=%s", a ? a : "");
            snprintf(fr, sizeof fr, "registered=%s", r ? r : "");
            const bench_row *b = bench_find_row(ctx, "braid", "epoll", fa, fr, NULL);
            double rm;
            if (!b) continue;
            /* k < 2: braid epoll / peer; k == 2: braid uring / braid epoll */
            if (!(k < 2 ? bench_pair_ratio(b, p, "ns_per_iter", &rm, NULL, NULL)
                        : bench_pair_ratio(p, b, "ns_per_iter", &rm, NULL, NULL)))
                continue;
            points++;
            logsum += log(rm);
            if (rm > 1) over++;
            if (rm > worst) { worst = rm; snprintf(worst_at, sizeof worst_at, "%s, %s", fa, fr); }
        }
        if (!points) continue;
        if (k < 2)
            fprintf(html, "<p><b>Target</b> (braid's epoll iteration ≤ %s's at every point): braid ÷ %s is above 1.00 "
                          "at %d of %d points (geometric mean %.2f; worst %.2f at %s): %s.</p>\n",
                    peers[k], peers[k], over, points, exp(logsum / points), worst, worst_at,
                    over ? "not met everywhere (see the ranges: a ratio whose run-by-run range straddles 1 is noise)"
                         : "met");
        else
            fprintf(html, "<p>braid's io_uring backend costs %.2f× its epoll backend per iteration (geometric mean over "
                          "%d points; highest %.2f at %s)%s</p>\n",
                    exp(logsum / points), points, worst, worst_at,
                    exp(logsum / points) > 1
                        ? ": for readiness, io_uring adds submission and completion-queue work around each poll "
                          "request that epoll_wait does not have; this survey measures readiness only, not the "
                          "completion-based I/O io_uring exists for."
                        : ".");
    }
}

BENCH_EXPERIMENT(survey,
    .title = "Multiplexer survey: one loop iteration against N registered sockets",
    .question = "An event loop asks the kernel which of its sockets are ready. With select and poll that question "
                "costs time proportional to every registered socket; with epoll and io_uring only to the ready ones. "
                "How much does one loop iteration cost with 10 to 10,000 registered but idle sockets and 1 or 100 "
                "active ones - for each of braid's backends, and for libuv and libevent on the same sockets?",
    .method = "N non-blocking AF_UNIX socketpairs; one end of each is registered for reading with the loop under test "
              "(braid with each available backend, libuv with uv_poll_t, libevent with EV_READ|EV_PERSIST events; "
              "level-triggered everywhere, default settings). A round: write one byte into A pairs spread evenly over "
              "the N (not timed), then time the loop until the A read callbacks have each read their byte: one "
              "blocking iteration (braid_loop_run_once, uv_run UV_RUN_ONCE, event_base_loop EVLOOP_ONCE) whose poll "
              "returns at once. ns per round includes two clock reads (~40 ns) for every implementation alike. "
              "Quick mode: 3000 rounds at N ≤ 100, 1000 at N ≤ 1000, 200 above (a quarter of that with 100 active); the same sockets serve every "
              "implementation, which alternate within each point. select is limited to fd numbers below FD_SETSIZE.",
    .run = run, .conclude = conclude, .quick_seconds = 45, .full_seconds = 300, .order = 20,
    .plot_x = "registered", .plot_metric = "ns_per_iter", .plot_logx = true, .plot_logy = true);
