/* A space served over stream transports: one protocol per connection.
 *
 * Each frame is decoded (wire.c) and run against the space at once. A call
 * that has to wait (in, rd, in_lease with a timeout) becomes a request
 * record on the connection, answered when its Deferred fires; a CANCEL
 * frame cancels it. Leases granted to a connection are tied to it, so when
 * the connection ends — cleanly, by a peer that died, or because we closed
 * it over a bad frame — every lease it holds goes back at once and its
 * waiting calls are cancelled. */
#include "tuplespace_internal.h"
#include "loop/loop_module.h"
#include <braid/framing.h>
#include <braid/stream.h>
#include <fcntl.h>
#include <unistd.h>

typedef struct ts_conn ts_conn;

typedef struct ts_req {
    struct ts_req *prev, *next;
    ts_conn *c;
    braid_deferred *d;
    uint32_t id;
    uint8_t op;
} ts_req;

struct ts_conn {
    braid_protocol base;           /* first: the transport sees a protocol */
    braid_framer framer;
    braid_tuplespace *ts;          /* NULL once the space was freed */
    ts_conn *prev, *next;          /* in the space's list, while connected */
    ts_entry *leases;              /* the leases this connection holds */
    ts_req *reqs;                  /* its waiting calls */
    size_t npending;
    ts_buf out;                    /* the reply being built */
    bool lost;
    bool *made;                    /* spawn_worker: told when a transport took it */
};

static void send_buf(ts_conn *c) {
    if (c->out.failed) {
        braid__log(braid_tuplespace_loop(c->ts), BRAID_LOG_WARN, "out of memory writing a reply; closing the connection");
        c->out.len = 0;
        c->out.failed = false;
        braid_transport_abort_with(c->base.transport, BRAID_ENOMEM);
        return;
    }
    int rc = c->out.len ? braid_transport_write(c->base.transport, c->out.p, c->out.len) : 0;
    c->out.len = 0;
    if (rc < 0 && rc != BRAID_ESHUTDOWN && rc != BRAID_EBUFFER_LIMIT) {
        /* a reply we cannot send leaves the client waiting: end the connection */
        braid__log(braid_tuplespace_loop(c->ts), BRAID_LOG_WARN, "closing a client: writing a reply: %s",
                   braid_strerror(rc));
        braid_transport_abort_with(c->base.transport, rc);
    }
}

static void reply_status(ts_conn *c, uint32_t id, int status) {
    size_t at = braid__ts_wire_begin(&c->out, TS_OP_REPLY, id);
    braid__ts_put_u32(&c->out, (uint32_t)status);
    if (status == 0) braid__ts_put_u32(&c->out, 0);
    braid__ts_wire_end(&c->out, at);
    send_buf(c);
}

static void reply_tuples(ts_conn *c, uint32_t id, braid_tuple *const *t, size_t n) {
    size_t at = braid__ts_wire_begin(&c->out, TS_OP_REPLY, id);
    braid__ts_put_u32(&c->out, 0);
    braid__ts_put_u32(&c->out, (uint32_t)n);
    for (size_t i = 0; i < n; i++) braid__ts_put_tuple(&c->out, t[i]);
    braid__ts_wire_end(&c->out, at);
    send_buf(c);
}

/* Answer a call with its outcome (consumed). */
static void respond(ts_conn *c, uint32_t id, uint8_t op, braid_result r) {
    if (r.failure) {
        if (!c->lost) reply_status(c, id, r.failure->code);
        braid_result_drop(r);
        return;
    }
    braid_tuple *t = r.value;
    if (op == TS_OP_IN_LEASE && t) {
        if (c->lost) (void)braid_tuplespace_nack(c->ts, t->lease, 0);
        else (void)braid__ts_lease_set_owner(c->ts, t->lease, &c->leases);
    }
    if (!c->lost) reply_tuples(c, id, &t, t ? 1 : 0);
    braid_result_drop(r);
}

static braid_result req_done(braid_result r, void *arg) {
    ts_req *q = arg;
    ts_conn *c = q->c;
    if (q->prev) q->prev->next = q->next;
    else c->reqs = q->next;
    if (q->next) q->next->prev = q->prev;
    c->npending--;
    respond(c, q->id, q->op, r);
    braid_deferred_unref(q->d);
    braid_free(q);
    return braid_result_ok(NULL);
}

