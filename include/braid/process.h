/* braid/process.h — child processes on the loop, and pools of worker
 * processes answering framed RPC calls.
 *
 * Events use one CPU; processes use the others. This module spawns
 * children with a *child fd map* and watches them on the loop (Twisted's
 * spawnProcess and ProcessProtocol, libuv's uv_spawn), and runs pools of
 * worker processes that answer calls over a pair of pipes (Twisted's ampoule):
 * data is copied to the workers and work delivered through pipes, so
 * nothing needs a mutex.
 *
 *     static void out(braid_process *p, int child_fd, const void *buf, size_t len) {
 *         fwrite(buf, 1, len, stdout);
 *     }
 *     static void done(braid_process *p, const braid_process_status *st) {
 *         printf("exit %d signal %d\n", st->exit_code, st->signo);
 *     }
 *     static const braid_process_protocol proto = { .data_received = out, .ended = done };
 *     const char *argv[] = { "ls", "-l", NULL };
 *     braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_DEVNULL },
 *                                { 1, BRAID_PROCESS_FD_FROM_CHILD },
 *                                { 2, BRAID_PROCESS_FD_INHERIT, .parent_fd = 2 } };
 *     braid_process_options o = { .file = "ls", .argv = argv, .fds = fds, .nfds = 3,
 *                                 .protocol = &proto };
 *     braid_process *p;
 *     int rc = braid_process_spawn(loop, &o, &p, NULL);  // ENOENT, EACCES, EMFILE, EAGAIN ...
 *     braid_loop_run(loop);
 *     braid_process_free(p);
 *
 * Spawning uses posix_spawn (glibc runs it as clone(CLONE_VM|CLONE_VFORK):
 * its cost does not grow with the parent's memory, unlike fork); with a C
 * library that lacks posix_spawn_file_actions_addclosefrom_np (before glibc
 * 2.34, musl, the BSDs, macOS), or BRAID_PROCESS_FORK=1 in the environment,
 * fork and exec, with the same behaviour and errors. Every
 * descriptor the map does not list is closed in the child (closefrom/
 * close_range), whatever the parent has open and whether or not it is
 * close-on-exec; the child starts with an empty signal mask and every
 * signal at its default action. The parent ends of "pipes" are Unix
 * socketpairs (as libuv's), so a child that goes away makes a write fail
 * with EPIPE, never raise SIGPIPE in the parent.
 *
 * Exit is learned from a pidfd watched on the loop and reaped with
 * waitid(P_PIDFD): only this process's own children are reaped, never
 * another library's. Where pidfds are missing (Linux < 5.3, some
 * sandboxes), the loop watches SIGCHLD (braid_signal_start) and reaps its
 * own children with waitpid(pid, WNOHANG) — never waitpid(-1).
 *
 * Ownership: a braid_process is yours; free it with braid_process_free
 * (which, for a child still running, does what opts.on_free says). A live
 * process is a loop handle: the loop's leak gate names it. Callbacks run on
 * the loop's thread. Loop-affine, like everything here, except
 * braid_worker_is_child and braid_worker_role.
 *
 * Worker pools: see the second half of this header and docs/process.md.
 */
#ifndef BRAID_PROCESS_H
#define BRAID_PROCESS_H

#include <braid/deferred.h>
#include <braid/stream.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Error codes of the process module, -4200 ... -4299. */
#define BRAID_EPROCESS_EXITED   (-4200)  /* the process was already reaped (signal refused) */
#define BRAID_EWORKER_LOST      (-4201)  /* the worker holding the call died or was killed */
#define BRAID_EWORKER_PROTOCOL  (-4202)  /* the worker sent a malformed frame (it was killed) */
#define BRAID_EWORKER_FRAME     (-4203)  /* a frame passed the pool's size limit (worker killed) */
#define BRAID_EWORKER_COMMAND   (-4204)  /* the worker has no handler for the command */
#define BRAID_EWORKER_REMOTE    (-4205)  /* the handler failed without a braid code of its own */
#define BRAID_EBOX              (-4206)  /* a malformed box (braid_box_decode) */
#define BRAID_EBOX_TYPE         (-4207)  /* a box value is of another type than asked */
#define BRAID_ESERVE_START      (-4208)  /* a braid_serve loop could not start (its factory
                                          * returned NULL, or its listener failed) */

typedef struct braid_process braid_process;

/* ---- the child fd map --------------------------------------------------------------- */
typedef enum braid_process_fd_kind {
    BRAID_PROCESS_FD_CLOSED = 0,   /* closed in the child (as every fd not listed) */
    BRAID_PROCESS_FD_TO_CHILD,     /* the child reads it (stdin); the parent writes */
    BRAID_PROCESS_FD_FROM_CHILD,   /* the child writes it (stdout); the parent reads */
    BRAID_PROCESS_FD_STREAM,       /* both ways (a socketpair end in the child) */
    BRAID_PROCESS_FD_INHERIT,      /* the parent's parent_fd, duplicated in */
    BRAID_PROCESS_FD_DEVNULL,      /* /dev/null, read-write */
} braid_process_fd_kind;

