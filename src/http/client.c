/* The HTTP/1.1 client (include/braid/http.h, "client" section): a pool of
 * keep-alive connections per origin and the request state machine.
 *
 * Shape. A request (hc_req) lives from braid_http_client_request until it
 * has fired its Deferred and, in streaming mode, called on_end. It runs on
 * one connection at a time (hc_conn, a braid_protocol built by its origin's
 * factory); a retry or a redirect moves it to another. A connection belongs
 * to one origin (hc_pool) for life and is, at any moment, busy with one
 * request, idle in its pool, or closing. Responses are read into the
 * connection's own input buffer (conn->in): the head is parsed there with
 * the zero-copy parser, copied into the response, and the body is consumed
 * from the front of the buffer.
 *
 * Re-entrancy. User code runs inside the client (Deferred callbacks, on_body,
 * on_end) and may call back in: cancel, abort, pause, start new requests,
 * free the client. So: a request is reference-counted (process() holds a
 * reference across user callbacks); a finished request is marked done before
 * any user code sees its end; connections are never freed synchronously
 * (braid_transport_abort delivers connection_lost in the ready phase); the
 * client itself is freed only when its last connection is gone. */
#include "loop/loop_module.h"
#include <braid/deferred.h>
#include <braid/endpoint.h>
#include <braid/http.h>
#include <braid/stream.h>
#include <braid/time.h>
#include <braid/tls.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define HC_DEFAULT_MAX_IDLE 4
#define HC_DEFAULT_IDLE BRAID_SECONDS(60)
#define HC_DEFAULT_CONNECT BRAID_SECONDS(30)
#define HC_DEFAULT_HEADERS BRAID_SECONDS(60)
#define HC_DEFAULT_BODY BRAID_SECONDS(60)
#define HC_DEFAULT_MAX_BODY (8u * 1024u * 1024u)
#define HC_MAX_HEADERS 100

typedef struct hc_pool hc_pool;
typedef struct hc_conn hc_conn;
typedef struct hc_req hc_req;

struct braid_http_client {
    braid_loop *loop;
    braid_http_client_options o;
    braid_tls_ctx *tls;            /* a reference, or NULL until first https use */
    hc_pool *pools;
    hc_req *reqs;                  /* requests in flight (doubly linked) */
    size_t conns;                  /* protocols alive (built, not yet destroyed) */
    bool closing;
    struct braid_http_client_stats st;
};

struct hc_pool {
    hc_pool *next;
    braid_http_client *c;
    braid_factory f;               /* builds this origin's connections */
    bool https;
    char *host;                    /* without brackets */
    int port;
    hc_conn *idle;                 /* most recently used first */
    size_t nidle;
    size_t slots;                  /* connections open or being opened (max_per_host) */
    hc_req *wait_head, *wait_tail; /* requests waiting for a slot */
};

enum { CONN_CONNECTING, CONN_BUSY, CONN_IDLE, CONN_CLOSING };

struct hc_conn {
    braid_protocol base;
    hc_pool *pool;
    hc_conn *prev, *next;          /* idle list */
    hc_req *req;                   /* the request it runs (CONN_BUSY) */
    int state;
    bool lost;                     /* connection_lost has run */
    bool slot;                     /* holds one of its pool's slots */
    bool destroyed;                /* destroy ran while a paused request still held it */
    int lost_code;
    char detail[160];              /* TLS detail of the loss */
    bool tls_failed;               /* the loss was a TLS error (detail says which) */
    bool processing, again;        /* process() re-entrancy */
    unsigned served;               /* requests attached so far */
    braid_timer idle_timer;
    char *in;                      /* response bytes not yet consumed */
    size_t inlen, incap, prev_len;
};

enum { PH_CONNECT, PH_HEADERS, PH_BODY, PH_DONE };
enum { UP_NONE, UP_SENDING, UP_ENDED };

typedef struct hc_field { char *name, *value; } hc_field;

struct hc_req {
    hc_req *prev, *next;           /* client->reqs */
    hc_req *wnext;                 /* pool->wait list */
    bool queued;                   /* on it */
    bool slot;                     /* holds a slot for its connect attempt */
    braid_http_client *c;
    unsigned refs;
    braid_deferred *d;             /* the user's Deferred while unfired */
    braid_deferred *connect_d;     /* pending connect attempt */
    hc_pool *pool;
    hc_conn *conn;
    braid_timer timer;
    int phase;
    bool done, retried, reused_conn, got_bytes, fired, paused;
    /* the request */
    char *method;
    char *url;                     /* current URL */
    bool https;
    char *host;                    /* for connecting (no brackets) */
    char *hosthdr;                 /* Host field value */
    int port;
    char *target;
    hc_field *fields;
    size_t nfields;
    bool user_host, conn_close, drop_credentials;
    char *body;
    size_t body_len;
    bool chunked, has_body;
    /* streamed upload */
    braid_http_upload_cb source;
    int upload;                    /* UP_NONE, UP_SENDING, UP_ENDED */
    uint64_t up_len, up_sent;      /* up_len UINT64_MAX: chunked */
    braid_producer producer;
    braid_transport *up_t;         /* where the producer is registered */
    char *wire;                    /* the serialised request */
    size_t wire_len;
    uint64_t max_body, t_connect, t_headers, t_body;
    int max_redirects, redirects;
    braid_http_client_body_cb on_body;
    braid_http_client_end_cb on_end;
    void *arg;
    /* the response */
    braid_http_client_response *resp;
    int body_kind;                 /* braid_http_body */
    uint64_t remaining;
    braid_http_chunked ch;
    bool keep_alive, discard;      /* discard: a redirect's body */
    char *location;                /* a redirect to follow */
    char *buf;                     /* buffered body */
    size_t len, cap;
};

static void req_fail(hc_req *q, int code, braid_failure *cause, const char *fmt, ...)
    BRAID_PRINTF(4, 5);
static void req_start(hc_req *q);
static void process(hc_conn *k);
static void upload_detach(hc_req *q);

/* ---- small helpers -------------------------------------------------------------- */
typedef struct sbuf { char *p; size_t len, cap; bool oom; } sbuf;

static void sb_add(sbuf *b, const void *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *p = braid_realloc(b->p, cap);
        if (!p) { b->oom = true; return; }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}
static void sb_str(sbuf *b, const char *s) { sb_add(b, s, strlen(s)); }

static char *dupn(const char *s, size_t n) {
    char *d = braid_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

static bool is_tchar(unsigned char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           (ch && strchr("!#$%&'*+-.^_`|~", ch));
}
static bool is_token(const char *s, size_t n) {
    if (!n) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_tchar((unsigned char)s[i])) return false;
    return true;
}
static bool value_ok(const char *s) {
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 && *s != '\t') return false;
        else if (*s == 0x7f) return false;
    return true;
}

/* ---- URLs ------------------------------------------------------------------------- */
typedef struct url_parts { bool https; char *host, *hosthdr, *target; int port; } url_parts;