/* A call that may wait: answer now, or keep a request record. */
static void wait_call(ts_conn *c, const ts_msg *m) {
    braid_tuplespace *ts = c->ts;
    braid_deferred *d;
    if (m->op == TS_OP_IN) d = braid_tuplespace_in(ts, m->f, m->n, m->a);
    else if (m->op == TS_OP_RD) d = braid_tuplespace_rd(ts, m->f, m->n, m->a);
    else d = braid_tuplespace_in_lease(ts, m->f, m->n, m->b, m->a);
    if (!d) { reply_status(c, m->id, BRAID_ENOMEM); return; }
    braid_result r;
    if (braid_deferred_take(d, &r) == 0) {
        braid_deferred_unref(d);
        respond(c, m->id, m->op, r);
        return;
    }
    ts_req *q = NULL;
    int code = 0;
    if (c->npending >= braid__ts_serve_options(ts)->max_pending) code = BRAID_EQUEUE_FULL;
    else if (!(q = braid_calloc(1, sizeof *q)) || braid_deferred_add(d, req_done, req_done, q) < 0)
        code = BRAID_ENOMEM;
    if (code) {
        braid_free(q);
        braid_deferred_cancel(d);
        if (braid_deferred_take(d, &r) == 0) braid_result_drop(r);
        braid_deferred_unref(d);
        reply_status(c, m->id, code);
        return;
    }
    q->c = c;
    q->d = d;
    q->id = m->id;
    q->op = m->op;
    q->next = c->reqs;
    if (c->reqs) c->reqs->prev = q;
    c->reqs = q;
    c->npending++;
}

static int on_frame(void *ctx, const void *frame, size_t len) {
    ts_conn *c = ctx;
    braid_tuplespace *ts = c->ts;
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    ts_msg m;
    int rc = braid__ts_wire_decode(frame, len, f, &m);
    if (rc < 0) return rc;
    switch (m.op) {
    case TS_OP_OUT:
        reply_status(c, m.id, braid_tuplespace_out(ts, m.f, m.n, m.priority));
        break;
    case TS_OP_IN:
    case TS_OP_RD:
    case TS_OP_IN_LEASE:
        wait_call(c, &m);
        break;
    case TS_OP_IN_ALL:
    case TS_OP_RD_ALL: {
        braid_tuple_list *l = NULL;
        size_t max = m.a > SIZE_MAX ? SIZE_MAX : (size_t)m.a;
        rc = m.op == TS_OP_IN_ALL ? braid_tuplespace_in_all(ts, m.f, m.n, max, &l)
                                  : braid_tuplespace_rd_all(ts, m.f, m.n, max, &l);
        if (rc < 0) reply_status(c, m.id, rc);
        else reply_tuples(c, m.id, l->t, l->n);
        braid_tuple_list_free(l);
        break;
    }
    case TS_OP_ACK: reply_status(c, m.id, braid_tuplespace_ack(ts, m.a)); break;
    case TS_OP_NACK: reply_status(c, m.id, braid_tuplespace_nack(ts, m.a, m.b)); break;
    case TS_OP_RENEW: reply_status(c, m.id, braid_tuplespace_renew(ts, m.a, m.b)); break;
    case TS_OP_CANCEL:
        for (ts_req *q = c->reqs; q; q = q->next) {
            if (q->id == m.id) { braid_deferred_cancel(q->d); break; }   /* answers ECANCELED */
        }
        break;
    default:
        return BRAID_ETUPLE_PROTO;                 /* a reply sent to a server */
    }
    return c->lost ? BRAID_ESHUTDOWN : 0;
}

static void conn_made(braid_protocol *p) {
    ts_conn *c = (ts_conn *)p;
    if (c->made) *c->made = true;
    c->made = NULL;
    braid_framer_init_u32(&c->framer, braid__ts_serve_options(c->ts)->max_frame, on_frame, c);
    ts_conn **head = braid__ts_conns(c->ts);
    c->next = *head;
    if (*head) (*head)->prev = c;
    *head = c;
}

