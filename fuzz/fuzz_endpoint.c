// fuzz-sources: src/base/*.c src/poll/*.c src/loop/*.c src/deferred/*.c src/pool/*.c src/fiber/*.c src/fiber/*.S src/net/*.c src/endpoint/*.c src/tls/ctx.c src/tls/engine.c src/tls/tls.c
// fuzz-libs: -lssl -lcrypto -lpthread
/* libFuzzer: endpoint descriptions, as a configuration file or a command
 * line hands them over: braid_endpoint_parse_server/client (the stream
 * module's "tcp:", "tcp6:", "unix:" grammar) and the TLS wrapper's split of
 * "ssl:"/"tls:" strings into its own fields and a "tcp:" remainder (the
 * static split() of src/tls/endpoint_tls.c, included here), which is then
 * parsed as braid_endpoint_listen/braid_endpoint_connect do for ssl:/tls:. No file is read and no
 * socket made: contexts are never built.
 *
 * The input is the description (cut at the first NUL); the error buffer's
 * size comes from its length, so short and NULL buffers are exercised.
 * Invariants beyond "no crash, no over-read": the result is 0 or
 * BRAID_EBAD_ENDPOINT; on success the kind is known, the port in range and
 * every string field NUL-terminated inside its array; on failure the
 * message is NUL-terminated inside the buffer and names the endpoint; the
 * same string parses the same way twice. */
#include "../src/tls/endpoint_tls.c"
#include <stdlib.h>
#include <string.h>

static void check_ep(const braid_endpoint *ep, bool server) {
    if (ep->kind != BRAID_ENDPOINT_TCP && ep->kind != BRAID_ENDPOINT_TCP6 && ep->kind != BRAID_ENDPOINT_UNIX)
        abort();
    if (ep->server != server) abort();
    if (ep->port < 0 || ep->port > 65535 || ep->bind_port < 0 || ep->bind_port > 65535) abort();
    if (!memchr(ep->host, 0, sizeof ep->host) || !memchr(ep->path, 0, sizeof ep->path) ||
        !memchr(ep->bind_host, 0, sizeof ep->bind_host))
        abort();
    if (ep->backlog < 0) abort();
}

static void check_err(int rc, const char *err, size_t errlen) {
    if (rc != BRAID_EBAD_ENDPOINT) abort();
    if (errlen) {
        if (!memchr(err, 0, errlen)) abort();
        if (errlen > 10 && strncmp(err, "endpoint '", errlen - 1 < 10 ? errlen - 1 : 10)) abort();
    }
}

static void parse_both(const char *desc, size_t errlen) {
    char err[1024];
    for (int server = 0; server < 2; server++) {
        braid_endpoint a, b;
        memset(err, 0x55, sizeof err);
        int rc = server ? braid_endpoint_parse_server(desc, &a, errlen ? err : NULL, errlen)
                        : braid_endpoint_parse_client(desc, &a, errlen ? err : NULL, errlen);
        if (rc == 0) check_ep(&a, server);
        else check_err(rc, err, errlen);
        int rc2 = server ? braid_endpoint_parse_server(desc, &b, NULL, 0)
                         : braid_endpoint_parse_client(desc, &b, NULL, 0);
        if (rc2 != rc || (rc == 0 && memcmp(&a, &b, sizeof a))) abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *desc = malloc(size + 1);   /* exact size: ASan sees any over-read */
    if (!desc) return 0;
    memcpy(desc, data, size);
    desc[size] = 0;
    size_t errlen = size % 7 == 0 ? 0 : size % 7 == 1 ? 1 : size % 7 == 2 ? 16 : 1024;

    parse_both(desc, errlen);

    /* The TLS grammar: split off the TLS fields, parse the rest as tcp:. */
    static tls_desc td;   /* 7 KiB: not on the stack */
    for (int server = 0; server < 2; server++) {
        char err[768];
        memset(err, 0x55, sizeof err);
        int rc = split(desc, server, &td, err, sizeof err);
        if (rc == 0) {
            if (!memchr(td.tcp, 0, sizeof td.tcp) || strncmp(td.tcp, "tcp", 3)) abort();
            for (int k = 0; k < K_COUNT; k++)
                if (!memchr(td.vals[k], 0, FIELD_LEN) || (td.have[k] && !td.vals[k][0])) abort();
            parse_both(td.tcp, errlen);
        } else {
            check_err(rc, err, sizeof err);
        }
    }
    free(desc);
    return 0;
}
