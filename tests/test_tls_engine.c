/* The TLS engine alone: two engines joined by a byte shuttle, no I/O. */
// ctest-labels: tls
#include "harness.h"
#include "support/tls.h"
#include "support/walk.h"
#include <braid/tls.h>
#include <openssl/ssl.h>

/* One side of a connection: what it received, and how it ended. */
typedef struct side {
    braid_tls_engine *e;
    char got[70000];
    size_t ngot;
    int done;         /* handshake_done calls */
    int rc;           /* last nonzero feed result */
    const char *name;
} side;

static void on_plain(void *arg, const void *buf, size_t len) {
    side *s = arg;
    BT_ULE(s->ngot + len, sizeof s->got);
    memcpy(s->got + s->ngot, buf, len);
    s->ngot += len;
}
static void on_done(void *arg, const braid_tls_info *info) {
    side *s = arg;
    BT_TRUE(info != NULL);
    s->done++;
}
static const braid_tls_engine_ops side_ops = { .plaintext = on_plain, .handshake_done = on_done };

/* Move ciphertext from a to b; returns bytes moved. */
static size_t move(side *a, side *b) {
    size_t len, total = 0;
    const void *p;
    while (!b->rc && (p = braid_tls_engine_out(a->e, &len))) {
        int rc = braid_tls_engine_feed(b->e, p, len);
        braid_tls_engine_consume(a->e, len);
        total += len;
        if (rc) b->rc = rc;
    }
    return total;
}

/* Shuttle both ways until nothing moves. */
static void shuttle(side *c, side *s) {
    for (int i = 0; i < 100; i++)
        if (!move(c, s) + !move(s, c) == 2) return;
    bt_fail(__FILE__, __LINE__, "shuttle did not settle");
}

static void connect_pair(side *c, side *s, braid_tls_ctx *cc, braid_tls_ctx *sc, const char *host) {
    memset(c, 0, sizeof *c);
    memset(s, 0, sizeof *s);
    c->name = "client";
    s->name = "server";
    BT_OK(braid_tls_engine_new(sc, NULL, &side_ops, s, &s->e));
    BT_OK(braid_tls_engine_new(cc, host, &side_ops, c, &c->e));
    shuttle(c, s);
}

static void close_pair(side *c, side *s) {
    braid_tls_engine_free(c->e);
    braid_tls_engine_free(s->e);
}

BT_TEST(handshake_data_close_notify) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.done, 1);
    BT_EQ(s.done, 1);
    BT_EQ(c.rc, 0);
    BT_EQ(s.rc, 0);
    const braid_tls_info *ci = braid_tls_engine_info(c.e), *si = braid_tls_engine_info(s.e);
    BT_STREQ(ci->version, "TLSv1.3");
    BT_STREQ(si->version, "TLSv1.3");
    BT_STREQ(ci->cipher, si->cipher);
    BT_STREQ(ci->alpn, "");
    BT_STREQ(si->server_name, "localhost");
    BT_TRUE(ci->peer_cert != NULL);
    BT_TRUE(strstr(ci->peer_subject, "CN=localhost") != NULL);
    BT_TRUE(si->peer_cert == NULL);
    BT_FALSE(ci->session_reused);

    BT_OK(braid_tls_engine_write(c.e, "ping", 4));
    BT_OK(braid_tls_engine_flush(c.e));
    BT_OK(braid_tls_engine_write(s.e, "pong", 4));
    BT_OK(braid_tls_engine_flush(s.e));
    shuttle(&c, &s);
    BT_EQ(s.ngot, 4);
    BT_TRUE(!memcmp(s.got, "ping", 4));
    BT_EQ(c.ngot, 4);
    BT_TRUE(!memcmp(c.got, "pong", 4));

    /* A big write arrives whole and in order. */
    static char big[65536];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i * 7);
    s.ngot = 0;
    BT_OK(braid_tls_engine_write(c.e, big, sizeof big));
    BT_OK(braid_tls_engine_flush(c.e));
    shuttle(&c, &s);
    BT_EQ(s.ngot, sizeof big);
    BT_TRUE(!memcmp(s.got, big, sizeof big));

    /* close_notify: the client closes, the server sees a clean end and
     * answers with its own close_notify. */
    BT_OK(braid_tls_engine_shutdown(c.e));
    BT_ERR(braid_tls_engine_write(c.e, "x", 1), BRAID_EPIPE);
    shuttle(&c, &s);
    BT_ERR(s.rc, BRAID_ECONNECTION_DONE);
    BT_ERR(c.rc, BRAID_ECONNECTION_DONE);
    BT_ERR(braid_tls_engine_feed_eof(s.e), BRAID_ECONNECTION_DONE);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(rsa_tls12) {
    btc_world rw;
    btc_world_make(&rw, BTC_RSA);
    braid_tls_options so = { .max_version = BRAID_TLS_V1_2 };
    braid_tls_ctx *sc = bt_tls_server_ctx(&rw.server, &so);
    braid_tls_options co = { .ca_pem = rw.ca.cert_pem };
    braid_tls_ctx *cc = bt_tls_client_ctx(&co);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_EQ(c.done, 1);
    BT_EQ(s.done, 1);
    BT_STREQ(braid_tls_engine_info(c.e)->version, "TLSv1.2");
    BT_TRUE(strstr(braid_tls_engine_info(c.e)->cipher, "ECDHE-RSA") != NULL);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
    btc_world_free(&rw);
}

