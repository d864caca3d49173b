/* The io_uring poller's ring, published by the poll layer for the loop's
 * io_uring completion service (src/loop/completion_uring.c) and for nothing
 * else (never installed).
 *
 * The poller (poll/uring.c) owns the ring and waits on it; the completion
 * service prepares its operations on SQEs of the same ring, so one
 * io_uring_enter per iteration carries both. The ring's user_data space is
 * the poller's: bit 63 set marks its readiness requests, values below 4096
 * its own removals, updates and the cancellations it sends for the service;
 * anything else must be a braid__poll_token *, whose complete() the poller
 * calls for each CQE of that request, during its poll. */
#ifndef BRAID_POLL_URING_H
#define BRAID_POLL_URING_H

#include "poll/poller.h"
#include <liburing.h>

extern const braid__poller_ops braid__poller_uring;

/* Is io_uring usable on this kernel (probed once per process)? */
bool braid__uring_available(void);
/* p's ring, or NULL if p is not the io_uring poller. */
struct io_uring *braid__uring_ring(braid__poller *p);
/* An SQE of p's ring (an io_uring poller), submitting what is queued when
 * the SQ is full; NULL if the kernel refused that submission. Prepare it and
 * set its user_data to a token before anything else touches the ring. */
struct io_uring_sqe *braid__uring_sqe(braid__poller *p);
/* Ask the kernel to cancel the request whose user_data is t; t still
 * receives that request's final CQE. 0, or BRAID_EAGAIN if no SQE. */
int braid__uring_cancel(braid__poller *p, braid__poll_token *t);
/* A buffer group id for a provided-buffer ring registered on p's ring (the
 * next one; the caller skips ids the kernel says are taken). */
uint16_t braid__uring_buffer_group(braid__poller *p);

#endif
