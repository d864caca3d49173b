/* The loop's completion service (internal, never installed), published by
 * the loop layer for the transports of the net layer (src/net/).
 *
 * Readiness says "you may read now"; a completion says "this read is done".
 * On a loop whose poller is completion-based (io_uring) a transport can
 * submit operations — a send, a multishot receive that picks buffers from a
 * ring of provided buffers — and be called back when they complete, during
 * the loop's poll phase (before the readiness callbacks of the same
 * iteration). On every other loop, and in a build without liburing, the
 * service is absent: braid__completion_available is false and every call
 * returns BRAID_ENOSYS, so a transport keeps to readiness.
 *
 *     braid__completion_op op;
 *     braid__completion_op_init(&op, on_sent, conn);
 *     int rc = braid__completion_send(loop, &op, fd, buf, len, MSG_NOSIGNAL);
 *     // BRAID_ENOSYS: no completion service on this loop
 *     ...
 *     static void on_sent(braid__completion_op *op, int res, unsigned flags) {
 *         // res: bytes or -errno; flags & BRAID__COMPLETION_MORE: more follow
 *     }
 *
 * An operation's life (libuv's "request" rule): once submitted, it
 * completes exactly once with a final completion (one without
 * BRAID__COMPLETION_MORE), whatever happens — -ECANCELED after
 * braid__completion_cancel included. The op's memory stays valid until that
 * final callback, which may then free or resubmit it. Closing the fd does
 * not cancel an operation (the kernel holds its own reference to the file):
 * an owner that closes cancels its ops first and frees them only from their
 * final callback.
 *
 * While active an op keeps braid_loop_run() going (unless
 * braid__completion_op_unref) and is an open handle for the leak gate
 * ("uring op"; braid__completion_op_internal for an op whose owner is a
 * handle itself). Submissions are batched: they reach the kernel with the
 * loop's next wait (braid__completion_flush: now).
 *
 * Provided buffers (io_uring's provided-buffer rings, kernel 5.19): a
 * multishot receive picks a buffer of a braid__completion_bufs ring for each
 * chunk it delivers. A completion with BRAID__COMPLETION_BUFFER names the
 * buffer (braid__completion_bid(flags)); its data is at
 * braid__completion_bufs_data(), and braid__completion_bufs_consumed() must
 * follow once the data has been used: it gives the buffer back when the
 * kernel is done with it. With incremental consumption
 * (BRAID__COMPLETION_BUFS_INC, kernel 6.12) a receive takes only the bytes
 * it needs from the head buffer, so small receives of many connections
 * share one large buffer; BRAID__COMPLETION_BUF_MORE says the kernel goes on
 * filling that buffer (the next chunk starts where this one ended —
 * braid__completion_bufs_data tracks it). A consumer that keeps a chunk past
 * its callback (a paused reader) pins it; the buffer goes back when both
 * are done with it.
 *
 * The flag values are io_uring's CQE flags (checked at compile time in
 * completion_uring.c). Everything here is loop-thread only. */
#ifndef BRAID_LOOP_COMPLETION_H
#define BRAID_LOOP_COMPLETION_H

#include "poll/poller.h"
#include <braid/loop.h>
#include <sys/types.h>

/* Completion flags (the callback's flags). */
#define BRAID__COMPLETION_BUFFER   (1u << 0)   /* res bytes in a provided buffer */
#define BRAID__COMPLETION_MORE     (1u << 1)   /* more completions of this op follow */
#define BRAID__COMPLETION_BUF_MORE (1u << 4)   /* the kernel goes on filling that buffer */
#define BRAID__COMPLETION_BID_SHIFT 16
/* The buffer id a completion with BRAID__COMPLETION_BUFFER names. */
static inline unsigned braid__completion_bid(unsigned flags) {
    return flags >> BRAID__COMPLETION_BID_SHIFT;
}

typedef struct braid__completion_op braid__completion_op;
/* res: the result (>= 0, or -errno); flags: BRAID__COMPLETION_*. */
typedef void (*braid__completion_cb)(braid__completion_op *op, int res, unsigned flags);

struct braid__completion_op {
    braid__poll_token token;     /* private: what the poller completes */
    braid__completion_cb cb;
    void *data;                  /* the owner's pointer, untouched by braid */
    /* private */
    braid_loop *loop;
    unsigned state;
    braid_handle handle;
};

/* Does this loop have a completion service (an io_uring loop)? */
bool braid__completion_available(braid_loop *loop);

