/* Shared body of the framer fuzz targets: a differential check. The input
 * is fed once whole and once in chunks whose sizes come from the input's
 * first bytes; both runs must yield the same frames and the same result,
 * every frame must respect the limit, and the bytes held between feeds
 * must stay within the limit plus a header. ASan/UBSan catch the rest. */
#include <braid/framing.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct fz_rec {
    uint64_t hash;        /* FNV-1a over frame lengths and bytes */
    size_t n;
    size_t max;
} fz_rec;

static int fz_collect(void *ctx, const void *frame, size_t len) {
    fz_rec *r = ctx;
    if (len > r->max) abort();
    const unsigned char *p = frame;
    uint64_t h = r->hash ^ len;
    for (size_t i = 0; i < len; i++) h = (h ^ p[i]) * 1099511628211ull;
    r->hash = h * 1099511628211ull;
    r->n++;
    return 0;
}

typedef void (*fz_init_fn)(braid_framer *f, size_t max, fz_rec *r);

static int fz_run(fz_init_fn init, size_t header, const uint8_t *data, size_t size) {
    if (size < 2) return 0;
    size_t max = (size_t)(data[0] % 64) + 1;     /* small limits reach the error paths */
    uint8_t pattern = data[1];
    data += 2;
    size -= 2;

    braid_framer a, b;
    fz_rec ra = { 14695981039346656037ull, 0, max }, rb = ra;
    init(&a, max, &ra);
    init(&b, max, &rb);
    int rc_a = braid_framer_feed(&a, data, size);
    int rc_b = 0;
    size_t off = 0;
    unsigned step = 0;
    while (off < size && rc_b == 0) {
        size_t chunk = ((pattern >> (step++ % 8)) & 7) + 1;
        if (chunk > size - off) chunk = size - off;
        rc_b = braid_framer_feed(&b, data + off, chunk);
        if (braid_framer_pending(&b) > max + header) abort();
        off += chunk;
    }
    if (rc_a != rc_b || ra.n != rb.n || ra.hash != rb.hash) abort();
    if (rc_a == 0 && braid_framer_pending(&a) != braid_framer_pending(&b)) abort();
    braid_framer_close(&a);
    braid_framer_close(&b);
    return 0;
}
