/* Transport kinds (internal, never installed): the shape of a stream
 * transport, published by the net layer for the kinds that implement one —
 * fd.c (sockets and pipes) and memory.c (the test double) in src/net/, and
 * TLS (src/tls/), a kind that wraps another transport.
 *
 * The part every kind shares (write buffer, flow control, producers, close
 * and loss delivery) lives in transport.c; a kind supplies a small vtable
 * for the system-level work. A kind reads its own transport's fields (the
 * buffer it flushes, the state flags, the lost code) and changes them only
 * through the functions below; it touches another transport (a wrapper's
 * lower one) only through <braid/stream.h>, net/transport_ext.h and the
 * wrapper functions at the end. */
#ifndef BRAID_NET_TRANSPORT_IMPL_H
#define BRAID_NET_TRANSPORT_IMPL_H

#include "net/transport_ext.h"
#include <braid/deferred.h>
#include <braid/stream.h>

#define BRAID__DEFAULT_LOW   (16u * 1024)
#define BRAID__DEFAULT_HIGH  (64u * 1024)
#define BRAID__DEFAULT_CAP   (4u * 1024 * 1024)

enum {
    BRAID__T_MADE          = 1u << 0,   /* connection_made ran */
    BRAID__T_DISCONNECTING = 1u << 1,   /* lose_connection: close once flushed */
    BRAID__T_SHUT_PENDING  = 1u << 2,   /* shutdown_write: shut once flushed */
    BRAID__T_WRITE_SHUT    = 1u << 3,
    BRAID__T_READ_SHUT     = 1u << 4,
    BRAID__T_CLOSED        = 1u << 5,   /* OS resources released; lost queued */
    BRAID__T_LOST_DONE     = 1u << 6,
    BRAID__T_PAUSED        = 1u << 7,   /* pause_reading */
    BRAID__T_FLUSH_QUEUED  = 1u << 8,
    BRAID__T_ABORTED       = 1u << 9,
    BRAID__T_IN_FLUSH      = 1u << 10,
    BRAID__T_IN_READ       = 1u << 11,  /* a kind is delivering input (see read_begin) */
    BRAID__T_FLUSH_AFTER   = 1u << 12,  /* a flush was asked for during it */
    BRAID__T_CLOSE_TIMER   = 1u << 13,  /* close_timer initialised (close_within) */
    BRAID__T_CLOSE_EXPIRED = 1u << 14,  /* the close deadline passed: aborted */
    BRAID__T_EARLY_FLUSH   = 1u << 15,  /* flushing from inside write (past the high watermark) */
};

typedef struct braid__transport_vt {
    const char *kind;
    /* Push buffered bytes out; report with braid__transport_wrote. Called
     * from the ready phase, after a read, on writability — and from inside
     * write when the buffer passed its high watermark (BRAID__T_EARLY_FLUSH
     * set: hand the kernel what it takes now; no callbacks follow). */
    void (*flush)(braid_transport *t);
    /* Reading on/off changed (state flags already updated). */
    void (*update_reading)(braid_transport *t);
    /* The buffer is empty and a shutdown_write is pending: shut the write side.
     * Returns 0 or a negative code (the connection is then lost with it). */
    int (*shutdown_write)(braid_transport *t);
    /* Release OS resources (stop watchers, close fds). No callbacks. */
    void (*close)(braid_transport *t);
    int (*get_addr)(braid_transport *t, bool peer, braid_address *out);
    int (*set_option)(braid_transport *t, int opt, int a, int b);
    /* After connection_lost: free the transport memory. */
    void (*free)(braid_transport *t);
    /* Optional: hand len bytes to the kernel now (the buffer is empty).
     * Bytes taken (>= 0), or a negative code. No callbacks. */
    ssize_t (*try_write)(braid_transport *t, const void *buf, size_t len);
} braid__transport_vt;

/* A write at least this large that finds the buffer empty goes straight to
 * the kernel (no copy); smaller ones coalesce in the buffer. */
#define BRAID__DIRECT_WRITE_MIN (16u * 1024)

enum { BRAID__OPT_NODELAY = 1, BRAID__OPT_KEEPALIVE = 2 };

typedef struct braid__fdmsg {          /* descriptors to send before byte `at` */
    struct braid__fdmsg *next;
    uint64_t at;                      /* absolute stream offset */
    int n;
    int fds[];
} braid__fdmsg;

