/* Deferreds: the core — allocation from a per-loop free list, firing, the
 * callback loop, chaining, cancellation, pause, timeouts, and the
 * unconsumed-failure rule.
 *
 * The callback loop (run) is the heart. It never recurses into itself to
 * follow a chain: when a callback returns an unfired Deferred c, the outer
 * Deferred d records c as its result (WAITING) and c records d as its
 * parent. When c's own loop finishes, it moves its result into d and the
 * same loop continues with d. Each Deferred has at most one parent (chaining
 * takes the consumer reference, of which there is one), so no stack is
 * needed at all: a million nested Deferreds unwind in one C frame.
 *
 * References: refs counts the producer reference (flag PRODUCER), the
 * consumer reference and extra ones from braid_deferred_ref, plus one held
 * by each chained Deferred waiting on it (its parent link) and temporary
 * ones inside cancel. A Deferred is freed when refs reaches 0 outside its
 * callback loop; inside, the loop frees it when it finishes. */
#include "deferred/deferred_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(BRAID_ASAN) || defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
/* Free-list entries are poisoned except their flags and link, so a use after
 * release is an ASan report even though the memory is not returned to malloc
 * (the flags stay readable so the entry points' own check can name the call). */
static void poison(braid_deferred *d) {
    size_t fl = offsetof(braid_deferred, flags), pa = offsetof(braid_deferred, parent);
    ASAN_POISON_MEMORY_REGION(d, fl);
    ASAN_POISON_MEMORY_REGION((char *)d + fl + sizeof d->flags, pa - fl - sizeof d->flags);
    ASAN_POISON_MEMORY_REGION((char *)d + pa + sizeof d->parent,
                              sizeof *d - pa - sizeof d->parent);
}
static void unpoison(braid_deferred *d) { ASAN_UNPOISON_MEMORY_REGION(d, sizeof *d); }
#else
static inline void poison(braid_deferred *d) { (void)d; }
static inline void unpoison(braid_deferred *d) { (void)d; }
#endif

/* Free Deferreds kept per loop for reuse; beyond this they go back to the
 * allocator. Release builds reuse the most recently freed first (LIFO: its
 * memory is still in cache). Debug builds keep the list in FIFO order and
 * reuse an entry only when BRAID__DEFERRED_QUARANTINE newer ones stand behind
 * it, so a Deferred used after it was freed still carries BRAID__D_FREED and
 * aborts with a message until that many more have been freed on the loop
 * (docs/deferred.md, "Use after free"). */
#define FREE_LIST_MAX 4096

static const braid_result no_result = { NULL, NULL, NULL, NULL };

/* Store a result as two 16-byte halves. The callback loop copies results
 * with 16-byte loads (the by-value ABI), and a 16-byte load that spans two
 * separate 8-byte stores cannot be store-forwarded: a stall of a dozen
 * cycles that was a fifth of create+callback+fire. */
static inline void store_result(braid_result *dst, braid_result r) {
#if defined(__GNUC__) && defined(__SSE2__)
    typedef uintptr_t v2u __attribute__((vector_size(16)));
    v2u lo = { (uintptr_t)r.value, (uintptr_t)r.dtor };
    v2u hi = { (uintptr_t)r.failure, (uintptr_t)r.chain };
    memcpy(&dst->value, &lo, sizeof lo);
    memcpy(&dst->failure, &hi, sizeof hi);
#else
    *dst = r;
#endif
}

static void run(braid_deferred *d);
static void dfree(braid_deferred *d);

/* ---- the per-loop pool ----------------------------------------------------------- */
#ifdef BRAID_DEBUG
/* One live Deferred for the leak gate: where it was made, its state. */
static void report_one(braid_loop *loop, const braid_deferred *d) {
    char where[512];
    if (d->origin_file)
        snprintf(where, sizeof where, "%s:%d in %s()", d->origin_file, d->origin_line,
                 d->origin_func ? d->origin_func : "?");
    else
        snprintf(where, sizeof where, "an unrecorded place (code built without BRAID_DEBUG)");
    const char *state = !(d->flags & BRAID__D_CALLED) ? "pending (never fired)"
                      : d->flags & BRAID__D_WAITING   ? "waiting on a chained Deferred"
                      : d->paused                     ? "paused"
                      : d->result.failure             ? "fired with a failure"
                                                      : "fired";
    uint32_t left = d->ncb - d->pos;
    braid__log(loop, BRAID_LOG_ERROR, "deferred created at %s, %s, %u callback%s to run, %u reference%s",
               where, state, left, left == 1 ? "" : "s", d->refs, d->refs == 1 ? "" : "s");
}
#endif

