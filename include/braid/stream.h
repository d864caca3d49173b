/* braid/stream.h — stream transports: TCP (v4/v6), Unix sockets, pipes,
 * adopted descriptors, and the in-memory test doubles.
 *
 * A transport carries bytes for one protocol (<braid/protocol.h>). Writes are
 * buffered and flow-controlled by default: several writes in one loop
 * iteration leave in one system call (writes made while handling one read
 * are flushed together as soon as the protocol returns; any others in the
 * ready phase, or when the socket becomes writable again; a write of 16 KiB
 * or more into an empty buffer is sent at once, uncopied; a buffer that
 * passes the high watermark is handed to the kernel at once, from inside the
 * write); a registered producer is paused when what the kernel refused
 * reaches the high watermark (64 KiB) and resumed at the low one (16 KiB) —
 * the watermark callbacks of libevent and libuv (see docs/stream.md for the
 * slow-consumer recipe); a buffer beyond the hard cap (4 MiB) aborts the
 * connection with BRAID_EBUFFER_LIMIT, so a peer that never reads cannot
 * grow memory without bound. Reads go through one path that hands the protocol a buffer lent for
 * the call (a per-loop 64 KiB read buffer: idle connections hold no read
 * memory). On the io_uring backend TCP transports can run on completions
 * instead of readiness (the default; BRAID_STREAM_COMPLETIONS=0 turns it off): a
 * multishot recv into a per-loop provided-buffer ring sized to use (the
 * protocol gets the ring buffer itself) and send SQEs that leave with the
 * loop's next wait — no read()/send() system call per message (see
 * docs/stream.md).
 *
 * Listening and connecting go through <braid/endpoint.h> (an endpoint string
 * or its typed braid_endpoint), for every kind of transport:
 *
 *     // server: the Deferred has fired with the listener when this returns
 *     braid_deferred_then(braid_endpoint_listen(loop, "tcp:8000:interface=127.0.0.1", &factory),
 *                         listening, failed, ctx);
 *     ...
 *     braid_listener_close(l);
 *     // client: a Deferred of the connected protocol (borrowed pointer)
 *     braid_deferred_then(braid_endpoint_connect(loop, "tcp:127.0.0.1:8000:timeout=5", &factory),
 *                         connected, failed, ctx);
 *
 * Ownership: braid owns transports. A transport lives from connection_made
 * until its protocol's connection_lost has returned; then braid frees it (and
 * the protocol, see protocol.h). Listeners are owned by the caller until
 * braid_listener_close. Every open transport and listener is a loop handle
 * (the leak gate names it). Everything is loop-thread only, except host name
 * resolution, which runs on a pool thread (the loop's resolver pool, see
 * braid_resolver_set_pool) and reports back to the loop.
 */
#ifndef BRAID_STREAM_H
#define BRAID_STREAM_H

#include <braid/protocol.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- the transport (ITransport, ITCPTransport, IHalfCloseableDescriptor) ---- */
/* Queue bytes. 0, or: BRAID_ESHUTDOWN after close/shutdown_write
 * (nothing queued), BRAID_EBUFFER_LIMIT if this write passed the hard cap (the
 * connection is being aborted), BRAID_ENOMEM. */
BRAID_API int braid_transport_write(braid_transport *t, const void *buf, size_t len);
BRAID_API int braid_transport_writev(braid_transport *t, const struct iovec *iov, int iovcnt);
/* The graceful close: flush what is buffered, then close
 * (connection_lost(BRAID_ECONNECTION_DONE)); if the connection has not
 * closed timeout later on the loop clock (the peer did not read what was
 * buffered), abort it — the rest of the buffer is dropped, a TCP peer gets
 * RST, and connection_lost receives BRAID_ETIMEDOUT ("close deadline passed
 * with N bytes unsent"). A peer that reads in time gets the usual clean
 * close. Escalation, in order: flush → deadline → abort. Calling it again
 * only ever moves the deadline earlier; BRAID_FOREVER waits for the flush as
 * long as the peer likes (a peer that never reads then keeps the connection,
 * and the loop, alive: give servers a real timeout); 0 aborts in the next
 * timer phase unless the close completed first. Works on every kind; a TLS
 * transport passes its deadline down to the transport under it
 * (close_notify and the last records get the rest of the time, then that
 * one is aborted too). Servers shutting down: close the listener, close
 * every connection with a timeout, run the loop dry. */
