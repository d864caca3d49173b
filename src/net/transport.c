/* What every stream transport shares: the write buffer with its watermarks
 * and hard cap, producers, half-close bookkeeping, and the single place where
 * a connection ends (connection_lost in the ready phase, then free).
 *
 * Writes are not sent from inside braid_transport_write: the bytes join the
 * buffer and the transport queues itself (once) for a flush in the loop's
 * ready phase, so many small writes leave in one system call. Writes made
 * while a kind delivers input (read_begin/read_end) are flushed right after
 * that delivery instead: the same single send, without touching every busy
 * connection a second time in the ready phase. */
#include "net/net_internal.h"
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The net layer's codes (numbered before the ranges existed, so in the
 * shared range; its own range, -4048 ... -4063, is still empty). */
static const char *const net_names[] = {
    [BRAID_EBUFFER_LIMIT - BRAID_EBUFFER_LIMIT]    = "write buffer over its hard limit",
    [BRAID_EBUFFER_LIMIT - BRAID_ECONNECTION_DONE] = "connection done",
    [BRAID_EBUFFER_LIMIT - BRAID_ECONNECTION_LOST] = "connection lost",
};
BRAID__ERROR_DOMAIN(net, "net", BRAID_EBUFFER_LIMIT, BRAID_ECONNECTION_LOST, net_names);

/* ---- protocols and factories ----------------------------------------------------- */
static braid_protocol *default_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    size_t size = f->proto_size < sizeof(braid_protocol) ? sizeof(braid_protocol) : f->proto_size;
    braid_protocol *p = braid_calloc(1, size);
    if (!p) return NULL;
    p->ops = f->ops;
    p->user = f->user;
    p->flags = BRAID__PROTO_OWNED;
    return p;
}

void braid_factory_init(braid_factory *f, const braid_protocol_ops *ops, size_t proto_size,
                        void *user) {
    memset(f, 0, sizeof *f);
    f->build_protocol = default_build;
    f->ops = ops;
    f->proto_size = proto_size;
    f->user = user;
}

braid_protocol *braid_factory_build(braid_factory *f, const braid_address *peer) {
    braid_protocol *p = f->build_protocol ? f->build_protocol(f, peer) : default_build(f, peer);
    if (p) p->factory = f;
    return p;
}

braid_factory *braid_factory_ref(braid_factory *f) {
    if (f->refs++ == 0 && f->start) f->start(f);
    return f;
}

void braid_factory_unref(braid_factory *f) {
    if (f->refs == 0) abort();
    if (--f->refs == 0 && f->stop) f->stop(f);
}

void braid__protocol_release(braid_protocol *p) {
    if (!p) return;
    unsigned owned = p->flags & BRAID__PROTO_OWNED;
    if (p->ops && p->ops->destroy) p->ops->destroy(p);
    if (owned) braid_free(p);
}

/* ---- setup ---------------------------------------------------------------------------- */
static void flush_cb(void *arg);
static void lost_cb(void *arg);
static void lose_connection(braid_transport *t);

static void self_pause(braid_producer *p) { braid_transport_pause_reading(p->arg); }
static void self_resume(braid_producer *p) { braid_transport_resume_reading(p->arg); }
static void self_stop(braid_producer *p) { lose_connection(p->arg); }

/* One entry of the loop's introspection "connections" (<braid/introspect.h>). */
static void describe(braid_json *j, void *arg) {
    braid_transport *t = arg;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "kind", t->vt->kind);
    braid_address a;
    char peer[128] = "";
    if (t->vt->get_addr && t->vt->get_addr(t, true, &a) == 0) braid_address_format(&a, peer, sizeof peer);
    braid_json_kv_str(j, "peer", peer[0] ? peer : NULL);
    braid_json_kv_u64(j, "buffered", t->wlen);
    braid_json_kv_u64(j, "written", t->written_total);
    braid_json_kv_u64(j, "sent", t->sent_total);
    braid_json_kv_bool(j, "paused", (t->state & BRAID__T_PAUSED) != 0);
    braid_json_kv_bool(j, "closing", (t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING)) != 0);
    braid_json_object_end(j);
}

