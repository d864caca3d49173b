/* braid/deferred.h — Deferreds: braid's currency for results.
 *
 * Twisted's Deferred in C (DESIGN.md, principle 4). A Deferred is a result
 * that is not here yet. Whoever produces it fires it once, with a value
 * (braid_deferred_callback) or a failure (braid_deferred_errback); whoever
 * consumes it adds callbacks. Each callback receives the previous result and
 * returns the next one: a value, a failure, or another Deferred (the chain
 * then pauses until that one fires and resumes with its result).
 *
 *     static braid_result got_user(braid_result r, void *conn) {
 *         send_profile(conn, r.value);
 *         return r;                         // pass the result on unchanged
 *     }
 *     static braid_result no_user(braid_result r, void *conn) {
 *         send_error(conn, r.failure->code);
 *         braid_result_drop(r);             // consumed: the chain is clean
 *         return braid_ok(NULL);
 *     }
 *     braid_deferred *d = lookup_user(loop, name);
 *     braid_deferred_add_callbacks(d, got_user, no_user, conn);
 *     braid_deferred_release(d);            // the consumer is done with d
 *
 * Callbacks run synchronously: when the Deferred fires, or at once when added
 * to a Deferred that has already fired (without allocating). Chains run as a
 * loop, never recursion: a chain of a million nested Deferreds uses constant
 * stack.
 *
 * Ownership — read this once:
 *  - braid_deferred_new returns a Deferred holding two references: the
 *    producer's, dropped when it fires (callback/errback, including the
 *    errback that cancellation causes), and the consumer's, dropped by
 *    braid_deferred_release. A function that returns a Deferred hands the
 *    consumer reference to its caller. braid_succeed/braid_fail return
 *    already-fired Deferreds holding only the consumer reference.
 *  - A producer that can no longer fire (its object is being closed) must
 *    errback or cancel; braid_loop_destroy reports a Deferred left unfired.
 *  - A braid_result owns its value through dtor (may be NULL for borrowed
 *    values) and owns its failure. A callback receives ownership of the
 *    result it is given and returns ownership of the one it returns: return
 *    it as is, or braid_result_drop it and return another.
 *  - Freeing a Deferred whose current result is a failure that no errback
 *    consumed reports it through the loop's unhandled hook (log with origin;
 *    debug builds abort): failures are never silently dropped.
 *
 * Everything is loop-affine: no atomics, no locks; touch a Deferred only on
 * its loop's thread (results from other threads come back through
 * braid_loop_post; see <braid/pool.h>). Deferreds come from a per-loop free
 * list and store a few callbacks inline, so the ready path allocates nothing.
 */
#ifndef BRAID_DEFERRED_H
#define BRAID_DEFERRED_H

#include <braid/common.h>
#include <braid/loop.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct braid_deferred braid_deferred;

/* ---- failures: the C Failure --------------------------------------------------- */
typedef struct braid_failure {
    int code;                      /* negative errno-style code */
    char *message;                 /* owned; may be NULL */
    struct braid_failure *cause;   /* owned; may be NULL */
    const char *file;              /* origin (static strings) */
    const char *func;
    int line;
    unsigned flags;                /* private */
} braid_failure;

/* Never returns NULL: on allocation failure a static "out of memory" failure
 * with the code is returned (braid_failure_free ignores it). fmt may be NULL. */
BRAID_API braid_failure *braid_failure_new_at(int code, const char *file, int line,
                                              const char *func, const char *fmt, ...)
    BRAID_PRINTF(5, 6);
BRAID_API braid_failure *braid_failure_vnew_at(int code, const char *file, int line,
                                               const char *func, const char *fmt, va_list ap);
#define braid_failure_new(code, ...) \
    braid_failure_new_at((code), __FILE__, __LINE__, __func__, __VA_ARGS__)
/* A new failure whose cause is `cause` (ownership taken). */
BRAID_API braid_failure *braid_failure_wrap_at(braid_failure *cause, int code, const char *file,
                                               int line, const char *func, const char *fmt, ...)
    BRAID_PRINTF(6, 7);
#define braid_failure_wrap(cause, code, ...) \
    braid_failure_wrap_at((cause), (code), __FILE__, __LINE__, __func__, __VA_ARGS__)
BRAID_API void braid_failure_free(braid_failure *f);
/* "message (code name) at file:line in func; caused by: ..." into buf;
 * returns the length it needed (snprintf rules). */
BRAID_API size_t braid_failure_format(const braid_failure *f, char *buf, size_t size);

/* ---- results ---------------------------------------------------------------------- */
typedef struct braid_result {
    void *value;                   /* the success value (owned through dtor) */
    void (*dtor)(void *value);     /* frees value; NULL if value is borrowed */
    braid_failure *failure;        /* non-NULL: this result is a failure */
    braid_deferred *chain;         /* non-NULL: wait for this Deferred (ownership taken) */
} braid_result;