static bool dpool_report(braid_loop *loop, void *ptr) {
    braid__dpool *p = ptr;
    if (!p->live) return false;
    braid__log(loop, BRAID_LOG_ERROR,
               "loop not destroyed: %zu Deferred(s) still alive (%zu never fired): a producer "
               "did not fire, or a consumer did not release", p->live, p->unfired);
#ifdef BRAID_DEBUG
    /* Oldest first: the list is newest first, so walk from its tail. */
    enum { MAX_NAMED = 32 };
    const braid_deferred *tail = p->live_head;
    while (tail && tail->live_next) tail = tail->live_next;
    size_t named = 0;
    for (const braid_deferred *d = tail; d && named < MAX_NAMED; d = d->live_prev, named++)
        report_one(loop, d);
    if (p->live > named)
        braid__log(loop, BRAID_LOG_ERROR, "... and %zu more live Deferred(s)", p->live - named);
#endif
    return true;
}

#ifdef BRAID_DEBUG
/* Blocks a free-list entry holds: itself and its spill array. */
static inline long parked_blocks(const braid_deferred *d) { return d->spill ? 2 : 1; }
#endif

static void dpool_destroy(braid_loop *loop, void *ptr) {
    braid__dpool *p = ptr;
    BRAID__UNUSED(loop);
    braid_deferred *d = p->free;
    while (d) {
        braid_deferred *next = d->parent;
        unpoison(d);
#ifdef BRAID_DEBUG
        braid__alloc_park(-parked_blocks(d));
#endif
        braid_free(d->spill);
        braid_free(d);
        d = next;
    }
    braid_free(p);
}

static braid_loop_key dpool_key = BRAID_LOOP_KEY_INIT("deferred", dpool_destroy, dpool_report);

static braid__dpool *dpool_get(braid_loop *loop) {
    braid__dpool *p = braid__loop_data(loop, &dpool_key);
    if (BRAID__LIKELY(p != NULL)) return p;
    p = braid_calloc(1, sizeof *p);
    if (!p) return NULL;
    if (braid_loop_set_data(loop, &dpool_key, p) < 0) {
        braid_free(p);
        return NULL;
    }
    return p;
}

braid__dpool *braid__deferred_pool(braid_loop *loop) { return braid__loop_data(loop, &dpool_key); }

static inline braid__dpool *dpool_of(braid_deferred *d) {
    return braid__loop_data(d->loop, &dpool_key);
}

static braid_deferred *dalloc(braid_loop *loop, braid__dpool **pp) {
    braid__dpool *p = dpool_get(loop);
    if (BRAID__UNLIKELY(!p)) return NULL;
    braid_deferred *d = p->free;
#ifdef BRAID_DEBUG
    if (p->nfree <= BRAID__DEFERRED_QUARANTINE) d = NULL;   /* all still in quarantine */
#endif
    if (BRAID__LIKELY(d != NULL)) {
        unpoison(d);
        p->free = d->parent;
#ifdef BRAID_DEBUG
        if (!p->free) p->free_tail = NULL;
        braid__alloc_park(-parked_blocks(d));
#endif
        p->nfree--;
        if (BRAID__UNLIKELY(d->spill_cap > BRAID__DEFERRED_KEEP_SPILL))
            p->big_spill_slots -= d->spill_cap;
    } else {
        d = braid_malloc(sizeof *d);
        if (!d) return NULL;
        d->spill = NULL;
        d->spill_cap = 0;
    }
    p->live++;
#ifdef BRAID_DEBUG
    d->origin_file = d->origin_func = NULL;
    d->origin_line = 0;
    d->live_prev = NULL;
    d->live_next = p->live_head;
    if (p->live_head) p->live_head->live_prev = d;
    p->live_head = d;
#endif
    d->loop = loop;
    d->ncb = d->pos = d->paused = 0;
    d->result = no_result;
    d->parent = NULL;
    d->canceller = NULL;
    d->canceller_arg = NULL;
    *pp = p;
    return d;
}

