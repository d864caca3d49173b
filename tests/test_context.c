/* Execution context: typed keys, nested values, origins, and the context
 * following work across every hop braid schedules — Deferred callbacks,
 * timers and call_later, soon, post (from another thread), pool jobs, fiber
 * spawn and await, HTTP handlers — one case per hop. Each hop case checks
 * both directions: the work sees the context it was scheduled in, and not
 * the one current where it happens to run.
 */
// ctest-labels: threads
#include "harness.h"
#include "support/run.h"
#include "support/walk.h"
#include <braid/component.h>
#include <braid/context.h>
#include <braid/deferred.h>
#include <braid/fiber.h>
#include <braid/http.h>
#include <braid/log.h>
#include <braid/pool.h>
#include <braid/stage.h>
#include <braid/testing.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

static const braid_ctx_key USER = BRAID_CTX_KEY_INIT("test.user", BRAID_CTX_STR, "who asked");
static const braid_ctx_key REQ_ID = BRAID_CTX_KEY_INIT("test.req", BRAID_CTX_U64, "a request number");
static const braid_ctx_key TEMP = BRAID_CTX_KEY_INIT("test.temp", BRAID_CTX_F64, "a double");
static const braid_ctx_key DEPTH = BRAID_CTX_KEY_INIT("test.depth", BRAID_CTX_I64, "an integer");

static _Atomic int released;
static void count_release(void *p) { (void)p; atomic_fetch_add(&released, 1); }
static const braid_ctx_key OWNED = { "test.owned", BRAID_CTX_PTR, "an owned pointer", count_release };

/* ---- the map itself -------------------------------------------------------------- */
BT_TEST(with_nests_shadows_and_shares) {
    braid_ctx *a, *b, *c;
    BT_OK(braid_ctx_with_str(NULL, &USER, "alice", &a));
    int line_a = __LINE__ - 1;
    BT_OK(braid_ctx_with_u64(a, &REQ_ID, 7, &b));
    BT_OK(braid_ctx_with_str(b, &USER, "bob", &c));   /* shadows alice in c only */
    int line_c = __LINE__ - 1;
    braid_ctx_value v;
    BT_TRUE(braid_ctx_lookup(a, &USER, &v));
    BT_STREQ(v.str, "alice");
    BT_FALSE(braid_ctx_lookup(a, &REQ_ID, &v));
    BT_TRUE(braid_ctx_lookup(b, &USER, &v));
    BT_STREQ(v.str, "alice");
    BT_TRUE(braid_ctx_lookup(c, &USER, &v));
    BT_STREQ(v.str, "bob");
    BT_TRUE(braid_ctx_lookup(c, &REQ_ID, &v));
    BT_UEQ(v.u64, 7);
    BT_EQ(braid_ctx_depth(c), 3);
    BT_EQ(braid_ctx_depth(NULL), 0);
    const char *file;
    int line;
    BT_TRUE(braid_ctx_origin(c, &USER, &file, &line));
    BT_TRUE(strstr(file, "test_context.c") != NULL);
    BT_EQ(line, line_c);
    BT_TRUE(braid_ctx_origin(b, &USER, &file, &line));
    BT_EQ(line, line_a);
    BT_FALSE(braid_ctx_origin(a, &REQ_ID, &file, &line));
    /* Dropping the parents' references keeps them alive inside c. */
    braid_ctx_unref(a);
    braid_ctx_unref(b);
    BT_TRUE(braid_ctx_lookup(c, &USER, &v));
    BT_STREQ(v.str, "bob");
    braid_ctx_unref(c);
}

static bool collect(const braid_ctx_key *key, braid_ctx_value v, const char *file, int line, void *arg) {
    (void)v; (void)file; (void)line;
    char *out = arg;
    strcat(out, key->name);
    strcat(out, ";");
    return true;
}

BT_TEST(visit_skips_shadowed_values) {
    braid_ctx *a, *b, *c;
    BT_OK(braid_ctx_with_str(NULL, &USER, "alice", &a));
    BT_OK(braid_ctx_with_f64(a, &TEMP, 21.5, &b));
    BT_OK(braid_ctx_with_str(b, &USER, "bob", &c));
    char names[128] = "";
    braid_ctx_visit(c, collect, names);
    BT_STREQ(names, "test.user;test.temp;");
    braid_ctx_unref(a);
    braid_ctx_unref(b);
    braid_ctx_unref(c);
}

BT_TEST(a_value_of_another_type_is_refused) {
    braid_ctx *c = (braid_ctx *)0x1;
    BT_ERR(braid_ctx_with_u64(NULL, &USER, 3, &c), BRAID_ECTX_TYPE);
    BT_PTR_EQ(c, (braid_ctx *)0x1);                  /* untouched */
    braid_ctx_scope s;
    BT_ERR(braid_ctx_push_i64(&s, &REQ_ID, -1), BRAID_ECTX_TYPE);
    BT_PTR_EQ(braid_ctx_current(), NULL);
    BT_STREQ(braid_strerror(BRAID_ECTX_TYPE), "a context value of another type than its key's");
}

