/* Primitives built on Deferreds: defer_later, DeferredSemaphore,
 * DeferredLock and the bounded DeferredQueue.
 *
 * Waiting acquires and gets sit in a FIFO ring of Deferreds whose producer
 * reference the primitive holds. Cancelling a waiter (its canceller) blanks
 * its ring entry, which is skipped when the ring is popped; a cancelled
 * waiter never receives a token or a value. */
#include "deferred/deferred_internal.h"
#include <string.h>

/* ---- defer_later ------------------------------------------------------------------- */
typedef struct later {
    braid_timer timer;
    braid_deferred *d;
    braid_result_fn fn;
    void *arg;
} later;

static void later_fire(braid_timer *t, void *arg) {
    later *l = arg;
    BRAID__UNUSED(t);
    braid_deferred *d = l->d;
    braid_result_fn fn = l->fn;
    void *fnarg = l->arg;
    braid_free(l);
    /* From here a cancel (even from inside fn) finds no canceller: it
     * errbacks d, and our fire below is then ignored, as for any producer
     * that was not told. */
    d->canceller = NULL;
    braid_result r = fn ? fn(fnarg) : braid_result_ok(NULL);
    braid_deferred_fire(d, r);
}

static void later_cancel(braid_deferred *d, void *arg) {
    later *l = arg;
    BRAID__UNUSED(d);
    braid_timer_stop(&l->timer);
    braid_free(l);
}

braid_deferred *braid_deferred_later(braid_loop *loop, uint64_t ns, braid_result_fn fn, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    later *l = braid_malloc(sizeof *l);
    if (!l) return NULL;
    braid_deferred *d = braid_deferred_new_cancellable(loop, later_cancel, l);
    if (!d) { braid_free(l); return NULL; }
    l->d = d;
    l->fn = fn;
    l->arg = arg;
    braid_timer_init(loop, &l->timer, later_fire, l);
    if (braid_timer_start(&l->timer, ns) < 0) {
        d->canceller = NULL;
        braid_deferred_callback(d, NULL, NULL);
        braid_deferred_unref(d);
        braid_free(l);
        return NULL;
    }
    return d;
}

/* ---- a ring of waiting Deferreds ------------------------------------------------- */
typedef struct wring {
    braid_deferred **v;
    size_t head, len, cap;
    size_t live;                 /* entries not blanked by cancellation */
} wring;

static int wring_push(wring *w, braid_deferred *d) {
    if (w->len == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : 8;
        braid_deferred **v = braid_malloc(cap * sizeof *v);
        if (!v) return BRAID_ENOMEM;
        for (size_t i = 0; i < w->len; i++) v[i] = w->v[(w->head + i) % w->cap];
        braid_free(w->v);
        w->v = v;
        w->head = 0;
        w->cap = cap;
    }
    w->v[(w->head + w->len++) % w->cap] = d;
    w->live++;
    return 0;
}

static braid_deferred *wring_pop(wring *w) {
    while (w->len) {
        braid_deferred *d = w->v[w->head];
        w->head = (w->head + 1) % w->cap;
        w->len--;
        if (d) {
            w->live--;
            return d;
        }
    }
    return NULL;
}

static void wring_remove(wring *w, braid_deferred *d) {
    for (size_t i = 0; i < w->len; i++) {
        size_t k = (w->head + i) % w->cap;
        if (w->v[k] == d) {
            w->v[k] = NULL;
            w->live--;
            return;
        }
    }
}

/* ---- semaphore and lock ------------------------------------------------------------- */
struct braid_deferred_semaphore {
    braid_loop *loop;
    unsigned limit, tokens;
    wring waiters;
    braid_handle handle;
};
/* A lock is a semaphore of one token; the cast between them is the API. */
struct braid_deferred_lock {
    struct braid_deferred_semaphore s;
};

int braid_deferred_semaphore_new(braid_loop *loop, unsigned tokens, braid_deferred_semaphore **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!out) return BRAID_EINVAL;
    *out = NULL;
    if (!tokens) return BRAID_EINVAL;
    braid_deferred_semaphore *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    s->loop = loop;
    s->limit = s->tokens = tokens;
    braid_handle_open(loop, &s->handle, "deferred semaphore");
    *out = s;
    return 0;
}

