/* Internals shared by the files of the process module (src/process/, never
 * installed): the RPC wire format both sides of a worker pool speak, and
 * the spawning the pool builds on. */
#ifndef BRAID_PROCESS_INTERNAL_H
#define BRAID_PROCESS_INTERNAL_H

#include "loop/loop_module.h"
#include <braid/process.h>
#include <braid/framing.h>
#include <braid/log.h>
#include <stdatomic.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "process";

/* A pidfd for the child pid (close-on-exec; it becomes readable when the
 * child exits, whichever thread SIGCHLD goes to), or -1 where there is none:
 * no pidfd_open (Linux < 5.3, other systems), a sandbox refusing it, or
 * BRAID_PROCESS_SIGCHLD=1 in the environment, which forces the SIGCHLD
 * paths for their tests. LINUX-ONLY (pidfd_open); spawn.c. */
int braid__pidfd_open(pid_t pid);

/* Big-endian integers of the wire formats (rpc.c, box.c). */
static inline uint32_t braid__get32(const unsigned char *b) {
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}
static inline void braid__put32(unsigned char *b, uint32_t v) {
    b[0] = (unsigned char)(v >> 24); b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8); b[3] = (unsigned char)v;
}
static inline uint64_t braid__get64(const unsigned char *b) {
    return (uint64_t)braid__get32(b) << 32 | braid__get32(b + 4);
}
static inline void braid__put64(unsigned char *b, uint64_t v) {
    braid__put32(b, (uint32_t)(v >> 32));
    braid__put32(b + 4, (uint32_t)v);
}

/* ---- the RPC wire format (rpc.c) -------------------------------------------------------
 * A frame is a u32 big-endian length (braid_framing_write_u32's framing), then:
 *   u8  version (BRAID__RPC_VERSION)
 *   u8  type    (braid__rpc_type)
 *   u32 call id (big-endian; 0 for STOP; READY's: the worker's features,
 *       BRAID__RPC_READY_*, which a parent that predates them ignores)
 *   CALL:  u8 command length (1..255), the command, then the payload
 *   REPLY: the payload
 *   FAIL:  i32 code (big-endian, < 0), then the message (UTF-8, no NUL)
 *   READY, STOP, CANCEL: nothing more
 *   CALL_EX: u8 flags (BRAID__RPC_F_*; no other bit), the u64 request id if
 *            F_RID, then as CALL; with F_BOX the payload is a box (box.c)
 *   REPLY_BOX: a box (box.c; its decoder judges it)
 *   LOG (worker -> parent, id 0): u8 level (0...3), u64 time (ns, wall
 *            clock), u64 request id (0: none), u32 events the worker dropped
 *            before this one, u8 namespace length (0: none), the namespace,
 *            u16 message length, the message, then the fields as a box
 * Anything else — another version, an unknown type, a short header, a
 * command length of 0 or past the end, a FAIL code >= 0, unknown flags, a
 * level above 3, lengths past the end — is malformed. */
#define BRAID__RPC_VERSION 1
#define BRAID__RPC_HEADER 6
typedef enum braid__rpc_type {
    BRAID__RPC_CALL = 1,    /* parent -> worker */
    BRAID__RPC_REPLY = 2,   /* worker -> parent */
    BRAID__RPC_FAIL = 3,    /* worker -> parent */
    BRAID__RPC_READY = 4,   /* worker -> parent, once, first */
    BRAID__RPC_STOP = 5,    /* parent -> worker: finish and exit */
    BRAID__RPC_CANCEL = 6,  /* parent -> worker: the caller gave up (advisory) */
    BRAID__RPC_CALL_EX = 7, /* parent -> worker: a call with a box or a request id */
    BRAID__RPC_REPLY_BOX = 8, /* worker -> parent */
    BRAID__RPC_LOG = 9,     /* worker -> parent: a log event */
} braid__rpc_type;
#define BRAID__RPC_F_BOX 1u
#define BRAID__RPC_F_RID 2u

typedef struct braid__rpc_msg {
    braid__rpc_type type;
    uint32_t id;
    const char *command;    /* CALL: not NUL-terminated */
    size_t command_len;
    int code;               /* FAIL */
    const void *payload;    /* REPLY/CALL payload, FAIL message, LOG fields */
    size_t len;
    unsigned flags;         /* CALL_EX */
    uint64_t request_id;    /* CALL_EX with F_RID, LOG */
    unsigned level;         /* LOG */
    uint64_t time_ns;       /* LOG */
    uint32_t dropped;       /* LOG */
    const char *ns;         /* LOG: not NUL-terminated; ns_len 0: none */
    size_t ns_len;
    const char *text;       /* LOG: the message, not NUL-terminated (<= 65535) */
    size_t text_len;
} braid__rpc_msg;

/* Parse one frame's body (after the u32 length). 0, or BRAID_EPROTO_INPUT. */
int braid__rpc_parse(const void *frame, size_t len, braid__rpc_msg *out);
/* Write one frame (a single buffered write). BRAID_EMSGSIZE if its body
 * would pass max. */