BT_TEST(push_pop_nest_and_restore) {
    BT_PTR_EQ(braid_ctx_current(), NULL);
    BT_EQ(braid_ctx_get_i64(&DEPTH, -1), -1);
    braid_ctx_scope s1, s2;
    BT_OK(braid_ctx_push_i64(&s1, &DEPTH, 1));
    BT_EQ(braid_ctx_get_i64(&DEPTH, -1), 1);
    BT_OK(braid_ctx_push_i64(&s2, &DEPTH, 2));
    BT_EQ(braid_ctx_get_i64(&DEPTH, -1), 2);
    BT_EQ(braid_ctx_depth(braid_ctx_current()), 2);
    braid_ctx_pop(&s2);
    BT_EQ(braid_ctx_get_i64(&DEPTH, -1), 1);
    braid_ctx_pop(&s1);
    BT_PTR_EQ(braid_ctx_current(), NULL);
}

BT_TEST(an_owned_pointer_is_released_with_the_last_reference) {
    atomic_store(&released, 0);
    static int thing;
    braid_ctx *a, *b;
    BT_OK(braid_ctx_with_ptr(NULL, &OWNED, &thing, &a));
    BT_OK(braid_ctx_with_u64(a, &REQ_ID, 1, &b));
    braid_ctx_unref(a);
    BT_EQ(atomic_load(&released), 0);     /* b holds a */
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_ctx_scope s;
    braid_ctx_enter(&s, b);
    braid_ctx_unref(b);                   /* the scope holds its own */
    BT_PTR_EQ(braid_ctx_get_ptr(&OWNED), &thing);
    braid_ctx_pop(&s);
    BT_EQ(atomic_load(&released), 1);
}

/* Strings read from a context live in the context: copy them (NULL -> "(none)"). */
static void keep(char *dst, const char *src) { snprintf(dst, 64, "%s", src ? src : "(none)"); }

/* ---- hop: Deferred callbacks ---------------------------------------------------------- */
static char seen_user[64];
static int seen_calls;
static braid_result see_user(braid_result r, void *arg) {
    (void)arg;
    keep(seen_user, braid_ctx_get_str(&USER));
    seen_calls++;
    return r;
}

BT_TEST(hop_deferred_callback_runs_in_the_context_it_was_added_in) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_deferred *d1 = braid_deferred_new(loop), *d2 = braid_deferred_new(loop);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    BT_OK(braid_deferred_add_callback(d1, see_user, NULL));
    braid_ctx_pop(&s);
    BT_OK(braid_deferred_add_callback(d2, see_user, NULL));   /* no context */
    /* Fired from inside another context: the callbacks see their own. */
    BT_OK(braid_ctx_push_str(&s, &USER, "mallory"));
    BT_OK(braid_deferred_callback(d1, NULL, NULL));
    BT_STREQ(seen_user, "alice");
    BT_OK(braid_deferred_callback(d2, NULL, NULL));
    BT_STREQ(seen_user, "(none)");
    BT_STREQ(braid_ctx_get_str(&USER), "mallory");       /* the firer's, restored */
    braid_ctx_pop(&s);
    BT_EQ(seen_calls, 2);
    braid_deferred_unref(d1);
    braid_deferred_unref(d2);
    bt_loop_destroy(loop);
}

BT_TEST(hop_deferred_callbacks_never_run_release_their_context) {
    atomic_store(&released, 0);
    static int thing;
    braid_loop *loop = bt_loop_new(NULL);
    braid_deferred *d = braid_deferred_new(loop);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_ptr(&s, &OWNED, &thing));
    BT_OK(braid_deferred_add_callback(d, see_user, NULL));
    braid_ctx_pop(&s);
    BT_EQ(atomic_load(&released), 0);          /* the callback slot holds it */
    braid_deferred_pause(d);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    braid_deferred_unref(d);                 /* freed paused: the callback never runs */
    BT_EQ(atomic_load(&released), 1);
    bt_loop_destroy(loop);
}

/* Callbacks of one Deferred added in different contexts (none, A, A, B,
 * none): each runs in its own, across a pause in the middle, and each
 * context is released once the callbacks added in it are done. */
static char mixed_seen[5][64];
static int mixed_n;
static braid_result see_mixed(braid_result r, void *arg) {
    (void)arg;
    const char *u = braid_ctx_get_str(&USER);
    uint64_t id = braid_ctx_get_u64(&REQ_ID, 0);
    snprintf(mixed_seen[mixed_n++ % 5], 64, "%s/%llu", u ? u : "-", (unsigned long long)id);
    return r;
}
static braid_result see_mixed_and_pause(braid_result r, void *arg) {
    r = see_mixed(r, arg);
    braid_deferred_pause(arg);
    return r;
}

