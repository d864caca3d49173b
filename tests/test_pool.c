/* Thread pools: results and failures on the loop thread, ordering, cancel,
 * bounded queues, classes, shutdown in both modes, 16 producers, bursts of
 * blocking jobs (all running at once, whatever min_threads and the pool's
 * history), short jobs passing a blocked one, blocking_call_from_thread (and
 * its misuse on the loop thread), the memory worker, statistics, the leak
 * gate and an allocation-failure walk. Threads synchronise through
 * condition variables and the loop, never through sleeps. */
// ctest-labels: pool threads
#include "harness.h"
#include "support/walk.h"
#include <braid/pool.h>
#include "net/net_internal.h"   /* braid__resolver_pool */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <unistd.h>
#include <time.h>

/* ---- helpers ------------------------------------------------------------------------ */
typedef struct outcome {
    int done;
    int code;              /* failure code, 0 on success */
    intptr_t value;
    pthread_t thread;      /* where the callback ran */
} outcome;

static braid_result on_ok(braid_result r, void *p) {
    outcome *o = p;
    o->done = 1;
    o->value = r.value ? *(intptr_t *)r.value : -1;
    o->thread = pthread_self();
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static braid_result on_ok_plain(braid_result r, void *p) {
    outcome *o = p;
    o->done = 1;
    o->value = (intptr_t)r.value;
    o->thread = pthread_self();
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static braid_result on_err(braid_result r, void *p) {
    outcome *o = p;
    o->done = 1;
    o->code = r.failure->code;
    o->thread = pthread_self();
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static void watch(braid_deferred *d, outcome *o, bool boxed) {
    BT_TRUE(d != NULL);
    BT_OK(braid_deferred_add(d, boxed ? on_ok : on_ok_plain, on_err, o));
    braid_deferred_unref(d);
}

/* A gate a job waits at until the test opens it; `arrived` counts waiters. */
typedef struct gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int open, arrived;
} gate;
static void gate_init(gate *g) {
    pthread_mutex_init(&g->mu, NULL);
    pthread_cond_init(&g->cv, NULL);
    g->open = g->arrived = 0;
}
static void gate_pass(gate *g) {
    pthread_mutex_lock(&g->mu);
    g->arrived++;
    pthread_cond_broadcast(&g->cv);
    while (!g->open) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}
static void gate_wait_arrivals(gate *g, int n) {
    pthread_mutex_lock(&g->mu);
    while (g->arrived < n) pthread_cond_wait(&g->cv, &g->mu);
    pthread_mutex_unlock(&g->mu);
}
static void gate_open(gate *g) {
    pthread_mutex_lock(&g->mu);
    g->open = 1;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

static pthread_t loop_thread;
static atomic_int dtor_calls;
static _Atomic(pthread_t) dtor_thread;

static void box_free(void *p) {
    atomic_fetch_add(&dtor_calls, 1);
    atomic_store(&dtor_thread, pthread_self());
    braid_free(p);
}

/* f(x) = x + 1 as an owned value, recording the thread it ran on. */
typedef struct job_arg {
    intptr_t x;
    pthread_t ran_on;
    atomic_int ran;
    gate *g;               /* optional: wait here first */
    bool fail;
} job_arg;

static braid_result plus_one(void *p) {
    job_arg *a = p;
    a->ran_on = pthread_self();
    atomic_fetch_add(&a->ran, 1);
    if (a->g) gate_pass(a->g);
    if (a->fail) return braid_result_errf(BRAID_ENOENT, "no such thing: %ld", (long)a->x);
    intptr_t *v = braid_malloc(sizeof *v);
    if (!v) return braid_result_err(braid_failure_new(BRAID_ENOMEM, NULL));
    *v = a->x + 1;
    return braid_result_ok_owned(v, box_free);
}

static braid_result plus_one_plain(void *p) {
    return braid_result_ok((void *)((intptr_t)p + 1));
}

static atomic_int calls_ran;
static void count_call(void *p) { (void)p; atomic_fetch_add(&calls_ran, 1); }

/* A worker records a job in the statistics just after posting its result,
 * so a result can reach the loop a moment before it is counted: wait until
 * no job is running (yielding; no timing assumption). */
static void stats_settled(braid_pool *pool, struct braid_pool_stats *st) {
    for (braid_pool_stats(pool, st); st->running; braid_pool_stats(pool, st)) sched_yield();
}

static braid_pool *new_pool(braid_loop *loop, unsigned min, unsigned max, unsigned flags,
                            size_t limit) {
    braid_pool_options o = { .min_threads = min, .max_threads = max, .name = "test",
                             .queue_limit = limit, .loop = loop, .flags = flags };
    braid_pool *pool;
    BT_OK(braid_pool_new(&o, &pool));
    return pool;
}

/* ---- results and failures arrive on the loop thread ----------------------------------------- */
BT_IO_TEST(results_and_failures_on_loop_thread) {
    braid_loop *loop = bt_loop_new(NULL);
    loop_thread = pthread_self();
    braid_pool *pool = new_pool(loop, 0, 4, 0, 0);
    enum { N = 64 };
    static job_arg args[N];
    static outcome out[N];
    atomic_store(&dtor_calls, 0);
    for (int i = 0; i < N; i++) {
        memset(&args[i], 0, sizeof args[i]);
        memset(&out[i], 0, sizeof out[i]);
        args[i].x = i;
        args[i].fail = i % 5 == 0;
        watch(braid_pool_defer(loop, pool, plus_one, &args[i]), &out[i], true);
    }
    BT_OK(braid_loop_run(loop));   /* holds keep it running until every result is in */
    for (int i = 0; i < N; i++) {
        BT_TRUE(out[i].done);
        BT_TRUE(pthread_equal(out[i].thread, loop_thread));
        BT_FALSE(pthread_equal(args[i].ran_on, loop_thread));
        BT_EQ(atomic_load(&args[i].ran), 1);
        if (i % 5 == 0) {
            BT_ERR(out[i].code, BRAID_ENOENT);
        } else {
            BT_EQ(out[i].code, 0);
            BT_EQ(out[i].value, i + 1);
        }
    }
    BT_EQ(atomic_load(&dtor_calls), N - (N + 4) / 5);   /* each value freed once */
    struct braid_pool_stats st;
    stats_settled(pool, &st);
    BT_UEQ(st.completed, N);
    BT_UEQ(st.queued, 0);
    BT_UEQ(st.running, 0);
    BT_ULE(st.threads, 4);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- one worker runs and delivers in submission order ---------------------------------------- */
static int order_log[300], order_n;
static braid_result log_order(braid_result r, void *p) {
    (void)p;
    order_log[order_n++] = (int)(intptr_t)r.value;
    return r;
}

BT_IO_TEST(one_thread_keeps_order) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 1, 1, 0, 0);
    order_n = 0;
    for (int i = 0; i < 300; i++) {
        braid_deferred *d = braid_pool_defer(loop, pool, plus_one_plain, (void *)(intptr_t)i);
        BT_OK(braid_deferred_add_callback(d, log_order, NULL));
        braid_deferred_unref(d);
    }
    BT_OK(braid_loop_run(loop));
    BT_EQ(order_n, 300);
    for (int i = 0; i < 300; i++) BT_EQ(order_log[i], i + 1);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- cancelling: queued work leaves the queue, running work's result is dropped -------------- */
BT_TEST(cancel_queued_work_never_runs) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 0, BRAID_POOL_MEMORY, 0);
    job_arg a[3] = { { .x = 1 }, { .x = 2 }, { .x = 3 } };
    outcome o[3] = { { 0 } };
    braid_deferred *d[3];
    for (int i = 0; i < 3; i++) {
        d[i] = braid_pool_defer(loop, pool, plus_one, &a[i]);
        BT_OK(braid_deferred_add(d[i], on_ok, on_err, &o[i]));
    }
    braid_deferred_cancel(d[1]);
    BT_TRUE(o[1].done);                        /* fails at once, on this thread */
    BT_ERR(o[1].code, BRAID_ECANCELED);
    struct braid_pool_stats st;
    braid_pool_stats(pool, &st);
    BT_UEQ(st.queued, 2);
    BT_UEQ(st.cancelled, 1);
    BT_EQ(braid_pool_step(pool), 1);
    BT_EQ(braid_pool_step(pool), 1);
    BT_EQ(braid_pool_step(pool), 0);
    BT_EQ(atomic_load(&a[1].ran), 0);          /* never ran */
    BT_FALSE(o[0].done);                       /* results come through the loop */
    BT_OK(braid_loop_run(loop));
    BT_EQ(o[0].value, 2);
    BT_EQ(o[2].value, 4);
    for (int i = 0; i < 3; i++) braid_deferred_unref(d[i]);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

BT_TEST(cancel_running_work_drops_its_result) {
    braid_loop *loop = bt_loop_new(NULL);
    loop_thread = pthread_self();
    braid_pool *pool = new_pool(loop, 1, 1, 0, 0);
    gate g;
    gate_init(&g);
    job_arg a = { .x = 41, .g = &g };
    outcome o = { 0 };
    atomic_store(&dtor_calls, 0);
    braid_deferred *d = braid_pool_defer(loop, pool, plus_one, &a);
    BT_OK(braid_deferred_add(d, on_ok, on_err, &o));
    gate_wait_arrivals(&g, 1);                 /* it is running now */
    braid_deferred_cancel(d);
    BT_TRUE(o.done);
    BT_ERR(o.code, BRAID_ECANCELED);
    gate_open(&g);
    BT_OK(braid_loop_run(loop));               /* the hold lasts until the result is back */
    BT_EQ(atomic_load(&a.ran), 1);
    BT_EQ(atomic_load(&dtor_calls), 1);        /* the dropped value was freed ... */
    pthread_t t = atomic_load(&dtor_thread);
    BT_TRUE(pthread_equal(t, loop_thread));    /* ... on the loop thread */
    braid_deferred_unref(d);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- a full queue fails at once ------------------------------------------------------------ */
BT_TEST(queue_full_fails_fast) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 0, BRAID_POOL_MEMORY, 2);
    outcome o[3] = { { 0 } };
    for (int i = 0; i < 3; i++)
        watch(braid_pool_defer(loop, pool, plus_one_plain, (void *)(intptr_t)i), &o[i], false);
    BT_FALSE(o[0].done);
    BT_FALSE(o[1].done);
    BT_TRUE(o[2].done);                        /* already failed, before any loop iteration */
    BT_ERR(o[2].code, BRAID_EQUEUE_FULL);
    BT_ERR(braid_pool_call(pool, count_call, NULL), BRAID_EQUEUE_FULL);
    struct braid_pool_stats st;
    braid_pool_stats(pool, &st);
    BT_UEQ(st.rejected, 2);
    BT_UEQ(st.queued, 2);
    while (braid_pool_step(pool) > 0) {}
    BT_OK(braid_loop_run(loop));
    BT_EQ(o[0].value, 1);
    BT_EQ(o[1].value, 2);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- classes: a flood of one class does not starve another ------------------------------------- */
BT_TEST(classes_take_turns_and_cap_concurrency) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 4, 4, 0, 0);
    int resolve = braid_pool_add_class(pool, "resolve", 16, 1);
    BT_EQ(resolve, 1);
    gate g;
    gate_init(&g);
    job_arg slow[3] = { { .x = 0, .g = &g }, { .x = 1, .g = &g }, { .x = 2, .g = &g } };
    outcome os[3] = { { 0 } }, od = { 0 };
    for (int i = 0; i < 3; i++)
        watch(braid_pool_defer_class(loop, pool, resolve, plus_one, &slow[i]), &os[i], true);
    gate_wait_arrivals(&g, 1);                 /* one resolve job runs, two wait */
    job_arg quick = { .x = 10 };
    watch(braid_pool_defer(loop, pool, plus_one, &quick), &od, true);
    bt_run_until(loop, &od.done, 1000000);     /* default work is not stuck behind them */
    BT_EQ(od.value, 11);
    struct braid_pool_stats st;
    braid_pool_stats(pool, &st);
    BT_UEQ(st.class_running[resolve], 1);      /* max_running 1 although 3 threads idle */
    BT_UEQ(st.class_queued[resolve], 2);
    BT_EQ(g.arrived, 1);
    /* Queued work of a capped class must not keep an idle worker spinning:
     * the spin ends (bounded) and everyone but the runner goes to sleep. */
    for (braid_pool_stats(pool, &st); st.spinning || st.idle != 3; braid_pool_stats(pool, &st))
        sched_yield();
    gate_open(&g);
    BT_OK(braid_loop_run(loop));
    for (int i = 0; i < 3; i++) BT_EQ(os[i].value, i + 1);
    outcome bad = { 0 };
    watch(braid_pool_defer_class(loop, pool, 7, plus_one, &quick), &bad, true);
    BT_ERR(bad.code, BRAID_EINVAL);               /* no such class */
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* Round robin, seen exactly with the memory worker. */
static int rr_log[8], rr_n;
static void rr_record(void *p) { rr_log[rr_n++] = (int)(intptr_t)p; }

BT_TEST(classes_round_robin_memory) {
    braid_pool *pool = new_pool(NULL, 0, 0, BRAID_POOL_MEMORY, 0);
    int c1 = braid_pool_add_class(pool, "resolve", 0, 0);
    rr_n = 0;
    for (int i = 0; i < 3; i++) BT_OK(braid_pool_call_class(pool, c1, rr_record, (void *)(intptr_t)(10 + i)));
    BT_OK(braid_pool_call(pool, rr_record, (void *)(intptr_t)1));
    BT_OK(braid_pool_call(pool, rr_record, (void *)(intptr_t)2));
    BT_ERR(braid_pool_call_class(pool, 5, rr_record, NULL), BRAID_EINVAL);
    while (braid_pool_step(pool) > 0) {}
    int want[] = { 1, 10, 2, 11, 12 };
    BT_EQ(rr_n, 5);
    for (int i = 0; i < 5; i++) BT_EQ(rr_log[i], want[i]);
    braid_pool_free(pool);
}

/* ---- shutdown with work in flight ---------------------------------------------------------------- */
BT_TEST(shutdown_finish_runs_queued_work) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 2, 0, 0);
    gate g;
    gate_init(&g);
    enum { N = 20 };
    job_arg a[N];
    outcome o[N];
    memset(a, 0, sizeof a);
    memset(o, 0, sizeof o);
    for (int i = 0; i < N; i++) {
        a[i].x = i;
        a[i].g = i == 0 ? &g : NULL;
        watch(braid_pool_defer(loop, pool, plus_one, &a[i]), &o[i], true);
    }
    gate_wait_arrivals(&g, 1);
    braid_pool_shutdown(pool, BRAID_POOL_FINISH);
    job_arg late = { .x = 99 };
    outcome ol = { 0 };
    watch(braid_pool_defer(loop, pool, plus_one, &late), &ol, true);
    BT_ERR(ol.code, BRAID_ESHUTDOWN);
    gate_open(&g);
    braid_pool_free(pool);   /* joins: everything ran */
    for (int i = 0; i < N; i++) BT_EQ(atomic_load(&a[i].ran), 1);
    BT_OK(braid_loop_run(loop));                   /* completions still delivered */
    for (int i = 0; i < N; i++) {
        BT_TRUE(o[i].done);
        BT_EQ(o[i].value, i + 1);
    }
    bt_loop_destroy(loop);
}

