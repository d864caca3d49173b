/* libbraid-db: the db, its pool of connection-holding threads, interactions,
 * and the release of their messages in commit order.
 *
 * An interaction is a job. The loop makes it (braid_db_run_interaction) and
 * queues it on the db's pool (braid_pool_call); a pool thread runs it on
 * the connection that thread holds (a pthread key per db: the connection is
 * opened on the thread's first job and closed when the thread exits), then
 * hands it back through the db's completion list, which one braid_post node
 * drains on the loop. The loop delivers the committed job's messages and
 * fires its Deferred.
 *
 * Commit order. A job with messages takes a ticket (a counter under the db's
 * mutex) just before COMMIT. A transaction that read another's writes did so
 * after that one's COMMIT was sent, so after it took its ticket: tickets
 * order dependent commits. Completions holding a ticket wait in `pending`
 * (sorted) until every smaller ticket is resolved, then move to the
 * completion list in ticket order. An attempt whose COMMIT failed and is
 * retried voids its ticket with a marker kept inside the job; the job's own
 * completion carries its last ticket, so its markers are always passed
 * before the job is released and freed. Jobs without messages need no order
 * and go straight to the completion list. */
#include "db_internal.h"

#include <braid/introspect.h>
#include <braid/time.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- error domain ------------------------------------------------------------------ */
static const char *const db_error_names[] = {
    "db: the database refused a statement",
    "db: database busy (locked past the busy timeout)",
    "db: serialization failure or deadlock (retries exhausted)",
    "db: connection lost during the transaction",
    "db: could not connect to the database",
    "db: not a database URL braid knows",
    "db: constraint violated",
    "db: transaction call out of order",
};
static braid_error_domain db_errors = { "db", BRAID_EDB_SQL, BRAID_EDB_MISUSE, db_error_names,
                                        NULL };
__attribute__((constructor)) static void db_register_errors(void) {
    (void)braid_error_domain_register(&db_errors);
}

/* ---- structures --------------------------------------------------------------------- */
typedef struct emit_node {
    struct emit_node *next;
    braid_db_target *target;
    void *data;
    size_t len;
    void (*free_fn)(void *);
} emit_node;

typedef struct order_node {          /* an entry of `pending` */
    struct order_node *next;
    uint64_t ticket;
    struct job *job;                 /* NULL: a voided ticket */
} order_node;

typedef struct job {
    braid_db *db;
    braid_deferred *d;               /* NULL once cancelled (the Deferred fired then) */
    braid_txn_fn fn;
    void *arg;
    unsigned flags;
    braid_ctx *ctx;                  /* the caller's context, current while fn runs */
    /* braid_db_query: the statement and its copied parameters */
    char *sql;
    braid_db_value *params;
    size_t nparams;
    /* worker's answer */
    braid_result result;
    emit_node *emits;
    bool committed;
    bool has_ticket;
    order_node order;                /* the job's place in `pending` (its last ticket) */
    order_node voids[BRAID__DB_MAX_ATTEMPTS];
    unsigned nvoids;
    _Atomic bool started;            /* a thread took it (introspection: not queued) */
    /* interruption: a deadline, a cancel, the db being freed */
    _Atomic int interrupt;           /* 0 or the code to fail with */
    braid__db_conn *conn;            /* running on it now (db->mu) */
    braid_timer timer;
    bool timer_on;
    /* loop side: in-flight list; completion list */
    struct job *prev, *next_live;
    struct job *next_done;
} job;

struct braid_db {
    braid_loop *loop;
    const braid__db_driver *drv;
    braid__db_config cfg;
    braid_pool *pool;
    pthread_key_t key;               /* this thread's connection */
    /* SQLite allows one writer: this process's writers queue here, on a
     * mutex, rather than in SQLite's busy handler, which sleeps 1 ms ... 100
     * ms between tries (the busy timeout still covers other processes). */
    pthread_mutex_t writer_mu;
    bool serial_writers;
    unsigned max_attempts;
    _Atomic bool closing;
    /* completions (mu) */
    pthread_mutex_t mu;
    order_node *pending;             /* sorted by ticket */
    uint64_t next_ticket, next_release;
    job *done_head, *done_tail;
    bool wake_posted;
    braid_post wake;
    bool freeing;                    /* braid_db_free runs: workers post no wake */
    unsigned draining;               /* drain() frames on the stack (loop thread) */
    bool free_requested;             /* braid_db_free ran inside a drain: the outer one frees */
    bool freed;                      /* braid_db_free ran; the wake frees the struct */
    braid__db_conn *conns;           /* open connections (mu), for introspection */
    /* loop side */
    job *live;                       /* in flight */
    char *name;                      /* the options' name, copied */
    unsigned max_connections;
    size_t queue_limit;
    braid_introspect_node inode;     /* its entry in the loop's "databases" section */
    /* stats (atomics: read from any thread) */
    _Atomic uint64_t st_committed, st_rolled_back, st_retries, st_reconnects, st_connects,
        st_released, st_dropped, st_refused, st_rejected, st_timed_out, st_failed;
    _Atomic unsigned thread_seq;
};

struct braid_txn {
    braid_db *db;
    job *job;
    braid__db_conn *conn;
    unsigned attempt;
    braid_failure *failed;           /* the first statement failure of this attempt */
    emit_node *emits, **emit_tail;
    bool in_rows;
};

const braid__db_config *braid__db_config_of(braid_db *db) { return &db->cfg; }

const braid_ctx_key braid_db_txn_key = BRAID_CTX_KEY_INIT(
    "db.txn", BRAID_CTX_PTR, "the braid_txn of the interaction whose fn runs on this thread");

