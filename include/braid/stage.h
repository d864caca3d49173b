/* braid/stage.h — SEDA stages: batched handlers behind bounded queues with
 * admission control, in execution domains, with controllers.
 *
 * A stage (Welsh, Culler and Brewer, "SEDA", SOSP 2001) is a name, a handler
 * that always receives a *batch* of events, a bounded queue in front of it,
 * an admission predicate on that queue, optional controllers and statistics.
 * Where a stage's handler runs is its *execution domain*, chosen when the
 * stage is made: the loop's thread, or the threads of a braid_pool. Stages
 * of one domain hand events to each other by direct call on the same thread
 * (the event is queued, and the target's handler runs on this thread when
 * the current run ends — no wake-up, no hop through the loop or the pool;
 * see docs/stage.md for the one exception, a target already running on
 * another thread at its threads limit, which that run takes); only an edge between two domains is a queue hop, with
 * wake-ups batched. That is the split Welsh's 2010 retrospective asks for:
 * stages are code modules, domains are concurrency boundaries, and moving a
 * stage to another domain is a change of one argument.
 *
 *     static void parse(braid_stage *st, braid_stage_event *ev, size_t n, void *arg) {
 *         app *a = arg;
 *         for (size_t i = 0; i < n; i++) {
 *             request *r = ev[i].data;
 *             int rc = braid_stage_enqueue(a->disk, &ev[i]);   // moves ev[i] on success
 *             if (rc < 0) answer_503(r);                        // full / rejected / closed
 *         }                                                     // what is left is freed
 *     }
 *     braid_stage_domain *on_loop, *disk_pool;
 *     braid_stage_domain_new(loop, NULL, NULL, &on_loop);
 *     braid_stage_domain_new(loop, pool, NULL, &disk_pool);     // pool's threads
 *     braid_stage_options o = { .queue_limit = 256 };
 *     braid_stage_new(on_loop, "parse", parse, a, &o, &a->parse);
 *     braid_stage_new(disk_pool, "disk", read_file, a, &o, &a->disk);
 *     ...
 *     braid_stage_enqueue(a->parse, &BRAID_STAGE_EVENT(req, request_free));
 *
 * Events and ownership. An event is a pointer and the function that frees it
 * (braid_stage_event). Ownership moves with the event: braid_stage_enqueue
 * takes it on success (and clears the caller's copy), and leaves it with
 * the caller on every error. A handler owns the n events of its batch: it
 * enqueues each one onward (which clears that slot) or leaves it, and the
 * stage frees every slot still holding data when the handler returns. So
 * an event is freed exactly once whatever happens — delivered, refused,
 * dropped by a lossy enqueue, or still queued when the stage is freed.
 *
 * Enqueueing never blocks and never fails silently: it returns 0 or one of
 * BRAID_ESTAGE_FULL (the queue is at queue_limit), BRAID_ESTAGE_REJECTED
 * (the admission predicate said no) or BRAID_ESTAGE_CLOSED (after
 * braid_stage_close). braid_stage_enqueue_lossy drops (frees) an event it
 * cannot take; braid_stage_enqueue_many takes all or none; prepare/commit/
 * abort reserve room in several stages first, for an atomic fan-out.
 *
 * Back-pressure. on_clog runs when an enqueue is refused for lack of room
 * or the queue reaches clog_at; on_drain when a clogged queue falls to drain_at again.
 * Both run on the loop's thread (the loop given to the stage's domain),
 * in that order, so a stream protocol feeding a stage can pause its
 * transport in on_clog and resume it in on_drain.
 *
 * Writes to a transport happen on that transport's loop thread: a stage in
 * a pool domain hands its output to a stage in the loop's domain, which
 * writes (examples/staged-http.c does that).
 *
 * Threads. braid_stage_enqueue and its variants, braid_stage_close and
 * braid_stage_stats_get may be called from any thread (except for stages
 * made with BRAID_STAGE_LOOP_ONLY): braid_stage_enqueue is the call for
 * code outside braid (a transaction committing on a worker, say) to hand
 * an owned event to a stage. Everything else is loop-affine (the domain's
 * loop). While a pool domain runs work the loop's thread handed it, it
 * holds the loop, so braid_loop_run waits for the answers. A handler runs on its domain's thread(s); in a pool domain up to
 * `threads` batches of one stage run at once, so a handler must be
 * thread-safe for its own data when threads > 1.
 *
 * Controllers (each optional, on the loop's clock, run by a timer on the
 * loop's thread): thread count (SEDA's: one more runner while the queue
 * stays at a threshold, one fewer after an idle time), batch size (SEDA's
 * throughput hill-climb) and response time (Welsh and Culler, USITS 2003:
 * the 90th percentile of the last 100 response times against a target
 * drives the admission token rate, additive increase and multiplicative
 * decrease). Every decision is logged (info level, namespace "stage") with
 * its inputs. docs/stage.md has the details and the measurements.
 */
