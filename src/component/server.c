/* The network as a component: Kamaelia's ConnectedServer and
 * ConnectedSocketAdapter. A protocol factory whose every connection gets a
 * *connection* component (standing for the socket) wired to a handler
 * component the application builds.
 *
 * Lifetimes: the protocol (built and freed by the net layer) points at a
 * `conn` record; the record owns both components and outlives the protocol
 * when the handler is still draining. A record is reaped (in a ready call)
 * once the transport is gone and the handler has ended. */
#include "component/component_internal.h"

#include <braid/stream.h>
#include <string.h>

braid_component_chunk *braid_component_chunk_new(const void *data, size_t len) {
    if (len > SIZE_MAX - sizeof(braid_component_chunk)) return NULL;
    braid_component_chunk *ch = braid_malloc(sizeof *ch + len);
    if (!ch) return NULL;
    ch->len = len;
    if (len) memcpy(ch->data, data, len);
    return ch;
}

typedef struct conn conn;

struct braid_component_server {
    braid_factory factory;        /* first: the protocols find the server through it */
    braid_loop *loop;
    braid_component_connection_fn make;
    void *arg;
    conn *conns;                  /* every record not yet reaped */
    size_t n;
};

typedef struct cproto {
    braid_protocol base;
    conn *c;                      /* NULL once the server was freed */
} cproto;

struct conn {
    braid_component_server *srv;
    cproto *proto;                /* NULL once the connection is gone */
    braid_transport *t;           /* NULL once the connection is gone */
    braid_component *sock, *handler;
    braid_component_chunk *held;  /* read while the handler's inbox was full */
    bool paused, closing, reap_queued;
    bool dying;                   /* being freed: the handler's end queues nothing */
    bool orphan;                  /* its server is gone; the queued reap frees it */
    braid_soon reap;
    conn *prev, *next;
};

static void conn_unlist(conn *c) {
    braid_component_server *s = c->srv;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    s->n--;
}

static void conn_free(conn *c) {
    c->dying = true;
    braid_component_free(c->handler);
    braid_component_free(c->sock);
    braid_free(c->held);
    braid_free(c);
}

static void reap(void *arg) {
    conn *c = arg;
    c->reap_queued = false;
    if (c->orphan) {
        conn_free(c);
        return;
    }
    if (c->t || (c->handler && !braid_component_is_done(c->handler))) return;
    conn_unlist(c);
    conn_free(c);
}

static void queue_reap(conn *c) {
    if (c->reap_queued) return;
    c->reap_queued = true;
    braid_loop_soon_node(c->srv->loop, &c->reap);
}

/* The socket component: writes what the handler sends, hands on what was
 * read when there is room, closes on the handler's signal. */
static int sock_run(braid_component *sc, void *state) {
    conn *c = state;
    if (c->held) {
        if (braid_component_send(sc, BRAID_COMPONENT_OUTBOX, c->held, braid_free) == BRAID_EBOX_FULL) {
            braid_component_wake_on_pop(sc, BRAID_COMPONENT_OUTBOX);
        } else {
            c->held = NULL;
            if (c->paused && c->t) {
                c->paused = false;
                braid_transport_resume_reading(c->t);
            }
        }
    }
    braid_component_msg m;
    while (braid_component_recv(sc, BRAID_COMPONENT_INBOX, &m) == 0) {
        const braid_component_chunk *ch = m.ptr;
        if (c->t && !c->closing && ch) braid_transport_write(c->t, ch->data, ch->len);
        braid_component_msg_free(m);
    }
    while (braid_component_recv(sc, BRAID_COMPONENT_CONTROL, &m) == 0) {
        if (braid_component_is_shutdown_msg(m.ptr) && c->t && !c->closing) {
            c->closing = true;
            braid_transport_close(c->t, BRAID_FOREVER);   /* after what is buffered */
        }
        braid_component_msg_free(m);
    }
    if (!c->t && braid_component_is_done(c->handler)) queue_reap(c);
    return BRAID_COMPONENT_IDLE;
}

static braid_result handler_done(braid_result r, void *arg) {
    conn *c = arg;
    braid_result_drop(r);
    if (!c->dying) queue_reap(c);
    return braid_result_ok(NULL);
}

