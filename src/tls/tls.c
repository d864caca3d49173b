/* TLS as a protocol wrapper over any stream transport (Twisted's
 * protocols/tls.py in C).
 *
 * One allocation per connection (braid__tls_conn) holds both halves:
 *   - the *glue* protocol, attached to the lower transport, which feeds
 *     ciphertext to the engine and writes the engine's output below;
 *   - the *TLS transport*, a transport kind (net/transport_impl.h's vtable)
 *     that the application's protocol is attached to. Its shared write buffer
 *     holds plaintext, so the watermarks, producers and the hard cap of
 *     transport.c apply to the application's writes unchanged.
 * The two halves end at different times (the lower transport outlives the
 * TLS one while it flushes close_notify), so the allocation is reference
 * counted: one reference for each half still alive.
 *
 * Flow control: plaintext moves from the TLS buffer into the engine (and out
 * as records) only while the lower buffer is below its high watermark; the
 * glue is registered as a streaming producer on the lower transport, so
 * lower's pause/resume stop and restart that movement. Aggregation: the move
 * happens in the TLS transport's flush, which transport.c runs once per
 * iteration in the ready phase — every write of the iteration is sealed
 * together. */
#include "tls/tls_internal.h"
#include "net/transport_impl.h"
#include <string.h>

#define RECORD 16384
/* transport.c frees a drained write buffer larger than 64 KiB, and the next
 * burst allocates it again — for a bulk transfer that is an allocation (and
 * often a heap trim) per round, costing more than the encryption. So the
 * lower transport's high watermark is kept one sealed record below 64 KiB
 * and its buffer never grows past that. */
#define LOWER_KEEP (64u * 1024)
#define RECORD_WIRE (RECORD + 64)          /* a sealed record, header and tag included, at most */
#define LOWER_HIGH (LOWER_KEEP - RECORD_WIRE)

typedef struct braid__tls_conn {
    braid_transport t;            /* the TLS transport (first: container_of is a cast) */
    braid_protocol glue;          /* the protocol on the lower transport */
    braid_transport *lower;       /* NULL once the lower transport is gone */
    braid_tls_engine *engine;
    braid_tls_ctx *ctx;           /* for engine creation (a reference of the connection's) */
    braid_factory *inner;         /* the factory case: builds the application protocol */
    braid_tls_handshake_cb on_handshake;
    void *hs_arg;
    uint64_t hs_timeout;
    braid_timer hs_timer;
    braid_producer lower_prod;    /* registered on the lower transport */
    braid_soon deliver_node;      /* deliver plaintext held while reading was paused */
    braid_soon trim_node;         /* release drained buffers once the lower transport flushed */
    int out_rc;                   /* first failed write of ciphertext to the lower transport */
    char *held;                   /* plaintext held while the application paused reading */
    size_t held_len, held_cap;
    unsigned refs;
    bool t_live;                  /* the TLS transport exists (until its vt->free) */
    bool lower_full;              /* lower paused us: its buffer is over its high watermark */
    bool prod_registered;
    bool timer_on;
    bool deliver_queued;
    bool trim_queued;
    bool wait_drain;              /* trim is waiting for the lower buffer to drain */
    bool client;
    char *server_name;
} braid__tls_conn;

static const braid__transport_vt tls_vt;
static const braid_protocol_ops glue_ops;

static braid__tls_conn *of_t(braid_transport *t) { return (braid__tls_conn *)t; }
static braid__tls_conn *of_glue(braid_protocol *p) {
    return braid__container_of(p, braid__tls_conn, glue);
}

static void conn_unref(braid__tls_conn *c) {
    if (--c->refs) return;
    braid_free(c->held);
    braid_free(c->server_name);
    braid_tls_ctx_unref(c->ctx);
    braid_free(c);
}

/* Queue the TLS transport's flush for the ready phase. */
static void kick(braid__tls_conn *c) {
    if (c->t_live) braid__transport_queue_flush(&c->t);
}

static void queue_trim(braid__tls_conn *c);

