/* echo-client: connect, send each argument as a line, print what comes
 * back, and close once everything sent has been echoed.
 *
 *     echo-client tcp:host=127.0.0.1:port=8000:timeout=5 hello world
 *     echo-client unix:path=/tmp/echo.sock hello
 *
 * Exit status 0 when all bytes came back, 1 on any failure. */
#include <braid.h>
#include <stdio.h>
#include <string.h>

typedef struct client {
    braid_loop *loop;
    size_t expected, received;        /* bytes sent / bytes echoed so far */
    int status;
    char **words;
    int nwords;
} client;

static void on_made(braid_protocol *p) {
    client *c = p->user;
    /* Several writes in one go: braid sends them in one system call. */
    for (int i = 0; i < c->nwords; i++) {
        braid_transport_write(p->transport, c->words[i], strlen(c->words[i]));
        braid_transport_write(p->transport, "\n", 1);
        c->expected += strlen(c->words[i]) + 1;
    }
}

static void on_data(braid_protocol *p, const void *buf, size_t len) {
    client *c = p->user;
    fwrite(buf, 1, len, stdout);
    c->received += len;
    if (c->received >= c->expected) braid_transport_close(p->transport, BRAID_SECONDS(5));
}

static void on_lost(braid_protocol *p, const braid_failure *reason) {
    client *c = p->user;
    if (c->received < c->expected) {
        fprintf(stderr, "echo-client: connection lost early: %s\n", braid_strerror(reason->code));
        c->status = 1;
    }
}

static const braid_protocol_ops client_ops = {
    .connection_made = on_made, .data_received = on_data, .connection_lost = on_lost };

/* braid_endpoint_connect's Deferred fails if the connection could not be made. */
static braid_result connect_failed(braid_result r, void *arg) {
    client *c = arg;
    char buf[256];
    braid_failure_format(r.failure, buf, sizeof buf);
    fprintf(stderr, "echo-client: %s\n", buf);
    c->status = 1;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: echo-client ENDPOINT WORD...\n");
        return 1;
    }
    client c = { .words = argv + 2, .nwords = argc - 2 };
    if (braid_loop_new(NULL, &c.loop) < 0) return 1;
    braid_factory factory;
    braid_factory_init(&factory, &client_ops, sizeof(braid_protocol), &c);
    /* Only the errback: the protocol starts in connection_made. */
    if (braid_deferred_then(braid_endpoint_connect(c.loop, argv[1], &factory), NULL, connect_failed,
                            &c) < 0)
        return 1;
    braid_loop_run(c.loop);           /* returns when the connection is over */
    fflush(stdout);
    if (braid_loop_free(c.loop) < 0) return 1;
    return c.status;
}
