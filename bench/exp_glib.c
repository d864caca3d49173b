/* glib: braid and GLib's main loop in one thread (libbraid-glib). Does either
 * side spin, are timers on time, and does a GTK program stay responsive
 * while braid moves 1,000 messages a second?
 *
 * Four implementations, alternating run by run:
 *   glib-only      a plain GMainLoop (the baseline for GLib's side)
 *   braid-only     a plain braid loop (the baseline for braid's side)
 *   braid-in-glib  GLib drives, braid inside it (braid_glib_source)
 *   glib-in-braid  braid drives, GLib inside it (braid_glib_context)
 * Each has, on each side it runs, one idle socket watched and one timer due
 * in ten minutes.
 *
 * Measured:
 *   idle CPU       the program idles for 5 s (0.3 s with --smoke), in a child
 *                  process of its own (so the four idle at once); getrusage
 *                  user+system time over the idle window, in % of one core,
 *                  and its wake-ups per second (iterations of the driving loop)
 *   timer lateness 200 timers a side, one at a time, delays 1-5 ms: a braid
 *                  timer's firing time minus its deadline, and a GLib
 *                  timeout's (g_timeout_source_new) firing time minus its
 *                  expiration, p50 and p99 in microseconds; with both sides
 *                  present their chains run at the same time
 *   GTK latency    the MDI demo (examples/mdi, braid-mdi --test) under a
 *                  virtual display of its own (tests/with_xvfb.sh): 1,000
 *                  lines/s for 3 s from its braid line server over 3 TCP
 *                  connections, each line shown in a GTK label; a GLib
 *                  timeout every 5 ms records its lateness (p50, p99, max);
 *                  with GLib driving (braid-in-glib) and braid driving
 *                  (glib-in-braid); and the share of lines shown.
 * Quick mode measures one braid backend (epoll unless --backend names
 * others); --full measures every selected backend. */
#include "bench.h"

#include <braid.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#ifdef BENCH_HAVE_GLIB
#include <braid/glib.h>
#include <glib-unix.h>

enum { GLIB_ONLY, BRAID_ONLY, BRAID_IN_GLIB, GLIB_IN_BRAID, NIMPL };
static const char *const impl_names[NIMPL] = { "glib-only", "braid-only", "braid-in-glib", "glib-in-braid" };
static bool has_glib(int i) { return i != BRAID_ONLY; }
static bool has_braid(int i) { return i != GLIB_ONLY; }
static bool glib_drives(int i) { return i == GLIB_ONLY || i == BRAID_IN_GLIB; }

#define NTIMERS 200

/* ---- one program of either kind ------------------------------------------------------ */
typedef struct env {
    int impl;
    braid_loop *loop;
    GMainContext *ctx;
    GMainLoop *ml;
    braid_glib_source *src;
    braid_glib_context *gc;
    int sv[2];
    braid_watch idle_w;
    braid_timer far_b;
    GSource *idle_g, *far_g;
    uint64_t glib_iterations;
} env;

static void never_b(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; (void)arg; }
static void never_t(braid_timer *t, void *arg) { (void)t; (void)arg; }
static gboolean never_g(gpointer d) { (void)d; return G_SOURCE_CONTINUE; }
static gboolean never_fd(gint fd, GIOCondition c, gpointer d) { (void)fd; (void)c; (void)d; return G_SOURCE_CONTINUE; }

/* A source whose prepare counts GLib iterations. */
typedef struct counter { GSource base; uint64_t *n; } counter;
static gboolean count_prepare(GSource *s, gint *timeout) {
    ++*((counter *)s)->n;
    *timeout = -1;
    return FALSE;
}
static gboolean count_dispatch(GSource *s, GSourceFunc cb, gpointer d) { (void)s; (void)cb; (void)d; return G_SOURCE_CONTINUE; }
static GSourceFuncs count_funcs = { .prepare = count_prepare, .dispatch = count_dispatch };

