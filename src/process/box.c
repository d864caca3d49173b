/* Boxes: the small typed key/value payloads of worker calls (process.h),
 * after Twisted's AMP boxes, and their encoding. The decoder reads what
 * another process sent, so it trusts nothing (fuzz/fuzz_box.c): every
 * length is checked against what is left, keys are unique, counts are
 * bounded, and the encoding is canonical (decoding then encoding gives the
 * very bytes back).
 *
 * Encoding (all integers big-endian):
 *   u8  version (1)
 *   u16 count of entries (0 ... BRAID_BOX_MAX_KEYS)
 *   count x { u8 key length (1 ... 255), the key, u8 type, the value }
 *     I64, U64: 8 bytes; F64: the IEEE-754 bits, 8 bytes; BOOL: 1 byte, 0 or 1;
 *     BYTES, STR: u32 length, the bytes (STR: UTF-8, no NUL);
 *     LIST: u32 count of items (<= BRAID_BOX_MAX_ITEMS), then each
 *           u32 length and the bytes;
 *     BOX: u32 length, a box's encoding (this one, nested);
 *     BOXES: as LIST, each item a box's encoding;
 *     TIME: i64 ns since the Unix epoch, i16 UTC offset in minutes (|o| < 1440);
 *     DECIMAL: u32 length, the text (decimal_text below)
 *   and nothing after the last entry. Boxes nest at most BRAID_BOX_MAX_DEPTH
 *   levels below the outermost; a nested box is checked as the outermost is,
 *   keys unique included (by a small hash table, so the check stays linear in
 *   the input however many boxes it holds). A nested value is kept as its
 *   encoding, so a decoded box encodes back to the same bytes. */
#include "process/process_internal.h"
#include <string.h>

typedef struct box_entry {
    void *mem;                     /* its own block (the key, NUL, the value), or NULL: in the box's */
    const char *key;               /* NUL-terminated */
    unsigned char *val;            /* BYTES/STR: NUL after; LIST: the items' encoding */
    size_t len;                    /* BYTES/STR: bytes; LIST: the items' encoding */
    uint32_t items;                /* LIST, BOXES */
    uint32_t *offs;                /* LIST, BOXES: where item i starts in val (its u32 length) */
    uint32_t ocap;                 /* offs' room, when allocated apart (0: in a decoded box's block) */
    size_t mcap;                   /* mem's bytes (a list's appends grow it by doubling) */
    int16_t tz;                    /* TIME: the UTC offset in minutes */
    uint8_t klen;
    braid_box_type type;
    union { int64_t i64; uint64_t u64; double f64; bool b; } n;   /* TIME: i64 */
} box_entry;

/* A built box holds its first entries inline and allocates one block per
 * entry; a decoded box is one allocation: the box, its entries and their
 * keys and values (entries changed later get blocks of their own). */
#define INLINE_ENTRIES 4
struct braid_box {
    box_entry *e;                  /* inl, the decoded block's array, or its own allocation */
    size_t n, cap;
    bool e_own;                    /* e was allocated apart */
    box_entry inl[INLINE_ENTRIES];
};

int braid_box_new(braid_box **out) {
    braid_box *b = braid_malloc(sizeof *b);
    if (!b) return BRAID_ENOMEM;
    b->e = b->inl;
    b->n = 0;
    b->cap = INLINE_ENTRIES;
    b->e_own = false;
    *out = b;
    return 0;
}

void braid_box_free(braid_box *b) {
    if (!b) return;
    for (size_t i = 0; i < b->n; i++) {
        braid_free(b->e[i].mem);
        if (b->e[i].ocap) braid_free(b->e[i].offs);
    }
    if (b->e_own) braid_free(b->e);
    braid_free(b);
}

static box_entry *find(const braid_box *b, const char *key, size_t klen) {
    for (size_t i = 0; i < b->n; i++)
        if (b->e[i].klen == klen && !memcmp(b->e[i].key, key, klen)) return &b->e[i];
    return NULL;
}

