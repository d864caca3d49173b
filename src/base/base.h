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

/* Invariants stated where they must hold (SQLite's asserts as
 * documentation): debug builds (BRAID_DEBUG) check them and abort, printing
 * the condition, the file, the line and the function; release builds
 * compile them out — the condition is not evaluated (only its type is
 * taken, so a variable used in an assert alone stays "used"). Use it for
 * what braid itself guarantees (buffer geometry, heap order, Deferred
 * states, watcher tables); a user's misuse that can be reported is an
 * error code or, in debug builds, a message naming the call. */
#ifdef BRAID_DEBUG
#define BRAID__ASSERT(cond) \
    ((void)(BRAID__LIKELY(cond) ? 0 : (braid__assert_fail(#cond, __FILE__, __LINE__, __func__), 0)))
#else
#define BRAID__ASSERT(cond) ((void)sizeof(cond))
#endif
_Noreturn void braid__assert_fail(const char *cond, const char *file, int line, const char *fn);

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

/* ---- error domains ------------------------------------------------------------------
 * A module of libbraid names its codes where it is built:
 *
 *     static const char *const tls_names[] = { [BRAID_ETLS_HOSTNAME - BRAID_ETLS_HOSTNAME] = "...", ... };
 *     BRAID__ERROR_DOMAIN(tls, "tls", BRAID_ETLS_HOSTNAME, BRAID_ETLS_TRUNCATED, tls_names);
 *
 * (names[i] names code first - i.) On ELF with a GNU toolchain the domain
 * is placed in the linker section "braid_errors", which braid_strerror scans
 * (no registration, nothing run at start-up); elsewhere the macro makes a
 * constructor that calls braid_error_domain_register. Put it in a file that
 * every user of the module links (with a static libbraid, an object nobody
 * references is left out, and its codes with it). A library of its own (a
 * separate .so, e.g. libbraid-glib) registers with braid_error_domain_register:
 * libbraid.so scans only its own section. */
#if defined(__ELF__) && defined(__GNUC__)
#define BRAID__ERROR_DOMAIN(id, module, first, last, names)                                  \
    __attribute__((used, section("braid_errors"), aligned(sizeof(void *))))               \
    static const braid_error_domain *const braid__errdom_ptr_##id =                       \
        &(const braid_error_domain){ (module), (first), (last), (names), NULL }
#else
#define BRAID__ERROR_DOMAIN(id, module, first, last, names)                                  \
    static braid_error_domain braid__errdom_##id = { (module), (first), (last), (names), NULL }; \
    __attribute__((constructor)) static void braid__errdom_register_##id(void) {             \
        (void)braid_error_domain_register(&braid__errdom_##id);                               \
    }
#endif
/* Is every code named by at most one domain (built-in or registered)? The
 * first code named twice goes to *dup (tests). */
bool braid__error_domains_check(int *dup);

/* ---- allocator internals for fault injection (alloc.c) ------------------------- */
void braid__alloc_reset_injection(void);
/* Take `blocks` live blocks out of braid_test_alloc_outstanding (negative:
 * put them back): for memory parked out of the program's reach, such as the
 * debug builds' quarantine of freed Deferreds. */
void braid__alloc_park(long blocks);

/* ---- log lines (log.c) ------------------------------------------------------------
 * Format a line and hand it to fn(ctx, level, line), or, when fn is NULL,
 * to stderr as "braid[level] ns: line" ("braid[level]: line" when ns is
 * NULL; debug lines only when the environment has BRAID_LOG_DEBUG set to
 * something other than "" or "0"). A line is cut at 1 KiB. The loop's
 * braid__log (loop/loop_module.h) passes its own sink; a poller, which sits
 * below the loop, passes the sink it was given.
 *
 * ns is the namespace of the module that logs ("net", "tls"): each module
 * declares its own, once, in its internal header —
 *     static const char braid__log_ns[] = "tls";
 * — and braid__log passes it (a file that logs without one in scope does
 * not compile). User sinks get the line as it is; the namespace is for the
 * default sink and for the structured log events to come. */
void braid__log_write(braid_log_cb fn, void *ctx, const char *ns, braid_log_level level, const char *fmt, ...)
    BRAID_PRINTF(5, 6);
void braid__log_vwrite(braid_log_cb fn, void *ctx, const char *ns, braid_log_level level, const char *fmt,
                       va_list ap);

#endif