/* Each verification failure has its own code on the client, and the server
 * learns from the client's alert that it was rejected. */
static void expect_reject(const btc_cert *cert, const char *host, int want, const char *detail_has) {
    braid_tls_ctx *sc = bt_tls_server_ctx(cert, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, host);
    BT_ERR(c.rc, want);
    const char *detail;
    BT_ERR(braid_tls_engine_error(c.e, &detail), want);
    if (!strstr(detail, detail_has)) bt_fail(__FILE__, __LINE__, "detail \"%s\" lacks \"%s\"", detail, detail_has);
    BT_ERR(s.rc, BRAID_ETLS_ALERT);
    BT_EQ(c.done, 0);
    BT_EQ(s.done, 0);
    /* A failed engine keeps failing with the same code. */
    BT_ERR(braid_tls_engine_feed(c.e, "x", 1), want);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(verify_wrong_host) {
    expect_reject(&bt_tls_world()->server, "example.com", BRAID_ETLS_HOSTNAME, "does not match \"example.com\" (");
}
BT_TEST(verify_expired) { expect_reject(&bt_tls_world()->expired, "localhost", BRAID_ETLS_EXPIRED, "expired"); }
BT_TEST(verify_unknown_ca) { expect_reject(&bt_tls_world()->rogue, "localhost", BRAID_ETLS_UNKNOWN_CA, "trusted CA"); }

BT_TEST(verify_ip_address) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "127.0.0.1");
    BT_EQ(c.rc, 0);
    BT_EQ(c.done, 1);
    close_pair(&c, &s);
    /* A mismatch names the address that was checked, as users write it. */
    static const struct { const char *host, *says; } bad[] = {
        { "127.0.0.2", "does not match IP address 127.0.0.2 (" },
        { "::1", "does not match IP address ::1 (" },
        { "2001:db8::17", "does not match IP address 2001:db8::17 (" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        connect_pair(&c, &s, cc, sc, bad[i].host);
        BT_ERR(c.rc, BRAID_ETLS_HOSTNAME);
        const char *detail;
        BT_ERR(braid_tls_engine_error(c.e, &detail), BRAID_ETLS_HOSTNAME);
        if (!strstr(detail, bad[i].says)) bt_fail(__FILE__, __LINE__, "detail \"%s\" lacks \"%s\"", detail, bad[i].says);
        close_pair(&c, &s);
    }
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(client_needs_host_name) {
    braid_tls_ctx *cc = bt_tls_client_ctx(NULL);
    braid_tls_engine *e;
    BT_ERR(braid_tls_engine_new(cc, NULL, &side_ops, NULL, &e), BRAID_EINVAL);
    braid_tls_ctx_unref(cc);
}

BT_TEST(alpn) {
    braid_tls_options so = { .alpn = "h2,http/1.1" };
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, &so);
    braid_tls_options co = { .alpn = "http/1.1,h2" };
    braid_tls_ctx *cc = bt_tls_client_ctx(&co);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    /* The server's preference wins. */
    BT_STREQ(braid_tls_engine_info(c.e)->alpn, "h2");
    BT_STREQ(braid_tls_engine_info(s.e)->alpn, "h2");
    close_pair(&c, &s);
    braid_tls_ctx_unref(cc);
    braid_tls_options co2 = { .alpn = "http/1.1" };
    cc = bt_tls_client_ctx(&co2);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_STREQ(braid_tls_engine_info(c.e)->alpn, "http/1.1");
    close_pair(&c, &s);
    braid_tls_ctx_unref(cc);
    braid_tls_options co3 = { .alpn = "spdy/3" };
    cc = bt_tls_client_ctx(&co3);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_STREQ(braid_tls_engine_info(c.e)->alpn, "");   /* no overlap: none */
    close_pair(&c, &s);
    braid_tls_ctx_unref(cc);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx *bad;
    braid_tls_options bo = { .alpn = "h2,,x" };
    char err[256];
    BT_ERR(braid_tls_ctx_new(BRAID_TLS_CLIENT, &bo, err, sizeof err, &bad), BRAID_EINVAL);
}