BT_TEST(shutdown_cancel_fails_queued_work) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 1, 1, 0, 0);
    gate g;
    gate_init(&g);
    enum { N = 10 };
    job_arg a[N];
    outcome o[N];
    memset(a, 0, sizeof a);
    memset(o, 0, sizeof o);
    atomic_store(&calls_ran, 0);
    for (int i = 0; i < N; i++) {
        a[i].x = i;
        a[i].g = i == 0 ? &g : NULL;
        watch(braid_pool_defer(loop, pool, plus_one, &a[i]), &o[i], true);
        if (i == 0) gate_wait_arrivals(&g, 1);    /* job 0 is running */
    }
    BT_OK(braid_pool_call(pool, count_call, NULL));
    braid_pool_shutdown(pool, BRAID_POOL_CANCEL);
    BT_ERR(braid_pool_call(pool, count_call, NULL), BRAID_ESHUTDOWN);
    gate_open(&g);
    braid_pool_shutdown(pool, BRAID_POOL_CANCEL); braid_pool_free(pool);
    BT_OK(braid_loop_run(loop));
    BT_EQ(o[0].value, 1);                          /* running work finished */
    for (int i = 1; i < N; i++) {
        BT_EQ(atomic_load(&a[i].ran), 0);
        BT_ERR(o[i].code, BRAID_ECANCELED);
    }
    BT_EQ(atomic_load(&calls_ran), 0);             /* dropped call never ran */
    bt_loop_destroy(loop);
}

