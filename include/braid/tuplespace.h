/* braid/tuplespace.h — a Linda tuple space with priorities and leases: a
 * job-scheduling kernel on the loop, served to other processes over any
 * stream transport.
 *
 * Gelernter's Linda ("Generative communication in Linda", 1985): processes
 * coordinate by writing tuples into a shared space (out) and taking (in) or
 * reading (rd) tuples that match a template. Linda leaves open which of
 * several matching tuples a taker gets; braid fixes it, which is what turns
 * the space into a job scheduler ("Pythonic concurrency", python-dev, 2005:
 * a tuple space lacks only "a prioritization mechanism"):
 *
 *   - every tuple carries a priority (int32, default 0); among the tuples a
 *     template matches, the highest priority goes first, FIFO (order of out)
 *     within a priority;
 *   - waiting takers and readers are served FIFO (order of their calls);
 *   - a tuple taken on a lease (in_lease) stays in the space's care until
 *     acked; a nack or the lease's expiry on the loop clock puts it back with
 *     its priority, ahead of the tuples of that priority (it keeps its turn),
 *     counting deliveries; after max_deliveries it becomes a dead letter:
 *     the same fields behind a string tag field ("dead" by default, so
 *     arity + 1) — at-least-once delivery: a worker that dies loses no job.
 *
 *     braid_tuplespace *ts;
 *     braid_tuplespace_new(loop, NULL, &ts);
 *     // a producer: a job ("resize", id, payload) at priority 5
 *     braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("resize"), braid_field_int(42),
 *                                           braid_field_bytes(img, img_len)), 5);
 *     // a worker: take any "resize" job on a 30 s lease, wait up to 10 s for one
 *     braid_deferred *d = braid_tuplespace_in_lease(ts,
 *         BRAID_FIELDS(braid_field_str("resize"), braid_field_any(BRAID_FIELD_INT),
 *                      braid_field_any(BRAID_FIELD_BYTES)), BRAID_SECONDS(30), BRAID_SECONDS(10));
 *     braid_deferred_add(d, got_job, no_job, ctx);   // r.value: braid_tuple *
 *     braid_deferred_unref(d);
 *     ...
 *     // in got_job, when the work is done (t->lease names the lease):
 *     braid_tuplespace_ack(ts, t->lease);
 *
 * Tuples are arrays of typed fields (braid_field): int64, double, string,
 * bytes, bool; 1 ... BRAID_TUPLE_MAX_FIELDS of them. A template is an array
 * of the same struct where each field is an *actual* (match = ACTUAL: equal
 * type and value; a double NaN never matches) or a typed *formal*: ANY value
 * of the type, a RANGE lo..hi inclusive (int, double), or a PREFIX (string,
 * bytes). A template matches a tuple of the same arity whose every field it
 * matches. The braid_field_* helpers below build both.
 *
 * Cost: tuples are indexed by (arity, first field's type and value) in a
 * hash table, and inside such a bucket by priority level, each level a FIFO
 * list. A template whose first field is an actual finds its bucket in O(1)
 * expected time and takes the first tuple of the highest level that
 * matches: O(1) when the rest of the template is formals of ANY (the usual
 * job template), otherwise the candidates are tried in order. A template
 * whose first field is a formal visits every bucket of its arity.
 * docs/tuplespace.md has the measurements.
 *
 * Capacity: a space holds at most max_tuples tuples and max_bytes bytes
 * (leased tuples count: they may come back). out on a full space fails at
 * once with BRAID_ETUPLE_FULL; out_wait waits for room instead (FIFO).
 *
 * Ownership: the space is yours (braid_tuplespace_free). A braid_tuple a
 * call or a Deferred hands you is yours to free with braid_tuple_free (as a
 * Deferred's value its dtor frees it unless you take it: set r.dtor = NULL).
 * A tuple given to a notify callback is borrowed for the call. The fields
 * you pass in are copied before the call returns. Everything is
 * loop-affine: use a space only on its loop's thread (debug builds check);
 * Deferred callbacks and notify callbacks run on that thread, synchronously
 * inside the call that made them runnable (an out wakes its waiters before
 * it returns). A callback may call into the space, but must not free it.
 *
 * Over the wire: braid_tuplespace_factory_init serves a space to any stream
 * transport (TCP, Unix sockets, pipes, an adopted socketpair); the client
 * (braid_tuplespace_client, on another loop, in another process) offers the
 * same operations as Deferreds, and braid_tuplespace_sync is a blocking
 * client for a worker with no loop. When a client's connection ends, its
 * leases are put back at once and its waiting calls are dropped. See
 * "The wire protocol" below and docs/tuplespace.md.
 *
 * Worker processes: braid_tuplespace_spawn_worker starts a program with
 * braid_process_spawn (<braid/process.h>: your options, fd map and
 * protocol) and adds to its fd map one child fd connected to the space:
 * the worker opens a client on that fd (braid_tuplespace_sync_new, or
 * braid_tuplespace_client_adopt on a loop of its own). A worker that dies
 * — crash, SIGKILL, exit — ends its connection, and the leases it held go
 * back to the space at once.
 */