#ifndef BRAID_STAGE_H
#define BRAID_STAGE_H

#include <braid/common.h>
#include <braid/loop.h>
#include <braid/pool.h>
#include <braid/time.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors: the stage module's range, -4300 ... -4399 --------------------------------- */
#define BRAID_ESTAGE_FULL      (-4300)  /* the stage's queue is full */
#define BRAID_ESTAGE_REJECTED  (-4301)  /* the admission predicate refused the event */
#define BRAID_ESTAGE_CLOSED    (-4302)  /* the stage was closed */

typedef struct braid_stage braid_stage;
typedef struct braid_stage_domain braid_stage_domain;

/* ---- events ------------------------------------------------------------------------------ */
typedef struct braid_stage_event {
    void *data;                 /* NULL: an empty slot (moved on, or nothing) */
    void (*free)(void *data);   /* frees data; NULL: data is not owned (nothing to free) */
} braid_stage_event;
#define BRAID_STAGE_EVENT(data, free) ((braid_stage_event){ (data), (free) })

/* Free ev's data (if any) and clear it. Any thread. */
BRAID_API void braid_stage_event_free(braid_stage_event *ev);

/* A batch of n >= 1 events, oldest first, on the domain's thread. See
 * "Events and ownership" above. */
typedef void (*braid_stage_fn)(braid_stage *st, braid_stage_event *events, size_t n, void *arg);
typedef void (*braid_stage_cb)(braid_stage *st, void *arg);

/* ---- execution domains ------------------------------------------------------------------ */
typedef struct braid_stage_domain_options {
    const char *name;      /* for the graph dump (NULL: "loop" or "pool") */
    int pool_class;        /* the pool's class its runs are queued in (0) */
    /* Pool domains: while runs started from the loop's thread are going,
     * braid_loop_run keeps running (the loop is held, as for
     * braid_pool_defer), and with loop_spin_ns set the loop busy-polls
     * its posted calls that long before sleeping, so answers coming back
     * skip the wake-up (0: never spin; measured, spinning lost on a loaded
     * 2-core machine: docs/stage.md). */
    uint64_t loop_spin_ns;
} braid_stage_domain_options;

/* A domain whose stages run on loop's thread (pool NULL) or on pool's
 * threads. The pool must outlive the domain, and its max_threads bounds
 * how many stage batches run at once. Controllers and on_clog/on_drain of
 * its stages run on loop's thread. Loop thread. */
BRAID_API int braid_stage_domain_new(braid_loop *loop, braid_pool *pool,
                                     const braid_stage_domain_options *opts,
                                     braid_stage_domain **out);
/* Free a domain with no stage left (debug builds abort otherwise). NULL is
 * a no-op. Loop thread. If a wake-up for the domain is still posted to the
 * loop, the memory goes when it has run (the loop's leak gate shows it). */
BRAID_API void braid_stage_domain_free(braid_stage_domain *dom);

/* ---- stages ---------------------------------------------------------------------------- */
#define BRAID_STAGE_MAX_BATCH 256

enum {
    /* Do not read the clock per event: no queueing, service or response
     * times (and no response-time controller). Saves a clock read per
     * enqueue and per batch. */
    BRAID_STAGE_NO_TIMING = 1u << 0,
    /* Loop domains only: every event comes from the loop's own thread (its
     * I/O callbacks, timers, handlers of loop-domain stages), so the stage
     * takes no lock. Debug builds abort on an enqueue from another thread;
     * braid_stage_stats_get is then loop-thread only too. */
    BRAID_STAGE_LOOP_ONLY = 1u << 1,
};

typedef struct braid_stage_options {
    size_t queue_limit;      /* bound of the queue (0: 1024) */
    size_t batch_max;        /* events per handler call, at most (0: 64; <= BRAID_STAGE_MAX_BATCH) */
    unsigned threads;        /* pool domains: batches of this stage run at once, at most (0: 1);
                                the thread controller moves it */
    size_t clog_at;          /* on_clog once the queue holds this many (0: queue_limit) */
    size_t drain_at;         /* on_drain once a clogged queue holds this many or fewer (0) */
    braid_stage_cb on_clog;  /* loop thread; may be NULL */
    braid_stage_cb on_drain; /* loop thread; may be NULL */
    void *cb_arg;
    unsigned flags;          /* BRAID_STAGE_NO_TIMING */
} braid_stage_options;

/* Make a stage named name (copied) in dom, running fn(st, events, n, arg).
 * Loop thread. It shows in the loop's leak gate until freed. */
BRAID_API int braid_stage_new(braid_stage_domain *dom, const char *name, braid_stage_fn fn,
                              void *arg, const braid_stage_options *opts, braid_stage **out);

