/* status-server: an HTTP server whose work follows its context, logs as JSON
 * lines and shows its live state, written from <braid/context.h>,
 * <braid/log.h> and <braid/introspect.h> alone.
 *
 *     status-server 8080                 serve on 127.0.0.1:8080
 *     status-server --self-test          serve on a free port, fetch from itself, exit
 *
 * GET /work?ms=N   blocks a pool thread for N ms (sleep: a stand-in for a
 *                  slow database), then answers; every log line of that work
 *                  carries the request's id, whatever thread it is logged on
 * GET /_braid      the live state (page); /_braid.json the same as JSON
 *
 * Logs go to stderr as JSON lines; BRAID_LOG_DEBUG=1 shows the debug ones.
 * The self-test fetches /work?ms=300 and, while that blocks a pool thread,
 * /_braid.json (the pool shows one job running), then /nope (404), and
 * checks the answers; exit status 0 when all were as expected. */
#include <braid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct app {
    braid_loop *loop;
    braid_pool *pool;
    braid_http_server *srv;
    braid_listener *listener;
    braid_http_client *client;
    int port;
    int failures;
    int pending;
} app;

static app *the_app;   /* for the pool job's log line; one app per process */

/* ---- the work ---------------------------------------------------------------------------- */
static braid_result slow_job(void *arg) {
    long ms = (long)(intptr_t)arg;
    /* On a pool thread: the context came along, so this line has the id. */
    braid_log_emit(braid_loop_logger(the_app->loop), BRAID_LOG_INFO, "app.work",
                   braid_log_fields(BRAID_LOG_I64("ms", ms)), "blocking for %ld ms", ms);
    usleep((useconds_t)ms * 1000);
    return braid_result_ok((void *)(intptr_t)ms);
}

static braid_result work_done(braid_result r, void *arg) {
    (void)arg;
    if (r.failure) return r;                     /* the server answers 500 */
    long ms = (long)(intptr_t)r.value;
    char body[96];
    int n = snprintf(body, sizeof body, "worked %ld ms for request %llu\n", ms,
                     (unsigned long long)braid_ctx_get_u64(&braid_log_request_id_key, 0));
    braid_log_emit(braid_loop_logger(the_app->loop), BRAID_LOG_INFO, "app.work", braid_log_no_fields,
                   "answered");
    braid_http_response *resp = NULL;
    if (braid_http_response_new(200, "text/plain", body, (size_t)n, &resp) < 0) return braid_result_err(braid_failure_new(BRAID_ENOMEM, NULL));
    return braid_result_ok_owned(resp, braid_http_response_free);
}

static braid_deferred *h_work(braid_http_request *req, void *arg) {
    app *a = arg;
    long ms = 100;
    char *end = NULL;
    if (req->query && req->query_len > 3 && !strncmp(req->query, "ms=", 3))
        ms = strtol(req->query + 3, &end, 10);
    if (ms < 0 || ms > 10000 || (end && end != req->query + req->query_len)) {
        braid_http_request_respond(req, 400, "text/plain", "ms must be 0..10000\n", 20);
        return NULL;
    }
    braid_deferred *d = braid_pool_defer(a->loop, a->pool, slow_job, (void *)(intptr_t)ms);
    braid_deferred_add_callback(d, work_done, NULL);
    return d;
}

/* ---- the self-test --------------------------------------------------------------------------- */
typedef struct check {
    app *a;
    const char *what;
    int want_status;
    const char *want_text;
} check;

static void maybe_stop(app *a) {
    if (--a->pending > 0) return;
    braid_listener_close(a->listener);
    braid_http_server_shutdown(a->srv);
    braid_loop_stop(a->loop);
}

