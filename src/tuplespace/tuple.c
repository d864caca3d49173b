/* Fields and tuples: validation, copies in one allocation, matching, the
 * index key's hash, formatting. Pure: no loop, so the wire codec and its
 * fuzz target use it too. */
#include "tuplespace_internal.h"
#include <math.h>
#include <stdio.h>

static bool is_blob(uint8_t type) { return type == BRAID_FIELD_STRING || type == BRAID_FIELD_BYTES; }

int braid__ts_check(const braid_field *f, size_t n, bool tmpl) {
    if (n == 0 || n > BRAID_TUPLE_MAX_FIELDS || !f) return BRAID_EINVAL;
    for (size_t i = 0; i < n; i++) {
        uint8_t t = f[i].type, m = f[i].match;
        if (t < BRAID_FIELD_INT || t > BRAID_FIELD_BOOL) return BRAID_EINVAL;
        if (!tmpl && m != BRAID_FIELD_ACTUAL) return BRAID_EINVAL;
        switch (m) {
        case BRAID_FIELD_ACTUAL:
            if (is_blob(t) && f[i].len && !f[i].v.p) return BRAID_EINVAL;
            break;
        case BRAID_FIELD_ANY: break;
        case BRAID_FIELD_RANGE:
            if (t != BRAID_FIELD_INT && t != BRAID_FIELD_DOUBLE) return BRAID_EINVAL;
            break;
        case BRAID_FIELD_PREFIX:
            if (!is_blob(t) || (f[i].len && !f[i].v.p)) return BRAID_EINVAL;
            break;
        default: return BRAID_EINVAL;
        }
    }
    return 0;
}

size_t braid__ts_data_bytes(const braid_field *f, size_t n) {
    size_t b = 0;
    for (size_t i = 0; i < n; i++)
        if (is_blob(f[i].type) && (f[i].match == BRAID_FIELD_ACTUAL || f[i].match == BRAID_FIELD_PREFIX))
            b += (size_t)f[i].len + 1;   /* + a NUL, so stored strings are C strings too */
    return b;
}

size_t braid__ts_accounted(const braid_field *f, size_t n) {
    return n * sizeof(braid_field) + braid__ts_data_bytes(f, n) + 64;
}

void braid__ts_copy_fields(braid_field *dst, const braid_field *src, size_t n, char **data) {
    char *d = *data;
    for (size_t i = 0; i < n; i++) {
        dst[i] = src[i];
        if (is_blob(src[i].type) &&
            (src[i].match == BRAID_FIELD_ACTUAL || src[i].match == BRAID_FIELD_PREFIX)) {
            if (src[i].len) memcpy(d, src[i].v.p, src[i].len);
            d[src[i].len] = '\0';
            dst[i].v.p = d;
            d += (size_t)src[i].len + 1;
        }
    }
    *data = d;
}

ts_entry *braid__ts_entry_new(const braid_field *f, size_t n) {
    size_t data = braid__ts_data_bytes(f, n);
    ts_entry *e = braid_malloc(sizeof *e + n * sizeof(braid_field) + data);
    if (!e) return NULL;
    memset(e, 0, sizeof *e);
    e->heap_index = UINT32_MAX;
    e->t.n = (uint32_t)n;
    char *d = (char *)&e->t.f[n];
    braid__ts_copy_fields(e->t.f, f, n, &d);
    return e;
}

void braid_tuple_free(braid_tuple *t) {
    if (t) braid_free(braid__ts_entry_of(t));
}

void braid_tuple_free_value(void *t) { braid_tuple_free(t); }

braid_tuple *braid_tuple_copy(const braid_tuple *t) {
    ts_entry *e = braid__ts_entry_new(t->f, t->n);
    if (!e) return NULL;
    e->t.priority = t->priority;
    e->t.deliveries = t->deliveries;
    e->t.lease = t->lease;
    return &e->t;
}

void braid_tuple_list_free(braid_tuple_list *l) {
    if (!l) return;
    for (size_t i = 0; i < l->n; i++) braid_tuple_free(l->t[i]);
    braid_free(l);
}

void braid_tuple_list_free_value(void *l) { braid_tuple_list_free(l); }

bool braid__ts_field_matches(const braid_field *tf, const braid_field *v) {
    if (tf->type != v->type) return false;
    switch (tf->match) {
    case BRAID_FIELD_ANY: return true;
    case BRAID_FIELD_ACTUAL:
        switch (tf->type) {
        case BRAID_FIELD_INT: return tf->v.i == v->v.i;
        case BRAID_FIELD_DOUBLE: return tf->v.d == v->v.d;      /* NaN matches nothing */
        case BRAID_FIELD_BOOL: return tf->v.b == v->v.b;
        default:
            return tf->len == v->len && (!tf->len || !memcmp(tf->v.p, v->v.p, tf->len));
        }
    case BRAID_FIELD_RANGE:
        if (tf->type == BRAID_FIELD_INT) return tf->v.i <= v->v.i && v->v.i <= tf->hi.i;
        return tf->v.d <= v->v.d && v->v.d <= tf->hi.d;
    case BRAID_FIELD_PREFIX:
        return tf->len <= v->len && (!tf->len || !memcmp(tf->v.p, v->v.p, tf->len));
    default: return false;
    }
}

bool braid__ts_matches(const braid_field *tmpl, size_t n, const braid_tuple *t) {
    if (t->n != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!braid__ts_field_matches(&tmpl[i], &t->f[i])) return false;
    return true;
}

bool braid_tuple_matches(const braid_tuple *t, const braid_field *tmpl, size_t n) {
    return braid__ts_check(tmpl, n, true) == 0 && braid__ts_matches(tmpl, n, t);
}

