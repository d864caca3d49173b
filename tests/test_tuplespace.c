/* The tuple space on the loop: matching, priority and FIFO order, waiters,
 * timeouts and cancellation, leases, dead letters, capacity, notify, the
 * index, allocation failure. Everything on the fake clock. */
#include "harness.h"
#include "support/walk.h"
#include <braid/testing_deferred.h>
#include <braid/tuplespace.h>
#include <math.h>
#include <sys/wait.h>
#include <unistd.h>

static braid_fake_clock *fc;
static braid_loop *mkloop(void) {
    braid_fake_clock_new(1000, &fc);
    BT_TRUE(fc);
    return bt_loop_new(braid_fake_clock_base(fc));
}
static void done(braid_loop *loop, braid_tuplespace *ts) {
    braid_tuplespace_free(ts);
    BT_EQ(braid_deferred_live(loop), 0);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}
static braid_tuplespace *mkspace(braid_loop *loop, const braid_tuplespace_options *o) {
    braid_tuplespace *ts = NULL;
    BT_OK(braid_tuplespace_new(loop, o, &ts));
    return ts;
}

/* out ("job", id) at priority p */
static void out_job(braid_tuplespace *ts, int64_t id, int32_t p) {
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(id)), p));
}
#define JOB_TMPL BRAID_FIELDS(braid_field_str("job"), braid_field_any(BRAID_FIELD_INT))

/* inp a job; its id, or -1 if none */
static int64_t take_job(braid_tuplespace *ts) {
    braid_tuple *t = NULL;
    int rc = braid_tuplespace_inp(ts, JOB_TMPL, &t);
    if (rc == BRAID_ETUPLE_NOMATCH) return -1;
    BT_OK(rc);
    int64_t id = t->f[1].v.i;
    braid_tuple_free(t);
    return id;
}

/* The tuple a fired Deferred holds (yours), then the Deferred released. */
static braid_tuple *tuple_of(braid_deferred *d) {
    braid_result r = braid_deferred_expect_success(d);
    braid_tuple *t = r.value;
    BT_TRUE(t);
    braid_deferred_unref(d);
    return t;
}
static void expect_fail(braid_deferred *d, int code) {
    braid_failure *f = braid_deferred_expect_failure(d, code);
    braid_failure_free(f);
    braid_deferred_unref(d);
}