/* Any thread: refuse new events with BRAID_ESTAGE_CLOSED (SEDA's
 * SinkClosed). What is queued is still delivered; reservations already
 * prepared may still commit. Idempotent. */
BRAID_API void braid_stage_close(braid_stage *st);

/* Loop thread, never from the stage's own handler: close, free every
 * event still queued (once each), wait for batches running on pool threads
 * to finish, and free the stage. NULL is a no-op. Free a pool domain's
 * stages before shutting its pool down. */
BRAID_API void braid_stage_free(braid_stage *st);

BRAID_API const char *braid_stage_name(const braid_stage *st);

/* ---- enqueueing (any thread) --------------------------------------------------------------- */
/* Hand *ev to st. 0: st owns the event and *ev is cleared. Otherwise
 * BRAID_ESTAGE_FULL, BRAID_ESTAGE_REJECTED or BRAID_ESTAGE_CLOSED (or
 * BRAID_EINVAL for an event without data, BRAID_ENOMEM for the first
 * enqueue made under a context, which allocates the stage's context slots)
 * and *ev is still the caller's. Never blocks. This is the call for any
 * code, on any thread, that hands an owned event to a stage. The event is
 * handled in the context current here (<braid/context.h>). */
BRAID_API int braid_stage_enqueue(braid_stage *st, braid_stage_event *ev);

/* The same, but an event that cannot be taken is dropped: freed, and *ev
 * cleared either way. true if st took it. (SEDA's enqueue_lossy.) */
BRAID_API bool braid_stage_enqueue_lossy(braid_stage *st, braid_stage_event *ev);

/* All n events or none, in order: 0 and every evs[i] cleared, or an error
 * as braid_stage_enqueue and all of them still the caller's. */
BRAID_API int braid_stage_enqueue_many(braid_stage *st, braid_stage_event *evs, size_t n);

/* Two-phase enqueue (SEDA's enqueue_prepare/commit/abort): prepare checks
 * closed and admission for the n events evs (still the caller's) and
 * reserves room for them in st's queue, so the commit cannot fail. Fan out
 * atomically by preparing in every target, then committing all, or
 * aborting those prepared if one refuses. The reservation is caller
 * storage; commit (with the same events) or abort it exactly once, before
 * the stage is freed. Abort gives back the room and a token bucket's
 * tokens (not per-class tokens). */
typedef struct braid_stage_reservation {
    braid_stage *stage;
    size_t n;
    double tokens;       /* private: tokens taken */
} braid_stage_reservation;
BRAID_API int braid_stage_prepare(braid_stage *st, const braid_stage_event *evs, size_t n,
                                  braid_stage_reservation *out);
/* Move res->n events from evs into the stage (each evs[i] cleared). */
BRAID_API void braid_stage_commit(braid_stage_reservation *res, braid_stage_event *evs);
BRAID_API void braid_stage_abort(braid_stage_reservation *res);

/* ---- admission predicates (loop thread; one at a time, each replaces the last) -------------- */
/* Checked on every enqueue (after closed, before full); a refusal is
 * BRAID_ESTAGE_REJECTED, counted by cause in the statistics. */

/* None: only the queue's bound. */
BRAID_API void braid_stage_admit_all(braid_stage *st);
/* Refuse while the queue holds threshold or more (SEDA's QueueThresholdPredicate). */
BRAID_API void braid_stage_admit_threshold(braid_stage *st, size_t threshold);
/* Token bucket: rate events per second, at most depth at once (SEDA's
 * RateLimitingPredicate); starts full. Refilled by the loop's clock. */
BRAID_API int braid_stage_admit_rate(braid_stage *st, double rate, double depth);
/* A token bucket per class: classify(ev, arg) gives the class (0..n-1; out
 * of range: refused) of each event, rates[i]/depths[i] its bucket
 * (n <= BRAID_STAGE_MAX_CLASSES). classify runs on the enqueuing thread. */
#define BRAID_STAGE_MAX_CLASSES 8
typedef unsigned (*braid_stage_classify_fn)(const braid_stage_event *ev, void *arg);
BRAID_API int braid_stage_admit_classes(braid_stage *st, size_t n, const double *rates,
                                        const double *depths, braid_stage_classify_fn classify,
                                        void *arg);
/* A user function: admit(st, ev, queue_length, arg) returns true to take
 * ev. It runs on the enqueuing thread with no lock held; it must not call
 * the stage's enqueue functions. */
typedef bool (*braid_stage_admit_fn)(braid_stage *st, const braid_stage_event *ev,
                                     size_t queue_length, void *arg);
BRAID_API void braid_stage_admit_fn_set(braid_stage *st, braid_stage_admit_fn admit, void *arg);