struct braid_transport {
    const braid__transport_vt *vt;
    braid_loop *loop;
    braid_protocol *protocol;
    braid_handle handle;
    unsigned state;
    /* write buffer: bytes [whead, whead + wlen) of wbuf */
    char *wbuf;
    size_t whead, wlen, wcap;
    size_t low, high, cap;
    uint64_t written_total;           /* bytes accepted by write() so far */
    uint64_t sent_total;              /* bytes handed to the kernel so far */
    braid__fdmsg *fdq;                /* pending SCM_RIGHTS messages, in order */
    braid_producer *producer;
    bool producer_streaming, producer_paused;
    braid_producer self_producer;     /* the transport as a producer of reads */
    /* A kind whose kernel operation reads from wbuf in place (io_uring send)
     * sets wbuf_pinned: the buffer is then never compacted, and if it must
     * grow the old one is parked in wbuf_retired (the kind frees it when the
     * operation completes). */
    bool wbuf_pinned;
    char *wbuf_retired;
    int lost_code;
    braid_soon flush_node, lost_node;
    /* braid_transport_close: the absolute deadline on the loop clock
     * (0 = none) and its timer (initialised on first use). */
    uint64_t close_deadline;
    size_t close_unsent;              /* bytes still buffered when it passed */
    braid_timer close_timer;
};

void braid__transport_init(braid_transport *t, braid_loop *loop, const braid__transport_vt *vt);
/* Attach p and run connection_made. */
void braid__transport_attach(braid_transport *t, braid_protocol *p);
/* The one read path: hand bytes to the protocol. */
void braid__transport_data(braid_transport *t, const void *buf, size_t len);
/* A kind brackets one readiness event's (or completion's) input delivery:
 * writes the protocol makes meanwhile are flushed once, at read_end, in one
 * system call — not from the ready phase, which would touch every busy
 * connection a second time per iteration. Writes made anywhere else still
 * wait for the ready phase. */
static inline void braid__transport_read_begin(braid_transport *t) { t->state |= BRAID__T_IN_READ; }
void braid__transport_read_end(braid_transport *t);
/* A wrapper kind (TLS) whose close ends in its lower transport's
 * lose_connection passes its own close deadline down with
 * braid__transport_close_at (net/transport_ext.h). The close deadline of t (absolute, loop clock), or 0 if none was set. */
static inline uint64_t braid__transport_close_deadline(const braid_transport *t) {
    return t->close_deadline;
}
/* The peer's EOF. */
void braid__transport_eof(braid_transport *t);
/* The kind wrote n bytes from the head of the buffer. */
void braid__transport_wrote(braid_transport *t, size_t n);
/* Close with code (idempotent): release OS resources now, connection_lost in
 * the ready phase. */
void braid__transport_lost(braid_transport *t, int code);
static inline bool braid__transport_reading(const braid_transport *t) {
    return !(t->state & (BRAID__T_PAUSED | BRAID__T_READ_SHUT | BRAID__T_CLOSED |
                         BRAID__T_DISCONNECTING));
}
/* Free a protocol after connection_lost (destroy op, then memory if braid made it). */
void braid__protocol_release(braid_protocol *p);
enum { BRAID__PROTO_OWNED = 1u << 0 };

/* ---- for wrapper kinds, on the transport they wrap ---------------------------------- */
/* Can t still be written to (not closed, closing or shut for writing)? */
bool braid__transport_writable(const braid_transport *t);
/* Is a producer registered on t? */
bool braid__transport_has_producer(const braid_transport *t);
/* STARTTLS: p takes the place of t's protocol (connection_made is not run
 * again; t releases p, not the protocol it had, after connection_lost). */
void braid__transport_set_protocol(braid_transport *t, braid_protocol *p);
/* p is t's registered streaming producer: mark it paused, as if t's buffer
 * had passed the high watermark, so that t resumes it once the buffer
 * drains to the low one. false if p is not t's producer. */
bool braid__transport_pause_producer(braid_transport *t, braid_producer *p);
/* Give back the memory of t's write buffer if nothing is buffered (an idle
 * connection holds none). */
void braid__transport_trim(braid_transport *t);

#endif
