/* Threaded components: a function in an OS thread of its own behind a
 * component's boxes (Kamaelia's ThreadedComponent.py), for blocking
 * libraries.
 *
 * The loop side is an ordinary callback component. Between it and the
 * thread are two bounded queues under one mutex: `in` (loop -> thread,
 * tagged with the inbox) and `out` (thread -> loop, tagged with the
 * outbox). The thread wakes the loop side with a posted call whose node
 * lives here (posted at most once at a time: the wake-ups are batched). The
 * thread's last act is posting `done_post`; until that runs the loop is
 * held, so the loop outlives the thread, and everything here is freed on
 * the loop's thread — message free functions included.
 *
 * Context: each queued message carries its sender's context. Handed to the
 * thread, it becomes current there from braid_component_thread_recv until
 * the next receive or the function's return; what the thread sends carries
 * the thread's current context, and the loop side sends it on in it. */
#include "component/component_internal.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

typedef struct tslot {
    int box;
    braid_component_msg m;
    braid_ctx *ctx;                 /* the sender's context (a reference, or NULL) */
} tslot;

typedef struct tqueue {
    tslot *v;
    uint32_t cap, head, len;
} tqueue;

struct braid_component_thread {
    pthread_mutex_t mu;
    pthread_cond_t cv_in, cv_out;   /* the thread waits for input / for room */
    tqueue in, out;
    bool stop;                      /* the component was freed */
    bool posted;                    /* `post` is queued on the loop */
    bool thread_done;               /* (loop side) done_post has run */
    int result;
    uint32_t n_out;
    braid_post post, done_post;
    braid_loop *loop;
    braid_component *c;             /* loop side; NULL once freed (loop thread only) */
    braid_component_thread_fn fn;
    void *state;
    braid_ctx *thread_ctx;          /* thread side: the last received message's context,
                                     * current on the thread (a reference) */
    void (*state_free)(void *state);
    tslot held;                     /* loop side: popped from out, refused by a full box */
    bool holding;
    bool started, hold_taken;
};

static bool tq_push(tqueue *q, int box, braid_component_msg m, braid_ctx *ctx) {
    if (q->len == q->cap) return false;
    q->v[(q->head + q->len) % q->cap] = (tslot){ box, m, ctx };
    q->len++;
    return true;
}
static tslot tq_pop(tqueue *q) {
    tslot s = q->v[q->head];
    q->head = (q->head + 1) % q->cap;
    q->len--;
    return s;
}
static void tq_drain(tqueue *q) {
    while (q->len) {
        tslot s = tq_pop(q);
        braid_component_msg_free(s.m);
        braid__ctx_release(s.ctx);
    }
}

static void thread_free(braid_component_thread *t) {
    tq_drain(&t->in);
    tq_drain(&t->out);
    if (t->holding) {
        braid_component_msg_free(t->held.m);
        braid__ctx_release(t->held.ctx);
    }
    braid_free(t->in.v);
    braid_free(t->out.v);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv_in);
    pthread_cond_destroy(&t->cv_out);
    if (t->state_free) t->state_free(t->state);
    braid_free(t);
}

/* ---- loop side ------------------------------------------------------------------------------ */
static void on_post(void *arg) {   /* loop thread: the thread has news */
    braid_component_thread *t = arg;
    pthread_mutex_lock(&t->mu);
    t->posted = false;
    pthread_mutex_unlock(&t->mu);
    if (t->c) braid__component_notify(t->c);
}

static void on_done(void *arg) {   /* loop thread: the function returned */
    braid_component_thread *t = arg;
    t->thread_done = true;
    braid_loop_release(t->loop);
    if (t->c) braid__component_notify(t->c);
    else thread_free(t);   /* the component went first */
}

/* Call with the lock held: wake the loop side once. */
static void wake_loop(braid_component_thread *t) {
    if (t->posted || t->stop) return;
    t->posted = true;
    braid_loop_post_node(t->loop, &t->post);
}