BT_TEST(sni_picks_certificate) {
    btc_cert other, wild;
    btc_make(&other, BTC_EC, "other.test", "DNS:other.test", &bt_tls_world()->ca, -3600, 86400);
    btc_make(&wild, BTC_EC, "*.wild.test", "DNS:*.wild.test", &bt_tls_world()->ca, -3600, 86400);
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    braid_tls_options oo = { .cert_pem = other.cert_pem, .key_pem = other.key_pem };
    braid_tls_options wo = { .cert_pem = wild.cert_pem, .key_pem = wild.key_pem };
    char err[256];
    BT_OK(braid_tls_ctx_add_sni(sc, "other.test", &oo, err, sizeof err));
    BT_OK(braid_tls_ctx_add_sni(sc, "*.wild.test", &wo, err, sizeof err));
    side c, s;
    connect_pair(&c, &s, cc, sc, "other.test");
    BT_EQ(c.rc, 0);
    BT_TRUE(strstr(braid_tls_engine_info(c.e)->peer_subject, "CN=other.test") != NULL);
    BT_STREQ(braid_tls_engine_info(s.e)->server_name, "other.test");
    close_pair(&c, &s);
    connect_pair(&c, &s, cc, sc, "a.wild.test");
    BT_EQ(c.rc, 0);
    BT_TRUE(strstr(braid_tls_engine_info(c.e)->peer_subject, "CN=*.wild.test") != NULL);
    close_pair(&c, &s);
    connect_pair(&c, &s, cc, sc, "localhost");   /* default certificate */
    BT_EQ(c.rc, 0);
    BT_TRUE(strstr(braid_tls_engine_info(c.e)->peer_subject, "CN=localhost") != NULL);
    close_pair(&c, &s);
    BT_ERR(braid_tls_ctx_add_sni(cc, "x", &oo, err, sizeof err), BRAID_EINVAL);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
    btc_free(&other);
    btc_free(&wild);
}

