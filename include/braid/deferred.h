/* braid/deferred.h — Deferreds: braid's currency for results.
 *
 * Twisted's Deferred in C (docs/architecture.md, principle 4). A Deferred is a result
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
 *         return braid_result_ok(NULL);
 *     }
 *     braid_deferred_then(lookup_user(loop, name), got_user, no_user, conn);
 *
 * braid_deferred_then adds the callback pair and takes over the reference
 * lookup_user handed you, in one step: there is nothing left to release and
 * nothing to leak. Use braid_deferred_add (the reference stays yours) only
 * to add several pairs, to cancel later or to inspect d, and then drop the
 * reference with braid_deferred_unref:
 *
 *     braid_deferred *d = lookup_user(loop, name);
 *     if (!d) return BRAID_ENOMEM;
 *     braid_deferred_add(d, got_user, no_user, conn);
 *     braid_deferred_add_timeout(d, BRAID_SECONDS(5));
 *     ...                                   // keep d to cancel it
 *     braid_deferred_unref(d);              // the consumer is done with d
 *
 * Callbacks run synchronously on the loop's thread, inside the call that
 * made them runnable: braid_deferred_callback/errback, unpause, the firing of
 * a chained Deferred, or braid_deferred_then/add* itself when the Deferred has
 * already fired (then nothing is stored and nothing allocated). Chains run as
 * a loop, never recursion: a chain of a million nested Deferreds uses
 * constant stack. A callback may add callbacks to, pause, cancel or unref
 * the Deferred it runs on; it may keep the Deferred's pointer only while it
 * holds a reference (braid_deferred_ref).
 *
 * Ownership — read this once:
 *  - The rule: a function returning braid_deferred * hands you one
 *    reference. It returns NULL only when it could not allocate the
 *    Deferred itself (nothing happened then); every other error is the
 *    Deferred's failure. Hand the reference to braid_deferred_then (the
 *    usual way), or keep it and release it with braid_deferred_unref.
 *  - braid_deferred_new returns a Deferred holding two references: the
 *    producer's, dropped when it fires (callback/errback), and the
 *    consumer's, dropped by braid_deferred_unref. A function that returns a
 *    Deferred hands the consumer reference to its caller. braid_deferred_succeed and
 *    braid_deferred_fail return already-fired Deferreds holding only the consumer
 *    reference. The Deferred is freed when both are gone and no chain holds
 *    it; until then the pointer stays valid for whoever holds a reference.
 *  - Cancellation and the producer: a Deferred made with a canceller tells
 *    its producer through the canceller; once braid_deferred_cancel returns,
 *    the producer reference is gone (the canceller fired d, or braid
 *    errbacked it with BRAID_ECANCELED) and the producer must forget d. A
 *    Deferred without a canceller cannot tell its producer, so the producer
 *    keeps its reference and its later fire is ignored silently (the value is
 *    dropped), as in Twisted; that fire is what drops the reference.
 *  - A producer that can no longer fire (its object is being closed) must
 *    errback or cancel; braid_loop_free refuses (BRAID_EBUSY) while any
 *    Deferred of the loop is alive, and logs how many were never fired.
 *  - A braid_result owns its value through dtor (may be NULL for borrowed
 *    values) and owns its failure. A callback receives ownership of the
 *    result it is given and returns ownership of the one it returns: return
 *    it as is, or braid_result_drop it and return another. Passing a value
 *    or failure to braid_deferred_succeed/braid_deferred_fail/braid_deferred_fire passes its
 *    ownership even when the call fails (it is dropped then).
 *  - Freeing a Deferred whose current result is a failure that no errback
 *    consumed reports it through the loop's unhandled hook (log with origin;
 *    debug builds abort): failures are never silently dropped.
 *  - Using a freed Deferred is a bug. Debug builds (BRAID_DEBUG) abort with
 *    a message naming the call until 16,384 more Deferreds have been freed
 *    on the loop (a quarantine); release builds only while its memory has
 *    not been reused, which the next Deferred created usually does. See
 *    docs/deferred.md, "Use after free".
 *
 * Everything is loop-affine: no atomics, no locks; touch a Deferred only on
 * its loop's thread (results from other threads come back through
 * braid_loop_post; see <braid/pool.h>). Debug builds check the thread and
 * abort naming the call. Deferreds come from a per-loop free
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

static inline braid_result braid_result_ok(void *value) {
    braid_result r = { value, NULL, NULL, NULL }; return r;
}
static inline braid_result braid_result_ok_owned(void *value, void (*dtor)(void *)) {
    braid_result r = { value, dtor, NULL, NULL }; return r;
}
static inline braid_result braid_result_err(braid_failure *f) {
    braid_result r = { NULL, NULL, f, NULL }; return r;
}
/* Returned from a callback: pause the chain until d fires, continue with its
 * result. Takes d's consumer reference. */