BT_TEST(hop_deferred_callbacks_of_one_deferred_in_several_contexts) {
    atomic_store(&released, 0);
    static int thing_a, thing_b;
    mixed_n = 0;
    braid_loop *loop = bt_loop_new(NULL);
    braid_deferred *d = braid_deferred_new(loop);
    braid_ctx_scope a0, a, b0, b;
    BT_OK(braid_deferred_add_callback(d, see_mixed, NULL));           /* none */
    BT_OK(braid_ctx_push_ptr(&a0, &OWNED, &thing_a));
    BT_OK(braid_ctx_push_str(&a, &USER, "alice"));
    BT_OK(braid_deferred_add_callback(d, see_mixed_and_pause, d));    /* A, pauses */
    BT_OK(braid_deferred_add_callback(d, see_mixed, NULL));           /* A */
    braid_ctx_pop(&a);
    braid_ctx_pop(&a0);
    BT_OK(braid_ctx_push_ptr(&b0, &OWNED, &thing_b));
    BT_OK(braid_ctx_push_u64(&b, &REQ_ID, 7));
    BT_OK(braid_deferred_add_callback(d, see_mixed, NULL));           /* B */
    braid_ctx_pop(&b);
    braid_ctx_pop(&b0);
    BT_OK(braid_deferred_add_callback(d, see_mixed, NULL));           /* none again */
    BT_EQ(atomic_load(&released), 0);         /* the Deferred holds both */
    braid_ctx_scope m;
    BT_OK(braid_ctx_push_str(&m, &USER, "mallory"));
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    BT_EQ(mixed_n, 2);                        /* paused after A's first */
    BT_STREQ(braid_ctx_get_str(&USER), "mallory");
    braid_deferred_unpause(d);
    BT_STREQ(braid_ctx_get_str(&USER), "mallory");
    braid_ctx_pop(&m);
    BT_EQ(mixed_n, 5);
    BT_STREQ(mixed_seen[0], "-/0");
    BT_STREQ(mixed_seen[1], "alice/0");
    BT_STREQ(mixed_seen[2], "alice/0");
    BT_STREQ(mixed_seen[3], "-/7");
    BT_STREQ(mixed_seen[4], "-/0");
    BT_EQ(atomic_load(&released), 2);         /* both given back once run */
    braid_deferred_unref(d);
    bt_loop_destroy(loop);
}

/* The stash: a scope's context stays alive for callbacks still pending when
 * the scope is popped (their references are real ones), and is released
 * when the last of them is done, not before and not never. */
BT_TEST(context_outlives_its_scope_while_callbacks_hold_it) {
    atomic_store(&released, 0);
    static int thing;
    braid_loop *loop = bt_loop_new(NULL);
    enum { N = 200 };                          /* more than one prepaid batch */
    braid_deferred *ds[N];
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_ptr(&s, &OWNED, &thing));
    for (int i = 0; i < N; i++) {
        ds[i] = braid_deferred_new(loop);
        BT_OK(braid_deferred_add_callback(ds[i], see_user, NULL));
    }
    for (int i = 0; i < N / 2; i++) {          /* half run inside the scope */
        BT_OK(braid_deferred_callback(ds[i], NULL, NULL));
        braid_deferred_unref(ds[i]);
    }
    braid_ctx_pop(&s);
    BT_EQ(atomic_load(&released), 0);
    for (int i = N / 2; i < N; i++) {
        BT_EQ(atomic_load(&released), 0);
        BT_OK(braid_deferred_callback(ds[i], NULL, NULL));
        braid_deferred_unref(ds[i]);
    }
    BT_EQ(atomic_load(&released), 1);
    bt_loop_destroy(loop);
}

/* ---- hop: timers and call_later -------------------------------------------------------- */
static char timer_user[64];
static uint64_t timer_req;
static void on_timer(braid_timer *t, void *arg) {
    (void)t; (void)arg;
    keep(timer_user, braid_ctx_get_str(&USER));
}
static void on_later(void *arg) {
    (void)arg;
    timer_req = braid_ctx_get_u64(&REQ_ID, 0);
}

BT_TEST(hop_timer_and_call_later_run_in_the_context_they_were_started_in) {
    braid_fake_clock *clk = NULL;
    braid_fake_clock_new(0, &clk);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(clk));
    braid_timer t;
    braid_timer_init(loop, &t, on_timer, NULL);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    BT_OK(braid_timer_start(&t, BRAID_MSEC(10)));
    braid_ctx_pop(&s);
    BT_OK(braid_ctx_push_u64(&s, &REQ_ID, 42));
    BT_TRUE(braid_timer_call_later(loop, BRAID_MSEC(20), on_later, NULL) != NULL);
    /* The loop runs them while something else is current on this thread. */
    braid_ctx_scope other;
    BT_OK(braid_ctx_push_str(&other, &USER, "mallory"));
    bt_advance(loop, BRAID_MSEC(30));
    BT_STREQ(timer_user, "alice");
    BT_UEQ(timer_req, 42);
    BT_STREQ(braid_ctx_get_str(&USER), "mallory");
    braid_ctx_pop(&other);
    braid_ctx_pop(&s);
    /* Re-armed outside any context: the next firing sees none. */
    BT_OK(braid_timer_start(&t, BRAID_MSEC(10)));
    bt_advance(loop, BRAID_MSEC(10));
    BT_STREQ(timer_user, "(none)");
    bt_loop_destroy(loop);
    braid_fake_clock_free(clk);
}

BT_TEST(hop_timer_stopped_releases_its_context) {
    atomic_store(&released, 0);
    static int thing;
    braid_loop *loop = bt_loop_new(NULL);
    braid_timer t;
    braid_timer_init(loop, &t, on_timer, NULL);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_ptr(&s, &OWNED, &thing));
    BT_OK(braid_timer_start(&t, BRAID_SECONDS(10)));
    BT_OK(braid_timer_start(&t, BRAID_SECONDS(20)));     /* re-armed: still one reference */
    braid_ctx_pop(&s);
    BT_EQ(atomic_load(&released), 0);
    braid_timer_stop(&t);
    BT_EQ(atomic_load(&released), 1);
    bt_loop_destroy(loop);
}

