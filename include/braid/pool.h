/* braid/pool.h — thread pools: blocking work off the loop, results back on it.
 *
 * A braid_pool is an object the user creates (there is no process-wide pool:
 * nothing in braid is global): a few worker threads, a bounded queue per class of
 * work, and statistics. braid_pool_defer() runs fn(arg) on a worker and
 * returns a Deferred that fires on the loop's thread with fn's result or
 * failure. The way back is braid_loop_post_node with storage embedded in the
 * job, so a completion allocates nothing and many completions cost the loop
 * one wake-up.
 *
 *     static braid_result lookup_user(void *name) {          // on a worker
 *         user *u = db_find(name);
 *         if (!u) return braid_result_errf(BRAID_ENOENT, "no user %s", (char *)name);
 *         return braid_result_ok_owned(u, user_free);
 *     }
 *     braid_pool *db;
 *     braid_pool_options o = { .max_threads = 4, .name = "db", .loop = loop };
 *     if (braid_pool_new(&o, &db) < 0) ...;
 *     braid_deferred *d = braid_pool_defer(loop, db, lookup_user, name);
 *     braid_deferred_add(d, send_profile, send_error, conn);  // loop thread
 *     braid_deferred_unref(d);
 *     ...
 *     braid_pool_free(db);   // joins the threads
 *
 * Threads. fn runs on a worker thread and must not touch loop-affine objects
 * (Deferreds, timers, transports); to reach the loop from there use
 * braid_loop_post() or braid_pool_blocking_call(). The Deferred's
 * callbacks run on the thread of the loop passed to braid_pool_defer.
 * braid_pool_call, braid_pool_shutdown and braid_pool_stats may be called
 * from any thread; braid_pool_defer only on the loop's thread.
 *
 * Ownership. The caller owns the pool and frees it with braid_pool_free.
 * fn's braid_result owns its value through its dtor; braid hands it to the
 * Deferred, or drops it (calling the dtor on the loop's thread) if the
 * Deferred was cancelled meanwhile. fn must not return braid_result_chain(): a
 * worker cannot own a Deferred.
 *
 * Bounded by default: a full class queue makes the Deferred fail
 * at once with BRAID_EQUEUE_FULL (braid_pool_call returns it). Cancelling a
 * Deferred whose work has not started removes the work from the queue; work
 * already running finishes and its result is dropped.
 *
 * Blocking work. Jobs that block (a query, a file, a lookup, a sleep) are
 * what a pool is for: N jobs queued together on a pool whose max_threads is
 * at least N all run at once, whatever min_threads — every queued job that
 * no awake worker has claimed wakes a sleeping worker or starts a thread.
 *
 * Speed. A sleeping thread takes tens of microseconds to wake on an idle core,
 * more than the work itself in the common case. So: at most one idle worker
 * spins briefly (spin_ns, adaptive: halved after each spin that found
 * nothing; only while running workers leave a core for the loop) before
 * sleeping; wake-ups of workers for short jobs are chained, one at a time; a
 * running worker counts as the taker of the next queued job while the pool's
 * jobs are short and its own is fresh, but only while a sleeping worker keeps
 * watch (it looks at the queue every 2 ms while jobs run and takes what was
 * left behind), so a burst of long jobs misjudged as short starts at most
 * ~2 ms late; and while jobs are in flight the loop busy-polls its posted
 * queue briefly (loop_spin_ns, same adaptation) before blocking in its
 * poller, and workers skip the eventfd write while it does. An idle pool
 * sleeps without timeouts: it costs no CPU. BRAID_POOL_NO_SPIN turns all
 * spinning off. docs/pool.md has the details and the measurements.
 *
 * Testing: a pool created with BRAID_POOL_MEMORY has no threads; queued work
 * runs only when the test calls braid_pool_step() (Twisted's
 * createMemoryWorker), completions then arrive in the loop's next iteration.
 */
#ifndef BRAID_POOL_H
#define BRAID_POOL_H

#include <braid/common.h>
#include <braid/deferred.h>
#include <braid/loop.h>
#include <braid/time.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct braid_pool braid_pool;

/* Work with a result is a braid_result_fn (<braid/deferred.h>): it runs on a
 * worker; its result (value with dtor, or a failure) becomes the Deferred's. */

enum {
    BRAID_POOL_MEMORY  = 1u << 0,  /* no threads: braid_pool_step runs the work */
    BRAID_POOL_NO_SPIN = 1u << 1,  /* never spin, neither workers nor the loop */
};