static void url_parts_free(url_parts *u) {
    braid_free(u->host);
    braid_free(u->hosthdr);
    braid_free(u->target);
    memset(u, 0, sizeof *u);
}

/* http[s]://host[:port][/path][?query][#frag]; no userinfo. 0 or BRAID_EINVAL
 * (BRAID_ENOMEM). */
static int parse_url(const char *url, url_parts *u) {
    memset(u, 0, sizeof *u);
    const char *p;
    if (!url) return BRAID_EINVAL;
    if (!strncasecmp(url, "http://", 7)) p = url + 7;
    else if (!strncasecmp(url, "https://", 8)) { p = url + 8; u->https = true; }
    else return BRAID_EINVAL;
    const char *a = p;
    while (*p && *p != '/' && *p != '?' && *p != '#') p++;
    const char *ae = p;
    const char *h = a, *he, *port = NULL;
    if (a == ae) return BRAID_EINVAL;
    for (const char *x = a; x < ae; x++)
        if (*x == '@' || (unsigned char)*x <= 0x20 || *x == 0x7f) return BRAID_EINVAL;
    if (*a == '[') {
        he = memchr(a, ']', (size_t)(ae - a));
        if (!he || he == a + 1) return BRAID_EINVAL;
        h = a + 1;
        if (he + 1 < ae) {
            if (he[1] != ':') return BRAID_EINVAL;
            port = he + 2;
        }
    } else {
        he = memchr(a, ':', (size_t)(ae - a));
        if (he) port = he + 1;
        else he = ae;
        if (he == a) return BRAID_EINVAL;
    }
    u->port = u->https ? 443 : 80;
    if (port) {
        if (port == ae || ae - port > 5) return BRAID_EINVAL;
        int v = 0;
        for (const char *x = port; x < ae; x++) {
            if (*x < '0' || *x > '9') return BRAID_EINVAL;
            v = v * 10 + (*x - '0');
        }
        if (v < 1 || v > 65535) return BRAID_EINVAL;
        u->port = v;
    }
    const char *t = p, *te = p;
    while (*te && *te != '#') te++;
    for (const char *x = t; x < te; x++)
        if ((unsigned char)*x <= 0x20 || *x == 0x7f) return BRAID_EINVAL;
    sbuf tb = { 0 };
    if (t == te || *t == '?') sb_str(&tb, "/");
    sb_add(&tb, t, (size_t)(te - t));
    u->target = tb.p;
    u->host = dupn(h, (size_t)(he - h));
    bool dflt = u->port == (u->https ? 443 : 80);
    sbuf hb = { 0 };
    sb_add(&hb, *a == '[' ? a : h, (size_t)((*a == '[' ? he + 1 : he) - (*a == '[' ? a : h)));
    if (!dflt) {
        char pb[16];
        snprintf(pb, sizeof pb, ":%d", u->port);
        sb_str(&hb, pb);
    }
    u->hosthdr = hb.p;
    if (tb.oom || hb.oom || !u->host || !u->target || !u->hosthdr) {
        url_parts_free(u);
        return BRAID_ENOMEM;
    }
    return 0;
}

/* The length of the URI scheme loc starts with (RFC 3986 3.1: ALPHA *(ALPHA
 * / DIGIT / "+" / "-" / ".") followed by ':'), 0 for a relative reference. */
static size_t scheme_len(const char *loc) {
    if (!((loc[0] | 0x20) >= 'a' && (loc[0] | 0x20) <= 'z')) return 0;
    size_t i = 1;
    while (((loc[i] | 0x20) >= 'a' && (loc[i] | 0x20) <= 'z') || (loc[i] >= '0' && loc[i] <= '9') ||
           loc[i] == '+' || loc[i] == '-' || loc[i] == '.')
        i++;
    return loc[i] == ':' ? i : 0;
}

/* Resolve a Location against the current URL: absolute, scheme-relative,
 * absolute-path or relative-path references. NULL on allocation failure. */
static char *resolve_location(const hc_req *q, const char *loc) {
    sbuf b = { 0 };
    if (!strncasecmp(loc, "http://", 7) || !strncasecmp(loc, "https://", 8)) {
        sb_str(&b, loc);
    } else if (loc[0] == '/' && loc[1] == '/') {
        sb_str(&b, q->https ? "https:" : "http:");
        sb_str(&b, loc);
    } else {
        sb_str(&b, q->https ? "https://" : "http://");
        sb_str(&b, q->hosthdr);
        if (loc[0] == '/') {
            sb_str(&b, loc);
        } else {
            const char *t = q->target, *slash = t;
            for (const char *x = t; *x && *x != '?'; x++)
                if (*x == '/') slash = x;
            sb_add(&b, t, (size_t)(slash - t) + 1);
            sb_str(&b, loc);
        }
    }
    if (b.oom) { braid_free(b.p); return NULL; }
    return b.p;
}

/* ---- responses ---------------------------------------------------------------------- */
void braid_http_client_response_free(braid_http_client_response *r) {
    if (!r) return;
    braid_free(r->headers);
    braid_free(r->body);
    braid_free(r);   /* strings live in the same block as r */
}
static void resp_dtor(void *v) { braid_http_client_response_free(v); }

const char *braid_http_client_response_header(const braid_http_client_response *r, const char *name) {
    if (!r || !name) return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < r->num_headers; i++)
        if (r->headers[i].name_len == n && !strncasecmp(r->headers[i].name, name, n))
            return r->headers[i].value;
    return NULL;
}

/* Copy a parsed head into one block: the struct, then reason, url and the
 * header strings, each NUL-terminated. */
static braid_http_client_response *resp_make(const braid_http_message *m, const char *url) {
    size_t need = sizeof(braid_http_client_response) + m->reason_len + 1 + strlen(url) + 1;
    for (size_t i = 0; i < m->num_headers; i++)
        need += m->headers[i].name_len + m->headers[i].value_len + 2;
    braid_http_client_response *r = braid_calloc(1, need);
    if (!r) return NULL;
    if (m->num_headers && !(r->headers = braid_calloc(m->num_headers, sizeof *r->headers))) {
        braid_free(r);
        return NULL;
    }
    char *s = (char *)(r + 1);
#define PUT(dst, src, n) do { memcpy(s, (src), (n)); s[(n)] = 0; (dst) = s; s += (n) + 1; } while (0)
    PUT(r->reason, m->reason, m->reason_len);
    PUT(r->url, url, strlen(url));
    for (size_t i = 0; i < m->num_headers; i++) {
        PUT(r->headers[i].name, m->headers[i].name, m->headers[i].name_len);
        r->headers[i].name_len = m->headers[i].name_len;
        PUT(r->headers[i].value, m->headers[i].value, m->headers[i].value_len);
        r->headers[i].value_len = m->headers[i].value_len;
    }
#undef PUT
    r->num_headers = m->num_headers;
    r->status = m->status;
    r->minor_version = m->minor_version;
    return r;
}