/* ---- matching ---------------------------------------------------------------- */
BT_TEST(match_types_and_formals) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_int(7), braid_field_double(2.5),
                                                braid_field_str("hello"), braid_field_bytes("\0\1\2", 3),
                                                braid_field_bool(true)), 0));
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_rdp(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_INT),
                                                braid_field_any(BRAID_FIELD_DOUBLE),
                                                braid_field_any(BRAID_FIELD_STRING),
                                                braid_field_any(BRAID_FIELD_BYTES),
                                                braid_field_any(BRAID_FIELD_BOOL)), &t));
    BT_EQ(t->n, 5);
    BT_STREQ(t->f[2].v.p, "hello");          /* stored strings are NUL-terminated */
    BT_EQ(t->f[3].len, 3);
    BT_EQ(memcmp(t->f[3].v.p, "\0\1\2", 3), 0);
    char buf[128];
    braid_fields_format(t->f, t->n, buf, sizeof buf);
    BT_STREQ(buf, "(7, 2.5, \"hello\", b\"\\x00\\x01\\x02\", true)");

    struct { braid_field f; bool want; } cases[] = {
        { braid_field_int(7), true }, { braid_field_int(8), false },
        { braid_field_double(7), false },                      /* type must be equal */
        { braid_field_int_range(7, 9), true }, { braid_field_int_range(-3, 6), false },
        { braid_field_int_range(INT64_MIN, INT64_MAX), true },
        { braid_field_any(BRAID_FIELD_STRING), false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        braid_field tm[5] = { cases[i].f, braid_field_any(BRAID_FIELD_DOUBLE), braid_field_any(BRAID_FIELD_STRING),
                              braid_field_any(BRAID_FIELD_BYTES), braid_field_any(BRAID_FIELD_BOOL) };
        BT_EQ(braid_tuple_matches(t, tm, 5), cases[i].want);
    }
    braid_field tm[5] = { braid_field_int(7), braid_field_double_range(2.5, 2.5), braid_field_str_prefix("hel"),
                          braid_field_bytes_prefix("\0\1", 2), braid_field_bool(true) };
    BT_TRUE(braid_tuple_matches(t, tm, 5));
    tm[2] = braid_field_str_prefix("help");  BT_FALSE(braid_tuple_matches(t, tm, 5));
    tm[2] = braid_field_str_prefix("");      BT_TRUE(braid_tuple_matches(t, tm, 5));
    tm[2] = braid_field_str("hell");         BT_FALSE(braid_tuple_matches(t, tm, 5));   /* actual: whole value */
    tm[2] = braid_field_bytes("hello", 5);   BT_FALSE(braid_tuple_matches(t, tm, 5));   /* bytes != string */
    tm[2] = braid_field_str("hello");
    tm[1] = braid_field_double_range(2.6, 3); BT_FALSE(braid_tuple_matches(t, tm, 5));
    tm[1] = braid_field_double(2.5);
    tm[4] = braid_field_bool(false);         BT_FALSE(braid_tuple_matches(t, tm, 5));
    tm[4] = braid_field_bool(true);
    BT_FALSE(braid_tuple_matches(t, tm, 4));  /* arity */
    braid_tuple_free(t);

    /* invalid tuples and templates */
    BT_ERR(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_INT)), 0), BRAID_EINVAL);
    BT_ERR(braid_tuplespace_out(ts, NULL, 0, 0), BRAID_EINVAL);
    braid_field bad = braid_field_int(1);
    bad.type = 9;
    BT_ERR(braid_tuplespace_out(ts, &bad, 1, 0), BRAID_EINVAL);
    braid_field prefix_int = braid_field_int(1);
    prefix_int.match = BRAID_FIELD_PREFIX;
    BT_ERR(braid_tuplespace_rdp(ts, &prefix_int, 1, &t), BRAID_EINVAL);
    braid_field range_str = braid_field_str("a");
    range_str.match = BRAID_FIELD_RANGE;
    BT_ERR(braid_tuplespace_rdp(ts, &range_str, 1, &t), BRAID_EINVAL);
    expect_fail(braid_tuplespace_in(ts, &range_str, 1, BRAID_FOREVER), BRAID_EINVAL);
    done(loop, ts);
}

BT_TEST(match_doubles_nan_and_negative_zero) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_double(NAN)), 0));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_double(-0.0)), 0));
    braid_tuple *t = NULL;
    BT_ERR(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_double(NAN)), &t), BRAID_ETUPLE_NOMATCH);
    BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_double(0.0)), &t));   /* -0.0 == 0.0 */
    braid_tuple_free(t);
    BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_DOUBLE)), &t));
    BT_TRUE(isnan(t->f[0].v.d));
    braid_tuple_free(t);
    done(loop, ts);
}

/* ---- order --------------------------------------------------------------------- */
BT_TEST(priority_then_fifo) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    out_job(ts, 1, 0);
    out_job(ts, 2, 5);
    out_job(ts, 3, -2);
    out_job(ts, 4, 5);
    out_job(ts, 5, 0);
    out_job(ts, 6, 9);
    int64_t want[] = { 6, 2, 4, 1, 5, 3, -1 };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) BT_EQ(take_job(ts), want[i]);
    done(loop, ts);
}

/* A template whose first field is a formal looks at every bucket of its
 * arity and still takes the best tuple (priority, then out order). */
BT_TEST(priority_across_buckets) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    const char *kinds[] = { "a", "b", "c" };
    int64_t id = 0;
    for (int round = 0; round < 3; round++)
        for (int k = 0; k < 3; k++)
            BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str(kinds[k]), braid_field_int(++id)),
                                       k == 1 && round == 2 ? 3 : 0));
    int64_t want[] = { 8, 1, 2, 3, 4, 5, 6, 7, 9 };
    for (size_t i = 0; i < 9; i++) {
        braid_tuple *t = NULL;
        BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING),
                                                    braid_field_any(BRAID_FIELD_INT)), &t));
        BT_EQ(t->f[1].v.i, want[i]);
        braid_tuple_free(t);
    }
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.tuples, 0);
    BT_EQ(st.buckets, 0);          /* empty buckets go away */
    done(loop, ts);
}

