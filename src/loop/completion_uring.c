/* The loop's completion service on io_uring (loop/completion.h): operations
 * prepared on SQEs of the io_uring poller's ring (poll/uring.h), their
 * completions delivered to each op's callback, and provided-buffer rings
 * for multishot receives. Built only with liburing; completion_none.c
 * stands in otherwise. */
#ifdef BRAID_HAVE_URING   /* built with liburing only */
#include "loop/completion_uring.h"
#include "loop/loop_internal.h"
#include "poll/uring.h"
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

/* The completion flags are io_uring's CQE flags, passed through. */
_Static_assert(BRAID__COMPLETION_BUFFER == IORING_CQE_F_BUFFER, "flag values");
_Static_assert(BRAID__COMPLETION_MORE == IORING_CQE_F_MORE, "flag values");
_Static_assert(BRAID__COMPLETION_BID_SHIFT == IORING_CQE_BUFFER_SHIFT, "flag values");
#ifdef IORING_CQE_F_BUF_MORE
_Static_assert(BRAID__COMPLETION_BUF_MORE == IORING_CQE_F_BUF_MORE, "flag values");
#endif

enum {
    OP_ACTIVE     = 1u << 0,
    OP_CANCELLING = 1u << 1,
    OP_UNREF      = 1u << 2,
    OP_HELD       = 1u << 3,   /* holds the loop */
    OP_INTERNAL   = 1u << 4,   /* not a handle of its own */
};

static struct io_uring *ring_of(braid_loop *loop) { return loop ? braid__uring_ring(&loop->poller) : NULL; }

bool braid__completion_available(braid_loop *loop) { return ring_of(loop) != NULL; }

