/* Deferreds: every rule of <braid/deferred.h>, on the fake clock. */
#include "harness.h"
#include "support/walk.h"
#include "deferred/deferred_internal.h"   /* BRAID__DEFERRED_QUARANTINE */
#include <braid/testing_deferred.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fixtures -------------------------------------------------------------------- */
typedef struct logcap {
    int n;
    int errors;
    char last[1024];
    char all[4096];            /* every line, '\n'-separated (truncated when full) */
} logcap;
static logcap g_log;
static void cap_log(void *ctx, braid_log_level level, const char *msg) {
    (void)ctx;
    g_log.n++;
    if (level == BRAID_LOG_ERROR) g_log.errors++;
    snprintf(g_log.last, sizeof g_log.last, "%s", msg);
    size_t used = strlen(g_log.all);
    snprintf(g_log.all + used, sizeof g_log.all - used, "%s\n", msg);
}

typedef struct unhandled_rec {
    int n;
    int code;
    char file[256];
    int line;
    char func[64];
    char text[1024];
} unhandled_rec;
static unhandled_rec g_unh;
static void on_unhandled(void *ctx, braid_loop *loop, const braid_failure *f) {
    (void)ctx; (void)loop;
    g_unh.n++;
    g_unh.code = f->code;
    snprintf(g_unh.file, sizeof g_unh.file, "%s", f->file ? f->file : "");
    snprintf(g_unh.func, sizeof g_unh.func, "%s", f->func ? f->func : "");
    g_unh.line = f->line;
    braid_failure_format(f, g_unh.text, sizeof g_unh.text);
}

static braid_fake_clock *fc;
/* A loop on the fake clock whose log and unhandled-failure hook are captured. */
static braid_loop *mkloop(void) {
    memset(&g_log, 0, sizeof g_log);
    memset(&g_unh, 0, sizeof g_unh);
    braid_fake_clock_new(0, &fc);
    BT_TRUE(fc);
    braid_loop_options o = { .clock = braid_fake_clock_base(fc), .log = cap_log };
    braid_loop *loop = NULL;
    BT_OK(braid_loop_new(&o, &loop));
    braid_loop_set_unhandled(loop, on_unhandled, NULL);
    return loop;
}
static void done(braid_loop *loop) {
    BT_EQ(braid_deferred_live(loop), 0);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* A recorder: callbacks append what they saw. */
typedef struct trace {
    char s[256];
    int n;
} trace;
static void tr(trace *t, const char *fmt, long v) {
    char b[32];
    snprintf(b, sizeof b, fmt, v);
    strncat(t->s, b, sizeof t->s - strlen(t->s) - 1);
    t->n++;
}

typedef struct step { trace *t; long add; int fail_code; } step;
/* cb: value + add (a failure if fail_code), as an intptr. */
static braid_result cb_add(braid_result r, void *arg) {
    step *s = arg;
    long v = (long)(intptr_t)r.value;
    tr(s->t, "c%ld,", v);
    if (s->fail_code) return braid_result_errf(s->fail_code, "step failed at %ld", v);
    return braid_result_ok((void *)(intptr_t)(v + s->add));
}
/* eb: records the code; recovers with `add` unless fail_code (then passes on). */
static braid_result eb_rec(braid_result r, void *arg) {
    step *s = arg;
    tr(s->t, "e%ld,", (long)r.failure->code);
    if (s->fail_code) return r;
    braid_result_drop(r);
    return braid_result_ok((void *)(intptr_t)s->add);
}

static long value_of(braid_deferred *d) {
    braid_result r = braid_deferred_expect_success(d);
    long v = (long)(intptr_t)r.value;
    braid_result_drop(r);
    return v;
}

/* ---- basics ------------------------------------------------------------------------ */
BT_TEST(fire_then_add_runs_at_once) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    BT_TRUE(d);
    BT_FALSE(braid_deferred_is_called(d));
    braid_deferred_expect_no_result(d);
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)41, NULL));
    BT_TRUE(braid_deferred_is_called(d));
    BT_TRUE(braid_deferred_has_result(d));
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_STREQ(t.s, "c41,");
    BT_EQ(value_of(d), 42);
    braid_deferred_unref(d);
    done(loop);
}

BT_TEST(add_then_fire_in_order_and_tracks_switch) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step a = { &t, 1, 0 }, fail = { &t, 0, BRAID_EPIPE }, skipped = { &t, 100, 0 },
         rec = { &t, 7, 0 }, b = { &t, 10, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add(d, cb_add, eb_rec, &a));      /* c1 -> 2 */
    BT_OK(braid_deferred_add_callback(d, cb_add, &fail));            /* c2 -> EPIPE */
    BT_OK(braid_deferred_add_callback(d, cb_add, &skipped));         /* skipped: failure */
    BT_OK(braid_deferred_add_errback(d, eb_rec, &rec));              /* eEPIPE -> 7 */
    BT_OK(braid_deferred_add_errback(d, eb_rec, &skipped));          /* skipped: success */
    BT_OK(braid_deferred_add_both(d, cb_add, &b));                   /* c7 -> 17 */
    braid_deferred_expect_no_result(d);
    BT_EQ(t.n, 0);
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)1, NULL));
    char want[64];
    snprintf(want, sizeof want, "c1,c2,e%d,c7,", BRAID_EPIPE);
    BT_STREQ(t.s, want);
    BT_EQ(value_of(d), 17);
    braid_deferred_unref(d);
    done(loop);
}

static int g_freed;
static void count_free(void *p) { g_freed++; braid_free(p); }

BT_TEST(value_dtor_runs_once_when_released) {
    braid_loop *loop = mkloop();
    g_freed = 0;
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_callback(d, braid_malloc(16), count_free));
    BT_EQ(g_freed, 0);
    braid_deferred_unref(d);
    BT_EQ(g_freed, 1);
    /* braid_deferred_succeed: only the consumer reference */
    d = braid_deferred_succeed(loop, braid_malloc(8), count_free);
    BT_TRUE(braid_deferred_has_result(d));
    braid_deferred_unref(d);
    BT_EQ(g_freed, 2);
    done(loop);
}

BT_TEST(release_before_fire_keeps_it_alive_for_the_producer) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    braid_deferred_unref(d);                 /* consumer done */
    BT_EQ(braid_deferred_live(loop), 1);       /* producer still holds it */
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)5, NULL));
    BT_STREQ(t.s, "c5,");
    BT_EQ(braid_deferred_live(loop), 0);       /* freed after its callbacks ran */
    done(loop);
}

BT_TEST(double_fire_is_a_reported_error) {
    braid_loop *loop = mkloop();
    g_freed = 0;
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)1, NULL));
    int errs = g_log.errors;
    BT_ERR(braid_deferred_callback(d, braid_malloc(4), count_free), BRAID_EALREADY_CALLED);
    BT_EQ(g_freed, 1);                          /* the second value was dropped */
    BT_EQ(g_log.errors, errs + 1);
    BT_TRUE(strstr(g_log.last, "fired twice") != NULL);
    BT_ERR(braid_deferred_errback(d, braid_failure_new(BRAID_EPIPE, "late")),
           BRAID_EALREADY_CALLED);
    BT_EQ(value_of(d), 1);                      /* the first result stands */
    BT_STREQ(braid_strerror(BRAID_EALREADY_CALLED), "Deferred already called");
    braid_deferred_unref(d);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(many_callbacks_spill_and_keep_order) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    for (int i = 0; i < 100; i++) BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)0, NULL));
    BT_EQ(t.n, 100);
    BT_EQ(value_of(d), 100);
    braid_deferred_unref(d);
    done(loop);
}

/* Warm a loop's free list. Debug builds hold freed Deferreds in a FIFO
 * quarantine and reuse one only once BRAID__DEFERRED_QUARANTINE newer ones
 * stand behind it: fill that first (release builds reuse at once). */
static void warm_free_list(braid_loop *loop) {
#ifdef BRAID_DEBUG
    enum { N = BRAID__DEFERRED_QUARANTINE + 1 };
#else
    enum { N = 1 };
#endif
    braid_deferred **ds = malloc(N * sizeof *ds);
    BT_TRUE(ds);
    for (int i = 0; i < N; i++) ds[i] = braid_deferred_succeed(loop, NULL, NULL);
    for (int i = 0; i < N; i++) braid_deferred_unref(ds[i]);
    free(ds);
}

/* Ready path allocates nothing: already fired + callback, and new + callback + fire. */
static braid_result pass(braid_result r, void *arg) { (void)arg; return r; }
BT_TEST(ready_path_allocates_nothing) {
    braid_loop *loop = mkloop();
    warm_free_list(loop);
    long before = braid_test_alloc_count();
    for (int i = 0; i < 1000; i++) {
        braid_deferred *d = braid_deferred_new(loop);
        braid_deferred_add_callback(d, pass, NULL);
        braid_deferred_callback(d, (void *)(intptr_t)i, NULL);
        braid_deferred_unref(d);
        braid_deferred *e = braid_deferred_succeed(loop, NULL, NULL);
        braid_deferred_add(e, pass, pass, NULL);
        braid_deferred_add(e, pass, pass, NULL);
        braid_deferred_unref(e);
    }
    BT_EQ(braid_test_alloc_count() - before, 0);
    done(loop);
}

