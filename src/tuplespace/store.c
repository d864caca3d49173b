/* Durability: a space kept in an SQLite database (braid_tuplespace_options.path).
 *
 * Write-through, one autocommit statement per change, on the loop's thread:
 * a row per tuple in the space's care (stored or leased), inserted by out
 * before out returns, deleted when the tuple leaves for good (in, ack, a
 * dead letter's original), its delivery count updated when it is leased.
 * Reopening the file loads every row back, in out order; a tuple that was
 * leased when the process ended is stored again (its lease died with the
 * process that held it) with its deliveries, so the next lease counts on.
 *
 * The journal is WAL with synchronous=NORMAL (a commit survives the process
 * crashing; after a power loss the last commits may be gone) or FULL
 * (options.sync_full: every commit is on disk before out returns). The body
 * of a row is the tuple's fields in the wire encoding (wire.c). */
#include "tuplespace_internal.h"
#include <stdio.h>

#ifdef BRAID_HAVE_SQLITE
#include <sqlite3.h>

struct ts_store {
    sqlite3 *db;
    sqlite3_stmt *ins, *del, *upd;
    ts_buf body;
};

static int db_error(ts_store *s) {
    (void)s;
    return -EIO;
}

void braid__ts_store_close(ts_store *s) {
    if (!s) return;
    sqlite3_finalize(s->ins);
    sqlite3_finalize(s->del);
    sqlite3_finalize(s->upd);
    sqlite3_close(s->db);
    braid__ts_buf_free(&s->body);
    braid_free(s);
}

int braid__ts_store_open(const char *path, bool sync_full, ts_store **out, char *err, size_t errlen) {
    ts_store *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    int rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    char sql[512];
    snprintf(sql, sizeof sql,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=%s; PRAGMA busy_timeout=5000;"
             "CREATE TABLE IF NOT EXISTS braid_tuples (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL,"
             " priority INTEGER NOT NULL, deliveries INTEGER NOT NULL, body BLOB NOT NULL);",
             sync_full ? "FULL" : "NORMAL");
    if (rc == SQLITE_OK) rc = sqlite3_exec(s->db, sql, NULL, NULL, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(s->db, "INSERT INTO braid_tuples (seq, priority, deliveries, body) VALUES (?,?,?,?)",
                                -1, SQLITE_PREPARE_PERSISTENT, &s->ins, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(s->db, "DELETE FROM braid_tuples WHERE id = ?", -1, SQLITE_PREPARE_PERSISTENT,
                                &s->del, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_prepare_v3(s->db, "UPDATE braid_tuples SET deliveries = ? WHERE id = ?", -1,
                                SQLITE_PREPARE_PERSISTENT, &s->upd, NULL);
    if (rc != SQLITE_OK) {
        snprintf(err, errlen, "%s: %s", path, s->db ? sqlite3_errmsg(s->db) : "cannot open");
        braid__ts_store_close(s);
        return -EIO;
    }
    *out = s;
    return 0;
}

int braid__ts_store_load(ts_store *s, braid__ts_store_row_fn each, void *arg) {
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT id, seq, priority, deliveries, body FROM braid_tuples ORDER BY seq",
                           -1, &q, NULL) != SQLITE_OK)
        return db_error(s);
    int rc = 0, step;
    braid_field f[BRAID_TUPLE_MAX_FIELDS];
    while ((step = sqlite3_step(q)) == SQLITE_ROW) {
        const uint8_t *body = sqlite3_column_blob(q, 4);
        size_t len = (size_t)sqlite3_column_bytes(q, 4);
        uint32_t n;
        if (braid__ts_wire_fields(body, len, f, &n) < 0) { rc = BRAID_ETUPLE_PROTO; break; }
        rc = each(arg, (uint64_t)sqlite3_column_int64(q, 0), (uint64_t)sqlite3_column_int64(q, 1),
                  (int32_t)sqlite3_column_int64(q, 2), (uint32_t)sqlite3_column_int64(q, 3), f, n);
        if (rc < 0) break;
    }
    if (rc == 0 && step != SQLITE_DONE) rc = db_error(s);
    sqlite3_finalize(q);
    return rc;
}

static int run(ts_store *s, sqlite3_stmt *st) {
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_DONE ? 0 : db_error(s);
}

int braid__ts_store_insert(ts_store *s, const braid_tuple *t, uint64_t seq, uint64_t *rowid) {
    s->body.len = 0;
    braid__ts_put_fields(&s->body, t->f, t->n);
    if (s->body.failed) { s->body.failed = false; return BRAID_ENOMEM; }
    sqlite3_bind_int64(s->ins, 1, (sqlite3_int64)seq);
    sqlite3_bind_int64(s->ins, 2, t->priority);
    sqlite3_bind_int64(s->ins, 3, t->deliveries);
    sqlite3_bind_blob(s->ins, 4, s->body.p, (int)s->body.len, SQLITE_STATIC);
    int rc = run(s, s->ins);
    if (rc == 0) *rowid = (uint64_t)sqlite3_last_insert_rowid(s->db);
    return rc;
}

int braid__ts_store_delete(ts_store *s, uint64_t rowid) {
    sqlite3_bind_int64(s->del, 1, (sqlite3_int64)rowid);
    return run(s, s->del);
}

int braid__ts_store_deliveries(ts_store *s, uint64_t rowid, uint32_t deliveries) {
    sqlite3_bind_int64(s->upd, 1, deliveries);
    sqlite3_bind_int64(s->upd, 2, (sqlite3_int64)rowid);
    return run(s, s->upd);
}

#else  /* built without SQLite */

int braid__ts_store_open(const char *path, bool sync_full, ts_store **out, char *err, size_t errlen) {
    (void)sync_full; (void)out;
    snprintf(err, errlen, "%s: braid was built without SQLite (libsqlite3-dev)", path);
    return BRAID_ENOSYS;
}
void braid__ts_store_close(ts_store *s) { (void)s; }
int braid__ts_store_load(ts_store *s, braid__ts_store_row_fn each, void *arg) {
    (void)s; (void)each; (void)arg;
    return BRAID_ENOSYS;
}
int braid__ts_store_insert(ts_store *s, const braid_tuple *t, uint64_t seq, uint64_t *rowid) {
    (void)s; (void)t; (void)seq; (void)rowid;
    return BRAID_ENOSYS;
}
int braid__ts_store_delete(ts_store *s, uint64_t rowid) { (void)s; (void)rowid; return BRAID_ENOSYS; }
int braid__ts_store_deliveries(ts_store *s, uint64_t rowid, uint32_t deliveries) {
    (void)s; (void)rowid; (void)deliveries;
    return BRAID_ENOSYS;
}
#endif