static braid_result checked(braid_result r, void *arg) {
    check *c = arg;
    app *a = c->a;
    if (r.failure) {
        fprintf(stderr, "self-test: %s failed: %s\n", c->what, r.failure->message ? r.failure->message : braid_strerror(r.failure->code));
        a->failures++;
    } else {
        braid_http_client_response *resp = r.value;
        bool ok = resp->status == c->want_status &&
                  (!c->want_text || (resp->body && strstr(resp->body, c->want_text)));
        fprintf(stderr, "self-test: %s -> %d %s\n", c->what, resp->status, ok ? "ok" : "UNEXPECTED");
        if (!ok) {
            fprintf(stderr, "%.*s\n", (int)resp->body_len, resp->body ? resp->body : "");
            a->failures++;
        }
    }
    braid_result_drop(r);
    free(c);
    maybe_stop(a);
    return braid_result_ok(NULL);
}

static void fetch(app *a, const char *path, int want_status, const char *want_text) {
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", a->port, path);
    check *c = malloc(sizeof *c);
    *c = (check){ a, path, want_status, want_text };
    a->pending++;
    braid_deferred *d = braid_http_client_request(a->client, &(braid_http_client_req){ .url = url });
    braid_deferred_add_both(d, checked, c);
    braid_deferred_unref(d);
}

/* While /work blocks a pool thread, the state shows it running. */
static void look_while_busy(void *arg) {
    app *a = arg;
    fetch(a, "/_braid.json", 200, "\"running\":1");
    fetch(a, "/_braid", 200, "<svg");
    fetch(a, "/nope", 404, NULL);
}

static braid_result listening(braid_result r, void *arg) {
    app *a = arg;
    if (r.failure) {
        fprintf(stderr, "listen: %s\n", r.failure->message ? r.failure->message : braid_strerror(r.failure->code));
        braid_result_drop(r);
        braid_loop_stop(a->loop);
        a->failures++;
        return braid_result_ok(NULL);
    }
    a->listener = r.value;
    braid_address addr;
    if (braid_listener_address(a->listener, &addr) == 0) a->port = braid_address_port(&addr);
    braid_log_emit(braid_loop_logger(a->loop), BRAID_LOG_INFO, "app", braid_log_fields(BRAID_LOG_I64("port", a->port)),
                   "listening; state at http://127.0.0.1:%d/_braid", a->port);
    if (a->client) {
        fetch(a, "/work?ms=300", 200, "worked 300 ms");
        braid_timer_call_later(a->loop, BRAID_MSEC(100), look_while_busy, a);
    }
    return braid_result_ok(NULL);
}

int main(int argc, char **argv) {
    bool self_test = argc > 1 && !strcmp(argv[1], "--self-test");
    int port = !self_test && argc > 1 ? atoi(argv[1]) : self_test ? 0 : 8080;
    app a = { 0 };
    the_app = &a;
    if (braid_loop_new(NULL, &a.loop) < 0) return 1;
    braid_log_observer *json;
    braid_logger_add_json(braid_loop_logger(a.loop), 2, &json);
    if (braid_pool_new(&(braid_pool_options){ .name = "work", .max_threads = 2, .loop = a.loop }, &a.pool) < 0)
        return 1;
    if (braid_http_server_new(a.loop, NULL, &a.srv) < 0) return 1;
    braid_http_server_route(a.srv, "GET", "/work", 0, h_work, &a);
    braid_http_introspection_route(a.srv, "/_braid");
    if (self_test && braid_http_client_new(a.loop, NULL, &a.client) < 0) return 1;
    char ep[64];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1", port);
    braid_deferred *d = braid_http_server_listen(a.srv, ep);
    braid_deferred_add_both(d, listening, &a);
    braid_deferred_unref(d);
    braid_loop_run(a.loop);

    /* Stopped (self-test) or interrupted: close what is left and check. */
    if (a.client) braid_http_client_free(a.client);
    braid_http_server_shutdown(a.srv);
    for (int i = 0; i < 100 && braid_http_server_connections(a.srv) > 0; i++)
        braid_loop_run_once(a.loop, BRAID_LOOP_RUN_NOWAIT);
    braid_http_server_free(a.srv);
    braid_pool_free(a.pool);
    braid_loop_run_once(a.loop, BRAID_LOOP_RUN_NOWAIT);
    int rc = braid_loop_free(a.loop);
    if (rc < 0) fprintf(stderr, "loop destroy: %s\n", braid_strerror(rc));
    return a.failures || rc < 0 ? 1 : 0;
}
