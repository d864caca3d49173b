/* braid execution context: typed values that follow work wherever it goes.
 *
 * "Figuring out what reactor your process is currently using is part of a
 * more general problem of execution context" ("Twisted Do-Over", 2005): the
 * current request, the current database connection, the request id a log
 * line should carry. braid answers with an explicit context:
 *
 *   - a *key* is a declared object with a name, a type and a doc string —
 *     there are no string lookups and no untyped bags;
 *   - a *context* is an immutable map from keys to values; braid_ctx_with
 *     makes a new one from an old one plus one value, in O(1), sharing the
 *     old one (a persistent structure: nothing is copied);
 *   - each thread has a *current* context. braid captures it where work is
 *     scheduled and restores it where the work runs: Deferred callbacks
 *     (captured when the callback is added), timers and call_later (when
 *     started), braid_loop_soon / braid_loop_post (when queued, on the
 *     posting thread), pool jobs (when submitted; restored on the worker),
 *     fibers (a fiber starts in its spawner's context and keeps its own
 *     across every await, sleep and yield), HTTP handlers (the request is in
 *     it, under braid_http_request_key), stage events and component
 *     messages (per event / message, when enqueued or sent; a threaded
 *     component's thread gets each message's), db interactions (on the
 *     connection's thread, with braid_db_txn_key set).
 *
 * Example: tag everything a request starts with the user it is for.
 *
 *     static const braid_ctx_key USER = BRAID_CTX_KEY_INIT("app.user", BRAID_CTX_STR,
 *                                                          "the authenticated user");
 *     braid_ctx_scope s;
 *     if (braid_ctx_push_str(&s, &USER, "alice") == 0) {
 *         start_work();               // every callback, timer and job it schedules
 *         braid_ctx_pop(&s);          // will see USER = "alice"
 *     }
 *     ...
 *     const char *who = braid_ctx_get_str(&USER);     // NULL when not set
 *     const char *file; int line;
 *     braid_ctx_origin(braid_ctx_current(), &USER, &file, &line);   // where it was set
 *
 * Ownership: a braid_ctx is reference counted (any thread). braid_ctx_with
 * and braid_ctx_capture return a reference, yours to give back with
 * braid_ctx_unref. braid_ctx_current returns a borrowed pointer, valid until
 * the scope that made it current ends. Contexts are immutable: share them
 * between threads freely.
 *
 * Values: integers, doubles and strings are copied into the context
 * (strings up to any length, copied once). A pointer value is stored as
 * given; when its key has a release function, the context owns the pointer
 * and calls it (on whatever thread drops the last reference) when the
 * context is freed, else the pointer is borrowed and must outlive every
 * piece of work scheduled under the context.
 *
 * Threads: every function here may be called from any thread; the current
 * context is the calling thread's own. */
#ifndef BRAID_CONTEXT_H
#define BRAID_CONTEXT_H

#include <braid/common.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of the context and log modules: -4700 … -4799. */
#define BRAID_ECTX_TYPE (-4700)     /* a value of another type than its key's */

typedef enum braid_ctx_type {
    BRAID_CTX_PTR = 1,      /* void *, borrowed or owned (the key's release) */
    BRAID_CTX_I64,          /* int64_t */
    BRAID_CTX_U64,          /* uint64_t */
    BRAID_CTX_F64,          /* double */
    BRAID_CTX_STR,          /* a NUL-terminated string, copied */
} braid_ctx_type;

/* A key: declare it once, static const, and use its address. */
typedef struct braid_ctx_key {
    const char *name;                 /* "http.request": for logs and introspection */
    braid_ctx_type type;
    const char *doc;                  /* what the value means */
    void (*release)(void *value);     /* PTR keys: the context owns the value */
} braid_ctx_key;
#define BRAID_CTX_KEY_INIT(name, type, doc) { (name), (type), (doc), NULL }

typedef union braid_ctx_value {
    void *ptr;
    int64_t i64;
    uint64_t u64;
    double f64;
    const char *str;
} braid_ctx_value;

typedef struct braid_ctx braid_ctx;

/* ---- building contexts ---------------------------------------------------------- */
/* A new context: parent (NULL = the empty context) plus key = value, where
 * type says what v holds and must be the key's (BRAID_ECTX_TYPE otherwise:
 * the typed macros below pass it); a string is copied. file/line are
 * recorded as the value's origin (the macros pass the caller's). *out is a
 * reference, yours. 0, BRAID_EINVAL, BRAID_ENOMEM or BRAID_ECTX_TYPE; on
 * failure a PTR value whose key has a release function is released. */
BRAID_API int braid_ctx_with_at(braid_ctx *parent, const braid_ctx_key *key, braid_ctx_type type,
                                braid_ctx_value v, const char *file, int line, braid_ctx **out);
#define BRAID__CTX_WITH(parent, key, T, field, x, out) \
    braid_ctx_with_at((parent), (key), (T), (braid_ctx_value){ .field = (x) }, __FILE__, __LINE__, (out))
#define braid_ctx_with_ptr(parent, key, x, out) BRAID__CTX_WITH(parent, key, BRAID_CTX_PTR, ptr, x, out)
#define braid_ctx_with_i64(parent, key, x, out) BRAID__CTX_WITH(parent, key, BRAID_CTX_I64, i64, x, out)
#define braid_ctx_with_u64(parent, key, x, out) BRAID__CTX_WITH(parent, key, BRAID_CTX_U64, u64, x, out)
#define braid_ctx_with_f64(parent, key, x, out) BRAID__CTX_WITH(parent, key, BRAID_CTX_F64, f64, x, out)
#define braid_ctx_with_str(parent, key, x, out) BRAID__CTX_WITH(parent, key, BRAID_CTX_STR, str, x, out)