/* ---- requests: lifetime ------------------------------------------------------------ */
static void req_ref(hc_req *q) { q->refs++; }

static void req_free_fields(hc_req *q) {
    for (size_t i = 0; i < q->nfields; i++) {
        braid_free(q->fields[i].name);
        braid_free(q->fields[i].value);
    }
    braid_free(q->fields);
}

static void req_unref(hc_req *q) {
    if (--q->refs) return;
    braid_free(q->method);
    braid_free(q->url);
    braid_free(q->host);
    braid_free(q->hosthdr);
    braid_free(q->target);
    req_free_fields(q);
    braid_free(q->body);
    braid_free(q->wire);
    braid_free(q->location);
    braid_free(q->buf);
    braid_http_client_response_free(q->resp);
    braid_free(q);
}

/* Unlink a finished request from the client. */
static void req_unlink(hc_req *q) {
    braid_timer_stop(&q->timer);
    if (q->prev) q->prev->next = q->next;
    else if (q->c->reqs == q) q->c->reqs = q->next;
    if (q->next) q->next->prev = q->prev;
    q->prev = q->next = NULL;
}

static void set_timer(hc_req *q, int phase, uint64_t ns) {
    q->phase = phase;
    if (ns == BRAID_FOREVER) braid_timer_stop(&q->timer);
    else braid_timer_start(&q->timer, ns);
}

/* ---- connections and pools ------------------------------------------------------------ */
static void client_maybe_free(braid_http_client *c);

static void idle_remove(hc_conn *k) {
    if (k->state != CONN_IDLE) return;
    hc_pool *p = k->pool;
    if (k->prev) k->prev->next = k->next;
    else p->idle = k->next;
    if (k->next) k->next->prev = k->prev;
    k->prev = k->next = NULL;
    p->nidle--;
    p->c->st.idle--;
    braid_timer_stop(&k->idle_timer);
}

static void conn_close(hc_conn *k, bool clean) {
    idle_remove(k);
    k->state = CONN_CLOSING;
    k->req = NULL;
    if (k->lost || !k->base.transport) return;
    if (clean) braid_transport_close(k->base.transport, BRAID_FOREVER);
    else braid_transport_abort(k->base.transport);
}

/* ---- per-origin connection slots (max_per_host) ---------------------------------- */
static void queue_remove(hc_req *q) {
    if (!q->queued) return;
    hc_pool *p = q->pool;
    hc_req **pp = &p->wait_head, *prev = NULL;
    while (*pp && *pp != q) { prev = *pp; pp = &(*pp)->wnext; }
    if (*pp) *pp = q->wnext;
    if (p->wait_tail == q) p->wait_tail = prev;
    q->wnext = NULL;
    q->queued = false;
    p->c->st.waiting--;
}

/* Start waiting requests while a connection is idle or a slot is free. */
static void pool_kick(hc_pool *p) {
    braid_http_client *c = p->c;
    while (p->wait_head && !c->closing &&
           (p->idle || !c->o.max_per_host || p->slots < c->o.max_per_host)) {
        hc_req *q = p->wait_head;
        queue_remove(q);
        req_start(q);
    }
}

static void slot_release(hc_pool *p) {
    p->slots--;
    pool_kick(p);
}

static void conn_free(hc_conn *k);
/* A request let go of k: free it if its protocol is already gone. */
static void conn_unhold(hc_conn *k) {
    if (k->destroyed && !k->processing) conn_free(k);
}

static void idle_expired(braid_timer *t, void *arg) {
    (void)t;
    conn_close(arg, true);
}

/* The request is over with this connection: pool it if it can serve another. */
static void conn_release(hc_conn *k, bool reusable) {
    hc_pool *p = k->pool;
    braid_http_client *c = p->c;
    k->req = NULL;
    if (!reusable || k->lost || k->inlen || c->closing || c->o.max_idle_per_host == 0 ||
        c->o.idle_timeout == 0) {
        conn_close(k, true);
        return;
    }
    /* Idle connections hold no read memory. */
    braid_free(k->in);
    k->in = NULL;
    k->incap = 0;
    k->state = CONN_IDLE;
    k->prev = NULL;
    k->next = p->idle;
    if (p->idle) p->idle->prev = k;
    p->idle = k;
    p->nidle++;
    c->st.idle++;
    if (c->o.idle_timeout != BRAID_FOREVER) {
        braid_timer_start(&k->idle_timer, c->o.idle_timeout);
        braid_timer_unref(&k->idle_timer);
    }
    if (p->nidle > c->o.max_idle_per_host) {
        hc_conn *old = p->idle;
        while (old->next) old = old->next;
        conn_close(old, true);
    }
    braid_transport_resume_reading(k->base.transport);
    pool_kick(p);   /* a waiting request takes it at once */
}

static void conn_made(braid_protocol *bp) {
    hc_conn *k = (hc_conn *)bp;
    braid_http_client *c = k->pool->c;
    c->st.connections++;
    if (!k->pool->https) return;
    braid_tls_wrap_options o = { .ctx = c->tls, .server_name = k->pool->host };
    int rc = braid_tls_start(bp, &o);
    if (rc < 0) braid_transport_abort_with(bp->transport, rc);
}

static void conn_data(braid_protocol *bp, const void *buf, size_t len) {
    hc_conn *k = (hc_conn *)bp;
    if (k->state != CONN_BUSY || !k->req) {
        /* Unsolicited bytes on an idle connection (or one being set up):
         * nothing can be trusted on it any more. */
        if (k->state != CONN_CLOSING) conn_close(k, false);
        return;
    }
    if (k->inlen + len > k->incap) {
        size_t cap = k->incap ? k->incap : 4096;
        while (cap < k->inlen + len) cap *= 2;
        char *n = braid_realloc(k->in, cap);
        if (!n) {
            req_fail(k->req, BRAID_ENOMEM, NULL, "out of memory reading the response");
            return;
        }
        k->in = n;
        k->incap = cap;
    }
    memcpy(k->in + k->inlen, buf, len);
    k->inlen += len;
    k->req->got_bytes = true;
    process(k);
}

static bool idempotent(const char *m) {
    static const char *const ok[] = { "GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE" };
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        if (!strcmp(m, ok[i])) return true;
    return false;
}

static void req_complete(hc_req *q);

/* A pooled connection the server had closed under q before q heard a byte:
 * an idempotent request with its body in memory goes once more on a new one.
 * false: q is not retryable (the caller fails it). */
static bool retry_fresh(hc_req *q, hc_conn *k) {
    if (!q->reused_conn || q->retried || !idempotent(q->method) || q->source) return false;
    k->req = NULL;
    q->conn = NULL;
    q->retried = true;
    q->pool->c->st.retried++;
    conn_close(k, false);   /* nothing when it is already lost */
    conn_unhold(k);
    req_start(q);
    return true;
}

