/* staged-http: Haboob's shape (SEDA, SOSP 2001) on braid's HTTP server.
 *
 *     staged-http ROOT [ENDPOINT] [DISK_DELAY_MS]
 *         ENDPOINT       default tcp:8080:interface=127.0.0.1
 *         DISK_DELAY_MS  extra time each file read takes (0), to see overload
 *
 *     GET /<path>   a file under ROOT, through the stages below
 *     GET /stages   the stage graph with live counters (JSON)
 *
 * The server parses on the loop (braid's HTTP server) and hands each request
 * to three stages:
 *
 *     cache  (loop)   a small page cache: a hit is answered at once, a miss
 *                     goes on to the disk stage;
 *     disk   (pool)   reads the file on a pool of 4 threads, behind a queue of
 *                     128 whose admission the response-time controller drives
 *                     (target 100 ms for the 90th percentile);
 *     reply  (loop)   puts the page in the cache and answers.
 *
 * cache and reply are stages of the loop's domain, so a request going from
 * one to the other is a direct call; disk is in the pool's domain. A request
 * the disk stage refuses (queue full, or the controller's rate) is answered
 * "503 Service Unavailable" with Retry-After at once: under overload the
 * server answers the requests it takes within its target and tells the rest
 * to come back, instead of answering everyone late. Ctrl-C stops it.
 *
 * Deferreds are loop-affine: a request's Deferred is only touched on the
 * loop's thread. The disk handler forwards every event to reply (a queue
 * as large as the server will ever hold), and an event that still cannot
 * go on is freed on the loop (braid_loop_post), never on a pool thread. */
#include <braid.h>
#include <braid/stage.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CACHE_SLOTS 64
#define MAX_FILE (1u << 20)

typedef struct page { char *path; char *body; size_t len; } page;

typedef struct app {
    braid_loop *loop;
    braid_pool *pool;
    braid_http_server *server;
    braid_listener *listener;
    braid_stage_domain *on_loop, *on_pool;
    braid_stage *cache, *disk, *reply;
    braid_signal sigint, sigterm;
    const char *root;
    long delay_ms;
    page cache_pages[CACHE_SLOTS];   /* loop thread only; evicted round robin */
    unsigned next_slot;
    int status;
    bool stopping;
} app;

/* One request on its way through the stages. */
typedef struct job {
    app *a;
    braid_deferred *d;   /* answered with a braid_http_response *; loop thread only */
    char *path;
    char *body;
    size_t len;
    int status;
} job;

/* Loop thread: the job's Deferred still needs an answer if it was dropped. */
static void job_free(void *p) {
    job *j = p;
    if (j->d) braid_deferred_errback(j->d, braid_failure_new(BRAID_ESHUTDOWN, "request dropped"));
    free(j->path);
    free(j->body);
    free(j);
}
static void job_free_on_loop(void *p) { job_free(p); }

static void answer(job *j, int status, const char *type, const char *body, size_t len, bool retry) {
    braid_http_response *r = NULL;
    braid_http_response_new(status, type, body, len, &r);
    if (r && retry) braid_http_response_add_header(r, "Retry-After", "1");
    braid_deferred *d = j->d;
    j->d = NULL;
    if (r) braid_deferred_callback(d, r, braid_http_response_free);
    else braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, NULL));
}

static void busy(job *j, int why) {
    char msg[96];
    int n = snprintf(msg, sizeof msg, "busy (%s), try again\n", braid_strerror(why));
    answer(j, 503, "text/plain", msg, (size_t)n, true);
}

/* ---- cache (loop) ---------------------------------------------------------------------------- */
static void cache_stage(braid_stage *st, braid_stage_event *ev, size_t n, void *arg) {
    (void)st;
    app *a = arg;
    for (size_t i = 0; i < n; i++) {
        job *j = ev[i].data;
        for (int k = 0; k < CACHE_SLOTS; k++) {
            page *p = &a->cache_pages[k];
            if (p->path && !strcmp(p->path, j->path)) {
                answer(j, 200, "application/octet-stream", p->body, p->len, false);
                goto next;
            }
        }
        int rc = braid_stage_enqueue(a->disk, &ev[i]);
        if (rc < 0) busy(j, rc);   /* the event stays ours: freed when we return */
    next:;
    }
}

