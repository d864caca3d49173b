/* The loop's embedding surface, on every backend: iterations nested inside
 * callbacks (what a modal dialog's main loop does to an embedded braid), the
 * watched-fd list (embedding a backend without a backend fd) and prepare
 * hooks (what a loop driving another one runs before each wait). */
// ctest-labels: loop
#include "harness.h"
#include "support/run.h"
#include "support/net.h"
#include <sys/socket.h>
#include <unistd.h>

/* ---- nested iterations ------------------------------------------------------------- */
typedef struct nest {
    braid_loop *loop;
    int calls[2];           /* per watcher */
    int nested_saw_other;   /* the other watcher ran inside the nested iteration */
    int depth;
} nest;

static void nest_io(braid_watch *w, unsigned ev, void *arg, int me) {
    nest *n = arg;
    char c;
    (void)ev;
    n->calls[me]++;
    if (read(w->fd, &c, 1) != 1) return;       /* a repeat delivery finds nothing */
    if (n->depth == 0 && n->calls[0] + n->calls[1] == 1) {
        /* The first callback of the batch runs an iteration of its own, as a
         * modal dialog opened from a network callback does. */
        n->depth++;
        BT_OK(braid_loop_run_once(n->loop, BRAID_LOOP_RUN_NOWAIT));
        n->depth--;
        n->nested_saw_other = n->calls[!me];
    }
}
static void nest_a(braid_watch *w, unsigned ev, void *arg) { nest_io(w, ev, arg, 0); }
static void nest_b(braid_watch *w, unsigned ev, void *arg) { nest_io(w, ev, arg, 1); }

