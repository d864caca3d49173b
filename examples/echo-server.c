/* echo-server: the smallest useful braid server.
 *
 *     echo-server [ENDPOINT]          default: tcp:8000:interface=127.0.0.1
 *     echo-server unix:/tmp/echo.sock
 *
 * It prints "listening on ADDRESS" once ready. On Ctrl-C (SIGINT) or SIGTERM
 * it stops listening, asks every open connection to flush and close, and
 * exits once they have: the loop then has nothing left, and its leak gate
 * (braid_loop_destroy) confirms nothing was forgotten. */
#include <braid.h>
#include <signal.h>
#include <stdio.h>

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
}

/* The protocol sees bytes, never a socket: this same code echoes over TCP,
 * a Unix socket, a pipe, or the in-memory test transport. */
static void conn_data(braid_protocol *p, const void *buf, size_t len) {
    /* Buffered and flow-controlled: writes made during one loop iteration
     * leave in one system call, and a peer that stops reading cannot grow
     * this buffer past its cap (4 MiB by default). */
    braid_transport_write(p->transport, buf, len);
}

static void conn_lost(braid_protocol *p, const braid_failure *reason) {
    server *s = p->user;
    conn *c = (conn *)p;
    (void)reason;                     /* BRAID_ECONNECTION_DONE when clean */
    if (c->prev) c->prev->next = c->next; else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
}

static const braid_protocol_ops echo_ops = {
    .connection_made = conn_made, .data_received = conn_data, .connection_lost = conn_lost };

static void stop_signals(server *s) {
    braid_signal_stop(&s->sigint);
    braid_signal_stop(&s->sigterm);
}

/* braid_listen's Deferred: the listener, once listening works ... */
static braid_result listening(braid_result r, void *arg) {
    server *s = arg;
    s->listener = r.value;
    braid_address a;
    char buf[128];
    braid_listener_address(s->listener, &a);
    printf("listening on %s\n", braid_address_format(&a, buf, sizeof buf));
    fflush(stdout);
    return r;
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
    return braid_ok(NULL);
}

static void on_signal(braid_signal *sig, int signo, void *arg) {
    server *s = arg;
    (void)sig; (void)signo;
    braid_listener_close(s->listener);
    s->listener = NULL;
    for (conn *c = s->conns; c; c = c->next) braid_transport_lose_connection(c->base.transport);
    stop_signals(s);                  /* run() returns when the last connection closed */
}

int main(int argc, char **argv) {
    const char *where = argc > 1 ? argv[1] : "tcp:8000:interface=127.0.0.1";
    server s = { 0 };
    if (braid_loop_new(&s.loop, NULL) < 0) return 1;   /* $BRAID_BACKEND picks the poller */
    braid_signal_start(s.loop, &s.sigint, SIGINT, on_signal, &s);
    braid_signal_start(s.loop, &s.sigterm, SIGTERM, on_signal, &s);

    braid_factory factory;
    braid_factory_init(&factory, &echo_ops, sizeof(conn), &s);

    braid_deferred *d = braid_listen(s.loop, where, &factory);
    braid_deferred_add_callbacks(d, listening, failed, &s);
    braid_deferred_release(d);

    braid_loop_run(s.loop);           /* until nothing is left to do */
    if (braid_loop_destroy(s.loop) < 0) return 2;
    return s.status;
}