/* ---- hop: soon ---------------------------------------------------------------------- */
static char soon_user[64];
static int soon_ran;
static void on_soon(void *arg) {
    (void)arg;
    keep(soon_user, braid_ctx_get_str(&USER));
    soon_ran++;
}

BT_TEST(hop_soon_runs_in_the_context_it_was_queued_in) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    BT_OK(braid_loop_soon(loop, on_soon, NULL));
    braid_ctx_pop(&s);
    BT_OK(braid_ctx_push_str(&s, &USER, "mallory"));
    BT_RUN_UNTIL_NOWAIT(loop, soon_ran == 1, 10);
    braid_ctx_pop(&s);
    BT_STREQ(soon_user, "alice");
    bt_loop_destroy(loop);
}

/* ---- hop: post, from another thread --------------------------------------------------- */
typedef struct post_arg {
    braid_loop *loop;
    _Atomic int done;
    uint64_t seen;
} post_arg;

static void on_posted(void *arg) {
    post_arg *p = arg;
    p->seen = braid_ctx_get_u64(&REQ_ID, 0);
    atomic_store(&p->done, 1);
}

static void *poster(void *arg) {
    post_arg *p = arg;
    braid_ctx_scope s;
    if (braid_ctx_push_u64(&s, &REQ_ID, 99) < 0) return NULL;
    int rc = braid_loop_post(p->loop, on_posted, p);
    braid_ctx_pop(&s);
    return rc < 0 ? NULL : p;
}

BT_TEST(hop_post_runs_in_the_posting_threads_context) {
    braid_loop *loop = bt_loop_new(NULL);
    post_arg p = { .loop = loop };
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_u64(&s, &REQ_ID, 1));   /* the loop thread's own */
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, poster, &p), 0);
    void *ok;
    pthread_join(th, &ok);
    BT_TRUE(ok == &p);
    BT_RUN_UNTIL(loop, atomic_load(&p.done), 100);
    BT_UEQ(p.seen, 99);
    BT_UEQ(braid_ctx_get_u64(&REQ_ID, 0), 1);
    braid_ctx_pop(&s);
    bt_loop_destroy(loop);
}

/* ---- hop: pool jobs -------------------------------------------------------------------- */
static char job_user[64];
static braid_result job(void *arg) {
    (void)arg;
    keep(job_user, braid_ctx_get_str(&USER));     /* on a worker thread */
    return braid_result_ok(NULL);
}
static _Atomic int call_seen;
static void call_job(void *arg) {
    (void)arg;
    atomic_store(&call_seen, (int)braid_ctx_get_u64(&REQ_ID, 0));
}

BT_TEST(hop_pool_job_runs_in_the_submitters_context) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .max_threads = 2 }, &pool));
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    braid_deferred *d = braid_pool_defer(loop, pool, job, NULL);
    BT_TRUE(d != NULL);
    BT_OK(braid_deferred_add_callback(d, see_user, NULL));
    braid_deferred_unref(d);
    braid_ctx_pop(&s);
    seen_calls = 0;
    seen_user[0] = 0;
    BT_OK(braid_ctx_push_u64(&s, &REQ_ID, 5));
    BT_OK(braid_pool_call(pool, call_job, NULL));
    braid_ctx_pop(&s);
    BT_RUN_UNTIL(loop, seen_calls == 1, 1000);
    BT_STREQ(job_user, "alice");          /* the worker ran it in alice's context */
    BT_STREQ(seen_user, "alice");         /* and so did the callback, on the loop */
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_pool_free(pool);
    BT_EQ(atomic_load(&call_seen), 5);
    bt_loop_destroy(loop);
}

/* ---- hop: stage events ------------------------------------------------------------------ */
typedef struct stage_seen {
    braid_stage *next;              /* forward every event there */
    char user[4][64];               /* by event id */
    _Atomic long handled;
} stage_seen;

static void stage_see(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    stage_seen *r = arg;
    for (size_t i = 0; i < n; i++) {
        uintptr_t id = (uintptr_t)evs[i].data - 1;
        if (id < 4) keep(r->user[id], braid_ctx_get_str(&USER));
        if (r->next && braid_stage_enqueue(r->next, &evs[i]) < 0) abort();
    }
    atomic_fetch_add(&r->handled, (long)n);
}

/* Three events for st, under alice, bob and no context. */
static void enqueue_three(braid_stage *st) {
    const char *users[3] = { "alice", "bob", NULL };
    for (uintptr_t i = 0; i < 3; i++) {
        braid_stage_event e = BRAID_STAGE_EVENT((void *)(i + 1), NULL);
        braid_ctx_scope s;
        if (users[i]) BT_OK(braid_ctx_push_str(&s, &USER, users[i]));
        BT_OK(braid_stage_enqueue(st, &e));
        if (users[i]) braid_ctx_pop(&s);
    }
}

static void expect_three(stage_seen *r) {
    BT_STREQ(r->user[0], "alice");
    BT_STREQ(r->user[1], "bob");
    BT_STREQ(r->user[2], "(none)");
}

/* One batch of three events enqueued in three contexts: each is handled in
 * its own (the loop's wake-up was queued in alice's), and so is what the
 * handler forwards to a stage of the same domain (a direct run, no hop). */
