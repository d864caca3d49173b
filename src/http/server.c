/* The HTTP/1.1 server: one protocol object per connection over any stream
 * transport, the parser of parser.c, routing, and the three ways of
 * answering (synchronous, a Deferred of a response, a streamed body).
 *
 * The hot path (a complete request in one read, answered synchronously)
 * parses straight out of the transport's lent read buffer, formats the head
 * into a stack buffer and hands head and body to the transport in one
 * writev; the transport copies them into its write buffer and sends every
 * answer of the loop iteration in one system call. Nothing is allocated per
 * request: the connection buffers input (and allocates for it) only when a
 * request spans reads, carries a chunked body, or must wait for an
 * asynchronous answer. The Date header is formatted once per second of the
 * loop clock; the one timer per connection is re-armed lazily (a deadline
 * that moves later is only noted, and the timer re-arms itself when it fires
 * early).
 *
 * Ordering: the request at c->buf[pos] is the only one being answered; the
 * ones pipelined behind it wait in the buffer, so answers leave in request
 * order. When the write buffer grows past 64 KiB (a client that pipelines
 * and does not read) parsing stops until it drains.
 *
 * Reading (update_reading, the one place that decides): a connection reads
 * while it parses heads and bodies, and also while an answer is pending, so
 * that a client hanging up (FIN or reset) is noticed at once and its pending
 * answer cancelled; but what is buffered is always parsed before more is
 * read, and reading pauses while more than max_head bytes of unparsed input
 * wait behind a pending answer or blocked output. A pipelining client that
 * reads its answers therefore never grows the buffer, and one that does not
 * read holds at most max_head plus one read of input.
 *
 * Closing: an answer that ends the connection while the client may still be
 * sending (an error, 408, an unread body, pipelined bytes after a
 * "Connection: close" request) closes by lingering (nginx's lingering
 * close): shut the write side once the answer is out, read and drop input
 * for HS_LINGER_NS and HS_LINGER_BYTES at most, then close. Closing with
 * unread input would make the kernel send a reset, and the client could lose
 * the answer. A second timer (wtimer) aborts a connection whose output makes
 * no progress for send_timeout. */
#include "http/server_internal.h"

#include <braid/log.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define HS_DRAIN_HIGH (64u * 1024)
#define HS_DRAIN_LOW  (16u * 1024)

static void run_buffered(hs_conn *c);
static void request_done(hs_conn *c);
static void conn_maybe_free(hs_conn *c);
static void watch_output(hs_conn *c);
static void shutdown_timer_stop(braid_http_server *s);
static int respond_error(hs_conn *c, int status);
static void send_file(hs_conn *c, int fd, off_t off, uint64_t len);

