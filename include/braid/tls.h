/* braid/tls.h — TLS (OpenSSL 3) as bytes in, bytes out.
 *
 * Two layers. The *engine* (braid_tls_engine) is TLS with no I/O at all:
 * ciphertext from the peer goes in with braid_tls_engine_feed() and comes out
 * as plaintext through a callback; plaintext to send is queued with
 * braid_tls_engine_write() and sealed into records by braid_tls_engine_flush();
 * the ciphertext to send is read with braid_tls_engine_out() and released with
 * braid_tls_engine_consume(). Because the engine never touches a socket it
 * runs over any byte stream — TCP, Unix sockets, pipes, the in-memory test
 * pump — and it is what the TLS protocol wrapper (see the second half of this
 * header, when the stream module is present) is built on, as Twisted's
 * protocols/tls.py is built on pyOpenSSL's memory BIOs.
 *
 * A *context* (braid_tls_ctx) holds what connections share: certificates and
 * keys, trusted CAs, verification policy, SNI certificates, ALPN protocols,
 * the ticket keys (server) and the session cache (client).
 *
 *     braid_tls_options o = { .cert_file = "cert.pem", .key_file = "key.pem",
 *                             .alpn = "h2,http/1.1" };
 *     braid_tls_ctx *server;
 *     char err[256];
 *     if (braid_tls_ctx_new(BRAID_TLS_SERVER, &o, err, sizeof err, &server) < 0)
 *         fprintf(stderr, "tls: %s\n", err);
 *
 *     static const braid_tls_engine_ops ops = { .plaintext = on_plain,
 *                                               .handshake_done = on_done };
 *     braid_tls_engine *e;
 *     braid_tls_engine_new(server, NULL, &ops, conn, &e);
 *     rc = braid_tls_engine_feed(e, bytes_from_peer, n);    // may call on_plain
 *     braid_tls_engine_write(e, "hello", 5);
 *     braid_tls_engine_flush(e);
 *     size_t len; const void *out = braid_tls_engine_out(e, &len);
 *     send(fd, out, len, 0); braid_tls_engine_consume(e, len);
 *
 * Defaults are the safe ones: a client verifies the server's certificate
 * against the given CAs (or the system store when none is given) and checks
 * that it names the host passed to braid_tls_engine_new; the minimum version
 * is TLS 1.2; renegotiation is refused (it fails the connection); session
 * tickets are on; idle connections release their record buffers
 * (SSL_MODE_RELEASE_BUFFERS). An idle engine holds no buffer of braid's;
 * what remains is OpenSSL's connection state (about 16 KB with a P-256 key
 * exchange, 13.5 KB with X25519). See docs/tls.md.
 *
 * Ownership: a context is reference-counted (braid_tls_ctx_ref/unref, the
 * creator holds one reference, each engine holds one). An engine is owned by
 * its creator and freed with braid_tls_engine_free. Strings in
 * braid_tls_info stay valid until the engine is freed.
 *
 * Threads: a context may be shared by engines on several threads (OpenSSL's
 * SSL_CTX is thread-safe; braid's session cache takes a lock). An engine is
 * used by one thread at a time; its callbacks run inside the engine call that
 * caused them, on the caller's thread.
 *
 * Errors (all connection-fatal; braid_tls_engine_error() gives the detail):
 * BRAID_ETLS_HOSTNAME, BRAID_ETLS_EXPIRED, BRAID_ETLS_UNKNOWN_CA and
 * BRAID_EVERIFY (other verification failures) on the side that rejected the
 * certificate; BRAID_ETLS_ALERT on the side that was rejected;
 * BRAID_ETLS_NO_CERT when a required client certificate was missing;
 * BRAID_ETLS_RENEGOTIATION; BRAID_ETLS_TRUNCATED when the peer's stream
 * ended in mid-handshake or without close_notify; BRAID_ETLS for malformed
 * input and everything else.
 */
#ifndef BRAID_TLS_H
#define BRAID_TLS_H

