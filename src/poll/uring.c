/* io_uring backend (Linux 5.13+, liburing): readiness from multishot poll
 * requests. The same ring carries the operations of the loop's completion
 * service (loop/completion_uring.c): this file waits on the ring and hands
 * each of their CQEs to the token the service attached (poll/uring.h).
 *
 * Readiness. Each watched fd has at most one live IORING_OP_POLL_ADD request
 * with IORING_POLL_ADD_MULTI: it posts a CQE each time the fd is woken with
 * an event of interest, and stays armed, so an idle fd costs nothing per
 * iteration. Its user_data is READY_BIT | seq << 32 | fd, where seq is a
 * per-fd arm counter kept here. The backend remembers, per fd, which seq is
 * live and for which watcher tag it was armed; a CQE whose seq is not the live
 * one comes from a poll already removed or replaced and is dropped here,
 * while a live CQE is reported with the tag of the watcher it was armed for,
 * so the loop's generation check still drops it if that watcher is closed
 * (or its fd number reused) later in the same batch.
 *
 * Level-triggered, like the other backends. A multishot poll only reports
 * wakeups (edge-like): if a callback leaves data unread, no new CQE comes.
 * So after each live readiness CQE the fd is marked for a recheck: before the
 * next wait the backend sends IORING_OP_POLL_REMOVE with
 * IORING_POLL_UPDATE_EVENTS for the same request, which re-arms it in place
 * and polls the file once more, posting a CQE at once if it is still ready.
 * That is what epoll's level mode does inside epoll_wait, and it costs one
 * SQE per *active* fd, batched into the same io_uring_enter.
 *
 * Interest changes are not sent one by one: braid_watch_set_interest records the
 * wanted mask and tag, and before each wait the backend reconciles each
 * changed fd (remove, update in place, or add with a new seq). Several
 * changes in one iteration cost one SQE; closing a watcher and reusing its
 * fd number for a new one removes the old request (by user_data, so it is
 * found even though the fd number now names another file) and arms a new one.
 *
 * A multishot poll that ends (a CQE without IORING_CQE_F_MORE: CQ overflow,
 * -ECANCELED when the submitting thread exited, ...) is re-armed; one that
 * fails (say -EBADF: the fd was closed before the request was sent) reports
 * BRAID_WATCH_ERROR to its watcher once and stays down until the interest changes.
 *
 * Waiting: io_uring_submit_and_wait_timeout with IORING_FEAT_EXT_ARG (5.11),
 * a relative ns timeout and no timeout SQE: queued SQEs and the wait are one
 * system call. The ring fd is the backend fd: it polls readable while CQEs
 * are pending, so another loop can embed braid.
 *
 * Removing a request is an IORING_OP_ASYNC_CANCEL of its user_data, not an
 * IORING_OP_POLL_REMOVE: the kernel refuses a poll removal with -EALREADY
 * while a wakeup of that request is being handled (its task work queued),
 * and the multishot request then stays armed — holding its file, so a
 * closed listening socket went on taking connections into its queue and a
 * closed connection never sent its FIN. A cancel marks the request
 * cancelled whatever it is doing. An update refused the same way is sent
 * again before the next wait (its user_data names the fd and seq).
 *
 * user_data space: READY_BIT set = readiness; UPDATE_BIT set = an update of
 * the request ready_ud would name; below 4096 = the backend's own removals
 * and cancellations (with IOSQE_CQE_SKIP_SUCCESS these post nothing when
 * they succeed; a failure other than "not found" is logged); anything else
 * is a pointer to a braid__poll_token of the completion service (user-space
 * pointers never have bit 63 or 62 set and are never below 4096). */
#ifdef BRAID_HAVE_URING   /* built with liburing only */
#include "poll/uring.h"
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define READY_BIT (1ull << 63)
#define UPDATE_BIT (1ull << 62)
#define SEQ_MASK 0x7fffffffu
#define SQ_ENTRIES 512u
#define CQ_ENTRIES 4096u
#define REAP_BATCH 64u
/* user_data of the backend's own requests (never a valid op pointer). */
enum { UD_IGNORE = 0, UD_REMOVE = 1, UD_CANCEL = 2, UD_INTERNAL_MAX = 4096 };

enum {
    FD_ARMED   = 1u << 0,   /* a live multishot poll request exists (or is queued) */
    FD_DIRTY   = 1u << 1,   /* in the dirty list: reconcile before the next wait */
    FD_RECHECK = 1u << 2,   /* re-poll in place (level-triggered emulation) */
    FD_FAILED  = 1u << 3,   /* the poll failed; don't re-arm until interest changes */
};