#define BRAID_POOL_MAX_CLASSES 8

typedef struct braid_pool_options {
    unsigned min_threads;     /* started by braid_pool_new and kept while idle (0) */
    unsigned max_threads;     /* upper bound, started on demand, as many at once as
                                 there are queued jobs to take (0: 4) */
    const char *name;         /* threads are named "<name>-<n>" (15 chars max; NULL: "braid-pool") */
    size_t stack_size;        /* worker stack size in bytes (0: the system default) */
    size_t queue_limit;       /* bound of the default class's queue (0: 4096) */
    uint64_t idle_timeout;    /* threads above min_threads exit after idling this long
                               * (0: 10 s; BRAID_FOREVER: they stay) */
    uint64_t spin_ns;         /* an idle worker spins up to this long for new work (0: 50 µs) */
    uint64_t loop_spin_ns;    /* the loop busy-polls up to this long for completions (0: 50 µs) */
    braid_loop *loop;         /* optional: the pool shows in this loop's leak gate until destroyed */
    braid_clock *clock;       /* clock for the statistics (NULL: monotonic); read on workers */
    unsigned flags;           /* BRAID_POOL_MEMORY, BRAID_POOL_NO_SPIN */
} braid_pool_options;

/* Create a pool (opts may be NULL: 0..4 threads, default class of 4096).
 * Starts min_threads threads; returns their creation error if one fails. */
BRAID_API int braid_pool_new(const braid_pool_options *opts, braid_pool **out);

/* ---- classes of work --------------------------------------------------------------- */
/* Work is queued per class; workers take from the classes in turn and never
 * run more than max_running jobs of one class at once, so a flood of one kind
 * (name resolution, say) cannot starve the rest. Class 0 is the default
 * (queue_limit from the options, max_running = max_threads). Returns the new
 * class id (1..BRAID_POOL_MAX_CLASSES-1) or a negative code. name is copied. */
BRAID_API int braid_pool_add_class(braid_pool *pool, const char *name, size_t queue_limit,
                                   unsigned max_running);
/* The number of classes (1 + those added): valid class ids are 0 to it - 1.
 * Any thread. */
BRAID_API unsigned braid_pool_classes(braid_pool *pool);

/* ---- submitting work ------------------------------------------------------------------ */
/* Loop thread: run fn(arg) on a worker; the returned Deferred fires on loop's
 * thread with fn's result. It fails at once with BRAID_EQUEUE_FULL when the
 * class queue is full, BRAID_ESHUTDOWN after braid_pool_shutdown, or the
 * thread-creation error when the pool has no thread and cannot start one.
 * Cancelling it before fn starts dequeues the work (fn never runs).
 * NULL only on allocation failure. The loop is held (braid_loop_run keeps
 * going) until the result has been delivered. */
BRAID_API braid_deferred *braid_pool_defer(braid_loop *loop, braid_pool *pool,
                                              braid_result_fn fn, void *arg);
BRAID_API braid_deferred *braid_pool_defer_class(braid_loop *loop, braid_pool *pool, int cls,
                                                    braid_result_fn fn, void *arg);

/* The same, taking ownership of arg: arg_free(arg) runs on the loop's thread
 * once fn is done with it — after fn returned (before the Deferred fires),
 * or when the work was cancelled or refused before it ran, or at once if
 * this call fails (NULL returned). So a request can carry heap data to the
 * worker without leaking when it is cancelled in the queue. */
BRAID_API braid_deferred *braid_pool_defer_full(braid_loop *loop, braid_pool *pool, int cls,
                                                   braid_result_fn fn, void *arg,
                                                   void (*arg_free)(void *));

/* Any thread: run fn(arg) on a worker, no result. 0, BRAID_EQUEUE_FULL,
 * BRAID_ESHUTDOWN, BRAID_ENOMEM or a thread-creation error. Work still queued
 * when the pool is shut down with BRAID_POOL_CANCEL is dropped without
 * running: fn should not own resources that only it frees, or the pool should
 * be shut down with BRAID_POOL_FINISH. */
BRAID_API int braid_pool_call(braid_pool *pool, braid_loop_call_cb fn, void *arg);
BRAID_API int braid_pool_call_class(braid_pool *pool, int cls, braid_loop_call_cb fn, void *arg);

