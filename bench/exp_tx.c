/* tx: "Twisted Do-Over" (2005) in numbers — a whole transaction in a thread,
 * its messages released on commit, against a Deferred per SQL statement.
 *
 * Workload: bank transfers between 20 accounts of 100 units. A transfer
 * reads A (on PostgreSQL locking A and B in id order, SELECT … FOR UPDATE, so
 * transfers never deadlock), reads B, and if A's balance
 * allows, debits A, credits B, logs the transfer (xlog), and notifies a
 * subscriber over a socket ("<id>\n"). Clients (1, 8, 64) run transfers back
 * to back for a fixed time. Implementations, alternating run by run:
 *   braid-interaction    braid_db_run_interaction: the five statements as one
 *                        transaction, RETRYABLE, the notification emitted to a
 *                        transport target (released on commit)
 *   braid-per-statement  braid_db_query five times, each its own transaction
 *                        and Deferred (adbapi runQuery style); the notification
 *                        written in the last callback
 *   twisted-runInteraction / twisted-runQuery   the same with Twisted adbapi
 *                        (bench/peers/twisted_tx.py, python3-twisted, sqlite3
 *                        and psycopg2), the same pool size
 * on SQLite (a WAL file in /tmp, synchronous=NORMAL for both) and on
 * PostgreSQL (a throwaway cluster on a Unix socket, fsync off); 8 connections
 * on PostgreSQL, 1 on SQLite (one writer), the same for every implementation.
 * Reported: transfers/s, p50/p99 latency, and after every run the consistency
 * check — the sum of balances against the invariant (sum_drift), negative
 * balances, notifications of transfers that did not commit. A second pass
 * injects faults at 64 clients: the credit statement fails (a reference to a
 * missing table) for 5% of transfers, and on PostgreSQL a killer thread
 * terminates a random backend every 20 ms. */
#include "bench.h"

#ifdef BENCH_HAVE_DB
#include <braid.h>
#include <braid/db.h>
#include <braid/protocol.h>
#include <braid/stream.h>
#include <libpq-fe.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* few accounts with small balances: transfers contend, and a check-then-act
 * race shows as a negative balance */
#define ACCOUNTS 20
#define START_BAL 100
/* connections: PostgreSQL 8; SQLite 1 for everyone (one writer at a time; for
 * adbapi the documented cure of "database is locked", cowrie#40463) */
#define PG_CONNS 8
#define SQLITE_CONNS 1
#define MAXCLIENTS 64
#define MAXLAT (1 << 20)

enum { A_INTER, A_STMT, A_TW_INTER, A_TW_STMT, NARM };
static const char *const arm_names[NARM] = { "braid-interaction", "braid-per-statement",
                                             "twisted-runInteraction", "twisted-runQuery" };
static const int client_counts[] = { 1, 8, 64 };
#define NCLIENTS 3

typedef struct result {
    double tps, p50_us, p99_us;
    double sum_drift, negative, notified_uncommitted, committed, retries;
    double hung;             /* Twisted: clients whose transfer never completed (given up 10 s
                                after the deadline) */
    bool ok;
} result;

/* ---- the subscriber: reads "<id>\n" lines on its own thread ---------------------------- */
typedef struct subscriber {
    int fd;
    pthread_t th;
    int64_t *ids;
    size_t n, cap;
} subscriber;
static void *sub_main(void *arg) {
    subscriber *s = arg;
    char buf[65536];
    int64_t cur = 0;
    bool have = false;
    ssize_t r;
    while ((r = read(s->fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < r; i++) {
            if (buf[i] == '\n') {
                if (have) {
                    if (s->n == s->cap) {
                        s->cap = s->cap ? s->cap * 2 : 4096;
                        s->ids = realloc(s->ids, s->cap * sizeof *s->ids);
                    }
                    s->ids[s->n++] = cur;
                }
                cur = 0;
                have = false;
            } else {
                cur = cur * 10 + (buf[i] - '0');
                have = true;
            }
        }
    }
    return NULL;
}

/* ---- one braid measurement ------------------------------------------------------------- */
typedef struct sink {
    braid_protocol base;
    braid_db_target target;
    bool lost;
} sink;
static void sink_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    sink *s = (sink *)p;
    s->lost = true;
    braid_db_target_detach(&s->target);
}
static const braid_protocol_ops sink_ops = { .connection_lost = sink_lost };