/* Is s (len bytes) UTF-8 without a NUL? (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF.) */
static bool utf8_text(const unsigned char *s, size_t len) {
    for (size_t i = 0; i < len;) {
        unsigned c = s[i];
        if (c == 0) return false;
        if (c < 0x80) { i++; continue; }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) n = 1;
        else if (c >= 0xE0 && c <= 0xEF) { n = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else return false;
        if (len - i - 1 < n) return false;
        if (s[i + 1] < lo || s[i + 1] > hi) return false;
        for (size_t k = 2; k <= n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return false;
        i += n + 1;
    }
    return true;
}

/* Put key = a value of type with vlen bytes at v (copied; NUL added): a new
 * entry, or the old one replaced. The entry is returned for numbers. */
static int put(braid_box *b, const char *key, size_t klen, braid_box_type type, const void *v,
               size_t vlen, box_entry **out) {
    if (klen == 0 || klen > BRAID_BOX_MAX_KEY) return BRAID_EINVAL;
    box_entry *e = find(b, key, klen);
    if (!e && b->n >= BRAID_BOX_MAX_KEYS) return BRAID_EMSGSIZE;
    if (vlen > SIZE_MAX - klen - 2) return BRAID_EMSGSIZE;
    char *mem = braid_malloc(klen + 1 + vlen + 1);
    if (!mem) return BRAID_ENOMEM;
    if (!e && b->n == b->cap) {
        size_t cap = b->cap * 2;
        box_entry *ne = b->e_own ? braid_realloc(b->e, cap * sizeof *ne) : braid_malloc(cap * sizeof *ne);
        if (!ne) {
            braid_free(mem);
            return BRAID_ENOMEM;
        }
        if (!b->e_own) memcpy(ne, b->e, b->n * sizeof *ne);
        b->e = ne;
        b->cap = cap;
        b->e_own = true;
    }
    if (e) {
        braid_free(e->mem);
        if (e->ocap) braid_free(e->offs);
    } else {
        e = &b->e[b->n++];
    }
    memset(e, 0, sizeof *e);
    memcpy(mem, key, klen);
    mem[klen] = 0;
    e->mem = mem;
    e->mcap = klen + 1 + vlen + 1;
    e->key = mem;
    e->klen = (uint8_t)klen;
    e->type = type;
    e->val = (unsigned char *)mem + klen + 1;
    if (vlen && v) memcpy(e->val, v, vlen);
    e->val[vlen] = 0;
    e->len = vlen;
    if (out) *out = e;
    return 0;
}

int braid_box_set_bytes(braid_box *b, const char *key, const void *p, size_t len) {
    if (len && !p) return BRAID_EINVAL;
    if (len > UINT32_MAX) return BRAID_EMSGSIZE;
    return put(b, key, key ? strlen(key) : 0, BRAID_BOX_BYTES, p, len, NULL);
}

/* A decimal number's text, as Python's decimal.Decimal prints it: a sign,
 * then digits with an optional point and an optional exponent, or NaN,
 * sNaN, Infinity. */
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }
static bool decimal_text(const unsigned char *s, size_t len) {
    size_t i = 0;
    if (i < len && (s[i] == '+' || s[i] == '-')) i++;
    size_t rest = len - i;
    if (rest == 8 && !memcmp(s + i, "Infinity", 8)) return true;
    size_t nan = rest >= 3 && !memcmp(s + i, "NaN", 3) ? 3 : rest >= 4 && !memcmp(s + i, "sNaN", 4) ? 4 : 0;
    if (nan) {   /* a NaN may carry a payload of digits: "NaN123" */
        for (i += nan; i < len; i++)
            if (!is_digit(s[i])) return false;
        return true;
    }
    size_t digits = 0;
    for (; i < len && is_digit(s[i]); i++) digits++;
    if (i < len && s[i] == '.')
        for (i++; i < len && is_digit(s[i]); i++) digits++;
    if (!digits) return false;
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < len && (s[i] == '+' || s[i] == '-')) i++;
        size_t e = 0;
        for (; i < len && is_digit(s[i]); i++) e++;
        if (!e) return false;
    }
    return i == len;
}

int braid_box_set_str(braid_box *b, const char *key, const char *s) {
    if (!s) return BRAID_EINVAL;
    size_t len = strlen(s);
    if (len > UINT32_MAX) return BRAID_EMSGSIZE;
    if (!utf8_text((const unsigned char *)s, len)) return BRAID_EINVAL;
    return put(b, key, key ? strlen(key) : 0, BRAID_BOX_STR, s, len, NULL);
}