void braid__transport_init(braid_transport *t, braid_loop *loop, const braid__transport_vt *vt) {
    memset(t, 0, sizeof *t);
    t->vt = vt;
    t->loop = loop;
    t->low = BRAID__DEFAULT_LOW;
    t->high = BRAID__DEFAULT_HIGH;
    t->cap = BRAID__DEFAULT_CAP;
    t->flush_node.fn = flush_cb;
    t->flush_node.arg = t;
    t->lost_node.fn = lost_cb;
    t->lost_node.arg = t;
    t->self_producer.pause_producing = self_pause;
    t->self_producer.resume_producing = self_resume;
    t->self_producer.stop_producing = self_stop;
    t->self_producer.arg = t;
    braid_handle_open(loop, &t->handle, vt->kind);
    braid_introspect_add(loop, &t->inode, "connections", describe, t);
}

void braid__transport_attach(braid_transport *t, braid_protocol *p) {
    t->protocol = p;
    p->transport = t;
    t->state |= BRAID__T_MADE;
    if (p->ops && p->ops->connection_made) p->ops->connection_made(p);
}

braid_loop *braid_transport_loop(const braid_transport *t) { return t->loop; }
const char *braid_transport_kind(const braid_transport *t) { return t->vt->kind; }
size_t braid_transport_buffered(const braid_transport *t) { return t->wlen; }
braid_producer *braid_transport_producer(braid_transport *t) { return &t->self_producer; }

int braid_transport_set_limits(braid_transport *t, size_t low, size_t high, size_t cap) {
    if (!low) low = t->low;
    if (!high) high = t->high;
    if (!cap) cap = t->cap;
    if (low > high || high > cap) return BRAID_EINVAL;
    t->low = low; t->high = high; t->cap = cap;
    return 0;
}

/* ---- reads ------------------------------------------------------------------------------ */
void braid__transport_data(braid_transport *t, const void *buf, size_t len) {
    braid_protocol *p = t->protocol;
    if (p && p->ops && p->ops->data_received) p->ops->data_received(p, buf, len);
}

void braid__transport_eof(braid_transport *t) {
    if (t->state & (BRAID__T_READ_SHUT | BRAID__T_CLOSED)) return;
    t->state |= BRAID__T_READ_SHUT;
    t->vt->update_reading(t);
    braid_protocol *p = t->protocol;
    if (p && p->ops && p->ops->read_connection_lost) {
        p->ops->read_connection_lost(p);
        if ((t->state & BRAID__T_WRITE_SHUT) && !(t->state & BRAID__T_CLOSED))
            braid__transport_lost(t, BRAID_ECONNECTION_DONE);
    } else {
        /* Not half-close aware: EOF ends the connection once our bytes are out. */
        lose_connection(t);
    }
}

void braid_transport_pause_reading(braid_transport *t) {
    if (t->state & BRAID__T_PAUSED) return;
    t->state |= BRAID__T_PAUSED;
    if (!(t->state & BRAID__T_CLOSED)) t->vt->update_reading(t);
}

void braid_transport_resume_reading(braid_transport *t) {
    if (!(t->state & BRAID__T_PAUSED)) return;
    t->state &= ~BRAID__T_PAUSED;
    if (!(t->state & BRAID__T_CLOSED)) t->vt->update_reading(t);
}

/* ---- writes ------------------------------------------------------------------------------- */
/* The write buffer's shape, checked in debug builds wherever it changes:
 * the pending bytes [whead, whead + wlen) lie inside wbuf's wcap bytes, the
 * watermarks are in order, and no byte was sent that was not written. */
static inline void wbuf_check(const braid_transport *t) {
    BRAID__ASSERT(t->whead + t->wlen <= t->wcap && (t->wcap == 0 || t->wbuf != NULL));
    BRAID__ASSERT(t->low <= t->high && t->high <= t->cap);
    BRAID__ASSERT(t->sent_total <= t->written_total);
}

static void schedule_flush(braid_transport *t) {
    if (t->state & (BRAID__T_FLUSH_QUEUED | BRAID__T_CLOSED)) return;
    if (t->state & BRAID__T_IN_READ) { t->state |= BRAID__T_FLUSH_AFTER; return; }
    t->state |= BRAID__T_FLUSH_QUEUED;
    braid_loop_soon_node(t->loop, &t->flush_node);
}

static void flush_now(braid_transport *t) {
    if (t->state & BRAID__T_CLOSED) return;
    wbuf_check(t);
    if (t->wlen) {
        t->state |= BRAID__T_IN_FLUSH;
        t->vt->flush(t);
        t->state &= ~BRAID__T_IN_FLUSH;
    } else {
        braid__transport_wrote(t, 0);   /* a pending close or shutdown with nothing queued */
    }
}

static void flush_cb(void *arg) {
    braid_transport *t = arg;
    t->state &= ~BRAID__T_FLUSH_QUEUED;
    flush_now(t);
}