/* The poller hands each CQE of an op to its token. */
static void op_complete(braid__poll_token *t, int res, unsigned flags) {
    braid__completion_op *op = braid__container_of(t, braid__completion_op, token);
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

/* ---- operations ------------------------------------------------------------------------- */
void braid__completion_op_init(braid__completion_op *op, braid__completion_cb cb, void *data) {
    memset(op, 0, sizeof *op);
    op->token.complete = op_complete;
    op->cb = cb;
    op->data = data;
}

bool braid__completion_op_active(const braid__completion_op *op) { return op->state & OP_ACTIVE; }
void braid__completion_op_internal(braid__completion_op *op) { op->state |= OP_INTERNAL; }
void braid__completion_op_unref(braid__completion_op *op) {
    op->state |= OP_UNREF;
    if (op->state & OP_HELD) {
        braid_loop_release(op->loop);
        op->state &= ~(unsigned)OP_HELD;
    }
}

struct io_uring *braid__completion_uring_ring(braid_loop *loop) { return ring_of(loop); }

struct io_uring_sqe *braid__completion_uring_sqe(braid_loop *loop) {
    return ring_of(loop) ? braid__uring_sqe(&loop->poller) : NULL;
}

void braid__completion_uring_submit(braid_loop *loop, struct io_uring_sqe *sqe, braid__completion_op *op) {
    if (op->state & OP_ACTIVE) {
        braid__log(loop, BRAID_LOG_ERROR, "braid__completion_uring_submit: op already active");
        abort();
    }
    io_uring_sqe_set_data(sqe, &op->token);
    op->loop = loop;
    op->state = (op->state & (OP_UNREF | OP_INTERNAL)) | OP_ACTIVE;
    if (!(op->state & OP_UNREF)) {
        braid_loop_hold(loop);
        op->state |= OP_HELD;
    }
    if (!(op->state & OP_INTERNAL)) braid_handle_open(loop, &op->handle, "uring op");
}

int braid__completion_send(braid_loop *loop, braid__completion_op *op, int fd, const void *buf,
                           size_t len, int msg_flags) {
    if (!ring_of(loop)) return BRAID_ENOSYS;
    struct io_uring_sqe *sqe = braid__uring_sqe(&loop->poller);
    if (!sqe) return BRAID_EAGAIN;
    io_uring_prep_send(sqe, fd, buf, len, msg_flags);
    braid__completion_uring_submit(loop, sqe, op);
    return 0;
}

int braid__completion_cancel(braid__completion_op *op) {
    if (!(op->state & OP_ACTIVE)) return BRAID_EINVAL;
    if (op->state & OP_CANCELLING) return 0;
    int rc = braid__uring_cancel(&op->loop->poller, &op->token);
    if (rc < 0) return rc;
    op->state |= OP_CANCELLING;
    return 0;
}

int braid__completion_flush(braid_loop *loop) {
    if (!ring_of(loop)) return BRAID_ENOSYS;
    return loop->poller.ops->flush(&loop->poller);
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

struct braid__completion_bufs {
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

static void bufs_add(braid__completion_bufs *b, unsigned bid) {
    b->off[bid] = 0;
    b->kdone[bid] = 0;
    io_uring_buf_ring_add(b->br, b->addr[bid], b->size, (unsigned short)bid, (int)b->mask, 0);
    io_uring_buf_ring_advance(b->br, 1);
}

/* Provide buffers [count, n): one allocation for the lot. */
static int bufs_provide(braid__completion_bufs *b, unsigned n) {
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

static void bufs_release(braid__completion_bufs *b) {
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

int braid__completion_bufs_new(braid_loop *loop, unsigned count, unsigned max, unsigned size,
                               unsigned flags, braid__completion_bufs **out) {
    *out = NULL;
    struct io_uring *ur = ring_of(loop);
    if (!ur) return BRAID_ENOSYS;
    if (!pow2(count) || !pow2(max) || count > max || max > 32768 || !size) return BRAID_EINVAL;
    braid__completion_bufs *b = braid_calloc(1, sizeof *b);
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
    bool inc = flags & BRAID__COMPLETION_BUFS_INC;
    /* Group ids are per ring; skip ones still registered by someone else.
     * A kernel without incremental consumption refuses the flag: again
     * without it. */
    for (unsigned tries = 0; tries < 65536 && (rc == -EEXIST || (rc == -EINVAL && inc)); tries++) {
        if (rc == -EINVAL) inc = false;
        struct io_uring_buf_reg reg = { 0 };
        reg.ring_addr = (uint64_t)(uintptr_t)ring;
        reg.ring_entries = max;
        reg.bgid = braid__uring_buffer_group(&loop->poller);
        reg.BUF_REG_FLAGS = inc ? IOU_PBUF_RING_INC : 0;
        rc = io_uring_register_buf_ring(ur, &reg, 0);
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
        io_uring_unregister_buf_ring(ur, b->bgid);
        bufs_release(b);
        return rc;
    }
    braid_handle_open(loop, &b->handle, "uring buffer ring");
    *out = b;
    return 0;
}

void braid__completion_bufs_free(braid__completion_bufs *b) {
    if (!b) return;
    io_uring_unregister_buf_ring(ring_of(b->loop), b->bgid);
    braid_handle_close(b->loop, &b->handle);
    bufs_release(b);
}

void braid__completion_bufs_internal(braid__completion_bufs *b) { braid_handle_close(b->loop, &b->handle); }
uint16_t braid__completion_bufs_group(const braid__completion_bufs *b) { return b->bgid; }
unsigned braid__completion_bufs_size(const braid__completion_bufs *b) { return b->size; }
unsigned braid__completion_bufs_count(const braid__completion_bufs *b) { return b->count; }
size_t braid__completion_bufs_memory(const braid__completion_bufs *b) { return (size_t)b->count * b->size; }
bool braid__completion_bufs_incremental(const braid__completion_bufs *b) { return b->inc; }

int braid__completion_bufs_grow(braid__completion_bufs *b) {
    if (b->count >= b->max) return 0;
    int rc = bufs_provide(b, b->count * 2);
    return rc < 0 ? rc : 1;
}

void *braid__completion_bufs_get(braid__completion_bufs *b, unsigned bid) {
    return bid < b->count ? b->addr[bid] : NULL;
}

void braid__completion_bufs_recycle(braid__completion_bufs *b, unsigned bid) {
    if (bid < b->count) bufs_add(b, bid);
}

void *braid__completion_bufs_data(braid__completion_bufs *b, unsigned flags) {
    unsigned bid = braid__completion_bid(flags);
    return bid < b->count ? b->addr[bid] + b->off[bid] : NULL;
}

void braid__completion_bufs_consumed(braid__completion_bufs *b, unsigned flags, int res) {
    unsigned bid = braid__completion_bid(flags);
    if (bid >= b->count) return;
    if (flags & BRAID__COMPLETION_BUF_MORE) {
        if (res > 0) b->off[bid] += (uint32_t)res;   /* the kernel goes on filling it */
        return;
    }
    if (b->pins[bid]) b->kdone[bid] = 1;            /* back when the last pin goes */
    else bufs_add(b, bid);
}

bool braid__completion_bufs_pin(braid__completion_bufs *b, unsigned flags) {
    unsigned bid = braid__completion_bid(flags);
    if (bid >= b->count || b->pins[bid] == UINT16_MAX) return false;
    if (!b->pins[bid]) {
        if (b->pinned * 2 >= b->count) return false;   /* keep half the ring moving */
        b->pinned++;
    }
    b->pins[bid]++;
    return true;
}

void braid__completion_bufs_unpin(braid__completion_bufs *b, unsigned bid) {
    if (bid >= b->count || !b->pins[bid]) return;
    if (--b->pins[bid]) return;
    b->pinned--;
    if (b->kdone[bid]) bufs_add(b, bid);
}

int braid__completion_recv_multishot(braid_loop *loop, braid__completion_op *op, int fd,
                                     braid__completion_bufs *b) {
    if (!ring_of(loop) || !braid__completion_have_recv_multishot()) return BRAID_ENOSYS;
    struct io_uring_sqe *sqe = braid__uring_sqe(&loop->poller);
    if (!sqe) return BRAID_EAGAIN;
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = b->bgid;
    braid__completion_uring_submit(loop, sqe, op);
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

static atomic_int probed_recv;      /* 0 unknown, 1 yes, -1 no */

bool braid__completion_have_recv_multishot(void) {
    int v = atomic_load_explicit(&probed_recv, memory_order_acquire);
    if (!v) {
        v = probe_recv_multishot() ? 1 : -1;
        atomic_store_explicit(&probed_recv, v, memory_order_release);
    }
    return v > 0;
}
#endif