static inline braid_result braid_result_chain(braid_deferred *d) {
    braid_result r = { NULL, NULL, NULL, d }; return r;
}
#define braid_result_errf(code, ...) braid_result_err(braid_failure_new((code), __VA_ARGS__))
/* Free what the result owns (value through dtor, failure). */
BRAID_API void braid_result_drop(braid_result r);

/* A callback: receives the previous result (r.failure set for errbacks). */
typedef braid_result (*braid_deferred_cb)(braid_result r, void *arg);
typedef void (*braid_deferred_cancel_fn)(braid_deferred *d, void *arg);
/* The one type of "a function producing a result from an argument" (a
 * value, a failure or braid_result_chain(d)): pool work, a fiber's body,
 * braid_deferred_later, braid_deferred_lock_run and _semaphore_run. */
typedef braid_result (*braid_result_fn)(void *arg);

/* ---- creating and firing ---------------------------------------------------------- */
/* NULL only when allocation fails. */
BRAID_API braid_deferred *braid_deferred_new(braid_loop *loop);
/* With a canceller, called by braid_deferred_cancel while d is unfired; if the
 * canceller does not fire d, d is errbacked with BRAID_ECANCELED. The
 * canceller may fire d itself, or call braid_deferred_cancel(d) to errback it
 * at once; either way the producer reference goes with that firing. */
BRAID_API braid_deferred *braid_deferred_new_cancellable(braid_loop *loop,
                                                         braid_deferred_cancel_fn c, void *arg);
BRAID_API braid_deferred *braid_deferred_succeed(braid_loop *loop, void *value, void (*dtor)(void *));
BRAID_API braid_deferred *braid_deferred_fail(braid_loop *loop, braid_failure *f);

/* Fire. BRAID_EALREADY_CALLED (and the value/failure is dropped, and the
 * misuse is logged) if d already fired — except the one benign case of a
 * producer firing a Deferred that was cancelled without a canceller, which
 * is ignored silently, as in Twisted (see Ownership). braid_deferred_fire
 * takes any result, including braid_result_chain(other): d then waits for other.
 * A NULL failure (errback, braid_deferred_fail) becomes a BRAID_EINVAL failure. */
BRAID_API int braid_deferred_callback(braid_deferred *d, void *value, void (*dtor)(void *));
BRAID_API int braid_deferred_errback(braid_deferred *d, braid_failure *f);
BRAID_API int braid_deferred_fire(braid_deferred *d, braid_result r);

/* ---- consuming ------------------------------------------------------------------- */
/* The usual way: add the pair (cb on success, eb on failure; either may be
 * NULL: pass through) and take over the caller's reference to d in one
 * step — after it the caller does not touch d. d NULL (its producer could
 * not allocate it) returns BRAID_ENOMEM, so braid_deferred_then(op(...), ...)
 * nests safely. BRAID_ENOMEM otherwise only when d already holds more pairs
 * than its inline slots and the spill allocation fails; the reference is
 * taken over even then. */
BRAID_API int braid_deferred_then(braid_deferred *d, braid_deferred_cb cb, braid_deferred_cb eb,
                                  void *arg);
