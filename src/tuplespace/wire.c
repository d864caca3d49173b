/* The wire protocol's codec: frames in and out, no loop, no transport (so
 * fuzz/fuzz_tuplespace.c runs it alone).
 *
 * A frame is a 32-bit big-endian length (the u32 framer) and a body:
 *   u8 version (1), u8 op, u32 id, then per op (integers big-endian):
 *   OUT       i32 priority, fields (a tuple)
 *   IN, RD    u64 timeout_ns, fields (a template)
 *   IN_LEASE  u64 timeout_ns, u64 lease_ns, fields
 *   IN_ALL, RD_ALL  u64 max, fields
 *   ACK       u64 lease
 *   NACK      u64 lease, u64 delay_ns
 *   RENEW     u64 lease, u64 lease_ns
 *   CANCEL    (id names the request to cancel)
 *   REPLY     i32 status; if 0: u32 count, then count tuples, each
 *             i32 priority, u32 deliveries, u64 lease, fields
 * fields: u8 count (1 ... 255), then per field u8 type, u8 match and
 *   ACTUAL  int/double: 8 bytes (a double's IEEE-754 bits); bool: 1 byte (0
 *           or 1); string/bytes: u32 length and the bytes
 *   ANY     nothing
 *   RANGE   two values of 8 bytes: lo, hi
 *   PREFIX  u32 length and the bytes
 * Anything else — a short body, a length past the end, bytes left over, an
 * unknown op, type or match — is BRAID_ETUPLE_PROTO; another version is
 * BRAID_ETUPLE_VERSION. */
#include "tuplespace_internal.h"

/* ---- writing ---------------------------------------------------------------------- */
void braid__ts_buf_free(ts_buf *b) {
    braid_free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->failed = false;
}

static uint8_t *room(ts_buf *b, size_t n) {
    if (b->failed) return NULL;
    if (b->cap - b->len < n) {
        size_t nc = b->cap ? b->cap : 256;
        while (nc - b->len < n) nc *= 2;
        uint8_t *p = braid_realloc(b->p, nc);
        if (!p) { b->failed = true; return NULL; }
        b->p = p;
        b->cap = nc;
    }
    uint8_t *at = b->p + b->len;
    b->len += n;
    return at;
}

static void be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

void braid__ts_put_u8(ts_buf *b, uint8_t v) {
    uint8_t *p = room(b, 1);
    if (p) *p = v;
}
void braid__ts_put_u32(ts_buf *b, uint32_t v) {
    uint8_t *p = room(b, 4);
    if (p) be32(p, v);
}
void braid__ts_put_u64(ts_buf *b, uint64_t v) {
    uint8_t *p = room(b, 8);
    if (p) { be32(p, (uint32_t)(v >> 32)); be32(p + 4, (uint32_t)v); }
}
static void put_bytes(ts_buf *b, const void *s, uint32_t len) {
    braid__ts_put_u32(b, len);
    uint8_t *p = room(b, len);
    if (p && len) memcpy(p, s, len);
}

size_t braid__ts_wire_begin(ts_buf *b, uint8_t op, uint32_t id) {
    size_t start = b->len;
    braid__ts_put_u32(b, 0);                 /* the length, filled by end */
    braid__ts_put_u8(b, TS_WIRE_VERSION);
    braid__ts_put_u8(b, op);
    braid__ts_put_u32(b, id);
    return start;
}

void braid__ts_wire_end(ts_buf *b, size_t start) {
    if (!b->failed) be32(b->p + start, (uint32_t)(b->len - start - 4));
}

void braid__ts_put_fields(ts_buf *b, const braid_field *f, size_t n) {
    braid__ts_put_u8(b, (uint8_t)n);
    for (size_t i = 0; i < n; i++) {
        braid__ts_put_u8(b, f[i].type);
        braid__ts_put_u8(b, f[i].match);
        switch (f[i].match) {
        case BRAID_FIELD_ANY: break;
        case BRAID_FIELD_RANGE:
            braid__ts_put_u64(b, (uint64_t)f[i].v.i);     /* the union's bits: int or double */
            braid__ts_put_u64(b, (uint64_t)f[i].hi.i);
            break;
        case BRAID_FIELD_PREFIX: put_bytes(b, f[i].v.p, f[i].len); break;
        default:
            switch (f[i].type) {
            case BRAID_FIELD_BOOL: braid__ts_put_u8(b, f[i].v.b ? 1 : 0); break;
            case BRAID_FIELD_STRING:
            case BRAID_FIELD_BYTES: put_bytes(b, f[i].v.p, f[i].len); break;
            default: braid__ts_put_u64(b, (uint64_t)f[i].v.i); break;
            }
        }
    }
}

void braid__ts_put_tuple(ts_buf *b, const braid_tuple *t) {
    braid__ts_put_u32(b, (uint32_t)t->priority);
    braid__ts_put_u32(b, t->deliveries);
    braid__ts_put_u64(b, t->lease);
    braid__ts_put_fields(b, t->f, t->n);
}

/* ---- reading ------------------------------------------------------------------------ */
typedef struct rd { const uint8_t *p; size_t len; bool bad; } rd;