#ifndef BRAID_TUPLESPACE_H
#define BRAID_TUPLESPACE_H

#include <braid/common.h>
#include <braid/deferred.h>
#include <braid/loop.h>
#include <braid/process.h>
#include <braid/protocol.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of the tuple space: -4600 ... -4699. */
#define BRAID_ETUPLE_FULL      (-4600)  /* the space is at max_tuples / max_bytes */
#define BRAID_ETUPLE_NOMATCH   (-4601)  /* inp/rdp: no tuple matches now */
#define BRAID_ETUPLE_NOLEASE   (-4602)  /* no such lease: acked, nacked, expired or never granted */
#define BRAID_ETUPLE_VERSION   (-4603)  /* the peer speaks another wire-protocol version */
#define BRAID_ETUPLE_PROTO     (-4604)  /* a malformed wire-protocol message */

/* ---- fields, tuples and templates ------------------------------------------------ */
#define BRAID_TUPLE_MAX_FIELDS 255

typedef enum braid_field_type {
    BRAID_FIELD_INT = 1,            /* int64_t, v.i */
    BRAID_FIELD_DOUBLE = 2,         /* double, v.d */
    BRAID_FIELD_STRING = 3,         /* len bytes at v.p (stored tuples add a NUL after them) */
    BRAID_FIELD_BYTES = 4,          /* len bytes at v.p */
    BRAID_FIELD_BOOL = 5,           /* v.b */
} braid_field_type;

typedef enum braid_field_match {
    BRAID_FIELD_ACTUAL = 0,         /* equal type and value (tuples: always) */
    BRAID_FIELD_ANY = 1,            /* formal: any value of the type */
    BRAID_FIELD_RANGE = 2,          /* formal: v.i/v.d <= value <= hi.i/hi.d (int, double) */
    BRAID_FIELD_PREFIX = 3,         /* formal: value begins with the len bytes at v.p (string, bytes) */
} braid_field_match;

typedef struct braid_field {
    uint8_t type;                   /* braid_field_type */
    uint8_t match;                  /* braid_field_match */
    uint32_t len;                   /* string / bytes / prefix length */
    union { int64_t i; double d; bool b; const void *p; } v;
    union { int64_t i; double d; } hi;   /* RANGE: inclusive upper bound */
} braid_field;

