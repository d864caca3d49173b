/* The allocation-failure walk over the loop's core scenarios: for N = 1, 2,
 * ... fail the Nth allocation; the scenario must report an error (never
 * crash) and leave nothing allocated; stop when it succeeds with no failure
 * injected. */
#include "harness.h"
#include "support/net.h"
#include "support/walk.h"
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

static void noop_io(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; (void)arg; }
static void noop_timer(braid_timer *t, void *arg) { (void)t; (void)arg; }
static void noop_call(void *arg) { ++*(int *)arg; }

/* Returns 0 on success or the first error; always cleans up. */
static int scenario(void *arg) {
    (void)arg;
    braid_loop *loop;
    int rc = braid_loop_new(NULL, &loop);
    if (rc < 0) return rc;
    int sv[2];
    bt_socketpair(sv);
    /* a watcher on a high fd forces the fd table to grow */
    int hi = fcntl(sv[0], F_DUPFD_CLOEXEC, 700);
    braid_watch w1, w2;
    braid_timer timers[100];
    int calls = 0, ntimers = 0, w1_open = 0, w2_open = 0;
    if ((rc = braid_watch_init(loop, &w1, sv[0], noop_io, NULL)) < 0) goto out;
    w1_open = 1;
    if ((rc = braid_watch_set_interest(&w1, BRAID_WATCH_READ)) < 0) goto out;
    if ((rc = braid_watch_init(loop, &w2, hi, noop_io, NULL)) < 0) goto out;
    w2_open = 1;
    if ((rc = braid_watch_set_interest(&w2, BRAID_WATCH_READ | BRAID_WATCH_WRITE)) < 0) goto out;
    for (; ntimers < 100; ntimers++) {
        braid_timer_init(loop, &timers[ntimers], noop_timer, NULL);
        if ((rc = braid_timer_start(&timers[ntimers], BRAID_SECONDS(10 + ntimers))) < 0) goto out;
    }
    braid_timer *later = braid_timer_call_later(loop, BRAID_SECONDS(1), noop_call, &calls);
    if (!later) { rc = BRAID_ENOMEM; goto out; }
    braid_timer_cancel(later);
    if ((rc = braid_loop_post(loop, noop_call, &calls)) < 0) goto out;
    if ((rc = braid_loop_soon(loop, noop_call, &calls)) < 0) {
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* run the posted one */
        goto out;
    }
    if ((rc = braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT)) < 0) goto out;
    if (calls != 2) abort();
    rc = 0;
out:
    for (int i = 0; i < ntimers; i++) braid_timer_stop(&timers[i]);
    if (w1_open) braid_watch_close(&w1);
    if (w2_open) braid_watch_close(&w2);
    bt_loop_destroy(loop);
    close(sv[0]); close(sv[1]); close(hi);
    return rc;
}

BT_TEST(allocation_failure_walk) {
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "loop core", .body = scenario, .enomem_only = true,
                                                 .must_fail = true });
    BT_GE(r.errors, 5);   /* the walk really exercised several allocation sites */
}

BT_TEST(sticky_failure_and_allocator_swap) {
    braid_test_fail_alloc_after(1, true);
    BT_TRUE(braid_malloc(8) == NULL);
    BT_TRUE(braid_malloc(8) == NULL);
    braid_test_fail_alloc_after(0, false);
    void *p = braid_malloc(8);
    BT_TRUE(p != NULL);
    BT_ERR(braid_allocator_set(NULL), BRAID_EBUSY);   /* memory outstanding */
    braid_free(p);
}
