/* Structured logging (<braid/log.h>): observers, JSON lines parsed back,
 * filters changed at run time, the early ring, the request id from the
 * context, rate limits, and 16 threads emitting through the bounded queue
 * (nothing lost below the bound, drops counted above it). */
// ctest-labels: threads
#include "harness.h"
#include "support/run.h"
#include "support/walk.h"
#include <braid/context.h>
#include <braid/log.h>
#include <braid/pool.h>
#include <braid/stage.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

/* ---- a small JSON reader, enough to parse the lines back ------------------------------ */
typedef struct jp {
    const char *p;
    bool ok;
} jp;
static void ws(jp *j) { while (*j->p == ' ' || *j->p == '\t') j->p++; }
static void jvalue(jp *j, char *str_out, size_t cap);
static void jstring(jp *j, char *out, size_t cap) {
    size_t n = 0;
    if (*j->p != '"') { j->ok = false; return; }
    j->p++;
    while (*j->p && *j->p != '"') {
        char c = *j->p++;
        if ((unsigned char)c < 0x20) { j->ok = false; return; }
        if (c == '\\') {
            char e = *j->p++;
            if (e == 'n') c = '\n';
            else if (e == '"' || e == '\\' || e == '/') c = e;
            else if (e == 'u') {
                unsigned v;
                if (sscanf(j->p, "%4x", &v) != 1) { j->ok = false; return; }
                j->p += 4;
                c = (char)v;
            } else { j->ok = false; return; }
        }
        if (out && n + 1 < cap) out[n++] = c;
    }
    if (*j->p != '"') { j->ok = false; return; }
    j->p++;
    if (out) out[n] = 0;
}
/* Parses an object; for each member whose key is `want`, copies its value
 * text (strings unescaped) into out. Nested objects are searched too. */
static const char *want_key;
static char *want_out;
static void jobject(jp *j) {
    if (*j->p != '{') { j->ok = false; return; }
    j->p++;
    ws(j);
    if (*j->p == '}') { j->p++; return; }
    for (;;) {
        char key[128];
        ws(j);
        jstring(j, key, sizeof key);
        ws(j);
        if (!j->ok || *j->p != ':') { j->ok = false; return; }
        j->p++;
        ws(j);
        bool hit = want_key && !strcmp(key, want_key);
        jvalue(j, hit ? want_out : NULL, 256);
        if (!j->ok) return;
        ws(j);
        if (*j->p == ',') { j->p++; continue; }
        if (*j->p == '}') { j->p++; return; }
        j->ok = false;
        return;
    }
}
static void jvalue(jp *j, char *out, size_t cap) {
    const char *start = j->p;
    if (*j->p == '"') jstring(j, out, cap);
    else if (*j->p == '{') jobject(j);
    else if (!strncmp(j->p, "true", 4) || !strncmp(j->p, "null", 4)) j->p += 4;
    else if (!strncmp(j->p, "false", 5)) j->p += 5;
    else {
        char *end;
        strtod(j->p, &end);
        if (end == j->p) { j->ok = false; return; }
        j->p = end;
    }
    if (out && *start != '"') snprintf(out, cap, "%.*s", (int)(j->p - start), start);
}
/* Is line one JSON object (and nothing else)? Copies key's value into out. */
static bool json_get(const char *line, const char *key, char *out) {
    jp j = { line, true };
    want_key = key;
    want_out = out;
    if (out) out[0] = 0;
    jobject(&j);
    return j.ok && (*j.p == 0 || *j.p == '\n');
}

/* ---- helpers ---------------------------------------------------------------------------- */
typedef struct seen {
    int n;
    char last_msg[256], last_ns[64];
    braid_log_level last_level;
    uint64_t last_req;
    size_t last_nfields;
} seen;
static void on_event(const braid_log_event *ev, void *arg) {
    seen *s = arg;
    s->n++;
    snprintf(s->last_msg, sizeof s->last_msg, "%s", ev->msg);
    snprintf(s->last_ns, sizeof s->last_ns, "%s", ev->ns ? ev->ns : "");
    s->last_level = ev->level;
    s->last_req = ev->request_id;
    s->last_nfields = ev->nfields;
}