/* ---- controllers (loop thread; period 0 turns one off) ---------------------------------------- */
typedef struct braid_stage_thread_control {
    uint64_t period;        /* ns between looks (0: off) */
    size_t threshold;       /* one more runner while the queue holds this many (0: 10) */
    unsigned min, max;      /* bounds (0: 1; 0: 20) */
    uint64_t idle_timeout;  /* one fewer after the queue was empty this long (0: 1 s;
                             * BRAID_FOREVER: never fewer) */
} braid_stage_thread_control;
BRAID_API int braid_stage_control_threads(braid_stage *st, const braid_stage_thread_control *c);

typedef struct braid_stage_batch_control {
    uint64_t period;        /* ns between measurements (0: off) */
    size_t min, max;        /* bounds (0: 1; 0: BRAID_STAGE_MAX_BATCH) */
} braid_stage_batch_control;
BRAID_API int braid_stage_control_batch(braid_stage *st, const braid_stage_batch_control *c);

typedef struct braid_stage_response_control {
    uint64_t period;        /* ns between looks (0: off) */
    uint64_t target;        /* the target 90th percentile response time, ns (required) */
    double rate_min, rate_max, rate_start;  /* admission rate bounds and start, events/s
                                               (0: 1; 0: 100000; 0: rate_max) */
    double add;             /* additive increase per look (0: 2% of rate_max) */
    double cut;             /* multiplicative decrease factor (0: 0.5) */
    double depth;           /* token bucket depth (0: 1 % of rate_max, at least 1) */
} braid_stage_response_control;
/* Installs a token bucket (braid_stage_admit_rate) and moves its rate at
 * each look, judging the response times (enqueue to the end of the batch
 * that held the event) seen since the last look, the latest 100 at most:
 * when their p90 is above target, rate = cut × min(rate, the rate the
 * stage actually served since the last look) — unless the p90 fell by 10 %
 * or more since the last look (the last cut is already draining the queue:
 * hold); below 0.9 × target, rate += add; no response, no change. (SEDA
 * cuts the rate in force at every look above target; cutting from the
 * served rate reaches the stage's capacity in one step when an overload
 * begins, and holding while the p90 falls keeps the queue from running dry,
 * which is goodput lost: docs/stage.md.) Needs timing (not
 * BRAID_STAGE_NO_TIMING). */
BRAID_API int braid_stage_control_response(braid_stage *st, const braid_stage_response_control *c);

/* ---- statistics and the graph ---------------------------------------------------------------- */
/* Histograms use the pool's log2 buckets of nanoseconds (braid_pool_hist_bucket,
 * braid_pool_hist_quantile); batch sizes count events, same buckets. */
typedef struct braid_stage_stats {
    uint64_t arrivals;          /* enqueue attempts (events) */
    uint64_t accepted;
    uint64_t rejected_full, rejected_admission, rejected_closed;
    uint64_t dropped;           /* by enqueue_lossy (also counted in rejected_*) */
    uint64_t handled;           /* events handed to the handler */
    uint64_t batches;           /* handler calls */
    uint64_t runs_direct;       /* runs started by direct call inside the domain */
    uint64_t runs_scheduled;    /* runs started by a wake-up of the domain */
    uint64_t clogs, drains;     /* back-pressure transitions */
    size_t queue_length, queue_limit, queue_max;   /* queue_max: the highest seen */
    size_t reserved;            /* room held by prepared reservations */
    size_t batch_max;           /* current (the batch controller moves it) */
    unsigned threads, running;  /* runner bound (thread controller) and batches running */
    double admit_rate;          /* token rate in force, events/s (0: no token bucket) */
    uint64_t p90_response;      /* over the last 100 samples, ns (0: none) */
    uint64_t batch_hist[BRAID_POOL_HIST];
    uint64_t queue_hist[BRAID_POOL_HIST];     /* enqueue -> handler */
    uint64_t service_hist[BRAID_POOL_HIST];   /* handler time per event */
    uint64_t response_hist[BRAID_POOL_HIST];  /* enqueue -> end of its batch */
} braid_stage_stats;
/* Any thread: a consistent snapshot. */
BRAID_API void braid_stage_stats_get(braid_stage *st, braid_stage_stats *out);

typedef enum braid_stage_format {
    BRAID_STAGE_TEXT, BRAID_STAGE_JSON, BRAID_STAGE_DOT,
} braid_stage_format;
/* Write the stage graph of loop — every stage whose domain is on loop, its
 * counters, and the edges seen so far (a handler enqueueing into another
 * stage) with their counts — as text, JSON or Graphviz DOT. Loop thread. */
BRAID_API int braid_stage_dump(braid_loop *loop, braid_stage_format fmt, FILE *out);

#ifdef __cplusplus
}
#endif
#endif
