/* What the net layer publishes for the modules that drive transports
 * closely (internal, never installed): fiber streams (src/fstream/) and the
 * HTTP server (src/http/). Beyond <braid/stream.h>: watermarks and progress
 * as numbers, a flush queued for the ready phase, a close with an absolute
 * deadline, and sendfile(2) for static files. The transport's fields stay
 * private (net/transport_impl.h is for transport kinds). Loop thread. */
#ifndef BRAID_NET_TRANSPORT_EXT_H
#define BRAID_NET_TRANSPORT_EXT_H

#include "loop/loop_module.h"
#include <braid/stream.h>
#include <sys/types.h>

/* The most a transport reads from its kernel object at once. */
#define BRAID__READ_BUF (64u * 1024)

/* t's low and high watermarks (braid_transport_set_limits); either pointer
 * may be NULL. */
void braid__transport_watermarks(const braid_transport *t, size_t *low, size_t *high);
/* Bytes handed to the kernel so far (write progress). */
uint64_t braid__transport_sent_total(const braid_transport *t);
/* Hand the kernel what t's buffer holds, now (what it refuses stays
 * buffered; no callbacks run; nothing from inside a flush or once
 * closed). 0 if t can still be written, else BRAID_ESHUTDOWN (the flush
 * may lose the connection: connection_lost follows). */
int braid__transport_flush_now(braid_transport *t);
/* Queue t's flush in the ready phase (once; no-op when queued or closed).
 * A module that wakes a fiber from the I/O phase queues the flush behind
 * it, so what the fiber writes leaves in the same ready phase. */
void braid__transport_queue_flush(braid_transport *t);
/* Lose the connection (flush, then close) and abort it with BRAID_ETIMEDOUT
 * if it has not closed by `deadline` (absolute, loop clock). An earlier
 * deadline already set wins. braid_transport_close is this with
 * now + timeout. */
void braid__transport_close_at(braid_transport *t, uint64_t deadline);
/* sendfile(2) from in_fd at *off straight to an fd transport's socket.
 * Only while nothing is buffered (bytes must leave in order): returns the
 * bytes sent (> 0, *off advanced), BRAID_ENOSYS for other kinds or a
 * non-empty buffer (write through the buffer instead), BRAID_EAGAIN when
 * the kernel is full (write interest is armed; a registered pull producer
 * is called again once the socket drains), or the error that lost the
 * connection. */
ssize_t braid__transport_sendfile(braid_transport *t, int in_fd, off_t *off, size_t count);

#endif
