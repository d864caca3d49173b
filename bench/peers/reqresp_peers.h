/* Peer servers for the reqresp/echo experiments (see reqresp_peers.c). */
#ifndef BENCH_REQRESP_PEERS_H
#define BENCH_REQRESP_PEERS_H
#include <stddef.h>
#include <stdint.h>

enum { RR_MODE_REQRESP = 0, RR_MODE_ECHO = 1 };

/* Answer the complete 16-byte requests in in[0..n) into out (which must hold
 * n + 16 bytes), carrying a partial request in part/plen; returns bytes out. */
size_t rr_answer(uint8_t *part, size_t *plen, const uint8_t *in, size_t n, uint8_t *out);
/* A non-blocking listening socket on 127.0.0.1:port, backlog 511. */
int rr_listen_socket(int port);
/* Serve forever (until killed); 77 if the library is not available. */
int rr_serve_epoll(int port, int mode);
int rr_serve_libuv(int port, int mode);
int rr_serve_libevent(int port, int mode);
#endif
