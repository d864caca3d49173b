/* Driving the loop in a test: see run.h. */
#include "run.h"

void bt__run_once(braid_loop *loop, unsigned flags, const char *file, int line) {
    int rc = braid_loop_run_once(loop, flags);
    if (rc < 0) bt_fail(file, line, "braid_loop_run_once: %s", braid_strerror(rc));
}

void bt_run_until_pred(braid_loop *loop, bool (*pred)(void *arg), void *arg, long max, const char *what) {
    for (long i = 0; i < max && !pred(arg); i++) bt__run_once(loop, 0, __FILE__, __LINE__);
    if (!pred(arg)) bt_fail(__FILE__, __LINE__, "not reached in %ld iterations: %s", max, what);
}

int bt_drain(braid_loop *loop) {
    int i = 0, rc;
    while (i < 1000) {
        rc = braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        i++;
        if (rc < 0) bt_fail(__FILE__, __LINE__, "braid_loop_run_once: %s", braid_strerror(rc));
        if (rc == 0) break;
    }
    return i;
}

void bt_spin(braid_loop *loop, int n) {
    for (int i = 0; i < n; i++) bt__run_once(loop, BRAID_LOOP_RUN_NOWAIT, __FILE__, __LINE__);
}

void bt_advance(braid_loop *loop, uint64_t ns) {
    int rc = braid_loop_advance(loop, ns);
    if (rc < 0) bt_fail(__FILE__, __LINE__, "braid_loop_advance: %s", braid_strerror(rc));
    bt_drain(loop);
}