BRAID_API void braid_transport_close(braid_transport *t, uint64_t timeout);
/* Close now, dropping the buffer: connection_lost(BRAID_ECONNECTION_LOST). */
BRAID_API void braid_transport_abort(braid_transport *t);
/* Abort with a reason of your own (e.g. a framing error such as
 * BRAID_EMSGSIZE): connection_lost receives that code. */
BRAID_API void braid_transport_abort_with(braid_transport *t, int code);
/* Half-close: flush, then shut the write side (FIN); write_connection_lost follows. */
BRAID_API int braid_transport_shutdown_write(braid_transport *t);
BRAID_API int braid_transport_peer(braid_transport *t, braid_address *out);
BRAID_API int braid_transport_host(braid_transport *t, braid_address *out);
/* TCP only (BRAID_ENOSYS otherwise). TCP transports start with NODELAY on. */
BRAID_API int braid_transport_set_nodelay(braid_transport *t, bool on);
BRAID_API int braid_transport_set_keepalive(braid_transport *t, bool on, int idle_seconds);
/* Stop / restart delivering data_received (the transport as a push producer). */
BRAID_API void braid_transport_pause_reading(braid_transport *t);
BRAID_API void braid_transport_resume_reading(braid_transport *t);
/* The transport's loop, its protocol, its kind ("tcp", "unix", "pipe", "memory"). */
BRAID_API braid_loop *braid_transport_loop(const braid_transport *t);
BRAID_API const char *braid_transport_kind(const braid_transport *t);

/* Flow control: watermarks and the hard cap, in bytes (0 keeps the current value).
 * low <= high <= cap, else BRAID_EINVAL. A reader that keeps up never holds
 * more than about high + the largest single write (on io_uring completions,
 * plus what one iteration writes while a send is in flight): keep the cap
 * well above that — docs/stream.md, "Broadcasting". Watermark callbacks: a
 * streaming producer (register_producer) is paused at high, resumed at low. */
BRAID_API int braid_transport_set_limits(braid_transport *t, size_t low, size_t high, size_t cap);
/* Bytes queued and not yet accepted by the kernel (or the memory peer). */
BRAID_API size_t braid_transport_buffered(const braid_transport *t);

/* Consumer side: one producer at a time (BRAID_EBUSY if one is registered). */
BRAID_API int braid_transport_register_producer(braid_transport *t, braid_producer *p,
                                                bool streaming);
BRAID_API void braid_transport_unregister_producer(braid_transport *t);
/* The transport as a push producer of what it reads (pause = pause_reading);
 * its stop_producing loses the connection. Valid while t lives. */
BRAID_API braid_producer *braid_transport_producer(braid_transport *t);

/* Unix transports: queue buf (len >= 1) with descriptors attached to its
 * first byte (SCM_RIGHTS), after everything already queued. The fds are
 * dup'ed (the caller keeps its own). At most 16 per call. BRAID_ENOSYS on
 * other kinds. The receiver gets fds_received just before that byte's
 * data_received. */
BRAID_API int braid_transport_send_fds(braid_transport *t, const int *fds, int n,
                                       const void *buf, size_t len);

/* ---- listeners ------------------------------------------------------------------ */
/* What braid_endpoint_listen / _listen_typed (<braid/endpoint.h>) make:
 * yours until braid_listener_close. */
typedef struct braid_listener braid_listener;

BRAID_API int braid_listener_address(const braid_listener *l, braid_address *out);
/* Stop listening, close the socket (and unlink a Unix path we created), free.
 * Accepted connections live on. */
BRAID_API void braid_listener_close(braid_listener *l);
/* Stats: accepted so far, and times the EMFILE back-off engaged. */
BRAID_API uint64_t braid_listener_accepted(const braid_listener *l);
BRAID_API uint64_t braid_listener_emfile_events(const braid_listener *l);
/* Accept with wake-one: when the same listening socket is watched by several
 * loops (threads, or processes that inherited it), a new connection wakes
 * one loop instead of all of them (BRAID_WATCH_EXCLUSIVE: EPOLLEXCLUSIVE on the
 * epoll backend; the other backends wake every loop, and all but one find
 * nothing to accept). 0 or a negative code from the poller. */
BRAID_API int braid_listener_set_exclusive(braid_listener *l, bool on);
/* EMFILE back-off: after running out of descriptors the listener stops
 * accepting for this long (doubling to 1 s while it persists). Default 50 ms. */
BRAID_API void braid_listener_set_backoff(braid_listener *l, uint64_t backoff);

