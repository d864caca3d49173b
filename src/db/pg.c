/* libbraid-db: the PostgreSQL driver (libpq, blocking, one connection per db
 * thread — libpq's own rule: never two threads on one PGconn).
 *
 * Statements go through PQexecParams (the extended protocol: parameters are
 * sent apart from the SQL, never spliced into it), text results read as typed
 * values by their column's type. Errors keep the server's message and its
 * SQLSTATE; 40001 and 40P01 are BRAID_EDB_SERIALIZE (retryable), class 23 is
 * BRAID_EDB_CONSTRAINT, a dead connection (class 08, 57P01-57P03, or libpq's
 * CONNECTION_BAD) is BRAID_EDB_CONN_LOST, 57014 (our own cancel) is
 * BRAID_ECANCELED. Interrupts use PQcancel through a PGcancel made at connect
 * time, which libpq documents as safe from another thread. */
#include "db_internal.h"

#include <libpq-fe.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct pg_conn {
    braid__db_conn base;
    PGconn *pg;
    PGcancel *cancel;
    PGresult *res;             /* the current statement's rows */
    int row, nrows;
    unsigned char *unesc;      /* the last unescaped bytea */
    char *scratch;             /* parameter text */
    size_t scratch_cap;
    /* prepared statements ("b1", "b2", ...) by SQL text, least recently used evicted */
    struct { char *sql; unsigned name; uint64_t used; } *cache;
    unsigned ncache, cap, next_name;
    uint64_t clock;
} pg_conn;

static void notice_quiet(void *arg, const char *message) {
    (void)arg;
    (void)message;
}

static void pg_close(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    for (unsigned i = 0; i < c->ncache; i++) braid_free(c->cache[i].sql);
    braid_free(c->cache);
    if (c->res) PQclear(c->res);
    if (c->unesc) PQfreemem(c->unesc);
    if (c->cancel) PQfreeCancel(c->cancel);
    PQfinish(c->pg);
    braid_free(c->scratch);
    braid_free(c);
}

static int pg_connect(braid_db *db, braid__db_conn **out, braid_failure **f) {
    const braid__db_config *cfg = braid__db_config_of(db);
    pg_conn *c = braid_calloc(1, sizeof *c);
    if (!c) {
        *f = braid_failure_new(BRAID_ENOMEM, "postgresql: no memory for a connection");
        return BRAID_ENOMEM;
    }
    c->pg = PQconnectdb(cfg->target);
    if (!c->pg || PQstatus(c->pg) != CONNECTION_OK) {
        *f = braid__db_failure(BRAID_EDB_CONNECT, NULL, "postgresql: cannot connect: %s",
                               c->pg ? PQerrorMessage(c->pg) : "out of memory");
        PQfinish(c->pg);
        braid_free(c);
        return BRAID_EDB_CONNECT;
    }
    PQsetNoticeProcessor(c->pg, notice_quiet, NULL);
    c->cancel = PQgetCancel(c->pg);
    c->cap = cfg->statement_cache;
    *out = &c->base;
    return 0;
}

/* Send a statement and wait for its result, watching the job's interrupt
 * flag meanwhile (a cancel from the loop can land before the statement
 * reached the server and be lost; the worker then cancels it itself, again
 * until it ends). The last result of the statement, or NULL when the
 * connection failed. */
