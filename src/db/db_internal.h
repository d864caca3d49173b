/* Internals of libbraid-db shared by db.c (pool, jobs, commit-ordered
 * release), sqlite.c and pg.c (the drivers). Built on braid's public headers
 * only: libbraid-db is a library of its own (src/db/CMakeLists.txt). */
#ifndef BRAID_DB_INTERNAL_H
#define BRAID_DB_INTERNAL_H

#include <braid/db.h>
#include <braid/pool.h>
#include <pthread.h>
#include <stdatomic.h>

#define BRAID__DB_MAX_ATTEMPTS 16

typedef struct braid__db_conn braid__db_conn;

/* A driver: every call but interrupt runs on the connection's thread. A call
 * that fails returns a negative code and sets *f (owned by the caller):
 * BRAID_EDB_SQL, _BUSY, _SERIALIZE, _CONSTRAINT, _CONN_LOST, or
 * BRAID_ECANCELED when interrupted. */
typedef struct braid__db_driver {
    const char *name;
    int (*connect)(braid_db *db, braid__db_conn **out, braid_failure **f);
    void (*close)(braid__db_conn *c);
    int (*begin)(braid__db_conn *c, unsigned flags, braid_failure **f);
    int (*commit)(braid__db_conn *c, braid_failure **f);
    void (*rollback)(braid__db_conn *c);
    /* Run sql; stand before the first row. */
    int (*query)(braid__db_conn *c, const char *sql, const braid_db_value *p, size_t n,
                 braid_failure **f);
    int (*step)(braid__db_conn *c, braid_failure **f);   /* 1 row, 0 done */
    int64_t (*changes)(braid__db_conn *c);
    void (*finish)(braid__db_conn *c);                    /* done with the rows */
    int (*columns)(braid__db_conn *c);
    braid_db_type (*column_type)(braid__db_conn *c, int col);
    int64_t (*column_int)(braid__db_conn *c, int col);
    double (*column_double)(braid__db_conn *c, int col);
    const void *(*column_bytes)(braid__db_conn *c, int col, size_t *len, bool text);
    /* Any thread (the loop's): make the running statement fail soon. */
    void (*interrupt)(braid__db_conn *c);
} braid__db_driver;

extern const braid__db_driver braid__db_sqlite;
extern const braid__db_driver braid__db_pg;

/* What every connection starts with. */
struct braid__db_conn {
    const braid__db_driver *drv;
    braid_db *db;
    bool broken;               /* lost: close it, reconnect next time */
    /* The running job's interrupt flag (its thread sets and reads it): a
     * driver polls it while a statement runs, so an interruption that came
     * just before the statement started is not lost. NULL between jobs. */
    _Atomic int *interrupt;
    /* Introspection (db.c): the db's list of open connections (under the
     * db's mutex) and what this one is doing, read on the loop. */
    braid__db_conn *cprev, *cnext;
    _Atomic int phase;          /* BRAID__DB_IDLE, _TXN, _COMMIT */
    _Atomic uint64_t since_ns;  /* CLOCK_MONOTONIC when the attempt began */
    _Atomic unsigned attempt;
};
enum { BRAID__DB_IDLE = 0, BRAID__DB_TXN, BRAID__DB_COMMIT };

/* The parts of the db the drivers read. */
typedef struct braid__db_config {
    char *target;              /* path (SQLite) or conninfo (PostgreSQL) */
    bool memory;               /* sqlite::memory: */
    uint64_t busy_timeout;
    unsigned statement_cache;
    unsigned flags;
} braid__db_config;
const braid__db_config *braid__db_config_of(braid_db *db);

/* A failure from the driver's text, with its SQLSTATE kept where
 * braid_db_sqlstate finds it ("[SQLSTATE xxxxx] ..."). */
braid_failure *braid__db_failure(int code, const char *sqlstate, const char *fmt, ...)
    BRAID_PRINTF(3, 4);

#endif