/* Idle connections hold no write buffers: once the lower transport has
 * flushed what we wrote (its flush was queued before this, so it usually
 * ran first) and nothing waits in either buffer, both are released — an
 * idle TLS connection then costs OpenSSL's state and the structures,
 * nothing more. If the lower transport still holds bytes (a full socket,
 * io_uring, the memory pump), we mark ourselves paused as its producer:
 * transport.c then calls lower_resume as its writes complete, and we look
 * again — on write progress only, never in a loop of our own. */
static void trim(void *arg) {
    braid__tls_conn *c = arg;
    c->trim_queued = false;
    if (c->t_live && c->lower && !c->t.wlen && !(c->t.state & (BRAID__T_IN_FLUSH | BRAID__T_CLOSED))) {
        if (braid_transport_buffered(c->lower)) {
            if (c->prod_registered && braid__transport_pause_producer(c->lower, &c->lower_prod))
                c->wait_drain = true;
        } else {
            braid__transport_trim(c->lower);
            braid__transport_trim(&c->t);
        }
    }
    conn_unref(c);
}

static void queue_trim(braid__tls_conn *c) {
    if (c->trim_queued || !c->lower) return;
    c->trim_queued = true;
    c->refs++;
    c->trim_node.fn = trim;
    c->trim_node.arg = c;
    braid_loop_soon_node(braid_transport_loop(c->lower), &c->trim_node);
}

/* The engine's ciphertext sink: records go straight into the lower
 * transport's buffer. A failed write is remembered and reported by
 * push_out after the engine call returns (the engine is never re-entered). */
static void on_ciphertext(void *arg, const void *buf, size_t len) {
    braid__tls_conn *c = arg;
    if (!c->lower || c->out_rc) return;
    int rc = braid_transport_write(c->lower, buf, len);
    if (rc < 0) {
        c->out_rc = rc;
        return;
    }
    queue_trim(c);
}

/* The outcome of the ciphertext written since the last call. */
static int push_out(braid__tls_conn *c) {
    int rc = c->out_rc;
    c->out_rc = 0;
    return rc;
}

/* End the TLS transport with code: the application's connection_lost follows
 * in the ready phase; vt->close takes care of the lower transport. */
static void fail(braid__tls_conn *c, int code) {
    if (!c->t_live || (c->t.state & BRAID__T_CLOSED)) return;
    const char *detail = "";
    if (c->engine) braid_tls_engine_error(c->engine, &detail);
    braid__log(c->t.loop, BRAID_LOG_DEBUG, "connection failed: %s%s%s", braid_strerror(code),
               *detail ? ": " : "", detail);
    braid__transport_lost(&c->t, code);
}

/* Should the lower transport read? The handshake always needs input; after
 * it, reading follows the application's wishes (and stops while we hold
 * plaintext it has not taken). */
static void update_lower_reading(braid__tls_conn *c) {
    if (!c->lower) return;
    bool want;
    if (!c->t_live || (c->t.state & BRAID__T_CLOSED)) want = false;
    else if (c->engine && !braid_tls_engine_is_handshake_done(c->engine)) want = true;
    else want = braid__transport_reading(&c->t) && !c->held_len;
    if (want) braid_transport_resume_reading(c->lower);
    else braid_transport_pause_reading(c->lower);
}

static void deliver_held(void *arg) {
    braid__tls_conn *c = arg;
    c->deliver_queued = false;
    if (!c->t_live) { conn_unref(c); return; }
    conn_unref(c);   /* the reference taken when queued; t_live keeps c alive */
    if (!c->held_len || !braid__transport_reading(&c->t)) return;
    /* Hand over everything held; the application may pause again inside,
     * in which case what it gets is what a paused TCP transport would have
     * delivered from one read. */
    char *buf = c->held;
    size_t len = c->held_len;
    c->held = NULL;
    c->held_len = c->held_cap = 0;
    braid__transport_data(&c->t, buf, len);
    braid_free(buf);
    update_lower_reading(c);
}

static void queue_deliver(braid__tls_conn *c) {
    if (c->deliver_queued) return;
    c->deliver_queued = true;
    c->refs++;
    c->deliver_node.fn = deliver_held;
    c->deliver_node.arg = c;
    braid_loop_soon_node(c->t.loop, &c->deliver_node);
}

/* ---- engine callbacks ------------------------------------------------------------- */

