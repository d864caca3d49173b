/* Timers and clocks, all on the fake clock (deterministic, no sleeps). */
#include "harness.h"

typedef struct rec { int order[64]; int n; uint64_t at[64]; braid_loop *loop; } rec;


typedef struct tagged { braid_timer t; int id; rec *r; } tagged;
static void note_id(braid_timer *t, void *arg) {
    tagged *x = arg;
    x->r->at[x->r->n] = braid_loop_now(t->loop);
    x->r->order[x->r->n++] = x->id;
}

static braid_fake_clock *fc;
static braid_loop *fake_loop(void) {
    braid_fake_clock_new(1000, &fc);
    BT_TRUE(fc);
    return bt_loop_new(braid_fake_clock_base(fc));
}
static void fake_done(braid_loop *loop) {
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

BT_TEST(order_by_deadline_then_start) {
    braid_loop *loop = fake_loop();
    rec r = { .n = 0 };
    tagged ts[6];
    uint64_t delays[6] = { 50, 10, 30, 10, 50, 0 };
    for (int i = 0; i < 6; i++) {
        ts[i].id = i; ts[i].r = &r;
        braid_timer_init(loop, &ts[i].t, note_id, &ts[i]);
        BT_OK(braid_timer_start(&ts[i].t, delays[i]));
    }
    BT_EQ(braid_loop_timer_count(loop), 6);
    BT_OK(braid_loop_advance(loop, 100));
    int want[6] = { 5, 1, 3, 2, 0, 4 };
    BT_EQ(r.n, 6);
    for (int i = 0; i < 6; i++) BT_EQ(r.order[i], want[i]);
    /* each fired exactly at its deadline on the fake clock */
    BT_UEQ(r.at[0], 1000); BT_UEQ(r.at[1], 1010); BT_UEQ(r.at[3], 1030); BT_UEQ(r.at[5], 1050);
    fake_done(loop);
}

BT_TEST(never_early) {
    braid_loop *loop = fake_loop();
    rec r = { .n = 0 };
    tagged a = { .id = 1, .r = &r };
    braid_timer_init(loop, &a.t, note_id, &a);
    BT_OK(braid_timer_start(&a.t, BRAID_MSEC(10)));
    braid_fake_clock_advance(fc, BRAID_MSEC(10) - 1);
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(r.n, 0);
    BT_TRUE(braid_timer_is_active(&a.t));
    braid_fake_clock_advance(fc, 1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(r.n, 1);
    BT_FALSE(braid_timer_is_active(&a.t));
    fake_done(loop);
}

BT_TEST(reset_earlier_and_later) {
    braid_loop *loop = fake_loop();
    rec r = { .n = 0 };
    tagged a = { .id = 1, .r = &r }, b = { .id = 2, .r = &r };
    braid_timer_init(loop, &a.t, note_id, &a);
    braid_timer_init(loop, &b.t, note_id, &b);
    BT_OK(braid_timer_start(&a.t, 100));
    BT_OK(braid_timer_start(&b.t, 200));
    BT_OK(braid_timer_start(&a.t, 300));   /* later */
    BT_OK(braid_timer_start(&b.t, 50));    /* earlier */
    BT_UEQ(braid_timer_deadline(&b.t), 1050);
    BT_OK(braid_loop_advance(loop, 120));
    BT_EQ(r.n, 1); BT_EQ(r.order[0], 2);
    BT_OK(braid_loop_advance(loop, 200));
    BT_EQ(r.n, 2); BT_EQ(r.order[1], 1); BT_UEQ(r.at[1], 1300);
    fake_done(loop);
}

BT_TEST(stop_is_idempotent_and_prevents_fire) {
    braid_loop *loop = fake_loop();
    rec r = { .n = 0 };
    tagged a = { .id = 1, .r = &r };
    braid_timer_init(loop, &a.t, note_id, &a);
    BT_OK(braid_timer_start(&a.t, 10));
    braid_timer_stop(&a.t);
    braid_timer_stop(&a.t);
    BT_OK(braid_loop_advance(loop, 100));
    BT_EQ(r.n, 0);
    BT_EQ(braid_loop_timer_count(loop), 0);
    fake_done(loop);
}

/* A callback that stops another timer due in the same phase. */
static tagged *victim;
static void kill_other(braid_timer *t, void *arg) { note_id(t, arg); braid_timer_stop(&victim->t); }
BT_TEST(callback_stops_other_due_timer) {
    braid_loop *loop = fake_loop();
    rec r = { .n = 0 };
    tagged a = { .id = 1, .r = &r }, b = { .id = 2, .r = &r };
    victim = &b;
    braid_timer_init(loop, &a.t, kill_other, &a);
    braid_timer_init(loop, &b.t, note_id, &b);
    BT_OK(braid_timer_start(&a.t, 10));
    BT_OK(braid_timer_start(&b.t, 10));
    braid_fake_clock_advance(fc, 10);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(r.n, 1);
    fake_done(loop);
}

/* A zero-delay timer that re-arms itself fires once per iteration, not forever. */
static int rearm_count;
static void rearm(braid_timer *t, void *arg) { (void)arg; if (++rearm_count < 1000) braid_timer_start(t, 0); }
BT_TEST(zero_delay_rearm_yields_each_iteration) {
    braid_loop *loop = fake_loop();
    braid_timer t;
    braid_timer_init(loop, &t, rearm, NULL);
    BT_OK(braid_timer_start(&t, 0));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(rearm_count, 1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(rearm_count, 2);
    braid_timer_stop(&t);
    fake_done(loop);
}

static int later_calls;
static void later_fn(void *arg) { (void)arg; later_calls++; }
static braid_timer *self_h;
static void later_rearm(void *arg) { (void)arg; if (++later_calls < 3) braid_timer_start(self_h, 5); }
BT_TEST(call_later_handle) {
    braid_loop *loop = fake_loop();
    later_calls = 0;
    braid_timer *h = braid_timer_call_later(loop, 100, later_fn, NULL);
    BT_TRUE(h);
    BT_PTR_EQ(h->loop, loop);
    BT_TRUE(braid_timer_is_active(h));
    BT_OK(braid_timer_start(h, 200));
    BT_OK(braid_loop_advance(loop, 150));
    BT_EQ(later_calls, 0);
    BT_OK(braid_loop_advance(loop, 60));
    BT_EQ(later_calls, 1);                /* fired and freed (leak check covers it) */
    braid_timer *c = braid_timer_call_later(loop, 100, later_fn, NULL);
    braid_timer_cancel(c);                /* cancelled and freed */
    BT_OK(braid_loop_advance(loop, 200));
    BT_EQ(later_calls, 1);
    later_calls = 0;
    self_h = braid_timer_call_later(loop, 5, later_rearm, NULL);   /* re-arms itself twice */
    BT_OK(braid_loop_advance(loop, 100));
    BT_EQ(later_calls, 3);
    fake_done(loop);
}

typedef struct lc_rec { uint64_t ticks[16]; int n; } lc_rec;
static void lc_cb(braid_looping *lc, uint64_t ticks, void *arg) {
    lc_rec *r = arg;
    r->ticks[r->n++] = ticks;
    if (r->n == 6) braid_looping_stop(lc);
}
BT_TEST(looping_call_counts_missed_ticks) {
    braid_loop *loop = fake_loop();
    braid_looping lc;
    lc_rec r = { .n = 0 };
    BT_OK(braid_looping_start(loop, &lc, 10, true, lc_cb, &r));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));       /* tick 0 at once */
    BT_EQ(r.n, 1); BT_UEQ(r.ticks[0], 1);
    BT_OK(braid_loop_advance(loop, 10));                        /* tick 1 */
    BT_EQ(r.n, 2); BT_UEQ(r.ticks[1], 1);
    /* The loop is "busy" for 35 ns: jump the clock without running timers. */
    braid_fake_clock_advance(fc, 35);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));       /* at 45: tick 4, missed 2,3 */
    BT_EQ(r.n, 3); BT_UEQ(r.ticks[2], 3);
    BT_UEQ(lc.missed, 2);
    BT_OK(braid_loop_advance(loop, 5));                         /* tick 5 back on the grid */
    BT_EQ(r.n, 4); BT_UEQ(r.ticks[3], 1);
    BT_OK(braid_loop_advance(loop, 100));
    BT_EQ(r.n, 6);
    BT_FALSE(braid_timer_is_active(&lc.timer));
    fake_done(loop);
}

