/* Introspection: the loop's JSON document (loop, connections, pools and
 * registered sections) parsed back and its shape checked, sections added
 * and removed, odd writers, the allocation-failure walk, and the HTTP route
 * (JSON and page) fetched with braid's own HTTP client over loopback. */
// ctest-labels: threads
#include "harness.h"
#include "support/json.h"
#include "support/net.h"
#include "support/run.h"
#include "support/walk.h"
#include <braid/component.h>
#include <braid/http.h>
#include <braid/introspect.h>
#include <braid/pool.h>
#include <braid/stage.h>
#include <braid/stream.h>
#include <braid/testing.h>
#include <braid/tuplespace.h>
#include <string.h>


static void is_type(const bt_json *obj, const char *key, int type) {
    const bt_json *v = bt_json_get(obj, key);
    if (bt_json_type(v) != type)
        bt_fail(__FILE__, __LINE__, "member %s: type %d, want %d", key, bt_json_type(v), type);
}

/* A stage-like section: name, a number, links (the graph's edges). */
typedef struct stage {
    const char *name;
    const char *links[2];
    braid_introspect_node node;
} stage;
static void describe_stage(braid_json *j, void *arg) {
    stage *s = arg;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", s->name);
    braid_json_kv_f64(j, "load", 0.5);
    braid_json_key(j, "links");
    braid_json_array_begin(j);
    for (int i = 0; i < 2 && s->links[i]; i++) braid_json_str(j, s->links[i]);
    braid_json_array_end(j);
    braid_json_object_end(j);
}
/* Writers that misbehave: one leaves its object open, one writes nothing,
 * one nests past the limit; the document stays valid. */
static void leaves_open(braid_json *j, void *arg) {
    (void)arg;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "odd", "quote \" backslash \\ newline \n tab \t");
    braid_json_key(j, "list");
    braid_json_array_begin(j);
    braid_json_i64(j, -3);
}
static void writes_nothing(braid_json *j, void *arg) { (void)j; (void)arg; }
static void too_deep(braid_json *j, void *arg) {
    (void)arg;
    for (int i = 0; i < 40; i++) braid_json_array_begin(j);
    braid_json_u64(j, 1);
    for (int i = 0; i < 40; i++) braid_json_array_end(j);
}

