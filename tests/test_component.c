/* Components: boxes, collapsed links, flow control, shutdown, chassis,
 * fan-out, fibers, and that every message is freed exactly once. */
#include "harness.h"
#include "support/run.h"
#include "support/walk.h"

#include <braid/component.h>

/* ---- counted messages --------------------------------------------------------------- */
typedef struct tmsg {
    int seq;
    unsigned magic;
} tmsg;
#define TMSG_LIVE 0x4d534721u
static long g_made, g_freed;

static void tmsg_free(void *p) {
    tmsg *m = p;
    if (m->magic != TMSG_LIVE) bt_fail(__FILE__, __LINE__, "message freed twice");
    m->magic = 0;
    g_freed++;
    free(m);
}
static tmsg *tmsg_new(int seq) {
    tmsg *m = malloc(sizeof *m);
    m->seq = seq;
    m->magic = TMSG_LIVE;
    g_made++;
    return m;
}
static void counts_reset(void) { g_made = g_freed = 0; }
#define BT_ALL_FREED() BT_EQ(g_freed, g_made)

static braid_loop *fake_loop(braid_fake_clock **fc) {
    braid_fake_clock_new(0, fc);
    return bt_loop_new(braid_fake_clock_base(*fc));
}
static void fake_done(braid_loop *loop, braid_fake_clock *fc) {
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* ---- components used by the tests ---------------------------------------------------- */
/* A source: sends n numbered messages, then producer_finished on signal. */
typedef struct source {
    int n, next;
    bool finished;
} source;
static int source_run(braid_component *c, void *st) {
    source *s = st;
    while (s->next < s->n) {
        tmsg *m = tmsg_new(s->next);
        int rc = braid_component_send(c, BRAID_COMPONENT_OUTBOX, m, tmsg_free);
        if (rc == BRAID_EBOX_FULL) {
            tmsg_free(m);
            g_made--, g_freed--;
            braid_component_wake_on_pop(c, BRAID_COMPONENT_OUTBOX);
            return BRAID_COMPONENT_IDLE;
        }
        if (rc < 0) {
            tmsg_free(m);
            return rc;
        }
        s->next++;
    }
    if (!s->finished) {
        if (braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_PRODUCER_FINISHED, NULL) < 0) {
            braid_component_wake_on_pop(c, BRAID_COMPONENT_SIGNAL);
            return BRAID_COMPONENT_IDLE;
        }
        s->finished = true;
    }
    return BRAID_COMPONENT_DONE;
}

/* A relay: forwards inbox to outbox (adds `add` to seq), then the shutdown idiom. */
typedef struct relay {
    int add;
    int seen;
} relay;
static int relay_run(braid_component *c, void *st) {
    relay *r = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        ((tmsg *)m.ptr)->seq += r->add;
        r->seen++;
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, m.free) < 0) braid_component_msg_free(m);
    }
    return braid_component_handle_control(c);
}

/* A sink: records the sequence numbers it gets, and the order of ends. */
typedef struct sink {
    int got[4096];
    int n;
    int runs;
    bool keep_going;   /* ignore control */
} sink;
static int sink_run(braid_component *c, void *st) {
    sink *s = st;
    s->runs++;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (s->n < 4096) s->got[s->n++] = ((tmsg *)m.ptr)->seq;
        braid_component_msg_free(m);
    }
    if (s->keep_going) return BRAID_COMPONENT_IDLE;
    return braid_component_handle_control(c);
}

static braid_component *mk(braid_loop *loop, braid_component_run_fn fn, void *st, const char *name) {
    braid_component_options o = { .name = name };
    braid_component *c = NULL;
    BT_OK(braid_component_new(loop, fn, st, &o, &c));
    return c;
}

