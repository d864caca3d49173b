/* Internal declarations shared by braid's modules (never installed).
 * Internal symbols use the braid__ prefix. */
#ifndef BRAID_INTERNAL_H
#define BRAID_INTERNAL_H

#include "base/base.h"
#include "loop/loop_module.h"
#include "poll/poller.h"
#include <braid/loop.h>
#include <braid/time.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "loop";

/* The poller (poll/poller.h) reports (tag, events) pairs; tag = gen << 32 |
 * fd, so the loop can drop events for a watcher closed (or replaced)
 * earlier in the same batch. */
static inline uint64_t braid__tag(uint32_t gen, int fd) {
    return ((uint64_t)gen << 32) | (uint32_t)fd;
}

/* ---- the loop ------------------------------------------------------------------ */
enum {
    BRAID__WATCH_OPEN  = 1u << 0,
    BRAID__WATCH_UNREF = 1u << 1,
    BRAID__WATCH_INTERNAL = 1u << 2,   /* not counted by the leak gate */
};
enum {
    BRAID__TIMER_ACTIVE = 1u << 0,
    BRAID__TIMER_UNREF  = 1u << 1,
    BRAID__TIMER_OWNED  = 1u << 2,     /* allocated by braid_timer_call_later */
    BRAID__TIMER_RUNNING = 1u << 3,    /* owned timer inside its callback */
};

struct braid_loop {
    struct braid__loop_head head; /* first (loop/loop_module.h): the keys' values */
    braid_loop_key *keys[BRAID_LOOP_MAX_KEYS + 1];   /* by index: keys set on this loop */
    uint64_t keys_set;            /* bit index - 1: set at least once */
    uint8_t key_order[BRAID_LOOP_MAX_KEYS];      /* indexes, in the order first set */
    unsigned nkeys;
    braid__poller poller;         /* the backend, its state and the event batch */
    size_t io_next;               /* next event of the batch to deliver: an iteration
                                     nested in an I/O callback continues the batch */
    /* The thread the loop belongs to (docs/loop.md, "Threads"): its creator,
     * then whichever thread last ran it. Written only by a thread taking the
     * loop over in run/run_once/destroy, read anywhere: relaxed atomics
     * (owner_of in loop.c). `running` (debug builds) counts run_once frames in progress,
     * to catch a second thread running the loop at the same time. */
    pthread_t owner_thread;
    atomic_int running;
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
     * write while `spinning` is set. Loop thread only, except `spinning`.
     * Set through braid__loop_spin_hold/release (loop/loop_module.h). */
    size_t spin_holds;
    uint64_t spin_max, spin_cur;
    atomic_bool spinning;

    /* signals */
    int sigfd;
    sigset_t sigmask;
    braid_watch sig_watch;
    braid_signal *signals;

    braid_log_cb log;
    void *log_ctx;
    braid_loop_unhandled_cb unhandled;
    void *unhandled_ctx;
};

/* Timer phase pieces, used by loop.c (timer.c owns the heap). */
void braid__timers_run(braid_loop *loop, uint64_t now);
uint64_t braid__timers_next_deadline(const braid_loop *loop);  /* UINT64_MAX if none */
void braid__timers_destroy(braid_loop *loop);
void braid__signals_close(braid_loop *loop);

#endif
