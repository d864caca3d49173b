/* braid/db.h — whole transactions in threads; their messages released only on commit.
 *
 * libbraid-db (link braid-db: pkg-config braid-db, or the CMake target braid_db).
 * "Twisted Do-Over" (2005) gives the rule: do not turn every SQL statement into
 * its own Deferred (a thread hand-off per statement, and a transaction other
 * callers can interleave with); run the *whole* transaction in a thread, away
 * from the communications code, and let it queue its notifications and network
 * output as objects that are released only when it commits. A braid_db is that:
 * a dedicated pool of threads, each holding its own connection to SQLite or
 * PostgreSQL (opened lazily, reopened after a failure), and a bounded queue that
 * fails fast.
 *
 *     static braid_result transfer(braid_txn *txn, void *arg) {   // on a db thread
 *         struct xfer *x = arg;
 *         int64_t bal;
 *         braid_db_value from = BRAID_DB_INT(x->from);
 *         int rc = braid_txn_query_int(txn, "SELECT balance FROM acct WHERE id = $1",
 *                                      &from, 1, &bal);
 *         if (rc < 0) return braid_txn_failure(txn);               // the driver's message
 *         if (rc == 0 || bal < x->amount)
 *             return braid_result_errf(BRAID_EINVAL, "insufficient funds");  // rolls back
 *         braid_db_value p[] = { BRAID_DB_INT(x->amount), BRAID_DB_INT(x->from) };
 *         if (braid_txn_exec(txn, "UPDATE acct SET balance = balance - $1 WHERE id = $2",
 *                            p, 2) < 0)
 *             return braid_txn_failure(txn);
 *         ...
 *         braid_txn_emit_copy(txn, x->subscriber, "done\n", 5);  // sent only if it commits
 *         return braid_result_ok(NULL);
 *     }
 *     braid_db *db;
 *     if (braid_db_open(loop, "sqlite:bank.db", NULL, &db) < 0) ...;
 *     braid_db_run_options ro = { .flags = BRAID_DB_RETRYABLE, .timeout = BRAID_SECONDS(2) };
 *     braid_deferred *d = braid_db_run_interaction(db, transfer, x, &ro);
 *     braid_deferred_add(d, done, failed, x);       // loop thread
 *     braid_deferred_unref(d);
 *     ...
 *     braid_db_free(db);
 *
 * URLs: "sqlite:path.db", "sqlite::memory:" (one connection: an in-memory
 * database is private to its connection), or a libpq URI "postgresql://…" /
 * "postgres://…" (any libpq connection string after "postgresql:" also works:
 * "postgresql:host=/tmp/x dbname=y").
 *
 * Statements take bound parameters only: there is no call that splices text
 * into SQL. Write parameters as $1, $2, … for either database (SQLite reads
 * "$1" as a named parameter; braid binds it by its number). Rows are typed:
 * braid_txn_step moves to the next row, braid_txn_column_* read it.
 *
 * Commit and release. An interaction runs fn inside BEGIN … COMMIT on one
 * connection. braid_txn_emit queues a message for a target (a callback on the
 * loop, a transport, a stage): nothing leaves the transaction until COMMIT
 * succeeds. Then the messages are delivered on the loop's thread, in emit order,
 * interactions in commit order (an interaction that commits after another —
 * and so may have read its writes — is released after it), and only then does
 * the interaction's Deferred fire with fn's result. When anything fails — fn
 * returns a failure, a statement fails, COMMIT fails, the connection is lost, a
 * deadline passes — the transaction is rolled back, each queued message is freed
 * exactly once (its free function runs, on the db thread) and the Deferred fails
 * with the cause: BRAID_EDB_* with the driver's message and, for PostgreSQL, the
 * SQLSTATE (braid_db_sqlstate). A statement's failure wins over fn's result: if
 * a statement failed, the transaction rolls back even if fn returns success.
 *
 * Retries. An interaction run with BRAID_DB_RETRYABLE that fails with SQLite's
 * BUSY (the lock was not obtained within the busy timeout) or PostgreSQL's
 * serialization failure (40001) or deadlock (40P01) is rolled back, its messages
 * dropped, and run again from the start — at most max_attempts times in all,
 * with a short jittered back-off. fn must then have no effect outside the
 * database except through braid_txn_emit (it may run several times; only the
 * attempt that commits is released); braid_txn_attempt says which attempt runs.
 * The same goes for a connection found dead when the transaction begins: the
 * thread reconnects and begins again (nothing had happened), whatever the
 * flags. A connection lost after a statement ran fails the interaction with
 * BRAID_EDB_CONN_LOST (retried only when RETRYABLE; never when it was lost
 * during COMMIT, whose outcome is then unknown).
 *
 * Deadlines (run options' timeout, ns on the loop's clock): when it passes, the
 * Deferred fails at once with BRAID_ETIMEDOUT, even if fn is busy outside any
 * statement; an interaction still queued never starts; a running one is
 * interrupted (sqlite3_interrupt, PQcancel; fn's next statement fails) and
 * rolled back. Only a transaction whose COMMIT was already under way can still
 * commit: its messages are then released all the same (they are true).
 * Cancelling the Deferred does the same with BRAID_ECANCELED.
 *
 * Threads. fn runs on one of the db's threads and must not touch loop-affine
 * objects; a braid_txn is valid only inside fn, on that thread. Everything
 * else here is loop-affine (the loop given to braid_db_open). Message free
 * functions run on a db thread (rollback) or the loop's thread (after
 * delivery, or when the db is freed).
 *
 * Ownership. braid_db_free frees the db: interactions still queued fail with
 * BRAID_ESHUTDOWN; running ones are interrupted (their next statement fails)
 * and rolled back unless already committing; it waits for their fn to return,
 * and every Deferred has fired exactly once when it returns. If an answer was
 * already posted to the loop and not yet run, the loop's next iteration runs
 * that internal call (braid_loop_run does; before braid_loop_free, run
 * braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT)).
 *
 * Per-statement calls. braid_db_query runs one statement as its own
 * transaction and returns a Deferred of its rows: it exists to measure the
 * anti-pattern (docs/db.md) and for one-off reads. Several of them are not a
 * transaction: others interleave between them, and a failure leaves the earlier
 * ones committed. Use braid_db_run_interaction for anything that must hold
 * together.
 *
 * Caches. A cache of query results kept outside the database must learn of
 * rollbacks: fill or invalidate it through braid_txn_emit, never from fn
 * directly, or a rolled-back write leaves it wrong (docs/db.md).
 */
