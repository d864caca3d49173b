/* braid/testing.h — test doubles and hooks shipped with the library.
 *
 * Like Twisted's Clock, StringTransport and MemoryReactor, these live in the
 * library so that users test their own protocols the same way braid does.
 * Here: allocation fault injection (SQLite's method). The fake clock is in
 * <braid/time.h>, Deferred assertions in <braid/testing_deferred.h>; memory
 * transports and a steppable pool worker are added by their modules.
 *
 *     for (long n = 1;; n++) {
 *         braid_test_fail_alloc_after(n, false);   // the nth allocation fails
 *         int rc = scenario();                      // must return an error, not crash
 *         braid_test_fail_alloc_after(0, false);
 *         assert(braid_test_alloc_outstanding() == base);   // nothing leaked
 *         if (!braid_test_alloc_failed()) break;    // scenario needed < n allocations
 *     }
 */
#ifndef BRAID_TESTING_H
#define BRAID_TESTING_H

#include <braid/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Make the nth braid allocation from now fail (n = 0: off). With sticky,
 * every allocation after it fails too. Thread-safe. */
BRAID_API void braid_test_fail_alloc_after(long n, bool sticky);
/* Did the injected failure happen since the last braid_test_fail_alloc_after? */
BRAID_API bool braid_test_alloc_failed(void);
/* Blocks allocated through braid and not yet freed. */
BRAID_API long braid_test_alloc_outstanding(void);
/* Allocations made so far (realloc counts). */
BRAID_API long braid_test_alloc_count(void);

#ifdef __cplusplus
}
#endif
#endif