static _Noreturn void freed_use(const braid_deferred *d, const char *what) {
    braid__log(NULL, BRAID_LOG_ERROR, "%s on a Deferred (%p) that was already freed", what,
               (const void *)d);
    abort();
}
/* Every entry taking a Deferred: a freed one aborts with a message (see
 * "use after free" in docs/deferred.md for how long that holds), and debug
 * builds check that the caller is on the loop's thread. */
#ifdef BRAID_DEBUG
#define CHECK_THREAD(loop, what)                                                       \
    do {                                                                               \
        if (BRAID__UNLIKELY(!braid__loop_on_owner_thread(loop)))                       \
            braid__loop_wrong_thread((loop), (what));                                  \
    } while (0)
#else
#define CHECK_THREAD(loop, what) ((void)0)
#endif
#define CHECK_LIVE(d, what)                                                            \
    do {                                                                               \
        if (BRAID__UNLIKELY((d)->flags & BRAID__D_FREED)) freed_use((d), (what));      \
        CHECK_THREAD((d)->loop, (what));                                               \
    } while (0)

static inline void unref(braid_deferred *d) {
    BRAID__ASSERT(d->refs > 0);
    if (--d->refs == 0 && !(d->flags & BRAID__D_RUNNING)) dfree(d);
}

/* ---- the unconsumed-failure rule ------------------------------------------------- */
static void report_unhandled(braid_loop *loop, braid_failure *f) {
    if (!braid__loop_unhandled(loop, f)) {
        char buf[1024];
        braid_failure_format(f, buf, sizeof buf);
        braid__log(loop, BRAID_LOG_ERROR, "unhandled failure in a Deferred: %s", buf);
#ifdef BRAID_DEBUG
        /* Debug builds make an ignored failure impossible to miss. */
        abort();
#endif
    }
    braid_failure_free(f);
}

/* 168 bytes on LP64: context markers live in the slots, not beside them. */
#ifndef BRAID_DEBUG   /* debug builds add the origin and the live list */
_Static_assert(sizeof(void *) != 8 || sizeof(struct braid_deferred) == 168,
               "a Deferred stays at 168 bytes");
#endif

/* ---- callback slots ---------------------------------------------------------------- */
static inline braid__cbslot *slot_at(braid_deferred *d, uint32_t i) {
    return i < BRAID__DEFERRED_INLINE ? &d->slot[i] : &d->spill[i - BRAID__DEFERRED_INLINE];
}

static inline uint32_t slots_needed(braid_deferred *d);

static int reserve_slots(braid_deferred *d, uint32_t extra);
int braid__deferred_reserve(braid_deferred *d, uint32_t extra) {
    /* Room for a context marker too, when the next add needs one. */
    return reserve_slots(d, extra + slots_needed(d) - 1);
}

static int reserve_slots(braid_deferred *d, uint32_t extra) {
    uint64_t need = (uint64_t)d->ncb + extra;
    if (need <= BRAID__DEFERRED_INLINE) return 0;
    need -= BRAID__DEFERRED_INLINE;
    if (need <= d->spill_cap) return 0;
    if (need > UINT32_MAX / 2) return BRAID_ENOMEM;
    uint64_t cap = d->spill_cap ? d->spill_cap : 4;
    while (cap < need) cap *= 2;
    braid__cbslot *s = braid_realloc(d->spill, cap * sizeof *s);
    if (!s) return BRAID_ENOMEM;
    d->spill = s;
    d->spill_cap = (uint32_t)cap;
    return 0;
}

/* The marker's callback: never called (run() recognises it). */
static braid_result braid__ctx_mark(braid_result r, void *arg) {
    BRAID__UNUSED(arg);
    return r;
}

/* The context of the callbacks at slot i and after it, up to the next
 * marker: the last marker before i, or none. */
static braid_ctx *marker_before(braid_deferred *d, uint32_t i) {
    if (!(d->flags & BRAID__D_CTX)) return NULL;
    while (i-- > 0) {
        braid__cbslot *s = slot_at(d, i);
        if (s->cb == braid__ctx_mark) return s->arg;
    }
    return NULL;
}

/* Slots a callback added now takes: 2 when the current context is not the
 * one of the last callbacks (a marker goes first). */
static inline uint32_t slots_needed(braid_deferred *d) {
    braid_ctx *cur = braid__ctx_cur;
    if (BRAID__LIKELY(cur == NULL && !(d->flags & BRAID__D_CTX))) return 1;
    return cur == marker_before(d, d->ncb) ? 1 : 2;
}

/* Give back the references of the markers still in force: the one before
 * pos and those after it. */
