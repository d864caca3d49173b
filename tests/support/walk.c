/* The allocation-failure walk: see walk.h. */
#include "walk.h"

bool bt_is_error_code(int rc) {
    if (rc >= 0) return false;
    const char *s = braid_strerror(rc);
    return strcmp(s, "unknown error") != 0 && strcmp(s, "unknown braid error") != 0 &&
           strncmp(s, "Unknown error", 13) != 0;
}

static void settle(const bt_walk *w) {
    if (!w->loop) return;
    int n = w->settle ? w->settle : 3;
    for (int i = 0; i < n; i++) braid_loop_run_once(w->loop, BRAID_LOOP_RUN_NOWAIT);
}

static int run(const bt_walk *w, long n, bool *injected) {
    if (w->setup) w->setup(w->arg);
    braid_test_fail_alloc_after(n, false);
    int rc = w->body(w->arg);
    *injected = braid_test_alloc_failed();
    braid_test_fail_alloc_after(0, false);
    if (w->teardown) w->teardown(w->arg, rc, *injected);
    settle(w);
    return rc;
}

bt_walk_result bt_alloc_walk(const bt_walk *w) {
    const char *name = w->name ? w->name : "alloc";
    long max = w->max_runs ? w->max_runs : 10000;
    bt_walk_result r = { 0 };
    bool injected;
    if (w->warm_up) {
        bt_context("walk %s: warm-up run", name);
        int rc = run(w, 0, &injected);
        if (rc != w->want)
            bt_fail(__FILE__, __LINE__, "warm-up run returned %d (%s), want %d", rc, braid_strerror(rc), w->want);
    }
    long base = braid_test_alloc_outstanding();
    for (long n = 1;; n++) {
        if (n > max) bt_fail(__FILE__, __LINE__, "walk %s: not done after %ld runs", name, max);
        bt_context("walk %s: allocation %ld fails", name, n);
        int rc = run(w, n, &injected);
        r.runs++;
        long left = braid_test_alloc_outstanding() - base;
        if (left != 0) bt_fail(__FILE__, __LINE__, "%ld braid allocation(s) leaked by the run", left);
        if (w->loop && braid_deferred_live(w->loop) != 0)
            bt_fail(__FILE__, __LINE__, "%zu Deferred(s) of the loop left alive by the run",
                    braid_deferred_live(w->loop));
        if (!injected) {
            bt_context("walk %s: the complete run (%ld allocations)", name, n - 1);
            BT_ERR(rc, w->want);
            break;
        }
        r.injected++;
        if (rc == w->want) {
            if (w->must_fail) bt_fail(__FILE__, __LINE__, "the run returned %d although an allocation failed", rc);
            continue;
        }
        r.errors++;
        if (w->enomem_only) BT_ERR(rc, BRAID_ENOMEM);
        else if (!bt_is_error_code(rc))
            bt_fail(__FILE__, __LINE__, "the run returned %d, not a braid error code", rc);
    }
    bt_context(NULL);
    return r;
}
