/* The context's fast path for braid's schedulers (internal, never
 * installed; published to every module in src/LAYERS). The same operations
 * as braid_ctx_capture / braid_ctx_swap / braid_ctx_unref in
 * <braid/context.h>, inlined: with no context set, a capture is one
 * thread-local load and a test, a restore two thread-local stores.
 *
 *     slot->ctx = braid__ctx_capture();                  // where work is queued
 *     braid_ctx *prev = braid__ctx_swap(slot->ctx);      // where it runs
 *     fn(arg);
 *     braid__ctx_swap(prev);
 *     braid__ctx_release(slot->ctx);                     // done with it
 */
#ifndef BRAID_CONTEXT_CAPTURE_H
#define BRAID_CONTEXT_CAPTURE_H

#include "base/base.h"
#include <braid/context.h>
#include <stdatomic.h>

/* The context node. Immutable once made, except refs. */
struct braid_ctx {
    _Atomic uint32_t refs;
    uint32_t depth;              /* values from here to the root, this one included */
    braid_ctx *parent;           /* a reference, or NULL */
    const braid_ctx_key *key;
    braid_ctx_value v;           /* STR: points into str[] */
    const char *file;
    int line;
    char str[];
};

/* The calling thread's current context (borrowed). initial-exec: libbraid
 * is linked at start-up, so the variable sits in static TLS and is one
 * %fs-relative access away. */
extern __thread braid_ctx *braid__ctx_cur __attribute__((tls_model("initial-exec")));

/* The thread's stash: references to one context (the one the innermost
 * scope pushed on this thread) paid for in advance with one atomic add of
 * BRAID__CTX_STASH_BATCH, so that the hops captured and released under
 * that scope touch no atomic. References are interchangeable: one taken
 * from a stash may be given back with braid_ctx_unref on any thread, and a
 * reference released here into the stash may have been taken anywhere.
 * The scope's pop gives back what the stash holds (one atomic subtract), so
 * a stash never keeps a context alive past the scope that made it. */
#define BRAID__CTX_STASH_BATCH 64
extern __thread braid_ctx *braid__ctx_stash __attribute__((tls_model("initial-exec")));
extern __thread uint32_t braid__ctx_stash_n __attribute__((tls_model("initial-exec")));

void braid__ctx_take_slow(braid_ctx *c);

/* A reference to c, which is alive (the caller holds it or it is current). */
static inline void braid__ctx_take(braid_ctx *c) {
    if (BRAID__LIKELY(c == braid__ctx_stash && braid__ctx_stash_n != 0)) braid__ctx_stash_n--;
    else braid__ctx_take_slow(c);
}

static inline braid_ctx *braid__ctx_capture(void) {
    braid_ctx *c = braid__ctx_cur;
    if (BRAID__UNLIKELY(c != NULL)) braid__ctx_take(c);
    return c;
}

static inline braid_ctx *braid__ctx_swap(braid_ctx *c) {
    braid_ctx *p = braid__ctx_cur;
    braid__ctx_cur = c;
    return p;
}

static inline void braid__ctx_release(braid_ctx *c) {
    if (BRAID__UNLIKELY(c != NULL)) {
        if (BRAID__LIKELY(c == braid__ctx_stash)) braid__ctx_stash_n++;
        else braid_ctx_unref(c);
    }
}

#endif
