/* TLS contexts: what connections share (certificates, CAs, policy, SNI
 * certificates, ALPN, ticket keys, the client session cache). */
#include "tls/tls_internal.h"
#include <openssl/err.h>
#include <openssl/pem.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The tls module's codes: its range (-4064 ... -4099), and two older ones. */
static const char *const tls_names[] = {
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_HOSTNAME]      = "TLS: peer certificate does not match the host name",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_EXPIRED]       = "TLS: peer certificate has expired or is not yet valid",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_UNKNOWN_CA]    = "TLS: peer certificate is not issued by a trusted CA",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_NO_CERT]       = "TLS: peer sent no certificate but one is required",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_TIMEOUT]       = "TLS handshake timed out",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_RENEGOTIATION] = "TLS renegotiation refused",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_ALERT]         = "TLS: peer sent a fatal alert",
    [BRAID_ETLS_HOSTNAME - BRAID_ETLS_TRUNCATED]     = "TLS: stream truncated (no close_notify or handshake cut short)",
};
BRAID__ERROR_DOMAIN(tls, "tls", BRAID_ETLS_HOSTNAME, BRAID_ETLS_TRUNCATED, tls_names);
static const char *const tls_old_names[] = { "TLS error", "certificate verification failed" };
BRAID__ERROR_DOMAIN(tls_old, "tls", BRAID_ETLS, BRAID_EVERIFY, tls_old_names);

/* Most recent OpenSSL error queue entry as text, queue cleared. */
void braid__tls_ssl_errstr(char *buf, size_t len) {
    unsigned long e = ERR_peek_last_error();
    if (e && buf && len) ERR_error_string_n(e, buf, len);
    else if (buf && len) buf[0] = 0;
    ERR_clear_error();
}

static int fail(char *err, size_t errlen, int code, const char *fmt, ...) BRAID_PRINTF(4, 5);
static int fail(char *err, size_t errlen, int code, const char *fmt, ...) {
    if (err && errlen) {
        char ossl[160];
        braid__tls_ssl_errstr(ossl, sizeof ossl);
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
        if (ossl[0] && n >= 0 && (size_t)n < errlen)
            snprintf(err + n, errlen - (size_t)n, " (%s)", ossl);
    } else {
        ERR_clear_error();
    }
    return code;
}