typedef struct braid_process_fd {
    int child_fd;                  /* 0 ... 1023 */
    braid_process_fd_kind kind;
    int parent_fd;                 /* INHERIT: the parent's descriptor (not taken) */
    /* TO_CHILD / FROM_CHILD / STREAM: the parent's end becomes a stream
     * transport. NULL: it is read and written through the process
     * (data_received, fd_closed, braid_process_write). A protocol of your
     * own: the transport is attached to it instead (connection_made runs
     * inside spawn; it lives until its connection_lost, as any transport's
     * protocol), and the process no longer waits for that fd to call
     * ended. */
    braid_protocol *protocol;
} braid_process_fd;

/* ---- options --------------------------------------------------------------------------- */
typedef enum braid_process_env_mode {
    BRAID_PROCESS_ENV_INHERIT = 0, /* the parent's environment (env ignored) */
    BRAID_PROCESS_ENV_REPLACE,     /* exactly env */
    BRAID_PROCESS_ENV_EXTEND,      /* the parent's, with env's NAME=value added or replacing */
} braid_process_env_mode;

typedef enum braid_process_on_free {
    /* braid_process_free on a child still running: SIGKILL, then reap it
     * there and then (waiting the few microseconds a killed process takes
     * to die). The default: no child outlives its handle unnoticed. */
    BRAID_PROCESS_FREE_KILL = 0,
    /* Leave it running; the loop keeps watching it and reaps it when it
     * exits (callbacks no longer run). Until then the loop's leak gate
     * names it ("process (freed, still running) pid N"), so destroying the
     * loop waits for the child: signal it first if you must not wait. */
    BRAID_PROCESS_FREE_WAIT,
} braid_process_on_free;

/* Status at exit: one of exit_code / signo is meaningful. */
typedef struct braid_process_status {
    int exit_code;                 /* exit status, or -1 when killed by a signal */
    int signo;                     /* the signal that killed it, or 0 */
    bool core_dumped;
} braid_process_status;

/* Twisted's ProcessProtocol: every member may be NULL. */
typedef struct braid_process_protocol {
    /* Bytes from child_fd (FROM_CHILD or STREAM), lent for the call. */
    void (*data_received)(braid_process *p, int child_fd, const void *buf, size_t len);
    /* child_fd's parent end is closed: reason is BRAID_ECONNECTION_DONE on
     * EOF, else the error. */
    void (*fd_closed)(braid_process *p, int child_fd, int reason);
    /* The child was reaped (Twisted's processExited). Pipes may still be open
     * (a grandchild may hold them). */
    void (*exited)(braid_process *p, const braid_process_status *st);
    /* Reaped *and* every fd the process routes is closed (processEnded);
     * once. The process may be freed from here. */
    void (*ended)(braid_process *p, const braid_process_status *st);
} braid_process_protocol;

typedef struct braid_process_options {
    const char *file;              /* path, or a name looked up in $PATH when it has no '/' —
                                      the parent's PATH, as posix_spawnp and execvp do, not one
                                      given in env (give an absolute path for that) */
    const char *const *argv;       /* NULL-terminated; NULL: { file, NULL } */
    braid_process_env_mode env_mode;
    const char *const *env;        /* NULL-terminated "NAME=value" */
    const char *cwd;               /* NULL: the parent's */
    bool new_process_group;        /* setpgid(0, 0) in the child */
    bool new_session;              /* setsid() in the child (implies a new group) */
    /* The child fd map. NULL (nfds 0): 0, 1 and 2 are inherited and
     * everything else is closed. Listed child fds must be distinct. */
    const braid_process_fd *fds;
    size_t nfds;
    const braid_process_protocol *protocol;   /* may be NULL; borrowed */
    void *user;                    /* braid_process_user */
    braid_process_on_free on_free;
} braid_process_options;

/* Spawn. 0 and *out set (yours), or a negative code and nothing left behind
 * (no descriptor, no child, no memory): the program could not be found
 * (-ENOENT), run (-EACCES, -ENOEXEC), descriptors ran out (-EMFILE,
 * -ENFILE), the process limit was reached (-EAGAIN), the map is invalid
 * (BRAID_EINVAL) ... When failure is not NULL, a failed spawn also stores
 * there a braid_failure naming the program and the reason ("spawn
 * '/no/such': No such file or directory"), yours to braid_failure_free.
 * Descriptors the map makes are attached to their transports before this
 * returns. */
BRAID_API int braid_process_spawn(braid_loop *loop, const braid_process_options *opts,
                                  braid_process **out, braid_failure **failure);

/* Free the handle: open pipes are aborted (their fd_closed does not run);
 * a child still running is killed and reaped, or left to the loop, as
 * opts.on_free says. NULL is a no-op. May be called from any callback of p. */
BRAID_API void braid_process_free(braid_process *p);

BRAID_API pid_t braid_process_pid(const braid_process *p);
BRAID_API void *braid_process_user(const braid_process *p);
BRAID_API braid_loop *braid_process_loop(const braid_process *p);
/* Has the child been reaped? Its status into *out when it has (out may be NULL). */
BRAID_API bool braid_process_has_exited(const braid_process *p, braid_process_status *out);