/* The connection ended under q and nothing buffered can move q on any more
 * (paused requests wait: their buffered bytes may still complete them). */
static void lost_verdict(hc_req *q, hc_conn *k) {
    int code = k->lost_code;
    if (q->phase == PH_BODY && q->body_kind == BRAID_HTTP_BODY_EOF && code == BRAID_ECONNECTION_DONE) {
        req_complete(q);
        return;
    }
    const char *when = q->phase == PH_BODY ? "in the middle of the response body" : "before the response head ended";
    if (k->tls_failed) {
        /* TLS said why (a verification failure, a bad record): that is the
         * error, as TLS put it (req_fail puts the method and URL first). */
        req_fail(q, code, NULL, "%s (TLS)", k->detail[0] ? k->detail : braid_strerror(code));
        return;
    }
    if (q->phase == PH_HEADERS && !q->got_bytes && !k->inlen && retry_fresh(q, k)) return;
    if (code == BRAID_ECONNECTION_DONE) code = BRAID_ECONNECTION_LOST;
    req_fail(q, code, NULL, "%s:%d: connection closed %s%s%s", k->pool->host, k->pool->port, when,
             k->detail[0] ? ": " : "", k->detail);
}

static void conn_lost(braid_protocol *bp, const braid_failure *why) {
    hc_conn *k = (hc_conn *)bp;
    idle_remove(k);
    k->lost = true;
    k->lost_code = why ? why->code : BRAID_ECONNECTION_LOST;
    const char *d = NULL;
    int tls = braid_tls_transport_error(bp->transport, &d);
    if (tls) {
        k->lost_code = tls;
        k->tls_failed = true;
    }
    snprintf(k->detail, sizeof k->detail, "%s", d ? d : "");
    if (k->state != CONN_BUSY) k->state = CONN_CLOSING;
    if (k->slot) {
        k->slot = false;
        slot_release(k->pool);
    }
    if (k->req) process(k);   /* delivers what is left and decides */
}

static void conn_free(hc_conn *k) {
    braid_http_client *c = k->pool->c;
    idle_remove(k);
    braid_timer_stop(&k->idle_timer);
    braid_free(k->in);
    braid_free(k);
    c->conns--;
    client_maybe_free(c);
}

static void conn_destroy(braid_protocol *bp) {
    hc_conn *k = (hc_conn *)bp;
    if (k->req) {
        /* A paused request still has bytes of this connection to read. */
        k->destroyed = true;
        return;
    }
    conn_free(k);
}

static const braid_protocol_ops conn_ops = {
    .connection_made = conn_made,
    .data_received = conn_data,
    .connection_lost = conn_lost,
    .destroy = conn_destroy,
};

static braid_protocol *conn_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    hc_pool *p = f->user;
    hc_conn *k = braid_calloc(1, sizeof *k);
    if (!k) return NULL;
    k->base.ops = &conn_ops;
    k->pool = p;
    k->state = CONN_CONNECTING;
    braid_timer_init(p->c->loop, &k->idle_timer, idle_expired, k);
    p->c->conns++;
    return &k->base;
}

static hc_pool *pool_get(braid_http_client *c, bool https, const char *host, int port) {
    for (hc_pool *p = c->pools; p; p = p->next)
        if (p->https == https && p->port == port && !strcasecmp(p->host, host)) return p;
    hc_pool *p = braid_calloc(1, sizeof *p);
    if (!p || !(p->host = braid_strdup(host))) {
        braid_free(p);
        return NULL;
    }
    p->c = c;
    p->https = https;
    p->port = port;
    p->f.build_protocol = conn_build;
    p->f.user = p;
    p->next = c->pools;
    c->pools = p;
    return p;
}

static void client_maybe_free(braid_http_client *c) {
    if (!c->closing || c->conns) return;
    for (hc_pool *p = c->pools, *n; p; p = n) {
        n = p->next;
        braid_free(p->host);
        braid_free(p);
    }
    if (c->tls) braid_tls_ctx_unref(c->tls);
    braid_free(c);
}

/* ---- the request state machine --------------------------------------------------------- */
/* Fail q: close its connection (never reused), stop its connect, report. */
static void req_fail(hc_req *q, int code, braid_failure *cause, const char *fmt, ...) {
    if (q->done) {
        if (cause) braid_failure_free(cause);
        return;
    }
    q->done = true;
    q->phase = PH_DONE;
    req_unlink(q);
    queue_remove(q);
    bool slot = q->slot;
    q->slot = false;
    if (q->connect_d) {
        braid_deferred *cd = q->connect_d;
        q->connect_d = NULL;
        braid_deferred_cancel(cd);
        braid_deferred_unref(cd);
    }
    upload_detach(q);
    if (q->conn) {
        hc_conn *k = q->conn;
        q->conn = NULL;
        conn_close(k, false);
        conn_unhold(k);
    }
    if (slot) slot_release(q->pool);
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!q->fired) {
        q->fired = true;
        const char *m = q->method ? q->method : "?", *u = q->url ? q->url : "?";
        braid_failure *f = cause ? braid_failure_wrap(cause, code, "%s %s: %s", m, u, msg)
                                 : braid_failure_new(code, "%s %s: %s", m, u, msg);
        braid_deferred *d = q->d;
        q->d = NULL;
        braid_deferred_errback(d, f);
    } else {
        if (cause) braid_failure_free(cause);
        if (q->on_end) q->on_end(q->resp, code, q->arg);
    }
    req_unref(q);
}

static void on_timeout(braid_timer *t, void *arg) {
    (void)t;
    hc_req *q = arg;
    static const char *const what[] = { "connect", "response header", "response body", "" };
    req_fail(q, BRAID_ETIMEDOUT, NULL, "%s timeout", what[q->phase]);
}