static void on_plaintext(void *arg, const void *buf, size_t len) {
    braid__tls_conn *c = arg;
    braid_transport *t = &c->t;
    if (!c->t_live || (t->state & (BRAID__T_CLOSED | BRAID__T_READ_SHUT))) return;
    if (braid__transport_reading(t) && !c->held_len) {
        braid__transport_data(t, buf, len);
        return;
    }
    /* Paused: keep it (at most what one lower read decrypts to, since the
     * lower transport is paused too) for when reading resumes. */
    if (c->held_len + len > c->held_cap) {
        size_t cap = c->held_cap ? c->held_cap * 2 : 16384;
        while (cap < c->held_len + len) cap *= 2;
        char *g = braid_realloc(c->held, cap);
        if (!g) { fail(c, BRAID_ENOMEM); return; }
        c->held = g;
        c->held_cap = cap;
    }
    memcpy(c->held + c->held_len, buf, len);
    c->held_len += len;
    update_lower_reading(c);
}

static void on_handshake(void *arg, const braid_tls_info *info) {
    braid__tls_conn *c = arg;
    if (c->timer_on) {
        braid_timer_stop(&c->hs_timer);
        c->timer_on = false;
    }
    if (c->on_handshake && c->t_live && c->t.protocol && !(c->t.state & BRAID__T_CLOSED))
        c->on_handshake(c->t.protocol, info, c->hs_arg);
    kick(c);                    /* plaintext written before the handshake can go now */
    update_lower_reading(c);
}

static const braid_tls_engine_ops engine_ops = { .plaintext = on_plaintext,
                                                 .handshake_done = on_handshake,
                                                 .ciphertext = on_ciphertext };

static void hs_timeout(braid_timer *tm, void *arg) {
    braid__tls_conn *c = arg;
    BRAID__UNUSED(tm);
    c->timer_on = false;
    fail(c, BRAID_ETLS_TIMEOUT);
}

/* ---- the lower transport's producer: its buffer is full / has drained ---------------- */

static void lower_pause(braid_producer *p) {
    braid__tls_conn *c = p->arg;
    c->lower_full = true;
}
static void lower_resume(braid_producer *p) {
    braid__tls_conn *c = p->arg;
    c->lower_full = false;
    kick(c);
    if (c->wait_drain) {
        c->wait_drain = false;
        queue_trim(c);
    }
}
static void lower_stop(braid_producer *p) {
    braid__tls_conn *c = p->arg;
    c->prod_registered = false;
}

/* Start TLS on a glue already attached to its lower transport, with app
 * (may be NULL: built through the factory) as the application protocol. */
static int start(braid__tls_conn *c, braid_protocol *app, bool app_attached) {
    braid_transport *lower = c->lower;
    braid_loop *loop = braid_transport_loop(lower);
    /* Keep the lower buffer within LOWER_KEEP (unless its owner chose limits). */
    size_t low, high;
    braid__transport_watermarks(lower, &low, &high);
    if (high == BRAID__DEFAULT_HIGH)
        braid_transport_set_limits(lower, low < LOWER_HIGH ? low : LOWER_HIGH, LOWER_HIGH, 0);
    int rc = braid_tls_engine_new(c->ctx, c->server_name, &engine_ops, c, &c->engine);
    if (rc < 0) return rc;
    if (app_attached) {
        /* STARTTLS: the glue takes the application's place on the lower
         * transport (which will release the glue, not the application). */
        braid__transport_set_protocol(lower, &c->glue);
        c->glue.transport = lower;
    }
    braid__transport_init(&c->t, loop, &tls_vt);
    c->t_live = true;
    c->refs++;
    c->lower_prod = (braid_producer){ .pause_producing = lower_pause, .resume_producing = lower_resume,
                                      .stop_producing = lower_stop, .arg = c };
    if (braid_transport_register_producer(lower, &c->lower_prod, true) == 0) c->prod_registered = true;
    if (c->hs_timeout != BRAID_FOREVER) {
        braid_timer_init(loop, &c->hs_timer, hs_timeout, c);
        braid_timer_start(&c->hs_timer, c->hs_timeout);
        c->timer_on = true;
    }
    if (app_attached) {
        /* STARTTLS: the protocol moves from the lower transport to ours. */
        c->t.protocol = app;
        app->transport = &c->t;
        c->t.state |= BRAID__T_MADE;
    } else {
        braid_address peer = { .len = 0 };   /* not kept: an idle connection's bytes count */
        if (braid_transport_peer(lower, &peer) < 0) memset(&peer, 0, sizeof peer);
        if (!app) app = braid_factory_build(c->inner, &peer);
        if (!app) {
            braid__transport_lost(&c->t, BRAID_ECONNECTION_DONE);   /* refused */
            return 0;
        }
        braid__transport_attach(&c->t, app);
    }
    if (push_out(c) < 0) fail(c, BRAID_ECONNECTION_LOST);    /* the ClientHello */
    update_lower_reading(c);
    return 0;
}