/* ---- a burst of blocking jobs runs at once --------------------------------------------------- */
/* A rendezvous that opens only once n jobs are inside it together: jobs that
 * pass it all ran at the same time. A pool that leaves one of them queued
 * behind the others would hang them forever, so a waiter that has seen
 * nothing happen for RV_GUARD_S marks the rendezvous broken and lets
 * everyone go: the test then fails instead of hanging. (A guard against a
 * hang, not a timing assertion: with the pool working, every job arrives
 * within the milliseconds a thread takes to start, even under sanitizers on
 * a loaded machine.) */
enum { RV_GUARD_S = 20 };
typedef struct rendezvous {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, arrived;
    bool open, broken;
} rendezvous;

static void rv_init(rendezvous *r, int n) {
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->cv, &ca);
    pthread_condattr_destroy(&ca);
    r->n = n;
    r->arrived = 0;
    r->open = r->broken = false;
}

static void rv_destroy(rendezvous *r) {
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
}

static braid_result rv_job(void *p) {
    rendezvous *r = p;
    pthread_mutex_lock(&r->mu);
    if (++r->arrived == r->n) {
        r->open = true;
        pthread_cond_broadcast(&r->cv);
    }
    for (;;) {
        int seen = r->arrived;
        struct timespec dl;
        clock_gettime(CLOCK_MONOTONIC, &dl);
        dl.tv_sec += RV_GUARD_S;
        int rc = 0;
        while (!r->open && !r->broken && r->arrived == seen && rc == 0)
            rc = pthread_cond_timedwait(&r->cv, &r->mu, &dl);
        if (r->open || r->broken) break;
        if (rc == ETIMEDOUT) {       /* nobody arrived for RV_GUARD_S: the pool is stuck */
            r->broken = true;
            pthread_cond_broadcast(&r->cv);
            break;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return braid_result_ok(NULL);
}

/* N jobs that can only finish together, submitted at once to a pool of
 * min_threads..n threads, after `warm` tiny jobs in flight 16 at a time (so
 * the pool's averages say jobs are short and its workers trust each other
 * to take the next one — the case where a runner that then blocks stranded
 * the rest). Every job must be running at the same time. */
static void burst_runs_at_once_clock(unsigned min_threads, int n, int warm, braid_clock *clock) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool_options opt = { .min_threads = min_threads, .max_threads = (unsigned)n, .name = "test",
                               .loop = loop, .clock = clock };
    braid_pool *pool;
    BT_OK(braid_pool_new(&opt, &pool));
    static outcome wo[16];
    for (int done = 0; done < warm; done += 16) {
        for (int i = 0; i < 16; i++) {
            memset(&wo[i], 0, sizeof wo[i]);
            watch(braid_pool_defer(loop, pool, plus_one_plain, (void *)(intptr_t)i), &wo[i], false);
        }
        BT_OK(braid_loop_run(loop));
        for (int i = 0; i < 16; i++) BT_EQ(wo[i].value, i + 1);
    }
    rendezvous rv;
    rv_init(&rv, n);
    outcome o[16];
    memset(o, 0, sizeof o);
    for (int i = 0; i < n; i++) watch(braid_pool_defer(loop, pool, rv_job, &rv), &o[i], false);
    BT_OK(braid_loop_run(loop));
    BT_FALSE(rv.broken);
    BT_EQ(rv.arrived, n);
    for (int i = 0; i < n; i++) BT_TRUE(o[i].done && o[i].code == 0);
    struct braid_pool_stats st;
    stats_settled(pool, &st);
    BT_ULE(st.threads, (uint64_t)n);
    braid_pool_free(pool);
    rv_destroy(&rv);
    bt_loop_destroy(loop);
}

static void burst_runs_at_once(unsigned min_threads, int n, int warm) {
    burst_runs_at_once_clock(min_threads, n, warm, NULL);
}

BT_TEST(burst_of_blocking_jobs_min0) { burst_runs_at_once(0, 4, 0); }
BT_TEST(burst_of_blocking_jobs_min1) { burst_runs_at_once(1, 4, 0); }
BT_TEST(burst_of_blocking_jobs_min4) { burst_runs_at_once(4, 4, 0); }
BT_TEST(burst_of_blocking_jobs_16) { burst_runs_at_once(2, 16, 0); }
BT_TEST(burst_of_blocking_jobs_after_short_min0) { burst_runs_at_once(0, 4, 2000); }
BT_TEST(burst_of_blocking_jobs_after_short_min1) { burst_runs_at_once(1, 4, 2000); }
BT_TEST(burst_of_blocking_jobs_after_short_min4) { burst_runs_at_once(4, 4, 2000); }
/* A pool whose statistics run on a fake clock that never moves: how long a
 * job has been queued is unknowable, and the burst must still start. */
BT_TEST(burst_of_blocking_jobs_fake_stats_clock) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(1000000, &fc);
    burst_runs_at_once_clock(4, 4, 2000, braid_fake_clock_base(fc));
    braid_fake_clock_free(fc);
}