static void on_made(braid_protocol *p) {
    cproto *cp = (cproto *)p;
    braid_component_server *s = (braid_component_server *)p->factory;
    conn *c = braid_calloc(1, sizeof *c);
    if (!c) goto fail;
    c->srv = s;
    c->proto = cp;
    c->t = p->transport;
    c->reap = (braid_soon){ NULL, reap, c };
    braid_component_options so = { .name = "connection" };
    if (braid_component_new(s->loop, sock_run, c, &so, &c->sock) < 0) goto fail;
    braid_address peer = { 0 };
    braid_transport_peer(p->transport, &peer);
    if (s->make(s->loop, &peer, s->arg, &c->handler) < 0 || !c->handler) goto fail;
    braid_deferred *d = braid_component_when_done(c->handler);
    if (!d || braid_deferred_add_both(d, handler_done, c) < 0) {
        if (d) braid_deferred_unref(d);
        goto fail;
    }
    braid_deferred_unref(d);
    /* a handler that ends from here on queues the reap; handler_done may
     * only run while c lives: conn_free frees the handler first, which
     * fires it (ECANCELED) while c is still valid */
    if (braid_component_link(c->handler, "outbox", c->sock, "inbox", 0) < 0 ||
        braid_component_link(c->handler, "signal", c->sock, "control", 0) < 0 ||
        braid_component_link(c->sock, "outbox", c->handler, "inbox", 0) < 0 ||
        braid_component_link(c->sock, "signal", c->handler, "control", 0) < 0 ||
        braid_component_activate(c->sock) < 0 || braid_component_activate(c->handler) < 0)
        goto fail;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n++;
    cp->c = c;
    return;
fail:
    if (c) conn_free(c);   /* the handler's when_done fires into handler_done(c) while c lives */
    braid_transport_abort(p->transport);
}

static void on_data(braid_protocol *p, const void *buf, size_t len) {
    conn *c = ((cproto *)p)->c;
    if (!c || c->closing) return;
    braid_component_chunk *ch = braid_component_chunk_new(buf, len);
    if (!ch) {
        braid_transport_abort_with(p->transport, BRAID_ENOMEM);
        return;
    }
    if (c->held) {   /* paused but the transport had more in hand: keep order */
        braid_component_chunk *both = braid_realloc(c->held, sizeof *both + c->held->len + len);
        if (!both) {
            braid_free(ch);
            braid_transport_abort_with(p->transport, BRAID_ENOMEM);
            return;
        }
        memcpy(both->data + both->len, buf, len);
        both->len += len;
        c->held = both;
        braid_free(ch);
        return;
    }
    int rc = braid_component_send(c->sock, BRAID_COMPONENT_OUTBOX, ch, braid_free);
    if (rc == 0) return;
    if (rc != BRAID_EBOX_FULL) {
        braid_free(ch);
        braid_transport_abort_with(p->transport, rc);
        return;
    }
    c->held = ch;   /* backpressure: stop reading until the handler pops */
    c->paused = true;
    braid_transport_pause_reading(p->transport);
    braid_component_wake_on_pop(c->sock, BRAID_COMPONENT_OUTBOX);
}

static void on_lost(braid_protocol *p, const braid_failure *reason) {
    BRAID__UNUSED(reason);
    conn *c = ((cproto *)p)->c;
    if (!c) return;
    c->t = NULL;
    c->proto = NULL;
    ((cproto *)p)->c = NULL;
    /* what was read and not yet handed on goes first, then the signal */
    if (c->held && braid_component_send(c->sock, BRAID_COMPONENT_OUTBOX, c->held, braid_free) == 0) c->held = NULL;
    braid_component_send(c->sock, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_PRODUCER_FINISHED, NULL);
    queue_reap(c);
}

static const braid_protocol_ops conn_ops = {
    .connection_made = on_made,
    .data_received = on_data,
    .connection_lost = on_lost,
};

int braid_component_server_new(braid_loop *loop, braid_component_connection_fn make, void *arg,
                               braid_component_server **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!make || !out) return BRAID_EINVAL;
    braid_component_server *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    braid_factory_init(&s->factory, &conn_ops, sizeof(cproto), s);
    s->loop = loop;
    s->make = make;
    s->arg = arg;
    *out = s;
    return 0;
}

braid_factory *braid_component_server_factory(braid_component_server *s) { return &s->factory; }
size_t braid_component_server_connections(const braid_component_server *s) { return s->n; }

void braid_component_server_free(braid_component_server *s) {
    if (!s) return;
    BRAID__LOOP_AFFINE(s->loop);
    while (s->conns) {
        conn *c = s->conns;
        conn_unlist(c);
        if (c->proto) c->proto->c = NULL;
        if (c->t) braid_transport_abort(c->t);
        c->t = NULL;
        if (c->reap_queued && !braid_loop_soon_cancel(s->loop, &c->reap)) {
            c->orphan = true;   /* its reap runs in this ready phase and frees it */
            continue;
        }
        conn_free(c);
    }
    braid_free(s);
}
