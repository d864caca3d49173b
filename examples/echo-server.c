/* echo-server: the smallest useful braid server.
 *
 *     echo-server [ENDPOINT]          default: tcp:8000:interface=127.0.0.1
 *     echo-server unix:/tmp/echo.sock
 *
 * It prints "listening on ADDRESS" once ready. On Ctrl-C (SIGINT) or SIGTERM
 * it stops listening and gives every open connection CLOSE_DEADLINE to take
 * what is still queued for it; a peer that has not read it by then is cut
 * off (reset). The loop then has nothing left, run() returns, and its leak
 * gate (braid_loop_free) confirms nothing was forgotten. */
#include <braid.h>
#include <signal.h>
#include <stdio.h>

/* How long a connection may take to read what is queued for it once the
 * server shuts down: a client that stopped reading cannot keep it alive. */
#define CLOSE_DEADLINE BRAID_SECONDS(3)

typedef struct server {
    braid_loop *loop;
    braid_listener *listener;
    braid_signal sigint, sigterm;
    struct conn *conns;               /* open connections, to close them on exit */
    int status;
} server;

/* One per connection. braid allocates it (the factory knows its size) and
 * frees it after connection_lost. */
typedef struct conn {
    braid_protocol base;              /* first: braid sees a braid_protocol */
    struct conn *prev, *next;
} conn;

static void conn_made(braid_protocol *p) {
    server *s = p->user;              /* the factory's user pointer */
    conn *c = (conn *)p;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    /* Back-pressure: what we read is what we write, so the connection is the
     * producer of its own output. Once more than the high watermark (64 KiB)
     * waits to be sent, braid stops reading from this peer, and resumes when
     * it has read the echo down to the low one: a client that sends without
     * reading costs us 64 KiB, not the 4 MiB hard cap. */
    braid_transport_register_producer(p->transport, braid_transport_producer(p->transport), true);
}

/* The protocol sees bytes, never a socket: this same code echoes over TCP,
 * a Unix socket, a pipe, or the in-memory test transport. */
static void conn_data(braid_protocol *p, const void *buf, size_t len) {
    /* Buffered: writes made during one loop iteration leave in one system
     * call (see conn_made for what stops a peer that does not read). */
    braid_transport_write(p->transport, buf, len);
}

static void conn_lost(braid_protocol *p, const braid_failure *reason) {
    server *s = p->user;
    conn *c = (conn *)p;
    /* BRAID_ECONNECTION_DONE when clean; BRAID_ETIMEDOUT when we closed it
     * at shutdown and the peer had not read what was left by the deadline. */
    if (reason->code == BRAID_ETIMEDOUT) {
        char buf[256];
        braid_failure_format(reason, buf, sizeof buf);
        fprintf(stderr, "echo-server: cut off a client that did not read: %s\n", buf);
    }
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
}

static const braid_protocol_ops echo_ops = {
    .connection_made = conn_made, .data_received = conn_data, .connection_lost = conn_lost };

static void stop_signals(server *s) {
    braid_signal_stop(&s->sigint);
    braid_signal_stop(&s->sigterm);
}

/* braid_endpoint_listen answers with a Deferred, like everything in braid that has a
 * result: its callback gets the listener once listening works ... */
static braid_result listening(braid_result r, void *arg) {
    server *s = arg;
    s->listener = r.value;            /* ours now: closed at shutdown */
    braid_address a;
    char buf[128];
    braid_listener_address(s->listener, &a);
    printf("listening on %s\n", braid_address_format(&a, buf, sizeof buf));
    fflush(stdout);
    return braid_result_ok(NULL);
}

/* ... or the reason it did not (a bad endpoint string, a port in use). */
static braid_result failed(braid_result r, void *arg) {
    server *s = arg;
    char buf[256];
    braid_failure_format(r.failure, buf, sizeof buf);
    fprintf(stderr, "echo-server: %s\n", buf);
    braid_result_drop(r);             /* handled, so not reported as unhandled */
    stop_signals(s);                  /* nothing left to wait for: run() returns */
    s->status = 1;
    return braid_result_ok(NULL);
}

static void on_signal(braid_signal *sig, int signo, void *arg) {
    server *s = arg;
    (void)sig; (void)signo;
    braid_listener_close(s->listener);
    s->listener = NULL;
    /* Flush, close, and abort whoever is still not reading after the
     * deadline (BRAID_FOREVER would let such a peer keep us for ever). */
    for (conn *c = s->conns; c; c = c->next) braid_transport_close(c->base.transport, CLOSE_DEADLINE);
    stop_signals(s);                  /* run() returns when the last connection closed */
}

int main(int argc, char **argv) {
    const char *where = argc > 1 ? argv[1] : "tcp:8000:interface=127.0.0.1";
    server s = { 0 };
    if (braid_loop_new(NULL, &s.loop) < 0) return 1;   /* $BRAID_BACKEND picks the poller */
    braid_signal_start(s.loop, &s.sigint, SIGINT, on_signal, &s);
    braid_signal_start(s.loop, &s.sigterm, SIGTERM, on_signal, &s);

    braid_factory factory;
    braid_factory_init(&factory, &echo_ops, sizeof(conn), &s);

    /* then: the callbacks take the result and the Deferred is theirs — there
     * is nothing for us to release, and nothing to leak. */
    if (braid_deferred_then(braid_endpoint_listen(s.loop, where, &factory), listening, failed, &s) < 0)
        return 1;

    braid_loop_run(s.loop);           /* until nothing is left to do */
    if (braid_loop_free(s.loop) < 0) return 2;
    return s.status;
}
