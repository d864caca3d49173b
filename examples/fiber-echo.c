/* fiber-echo: a line-echo server written as one fiber per connection.
 *
 *     fiber-echo [ENDPOINT]          default: tcp:8000:interface=127.0.0.1
 *     fiber-echo unix:/tmp/echo.sock
 *
 * Compare with echo-server.c: there the protocol is a callback that sees
 * whatever bytes arrived; here each connection is plain sequential code
 * ("read a line, write it back") that blocks its own fiber, never the loop.
 * It prints "listening on ADDRESS" once ready; on SIGINT/SIGTERM it stops
 * listening and cancels every connection fiber (a blocked read or write
 * returns BRAID_ECANCELED); each gives its peer CLOSE_DEADLINE to take what
 * is queued, then closes, and the server exits once all have. */
#include <braid.h>
#include <signal.h>
#include <stdio.h>

#define LINE_MAX_BYTES 4096
#define IDLE_TIMEOUT BRAID_SECONDS(300)
/* How long a connection may take to read what is queued for it when it
 * ends: a client that stopped reading cannot keep the server alive. */
#define CLOSE_DEADLINE BRAID_SECONDS(3)

/* The conversation: read a line, write it back, until the peer closes or
 * something fails (BRAID_ECANCELED when the server shuts down). */
static int echo_lines(braid_fstream *s) {
    /* Fiber stacks are 64 KiB by default: a 4 KiB buffer is fine here. */
    char line[LINE_MAX_BYTES];
    for (;;) {
        /* Suspends this fiber until a whole line arrived (or the peer went
         * away, or it sat idle too long: BRAID_ETIMEDOUT). */
        ssize_t n = braid_fstream_read_line(s, line, sizeof line, '\n', IDLE_TIMEOUT);
        if (n == BRAID_EMSGSIZE) {
            static const char msg[] = "line too long\n";
            braid_fstream_write(s, msg, sizeof msg - 1, IDLE_TIMEOUT);
            return (int)n;
        }
        if (n <= 0) return (int)n;             /* 0: the peer closed cleanly */
        /* Queues the bytes; waits only if the peer is not reading what we send. */
        int rc = braid_fstream_write(s, line, (size_t)n, IDLE_TIMEOUT);
        if (rc < 0) return rc;
    }
}

/* One of these runs in its own fiber for every connection. */
static int connection(braid_fstream *s, void *arg) {
    (void)arg;
    int rc = echo_lines(s);
    /* However it ended, flush what is queued and close; a peer that does not
     * read it within the deadline is cut off (the close returns
     * BRAID_ETIMEDOUT). Waits after a cancellation work as usual. */
    int crc = braid_fstream_close(s, CLOSE_DEADLINE);
    if (crc == BRAID_ETIMEDOUT)
        fprintf(stderr, "fiber-echo: cut off a client that did not read what was left in time\n");
    return rc < 0 ? rc : crc;
}

typedef struct server {
    braid_listener *listener;
    braid_fstream_factory factory;
    braid_signal sigint, sigterm;
    int status;
} server;

static void stop_signals(server *s) {
    braid_signal_stop(&s->sigint);
    braid_signal_stop(&s->sigterm);
}

/* braid_endpoint_listen answers with a Deferred, like everything in braid that has a
 * result: its callback gets the listener once listening works ... */
static braid_result listening(braid_result r, void *arg) {
    server *s = arg;
    s->listener = r.value;                    /* ours now: closed at shutdown */
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
    fprintf(stderr, "fiber-echo: %s\n", buf);
    braid_result_drop(r);                     /* handled, so not reported as unhandled */
    stop_signals(s);                          /* nothing left to wait for: run() returns */
    s->status = 1;
    return braid_result_ok(NULL);
}

static void on_signal(braid_signal *sig, int signo, void *arg) {
    server *s = arg;
    (void)sig; (void)signo;
    braid_listener_close(s->listener);
    s->listener = NULL;
    braid_fstream_factory_cancel_all(&s->factory);
    stop_signals(s);                          /* run() returns once the fibers are done */
}

int main(int argc, char **argv) {
    const char *where = argc > 1 ? argv[1] : "tcp:8000:interface=127.0.0.1";
    server s = { 0 };
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return 1;
    braid_signal_start(loop, &s.sigint, SIGINT, on_signal, &s);
    braid_signal_start(loop, &s.sigterm, SIGTERM, on_signal, &s);

    /* A factory that spawns connection(stream, NULL) in a fiber per connection. */
    braid_fiber_options fo = { .name = "echo-conn" };
    braid_fstream_factory_init(loop, &s.factory, connection, NULL, &fo);

    if (braid_deferred_then(braid_endpoint_listen(loop, where, &s.factory.base), listening, failed,
                            &s) < 0)
        return 1;

    braid_loop_run(loop);                     /* until nothing is left to do */
    if (braid_loop_free(loop) < 0) return 2;   /* the leak gate */
    return s.status;
}