/* Add the pair and leave the reference with the caller (to add several
 * pairs, cancel later or inspect d; drop it with braid_deferred_unref).
 * BRAID_ENOMEM as for braid_deferred_then; d must not be NULL. */
BRAID_API int braid_deferred_add(braid_deferred *d, braid_deferred_cb cb, braid_deferred_cb eb,
                                 void *arg);
/* Thin forms of braid_deferred_add: one side only, or the same fn for both. */
BRAID_API int braid_deferred_add_callback(braid_deferred *d, braid_deferred_cb cb, void *arg);
BRAID_API int braid_deferred_add_errback(braid_deferred *d, braid_deferred_cb eb, void *arg);
BRAID_API int braid_deferred_add_both(braid_deferred *d, braid_deferred_cb fn, void *arg);

/* Drop a reference (the one a Deferred-returning call handed you, or one
 * taken with braid_deferred_ref). NULL is a no-op. */
BRAID_API void braid_deferred_unref(braid_deferred *d);
/* An extra reference, dropped with braid_deferred_unref. */
BRAID_API braid_deferred *braid_deferred_ref(braid_deferred *d);

/* State. */
BRAID_API bool braid_deferred_is_called(const braid_deferred *d);   /* fired at all */
BRAID_API bool braid_deferred_has_result(const braid_deferred *d);/* fired, not paused/waiting */
BRAID_API bool braid_deferred_is_failure(const braid_deferred *d);
BRAID_API braid_loop *braid_deferred_loop(const braid_deferred *d);
/* Take the current result out of a fired Deferred (the chain then holds
 * braid_result_ok(NULL)); for test helpers and fibers. BRAID_EAGAIN if no result. */
BRAID_API int braid_deferred_take(braid_deferred *d, braid_result *out);

/* ---- control ---------------------------------------------------------------------- */
/* Pause: callbacks stop running until as many unpauses (the result waits
 * in d). Unpausing the last pause runs the pending callbacks at once. */
BRAID_API void braid_deferred_pause(braid_deferred *d);
BRAID_API void braid_deferred_unpause(braid_deferred *d);
/* Cancel: if unfired, run the canceller and errback with BRAID_ECANCELED if it
 * did not fire d; if d waits on a chained Deferred, cancel that one (and so
 * on down the chain, without recursion). A fired Deferred that waits on
 * nothing ignores it. Combinators cancel their pending members. */
BRAID_API void braid_deferred_cancel(braid_deferred *d);
/* Cancel d after timeout (ns) on its loop's clock (Twisted's addTimeout): a callback
 * pair is added at the current end of d's chain; when the chain reaches it
 * the timer is stopped, and a BRAID_ECANCELED failure caused by the timeout
 * becomes BRAID_ETIMEDOUT (cause: the cancellation). 0 at once if d already
 * has its result; BRAID_ENOMEM possible. */
BRAID_API int braid_deferred_add_timeout(braid_deferred *d, uint64_t timeout);

/* ---- combinators ------------------------------------------------------------------
 * Each takes the consumer references of the n Deferreds in ds (all non-NULL; the array
 * itself is only read) and returns a new Deferred, or NULL on allocation
 * failure, in which case nothing was taken. Member results are consumed by
 * the combinator: a member's failure is never reported as unhandled.
 * Cancelling the returned Deferred cancels every member still pending and
 * errbacks it with BRAID_ECANCELED. */

/* Results of gather and list: r[i] is member i's result, a value (owned
 * through r[i].dtor) or a failure (r[i].failure set). Freed by
 * braid_deferred_results_free, which is the dtor the combinators attach. */
typedef struct braid_deferred_results {
    size_t n;
    size_t nfailed;
    braid_result r[];
} braid_deferred_results;
BRAID_API void braid_deferred_results_free(void *results);

