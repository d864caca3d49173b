/* Fibers: spawn, the switch in and out, await, sleep, yield, cancellation.
 *
 * Every switch is between a fiber and whoever resumed it, and resuming only
 * ever happens from the ready phase (run_fiber, a braid_soon node embedded in
 * the fiber): a fiber suspends by switching back to the ready phase that
 * resumed it, and whatever wakes it (a Deferred's callback, a timer) only
 * queues it. So the producer that fires a Deferred never finds a fiber
 * running inside its call, and a fiber's stack never holds someone else's
 * frames. A fiber ends by switching out for good with its result stored;
 * run_fiber, back on the loop's stack, fires the spawn Deferred there (so
 * its callbacks run on the big stack) and returns the stack to the pool.
 *
 * The sanitizers are told about every switch: ASan through
 * __sanitizer_{start,finish}_switch_fiber (else it takes the fiber's stack
 * for a giant overflow of the main one), TSan through __tsan_*_fiber. */
#include "fiber/fiber_internal.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef BRAID__FIBER_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef BRAID__FIBER_TSAN
void *__tsan_get_current_fiber(void);
void *__tsan_create_fiber(unsigned flags);
void __tsan_destroy_fiber(void *fiber);
void __tsan_switch_to_fiber(void *fiber, unsigned flags);
#endif

static const braid_result no_result = { NULL, NULL, NULL, NULL };

static const char *const fiber_names[] = { "not inside a fiber" };
BRAID__ERROR_DOMAIN(fiber, "fiber", BRAID_ENOT_IN_FIBER, BRAID_ENOT_IN_FIBER, fiber_names);

/* ---- per-loop state ---------------------------------------------------------------- */
static bool fstate_report(braid_loop *loop, void *ptr) {
    braid__fstate *st = ptr;
    if (!st->nlive) return false;
    static const char *const states[] = { "not started", "runnable", "running",
                                          "blocked in await", "sleeping", "finishing",
                                          "waiting on a stream" };
    braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: %zu fiber(s) still alive", st->nlive);
    int shown = 0;
    for (braid_fiber *f = st->live; f && shown < 10; f = f->next, shown++)
        braid__log(loop, BRAID_LOG_ERROR, "  fiber '%s' (%s)", f->name, states[f->state]);
    return true;
}

static void fstate_destroy(braid_loop *loop, void *ptr) {
    braid__fstate *st = ptr;
    BRAID__UNUSED(loop);
    braid__fiber_pool_drain(st);
    braid__fiber_guard_teardown(st);
    braid_free(st);
}

static braid_loop_key fstate_key = BRAID_LOOP_KEY_INIT("fiber", fstate_destroy, fstate_report);

static braid__fstate *fstate_get(braid_loop *loop) {
    braid__fstate *st = braid__loop_data(loop, &fstate_key);
    if (BRAID__LIKELY(st != NULL)) return st;
    st = braid_calloc(1, sizeof *st);
    if (!st) return NULL;
    st->loop = loop;
    long page = sysconf(_SC_PAGESIZE);
    st->page = page > 0 ? (size_t)page : 4096;
    st->pool_max = BRAID__FIBER_POOL_DEFAULT;
    if (braid_loop_set_data(loop, &fstate_key, st) < 0) {
        braid_free(st);
        return NULL;
    }
    braid__fiber_guard_setup(st);
    return st;
}

static inline braid__fstate *fstate_peek(braid_loop *loop) {
    return braid__loop_data(loop, &fstate_key);
}

/* ---- contexts ---------------------------------------------------------------------- */
#ifdef BRAID__FIBER_ASM
/* The first frame of a new fiber, in the layout braid__fiber_switch pops
 * (see switch_<arch>.S): returning from the switch lands in
 * braid__fiber_entry, which calls braid__fiber_main(f). */
static void ctx_init(braid_fiber *f) {
    uint64_t *sp = (uint64_t *)(void *)f->stack_hi;
#if defined(__x86_64__)
    sp -= 2;
    sp[0] = sp[1] = 0;            /* a null return address above the entry: unwinders stop */
    sp -= 8;
    /* Start with the spawning thread's floating-point control state. */
    uint32_t mxcsr;
    uint16_t fcw;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fcw));
    sp[0] = (uint64_t)mxcsr | (uint64_t)fcw << 32;
    sp[1] = 0;                                        /* r15 */
    sp[2] = 0;                                        /* r14 */
    sp[3] = (uint64_t)(uintptr_t)braid__fiber_main;   /* r13 */
    sp[4] = (uint64_t)(uintptr_t)f;                   /* r12 */
    sp[5] = 0;                                        /* rbx */
    sp[6] = 0;                                        /* rbp */
    sp[7] = (uint64_t)(uintptr_t)braid__fiber_entry;  /* return address */
