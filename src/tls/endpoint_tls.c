/* TLS endpoint strings ("ssl:8443:privateKey=...", "tls:host=...:port=...").
 *
 * Two kinds registered with the endpoint module (braid_endpoint_type), which
 * hands them whole descriptions: the TLS fields are taken out, the rest is
 * parsed by braid_endpoint_parse_server/client as a "tcp:" string (its
 * errors name the bad part as usual), and the listener or connection is made
 * through a braid_tls_factory of its own. The "tls" type also serves the
 * typed calls (braid_endpoint_listen_typed / _connect_typed) for endpoints
 * whose .tls is set: the same wrapper, with the caller's options. */
#include "tls/tls_internal.h"
#include <braid/endpoint.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define MAX_FIELDS 24
#define FIELD_LEN 512

enum { K_PRIVATE_KEY, K_CERT_KEY, K_EXTRA_CHAIN, K_CA_CERTS, K_CA_DIR, K_VERIFY_CLIENT, K_ALPN,
       K_MIN_VERSION, K_SERVER_NAME, K_COUNT };
static const char *const tls_keys[K_COUNT] = {
    "privateKey", "certKey", "extraCertChain", "caCerts", "caCertsDir", "verifyClient", "alpn",
    "minVersion", "serverName" };

typedef struct tls_desc {
    char vals[K_COUNT][FIELD_LEN];
    bool have[K_COUNT];
    char tcp[2048];      /* the remaining description, as a tcp: endpoint */
} tls_desc;

static int bad(char *err, size_t errlen, const char *desc, const char *fmt, ...) BRAID_PRINTF(4, 5);
static int bad(char *err, size_t errlen, const char *desc, const char *fmt, ...) {
    int k = snprintf(err, errlen, "endpoint '%s': ", desc);
    if (k >= 0 && (size_t)k < errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
        va_end(ap);
    }
    return BRAID_EBAD_ENDPOINT;
}

/* Append s to out, escaping ':' and '\' again. */
static bool append_escaped(char *out, size_t cap, size_t *len, const char *s) {
    for (; *s; s++) {
        if ((*s == ':' || *s == '\\') && *len + 1 < cap) out[(*len)++] = '\\';
        if (*len + 1 >= cap) return false;
        out[(*len)++] = *s;
    }
    out[*len] = 0;
    return true;
}

static int split(const char *desc, bool server, tls_desc *td, char *err, size_t errlen) {
    memset(td, 0, sizeof *td);
    char field[FIELD_LEN];
    size_t flen = 0, tlen = 0;
    int n = 0;
    for (const char *p = desc;; p++) {
        if (*p == '\\') {
            if (!p[1]) return bad(err, errlen, desc, "trailing '\\'");
            p++;
        } else if (*p == ':' || *p == 0) {
            field[flen] = 0;
            if (n == 0) {
                if (strcmp(field, "ssl") && strcmp(field, "tls"))
                    return bad(err, errlen, desc, "not a TLS endpoint (want ssl: or tls:)");
                memcpy(td->tcp, "tcp", 4);
                tlen = 3;
            } else {
                const char *eq = strchr(field, '=');
                int k = -1;
                for (int i = 0; eq && i < K_COUNT; i++)
                    if ((size_t)(eq - field) == strlen(tls_keys[i]) && !strncmp(field, tls_keys[i], (size_t)(eq - field)))
                        k = i;
                if (k >= 0) {
                    if (td->have[k]) return bad(err, errlen, desc, "'%s' given twice", tls_keys[k]);
                    if (!eq[1]) return bad(err, errlen, desc, "empty value for '%s'", tls_keys[k]);
                    snprintf(td->vals[k], FIELD_LEN, "%s", eq + 1);
                    td->have[k] = true;
                } else {
                    if (tlen + 1 >= sizeof td->tcp) return bad(err, errlen, desc, "too long");
                    td->tcp[tlen++] = ':';
                    if (!append_escaped(td->tcp, sizeof td->tcp, &tlen, field))
                        return bad(err, errlen, desc, "too long");
                }
            }
            if (++n > MAX_FIELDS) return bad(err, errlen, desc, "more than %d fields", MAX_FIELDS);
            if (*p == 0) break;
            flen = 0;
            continue;
        }
        if (flen + 1 >= FIELD_LEN) return bad(err, errlen, desc, "field %d too long", n + 1);
        field[flen++] = *p;
    }
    if (server && !td->have[K_PRIVATE_KEY])
        return bad(err, errlen, desc, "a TLS server needs privateKey=");
    if (server && td->have[K_SERVER_NAME])
        return bad(err, errlen, desc, "serverName is for clients");
    if (!server && td->have[K_VERIFY_CLIENT])
        return bad(err, errlen, desc, "verifyClient is for servers");
    if (!server && td->have[K_EXTRA_CHAIN] && !td->have[K_PRIVATE_KEY])
        return bad(err, errlen, desc, "extraCertChain needs a client certificate (privateKey=)");
    return 0;
}

