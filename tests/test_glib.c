/* libbraid-glib on every backend, both directions: braid inside GLib
 * (braid_glib_source) and GLib inside braid (braid_glib_context). Timers and
 * sockets of both sides interleaved, TCP under load, idle without spinning,
 * nested main loops (what gtk_dialog_run does) keeping both sides running,
 * freeing from inside callbacks, and the leak gate after each case.
 *
 * Everything is ordered by causality (each step starts the next), never by
 * racing two clocks; every wait is bounded by a guard that fails the case. */
// ctest-labels: glib threads
#include "harness.h"
#include "support/net.h"
#include <braid/glib.h>
#include <glib-unix.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

/* Which side runs the thread in this case. */
typedef enum { GLIB_DRIVES, BRAID_DRIVES } driver;

typedef struct world {
    driver who;
    braid_loop *loop;
    GMainLoop *ml;                /* GLIB_DRIVES */
    braid_glib_source *src;
    braid_glib_context *gc;
    GSource *gsrc;                /* a reference to src's GSource, to see it destroyed */
    guint guard;
} world;

static gboolean guard_fired(gpointer what) {
    bt_fail(__FILE__, __LINE__, "timed out waiting for %s", (const char *)what);
}
static void braid_guard_fired(braid_timer *t, void *what) {
    (void)t;
    bt_fail(__FILE__, __LINE__, "timed out waiting for %s (braid guard)", (const char *)what);
}

static void world_open(world *w, driver who) {
    memset(w, 0, sizeof *w);
    w->who = who;
    w->loop = bt_loop_new(NULL);
    if (who == GLIB_DRIVES) {
        w->ml = g_main_loop_new(NULL, FALSE);
        BT_OK(braid_glib_source_new(w->loop, NULL, NULL, &w->src));
        w->gsrc = g_source_ref(braid_glib_source_gsource(w->src));
    } else {
        BT_OK(braid_glib_context_new(w->loop, NULL, NULL, &w->gc));
    }
}

/* Run the side that drives until world_done. */
static void world_run(world *w, const char *what) {
    w->guard = g_timeout_add_seconds(20, guard_fired, (gpointer)what);
    if (w->who == GLIB_DRIVES) g_main_loop_run(w->ml);
    else BT_OK(braid_loop_run(w->loop));
    g_source_remove(w->guard);
}

static void world_done(world *w) {
    if (w->who == GLIB_DRIVES) g_main_loop_quit(w->ml);
    else braid_loop_stop(w->loop);
}

static void world_close(world *w) {
    braid_glib_source_free(w->src);
    braid_glib_context_free(w->gc);
    if (w->ml) g_main_loop_unref(w->ml);
    /* Let closing transports finish (braid alone now), then the leak gate. */
    BT_OK(braid_loop_run(w->loop));
    bt_loop_destroy(w->loop);
    /* Nothing of ours is left on GLib's side either: the source is detached,
     * the context no longer acquired. */
    if (w->gsrc) {
        BT_TRUE(g_source_is_destroyed(w->gsrc));
        g_source_unref(w->gsrc);
    }
    BT_FALSE(g_main_context_is_owner(NULL));
}

/* ---- timers of both sides, each starting the other's ------------------------------- */
typedef struct chain {
    world *w;
    braid_timer bt;
    char order[64];
    int n, rounds;
    bool *done;
} chain;

static gboolean chain_glib(gpointer arg);
static void chain_braid(braid_timer *t, void *arg) {
    chain *c = arg;
    (void)t;
    c->order[c->n++] = 'b';
    if (c->n < c->rounds) g_timeout_add(2, chain_glib, c);
    else *c->done = true;
}
static gboolean chain_glib(gpointer arg) {
    chain *c = arg;
    c->order[c->n++] = 'g';
    if (c->n < c->rounds) BT_OK(braid_timer_start(&c->bt, BRAID_MSEC(2)));
    else *c->done = true;
    return G_SOURCE_REMOVE;
}

/* ---- sockets of both sides: a byte goes round through a braid watcher and a
 * GLib fd source, 200 times ---------------------------------------------------------- */
