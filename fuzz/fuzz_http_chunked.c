// fuzz-sources: src/http/parser.c src/base/*.c
/* libFuzzer: the in-place chunked decoder. The input is decoded whole and
 * again split at a point taken from its first byte; both must give the same
 * verdict, the same consumed length and the same payload. */
#include <braid/http.h>
#include <stdlib.h>
#include <string.h>

static ssize_t decode(const uint8_t *data, size_t size, size_t split, char *payload, size_t *plen) {
    braid_http_chunked d;
    braid_http_chunked_init(&d, 1u << 16);
    char *copy = malloc(size ? size : 1);
    memcpy(copy, data, size);
    *plen = 0;
    size_t off = 0;
    ssize_t rc = BRAID_EHTTP_INCOMPLETE;
    while (off < size) {
        size_t n = split && size - off > split ? split : size - off;
        size_t out = 0;
        rc = braid_http_chunked_decode(&d, copy + off, n, &out);
        if (out > n) abort();
        memcpy(payload + *plen, copy + off, out);
        *plen += out;
        if (rc >= 0) { rc += (ssize_t)off; break; }
        if (rc != BRAID_EHTTP_INCOMPLETE) break;
        off += n;
    }
    free(copy);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size == 0) return 0;
    size_t split = data[0] % 17;
    data++, size--;
    char *p1 = malloc(size + 1), *p2 = malloc(size + 1);
    size_t n1, n2;
    ssize_t a = decode(data, size, 0, p1, &n1);
    ssize_t b = decode(data, size, split, p2, &n2);
    if (a != b || n1 != n2 || memcmp(p1, p2, n1)) abort();
    if (a >= 0 && (size_t)a > size) abort();
    free(p1);
    free(p2);
    return 0;
}