BT_TEST(document_has_loop_pools_connections_and_sections) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .name = "ipool", .loop = loop,
                                                        .max_threads = 1 }, &pool));
    /* A connection: a memory transport with bytes it could not send. */
    braid_protocol *p = calloc(1, sizeof *p);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    BT_TRUE(m != NULL);
    stage a = { "parse", { "render", NULL }, { 0 } }, b = { "render", { "parse", "out" }, { 0 } };
    braid_introspect_add(loop, &a.node, "stages", describe_stage, &a);
    braid_introspect_add(loop, &b.node, "stages", describe_stage, &b);
    braid_introspect_node odd1, odd2, odd3;
    braid_introspect_add(loop, &odd1, "odd", leaves_open, NULL);
    braid_introspect_add(loop, &odd2, "odd", writes_nothing, NULL);
    braid_introspect_add(loop, &odd3, "odd", too_deep, NULL);

    bt_json *doc = bt_introspect_doc(loop);
    BT_EQ(bt_json_type(doc), BT_JSON_OBJ);
    BT_EQ((int)bt_json_get(doc, "braid")->num, 1);
    is_type(doc, "time_ns", BT_JSON_NUM);
    const bt_json *l = bt_json_get(doc, "loop");
    BT_EQ(bt_json_type(l), BT_JSON_OBJ);
    BT_STREQ(bt_json_get(l, "backend")->str, braid_loop_backend(loop));
    static const char *const nums[] = { "iteration", "now_ns", "handles_open", "watchers_open",
                                        "watchers_alive", "fd_table_size", "timers_pending", "timers_alive",
                                        "soon_pending" };
    for (size_t i = 0; i < sizeof nums / sizeof *nums; i++) is_type(l, nums[i], BT_JSON_NUM);
    const bt_json *h = bt_json_get(l, "handles");
    BT_EQ(bt_json_type(h), BT_JSON_OBJ);
    BT_EQ((int)bt_json_get(h, "pool")->num, 1);
    BT_EQ((int)bt_json_get(h, "memory")->num, 1);

    const bt_json *conns = bt_json_get(doc, "connections");
    BT_EQ(bt_json_type(conns), BT_JSON_ARR);
    BT_EQ(conns->n, 1);
    const bt_json *c = bt_json_at(conns, 0);
    BT_STREQ(bt_json_get(c, "kind")->str, "memory");
    is_type(c, "buffered", BT_JSON_NUM);
    is_type(c, "paused", BT_JSON_BOOL);
    is_type(c, "closing", BT_JSON_BOOL);

    const bt_json *pools = bt_json_get(doc, "pools");
    BT_EQ(pools->n, 1);
    const bt_json *pl = bt_json_at(pools, 0);
    BT_STREQ(bt_json_get(pl, "name")->str, "ipool");
    static const char *const pnums[] = { "threads", "idle", "queued", "running", "completed",
                                         "rejected", "cancelled", "wait_p50_ns", "run_p99_ns" };
    for (size_t i = 0; i < sizeof pnums / sizeof *pnums; i++) is_type(pl, pnums[i], BT_JSON_NUM);
    is_type(pl, "wait_hist", BT_JSON_ARR);
    is_type(pl, "run_hist", BT_JSON_ARR);
    is_type(pl, "hist_bucket_ns", BT_JSON_ARR);

    const bt_json *st = bt_json_get(doc, "stages");
    BT_EQ(st->n, 2);
    BT_STREQ(bt_json_get(bt_json_at(st, 0), "name")->str, "render");   /* newest first */
    BT_EQ(bt_json_get(bt_json_at(st, 0), "links")->n, 2);
    BT_STREQ(bt_json_at(bt_json_get(bt_json_at(st, 1), "links"), 0)->str, "render");

    const bt_json *odd = bt_json_get(doc, "odd");
    BT_EQ(odd->n, 2);                       /* the one that wrote nothing is absent */
    BT_EQ(bt_json_type(bt_json_at(odd, 0)), BT_JSON_ARR);    /* too deep: cut to null inside */
    const bt_json *o = bt_json_at(odd, 1);
    BT_STREQ(bt_json_get(o, "odd")->str, "quote \" backslash \\ newline \n tab \t");
    BT_EQ((int)bt_json_at(bt_json_get(o, "list"), 0)->num, -3);
    bt_json_free(doc);

    /* Removed nodes and their sections go; a second remove is harmless. */
    braid_introspect_remove(loop, &a.node);
    braid_introspect_remove(loop, &b.node);
    braid_introspect_remove(loop, &b.node);
    braid_introspect_remove(loop, &odd1);
    braid_introspect_remove(loop, &odd2);
    braid_introspect_remove(loop, &odd3);
    braid_memory_transport_free(m);
    bt_spin(loop, 2);
    braid_pool_free(pool);
    doc = bt_introspect_doc(loop);
    BT_TRUE(bt_json_get(doc, "stages") == NULL);
    BT_TRUE(bt_json_get(doc, "pools") == NULL);
    BT_TRUE(bt_json_get(doc, "connections") == NULL);
    bt_json_free(doc);
    free(p);
    bt_loop_destroy(loop);
}


/* ---- the stage and component modules' sections ------------------------------------------- */

static void stage_forward(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    for (size_t i = 0; i < n; i++)
        if (arg && braid_stage_enqueue(arg, &evs[i]) < 0) abort();
}