enum {
    BRAID_DEFERRED_GATHER_FAIL_FAST = 0,    /* fail at the first member failure, cancel the rest */
    BRAID_DEFERRED_GATHER_COLLECT   = 1u,   /* wait for every member, then fail if any failed */
};
/* All results in order: succeeds with a braid_deferred_results* (no failures in it)
 * when every member succeeded. Fail fast: the first failure errbacks with
 * BRAID_EFIRST_ERROR whose cause is that member's failure (the message names
 * its index), and the members still pending are cancelled. Collect: wait for
 * all, then errback with BRAID_EFIRST_ERROR, cause the lowest-index failure,
 * message listing every failed index and code. */
BRAID_API braid_deferred *braid_deferred_gather(braid_loop *loop, braid_deferred *const *ds, size_t n,
                                       unsigned flags);

/* First success wins: succeeds with a braid_deferred_race_win* (freed by
 * braid_deferred_race_win_free, the attached dtor; set win->dtor = NULL to keep the
 * value), and the other members are cancelled. If every member fails:
 * BRAID_EALL_FAILED, cause the lowest-index failure. n == 0: BRAID_EINVAL. */
typedef struct braid_deferred_race_win {
    size_t index;
    void *value;
    void (*dtor)(void *value);
} braid_deferred_race_win;
BRAID_API void braid_deferred_race_win_free(void *win);
BRAID_API braid_deferred *braid_deferred_race(braid_loop *loop, braid_deferred *const *ds, size_t n);

/* Twisted's DeferredList (consumeErrors=True): waits for every member and
 * always succeeds with a braid_deferred_results* holding each member's value or
 * failure (nfailed counts the failures). */
BRAID_API braid_deferred *braid_deferred_list(braid_loop *loop, braid_deferred *const *ds,
                                              size_t n);

/* ---- primitives ------------------------------------------------------------------- */

/* Twisted's deferLater: a Deferred that fires with fn(arg) (or braid_result_ok(NULL)
 * if fn is NULL) timeout (ns) from now on the loop's clock. Cancelling it before the
 * timer fires stops the timer (fn never runs) and errbacks BRAID_ECANCELED.
 * NULL on allocation failure. */
BRAID_API braid_deferred *braid_deferred_later(braid_loop *loop, uint64_t timeout, braid_result_fn fn,
                                            void *arg);

/* DeferredSemaphore: at most `tokens` holders. acquire returns a Deferred
 * that fires with the semaphore (borrowed) once a token is held — at once if
 * one is free; waiters are served FIFO; cancelling a waiting acquire removes
 * it. release returns a token (BRAID_ELOCKED if none is held). run acquires,
 * calls fn(arg), and releases when fn's result (possibly a chained Deferred)
 * is known, passing it on. braid_deferred_semaphore_free: BRAID_EBUSY while a token is
 * held or an acquire waits. Loop-affine, like everything here. */
typedef struct braid_deferred_semaphore braid_deferred_semaphore;
BRAID_API int braid_deferred_semaphore_new(braid_loop *loop, unsigned tokens, braid_deferred_semaphore **out);
BRAID_API braid_deferred *braid_deferred_semaphore_acquire(braid_deferred_semaphore *s);
BRAID_API int braid_deferred_semaphore_release(braid_deferred_semaphore *s);
BRAID_API braid_deferred *braid_deferred_semaphore_run(braid_deferred_semaphore *s, braid_result_fn fn, void *arg);
BRAID_API unsigned braid_deferred_semaphore_tokens(const braid_deferred_semaphore *s);  /* free tokens */
BRAID_API size_t braid_deferred_semaphore_waiting(const braid_deferred_semaphore *s);
BRAID_API int braid_deferred_semaphore_free(braid_deferred_semaphore *s);

/* DeferredLock: a semaphore of one token, with the lock's own names. */
typedef struct braid_deferred_lock braid_deferred_lock;
BRAID_API int braid_deferred_lock_new(braid_loop *loop, braid_deferred_lock **out);
BRAID_API braid_deferred *braid_deferred_lock_acquire(braid_deferred_lock *l);
BRAID_API int braid_deferred_lock_release(braid_deferred_lock *l);     /* BRAID_ELOCKED if not locked */
BRAID_API braid_deferred *braid_deferred_lock_run(braid_deferred_lock *l, braid_result_fn fn, void *arg);
BRAID_API bool braid_deferred_lock_is_locked(const braid_deferred_lock *l);
BRAID_API int braid_deferred_lock_free(braid_deferred_lock *l);        /* BRAID_EBUSY if locked */

