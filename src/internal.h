/* Internal declarations shared by braid's modules (never installed).
 * Internal symbols use the braid__ prefix. */
#ifndef BRAID_INTERNAL_H
#define BRAID_INTERNAL_H

#include <braid/common.h>
#include <braid/loop.h>
#include <braid/time.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>

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

/* ---- poller backends (Redis ae's shape: a handful of small functions) ----------
 * A backend reports readiness as (tag, events) pairs through
 * braid__loop_push_event(); tag = gen << 32 | fd, so the loop can drop events
 * for a watcher closed (or replaced) earlier in the same batch. */
typedef struct braid__poller_ops {
    const char *name;
    int (*init)(braid_loop *loop);                 /* sets loop->pstate */
    void (*destroy)(braid_loop *loop);
    /* Change fd's interest from old_mask to new_mask (0 = remove). */
    int (*update)(braid_loop *loop, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag);
    /* Wait up to timeout_ns (BRAID_FOREVER = no limit, 0 = don't block). */
    int (*poll)(braid_loop *loop, uint64_t timeout_ns);
    int (*backend_fd)(const braid_loop *loop);     /* or BRAID_ENOSYS */
} braid__poller_ops;

extern const braid__poller_ops braid__poller_select;
extern const braid__poller_ops braid__poller_poll;
extern const braid__poller_ops braid__poller_epoll;
#ifdef BRAID_HAVE_URING
extern const braid__poller_ops braid__poller_uring;
/* Is io_uring usable on this kernel (probed once)? */
bool braid__uring_available(void);
/* io_uring batches interest changes into its next wait; this hands them to
 * the kernel now (an embedding loop waiting on the ring fd needs them in
 * place). BRAID_ENOSYS if loop is not on io_uring. */
int braid__uring_flush(braid_loop *loop);
#endif

static inline uint64_t braid__tag(uint32_t gen, int fd) {
    return ((uint64_t)gen << 32) | (uint32_t)fd;
}

typedef struct braid__event {
    uint64_t tag;
    unsigned events;        /* BRAID_READ | BRAID_WRITE | BRAID_ERROR | BRAID_HUP */
} braid__event;

/* Append one ready event (called by backends during poll). Never allocates:
 * returns BRAID_EAGAIN when the batch (BRAID__MAX_BATCH events) is full, and
 * the backend stops collecting for this iteration. */
#define BRAID__MAX_BATCH 1024
int braid__loop_push_event(braid_loop *loop, uint64_t tag, unsigned events);

/* ---- per-loop extension slots: module state that lives as long as the loop ----- */
enum braid__slot {
    BRAID__SLOT_DEFERRED,   /* deferred free list */
    BRAID__SLOT_POOL,
    BRAID__SLOT_FIBER,
    BRAID__SLOT_STREAM,
    BRAID__SLOT_HTTP,
    BRAID__SLOT_TLS,
    BRAID__SLOT_USER1,
    BRAID__SLOT_USER2,
    BRAID__NSLOTS
};
typedef struct braid__ext {
    void *ptr;
    void (*destroy)(braid_loop *loop, void *ptr);   /* run by braid_loop_destroy */
    /* Optional leak check run by braid_loop_destroy before anything is freed:
     * log what the module still has open and return true to make destroy
     * refuse (BRAID_EBUSY). */
    bool (*report)(braid_loop *loop, void *ptr);
} braid__ext;
void *braid__loop_slot(braid_loop *loop, enum braid__slot s);
void braid__loop_set_slot(braid_loop *loop, enum braid__slot s, void *ptr,
                          void (*destroy)(braid_loop *, void *));
void braid__loop_set_slot_report(braid_loop *loop, enum braid__slot s,
                                 bool (*report)(braid_loop *, void *));

/* ---- the loop ------------------------------------------------------------------ */
enum {
    BRAID__WATCH_OPEN  = 1u << 0,
    BRAID__WATCH_UNREF = 1u << 1,
    BRAID__WATCH_INTERNAL = 1u << 2,   /* not counted by the leak gate */
};
enum {
    BRAID__TIMER_ACTIVE = 1u << 0,
    BRAID__TIMER_UNREF  = 1u << 1,
    BRAID__TIMER_OWNED  = 1u << 2,     /* allocated by braid_call_later */
    BRAID__TIMER_RUNNING = 1u << 3,    /* owned timer inside its callback */
};

struct braid_loop {
    const braid__poller_ops *poller;
    /* The thread the loop belongs to (docs/loop.md, "Threads"): its creator,
     * then whichever thread last ran it. Written only by that thread (and by
     * a thread taking the loop over in run/run_once/destroy), so another
     * thread may compare against it without a race while no hand-over is
     * under way. `running` (debug builds) counts run_once frames in progress,
     * to catch a second thread running the loop at the same time. */
    pthread_t owner_thread;
    atomic_int running;
    void *pstate;
    braid_clock *clock;
    uint64_t now;                 /* cached at the timer phase */
    uint64_t iteration;
    unsigned flags;