struct bench_run;
typedef struct client {
    struct bench_run *run;
    int64_t id;
    int a, b, amount;
    bool fault;
    int step;
    int64_t bal;
    uint64_t t0;
} client;

typedef struct bench_run {
    braid_loop *loop;
    braid_db *db;
    bool pg;
    int arm, nclients;
    double faults;
    uint64_t deadline;       /* by time, or */
    long max_transfers;      /* by count (0: time) */
    sink sink;
    client clients[MAXCLIENTS];
    int running;
    int64_t next_id;
    long done;
    uint64_t *lat;
    size_t nlat;
    unsigned seed;
} bench_run;

static void client_next(client *c);

static void transfer_done(client *c) {
    bench_run *r = c->run;
    uint64_t now = bench_now_ns();
    if (r->nlat < MAXLAT) r->lat[r->nlat++] = now - c->t0;
    r->done++;
    client_next(c);
}

/* (b) locks both rows in id order on PostgreSQL: no deadlock between A->B and B->A */
#define SQL_READ_LOCK_PG "SELECT id, bal FROM acct WHERE id IN ($1, $2) ORDER BY id FOR UPDATE"
#define SQL_READ "SELECT bal FROM acct WHERE id = $1"
#define SQL_DEBIT "UPDATE acct SET bal = bal - $1 WHERE id = $2"
#define SQL_CREDIT "UPDATE acct SET bal = bal + $1 WHERE id = $2"
#define SQL_CREDIT_FAULT "UPDATE acct SET bal = bal + $1 WHERE id = $2 AND EXISTS (SELECT 1 FROM no_such_table)"
#define SQL_LOG "INSERT INTO xlog (id, a, b, amount) VALUES ($1, $2, $3, $4)"

/* (b): the whole transfer, one transaction */
static braid_result xfer_fn(braid_txn *txn, void *arg) {
    client *c = arg;
    bool pg = !strcmp(braid_txn_engine(txn), "postgresql");
    braid_db_value pa = BRAID_DB_INT(c->a), pb = BRAID_DB_INT(c->b);
    int64_t bal, balb;
    if (pg) {
        braid_db_value both[] = { pa, pb };
        if (braid_txn_query(txn, SQL_READ_LOCK_PG, both, 2) < 0) return braid_txn_failure(txn);
        bal = -1;
        int rc;
        while ((rc = braid_txn_step(txn)) == 1)
            if (braid_txn_column_int(txn, 0) == c->a) bal = braid_txn_column_int(txn, 1);
        if (rc < 0 || bal < 0) return braid_txn_failure(txn);
    } else if (braid_txn_query_int(txn, SQL_READ, &pa, 1, &bal) != 1) {
        return braid_txn_failure(txn);
    }
    if (braid_txn_query_int(txn, SQL_READ, &pb, 1, &balb) != 1) return braid_txn_failure(txn);
    if (bal < c->amount) return braid_result_ok(NULL);
    braid_db_value d[] = { BRAID_DB_INT(c->amount), BRAID_DB_INT(c->a) };
    braid_db_value cr[] = { BRAID_DB_INT(c->amount), BRAID_DB_INT(c->b) };
    braid_db_value lg[] = { BRAID_DB_INT(c->id), BRAID_DB_INT(c->a), BRAID_DB_INT(c->b), BRAID_DB_INT(c->amount) };
    if (braid_txn_exec(txn, SQL_DEBIT, d, 2) < 0) return braid_txn_failure(txn);
    if (braid_txn_exec(txn, c->fault ? SQL_CREDIT_FAULT : SQL_CREDIT, cr, 2) < 0) return braid_txn_failure(txn);
    if (braid_txn_exec(txn, SQL_LOG, lg, 4) < 0) return braid_txn_failure(txn);
    char line[32];
    int n = snprintf(line, sizeof line, "%lld\n", (long long)c->id);
    if (braid_txn_emit_copy(txn, &c->run->sink.target, line, (size_t)n) < 0) return braid_txn_failure(txn);
    return braid_result_ok(NULL);
}