/* ---- chaining ------------------------------------------------------------------------ */
static braid_result return_chain(braid_result r, void *arg) {
    braid_result_drop(r);
    return braid_result_chain((braid_deferred *)arg);
}

BT_TEST(chain_waits_for_inner) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *inner = braid_deferred_new(loop);
    braid_deferred *outer = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(outer, return_chain, inner));  /* takes inner's consumer ref */
    BT_OK(braid_deferred_add_callback(outer, cb_add, &s));
    BT_OK(braid_deferred_callback(outer, NULL, NULL));
    BT_TRUE(braid_deferred_is_called(outer));
    braid_deferred_expect_no_result(outer);                  /* waiting on inner */
    BT_EQ(t.n, 0);
    BT_OK(braid_deferred_callback(inner, (void *)(intptr_t)9, NULL));
    BT_STREQ(t.s, "c9,");
    BT_EQ(value_of(outer), 10);
    braid_deferred_unref(outer);
    done(loop);
}

BT_TEST(chain_to_already_fired_takes_its_result) {
    braid_loop *loop = mkloop();
    braid_deferred *inner = braid_deferred_fail(loop, braid_failure_new(BRAID_EPIPE, "inner"));
    braid_deferred *outer = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(outer, return_chain, inner));
    BT_OK(braid_deferred_callback(outer, NULL, NULL));
    braid_failure *f = braid_deferred_expect_failure(outer, BRAID_EPIPE);
    BT_STREQ(f->message, "inner");
    braid_failure_free(f);
    braid_deferred_unref(outer);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(fire_with_a_chain) {
    braid_loop *loop = mkloop();
    braid_deferred *inner = braid_deferred_new(loop);
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_fire(d, braid_result_chain(inner)));
    braid_deferred_expect_no_result(d);
    BT_OK(braid_deferred_callback(inner, (void *)(intptr_t)3, NULL));
    BT_EQ(value_of(d), 3);
    braid_deferred_unref(d);
    done(loop);
}

static braid_result return_self(braid_result r, void *arg) {
    braid_result_drop(r);
    return braid_result_chain((braid_deferred *)arg);
}
BT_TEST(callback_returning_its_own_deferred_fails_it) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred_ref(d);   /* the reference braid_result_chain hands over */
    BT_OK(braid_deferred_add_callback(d, return_self, d));
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_EINVAL);
    braid_failure_free(f);
    braid_deferred_unref(d);
    done(loop);
}

/* d[i]'s callback returns d[i+1]: firing the last unwinds a million levels.
 * Run on a thread with a 128 KiB stack: any recursion per level would blow
 * it many times over (a million frames of even 16 bytes is 16 MB). */
#include <pthread.h>
static void *million_chain(void *arg) {
    (void)arg;
    braid_loop *loop = mkloop();
    enum { N = 1000000 };
    braid_deferred **ds = malloc(N * sizeof *ds);
    BT_TRUE(ds);
    for (int i = 0; i < N; i++) ds[i] = braid_deferred_new(loop);
    for (int i = 0; i + 1 < N; i++) {
        BT_OK(braid_deferred_add_callback(ds[i], return_chain, ds[i + 1]));
        BT_OK(braid_deferred_callback(ds[i], NULL, NULL));   /* waits on ds[i+1] */
    }
    braid_deferred_expect_no_result(ds[0]);
    BT_EQ(braid_deferred_live(loop), N);
    BT_OK(braid_deferred_callback(ds[N - 1], (void *)(intptr_t)77, NULL));
    BT_EQ(value_of(ds[0]), 77);
    BT_EQ(braid_deferred_live(loop), 1);          /* only ds[0]: the chain let go of the rest */
    braid_deferred *top = ds[0];
    for (int i = 0; i < N; i++) ds[i] = braid_deferred_new(loop);   /* and cancel, a million deep */
    for (int i = 0; i + 1 < N; i++) {
        BT_OK(braid_deferred_add_callback(ds[i], return_chain, ds[i + 1]));
        BT_OK(braid_deferred_callback(ds[i], NULL, NULL));
    }
    braid_deferred_cancel(ds[0]);
    braid_failure_free(braid_deferred_expect_failure(ds[0], BRAID_ECANCELED));
    braid_deferred_unref(ds[0]);
    BT_OK(braid_deferred_callback(ds[N - 1], NULL, NULL));   /* its producer, late: ignored */
    braid_deferred_unref(top);
    free(ds);
    done(loop);
    return NULL;
}
BT_TEST(million_deep_chain_uses_constant_stack) {
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setstacksize(&a, 128 * 1024);
    pthread_t t;
    /* The loop is made, used and destroyed on the small-stack thread: it
     * belongs to that thread. */
    BT_EQ(pthread_create(&t, &a, million_chain, NULL), 0);
    BT_EQ(pthread_join(t, NULL), 0);
    pthread_attr_destroy(&a);
}

/* The other shape: each callback returns an already-fired Deferred, a million times. */
static braid_result return_fired(braid_result r, void *arg) {
    braid_loop *loop = arg;
    return braid_result_chain(braid_deferred_succeed(loop, (void *)((intptr_t)r.value + 1), NULL));
}
BT_TEST(million_callbacks_returning_fired_deferreds) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    for (int i = 0; i < 1000000; i++) BT_OK(braid_deferred_add_callback(d, return_fired, loop));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)0, NULL));
    BT_EQ(value_of(d), 1000000);
    braid_deferred_unref(d);
    done(loop);
}

/* ---- pause ------------------------------------------------------------------------------- */
BT_TEST(pause_holds_callbacks_until_unpaused) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred_pause(d);
    braid_deferred_pause(d);
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)1, NULL));
    BT_EQ(t.n, 0);
    braid_deferred_expect_no_result(d);
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    braid_deferred_unpause(d);
    BT_EQ(t.n, 0);
    braid_deferred_unpause(d);
    BT_STREQ(t.s, "c1,c2,");
    BT_EQ(value_of(d), 3);
    braid_deferred_unpause(d);                 /* unbalanced: logged, harmless */
    BT_TRUE(strstr(g_log.last, "without a pause") != NULL);
    braid_deferred_unref(d);
    done(loop);
}

/* ---- cancellation ---------------------------------------------------------------------- */
BT_TEST(cancel_without_canceller_errbacks_and_ignores_late_fire) {
    braid_loop *loop = mkloop();
    g_freed = 0;
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred_cancel(d);
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_ECANCELED);
    braid_failure_free(f);
    braid_deferred_unref(d);                  /* consumer gone; producer still holds it */
    BT_EQ(braid_deferred_live(loop), 1);
    int errs = g_log.errors;
    BT_OK(braid_deferred_callback(d, braid_malloc(4), count_free));  /* late: silent */
    BT_EQ(g_log.errors, errs);
    BT_EQ(g_freed, 1);
    done(loop);
}

typedef struct cstate { int calls; bool fire; } cstate;
static void canceller(braid_deferred *d, void *arg) {
    cstate *c = arg;
    c->calls++;
    if (c->fire) braid_deferred_callback(d, (void *)(intptr_t)123, NULL);
}
BT_TEST(cancel_with_canceller) {
    braid_loop *loop = mkloop();
    cstate c = { 0, false };
    braid_deferred *d = braid_deferred_new_cancellable(loop, canceller, &c);
    braid_deferred_cancel(d);
    BT_EQ(c.calls, 1);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ECANCELED));
    braid_deferred_cancel(d);                    /* fired: ignored */
    BT_EQ(c.calls, 1);
    braid_deferred_unref(d);
    BT_EQ(braid_deferred_live(loop), 0);         /* the canceller released the producer */

    cstate c2 = { 0, true };                     /* a canceller that fires with its own value */
    d = braid_deferred_new_cancellable(loop, canceller, &c2);
    braid_deferred_cancel(d);
    BT_EQ(value_of(d), 123);
    braid_deferred_unref(d);
    done(loop);
}

/* A canceller may cancel its own Deferred (it has nothing to stop and wants
 * the ECANCELED failure now): the producer reference goes with that firing,
 * as when braid fires after the canceller returns. It used to stay, leaking
 * the Deferred and making the leak gate refuse the loop. */
static void self_cancelling(braid_deferred *d, void *arg) {
    cstate *c = arg;
    c->calls++;
    braid_deferred_cancel(d);
    BT_TRUE(braid_deferred_is_called(d));          /* fired at once, inside the canceller */
}
BT_TEST(canceller_that_cancels_its_own_deferred_does_not_leak) {
    braid_loop *loop = mkloop();
    cstate c = { 0, false };
    braid_deferred *d = braid_deferred_new_cancellable(loop, self_cancelling, &c);
    braid_deferred_cancel(d);
    BT_EQ(c.calls, 1);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ECANCELED));
    braid_deferred_unref(d);
    BT_EQ(braid_deferred_live(loop), 0);
    BT_EQ(g_log.errors, 0);                      /* no "fired twice" either */
    done(loop);
}