/* ---- small helpers ----------------------------------------------------------------- */
static size_t u64_to_dec(char *out, uint64_t v) {
    char tmp[24];
    size_t n = 0;
    do { tmp[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    return n;
}

static bool is_tchar(unsigned char ch) {
    if (ch >= '0' && ch <= '9') return true;
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'z') return true;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static bool valid_field(const char *name, const char *value) {
    if (!name || !*name || !value) return false;
    for (const char *p = name; *p; p++)
        if (!is_tchar((unsigned char)*p)) return false;
    for (const char *p = value; *p; p++)
        if (*p == '\r' || *p == '\n' || ((unsigned char)*p < 0x20 && *p != '\t') || *p == 0x7f) return false;
    return true;
}

/* The loop clock now. braid_loop_now is the time of the last timer phase,
 * which, in an I/O callback after a long sleep, is as old as the sleep: a
 * deadline computed from it could already have passed. So read the clock,
 * once per loop iteration however many requests that iteration answers. */
static uint64_t hs_now(braid_http_server *s) {
    uint64_t it = braid_loop_iteration(s->loop) + 1;
    if (s->now_iter != it) {
        s->now = braid_loop_now_fresh(s->loop);
        s->now_iter = it;
    }
    return s->now;
}

static void refresh_date(braid_http_server *s) {
    uint64_t now = hs_now(s);
    if (now < s->date_next) return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    memcpy(s->date_line, "Date: ", 6);
    braid_http_format_date(ts.tv_sec, s->date_line + 6);
    memcpy(s->date_line + 6 + BRAID_HTTP_DATE_LEN, "\r\n", 3);
    s->date_next = now + (uint64_t)(1000000000L - ts.tv_nsec);
}

/* ---- closing ----------------------------------------------------------------------- */
/* Flush, then close. While the server shuts down with a deadline the close
 * is bounded by it (braid_transport_close's escalation: flush, then
 * abort when the deadline passes). */
static void conn_close(hs_conn *c) {
    braid_http_server *s = c->srv;
    if (s->shutting_down && s->shutdown_deadline) braid__transport_close_at(c->base.transport, s->shutdown_deadline);
    else braid_transport_close(c->base.transport, BRAID_FOREVER);
}

/* ---- timers ------------------------------------------------------------------------ */
/* now + timeout; BRAID_FOREVER (or an overflow) is UINT64_MAX, "never". */
static uint64_t hs_deadline(uint64_t now, uint64_t timeout) {
    return timeout > UINT64_MAX - now ? UINT64_MAX : now + timeout;
}

static void set_timer(hs_conn *c, uint8_t kind) {
    c->tkind = kind;
    if (kind == HS_T_NONE) return;
    braid_http_server *s = c->srv;
    uint64_t d = hs_deadline(hs_now(s), kind == HS_T_HEADER ? s->header_timeout
                                        : kind == HS_T_BODY ? s->body_timeout
                                        : kind == HS_T_IDLE ? s->idle_timeout
                                                            : HS_LINGER_NS);
    c->deadline = d;
    if (d == UINT64_MAX) braid_timer_stop(&c->timer);   /* this phase has no limit */
    else if (!braid_timer_is_active(&c->timer) || braid_timer_deadline(&c->timer) > d)
        braid_timer_start_at(&c->timer, d);
}

static void on_timer(braid_timer *t, void *arg) {
    (void)t;
    hs_conn *c = arg;
    if (c->dead || c->tkind == HS_T_NONE) return;
    if (braid_loop_now_fresh(c->srv->loop) < c->deadline) {   /* moved later meanwhile */
        braid_timer_start_at(&c->timer, c->deadline);
        return;
    }
    uint8_t kind = c->tkind;
    c->tkind = HS_T_NONE;
    if (kind == HS_T_IDLE) {
        c->state = HS_CLOSING;
        conn_close(c);
    } else if (kind == HS_T_LINGER) {
        /* Drained long enough. If the answer is still not out, the client
         * does not read it either: no reason to wait for the flush. */
        if (braid_transport_buffered(c->base.transport)) braid_transport_abort(c->base.transport);
        else conn_close(c);
    } else {
        respond_error(c, 408);
    }
}

/* Write progress (send_timeout, nginx's send_timeout): while output waits
 * in the transport (or a file answer waits for the socket), wtimer runs; each
 * time it fires it compares the transport's byte count with the mark taken
 * when it was armed. Progress re-arms it; none aborts the connection. An
 * armed timer is left alone, so a busy connection pays one timer start per
 * send_timeout, not one per answer. */
static bool output_pending(const hs_conn *c) {
    return braid_transport_buffered(c->base.transport) > 0 || c->state == HS_FILE;
}

static void watch_output(hs_conn *c) {
    if (c->dead || !c->base.transport || braid_timer_is_active(&c->wtimer) ||
        c->srv->send_timeout == BRAID_FOREVER || !output_pending(c))
        return;
    c->wmark = braid__transport_sent_total(c->base.transport);
    braid_timer_start_at(&c->wtimer, hs_now(c->srv) + c->srv->send_timeout);
}

static void on_wtimer(braid_timer *t, void *arg) {
    (void)t;
    hs_conn *c = arg;
    if (c->dead || !c->base.transport || !output_pending(c)) return;
    braid_transport *tr = c->base.transport;
    if (braid__transport_sent_total(tr) != c->wmark) {
        c->wmark = braid__transport_sent_total(tr);
        braid_timer_start_at(&c->wtimer, braid_loop_now_fresh(c->srv->loop) + c->srv->send_timeout);
        return;
    }
    braid_loop_log(c->srv->loop, BRAID_LOG_INFO,
              "http: no write progress for %" PRIu64 " ms (%zu bytes waiting): aborting the connection",
              c->srv->send_timeout / 1000000, braid_transport_buffered(tr));
    braid_transport_abort_with(tr, BRAID_ETIMEDOUT);
}

/* ---- input buffer -------------------------------------------------------------------- */
/* Move every request pointer that points into [old, old + n) to new_base. */
static void rebase(hs_conn *c, const char *old, size_t n, const char *new_base) {
#define RB(p) do { if ((p) && (const char *)(p) >= old && (const char *)(p) < old + n) \
                       (p) = new_base + ((const char *)(p) - old); } while (0)
    braid_http_request *r = &c->req;
    RB(r->method); RB(r->target); RB(r->path); RB(r->query); RB(r->body);
    for (size_t i = 0; i < r->num_headers; i++) { RB(c->hdrs[i].name); RB(c->hdrs[i].value); }
#undef RB
}

static bool request_live(const hs_conn *c) {
    return c->state == HS_BODY || c->state == HS_HANDLER || c->state == HS_DEFERRED ||
           c->state == HS_STREAMING || c->state == HS_FILE;
}

/* Append to the connection buffer. BRAID_EMSGSIZE past the limit: the
 * request being answered (head and body), the unparsed input that may wait
 * behind it (max_head, see update_reading) and the one read that crosses
 * that bound. */
static int append(hs_conn *c, const void *data, size_t n) {
    size_t limit = 2 * c->srv->limits.max_head + c->srv->limits.max_body + BRAID__READ_BUF;
    if (c->len + n > c->cap) {
        if (c->pos) {                               /* compact first: drop what was answered */
            if (request_live(c)) rebase(c, c->buf + c->pos, c->len - c->pos, c->buf);
            memmove(c->buf, c->buf + c->pos, c->len - c->pos);
            c->len -= c->pos;
            c->pos = 0;
        }
        if (c->len + n > c->cap) {
            if (c->len + n > limit) return BRAID_EMSGSIZE;
            size_t cap = c->cap ? c->cap : 4096;
            while (cap < c->len + n) cap *= 2;
            char *nb = braid_realloc(c->buf, cap);
            if (!nb) return BRAID_ENOMEM;
            /* c->buf may be NULL (a lent request moving in): nothing to rebase,
             * and no arithmetic on a NULL pointer (UB: fuzz_http_server) */
            if (nb != c->buf && c->buf && request_live(c)) rebase(c, c->buf, c->len, nb);
            c->buf = nb;
            c->cap = cap;
        }
    }
    memcpy(c->buf + c->len, data, n);
    c->len += n;
    return 0;
}

/* ---- writing answers ------------------------------------------------------------------ */
static bool no_body_status(int status) {
    return (status >= 100 && status < 200) || status == 204 || status == 304;
}

/* Format the head into out (>= 512 + HS_XHDR_MAX + ctype); returns its length.
 * content_length >= 0: Content-Length; -1: chunked (or close-delimited on 1.0). */
static size_t format_head(hs_conn *c, char *out, int status, const char *ctype, size_t ctype_len,
                          int64_t content_length) {
    braid_http_server *s = c->srv;
    char *p = out;
    if (status == 200) {
        memcpy(p, "HTTP/1.1 200 OK\r\n", 17);
        p += 17;
    } else {
        const char *reason = braid_http_status_reason(status);
        memcpy(p, "HTTP/1.1 ", 9);
        p += 9;
        p += u64_to_dec(p, (uint64_t)status);
        *p++ = ' ';
        size_t rl = strlen(reason);
        memcpy(p, reason, rl);
        p += rl;
        *p++ = '\r';
        *p++ = '\n';
    }
    memcpy(p, s->server_line, s->server_line_len);
    p += s->server_line_len;
    refresh_date(s);
    memcpy(p, s->date_line, sizeof s->date_line - 1);
    p += sizeof s->date_line - 1;
    if (ctype) {
        memcpy(p, "Content-Type: ", 14);
        p += 14;
        memcpy(p, ctype, ctype_len);
        p += ctype_len;
        *p++ = '\r';
        *p++ = '\n';
    }
    if (!no_body_status(status)) {
        if (content_length >= 0) {
            memcpy(p, "Content-Length: ", 16);
            p += 16;
            p += u64_to_dec(p, (uint64_t)content_length);
            *p++ = '\r';
            *p++ = '\n';
        } else if (c->req.minor_version >= 1) {
            memcpy(p, "Transfer-Encoding: chunked\r\n", 28);
            p += 28;
        }
    }
    memcpy(p, c->xhdr, c->xhdr_len);
    p += c->xhdr_len;
    if (!c->keep_alive) {
        memcpy(p, "Connection: close\r\n", 19);
        p += 19;
    } else if (c->req.minor_version == 0) {
        memcpy(p, "Connection: keep-alive\r\n", 24);
        p += 24;
    }
    *p++ = '\r';
    *p++ = '\n';
    return (size_t)(p - out);
}

static int check_ctype(const char *ctype, size_t *len) {
    *len = 0;
    if (!ctype) return 0;
    *len = strlen(ctype);
    if (*len > 256 || !valid_field("x", ctype)) return BRAID_EINVAL;
    return 0;
}

/* Write the head (and a whole body, if given) in one writev. */
static int write_answer(hs_conn *c, int status, const char *ctype, int64_t content_length,
                        const void *body, size_t len, bool with_body) {
    size_t ctl;
    if (check_ctype(ctype, &ctl) < 0) return BRAID_EINVAL;
    if (c->srv->shutting_down || c->peer_eof) c->keep_alive = false;
    if (content_length < 0 && c->req.minor_version == 0) c->keep_alive = false;  /* close-delimited */
    char head[768 + HS_XHDR_MAX];
    size_t hl = format_head(c, head, status, ctype, ctl, content_length);
    c->answered = true;
    if (!c->base.transport || c->dead) return BRAID_ESHUTDOWN;
    struct iovec iov[2] = { { head, hl }, { (void *)body, len } };
    int n = with_body && len && !c->req.head && !no_body_status(status) ? 2 : 1;
    return braid_transport_writev(c->base.transport, iov, n);
}

/* Answer with a short text body; errors from the parser or timeouts close. */
static int respond_status(hs_conn *c, int status, bool close_after) {
    if (close_after) c->keep_alive = false;
    const char *reason = braid_http_status_reason(status);
    char body[64];
    int bl = snprintf(body, sizeof body, "%s\n", *reason ? reason : "Error");
    int rc = write_answer(c, status, "text/plain", bl, body, (size_t)bl, true);
    request_done(c);
    return rc;
}

/* An error answer closes: by lingering, as the client may still be sending. */
static int respond_error(hs_conn *c, int status) {
    c->xhdr_len = 0;
    c->linger_next = true;
    if (c->state == HS_READING) {         /* no request of its own: a neutral one */
        c->req.head = false;
        c->req.minor_version = 1;
        c->head_len = 0;
        c->body_kind = BRAID_HTTP_BODY_NONE;
    }
    return respond_status(c, status, true);
}

/* Answer the route miss of the current request (404, or 405 with Allow; 400
 * for a target that cannot be routed). close_after: the body was not read. */
static void respond_miss(hs_conn *c, bool close_after) {
    c->xhdr_len = 0;
    if (c->route_status == 400) close_after = true;
    if (close_after) c->linger_next = true;
    if (c->route_status == 405) {
        braid_http_server *s = c->srv;
        char *p = c->xhdr;
        memcpy(p, "Allow: ", 7);
        p += 7;
        bool first = true, get = false, head = false;
        for (size_t i = 0; i < s->nroutes; i++) {
            const hs_route *r = &s->routes[i];
            if (!r->method) continue;
            bool match = (r->flags & BRAID_HTTP_ROUTE_PREFIX)
                             ? c->req.path_len >= r->path_len && !memcmp(c->req.path, r->path, r->path_len)
                             : c->req.path_len == r->path_len && !memcmp(c->req.path, r->path, r->path_len);
            if (!match || p + r->method_len + 16 > c->xhdr + HS_XHDR_MAX - 8) continue;
            if (!strcmp(r->method, "GET")) get = true;
            if (!strcmp(r->method, "HEAD")) head = true;
            if (!first) { *p++ = ','; *p++ = ' '; }
            memcpy(p, r->method, r->method_len);
            p += r->method_len;
            first = false;
        }
        if (get && !head) { memcpy(p, ", HEAD", 6); p += 6; }
        *p++ = '\r';
        *p++ = '\n';
        c->xhdr_len = (size_t)(p - c->xhdr);
    }
    respond_status(c, c->route_status, close_after);
}

/* ---- routing ------------------------------------------------------------------------- */
static void route_lookup(hs_conn *c) {
    braid_http_server *s = c->srv;
    const braid_http_request *q = &c->req;
    const hs_route *best = NULL;
    size_t best_len = 0;
    bool path_seen = false, best_exact = false;
    bool is_head = q->head;
    for (size_t i = 0; i < s->nroutes; i++) {
        const hs_route *r = &s->routes[i];
        bool exact = !(r->flags & BRAID_HTTP_ROUTE_PREFIX);
        if (exact ? (q->path_len != r->path_len || memcmp(q->path, r->path, r->path_len))
                  : (q->path_len < r->path_len || memcmp(q->path, r->path, r->path_len)))
            continue;
        path_seen = true;
        bool mok = !r->method ||
                   (r->method_len == q->method_len && !memcmp(r->method, q->method, q->method_len)) ||
                   (is_head && r->method_len == 3 && !memcmp(r->method, "GET", 3));
        if (!mok) continue;
        /* exact beats prefix; longer prefix beats shorter; an explicit method
         * beats "any", and HEAD's own route beats GET's */
        if (best) {
            if (best_exact && !exact) continue;
            if (best_exact == exact) {
                if (r->path_len < best_len) continue;
                if (r->path_len == best_len) {
                    bool r_own = r->method && r->method_len == q->method_len &&
                                 !memcmp(r->method, q->method, q->method_len);
                    bool b_own = best->method && best->method_len == q->method_len &&
                                 !memcmp(best->method, q->method, q->method_len);
                    if (b_own || (!r_own && best->method)) continue;
                }
            }
        }
        best = r;
        best_len = r->path_len;
        best_exact = exact;
    }
    c->route = best;
    c->route_status = best ? 0 : path_seen ? 405 : 404;
    c->req.match_len = best ? best->path_len : 0;
}

int braid_http_server_route(braid_http_server *s, const char *method, const char *path, unsigned flags,
                     braid_http_handler_fn h, void *arg) {
    return braid__http_route_owned(s, method, path, flags, h, arg, NULL);
}

int braid__http_route_owned(braid_http_server *s, const char *method, const char *path, unsigned flags,
                            braid_http_handler_fn h, void *arg, void (*arg_free)(void *arg)) {
    if (!s || !path || path[0] != '/' || !h) return BRAID_EINVAL;
    if (method) {
        if (!*method) return BRAID_EINVAL;
        for (const char *p = method; *p; p++)
            if (!is_tchar((unsigned char)*p)) return BRAID_EINVAL;
    }
    for (size_t i = 0; i < s->nroutes; i++) {
        hs_route *r = &s->routes[i];
        if (!strcmp(r->path, path) && (r->flags & BRAID_HTTP_ROUTE_PREFIX) == (flags & BRAID_HTTP_ROUTE_PREFIX) &&
            ((!r->method && !method) || (r->method && method && !strcmp(r->method, method))))
            return BRAID_EEXIST;
    }
    if (s->nroutes == s->caproutes) {
        size_t cap = s->caproutes ? s->caproutes * 2 : 8;
        hs_route *nr = braid_realloc(s->routes, cap * sizeof *nr);
        if (!nr) return BRAID_ENOMEM;
        s->routes = nr;
        s->caproutes = cap;
    }
    hs_route r = { .flags = flags & BRAID_HTTP_ROUTE_PREFIX, .h = h, .arg = arg, .arg_free = arg_free };
    r.path = braid_strdup(path);
    r.method = method ? braid_strdup(method) : NULL;
    if (!r.path || (method && !r.method)) {
        braid_free(r.path);
        braid_free(r.method);
        return BRAID_ENOMEM;
    }
    r.path_len = strlen(path);
    r.method_len = method ? strlen(method) : 0;
    s->routes[s->nroutes++] = r;
    return 0;
}

/* ---- requests ---------------------------------------------------------------------- */
/* Fill c->req from a parsed head (pointers into the head's buffer). */
static void fill_request(hs_conn *c, const braid_http_message *m) {
    braid_http_request *q = &c->req;
    q->method = m->method;
    q->method_len = m->method_len;
    q->target = m->target;
    q->target_len = m->target_len;
    q->host = m->host;
    q->host_len = m->host_len;
    c->route_status = 0;
    /* Absolute form (RFC 9112 3.2.2): the authority replaces Host, the rest
     * is routed as an origin-form target ("" = "/"). */
    const char *t = m->target, *end = m->target + m->target_len;
    if (t < end && *t != '/') {
        size_t skip = m->target_len >= 7 && !strncasecmp(t, "http://", 7)    ? 7
                      : m->target_len >= 8 && !strncasecmp(t, "https://", 8) ? 8
                                                                             : 0;
        if (skip) {
            const char *a = t + skip, *p = a;
            while (p < end && *p != '/' && *p != '?' && *p != '#') p++;
            q->host = a;
            q->host_len = (size_t)(p - a);
            if (p == a || memchr(a, '@', q->host_len) || (p < end && *p == '#'))
                c->route_status = 400;     /* no host, userinfo (RFC 9110 4.2.4), a fragment */
            t = p;
        }
    }
    const char *qm = memchr(t, '?', (size_t)(end - t));
    q->path = t;
    q->path_len = qm ? (size_t)(qm - t) : (size_t)(end - t);
    if (!q->path_len) {
        q->path = "/";
        q->path_len = 1;
    }
    q->query = qm ? qm + 1 : NULL;
    q->query_len = qm ? (size_t)(end - qm - 1) : 0;
    q->minor_version = m->minor_version;
    q->headers = c->hdrs;
    q->num_headers = m->num_headers;
    q->body = NULL;
    q->body_len = 0;
    q->head = m->method_len == 4 && !memcmp(m->method, "HEAD", 4);
    q->keep_alive = m->keep_alive;
    q->server = c->srv;
    q->transport = c->base.transport;
    q->match_len = 0;
    c->keep_alive = m->keep_alive && !c->srv->shutting_down;
    c->answered = false;
    c->xhdr_len = 0;
    c->out_remaining = -1;
    c->continue_sent = false;
    c->content_length = m->content_length;
    c->body_kind = (uint8_t)m->body;
    c->lost_fn = NULL;
    c->lost_arg = NULL;
    c->route = NULL;
    if (!c->route_status) route_lookup(c);
}

static braid_result on_answer(braid_result r, void *arg);

const braid_ctx_key braid_http_request_key =
    BRAID_CTX_KEY_INIT("http.request", BRAID_CTX_PTR,
                       "the braid_http_request * being handled (borrowed; valid until answered)");

/* Run the route of the complete request in c->req. */
static void dispatch(hs_conn *c) {
    braid_http_server *s = c->srv;
    s->requests++;
    if (c->route_status) {
        respond_miss(c, false);
        return;
    }
    /* The handler's context: the request's number (the log's request id,
     * <braid/log.h>) and the request. */
    braid_ctx_scope id_scope, scope;
    if (braid_ctx_push_u64(&id_scope, &braid_log_request_id_key, s->requests) < 0) {
        respond_error(c, 500);
        return;
    }
    if (braid_ctx_push_ptr(&scope, &braid_http_request_key, &c->req) < 0) {
        braid_ctx_pop(&id_scope);
        respond_error(c, 500);
        return;
    }
    c->state = HS_HANDLER;
    braid_deferred *d = c->route->h(&c->req, c->route->arg);
    braid_ctx_pop(&scope);
    braid_ctx_pop(&id_scope);
    if (d) {
        if (c->state != HS_HANDLER) {
            braid_loop_log(s->loop, BRAID_LOG_ERROR, "http: handler answered and returned a Deferred; "
                                                "the Deferred is cancelled");
            braid_deferred_cancel(d);
            braid_deferred_unref(d);
            return;
        }
        c->state = HS_DEFERRED;
        c->holds++;
        c->pending = d;
        if (braid_deferred_add_both(d, on_answer, c) < 0) {
            c->pending = NULL;
            c->holds--;
            braid_deferred_cancel(d);
            braid_deferred_unref(d);
            c->state = HS_HANDLER;
            respond_error(c, 500);
        }
        return;
    }
    if (c->state == HS_HANDLER) {
        braid_loop_log(s->loop, BRAID_LOG_ERROR, "http: handler for %.*s returned without answering",
                  (int)c->req.path_len, c->req.path);
        c->xhdr_len = 0;
        respond_status(c, 500, false);
    }
}

static braid_result on_answer(braid_result r, void *arg) {
    hs_conn *c = arg;
    braid_deferred *d = c->pending;
    c->pending = NULL;
    if (!c->dead && c->state == HS_DEFERRED && !c->answered) {
        if (r.failure) {
            char buf[256];
            braid_failure_format(r.failure, buf, sizeof buf);
            braid_loop_log(c->srv->loop, BRAID_LOG_WARN, "http: handler failed: %s", buf);
            c->xhdr_len = 0;
            respond_status(c, 500, false);       /* the request was read whole: keep the connection */
        } else if (!r.value) {
            c->xhdr_len = 0;
            respond_status(c, 500, false);
        } else {
            c->state = HS_DEFERRED;
            braid_http_request_respond_response(&c->req, r.value);
        }
    }
    braid_result_drop(r);
    if (d) braid_deferred_unref(d);
    c->holds--;
    conn_maybe_free(c);
    return braid_result_ok(NULL);
}

/* The continuation after an asynchronous answer finished. */
static void resume_soon(void *arg) {
    hs_conn *c = arg;
    c->soon_queued = false;
    if (c->dead) {
        c->holds--;
        conn_maybe_free(c);
        return;
    }
    c->holds--;
    run_buffered(c);
}

static void schedule_run(hs_conn *c) {
    if (c->soon_queued) return;
    c->soon_queued = true;
    c->holds++;                       /* keep c until the soon call ran */
    c->soon.fn = resume_soon;
    c->soon.arg = c;
    braid_loop_soon_node(c->srv->loop, &c->soon);
}

static void pause_reading(hs_conn *c) {
    if (!c->reading_paused && c->base.transport) {
        c->reading_paused = true;
        braid_transport_pause_reading(c->base.transport);
    }
}

static void resume_reading(hs_conn *c) {
    if (c->reading_paused && c->base.transport) {
        c->reading_paused = false;
        braid_transport_resume_reading(c->base.transport);
    }
}

/* Bytes of the request at pos (head and raw body) once its body is whole. */
static size_t request_bytes(const hs_conn *c) {
    return c->head_len + (c->body_kind == BRAID_HTTP_BODY_CHUNKED ? c->body_len
                          : c->body_kind == BRAID_HTTP_BODY_LENGTH ? (size_t)c->content_length : 0);
}

/* The one place that decides whether the connection reads (see the file
 * comment): always while a head or body is being read and while lingering;
 * behind a pending answer or blocked output only while at most max_head
 * bytes of unparsed input wait. Reading while an answer is pending is what
 * lets a hang-up (FIN, reset) be seen. */
static void update_reading(hs_conn *c) {
    if (c->dead || !c->base.transport) return;
    size_t waiting, used;
    switch (c->state) {
    case HS_READING:
        if (!c->drain_wait) { resume_reading(c); return; }
        waiting = c->len - c->pos;
        break;
    case HS_BODY:
        resume_reading(c);
        return;
    case HS_DEFERRED:
    case HS_STREAMING:
    case HS_FILE:
        used = c->lent ? 0 : c->pos + request_bytes(c);
        waiting = c->len > used ? c->len - used : 0;
        break;
    case HS_CLOSING:
        if (c->lingering) resume_reading(c);
        return;
    default:
        return;                          /* HS_HANDLER: decided once the handler returned */
    }
    if (waiting > c->srv->limits.max_head) pause_reading(c);
    else resume_reading(c);
}

/* Close after an answer while the client may still be sending: shut the
 * write side once the answer is out and drain input for a while, so that
 * closing with unread input does not reset the connection under the answer. */
static void start_linger(hs_conn *c) {
    c->state = HS_CLOSING;
    c->lingering = true;
    c->linger_bytes = 0;
    set_timer(c, HS_T_LINGER);
    if (braid_transport_shutdown_write(c->base.transport) < 0) return;
    resume_reading(c);
}

/* The answer to the request at pos is complete: move on. */
static void request_done(hs_conn *c) {
    bool async = c->state == HS_DEFERRED || c->state == HS_STREAMING || c->state == HS_FILE;
    bool body_unread = c->state == HS_BODY;
    c->cur_len = request_bytes(c);
    if (!c->lent && c->len >= c->pos + c->cur_len)
        c->pos += c->cur_len;            /* the request lived in our buffer */
    c->route = NULL;
    c->req.num_headers = 0;
    c->lost_fn = NULL;
    if (c->dead) { c->state = HS_CLOSING; return; }
    if (!c->keep_alive) {
        /* Input that may still come (an error cut the request short, its body
         * was not read, or more requests follow): linger; else close now. */
        bool more = c->linger_next || body_unread || c->tail_input || c->len > c->pos;
        c->linger_next = false;
        if (more && !c->peer_eof) {
            start_linger(c);
            return;
        }
        c->state = HS_CLOSING;
        c->tkind = HS_T_NONE;
        conn_close(c);
        return;
    }
    c->state = HS_READING;
    if (async) schedule_run(c);          /* parse what waits before reading more */
}

/* ---- the body ---------------------------------------------------------------------- */
/* Advance the body of the request at pos with what is buffered. Returns true
 * when it completed (and was dispatched) or failed (answered). */
static bool body_step(hs_conn *c) {
    if (c->body_kind == BRAID_HTTP_BODY_LENGTH) {
        if (c->len - c->pos < c->head_len + c->content_length) return false;
        c->req.body = c->buf + c->pos + c->head_len;
        c->req.body_len = (size_t)c->content_length;
        dispatch(c);
        return true;
    }
    char *region = c->buf + c->pos + c->raw;
    size_t n = c->len - c->pos - c->raw, out = 0;
    ssize_t r = braid_http_chunked_decode(&c->chunked, region, n, &out);
    char *dst = c->buf + c->pos + c->head_len + c->body_len;
    if (out && dst != region) memmove(dst, region, out);
    c->body_len += out;
    if (r == BRAID_EHTTP_INCOMPLETE) {
        c->len = c->pos + c->head_len + c->body_len;
        c->raw = c->head_len + c->body_len;
        return false;
    }
    if (r < 0) {
        respond_error(c, braid_http_error_status((int)r));
        return true;
    }
    /* the rest (the next pipelined request) closes the gap */
    size_t rest = n - (size_t)r;
    memmove(c->buf + c->pos + c->head_len + c->body_len, region + r, rest);
    c->len = c->pos + c->head_len + c->body_len + rest;
    c->req.body = c->buf + c->pos + c->head_len;
    c->req.body_len = c->body_len;
    dispatch(c);
    return true;
}

/* The head of the request at buf[pos] was parsed (r bytes): start its body
 * or run it. */
static void begin_buffered(hs_conn *c, const braid_http_message *m, int r) {
    c->head_len = (size_t)r;
    c->lent = false;
    c->tail_input = false;
    fill_request(c, m);
    if (m->body == BRAID_HTTP_BODY_NONE) {
        dispatch(c);
        return;
    }
    if (m->body == BRAID_HTTP_BODY_LENGTH && m->content_length > c->srv->limits.max_body) {
        respond_error(c, 413);
        return;
    }
    c->body_len = 0;
    c->raw = c->head_len;
    if (m->body == BRAID_HTTP_BODY_CHUNKED) braid_http_chunked_init(&c->chunked, c->srv->limits.max_body);
    c->state = HS_BODY;
    if (body_step(c)) return;
    /* the body is still to come */
    if (c->route_status && m->expect_continue) {   /* do not ask for a body nobody takes */
        respond_miss(c, true);
        return;
    }
    if (m->expect_continue && m->minor_version >= 1 && !c->continue_sent) {
        c->continue_sent = true;
        braid_transport_write(c->base.transport, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    set_timer(c, HS_T_BODY);
}

static void drain_resume(braid_producer *p) {
    hs_conn *c = p->arg;
    if (!c->drain_wait || c->dead || braid_transport_buffered(c->base.transport) > HS_DRAIN_LOW) return;
    c->drain_wait = false;
    braid_transport_unregister_producer(c->base.transport);
    schedule_run(c);                     /* parse what waits; then update_reading decides */
}
static void prod_stop(braid_producer *p) { (void)p; }

/* Too much unread output: stop parsing until the peer catches up (reading
 * goes on only up to the bound of update_reading). */
static bool check_drain(hs_conn *c) {
    if (c->state != HS_READING || braid_transport_buffered(c->base.transport) <= HS_DRAIN_HIGH) return false;
    c->drain_wait = true;
    c->prod = (braid_producer){ NULL, drain_resume, prod_stop, c };
    braid_transport_register_producer(c->base.transport, &c->prod, false);
    return true;
}

static void after_run(hs_conn *c) {
    if (c->dead) return;
    if (c->state == HS_READING) {
        if (c->pos == c->len) {
            c->pos = c->len = 0;
            if (c->cap > 16384) {          /* an idle connection keeps no big buffer */
                braid_free(c->buf);
                c->buf = NULL;
                c->cap = 0;
            }
        } else if (c->pos) {
            memmove(c->buf, c->buf + c->pos, c->len - c->pos);
            c->len -= c->pos;
            c->pos = 0;
            c->prev_len = 0;
        }
        if (c->drain_wait) set_timer(c, HS_T_NONE);
        else if (c->peer_eof) {            /* nothing more can come: what is left is a partial head */
            c->state = HS_CLOSING;
            c->tkind = HS_T_NONE;
            conn_close(c);
        } else if (c->len) { if (c->tkind != HS_T_HEADER) set_timer(c, HS_T_HEADER); }
        else set_timer(c, HS_T_IDLE);
    } else if (c->state == HS_BODY) {
        if (c->peer_eof) {
            c->state = HS_CLOSING;
            c->tkind = HS_T_NONE;
            conn_close(c);
        }
    } else if (!c->lingering) {
        set_timer(c, HS_T_NONE);           /* an answer is pending, or closing */
    }
    update_reading(c);
    watch_output(c);
}

/* Parse and answer what is buffered at pos. */
static void run_buffered(hs_conn *c) {
    while (!c->dead && !c->drain_wait) {
        if (c->state == HS_BODY) {
            if (!body_step(c)) break;
            continue;
        }
        if (c->state != HS_READING || c->pos == c->len) break;
        if (check_drain(c)) break;
        braid_http_message m;
        int r = braid_http_parse_request(&m, c->hdrs, c->srv->limits.max_headers, c->buf + c->pos,
                                         c->len - c->pos, c->prev_len, &c->srv->limits);
        if (r == BRAID_EHTTP_INCOMPLETE) {
            c->prev_len = c->len - c->pos;
            break;
        }
        c->prev_len = 0;
        if (r < 0) {
            respond_error(c, braid_http_error_status(r));
            break;
        }
        begin_buffered(c, &m, r);
    }
    after_run(c);
}

/* The fast path: parse straight out of the transport's lent buffer.
 * Complete requests without a chunked body are answered in place; at the
 * first thing that must wait, the rest is copied into the connection buffer. */
static void run_lent(hs_conn *c, const char *b, size_t n) {
    size_t off = 0;
    while (off < n && c->state == HS_READING && !c->drain_wait) {
        if (check_drain(c)) break;
        braid_http_message m;
        int r = braid_http_parse_request(&m, c->hdrs, c->srv->limits.max_headers, b + off, n - off, 0,
                                         &c->srv->limits);
        if (r == BRAID_EHTTP_INCOMPLETE) break;
        if (r < 0) {
            respond_error(c, braid_http_error_status(r));
            return;
        }
        if (m.body == BRAID_HTTP_BODY_CHUNKED ||
            (m.body == BRAID_HTTP_BODY_LENGTH && m.content_length > n - off - (size_t)r))
            break;                                    /* body still to come / to decode */
        c->head_len = (size_t)r;
        c->lent = true;
        fill_request(c, &m);
        if (m.body == BRAID_HTTP_BODY_LENGTH) {
            if (m.content_length > c->srv->limits.max_body) {
                respond_error(c, 413);
                return;
            }
            c->req.body = b + off + r;
            c->req.body_len = (size_t)m.content_length;
        }
        size_t total = (size_t)r + (size_t)(m.body == BRAID_HTTP_BODY_LENGTH ? m.content_length : 0);
        c->tail_input = off + total < n;
        dispatch(c);
        if (c->state == HS_CLOSING || c->dead) return;
        if (c->state != HS_READING) {
            /* an answer is pending: the request (and what follows) moves to our buffer */
            const char *start = b + off;
            if (append(c, start, n - off) < 0) {
                braid_transport_abort(c->base.transport);
                return;
            }
            rebase(c, start, n - off, c->buf + c->pos);
            c->lent = false;
            after_run(c);
            return;
        }
        off += total;
    }
    if (off < n && append(c, b + off, n - off) < 0) {
        respond_error(c, c->state == HS_READING ? 431 : 413);
        return;
    }
    if (off < n) run_buffered(c);
    else after_run(c);
}

/* ---- protocol ops ---------------------------------------------------------------------- */
static void hs_data(braid_protocol *p, const void *buf, size_t len) {
    hs_conn *c = (hs_conn *)p;
    if (c->dead) return;
    if (c->state == HS_CLOSING) {
        /* Lingering: drop what comes, up to a bound. */
        if (c->lingering && (c->linger_bytes += len) > HS_LINGER_BYTES) {
            if (braid_transport_buffered(p->transport)) braid_transport_abort(p->transport);
            else conn_close(c);
        }
        return;
    }
    if (c->len == c->pos && c->state == HS_READING && !c->drain_wait) {
        run_lent(c, buf, len);
        return;
    }
    if (append(c, buf, len) < 0) {
        if (request_live(c) && c->state != HS_BODY) {   /* cannot answer now: cannot keep it either */
            braid_transport_abort(p->transport);
            return;
        }
        respond_error(c, c->state == HS_BODY ? 413 : 431);
        return;
    }
    if (c->state == HS_READING || c->state == HS_BODY) run_buffered(c);
    else update_reading(c);              /* behind a pending answer: within the bound */
}

/* The client's FIN. Before a complete request (or in its body): nothing more
 * can come, close. While an answer is pending: the client left (cancel the
 * answer: the abort makes hs_lost run) unless allow_half_close, when the
 * answer goes out and after_run closes. */
static void hs_eof(braid_protocol *p) {
    hs_conn *c = (hs_conn *)p;
    c->peer_eof = true;
    switch (c->state) {
    case HS_READING:
        if (c->drain_wait) return;       /* answers wait for output; after_run closes later */
        /* fallthrough */
    case HS_BODY:
        c->state = HS_CLOSING;
        c->tkind = HS_T_NONE;
        conn_close(c);
        return;
    case HS_DEFERRED:
    case HS_STREAMING:
    case HS_FILE:
        if (c->srv->allow_half_close) return;
        braid_loop_log(c->srv->loop, BRAID_LOG_DEBUG, "http: the client closed while its answer was pending");
        braid_transport_abort(p->transport);
        return;
    default:
        return;                          /* closing; a lingering close ends with this EOF */
    }
}

static void hs_made(braid_protocol *p) {
    hs_conn *c = (hs_conn *)p;
    braid_http_server *s = c->srv;
    c->made = true;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    c->req.transport = p->transport;
    braid_timer_init(c->srv->loop, &c->timer, on_timer, c);
    braid_timer_init(c->srv->loop, &c->wtimer, on_wtimer, c);
    c->tkind = HS_T_IDLE;
    c->deadline = hs_deadline(hs_now(c->srv), c->srv->header_timeout);
    if (c->deadline != UINT64_MAX) braid_timer_start_at(&c->timer, c->deadline);
}

static void hs_lost(braid_protocol *p, const braid_failure *reason) {
    (void)reason;

    hs_conn *c = (hs_conn *)p;
    braid_http_server *s = c->srv;
    c->dead = true;
    c->req.transport = NULL;
    braid_timer_stop(&c->timer);
    braid_timer_stop(&c->wtimer);
    if (c->file_fd >= 0) {
        close(c->file_fd);
        c->file_fd = -1;
    }
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    if (--s->nconns == 0 && s->shutting_down) shutdown_timer_stop(s);
    /* c stays allocated during connection_lost (the transport still points
     * at it), whatever the hook or the cancel release. */
    braid_http_request_lost_cb fn = c->lost_fn;
    c->lost_fn = NULL;
    if (fn && (c->state == HS_DEFERRED || c->state == HS_STREAMING || c->state == HS_FILE))
        fn(&c->req, c->lost_arg);
    if (c->pending) braid_deferred_cancel(c->pending);   /* on_answer sees dead */
}

static void conn_maybe_free(hs_conn *c) {
    if (!c->dead || c->holds || c->base.transport) return;
    braid_free(c->buf);
    braid_free(c);
}

static void hs_destroy(braid_protocol *p) {
    hs_conn *c = (hs_conn *)p;
    c->base.transport = NULL;
    if (!c->made) {                      /* built, never attached to a transport */
        braid_free(c);
        return;
    }
    conn_maybe_free(c);
}

static const braid_protocol_ops hs_ops = {
    .connection_made = hs_made,
    .data_received = hs_data,
    .read_connection_lost = hs_eof,
    .connection_lost = hs_lost,
    .destroy = hs_destroy,
};

static braid_protocol *hs_build(braid_factory *f, const braid_address *peer) {
    (void)peer;
    braid_http_server *s = f->user;
    if (s->shutting_down) return NULL;
    hs_conn *c = braid_calloc(1, sizeof *c + s->limits.max_headers * sizeof c->hdrs[0]);
    if (!c) return NULL;
    c->base.ops = &hs_ops;
    c->base.user = s;
    c->srv = s;
    c->file_fd = -1;
    return &c->base;                     /* listed and counted from connection_made */
}

/* ---- answering (public) ---------------------------------------------------------------- */
#define CONN(req) braid__container_of((req), hs_conn, req)

static bool may_answer(hs_conn *c) {
    return !c->answered && (c->state == HS_HANDLER || c->state == HS_DEFERRED);
}

int braid_http_request_add_header(braid_http_request *req, const char *name, const char *value) {
    hs_conn *c = CONN(req);
    if (!valid_field(name, value)) return BRAID_EINVAL;
    size_t nl = strlen(name), vl = strlen(value);
    if (c->xhdr_len + nl + vl + 4 > HS_XHDR_MAX) return BRAID_EMSGSIZE;
    char *p = c->xhdr + c->xhdr_len;
    memcpy(p, name, nl); p += nl;
    *p++ = ':'; *p++ = ' ';
    memcpy(p, value, vl); p += vl;
    *p++ = '\r'; *p++ = '\n';
    c->xhdr_len = (size_t)(p - c->xhdr);
    return 0;
}

int braid_http_request_respond(braid_http_request *req, int status, const char *content_type,
                       const void *body, size_t len) {
    hs_conn *c = CONN(req);
    if (!may_answer(c)) return BRAID_EALREADY_CALLED;
    if (status < 200 || status > 999) return BRAID_EINVAL;
    int rc = write_answer(c, status, content_type, (int64_t)len, body, len, true);
    request_done(c);
    return rc < 0 ? rc : 0;
}

int braid_http_request_respond_file(braid_http_request *req, int status, const char *content_type, int fd,
                            uint64_t offset, uint64_t length) {
    hs_conn *c = CONN(req);
    if (fd < 0) return BRAID_EINVAL;
    if (!may_answer(c)) {
        close(fd);
        return BRAID_EALREADY_CALLED;
    }
    if (status < 200 || status > 999 || offset > INT64_MAX || length > INT64_MAX) {
        close(fd);
        return BRAID_EINVAL;
    }
    int rc = write_answer(c, status, content_type, (int64_t)length, NULL, 0, false);
    if (rc < 0) {
        close(fd);
        request_done(c);
        return rc;
    }
    send_file(c, fd, (off_t)offset, length);
    return 0;
}

int braid_http_request_respond_response(braid_http_request *req, const braid_http_response *r) {
    hs_conn *c = CONN(req);
    if (!may_answer(c)) return BRAID_EALREADY_CALLED;
    if (r->headers_len) {
        if (c->xhdr_len + r->headers_len > HS_XHDR_MAX) return BRAID_EMSGSIZE;
        memcpy(c->xhdr + c->xhdr_len, r->headers, r->headers_len);
        c->xhdr_len += r->headers_len;
    }
    return braid_http_request_respond(req, r->status, r->content_type, r->body, r->body_len);
}

int braid_http_request_respond_start(braid_http_request *req, int status, const char *content_type,
                             int64_t content_length) {
    hs_conn *c = CONN(req);
    if (!may_answer(c)) return BRAID_EALREADY_CALLED;
    if (status < 200 || status > 999) return BRAID_EINVAL;
    if (no_body_status(status)) content_length = 0;
    int rc = write_answer(c, status, content_type, content_length, NULL, 0, false);
    c->chunked_out = content_length < 0 && c->req.minor_version >= 1;
    c->out_remaining = content_length;
    c->state = HS_STREAMING;
    c->holds++;
    return rc < 0 ? rc : 0;
}

int braid_http_request_write(braid_http_request *req, const void *buf, size_t len) {
    hs_conn *c = CONN(req);
    if (c->state != HS_STREAMING) return BRAID_EINVAL;
    if (c->dead || !c->base.transport) return BRAID_ESHUTDOWN;
    if (!len) return 0;
    if (c->out_remaining >= 0) {
        if ((uint64_t)len > (uint64_t)c->out_remaining) return BRAID_EMSGSIZE;
        c->out_remaining -= (int64_t)len;
    }
    if (c->req.head) return 0;
    int rc;
    if (!c->chunked_out) {
        rc = braid_transport_write(c->base.transport, buf, len);
    } else {
        char ch[BRAID_HTTP_CHUNK_HEAD_MAX];
        struct iovec iov[3] = { { ch, braid_http_chunk_head(ch, len) }, { (void *)buf, len }, { "\r\n", 2 } };
        rc = braid_transport_writev(c->base.transport, iov, 3);
    }
    if (rc == 0) watch_output(c);
    return rc;
}

int braid_http_request_register_producer(braid_http_request *req, braid_producer *p, bool streaming) {
    hs_conn *c = CONN(req);
    if (c->state != HS_STREAMING) return BRAID_EINVAL;
    if (c->dead || !c->base.transport) return BRAID_ESHUTDOWN;
    int rc = braid_transport_register_producer(c->base.transport, p, streaming);
    if (rc == 0) c->user_producer = true;
    return rc;
}

int braid_http_request_finish(braid_http_request *req) {
    hs_conn *c = CONN(req);
    if (c->state != HS_STREAMING) return BRAID_EINVAL;
    int rc = BRAID_ESHUTDOWN;
    if (!c->dead && c->base.transport) {
        rc = 0;
        if (c->user_producer) braid_transport_unregister_producer(c->base.transport);
        if (c->chunked_out && !c->req.head)
            rc = braid_transport_write(c->base.transport, BRAID_HTTP_CHUNKED_END, 5);
        if (c->out_remaining > 0) c->keep_alive = false;   /* short body: framing is broken */
        if (c->out_remaining < 0 && !c->chunked_out) c->keep_alive = false;
    }
    c->user_producer = false;
    request_done(c);
    if (!c->dead) watch_output(c);
    c->holds--;
    conn_maybe_free(c);
    return rc;
}

int braid_http_request_on_lost(braid_http_request *req, braid_http_request_lost_cb fn, void *arg) {
    hs_conn *c = CONN(req);
    if (c->dead) return BRAID_ESHUTDOWN;
    if (c->state != HS_HANDLER && c->state != HS_DEFERRED && c->state != HS_STREAMING) return BRAID_EINVAL;
    c->lost_fn = fn;
    c->lost_arg = arg;
    return 0;
}

/* ---- static file bodies ------------------------------------------------------------- */
static void file_finish(hs_conn *c) {
    if (c->file_fd >= 0) close(c->file_fd);
    c->file_fd = -1;
    if (c->base.transport && !c->dead) braid_transport_unregister_producer(c->base.transport);
    request_done(c);
}

static void file_pump(braid_producer *p) {
    hs_conn *c = p->arg;
    if (c->dead || c->state != HS_FILE) return;
    braid_transport *t = c->base.transport;
    char chunk[16384];
    while (c->file_left > 0) {
        if (braid_transport_buffered(t) == 0) {
            size_t want = c->file_left > (1u << 20) ? (1u << 20) : (size_t)c->file_left;
            ssize_t n = braid__transport_sendfile(t, c->file_fd, &c->file_off, want);
            if (n > 0) { c->file_left -= (uint64_t)n; continue; }
            if (n == BRAID_EAGAIN) return;                 /* called again when writable */
            if (n != BRAID_ENOSYS) {                       /* lost, or the file shrank */
                if (n == BRAID_EPIPE) braid_transport_abort(t);
                return;
            }
        }
        if (braid_transport_buffered(t) >= HS_DRAIN_LOW) return;   /* called again once drained */
        size_t want = c->file_left > sizeof chunk ? sizeof chunk : (size_t)c->file_left;
        ssize_t n = pread(c->file_fd, chunk, want, c->file_off);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            braid_transport_abort(t);                       /* short file: cannot keep framing */
            return;
        }
        c->file_off += n;
        c->file_left -= (uint64_t)n;
        if (braid_transport_write(t, chunk, (size_t)n) < 0) return;
    }
    file_finish(c);
}

static void file_stop(braid_producer *p) {
    hs_conn *c = p->arg;
    if (c->file_fd >= 0) close(c->file_fd);
    c->file_fd = -1;
}

/* Send fd[off, off+len) as the body (the head is out); takes fd. */
static void send_file(hs_conn *c, int fd, off_t off, uint64_t len) {
    if (c->req.head || len == 0 || c->dead) {
        close(fd);
        request_done(c);
        return;
    }
    c->file_fd = fd;
    c->file_off = off;
    c->file_left = len;
    c->state = HS_FILE;
    c->prod = (braid_producer){ NULL, file_pump, file_stop, c };
    /* a pull producer: runs at once, then each time the buffer drains */
    braid_transport_register_producer(c->base.transport, &c->prod, false);
}

/* ---- responses as values ------------------------------------------------------------- */
int braid_http_response_new(int status, const char *content_type, const void *body, size_t len,
                            braid_http_response **out) {
    braid_http_response *r = braid_calloc(1, sizeof *r);
    if (!r) return BRAID_ENOMEM;
    r->status = status;
    if (content_type && !(r->content_type = braid_strdup(content_type))) goto fail;
    if (len) {
        if (!(r->body = braid_malloc(len))) goto fail;
        memcpy(r->body, body, len);
        r->body_len = len;
    }
    *out = r;
    return 0;
fail:
    braid_http_response_free(r);
    return BRAID_ENOMEM;
}

int braid_http_response_add_header(braid_http_response *r, const char *name, const char *value) {
    if (!valid_field(name, value)) return BRAID_EINVAL;
    size_t nl = strlen(name), vl = strlen(value), add = nl + vl + 4;
    if (r->headers_len + add > HS_XHDR_MAX) return BRAID_EMSGSIZE;
    char *h = braid_realloc(r->headers, r->headers_len + add + 1);
    if (!h) return BRAID_ENOMEM;
    r->headers = h;
    sprintf(h + r->headers_len, "%s: %s\r\n", name, value);
    r->headers_len += add;
    return 0;
}

void braid_http_response_free(void *p) {
    braid_http_response *r = p;
    if (!r) return;
    braid_free(r->content_type);
    braid_free(r->headers);
    braid_free(r->body);
    braid_free(r);
}

/* ---- the server object -------------------------------------------------------------------- */
int braid_http_server_new(braid_loop *loop, const braid_http_server_options *o,
                          braid_http_server **out) {
    braid_http_server_options d = { 0 };
    if (!o) o = &d;
    braid_http_server *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    s->loop = loop;
    s->header_timeout = o->header_timeout ? o->header_timeout : BRAID_SECONDS(10);
    s->body_timeout = o->body_timeout ? o->body_timeout : BRAID_SECONDS(30);
    s->idle_timeout = o->idle_timeout ? o->idle_timeout : BRAID_SECONDS(15);
    s->send_timeout = o->send_timeout ? o->send_timeout : BRAID_SECONDS(60);
    s->shutdown_timeout = o->shutdown_timeout ? o->shutdown_timeout : BRAID_SECONDS(10);
    s->allow_half_close = o->allow_half_close;
    s->limits = o->limits;
    if (!s->limits.max_request_line) s->limits.max_request_line = BRAID_HTTP_MAX_REQUEST_LINE;
    if (!s->limits.max_head) s->limits.max_head = BRAID_HTTP_MAX_HEAD;
    if (!s->limits.max_headers) s->limits.max_headers = BRAID_HTTP_MAX_HEADERS;
    if (s->limits.max_headers > HS_MAX_HEADERS_CAP) s->limits.max_headers = HS_MAX_HEADERS_CAP;
    if (!s->limits.max_body) s->limits.max_body = BRAID_HTTP_MAX_BODY;
    const char *name = o->server_name ? o->server_name : "braid";
    if (!valid_field("Server", name) || strlen(name) > 128) {
        braid_free(s);
        return BRAID_EINVAL;
    }
    s->server_line = braid_malloc(strlen(name) + 11);
    if (!s->server_line) {
        braid_free(s);
        return BRAID_ENOMEM;
    }
    if (*name) sprintf(s->server_line, "Server: %s\r\n", name);
    else s->server_line[0] = 0;
    s->server_line_len = strlen(s->server_line);
    s->factory.build_protocol = hs_build;
    s->factory.user = s;
    *out = s;
    return 0;
}

/* The shutdown deadline passed: every connection still open is aborted
 * (pending answers cancelled, on_lost hooks run, streams stopped). */
static void on_shutdown_deadline(braid_timer *t, void *arg) {
    (void)t;
    braid_http_server *s = arg;
    size_t n = 0;
    for (hs_conn *c = s->conns; c; c = c->next) {
        if (c->dead || !c->base.transport) continue;
        braid_transport_abort_with(c->base.transport, BRAID_ETIMEDOUT);   /* hs_lost runs later */
        n++;
    }
    if (n) braid_loop_log(s->loop, BRAID_LOG_INFO, "http: shutdown deadline passed: %zu connection(s) aborted", n);
}

void braid_http_server_shutdown(braid_http_server *s) {
    if (!s->shutting_down) {
        s->shutting_down = true;
        if (s->shutdown_timeout != BRAID_FOREVER && s->nconns) {
            uint64_t now = braid_loop_now_fresh(s->loop);
            s->shutdown_deadline = s->shutdown_timeout > UINT64_MAX - now ? UINT64_MAX : now + s->shutdown_timeout;
            braid_timer_init(s->loop, &s->shutdown_timer, on_shutdown_deadline, s);
            s->shutdown_timer_on = braid_timer_start_at(&s->shutdown_timer, s->shutdown_deadline) == 0;
        }
    }
    for (hs_conn *c = s->conns; c; c = c->next) {
        c->keep_alive = false;
        if (c->dead || !c->base.transport) continue;
        if ((c->state == HS_READING && !c->drain_wait) || c->state == HS_BODY) {
            c->state = HS_CLOSING;
            c->tkind = HS_T_NONE;
            conn_close(c);
        } else if (c->state == HS_CLOSING) {
            conn_close(c);                       /* closing already: now within the deadline */
        }
    }
}

static void shutdown_timer_stop(braid_http_server *s) {
    if (!s->shutdown_timer_on) return;
    braid_timer_stop(&s->shutdown_timer);
    s->shutdown_timer_on = false;
}

int braid_http_server_free(braid_http_server *s) {
    if (!s) return 0;
    if (s->nconns) return BRAID_EBUSY;
    shutdown_timer_stop(s);
    for (size_t i = 0; i < s->nroutes; i++) {
        braid_free(s->routes[i].path);
        braid_free(s->routes[i].method);
        if (s->routes[i].arg_free) s->routes[i].arg_free(s->routes[i].arg);
    }
    braid_free(s->routes);
    braid_free(s->server_line);
    braid_free(s);
    return 0;
}

braid_factory *braid_http_server_factory(braid_http_server *s) { return &s->factory; }

braid_deferred *braid_http_server_listen(braid_http_server *s, const char *endpoint) {
    return braid_endpoint_listen(s->loop, endpoint, &s->factory);
}

size_t braid_http_server_connections(const braid_http_server *s) { return s->nconns; }
uint64_t braid_http_server_requests(const braid_http_server *s) { return s->requests; }
