/* Fiber internals shared by the files in src/fiber/ (never installed).
 *
 * A fiber lives entirely inside one mmap'ed region:
 *
 *   map                map+guard                       f          map+map_size
 *   | guard (no access) | stack, grows down <- stack_hi | braid_fiber |
 *
 * The control block sits at the top, on the same page as the first bytes of
 * stack the fiber uses, so an idle fiber that never went deep costs one or two
 * resident pages and no heap allocation at all. */
#ifndef BRAID_FIBER_INTERNAL_H
#define BRAID_FIBER_INTERNAL_H

#include "fiber/park.h"
#include "loop/loop_module.h"
#include <braid/deferred.h>
#include <braid/fiber.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "fiber";

#if !defined(BRAID_FIBER_UCONTEXT) && (defined(__x86_64__) || defined(__aarch64__))
#define BRAID__FIBER_ASM 1
#else
/* Portable fallback: makecontext/swapcontext (a system call per switch, for
 * the signal mask, but correct everywhere glibc or musl runs). */
#include <ucontext.h>
#endif

#if defined(BRAID_ASAN) || defined(__SANITIZE_ADDRESS__)
#define BRAID__FIBER_ASAN 1
#endif
#if defined(BRAID_TSAN) || defined(__SANITIZE_THREAD__)
#define BRAID__FIBER_TSAN 1
#endif
#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#define BRAID__FIBER_VALGRIND 1
#endif
#endif

enum braid__fiber_state {
    BRAID__F_NEW,        /* spawned, start queued */
    BRAID__F_RUNNABLE,   /* resume queued in the ready phase */
    BRAID__F_RUNNING,
    BRAID__F_AWAIT,      /* blocked in braid_fiber_await (awaiting set) */
    BRAID__F_SLEEP,      /* blocked in braid_fiber_sleep (timer armed) */
    BRAID__F_DONE,       /* fn returned; its result waits in `result` */
    BRAID__F_PARK,       /* blocked in braid__fiber_park (timer armed if a timeout) */
};

typedef struct braid__fstate braid__fstate;

struct braid_fiber {
    /* Hot: the switch reads these. */
#ifdef BRAID__FIBER_ASM
    void *sp;                    /* saved stack pointer while not running */
    void *caller_sp;             /* the resumer's, while running */
#else
    ucontext_t uc, caller_uc;
#endif
    braid__fstate *st;
    braid_loop *loop;
    unsigned state;
    bool cancel_pending;         /* a cancellation not yet delivered */
    bool cancelled;              /* the spawn Deferred was cancelled */
    int wake_rc;                 /* what sleep/yield return */
    braid_result_fn fn;
    void *arg;
    braid_deferred *d;           /* the spawn Deferred (producer side); NULL once cancelled */
    braid_deferred *awaiting;    /* while BRAID__F_AWAIT (we hold its consumer reference) */
    braid_result result;         /* await's result in transit, then fn's */
    braid_soon soon;             /* resume node for the ready phase */
    braid_timer timer;           /* braid_fiber_sleep */
    braid_fiber *prev, *next;    /* live list; next = pool link when pooled */

    /* The stack. */
    char *map;
    size_t map_size;
    size_t stack_req;            /* requested size rounded to pages (for messages) */
    char *stack_lo, *stack_hi;   /* usable stack [lo, hi); hi is 16-byte aligned */
#ifdef BRAID__FIBER_VALGRIND
    unsigned vg_id;
#endif
#ifdef BRAID__FIBER_ASAN
    void *asan_fake;
    const void *asan_caller_bottom;
    size_t asan_caller_size;
#endif
#ifdef BRAID__FIBER_TSAN
    void *tsan_fiber, *tsan_caller;
#endif
    char name[BRAID_FIBER_NAME_MAX];
};

#define BRAID__FIBER_POOL_CLASSES 4
#define BRAID__FIBER_POOL_DEFAULT 256

/* Per-loop state of fibers (under the fiber module's loop key). */
struct braid__fstate {
    braid_loop *loop;
    braid_fiber *current;        /* running now (NULL on the loop's own stack) */
    braid_fiber *live;           /* spawned and not finished */
    size_t nlive;
    size_t page;
    /* Finished stacks by mapping size. */
    struct { size_t map_size; braid_fiber *head; } pool[BRAID__FIBER_POOL_CLASSES];
    size_t npooled, pool_max;
    /* The alternate signal stack we installed on this thread (if any). */
    void *altstack;
    size_t altstack_size;
};

/* ---- stacks (stack.c) ---------------------------------------------------------------- */
/* A control block on a fresh or pooled stack of at least stack_size usable
 * bytes; fields other than the stack's own are uninitialised. NULL if mmap
 * failed. */
braid_fiber *braid__fiber_stack_get(braid__fstate *st, size_t stack_size);
/* Give a finished fiber's stack back (pool or munmap). f is gone after. */
void braid__fiber_stack_put(braid__fstate *st, braid_fiber *f);
/* Unmap every pooled stack. */
void braid__fiber_pool_drain(braid__fstate *st);
/* Process-wide SIGSEGV handler (once) and this thread's alternate signal
 * stack (if it has none), so a guard-page hit can be reported. */
void braid__fiber_guard_setup(braid__fstate *st);
void braid__fiber_guard_teardown(braid__fstate *st);
/* The fiber running on this thread, for the SIGSEGV handler. */
void braid__fiber_set_running(braid_fiber *f);

/* ---- context switch ------------------------------------------------------------------ */
#ifdef BRAID__FIBER_ASM
void braid__fiber_switch(void **save_sp, void *to_sp);
void braid__fiber_entry(void);
#endif

/* C entry of every fiber (never returns). */
void braid__fiber_main(braid_fiber *f);
/* braid-bench: elapsed ns for n bare round trips (2n switches). */
uint64_t braid__fiber_bench_switch(braid_loop *loop, long n);

#endif
