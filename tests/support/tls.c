/* TLS fixtures for tests: see tls.h. */
#include "tls.h"

static btc_world world;
static bool world_made;

btc_world *bt_tls_world(void) {
    if (!world_made) {
        btc_world_make(&world, BTC_EC);
        world_made = true;
    }
    return &world;
}

braid_tls_ctx *bt_tls_server_ctx(const btc_cert *cert, const braid_tls_options *extra) {
    if (!cert) cert = &bt_tls_world()->server;
    braid_tls_options o = extra ? *extra : (braid_tls_options){ 0 };
    o.cert_pem = cert->cert_pem;
    o.key_pem = cert->key_pem;
    braid_tls_ctx *c;
    char err[256] = "";
    int rc = braid_tls_ctx_new(BRAID_TLS_SERVER, &o, err, sizeof err, &c);
    if (rc < 0) bt_fail(__FILE__, __LINE__, "server TLS context: %s (%s)", err, braid_strerror(rc));
    return c;
}

braid_tls_ctx *bt_tls_client_ctx(const braid_tls_options *extra) {
    braid_tls_options o = extra ? *extra : (braid_tls_options){ 0 };
    if (!o.ca_pem) o.ca_pem = bt_tls_world()->ca.cert_pem;
    braid_tls_ctx *c;
    char err[256] = "";
    int rc = braid_tls_ctx_new(BRAID_TLS_CLIENT, &o, err, sizeof err, &c);
    if (rc < 0) bt_fail(__FILE__, __LINE__, "client TLS context: %s (%s)", err, braid_strerror(rc));
    return c;
}