static void resumption(int version) {
    braid_tls_options so = { .max_version = version };
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, &so), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_FALSE(braid_tls_engine_info(c.e)->session_reused);
    close_pair(&c, &s);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_TRUE(braid_tls_engine_info(c.e)->session_reused);
    BT_TRUE(braid_tls_engine_info(s.e)->session_reused);
    /* Data still flows on a resumed session. */
    BT_OK(braid_tls_engine_write(c.e, "again", 5));
    BT_OK(braid_tls_engine_flush(c.e));
    shuttle(&c, &s);
    BT_EQ(s.ngot, 5);
    close_pair(&c, &s);
    /* Another name has no session; a flushed cache neither. */
    braid_tls_ctx_flush_sessions(cc);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_FALSE(braid_tls_engine_info(c.e)->session_reused);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}
BT_TEST(resumption_tls13) { resumption(0); }
BT_TEST(resumption_tls12) { resumption(BRAID_TLS_V1_2); }

BT_TEST(client_certificates) {
    braid_tls_options req = { .verify = BRAID_TLS_VERIFY_REQUIRED, .ca_pem = bt_tls_world()->ca.cert_pem };
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, &req), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_ERR(s.rc, BRAID_ETLS_NO_CERT);
    BT_EQ(s.done, 0);
    close_pair(&c, &s);
    braid_tls_options withcert = { .cert_pem = bt_tls_world()->client.cert_pem, .key_pem = bt_tls_world()->client.key_pem };
    braid_tls_ctx *cc2 = bt_tls_client_ctx(&withcert);
    connect_pair(&c, &s, cc2, sc, "localhost");
    BT_EQ(s.rc, 0);
    BT_EQ(s.done, 1);
    BT_TRUE(strstr(braid_tls_engine_info(s.e)->peer_subject, "CN=braid test client") != NULL);
    close_pair(&c, &s);
    /* A client certificate from an unknown CA is rejected by the server. */
    braid_tls_options roguecert = { .cert_pem = bt_tls_world()->rogue.cert_pem, .key_pem = bt_tls_world()->rogue.key_pem };
    braid_tls_ctx *cc3 = bt_tls_client_ctx(&roguecert);
    connect_pair(&c, &s, cc3, sc, "localhost");
    BT_ERR(s.rc, BRAID_ETLS_UNKNOWN_CA);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    /* Optional: no certificate is fine, one is still verified and reported. */
    braid_tls_options opt = { .verify = BRAID_TLS_VERIFY_OPTIONAL, .ca_pem = bt_tls_world()->ca.cert_pem };
    sc = bt_tls_server_ctx(NULL, &opt);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(s.rc, 0);
    BT_EQ(s.done, 1);
    BT_TRUE(braid_tls_engine_info(s.e)->peer_cert == NULL);
    close_pair(&c, &s);
    connect_pair(&c, &s, cc2, sc, "localhost");
    BT_EQ(s.done, 1);
    BT_TRUE(braid_tls_engine_info(s.e)->peer_cert != NULL);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
    braid_tls_ctx_unref(cc2);
    braid_tls_ctx_unref(cc3);
}