/* A million pending timers: insert, cancel half at random, fire the rest in order. */
static uint64_t last_deadline; static size_t fired; static int out_of_order;
static void order_cb(braid_timer *t, void *arg) {
    (void)arg;
    if (t->deadline < last_deadline) out_of_order++;
    last_deadline = t->deadline;
    fired++;
}
BT_TEST(million_timers) {
    braid_loop *loop = fake_loop();
    enum { N = 1000000 };
    braid_timer *ts = malloc(N * sizeof *ts);
    uint64_t x = 88172645463325252ull;
    for (size_t i = 0; i < N; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        braid_timer_init(loop, &ts[i], order_cb, NULL);
        BT_OK(braid_timer_start(&ts[i], x % 1000000));
    }
    BT_EQ(braid_loop_timer_count(loop), N);
    for (size_t i = 0; i < N; i += 2) braid_timer_stop(&ts[i]);
    BT_EQ(braid_loop_timer_count(loop), N / 2);
    braid_fake_clock_advance(fc, 1000000);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(fired, N / 2);
    BT_EQ(out_of_order, 0);
    free(ts);
    fake_done(loop);
}

BT_TEST(real_clock_timer_not_early) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { .n = 0 };
    tagged a = { .id = 1, .r = &r };
    braid_timer_init(loop, &a.t, note_id, &a);
    uint64_t t0 = braid_loop_now_fresh(loop);
    BT_OK(braid_timer_start(&a.t, BRAID_MSEC(2)));
    BT_OK(braid_loop_run(loop));      /* returns when nothing is left */
    BT_EQ(r.n, 1);
    BT_UGE(r.at[0] - t0, BRAID_MSEC(2));
    bt_loop_destroy(loop);
}

BT_TEST(leak_gate_refuses_active_timer) {
    braid_loop *loop = fake_loop();
    braid_timer t;
    braid_timer_init(loop, &t, order_cb, NULL);
    BT_OK(braid_timer_start(&t, 10));
    int logged = 0;
    (void)logged;
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    braid_timer_stop(&t);
    fake_done(loop);
}