#include <braid/common.h>
#include <braid/protocol.h>
#include <braid/stream.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes: the tls range is -4064 ... -4099 ---------------------------------- */
#define BRAID_ETLS_HOSTNAME     (-4064)  /* peer certificate does not name the host */
#define BRAID_ETLS_EXPIRED      (-4065)  /* peer certificate expired or not yet valid */
#define BRAID_ETLS_UNKNOWN_CA   (-4066)  /* peer certificate not issued by a trusted CA */
#define BRAID_ETLS_NO_CERT      (-4067)  /* peer sent no certificate where one is required */
#define BRAID_ETLS_TIMEOUT      (-4068)  /* TLS handshake took too long */
#define BRAID_ETLS_RENEGOTIATION (-4069) /* peer attempted renegotiation (refused) */
#define BRAID_ETLS_ALERT        (-4070)  /* peer aborted with a fatal alert (e.g. rejected our certificate) */
#define BRAID_ETLS_TRUNCATED    (-4071)  /* stream ended mid-handshake or without close_notify */
/* older, so in the shared range: */
#define BRAID_ETLS              (-4012)  /* TLS error (the message says which) */
#define BRAID_EVERIFY           (-4013)  /* peer certificate verification failed */

struct ssl_st;    /* OpenSSL's SSL */
struct x509_st;   /* OpenSSL's X509 */

typedef struct braid_tls_ctx braid_tls_ctx;
typedef struct braid_tls_engine braid_tls_engine;

typedef enum braid_tls_role { BRAID_TLS_CLIENT = 0, BRAID_TLS_SERVER = 1 } braid_tls_role;

typedef enum braid_tls_verify {
    BRAID_TLS_VERIFY_DEFAULT = 0,  /* client: REQUIRED; server: NONE */
    BRAID_TLS_VERIFY_NONE,         /* no peer certificate is checked (or asked for) */
    BRAID_TLS_VERIFY_OPTIONAL,     /* server: ask for a client certificate; verify it if sent */
    BRAID_TLS_VERIFY_REQUIRED,     /* the peer must present a valid certificate */
} braid_tls_verify;

enum {
    BRAID_TLS_V1_2 = 0x0303,
    BRAID_TLS_V1_3 = 0x0304,
};

/* Everything is optional; zeroed options give a client that verifies against
 * the system CA store, or a server with no certificate (which can only serve
 * SNI names added with braid_tls_ctx_add_sni). File and in-memory PEM forms
 * may be mixed; the *_pem strings are copied. */
typedef struct braid_tls_options {
    const char *cert_file;      /* PEM: the certificate, optionally followed by its chain */
    const char *key_file;       /* PEM private key (RSA, EC, Ed25519) */
    const char *chain_file;     /* PEM: extra chain certificates (extraCertChain) */
    const char *cert_pem;       /* same as cert_file, as PEM text */
    const char *key_pem;
    const char *ca_file;        /* trusted CAs (PEM bundle) */
    const char *ca_dir;         /* trusted CAs (c_rehash'ed directory) */
    const char *ca_pem;         /* trusted CAs as PEM text (one or more certificates) */
    braid_tls_verify verify;
    bool no_hostname_check;     /* client: verify the chain but not the name (discouraged) */
    const char *alpn;           /* comma-separated protocols in preference order, "h2,http/1.1" */
    int min_version;            /* BRAID_TLS_V1_2 (default) or BRAID_TLS_V1_3 */
    int max_version;            /* 0: the highest the library supports */
    const char *ciphers;        /* TLS 1.2 cipher list (OpenSSL syntax); NULL: OpenSSL's default */
    const char *ciphersuites;   /* TLS 1.3 suites; NULL: OpenSSL's default */
    const char *groups;         /* key-exchange groups, "X25519:P-256"; NULL: default */
    bool no_tickets;            /* server: issue no session tickets; client: no session cache */
    uint64_t handshake_timeout; /* ns, for the protocol wrapper; 0: 10 s; BRAID_FOREVER: none */
} braid_tls_options;

/* Create a context. err (may be NULL) receives a one-line reason on failure:
 * which file could not be read, a key that does not match its certificate.
 * Returns 0, BRAID_EINVAL, BRAID_ENOMEM or BRAID_ETLS. */
BRAID_API int braid_tls_ctx_new(braid_tls_role role, const braid_tls_options *opts,
                                char *err, size_t errlen, braid_tls_ctx **out);
/* Server only: serve the certificate in opts (cert/key/chain fields only) to
 * clients asking for `name` through SNI. `name` may be "*.example.com" (one
 * label). Connections for names not added get the context's own certificate. */
BRAID_API int braid_tls_ctx_add_sni(braid_tls_ctx *ctx, const char *name,
                                    const braid_tls_options *opts, char *err, size_t errlen);