typedef struct ring {
    int a[2], b[2];               /* braid watches a[0] and writes b[1]; GLib the reverse */
    braid_watch w;
    guint gsrc;
    int braid_hops, glib_hops, rounds;
    bool *done;
} ring;

static void ring_braid(braid_watch *wt, unsigned ev, void *arg) {
    ring *r = arg;
    char c;
    (void)ev;
    while (read(wt->fd, &c, 1) == 1) {
        r->braid_hops++;
        BT_EQ(write(r->b[1], &c, 1), 1);
    }
}
static gboolean ring_glib(gint fd, GIOCondition cond, gpointer arg) {
    ring *r = arg;
    char c;
    (void)cond;
    while (read(fd, &c, 1) == 1) {
        r->glib_hops++;
        if (r->glib_hops < r->rounds) BT_EQ(write(r->a[1], &c, 1), 1);
        else *r->done = true;
    }
    return G_SOURCE_CONTINUE;
}

static void ring_open(world *w, ring *r, int rounds, bool *done) {
    memset(r, 0, sizeof *r);
    r->rounds = rounds;
    r->done = done;
    bt_socketpair(r->a);
    bt_socketpair(r->b);
    BT_OK(braid_watch_init(w->loop, &r->w, r->a[0], ring_braid, r));
    BT_OK(braid_watch_set_interest(&r->w, BRAID_WATCH_READ));
    r->gsrc = g_unix_fd_add(r->b[0], G_IO_IN, ring_glib, r);
    BT_EQ(write(r->a[1], "x", 1), 1);
}

static void ring_close(ring *r) {
    braid_watch_close(&r->w);
    g_source_remove(r->gsrc);
    close(r->a[0]); close(r->a[1]); close(r->b[0]); close(r->b[1]);
}

/* ---- TCP under load: 1 MiB echoed through braid transports ------------------------- */
typedef struct tcp {
    world *w;
    braid_listener *listener;
    braid_factory server_f, client_f;
    braid_transport *client;
    size_t sent, echoed, total;
    bool *done;
    int conns;
} tcp;

static void srv_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(p->transport, buf, len);
}
static void srv_lost(braid_protocol *p, const braid_failure *f) { (void)p; (void)f; }
static const braid_protocol_ops srv_ops = { .data_received = srv_data, .connection_lost = srv_lost };

static void cli_push(tcp *t) {
    static char chunk[16384];
    while (t->sent < t->total && braid_transport_buffered(t->client) < 65536) {
        size_t n = t->total - t->sent < sizeof chunk ? t->total - t->sent : sizeof chunk;
        BT_OK(braid_transport_write(t->client, chunk, n));
        t->sent += n;
    }
}
static void cli_made(braid_protocol *p) {
    tcp *t = p->user;
    t->client = p->transport;
    t->conns++;
    cli_push(t);
}
static void cli_data(braid_protocol *p, const void *buf, size_t len) {
    tcp *t = p->user;
    (void)buf;
    t->echoed += len;
    cli_push(t);
    if (t->echoed == t->total) {
        *t->done = true;
        braid_transport_close(p->transport, BRAID_FOREVER);
    }
}
static void cli_lost(braid_protocol *p, const braid_failure *f) {
    tcp *t = p->user;
    (void)f;
    t->client = NULL;
    t->conns--;
}
static const braid_protocol_ops cli_ops = {
    .connection_made = cli_made, .data_received = cli_data, .connection_lost = cli_lost };

static braid_result tcp_listening(braid_result r, void *arg) {
    tcp *t = arg;
    t->listener = r.value;
    braid_address a;
    char desc[96];
    BT_OK(braid_listener_address(t->listener, &a));
    snprintf(desc, sizeof desc, "tcp:host=127.0.0.1:port=%d:timeout=5", braid_address_port(&a));
    braid_deferred *d = braid_endpoint_connect(t->w->loop, desc, &t->client_f);
    braid_deferred_unref(d);
    return braid_result_ok(NULL);
}