static void drop_markers(braid_deferred *d) {
    if (!(d->flags & BRAID__D_CTX)) return;
    braid__ctx_release(marker_before(d, d->pos));
    for (uint32_t i = d->pos; i < d->ncb; i++) {
        braid__cbslot *s = slot_at(d, i);
        if (s->cb == braid__ctx_mark) braid__ctx_release(s->arg);
    }
    d->flags &= ~BRAID__D_CTX;
}

static inline braid__cbslot *next_slot(braid_deferred *d) {
    uint32_t i = d->ncb;
    BRAID__ASSERT(d->pos <= d->ncb && d->ncb < BRAID__DEFERRED_INLINE + d->spill_cap + 1);
    braid__cbslot *s = slot_at(d, i);
    d->ncb = i + 1;
    return s;
}

static inline int push_slot(braid_deferred *d, braid_deferred_cb cb, braid_deferred_cb eb, void *arg) {
    uint32_t need = slots_needed(d);
    uint32_t i = d->ncb;
    BRAID__ASSERT(d->pos <= d->ncb && d->ncb <= BRAID__DEFERRED_INLINE + d->spill_cap);
    if (BRAID__UNLIKELY(i + need > BRAID__DEFERRED_INLINE + d->spill_cap) &&
        reserve_slots(d, need) < 0)
        return BRAID_ENOMEM;
    braid__cbslot *s;
    if (BRAID__UNLIKELY(need == 2)) {
        /* The callbacks from here on run in the current context. */
        s = next_slot(d);
        s->cb = braid__ctx_mark;
        s->eb = NULL;
        s->arg = braid__ctx_capture();
        d->flags |= BRAID__D_CTX;
    }
    s = next_slot(d);
    s->cb = cb;
    s->eb = eb;
    s->arg = arg;
    return 0;
}

/* ---- timeouts (Twisted's addTimeout) --------------------------------------------- */
typedef struct dtimeout {
    braid_timer timer;
    braid_deferred *d;
    bool fired;
} dtimeout;

static void timeout_fire(braid_timer *t, void *arg) {
    dtimeout *to = arg;
    BRAID__UNUSED(t);
    to->fired = true;
    /* May run d's chain down to timeout_done, which frees `to`: touch
     * nothing after this. */
    braid_deferred_cancel(to->d);
}

/* Added as both callback and errback at add_timeout time: the chain got
 * here, so the timeout is over; a cancellation it caused becomes a
 * timeout failure. */
static braid_result timeout_done(braid_result r, void *arg) {
    dtimeout *to = arg;
    bool fired = to->fired;
    braid_timer_stop(&to->timer);
    braid_free(to);
    if (fired && r.failure && r.failure->code == BRAID_ECANCELED)
        return braid_result_err(braid_failure_wrap(r.failure, BRAID_ETIMEDOUT, "Deferred timed out"));
    return r;
}

int braid_deferred_add_timeout(braid_deferred *d, uint64_t ns) {
    CHECK_LIVE(d, "braid_deferred_add_timeout");
    if (braid__deferred_has_result(d)) return 0;   /* nothing left to time out */
    dtimeout *to = braid_malloc(sizeof *to);
    if (!to) return BRAID_ENOMEM;
    int rc = braid__deferred_reserve(d, 1);
    if (rc < 0) { braid_free(to); return rc; }
    braid_timer_init(d->loop, &to->timer, timeout_fire, to);
    to->d = d;
    to->fired = false;
    rc = braid_timer_start(&to->timer, ns);
    if (rc < 0) { braid_free(to); return rc; }
    push_slot(d, timeout_done, timeout_done, to);   /* cannot fail: reserved */
    return 0;
}

/* A Deferred freed with callbacks it never ran (it was paused, or its
 * chain never finished, and everyone released it). Their arguments are the
 * callers' business, except braid's own timeouts, which are cleaned here. */
static void abandon_callbacks(braid_deferred *d) {
    uint32_t n = 0;
    drop_markers(d);
    for (uint32_t i = d->pos; i < d->ncb; i++) {
        braid__cbslot *s = slot_at(d, i);
        if (s->cb != braid__ctx_mark) n++;
        if (s->cb == timeout_done) {
            dtimeout *to = s->arg;
            braid_timer_stop(&to->timer);
            braid_free(to);
        }
    }
    d->pos = d->ncb = 0;
    braid__log(d->loop, BRAID_LOG_WARN,
               "Deferred freed with %u callback(s) never run (released while paused?)", n);
}