#ifndef BRAID_DB_H
#define BRAID_DB_H

#include <braid/common.h>
#include <braid/context.h>
#include <braid/deferred.h>
#include <braid/loop.h>
#include <braid/stage.h>
#include <braid/stream.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes (db's range: -4400 … -4499) ------------------------------------ */
#define BRAID_EDB_SQL        (-4400)  /* the database refused a statement (message: its text) */
#define BRAID_EDB_BUSY       (-4401)  /* SQLite: database locked past the busy timeout */
#define BRAID_EDB_SERIALIZE  (-4402)  /* PostgreSQL 40001 / 40P01, retries exhausted */
#define BRAID_EDB_CONN_LOST  (-4403)  /* the connection died during the transaction */
#define BRAID_EDB_CONNECT    (-4404)  /* could not open a connection */
#define BRAID_EDB_URL        (-4405)  /* not a database URL braid knows */
#define BRAID_EDB_CONSTRAINT (-4406)  /* a constraint was violated (SQLSTATE class 23) */
#define BRAID_EDB_MISUSE     (-4407)  /* a txn call out of order (no row, wrong column, done) */

typedef struct braid_db braid_db;
typedef struct braid_txn braid_txn;

/* ---- opening ---------------------------------------------------------------------- */
enum {
    BRAID_DB_SYNC_FULL = 1u << 0,  /* SQLite: synchronous=FULL (default NORMAL in WAL: a
                                      commit may roll back after a power loss) */
};

typedef struct braid_db_options {
    unsigned connections;     /* threads, each with its own connection (0: 4; 1 for
                                 sqlite::memory:) */
    size_t queue_limit;       /* interactions waiting for a thread (0: 1024); more fail
                                 at once with BRAID_EQUEUE_FULL */
    unsigned max_attempts;    /* attempts of a RETRYABLE interaction (0: 5) */
    uint64_t busy_timeout;    /* SQLite busy timeout (0: 5 s; BRAID_FOREVER: SQLite's
                                 longest, INT_MAX ms) */
    uint64_t idle_timeout;    /* a thread idle this long exits, closing its connection
                                 (0: 60 s) */
    unsigned statement_cache; /* prepared statements kept per connection (0: 64) */
    const char *name;         /* thread names "<name>-<n>" (NULL: "braid-db") */
    unsigned flags;           /* BRAID_DB_SYNC_FULL */
} braid_db_options;

/* Open a database (no connection is made yet: each thread connects on its
 * first interaction). 0, BRAID_EDB_URL, BRAID_ENOMEM or a thread error.
 * *out is yours to free with braid_db_free. Loop thread. */