/* ---- basics ------------------------------------------------------------------------------ */
BT_TEST(send_recv_through_a_link_in_order) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    source src = { .n = 100 };
    sink snk = { 0 };
    braid_component *a = mk(loop, source_run, &src, "src"), *b = mk(loop, sink_run, &snk, "sink");
    BT_OK(braid_component_link(a, "outbox", b, "inbox", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_link(a, "signal", b, "control", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_activate(a));
    BT_OK(braid_component_activate(b));
    BT_OK(braid_loop_run(loop));   /* returns: the graph went idle */
    BT_EQ(snk.n, 100);
    for (int i = 0; i < 100; i++) BT_EQ(snk.got[i], i);
    BT_TRUE(braid_component_is_done(a));
    BT_TRUE(braid_component_is_done(b));
    /* batched: the sink ran once for the whole burst (plus its activation) */
    BT_LE(snk.runs, 2);
    struct braid_component_stats st;
    braid_component_stats(a, &st);
    BT_UEQ(st.sent, 101);
    braid_component_free(a);
    braid_component_free(b);
    BT_ALL_FREED();
    BT_EQ(braid_component_count(loop), 0);
    fake_done(loop, fc);
}

BT_TEST(idle_graph_runs_nothing) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    sink s1 = { .keep_going = true }, s2 = { .keep_going = true };
    braid_component *a = mk(loop, sink_run, &s1, "a"), *b = mk(loop, sink_run, &s2, "b");
    BT_OK(braid_component_activate(a));
    BT_OK(braid_component_activate(b));
    bt_drain(loop);
    BT_EQ(s1.runs, 1);   /* the activation run only */
    BT_EQ(s2.runs, 1);
    /* nothing pending: an iteration has nothing alive */
    BT_EQ(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT), 0);
    for (int i = 0; i < 10; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(s1.runs, 1);
    /* one delivery wakes only its component */
    counts_reset();
    BT_OK(braid_component_deliver(b, BRAID_COMPONENT_INBOX, tmsg_new(7), tmsg_free));
    bt_drain(loop);
    BT_EQ(s1.runs, 1);
    BT_EQ(s2.runs, 2);
    BT_EQ(s2.got[0], 7);
    braid_component_free(a);
    braid_component_free(b);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

BT_TEST(box_names_indices_and_errors) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    braid_component_box_spec ins[] = { { "ticks", "a clock", 4 } }, outs[] = { { "log", "lines", 0 } };
    braid_component_options o = { .name = "x", .inboxes = ins, .n_inboxes = 1, .outboxes = outs, .n_outboxes = 1 };
    sink s = { 0 };
    braid_component *a, *b;
    BT_OK(braid_component_new(loop, sink_run, &s, &o, &a));
    BT_OK(braid_component_new(loop, sink_run, &s, NULL, &b));
    BT_EQ(braid_component_inbox(a, "inbox"), BRAID_COMPONENT_INBOX);
    BT_EQ(braid_component_inbox(a, "control"), BRAID_COMPONENT_CONTROL);
    BT_EQ(braid_component_inbox(a, "ticks"), 2);
    BT_EQ(braid_component_outbox(a, "log"), 2);
    BT_ERR(braid_component_inbox(a, "nope"), BRAID_ENO_BOX);
    BT_STREQ(braid_component_name(a), "x");
    BT_ERR(braid_component_send(a, 9, NULL, NULL), BRAID_ENO_BOX);
    BT_ERR(braid_component_link(a, "nope", b, "inbox", 0), BRAID_ENO_BOX);
    BT_ERR(braid_component_link(a, "log", b, "outbox", 0), BRAID_ENO_BOX);   /* normal: dst must be an inbox */
    BT_OK(braid_component_link(a, "outbox", b, "inbox", 0));
    BT_ERR(braid_component_link(a, "outbox", b, "control", 0), BRAID_EBOX_LINKED);   /* one destination */
    BT_OK(braid_component_link(b, "outbox", a, "inbox", 0));                         /* many sources: fine */
    /* passthrough cycles are refused */
    BT_OK(braid_component_link(a, "log", b, "signal", BRAID_COMPONENT_LINK_PASSTHROUGH_OUT));
    BT_ERR(braid_component_link(b, "signal", a, "log", BRAID_COMPONENT_LINK_PASSTHROUGH_OUT), BRAID_ELINK_CYCLE);
    BT_ERR(braid_component_unlink(b, "log", 0), BRAID_ENO_BOX);
    BT_ERR(braid_component_unlink(b, "signal", 0), BRAID_ENOT_LINKED);
    BT_OK(braid_component_unlink(a, "outbox", 0));
    /* a duplicate box name is refused */
    braid_component_box_spec dup[] = { { "control", NULL, 0 } };
    braid_component_options od = { .inboxes = dup, .n_inboxes = 1 };
    braid_component *bad = NULL;
    BT_ERR(braid_component_new(loop, sink_run, &s, &od, &bad), BRAID_EINVAL);
    BT_STREQ(braid_strerror(BRAID_EBOX_FULL), "destination inbox is full");
    BT_OK(braid_component_activate(a));
    BT_ERR(braid_component_activate(a), BRAID_ECOMPONENT_STATE);
    braid_component_free(a);
    braid_component_free(b);
    fake_done(loop, fc);
}

/* ---- collapsed links ----------------------------------------------------------------------- */
/* A source, then pipeline(pipeline(pipeline(sink))): the composites' boxes
 * are links only; each message is appended once, to the sink's inbox. */
BT_TEST(links_collapse_through_nested_composites) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    source src = { .n = 50 };
    sink snk = { 0 };
    braid_component *a = mk(loop, source_run, &src, "src"), *s = mk(loop, sink_run, &snk, "sink");
    braid_component *p1, *p2, *p3;
    BT_OK(braid_component_pipeline_new(loop, &s, 1, NULL, &p1));
    BT_OK(braid_component_pipeline_new(loop, &p1, 1, NULL, &p2));
    BT_OK(braid_component_pipeline_new(loop, &p2, 1, NULL, &p3));
    braid_component *top_kids[] = { a, p3 };
    braid_component *top;
    BT_OK(braid_component_pipeline_new(loop, top_kids, 2, NULL, &top));
    BT_OK(braid_component_activate(top));
    BT_OK(braid_loop_run(loop));
    BT_EQ(snk.n, 50);
    struct braid_component_stats st;
    braid_component_stats(s, &st);
    BT_UEQ(st.received, 51);   /* 50 data + producer_finished, each one append */
    braid_component *comps[] = { p1, p2, p3, top };
    for (int i = 0; i < 4; i++) {
        braid_component_stats(comps[i], &st);
        BT_UEQ(st.received, 0);   /* nothing ever stopped at a composite */
    }
    braid_component_stats(a, &st);
    BT_UEQ(st.sent, 51);
    BT_UEQ(st.dropped, 0);
    /* all ended, composites after their children */
    BT_TRUE(braid_component_is_done(top));
    braid_component_free(top);
    BT_ALL_FREED();
    BT_EQ(braid_component_count(loop), 0);
    fake_done(loop, fc);
}

/* Linking after messages are queued, unlinking and relinking: queued
 * messages stay where they are; new sends follow the new link. */
BT_TEST(unlink_relink_while_messages_are_queued) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    sink s1 = { .keep_going = true }, s2 = { .keep_going = true };
    relay r = { 0 };
    braid_component *x = mk(loop, relay_run, &r, "x");
    braid_component *a = mk(loop, sink_run, &s1, "a"), *b = mk(loop, sink_run, &s2, "b");
    BT_OK(braid_component_link(x, "outbox", a, "inbox", 0));
    /* not activated: messages queue in a */
    for (int i = 0; i < 3; i++) BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(i), tmsg_free));
    BT_EQ(braid_component_pending(a, BRAID_COMPONENT_INBOX), 3);
    BT_OK(braid_component_unlink(x, "outbox", 0));
    /* unlinked: the null sink frees it at once */
    BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(100), tmsg_free));
    BT_EQ(g_freed, 1);
    BT_OK(braid_component_link(x, "outbox", b, "inbox", 0));
    for (int i = 3; i < 5; i++) BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(i), tmsg_free));
    BT_EQ(braid_component_pending(a, BRAID_COMPONENT_INBOX), 3);
    BT_EQ(braid_component_pending(b, BRAID_COMPONENT_INBOX), 2);
    BT_OK(braid_component_activate(a));
    BT_OK(braid_component_activate(b));
    bt_drain(loop);
    BT_EQ(s1.n, 3);
    BT_EQ(s2.n, 2);
    BT_EQ(s1.got[2], 2);
    BT_EQ(s2.got[0], 3);
    struct braid_component_stats st;
    braid_component_stats(x, &st);
    BT_UEQ(st.dropped, 1);
    BT_UEQ(st.sent, 5);
    braid_component_free(x);
    braid_component_free(a);
    braid_component_free(b);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* Relinking a composite's passthrough retargets the sources upstream of it. */