static void tcp_open(world *w, tcp *t, size_t total, bool *done) {
    memset(t, 0, sizeof *t);
    t->w = w;
    t->total = total;
    t->done = done;
    braid_factory_init(&t->server_f, &srv_ops, sizeof(braid_protocol), t);
    braid_factory_init(&t->client_f, &cli_ops, sizeof(braid_protocol), t);
    braid_deferred *d = braid_endpoint_listen(w->loop, "tcp:0:interface=127.0.0.1", &t->server_f);
    BT_OK(braid_deferred_add_callback(d, tcp_listening, t));
    braid_deferred_unref(d);
}

static void tcp_close(tcp *t) {
    if (t->listener) braid_listener_close(t->listener);
}

/* Timers, a byte ring and a TCP stream, all at once, under either driver. */
static void interleave(driver who) {
    world w;
    world_open(&w, who);
    bool timers_done = false, ring_done = false, tcp_done = false;
    chain c = { .w = &w, .rounds = 12, .done = &timers_done };
    braid_timer_init(w.loop, &c.bt, chain_braid, &c);
    BT_OK(braid_timer_start(&c.bt, BRAID_MSEC(1)));
    ring r;
    ring_open(&w, &r, 200, &ring_done);
    tcp t;
    tcp_open(&w, &t, 1u << 20, &tcp_done);
    /* One iteration of the driving side at a time until all three are done,
     * bounded by a guard on each side. */
    guint guard = g_timeout_add_seconds(20, guard_fired, "interleaved work (GLib guard)");
    braid_timer bguard;
    braid_timer_init(w.loop, &bguard, braid_guard_fired, "interleaved work");
    BT_OK(braid_timer_start(&bguard, BRAID_SECONDS(20)));
    braid_timer_unref(&bguard);
    while (!(timers_done && ring_done && tcp_done)) {
        if (who == GLIB_DRIVES) g_main_context_iteration(NULL, TRUE);
        else BT_OK(braid_loop_run_once(w.loop, 0));
    }
    g_source_remove(guard);
    braid_timer_stop(&bguard);
    BT_STREQ(c.order, "bgbgbgbgbgbg");
    BT_EQ(r.glib_hops, 200);
    BT_EQ(r.braid_hops, 200);
    BT_UEQ(t.echoed, t.total);
    ring_close(&r);
    tcp_close(&t);
    world_close(&w);
    BT_EQ(t.conns, 0);
}

BT_IO_TEST(glib_drives_timers_sockets_tcp_interleaved) { interleave(GLIB_DRIVES); }
BT_IO_TEST(braid_drives_timers_sockets_tcp_interleaved) { interleave(BRAID_DRIVES); }

/* ---- idle: neither side spins --------------------------------------------------------- */
/* A GSource that only counts GLib iterations (its prepare runs once in each). */
typedef struct counter { GSource base; int *n; } counter;
static gboolean count_prepare(GSource *s, gint *timeout) {
    ++*((counter *)s)->n;
    *timeout = -1;
    return FALSE;
}
static gboolean count_dispatch(GSource *s, GSourceFunc cb, gpointer d) { (void)s; (void)cb; (void)d; return G_SOURCE_CONTINUE; }
static GSourceFuncs count_funcs = { .prepare = count_prepare, .dispatch = count_dispatch };

typedef struct idle {
    world *w;
    int braid_fired, glib_fired, done;
    bool early;
    gint64 glib_deadline;
} idle;
/* Ten timers a side, one after the other, 10 ms apart. */
static void idle_braid(braid_timer *t, void *arg) {
    idle *i = arg;
    if (braid_loop_now_fresh(i->w->loop) < braid_timer_deadline(t)) i->early = true;
    if (++i->braid_fired < 10) BT_OK(braid_timer_start(t, BRAID_MSEC(10)));
    else if (++i->done == 2) world_done(i->w);
}
static gboolean idle_glib(gpointer arg) {
    idle *i = arg;
    if (g_get_monotonic_time() < i->glib_deadline) i->early = true;
    if (++i->glib_fired < 10) {
        i->glib_deadline = g_get_monotonic_time() + 10000;
        g_timeout_add(10, idle_glib, i);
    } else if (++i->done == 2) {
        world_done(i->w);
    }
    return G_SOURCE_REMOVE;
}
static gboolean never(gint fd, GIOCondition c, gpointer d) { (void)fd; (void)c; (void)d; return G_SOURCE_CONTINUE; }