/* ---- freeing --------------------------------------------------------------------- */
/* Put a dead Deferred on its loop's free list, or back to the allocator.
 * Debug builds count the list's blocks as parked (braid__alloc_park), so the
 * quarantine filling up is not mistaken for a leak by allocation walks. */
static inline void free_list_put(braid__dpool *p, braid_deferred *d) {
#ifdef BRAID_DEBUG
    if (p->nfree >= BRAID__DEFERRED_QUARANTINE + FREE_LIST_MAX) {
        /* Full: the oldest entry, with the whole quarantine behind it, goes
         * back to the allocator. */
        braid_deferred *old = p->free;
        unpoison(old);
        p->free = old->parent;
        p->nfree--;
        braid__alloc_park(-parked_blocks(old));
        if (old->spill_cap > BRAID__DEFERRED_KEEP_SPILL) p->big_spill_slots -= old->spill_cap;
        braid_free(old->spill);
        braid_free(old);
    }
#else
    if (BRAID__UNLIKELY(p->nfree >= FREE_LIST_MAX)) {
        braid_free(d->spill);
        braid_free(d);
        return;
    }
#endif
    if (BRAID__UNLIKELY(d->spill_cap > BRAID__DEFERRED_KEEP_SPILL)) {
        /* Large spill arrays are kept too, within a per-loop budget, so
         * a loop that keeps building long chains stops allocating. */
        if (p->big_spill_slots + d->spill_cap <= BRAID__DEFERRED_SPILL_BUDGET) {
            p->big_spill_slots += d->spill_cap;
        } else {
            braid_free(d->spill);
            d->spill = NULL;
            d->spill_cap = 0;
        }
    }
    d->flags = BRAID__D_FREED;
#ifdef BRAID_DEBUG
    d->parent = NULL;                 /* FIFO: append */
    if (p->free_tail) p->free_tail->parent = d;
    else p->free = d;
    p->free_tail = d;
    braid__alloc_park(parked_blocks(d));
#else
    d->parent = p->free;              /* LIFO: push */
    p->free = d;
#endif
    p->nfree++;
    poison(d);
}

static void dfree(braid_deferred *d) {
    braid_loop *loop = d->loop;
    BRAID__ASSERT(d->refs == 0 && !(d->flags & (BRAID__D_FREED | BRAID__D_RUNNING)));
    if (BRAID__UNLIKELY(d->pos != d->ncb)) abandon_callbacks(d);
    else if (BRAID__UNLIKELY(d->flags & BRAID__D_CTX)) drop_markers(d);
    braid_result r = d->result;
    d->result = no_result;
    braid__dpool *p = braid__loop_data(loop, &dpool_key);
    p->live--;
#ifdef BRAID_DEBUG
    if (d->live_prev) d->live_prev->live_next = d->live_next;
    else p->live_head = d->live_next;
    if (d->live_next) d->live_next->live_prev = d->live_prev;
#endif
    if (BRAID__UNLIKELY(!(d->flags & BRAID__D_CALLED))) p->unfired--;
    free_list_put(p, d);
    /* Last: a dtor may call back into braid. Field by field, not through
     * braid_result_drop: copying the 32-byte struct again here cost a
     * store-forwarding stall measured at a quarter of the ready path. */
    if (BRAID__UNLIKELY(r.failure != NULL)) report_unhandled(loop, r.failure);
    if (r.value && r.dtor) r.dtor(r.value);
    if (BRAID__UNLIKELY(r.chain != NULL)) braid_deferred_unref(r.chain);
}

/* ---- the callback loop --------------------------------------------------------- */

/* d's result is braid_result_chain(c). Take c's result now if it has one (true);
 * else make d wait for c (false). */