static inline braid_field braid_field_int(int64_t v) {
    braid_field f = { BRAID_FIELD_INT, BRAID_FIELD_ACTUAL, 0, { .i = v }, { .i = 0 } }; return f;
}
static inline braid_field braid_field_double(double v) {
    braid_field f = { BRAID_FIELD_DOUBLE, BRAID_FIELD_ACTUAL, 0, { .d = v }, { .i = 0 } }; return f;
}
static inline braid_field braid_field_bool(bool v) {
    braid_field f = { BRAID_FIELD_BOOL, BRAID_FIELD_ACTUAL, 0, { .b = v }, { .i = 0 } }; return f;
}
static inline braid_field braid_field_strn(const char *s, size_t len) {
    braid_field f = { BRAID_FIELD_STRING, BRAID_FIELD_ACTUAL, (uint32_t)len, { .p = s }, { .i = 0 } };
    return f;
}
static inline braid_field braid_field_str(const char *s) { return braid_field_strn(s, strlen(s)); }
static inline braid_field braid_field_bytes(const void *p, size_t len) {
    braid_field f = { BRAID_FIELD_BYTES, BRAID_FIELD_ACTUAL, (uint32_t)len, { .p = p }, { .i = 0 } };
    return f;
}
/* Formals. */
static inline braid_field braid_field_any(braid_field_type type) {
    braid_field f = { (uint8_t)type, BRAID_FIELD_ANY, 0, { .i = 0 }, { .i = 0 } }; return f;
}
static inline braid_field braid_field_int_range(int64_t lo, int64_t hi) {
    braid_field f = { BRAID_FIELD_INT, BRAID_FIELD_RANGE, 0, { .i = lo }, { .i = hi } }; return f;
}
static inline braid_field braid_field_double_range(double lo, double hi) {
    braid_field f = { BRAID_FIELD_DOUBLE, BRAID_FIELD_RANGE, 0, { .d = lo }, { .d = hi } }; return f;
}
static inline braid_field braid_field_str_prefix(const char *s) {
    braid_field f = { BRAID_FIELD_STRING, BRAID_FIELD_PREFIX, (uint32_t)strlen(s), { .p = s }, { .i = 0 } };
    return f;
}
static inline braid_field braid_field_bytes_prefix(const void *p, size_t len) {
    braid_field f = { BRAID_FIELD_BYTES, BRAID_FIELD_PREFIX, (uint32_t)len, { .p = p }, { .i = 0 } };
    return f;
}
/* An array literal and its length, for the (fields, n) argument pairs:
 * braid_tuplespace_out(ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(1)), 0). */
#define BRAID_FIELDS(...)                                                                  \
    (const braid_field[]){ __VA_ARGS__ },                                                  \
        (sizeof((const braid_field[]){ __VA_ARGS__ }) / sizeof(braid_field))

/* A tuple handed to you: one allocation (strings and bytes point inside
 * it), yours to free with braid_tuple_free. */
typedef struct braid_tuple {
    uint32_t n;                     /* fields */
    int32_t priority;
    uint32_t deliveries;            /* times delivered on a lease so far (in_lease: >= 1) */
    uint32_t flags;                 /* private */
    uint64_t lease;                 /* in_lease: the lease to ack/nack; otherwise 0 */
    braid_field f[];
} braid_tuple;

BRAID_API void braid_tuple_free(braid_tuple *t);
/* The dtor form, for braid_result.dtor. */
BRAID_API void braid_tuple_free_value(void *t);
/* A copy (NULL on allocation failure). */
BRAID_API braid_tuple *braid_tuple_copy(const braid_tuple *t);
/* Does tmpl[0..n) match t? (BRAID_EINVAL-worthy templates match nothing.) */
BRAID_API bool braid_tuple_matches(const braid_tuple *t, const braid_field *tmpl, size_t n);
/* "("job", 42, 3.5, true, b"\x00\x01", ?int)" into buf; returns the length it
 * needed (snprintf rules). Works on tuples and templates. */
BRAID_API size_t braid_fields_format(const braid_field *f, size_t n, char *buf, size_t size);