/* The same burst, queued by other threads with braid_pool_call, many
 * times over: every round must have all n running at once. */
static void call_rv(void *p) { braid_result_drop(rv_job(p)); }

BT_TEST(bursts_from_call_in_pool) {
    braid_pool *pool = new_pool(NULL, 1, 4, 0, 0);
    for (int round = 0; round < 50; round++) {
        rendezvous rv;
        rv_init(&rv, 4);
        for (int i = 0; i < 4; i++) BT_OK(braid_pool_call(pool, call_rv, &rv));
        pthread_mutex_lock(&rv.mu);
        while (!rv.open && !rv.broken) pthread_cond_wait(&rv.cv, &rv.mu);
        pthread_mutex_unlock(&rv.mu);
        BT_FALSE(rv.broken);
        struct braid_pool_stats st;
        stats_settled(pool, &st);   /* everyone left the rendezvous: it can go */
        rv_destroy(&rv);
        for (int i = 0; i < 64; i++) BT_OK(braid_pool_call(pool, count_call, NULL));   /* short ones between */
    }
    braid_pool_free(pool);
}

/* ---- short jobs are not stuck behind a blocked one ---------------------------------------------- */
static volatile int mixed_guard_fired;
static void mixed_guard(void *p) { (void)p; mixed_guard_fired = 1; }

/* A long job (blocked at a gate), then N short ones: every short one must
 * finish while the long one is still blocked. `together`: the short ones are
 * queued right behind the long one, before it even starts (a worker taking
 * the long job must not count on itself for the rest); else only once it
 * runs. `warm` tiny jobs first, as in burst_runs_at_once. */