BT_TEST(relinking_a_composite_retargets_its_upstream) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    relay r = { 0 };
    sink s1 = { .keep_going = true }, s2 = { .keep_going = true };
    braid_component *x = mk(loop, relay_run, &r, "x");
    braid_component *k1 = mk(loop, sink_run, &s1, "k1"), *k2 = mk(loop, sink_run, &s2, "k2");
    braid_component *g;
    braid_component_graphline_child kids[] = { { "one", k1 } };
    braid_component_linkage ls[] = { { "self", "inbox", "one", "inbox" } };
    BT_OK(braid_component_graphline_new(loop, kids, 1, ls, 1, NULL, &g));
    BT_PTR_EQ(braid_component_child(g, "one"), k1);
    BT_OK(braid_component_link(x, "outbox", g, "inbox", 0));
    BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(1), tmsg_free));
    BT_EQ(braid_component_pending(k1, BRAID_COMPONENT_INBOX), 1);
    /* the graphline's inbox now leads to k2 instead: x follows at once */
    BT_OK(braid_component_unlink(g, "inbox", BRAID_COMPONENT_LINK_PASSTHROUGH_IN));
    BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(2), tmsg_free));
    BT_EQ(braid_component_pending(g, BRAID_COMPONENT_INBOX), 1);   /* unlinked: g's own box holds it */
    BT_OK(braid_component_link(g, "inbox", k2, "inbox", BRAID_COMPONENT_LINK_PASSTHROUGH_IN));
    BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(3), tmsg_free));
    BT_EQ(braid_component_pending(k2, BRAID_COMPONENT_INBOX), 1);
    BT_EQ(braid_component_pending(k1, BRAID_COMPONENT_INBOX), 1);
    braid_component_free(x);
    braid_component_free(g);   /* frees k1 and the messages queued in g and k1 */
    braid_component_free(k2);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* ---- flow control ----------------------------------------------------------------------------- */
/* A consumer that takes one message per run and lets the rest wait. */
typedef struct slow {
    int got[64];
    int n, runs;
} slow;
static int slow_run(braid_component *c, void *st) {
    slow *s = st;
    s->runs++;
    braid_component_msg m;
    if (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        s->got[s->n++] = ((tmsg *)m.ptr)->seq;
        braid_component_msg_free(m);
        if (braid_component_pending(c, BRAID_COMPONENT_INBOX)) return BRAID_COMPONENT_AGAIN;
    }
    return braid_component_handle_control(c);
}

BT_TEST(box_full_and_wake_on_pop) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    source src = { .n = 20 };
    slow snk = { 0 };
    braid_component_options so = { .name = "slow", .capacity = 2 };
    braid_component *a = mk(loop, source_run, &src, "src"), *b;
    BT_OK(braid_component_new(loop, slow_run, &snk, &so, &b));
    BT_OK(braid_component_link(a, "outbox", b, "inbox", 0));
    BT_OK(braid_component_link(a, "signal", b, "control", 0));
    /* full is visible to the sender, which keeps its message */
    BT_OK(braid_component_send(a, BRAID_COMPONENT_OUTBOX, tmsg_new(-1), tmsg_free));
    BT_OK(braid_component_send(a, BRAID_COMPONENT_OUTBOX, tmsg_new(-2), tmsg_free));
    tmsg *m3 = tmsg_new(-3);
    BT_ERR(braid_component_send(a, BRAID_COMPONENT_OUTBOX, m3, tmsg_free), BRAID_EBOX_FULL);
    tmsg_free(m3);
    struct braid_component_stats st;
    braid_component_stats(a, &st);
    BT_UEQ(st.full, 1);
    BT_OK(braid_component_activate(a));
    BT_OK(braid_component_activate(b));
    /* the source stalls on the full box and is woken each time the sink pops */
    BT_OK(braid_loop_run(loop));
    BT_EQ(snk.n, 22);
    BT_EQ(snk.got[0], -1);
    for (int i = 0; i < 20; i++) BT_EQ(snk.got[2 + i], i);
    BT_TRUE(braid_component_is_done(a));
    BT_TRUE(braid_component_is_done(b));
    braid_component_free(a);
    braid_component_free(b);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* A fiber producer with send_wait against a bounded consumer, and a fiber
 * consumer with recv_wait: straight-line code, paced by wake-on-pop. */
static int fiber_producer(braid_component *c, void *st) {
    int *n = st;
    for (int i = 0; i < *n; i++) {
        tmsg *m = tmsg_new(i);
        int rc = braid_component_send_wait(c, BRAID_COMPONENT_OUTBOX, m, tmsg_free, BRAID_FOREVER);
        if (rc < 0) {
            tmsg_free(m);
            return rc;
        }
    }
    return braid_component_send_wait(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_SHUTDOWN, NULL, BRAID_FOREVER);
}
typedef struct fcons {
    int got[256];
    int n;
    int end_rc;
} fcons;
static int fiber_consumer(braid_component *c, void *st) {
    fcons *f = st;
    for (;;) {
        braid_component_msg m;
        while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
            f->got[f->n++] = ((tmsg *)m.ptr)->seq;
            braid_component_msg_free(m);
        }
        if (braid_component_recv(c, BRAID_COMPONENT_CONTROL, &m) == 0) {
            if (braid_component_is_shutdown_msg(m.ptr)) return 0;
            braid_component_msg_free(m);
        }
        int rc = braid_component_wait(c, BRAID_FOREVER);
        if (rc < 0) {
            f->end_rc = rc;
            return rc;
        }
    }
}

