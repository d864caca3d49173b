/* libbraid-db: the SQLite driver (Debian's libsqlite3).
 *
 * One connection per db thread, opened with SQLITE_OPEN_NOMUTEX (only its
 * thread uses it; sqlite3_interrupt, the one call from the loop, is safe from
 * any thread). Each connection: WAL, busy_timeout, synchronous=NORMAL (FULL
 * with BRAID_DB_SYNC_FULL), foreign_keys=ON, and a cache of prepared
 * statements (SQLITE_PREPARE_PERSISTENT, reset after every use so none keeps a
 * read transaction open). Writers BEGIN IMMEDIATE: they queue for the write
 * lock at BEGIN, under the busy timeout, instead of failing to upgrade a read
 * lock later (SQLITE_BUSY_SNAPSHOT, which no busy timeout waits out). */
#include "db_internal.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct cached {
    char *sql;
    sqlite3_stmt *st;
    uint64_t used;
} cached;

typedef struct sq_conn {
    braid__db_conn base;
    sqlite3 *db;
    cached *cache;
    unsigned ncache, cap;
    uint64_t clock;
    sqlite3_stmt *cur;          /* the statement being stepped */
    bool cur_cached;
} sq_conn;

static int map_rc(int rc) {
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED: return BRAID_EDB_BUSY;
    case SQLITE_CONSTRAINT: return BRAID_EDB_CONSTRAINT;
    case SQLITE_INTERRUPT: return BRAID_ECANCELED;
    case SQLITE_NOMEM: return BRAID_ENOMEM;
    default: return BRAID_EDB_SQL;
    }
}

static int sq_error(sq_conn *c, int rc, const char *what, braid_failure **f) {
    int code = map_rc(rc);
    *f = braid__db_failure(code, NULL, "sqlite: %s: %s (%s, extended code %d)", what,
                           c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc), sqlite3_errstr(rc), rc);
    return code;
}

static void sq_close(braid__db_conn *bc) {
    sq_conn *c = (sq_conn *)bc;
    for (unsigned i = 0; i < c->ncache; i++) {
        sqlite3_finalize(c->cache[i].st);
        braid_free(c->cache[i].sql);
    }
    braid_free(c->cache);
    if (c->cur && !c->cur_cached) sqlite3_finalize(c->cur);
    sqlite3_close_v2(c->db);
    braid_free(c);
}

/* Every 1000 VM steps: has the running job been interrupted? */
static int sq_progress(void *arg) {
    sq_conn *c = arg;
    return c->base.interrupt && atomic_load(c->base.interrupt) != 0;
}

static int sq_exec_plain(sq_conn *c, const char *sql, braid_failure **f) {
    char *err = NULL;
    int rc = sqlite3_exec(c->db, sql, NULL, NULL, &err);
    if (rc != SQLITE_OK) {
        int code = map_rc(rc);
        *f = braid__db_failure(code, NULL, "sqlite: %s: %s (%s)", sql, err ? err : sqlite3_errmsg(c->db),
                               sqlite3_errstr(rc));
        sqlite3_free(err);
        return code;
    }
    return 0;
}

