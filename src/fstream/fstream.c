/* Fiber streams: a protocol that buffers its input for a fiber to read in
 * straight-line code, and waits on the transport's write buffer.
 *
 * The transport calls the protocol as usual (data_received appends to an
 * input buffer; read_connection_lost / connection_lost mark the end); a
 * fiber blocked in a read or a write is parked (braid__fiber_park) in the
 * stream's reader or writer slot and woken (braid__fiber_unpark, which only
 * queues it for the ready phase) when what it waits for may have happened.
 * It then re-checks: wake-ups are hints, the buffer is the truth.
 *
 * Write waits use the transport's producer slot: the stream registers itself
 * as a pull producer, whose resume_producing the transport calls each time
 * its buffer drained to the low watermark or below (and when it is empty).
 *
 * Lifetime: a reference for the protocol side (dropped by the destroy op,
 * after connection_lost) and one for the owner (the caller of
 * braid_fstream_new/connect, or a connection fiber of a factory). */
#include "fiber/park.h"
#include "net/transport_ext.h"
#include <braid/endpoint.h>
#include <braid/fstream.h>
#include <string.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "fstream";

static const char *const fstream_names[] = { "end of stream before the requested data" };
BRAID__ERROR_DOMAIN(fstream, "fstream", BRAID_EEOF, BRAID_EEOF, fstream_names);

#define FS_READ_LIMIT (64u * 1024)

struct braid_fstream {
    braid_protocol base;           /* first: the transport sees a protocol */
    braid_loop *loop;
    unsigned refs;
    /* Input: bytes [ihead, ihead + ilen) of ibuf. */
    char *ibuf;
    size_t ihead, ilen, icap;
    size_t read_limit;             /* stop reading the transport at this many buffered */
    size_t need;                   /* wake the reader once this many are buffered */
    size_t hold;                   /* the read in progress needs this many: do not pause below */
    size_t wtarget;                /* wake the writer once the transport buffers <= this */
    bool attached;                 /* connection_made ran */
    bool eof;                      /* the peer's EOF arrived */
    bool lost;                     /* connection_lost ran */
    bool paused;                   /* we paused the transport's reading */
    int lost_code;
    braid_fiber *reader, *writer;  /* parked in a read / in a write, flush or close */
    braid_producer prod;
    /* Server side (braid_fstream_factory). */
    braid_fstream_factory *ff;
    braid_fstream *prev, *next;
    braid_deferred *fiber_d;       /* the connection fiber's Deferred (consumer reference) */
    bool started, cancel_on_start, cancel_sent;
};

static const braid_protocol_ops fs_ops;

static void prod_resume(braid_producer *p);

static braid_fstream *fs_alloc(braid_loop *loop) {
    braid_fstream *s = braid_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->base.ops = &fs_ops;
    s->loop = loop;
    s->refs = 1;                   /* the protocol side */
    s->read_limit = FS_READ_LIMIT;
    s->need = 1;
    s->prod.resume_producing = prod_resume;
    s->prod.arg = s;
    return s;
}

static void fs_release(braid_fstream *s) {
    if (--s->refs) return;
    braid_free(s->ibuf);
    braid_free(s);
}

static inline void wake(braid_fiber *f) {
    if (f) braid__fiber_unpark(f, 0);
}

/* Input for the parked reader (from the transport's I/O phase): queue the
 * fiber, then the transport's flush behind it. A write queues its flush as
 * a ready call, and a ready phase runs only the calls queued when it began;
 * the fiber runs in a ready phase, so without this what it writes in answer
 * would leave one loop iteration later (one more poll per round trip) than a
 * callback protocol's, which writes from the I/O phase. With the flush
 * already queued behind the fiber, its answer leaves in the same ready phase;
 * if it writes nothing the flush finds nothing to do. */
static void wake_reader(braid_fstream *s) {
    braid__fiber_unpark(s->reader, 0);
    if (s->base.transport) braid__transport_queue_flush(s->base.transport);
}

/* Pause the transport's reading while we hold enough; resume below. */
static void update_pause(braid_fstream *s) {
    braid_transport *t = s->base.transport;
    if (!t || s->lost) return;
    size_t limit = s->hold > s->read_limit ? s->hold : s->read_limit;
    bool pause = s->ilen >= limit;
    if (pause == s->paused) return;
    s->paused = pause;
    if (pause) braid_transport_pause_reading(t);
    else braid_transport_resume_reading(t);
}

