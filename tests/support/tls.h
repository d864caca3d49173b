/* TLS fixtures for tests: one set of certificates per process and the
 * contexts a TLS or HTTPS test makes from them.
 *
 *     braid_tls_ctx *sctx = bt_tls_server_ctx(NULL, NULL);   // localhost, signed by the test CA
 *     braid_tls_ctx *cctx = bt_tls_client_ctx(&(braid_tls_options){ .alpn = "h2" });
 *     ...
 *     braid_tls_ctx_unref(sctx);
 *     braid_tls_ctx_unref(cctx);
 *
 * bt_tls_world() makes the usual cast (support/tls_certs.h: a CA, a server
 * certificate for localhost, an expired one, a rogue CA and its
 * certificate, a client certificate; P-256 keys) on first use and keeps it
 * for the life of the process (OpenSSL memory, not braid's: the leak checks
 * do not see it). The contexts are the caller's to unref. */
#ifndef BRAID_TESTS_SUPPORT_TLS_H
#define BRAID_TESTS_SUPPORT_TLS_H

#include "../harness.h"
#include "tls_certs.h"
#include <braid/tls.h>

btc_world *bt_tls_world(void);
/* A server context for cert (NULL: the world's server certificate), with
 * the other fields of extra (NULL: defaults); fails the case on error. */
braid_tls_ctx *bt_tls_server_ctx(const btc_cert *cert, const braid_tls_options *extra);
/* A client context trusting extra->ca_pem, or the world's CA when that is
 * NULL, with the other fields of extra (NULL: defaults). */
braid_tls_ctx *bt_tls_client_ctx(const braid_tls_options *extra);

#endif