/* Build the context the description asks for. */
static int make_ctx(const char *desc, const tls_desc *td, bool server, braid_tls_ctx **out,
                    char *err, size_t errlen) {
    braid_tls_options o = { 0 };
    if (td->have[K_PRIVATE_KEY]) {
        o.key_file = td->vals[K_PRIVATE_KEY];
        o.cert_file = td->have[K_CERT_KEY] ? td->vals[K_CERT_KEY] : td->vals[K_PRIVATE_KEY];
    }
    if (td->have[K_EXTRA_CHAIN]) o.chain_file = td->vals[K_EXTRA_CHAIN];
    if (td->have[K_CA_CERTS]) o.ca_file = td->vals[K_CA_CERTS];
    if (td->have[K_CA_DIR]) o.ca_dir = td->vals[K_CA_DIR];
    if (td->have[K_ALPN]) o.alpn = td->vals[K_ALPN];
    if (td->have[K_VERIFY_CLIENT]) {
        const char *v = td->vals[K_VERIFY_CLIENT];
        if (!strcmp(v, "optional")) o.verify = BRAID_TLS_VERIFY_OPTIONAL;
        else if (!strcmp(v, "required")) o.verify = BRAID_TLS_VERIFY_REQUIRED;
        else if (!strcmp(v, "none")) o.verify = BRAID_TLS_VERIFY_NONE;
        else return bad(err, errlen, desc, "verifyClient must be none, optional or required, not '%s'", v);
    }
    if (td->have[K_MIN_VERSION]) {
        const char *v = td->vals[K_MIN_VERSION];
        if (!strcmp(v, "1.2")) o.min_version = BRAID_TLS_V1_2;
        else if (!strcmp(v, "1.3")) o.min_version = BRAID_TLS_V1_3;
        else return bad(err, errlen, desc, "minVersion must be 1.2 or 1.3, not '%s'", v);
    }
    char why[256];
    int rc = braid_tls_ctx_new(server ? BRAID_TLS_SERVER : BRAID_TLS_CLIENT, &o, why, sizeof why, out);
    if (rc < 0) snprintf(err, errlen, "endpoint '%s': %s", desc, why);
    return rc;
}

/* The application protocol of a connected glue protocol (connect's Deferred). */
static braid_result to_app(braid_result r, void *arg) {
    BRAID__UNUSED(arg);
    if (r.failure) return r;
    braid_protocol *app = braid_tls_wrapped_protocol(r.value);
    if (!app) return braid_result_errf(BRAID_ECONNECTION_LOST, "TLS connection ended before it started");
    return braid_result_ok(app);
}

/* The wrapper factory of an endpoint's listener or connection lives on the
 * heap and goes when its last user (the listener, the connector) lets it
 * go: its stop undoes the wrapper's start and frees it. Its connections
 * use it only while they are being made. */
static void heap_stop(braid_factory *f) {
    braid_tls_factory *tf = (braid_tls_factory *)f;
    braid_factory_unref(tf->inner);
    braid_tls_factory_close(tf);
    braid_free(tf);
}

/* Listen or connect at ep (tcp/tcp6, its .tls ignored) through a heap
 * wrapper factory made with w around inner: the typed calls' TLS half,
 * which the strings' reaches once they have built their context. A client
 * whose w names no server checks the certificate against ep->host. */