int braid__rpc_write(braid_transport *t, const braid__rpc_msg *m, size_t max);
/* Write a LOG frame, straight to the fd (a non-blocking send), so that it
 * leaves even if the caller then blocks or crashes: what t's buffer holds
 * (replies left for the end of the read) is handed to the kernel first;
 * what the kernel does not take, of either, stays buffered, in order. */
int braid__rpc_write_log_now(braid_transport *t, int fd, const braid__rpc_msg *m, size_t max);

/* ---- the slot page (slots.c) ---------------------------------------------------------------
 * Who starts a call sent to a worker, the worker or the parent's cancel,
 * is decided in a page of memory both processes map (a memfd the pool
 * passes at the child fd BRAID_WORKER_SLOTS names), not by frames: a
 * frame from a worker whose handler blocks arrives only when it returns,
 * and a reply it wrote before blocking may still wait in its write buffer.
 *
 * The worker numbers the calls it receives 0, 1, 2 ... (in arrival order;
 * the parent numbers them the same way as it sends them), and call k has
 * the slot k % count, where count is the pool's max_in_flight: the calls
 * sent and not yet taken are at most max_in_flight consecutive numbers, so
 * no two share a slot. A slot holds 0, TAKEN(k), CANCEL(k) or DROPPED(k);
 * each side moves it by compare-and-swap, so exactly one wins:
 *   - the worker, before it runs call k: CANCEL(k) there means the parent
 *     gave up on it: it writes DROPPED(k), answers FAIL BRAID_ECANCELED and
 *     runs nothing; else it writes TAKEN(k) and runs it;
 *   - the parent, when call k's timeout fires or it is cancelled: TAKEN(k)
 *     there means the call has started (a timeout then kills the worker);
 *     else it writes CANCEL(k), and the worker will drop the call.
 * The worker writes this page: the parent reads it as another process's
 * word, never as an index or a length. */
#define BRAID__SLOTS_MAGIC 0x42534c31u   /* "BSL1" */
typedef struct braid__slots {
    uint32_t magic;
    uint32_t count;                /* slots: the pool's max_in_flight */
    _Atomic uint64_t slot[];
} braid__slots;
#define BRAID__SLOT_CANCEL(k) (3 * (uint64_t)(k) + 1)
#define BRAID__SLOT_TAKEN(k) (3 * (uint64_t)(k) + 2)
#define BRAID__SLOT_DROPPED(k) (3 * (uint64_t)(k) + 3)
/* READY's call id, from a worker: its features (0 from a worker that
 * predates them; a parent that predates them ignores the id). */
#define BRAID__RPC_READY_SLOTS 1u  /* it takes its calls through the slot page */

/* One side's handle on a page: the mapping, and its slot count as this
 * side knows it (never read back from the shared header). p NULL: none. */
typedef struct braid__slot_page {
    braid__slots *p;
    uint32_t count;
} braid__slot_page;
/* The parent: a new page of count slots, its fd (close-on-exec) in *fd.
 * 0, or a negative code (the worker then runs without one, as a worker
 * that predates it). */
int braid__slots_new(uint32_t count, braid__slot_page *out, int *fd);
/* The worker: the page at fd, validated (a shared file holding the header
 * and exactly its slots). 0 or BRAID_EINVAL; fd is closed either way. */
int braid__slots_map(int fd, braid__slot_page *out);
void braid__slots_free(braid__slot_page *pg);
/* The worker, before running call k: true to run it, false if the parent
 * cancelled it (it is then marked dropped). */
bool braid__slots_take(const braid__slot_page *pg, uint64_t k);
/* The parent: true if it cancelled call k before the worker took it (the
 * worker will drop it), false if the worker has taken it. */
bool braid__slots_cancel(const braid__slot_page *pg, uint64_t k);
/* The parent, of a call k it cancelled: has the worker dropped it yet? */
bool braid__slots_dropped(const braid__slot_page *pg, uint64_t k);

/* ---- boxes (box.c) ----------------------------------------------------------------------
 * A worker's log event fields written straight into a box's encoding (no
 * allocation): keys that are empty, too long or repeated are left out, as
 * are fields that do not fit cap; text that is not UTF-8 goes as bytes.
 * Returns the length (0 if cap < 3). */
size_t braid__box_encode_fields(const braid_log_field *f, size_t n, unsigned char *buf, size_t cap);
/* A box's entries as log fields (borrowed from b): lists are left out.
 * Returns how many were written (at most cap). */
size_t braid__box_to_fields(const braid_box *b, braid_log_field *out, size_t cap);

/* The write-buffer cap of a pool connection: room for in_flight calls
 * (and replies) of max_frame bytes each, never below the 4 MiB default. */
size_t braid__rpc_buffer_cap(size_t max_frame, unsigned in_flight);

#endif