BT_TEST(stages_section_from_the_stage_module) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_stage_domain *d;
    BT_OK(braid_stage_domain_new(loop, NULL, &(braid_stage_domain_options){ .name = "web" }, &d));
    braid_stage *parse, *render;
    BT_OK(braid_stage_new(d, "render", stage_forward, NULL, &(braid_stage_options){ .queue_limit = 16 }, &render));
    BT_OK(braid_stage_new(d, "parse", stage_forward, render, NULL, &parse));
    bt_json *doc = bt_introspect_doc(loop);
    BT_EQ(bt_json_get(doc, "stages")->n, 2);
    BT_EQ(bt_json_get(bt_json_named(doc, "stages", "parse"), "links")->n, 0);   /* no edge learnt yet */
    bt_json_free(doc);
    static int ev[3];
    for (int i = 0; i < 3; i++) {
        braid_stage_event e = BRAID_STAGE_EVENT(&ev[i], NULL);
        BT_OK(braid_stage_enqueue(parse, &e));
    }
    bt_drain(loop);
    doc = bt_introspect_doc(loop);
    const bt_json *p = bt_json_named(doc, "stages", "parse"), *r = bt_json_named(doc, "stages", "render");
    BT_TRUE(p != NULL && r != NULL);
    is_type(p, "links", BT_JSON_ARR);
    BT_EQ(bt_json_get(p, "links")->n, 1);
    BT_STREQ(bt_json_at(bt_json_get(p, "links"), 0)->str, "render");     /* the graph's arrow */
    BT_STREQ(bt_json_get(bt_json_at(bt_json_get(p, "edges"), 0), "to")->str, "render");
    BT_EQ((int)bt_json_get(bt_json_at(bt_json_get(p, "edges"), 0), "events")->num, 3);
    BT_STREQ(bt_json_get(p, "domain")->str, "web");
    BT_EQ((int)bt_json_get(p, "handled")->num, 3);
    BT_EQ((int)bt_json_get(r, "handled")->num, 3);
    BT_EQ((int)bt_json_get(r, "queue_limit")->num, 16);
    BT_EQ((int)bt_json_get(r, "queue")->num, 0);
    BT_EQ(bt_json_type(bt_json_get(r, "clogged")), BT_JSON_BOOL);
    BT_EQ(bt_json_get(r, "links")->n, 0);
    bt_json_free(doc);
    braid_stage_free(render);                 /* an edge to a freed stage names nothing */
    doc = bt_introspect_doc(loop);
    BT_EQ(bt_json_get(doc, "stages")->n, 1);
    BT_EQ(bt_json_get(bt_json_named(doc, "stages", "parse"), "links")->n, 0);
    bt_json_free(doc);
    braid_stage_free(parse);
    doc = bt_introspect_doc(loop);
    BT_TRUE(bt_json_get(doc, "stages") == NULL);
    bt_json_free(doc);
    braid_stage_domain_free(d);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

static int comp_forward(braid_component *c, void *state) {
    (void)state;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0)
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, NULL) < 0) break;
    return BRAID_COMPONENT_IDLE;
}
static int comp_hold(braid_component *c, void *state) {
    (void)c;
    (void)state;
    return BRAID_COMPONENT_IDLE;      /* leaves its messages in its inbox */
}

