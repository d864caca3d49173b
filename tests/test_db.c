/* libbraid-db: interactions on real SQLite files and a real, throwaway
 * PostgreSQL server (one per test process, stopped by its watchdog even when
 * a case fails). No mock database anywhere.
 *
 * Worker threads and the loop share only atomics here (TSan runs this file). */
// ctest-labels: threads
#include "harness.h"
#include "support/json.h"
#include "support/net.h"
#include "support/run.h"
#include "support/walk.h"

#include <braid/db.h>
#include <braid/pool.h>
#include <braid/protocol.h>
#include <braid/stream.h>
#include <braid/time.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ----------------------------------------------------------------------------- */
static char tmpdir[64];
static void rm_tmpdir(void) {
    if (!tmpdir[0]) return;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
}
/* "sqlite:<fresh dir>/name" */
static const char *sqlite_url(const char *name) {
    static char url[160];
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/braid-dbtest-XXXXXX");
        if (!mkdtemp(tmpdir)) bt_fail(__FILE__, __LINE__, "mkdtemp");
        atexit(rm_tmpdir);
    }
    snprintf(url, sizeof url, "sqlite:%s/%s", tmpdir, name);
    return url;
}

static braid_db_pg_cluster *cluster;
static void stop_cluster(void) {
    braid_db_pg_cluster_stop(cluster);
    cluster = NULL;
}
static const char *pg_url(void) {
    if (!cluster) {
        char why[512];
        int rc = braid_db_pg_cluster_start(NULL, &cluster, why, sizeof why);
        if (rc == BRAID_ENOSYS) bt_skip(why);
        if (rc < 0) bt_fail(__FILE__, __LINE__, "cluster: %s (%s)", braid_strerror(rc), why);
        atexit(stop_cluster);
    }
    return braid_db_pg_cluster_url(cluster);
}

/* A Deferred's outcome, recorded on the loop. */
typedef struct outcome {
    int fired;
    int code;                    /* 0 or the failure's */
    char msg[512];
    char sqlstate[6];
    void *value;
    uint64_t released_before;    /* messages delivered when it fired */
} outcome;

static _Atomic uint64_t delivered_total;

/* Values the Deferreds delivered, freed at exit (tests read them after). */
static braid_result kept[256];
static int nkept;
static void free_kept(void) {
    for (int i = 0; i < nkept; i++) braid_result_drop(kept[i]);
    nkept = 0;
}
/* The leak gate, after dropping the values kept. */
static void db_done(braid_loop *loop) {
    free_kept();
    bt_loop_destroy(loop);
}
static braid_result on_ok(braid_result r, void *arg) {
    outcome *o = arg;
    o->fired++;
    o->code = 0;
    o->value = r.value;
    o->released_before = atomic_load(&delivered_total);
    if (r.dtor) {
        if (nkept == 0) atexit(free_kept);
        if (nkept == 256) bt_fail(__FILE__, __LINE__, "too many values kept");
        kept[nkept++] = r;
    }
    return braid_result_ok(NULL);
}
static braid_result on_err(braid_result r, void *arg) {
    outcome *o = arg;
    o->fired++;
    o->code = r.failure->code;
    braid_failure_format(r.failure, o->msg, sizeof o->msg);
    if (!braid_db_sqlstate(r.failure, o->sqlstate)) o->sqlstate[0] = 0;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}
static void watch(braid_deferred *d, outcome *o) {
    BT_TRUE(d != NULL);
    memset(o, 0, sizeof *o);
    BT_OK(braid_deferred_add(d, on_ok, on_err, o));
    braid_deferred_unref(d);
}
static void run_until_fired(braid_loop *loop, outcome *o) {
    volatile int *f = &o->fired;
    bt_run_until(loop, f, 100000);
    BT_EQ(o->fired, 1);
}

static braid_result run_sql(braid_txn *txn, void *sql) {
    if (braid_txn_exec(txn, sql, NULL, 0) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}
static void exec_ok(braid_loop *loop, braid_db *db, const char *sql) {
    outcome o;
    watch(braid_db_run_interaction(db, run_sql, (void *)sql, NULL), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s: %s", sql, o.msg);
}

/* Messages: a callback target recording what it got, and a free function counting. */
#define MAXREC 4096
typedef struct recorder {
    int n;
    int64_t v[MAXREC];
} recorder;
static void record(void *data, size_t len, void *arg) {
    recorder *r = arg;
    BT_EQ(len, sizeof(int64_t));
    if (r->n < MAXREC) memcpy(&r->v[r->n++], data, sizeof(int64_t));
    atomic_fetch_add(&delivered_total, 1);
}
static _Atomic long freed_msgs;
static void count_free(void *p) {
    atomic_fetch_add(&freed_msgs, 1);
    free(p);
}
static int emit_int(braid_txn *txn, braid_db_target *t, int64_t v) {
    int64_t *p = malloc(sizeof *p);
    *p = v;
    return braid_txn_emit(txn, t, p, sizeof *p, count_free);
}

/* ---- SQLite: basics -------------------------------------------------------------------------- */
static braid_result typed_rows(braid_txn *txn, void *arg) {
    (void)arg;
    if (braid_txn_exec(txn, "CREATE TABLE t (i INTEGER, f REAL, s TEXT, b BLOB, n INTEGER)", NULL, 0) < 0)
        return braid_txn_failure(txn);
    static const char blob[3] = { 0, 1, 2 };
    braid_db_value p[] = { BRAID_DB_INT(42), BRAID_DB_DOUBLE(2.5), BRAID_DB_STR("it's; DROP TABLE t"),
                           BRAID_DB_BLOBN(blob, 3), BRAID_DB_NULLV };
    /* parameters out of order: $2 before $1 in the text */
    if (braid_txn_exec(txn, "INSERT INTO t (f, i, s, b, n) VALUES ($2, $1, $3, $4, $5)", p, 5) != 1)
        return braid_txn_failure(txn);
    BT_OK(braid_txn_query(txn, "SELECT i, f, s, b, n FROM t WHERE i = $1", p, 1));
    BT_EQ(braid_txn_step(txn), 1);
    BT_EQ(braid_txn_columns(txn), 5);
    BT_EQ(braid_txn_column_type(txn, 0), BRAID_DB_INTEGER);
    BT_EQ(braid_txn_column_int(txn, 0), 42);
    BT_EQ(braid_txn_column_type(txn, 1), BRAID_DB_FLOAT);
    BT_TRUE(braid_txn_column_double(txn, 1) == 2.5);
    size_t len;
    BT_EQ(braid_txn_column_type(txn, 2), BRAID_DB_TEXT);
    BT_STREQ(braid_txn_column_text(txn, 2, &len), "it's; DROP TABLE t");
    BT_EQ(braid_txn_column_type(txn, 3), BRAID_DB_BLOB);
    const char *b = braid_txn_column_blob(txn, 3, &len);
    BT_EQ(len, 3);
    BT_TRUE(!memcmp(b, blob, 3));
    BT_EQ(braid_txn_column_type(txn, 4), BRAID_DB_NULL);
    BT_EQ(braid_txn_column_type(txn, 9), BRAID_DB_NULL);   /* out of range reads as NULL */
    BT_EQ(braid_txn_step(txn), 0);
    int64_t *out = malloc(sizeof *out);
    *out = 7;
    return braid_result_ok_owned(out, free);
}

BT_TEST(sqlite_typed_rows_bound_parameters) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("typed.db"), NULL, &db));
    BT_STREQ(braid_db_engine(db), "sqlite");
    outcome o;
    watch(braid_db_run_interaction(db, typed_rows, NULL, NULL), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    BT_EQ(*(int64_t *)o.value, 7);   /* fn's result is the Deferred's */
    /* the table is intact: the text was bound, not spliced */
    outcome q;
    braid_db_value p = BRAID_DB_STR("it's; DROP TABLE t");
    watch(braid_db_query(db, "SELECT count(*), max(s) FROM t WHERE s = $1", &p, 1), &q);
    run_until_fired(loop, &q);
    BT_EQ(q.code, 0);
    braid_db_rows *rows = q.value;
    BT_EQ(rows->rows, 1);
    BT_EQ(rows->columns, 2);
    BT_EQ(braid_db_rows_cell(rows, 0, 0)->u.i, 1);
    BT_STREQ(braid_db_rows_cell(rows, 0, 1)->u.s.p, "it's; DROP TABLE t");
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(sqlite_bad_url) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db = NULL;
    BT_ERR(braid_db_open(loop, "mysql://x", NULL, &db), BRAID_EDB_URL);
    BT_ERR(braid_db_open(loop, "sqlite:", NULL, &db), BRAID_EDB_URL);
    BT_TRUE(db == NULL);
    BT_STREQ(braid_strerror(BRAID_EDB_URL), "db: not a database URL braid knows");
    db_done(loop);
}

