/* fiber-echo: a line-echo server written as one fiber per connection.
 *
 *     fiber-echo [ENDPOINT]          default: tcp:8000:interface=127.0.0.1
 *     fiber-echo unix:/tmp/echo.sock
 *
 * Compare with echo-server.c: there the protocol is a callback that sees
 * whatever bytes arrived; here each connection is plain sequential code
 * ("read a line, write it back") that blocks its own fiber, never the loop.
 * It prints "listening on ADDRESS" once ready; on SIGINT/SIGTERM it stops
 * listening, cancels every connection fiber (a blocked read returns
 * BRAID_ECANCELED) and exits once they have closed. */
#include <braid.h>
#include <signal.h>
#include <stdio.h>

#define LINE_MAX_BYTES 4096
#define IDLE_TIMEOUT BRAID_SECONDS(300)

/* One of these runs in its own fiber for every connection. Returning closes
 * the connection (after what was written has been sent). */
static int echo_lines(braid_fstream *s, void *arg) {
    (void)arg;
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

typedef struct server {
    braid_listener *listener;
    braid_fstream_factory factory;
    braid_signal sigint, sigterm;
} server;

static void on_signal(braid_signal *sig, int signo, void *arg) {
    server *s = arg;
    (void)sig; (void)signo;
    if (s->listener) braid_listener_close(s->listener);
    s->listener = NULL;
    braid_fstream_factory_cancel_all(&s->factory);
    braid_signal_stop(&s->sigint);
    braid_signal_stop(&s->sigterm);          /* run() returns once the fibers are done */
}

int main(int argc, char **argv) {
    const char *where = argc > 1 ? argv[1] : "tcp:8000:interface=127.0.0.1";
    server s = { 0 };
    braid_loop *loop;
    if (braid_loop_new(&loop, NULL) < 0) return 1;

    /* A factory that spawns echo_lines(stream, NULL) in a fiber per connection. */
    braid_fiber_options fo = { .name = "echo-conn" };
    braid_fstream_factory_init(&s.factory, loop, echo_lines, NULL, &fo);

    braid_deferred *d = braid_listen(loop, where, &s.factory.base);
    braid_result r = braid_ok(NULL);
    braid_deferred_take(d, &r);               /* listening is immediate: d has fired */
    braid_deferred_release(d);
    if (r.failure) {
        char buf[256];
        braid_failure_format(r.failure, buf, sizeof buf);
        fprintf(stderr, "fiber-echo: %s\n", buf);
        braid_result_drop(r);
        braid_loop_destroy(loop);
        return 1;
    }
    s.listener = r.value;
    braid_address a;
    char buf[128];
    braid_listener_address(s.listener, &a);
    printf("listening on %s\n", braid_address_format(&a, buf, sizeof buf));
    fflush(stdout);

    braid_signal_start(loop, &s.sigint, SIGINT, on_signal, &s);
    braid_signal_start(loop, &s.sigterm, SIGTERM, on_signal, &s);
    braid_loop_run(loop);                     /* until nothing is left to do */
    return braid_loop_destroy(loop) < 0 ? 2 : 0;   /* the leak gate */
}