/* Serialise the request line, fields and body into q->wire. */
static int build_wire(hc_req *q) {
    sbuf b = { 0 };
    sb_str(&b, q->method);
    sb_str(&b, " ");
    sb_str(&b, q->target);
    sb_str(&b, " HTTP/1.1\r\n");
    if (!q->user_host) {
        sb_str(&b, "Host: ");
        sb_str(&b, q->hosthdr);
        sb_str(&b, "\r\n");
    }
    for (size_t i = 0; i < q->nfields; i++) {
        if (q->drop_credentials && (!strcasecmp(q->fields[i].name, "Authorization") ||
                                    !strcasecmp(q->fields[i].name, "Cookie")))
            continue;
        sb_str(&b, q->fields[i].name);
        sb_str(&b, ": ");
        sb_str(&b, q->fields[i].value);
        sb_str(&b, "\r\n");
    }
    if (q->source) {
        if (q->up_len == UINT64_MAX) {
            sb_str(&b, "Transfer-Encoding: chunked\r\n\r\n");
        } else {
            char cl[48];
            snprintf(cl, sizeof cl, "Content-Length: %" PRIu64 "\r\n\r\n", q->up_len);
            sb_str(&b, cl);
        }
    } else if (q->has_body && q->chunked) {
        sb_str(&b, "Transfer-Encoding: chunked\r\n\r\n");
        if (q->body_len) {
            char h[BRAID_HTTP_CHUNK_HEAD_MAX];
            sb_add(&b, h, braid_http_chunk_head(h, q->body_len));
            sb_add(&b, q->body, q->body_len);
            sb_str(&b, "\r\n");
        }
        sb_str(&b, BRAID_HTTP_CHUNKED_END);
    } else {
        if (q->has_body || !strcmp(q->method, "POST") || !strcmp(q->method, "PUT")) {
            char cl[48];
            snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", q->body_len);
            sb_str(&b, cl);
        }
        sb_str(&b, "\r\n");
        if (q->body_len) sb_add(&b, q->body, q->body_len);
    }
    if (b.oom) {
        braid_free(b.p);
        return BRAID_ENOMEM;
    }
    braid_free(q->wire);
    q->wire = b.p;
    q->wire_len = b.len;
    return 0;
}

static void attach(hc_req *q, hc_conn *k) {
    k->req = q;
    k->state = CONN_BUSY;
    k->inlen = 0;
    k->prev_len = 0;
    q->conn = k;
    q->reused_conn = k->served > 0;
    if (q->reused_conn) q->c->st.reused++;
    k->served++;
    q->got_bytes = false;
    int rc = braid_transport_write(k->base.transport, q->wire, q->wire_len);
    /* BRAID_ESHUTDOWN on a pooled connection: the server's FIN came in with
     * (or after) the last response, and the transport is already closing. */
    if (rc == BRAID_ESHUTDOWN && retry_fresh(q, k)) return;
    if (rc < 0) {
        req_fail(q, rc, NULL, "cannot send the request");
        return;
    }
    if (!q->source) {
        set_timer(q, PH_HEADERS, q->t_headers);
        return;
    }
    /* The header timeout starts when the upload ends. */
    q->phase = PH_HEADERS;
    braid_timer_stop(&q->timer);
    q->upload = UP_SENDING;
    q->up_t = k->base.transport;
    req_ref(q);
    rc = braid_transport_register_producer(q->up_t, &q->producer, false);   /* produces once */
    if (rc < 0) {
        q->up_t = NULL;
        req_fail(q, rc, NULL, "cannot stream the request body");
    }
    req_unref(q);
}

static void upload_detach(hc_req *q) {
    if (!q->up_t) return;
    if (q->conn && !q->conn->lost) braid_transport_unregister_producer(q->up_t);
    q->up_t = NULL;
}

static void up_resume(braid_producer *p) {
    hc_req *q = p->arg;
    if (q->done || q->upload != UP_SENDING) return;
    req_ref(q);
    q->source((braid_http_upload *)q, q->arg);
    req_unref(q);
}

static void up_stop(braid_producer *p) {
    /* The connection is going away: the request hears it through connection_lost. */
    ((hc_req *)p->arg)->up_t = NULL;
}

static bool uploading(const hc_req *q) {
    return q->upload == UP_SENDING && !q->done && q->conn && !q->conn->lost;
}

int braid_http_upload_write(braid_http_upload *u, const void *buf, size_t len) {
    hc_req *q = (hc_req *)u;
    if (!q || !uploading(q)) return BRAID_ESHUTDOWN;
    if (!len) return 0;
    if (q->up_len != UINT64_MAX && len > q->up_len - q->up_sent) return BRAID_EINVAL;
    braid_transport *t = q->conn->base.transport;
    int rc;
    if (q->up_len == UINT64_MAX) {
        char head[BRAID_HTTP_CHUNK_HEAD_MAX];
        struct iovec v[3] = { { head, braid_http_chunk_head(head, len) }, { (void *)buf, len }, { "\r\n", 2 } };
        rc = braid_transport_writev(t, v, 3);
    } else {
        rc = braid_transport_write(t, buf, len);
    }
    if (rc < 0) return rc;
    q->up_sent += len;
    return 0;
}

int braid_http_upload_end(braid_http_upload *u) {
    hc_req *q = (hc_req *)u;
    if (!q || !uploading(q)) return BRAID_ESHUTDOWN;
    q->upload = UP_ENDED;
    upload_detach(q);
    if (q->up_len != UINT64_MAX && q->up_sent != q->up_len) {
        req_fail(q, BRAID_EINVAL, NULL, "upload ended after %" PRIu64 " of %" PRIu64 " bytes", q->up_sent,
                 q->up_len);
        return BRAID_EINVAL;
    }
    int rc = 0;
    if (q->up_len == UINT64_MAX) rc = braid_transport_write(q->conn->base.transport, BRAID_HTTP_CHUNKED_END, 5);
    if (rc < 0) {
        req_fail(q, rc, NULL, "cannot send the request body");
        return rc;
    }
    if (q->phase == PH_HEADERS) set_timer(q, PH_HEADERS, q->t_headers);
    return 0;
}

static braid_result on_connected(braid_result r, void *arg) {
    hc_req *q = arg;
    braid_deferred *cd = q->connect_d;
    if (!cd) {   /* stale: the request ended while connecting */
        braid_result_drop(r);
        return braid_result_ok(NULL);
    }
    q->connect_d = NULL;
    braid_deferred_unref(cd);
    hc_conn *k = r.value;
    braid_result_drop(r);
    if (k->lost || k->state != CONN_CONNECTING) {
        req_fail(q, BRAID_ECONNECTION_LOST, NULL, "connection lost as it was made");
    } else {
        if (q->slot) {   /* the slot passes to the connection */
            q->slot = false;
            k->slot = true;
        }
        attach(q, k);
    }
    return braid_result_ok(NULL);
}

static braid_result on_connect_failed(braid_result r, void *arg) {
    hc_req *q = arg;
    braid_deferred *cd = q->connect_d;
    if (!cd) {   /* our own cancel of a connect the request no longer needs */
        braid_result_drop(r);
        return braid_result_ok(NULL);
    }
    q->connect_d = NULL;
    braid_deferred_unref(cd);
    braid_failure *f = r.failure;
    r.failure = NULL;
    braid_result_drop(r);
    req_fail(q, f->code, f, "cannot connect to %s:%d", q->host, q->port);
    return braid_result_ok(NULL);
}

/* Run q (again): on an idle pooled connection if there is one (unless this
 * is the retry after a stale one), else on a new connection. */