BT_TEST(fiber_components_send_wait_and_recv) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    int n = 100;
    fcons f = { 0 };
    braid_component_options po = { .name = "producer" }, co = { .name = "consumer", .capacity = 3 };
    braid_component *p, *c;
    BT_OK(braid_component_new_fiber(loop, fiber_producer, &n, &po, &p));
    BT_OK(braid_component_new_fiber(loop, fiber_consumer, &f, &co, &c));
    BT_OK(braid_component_link(p, "outbox", c, "inbox", 0));
    BT_OK(braid_component_link(p, "signal", c, "control", 0));
    BT_OK(braid_component_activate(p));
    BT_OK(braid_component_activate(c));
    BT_OK(braid_loop_run(loop));
    BT_EQ(f.n, 100);
    for (int i = 0; i < 100; i++) BT_EQ(f.got[i], i);
    BT_TRUE(braid_component_is_done(p));
    BT_TRUE(braid_component_is_done(c));
    BT_EQ(braid_component_result(c), 0);
    braid_component_free(p);
    braid_component_free(c);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

static int fiber_recv_timeout(braid_component *c, void *st) {
    int *rc_out = st;
    braid_component_msg m;
    *rc_out = braid_component_recv_wait(c, BRAID_COMPONENT_INBOX, &m, BRAID_MSEC(50));
    if (*rc_out == 0) braid_component_msg_free(m);
    int rc = braid_component_recv_wait(c, BRAID_COMPONENT_INBOX, &m, BRAID_FOREVER);   /* until freed */
    if (rc == 0) braid_component_msg_free(m);
    rc_out[1] = rc;
    return rc;
}

BT_TEST(fiber_recv_times_out_and_free_cancels_it) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    int rcs[2] = { 1, 1 };
    braid_component *c;
    BT_OK(braid_component_new_fiber(loop, fiber_recv_timeout, rcs, NULL, &c));
    BT_OK(braid_component_activate(c));
    bt_drain(loop);
    BT_EQ(rcs[0], 1);   /* still waiting */
    braid_fake_clock_advance(fc, BRAID_MSEC(49));
    bt_drain(loop);
    BT_EQ(rcs[0], 1);
    braid_fake_clock_advance(fc, BRAID_MSEC(1));
    bt_drain(loop);
    BT_ERR(rcs[0], BRAID_ETIMEDOUT);
    BT_EQ(rcs[1], 1);   /* parked forever now */
    braid_deferred *d = braid_component_when_done(c);
    BT_TRUE(d != NULL);
    braid_component_free(c);   /* cancels the wait; the memory goes when the fiber returns */
    BT_TRUE(braid_deferred_is_failure(d));
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    BT_ERR(r.failure->code, BRAID_ECANCELED);
    braid_result_drop(r);
    braid_deferred_unref(d);
    bt_drain(loop);
    BT_ERR(rcs[1], BRAID_ECANCELED);
    BT_EQ(braid_component_count(loop), 0);
    fake_done(loop, fc);
}

/* A fiber component freed before it ever ran never runs. */
BT_TEST(fiber_freed_before_start_never_runs) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    int rcs[2] = { 1, 1 };
    braid_component *c;
    BT_OK(braid_component_new_fiber(loop, fiber_recv_timeout, rcs, NULL, &c));
    BT_OK(braid_component_activate(c));
    braid_component_free(c);
    bt_drain(loop);
    BT_EQ(rcs[0], 1);
    BT_EQ(braid_component_count(loop), 0);
    fake_done(loop, fc);
}