/* A Deferred that fires with the braid_process_status * (borrowed: valid
 * while p lives) when p has ended (reaped and its routed fds closed): at
 * once if it has. Each call gives a new Deferred (your reference). Freeing
 * p before then fails it with BRAID_ESHUTDOWN. NULL only on ENOMEM. */
BRAID_API braid_deferred *braid_process_ended(braid_process *p);

/* Send signo (pidfd_send_signal, so never to a recycled pid).
 * BRAID_EPROCESS_EXITED once the child has been reaped. */
BRAID_API int braid_process_signal(braid_process *p, int signo);
/* SIGTERM now and SIGKILL timeout ns later (loop clock) unless it has
 * exited by then; 0 = SIGKILL at once. Calling it again moves the SIGKILL
 * only earlier. BRAID_EPROCESS_EXITED if already reaped. */
BRAID_API int braid_process_kill_after(braid_process *p, uint64_t timeout);

/* The parent end of a routed child fd: write to it, close it. Writes are
 * buffered as any stream transport's, with its limits: past the hard cap
 * (4 MiB unless braid_transport_set_limits on braid_process_transport
 * changed it) of bytes the child has not read, the write fails with
 * BRAID_EBUFFER_LIMIT and that fd's pipe is aborted (fd_closed says why) —
 * a child that never reads cannot grow the parent's memory. Register a
 * producer on the transport to be paused at the high watermark instead. */
BRAID_API int braid_process_write(braid_process *p, int child_fd, const void *buf, size_t len);
/* Flush, then send EOF (the child's read sees end of file). */
BRAID_API int braid_process_close_fd(braid_process *p, int child_fd);
/* The transport of a routed child fd (borrowed, valid until fd_closed), or
 * NULL if it is not open. */
BRAID_API braid_transport *braid_process_transport(braid_process *p, int child_fd);

/* ==== boxes: small typed key/value payloads ==========================================
 *
 * A call's payload is bytes, or a box: keys (1 ... 255 bytes, unique, no
 * NUL) to typed values — bytes, UTF-8 text, int64, uint64, double, bool, a
 * list of byte strings, a box, a list of boxes, a time with its UTC offset,
 * a decimal number as text — as Twisted's AMP boxes ("Asynchronous
 * Messaging Protocol", twisted.protocols.amp) carry typed arguments (its
 * String, Unicode, Integer, Float, Boolean, ListOf, AmpList, DateTime and
 * Decimal). Unlike AMP's, a value is not capped at 64 KiB (AMP's
 * MAX_VALUE_LENGTH, which makes large values need chunking): a box is
 * bounded by the frame it travels in, by BRAID_BOX_MAX_KEYS keys,
 * BRAID_BOX_MAX_ITEMS items a list and BRAID_BOX_MAX_DEPTH levels of boxes
 * inside boxes.
 *
 *     braid_box *b;
 *     braid_box_new(&b);
 *     braid_box_set_str(b, "path", "/data/a.csv");
 *     braid_box_set_i64(b, "offset", 4096);
 *     braid_box_append(b, "cols", "price", 5);
 *     braid_deferred *d = braid_workers_call_box(w, "scan", b, NULL);   // b is copied
 *     braid_box_free(b);
 *     // d fires with a braid_worker_reply *: r->box is the worker's reply box
 *
 *     // in the worker's handler:
 *     const braid_box *a = braid_worker_call_box(c);
 *     int64_t off;
 *     if (braid_box_i64(a, "offset", &off) < 0) ... // BRAID_ENOENT, BRAID_EBOX_TYPE
 *
 * The encoding (docs/process.md, "Boxes") is versioned and canonical;
 * braid_box_decode rejects anything malformed with BRAID_EBOX. A box is
 * yours (braid_box_free); not thread-safe, as any plain data. */
typedef struct braid_box braid_box;
typedef enum braid_box_type {
    BRAID_BOX_BYTES = 1,
    BRAID_BOX_STR,                 /* UTF-8, no NUL */
    BRAID_BOX_I64,
    BRAID_BOX_U64,
    BRAID_BOX_F64,
    BRAID_BOX_BOOL,
    BRAID_BOX_LIST,                /* a list of byte strings (AMP's ListOf) */
    BRAID_BOX_BOX,                 /* a box */
    BRAID_BOX_BOXES,               /* a list of boxes (AMP's AmpList) */
    BRAID_BOX_TIME,                /* ns since the Unix epoch (UTC) and a UTC offset (AMP's DateTime) */
    BRAID_BOX_DECIMAL,             /* a decimal number as text, kept exact (AMP's Decimal) */
} braid_box_type;
#define BRAID_BOX_VERSION 1
#define BRAID_BOX_MAX_KEYS 256
#define BRAID_BOX_MAX_KEY 255      /* bytes in a key (AMP's MAX_KEY_LENGTH) */
#define BRAID_BOX_MAX_ITEMS 65536  /* items in a list */
#define BRAID_BOX_MAX_DEPTH 8      /* levels of boxes below the outermost one */