BT_TEST(components_section_from_the_component_module) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_component *src, *sink;
    BT_OK(braid_component_new(loop, comp_forward, NULL, &(braid_component_options){ .name = "src" }, &src));
    BT_OK(braid_component_new(loop, comp_hold, NULL, &(braid_component_options){ .name = "sink" }, &sink));
    BT_OK(braid_component_link(src, "outbox", sink, "inbox", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_link(src, "signal", sink, "control", BRAID_COMPONENT_LINK_NORMAL));
    BT_OK(braid_component_activate(src));
    BT_OK(braid_component_activate(sink));
    static int msg[2];
    BT_OK(braid_component_deliver(src, BRAID_COMPONENT_INBOX, &msg[0], NULL));
    BT_OK(braid_component_deliver(src, BRAID_COMPONENT_INBOX, &msg[1], NULL));
    bt_drain(loop);
    bt_json *doc = bt_introspect_doc(loop);
    BT_EQ(bt_json_get(doc, "components")->n, 2);
    const bt_json *s = bt_json_named(doc, "components", "src"), *k = bt_json_named(doc, "components", "sink");
    BT_TRUE(s != NULL && k != NULL);
    is_type(s, "links", BT_JSON_ARR);
    BT_EQ(bt_json_get(s, "links")->n, 1);                 /* two boxes to sink: one arrow */
    BT_STREQ(bt_json_at(bt_json_get(s, "links"), 0)->str, "sink");
    BT_EQ(bt_json_get(k, "links")->n, 0);
    BT_STREQ(bt_json_get(s, "kind")->str, "callback");
    BT_STREQ(bt_json_get(k, "state")->str, "idle");
    BT_EQ((int)bt_json_get(s, "sent")->num, 2);
    BT_EQ((int)bt_json_get(bt_json_get(k, "inboxes"), "inbox")->num, 2);   /* queued there */
    BT_EQ((int)bt_json_get(bt_json_get(k, "inboxes"), "control")->num, 0);
    bt_json_free(doc);
    braid_component_free(sink);               /* src's outboxes now lead nowhere */
    doc = bt_introspect_doc(loop);
    BT_EQ(bt_json_get(doc, "components")->n, 1);
    BT_EQ(bt_json_get(bt_json_named(doc, "components", "src"), "links")->n, 0);
    bt_json_free(doc);
    braid_component_free(src);
    doc = bt_introspect_doc(loop);
    BT_TRUE(bt_json_get(doc, "components") == NULL);
    bt_json_free(doc);
    bt_drain(loop);
    bt_loop_destroy(loop);
}


/* ---- the tuple space module's sections ----------------------------------------------------- */
static const bt_json *member(const bt_json *o, const char *k) {
    const bt_json *v = bt_json_get(o, k);
    if (!v) bt_fail(__FILE__, __LINE__, "no member %s", k);
    return v;
}
static int num(const bt_json *o, const char *k) { return (int)member(o, k)->num; }
static const bt_json *arity_entry(const bt_json *ts, int arity) {
    const bt_json *a = member(ts, "by_arity");
    for (size_t i = 0; i < a->n; i++)
        if (num(bt_json_at(a, i), "arity") == arity) return bt_json_at(a, i);
    return NULL;
}
/* Run until d has a result, drop it and d; its failure's code or 0. */
static int settle(braid_loop *loop, braid_deferred *d) {
    BT_TRUE(d != NULL);
    BT_RUN_UNTIL(loop, braid_deferred_has_result(d), 2000);
    braid_result r;
    BT_OK(braid_deferred_take(d, &r));
    braid_deferred_unref(d);
    int code = r.failure ? r.failure->code : 0;
    braid_result_drop(r);
    return code;
}

