/* The poll layer's interface (never installed), published for the loop
 * (src/loop/) and for nothing above it.
 *
 * A poller backend only reports ready I/O; it knows nothing of watchers,
 * timers or the loop. It is Redis ae's shape: a handful of small functions
 * in a table (braid__poller_ops), here select, poll, epoll and io_uring,
 * each in its own file. The loop owns a braid__poller, picks a backend from
 * braid__pollers by name and calls it:
 *
 *   update      fd's interest changed from old_mask to new_mask (0 = remove);
 *               tag (generation << 32 | fd) is what the backend reports back
 *   poll        wait up to timeout_ns (BRAID_FOREVER = no limit, 0 = don't
 *               block) and append (tag, events) pairs to the batch with
 *               braid__poller_push; the loop drops an event whose tag's
 *               generation no longer matches the fd's watcher
 *   flush       optional: a backend that queues interest changes until its
 *               next wait (io_uring) hands them to the kernel now, for an
 *               outer loop that waits on backend_fd itself
 *   available   optional: false if the kernel lacks the backend (probed once
 *               per process); init may still fail with BRAID_ENOSYS (limits)
 *               and the loop then falls back as it does for unavailable ones
 *
 * The event bits are <braid/loop.h>'s BRAID_WATCH_READ, BRAID_WATCH_WRITE, BRAID_WATCH_ERROR
 * and BRAID_WATCH_HUP, restated here so the layer below the loop does not include
 * the loop's header (loop.c checks that they agree).
 *
 * A completion-based backend (io_uring) may also carry operations for the
 * loop's completion service (loop/completion.h); how is between the two of
 * them (poll/uring.h). */
#ifndef BRAID_POLL_POLLER_H
#define BRAID_POLL_POLLER_H

#include "base/base.h"

enum {
    BRAID__POLL_READ  = 1u << 0,
    BRAID__POLL_WRITE = 1u << 1,
    BRAID__POLL_ERROR = 1u << 2,
    BRAID__POLL_HUP   = 1u << 3,
    BRAID__POLL_EXCLUSIVE = 1u << 4,   /* in update masks only: wake one waiter (epoll) */
};

typedef struct braid__event {
    uint64_t tag;
    unsigned events;        /* BRAID__POLL_READ | _WRITE | _ERROR | _HUP */
} braid__event;

/* The batch a poll fills holds this many events; it is allocated with the
 * poller (the loop's), so a poll never allocates and never fails midway. */
#define BRAID__MAX_BATCH 1024

typedef struct braid__poller braid__poller;

typedef struct braid__poller_ops {
    const char *name;
    bool (*available)(void);                         /* NULL: always */
    int (*init)(braid__poller *p);                   /* sets p->state */
    void (*destroy)(braid__poller *p);
    int (*update)(braid__poller *p, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag);
    int (*poll)(braid__poller *p, uint64_t timeout_ns);
    int (*backend_fd)(const braid__poller *p);       /* or BRAID_ENOSYS */
    int (*flush)(braid__poller *p);                  /* NULL: changes apply at once */
} braid__poller_ops;

struct braid__poller {
    const braid__poller_ops *ops;
    void *state;                  /* the backend's own */
    braid__event *events;         /* the batch: BRAID__MAX_BATCH entries */
    size_t nevents;               /* filled by the last poll */
    braid_log_cb log;             /* where the backend's log lines go */
    void *log_ctx;
};

/* Append one ready event (backends, during poll). BRAID_EAGAIN when the
 * batch is full: the backend stops collecting for this iteration (with
 * level-triggered readiness the rest is reported next time). */
static inline int braid__poller_push(braid__poller *p, uint64_t tag, unsigned events) {
    if (p->nevents == BRAID__MAX_BATCH) return BRAID_EAGAIN;
    p->events[p->nevents].tag = tag;
    p->events[p->nevents].events = events;
    p->nevents++;
    return 0;
}

/* A completion-based backend (io_uring) also carries operations submitted
 * for the loop's completion service: the submitter embeds a token, and the
 * backend calls its complete() for each completion of that operation, from
 * inside poll (res: the result, >= 0 or -errno; flags: the backend's
 * completion flags, see loop/completion.h). */
typedef struct braid__poll_token braid__poll_token;
struct braid__poll_token {
    void (*complete)(braid__poll_token *t, int res, unsigned flags);
};

/* The backends built into this library, NULL-terminated (backends.c). */
extern const braid__poller_ops *const braid__pollers[];
/* The built-in backend called name, or NULL. */
const braid__poller_ops *braid__poller_find(const char *name);

#endif
