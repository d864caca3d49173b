/* braid/fstream.h — fiber streams: a transport read and written in
 * straight-line code by a fiber (<braid/fiber.h>).
 *
 * A braid_fstream is a protocol that buffers what its transport reads so a
 * fiber can read it in straight-line code, and a writer that waits for the
 * transport's buffer to drain. It works over every stream transport (TCP,
 * Unix, pipes, the memory transport and the pump).
 *
 *     static int echo_lines(braid_fstream *s, void *arg) {      // one fiber per connection
 *         char line[1024];
 *         for (;;) {
 *             ssize_t n = braid_fstream_read_line(s, line, sizeof line, '\n', BRAID_SECONDS(30));
 *             if (n <= 0) return (int)n;          // 0: the peer closed; < 0: why not
 *             int rc = braid_fstream_write(s, line, (size_t)n, BRAID_SECONDS(30));
 *             if (rc < 0) return rc;
 *         }
 *     }
 *     braid_fstream_factory ff;
 *     braid_fstream_factory_init(loop, &ff, echo_lines, NULL, NULL);
 *     braid_endpoint_listen(loop, "tcp:8000:interface=127.0.0.1", &ff.base);
 *
 * Timeouts: every call that can wait takes timeout on the loop's clock
 * (a fake clock works), for the whole call however many chunks it takes;
 * BRAID_FOREVER waits without a bound, 0 only takes what is already there.
 * A call that times out returns BRAID_ETIMEDOUT; what it would have read is
 * left buffered (nothing is consumed by a failed read), so it can be retried.
 *
 * Errors (negative return values; nothing is consumed on failure):
 *   BRAID_ETIMEDOUT     the timeout passed;
 *   BRAID_ECANCELED     the calling fiber was cancelled while (or before) waiting;
 *   BRAID_EEOF          the peer closed its side before the requested bytes or
 *                       line arrived (read_exactly; read_some/read_line
 *                       return 0 at a clean EOF instead);
 *   BRAID_EMSGSIZE      read_line: no delimiter within the buffer's size;
 *   the connection's loss reason once it ended uncleanly (-ECONNRESET,
 *   -EPIPE, BRAID_ECONNECTION_LOST after an abort, BRAID_EBUFFER_LIMIT ...);
 *   BRAID_ESHUTDOWN     writing after close/shutdown_write or after the end;
 *   BRAID_EBUSY         another fiber is already blocked reading (or writing /
 *                       closing) the same stream: one reader and one writer
 *                       fiber at a time;
 *   BRAID_ENOT_IN_FIBER a call that has to wait, made outside a fiber.
 * Bytes that arrived before an unclean loss are still delivered first.
 *
 * Flow control: the stream stops reading from its transport when it holds
 * its read limit (64 KiB by default, or the size of the read in progress if
 * larger) and resumes as the fiber consumes. A write that leaves the
 * transport's buffer at or above its high watermark waits until it drained to
 * the low one (see braid_transport_set_limits): a fiber that writes a lot is
 * paced by its peer, and a peer that never reads stops it (with a timeout:
 * BRAID_ETIMEDOUT). The stream registers itself as the transport's producer.
 *
 * Ownership: a stream from braid_fstream_new or braid_fstream_connect is the
 * caller's until braid_fstream_free; one handed to a factory handler belongs
 * to the factory (the handler must not free it). braid keeps the memory alive
 * until both the caller has freed it and the connection has ended. Loop
 * thread only. */
#ifndef BRAID_FSTREAM_H
#define BRAID_FSTREAM_H

#include <braid/fiber.h>
#include <braid/protocol.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes: fiber streams own -4032 ... -4039. */
#define BRAID_EEOF              (-4032)  /* the stream ended before the requested data */

typedef struct braid_fstream braid_fstream;

/* A stream not yet attached: pass braid_fstream_protocol(s) to a transport
 * (braid_transport_adopt, braid_memory_transport_new, braid_pump_new). 0 and *out
 * (yours: braid_fstream_free), or BRAID_ENOMEM. */
BRAID_API int braid_fstream_new(braid_loop *loop, braid_fstream **out);
BRAID_API braid_protocol *braid_fstream_protocol(braid_fstream *s);
/* The transport while the connection is open (peer address, TCP options), else NULL. */
BRAID_API braid_transport *braid_fstream_transport(braid_fstream *s);

/* Up to max bytes (at least 1): waits for some to arrive. The count, 0 at a
 * clean EOF, or an error. */
BRAID_API ssize_t braid_fstream_read(braid_fstream *s, void *buf, size_t max, uint64_t timeout);
/* Exactly n bytes (collected over as many chunks as it takes). 0 or an
 * error (BRAID_EEOF: the stream ended first; the partial bytes stay
 * readable with braid_fstream_read). */