/* Load every certificate in a PEM text into a store (CA lists given inline). */
static int load_ca_pem(SSL_CTX *c, const char *pem) {
    BIO *b = BIO_new_mem_buf(pem, -1);
    if (!b) return BRAID_ENOMEM;
    X509_STORE *st = SSL_CTX_get_cert_store(c);
    int n = 0;
    X509 *x;
    while ((x = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
        if (X509_STORE_add_cert(st, x) == 1) n++;
        /* The CA names also go to clients so they can pick a certificate. */
        SSL_CTX_add_client_CA(c, x);
        X509_free(x);
    }
    BIO_free(b);
    ERR_clear_error();   /* the loop ends on "no start line" */
    return n > 0 ? 0 : BRAID_ETLS;
}

/* Certificate (with chain), extra chain and key, from files or PEM text. */
static int load_identity(SSL_CTX *c, const braid_tls_options *o, char *err, size_t errlen) {
    if (o->cert_file) {
        if (SSL_CTX_use_certificate_chain_file(c, o->cert_file) != 1)
            return fail(err, errlen, BRAID_ETLS, "cannot load certificate chain %s", o->cert_file);
    } else if (o->cert_pem) {
        BIO *b = BIO_new_mem_buf(o->cert_pem, -1);
        if (!b) return BRAID_ENOMEM;
        X509 *x = PEM_read_bio_X509_AUX(b, NULL, NULL, NULL);
        int ok = x && SSL_CTX_use_certificate(c, x) == 1;
        X509_free(x);
        X509 *ca;
        while (ok && (ca = PEM_read_bio_X509(b, NULL, NULL, NULL)))
            if (SSL_CTX_add0_chain_cert(c, ca) != 1) { X509_free(ca); ok = 0; }
        BIO_free(b);
        if (!ok) return fail(err, errlen, BRAID_ETLS, "cannot use certificate PEM");
        ERR_clear_error();
    }
    if (o->chain_file) {
        BIO *b = BIO_new_file(o->chain_file, "r");
        if (!b) return fail(err, errlen, BRAID_ETLS, "cannot read chain file %s", o->chain_file);
        X509 *ca;
        int n = 0;
        while ((ca = PEM_read_bio_X509(b, NULL, NULL, NULL))) {
            if (SSL_CTX_add0_chain_cert(c, ca) != 1) { X509_free(ca); BIO_free(b);
                return fail(err, errlen, BRAID_ETLS, "cannot add chain %s", o->chain_file); }
            n++;
        }
        BIO_free(b);
        ERR_clear_error();
        if (!n) return fail(err, errlen, BRAID_ETLS, "no certificate in chain file %s", o->chain_file);
    }
    EVP_PKEY *k = NULL;
    if (o->key_file) {
        BIO *b = BIO_new_file(o->key_file, "r");
        k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
        BIO_free(b);
        if (!k) return fail(err, errlen, BRAID_ETLS, "cannot load private key %s", o->key_file);
    } else if (o->key_pem) {
        BIO *b = BIO_new_mem_buf(o->key_pem, -1);
        if (!b) return BRAID_ENOMEM;
        k = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL);
        BIO_free(b);
        if (!k) return fail(err, errlen, BRAID_ETLS, "cannot read private key PEM");
    }
    if (k) {
        X509 *leaf = SSL_CTX_get0_certificate(c);
        if (leaf && X509_check_private_key(leaf, k) != 1) {
            EVP_PKEY_free(k);
            return fail(err, errlen, BRAID_ETLS, "private key %s does not match the certificate",
                        o->key_file ? o->key_file : "(PEM)");
        }
        int ok = SSL_CTX_use_PrivateKey(c, k) == 1;
        EVP_PKEY_free(k);
        if (!ok) return fail(err, errlen, BRAID_ETLS, "cannot use private key");
    }
    bool has_cert = o->cert_file || o->cert_pem, has_key = o->key_file || o->key_pem;
    if (has_cert != has_key)
        return fail(err, errlen, BRAID_EINVAL, "a certificate needs its private key and vice versa");
    if (has_cert && SSL_CTX_check_private_key(c) != 1)
        return fail(err, errlen, BRAID_ETLS, "private key does not match the certificate");
    return 0;
}

/* ALPN "h2,http/1.1" -> wire format (length-prefixed). */
static int alpn_wire(const char *list, unsigned char **out, size_t *outlen) {
    size_t n = strlen(list);
    unsigned char *w = braid_malloc(n + 1);
    if (!w) return BRAID_ENOMEM;
    size_t wl = 0;
    const char *p = list;
    while (*p) {
        const char *comma = strchr(p, ',');
        size_t l = comma ? (size_t)(comma - p) : strlen(p);
        if (l == 0 || l > 255) { braid_free(w); return BRAID_EINVAL; }
        w[wl++] = (unsigned char)l;
        memcpy(w + wl, p, l);
        wl += l;
        p += l + (comma ? 1 : 0);
    }
    if (!wl) { braid_free(w); return BRAID_EINVAL; }
    *out = w;
    *outlen = wl;
    return 0;
}

/* Server ALPN choice: the first of the server's protocols the client offers. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned inlen, void *arg) {
    braid_tls_ctx *ctx = arg;
    BRAID__UNUSED(ssl);
    for (size_t i = 0; i < ctx->alpn_len; i += 1u + ctx->alpn[i]) {
        unsigned l = ctx->alpn[i];
        for (unsigned j = 0; j < inlen; j += 1u + in[j]) {
            if (in[j] == l && j + 1 + l <= inlen && !memcmp(in + j + 1, ctx->alpn + i + 1, l)) {
                *out = in + j + 1;
                *outlen = (unsigned char)l;
                return SSL_TLSEXT_ERR_OK;
            }
        }
    }
    /* No overlap: carry on without ALPN; the protocol sees "" and decides. */
    return SSL_TLSEXT_ERR_NOACK;
}

static bool sni_match(const char *pattern, const char *name) {
    if (pattern[0] == '*' && pattern[1] == '.') {
        const char *dot = strchr(name, '.');
        return dot && dot != name && !strcasecmp(dot + 1, pattern + 2);
    }
    return !strcasecmp(pattern, name);
}