static braid_result inter_done(braid_result res, void *arg) {
    braid_result_drop(res);
    transfer_done(arg);
    return braid_result_ok(NULL);
}

/* (a): five Deferreds, each statement its own transaction */
static void stmt_issue(client *c);
static braid_result stmt_ok(braid_result res, void *arg) {
    client *c = arg;
    braid_db_rows *rows = res.value;
    if (c->step == 0) c->bal = rows->rows ? rows->cells[0].u.i : 0;
    braid_result_drop(res);
    c->step++;
    if (c->step == 2 && c->bal < c->amount) {   /* not enough: done, nothing to say */
        transfer_done(c);
        return braid_result_ok(NULL);
    }
    if (c->step == 5) {
        char line[32];
        int n = snprintf(line, sizeof line, "%lld\n", (long long)c->id);
        if (c->run->sink.target.transport) braid_transport_write(c->run->sink.target.transport, line, (size_t)n);
        transfer_done(c);
        return braid_result_ok(NULL);
    }
    stmt_issue(c);
    return braid_result_ok(NULL);
}
static braid_result stmt_err(braid_result res, void *arg) {
    braid_result_drop(res);
    transfer_done(arg);
    return braid_result_ok(NULL);
}
static void stmt_issue(client *c) {
    bench_run *r = c->run;
    braid_db_value v[4];
    const char *sql;
    size_t n = 2;
    switch (c->step) {
    case 0: sql = SQL_READ; v[0] = BRAID_DB_INT(c->a); n = 1; break;
    case 1: sql = SQL_READ; v[0] = BRAID_DB_INT(c->b); n = 1; break;
    case 2: sql = SQL_DEBIT; v[0] = BRAID_DB_INT(c->amount); v[1] = BRAID_DB_INT(c->a); break;
    case 3:
        sql = c->fault ? SQL_CREDIT_FAULT : SQL_CREDIT;
        v[0] = BRAID_DB_INT(c->amount);
        v[1] = BRAID_DB_INT(c->b);
        break;
    default:
        sql = SQL_LOG;
        v[0] = BRAID_DB_INT(c->id); v[1] = BRAID_DB_INT(c->a); v[2] = BRAID_DB_INT(c->b); v[3] = BRAID_DB_INT(c->amount);
        n = 4;
        break;
    }
    braid_deferred *d = braid_db_query(r->db, sql, v, n);
    braid_deferred_add(d, stmt_ok, stmt_err, c);
    braid_deferred_unref(d);
}

static void client_next(client *c) {
    bench_run *r = c->run;
    uint64_t now = bench_now_ns();
    bool more = r->max_transfers ? r->next_id <= r->max_transfers : now < r->deadline;
    if (!more) {
        r->running--;
        if (r->running == 0) braid_loop_stop(r->loop);
        return;
    }
    c->id = r->next_id++;
    c->a = (int)(rand_r(&r->seed) % ACCOUNTS) + 1;
    c->b = (int)(rand_r(&r->seed) % (ACCOUNTS - 1)) + 1;
    if (c->b >= c->a) c->b++;
    c->amount = (int)(rand_r(&r->seed) % 19) + 1;
    c->fault = r->faults > 0 && (double)rand_r(&r->seed) < r->faults * (double)RAND_MAX;
    c->step = 0;
    c->t0 = now;
    if (r->arm == A_INTER) {
        braid_db_run_options ro = { .flags = BRAID_DB_RETRYABLE };
        braid_deferred *d = braid_db_run_interaction(r->db, xfer_fn, c, &ro);
        braid_deferred_add(d, inter_done, inter_done, c);
        braid_deferred_unref(d);
    } else {
        stmt_issue(c);
    }
}