/* An empty box: 0, or BRAID_ENOMEM. */
BRAID_API int braid_box_new(braid_box **out);
BRAID_API void braid_box_free(braid_box *b);       /* NULL is a no-op */
/* Set key (copied) to a value (copied), replacing any value it had. 0, or
 * BRAID_EINVAL (no key, a key over 255 bytes, text that is not UTF-8 or has
 * a NUL), BRAID_EMSGSIZE (a key past BRAID_BOX_MAX_KEYS, a value over
 * 4 GiB), BRAID_ENOMEM (the box is unchanged). */
BRAID_API int braid_box_set_bytes(braid_box *b, const char *key, const void *p, size_t len);
BRAID_API int braid_box_set_str(braid_box *b, const char *key, const char *s);
BRAID_API int braid_box_set_i64(braid_box *b, const char *key, int64_t v);
BRAID_API int braid_box_set_u64(braid_box *b, const char *key, uint64_t v);
BRAID_API int braid_box_set_f64(braid_box *b, const char *key, double v);
BRAID_API int braid_box_set_bool(braid_box *b, const char *key, bool v);
/* Append an item to key's list (made if key is new). BRAID_EBOX_TYPE if key
 * holds another type; BRAID_EMSGSIZE past BRAID_BOX_MAX_ITEMS. */
BRAID_API int braid_box_append(braid_box *b, const char *key, const void *p, size_t len);
/* A box as a value, and appended to key's list of boxes: v is encoded
 * (copied; v stays yours and may be b itself). BRAID_EINVAL when v holds
 * boxes BRAID_BOX_MAX_DEPTH deep already (the result would be too deep),
 * BRAID_EBOX_TYPE (append) if key holds another type. */
BRAID_API int braid_box_set_box(braid_box *b, const char *key, const braid_box *v);
BRAID_API int braid_box_append_box(braid_box *b, const char *key, const braid_box *v);
/* A point in time: unix_ns nanoseconds since 1970-01-01 UTC, and the UTC
 * offset it was taken in, in minutes (-1439 ... 1439, else BRAID_EINVAL):
 * 2026-12-03 10:00 at +01:00 is (the ns of 09:00 UTC, 60). */
BRAID_API int braid_box_set_time(braid_box *b, const char *key, int64_t unix_ns, int utc_offset_min);
/* A decimal number kept as its text, never through a double: an optional
 * sign, digits with an optional point ("12", "-0.50", ".5", "5."), an
 * optional exponent ("1.5e-3"), or "NaN", "sNaN", "Infinity" (signed) —
 * the forms Python's decimal.Decimal prints. Anything else: BRAID_EINVAL. */
BRAID_API int braid_box_set_decimal(braid_box *b, const char *key, const char *text);

/* Keys in the order they were first set (or decoded): i < braid_box_count. */
BRAID_API size_t braid_box_count(const braid_box *b);
BRAID_API const char *braid_box_key(const braid_box *b, size_t i);   /* NULL past the end */
/* The type of key's value, or 0 when there is no such key. */
BRAID_API braid_box_type braid_box_kind(const braid_box *b, const char *key);
/* Getters: 0 and *out, BRAID_ENOENT (no such key) or BRAID_EBOX_TYPE. */
BRAID_API int braid_box_i64(const braid_box *b, const char *key, int64_t *out);
BRAID_API int braid_box_u64(const braid_box *b, const char *key, uint64_t *out);
BRAID_API int braid_box_f64(const braid_box *b, const char *key, double *out);
BRAID_API int braid_box_bool(const braid_box *b, const char *key, bool *out);
/* Text (borrowed, valid until key changes or b is freed), or NULL. */
BRAID_API const char *braid_box_str(const braid_box *b, const char *key);
/* Bytes (or text), borrowed as above; a NUL follows them (not counted). */
BRAID_API int braid_box_bytes(const braid_box *b, const char *key, const void **p, size_t *len);
/* A list's length (a list of byte strings or of boxes; 0: none or another
 * type) and its item i (a list of byte strings), borrowed. */
BRAID_API size_t braid_box_items(const braid_box *b, const char *key);
BRAID_API int braid_box_item(const braid_box *b, const char *key, size_t i, const void **p,
                             size_t *len);
/* A box value, or item i of a list of boxes, as a new box (yours:
 * braid_box_free): 0, BRAID_ENOENT, BRAID_EBOX_TYPE or BRAID_ENOMEM. */
BRAID_API int braid_box_box(const braid_box *b, const char *key, braid_box **out);
BRAID_API int braid_box_item_box(const braid_box *b, const char *key, size_t i, braid_box **out);
/* A time: 0 with *unix_ns and *utc_offset_min (either may be NULL),
 * BRAID_ENOENT or BRAID_EBOX_TYPE. */
BRAID_API int braid_box_time(const braid_box *b, const char *key, int64_t *unix_ns, int *utc_offset_min);
/* A decimal's text (borrowed, as braid_box_str), or NULL. */
BRAID_API const char *braid_box_decimal(const braid_box *b, const char *key);

/* Encoding: the size, and the bytes into buf (BRAID_EMSGSIZE if cap is too
 * small); decoding: a new box (yours), BRAID_EBOX for malformed input, or
 * BRAID_ENOMEM. Decoding an encoding gives the same box; encoding a decoded
 * box gives the same bytes. */