BT_TEST(cancel_reaches_through_chains) {
    braid_loop *loop = mkloop();
    cstate c = { 0, false };
    trace t = { 0 };
    step s = { &t, 0, BRAID_ECANCELED };
    braid_deferred *leaf = braid_deferred_new_cancellable(loop, canceller, &c);
    braid_deferred *mid = braid_deferred_new(loop);
    braid_deferred *top = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(mid, return_chain, leaf));
    BT_OK(braid_deferred_callback(mid, NULL, NULL));
    BT_OK(braid_deferred_add_callback(top, return_chain, mid));
    BT_OK(braid_deferred_add_errback(top, eb_rec, &s));
    BT_OK(braid_deferred_callback(top, NULL, NULL));
    braid_deferred_cancel(top);
    BT_EQ(c.calls, 1);
    char want[32];
    snprintf(want, sizeof want, "e%d,", BRAID_ECANCELED);
    BT_STREQ(t.s, want);
    braid_failure_free(braid_deferred_expect_failure(top, BRAID_ECANCELED));
    braid_deferred_unref(top);
    done(loop);
}

/* ---- the unconsumed-failure rule ----------------------------------------------------------- */
BT_TEST(unconsumed_failure_reported_with_origin) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    int line = __LINE__ + 1;
    braid_failure *f = braid_failure_new(BRAID_EPIPE, "the peer went away (%d)", 7);
    BT_OK(braid_deferred_errback(d, f));
    BT_EQ(g_unh.n, 0);
    braid_deferred_unref(d);
    BT_EQ(g_unh.n, 1);
    BT_EQ(g_unh.code, BRAID_EPIPE);
    BT_EQ(g_unh.line, line);
    BT_TRUE(strstr(g_unh.file, "test_deferred.c") != NULL);
    BT_STREQ(g_unh.func, "bt_case_unconsumed_failure_reported_with_origin");
    BT_TRUE(strstr(g_unh.text, "the peer went away (7)") != NULL);
    /* consumed by an errback: no report */
    trace t = { 0 };
    step s = { &t, 0, 0 };
    d = braid_deferred_new(loop);
    braid_deferred_add_errback(d, eb_rec, &s);
    braid_deferred_errback(d, braid_failure_new(BRAID_EPIPE, NULL));
    braid_deferred_unref(d);
    BT_EQ(g_unh.n, 1);
    done(loop);
}

BT_TEST(unconsumed_failure_default_logs_origin) {
    /* The default hook logs (and aborts in BRAID_DEBUG builds: checked in a child). */
    memset(&g_log, 0, sizeof g_log);
    braid_loop_options o = { .log = cap_log };
    braid_loop *loop = NULL;
    BT_OK(braid_loop_new(&o, &loop));
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        braid_deferred *d = braid_deferred_fail(loop, braid_failure_new(BRAID_EPIPE, "lost"));
        braid_deferred_unref(d);
        /* reached only without BRAID_DEBUG */
        _exit(g_log.errors == 1 && strstr(g_log.last, "lost") && strstr(g_log.last, "test_deferred.c") ? 0 : 1);
    }
    int st = 0;
    BT_EQ(waitpid(pid, &st, 0), pid);
#ifdef BRAID_DEBUG
    BT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
#else
    BT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
#endif
    bt_loop_destroy(loop);
}

/* ---- failures ---------------------------------------------------------------------------- */
BT_TEST(failure_wrap_and_format) {
    braid_failure *inner = braid_failure_new(BRAID_ECONNRESET, "reset by %s", "peer");
    braid_failure *outer = braid_failure_wrap(inner, BRAID_EPROTO_INPUT, "request %d failed", 3);
    BT_TRUE(outer->cause == inner);
    char buf[512];
    size_t n = braid_failure_format(outer, buf, sizeof buf);
    BT_EQ(n, strlen(buf));
    BT_TRUE(strstr(buf, "request 3 failed: malformed input from peer") == buf);
    BT_TRUE(strstr(buf, "; caused by: reset by peer") != NULL);
    BT_TRUE(strstr(buf, "test_deferred.c:") != NULL);
    char small[8];
    BT_EQ(braid_failure_format(outer, small, sizeof small), n);   /* snprintf rules */
    BT_EQ(strlen(small), 7);
    braid_failure_free(outer);
    /* no message */
    braid_failure *f = braid_failure_new(BRAID_ETIMEDOUT, NULL);
    BT_TRUE(f->message == NULL);
    braid_failure_format(f, buf, sizeof buf);
    BT_TRUE(strstr(buf, "timed out") != NULL);
    braid_failure_free(f);
}

BT_TEST(failure_under_oom_keeps_its_code) {
    braid_test_fail_alloc_after(1, true);
    braid_failure *f = braid_failure_new(BRAID_ECANCELED, "x %d", 1);
    braid_failure *g = braid_failure_new(BRAID_EPIPE, "y");
    braid_failure *h = braid_failure_wrap(braid_failure_new(BRAID_ETIMEDOUT, NULL), BRAID_ECANCELED, "z");
    braid_test_fail_alloc_after(0, false);
    BT_EQ(f->code, BRAID_ECANCELED);
    BT_EQ(g->code, BRAID_ENOMEM);
    BT_EQ(h->code, BRAID_ECANCELED);
    BT_TRUE(h->cause == NULL);
    braid_failure_free(f);
    braid_failure_free(g);
    braid_failure_free(h);
}

/* ---- leak gate ----------------------------------------------------------------------------- */
BT_TEST(leak_gate_refuses_unfired_deferred) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred_unref(d);
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_TRUE(strstr(g_log.all, "loop not destroyed: 1 Deferred(s) still alive (1 never fired)") != NULL);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    done(loop);
}

/* Debug builds name where each leaked Deferred was made, and its state. */
#ifdef BRAID_DEBUG
static int leak_line_pending, leak_line_fired;
static braid_result keep(braid_result r, void *arg) { (void)arg; return r; }
static void leak_two(braid_loop *loop, braid_deferred **pending, braid_deferred **fired) {
    leak_line_pending = __LINE__ + 1;
    *pending = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(*pending, keep, NULL));
    leak_line_fired = __LINE__ + 1;
    *fired = braid_deferred_succeed(loop, NULL, NULL);
}
#endif
BT_TEST(leak_gate_names_each_deferreds_origin) {
#ifndef BRAID_DEBUG
    bt_skip("Deferred origins are recorded in BRAID_DEBUG builds only");
#else
    braid_loop *loop = mkloop();
    braid_deferred *pending, *fired;
    leak_two(loop, &pending, &fired);
    g_log.all[0] = 0;
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    char want[256];
    snprintf(want, sizeof want, "deferred created at %s:%d in leak_two(), pending (never fired), "
             "1 callback to run, 2 references", __FILE__, leak_line_pending);
    if (!strstr(g_log.all, want)) bt_fail(__FILE__, __LINE__, "no \"%s\" in:\n%s", want, g_log.all);
    snprintf(want, sizeof want, "deferred created at %s:%d in leak_two(), fired, 0 callbacks to run, "
             "1 reference", __FILE__, leak_line_fired);
    if (!strstr(g_log.all, want)) bt_fail(__FILE__, __LINE__, "no \"%s\" in:\n%s", want, g_log.all);
    /* oldest first, after the count */
    const char *count = strstr(g_log.all, "2 Deferred(s) still alive");
    const char *first = strstr(g_log.all, "pending (never fired)"), *second = strstr(g_log.all, ", fired,");
    BT_TRUE(count && first && second && count < first && first < second);
    BT_OK(braid_deferred_callback(pending, NULL, NULL));
    braid_deferred_unref(pending);
    braid_deferred_unref(fired);
    done(loop);
#endif
}

/* ---- test helpers ------------------------------------------------------------------------ */
static int g_expect_fails;
static char g_expect_msg[1024];
static void expect_handler(void *ctx, const char *file, int line, const char *msg) {
    (void)ctx; (void)file; (void)line;
    g_expect_fails++;
    snprintf(g_expect_msg, sizeof g_expect_msg, "%s", msg);
}
BT_TEST(expect_helpers_report_mismatches) {
    braid_loop *loop = mkloop();
    braid_deferred_expect_set_handler(expect_handler, NULL);
    g_expect_fails = 0;
    braid_deferred *d = braid_deferred_new(loop);
    braid_result r = braid_deferred_expect_success(d);
    BT_EQ(g_expect_fails, 1);
    BT_TRUE(r.value == NULL && r.failure == NULL);
    BT_TRUE(strstr(g_expect_msg, "never fired") != NULL);
    BT_TRUE(braid_deferred_expect_failure(d, 0) == NULL);
    BT_EQ(g_expect_fails, 2);
    braid_deferred_errback(d, braid_failure_new(BRAID_EPIPE, "boom"));
    braid_deferred_expect_no_result(d);
    BT_EQ(g_expect_fails, 3);
    BT_TRUE(strstr(g_expect_msg, "boom") != NULL);
    braid_deferred_expect_success(d);
    BT_EQ(g_expect_fails, 4);
    BT_TRUE(braid_deferred_expect_failure(d, BRAID_ETIMEDOUT) == NULL);   /* wrong code */
    BT_EQ(g_expect_fails, 5);
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_EPIPE);
    BT_EQ(g_expect_fails, 5);
    braid_failure_free(f);
    braid_deferred_expect_set_handler(NULL, NULL);
    braid_deferred_unref(d);
    BT_EQ(g_unh.n, 0);                          /* taken = consumed */
    done(loop);
}