/* Templates that constrain later fields skip non-matching candidates and
 * still respect order. */
BT_TEST(order_with_filters) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    for (int i = 1; i <= 10; i++) out_job(ts, i, i % 3);
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int_range(3, 6)), &t));
    BT_EQ(t->f[1].v.i, 5);        /* priority 2: 2, 5, 8; in range: 5 */
    braid_tuple_free(t);
    braid_tuple_list *l = NULL;
    BT_OK(braid_tuplespace_rd_all(ts, JOB_TMPL, 0, &l));
    int64_t want[] = { 2, 8, 1, 4, 7, 10, 3, 6, 9 };
    BT_EQ(l->n, 9);
    for (size_t i = 0; i < l->n; i++) BT_EQ(l->t[i]->f[1].v.i, want[i]);
    braid_tuple_list_free(l);
    BT_OK(braid_tuplespace_in_all(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING),
                                                   braid_field_int_range(1, 7)), 3, &l));
    BT_EQ(l->n, 3);
    BT_EQ(l->t[0]->f[1].v.i, 2);
    BT_EQ(l->t[1]->f[1].v.i, 1);
    BT_EQ(l->t[2]->f[1].v.i, 4);
    braid_tuple_list_free(l);
    BT_OK(braid_tuplespace_in_all(ts, JOB_TMPL, 0, &l));
    BT_EQ(l->n, 6);             /* 3, 6, 7, 8, 9, 10 */
    braid_tuple_list_free(l);
    BT_EQ(take_job(ts), -1);
    done(loop, ts);
}

/* ---- waiting calls ----------------------------------------------------------------- */
BT_TEST(waiters_fifo_readers_get_copies) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    braid_deferred *r1 = braid_tuplespace_rd(ts, JOB_TMPL, BRAID_FOREVER);
    braid_deferred *i1 = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    braid_deferred *r2 = braid_tuplespace_rd(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING),
                                                              braid_field_any(BRAID_FIELD_INT)), BRAID_FOREVER);
    braid_deferred *i2 = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING),
                                                              braid_field_any(BRAID_FIELD_INT)), BRAID_FOREVER);
    braid_deferred *other = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_str("other")), BRAID_FOREVER);
    braid_deferred_expect_no_result(r1);
    braid_deferred_expect_no_result(i1);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.waiters, 5);
    out_job(ts, 1, 0);     /* r1 reads it, i1 takes it; r2 (later) does not see it */
    braid_tuple *t = tuple_of(r1);
    BT_EQ(t->f[1].v.i, 1);
    braid_tuple_free(t);
    t = tuple_of(i1);
    BT_EQ(t->f[1].v.i, 1);
    braid_tuple_free(t);
    braid_deferred_expect_no_result(r2);
    braid_deferred_expect_no_result(i2);
    out_job(ts, 2, 0);     /* the wild waiters, in order */
    t = tuple_of(r2);
    BT_EQ(t->f[1].v.i, 2);
    braid_tuple_free(t);
    t = tuple_of(i2);
    BT_EQ(t->f[1].v.i, 2);
    braid_tuple_free(t);
    BT_EQ(take_job(ts), -1);
    braid_deferred_expect_no_result(other);
    braid_deferred_cancel(other);
    expect_fail(other, BRAID_ECANCELED);
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.waiters, 0);
    BT_EQ(st.buckets, 0);
    done(loop, ts);
}

/* Keyed and wild waiters interleave in call order. */
BT_TEST(waiters_keyed_and_wild_in_call_order) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    braid_deferred *d[4];
    d[0] = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING), braid_field_any(BRAID_FIELD_INT)), BRAID_FOREVER);
    d[1] = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    d[2] = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING), braid_field_any(BRAID_FIELD_INT)), BRAID_FOREVER);
    d[3] = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    for (int i = 0; i < 4; i++) {
        out_job(ts, 10 + i, 0);
        braid_tuple *t = tuple_of(d[i]);
        BT_EQ(t->f[1].v.i, 10 + i);
        braid_tuple_free(t);
        for (int k = i + 1; k < 4; k++) braid_deferred_expect_no_result(d[k]);
    }
    done(loop, ts);
}

