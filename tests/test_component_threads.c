/* Threaded components: a function in an OS thread behind a component's
 * boxes, bounded queues both ways, freeing while the thread waits. */
// ctest-labels: component threads
#include "harness.h"

#include <braid/component.h>
#include <sched.h>
#include <stdatomic.h>

typedef struct num {
    int v;
} num;
static atomic_long g_freed;
static void num_free(void *p) {
    atomic_fetch_add(&g_freed, 1);
    free(p);
}

/* Doubles every number until producer_finished on control, then forwards it. */
static int doubler(braid_component_thread *t, void *state) {
    (void)state;
    for (;;) {
        int box;
        braid_component_msg m;
        int rc = braid_component_thread_recv(t, &box, &m, BRAID_FOREVER);
        if (rc < 0) return rc;
        if (box == BRAID_COMPONENT_CONTROL) {
            if (braid_component_is_shutdown_msg(m.ptr))
                return braid_component_thread_send(t, BRAID_COMPONENT_SIGNAL, m.ptr, NULL, BRAID_FOREVER);
            braid_component_msg_free(m);
            continue;
        }
        ((num *)m.ptr)->v *= 2;
        rc = braid_component_thread_send(t, BRAID_COMPONENT_OUTBOX, m.ptr, m.free, BRAID_FOREVER);
        if (rc < 0) {
            braid_component_msg_free(m);
            return rc;
        }
    }
}

typedef struct src {
    int n, next;
} src;
static int src_run(braid_component *c, void *st) {
    src *s = st;
    while (s->next < s->n) {
        num *m = malloc(sizeof *m);
        m->v = s->next;
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m, num_free) < 0) {
            free(m);
            braid_component_wake_on_pop(c, BRAID_COMPONENT_OUTBOX);
            return BRAID_COMPONENT_IDLE;
        }
        s->next++;
    }
    if (braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_PRODUCER_FINISHED, NULL) < 0) {
        braid_component_wake_on_pop(c, BRAID_COMPONENT_SIGNAL);
        return BRAID_COMPONENT_IDLE;
    }
    return BRAID_COMPONENT_DONE;
}

typedef struct snk {
    long sum;
    int n;
} snk;
static int snk_run(braid_component *c, void *st) {
    snk *s = st;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        s->sum += ((num *)m.ptr)->v;
        s->n++;
        braid_component_msg_free(m);
    }
    return braid_component_handle_control(c);
}

BT_TEST(threaded_component_in_a_pipeline_with_backpressure) {
    braid_loop *loop = bt_loop_new(NULL);
    atomic_store(&g_freed, 0);
    src s = { .n = 2000 };
    snk k = { 0 };
    braid_component *kids[3];
    braid_component_options small = { .name = "doubler", .capacity = 4 };
    BT_OK(braid_component_new(loop, src_run, &s, NULL, &kids[0]));
    BT_OK(braid_component_new_threaded(loop, doubler, NULL, &small, &kids[1]));
    braid_component_options so = { .name = "sink", .capacity = 3 };
    BT_OK(braid_component_new(loop, snk_run, &k, &so, &kids[2]));
    braid_component *p;
    BT_OK(braid_component_pipeline_new(loop, kids, 3, NULL, &p));
    BT_OK(braid_component_activate(p));
    BT_OK(braid_loop_run(loop));   /* the thread holds the loop until it returns */
    BT_EQ(k.n, 2000);
    BT_EQ(k.sum, 2L * (1999L * 2000L / 2));
    BT_TRUE(braid_component_is_done(p));
    BT_EQ(braid_component_result(kids[1]), 0);
    braid_component_free(p);
    BT_EQ(atomic_load(&g_freed), 2000);
    bt_loop_destroy(loop);
}

static atomic_int g_thread_rc, g_entered;
static int waiter(braid_component_thread *t, void *state) {
    (void)state;
    int box;
    braid_component_msg m;
    int rc = braid_component_thread_recv(t, &box, &m, 10);   /* 10 ns: times out */
    atomic_store(&g_entered, rc == BRAID_ETIMEDOUT ? 1 : -1);
    rc = braid_component_thread_recv(t, &box, &m, BRAID_FOREVER);   /* until freed */
    atomic_store(&g_thread_rc, rc);
    return rc;
}

BT_TEST(threaded_component_freed_while_its_thread_waits) {
    braid_loop *loop = bt_loop_new(NULL);
    atomic_store(&g_thread_rc, 1);
    atomic_store(&g_freed, 0);
    braid_component *c;
    BT_OK(braid_component_new_threaded(loop, waiter, NULL, NULL, &c));
    BT_OK(braid_component_activate(c));
    /* nothing delivered: the thread times out, then waits for good */
    for (long i = 0; i < 100000000 && !atomic_load(&g_entered); i++) sched_yield();
    BT_EQ(atomic_load(&g_entered), 1);
    braid_component_free(c);
    /* the loop runs until the thread has returned (it holds the loop) */
    BT_OK(braid_loop_run(loop));
    BT_ERR(atomic_load(&g_thread_rc), BRAID_ECANCELED);
    bt_loop_destroy(loop);
}
