/* Deferred internals shared by src/deferred*.c (never installed). */
#ifndef BRAID_DEFERRED_INTERNAL_H
#define BRAID_DEFERRED_INTERNAL_H

/* The module defines the constructors the debug origin macros wrap. */
#define BRAID_NO_DEFERRED_ORIGIN 1
#include "loop/loop_module.h"
#include <braid/deferred.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "deferred";

/* Callbacks stored inline before spilling to a heap array. Three covers the
 * common "callback + errback + timeout" shapes; the struct stays at 168
 * bytes (under three cache lines). */
#define BRAID__DEFERRED_INLINE 3
/* A spill array up to this many slots stays attached when a Deferred goes
 * back to the free list, so a loop that keeps adding a handful of callbacks
 * stops allocating after warm-up. Larger ones stay attached while the loop's
 * free list holds fewer than SPILL_BUDGET slots in them (24 bytes a slot). */
#define BRAID__DEFERRED_KEEP_SPILL 16
#define BRAID__DEFERRED_SPILL_BUDGET 16384

/* A slot is a callback pair, or a context marker (cb == braid__ctx_mark,
 * arg = a context reference): the callbacks after it, up to the next
 * marker, were added in that context and run in it. Callbacks added with
 * no context before any marker need none, so a Deferred used without
 * contexts stores nothing for them; one used within one context stores one
 * marker. */
typedef struct braid__cbslot {
    braid_deferred_cb cb, eb;
    void *arg;
} braid__cbslot;

enum {
    BRAID__D_CALLED    = 1u << 0,   /* fired (callback/errback) */
    BRAID__D_RUNNING   = 1u << 1,   /* inside the callback loop */
    BRAID__D_WAITING   = 1u << 2,   /* result.chain is a Deferred we wait on */
    BRAID__D_CANCELLED = 1u << 3,   /* cancel reached it while unfired */
    BRAID__D_PRODUCER  = 1u << 4,   /* the producer reference is still held */
    BRAID__D_FREED     = 1u << 5,   /* on the free list: any use is a bug */
    BRAID__D_CANCELLING = 1u << 6,  /* its canceller is running */
    BRAID__D_CTX       = 1u << 7,   /* its slots hold context markers */
};

struct braid_deferred {
    braid_loop *loop;
    uint32_t refs;
    uint32_t flags;
    uint32_t ncb, pos;               /* callbacks added / next to run */
    uint32_t paused;
    uint32_t spill_cap;
    braid_result result;             /* while WAITING: result.chain */
    /* The Deferred whose chain waits on this one: it holds our consumer
     * reference (in its result.chain) and we hold a reference on it, given
     * back when our result moves into it. On the free list: the next entry. */
    braid_deferred *parent;
    braid_deferred_cancel_fn canceller;
    void *canceller_arg;
    braid__cbslot *spill;            /* slots [INLINE, spill_cap + INLINE) */
    braid__cbslot slot[BRAID__DEFERRED_INLINE];
#ifdef BRAID_DEBUG
    /* Where it was made (braid_deferred_origin_at; file NULL: not recorded),
     * and its links in the loop's list of live Deferreds (the leak gate). */
    const char *origin_file, *origin_func;
    int origin_line;
    braid_deferred *live_prev, *live_next;
#endif
};

/* Per-loop state of Deferreds (under the deferred module's loop key). */
/* Debug builds (BRAID_DEBUG): freed Deferreds wait in a FIFO quarantine and
 * are reused only after this many more have been freed on the loop (at most
 * this many plus a free list's 4,096, 168 bytes each, are held: 3.3 MiB). */
#define BRAID__DEFERRED_QUARANTINE 16384

typedef struct braid__dpool {
    braid_deferred *free;            /* next to reuse (the oldest in debug builds) */
    braid_deferred *free_tail;       /* debug builds: the most recently freed */
    size_t nfree;
    size_t live;                     /* allocated, not yet freed */
    size_t unfired;                  /* made with braid_deferred_new*, not yet fired */
    size_t big_spill_slots;          /* in free-list spill arrays over KEEP_SPILL */
#ifdef BRAID_DEBUG
    braid_deferred *live_head;       /* every live Deferred, newest first */
#endif
} braid__dpool;

/* The loop's Deferred state, or NULL before its first Deferred. */
braid__dpool *braid__deferred_pool(braid_loop *loop);

/* Make room for `extra` more callbacks (so a later add cannot fail). */
int braid__deferred_reserve(braid_deferred *d, uint32_t extra);

static inline bool braid__deferred_has_result(const braid_deferred *d) {
    return (d->flags & (BRAID__D_CALLED | BRAID__D_RUNNING | BRAID__D_WAITING)) ==
               BRAID__D_CALLED && d->paused == 0;
}

#endif