BRAID_API braid_tls_ctx *braid_tls_ctx_ref(braid_tls_ctx *ctx);   /* returns ctx */
BRAID_API void braid_tls_ctx_unref(braid_tls_ctx *ctx);
BRAID_API braid_tls_role braid_tls_ctx_role(const braid_tls_ctx *ctx);
BRAID_API uint64_t braid_tls_ctx_handshake_timeout(const braid_tls_ctx *ctx);
/* Client: forget cached sessions (the next handshake to each host is full). */
BRAID_API void braid_tls_ctx_flush_sessions(braid_tls_ctx *ctx);

/* What the handshake settled, valid once handshake_done has been reported. */
typedef struct braid_tls_info {
    const char *version;          /* "TLSv1.2", "TLSv1.3" */
    const char *cipher;           /* "TLS_AES_128_GCM_SHA256", ... */
    const char *alpn;             /* negotiated protocol, "" if none */
    const char *server_name;      /* SNI: the name the client asked for, "" if none */
    bool session_reused;          /* resumed from a ticket or cached session */
    struct x509_st *peer_cert;    /* borrowed (NULL if the peer sent none) */
    char peer_subject[256];       /* one-line subject of peer_cert, "" if none */
} braid_tls_info;

typedef struct braid_tls_engine_ops {
    /* Decrypted application data (never called with len 0). May call
     * braid_tls_engine_write/flush/shutdown, not braid_tls_engine_free. */
    void (*plaintext)(void *arg, const void *buf, size_t len);
    /* The handshake completed; info is also available from braid_tls_engine_info. */
    void (*handshake_done)(void *arg, const braid_tls_info *info);
    /* Optional: ciphertext to send, handed over the moment OpenSSL produces
     * it (buf is lent for the call). With it set the engine buffers no
     * output at all and braid_tls_engine_out always returns none — the
     * wrapper uses it to write records straight into the lower transport.
     * It must not call back into the engine. */
    void (*ciphertext)(void *arg, const void *buf, size_t len);
} braid_tls_engine_ops;

/* A connection's TLS state. For a client, server_name is sent as SNI and is
 * the name the certificate must match (NULL: no SNI and, unless the context
 * has verification off or no_hostname_check, BRAID_EINVAL). Servers pass NULL.
 * A client's hello is ready in braid_tls_engine_out right after creation. */
BRAID_API int braid_tls_engine_new(braid_tls_ctx *ctx, const char *server_name,
                                   const braid_tls_engine_ops *ops,
                                   void *arg, braid_tls_engine **out);
BRAID_API void braid_tls_engine_free(braid_tls_engine *e);

/* Ciphertext from the peer. Runs the handshake, delivers plaintext through
 * ops->plaintext. Returns 0; BRAID_ECONNECTION_DONE once the peer's
 * close_notify has arrived (our close_notify answer is then in the output);
 * or a negative, connection-fatal error (the engine is then failed: every
 * later call returns the same code). */
BRAID_API int braid_tls_engine_feed(braid_tls_engine *e, const void *buf, size_t len);
/* The peer's stream ended (EOF). Returns BRAID_ECONNECTION_DONE if it had sent
 * close_notify, else BRAID_ETLS_TRUNCATED. */
BRAID_API int braid_tls_engine_feed_eof(braid_tls_engine *e);

/* Queue plaintext (copied). Before the handshake completes it waits; after,
 * braid_tls_engine_flush seals everything queued into as few records as
 * possible (up to 16 KiB each). BRAID_EPIPE after shutdown. */
BRAID_API int braid_tls_engine_write(braid_tls_engine *e, const void *buf, size_t len);
BRAID_API int braid_tls_engine_flush(braid_tls_engine *e);
/* Plaintext queued and not yet sealed. */
BRAID_API size_t braid_tls_engine_queued(const braid_tls_engine *e);

/* Ciphertext waiting to be sent: a pointer into the engine's buffer, valid
 * until the next engine call; NULL with *len = 0 when there is none. */
BRAID_API const void *braid_tls_engine_out(braid_tls_engine *e, size_t *len);
BRAID_API void braid_tls_engine_consume(braid_tls_engine *e, size_t n);

/* Flush what is queued and send close_notify (output only; the engine keeps
 * accepting input until the peer's close_notify or EOF). */
BRAID_API int braid_tls_engine_shutdown(braid_tls_engine *e);

