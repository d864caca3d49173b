/* Timers: a 4-ary min-heap keyed on (deadline, start sequence).
 *
 * A 4-ary heap is shallower than a binary one (log4 n levels) and its four
 * children share a cache line of pointers, which is why libuv-style binary
 * heaps lose to it at a million timers. Each timer stores its heap index, so
 * stop and reset are O(log n) with no search. */
#include "loop/loop_internal.h"
#include <stdlib.h>
#include <string.h>

#define NO_INDEX UINT32_MAX

static inline bool before(const braid_timer *a, const braid_timer *b) {
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

/* Debug builds: the heap order and the index back-pointers around slot i
 * (its parent and its children), after every change that moved a timer
 * there; and, while the heap is small, the whole heap after every push, pop
 * and removal. Release builds check nothing. */
#ifdef BRAID_DEBUG
static void heap_check_at(braid_timer *const *h, size_t n, size_t i) {
    BRAID__ASSERT(i < n && h[i]->heap_index == i && (h[i]->flags & BRAID__TIMER_ACTIVE));
    BRAID__ASSERT(i == 0 || !before(h[i], h[(i - 1) / 4]));
    for (size_t c = 4 * i + 1; c < n && c <= 4 * i + 4; c++)
        BRAID__ASSERT(h[c]->heap_index == c && !before(h[c], h[i]));
}
static void heap_check(const braid_loop *loop) {
    BRAID__ASSERT(loop->heap_len <= loop->heap_cap);
    if (loop->heap_len > 64) return;
    for (size_t i = 0; i < loop->heap_len; i++) heap_check_at(loop->heap, loop->heap_len, i);
}
#else
static inline void heap_check_at(braid_timer *const *h, size_t n, size_t i) { (void)h, (void)n, (void)i; }
static inline void heap_check(const braid_loop *loop) { (void)loop; }
#endif

static void sift_up(braid_timer **h, size_t i) {
    braid_timer *t = h[i];
    while (i > 0) {
        size_t p = (i - 1) / 4;
        if (!before(t, h[p])) break;
        h[i] = h[p];
        h[i]->heap_index = (uint32_t)i;
        i = p;
    }
    h[i] = t;
    t->heap_index = (uint32_t)i;
}

static void sift_down(braid_timer **h, size_t n, size_t i) {
    braid_timer *t = h[i];
    for (;;) {
        size_t c = 4 * i + 1;
        if (c >= n) break;
        size_t best = c, end = c + 4 < n ? c + 4 : n;
        for (size_t k = c + 1; k < end; k++)
            if (before(h[k], h[best])) best = k;
        if (!before(h[best], t)) break;
        h[i] = h[best];
        h[i]->heap_index = (uint32_t)i;
        i = best;
    }
    h[i] = t;
    t->heap_index = (uint32_t)i;
}

static void heap_remove(braid_loop *loop, braid_timer *t) {
    size_t i = t->heap_index;
    braid_timer **h = loop->heap;
    BRAID__ASSERT(i < loop->heap_len && h[i] == t);
    size_t last = --loop->heap_len;
    t->heap_index = NO_INDEX;
    if (i == last) {
        heap_check(loop);
        return;
    }
    h[i] = h[last];
    h[i]->heap_index = (uint32_t)i;
    braid_timer *moved = h[i];
    if (i > 0 && before(h[i], h[(i - 1) / 4])) sift_up(h, i);
    else sift_down(h, loop->heap_len, i);
    heap_check_at(h, loop->heap_len, moved->heap_index);
    heap_check(loop);
}

static bool timer_counts(const braid_timer *t) {
    return (t->flags & BRAID__TIMER_ACTIVE) && !(t->flags & BRAID__TIMER_UNREF);
}

void braid_timer_init(braid_loop *loop, braid_timer *t, braid_timer_cb cb, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    memset(t, 0, sizeof *t);
    t->loop = loop;
    t->cb = cb;
    t->arg = arg;
    t->heap_index = NO_INDEX;
}

int braid_timer_start_at(braid_timer *t, uint64_t deadline) {
    braid_loop *loop = t->loop;
    BRAID__LOOP_AFFINE(loop);
    if (!t->cb) return BRAID_EINVAL;
    if (t->flags & BRAID__TIMER_ACTIVE) {
        t->deadline = deadline;
        t->seq = loop->timer_seq++;
        size_t i = t->heap_index;
        BRAID__ASSERT(i < loop->heap_len && loop->heap[i] == t);
        if (i > 0 && before(t, loop->heap[(i - 1) / 4])) sift_up(loop->heap, i);
        else sift_down(loop->heap, loop->heap_len, i);
        heap_check_at(loop->heap, loop->heap_len, t->heap_index);
        heap_check(loop);
        return 0;
    }
    BRAID__ASSERT(t->heap_index == NO_INDEX);
    if (loop->heap_len == loop->heap_cap) {
        size_t n = loop->heap_cap ? loop->heap_cap * 2 : 64;
        if (n > NO_INDEX) return BRAID_ENOMEM;
        braid_timer **h = braid_realloc(loop->heap, n * sizeof *h);
        if (!h) return BRAID_ENOMEM;
        loop->heap = h;
        loop->heap_cap = n;
    }
    t->deadline = deadline;
    t->seq = loop->timer_seq++;
    t->flags |= BRAID__TIMER_ACTIVE;
    if (timer_counts(t)) loop->timers_alive++;
    loop->heap[loop->heap_len] = t;
    sift_up(loop->heap, loop->heap_len++);
    heap_check_at(loop->heap, loop->heap_len, t->heap_index);
    heap_check(loop);
    return 0;
}

int braid_timer_start(braid_timer *t, uint64_t delay_ns) {
    BRAID__LOOP_AFFINE(t->loop);
    /* A fresh read, not the cached iteration time: the deadline is never
     * earlier than "delay after the moment of the call". */
    uint64_t now = t->loop->clock->now(t->loop->clock);
    uint64_t d = delay_ns > UINT64_MAX - now ? UINT64_MAX - 1 : now + delay_ns;
    return braid_timer_start_at(t, d);
}

void braid_timer_stop(braid_timer *t) {
    if (!(t->flags & BRAID__TIMER_ACTIVE)) return;
    BRAID__LOOP_AFFINE(t->loop);
    BRAID__ASSERT(!timer_counts(t) || t->loop->timers_alive > 0);
    if (timer_counts(t)) t->loop->timers_alive--;
    heap_remove(t->loop, t);
    t->flags &= ~BRAID__TIMER_ACTIVE;
}

bool braid_timer_is_active(const braid_timer *t) { return t->flags & BRAID__TIMER_ACTIVE; }
uint64_t braid_timer_deadline(const braid_timer *t) { return t->deadline; }

void braid_timer_unref(braid_timer *t) {
    if (t->flags & BRAID__TIMER_UNREF) return;
    BRAID__LOOP_AFFINE(t->loop);
    if (timer_counts(t)) t->loop->timers_alive--;
    t->flags |= BRAID__TIMER_UNREF;
}

size_t braid_loop_timer_count(const braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    return loop->heap_len;
}

uint64_t braid__timers_next_deadline(const braid_loop *loop) {
    return loop->heap_len ? loop->heap[0]->deadline : UINT64_MAX;
}

/* Fire due timers. Timers started during this phase (seq >= phase_seq) wait
 * for the next iteration even if already due, so a zero-delay timer that
 * re-arms itself cannot starve I/O. */
void braid__timers_run(braid_loop *loop, uint64_t now) {
    uint64_t phase_seq = loop->timer_seq;
    while (loop->heap_len) {
        braid_timer *t = loop->heap[0];
        BRAID__ASSERT(t->heap_index == 0);
        if (t->deadline > now || t->seq >= phase_seq) break;
        braid_timer_stop(t);
        if (t->flags & BRAID__TIMER_OWNED) {
            t->flags |= BRAID__TIMER_RUNNING;
            t->cb(t, t->arg);
            t->flags &= ~BRAID__TIMER_RUNNING;
            /* Freed unless re-armed in its callback (or cancelled there). */
            if (!(t->flags & BRAID__TIMER_ACTIVE)) braid_free(t);
        } else {
            t->cb(t, t->arg);
        }
    }
}

void braid__timers_destroy(braid_loop *loop) {
    braid_free(loop->heap);
    loop->heap = NULL;
    loop->heap_len = loop->heap_cap = 0;
}

/* ---- call_later ---------------------------------------------------------------- */
typedef struct owned_timer {
    braid_timer t;            /* first */
    braid_loop_call_cb fn;
    void *arg;
} owned_timer;

static void owned_cb(braid_timer *t, void *arg) {
    (void)arg;
    owned_timer *o = (owned_timer *)t;
    o->fn(o->arg);
}

braid_timer *braid_timer_call_later(braid_loop *loop, uint64_t delay_ns, braid_loop_call_cb fn, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    if (!fn) return NULL;
    owned_timer *o = braid_malloc(sizeof *o);
    if (!o) return NULL;
    braid_timer_init(loop, &o->t, owned_cb, NULL);
    o->t.flags |= BRAID__TIMER_OWNED;
    o->fn = fn;
    o->arg = arg;
    if (braid_timer_start(&o->t, delay_ns) < 0) {
        braid_free(o);
        return NULL;
    }
    return &o->t;
}

void braid_timer_cancel(braid_timer *t) {
    if (t->loop) BRAID__LOOP_AFFINE(t->loop);
    braid_timer_stop(t);
    /* Inside its own callback the firing code frees it once the callback returns. */
    if ((t->flags & BRAID__TIMER_OWNED) && !(t->flags & BRAID__TIMER_RUNNING)) braid_free(t);
}

/* ---- looping calls ----------------------------------------------------------------- */
static void looping_fire(braid_timer *t, void *arg) {
    braid_looping *lc = arg;
    braid_loop *loop = t->loop;
    uint64_t now = loop->now;
    uint64_t k = (now - lc->start) / lc->interval;       /* latest grid tick <= now */
    /* last_tick is UINT64_MAX before a "now" start, so k - last_tick = k + 1. */
    uint64_t ticks = k - lc->last_tick;
    if (ticks == 0) ticks = 1;
    lc->missed += ticks - 1;
    lc->last_tick = k;
    lc->calls++;
    /* Re-arm on the grid before calling, so the callback may stop it. */
    braid_timer_start_at(&lc->timer, lc->start + (k + 1) * lc->interval);
    lc->cb(lc, ticks, lc->arg);
}

int braid_looping_start(braid_loop *loop, braid_looping *lc, uint64_t interval_ns, bool now,
                        braid_looping_cb cb, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    if (!interval_ns || !cb) return BRAID_EINVAL;
    memset(lc, 0, sizeof *lc);
    braid_timer_init(loop, &lc->timer, looping_fire, lc);
    lc->cb = cb;
    lc->arg = arg;
    lc->interval = interval_ns;
    uint64_t t0 = loop->clock->now(loop->clock);
    if (now) {
        lc->start = t0;               /* tick 0 fires at once */
        lc->last_tick = UINT64_MAX;   /* so the first call counts 1 */
        return braid_timer_start_at(&lc->timer, t0);
    }
    lc->start = t0;
    lc->last_tick = 0;                /* first call at tick 1 counts 1 */
    return braid_timer_start_at(&lc->timer, t0 + interval_ns);
}

void braid_looping_stop(braid_looping *lc) { braid_timer_stop(&lc->timer); }
