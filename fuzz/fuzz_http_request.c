// fuzz-sources: src/http/parser.c src/base/*.c
/* libFuzzer: request heads (and their chunked bodies). Invariants beyond "no
 * crash, no over-read" (ASan watches the exact-size input): a head length is
 * inside the input, every field points inside it, a prefix never succeeds with
 * another length nor fails with another error, and re-parsing from prev_len
 * agrees with parsing from scratch. The empty input (libFuzzer runs it
 * first) is parsed from a NULL buffer, as a connection with nothing
 * buffered would. */
#include <braid/http.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    braid_http_message m, m2;
    braid_http_header h[32], h2[32];
    braid_http_limits lim = { .max_request_line = 512, .max_head = 2048, .max_headers = 32,
                              .max_body = 4096 };
    const char *buf = size ? (const char *)data : NULL;
    int rc = braid_http_parse_request(&m, h, 32, buf, size, 0, &lim);
    if (rc > 0) {
        if ((size_t)rc > size) abort();
        if (m.method < buf || m.method + m.method_len > buf + rc) abort();
        if (m.target < buf || m.target + m.target_len > buf + rc) abort();
        for (size_t i = 0; i < m.num_headers; i++) {
            if (h[i].name < buf || h[i].name + h[i].name_len > buf + rc) abort();
            if (h[i].value < buf || h[i].value + h[i].value_len > buf + rc) abort();
            for (size_t k = 0; k < h[i].value_len; k++)
                if (h[i].value[k] == '\r' || h[i].value[k] == '\n' || h[i].value[k] == 0) abort();
        }
        if (m.body == BRAID_HTTP_BODY_CHUNKED) {
            size_t rest = size - (size_t)rc;
            char *copy = malloc(rest ? rest : 1);
            memcpy(copy, buf + rc, rest);
            braid_http_chunked d;
            braid_http_chunked_init(&d, lim.max_body);
            size_t out = 0;
            ssize_t n = braid_http_chunked_decode(&d, copy, rest, &out);
            if (out > rest || (n >= 0 && (size_t)n > rest)) abort();
            free(copy);
        }
    }
    /* Prefix consistency and the prev_len shortcut. */
    size_t half = size / 2;
    int rp = braid_http_parse_request(&m2, h2, 32, buf, half, 0, &lim);
    if (rp > 0 && rp != rc) abort();
    if (rp < 0 && rp != BRAID_EHTTP_INCOMPLETE && rp != rc) abort();
    if (rp == BRAID_EHTTP_INCOMPLETE) {
        int rr = braid_http_parse_request(&m2, h2, 32, buf, size, half, &lim);
        /* Equal, or an error deferred: with prev_len the parser waits for a
         * CR/LF (or a limit) before re-reading, so an error in bytes that end
         * no line is reported on a later call. */
        if (rr != rc && !(rr == BRAID_EHTTP_INCOMPLETE && rc < 0)) abort();
    }
    return 0;
}
