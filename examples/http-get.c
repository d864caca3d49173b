/* http-get: fetch a URL with braid's HTTP client and stream the body to
 * stdout (status line and headers to stderr).
 *
 *     http-get http://127.0.0.1:8080/
 *     http-get -L https://example.com/        (-L: follow up to 10 redirects)
 *
 * https verifies the server against the system CA store. Exit status 0 for a
 * 2xx response read to its end, 1 otherwise.
 *
 * Shutting down: once the response has ended (or failed), the client is
 * freed, which closes its kept-alive connection. The loop then has nothing
 * left to wait for, braid_loop_run returns by itself, and the leak gate
 * (braid_loop_free) confirms everything was closed. */
#include <braid.h>
#include <stdio.h>
#include <string.h>

typedef struct get {
    braid_loop *loop;
    braid_http_client *client;
    braid_soon done;                  /* frees the client, outside its callbacks */
    int status;
} get;

/* The client is not freed from inside one of its own callbacks: this runs
 * in the loop's ready phase, after them. */
static void free_client(void *arg) {
    get *g = arg;
    braid_http_client_free(g->client);
    g->client = NULL;
}
static void finish(get *g, int status) {
    g->status = status;
    g->done = (braid_soon){ .fn = free_client, .arg = g };
    braid_loop_soon_node(g->loop, &g->done);
}

static void on_body(braid_http_client_response *r, const void *buf, size_t len, void *arg) {
    (void)r, (void)arg;
    fwrite(buf, 1, len, stdout);
}

static void on_end(braid_http_client_response *r, int code, void *arg) {
    get *g = arg;
    if (code < 0) fprintf(stderr, "http-get: body: %s\n", braid_strerror(code));
    finish(g, code == 0 && r->status >= 200 && r->status < 300 ? 0 : 1);
}

static braid_result on_head(braid_result r, void *arg) {
    (void)arg;
    braid_http_client_response *resp = r.value;   /* borrowed in streaming mode */
    fprintf(stderr, "HTTP/1.%d %d %s\n", resp->minor_version, resp->status, resp->reason);
    for (size_t i = 0; i < resp->num_headers; i++)
        fprintf(stderr, "%s: %s\n", resp->headers[i].name, resp->headers[i].value);
    fprintf(stderr, "\n");
    return r;
}

static braid_result on_fail(braid_result r, void *arg) {
    get *g = arg;
    char msg[512];
    braid_failure_format(r.failure, msg, sizeof msg);
    fprintf(stderr, "http-get: %s\n", msg);
    braid_result_drop(r);             /* handled, so not reported as unhandled */
    finish(g, 1);
    return braid_result_ok(NULL);
}

int main(int argc, char **argv) {
    int follow = 0, i = 1;
    if (i < argc && !strcmp(argv[i], "-L")) { follow = 10; i++; }
    if (i != argc - 1) {
        fprintf(stderr, "usage: http-get [-L] URL\n");
        return 2;
    }
    get g = { .status = 1 };
    if (braid_loop_new(NULL, &g.loop) < 0) return 1;
    if (braid_http_client_new(g.loop, &(braid_http_client_options){ .max_redirects = follow },
                              &g.client) < 0)
        return 1;
    braid_deferred *d = braid_http_client_request(g.client, &(braid_http_client_req){
        .url = argv[i], .on_body = on_body, .on_end = on_end, .arg = &g });
    if (braid_deferred_then(d, on_head, on_fail, &g) < 0) return 1;
    braid_loop_run(g.loop);           /* returns once the client and its connection are gone */
    fflush(stdout);
    if (braid_loop_free(g.loop) < 0) return 1;
    return g.status;
}