BRAID_API size_t braid_box_encoded_size(const braid_box *b);
BRAID_API int braid_box_encode(const braid_box *b, void *buf, size_t cap, size_t *len);
BRAID_API int braid_box_decode(const void *buf, size_t len, braid_box **out);

/* ==== worker-process pools over framed RPC ========================================
 *
 * N worker processes, each connected to the parent by a pair of pipes (calls
 * in at the worker's fd 3, frames out at the lowest fd from 4 its extra fds
 * leave free; pipes cost less per round trip than a socketpair) speaking
 * braid's framed, versioned RPC: u32 length-prefixed
 * frames holding a command name, a call id and a payload of bytes or a box
 * (above; docs/process.md, "Wire format"). One binary can be both sides: the pool
 * re-runs the current executable (/proc/self/exe) with the environment
 * variable BRAID_WORKER set, and the program's main asks
 * braid_worker_is_child() first:
 *
 *     static void sum(braid_worker_call *c, const void *buf, size_t len, void *arg) {
 *         uint64_t s = 0;
 *         for (size_t i = 0; i < len; i++) s += ((const unsigned char *)buf)[i];
 *         braid_worker_call_reply(c, &s, sizeof s);          // now or later
 *     }
 *     static const braid_worker_command cmds[] = { { "sum", sum, NULL } };
 *     int main(void) {
 *         if (braid_worker_is_child()) return braid_worker_main(NULL, cmds, 1);
 *         ...
 *         braid_workers *w;
 *         braid_workers_new(loop, &(braid_workers_options){ .count = 2 }, &w);
 *         braid_deferred *d = braid_workers_call(w, "sum", data, n, NULL);
 *         // d fires with a braid_worker_reply * (freed with the result)
 *     }
 *
 * The pool: a worker is sent calls only after its "ready" frame; each
 * call goes to the least-loaded ready worker with fewer than max_in_flight
 * calls, else waits in a bounded FIFO queue (full: BRAID_EQUEUE_FULL at
 * once). A worker runs its calls in the order it gets them, so a call may
 * wait inside it behind others. Cancelling a queued call removes it;
 * cancelling a sent one fails its Deferred at once (BRAID_ECANCELED) and,
 * if the worker has not started it, the worker drops it unrun; a started
 * one runs on and its reply is dropped — and keeps its timeout: a handler
 * still running then is a hung one, so its worker is killed and replaced
 * as for any started call that times out (counted in timeouts; the call
 * itself failed already). Timeouts count from the call:
 *   - a call that passes its timeout before its worker started it (it
 *     waits there behind a long call) fails alone with BRAID_ETIMEDOUT;
 *     the worker drops it and keeps running the others (stats:
 *     cancelled_queued). Whether the worker has started a call is decided
 *     in a page of memory the two processes share, by one compare-and-swap
 *     (nothing per call on the wire; a blocked handler cannot send a frame).
 *     A worker that then takes no call for 1 s although nothing is in front
 *     of the cancelled one (its loop blocked outside any call) is replaced;
 * and the faults, each ending with the worker killed (SIGKILL) and a new
 * one started:
 *   - a call that has started passes its timeout: it fails with
 *     BRAID_ETIMEDOUT (with handlers that answer later, from a Deferred,
 *     every call the worker has taken counts as started);
 *   - the worker dies (crash, OOM kill, exit): BRAID_EWORKER_LOST;
 *   - it sends a malformed frame: BRAID_EWORKER_PROTOCOL;
 *   - it sends a frame above max_frame: BRAID_EWORKER_FRAME;
 * and every other call that worker held fails with the same code
 * (BRAID_EWORKER_LOST after a timeout) — or, if
 * the caller marked it idempotent, is sent again once, to another worker.
 * No call is ever left pending. A worker is recycled after recycle_after
 * calls (it finishes what it holds, is told to exit, and a new one starts).
 * A worker that dies before its ready frame is restarted with a back-off
 * (10 ms doubling to 1 s); after 3 such deaths in a row the queued calls
 * fail with BRAID_EWORKER_LOST rather than wait for a program that cannot
 * start.
 *
 * Logging: while it serves, a worker's loop logger sends every event to
 * the parent, whose logger delivers it to its observers (its filters
 * applying) with the fields "worker" (the worker's index) and "pid" added.
 * The worker never blocks on it: past its connection's high watermark
 * events are dropped and counted, a "braid.process" warning reports how
 * many once the parent caught up, and braid_workers_stats' log_dropped
 * sums them. A call carries the caller's request id (braid_log_request_id_key)
 * into the handler's context. Each pool is an entry of the loop's
 * "workers" introspection section (<braid/introspect.h>). */
typedef struct braid_workers braid_workers;