/* ---- failures ------------------------------------------------------------------------ */
braid_failure *braid__db_failure(int code, const char *sqlstate, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) msg[--n] = 0;
    if (sqlstate && strlen(sqlstate) == 5)
        return braid_failure_new(code, "[SQLSTATE %s] %s", sqlstate, msg);
    return braid_failure_new(code, "%s", msg);
}

bool braid_db_sqlstate(const braid_failure *f, char out[6]) {
    for (; f; f = f->cause) {
        if (f->message && !strncmp(f->message, "[SQLSTATE ", 10) && strlen(f->message) >= 16 &&
            f->message[15] == ']') {
            memcpy(out, f->message + 10, 5);
            out[5] = 0;
            return true;
        }
    }
    return false;
}

static braid_failure *failure_copy(const braid_failure *f) {
    braid_failure *c = braid_failure_new(f->code, "%s", f->message ? f->message : "");
    return c;
}

static bool retryable_code(int code) {
    return code == BRAID_EDB_BUSY || code == BRAID_EDB_SERIALIZE;
}

/* ---- targets --------------------------------------------------------------------------- */
static int deliver_callback(braid_db_target *t, void *data, size_t len, void (*free_fn)(void *)) {
    t->cb(data, len, t->arg);
    t->delivered++;
    if (free_fn) free_fn(data);
    return 0;
}
static const braid_db_target_ops callback_ops = { deliver_callback };

void braid_db_target_init_callback(braid_db_target *t, braid_db_target_cb cb, void *arg) {
    memset(t, 0, sizeof *t);
    t->ops = &callback_ops;
    t->cb = cb;
    t->arg = arg;
}

static int deliver_transport(braid_db_target *t, void *data, size_t len, void (*free_fn)(void *)) {
    int rc = t->transport ? braid_transport_write(t->transport, data, len) : BRAID_EPIPE;
    if (rc >= 0) t->delivered++;
    else t->dropped++;
    if (free_fn) free_fn(data);
    return rc < 0 ? rc : 0;
}
static const braid_db_target_ops transport_ops = { deliver_transport };

void braid_db_target_init_transport(braid_db_target *t, braid_transport *transport) {
    memset(t, 0, sizeof *t);
    t->ops = &transport_ops;
    t->transport = transport;
}

void braid_db_target_detach(braid_db_target *t) { t->transport = NULL; }

/* A stage: the message becomes the event (data, free_fn). braid_stage_enqueue
 * takes it on 0 and leaves it with us on every error: then it is freed here,
 * once, and counted (the target's `dropped`, the db's `refused`). */
static int deliver_stage(braid_db_target *t, void *data, size_t len, void (*free_fn)(void *)) {
    (void)len;
    braid_stage_event ev = BRAID_STAGE_EVENT(data, free_fn);
    int rc = braid_stage_enqueue(t->stage, &ev);
    if (rc == 0) {
        t->delivered++;
        return 0;
    }
    t->dropped++;
    t->last_error = rc;
    if (free_fn) free_fn(data);
    return rc;
}
static const braid_db_target_ops stage_ops = { deliver_stage };

void braid_db_target_init_stage(braid_db_target *t, braid_stage *stage) {
    memset(t, 0, sizeof *t);
    t->ops = &stage_ops;
    t->stage = stage;
}

/* ---- emit -------------------------------------------------------------------------------- */
static void emits_free(braid_db *db, emit_node *e) {
    while (e) {
        emit_node *next = e->next;
        if (e->free_fn) e->free_fn(e->data);
        braid_free(e);
        atomic_fetch_add_explicit(&db->st_dropped, 1, memory_order_relaxed);
        e = next;
    }
}

static void txn_set_failed(braid_txn *txn, braid_failure *f) {
    if (!txn->failed) txn->failed = f;
    else braid_failure_free(f);
}

int braid_txn_emit(braid_txn *txn, braid_db_target *target, void *data, size_t len,
                   void (*free_fn)(void *)) {
    emit_node *e = braid_malloc(sizeof *e);
    if (!e) {
        if (free_fn) free_fn(data);
        atomic_fetch_add_explicit(&txn->db->st_dropped, 1, memory_order_relaxed);
        txn_set_failed(txn, braid_failure_new(BRAID_ENOMEM, "braid_txn_emit: no memory for a "
                                                            "message; the transaction rolls back"));
        return BRAID_ENOMEM;
    }
    e->next = NULL;
    e->target = target;
    e->data = data;
    e->len = len;
    e->free_fn = free_fn;
    *txn->emit_tail = e;
    txn->emit_tail = &e->next;
    return 0;
}

int braid_txn_emit_copy(braid_txn *txn, braid_db_target *target, const void *data, size_t len) {
    void *copy = braid_malloc(len ? len : 1);
    if (!copy) {
        atomic_fetch_add_explicit(&txn->db->st_dropped, 1, memory_order_relaxed);
        txn_set_failed(txn, braid_failure_new(BRAID_ENOMEM, "braid_txn_emit_copy: no memory for "
                                                            "a message; the transaction rolls back"));
        return BRAID_ENOMEM;
    }
    if (len) memcpy(copy, data, len);
    return braid_txn_emit(txn, target, copy, len, braid_free);
}

/* ---- statements ---------------------------------------------------------------------------- */
static int txn_check(braid_txn *txn) {
    if (txn->failed) return txn->failed->code;
    int intr = atomic_load(&txn->job->interrupt);
    if (intr) {
        txn_set_failed(txn, braid_failure_new(intr, "the transaction was interrupted (%s)",
                                              braid_strerror(intr)));
        return intr;
    }
    return 0;
}

/* A driver call failed: keep its failure, mapping an interruption to its cause. */
static int txn_fail(braid_txn *txn, int rc, braid_failure *f) {
    int intr = atomic_load(&txn->job->interrupt);
    if (rc == BRAID_ECANCELED && intr) {
        f = braid_failure_wrap(f, intr, "the transaction was interrupted (%s)",
                               braid_strerror(intr));
        rc = intr;
    }
    if (rc == BRAID_EDB_CONN_LOST) txn->conn->broken = true;
    txn_set_failed(txn, f);
    return rc;
}