/* A list of tuples (in_all / rd_all), in priority order; frees the tuples too. */
typedef struct braid_tuple_list {
    size_t n;
    braid_tuple *t[];
} braid_tuple_list;
BRAID_API void braid_tuple_list_free(braid_tuple_list *l);
BRAID_API void braid_tuple_list_free_value(void *l);

/* ---- the space ------------------------------------------------------------------- */
typedef struct braid_tuplespace braid_tuplespace;

typedef struct braid_tuplespace_options {
    size_t max_tuples;              /* 0 = 1,000,000; stored + leased */
    size_t max_bytes;               /* 0 = 256 MiB; a tuple's size is its fields + 64 */
    size_t max_waiters;             /* 0 = 65,536 waiting calls (in/rd/in_lease/out_wait) */
    uint32_t max_deliveries;        /* 0 = 10; a lease delivery beyond it makes a dead letter;
                                     * UINT32_MAX: never */
    const char *dead_letter_tag;    /* NULL = "dead": dead letters are (tag, fields...) */
    /* Durability: NULL = in memory. A path keeps the space in an SQLite
     * database (created if missing; reopening it loads every tuple back,
     * a tuple that was leased coming back with its deliveries): each out
     * is committed before it returns (WAL, synchronous=NORMAL: survives the
     * process; sync_full: FULL, survives a power loss too). BRAID_ENOSYS
     * when braid was built without SQLite; -EIO when the file cannot be
     * used (the reason is logged). */
    const char *path;
    bool sync_full;
    const char *name;               /* NULL = "tuplespace": its name in introspection (copied) */
} braid_tuplespace_options;

/* 0, BRAID_ENOMEM, and with a path -EIO, BRAID_ENOSYS, BRAID_ETUPLE_PROTO (a
 * row that does not decode). */
BRAID_API int braid_tuplespace_new(braid_loop *loop, const braid_tuplespace_options *opts,
                                   braid_tuplespace **out);
/* Waiting calls fail with BRAID_ESHUTDOWN (their Deferreds fire inside this
 * call; their callbacks must not use the space), the connections serving
 * it are closed (their clients see the connection end), every tuple, lease
 * and notify registration is freed. NULL: no-op. */
BRAID_API void braid_tuplespace_free(braid_tuplespace *ts);
BRAID_API braid_loop *braid_tuplespace_loop(const braid_tuplespace *ts);

/* out: write a tuple (the fields are copied) with a priority. It is first
 * offered to notify registrations, then to the waiting calls in their order
 * (readers get copies; the first waiting taker takes it), and stored if no
 * taker took it. 0, or BRAID_ETUPLE_FULL (nothing written), BRAID_EINVAL (a
 * field that is not an actual of a known type, n == 0 or too many fields),
 * BRAID_ENOMEM, -EIO (a durable space could not write it: nothing written). */
BRAID_API int braid_tuplespace_out(braid_tuplespace *ts, const braid_field *f, size_t n,
                                   int32_t priority);
/* out that waits for room when the space is full (FIFO among waiting outs),
 * at most timeout ns (0: fail at once like out; BRAID_FOREVER). Fires with
 * NULL once written; BRAID_ETIMEDOUT, BRAID_ECANCELED, BRAID_EINVAL,
 * BRAID_ENOMEM, BRAID_EQUEUE_FULL (max_waiters reached). */
BRAID_API braid_deferred *braid_tuplespace_out_wait(braid_tuplespace *ts, const braid_field *f,
                                                    size_t n, int32_t priority, uint64_t timeout);

/* in / rd: take / read a copy of the best matching tuple, waiting for one at
 * most timeout ns (0: don't wait; BRAID_FOREVER). The Deferred fires with a
 * braid_tuple * (dtor braid_tuple_free_value), or fails: BRAID_ETUPLE_NOMATCH
 * (timeout 0 and nothing matched), BRAID_ETIMEDOUT, BRAID_ECANCELED (a
 * waiting call cancelled is removed), BRAID_ESHUTDOWN, BRAID_EINVAL (a bad
 * template), BRAID_EQUEUE_FULL (max_waiters reached), BRAID_ENOMEM. */
