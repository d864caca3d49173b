/* The worker pool's wire format (process_internal.h describes it): one
 * parser and one encoder, shared by both sides. The parser reads what a
 * peer process sent, so it trusts nothing (fuzz/fuzz_process_rpc.c). */
#include "process/process_internal.h"
#include <string.h>

static uint32_t get32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static void put32(unsigned char *b, uint32_t v) {
    b[0] = (unsigned char)(v >> 24); b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8); b[3] = (unsigned char)v;
}

int braid__rpc_parse(const void *frame, size_t len, braid__rpc_msg *m) {
    const unsigned char *b = frame;
    if (len < BRAID__RPC_HEADER || b[0] != BRAID__RPC_VERSION) return BRAID_EPROTO_INPUT;
    memset(m, 0, sizeof *m);
    m->type = (braid__rpc_type)b[1];
    m->id = get32(b + 2);
    const unsigned char *rest = b + BRAID__RPC_HEADER;
    size_t n = len - BRAID__RPC_HEADER;
    switch (m->type) {
    case BRAID__RPC_CALL:
        if (n < 1 || rest[0] == 0 || rest[0] > n - 1) return BRAID_EPROTO_INPUT;
        m->command = (const char *)rest + 1;
        m->command_len = rest[0];
        m->payload = rest + 1 + rest[0];
        m->len = n - 1 - rest[0];
        return 0;
    case BRAID__RPC_REPLY:
        m->payload = rest;
        m->len = n;
        return 0;
    case BRAID__RPC_FAIL: {
        if (n < 4) return BRAID_EPROTO_INPUT;
        int32_t code = (int32_t)get32(rest);
        if (code >= 0) return BRAID_EPROTO_INPUT;
        m->code = code;
        m->payload = rest + 4;
        m->len = n - 4;
        return 0;
    }
    case BRAID__RPC_READY:
    case BRAID__RPC_STOP:
    case BRAID__RPC_CANCEL:
        return n == 0 ? 0 : BRAID_EPROTO_INPUT;
    }
    return BRAID_EPROTO_INPUT;
}

int braid__rpc_write(braid_transport *t, const braid__rpc_msg *m, size_t max) {
    unsigned char h[4 + BRAID__RPC_HEADER + 1 + 255];
    size_t hl = 4 + BRAID__RPC_HEADER;
    h[4] = BRAID__RPC_VERSION;
    h[5] = (unsigned char)m->type;
    put32(h + 6, m->id);
    if (m->type == BRAID__RPC_CALL) {
        if (m->command_len == 0 || m->command_len > 255) return BRAID_EINVAL;
        h[hl++] = (unsigned char)m->command_len;
        memcpy(h + hl, m->command, m->command_len);
        hl += m->command_len;
    } else if (m->type == BRAID__RPC_FAIL) {
        put32(h + hl, (uint32_t)m->code);
        hl += 4;
    }
    size_t body = hl - 4 + m->len;
    if (body > max || body > UINT32_MAX) return BRAID_EMSGSIZE;
    put32(h, (uint32_t)body);
    struct iovec v[2] = { { h, hl }, { (void *)m->payload, m->len } };
    return braid_transport_writev(t, v, m->len ? 2 : 1);
}
