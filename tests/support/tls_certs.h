/* Test certificates made at run time with the OpenSSL API, shared by the TLS
 * tests and bench/exp_tls.c (header-only: every function is static).
 *
 *     btc_cert ca, srv;
 *     btc_make(&ca, BTC_EC, "braid test CA", NULL, NULL, -3600, 86400);
 *     btc_make(&srv, BTC_EC, "localhost", "DNS:localhost,IP:127.0.0.1", &ca, -3600, 86400);
 *     ... srv.cert_pem, srv.key_pem, ca.cert_pem ...
 *     btc_free(&srv); btc_free(&ca);
 *
 * issuer == NULL makes a self-signed CA. Validity is given in seconds
 * relative to now (negative = in the past), so an expired certificate is
 * btc_make(..., -7200, -3600). */
#ifndef BRAID_TESTS_SUPPORT_TLS_CERTS_H
#define BRAID_TESTS_SUPPORT_TLS_CERTS_H

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { BTC_EC, BTC_RSA };

typedef struct btc_cert {
    X509 *x;
    EVP_PKEY *k;
    char *cert_pem;   /* malloc'd */
    char *key_pem;    /* malloc'd */
} btc_cert;

static char *btc__bio_str(BIO *b) {
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *s = malloc((size_t)n + 1);
    if (!s) abort();
    memcpy(s, data, (size_t)n);
    s[n] = 0;
    return s;
}

static inline __attribute__((unused)) void btc__ext(X509 *x, X509 *issuer, int nid, const char *value) {
    X509V3_CTX c;
    X509V3_set_ctx_nodb(&c);
    X509V3_set_ctx(&c, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &c, nid, value);
    if (!e || !X509_add_ext(x, e, -1)) {
        fprintf(stderr, "tls_certs: extension %d=%s failed\n", nid, value);
        abort();
    }
    X509_EXTENSION_free(e);
}

/* Make a certificate: key type BTC_EC (P-256) or BTC_RSA (2048), subject CN,
 * subjectAltName list (NULL: none; a CA gets none), signed by issuer (NULL:
 * self-signed CA), valid from now+not_before to now+not_after seconds. */
static inline __attribute__((unused)) void btc__make(btc_cert *out, int keytype, const char *cn, const char *san,
                     const btc_cert *issuer, long not_before, long not_after, int ca) {
    memset(out, 0, sizeof *out);
    EVP_PKEY *k = keytype == BTC_RSA ? EVP_RSA_gen(2048) : EVP_EC_gen("P-256");
    X509 *x = X509_new();
    if (!k || !x) abort();
    X509_set_version(x, 2);
    unsigned char serial[16];
    RAND_bytes(serial, sizeof serial);
    serial[0] &= 0x7f;
    BIGNUM *bn = BN_bin2bn(serial, sizeof serial, NULL);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(x), not_before);
    X509_gmtime_adj(X509_getm_notAfter(x), not_after);
    X509_set_pubkey(x, k);
    X509_NAME *name = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"braid tests", -1, -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509 *ix = issuer ? issuer->x : x;
    X509_set_issuer_name(x, X509_get_subject_name(ix));
    btc__ext(x, ix, NID_subject_key_identifier, "hash");
    if (issuer && ca) {              /* an intermediate CA */
        btc__ext(x, ix, NID_authority_key_identifier, "keyid:always");
        btc__ext(x, ix, NID_basic_constraints, "critical,CA:TRUE");
        btc__ext(x, ix, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else if (issuer) {
        btc__ext(x, ix, NID_authority_key_identifier, "keyid:always");
        btc__ext(x, ix, NID_basic_constraints, "critical,CA:FALSE");
        btc__ext(x, ix, NID_key_usage, keytype == BTC_RSA ? "critical,digitalSignature,keyEncipherment"
                                                          : "critical,digitalSignature");
        btc__ext(x, ix, NID_ext_key_usage, "serverAuth,clientAuth");
        if (san) btc__ext(x, ix, NID_subject_alt_name, san);
    } else {
        btc__ext(x, ix, NID_basic_constraints, "critical,CA:TRUE");
        btc__ext(x, ix, NID_key_usage, "critical,keyCertSign,cRLSign");
    }
    if (!X509_sign(x, issuer ? issuer->k : k, EVP_sha256())) abort();
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, x);
    out->cert_pem = btc__bio_str(b);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(b, k, NULL, NULL, 0, NULL, NULL);
    out->key_pem = btc__bio_str(b);
    BIO_free(b);
    out->x = x;
    out->k = k;
}

static inline __attribute__((unused)) void btc_make(btc_cert *out, int keytype, const char *cn, const char *san,
                     const btc_cert *issuer, long not_before, long not_after) {
    btc__make(out, keytype, cn, san, issuer, not_before, not_after, issuer == NULL);
}

/* An intermediate CA signed by issuer. */
static inline __attribute__((unused)) void btc_make_intermediate(btc_cert *out, int keytype, const char *cn,
                                                                 const btc_cert *issuer, long not_before,
                                                                 long not_after) {
    btc__make(out, keytype, cn, NULL, issuer, not_before, not_after, 1);
}

static inline __attribute__((unused)) void btc_free(btc_cert *c) {
    X509_free(c->x);
    EVP_PKEY_free(c->k);
    free(c->cert_pem);
    free(c->key_pem);
    memset(c, 0, sizeof *c);
}

static inline __attribute__((unused)) void btc__write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "tls_certs: cannot write %s\n", path);
        abort();
    }
}

/* Write dir/<base>.crt and dir/<base>.key. */
static inline __attribute__((unused)) void btc_write(const btc_cert *c, const char *dir, const char *base) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s.crt", dir, base);
    btc__write_file(p, c->cert_pem);
    snprintf(p, sizeof p, "%s/%s.key", dir, base);
    btc__write_file(p, c->key_pem);
}

/* The usual cast: a CA, a server certificate for localhost from it, an
 * expired one from it, one for localhost from a CA nobody trusts, and a
 * client certificate. */
typedef struct btc_world {
    btc_cert ca, server, expired, rogue_ca, rogue, client;
} btc_world;

static inline __attribute__((unused)) void btc_world_make(btc_world *w, int keytype) {
    btc_make(&w->ca, keytype, "braid test CA", NULL, NULL, -3600, 86400 * 30);
    btc_make(&w->server, keytype, "localhost", "DNS:localhost,IP:127.0.0.1", &w->ca, -3600, 86400 * 30);
    btc_make(&w->expired, keytype, "localhost", "DNS:localhost,IP:127.0.0.1", &w->ca, -86400 * 2, -86400);
    btc_make(&w->rogue_ca, keytype, "rogue CA", NULL, NULL, -3600, 86400 * 30);
    btc_make(&w->rogue, keytype, "localhost", "DNS:localhost,IP:127.0.0.1", &w->rogue_ca, -3600, 86400 * 30);
    btc_make(&w->client, keytype, "braid test client", "DNS:client.test", &w->ca, -3600, 86400 * 30);
}

static inline __attribute__((unused)) void btc_world_free(btc_world *w) {
    btc_free(&w->ca);
    btc_free(&w->server);
    btc_free(&w->expired);
    btc_free(&w->rogue_ca);
    btc_free(&w->rogue);
    btc_free(&w->client);
}

#endif
