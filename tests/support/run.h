/* Driving the loop in a test: run until a condition holds, run until idle,
 * advance the fake clock and run, spin a fixed number of iterations.
 *
 *     BT_RUN_UNTIL(loop, g.done && s.made == 1, 1000);   // fails naming the condition
 *     bt_drain(loop);                        // ready work done, nothing alive (bounded)
 *     bt_advance(loop, BRAID_MSEC(5));       // fake clock forward, then bt_drain
 *     bt_spin(loop, 3);                      // exactly 3 NOWAIT iterations
 *
 * Every bound is a count of iterations, never a time: a condition that does
 * not come is a failure with the condition's text and the bound in the
 * message, not a hang (CTest's timeout is the last resort). These own
 * nothing: the loop is the test's. (bt_run_until(loop, &flag, max) in
 * harness.h is the flag form of BT_RUN_UNTIL.) */
#ifndef BRAID_TESTS_SUPPORT_RUN_H
#define BRAID_TESTS_SUPPORT_RUN_H

#include "../harness.h"

/* One iteration; a poller failure fails the case (at file:line). */
void bt__run_once(braid_loop *loop, unsigned flags, const char *file, int line);

/* Run iterations (waiting for I/O or timers as the loop does) until cond is
 * true; fails after max iterations with "not reached in N iterations: cond". */
#define BT_RUN_UNTIL(loop, cond, max) BT__RUN_UNTIL(loop, cond, max, 0)
/* The same with NOWAIT iterations: for a loop with nothing to wait for, or
 * where the test itself moves time (fake clock) or peers (raw sockets). */
#define BT_RUN_UNTIL_NOWAIT(loop, cond, max) BT__RUN_UNTIL(loop, cond, max, BRAID_LOOP_RUN_NOWAIT)
#define BT__RUN_UNTIL(loop, cond, max, flags)                                   \
    do {                                                                         \
        long bt_max_ = (long)(max);                                              \
        for (long bt_i_ = 0; bt_i_ < bt_max_ && !(cond); bt_i_++)                \
            bt__run_once((loop), (flags), __FILE__, __LINE__);                   \
        if (!(cond))                                                             \
            bt_fail(__FILE__, __LINE__, "not reached in %ld iterations: %s", bt_max_, #cond); \
    } while (0)

/* Predicate form, for conditions a function computes: run until pred(arg)
 * is true, at most max iterations; fails naming `what`. */
void bt_run_until_pred(braid_loop *loop, bool (*pred)(void *arg), void *arg, long max, const char *what);

/* NOWAIT iterations until the loop has nothing alive (braid_loop_run_once
 * returns 0), at most 1000; returns the iterations run. With a listener
 * or a watcher open, that is the bound: the ready work is done. */
int bt_drain(braid_loop *loop);
/* Exactly n NOWAIT iterations, each must succeed. */
void bt_spin(braid_loop *loop, int n);
/* Move the loop's fake clock by ns (braid_loop_advance), then bt_drain. */
void bt_advance(braid_loop *loop, uint64_t ns);

#endif