BRAID_API braid_deferred *braid_tuplespace_in(braid_tuplespace *ts, const braid_field *tmpl,
                                              size_t n, uint64_t timeout);
BRAID_API braid_deferred *braid_tuplespace_rd(braid_tuplespace *ts, const braid_field *tmpl,
                                              size_t n, uint64_t timeout);
/* The non-blocking forms, without a Deferred: 0 and *out set (yours), or
 * BRAID_ETUPLE_NOMATCH, BRAID_EINVAL, BRAID_ENOMEM. */
BRAID_API int braid_tuplespace_inp(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                   braid_tuple **out);
BRAID_API int braid_tuplespace_rdp(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                   braid_tuple **out);
/* Take / copy every matching tuple, at most max (0: no limit), in priority
 * order; never waits. *out is set (possibly with n == 0). 0, BRAID_EINVAL,
 * BRAID_ENOMEM (nothing taken). */
BRAID_API int braid_tuplespace_in_all(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                      size_t max, braid_tuple_list **out);
BRAID_API int braid_tuplespace_rd_all(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                      size_t max, braid_tuple_list **out);

/* ---- leases: at-least-once job delivery ----------------------------------------
 * in_lease takes the best match like in, but the space keeps the tuple: the
 * copy you get has t->lease (the lease id) and t->deliveries set. Then,
 * before lease_ns passes on the loop clock:
 *   ack    the job is done: the tuple is removed for good;
 *   nack   give it back now (after delay ns: 0 = at once);
 *   renew  the lease runs lease_ns from now instead.
 * Otherwise it expires and goes back as a nack would. A tuple coming back
 * whose deliveries reached max_deliveries becomes a dead letter instead.
 * lease_ns 0 means 30 s. The Deferred's outcomes are those of in. */
BRAID_API braid_deferred *braid_tuplespace_in_lease(braid_tuplespace *ts, const braid_field *tmpl,
                                                    size_t n, uint64_t lease_ns, uint64_t timeout);
BRAID_API int braid_tuplespace_inp_lease(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                         uint64_t lease_ns, braid_tuple **out);
/* 0 or BRAID_ETUPLE_NOLEASE. */
BRAID_API int braid_tuplespace_ack(braid_tuplespace *ts, uint64_t lease);
BRAID_API int braid_tuplespace_nack(braid_tuplespace *ts, uint64_t lease, uint64_t delay);
BRAID_API int braid_tuplespace_renew(braid_tuplespace *ts, uint64_t lease, uint64_t lease_ns);

/* ---- notify ---------------------------------------------------------------------
 * cb runs for every tuple written by out from now on that tmpl matches
 * (before waiting calls see it; the tuple is borrowed for the call). Tuples
 * coming back from a lease are not new and are not notified. The
 * registration is the space's: cancel it with braid_tuple_watch_free, or
 * it goes with the space. cb may free its own registration. */
typedef struct braid_tuple_watch braid_tuple_watch;
typedef void (*braid_tuple_watch_cb)(const braid_tuple *t, void *arg);
BRAID_API int braid_tuplespace_notify(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                      braid_tuple_watch_cb cb, void *arg, braid_tuple_watch **out);
/* The stream form: every future matching tuple goes, as a copy, into q — a
 * DeferredQueue you made and keep (braid_deferred_queue_get hands you a Deferred per
 * tuple, in order; its value is a braid_tuple *, dtor braid_tuple_free_value).
 * A tuple that finds q full (or cannot be copied) is dropped and counted.
 * Free the registration before the queue. */
BRAID_API int braid_tuplespace_notify_queue(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                            braid_deferred_queue *q, braid_tuple_watch **out);
/* Tuples a queue registration dropped so far. */
BRAID_API uint64_t braid_tuple_watch_dropped(const braid_tuple_watch *w);
BRAID_API void braid_tuple_watch_free(braid_tuple_watch *w);

