/* braid/loop.h — the event loop: explicit, one per thread, many per process.
 *
 * A braid_loop owns a poller backend (select, poll, epoll or io_uring, chosen
 * at creation), a timer heap, a queue of calls posted from other threads and a
 * queue of ready callbacks. One iteration (braid_loop_run_once) is exactly:
 *
 *   1. poll      wait for I/O; the timeout is 0 if anything below is ready,
 *                else until the earliest timer, else forever;
 *   2. I/O       run the callbacks of fd watchers reported ready;
 *   3. timers    run the timers that are due (never early), in deadline order,
 *                ties in the order they were started;
 *   4. posted    run the calls posted from other threads (braid_loop_post)
 *                that were queued when this phase began;
 *   5. ready     run the same-thread callbacks queued with braid_loop_soon
 *                (fibers resume here) that were queued when this
 *                phase began; ones queued meanwhile run next iteration.
 *
 * Everything here is loop-affine: call it only on the loop's thread, except
 * braid_loop_post(), braid_loop_post_node() and braid_loop_stop(), which any
 * thread may call. The loop's thread is the one that created it, or the one
 * that last ran it: braid_loop_run, braid_loop_run_once and
 * braid_loop_free called from another thread hand the loop over to it
 * (the program synchronises the hand-over: thread creation, a join). Debug
 * builds (BRAID_DEBUG) check the thread on every loop-affine entry and abort
 * naming the function ("braid_timer_call_later called from a thread that does not
 * own the loop"); release builds do not check. See docs/loop.md.
 *
 *     braid_loop *loop;
 *     if (braid_loop_new(NULL, &loop) < 0) return 1;   // BRAID_BACKEND env picks
 *     braid_watch w;
 *     braid_watch_init(loop, &w, fd, on_readable, ctx);
 *     braid_watch_set_interest(&w, BRAID_WATCH_READ);
 *     braid_loop_run(loop);           // until stop, or nothing left to wait on
 *     braid_watch_close(&w);
 *     return braid_loop_free(loop) < 0;   // fails if anything is left open
 *
 * Ownership: the caller owns the loop and frees it with braid_loop_free,
 * which refuses (BRAID_EBUSY, and logs each open handle) while a watcher,
 * active timer, signal, posted call or other handle is still open — the leak
 * gate every test ends with.
 */
#ifndef BRAID_LOOP_H
#define BRAID_LOOP_H

#include <braid/common.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct braid_loop braid_loop;
typedef struct braid_clock braid_clock;

/* ---- creation ------------------------------------------------------------- */
typedef enum braid_backend {
    BRAID_BACKEND_DEFAULT = 0,   /* $BRAID_BACKEND if set, else epoll (or poll off Linux) */
    BRAID_BACKEND_SELECT,
    BRAID_BACKEND_POLL,
    BRAID_BACKEND_EPOLL,
    BRAID_BACKEND_URING,         /* falls back to epoll if io_uring is unavailable,
                                    unless BRAID_LOOP_STRICT_BACKEND is set */
} braid_backend;

enum {
    BRAID_LOOP_STRICT_BACKEND = 1u << 0, /* fail with BRAID_ENOSYS instead of falling back */
    BRAID_LOOP_NO_URING       = 1u << 1, /* never use io_uring (also: BRAID_NO_URING=1) */
};
/* (A loop touches the signal mask only for braid_signal_start.) */

typedef struct braid_loop_options {
    braid_backend backend;
    unsigned flags;
    braid_clock *clock;          /* NULL: the real monotonic clock. Not owned. */
    braid_log_cb log;            /* NULL: write to stderr (debug lines only with BRAID_LOG_DEBUG=1) */
    void *log_ctx;
    size_t log_queue_limit;      /* events other threads may have queued for the loop's logger (0: 1024) */
} braid_loop_options;

/* Create a loop. opts may be NULL. The env var BRAID_BACKEND=select|poll|epoll|
 * uring overrides opts->backend when that is BRAID_BACKEND_DEFAULT. */
BRAID_API int braid_loop_new(const braid_loop_options *opts, braid_loop **out);

/* Destroy: BRAID_EBUSY if anything is still open (the loop is not destroyed
 * and stays valid; each open thing is logged as "loop not destroyed: …
 * still open"), else frees everything and returns 0. */
BRAID_API int braid_loop_free(braid_loop *loop);

/* Name of the backend in use: "select", "poll", "epoll" or "uring". */
BRAID_API const char *braid_loop_backend(const braid_loop *loop);