/* ---- shutdown ------------------------------------------------------------------------------------ */
typedef struct order_log {
    const char *names[16];
    int n;
} order_log;
typedef struct tag {
    order_log *log;
    const char *name;
} tag;
static braid_result record_end(braid_result r, void *arg) {
    tag *t = arg;
    t->log->names[t->log->n++] = t->name;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static void watch_end(braid_component *c, tag *t) {
    braid_deferred *d = braid_component_when_done(c);
    BT_TRUE(d != NULL);
    BT_OK(braid_deferred_add_both(d, record_end, t));
    braid_deferred_unref(d);
}

BT_TEST(pipeline_drains_and_stops_in_order) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    source src = { .n = 300 };
    relay r1 = { .add = 1000 }, r2 = { .add = 1000 };
    sink snk = { 0 };
    braid_component *k[4] = { mk(loop, source_run, &src, "src"), mk(loop, relay_run, &r1, "r1"),
                              mk(loop, relay_run, &r2, "r2"), mk(loop, sink_run, &snk, "sink") };
    braid_component *p;
    BT_OK(braid_component_pipeline_new(loop, k, 4, NULL, &p));
    order_log log = { 0 };
    tag tags[5] = { { &log, "src" }, { &log, "r1" }, { &log, "r2" }, { &log, "sink" }, { &log, "pipeline" } };
    for (int i = 0; i < 4; i++) watch_end(k[i], &tags[i]);
    watch_end(p, &tags[4]);
    BT_OK(braid_component_activate(p));
    BT_OK(braid_loop_run(loop));
    BT_EQ(snk.n, 300);
    for (int i = 0; i < 300; i++) BT_EQ(snk.got[i], i + 2000);
    BT_EQ(log.n, 5);
    for (int i = 0; i < 5; i++) BT_STREQ(log.names[i], tags[i].name);
    braid_component_free(p);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* A graphline: ("self", control) fans in to a splitter-free chain; shutdown
 * delivered from outside stops the children in link order, then the
 * graphline; data queued before it is handled first. */
BT_TEST(graphline_shutdown_in_order) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    relay ra = { .add = 1 }, rb = { .add = 10 };
    sink snk = { 0 };
    braid_component *a = mk(loop, relay_run, &ra, "a"), *b = mk(loop, relay_run, &rb, "b"),
                    *s = mk(loop, sink_run, &snk, "s");
    braid_component_graphline_child kids[] = { { "A", a }, { "B", b }, { "S", s } };
    braid_component_linkage ls[] = {
        { "self", "inbox", "A", "inbox" },   { "self", "control", "A", "control" },
        { "A", "outbox", "B", "inbox" },     { "A", "signal", "B", "control" },
        { "B", "outbox", "S", "inbox" },     { "B", "signal", "S", "control" },
        { "S", "signal", "self", "signal" },
    };
    braid_component *g;
    /* a bad linkage table is refused and leaves the children free */
    braid_component_linkage bad[] = { { "A", "outbox", "nobody", "inbox" } };
    BT_ERR(braid_component_graphline_new(loop, kids, 3, bad, 1, NULL, &g), BRAID_EINVAL);
    braid_component_linkage bad2[] = { { "A", "outbox", "B", "inbox" }, { "A", "outbox", "S", "inbox" } };
    BT_ERR(braid_component_graphline_new(loop, kids, 3, bad2, 2, NULL, &g), BRAID_EBOX_LINKED);
    BT_OK(braid_component_graphline_new(loop, kids, 3, ls, 7, NULL, &g));
    order_log log = { 0 };
    tag tags[4] = { { &log, "A" }, { &log, "B" }, { &log, "S" }, { &log, "graphline" } };
    watch_end(a, &tags[0]);
    watch_end(b, &tags[1]);
    watch_end(s, &tags[2]);
    watch_end(g, &tags[3]);
    BT_OK(braid_component_activate(g));
    for (int i = 0; i < 5; i++) BT_OK(braid_component_deliver(g, BRAID_COMPONENT_INBOX, tmsg_new(i), tmsg_free));
    BT_OK(braid_component_deliver(g, BRAID_COMPONENT_CONTROL, BRAID_COMPONENT_SHUTDOWN, NULL));
    BT_OK(braid_loop_run(loop));
    BT_EQ(snk.n, 5);
    BT_EQ(snk.got[4], 15);
    BT_EQ(log.n, 4);
    for (int i = 0; i < 4; i++) BT_STREQ(log.names[i], tags[i].name);
    /* the signal came out of the graphline's own signal box (unlinked: dropped) */
    struct braid_component_stats st;
    braid_component_stats(s, &st);
    BT_UEQ(st.dropped, 1);
    braid_component_free(g);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* ---- ownership ---------------------------------------------------------------------------------- */
BT_TEST(messages_queued_at_free_are_freed_once) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    sink s1 = { 0 };
    relay r = { 0 };
    braid_component *x = mk(loop, relay_run, &r, "x"), *a = mk(loop, sink_run, &s1, "a");
    BT_OK(braid_component_link(x, "outbox", a, "inbox", 0));
    for (int i = 0; i < 40; i++) BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(i), tmsg_free));
    BT_OK(braid_component_deliver(a, BRAID_COMPONENT_CONTROL, tmsg_new(-1), tmsg_free));
    BT_EQ(g_freed, 0);
    braid_component_free(a);   /* 41 queued: freed now, once */
    BT_EQ(g_freed, 41);
    /* x's outbox leads nowhere now: further sends are dropped and freed */
    BT_OK(braid_component_send(x, BRAID_COMPONENT_OUTBOX, tmsg_new(99), tmsg_free));
    BT_EQ(g_freed, 42);
    braid_component_free(x);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

BT_TEST(leak_gate_refuses_a_live_component) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    sink s = { 0 };
    braid_component *a = mk(loop, sink_run, &s, "leaky");
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    braid_component_free(a);
    fake_done(loop, fc);
}

/* ---- fan-out ------------------------------------------------------------------------------------- */
typedef struct payload {
    int v;
} payload;
static long g_payload_freed;
static void payload_dtor(void *p) {
    (void)p;
    g_payload_freed++;
}

BT_TEST(splitter_shares_messages_zero_copy) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    g_payload_freed = 0;
    sink s1 = { .keep_going = true }, s2 = { .keep_going = true }, s3 = { .keep_going = true };
    braid_component *a = mk(loop, sink_run, &s1, "a"), *b = mk(loop, sink_run, &s2, "b"),
                    *c = mk(loop, sink_run, &s3, "c");
    (void)a;
    braid_component *sp;
    BT_OK(braid_component_splitter_new(loop, NULL, &sp));
    BT_OK(braid_component_splitter_add(sp, a, "inbox", 0));
    BT_OK(braid_component_splitter_add(sp, b, "inbox", 0));
    BT_OK(braid_component_link(sp, "outbox", c, "inbox", 0));
    BT_OK(braid_component_activate(sp));
    braid_component *ks[] = { a, b, c };
    for (int i = 0; i < 3; i++) BT_OK(braid_component_activate(ks[i]));
    payload *p = braid_component_shared_new(sizeof *p, payload_dtor);
    BT_TRUE(p != NULL);
    BT_OK(braid_component_deliver(sp, BRAID_COMPONENT_INBOX, p, braid_component_shared_unref));
    /* a message that can be neither shared nor copied is refused, and freed */
    counts_reset();
    BT_OK(braid_component_deliver(sp, BRAID_COMPONENT_INBOX, tmsg_new(1), tmsg_free));
    bt_drain(loop);
    BT_EQ(g_freed, 1);
    BT_EQ(s1.n, 1);
    BT_EQ(s2.n, 1);
    BT_EQ(s3.n, 1);
    BT_EQ(g_payload_freed, 1);   /* the last of the three references freed it */
    BT_OK(braid_component_splitter_remove(sp, a, "inbox"));
    BT_ERR(braid_component_splitter_remove(sp, a, "inbox"), BRAID_ENOT_LINKED);
    p = braid_component_shared_new(sizeof *p, payload_dtor);
    BT_OK(braid_component_deliver(sp, BRAID_COMPONENT_INBOX, p, braid_component_shared_unref));
    bt_drain(loop);
    BT_EQ(s1.n, 1);
    BT_EQ(s2.n, 2);
    BT_EQ(g_payload_freed, 2);
    braid_component_free(sp);
    for (int i = 0; i < 3; i++) braid_component_free(ks[i]);
    fake_done(loop, fc);
}