/* A thread that is not loop's (a pool worker, typically): run fn(arg) on the
 * loop's thread, wait until the Deferred it returns fires, and return that
 * result (the caller owns it: drop it when done). fn returning NULL gives a
 * BRAID_ENOMEM failure. Allocation-free.
 *
 * On the loop's own thread — the thread running the loop (inside a callback,
 * say), or the one that made it while no other thread has run it yet — it
 * would wait forever for itself: it fails at once with BRAID_EDEADLK (a
 * failure whose message names the misuse) and fn does not run. That check is
 * one thread-id comparison, made in every build. Waiting on a loop that no
 * longer runs still blocks forever. */
typedef braid_deferred *(*braid_pool_blocking_fn)(braid_loop *loop, void *arg);
BRAID_API braid_result braid_pool_blocking_call(braid_loop *loop, braid_pool_blocking_fn fn,
                                                       void *arg);

/* ---- shutdown ------------------------------------------------------------------------- */
typedef enum braid_pool_mode {
    BRAID_POOL_FINISH = 0,   /* run all queued work, then stop */
    BRAID_POOL_CANCEL = 1,   /* queued work fails with BRAID_ECANCELED (call_in_pool work
                                is dropped); running work finishes, results delivered */
} braid_pool_mode;

/* Any thread, does not block: refuse new work (BRAID_ESHUTDOWN), deal with
 * queued work as mode says; threads exit once nothing is left. Idempotent
 * (a later CANCEL still cancels what is queued). */
BRAID_API void braid_pool_shutdown(braid_pool *pool, braid_pool_mode mode);

/* Shut down (BRAID_POOL_FINISH, unless braid_pool_shutdown(pool,
 * BRAID_POOL_CANCEL) came first), wait for every thread to exit, and free
 * the pool; NULL is a no-op. Not on
 * a pool worker; for a pool created with options.loop, on that loop's thread
 * (it leaves the loop's leak gate). Completions already posted to loops are still delivered
 * there by their loops (the pool is not needed for that). A memory pool
 * runs its queued work on the calling thread. Do not
 * call it on a loop thread while FINISH work waits on that loop
 * (braid_pool_blocking_call): that deadlocks. */
BRAID_API void braid_pool_free(braid_pool *pool);

/* ---- the memory worker (tests) ----------------------------------------------------------- */
/* BRAID_POOL_MEMORY pools only: run the next queued job on the calling thread,
 * exactly as a worker would. Returns 1 if a job ran, 0 if nothing was queued,
 * BRAID_EINVAL for a threaded pool. */
BRAID_API int braid_pool_step(braid_pool *pool);

/* ---- statistics ------------------------------------------------------------------------ */
/* Histograms are log2 buckets of nanoseconds: bucket i counts durations d
 * with 2^i <= d < 2^(i+1) (bucket 0 also counts 0; the last is open-ended). */
#define BRAID_POOL_HIST 40

struct braid_pool_stats {
    uint64_t queued;          /* waiting in a queue now */
    uint64_t running;         /* being run by a worker now */
    uint64_t threads;         /* threads alive */
    uint64_t idle;            /* threads waiting for work (spinning or asleep) */
    uint64_t spinning;        /* of those, spinning right now */
    uint64_t completed;       /* jobs that ran to the end (results dropped or not) */
    uint64_t rejected;        /* refused: queue full or shut down */
    uint64_t cancelled;       /* removed from a queue before they started */
    uint64_t class_queued[BRAID_POOL_MAX_CLASSES];
    uint64_t class_running[BRAID_POOL_MAX_CLASSES];
    uint64_t wait_hist[BRAID_POOL_HIST];   /* queued -> started */
    uint64_t run_hist[BRAID_POOL_HIST];    /* started -> finished */
};

/* Any thread: a consistent snapshot. A worker counts a job (completed, the
 * histograms) just after posting its result, so a Deferred may fire a moment
 * before its job shows in `completed`. */
BRAID_API void braid_pool_stats(braid_pool *pool, struct braid_pool_stats *out);
/* Bucket index of a duration, and the upper bound (ns) of the bucket holding
 * quantile q (0..1) of a histogram (0 if it is empty). */
BRAID_API unsigned braid_pool_hist_bucket(uint64_t ns);
BRAID_API uint64_t braid_pool_hist_quantile(const uint64_t hist[BRAID_POOL_HIST], double q);

#ifdef __cplusplus
}
#endif
#endif
