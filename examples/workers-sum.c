/* workers-sum: events use one CPU, processes use the others.
 *
 * The parent makes a data set (N million 32-bit numbers), copies it once
 * to each of W worker processes ("load"), then hands out the work — "sum
 * the squares of numbers [a, b) modulo m" — in chunks through the pool's
 * pipes, least-loaded first, and adds the answers up. Nothing is shared,
 * nothing needs a mutex: the data is copied and the work goes through
 * pipes. The same binary is parent and worker (braid_worker_is_child).
 *
 *     workers-sum [MILLIONS=8] [WORKERS=#cpus] [CHUNKS=64]
 *
 * It checks the result against a sum made in the parent, and prints the
 * time both took. A worker that dies is replaced by the pool, and the
 * chunks are marked idempotent, so they are sent again once (a new
 * worker has no data set, though: it answers that chunk with an error). */
#include <braid.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* ---- the worker ------------------------------------------------------------------------ */
static uint32_t *data;
static size_t ndata;

static void load(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    free(data);
    data = malloc(len ? len : 1);
    if (!data) { braid_worker_call_fail(c, BRAID_ENOMEM, "no memory for the data set"); return; }
    memcpy(data, buf, len);
    ndata = len / sizeof *data;
    braid_worker_call_reply(c, NULL, 0);
}

typedef struct range { uint64_t a, b; } range;

#define MOD 1000000007ull

/* The work per number: a few rounds of modular squaring, enough that the
 * work and not the copying dominates. */
static uint64_t work(uint32_t v) {
    const uint64_t m = MOD;
    uint64_t x = v % m;
    for (int k = 0; k < 16; k++) x = x * x % m;
    return x;
}

static void sum(braid_worker_call *c, const void *buf, size_t len, void *arg) {
    (void)arg;
    range r;
    if (len != sizeof r) { braid_worker_call_fail(c, BRAID_EINVAL, "bad range"); return; }
    memcpy(&r, buf, sizeof r);
    if (r.b > ndata || r.a > r.b) { braid_worker_call_fail(c, BRAID_EINVAL, "range outside the data"); return; }
    uint64_t s = 0;
    for (uint64_t i = r.a; i < r.b; i++) s = (s + work(data[i])) % MOD;
    braid_worker_call_reply(c, &s, sizeof s);
}

static const braid_worker_command commands[] = { { "load", load, NULL }, { "sum", sum, NULL } };

/* ---- the parent ---------------------------------------------------------------------------- */
typedef struct job {
    braid_loop *loop;
    braid_workers *w;
    uint64_t total, m;
    size_t pending, failed;
} job;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static braid_result loaded(braid_result r, void *arg) {
    job *j = arg;
    j->pending--;
    return r;
}
static braid_result summed(braid_result r, void *arg) {
    job *j = arg;
    braid_worker_reply *rep = r.value;
    uint64_t s;
    memcpy(&s, rep->data, sizeof s);
    j->total = (j->total + s) % j->m;
    j->pending--;
    return r;
}
static braid_result failed(braid_result r, void *arg) {
    job *j = arg;
    fprintf(stderr, "workers-sum: %s\n", r.failure->message ? r.failure->message : braid_strerror(r.failure->code));
    j->failed++;
    j->pending--;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static void run_until_done(job *j) {
    while (j->pending) braid_loop_run_once(j->loop, 0);
}

int main(int argc, char **argv) {
    if (braid_worker_is_child()) return braid_worker_main(NULL, commands, 2);

    size_t millions = argc > 1 ? (size_t)atol(argv[1]) : 8;
    unsigned nworkers = argc > 2 ? (unsigned)atoi(argv[2]) : 0;
    size_t chunks = argc > 3 ? (size_t)atol(argv[3]) : 64;
    ndata = millions * 1000000;
    if (!ndata || !chunks) { fprintf(stderr, "usage: workers-sum [MILLIONS] [WORKERS] [CHUNKS]\n"); return 2; }
    data = malloc(ndata * sizeof *data);
    if (!data) return 1;
    uint32_t x = 12345;
    for (size_t i = 0; i < ndata; i++) data[i] = x = x * 1103515245u + 12345u;
    const uint64_t m = MOD;

    double t0 = now_s();
    uint64_t want = 0;
    for (size_t i = 0; i < ndata; i++) want = (want + work(data[i])) % m;
    double t_one = now_s() - t0;

    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return 1;
    job j = { .loop = loop, .m = m };
    /* Frames carry the whole data set in one "load" call. */
    braid_workers_options o = { .count = nworkers, .max_in_flight = 1, .max_frame = ndata * sizeof *data + 4096 };
    int rc = braid_workers_new(loop, &o, &j.w);
    if (rc < 0) { fprintf(stderr, "workers-sum: %s\n", braid_strerror(rc)); return 1; }
    struct braid_workers_stats st;
    braid_workers_stats(j.w, &st);
    unsigned n = st.workers;

    /* Copy the data set to every worker: once all are ready and idle,
     * with one call in flight per worker, n loads go one to each. */
    for (int i = 0; i < 1000000 && st.ready < n; i++) {
        braid_loop_run_once(loop, 0);
        braid_workers_stats(j.w, &st);
    }
    t0 = now_s();
    for (unsigned i = 0; i < n; i++) {
        j.pending++;
        braid_deferred *d = braid_workers_call(j.w, "load", data, ndata * sizeof *data, NULL);
        braid_deferred_add(d, loaded, failed, &j);
        braid_deferred_unref(d);
    }
    run_until_done(&j);
    double t_load = now_s() - t0;

    t0 = now_s();
    size_t step = (ndata + chunks - 1) / chunks;
    for (size_t a = 0; a < ndata; a += step) {
        range r = { a, a + step < ndata ? a + step : ndata };
        j.pending++;
        braid_deferred *d = braid_workers_call(j.w, "sum", &r, sizeof r,
                                               &(braid_workers_call_options){ .idempotent = true });
        braid_deferred_add(d, summed, failed, &j);
        braid_deferred_unref(d);
    }
    run_until_done(&j);
    double t_work = now_s() - t0;

    printf("%zu numbers, %u workers, %zu chunks: sum %llu (%s); one core %.3f s, "
           "copy to workers %.3f s, workers %.3f s (%.2fx)\n",
           ndata, n, chunks, (unsigned long long)j.total,
           j.failed ? "FAILED" : j.total == want ? "correct" : "WRONG", t_one, t_load, t_work,
           t_work > 0 ? t_one / t_work : 0.0);
    braid_workers_free(j.w);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    braid_loop_free(loop);
    free(data);
    return j.failed || j.total != want;
}