/* ---- the glue protocol (on the lower transport) --------------------------------------- */

static void glue_made(braid_protocol *p) {
    braid__tls_conn *c = of_glue(p);
    c->lower = p->transport;
    int rc = start(c, NULL, false);
    if (rc < 0) {
        braid__log(braid_transport_loop(c->lower), BRAID_LOG_WARN, "cannot start: %s",
                   braid_strerror(rc));
        braid_transport_abort(c->lower);
    }
}

static void glue_data(braid_protocol *p, const void *buf, size_t len) {
    braid__tls_conn *c = of_glue(p);
    if (!c->t_live || (c->t.state & BRAID__T_CLOSED)) return;
    c->refs++;   /* the application may end the connection from a callback */
    int rc = braid_tls_engine_feed(c->engine, buf, len);
    int wrc = push_out(c);
    if (rc == BRAID_ECONNECTION_DONE) {
        /* close_notify: the peer has finished sending (our answer is out). */
        if (c->t_live && !(c->t.state & BRAID__T_CLOSED)) braid__transport_eof(&c->t);
    } else if (rc < 0) {
        fail(c, rc);
    } else if (wrc < 0) {
        fail(c, wrc);
    }
    conn_unref(c);
}

static void glue_read_lost(braid_protocol *p) {
    braid__tls_conn *c = of_glue(p);
    if (!c->t_live || (c->t.state & BRAID__T_CLOSED)) {
        if (c->lower) braid_transport_close(c->lower, BRAID_FOREVER);
        return;
    }
    int rc = braid_tls_engine_feed_eof(c->engine);
    if (rc != BRAID_ECONNECTION_DONE) fail(c, rc);   /* EOF without close_notify */
    else if (c->lower) braid_transport_close(c->lower, BRAID_FOREVER);
}

static void glue_lost(braid_protocol *p, const braid_failure *reason) {
    braid__tls_conn *c = of_glue(p);
    if (c->prod_registered) c->prod_registered = false;   /* transport.c stopped it */
    c->lower = NULL;
    if (c->t_live && !(c->t.state & BRAID__T_CLOSED)) {
        int code = reason ? reason->code : BRAID_ECONNECTION_LOST;
        if (code == BRAID_ECONNECTION_DONE) code = BRAID_ETLS_TRUNCATED;
        braid__transport_lost(&c->t, code);
    }
}

static void glue_destroy(braid_protocol *p) { conn_unref(of_glue(p)); }

static const braid_protocol_ops glue_ops = {
    .connection_made = glue_made,
    .data_received = glue_data,
    .read_connection_lost = glue_read_lost,
    .connection_lost = glue_lost,
    .destroy = glue_destroy,
};

/* ---- the TLS transport kind --------------------------------------------------------------- */