/* ---- cases ------------------------------------------------------------------------------ */
BT_TEST(json_lines_parse_back) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    int p[2];
    BT_EQ(pipe(p), 0);
    braid_log_observer *o;
    BT_OK(braid_logger_add_json(lg, p[1], &o));
    braid_log_emit(lg, BRAID_LOG_WARN, "app.db",
                   braid_log_fields(BRAID_LOG_U64("rows", 12), BRAID_LOG_STR("table", "us\"ers\n"),
                                    BRAID_LOG_F64("ratio", 0.5), BRAID_LOG_BOOL("cached", true),
                                    BRAID_LOG_I64("delta", -3)),
                   "query \"%s\" done", "select");
    braid_loop_log(loop, BRAID_LOG_ERROR, "plain line");
    char buf[4096];
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    BT_GT(n, 0);
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    BT_TRUE(nl != NULL);
    *nl = 0;
    char v[256];
    BT_TRUE(json_get(buf, "msg", v));
    BT_STREQ(v, "query \"select\" done");
    BT_TRUE(json_get(buf, "level", v));
    BT_STREQ(v, "warn");
    BT_TRUE(json_get(buf, "ns", v));
    BT_STREQ(v, "app.db");
    BT_TRUE(json_get(buf, "table", v));
    BT_STREQ(v, "us\"ers\n");
    BT_TRUE(json_get(buf, "rows", v));
    BT_STREQ(v, "12");
    BT_TRUE(json_get(buf, "delta", v));
    BT_STREQ(v, "-3");
    BT_TRUE(json_get(buf, "cached", v));
    BT_STREQ(v, "true");
    char *second = nl + 1;
    BT_TRUE(json_get(second, "msg", v));
    BT_STREQ(v, "plain line");
    BT_TRUE(json_get(second, "ns", v));
    BT_STREQ(v, "null");
    braid_log_observer_remove(o);
    close(p[0]);
    close(p[1]);
    bt_loop_destroy(loop);
}

BT_TEST(filters_change_at_run_time) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    seen s = { 0 };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(lg, on_event, &s, &o));
    BT_OK(braid_logger_set_level(lg, NULL, BRAID_LOG_INFO));
    braid_log_emit(lg, BRAID_LOG_DEBUG, "app.db", braid_log_no_fields, "d1");
    BT_EQ(s.n, 0);
    BT_FALSE(braid_log_enabled(lg, BRAID_LOG_DEBUG, "app.db"));
    BT_OK(braid_logger_set_level(lg, "app.db", BRAID_LOG_DEBUG));
    braid_log_emit(lg, BRAID_LOG_DEBUG, "app.db.pool", braid_log_no_fields, "d2");   /* below app.db */
    BT_EQ(s.n, 1);
    BT_STREQ(s.last_msg, "d2");
    braid_log_emit(lg, BRAID_LOG_DEBUG, "app.dbx", braid_log_no_fields, "d3");       /* not below it */
    braid_log_emit(lg, BRAID_LOG_DEBUG, "app", braid_log_no_fields, "d4");
    BT_EQ(s.n, 1);
    /* The longest prefix decides. */
    BT_OK(braid_logger_set_level(lg, "app.db.pool", BRAID_LOG_ERROR));
    braid_log_emit(lg, BRAID_LOG_WARN, "app.db.pool", braid_log_no_fields, "w1");
    braid_log_emit(lg, BRAID_LOG_WARN, "app.db", braid_log_no_fields, "w2");
    BT_EQ(s.n, 2);
    BT_STREQ(s.last_msg, "w2");
    braid_loop_log(loop, BRAID_LOG_INFO, "no namespace, default level");
    BT_EQ(s.n, 3);
    BT_STREQ(s.last_ns, "");
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

