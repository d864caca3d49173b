/* The client on a loop: the space's operations as Deferreds against a
 * space served elsewhere (server.c), pipelined, replies matched by id.
 *
 * The client (the user's) and its protocol (the transport's, freed after
 * connection_lost) are two objects pointing at each other until one goes:
 * client_free aborts the connection and unhooks the protocol; a connection
 * that ends fails every pending call and unhooks the client. */
#include "tuplespace_internal.h"
#include "loop/loop_module.h"
#include <braid/endpoint.h>
#include <braid/framing.h>
#include <braid/stream.h>
#include <unistd.h>

typedef struct ts_cproto ts_cproto;

typedef struct ts_creq {
    ts_hnode h;                    /* in c->reqs, hash = id */
    braid_tuplespace_client *c;
    braid_deferred *d;
    uint8_t op;
} ts_creq;

struct braid_tuplespace_client {
    braid_loop *loop;
    ts_cproto *p;                  /* NULL once the connection ended */
    braid_tuplespace_client_options o;
    braid_factory factory;         /* client_connect's */
    ts_htab reqs;
    uint32_t next_id;
    ts_buf out;
    int lost_code;
    braid_introspect_node inode;   /* its entry in the loop's "tuplespace_clients" section */
};

struct ts_cproto {
    braid_protocol base;
    braid_framer framer;
    braid_tuplespace_client *c;    /* NULL once the client was freed */
};

/* ---- requests ----------------------------------------------------------------------- */
/* Write the frame in c->out: 0, or the transport's error (nothing sent). */
static int send_frame(braid_tuplespace_client *c) {
    int rc = 0;
    if (c->out.failed) rc = BRAID_ENOMEM;
    else if (!c->p) rc = c->lost_code ? c->lost_code : BRAID_ECONNECTION_LOST;
    else if (c->out.len) rc = braid_transport_write(c->p->base.transport, c->out.p, c->out.len);
    c->out.len = 0;
    c->out.failed = false;
    return rc;
}

static void req_cancel(braid_deferred *d, void *arg) {
    (void)d;
    ts_creq *q = arg;
    braid_tuplespace_client *c = q->c;
    braid__ts_htab_remove(&c->reqs, &q->h);
    if (c->p) {
        /* If this cannot be sent, the server keeps the call until the
         * connection ends, and its late reply is ignored. */
        c->out.len = 0;
        size_t at = braid__ts_wire_begin(&c->out, TS_OP_CANCEL, (uint32_t)q->h.hash);
        braid__ts_wire_end(&c->out, at);
        (void)send_frame(c);
    }
    braid_free(q);                 /* braid fails d with BRAID_ECANCELED */
}

/* Start a request: the frame header is written into c->out; the caller
 * adds the body and calls finish. NULL (and *d set to a failed Deferred or
 * NULL) when it cannot start. */
static ts_creq *start(braid_tuplespace_client *c, uint8_t op, braid_deferred **d, size_t *at) {
    BRAID__LOOP_AFFINE(c->loop);
    if (!c->p) {
        *d = braid_deferred_fail(c->loop, braid_failure_new(c->lost_code ? c->lost_code : BRAID_ECONNECTION_LOST,
                                                   "tuple space client: not connected"));
        return NULL;
    }
    ts_creq *q = braid_calloc(1, sizeof *q);
    if (!q) {
        *d = braid_deferred_fail(c->loop, braid_failure_new(BRAID_ENOMEM, "tuple space client: out of memory"));
        return NULL;
    }
    *d = braid_deferred_new_cancellable(c->loop, req_cancel, q);
    if (!*d) { braid_free(q); return NULL; }
    if (++c->next_id == 0) c->next_id = 1;
    q->c = c;
    q->d = *d;
    q->op = op;
    q->h.hash = c->next_id;
    c->out.len = 0;
    c->out.failed = false;
    *at = braid__ts_wire_begin(&c->out, op, c->next_id);
    return q;
}

static braid_deferred *finish(braid_tuplespace_client *c, ts_creq *q, braid_deferred *d, size_t at) {
    braid__ts_wire_end(&c->out, at);
    int rc = send_frame(c);
    if (rc < 0) {
        braid_free(q);
        braid_deferred_errback(d, braid_failure_new(rc, "tuple space client: sending the request"));
        return d;
    }
    braid__ts_htab_insert(&c->reqs, &q->h);
    return d;
}

static braid_deferred *bad(braid_tuplespace_client *c, int rc) {
    return braid_deferred_fail(c->loop, braid_failure_new(rc, "tuple space client: invalid fields"));
}