void braid__transport_read_end(braid_transport *t) {
    unsigned st = t->state;
    t->state &= ~(BRAID__T_IN_READ | BRAID__T_FLUSH_AFTER);
    if ((st & BRAID__T_FLUSH_AFTER) && !(st & BRAID__T_FLUSH_QUEUED)) flush_now(t);
}

/* Make room for len more bytes: compact, then grow (doubling). */
static int reserve(braid_transport *t, size_t len) {
    if (t->wcap - t->whead - t->wlen >= len) return 0;
    if (t->whead && t->wcap - t->wlen >= len && !t->wbuf_pinned) {
        memmove(t->wbuf, t->wbuf + t->whead, t->wlen);
        t->whead = 0;
        return 0;
    }
    size_t need = t->wlen + len, n = t->wcap ? t->wcap : 4096;
    while (n < need) n *= 2;
    char *b = braid_malloc(n);
    if (!b) return BRAID_ENOMEM;
    if (t->wlen) memcpy(b, t->wbuf + t->whead, t->wlen);
    if (t->wbuf_pinned) {
        /* The kernel still reads the old buffer: park it for the kind. */
        t->wbuf_retired = t->wbuf;
        t->wbuf_pinned = false;
    } else {
        braid_free(t->wbuf);
    }
    t->wbuf = b;
    t->wcap = n;
    t->whead = 0;
    BRAID__ASSERT(t->wlen + len <= t->wcap);
    return 0;
}

static void maybe_pause_producer(braid_transport *t) {
    if (t->wlen >= t->high && t->producer && t->producer_streaming && !t->producer_paused) {
        t->producer_paused = true;
        if (t->producer->pause_producing) t->producer->pause_producing(t->producer);
    }
}

int braid_transport_writev(braid_transport *t, const struct iovec *iov, int iovcnt) {
    if (t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING | BRAID__T_SHUT_PENDING |
                    BRAID__T_WRITE_SHUT))
        return BRAID_ESHUTDOWN;
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++) total += iov[i].iov_len;
    if (total == 0) return 0;
    struct iovec first;
    if (iovcnt == 1 && total >= BRAID__DIRECT_WRITE_MIN && t->wlen == 0 && !t->fdq &&
        t->vt->try_write && !(t->state & BRAID__T_IN_FLUSH)) {
        /* Bulk into an empty buffer: no copy, no waiting for the flush. The
         * buffer stays empty, so watermarks and producers are untouched. */
        ssize_t n = t->vt->try_write(t, iov[0].iov_base, total);
        if (n < 0) {
            braid__transport_lost(t, (int)n);
            return (int)n;
        }
        t->written_total += (size_t)n;
        t->sent_total += (size_t)n;
        if ((size_t)n == total) {
            /* A pull producer is asked for more when the buffer drains: the
             * flush (with nothing queued) does that, from the ready phase. */
            if (t->producer && !t->producer_streaming) schedule_flush(t);
            return 0;
        }
        first.iov_base = (char *)iov[0].iov_base + n;
        first.iov_len = total - (size_t)n;
        iov = &first;
        total -= (size_t)n;
    }
    if (t->wlen + total > t->cap) {
        braid__log(t->loop, BRAID_LOG_WARN,
                   "%s transport: write buffer would reach %zu bytes (cap %zu): aborting",
                   t->vt->kind, t->wlen + total, t->cap);
        t->state |= BRAID__T_ABORTED;
        braid__transport_lost(t, BRAID_EBUFFER_LIMIT);
        return BRAID_EBUFFER_LIMIT;
    }
    int rc = reserve(t, total);
    if (rc < 0) return rc;
    char *dst = t->wbuf + t->whead + t->wlen;
    for (int i = 0; i < iovcnt; i++) {
        memcpy(dst, iov[i].iov_base, iov[i].iov_len);
        dst += iov[i].iov_len;
    }
    t->wlen += total;
    t->written_total += total;
    wbuf_check(t);
    if (t->wlen >= t->high && !(t->state & BRAID__T_IN_FLUSH)) {
        /* Past the high watermark: hand the kernel what it takes now rather
         * than at the end of the iteration. Many writes to one transport in
         * one iteration (a broadcast fed by a busy source) then never count
         * against the cap while its reader keeps up; only what the kernel
         * refuses stays buffered, pauses the producer and counts. */
        (void)braid__transport_flush_now(t);
        if (t->state & BRAID__T_CLOSED) return 0;   /* the send failed: connection_lost follows */
    }
    maybe_pause_producer(t);
    schedule_flush(t);
    return 0;
}

