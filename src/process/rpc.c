/* The worker pool's wire format (process_internal.h describes it): one
 * parser and one encoder, shared by both sides. The parser reads what a
 * peer process sent, so it trusts nothing (fuzz/fuzz_process_rpc.c). */
#include "process/process_internal.h"
#include "net/transport_ext.h"
#include <errno.h>
#include <sys/uio.h>
#include <string.h>
#include <sys/socket.h>


/* The command part of CALL and CALL_EX: u8 length, the command, the payload. */
static int parse_command(const unsigned char *rest, size_t n, braid__rpc_msg *m) {
    if (n < 1 || rest[0] == 0 || rest[0] > n - 1) return BRAID_EPROTO_INPUT;
    m->command = (const char *)rest + 1;
    m->command_len = rest[0];
    m->payload = rest + 1 + rest[0];
    m->len = n - 1 - rest[0];
    return 0;
}

int braid__rpc_parse(const void *frame, size_t len, braid__rpc_msg *m) {
    const unsigned char *b = frame;
    if (len < BRAID__RPC_HEADER || b[0] != BRAID__RPC_VERSION) return BRAID_EPROTO_INPUT;
    memset(m, 0, sizeof *m);
    m->type = (braid__rpc_type)b[1];
    m->id = braid__get32(b + 2);
    const unsigned char *rest = b + BRAID__RPC_HEADER;
    size_t n = len - BRAID__RPC_HEADER;
    switch (m->type) {
    case BRAID__RPC_CALL:
        return parse_command(rest, n, m);
    case BRAID__RPC_CALL_EX: {
        if (n < 1 || (rest[0] & ~(BRAID__RPC_F_BOX | BRAID__RPC_F_RID))) return BRAID_EPROTO_INPUT;
        m->flags = rest[0];
        size_t at = 1;
        if (m->flags & BRAID__RPC_F_RID) {
            if (n < 9) return BRAID_EPROTO_INPUT;
            m->request_id = braid__get64(rest + 1);
            at = 9;
        }
        return parse_command(rest + at, n - at, m);
    }
    case BRAID__RPC_LOG: {
        /* level, time, request id, dropped, ns length: 22 bytes */
        if (n < 22 || rest[0] > BRAID_LOG_ERROR || n - 22 < rest[21]) return BRAID_EPROTO_INPUT;
        m->level = rest[0];
        m->time_ns = braid__get64(rest + 1);
        m->request_id = braid__get64(rest + 9);
        m->dropped = braid__get32(rest + 17);
        m->ns_len = rest[21];
        m->ns = (const char *)rest + 22;
        size_t at = 22 + m->ns_len;
        if (n - at < 2) return BRAID_EPROTO_INPUT;
        m->text_len = (size_t)rest[at] << 8 | rest[at + 1];
        at += 2;
        if (n - at < m->text_len) return BRAID_EPROTO_INPUT;
        m->text = (const char *)rest + at;
        m->payload = rest + at + m->text_len;
        m->len = n - at - m->text_len;
        return 0;
    }
    case BRAID__RPC_REPLY_BOX:
    case BRAID__RPC_REPLY:
        m->payload = rest;
        m->len = n;
        return 0;
    case BRAID__RPC_FAIL: {
        if (n < 4) return BRAID_EPROTO_INPUT;
        int32_t code = (int32_t)braid__get32(rest);
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

/* A LOG frame as three pieces: its header (into h, which has room for
 * the longest), the message, the fields. */
static int log_frame(const braid__rpc_msg *m, size_t max, unsigned char *h, struct iovec v[3]) {
    if (m->ns_len > 255 || m->text_len > 65535) return BRAID_EINVAL;
    size_t hl = 4 + BRAID__RPC_HEADER;
    h[4] = BRAID__RPC_VERSION;
    h[5] = (unsigned char)m->type;
    braid__put32(h + 6, m->id);
    h[hl] = (unsigned char)m->level;
    braid__put64(h + hl + 1, m->time_ns);
    braid__put64(h + hl + 9, m->request_id);
    braid__put32(h + hl + 17, m->dropped);
    h[hl + 21] = (unsigned char)m->ns_len;
    hl += 22;
    if (m->ns_len) memcpy(h + hl, m->ns, m->ns_len);
    hl += m->ns_len;
    h[hl++] = (unsigned char)(m->text_len >> 8);
    h[hl++] = (unsigned char)m->text_len;
    size_t body = hl - 4 + m->text_len + m->len;
    if (body > max || body > UINT32_MAX) return BRAID_EMSGSIZE;
    braid__put32(h, (uint32_t)body);
    v[0] = (struct iovec){ h, hl };
    v[1] = (struct iovec){ (void *)m->text, m->text_len };
    v[2] = (struct iovec){ (void *)m->payload, m->len };
    return 0;
}

int braid__rpc_write_log_now(braid_transport *t, int fd, const braid__rpc_msg *m, size_t max) {
    unsigned char h[4 + BRAID__RPC_HEADER + 22 + 255 + 2];
    struct iovec v[3];
    int rc = log_frame(m, max, h, v);
    if (rc < 0) return rc;
    int at = 0;
    /* Replies written before it (left for the end of the read) go first,
     * now: a crash next must not take them, nor this, with it. */
    if (fd >= 0 && braid_transport_buffered(t) > 0 && braid__transport_flush_now(t) < 0) return BRAID_ESHUTDOWN;
    if (fd >= 0 && braid_transport_buffered(t) == 0) {
        /* Nothing queued before it: the kernel may take it now, in order. */
        struct msghdr mh = { .msg_iov = v, .msg_iovlen = 3 };
        ssize_t n = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n < 0 && errno == ENOTSOCK) n = writev(fd, v, 3);   /* a pipe: non-blocking already,
                                                                 * SIGPIPE ignored by the worker */
        for (; n > 0 && at < 3; at++) {
            if ((size_t)n < v[at].iov_len) {
                v[at].iov_base = (char *)v[at].iov_base + n;
                v[at].iov_len -= (size_t)n;
                break;
            }
            n -= (ssize_t)v[at].iov_len;
        }
        if (at == 3) return 0;
    }
    return braid_transport_writev(t, v + at, 3 - at);   /* the rest, or all: buffered */
}

int braid__rpc_write(braid_transport *t, const braid__rpc_msg *m, size_t max) {
    unsigned char h[4 + BRAID__RPC_HEADER + 22 + 255 + 2];
    size_t hl = 4 + BRAID__RPC_HEADER;
    h[4] = BRAID__RPC_VERSION;
    h[5] = (unsigned char)m->type;
    braid__put32(h + 6, m->id);
    if (m->type == BRAID__RPC_CALL_EX) {
        h[hl++] = (unsigned char)m->flags;
        if (m->flags & BRAID__RPC_F_RID) {
            braid__put64(h + hl, m->request_id);
            hl += 8;
        }
    }
    if (m->type == BRAID__RPC_LOG) {
        struct iovec v[3];
        int rc = log_frame(m, max, h, v);
        return rc < 0 ? rc : braid_transport_writev(t, v, 3);
    }
    if (m->type == BRAID__RPC_CALL || m->type == BRAID__RPC_CALL_EX) {
        if (m->command_len == 0 || m->command_len > 255) return BRAID_EINVAL;
        h[hl++] = (unsigned char)m->command_len;
        memcpy(h + hl, m->command, m->command_len);
        hl += m->command_len;
    } else if (m->type == BRAID__RPC_FAIL) {
        braid__put32(h + hl, (uint32_t)m->code);
        hl += 4;
    }
    size_t body = hl - 4 + m->len;
    if (body > max || body > UINT32_MAX) return BRAID_EMSGSIZE;
    braid__put32(h, (uint32_t)body);
    struct iovec v[2] = { { h, hl }, { (void *)m->payload, m->len } };
    return braid_transport_writev(t, v, m->len ? 2 : 1);
}