/* ---- statistics -------------------------------------------------------------------- */
typedef struct braid_tuplespace_stats {
    size_t tuples;                  /* stored, not leased */
    size_t leased;                  /* held on leases */
    size_t bytes;                   /* accounted bytes of both */
    size_t waiters;                 /* waiting calls (in/rd/in_lease/out_wait) */
    size_t buckets;                 /* index buckets (arity, first field) */
    uint64_t outs, ins, rds;        /* completed operations */
    uint64_t acks, nacks, expired;  /* lease outcomes */
    uint64_t dead;                  /* dead letters made */
    uint64_t full;                  /* outs refused for capacity */
} braid_tuplespace_stats;
BRAID_API void braid_tuplespace_stats_get(const braid_tuplespace *ts, braid_tuplespace_stats *out);

/* ---- the wire protocol: serving a space -------------------------------------------
 * Frames are 32-bit big-endian length-prefixed (<braid/framing.h>), at most
 * max_frame bytes (default 16 MiB); every frame begins with the protocol
 * version (1) and an operation; the formats are in docs/tuplespace.md. A
 * client may pipeline requests; replies carry the request's id. A malformed
 * or oversized frame, or another version, closes that connection with a
 * logged reason (BRAID_ETUPLE_PROTO, BRAID_EMSGSIZE, BRAID_ETUPLE_VERSION);
 * the space and other connections go on. When a connection ends, every
 * lease it holds is put back at once (a nack) and its waiting calls are
 * cancelled.
 *
 *     braid_factory f;
 *     braid_tuplespace_factory_init(&f, ts, NULL);
 *     braid_deferred *d = braid_endpoint_listen(loop, "unix:/run/jobs.sock", &f);   // or tcp:..., or:
 *     braid_tuplespace_serve_fd(ts, fd, NULL);     // one end of a socketpair or a pipe pair
 */
typedef struct braid_tuplespace_serve_options {
    size_t max_frame;               /* 0 = 16 MiB */
    size_t max_pending;             /* 0 = 1,024 waiting calls per connection */
} braid_tuplespace_serve_options;
/* A factory building one server protocol per peer; ts must outlive the
 * listeners using it. opts (NULL: defaults) are copied into the space: the
 * last ones given (here or to serve_fd) apply to every connection it
 * serves from then on. */
BRAID_API void braid_tuplespace_factory_init(braid_factory *f, braid_tuplespace *ts,
                                             const braid_tuplespace_serve_options *opts);
/* Serve one connected descriptor (ownership taken; closed on failure).
 * opts as for factory_init (NULL keeps the space's). 0, BRAID_ENOMEM, or
 * braid_transport_adopt's error. */
BRAID_API int braid_tuplespace_serve_fd(braid_tuplespace *ts, int fd,
                                        const braid_tuplespace_serve_options *opts);
/* Serve a pipe pair: read requests from rfd, write replies to wfd
 * (ownership of both taken; both closed on failure). */
BRAID_API int braid_tuplespace_serve_pipes(braid_tuplespace *ts, int rfd, int wfd,
                                           const braid_tuplespace_serve_options *opts);
/* Connections being served now. */
BRAID_API size_t braid_tuplespace_connections(const braid_tuplespace *ts);