static void txn_finish_rows(braid_txn *txn) {
    if (txn->in_rows) {
        txn->conn->drv->finish(txn->conn);
        txn->in_rows = false;
    }
}

int braid_txn_query(braid_txn *txn, const char *sql, const braid_db_value *params, size_t nparams) {
    txn_finish_rows(txn);
    int rc = txn_check(txn);
    if (rc < 0) return rc;
    braid_failure *f = NULL;
    rc = txn->conn->drv->query(txn->conn, sql, params, nparams, &f);
    if (rc < 0) return txn_fail(txn, rc, f);
    txn->in_rows = true;
    return 0;
}

int braid_txn_step(braid_txn *txn) {
    if (!txn->in_rows) return txn->failed ? txn->failed->code : BRAID_EDB_MISUSE;
    braid_failure *f = NULL;
    int rc = txn->conn->drv->step(txn->conn, &f);
    if (rc < 0) {
        txn_finish_rows(txn);
        return txn_fail(txn, rc, f);
    }
    return rc;
}

int64_t braid_txn_exec(braid_txn *txn, const char *sql, const braid_db_value *params,
                       size_t nparams) {
    int rc = braid_txn_query(txn, sql, params, nparams);
    if (rc < 0) return rc;
    while ((rc = braid_txn_step(txn)) == 1) {}
    if (rc < 0) return rc;
    int64_t n = txn->conn->drv->changes(txn->conn);
    txn_finish_rows(txn);
    return n;
}

int braid_txn_query_int(braid_txn *txn, const char *sql, const braid_db_value *params,
                        size_t nparams, int64_t *out) {
    int rc = braid_txn_query(txn, sql, params, nparams);
    if (rc < 0) return rc;
    rc = braid_txn_step(txn);
    if (rc == 1) *out = txn->conn->drv->column_int(txn->conn, 0);
    if (rc >= 0) txn_finish_rows(txn);
    return rc;
}

static bool col_ok(braid_txn *txn, int col) {
    return txn->in_rows && col >= 0 && col < txn->conn->drv->columns(txn->conn);
}
int braid_txn_columns(braid_txn *txn) {
    return txn->in_rows ? txn->conn->drv->columns(txn->conn) : 0;
}
braid_db_type braid_txn_column_type(braid_txn *txn, int col) {
    return col_ok(txn, col) ? txn->conn->drv->column_type(txn->conn, col) : BRAID_DB_NULL;
}
int64_t braid_txn_column_int(braid_txn *txn, int col) {
    return col_ok(txn, col) ? txn->conn->drv->column_int(txn->conn, col) : 0;
}
double braid_txn_column_double(braid_txn *txn, int col) {
    return col_ok(txn, col) ? txn->conn->drv->column_double(txn->conn, col) : 0.0;
}
const char *braid_txn_column_text(braid_txn *txn, int col, size_t *len) {
    size_t l = 0;
    const char *p = col_ok(txn, col) ? txn->conn->drv->column_bytes(txn->conn, col, &l, true) : NULL;
    if (len) *len = l;
    return p;
}
const void *braid_txn_column_blob(braid_txn *txn, int col, size_t *len) {
    size_t l = 0;
    const void *p = col_ok(txn, col) ? txn->conn->drv->column_bytes(txn->conn, col, &l, false) : NULL;
    if (len) *len = l;
    return p;
}

braid_result braid_txn_failure(braid_txn *txn) {
    if (!txn->failed) return braid_result_errf(BRAID_EDB_MISUSE, "braid_txn_failure: no statement failed");
    return braid_result_err(failure_copy(txn->failed));
}
unsigned braid_txn_attempt(const braid_txn *txn) { return txn->attempt; }
const char *braid_txn_engine(const braid_txn *txn) { return txn->db->drv->name; }
const char *braid_db_engine(const braid_db *db) { return db->drv->name; }

/* ---- connections: one per thread ------------------------------------------------------------- */
static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void conn_close(braid__db_conn *c) {
    if (!c) return;
    braid_db *db = c->db;
    pthread_mutex_lock(&db->mu);
    if (c->cprev) c->cprev->cnext = c->cnext;
    else db->conns = c->cnext;
    if (c->cnext) c->cnext->cprev = c->cprev;
    pthread_mutex_unlock(&db->mu);
    c->drv->close(c);
}

static void conn_key_dtor(void *p) { conn_close(p); }

static braid__db_conn *conn_get(braid_db *db, braid_failure **f) {
    braid__db_conn *c = pthread_getspecific(db->key);
    if (c && c->broken) {
        pthread_setspecific(db->key, NULL);
        conn_close(c);
        atomic_fetch_add_explicit(&db->st_reconnects, 1, memory_order_relaxed);
        c = NULL;
    }
    if (c) return c;
    int rc = db->drv->connect(db, &c, f);
    if (rc < 0) return NULL;
    c->drv = db->drv;
    c->db = db;
    c->broken = false;
    c->interrupt = NULL;
    atomic_store_explicit(&c->phase, BRAID__DB_IDLE, memory_order_relaxed);
    atomic_store_explicit(&c->attempt, 0, memory_order_relaxed);
    pthread_mutex_lock(&db->mu);
    c->cprev = NULL;
    c->cnext = db->conns;
    if (db->conns) db->conns->cprev = c;
    db->conns = c;
    pthread_mutex_unlock(&db->mu);
    if (pthread_setspecific(db->key, c) != 0) {
        conn_close(c);
        *f = braid_failure_new(BRAID_ENOMEM, "pthread_setspecific failed");
        return NULL;
    }
    atomic_fetch_add_explicit(&db->st_connects, 1, memory_order_relaxed);
    return c;
}

