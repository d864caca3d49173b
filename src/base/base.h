/* The base layer's internal interface (never installed), published to every
 * module of braid: the few macros every file uses, the bounded busy-wait
 * step, the allocator's test hooks and the writing of log lines.
 *
 * It depends on nothing but <braid/common.h> and the C library, so the
 * poll layer, which sits below the loop, can use it too. */
#ifndef BRAID_BASE_H
#define BRAID_BASE_H

#include <braid/common.h>
#include <sched.h>
#include <stdarg.h>

#define BRAID__UNUSED(x) ((void)(x))
#define braid__container_of(ptr, type, member) \
    ((type *)((char *)(ptr) - offsetof(type, member)))
#define BRAID__LIKELY(x) __builtin_expect(!!(x), 1)
#define BRAID__UNLIKELY(x) __builtin_expect(!!(x), 0)

/* One step of a bounded busy-wait (loop.c, pool.c): a CPU pause the first
 * few times, then sched_yield. Spinning with pause alone is a disaster when
 * the cores are oversubscribed: the spinner can sit on the very core the
 * thread it waits for needs, for a whole time slice (measured: 50-130 µs
 * round trips instead of 3). Yielding hands that core over at once and
 * costs well under a microsecond when nobody else wants it. Measured on the
 * 2-core machine under load, 8 pauses before yielding beat 32, 128 and 512
 * (round trip 2.2-3.8 µs vs 3-7, 4-16 and 3.5-42). */
static inline void braid__spin_step(unsigned i) {
    if (i < 8) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        __asm__ __volatile__("yield");
#endif
    } else {
        sched_yield();
    }
}

/* ---- allocator internals for fault injection (alloc.c) ------------------------- */
void braid__alloc_reset_injection(void);
/* Take `blocks` live blocks out of braid_test_alloc_outstanding (negative:
 * put them back): for memory parked out of the program's reach, such as the
 * debug builds' quarantine of freed Deferreds. */
void braid__alloc_park(long blocks);

/* ---- log lines (log.c) ------------------------------------------------------------
 * Format a line and hand it to fn(ctx, level, line), or, when fn is NULL,
 * to stderr as "braid[level]: line" (debug lines only when the environment
 * has BRAID_LOG_DEBUG set to something other than "" or "0"). A line is cut
 * at 1 KiB. The loop's braid__log (loop/loop_module.h) passes its own sink;
 * a poller, which sits below the loop, passes the sink it was given. */
void braid__log_write(braid_log_fn fn, void *ctx, braid_log_level level, const char *fmt, ...)
    BRAID_PRINTF(4, 5);
void braid__log_vwrite(braid_log_fn fn, void *ctx, braid_log_level level, const char *fmt, va_list ap);

#endif