BT_TEST(garbage_fails_that_engine_only) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    braid_tls_engine *bad;
    BT_OK(braid_tls_engine_new(sc, NULL, &side_ops, NULL, &bad));
    const char junk[] = "GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    BT_ERR(braid_tls_engine_feed(bad, junk, sizeof junk - 1), BRAID_ETLS);
    const char *detail;
    braid_tls_engine_error(bad, &detail);
    BT_TRUE(detail[0] != 0);
    braid_tls_engine_free(bad);
    /* Random bytes after a valid handshake fail that connection too. */
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    unsigned char rnd[300];
    for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (unsigned char)(i * 131 + 7);
    rnd[0] = 23; rnd[1] = 3; rnd[2] = 3; rnd[3] = 1; rnd[4] = 0;   /* an app-data record header */
    BT_ERR(braid_tls_engine_feed(s.e, rnd, sizeof rnd), BRAID_ETLS);
    close_pair(&c, &s);
    /* The context keeps serving. */
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_EQ(s.done, 1);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(truncation) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c = { 0 }, s = { 0 };
    BT_OK(braid_tls_engine_new(sc, NULL, &side_ops, &s, &s.e));
    BT_OK(braid_tls_engine_new(cc, "localhost", &side_ops, &c, &c.e));
    size_t len;
    const void *hello = braid_tls_engine_out(c.e, &len);
    BT_GT(len, 20);
    BT_OK(braid_tls_engine_feed(s.e, hello, len / 2));   /* half a ClientHello: waits */
    BT_ERR(braid_tls_engine_feed_eof(s.e), BRAID_ETLS_TRUNCATED);
    const char *detail;
    braid_tls_engine_error(s.e, &detail);
    BT_TRUE(strstr(detail, "during the handshake") != NULL);
    close_pair(&c, &s);
    /* After the handshake, EOF without close_notify is truncation too. */
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_ERR(braid_tls_engine_feed_eof(s.e), BRAID_ETLS_TRUNCATED);
    braid_tls_engine_error(s.e, &detail);
    BT_TRUE(strstr(detail, "without close_notify") != NULL);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(renegotiation_refused) {
    braid_tls_options so = { .max_version = BRAID_TLS_V1_2 };
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, &so), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    SSL *ssl = braid_tls_engine_ssl(c.e);
    SSL_clear_options(ssl, SSL_OP_NO_RENEGOTIATION);
    BT_EQ(SSL_renegotiate(ssl), 1);
    SSL_do_handshake(ssl);   /* writes a new ClientHello into the engine's output */
    move(&c, &s);
    BT_ERR(s.rc, BRAID_ETLS_RENEGOTIATION);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

/* Count TLS records of type 23 (application data) in a ciphertext run. */
static int count_records(const unsigned char *p, size_t n, int type) {
    int count = 0;
    size_t i = 0;
    while (i + 5 <= n) {
        size_t l = (size_t)p[i + 3] << 8 | p[i + 4];
        if (p[i] == type) count++;
        i += 5 + l;
    }
    BT_EQ(i, n);
    return count;
}

BT_TEST(small_writes_aggregate) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    for (int i = 0; i < 1000; i++) BT_OK(braid_tls_engine_write(c.e, "abcdefghij" + i % 10, 1));
    BT_EQ(braid_tls_engine_queued(c.e), 1000);
    BT_OK(braid_tls_engine_flush(c.e));
    BT_EQ(braid_tls_engine_queued(c.e), 0);
    size_t len;
    const unsigned char *p = braid_tls_engine_out(c.e, &len);
    BT_EQ(count_records(p, len, 23), 1);
    BT_LT(len, 1000 + 64);
    shuttle(&c, &s);
    BT_EQ(s.ngot, 1000);
    /* 40000 bytes in 1-byte writes make 3 records (16 KiB each at most). */
    for (int i = 0; i < 40000; i++) BT_OK(braid_tls_engine_write(c.e, "z", 1));
    BT_OK(braid_tls_engine_flush(c.e));
    p = braid_tls_engine_out(c.e, &len);
    BT_EQ(count_records(p, len, 23), 3);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(writes_before_handshake_wait) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c = { 0 }, s = { 0 };
    BT_OK(braid_tls_engine_new(sc, NULL, &side_ops, &s, &s.e));
    BT_OK(braid_tls_engine_new(cc, "localhost", &side_ops, &c, &c.e));
    BT_OK(braid_tls_engine_write(c.e, "early", 5));
    BT_OK(braid_tls_engine_flush(c.e));   /* nothing to seal yet */
    BT_EQ(braid_tls_engine_queued(c.e), 5);
    shuttle(&c, &s);
    BT_EQ(s.ngot, 5);
    BT_TRUE(!memcmp(s.got, "early", 5));
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(idle_engine_holds_no_buffers) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_OK(braid_tls_engine_write(c.e, "x", 1));
    BT_GT(braid_tls_engine_buffered(c.e), 0);
    BT_OK(braid_tls_engine_flush(c.e));
    shuttle(&c, &s);
    BT_EQ(braid_tls_engine_buffered(c.e), 0);
    BT_EQ(braid_tls_engine_buffered(s.e), 0);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
}