typedef struct ur_fd {
    uint64_t want_tag, armed_tag;
    uint32_t seq;               /* seq of the live request */
    uint32_t stamp;             /* reap round of ev_index */
    uint32_t ev_index;          /* slot of the poller's batch used this round */
    uint16_t want_ev, armed_ev; /* poll(2) bits */
    uint8_t flags;
} ur_fd;

typedef struct ur_state {
    struct io_uring ring;
    unsigned sqe_flags;         /* IOSQE_CQE_SKIP_SUCCESS if the kernel has it */
    ur_fd *fds;
    int32_t *dirty;             /* fds to reconcile, capacity nfds */
    size_t nfds, ndirty;
    uint32_t round;
    uint16_t next_bgid;
} ur_state;

/* ---- the once-per-process probe ------------------------------------------------------ */
static atomic_int probed_ok;        /* 0 unknown, 1 yes, -1 no */

/* Is multishot poll really there? Opcode probing cannot tell about flags, so
 * arm one on an eventfd, make it readable and look for IORING_CQE_F_MORE. */
static bool probe_multishot_poll(struct io_uring *ring) {
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0) return false;
    bool ok = false;
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_poll_multishot(sqe, efd, POLLIN);
    sqe->user_data = 1;
    uint64_t one = 1;
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = { 1, 0 };
    if (io_uring_submit(ring) == 1 && write(efd, &one, sizeof one) == sizeof one &&
        io_uring_wait_cqe_timeout(ring, &cqe, &ts) == 0) {
        ok = cqe->user_data == 1 && cqe->res > 0 && (cqe->res & POLLIN) &&
             (cqe->flags & IORING_CQE_F_MORE);
        io_uring_cqe_seen(ring, cqe);
    }
    close(efd);
    return ok;
}

static bool probe_uring(void) {
    struct io_uring ring;
    if (io_uring_queue_init(8, &ring, 0) < 0) return false;   /* ENOSYS, EPERM (sysctl), ... */
    bool ok = (ring.features & IORING_FEAT_EXT_ARG) && (ring.features & IORING_FEAT_NODROP);
    struct io_uring_probe *p = ok ? io_uring_get_probe_ring(&ring) : NULL;
    ok = p && io_uring_opcode_supported(p, IORING_OP_POLL_ADD) &&
         io_uring_opcode_supported(p, IORING_OP_POLL_REMOVE) &&
         io_uring_opcode_supported(p, IORING_OP_ASYNC_CANCEL);
    if (p) io_uring_free_probe(p);
    ok = ok && probe_multishot_poll(&ring);
    io_uring_queue_exit(&ring);
    return ok;
}

bool braid__uring_available(void) {
    int v = atomic_load_explicit(&probed_ok, memory_order_acquire);
    if (!v) {
        /* Two threads may probe at once; both get the same answer. */
        v = probe_uring() ? 1 : -1;
        atomic_store_explicit(&probed_ok, v, memory_order_release);
    }
    return v > 0;
}

/* ---- init / destroy ------------------------------------------------------------------ */
static int ur_init(braid__poller *p) {
    ur_state *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    /* COOP_TASKRUN: completions are posted when we next enter the kernel
     * instead of interrupting the thread; SUBMIT_ALL: one bad SQE does not
     * stall the rest. Both are optional (5.18/5.19); retry without. */
    struct io_uring_params prm = { 0 };
    prm.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    prm.cq_entries = CQ_ENTRIES;
    int rc = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &prm);
    if (rc == -EINVAL) {
        memset(&prm, 0, sizeof prm);
        prm.flags = IORING_SETUP_CQSIZE;
        prm.cq_entries = CQ_ENTRIES;
        rc = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &prm);
    }
    if (rc < 0) {
        /* Creating a ring can fail after a good probe (fd or memlock limits):
         * say "not available" so the loop may fall back to epoll. */
        braid__log_write(p->log, p->log_ctx, "poll", BRAID_LOG_WARN, "io_uring ring setup failed: %s", braid_strerror(rc));
        braid_free(s);
        return BRAID_ENOSYS;
    }
    if (prm.features & IORING_FEAT_CQE_SKIP) s->sqe_flags = IOSQE_CQE_SKIP_SUCCESS;
    s->next_bgid = 1;
    p->state = s;
    return 0;
}

static void ur_destroy(braid__poller *p) {
    ur_state *s = p->state;
    io_uring_queue_exit(&s->ring);     /* cancels every request still in flight */
    braid_free(s->fds);
    braid_free(s->dirty);
    braid_free(s);
    p->state = NULL;
}