static inline braid_result braid_ok(void *value) {
    braid_result r = { value, NULL, NULL, NULL }; return r;
}
static inline braid_result braid_ok_owned(void *value, void (*dtor)(void *)) {
    braid_result r = { value, dtor, NULL, NULL }; return r;
}
static inline braid_result braid_err(braid_failure *f) {
    braid_result r = { NULL, NULL, f, NULL }; return r;
}
/* Returned from a callback: pause the chain until d fires, continue with its
 * result. Takes d's consumer reference. */
static inline braid_result braid_chain(braid_deferred *d) {
    braid_result r = { NULL, NULL, NULL, d }; return r;
}
#define braid_errf(code, ...) braid_err(braid_failure_new((code), __VA_ARGS__))
/* Free what the result owns (value through dtor, failure). */
BRAID_API void braid_result_drop(braid_result r);

/* A callback: receives the previous result (r.failure set for errbacks). */
typedef braid_result (*braid_callback)(braid_result r, void *arg);
typedef void (*braid_canceller)(braid_deferred *d, void *arg);

/* ---- creating and firing ---------------------------------------------------------- */
/* NULL only when allocation fails. */
BRAID_API braid_deferred *braid_deferred_new(braid_loop *loop);
/* With a canceller, called by braid_deferred_cancel while d is unfired; if the
 * canceller does not fire d, d is errbacked with BRAID_ECANCELED. */
BRAID_API braid_deferred *braid_deferred_new_cancellable(braid_loop *loop,
                                                         braid_canceller c, void *arg);
BRAID_API braid_deferred *braid_succeed(braid_loop *loop, void *value, void (*dtor)(void *));
BRAID_API braid_deferred *braid_fail(braid_loop *loop, braid_failure *f);

/* Fire. BRAID_EALREADY_CALLED (and the value/failure is dropped, and the
 * misuse is logged) if d already fired — except the one benign case of a
 * producer firing a Deferred that was cancelled, which is ignored silently,
 * as in Twisted. */
BRAID_API int braid_deferred_callback(braid_deferred *d, void *value, void (*dtor)(void *));
BRAID_API int braid_deferred_errback(braid_deferred *d, braid_failure *f);
BRAID_API int braid_deferred_fire(braid_deferred *d, braid_result r);

/* ---- consuming ------------------------------------------------------------------- */
/* cb runs on success, eb on failure; either may be NULL (pass through).
 * BRAID_ENOMEM only when more than the inline slots are needed and the
 * spill allocation fails. */
BRAID_API int braid_deferred_add_callbacks(braid_deferred *d, braid_callback cb,
                                           braid_callback eb, void *arg);
BRAID_API int braid_deferred_add_callback(braid_deferred *d, braid_callback cb, void *arg);
BRAID_API int braid_deferred_add_errback(braid_deferred *d, braid_callback eb, void *arg);
BRAID_API int braid_deferred_add_both(braid_deferred *d, braid_callback fn, void *arg);

/* Drop the consumer reference. */
BRAID_API void braid_deferred_release(braid_deferred *d);
/* An extra reference, dropped with braid_deferred_release. */
BRAID_API braid_deferred *braid_deferred_ref(braid_deferred *d);

/* State. */
BRAID_API bool braid_deferred_called(const braid_deferred *d);   /* fired at all */
BRAID_API bool braid_deferred_has_result(const braid_deferred *d);/* fired, not paused/waiting */
BRAID_API bool braid_deferred_is_failure(const braid_deferred *d);
BRAID_API braid_loop *braid_deferred_loop(const braid_deferred *d);
/* Take the current result out of a fired Deferred (the chain then holds
 * braid_ok(NULL)); for test helpers and fibers. BRAID_EAGAIN if no result. */
BRAID_API int braid_deferred_take(braid_deferred *d, braid_result *out);

/* ---- control ---------------------------------------------------------------------- */
BRAID_API void braid_deferred_pause(braid_deferred *d);
BRAID_API void braid_deferred_unpause(braid_deferred *d);
/* Cancel: if unfired, run the canceller and errback with BRAID_ECANCELED if it
 * did not fire d; if d waits on a chained Deferred, cancel that one. A fired
 * Deferred ignores it. */
BRAID_API void braid_deferred_cancel(braid_deferred *d);
/* Cancel d after ns on its loop's clock; the resulting BRAID_ECANCELED failure
 * becomes BRAID_ETIMEDOUT. The timer goes when d fires. */
BRAID_API int braid_deferred_add_timeout(braid_deferred *d, uint64_t ns);

/* Combinators (gather, race, list) and primitives (lock, semaphore, queue,
 * defer_later) follow below. */

#ifdef __cplusplus
}
#endif
#endif
