/* Framers meet transports: encoders that write one frame in one buffered
 * write, and the protocol glue that feeds a framer and aborts the connection
 * with the framing error as the reason. */
#include "base/base.h"
#include <braid/framing.h>
#include <braid/stream.h>
#include <string.h>

/* ---- encoders ---------------------------------------------------------------------- */
int braid_framing_write_line(braid_transport *t, const char *delim, const void *data, size_t len) {
    if (!delim) delim = "\r\n";
    struct iovec v[2] = { { (void *)data, len }, { (void *)delim, strlen(delim) } };
    return braid_transport_writev(t, v, 2);
}

int braid_framing_write_u32(braid_transport *t, const void *data, size_t len) {
    if (len > UINT32_MAX) return BRAID_EMSGSIZE;
    unsigned char h[4] = { (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                           (unsigned char)(len >> 8), (unsigned char)len };
    struct iovec v[2] = { { h, 4 }, { (void *)data, len } };
    return braid_transport_writev(t, v, 2);
}

int braid_framing_write_netstring(braid_transport *t, const void *data, size_t len) {
    char h[24];
    int k = 0;
    char digits[24];
    size_t x = len;
    do { digits[k++] = (char)('0' + x % 10); x /= 10; } while (x);
    for (int i = 0; i < k; i++) h[i] = digits[k - 1 - i];
    h[k] = ':';
    struct iovec v[3] = { { h, (size_t)k + 1 }, { (void *)data, len }, { ",", 1 } };
    return braid_transport_writev(t, v, 3);
}

void braid_framing_protocol_data_received(braid_protocol *p, const void *buf, size_t len) {
    braid_framing_protocol *fp = (braid_framing_protocol *)p;
    int rc = braid_framer_feed(&fp->framer, buf, len);
    if (rc == BRAID_EMSGSIZE || rc == BRAID_EPROTO_INPUT || rc == BRAID_ENOMEM) {
        braid_framer_close(&fp->framer);
        if (p->transport) braid_transport_abort_with(p->transport, rc);
    }
}

void braid_framing_protocol_destroy(braid_protocol *p) {
    braid_framer_close(&((braid_framing_protocol *)p)->framer);
}