static void req_start(hc_req *q) {
    braid_http_client *c = q->c;
    q->phase = PH_CONNECT;
    q->got_bytes = false;
    if (q->https && !c->tls) {
        char err[256] = "";
        int rc = braid_tls_ctx_new(BRAID_TLS_CLIENT, &(braid_tls_options){ 0 }, err, sizeof err, &c->tls);
        if (rc < 0) {
            c->tls = NULL;
            req_fail(q, rc, NULL, "TLS client context: %s", err);
            return;
        }
    }
    hc_pool *p = pool_get(c, q->https, q->host, q->port);
    if (!p) {
        req_fail(q, BRAID_ENOMEM, NULL, "out of memory");
        return;
    }
    q->pool = p;
    if (!q->retried) {
        hc_conn *k = p->idle;
        if (k) {
            idle_remove(k);
            attach(q, k);
            return;
        }
    }
    set_timer(q, PH_CONNECT, q->t_connect);   /* waiting for a slot counts too */
    if (c->o.max_per_host && p->slots >= c->o.max_per_host && !q->retried) {
        q->queued = true;
        q->wnext = NULL;
        if (p->wait_tail) p->wait_tail->wnext = q;
        else p->wait_head = q;
        p->wait_tail = q;
        c->st.waiting++;
        return;
    }
    p->slots++;
    q->slot = true;
    braid_deferred *cd;
    if (c->o.connect) {
        cd = c->o.connect(c->o.connect_arg, c->loop, p->host, p->port, p->https, &p->f);
    } else {
        /* No endpoint timeout: the connect phase's timer (connect_timeout) governs. */
        braid_endpoint ep = { .kind = BRAID_ENDPOINT_TCP, .port = p->port, .timeout = BRAID_FOREVER };
        if (snprintf(ep.host, sizeof ep.host, "%s", p->host) >= (int)sizeof ep.host)
            cd = braid_deferred_fail(c->loop, braid_failure_new(BRAID_EINVAL, "host name too long"));
        else
            cd = braid_endpoint_connect_typed(c->loop, &ep, &p->f);
    }
    if (!cd) {
        req_fail(q, BRAID_ENOMEM, NULL, "out of memory connecting");
        return;
    }
    q->connect_d = cd;
    req_ref(q);
    if (braid_deferred_add(cd, on_connected, on_connect_failed, q) < 0) {
        req_fail(q, BRAID_ENOMEM, NULL, "out of memory connecting");
    }
    req_unref(q);
}

/* The response body ended (or there was none). */
static void req_complete(hc_req *q) {
    bool upload_done = q->upload != UP_SENDING;
    upload_detach(q);
    if (q->upload == UP_SENDING) q->upload = UP_ENDED;   /* answered early: the rest is not wanted */
    hc_conn *k = q->conn;
    q->conn = NULL;
    braid_timer_stop(&q->timer);
    if (k) {
        conn_release(k, q->keep_alive && q->body_kind != BRAID_HTTP_BODY_EOF && upload_done);
        conn_unhold(k);
    }
    if (q->discard) {
        /* A redirect to follow. */
        q->discard = false;
        q->redirects++;
        url_parts u;
        int rc = parse_url(q->location, &u);
        if (rc < 0) {
            req_fail(q, BRAID_EHTTP, NULL, "cannot follow the redirect to '%s'", q->location);
            return;
        }
        int st = q->resp->status;
        if (st == 303 || ((st == 301 || st == 302) && !strcmp(q->method, "POST"))) {
            if (strcmp(q->method, "HEAD")) {
                braid_free(q->method);
                q->method = braid_strdup("GET");
            }
            braid_free(q->body);
            q->body = NULL;
            q->body_len = 0;
            q->has_body = false;
            q->chunked = false;
            q->source = NULL;
        }
        if (u.https != q->https || u.port != q->port || strcasecmp(u.host, q->host))
            q->drop_credentials = true;
        braid_free(q->url);
        braid_free(q->host);
        braid_free(q->hosthdr);
        braid_free(q->target);
        q->url = q->location;
        q->location = NULL;
        q->https = u.https;
        q->host = u.host;
        q->hosthdr = u.hosthdr;
        q->target = u.target;
        q->port = u.port;
        braid_http_client_response_free(q->resp);
        q->resp = NULL;
        q->retried = false;
        q->upload = UP_NONE;
        q->up_sent = 0;
        if (!q->method || build_wire(q) < 0) {
            if (!q->method) q->method = braid_strdup("GET");
            req_fail(q, BRAID_ENOMEM, NULL, "out of memory following a redirect");
            return;
        }
        req_start(q);
        return;
    }
    q->done = true;
    q->phase = PH_DONE;
    req_unlink(q);
    braid_http_client_response *r = q->resp;
    r->redirects = q->redirects;
    if (!q->on_body) {
        q->resp = NULL;
        r->body = q->buf ? q->buf : dupn("", 0);
        r->body_len = q->len;
        q->buf = NULL;
        if (!r->body) {
            braid_http_client_response_free(r);
            q->done = false;
            req_fail(q, BRAID_ENOMEM, NULL, "out of memory");
            return;
        }
        q->fired = true;
        braid_deferred *d = q->d;
        q->d = NULL;
        braid_deferred_callback(d, r, resp_dtor);
    } else if (q->on_end) {
        q->on_end(r, 0, q->arg);
    }
    req_unref(q);
}

/* Body bytes: stream them, buffer them or drop them. */
static void deliver(hc_req *q, const char *buf, size_t n) {
    if (!n) return;
    if (q->t_body != BRAID_FOREVER && !q->paused) braid_timer_start(&q->timer, q->t_body);
    if (q->discard) return;
    if (q->on_body) {
        q->on_body(q->resp, buf, n, q->arg);
        return;
    }
    if (q->len + n > q->max_body) {
        req_fail(q, BRAID_EHTTP_BODY_TOO_LARGE, NULL, "response body over %" PRIu64 " bytes", q->max_body);
        return;
    }
    if (q->len + n + 1 > q->cap) {
        size_t cap = q->cap ? q->cap : 1024;
        while (cap < q->len + n + 1) cap *= 2;
        char *b = braid_realloc(q->buf, cap);
        if (!b) {
            req_fail(q, BRAID_ENOMEM, NULL, "out of memory buffering the body");
            return;
        }
        q->buf = b;
        q->cap = cap;
    }
    memcpy(q->buf + q->len, buf, n);
    q->len += n;
    q->buf[q->len] = 0;
}

static void consume(hc_conn *k, size_t n) {
    memmove(k->in, k->in + n, k->inlen - n);
    k->inlen -= n;
}

/* A response head arrived: the response, its framing, a redirect? Returns
 * false if q ended. */