/* Server SNI: switch the connection to the certificate added for its name. */
static int servername_cb(SSL *ssl, int *alert, void *arg) {
    braid_tls_ctx *ctx = arg;
    BRAID__UNUSED(alert);
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!name) return SSL_TLSEXT_ERR_NOACK;
    for (size_t i = 0; i < ctx->nsni; i++) {
        if (sni_match(ctx->sni[i].name, name)) {
            SSL_set_SSL_CTX(ssl, ctx->sni[i].ctx);
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_OK;   /* unknown names get the default certificate */
}

/* ---- client session cache ---------------------------------------------------
 * One session per server name, the newest kept (TLS 1.3 sends tickets after
 * the handshake; each replaces the previous). Bounded: the oldest entry goes
 * when the cache is full. */
#define SESSION_CACHE_MAX 256

static int new_session_cb(SSL *ssl, SSL_SESSION *sess) {
    braid_tls_ctx *ctx = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), braid__tls_ctx_index());
    const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
    if (!ctx || !name) return 0;
    pthread_mutex_lock(&ctx->cache_lock);
    braid__tls_sess **pp = &ctx->cache, *victim = NULL;
    size_t n = 0;
    for (; *pp; pp = &(*pp)->next, n++) {
        if (!strcmp((*pp)->name, name)) break;
    }
    braid__tls_sess *s = *pp;
    if (s) {
        SSL_SESSION_free(s->sess);
        s->sess = sess;
        /* move to front (most recent) */
        *pp = s->next;
        s->next = ctx->cache;
        ctx->cache = s;
    } else {
        size_t nl = strlen(name);
        s = braid_malloc(sizeof *s + nl + 1);
        if (!s) { pthread_mutex_unlock(&ctx->cache_lock); return 0; }
        memcpy(s->name, name, nl + 1);
        s->sess = sess;
        s->next = ctx->cache;
        ctx->cache = s;
        if (++ctx->ncache > SESSION_CACHE_MAX) {
            braid__tls_sess **q = &ctx->cache;
            while ((*q)->next) q = &(*q)->next;
            victim = *q;
            *q = NULL;
            ctx->ncache--;
        }
    }
    pthread_mutex_unlock(&ctx->cache_lock);
    if (victim) { SSL_SESSION_free(victim->sess); braid_free(victim); }
    return 1;   /* we keep the reference */
}

SSL_SESSION *braid__tls_ctx_session(braid_tls_ctx *ctx, const char *name) {
    SSL_SESSION *r = NULL;
    pthread_mutex_lock(&ctx->cache_lock);
    for (braid__tls_sess *s = ctx->cache; s; s = s->next) {
        if (!strcmp(s->name, name)) {
            if (SSL_SESSION_is_resumable(s->sess)) {
                r = s->sess;
                SSL_SESSION_up_ref(r);
            }
            break;
        }
    }
    pthread_mutex_unlock(&ctx->cache_lock);
    return r;
}

void braid_tls_ctx_flush_sessions(braid_tls_ctx *ctx) {
    pthread_mutex_lock(&ctx->cache_lock);
    braid__tls_sess *s = ctx->cache;
    ctx->cache = NULL;
    ctx->ncache = 0;
    pthread_mutex_unlock(&ctx->cache_lock);
    while (s) {
        braid__tls_sess *n = s->next;
        SSL_SESSION_free(s->sess);
        braid_free(s);
        s = n;
    }
}

static pthread_once_t index_once = PTHREAD_ONCE_INIT;
static int ctx_index = -1;
static void make_index(void) { ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL); }
int braid__tls_ctx_index(void) {
    pthread_once(&index_once, make_index);
    return ctx_index;
}

/* A fresh SSL_CTX with braid's defaults applied (shared by the main context
 * and each SNI certificate's context). */