static void tls_flush(braid_transport *t) {
    braid__tls_conn *c = of_t(t);
    if (!c->lower || !c->engine || !braid_tls_engine_is_handshake_done(c->engine)) return;
    size_t lower_high;
    braid__transport_watermarks(c->lower, NULL, &lower_high);
    while (t->wlen && !(t->state & BRAID__T_CLOSED)) {
        size_t below = braid_transport_buffered(c->lower);
        if (c->lower_full || below >= lower_high) {
            /* Without our producer registered (STARTTLS over a transport
             * that had one) nothing would wake us: poll again next round. */
            if (!c->prod_registered) kick(c);
            return;
        }
        /* Up to the lower high watermark (so the lower transport pauses
         * us and its resume brings us back), at least one record. */
        size_t n = lower_high - below;
        if (n < RECORD) n = RECORD;
        if (n > t->wlen) n = t->wlen;
        int rc = braid_tls_engine_write(c->engine, t->wbuf + t->whead, n);
        if (rc == 0) rc = braid_tls_engine_flush(c->engine);
        if (rc == 0) rc = push_out(c);
        if (rc < 0) { fail(c, rc); return; }
        braid__transport_wrote(t, n);
    }
}

static void tls_update_reading(braid_transport *t) {
    braid__tls_conn *c = of_t(t);
    update_lower_reading(c);
    if (c->held_len && braid__transport_reading(t)) queue_deliver(c);
}

static int tls_shutdown_write(braid_transport *t) {
    braid__tls_conn *c = of_t(t);
    int rc = braid_tls_engine_shutdown(c->engine);
    if (rc == 0) rc = push_out(c);
    if (rc == 0 && c->lower) rc = braid_transport_shutdown_write(c->lower);
    return rc;
}

static void tls_close(braid_transport *t) {
    braid__tls_conn *c = of_t(t);
    if (c->timer_on) {
        braid_timer_stop(&c->hs_timer);
        c->timer_on = false;
    }
    braid_free(c->held);
    c->held = NULL;
    c->held_len = c->held_cap = 0;
    if (!c->lower) return;
    if (c->prod_registered) {
        braid_transport_unregister_producer(c->lower);
        c->prod_registered = false;
    }
    if (t->state & BRAID__T_ABORTED) {
        braid_transport_abort(c->lower);
        return;
    }
    /* A clean close sends close_notify; a failed one sends the alert OpenSSL
     * queued. Either way the lower transport flushes, then closes. */
    if (t->lost_code == BRAID_ECONNECTION_DONE) braid_tls_engine_shutdown(c->engine);
    push_out(c);
    /* A close with a deadline (braid_transport_close) bounds the
     * lower transport's flush too: the same deadline passes down. */
    uint64_t deadline = braid__transport_close_deadline(t);
    if (deadline) braid__transport_close_at(c->lower, deadline);
    else braid_transport_close(c->lower, BRAID_FOREVER);
}

static int tls_get_addr(braid_transport *t, bool peer, braid_address *out) {
    braid__tls_conn *c = of_t(t);
    if (!c->lower) return BRAID_ESHUTDOWN;
    return peer ? braid_transport_peer(c->lower, out) : braid_transport_host(c->lower, out);
}

static int tls_set_option(braid_transport *t, int opt, int a, int b) {
    braid__tls_conn *c = of_t(t);
    if (!c->lower) return BRAID_ESHUTDOWN;
    if (opt == BRAID__OPT_NODELAY) return braid_transport_set_nodelay(c->lower, a);
    if (opt == BRAID__OPT_KEEPALIVE) return braid_transport_set_keepalive(c->lower, a, b);
    return BRAID_ENOSYS;
}

static void tls_free(braid_transport *t) {
    braid__tls_conn *c = of_t(t);
    braid_tls_engine_free(c->engine);
    c->engine = NULL;
    c->t_live = false;
    conn_unref(c);
}

static const braid__transport_vt tls_vt = {
    .kind = "tls",
    .flush = tls_flush,
    .update_reading = tls_update_reading,
    .shutdown_write = tls_shutdown_write,
    .close = tls_close,
    .get_addr = tls_get_addr,
    .set_option = tls_set_option,
    .free = tls_free,
};

/* ---- public API ------------------------------------------------------------------------------ */

static braid__tls_conn *conn_new(const braid_tls_wrap_options *o, const char *server_name) {
    braid__tls_conn *c = braid_calloc(1, sizeof *c);
    if (!c) return NULL;
    if (server_name && !(c->server_name = braid_strdup(server_name))) {
        braid_free(c);
        return NULL;
    }
    c->glue.ops = &glue_ops;
    c->ctx = braid_tls_ctx_ref(o->ctx);   /* the connection may outlive its factory */
    c->on_handshake = o->handshake_done;
    c->hs_arg = o->handshake_arg;
    c->hs_timeout = o->handshake_timeout ? o->handshake_timeout
                                         : braid_tls_ctx_handshake_timeout(o->ctx);
    c->refs = 1;    /* the glue's, dropped by its destroy */
    return c;
}

