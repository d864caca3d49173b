/* The TLS engine: one connection's OpenSSL state behind a custom BIO, with
 * no I/O of its own.
 *
 * Input is zero-copy: braid_tls_engine_feed points the BIO at the caller's
 * bytes and drives OpenSSL until it has consumed them all (OpenSSL copies
 * what it needs into its record buffer), so the engine never holds
 * ciphertext from the peer. Output goes into one braid-allocated buffer that
 * is freed as soon as it drains, and the plaintext queue likewise: an idle
 * engine holds no buffer of its own, and OpenSSL's record buffers are
 * released too (SSL_MODE_RELEASE_BUFFERS). */
#include "tls/tls_internal.h"
#include <arpa/inet.h>
#include <assert.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define RECORD_MAX 16384   /* TLS's maximum plaintext per record */
#define DETAIL_MAX 256
#define SEAL_MAX (4 * RECORD_MAX)   /* plaintext per SSL_write */

struct braid_tls_engine {
    braid_tls_ctx *ctx;
    SSL *ssl;
    const braid_tls_engine_ops *ops;
    void *arg;
    /* the input window the BIO reads from (only during feed) */
    const unsigned char *in;
    size_t in_len;
    bool in_eof;
    /* ciphertext to send */
    unsigned char *out;
    size_t out_off, out_len, out_cap;
    /* plaintext queued before the handshake or until the next flush */
    unsigned char *q;
    size_t q_off, q_len, q_cap;
    bool hs_done, peer_closed, shutdown_sent, reneg, out_oom;
    int error;
    char *detail;                 /* allocated when the engine fails */
    char *alpn;                   /* allocated when a protocol was negotiated */
    braid_tls_info info;
};

/* ---- the BIO ----------------------------------------------------------------- */

/* Make room for n more bytes at the end of a drained-from-the-front buffer. */
static bool buf_reserve(unsigned char **buf, size_t *off, size_t *len, size_t *cap, size_t n) {
    if (*off && *off == *len) *off = *len = 0;
    if (*len + n <= *cap) return true;
    if (*off) {                      /* compact before growing */
        memmove(*buf, *buf + *off, *len - *off);
        *len -= *off;
        *off = 0;
        if (*len + n <= *cap) return true;
    }
    size_t want = *cap ? *cap * 2 : 4096;
    while (want < *len + n) want *= 2;
    unsigned char *g = braid_realloc(*buf, want);
    if (!g) return false;
    *buf = g;
    *cap = want;
    return true;
}

static void buf_release(unsigned char **buf, size_t *off, size_t *len, size_t *cap) {
    braid_free(*buf);
    *buf = NULL;
    *off = *len = *cap = 0;
}

static int bio_write(BIO *b, const char *data, int len) {
    braid_tls_engine *e = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    if (e->ops && e->ops->ciphertext) {     /* straight to the owner: no buffer, no copy */
        e->ops->ciphertext(e->arg, data, (size_t)len);
        return len;
    }
    if (!buf_reserve(&e->out, &e->out_off, &e->out_len, &e->out_cap, (size_t)len)) {
        e->out_oom = true;
        return -1;
    }
    memcpy(e->out + e->out_len, data, (size_t)len);
    e->out_len += (size_t)len;
    return len;
}

static int bio_read(BIO *b, char *buf, int len) {
    braid_tls_engine *e = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    if (!e->in_len) {
        if (e->in_eof) return 0;
        BIO_set_retry_read(b);
        return -1;
    }
    size_t n = e->in_len < (size_t)len ? e->in_len : (size_t)len;
    memcpy(buf, e->in, n);
    e->in += n;
    e->in_len -= n;
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
    braid_tls_engine *e = BIO_get_data(b);
    BRAID__UNUSED(num);
    BRAID__UNUSED(ptr);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_PENDING: return e ? (long)e->in_len : 0;
    case BIO_CTRL_WPENDING: return e ? (long)(e->out_len - e->out_off) : 0;
    case BIO_CTRL_EOF: return e && e->in_eof && !e->in_len;
    default: return 0;
    }
}