BT_TEST(context_errors_are_clear) {
    braid_tls_ctx *c;
    char err[256];
    braid_tls_options o = { .cert_file = "/nonexistent/cert.pem", .key_file = "/nonexistent/key.pem" };
    BT_ERR(braid_tls_ctx_new(BRAID_TLS_SERVER, &o, err, sizeof err, &c), BRAID_ETLS);
    BT_TRUE(strstr(err, "/nonexistent/cert.pem") != NULL);
    braid_tls_options mismatch = { .cert_pem = bt_tls_world()->server.cert_pem, .key_pem = bt_tls_world()->client.key_pem };
    BT_ERR(braid_tls_ctx_new(BRAID_TLS_SERVER, &mismatch, err, sizeof err, &c), BRAID_ETLS);
    BT_TRUE(strstr(err, "does not match") != NULL);
    braid_tls_options nokey = { .cert_pem = bt_tls_world()->server.cert_pem };
    BT_ERR(braid_tls_ctx_new(BRAID_TLS_SERVER, &nokey, err, sizeof err, &c), BRAID_EINVAL);
    braid_tls_options badciph = { .ciphers = "NOT-A-CIPHER" };
    BT_ERR(braid_tls_ctx_new(BRAID_TLS_SERVER, &badciph, err, sizeof err, &c), BRAID_EINVAL);
}

/* Allocation-failure walk over a whole handshake, data and close: every
 * failure point gives an error (or the scenario copes), nothing leaks. */
static int scenario(void *arg) {
    (void)arg;
    braid_tls_ctx *sc = NULL, *cc = NULL;
    braid_tls_engine *ce = NULL, *se = NULL;
    braid_tls_options so = { .cert_pem = bt_tls_world()->server.cert_pem, .key_pem = bt_tls_world()->server.key_pem,
                             .alpn = "h2" };
    braid_tls_options co = { .ca_pem = bt_tls_world()->ca.cert_pem, .alpn = "h2" };
    int rc = braid_tls_ctx_new(BRAID_TLS_SERVER, &so, NULL, 0, &sc);
    if (rc == 0) rc = braid_tls_ctx_new(BRAID_TLS_CLIENT, &co, NULL, 0, &cc);
    if (rc == 0) rc = braid_tls_engine_new(sc, NULL, NULL, NULL, &se);
    if (rc == 0) rc = braid_tls_engine_new(cc, "localhost", NULL, NULL, &ce);
    for (int i = 0; rc == 0 && i < 10; i++) {
        if (i == 3) {
            rc = braid_tls_engine_write(ce, "hello", 5);
            if (rc == 0) rc = braid_tls_engine_flush(ce);
        }
        if (i == 5 && rc == 0) rc = braid_tls_engine_shutdown(ce);
        size_t len;
        const void *p;
        while (rc == 0 && (p = braid_tls_engine_out(ce, &len))) {
            rc = braid_tls_engine_feed(se, p, len);
            braid_tls_engine_consume(ce, len);
        }
        while (rc == 0 && (p = braid_tls_engine_out(se, &len))) {
            rc = braid_tls_engine_feed(ce, p, len);
            braid_tls_engine_consume(se, len);
        }
    }
    braid_tls_engine_free(ce);
    braid_tls_engine_free(se);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
    return rc;
}

BT_TEST(alloc_failure_walk) {
    bt_tls_world();
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "engines", .body = scenario, .warm_up = true,
                                                 .want = BRAID_ECONNECTION_DONE, .max_runs = 1000 });
    BT_GT(r.errors, 0);
}

/* TLS 1.2 is the default floor; a server raised to 1.3 refuses a 1.2-only
 * client, and the client gets the server's protocol_version alert. */