/* ---- running ------------------------------------------------------------------ */
/* Run iterations until braid_loop_stop() or until nothing is alive (no active
 * referenced watcher, timer, signal, hold, posted or ready call). Returns 0,
 * or a negative code if the poller failed. */
BRAID_API int braid_loop_run(braid_loop *loop);

enum { BRAID_LOOP_RUN_NOWAIT = 1u << 0 };  /* poll with timeout 0 */
/* Exactly one iteration. Returns 1 if anything is still alive, 0 if not, <0 on
 * a poller failure. */
BRAID_API int braid_loop_run_once(braid_loop *loop, unsigned flags);

/* Make braid_loop_run return after the current iteration. Thread-safe. */
BRAID_API void braid_loop_stop(braid_loop *loop);

/* Keep run() going while work is outstanding elsewhere (a pool job, a
 * connect in flight): each hold must be released once. */
BRAID_API void braid_loop_hold(braid_loop *loop);
BRAID_API void braid_loop_release(braid_loop *loop);

/* The time at the start of this iteration's timer phase (cached) and the
 * clock read now, both in ns on the loop's clock. */
BRAID_API uint64_t braid_loop_now(const braid_loop *loop);
BRAID_API uint64_t braid_loop_now_fresh(braid_loop *loop);
BRAID_API braid_clock *braid_loop_clock(braid_loop *loop);

/* Iteration counter (starts at 0, +1 per run_once). */
BRAID_API uint64_t braid_loop_iteration(const braid_loop *loop);
/* Pending timers on this loop (tests, stats). */
BRAID_API size_t braid_loop_timer_count(const braid_loop *loop);

/* Tests (a loop on a fake clock, <braid/time.h>): advance the clock by ns in
 * steps, running one NOWAIT iteration after each timer deadline crossed, so
 * timers fire at their own times in order (Twisted's Clock.pump). Returns
 * BRAID_EINVAL if the loop's clock is not fake. */
BRAID_API int braid_loop_advance(braid_loop *loop, uint64_t ns);

/* ---- embedding (GLib and other loops) ------------------------------------------ */
/* A file descriptor that becomes readable when the loop has something to do
 * (epoll/io_uring fd; select/poll backends return BRAID_ENOSYS), and the
 * timeout the next iteration would use in ns (BRAID_FOREVER if none). Drive
 * the loop with braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) when it fires.
 * Call braid_loop_next_timeout before every outer wait: on io_uring it also
 * submits the interest changes queued since the last iteration, without which
 * the backend fd would not wake for them. */
BRAID_API int braid_loop_backend_fd(const braid_loop *loop);
BRAID_API uint64_t braid_loop_next_timeout(braid_loop *loop);
/* An outer loop driving braid with run_once has no braid_loop_run for
 * braid_loop_stop to end, and a pending stop keeps next_timeout at 0: after
 * each iteration it takes the stop — true if braid_loop_stop was called since
 * the last take (or since braid_loop_run returned), and the request is cleared
 * — and ends its own loop, or ignores the request, as it documents.
 * (braid_glib_source does this; see <braid/glib.h>.) Thread-safe. */
BRAID_API bool braid_loop_take_stop(braid_loop *loop);

/* With a backend that has no backend fd (select, poll) the outer loop
 * watches braid's descriptors itself: the fds the loop's watchers want now
 * and for what (BRAID_WATCH_READ | BRAID_WATCH_WRITE), the loop's own wake-up and signal
 * fds included, in ascending fd order. Fills up to cap entries of out and
 * returns the total (more than cap: call again with more room). O(watched
 * fds), like a select or poll wait itself. Wait on them, then drive the loop
 * with braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) as above. */
typedef struct braid_loop_fd {
    int fd;
    unsigned events;
} braid_loop_fd;
BRAID_API size_t braid_loop_watched_fds(const braid_loop *loop, size_t cap, braid_loop_fd *out);

/* ---- prepare hooks: work done before each wait ----------------------------------- */
/* A started prepare hook runs at the start of every braid_loop_run_once,
 * before the wait's timeout is computed (libuv's uv_prepare, Redis ae's
 * beforesleep): a timer due now or a braid_loop_soon call it makes shortens
 * this very wait. A loop driving another one uses it to let the other loop
 * prepare and to watch its fds (braid_glib_context in <braid/glib.h>).
 * Hooks run in the order started; one may start or stop hooks, itself
 * included. They do not keep run() alive; an iteration run from inside a
 * hook runs no hooks. Caller storage, fields private; a started hook counts
 * for the leak gate. */