int braid_box_set_decimal(braid_box *b, const char *key, const char *text) {
    if (!text) return BRAID_EINVAL;
    size_t len = strlen(text);
    if (len > UINT32_MAX) return BRAID_EMSGSIZE;
    if (!decimal_text((const unsigned char *)text, len)) return BRAID_EINVAL;
    return put(b, key, key ? strlen(key) : 0, BRAID_BOX_DECIMAL, text, len, NULL);
}

enum { TZ_LIMIT = 24 * 60 };   /* |offset| < one day, in minutes */
int braid_box_set_time(braid_box *b, const char *key, int64_t unix_ns, int utc_offset_min) {
    if (utc_offset_min <= -TZ_LIMIT || utc_offset_min >= TZ_LIMIT) return BRAID_EINVAL;
    box_entry *e;
    int rc = put(b, key, key ? strlen(key) : 0, BRAID_BOX_TIME, NULL, 0, &e);
    if (rc == 0) {
        e->n.i64 = unix_ns;
        e->tz = (int16_t)utc_offset_min;
    }
    return rc;
}

#define SET_NUM(name, T, TYPE, field)                                                  \
    int braid_box_set_##name(braid_box *b, const char *key, T v) {                     \
        box_entry *e;                                                                  \
        int rc = put(b, key, key ? strlen(key) : 0, TYPE, NULL, 0, &e);                \
        if (rc == 0) e->n.field = v;                                                   \
        return rc;                                                                     \
    }
SET_NUM(i64, int64_t, BRAID_BOX_I64, i64)
SET_NUM(u64, uint64_t, BRAID_BOX_U64, u64)
SET_NUM(f64, double, BRAID_BOX_F64, f64)
SET_NUM(bool, bool, BRAID_BOX_BOOL, b)

/* Append an item to key's list of type (LIST or BOXES), made if key is new. */
static int append_item(braid_box *b, const char *key, braid_box_type type, const void *p, size_t len) {
    size_t klen = key ? strlen(key) : 0;
    if (len && !p) return BRAID_EINVAL;
    if (len > UINT32_MAX - 4) return BRAID_EMSGSIZE;
    box_entry *e = klen ? find(b, key, klen) : NULL;
    if (!e) {
        uint32_t *offs = braid_malloc(8 * sizeof *offs);
        if (!offs) return BRAID_ENOMEM;
        unsigned char l[4];
        braid__put32(l, (uint32_t)len);
        int rc = put(b, key, klen, type, NULL, 4 + len, &e);
        if (rc < 0) {
            braid_free(offs);
            return rc;
        }
        memcpy(e->val, l, 4);
        if (len) memcpy(e->val + 4, p, len);
        e->items = 1;
        e->offs = offs;
        e->ocap = 8;
        offs[0] = 0;
        return 0;
    }
    if (e->type != type) return BRAID_EBOX_TYPE;
    if (e->items >= BRAID_BOX_MAX_ITEMS || e->len > UINT32_MAX - 4 - len) return BRAID_EMSGSIZE;
    /* Room for one more offset, then for the bytes: both grow by doubling,
     * so n appends cost O(n) whatever the allocator does with realloc. */
    if (!e->ocap || e->items == e->ocap) {   /* full, or in a decoded block */
        uint32_t cap = e->items < 4 ? 8 : e->items * 2;
        uint32_t *o = e->ocap ? braid_realloc(e->offs, cap * sizeof *o) : braid_malloc(cap * sizeof *o);
        if (!o) return BRAID_ENOMEM;
        if (!e->ocap && e->items) memcpy(o, e->offs, e->items * sizeof *o);   /* was in a decoded block */
        e->offs = o;
        e->ocap = cap;
    }
    size_t need = e->klen + 1u + e->len + 4 + len + 1;
    if (!e->mem || need > e->mcap) {
        size_t cap = e->mem && e->mcap * 2 > need ? e->mcap * 2 : need;
        char *mem;
        if (e->mem) {
            mem = braid_realloc(e->mem, cap);
        } else if ((mem = braid_malloc(cap)) != NULL) {
            /* In a decoded box's block: it gets a block of its own. */
            memcpy(mem, e->key, e->klen + 1u);
            memcpy(mem + e->klen + 1, e->val, e->len);
        }
        if (!mem) return BRAID_ENOMEM;
        e->mem = mem;
        e->mcap = cap;
        e->key = mem;
        e->val = (unsigned char *)mem + e->klen + 1;
    }
    e->offs[e->items] = (uint32_t)e->len;
    braid__put32(e->val + e->len, (uint32_t)len);
    if (len) memcpy(e->val + e->len + 4, p, len);
    e->len += 4 + len;
    e->val[e->len] = 0;
    e->items++;
    return 0;
}