/* ---- allocation-failure walk --------------------------------------------------------------- */
/* Core scenario: new, 6 callbacks (spills), a chain, a timeout, fire, release.
 * Under each injected failure it must report an error or complete, and leak nothing. */
static int core_scenario(void *arg) {
    (void)arg;
    braid_loop *loop = NULL;
    braid_loop_options o = { .clock = braid_fake_clock_base(fc), .log = cap_log };
    int rc = braid_loop_new(&o, &loop);
    if (rc < 0) return rc;
    braid_loop_set_unhandled(loop, on_unhandled, NULL);
    trace t = { 0 };
    step s = { &t, 1, 0 };
    rc = 0;
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred *inner = braid_deferred_new(loop);
    if (!d || !inner) {
        rc = BRAID_ENOMEM;
        if (d) { braid_deferred_callback(d, NULL, NULL); braid_deferred_unref(d); }
        if (inner) { braid_deferred_callback(inner, NULL, NULL); braid_deferred_unref(inner); }
        goto out;
    }
    for (int i = 0; i < 6 && rc == 0; i++) rc = braid_deferred_add_callback(d, cb_add, &s);
    if (rc == 0) rc = braid_deferred_add_timeout(d, 100);
    if (rc == 0) {
        rc = braid_deferred_add_callback(d, return_chain, inner);
        if (rc < 0) braid_deferred_unref(inner);
    } else {
        braid_deferred_unref(inner);
    }
    braid_deferred_callback(d, (void *)(intptr_t)0, NULL);
    braid_deferred_callback(inner, (void *)(intptr_t)5, NULL);   /* the producer fires either way */
    if (braid_deferred_has_result(d)) {
        braid_result r;
        braid_deferred_take(d, &r);
        braid_result_drop(r);
    }
    braid_deferred_unref(d);
out:
    bt_loop_destroy(loop);   /* the leak gate, every run */
    return rc;
}

BT_TEST(allocation_failure_walk) {
    braid_fake_clock_new(0, &fc);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "core", .body = core_scenario, .enomem_only = true,
                                                 .max_runs = 200 });
    BT_GT(r.errors, 0);
    BT_EQ(g_unh.n, 0);
    braid_fake_clock_free(fc);
}

/* ---- use after release is caught, never silent ------------------------------------------- */
BT_TEST(use_after_release_aborts) {
    braid_loop *loop = mkloop();
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        braid_deferred *d = braid_deferred_succeed(loop, NULL, NULL);
        braid_deferred_unref(d);
        braid_deferred_callback(d, NULL, NULL);   /* freed: must abort (or ASan report) */
        _exit(0);
    }
    int st = 0;
    BT_EQ(waitpid(pid, &st, 0), pid);
    BT_FALSE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    done(loop);
}

/* Debug builds keep that promise long after the release: 10,000 more
 * Deferreds made and freed on the loop, then 10,000 made and kept, and the
 * stale pointer still aborts with a message naming the call. Its memory
 * used to be reused by the very next Deferred made (the free list is LIFO),
 * so the stale call silently fired someone else's Deferred. */
BT_TEST(use_after_release_aborts_long_after_in_debug_builds) {
#ifndef BRAID_DEBUG
    bt_skip("the quarantine of freed Deferreds is in debug builds (BRAID_DEBUG) only");
#else
    braid_loop *loop = mkloop();
    int p[2];
    BT_EQ(pipe(p), 0);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(p[1], 2);
        braid_loop *l2;
        if (braid_loop_new(NULL, &l2) < 0) _exit(3);   /* default logger: stderr */
        braid_deferred *d = braid_deferred_succeed(l2, NULL, NULL);
        braid_deferred_unref(d);
        for (int i = 0; i < 10000; i++) {          /* churn: 10,000 made and freed */
            braid_deferred *e = braid_deferred_new(l2);
            braid_deferred_callback(e, NULL, NULL);
            braid_deferred_unref(e);
        }
        for (int i = 0; i < 10000; i++)            /* and 10,000 alive, never released */
            (void)braid_deferred_new(l2);
        braid_deferred_callback(d, NULL, NULL);   /* must not reach one of those */
        _exit(0);
    }
    close(p[1]);
    char out[2048];
    size_t n = 0;
    ssize_t r;
    while (n + 1 < sizeof out && (r = read(p[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(p[0]);
    int st = 0;
    BT_EQ(waitpid(pid, &st, 0), pid);
    if (!(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT) ||
        !strstr(out, "braid_deferred_callback on a Deferred") || !strstr(out, "that was already freed"))
        bt_fail(__FILE__, __LINE__, "status %#x, stderr: %s", st, out);
    done(loop);
#endif
}

/* The quarantine is bounded: once full, freed Deferreds are reused (oldest
 * first) and a steady create/free loop stops allocating; the list never
 * holds more than the quarantine plus one free list. */
BT_TEST(deferred_quarantine_is_bounded_and_reused) {
    braid_loop *loop = mkloop();
    enum { Q = BRAID__DEFERRED_QUARANTINE };
    long before = braid_test_alloc_count();
    for (int i = 0; i < 2 * Q; i++) braid_deferred_unref(braid_deferred_succeed(loop, NULL, NULL));
    long made = braid_test_alloc_count() - before;
#ifdef BRAID_DEBUG
    BT_GE(made, Q);                 /* nothing reused before the quarantine filled */
    BT_LE(made, Q + 8);
#else
    BT_LE(made, 8);                 /* release builds reuse at once */
#endif
    before = braid_test_alloc_count();
    for (int i = 0; i < Q; i++) braid_deferred_unref(braid_deferred_succeed(loop, NULL, NULL));
    BT_EQ(braid_test_alloc_count() - before, 0);
    /* Many freed at once: the list stays bounded. */
    enum { M = Q + 3 * 4096 };
    braid_deferred **ds = malloc(M * sizeof *ds);
    BT_TRUE(ds);
    for (int i = 0; i < M; i++) ds[i] = braid_deferred_succeed(loop, NULL, NULL);
    for (int i = 0; i < M; i++) braid_deferred_unref(ds[i]);
    free(ds);
    braid__dpool *pool = braid__deferred_pool(loop);
    BT_LE(pool->nfree, (size_t)Q + 4096);
    done(loop);
}

/* ---- timeouts on the fake clock ------------------------------------------------------------ */
BT_TEST(timeout_turns_cancel_into_etimedout) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_timeout(d, BRAID_MSEC(100)));
    BT_EQ(braid_loop_timer_count(loop), 1);
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(100) - 1));
    braid_deferred_expect_no_result(d);
    BT_OK(braid_loop_advance(loop, 1));
    braid_failure *f = braid_deferred_expect_failure(d, BRAID_ETIMEDOUT);
    BT_TRUE(f->cause && f->cause->code == BRAID_ECANCELED);
    braid_failure_free(f);
    BT_EQ(braid_loop_timer_count(loop), 0);
    braid_deferred_unref(d);
    BT_OK(braid_deferred_callback(d, NULL, NULL));   /* the producer, late: ignored */
    done(loop);
}

BT_TEST(timeout_stops_when_fired_first) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_timeout(d, BRAID_MSEC(100)));
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(50)));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)8, NULL));
    BT_EQ(braid_loop_timer_count(loop), 0);
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(100)));
    BT_EQ(value_of(d), 8);
    BT_OK(braid_deferred_add_timeout(d, 5));       /* already has its result: nothing to do */
    BT_EQ(braid_loop_timer_count(loop), 0);
    braid_deferred_unref(d);
    done(loop);
}

BT_TEST(timeout_uses_the_canceller_and_reaches_chains) {
    braid_loop *loop = mkloop();
    cstate c = { 0, false };
    braid_deferred *leaf = braid_deferred_new_cancellable(loop, canceller, &c);
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(d, return_chain, leaf));
    BT_OK(braid_deferred_callback(d, NULL, NULL));        /* d waits on leaf */
    BT_OK(braid_deferred_add_timeout(d, BRAID_SECONDS(1)));
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(1)));
    BT_EQ(c.calls, 1);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ETIMEDOUT));
    braid_deferred_unref(d);
    done(loop);
}

BT_TEST(plain_cancel_with_timeout_stays_ecanceled) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_timeout(d, BRAID_SECONDS(1)));
    braid_deferred_cancel(d);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ECANCELED));
    BT_EQ(braid_loop_timer_count(loop), 0);
    braid_deferred_unref(d);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    done(loop);
}