static void consume(braid_fstream *s, size_t n) {
    s->ihead += n;
    s->ilen -= n;
    if (!s->ilen) {
        s->ihead = 0;
        if (s->icap > FS_READ_LIMIT) {   /* a burst's buffer: give it back */
            braid_free(s->ibuf);
            s->ibuf = NULL;
            s->icap = 0;
        }
    }
    update_pause(s);
}

/* ---- the protocol side -------------------------------------------------------------- */
static void start_handler(braid_fstream *s);

static void fs_made(braid_protocol *p) {
    braid_fstream *s = (braid_fstream *)p;
    s->attached = true;
    s->loop = braid_transport_loop(p->transport);
    braid_transport_register_producer(p->transport, &s->prod, false);
    if (s->ff) start_handler(s);
}

static void fs_data(braid_protocol *p, const void *buf, size_t len) {
    braid_fstream *s = (braid_fstream *)p;
    if (s->icap - s->ihead - s->ilen < len) {
        if (s->ihead && s->icap - s->ilen >= len) {
            memmove(s->ibuf, s->ibuf + s->ihead, s->ilen);
            s->ihead = 0;
        } else {
            size_t need = s->ilen + len, n = s->icap ? s->icap * 2 : 4096;
            while (n < need) n *= 2;
            char *b = braid_malloc(n);
            if (!b) {
                braid_transport_abort_with(p->transport, BRAID_ENOMEM);
                return;
            }
            if (s->ilen) memcpy(b, s->ibuf + s->ihead, s->ilen);
            braid_free(s->ibuf);
            s->ibuf = b;
            s->icap = n;
            s->ihead = 0;
        }
    }
    memcpy(s->ibuf + s->ihead + s->ilen, buf, len);
    s->ilen += len;
    update_pause(s);
    if (s->reader && s->ilen >= s->need) wake_reader(s);
}

static void fs_eof(braid_protocol *p) {
    braid_fstream *s = (braid_fstream *)p;
    s->eof = true;
    if (s->reader) wake_reader(s);
}

static void fs_lost(braid_protocol *p, const braid_failure *reason) {
    braid_fstream *s = (braid_fstream *)p;
    s->lost = true;
    s->lost_code = reason ? reason->code : BRAID_ECONNECTION_DONE;
    s->paused = false;
    wake(s->reader);
    wake(s->writer);
}

static void fs_destroy(braid_protocol *p) {
    fs_release((braid_fstream *)p);
}

static const braid_protocol_ops fs_ops = {
    .connection_made = fs_made,
    .data_received = fs_data,
    .read_connection_lost = fs_eof,
    .connection_lost = fs_lost,
    .destroy = fs_destroy,
};

/* The transport drained to its low watermark (or emptied). */
static void prod_resume(braid_producer *p) {
    braid_fstream *s = p->arg;
    braid_transport *t = s->base.transport;
    if (s->writer && t && braid_transport_buffered(t) <= s->wtarget) wake(s->writer);
}

/* ---- waiting -------------------------------------------------------------------------- */
static uint64_t deadline_of(const braid_fstream *s, uint64_t timeout_ns) {
    if (timeout_ns == BRAID_FOREVER || !s->loop) return BRAID_FOREVER;
    uint64_t now = braid_loop_now(s->loop);
    return now + timeout_ns < now ? BRAID_FOREVER : now + timeout_ns;
}

/* Park the calling fiber in *slot until woken, the deadline or cancellation. */
static int park_in(braid_fstream *s, braid_fiber **slot, uint64_t deadline) {
    braid_fiber *f = s->loop ? braid_fiber_current(s->loop) : NULL;
    if (!f) return BRAID_ENOT_IN_FIBER;
    if (*slot) return BRAID_EBUSY;
    uint64_t timeout = BRAID_FOREVER;
    if (deadline != BRAID_FOREVER) {
        uint64_t now = braid_loop_now(s->loop);
        if (now >= deadline) return BRAID_ETIMEDOUT;
        timeout = deadline - now;
    }
    *slot = f;
    int rc = braid__fiber_park(s->loop, timeout);
    *slot = NULL;
    return rc;
}

/* Wait for more input: wake once `need` bytes are buffered; keep reading the
 * transport until `hold` are. */