BT_TEST(sqlite_error_has_driver_text) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("err.db"), NULL, &db));
    outcome o;
    watch(braid_db_run_interaction(db, run_sql, "SELEC 1", NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_SQL);
    if (!strstr(o.msg, "near \"SELEC\": syntax error")) bt_fail(__FILE__, __LINE__, "message: %s", o.msg);
    watch(braid_db_run_interaction(db, run_sql, "SELECT * FROM nowhere", NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_SQL);
    if (!strstr(o.msg, "no such table: nowhere")) bt_fail(__FILE__, __LINE__, "message: %s", o.msg);
    BT_EQ(o.sqlstate[0], 0);   /* SQLite has no SQLSTATE */
    braid_db_free(db);
    db_done(loop);
}

/* ---- commit releases, in order ------------------------------------------------------------------ */
typedef struct counter_arg {
    braid_db_target *target;
    int emits;
} counter_arg;

/* Increment the counter and emit (value*10 + k) for k < emits: the released
 * stream must come in counter order, and within one transaction in emit order. */
static braid_result bump(braid_txn *txn, void *arg) {
    counter_arg *a = arg;
    if (braid_txn_exec(txn, "UPDATE counter SET v = v + 1", NULL, 0) != 1) return braid_txn_failure(txn);
    int64_t v;
    if (braid_txn_query_int(txn, "SELECT v FROM counter", NULL, 0, &v) != 1) return braid_txn_failure(txn);
    for (int k = 0; k < a->emits; k++)
        if (emit_int(txn, a->target, v * 10 + k) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

static void commit_order_case(braid_loop *loop, braid_db *db, int n) {
    exec_ok(loop, db, "CREATE TABLE counter (v BIGINT)");
    exec_ok(loop, db, "INSERT INTO counter VALUES (0)");
    static recorder rec;
    rec.n = 0;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    counter_arg a = { &t, 3 };
    enum { N = 200 };
    static outcome o[N];
    if (n > N) n = N;
    atomic_store(&freed_msgs, 0);
    for (int i = 0; i < n; i++) watch(braid_db_run_interaction(db, bump, &a, NULL), &o[i]);
    for (int i = 0; i < n; i++) {
        run_until_fired(loop, &o[i]);
        BT_EQ(o[i].code, 0);
        /* its messages were out before it fired */
        BT_GE(o[i].released_before, 3);
    }
    BT_EQ(rec.n, 3 * n);
    for (int i = 0; i < rec.n; i++) BT_EQ(rec.v[i], (int64_t)(i / 3 + 1) * 10 + i % 3);
    BT_EQ(atomic_load(&freed_msgs), 3 * n);   /* each freed once, after delivery */
    BT_UEQ(t.delivered, 3 * n);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.released, 3 * n);
}

BT_TEST(sqlite_commit_releases_in_commit_order) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 4 };
    BT_OK(braid_db_open(loop, sqlite_url("order.db"), &opts, &db));
    commit_order_case(loop, db, 200);
    braid_db_free(db);
    db_done(loop);
}

/* ---- rollback: fn failure, statement failure, commit failure ------------------------------------- */
typedef struct rb_arg {
    braid_db_target *target;
    int mode;   /* 0 fn fails, 1 statement fails (fn says ok), 2 commit fails */
} rb_arg;

static braid_result rollback_fn(braid_txn *txn, void *arg) {
    rb_arg *a = arg;
    for (int k = 0; k < 5; k++) emit_int(txn, a->target, k);
    if (braid_txn_exec(txn, "INSERT INTO acct VALUES (1, 100)", NULL, 0) != 1) return braid_txn_failure(txn);
    switch (a->mode) {
    case 0:
        return braid_result_errf(BRAID_EINVAL, "insufficient funds");
    case 1:
        (void)braid_txn_exec(txn, "INSERT INTO nowhere VALUES (1)", NULL, 0);
        return braid_result_ok(NULL);   /* ignores the failure: the rollback must happen anyway */
    default:
        /* a deferred foreign key: the violation is found at COMMIT */
        if (braid_txn_exec(txn, "INSERT INTO xfer VALUES (1, 999)", NULL, 0) != 1) return braid_txn_failure(txn);
        return braid_result_ok(NULL);
    }
}

BT_TEST(sqlite_rollback_drops_each_message_once) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("rb.db"), NULL, &db));
    exec_ok(loop, db, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)");
    exec_ok(loop, db, "CREATE TABLE xfer (id INTEGER, acct INTEGER REFERENCES acct(id) "
                      "DEFERRABLE INITIALLY DEFERRED)");
    static recorder rec;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    static const int want[] = { BRAID_EINVAL, BRAID_EDB_SQL, BRAID_EDB_CONSTRAINT };
    static const char *const text[] = { "insufficient funds", "no such table: nowhere", "FOREIGN KEY" };
    for (int mode = 0; mode < 3; mode++) {
        atomic_store(&freed_msgs, 0);
        rb_arg a = { &t, mode };
        outcome o;
        watch(braid_db_run_interaction(db, rollback_fn, &a, NULL), &o);
        run_until_fired(loop, &o);
        BT_ERR(o.code, want[mode]);
        if (!strstr(o.msg, text[mode])) bt_fail(__FILE__, __LINE__, "mode %d: %s", mode, o.msg);
        BT_EQ(atomic_load(&freed_msgs), 5);
        BT_EQ(rec.n, 0);
        /* and the insert was rolled back */
        outcome q;
        watch(braid_db_query(db, "SELECT count(*) FROM acct", NULL, 0), &q);
        run_until_fired(loop, &q);
        BT_EQ(((braid_db_rows *)q.value)->cells[0].u.i, 0);
    }
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.dropped, 15);
    BT_UEQ(st.released, 0);
    braid_db_free(db);
    db_done(loop);
}

/* ---- nested: a delivery starts another interaction that emits ------------------------------------- */
typedef struct nest {
    braid_db *db;
    braid_db_target t;
    recorder rec;
    int depth;
    outcome o[8];
} nest;
static braid_result nest_fn(braid_txn *txn, void *arg) {
    nest *n = arg;
    return emit_int(txn, &n->t, 100) < 0 || emit_int(txn, &n->t, 101) < 0 ? braid_txn_failure(txn)
                                                                             : braid_result_ok(NULL);
}
static void nest_deliver(void *data, size_t len, void *arg) {
    nest *n = arg;
    record(data, len, &n->rec);
    if (n->rec.n % 2 == 1 && n->depth < 7) {   /* after the first message of each transaction */
        n->depth++;
        watch(braid_db_run_interaction(n->db, nest_fn, n, NULL), &n->o[n->depth]);
    }
}

