/* io_uring completions for braid's transports (internal, never installed).
 *
 * When a loop runs on the io_uring backend, readiness for fd watchers comes
 * from multishot poll requests (src/poll/uring.c), and the same ring also
 * carries completion-based operations: a transport takes an SQE from the
 * loop's ring, prepares any io_uring operation on it, and hands it to
 * braid__uring_submit() with a braid__uring_op. Every CQE of that operation
 * calls the op's callback on the loop thread, during the loop's poll phase
 * (before the readiness callbacks of the same iteration), with the CQE's
 * result and flags.
 *
 *     braid__uring_op op;
 *     braid__uring_op_init(&op, on_recv, conn);
 *     struct io_uring_sqe *sqe = braid__uring_sqe(loop);
 *     if (!sqe) return BRAID_ENOSYS;                 // not an io_uring loop
 *     io_uring_prep_recv(sqe, fd, buf, len, 0);
 *     braid__uring_submit(loop, sqe, &op);           // queued; sent with the next wait
 *     ...
 *     static void on_recv(braid__uring_op *op, int res, unsigned flags) {
 *         // res: bytes or -errno; flags & IORING_CQE_F_MORE: more CQEs follow
 *     }
 *
 * A request's life (libuv's "request" rule): once submitted, an op completes
 * exactly once with a final CQE (one without IORING_CQE_F_MORE), whatever
 * happens — including -ECANCELED after braid__uring_cancel(). The op's memory
 * must stay valid until that final callback; the callback may then free or
 * resubmit it. Closing the fd does NOT cancel an operation (the kernel holds
 * its own file reference), so an owner that closes must cancel its ops first
 * and free them only from their final callback.
 *
 * While active, an op keeps braid_loop_run() going (like a watcher with
 * interest, unless braid__uring_op_unref) and is an open handle for the leak
 * gate ("uring op"). Submission is batched: SQEs are handed to the kernel
 * together with the loop's next wait (one io_uring_enter per iteration);
 * braid__uring_flush() submits at once.
 *
 * Provided-buffer rings (kernel 5.19) let multishot receives pick buffers
 * themselves: braid__uring_bufs_new() registers a ring that starts with
 * `count` buffers of `size` bytes and can grow to `max` (braid__uring_bufs_grow,
 * e.g. when a receive ended with -ENOBUFS: the ring ran dry). A CQE carrying
 * IORING_CQE_F_BUFFER names the buffer (braid__uring_cqe_bid); its data is at
 * braid__uring_bufs_data(), and braid__uring_bufs_consumed() must follow once
 * the data has been used: it gives the buffer back to the kernel when the
 * kernel is done with it.
 *
 * Incremental consumption (BRAID__BUFS_INC, kernel 6.12: IOU_PBUF_RING_INC):
 * a receive takes only the bytes it needs from the head buffer, so sixteen
 * bytes from each of a thousand connections share one large buffer instead
 * of taking a thousand; a CQE with IORING_CQE_F_BUF_MORE says the kernel will
 * go on filling that buffer (the next chunk starts where this one ended —
 * braid__uring_bufs_data tracks it). Without kernel support the ring is
 * made without it (braid__uring_bufs_incremental says which); the same
 * data/consumed calls work for both. A consumer that must keep a chunk past
 * its callback (a paused reader) pins it; the buffer returns to the kernel
 * when both are done with it.
 *
 * All of this is loop-thread only. Functions return BRAID_ENOSYS on a loop
 * that is not using io_uring, or when the kernel lacks the feature.
 */
#ifndef BRAID_POLL_URING_H
#define BRAID_POLL_URING_H

#include "internal.h"
#include <liburing.h>

typedef struct braid__uring_op braid__uring_op;
/* res: the CQE's result (>= 0, or -errno); flags: the CQE's flags
 * (IORING_CQE_F_MORE, IORING_CQE_F_BUFFER, ...). */
typedef void (*braid__uring_cb)(braid__uring_op *op, int res, unsigned flags);

struct braid__uring_op {
    braid__uring_cb cb;
    void *data;              /* the owner's pointer, untouched by braid */
    /* private */
    braid_loop *loop;
    unsigned state;
    braid_handle handle;
};

/* Prepare caller storage (no allocation). */
void braid__uring_op_init(braid__uring_op *op, braid__uring_cb cb, void *data);
/* Is op submitted and its final CQE not yet delivered? */
bool braid__uring_op_active(const braid__uring_op *op);
/* Do not keep braid_loop_run() alive for this op (set before submitting). */
void braid__uring_op_unref(braid__uring_op *op);