static int bio_create(BIO *b) {
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;
static void make_bio_method(void) {
    /* Process-lifetime, shared by every engine; never freed. */
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "braid");
    if (!m) return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    bio_method = m;
}

/* ---- errors ------------------------------------------------------------------------ */

static int fail(braid_tls_engine *e, int code, const char *fmt, ...) BRAID_PRINTF(3, 4);
static int fail(braid_tls_engine *e, int code, const char *fmt, ...) {
    if (!e->error) {
        e->error = code;
        /* The detail is only kept for failed connections (a live one carries
         * no 256-byte string); without memory for it, the code's name. */
        if ((e->detail = braid_malloc(DETAIL_MAX))) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(e->detail, DETAIL_MAX, fmt, ap);
            va_end(ap);
        }
    }
    ERR_clear_error();
    return e->error;
}

static const char *role_name(const braid_tls_engine *e) {
    return e->ctx->role == BRAID_TLS_SERVER ? "client" : "server";   /* the peer's */
}

/* Turn a failed SSL_* call into one of braid's codes with a clear detail. */
static int map_error(braid_tls_engine *e, int ret) {
    int se = SSL_get_error(e->ssl, ret);
    if (e->out_oom) return fail(e, BRAID_ENOMEM, "out of memory for TLS output");
    if (e->reneg) return fail(e, BRAID_ETLS_RENEGOTIATION, "%s attempted renegotiation", role_name(e));
    unsigned long err = ERR_peek_error();
    int reason = err && ERR_GET_LIB(err) == ERR_LIB_SSL ? ERR_GET_REASON(err) : 0;
    if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED) {
        long vr = SSL_get_verify_result(e->ssl);
        const char *what = X509_verify_cert_error_string(vr);
        switch (vr) {
        case X509_V_ERR_HOSTNAME_MISMATCH: {
            /* the name checked (SNI is the same name, but an address is never sent as SNI) */
            const char *host = X509_VERIFY_PARAM_get0_host(SSL_get0_param(e->ssl), 0);
            if (!host) host = SSL_get_servername(e->ssl, TLSEXT_NAMETYPE_host_name);
            return fail(e, BRAID_ETLS_HOSTNAME, "%s certificate does not match \"%s\" (%s)",
                        role_name(e), host ? host : "?", what);
        }
        case X509_V_ERR_IP_ADDRESS_MISMATCH: {
            /* OpenSSL spells an IPv6 address out in full ("0:0:0:0:0:0:0:1");
             * name it as users write it ("::1"). */
            char *ip = X509_VERIFY_PARAM_get1_ip_asc(SSL_get0_param(e->ssl));
            char text[INET6_ADDRSTRLEN] = "(unknown)";
            unsigned char a6[16];
            if (ip && strchr(ip, ':') && inet_pton(AF_INET6, ip, a6) == 1)
                inet_ntop(AF_INET6, a6, text, sizeof text);
            else if (ip)
                snprintf(text, sizeof text, "%s", ip);
            OPENSSL_free(ip);
            return fail(e, BRAID_ETLS_HOSTNAME, "%s certificate does not match IP address %s (%s)",
                        role_name(e), text, what);
        }
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return fail(e, BRAID_ETLS_EXPIRED, "%s certificate is outside its validity period (%s)",
                        role_name(e), what);
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
        case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
        case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
        case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            return fail(e, BRAID_ETLS_UNKNOWN_CA, "%s certificate is not issued by a trusted CA (%s)",
                        role_name(e), what);
        default:
            return fail(e, BRAID_EVERIFY, "%s certificate rejected (%s)", role_name(e), what);
        }
    }
    if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE)
        return fail(e, BRAID_ETLS_NO_CERT, "client presented no certificate; one is required");
    if (reason > SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256)
        return fail(e, BRAID_ETLS_ALERT, "%s sent fatal alert \"%s\"", role_name(e),
                    SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET));
    if (reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
        (se == SSL_ERROR_SYSCALL && e->in_eof) || (se == SSL_ERROR_SYSCALL && !err))
        return fail(e, BRAID_ETLS_TRUNCATED, e->hs_done ? "%s closed without close_notify"
                                                        : "%s closed during the handshake",
                    role_name(e));
    char buf[200];
    if (err) ERR_error_string_n(err, buf, sizeof buf);
    else snprintf(buf, sizeof buf, "SSL error %d", se);
    return fail(e, BRAID_ETLS, "%s", buf);
}