BT_TEST(sqlite_nested_emits) {
    braid_loop *loop = bt_loop_new(NULL);
    static nest n;
    BT_OK(braid_db_open(loop, sqlite_url("nest.db"), NULL, &n.db));
    braid_db_target_init_callback(&n.t, nest_deliver, &n);
    watch(braid_db_run_interaction(n.db, nest_fn, &n, NULL), &n.o[0]);
    for (int i = 0; i < 8; i++) run_until_fired(loop, &n.o[i]);
    BT_EQ(n.rec.n, 16);
    for (int i = 0; i < 16; i++) BT_EQ(n.rec.v[i], 100 + i % 2);   /* never interleaved */
    braid_db_free(n.db);
    db_done(loop);
}

/* ---- retry: BUSY_SNAPSHOT, messages of the failed attempt dropped ----------------------------------- */
static char busy_path[200];
static braid_result snapshot_fn(braid_txn *txn, void *arg) {
    braid_db_target *t = arg;
    int64_t v;
    if (braid_txn_query_int(txn, "SELECT v FROM k", NULL, 0, &v) != 1) return braid_txn_failure(txn);
    emit_int(txn, t, 1000 + braid_txn_attempt(txn));
    if (braid_txn_attempt(txn) == 1) {
        /* another connection commits a write after our read: our snapshot is stale */
        sqlite3 *o;
        BT_EQ(sqlite3_open(busy_path, &o), SQLITE_OK);
        BT_EQ(sqlite3_exec(o, "UPDATE k SET v = v + 10", NULL, NULL, NULL), SQLITE_OK);
        sqlite3_close(o);
    }
    if (braid_txn_exec(txn, "UPDATE k SET v = v + 1", NULL, 0) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

static void busy_snapshot_case(unsigned flags, int want_code) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    const char *url = sqlite_url(want_code ? "busy1.db" : "busy2.db");
    snprintf(busy_path, sizeof busy_path, "%s", url + 7);
    BT_OK(braid_db_open(loop, url, NULL, &db));
    exec_ok(loop, db, "CREATE TABLE k (v INTEGER)");
    exec_ok(loop, db, "INSERT INTO k VALUES (0)");
    static recorder rec;
    rec.n = 0;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    atomic_store(&freed_msgs, 0);
    braid_db_run_options ro = { .flags = flags };
    outcome o;
    watch(braid_db_run_interaction(db, snapshot_fn, &t, &ro), &o);
    run_until_fired(loop, &o);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    if (want_code) {
        BT_ERR(o.code, want_code);
        if (!strstr(o.msg, "SQLITE_BUSY") && !strstr(o.msg, "locked"))
            bt_fail(__FILE__, __LINE__, "%s", o.msg);
        BT_EQ(rec.n, 0);
        BT_EQ(atomic_load(&freed_msgs), 1);
        BT_UEQ(st.retries, 0);
    } else {
        if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
        BT_EQ(rec.n, 1);
        BT_EQ(rec.v[0], 1002);                    /* only the attempt that committed */
        BT_EQ(atomic_load(&freed_msgs), 2);       /* attempt 1's at rollback, attempt 2's after delivery */
        BT_UEQ(st.retries, 1);
        outcome q;
        watch(braid_db_query(db, "SELECT v FROM k", NULL, 0), &q);
        run_until_fired(loop, &q);
        BT_EQ(((braid_db_rows *)q.value)->cells[0].u.i, 11);
    }
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(sqlite_busy_snapshot_fails_without_retryable) {
    busy_snapshot_case(BRAID_DB_READ_ONLY, BRAID_EDB_BUSY);
}
BT_TEST(sqlite_busy_snapshot_retried) {
    busy_snapshot_case(BRAID_DB_READ_ONLY | BRAID_DB_RETRYABLE, 0);
}

/* BUSY at BEGIN IMMEDIATE: another process-like connection holds the write
 * lock throughout; every attempt times out; the error says so. */
BT_TEST(sqlite_busy_retries_bounded) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    const char *url = sqlite_url("lock.db");
    braid_db_options opts = { .busy_timeout = BRAID_MSEC(20), .max_attempts = 3 };
    BT_OK(braid_db_open(loop, url, &opts, &db));
    exec_ok(loop, db, "CREATE TABLE k (v INTEGER)");
    sqlite3 *holder;
    BT_EQ(sqlite3_open(url + 7, &holder), SQLITE_OK);
    BT_EQ(sqlite3_exec(holder, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    braid_db_run_options ro = { .flags = BRAID_DB_RETRYABLE };
    outcome o;
    watch(braid_db_run_interaction(db, run_sql, "INSERT INTO k VALUES (1)", &ro), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_BUSY);
    if (!strstr(o.msg, "gave up after 3 attempts")) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.retries, 2);
    sqlite3_exec(holder, "ROLLBACK", NULL, NULL, NULL);
    sqlite3_close(holder);
    exec_ok(loop, db, "INSERT INTO k VALUES (2)");   /* and the db works again */
    braid_db_free(db);
    db_done(loop);
}

/* ---- deadlines, queue full, shutdown ------------------------------------------------------------- */
static _Atomic int started;
static _Atomic int gate;   /* 1: let blocked interactions go */

static braid_result long_query(braid_txn *txn, void *arg) {
    braid_db_target *t = arg;
    if (t) emit_int(txn, t, 1);
    atomic_store(&started, 1);
    const char *sql = !strcmp(braid_txn_engine(txn), "sqlite")
        ? "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
        : "SELECT pg_sleep(60)";
    if (braid_txn_exec(txn, sql, NULL, 0) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

static void wait_started(braid_loop *loop) {
    for (int i = 0; i < 100000 && !atomic_load(&started); i++) {
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    BT_TRUE(atomic_load(&started));
}

/* The worker's rollback comes after the Deferred failed: wait for it. */
static void wait_rolled_back(braid_loop *loop, braid_db *db, uint64_t n) {
    struct braid_db_stats st;
    for (int i = 0; i < 100000; i++) {
        braid_db_stats(db, &st);
        if (st.rolled_back >= n) return;
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    bt_fail(__FILE__, __LINE__, "no rollback after 10 s");
}

static void deadline_case(const char *url) {
    braid_fake_clock *clk = NULL;
    braid_fake_clock_new(BRAID_SECONDS(1), &clk);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(clk));
    braid_db *db;
    BT_OK(braid_db_open(loop, url, NULL, &db));
    static recorder rec;
    rec.n = 0;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    atomic_store(&started, 0);
    atomic_store(&freed_msgs, 0);
    braid_db_run_options ro = { .timeout = BRAID_SECONDS(2) };
    outcome o;
    watch(braid_db_run_interaction(db, long_query, &t, &ro), &o);
    wait_started(loop);
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(1)));
    BT_EQ(o.fired, 0);   /* not yet */
    BT_OK(braid_loop_advance(loop, BRAID_SECONDS(1)));
    BT_EQ(o.fired, 1);   /* at the deadline, in that timer phase */
    BT_ERR(o.code, BRAID_ETIMEDOUT);
    wait_rolled_back(loop, db, 1);
    BT_EQ(rec.n, 0);
    BT_EQ(atomic_load(&freed_msgs), 1);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.timed_out, 1);
    /* a deadline passed while still queued: never runs */
    exec_ok(loop, db, "SELECT 1");
    braid_db_free(db);
    db_done(loop);
    braid_fake_clock_free(clk);
}

BT_TEST(sqlite_deadline_interrupts) { deadline_case(sqlite_url("deadline.db")); }

/* fn blocks for a long time outside any statement (a computation, a sleep):
 * the Deferred still fails at the deadline, and the transaction, when fn
 * returns, rolls back instead of committing. */
static braid_result busy_outside_sql(braid_txn *txn, void *arg) {
    emit_int(txn, arg, 5);
    if (braid_txn_exec(txn, "INSERT INTO k VALUES (1)", NULL, 0) < 0) return braid_txn_failure(txn);
    atomic_store(&started, 1);
    while (!atomic_load(&gate)) {
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    return braid_result_ok(NULL);
}

BT_TEST(sqlite_deadline_while_fn_blocks) {
    braid_fake_clock *clk = NULL;
    braid_fake_clock_new(BRAID_SECONDS(1), &clk);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(clk));
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("blocks.db"), NULL, &db));
    exec_ok(loop, db, "CREATE TABLE k (v INTEGER)");
    static recorder rec;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    atomic_store(&started, 0);
    atomic_store(&gate, 0);
    atomic_store(&freed_msgs, 0);
    braid_db_run_options ro = { .timeout = BRAID_MSEC(500) };
    outcome o;
    watch(braid_db_run_interaction(db, busy_outside_sql, &t, &ro), &o);
    wait_started(loop);
    BT_OK(braid_loop_advance(loop, BRAID_MSEC(500)));
    BT_EQ(o.fired, 1);                 /* fn still blocks: the Deferred did not wait for it */
    BT_ERR(o.code, BRAID_ETIMEDOUT);
    atomic_store(&gate, 1);
    wait_rolled_back(loop, db, 1);
    BT_EQ(rec.n, 0);
    BT_EQ(atomic_load(&freed_msgs), 1);
    outcome q;
    watch(braid_db_query(db, "SELECT count(*) FROM k", NULL, 0), &q);
    run_until_fired(loop, &q);
    BT_EQ(((braid_db_rows *)q.value)->cells[0].u.i, 0);   /* rolled back, not committed */
    braid_db_free(db);
    db_done(loop);
    braid_fake_clock_free(clk);
}