#elif defined(__aarch64__)
    sp -= 20;
    memset(sp, 0, 20 * sizeof *sp);
    sp[0] = (uint64_t)(uintptr_t)f;                   /* x19 */
    sp[1] = (uint64_t)(uintptr_t)braid__fiber_main;   /* x20 */
    sp[10] = 0;                                       /* x29: end of frame chain */
    sp[11] = (uint64_t)(uintptr_t)braid__fiber_entry; /* x30 */
#endif
    f->sp = sp;
}
static inline void ctx_to_fiber(braid_fiber *f) { braid__fiber_switch(&f->caller_sp, f->sp); }
static inline void ctx_to_caller(braid_fiber *f) { braid__fiber_switch(&f->sp, f->caller_sp); }
#else
/* makecontext passes int arguments only: the pointer goes in two halves. */
static void uc_entry(unsigned hi, unsigned lo) {
    braid__fiber_main((braid_fiber *)(uintptr_t)(((uint64_t)hi << 32) | lo));
}
static int ctx_init(braid_fiber *f) {
    if (getcontext(&f->uc) < 0) return -errno;
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = (size_t)(f->stack_hi - f->stack_lo);
    f->uc.uc_link = NULL;
    uint64_t p = (uint64_t)(uintptr_t)f;
    makecontext(&f->uc, (void (*)(void))uc_entry, 2, (unsigned)(p >> 32), (unsigned)p);
    return 0;
}
static inline void ctx_to_fiber(braid_fiber *f) { swapcontext(&f->caller_uc, &f->uc); }
static inline void ctx_to_caller(braid_fiber *f) { swapcontext(&f->uc, &f->caller_uc); }
#endif

/* Loop side: run f until it suspends or ends. */
static inline void switch_in(braid_fiber *f) {
#ifdef BRAID__FIBER_ASAN
    void *fake = NULL;
    __sanitizer_start_switch_fiber(&fake, f->stack_lo, (size_t)(f->stack_hi - f->stack_lo));
#endif
#ifdef BRAID__FIBER_TSAN
    f->tsan_caller = __tsan_get_current_fiber();
    __tsan_switch_to_fiber(f->tsan_fiber, 0);
#endif
    ctx_to_fiber(f);
#ifdef BRAID__FIBER_ASAN
    __sanitizer_finish_switch_fiber(fake, NULL, NULL);
#endif
}

/* Fiber side, first thing after every switch into the fiber. */
static inline void arrived(braid_fiber *f) {
#ifdef BRAID__FIBER_ASAN
    __sanitizer_finish_switch_fiber(f->asan_fake, &f->asan_caller_bottom, &f->asan_caller_size);
#else
    (void)f;
#endif
}

/* Fiber side: back to the resumer; returns when resumed. exiting: never
 * coming back (ASan then drops the fiber's fake stack). */
static inline void switch_out(braid_fiber *f, bool exiting) {
#ifdef BRAID__FIBER_ASAN
    __sanitizer_start_switch_fiber(exiting ? NULL : &f->asan_fake, f->asan_caller_bottom,
                                   f->asan_caller_size);
#else
    (void)exiting;
#endif
#ifdef BRAID__FIBER_TSAN
    __tsan_switch_to_fiber(f->tsan_caller, 0);
#endif
    ctx_to_caller(f);
    arrived(f);
}

/* ---- running ------------------------------------------------------------------------- */
static void finish(braid_fiber *f) {
    braid__fstate *st = f->st;
    braid_deferred *d = f->d;
    braid_result r = f->result;
    if (f->prev) f->prev->next = f->next;
    else st->live = f->next;
    if (f->next) f->next->prev = f->prev;
    st->nlive--;
#ifdef BRAID__FIBER_TSAN
    __tsan_destroy_fiber(f->tsan_fiber);
#endif
    braid__fiber_stack_put(st, f);   /* first: the callbacks below may spawn */
    if (d) braid_deferred_fire(d, r);
    else braid_result_drop(r);       /* cancelled: nobody wants it */
}