/* Run statements outside the measurement (setup, reset, checks). */
typedef struct sync_q {
    int fired;
    braid_result r;
} sync_q;
static braid_result sync_cb(braid_result r, void *arg) {
    sync_q *q = arg;
    q->r = r;
    q->fired = 1;
    return braid_result_ok(NULL);
}
static braid_result sync_query(braid_loop *loop, braid_db *db, const char *sql, const braid_db_value *p,
                               size_t n) {
    sync_q q = { 0 };
    braid_deferred *d = braid_db_query(db, sql, p, n);
    braid_deferred_add(d, sync_cb, sync_cb, &q);
    braid_deferred_unref(d);
    while (!q.fired) braid_loop_run_once(loop, 0);
    return q.r;
}
static bool sync_exec(braid_loop *loop, braid_db *db, const char *sql) {
    braid_result r = sync_query(loop, db, sql, NULL, 0);
    bool ok = !r.failure;
    if (!ok) fprintf(stderr, "tx: %s: %s\n", sql, r.failure->message ? r.failure->message : "?");
    braid_result_drop(r);
    return ok;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* The killer: terminates a random client backend every 20 ms (PostgreSQL faults). */
typedef struct killer {
    pthread_t th;
    const char *conninfo;
    _Atomic bool stop;
    long kills;
} killer;
static void *killer_main(void *arg) {
    killer *k = arg;
    PGconn *c = PQconnectdb(k->conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    while (!atomic_load(&k->stop)) {
        struct timespec ts = { 0, 20000000 };
        nanosleep(&ts, NULL);
        PGresult *r = PQexec(c, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "backend_type = 'client backend' AND pid <> pg_backend_pid() "
                                "ORDER BY random() LIMIT 1");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) k->kills++;
        PQclear(r);
    }
    PQfinish(c);
    return NULL;
}

static bool setup_schema(const char *url) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return false;
    braid_db *db;
    if (braid_db_open(loop, url, NULL, &db) < 0) {
        braid_loop_free(loop);
        return false;
    }
    bool ok = sync_exec(loop, db, "DROP TABLE IF EXISTS xlog") && sync_exec(loop, db, "DROP TABLE IF EXISTS acct") &&
              sync_exec(loop, db, "CREATE TABLE acct (id INTEGER PRIMARY KEY, bal BIGINT NOT NULL)") &&
              sync_exec(loop, db, "CREATE TABLE xlog (id BIGINT PRIMARY KEY, a INT, b INT, amount INT)");
    for (int i = 1; ok && i <= ACCOUNTS; i++) {
        braid_db_value v[] = { BRAID_DB_INT(i), BRAID_DB_INT(START_BAL) };
        braid_result r = sync_query(loop, db, "INSERT INTO acct VALUES ($1, $2)", v, 2);
        ok = !r.failure;
        braid_result_drop(r);
    }
    braid_db_free(db);
    braid_loop_free(loop);
    return ok;
}

static void reset_tables(braid_loop *loop, braid_db *db) {
    char sql[80];
    snprintf(sql, sizeof sql, "UPDATE acct SET bal = %d", START_BAL);
    sync_exec(loop, db, sql);
    sync_exec(loop, db, "DELETE FROM xlog");
}