enum { SEND_SIMPLE, SEND_PARAMS, SEND_PREPARE, SEND_PREPARED };
static PGresult *pg_exec(pg_conn *c, int how, const char *name, const char *sql, int n,
                         const char *const *values, const int *lengths, const int *formats) {
    int sent;
    switch (how) {
    case SEND_SIMPLE: sent = PQsendQuery(c->pg, sql); break;
    case SEND_PARAMS: sent = PQsendQueryParams(c->pg, sql, n, NULL, values, lengths, formats, 0); break;
    case SEND_PREPARE: sent = PQsendPrepare(c->pg, name, sql, n, NULL); break;
    default: sent = PQsendQueryPrepared(c->pg, name, n, values, lengths, formats, 0); break;
    }
    if (!sent) return NULL;
    while (PQisBusy(c->pg)) {
        /* A cancel that reaches the server before the statement started is
         * ignored there: repeat it every 50 ms until the statement ends. */
        if (c->base.interrupt && atomic_load(c->base.interrupt)) {
            char err[256];
            if (c->cancel) (void)PQcancel(c->cancel, err, sizeof err);
        }
        struct pollfd p = { .fd = PQsocket(c->pg), .events = POLLIN };
        if (p.fd < 0) break;
        int r = poll(&p, 1, 50);
        if (r < 0 && errno != EINTR) break;
        if (r > 0 && !PQconsumeInput(c->pg)) break;
    }
    PGresult *last = NULL, *r;
    while ((r = PQgetResult(c->pg))) {
        if (last) {
            /* keep the first error if there is one */
            if (PQresultStatus(last) == PGRES_FATAL_ERROR) { PQclear(r); continue; }
            PQclear(last);
        }
        last = r;
    }
    return last;
}

static int map_state(pg_conn *c, const char *st) {
    if (PQstatus(c->pg) == CONNECTION_BAD) return BRAID_EDB_CONN_LOST;
    if (!st) return BRAID_EDB_SQL;
    if (!strcmp(st, "40001") || !strcmp(st, "40P01")) return BRAID_EDB_SERIALIZE;
    if (!strncmp(st, "23", 2)) return BRAID_EDB_CONSTRAINT;
    if (!strcmp(st, "57014")) return BRAID_ECANCELED;
    if (!strncmp(st, "08", 2) || !strcmp(st, "57P01") || !strcmp(st, "57P02") || !strcmp(st, "57P03"))
        return BRAID_EDB_CONN_LOST;
    return BRAID_EDB_SQL;
}

/* res failed (or is NULL): a failure with the server's text; res is cleared. */
static int pg_error(pg_conn *c, PGresult *res, braid_failure **f) {
    const char *st = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int code = map_state(c, st);
    const char *msg = res && *PQresultErrorMessage(res) ? PQresultErrorMessage(res) : PQerrorMessage(c->pg);
    *f = braid__db_failure(code, st, "postgresql: %s", msg && *msg ? msg : "no result");
    if (code == BRAID_EDB_CONN_LOST) c->base.broken = true;
    if (res) PQclear(res);
    return code;
}

static void pg_finish(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    if (c->res) PQclear(c->res);
    c->res = NULL;
    c->row = -1;
    c->nrows = 0;
}