static void conn_unlink(ts_conn *c) {
    if (c->prev) c->prev->next = c->next;
    else *braid__ts_conns(c->ts) = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

size_t braid_tuplespace_connections(const braid_tuplespace *ts) {
    size_t n = 0;
    for (ts_conn *c = *braid__ts_conns((braid_tuplespace *)ts); c; c = c->next) n++;
    return n;
}

void braid__ts_server_detach(braid_tuplespace *ts) {
    while (*braid__ts_conns(ts)) {
        ts_conn *c = *braid__ts_conns(ts);
        while (c->reqs) braid_deferred_cancel(c->reqs->d);   /* none left: the space failed them */
        conn_unlink(c);
        c->leases = NULL;          /* the space frees the tuples */
        c->ts = NULL;
        c->lost = true;
        /* flush the ESHUTDOWN replies of its calls, then close (1 s at most) */
        braid_transport_close(c->base.transport, BRAID_SECONDS(1));
    }
}

static void conn_data(braid_protocol *p, const void *buf, size_t len) {
    ts_conn *c = (ts_conn *)p;
    if (c->lost || !c->ts) return;
    int rc = braid_framer_feed(&c->framer, buf, len);
    if (rc < 0 && rc != BRAID_ESHUTDOWN) {
        char peer[128] = "?";
        braid_address a;
        if (braid_transport_peer(p->transport, &a) == 0) braid_address_format(&a, peer, sizeof peer);
        braid__log(braid_tuplespace_loop(c->ts), BRAID_LOG_WARN, "closing client %s (%s): %s", peer,
                   braid_transport_kind(p->transport), braid_strerror(rc));
        braid_transport_abort_with(p->transport, rc);
    }
}

static void conn_lost(braid_protocol *p, const braid_failure *reason) {
    (void)reason;
    ts_conn *c = (ts_conn *)p;
    c->lost = true;
    if (!c->ts) return;            /* the space went first (braid__ts_server_detach) */
    while (c->reqs) braid_deferred_cancel(c->reqs->d);     /* req_done unlinks */
    braid__ts_owner_release(c->ts, &c->leases);
    conn_unlink(c);
}

static void conn_destroy(braid_protocol *p) {
    ts_conn *c = (ts_conn *)p;
    braid_framer_close(&c->framer);
    braid__ts_buf_free(&c->out);
    braid_free(c);
}

static const braid_protocol_ops conn_ops = {
    .connection_made = conn_made,
    .data_received = conn_data,
    .connection_lost = conn_lost,
    .destroy = conn_destroy,
};

static ts_conn *conn_new(braid_tuplespace *ts) {
    ts_conn *c = braid_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->base.ops = &conn_ops;
    c->ts = ts;
    return c;
}

static braid_protocol *build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    ts_conn *c = conn_new(f->user);
    if (c) c->base.factory = f;
    return c ? &c->base : NULL;
}

static void set_options(braid_tuplespace *ts, const braid_tuplespace_serve_options *opts) {
    braid_tuplespace_serve_options *o = braid__ts_serve_options(ts);
    if (opts) *o = *opts;
    if (!o->max_frame) o->max_frame = TS_DEFAULT_MAX_FRAME;
    if (!o->max_pending) o->max_pending = 1024;
}

void braid_tuplespace_factory_init(braid_factory *f, braid_tuplespace *ts,
                                   const braid_tuplespace_serve_options *opts) {
    memset(f, 0, sizeof *f);
    f->build_protocol = build;
    f->user = ts;
    set_options(ts, opts);
}

/* Serve rfd/wfd (one descriptor when they are equal). */
static int serve(braid_tuplespace *ts, int rfd, int wfd, const braid_tuplespace_serve_options *opts) {
    BRAID__LOOP_AFFINE(braid_tuplespace_loop(ts));
    if (opts || !braid__ts_serve_options(ts)->max_frame) set_options(ts, opts);
    ts_conn *c = conn_new(ts);
    int rc = BRAID_ENOMEM;
    if (c) {
        rc = rfd == wfd ? braid_transport_adopt(braid_tuplespace_loop(ts), rfd, &c->base)
                        : braid_transport_adopt_pipes(braid_tuplespace_loop(ts), rfd, wfd, &c->base);
        if (rc == 0) return 0;
        braid_free(c);
    }
    close(rfd);
    if (wfd != rfd) close(wfd);
    return rc;
}