int braid_box_append(braid_box *b, const char *key, const void *p, size_t len) {
    return append_item(b, key, BRAID_BOX_LIST, p, len);
}

static bool box_wellformed(const unsigned char *p, size_t len, unsigned depth);

/* v's encoding in a new block (*enc, *len), if v may go one level down. */
static int encode_nested(const braid_box *v, unsigned char **enc, size_t *len) {
    if (!v) return BRAID_EINVAL;
    size_t n = braid_box_encoded_size(v);
    if (n > UINT32_MAX - 4) return BRAID_EMSGSIZE;
    unsigned char *buf = braid_malloc(n);
    if (!buf) return BRAID_ENOMEM;
    (void)braid_box_encode(v, buf, n, NULL);
    if (!box_wellformed(buf, n, BRAID_BOX_MAX_DEPTH - 1)) {   /* too deep one level down */
        braid_free(buf);
        return BRAID_EINVAL;
    }
    *enc = buf;
    *len = n;
    return 0;
}

int braid_box_set_box(braid_box *b, const char *key, const braid_box *v) {
    unsigned char *enc;
    size_t n;
    int rc = encode_nested(v, &enc, &n);
    if (rc < 0) return rc;
    rc = put(b, key, key ? strlen(key) : 0, BRAID_BOX_BOX, enc, n, NULL);
    braid_free(enc);
    return rc;
}

int braid_box_append_box(braid_box *b, const char *key, const braid_box *v) {
    unsigned char *enc;
    size_t n;
    int rc = encode_nested(v, &enc, &n);
    if (rc < 0) return rc;
    rc = append_item(b, key, BRAID_BOX_BOXES, enc, n);
    braid_free(enc);
    return rc;
}

/* ---- reading ------------------------------------------------------------------------ */
size_t braid_box_count(const braid_box *b) { return b->n; }

const char *braid_box_key(const braid_box *b, size_t i) { return i < b->n ? b->e[i].key : NULL; }

static const box_entry *lookup(const braid_box *b, const char *key) {
    return key ? find(b, key, strlen(key)) : NULL;
}

braid_box_type braid_box_kind(const braid_box *b, const char *key) {
    const box_entry *e = lookup(b, key);
    return e ? e->type : (braid_box_type)0;
}

#define GET_NUM(name, T, TYPE, field)                                                  \
    int braid_box_##name(const braid_box *b, const char *key, T *out) {                \
        const box_entry *e = lookup(b, key);                                           \
        if (!e) return BRAID_ENOENT;                                                   \
        if (e->type != TYPE) return BRAID_EBOX_TYPE;                                   \
        *out = e->n.field;                                                             \
        return 0;                                                                      \
    }
GET_NUM(i64, int64_t, BRAID_BOX_I64, i64)
GET_NUM(u64, uint64_t, BRAID_BOX_U64, u64)
GET_NUM(f64, double, BRAID_BOX_F64, f64)
GET_NUM(bool, bool, BRAID_BOX_BOOL, b)

const char *braid_box_str(const braid_box *b, const char *key) {
    const box_entry *e = lookup(b, key);
    return e && e->type == BRAID_BOX_STR ? (const char *)e->val : NULL;
}

int braid_box_bytes(const braid_box *b, const char *key, const void **p, size_t *len) {
    const box_entry *e = lookup(b, key);
    if (!e) return BRAID_ENOENT;
    if (e->type != BRAID_BOX_BYTES && e->type != BRAID_BOX_STR) return BRAID_EBOX_TYPE;
    *p = e->val;
    *len = e->len;
    return 0;
}

size_t braid_box_items(const braid_box *b, const char *key) {
    const box_entry *e = lookup(b, key);
    return e && (e->type == BRAID_BOX_LIST || e->type == BRAID_BOX_BOXES) ? e->items : 0;
}