int braid_transport_write(braid_transport *t, const void *buf, size_t len) {
    struct iovec v = { (void *)buf, len };
    return braid_transport_writev(t, &v, 1);
}

/* Called by kinds (and by flush_cb with n = 0) after bytes left the buffer. */
void braid__transport_wrote(braid_transport *t, size_t n) {
    BRAID__ASSERT(n <= t->wlen);
    t->whead += n;
    t->wlen -= n;
    t->sent_total += n;
    if (t->wlen == 0) t->whead = 0;
    wbuf_check(t);
    if (t->state & (BRAID__T_CLOSED | BRAID__T_EARLY_FLUSH)) return;   /* early: the flush queued by write calls producers */
    /* Give back memory of a large buffer once it drained: an idle connection
     * should not keep a burst's worth of buffer. */
    if (t->wlen == 0 && t->wcap > 64 * 1024 && !t->wbuf_pinned) {
        braid_free(t->wbuf);
        t->wbuf = NULL;
        t->wcap = 0;
    }
    if (t->producer && t->wlen <= t->low) {
        if (t->producer_streaming) {
            if (t->producer_paused) {
                t->producer_paused = false;
                if (t->producer->resume_producing) t->producer->resume_producing(t->producer);
            }
        } else if (n > 0 || t->wlen == 0) {
            if (t->producer->resume_producing) t->producer->resume_producing(t->producer);
        }
        if (t->state & BRAID__T_CLOSED) return;
    }
    if (t->wlen) return;
    if (t->state & BRAID__T_DISCONNECTING) {
        braid__transport_lost(t, BRAID_ECONNECTION_DONE);
    } else if (t->state & BRAID__T_SHUT_PENDING) {
        t->state &= ~BRAID__T_SHUT_PENDING;
        int rc = t->vt->shutdown_write(t);
        if (rc < 0) { braid__transport_lost(t, rc); return; }
        t->state |= BRAID__T_WRITE_SHUT;
        braid_protocol *p = t->protocol;
        if (p && p->ops && p->ops->write_connection_lost) p->ops->write_connection_lost(p);
        if ((t->state & BRAID__T_READ_SHUT) && !(t->state & BRAID__T_CLOSED))
            braid__transport_lost(t, BRAID_ECONNECTION_DONE);
    }
}

/* Flush what is buffered, then close: braid_transport_close with no deadline. */
static void lose_connection(braid_transport *t) {
    if (t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING)) return;
    t->state |= BRAID__T_DISCONNECTING;
    /* No more input matters once we are closing. */
    t->vt->update_reading(t);
    schedule_flush(t);
}

/* The close deadline passed: what is still buffered is dropped and the
 * connection reset (a TCP peer gets RST, as after abort). */
static void close_deadline_cb(braid_timer *tm, void *arg) {
    braid_transport *t = arg;
    (void)tm;
    if (t->state & BRAID__T_CLOSED) return;
    t->close_unsent = t->wlen;
    t->state |= BRAID__T_ABORTED | BRAID__T_CLOSE_EXPIRED;
    braid__log(t->loop, BRAID_LOG_DEBUG, "%s transport: close deadline passed with %zu bytes unsent: aborting",
               t->vt->kind, t->wlen);
    braid__transport_lost(t, BRAID_ETIMEDOUT);
}

void braid__transport_close_at(braid_transport *t, uint64_t deadline) {
    if (t->state & BRAID__T_CLOSED) return;
    if (!t->close_deadline || deadline < t->close_deadline) {
        if (!(t->state & BRAID__T_CLOSE_TIMER)) {
            braid_timer_init(t->loop, &t->close_timer, close_deadline_cb, t);
            t->state |= BRAID__T_CLOSE_TIMER;
        }
        t->close_deadline = deadline ? deadline : 1;
        int rc = braid_timer_start_at(&t->close_timer, t->close_deadline);
        if (rc < 0) {
            /* Cannot arm the deadline (no memory for the timer heap): the
             * promise is a bounded close, so close now. */
            braid_transport_abort_with(t, BRAID_ETIMEDOUT);
            return;
        }
    }
    lose_connection(t);
}