BRAID_API int braid_fstream_read_exactly(braid_fstream *s, void *buf, size_t n, uint64_t timeout);
/* One line: the bytes up to and including the first delim, copied to buf and
 * NUL-terminated, so a line may be at most size - 1 bytes with its delimiter.
 * Returns its length (delimiter included); at EOF an unterminated last line is
 * returned as it is (no delimiter), then 0. BRAID_EMSGSIZE when size - 1 bytes
 * arrived without a delimiter (they stay buffered: a line-based protocol
 * usually closes here). size >= 2, else BRAID_EINVAL. */
BRAID_API ssize_t braid_fstream_read_line(braid_fstream *s, char *buf, size_t size, int delim,
                                          uint64_t timeout);
/* Bytes buffered and not yet read. */
BRAID_API size_t braid_fstream_buffered(const braid_fstream *s);
/* Stop reading from the transport once this many bytes are buffered (0 =
 * the 64 KiB default). */
BRAID_API void braid_fstream_set_read_limit(braid_fstream *s, size_t limit);

/* Queue len bytes; if the transport's buffer is now at or above its high
 * watermark, wait until it drained to the low watermark. 0 or an error (on a
 * timeout the bytes stay queued). Does not switch when there is room. */
BRAID_API int braid_fstream_write(braid_fstream *s, const void *buf, size_t len, uint64_t timeout);
/* Wait until everything written was handed to the kernel (or the memory
 * peer consumed it). 0 or an error. */
BRAID_API int braid_fstream_flush(braid_fstream *s, uint64_t timeout);
/* Half-close: send EOF once the buffer drained (reading goes on). */
BRAID_API int braid_fstream_shutdown_write(braid_fstream *s);
/* Close gracefully: flush what is queued, close, and wait until the
 * connection has ended. 0 for a clean close, the loss reason otherwise; on
 * a timeout (or cancellation) the connection is aborted and BRAID_ETIMEDOUT
 * (BRAID_ECANCELED) returned. Outside a fiber it starts the close and
 * returns 0 without waiting. The stream stays valid (reads give EOF). */
BRAID_API int braid_fstream_close(braid_fstream *s, uint64_t timeout);
/* Drop the connection now, discarding what is queued. */
BRAID_API void braid_fstream_abort(braid_fstream *s);
/* Release the caller's stream. A connection still open is closed gracefully
 * in the background (its queued bytes still go out). No fiber may be
 * blocked on s. */
BRAID_API void braid_fstream_free(braid_fstream *s);

/* From a fiber: connect to a client endpoint string ("tcp:host=127.0.0.1:
 * port=8000", "unix:path=/run/x.sock", see <braid/endpoint.h>) and wait for
 * the connection, at most timeout (the endpoint's own connect timeout —
 * 30 s unless the string sets timeout= — applies too). 0 and *out (free it with
 * braid_fstream_free), or the connect failure's code (BRAID_ETIMEDOUT,
 * -ECONNREFUSED, BRAID_EBAD_ENDPOINT, BRAID_ECANCELED, BRAID_ENOT_IN_FIBER). */
BRAID_API int braid_fstream_connect(braid_loop *loop, const char *endpoint, uint64_t timeout,
                                    braid_fstream **out);

/* Accepting: a factory (pass &ff->base to braid_endpoint_listen or _listen_typed)
 * that runs handler(stream, arg) in a new fiber for every connection. When the
 * handler returns, the connection is closed gracefully and the stream
 * released; a negative return value is logged (debug level). If a fiber cannot
 * be spawned the connection is aborted. The factory must outlive its
 * connections (braid_fstream_factory_count). */
typedef int (*braid_fstream_handler_fn)(braid_fstream *s, void *arg);

typedef struct braid_fstream_factory {
    braid_factory base;            /* first: what listeners take */
    braid_loop *loop;
    braid_fstream_handler_fn handler;
    void *arg;
    braid_fiber_options fiber;     /* stack size and name for connection fibers */
    size_t read_limit;             /* per stream, 0 = default */
    /* private */
    braid_fstream *conns;
    size_t nconns;
} braid_fstream_factory;

/* fopts may be NULL (default stack, name "fstream"). */
BRAID_API void braid_fstream_factory_init(braid_loop *loop, braid_fstream_factory *ff,
                                          braid_fstream_handler_fn handler, void *arg,
                                          const braid_fiber_options *fopts);
/* Connection fibers alive. */
BRAID_API size_t braid_fstream_factory_count(const braid_fstream_factory *ff);
/* Cancel every connection fiber (its blocked read returns BRAID_ECANCELED;
 * one that has not started yet never runs its handler). For shutting a server
 * down: close the listener, cancel, run the loop until the count is 0. */
BRAID_API void braid_fstream_factory_cancel_all(braid_fstream_factory *ff);

#ifdef __cplusplus
}
#endif
#endif