static bool on_head(hc_req *q, hc_conn *k, const braid_http_message *m) {
    q->resp->priv = q;
    q->resp->reused = q->reused_conn;
    q->body_kind = m->body;
    q->remaining = m->content_length;
    q->keep_alive = m->keep_alive && !q->conn_close;
    q->discard = false;
    q->len = 0;
    if (q->max_redirects > 0) {
        int s = m->status;
        const char *loc = braid_http_client_response_header(q->resp, "Location");
        bool resend = s == 307 || s == 308 || ((s == 301 || s == 302) && strcmp(q->method, "POST"));
        /* An empty Location names no target: the 3xx is the answer, as one
         * without Location is. */
        if (loc && *loc && (s == 301 || s == 302 || s == 303 || s == 307 || s == 308) && !(resend && q->source)) {
            size_t sl = scheme_len(loc);
            if (sl && !(sl == 4 && !strncasecmp(loc, "http", 4)) && !(sl == 5 && !strncasecmp(loc, "https", 5))) {
                req_fail(q, BRAID_EHTTP, NULL, "%d redirect to an unsupported scheme \"%.*s\" (Location: %.200s)",
                         s, (int)sl, loc, loc);
                return false;
            }
            if (q->redirects >= q->max_redirects) {
                req_fail(q, BRAID_EHTTP, NULL, "too many redirects (%d)", q->redirects);
                return false;
            }
            braid_free(q->location);
            q->location = resolve_location(q, loc);
            if (!q->location) {
                req_fail(q, BRAID_ENOMEM, NULL, "out of memory");
                return false;
            }
            q->discard = true;
        }
    }
    if (m->body == BRAID_HTTP_BODY_CHUNKED)
        braid_http_chunked_init(&q->ch, q->on_body || q->discard ? UINT64_MAX : q->max_body);
    if (!q->on_body && !q->discard && m->body == BRAID_HTTP_BODY_LENGTH && m->content_length > q->max_body) {
        req_fail(q, BRAID_EHTTP_BODY_TOO_LARGE, NULL, "response body of %" PRIu64 " bytes over the %" PRIu64
                 "-byte limit", m->content_length, q->max_body);
        return false;
    }
    set_timer(q, PH_BODY, q->t_body);
    if (q->on_body && !q->discard) {
        q->fired = true;
        braid_deferred *d = q->d;
        q->d = NULL;
        braid_deferred_callback(d, q->resp, NULL);
        if (q->done || q->conn != k) return false;
    }
    if (m->body == BRAID_HTTP_BODY_NONE) {
        req_complete(q);
        return false;
    }
    return true;
}

/* Parse and deliver what conn->in holds, as far as it goes. */
static void process(hc_conn *k) {
    if (k->processing) {
        k->again = true;
        return;
    }
    hc_req *q = k->req;
    if (!q) return;
    k->processing = true;
    req_ref(q);
    for (;;) {
        k->again = false;
        if (q->done || q->conn != k || q->paused) break;
        if (q->phase == PH_HEADERS) {
            braid_http_header hdrs[HC_MAX_HEADERS];
            braid_http_message m;
            braid_http_limits lim = { .max_head = q->c->o.max_head, .max_body = UINT64_MAX };
            int n = braid_http_parse_response(&m, hdrs, HC_MAX_HEADERS, k->in, k->inlen, k->prev_len,
                                              !strcmp(q->method, "HEAD"), &lim);
            if (n == BRAID_EHTTP_INCOMPLETE) {
                k->prev_len = k->inlen;
                break;
            }
            if (n < 0) {
                req_fail(q, n, NULL, "bad response from %s:%d: %s", k->pool->host, k->pool->port,
                         m.error ? m.error : braid_strerror(n));
                break;
            }
            k->prev_len = 0;
            if (m.status < 200) {
                if (m.status == 101) {
                    req_fail(q, BRAID_EHTTP, NULL, "unexpected 101 Switching Protocols");
                    break;
                }
                consume(k, (size_t)n);   /* 100 Continue, 103 Early Hints: skip */
                continue;
            }
            /* Copy the head out before it leaves the buffer. */
            if (!(q->resp = resp_make(&m, q->url))) {
                req_fail(q, BRAID_ENOMEM, NULL, "out of memory");
                break;
            }
            consume(k, (size_t)n);
            if (!on_head(q, k, &m)) break;
            continue;
        }
        if (q->phase != PH_BODY || !k->inlen) break;
        if (q->body_kind == BRAID_HTTP_BODY_LENGTH) {
            size_t n = k->inlen < q->remaining ? k->inlen : (size_t)q->remaining;
            q->remaining -= n;
            deliver(q, k->in, n);
            if (q->done || q->conn != k) break;
            consume(k, n);
            if (!q->remaining) {
                req_complete(q);
                break;
            }
        } else if (q->body_kind == BRAID_HTTP_BODY_CHUNKED) {
            size_t out = 0, inlen = k->inlen;
            ssize_t rc = braid_http_chunked_decode(&q->ch, k->in, inlen, &out);
            if (rc != BRAID_EHTTP_INCOMPLETE && rc < 0) {
                req_fail(q, (int)rc, NULL, "bad chunked body from %s:%d", k->pool->host, k->pool->port);
                break;
            }
            size_t used = rc == BRAID_EHTTP_INCOMPLETE ? inlen : (size_t)rc;
            deliver(q, k->in, out);
            if (q->done || q->conn != k) break;
            consume(k, used);
            if (rc != BRAID_EHTTP_INCOMPLETE) {
                req_complete(q);
                break;
            }
        } else {   /* until EOF */
            size_t n = k->inlen;
            deliver(q, k->in, n);
            if (q->done || q->conn != k) break;
            consume(k, n);
        }
        if (!k->again && !k->inlen) break;
    }
    if (k->lost && !q->done && q->conn == k && !q->paused) lost_verdict(q, k);
    k->processing = false;
    req_unref(q);
    if (k->destroyed && !k->req) conn_free(k);   /* let go of inside the loop */
}

/* ---- streaming controls ---------------------------------------------------------------- */
static hc_req *live_req(braid_http_client_response *r) {
    hc_req *q = r ? r->priv : NULL;
    if (!q || q->done || !q->on_body || q->resp != r) return NULL;
    return q;
}

void braid_http_client_response_pause(braid_http_client_response *r) {
    hc_req *q = live_req(r);
    if (!q || q->paused) return;
    q->paused = true;
    if (q->phase == PH_BODY) braid_timer_stop(&q->timer);
    if (q->conn && !q->conn->lost) braid_transport_pause_reading(q->conn->base.transport);
}

void braid_http_client_response_resume(braid_http_client_response *r) {
    hc_req *q = live_req(r);
    if (!q || !q->paused) return;
    q->paused = false;
    if (q->phase == PH_BODY && q->t_body != BRAID_FOREVER) braid_timer_start(&q->timer, q->t_body);
    hc_conn *k = q->conn;
    if (!k) return;
    if (!k->lost) braid_transport_resume_reading(k->base.transport);
    if (k->inlen || k->lost) process(k);
}

void braid_http_client_response_abort(braid_http_client_response *r) {
    hc_req *q = live_req(r);
    if (!q) return;
    braid_http_client_end_cb end = q->on_end;
    q->on_end = NULL;   /* the caller knows */
    req_fail(q, BRAID_ECANCELED, NULL, "aborted");
    (void)end;
}