int braid_tuplespace_serve_fd(braid_tuplespace *ts, int fd, const braid_tuplespace_serve_options *opts) {
    return serve(ts, fd, fd, opts);
}

int braid_tuplespace_serve_pipes(braid_tuplespace *ts, int rfd, int wfd,
                                 const braid_tuplespace_serve_options *opts) {
    return serve(ts, rfd, wfd, opts);
}

/* A worker process with one end of a socketpair at child_fd, served here:
 * the connection is a protocol of our own in braid_process_spawn's fd map,
 * so the process module makes the socketpair, puts the child's end in
 * place and adopts the parent's end with the protocol. */
int braid_tuplespace_spawn_worker(braid_tuplespace *ts, const braid_process_options *opts,
                                  int child_fd, const braid_tuplespace_serve_options *serve,
                                  braid_process **out, braid_failure **failure) {
    BRAID__LOOP_AFFINE(braid_tuplespace_loop(ts));
    if (failure) *failure = NULL;
    if (!opts || !out || (opts->nfds && !opts->fds)) {
        if (failure) *failure = braid_failure_new(BRAID_EINVAL, "spawn worker: no options");
        return BRAID_EINVAL;
    }
    /* The caller's map (or spawn's default one: 0, 1, 2 inherited where
     * open), then child_fd. A duplicate child_fd is spawn's BRAID_EINVAL. */
    size_t n = opts->fds ? opts->nfds : 3;
    braid_process_fd *map = braid_calloc(n + 1, sizeof *map);
    ts_conn *c = conn_new(ts);
    if (!map || !c) {
        braid_free(map);
        braid_free(c);
        if (failure) *failure = braid_failure_new(BRAID_ENOMEM, "spawn worker: out of memory");
        return BRAID_ENOMEM;
    }
    if (opts->fds) {
        memcpy(map, opts->fds, n * sizeof *map);
    } else {
        n = 0;
        for (int i = 0; i < 3; i++)
            if (fcntl(i, F_GETFD) >= 0)
                map[n++] = (braid_process_fd){ .child_fd = i, .kind = BRAID_PROCESS_FD_INHERIT, .parent_fd = i };
    }
    map[n++] = (braid_process_fd){ .child_fd = child_fd, .kind = BRAID_PROCESS_FD_STREAM,
                                   .protocol = &c->base };
    if (serve || !braid__ts_serve_options(ts)->max_frame) set_options(ts, serve);
    bool made = false;
    c->made = &made;
    braid_process_options o = *opts;
    o.fds = map;
    o.nfds = n;
    int rc = braid_process_spawn(braid_tuplespace_loop(ts), &o, out, failure);
    braid_free(map);
    /* Taken by a transport (conn_made ran, and cleared c->made): the
     * transport owns it (a spawn that failed after that aborted it). Never
     * taken: ours to free. */
    if (!made) braid_free(c);
    return rc;
}

/* ---- introspection ------------------------------------------------------------------------ */
/* The connections serving ts, for its introspection entry: one object each
 * with the client's address, the leases it holds and its waiting calls. */
void braid__ts_server_describe(braid_tuplespace *ts, braid_json *j) {
    braid_json_array_begin(j);
    for (ts_conn *c = *braid__ts_conns(ts); c; c = c->next) {
        char peer[128];
        braid_address a;
        bool have = c->base.transport && braid_transport_peer(c->base.transport, &a) == 0 &&
                    braid_address_format(&a, peer, sizeof peer) != NULL;
        size_t leases = 0;
        for (ts_entry *e = c->leases; e; e = e->onext) leases++;
        braid_json_object_begin(j);
        braid_json_kv_str(j, "peer", have ? peer : NULL);
        braid_json_kv_str(j, "kind", c->base.transport ? braid_transport_kind(c->base.transport) : NULL);
        braid_json_kv_u64(j, "leases", leases);
        braid_json_kv_u64(j, "waiting", c->npending);
        braid_json_object_end(j);
    }
    braid_json_array_end(j);
}