typedef struct braid_prepare braid_prepare;
typedef void (*braid_prepare_cb)(braid_prepare *p, void *arg);
struct braid_prepare {
    braid_loop *loop;
    braid_prepare_cb cb;
    void *arg;
    struct braid_prepare *prev, *next;   /* private */
    bool started;
};
BRAID_API void braid_prepare_start(braid_loop *loop, braid_prepare *p, braid_prepare_cb cb, void *arg);
BRAID_API void braid_prepare_stop(braid_prepare *p);   /* idempotent */

/* ---- calls ----------------------------------------------------------------------- */
typedef void (*braid_loop_call_cb)(void *arg);

/* Thread-safe: run fn(arg) on the loop's thread in the posted phase. Calls
 * from one thread run in the order posted. Wakeups are batched: only the
 * post that finds the queue empty writes the loop's eventfd. Allocates a
 * node (BRAID_ENOMEM possible); see braid_loop_post_node to avoid it.
 * A call posted after braid_loop_free began is a usage error. */
BRAID_API int braid_loop_post(braid_loop *loop, braid_loop_call_cb fn, void *arg);

/* Allocation-free post with caller storage: the node must stay valid until
 * fn runs; fn may free or reuse it. Both kinds of post run fn in the
 * posting thread's current context (<braid/context.h>), captured here. */
typedef struct braid_post {
    struct braid_post *next;
    braid_loop_call_cb fn;
    void *arg;
    struct braid_ctx *ctx;        /* private: the captured context */
} braid_post;
BRAID_API void braid_loop_post_node(braid_loop *loop, braid_post *node);

/* Loop thread only: run fn(arg) in this or the next iteration's ready phase,
 * in FIFO order, in the context current when it was queued. Caller-storage
 * variant below; braid_loop_soon allocates. */
typedef struct braid_soon {
    struct braid_soon *next;
    braid_loop_call_cb fn;
    void *arg;
    struct braid_ctx *ctx;        /* private: the captured context */
} braid_soon;
BRAID_API int braid_loop_soon(braid_loop *loop, braid_loop_call_cb fn, void *arg);
BRAID_API void braid_loop_soon_node(braid_loop *loop, braid_soon *node);
/* Take a node queued with braid_loop_soon_node out of the queue before it
 * runs (a module whose queued work went away, so the leak gate does not
 * see a ready call left behind). true if it was queued; false if it was
 * not, or if its ready phase has already begun (it will run). O(queued). */
BRAID_API bool braid_loop_soon_cancel(braid_loop *loop, braid_soon *node);

/* ---- fd watchers: IReactorFDSet, the lowest layer --------------------------------- */
enum {
    BRAID_WATCH_READ  = 1u << 0,
    BRAID_WATCH_WRITE = 1u << 1,
    BRAID_WATCH_ERROR = 1u << 2,   /* reported with READ/WRITE on error or hang-up */
    BRAID_WATCH_HUP   = 1u << 3,
    /* With BRAID_WATCH_READ in braid_watch_set_interest: when several loops (threads or
     * processes) watch the same open file — one listening socket — a
     * readiness wakes one of them, not all (EPOLLEXCLUSIVE, Linux >= 4.5).
     * Only the epoll backend honours it; select, poll and io_uring ignore
     * it and every watching loop wakes (accept then fails with EAGAIN in
     * all but one). */
    BRAID_WATCH_EXCLUSIVE = 1u << 4,
};

typedef struct braid_watch braid_watch;
typedef void (*braid_watch_cb)(braid_watch *w, unsigned events, void *arg);

/* Caller storage; fields are private. One watcher per fd per loop. */
struct braid_watch {
    braid_loop *loop;
    braid_watch_cb cb;
    void *arg;
    int fd;
    unsigned mask;       /* current interest */
    uint32_t gen;        /* generation: stale-event guard */
    unsigned flags;
};

/* Register fd (not taking ownership: close the fd yourself after closing the
 * watcher). No interest yet. BRAID_EEXIST if fd already has a watcher. */
BRAID_API int braid_watch_init(braid_loop *loop, braid_watch *w, int fd,
                               braid_watch_cb cb, void *arg);
/* Set interest to a mask of BRAID_WATCH_READ|BRAID_WATCH_WRITE (0 = none), optionally
 * with BRAID_WATCH_EXCLUSIVE. */
BRAID_API int braid_watch_set_interest(braid_watch *w, unsigned mask);
/* Unregister. Safe from any callback, including w's own; once it returns, no
 * event is delivered for w even if already collected in this batch, and w's
 * memory may be freed (a new watcher for the same fd number is safe too). */
BRAID_API void braid_watch_close(braid_watch *w);
/* A watcher with interest keeps run() alive unless unref'd. */
BRAID_API void braid_watch_unref(braid_watch *w);