static SSL_CTX *new_ssl_ctx(braid_tls_ctx *ctx, const braid_tls_options *o, char *err, size_t errlen,
                            int *rc) {
    *rc = BRAID_EINVAL;
    SSL_CTX *c = SSL_CTX_new(ctx->role == BRAID_TLS_SERVER ? TLS_server_method() : TLS_client_method());
    if (!c) { *rc = fail(err, errlen, BRAID_ENOMEM, "SSL_CTX_new failed"); return NULL; }
    int minv = o->min_version ? o->min_version : BRAID_TLS_V1_2;
    if (SSL_CTX_set_min_proto_version(c, minv) != 1 ||
        (o->max_version && SSL_CTX_set_max_proto_version(c, o->max_version) != 1)) {
        fail(err, errlen, BRAID_EINVAL, "bad protocol version bounds");
        SSL_CTX_free(c);
        return NULL;
    }
    /* Renegotiation is refused (a fatal error for the connection, see
     * engine.c); compression off; release record buffers when idle. */
    SSL_CTX_set_options(c, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE |
                               (o->no_tickets && ctx->role == BRAID_TLS_SERVER ? SSL_OP_NO_TICKET : 0));
    /* No SSL_MODE_ENABLE_PARTIAL_WRITE: the engine's BIO never refuses
     * output, and without it one SSL_write of several records allocates
     * OpenSSL's write buffer once instead of once per record. */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if ((o->ciphers && SSL_CTX_set_cipher_list(c, o->ciphers) != 1) ||
        (o->ciphersuites && SSL_CTX_set_ciphersuites(c, o->ciphersuites) != 1) ||
        (o->groups && SSL_CTX_set1_groups_list(c, o->groups) != 1)) {
        fail(err, errlen, BRAID_EINVAL, "bad cipher list, cipher suites or groups");
        SSL_CTX_free(c);
        return NULL;
    }
    SSL_CTX_set_ex_data(c, braid__tls_ctx_index(), ctx);
    if (ctx->role == BRAID_TLS_SERVER) {
        /* Server-side stateful cache off: tickets carry the state, so a
         * server keeps no per-session memory. */
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
        if (ctx->alpn) SSL_CTX_set_alpn_select_cb(c, alpn_select, ctx);
    }
    *rc = 0;
    return c;
}

int braid_tls_ctx_new(braid_tls_role role, const braid_tls_options *opts, char *err,
                      size_t errlen, braid_tls_ctx **out) {
    static const braid_tls_options none;
    const braid_tls_options *o = opts ? opts : &none;
    if (err && errlen) err[0] = 0;
    *out = NULL;
    braid_tls_ctx *ctx = braid_calloc(1, sizeof *ctx);
    if (!ctx) return fail(err, errlen, BRAID_ENOMEM, "out of memory");
    atomic_init(&ctx->refs, 1);
    pthread_mutex_init(&ctx->cache_lock, NULL);
    ctx->role = role;
    ctx->handshake_timeout = o->handshake_timeout ? o->handshake_timeout : BRAID_SECONDS(10);
    braid_tls_verify v = o->verify;
    if (v == BRAID_TLS_VERIFY_DEFAULT)
        v = role == BRAID_TLS_CLIENT ? BRAID_TLS_VERIFY_REQUIRED : BRAID_TLS_VERIFY_NONE;
    ctx->verify = v;
    ctx->check_host = role == BRAID_TLS_CLIENT && v != BRAID_TLS_VERIFY_NONE && !o->no_hostname_check;
    int rc;
    if (o->alpn && (rc = alpn_wire(o->alpn, &ctx->alpn, &ctx->alpn_len)) < 0) {
        braid_tls_ctx_unref(ctx);
        return fail(err, errlen, rc, "bad ALPN list \"%s\"", o->alpn);
    }
    ctx->ssl_ctx = new_ssl_ctx(ctx, o, err, errlen, &rc);
    if (!ctx->ssl_ctx) { braid_tls_ctx_unref(ctx); return rc; }
    SSL_CTX *c = ctx->ssl_ctx;
    if ((rc = load_identity(c, o, err, errlen)) < 0) { braid_tls_ctx_unref(ctx); return rc; }
    if (o->ca_file || o->ca_dir) {
        if (SSL_CTX_load_verify_locations(c, o->ca_file, o->ca_dir) != 1) {
            rc = fail(err, errlen, BRAID_ETLS, "cannot load CA %s", o->ca_file ? o->ca_file : o->ca_dir);
            braid_tls_ctx_unref(ctx);
            return rc;
        }
        if (o->ca_file && role == BRAID_TLS_SERVER) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(o->ca_file);
            if (names) SSL_CTX_set_client_CA_list(c, names);
            ERR_clear_error();
        }
    }
    if (o->ca_pem && load_ca_pem(c, o->ca_pem) < 0) {
        rc = fail(err, errlen, BRAID_ETLS, "no certificate in CA PEM");
        braid_tls_ctx_unref(ctx);
        return rc;
    }
    if (!o->ca_file && !o->ca_dir && !o->ca_pem && role == BRAID_TLS_CLIENT && v != BRAID_TLS_VERIFY_NONE)
        SSL_CTX_set_default_verify_paths(c);
    int mode = SSL_VERIFY_NONE;
    if (v == BRAID_TLS_VERIFY_OPTIONAL) mode = SSL_VERIFY_PEER;
    if (v == BRAID_TLS_VERIFY_REQUIRED)
        mode = SSL_VERIFY_PEER | (role == BRAID_TLS_SERVER ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0);
    SSL_CTX_set_verify(c, mode, NULL);
    if (role == BRAID_TLS_SERVER) {
        SSL_CTX_set_tlsext_servername_callback(c, servername_cb);
        SSL_CTX_set_tlsext_servername_arg(c, ctx);
        /* A session id context is needed for resumption with client certificates. */
        SSL_CTX_set_session_id_context(c, (const unsigned char *)"braid", 5);
    } else if (ctx->alpn && SSL_CTX_set_alpn_protos(c, ctx->alpn, (unsigned)ctx->alpn_len) != 0) {
        rc = fail(err, errlen, BRAID_ENOMEM, "cannot set ALPN");
        braid_tls_ctx_unref(ctx);
        return rc;
    }
    if (role == BRAID_TLS_SERVER) {
    } else if (!o->no_tickets) {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
        SSL_CTX_sess_set_new_cb(c, new_session_cb);
        ctx->client_cache = true;
    } else {
        SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_OFF);
    }
    ERR_clear_error();
    *out = ctx;
    return 0;
}