BT_TEST(braid_modules_log_in_their_namespace) {
    braid_loop *loop = bt_loop_new(NULL);
    seen s = { 0 };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(braid_loop_logger(loop), on_event, &s, &o));
    braid_timer t;
    braid_timer_init(loop, &t, (braid_timer_cb)(void (*)(void))abort, NULL);
    BT_OK(braid_timer_start(&t, BRAID_SECONDS(5)));
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_EQ(s.n, 1);
    BT_STREQ(s.last_ns, "braid.loop");
    BT_EQ(s.last_level, BRAID_LOG_ERROR);
    BT_STREQ(s.last_msg, "loop not destroyed: 1 timer(s) still active");
    braid_timer_stop(&t);
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

BT_TEST(early_events_are_replayed_to_the_first_observer) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    for (int i = 0; i < 3; i++)
        braid_log_emit(lg, BRAID_LOG_WARN, "app", braid_log_fields(BRAID_LOG_I64("i", i)), "early %d", i);
    seen s = { 0 }, s2 = { 0 };
    braid_log_observer *o, *o2;
    BT_OK(braid_logger_add_callback(lg, on_event, &s, &o));
    BT_EQ(s.n, 3);
    BT_STREQ(s.last_msg, "early 2");
    BT_EQ(s.last_nfields, 1);
    BT_OK(braid_logger_add_callback(lg, on_event, &s2, &o2));   /* only the first gets them */
    BT_EQ(s2.n, 0);
    braid_log_observer_remove(o);
    braid_log_observer_remove(o2);
    bt_loop_destroy(loop);
}

static void count_ring(const braid_log_event *ev, void *arg) {
    char *out = arg;
    strcat(out, ev->msg);
}

BT_TEST(ring_keeps_the_last_events) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    braid_log_observer *ring;
    BT_OK(braid_logger_add_ring(lg, 3, &ring));
    for (int i = 0; i < 5; i++) braid_log_emit(lg, BRAID_LOG_INFO, "app", braid_log_no_fields, "%d", i);
    char got[32] = "";
    BT_EQ(braid_log_ring_visit(ring, count_ring, got), 3);
    BT_STREQ(got, "234");
    braid_log_observer_remove(ring);
    bt_loop_destroy(loop);
}

BT_TEST(request_id_comes_from_the_context) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    seen s = { 0 };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(lg, on_event, &s, &o));
    braid_ctx_scope sc;
    BT_OK(braid_ctx_push_u64(&sc, &braid_log_request_id_key, 4242));
    braid_log_emit(lg, BRAID_LOG_INFO, "app", braid_log_no_fields, "in a request");
    BT_UEQ(s.last_req, 4242);
    braid_ctx_pop(&sc);
    braid_log_emit(lg, BRAID_LOG_INFO, "app", braid_log_no_fields, "outside");
    BT_UEQ(s.last_req, 0);
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

BT_TEST(rate_limit_per_call_site) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_logger *lg = braid_loop_logger(loop);
    seen s = { 0 };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(lg, on_event, &s, &o));
    for (int i = 0; i < 10; i++)
        BRAID_LOG_RATELIMITED(lg, 0, 3, BRAID_LOG_WARN, "app", braid_log_no_fields, "flood %d", i);
    BT_EQ(s.n, 3);                /* a burst of 3, no refill */
    braid_log_limit l = { 0 };
    uint64_t sup = 99;
    BT_TRUE(braid_log_limit_take(&l, 0, 1, &sup));
    BT_UEQ(sup, 0);
    BT_FALSE(braid_log_limit_take(&l, 0, 1, &sup));
    BT_FALSE(braid_log_limit_take(&l, 0, 1, &sup));
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

/* ---- 16 threads ------------------------------------------------------------------------- */
enum { THREADS = 16 };
typedef struct tharg {
    braid_logger *lg;
    int id, n;
} tharg;
static void *emitter(void *arg) {
    tharg *t = arg;
    for (int i = 0; i < t->n; i++)
        braid_log_emit(t->lg, BRAID_LOG_INFO, "app.worker",
                       braid_log_fields(BRAID_LOG_I64("thread", t->id), BRAID_LOG_I64("i", i)), "event %d", i);
    return NULL;
}
typedef struct tally {
    int n;
    int per_thread[THREADS];
    bool all_from_thread;
} tally;
static void on_thread_event(const braid_log_event *ev, void *arg) {
    tally *t = arg;
    t->n++;
    if (!ev->from_thread) t->all_from_thread = false;
    if (ev->nfields == 2 && ev->fields[0].v.i64 >= 0 && ev->fields[0].v.i64 < THREADS)
        t->per_thread[ev->fields[0].v.i64]++;
}

