/* Internals shared by the files of the net layer (src/net/, never
 * installed): fd transports, the shared read buffer, name resolution and
 * numeric addresses. Nothing outside src/net/ includes this (tests aside);
 * what other modules may use is in net/transport_ext.h and, for transport
 * kinds, net/transport_impl.h. */
#ifndef BRAID_NET_INTERNAL_H
#define BRAID_NET_INTERNAL_H

#include "net/transport_impl.h"

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "net";

/* The loop's shared read buffer (BRAID__READ_BUF bytes), or NULL on ENOMEM. */
char *braid__stream_read_buffer(braid_loop *loop);

/* ---- fd transports (fd.c) ------------------------------------------------------------ */
typedef enum { BRAID__FD_TCP, BRAID__FD_UNIX, BRAID__FD_PIPE } braid__fd_kind;
/* Wrap a connected fd (taking ownership; wfd may equal rfd). nonblocking:
 * the caller made it with SOCK_NONBLOCK (saves two fcntl calls per accept). */
int braid__fd_transport_new(braid_loop *loop, int rfd, int wfd, braid__fd_kind kind,
                            bool nonblocking, braid_transport **out);
int braid__set_nonblock(int fd);
/* The provided-buffer ring fd transports on completions receive into, or
 * NULL (none made yet, or this loop keeps TCP on readiness). For tests. */
struct braid__completion_bufs;
struct braid__completion_bufs *braid__fd_ring(braid_loop *loop);

/* ---- name resolution (resolve.c) ---------------------------------------------------- */
/* A resolved name: its addresses, in getaddrinfo's order. */
typedef struct braid__addrlist {
    size_t n;
    braid_address addrs[];
} braid__addrlist;
/* A Deferred of a braid__addrlist * (owned by the result, freed by its
 * dtor). Numeric hosts resolve at once; names on a worker of the loop's
 * resolver pool. */
struct addrinfo;
braid_deferred *braid__resolve(braid_loop *loop, const char *host, int port,
                               const struct addrinfo *hints);
/* The pool and class where this loop resolves host names: the one given to
 * braid_resolver_set_pool, else a pool of the loop's own made on first
 * use (up to 4 threads, no spinning) and destroyed with the loop. NULL on
 * allocation failure. Loop thread. */
struct braid_pool;
struct braid_pool *braid__resolver_pool(braid_loop *loop, int *cls);
/* Parse a numeric host (v4 or v6, optional [..]) and port into out. */
int braid__numeric_address(const char *host, int port, int family, braid_address *out);

#endif
