/* io_uring backend (Linux 5.13+, liburing): readiness from multishot poll
 * requests, plus the completion interface of poll/uring.h on the same ring.
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
 * Interest changes are not sent one by one: braid_watch_set records the
 * wanted mask and tag, and before each wait the backend reconciles each
 * changed fd (remove, update in place, or add with a new seq). Several
 * changes in one iteration cost one SQE; closing a watcher and reusing its
 * fd number for a new one removes the old request (by user_data, so it is
 * found even though the fd number now names another file) and arms a new one.
 *
 * A multishot poll that ends (a CQE without IORING_CQE_F_MORE: CQ overflow,
 * -ECANCELED when the submitting thread exited, ...) is re-armed; one that
 * fails (say -EBADF: the fd was closed before the request was sent) reports
 * BRAID_ERROR to its watcher once and stays down until the interest changes.
 *
 * Waiting: io_uring_submit_and_wait_timeout with IORING_FEAT_EXT_ARG (5.11),
 * a relative ns timeout and no timeout SQE: queued SQEs and the wait are one
 * system call. The ring fd is the backend fd: it polls readable while CQEs
 * are pending, so another loop can embed braid.
 *
 * user_data space: READY_BIT set = readiness; below 4096 = the backend's own
 * removals, updates and cancellations (with IOSQE_CQE_SKIP_SUCCESS they post
 * nothing when they succeed; a failure other than "not found" is logged);
 * anything else is a pointer to a braid__uring_op (user-space pointers never
 * have bit 63 set and are never below 4096). */
#include "poll/uring.h"
#include <poll.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#define READY_BIT (1ull << 63)
#define SEQ_MASK 0x7fffffffu
#define SQ_ENTRIES 512u
#define CQ_ENTRIES 4096u
#define REAP_BATCH 64u
/* user_data of the backend's own requests (never a valid op pointer). */
enum { UD_IGNORE = 0, UD_REMOVE = 1, UD_UPDATE = 2, UD_CANCEL = 3, UD_INTERNAL_MAX = 4096 };

enum {
    FD_ARMED   = 1u << 0,   /* a live multishot poll request exists (or is queued) */
    FD_DIRTY   = 1u << 1,   /* in the dirty list: reconcile before the next wait */
    FD_RECHECK = 1u << 2,   /* re-poll in place (level-triggered emulation) */
    FD_FAILED  = 1u << 3,   /* the poll failed; don't re-arm until interest changes */
};

enum {
    OP_ACTIVE     = 1u << 0,
    OP_CANCELLING = 1u << 1,
    OP_UNREF      = 1u << 2,
    OP_HELD       = 1u << 3,   /* holds the loop */
};

typedef struct ur_fd {
    uint64_t want_tag, armed_tag;
    uint32_t seq;               /* seq of the live request */
    uint32_t stamp;             /* reap round of ev_index */
    uint32_t ev_index;          /* loop->events slot used this round */
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

static bool is_uring(const braid_loop *loop) { return loop && loop->poller == &braid__poller_uring; }

/* ---- the once-per-process probe ------------------------------------------------------ */
static atomic_int probed_ok;        /* 0 unknown, 1 yes, -1 no */
static atomic_int probed_recv;

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
static int ur_init(braid_loop *loop) {
    ur_state *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    /* COOP_TASKRUN: completions are posted when we next enter the kernel
     * instead of interrupting the thread; SUBMIT_ALL: one bad SQE does not
     * stall the rest. Both are optional (5.18/5.19); retry without. */
    struct io_uring_params p = { 0 };
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_COOP_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = CQ_ENTRIES;
    int rc = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &p);
    if (rc == -EINVAL) {
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        rc = io_uring_queue_init_params(SQ_ENTRIES, &s->ring, &p);
    }
    if (rc < 0) {
        /* Creating a ring can fail after a good probe (fd or memlock limits):
         * say "not available" so the loop may fall back to epoll. */
        braid__log(loop, BRAID_LOG_WARN, "io_uring ring setup failed: %s", braid_strerror(rc));
        braid_free(s);
        return BRAID_ENOSYS;
    }
    if (p.features & IORING_FEAT_CQE_SKIP) s->sqe_flags = IOSQE_CQE_SKIP_SUCCESS;
    s->next_bgid = 1;
    loop->pstate = s;
    return 0;
}

