/* Shared by the TLS sources in src/tls (never installed). */
#ifndef BRAID_TLS_INTERNAL_H
#define BRAID_TLS_INTERNAL_H

#include "loop/loop_module.h"
#include <braid/tls.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "tls";

typedef struct braid__tls_sni {
    char *name;
    SSL_CTX *ctx;
} braid__tls_sni;

typedef struct braid__tls_sess {
    struct braid__tls_sess *next;
    SSL_SESSION *sess;
    char name[];
} braid__tls_sess;

struct braid_tls_ctx {
    atomic_int refs;
    braid_tls_role role;
    braid_tls_verify verify;
    bool check_host;
    bool client_cache;
    SSL_CTX *ssl_ctx;
    unsigned char *alpn;          /* wire format */
    size_t alpn_len;
    braid__tls_sni *sni;
    size_t nsni;
    uint64_t handshake_timeout;
    pthread_mutex_t cache_lock;
    braid__tls_sess *cache;       /* most recent first */
    size_t ncache;
};

int braid__tls_ctx_index(void);
/* A cached session for name (a new reference), or NULL. */
SSL_SESSION *braid__tls_ctx_session(braid_tls_ctx *ctx, const char *name);
void braid__tls_ssl_errstr(char *buf, size_t len);

#endif