/* A subscriber's sink: counts shared payloads. */
typedef struct psink {
    int n;
    int vals[512];
} psink;
static int psink_run(braid_component *c, void *st) {
    psink *s = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (s->n < 512) s->vals[s->n++] = ((payload *)m.ptr)->v;
        braid_component_msg_free(m);
    }
    return BRAID_COMPONENT_IDLE;
}
static void publish(braid_component *pub, int v) {
    payload *p = braid_component_shared_new(sizeof *p, payload_dtor);
    p->v = v;
    BT_OK(braid_component_deliver(pub, BRAID_COMPONENT_INBOX, p, braid_component_shared_unref));
}

BT_TEST(backplane_join_and_leave_during_traffic) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    g_payload_freed = 0;
    braid_component *pub = NULL;
    BT_ERR(braid_backplane_publisher_new(loop, "news", &pub), BRAID_ENO_BACKPLANE);
    braid_backplane *bp, *bp2;
    BT_OK(braid_backplane_new(loop, "news", NULL, &bp));
    BT_ERR(braid_backplane_new(loop, "news", NULL, &bp2), BRAID_EEXIST);
    braid_component *pub1, *pub2, *sub1, *sub2;
    BT_OK(braid_backplane_publisher_new(loop, "news", &pub1));
    BT_OK(braid_backplane_publisher_new(loop, "news", &pub2));
    BT_OK(braid_backplane_subscriber_new(loop, "news", &sub1));
    psink ps1 = { 0 }, ps2 = { 0 };
    braid_component *c1 = mk(loop, psink_run, &ps1, "c1"), *c2 = mk(loop, psink_run, &ps2, "c2");
    BT_OK(braid_component_link(sub1, "outbox", c1, "inbox", 0));
    braid_component *all[] = { pub1, pub2, sub1, c1, c2 };
    for (int i = 0; i < 5; i++) BT_OK(braid_component_activate(all[i]));
    for (int i = 0; i < 10; i++) publish(i % 2 ? pub2 : pub1, i);
    bt_drain(loop);
    BT_EQ(ps1.n, 10);
    /* a second subscriber joins while messages are in flight */
    for (int i = 10; i < 15; i++) publish(pub1, i);
    BT_OK(braid_backplane_subscriber_new(loop, "news", &sub2));
    BT_OK(braid_component_link(sub2, "outbox", c2, "inbox", 0));
    BT_OK(braid_component_activate(sub2));
    for (int i = 15; i < 20; i++) publish(pub2, i);
    bt_drain(loop);
    BT_EQ(ps1.n, 20);
    BT_EQ(ps2.n, 10);   /* everything published after it joined (and the queued ones) */
    BT_EQ(ps2.vals[9], 19);
    /* the first leaves mid-traffic; the second still gets everything */
    for (int i = 20; i < 25; i++) publish(pub1, i);
    braid_component_free(sub1);
    for (int i = 25; i < 30; i++) publish(pub1, i);
    bt_drain(loop);
    BT_EQ(ps1.n, 20);
    BT_EQ(ps2.n, 20);
    /* a publisher shutting down does not stop the bus */
    BT_OK(braid_component_deliver(pub2, BRAID_COMPONENT_CONTROL, BRAID_COMPONENT_SHUTDOWN, NULL));
    bt_drain(loop);
    BT_TRUE(braid_component_is_done(pub2));
    publish(pub1, 30);
    bt_drain(loop);
    BT_EQ(ps2.n, 21);
    BT_EQ(g_payload_freed, 31);   /* every payload freed once, whoever saw it */
    braid_backplane_free(bp);
    /* publishers of a freed bus drop what they get */
    publish(pub1, 31);
    bt_drain(loop);
    BT_EQ(g_payload_freed, 32);
    braid_component_free(sub2);
    braid_component *rest[] = { pub1, pub2, c1, c2 };
    for (int i = 0; i < 4; i++) braid_component_free(rest[i]);
    fake_done(loop, fc);
}

/* ---- allocation failures -------------------------------------------------------------------------- */
/* Build a pipeline of a source, a relay and a sink, plus a splitter and a
 * backplane, run it, free it; under each injected failure it must fail
 * cleanly (BRAID_ENOMEM) or finish, and leak nothing (the walk checks the
 * allocator, bt_loop_destroy the loop's leak gate). */
static int alloc_scenario(void *arg) {
    braid_fake_clock *fc = arg;
    braid_loop *loop = NULL;
    braid_loop_options o = { .clock = braid_fake_clock_base(fc) };
    int rc = braid_loop_new(&o, &loop);
    if (rc < 0) return rc;
    source src = { .n = 40 };
    relay r = { 0 };
    sink snk = { 0 };
    braid_component *k[3] = { NULL, NULL, NULL }, *p = NULL, *sp = NULL, *sub = NULL;
    braid_backplane *bp = NULL;
    if ((rc = braid_component_new(loop, source_run, &src, NULL, &k[0])) < 0) goto out;
    if ((rc = braid_component_new(loop, relay_run, &r, NULL, &k[1])) < 0) goto out;
    if ((rc = braid_component_new(loop, sink_run, &snk, NULL, &k[2])) < 0) goto out;
    if ((rc = braid_component_pipeline_new(loop, k, 3, NULL, &p)) < 0) goto out;
    k[0] = k[1] = k[2] = NULL;
    if ((rc = braid_component_splitter_new(loop, NULL, &sp)) < 0) goto out;
    if ((rc = braid_component_splitter_add(sp, p, "inbox", 0)) < 0) goto out;
    if ((rc = braid_backplane_new(loop, "bus", NULL, &bp)) < 0) goto out;
    if ((rc = braid_backplane_subscriber_new(loop, "bus", &sub)) < 0) goto out;
    if ((rc = braid_component_activate(p)) < 0) goto out;
    if ((rc = braid_loop_run(loop)) < 0) goto out;
    /* a ring that cannot grow refuses the send (BRAID_ENOMEM): the source ends */
    if (snk.n != 40) rc = BRAID_ENOMEM;
out:
    braid_component_free(sub);
    braid_backplane_free(bp);
    braid_component_free(sp);
    braid_component_free(p);
    for (int i = 0; i < 3; i++) braid_component_free(k[i]);
    bt_loop_destroy(loop);
    return rc;
}