/* ---- combinators ------------------------------------------------------------------------ */
static long rv(const braid_deferred_results *res, size_t i) { return (long)(intptr_t)res->r[i].value; }

BT_TEST(gather_results_in_order) {
    braid_loop *loop = mkloop();
    braid_deferred *m[3], *ret[3];
    for (int i = 0; i < 3; i++) ret[i] = m[i] = braid_deferred_new(loop);
    braid_deferred *g = braid_deferred_gather(loop, m, 3, BRAID_DEFERRED_GATHER_FAIL_FAST);
    BT_TRUE(g);
    braid_deferred_callback(ret[2], (void *)(intptr_t)30, NULL);
    braid_deferred_callback(ret[0], (void *)(intptr_t)10, NULL);
    braid_deferred_expect_no_result(g);
    braid_deferred_callback(ret[1], (void *)(intptr_t)20, NULL);
    braid_result r = braid_deferred_expect_success(g);
    braid_deferred_results *res = r.value;
    BT_TRUE(r.dtor == braid_deferred_results_free);
    BT_EQ(res->n, 3); BT_EQ(res->nfailed, 0);
    BT_EQ(rv(res, 0), 10); BT_EQ(rv(res, 1), 20); BT_EQ(rv(res, 2), 30);
    braid_result_drop(r);
    braid_deferred_unref(g);
    /* empty, and already-fired members */
    g = braid_deferred_gather(loop, NULL, 0, 0);
    r = braid_deferred_expect_success(g);
    BT_EQ(((braid_deferred_results *)r.value)->n, 0);
    braid_result_drop(r);
    braid_deferred_unref(g);
    m[0] = braid_deferred_succeed(loop, (void *)(intptr_t)1, NULL);
    m[1] = braid_deferred_succeed(loop, (void *)(intptr_t)2, NULL);
    g = braid_deferred_gather(loop, m, 2, 0);
    r = braid_deferred_expect_success(g);
    BT_EQ(rv(r.value, 1), 2);
    braid_result_drop(r);
    braid_deferred_unref(g);
    done(loop);
}

BT_TEST(gather_fail_fast_cancels_the_rest) {
    braid_loop *loop = mkloop();
    cstate c = { 0, false };
    braid_deferred *m[3];
    m[0] = braid_deferred_new(loop);
    m[1] = braid_deferred_new(loop);
    m[2] = braid_deferred_new_cancellable(loop, canceller, &c);
    braid_deferred *p0 = m[0], *p1 = m[1];
    braid_deferred *g = braid_deferred_gather(loop, m, 3, BRAID_DEFERRED_GATHER_FAIL_FAST);
    braid_deferred_callback(p0, (void *)(intptr_t)1, NULL);
    braid_deferred_errback(p1, braid_failure_new(BRAID_EPIPE, "member one broke"));
    BT_EQ(c.calls, 1);                       /* m[2] was cancelled */
    braid_failure *f = braid_deferred_expect_failure(g, BRAID_EFIRST_ERROR);
    BT_TRUE(strstr(f->message, "#1") != NULL);
    BT_TRUE(f->cause && f->cause->code == BRAID_EPIPE);
    braid_failure_free(f);
    braid_deferred_unref(g);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(gather_collect_waits_and_lists_failures) {
    braid_loop *loop = mkloop();
    braid_deferred *m[4], *p[4];
    for (int i = 0; i < 4; i++) p[i] = m[i] = braid_deferred_new(loop);
    braid_deferred *g = braid_deferred_gather(loop, m, 4, BRAID_DEFERRED_GATHER_COLLECT);
    braid_deferred_errback(p[3], braid_failure_new(BRAID_ECONNRESET, "three"));
    braid_deferred_callback(p[0], NULL, NULL);
    braid_deferred_errback(p[1], braid_failure_new(BRAID_EPIPE, "one"));
    braid_deferred_expect_no_result(g);               /* collect: waits for p[2] */
    braid_deferred_callback(p[2], NULL, NULL);
    braid_failure *f = braid_deferred_expect_failure(g, BRAID_EFIRST_ERROR);
    BT_TRUE(strstr(f->message, "2 of 4 failed") != NULL);
    BT_TRUE(strstr(f->message, "#1") && strstr(f->message, "#3"));
    BT_EQ(f->cause->code, BRAID_EPIPE);      /* lowest index */
    braid_failure_free(f);
    braid_deferred_unref(g);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(race_first_success_wins_rest_cancelled) {
    braid_loop *loop = mkloop();
    cstate c0 = { 0, false }, c2 = { 0, false };
    braid_deferred *m[3];
    m[0] = braid_deferred_new_cancellable(loop, canceller, &c0);
    m[1] = braid_deferred_new(loop);
    m[2] = braid_deferred_new_cancellable(loop, canceller, &c2);
    braid_deferred *p1 = m[1];
    braid_deferred *g = braid_deferred_race(loop, m, 3);
    g_freed = 0;
    braid_deferred_callback(p1, braid_malloc(4), count_free);
    BT_EQ(c0.calls, 1); BT_EQ(c2.calls, 1);
    braid_result r = braid_deferred_expect_success(g);
    braid_deferred_race_win *w = r.value;
    BT_EQ(w->index, 1);
    BT_EQ(g_freed, 0);
    braid_result_drop(r);
    BT_EQ(g_freed, 1);                       /* the win owns the value */
    braid_deferred_unref(g);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(race_all_fail_and_race_of_fired) {
    braid_loop *loop = mkloop();
    braid_deferred *m[2], *p[2];
    for (int i = 0; i < 2; i++) p[i] = m[i] = braid_deferred_new(loop);
    braid_deferred *g = braid_deferred_race(loop, m, 2);
    braid_deferred_errback(p[1], braid_failure_new(BRAID_EPIPE, "b"));
    braid_deferred_expect_no_result(g);
    braid_deferred_errback(p[0], braid_failure_new(BRAID_ECONNRESET, "a"));
    braid_failure *f = braid_deferred_expect_failure(g, BRAID_EALL_FAILED);
    BT_EQ(f->cause->code, BRAID_ECONNRESET);
    braid_failure_free(f);
    braid_deferred_unref(g);
    /* an already-fired member wins during construction; the other is cancelled */
    cstate c = { 0, false };
    m[0] = braid_deferred_new_cancellable(loop, canceller, &c);
    m[1] = braid_deferred_succeed(loop, (void *)(intptr_t)5, NULL);
    g = braid_deferred_race(loop, m, 2);
    BT_EQ(c.calls, 1);
    braid_result r = braid_deferred_expect_success(g);
    BT_EQ(((braid_deferred_race_win *)r.value)->index, 1);
    braid_result_drop(r);
    braid_deferred_unref(g);
    g = braid_deferred_race(loop, NULL, 0);
    braid_failure_free(braid_deferred_expect_failure(g, BRAID_EINVAL));
    braid_deferred_unref(g);
    done(loop);
}

BT_TEST(deferred_list_per_entry) {
    braid_loop *loop = mkloop();
    braid_deferred *m[3], *p[3];
    for (int i = 0; i < 3; i++) p[i] = m[i] = braid_deferred_new(loop);
    braid_deferred *g = braid_deferred_list(loop, m, 3);
    braid_deferred_callback(p[0], (void *)(intptr_t)1, NULL);
    braid_deferred_errback(p[1], braid_failure_new(BRAID_EPIPE, "x"));
    braid_deferred_expect_no_result(g);
    braid_deferred_callback(p[2], (void *)(intptr_t)3, NULL);
    braid_result r = braid_deferred_expect_success(g);
    braid_deferred_results *res = r.value;
    BT_EQ(res->nfailed, 1);
    BT_TRUE(res->r[0].failure == NULL); BT_EQ(rv(res, 0), 1);
    BT_TRUE(res->r[1].failure != NULL); BT_EQ(res->r[1].failure->code, BRAID_EPIPE);
    BT_EQ(rv(res, 2), 3);
    braid_result_drop(r);
    braid_deferred_unref(g);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

/* Cancelling a combined Deferred reaches its members, and through a member's
 * chain, its leaf. */
BT_TEST(cancel_combinators_reaches_members) {
    braid_loop *loop = mkloop();
    braid_deferred *(*mk[3])(braid_loop *, braid_deferred *const *, size_t) = {
        NULL, braid_deferred_race, braid_deferred_list };
    for (int k = 0; k < 3; k++) {
        cstate c0 = { 0, false }, leafc = { 0, false };
        braid_deferred *leaf = braid_deferred_new_cancellable(loop, canceller, &leafc);
        braid_deferred *m[2];
        m[0] = braid_deferred_new_cancellable(loop, canceller, &c0);
        m[1] = braid_deferred_new(loop);
        braid_deferred *p1 = m[1];
        braid_deferred_add_callback(m[1], return_chain, leaf);
        braid_deferred_callback(p1, NULL, NULL);          /* m[1] waits on leaf */
        braid_deferred *g = k == 0 ? braid_deferred_gather(loop, m, 2, BRAID_DEFERRED_GATHER_COLLECT)
                                   : mk[k](loop, m, 2);
        braid_deferred_cancel(g);
        BT_EQ(c0.calls, 1);
        BT_EQ(leafc.calls, 1);
        braid_failure_free(braid_deferred_expect_failure(g, BRAID_ECANCELED));
        braid_deferred_unref(g);
    }
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(gather_thousand) {
    braid_loop *loop = mkloop();
    enum { N = 1000 };
    braid_deferred *m[N], *p[N];
    for (int i = 0; i < N; i++) p[i] = m[i] = braid_deferred_new(loop);
    braid_deferred *g = braid_deferred_gather(loop, m, N, 0);
    for (int i = N - 1; i >= 0; i--) braid_deferred_callback(p[i], (void *)(intptr_t)i, NULL);
    braid_result r = braid_deferred_expect_success(g);
    for (int i = 0; i < N; i++) BT_EQ(rv(r.value, i), i);
    braid_result_drop(r);
    braid_deferred_unref(g);
    done(loop);
}

/* Combinator allocation-failure walk: NULL means nothing was taken. */
static int gather_scenario(void *arg) {
    (void)arg;
    braid_loop *loop = NULL;
    braid_loop_options o = { .clock = braid_fake_clock_base(fc), .log = cap_log };
    int rc = braid_loop_new(&o, &loop);
    if (rc < 0) return rc;
    braid_loop_set_unhandled(loop, on_unhandled, NULL);
    braid_deferred *m[6] = { 0 };
    int n = 0;
    rc = 0;
    for (; n < 6; n++) {
        m[n] = braid_deferred_new(loop);
        if (!m[n]) { rc = BRAID_ENOMEM; break; }
        for (int k = 0; k < 4 && rc == 0; k++)         /* spill: the reserve can fail */
            rc = braid_deferred_add_callback(m[n], pass, NULL);
        if (rc < 0) { n++; break; }
    }
    braid_deferred *g = NULL;
    if (rc == 0) {
        braid_deferred *lst = braid_deferred_list(loop, m + 3, 3);
        g = lst ? braid_deferred_gather(loop, m, 3, 0) : NULL;
        if (!lst || !g) rc = BRAID_ENOMEM;
        for (int i = 0; i < 6; i++) braid_deferred_callback(m[i], NULL, NULL);
        if (!lst) for (int i = 3; i < 6; i++) braid_deferred_unref(m[i]);
        if (!g) for (int i = 0; i < 3; i++) braid_deferred_unref(m[i]);
        braid_deferred_unref(lst);
        braid_deferred_unref(g);
    } else {
        for (int i = 0; i < n; i++)
            if (m[i]) { braid_deferred_callback(m[i], NULL, NULL); braid_deferred_unref(m[i]); }
    }
    bt_loop_destroy(loop);   /* the leak gate, every run */
    return rc;
}

BT_TEST(combinator_allocation_failure_walk) {
    braid_fake_clock_new(0, &fc);
    memset(&g_unh, 0, sizeof g_unh);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "combinators", .body = gather_scenario,
                                                 .enomem_only = true, .max_runs = 300 });
    BT_GT(r.errors, 3);
    BT_EQ(g_unh.n, 0);
    braid_fake_clock_free(fc);
}

/* ---- defer_later ---------------------------------------------------------------------------- */
static int g_thunk_calls;
static braid_result thunk_val(void *arg) { g_thunk_calls++; return braid_result_ok(arg); }

BT_TEST(defer_later_fires_on_time) {
    braid_loop *loop = mkloop();
    g_thunk_calls = 0;
    braid_deferred *d = braid_deferred_later(loop, BRAID_MSEC(10), thunk_val, (void *)(intptr_t)4);
    braid_deferred *e = braid_deferred_later(loop, BRAID_MSEC(20), NULL, NULL);
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(10) - 1));
    braid_deferred_expect_no_result(d);
    BT_OK(braid_loop_advance(loop, 1));
    BT_EQ(value_of(d), 4);
    BT_EQ(g_thunk_calls, 1);
    braid_deferred_expect_no_result(e);
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(10)));
    BT_EQ(value_of(e), 0);
    braid_deferred_unref(d);
    braid_deferred_unref(e);
    done(loop);
}