/* Spawn a worker process served by the space: braid_process_spawn(loop of
 * ts, opts, out, failure) with one more entry in the fd map, child_fd
 * (0 ... 1023, not already in opts->fds) a socketpair end whose parent end
 * is served like braid_tuplespace_serve_fd (serve: as there; NULL keeps the
 * space's). opts->fds NULL means what it means to braid_process_spawn
 * (0, 1 and 2 inherited), plus child_fd. Tell the worker which fd it is
 * (argv or env); it opens a client on it:
 *
 *     // the parent                                  // the worker (same or another program)
 *     const char *env[] = { "JOB_FD=3", NULL };      int fd = atoi(getenv("JOB_FD"));
 *     braid_process_options o = {                    braid_tuplespace_sync *s;
 *         .file = "/usr/libexec/job-worker",         braid_tuplespace_sync_new(fd, 0, &s);
 *         .env_mode = BRAID_PROCESS_ENV_EXTEND,      ... sync_in_lease / sync_out / sync_ack ...
 *         .env = env };
 *     braid_process *p;
 *     braid_tuplespace_spawn_worker(ts, &o, 3, NULL, &p, NULL);
 *
 * 0 and *out (yours: braid_process_free, or watch it with opts->protocol /
 * braid_process_ended), or braid_process_spawn's errors, with nothing left
 * behind. The connection lives apart from the braid_process: freeing the
 * handle kills the child (BRAID_PROCESS_FREE_KILL), which ends the
 * connection and puts its leases back. Call it on the space's loop. */
BRAID_API int braid_tuplespace_spawn_worker(braid_tuplespace *ts, const braid_process_options *opts,
                                            int child_fd, const braid_tuplespace_serve_options *serve,
                                            braid_process **out, braid_failure **failure);

/* ---- the client on a loop ---------------------------------------------------------
 * The same operations against a space served elsewhere, each a Deferred with
 * the outcomes of the local call (plus the connection's: BRAID_ECONNECTION_LOST
 * / BRAID_ECONNECTION_DONE / BRAID_ETUPLE_PROTO when it ends first). Requests
 * are pipelined; replies come in any order. Waiting calls carry their
 * timeout to the server; cancelling one sends a cancel and fails it with
 * BRAID_ECANCELED at once.
 *
 *     braid_tuplespace_client *c;
 *     braid_tuplespace_client_adopt(loop, fd, NULL, &c);     // or client_connect
 *     braid_deferred *d = braid_tuplespace_client_in_lease(c, tmpl, n, BRAID_SECONDS(30),
 *                                                          BRAID_FOREVER);
 *     ... braid_tuplespace_client_ack(c, t->lease) ...
 *     braid_tuplespace_client_free(c);
 */
typedef struct braid_tuplespace_client braid_tuplespace_client;
typedef struct braid_tuplespace_client_options {
    size_t max_frame;               /* 0 = 16 MiB */
    /* Called once when the connection ends (reason: its code), on the loop. */
    void (*lost)(braid_tuplespace_client *c, int reason, void *arg);
    void *arg;
} braid_tuplespace_client_options;
/* A client over a connected descriptor (ownership taken). */
BRAID_API int braid_tuplespace_client_adopt(braid_loop *loop, int fd,
                                            const braid_tuplespace_client_options *opts,
                                            braid_tuplespace_client **out);
/* The same over a pipe pair: replies read from rfd, requests written to wfd. */
BRAID_API int braid_tuplespace_client_adopt_pipes(braid_loop *loop, int rfd, int wfd,
                                                  const braid_tuplespace_client_options *opts,
                                                  braid_tuplespace_client **out);
/* A client connecting to an endpoint string ("unix:/path", "tcp:host=…:port=…").
 * Fires with the braid_tuplespace_client * (yours: free it). */
BRAID_API braid_deferred *braid_tuplespace_client_connect(braid_loop *loop, const char *endpoint,
                                                          const braid_tuplespace_client_options *opts);
/* Close the connection; pending calls fail with BRAID_ESHUTDOWN. NULL: no-op. */
BRAID_API void braid_tuplespace_client_free(braid_tuplespace_client *c);
BRAID_API bool braid_tuplespace_client_is_connected(const braid_tuplespace_client *c);
/* Fires with NULL once the server wrote the tuple (or fails: BRAID_ETUPLE_FULL ...). */
BRAID_API braid_deferred *braid_tuplespace_client_out(braid_tuplespace_client *c, const braid_field *f,
                                                      size_t n, int32_t priority);