static void short_jobs_pass_blocked_one(unsigned min_threads, bool together, int warm) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, min_threads, 4, 0, 0);
    enum { N = 32 };
    static outcome o[N];
    for (int done = 0; done < warm; done += N) {
        for (int i = 0; i < N; i++) {
            memset(&o[i], 0, sizeof o[i]);
            watch(braid_pool_defer(loop, pool, plus_one_plain, (void *)(intptr_t)i), &o[i], false);
        }
        BT_OK(braid_loop_run(loop));
    }
    gate g;
    gate_init(&g);
    job_arg slow = { .x = 0, .g = &g };
    outcome os = { 0 };
    watch(braid_pool_defer(loop, pool, plus_one, &slow), &os, true);
    if (!together) gate_wait_arrivals(&g, 1);  /* the long job is running (and blocked) */
    bool all_done = false;
    mixed_guard_fired = 0;
    /* A hang guard, as above: short jobs stuck behind the blocked one would
     * keep the loop waiting forever. */
    braid_timer *guard = braid_timer_call_later(loop, BRAID_SECONDS(RV_GUARD_S), mixed_guard, NULL);
    BT_TRUE(guard != NULL);
    for (int i = 0; i < N; i++) {
        memset(&o[i], 0, sizeof o[i]);
        watch(braid_pool_defer(loop, pool, plus_one_plain, (void *)(intptr_t)i), &o[i], false);
    }
    for (int it = 0; it < 1000000 && !all_done && !mixed_guard_fired; it++) {
        BT_GE(braid_loop_run_once(loop, 0), 0);
        int n = 0;
        for (int i = 0; i < N; i++) n += o[i].done;
        all_done = n == N;
    }
    BT_TRUE(all_done);                         /* every short job ran ... */
    BT_FALSE(os.done);                         /* ... while the long one was still blocked */
    for (int i = 0; i < N; i++) BT_EQ(o[i].value, i + 1);
    braid_timer_cancel(guard);
    gate_wait_arrivals(&g, 1);
    gate_open(&g);
    BT_OK(braid_loop_run(loop));
    BT_EQ(os.value, 1);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

BT_TEST(short_jobs_pass_a_blocked_one_min0) { short_jobs_pass_blocked_one(0, false, 0); }
BT_TEST(short_jobs_pass_a_blocked_one_min1) { short_jobs_pass_blocked_one(1, false, 0); }
BT_TEST(short_jobs_pass_a_blocked_one_min4) { short_jobs_pass_blocked_one(4, false, 0); }
BT_TEST(short_jobs_queued_behind_a_blocking_one_min0) { short_jobs_pass_blocked_one(0, true, 0); }
BT_TEST(short_jobs_queued_behind_a_blocking_one_min1) { short_jobs_pass_blocked_one(1, true, 0); }
BT_TEST(short_jobs_queued_behind_a_blocking_one_min4) { short_jobs_pass_blocked_one(4, true, 0); }
BT_TEST(short_jobs_queued_behind_a_blocking_one_after_short) { short_jobs_pass_blocked_one(4, true, 2048); }

/* ---- 16 producer threads --------------------------------------------------------------------- */
enum { PRODUCERS = 16, PER_PRODUCER = 2000 };
typedef struct prod {
    braid_pool *pool;
    braid_loop *loop;
    atomic_long *sums;
    int id;
} prod;
static atomic_long prod_sums[PRODUCERS];
static atomic_long prod_done;
static braid_post prod_finish;

static void prod_all_done(void *p) { braid_loop_release(p); }

static void prod_work(void *p) {
    intptr_t v = (intptr_t)p;
    atomic_fetch_add(&prod_sums[v >> 16], (long)(v & 0xffff));
    if (atomic_fetch_add(&prod_done, 1) + 1 == PRODUCERS * PER_PRODUCER)
        braid_loop_post_node(prod_finish.arg, &prod_finish);
}

static void *producer(void *p) {
    prod *pr = p;
    for (int i = 1; i <= PER_PRODUCER; i++) {
        intptr_t v = ((intptr_t)pr->id << 16) | i;
        int rc;
        while ((rc = braid_pool_call(pr->pool, prod_work, (void *)v)) == BRAID_EQUEUE_FULL)
            sched_yield();
        if (rc < 0) abort();
    }
    return NULL;
}

BT_TEST(sixteen_producer_threads) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 4, 0, 256);
    atomic_store(&prod_done, 0);
    for (int i = 0; i < PRODUCERS; i++) atomic_store(&prod_sums[i], 0);
    prod_finish.fn = prod_all_done;
    prod_finish.arg = loop;
    braid_loop_hold(loop);                         /* released by the last job's post */
    pthread_t t[PRODUCERS];
    prod pr[PRODUCERS];
    for (int i = 0; i < PRODUCERS; i++) {
        pr[i] = (prod){ .pool = pool, .loop = loop, .id = i };
        BT_EQ(pthread_create(&t[i], NULL, producer, &pr[i]), 0);
    }
    BT_OK(braid_loop_run(loop));
    for (int i = 0; i < PRODUCERS; i++) pthread_join(t[i], NULL);
    long want = (long)PER_PRODUCER * (PER_PRODUCER + 1) / 2;
    for (int i = 0; i < PRODUCERS; i++) BT_EQ(atomic_load(&prod_sums[i]), want);
    /* The last job posted before its worker recorded it: wait for that. */
    struct braid_pool_stats st;
    stats_settled(pool, &st);
    BT_UEQ(st.completed, PRODUCERS * PER_PRODUCER);
    BT_UEQ(st.queued, 0);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- blocking_call_from_thread ------------------------------------------------------------------ */
static braid_deferred *loop_side_later(braid_loop *loop, void *arg);
typedef struct later { braid_deferred *d; intptr_t v; } later;
static void fire_later(void *p) {
    later *l = p;
    BT_TRUE(pthread_equal(pthread_self(), loop_thread));
    braid_deferred_callback(l->d, (void *)(l->v * 2), NULL);
    braid_free(l);
}
/* Loop side: a Deferred that fires a little later (next timer phase). */
static braid_deferred *loop_side_later(braid_loop *loop, void *arg) {
    later *l = braid_malloc(sizeof *l);
    if (!l) return NULL;
    l->d = braid_deferred_new(loop);
    l->v = (intptr_t)arg;
    braid_deferred *consumer = braid_deferred_ref(l->d);
    if (!braid_timer_call_later(loop, 0, fire_later, l)) abort();
    braid_deferred_unref(l->d);     /* the producer reference stays for fire_later */
    return consumer;
}
static braid_deferred *loop_side_fail(braid_loop *loop, void *arg) {
    (void)arg;
    return braid_deferred_fail(loop, braid_failure_new(BRAID_EPIPE, "loop said no"));
}
typedef struct bc_arg { braid_loop *loop; intptr_t got; int code; } bc_arg;
static braid_result worker_asks_loop(void *p) {
    bc_arg *a = p;
    braid_result r = braid_pool_blocking_call(a->loop, loop_side_later, (void *)(intptr_t)21);
    a->got = r.failure ? -1 : (intptr_t)r.value;
    braid_result_drop(r);
    r = braid_pool_blocking_call(a->loop, loop_side_fail, NULL);
    a->code = r.failure ? r.failure->code : 0;
    braid_result_drop(r);
    return braid_result_ok((void *)(intptr_t)7);
}

