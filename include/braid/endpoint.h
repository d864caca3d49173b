/* braid/endpoint.h — endpoints: where to listen or connect, as objects and as
 * Twisted's strings.
 *
 * An endpoint names a transport and its address, so an application takes
 * "where" from its configuration and never hard-codes a socket type:
 *
 *     braid_deferred *d = braid_endpoint_listen(loop, "tcp:8080:interface=127.0.0.1:backlog=128", &f);
 *     // d fires with the braid_listener * (yours: braid_listener_close it)
 *     braid_deferred *c = braid_endpoint_connect(loop, "tcp:host=example.com:port=80:timeout=5", &f);
 *     // c fires with the connected braid_protocol * (braid's: valid until connection_lost)
 *
 * Server strings:  tcp:PORT[:interface=ADDR][:backlog=N][:reuseport=1]
 *                  tcp6:PORT[:interface=ADDR6]...   (interface=\:\:1 — escape ':' with '\')
 *                  unix:PATH[:mode=660][:backlog=N]   (or unix:address=PATH)
 *                  fd:N   (or fd:fileno=N: listen on a listening socket made elsewhere —
 *                         socket activation, a parent process; the listener takes it over)
 * Client strings:  tcp:host=H:port=P[:timeout=SECONDS][:bindAddress=ADDR[\:PORT]]
 *                  tcp:H:P[...]                      (positional, as Twisted allows)
 *                  tcp6:host=H:port=P...
 *                  unix:path=PATH[:timeout=SECONDS]  (or unix:PATH)
 * Other modules add kinds (TLS: ssl: and tls:, see <braid/tls.h>).
 * A malformed string fails with BRAID_EBAD_ENDPOINT and a message naming the
 * bad part ("endpoint 'tcp:80:bogus=1': unknown parameter 'bogus'").
 *
 * braid_endpoint is plain caller storage (no allocation, no ownership).
 * Deferreds fire on the loop thread; braid_endpoint_listen's has already fired when
 * it returns (listening is immediate); braid_endpoint_connect's fires after the
 * connection_made of the new protocol, or fails (timeout: BRAID_ETIMEDOUT;
 * cancelling it stops the attempt).
 */
#ifndef BRAID_ENDPOINT_H
#define BRAID_ENDPOINT_H

#include <braid/stream.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error code of the endpoint module (older than the ranges: in the shared one). */
#define BRAID_EBAD_ENDPOINT     (-4009)  /* malformed endpoint description */

typedef enum braid_endpoint_kind {
    BRAID_ENDPOINT_TCP = 1,
    BRAID_ENDPOINT_TCP6,
    BRAID_ENDPOINT_UNIX,
    BRAID_ENDPOINT_FD,          /* server: a listening descriptor made elsewhere */
} braid_endpoint_kind;

typedef struct braid_endpoint {
    braid_endpoint_kind kind;
    bool server;
    char host[256];            /* server: interface ("" = any); client: host name */
    int port;
    int backlog;               /* 0 = default */
    bool reuseport;
    char path[108];            /* unix */
    int mode;                  /* unix server: chmod, 0 = leave */
    int fd;                    /* fd server: the listening descriptor (taken over) */
    uint64_t timeout;          /* client: 0 = none */
    char bind_host[64];        /* client: source address */
    int bind_port;
} braid_endpoint;

/* Parse a description into ep. 0, or BRAID_EBAD_ENDPOINT with a message in
 * err (may be NULL) naming the bad part. */
BRAID_API int braid_endpoint_parse_server(const char *desc, braid_endpoint *ep, char *err, size_t errlen);
BRAID_API int braid_endpoint_parse_client(const char *desc, braid_endpoint *ep, char *err, size_t errlen);

/* Deferred of braid_listener * / of the connected braid_protocol *. */
BRAID_API braid_deferred *braid_endpoint_listen_typed(braid_loop *loop, const braid_endpoint *ep,
                                                braid_factory *f);
BRAID_API braid_deferred *braid_endpoint_connect_typed(braid_loop *loop, const braid_endpoint *ep,
                                                 braid_factory *f);

/* ---- more kinds, registered by the modules that make them --------------------------
 * A module above this one adds endpoint kinds by registering a type: a
 * description whose first field is the type's name goes to the type's
 * listen or connect, whole (the endpoint module knows nothing of it). TLS
 * registers "ssl" and "tls" (<braid/tls.h>) when it is linked; a library of
 * its own registers its kinds once, before use, from any thread. The type is
 * static storage and stays registered. */
typedef struct braid_endpoint_type {
    const char *name;      /* the description's first field: "ssl" */
    /* NULL: the kind has no servers / no clients (a BRAID_EBAD_ENDPOINT failure) */
    braid_deferred *(*listen)(braid_loop *loop, const char *desc, braid_factory *f);
    braid_deferred *(*connect)(braid_loop *loop, const char *desc, braid_factory *f);
    struct braid_endpoint_type *next;   /* private */
} braid_endpoint_type;
/* 0 (also when t is registered already), BRAID_EINVAL (no name), or
 * BRAID_EEXIST when the name is built in (tcp, tcp6, unix, fd) or another
 * type has it. Any thread. */
BRAID_API int braid_endpoint_type_register(braid_endpoint_type *t);

/* Listen / connect as the description says: the one way to listen and the
 * one way to connect. A bad string is a failed Deferred (BRAID_EBAD_ENDPOINT
 * naming the bad part). */
BRAID_API braid_deferred *braid_endpoint_listen(braid_loop *loop, const char *desc, braid_factory *f);
BRAID_API braid_deferred *braid_endpoint_connect(braid_loop *loop, const char *desc, braid_factory *f);

#ifdef __cplusplus
}
#endif
#endif