BT_TEST(defer_later_cancel_stops_the_call) {
    braid_loop *loop = mkloop();
    g_thunk_calls = 0;
    braid_deferred *d = braid_deferred_later(loop, BRAID_MSEC(10), thunk_val, NULL);
    BT_EQ(braid_loop_timer_count(loop), 1);
    braid_deferred_cancel(d);
    BT_EQ(braid_loop_timer_count(loop), 0);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ECANCELED));
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(50)));
    BT_EQ(g_thunk_calls, 0);
    braid_deferred_unref(d);
    done(loop);
}

/* ---- lock and semaphore ------------------------------------------------------------------ */
BT_TEST(lock_is_fifo_and_cancellable) {
    braid_loop *loop = mkloop();
    braid_deferred_lock *l;
    BT_OK(braid_deferred_lock_new(loop, &l));
    braid_deferred *a = braid_deferred_lock_acquire(l);
    BT_TRUE(braid_deferred_lock_is_locked(l));
    braid_result r = braid_deferred_expect_success(a);
    BT_TRUE(r.value == (void *)l);
    braid_deferred *b = braid_deferred_lock_acquire(l), *c = braid_deferred_lock_acquire(l), *e = braid_deferred_lock_acquire(l);
    braid_deferred_expect_no_result(b);
    BT_EQ(braid_deferred_semaphore_waiting((braid_deferred_semaphore *)l), 3);
    braid_deferred_cancel(c);                              /* c leaves the queue */
    braid_failure_free(braid_deferred_expect_failure(c, BRAID_ECANCELED));
    BT_EQ(braid_deferred_semaphore_waiting((braid_deferred_semaphore *)l), 2);
    BT_ERR(braid_deferred_lock_free(l), BRAID_EBUSY);
    BT_OK(braid_deferred_lock_release(l));                          /* -> b */
    braid_result_drop(braid_deferred_expect_success(b));
    braid_deferred_expect_no_result(e);
    BT_OK(braid_deferred_lock_release(l));                          /* -> e, c skipped */
    braid_result_drop(braid_deferred_expect_success(e));
    BT_OK(braid_deferred_lock_release(l));
    BT_FALSE(braid_deferred_lock_is_locked(l));
    BT_ERR(braid_deferred_lock_release(l), BRAID_ELOCKED);
    BT_OK(braid_deferred_lock_free(l));
    braid_deferred_unref(a); braid_deferred_unref(b);
    braid_deferred_unref(c); braid_deferred_unref(e);
    done(loop);
}

static braid_result thunk_chain(void *arg) { return braid_result_chain((braid_deferred *)arg); }

BT_TEST(lock_run_holds_until_the_result_is_known) {
    braid_loop *loop = mkloop();
    braid_deferred_lock *l;
    BT_OK(braid_deferred_lock_new(loop, &l));
    braid_deferred *work = braid_deferred_new(loop);
    braid_deferred *r1 = braid_deferred_lock_run(l, thunk_chain, work);
    BT_TRUE(braid_deferred_lock_is_locked(l));
    braid_deferred_expect_no_result(r1);
    g_thunk_calls = 0;
    braid_deferred *r2 = braid_deferred_lock_run(l, thunk_val, (void *)(intptr_t)2);
    BT_EQ(g_thunk_calls, 0);                               /* waits for the lock */
    braid_deferred_errback(work, braid_failure_new(BRAID_EPIPE, "work failed"));
    braid_failure_free(braid_deferred_expect_failure(r1, BRAID_EPIPE));   /* passed on */
    BT_EQ(g_thunk_calls, 1);                               /* released even on failure */
    BT_EQ(value_of(r2), 2);
    BT_FALSE(braid_deferred_lock_is_locked(l));
    BT_OK(braid_deferred_lock_free(l));
    braid_deferred_unref(r1);
    braid_deferred_unref(r2);
    done(loop);
}

BT_TEST(semaphore_tokens) {
    braid_loop *loop = mkloop();
    braid_deferred_semaphore *s;
    BT_ERR(braid_deferred_semaphore_new(loop, 0, &s), BRAID_EINVAL);
    BT_OK(braid_deferred_semaphore_new(loop, 2, &s));
    braid_deferred *a = braid_deferred_semaphore_acquire(s), *b = braid_deferred_semaphore_acquire(s),
                   *c = braid_deferred_semaphore_acquire(s);
    BT_TRUE(braid_deferred_has_result(a) && braid_deferred_has_result(b));
    braid_deferred_expect_no_result(c);
    BT_EQ(braid_deferred_semaphore_tokens(s), 0);
    BT_OK(braid_deferred_semaphore_release(s));
    BT_TRUE(braid_deferred_has_result(c));
    BT_OK(braid_deferred_semaphore_release(s));
    BT_OK(braid_deferred_semaphore_release(s));
    BT_EQ(braid_deferred_semaphore_tokens(s), 2);
    BT_ERR(braid_deferred_semaphore_release(s), BRAID_ELOCKED);
    /* a cancelled run never runs its function nor releases a token it never had */
    braid_deferred *h1 = braid_deferred_semaphore_acquire(s), *h2 = braid_deferred_semaphore_acquire(s);
    g_thunk_calls = 0;
    braid_deferred *r = braid_deferred_semaphore_run(s, thunk_val, NULL);
    braid_deferred_cancel(r);
    braid_failure_free(braid_deferred_expect_failure(r, BRAID_ECANCELED));
    BT_EQ(g_thunk_calls, 0);
    BT_EQ(braid_deferred_semaphore_tokens(s), 0);
    BT_OK(braid_deferred_semaphore_release(s));
    BT_OK(braid_deferred_semaphore_release(s));
    BT_OK(braid_deferred_semaphore_free(s));
    braid_deferred *all[] = { a, b, c, h1, h2, r };
    for (int i = 0; i < 6; i++) braid_deferred_unref(all[i]);
    done(loop);
}