BT_IO_TEST(tuplespaces_section_from_the_tuplespace_module) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_tuplespace *ts;
    BT_OK(braid_tuplespace_new(loop, &(braid_tuplespace_options){ .name = "jobs", .max_tuples = 5 }, &ts));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(2)), 0));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(3)), 0));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_int(7), braid_field_double(1.5), braid_field_bool(true)), 0));
    /* blocked calls: an in keyed on a bucket, a rd with a formal first field */
    braid_deferred *in = braid_tuplespace_in(ts, BRAID_FIELDS(braid_field_str("never"), braid_field_any(BRAID_FIELD_INT)),
                                             BRAID_FOREVER);
    braid_deferred *rd = braid_tuplespace_rd(ts, BRAID_FIELDS(braid_field_any(BRAID_FIELD_INT), braid_field_any(BRAID_FIELD_INT),
                                                              braid_field_any(BRAID_FIELD_INT), braid_field_any(BRAID_FIELD_INT)),
                                             BRAID_FOREVER);
    BT_TRUE(in != NULL && rd != NULL);
    braid_tuple *leased;
    BT_OK(braid_tuplespace_inp_lease(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_any(BRAID_FIELD_INT)),
                                     BRAID_SECONDS(10), &leased));
    /* a client of the space over a socketpair: it takes a lease and waits in an in */
    int sv[2];
    bt_socketpair(sv);
    BT_OK(braid_tuplespace_serve_fd(ts, sv[0], NULL));
    braid_tuplespace_client *c;
    BT_OK(braid_tuplespace_client_adopt(loop, sv[1], NULL, &c));
    BT_EQ(settle(loop, braid_tuplespace_client_in_lease(c, BRAID_FIELDS(braid_field_str("job"),
                                                                        braid_field_any(BRAID_FIELD_INT)),
                                                        BRAID_SECONDS(10), 0)), 0);
    braid_deferred *cin = braid_tuplespace_client_in(c, BRAID_FIELDS(braid_field_str("later"), braid_field_int(0)),
                                                     BRAID_FOREVER);
    BT_RUN_UNTIL(loop, ({ braid_tuplespace_stats st; braid_tuplespace_stats_get(ts, &st); st.waiters == 3; }), 2000);

    bt_json *doc = bt_introspect_doc(loop);
    const bt_json *e = bt_json_named(doc, "tuplespaces", "jobs");
    BT_TRUE(e != NULL);
    BT_EQ(bt_json_type(member(e, "durable")), BT_JSON_BOOL);
    BT_EQ(num(e, "tuples"), 2);               /* job 3 and (7, 1.5, true) */
    BT_EQ(num(e, "leased"), 2);
    is_type(e, "bytes", BT_JSON_NUM);
    is_type(e, "max_tuples", BT_JSON_NUM);
    const bt_json *a2 = arity_entry(e, 2), *a3 = arity_entry(e, 3), *a4 = arity_entry(e, 4);
    BT_TRUE(a2 && a3 && a4);
    BT_EQ(num(a2, "tuples"), 1);
    BT_EQ(num(a2, "waiting"), 2);             /* "never" here, "later" from the client */
    BT_EQ(num(a3, "tuples"), 1);
    BT_EQ(num(a4, "tuples"), 0);
    BT_EQ(num(a4, "waiting"), 1);             /* the rd, wild */
    BT_EQ(num(member(e, "by_first_field"), "string"), 1);
    BT_EQ(num(member(e, "by_first_field"), "int"), 1);
    const bt_json *w = member(e, "waiting");
    BT_EQ(num(w, "in"), 2);
    BT_EQ(num(w, "rd"), 1);
    BT_EQ(num(w, "in_lease"), 0);
    BT_EQ(num(w, "out_wait"), 0);
    const bt_json *l = member(e, "leases");
    BT_EQ(num(l, "held"), 2);
    BT_EQ(num(l, "returning"), 0);
    BT_TRUE(member(l, "next_deadline_in_ns")->num <= 10e9);
    const bt_json *cl = member(e, "clients");
    BT_EQ(cl->n, 1);
    BT_EQ(num(bt_json_at(cl, 0), "leases"), 1);
    BT_EQ(num(bt_json_at(cl, 0), "waiting"), 1);
    is_type(bt_json_at(cl, 0), "kind", BT_JSON_STR);
    const bt_json *ops = member(e, "ops");
    BT_EQ(num(ops, "outs"), 4);
    is_type(ops, "expired", BT_JSON_NUM);
    const bt_json *tc = member(doc, "tuplespace_clients");
    BT_EQ(tc->n, 1);
    BT_TRUE(member(bt_json_at(tc, 0), "connected")->b);
    BT_EQ(num(bt_json_at(tc, 0), "waiting"), 1);
    BT_EQ(bt_json_type(member(bt_json_at(tc, 0), "lost")), BT_JSON_NULL);
    bt_json_free(doc);

    /* The client goes: its lease comes back, its call is cancelled, it leaves both sections. */
    braid_tuplespace_client_free(c);
    BT_EQ(settle(loop, cin), BRAID_ESHUTDOWN);
    BT_RUN_UNTIL(loop, braid_tuplespace_connections(ts) == 0, 2000);
    doc = bt_introspect_doc(loop);
    e = bt_json_named(doc, "tuplespaces", "jobs");
    BT_EQ(member(e, "clients")->n, 0);
    BT_EQ(num(e, "leased"), 1);
    BT_EQ(num(e, "tuples"), 3);
    BT_EQ(num(member(e, "waiting"), "in"), 1);
    BT_TRUE(bt_json_get(doc, "tuplespace_clients") == NULL);
    bt_json_free(doc);

    /* The tallies follow takes, a full space and a nack with a delay. */
    braid_tuple *t3;
    BT_OK(braid_tuplespace_inp(ts, BRAID_FIELDS(braid_field_int(7), braid_field_any(BRAID_FIELD_DOUBLE),
                                                braid_field_any(BRAID_FIELD_BOOL)), &t3));
    braid_tuple_free(t3);
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("extra"), braid_field_int(0)), 0));
    BT_OK(braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("extra"), braid_field_int(1)), 0));   /* full: 5 */
    braid_deferred *ow = braid_tuplespace_out_wait(ts, BRAID_FIELDS(braid_field_str("more"), braid_field_int(0)), 0,
                                                   BRAID_FOREVER);
    BT_TRUE(ow != NULL);
    BT_OK(braid_tuplespace_nack(ts, leased->lease, BRAID_SECONDS(5)));
    braid_tuple_free(leased);
    doc = bt_introspect_doc(loop);
    e = bt_json_named(doc, "tuplespaces", "jobs");
    BT_TRUE(arity_entry(e, 3) == NULL);       /* its only bucket went with its tuple */
    BT_EQ(num(arity_entry(e, 2), "tuples"), 4);
    BT_EQ(num(arity_entry(e, 2), "buckets"), 3);   /* "job", "extra", "never" (a waiter's) */
    BT_EQ(num(member(e, "by_first_field"), "int"), 0);
    BT_EQ(num(member(e, "by_first_field"), "string"), 4);
    BT_EQ(num(member(e, "waiting"), "out_wait"), 1);
    BT_EQ(num(member(e, "leases"), "held"), 0);
    BT_EQ(num(member(e, "leases"), "returning"), 1);
    BT_EQ(num(member(e, "ops"), "full"), 0);
    bt_json_free(doc);

    braid_tuplespace_free(ts);
    BT_EQ(settle(loop, in), BRAID_ESHUTDOWN);
    BT_EQ(settle(loop, rd), BRAID_ESHUTDOWN);
    BT_EQ(settle(loop, ow), BRAID_ESHUTDOWN);
    doc = bt_introspect_doc(loop);
    BT_TRUE(bt_json_get(doc, "tuplespaces") == NULL);
    bt_json_free(doc);
    bt_drain(loop);
    bt_loop_destroy(loop);
}