static int sq_connect(braid_db *db, braid__db_conn **out, braid_failure **f) {
    const braid__db_config *cfg = braid__db_config_of(db);
    sq_conn *c = braid_calloc(1, sizeof *c);
    if (!c) {
        *f = braid_failure_new(BRAID_ENOMEM, "sqlite: no memory for a connection");
        return BRAID_ENOMEM;
    }
    int rc = sqlite3_open_v2(cfg->target, &c->db,
                             SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX |
                             SQLITE_OPEN_URI, NULL);
    if (rc != SQLITE_OK) {
        *f = braid__db_failure(BRAID_EDB_CONNECT, NULL, "sqlite: cannot open %s: %s", cfg->target,
                               c->db ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
        sqlite3_close_v2(c->db);
        braid_free(c);
        return BRAID_EDB_CONNECT;
    }
    sqlite3_extended_result_codes(c->db, 1);
    sqlite3_progress_handler(c->db, 1000, sq_progress, c);
    /* In ms, an int: BRAID_FOREVER (or anything past INT_MAX ms, 24 days)
     * is the longest SQLite can wait. */
    uint64_t busy_ms = cfg->busy_timeout / 1000000ull;
    sqlite3_busy_timeout(c->db, busy_ms > INT_MAX ? INT_MAX : (int)busy_ms);
    char pragmas[256];
    snprintf(pragmas, sizeof pragmas, "%s PRAGMA synchronous=%s; PRAGMA foreign_keys=ON;",
             cfg->memory ? "" : "PRAGMA journal_mode=WAL;",
             (cfg->flags & BRAID_DB_SYNC_FULL) ? "FULL" : "NORMAL");
    braid_failure *pf = NULL;
    if (sq_exec_plain(c, pragmas, &pf) < 0) {
        *f = braid_failure_wrap(pf, BRAID_EDB_CONNECT, "sqlite: cannot set up %s", cfg->target);
        sqlite3_close_v2(c->db);
        braid_free(c);
        return BRAID_EDB_CONNECT;
    }
    c->cap = cfg->statement_cache;
    *out = &c->base;
    return 0;
}

/* A prepared statement for sql, from the cache or new (cached if there is room
 * or an older one to evict). */
static int sq_prepare(sq_conn *c, const char *sql, braid_failure **f) {
    c->clock++;
    for (unsigned i = 0; i < c->ncache; i++) {
        if (!strcmp(c->cache[i].sql, sql)) {
            c->cache[i].used = c->clock;
            c->cur = c->cache[i].st;
            c->cur_cached = true;
            return 0;
        }
    }
    sqlite3_stmt *st = NULL;
    const char *tail = NULL;
    int rc = sqlite3_prepare_v3(c->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &st, &tail);
    if (rc != SQLITE_OK) return sq_error(c, rc, "prepare", f);
    if (!st) {
        *f = braid_failure_new(BRAID_EDB_SQL, "sqlite: empty statement");
        return BRAID_EDB_SQL;
    }
    if (tail && strspn(tail, " \t\r\n;") != strlen(tail)) {
        sqlite3_finalize(st);
        *f = braid_failure_new(BRAID_EDB_SQL, "sqlite: one statement per call (found more after \"%.40s\")",
                               sql);
        return BRAID_EDB_SQL;
    }
    c->cur = st;
    c->cur_cached = false;
    if (!c->cap) return 0;
    unsigned slot = c->ncache;
    if (c->ncache == c->cap) {
        slot = 0;
        for (unsigned i = 1; i < c->ncache; i++)
            if (c->cache[i].used < c->cache[slot].used) slot = i;
        sqlite3_finalize(c->cache[slot].st);
        braid_free(c->cache[slot].sql);
        c->cache[slot].st = NULL;
        c->cache[slot].sql = NULL;
    } else if (!c->cache) {
        c->cache = braid_calloc(c->cap, sizeof *c->cache);
        if (!c->cache) return 0;   /* uncached: finalized after use */
    }
    char *copy = braid_strdup(sql);
    if (!copy) {
        if (slot < c->ncache) {   /* the evicted slot is empty: close the gap */
            c->cache[slot] = c->cache[--c->ncache];
        }
        return 0;
    }
    c->cache[slot] = (cached){ copy, st, c->clock };
    if (slot == c->ncache) c->ncache++;
    c->cur_cached = true;
    return 0;
}

static void sq_finish(braid__db_conn *bc) {
    sq_conn *c = (sq_conn *)bc;
    if (!c->cur) return;
    sqlite3_reset(c->cur);
    sqlite3_clear_bindings(c->cur);
    if (!c->cur_cached) sqlite3_finalize(c->cur);
    c->cur = NULL;
}

static int sq_query(braid__db_conn *bc, const char *sql, const braid_db_value *p, size_t n,
                    braid_failure **f) {
    sq_conn *c = (sq_conn *)bc;
    sq_finish(bc);
    int rc = sq_prepare(c, sql, f);
    if (rc < 0) return rc;
    int count = sqlite3_bind_parameter_count(c->cur);
    for (int i = 1; i <= count; i++) {
        const char *name = sqlite3_bind_parameter_name(c->cur, i);
        long idx = i;
        if (name) {
            char *end;
            idx = strtol(name + 1, &end, 10);
            if (*end || idx < 1) {
                sq_finish(bc);
                *f = braid_failure_new(BRAID_EDB_SQL, "sqlite: parameter %s: write parameters as $1, $2, ...",
                                       name);
                return BRAID_EDB_SQL;
            }
        }
        if ((size_t)idx > n) {
            sq_finish(bc);
            *f = braid_failure_new(BRAID_EDB_SQL, "sqlite: parameter %ld given no value (%zu given)", idx, n);
            return BRAID_EDB_SQL;
        }
        const braid_db_value *v = &p[idx - 1];
        switch (v->type) {
        case BRAID_DB_NULL: rc = sqlite3_bind_null(c->cur, i); break;
        case BRAID_DB_INTEGER: rc = sqlite3_bind_int64(c->cur, i, v->u.i); break;
        case BRAID_DB_FLOAT: rc = sqlite3_bind_double(c->cur, i, v->u.f); break;
        case BRAID_DB_TEXT:
            rc = sqlite3_bind_text64(c->cur, i, v->u.s.p ? v->u.s.p : "", v->u.s.len, SQLITE_TRANSIENT,
                                     SQLITE_UTF8);
            break;
        case BRAID_DB_BLOB:
            rc = sqlite3_bind_blob64(c->cur, i, v->u.s.p ? v->u.s.p : "", v->u.s.len, SQLITE_TRANSIENT);
            break;
        }
        if (rc != SQLITE_OK) {
            int code = sq_error(c, rc, "bind", f);
            sq_finish(bc);
            return code;
        }
    }
    return 0;
}

static int sq_step(braid__db_conn *bc, braid_failure **f) {
    sq_conn *c = (sq_conn *)bc;
    if (!c->cur) return 0;
    int rc = sqlite3_step(c->cur);
    if (rc == SQLITE_ROW) return 1;
    if (rc == SQLITE_DONE) return 0;
    int code = sq_error(c, rc, sqlite3_sql(c->cur) ? sqlite3_sql(c->cur) : "step", f);
    return code;
}

static int64_t sq_changes(braid__db_conn *bc) { return sqlite3_changes64(((sq_conn *)bc)->db); }

static int sq_columns(braid__db_conn *bc) {
    sq_conn *c = (sq_conn *)bc;
    return c->cur ? sqlite3_column_count(c->cur) : 0;
}

static braid_db_type sq_column_type(braid__db_conn *bc, int col) {
    switch (sqlite3_column_type(((sq_conn *)bc)->cur, col)) {
    case SQLITE_INTEGER: return BRAID_DB_INTEGER;
    case SQLITE_FLOAT: return BRAID_DB_FLOAT;
    case SQLITE_TEXT: return BRAID_DB_TEXT;
    case SQLITE_BLOB: return BRAID_DB_BLOB;
    default: return BRAID_DB_NULL;
    }
}
static int64_t sq_column_int(braid__db_conn *bc, int col) {
    return sqlite3_column_int64(((sq_conn *)bc)->cur, col);
}
static double sq_column_double(braid__db_conn *bc, int col) {
    return sqlite3_column_double(((sq_conn *)bc)->cur, col);
}
static const void *sq_column_bytes(braid__db_conn *bc, int col, size_t *len, bool text) {
    sqlite3_stmt *st = ((sq_conn *)bc)->cur;
    const void *p = text ? (const void *)sqlite3_column_text(st, col) : sqlite3_column_blob(st, col);
    *len = (size_t)sqlite3_column_bytes(st, col);
    return p;
}

/* BEGIN/COMMIT go through the statement cache too. */
static int sq_run1(sq_conn *c, const char *sql, braid_failure **f) {
    int rc = sq_query(&c->base, sql, NULL, 0, f);
    if (rc < 0) return rc;
    rc = sq_step(&c->base, f);
    sq_finish(&c->base);
    return rc < 0 ? rc : 0;
}

static int sq_begin(braid__db_conn *bc, unsigned flags, braid_failure **f) {
    return sq_run1((sq_conn *)bc, (flags & BRAID_DB_READ_ONLY) ? "BEGIN DEFERRED" : "BEGIN IMMEDIATE", f);
}
static int sq_commit(braid__db_conn *bc, braid_failure **f) { return sq_run1((sq_conn *)bc, "COMMIT", f); }
static void sq_rollback(braid__db_conn *bc) {
    sq_conn *c = (sq_conn *)bc;
    sq_finish(bc);
    if (!sqlite3_get_autocommit(c->db)) {
        _Atomic int *intr = c->base.interrupt;   /* the rollback itself must not be interrupted */
        c->base.interrupt = NULL;
        braid_failure *f = NULL;
        if (sq_run1(c, "ROLLBACK", &f) < 0) braid_failure_free(f);
        c->base.interrupt = intr;
    }
}
static void sq_interrupt(braid__db_conn *bc) { sqlite3_interrupt(((sq_conn *)bc)->db); }

const braid__db_driver braid__db_sqlite = {
    .name = "sqlite",
    .connect = sq_connect,
    .close = sq_close,
    .begin = sq_begin,
    .commit = sq_commit,
    .rollback = sq_rollback,
    .query = sq_query,
    .step = sq_step,
    .changes = sq_changes,
    .finish = sq_finish,
    .columns = sq_columns,
    .column_type = sq_column_type,
    .column_int = sq_column_int,
    .column_double = sq_column_double,
    .column_bytes = sq_column_bytes,
    .interrupt = sq_interrupt,
};