/* Renegotiation is refused: OpenSSL (SSL_OP_NO_RENEGOTIATION) answers a
 * renegotiation attempt with a no_renegotiation warning and carries on; braid
 * instead fails the connection, so a peer that tries it gets an error on
 * that connection and nothing else. */
static void info_cb(const SSL *ssl, int where, int ret) {
    braid_tls_engine *e = SSL_get_app_data(ssl);
    if (!e) return;
    if ((where & SSL_CB_HANDSHAKE_START) && e->hs_done && SSL_version(ssl) < TLS1_3_VERSION)
        e->reneg = true;
    if ((where & SSL_CB_WRITE_ALERT) && (ret & 0xff) == SSL_AD_NO_RENEGOTIATION) e->reneg = true;
}

/* ---- driving OpenSSL ------------------------------------------------------------------- */

static void fill_info(braid_tls_engine *e) {
    braid_tls_info *i = &e->info;
    i->version = SSL_get_version(e->ssl);
    i->cipher = SSL_get_cipher_name(e->ssl);
    const unsigned char *p = NULL;
    unsigned l = 0;
    SSL_get0_alpn_selected(e->ssl, &p, &l);
    i->alpn = "";
    if (l && (e->alpn = braid_malloc(l + 1))) {   /* without memory: reported as none */
        memcpy(e->alpn, p, l);
        e->alpn[l] = 0;
        i->alpn = e->alpn;
    }
    const char *sn = SSL_get_servername(e->ssl, TLSEXT_NAMETYPE_host_name);
    i->server_name = sn ? sn : "";
    i->session_reused = SSL_session_reused(e->ssl) == 1;
    i->peer_cert = SSL_get0_peer_certificate(e->ssl);
    i->peer_subject[0] = 0;
    if (i->peer_cert)
        X509_NAME_oneline(X509_get_subject_name(i->peer_cert), i->peer_subject, sizeof i->peer_subject);
}

static int drive(braid_tls_engine *e) {
    if (!e->hs_done) {
        ERR_clear_error();
        int r = SSL_do_handshake(e->ssl);
        if (r != 1) {
            int se = SSL_get_error(e->ssl, r);
            if (se == SSL_ERROR_WANT_READ && !e->out_oom && !e->in_eof) return 0;
            return map_error(e, r);
        }
        e->hs_done = true;
        fill_info(e);
        if (e->ops && e->ops->handshake_done) e->ops->handshake_done(e->arg, &e->info);
        if (e->error) return e->error;
        int rc = braid_tls_engine_flush(e);
        if (rc < 0) return rc;
    }
    unsigned char tmp[RECORD_MAX];
    while (!e->peer_closed) {
        ERR_clear_error();
        int n = SSL_read(e->ssl, tmp, sizeof tmp);
        if (e->reneg) return fail(e, BRAID_ETLS_RENEGOTIATION, "%s attempted renegotiation", role_name(e));
        if (n > 0) {
            if (e->ops && e->ops->plaintext) e->ops->plaintext(e->arg, tmp, (size_t)n);
            if (e->error) return e->error;
            continue;
        }
        int se = SSL_get_error(e->ssl, n);
        if (se == SSL_ERROR_ZERO_RETURN) {
            e->peer_closed = true;
            if (!e->shutdown_sent) {
                /* Answer close_notify with ours (anything queued goes first). */
                int rc = braid_tls_engine_shutdown(e);
                if (rc < 0) return rc;
            }
            break;
        }
        if (se == SSL_ERROR_WANT_READ && !e->out_oom && !e->in_eof) break;
        return map_error(e, n);
    }
    return e->peer_closed ? BRAID_ECONNECTION_DONE : 0;
}