/* The ready-phase node of every fiber: start or resume it. */
static void run_fiber(void *arg) {
    braid_fiber *f = arg;
    braid__fstate *st = f->st;
    if (BRAID__UNLIKELY(f->state == BRAID__F_NEW && f->cancel_pending)) {
        /* Cancelled before it ever ran: fn never runs. */
        f->result = no_result;
        finish(f);
        return;
    }
    f->state = BRAID__F_RUNNING;
    braid_fiber *prev = st->current;
    st->current = f;
    braid__fiber_set_running(f);
    switch_in(f);
    st->current = prev;
    braid__fiber_set_running(prev);
    if (f->state == BRAID__F_DONE) finish(f);
}

static inline void schedule(braid_fiber *f, unsigned state) {
    f->state = state;
    braid_loop_soon_node(f->loop, &f->soon);
}

void braid__fiber_main(braid_fiber *f) {
    arrived(f);
    f->result = f->fn(f->arg);
    f->state = BRAID__F_DONE;
    switch_out(f, true);
    abort();   /* a finished fiber is never resumed */
}

static void sleep_done(braid_timer *t, void *arg);

/* ---- spawn and cancel --------------------------------------------------------------------- */
static braid_result cancelled_failure(void) {
    return braid_result_errf(BRAID_ECANCELED, "fiber cancelled");
}

/* The spawn Deferred's canceller. It does not fire d (the fiber may still
 * need to clean up), so d is errbacked with BRAID_ECANCELED right after and
 * loses its producer reference: the fiber no longer owns it. */
static void fiber_cancel(braid_deferred *d, void *arg) {
    braid_fiber *f = arg;
    BRAID__UNUSED(d);
    f->d = NULL;
    f->cancelled = true;
    f->cancel_pending = true;
    switch (f->state) {
    case BRAID__F_AWAIT:
        /* Its callback (await_done) delivers the cancellation, now if the
         * awaited Deferred fires on cancel (the usual case). */
        braid_deferred_cancel(f->awaiting);
        break;
    case BRAID__F_SLEEP:
    case BRAID__F_PARK:
        braid_timer_stop(&f->timer);
        f->cancel_pending = false;
        f->wake_rc = BRAID_ECANCELED;
        schedule(f, BRAID__F_RUNNABLE);
        break;
    default:
        break;   /* not started, runnable or running: delivered at the next wait */
    }
}

braid_deferred *braid_fiber_spawn(braid_loop *loop, braid_result_fn fn, void *arg,
                                  const braid_fiber_options *opts) {
    if (!loop || !fn) return NULL;
    braid__fstate *st = fstate_get(loop);
    if (!st) return NULL;
    braid_fiber *f = braid__fiber_stack_get(st, opts ? opts->stack_size : 0);
    if (!f) return NULL;
    braid_deferred *d = braid_deferred_new_cancellable(loop, fiber_cancel, f);
    if (!d) {
        braid__fiber_stack_put(st, f);
        return NULL;
    }
    f->st = st;
    f->loop = loop;
    f->cancel_pending = f->cancelled = false;
    f->wake_rc = 0;
    f->fn = fn;
    f->arg = arg;
    f->d = d;
    f->awaiting = NULL;
    f->result = no_result;
    f->soon.fn = run_fiber;
    f->soon.arg = f;
    braid_timer_init(loop, &f->timer, sleep_done, f);
    const char *name = opts && opts->name ? opts->name : "fiber";
    size_t n = strnlen(name, sizeof f->name - 1);
    memcpy(f->name, name, n);
    f->name[n] = '\0';
#ifdef BRAID__FIBER_ASAN
    f->asan_fake = NULL;
    f->asan_caller_bottom = NULL;
    f->asan_caller_size = 0;
#endif
#ifdef BRAID__FIBER_TSAN
    f->tsan_fiber = __tsan_create_fiber(0);
    f->tsan_caller = NULL;
#endif
#ifdef BRAID__FIBER_ASM
    ctx_init(f);
#else
    if (ctx_init(f) < 0) {
        /* getcontext cannot really fail; fail the Deferred if it does. */
        braid__fiber_stack_put(st, f);
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOSYS, "getcontext failed"));
        return d;
    }