BT_TEST(hop_stage_events_run_in_their_enqueuers_context) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_stage_domain *d;
    BT_OK(braid_stage_domain_new(loop, NULL, NULL, &d));
    static stage_seen ra, rb;
    memset(&ra, 0, sizeof ra);
    memset(&rb, 0, sizeof rb);
    braid_stage *a, *b;
    BT_OK(braid_stage_new(d, "a", stage_see, &ra, NULL, &a));
    BT_OK(braid_stage_new(d, "b", stage_see, &rb, NULL, &b));
    ra.next = b;
    enqueue_three(a);
    BT_RUN_UNTIL(loop, atomic_load(&rb.handled) == 3, 100);
    expect_three(&ra);
    expect_three(&rb);
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_stage_stats sa;
    braid_stage_stats_get(a, &sa);
    BT_UEQ(sa.batches, 1);                 /* one batch, cut in three calls */
    braid_stage_free(a);
    braid_stage_free(b);
    braid_stage_domain_free(d);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

static _Atomic int gate_open;
static void gate_job(void *arg) {
    (void)arg;
    while (!atomic_load(&gate_open)) sched_yield();
}

/* Across domains: a loop stage forwards to a pool stage whose one worker is
 * busy, so the three events wait in its queue and run as one batch on the
 * worker (whose job was queued in alice's context). */
BT_TEST(hop_stage_events_cross_into_a_pool_domain) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .max_threads = 1 }, &pool));
    braid_stage_domain *dl, *dp;
    BT_OK(braid_stage_domain_new(loop, NULL, NULL, &dl));
    BT_OK(braid_stage_domain_new(loop, pool, NULL, &dp));
    static stage_seen ra, rb;
    memset(&ra, 0, sizeof ra);
    memset(&rb, 0, sizeof rb);
    braid_stage *a, *b;
    BT_OK(braid_stage_new(dl, "a", stage_see, &ra, NULL, &a));
    BT_OK(braid_stage_new(dp, "b", stage_see, &rb, NULL, &b));
    ra.next = b;
    atomic_store(&gate_open, 0);
    BT_OK(braid_pool_call(pool, gate_job, NULL));
    enqueue_three(a);
    BT_RUN_UNTIL(loop, atomic_load(&ra.handled) == 3, 100);
    atomic_store(&gate_open, 1);
    BT_RUN_UNTIL(loop, atomic_load(&rb.handled) == 3, 100000);
    expect_three(&ra);
    expect_three(&rb);
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_stage_stats sb;
    braid_stage_stats_get(b, &sb);
    BT_UEQ(sb.batches, 1);
    braid_stage_free(a);
    braid_stage_free(b);
    braid_stage_domain_free(dl);
    braid_stage_domain_free(dp);
    braid_pool_free(pool);
    bt_drain(loop);   /* after the pool's threads are joined: the domain's last notice is posted */
    bt_loop_destroy(loop);
}

/* ---- hop: component messages -------------------------------------------------------------- */
typedef struct comp_seen {
    char user[4][64];     /* by message number */
    int n;
    char after_run[64];   /* the fiber, after its last receive and a yield */
} comp_seen;

/* A callback component: note each message's context, pass it on. */
static int comp_relay(braid_component *c, void *state) {
    comp_seen *r = state;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (r->n < 4) keep(r->user[r->n++], braid_ctx_get_str(&USER));
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, NULL) < 0) abort();
    }
    return BRAID_COMPONENT_IDLE;
}

/* A fiber component: the same, three messages, then end. */
static int comp_fiber(braid_component *c, void *state) {
    comp_seen *r = state;
    while (r->n < 3) {
        braid_component_msg m;
        int rc = braid_component_recv_wait(c, BRAID_COMPONENT_INBOX, &m, BRAID_SECONDS(10));
        if (rc < 0) return rc;
        keep(r->user[r->n++], braid_ctx_get_str(&USER));
    }
    braid_fiber_yield(braid_component_loop(c));     /* the fiber keeps the last one's across a switch */
    keep(r->after_run, braid_ctx_get_str(&USER));
    return 0;
}

/* Three messages delivered under no context, alice and bob: the relay
 * (one run for all three, scheduled in no context) receives each in
 * its sender's context, and what it sends carries that context on to a
 * fiber component. */