/* ---- public API ------------------------------------------------------------------------------ */

int braid_tls_engine_new(braid_tls_ctx *ctx, const char *server_name, const braid_tls_engine_ops *ops,
                         void *arg, braid_tls_engine **out) {
    *out = NULL;
    bool client = ctx->role == BRAID_TLS_CLIENT;
    if (client && ctx->check_host && (!server_name || !*server_name)) return BRAID_EINVAL;
    pthread_once(&bio_once, make_bio_method);
    if (!bio_method) return BRAID_ENOMEM;
    braid_tls_engine *e = braid_calloc(1, sizeof *e);
    if (!e) return BRAID_ENOMEM;
    e->ctx = ctx;
    e->ops = ops;
    e->arg = arg;
    e->ssl = SSL_new(ctx->ssl_ctx);
    BIO *b = e->ssl ? BIO_new(bio_method) : NULL;
    if (!b) {
        SSL_free(e->ssl);
        braid_free(e);
        ERR_clear_error();
        return BRAID_ENOMEM;
    }
    braid_tls_ctx_ref(ctx);
    BIO_set_data(b, e);
    SSL_set_bio(e->ssl, b, b);
    SSL_set_app_data(e->ssl, e);
    SSL_set_info_callback(e->ssl, info_cb);
    if (!client) {
        SSL_set_accept_state(e->ssl);
        *out = e;
        return 0;
    }
    SSL_set_connect_state(e->ssl);
    if (server_name && *server_name) {
        unsigned char addr[16];
        bool ip = inet_pton(AF_INET, server_name, addr) == 1 || inet_pton(AF_INET6, server_name, addr) == 1;
        int ok = 1;
        if (ip) {
            /* SNI carries host names only; an address is checked against the
             * certificate's IP SANs. */
            if (ctx->check_host) ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(e->ssl), server_name);
        } else {
            ok = SSL_set_tlsext_host_name(e->ssl, server_name);
            if (ok && ctx->check_host) {
                SSL_set_hostflags(e->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                ok = SSL_set1_host(e->ssl, server_name);
            }
            if (ok && ctx->client_cache) {
                SSL_SESSION *s = braid__tls_ctx_session(ctx, server_name);
                if (s) {
                    SSL_set_session(e->ssl, s);
                    SSL_SESSION_free(s);
                }
            }
        }
        if (ok != 1) {
            braid_tls_engine_free(e);
            ERR_clear_error();
            return BRAID_EINVAL;
        }
    }
    int rc = drive(e);   /* writes the ClientHello */
    if (rc < 0) {
        braid_tls_engine_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

void braid_tls_engine_free(braid_tls_engine *e) {
    if (!e) return;
    /* OpenSSL drops the session of a connection freed without a shutdown
     * exchange; braid keeps it unless the connection failed, since most
     * peers close without waiting for close_notify and resumption should
     * survive that. A failed connection's session is discarded. */
    if (!e->error && e->hs_done) SSL_set_shutdown(e->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
    SSL_free(e->ssl);
    braid_free(e->out);
    braid_free(e->q);
    braid_free(e->detail);
    braid_free(e->alpn);
    braid_tls_ctx_unref(e->ctx);
    braid_free(e);
    ERR_clear_error();
}

int braid_tls_engine_feed(braid_tls_engine *e, const void *buf, size_t len) {
    if (e->error) return e->error;
    if (e->peer_closed) return BRAID_ECONNECTION_DONE;
    e->in = buf;
    e->in_len = len;
    int rc = drive(e);
    e->in = NULL;
    e->in_len = 0;
    return rc;
}

int braid_tls_engine_feed_eof(braid_tls_engine *e) {
    if (e->error) return e->error;
    if (e->peer_closed) return BRAID_ECONNECTION_DONE;
    e->in_eof = true;
    int rc = drive(e);
    if (rc == 0)   /* OpenSSL saw no error, yet the stream ended: truncation */
        rc = fail(e, BRAID_ETLS_TRUNCATED, e->hs_done ? "%s closed without close_notify"
                                                      : "%s closed during the handshake",
                  role_name(e));
    return rc;
}

/* Seal len bytes (<= SEAL_MAX) into records of up to 16 KiB: one SSL_write
 * for several records means one allocation of OpenSSL's write buffer (it is
 * released after each call, SSL_MODE_RELEASE_BUFFERS) for all of them. */
static int seal(braid_tls_engine *e, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len) {   /* once, in practice: the BIO accepts everything or fails */
        ERR_clear_error();
        int r = SSL_write(e->ssl, p, (int)len);
        if (r <= 0) return map_error(e, r);
        p += r;
        len -= (size_t)r;
    }
    return 0;
}

int braid_tls_engine_write(braid_tls_engine *e, const void *buf, size_t len) {
    if (e->error) return e->error;
    if (e->shutdown_sent) return BRAID_EPIPE;
    const unsigned char *p = buf;
    /* Nothing queued and the handshake done: whole records go straight from
     * the caller's buffer; only the tail waits to be aggregated. */
    if (e->hs_done && e->q_off == e->q_len) {
        while (len >= RECORD_MAX) {
            size_t n = len < SEAL_MAX ? len - len % RECORD_MAX : SEAL_MAX;
            int rc = seal(e, p, n);
            if (rc < 0) return rc;
            p += n;
            len -= n;
        }
    }
    if (!len) return 0;
    if (!buf_reserve(&e->q, &e->q_off, &e->q_len, &e->q_cap, len)) return BRAID_ENOMEM;
    memcpy(e->q + e->q_len, p, len);
    e->q_len += len;
    return 0;
}

int braid_tls_engine_flush(braid_tls_engine *e) {
    if (e->error) return e->error;
    if (!e->hs_done) return 0;
    while (e->q_off < e->q_len) {
        size_t n = e->q_len - e->q_off;
        if (n > SEAL_MAX) n = SEAL_MAX;
        int rc = seal(e, e->q + e->q_off, n);
        if (rc < 0) return rc;
        e->q_off += n;
    }
    buf_release(&e->q, &e->q_off, &e->q_len, &e->q_cap);
    return 0;
}

size_t braid_tls_engine_queued(const braid_tls_engine *e) { return e->q_len - e->q_off; }

const void *braid_tls_engine_out(braid_tls_engine *e, size_t *len) {
    *len = e->out_len - e->out_off;
    return *len ? e->out + e->out_off : NULL;
}

void braid_tls_engine_consume(braid_tls_engine *e, size_t n) {
    assert(n <= e->out_len - e->out_off);
    e->out_off += n;
    if (e->out_off == e->out_len) buf_release(&e->out, &e->out_off, &e->out_len, &e->out_cap);
}

int braid_tls_engine_shutdown(braid_tls_engine *e) {
    if (e->error) return e->error;
    if (e->shutdown_sent) return 0;
    int rc = braid_tls_engine_flush(e);
    if (rc < 0) return rc;
    e->shutdown_sent = true;
    if (!e->hs_done) return 0;   /* nothing to protect: just stop */
    ERR_clear_error();
    int r = SSL_shutdown(e->ssl);
    if (r < 0) {
        int se = SSL_get_error(e->ssl, r);
        if (se != SSL_ERROR_WANT_READ) return map_error(e, r);
    }
    return 0;
}

bool braid_tls_engine_is_handshake_done(const braid_tls_engine *e) { return e->hs_done; }

const braid_tls_info *braid_tls_engine_info(const braid_tls_engine *e) {
    return e->hs_done ? &e->info : NULL;
}

int braid_tls_engine_error(const braid_tls_engine *e, const char **detail) {
    if (detail) *detail = !e->error ? "" : e->detail ? e->detail : braid_strerror(e->error);
    return e->error;
}

struct ssl_st *braid_tls_engine_ssl(braid_tls_engine *e) { return e->ssl; }

size_t braid_tls_engine_buffered(const braid_tls_engine *e) { return e->out_cap + e->q_cap; }