/* DeferredQueue, bounded both ways. put hands the value to the oldest
 * waiting get, else stores it; BRAID_EQUEUE_FULL at once (the value stays
 * the caller's) when `size` values are already stored. get stores a
 * Deferred in *out that fires with the next value (already fired if one is
 * stored); BRAID_EQUEUE_EMPTY at once when `backlog` gets already wait.
 * Cancelling a waiting get removes it. braid_deferred_queue_free drops the stored
 * values and errbacks waiting gets with BRAID_ESHUTDOWN. size >= 1. */
typedef struct braid_deferred_queue braid_deferred_queue;
BRAID_API int braid_deferred_queue_new(braid_loop *loop, size_t size, size_t backlog, braid_deferred_queue **out);
BRAID_API int braid_deferred_queue_put(braid_deferred_queue *q, void *value, void (*dtor)(void *));
BRAID_API int braid_deferred_queue_get(braid_deferred_queue *q, braid_deferred **out);
BRAID_API size_t braid_deferred_queue_size(const braid_deferred_queue *q);     /* values stored */
BRAID_API size_t braid_deferred_queue_waiting(const braid_deferred_queue *q);  /* gets waiting */
BRAID_API void braid_deferred_queue_free(braid_deferred_queue *q);

/* Live Deferreds of this loop (tests, stats). */
BRAID_API size_t braid_deferred_live(braid_loop *loop);

/* ---- where a Deferred was made (the leak gate's origins) ---------------------------
 * Debug builds (BRAID_DEBUG defined for the library and for your code)
 * record the file, line and function of each call to the constructors
 * below, and braid_loop_free, refusing a loop that still has live
 * Deferreds, names every one:
 *
 *     deferred created at tests/test_x.c:42 in foo(), pending (never fired), 1 callback to run
 *
 * The macros wrap braid_deferred_new, _new_cancellable, _succeed, _fail,
 * _gather, _race, _list and _later; other modules' Deferreds are named by
 * the line inside braid that made them. Release builds define no macro and
 * keep no origin: the constructors cost what they did. Define
 * BRAID_NO_DEFERRED_ORIGIN before including braid to opt out.
 * braid_deferred_origin_at records an origin on d (returns d; NULL is
 * ignored; a no-op in release builds of the library). */
BRAID_API braid_deferred *braid_deferred_origin_at(braid_deferred *d, const char *file, int line,
                                                   const char *func);
#if defined(BRAID_DEBUG) && !defined(BRAID_NO_DEFERRED_ORIGIN)
#define BRAID__DEFERRED_AT(d) braid_deferred_origin_at((d), __FILE__, __LINE__, __func__)
#define braid_deferred_new(...) BRAID__DEFERRED_AT(braid_deferred_new(__VA_ARGS__))
#define braid_deferred_new_cancellable(...) BRAID__DEFERRED_AT(braid_deferred_new_cancellable(__VA_ARGS__))
#define braid_deferred_succeed(...) BRAID__DEFERRED_AT(braid_deferred_succeed(__VA_ARGS__))
#define braid_deferred_fail(...) BRAID__DEFERRED_AT(braid_deferred_fail(__VA_ARGS__))
#define braid_deferred_gather(...) BRAID__DEFERRED_AT(braid_deferred_gather(__VA_ARGS__))
#define braid_deferred_race(...) BRAID__DEFERRED_AT(braid_deferred_race(__VA_ARGS__))
#define braid_deferred_list(...) BRAID__DEFERRED_AT(braid_deferred_list(__VA_ARGS__))
#define braid_deferred_later(...) BRAID__DEFERRED_AT(braid_deferred_later(__VA_ARGS__))
#endif

#ifdef __cplusplus
}
#endif
#endif