static void idle_case(driver who) {
    world w;
    world_open(&w, who);
    int sv[2];
    bt_socketpair(sv);
    braid_watch quiet;               /* an idle fd on each side */
    BT_OK(braid_watch_init(w.loop, &quiet, sv[0], ring_braid, NULL));
    BT_OK(braid_watch_set_interest(&quiet, BRAID_WATCH_READ));
    guint gquiet = g_unix_fd_add(sv[1], G_IO_IN, never, NULL);
    int glib_iterations = 0;
    GSource *cs = g_source_new(&count_funcs, sizeof(counter));
    ((counter *)cs)->n = &glib_iterations;
    g_source_attach(cs, NULL);
    idle i = { .w = &w };
    braid_timer t;
    braid_timer_init(w.loop, &t, idle_braid, &i);
    BT_OK(braid_timer_start(&t, BRAID_MSEC(10)));
    i.glib_deadline = g_get_monotonic_time() + 10000;
    g_timeout_add(10, idle_glib, &i);
    uint64_t it0 = braid_loop_iteration(w.loop);
    world_run(&w, "twenty timers");
    uint64_t braid_iterations = braid_loop_iteration(w.loop) - it0;
    /* 100 ms of waiting for two chains of ten timers takes a few dozen
     * wake-ups; a side that spins (a timeout rounded down to the millisecond,
     * a source always ready) makes hundreds in each sub-millisecond wait.
     * A generous bound: not a timing measurement (braid-bench glib measures
     * idle CPU), a spin detector. */
    BT_LE(braid_iterations, 150);
    BT_LE(glib_iterations, 150);
    BT_FALSE(i.early);   /* never early, on either side */
    g_source_destroy(cs);
    g_source_unref(cs);
    g_source_remove(gquiet);
    braid_watch_close(&quiet);
    close(sv[0]); close(sv[1]);
    world_close(&w);
}

BT_IO_TEST(glib_drives_idle_does_not_spin) { idle_case(GLIB_DRIVES); }
BT_IO_TEST(braid_drives_idle_does_not_spin) { idle_case(BRAID_DRIVES); }

/* ---- nested main loops (gtk_dialog_run) keep both sides running -------------------------- */
typedef enum { FROM_BRAID_TIMER, FROM_BRAID_IO, FROM_GLIB } nest_from;
typedef struct nested {
    world *w;
    GMainLoop *inner;
    bool in_inner;
    braid_timer start, t2;
    braid_watch start_io, io;
    int start_sv[2], sv[2];
    int t2_inside, io_inside, g1_inside, after;
} nested;

static void nested_maybe_quit(nested *n) {
    if (n->t2_inside && n->io_inside && n->g1_inside) g_main_loop_quit(n->inner);
}
static void nested_t2(braid_timer *t, void *arg) {
    nested *n = arg;
    (void)t;
    n->t2_inside += n->in_inner;
    BT_EQ(write(n->sv[1], "z", 1), 1);     /* braid I/O next, inside too */
    nested_maybe_quit(n);
}
static void nested_io(braid_watch *wt, unsigned ev, void *arg) {
    nested *n = arg;
    char c;
    (void)ev;
    while (read(wt->fd, &c, 1) == 1) n->io_inside += n->in_inner;
    nested_maybe_quit(n);
}
static gboolean nested_g1(gpointer arg) {
    nested *n = arg;
    n->g1_inside += n->in_inner;
    nested_maybe_quit(n);
    return G_SOURCE_REMOVE;
}
/* The modal part: what gtk_dialog_run does. */
static void nested_run_inner(nested *n) {
    BT_OK(braid_timer_start(&n->t2, BRAID_MSEC(2)));
    g_timeout_add(3, nested_g1, n);
    n->in_inner = true;
    g_main_loop_run(n->inner);
    n->in_inner = false;
    n->after++;
    world_done(n->w);
}
static void nested_from_timer(braid_timer *t, void *arg) { (void)t; nested_run_inner(arg); }
static void nested_from_io(braid_watch *wt, unsigned ev, void *arg) {
    char c;
    (void)ev;
    if (read(wt->fd, &c, 1) == 1) nested_run_inner(arg);
}
static gboolean nested_from_glib(gpointer arg) {
    nested_run_inner(arg);
    return G_SOURCE_REMOVE;
}

