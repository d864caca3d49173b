/* braid structured logging: events to observers, from any thread.
 *
 * An event is a level, a namespace ("braid.http", "app.db"), a message made
 * from a printf format, and typed key/value fields; the request id of the
 * current context (<braid/context.h>, braid_log_request_id_key) is added
 * to it automatically. Each loop has a logger (braid_loop_logger) with:
 *
 *   - observers: human text to a descriptor, JSON lines to a descriptor, a
 *     bounded ring in memory, a callback of yours. With none, events are
 *     written as text to stderr ("braid[warn] loop: …", debug events only
 *     when the environment has BRAID_LOG_DEBUG=1) and the last
 *     BRAID_LOG_EARLY events are also kept, to be replayed to the first
 *     observer added (what was logged before anyone listened is not lost);
 *   - filters: a level per namespace prefix, changed at any time. An event
 *     below its namespace's level is dropped where it is emitted: it costs a
 *     load and a compare, formats nothing and allocates nothing;
 *   - threads: emitting is safe from any thread (a pool job, a worker).
 *     Off the loop's thread the event is copied into a bounded queue and the
 *     loop delivers it to the observers in its posted phase; when the queue
 *     is full the event is dropped and counted (braid_logger_stats). The
 *     emitting thread never waits for the loop.
 *
 *     braid_logger *lg = braid_loop_logger(loop);
 *     braid_log_observer *json;
 *     braid_logger_add_json(lg, fd, &json);                  // JSON lines to fd
 *     braid_logger_set_level(lg, "braid.http", BRAID_LOG_DEBUG);
 *     braid_log_emit(lg, BRAID_LOG_INFO, "app.db",
 *                    braid_log_fields(BRAID_LOG_U64("rows", n), BRAID_LOG_STR("table", t)),
 *                    "query done in %d ms", ms);
 *
 * braid_loop_log(loop, level, fmt, …) (<braid/loop.h>) is the same with no
 * namespace and no fields; braid's own modules log through this logger in
 * the namespaces "braid.<module>". A loop made with braid_loop_options.log
 * gets that function as its first observer (it receives the message alone,
 * as before).
 *
 * Threads: braid_log_emit and braid_logger_stats from any thread; the rest
 * on the loop's thread. Observers run on the loop's thread. */
#ifndef BRAID_LOG_H
#define BRAID_LOG_H

#include <braid/common.h>
#include <braid/context.h>
#include <stdarg.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Events kept while no observer exists, replayed to the first one (in
 * 512-byte slots made with the loop: an event larger than that keeps its
 * message, truncated, without its fields). */
#define BRAID_LOG_EARLY 64

typedef enum braid_log_field_type {
    BRAID_LOG_FIELD_I64 = 1, BRAID_LOG_FIELD_U64, BRAID_LOG_FIELD_F64, BRAID_LOG_FIELD_STR,
    BRAID_LOG_FIELD_BOOL,
} braid_log_field_type;

typedef struct braid_log_field {
    const char *key;
    braid_log_field_type type;
    union { int64_t i64; uint64_t u64; double f64; const char *str; bool b; } v;
} braid_log_field;
#define BRAID_LOG_I64(k, x) ((braid_log_field){ (k), BRAID_LOG_FIELD_I64, { .i64 = (x) } })
#define BRAID_LOG_U64(k, x) ((braid_log_field){ (k), BRAID_LOG_FIELD_U64, { .u64 = (x) } })
#define BRAID_LOG_F64(k, x) ((braid_log_field){ (k), BRAID_LOG_FIELD_F64, { .f64 = (x) } })
#define BRAID_LOG_STR(k, x) ((braid_log_field){ (k), BRAID_LOG_FIELD_STR, { .str = (x) } })
#define BRAID_LOG_BOOL(k, x) ((braid_log_field){ (k), BRAID_LOG_FIELD_BOOL, { .b = (x) } })
/* Expands to "array, count" for braid_log_emit: one field or more (an empty
 * braid_log_fields() is an empty initializer, not ISO C; with no fields
 * write braid_log_no_fields). */
#define braid_log_fields(...)                                                         \
    ((const braid_log_field[]){ __VA_ARGS__ }),                                       \
    (sizeof((const braid_log_field[]){ __VA_ARGS__ }) / sizeof(braid_log_field))
#define braid_log_no_fields NULL, 0

/* An event as observers see it (borrowed: valid during the call). */
typedef struct braid_log_event {
    uint64_t time_ns;             /* wall clock (CLOCK_REALTIME), ns since the epoch */
    braid_log_level level;
    const char *ns;               /* NULL: none (braid_loop_log's lines) */
    const char *msg;              /* the formatted message */
    const braid_log_field *fields;
    size_t nfields;
    uint64_t request_id;          /* from the context; 0 = none */
    bool from_thread;             /* emitted off the loop's thread, queued */
} braid_log_event;

/* The request id braid_log_emit adds to each event (U64 key). The HTTP
 * server puts each request's number here. */
BRAID_API extern const braid_ctx_key braid_log_request_id_key;

typedef struct braid_logger braid_logger;
typedef struct braid_log_observer braid_log_observer;
typedef void (*braid_log_observer_fn)(const braid_log_event *ev, void *arg);