static result measure_braid(const char *url, bool pg, int arm, int nclients, double seconds, long max_transfers,
                            double faults, const char *kill_conninfo) {
    result res = { 0 };
    bench_run *r = calloc(1, sizeof *r);
    r->lat = malloc(MAXLAT * sizeof *r->lat);
    if (braid_loop_new(NULL, &r->loop) < 0) return res;
    braid_db_options o = { .connections = pg ? PG_CONNS : SQLITE_CONNS, .queue_limit = 4096 };
    if (braid_db_open(r->loop, url, &o, &r->db) < 0) {
        braid_loop_free(r->loop);
        return res;
    }
    reset_tables(r->loop, r->db);
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) return res;
    subscriber sub = { .fd = sv[1] };
    pthread_create(&sub.th, NULL, sub_main, &sub);
    r->sink.base.ops = &sink_ops;
    braid_transport_adopt(r->loop, sv[0], &r->sink.base);
    braid_db_target_init_transport(&r->sink.target, r->sink.base.transport);
    r->pg = pg;
    r->arm = arm;
    r->nclients = nclients;
    r->faults = faults;
    r->max_transfers = max_transfers;
    r->next_id = 1;
    r->seed = 12345u + (unsigned)nclients;
    killer k = { .conninfo = kill_conninfo };
    if (kill_conninfo) pthread_create(&k.th, NULL, killer_main, &k);
    braid_db_stats st0;
    braid_db_stats_get(r->db, &st0);
    uint64_t t0 = bench_now_ns();
    r->deadline = t0 + (uint64_t)(seconds * 1e9);
    r->running = nclients;
    for (int i = 0; i < nclients; i++) {
        r->clients[i].run = r;
        client_next(&r->clients[i]);
    }
    braid_loop_run(r->loop);
    double el = (double)(bench_now_ns() - t0) / 1e9;
    if (kill_conninfo) {
        atomic_store(&k.stop, true);
        pthread_join(k.th, NULL);
    }
    braid_db_stats st;
    braid_db_stats_get(r->db, &st);
    /* flush the notifications, then check */
    braid_transport_close(r->sink.base.transport, BRAID_FOREVER);
    while (!r->sink.lost) braid_loop_run_once(r->loop, 0);
    pthread_join(sub.th, NULL);
    close(sv[1]);
    braid_result q = sync_query(r->loop, r->db,
                                "SELECT CAST(coalesce(sum(bal), 0) AS BIGINT), "
                                "CAST(coalesce(sum(CASE WHEN bal < 0 THEN 1 ELSE 0 END), 0) AS BIGINT) FROM acct", NULL, 0);
    braid_result lq = sync_query(r->loop, r->db, "SELECT id FROM xlog", NULL, 0);
    if (!q.failure && !lq.failure) {
        braid_db_rows *rows = q.value, *logged = lq.value;
        res.sum_drift = fabs((double)(rows->cells[0].u.i - (int64_t)ACCOUNTS * START_BAL));
        res.negative = (double)rows->cells[1].u.i;
        size_t nid = (size_t)r->next_id + 1;
        unsigned char *seen = calloc(nid, 1);
        for (size_t i = 0; i < logged->rows; i++) {
            int64_t id = logged->cells[i].u.i;
            if (id > 0 && (size_t)id < nid) seen[id] = 1;
        }
        long bad = 0;
        for (size_t i = 0; i < sub.n; i++)
            if (sub.ids[i] <= 0 || (size_t)sub.ids[i] >= nid || !seen[sub.ids[i]]) bad++;
        res.notified_uncommitted = (double)bad;
        res.committed = (double)logged->rows;
        free(seen);
        res.ok = true;
    }
    braid_result_drop(q);
    braid_result_drop(lq);
    res.tps = (double)r->done / el;
    qsort(r->lat, r->nlat, sizeof *r->lat, cmp_u64);
    if (r->nlat) {
        res.p50_us = (double)r->lat[r->nlat / 2] / 1e3;
        res.p99_us = (double)r->lat[r->nlat * 99 / 100] / 1e3;
    }
    res.retries = (double)(st.retries - st0.retries);
    braid_db_free(r->db);
    braid_loop_free(r->loop);
    free(sub.ids);
    free(r->lat);
    free(r);
    return res;
}

/* ---- the Twisted peer ------------------------------------------------------------------- */
static double json_num(const char *s, const char *key) {
    char pat[64];
    snprintf(pat, sizeof pat, "\"%s\": ", key);
    const char *p = strstr(s, pat);
    return p ? strtod(p + strlen(pat), NULL) : NAN;
}