static void waiter_cancel(braid_deferred *d, void *arg) {
    braid_deferred_semaphore *s = arg;
    wring_remove(&s->waiters, d);
}

braid_deferred *braid_deferred_semaphore_acquire(braid_deferred_semaphore *s) {
    BRAID__LOOP_AFFINE(s->loop);
    if (s->tokens && !s->waiters.live) {
        braid_deferred *d = braid_deferred_succeed(s->loop, s, NULL);
        if (d) s->tokens--;      /* only once the Deferred exists: NULL takes nothing */
        return d;
    }
    braid_deferred *d = braid_deferred_new_cancellable(s->loop, waiter_cancel, s);
    if (!d) return NULL;
    if (wring_push(&s->waiters, d) < 0) {
        d->canceller = NULL;
        braid_deferred_callback(d, NULL, NULL);
        braid_deferred_unref(d);
        return NULL;
    }
    return d;
}

int braid_deferred_semaphore_release(braid_deferred_semaphore *s) {
    BRAID__LOOP_AFFINE(s->loop);
    if (s->tokens >= s->limit) {
        braid__log(s->loop, BRAID_LOG_ERROR, "release of a Deferred semaphore/lock not held");
        return BRAID_ELOCKED;
    }
    braid_deferred *d = wring_pop(&s->waiters);
    if (d) {
        d->canceller = NULL;    /* it holds the token now: no longer a waiter */
        braid_deferred_callback(d, s, NULL);   /* the token passes straight to it */
    } else {
        s->tokens++;
    }
    return 0;
}

typedef struct run_ctx {
    braid_deferred_semaphore *s;
    braid_result_fn fn;
    void *arg;
    bool acquired;
} run_ctx;

static braid_result run_acquired(braid_result r, void *arg) {
    run_ctx *c = arg;
    braid_result_drop(r);        /* the semaphore, borrowed */
    c->acquired = true;
    return c->fn ? c->fn(c->arg) : braid_result_ok(NULL);
}

static braid_result run_done(braid_result r, void *arg) {
    run_ctx *c = arg;
    if (c->acquired) braid_deferred_semaphore_release(c->s);
    braid_free(c);
    return r;
}

braid_deferred *braid_deferred_semaphore_run(braid_deferred_semaphore *s, braid_result_fn fn, void *arg) {
    BRAID__LOOP_AFFINE(s->loop);
    run_ctx *c = braid_malloc(sizeof *c);
    if (!c) return NULL;
    braid_deferred *d = braid_deferred_semaphore_acquire(s);
    if (!d) { braid_free(c); return NULL; }
    c->s = s;
    c->fn = fn;
    c->arg = arg;
    c->acquired = false;
    /* d is fresh (at most these two callbacks, both inline): cannot fail. */
    braid_deferred_add(d, run_acquired, NULL, c);
    braid_deferred_add_both(d, run_done, c);
    return d;
}

unsigned braid_deferred_semaphore_tokens(const braid_deferred_semaphore *s) { return s->tokens; }
size_t braid_deferred_semaphore_waiting(const braid_deferred_semaphore *s) { return s->waiters.live; }

int braid_deferred_semaphore_free(braid_deferred_semaphore *s) {
    if (!s) return 0;
    BRAID__LOOP_AFFINE(s->loop);
    if (s->tokens != s->limit || s->waiters.live) return BRAID_EBUSY;
    braid_handle_close(s->loop, &s->handle);
    braid_free(s->waiters.v);
    braid_free(s);
    return 0;
}