static void run_threads(braid_logger *lg, int per) {
    pthread_t th[THREADS];
    tharg a[THREADS];
    for (int i = 0; i < THREADS; i++) {
        a[i] = (tharg){ lg, i, per };
        BT_EQ(pthread_create(&th[i], NULL, emitter, &a[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) pthread_join(th[i], NULL);
}

BT_TEST(sixteen_threads_below_the_bound_lose_nothing) {
    braid_loop *loop;
    BT_OK(braid_loop_new(&(braid_loop_options){ .log_queue_limit = THREADS * 50 }, &loop));
    braid_logger *lg = braid_loop_logger(loop);
    tally t = { .all_from_thread = true };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(lg, on_thread_event, &t, &o));
    run_threads(lg, 50);                       /* exactly the bound, loop not running */
    BT_RUN_UNTIL(loop, t.n == THREADS * 50, 100);
    BT_TRUE(t.all_from_thread);
    for (int i = 0; i < THREADS; i++) BT_EQ(t.per_thread[i], 50);
    braid_logger_stats st;
    braid_logger_stats_get(lg, &st);
    BT_UEQ(st.dropped, 0);
    BT_UEQ(st.queued, THREADS * 50);
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

BT_TEST(sixteen_threads_above_the_bound_count_the_drops) {
    braid_loop *loop;
    BT_OK(braid_loop_new(&(braid_loop_options){ .log_queue_limit = 100 }, &loop));
    braid_logger *lg = braid_loop_logger(loop);
    tally t = { .all_from_thread = true };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(lg, on_thread_event, &t, &o));
    run_threads(lg, 40);                       /* 640 events into a queue of 100, loop not running */
    BT_RUN_UNTIL(loop, t.n == 100, 100);
    bt_spin(loop, 2);
    braid_logger_stats st;
    braid_logger_stats_get(lg, &st);
    BT_EQ(t.n, 100);
    BT_UEQ(st.queued, 100);
    BT_UEQ(st.dropped, THREADS * 40 - 100);
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}


/* ---- pool threads and stages ------------------------------------------------------------ */
/* Events emitted by a pool job and by a stage handler running on a pool
 * domain's thread reach the loop's observers through the queue, marked as
 * from a thread and carrying the request id of the context the work was
 * queued in (the pool job's and the stage event's context hops). */
typedef struct from_pool {
    int n;
    bool all_from_thread;
    uint64_t req[2];           /* by field "who": 0 the pool job, 1 the stage */
} from_pool;
static void on_pool_event(const braid_log_event *ev, void *arg) {
    from_pool *f = arg;
    f->n++;
    if (!ev->from_thread) f->all_from_thread = false;
    if (ev->nfields == 1 && ev->fields[0].v.i64 >= 0 && ev->fields[0].v.i64 < 2) f->req[ev->fields[0].v.i64] = ev->request_id;
}
static braid_logger *pool_lg;
static void pool_job_logs(void *arg) {
    (void)arg;
    braid_log_emit(pool_lg, BRAID_LOG_INFO, "app.job", braid_log_fields(BRAID_LOG_I64("who", 0)), "from a pool job");
}
static void stage_logs(braid_stage *st, braid_stage_event *evs, size_t n, void *arg) {
    (void)st;
    (void)evs;
    (void)arg;
    for (size_t i = 0; i < n; i++)
        braid_log_emit(pool_lg, BRAID_LOG_INFO, "app.stage", braid_log_fields(BRAID_LOG_I64("who", 1)), "from a stage");
}

BT_TEST(pool_job_and_stage_thread_events_reach_the_observers) {
    braid_loop *loop = bt_loop_new(NULL);
    pool_lg = braid_loop_logger(loop);
    from_pool f = { .all_from_thread = true };
    braid_log_observer *o;
    BT_OK(braid_logger_add_callback(pool_lg, on_pool_event, &f, &o));
    braid_pool *pool;
    BT_OK(braid_pool_new(&(braid_pool_options){ .name = "logpool", .loop = loop, .max_threads = 2 }, &pool));
    braid_stage_domain *d;
    BT_OK(braid_stage_domain_new(loop, pool, NULL, &d));
    braid_stage *st;
    BT_OK(braid_stage_new(d, "logs", stage_logs, NULL, NULL, &st));
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_u64(&s, &braid_log_request_id_key, 41));
    BT_OK(braid_pool_call(pool, pool_job_logs, NULL));
    braid_ctx_pop(&s);
    BT_OK(braid_ctx_push_u64(&s, &braid_log_request_id_key, 42));
    static int ev;
    braid_stage_event e = BRAID_STAGE_EVENT(&ev, NULL);
    BT_OK(braid_stage_enqueue(st, &e));
    braid_ctx_pop(&s);
    BT_RUN_UNTIL(loop, f.n == 2, 1000);
    BT_TRUE(f.all_from_thread);
    BT_UEQ(f.req[0], 41);
    BT_UEQ(f.req[1], 42);
    braid_logger_stats ls;
    braid_logger_stats_get(pool_lg, &ls);
    BT_UEQ(ls.queued, 2);
    BT_UEQ(ls.dropped, 0);
    braid_stage_free(st);
    braid_stage_domain_free(d);
    bt_drain(loop);
    braid_pool_free(pool);
    braid_log_observer_remove(o);
    bt_loop_destroy(loop);
}

/* ---- allocation failures ------------------------------------------------------------------ */
static int walk_body(void *arg) {
    braid_loop *loop = arg;
    braid_logger *lg = braid_loop_logger(loop);
    braid_log_observer *ring, *cb;
    seen s = { 0 };
    int rc = braid_logger_add_ring(lg, 4, &ring);
    if (rc < 0) return rc;
    rc = braid_logger_add_callback(lg, on_event, &s, &cb);
    if (rc < 0) {
        braid_log_observer_remove(ring);
        return rc;
    }
    rc = braid_logger_set_level(lg, "app.walk", BRAID_LOG_DEBUG);
    if (rc == 0) {
        braid_log_emit(lg, BRAID_LOG_DEBUG, "app.walk", braid_log_no_fields, "x");
        if (s.n != 1) rc = -9999;
    }
    braid_log_observer_remove(ring);
    braid_log_observer_remove(cb);
    return rc;
}

BT_TEST(alloc_walk_observers_and_filters) {
    braid_loop *loop = bt_loop_new(NULL);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "log", .arg = loop, .body = walk_body,
                                                 .loop = loop, .enomem_only = true, .warm_up = true });
    BT_GE(r.errors, 2);
    bt_loop_destroy(loop);
}

/* An observer nobody will remove may be added without a handle (out NULL):
 * it works, and goes with the loop (the leak gate checks). */
BT_TEST(observer_without_handle) {
    braid_loop *loop = bt_loop_new(NULL);
    int p[2];
    BT_EQ(pipe(p), 0);
    braid_logger *lg = braid_loop_logger(loop);
    BT_OK(braid_logger_add_json(lg, p[1], NULL));
    BT_EQ(braid_logger_add_json(lg, -1, NULL), BRAID_EINVAL);
    braid_log_emit(lg, BRAID_LOG_WARN, "app", braid_log_no_fields, "hello %d", 7);
    char buf[512] = { 0 };
    ssize_t n = read(p[0], buf, sizeof buf - 1);
    BT_GT(n, 0);
    BT_TRUE(strstr(buf, "\"msg\":\"hello 7\"") != NULL);
    bt_loop_destroy(loop);
    close(p[0]);
    close(p[1]);
}
