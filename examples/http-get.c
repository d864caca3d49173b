/* http-get: fetch a URL with braid's HTTP client and stream the body to
 * stdout (status line and headers to stderr).
 *
 *     http-get http://127.0.0.1:8080/
 *     http-get -L https://example.com/        (-L: follow up to 10 redirects)
 *
 * https verifies the server against the system CA store. Exit status 0 for a
 * 2xx response read to its end, 1 otherwise. */
#include <braid.h>
#include <stdio.h>
#include <string.h>

typedef struct get { braid_loop *loop; int status; } get;

static void on_body(braid_http_client_response *r, const void *buf, size_t len, void *arg) {
    (void)r, (void)arg;
    fwrite(buf, 1, len, stdout);
}

static void on_end(braid_http_client_response *r, int code, void *arg) {
    get *g = arg;
    if (code < 0) {
        fprintf(stderr, "http-get: body: %s\n", braid_strerror(code));
        g->status = 1;
    } else {
        g->status = r->status >= 200 && r->status < 300 ? 0 : 1;
    }
    braid_loop_stop(g->loop);
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
    braid_result_drop(r);
    g->status = 1;
    braid_loop_stop(g->loop);
    return braid_ok(NULL);
}

int main(int argc, char **argv) {
    int follow = 0, i = 1;
    if (i < argc && !strcmp(argv[i], "-L")) { follow = 10; i++; }
    if (i != argc - 1) {
        fprintf(stderr, "usage: http-get [-L] URL\n");
        return 2;
    }
    get g = { .status = 1 };
    if (braid_loop_new(&g.loop, NULL) < 0) return 1;
    braid_http_client *c;
    if (braid_http_client_new(g.loop, &(braid_http_client_options){ .max_redirects = follow }, &c) < 0) return 1;
    braid_deferred *d = braid_http_client_request(c, &(braid_http_client_req){
        .url = argv[i], .on_body = on_body, .on_end = on_end, .arg = &g });
    if (!d) return 1;
    braid_deferred_add_callbacks(d, on_head, on_fail, &g);
    braid_deferred_release(d);
    braid_loop_run(g.loop);
    braid_http_client_free(c);
    for (int n = 0; n < 3; n++) braid_loop_run_once(g.loop, BRAID_RUN_NOWAIT);
    braid_loop_destroy(g.loop);
    return g.status;
}