static int env_open(env *e, int impl, const char *backend) {
    memset(e, 0, sizeof *e);
    e->impl = impl;
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, e->sv) < 0) return -1;
    if (has_braid(impl)) {
        braid_loop_options o = { .backend = (braid_backend)bench_backend(backend) };
        if (braid_loop_new(&o, &e->loop) < 0) return -1;
        braid_watch_init(e->loop, &e->idle_w, e->sv[0], never_b, NULL);
        braid_watch_set_interest(&e->idle_w, BRAID_WATCH_READ);
        braid_timer_init(e->loop, &e->far_b, never_t, NULL);
        braid_timer_start(&e->far_b, BRAID_SECONDS(600));
    }
    if (has_glib(impl)) {
        e->ctx = g_main_context_new();
        e->ml = g_main_loop_new(e->ctx, FALSE);
        e->idle_g = g_unix_fd_source_new(e->sv[1], G_IO_IN);
        g_source_set_callback(e->idle_g, (GSourceFunc)(void (*)(void))never_fd, NULL, NULL);
        g_source_attach(e->idle_g, e->ctx);
        e->far_g = g_timeout_source_new_seconds(600);
        g_source_set_callback(e->far_g, never_g, NULL, NULL);
        g_source_attach(e->far_g, e->ctx);
        GSource *c = g_source_new(&count_funcs, sizeof(counter));
        ((counter *)c)->n = &e->glib_iterations;
        g_source_attach(c, e->ctx);
        g_source_unref(c);
    }
    if (impl == BRAID_IN_GLIB && braid_glib_source_new(e->loop, e->ctx, NULL, &e->src) < 0) return -1;
    if (impl == GLIB_IN_BRAID && braid_glib_context_new(e->loop, e->ctx, NULL, &e->gc) < 0) return -1;
    return 0;
}

static void env_run(env *e) {
    if (glib_drives(e->impl)) g_main_loop_run(e->ml);
    else braid_loop_run(e->loop);
}
static void env_stop(env *e) {
    if (glib_drives(e->impl)) g_main_loop_quit(e->ml);
    else braid_loop_stop(e->loop);
}
static uint64_t env_iterations(env *e) {
    return glib_drives(e->impl) ? e->glib_iterations : braid_loop_iteration(e->loop);
}

static void env_close(env *e) {
    braid_glib_source_free(e->src);
    braid_glib_context_free(e->gc);
    if (e->loop) {
        braid_watch_close(&e->idle_w);
        braid_timer_stop(&e->far_b);
        braid_loop_free(e->loop);
    }
    if (e->ctx) {
        g_source_destroy(e->idle_g);
        g_source_unref(e->idle_g);
        g_source_destroy(e->far_g);
        g_source_unref(e->far_g);
        g_main_loop_unref(e->ml);
        g_main_context_unref(e->ctx);
    }
    close(e->sv[0]);
    close(e->sv[1]);
}

/* ---- idle ------------------------------------------------------------------------------------- */
static void idle_end_b(braid_timer *t, void *arg) { (void)t; env_stop(arg); }
static gboolean idle_end_g(gpointer arg) { env_stop(arg); return G_SOURCE_REMOVE; }

static double tv_us(struct timeval tv) { return (double)tv.tv_sec * 1e6 + (double)tv.tv_usec; }

typedef struct idle_out { double cpu_us, seconds, wakeups; } idle_out;

/* In a child process: idle for `seconds`, report CPU and wake-ups. */
static void idle_child(int impl, const char *backend, double seconds, int fd) {
    env e;
    idle_out out = { NAN, NAN, NAN };
    if (env_open(&e, impl, backend) == 0) {
        braid_timer end_b;
        if (glib_drives(impl)) {
            GSource *s = g_timeout_source_new((guint)(seconds * 1000));
            g_source_set_callback(s, idle_end_g, &e, NULL);
            g_source_attach(s, e.ctx);
            g_source_unref(s);
        } else {
            braid_timer_init(e.loop, &end_b, idle_end_b, &e);
            braid_timer_start(&end_b, (uint64_t)(seconds * 1e9));
        }
        struct rusage r0, r1;
        uint64_t t0 = bench_now_ns(), it0 = env_iterations(&e);
        getrusage(RUSAGE_SELF, &r0);
        env_run(&e);
        getrusage(RUSAGE_SELF, &r1);
        out.seconds = (double)(bench_now_ns() - t0) / 1e9;
        out.wakeups = (double)(env_iterations(&e) - it0);
        out.cpu_us = tv_us(r1.ru_utime) - tv_us(r0.ru_utime) + tv_us(r1.ru_stime) - tv_us(r0.ru_stime);
        env_close(&e);
    }
    ssize_t w = write(fd, &out, sizeof out);
    (void)w;
    _exit(0);
}

/* ---- timer lateness ------------------------------------------------------------------------------------ */
typedef struct lat {
    env *e;
    int nb, ng, sides_left;
    double b_us[NTIMERS], g_us[NTIMERS];
    braid_timer bt;
    gint64 g_deadline;
} lat;

static uint64_t delay_ms(int k) { return 1 + (uint64_t)(k * 7 % 5); }   /* 1..5 ms */

