/* braid/dgram.h — UDP: datagram sockets on the loop.
 *
 * A datagram socket delivers each datagram with its sender's address. Reads
 * are batched: one readiness event drains up to `batch` datagrams with a
 * single recvmmsg() (Linux), so a flood costs one system call per batch, not
 * per packet. Sends go out at once (UDP has no stream to buffer): a full
 * socket buffer returns BRAID_EAGAIN and the datagram is not sent — UDP's
 * own drop semantics, made visible.
 *
 *     static void got(braid_dgram *d, const void *buf, size_t len,
 *                     const braid_address *from, void *arg) {
 *         braid_dgram_send_to(d, buf, len, from);       // echo
 *     }
 *     braid_dgram *d;
 *     braid_dgram_open(loop, *                      &(braid_dgram_ops){ .datagram_received = got },
 NULL, &(braid_dgram_options){ .host = "127.0.0.1", .port = 5353 }, &d);
 *     ...
 *     braid_dgram_close(d);
 *
 * Connected mode (braid_dgram_connect): only datagrams from that peer are
 * received, braid_dgram_send needs no address, and ICMP errors come back as
 * ops->error(-ECONNREFUSED).
 *
 * Ownership: the caller owns the braid_dgram until braid_dgram_close (it is a
 * loop handle until then). Buffers and addresses passed to callbacks are
 * lent for the call. Callbacks run on the loop thread; they may close d.
 */
#ifndef BRAID_DGRAM_H
#define BRAID_DGRAM_H

#include <braid/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct braid_dgram braid_dgram;

typedef struct braid_dgram_ops {
    void (*datagram_received)(braid_dgram *d, const void *buf, size_t len,
                              const braid_address *from, void *arg);
    /* A socket error (connected mode: -ECONNREFUSED from ICMP), or
     * BRAID_EMSGSIZE for a datagram larger than max_datagram (dropped). */
    void (*error)(braid_dgram *d, int code, void *arg);
} braid_dgram_ops;

typedef struct braid_dgram_options {
    const char *host;          /* numeric bind address; NULL = 0.0.0.0 (:: with ipv6) */
    int port;                  /* 0 = any */
    bool ipv6;
    bool reuseport;
    bool broadcast;            /* SO_BROADCAST */
    int batch;                 /* datagrams per recvmmsg, 0 = 16 */
    size_t max_datagram;       /* receive buffer per datagram, 0 = 65536 */
} braid_dgram_options;

BRAID_API int braid_dgram_open(braid_loop *loop, const braid_dgram_ops *ops,
                               void *arg, const braid_dgram_options *o, braid_dgram **out);
BRAID_API int braid_dgram_send_to(braid_dgram *d, const void *buf, size_t len,
                                  const braid_address *to);
/* Connected mode. */
BRAID_API int braid_dgram_connect(braid_dgram *d, const braid_address *peer);
BRAID_API int braid_dgram_send(braid_dgram *d, const void *buf, size_t len);
BRAID_API int braid_dgram_address(const braid_dgram *d, braid_address *out);
BRAID_API void braid_dgram_pause_reading(braid_dgram *d);
BRAID_API void braid_dgram_resume_reading(braid_dgram *d);
/* Stats: datagrams received, and receive system calls that delivered them. */
BRAID_API uint64_t braid_dgram_received(const braid_dgram *d);
BRAID_API uint64_t braid_dgram_recv_calls(const braid_dgram *d);
BRAID_API void braid_dgram_close(braid_dgram *d);


#ifdef __cplusplus
}
#endif
#endif