static int threaded_run(braid_component *c, void *state) {
    braid_component_thread *t = state;
    /* inboxes -> in, oldest box first in index order */
    pthread_mutex_lock(&t->mu);
    bool fed = false;
    for (uint32_t i = 0; i < c->n_in && t->in.len < t->in.cap; i++) {
        braid_component_msg m;
        while (t->in.len < t->in.cap && braid_component_recv(c, (int)i, &m) == 0) {
            tq_push(&t->in, (int)i, m, braid__ctx_capture());   /* the message's: current now */
            fed = true;
        }
    }
    if (fed) pthread_cond_signal(&t->cv_in);
    pthread_mutex_unlock(&t->mu);
    /* out -> outboxes */
    for (;;) {
        if (!t->holding) {
            pthread_mutex_lock(&t->mu);
            bool any = t->out.len > 0;
            if (any) {
                t->held = tq_pop(&t->out);
                t->holding = true;
                pthread_cond_signal(&t->cv_out);
            }
            pthread_mutex_unlock(&t->mu);
            if (!any) break;
        }
        /* sent in the context the thread sent it from */
        braid_ctx *prev = braid__ctx_swap(t->held.ctx);
        int rc = braid_component_send(c, t->held.box, t->held.m.ptr, t->held.m.free);
        braid__ctx_swap(prev);
        if (rc == BRAID_EBOX_FULL) {
            braid_component_wake_on_pop(c, t->held.box);
            return BRAID_COMPONENT_IDLE;
        }
        if (rc < 0) braid_component_msg_free(t->held.m);
        braid__ctx_release(t->held.ctx);
        t->holding = false;
    }
    if (t->thread_done) return t->result < 0 ? t->result : BRAID_COMPONENT_DONE;
    return BRAID_COMPONENT_IDLE;
}

static void *thread_main(void *arg) {
    braid_component_thread *t = arg;
    int rc = t->fn(t, t->state);
    braid__ctx_swap(NULL);           /* the last message's context ends with the function */
    braid__ctx_release(t->thread_ctx);
    t->thread_ctx = NULL;
    pthread_mutex_lock(&t->mu);
    t->result = rc;
    pthread_mutex_unlock(&t->mu);
    /* the last touch of t from this thread: the loop frees it after this */
    braid_loop_post_node(t->loop, &t->done_post);
    return NULL;
}

static void threaded_state_free(void *state) {
    braid_component_thread *t = state;
    t->c = NULL;
    if (!t->started || t->thread_done) {
        if (t->hold_taken && !t->thread_done) braid_loop_release(t->loop);
        thread_free(t);
        return;
    }
    pthread_mutex_lock(&t->mu);
    t->stop = true;
    pthread_cond_broadcast(&t->cv_in);
    pthread_cond_broadcast(&t->cv_out);
    pthread_mutex_unlock(&t->mu);
    /* on_done frees t */
}

static int threaded_activate_hook(braid_component *c);

static const braid__component_hooks threaded_hooks = { .kind = "threaded" };

int braid_component_new_threaded(braid_loop *loop, braid_component_thread_fn fn, void *state,
                                 const braid_component_options *opts, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!fn || !out) return BRAID_EINVAL;
    braid_component_thread *t = braid_calloc(1, sizeof *t);
    if (!t) return BRAID_ENOMEM;
    uint32_t cap = opts && opts->capacity ? opts->capacity : BRAID_COMPONENT_DEFAULT_CAPACITY;
    t->in.cap = t->out.cap = cap;
    t->in.v = braid_calloc(cap, sizeof *t->in.v);
    t->out.v = braid_calloc(cap, sizeof *t->out.v);
    if (!t->in.v || !t->out.v) {
        braid_free(t->in.v);
        braid_free(t->out.v);
        braid_free(t);
        return BRAID_ENOMEM;
    }
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv_in, &ca);
    pthread_cond_init(&t->cv_out, &ca);
    pthread_condattr_destroy(&ca);
    t->loop = loop;
    t->fn = fn;
    t->state = state;
    t->state_free = opts ? opts->state_free : NULL;
    t->post = (braid_post){ .fn = on_post, .arg = t };
    t->done_post = (braid_post){ .fn = on_done, .arg = t };
    braid_component_options o = { .name = "threaded" };
    if (opts) o = *opts;
    if (!o.name) o.name = "threaded";
    o.state_free = threaded_state_free;
    braid_component *c;
    int rc = braid_component_new(loop, threaded_run, t, &o, &c);
    if (rc < 0) {
        t->state_free = NULL;   /* the caller keeps its state on failure */
        thread_free(t);
        return rc;
    }
    t->c = c;
    t->n_out = c->n_out;
    c->hooks = &threaded_hooks;
    (void)threaded_activate_hook;
    *out = c;
    return 0;
}