#endif
    f->prev = NULL;
    f->next = st->live;
    if (st->live) st->live->prev = f;
    st->live = f;
    st->nlive++;
    schedule(f, BRAID__F_NEW);
    return d;
}

/* ---- await ------------------------------------------------------------------------- */
static braid_result drop_all(braid_result r, void *arg) {
    BRAID__UNUSED(arg);
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

/* We hold d's consumer reference but will not wait for it: cancel it, make
 * sure whatever result it gets is consumed (not reported as unhandled), and
 * let go. */
static void abandon(braid_deferred *d) {
    if (braid_deferred_add_both(d, drop_all, NULL) == 0) {
        braid_deferred_cancel(d);
    } else {
        braid_result r;
        braid_deferred_cancel(d);
        if (braid_deferred_take(d, &r) == 0) braid_result_drop(r);
    }
    braid_deferred_unref(d);
}

/* The awaited Deferred fired: park its result in the fiber and queue the
 * resume. We are inside d's callback loop, which frees d after we drop our
 * (consumer) reference here. */
static braid_result await_done(braid_result r, void *arg) {
    braid_fiber *f = arg;
    braid_deferred *d = f->awaiting;
    f->awaiting = NULL;
    if (BRAID__UNLIKELY(f->cancel_pending)) {
        f->cancel_pending = false;
        if (!(r.failure && r.failure->code == BRAID_ECANCELED)) {
            braid_result_drop(r);
            r = cancelled_failure();
        }
    }
    f->result = r;
    schedule(f, BRAID__F_RUNNABLE);
    braid_deferred_unref(d);
    return braid_result_ok(NULL);
}

static inline braid_fiber *current_of(braid_loop *loop) {
    braid__fstate *st = fstate_peek(loop);
    return st ? st->current : NULL;
}

braid_result braid_fiber_await(braid_deferred *d) {
    if (BRAID__UNLIKELY(!d))
        return braid_result_errf(BRAID_ENOMEM, "braid_fiber_await: no Deferred (its producer ran out of memory)");
    braid_fiber *f = current_of(braid_deferred_loop(d));
    if (BRAID__UNLIKELY(!f)) {
        abandon(d);
        return braid_result_errf(BRAID_ENOT_IN_FIBER, "braid_fiber_await called outside a fiber");
    }
    if (BRAID__UNLIKELY(f->cancel_pending)) {
        f->cancel_pending = false;
        abandon(d);
        return cancelled_failure();
    }
    braid_result r;
    if (braid_deferred_take(d, &r) == 0) {   /* already fired: no switch */
        braid_deferred_unref(d);
        return r;
    }
    if (BRAID__UNLIKELY(braid_deferred_add_both(d, await_done, f) < 0)) {
        abandon(d);
        return braid_result_errf(BRAID_ENOMEM, "braid_fiber_await: no memory to wait");
    }
    f->awaiting = d;
    f->state = BRAID__F_AWAIT;
    switch_out(f, false);
    r = f->result;
    f->result = no_result;
    return r;
}

braid_result braid_fiber_await_timeout(braid_deferred *d, uint64_t ns) {
    if (d && ns != BRAID_FOREVER) {
        int rc = braid_deferred_add_timeout(d, ns);
        if (BRAID__UNLIKELY(rc < 0)) {
            abandon(d);
            return braid_result_errf(rc, "braid_fiber_await_timeout: no memory for the timeout");
        }
    }
    return braid_fiber_await(d);
}

/* ---- sleep and yield ------------------------------------------------------------------ */
/* The sleep/park timer: a sleep ends normally, a park times out. */
static void sleep_done(braid_timer *t, void *arg) {
    BRAID__UNUSED(t);
    braid_fiber *f = arg;
    f->wake_rc = f->state == BRAID__F_PARK ? BRAID_ETIMEDOUT : 0;
    schedule(f, BRAID__F_RUNNABLE);
}

int braid_fiber_sleep(braid_loop *loop, uint64_t ns) {
    braid_fiber *f = current_of(loop);
    if (BRAID__UNLIKELY(!f)) return BRAID_ENOT_IN_FIBER;
    if (BRAID__UNLIKELY(f->cancel_pending)) {
        f->cancel_pending = false;
        return BRAID_ECANCELED;
    }
    int rc = braid_timer_start(&f->timer, ns);
    if (rc < 0) return rc;
    f->wake_rc = 0;
    f->state = BRAID__F_SLEEP;
    switch_out(f, false);
    return f->wake_rc;
}

int braid_fiber_yield(braid_loop *loop) {
    braid_fiber *f = current_of(loop);
    if (BRAID__UNLIKELY(!f)) return BRAID_ENOT_IN_FIBER;
    if (!f->cancel_pending) {
        schedule(f, BRAID__F_RUNNABLE);
        switch_out(f, false);
    }
    if (BRAID__UNLIKELY(f->cancel_pending)) {
        f->cancel_pending = false;
        return BRAID_ECANCELED;
    }
    return 0;
}

/* ---- park / unpark (for waits built in C, like the fiber streams) ------------------- */
int braid__fiber_park(braid_loop *loop, uint64_t timeout_ns) {
    braid_fiber *f = current_of(loop);
    if (BRAID__UNLIKELY(!f)) return BRAID_ENOT_IN_FIBER;
    if (BRAID__UNLIKELY(f->cancel_pending)) {
        f->cancel_pending = false;
        return BRAID_ECANCELED;
    }
    if (timeout_ns != BRAID_FOREVER) {
        int rc = braid_timer_start(&f->timer, timeout_ns);
        if (rc < 0) return rc;
    }
    f->wake_rc = 0;
    f->state = BRAID__F_PARK;
    switch_out(f, false);
    return f->wake_rc;
}

void braid__fiber_unpark(braid_fiber *f, int rc) {
    if (f->state != BRAID__F_PARK) return;   /* already woken (or not parked) */
    braid_timer_stop(&f->timer);
    f->wake_rc = rc;
    schedule(f, BRAID__F_RUNNABLE);
}

/* ---- queries ---------------------------------------------------------------------------- */
braid_fiber *braid_fiber_current(braid_loop *loop) { return current_of(loop); }
const char *braid_fiber_name(const braid_fiber *f) { return f->name; }
bool braid_fiber_is_cancelled(const braid_fiber *f) { return f->cancelled; }

size_t braid_fiber_count(braid_loop *loop) {
    braid__fstate *st = fstate_peek(loop);
    return st ? st->nlive : 0;
}

int braid_fiber_set_pool_max(braid_loop *loop, size_t max) {
    braid__fstate *st = fstate_get(loop);
    if (!st) return BRAID_ENOMEM;
    st->pool_max = max;
    if (st->npooled > max) {
        /* Simplest correct trim: empty the pool; it refills as fibers end. */
        braid__fiber_pool_drain(st);
    }
    return 0;
}

/* ---- for braid-bench ---------------------------------------------------------------------- */
static braid_result pingpong(void *arg) {
    braid_fiber *f = arg;
    while (!f->cancel_pending) switch_out(f, false);
    return braid_result_ok(NULL);
}

/* n round trips (2n switches) between the caller and a bare fiber, with no
 * loop or Deferred in between: the cost of the switch itself, annotations
 * included. Returns the elapsed ns, or 0 if no stack could be had. */
uint64_t braid__fiber_bench_switch(braid_loop *loop, long n) {
    braid__fstate *st = fstate_get(loop);
    braid_fiber *f = st ? braid__fiber_stack_get(st, 0) : NULL;
    if (!f) return 0;
    memset(&f->st, 0, offsetof(braid_fiber, map) - offsetof(braid_fiber, st));
    f->st = st;
    f->loop = loop;
    f->fn = pingpong;
    f->arg = f;
    memcpy(f->name, "bench", 6);
#ifdef BRAID__FIBER_TSAN
    f->tsan_fiber = __tsan_create_fiber(0);
#endif
#ifdef BRAID__FIBER_ASM
    ctx_init(f);
#else
    if (ctx_init(f) < 0) { braid__fiber_stack_put(st, f); return 0; }
#endif
    switch_in(f);                                  /* start it: it parks at once */
    uint64_t t0 = braid_loop_now_fresh(loop);
    for (long i = 0; i < n; i++) switch_in(f);
    uint64_t t1 = braid_loop_now_fresh(loop);
    f->cancel_pending = true;
    switch_in(f);                                  /* let it return */
#ifdef BRAID__FIBER_TSAN
    __tsan_destroy_fiber(f->tsan_fiber);
#endif
    braid__fiber_stack_put(st, f);
    return t1 - t0;
}