/* ---- queue ---------------------------------------------------------------------------------- */
static braid_result eb_consume(braid_result r, void *arg) {
    *(int *)arg = r.failure->code;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

BT_TEST(queue_bounded_both_ways) {
    braid_loop *loop = mkloop();
    braid_deferred_queue *q;
    BT_ERR(braid_deferred_queue_new(loop, 0, 1, &q), BRAID_EINVAL);
    BT_OK(braid_deferred_queue_new(loop, 2, 1, &q));
    BT_OK(braid_deferred_queue_put(q, (void *)(intptr_t)1, NULL));
    BT_OK(braid_deferred_queue_put(q, (void *)(intptr_t)2, NULL));
    BT_ERR(braid_deferred_queue_put(q, (void *)(intptr_t)3, NULL), BRAID_EQUEUE_FULL);   /* overflow at once */
    BT_EQ(braid_deferred_queue_size(q), 2);
    braid_deferred *d;
    BT_OK(braid_deferred_queue_get(q, &d)); BT_EQ(value_of(d), 1); braid_deferred_unref(d);
    BT_OK(braid_deferred_queue_get(q, &d)); BT_EQ(value_of(d), 2); braid_deferred_unref(d);
    braid_deferred *w;
    BT_OK(braid_deferred_queue_get(q, &w));                         /* waits */
    braid_deferred_expect_no_result(w);
    BT_ERR(braid_deferred_queue_get(q, &d), BRAID_EQUEUE_EMPTY);    /* backlog 1: underflow at once */
    BT_TRUE(d == NULL);
    BT_OK(braid_deferred_queue_put(q, (void *)(intptr_t)7, NULL));  /* straight to the waiter */
    BT_EQ(value_of(w), 7);
    BT_EQ(braid_deferred_queue_size(q), 0);
    braid_deferred_unref(w);
    /* a cancelled get leaves the queue */
    BT_OK(braid_deferred_queue_get(q, &w));
    braid_deferred_cancel(w);
    BT_EQ(braid_deferred_queue_waiting(q), 0);
    braid_failure_free(braid_deferred_expect_failure(w, BRAID_ECANCELED));
    braid_deferred_unref(w);
    BT_OK(braid_deferred_queue_put(q, (void *)(intptr_t)8, NULL));
    BT_EQ(braid_deferred_queue_size(q), 1);
    /* free: stored values dropped, waiters told */
    g_freed = 0;
    braid_deferred_queue *q2;
    BT_OK(braid_deferred_queue_new(loop, 1, 4, &q2));
    int code = 0;
    BT_OK(braid_deferred_queue_get(q2, &w));
    braid_deferred_add_errback(w, eb_consume, &code);
    braid_deferred_queue_free(q2);
    BT_EQ(code, BRAID_ESHUTDOWN);
    braid_deferred_unref(w);
    BT_OK(braid_deferred_queue_get(q, &d)); BT_EQ(value_of(d), 8); braid_deferred_unref(d);
    BT_OK(braid_deferred_queue_put(q, braid_malloc(3), count_free));
    braid_deferred_queue_free(q);
    BT_EQ(g_freed, 1);
    done(loop);
}

/* ---- re-entrancy ---------------------------------------------------------------------------- */
typedef struct adder { braid_deferred *d; step *s; int added; } adder;
static braid_result add_more(braid_result r, void *arg) {
    adder *a = arg;
    if (a->added++ < 2) braid_deferred_add_callback(a->d, add_more, a);   /* runs in this chain */
    tr(a->s->t, "a%ld,", (long)(intptr_t)r.value);
    return braid_result_ok((void *)((intptr_t)r.value + 1));
}
BT_TEST(callbacks_added_while_running_run_in_order) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 100, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    adder a = { d, &s, 0 };
    BT_OK(braid_deferred_add_callback(d, add_more, &a));
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)0, NULL));
    BT_STREQ(t.s, "a0,c1,a101,a102,");
    BT_EQ(value_of(d), 103);
    /* and on an already-fired Deferred (the no-storage path) */
    memset(&t, 0, sizeof t);
    a.added = 0;
    BT_OK(braid_deferred_add_callback(d, add_more, &a));
    BT_STREQ(t.s, "a0,a1,a2,");
    BT_EQ(value_of(d), 3);
    braid_deferred_unref(d);
    done(loop);
}

static braid_result release_self(braid_result r, void *arg) {
    braid_deferred_unref((braid_deferred *)arg);
    return r;
}
static braid_result pause_self(braid_result r, void *arg) {
    braid_deferred_pause((braid_deferred *)arg);
    return r;
}
BT_TEST(release_and_pause_from_inside_a_callback) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 1, 0 };
    braid_deferred *d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(d, release_self, d));   /* the consumer lets go mid-chain */
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)1, NULL));
    BT_STREQ(t.s, "c1,");
    BT_EQ(braid_deferred_live(loop), 0);
    memset(&t, 0, sizeof t);
    d = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(d, pause_self, d));
    BT_OK(braid_deferred_add_callback(d, cb_add, &s));
    BT_OK(braid_deferred_callback(d, (void *)(intptr_t)1, NULL));
    BT_EQ(t.n, 0);
    braid_deferred_expect_no_result(d);
    braid_deferred_unpause(d);
    BT_STREQ(t.s, "c1,");
    BT_EQ(value_of(d), 2);
    braid_deferred_unref(d);
    done(loop);
}

BT_TEST(chain_to_a_paused_deferred_resumes_on_unpause) {
    braid_loop *loop = mkloop();
    braid_deferred *inner = braid_deferred_succeed(loop, (void *)(intptr_t)6, NULL);
    braid_deferred_pause(inner);
    braid_deferred *keep = braid_deferred_ref(inner);
    braid_deferred *outer = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(outer, return_chain, inner));
    BT_OK(braid_deferred_callback(outer, NULL, NULL));
    braid_deferred_expect_no_result(outer);
    braid_deferred_unpause(keep);
    BT_EQ(value_of(outer), 6);
    braid_deferred_unref(keep);
    braid_deferred_unref(outer);
    done(loop);
}

/* inner's own callback fires outer, whose callback chains back to inner while
 * inner is still running: outer must wait for the rest of inner's chain. */
typedef struct loopback { braid_deferred *outer; step *s; } loopback;
static braid_result fire_outer(braid_result r, void *arg) {
    loopback *lb = arg;
    braid_deferred_callback(lb->outer, NULL, NULL);
    tr(lb->s->t, "f%ld,", (long)(intptr_t)r.value);
    return r;
}
BT_TEST(chain_to_a_running_deferred) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step s = { &t, 10, 0 };
    braid_deferred *inner = braid_deferred_new(loop);
    braid_deferred *outer = braid_deferred_new(loop);
    loopback lb = { outer, &s };
    BT_OK(braid_deferred_add_callback(outer, return_chain, braid_deferred_ref(inner)));
    BT_OK(braid_deferred_add_callback(inner, fire_outer, &lb));
    BT_OK(braid_deferred_add_callback(inner, cb_add, &s));
    BT_OK(braid_deferred_callback(inner, (void *)(intptr_t)1, NULL));
    BT_STREQ(t.s, "f1,c1,");
    BT_EQ(value_of(outer), 11);               /* got inner's final result */
    braid_deferred_unref(inner);
    braid_deferred_unref(outer);
    done(loop);
}

BT_TEST(failure_travels_through_a_chain) {
    braid_loop *loop = mkloop();
    trace t = { 0 };
    step rec = { &t, 5, 0 };
    braid_deferred *inner = braid_deferred_new(loop);
    braid_deferred *outer = braid_deferred_new(loop);
    BT_OK(braid_deferred_add_callback(outer, return_chain, inner));
    BT_OK(braid_deferred_add_errback(outer, eb_rec, &rec));
    BT_OK(braid_deferred_callback(outer, NULL, NULL));
    BT_OK(braid_deferred_errback(inner, braid_failure_new(BRAID_EPIPE, NULL)));
    BT_EQ(value_of(outer), 5);
    braid_deferred_unref(outer);
    BT_EQ(g_unh.n, 0);
    done(loop);
}