static int wait_read(braid_fstream *s, size_t need, size_t hold, uint64_t deadline) {
    if (s->reader) return BRAID_EBUSY;
    s->need = need;
    s->hold = hold;
    update_pause(s);
    int rc = park_in(s, &s->reader, deadline);
    s->need = 1;
    s->hold = 0;
    if (rc < 0) update_pause(s);
    return rc;
}

static inline bool ended(const braid_fstream *s) { return s->eof || s->lost; }

/* What a read reports once no more input will come: 0 for a clean end, the
 * loss reason for an unclean one. */
static inline int read_end(const braid_fstream *s) {
    if (s->lost && !s->eof && s->lost_code != BRAID_ECONNECTION_DONE) return s->lost_code;
    return 0;
}

static inline int write_end(const braid_fstream *s) {
    if (s->lost && s->lost_code != BRAID_ECONNECTION_DONE) return s->lost_code;
    return BRAID_ESHUTDOWN;
}

/* ---- reads ----------------------------------------------------------------------------- */
ssize_t braid_fstream_read(braid_fstream *s, void *buf, size_t max, uint64_t timeout_ns) {
    if (!max) return BRAID_EINVAL;
    uint64_t deadline = deadline_of(s, timeout_ns);
    for (;;) {
        if (s->ilen) {
            size_t n = s->ilen < max ? s->ilen : max;
            memcpy(buf, s->ibuf + s->ihead, n);
            consume(s, n);
            return (ssize_t)n;
        }
        if (ended(s)) return read_end(s);
        int rc = wait_read(s, 1, 0, deadline);
        if (rc < 0) return rc;
    }
}

int braid_fstream_read_exactly(braid_fstream *s, void *buf, size_t n, uint64_t timeout_ns) {
    uint64_t deadline = deadline_of(s, timeout_ns);
    while (s->ilen < n) {
        if (ended(s)) {
            int c = read_end(s);
            return c ? c : BRAID_EEOF;
        }
        int rc = wait_read(s, n, n, deadline);
        if (rc < 0) return rc;
    }
    if (n) {
        memcpy(buf, s->ibuf + s->ihead, n);
        consume(s, n);
    }
    return 0;
}

ssize_t braid_fstream_read_line(braid_fstream *s, char *buf, size_t size, int delim,
                                uint64_t timeout_ns) {
    if (size < 2) return BRAID_EINVAL;
    size_t max = size - 1, scanned = 0;
    uint64_t deadline = deadline_of(s, timeout_ns);
    for (;;) {
        size_t lim = s->ilen < max ? s->ilen : max;
        if (lim > scanned) {
            const char *base = s->ibuf + s->ihead;
            const char *hit = memchr(base + scanned, delim, lim - scanned);
            if (hit) {
                size_t len = (size_t)(hit - base) + 1;
                memcpy(buf, base, len);
                buf[len] = '\0';
                consume(s, len);
                return (ssize_t)len;
            }
            scanned = lim;
        }
        if (s->ilen >= max) return BRAID_EMSGSIZE;
        if (ended(s)) {
            int c = read_end(s);
            if (c) return c;
            size_t len = s->ilen;     /* an unterminated last line, or 0 */
            if (len) memcpy(buf, s->ibuf + s->ihead, len);
            buf[len] = '\0';
            consume(s, len);
            return (ssize_t)len;
        }
        int rc = wait_read(s, s->ilen + 1, max, deadline);
        if (rc < 0) return rc;
    }
}

size_t braid_fstream_buffered(const braid_fstream *s) { return s->ilen; }

void braid_fstream_set_read_limit(braid_fstream *s, size_t limit) {
    s->read_limit = limit ? limit : FS_READ_LIMIT;
    update_pause(s);
}

/* ---- writes ------------------------------------------------------------------------------ */
/* Wait until the transport buffers at most target bytes. */
static int drain_to(braid_fstream *s, size_t target, uint64_t deadline) {
    for (;;) {
        braid_transport *t = s->base.transport;
        if (!t || s->lost)
            return s->lost && s->lost_code == BRAID_ECONNECTION_DONE ? 0 : write_end(s);
        if (braid_transport_buffered(t) <= target) return 0;
        if (s->writer) return BRAID_EBUSY;
        s->wtarget = target;
        int rc = park_in(s, &s->writer, deadline);
        if (rc < 0) return rc;
    }
}