static void job_set_conn(job *j, braid__db_conn *c, unsigned attempt) {
    if (c) {
        c->interrupt = &j->interrupt;
        atomic_store_explicit(&c->since_ns, mono_ns(), memory_order_relaxed);
        atomic_store_explicit(&c->attempt, attempt, memory_order_relaxed);
        atomic_store_explicit(&c->phase, BRAID__DB_TXN, memory_order_relaxed);
    } else if (j->conn) {
        j->conn->interrupt = NULL;
        atomic_store_explicit(&j->conn->phase, BRAID__DB_IDLE, memory_order_relaxed);
    }
    pthread_mutex_lock(&j->db->mu);
    j->conn = c;
    pthread_mutex_unlock(&j->db->mu);
    if (c && atomic_load(&j->interrupt)) c->drv->interrupt(c);
}

/* ---- the worker ------------------------------------------------------------------------------- */
static void backoff(unsigned attempt) {
    /* 0, then ~0.5-1 ms, 1-2 ms, 2-4 ms ... capped at 50 ms; jitter from the clock */
    if (attempt <= 1) return;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t base = 500000ull << (attempt - 2 < 6 ? attempt - 2 : 6);
    if (base > 50000000ull) base = 50000000ull;
    uint64_t ns = base / 2 + (uint64_t)(now.tv_nsec % (long)(base / 2 + 1));
    struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
    nanosleep(&ts, NULL);
}

static void post_done_locked(braid_db *db, job *j) {
    j->next_done = NULL;
    if (db->done_tail) db->done_tail->next_done = j;
    else db->done_head = j;
    db->done_tail = j;
}

/* Move every resolved ticket at the head of `pending` on. db->mu held. */
static void release_in_order_locked(braid_db *db) {
    while (db->pending && db->pending->ticket == db->next_release) {
        order_node *o = db->pending;
        db->pending = o->next;
        db->next_release++;
        if (o->job) post_done_locked(db, o->job);
    }
}

static void insert_pending_locked(braid_db *db, order_node *o) {
    order_node **pp = &db->pending;
    while (*pp && (*pp)->ticket < o->ticket) pp = &(*pp)->next;
    o->next = *pp;
    *pp = o;
}

static void wake_loop(braid_db *db) {
    /* db->mu held by the caller; while braid_db_free runs, it drains itself */
    if (db->done_head && !db->wake_posted && !db->freeing) {
        db->wake_posted = true;
        braid_loop_post_node(db->loop, &db->wake);
    }
}

static uint64_t take_ticket(job *j) {
    braid_db *db = j->db;
    pthread_mutex_lock(&db->mu);
    if (j->has_ticket) {   /* void the previous attempt's ticket */
        order_node *v = &j->voids[j->nvoids++];
        v->ticket = j->order.ticket;
        v->job = NULL;
        insert_pending_locked(db, v);
        release_in_order_locked(db);
        wake_loop(db);
    }
    j->has_ticket = true;
    j->order.ticket = db->next_ticket++;
    j->order.job = j;
    pthread_mutex_unlock(&db->mu);
    return j->order.ticket;
}

static void job_complete(job *j) {
    braid_db *db = j->db;
    pthread_mutex_lock(&db->mu);
    j->conn = NULL;
    if (j->has_ticket) {
        insert_pending_locked(db, &j->order);
        release_in_order_locked(db);
    } else {
        post_done_locked(db, j);
    }
    wake_loop(db);
    pthread_mutex_unlock(&db->mu);
}

/* braid_db_query: run the statement, collect its rows into one block. */
static braid_result run_query_rows(braid_txn *txn, job *j) {
    int rc = braid_txn_query(txn, j->sql, j->params, j->nparams);
    if (rc < 0) return braid_result_ok(NULL);   /* txn->failed says why */
    size_t cap = 0, nrows = 0, ncols = (size_t)braid_txn_columns(txn);
    braid_db_rows *rows = NULL;
    /* two passes are impossible on a cursor: grow cells, copy text into a side arena */
    braid_db_value *cells = NULL;
    char **bufs = NULL;
    size_t textbytes = 0;
    while ((rc = braid_txn_step(txn)) == 1) {
        if (nrows == cap) {
            cap = cap ? cap * 2 : 8;
            braid_db_value *nc = braid_realloc(cells, cap * (ncols ? ncols : 1) * sizeof *nc);
            char **nb = braid_realloc(bufs, cap * (ncols ? ncols : 1) * sizeof *nb);
            if (nc) cells = nc;
            if (nb) bufs = nb;
            if (!nc || !nb) { rc = BRAID_ENOMEM; break; }
        }
        for (size_t c = 0; c < ncols; c++) bufs[nrows * ncols + c] = NULL;
        for (size_t c = 0; c < ncols; c++) {
            braid_db_value *v = &cells[nrows * ncols + c];
            char **b = &bufs[nrows * ncols + c];
            v->type = braid_txn_column_type(txn, (int)c);
            if (v->type == BRAID_DB_INTEGER) v->u.i = braid_txn_column_int(txn, (int)c);
            else if (v->type == BRAID_DB_FLOAT) v->u.f = braid_txn_column_double(txn, (int)c);
            else if (v->type != BRAID_DB_NULL) {
                size_t len;
                const void *p = v->type == BRAID_DB_TEXT ? (const void *)braid_txn_column_text(txn, (int)c, &len)
                                                         : braid_txn_column_blob(txn, (int)c, &len);
                *b = braid_malloc(len + 1);
                if (!*b) { v->type = BRAID_DB_NULL; rc = BRAID_ENOMEM; break; }
                if (len) memcpy(*b, p, len);
                (*b)[len] = 0;
                v->u.s.len = len;
                textbytes += len + 1;
            }
        }
        if (rc == BRAID_ENOMEM) { nrows++; break; }
        nrows++;
    }
    if (rc >= 0) {
        size_t ncells = nrows * ncols;
        rows = braid_malloc(sizeof *rows + ncells * sizeof(braid_db_value) + textbytes);
        if (rows) {
            rows->rows = nrows;
            rows->columns = ncols;
            rows->changed = txn->conn->drv->changes(txn->conn);
            char *arena = (char *)&rows->cells[ncells];
            for (size_t i = 0; i < ncells; i++) {
                rows->cells[i] = cells[i];
                if (bufs[i]) {
                    size_t len = cells[i].u.s.len;
                    memcpy(arena, bufs[i], len + 1);
                    rows->cells[i].u.s.p = arena;
                    arena += len + 1;
                }
            }
        } else {
            rc = BRAID_ENOMEM;
        }
    }
    for (size_t i = 0; i < nrows * ncols; i++) braid_free(bufs[i]);
    braid_free(bufs);
    braid_free(cells);
    txn_finish_rows(txn);
    if (rc == BRAID_ENOMEM) {
        braid_free(rows);
        return braid_result_errf(BRAID_ENOMEM, "braid_db_query: no memory for the rows");
    }
    if (rc < 0) return braid_result_ok(NULL);
    return braid_result_ok_owned(rows, braid_free);
}