static int item_of(const braid_box *b, const char *key, braid_box_type type, size_t i, const void **p,
                   size_t *len) {
    const box_entry *e = lookup(b, key);
    if (!e) return BRAID_ENOENT;
    if (e->type != type) return BRAID_EBOX_TYPE;
    if (i >= e->items) return BRAID_ENOENT;
    const unsigned char *at = e->val + e->offs[i];
    *p = at + 4;
    *len = braid__get32(at);
    return 0;
}

int braid_box_item(const braid_box *b, const char *key, size_t i, const void **p, size_t *len) {
    return item_of(b, key, BRAID_BOX_LIST, i, p, len);
}

int braid_box_item_box(const braid_box *b, const char *key, size_t i, braid_box **out) {
    const void *p;
    size_t len;
    int rc = item_of(b, key, BRAID_BOX_BOXES, i, &p, &len);
    return rc < 0 ? rc : braid_box_decode(p, len, out);
}

int braid_box_box(const braid_box *b, const char *key, braid_box **out) {
    const box_entry *e = lookup(b, key);
    if (!e) return BRAID_ENOENT;
    if (e->type != BRAID_BOX_BOX) return BRAID_EBOX_TYPE;
    return braid_box_decode(e->val, e->len, out);
}

int braid_box_time(const braid_box *b, const char *key, int64_t *unix_ns, int *utc_offset_min) {
    const box_entry *e = lookup(b, key);
    if (!e) return BRAID_ENOENT;
    if (e->type != BRAID_BOX_TIME) return BRAID_EBOX_TYPE;
    if (unix_ns) *unix_ns = e->n.i64;
    if (utc_offset_min) *utc_offset_min = e->tz;
    return 0;
}

const char *braid_box_decimal(const braid_box *b, const char *key) {
    const box_entry *e = lookup(b, key);
    return e && e->type == BRAID_BOX_DECIMAL ? (const char *)e->val : NULL;
}

/* ---- encoding ------------------------------------------------------------------------ */
static size_t value_size(const box_entry *e) {
    switch (e->type) {
    case BRAID_BOX_BOOL: return 1;
    case BRAID_BOX_TIME: return 10;
    case BRAID_BOX_BYTES:
    case BRAID_BOX_STR:
    case BRAID_BOX_DECIMAL:
    case BRAID_BOX_BOX:
    case BRAID_BOX_LIST:
    case BRAID_BOX_BOXES: return 4 + e->len;
    default: return 8;
    }
}

size_t braid_box_encoded_size(const braid_box *b) {
    size_t n = 3;
    for (size_t i = 0; i < b->n; i++) n += 2 + (size_t)b->e[i].klen + value_size(&b->e[i]);
    return n;
}

int braid_box_encode(const braid_box *b, void *buf, size_t cap, size_t *len) {
    size_t need = braid_box_encoded_size(b);
    if (need > cap) return BRAID_EMSGSIZE;
    unsigned char *o = buf;
    o[0] = BRAID_BOX_VERSION;
    o[1] = (unsigned char)(b->n >> 8);
    o[2] = (unsigned char)b->n;
    o += 3;
    for (size_t i = 0; i < b->n; i++) {
        const box_entry *e = &b->e[i];
        *o++ = e->klen;
        memcpy(o, e->key, e->klen);
        o += e->klen;
        *o++ = (unsigned char)e->type;
        switch (e->type) {
        case BRAID_BOX_BOOL: *o++ = e->n.b; break;
        case BRAID_BOX_I64: braid__put64(o, (uint64_t)e->n.i64); o += 8; break;
        case BRAID_BOX_U64: braid__put64(o, e->n.u64); o += 8; break;
        case BRAID_BOX_F64: {
            uint64_t u;
            memcpy(&u, &e->n.f64, 8);
            braid__put64(o, u);
            o += 8;
            break;
        }
        case BRAID_BOX_TIME:
            braid__put64(o, (uint64_t)e->n.i64);
            o[8] = (unsigned char)((uint16_t)e->tz >> 8);
            o[9] = (unsigned char)(uint16_t)e->tz;
            o += 10;
            break;
        case BRAID_BOX_LIST:
        case BRAID_BOX_BOXES:
            braid__put32(o, e->items);
            memcpy(o + 4, e->val, e->len);
            o += 4 + e->len;
            break;
        default:
            braid__put32(o, (uint32_t)e->len);
            if (e->len) memcpy(o + 4, e->val, e->len);
            o += 4 + e->len;
            break;
        }
    }
    if (len) *len = need;
    return 0;
}