BT_IO_TEST(blocking_call_from_thread) {
    braid_loop *loop = bt_loop_new(NULL);
    loop_thread = pthread_self();
    braid_pool *pool = new_pool(loop, 0, 2, 0, 0);
    bc_arg a = { .loop = loop };
    outcome o = { 0 };
    watch(braid_pool_defer(loop, pool, worker_asks_loop, &a), &o, false);
    BT_OK(braid_loop_run(loop));
    BT_EQ(o.value, 7);
    BT_EQ(a.got, 42);
    BT_ERR(a.code, BRAID_EPIPE);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- blocking_call_from_thread on the loop's own thread ------------------------------------------ */
/* It would wait forever for itself: it fails at once with BRAID_EDEADLK,
 * and fn never runs. */
static int misuse_fn_ran;
static braid_deferred *misuse_fn(braid_loop *loop, void *arg) {
    (void)arg;
    misuse_fn_ran++;
    return braid_deferred_succeed(loop, NULL, NULL);
}
typedef struct misuse { braid_loop *loop; int code; bool named; bool ran; } misuse;
static void misuse_on_loop(void *p) {
    misuse *m = p;
    braid_result r = braid_pool_blocking_call(m->loop, misuse_fn, NULL);
    m->ran = true;
    m->code = r.failure ? r.failure->code : 0;
    m->named = r.failure && r.failure->message &&
               strstr(r.failure->message, "braid_pool_blocking_call") &&
               strstr(r.failure->message, "own thread");
    braid_result_drop(r);
}

BT_IO_TEST(blocking_call_on_loop_thread_fails) {
    braid_loop *loop = bt_loop_new(NULL);
    misuse_fn_ran = 0;
    /* Inside a callback of the running loop. */
    misuse m = { .loop = loop };
    BT_OK(braid_loop_soon(loop, misuse_on_loop, &m));
    BT_OK(braid_loop_run(loop));
    BT_TRUE(m.ran);
    BT_ERR(m.code, BRAID_EDEADLK);
    BT_TRUE(m.named);
    /* On the thread that made the loop, outside braid_loop_run: the loop's
     * thread too (nobody else would run it). */
    misuse m2 = { .loop = loop };
    misuse_on_loop(&m2);
    BT_ERR(m2.code, BRAID_EDEADLK);
    BT_STREQ(braid_strerror(BRAID_EDEADLK), braid_strerror(-EDEADLK));
    BT_EQ(misuse_fn_ran, 0);
    BT_OK(braid_loop_run(loop));               /* nothing was left behind */
    bt_loop_destroy(loop);
}

/* A loop made on one thread and run on another belongs to the one running
 * it: from the maker's thread the call then works. */
/* The runner runs the loop, then destroys it: the loop is its own now. */
static void *run_loop_thread(void *p) {
    if (braid_loop_run(p) < 0) abort();
    return (void *)(intptr_t)braid_loop_free(p);
}
static void release_loop(void *p) { braid_loop_release(p); }
static braid_deferred *answer_on_runner(braid_loop *loop, void *arg) {
    return braid_deferred_succeed(loop, (void *)((intptr_t)arg + 1), NULL);
}

BT_TEST(blocking_call_from_the_maker_of_a_loop_run_elsewhere) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_loop_hold(loop);                     /* it runs until release_loop */
    pthread_t t;
    BT_EQ(pthread_create(&t, NULL, run_loop_thread, loop), 0);
    /* The runner must have entered braid_loop_run before the call can work:
     * ask it through the loop itself, which only its runner drains. */
    braid_result r;
    for (;;) {
        r = braid_pool_blocking_call(loop, answer_on_runner, (void *)(intptr_t)41);
        if (!r.failure || r.failure->code != BRAID_EDEADLK) break;
        braid_result_drop(r);                  /* the runner has not started yet */
        sched_yield();
    }
    BT_TRUE(r.failure == NULL);
    BT_EQ((intptr_t)r.value, 42);
    braid_result_drop(r);
    BT_OK(braid_loop_post(loop, release_loop, loop));
    void *rc;
    pthread_join(t, &rc);
    BT_OK((int)(intptr_t)rc);                  /* the leak gate, on the runner */
}