BRAID_API bool braid_tls_engine_is_handshake_done(const braid_tls_engine *e);
/* NULL before the handshake completes. */
BRAID_API const braid_tls_info *braid_tls_engine_info(const braid_tls_engine *e);
/* The connection's fatal error code (0 if none) and a one-line description. */
BRAID_API int braid_tls_engine_error(const braid_tls_engine *e, const char **detail);
/* Escape hatch: the OpenSSL SSL object (for tests and for what braid does not
 * wrap). Changing its BIOs or callbacks breaks the engine. */
BRAID_API struct ssl_st *braid_tls_engine_ssl(braid_tls_engine *e);
/* Bytes of heap the engine holds in braid's own buffers (not OpenSSL's). */
BRAID_API size_t braid_tls_engine_buffered(const braid_tls_engine *e);


/* ==== TLS as a protocol wrapper over any stream transport =====================
 *
 * As Twisted's TLSMemoryBIOProtocol: a *glue* protocol sits on the real
 * transport (TCP, Unix, pipe, memory) and runs an engine; the application's
 * protocol sits on a *TLS transport* that the glue provides. The application
 * sees bytes and an ordinary braid_transport: braid_transport_write,
 * close (close_notify, then the lower transport is closed once it
 * has flushed), abort, shutdown_write (close_notify, then FIN), producers,
 * watermarks and the hard cap, pause/resume_reading — all of them work on the
 * TLS transport, and hold end to end: plaintext waits in the TLS transport's
 * buffer (counted against its watermarks and cap) and is sealed only while
 * the lower transport's buffer is under its high watermark, so a peer that
 * never reads stops the producer, and a writer that ignores that is cut off at
 * the cap. Writes made in one loop iteration are sealed together in the ready
 * phase, into records of up to 16 KiB (1-byte writes do not make 1-byte
 * records). Records go straight into the lower transport's buffer (the
 * engine's ciphertext op); once it has flushed, an idle connection's write
 * buffers are released. The lower transport's high watermark is lowered to
 * 48 KiB when it was at the default, so its buffer stays within the 64 KiB
 * a transport keeps between bursts.
 *
 *     // server and client: an endpoint with TLS options (or an ssl:/tls:
 *     // string, below); the wrapper factory is braid's
 *     braid_tls_wrap_options so = { .ctx = server_ctx, .handshake_done = on_handshake };
 *     braid_endpoint_listen_typed(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP,
 *         .port = 8443, .tls = &so }, &app_factory);
 *     // client: a Deferred of the application's protocol
 *     braid_tls_wrap_options co = { .ctx = client_ctx };   // checks "example.com"
 *     braid_deferred *d = braid_endpoint_connect_typed(loop, &(braid_endpoint){
 *         .kind = BRAID_ENDPOINT_TCP, .host = "example.com", .port = 443, .tls = &co }, &app_factory);
 *     // or wrap a factory yourself (braid_tls_factory_init) and pass &tf.base
 *     // to any listen or connect
 *     // STARTTLS: from inside the protocol, on its live connection
 *     braid_tls_start(p, &(braid_tls_wrap_options){ .ctx = client_ctx,
 *                                                   .server_name = "mail.example.com" });
 *
 * The application's connection_made runs as soon as the lower connection is
 * made (writes before the handshake wait for it); handshake_done (optional)
 * runs when the handshake completes, with the peer certificate and
 * negotiated protocol; a failed handshake ends in connection_lost with the
 * code (BRAID_ETLS_HOSTNAME, BRAID_ETLS_TIMEOUT, ...) — and
 * braid_tls_transport_error gives the detail during connection_lost. A
 * handshake not finished within the timeout (loop clock) fails with
 * BRAID_ETLS_TIMEOUT. Bad input fails that connection only.
 *
 * Ownership: the factory wrapper is caller storage and must outlive its
 * listeners and connections (like any factory); it holds a context
 * reference until braid_tls_factory_close. Glue protocols are freed by
 * braid. Everything runs on the loop thread.
 */
typedef void (*braid_tls_handshake_cb)(braid_protocol *p, const braid_tls_info *info, void *arg);

typedef struct braid_tls_wrap_options {
    braid_tls_ctx *ctx;                 /* required */
    const char *server_name;            /* client: SNI and the name the certificate must match */
    braid_tls_handshake_cb handshake_done;
    void *handshake_arg;
    uint64_t handshake_timeout;         /* ns; 0: the context's (10 s default); BRAID_FOREVER: none */
    /* braid_tls_start only: bytes already read from the peer that belong to
     * the TLS stream (a pipelined ClientHello after the STARTTLS command). */
    const void *initial;
    size_t initial_len;
} braid_tls_wrap_options;

