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
 * connection_made of the new protocol, or fails (after the timeout — 30 s
 * unless the endpoint sets one — with BRAID_ETIMEDOUT;
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

/* A connect that has not completed this long after it started fails with
 * BRAID_ETIMEDOUT, unless the endpoint says otherwise (timeout=S in the
 * string, .timeout in the struct; BRAID_FOREVER: no limit). 30 s, as
 * Twisted's clientFromString: without one a connect to a host that drops
 * SYNs hangs for as long as the kernel retries them (about two minutes with
 * Linux's default tcp_syn_retries = 6); libuv has no default at all. */
#define BRAID_ENDPOINT_CONNECT_TIMEOUT BRAID_SECONDS(30)

struct braid_tls_wrap_options;   /* <braid/tls.h> */

/* The typed equivalent of a description: every field a string can set, and
 * the ones only code can (accept_budget, tls). Zero fields are defaults, so
 * a compound literal names only what it needs:
 *
 *     braid_endpoint_listen_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
 *         .server = true, .host = "127.0.0.1", .port = 8080 }, &f);
 *     braid_endpoint_connect_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_UNIX,
 *         .path = "/run/app.sock", .timeout = BRAID_SECONDS(5) }, &f);
 */
typedef struct braid_endpoint {
    braid_endpoint_kind kind;
    bool server;               /* set by braid_endpoint_parse_server (the typed calls ignore it) */
    char host[256];            /* server: numeric interface ("" = any); client: host name */
    int port;                  /* server: 0 = any (braid_listener_address tells which) */
    int backlog;               /* server: 0 = 511 */
    bool reuseport;            /* tcp server: SO_REUSEPORT (processes share the port) */
    int accept_budget;         /* server: accepts per loop iteration, 0 = 64 (fairness) */
    char path[108];            /* unix */
    int mode;                  /* unix server: chmod, 0 = leave */
    int fd;                    /* fd server: the listening descriptor (taken over) */
    uint64_t timeout;          /* client: 0 = BRAID_ENDPOINT_CONNECT_TIMEOUT, BRAID_FOREVER = none */
    char bind_host[64];        /* client: source address */
    int bind_port;
    /* TLS over tcp/tcp6 (the typed form of ssl:/tls: strings; needs the TLS
     * module, see <braid/tls.h>): the context and options of the wrapper
     * braid puts around f. Clients: server_name NULL checks the certificate
     * against host; the Deferred fires with the *application's* protocol.
     * Copied: the struct need not outlive the call. NULL = plain. */
    const struct braid_tls_wrap_options *tls;
} braid_endpoint;

/* Parse a description into ep. 0, or BRAID_EBAD_ENDPOINT with a message in
 * err (may be NULL) naming the bad part. */
BRAID_API int braid_endpoint_parse_server(const char *desc, braid_endpoint *ep, char *err, size_t errlen);
BRAID_API int braid_endpoint_parse_client(const char *desc, braid_endpoint *ep, char *err, size_t errlen);

/* Listen / connect as ep says (the typed form of the two calls below):
 * a Deferred of the braid_listener * (fired before this returns; yours:
 * braid_listener_close) / of the connected braid_protocol * (braid's: valid
 * until its connection_lost). Errors are the Deferred's failure. */
BRAID_API braid_deferred *braid_endpoint_listen_typed(braid_loop *loop, const braid_endpoint *ep,
                                                braid_factory *f);
BRAID_API braid_deferred *braid_endpoint_connect_typed(braid_loop *loop, const braid_endpoint *ep,
                                                 braid_factory *f);

/* For code that sets up before it runs (main, tests): the listener of a
 * listen Deferred, which has fired when braid_endpoint_listen or
 * _listen_typed returns. Takes d over (drops your reference): 0 and *out
 * (yours: braid_listener_close), or the failure's code (the failure is
 * consumed; BRAID_ENOMEM for a NULL d):
 *
 *     braid_listener *l;
 *     int rc = braid_endpoint_listener(braid_endpoint_listen(loop, "tcp:8080", &f), &l);
 */
BRAID_API int braid_endpoint_listener(braid_deferred *d, braid_listener **out);

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
    /* The type named "tls" only: the typed calls hand it endpoints whose
     * .tls is set (NULL: such endpoints fail with BRAID_EBAD_ENDPOINT). */
    braid_deferred *(*listen_typed)(braid_loop *loop, const struct braid_endpoint *ep, braid_factory *f);
    braid_deferred *(*connect_typed)(braid_loop *loop, const struct braid_endpoint *ep, braid_factory *f);
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