static braid_protocol *tls_build(braid_factory *f, const braid_address *peer) {
    braid_tls_factory *tf = (braid_tls_factory *)f;
    braid__tls_conn *c = conn_new(&tf->opts, tf->server_name);
    if (!c) return NULL;
    c->inner = tf->inner;
    (void)peer;   /* the inner factory gets the lower transport's peer when it is made */
    return &c->glue;
}

static void tls_factory_start(braid_factory *f) { braid_factory_ref(((braid_tls_factory *)f)->inner); }
static void tls_factory_stop(braid_factory *f) { braid_factory_unref(((braid_tls_factory *)f)->inner); }

int braid_tls_factory_init(braid_tls_factory *tf, braid_factory *inner, const braid_tls_wrap_options *o) {
    memset(tf, 0, sizeof *tf);
    if (!inner || !o || !o->ctx) return BRAID_EINVAL;
    if (o->server_name && !(tf->server_name = braid_strdup(o->server_name))) return BRAID_ENOMEM;
    tf->base.build_protocol = tls_build;
    tf->base.start = tls_factory_start;
    tf->base.stop = tls_factory_stop;
    tf->inner = inner;
    tf->opts = *o;
    tf->opts.server_name = tf->server_name;
    tf->opts.initial = NULL;
    tf->opts.initial_len = 0;
    braid_tls_ctx_ref(o->ctx);
    return 0;
}

void braid_tls_factory_close(braid_tls_factory *tf) {
    if (tf->opts.ctx) braid_tls_ctx_unref(tf->opts.ctx);
    braid_free(tf->server_name);
    memset(tf, 0, sizeof *tf);
}

braid_protocol *braid_tls_wrapped_protocol(braid_protocol *glue) {
    if (!glue || glue->ops != &glue_ops) return NULL;
    braid__tls_conn *c = of_glue(glue);
    return c->t_live ? c->t.protocol : NULL;
}

int braid_tls_start(braid_protocol *p, const braid_tls_wrap_options *o) {
    if (!p || !p->transport || !o || !o->ctx) return BRAID_EINVAL;
    braid_transport *lower = p->transport;
    if (!braid__transport_writable(lower)) return BRAID_ESHUTDOWN;
    if (braid__transport_has_producer(lower)) return BRAID_EBUSY;
    braid__tls_conn *c = conn_new(o, o->server_name);
    if (!c) return BRAID_ENOMEM;
    c->lower = lower;
    int rc = start(c, p, true);
    if (rc < 0) {
        conn_unref(c);
        return rc;
    }
    if (o->initial_len) glue_data(&c->glue, o->initial, o->initial_len);
    return 0;
}

bool braid_tls_is_transport(const braid_transport *t) { return t && t->vt == &tls_vt; }

const braid_tls_info *braid_tls_transport_info(braid_transport *t) {
    if (!braid_tls_is_transport(t) || !of_t(t)->engine) return NULL;
    return braid_tls_engine_info(of_t(t)->engine);
}

int braid_tls_transport_error(braid_transport *t, const char **detail) {
    if (!braid_tls_is_transport(t) || !of_t(t)->engine) {
        if (detail) *detail = "";
        return 0;
    }
    return braid_tls_engine_error(of_t(t)->engine, detail);
}

braid_transport *braid_tls_transport_lower(braid_transport *t) {
    return braid_tls_is_transport(t) ? of_t(t)->lower : NULL;
}

/* TLS's endpoint kinds (endpoint_tls.c) are registered when the module is
 * loaded; the call from here makes a static link that uses the TLS wrapper
 * keep endpoint_tls.o too. (Not in ctx.c: the engine and contexts stand
 * alone, without the loop or endpoints.) */
__attribute__((constructor)) static void register_endpoints_at_load(void) {
    (void)braid_tls_endpoints_register();
}