/* One attempt. Returns its result; *commit_started when COMMIT was sent. */
static braid_result run_attempt(braid_txn *txn, job *j, bool *begin_lost, bool *in_commit) {
    braid__db_conn *c = txn->conn;
    braid_failure *f = NULL;
    int rc = c->drv->begin(c, j->flags, &f);
    if (rc < 0) {
        if (rc == BRAID_EDB_CONN_LOST) {
            *begin_lost = true;
            c->broken = true;
            return braid_result_err(f);
        }
        txn_fail(txn, rc, f);
        return braid_result_err(failure_copy(txn->failed));
    }
    braid_result r = j->sql ? run_query_rows(txn, j) : j->fn(txn, j->arg);
    txn_finish_rows(txn);
    if (r.chain) {   /* a worker cannot own a Deferred */
        braid_result_drop(r);
        r = braid_result_errf(BRAID_EINVAL, "an interaction returned braid_result_chain(); fn must return a value "
                                     "or a failure");
    }
    if (!r.failure && txn->failed) {   /* a statement failed: that wins over fn's success */
        braid_result_drop(r);
        r = braid_result_err(failure_copy(txn->failed));
    }
    if (!r.failure) {
        rc = txn_check(txn);   /* interrupted after fn's last statement? */
        if (rc < 0) {
            braid_result_drop(r);
            r = braid_result_err(failure_copy(txn->failed));
        }
    }
    if (r.failure) {
        if (!c->broken) c->drv->rollback(c);
        return r;
    }
    if (txn->emits) take_ticket(j);
    *in_commit = true;
    atomic_store_explicit(&c->phase, BRAID__DB_COMMIT, memory_order_relaxed);
    rc = c->drv->commit(c, &f);
    if (rc < 0) {
        braid_result_drop(r);
        if (rc == BRAID_EDB_CONN_LOST) c->broken = true;
        else c->drv->rollback(c);
        return braid_result_err(f);
    }
    j->committed = true;
    return r;
}

static void worker(void *arg) {
    job *j = arg;
    braid_db *db = j->db;
    braid_result res = braid_result_ok(NULL);
    bool reconnected = false;
    unsigned attempt = 0;
    /* The context hop: the caller's context, plus braid_db_txn_key = &txn
     * (one address for every attempt), is current while fn runs. */
    braid_txn txn;
    atomic_store_explicit(&j->started, true, memory_order_relaxed);
    braid_ctx *prev_ctx = braid_ctx_swap(j->ctx);
    braid_ctx_scope scope;
    int prc = braid_ctx_push_ptr(&scope, &braid_db_txn_key, &txn);
    if (prc < 0) {
        braid_ctx_swap(prev_ctx);
        j->result = braid_result_errf(prc, "no memory for the interaction's context");
        job_complete(j);
        return;
    }
    for (;;) {
        int intr = atomic_load(&j->interrupt);
        if (atomic_load(&db->closing) && !intr) intr = BRAID_ESHUTDOWN;
        if (intr) {
            res = braid_result_errf(intr, intr == BRAID_ESHUTDOWN ? "the db was freed before the interaction ran"
                                                           : "the interaction was interrupted (%s) before it ran",
                             braid_strerror(intr));
            break;
        }
        braid_failure *f = NULL;
        braid__db_conn *c = conn_get(db, &f);
        if (!c) {
            res = braid_result_err(f);
            break;
        }
        attempt++;
        txn = (braid_txn){ .db = db, .job = j, .conn = c, .attempt = attempt };
        txn.emit_tail = &txn.emits;
        job_set_conn(j, c, attempt);
        bool begin_lost = false, in_commit = false;
        bool writer = db->serial_writers && !(j->flags & BRAID_DB_READ_ONLY);
        if (writer) pthread_mutex_lock(&db->writer_mu);
        res = run_attempt(&txn, j, &begin_lost, &in_commit);
        if (writer) pthread_mutex_unlock(&db->writer_mu);
        job_set_conn(j, NULL, 0);
        braid_failure_free(txn.failed);
        if (!res.failure) {
            j->emits = txn.emits;
            atomic_fetch_add_explicit(&db->st_committed, 1, memory_order_relaxed);
            break;
        }
        emits_free(db, txn.emits);
        atomic_fetch_add_explicit(&db->st_rolled_back, 1, memory_order_relaxed);
        int code = res.failure->code;
        if (begin_lost && !reconnected) {   /* nothing happened yet: reconnect, begin again */
            reconnected = true;
            attempt--;
            braid_result_drop(res);
            continue;
        }
        bool retry = (j->flags & BRAID_DB_RETRYABLE) && attempt < db->max_attempts &&
                     (retryable_code(code) || (code == BRAID_EDB_CONN_LOST && !in_commit)) &&
                     !atomic_load(&j->interrupt) && !atomic_load(&db->closing);
        if (!retry) {
            if (retryable_code(code) && (j->flags & BRAID_DB_RETRYABLE))
                res = braid_result_err(braid_failure_wrap(res.failure, code, "gave up after %u attempts",
                                                   attempt));
            break;
        }
        braid_result_drop(res);
        atomic_fetch_add_explicit(&db->st_retries, 1, memory_order_relaxed);
        backoff(attempt + 1);
    }
    braid_ctx_pop(&scope);
    braid_ctx_swap(prev_ctx);
    if (res.failure) atomic_fetch_add_explicit(&db->st_failed, 1, memory_order_relaxed);
    j->result = res;
    job_complete(j);
}