static int pg_query(braid__db_conn *bc, const char *sql, const braid_db_value *p, size_t n,
                    braid_failure **f) {
    pg_conn *c = (pg_conn *)bc;
    pg_finish(bc);
    enum { MAXP = 64 };
    if (n > MAXP) {
        *f = braid_failure_new(BRAID_EDB_SQL, "postgresql: more than %d parameters", MAXP);
        return BRAID_EDB_SQL;
    }
    const char *values[MAXP];
    int lengths[MAXP], formats[MAXP];
    /* text of numbers and NUL-terminated copies of text, in one scratch block */
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += (p[i].type == BRAID_DB_TEXT ? p[i].u.s.len : 0) + 32;
    if (need > c->scratch_cap) {
        char *s = braid_realloc(c->scratch, need);
        if (!s) {
            *f = braid_failure_new(BRAID_ENOMEM, "postgresql: no memory for parameters");
            return BRAID_ENOMEM;
        }
        c->scratch = s;
        c->scratch_cap = need;
    }
    char *w = c->scratch;
    for (size_t i = 0; i < n; i++) {
        formats[i] = 0;
        lengths[i] = 0;
        switch (p[i].type) {
        case BRAID_DB_NULL: values[i] = NULL; break;
        case BRAID_DB_INTEGER:
            values[i] = w;
            w += snprintf(w, 32, "%lld", (long long)p[i].u.i) + 1;
            break;
        case BRAID_DB_FLOAT:
            values[i] = w;
            w += snprintf(w, 32, "%.17g", p[i].u.f) + 1;
            break;
        case BRAID_DB_TEXT:
            values[i] = w;
            if (p[i].u.s.len) memcpy(w, p[i].u.s.p, p[i].u.s.len);
            w[p[i].u.s.len] = 0;
            w += p[i].u.s.len + 1;
            break;
        case BRAID_DB_BLOB:
            values[i] = p[i].u.s.p ? p[i].u.s.p : "";
            lengths[i] = (int)p[i].u.s.len;
            formats[i] = 1;
            break;
        }
    }
    /* a prepared statement from the cache, prepared now if new */
    char name[16] = "";
    if (c->cap) {
        c->clock++;
        unsigned slot = c->ncache;
        for (unsigned i = 0; i < c->ncache; i++)
            if (!strcmp(c->cache[i].sql, sql)) { slot = i; break; }
        if (slot < c->ncache) {
            c->cache[slot].used = c->clock;
            snprintf(name, sizeof name, "b%u", c->cache[slot].name);
        } else {
            if (!c->cache) c->cache = braid_calloc(c->cap, sizeof *c->cache);
            char *copy = c->cache ? braid_strdup(sql) : NULL;
            if (copy) {
                if (c->ncache == c->cap) {   /* evict the least recently used */
                    slot = 0;
                    for (unsigned i = 1; i < c->ncache; i++)
                        if (c->cache[i].used < c->cache[slot].used) slot = i;
                    char dealloc[40];
                    snprintf(dealloc, sizeof dealloc, "DEALLOCATE b%u", c->cache[slot].name);
                    PGresult *d = pg_exec(c, SEND_SIMPLE, NULL, dealloc, 0, NULL, NULL, NULL);
                    if (d) PQclear(d);
                    braid_free(c->cache[slot].sql);
                    c->cache[slot].sql = NULL;
                } else {
                    slot = c->ncache;
                }
                unsigned id = ++c->next_name;
                snprintf(name, sizeof name, "b%u", id);
                PGresult *pr = pg_exec(c, SEND_PREPARE, name, sql, (int)n, NULL, NULL, NULL);
                if (!pr || PQresultStatus(pr) != PGRES_COMMAND_OK) {
                    braid_free(copy);
                    if (slot < c->ncache) c->cache[slot] = c->cache[--c->ncache];   /* the evicted gap */
                    return pg_error(c, pr, f);
                }
                PQclear(pr);
                c->cache[slot].sql = copy;
                c->cache[slot].name = id;
                c->cache[slot].used = c->clock;
                if (slot == c->ncache) c->ncache++;
            }
        }
    }
    PGresult *res = name[0] ? pg_exec(c, SEND_PREPARED, name, NULL, (int)n, values, lengths, formats)
                            : pg_exec(c, SEND_PARAMS, NULL, sql, (int)n, values, lengths, formats);
    ExecStatusType s = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (s != PGRES_TUPLES_OK && s != PGRES_COMMAND_OK) return pg_error(c, res, f);
    c->res = res;
    c->row = -1;
    c->nrows = PQntuples(res);
    return 0;
}

static int pg_step(braid__db_conn *bc, braid_failure **f) {
    (void)f;
    pg_conn *c = (pg_conn *)bc;
    if (!c->res || c->row + 1 >= c->nrows) return 0;
    c->row++;
    return 1;
}

static int64_t pg_changes(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    return c->res ? strtoll(PQcmdTuples(c->res), NULL, 10) : 0;
}
static int pg_columns(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    return c->res ? PQnfields(c->res) : 0;
}