BT_TEST(hop_component_messages_carry_the_senders_context) {
    braid_loop *loop = bt_loop_new(NULL);
    static comp_seen rr, rf;
    memset(&rr, 0, sizeof rr);
    memset(&rf, 0, sizeof rf);
    braid_component *relay, *fib;
    BT_OK(braid_component_new(loop, comp_relay, &rr, NULL, &relay));
    BT_OK(braid_component_new_fiber(loop, comp_fiber, &rf, NULL, &fib));
    BT_OK(braid_component_link(relay, "outbox", fib, "inbox", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_activate(relay));
    BT_OK(braid_component_activate(fib));
    bt_drain(loop);
    const char *users[3] = { NULL, "alice", "bob" };
    static int msgs[3];
    for (int i = 0; i < 3; i++) {
        braid_ctx_scope s;
        if (users[i]) BT_OK(braid_ctx_push_str(&s, &USER, users[i]));
        BT_OK(braid_component_deliver(relay, BRAID_COMPONENT_INBOX, &msgs[i], NULL));
        if (users[i]) braid_ctx_pop(&s);
    }
    BT_RUN_UNTIL(loop, braid_component_is_done(fib), 100);
    for (int k = 0; k < 2; k++) {
        comp_seen *r = k ? &rf : &rr;
        BT_EQ(r->n, 3);
        BT_STREQ(r->user[0], "(none)");
        BT_STREQ(r->user[1], "alice");
        BT_STREQ(r->user[2], "bob");
    }
    BT_STREQ(rf.after_run, "bob");
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_component_free(relay);
    braid_component_free(fib);
    bt_drain(loop);
    bt_loop_destroy(loop);
}


/* A ready call queued in a context and cancelled gives the context's
 * reference back (the leak gate fails otherwise). */
static void never_called(void *arg) { (void)arg; abort(); }
BT_TEST(hop_soon_cancelled_releases_its_context) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_soon node = { .fn = never_called };
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    braid_loop_soon_node(loop, &node);
    braid_ctx_pop(&s);
    BT_TRUE(braid_loop_soon_cancel(loop, &node));
    BT_TRUE(!braid_loop_soon_cancel(loop, &node));
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* A component woken from inside a context runs in none: the context of
 * whoever woke the scheduler is not lent to the runs it makes. */
static int note_run_context(braid_component *c, void *state) {
    (void)c;
    keep(state, braid_ctx_get_str(&USER));
    return BRAID_COMPONENT_IDLE;
}
BT_TEST(hop_component_run_does_not_inherit_the_wakers_context) {
    braid_loop *loop = bt_loop_new(NULL);
    static char seen[64];
    braid_component *c;
    BT_OK(braid_component_new(loop, note_run_context, seen, NULL, &c));
    BT_OK(braid_component_activate(c));
    bt_drain(loop);
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "mallory"));
    braid_component_wake(c);
    braid_ctx_pop(&s);
    bt_drain(loop);
    BT_STREQ(seen, "(none)");
    braid_component_free(c);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* ---- hop: a threaded component's thread, both ways ------------------------------------------ */
/* The thread notes the context each message arrives in (a copy travels back
 * in the reply, so the loop reads it only after the queue's lock), then
 * replies from inside it. */
static int thread_echo(braid_component_thread *t, void *state) {
    (void)state;
    for (int i = 0; i < 3; i++) {
        braid_component_msg m;
        int rc = braid_component_thread_recv(t, NULL, &m, BRAID_SECONDS(10));
        if (rc < 0) return rc;
        char *seen = malloc(64);
        if (!seen) return BRAID_ENOMEM;
        keep(seen, braid_ctx_get_str(&USER));
        rc = braid_component_thread_send(t, BRAID_COMPONENT_OUTBOX, seen, free, BRAID_SECONDS(10));
        if (rc < 0) {
            free(seen);
            return rc;
        }
    }
    return 0;
}

typedef struct thread_seen {
    char on_thread[3][64];   /* what the thread saw, by message */
    char on_reply[3][64];    /* the context the reply arrived in, on the loop */
    int n;
} thread_seen;

static int collect_replies(braid_component *c, void *state) {
    thread_seen *r = state;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (r->n < 3) {
            keep(r->on_thread[r->n], m.ptr);
            keep(r->on_reply[r->n], braid_ctx_get_str(&USER));
            r->n++;
        }
        braid_component_msg_free(m);
    }
    return BRAID_COMPONENT_IDLE;
}

/* Three messages delivered under alice, no context and bob: the thread sees
 * each in its sender's context (not the one before it), and each reply it
 * sends from there reaches the next component in that context. */