/* ---- interest: recorded now, reconciled before the next wait --------------------------- */
static int fds_reserve(ur_state *s, int fd) {
    if ((size_t)fd < s->nfds) return 0;
    size_t n = s->nfds ? s->nfds : 64;
    while (n <= (size_t)fd) n *= 2;
    ur_fd *f = braid_realloc(s->fds, n * sizeof *f);
    if (!f) return BRAID_ENOMEM;
    memset(f + s->nfds, 0, (n - s->nfds) * sizeof *f);
    s->fds = f;
    int32_t *d = braid_realloc(s->dirty, n * sizeof *d);
    if (!d) return BRAID_ENOMEM;     /* fds grown, dirty not: retried next time */
    s->dirty = d;
    s->nfds = n;
    return 0;
}

static void mark_dirty(ur_state *s, int fd, unsigned extra) {
    ur_fd *f = &s->fds[fd];
    f->flags |= extra;
    if (f->flags & FD_DIRTY) return;
    f->flags |= FD_DIRTY;
    s->dirty[s->ndirty++] = fd;
}

static uint16_t poll_bits(unsigned mask) {
    uint16_t ev = 0;
    if (mask & BRAID__POLL_READ) ev |= POLLIN | POLLRDHUP;
    if (mask & BRAID__POLL_WRITE) ev |= POLLOUT;
    return ev;
}

static int ur_update(braid__poller *p, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag) {
    ur_state *s = p->state;
    (void)old_mask;
    if ((size_t)fd >= s->nfds) {
        if (!new_mask) return 0;
        int rc = fds_reserve(s, fd);
        if (rc < 0) return rc;
    }
    ur_fd *f = &s->fds[fd];
    f->want_tag = tag;
    f->want_ev = poll_bits(new_mask);
    f->flags &= (uint8_t)~FD_FAILED;
    mark_dirty(s, fd, 0);
    return 0;
}

static inline uint64_t ready_ud(uint32_t seq, int fd) {
    return READY_BIT | ((uint64_t)(seq & SEQ_MASK) << 32) | (uint32_t)fd;
}

/* An SQE, submitting what is queued when the SQ is full. */
static struct io_uring_sqe *get_sqe(ur_state *s) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
    if (BRAID__UNLIKELY(!sqe)) {
        io_uring_submit(&s->ring);
        sqe = io_uring_get_sqe(&s->ring);
    }
    return sqe;
}

/* Bring fd's kernel request in line with what its watcher wants. false if no
 * SQE could be had (the fd stays dirty; state reflects what was queued). */
static bool reconcile_fd(ur_state *s, int fd, ur_fd *f) {
    struct io_uring_sqe *sqe;
    if ((f->flags & FD_ARMED) && (!f->want_ev || f->want_tag != f->armed_tag)) {
        if (!(sqe = get_sqe(s))) return false;
        io_uring_prep_cancel64(sqe, ready_ud(f->seq, fd), 0);   /* not POLL_REMOVE: see the top */
        sqe->user_data = UD_REMOVE;
        sqe->flags |= (uint8_t)s->sqe_flags;
        f->flags &= (uint8_t)~FD_ARMED;
    }
    if (!f->want_ev || (f->flags & FD_FAILED)) return true;
    if (f->flags & FD_ARMED) {
        if (f->armed_ev == f->want_ev && !(f->flags & FD_RECHECK)) return true;
        /* Update in place: new events, and vfs_poll again (the recheck). */
        if (!(sqe = get_sqe(s))) return false;
        uint64_t ud = ready_ud(f->seq, fd);
        /* new_user_data must be 0 unless IORING_POLL_UPDATE_USER_DATA (EINVAL) */
        io_uring_prep_poll_update(sqe, ud, 0, f->want_ev,
                                  IORING_POLL_UPDATE_EVENTS | IORING_POLL_ADD_MULTI);
        sqe->user_data = (ud & ~READY_BIT) | UPDATE_BIT;
        sqe->flags |= (uint8_t)s->sqe_flags;
        f->armed_ev = f->want_ev;
        return true;
    }
    if (!(sqe = get_sqe(s))) return false;
    f->seq = (f->seq + 1) & SEQ_MASK;
    io_uring_prep_poll_multishot(sqe, fd, f->want_ev);
    sqe->user_data = ready_ud(f->seq, fd);
    f->armed_ev = f->want_ev;
    f->armed_tag = f->want_tag;
    f->flags |= FD_ARMED;
    return true;
}