/* Started by braid_component_activate through the first run: the thread
 * starts when the component is activated. */
static int threaded_activate_hook(braid_component *c) {
    braid_component_thread *t = c->state;
    if (t->started) return 0;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    braid_loop_hold(t->loop);
    t->hold_taken = true;
    int rc = pthread_create(&th, &a, thread_main, t);
    pthread_attr_destroy(&a);
    if (rc != 0) {
        braid_loop_release(t->loop);
        t->hold_taken = false;
        return -rc;
    }
    t->started = true;
    return 0;
}

int braid__component_threaded_start(braid_component *c) {
    if (c->hooks != &threaded_hooks) return 0;
    return threaded_activate_hook(c);
}

/* ---- thread side -------------------------------------------------------------------------- */
static int timed_wait(pthread_cond_t *cv, pthread_mutex_t *mu, uint64_t deadline) {
    if (deadline == BRAID_FOREVER) return pthread_cond_wait(cv, mu);
    struct timespec ts = { (time_t)(deadline / 1000000000ull), (long)(deadline % 1000000000ull) };
    return pthread_cond_timedwait(cv, mu, &ts);
}

static uint64_t deadline_after(uint64_t timeout) {
    if (timeout == BRAID_FOREVER) return BRAID_FOREVER;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    return timeout > BRAID_FOREVER - 1 - now ? BRAID_FOREVER - 1 : now + timeout;
}

int braid_component_thread_recv(braid_component_thread *t, int *box, braid_component_msg *out, uint64_t timeout) {
    uint64_t deadline = deadline_after(timeout);
    pthread_mutex_lock(&t->mu);
    while (!t->in.len && !t->stop) {
        if (timeout == 0 || timed_wait(&t->cv_in, &t->mu, deadline) == ETIMEDOUT) {
            if (t->in.len || t->stop) break;
            pthread_mutex_unlock(&t->mu);
            return BRAID_ETIMEDOUT;
        }
    }
    if (t->stop) {
        pthread_mutex_unlock(&t->mu);
        return BRAID_ECANCELED;
    }
    bool was_full = t->in.len == t->in.cap;
    tslot s = tq_pop(&t->in);
    if (was_full) wake_loop(t);   /* the loop side may have more to hand over */
    pthread_mutex_unlock(&t->mu);
    if (box) *box = s.box;
    *out = s.m;
    /* the message's context is current on the thread until the next receive */
    braid_ctx *old = t->thread_ctx;
    t->thread_ctx = s.ctx;
    braid__ctx_swap(s.ctx);
    braid__ctx_release(old);
    return 0;
}

int braid_component_thread_send(braid_component_thread *t, int box, void *ptr, void (*free_fn)(void *),
                                uint64_t timeout) {
    if (box < 0 || (uint32_t)box >= t->n_out) return BRAID_ENO_BOX;
    uint64_t deadline = deadline_after(timeout);
    pthread_mutex_lock(&t->mu);
    while (t->out.len == t->out.cap && !t->stop) {
        if (timeout == 0 || timed_wait(&t->cv_out, &t->mu, deadline) == ETIMEDOUT) {
            if (t->out.len < t->out.cap || t->stop) break;
            pthread_mutex_unlock(&t->mu);
            return BRAID_ETIMEDOUT;
        }
    }
    if (t->stop) {
        pthread_mutex_unlock(&t->mu);
        return BRAID_ECANCELED;
    }
    tq_push(&t->out, box, (braid_component_msg){ ptr, free_fn }, braid__ctx_capture());
    wake_loop(t);
    pthread_mutex_unlock(&t->mu);
    return 0;
}