/* The loop's ring, or NULL if the loop does not run on io_uring. */
struct io_uring *braid__uring_ring(braid_loop *loop);
/* An SQE of the loop's ring (submitting what is queued if the SQ is full),
 * or NULL (not an io_uring loop, or the kernel refused the submission). The
 * caller must prepare it and pass it to braid__uring_submit before anything
 * else touches the ring. */
struct io_uring_sqe *braid__uring_sqe(braid_loop *loop);
/* Attach op to a prepared sqe (sets its user_data): op's callback receives
 * each of its CQEs. The SQE goes to the kernel with the next wait. */
void braid__uring_submit(braid_loop *loop, struct io_uring_sqe *sqe, braid__uring_op *op);
/* Ask the kernel to cancel op. Its callback still receives a final CQE
 * (usually -ECANCELED; the real result if it completed first). 0 if queued or
 * already cancelling, BRAID_EINVAL if op is not active, BRAID_EAGAIN if no SQE. */
int braid__uring_cancel(braid__uring_op *op);
/* Submit what is queued now rather than with the next wait. */
int braid__uring_flush(braid_loop *loop);

/* ---- provided-buffer rings and multishot receive ------------------------------ */
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)   /* kernel 6.12; liburing < 2.8 lacks the name */
#endif
typedef struct braid__uring_bufs braid__uring_bufs;
enum { BRAID__BUFS_INC = 1u << 0 };   /* ask for incremental consumption */
/* Register a ring holding count buffers of size bytes at first, growable to
 * max (count <= max, both powers of two, max <= 32768). flags:
 * BRAID__BUFS_INC. BRAID_ENOSYS without kernel support (5.19). */
int braid__uring_bufs_new(braid_loop *loop, unsigned count, unsigned max, unsigned size,
                          unsigned flags, braid__uring_bufs **out);
/* Unregister and free. Cancel the receives that use it first (and wait for
 * their final CQE). */
void braid__uring_bufs_free(braid__uring_bufs *b);
/* The ring is loop-internal state (freed from a slot destructor), not an
 * open handle for the leak gate. */
void braid__uring_bufs_internal(braid__uring_bufs *b);
uint16_t braid__uring_bufs_group(const braid__uring_bufs *b);
unsigned braid__uring_bufs_size(const braid__uring_bufs *b);
/* Buffers provided so far, and the bytes they take. */
unsigned braid__uring_bufs_count(const braid__uring_bufs *b);
size_t braid__uring_bufs_memory(const braid__uring_bufs *b);
/* Is the ring consumed incrementally (asked for, and the kernel has it)? */
bool braid__uring_bufs_incremental(const braid__uring_bufs *b);
/* Double the buffers (up to max): 1 if it grew, 0 if already at max,
 * BRAID_ENOMEM. */
int braid__uring_bufs_grow(braid__uring_bufs *b);
/* The data of a CQE with IORING_CQE_F_BUFFER (flags are the CQE's). */
void *braid__uring_bufs_data(braid__uring_bufs *b, unsigned flags);
/* The CQE's data (res bytes, 0 if none) has been used: advance within the
 * buffer, and give it back to the kernel unless IORING_CQE_F_BUF_MORE. */
void braid__uring_bufs_consumed(braid__uring_bufs *b, unsigned flags, int res);
/* Keep a CQE's chunk beyond its callback (call before consumed): the buffer
 * goes back to the kernel only after braid__uring_bufs_unpin(bid). false
 * (copy the data instead) when pinned buffers already fill half the ring:
 * the other half stays for the receives that must go on. */
bool braid__uring_bufs_pin(braid__uring_bufs *b, unsigned flags);
void braid__uring_bufs_unpin(braid__uring_bufs *b, unsigned bid);
/* Lower level (non-incremental rings): the memory of buffer bid, and give it
 * back to the kernel. */
void *braid__uring_bufs_get(braid__uring_bufs *b, unsigned bid);
void braid__uring_bufs_recycle(braid__uring_bufs *b, unsigned bid);

static inline unsigned braid__uring_cqe_bid(unsigned flags) {
    return flags >> IORING_CQE_BUFFER_SHIFT;
}

/* A multishot recv on fd picking buffers from b: each CQE is one chunk
 * (res bytes in buffer braid__uring_cqe_bid(flags)); res == 0 is EOF; the
 * final CQE (no IORING_CQE_F_MORE) ends it. BRAID_ENOSYS without kernel
 * support (6.0). */
int braid__uring_recv_multishot(braid_loop *loop, braid__uring_op *op, int fd, braid__uring_bufs *b);
/* Does this kernel do multishot recv with provided-buffer rings? (probed once) */
bool braid__uring_have_recv_multishot(void);

#endif