/* ---- disk (pool) ------------------------------------------------------------------------------ */
static void read_page(app *a, job *j) {
    if (strstr(j->path, "..")) { j->status = 404; return; }
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", a->root, j->path);
    int fd = open(full, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { j->status = 404; return; }
    j->body = malloc(MAX_FILE);
    ssize_t got = j->body ? read(fd, j->body, MAX_FILE) : -1;
    close(fd);
    if (got < 0) { j->status = 500; return; }
    j->len = (size_t)got;
    j->status = 200;
    if (a->delay_ms) nanosleep(&(struct timespec){ a->delay_ms / 1000, (a->delay_ms % 1000) * 1000000 }, NULL);
}

static void disk_stage(braid_stage *st, braid_stage_event *ev, size_t n, void *arg) {
    (void)st;
    app *a = arg;
    for (size_t i = 0; i < n; i++) {
        read_page(a, ev[i].data);
        if (braid_stage_enqueue(a->reply, &ev[i]) < 0) {
            /* Not on a pool thread: the job holds a Deferred. */
            if (braid_loop_post(a->loop, job_free_on_loop, ev[i].data) == 0) ev[i].data = NULL;
            else abort();   /* cannot allocate a post node: nothing safe is left */
        }
    }
}

/* ---- reply (loop) ----------------------------------------------------------------------------- */
static void reply_stage(braid_stage *st, braid_stage_event *ev, size_t n, void *arg) {
    (void)st;
    app *a = arg;
    for (size_t i = 0; i < n; i++) {
        job *j = ev[i].data;
        if (j->status != 200) {
            const char *m = j->status == 404 ? "not found\n" : "read failed\n";
            answer(j, j->status, "text/plain", m, strlen(m), false);
            continue;
        }
        page *p = &a->cache_pages[a->next_slot++ % CACHE_SLOTS];
        free(p->path);
        free(p->body);
        p->path = strdup(j->path);
        p->body = j->body;   /* the cache takes the body */
        p->len = j->len;
        j->body = NULL;
        answer(j, 200, "application/octet-stream", p->body, p->len, false);
    }
}

/* ---- HTTP (loop) ------------------------------------------------------------------------------ */
static braid_deferred *get_file(braid_http_request *req, void *arg) {
    app *a = arg;
    job *j = calloc(1, sizeof *j);
    if (!j || !(j->path = strndup(req->path + 1, req->path_len - 1))) {
        free(j);
        braid_http_request_respond(req, 500, "text/plain", "out of memory\n", 14);
        return NULL;
    }
    j->a = a;
    j->d = braid_deferred_new(a->loop);
    if (!j->d) {
        job_free(j);
        braid_http_request_respond(req, 500, "text/plain", "out of memory\n", 14);
        return NULL;
    }
    braid_deferred *d = j->d;   /* its consumer reference goes to the server; the job keeps the producer one */
    braid_stage_event e = BRAID_STAGE_EVENT(j, job_free);
    int rc = braid_stage_enqueue(a->cache, &e);
    if (rc < 0) {
        busy(j, rc);
        job_free(j);
    }
    return d;
}

static braid_deferred *get_stages(braid_http_request *req, void *arg) {
    app *a = arg;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f) return NULL;
    braid_stage_dump(a->loop, BRAID_STAGE_JSON, f);
    fclose(f);
    braid_http_request_respond(req, 200, "application/json", buf, len);
    free(buf);
    return NULL;
}

/* ---- start and stop --------------------------------------------------------------------------- */
static braid_result listening(braid_result r, void *arg) {
    app *a = arg;
    a->listener = r.value;
    braid_address addr;
    char buf[128];
    braid_listener_address(a->listener, &addr);
    printf("listening on %s\n", braid_address_format(&addr, buf, sizeof buf));
    fflush(stdout);
    return braid_result_ok(NULL);
}