static void alloc_teardown(void *arg, int rc, bool injected) {
    (void)arg;
    (void)rc;
    (void)injected;
    BT_ALL_FREED();   /* every message freed exactly once, whatever failed */
}

BT_TEST(allocation_failure_walk) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    counts_reset();
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "component", .arg = fc, .body = alloc_scenario,
                                                 .teardown = alloc_teardown, .enomem_only = true });
    BT_GT(r.errors, 5);
    braid_fake_clock_free(fc);
}

/* ---- introspection ---------------------------------------------------------------------------------- */
BT_TEST(introspection_lists_components_boxes_and_links) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    relay r = { 0 };
    sink s = { .keep_going = true };
    braid_component *x = mk(loop, relay_run, &r, "re\"lay"), *k = mk(loop, sink_run, &s, "sink");
    braid_component *p;
    BT_OK(braid_component_pipeline_new(loop, &k, 1, NULL, &p));
    BT_OK(braid_component_link(x, "outbox", p, "inbox", 0));
    BT_OK(braid_component_deliver(k, BRAID_COMPONENT_INBOX, tmsg_new(1), tmsg_free));
    char *json = NULL;
    size_t len = 0;
    BT_OK(braid_component_introspect(loop, &json, &len));
    BT_EQ(len, strlen(json));
    BT_TRUE(strstr(json, "\"name\":\"re\\\"lay\"") != NULL);   /* escaped */
    BT_TRUE(strstr(json, "\"kind\":\"pipeline\"") != NULL);
    BT_TRUE(strstr(json, "\"depth\":1,\"capacity\":1024") != NULL);
    /* the relay's outbox is linked to the pipeline's inbox and delivers to the sink's */
    char want[160];
    snprintf(want, sizeof want, "\"linked_to\":{\"component\":\"c%p\",\"box\":\"inbox\",\"inbox\":true},"
                                "\"delivers_to\":{\"component\":\"c%p\",\"box\":\"inbox\",\"inbox\":true}",
             (void *)p, (void *)k);
    BT_TRUE(strstr(json, want) != NULL);
    braid_free(json);
    braid_component_free(x);
    braid_component_free(p);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* ---- Deferred adapters ---------------------------------------------------------------------------- */
BT_TEST(component_fed_from_a_deferred) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    braid_deferred *d = braid_deferred_new(loop);
    braid_component *c, *k;
    sink s = { 0 };
    BT_OK(braid_component_new_from_deferred(loop, d, NULL, &c));
    k = mk(loop, sink_run, &s, "sink");
    BT_OK(braid_component_link(c, "outbox", k, "inbox", 0));
    BT_OK(braid_component_link(c, "signal", k, "control", 0));
    BT_OK(braid_component_activate(c));
    BT_OK(braid_component_activate(k));
    bt_drain(loop);
    BT_EQ(s.n, 0);
    BT_OK(braid_deferred_callback(d, tmsg_new(42), tmsg_free));
    bt_drain(loop);
    BT_EQ(s.n, 1);
    BT_EQ(s.got[0], 42);
    BT_TRUE(braid_component_is_done(c));
    BT_TRUE(braid_component_is_done(k));   /* producer_finished followed */
    braid_component_free(c);
    braid_component_free(k);
    /* a failure ends it with the code; freeing one whose Deferred never
     * fired cancels the Deferred */
    braid_deferred *d2 = braid_deferred_new(loop), *d3 = braid_deferred_new(loop);
    braid_component *c2, *c3;
    BT_OK(braid_component_new_from_deferred(loop, braid_deferred_ref(d2), NULL, &c2));
    BT_OK(braid_component_new_from_deferred(loop, braid_deferred_ref(d3), NULL, &c3));
    BT_OK(braid_component_activate(c2));
    BT_OK(braid_deferred_errback(d2, braid_failure_new(BRAID_EPIPE, "gone")));
    bt_drain(loop);
    BT_TRUE(braid_component_is_done(c2));
    BT_ERR(braid_component_result(c2), BRAID_EPIPE);
    braid_component_free(c2);
    braid_component_free(c3);
    BT_TRUE(braid_deferred_is_called(d3));   /* cancelled */
    braid_deferred_callback(d3, NULL, NULL);   /* the producer's late fire, ignored, drops its reference */
    braid_deferred_unref(d2);
    braid_deferred_unref(d3);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