static void nested_case(driver who, nest_from from) {
    world w;
    world_open(&w, who);
    nested n = { .w = &w, .inner = g_main_loop_new(NULL, FALSE) };
    bt_socketpair(n.sv);
    bt_socketpair(n.start_sv);
    braid_timer_init(w.loop, &n.start, nested_from_timer, &n);
    braid_timer_init(w.loop, &n.t2, nested_t2, &n);
    BT_OK(braid_watch_init(w.loop, &n.io, n.sv[0], nested_io, &n));
    BT_OK(braid_watch_set_interest(&n.io, BRAID_WATCH_READ));
    BT_OK(braid_watch_init(w.loop, &n.start_io, n.start_sv[0], nested_from_io, &n));
    BT_OK(braid_watch_set_interest(&n.start_io, BRAID_WATCH_READ));
    if (from == FROM_BRAID_TIMER) BT_OK(braid_timer_start(&n.start, BRAID_MSEC(1)));
    else if (from == FROM_BRAID_IO) BT_EQ(write(n.start_sv[1], "s", 1), 1);
    else g_timeout_add(1, nested_from_glib, &n);
    world_run(&w, "the nested loop");
    BT_EQ(n.t2_inside, 1);
    BT_EQ(n.io_inside, 1);
    BT_EQ(n.g1_inside, 1);
    BT_EQ(n.after, 1);
    braid_watch_close(&n.io);
    braid_watch_close(&n.start_io);
    close(n.sv[0]); close(n.sv[1]); close(n.start_sv[0]); close(n.start_sv[1]);
    g_main_loop_unref(n.inner);
    world_close(&w);
}

BT_IO_TEST(glib_drives_nested_loop_from_braid_timer) { nested_case(GLIB_DRIVES, FROM_BRAID_TIMER); }
BT_IO_TEST(glib_drives_nested_loop_from_braid_io) { nested_case(GLIB_DRIVES, FROM_BRAID_IO); }
BT_IO_TEST(glib_drives_nested_loop_from_glib) { nested_case(GLIB_DRIVES, FROM_GLIB); }
BT_IO_TEST(braid_drives_nested_loop_from_braid_timer) { nested_case(BRAID_DRIVES, FROM_BRAID_TIMER); }
BT_IO_TEST(braid_drives_nested_loop_from_braid_io) { nested_case(BRAID_DRIVES, FROM_BRAID_IO); }
BT_IO_TEST(braid_drives_nested_loop_from_glib) { nested_case(BRAID_DRIVES, FROM_GLIB); }

/* ---- a GLib source attached from a braid callback runs before braid sleeps -------------- */
typedef struct attach { world *w; int ran; } attach;
static gboolean attach_idle(gpointer arg) {
    attach *a = arg;
    a->ran++;
    world_done(a->w);
    return G_SOURCE_REMOVE;
}
static void attach_on_io(braid_watch *wt, unsigned ev, void *arg) {
    char c;
    (void)ev;
    if (read(wt->fd, &c, 1) == 1) g_idle_add(attach_idle, arg);   /* wakes nothing by itself */
}

static void attach_case(driver who) {
    world w;
    world_open(&w, who);
    attach a = { .w = &w };
    int sv[2];
    bt_socketpair(sv);
    braid_watch io;
    BT_OK(braid_watch_init(w.loop, &io, sv[0], attach_on_io, &a));
    BT_OK(braid_watch_set_interest(&io, BRAID_WATCH_READ));
    BT_EQ(write(sv[1], "x", 1), 1);
    /* Nothing else is pending: had GLib been prepared before the braid callback
     * and not after it, braid would sleep until the guard. */
    world_run(&w, "an idle source attached from a braid callback");
    BT_EQ(a.ran, 1);
    braid_watch_close(&io);
    close(sv[0]); close(sv[1]);
    world_close(&w);
}