typedef struct braid_tls_factory {
    braid_factory base;                 /* give &tf->base to listen/connect */
    braid_factory *inner;               /* builds the application's protocols */
    braid_tls_wrap_options opts;        /* private copy */
    char *server_name;
} braid_tls_factory;

/* Wrap inner: each connection made through tf->base runs TLS with o->ctx
 * (a reference is taken) and carries a protocol built by inner. */
BRAID_API int braid_tls_factory_init(braid_tls_factory *tf, braid_factory *inner,
                                     const braid_tls_wrap_options *o);
BRAID_API void braid_tls_factory_close(braid_tls_factory *tf);

/* The application protocol carried by a glue protocol (what a connect
 * Deferred gives when you pass &tf->base yourself instead of the endpoint's
 * .tls), or NULL. */
BRAID_API braid_protocol *braid_tls_wrapped_protocol(braid_protocol *glue);

/* STARTTLS: switch p's live connection to TLS. Bytes p wrote before go out
 * in clear first; from now on p->transport is a TLS transport over the old
 * one. Call it from any of p's callbacks. BRAID_EBUSY if a producer is
 * registered on p's transport (unregister it first), BRAID_ESHUTDOWN if the
 * connection is closing, BRAID_ENOMEM, or the engine's error. */
BRAID_API int braid_tls_start(braid_protocol *p, const braid_tls_wrap_options *o);

BRAID_API bool braid_tls_is_transport(const braid_transport *t);
/* The handshake's outcome (NULL before it completes or if t is not TLS). */
BRAID_API const braid_tls_info *braid_tls_transport_info(braid_transport *t);
/* The TLS error that ended or is ending the connection (0 if none) and its
 * detail; valid until connection_lost returns. */
BRAID_API int braid_tls_transport_error(braid_transport *t, const char **detail);
/* The transport under the TLS transport (NULL once it is gone). */
BRAID_API braid_transport *braid_tls_transport_lower(braid_transport *t);

/* ---- endpoint strings ----------------------------------------------------------
 * Twisted's TLS endpoint grammar on top of braid's tcp endpoints (the stream
 * module's parser handles the TCP part; these add the TLS fields):
 *
 *   server  ssl:8443:privateKey=key.pem[:certKey=cert.pem][:extraCertChain=chain.pem]
 *               [:caCerts=ca.pem|:caCertsDir=DIR][:verifyClient=optional|required]
 *               [:alpn=h2,http/1.1][:minVersion=1.3][:interface=...][:backlog=N]...
 *           (certKey defaults to privateKey: one PEM holding both)
 *   client  tls:host=example.com:port=443[:caCerts=ca.pem|:caCertsDir=DIR]
 *               [:serverName=NAME][:certKey=c.pem:privateKey=k.pem][:alpn=...]
 *               [:minVersion=1.3][:timeout=S][:bindAddress=...]     (or tls:HOST:PORT)
 *
 * "ssl" and "tls" are synonyms on both sides: kinds the TLS module registers
 * with the endpoint module, so braid_endpoint_listen and
 * braid_endpoint_connect (<braid/endpoint.h>) take these strings as they take
 * tcp: ones:
 *
 *     braid_endpoint_listen(loop, "ssl:8443:privateKey=server.pem", &app_factory);
 *     braid_endpoint_connect(loop, "tls:host=example.com:port=443", &app_factory);
 *
 * The context is built from the string and the wrapper factory is braid's
 * (it goes with the listener, or once the connection is made); inner builds
 * the application's protocols. A bad string fails the Deferred with
 * BRAID_EBAD_ENDPOINT naming the part; an unreadable certificate or key
 * with BRAID_ETLS naming the file. The Deferreds fire with the listener, or
 * with the connected *application* protocol.
 *
 * The kinds are registered when the TLS module is loaded (with the static
 * libbraid: when the program uses the TLS wrapper). A program that uses TLS
 * only through endpoint strings and links the static libbraid calls
 * braid_tls_endpoints_register() once first (any thread; 0, or the endpoint
 * module's error). */
BRAID_API int braid_tls_endpoints_register(void);

#ifdef __cplusplus
}
#endif
#endif