int braid_deferred_lock_new(braid_loop *loop, braid_deferred_lock **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!out) return BRAID_EINVAL;
    braid_deferred_semaphore *s;
    int rc = braid_deferred_semaphore_new(loop, 1, &s);
    if (rc < 0) { *out = NULL; return rc; }
    s->handle.kind = "deferred lock";
    *out = (braid_deferred_lock *)s;
    return 0;
}
braid_deferred *braid_deferred_lock_acquire(braid_deferred_lock *l) { return braid_deferred_semaphore_acquire(&l->s); }
int braid_deferred_lock_release(braid_deferred_lock *l) { return braid_deferred_semaphore_release(&l->s); }
braid_deferred *braid_deferred_lock_run(braid_deferred_lock *l, braid_result_fn fn, void *arg) {
    return braid_deferred_semaphore_run(&l->s, fn, arg);
}
bool braid_deferred_lock_is_locked(const braid_deferred_lock *l) { return l->s.tokens == 0; }
int braid_deferred_lock_free(braid_deferred_lock *l) { return l ? braid_deferred_semaphore_free(&l->s) : 0; }

/* ---- queue ------------------------------------------------------------------------- */
struct braid_deferred_queue {
    braid_loop *loop;
    size_t size, backlog;
    braid_result *items;         /* ring of `size` values */
    size_t head, len;
    wring getters;
    braid_handle handle;
};

int braid_deferred_queue_new(braid_loop *loop, size_t size, size_t backlog, braid_deferred_queue **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!out) return BRAID_EINVAL;
    *out = NULL;
    if (!size || size > SIZE_MAX / sizeof(braid_result)) return BRAID_EINVAL;
    braid_deferred_queue *q = braid_calloc(1, sizeof *q);
    if (!q) return BRAID_ENOMEM;
    q->items = braid_malloc(size * sizeof *q->items);
    if (!q->items) { braid_free(q); return BRAID_ENOMEM; }
    q->loop = loop;
    q->size = size;
    q->backlog = backlog;
    braid_handle_open(loop, &q->handle, "deferred queue");
    *out = q;
    return 0;
}

int braid_deferred_queue_put(braid_deferred_queue *q, void *value, void (*dtor)(void *)) {
    BRAID__LOOP_AFFINE(q->loop);
    braid_deferred *d = wring_pop(&q->getters);
    if (d) {
        d->canceller = NULL;
        braid_deferred_callback(d, value, dtor);
        return 0;
    }
    if (q->len == q->size) return BRAID_EQUEUE_FULL;
    q->items[(q->head + q->len++) % q->size] = braid_result_ok_owned(value, dtor);
    return 0;
}

static void getter_cancel(braid_deferred *d, void *arg) {
    braid_deferred_queue *q = arg;
    wring_remove(&q->getters, d);
}

int braid_deferred_queue_get(braid_deferred_queue *q, braid_deferred **out) {
    BRAID__LOOP_AFFINE(q->loop);
    *out = NULL;
    if (q->len) {
        braid_deferred *d = braid_deferred_succeed(q->loop, NULL, NULL);
        if (!d) return BRAID_ENOMEM;      /* the value stays queued */
        d->result = q->items[q->head];
        q->head = (q->head + 1) % q->size;
        q->len--;
        *out = d;
        return 0;
    }
    if (q->getters.live >= q->backlog) return BRAID_EQUEUE_EMPTY;
    braid_deferred *d = braid_deferred_new_cancellable(q->loop, getter_cancel, q);
    if (!d) return BRAID_ENOMEM;
    if (wring_push(&q->getters, d) < 0) {
        d->canceller = NULL;
        braid_deferred_callback(d, NULL, NULL);
        braid_deferred_unref(d);
        return BRAID_ENOMEM;
    }
    *out = d;
    return 0;
}

size_t braid_deferred_queue_size(const braid_deferred_queue *q) { return q->len; }
size_t braid_deferred_queue_waiting(const braid_deferred_queue *q) { return q->getters.live; }

void braid_deferred_queue_free(braid_deferred_queue *q) {
    if (!q) return;
    BRAID__LOOP_AFFINE(q->loop);
    while (q->len) {
        braid_result r = q->items[q->head];
        q->head = (q->head + 1) % q->size;
        q->len--;
        braid_result_drop(r);
    }
    braid_deferred *d;
    while ((d = wring_pop(&q->getters)) != NULL) {
        d->canceller = NULL;
        braid_deferred_errback(d, braid_failure_new(BRAID_ESHUTDOWN, "Deferred queue freed"));
    }
    braid_handle_close(q->loop, &q->handle);
    braid_free(q->getters.v);
    braid_free(q->items);
    braid_free(q);
}