static braid_deferred *call_fields(braid_tuplespace_client *c, uint8_t op, const braid_field *f,
                                   size_t n, bool tmpl, uint64_t a, uint64_t b, int nargs,
                                   int32_t priority) {
    int rc = braid__ts_check(f, n, tmpl);
    if (rc < 0) return bad(c, rc);
    braid_deferred *d;
    size_t at;
    ts_creq *q = start(c, op, &d, &at);
    if (!q) return d;
    if (op == TS_OP_OUT) braid__ts_put_u32(&c->out, (uint32_t)priority);
    if (nargs >= 1) braid__ts_put_u64(&c->out, a);
    if (nargs >= 2) braid__ts_put_u64(&c->out, b);
    braid__ts_put_fields(&c->out, f, n);
    return finish(c, q, d, at);
}

static braid_deferred *call_lease(braid_tuplespace_client *c, uint8_t op, uint64_t lease, uint64_t b,
                                  bool with_b) {
    braid_deferred *d;
    size_t at;
    ts_creq *q = start(c, op, &d, &at);
    if (!q) return d;
    braid__ts_put_u64(&c->out, lease);
    if (with_b) braid__ts_put_u64(&c->out, b);
    return finish(c, q, d, at);
}

braid_deferred *braid_tuplespace_client_out(braid_tuplespace_client *c, const braid_field *f, size_t n,
                                            int32_t priority) {
    return call_fields(c, TS_OP_OUT, f, n, false, 0, 0, 0, priority);
}
braid_deferred *braid_tuplespace_client_in(braid_tuplespace_client *c, const braid_field *tmpl, size_t n,
                                           uint64_t timeout) {
    return call_fields(c, TS_OP_IN, tmpl, n, true, timeout, 0, 1, 0);
}
braid_deferred *braid_tuplespace_client_rd(braid_tuplespace_client *c, const braid_field *tmpl, size_t n,
                                           uint64_t timeout) {
    return call_fields(c, TS_OP_RD, tmpl, n, true, timeout, 0, 1, 0);
}
braid_deferred *braid_tuplespace_client_in_lease(braid_tuplespace_client *c, const braid_field *tmpl,
                                                 size_t n, uint64_t lease_ns, uint64_t timeout) {
    return call_fields(c, TS_OP_IN_LEASE, tmpl, n, true, timeout, lease_ns, 2, 0);
}
braid_deferred *braid_tuplespace_client_in_all(braid_tuplespace_client *c, const braid_field *tmpl,
                                               size_t n, size_t max) {
    return call_fields(c, TS_OP_IN_ALL, tmpl, n, true, max, 0, 1, 0);
}
braid_deferred *braid_tuplespace_client_rd_all(braid_tuplespace_client *c, const braid_field *tmpl,
                                               size_t n, size_t max) {
    return call_fields(c, TS_OP_RD_ALL, tmpl, n, true, max, 0, 1, 0);
}
braid_deferred *braid_tuplespace_client_ack(braid_tuplespace_client *c, uint64_t lease) {
    return call_lease(c, TS_OP_ACK, lease, 0, false);
}
braid_deferred *braid_tuplespace_client_nack(braid_tuplespace_client *c, uint64_t lease, uint64_t delay) {
    return call_lease(c, TS_OP_NACK, lease, delay, true);
}
braid_deferred *braid_tuplespace_client_renew(braid_tuplespace_client *c, uint64_t lease,
                                              uint64_t lease_ns) {
    return call_lease(c, TS_OP_RENEW, lease, lease_ns, true);
}

/* ---- replies ------------------------------------------------------------------------ */
static ts_creq *req_find(braid_tuplespace_client *c, uint32_t id) {
    for (ts_hnode *n = c->reqs.slots[id & c->reqs.mask]; n; n = n->next)
        if (n->hash == id) return braid__container_of(n, ts_creq, h);
    return NULL;
}

/* A reply's value: NULL, a tuple, or a list. 0 or an error. */
static int reply_value(const ts_msg *m, uint8_t op, void **value, void (**dtor)(void *)) {
    const uint8_t *p = m->rest;
    size_t len = m->rest_len;
    *value = NULL;
    *dtor = NULL;
    if (op == TS_OP_IN || op == TS_OP_RD || op == TS_OP_IN_LEASE) {
        if (m->ntuples != 1) return BRAID_ETUPLE_PROTO;
        braid_tuple *t;
        int rc = braid__ts_wire_tuple(&p, &len, &t);
        if (rc < 0) return rc;
        if (len) { braid_tuple_free(t); return BRAID_ETUPLE_PROTO; }
        *value = t;
        *dtor = braid_tuple_free_value;
        return 0;
    }
    if (op == TS_OP_IN_ALL || op == TS_OP_RD_ALL) {
        if (m->ntuples > len / 16) return BRAID_ETUPLE_PROTO;    /* a tuple is at least 16 bytes */
        braid_tuple_list *l = braid_malloc(sizeof *l + m->ntuples * sizeof(braid_tuple *));
        if (!l) return BRAID_ENOMEM;
        l->n = 0;
        for (uint32_t i = 0; i < m->ntuples; i++) {
            int rc = braid__ts_wire_tuple(&p, &len, &l->t[l->n]);
            if (rc < 0) { braid_tuple_list_free(l); return rc; }
            l->n++;
        }
        if (len) { braid_tuple_list_free(l); return BRAID_ETUPLE_PROTO; }
        *value = l;
        *dtor = braid_tuple_list_free_value;
        return 0;
    }
    return m->ntuples || len ? BRAID_ETUPLE_PROTO : 0;
}

