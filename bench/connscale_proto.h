/* The connscale protocol, shared by every server of the threads-vs-events
 * study (braid's four models and the raw epoll peer; the Twisted peer
 * implements the same bytes in Python): the client sends 16 bytes
 * {seq, x} as little-endian u64s; the server answers {seq, 2x+1} and closes. */
#ifndef BRAID_BENCH_CONNSCALE_PROTO_H
#define BRAID_BENCH_CONNSCALE_PROTO_H

#include <stdint.h>

#define CS_MSG 16

static inline uint64_t cs_get_le64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static inline void cs_put_le64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) { p[i] = (uint8_t)v; v >>= 8; }
}

/* The whole application: a request in, the response out. */
static inline void cs_reply(const uint8_t req[CS_MSG], uint8_t resp[CS_MSG]) {
    uint64_t seq = cs_get_le64(req), x = cs_get_le64(req + 8);
    cs_put_le64(resp, seq);
    cs_put_le64(resp + 8, 2 * x + 1);
}

#endif