/* ---- adopting descriptors ---------------------------------------------------------- */
/* Wrap a connected descriptor made elsewhere (a socketpair, a parent's socket,
 * a pipe): braid takes ownership, sets O_NONBLOCK, and attaches p
 * (connection_made runs before this returns). The kind ("tcp", "unix" or
 * "pipe", see braid_transport_kind) is detected from the descriptor. */
BRAID_API int braid_transport_adopt(braid_loop *loop, int fd, braid_protocol *p);
/* A pipe pair (or stdin/stdout): reads from rfd, writes to wfd (either may be
 * -1). shutdown_write closes wfd. Ownership of both is taken; for stdio pass
 * dup(0), dup(1) if the process should keep its own. */
BRAID_API int braid_transport_adopt_pipes(braid_loop *loop, int rfd, int wfd, braid_protocol *p);

/* ---- name resolution --------------------------------------------------------------------- */
/* braid resolves host names (getaddrinfo, for connects and endpoints) in a
 * pool, so a slow DNS server neither blocks the loop nor starves other work.
 * By default a loop makes a small pool of its own for that on first use (up
 * to 4 threads, never spinning) and destroys it with the loop. Call this
 * (loop thread) to run lookups in class cls of one of your pools instead —
 * typically a class with a small max_running; the pool must outlive the
 * lookups. A loop-made pool in use before is destroyed (FINISH: lookups
 * already queued there still complete). */
struct braid_pool;
BRAID_API int braid_resolver_set_pool(braid_loop *loop, struct braid_pool *pool, int cls);

/* ---- test doubles (Twisted's StringTransport and iosim) ---------------------------- */
/* A memory transport attached to p (connection_made runs before this returns).
 * Written bytes stay queued (counting against the watermarks, pausing the
 * producer) until the test consumes them, as a peer would read them. 0 and
 * *out (yours: braid_memory_transport_free), or BRAID_ENOMEM. */
typedef struct braid_memory_transport braid_memory_transport;
BRAID_API int braid_memory_transport_new(braid_loop *loop, braid_protocol *p,
                                         braid_memory_transport **out);
BRAID_API braid_transport *braid_memory_transport_base(braid_memory_transport *m);
/* The bytes written and not yet consumed (pointer valid until the next call). */
BRAID_API const void *braid_memory_transport_data(braid_memory_transport *m, size_t *len);
/* The peer reads n bytes (n > queued = all): watermarks, pending close and
 * pending shutdown_write progress as with a real socket. */
BRAID_API void braid_memory_transport_consume(braid_memory_transport *m, size_t n);
/* Deliver bytes / EOF / loss from the fake peer to the protocol. receive
 * returns BRAID_EAGAIN (nothing delivered) while reading is paused. */
BRAID_API int braid_memory_transport_receive(braid_memory_transport *m, const void *buf, size_t len);
BRAID_API void braid_memory_transport_peer_eof(braid_memory_transport *m);
BRAID_API void braid_memory_transport_peer_lost(braid_memory_transport *m, int code);

struct braid_memory_transport_state {
    bool disconnecting;        /* close called, buffer not yet drained */
    bool write_shut;           /* shutdown_write completed */
    bool read_shut;            /* peer EOF delivered */
    bool closed;               /* connection over (connection_lost queued or done) */
    bool lost_delivered;       /* connection_lost has run */
    bool aborted;
    bool reading_paused;
    bool producer_registered, producer_streaming, producer_paused;
    int lost_code;
    uint64_t bytes_written;    /* total accepted by write/writev */
};
/* A snapshot of m's state into *out (like stat(2): the struct and the
 * function share the name). */
BRAID_API void braid_memory_transport_state(const braid_memory_transport *m,
                                            struct braid_memory_transport_state *out);
/* Free the double (after connection_lost, or aborting first if still open). */
BRAID_API void braid_memory_transport_free(braid_memory_transport *m);

/* The pump (iosim): two protocols connected in memory. flush moves bytes,
 * half-closes and closes across until nothing moves (running the loop's ready
 * phase so connection_lost is delivered), honouring pause_reading. 0 and
 * *out (yours: braid_pump_free), or BRAID_ENOMEM. */
typedef struct braid_pump braid_pump;
BRAID_API int braid_pump_new(braid_loop *loop, braid_protocol *client, braid_protocol *server,
                             braid_pump **out);
/* Returns the bytes moved. */
BRAID_API size_t braid_pump_flush(braid_pump *pump);
BRAID_API braid_memory_transport *braid_pump_client(braid_pump *pump);
BRAID_API braid_memory_transport *braid_pump_server(braid_pump *pump);
BRAID_API void braid_pump_free(braid_pump *pump);

#ifdef __cplusplus
}
#endif
#endif