/* ---- decoding ------------------------------------------------------------------------
 * Two passes over the input: the first checks its shape and sizes the
 * block (keys and values with their NULs), the second fills it. */
/* The bytes of the value of type at p (0: malformed); depth: the levels of
 * boxes that may still nest inside it. */
static size_t value_wire(const unsigned char *p, const unsigned char *end, braid_box_type type,
                         uint32_t *items, unsigned depth) {
    size_t left = (size_t)(end - p);
    switch (type) {
    case BRAID_BOX_BOOL: return left >= 1 && p[0] <= 1 ? 1 : 0;
    case BRAID_BOX_I64:
    case BRAID_BOX_U64:
    case BRAID_BOX_F64: return left >= 8 ? 8 : 0;
    case BRAID_BOX_TIME: {
        if (left < 10) return 0;
        int tz = (int16_t)(uint16_t)(p[8] << 8 | p[9]);
        return tz > -TZ_LIMIT && tz < TZ_LIMIT ? 10 : 0;
    }
    case BRAID_BOX_BYTES:
    case BRAID_BOX_STR:
    case BRAID_BOX_DECIMAL:
    case BRAID_BOX_BOX: {
        if (left < 4 || left - 4 < braid__get32(p)) return 0;
        size_t vlen = braid__get32(p);
        if (type == BRAID_BOX_STR && !utf8_text(p + 4, vlen)) return 0;
        if (type == BRAID_BOX_DECIMAL && !decimal_text(p + 4, vlen)) return 0;
        if (type == BRAID_BOX_BOX && (!depth || !box_wellformed(p + 4, vlen, depth - 1))) return 0;
        return 4 + vlen;
    }
    case BRAID_BOX_LIST:
    case BRAID_BOX_BOXES: {
        if (left < 4) return 0;
        uint32_t n = braid__get32(p);
        if (n > BRAID_BOX_MAX_ITEMS || (type == BRAID_BOX_BOXES && !depth)) return 0;
        const unsigned char *q = p + 4;
        for (uint32_t k = 0; k < n; k++) {
            if (end - q < 4 || (size_t)(end - q) - 4 < braid__get32(q)) return 0;
            size_t l = braid__get32(q);
            if (type == BRAID_BOX_BOXES && !box_wellformed(q + 4, l, depth - 1)) return 0;
            q += 4 + l;
        }
        *items = n;
        return (size_t)(q - p);
    }
    default: return 0;
    }
}

/* Is [p, p + len) one box's encoding, with boxes at most depth levels
 * inside it? Keys are checked unique through an open-addressing table of
 * their FNV-1a hashes (256 keys at most: 512 slots), so the check stays
 * linear — a frame full of boxes of 256 keys each would otherwise cost
 * 32,000 key comparisons a box. */
static bool box_wellformed(const unsigned char *p, size_t len, unsigned depth) {
    const unsigned char *start = p, *end = p + len;
    if (len < 3 || p[0] != BRAID_BOX_VERSION || len > UINT32_MAX) return false;
    size_t count = (size_t)p[1] << 8 | p[2];
    if (count > BRAID_BOX_MAX_KEYS) return false;
    /* Each used slot: 1 + where a key's length byte is, from start. 2 KiB
     * of stack a level, so a box nested to the limit decodes in a fiber's
     * 64 KiB stack with room to spare. */
    uint32_t slot[2 * BRAID_BOX_MAX_KEYS];
    memset(slot, 0, sizeof slot);
    p += 3;
    for (size_t i = 0; i < count; i++) {
        if (end - p < 1) return false;
        size_t klen = *p;
        if (klen == 0 || (size_t)(end - p) < klen + 2 || memchr(p + 1, 0, klen)) return false;
        uint32_t h = 2166136261u;
        for (size_t k = 0; k < klen; k++) h = (h ^ p[1 + k]) * 16777619u;
        for (size_t at = h % (2 * BRAID_BOX_MAX_KEYS);; at = (at + 1) % (2 * BRAID_BOX_MAX_KEYS)) {
            if (!slot[at]) {
                slot[at] = (uint32_t)(p - start) + 1;
                break;
            }
            const unsigned char *o = start + slot[at] - 1;
            if (o[0] == klen && !memcmp(o + 1, p + 1, klen)) return false;   /* the same key twice */
        }
        p += 1 + klen;
        braid_box_type type = (braid_box_type)*p++;
        uint32_t items = 0;
        size_t w = value_wire(p, end, type, &items, depth);
        if (w == 0) return false;
        p += w;
    }
    return p == end;
}

