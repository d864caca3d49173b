/* Shared by the whole-connection fuzz targets (fuzz_http_server,
 * fuzz_http_client): a loop on a fake clock, driven without sleeping.
 *
 * fzw_spin runs the loop until nothing is ready (bounded), so an input fed a
 * byte at a time costs one poll(2) per piece rather than a fixed handful.
 * fzw_expire moves the fake clock on in steps until no timer is left, so
 * every timeout an input armed fires, and no further: a fixed jump of
 * minutes per input would overflow the clock in a long run of a target that
 * keeps its loop. */
#ifndef BRAID_FUZZ_WORLD_H
#define BRAID_FUZZ_WORLD_H

#include <braid.h>
#include <braid/testing.h>
#include <stdio.h>
#include <stdlib.h>

/* The loop's log: errors only (the leak gate names what it found); the
 * warnings bad input causes by design would drown the fuzzer's output. */
static void fzw_log(void *ctx, braid_log_level level, const char *msg) {
    (void)ctx;
    if (level >= BRAID_LOG_ERROR) fprintf(stderr, "braid: %s\n", msg);
}

/* Run ready work until the loop is idle: 0, or abort on a loop error. */
static void fzw_spin(braid_loop *loop) {
    for (int i = 0; i < 64; i++) {
        int rc = braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        if (rc < 0) abort();
        if (rc == 0) return;
    }
}

/* True when the loop holds no timer, ready call or posted call. */
static bool fzw_quiet(braid_loop *loop) { return braid_loop_next_timeout(loop) == BRAID_FOREVER; }

/* Advance the clock in `step`s until every timer has fired (at most
 * max_steps; false if timers remain then, i.e. something re-arms forever). */
static bool fzw_expire(braid_loop *loop, braid_fake_clock *fc, uint64_t step, int max_steps) {
    fzw_spin(loop);
    for (int i = 0; i < max_steps && !fzw_quiet(loop); i++) {
        braid_fake_clock_advance(fc, step);
        fzw_spin(loop);
    }
    return fzw_quiet(loop);
}

#endif