BT_IO_TEST(glib_drives_source_attached_from_braid_callback_runs) { attach_case(GLIB_DRIVES); }
BT_IO_TEST(braid_drives_source_attached_from_braid_callback_runs) { attach_case(BRAID_DRIVES); }

/* ---- teardown: from inside callbacks, and the leak gate ----------------------------------- */
static void free_source_cb(braid_timer *t, void *arg) {
    world *w = arg;
    (void)t;
    braid_glib_source_free(w->src);          /* from inside the source's own dispatch */
    w->src = NULL;
    g_main_loop_quit(w->ml);
}
static gboolean free_context_cb(gpointer arg) {
    world *w = arg;
    braid_glib_context_free(w->gc);          /* from inside the driver's dispatch */
    w->gc = NULL;
    braid_loop_stop(w->loop);
    return G_SOURCE_REMOVE;
}

BT_IO_TEST(glib_drives_source_freed_from_its_own_callback) {
    world w;
    world_open(&w, GLIB_DRIVES);
    BT_ERR(braid_loop_free(w.loop), BRAID_EBUSY);   /* the source is a handle */
    braid_timer t;
    braid_timer_init(w.loop, &t, free_source_cb, &w);
    BT_OK(braid_timer_start(&t, BRAID_MSEC(1)));
    w.guard = g_timeout_add_seconds(20, guard_fired, "the timer");
    g_main_loop_run(w.ml);
    g_source_remove(w.guard);
    BT_TRUE(w.src == NULL);
    world_close(&w);
}

BT_IO_TEST(braid_drives_context_freed_from_a_glib_callback) {
    world w;
    world_open(&w, BRAID_DRIVES);
    BT_TRUE(g_main_context_is_owner(NULL));
    BT_ERR(braid_loop_free(w.loop), BRAID_EBUSY);   /* the driver is a handle */
    g_timeout_add(1, free_context_cb, &w);
    braid_timer guard;
    braid_timer_init(w.loop, &guard, braid_guard_fired, "the GLib timeout");
    BT_OK(braid_timer_start(&guard, BRAID_SECONDS(20)));
    braid_timer_unref(&guard);
    BT_OK(braid_loop_run(w.loop));
    braid_timer_stop(&guard);
    BT_TRUE(w.gc == NULL);
    world_close(&w);
}

BT_TEST(context_owned_by_another_thread_is_busy) {
    braid_loop *loop = bt_loop_new(NULL);
    GMainContext *ctx = g_main_context_new();
    braid_glib_context *gc;
    BT_OK(braid_glib_context_new(loop, ctx, NULL, &gc));
    braid_glib_context *again;
    BT_OK(braid_glib_context_new(loop, ctx, &(braid_glib_context_options){ .unref = true }, &again));
    braid_glib_context_free(again);   /* acquiring twice on one thread is GLib's rule too */
    braid_glib_context_free(gc);
    g_main_context_unref(ctx);
    bt_loop_destroy(loop);
}

/* ---- GLib's fds come and go: braid's watchers follow ---------------------------------------- */
typedef struct dyn { world *w; int fired[3]; guint ids[3]; int sv[3][2]; int step; } dyn;
static gboolean dyn_fd(gint fd, GIOCondition c, gpointer arg) {
    dyn *d = arg;
    char b;
    (void)c;
    for (int i = 0; i < 3; i++)
        if (d->sv[i][0] == fd) {
            d->fired[i]++;
            if (read(fd, &b, 1) != 1) bt_fail(__FILE__, __LINE__, "spurious readiness");
            d->ids[i] = 0;
        }
    return G_SOURCE_REMOVE;
}
static gboolean dyn_step(gpointer arg) {
    dyn *d = arg;
    if (d->step < 3) {
        BT_EQ(write(d->sv[d->step][1], "x", 1), 1);
        d->step++;
        return G_SOURCE_CONTINUE;
    }
    world_done(d->w);
    return G_SOURCE_REMOVE;
}