typedef struct braid_workers_options {
    const char *program;           /* NULL: the current executable (/proc/self/exe) */
    const char *const *argv;       /* NULL: { program, NULL } */
    const char *role;              /* passed to the worker (braid_worker_role); may be NULL */
    unsigned count;                /* 0: the number of online CPUs */
    unsigned max_in_flight;        /* per worker; 0: 8 */
    size_t queue_limit;            /* calls waiting for a worker; 0: 1024 */
    size_t max_frame;              /* bytes in one frame either way; 0: 16 MiB */
    uint64_t call_timeout;         /* default per call; 0: 60 s; BRAID_FOREVER: none */
    unsigned recycle_after;        /* calls per worker; 0: never */
    /* The worker's fd 0 is /dev/null; 1 and 2 are the parent's 1 and 2,
     * or /dev/null with devnull_output. */
    bool devnull_output;
    /* More descriptors for every worker, in braid_process_spawn's fd map:
     * each entry's child_fd (4 ... 1023, distinct; 0 to 3 are the pool's)
     * is BRAID_PROCESS_FD_INHERIT (the parent's parent_fd duplicated in: a
     * shared data file, a listening socket) or BRAID_PROCESS_FD_DEVNULL;
     * other kinds are BRAID_EINVAL. The array is copied; the parent fds are
     * not: keep them open while the pool lives (replacements are spawned
     * with them). Everything else stays closed in the worker. */
    const braid_process_fd *fds;
    size_t nfds;
    /* A worker that has not sent its ready frame this long after its
     * spawn is killed and replaced (a start-up failure). 0: 10 s;
     * BRAID_FOREVER: none. After 3 start-up failures in a row the pool
     * stops starting workers until braid_workers_free (a warning says so,
     * once; stats' respawn_stopped): queued calls fail, and new ones too
     * while no worker is left, with BRAID_EWORKER_LOST. */
    uint64_t start_timeout;
} braid_workers_options;

/* The reply to a call: its payload (freed with the Deferred's result). */
typedef struct braid_worker_reply {
    /* The worker replied with a box (braid_worker_call_reply_box): it,
     * decoded (owned by the reply), and data holds its encoding. Else NULL. */
    braid_box *box;
    size_t len;
    unsigned char data[];          /* len bytes, then a NUL (not counted) */
} braid_worker_reply;

typedef struct braid_workers_call_options {
    uint64_t timeout;              /* 0: the pool's call_timeout; BRAID_FOREVER: none */
    bool idempotent;               /* may be sent again once if its worker is lost */
} braid_workers_call_options;

/* Start the pool: spawns count workers now (an error if the first spawn
 * fails, e.g. -ENOENT for a missing program). Yours; braid_workers_free. */
BRAID_API int braid_workers_new(braid_loop *loop, const braid_workers_options *opts,
                                braid_workers **out);
/* Call command (1 ... 255 bytes) with len bytes of payload (copied). The
 * Deferred fires with a braid_worker_reply * (owned by the result), or
 * fails: BRAID_EQUEUE_FULL, BRAID_EMSGSIZE (the call exceeds max_frame),
 * BRAID_ETIMEDOUT, BRAID_EWORKER_*, BRAID_ESHUTDOWN, or the code the
 * handler failed with (its message as the failure's). opts may be NULL.
 * NULL only on ENOMEM. */
BRAID_API braid_deferred *braid_workers_call(braid_workers *w, const char *command,
                                             const void *payload, size_t len,
                                             const braid_workers_call_options *opts);
/* The same with a box as the payload (encoded into the call: b stays
 * yours). The worker's handler gets it from braid_worker_call_box. */
BRAID_API braid_deferred *braid_workers_call_box(braid_workers *w, const char *command,
                                                 const braid_box *b,
                                                 const braid_workers_call_options *opts);
/* Stop: with drain, queued and sent calls finish first (for at most
 * timeout; then as without drain); without, queued and sent calls fail
 * with BRAID_ESHUTDOWN. Workers are then told to exit and killed if they
 * have not within 1 s. The Deferred fires (value NULL) when every worker
 * has been reaped; new calls fail with BRAID_ESHUTDOWN meanwhile. */
BRAID_API braid_deferred *braid_workers_shutdown(braid_workers *w, bool drain, uint64_t timeout);
/* Free at once: pending calls fail with BRAID_ESHUTDOWN, workers are
 * killed and reaped. NULL is a no-op. */
BRAID_API void braid_workers_free(braid_workers *w);

struct braid_workers_stats {
    unsigned workers;              /* alive now */
    unsigned ready;                /* of which took their ready frame */
    size_t queued;                 /* calls waiting for a worker */
    size_t in_flight;              /* calls sent, reply not yet in */
    uint64_t calls;                /* replies received */
    uint64_t spawned;              /* workers started, replacements included */
    uint64_t lost;                 /* workers that died or were killed for a fault */
    uint64_t timeouts;             /* calls failed by their timeout */
    uint64_t cancelled_queued;     /* calls cancelled (their timeout, braid_deferred_cancel)
                                    * while waiting inside a worker, not started: dropped
                                    * there, the worker kept */
    uint64_t recycled;             /* workers retired by recycle_after */
    uint64_t resent;               /* idempotent calls sent again */
    uint64_t log_events;           /* log events received from workers */
    uint64_t log_dropped;          /* log events workers reported lost (their connection was full) */
    bool respawn_stopped;          /* start-up failures in a row: no more workers are started */
    char last_exit[48];            /* how the last lost worker ended: "signal 6 (core dumped)",
                                    * "exit status 70", or "" (none lost, or not known) */
};
/* A snapshot (the struct and the function share the name, as stat(2)'s:
 * `struct braid_workers_stats s; braid_workers_stats(w, &s);`). */