static braid_result got_value(braid_result r, void *arg) {
    *(int *)arg = ((tmsg *)r.value)->seq;
    return r;   /* the Deferred frees the value with its dtor */
}
static braid_result got_failure(braid_result r, void *arg) {
    *(int *)arg = r.failure->code;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

BT_TEST(component_that_fires_a_deferred) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    braid_deferred *d;
    braid_component *c;
    BT_OK(braid_component_new_to_deferred(loop, NULL, &d, &c));
    int v = 0;
    BT_OK(braid_deferred_add(d, got_value, got_failure, &v));
    BT_OK(braid_component_activate(c));
    BT_OK(braid_component_deliver(c, BRAID_COMPONENT_INBOX, tmsg_new(7), tmsg_free));
    bt_drain(loop);
    BT_EQ(v, 7);
    BT_TRUE(braid_component_is_done(c));
    braid_deferred_unref(d);   /* frees the message through its dtor */
    braid_component_free(c);
    /* shut down first: BRAID_ESHUTDOWN; freed first: BRAID_ECANCELED */
    braid_deferred *d2, *d3;
    braid_component *c2, *c3;
    int v2 = 0, v3 = 0;
    BT_OK(braid_component_new_to_deferred(loop, NULL, &d2, &c2));
    BT_OK(braid_component_new_to_deferred(loop, NULL, &d3, &c3));
    BT_OK(braid_deferred_add(d2, got_value, got_failure, &v2));
    BT_OK(braid_deferred_add(d3, got_value, got_failure, &v3));
    BT_OK(braid_component_activate(c2));
    BT_OK(braid_component_deliver(c2, BRAID_COMPONENT_CONTROL, BRAID_COMPONENT_SHUTDOWN, NULL));
    bt_drain(loop);
    BT_ERR(v2, BRAID_ESHUTDOWN);
    braid_component_free(c3);
    BT_ERR(v3, BRAID_ECANCELED);
    braid_component_free(c2);
    braid_deferred_unref(d2);
    braid_deferred_unref(d3);
    BT_ALL_FREED();
    fake_done(loop, fc);
}

/* ---- carousel ------------------------------------------------------------------------------------- */
/* The factory builds a relay that adds the "next" message's seq to each
 * message and ends after `limit` messages. */
typedef struct crelay {
    int add, limit, seen;
} crelay;
static int crelay_run(braid_component *c, void *st) {
    crelay *r = st;
    braid_component_msg m;
    while (r->seen < r->limit && braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        ((tmsg *)m.ptr)->seq += r->add;
        r->seen++;
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, m.free) < 0) braid_component_msg_free(m);
    }
    if (r->seen == r->limit) return BRAID_COMPONENT_DONE;
    return braid_component_handle_control(c);
}
static int g_built;
static int make_relay(braid_loop *loop, braid_component_msg msg, void *arg, braid_component **out) {
    (void)arg;
    crelay *r = malloc(sizeof *r);
    *r = (crelay){ ((tmsg *)msg.ptr)->seq, 2, 0 };
    braid_component_msg_free(msg);
    braid_component_options o = { .name = "child", .state_free = free };
    int rc = braid_component_new(loop, crelay_run, r, &o, out);
    if (rc < 0) free(r);
    g_built++;
    return rc;
}

typedef struct nexts {
    int n;
} nexts;
static int count_next(braid_component *c, void *st) {
    nexts *x = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        if (m.ptr == BRAID_COMPONENT_NEXT) x->n++;
        braid_component_msg_free(m);
    }
    return BRAID_COMPONENT_IDLE;
}

BT_TEST(carousel_replaces_its_child_per_message) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    counts_reset();
    g_built = 0;
    braid_component *car, *snk, *nx;
    sink s = { .keep_going = true };
    nexts x = { 0 };
    BT_OK(braid_component_carousel_new(loop, make_relay, NULL, NULL, &car));
    snk = mk(loop, sink_run, &s, "sink");
    nx = mk(loop, count_next, &x, "next-counter");
    BT_OK(braid_component_link(car, "outbox", snk, "inbox", 0));
    BT_OK(braid_component_link(car, "requestNext", nx, "inbox", 0));
    braid_component *all[] = { car, snk, nx };
    for (int i = 0; i < 3; i++) BT_OK(braid_component_activate(all[i]));
    /* messages before any child wait in the carousel */
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_INBOX, tmsg_new(1), tmsg_free));
    bt_drain(loop);
    BT_EQ(s.n, 0);
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_CAROUSEL_NEXT, tmsg_new(100), tmsg_free));
    bt_drain(loop);
    BT_EQ(g_built, 1);
    BT_EQ(s.n, 1);
    BT_EQ(s.got[0], 101);   /* handed on to the first child */
    /* a new child replaces the current one at once */
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_CAROUSEL_NEXT, tmsg_new(200), tmsg_free));
    bt_drain(loop);
    BT_EQ(x.n, 0);   /* replaced, not ended: no NEXT */
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_INBOX, tmsg_new(2), tmsg_free));
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_INBOX, tmsg_new(3), tmsg_free));
    bt_drain(loop);
    BT_EQ(s.n, 3);
    BT_EQ(s.got[1], 202);
    BT_EQ(s.got[2], 203);
    BT_EQ(x.n, 1);   /* that child ended after 2: the carousel asks for the next */
    /* shutdown with no live child ends the carousel */
    BT_OK(braid_component_deliver(car, BRAID_COMPONENT_CONTROL, BRAID_COMPONENT_SHUTDOWN, NULL));
    bt_drain(loop);
    BT_TRUE(braid_component_is_done(car));
    for (int i = 0; i < 3; i++) braid_component_free(all[i]);
    BT_ALL_FREED();
    BT_EQ(braid_component_count(loop), 0);
    fake_done(loop, fc);
}

/* recv_wait on inbox returns when a shutdown lands on control instead of
 * waiting out its timeout. */
static int waits_on_inbox(braid_component *c, void *st) {
    int *rc = st;
    braid_component_msg m;
    rc[0] = braid_component_recv_wait(c, BRAID_COMPONENT_INBOX, &m, BRAID_SECONDS(60));
    rc[1] = braid_component_recv(c, BRAID_COMPONENT_CONTROL, &m);
    return 0;
}

BT_TEST(fiber_recv_wait_returns_for_control) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    int rc[2] = { 1, 1 };
    braid_component *c;
    BT_OK(braid_component_new_fiber(loop, waits_on_inbox, rc, NULL, &c));
    BT_OK(braid_component_activate(c));
    bt_drain(loop);
    BT_EQ(rc[0], 1);
    BT_OK(braid_component_deliver(c, BRAID_COMPONENT_CONTROL, BRAID_COMPONENT_SHUTDOWN, NULL));
    bt_drain(loop);   /* no time passes */
    BT_ERR(rc[0], BRAID_EAGAIN);
    BT_OK(rc[1]);
    BT_TRUE(braid_component_is_done(c));
    braid_component_free(c);
    fake_done(loop, fc);
}