/* ---- the loop side ------------------------------------------------------------------------------ */
static void job_free(job *j) {
    braid_ctx_unref(j->ctx);
    braid_free(j->sql);
    braid_free(j->params);
    braid_free(j);
}

static void job_finish(braid_db *db, job *j) {
    if (j->timer_on) {
        braid_timer_stop(&j->timer);
        j->timer_on = false;
    }
    if (j->prev) j->prev->next_live = j->next_live;
    else db->live = j->next_live;
    if (j->next_live) j->next_live->prev = j->prev;
    if (j->committed) {
        for (emit_node *e = j->emits, *next; e; e = next) {
            next = e->next;
            int rc = e->target->ops->deliver(e->target, e->data, e->len, e->free_fn);
            braid_free(e);
            atomic_fetch_add_explicit(rc == 0 ? &db->st_released : &db->st_refused, 1,
                                      memory_order_relaxed);
        }
    } else {
        emits_free(db, j->emits);
    }
    j->emits = NULL;
    braid_deferred *d = j->d;
    braid_result r = j->result;
    braid_loop_release(db->loop);
    job_free(j);
    if (d) braid_deferred_fire(d, r);
    else braid_result_drop(r);
}

/* Finish the answered jobs. Their callbacks may call braid_db_free: the
 * struct then stays until the outermost drain has returned. */
static void drain(braid_db *db, bool from_wake) {
    db->draining++;
    for (;;) {
        pthread_mutex_lock(&db->mu);
        job *j = db->done_head;
        db->done_head = db->done_tail = NULL;
        /* The wake-up node is ours again only once the list is seen empty:
         * answers that come meanwhile are taken by this loop, and no second
         * wake-up is posted for them (it would find nothing, and keep the
         * loop's leak gate shut). */
        if (!j && from_wake) db->wake_posted = false;
        pthread_mutex_unlock(&db->mu);
        if (!j) break;
        while (j) {
            job *next = j->next_done;
            job_finish(db, j);
            j = next;
        }
    }
    db->draining--;
}

static void db_struct_free(braid_db *db);

/* The end of braid_db_free: the struct goes now, or with the wake-up still
 * posted to the loop. */
static void free_final(braid_db *db) {
    pthread_mutex_lock(&db->mu);
    db->freed = true;
    bool posted = db->wake_posted;
    pthread_mutex_unlock(&db->mu);
    if (!posted) db_struct_free(db);
}

static void db_struct_free(braid_db *db) {
    braid_free(db->name);
    pthread_key_delete(db->key);
    pthread_mutex_destroy(&db->writer_mu);
    pthread_mutex_destroy(&db->mu);
    braid_free(db->cfg.target);
    braid_free(db);
}

static void on_wake(void *arg) {
    braid_db *db = arg;
    pthread_mutex_lock(&db->mu);
    bool freed = db->freed;
    pthread_mutex_unlock(&db->mu);
    if (freed) {   /* posted before braid_db_free, which drained it already */
        db_struct_free(db);
        return;
    }
    drain(db, true);
    if (db->free_requested) free_final(db);   /* braid_db_free ran in a callback */
}

static void job_interrupt(job *j, int code) {
    int expected = 0;
    if (!atomic_compare_exchange_strong(&j->interrupt, &expected, code)) return;
    pthread_mutex_lock(&j->db->mu);
    braid__db_conn *c = j->conn;
    if (c) c->drv->interrupt(c);   /* under mu: the worker cannot drop c meanwhile */
    pthread_mutex_unlock(&j->db->mu);
}

/* The deadline fails the Deferred now, whatever the worker is doing (fn may
 * be busy outside any statement for seconds), and interrupts the work; the
 * job finishes later and its result is dropped. */
static void on_deadline(braid_timer *t, void *arg) {
    (void)t;
    job *j = arg;
    j->timer_on = false;
    job_interrupt(j, BRAID_ETIMEDOUT);
    braid_deferred *d = j->d;
    if (!d) return;
    j->d = NULL;
    atomic_fetch_add_explicit(&j->db->st_timed_out, 1, memory_order_relaxed);
    braid_deferred_errback(d, braid_failure_new(BRAID_ETIMEDOUT, "the interaction's deadline passed"));
}

static void on_cancel(braid_deferred *d, void *arg) {
    (void)d;
    job *j = arg;
    j->d = NULL;   /* braid errbacks d with BRAID_ECANCELED; the job forgets it */
    job_interrupt(j, BRAID_ECANCELED);
}