int braid_fstream_write(braid_fstream *s, const void *buf, size_t len, uint64_t timeout_ns) {
    braid_transport *t = s->base.transport;
    if (!t || s->lost) return write_end(s);
    int rc = braid_transport_write(t, buf, len);
    if (rc < 0) return rc;
    size_t low, high;
    braid__transport_watermarks(t, &low, &high);
    if (BRAID__LIKELY(braid_transport_buffered(t) < high)) return 0;
    return drain_to(s, low, deadline_of(s, timeout_ns));
}

int braid_fstream_flush(braid_fstream *s, uint64_t timeout_ns) {
    return drain_to(s, 0, deadline_of(s, timeout_ns));
}

int braid_fstream_shutdown_write(braid_fstream *s) {
    braid_transport *t = s->base.transport;
    if (!t || s->lost) return write_end(s);
    return braid_transport_shutdown_write(t);
}

int braid_fstream_close(braid_fstream *s, uint64_t timeout_ns) {
    braid_transport *t = s->base.transport;
    if (t && !s->lost) braid_transport_close(t, BRAID_FOREVER);
    if (!s->loop || !braid_fiber_current(s->loop)) return 0;
    uint64_t deadline = deadline_of(s, timeout_ns);
    while (s->base.transport && !s->lost) {
        s->wtarget = 0;
        int rc = park_in(s, &s->writer, deadline);
        if (rc < 0) {
            if ((rc == BRAID_ETIMEDOUT || rc == BRAID_ECANCELED) && s->base.transport && !s->lost)
                braid_transport_abort(s->base.transport);
            return rc;
        }
    }
    return s->lost && s->lost_code != BRAID_ECONNECTION_DONE ? s->lost_code : 0;
}

void braid_fstream_abort(braid_fstream *s) {
    if (s->base.transport && !s->lost) braid_transport_abort(s->base.transport);
}

/* ---- objects ------------------------------------------------------------------------------- */
int braid_fstream_new(braid_loop *loop, braid_fstream **out) {
    braid_fstream *s = fs_alloc(loop);
    if (!s) return BRAID_ENOMEM;
    s->refs++;                     /* the caller's */
    *out = s;
    return 0;
}

braid_protocol *braid_fstream_protocol(braid_fstream *s) { return &s->base; }

braid_transport *braid_fstream_transport(braid_fstream *s) {
    return s->lost ? NULL : s->base.transport;
}

void braid_fstream_free(braid_fstream *s) {
    if (!s) return;
    if (s->base.transport && !s->lost) braid_transport_close(s->base.transport, BRAID_FOREVER);
    if (!s->attached) s->refs--;   /* never attached: no destroy will come */
    fs_release(s);
}

/* ---- connecting ---------------------------------------------------------------------------- */
static braid_protocol *client_build(braid_factory *f, const braid_address *peer) {
    (void)f; (void)peer;
    braid_fstream *s = fs_alloc(NULL);   /* the loop is set by connection_made */
    return s ? &s->base : NULL;
}

/* braid_fstream_connect's factory, one per loop (made on first use). */
static void client_factory_free(braid_loop *loop, void *ptr) {
    BRAID__UNUSED(loop);
    braid_free(ptr);
}
static braid_loop_key client_factory_key = BRAID_LOOP_KEY_INIT("fstream", client_factory_free, NULL);

/* An owned result: if the fiber never takes it (cancelled at that moment),
 * dropping it closes and releases the stream. */
static void claim_drop(void *v) { braid_fstream_free(v); }

/* Runs inside connect's firing, right after connection_made: take the
 * owner's reference while the protocol surely lives. */
static braid_result claim(braid_result r, void *arg) {
    (void)arg;
    braid_fstream *s = r.value;
    s->refs++;
    return braid_result_ok_owned(s, claim_drop);
}

