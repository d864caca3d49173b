/* What the net layer publishes to the endpoint module (internal, never
 * installed): the socket-level listen and connect calls behind
 * braid_endpoint_listen / braid_endpoint_connect and their typed forms.
 * Applications and the other modules listen and connect through
 * <braid/endpoint.h> only (docs/conventions.md, "Listening and
 * connecting"); these are its per-transport halves. Loop thread. */
#ifndef BRAID_NET_SOCKETS_H
#define BRAID_NET_SOCKETS_H

#include <braid/stream.h>

typedef struct braid__tcp_listen_options {
    const char *host;          /* numeric address; NULL or "" = all IPv4 ("::" for v6) */
    int port;                  /* 0 = any; read it back with braid_listener_address */
    bool ipv6;                 /* tcp6 */
    int backlog;               /* 0 = 511 */
    bool reuseport;            /* SO_REUSEPORT (several processes share the port) */
    int accept_budget;         /* accepts per loop iteration, 0 = 64 (fairness) */
} braid__tcp_listen_options;

typedef struct braid__unix_listen_options {
    const char *path;
    int mode;                  /* chmod of the socket file, 0 = leave as umask gives */
    int backlog;               /* 0 = 511 */
    int accept_budget;         /* 0 = 64 */
} braid__unix_listen_options;

/* 0 and *out (the caller's: braid_listener_close), or a negative code. */
int braid__tcp_listen(braid_loop *loop, const braid__tcp_listen_options *o, braid_factory *f,
                      braid_listener **out);
int braid__unix_listen(braid_loop *loop, const braid__unix_listen_options *o, braid_factory *f,
                       braid_listener **out);
/* Listen on a listening descriptor made elsewhere (socket activation, a
 * parent process); takes ownership of fd. */
int braid__fd_listen(braid_loop *loop, int fd, int accept_budget, braid_factory *f,
                     braid_listener **out);

typedef struct braid__tcp_connect_options {
    const char *host;          /* name or numeric; names resolve off the loop thread */
    int port;
    uint64_t timeout;          /* BRAID_ETIMEDOUT when it passes; BRAID_FOREVER = none
                                * (the endpoint module applies the default to 0) */
    const char *bind_host;     /* optional source address (numeric) */
    int bind_port;
    int family;                /* 0 = any, AF_INET or AF_INET6 */
} braid__tcp_connect_options;

/* A Deferred of the connected braid_protocol * (borrowed: it lives until its
 * connection_lost). Cancelling it (or the timeout) closes the attempt. NULL
 * only if even a failed Deferred could not be allocated. */
braid_deferred *braid__tcp_connect(braid_loop *loop, const braid__tcp_connect_options *o,
                                   braid_factory *f);
/* timeout as above (BRAID_FOREVER = none). */
braid_deferred *braid__unix_connect(braid_loop *loop, const char *path, uint64_t timeout,
                                    braid_factory *f);

#endif