BT_TEST(timeouts_on_the_loop_clock) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    expect_fail(braid_tuplespace_in(ts, JOB_TMPL, 0), BRAID_ETUPLE_NOMATCH);
    braid_deferred *a = braid_tuplespace_in(ts, JOB_TMPL, BRAID_MSEC(100));
    braid_deferred *b = braid_tuplespace_rd(ts, JOB_TMPL, BRAID_MSEC(300));
    braid_loop_advance(loop, BRAID_MSEC(99));
    braid_deferred_expect_no_result(a);
    braid_loop_advance(loop, BRAID_MSEC(1));
    expect_fail(a, BRAID_ETIMEDOUT);
    braid_deferred_expect_no_result(b);
    out_job(ts, 1, 0);            /* b reads it, its timer stops; the tuple stays */
    braid_tuple *t = tuple_of(b);
    braid_tuple_free(t);
    braid_loop_advance(loop, BRAID_SECONDS(1));
    BT_EQ(take_job(ts), 1);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.waiters, 0);
    done(loop, ts);
}

BT_TEST(free_fails_waiting_calls) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    braid_deferred *a = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    braid_deferred *b = braid_tuplespace_rd(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_INT)), BRAID_SECONDS(5));
    out_job(ts, 1, 0);  /* taken by a */
    braid_tuple_free(tuple_of(a));
    a = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    out_job(ts, 2, 0);
    braid_tuple_free(tuple_of(a));
    a = braid_tuplespace_in_lease(ts, JOB_TMPL, 0, BRAID_FOREVER);
    braid_tuplespace_free(ts);
    expect_fail(a, BRAID_ESHUTDOWN);
    expect_fail(b, BRAID_ESHUTDOWN);
    done(loop, NULL);
}

/* ---- leases ------------------------------------------------------------------------ */
BT_TEST(lease_ack_removes_for_good) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    out_job(ts, 1, 3);
    braid_tuple *t = tuple_of(braid_tuplespace_in_lease(ts, JOB_TMPL, BRAID_SECONDS(10), BRAID_FOREVER));
    BT_NE(t->lease, 0);
    BT_EQ(t->deliveries, 1);
    BT_EQ(t->priority, 3);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.tuples, 0);
    BT_EQ(st.leased, 1);
    BT_EQ(take_job(ts), -1);
    BT_OK(braid_tuplespace_ack(ts, t->lease));
    BT_ERR(braid_tuplespace_ack(ts, t->lease), BRAID_ETUPLE_NOLEASE);
    BT_ERR(braid_tuplespace_nack(ts, t->lease, 0), BRAID_ETUPLE_NOLEASE);
    braid_loop_advance(loop, BRAID_SECONDS(60));
    BT_EQ(take_job(ts), -1);
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.leased, 0);
    BT_EQ(st.acks, 1);
    BT_EQ(st.bytes, 0);
    braid_tuple_free(t);
    done(loop, ts);
}

BT_TEST(lease_expiry_redelivers_in_turn) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    out_job(ts, 1, 0);
    out_job(ts, 2, 0);
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(10), &t));
    BT_EQ(t->f[1].v.i, 1);
    out_job(ts, 3, 0);
    braid_loop_advance(loop, BRAID_SECONDS(10) - 1);
    BT_OK(braid_tuplespace_renew(ts, t->lease, BRAID_SECONDS(5)));   /* now due at 15 s */
    braid_loop_advance(loop, BRAID_SECONDS(5) - 1);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.leased, 1);
    braid_loop_advance(loop, 1);       /* expired: back ahead of 2 and 3 (it keeps its turn) */
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.leased, 0);
    BT_EQ(st.expired, 1);
    BT_ERR(braid_tuplespace_ack(ts, t->lease), BRAID_ETUPLE_NOLEASE);   /* too late */
    braid_tuple_free(t);
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(10), &t));
    BT_EQ(t->f[1].v.i, 1);
    BT_EQ(t->deliveries, 2);
    BT_OK(braid_tuplespace_ack(ts, t->lease));
    braid_tuple_free(t);
    BT_EQ(take_job(ts), 2);
    BT_EQ(take_job(ts), 3);
    done(loop, ts);
}

