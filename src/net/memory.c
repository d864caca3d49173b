/* Test doubles shipped in the library: the memory transport (Twisted's
 * StringTransport, with producer and half-close state) and the pump that
 * connects two protocols through two memory transports (Twisted's iosim).
 *
 * A memory transport is a real braid_transport: the shared code in
 * transport.c does the buffering, watermarks, hard cap and close
 * sequencing; only "the kernel" is replaced by the test, which consumes the
 * written bytes when it likes. */
#include "net/net_internal.h"
#include <netinet/in.h>
#include <string.h>

struct braid_memory_transport {
    braid_transport base;
    bool core_done;      /* transport.c finished with it (after connection_lost) */
    bool user_freed;
};

static void m_flush(braid_transport *t) { (void)t; /* the test consumes */ }
static void m_update_reading(braid_transport *t) { (void)t; }
static int m_shutdown_write(braid_transport *t) { (void)t; return 0; }
static void m_close(braid_transport *t) { (void)t; }

static int m_get_addr(braid_transport *t, bool peer, braid_address *out) {
    (void)t;
    memset(out, 0, sizeof *out);
    struct sockaddr_in *s = (struct sockaddr_in *)&out->ss;
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(peer ? 0x0a000002 : 0x0a000001);   /* 10.0.0.2 / 10.0.0.1 */
    s->sin_port = htons(peer ? 40000 : 1);
    out->len = sizeof *s;
    return 0;
}

static int m_set_option(braid_transport *t, int opt, int a, int b) {
    (void)t; (void)opt; (void)a; (void)b;
    return 0;
}

static void m_free(braid_transport *t) {
    braid_memory_transport *m = (braid_memory_transport *)t;
    m->core_done = true;
    if (m->user_freed) braid_free(m);
}

static const braid__transport_vt vt_memory = {
    "memory", m_flush, m_update_reading, m_shutdown_write, m_close, m_get_addr, m_set_option, m_free, NULL };

int braid_memory_transport_new(braid_loop *loop, braid_protocol *p, braid_memory_transport **out) {
    braid_memory_transport *m = braid_calloc(1, sizeof *m);
    if (!m) return BRAID_ENOMEM;
    braid__transport_init(&m->base, loop, &vt_memory);
    *out = m;                      /* before attach: connection_made may look */
    if (p) braid__transport_attach(&m->base, p);
    return 0;
}

braid_transport *braid_memory_transport_base(braid_memory_transport *m) { return &m->base; }

const void *braid_memory_transport_data(braid_memory_transport *m, size_t *len) {
    *len = m->base.wlen;
    return m->base.wbuf ? m->base.wbuf + m->base.whead : "";
}

void braid_memory_transport_consume(braid_memory_transport *m, size_t n) {
    braid_transport *t = &m->base;
    if (t->state & BRAID__T_CLOSED) return;
    if (n > t->wlen) n = t->wlen;
    braid__transport_wrote(t, n);
}

int braid_memory_transport_receive(braid_memory_transport *m, const void *buf, size_t len) {
    braid_transport *t = &m->base;
    if (!braid__transport_reading(t)) return BRAID_EAGAIN;
    braid__transport_data(t, buf, len);
    return 0;
}

void braid_memory_transport_peer_eof(braid_memory_transport *m) { braid__transport_eof(&m->base); }

void braid_memory_transport_peer_lost(braid_memory_transport *m, int code) {
    braid__transport_lost(&m->base, code ? code : BRAID_ECONNECTION_LOST);
}

void braid_memory_transport_state(const braid_memory_transport *m,
                                  struct braid_memory_transport_state *out) {
    const braid_transport *t = &m->base;
    *out = (struct braid_memory_transport_state){
        .disconnecting = (t->state & BRAID__T_DISCONNECTING) && !(t->state & BRAID__T_CLOSED),
        .write_shut = t->state & BRAID__T_WRITE_SHUT,
        .read_shut = t->state & BRAID__T_READ_SHUT,
        .closed = t->state & BRAID__T_CLOSED,
        .lost_delivered = t->state & BRAID__T_LOST_DONE,
        .aborted = t->state & BRAID__T_ABORTED,
        .reading_paused = t->state & BRAID__T_PAUSED,
        .producer_registered = t->producer != NULL,
        .producer_streaming = t->producer && t->producer_streaming,
        .producer_paused = t->producer && t->producer_paused,
        .lost_code = t->lost_code,
        .bytes_written = t->written_total,
    };
}