void braid_transport_close(braid_transport *t, uint64_t timeout_ns) {
    if (t->state & BRAID__T_CLOSED) return;
    if (timeout_ns == BRAID_FOREVER) { lose_connection(t); return; }
    uint64_t now = braid_loop_now_fresh(t->loop);
    uint64_t deadline = timeout_ns > UINT64_MAX - now ? UINT64_MAX : now + timeout_ns;
    braid__transport_close_at(t, deadline);
}

int braid_transport_shutdown_write(braid_transport *t) {
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    if (t->state & (BRAID__T_SHUT_PENDING | BRAID__T_WRITE_SHUT | BRAID__T_DISCONNECTING)) return 0;
    t->state |= BRAID__T_SHUT_PENDING;
    schedule_flush(t);
    return 0;
}

void braid_transport_abort(braid_transport *t) {
    if (t->state & BRAID__T_CLOSED) return;
    t->state |= BRAID__T_ABORTED;
    braid__transport_lost(t, BRAID_ECONNECTION_LOST);
}

void braid_transport_abort_with(braid_transport *t, int code) {
    if (t->state & BRAID__T_CLOSED) return;
    t->state |= BRAID__T_ABORTED;
    braid__transport_lost(t, code < 0 ? code : BRAID_ECONNECTION_LOST);
}

/* ---- addresses and options -------------------------------------------------------------- */
int braid_transport_peer(braid_transport *t, braid_address *out) {
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    return t->vt->get_addr ? t->vt->get_addr(t, true, out) : BRAID_ENOSYS;
}
int braid_transport_host(braid_transport *t, braid_address *out) {
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    return t->vt->get_addr ? t->vt->get_addr(t, false, out) : BRAID_ENOSYS;
}
int braid_transport_set_nodelay(braid_transport *t, bool on) {
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    return t->vt->set_option ? t->vt->set_option(t, BRAID__OPT_NODELAY, on, 0) : BRAID_ENOSYS;
}
int braid_transport_set_keepalive(braid_transport *t, bool on, int idle_seconds) {
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    return t->vt->set_option ? t->vt->set_option(t, BRAID__OPT_KEEPALIVE, on, idle_seconds)
                             : BRAID_ENOSYS;
}

/* ---- producers ------------------------------------------------------------------------- */
int braid_transport_register_producer(braid_transport *t, braid_producer *p, bool streaming) {
    if (t->producer) return BRAID_EBUSY;
    if (t->state & BRAID__T_CLOSED) return BRAID_ESHUTDOWN;
    t->producer = p;
    t->producer_streaming = streaming;
    t->producer_paused = false;
    if (streaming) {
        maybe_pause_producer(t);
    } else if (p->resume_producing) {
        p->resume_producing(p);     /* a pull producer starts by producing once */
    }
    return 0;
}

void braid_transport_unregister_producer(braid_transport *t) {
    t->producer = NULL;
    t->producer_paused = false;
}

/* ---- the end ------------------------------------------------------------------------------ */
void braid__transport_lost(braid_transport *t, int code) {
    if (t->state & BRAID__T_CLOSED) return;
    t->state |= BRAID__T_CLOSED;
    t->lost_code = code;
    t->vt->close(t);     /* may read close_deadline (a wrapper passes it down) */
    if (t->state & BRAID__T_CLOSE_TIMER) braid_timer_stop(&t->close_timer);
    braid_loop_soon_node(t->loop, &t->lost_node);
}

static void lost_cb(void *arg) {
    braid_transport *t = arg;
    braid_protocol *p = t->protocol;
    braid_producer *prod = t->producer;
    t->producer = NULL;
    if (prod && prod->stop_producing) prod->stop_producing(prod);
    t->state |= BRAID__T_LOST_DONE;
    if (p && (t->state & BRAID__T_MADE)) {
        if (p->ops && p->ops->connection_lost) {
            const char *what = t->lost_code == BRAID_ECONNECTION_DONE ? "connection closed cleanly"
                             : t->lost_code == BRAID_ECONNECTION_LOST ? "connection aborted"
                             : "connection lost";
            braid_failure *f =
                (t->state & BRAID__T_CLOSE_EXPIRED)
                    ? braid_failure_new(t->lost_code,
                                        "close deadline passed with %zu bytes unsent: connection aborted (%s)",
                                        t->close_unsent, t->vt->kind)
                    : braid_failure_new(t->lost_code, "%s (%s)", what, t->vt->kind);
            p->ops->connection_lost(p, f);
            braid_failure_free(f);
        }
        p->transport = NULL;
        braid__protocol_release(p);
        t->protocol = NULL;
    }
    for (braid__fdmsg *m = t->fdq, *next; m; m = next) {
        next = m->next;
        for (int i = 0; i < m->n; i++) close(m->fds[i]);
        braid_free(m);
    }
    t->fdq = NULL;
    braid_free(t->wbuf);
    t->wbuf = NULL;
    t->wcap = t->wlen = t->whead = 0;
    braid_handle_close(t->loop, &t->handle);
    braid_introspect_remove(t->loop, &t->inode);
    t->vt->free(t);
}