static result measure_twisted(bench_ctx *ctx, const char *engine, const char *target, int arm, int nclients,
                              double seconds, double faults, const char *kill_conninfo) {
    result res = { 0 };
    char cmd[2048];
    snprintf(cmd, sizeof cmd,
             "timeout -s KILL 30 /usr/bin/python3 '%s/peers/twisted_tx.py' --engine %s --target '%s' --arm %s --clients %d "
             "--connections %d --seconds %g --accounts %d --faults %g 2>/dev/null",
             ctx->data_dir, engine, target, arm == A_TW_INTER ? "runInteraction" : "runQuery", nclients,
             strcmp(engine, "sqlite") ? PG_CONNS : SQLITE_CONNS,
             seconds, ACCOUNTS, faults);
    /* reset the tables through a short braid session first */
    killer k = { .conninfo = kill_conninfo };
    FILE *p = popen(cmd, "r");
    if (!p) return res;
    if (kill_conninfo) pthread_create(&k.th, NULL, killer_main, &k);
    char line[4096] = "";
    if (!fgets(line, sizeof line, p)) line[0] = 0;
    pclose(p);
    if (kill_conninfo) {
        atomic_store(&k.stop, true);
        pthread_join(k.th, NULL);
    }
    double transfers = json_num(line, "transfers"), secs = json_num(line, "seconds");
    if (!isfinite(transfers) || !isfinite(secs) || secs <= 0) return res;
    res.tps = transfers / secs;
    res.p50_us = json_num(line, "p50_us");
    res.p99_us = json_num(line, "p99_us");
    res.sum_drift = fabs(json_num(line, "sum") - (double)ACCOUNTS * START_BAL);
    res.negative = json_num(line, "negative");
    res.notified_uncommitted = json_num(line, "notified_uncommitted");
    res.committed = json_num(line, "committed");
    res.hung = json_num(line, "hung");
    res.ok = true;
    return res;
}

/* ---- the experiment ------------------------------------------------------------------------ */
typedef struct tx_state {
    const char *engine, *url, *twisted_target, *kill;
    bool pg, have_twisted;
    int nclients;
    double seconds, faults;
    long max_transfers;
    result res[NARM][BENCH_MAX_RUNS];
} tx_state;

static void reset_via_braid(const char *url) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return;
    braid_db *db;
    if (braid_db_open(loop, url, NULL, &db) == 0) {
        reset_tables(loop, db);
        braid_db_free(db);
    }
    braid_loop_free(loop);
}

static void measure(bench_ctx *ctx, int impl, int run, void *arg) {
    tx_state *s = arg;
    if (impl >= A_TW_INTER) {
        if (!s->have_twisted) return;
        reset_via_braid(s->url);
        s->res[impl][run] = measure_twisted(ctx, s->engine, s->twisted_target, impl, s->nclients, s->seconds,
                                            s->faults, s->kill);
    } else {
        s->res[impl][run] = measure_braid(s->url, s->pg, impl, s->nclients, s->seconds, s->max_transfers,
                                          s->faults, s->kill);
    }
}

static void emit_rows(bench_ctx *ctx, tx_state *s, const char *pass) {
    for (int a = 0; a < NARM; a++) {
        if (a >= A_TW_INTER && !s->have_twisted) continue;
        double v[9][BENCH_MAX_RUNS];
        int n = 0;
        for (int r = 0; r < ctx->runs; r++) {
            result *x = &s->res[a][r];
            if (!x->ok) continue;
            double vals[9] = { x->tps, x->p50_us, x->p99_us, x->sum_drift, x->negative,
                               x->notified_uncommitted, x->committed, x->retries, x->hung };
            for (int m = 0; m < 9; m++) v[m][n] = vals[m];
            n++;
        }
        if (!n) {
            bench_note(ctx, "tx: %s on %s at %d clients (%s) produced no result", arm_names[a], s->engine,
                       s->nclients, pass);
            continue;
        }
        bench_row *row = bench_row_begin(ctx, arm_names[a], s->engine);
        bench_row_param_str(row, "engine", s->engine);
        bench_row_param_int(row, "clients", s->nclients);
        bench_row_param_str(row, "pass", pass);
        bench_row_metric(row, "transfers_per_s", v[0], n, "/s");
        bench_row_metric(row, "p50_us", v[1], n, "us");
        bench_row_metric(row, "p99_us", v[2], n, "us");
        bench_row_metric(row, "sum_drift", v[3], n, "units");
        bench_row_metric(row, "negative_balances", v[4], n, "accounts");
        bench_row_metric(row, "notified_uncommitted", v[5], n, "notes");
        bench_row_metric(row, "committed", v[6], n, "transfers");
        if (a < A_TW_INTER) bench_row_metric(row, "retries", v[7], n, "retries");
        else bench_row_metric(row, "clients_hung", v[8], n, "clients");
        bench_row_end(row);
    }
}

