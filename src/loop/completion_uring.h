/* The completion service's io_uring specifics (internal, never installed):
 * for an operation loop/completion.h does not offer yet, prepare any
 * io_uring request on an SQE of the loop's ring and submit it as an op. The
 * tests of the io_uring backend use it; a transport uses loop/completion.h.
 *
 *     braid__completion_op op;
 *     braid__completion_op_init(&op, on_done, ctx);
 *     struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
 *     if (!sqe) return BRAID_ENOSYS;               // not an io_uring loop
 *     io_uring_prep_timeout(sqe, &ts, 0, 0);
 *     braid__completion_uring_submit(loop, sqe, &op);
 *
 * Ops submitted this way follow loop/completion.h's rules (one final
 * completion, cancel, unref, the leak gate). Loop thread only. */
#ifndef BRAID_LOOP_COMPLETION_URING_H
#define BRAID_LOOP_COMPLETION_URING_H

#include "loop/completion.h"
#include <liburing.h>

/* The loop's ring, or NULL if the loop does not run on io_uring. */
struct io_uring *braid__completion_uring_ring(braid_loop *loop);
/* An SQE of the loop's ring (submitting what is queued if the SQ is full),
 * or NULL (not an io_uring loop, or the kernel refused the submission).
 * Prepare it and pass it to braid__completion_uring_submit before anything
 * else touches the ring. */
struct io_uring_sqe *braid__completion_uring_sqe(braid_loop *loop);
/* Attach op to a prepared sqe (sets its user_data): op's callback receives
 * each of its CQEs. The SQE goes to the kernel with the next wait. */
void braid__completion_uring_submit(braid_loop *loop, struct io_uring_sqe *sqe, braid__completion_op *op);
/* The buffer group id of b (a raw SQE's buf_group). */
uint16_t braid__completion_bufs_group(const braid__completion_bufs *b);

#endif
