// fuzz-sources: src/base/*.c src/context/*.c src/log/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/net/*.c src/framing/*.c src/endpoint/*.c src/process/*.c
// fuzz-libs: -lpthread
/* libFuzzer: braid_box_decode, the decoder of the typed key/value boxes a
 * worker pool's calls and replies carry (another process wrote them).
 * Invariants beyond "no crash, no ASan report": a decoded box encodes back
 * to the very input (the encoding is canonical), every getter stays inside
 * the box, text values are NUL-free and end with a NUL, a list's items
 * lie inside its value, nested boxes decode (they were checked with the
 * outer one) and a time's offset is within a day. */
#include <braid/process.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    braid_box *b;
    int rc = braid_box_decode(data, size, &b);
    if (rc == BRAID_EBOX) return 0;
    if (rc < 0) abort();
    size_t n = braid_box_encoded_size(b);
    if (n != size) abort();
    unsigned char *out = malloc(n);
    size_t len;
    if (!out || braid_box_encode(b, out, n, &len) < 0 || len != size || memcmp(out, data, size)) abort();
    free(out);
    for (size_t i = 0; i < braid_box_count(b); i++) {
        const char *key = braid_box_key(b, i);
        if (!key || !*key || strlen(key) > BRAID_BOX_MAX_KEY) abort();
        const void *p;
        size_t l;
        switch (braid_box_kind(b, key)) {
        case BRAID_BOX_STR: {
            const char *s = braid_box_str(b, key);
            if (!s || braid_box_bytes(b, key, &p, &l) < 0 || strlen(s) != l) abort();
            break;
        }
        case BRAID_BOX_BYTES:
            if (braid_box_bytes(b, key, &p, &l) < 0 || ((const char *)p)[l] != 0) abort();
            break;
        case BRAID_BOX_LIST: {
            size_t items = braid_box_items(b, key), total = 0;
            for (size_t k = 0; k < items; k++) {
                if (braid_box_item(b, key, k, &p, &l) < 0) abort();
                if (l) (void)((const volatile char *)p)[l - 1];   /* inside (ASan) */
                total += l;
            }
            if (total > size) abort();
            break;
        }
        case BRAID_BOX_BOX: {   /* checked when the outer box was: it decodes */
            braid_box *in;
            if (braid_box_box(b, key, &in) < 0) abort();
            braid_box_free(in);
            break;
        }
        case BRAID_BOX_BOXES: {
            size_t items = braid_box_items(b, key);
            for (size_t k = 0; k < items; k++) {
                braid_box *in;
                if (braid_box_item_box(b, key, k, &in) < 0) abort();
                braid_box_free(in);
            }
            break;
        }
        case BRAID_BOX_TIME: {
            int tz;
            if (braid_box_time(b, key, NULL, &tz) < 0 || tz <= -1440 || tz >= 1440) abort();
            break;
        }
        case BRAID_BOX_DECIMAL:
            if (!braid_box_decimal(b, key)) abort();
            break;
        case BRAID_BOX_I64: case BRAID_BOX_U64: case BRAID_BOX_F64: case BRAID_BOX_BOOL:
            break;
        default:
            abort();
        }
    }
    braid_box_free(b);
    return 0;
}