static const uint8_t *take_n(rd *r, size_t n) {
    if (r->bad || r->len < n) { r->bad = true; return NULL; }
    const uint8_t *at = r->p;
    r->p += n;
    r->len -= n;
    return at;
}
static uint8_t get_u8(rd *r) { const uint8_t *p = take_n(r, 1); return p ? p[0] : 0; }
static uint32_t get_u32(rd *r) {
    const uint8_t *p = take_n(r, 4);
    return p ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3] : 0;
}
static uint64_t get_u64(rd *r) {
    uint64_t hi = get_u32(r);
    return hi << 32 | get_u32(r);
}
static const void *get_bytes(rd *r, uint32_t *len) {
    *len = get_u32(r);
    const uint8_t *p = take_n(r, *len);
    return p ? p : (const void *)"";
}

/* Fields into f (BRAID_TUPLE_MAX_FIELDS of room); blobs point into the frame. */
static uint32_t get_fields(rd *r, braid_field *f, bool tmpl) {
    uint32_t n = get_u8(r);
    if (n == 0) r->bad = true;
    for (uint32_t i = 0; i < n && !r->bad; i++) {
        memset(&f[i], 0, sizeof f[i]);
        f[i].type = get_u8(r);
        f[i].match = get_u8(r);
        if (f[i].type < BRAID_FIELD_INT || f[i].type > BRAID_FIELD_BOOL) { r->bad = true; break; }
        switch (f[i].match) {
        case BRAID_FIELD_ANY: break;
        case BRAID_FIELD_RANGE:
            f[i].v.i = (int64_t)get_u64(r);
            f[i].hi.i = (int64_t)get_u64(r);
            break;
        case BRAID_FIELD_PREFIX: f[i].v.p = get_bytes(r, &f[i].len); break;
        case BRAID_FIELD_ACTUAL:
            switch (f[i].type) {
            case BRAID_FIELD_BOOL: {
                uint8_t v = get_u8(r);
                if (v > 1) r->bad = true;
                f[i].v.b = v;
                break;
            }
            case BRAID_FIELD_STRING:
            case BRAID_FIELD_BYTES: f[i].v.p = get_bytes(r, &f[i].len); break;
            default: f[i].v.i = (int64_t)get_u64(r); break;
            }
            break;
        default: r->bad = true; break;
        }
    }
    if (!r->bad && braid__ts_check(f, n, tmpl) < 0) r->bad = true;
    return n;
}

int braid__ts_wire_decode(const uint8_t *p, size_t len, braid_field *fields, ts_msg *m) {
    rd r = { p, len, false };
    memset(m, 0, sizeof *m);
    uint8_t version = get_u8(&r);
    if (!r.bad && version != TS_WIRE_VERSION) return BRAID_ETUPLE_VERSION;
    m->op = get_u8(&r);
    m->id = get_u32(&r);
    m->f = fields;
    switch (m->op) {
    case TS_OP_OUT:
        m->priority = (int32_t)get_u32(&r);
        m->n = get_fields(&r, fields, false);
        break;
    case TS_OP_IN:
    case TS_OP_RD:
    case TS_OP_IN_ALL:
    case TS_OP_RD_ALL:
        m->a = get_u64(&r);
        m->n = get_fields(&r, fields, true);
        break;
    case TS_OP_IN_LEASE:
        m->a = get_u64(&r);
        m->b = get_u64(&r);
        m->n = get_fields(&r, fields, true);
        break;
    case TS_OP_ACK: m->a = get_u64(&r); break;
    case TS_OP_NACK:
    case TS_OP_RENEW:
        m->a = get_u64(&r);
        m->b = get_u64(&r);
        break;
    case TS_OP_CANCEL: break;
    case TS_OP_REPLY:
        m->status = (int32_t)get_u32(&r);
        if (m->status > 0) r.bad = true;
        if (m->status == 0) m->ntuples = get_u32(&r);
        /* the tuples are read by braid__ts_wire_tuple */
        m->rest = r.p;
        m->rest_len = r.len;
        return r.bad ? BRAID_ETUPLE_PROTO : 0;
    default: r.bad = true; break;
    }
    if (r.bad || r.len) return BRAID_ETUPLE_PROTO;
    return 0;
}

int braid__ts_wire_fields(const uint8_t *p, size_t len, braid_field *f, uint32_t *n) {
    rd r = { p, len, false };
    *n = get_fields(&r, f, false);
    return r.bad || r.len ? BRAID_ETUPLE_PROTO : 0;
}

int braid__ts_wire_tuple(const uint8_t **p, size_t *len, braid_tuple **out) {
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    rd r = { *p, *len, false };
    int32_t prio = (int32_t)get_u32(&r);
    uint32_t deliveries = get_u32(&r);
    uint64_t lease = get_u64(&r);
    uint32_t n = get_fields(&r, f, false);
    if (r.bad) return BRAID_ETUPLE_PROTO;
    ts_entry *e = braid__ts_entry_new(f, n);
    if (!e) return BRAID_ENOMEM;
    e->t.priority = prio;
    e->t.deliveries = deliveries;
    e->t.lease = lease;
    *p = r.p;
    *len = r.len;
    *out = &e->t;
    return 0;
}