static braid_result wait_gate(braid_txn *txn, void *arg) {
    (void)arg;
    atomic_store(&started, 1);
    while (!atomic_load(&gate)) {
        /* a statement now and then: an interruption (shutdown) is seen here */
        if (braid_txn_exec(txn, "SELECT 1", NULL, 0) < 0) return braid_txn_failure(txn);
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    return braid_result_ok(NULL);
}

BT_TEST(sqlite_queue_full_fails_fast) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 1, .queue_limit = 1 };
    BT_OK(braid_db_open(loop, sqlite_url("full.db"), &opts, &db));
    atomic_store(&started, 0);
    atomic_store(&gate, 0);
    outcome a, b, c;
    watch(braid_db_run_interaction(db, wait_gate, NULL, NULL), &a);
    wait_started(loop);                                   /* a runs: the queue is empty */
    watch(braid_db_run_interaction(db, wait_gate, NULL, NULL), &b);   /* queued */
    watch(braid_db_run_interaction(db, wait_gate, NULL, NULL), &c);   /* refused */
    BT_EQ(c.fired, 1);
    BT_ERR(c.code, BRAID_EQUEUE_FULL);
    atomic_store(&gate, 1);
    run_until_fired(loop, &a);
    run_until_fired(loop, &b);
    BT_EQ(a.code, 0);
    BT_EQ(b.code, 0);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.rejected, 1);
    braid_db_free(db);
    db_done(loop);
}

static void shutdown_case(const char *url) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 1 };
    BT_OK(braid_db_open(loop, url, &opts, &db));
    static recorder rec;
    rec.n = 0;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    atomic_store(&started, 0);
    atomic_store(&gate, 0);
    atomic_store(&freed_msgs, 0);
    enum { N = 6 };
    outcome o[N];
    counter_arg ca = { &t, 2 };
    watch(braid_db_run_interaction(db, wait_gate, NULL, NULL), &o[0]);
    for (int i = 1; i < N; i++) watch(braid_db_run_interaction(db, bump, &ca, NULL), &o[i]);
    wait_started(loop);
    braid_db_free(db);   /* o[0] interrupted, the rest never start */
    for (int i = 0; i < N; i++) {
        BT_EQ(o[i].fired, 1);
        BT_ERR(o[i].code, BRAID_ESHUTDOWN);
    }
    BT_EQ(rec.n, 0);
    BT_EQ(atomic_load(&freed_msgs), 0);   /* none of them got as far as emitting */
    /* nothing fires twice afterwards */
    for (int i = 0; i < 10; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    for (int i = 0; i < N; i++) BT_EQ(o[i].fired, 1);
    db_done(loop);
}

BT_TEST(sqlite_shutdown_with_interactions_in_flight) { shutdown_case(sqlite_url("shut.db")); }

/* The db freed from a callback of one of its own interactions, while other
 * answers wait in the same batch: they fire, nothing is used after free (ASan). */
static braid_db *freed_in_cb;
static braid_result free_db_cb(braid_result r, void *arg) {
    outcome *o = arg;
    o->fired++;
    braid_result_drop(r);
    braid_db_free(freed_in_cb);
    return braid_result_ok(NULL);
}
BT_TEST(sqlite_free_from_callback) {
    braid_loop *loop = bt_loop_new(NULL);
    BT_OK(braid_db_open(loop, sqlite_url("cbfree.db"), NULL, &freed_in_cb));
    outcome o[8];
    for (int i = 0; i < 8; i++) {
        braid_deferred *d = braid_db_run_interaction(freed_in_cb, run_sql, "SELECT 1", NULL);
        memset(&o[i], 0, sizeof o[i]);
        if (i == 0) BT_OK(braid_deferred_add(d, free_db_cb, free_db_cb, &o[i]));
        else BT_OK(braid_deferred_add(d, on_ok, on_err, &o[i]));
        braid_deferred_unref(d);
    }
    bt_run_until(loop, &o[0].fired, 100000);
    for (int i = 0; i < 8; i++) BT_EQ(o[i].fired, 1);   /* all of them, exactly once */
    db_done(loop);
}

/* ---- cancel ---------------------------------------------------------------------------------------- */
BT_TEST(sqlite_cancel_interrupts) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("cancel.db"), NULL, &db));
    atomic_store(&started, 0);
    braid_deferred *d = braid_db_run_interaction(db, long_query, NULL, NULL);
    BT_TRUE(d != NULL);
    outcome o;
    memset(&o, 0, sizeof o);
    BT_OK(braid_deferred_add(d, on_ok, on_err, &o));
    wait_started(loop);
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
    BT_EQ(o.fired, 1);
    BT_ERR(o.code, BRAID_ECANCELED);
    /* the worker was interrupted: the db is free again soon */
    exec_ok(loop, db, "SELECT 1");
    braid_db_free(db);
    db_done(loop);
}

/* ---- a transport target over a real socket, on every backend ----------------------------------------- */
typedef struct sink_proto {
    braid_protocol base;
    braid_db_target *target;
    int lost;
} sink_proto;
static void sink_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    sink_proto *s = (sink_proto *)p;
    s->lost = 1;
    braid_db_target_detach(s->target);
}
static const braid_protocol_ops sink_ops = { .connection_lost = sink_lost };

typedef struct tx_arg {
    braid_db_target *t;
    int fail;
    const char *text;
} tx_arg;
static braid_result send_text(braid_txn *txn, void *arg) {
    tx_arg *a = arg;
    BT_OK(braid_txn_emit_copy(txn, a->t, a->text, strlen(a->text)));
    if (a->fail) return braid_result_errf(BRAID_EINVAL, "rolled back");
    return braid_result_ok(NULL);
}