int braid_box_decode(const void *buf, size_t len, braid_box **out) {
    const unsigned char *start = buf, *end = start + len, *p = start + 3;
    if (len < 3 || start[0] != BRAID_BOX_VERSION) return BRAID_EBOX;
    size_t count = (size_t)start[1] << 8 | start[2];
    if (count > BRAID_BOX_MAX_KEYS) return BRAID_EBOX;
    size_t arena = 0;
    for (size_t i = 0; i < count; i++) {
        if (end - p < 1) return BRAID_EBOX;
        size_t klen = *p++;
        if (klen == 0 || (size_t)(end - p) < klen + 1 || memchr(p, 0, klen)) return BRAID_EBOX;
        p += klen;
        braid_box_type type = (braid_box_type)*p++;
        uint32_t items = 0;
        size_t w = value_wire(p, end, type, &items, BRAID_BOX_MAX_DEPTH);
        if (w == 0) return BRAID_EBOX;
        p += w;
        bool stored = type != BRAID_BOX_BOOL && type != BRAID_BOX_I64 && type != BRAID_BOX_U64 &&
                      type != BRAID_BOX_F64 && type != BRAID_BOX_TIME;   /* bytes kept after a u32 */
        arena += klen + 1 + (stored ? w - 4 + 1 : 0);
        if (type == BRAID_BOX_LIST || type == BRAID_BOX_BOXES) arena += 3 + (size_t)items * 4;   /* offsets */
    }
    if (p != end) return BRAID_EBOX;
    size_t cap = count > INLINE_ENTRIES ? count : 0;   /* more than inline: an array in the block */
    braid_box *b = braid_malloc(sizeof *b + cap * sizeof(box_entry) + arena);
    if (!b) return BRAID_ENOMEM;
    b->e = cap ? (box_entry *)(b + 1) : b->inl;
    b->cap = cap ? cap : INLINE_ENTRIES;
    b->n = 0;
    b->e_own = false;
    char *a = (char *)(b + 1) + cap * sizeof(box_entry);
    p = start + 3;
    for (size_t i = 0; i < count; i++) {
        size_t klen = *p++;
        if (find(b, (const char *)p, klen)) {   /* keys are unique */
            braid_box_free(b);
            return BRAID_EBOX;
        }
        box_entry *e = &b->e[b->n++];
        memset(e, 0, sizeof *e);
        memcpy(a, p, klen);
        a[klen] = 0;
        e->key = a;
        e->klen = (uint8_t)klen;
        a += klen + 1;
        p += klen;
        e->type = (braid_box_type)*p++;
        size_t w = value_wire(p, end, e->type, &e->items, BRAID_BOX_MAX_DEPTH);
        switch (e->type) {
        case BRAID_BOX_BOOL: e->n.b = p[0]; break;
        case BRAID_BOX_TIME:
            e->n.u64 = braid__get64(p);
            e->tz = (int16_t)(uint16_t)(p[8] << 8 | p[9]);
            break;
        case BRAID_BOX_F64: {
            uint64_t u = braid__get64(p);
            memcpy(&e->n.f64, &u, 8);
            break;
        }
        case BRAID_BOX_I64:
        case BRAID_BOX_U64: e->n.u64 = braid__get64(p); break;   /* the i64 shares its bits */
        default:   /* BYTES, STR, DECIMAL, BOX, LIST, BOXES: what follows the u32 */
            e->len = w - 4;
            e->val = (unsigned char *)a;
            memcpy(a, p + 4, e->len);
            a[e->len] = 0;
            a += e->len + 1;
            if (e->type == BRAID_BOX_LIST || e->type == BRAID_BOX_BOXES) {
                a = (char *)(((uintptr_t)a + 3) & ~(uintptr_t)3);
                e->offs = (uint32_t *)(void *)a;
                uint32_t off = 0;
                for (uint32_t k = 0; k < e->items; k++) {
                    e->offs[k] = off;
                    off += 4 + braid__get32(e->val + off);
                }
                a += (size_t)e->items * 4;
            }
            break;
        }
        p += w;
    }
    *out = b;
    return 0;
}