static int on_frame(void *ctx, const void *frame, size_t len) {
    ts_cproto *p = ctx;
    braid_tuplespace_client *c = p->c;
    if (!c) return BRAID_ESHUTDOWN;
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    ts_msg m;
    int rc = braid__ts_wire_decode(frame, len, f, &m);
    if (rc < 0) return rc;
    if (m.op != TS_OP_REPLY) return BRAID_ETUPLE_PROTO;
    ts_creq *q = req_find(c, m.id);
    if (!q) return 0;                         /* a call cancelled since */
    void *value = NULL;
    void (*dtor)(void *) = NULL;
    if (m.status == 0 && (rc = reply_value(&m, q->op, &value, &dtor)) < 0) {
        if (rc == BRAID_ENOMEM) {
            braid__ts_htab_remove(&c->reqs, &q->h);
            braid_deferred *d = q->d;
            braid_free(q);
            braid_deferred_errback(d, braid_failure_new(rc, "tuple space client: out of memory"));
            return 0;
        }
        return rc;
    }
    braid__ts_htab_remove(&c->reqs, &q->h);
    braid_deferred *d = q->d;
    braid_free(q);
    if (m.status < 0) braid_deferred_errback(d, braid_failure_new(m.status, "tuple space server"));
    else braid_deferred_callback(d, value, dtor);
    return 0;
}

/* Fail every pending call with code. */
static void fail_all(braid_tuplespace_client *c, int code, const char *why) {
    for (size_t i = 0; i <= c->reqs.mask; i++) {
        while (c->reqs.slots[i]) {
            ts_creq *q = braid__container_of(c->reqs.slots[i], ts_creq, h);
            braid__ts_htab_remove(&c->reqs, &q->h);
            braid_deferred *d = q->d;
            braid_free(q);
            braid_deferred_errback(d, braid_failure_new(code, "%s", why));
        }
    }
}

static void cp_data(braid_protocol *bp, const void *buf, size_t len) {
    ts_cproto *p = (ts_cproto *)bp;
    int rc = braid_framer_feed(&p->framer, buf, len);
    if (rc < 0 && rc != BRAID_ESHUTDOWN) {
        braid__log(braid_transport_loop(bp->transport), BRAID_LOG_WARN,
                   "closing the connection to the tuple space server: %s", braid_strerror(rc));
        braid_transport_abort_with(bp->transport, rc);
    }
}

static void cp_lost(braid_protocol *bp, const braid_failure *reason) {
    ts_cproto *p = (ts_cproto *)bp;
    braid_tuplespace_client *c = p->c;
    if (!c) return;
    p->c = NULL;
    c->p = NULL;
    c->lost_code = reason->code;
    fail_all(c, reason->code, "tuple space client: the connection ended");
    if (c->o.lost) c->o.lost(c, reason->code, c->o.arg);
}

static void cp_destroy(braid_protocol *bp) {
    ts_cproto *p = (ts_cproto *)bp;
    braid_framer_close(&p->framer);
    braid_free(p);
}

static const braid_protocol_ops cp_ops = {
    .data_received = cp_data,
    .connection_lost = cp_lost,
    .destroy = cp_destroy,
};

/* ---- introspection ----------------------------------------------------------------- */
/* The client's entry: the server it talks to, connected or why not, and the
 * requests waiting for their reply. */
static void describe(braid_json *j, void *arg) {
    braid_tuplespace_client *c = arg;
    braid_transport *t = c->p ? c->p->base.transport : NULL;
    char peer[128];
    braid_address a;
    bool have = t && braid_transport_peer(t, &a) == 0 && braid_address_format(&a, peer, sizeof peer) != NULL;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "server", have ? peer : NULL);
    braid_json_kv_str(j, "kind", t ? braid_transport_kind(t) : NULL);
    braid_json_kv_bool(j, "connected", c->p != NULL);
    braid_json_kv_u64(j, "waiting", c->reqs.count);
    braid_json_kv_str(j, "lost", c->lost_code ? braid_strerror(c->lost_code) : NULL);
    braid_json_object_end(j);
}