/* ---- the memory worker ----------------------------------------------------------------------- */
BT_TEST(memory_worker_steps_by_hand) {
    braid_loop *loop = bt_loop_new(NULL);
    loop_thread = pthread_self();
    braid_pool *pool = new_pool(loop, 0, 0, BRAID_POOL_MEMORY, 0);
    BT_EQ(braid_pool_step(pool), 0);
    job_arg a = { .x = 5 };
    outcome o = { 0 };
    watch(braid_pool_defer(loop, pool, plus_one, &a), &o, true);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(atomic_load(&a.ran), 0);                 /* nothing runs until stepped */
    BT_FALSE(o.done);
    BT_EQ(braid_pool_step(pool), 1);
    BT_TRUE(pthread_equal(a.ran_on, loop_thread)); /* on the stepping thread */
    BT_FALSE(o.done);                              /* delivered by the loop, not by step */
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_TRUE(o.done);
    BT_EQ(o.value, 6);
    BT_EQ(braid_pool_step(pool), 0);
    braid_pool *threaded = new_pool(NULL, 0, 1, 0, 0);
    BT_ERR(braid_pool_step(threaded), BRAID_EINVAL);
    braid_pool_free(threaded);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- statistics (fake clock, exact buckets) -------------------------------------------------------- */
static braid_fake_clock *stats_clock;
static braid_result advance_5us(void *p) {
    braid_fake_clock_advance(stats_clock, 5000);
    return braid_result_ok(p);
}

BT_TEST(stats_counts_and_histograms) {
    braid_fake_clock_new(1000000, &stats_clock);
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool_options opt = { .flags = BRAID_POOL_MEMORY, .queue_limit = 3,
                               .clock = braid_fake_clock_base(stats_clock), .loop = loop };
    braid_pool *pool;
    BT_OK(braid_pool_new(&opt, &pool));
    outcome o[5] = { { 0 } };
    for (int i = 0; i < 4; i++) watch(braid_pool_defer(loop, pool, advance_5us, NULL), &o[i], false);
    braid_fake_clock_advance(stats_clock, 1000);   /* each waits >= 1 µs */
    struct braid_pool_stats st;
    braid_pool_stats(pool, &st);
    BT_UEQ(st.queued, 3);
    BT_UEQ(st.rejected, 1);
    BT_UEQ(st.threads, 0);
    BT_EQ(braid_pool_step(pool), 1);
    BT_EQ(braid_pool_step(pool), 1);
    braid_pool_stats(pool, &st);
    BT_UEQ(st.completed, 2);
    BT_UEQ(st.queued, 1);
    BT_UEQ(st.run_hist[braid_pool_hist_bucket(5000)], 2);
    BT_UEQ(braid_pool_hist_bucket(5000), 12);
    BT_UEQ(st.wait_hist[braid_pool_hist_bucket(1000)], 1);   /* first waited 1000 ns */
    BT_UEQ(st.wait_hist[braid_pool_hist_bucket(6000)], 1);   /* second also the first's run */
    BT_UEQ(braid_pool_hist_quantile(st.run_hist, 0.5), 8192);
    BT_UEQ(braid_pool_hist_quantile(st.wait_hist, 1.0), 8192);
    BT_UEQ(braid_pool_hist_quantile(st.wait_hist, 0.5), 1024);
    BT_EQ(braid_pool_step(pool), 1);
    BT_OK(braid_loop_run(loop));
    for (int i = 0; i < 3; i++) BT_TRUE(o[i].done && o[i].code == 0);
    BT_ERR(o[3].code, BRAID_EQUEUE_FULL);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
    braid_fake_clock_free(stats_clock);
}

BT_TEST(idle_threads_counted_and_named) {
    braid_pool *pool = new_pool(NULL, 2, 3, BRAID_POOL_NO_SPIN, 0);
    struct braid_pool_stats st;
    /* Started threads reach their sleep on their own; wait for them via stats
     * polling with yields (no sleeps, no timing assumption). */
    for (;;) {
        braid_pool_stats(pool, &st);
        if (st.idle == 2) break;
        sched_yield();
    }
    BT_UEQ(st.threads, 2);
    BT_UEQ(st.running, 0);
    braid_pool_free(pool);
}

/* ---- the leak gate ---------------------------------------------------------------------------- */
BT_TEST(pool_tied_to_loop_blocks_destroy) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 1, 0, 0);
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    braid_pool_free(pool);
    bt_loop_destroy(loop);
}

/* ---- allocation-failure walk ------------------------------------------------------------------------ */
static int walk_code(outcome *o, int n) {
    for (int i = 0; i < n; i++)
        if (o[i].code) return o[i].code;
    return 0;
}

static int alloc_scenario(void *arg) {
    unsigned flags = *(unsigned *)arg;
    braid_loop *loop;
    int rc = braid_loop_new(NULL, &loop);
    if (rc < 0) return rc;
    braid_pool_options opt = { .max_threads = 1, .flags = flags, .loop = loop };
    braid_pool *pool;
    if ((rc = braid_pool_new(&opt, &pool)) < 0) {
        bt_loop_destroy(loop);
        return rc;
    }
    outcome o[3] = { { 0 } };
    job_arg a[3] = { { .x = 1 }, { .x = 2 }, { .x = 3 } };
    int n = 0;
    for (; n < 3; n++) {
        braid_deferred *d = braid_pool_defer(loop, pool, plus_one_plain, (void *)a[n].x);
        if (!d) { rc = BRAID_ENOMEM; break; }
        if ((rc = braid_deferred_add(d, on_ok_plain, on_err, &o[n])) < 0) abort();
        braid_deferred_unref(d);
    }
    atomic_store(&calls_ran, 0);
    int rc2 = braid_pool_call(pool, count_call, NULL);
    if (rc == 0) rc = rc2;
    if (flags & BRAID_POOL_MEMORY) while (braid_pool_step(pool) > 0) {}
    if (braid_loop_run(loop) < 0) abort();
    braid_pool_free(pool);
    bt_loop_destroy(loop);
    if (rc == 0) rc = walk_code(o, n);
    if (rc == 0 && (o[0].value != 2 || o[2].value != 4 || atomic_load(&calls_ran) != 1)) abort();
    return rc;
}

static void alloc_walk(unsigned flags) {
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = flags & BRAID_POOL_MEMORY ? "memory pool" : "thread pool",
                                                 .arg = &flags, .body = alloc_scenario, .enomem_only = true,
                                                 .must_fail = true, .max_runs = 1000 });
    BT_GE(r.errors, 5);
}

BT_TEST(allocation_failure_walk_memory) { alloc_walk(BRAID_POOL_MEMORY); }
BT_TEST(allocation_failure_walk_threads) { alloc_walk(BRAID_POOL_NO_SPIN); }

/* ---- the resolver pool ------------------------------------------------------------------------ */
BT_TEST(resolver_pool_default_and_user) {
    braid_loop *loop = bt_loop_new(NULL);
    int cls = -1, cls2 = -1;
    braid_pool *own = braid__resolver_pool(loop, &cls);
    BT_TRUE(own != NULL);
    BT_EQ(cls, 0);
    BT_TRUE(braid__resolver_pool(loop, &cls2) == own);   /* made once */
    outcome o = { 0 };
    watch(braid_pool_defer_class(loop, own, cls, plus_one_plain, (void *)(intptr_t)1), &o, false);
    BT_OK(braid_loop_run(loop));
    BT_EQ(o.value, 2);
    /* A class of the user's pool instead; the loop's own pool goes away. */
    braid_pool *mine = new_pool(loop, 0, 2, 0, 0);
    BT_EQ(braid_pool_classes(mine), 1);
    int rc = braid_pool_add_class(mine, "resolve", 64, 1);
    BT_EQ(braid_pool_classes(mine), 2);
    BT_ERR(braid_resolver_set_pool(loop, mine, 2), BRAID_EINVAL);   /* no such class */
    BT_ERR(braid_resolver_set_pool(loop, mine, 5), BRAID_EINVAL);
    BT_OK(braid_resolver_set_pool(loop, mine, rc));
    BT_TRUE(braid__resolver_pool(loop, &cls) == mine);
    BT_EQ(cls, rc);
    braid_pool_free(mine);
    bt_loop_destroy(loop);
}