static void ur_destroy(braid_loop *loop) {
    ur_state *s = loop->pstate;
    io_uring_queue_exit(&s->ring);     /* cancels every request still in flight */
    braid_free(s->fds);
    braid_free(s->dirty);
    braid_free(s);
    loop->pstate = NULL;
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
    if (mask & BRAID_READ) ev |= POLLIN | POLLRDHUP;
    if (mask & BRAID_WRITE) ev |= POLLOUT;
    return ev;
}

static int ur_update(braid_loop *loop, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag) {
    ur_state *s = loop->pstate;
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
        io_uring_prep_poll_remove(sqe, ready_ud(f->seq, fd));
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
        sqe->user_data = UD_UPDATE;
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
    if (res & (POLLIN | POLLPRI | POLLRDHUP)) ev |= BRAID_READ;
    if (res & POLLOUT) ev |= BRAID_WRITE;
    if (res & (POLLERR | POLLNVAL)) ev |= BRAID_ERROR;
    if (res & POLLHUP) ev |= BRAID_HUP;
    return ev;
}

/* Report events for f's watcher, merged with an event already reported for it
 * in this reap (a wakeup CQE and a recheck CQE may both be there): one
 * callback per watcher per iteration, as with epoll. false if the batch is full. */
static bool push_ready(braid_loop *loop, ur_state *s, ur_fd *f, unsigned ev) {
    if (f->stamp == s->round && f->ev_index < loop->nevents &&
        loop->events[f->ev_index].tag == f->armed_tag) {
        loop->events[f->ev_index].events |= ev;
        return true;
    }
    size_t at = loop->nevents;
    if (braid__loop_push_event(loop, f->armed_tag, ev) < 0) return false;
    f->stamp = s->round;
    f->ev_index = (uint32_t)at;
    return true;
}

static void on_ready_cqe(braid_loop *loop, ur_state *s, uint64_t ud, int res, unsigned flags) {
    int fd = (int)(uint32_t)ud;
    uint32_t seq = (uint32_t)(ud >> 32) & SEQ_MASK;
    if ((size_t)fd >= s->nfds) return;
    ur_fd *f = &s->fds[fd];
    if (!(f->flags & FD_ARMED) || f->seq != seq) return;   /* removed or replaced: stale */
    bool more = flags & IORING_CQE_F_MORE;
    if (res >= 0) {
        /* Ready: report, and re-poll before the next wait (level semantics).
         * If the batch is full the recheck reports it next iteration. */
        if (res) (void)push_ready(loop, s, f, braid_bits(res));
        if (more) mark_dirty(s, fd, FD_RECHECK);
    }
    if (more) return;
    /* The request ended. */
    f->flags &= (uint8_t)~FD_ARMED;
    if (res < 0 && res != -ECANCELED) {
        braid__log(loop, BRAID_LOG_DEBUG, "io_uring poll on fd %d failed: %s", fd, braid_strerror(res));
        (void)push_ready(loop, s, f, BRAID_ERROR);
        f->flags |= FD_FAILED;
        return;
    }
    mark_dirty(s, fd, 0);    /* re-armed (with a new seq) before the next wait */
}

static void on_op_cqe(braid__uring_op *op, int res, unsigned flags) {
    if (!(flags & IORING_CQE_F_MORE)) {
        /* Final: drop the bookkeeping first so the callback may free or
         * resubmit the op. */
        braid_loop *loop = op->loop;
        braid_handle_close(loop, &op->handle);
        if (op->state & OP_HELD) braid_loop_release(loop);
        op->state &= ~(unsigned)(OP_ACTIVE | OP_CANCELLING | OP_HELD);
    }
    op->cb(op, res, flags);
}