static inline uint64_t mix64(uint64_t x) {   /* splitmix64's finaliser */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27; x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* The key's double, with -0.0 folded into 0.0 (they compare equal). */
static uint64_t double_bits(double d) {
    if (d == 0) d = 0;
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

uint64_t braid__ts_key_hash(uint32_t arity, const braid_field *f0) {
    uint64_t h = mix64(((uint64_t)arity << 8) | f0->type);
    switch (f0->type) {
    case BRAID_FIELD_INT: return mix64(h ^ (uint64_t)f0->v.i);
    case BRAID_FIELD_DOUBLE: return mix64(h ^ double_bits(f0->v.d));
    case BRAID_FIELD_BOOL: return mix64(h ^ (uint64_t)f0->v.b);
    default: {
        const unsigned char *p = f0->v.p;
        uint64_t x = 14695981039346656037ull ^ h;      /* FNV-1a */
        for (uint32_t i = 0; i < f0->len; i++) x = (x ^ p[i]) * 1099511628211ull;
        return mix64(x);
    }
    }
}

/* Keys compare by bits for doubles, so a NaN key finds its own bucket (the
 * match itself still refuses NaN). */
bool braid__ts_key_eq(const braid_field *a, const braid_field *b) {
    if (a->type != b->type) return false;
    switch (a->type) {
    case BRAID_FIELD_INT: return a->v.i == b->v.i;
    case BRAID_FIELD_DOUBLE: return double_bits(a->v.d) == double_bits(b->v.d);
    case BRAID_FIELD_BOOL: return a->v.b == b->v.b;
    default: return a->len == b->len && (!a->len || !memcmp(a->v.p, b->v.p, a->len));
    }
}

/* ---- a chained hash table of intrusive nodes -------------------------------------- */
int braid__ts_htab_init(ts_htab *h, size_t slots) {
    h->slots = braid_calloc(slots, sizeof *h->slots);
    if (!h->slots) return BRAID_ENOMEM;
    h->mask = slots - 1;
    h->count = 0;
    return 0;
}

/* Never fails: a table that cannot grow only gets longer chains. */
void braid__ts_htab_insert(ts_htab *h, ts_hnode *n) {
    if (h->count >= 2 * (h->mask + 1)) {
        size_t ns = 2 * (h->mask + 1);
        ts_hnode **s = braid_calloc(ns, sizeof *s);
        if (s) {
            for (size_t i = 0; i <= h->mask; i++) {
                for (ts_hnode *x = h->slots[i], *nx; x; x = nx) {
                    nx = x->next;
                    x->next = s[x->hash & (ns - 1)];
                    s[x->hash & (ns - 1)] = x;
                }
            }
            braid_free(h->slots);
            h->slots = s;
            h->mask = ns - 1;
        }
    }
    ts_hnode **slot = &h->slots[n->hash & h->mask];
    n->next = *slot;
    *slot = n;
    h->count++;
}

void braid__ts_htab_remove(ts_htab *h, ts_hnode *n) {
    ts_hnode **p = &h->slots[n->hash & h->mask];
    while (*p != n) p = &(*p)->next;
    *p = n->next;
    h->count--;
}

/* ---- formatting ---------------------------------------------------------------- */
typedef struct fmt_out { char *buf; size_t size, len; } fmt_out;

static void put(fmt_out *o, const char *fmt, ...) BRAID_PRINTF(2, 3);
static void put(fmt_out *o, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    char *at = o->len < o->size ? o->buf + o->len : NULL;
    int k = vsnprintf(at, at ? o->size - o->len : 0, fmt, ap);
    va_end(ap);
    if (k > 0) o->len += (size_t)k;
}

static void put_blob(fmt_out *o, const braid_field *f) {
    const unsigned char *p = f->v.p;
    put(o, "%s\"", f->type == BRAID_FIELD_BYTES ? "b" : "");
    for (uint32_t i = 0; i < f->len; i++) {
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\') put(o, "%c", p[i]);
        else put(o, "\\x%02x", p[i]);
    }
    put(o, "\"");
}

static const char *const type_names[] = { "?", "int", "double", "string", "bytes", "bool" };

size_t braid_fields_format(const braid_field *f, size_t n, char *buf, size_t size) {
    fmt_out o = { buf, size, 0 };
    if (size) buf[0] = '\0';
    put(&o, "(");
    for (size_t i = 0; i < n; i++) {
        const braid_field *x = &f[i];
        const char *tn = x->type <= BRAID_FIELD_BOOL ? type_names[x->type] : "?";
        if (i) put(&o, ", ");
        switch (x->match) {
        case BRAID_FIELD_ANY: put(&o, "?%s", tn); continue;
        case BRAID_FIELD_RANGE:
            if (x->type == BRAID_FIELD_INT)
                put(&o, "?int[%lld..%lld]", (long long)x->v.i, (long long)x->hi.i);
            else
                put(&o, "?double[%g..%g]", x->v.d, x->hi.d);
            continue;
        case BRAID_FIELD_PREFIX: put(&o, "?%s^", tn); put_blob(&o, x); continue;
        default: break;
        }
        switch (x->type) {
        case BRAID_FIELD_INT: put(&o, "%lld", (long long)x->v.i); break;
        case BRAID_FIELD_DOUBLE:
            if (isnan(x->v.d)) put(&o, "nan");
            else put(&o, "%.17g", x->v.d);
            break;
        case BRAID_FIELD_BOOL: put(&o, "%s", x->v.b ? "true" : "false"); break;
        case BRAID_FIELD_STRING:
        case BRAID_FIELD_BYTES: put_blob(&o, x); break;
        default: put(&o, "?"); break;
        }
    }
    put(&o, ")");
    return o.len;
}