static int run(bench_ctx *ctx) {
    static tx_state st;
    tx_state *s = &st;
    char dir[] = "/tmp/braid-tx-XXXXXX";
    if (!mkdtemp(dir)) return -1;
    char sqlite_path[128], sqlite_url[160];
    snprintf(sqlite_path, sizeof sqlite_path, "%s/bank.db", dir);
    snprintf(sqlite_url, sizeof sqlite_url, "sqlite:%s", sqlite_path);
    s->have_twisted = bench_have_python_module("twisted");
    if (!s->have_twisted) bench_note(ctx, "tx: python3-twisted not importable; its rows are skipped");
    braid_db_pg_cluster *cl = NULL;
    char why[512];
    int rc = braid_db_pg_cluster_start(NULL, &cl, why, sizeof why);
    if (rc < 0) bench_note(ctx, "tx: no PostgreSQL (%s); its rows are skipped", why);
    bool tw_pg = s->have_twisted && bench_have_python_module("psycopg2");
    double secs = ctx->smoke ? 0.1 : ctx->full ? 3.0 : 0.15;
    for (int e = 0; e < 2; e++) {
        bool pg = e == 1;
        if (pg && !cl) continue;
        s->pg = pg;
        s->engine = pg ? "postgresql" : "sqlite";
        s->url = pg ? braid_db_pg_cluster_url(cl) : sqlite_url;
        s->twisted_target = pg ? braid_db_pg_cluster_conninfo(cl) : sqlite_path;
        bool save_tw = s->have_twisted;
        if (pg && !tw_pg) {
            s->have_twisted = false;
            bench_note(ctx, "tx: python3-psycopg2 not importable; Twisted's PostgreSQL rows are skipped");
        }
        if (!setup_schema(s->url)) {
            bench_note(ctx, "tx: could not create the schema on %s", s->engine);
            s->have_twisted = save_tw;
            continue;
        }
        for (int ci = 0; ci < NCLIENTS; ci++) {
            if (ctx->smoke && ci != 1) continue;
            s->nclients = client_counts[ci];
            s->seconds = secs;
            s->faults = 0;
            s->max_transfers = 0;
            s->kill = NULL;
            memset(s->res, 0, sizeof s->res);
            char label[64];
            snprintf(label, sizeof label, "%s %d clients", s->engine, s->nclients);
            bench_alternate(ctx, label, NARM, arm_names, measure, s);
            emit_rows(ctx, s, "clean");
        }
        /* faults: 64 clients, 5% failing credits, killed backends on PostgreSQL */
        if (!ctx->smoke) {
            s->nclients = 64;
            s->seconds = ctx->full ? 20.0 : 0.25;
            s->faults = 0.05;
            s->max_transfers = ctx->full ? 100000 : 0;
            s->kill = pg ? braid_db_pg_cluster_conninfo(cl) : NULL;
            memset(s->res, 0, sizeof s->res);
            char label[64];
            snprintf(label, sizeof label, "%s faults", s->engine);
            bench_alternate(ctx, label, NARM, arm_names, measure, s);
            emit_rows(ctx, s, "faults");
        }
        s->have_twisted = save_tw;
    }
    braid_db_pg_cluster_stop(cl);
    char cmd[160];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) bench_note(ctx, "tx: could not remove %s", dir);
    return 0;
}