static braid_db_type pg_column_type(braid__db_conn *bc, int col) {
    pg_conn *c = (pg_conn *)bc;
    if (c->row < 0 || PQgetisnull(c->res, c->row, col)) return BRAID_DB_NULL;
    switch (PQftype(c->res, col)) {
    case 16: case 20: case 21: case 23: case 26: return BRAID_DB_INTEGER;  /* bool, int8/2/4, oid */
    case 700: case 701: case 1700: return BRAID_DB_FLOAT;                 /* float4/8, numeric */
    case 17: return BRAID_DB_BLOB;                                         /* bytea */
    default: return BRAID_DB_TEXT;
    }
}
static int64_t pg_column_int(braid__db_conn *bc, int col) {
    pg_conn *c = (pg_conn *)bc;
    if (c->row < 0 || PQgetisnull(c->res, c->row, col)) return 0;
    const char *v = PQgetvalue(c->res, c->row, col);
    if (PQftype(c->res, col) == 16) return v[0] == 't';
    if (PQftype(c->res, col) == 700 || PQftype(c->res, col) == 701 || PQftype(c->res, col) == 1700)
        return (int64_t)strtod(v, NULL);
    return strtoll(v, NULL, 10);
}
static double pg_column_double(braid__db_conn *bc, int col) {
    pg_conn *c = (pg_conn *)bc;
    if (c->row < 0 || PQgetisnull(c->res, c->row, col)) return 0;
    return strtod(PQgetvalue(c->res, c->row, col), NULL);
}
static const void *pg_column_bytes(braid__db_conn *bc, int col, size_t *len, bool text) {
    pg_conn *c = (pg_conn *)bc;
    *len = 0;
    if (c->row < 0 || PQgetisnull(c->res, c->row, col)) return NULL;
    const char *v = PQgetvalue(c->res, c->row, col);
    if (!text && PQftype(c->res, col) == 17) {
        if (c->unesc) PQfreemem(c->unesc);
        c->unesc = PQunescapeBytea((const unsigned char *)v, len);
        return c->unesc;
    }
    *len = (size_t)PQgetlength(c->res, c->row, col);
    return v;
}

static int pg_run1(pg_conn *c, const char *sql, braid_failure **f) {
    pg_finish(&c->base);
    PGresult *res = pg_exec(c, SEND_SIMPLE, NULL, sql, 0, NULL, NULL, NULL);
    if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) return pg_error(c, res, f);
    /* COMMIT of a transaction the server had aborted answers "ROLLBACK" */
    bool rolled_back = !strcmp(sql, "COMMIT") && !strcmp(PQcmdStatus(res), "ROLLBACK");
    PQclear(res);
    if (rolled_back) {
        *f = braid_failure_new(BRAID_EDB_SQL, "postgresql: COMMIT rolled back by the server");
        return BRAID_EDB_SQL;
    }
    return 0;
}

static int pg_begin(braid__db_conn *bc, unsigned flags, braid_failure **f) {
    const char *sql = "BEGIN";
    if ((flags & BRAID_DB_SERIALIZABLE) && (flags & BRAID_DB_READ_ONLY))
        sql = "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY";
    else if (flags & BRAID_DB_SERIALIZABLE)
        sql = "BEGIN ISOLATION LEVEL SERIALIZABLE";
    else if (flags & BRAID_DB_READ_ONLY)
        sql = "BEGIN READ ONLY";
    return pg_run1((pg_conn *)bc, sql, f);
}
static int pg_commit(braid__db_conn *bc, braid_failure **f) { return pg_run1((pg_conn *)bc, "COMMIT", f); }
static void pg_rollback(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    if (c->base.broken) return;
    _Atomic int *intr = c->base.interrupt;   /* the rollback itself must not be cancelled */
    c->base.interrupt = NULL;
    braid_failure *f = NULL;
    if (pg_run1(c, "ROLLBACK", &f) < 0) braid_failure_free(f);
    c->base.interrupt = intr;
}
static void pg_interrupt(braid__db_conn *bc) {
    pg_conn *c = (pg_conn *)bc;
    char err[256];
    if (c->cancel) (void)PQcancel(c->cancel, err, sizeof err);
}

const braid__db_driver braid__db_pg = {
    .name = "postgresql",
    .connect = pg_connect,
    .close = pg_close,
    .begin = pg_begin,
    .commit = pg_commit,
    .rollback = pg_rollback,
    .query = pg_query,
    .step = pg_step,
    .changes = pg_changes,
    .finish = pg_finish,
    .columns = pg_columns,
    .column_type = pg_column_type,
    .column_int = pg_column_int,
    .column_double = pg_column_double,
    .column_bytes = pg_column_bytes,
    .interrupt = pg_interrupt,
};