static void lat_side_done(lat *l) {
    if (--l->sides_left == 0) env_stop(l->e);
}
static void lat_braid(braid_timer *t, void *arg) {
    lat *l = arg;
    uint64_t now = braid_loop_now_fresh(l->e->loop);
    l->b_us[l->nb++] = (double)(now - braid_timer_deadline(t)) / 1e3;
    if (l->nb < NTIMERS) braid_timer_start(t, BRAID_MSEC(delay_ms(l->nb)));
    else lat_side_done(l);
}
static gboolean lat_glib(gpointer arg);
static void lat_glib_arm(lat *l) {
    guint ms = (guint)delay_ms(l->ng + 3);
    l->g_deadline = g_get_monotonic_time() + (gint64)ms * 1000;
    GSource *s = g_timeout_source_new(ms);
    g_source_set_callback(s, lat_glib, l, NULL);
    g_source_attach(s, l->e->ctx);
    g_source_unref(s);
}
static gboolean lat_glib(gpointer arg) {
    lat *l = arg;
    l->g_us[l->ng++] = (double)(g_get_monotonic_time() - l->g_deadline);
    if (l->ng < NTIMERS) lat_glib_arm(l);
    else lat_side_done(l);
    return G_SOURCE_REMOVE;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
static double pct(double *v, int n, double p) {
    if (n <= 0) return NAN;
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    int i = (int)(p * n);
    return v[i < n ? i : n - 1];
}

/* ---- the measurement ------------------------------------------------------------------------------------- */
typedef struct gl_state {
    const char *backend;
    double window;
    double cpu[NIMPL][BENCH_MAX_RUNS], wake[NIMPL][BENCH_MAX_RUNS];
    double b50[NIMPL][BENCH_MAX_RUNS], b99[NIMPL][BENCH_MAX_RUNS];
    double g50[NIMPL][BENCH_MAX_RUNS], g99[NIMPL][BENCH_MAX_RUNS];
} gl_state;

/* The four idle programs at once, one child each: idle means no work, so
 * they do not compete. */
static void measure_idle(gl_state *s, int run) {
    int fds[NIMPL][2];
    pid_t pids[NIMPL];
    for (int i = 0; i < NIMPL; i++) {
        pids[i] = -1;
        if (pipe(fds[i]) < 0) continue;
        fflush(NULL);
        pids[i] = fork();
        if (pids[i] == 0) {
            close(fds[i][0]);
            idle_child(i, s->backend, s->window, fds[i][1]);
        }
        close(fds[i][1]);
    }
    for (int i = 0; i < NIMPL; i++) {
        idle_out out = { NAN, NAN, NAN };
        if (pids[i] > 0) {
            if (read(fds[i][0], &out, sizeof out) != (ssize_t)sizeof out) out.cpu_us = NAN;
            waitpid(pids[i], NULL, 0);
        }
        close(fds[i][0]);
        s->cpu[i][run] = out.cpu_us / (out.seconds * 1e6) * 100.0;
        s->wake[i][run] = out.wakeups / out.seconds;
    }
}

static void measure_timers(bench_ctx *ctx, int impl, int run, void *arg) {
    gl_state *s = arg;
    (void)ctx;
    env e;
    lat *l = calloc(1, sizeof *l);
    s->b50[impl][run] = s->b99[impl][run] = s->g50[impl][run] = s->g99[impl][run] = NAN;
    if (!l || env_open(&e, impl, s->backend) < 0) {
        free(l);
        return;
    }
    l->e = &e;
    if (has_braid(impl)) {
        l->sides_left++;
        braid_timer_init(e.loop, &l->bt, lat_braid, l);
        braid_timer_start(&l->bt, BRAID_MSEC(delay_ms(0)));
    }
    if (has_glib(impl)) {
        l->sides_left++;
        lat_glib_arm(l);
    }
    env_run(&e);
    if (has_braid(impl)) {
        s->b50[impl][run] = pct(l->b_us, l->nb, 0.50);
        s->b99[impl][run] = pct(l->b_us, l->nb, 0.99);
    }
    if (has_glib(impl)) {
        s->g50[impl][run] = pct(l->g_us, l->ng, 0.50);
        s->g99[impl][run] = pct(l->g_us, l->ng, 0.99);
    }
    env_close(&e);
    free(l);
}

/* ---- GTK under load: the MDI demo in a virtual display ----------------------------------------------------- */
enum { GTK_GLIB, GTK_BRAID, NGTK };
static const char *const gtk_names[NGTK] = { "braid-in-glib+gtk", "glib-in-braid+gtk" };
typedef struct gtk_state {
    char demo[4200], fixture[4200];
    double p50[NGTK][BENCH_MAX_RUNS], p99[NGTK][BENCH_MAX_RUNS], max[NGTK][BENCH_MAX_RUNS];
    double shown[NGTK][BENCH_MAX_RUNS];
} gtk_state;

/* Run braid-mdi --test in its own Xvfb, ask for "load 1000 3", read the report. */
static void measure_gtk(bench_ctx *ctx, int impl, int run, void *arg) {
    gtk_state *g = arg;
    (void)ctx;
    g->p50[impl][run] = g->p99[impl][run] = g->max[impl][run] = g->shown[impl][run] = NAN;
    int in[2], out[2];
    if (pipe(in) < 0) return;
    if (pipe(out) < 0) { close(in[0]); close(in[1]); return; }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(in[0], 0);
        dup2(out[1], 1);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        close(in[0]); close(in[1]); close(out[0]); close(out[1]);
        setpgid(0, 0);
        execl("/bin/sh", "sh", g->fixture, g->demo, "--test", "--loop", impl == GTK_GLIB ? "glib" : "braid",
              (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    char buf[8192];
    size_t len = 0;
    bool asked = false, done = false;
    uint64_t deadline = bench_now_ns() + 60ull * 1000000000ull;
    while (!done && bench_now_ns() < deadline) {
        struct pollfd p = { .fd = out[0], .events = POLLIN };
        if (poll(&p, 1, 200) <= 0) continue;
        ssize_t n = read(out[0], buf + len, sizeof buf - 1 - len);
        if (n <= 0) break;
        len += (size_t)n;
        buf[len] = 0;
        if (!asked && strstr(buf, "ready\n")) {
            const char *cmd = "load 1000 3\n";
            if (write(in[1], cmd, strlen(cmd)) < 0) break;
            asked = true;
        }
        char *r = strstr(buf, "load rate=");
        if (r && strchr(r, '\n')) {
            unsigned long long sent = 0, shown = 0;
            long long p50 = -1, p99 = -1, mx = -1;
            char *q;
            if ((q = strstr(r, " sent="))) sent = strtoull(q + 6, NULL, 10);
            if ((q = strstr(r, " shown="))) shown = strtoull(q + 7, NULL, 10);
            if ((q = strstr(r, " p50_us="))) p50 = strtoll(q + 8, NULL, 10);
            if ((q = strstr(r, " p99_us="))) p99 = strtoll(q + 8, NULL, 10);
            if ((q = strstr(r, " max_us="))) mx = strtoll(q + 8, NULL, 10);
            g->p50[impl][run] = (double)p50;
            g->p99[impl][run] = (double)p99;
            g->max[impl][run] = (double)mx;
            g->shown[impl][run] = sent ? 100.0 * (double)shown / (double)sent : NAN;
            done = true;
        }
        if (len > sizeof buf / 2) {           /* keep the tail only */
            memmove(buf, buf + len - 1024, 1024);
            len = 1024;
        }
    }
    if (write(in[1], "quit\n", 5) < 0) { /* it is gone already */ }
    close(in[1]);
    close(out[0]);
    bench_stop_process(pid, SIGTERM, 10.0);
    kill(-pid, SIGKILL);                      /* Xvfb too, should anything be left */
}

static int run(bench_ctx *ctx) {
    gl_state *s = calloc(1, sizeof *s);
    gtk_state *g = calloc(1, sizeof *g);
    if (!s || !g) { free(s); free(g); return -1; }
    s->window = ctx->smoke ? 0.3 : 5.0;
    /* Backends: every selected one with --full; else one (epoll if selected). */
    const char *backends[BENCH_MAX_BACKENDS];
    int nb = 0;
    for (int b = 0; b < ctx->nbackends; b++)
        if (ctx->full || !strcmp(ctx->backends[b], "epoll")) backends[nb++] = ctx->backends[b];
    if (!nb && ctx->nbackends) backends[nb++] = ctx->backends[0];
    for (int bi = 0; bi < nb; bi++) {
        s->backend = backends[bi];
        for (int r = 0; r < ctx->runs; r++) {
            bench_progress(ctx, "idle %.1f s (%s) run %d/%d", s->window, s->backend, r + 1, ctx->runs);
            bench_progress_fraction(ctx, (bi + (double)r / ctx->runs) / (nb + 1) * 0.6);
            measure_idle(s, r);
        }
        char label[64];
        snprintf(label, sizeof label, "timers (%s)", s->backend);
        bench_alternate(ctx, label, NIMPL, impl_names, measure_timers, s);
        for (int i = 0; i < NIMPL; i++) {
            bench_row *row = bench_row_begin(ctx, impl_names[i], has_braid(i) ? s->backend : "-");
            bench_row_param_double(row, "idle_window_s", s->window);
            bench_row_param_int(row, "timers", NTIMERS);
            bench_row_metric(row, "idle_cpu_pct", s->cpu[i], ctx->runs, "%");
            bench_row_metric(row, "idle_wakeups_per_s", s->wake[i], ctx->runs, "/s");
            if (has_braid(i)) {
                bench_row_metric(row, "braid_late_p50_us", s->b50[i], ctx->runs, "us");
                bench_row_metric(row, "braid_late_p99_us", s->b99[i], ctx->runs, "us");
            }
            if (has_glib(i)) {
                bench_row_metric(row, "glib_late_p50_us", s->g50[i], ctx->runs, "us");
                bench_row_metric(row, "glib_late_p99_us", s->g99[i], ctx->runs, "us");
            }
            bench_row_end(row);
        }
    }
    /* GTK under load. */
    snprintf(g->demo, sizeof g->demo, "%s", ctx->self_exe ? ctx->self_exe : "braid-bench");
    char *sl = strrchr(g->demo, '/');
    size_t dl = sl ? (size_t)(sl - g->demo) : 0;
    snprintf(g->demo + dl, sizeof g->demo - dl, "%s../examples/mdi/braid-mdi", sl ? "/" : "");
    snprintf(g->fixture, sizeof g->fixture, "%s/../tests/with_xvfb.sh", ctx->data_dir);
    if (ctx->smoke) {
        bench_note(ctx, "--smoke: the GTK latency part (3 s of load per run) is left out");
    } else if (access(g->demo, X_OK) != 0) {
        bench_note(ctx, "braid-mdi was not built (GTK 3 missing: libgtk-3-dev): no GTK latency rows");
    } else if (!bench_have_program("Xvfb") || access(g->fixture, R_OK) != 0) {
        bench_note(ctx, "Xvfb is not installed (xvfb): no GTK latency rows");
    } else {
        bench_progress_fraction(ctx, 0.6);
        bench_alternate(ctx, "GTK, 1000 lines/s", NGTK, gtk_names, measure_gtk, g);
        for (int i = 0; i < NGTK; i++) {
            bench_row *row = bench_row_begin(ctx, gtk_names[i], "epoll");
            bench_row_param_int(row, "lines_per_s", 1000);
            bench_row_param_int(row, "seconds", 3);
            bench_row_metric(row, "gtk_late_p50_us", g->p50[i], ctx->runs, "us");
            bench_row_metric(row, "gtk_late_p99_us", g->p99[i], ctx->runs, "us");
            bench_row_metric(row, "gtk_late_max_us", g->max[i], ctx->runs, "us");
            bench_row_metric(row, "lines_shown_pct", g->shown[i], ctx->runs, "%");
            bench_row_end(row);
        }
    }
    free(s);
    free(g);
    return 0;
}
#else
static int run(bench_ctx *ctx) {
    bench_note(ctx, "GLib was not found when braid-bench was built (libglib2.0-dev): nothing measured");
    return 0;
}
#endif

BENCH_EXPERIMENT(glib,
    .title = "GLib integration: idle CPU, timer lateness, GTK latency under load",
    .question = "braid runs inside GLib's main loop (GTK programs) or drives it. Does either side spin when the "
                "program is idle, do braid timers and GLib timeouts fire on time, and does a GTK program stay "
                "responsive while braid moves 1,000 messages a second?",
    .method = "Four programs alternate: a plain GMainLoop, a plain braid loop, braid inside GLib "
              "(braid_glib_source) and GLib inside braid (braid_glib_context), each with an idle socket and a "
              "far timer on each side it runs. Idle: 5 s in a child process each (the four at once), CPU from "
              "getrusage over the window, wake-ups = iterations of the driving loop. Timers: 200 a side, one "
              "at a time, 1-5 ms, firing time minus deadline. GTK: the MDI demo (braid-mdi) in its own Xvfb, "
              "1,000 lines/s for 3 s over 3 TCP connections into GTK labels, a GLib timeout every 5 ms "
              "recording its lateness. Quick mode: the epoll backend only.",
    .run = run, .quick_seconds = 45, .full_seconds = 200, .quick_runs = 3, .ratio_base = "glib-only",
    .headline = "idle_cpu_pct,braid_late_p99_us,glib_late_p99_us,gtk_late_p99_us", .order = 150);
