/* The loop's embedding surface, on every backend: iterations nested inside
 * callbacks (what a modal dialog's main loop does to an embedded braid), the
 * watched-fd list (embedding a backend without a backend fd) and prepare
 * hooks (what a loop driving another one runs before each wait). */
// ctest-labels: loop
#include "harness.h"
#include <sys/socket.h>
#include <unistd.h>

static void pair(int sv[2]) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        bt_fail(__FILE__, __LINE__, "socketpair: %s", strerror(errno));
}

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
        BT_OK(braid_loop_run_once(n->loop, BRAID_RUN_NOWAIT));
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
    pair(a);
    pair(b);
    braid_watch wa, wb;
    BT_OK(braid_watch_init(loop, &wa, a[0], nest_a, &n));
    BT_OK(braid_watch_init(loop, &wb, b[0], nest_b, &n));
    BT_OK(braid_watch_set(&wa, BRAID_READ));
    BT_OK(braid_watch_set(&wb, BRAID_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_RUN_NOWAIT));   /* arm (io_uring) */
    BT_EQ(write(a[1], "x", 1), 1);
    BT_EQ(write(b[1], "y", 1), 1);
    /* Both are ready in one batch. The nested iteration delivers the rest of
     * the outer batch (the other watcher) and nothing twice; the outer one
     * then has nothing left to deliver. */
    for (int i = 0; i < 100 && n.calls[0] + n.calls[1] < 2; i++) BT_OK(braid_loop_run_once(loop, 0));
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
    pair(a);
    pair(b);
    size_t base = braid_loop_watched_fds(loop, 0, NULL);   /* the loop's own wake-up fd */
    BT_GE(base, 1);
    braid_watch wa, wb, wc;
    BT_OK(braid_watch_init(loop, &wa, a[0], noop_io, NULL));
    BT_OK(braid_watch_init(loop, &wb, b[0], noop_io, NULL));
    BT_OK(braid_watch_init(loop, &wc, a[1], noop_io, NULL));   /* no interest: not listed */
    BT_OK(braid_watch_set(&wa, BRAID_READ));
    BT_OK(braid_watch_set(&wb, BRAID_READ | BRAID_WRITE));
    braid_loop_fd l[16];
    size_t n = braid_loop_watched_fds(loop, 16, l);
    BT_EQ(n, base + 2);
    BT_TRUE(listed(l, n, a[0], BRAID_READ));
    BT_TRUE(listed(l, n, b[0], BRAID_READ | BRAID_WRITE));
    BT_FALSE(listed(l, n, a[1], 0));
    for (size_t i = 1; i < n; i++) BT_LT(l[i - 1].fd, l[i].fd);   /* ascending */
    /* Too little room: the total, and only cap entries written. */
    braid_loop_fd one[1] = { { -7, 0 } };
    BT_EQ(braid_loop_watched_fds(loop, 1, one), base + 2);
    BT_GE(one[0].fd, 0);
    /* Interest changes and closes are seen at once. */
    BT_OK(braid_watch_set(&wb, BRAID_WRITE));
    braid_watch_close(&wa);
    n = braid_loop_watched_fds(loop, 16, l);
    BT_EQ(n, base + 1);
    BT_TRUE(listed(l, n, b[0], BRAID_WRITE));
    BT_FALSE(listed(l, n, a[0], BRAID_READ));
    braid_watch_close(&wb);
    braid_watch_close(&wc);
    BT_EQ(braid_loop_watched_fds(loop, 16, l), base);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    bt_loop_destroy(loop);
}