BRAID_API void braid_workers_stats(const braid_workers *w, struct braid_workers_stats *out);
/* The pids of the live workers into out (up to cap), returning how many
 * there are (tests, monitoring). */
BRAID_API size_t braid_workers_pids(const braid_workers *w, pid_t *out, size_t cap);

/* ---- inside a worker --------------------------------------------------------------- */
typedef struct braid_worker_call braid_worker_call;
/* A handler: payload is lent for the call. Reply (or fail) exactly once,
 * now or later — a handler waiting for a Deferred keeps c and answers from
 * the Deferred's callback. */
typedef void (*braid_worker_handler_fn)(braid_worker_call *c, const void *payload, size_t len,
                                        void *arg);
typedef struct braid_worker_command {
    const char *name;
    braid_worker_handler_fn fn;
    void *arg;
} braid_worker_command;

/* Was this process started by a braid_workers pool? (Any thread.) */
BRAID_API bool braid_worker_is_child(void);
/* The pool's role string, or NULL (any thread). */
BRAID_API const char *braid_worker_role(void);
/* Serve the pool: say ready, dispatch calls to cmds (the table is
 * borrowed) until the parent closes the connection or tells the worker to
 * stop, then return 0 (a value for main). BRAID_WORKER names the
 * connection: "R,W", a pipe the worker reads and one it writes (what the
 * pool passes: "3,4"), or one fd, an AF_UNIX stream socket; anything else
 * (fds below 3, not pipes or not such a socket) is BRAID_EINVAL, no fd
 * touched. loop NULL: a loop of its own;
 * else that loop, run here. Unknown commands fail with
 * BRAID_EWORKER_COMMAND; a malformed frame from the parent makes it return
 * BRAID_EWORKER_PROTOCOL. It maps the slot page BRAID_WORKER_SLOTS names
 * (how the parent cancels a call not yet started; without it every call
 * runs) and closes that fd first. */
BRAID_API int braid_worker_main(braid_loop *loop, const braid_worker_command *cmds, size_t n);
/* Answer c (its memory is freed by the call): the payload is copied.
 * BRAID_EMSGSIZE past the pool's frame limit (the caller then gets that
 * error; c is answered all the same). */
BRAID_API int braid_worker_call_reply(braid_worker_call *c, const void *payload, size_t len);
/* Answer c with a box (encoded: b stays yours). BRAID_EMSGSIZE past the
 * pool's frame limit (the caller then gets that error). */
BRAID_API int braid_worker_call_reply_box(braid_worker_call *c, const braid_box *b);
/* The call's box (borrowed, valid until c is answered), or NULL when the
 * caller sent bytes. A malformed box from the parent never reaches a
 * handler: the call fails with BRAID_EBOX and the worker keeps serving. */
BRAID_API const braid_box *braid_worker_call_box(const braid_worker_call *c);
/* Fail c with code (< 0) and a message (may be NULL). */
BRAID_API int braid_worker_call_fail(braid_worker_call *c, int code, const char *message);
BRAID_API braid_loop *braid_worker_call_loop(const braid_worker_call *c);
BRAID_API const char *braid_worker_call_command(const braid_worker_call *c);


/* ==== N loops serving one port ========================================================
 *
 * braid_serve runs N loops — in N threads, or in N forked processes — that
 * serve one TCP endpoint together, and returns when they have stopped:
 *
 *     static braid_factory *make(braid_loop *loop, unsigned i, void *arg) {
 *         braid_factory *f = malloc(sizeof *f);                  // one per loop
 *         braid_factory_init(f, &my_ops, sizeof(my_proto), NULL);
 *         return f;
 *     }
 *     static void done(braid_factory *f, unsigned i, void *arg) { free(f); }
 *     struct braid_serve_stats st;
 *     braid_serve("tcp:8080", &(braid_serve_options){ .loops = 2, .processes = true,
 *                                                     .method = BRAID_SERVE_REUSEPORT,
 *                                                     .factory = make, .factory_done = done }, &st);
 *
 * The calling thread supervises: it binds the sockets (and keeps them for
 * the whole run, so a restarted process takes over its predecessor's
 * socket and queue), starts the loops, and on SIGTERM or SIGINT stops
 * them gracefully: every loop stops accepting, its open connections get
 * drain_timeout to finish, then those still open are shut down, and
 * braid_serve returns. A child process that dies (crash, kill) while the
 * server is not stopping is started again (unless no_restart). If the
 * supervisor itself dies (SIGKILL, a crash), its children get SIGTERM and
 * drain as after a stop rather than serve on as orphans (LINUX-ONLY:
 * PR_SET_PDEATHSIG; elsewhere they serve on until killed).
 *
 * braid_serve blocks SIGTERM, SIGINT and SIGCHLD in the calling thread for
 * its run (the loops take them as events; threads and children inherit
 * the mask), so block SIGTERM and SIGINT in your other threads too, as for
 * braid_signal_start (a thread that does not would be killed by them).
 * The supervisor learns of a child's exit from its pidfd (Linux >= 5.3),
 * so a thread of yours that leaves SIGCHLD unblocked — and so receives the
 * process's SIGCHLDs, which the default action discards — does no harm;
 * without pidfds it reaps on SIGCHLD, which every thread must then block
 * (a SIGCHLD lost to another thread delays the end of a stop to
 * drain_timeout + 1 s). Processes are made with fork(): call it from a
 * process with no other threads running braid (a fork copies only the
 * calling thread); each child makes its own loop after the fork. A child
 * keeps the descriptors it inherits without close-on-exec; those with it
 * (another thread's connection, a library's socket) are replaced by
 * /dev/null read-only in the child, so a connection the parent closes
 * really ends: open what a loop needs in the factory, which runs there. */