    /* fd table: fds[fd] is the open watcher for fd, or NULL */
    braid_watch **fds;
    size_t nfds;
    uint32_t next_gen;
    size_t watchers_open;         /* counted by the leak gate */
    size_t watchers_alive;        /* open, with interest, referenced */

    braid__event *events;         /* collected by the last poll */
    size_t nevents, cap_events;
    size_t io_next;               /* next one to deliver: an iteration nested in an
                                     I/O callback continues the batch (loop.c) */

    /* timers: 4-ary min-heap on (deadline, seq) */
    braid_timer **heap;
    size_t heap_len, heap_cap;
    uint64_t timer_seq;
    size_t timers_alive;          /* active and referenced */

    /* posted from other threads: a Treiber stack, drained whole */
    _Atomic(braid_post *) posted;
    int wake_rfd, wake_wfd;       /* eventfd (same fd twice) or a pipe */
    braid_watch wake_watch;
    atomic_bool stop;
    atomic_bool destroying;

    /* ready callbacks (loop thread) */
    braid_soon *soon_head, *soon_tail;

    size_t holds;
    braid_handle handles;         /* sentinel of the open-handle list */

    /* prepare hooks, in start order; prepare_next is the cursor of the pass
     * in progress (a hook may stop the next one) */
    braid_prepare *prepares, *prepare_next;
    bool in_prepare;

    /* Busy-poll before blocking (pool.c sets these; see spin_for_posted in
     * loop.c). While spin_holds > 0, work in flight on other threads will
     * answer through braid_loop_post, and waking a sleeping loop costs tens
     * of microseconds: run_once first watches the posted stack for up to
     * spin_cur ns (adaptive, at most spin_max), and posters skip the eventfd
     * write while `spinning` is set. Loop thread only, except `spinning`. */
    size_t spin_holds;
    uint64_t spin_max, spin_cur;
    atomic_bool spinning;

    /* signals */
    int sigfd;
    sigset_t sigmask;
    braid_watch sig_watch;
    braid_signal *signals;

    braid_log_fn log;
    void *log_ctx;
    braid_unhandled_fn unhandled;
    void *unhandled_ctx;

    braid__ext ext[BRAID__NSLOTS];
};

/* ---- loop affinity --------------------------------------------------------------
 * Every loop-affine entry point starts with BRAID__LOOP_AFFINE(loop). Debug
 * builds (BRAID_DEBUG) abort there, naming the function, when the caller is
 * not the loop's owning thread; release builds compile it to nothing. The
 * thread-safe entries (braid_loop_post, braid_loop_post_node,
 * braid_loop_stop) never check. */
_Noreturn void braid__loop_wrong_thread(const braid_loop *loop, const char *fn);
#ifdef BRAID_DEBUG
#define BRAID__LOOP_AFFINE(loop)                                                      \
    do {                                                                              \
        if (BRAID__UNLIKELY(!pthread_equal((loop)->owner_thread, pthread_self())))    \
            braid__loop_wrong_thread((loop), __func__);                               \
    } while (0)
#else
#define BRAID__LOOP_AFFINE(loop) ((void)0)
#endif
/* Is the calling thread the loop's owner (any build)? */
static inline bool braid__loop_on_owner_thread(const braid_loop *loop) {
    /* Other threads ask this (a pool worker: "am I on the loop's thread?")
     * while a hand-over may be writing the owner: an atomic read. */
    pthread_t owner;
    __atomic_load(&loop->owner_thread, &owner, __ATOMIC_RELAXED);
    return pthread_equal(owner, pthread_self());
}

/* Timer phase pieces, used by loop.c (timer.c owns the heap). */
void braid__timers_run(braid_loop *loop, uint64_t now);
uint64_t braid__timers_next_deadline(const braid_loop *loop);  /* UINT64_MAX if none */
void braid__timers_destroy(braid_loop *loop);
void braid__signals_close(braid_loop *loop);

void braid__log(braid_loop *loop, braid_log_level level, const char *fmt, ...) BRAID_PRINTF(3, 4);

/* The pool and class where this loop resolves host names (pool.c): the one
 * given to braid_loop_set_resolver_pool, else a pool of the loop's own made
 * on first use (up to 4 threads, no spinning) and destroyed with the loop.
 * NULL on allocation failure. Loop thread. */
struct braid_pool;
struct braid_pool *braid__loop_resolver_pool(braid_loop *loop, int *cls);

/* Allocator internals for fault injection (alloc.c). */
void braid__alloc_reset_injection(void);
/* Take `blocks` live blocks out of braid_test_alloc_outstanding (negative:
 * put them back): for memory parked out of the program's reach, such as the
 * debug builds' quarantine of freed Deferreds. */
void braid__alloc_park(long blocks);

#endif