int braid_fstream_connect(braid_loop *loop, const char *endpoint, uint64_t timeout_ns,
                          braid_fstream **out) {
    *out = NULL;
    if (!braid_fiber_current(loop)) return BRAID_ENOT_IN_FIBER;
    braid_factory *f = braid__loop_data(loop, &client_factory_key);
    if (!f) {
        if (!(f = braid_calloc(1, sizeof *f))) return BRAID_ENOMEM;
        f->build_protocol = client_build;
        if (braid_loop_set_data(loop, &client_factory_key, f) < 0) {
            braid_free(f);
            return BRAID_ENOMEM;
        }
    }
    braid_deferred *d = braid_endpoint_connect(loop, endpoint, f);
    if (!d) return BRAID_ENOMEM;
    if (braid_deferred_add_callback(d, claim, NULL) < 0) {
        braid_result r;
        braid_deferred_cancel(d);
        if (braid_deferred_take(d, &r) == 0) braid_result_drop(r);
        braid_deferred_unref(d);
        return BRAID_ENOMEM;
    }
    braid_result r = braid_fiber_await_timeout(d, timeout_ns);
    if (r.failure) {
        int code = r.failure->code;
        if (code == BRAID_EBAD_ENDPOINT) {
            /* The caller's mistake, and the code alone ("malformed endpoint
             * description") does not say what is wrong: the parser's reason
             * goes to the log at warning level, which is shown by default. */
            braid__log(loop, BRAID_LOG_WARN, "braid_fstream_connect: %s",
                       r.failure->message ? r.failure->message : braid_strerror(code));
        } else {
            char msg[256];   /* the network's business: debug */
            braid_failure_format(r.failure, msg, sizeof msg);
            braid__log(loop, BRAID_LOG_DEBUG, "braid_fstream_connect %s: %s", endpoint, msg);
        }
        braid_result_drop(r);
        return code;
    }
    *out = r.value;                  /* the owner's reference moves to the caller */
    return 0;
}

/* ---- accepting -------------------------------------------------------------------------------- */
static braid_protocol *server_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    braid_fstream_factory *ff = (braid_fstream_factory *)f;
    braid_fstream *s = fs_alloc(ff->loop);
    if (!s) return NULL;
    s->ff = ff;
    if (ff->read_limit) s->read_limit = ff->read_limit;
    s->base.user = ff->arg;
    return &s->base;
}

/* A connection fiber: the handler, then close and let go. */
static braid_result conn_main(void *arg) {
    braid_fstream *s = arg;
    braid_fstream_factory *ff = s->ff;
    s->started = true;
    if (!s->cancel_on_start) {
        int rc = ff->handler(s, ff->arg);
        if (rc < 0)
            braid__log(s->loop, BRAID_LOG_DEBUG, "fstream handler returned %d (%s)", rc,
                       braid_strerror(rc));
    }
    if (s->prev) s->prev->next = s->next;
    else ff->conns = s->next;
    if (s->next) s->next->prev = s->prev;
    ff->nconns--;
    /* Our Deferred: consume a cancellation failure already in it, and let go
     * (it fires with our return value afterwards, with nobody listening). */
    braid_deferred *d = s->fiber_d;
    s->fiber_d = NULL;
    braid_result r;
    if (braid_deferred_take(d, &r) == 0) braid_result_drop(r);
    braid_deferred_unref(d);
    braid_fstream_free(s);           /* graceful close; the fiber's reference */
    return braid_result_ok(NULL);
}

static void start_handler(braid_fstream *s) {
    braid_fstream_factory *ff = s->ff;
    braid_fiber_options o = ff->fiber;
    if (!o.name) o.name = "fstream";
    s->refs++;                       /* the connection fiber's */
    braid_deferred *d = braid_fiber_spawn(s->loop, conn_main, s, &o);
    if (!d) {
        s->refs--;
        s->ff = NULL;
        braid__log(s->loop, BRAID_LOG_WARN, "no memory for a connection fiber: dropped");
        braid_transport_abort_with(s->base.transport, BRAID_ENOMEM);
        return;
    }
    s->fiber_d = d;
    s->prev = NULL;
    s->next = ff->conns;
    if (ff->conns) ff->conns->prev = s;
    ff->conns = s;
    ff->nconns++;
}

void braid_fstream_factory_init(braid_loop *loop, braid_fstream_factory *ff,
                                braid_fstream_handler_fn handler, void *arg,
                                const braid_fiber_options *fopts) {
    memset(ff, 0, sizeof *ff);
    ff->base.build_protocol = server_build;
    ff->base.user = arg;
    ff->loop = loop;
    ff->handler = handler;
    ff->arg = arg;
    if (fopts) ff->fiber = *fopts;
}

size_t braid_fstream_factory_count(const braid_fstream_factory *ff) { return ff->nconns; }

void braid_fstream_factory_cancel_all(braid_fstream_factory *ff) {
    for (braid_fstream *s = ff->conns; s; s = s->next) {
        if (!s->started) {
            s->cancel_on_start = true;
        } else if (s->fiber_d && !s->cancel_sent) {
            s->cancel_sent = true;
            braid_deferred_cancel(s->fiber_d);
        }
    }
}