/* ---- allocation failures ----------------------------------------------------------------- */
static int walk_body(void *arg) {
    braid_loop *loop = arg;
    char *text;
    int rc = braid_introspect_json(loop, &text, NULL);
    if (rc == 0) braid_free(text);
    return rc;
}

BT_TEST(alloc_walk_document) {
    braid_loop *loop = bt_loop_new(NULL);
    stage a = { "a", { "b", NULL }, { 0 } };
    braid_introspect_add(loop, &a.node, "stages", describe_stage, &a);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "introspect", .body = walk_body, .arg = loop,
                                                 .enomem_only = true });
    BT_GE(r.errors, 1);
    braid_introspect_remove(loop, &a.node);
    bt_loop_destroy(loop);
}

/* ---- the HTTP route, fetched with braid's client ---------------------------------------------- */
typedef struct fetch {
    int done;
    int status;
    char *body;
    size_t len;
    char ctype[64];
} fetch;

static braid_result got(braid_result r, void *arg) {
    fetch *f = arg;
    f->done = 1;
    if (r.failure) {
        f->status = -1;
        braid_result_drop(r);
        return braid_result_ok(NULL);
    }
    braid_http_client_response *resp = r.value;
    f->status = resp->status;
    f->len = resp->body_len;
    f->body = malloc(resp->body_len + 1);
    memcpy(f->body, resp->body, resp->body_len);
    f->body[resp->body_len] = 0;
    const char *ct = braid_http_client_response_header(resp, "Content-Type");
    snprintf(f->ctype, sizeof f->ctype, "%s", ct ? ct : "");
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static void get(braid_loop *loop, braid_http_client *c, const char *url, fetch *f) {
    memset(f, 0, sizeof *f);
    braid_deferred *d = braid_http_client_request(c, &(braid_http_client_req){ .url = url });
    BT_TRUE(d != NULL);
    braid_deferred_add_both(d, got, f);
    braid_deferred_unref(d);
    BT_RUN_UNTIL(loop, f->done, 2000);
}

BT_IO_TEST(http_route_serves_the_document_and_its_page) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_http_server *srv;
    BT_OK(braid_http_server_new(loop, NULL, &srv));
    BT_OK(braid_http_introspection_route(srv, "/_braid/"));
    BT_EQ(braid_http_introspection_route(srv, "/_braid"), BRAID_EEXIST);
    BT_EQ(braid_http_introspection_route(srv, "nope"), BRAID_EINVAL);
    stage a = { "in", { "out", NULL }, { 0 } }, b = { "out", { NULL, NULL }, { 0 } };
    braid_introspect_add(loop, &a.node, "components", describe_stage, &a);
    braid_introspect_add(loop, &b.node, "components", describe_stage, &b);
    int port;
    braid_listener *l = bt_listen_tcp(loop, braid_http_server_factory(srv), &port);
    braid_http_client *c;
    BT_OK(braid_http_client_new(loop, NULL, &c));
    char url[128];

    fetch f;
    snprintf(url, sizeof url, "http://127.0.0.1:%d/_braid.json", port);
    get(loop, c, url, &f);
    BT_EQ(f.status, 200);
    BT_STREQ(f.ctype, "application/json");
    bt_json *doc = bt_json_parse(f.body, f.len);
    if (!doc) bt_fail(__FILE__, __LINE__, "not JSON: %s", f.body);
    BT_STREQ(bt_json_get(bt_json_get(doc, "loop"), "backend")->str, bt_backend());
    /* The client's own connection and the server's side of it are both there. */
    const bt_json *conns = bt_json_get(doc, "connections");
    BT_GE(conns->n, 2);
    bool saw_peer = false;
    for (size_t i = 0; i < conns->n; i++) {
        const bt_json *p = bt_json_get(bt_json_at(conns, i), "peer");
        if (bt_json_type(p) == BT_JSON_STR && strstr(p->str, "127.0.0.1")) saw_peer = true;
    }
    BT_TRUE(saw_peer);
    BT_EQ(bt_json_get(doc, "components")->n, 2);
    bt_json_free(doc);
    free(f.body);

    snprintf(url, sizeof url, "http://127.0.0.1:%d/_braid", port);
    get(loop, c, url, &f);
    BT_EQ(f.status, 200);
    BT_TRUE(strncmp(f.ctype, "text/html", 9) == 0);
    BT_TRUE(strstr(f.body, "<svg") != NULL);              /* draws the graph itself */
    BT_TRUE(strstr(f.body, ".json'") != NULL);             /* fetches the document */
    BT_TRUE(strstr(f.body, "<script src") == NULL);       /* no external assets */
    BT_TRUE(strstr(f.body, "<link") == NULL);
    BT_TRUE(strstr(f.body, "http://") == NULL || strstr(f.body, "http://www.w3.org/2000/svg") != NULL);
    free(f.body);

    braid_introspect_remove(loop, &a.node);
    braid_introspect_remove(loop, &b.node);
    braid_http_client_free(c);
    braid_listener_close(l);
    braid_http_server_shutdown(srv);
    BT_RUN_UNTIL(loop, braid_http_server_connections(srv) == 0, 2000);
    BT_OK(braid_http_server_free(srv));
    bt_drain(loop);
    bt_loop_destroy(loop);
}
