/* Keys: per-loop data a module declares for itself (braid_loop_data,
 * braid_loop_set_data in <braid/loop.h>). The loop knows no module: each
 * keeps its state under its own static key, freed by braid_loop_free in
 * the reverse order of first set, and may make destroy refuse through its
 * report hook. */
#include "harness.h"

static char order[16];
static size_t norder;

static void note_free(braid_loop *loop, void *value) {
    (void)loop;
    order[norder++] = *(char *)value;
}

static braid_loop_key key_a = BRAID_LOOP_KEY_INIT("test a", note_free, NULL);
static braid_loop_key key_b = BRAID_LOOP_KEY_INIT("test b", note_free, NULL);
static braid_loop_key key_c = BRAID_LOOP_KEY_INIT("test c", note_free, NULL);

BT_TEST(data_is_per_loop_and_per_key) {
    braid_loop *l1 = bt_loop_new(NULL), *l2 = bt_loop_new(NULL);
    static char a = 'a', b = 'b';
    BT_TRUE(braid_loop_data(l1, &key_a) == NULL);     /* nothing before the first set */
    BT_OK(braid_loop_set_data(l1, &key_a, &a));
    BT_NE(key_a.index, 0);                            /* numbered on first set */
    BT_TRUE(braid_loop_data(l1, &key_a) == &a);
    BT_TRUE(braid_loop_data(l2, &key_a) == NULL);     /* another loop: its own */
    BT_TRUE(braid_loop_data(l1, &key_b) == NULL);     /* another key: its own */
    BT_OK(braid_loop_set_data(l2, &key_a, &b));
    BT_TRUE(braid_loop_data(l1, &key_a) == &a);
    BT_TRUE(braid_loop_data(l2, &key_a) == &b);
    BT_OK(braid_loop_set_data(l1, &key_a, NULL));     /* cleared: free is not called */
    BT_TRUE(braid_loop_data(l1, &key_a) == NULL);
    bt_loop_destroy(l1);
    BT_EQ(norder, 0);
    bt_loop_destroy(l2);
    BT_EQ(norder, 1);
    BT_EQ(order[0], 'b');
}

/* A module set up later may use one set up earlier while it goes: frees run
 * last-set first, in the order of this loop (not of key numbering). */
BT_TEST(free_runs_in_reverse_order_of_first_set) {
    static char a = 'a', b = 'b', c = 'c', c2 = 'C';
    braid_loop *warm = bt_loop_new(NULL);                 /* number c before a and b */
    BT_OK(braid_loop_set_data(warm, &key_c, NULL));
    bt_loop_destroy(warm);
    braid_loop *loop = bt_loop_new(NULL);
    BT_OK(braid_loop_set_data(loop, &key_a, &a));
    BT_OK(braid_loop_set_data(loop, &key_b, &b));
    BT_OK(braid_loop_set_data(loop, &key_c, &c));
    BT_OK(braid_loop_set_data(loop, &key_c, &c2));       /* replaced: its place stays */
    BT_LT(key_c.index, key_a.index);
    bt_loop_destroy(loop);
    BT_EQ(norder, 3);
    BT_EQ(order[0], 'C');
    BT_EQ(order[1], 'b');
    BT_EQ(order[2], 'a');
}

static int open_things;
static bool report_open(braid_loop *loop, void *value) {
    (void)value;
    if (!open_things) return false;
    braid_loop_log(loop, BRAID_LOG_ERROR, "loop not destroyed: %d test thing(s) still open", open_things);
    return true;
}
static int freed;
static void count_free(braid_loop *loop, void *value) {
    (void)loop; (void)value;
    freed++;
}
static braid_loop_key key_r = BRAID_LOOP_KEY_INIT("test report", count_free, report_open);

BT_TEST(report_makes_destroy_refuse) {
    braid_loop *loop = bt_loop_new(NULL);
    static int state;
    BT_OK(braid_loop_set_data(loop, &key_r, &state));
    open_things = 2;
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_EQ(freed, 0);                                      /* refused: nothing freed */
    BT_TRUE(braid_loop_data(loop, &key_r) == &state);     /* the loop is untouched */
    open_things = 0;
    bt_loop_destroy(loop);
    BT_EQ(freed, 1);
}

/* At most BRAID_LOOP_MAX_KEYS keys per process; past that set fails and
 * names the key, and the loop stays usable. */
BT_TEST(keys_are_bounded) {
    braid_loop *loop = bt_loop_new(NULL);
    static braid_loop_key many[BRAID_LOOP_MAX_KEYS + 1];
    int ok = 0, rc = 0;
    for (int i = 0; i <= BRAID_LOOP_MAX_KEYS; i++) {
        many[i] = (braid_loop_key)BRAID_LOOP_KEY_INIT("many", NULL, NULL);
        rc = braid_loop_set_data(loop, &many[i], &many[i]);
        if (rc < 0) break;
        ok++;
    }
    BT_ERR(rc, BRAID_ENOMEM);
    BT_LE(ok, BRAID_LOOP_MAX_KEYS);
    BT_TRUE(braid_loop_data(loop, &many[ok]) == NULL);
    BT_TRUE(braid_loop_data(loop, &many[0]) == &many[0]);
    bt_loop_destroy(loop);
}