BRAID_API int braid_db_open(braid_loop *loop, const char *url, const braid_db_options *opts,
                            braid_db **out);
/* Free the db (see Ownership above). Loop thread; not from inside fn. NULL: no-op. */
BRAID_API void braid_db_free(braid_db *db);

/* ---- values and rows --------------------------------------------------------------- */
typedef enum braid_db_type {
    BRAID_DB_NULL = 0, BRAID_DB_INTEGER, BRAID_DB_FLOAT, BRAID_DB_TEXT, BRAID_DB_BLOB
} braid_db_type;

/* A parameter (borrowed: text and blobs are read during the call only). */
typedef struct braid_db_value {
    braid_db_type type;
    union {
        int64_t i;
        double f;
        struct { const void *p; size_t len; } s;   /* text (UTF-8) or blob */
    } u;
} braid_db_value;
#define BRAID_DB_NULLV       ((braid_db_value){ .type = BRAID_DB_NULL })
#define BRAID_DB_INT(x)      ((braid_db_value){ .type = BRAID_DB_INTEGER, .u.i = (int64_t)(x) })
#define BRAID_DB_DOUBLE(x)   ((braid_db_value){ .type = BRAID_DB_FLOAT, .u.f = (double)(x) })
#define BRAID_DB_TEXTN(p, n) ((braid_db_value){ .type = BRAID_DB_TEXT, .u.s = { (p), (n) } })
#define BRAID_DB_STR(p)      BRAID_DB_TEXTN((p), strlen(p))
#define BRAID_DB_BLOBN(p, n) ((braid_db_value){ .type = BRAID_DB_BLOB, .u.s = { (p), (n) } })

/* ---- inside an interaction (on its db thread) ----------------------------------------- */
/* Run a statement that returns no rows (its rows, if any, are skipped).
 * Returns the number of rows it changed, or a negative BRAID_EDB_* code; the
 * failure (braid_txn_failure) keeps the driver's message. After a failure
 * every later statement of the attempt fails the same way. */
BRAID_API int64_t braid_txn_exec(braid_txn *txn, const char *sql, const braid_db_value *params,
                                 size_t nparams);
/* Run a statement and stand before its first row: 0 or a negative code. The
 * rows are read with braid_txn_step until the next statement. */
BRAID_API int braid_txn_query(braid_txn *txn, const char *sql, const braid_db_value *params,
                              size_t nparams);
/* The next row of the last query: 1 (a row), 0 (no more), negative on error. */
BRAID_API int braid_txn_step(braid_txn *txn);
/* Columns of the current row (col from 0). A NULL reads as 0 / NULL. Text and
 * blobs are borrowed until the next step or statement; len may be NULL. Values
 * convert as the database would (an integer read as text is its digits). */
BRAID_API int braid_txn_columns(braid_txn *txn);
BRAID_API braid_db_type braid_txn_column_type(braid_txn *txn, int col);
BRAID_API int64_t braid_txn_column_int(braid_txn *txn, int col);
BRAID_API double braid_txn_column_double(braid_txn *txn, int col);
BRAID_API const char *braid_txn_column_text(braid_txn *txn, int col, size_t *len);
BRAID_API const void *braid_txn_column_blob(braid_txn *txn, int col, size_t *len);
/* Convenience: run a query and read the first column of its first row:
 * 1 (*out set), 0 (no row), negative on error. */
BRAID_API int braid_txn_query_int(braid_txn *txn, const char *sql, const braid_db_value *params,
                                  size_t nparams, int64_t *out);

/* The failure of the last statement that failed, as a result to return from
 * fn (a copy: fn owns it). BRAID_EDB_MISUSE if none failed. */
BRAID_API braid_result braid_txn_failure(braid_txn *txn);
/* Which attempt this is (1 for the first). */
BRAID_API unsigned braid_txn_attempt(const braid_txn *txn);
/* "sqlite" or "postgresql": for the few statements that differ. */
BRAID_API const char *braid_txn_engine(const braid_txn *txn);

/* ---- emit: messages released on commit ------------------------------------------------
 * A target is where released messages go, on the loop's thread. It is caller
 * storage that must stay valid until every interaction that emitted to it
 * has fired its Deferred (or the db is freed). Three kinds share one small
 * interface: deliver(target, data, len, free_fn) takes the message — it sees
 * that free_fn(data) runs exactly once (if free_fn is not NULL), now or by
 * whoever it hands the message to — and returns 0 when the message was
 * delivered, or a negative code when the target refused it (it freed the
 * message then): the db counts the first in its stats' `released`, the
 * second in `refused`. */