BT_IO_TEST(braid_drives_glib_fd_sources_added_and_removed) {
    world w;
    world_open(&w, BRAID_DRIVES);
    BT_OK(braid_loop_run_once(w.loop, BRAID_LOOP_RUN_NOWAIT));   /* GLib's own fds watched */
    size_t base = braid_loop_watched_fds(w.loop, 0, NULL);
    dyn d = { .w = &w };
    for (int i = 0; i < 3; i++) {
        bt_socketpair(d.sv[i]);
        d.ids[i] = g_unix_fd_add(d.sv[i][0], G_IO_IN, dyn_fd, &d);
    }
    BT_OK(braid_loop_run_once(w.loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_loop_watched_fds(w.loop, 0, NULL), base + 3);
    g_timeout_add(2, dyn_step, &d);
    world_run(&w, "three fd sources");
    for (int i = 0; i < 3; i++) BT_EQ(d.fired[i], 1);
    BT_OK(braid_loop_run_once(w.loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(braid_loop_watched_fds(w.loop, 0, NULL), base);   /* removed sources: watchers gone */
    for (int i = 0; i < 3; i++) { close(d.sv[i][0]); close(d.sv[i][1]); }
    world_close(&w);
}

/* ---- a call posted from another thread wakes the loop GLib is sleeping in ------------------- */
typedef struct xpost { world *w; int ran; } xpost;
static void xpost_call(void *arg) {
    xpost *x = arg;
    x->ran++;
    world_done(x->w);
}
static void *xpost_thread(void *arg) {
    xpost *x = arg;
    BT_OK(braid_loop_post(x->w->loop, xpost_call, x));
    return NULL;
}

static void xpost_case(driver who) {
    world w;
    world_open(&w, who);
    xpost x = { .w = &w };
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, xpost_thread, &x), 0);
    world_run(&w, "the posted call");
    BT_EQ(pthread_join(th, NULL), 0);
    BT_EQ(x.ran, 1);
    world_close(&w);
}

BT_IO_TEST(glib_drives_call_posted_from_a_thread) { xpost_case(GLIB_DRIVES); }
BT_IO_TEST(braid_drives_call_posted_from_a_thread) { xpost_case(BRAID_DRIVES); }

/* ---- braid_loop_stop on a loop GLib drives: on_stop, and no spin without it ----------------- */
typedef struct stopper { GMainLoop *ml; int on_stop; int thread_stops; braid_loop *loop; } stopper;
static void stop_quit(braid_loop *loop, void *arg) {
    stopper *s = arg;
    BT_TRUE(loop == s->loop);
    s->on_stop++;
    g_main_loop_quit(s->ml);
}
static void stop_from_timer(braid_timer *t, void *arg) {
    (void)t;
    braid_loop_stop(arg);
}
static void *stop_from_thread(void *arg) {
    braid_loop_stop(arg);
    return NULL;
}

/* A braid callback (and then another thread) asks the loop to stop: the
 * source hands each request to on_stop, once, which quits the GLib loop. */
BT_IO_TEST(glib_drives_loop_stop_calls_on_stop) {
    braid_loop *loop = bt_loop_new(NULL);
    stopper s = { .ml = g_main_loop_new(NULL, FALSE), .loop = loop };
    braid_glib_source *src;
    BT_OK(braid_glib_source_new(loop, NULL,
                                &(braid_glib_source_options){ .on_stop = stop_quit, .stop_arg = &s }, &src));
    guint guard = g_timeout_add_seconds(20, guard_fired, (gpointer)"on_stop after a timer's stop");
    braid_timer t;
    braid_timer_init(loop, &t, stop_from_timer, loop);
    BT_OK(braid_timer_start(&t, BRAID_MSEC(1)));
    g_main_loop_run(s.ml);
    BT_EQ(s.on_stop, 1);
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, stop_from_thread, loop), 0);
    g_main_loop_run(s.ml);          /* the thread's stop wakes GLib and quits it again */
    BT_EQ(pthread_join(th, NULL), 0);
    BT_EQ(s.on_stop, 2);
    g_source_remove(guard);
    braid_glib_source_free(src);
    g_main_loop_unref(s.ml);
    bt_loop_destroy(loop);
}