/* An expired lease goes to a waiting taker before it is stored. */
BT_TEST(lease_expiry_wakes_waiter) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    out_job(ts, 1, 0);
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t));
    braid_tuple_free(t);
    braid_deferred *w = braid_tuplespace_in_lease(ts, JOB_TMPL, BRAID_SECONDS(1), BRAID_FOREVER);
    braid_deferred_expect_no_result(w);
    braid_loop_advance(loop, BRAID_SECONDS(1));
    t = tuple_of(w);
    BT_EQ(t->f[1].v.i, 1);
    BT_EQ(t->deliveries, 2);
    BT_OK(braid_tuplespace_nack(ts, t->lease, BRAID_SECONDS(2)));   /* back in 2 s */
    BT_ERR(braid_tuplespace_ack(ts, t->lease), BRAID_ETUPLE_NOLEASE);
    braid_tuple_free(t);
    BT_EQ(take_job(ts), -1);
    braid_loop_advance(loop, BRAID_SECONDS(2) - 1);
    BT_EQ(take_job(ts), -1);
    braid_loop_advance(loop, 1);
    BT_EQ(take_job(ts), 1);
    done(loop, ts);
}

BT_TEST(dead_letters_after_max_deliveries) {
    braid_loop *loop = mkloop();
    braid_tuplespace_options o = { .max_deliveries = 3, .dead_letter_tag = "dlq" };
    braid_tuplespace *ts = mkspace(loop, &o);
    out_job(ts, 42, 7);
    for (int i = 1; i <= 3; i++) {
        braid_tuple *t = NULL;
        BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t));
        BT_EQ(t->deliveries, i);
        if (i == 2) braid_loop_advance(loop, BRAID_SECONDS(1));      /* expiry */
        else BT_OK(braid_tuplespace_nack(ts, t->lease, 0));          /* nack */
        braid_tuple_free(t);
    }
    BT_EQ(take_job(ts), -1);
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_str("dlq"), braid_field_str("job"),
                                                braid_field_any(BRAID_FIELD_INT)), &t));
    BT_EQ(t->f[2].v.i, 42);
    BT_EQ(t->priority, 7);
    BT_EQ(t->deliveries, 3);
    braid_tuple_free(t);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.dead, 1);
    BT_EQ(st.bytes, 0);
    done(loop, ts);
}

/* ---- capacity ----------------------------------------------------------------------- */
BT_TEST(capacity_full_fails_at_once) {
    braid_loop *loop = mkloop();
    braid_tuplespace_options o = { .max_tuples = 2 };
    braid_tuplespace *ts = mkspace(loop, &o);
    out_job(ts, 1, 0);
    out_job(ts, 2, 0);
    BT_ERR(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(3)), 0),
           BRAID_ETUPLE_FULL);
    /* a leased tuple still counts */
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t));
    BT_ERR(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(3)), 0),
           BRAID_ETUPLE_FULL);
    BT_OK(braid_tuplespace_ack(ts, t->lease));
    braid_tuple_free(t);
    out_job(ts, 3, 0);
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.full, 2);
    braid_tuplespace_free(ts);

    /* bytes */
    braid_tuplespace_options ob = { .max_bytes = 1000 };
    ts = mkspace(loop, &ob);
    char big[600] = { 0 };
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_bytes(big, sizeof big)), 0));
    BT_ERR(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_bytes(big, sizeof big)), 0), BRAID_ETUPLE_FULL);
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_int(1)), 0));
    done(loop, ts);
}