typedef struct braid_db_target braid_db_target;
typedef void (*braid_db_target_cb)(void *data, size_t len, void *arg);
typedef struct braid_db_target_ops {
    int (*deliver)(braid_db_target *t, void *data, size_t len, void (*free_fn)(void *));
} braid_db_target_ops;
struct braid_db_target {              /* fields private but for ops, arg and the counters */
    const braid_db_target_ops *ops;
    void *arg;
    braid_transport *transport;
    braid_stage *stage;
    braid_db_target_cb cb;
    uint64_t delivered, dropped;      /* readable counters */
    int last_error;                   /* readable: the last refusal's code (0: none) */
};
/* A callback on the loop: cb(data, len, arg) borrows the message; braid frees
 * it when cb returns. */
BRAID_API void braid_db_target_init_callback(braid_db_target *t, braid_db_target_cb cb, void *arg);
/* A transport: the bytes are written to it (braid_transport_write). Call
 * braid_db_target_detach from the protocol's connection_lost: messages
 * released after it are dropped (counted in `dropped`). */
BRAID_API void braid_db_target_init_transport(braid_db_target *t, braid_transport *transport);
BRAID_API void braid_db_target_detach(braid_db_target *t);
/* A SEDA stage (<braid/stage.h>): each released message becomes the event
 * BRAID_STAGE_EVENT(data, free_fn), enqueued with braid_stage_enqueue on the
 * loop's thread, interactions in commit order and each one's messages in
 * emit order. The length is not carried (a stage's event is a pointer):
 * emit self-describing objects with braid_txn_emit, and never NULL data.
 * Policy on refusal: an enqueue refused (BRAID_ESTAGE_FULL, _REJECTED,
 * _CLOSED) never blocks the release and never retries: the message is freed
 * at once (free_fn, exactly once) and counted — the target's `dropped` and
 * `last_error`, the db's stats' `refused`; the stage's own statistics count
 * the refusal too, and its on_clog runs. A message the stage takes is the
 * stage's: its handler, or braid_stage_free, frees it. The stage must be on
 * the db's loop (a BRAID_STAGE_LOOP_ONLY stage is fine) and outlive the
 * target. A program that must lose no message sizes the stage's queue_limit
 * for its bursts, or uses a callback target that decides itself. */
BRAID_API void braid_db_target_init_stage(braid_db_target *t, braid_stage *stage);

/* Queue a message for target, released when (if) this attempt commits. Takes
 * data (free_fn(data) frees it exactly once: after delivery, or at rollback;
 * free_fn may be NULL for static data). 0, or BRAID_ENOMEM — the data is then
 * freed and the transaction will roll back (a message that cannot be queued
 * must not be lost silently). */
BRAID_API int braid_txn_emit(braid_txn *txn, braid_db_target *target, void *data, size_t len,
                             void (*free_fn)(void *));
/* The same with a copy of len bytes. */
BRAID_API int braid_txn_emit_copy(braid_txn *txn, braid_db_target *target, const void *data,
                                  size_t len);

/* ---- running ---------------------------------------------------------------------------- */
typedef braid_result (*braid_txn_fn)(braid_txn *txn, void *arg);

/* The context hop. fn runs in the context that was current on the thread
 * that called braid_db_run_interaction (captured there, <braid/context.h>),
 * plus this key: braid_ctx_get_ptr(&braid_db_txn_key) is fn's braid_txn (and
 * through it its connection) in fn and in anything fn calls on that thread
 * — a library need not be passed the txn to take part in the transaction.
 * Outside fn it is NULL (or an outer value). */
BRAID_API extern const braid_ctx_key braid_db_txn_key;

enum {
    BRAID_DB_RETRYABLE = 1u << 0,  /* re-run on BUSY / 40001 / 40P01 (fn must be safe to re-run) */
    BRAID_DB_READ_ONLY = 1u << 1,  /* SQLite: BEGIN DEFERRED (default IMMEDIATE: writers queue
                                      for the lock at BEGIN, so no upgrade can fail);
                                      PostgreSQL: BEGIN READ ONLY */
    BRAID_DB_SERIALIZABLE = 1u << 2, /* PostgreSQL: ISOLATION LEVEL SERIALIZABLE */
};

typedef struct braid_db_run_options {
    unsigned flags;           /* BRAID_DB_RETRYABLE, READ_ONLY, SERIALIZABLE */
    uint64_t timeout;         /* deadline = now + timeout on the loop's clock (0, the
                                 default, or BRAID_FOREVER: none) */
} braid_db_run_options;

