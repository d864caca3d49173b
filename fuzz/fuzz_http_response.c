// fuzz-sources: src/http/parser.c src/base/*.c
/* libFuzzer: response heads, with and without a HEAD request. The empty
 * input (libFuzzer runs it first) is also parsed from a NULL buffer, as the
 * HTTP client does before any byte has arrived. */
#include <braid/http.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    braid_http_message m, m2;
    braid_http_header h[32], h2[32];
    const char *buf = size ? (const char *)data : NULL;
    for (int head = 0; head < 2; head++) {
        int rc = braid_http_parse_response(&m, h, 32, buf, size, 0, head, NULL);
        if (rc > 0) {
            if ((size_t)rc > size) abort();
            if (m.status < 100 || m.status > 999) abort();
            for (size_t i = 0; i < m.num_headers; i++)
                if (h[i].name < buf || h[i].value + h[i].value_len > buf + rc) abort();
            if (head && m.body != BRAID_HTTP_BODY_NONE) abort();
        }
        int rp = braid_http_parse_response(&m2, h2, 32, buf, size / 2, 0, head, NULL);
        if (rp > 0 && rp != rc) abort();
        if (rp < 0 && rp != BRAID_EHTTP_INCOMPLETE && rp != rc) abort();
    }
    return 0;
}