/* ---- for modules above (net/transport_ext.h) and wrapper kinds ----------------------------- */
void braid__transport_watermarks(const braid_transport *t, size_t *low, size_t *high) {
    if (low) *low = t->low;
    if (high) *high = t->high;
}

uint64_t braid__transport_sent_total(const braid_transport *t) { return t->sent_total; }

int braid__transport_flush_now(braid_transport *t) {
    if (t->wlen && !(t->state & (BRAID__T_CLOSED | BRAID__T_IN_FLUSH))) {
        t->state |= BRAID__T_IN_FLUSH | BRAID__T_EARLY_FLUSH;
        t->vt->flush(t);
        t->state &= ~(BRAID__T_IN_FLUSH | BRAID__T_EARLY_FLUSH);
    }
    return braid__transport_writable(t) ? 0 : BRAID_ESHUTDOWN;
}

void braid__transport_queue_flush(braid_transport *t) {
    if (t->state & (BRAID__T_FLUSH_QUEUED | BRAID__T_CLOSED)) return;
    t->state |= BRAID__T_FLUSH_QUEUED;
    braid_loop_soon_node(t->loop, &t->flush_node);
}

bool braid__transport_writable(const braid_transport *t) {
    return !(t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING | BRAID__T_SHUT_PENDING |
                         BRAID__T_WRITE_SHUT));
}

bool braid__transport_has_producer(const braid_transport *t) { return t->producer != NULL; }

void braid__transport_set_protocol(braid_transport *t, braid_protocol *p) { t->protocol = p; }

bool braid__transport_pause_producer(braid_transport *t, braid_producer *p) {
    if (t->producer != p) return false;
    t->producer_paused = true;
    return true;
}

void braid__transport_trim(braid_transport *t) {
    if (t->wlen || t->wbuf_pinned) return;
    braid_free(t->wbuf);
    t->wbuf = NULL;
    t->whead = t->wcap = 0;
}

/* ---- per-loop state: the shared read buffer ------------------------------------------------ */
static void readbuf_free(braid_loop *loop, void *buf) {
    BRAID__UNUSED(loop);
    braid_free(buf);
}
static braid_loop_key readbuf_key = BRAID_LOOP_KEY_INIT("stream read buffer", readbuf_free, NULL);

char *braid__stream_read_buffer(braid_loop *loop) {
    char *buf = braid__loop_data(loop, &readbuf_key);
    if (BRAID__LIKELY(buf != NULL)) return buf;
    if (!(buf = braid_malloc(BRAID__READ_BUF))) return NULL;
    if (braid_loop_set_data(loop, &readbuf_key, buf) < 0) {
        braid_free(buf);
        return NULL;
    }
    return buf;
}

/* ---- addresses ------------------------------------------------------------------------------ */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/un.h>

const char *braid_address_format(const braid_address *a, char *buf, size_t size) {
    char host[INET6_ADDRSTRLEN];
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *s = (const struct sockaddr_in *)&a->ss;
        inet_ntop(AF_INET, &s->sin_addr, host, sizeof host);
        snprintf(buf, size, "%s:%d", host, ntohs(s->sin_port));
    } else if (a->ss.ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&a->ss;
        inet_ntop(AF_INET6, &s->sin6_addr, host, sizeof host);
        snprintf(buf, size, "[%s]:%d", host, ntohs(s->sin6_port));
    } else if (a->ss.ss_family == AF_UNIX) {
        const struct sockaddr_un *s = (const struct sockaddr_un *)&a->ss;
        size_t plen = a->len > offsetof(struct sockaddr_un, sun_path)
                          ? a->len - offsetof(struct sockaddr_un, sun_path) : 0;
        if (plen && s->sun_path[0] == 0) snprintf(buf, size, "unix:@%.*s", (int)plen - 1, s->sun_path + 1);
        else snprintf(buf, size, "unix:%.*s", (int)strnlen(s->sun_path, plen), s->sun_path);
    } else {
        snprintf(buf, size, "(unknown)");
    }
    return buf;
}

int braid_address_port(const braid_address *a) {
    if (a->ss.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}
