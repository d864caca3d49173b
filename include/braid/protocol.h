/* braid/protocol.h — protocols, factories, producers and consumers.
 *
 * Twisted's split in C (docs/architecture.md, principle 3): a *protocol* sees bytes and
 * events, never a file descriptor; a *transport* (<braid/stream.h>) does the
 * system calls. The same protocol runs over TCP, Unix sockets, pipes, the
 * in-memory test transport and TLS (<braid/tls.h>). A *factory* builds one protocol
 * per accepted or connected peer.
 *
 *     typedef struct echo { braid_protocol base; size_t seen; } echo;
 *     static void echo_data(braid_protocol *p, const void *buf, size_t len) {
 *         ((echo *)p)->seen += len;
 *         braid_transport_write(p->transport, buf, len);   // buffered, flow-controlled
 *     }
 *     static const braid_protocol_ops echo_ops = { .data_received = echo_data };
 *     braid_factory f;
 *     braid_factory_init(&f, &echo_ops, sizeof(echo), NULL);   // calloc'd per peer
 *     braid_deferred *d = braid_endpoint_listen(loop, "tcp:8000:interface=127.0.0.1", &f);
 *
 * Callbacks, all on the transport's loop thread, in this order:
 *   connection_made        once, when the transport is attached (p->transport set);
 *   data_received          any number of times; buf is lent for the call only;
 *   read_connection_lost   the peer shut its write side (EOF) — only if this op is
 *                          set; without it EOF means close (Twisted's
 *                          IHalfCloseableProtocol);
 *   write_connection_lost  our own shutdown_write completed (buffer flushed, FIN sent);
 *   connection_lost        exactly once, last. reason is lent for the call:
 *                          BRAID_ECONNECTION_DONE for a clean close, else the
 *                          error (-ECONNRESET, BRAID_ECONNECTION_LOST after abort,
 *                          BRAID_EBUFFER_LIMIT when the write cap was passed ...).
 *                          It runs in the loop's ready phase, never from inside
 *                          a call the protocol made (write, close).
 *   destroy                (optional) after connection_lost: release what the
 *                          protocol owns. A protocol built by braid_factory_init's
 *                          default builder is then freed by braid.
 * After connection_lost returns p->transport is gone; do not use it.
 *
 * Producers (Twisted's IPushProducer / IPullProducer): a transport is a
 * consumer. Register a producer with braid_transport_register_producer; a
 * push (streaming) producer is paused when the write buffer reaches its high
 * watermark and resumed when it drains to the low one; a pull producer's
 * resume_producing is called each time the buffer drains below the low
 * watermark (produce one more chunk). stop_producing is called when the
 * connection goes away. A transport is itself a push producer of what it
 * reads (braid_transport_producer): register transport A with transport B and
 * a slow reader of B stops reading on A — end-to-end backpressure for proxies.
 * Ownership: the producer is borrowed; unregister it (or let the connection
 * end) before freeing it.
 */
#ifndef BRAID_PROTOCOL_H
#define BRAID_PROTOCOL_H

#include <braid/common.h>
#include <braid/loop.h>
#include <braid/deferred.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of the net layer (its range is -4048 ... -4063; these three
 * are older and keep their numbers). */
#define BRAID_EBUFFER_LIMIT     (-4005)  /* a write buffer passed its hard cap */
#define BRAID_ECONNECTION_DONE  (-4010)  /* connection closed cleanly */
#define BRAID_ECONNECTION_LOST  (-4011)  /* connection closed uncleanly */

typedef struct braid_transport braid_transport;
typedef struct braid_protocol braid_protocol;
typedef struct braid_factory braid_factory;

/* A socket address (IPv4, IPv6 or Unix) with its length. */
typedef struct braid_address {
    struct sockaddr_storage ss;
    socklen_t len;
} braid_address;
/* "1.2.3.4:80", "[::1]:80", "unix:/path" (or "unix:" unnamed) into buf; returns buf. */
BRAID_API const char *braid_address_format(const braid_address *a, char *buf, size_t size);
/* The port of an IPv4/IPv6 address (host order), 0 otherwise. */
BRAID_API int braid_address_port(const braid_address *a);
/* Resolve a numeric "host" and port into an address (no DNS). */
BRAID_API int braid_address_from_numeric(const char *host, int port, braid_address *out);

typedef struct braid_protocol_ops {
    void (*connection_made)(braid_protocol *p);
    void (*data_received)(braid_protocol *p, const void *buf, size_t len);
    void (*read_connection_lost)(braid_protocol *p);
    void (*write_connection_lost)(braid_protocol *p);
    void (*connection_lost)(braid_protocol *p, const braid_failure *reason);
    /* Unix transports only: descriptors that arrived (SCM_RIGHTS) with the
     * bytes delivered next. The protocol owns them (close them). Without this
     * op they are closed. */
    void (*fds_received)(braid_protocol *p, const int *fds, int n);
    void (*destroy)(braid_protocol *p);
} braid_protocol_ops;

/* Embed as the first member of your own protocol struct. */
struct braid_protocol {
    const braid_protocol_ops *ops;
    braid_transport *transport;   /* set before connection_made */
    braid_factory *factory;       /* the factory that built it, or NULL */
    void *user;                   /* free for the application (factory->user by default) */
    unsigned flags;               /* private */
};

/* Factories (Twisted's Factory). start runs before the first listener or
 * connector using the factory begins, stop after the last one ended
 * (Twisted's doStart/doStop). build_protocol returns NULL to refuse a peer
 * (the connection is closed). */
struct braid_factory {
    braid_protocol *(*build_protocol)(braid_factory *f, const braid_address *peer);
    void (*start)(braid_factory *f);
    void (*stop)(braid_factory *f);
    void *user;
    /* used by the default builder */
    const braid_protocol_ops *ops;
    size_t proto_size;
    unsigned refs;                /* private: users of the factory */
};

/* A factory whose builder braid_calloc's proto_size bytes (>= sizeof
 * braid_protocol) per peer, sets ops, factory and user = f->user, and frees
 * the memory after connection_lost/destroy. */
BRAID_API void braid_factory_init(braid_factory *f, const braid_protocol_ops *ops,
                                  size_t proto_size, void *user);
/* Build a protocol through f (used by transports; tests may call it). */
BRAID_API braid_protocol *braid_factory_build(braid_factory *f, const braid_address *peer);
/* Factory start/stop reference counting (listeners and connectors call these). */
BRAID_API braid_factory *braid_factory_ref(braid_factory *f);   /* returns f */
BRAID_API void braid_factory_unref(braid_factory *f);

/* ---- producers ---------------------------------------------------------------------- */
typedef struct braid_producer braid_producer;
struct braid_producer {
    void (*pause_producing)(braid_producer *p);    /* push producers */
    void (*resume_producing)(braid_producer *p);   /* push: resume; pull: produce a chunk */
    void (*stop_producing)(braid_producer *p);     /* the consumer is gone */
    void *arg;
};

#ifdef __cplusplus
}
#endif
#endif