int braid_tls_ctx_add_sni(braid_tls_ctx *ctx, const char *name, const braid_tls_options *o,
                          char *err, size_t errlen) {
    if (err && errlen) err[0] = 0;
    if (ctx->role != BRAID_TLS_SERVER || !name || !*name || !o)
        return fail(err, errlen, BRAID_EINVAL, "SNI certificates are for servers, with a name");
    braid__tls_sni *grown = braid_realloc(ctx->sni, (ctx->nsni + 1) * sizeof *grown);
    if (!grown) return fail(err, errlen, BRAID_ENOMEM, "out of memory");
    ctx->sni = grown;
    /* The SNI context only supplies the certificate: OpenSSL keeps the
     * original context's verification, options and callbacks. */
    braid_tls_options id = { .cert_file = o->cert_file, .key_file = o->key_file,
                             .chain_file = o->chain_file, .cert_pem = o->cert_pem,
                             .key_pem = o->key_pem };
    int rc;
    SSL_CTX *c = new_ssl_ctx(ctx, &id, err, errlen, &rc);
    if (!c) return rc;
    rc = load_identity(c, &id, err, errlen);
    if (rc == 0 && !(o->cert_file || o->cert_pem))
        rc = fail(err, errlen, BRAID_EINVAL, "an SNI entry needs a certificate");
    char *dup = rc == 0 ? braid_strdup(name) : NULL;
    if (rc == 0 && !dup) rc = fail(err, errlen, BRAID_ENOMEM, "out of memory");
    if (rc < 0) { SSL_CTX_free(c); return rc; }
    ctx->sni[ctx->nsni].name = dup;
    ctx->sni[ctx->nsni].ctx = c;
    ctx->nsni++;
    return 0;
}

braid_tls_ctx *braid_tls_ctx_ref(braid_tls_ctx *ctx) {
    atomic_fetch_add(&ctx->refs, 1);
    return ctx;
}

void braid_tls_ctx_unref(braid_tls_ctx *ctx) {
    if (!ctx || atomic_fetch_sub(&ctx->refs, 1) != 1) return;
    braid_tls_ctx_flush_sessions(ctx);
    for (size_t i = 0; i < ctx->nsni; i++) {
        SSL_CTX_free(ctx->sni[i].ctx);
        braid_free(ctx->sni[i].name);
    }
    braid_free(ctx->sni);
    SSL_CTX_free(ctx->ssl_ctx);
    braid_free(ctx->alpn);
    pthread_mutex_destroy(&ctx->cache_lock);
    braid_free(ctx);
}

braid_tls_role braid_tls_ctx_role(const braid_tls_ctx *ctx) { return ctx->role; }
uint64_t braid_tls_ctx_handshake_timeout(const braid_tls_ctx *ctx) { return ctx->handshake_timeout; }
