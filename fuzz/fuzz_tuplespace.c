/* libFuzzer target: the tuple space's wire decoder (what a server reads
 * from a client and a client from a server). Any input either decodes or
 * is refused with BRAID_ETUPLE_PROTO / BRAID_ETUPLE_VERSION; what decodes
 * is encoded again and must decode to the same message (a round trip), and
 * a reply's tuples are read as the client reads them. ASan/UBSan catch
 * reads past the frame. */
// fuzz-sources: src/tuplespace/wire.c src/tuplespace/tuple.c src/base/*.c
#include "tuplespace/tuplespace_internal.h"
#include <stdlib.h>

static void same(const ts_msg *a, const ts_msg *b) {
    if (a->op != b->op || a->id != b->id || a->n != b->n || a->a != b->a || a->b != b->b ||
        a->priority != b->priority)
        abort();
    char x[4096], y[4096];
    size_t lx = braid_fields_format(a->f, a->n, x, sizeof x);
    size_t ly = braid_fields_format(b->f, b->n, y, sizeof y);
    if (lx != ly || strcmp(x, y)) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static braid_field f[BRAID_TUPLE_MAX_FIELDS], g[BRAID_TUPLE_MAX_FIELDS];
    ts_msg m, m2;
    int rc = braid__ts_wire_decode(data, size, f, &m);
    if (rc < 0) {
        if (rc != BRAID_ETUPLE_PROTO && rc != BRAID_ETUPLE_VERSION) abort();
        return 0;
    }
    if (m.op == TS_OP_REPLY) {
        const uint8_t *p = m.rest;
        size_t len = m.rest_len;
        for (uint32_t i = 0; i < m.ntuples && i < 1024; i++) {
            braid_tuple *t = NULL;
            if (braid__ts_wire_tuple(&p, &len, &t) < 0) break;
            if (len > m.rest_len) abort();
            /* a decoded tuple is a valid tuple, and matches itself */
            if (braid__ts_check(t->f, t->n, false) < 0) abort();
            bool nan = false;               /* a NaN matches nothing, not even itself */
            for (uint32_t k = 0; k < t->n; k++)
                if (t->f[k].type == BRAID_FIELD_DOUBLE && t->f[k].v.d != t->f[k].v.d) nan = true;
            if (!nan && !braid__ts_matches(t->f, t->n, t)) abort();
            braid_tuple_free(t);
        }
        return 0;
    }
    /* encode it again */
    ts_buf b = { 0 };
    size_t at = braid__ts_wire_begin(&b, m.op, m.id);
    switch (m.op) {
    case TS_OP_OUT: braid__ts_put_u32(&b, (uint32_t)m.priority); braid__ts_put_fields(&b, m.f, m.n); break;
    case TS_OP_IN: case TS_OP_RD: case TS_OP_IN_ALL: case TS_OP_RD_ALL:
        braid__ts_put_u64(&b, m.a); braid__ts_put_fields(&b, m.f, m.n); break;
    case TS_OP_IN_LEASE:
        braid__ts_put_u64(&b, m.a); braid__ts_put_u64(&b, m.b); braid__ts_put_fields(&b, m.f, m.n); break;
    case TS_OP_ACK: braid__ts_put_u64(&b, m.a); break;
    case TS_OP_NACK: case TS_OP_RENEW: braid__ts_put_u64(&b, m.a); braid__ts_put_u64(&b, m.b); break;
    default: break;
    }
    braid__ts_wire_end(&b, at);
    if (b.failed) abort();
    if (b.len - 4 != size) abort();                       /* the encoding is canonical */
    if (braid__ts_wire_decode(b.p + 4, b.len - 4, g, &m2) < 0) abort();
    same(&m, &m2);
    braid__ts_buf_free(&b);
    return 0;
}
