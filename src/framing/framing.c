/* The three framers (line, 32-bit length prefix, netstring) as pure parsers.
 *
 * Frames lying whole in the fed data are handed out in place; only the
 * incomplete tail is copied into the framer's buffer, which therefore holds
 * at most one partial frame (bounded by max plus a header) between feeds.
 * A line's partial tail remembers how far it was searched, so a long line
 * trickling in byte by byte is scanned once, not once per byte.
 *
 * This file depends on nothing but the allocator, so fuzz targets link it
 * alone (fuzz/fuzz_*.c). */
#include <braid/framing.h>
#include <string.h>

static void init(braid_framer *f, braid_framer_kind kind, size_t max, braid_framer_fn cb, void *ctx) {
    memset(f, 0, sizeof *f);
    f->kind = kind;
    f->max = max;
    f->cb = cb;
    f->ctx = ctx;
}

int braid_framer_init_line(braid_framer *f, const char *delim, size_t max, braid_framer_fn cb,
                           void *ctx) {
    if (!delim) delim = "\r\n";
    size_t n = strlen(delim);
    init(f, BRAID_FRAMER_LINE, max, cb, ctx);
    if (n == 0 || n > sizeof f->delim) { f->error = BRAID_EINVAL; return BRAID_EINVAL; }
    memcpy(f->delim, delim, n);
    f->delim_len = n;
    return 0;
}

void braid_framer_init_u32(braid_framer *f, size_t max, braid_framer_fn cb, void *ctx) {
    init(f, BRAID_FRAMER_U32, max > UINT32_MAX ? UINT32_MAX : max, cb, ctx);
}

void braid_framer_init_netstring(braid_framer *f, size_t max, braid_framer_fn cb, void *ctx) {
    init(f, BRAID_FRAMER_NETSTRING, max, cb, ctx);
}

size_t braid_framer_pending(const braid_framer *f) { return f->len; }

void braid_framer_close(braid_framer *f) {
    braid_free(f->buf);
    f->buf = NULL;
    f->len = f->cap = 0;
}

/* Each parser delivers the complete frames in p[0..n), sets *used to the
 * start of the first incomplete one, and returns 0, an error, or cb's stop. */
static int parse_line(braid_framer *f, const char *p, size_t n, size_t scan0, size_t *used) {
    size_t pos = 0, dl = f->delim_len;
    size_t scan = scan0;
    while (pos < n) {
        const char *from = p + pos + scan;
        size_t avail = n - pos - scan;
        const char *hit = avail >= dl ? memmem(from, avail, f->delim, dl) : NULL;
        if (!hit) {
            size_t pend = n - pos;
            /* the last dl-1 bytes may be the start of a delimiter */
            size_t content = pend >= dl - 1 ? pend - (dl - 1) : 0;
            if (content > f->max) { *used = pos; return BRAID_EMSGSIZE; }
            f->scanned = content;
            break;
        }
        size_t linelen = (size_t)(hit - (p + pos));
        if (linelen > f->max) { *used = pos; return BRAID_EMSGSIZE; }
        int rc = f->cb(f->ctx, p + pos, linelen);
        pos += linelen + dl;
        scan = 0;
        if (rc) { *used = pos; return rc; }
    }
    *used = pos;
    return 0;
}

static int parse_u32(braid_framer *f, const char *p, size_t n, size_t *used) {
    size_t pos = 0;
    while (n - pos >= 4) {
        const unsigned char *h = (const unsigned char *)p + pos;
        size_t len = (size_t)h[0] << 24 | (size_t)h[1] << 16 | (size_t)h[2] << 8 | h[3];
        if (len > f->max) { *used = pos; return BRAID_EMSGSIZE; }
        if (n - pos - 4 < len) break;
        int rc = f->cb(f->ctx, p + pos + 4, len);
        pos += 4 + len;
        if (rc) { *used = pos; return rc; }
    }
    *used = pos;
    return 0;
}

static int parse_netstring(braid_framer *f, const char *p, size_t n, size_t *used) {
    size_t pos = 0;
    while (pos < n) {
        size_t i = pos, len = 0;
        while (i < n && p[i] >= '0' && p[i] <= '9') {
            if (i > pos && p[pos] == '0') { *used = pos; return BRAID_EPROTO_INPUT; } /* leading zero */
            size_t d = (size_t)(p[i] - '0');
            if (len > (f->max - d) / 10 || len * 10 + d > f->max) { *used = pos; return BRAID_EMSGSIZE; }
            len = len * 10 + d;
            i++;
        }
        if (i == n) break;                                     /* header still arriving */
        if (i == pos || p[i] != ':') { *used = pos; return BRAID_EPROTO_INPUT; }
        size_t body = i + 1;
        if (n - body < len + 1) break;                         /* body or ',' still arriving */
        if (p[body + len] != ',') { *used = pos; return BRAID_EPROTO_INPUT; }
        int rc = f->cb(f->ctx, p + body, len);
        pos = body + len + 1;
        if (rc) { *used = pos; return rc; }
    }
    *used = pos;
    return 0;
}

static int parse(braid_framer *f, const char *p, size_t n, size_t scan0, size_t *used) {
    switch (f->kind) {
    case BRAID_FRAMER_LINE: return parse_line(f, p, n, scan0, used);
    case BRAID_FRAMER_U32: return parse_u32(f, p, n, used);
    case BRAID_FRAMER_NETSTRING: return parse_netstring(f, p, n, used);
    }
    return BRAID_EINVAL;
}

static int reserve(braid_framer *f, size_t need) {
    if (need <= f->cap) return 0;
    size_t n = f->cap ? f->cap : 256;
    while (n < need) n *= 2;
    char *b = braid_realloc(f->buf, n);
    if (!b) return BRAID_ENOMEM;
    f->buf = b;
    f->cap = n;
    return 0;
}

int braid_framer_feed(braid_framer *f, const void *data, size_t len) {
    if (f->error) return f->error;
    if (len == 0) return 0;
    const char *p = data;
    size_t n = len, used = 0, scan0 = 0;
    bool buffered = f->len > 0;
    if (buffered) {
        int rc = reserve(f, f->len + len);
        if (rc < 0) { f->error = rc; return rc; }
        memcpy(f->buf + f->len, data, len);
        f->len += len;
        p = f->buf;
        n = f->len;
        scan0 = f->scanned;
    }
    f->scanned = 0;
    int rc = parse(f, p, n, scan0, &used);
    if (rc) {
        f->error = rc;
        f->len = 0;
        return rc;
    }
    size_t rest = n - used;
    if (buffered) {
        if (used) memmove(f->buf, f->buf + used, rest);
        f->len = rest;
    } else if (rest) {
        if ((rc = reserve(f, rest)) < 0) { f->error = rc; return rc; }
        memcpy(f->buf, p + used, rest);
        f->len = rest;
    }
    if (f->len == 0 && f->cap > 64 * 1024) braid_framer_close(f);   /* a burst is over */
    return 0;
}