BT_TEST(capacity_out_wait) {
    braid_loop *loop = mkloop();
    braid_tuplespace_options o = { .max_tuples = 1 };
    braid_tuplespace *ts = mkspace(loop, &o);
    braid_deferred *a = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0, 0);
    braid_result r = braid_deferred_expect_success(a);      /* room: written at once */
    braid_result_drop(r);
    braid_deferred_unref(a);
    expect_fail(braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(2)), 0, 0),
                BRAID_ETUPLE_FULL);
    a = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(2)), 0, BRAID_FOREVER);
    braid_deferred *b = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(3)), 0,
                                                  BRAID_SECONDS(1));
    braid_deferred *c = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(4)), 9,
                                                  BRAID_FOREVER);
    /* out does not jump the queue of waiting outs */
    BT_ERR(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_int(0)), 0), BRAID_ETUPLE_FULL);
    braid_deferred_expect_no_result(a);
    BT_EQ(take_job(ts), 1);                        /* room for one: a goes in */
    r = braid_deferred_expect_success(a);
    braid_result_drop(r);
    braid_deferred_unref(a);
    braid_deferred_expect_no_result(b);
    braid_loop_advance(loop, BRAID_SECONDS(1));
    expect_fail(b, BRAID_ETIMEDOUT);
    BT_EQ(take_job(ts), 2);
    r = braid_deferred_expect_success(c);
    braid_result_drop(r);
    braid_deferred_unref(c);
    BT_EQ(take_job(ts), 4);
    done(loop, ts);
}

/* ---- notify ------------------------------------------------------------------------ */
typedef struct seen { int n; int64_t last; braid_tuple_watch *self; bool stop_after_one; } seen;
static void on_tuple(const braid_tuple *t, void *arg) {
    seen *s = arg;
    s->n++;
    s->last = t->f[1].v.i;
    if (s->stop_after_one) braid_tuple_watch_free(s->self);
}

BT_TEST(notify_future_tuples) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    out_job(ts, 1, 0);                           /* before: not notified */
    seen all = { 0 }, once = { .stop_after_one = true }, big = { 0 };
    braid_tuple_watch *w_all;
    BT_OK(braid_tuplespace_notify(ts, JOB_TMPL, on_tuple, &all, &w_all));
    BT_OK(braid_tuplespace_notify(ts, JOB_TMPL, on_tuple, &once, &once.self));
    BT_OK(braid_tuplespace_notify(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int_range(100, 200)),
                                  on_tuple, &big, NULL));
    /* a waiting taker takes the tuple, notify still sees it (first) */
    braid_deferred *taker = braid_tuplespace_in(ts, JOB_TMPL, BRAID_FOREVER);
    out_job(ts, 2, 0);
    braid_tuple_free(tuple_of(taker));
    BT_EQ(all.n, 1);
    BT_EQ(all.last, 2);
    BT_EQ(once.n, 1);
    out_job(ts, 150, 0);
    out_job(ts, 3, 0);
    BT_EQ(all.n, 3);
    BT_EQ(once.n, 1);                            /* freed itself inside its callback */
    BT_EQ(big.n, 1);
    BT_EQ(big.last, 150);
    /* a tuple coming back from a lease is not new */
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t));
    BT_OK(braid_tuplespace_nack(ts, t->lease, 0));
    braid_tuple_free(t);
    BT_EQ(all.n, 3);
    braid_tuple_watch_free(w_all);
    out_job(ts, 4, 0);
    BT_EQ(all.n, 3);
    done(loop, ts);                              /* the last registration goes with the space */
}

/* The stream form: each future tuple a Deferred from a DeferredQueue, in
 * order; what finds the queue full is dropped and counted. */
BT_TEST(notify_as_a_stream_of_deferreds) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    braid_deferred_queue *q;
    BT_OK(braid_deferred_queue_new(loop, 2, 4, &q));
    braid_tuple_watch *w;
    BT_OK(braid_tuplespace_notify_queue(ts, JOB_TMPL, q, &w));
    braid_deferred *first;
    BT_OK(braid_deferred_queue_get(q, &first));            /* waiting before anything is written */
    braid_deferred_expect_no_result(first);
    for (int i = 1; i <= 4; i++) out_job(ts, i, 0);   /* 1 to the waiting get, 2 and 3 queued, 4 dropped */
    braid_tuple *t = tuple_of(first);
    BT_EQ(t->f[1].v.i, 1);
    braid_tuple_free(t);
    for (int i = 2; i <= 3; i++) {
        braid_deferred *d;
        BT_OK(braid_deferred_queue_get(q, &d));
        t = tuple_of(d);
        BT_EQ(t->f[1].v.i, i);
        braid_tuple_free(t);
    }
    BT_EQ(braid_tuple_watch_dropped(w), 1);
    BT_EQ(braid_deferred_queue_size(q), 0);
    for (int i = 1; i <= 4; i++) BT_EQ(take_job(ts), i);   /* the tuples themselves stayed */
    braid_tuple_watch_free(w);
    out_job(ts, 5, 0);
    BT_EQ(braid_deferred_queue_size(q), 0);
    braid_deferred_queue_free(q);
    done(loop, ts);
}