static void reconcile(ur_state *s) {
    size_t i = 0;
    for (; i < s->ndirty; i++) {
        int fd = s->dirty[i];
        ur_fd *f = &s->fds[fd];
        if (!reconcile_fd(s, fd, f)) break;
        f->flags &= (uint8_t)~(FD_DIRTY | FD_RECHECK);
    }
    if (i < s->ndirty) memmove(s->dirty, s->dirty + i, (s->ndirty - i) * sizeof *s->dirty);
    s->ndirty -= i;
}

/* ---- reaping -------------------------------------------------------------------------- */
static unsigned braid_bits(int res) {
    unsigned ev = 0;
    if (res & (POLLIN | POLLPRI | POLLRDHUP)) ev |= BRAID__POLL_READ;
    if (res & POLLOUT) ev |= BRAID__POLL_WRITE;
    if (res & (POLLERR | POLLNVAL)) ev |= BRAID__POLL_ERROR;
    if (res & POLLHUP) ev |= BRAID__POLL_HUP;
    return ev;
}

/* Report events for f's watcher, merged with an event already reported for it
 * in this reap (a wakeup CQE and a recheck CQE may both be there): one
 * callback per watcher per iteration, as with epoll. false if the batch is full. */
static bool push_ready(braid__poller *p, ur_state *s, ur_fd *f, unsigned ev) {
    if (f->stamp == s->round && f->ev_index < p->nevents &&
        p->events[f->ev_index].tag == f->armed_tag) {
        p->events[f->ev_index].events |= ev;
        return true;
    }
    size_t at = p->nevents;
    if (braid__poller_push(p, f->armed_tag, ev) < 0) return false;
    f->stamp = s->round;
    f->ev_index = (uint32_t)at;
    return true;
}

static void on_ready_cqe(braid__poller *p, ur_state *s, uint64_t ud, int res, unsigned flags) {
    int fd = (int)(uint32_t)ud;
    uint32_t seq = (uint32_t)(ud >> 32) & SEQ_MASK;
    if ((size_t)fd >= s->nfds) return;
    ur_fd *f = &s->fds[fd];
    if (!(f->flags & FD_ARMED) || f->seq != seq) return;   /* removed or replaced: stale */
    bool more = flags & IORING_CQE_F_MORE;
    if (res >= 0) {
        /* Ready: report, and re-poll before the next wait (level semantics).
         * If the batch is full the recheck reports it next iteration. */
        if (res) (void)push_ready(p, s, f, braid_bits(res));
        if (more) mark_dirty(s, fd, FD_RECHECK);
    }
    if (more) return;
    /* The request ended. */
    f->flags &= (uint8_t)~FD_ARMED;
    if (res < 0 && res != -ECANCELED) {
        braid__log_write(p->log, p->log_ctx, "poll", BRAID_LOG_DEBUG, "io_uring poll on fd %d failed: %s", fd,
                         braid_strerror(res));
        (void)push_ready(p, s, f, BRAID__POLL_ERROR);
        f->flags |= FD_FAILED;
        return;
    }
    mark_dirty(s, fd, 0);    /* re-armed (with a new seq) before the next wait */
}

/* An update of fd's request (seq) failed. -EALREADY: a wakeup of the
 * request was being handled and the new events were not applied — send the
 * update again before the next wait, if that request is still the live one.
 * -ENOENT: the request ended first (its final CQE re-arms it). */
static void on_update_failure(braid__poller *p, ur_state *s, uint64_t ud, int res) {
    int fd = (int)(uint32_t)ud;
    uint32_t seq = (uint32_t)(ud >> 32) & SEQ_MASK;
    if (res == -ENOENT) return;
    if (res == -EALREADY) {
        if ((size_t)fd < s->nfds && (s->fds[fd].flags & FD_ARMED) && s->fds[fd].seq == seq)
            mark_dirty(s, fd, FD_RECHECK);
        return;
    }
    braid__log_write(p->log, p->log_ctx, "poll", BRAID_LOG_WARN, "io_uring poll update on fd %d failed: %s", fd,
                     braid_strerror(res));
}

/* A removal or cancellation failed. Not finding the target is a normal race
 * (it ended, or completed, first), and so is -EALREADY for a cancellation
 * (the operation was already running and completes by itself); anything
 * else is a bug here. */
static void on_internal_failure(braid__poller *p, uint64_t ud, int res) {
    if (res == -ENOENT || res == -EALREADY) return;
    static const char *const what[] = { "request", "poll removal", "cancel" };
    braid__log_write(p->log, p->log_ctx, "poll", BRAID_LOG_WARN, "io_uring %s failed: %s", what[ud < 3 ? ud : 0], braid_strerror(res));
}