/* ---- log fields as a box (a worker's log events, worker.c) ----------------------------- */
size_t braid__box_encode_fields(const braid_log_field *f, size_t n, unsigned char *buf, size_t cap) {
    if (cap < 3) return 0;
    size_t at = 3, count = 0;
    for (size_t i = 0; i < n && count < BRAID_BOX_MAX_KEYS; i++) {
        size_t klen = f[i].key ? strlen(f[i].key) : 0;
        if (klen == 0 || klen > BRAID_BOX_MAX_KEY || memchr(f[i].key, 0, klen)) continue;
        bool dup = false;   /* the first of a key wins: a box's keys are unique */
        for (size_t k = 0; k < i && !dup; k++) dup = f[k].key && !strcmp(f[k].key, f[i].key);
        if (dup) continue;
        size_t vlen = 8;
        braid_box_type t;
        const char *s = NULL;
        switch (f[i].type) {
        case BRAID_LOG_FIELD_I64: t = BRAID_BOX_I64; break;
        case BRAID_LOG_FIELD_U64: t = BRAID_BOX_U64; break;
        case BRAID_LOG_FIELD_F64: t = BRAID_BOX_F64; break;
        case BRAID_LOG_FIELD_BOOL: t = BRAID_BOX_BOOL; vlen = 1; break;
        case BRAID_LOG_FIELD_STR:
            s = f[i].v.str ? f[i].v.str : "";
            vlen = 4 + strlen(s);
            t = utf8_text((const unsigned char *)s, vlen - 4) ? BRAID_BOX_STR : BRAID_BOX_BYTES;
            break;
        default: continue;
        }
        if (cap - at < 2 + klen + vlen) continue;   /* what does not fit stays out */
        buf[at++] = (unsigned char)klen;
        memcpy(buf + at, f[i].key, klen);
        at += klen;
        buf[at++] = (unsigned char)t;
        switch (t) {
        case BRAID_BOX_I64: braid__put64(buf + at, (uint64_t)f[i].v.i64); break;
        case BRAID_BOX_U64: braid__put64(buf + at, f[i].v.u64); break;
        case BRAID_BOX_F64: {
            uint64_t u;
            memcpy(&u, &f[i].v.f64, 8);
            braid__put64(buf + at, u);
            break;
        }
        case BRAID_BOX_BOOL: buf[at] = f[i].v.b; break;
        default:
            braid__put32(buf + at, (uint32_t)(vlen - 4));
            memcpy(buf + at + 4, s, vlen - 4);
            break;
        }
        at += vlen;
        count++;
    }
    buf[0] = BRAID_BOX_VERSION;
    buf[1] = (unsigned char)(count >> 8);
    buf[2] = (unsigned char)count;
    return at;
}

size_t braid__box_to_fields(const braid_box *b, braid_log_field *out, size_t cap) {
    size_t n = 0;
    for (size_t i = 0; i < b->n && n < cap; i++) {
        const box_entry *e = &b->e[i];
        braid_log_field *f = &out[n];
        f->key = e->key;
        switch (e->type) {
        case BRAID_BOX_I64: f->type = BRAID_LOG_FIELD_I64; f->v.i64 = e->n.i64; break;
        case BRAID_BOX_U64: f->type = BRAID_LOG_FIELD_U64; f->v.u64 = e->n.u64; break;
        case BRAID_BOX_F64: f->type = BRAID_LOG_FIELD_F64; f->v.f64 = e->n.f64; break;
        case BRAID_BOX_BOOL: f->type = BRAID_LOG_FIELD_BOOL; f->v.b = e->n.b; break;
        case BRAID_BOX_STR:
        case BRAID_BOX_DECIMAL:
        case BRAID_BOX_BYTES:   /* NUL-terminated in the box; a NUL inside cuts it */
            f->type = BRAID_LOG_FIELD_STR;
            f->v.str = (const char *)e->val;
            break;
        default: continue;      /* lists, boxes and times have no log field type */
        }
        n++;
    }
    return n;
}