/* Loop thread: run fn(txn, arg) on a db thread inside a transaction. The
 * Deferred fires on the loop's thread with fn's result after the commit and
 * the release of its messages, or fails (see above): BRAID_EQUEUE_FULL at once
 * when the queue is full, BRAID_ESHUTDOWN once the db is being freed. opts may
 * be NULL. NULL only if the Deferred itself cannot be allocated. */
BRAID_API braid_deferred *braid_db_run_interaction(braid_db *db, braid_txn_fn fn, void *arg,
                                                   const braid_db_run_options *opts);

/* Rows as a value: what braid_db_query's Deferred carries (freed by its dtor).
 * Cells are rows*columns, row-major; text and blob cells point into the
 * structure. */
typedef struct braid_db_rows {
    size_t rows, columns;
    int64_t changed;          /* rows changed by the statement */
    braid_db_value cells[];
} braid_db_rows;
static inline const braid_db_value *braid_db_rows_cell(const braid_db_rows *r, size_t row,
                                                       size_t col) {
    return &r->cells[row * r->columns + col];
}

/* Loop thread: one statement as its own transaction (the per-statement
 * anti-pattern, see above). The parameters are copied. The Deferred fires with
 * a braid_db_rows*. */
BRAID_API braid_deferred *braid_db_query(braid_db *db, const char *sql,
                                         const braid_db_value *params, size_t nparams);

/* ---- failures, statistics ---------------------------------------------------------------- */
/* The SQLSTATE a db failure carries (PostgreSQL's, or none for SQLite): the
 * five characters copied to out (NUL-terminated), true; false if f is not one
 * with a SQLSTATE. Looks down f's causes. */
BRAID_API bool braid_db_sqlstate(const braid_failure *f, char out[6]);

struct braid_db_stats {
    uint64_t committed;       /* interactions committed */
    uint64_t rolled_back;     /* attempts rolled back (fn, statement, commit failures) */
    uint64_t retries;         /* attempts re-run (BUSY, 40001, 40P01) */
    uint64_t reconnects;      /* connections reopened after a failure */
    uint64_t connects;        /* connections opened in all */
    uint64_t released;        /* messages delivered */
    uint64_t dropped;         /* messages freed unreleased (rollbacks) */
    uint64_t refused;         /* committed messages their target refused and freed (a full,
                                 rejecting or closed stage; a detached transport) */
    uint64_t rejected;        /* interactions refused: queue full or shut down */
    uint64_t timed_out;       /* interactions failed by their deadline */
    uint64_t failed;          /* interactions that ended with a failure (after their retries) */
};
/* Any thread: a snapshot. */
BRAID_API void braid_db_stats(braid_db *db, struct braid_db_stats *out);

/* The engine: "sqlite" or "postgresql". */
BRAID_API const char *braid_db_engine(const braid_db *db);


/* ---- a throwaway PostgreSQL server (tests, benchmarks) ------------------------------------
 * Starts a private cluster: initdb into a fresh temporary directory, then the
 * server on a Unix socket in that directory only (no TCP), fsync and
 * synchronous_commit off. A watchdog process owns it: when
 * braid_db_pg_cluster_stop runs — or the calling process exits in any way,
 * a failed assertion or a crash included — it stops the server and removes
 * the directory. Run as root, the server runs as the "postgres" user (or
 * "nobody"): PostgreSQL refuses root. The data directory is copied from a
 * template initdb'd once per user and binaries ($TMPDIR/braid-pg-template-*,
 * made under a lock; BRAID_PG_TEMPLATE=0: initdb every time).
 * bindir NULL: $BRAID_PG_BINDIR, else
 * `pg_config --bindir`, else the newest /usr/lib/postgresql/N/bin.
 * 0; BRAID_ENOSYS when no server binaries exist (a test skips: why says so);
 * another code when they exist but the cluster failed (why has the log's
 * tail). Any thread; blocks for the copy and the start (a few tenths of a
 * second; the first initdb about a second more). */
typedef struct braid_db_pg_cluster braid_db_pg_cluster;
BRAID_API int braid_db_pg_cluster_start(const char *bindir, braid_db_pg_cluster **out,
                                        char *why, size_t whylen);
/* A URL for braid_db_open ("postgresql:host=<dir> dbname=postgres user=postgres")
 * and the same as a libpq conninfo (without "postgresql:"). Borrowed. */
BRAID_API const char *braid_db_pg_cluster_url(const braid_db_pg_cluster *c);
BRAID_API const char *braid_db_pg_cluster_conninfo(const braid_db_pg_cluster *c);
/* Stop the server, remove its directory, free c (waits for the watchdog). */
BRAID_API void braid_db_pg_cluster_stop(braid_db_pg_cluster *c);

#ifdef __cplusplus
}
#endif
#endif