BRAID_API braid_ctx *braid_ctx_ref(braid_ctx *ctx);     /* NULL passes through */
BRAID_API void braid_ctx_unref(braid_ctx *ctx);         /* NULL: no-op */

/* ---- reading ---------------------------------------------------------------------- */
/* The value of key in ctx (the most recent with of that key), or false. */
BRAID_API bool braid_ctx_lookup(const braid_ctx *ctx, const braid_ctx_key *key, braid_ctx_value *out);
/* Where key's value in ctx was set (file and line of the braid_ctx_with or
 * push), or false when ctx has no value for key. */
BRAID_API bool braid_ctx_origin(const braid_ctx *ctx, const braid_ctx_key *key, const char **file,
                                int *line);
/* Typed reads of the calling thread's current context; the key's type must
 * match (debug builds abort naming the key otherwise). Absent: NULL, 0,
 * the default given. */
BRAID_API void *braid_ctx_get_ptr(const braid_ctx_key *key);
BRAID_API int64_t braid_ctx_get_i64(const braid_ctx_key *key, int64_t dflt);
BRAID_API uint64_t braid_ctx_get_u64(const braid_ctx_key *key, uint64_t dflt);
BRAID_API double braid_ctx_get_f64(const braid_ctx_key *key, double dflt);
BRAID_API const char *braid_ctx_get_str(const braid_ctx_key *key);
/* Number of values in ctx, shadowed ones included (its depth). */
BRAID_API size_t braid_ctx_depth(const braid_ctx *ctx);
/* Visit each visible value of ctx, newest first (a shadowed value is
 * skipped). Stops when fn returns false. */
typedef bool (*braid_ctx_visit_fn)(const braid_ctx_key *key, braid_ctx_value v, const char *file,
                                   int line, void *arg);
BRAID_API void braid_ctx_visit(const braid_ctx *ctx, braid_ctx_visit_fn fn, void *arg);

/* ---- the current context ---------------------------------------------------------- */
/* The calling thread's current context, borrowed (NULL: empty). */
BRAID_API braid_ctx *braid_ctx_current(void);

/* A scope makes a context current until it is popped; scopes nest and must
 * be popped in reverse order, on the thread that pushed them. The scope is
 * caller storage. */
typedef struct braid_ctx_scope {
    braid_ctx *prev;     /* borrowed: the context current before */
    braid_ctx *ctx;      /* the scope's reference */
} braid_ctx_scope;
/* Make ctx current (takes a reference of its own). Never fails. */
BRAID_API void braid_ctx_enter(braid_ctx_scope *s, braid_ctx *ctx);
/* Make current the current context plus key = value. 0, BRAID_ENOMEM or
 * BRAID_ECTX_TYPE (nothing changed then; the scope must not be popped). */
BRAID_API int braid_ctx_push_at(braid_ctx_scope *s, const braid_ctx_key *key, braid_ctx_type type,
                                braid_ctx_value v, const char *file, int line);
#define BRAID__CTX_PUSH(s, key, T, field, x) \
    braid_ctx_push_at((s), (key), (T), (braid_ctx_value){ .field = (x) }, __FILE__, __LINE__)
#define braid_ctx_push_ptr(s, key, x) BRAID__CTX_PUSH(s, key, BRAID_CTX_PTR, ptr, x)
#define braid_ctx_push_i64(s, key, x) BRAID__CTX_PUSH(s, key, BRAID_CTX_I64, i64, x)
#define braid_ctx_push_u64(s, key, x) BRAID__CTX_PUSH(s, key, BRAID_CTX_U64, u64, x)
#define braid_ctx_push_f64(s, key, x) BRAID__CTX_PUSH(s, key, BRAID_CTX_F64, f64, x)
#define braid_ctx_push_str(s, key, x) BRAID__CTX_PUSH(s, key, BRAID_CTX_STR, str, x)
/* Restore the context current before the scope; drop the scope's reference. */
BRAID_API void braid_ctx_pop(braid_ctx_scope *s);

/* ---- carrying the context to work that runs later ------------------------------------
 * What braid's own schedulers do, for libraries that schedule work of their
 * own (a queue between threads, a stage, a component's inbox):
 *
 *     job->ctx = braid_ctx_capture();               // where the work is queued
 *     ...
 *     braid_ctx *prev = braid_ctx_swap(job->ctx);   // where it runs
 *     job->fn(job->arg);
 *     braid_ctx_swap(prev);
 *     braid_ctx_unref(job->ctx);                    // when the work is done with it
 *
 * capture returns a reference to the current context (NULL when empty: no
 * atomic operation then; under a scope pushed on this thread, none either:
 * the scope buys references 64 at a time and takes back the unused ones
 * when popped); swap makes c current (borrowed: keep it alive while
 * it is current) and returns the previous one, borrowed. */
BRAID_API braid_ctx *braid_ctx_capture(void);
BRAID_API braid_ctx *braid_ctx_swap(braid_ctx *c);

#ifdef __cplusplus
}
#endif
#endif