BT_IO_TEST(transport_target_writes_only_committed) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("tt.db"), NULL, &db));
    int sv[2];
    bt_socketpair(sv);
    braid_db_target t;
    sink_proto p = { .base.ops = &sink_ops, .target = &t };
    BT_OK(braid_transport_adopt(loop, sv[0], &p.base));
    braid_db_target_init_transport(&t, p.base.transport);
    const char *texts[] = { "one\n", "two\n", "three\n" };
    for (int i = 0; i < 3; i++) {
        tx_arg a = { &t, i == 1, texts[i] };
        outcome o;
        watch(braid_db_run_interaction(db, send_text, &a, NULL), &o);
        run_until_fired(loop, &o);
        BT_EQ(o.code, i == 1 ? BRAID_EINVAL : 0);
    }
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);   /* flush */
    char buf[64] = "";
    ssize_t got = 0;
    for (int i = 0; i < 1000 && got < 10; i++) {
        ssize_t r = recv(sv[1], buf + got, sizeof buf - 1 - (size_t)got, MSG_DONTWAIT);
        if (r > 0) got += r;
        else braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    }
    buf[got] = 0;
    BT_STREQ(buf, "one\nthree\n");
    BT_UEQ(t.delivered, 2);
    /* the peer goes away: later messages are dropped, counted, and freed */
    close(sv[1]);
    for (int i = 0; i < 100 && !p.lost; i++) {
        tx_arg a = { &t, 0, "late\n" };
        outcome o;
        watch(braid_db_run_interaction(db, send_text, &a, NULL), &o);
        run_until_fired(loop, &o);
    }
    BT_TRUE(p.lost);
    tx_arg a = { &t, 0, "after\n" };
    outcome o;
    watch(braid_db_run_interaction(db, send_text, &a, NULL), &o);
    run_until_fired(loop, &o);
    BT_UGE(t.dropped, 1);
    braid_db_free(db);
    db_done(loop);
}

/* ---- a stage target: commit order, rollback, a full stage ------------------------------------------ */
/* The stage's handler records the values and leaves the slots: the stage
 * frees them (count_free), once each. */
static void stage_record(braid_stage *st, braid_stage_event *ev, size_t n, void *arg) {
    (void)st;
    recorder *r = arg;
    for (size_t i = 0; i < n; i++)
        if (r->n < MAXREC) memcpy(&r->v[r->n++], ev[i].data, sizeof(int64_t));
}
static void run_until_handled(braid_loop *loop, recorder *r, int n) {
    for (int i = 0; i < 100000 && r->n < n; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(r->n, n);
}

BT_TEST(sqlite_stage_target) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options dbo = { .connections = 4 };
    BT_OK(braid_db_open(loop, sqlite_url("stage.db"), &dbo, &db));
    braid_stage_domain *dom;
    BT_OK(braid_stage_domain_new(loop, NULL, NULL, &dom));
    static recorder rec;
    rec.n = 0;
    braid_stage *st;
    braid_stage_options so = { .queue_limit = 1024 };
    BT_OK(braid_stage_new(dom, "sink", stage_record, &rec, &so, &st));
    braid_db_target t;
    braid_db_target_init_stage(&t, st);

    /* commit: 50 interactions x 3 messages reach the stage in commit order */
    exec_ok(loop, db, "CREATE TABLE counter (v BIGINT)");
    exec_ok(loop, db, "INSERT INTO counter VALUES (0)");
    exec_ok(loop, db, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal INTEGER)");
    atomic_store(&freed_msgs, 0);
    counter_arg a = { &t, 3 };
    enum { N = 50 };
    static outcome o[N];
    for (int i = 0; i < N; i++) watch(braid_db_run_interaction(db, bump, &a, NULL), &o[i]);
    for (int i = 0; i < N; i++) {
        run_until_fired(loop, &o[i]);
        BT_EQ(o[i].code, 0);
    }
    run_until_handled(loop, &rec, 3 * N);
    for (int i = 0; i < rec.n; i++) BT_EQ(rec.v[i], (int64_t)(i / 3 + 1) * 10 + i % 3);
    BT_EQ(atomic_load(&freed_msgs), 3 * N);   /* freed once each, by the stage */
    BT_UEQ(t.delivered, 3 * N);
    BT_UEQ(t.dropped, 0);

    /* rollback: nothing reaches the stage, each message freed once */
    atomic_store(&freed_msgs, 0);
    rb_arg ra = { &t, 0 };
    outcome ro;
    watch(braid_db_run_interaction(db, rollback_fn, &ra, NULL), &ro);
    run_until_fired(loop, &ro);
    BT_ERR(ro.code, BRAID_EINVAL);
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(atomic_load(&freed_msgs), 5);
    BT_EQ(rec.n, 3 * N);
    braid_stage_stats ss;
    braid_stage_stats_get(st, &ss);
    BT_UEQ(ss.arrivals, 3 * N);

    struct braid_db_stats ds;
    braid_db_stats(db, &ds);
    BT_UEQ(ds.released, 3 * N);
    BT_UEQ(ds.refused, 0);
    BT_UEQ(ds.dropped, 5);

    /* a full stage: queue_limit 1, one interaction of 3 messages. The first
     * is taken, the other two refused: freed once each and counted. */
    braid_stage *small;
    braid_stage_options so1 = { .queue_limit = 1 };
    static recorder rec1;
    rec1.n = 0;
    BT_OK(braid_stage_new(dom, "small", stage_record, &rec1, &so1, &small));
    braid_db_target t1;
    braid_db_target_init_stage(&t1, small);
    atomic_store(&freed_msgs, 0);
    counter_arg a1 = { &t1, 3 };
    outcome o1;
    watch(braid_db_run_interaction(db, bump, &a1, NULL), &o1);
    run_until_fired(loop, &o1);
    BT_EQ(o1.code, 0);   /* committed: a refused message does not undo the commit */
    BT_GE(atomic_load(&freed_msgs), 2);   /* the refused two (the stage may have run already) */
    BT_UEQ(t1.delivered, 1);
    BT_UEQ(t1.dropped, 2);
    BT_ERR(t1.last_error, BRAID_ESTAGE_FULL);
    run_until_handled(loop, &rec1, 1);
    BT_EQ(rec1.v[0], (int64_t)(N + 1) * 10);
    BT_EQ(atomic_load(&freed_msgs), 3);
    braid_db_stats(db, &ds);
    BT_UEQ(ds.released, 3 * N + 1);
    BT_UEQ(ds.refused, 2);
    braid_stage_stats_get(small, &ss);
    BT_UEQ(ss.rejected_full, 2);

    /* a closed stage refuses too */
    braid_stage_close(small);
    atomic_store(&freed_msgs, 0);
    a1.emits = 1;
    watch(braid_db_run_interaction(db, bump, &a1, NULL), &o1);
    run_until_fired(loop, &o1);
    BT_EQ(atomic_load(&freed_msgs), 1);
    BT_ERR(t1.last_error, BRAID_ESTAGE_CLOSED);

    braid_db_free(db);
    braid_stage_free(small);
    braid_stage_free(st);
    braid_stage_domain_free(dom);
    db_done(loop);
}

/* ---- the context hop: fn runs in the caller's context, its txn under braid_db_txn_key ----------------- */
static const braid_ctx_key test_user_key = BRAID_CTX_KEY_INIT("test.user", BRAID_CTX_STR, "who asked");
typedef struct ctx_seen {
    char user[16];
    bool txn_is_fn_txn;
    bool outside_null;
} ctx_seen;
static braid_result ctx_fn(braid_txn *txn, void *arg) {
    ctx_seen *s = arg;
    const char *u = braid_ctx_get_str(&test_user_key);
    snprintf(s->user, sizeof s->user, "%s", u ? u : "(none)");
    s->txn_is_fn_txn = braid_ctx_get_ptr(&braid_db_txn_key) == txn;
    /* the txn found in the context is usable: a statement through it */
    braid_txn *via = braid_ctx_get_ptr(&braid_db_txn_key);
    int64_t v = 0;
    if (!via || braid_txn_query_int(via, "SELECT 41 + 1", NULL, 0, &v) != 1 || v != 42)
        return braid_result_errf(BRAID_EINVAL, "the context's txn did not work");
    return braid_result_ok(NULL);
}