/* ---- the index ---------------------------------------------------------------------- */
/* Many keys, many tuples per key: every keyed in finds its own, in order,
 * and the index shrinks back to nothing. */
BT_TEST(index_many_keys) {
    braid_loop *loop = mkloop();
    braid_tuplespace *ts = mkspace(loop, NULL);
    enum { KEYS = 2000, PER = 5 };
    for (int r = 0; r < PER; r++)
        for (int k = 0; k < KEYS; k++)
            BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_int(k), braid_field_int(r)), r == 3));
    braid_tuplespace_stats st;
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.buckets, KEYS);
    BT_EQ(st.tuples, KEYS * PER);
    for (int k = KEYS - 1; k >= 0; k--) {
        int want[PER] = { 3, 0, 1, 2, 4 };
        for (int r = 0; r < PER; r++) {
            braid_tuple *t = NULL;
            BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_int(k), braid_field_any(BRAID_FIELD_INT)), &t));
            BT_EQ(t->f[1].v.i, want[r]);
            braid_tuple_free(t);
        }
    }
    braid_tuplespace_stats_get(ts, &st);
    BT_EQ(st.buckets, 0);
    BT_EQ(st.tuples, 0);
    BT_EQ(st.bytes, 0);
    done(loop, ts);
}

/* ---- durability ---------------------------------------------------------------------- */
/* A process writes tuples into a durable space, takes one, leases two, acks
 * one of them, and dies without closing anything. Reopened, the space holds
 * every acknowledged out that was not taken, the un-acked lease back in its
 * turn with its delivery counted, and nothing that was taken or acked. */
static braid_tuplespace *open_durable(braid_loop *loop, const char *path, int *rc) {
    braid_tuplespace *ts = NULL;
    braid_tuplespace_options o = { .path = path };
    *rc = braid_tuplespace_new(loop, &o, &ts);
    if (*rc == BRAID_ENOSYS) bt_skip("built without SQLite");
    return ts;
}

BT_TEST(durable_across_a_crash) {
    char dir[] = "/tmp/bt-tsd-XXXXXX";
    BT_TRUE(mkdtemp(dir));
    char path[128];
    snprintf(path, sizeof path, "%s/space.db", dir);
    pid_t pid = fork();
    if (pid == 0) {
        braid_loop *loop;
        int rc;
        if (braid_loop_new(NULL, &loop) < 0) _exit(2);
        braid_tuplespace *ts = open_durable(loop, path, &rc);
        if (rc < 0) _exit(3);
        out_job(ts, 1, 0);
        out_job(ts, 2, 5);
        out_job(ts, 3, 0);
        out_job(ts, 4, 0);
        braid_tuple *t;
        if (take_job(ts) != 2) _exit(4);                          /* taken: gone */
        if (braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(30), &t) < 0 || t->f[1].v.i != 1) _exit(5);
        if (braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(30), &t) < 0 || t->f[1].v.i != 3) _exit(6);
        if (braid_tuplespace_ack(ts, t->lease) < 0) _exit(7);     /* acked: gone */
        _exit(0);                                                 /* crash: nothing closed */
    }
    int st;
    BT_EQ(waitpid(pid, &st, 0), pid);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 77) bt_skip("built without SQLite");
    BT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);

    braid_loop *loop = mkloop();
    int rc;
    braid_tuplespace *ts = open_durable(loop, path, &rc);
    BT_OK(rc);
    braid_tuplespace_stats s;
    braid_tuplespace_stats_get(ts, &s);
    BT_EQ(s.tuples, 2);
    BT_EQ(s.leased, 0);
    braid_tuple *t = NULL;
    BT_OK(braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(30), &t));
    BT_EQ(t->f[1].v.i, 1);                        /* the lease that died with its holder, first */
    BT_EQ(t->deliveries, 2);                      /* its first delivery was counted */
    braid_tuple_free(t);                          /* not acked: still in the file */
    out_job(ts, 5, 9);
    braid_tuplespace_free(ts);                    /* a clean close this time */

    ts = open_durable(loop, path, &rc);
    BT_OK(rc);
    int64_t want[] = { 5, 1, 4, -1 };
    for (size_t i = 0; i < 4; i++) BT_EQ(take_job(ts), want[i]);
    braid_tuplespace_free(ts);
    ts = open_durable(loop, path, &rc);           /* everything was taken: empty */
    BT_OK(rc);
    BT_EQ(take_job(ts), -1);
    /* a file that is not a database */
    braid_tuplespace *bad = NULL;
    braid_tuplespace_options o = { .path = dir };  /* a directory */
    BT_ERR(braid_tuplespace_new(loop, &o, &bad), -EIO);
    done(loop, ts);
    char cmd[200];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    BT_EQ(system(cmd), 0);
}