BT_TEST(minimum_version) {
    braid_tls_ctx *sc = bt_tls_server_ctx(NULL, NULL), *cc = bt_tls_client_ctx(NULL);
    side c, s;
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(SSL_get_min_proto_version(braid_tls_engine_ssl(s.e)), TLS1_2_VERSION);
    BT_EQ(SSL_get_min_proto_version(braid_tls_engine_ssl(c.e)), TLS1_2_VERSION);
    BT_STREQ(braid_tls_engine_info(c.e)->version, "TLSv1.3");
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_options v13 = { .min_version = BRAID_TLS_V1_3 };
    braid_tls_options v12 = { .max_version = BRAID_TLS_V1_2 };
    sc = bt_tls_server_ctx(NULL, &v13);
    braid_tls_ctx *cc12 = bt_tls_client_ctx(&v12);
    connect_pair(&c, &s, cc12, sc, "localhost");
    BT_ERR(s.rc, BRAID_ETLS);
    BT_ERR(c.rc, BRAID_ETLS_ALERT);
    const char *detail;
    braid_tls_engine_error(c.e, &detail);
    BT_TRUE(strstr(detail, "protocol version") != NULL);
    BT_EQ(c.done + s.done, 0);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    braid_tls_ctx_unref(cc);
    braid_tls_ctx_unref(cc12);
}

/* A server certificate issued by an intermediate CA: the client trusts only
 * the root, so the server must send the chain — appended to the certificate
 * PEM, or as a separate chain file (extraCertChain). */
BT_TEST(certificate_chain) {
    btc_cert inter, leaf;
    btc_make_intermediate(&inter, BTC_EC, "braid test intermediate", &bt_tls_world()->ca, -3600, 86400);
    btc_make(&leaf, BTC_EC, "localhost", "DNS:localhost", &inter, -3600, 86400);
    braid_tls_ctx *cc = bt_tls_client_ctx(NULL);
    side c, s;
    /* leaf alone: the client cannot build a path to its root */
    braid_tls_ctx *sc = bt_tls_server_ctx(&leaf, NULL);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_ERR(c.rc, BRAID_ETLS_UNKNOWN_CA);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    /* leaf + intermediate in one PEM */
    size_t ll = strlen(leaf.cert_pem), il = strlen(inter.cert_pem);
    char *both = malloc(ll + il + 1);
    memcpy(both, leaf.cert_pem, ll);
    memcpy(both + ll, inter.cert_pem, il + 1);
    btc_cert withchain = leaf;
    withchain.cert_pem = both;
    sc = bt_tls_server_ctx(&withchain, NULL);
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_EQ(c.done, 1);
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    free(both);
    /* files: certificate, key and a separate chain file */
    char dir[] = "/tmp/braid-tls-chain-XXXXXX";
    BT_TRUE(mkdtemp(dir) != NULL);
    btc_write(&leaf, dir, "leaf");
    btc_write(&inter, dir, "inter");
    char cert[600], key[600], chain[600];
    snprintf(cert, sizeof cert, "%s/leaf.crt", dir);
    snprintf(key, sizeof key, "%s/leaf.key", dir);
    snprintf(chain, sizeof chain, "%s/inter.crt", dir);
    braid_tls_options fo = { .cert_file = cert, .key_file = key, .chain_file = chain };
    char err[256];
    BT_OK(braid_tls_ctx_new(BRAID_TLS_SERVER, &fo, err, sizeof err, &sc));
    connect_pair(&c, &s, cc, sc, "localhost");
    BT_EQ(c.rc, 0);
    BT_EQ(c.done, 1);
    BT_TRUE(strstr(braid_tls_engine_info(c.e)->peer_subject, "CN=localhost") != NULL);
    STACK_OF(X509) *sent = SSL_get_peer_cert_chain(braid_tls_engine_ssl(c.e));
    BT_EQ(sk_X509_num(sent), 2);   /* leaf and intermediate */
    close_pair(&c, &s);
    braid_tls_ctx_unref(sc);
    char cmd[700];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    BT_EQ(system(cmd), 0);
    braid_tls_ctx_unref(cc);
    btc_free(&leaf);
    btc_free(&inter);
}