static double med(bench_ctx *ctx, const char *impl, const char *engine, const char *clients, const char *pass,
                  const char *metric) {
    const bench_row *r = bench_find_row(ctx, impl, NULL, engine, clients, pass, NULL);
    double m, lo, hi;
    return r && bench_row_metric_get(r, metric, &m, &lo, &hi) ? m : NAN;
}

static void conclude(bench_ctx *ctx, FILE *html) {
    fprintf(html, "<p>Ratios are medians of run-by-run ratios (same run, alternating). ");
    static const char *const cl[] = { "clients=1", "clients=8", "clients=64" };
    for (int e = 0; e < 2; e++) {
        const char *eng = e ? "engine=postgresql" : "engine=sqlite";
        for (int i = 0; i < 3; i++) {
            const bench_row *b = bench_find_row(ctx, "braid-interaction", NULL, eng, cl[i], "pass=clean", NULL);
            const bench_row *a = bench_find_row(ctx, "braid-per-statement", NULL, eng, cl[i], "pass=clean", NULL);
            const bench_row *t = bench_find_row(ctx, "twisted-runInteraction", NULL, eng, cl[i], "pass=clean", NULL);
            double ra = NAN, rt = NAN, lo, hi;
            if (b && a && !bench_pair_ratio(b, a, "transfers_per_s", &ra, &lo, &hi)) ra = NAN;
            if (b && t && !bench_pair_ratio(b, t, "transfers_per_s", &rt, &lo, &hi)) rt = NAN;
            if (!b) continue;
            fprintf(html, "%s, %s: the whole transaction does %.2fx the per-statement arm%s and %.2fx Twisted's "
                          "runInteraction. ",
                    eng + 7, cl[i] + 8, ra, isfinite(ra) && ra < 1 ? " (braid loses here: whole transactions "
                                                                     "hold their row locks longer)" : "", rt);
        }
        double fb = med(ctx, "braid-interaction", eng, "clients=64", "pass=faults", "notified_uncommitted");
        double fbs = med(ctx, "braid-interaction", eng, "clients=64", "pass=faults", "sum_drift");
        double fa = med(ctx, "braid-per-statement", eng, "clients=64", "pass=faults", "sum_drift");
        double fan = med(ctx, "braid-per-statement", eng, "clients=64", "pass=faults", "negative_balances");
        if (isfinite(fb))
            fprintf(html, "With faults (%s): the whole transaction drifted the invariant by %.0f and notified %.0f "
                          "uncommitted transfers; per-statement drifted it by %.0f with %.0f negative balances. ",
                    eng + 7, fbs, fb, fa, fan);
    }
    fprintf(html, "</p>\n");
}

#else
static int run(bench_ctx *ctx) {
    bench_note(ctx, "tx: libbraid-db was not built (libsqlite3-dev, libpq-dev); skipped");
    return 0;
}
static void conclude(bench_ctx *ctx, FILE *html) {
    (void)ctx;
    (void)html;
}
#endif

BENCH_EXPERIMENT(tx, .title = "Transactions in threads: one hop per transaction vs a Deferred per statement",
                 .question = "What does running a whole transaction in a thread, releasing its messages on "
                             "commit, gain over a Deferred per SQL statement (adbapi runQuery style) — in "
                             "throughput, latency and consistency — on SQLite and PostgreSQL, beside Twisted adbapi?",
                 .method = "Bank transfers (read A, read B, debit, credit, log, notify over a socket), 1/8/64 "
                           "closed-loop clients for a fixed time, 8 connections on PostgreSQL and 1 on SQLite for every implementation, alternating; "
                           "consistency checked after each run; a second pass injects 5% failing statements and, "
                           "on PostgreSQL, a backend killed every 20 ms.",
                 .run = run, .quick_seconds = 70, .full_seconds = 600, .plot_x = "clients",
                 .plot_metric = "transfers_per_s", .plot_logx = true, .conclude = conclude,
                 .ratio_base = "braid-interaction", .headline = "transfers_per_s", .quick_runs = 3);