static void client_dealloc(braid_tuplespace_client *c) {
    braid_introspect_remove(c->loop, &c->inode);
    braid__ts_buf_free(&c->out);
    braid_free(c->reqs.slots);
    braid_free(c);
}

/* ---- making and freeing ------------------------------------------------------------ */
static braid_tuplespace_client *client_alloc(braid_loop *loop, const braid_tuplespace_client_options *opts) {
    braid_tuplespace_client *c = braid_calloc(1, sizeof *c);
    if (!c) return NULL;
    if (braid__ts_htab_init(&c->reqs, 64) < 0) { braid_free(c); return NULL; }
    c->loop = loop;
    if (opts) c->o = *opts;
    if (!c->o.max_frame) c->o.max_frame = TS_DEFAULT_MAX_FRAME;
    braid_introspect_add(loop, &c->inode, "tuplespace_clients", describe, c);
    return c;
}

static ts_cproto *proto_alloc(braid_tuplespace_client *c) {
    ts_cproto *p = braid_calloc(1, sizeof *p);
    if (!p) return NULL;
    p->base.ops = &cp_ops;
    p->c = c;
    braid_framer_init_u32(&p->framer, c->o.max_frame, on_frame, p);
    return p;
}

/* A client over rfd/wfd (one descriptor when they are equal). */
static int adopt(braid_loop *loop, int rfd, int wfd, const braid_tuplespace_client_options *opts,
                 braid_tuplespace_client **out) {
    BRAID__LOOP_AFFINE(loop);
    braid_tuplespace_client *c = client_alloc(loop, opts);
    ts_cproto *p = c ? proto_alloc(c) : NULL;
    int rc = BRAID_ENOMEM;
    if (p) {
        rc = rfd == wfd ? braid_transport_adopt(loop, rfd, &p->base) : braid_transport_adopt_pipes(loop, rfd, wfd, &p->base);
        if (rc == 0) {
            c->p = p;
            *out = c;
            return 0;
        }
        cp_destroy(&p->base);
    }
    if (c) client_dealloc(c);
    close(rfd);
    if (wfd != rfd) close(wfd);
    return rc;
}

int braid_tuplespace_client_adopt(braid_loop *loop, int fd, const braid_tuplespace_client_options *opts,
                                  braid_tuplespace_client **out) {
    return adopt(loop, fd, fd, opts, out);
}

int braid_tuplespace_client_adopt_pipes(braid_loop *loop, int rfd, int wfd,
                                        const braid_tuplespace_client_options *opts,
                                        braid_tuplespace_client **out) {
    return adopt(loop, rfd, wfd, opts, out);
}

static braid_protocol *cbuild(braid_factory *f, const braid_address *peer) {
    (void)peer;
    braid_tuplespace_client *c = f->user;
    ts_cproto *p = proto_alloc(c);
    if (p) c->p = p;
    return p ? &p->base : NULL;
}

static void client_free_value(void *c) { braid_tuplespace_client_free(c); }

static braid_result connected(braid_result r, void *arg) {
    braid_result_drop(r);                    /* the protocol: borrowed */
    return braid_result_ok_owned(arg, client_free_value);
}

static braid_result not_connected(braid_result r, void *arg) {
    braid_tuplespace_client *c = arg;
    if (c->p) { c->p->c = NULL; c->p = NULL; }
    client_dealloc(c);
    return r;
}

braid_deferred *braid_tuplespace_client_connect(braid_loop *loop, const char *endpoint,
                                                const braid_tuplespace_client_options *opts) {
    BRAID__LOOP_AFFINE(loop);
    braid_tuplespace_client *c = client_alloc(loop, opts);
    if (!c) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "tuple space client: out of memory"));
    c->factory.build_protocol = cbuild;
    c->factory.user = c;
    braid_deferred *d = braid_endpoint_connect(loop, endpoint, &c->factory);
    if (!d) {
        client_dealloc(c);
        return NULL;
    }
    if (braid_deferred_add(d, connected, not_connected, c) < 0) {
        braid_deferred_cancel(d);            /* cannot happen on a fresh Deferred; be safe */
    }
    return d;
}

void braid_tuplespace_client_free(braid_tuplespace_client *c) {
    if (!c) return;
    BRAID__LOOP_AFFINE(c->loop);
    fail_all(c, BRAID_ESHUTDOWN, "tuple space client freed");
    if (c->p) {
        c->p->c = NULL;
        braid_transport_abort(c->p->base.transport);
        c->p = NULL;
    }
    client_dealloc(c);
}

bool braid_tuplespace_client_is_connected(const braid_tuplespace_client *c) { return c->p != NULL; }