/* ---- allocation failure ------------------------------------------------------------ */
/* One scenario over the main paths; every allocation in it fails once in
 * turn: nothing leaks, nothing crashes, and each call reports ENOMEM or works. */
static void scenario(braid_loop *loop) {
    braid_tuplespace *ts = NULL;
    braid_tuplespace_options o = { .max_deliveries = 2 };
    if (braid_tuplespace_new(loop, &o, &ts) < 0) return;
    braid_tuple_watch *w = NULL;
    seen s = { 0 };
    (void)braid_tuplespace_notify(ts, JOB_TMPL, on_tuple, &s, &w);
    braid_deferred *waiting = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(9)),
                                                  BRAID_SECONDS(5));
    braid_deferred *reader = braid_tuplespace_rd(ts, JOB_TMPL, BRAID_FOREVER);
    for (int i = 0; i < 12; i++)
        (void)braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(i)), i % 3);
    braid_tuple *t = NULL;
    if (braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t) == 0) {
        (void)braid_tuplespace_nack(ts, t->lease, 0);
        braid_tuple_free(t);
    }
    if (braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t) == 0) braid_tuple_free(t);
    braid_loop_advance(loop, BRAID_SECONDS(1));          /* expiry */
    for (int k = 0; k < 3; k++) {
        if (braid_tuplespace_inp_lease(ts, JOB_TMPL, BRAID_SECONDS(1), &t) == 0) {
            (void)braid_tuplespace_nack(ts, t->lease, 0);   /* dead letters at 2 */
            braid_tuple_free(t);
        }
    }
    braid_tuple_list *l = NULL;
    if (braid_tuplespace_rd_all(ts, JOB_TMPL, 0, &l) == 0) braid_tuple_list_free(l);
    if (braid_tuplespace_in_all(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_STRING), braid_field_any(BRAID_FIELD_INT)),
                                4, &l) == 0)
        braid_tuple_list_free(l);
    if (braid_tuplespace_rdp(ts, JOB_TMPL, &t) == 0) braid_tuple_free(t);
    braid_deferred *ow = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_int(1)), 0, BRAID_SECONDS(1));
    braid_tuple_watch_free(w);
    braid_tuplespace_free(ts);
    braid_deferred *ds[] = { waiting, reader, ow };
    for (size_t i = 0; i < 3; i++) {
        if (!ds[i]) continue;
        braid_result r;
        if (braid_deferred_take(ds[i], &r) == 0) braid_result_drop(r);
        braid_deferred_unref(ds[i]);
    }
}

static int scenario_body(void *loop) {
    scenario(loop);
    BT_EQ(braid_loop_timer_count(loop), 0);
    return 0;                                     /* every failure is absorbed: reported, never a crash */
}

BT_TEST(allocation_failure_walk) {
    braid_loop *loop = mkloop();
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "tuplespace", .arg = loop, .body = scenario_body,
                                                 .loop = loop, .warm_up = true });
    BT_GT(r.injected, 30);                        /* the walk went through the space's allocations */
    done(loop, NULL);
}
