/* Loopback sockets for tests: braid listeners on 127.0.0.1:0, ::1 and a Unix
 * socket in a temporary directory, and raw sockets for a test's own peer.
 *
 *     int port;
 *     braid_listener *l = bt_listen_tcp(loop, &factory, &port);
 *     int fd = bt_connect_tcp(port, BT_CONNECT_NONBLOCK);   // a raw peer, connected
 *     ...
 *     close(fd);
 *     braid_listener_close(l);
 *
 * The listeners are the test's (close them); raw fds are the test's (close
 * them). Unix socket paths live in one directory per process, made on first
 * use and removed with what is in it when the process exits. Everything
 * fails the case on error except where a return says otherwise. */
#ifndef BRAID_TESTS_SUPPORT_NET_H
#define BRAID_TESTS_SUPPORT_NET_H

#include "../harness.h"
#include <braid/endpoint.h>

/* A connected AF_UNIX stream pair, non-blocking, close-on-exec. */
void bt_socketpair(int sv[2]);
/* A connected TCP pair on 127.0.0.1, blocking, close-on-exec. */
void bt_tcp_socketpair(int sv[2]);

/* Listen at ep (braid_endpoint_listen_typed) for f. */
braid_listener *bt_listen(braid_loop *loop, const braid_endpoint *ep, braid_factory *f);
/* Listen on 127.0.0.1:0 for f; *port (may be NULL) gets the port. */
braid_listener *bt_listen_tcp(braid_loop *loop, braid_factory *f, int *port);
/* The same on [::1]; returns NULL when the machine has no IPv6 loopback
 * (the caller cleans up and skips). */
braid_listener *bt_listen_tcp6(braid_loop *loop, braid_factory *f, int *port);
/* The port a listener is bound to. */
int bt_listener_port(braid_listener *l);
/* A fresh path for a Unix socket named after tag, in the process's test
 * directory (nothing exists there yet). Returns buf. */
const char *bt_unix_path(char *buf, size_t n, const char *tag);
/* Listen on a fresh Unix socket path (written to path[n]) for f. */
braid_listener *bt_listen_unix(braid_loop *loop, braid_factory *f, char *path, size_t n);
/* A port nothing listens on (bound a moment ago, then closed). */
int bt_free_port(void);

enum {
    BT_CONNECT_NONBLOCK = 1u << 0,   /* connected, then made non-blocking */
    BT_CONNECT_ASYNC = 1u << 1,      /* non-blocking from the start: the connect may be in progress */
    BT_CONNECT_MAY_FAIL = 1u << 2,   /* return -1 (errno set) instead of failing the case */
};
/* A raw TCP socket connected to 127.0.0.1:port (close-on-exec). */
int bt_connect_tcp(int port, unsigned flags);
/* The same with a receive buffer of rcvbuf bytes, set before connecting:
 * a peer that does not read fills up early (the kernel may round it). */
int bt_connect_tcp_rcvbuf(int port, unsigned flags, int rcvbuf);
/* A raw Unix stream socket connected to path (close-on-exec). */
int bt_connect_unix(const char *path, unsigned flags);

#endif