/* A removal, update or cancellation failed. Not finding the target is a
 * normal race (it ended, or completed, first); anything else is a bug here. */
static void on_internal_failure(braid_loop *loop, uint64_t ud, int res) {
    if (res == -ENOENT || res == -EALREADY) return;
    static const char *const what[] = { "request", "poll remove", "poll update", "cancel" };
    braid__log(loop, BRAID_LOG_WARN, "io_uring %s failed: %s", what[ud < 4 ? ud : 0], braid_strerror(res));
}

/* Handle the CQEs present, copying each batch out and advancing the CQ head
 * before running callbacks (which may submit, and so produce more CQEs). The
 * budget stops a callback that keeps completing instantly from holding the
 * loop here forever. */
static void reap(braid_loop *loop, ur_state *s) {
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
            if (ud & READY_BIT) on_ready_cqe(loop, s, ud, got[i].res, got[i].flags);
            else if (ud >= UD_INTERNAL_MAX)
                on_op_cqe((braid__uring_op *)(uintptr_t)ud, got[i].res, got[i].flags);
            else if (got[i].res < 0) on_internal_failure(loop, ud, got[i].res);
        }
        budget = n < budget ? budget - n : 0;
    }
}

static int ur_poll(braid_loop *loop, uint64_t timeout_ns) {
    ur_state *s = loop->pstate;
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
    reap(loop, s);
    return 0;
}

static int ur_fd_of(const braid_loop *loop) { return ((ur_state *)loop->pstate)->ring.ring_fd; }

/* Submit queued interest changes now: braid_loop_next_timeout calls this so
 * that an embedding loop waiting on the ring fd waits for the right things. */
static int ur_flush(braid_loop *loop) {
    ur_state *s = loop->pstate;
    reconcile(s);
    if (!io_uring_sq_ready(&s->ring)) return 0;
    int rc = io_uring_submit(&s->ring);
    return rc < 0 ? rc : 0;
}

const braid__poller_ops braid__poller_uring = {
    "uring", ur_init, ur_destroy, ur_update, ur_poll, ur_fd_of,
};

/* ---- the completion interface (poll/uring.h) -------------------------------------------- */
void braid__uring_op_init(braid__uring_op *op, braid__uring_cb cb, void *data) {
    memset(op, 0, sizeof *op);
    op->cb = cb;
    op->data = data;
}

bool braid__uring_op_active(const braid__uring_op *op) { return op->state & OP_ACTIVE; }
void braid__uring_op_unref(braid__uring_op *op) {
    op->state |= OP_UNREF;
    if (op->state & OP_HELD) {
        braid_loop_release(op->loop);
        op->state &= ~(unsigned)OP_HELD;
    }
}

struct io_uring *braid__uring_ring(braid_loop *loop) {
    return is_uring(loop) ? &((ur_state *)loop->pstate)->ring : NULL;
}

struct io_uring_sqe *braid__uring_sqe(braid_loop *loop) {
    return is_uring(loop) ? get_sqe(loop->pstate) : NULL;
}

void braid__uring_submit(braid_loop *loop, struct io_uring_sqe *sqe, braid__uring_op *op) {
    if (op->state & OP_ACTIVE) {
        braid__log(loop, BRAID_LOG_ERROR, "braid__uring_submit: op already active");
        abort();
    }
    io_uring_sqe_set_data(sqe, op);
    op->loop = loop;
    op->state = (op->state & OP_UNREF) | OP_ACTIVE;
    if (!(op->state & OP_UNREF)) {
        braid_loop_hold(loop);
        op->state |= OP_HELD;
    }
    braid_handle_open(loop, &op->handle, "uring op");
}