BT_TEST(released_while_paused_cleans_its_timeout) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    braid_deferred_pause(d);
    BT_OK(braid_deferred_add_timeout(d, BRAID_SECONDS(1)));
    BT_EQ(braid_loop_timer_count(loop), 1);
    BT_OK(braid_deferred_callback(d, NULL, NULL));
    braid_deferred_unref(d);                 /* nobody can unpause it now: freed */
    BT_EQ(braid_loop_timer_count(loop), 0);
    BT_TRUE(strstr(g_log.last, "never run") != NULL);
    done(loop);
}

BT_TEST(take_and_state) {
    braid_loop *loop = mkloop();
    braid_deferred *d = braid_deferred_new(loop);
    braid_result r;
    BT_ERR(braid_deferred_take(d, &r), BRAID_EAGAIN);
    BT_TRUE(braid_deferred_loop(d) == loop);
    BT_FALSE(braid_deferred_is_failure(d));
    braid_deferred_errback(d, braid_failure_new(BRAID_EPIPE, NULL));
    BT_TRUE(braid_deferred_is_failure(d));
    BT_OK(braid_deferred_take(d, &r));
    BT_EQ(r.failure->code, BRAID_EPIPE);
    braid_result_drop(r);
    BT_FALSE(braid_deferred_is_failure(d));    /* now holds braid_result_ok(NULL) */
    braid_deferred_unref(d);
    BT_EQ(g_unh.n, 0);
    BT_STREQ(braid_strerror(BRAID_EALL_FAILED), "every raced Deferred failed");
    /* a NULL failure stays on the errback track */
    d = braid_deferred_new(loop);
    BT_OK(braid_deferred_errback(d, NULL));
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_EINVAL));
    braid_deferred_unref(d);
    d = braid_deferred_fail(loop, NULL);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_EINVAL));
    braid_deferred_unref(d);
    done(loop);
}

static braid_result thunk_fail(void *arg) { (void)arg; return braid_result_errf(BRAID_EPIPE, "in lock"); }
BT_TEST(lock_run_releases_on_failure_and_defer_later_chains) {
    braid_loop *loop = mkloop();
    braid_deferred_lock *l;
    BT_OK(braid_deferred_lock_new(loop, &l));
    braid_deferred *r = braid_deferred_lock_run(l, thunk_fail, NULL);
    braid_failure_free(braid_deferred_expect_failure(r, BRAID_EPIPE));
    BT_FALSE(braid_deferred_lock_is_locked(l));
    braid_deferred_unref(r);
    BT_OK(braid_deferred_lock_free(l));
    /* defer_later whose function returns an unfired Deferred */
    braid_deferred *inner = braid_deferred_new(loop);
    braid_deferred *d = braid_deferred_later(loop, 10, thunk_chain, inner);
    BT_OK(braid_loop_advance(loop, 10));
    braid_deferred_expect_no_result(d);
    braid_deferred_callback(inner, (void *)(intptr_t)12, NULL);
    BT_EQ(value_of(d), 12);
    braid_deferred_unref(d);
    done(loop);
}

BT_TEST(leak_gate_names_open_primitives) {
    braid_loop *loop = mkloop();
    braid_deferred_queue *q;
    BT_OK(braid_deferred_queue_new(loop, 1, 1, &q));
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_TRUE(strstr(g_log.last, "deferred queue") != NULL);
    braid_deferred_queue_free(q);
    done(loop);
}

/* Primitives under allocation failure: every call either works or says
 * ENOMEM, and a failed acquire takes no token. */
static int prims_scenario(void *arg) {
    (void)arg;
    braid_loop *loop = NULL;
    braid_loop_options o = { .clock = braid_fake_clock_base(fc), .log = cap_log };
    int rc = braid_loop_new(&o, &loop);
    if (rc < 0) return rc;
    braid_loop_set_unhandled(loop, on_unhandled, NULL);
    int first = 0;
#define NOTE(x) do { int r_ = (x); if (r_ < 0 && !first) first = r_; } while (0)
    braid_deferred_lock *l = NULL;
    braid_deferred_queue *q = NULL;
    NOTE(braid_deferred_lock_new(loop, &l));
    NOTE(braid_deferred_queue_new(loop, 2, 2, &q));
    if (l) {
        braid_deferred *a = braid_deferred_lock_acquire(l);
        braid_deferred *b = braid_deferred_lock_acquire(l);
        if (!a) NOTE(BRAID_ENOMEM);
        if (!b) NOTE(BRAID_ENOMEM);
        bool held = a != NULL;                    /* b waits only if a holds the lock */
        if (held && braid_deferred_lock_release(l) < 0) NOTE(-9998);
        if (b && braid_deferred_lock_release(l) < 0) NOTE(-9998);
        if (braid_deferred_lock_is_locked(l)) NOTE(-9998);
        braid_deferred_unref(a);
        braid_deferred_unref(b);
        braid_deferred *r = braid_deferred_lock_run(l, thunk_val, NULL);
        if (!r) NOTE(BRAID_ENOMEM);
        braid_deferred_unref(r);
        if (braid_deferred_lock_free(l) < 0) NOTE(-9998);
    }
    if (q) {
        braid_deferred *g = NULL;
        NOTE(braid_deferred_queue_get(q, &g));             /* waits */
        NOTE(braid_deferred_queue_put(q, (void *)(intptr_t)1, NULL));
        NOTE(braid_deferred_queue_put(q, (void *)(intptr_t)2, NULL));
        braid_deferred *g2 = NULL;
        NOTE(braid_deferred_queue_get(q, &g2));
        braid_deferred_unref(g);
        braid_deferred_unref(g2);
        braid_deferred_queue_free(q);
    }
    braid_deferred *later = braid_deferred_later(loop, 10, NULL, NULL);
    if (!later) NOTE(BRAID_ENOMEM);
    braid_deferred *t = braid_deferred_new(loop);
    if (!t) NOTE(BRAID_ENOMEM);
    else NOTE(braid_deferred_add_timeout(t, 5));
    braid_loop_advance(loop, 20);
    if (t) { braid_deferred_callback(t, NULL, NULL); braid_deferred_cancel(t); }
    if (later) braid_result_drop(braid_deferred_expect_success(later));
    if (t) {
        braid_result r;
        if (braid_deferred_take(t, &r) == 0) braid_result_drop(r);
    }
    braid_deferred_unref(later);
    braid_deferred_unref(t);
#undef NOTE
    bt_loop_destroy(loop);   /* the leak gate, every run */
    return first;
}

BT_TEST(primitives_allocation_failure_walk) {
    braid_fake_clock_new(0, &fc);
    memset(&g_unh, 0, sizeof g_unh);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "primitives", .body = prims_scenario,
                                                 .enomem_only = true, .max_runs = 300 });   /* -9998: misuse */
    BT_GT(r.errors, 3);
    BT_EQ(g_unh.n, 0);
    braid_fake_clock_free(fc);
}

/* Spill arrays are reused through the free list (within a budget). */
BT_TEST(long_callback_lists_stop_allocating_and_stay_bounded) {
    braid_loop *loop = mkloop();
#ifdef BRAID_DEBUG
    /* The free list is a FIFO quarantine here: a Deferred comes back with
     * the spill array of one freed BRAID__DEFERRED_QUARANTINE earlier, so
     * the reuse rules below are release-build ones (the ASan tree checks
     * them). What holds in both: nothing leaks and the loop frees it all. */
    for (int round = 0; round < 2; round++) {
        braid_deferred *d = braid_deferred_new(loop);
        for (int i = 0; i < 100; i++) BT_OK(braid_deferred_add_callback(d, pass, NULL));
        BT_OK(braid_deferred_callback(d, NULL, NULL));
        braid_deferred_unref(d);
    }
    done(loop);
#else
    for (int round = 0; round < 2; round++) {
        long before = braid_test_alloc_count();
        braid_deferred *d = braid_deferred_new(loop);
        for (int i = 0; i < 100; i++) BT_OK(braid_deferred_add_callback(d, pass, NULL));
        BT_OK(braid_deferred_callback(d, NULL, NULL));
        braid_deferred_unref(d);
        if (round == 1) BT_EQ(braid_test_alloc_count() - before, 0);
    }
    /* 200 at once: every spill array (128 slots) beyond the budget is freed */
    enum { N = 200 };
    braid_deferred *ds[N];
    for (int i = 0; i < N; i++) {
        ds[i] = braid_deferred_new(loop);
        for (int k = 0; k < 100; k++) braid_deferred_add_callback(ds[i], pass, NULL);
    }
    for (int i = 0; i < N; i++) {
        braid_deferred_callback(ds[i], NULL, NULL);
        braid_deferred_unref(ds[i]);
    }
    long held = braid_test_alloc_outstanding();
    BT_EQ(braid_deferred_live(loop), 0);
    /* held: the loop (with its logger and the logger's early-event slots),
     * its pool, N Deferreds on the free list, <= 16384/128 spill arrays */
    done(loop);
    long after = braid_test_alloc_outstanding();
    BT_LE(held - after, N + 16384 / 128 + 16);
    BT_GE(held - after, N + 16384 / 128);
#endif
}