BT_TEST(sqlite_interaction_runs_in_callers_context) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("ctx.db"), NULL, &db));
    ctx_seen seen = { "", false, false };
    outcome o;
    braid_ctx_scope s;
    BT_OK(braid_ctx_push_str(&s, &test_user_key, "alice"));
    watch(braid_db_run_interaction(db, ctx_fn, &seen, NULL), &o);
    braid_ctx_pop(&s);   /* the interaction keeps the context it was started in */
    run_until_fired(loop, &o);
    BT_EQ(o.code, 0);
    BT_STREQ(seen.user, "alice");
    BT_TRUE(seen.txn_is_fn_txn);
    BT_TRUE(braid_ctx_get_ptr(&braid_db_txn_key) == NULL);   /* not on the loop's thread */
    braid_db_free(db);
    db_done(loop);
}


/* ---- the "databases" introspection section ---------------------------------------------------- */
/* An interaction that holds its connection until the test opens the gate. */
static _Atomic int gate_open, gate_entered;
static braid_result hold_fn(braid_txn *txn, void *arg) {
    (void)arg;
    if (braid_txn_exec(txn, "CREATE TABLE IF NOT EXISTS held (v INTEGER)", NULL, 0) < 0) return braid_txn_failure(txn);
    atomic_fetch_add(&gate_entered, 1);
    while (!atomic_load(&gate_open)) {
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    return braid_result_ok(NULL);
}

static double jnum(const bt_json *o, const char *k) {
    const bt_json *v = bt_json_get(o, k);
    if (bt_json_type(v) != BT_JSON_NUM) bt_fail(__FILE__, __LINE__, "member %s is not a number", k);
    return v->num;
}

/* One connection busy in a transaction, two interactions queued behind it,
 * then the counters once they are done (one of them fails). */
static void section_case(const char *url, const char *engine) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, url, &(braid_db_options){ .connections = 1, .name = "orders" }, &db));
    atomic_store(&gate_open, 0);
    atomic_store(&gate_entered, 0);
    outcome o[3];
    watch(braid_db_run_interaction(db, hold_fn, NULL, NULL), &o[0]);
    watch(braid_db_run_interaction(db, run_sql, "INSERT INTO held VALUES (1)", NULL), &o[1]);
    watch(braid_db_run_interaction(db, run_sql, "INSERT INTO no_such_table VALUES (1)", NULL), &o[2]);
    /* the thread does not need the loop to get there: wait for it here (10 s at most) */
    for (int i = 0; i < 50000 && atomic_load(&gate_entered) != 1; i++) {
        struct timespec ts = { 0, 200000 };
        nanosleep(&ts, NULL);
    }
    BT_EQ(atomic_load(&gate_entered), 1);

    bt_json *doc = bt_introspect_doc(loop);
    const bt_json *e = bt_json_named(doc, "databases", "orders");
    BT_TRUE(e != NULL);
    BT_STREQ(bt_json_get(e, "engine")->str, engine);
    if (!strcmp(engine, "sqlite")) BT_TRUE(strstr(bt_json_get(e, "target")->str, "section.db") != NULL);
    else BT_EQ(bt_json_type(bt_json_get(e, "target")), BT_JSON_NULL);   /* a conninfo may hold a password */
    BT_EQ((int)jnum(e, "max_connections"), 1);
    BT_EQ((int)jnum(e, "in_flight"), 3);
    BT_EQ((int)jnum(e, "queued"), 2);
    const bt_json *cs = bt_json_get(e, "connections");
    BT_EQ(bt_json_type(cs), BT_JSON_ARR);
    BT_EQ(cs->n, 1);
    const bt_json *c = bt_json_at(cs, 0);
    BT_STREQ(bt_json_get(c, "state")->str, "transaction");
    BT_TRUE(bt_json_get(c, "in_transaction")->b);
    BT_EQ((int)jnum(c, "attempt"), 1);
    jnum(c, "busy_ns");
    BT_EQ((int)jnum(e, "committed"), 0);
    bt_json_free(doc);
    /* the db's pool is in "pools" too, under the db's name */
    doc = bt_introspect_doc(loop);
    const bt_json *pools = bt_json_get(doc, "pools");
    BT_TRUE(pools != NULL && pools->n == 1);
    BT_STREQ(bt_json_get(bt_json_at(pools, 0), "name")->str, "orders");
    bt_json_free(doc);

    atomic_store(&gate_open, 1);
    for (int i = 0; i < 3; i++) run_until_fired(loop, &o[i]);
    BT_EQ(o[0].code, 0);
    BT_EQ(o[1].code, 0);
    BT_EQ(o[2].code, BRAID_EDB_SQL);
    doc = bt_introspect_doc(loop);
    e = bt_json_named(doc, "databases", "orders");
    BT_EQ((int)jnum(e, "in_flight"), 0);
    BT_EQ((int)jnum(e, "queued"), 0);
    BT_EQ((int)jnum(e, "committed"), 2);
    BT_EQ((int)jnum(e, "rolled_back"), 1);
    BT_EQ((int)jnum(e, "failed"), 1);
    BT_EQ((int)jnum(e, "retries"), 0);
    BT_EQ((int)jnum(e, "connects"), 1);
    cs = bt_json_get(e, "connections");
    BT_EQ(cs->n, 1);                                   /* still open, idle now */
    BT_STREQ(bt_json_get(bt_json_at(cs, 0), "state")->str, "idle");
    BT_EQ(bt_json_type(bt_json_get(bt_json_at(cs, 0), "busy_ns")), BT_JSON_NULL);
    bt_json_free(doc);
    braid_db_free(db);
    doc = bt_introspect_doc(loop);
    BT_TRUE(bt_json_get(doc, "databases") == NULL);
    bt_json_free(doc);
    db_done(loop);
}

BT_TEST(sqlite_introspection_section) { section_case(sqlite_url("section.db"), "sqlite"); }

/* ---- allocation failures ------------------------------------------------------------------------------ */
/* One scenario of the walk: open, an interaction that creates a table, one
 * that emits two messages, a braid_db_query; then free. Every Deferred fires
 * at most once; a committed bump delivered both messages; every delivered
 * message was freed. */
typedef struct walk_state {
    const char *url;
    braid_loop *loop;
    recorder rec;
    outcome o[3];
} walk_state;

static void walk_setup(void *arg) {
    walk_state *w = arg;
    w->loop = bt_loop_new(NULL);
}
static void walk_teardown(void *arg, int rc, bool injected) {
    walk_state *w = arg;
    (void)rc;
    (void)injected;
    db_done(w->loop);   /* the leak gate, every run */
}

static int walk_body(void *arg) {
    walk_state *w = arg;
    w->rec.n = 0;
    memset(w->o, 0, sizeof w->o);
    atomic_store(&freed_msgs, 0);
    braid_loop *loop = w->loop;
    braid_db *db = NULL;
    int rc = braid_db_open(loop, w->url, NULL, &db);
    if (rc == 0) {
        braid_db_target t;
        braid_db_target_init_callback(&t, record, &w->rec);
        counter_arg a = { &t, 2 };
        braid_db_value p = BRAID_DB_STR("walk");
        braid_deferred *d[3] = {
            braid_db_run_interaction(db, run_sql, "CREATE TABLE IF NOT EXISTS counter (v BIGINT)", NULL),
            braid_db_run_interaction(db, bump, &a, NULL),
            braid_db_query(db, "SELECT v, $1 FROM counter", &p, 1),
        };
        for (int i = 0; i < 3; i++) {
            if (!d[i]) continue;
            BT_OK(braid_deferred_add(d[i], on_ok, on_err, &w->o[i]));
            braid_deferred_unref(d[i]);
        }
        for (int i = 0; i < 3; i++)
            BT_RUN_UNTIL(loop, !d[i] || w->o[i].fired, 100000);
        braid_db_free(db);
        for (int i = 0; i < 3; i++) BT_LE(w->o[i].fired, 1);
        if (w->o[1].fired && w->o[1].code == 0) BT_EQ(w->rec.n, 2);
        else BT_EQ(w->rec.n, 0);
        BT_GE(atomic_load(&freed_msgs), w->rec.n);
    }
    return rc;
}