static bool absorb_chain(braid_deferred *d, braid_deferred *c) {
    CHECK_LIVE(c, "braid_result_chain");
    if (BRAID__UNLIKELY(d->result.value || d->result.failure)) {
        /* A result is a value, a failure or a chain; the chain wins and
         * what came with it is dropped rather than leaked. */
        braid_result extra = d->result;
        extra.chain = NULL;
        braid_result_drop(extra);
    }
    d->result.value = NULL;
    d->result.dtor = NULL;
    d->result.failure = NULL;
    if (BRAID__UNLIKELY(c == d)) {
        /* braid_result_chain(d) handed over d's own consumer reference. */
        d->refs--;
        braid__log(d->loop, BRAID_LOG_ERROR, "a Deferred's callback returned that same Deferred");
        d->result = braid_result_errf(BRAID_EINVAL, "callback returned its own Deferred");
        return true;
    }
    if (braid__deferred_has_result(c)) {
        d->result = c->result;
        c->result = no_result;
        unref(c);
        return true;
    }
    if (BRAID__UNLIKELY(c->parent != NULL)) {
        /* Only the holder of the consumer reference may chain c, once. The
         * reference we were given is someone else's: leaking it is safer
         * than dropping it. */
        braid__log(d->loop, BRAID_LOG_ERROR, "a Deferred was chained twice");
        d->result = braid_result_errf(BRAID_EINVAL, "Deferred already chained to another");
        return true;
    }
    c->parent = d;
    d->refs++;
    d->flags |= BRAID__D_WAITING;
    return false;
}

/* Run d's pending callbacks; when d is done and something waits on it, move
 * the result there and go on with that one (iteration, not recursion). */
static void run(braid_deferred *d) {
    /* Each callback runs in the context it was added in (its marker's, or
     * none); the caller's is current again when run returns. A context
     * already current is not set again. */
    braid_ctx *outer = braid__ctx_cur;
    for (;;) {
        d->flags |= BRAID__D_RUNNING;
        braid_ctx *cx = marker_before(d, d->pos);
        for (;;) {
            if (BRAID__UNLIKELY(d->result.chain != NULL)) {
                if (!absorb_chain(d, d->result.chain)) break;
                continue;
            }
            if (d->pos == d->ncb || d->paused) break;
            BRAID__ASSERT(d->pos < d->ncb && d->ncb <= BRAID__DEFERRED_INLINE + d->spill_cap);
            braid__cbslot *s = slot_at(d, d->pos++);
            if (BRAID__UNLIKELY(s->cb == braid__ctx_mark)) {
                braid__ctx_release(cx);     /* the previous marker's: done with */
                cx = s->arg;
                continue;
            }
            braid_deferred_cb fn = d->result.failure ? s->eb : s->cb;
            if (!fn) continue;
            void *arg = s->arg;   /* s may move if fn adds callbacks */
            braid_result r = d->result;
            d->result = no_result;
            if (BRAID__UNLIKELY(braid__ctx_cur != cx)) braid__ctx_swap(cx);
            d->result = fn(r, arg);
        }
        if (BRAID__UNLIKELY(braid__ctx_cur != outer)) braid__ctx_swap(outer);
        d->flags &= ~BRAID__D_RUNNING;
        /* Fired once, and a result is one thing: a value, a failure or the
         * Deferred it waits on (and then it is marked waiting). */
        BRAID__ASSERT(d->flags & BRAID__D_CALLED);
        BRAID__ASSERT(!(d->flags & BRAID__D_WAITING) ||
                      (d->result.chain && !d->result.value && !d->result.failure));
        if ((d->flags & BRAID__D_WAITING) || d->paused) {
            if (d->refs == 0) dfree(d);
            return;
        }
        if (BRAID__UNLIKELY(d->flags & BRAID__D_CTX)) drop_markers(d);
        d->pos = d->ncb = 0;
        braid_deferred *p = d->parent;
        if (BRAID__LIKELY(p == NULL)) {
            if (d->refs == 0) dfree(d);
            return;
        }
        d->parent = NULL;
        BRAID__ASSERT((p->flags & BRAID__D_WAITING) && p->result.chain == d && p->refs >= 1);
        p->result = d->result;
        d->result = no_result;
        p->flags &= ~BRAID__D_WAITING;
        p->refs--;        /* our link's reference; p's loop frees it if that was the last */
        unref(d);         /* the consumer reference p held */
        d = p;
    }
}

/* ---- creating -------------------------------------------------------------------- */
braid_deferred *braid_deferred_origin_at(braid_deferred *d, const char *file, int line, const char *func) {
#ifdef BRAID_DEBUG
    if (d) {
        d->origin_file = file;
        d->origin_line = line;
        d->origin_func = func;
    }
#else
    BRAID__UNUSED(file);
    BRAID__UNUSED(line);
    BRAID__UNUSED(func);
#endif
    return d;
}