int braid__uring_cancel(braid__uring_op *op) {
    if (!(op->state & OP_ACTIVE)) return BRAID_EINVAL;
    if (op->state & OP_CANCELLING) return 0;
    ur_state *s = op->loop->pstate;
    struct io_uring_sqe *sqe = get_sqe(s);
    if (!sqe) return BRAID_EAGAIN;
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)op, 0);
    sqe->user_data = UD_CANCEL;
    sqe->flags |= (uint8_t)s->sqe_flags;
    op->state |= OP_CANCELLING;
    return 0;
}

int braid__uring_flush(braid_loop *loop) {
    if (!is_uring(loop)) return BRAID_ENOSYS;
    return ur_flush(loop);
}

/* ---- provided-buffer rings ---------------------------------------------------------------- */
/* Incremental consumption: kernel 6.12, in io_uring_buf_reg.flags — a field
 * older headers (before IOU_PBUF_RING_MMAP, 6.4) call "pad". */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifdef IOU_PBUF_RING_MMAP
#define BUF_REG_FLAGS flags
#else
#define BUF_REG_FLAGS pad
#endif

struct braid__uring_bufs {
    braid_loop *loop;
    struct io_uring_buf_ring *br;
    size_t ring_bytes;
    char **addr;              /* max entries: the memory of each bid */
    uint32_t *off;            /* max entries: bytes of bid the kernel filled (incremental) */
    uint16_t *pins;           /* max entries: chunks of bid its consumers still hold */
    uint8_t *kdone;           /* max entries: the kernel is done with bid (it waits for unpin) */
    unsigned pinned;          /* buffers with pins */
    char **slabs;             /* the allocations, one per growth step */
    unsigned nslabs;
    unsigned count, max, size, mask;
    bool inc;
    uint16_t bgid;
    braid_handle handle;
};