/* Handle the CQEs present, copying each batch out and advancing the CQ head
 * before running callbacks (which may submit, and so produce more CQEs). The
 * budget stops a callback that keeps completing instantly from holding the
 * loop here forever. */
static void reap(braid__poller *p, ur_state *s) {
    struct io_uring_cqe *cqes[REAP_BATCH];
    struct { uint64_t ud; int32_t res; uint32_t flags; } got[REAP_BATCH];
    unsigned budget = CQ_ENTRIES * 2;
    s->round++;
    while (budget) {
        unsigned n = io_uring_peek_batch_cqe(&s->ring, cqes, REAP_BATCH);
        if (!n) break;
        for (unsigned i = 0; i < n; i++) {
            got[i].ud = cqes[i]->user_data;
            got[i].res = cqes[i]->res;
            got[i].flags = cqes[i]->flags;
        }
        io_uring_cq_advance(&s->ring, n);
        for (unsigned i = 0; i < n; i++) {
            uint64_t ud = got[i].ud;
            if (ud & READY_BIT) {
                on_ready_cqe(p, s, ud, got[i].res, got[i].flags);
            } else if (ud & UPDATE_BIT) {
                if (got[i].res < 0) on_update_failure(p, s, ud, got[i].res);
            } else if (ud >= UD_INTERNAL_MAX) {
                braid__poll_token *t = (braid__poll_token *)(uintptr_t)ud;
                t->complete(t, got[i].res, got[i].flags);
            } else if (got[i].res < 0) {
                on_internal_failure(p, ud, got[i].res);
            }
        }
        budget = n < budget ? budget - n : 0;
    }
}

static int ur_poll(braid__poller *p, uint64_t timeout_ns) {
    ur_state *s = p->state;
    reconcile(s);
    int rc;
    if (timeout_ns == 0) {
        /* Enter even with nothing queued: it runs pending task work, so
         * completions that are due get posted. */
        rc = io_uring_submit_and_get_events(&s->ring);
    } else {
        struct __kernel_timespec ts, *tsp = NULL;
        if (timeout_ns != BRAID_FOREVER) {
            ts.tv_sec = (long long)(timeout_ns / 1000000000ull);
            ts.tv_nsec = (long long)(timeout_ns % 1000000000ull);
            tsp = &ts;
        }
        struct io_uring_cqe *cqe;
        rc = io_uring_submit_and_wait_timeout(&s->ring, &cqe, 1, tsp, NULL);
    }
    /* -ETIME: timed out; -EINTR: a signal; -EAGAIN/-EBUSY: the kernel is
     * short of resources or has CQEs backlogged — reap and go on. */
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) return rc;
    reap(p, s);
    return 0;
}

static int ur_fd_of(const braid__poller *p) { return ((ur_state *)p->state)->ring.ring_fd; }

/* Submit queued interest changes (and queued operations) now:
 * braid_loop_next_timeout calls this so that an embedding loop waiting on
 * the ring fd waits for the right things. */
static int ur_flush(braid__poller *p) {
    ur_state *s = p->state;
    reconcile(s);
    if (!io_uring_sq_ready(&s->ring)) return 0;
    int rc = io_uring_submit(&s->ring);
    return rc < 0 ? rc : 0;
}

const braid__poller_ops braid__poller_uring = {
    .name = "uring", .available = braid__uring_available, .init = ur_init, .destroy = ur_destroy,
    .update = ur_update, .poll = ur_poll, .backend_fd = ur_fd_of, .flush = ur_flush,
};

/* ---- for the completion service (poll/uring.h) ------------------------------------------- */
struct io_uring *braid__uring_ring(braid__poller *p) {
    return p->ops == &braid__poller_uring ? &((ur_state *)p->state)->ring : NULL;
}

struct io_uring_sqe *braid__uring_sqe(braid__poller *p) { return get_sqe(p->state); }

int braid__uring_cancel(braid__poller *p, braid__poll_token *t) {
    ur_state *s = p->state;
    struct io_uring_sqe *sqe = get_sqe(s);
    if (!sqe) return BRAID_EAGAIN;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)t, 0);
    sqe->user_data = UD_CANCEL;
    sqe->flags |= (uint8_t)s->sqe_flags;
    return 0;
}

uint16_t braid__uring_buffer_group(braid__poller *p) {
    ur_state *s = p->state;
    return s->next_bgid++;
}
#endif