static braid_deferred *wrapped(braid_loop *loop, const braid_endpoint *ep, const braid_tls_wrap_options *w,
                               braid_factory *inner, bool server) {
    if (!w->ctx) return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "tls endpoint: no context"));
    braid_tls_factory *tf = braid_malloc(sizeof *tf);
    if (!tf) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "tls endpoint"));
    braid_tls_wrap_options o = *w;
    if (server) o.server_name = NULL;
    else if (!o.server_name) o.server_name = ep->host;
    int rc = braid_tls_factory_init(tf, inner, &o);
    if (rc < 0) {
        braid_tls_factory_close(tf);
        braid_free(tf);
        return braid_deferred_fail(loop, braid_failure_new(rc, "tls endpoint: %s", braid_strerror(rc)));
    }
    tf->base.stop = heap_stop;
    braid_factory_ref(&tf->base);          /* ours for the call: a failed listen or connect frees tf */
    braid_endpoint plain = *ep;
    plain.tls = NULL;
    braid_deferred *d = server ? braid_endpoint_listen_typed(loop, &plain, &tf->base)
                               : braid_endpoint_connect_typed(loop, &plain, &tf->base);
    if (d && !server && braid_deferred_add_callback(d, to_app, NULL) < 0) braid_deferred_cancel(d);
    braid_factory_unref(&tf->base);
    return d;
}

static braid_deferred *tls_endpoint(braid_loop *loop, const char *desc, braid_factory *inner, bool server) {
    tls_desc *td = braid_malloc(sizeof *td);
    if (!td) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "tls endpoint"));
    char err[768];
    braid_endpoint ep;
    braid_tls_ctx *ctx = NULL;
    int rc = split(desc, server, td, err, sizeof err);
    if (rc == 0) {
        rc = server ? braid_endpoint_parse_server(td->tcp, &ep, err, sizeof err)
                    : braid_endpoint_parse_client(td->tcp, &ep, err, sizeof err);
        if (rc == 0 && ep.kind != BRAID_ENDPOINT_TCP && ep.kind != BRAID_ENDPOINT_TCP6)
            rc = bad(err, sizeof err, desc, "TLS endpoints are TCP");
    }
    if (rc == 0) rc = make_ctx(desc, td, server, &ctx, err, sizeof err);
    braid_deferred *d = NULL;
    if (rc == 0) {
        const char *name = !server && td->have[K_SERVER_NAME] ? td->vals[K_SERVER_NAME] : NULL;
        d = wrapped(loop, &ep, &(braid_tls_wrap_options){ .ctx = ctx, .server_name = name }, inner, server);
        braid_tls_ctx_unref(ctx);          /* the wrapper holds its own */
    }
    braid_free(td);
    return rc < 0 ? braid_deferred_fail(loop, braid_failure_new(rc, "%s", err)) : d;
}

static braid_deferred *tls_listen_typed(braid_loop *loop, const braid_endpoint *ep, braid_factory *f) {
    return wrapped(loop, ep, ep->tls, f, true);
}
static braid_deferred *tls_connect_typed(braid_loop *loop, const braid_endpoint *ep, braid_factory *f) {
    return wrapped(loop, ep, ep->tls, f, false);
}

static braid_deferred *tls_listen(braid_loop *loop, const char *desc, braid_factory *f) {
    return tls_endpoint(loop, desc, f, true);
}
static braid_deferred *tls_connect(braid_loop *loop, const char *desc, braid_factory *f) {
    return tls_endpoint(loop, desc, f, false);
}

static braid_endpoint_type ssl_type = { .name = "ssl", .listen = tls_listen, .connect = tls_connect };
/* "tls" also takes the typed calls' endpoints with .tls set. */
static braid_endpoint_type tls_type = { .name = "tls", .listen = tls_listen, .connect = tls_connect,
                                        .listen_typed = tls_listen_typed,
                                        .connect_typed = tls_connect_typed };

int braid_tls_endpoints_register(void) {
    int rc = braid_endpoint_type_register(&ssl_type);
    return rc < 0 ? rc : braid_endpoint_type_register(&tls_type);
}