static braid_deferred *submit(braid_db *db, job *j, const braid_db_run_options *opts) {
    braid_deferred *d = braid_deferred_new_cancellable(db->loop, on_cancel, j);
    if (!d) {
        job_free(j);
        return NULL;
    }
    j->d = d;
    int rc = atomic_load(&db->closing) ? BRAID_ESHUTDOWN : 0;
    if (rc == 0) {
        braid_loop_hold(db->loop);
        j->next_live = db->live;
        if (db->live) db->live->prev = j;
        db->live = j;
        if (opts && opts->timeout && opts->timeout != BRAID_FOREVER) {
            braid_timer_init(db->loop, &j->timer, on_deadline, j);
            uint64_t deadline = braid_loop_now(db->loop) + opts->timeout;
            if (braid_timer_start_at(&j->timer, deadline) == 0) j->timer_on = true;
        }
        rc = braid_pool_call(db->pool, worker, j);
        if (rc < 0) {
            if (j->timer_on) braid_timer_stop(&j->timer);
            j->timer_on = false;
            if (j->prev) j->prev->next_live = j->next_live;
            else db->live = j->next_live;
            if (j->next_live) j->next_live->prev = j->prev;
            braid_loop_release(db->loop);
        }
    }
    if (rc < 0) {
        atomic_fetch_add_explicit(&db->st_rejected, 1, memory_order_relaxed);
        job_free(j);
        braid_deferred_errback(d, braid_failure_new(rc, "%s", rc == BRAID_EQUEUE_FULL
                                                    ? "the db's queue is full"
                                                    : rc == BRAID_ESHUTDOWN ? "the db is being freed"
                                                    : "could not queue the interaction"));
        /* the Deferred now holds the failure; cancellation can no longer reach the job */
    }
    return d;
}

braid_deferred *braid_db_run_interaction(braid_db *db, braid_txn_fn fn, void *arg,
                                         const braid_db_run_options *opts) {
    job *j = braid_calloc(1, sizeof *j);
    if (!j) return NULL;
    j->db = db;
    j->fn = fn;
    j->arg = arg;
    j->flags = opts ? opts->flags : 0;
    j->ctx = braid_ctx_capture();   /* fn runs in the caller's context (worker) */
    return submit(db, j, opts);
}

braid_deferred *braid_db_query(braid_db *db, const char *sql, const braid_db_value *params,
                               size_t nparams) {
    job *j = braid_calloc(1, sizeof *j);
    if (!j) return NULL;
    j->db = db;
    size_t extra = 0;
    for (size_t i = 0; i < nparams; i++)
        if (params[i].type == BRAID_DB_TEXT || params[i].type == BRAID_DB_BLOB)
            extra += params[i].u.s.len;
    j->sql = braid_strdup(sql);
    j->params = nparams ? braid_malloc(nparams * sizeof *params + extra) : NULL;
    if (!j->sql || (nparams && !j->params)) {
        job_free(j);
        return NULL;
    }
    char *arena = (char *)&j->params[nparams];
    for (size_t i = 0; i < nparams; i++) {
        j->params[i] = params[i];
        if (params[i].type == BRAID_DB_TEXT || params[i].type == BRAID_DB_BLOB) {
            if (params[i].u.s.len) memcpy(arena, params[i].u.s.p, params[i].u.s.len);
            j->params[i].u.s.p = arena;
            arena += params[i].u.s.len;
        }
    }
    j->nparams = nparams;
    return submit(db, j, NULL);
}

/* ---- introspection ------------------------------------------------------------------------------ */
static const char *const phase_names[] = { "idle", "transaction", "committing" };

/* The db's entry in the loop's "databases" section: the engine, each open
 * connection (what it does, its attempt, how long it has been at it),
 * interactions queued for a thread and in flight, the counters. A SQLite
 * db shows its path; a PostgreSQL one no target (a conninfo may hold a
 * password). Loop thread; the connections' list under the db's mutex. */
static void describe(braid_json *j, void *arg) {
    braid_db *db = arg;
    size_t in_flight = 0, queued = 0;
    for (job *q = db->live; q; q = q->next_live) {
        in_flight++;
        queued += !atomic_load_explicit(&q->started, memory_order_relaxed);
    }
    struct braid_db_stats st;
    braid_db_stats(db, &st);
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", db->name);
    braid_json_kv_str(j, "engine", db->drv->name);
    braid_json_kv_str(j, "target", db->drv == &braid__db_sqlite ? db->cfg.target : NULL);
    braid_json_kv_u64(j, "max_connections", db->max_connections);
    braid_json_kv_u64(j, "queue_limit", db->queue_limit);
    braid_json_kv_u64(j, "in_flight", in_flight);
    braid_json_kv_u64(j, "queued", queued);
    braid_json_key(j, "connections");
    braid_json_array_begin(j);
    uint64_t now = mono_ns();
    pthread_mutex_lock(&db->mu);
    for (braid__db_conn *c = db->conns; c; c = c->cnext) {
        int ph = atomic_load_explicit(&c->phase, memory_order_relaxed);
        uint64_t since = atomic_load_explicit(&c->since_ns, memory_order_relaxed);
        braid_json_object_begin(j);
        braid_json_kv_str(j, "state", phase_names[ph >= 0 && ph <= 2 ? ph : 0]);
        braid_json_kv_bool(j, "in_transaction", ph != BRAID__DB_IDLE);
        braid_json_key(j, "busy_ns");
        if (ph != BRAID__DB_IDLE) braid_json_u64(j, now > since ? now - since : 0);
        else braid_json_null(j);
        braid_json_kv_u64(j, "attempt", ph != BRAID__DB_IDLE ? atomic_load_explicit(&c->attempt, memory_order_relaxed) : 0);
        braid_json_object_end(j);
    }
    pthread_mutex_unlock(&db->mu);
    braid_json_array_end(j);
    braid_json_kv_u64(j, "committed", st.committed);
    braid_json_kv_u64(j, "rolled_back", st.rolled_back);
    braid_json_kv_u64(j, "retries", st.retries);
    braid_json_kv_u64(j, "failed", st.failed);
    braid_json_kv_u64(j, "timed_out", st.timed_out);
    braid_json_kv_u64(j, "rejected", st.rejected);
    braid_json_kv_u64(j, "connects", st.connects);
    braid_json_kv_u64(j, "reconnects", st.reconnects);
    braid_json_kv_u64(j, "released", st.released);
    braid_json_kv_u64(j, "dropped", st.dropped);
    braid_json_kv_u64(j, "refused", st.refused);
    braid_json_object_end(j);
}

