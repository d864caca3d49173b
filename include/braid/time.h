/* braid/time.h — clocks and timers.
 *
 * Time is injected (docs/architecture.md, principle 6): a loop reads time from its
 * braid_clock, monotonic nanoseconds. The real clock is CLOCK_MONOTONIC; the
 * fake clock is advanced by hand in tests (Twisted's task.Clock) and drives
 * the very same timers. Timers never fire early: a timer started with delay d
 * at clock time t fires in the first timer phase whose clock reading is
 * >= t + d (t read fresh when it is started, not the cached iteration time).
 *
 * Timers live in a 4-ary min-heap: O(log n) start, stop and reset; a million
 * pending is fine. Equal deadlines fire in the order they were started.
 *
 *     static void on_tick(braid_timer *t, void *arg) { ... }
 *     braid_timer t;                          // caller storage, no allocation
 *     braid_timer_init(loop, &t, on_tick, ctx);
 *     braid_timer_start(&t, BRAID_MSEC(250)); // (re)arm; also "reset"
 *     braid_timer_stop(&t);                   // cancel; idempotent
 *
 *     // Twisted's callLater: an allocated one-shot whose handle lives until
 *     // it has fired (after its callback returns) or was cancelled.
 *     braid_timer *h = braid_timer_call_later(loop, BRAID_SECONDS(1), fn, arg);
 *     braid_timer_start(h, BRAID_SECONDS(2)); // move it
 *     braid_timer_cancel(h);                  // stops and frees
 *
 *     // Tests:
 *     braid_fake_clock *fc;
 *     braid_fake_clock_new(0, &fc);
 *     braid_loop_options o = { .clock = braid_fake_clock_base(fc) };
 *     braid_loop_new(&o, &loop); ...
 *     braid_fake_clock_advance(fc, BRAID_SECONDS(1));
 *     braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   // due timers fire
 *
 * Under a fake clock the loop never sleeps waiting for a timer (time moves
 * only when the test moves it): a poll with only timers pending returns at
 * once, so braid_loop_run() with nothing but future timers returns 0.
 *
 * Callbacks run on the loop's thread. A callback may start, stop, reset or
 * free any timer, its own included.
 */
#ifndef BRAID_TIME_H
#define BRAID_TIME_H

#include <braid/common.h>
#include <braid/loop.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- clocks ----------------------------------------------------------------- */
struct braid_clock {
    uint64_t (*now)(braid_clock *c);   /* monotonic ns */
    bool is_fake;                      /* true: the loop never sleeps for timers */
};

/* CLOCK_MONOTONIC; a static object, never freed. */
BRAID_API braid_clock *braid_clock_monotonic(void);

typedef struct braid_fake_clock braid_fake_clock;
/* A fake clock reading start (ns). 0 and *out (yours: braid_fake_clock_free,
 * after the loops using it are freed), or BRAID_ENOMEM. */
BRAID_API int braid_fake_clock_new(uint64_t start, braid_fake_clock **out);
BRAID_API void braid_fake_clock_free(braid_fake_clock *c);
BRAID_API braid_clock *braid_fake_clock_base(braid_fake_clock *c);
BRAID_API void braid_fake_clock_advance(braid_fake_clock *c, uint64_t ns);
BRAID_API void braid_fake_clock_set(braid_fake_clock *c, uint64_t ns); /* never backwards */


/* ---- timers --------------------------------------------------------------------- */
typedef struct braid_timer braid_timer;
typedef void (*braid_timer_cb)(braid_timer *t, void *arg);

struct braid_timer {          /* caller storage; fields are private */
    braid_loop *loop;
    braid_timer_cb cb;
    void *arg;
    uint64_t deadline;
    uint64_t seq;             /* start order, breaks deadline ties */
    uint32_t heap_index;      /* UINT32_MAX when not in the heap */
    unsigned flags;
};

BRAID_API void braid_timer_init(braid_loop *loop, braid_timer *t, braid_timer_cb cb, void *arg);
/* Arm to fire timeout from now (a running timer is moved: this is reset). */
BRAID_API int braid_timer_start(braid_timer *t, uint64_t timeout);
/* Arm to fire at an absolute time on the loop's clock. */
BRAID_API int braid_timer_start_at(braid_timer *t, uint64_t deadline);
BRAID_API void braid_timer_stop(braid_timer *t);
BRAID_API bool braid_timer_is_active(const braid_timer *t);
BRAID_API uint64_t braid_timer_deadline(const braid_timer *t);
/* An active timer keeps run() alive unless unref'd. */
BRAID_API void braid_timer_unref(braid_timer *t);

/* callLater: allocate a one-shot timer running fn(arg) after timeout.
 * Returns NULL on allocation failure. The handle is valid until fn has
 * returned (fn may reset it to fire again, which keeps it alive) or until
 * braid_timer_cancel. */
BRAID_API braid_timer *braid_timer_call_later(braid_loop *loop, uint64_t timeout,
                                        braid_loop_call_cb fn, void *arg);
/* Stop; for a call_later handle also free it. */
BRAID_API void braid_timer_cancel(braid_timer *t);


/* ---- looping calls (Twisted's LoopingCall, withCount) ------------------------------- */
typedef struct braid_looping braid_looping;
/* ticks: intervals elapsed since the previous call (1 normally; n > 1 means
 * n-1 ticks were missed because the loop was busy). */
typedef void (*braid_looping_cb)(braid_looping *lc, uint64_t ticks, void *arg);
struct braid_looping {        /* caller storage; fields are private */
    braid_timer timer;
    braid_looping_cb cb;
    void *arg;
    uint64_t interval;
    uint64_t start;
    uint64_t last_tick;
    uint64_t missed;          /* total missed ticks so far (readable) */
    uint64_t calls;           /* total calls so far (readable) */
};
/* Call cb every interval (ns) on the fixed grid start + k*interval; if now is
 * true the first call happens in the next timer phase (tick 0). */
BRAID_API int braid_looping_start(braid_loop *loop, braid_looping *lc, uint64_t interval,
                                  bool now, braid_looping_cb cb, void *arg);
BRAID_API void braid_looping_stop(braid_looping *lc);

#ifdef __cplusplus
}
#endif
#endif