braid_deferred *braid_deferred_new(braid_loop *loop) {
    CHECK_THREAD(loop, "braid_deferred_new");
    braid__dpool *p;
    braid_deferred *d = dalloc(loop, &p);
    if (BRAID__UNLIKELY(!d)) return NULL;
    d->refs = 2;
    d->flags = BRAID__D_PRODUCER;
    p->unfired++;
    return d;
}

braid_deferred *braid_deferred_new_cancellable(braid_loop *loop, braid_deferred_cancel_fn c, void *arg) {
    CHECK_THREAD(loop, "braid_deferred_new_cancellable");
    braid_deferred *d = braid_deferred_new(loop);
    if (d) {
        d->canceller = c;
        d->canceller_arg = arg;
    }
    return d;
}

static braid_deferred *fired(braid_loop *loop, braid_result r) {
    braid__dpool *p;
    braid_deferred *d = dalloc(loop, &p);
    if (BRAID__UNLIKELY(!d)) {
        braid_result_drop(r);
        return NULL;
    }
    d->refs = 1;
    d->flags = BRAID__D_CALLED;
    store_result(&d->result, r);
    return d;
}

braid_deferred *braid_deferred_succeed(braid_loop *loop, void *value, void (*dtor)(void *)) {
    CHECK_THREAD(loop, "braid_deferred_succeed");
    return fired(loop, braid_result_ok_owned(value, dtor));
}

braid_deferred *braid_deferred_fail(braid_loop *loop, braid_failure *f) {
    CHECK_THREAD(loop, "braid_deferred_fail");
    if (BRAID__UNLIKELY(!f)) f = braid_failure_new(BRAID_EINVAL, "braid_deferred_fail without a failure");
    return fired(loop, braid_result_err(f));
}

/* ---- firing --------------------------------------------------------------------- */
static inline int fire(braid_deferred *d, braid_result r, bool drop_producer, const char *what) {
    CHECK_LIVE(d, what);
    if (BRAID__UNLIKELY(d->flags & BRAID__D_CALLED)) {
        if ((d->flags & (BRAID__D_CANCELLED | BRAID__D_PRODUCER)) ==
            (BRAID__D_CANCELLED | BRAID__D_PRODUCER)) {
            /* The producer of a Deferred cancelled without a canceller
             * fires late: benign, as in Twisted. Its reference goes now. */
            d->flags &= ~BRAID__D_PRODUCER;
            braid_result_drop(r);
            unref(d);
            return 0;
        }
        braid__log(d->loop, BRAID_LOG_ERROR,
                   "a Deferred (%p) was fired twice: the second result is dropped",
                   (void *)d);
        braid_result_drop(r);
        return BRAID_EALREADY_CALLED;
    }
    d->flags |= BRAID__D_CALLED;
    BRAID__ASSERT(dpool_of(d)->unfired > 0);
    dpool_of(d)->unfired--;
    store_result(&d->result, r);
    if (drop_producer && (d->flags & BRAID__D_PRODUCER)) {
        d->flags &= ~BRAID__D_PRODUCER;
        d->refs--;    /* run() frees d at the end if this was the last */
    }
    if (BRAID__LIKELY(!(d->flags & BRAID__D_RUNNING))) run(d);
    return 0;
}

int braid_deferred_fire(braid_deferred *d, braid_result r) {
    return fire(d, r, true, "braid_deferred_fire");
}

int braid_deferred_callback(braid_deferred *d, void *value, void (*dtor)(void *)) {
    return fire(d, braid_result_ok_owned(value, dtor), true, "braid_deferred_callback");
}

int braid_deferred_errback(braid_deferred *d, braid_failure *f) {
    /* A NULL failure would silently switch to the callback track. */
    if (BRAID__UNLIKELY(!f)) f = braid_failure_new(BRAID_EINVAL, "errback without a failure");
    return fire(d, braid_result_err(f), true, "braid_deferred_errback");
}

/* ---- consuming ----------------------------------------------------------------- */
int braid_deferred_add(braid_deferred *d, braid_deferred_cb cb, braid_deferred_cb eb,
                                 void *arg) {
    CHECK_LIVE(d, "braid_deferred_add");
    if (braid__deferred_has_result(d)) {
        /* Already fired and idle: run it now, storing nothing. */
        braid_deferred_cb fn = d->result.failure ? eb : cb;
        if (!fn) return 0;
        braid_result r = d->result;
        d->result = no_result;
        d->flags |= BRAID__D_RUNNING;
        d->result = fn(r, arg);
        d->flags &= ~BRAID__D_RUNNING;
        /* fn returned a chain, added callbacks, paused or released d. */
        if (BRAID__UNLIKELY(d->result.chain || d->ncb || d->refs == 0 || d->paused)) run(d);
        return 0;
    }
    return push_slot(d, cb, eb, arg);
}