static gboolean quit_ml(gpointer ml) {
    g_main_loop_quit(ml);
    return G_SOURCE_REMOVE;
}

/* Without on_stop the request is dropped (one warning): GLib does not spin on
 * a stop nobody can honour (a pending stop keeps braid's timeout at 0). */
BT_IO_TEST(glib_drives_loop_stop_without_on_stop_does_not_spin) {
    braid_loop *loop = bt_loop_new(NULL);
    GMainLoop *ml = g_main_loop_new(NULL, FALSE);
    braid_glib_source *src;
    BT_OK(braid_glib_source_new(loop, NULL, NULL, &src));
    braid_timer t;
    braid_timer_init(loop, &t, stop_from_timer, loop);
    BT_OK(braid_timer_start(&t, BRAID_MSEC(1)));
    g_timeout_add(50, quit_ml, ml);
    uint64_t it0 = braid_loop_iteration(loop);
    g_main_loop_run(ml);
    /* A spin runs braid thousands of times in 50 ms; a handful is the timer
     * and the stop's wake-up. A spin detector, not a timing measurement. */
    BT_LE(braid_loop_iteration(loop) - it0, 20);
    BT_FALSE(braid_loop_take_stop(loop));   /* the request was taken, not left pending */
    braid_glib_source_free(src);
    g_main_loop_unref(ml);
    bt_loop_destroy(loop);
}

/* ---- one descriptor watched by both loops ------------------------------------------------- */
typedef struct both { world *w; int braid_seen, glib_seen; } both;
static void both_braid(braid_watch *wt, unsigned ev, void *arg) {
    both *b = arg;
    (void)ev;
    b->braid_seen++;
    braid_watch_set_interest(wt, 0);
    if (b->glib_seen) world_done(b->w);
}
static gboolean both_glib(gint fd, GIOCondition c, gpointer arg) {
    both *b = arg;
    (void)fd; (void)c;
    b->glib_seen++;
    if (b->braid_seen) world_done(b->w);
    return G_SOURCE_REMOVE;
}

/* A program hands one socket to both loops (a braid watcher and a GLib fd
 * source): both are told it is readable, whichever watched it first. */
static void both_case(driver who, bool braid_first) {
    world w;
    world_open(&w, who);
    int sv[2];
    bt_socketpair(sv);
    both b = { .w = &w };
    braid_watch bw;
    guint gid = 0;
    if (!braid_first) {
        gid = g_unix_fd_add(sv[0], G_IO_IN, both_glib, &b);
        /* one braid iteration: its prepare hook watches GLib's fds */
        BT_GE(braid_loop_run_once(w.loop, BRAID_LOOP_RUN_NOWAIT), 0);
    }
    BT_OK(braid_watch_init(w.loop, &bw, sv[0], both_braid, &b));
    BT_OK(braid_watch_set_interest(&bw, BRAID_WATCH_READ));
    if (braid_first) gid = g_unix_fd_add(sv[0], G_IO_IN, both_glib, &b);
    BT_EQ(write(sv[1], "x", 1), 1);
    world_run(&w, "both loops to see the descriptor readable");
    BT_GE(b.braid_seen, 1);
    BT_EQ(b.glib_seen, 1);
    (void)gid;
    braid_watch_close(&bw);
    close(sv[0]); close(sv[1]);
    world_close(&w);
}
BT_IO_TEST(braid_drives_one_fd_watched_by_both_braid_first) { both_case(BRAID_DRIVES, true); }
BT_IO_TEST(braid_drives_one_fd_watched_by_both_glib_first) { both_case(BRAID_DRIVES, false); }
BT_IO_TEST(glib_drives_one_fd_watched_by_both) { both_case(GLIB_DRIVES, true); }