static void stop(app *a) {
    a->stopping = true;
    braid_signal_stop(&a->sigint);
    braid_signal_stop(&a->sigterm);
    if (a->listener) braid_listener_close(a->listener);
    a->listener = NULL;
    braid_http_server_shutdown(a->server);
}

static braid_result failed(braid_result r, void *arg) {
    app *a = arg;
    char buf[256];
    braid_failure_format(r.failure, buf, sizeof buf);
    fprintf(stderr, "staged-http: %s\n", buf);
    braid_result_drop(r);
    a->status = 1;
    stop(a);
    return braid_result_ok(NULL);
}

static void on_signal(braid_signal *s, int signo, void *arg) {
    (void)s, (void)signo;
    stop(arg);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: staged-http ROOT [ENDPOINT] [DISK_DELAY_MS]\n");
        return 2;
    }
    static app a;
    a.root = argv[1];
    const char *where = argc > 2 ? argv[2] : "tcp:8080:interface=127.0.0.1";
    a.delay_ms = argc > 3 ? atol(argv[3]) : 0;
    if (braid_loop_new(NULL, &a.loop) < 0) return 1;
    if (braid_pool_new(&(braid_pool_options){ .max_threads = 4, .name = "disk", .loop = a.loop }, &a.pool) < 0)
        return 1;
    if (braid_stage_domain_new(a.loop, NULL, NULL, &a.on_loop) < 0 ||
        braid_stage_domain_new(a.loop, a.pool, &(braid_stage_domain_options){ .name = "disk pool" }, &a.on_pool) < 0 ||
        braid_stage_new(a.on_loop, "cache", cache_stage, &a, &(braid_stage_options){ .queue_limit = 4096 }, &a.cache) < 0 ||
        braid_stage_new(a.on_pool, "disk", disk_stage, &a,
                        &(braid_stage_options){ .queue_limit = 128, .batch_max = 1, .threads = 4 }, &a.disk) < 0 ||
        braid_stage_new(a.on_loop, "reply", reply_stage, &a, &(braid_stage_options){ .queue_limit = 1u << 16 },
                        &a.reply) < 0)
        return 1;
    braid_stage_response_control rc = { .period = BRAID_MSEC(100), .target = BRAID_MSEC(100),
                                        .rate_max = 20000, .rate_start = 2000, .add = 100, .cut = 0.9,
                                        .depth = 64 };
    if (braid_stage_control_response(a.disk, &rc) < 0) return 1;

    if (braid_http_server_new(a.loop, NULL, &a.server) < 0) return 1;
    braid_http_server_route(a.server, "GET", "/stages", 0, get_stages, &a);
    braid_http_server_route(a.server, "GET", "/", BRAID_HTTP_ROUTE_PREFIX, get_file, &a);
    braid_signal_start(a.loop, &a.sigint, SIGINT, on_signal, &a);
    braid_signal_start(a.loop, &a.sigterm, SIGTERM, on_signal, &a);
    braid_deferred *d = braid_http_server_listen(a.server, where);
    braid_deferred_add(d, listening, failed, &a);
    braid_deferred_unref(d);

    /* The controller's timer keeps the loop running; stop() ends the
     * connections, then we take the stages down. */
    while (!(a.stopping && braid_http_server_connections(a.server) == 0))
        if (braid_loop_run_once(a.loop, 0) < 0) break;
    braid_stage_free(a.cache);
    braid_stage_free(a.disk);
    braid_stage_free(a.reply);
    braid_stage_domain_free(a.on_loop);
    braid_stage_domain_free(a.on_pool);
    braid_loop_run_once(a.loop, BRAID_LOOP_RUN_NOWAIT);   /* wake-ups still posted */
    braid_http_server_free(a.server);
    braid_pool_free(a.pool);
    for (int k = 0; k < CACHE_SLOTS; k++) {
        free(a.cache_pages[k].path);
        free(a.cache_pages[k].body);
    }
    if (braid_loop_free(a.loop) < 0) return 3;
    return a.status;
}