BT_TEST(hop_threaded_component_thread_runs_in_the_senders_context) {
    braid_loop *loop = bt_loop_new(NULL);
    static thread_seen r;
    memset(&r, 0, sizeof r);
    braid_component *th, *sink;
    BT_OK(braid_component_new_threaded(loop, thread_echo, NULL, NULL, &th));
    BT_OK(braid_component_new(loop, collect_replies, &r, NULL, &sink));
    BT_OK(braid_component_link(th, "outbox", sink, "inbox", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_activate(sink));
    BT_OK(braid_component_activate(th));
    const char *users[3] = { "alice", NULL, "bob" };
    static int msgs[3];
    for (int i = 0; i < 3; i++) {
        braid_ctx_scope s;
        if (users[i]) BT_OK(braid_ctx_push_str(&s, &USER, users[i]));
        BT_OK(braid_component_deliver(th, BRAID_COMPONENT_INBOX, &msgs[i], NULL));
        if (users[i]) braid_ctx_pop(&s);
        BT_RUN_UNTIL(loop, r.n == i + 1, 1000);   /* one at a time: each reply before the next */
    }
    BT_RUN_UNTIL(loop, braid_component_is_done(th), 1000);
    static const char *const want[3] = { "alice", "(none)", "bob" };
    for (int i = 0; i < 3; i++) {
        BT_STREQ(r.on_thread[i], want[i]);
        BT_STREQ(r.on_reply[i], want[i]);
    }
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_component_free(th);
    braid_component_free(sink);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* ---- hop: a component fed from a Deferred ------------------------------------------------------ */
/* The value a from_deferred component sends on is in the context the
 * component was made in (where its callback on the Deferred was added),
 * not in whatever context fires the Deferred or runs the component. */
BT_TEST(hop_from_deferred_component_sends_in_its_makers_context) {
    braid_loop *loop = bt_loop_new(NULL);
    static thread_seen r;
    memset(&r, 0, sizeof r);
    braid_deferred *d = braid_deferred_new(loop);
    BT_TRUE(d != NULL);
    braid_component *from, *sink;
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "carol"));
    BT_OK(braid_component_new_from_deferred(loop, d, NULL, &from));
    braid_ctx_pop(&s);
    BT_OK(braid_component_new(loop, collect_replies, &r, NULL, &sink));
    BT_OK(braid_component_link(from, "outbox", sink, "inbox", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_activate(sink));
    BT_OK(braid_component_activate(from));
    bt_drain(loop);
    char *v = malloc(64);
    snprintf(v, 64, "value");
    braid_component_wake(sink);          /* the scheduler's next run is queued in no context */
    BT_OK(braid_ctx_push_str(&s, &USER, "mallory"));     /* whoever fires it */
    BT_OK(braid_deferred_callback(d, v, free));
    braid_ctx_pop(&s);
    BT_RUN_UNTIL(loop, r.n == 1, 100);
    BT_STREQ(r.on_thread[0], "value");
    BT_STREQ(r.on_reply[0], "carol");
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_component_free(from);
    braid_component_free(sink);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* ---- hop: a splitter held back by a full destination ---------------------------------------- */
/* A component that keeps its inbox full until told to drain it. */
static int drain_when_open(braid_component *c, void *state) {
    bool *open = state;
    braid_component_msg m;
    while (*open && braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) braid_component_msg_free(m);
    return BRAID_COMPONENT_IDLE;
}

/* The splitter hands a message sent under alice to a full destination
 * first: it waits, and hands the message on (to that one and the next) in
 * a later run, started by the destination's pop in no context — still in
 * alice's. */
BT_TEST(hop_splitter_resumed_after_a_full_box_keeps_the_senders_context) {
    braid_loop *loop = bt_loop_new(NULL);
    static bool open;
    static comp_seen late;
    open = false;
    memset(&late, 0, sizeof late);
    braid_component *slow, *last, *sp;
    BT_OK(braid_component_new(loop, drain_when_open, &open, &(braid_component_options){ .name = "slow", .capacity = 1 },
                              &slow));
    BT_OK(braid_component_new(loop, comp_relay, &late, &(braid_component_options){ .name = "late" }, &last));
    BT_OK(braid_component_splitter_new(loop, NULL, &sp));
    BT_OK(braid_component_splitter_add(sp, slow, "inbox", 0));
    BT_OK(braid_component_splitter_add(sp, last, "inbox", 0));
    braid_component *all[] = { slow, last, sp };
    for (int i = 0; i < 3; i++) BT_OK(braid_component_activate(all[i]));
    static int filler, msg;
    BT_OK(braid_component_deliver(slow, 0, &filler, NULL));      /* slow is full */
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    BT_OK(braid_component_deliver(sp, BRAID_COMPONENT_INBOX, &msg, NULL));
    braid_ctx_pop(&s);
    bt_drain(loop);
    BT_EQ(late.n, 0);                                              /* held back by slow */
    open = true;
    braid_component_wake(slow);
    bt_drain(loop);
    BT_EQ(late.n, 1);
    BT_STREQ(late.user[0], "alice");
    BT_PTR_EQ(braid_ctx_current(), NULL);
    for (int i = 0; i < 3; i++) braid_component_free(all[i]);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* ---- hop: fiber spawn and await ---------------------------------------------------------- */
typedef struct fib {
    braid_loop *loop;
    braid_deferred *gate;
    char at_start[64];
    uint64_t after_await;
    char user_after_await[64];
} fib;

static braid_result fiber_body(void *arg) {
    fib *f = arg;
    keep(f->at_start, braid_ctx_get_str(&USER));          /* the spawner's */
    braid_ctx_scope s;
    if (braid_ctx_push_u64(&s, &REQ_ID, 77) < 0) return braid_result_errf(BRAID_ENOMEM, "push");
    braid_result r = braid_fiber_await(braid_deferred_ref(f->gate));
    braid_result_drop(r);
    f->after_await = braid_ctx_get_u64(&REQ_ID, 0);     /* its own, kept across the switch */
    keep(f->user_after_await, braid_ctx_get_str(&USER));
    braid_ctx_pop(&s);
    return braid_result_ok(NULL);
}

BT_TEST(hop_fiber_spawn_and_await_keep_the_fibers_context) {
    braid_loop *loop = bt_loop_new(NULL);
    fib f = { .loop = loop, .gate = braid_deferred_new(loop) };
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "alice"));
    braid_deferred *d = braid_fiber_spawn(loop, fiber_body, &f, NULL);
    braid_ctx_pop(&s);
    BT_TRUE(d != NULL);
    bt_spin(loop, 2);                                   /* the fiber runs and awaits */
    BT_STREQ(f.at_start, "alice");
    /* While the fiber waits, the loop's thread does not see its values. */
    BT_PTR_EQ(braid_ctx_current(), NULL);
    BT_UEQ(braid_ctx_get_u64(&REQ_ID, 0), 0);
    BT_OK(braid_ctx_push_str(&s, &USER, "mallory"));
    BT_OK(braid_deferred_callback(f.gate, NULL, NULL));  /* resumed from another context */
    braid_ctx_pop(&s);
    BT_RUN_UNTIL_NOWAIT(loop, braid_deferred_has_result(d), 10);
    BT_UEQ(f.after_await, 77);
    BT_STREQ(f.user_after_await, "alice");
    BT_PTR_EQ(braid_ctx_current(), NULL);
    braid_deferred_unref(d);
    braid_deferred_unref(f.gate);
    bt_loop_destroy(loop);
}

/* ---- hop: HTTP handlers ------------------------------------------------------------------- */
typedef struct hx {
    braid_loop *loop;
    braid_fake_clock *clk;
    braid_http_server *srv;
} hx;

static braid_result answer_later(braid_result r, void *arg) {
    (void)arg;
    braid_result_drop(r);
    /* Deep in the handler's work: the request is found in the context. */
    braid_http_request *req = braid_ctx_get_ptr(&braid_http_request_key);
    if (!req) return braid_result_errf(BRAID_EINVAL, "no request in the context");
    char body[128];
    int n = snprintf(body, sizeof body, "path=%.*s user=%s id=%llu", (int)req->path_len, req->path,
                     braid_ctx_get_str(&USER) ? braid_ctx_get_str(&USER) : "-",
                     (unsigned long long)braid_ctx_get_u64(&braid_log_request_id_key, 0));
    braid_http_response *resp = NULL;
    if (braid_http_response_new(200, "text/plain", body, (size_t)n, &resp) < 0) return braid_result_errf(BRAID_ENOMEM, "response");
    return braid_result_ok_owned(resp, braid_http_response_free);
}

static braid_deferred *h_ctx(braid_http_request *req, void *arg) {
    hx *x = arg;
    BT_PTR_EQ(braid_ctx_get_ptr(&braid_http_request_key), req);
    /* Answer after a delay, through a Deferred and a timer: two hops. */
    braid_deferred *d = braid_deferred_later(x->loop, BRAID_MSEC(req->path[1] == 'a' ? 20 : 10), NULL, NULL);
    if (d) braid_deferred_add_callback(d, answer_later, NULL);
    return d;
}

BT_TEST(hop_http_handler_has_the_request_and_requests_are_isolated) {
    hx x;
    braid_fake_clock_new(BRAID_SECONDS(1), &x.clk);
    x.loop = bt_loop_new(braid_fake_clock_base(x.clk));
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &USER, "server-owner"));
    BT_OK(braid_http_server_new(x.loop, NULL, &x.srv));
    BT_OK(braid_http_server_route(x.srv, "GET", "/", BRAID_HTTP_ROUTE_PREFIX, h_ctx, &x));
    braid_ctx_pop(&s);
    braid_memory_transport *m[2];
    for (int i = 0; i < 2; i++) {
        braid_protocol *p = braid_factory_build(braid_http_server_factory(x.srv), NULL);
        BT_TRUE(p != NULL);
        braid_memory_transport_new(x.loop, p, &m[i]);
        BT_TRUE(m[i] != NULL);
    }
    /* Two requests in flight at once; the second answers first. */
    const char *r0 = "GET /alpha HTTP/1.1\r\nHost: a\r\n\r\n", *r1 = "GET /beta HTTP/1.1\r\nHost: a\r\n\r\n";
    BT_OK(braid_memory_transport_receive(m[0], r0, strlen(r0)));
    BT_OK(braid_memory_transport_receive(m[1], r1, strlen(r1)));
    bt_spin(x.loop, 4);
    bt_advance(x.loop, BRAID_MSEC(30));
    const char *want[2] = { "path=/alpha user=- id=1", "path=/beta user=- id=2" };
    for (int i = 0; i < 2; i++) {
        size_t n;
        const char *out = braid_memory_transport_data(m[i], &n);
        char buf[1024];
        snprintf(buf, sizeof buf, "%.*s", (int)n, out);
        BT_TRUE(strstr(buf, "200 OK") != NULL);
        if (!strstr(buf, want[i])) bt_fail(__FILE__, __LINE__, "response %d: %s", i, buf);
        braid_memory_transport_free(m[i]);
    }
    bt_spin(x.loop, 4);
    BT_OK(braid_http_server_free(x.srv));
    bt_loop_destroy(x.loop);
    braid_fake_clock_free(x.clk);
}

/* ---- allocation failures ------------------------------------------------------------------ */
static int walk_body(void *arg) {
    braid_loop *loop = arg;
    braid_ctx_scope s1, s2;
    int rc = braid_ctx_push_str(&s1, &USER, "alice");
    if (rc < 0) return rc;
    rc = braid_ctx_push_u64(&s2, &REQ_ID, 3);
    if (rc < 0) {
        braid_ctx_pop(&s1);
        return rc;
    }
    braid_deferred *d = braid_deferred_new(loop);
    rc = d ? braid_deferred_add_callback(d, see_user, NULL) : BRAID_ENOMEM;
    if (d) {
        if (rc == 0) rc = braid_deferred_callback(d, NULL, NULL);
        braid_deferred_unref(d);
    }
    braid_ctx_pop(&s2);
    braid_ctx_pop(&s1);
    if (rc == 0 && braid_ctx_current() != NULL) return -9999;
    return rc;
}

BT_TEST(alloc_walk_push_and_callbacks) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "context", .arg = loop, .body = walk_body,
                                                 .loop = loop, .warm_up = true, .enomem_only = true });
    BT_GE(r.errors, 2);
    BT_PTR_EQ(braid_ctx_current(), NULL);
    bt_loop_destroy(loop);
}
