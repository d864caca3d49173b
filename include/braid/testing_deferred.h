/* braid/testing_deferred.h — synchronous assertions on Deferreds for tests.
 *
 * Twisted's successResultOf / failureResultOf / assertNoResult, shipped in
 * the library so users test their own code the way braid tests itself: drive
 * the code under test (with a fake clock and memory transports), then assert
 * on the Deferred it returned, right now, without running a loop.
 *
 *     braid_deferred *d = fetch(loop, "key");
 *     braid_deferred_expect_no_result(d);                    // nothing yet
 *     braid_fake_clock_advance(fc, BRAID_SECONDS(5));
 *     braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
 *     braid_failure *f = braid_deferred_expect_failure(d, BRAID_ETIMEDOUT);
 *     braid_failure_free(f);
 *     braid_deferred_unref(d);
 *
 * A failed expectation calls the handler (default: print file:line and what
 * the Deferred holds instead, then abort()); when a handler returns, the
 * call returns an empty result / NULL. The handler is process-wide test
 * state, like allocation fault injection. Loop thread only, like any use of
 * a Deferred.
 *
 * Ownership: braid_deferred_expect_success and braid_deferred_expect_failure take the result
 * out of d (d then holds braid_result_ok(NULL), so a failure taken this way counts
 * as consumed); the caller drops the returned result / frees the returned
 * failure. None of them touches d's references.
 */
#ifndef BRAID_TESTING_DEFERRED_H
#define BRAID_TESTING_DEFERRED_H

#include <braid/deferred.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef void (*braid_deferred_expect_fail_cb)(void *ctx, const char *file, int line, const char *msg);
/* NULL restores the default (print and abort). */
BRAID_API void braid_deferred_expect_set_handler(braid_deferred_expect_fail_cb fn, void *ctx);

/* d must hold a success result now: it is taken out and returned. */
BRAID_API braid_result braid_deferred_expect_success_at(braid_deferred *d, const char *file, int line);
/* d must hold a failure now, with this code unless code is 0: taken out and returned. */
BRAID_API braid_failure *braid_deferred_expect_failure_at(braid_deferred *d, int code, const char *file,
                                                 int line);
/* d must not have a result now (unfired, paused or waiting on a chain). */
BRAID_API void braid_deferred_expect_no_result_at(braid_deferred *d, const char *file, int line);

#define braid_deferred_expect_success(d) braid_deferred_expect_success_at((d), __FILE__, __LINE__)
#define braid_deferred_expect_failure(d, code) braid_deferred_expect_failure_at((d), (code), __FILE__, __LINE__)
#define braid_deferred_expect_no_result(d) braid_deferred_expect_no_result_at((d), __FILE__, __LINE__)

#ifdef __cplusplus
}
#endif
#endif