BRAID_API braid_deferred *braid_tuplespace_client_in(braid_tuplespace_client *c, const braid_field *tmpl,
                                                     size_t n, uint64_t timeout);
BRAID_API braid_deferred *braid_tuplespace_client_rd(braid_tuplespace_client *c, const braid_field *tmpl,
                                                     size_t n, uint64_t timeout);
BRAID_API braid_deferred *braid_tuplespace_client_in_lease(braid_tuplespace_client *c,
                                                           const braid_field *tmpl, size_t n,
                                                           uint64_t lease_ns, uint64_t timeout);
/* Fires with a braid_tuple_list * (dtor braid_tuple_list_free_value). */
BRAID_API braid_deferred *braid_tuplespace_client_in_all(braid_tuplespace_client *c,
                                                         const braid_field *tmpl, size_t n, size_t max);
BRAID_API braid_deferred *braid_tuplespace_client_rd_all(braid_tuplespace_client *c,
                                                         const braid_field *tmpl, size_t n, size_t max);
/* Fire with NULL, or BRAID_ETUPLE_NOLEASE. */
BRAID_API braid_deferred *braid_tuplespace_client_ack(braid_tuplespace_client *c, uint64_t lease);
BRAID_API braid_deferred *braid_tuplespace_client_nack(braid_tuplespace_client *c, uint64_t lease,
                                                       uint64_t delay);
BRAID_API braid_deferred *braid_tuplespace_client_renew(braid_tuplespace_client *c, uint64_t lease,
                                                        uint64_t lease_ns);

/* ---- the blocking client: a worker process without a loop ----------------------------
 * One request at a time on a descriptor (blocking or not); the same
 * operations. Not loop-affine (it has no loop): use it from one thread at a
 * time. Timeouts are the server's, on its clock; a call blocks until the
 * reply comes. After an error of the connection itself (BRAID_ECONNECTION_DONE,
 * BRAID_EMSGSIZE, BRAID_ETUPLE_PROTO, a system error) the stream is not
 * usable any more: free the client. */
typedef struct braid_tuplespace_sync braid_tuplespace_sync;
/* Over a connected descriptor (ownership taken; closed by _free). */
BRAID_API int braid_tuplespace_sync_new(int fd, size_t max_frame, braid_tuplespace_sync **out);
/* Over a pipe pair: replies read from rfd, requests written to wfd (both taken). */
BRAID_API int braid_tuplespace_sync_new_pipes(int rfd, int wfd, size_t max_frame,
                                              braid_tuplespace_sync **out);
BRAID_API void braid_tuplespace_sync_free(braid_tuplespace_sync *s);
BRAID_API int braid_tuplespace_sync_out(braid_tuplespace_sync *s, const braid_field *f, size_t n,
                                        int32_t priority);
/* 0 and *out (yours), or the codes of the loop client's Deferreds. */
BRAID_API int braid_tuplespace_sync_in(braid_tuplespace_sync *s, const braid_field *tmpl, size_t n,
                                       uint64_t timeout, braid_tuple **out);
BRAID_API int braid_tuplespace_sync_rd(braid_tuplespace_sync *s, const braid_field *tmpl, size_t n,
                                       uint64_t timeout, braid_tuple **out);
BRAID_API int braid_tuplespace_sync_in_lease(braid_tuplespace_sync *s, const braid_field *tmpl,
                                             size_t n, uint64_t lease_ns, uint64_t timeout,
                                             braid_tuple **out);
BRAID_API int braid_tuplespace_sync_ack(braid_tuplespace_sync *s, uint64_t lease);
BRAID_API int braid_tuplespace_sync_nack(braid_tuplespace_sync *s, uint64_t lease, uint64_t delay);

#ifdef __cplusplus
}
#endif
#endif