/* ---- open, free, stats ------------------------------------------------------------------------- */
int braid_db_open(braid_loop *loop, const char *url, const braid_db_options *opts,
                  braid_db **out) {
    braid_db_options o = { 0 };
    if (opts) o = *opts;
    if (!loop || !url || !out) return BRAID_EINVAL;
    const braid__db_driver *drv = NULL;
    const char *target = NULL;
    bool memory = false;
    if (!strncmp(url, "sqlite:", 7)) {
        drv = &braid__db_sqlite;
        target = url + 7;
        memory = !strcmp(target, ":memory:");
        if (!*target) return BRAID_EDB_URL;
    } else if (!strncmp(url, "postgresql://", 13) || !strncmp(url, "postgres://", 11)) {
        drv = &braid__db_pg;
        target = url;
    } else if (!strncmp(url, "postgresql:", 11)) {
        drv = &braid__db_pg;
        target = url + 11;
    } else {
        return BRAID_EDB_URL;
    }
    braid_db *db = braid_calloc(1, sizeof *db);
    if (!db) return BRAID_ENOMEM;
    db->loop = loop;
    db->drv = drv;
    db->cfg.target = braid_strdup(target);
    db->cfg.memory = memory;
    db->cfg.busy_timeout = o.busy_timeout ? o.busy_timeout : BRAID_SECONDS(5);
    db->cfg.statement_cache = o.statement_cache ? o.statement_cache : 64;
    db->cfg.flags = o.flags;
    db->max_attempts = o.max_attempts ? o.max_attempts : 5;
    if (db->max_attempts > BRAID__DB_MAX_ATTEMPTS) db->max_attempts = BRAID__DB_MAX_ATTEMPTS;
    db->wake.fn = on_wake;
    db->wake.arg = db;
    if (!db->cfg.target) {
        braid_free(db);
        return BRAID_ENOMEM;
    }
    if (pthread_mutex_init(&db->mu, NULL) != 0) {
        braid_free(db->cfg.target);
        braid_free(db);
        return BRAID_ENOMEM;
    }
    db->serial_writers = drv == &braid__db_sqlite;
    if (pthread_mutex_init(&db->writer_mu, NULL) != 0) {
        pthread_mutex_destroy(&db->mu);
        braid_free(db->cfg.target);
        braid_free(db);
        return BRAID_ENOMEM;
    }
    if (pthread_key_create(&db->key, conn_key_dtor) != 0) {
        pthread_mutex_destroy(&db->writer_mu);
        pthread_mutex_destroy(&db->mu);
        braid_free(db->cfg.target);
        braid_free(db);
        return BRAID_EAGAIN;
    }
    unsigned n = memory ? 1 : (o.connections ? o.connections : 4);
    db->max_connections = n;
    db->queue_limit = o.queue_limit ? o.queue_limit : 1024;
    db->name = braid_strdup(o.name ? o.name : "braid-db");
    if (!db->name) {
        db_struct_free(db);
        return BRAID_ENOMEM;
    }
    braid_pool_options po = {
        .min_threads = 0,
        .max_threads = n,
        .name = db->name,
        .queue_limit = db->queue_limit,
        .idle_timeout = o.idle_timeout ? o.idle_timeout : BRAID_SECONDS(60),
        .loop = loop,
        /* a transaction costs tens of microseconds at least: spinning for it
         * would only take a core from the database */
        .flags = BRAID_POOL_NO_SPIN,
    };
    int rc = braid_pool_new(&po, &db->pool);
    if (rc < 0) {
        db_struct_free(db);
        return rc;
    }
    braid_introspect_add(loop, &db->inode, "databases", describe, db);
    *out = db;
    return 0;
}

void braid_db_free(braid_db *db) {
    if (!db || db->pool == NULL) return;   /* NULL, or freed already from a callback */
    braid_introspect_remove(db->loop, &db->inode);
    atomic_store(&db->closing, true);
    pthread_mutex_lock(&db->mu);
    db->freeing = true;
    pthread_mutex_unlock(&db->mu);
    for (job *j = db->live; j; j = j->next_live) job_interrupt(j, BRAID_ESHUTDOWN);
    /* FINISH: queued jobs run, see `closing` and fail at once without touching
     * the database, so each Deferred fires exactly once. */
    braid_pool_free(db->pool);
    db->pool = NULL;
    drain(db, false);
    if (db->draining) {   /* called from a callback of an answer being finished */
        db->free_requested = true;
        return;
    }
    free_final(db);
}

void braid_db_stats(braid_db *db, struct braid_db_stats *out) {
    out->committed = atomic_load(&db->st_committed);
    out->rolled_back = atomic_load(&db->st_rolled_back);
    out->retries = atomic_load(&db->st_retries);
    out->reconnects = atomic_load(&db->st_reconnects);
    out->connects = atomic_load(&db->st_connects);
    out->released = atomic_load(&db->st_released);
    out->dropped = atomic_load(&db->st_dropped);
    out->refused = atomic_load(&db->st_refused);
    out->rejected = atomic_load(&db->st_rejected);
    out->timed_out = atomic_load(&db->st_timed_out);
    out->failed = atomic_load(&db->st_failed);
}