void braid_memory_transport_free(braid_memory_transport *m) {
    if (!m) return;
    if (m->core_done) { braid_free(m); return; }
    /* Still open, or its connection_lost still queued: it frees itself when
     * that has run (the next ready phase). */
    m->user_freed = true;
    braid_transport_abort(&m->base);
}

/* ---- the pump ---------------------------------------------------------------------------- */
struct braid_pump {
    braid_loop *loop;
    braid_memory_transport *side[2];   /* 0 client, 1 server */
    bool eof_sent[2];                  /* side i's FIN/close was passed to the other */
};

int braid_pump_new(braid_loop *loop, braid_protocol *client, braid_protocol *server,
                   braid_pump **out) {
    braid_pump *p = braid_calloc(1, sizeof *p);
    if (!p) return BRAID_ENOMEM;
    p->loop = loop;
    braid_memory_transport_new(loop, NULL, &p->side[1]);
    braid_memory_transport_new(loop, NULL, &p->side[0]);
    if (!p->side[0] || !p->side[1]) {
        for (int i = 0; i < 2; i++) {   /* never attached: nothing queued yet */
            if (!p->side[i]) continue;
            braid_handle_close(loop, &p->side[i]->base.handle);
            braid_free(p->side[i]);
        }
        braid_free(p);
        return BRAID_ENOMEM;
    }
    /* The server learns of the connection first, as with a real accept. */
    *out = p;
    braid__transport_attach(&p->side[1]->base, server);
    braid__transport_attach(&p->side[0]->base, client);
    return 0;
}

braid_memory_transport *braid_pump_client(braid_pump *p) { return p->side[0]; }
braid_memory_transport *braid_pump_server(braid_pump *p) { return p->side[1]; }

/* Move what side a wrote to side b; returns bytes moved or state changes. */
static size_t pump_one(braid_pump *p, int a) {
    braid_transport *ta = &p->side[a]->base, *tb = &p->side[1 - a]->base;
    size_t moved = 0;
    char chunk[16384];
    while (ta->wlen && !(ta->state & BRAID__T_CLOSED)) {
        if (tb->state & BRAID__T_CLOSED) {
            /* Writing to a peer that is gone: a reset, as TCP would say. */
            braid__transport_lost(ta, BRAID_ECONNRESET);
            return moved + 1;
        }
        if (!braid__transport_reading(tb)) break;   /* the reader paused: backpressure */
        size_t n = ta->wlen < sizeof chunk ? ta->wlen : sizeof chunk;
        memcpy(chunk, ta->wbuf + ta->whead, n);
        braid__transport_wrote(ta, n);
        braid__transport_data(tb, chunk, n);
        moved += n;
    }
    if (!p->eof_sent[a] && (ta->state & (BRAID__T_WRITE_SHUT | BRAID__T_CLOSED))) {
        p->eof_sent[a] = true;
        if (!(tb->state & BRAID__T_CLOSED)) {
            if ((ta->state & BRAID__T_ABORTED) || ta->lost_code == BRAID_ECONNRESET)
                braid__transport_lost(tb, BRAID_ECONNRESET);
            else
                braid__transport_eof(tb);
        }
        moved++;
    }
    return moved;
}

size_t braid_pump_flush(braid_pump *p) {
    size_t total = 0;
    for (int rounds = 0; rounds < 100000; rounds++) {
        size_t moved = pump_one(p, 0) + pump_one(p, 1);
        /* run the ready phase: flush requests, pending closes, connection_lost */
        bool had_soon = braid__loop_has_ready(p->loop);
        if (had_soon) braid_loop_run_once(p->loop, BRAID_LOOP_RUN_NOWAIT);
        total += moved;
        if (!moved && !had_soon) break;
    }
    return total;
}

void braid_pump_free(braid_pump *p) {
    if (!p) return;
    braid_loop *loop = p->loop;
    braid_memory_transport_free(p->side[0]);
    braid_memory_transport_free(p->side[1]);
    braid_free(p);
    /* deliver the connection_lost calls the aborts queued, which frees the sides */
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
}