BT_TEST(resolver_pool_freed_with_loop) {
    braid_loop *loop = bt_loop_new(NULL);
    int cls;
    braid_pool *own = braid__resolver_pool(loop, &cls);
    outcome o = { 0 };
    watch(braid_pool_defer_class(loop, own, cls, plus_one_plain, (void *)(intptr_t)9), &o, false);
    BT_OK(braid_loop_run(loop));
    BT_EQ(o.value, 10);
    bt_loop_destroy(loop);   /* joins its threads; the harness checks nothing leaked */
}

/* ---- thread options: names and stack size ----------------------------------------------------- */
typedef struct thread_info { char name[16]; size_t stack; } thread_info;
static braid_result describe_thread(void *p) {
    thread_info *ti = p;
    pthread_getname_np(pthread_self(), ti->name, sizeof ti->name);
    pthread_attr_t attr;
    if (pthread_getattr_np(pthread_self(), &attr) == 0) {
        pthread_attr_getstacksize(&attr, &ti->stack);
        pthread_attr_destroy(&attr);
    }
    return braid_result_ok(NULL);
}

BT_TEST(thread_names_and_stack_size) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool_options o = { .max_threads = 1, .name = "db", .stack_size = 1 << 20, .loop = loop };
    braid_pool *pool;
    BT_OK(braid_pool_new(&o, &pool));
    thread_info ti = { { 0 }, 0 };
    outcome out = { 0 };
    watch(braid_pool_defer(loop, pool, describe_thread, &ti), &out, false);
    BT_OK(braid_loop_run(loop));
    BT_STREQ(ti.name, "db-0");
    BT_UEQ(ti.stack, 1 << 20);
    braid_pool_free(pool);
    braid_pool_options bad = { .min_threads = 3, .max_threads = 2 };
    BT_ERR(braid_pool_new(&bad, &pool), BRAID_EINVAL);
    bt_loop_destroy(loop);
}

/* ---- arg ownership: braid_pool_defer_full --------------------------------------------------- */
static int args_freed;
static void count_free(void *p) { args_freed++; braid_free(p); }
static braid_result read_arg(void *p) { return braid_result_ok((void *)(intptr_t)*(int *)p); }

BT_TEST(defer_full_frees_arg_exactly_once) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool = new_pool(loop, 0, 0, BRAID_POOL_MEMORY, 2);
    args_freed = 0;
    outcome o[4] = { { 0 } };
    int *a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = braid_malloc(sizeof(int));
        *a[i] = 10 + i;
    }
    braid_deferred *d0 = braid_pool_defer_full(loop, pool, 0, read_arg, a[0], count_free);
    BT_OK(braid_deferred_add(d0, on_ok_plain, on_err, &o[0]));
    braid_deferred *d1 = braid_pool_defer_full(loop, pool, 0, read_arg, a[1], count_free);
    BT_OK(braid_deferred_add(d1, on_ok_plain, on_err, &o[1]));
    watch(braid_pool_defer_full(loop, pool, 0, read_arg, a[2], count_free), &o[2], false);
    BT_ERR(o[2].code, BRAID_EQUEUE_FULL);          /* refused: arg freed at once */
    BT_EQ(args_freed, 1);
    braid_deferred_cancel(d1);                      /* queued: leaves the queue, arg freed */
    BT_EQ(args_freed, 2);
    BT_ERR(o[1].code, BRAID_ECANCELED);
    BT_EQ(braid_pool_step(pool), 1);
    BT_EQ(args_freed, 2);                           /* fn ran; freed when the result is delivered */
    BT_OK(braid_loop_run(loop));
    BT_EQ(args_freed, 3);
    BT_EQ(o[0].value, 10);
    watch(braid_pool_defer_full(loop, pool, 0, read_arg, a[3], count_free), &o[3], false);
    braid_pool_shutdown(pool, BRAID_POOL_CANCEL); braid_pool_free(pool);    /* shut down while queued */
    BT_OK(braid_loop_run(loop));
    BT_ERR(o[3].code, BRAID_ECANCELED);
    BT_EQ(args_freed, 4);
    braid_deferred_unref(d0);
    braid_deferred_unref(d1);
    bt_loop_destroy(loop);
}

/* idle_timeout = BRAID_FOREVER: a thread above min_threads stays (the end of
 * its idle time was idle_since + BRAID_FOREVER, which wrapped around: it
 * left at once). Real time, bounded: 100 ms of idling. */
static atomic_int forever_ran;
static void forever_job(void *arg) {
    (void)arg;
    atomic_fetch_add(&forever_ran, 1);
}
BT_TEST(idle_timeout_forever_keeps_threads) {
    braid_pool_options o = { .min_threads = 0, .max_threads = 1, .name = "forever",
                             .flags = BRAID_POOL_NO_SPIN, .idle_timeout = BRAID_FOREVER };
    braid_pool *pool;
    BT_OK(braid_pool_new(&o, &pool));
    BT_OK(braid_pool_call(pool, forever_job, NULL));
    struct braid_pool_stats st;
    for (int i = 0; i < 100; i++) {   /* ran, and asleep or gone */
        braid_pool_stats(pool, &st);
        if (atomic_load(&forever_ran) && st.running == 0 && (st.idle == 1 || st.threads == 0)) break;
        usleep(1000);
    }
    usleep(100000);
    braid_pool_stats(pool, &st);
    BT_EQ(atomic_load(&forever_ran), 1);
    BT_UEQ(st.threads, 1);
    BT_UEQ(st.idle, 1);
    braid_pool_free(pool);
}
