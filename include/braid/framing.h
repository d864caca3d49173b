/* braid/framing.h — framers: messages out of a byte stream.
 *
 * Three framers, as in Twisted's basic.py, each with a size limit and an
 * error for oversized input (a peer can never make braid buffer more than
 * the limit plus a header):
 *   line        frames end with a delimiter ("\r\n" by default); a line longer
 *               than max → BRAID_EMSGSIZE (LineReceiver, MAX_LENGTH);
 *   u32         a 4-byte big-endian length, then that many bytes; a length
 *               above max → BRAID_EMSGSIZE (Int32StringReceiver);
 *   netstring   "<len>:<bytes>," (djb); a length above max → BRAID_EMSGSIZE,
 *               anything malformed (a non-digit, a leading zero, no ',') →
 *               BRAID_EPROTO_INPUT (NetstringReceiver).
 *
 * A braid_framer is a pure parser (no transport, no loop): feed it bytes in
 * any chunking, it calls cb once per complete frame, with a pointer into
 * the fed data when the frame lies whole in it (no copy) or into its own
 * buffer when it straddled feeds. The frame is lent for the call. cb returns
 * 0 to go on, or anything else to stop (feed then returns that value and the
 * framer refuses further input); errors are sticky.
 *
 *     typedef struct chat { braid_framing_protocol fp; } chat;   // framer inside
 *     static int on_line(void *ctx, const void *line, size_t len) {
 *         braid_protocol *p = ctx;
 *         braid_framing_write_line(p->transport, "\r\n", line, len);   // echo the line
 *         return 0;
 *     }
 *     static void chat_made(braid_protocol *p) {
 *         braid_framer_init_line(&((chat *)p)->fp.framer, "\r\n", 4096, on_line, p);
 *     }
 *     static const braid_protocol_ops chat_ops = {
 *         .connection_made = chat_made,
 *         .data_received = braid_framing_protocol_data_received,   // feeds; aborts on a framing error
 *         .destroy = braid_framing_protocol_destroy,               // frees the framer's buffer
 *     };
 *
 * Ownership: the framer is caller storage; its partial-frame buffer is
 * allocated through braid_malloc and released by braid_framer_close. Callbacks
 * run inside braid_framer_feed (for a protocol: on its loop thread). Do not
 * call feed from inside cb.
 */
#ifndef BRAID_FRAMING_H
#define BRAID_FRAMING_H

#include <braid/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum braid_framer_kind {
    BRAID_FRAMER_LINE = 1,
    BRAID_FRAMER_U32,
    BRAID_FRAMER_NETSTRING,
} braid_framer_kind;

typedef int (*braid_framer_fn)(void *ctx, const void *frame, size_t len);

typedef struct braid_framer {      /* caller storage; fields private */
    braid_framer_kind kind;
    size_t max;
    char delim[8];
    size_t delim_len;
    char *buf;                     /* a partial frame carried between feeds */
    size_t len, cap;
    size_t scanned;                /* line: bytes of buf already searched */
    int error;                     /* sticky: 0, an error code, or cb's stop value */
    braid_framer_fn cb;
    void *ctx;
} braid_framer;

/* delim: 1..8 bytes (NULL = "\r\n"); max: longest frame accepted, excluding
 * the delimiter / header. */
BRAID_API int braid_framer_init_line(braid_framer *f, const char *delim, size_t max,
                                     braid_framer_fn cb, void *ctx);
BRAID_API void braid_framer_init_u32(braid_framer *f, size_t max, braid_framer_fn cb, void *ctx);
BRAID_API void braid_framer_init_netstring(braid_framer *f, size_t max, braid_framer_fn cb, void *ctx);
/* 0, BRAID_EMSGSIZE, BRAID_EPROTO_INPUT, BRAID_ENOMEM, or cb's stop value. */
BRAID_API int braid_framer_feed(braid_framer *f, const void *data, size_t len);
/* Bytes of an incomplete frame held now. */
BRAID_API size_t braid_framer_pending(const braid_framer *f);
BRAID_API void braid_framer_close(braid_framer *f);

/* Encoders: write one frame to a transport (one buffered write). */
BRAID_API int braid_framing_write_line(braid_transport *t, const char *delim, const void *data, size_t len);
BRAID_API int braid_framing_write_u32(braid_transport *t, const void *data, size_t len);
BRAID_API int braid_framing_write_netstring(braid_transport *t, const void *data, size_t len);

/* Protocol glue: a protocol whose struct begins with braid_framing_protocol
 * can use these ops. A framing error aborts the connection with that code as
 * connection_lost's reason (BRAID_EMSGSIZE, BRAID_EPROTO_INPUT). */
typedef struct braid_framing_protocol {
    braid_protocol base;
    braid_framer framer;
} braid_framing_protocol;
BRAID_API void braid_framing_protocol_data_received(braid_protocol *p, const void *buf, size_t len);
BRAID_API void braid_framing_protocol_destroy(braid_protocol *p);

#ifdef __cplusplus
}
#endif
#endif