/* Prepare caller storage (no allocation). */
void braid__completion_op_init(braid__completion_op *op, braid__completion_cb cb, void *data);
/* Is op submitted and its final completion not yet delivered? */
bool braid__completion_op_active(const braid__completion_op *op);
/* Do not keep braid_loop_run() alive for this op (before or after submitting). */
void braid__completion_op_unref(braid__completion_op *op);
/* Not an open handle of its own for the leak gate: its owner is one (set
 * before submitting; it stays set for later submissions). */
void braid__completion_op_internal(braid__completion_op *op);

/* send(2) of buf[0, len) on fd; buf must stay valid (and unmoved) until the
 * final completion. 0 (submitted), BRAID_ENOSYS, BRAID_EAGAIN (no SQE). */
int braid__completion_send(braid_loop *loop, braid__completion_op *op, int fd, const void *buf,
                           size_t len, int msg_flags);
/* Ask the kernel to cancel op. Its callback still receives a final
 * completion (usually -ECANCELED; the real result if it completed first). 0
 * if queued or already cancelling, BRAID_EINVAL if op is not active,
 * BRAID_EAGAIN if no SQE. */
int braid__completion_cancel(braid__completion_op *op);
/* Hand what is queued to the kernel now rather than with the next wait. */
int braid__completion_flush(braid_loop *loop);

/* ---- provided buffers and multishot receive ----------------------------------------- */
typedef struct braid__completion_bufs braid__completion_bufs;
enum { BRAID__COMPLETION_BUFS_INC = 1u << 0 };   /* ask for incremental consumption */
/* A ring of count buffers of size bytes at first, growable to max (count <=
 * max, both powers of two, max <= 32768). flags: BRAID__COMPLETION_BUFS_INC.
 * BRAID_ENOSYS without a completion service or kernel support (5.19). An
 * open handle ("uring buffer ring") unless braid__completion_bufs_internal. */
int braid__completion_bufs_new(braid_loop *loop, unsigned count, unsigned max, unsigned size,
                               unsigned flags, braid__completion_bufs **out);
/* Unregister and free. Cancel the receives that use it first (and wait for
 * their final completions). */
void braid__completion_bufs_free(braid__completion_bufs *b);
/* Module state of the loop (freed by its owner's key), not an open handle. */
void braid__completion_bufs_internal(braid__completion_bufs *b);
unsigned braid__completion_bufs_size(const braid__completion_bufs *b);
/* Buffers provided so far, and the bytes they take. */
unsigned braid__completion_bufs_count(const braid__completion_bufs *b);
size_t braid__completion_bufs_memory(const braid__completion_bufs *b);
/* Is the ring consumed incrementally (asked for, and the kernel has it)? */
bool braid__completion_bufs_incremental(const braid__completion_bufs *b);
/* Double the buffers (up to max): 1 if it grew, 0 if already at max,
 * BRAID_ENOMEM. */
int braid__completion_bufs_grow(braid__completion_bufs *b);
/* The data of a completion with BRAID__COMPLETION_BUFFER (its flags). */
void *braid__completion_bufs_data(braid__completion_bufs *b, unsigned flags);
/* The completion's data (res bytes, 0 if none) has been used: advance
 * within the buffer, and give it back unless BRAID__COMPLETION_BUF_MORE. */
void braid__completion_bufs_consumed(braid__completion_bufs *b, unsigned flags, int res);
/* Keep a completion's chunk beyond its callback (call before consumed): the
 * buffer goes back only after braid__completion_bufs_unpin(bid). false
 * (copy the data instead) when pinned buffers already fill half the ring:
 * the other half stays for the receives that must go on. */
bool braid__completion_bufs_pin(braid__completion_bufs *b, unsigned flags);
void braid__completion_bufs_unpin(braid__completion_bufs *b, unsigned bid);
/* Lower level (non-incremental rings): the memory of buffer bid, and give it
 * back to the kernel. */
void *braid__completion_bufs_get(braid__completion_bufs *b, unsigned bid);
void braid__completion_bufs_recycle(braid__completion_bufs *b, unsigned bid);

/* A multishot receive on fd picking buffers from b: each completion is one
 * chunk (res bytes in buffer braid__completion_bid(flags)); res == 0 is EOF;
 * the final completion (no BRAID__COMPLETION_MORE) ends it. BRAID_ENOSYS
 * without kernel support (6.0). */
int braid__completion_recv_multishot(braid_loop *loop, braid__completion_op *op, int fd,
                                     braid__completion_bufs *b);
/* Does this kernel do multishot receives into provided buffers (probed once
 * per process)? false in a build without io_uring. */
bool braid__completion_have_recv_multishot(void);

#endif
