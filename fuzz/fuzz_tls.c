// fuzz-sources: src/tls/engine.c src/tls/ctx.c src/base/*.c
// fuzz-libs: -lssl -lcrypto
/* libFuzzer: network input to TLS engines. The first byte picks the victim:
 *   0  a server engine fed the input as a client's flight (ClientHello, ...);
 *   1  a client engine fed it as the server's answer to its ClientHello;
 *   2  a server engine that already got a genuine ClientHello (and answered
 *      it), then the input — the second flight, alerts, CCS, garbage;
 *   3  as 2, with a server held to TLS 1.2 that asks for a client
 *      certificate: its second flight (Certificate, ClientKeyExchange,
 *      CertificateVerify) is read in clear, so the input reaches those parsers;
 * the second byte sets the size of the pieces the rest is fed in (1..256), so
 * records split across reads are exercised. Invariants beyond "no crash":
 * a failed engine keeps failing with the same code and produces no
 * plaintext afterwards, output can always be drained, and EOF ends every
 * engine with a code (DONE, TRUNCATED or its error).
 *
 * Contexts, certificates and the genuine ClientHello are made once per
 * process (a client engine's key generation would otherwise be a fifth of
 * a mode-2 input); each input gets fresh engines. */
#include <braid/tls.h>
#include "../tests/support/tls_certs.h"
#include <stdlib.h>
#include <string.h>

static braid_tls_ctx *server, *server12, *client;
static unsigned char hello[4096];
static size_t hello_len;
static size_t plain_after_error;
static bool failed_now;

static void on_plain(void *arg, const void *buf, size_t len) {
    (void)arg;
    (void)buf;
    if (failed_now) plain_after_error += len;
}
static const braid_tls_engine_ops ops = { .plaintext = on_plain };

static void init(void) {
    static btc_cert ca, srv;
    btc_make(&ca, BTC_EC, "fuzz CA", NULL, NULL, -3600, 86400 * 365);
    btc_make(&srv, BTC_EC, "localhost", "DNS:localhost", &ca, -3600, 86400 * 365);
    braid_tls_options so = { .cert_pem = srv.cert_pem, .key_pem = srv.key_pem, .alpn = "h2,http/1.1" };
    braid_tls_options so12 = { .cert_pem = srv.cert_pem, .key_pem = srv.key_pem, .ca_pem = ca.cert_pem,
                               .verify = BRAID_TLS_VERIFY_OPTIONAL, .max_version = BRAID_TLS_V1_2 };
    braid_tls_options co = { .ca_pem = ca.cert_pem, .alpn = "h2" };
    if (braid_tls_ctx_new(BRAID_TLS_SERVER, &so, NULL, 0, &server) < 0 ||
        braid_tls_ctx_new(BRAID_TLS_SERVER, &so12, NULL, 0, &server12) < 0 ||
        braid_tls_ctx_new(BRAID_TLS_CLIENT, &co, NULL, 0, &client) < 0)
        abort();
    braid_tls_engine *c;
    if (braid_tls_engine_new(client, "localhost", NULL, NULL, &c) < 0) abort();
    const void *h = braid_tls_engine_out(c, &hello_len);
    if (!h || hello_len > sizeof hello) abort();
    memcpy(hello, h, hello_len);
    braid_tls_engine_free(c);
}

static void drain(braid_tls_engine *e) {
    size_t len;
    const void *p;
    while ((p = braid_tls_engine_out(e, &len))) {
        if (!len) abort();
        braid_tls_engine_consume(e, len);
    }
    braid_tls_engine_out(e, &len);
    if (len) abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!server) init();
    if (size < 2) return 0;
    int mode = data[0] % 4;
    size_t piece = (size_t)data[1] + 1;
    data += 2;
    size -= 2;
    braid_tls_engine *e = NULL;
    failed_now = false;
    if (mode == 1) {
        if (braid_tls_engine_new(client, "localhost", &ops, NULL, &e) < 0) abort();
        drain(e);                                   /* the ClientHello went out */
    } else {
        if (braid_tls_engine_new(mode == 3 ? server12 : server, NULL, &ops, NULL, &e) < 0) abort();
        if (mode >= 2) {
            if (braid_tls_engine_feed(e, hello, hello_len) != 0) abort();
            drain(e);
        }
    }
    int first = 0;
    for (size_t off = 0; off < size; off += piece) {
        size_t n = size - off < piece ? size - off : piece;
        int rc = braid_tls_engine_feed(e, data + off, n);
        drain(e);
        if (first < 0 && rc != first) abort();      /* failed engines stay failed, same code */
        if (rc < 0 && rc != BRAID_ECONNECTION_DONE && !first) {
            first = rc;
            failed_now = true;
        }
        if (braid_tls_engine_error(e, NULL) != (first < 0 ? first : 0) && rc != BRAID_ECONNECTION_DONE)
            abort();
    }
    if (braid_tls_engine_write(e, "x", 1) == 0) braid_tls_engine_flush(e);
    drain(e);
    int rc = braid_tls_engine_feed_eof(e);
    if (rc == 0) abort();
    if (first < 0 && rc != first) abort();
    drain(e);
    if (plain_after_error) abort();
    braid_tls_engine_free(e);
    return 0;
}