int braid_deferred_then(braid_deferred *d, braid_deferred_cb cb, braid_deferred_cb eb, void *arg) {
    if (!d) return BRAID_ENOMEM;
    CHECK_LIVE(d, "braid_deferred_then");
    int rc = braid_deferred_add(d, cb, eb, arg);
    unref(d);
    return rc;
}

int braid_deferred_add_callback(braid_deferred *d, braid_deferred_cb cb, void *arg) {
    return braid_deferred_add(d, cb, NULL, arg);
}
int braid_deferred_add_errback(braid_deferred *d, braid_deferred_cb eb, void *arg) {
    return braid_deferred_add(d, NULL, eb, arg);
}
int braid_deferred_add_both(braid_deferred *d, braid_deferred_cb fn, void *arg) {
    return braid_deferred_add(d, fn, fn, arg);
}

void braid_deferred_unref(braid_deferred *d) {
    if (!d) return;
    CHECK_LIVE(d, "braid_deferred_unref");
    unref(d);
}

braid_deferred *braid_deferred_ref(braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_ref");
    d->refs++;
    return d;
}

/* ---- state -------------------------------------------------------------------------- */
bool braid_deferred_is_called(const braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_is_called");
    return d->flags & BRAID__D_CALLED;
}
bool braid_deferred_has_result(const braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_has_result");
    return braid__deferred_has_result(d);
}
bool braid_deferred_is_failure(const braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_is_failure");
    return braid__deferred_has_result(d) && d->result.failure != NULL;
}
braid_loop *braid_deferred_loop(const braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_loop");
    return d->loop;
}

int braid_deferred_take(braid_deferred *d, braid_result *out) {
    CHECK_LIVE(d, "braid_deferred_take");
    if (!braid__deferred_has_result(d)) return BRAID_EAGAIN;
    *out = d->result;
    d->result = no_result;
    return 0;
}

size_t braid_deferred_live(braid_loop *loop) {
    CHECK_THREAD(loop, "braid_deferred_live");
    braid__dpool *p = braid__loop_data(loop, &dpool_key);
    return p ? p->live : 0;
}

/* ---- control -------------------------------------------------------------------- */
void braid_deferred_pause(braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_pause");
    d->paused++;
}

void braid_deferred_unpause(braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_unpause");
    if (d->paused == 0) {
        braid__log(d->loop, BRAID_LOG_ERROR, "braid_deferred_unpause without a pause");
        return;
    }
    if (--d->paused == 0 && (d->flags & BRAID__D_CALLED) &&
        !(d->flags & (BRAID__D_RUNNING | BRAID__D_WAITING)))
        run(d);
}

void braid_deferred_cancel(braid_deferred *d) {
    CHECK_LIVE(d, "braid_deferred_cancel");
    /* Walk down to the unfired Deferred at the bottom of the chain: the
     * cancellation of the leaf propagates back up through run(). */
    while (d->flags & BRAID__D_CALLED) {
        if (!(d->flags & BRAID__D_WAITING)) return;
        d = d->result.chain;
    }
    d->refs++;    /* d must outlive its canceller and its errback */
    d->flags |= BRAID__D_CANCELLED;
    braid_deferred_cancel_fn c = d->canceller;
    void *carg = d->canceller_arg;
    d->canceller = NULL;
    /* With a canceller, the producer gave up its reference by accepting
     * cancellation: whoever fires now (the canceller, braid after it, or a
     * cancel the canceller makes of its own Deferred) drops it. Without
     * one, the producer keeps it and may fire late (ignored). */
    bool drop_producer = c != NULL || (d->flags & BRAID__D_CANCELLING);
    if (c) {
        d->flags |= BRAID__D_CANCELLING;
        c(d, carg);
        d->flags &= ~BRAID__D_CANCELLING;
    }
    if (!(d->flags & BRAID__D_CALLED))
        fire(d, braid_result_errf(BRAID_ECANCELED, "Deferred cancelled"), drop_producer,
             "braid_deferred_cancel");
    unref(d);
}