typedef enum braid_serve_method {
    /* (a) one SO_REUSEPORT listening socket per loop, the kernel balancing
     * connections by a hash of the 4-tuple (Linux; where SO_REUSEPORT does
     * not balance, e.g. macOS, every connection goes to one socket). */
    BRAID_SERVE_REUSEPORT = 0,
    /* (b) one listening socket watched by every loop with wake-one
     * (BRAID_WATCH_EXCLUSIVE: EPOLLEXCLUSIVE). The epoll backend only: on
     * select, poll and io_uring this is BRAID_SERVE_SHARED (every loop
     * wakes, one accepts). The kernel wakes the first loop asleep in the
     * socket's wait queue, so each loop re-adds its listener after 16
     * accepts (to the queue's tail), as nginx does, to spread the load. */
    BRAID_SERVE_EXCLUSIVE,
    /* (c) one acceptor (the supervisor's loop) accepts and hands each
     * connection to the loops in turn (a posted call to a thread; a
     * descriptor passed over a Unix socket to a process). */
    BRAID_SERVE_ACCEPTOR,
    /* One socket watched by every loop, all woken by each connection (the
     * thundering herd; for comparison). */
    BRAID_SERVE_SHARED,
} braid_serve_method;

typedef struct braid_serve_options {
    unsigned loops;                /* 1 to 64 (more: BRAID_EINVAL); 0: the number of online
                                    * CPUs, at most 64 */
    bool processes;                /* N forked processes instead of N threads */
    braid_serve_method method;
    braid_backend backend;         /* of every loop (default: $BRAID_BACKEND, else epoll) */
    uint64_t drain_timeout;        /* after a stop, for open connections; 0: 5 s; BRAID_FOREVER: no limit */
    bool no_restart;               /* processes: leave a crashed child dead */
    /* Called in each loop's thread (or child) with its loop: the factory
     * that loop serves (NULL: that loop fails to start). Required. */
    braid_factory *(*factory)(braid_loop *loop, unsigned index, void *arg);
    /* Called there once the loop is gone (free the factory). May be NULL. */
    void (*factory_done)(braid_factory *f, unsigned index, void *arg);
    /* Called in the loop's thread/child once it serves, before it runs
     * (start timers, signal handlers of your own). May be NULL. */
    void (*on_loop)(braid_loop *loop, unsigned index, void *arg);
    /* Called there when the stop begins (the listener is already closed):
     * close what on_loop or the factory opened — timers, an HTTP server's
     * idle connections, pools — so the loop can end. May be NULL. Whatever
     * still keeps the loop alive a moment (250 ms) after drain_timeout, when
     * the open connections have been shut down, is abandoned: the loop is
     * stopped with a warning naming it, so a stop always ends. */
    void (*on_drain)(braid_loop *loop, unsigned index, void *arg);
    /* Called in the calling thread once the sockets are bound, with the
     * port (useful with port 0). May be NULL. */
    void (*on_listening)(int port, void *arg);
    void *arg;
} braid_serve_options;

struct braid_serve_stats {
    unsigned loops;
    int port;
    uint64_t accepted[64];         /* connections each loop accepted (balance) */
    uint64_t total;
    uint64_t restarts;             /* child processes started again */
    uint64_t killed;               /* children SIGKILLed for not ending by drain_timeout + 1 s
                                    * (their counts are missing from accepted) */
    uint64_t rehanded;             /* ACCEPTOR + processes: connections a child ended without
                                    * taking (unread in its hand-off socket), handed to another */
};

/* Serve endpoint ("tcp:PORT[:interface=ADDR][:backlog=N]", tcp6 too; Unix
 * endpoints: BRAID_ENOSYS) from N loops until SIGTERM/SIGINT, as above.
 * 0 after a stop, or a negative code when it could not start (the port is
 * taken; BRAID_ESERVE_START: a loop's factory returned NULL — in processes a
 * child that cannot start is not restarted, the others are stopped). A child
 * that crashes within a second of its start again and again is restarted
 * after a back-off (10 ms, doubling to 1 s), not in a fork loop. out (may be NULL) gets the
 * per-loop counts. */
BRAID_API int braid_serve(const char *endpoint, const braid_serve_options *opts,
                          struct braid_serve_stats *out);

#ifdef __cplusplus
}
#endif
#endif
