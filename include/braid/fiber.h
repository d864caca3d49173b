/* braid/fiber.h — fibers: straight-line code on the loop that awaits Deferreds.
 *
 * C has no generators, and a protocol written as a chain of callbacks has its
 * stack ripped apart at every wait. A fiber is a stackful coroutine that runs
 * on the loop's thread: it calls braid_fiber_await(d), which suspends it until the
 * Deferred d fires and then returns d's result (a value or a failure, as a
 * return value — never a jump). Meanwhile the loop runs everything else.
 * This is Twisted's inlineCallbacks with a real stack (libdill, Seastar
 * threads).
 *
 *     static braid_result session(void *arg) {
 *         struct conn *c = arg;
 *         for (;;) {
 *             braid_result r = braid_fiber_await(lookup_user(c->loop, c->name));
 *             if (r.failure) return r;                  // pass the failure on
 *             send_profile(c, r.value);
 *             braid_result_drop(r);
 *             if (braid_fiber_sleep(c->loop, BRAID_SECONDS(1)) < 0)
 *                 return braid_result_errf(BRAID_ECANCELED, "session cancelled");
 *         }
 *     }
 *     braid_fiber_options o = { .name = "session" };
 *     braid_deferred *d = braid_fiber_spawn(loop, session, c, &o);
 *     braid_deferred_add(d, done, failed, c);   // fn's result lands here
 *     braid_deferred_unref(d);
 *
 * Scheduling: a fiber starts in the loop's ready phase after it was spawned
 * (never inside braid_fiber_spawn), and each time what it awaits fires it is
 * resumed in a ready phase (braid_loop_soon_node; no allocation). So a fiber
 * never runs inside the code that fired its Deferred: producers need not be
 * re-entrant. Only one fiber of a loop runs at a time, on the loop's thread:
 * between two awaits a fiber's code is atomic with respect to the loop.
 *
 * Cancellation (libdill's cancel-by-close): cancelling the Deferred returned
 * by braid_fiber_spawn delivers BRAID_ECANCELED to the fiber once — the await
 * or sleep it is blocked in returns a BRAID_ECANCELED failure at once (the
 * awaited Deferred is cancelled too); a fiber that is runnable gets it from
 * its next await; a fiber that has not started never runs. Later awaits work
 * normally, so the fiber can clean up (and may await while doing so). The
 * spawn Deferred fails with BRAID_ECANCELED immediately, as every cancelled
 * Deferred does; what the fiber returns afterwards is dropped.
 *
 * Stacks: each fiber has an mmap'ed stack (default 64 KiB, rounded up to
 * pages; only the pages it touches cost memory) with a guard page below it.
 * A stack overflow hits the guard page and the process aborts with
 * "fiber '<name>' overflowed its N-byte stack" on stderr instead of
 * corrupting memory (a SIGSEGV handler on an alternate signal stack; other
 * faults go on to the previous handler). Finished fibers' stacks are kept in
 * a per-loop pool for reuse. Keep big buffers off fiber stacks: a frame larger
 * than the guard page can jump over it.
 *
 * Ownership: braid_fiber_spawn returns the consumer reference of the fiber's
 * Deferred. braid_fiber_await takes the consumer reference of the Deferred it is
 * given and hands the caller ownership of the result (drop it with
 * braid_result_drop). A fiber's return value is owned by its Deferred.
 *
 * Threads: everything here is loop-affine; a fiber belongs to the loop that
 * spawned it and may await only Deferreds of that loop. Under ASan and
 * valgrind the stack switches are annotated; under TSan too, but fiber tests
 * do not run there.
 */
#ifndef BRAID_FIBER_H
#define BRAID_FIBER_H

#include <braid/common.h>
#include <braid/deferred.h>
#include <braid/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error code of the fiber module (its range is -4040 ... -4047; this one is
 * older and keeps its number). */
#define BRAID_ENOT_IN_FIBER     (-4006)  /* an awaiting call outside a fiber */

typedef struct braid_fiber braid_fiber;

/* A fiber's body is a braid_result_fn (<braid/deferred.h>): it runs on the
 * fiber's stack; its result (a value, a failure, or braid_result_chain(d))
 * fires the fiber's Deferred. */

#define BRAID_FIBER_DEFAULT_STACK (64u * 1024u)
#define BRAID_FIBER_NAME_MAX 32

typedef struct braid_fiber_options {
    size_t stack_size;   /* usable bytes; 0 = BRAID_FIBER_DEFAULT_STACK */
    const char *name;    /* copied (truncated to BRAID_FIBER_NAME_MAX-1); NULL = "fiber" */
} braid_fiber_options;

/* Start fn(arg) in a new fiber (it first runs in a ready phase of loop).
 * Returns the consumer reference of a Deferred that fires with fn's result;
 * cancelling it cancels the fiber (see above). NULL when out of memory (the
 * Deferred, or the stack: mmap failed). opts may be NULL. */
BRAID_API braid_deferred *braid_fiber_spawn(braid_loop *loop, braid_result_fn fn, void *arg,
                                            const braid_fiber_options *opts);

/* Suspend the calling fiber until d fires; return d's result (ownership to
 * the caller). Takes d's consumer reference. Failures come back as values:
 *  - d == NULL (its producer ran out of memory): a BRAID_ENOMEM failure;
 *  - not in a fiber of d's loop: a BRAID_ENOT_IN_FIBER failure, and d is
 *    cancelled and released (its result, if any, is dropped);
 *  - the fiber was cancelled: a BRAID_ECANCELED failure (d is cancelled).
 * An already-fired d returns at once without a switch. */
BRAID_API braid_result braid_fiber_await(braid_deferred *d);

/* braid_fiber_await with a deadline: if d has not fired timeout ns from now (on the loop's
 * clock) it is cancelled and the result is a BRAID_ETIMEDOUT failure
 * (braid_deferred_add_timeout). timeout == BRAID_FOREVER: plain braid_fiber_await. */
BRAID_API braid_result braid_fiber_await_timeout(braid_deferred *d, uint64_t timeout);

/* Suspend the calling fiber for timeout ns on the loop's clock (a fake clock works:
 * the fiber wakes when the test advances it past the deadline). 0, or
 * BRAID_ECANCELED if the fiber was cancelled while (or before) sleeping, or
 * BRAID_ENOT_IN_FIBER. No allocation. */
BRAID_API int braid_fiber_sleep(braid_loop *loop, uint64_t timeout);

/* Let the loop run everything else that is ready, then continue (the fiber
 * resumes in the next ready phase). 0, BRAID_ECANCELED or BRAID_ENOT_IN_FIBER. */
BRAID_API int braid_fiber_yield(braid_loop *loop);

/* The fiber running on loop now, or NULL when called from outside a fiber. */
BRAID_API braid_fiber *braid_fiber_current(braid_loop *loop);
/* The fiber's name (from its options). */
BRAID_API const char *braid_fiber_name(const braid_fiber *f);
/* Was the fiber's Deferred cancelled (even if the failure was already
 * delivered)? A long computation between awaits can poll this. */
BRAID_API bool braid_fiber_is_cancelled(const braid_fiber *f);

/* Fibers alive on loop (spawned, not yet finished), for tests and stats. */
BRAID_API size_t braid_fiber_count(braid_loop *loop);

/* Keep at most max finished stacks per loop for reuse (default 256; 0 turns
 * pooling off). Pooled stacks keep their touched pages resident. 0 or
 * BRAID_ENOMEM (the loop's fiber state could not be allocated). */
BRAID_API int braid_fiber_set_pool_max(braid_loop *loop, size_t max);

#ifdef __cplusplus
}
#endif
#endif