/* ---- signals as loop events --------------------------------------------------- */
typedef struct braid_signal braid_signal;
typedef void (*braid_signal_cb)(braid_signal *s, int signo, void *arg);
struct braid_signal {
    braid_loop *loop;
    braid_signal_cb cb;
    void *arg;
    int signo;
    struct braid_signal *next;  /* private */
    unsigned flags;
};
/* Deliver signo as a loop event (signalfd: Linux only, BRAID_ENOSYS elsewhere).
 * Blocks signo in the calling thread; block it in other threads too (or create
 * them after this) so the kernel queues it for the loop. Several braid_signal
 * may watch one signo; each sees it. */
BRAID_API int braid_signal_start(braid_loop *loop, braid_signal *s, int signo,
                                 braid_signal_cb cb, void *arg);
BRAID_API void braid_signal_stop(braid_signal *s);

/* ---- handles: the leak gate ---------------------------------------------------- */
/* Modules register long-lived objects so that braid_loop_free can refuse
 * and name them. Users rarely call these directly. */
typedef struct braid_handle {
    struct braid_handle *prev, *next;
    const char *kind;        /* "tcp", "pool", ... */
    const char *name;        /* optional detail, may be NULL */
} braid_handle;
BRAID_API void braid_handle_open(braid_loop *loop, braid_handle *h, const char *kind);
BRAID_API void braid_handle_close(braid_loop *loop, braid_handle *h);

/* ---- per-loop data of a module: keys ---------------------------------------------- */
/* A module keeps state that lives as long as a loop (a free list, a pool of
 * stacks, a buffer ring) under a key it declares itself, so adding a module
 * never touches the loop — a library built on braid does the same:
 *
 *     static void cache_free(braid_loop *loop, void *value) { my_cache_free(value); }
 *     static braid_loop_key cache_key = BRAID_LOOP_KEY_INIT("mycache", cache_free, NULL);
 *
 *     my_cache *c = braid_loop_data(loop, &cache_key);
 *     if (!c) {
 *         if (!(c = my_cache_new())) return BRAID_ENOMEM;
 *         if (braid_loop_set_data(loop, &cache_key, c) < 0) { my_cache_free(c); return BRAID_ENOMEM; }
 *     }
 *
 * braid_loop_free runs each key's report (if any) as part of its leak
 * gate — log what the module still has open and return true to make
 * destroy refuse with BRAID_EBUSY — and then, once destroy goes ahead, each
 * key's free with its value, in the reverse of the order the keys were
 * first set on that loop. The key is static storage (never freed); it is
 * numbered on first set, once per process, and at most BRAID_LOOP_MAX_KEYS
 * keys can be. Values are the module's (braid never frees them but through
 * free). Loop-affine. */
#define BRAID_LOOP_MAX_KEYS 64
typedef struct braid_loop_key {
    const char *name;                               /* for messages */
    void (*free)(braid_loop *loop, void *value);    /* may be NULL */
    bool (*report)(braid_loop *loop, void *value);  /* may be NULL */
    unsigned index;                                 /* private: 0 until first set */
} braid_loop_key;
#define BRAID_LOOP_KEY_INIT(name, free, report) { (name), (free), (report), 0 }
/* key's value on loop, NULL if none was set. */
BRAID_API void *braid_loop_data(braid_loop *loop, braid_loop_key *key);
/* Set (or replace; NULL clears) key's value on loop. 0, or BRAID_ENOMEM
 * when the process already has BRAID_LOOP_MAX_KEYS other keys. */
BRAID_API int braid_loop_set_data(braid_loop *loop, braid_loop_key *key, void *value);

/* ---- logging ----------------------------------------------------------------
 * braid_loop_log: an event with no namespace and no fields through the loop's
 * logger (<braid/log.h>; any thread). braid_loop_logger: the loop's logger,
 * valid until the loop is destroyed. */
typedef struct braid_logger braid_logger;
BRAID_API braid_logger *braid_loop_logger(braid_loop *loop);
BRAID_API void braid_loop_log(braid_loop *loop, braid_log_level level, const char *fmt, ...)
    BRAID_PRINTF(3, 4);

/* Per-loop hook reached when a Deferred carrying an unconsumed failure is
 * freed. Default: log it; debug builds (BRAID_DEBUG) abort after logging. */
struct braid_failure;
typedef void (*braid_loop_unhandled_cb)(void *ctx, braid_loop *loop, const struct braid_failure *f);
BRAID_API void braid_loop_set_unhandled(braid_loop *loop, braid_loop_unhandled_cb fn, void *ctx);

#ifdef __cplusplus
}
#endif
#endif