BT_TEST(alloc_failure_walk) {
    static walk_state w;
    w.url = sqlite_url("walk.db");
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "db", .arg = &w, .setup = walk_setup,
                                                 .body = walk_body, .teardown = walk_teardown,
                                                 .enomem_only = true });
    BT_GE(r.injected, 20);   /* the walk went through many allocation sites */
}

/* ---- PostgreSQL ------------------------------------------------------------------------------------------ */
/* A direct libpq connection to the test cluster, for what the db must not do
 * itself (terminating its backends). */
static PGconn *pg_direct(void) {
    PGconn *c = PQconnectdb(braid_db_pg_cluster_conninfo(cluster));
    if (PQstatus(c) != CONNECTION_OK) bt_fail(__FILE__, __LINE__, "direct: %s", PQerrorMessage(c));
    return c;
}
static void pg_direct_exec(const char *sql) {
    PGconn *c = pg_direct();
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
        bt_fail(__FILE__, __LINE__, "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

BT_TEST(pg_typed_rows_and_sqlstate) {
    const char *url = pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, url, NULL, &db));
    BT_STREQ(braid_db_engine(db), "postgresql");
    exec_ok(loop, db, "DROP TABLE IF EXISTS t");
    exec_ok(loop, db, "CREATE TABLE t (i BIGINT, f DOUBLE PRECISION, s TEXT, b BYTEA, n INT, ok BOOL)");
    static const char blob[3] = { 0, 1, 2 };
    braid_db_value p[] = { BRAID_DB_INT(42), BRAID_DB_DOUBLE(2.5), BRAID_DB_STR("it's; DROP TABLE t"),
                           BRAID_DB_BLOBN(blob, 3), BRAID_DB_NULLV };
    outcome o;
    watch(braid_db_query(db, "INSERT INTO t VALUES ($1, $2, $3, $4, $5, true)", p, 5), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    BT_EQ(((braid_db_rows *)o.value)->changed, 1);
    watch(braid_db_query(db, "SELECT i, f, s, b, n, ok FROM t WHERE s = $1", &p[2], 1), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    braid_db_rows *r = o.value;
    BT_EQ(r->rows, 1);
    BT_EQ(braid_db_rows_cell(r, 0, 0)->type, BRAID_DB_INTEGER);
    BT_EQ(braid_db_rows_cell(r, 0, 0)->u.i, 42);
    BT_EQ(braid_db_rows_cell(r, 0, 1)->type, BRAID_DB_FLOAT);
    BT_TRUE(braid_db_rows_cell(r, 0, 1)->u.f == 2.5);
    BT_STREQ(braid_db_rows_cell(r, 0, 2)->u.s.p, "it's; DROP TABLE t");
    BT_EQ(braid_db_rows_cell(r, 0, 3)->type, BRAID_DB_BLOB);
    BT_EQ(braid_db_rows_cell(r, 0, 3)->u.s.len, 3);
    BT_TRUE(!memcmp(braid_db_rows_cell(r, 0, 3)->u.s.p, blob, 3));
    BT_EQ(braid_db_rows_cell(r, 0, 4)->type, BRAID_DB_NULL);
    BT_EQ(braid_db_rows_cell(r, 0, 5)->u.i, 1);
    /* errors: the server's text and SQLSTATE */
    watch(braid_db_run_interaction(db, run_sql, "SELECT * FROM nowhere", NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_SQL);
    BT_STREQ(o.sqlstate, "42P01");
    if (!strstr(o.msg, "relation \"nowhere\" does not exist")) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    exec_ok(loop, db, "CREATE TABLE IF NOT EXISTS u (id INT PRIMARY KEY)");
    exec_ok(loop, db, "INSERT INTO u VALUES (1) ON CONFLICT DO NOTHING");
    watch(braid_db_run_interaction(db, run_sql, "INSERT INTO u VALUES (1)", NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_CONSTRAINT);
    BT_STREQ(o.sqlstate, "23505");
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(pg_commit_releases_in_commit_order) {
    const char *url = pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 4 };
    BT_OK(braid_db_open(loop, url, &opts, &db));
    exec_ok(loop, db, "DROP TABLE IF EXISTS counter");
    commit_order_case(loop, db, 200);
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(pg_rollback_on_statement_failure) {
    const char *url = pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, url, NULL, &db));
    exec_ok(loop, db, "DROP TABLE IF EXISTS xfer");
    exec_ok(loop, db, "DROP TABLE IF EXISTS acct");
    exec_ok(loop, db, "CREATE TABLE acct (id INT PRIMARY KEY, bal INT)");
    exec_ok(loop, db, "CREATE TABLE xfer (id INT, acct INT REFERENCES acct(id) DEFERRABLE INITIALLY DEFERRED)");
    static recorder rec;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    static const int want[] = { BRAID_EINVAL, BRAID_EDB_SQL, BRAID_EDB_CONSTRAINT };
    static const char *const states[] = { "", "42P01", "23503" };
    for (int mode = 0; mode < 3; mode++) {
        atomic_store(&freed_msgs, 0);
        rb_arg a = { &t, mode };
        outcome o;
        watch(braid_db_run_interaction(db, rollback_fn, &a, NULL), &o);
        run_until_fired(loop, &o);
        BT_ERR(o.code, want[mode]);
        BT_STREQ(o.sqlstate, states[mode]);
        BT_EQ(atomic_load(&freed_msgs), 5);
        BT_EQ(rec.n, 0);
    }
    braid_db_free(db);
    db_done(loop);
}

/* Write skew under SERIALIZABLE: two transactions read both rows, then each
 * writes one. One of them must fail with 40001; retried, both commit. */
static _Atomic int at_barrier;
static void barrier2(void) {
    atomic_fetch_add(&at_barrier, 1);
    for (int i = 0; i < 100000 && atomic_load(&at_barrier) < 2; i++) {
        struct timespec ts = { 0, 100000 };
        nanosleep(&ts, NULL);
    }
}
typedef struct skew_arg {
    braid_db_target *t;
    int id;
} skew_arg;
static braid_result skew_fn(braid_txn *txn, void *arg) {
    skew_arg *a = arg;
    int64_t sum;
    if (braid_txn_query_int(txn, "SELECT sum(v) FROM oncall", NULL, 0, &sum) != 1) return braid_txn_failure(txn);
    emit_int(txn, a->t, a->id * 10 + braid_txn_attempt(txn));
    if (braid_txn_attempt(txn) == 1) barrier2();
    braid_db_value p[] = { BRAID_DB_INT(sum + 1), BRAID_DB_INT(a->id) };
    if (braid_txn_exec(txn, "UPDATE oncall SET v = $1 WHERE id = $2", p, 2) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

/* Two interactions of fn on a db of 2 connections over the two-row table
 * "oncall", run until both fired; messages recorded in rec. */
static braid_db *race_two(braid_loop *loop, braid_txn_fn fn, unsigned flags, recorder *rec, outcome *o1,
                          outcome *o2) {
    braid_db *db;
    braid_db_options opts = { .connections = 2 };
    BT_OK(braid_db_open(loop, pg_url(), &opts, &db));
    exec_ok(loop, db, "DROP TABLE IF EXISTS oncall");
    exec_ok(loop, db, "CREATE TABLE oncall (id INT PRIMARY KEY, v INT)");
    exec_ok(loop, db, "INSERT INTO oncall VALUES (1, 0), (2, 0)");
    rec->n = 0;
    static braid_db_target t;
    braid_db_target_init_callback(&t, record, rec);
    atomic_store(&at_barrier, 0);
    atomic_store(&freed_msgs, 0);
    static skew_arg a1, a2;
    a1 = (skew_arg){ &t, 1 };
    a2 = (skew_arg){ &t, 2 };
    braid_db_run_options ro = { .flags = flags };
    watch(braid_db_run_interaction(db, fn, &a1, &ro), o1);
    watch(braid_db_run_interaction(db, fn, &a2, &ro), o2);
    run_until_fired(loop, o1);
    run_until_fired(loop, o2);
    return db;
}

static void skew_case(unsigned flags, bool expect_retry) {
    pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    static recorder rec;
    outcome o1, o2;
    braid_db *db = race_two(loop, skew_fn, flags, &rec, &o1, &o2);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    if (expect_retry) {
        if (o1.code || o2.code) bt_fail(__FILE__, __LINE__, "%s / %s", o1.msg, o2.msg);
        BT_UEQ(st.retries, 1);
        BT_EQ(rec.n, 2);
        /* the retried one's message says attempt 2, the other's attempt 1 */
        BT_EQ((rec.v[0] % 10) + (rec.v[1] % 10), 3);
        BT_EQ(atomic_load(&freed_msgs), 3);   /* one dropped with the failed attempt */
    } else {
        BT_TRUE((o1.code == BRAID_EDB_SERIALIZE) != (o2.code == BRAID_EDB_SERIALIZE));
        BT_STREQ(o1.code ? o1.sqlstate : o2.sqlstate, "40001");
        BT_EQ(rec.n, 1);
        BT_UEQ(st.retries, 0);
    }
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(pg_serialization_failure_reported) { skew_case(BRAID_DB_SERIALIZABLE, false); }
BT_TEST(pg_serialization_failure_retried) {
    skew_case(BRAID_DB_SERIALIZABLE | BRAID_DB_RETRYABLE, true);
}

/* Deadlock: each locks one row, then wants the other's. */
static braid_result deadlock_fn(braid_txn *txn, void *arg) {
    skew_arg *a = arg;
    if (braid_txn_exec(txn, "SET LOCAL deadlock_timeout = '20ms'", NULL, 0) < 0) return braid_txn_failure(txn);
    braid_db_value me = BRAID_DB_INT(a->id), other = BRAID_DB_INT(3 - a->id);
    if (braid_txn_exec(txn, "UPDATE oncall SET v = v + 1 WHERE id = $1", &me, 1) < 0) return braid_txn_failure(txn);
    emit_int(txn, a->t, a->id * 10 + braid_txn_attempt(txn));
    if (braid_txn_attempt(txn) == 1) barrier2();
    if (braid_txn_exec(txn, "UPDATE oncall SET v = v + 1 WHERE id = $1", &other, 1) < 0)
        return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

BT_TEST(pg_deadlock_retried) {
    pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    static recorder rec;
    outcome o1, o2;
    braid_db *db = race_two(loop, deadlock_fn, BRAID_DB_RETRYABLE, &rec, &o1, &o2);
    if (o1.code || o2.code) bt_fail(__FILE__, __LINE__, "%s / %s", o1.msg, o2.msg);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UGE(st.retries, 1);
    BT_EQ(rec.n, 2);
    outcome q;
    watch(braid_db_query(db, "SELECT sum(v) FROM oncall", NULL, 0), &q);
    run_until_fired(loop, &q);
    BT_EQ(((braid_db_rows *)q.value)->cells[0].u.i, 4);
    braid_db_free(db);
    db_done(loop);
}

/* The connection dies in the middle of a transaction. */
static braid_result killed_mid_txn(braid_txn *txn, void *arg) {
    braid_db_target *t = arg;
    int64_t pid;
    if (braid_txn_query_int(txn, "SELECT pg_backend_pid()", NULL, 0, &pid) != 1) return braid_txn_failure(txn);
    emit_int(txn, t, pid);
    char sql[80];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", (long long)pid);
    pg_direct_exec(sql);
    if (braid_txn_exec(txn, "SELECT 1", NULL, 0) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}
static braid_result backend_pid(braid_txn *txn, void *arg) {
    int64_t *pid = malloc(sizeof *pid);
    (void)arg;
    if (braid_txn_query_int(txn, "SELECT pg_backend_pid()", NULL, 0, pid) != 1) {
        free(pid);
        return braid_txn_failure(txn);
    }
    return braid_result_ok_owned(pid, free);
}

BT_TEST(pg_connection_lost_mid_transaction) {
    const char *url = pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 1 };
    BT_OK(braid_db_open(loop, url, &opts, &db));
    static recorder rec;
    rec.n = 0;
    braid_db_target t;
    braid_db_target_init_callback(&t, record, &rec);
    atomic_store(&freed_msgs, 0);
    outcome o;
    watch(braid_db_run_interaction(db, killed_mid_txn, &t, NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_CONN_LOST);
    BT_EQ(rec.n, 0);
    BT_EQ(atomic_load(&freed_msgs), 1);
    /* the thread reconnects for the next one */
    watch(braid_db_run_interaction(db, backend_pid, NULL, NULL), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.reconnects, 1);
    BT_UEQ(st.connects, 2);
    braid_db_free(db);
    db_done(loop);
}

/* The connection died while idle: found at BEGIN, nothing had happened, so
 * the thread reconnects and runs the interaction — no error for the caller. */
BT_TEST(pg_dead_idle_connection_reconnects) {
    const char *url = pg_url();
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    braid_db_options opts = { .connections = 1 };
    BT_OK(braid_db_open(loop, url, &opts, &db));
    outcome o;
    watch(braid_db_run_interaction(db, backend_pid, NULL, NULL), &o);
    run_until_fired(loop, &o);
    BT_EQ(o.code, 0);
    int64_t pid = *(int64_t *)o.value;
    char sql[80];
    snprintf(sql, sizeof sql, "SELECT pg_terminate_backend(%lld)", (long long)pid);
    pg_direct_exec(sql);
    struct timespec ts = { 0, 50000000 };   /* let the backend go (not a test of timing) */
    nanosleep(&ts, NULL);
    watch(braid_db_run_interaction(db, backend_pid, NULL, NULL), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    BT_NE(*(int64_t *)o.value, pid);
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    BT_UEQ(st.reconnects, 1);
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(pg_deadline_cancels_statement) { deadline_case(pg_url()); }
BT_TEST(pg_shutdown_with_interactions_in_flight) { shutdown_case(pg_url()); }

BT_TEST(pg_connect_failure_reported) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, "postgresql:host=/nonexistent-braid dbname=x connect_timeout=2", NULL, &db));
    outcome o;
    watch(braid_db_run_interaction(db, run_sql, "SELECT 1", NULL), &o);
    run_until_fired(loop, &o);
    BT_ERR(o.code, BRAID_EDB_CONNECT);
    if (!strstr(o.msg, "/nonexistent-braid")) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    braid_db_free(db);
    db_done(loop);
}

BT_TEST(pg_introspection_section) { section_case(pg_url(), "postgresql"); }

/* A run's timeout of BRAID_FOREVER is no deadline (now + BRAID_FOREVER used
 * to wrap around to a deadline in the past: BRAID_ETIMEDOUT at once), and a
 * busy timeout of BRAID_FOREVER opens (SQLite's longest wait, not a
 * negative int). */
BT_TEST(sqlite_forever_timeouts) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_db *db;
    BT_OK(braid_db_open(loop, sqlite_url("forever.db"),
                        &(braid_db_options){ .busy_timeout = BRAID_FOREVER }, &db));
    outcome o;
    watch(braid_db_run_interaction(db, typed_rows, NULL, &(braid_db_run_options){ .timeout = BRAID_FOREVER }), &o);
    run_until_fired(loop, &o);
    if (o.code) bt_fail(__FILE__, __LINE__, "%s", o.msg);
    BT_EQ(*(int64_t *)o.value, 7);
    braid_db_free(db);
    db_done(loop);
}