/* ---- the public entry points ------------------------------------------------------------- */
int braid_http_client_new(braid_loop *loop, const braid_http_client_options *o, braid_http_client **out) {
    if (!loop || !out) return BRAID_EINVAL;
    braid_http_client *c = braid_calloc(1, sizeof *c);
    if (!c) return BRAID_ENOMEM;
    c->loop = loop;
    if (o) c->o = *o;
    if (!c->o.max_idle_per_host) c->o.max_idle_per_host = HC_DEFAULT_MAX_IDLE;
    if (!c->o.idle_timeout) c->o.idle_timeout = HC_DEFAULT_IDLE;
    if (!c->o.connect_timeout) c->o.connect_timeout = HC_DEFAULT_CONNECT;
    if (!c->o.header_timeout) c->o.header_timeout = HC_DEFAULT_HEADERS;
    if (!c->o.body_timeout) c->o.body_timeout = HC_DEFAULT_BODY;
    if (!c->o.max_body) c->o.max_body = HC_DEFAULT_MAX_BODY;
    if (!c->o.max_head) c->o.max_head = BRAID_HTTP_MAX_HEAD;
    if (c->o.tls_ctx) {
        c->tls = c->o.tls_ctx;
        braid_tls_ctx_ref(c->tls);
    }
    *out = c;
    return 0;
}

void braid_http_client_free(braid_http_client *c) {
    if (!c || c->closing) return;
    c->closing = true;
    c->conns++;   /* hold the client while failing requests */
    while (c->reqs) {
        hc_req *q = c->reqs;
        req_fail(q, BRAID_ESHUTDOWN, NULL, "the client is shutting down");
    }
    for (hc_pool *p = c->pools; p; p = p->next)
        while (p->idle) conn_close(p->idle, true);
    c->conns--;
    client_maybe_free(c);
}

void braid_http_client_stats(const braid_http_client *c, struct braid_http_client_stats *out) {
    *out = c->st;
    out->active = c->conns;
}

static void on_cancel(braid_deferred *d, void *arg) {
    (void)d;
    hc_req *q = arg;
    req_fail(q, BRAID_ECANCELED, NULL, "cancelled");
}

static const char *const reserved[] = { "Content-Length", "Transfer-Encoding" };

braid_deferred *braid_http_client_request(braid_http_client *c, const braid_http_client_req *r) {
    if (!c || !r) return NULL;
    braid_loop *loop = c->loop;
    if (c->closing)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ESHUTDOWN, "the HTTP client is shutting down"));
    const char *method = r->method ? r->method : "GET";
    if (!is_token(method, strlen(method)))
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "bad HTTP method '%s'", method));
    url_parts u;
    int rc = parse_url(r->url, &u);
    if (rc < 0)
        return braid_deferred_fail(loop, braid_failure_new(rc, "bad URL '%s' (http:// or https://, no userinfo)",
                                                  r->url ? r->url : "(null)"));
    hc_req *q = braid_calloc(1, sizeof *q);
    if (!q) {
        url_parts_free(&u);
        return NULL;
    }
    q->refs = 1;
    q->c = c;
    q->https = u.https;
    q->host = u.host;
    q->hosthdr = u.hosthdr;
    q->target = u.target;
    q->port = u.port;
    q->method = braid_strdup(method);
    q->url = braid_strdup(r->url);
    braid_timer_init(loop, &q->timer, on_timeout, q);
    bool oom = !q->method || !q->url;
    const char *bad = NULL;
    if (r->num_headers && !oom) {
        q->fields = braid_calloc(r->num_headers, sizeof *q->fields);
        oom = !q->fields;
        for (size_t i = 0; !oom && !bad && i < r->num_headers; i++) {
            const braid_http_header *h = &r->headers[i];
            size_t nl = h->name_len ? h->name_len : (h->name ? strlen(h->name) : 0);
            size_t vl = h->value_len ? h->value_len : (h->value ? strlen(h->value) : 0);
            if (!h->name || !is_token(h->name, nl)) { bad = "bad header name"; break; }
            q->fields[i].name = dupn(h->name, nl);
            q->fields[i].value = dupn(h->value ? h->value : "", vl);
            q->nfields = i + 1;
            if (!q->fields[i].name || !q->fields[i].value) { oom = true; break; }
            if (strlen(q->fields[i].value) != vl || !value_ok(q->fields[i].value)) {
                bad = "header value with a control character";
                break;
            }
            for (size_t j = 0; j < sizeof reserved / sizeof reserved[0]; j++)
                if (!strcasecmp(q->fields[i].name, reserved[j])) bad = "Content-Length and Transfer-Encoding are set by the client";
            if (!strcasecmp(q->fields[i].name, "Host")) q->user_host = true;
            if (!strcasecmp(q->fields[i].name, "Connection") &&
                braid_http_value_has_token(q->fields[i].value, vl, "close"))
                q->conn_close = true;
        }
    }
    if (!oom && !bad && r->body_source) {
        if (r->body) bad = "body and body_source are exclusive";
        q->source = r->body_source;
        q->up_len = r->body_len ? r->body_len : UINT64_MAX;
        q->producer.resume_producing = up_resume;
        q->producer.stop_producing = up_stop;
        q->producer.arg = q;
    } else if (!oom && !bad && (r->body_len || r->chunked)) {
        q->has_body = true;
        q->chunked = r->chunked;
        q->body_len = r->body_len;
        if (r->body_len) {
            if (!r->body) bad = "body_len without body";
            else if (!(q->body = dupn(r->body, r->body_len))) oom = true;
        }
    }
    if (!oom && !bad) oom = build_wire(q) < 0;
    if (oom || bad) {
        int code = oom ? BRAID_ENOMEM : BRAID_EINVAL;
        braid_failure *f = braid_failure_new(code, "HTTP request: %s", oom ? "out of memory" : bad);
        req_unref(q);
        return braid_deferred_fail(loop, f);
    }
    q->max_body = r->max_body ? r->max_body : c->o.max_body;
    q->max_redirects = r->max_redirects < 0 ? 0 : (r->max_redirects ? r->max_redirects : c->o.max_redirects);
    if (q->max_redirects < 0) q->max_redirects = 0;
    q->t_connect = r->connect_timeout ? r->connect_timeout : c->o.connect_timeout;
    q->t_headers = r->header_timeout ? r->header_timeout : c->o.header_timeout;
    q->t_body = r->body_timeout ? r->body_timeout : c->o.body_timeout;
    q->on_body = r->on_body;
    q->on_end = r->on_end;
    q->arg = r->arg;
    q->d = braid_deferred_new_cancellable(loop, on_cancel, q);
    if (!q->d) {
        req_unref(q);
        return NULL;
    }
    braid_deferred *d = q->d;
    q->next = c->reqs;
    if (c->reqs) c->reqs->prev = q;
    c->reqs = q;
    req_start(q);
    return d;
}