/* ---- emitting (any thread) -------------------------------------------------------- */
BRAID_API void braid_log_emit(braid_logger *lg, braid_log_level level, const char *ns,
                              const braid_log_field *fields, size_t nfields, const char *fmt, ...)
    BRAID_PRINTF(6, 7);
BRAID_API void braid_log_vemit(braid_logger *lg, braid_log_level level, const char *ns,
                               const braid_log_field *fields, size_t nfields, const char *fmt,
                               va_list ap);
/* As braid_log_emit, stamped with time_ns (wall clock, ns since the epoch;
 * 0: now) — for events relayed from elsewhere, e.g. a worker process's. */
BRAID_API void braid_log_emit_at(braid_logger *lg, uint64_t time_ns, braid_log_level level, const char *ns,
                                 const braid_log_field *fields, size_t nfields, const char *fmt, ...)
    BRAID_PRINTF(7, 8);
/* Would an event of this level and namespace pass the filters? (Any thread.) */
BRAID_API bool braid_log_enabled(braid_logger *lg, braid_log_level level, const char *ns);

/* Rate limiting per call site: at most `burst` events, refilled at
 * `per_second` a second, on the wall clock; the rest are counted as
 * suppressed and the next event that passes says how many were.
 *
 *     BRAID_LOG_RATELIMITED(lg, 10, 5, BRAID_LOG_WARN, "app", braid_log_no_fields, "slow peer %d", fd);
 */
typedef struct braid_log_limit {
    _Atomic uint64_t state;       /* private */
    _Atomic uint64_t suppressed;  /* private */
} braid_log_limit;
BRAID_API bool braid_log_limit_take(braid_log_limit *l, unsigned per_second, unsigned burst,
                                    uint64_t *suppressed);
#define BRAID_LOG_RATELIMITED(lg, per_second, burst, level, ns, fields_and_n, ...)        \
    do {                                                                                 \
        static braid_log_limit braid_lim_;                                              \
        uint64_t braid_sup_;                                                             \
        if (braid_log_enabled((lg), (level), (ns)) &&                                    \
            braid_log_limit_take(&braid_lim_, (per_second), (burst), &braid_sup_))       \
            braid_log_emit_limited((lg), (level), (ns), braid_sup_, fields_and_n, __VA_ARGS__); \
    } while (0)
/* braid_log_emit with a "suppressed" field added when suppressed > 0. */
BRAID_API void braid_log_emit_limited(braid_logger *lg, braid_log_level level, const char *ns,
                                      uint64_t suppressed, const braid_log_field *fields,
                                      size_t nfields, const char *fmt, ...) BRAID_PRINTF(7, 8);

/* ---- observers (loop thread) -------------------------------------------------------------
 * Each returns 0, BRAID_ENOMEM, or BRAID_EINVAL for a bad argument (fd < 0,
 * no callback, a ring of 0); *out is the observer, removed (and freed) with
 * braid_log_observer_remove or when the loop is destroyed — out may be NULL
 * when it is never removed. The first observer added receives the events
 * kept while there was none. */
BRAID_API int braid_logger_add_callback(braid_logger *lg, braid_log_observer_fn fn, void *arg,
                                        braid_log_observer **out);
/* Text lines ("2024-05-01T12:00:00.123Z warn braid.http: msg key=value …")
 * or JSON objects, one a line, written to fd (not closed). */
BRAID_API int braid_logger_add_text(braid_logger *lg, int fd, braid_log_observer **out);
BRAID_API int braid_logger_add_json(braid_logger *lg, int fd, braid_log_observer **out);
/* The last `capacity` events in memory (copies). */
BRAID_API int braid_logger_add_ring(braid_logger *lg, size_t capacity, braid_log_observer **out);
/* Visit a ring observer's events, oldest first; returns how many it holds. */
BRAID_API size_t braid_log_ring_visit(braid_log_observer *ring, braid_log_observer_fn fn, void *arg);
BRAID_API void braid_log_observer_remove(braid_log_observer *o);

/* ---- filters (loop thread) --------------------------------------------------------------
 * Events of namespace ns or below it ("braid.http" covers "braid.http.client")
 * pass from `level` up; the longest matching prefix decides; NULL sets the
 * default (BRAID_LOG_INFO; BRAID_LOG_DEBUG with BRAID_LOG_DEBUG=1 in the
 * environment). Events with no namespace follow the default. 0 or
 * BRAID_ENOMEM. */
BRAID_API int braid_logger_set_level(braid_logger *lg, const char *ns, braid_log_level level);

typedef struct braid_logger_stats {
    uint64_t emitted;             /* passed the filters and were delivered or queued */
    uint64_t queued;              /* of those, from other threads */
    uint64_t dropped;             /* from other threads, lost to a full queue */
    uint64_t early_lost;          /* kept-before-observers events pushed out by newer ones */
    size_t queue_limit;
} braid_logger_stats;
BRAID_API void braid_logger_stats_get(braid_logger *lg, braid_logger_stats *out);

#ifdef __cplusplus
}
#endif
#endif