static void bufs_add(braid__uring_bufs *b, unsigned bid) {
    b->off[bid] = 0;
    b->kdone[bid] = 0;
    io_uring_buf_ring_add(b->br, b->addr[bid], b->size, (unsigned short)bid, (int)b->mask, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

/* Provide buffers [count, n): one allocation for the lot. */
static int bufs_provide(braid__uring_bufs *b, unsigned n) {
    char *mem = braid_malloc((size_t)(n - b->count) * b->size);
    if (!mem) return BRAID_ENOMEM;
    b->slabs[b->nslabs++] = mem;
    for (unsigned bid = b->count; bid < n; bid++) {
        b->addr[bid] = mem + (size_t)(bid - b->count) * b->size;
        bufs_add(b, bid);
    }
    b->count = n;
    return 0;
}

static void bufs_release(braid__uring_bufs *b) {
    for (unsigned i = 0; i < b->nslabs; i++) braid_free(b->slabs[i]);
    braid_free(b->slabs);
    braid_free(b->addr);
    braid_free(b->off);
    braid_free(b->pins);
    braid_free(b->kdone);
    if (b->br) munmap(b->br, b->ring_bytes);
    braid_free(b);
}

static bool pow2(unsigned v) { return v && !(v & (v - 1)); }

int braid__uring_bufs_new(braid_loop *loop, unsigned count, unsigned max, unsigned size,
                          unsigned flags, braid__uring_bufs **out) {
    *out = NULL;
    if (!is_uring(loop)) return BRAID_ENOSYS;
    if (!pow2(count) || !pow2(max) || count > max || max > 32768 || !size) return BRAID_EINVAL;
    ur_state *s = loop->pstate;
    braid__uring_bufs *b = braid_calloc(1, sizeof *b);
    if (!b) return BRAID_ENOMEM;
    unsigned nslabs = 1;
    for (unsigned c = count; c < max; c *= 2) nslabs++;
    b->addr = braid_calloc(max, sizeof *b->addr);
    b->off = braid_calloc(max, sizeof *b->off);
    b->pins = braid_calloc(max, sizeof *b->pins);
    b->kdone = braid_calloc(max, sizeof *b->kdone);
    b->slabs = braid_calloc(nslabs, sizeof *b->slabs);
    if (!b->addr || !b->off || !b->pins || !b->kdone || !b->slabs) { bufs_release(b); return BRAID_ENOMEM; }
    /* liburing 2.3 has no io_uring_setup_buf_ring: map the (page-aligned)
     * ring ourselves and register it, with room for max entries. */
    long page = sysconf(_SC_PAGESIZE);
    b->ring_bytes = ((size_t)max * sizeof(struct io_uring_buf) + (size_t)page - 1) & ~((size_t)page - 1);
    void *ring = mmap(NULL, b->ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (ring == MAP_FAILED) { bufs_release(b); return BRAID_ENOMEM; }
    b->br = ring;
    io_uring_buf_ring_init(b->br);
    int rc = -EEXIST;
    bool inc = flags & BRAID__BUFS_INC;
    /* Group ids are per ring; skip ones still registered by someone else.
     * A kernel without incremental consumption refuses the flag: again
     * without it. */
    for (unsigned tries = 0; tries < 65536 && (rc == -EEXIST || (rc == -EINVAL && inc)); tries++) {
        if (rc == -EINVAL) inc = false;
        struct io_uring_buf_reg reg = { 0 };
        reg.ring_addr = (uint64_t)(uintptr_t)ring;
        reg.ring_entries = max;
        reg.bgid = s->next_bgid++;
        reg.BUF_REG_FLAGS = inc ? IOU_PBUF_RING_INC : 0;
        rc = io_uring_register_buf_ring(&s->ring, &reg, 0);
        if (rc == 0) b->bgid = reg.bgid;
    }
    if (rc < 0) {
        bufs_release(b);
        return rc == -EINVAL ? BRAID_ENOSYS : rc;
    }
    b->loop = loop;
    b->inc = inc;
    b->max = max;
    b->size = size;
    b->mask = (unsigned)io_uring_buf_ring_mask(max);
    if ((rc = bufs_provide(b, count)) < 0) {
        io_uring_unregister_buf_ring(&s->ring, b->bgid);
        bufs_release(b);
        return rc;
    }
    braid_handle_open(loop, &b->handle, "uring buffer ring");
    *out = b;
    return 0;
}

void braid__uring_bufs_free(braid__uring_bufs *b) {
    if (!b) return;
    ur_state *s = b->loop->pstate;
    io_uring_unregister_buf_ring(&s->ring, b->bgid);
    braid_handle_close(b->loop, &b->handle);
    bufs_release(b);
}

void braid__uring_bufs_internal(braid__uring_bufs *b) { braid_handle_close(b->loop, &b->handle); }
uint16_t braid__uring_bufs_group(const braid__uring_bufs *b) { return b->bgid; }
unsigned braid__uring_bufs_size(const braid__uring_bufs *b) { return b->size; }
unsigned braid__uring_bufs_count(const braid__uring_bufs *b) { return b->count; }
size_t braid__uring_bufs_memory(const braid__uring_bufs *b) { return (size_t)b->count * b->size; }
bool braid__uring_bufs_incremental(const braid__uring_bufs *b) { return b->inc; }

int braid__uring_bufs_grow(braid__uring_bufs *b) {
    if (b->count >= b->max) return 0;
    int rc = bufs_provide(b, b->count * 2);
    return rc < 0 ? rc : 1;
}

void *braid__uring_bufs_get(braid__uring_bufs *b, unsigned bid) {
    return bid < b->count ? b->addr[bid] : NULL;
}

void braid__uring_bufs_recycle(braid__uring_bufs *b, unsigned bid) {
    if (bid < b->count) bufs_add(b, bid);
}

void *braid__uring_bufs_data(braid__uring_bufs *b, unsigned flags) {
    unsigned bid = braid__uring_cqe_bid(flags);
    return bid < b->count ? b->addr[bid] + b->off[bid] : NULL;
}

void braid__uring_bufs_consumed(braid__uring_bufs *b, unsigned flags, int res) {
    unsigned bid = braid__uring_cqe_bid(flags);
    if (bid >= b->count) return;
    if (flags & IORING_CQE_F_BUF_MORE) {
        if (res > 0) b->off[bid] += (uint32_t)res;   /* the kernel goes on filling it */
        return;
    }
    if (b->pins[bid]) b->kdone[bid] = 1;            /* back when the last pin goes */
    else bufs_add(b, bid);
}

bool braid__uring_bufs_pin(braid__uring_bufs *b, unsigned flags) {
    unsigned bid = braid__uring_cqe_bid(flags);
    if (bid >= b->count || b->pins[bid] == UINT16_MAX) return false;
    if (!b->pins[bid]) {
        if (b->pinned * 2 >= b->count) return false;   /* keep half the ring moving */
        b->pinned++;
    }
    b->pins[bid]++;
    return true;
}

void braid__uring_bufs_unpin(braid__uring_bufs *b, unsigned bid) {
    if (bid >= b->count || !b->pins[bid]) return;
    if (--b->pins[bid]) return;
    b->pinned--;
    if (b->kdone[bid]) bufs_add(b, bid);
}

int braid__uring_recv_multishot(braid_loop *loop, braid__uring_op *op, int fd, braid__uring_bufs *b) {
    if (!is_uring(loop) || !braid__uring_have_recv_multishot()) return BRAID_ENOSYS;
    struct io_uring_sqe *sqe = get_sqe(loop->pstate);
    if (!sqe) return BRAID_EAGAIN;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = b->bgid;
    braid__uring_submit(loop, sqe, op);
    return 0;
}

/* Multishot recv (6.0) with a buffer ring (5.19): try it on a socketpair. */
static bool probe_recv_multishot(void) {
    if (!braid__uring_available()) return false;
    struct io_uring ring;
    if (io_uring_queue_init(8, &ring, 0) < 0) return false;
    bool ok = false;
    int sv[2] = { -1, -1 };
    long page = sysconf(_SC_PAGESIZE);
    void *mem = mmap(NULL, (size_t)page, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    char buf[2][16];
    if (mem == MAP_FAILED) goto out;
    struct io_uring_buf_ring *br = mem;
    io_uring_buf_ring_init(br);
    struct io_uring_buf_reg reg = { .ring_addr = (uint64_t)(uintptr_t)mem, .ring_entries = 2, .bgid = 1 };
    if (io_uring_register_buf_ring(&ring, &reg, 0) < 0) goto out;
    for (int i = 0; i < 2; i++) io_uring_buf_ring_add(br, buf[i], sizeof buf[i], (unsigned short)i, 1, i);
    io_uring_buf_ring_advance(br, 2);
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) goto out;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_recv_multishot(sqe, sv[0], NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = 1;
    sqe->user_data = 1;
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = { 1, 0 };
    if (io_uring_submit(&ring) == 1 && write(sv[1], "x", 1) == 1 &&
        io_uring_wait_cqe_timeout(&ring, &cqe, &ts) == 0) {
        ok = cqe->res == 1 && (cqe->flags & IORING_CQE_F_BUFFER) && (cqe->flags & IORING_CQE_F_MORE);
        io_uring_cqe_seen(&ring, cqe);
    }
out:
    io_uring_queue_exit(&ring);     /* cancels the recv, drops the buffer ring */
    if (sv[0] >= 0) { close(sv[0]); close(sv[1]); }
    if (mem != MAP_FAILED) munmap(mem, (size_t)page);
    return ok;
}

bool braid__uring_have_recv_multishot(void) {
    int v = atomic_load_explicit(&probed_recv, memory_order_acquire);
    if (!v) {
        v = probe_recv_multishot() ? 1 : -1;
        atomic_store_explicit(&probed_recv, v, memory_order_release);
    }
    return v > 0;
}