BT_IO_TEST(iteration_nested_in_io_callback_delivers_each_event_once) {
    braid_loop *loop = bt_loop_new(NULL);
    nest n = { .loop = loop };
    int a[2], b[2];
    bt_socketpair(a);
    bt_socketpair(b);
    braid_watch wa, wb;
    BT_OK(braid_watch_init(loop, &wa, a[0], nest_a, &n));
    BT_OK(braid_watch_init(loop, &wb, b[0], nest_b, &n));
    BT_OK(braid_watch_set_interest(&wa, BRAID_WATCH_READ));
    BT_OK(braid_watch_set_interest(&wb, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));   /* arm (io_uring) */
    BT_EQ(write(a[1], "x", 1), 1);
    BT_EQ(write(b[1], "y", 1), 1);
    /* Both are ready in one batch. The nested iteration delivers the rest of
     * the outer batch (the other watcher) and nothing twice; the outer one
     * then has nothing left to deliver. */
    BT_RUN_UNTIL(loop, n.calls[0] + n.calls[1] >= 2, 100);
    BT_EQ(n.calls[0], 1);
    BT_EQ(n.calls[1], 1);
    BT_EQ(n.nested_saw_other, 1);
    /* And the loop goes on normally afterwards. */
    BT_EQ(write(a[1], "z", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(n.calls[0], 2);
    BT_EQ(n.calls[1], 1);
    braid_watch_close(&wa);
    braid_watch_close(&wb);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    bt_loop_destroy(loop);
}

/* ---- the watched-fd list ------------------------------------------------------------- */
static void noop_io(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; (void)arg; }

static bool listed(const braid_loop_fd *l, size_t n, int fd, unsigned events) {
    for (size_t i = 0; i < n; i++)
        if (l[i].fd == fd) return l[i].events == events;
    return false;
}

BT_IO_TEST(watched_fds_lists_each_watcher_with_interest) {
    braid_loop *loop = bt_loop_new(NULL);
    int a[2], b[2];
    bt_socketpair(a);
    bt_socketpair(b);
    size_t base = braid_loop_watched_fds(loop, 0, NULL);   /* the loop's own wake-up fd */
    BT_GE(base, 1);
    braid_watch wa, wb, wc;
    BT_OK(braid_watch_init(loop, &wa, a[0], noop_io, NULL));
    BT_OK(braid_watch_init(loop, &wb, b[0], noop_io, NULL));
    BT_OK(braid_watch_init(loop, &wc, a[1], noop_io, NULL));   /* no interest: not listed */
    BT_OK(braid_watch_set_interest(&wa, BRAID_WATCH_READ));
    BT_OK(braid_watch_set_interest(&wb, BRAID_WATCH_READ | BRAID_WATCH_WRITE));
    braid_loop_fd l[16];
    size_t n = braid_loop_watched_fds(loop, 16, l);
    BT_EQ(n, base + 2);
    BT_TRUE(listed(l, n, a[0], BRAID_WATCH_READ));
    BT_TRUE(listed(l, n, b[0], BRAID_WATCH_READ | BRAID_WATCH_WRITE));
    BT_FALSE(listed(l, n, a[1], 0));
    for (size_t i = 1; i < n; i++) BT_LT(l[i - 1].fd, l[i].fd);   /* ascending */
    /* Too little room: the total, and only cap entries written. */
    braid_loop_fd one[1] = { { -7, 0 } };
    BT_EQ(braid_loop_watched_fds(loop, 1, one), base + 2);
    BT_GE(one[0].fd, 0);
    /* Interest changes and closes are seen at once. */
    BT_OK(braid_watch_set_interest(&wb, BRAID_WATCH_WRITE));
    braid_watch_close(&wa);
    n = braid_loop_watched_fds(loop, 16, l);
    BT_EQ(n, base + 1);
    BT_TRUE(listed(l, n, b[0], BRAID_WATCH_WRITE));
    BT_FALSE(listed(l, n, a[0], BRAID_WATCH_READ));
    braid_watch_close(&wb);
    braid_watch_close(&wc);
    BT_EQ(braid_loop_watched_fds(loop, 16, l), base);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    bt_loop_destroy(loop);
}

/* ---- prepare hooks ------------------------------------------------------------------- */
typedef struct prep {
    braid_loop *loop;
    braid_timer now_timer;     /* started by the hook, due at once */
    int runs, fired;
    uint64_t fired_in;         /* iteration the timer fired in */
    braid_prepare *stop_other; /* stopped by the hook when set */
    bool stop_self, nest;
    int nested_runs;
} prep;

static void prep_fire(braid_timer *t, void *arg) {
    prep *p = arg;
    (void)t;
    p->fired++;
    p->fired_in = braid_loop_iteration(p->loop);
}

static void prep_hook(braid_prepare *h, void *arg) {
    prep *p = arg;
    p->runs++;
    if (!braid_timer_is_active(&p->now_timer) && !p->fired) braid_timer_start(&p->now_timer, 0);
    if (p->stop_other) braid_prepare_stop(p->stop_other);
    if (p->stop_self) braid_prepare_stop(h);
    if (p->nest) {
        int before = p->runs;
        BT_OK(braid_loop_run_once(p->loop, BRAID_LOOP_RUN_NOWAIT));
        p->nested_runs += p->runs - before;
    }
}

static void safety(braid_timer *t, void *arg) { (void)t; (void)arg; }

BT_IO_TEST(prepare_hook_runs_before_the_wait_and_shortens_it) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2];
    bt_socketpair(sv);
    braid_watch w;                             /* alive, never ready: a wait would block */
    BT_OK(braid_watch_init(loop, &w, sv[0], noop_io, NULL));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    braid_timer guard;                         /* bounds the test if the hook did not run */
    braid_timer_init(loop, &guard, safety, NULL);
    BT_OK(braid_timer_start(&guard, BRAID_SECONDS(5)));
    prep p = { .loop = loop };
    braid_timer_init(loop, &p.now_timer, prep_fire, &p);
    braid_prepare h;
    memset(&h, 0, sizeof h);
    braid_prepare_start(loop, &h, prep_hook, &p);
    uint64_t it = braid_loop_iteration(loop);
    BT_OK(braid_loop_run_once(loop, 0));       /* the hook's timer makes the wait 0 */
    BT_EQ(p.runs, 1);
    BT_EQ(p.fired, 1);
    BT_UEQ(p.fired_in, it);                    /* in this very iteration */
    BT_TRUE(braid_timer_is_active(&guard));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.runs, 2);                          /* once per iteration */
    /* The leak gate counts a started hook. */
    braid_watch_close(&w);
    braid_timer_stop(&guard);
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    braid_prepare_stop(&h);
    braid_prepare_stop(&h);                    /* idempotent */
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(p.runs, 2);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

BT_IO_TEST(prepare_hooks_stop_themselves_and_others_and_do_not_nest) {
    braid_loop *loop = bt_loop_new(NULL);
    prep a = { .loop = loop, .fired = 1 }, b = { .loop = loop, .fired = 1 }, c = { .loop = loop, .fired = 1 };
    braid_timer_init(loop, &a.now_timer, prep_fire, &a);
    braid_timer_init(loop, &b.now_timer, prep_fire, &b);
    braid_timer_init(loop, &c.now_timer, prep_fire, &c);
    braid_prepare ha, hb, hc;
    memset(&ha, 0, sizeof ha); memset(&hb, 0, sizeof hb); memset(&hc, 0, sizeof hc);
    braid_prepare_start(loop, &ha, prep_hook, &a);
    braid_prepare_start(loop, &hb, prep_hook, &b);
    braid_prepare_start(loop, &hc, prep_hook, &c);
    a.stop_other = &hb;                        /* a stops the next one in the pass */
    c.stop_self = true;
    c.nest = true;                             /* and c runs an iteration: no hooks in it */
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(a.runs, 1);
    BT_EQ(b.runs, 0);
    BT_EQ(c.runs, 1);
    BT_EQ(c.nested_runs, 0);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(a.runs, 2);
    BT_EQ(c.runs, 1);
    /* A hook does not keep run() going. */
    BT_OK(braid_loop_run(loop));
    braid_prepare_stop(&ha);
    bt_loop_destroy(loop);
}
