/* Stages: the queue, enqueueing, domains and dispatch.
 *
 * Each stage has a ring of events under its own mutex, so any thread may
 * enqueue. A *run* is one thread draining a stage's queue in batches; a
 * stage has at most `threads` runs at once (one in a loop domain). A run
 * starts in one of two ways:
 *   - scheduled: a loop domain appends the stage to its run queue and
 *     wakes the loop once for the whole queue (a ready-phase node from the
 *     loop's own thread, a posted node from others); a pool domain queues a
 *     job on its pool;
 *   - direct: an enqueue made by a handler into a stage of the handler's
 *     own domain puts the target on this thread's direct list, and the
 *     dispatcher runs it on this thread as soon as the current run ends —
 *     no wake-up, no hop. Nothing is ever run from inside an enqueue, so
 *     handlers never nest and the stack stays flat.
 * In a pool domain the scheduled run keeps its stage until the direct runs
 * it caused have ended (then takes what arrived meanwhile, within its
 * budget): were it to end first, the next events for it would start a run
 * on another pool thread, whose direct calls would find their targets
 * still running here and join those runs — the events would cross
 * threads inside the domain.
 */
#include "stage_internal.h"
#include <sched.h>
#include <stdlib.h>
#include <string.h>

static const char *const stage_names[] = {
    [0] = "stage queue full",
    [1] = "rejected by the stage's admission control",
    [2] = "stage closed",
};
BRAID__ERROR_DOMAIN(stage, "stage", BRAID_ESTAGE_FULL, BRAID_ESTAGE_CLOSED, stage_names);

#define LOOP_BUDGET 16      /* batches per stage per loop wake-up, then others get a turn */
#define POOL_BUDGET 64      /* batches per stage per pool job, then its run is queued again */
#define DISPATCH_STAGES 16  /* stages one dispatch runs; the runs of more are scheduled */

/* The dispatch context of the calling thread: set while a dispatcher (a
 * loop domain's wake-up, a pool domain's job) runs stages of dom; cur is
 * the stage whose handler is running. */
typedef struct dispatch_ctx {
    braid_stage_domain *dom;
    braid_stage *cur;
    braid_stage *direct_head, *direct_tail;
    /* the edge last counted from cur: a handler usually sends its whole
     * batch to one stage */
    braid_stage *edge_to;
    uint64_t *edge_count;
    /* The batches each stage run in this dispatch has left, across all its
     * runs here (a cycle of direct calls runs a stage again and again):
     * budget each at first. */
    unsigned budget;
    unsigned nstages;
    braid_stage *stages[DISPATCH_STAGES];
    unsigned left[DISPATCH_STAGES];
} dispatch_ctx;
static _Thread_local dispatch_ctx tctx;

/* The batches st has left in this dispatch; NULL (none: its run is
 * scheduled) once DISPATCH_STAGES others have run. The stages are only
 * compared: one freed meanwhile is harmless. */
static unsigned *budget_left(braid_stage *st) {
    for (unsigned i = 0; i < tctx.nstages; i++)
        if (tctx.stages[i] == st) return &tctx.left[i];
    if (tctx.nstages == DISPATCH_STAGES) return NULL;
    tctx.stages[tctx.nstages] = st;
    tctx.left[tctx.nstages] = tctx.budget;
    return &tctx.left[tctx.nstages++];
}

void braid_stage_event_free(braid_stage_event *ev) {
    if (!ev || !ev->data) return;
    void *d = ev->data;
    ev->data = NULL;
    if (ev->free) ev->free(d);
}

/* ---- domains ------------------------------------------------------------------------------- */
static void dom_run(void *arg);
static void dom_release(braid_stage_domain *d);

/* Loop thread: a pool domain's runs all ended; let the loop go (and stop
 * its busy-poll) unless new ones started meanwhile. */
static void spin_release_run(void *arg) {
    braid_stage_domain *d = arg;
    pthread_mutex_lock(&d->mu);
    d->release_pending = false;
    bool dead = d->dead, armed = d->armed;
    bool release = !dead && d->held && !d->active;
    if (release) d->held = false;
    pthread_mutex_unlock(&d->mu);
    if (dead) {
        if (!armed) dom_release(d);
        return;
    }
    if (release) {
        if (d->spin_ns) braid__loop_spin_release(d->loop);
        braid_loop_release(d->loop);
    }
}

int braid_stage_domain_new(braid_loop *loop, braid_pool *pool,
                           const braid_stage_domain_options *opts, braid_stage_domain **out) {
    if (!loop || !out) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(loop);
    braid_stage_domain_options o = opts ? *opts : (braid_stage_domain_options){ 0 };
    if (pool && (o.pool_class < 0 || (unsigned)o.pool_class >= braid_pool_classes(pool)))
        return BRAID_EINVAL;
    braid_stage_domain *d = braid_calloc(1, sizeof *d);
    if (!d) return BRAID_ENOMEM;
    d->name = braid_strdup(o.name ? o.name : pool ? "pool" : "loop");
    if (!d->name) {
        braid_free(d);
        return BRAID_ENOMEM;
    }
    d->loop = loop;
    d->pool = pool;
    d->cls = o.pool_class;
    d->clock = braid_loop_clock(loop);
    pthread_mutex_init(&d->mu, NULL);
    d->spin_ns = pool ? o.loop_spin_ns : 0;
    d->release_post = (braid_post){ .fn = spin_release_run, .arg = d };
    d->post = (braid_post){ .fn = dom_run, .arg = d };
    d->soon = (braid_soon){ .fn = dom_run, .arg = d };
    d->handle.name = d->name;
    braid_handle_open(loop, &d->handle, "stage domain");
    *out = d;
    return 0;
}

static void dom_release(braid_stage_domain *d) {
    pthread_mutex_destroy(&d->mu);
    braid_free(d->name);
    braid_free(d);
}

void braid_stage_domain_free(braid_stage_domain *d) {
    if (!d) return;
    BRAID__LOOP_AFFINE(d->loop);
    if (d->nstages) {
        braid__log(d->loop, BRAID_LOG_ERROR, "domain %s freed with %zu stages", d->name, d->nstages);
        abort();
    }
    braid_handle_close(d->loop, &d->handle);
    pthread_mutex_lock(&d->mu);
    /* Runs of freed stages may still be leaving pool_run_ended. */
    while (d->active) {
        pthread_mutex_unlock(&d->mu);
        sched_yield();
        pthread_mutex_lock(&d->mu);
    }
    if (d->held) {
        d->held = false;
        if (d->spin_ns) braid__loop_spin_release(d->loop);
        braid_loop_release(d->loop);
    }
    bool pending = d->armed || d->release_pending;
    if (pending) d->dead = true;
    pthread_mutex_unlock(&d->mu);
    if (!pending) dom_release(d);
}

/* ---- back-pressure notices -------------------------------------------------------------------- */
static void stage_release(braid_stage *st);

static void note_run(void *arg) {
    braid_stage *st = arg;
    braid__stage_lock(st);
    unsigned bits = st->note_bits;
    bool clogged = st->clogged, dead = st->dead;
    st->note_bits = 0;
    st->note_pending = false;
    braid__stage_unlock(st);
    if (dead) {
        stage_release(st);
        return;
    }
    /* Transitions alternate, so with both pending the one that happened
     * first is the opposite of the present state. */
    unsigned order[2] = { 0, 0 };
    if (bits == (NOTE_CLOG | NOTE_DRAIN)) {
        order[0] = clogged ? NOTE_DRAIN : NOTE_CLOG;
        order[1] = clogged ? NOTE_CLOG : NOTE_DRAIN;
    } else {
        order[0] = bits;
    }
    for (int i = 0; i < 2; i++) {
        if (order[i] == NOTE_CLOG && st->on_clog) st->on_clog(st, st->cb_arg);
        if (order[i] == NOTE_DRAIN && st->on_drain) st->on_drain(st, st->cb_arg);
    }
}

/* Under st->mu: record a transition; true if the caller must post the notice. */
static bool note_locked(braid_stage *st, unsigned bit) {
    if (bit == NOTE_CLOG) {
        st->clogged = true;
        st->st.clogs++;
    } else {
        st->clogged = false;
        st->st.drains++;
    }
    if (!st->on_clog && !st->on_drain) return false;
    st->note_bits |= bit;
    if (st->note_pending) return false;
    st->note_pending = true;
    return true;
}

static void check_drain_locked(braid_stage *st, bool *post) {
    if (st->clogged && st->len + st->reserved <= st->drain_at && note_locked(st, NOTE_DRAIN))
        *post = true;
}

/* ---- stages ----------------------------------------------------------------------------------- */
int braid_stage_new(braid_stage_domain *dom, const char *name, braid_stage_fn fn, void *arg,
                    const braid_stage_options *opts, braid_stage **out) {
    if (!dom || !fn || !out) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(dom->loop);
    braid_stage_options o = opts ? *opts : (braid_stage_options){ 0 };
    if (!o.queue_limit) o.queue_limit = 1024;
    if (!o.batch_max) o.batch_max = 64;
    if (o.batch_max > BRAID_STAGE_MAX_BATCH) return BRAID_EINVAL;
    if (!o.threads || !dom->pool) o.threads = 1;
    if (!o.clog_at || o.clog_at > o.queue_limit) o.clog_at = o.queue_limit;
    if (o.drain_at >= o.clog_at) return BRAID_EINVAL;
    if ((o.flags & BRAID_STAGE_LOOP_ONLY) && dom->pool) return BRAID_EINVAL;
    braid_stage *st = braid_calloc(1, sizeof *st);
    if (!st) return BRAID_ENOMEM;
    st->name = braid_strdup(name ? name : "stage");
    st->ring = braid_calloc(o.queue_limit, sizeof *st->ring);
    if (!(o.flags & BRAID_STAGE_NO_TIMING))
        st->ring_t = braid_calloc(o.queue_limit, sizeof *st->ring_t);
    if (!st->name || !st->ring || (!(o.flags & BRAID_STAGE_NO_TIMING) && !st->ring_t))
        goto nomem;
    st->dom = dom;
    st->fn = fn;
    st->arg = arg;
    st->flags = o.flags;
    st->cap = o.queue_limit;
    st->batch_max = o.batch_max;
    st->threads = o.threads;
    st->clog_at = o.clog_at;
    st->drain_at = o.drain_at;
    st->on_clog = o.on_clog;
    st->on_drain = o.on_drain;
    st->cb_arg = o.cb_arg;
    st->note = (braid_post){ .fn = note_run, .arg = st };
    if (braid__stage_register(st) < 0) goto nomem;
    pthread_mutex_init(&st->mu, NULL);
    pthread_cond_init(&st->cv, NULL);
    st->handle.name = st->name;
    braid_handle_open(dom->loop, &st->handle, "stage");
    braid_introspect_add(dom->loop, &st->inode, "stages", braid__stage_describe, st);
    dom->nstages++;
    *out = st;
    return 0;
nomem:
    braid_free(st->ring_t);
    braid_free(st->ring);
    braid_free(st->name);
    braid_free(st);
    return BRAID_ENOMEM;
}

const char *braid_stage_name(const braid_stage *st) { return st->name; }

void braid_stage_close(braid_stage *st) {
    if (!st) return;
    braid__stage_lock(st);
    st->closed = true;
    braid__stage_unlock(st);
}

static void stage_release(braid_stage *st) {
    pthread_cond_destroy(&st->cv);
    pthread_mutex_destroy(&st->mu);
    braid_free(st->ring_c);
    braid_free(st->ring_t);
    braid_free(st->ring);
    braid_free(st->name);
    braid_free(st);
}

/* Take st off this thread's direct list; true if it was there. */
static bool direct_remove(braid_stage *st) {
    braid_stage **pp = &tctx.direct_head, *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->direct_next) {
        if (*pp != st) continue;
        *pp = st->direct_next;
        if (tctx.direct_tail == st) tctx.direct_tail = prev;
        st->direct_next = NULL;
        return true;
    }
    return false;
}

void braid_stage_free(braid_stage *st) {
    if (!st) return;
    braid_stage_domain *dom = st->dom;
    BRAID__LOOP_AFFINE(dom->loop);
    braid__stage_controls_stop(st);
    braid__stage_lock(st);
    st->closed = st->freeing = true;
    braid__stage_unlock(st);
    /* Runs that have not started are taken back: from the loop domain's run
     * queue, from this thread's direct list. */
    unsigned taken = 0;
    pthread_mutex_lock(&dom->mu);
    if (st->in_runq) {
        braid_stage **pp = &dom->runq_head, *prev = NULL;
        while (*pp != st) prev = *pp, pp = &(*pp)->run_next;
        *pp = st->run_next;
        if (dom->runq_tail == st) dom->runq_tail = prev;
        dom->runq_len--;
        st->in_runq = false;
        taken++;
    }
    pthread_mutex_unlock(&dom->mu);
    if (direct_remove(st)) taken++;
    braid__stage_lock(st);
    st->runners -= taken;
    if (tctx.cur == st || (!dom->pool && st->runners)) {
        braid__stage_unlock(st);
        braid__log(dom->loop, BRAID_LOG_ERROR, "braid_stage_free(%s) called from its own handler", st->name);
        abort();
    }
    /* Pool runs already queued see `freeing` and end at once. */
    while (st->runners) pthread_cond_wait(&st->cv, &st->mu);   /* pool domains: never LOOP_ONLY */
    size_t n = st->len;
    st->len = 0;
    braid__stage_unlock(st);
    for (size_t i = 0; i < n; i++) {
        size_t at = (st->head + i) % st->cap;
        braid_stage_event_free(&st->ring[at]);
        if (st->ring_c) braid__ctx_release(st->ring_c[at]);
    }
    braid_introspect_remove(dom->loop, &st->inode);
    braid__stage_unregister(st);
    braid_handle_close(dom->loop, &st->handle);
    dom->nstages--;
    braid__stage_lock(st);
    bool pending = st->note_pending;
    if (pending) st->dead = true;
    braid__stage_unlock(st);
    if (!pending) stage_release(st);
}

/* ---- running ---------------------------------------------------------------------------------- */
static void pool_run(void *arg);

/* Any thread: a pool domain's run ended (or never started). The last one
 * asks the loop to stop its busy-poll. */
static void pool_run_ended(braid_stage_domain *d) {
    braid_loop *loop = d->loop;
    braid_post *node = &d->release_post;
    pthread_mutex_lock(&d->mu);
    bool post = !--d->active && d->held && !d->release_pending && !d->dead;
    if (post) d->release_pending = true;
    pthread_mutex_unlock(&d->mu);
    /* d may be freed from here on, but not the node: a pending release
     * keeps the domain's memory until it has run. */
    if (post) braid_loop_post_node(loop, node);
}

/* Start a scheduled run of st (st->runners already counts it). */
static void schedule(braid_stage *st) {
    braid_stage_domain *d = st->dom;
    if (d->pool) {
        bool mine = braid__loop_on_owner_thread(d->loop), hold = false;
        pthread_mutex_lock(&d->mu);
        d->active++;
        if (mine && !d->held) d->held = hold = true;
        pthread_mutex_unlock(&d->mu);
        if (hold) {
            braid_loop_hold(d->loop);
            if (d->spin_ns) braid__loop_spin_hold(d->loop, d->spin_ns);
        }
        int rc = braid_pool_call_class(d->pool, d->cls, pool_run, st);
        if (rc == 0) return;
        pool_run_ended(d);
        /* The events stay queued; the next enqueue tries again. */
        braid__stage_lock(st);
        st->runners--;
        if (st->freeing && !st->runners) pthread_cond_broadcast(&st->cv);
        braid__stage_unlock(st);
        braid__log(NULL, BRAID_LOG_WARN, "stage %s: its pool refused a run: %s", st->name,
                   braid_strerror(rc));
        return;
    }
    bool wake = false;
    pthread_mutex_lock(&d->mu);
    st->run_next = NULL;
    st->in_runq = true;
    if (d->runq_tail) d->runq_tail->run_next = st;
    else d->runq_head = st;
    d->runq_tail = st;
    d->runq_len++;
    if (!d->armed) d->armed = wake = true;
    pthread_mutex_unlock(&d->mu);
    if (!wake) return;
    if (braid__loop_on_owner_thread(d->loop)) braid_loop_soon_node(d->loop, &d->soon);
    else braid_loop_post_node(d->loop, &d->post);
}

/* braid_pool_hist_bucket, inline: it runs twice per event on the hot path. */
static inline unsigned hist_bucket(uint64_t ns) {
    unsigned b = ns ? 63u - (unsigned)__builtin_clzll(ns) : 0;
    return b < BRAID_POOL_HIST ? b : BRAID_POOL_HIST - 1;
}

/* The handler over a batch whose events carry contexts (cs; NULL: none
 * does, but another is current): cut where the context changes, each part
 * run in its events' context. */
__attribute__((noinline)) static void run_in_contexts(braid_stage *st, braid_stage_event *evs, braid_ctx **cs,
                                                    size_t n) {
    braid_ctx *ambient = braid__ctx_cur;
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        braid_ctx *c = cs ? cs[i] : NULL;
        while (j < n && (cs ? cs[j] : NULL) == c) j++;
        braid__ctx_cur = c;
        st->fn(st, evs + i, j - i, st->arg);
        i = j;
    }
    braid__ctx_cur = ambient;
}

/* Drain st in batches on this thread while its budget in this dispatch
 * lasts; then, work remaining, schedule the run again (fairness), or, the
 * queue empty, end it — unless hold and the handler left direct runs to
 * do: then this thread keeps the run (true) and, once they are done,
 * run_end decides. */
static bool stage_run(braid_stage *st, bool hold) {
    braid_stage_event evs[BRAID_STAGE_MAX_BATCH];
    uint64_t tq[BRAID_STAGE_MAX_BATCH];
    braid_ctx *cs[BRAID_STAGE_MAX_BATCH];
    braid_stage_domain *d = st->dom;
    bool timing = st->ring_t != NULL;
    unsigned none = 0, *budget = budget_left(st);
    if (!budget) budget = &none;
    braid__stage_lock(st);
    while (*budget && !st->freeing && st->len) {
        --*budget;
        size_t n = st->len < st->batch_max ? st->len : st->batch_max;
        bool ctxs = st->nctx != 0;   /* some queued event carries a context */
        for (size_t i = 0; i < n; i++) {
            size_t at = st->head;
            evs[i] = st->ring[at];
            st->ring[at].data = NULL;
            if (BRAID__UNLIKELY(ctxs) && (cs[i] = st->ring_c[at])) {
                st->ring_c[at] = NULL;
                st->nctx--;
            }
            if (timing) tq[i] = st->ring_t[at];
            st->head = at + 1 == st->cap ? 0 : at + 1;
        }
        st->len -= n;
        st->running++;
        bool post = false;
        check_drain_locked(st, &post);
        braid__stage_unlock(st);
        if (post) braid_loop_post_node(d->loop, &st->note);

        braid_stage *outer = tctx.cur;
        tctx.cur = st;
        tctx.edge_to = NULL;
        uint64_t t0 = timing ? braid__stage_now(d) : 0;
        /* Each event runs in its enqueuer's context (with none anywhere,
         * and none current: one call, nothing switched). */
        if (BRAID__LIKELY(!ctxs && !braid__ctx_cur)) st->fn(st, evs, n, st->arg);
        else run_in_contexts(st, evs, ctxs ? cs : NULL, n);
        uint64_t t1 = timing ? braid__stage_now(d) : 0;
        tctx.cur = outer;
        tctx.edge_to = NULL;
        for (size_t i = 0; i < n; i++) braid_stage_event_free(&evs[i]);
        if (BRAID__UNLIKELY(ctxs))
            for (size_t i = 0; i < n; i++) braid__ctx_release(cs[i]);

        braid__stage_lock(st);
        st->running--;
        st->st.batches++;
        st->st.handled += n;
        st->st.batch_hist[hist_bucket(n)]++;
        if (timing) {
            uint64_t svc = (t1 - t0) / n;
            st->st.service_hist[hist_bucket(svc)] += n;
            size_t first = n > BRAID__STAGE_SAMPLES ? n - BRAID__STAGE_SAMPLES : 0;
            for (size_t i = 0; i < n; i++) {
                uint64_t q = t0 > tq[i] ? t0 - tq[i] : 0;
                uint64_t r = t1 > tq[i] ? t1 - tq[i] : 0;
                st->st.queue_hist[hist_bucket(q)]++;
                st->st.response_hist[hist_bucket(r)]++;
                if (i < first) continue;
                st->samples[st->sample_pos] = r;
                st->sample_pos = (st->sample_pos + 1) % BRAID__STAGE_SAMPLES;
                if (st->nsamples < BRAID__STAGE_SAMPLES) st->nsamples++;
            }
            st->last_busy = t1;
        }
    }
    if (hold && tctx.direct_head && !st->freeing) {
        braid__stage_unlock(st);
        return true;
    }
    if (st->len && !st->freeing) {
        st->st.runs_scheduled++;
        braid__stage_unlock(st);
        schedule(st);   /* the run goes on later, as the same runner */
        return false;
    }
    st->runners--;
    if (st->freeing && !st->runners) pthread_cond_broadcast(&st->cv);
    braid__stage_unlock(st);
    return false;
}

/* A run this thread held while its direct runs went: false if events
 * came meanwhile and budget remains (run it again); otherwise it is
 * scheduled again (work left) or ends. */
static bool run_end(braid_stage *st) {
    unsigned *budget = budget_left(st), left = budget ? *budget : 0;
    braid__stage_lock(st);
    if (st->len && !st->freeing) {
        if (left) {
            braid__stage_unlock(st);
            return false;
        }
        st->st.runs_scheduled++;
        braid__stage_unlock(st);
        schedule(st);
        return true;
    }
    st->runners--;
    if (st->freeing && !st->runners) pthread_cond_broadcast(&st->cv);
    braid__stage_unlock(st);
    return true;
}

/* Run every stage on this thread's direct list (and what they add to it;
 * a stage whose budget is spent is scheduled instead). */
static void run_direct(void) {
    braid_stage *st;
    while ((st = tctx.direct_head)) {
        tctx.direct_head = st->direct_next;
        if (!tctx.direct_head) tctx.direct_tail = NULL;
        st->direct_next = NULL;
        stage_run(st, false);
    }
}

/* A loop domain's wake-up: run the stages that were queued for it when it
 * began (those queued meanwhile, or again for fairness, wait for the next
 * wake-up). Taken one at a time, so a handler may free a stage still
 * waiting here. */
static void dom_run(void *arg) {
    braid_stage_domain *d = arg;
    pthread_mutex_lock(&d->mu);
    d->armed = false;
    bool dead = d->dead, pending = d->release_pending;
    size_t count = d->runq_len;
    pthread_mutex_unlock(&d->mu);
    if (dead) {
        if (!pending) dom_release(d);
        return;
    }
    dispatch_ctx saved = tctx;
    tctx = (dispatch_ctx){ .dom = d, .budget = LOOP_BUDGET };
    for (; count; count--) {
        pthread_mutex_lock(&d->mu);
        braid_stage *st = d->runq_head;
        if (st) {
            d->runq_head = st->run_next;
            if (!d->runq_head) d->runq_tail = NULL;
            d->runq_len--;
            st->in_runq = false;
            st->run_next = NULL;
        }
        pthread_mutex_unlock(&d->mu);
        if (!st) break;
        tctx.nstages = 0;   /* each stage taken here starts a dispatch of its own */
        /* No hold: one thread runs the whole domain, and a handler may
         * free this stage once its run has ended. */
        stage_run(st, false);
        run_direct();
    }
    tctx = saved;
}

/* A pool domain's job: one run of one stage, then the direct list. The run
 * ends (or, past its budget, is scheduled again) only after the direct
 * runs it caused (see the top of the file); what reached its queue
 * meanwhile is its own to take, on this thread. */
static void pool_run(void *arg) {
    braid_stage *st = arg;
    braid_stage_domain *d = st->dom;   /* st may be freed once its run ends */
    dispatch_ctx saved = tctx;
    tctx = (dispatch_ctx){ .dom = d, .budget = POOL_BUDGET };
    for (;;) {
        bool held = stage_run(st, true);
        run_direct();
        if (!held || run_end(st)) break;
    }
    tctx = saved;
    pool_run_ended(d);
}

/* ---- enqueueing ------------------------------------------------------------------------------- */
typedef enum { RUN_NONE, RUN_DIRECT, RUN_SCHEDULE } run_kind;

/* Under st->mu, after events were added: does st need another run? */
static run_kind need_run_locked(braid_stage *st) {
    if (st->freeing) return RUN_NONE;
    if (st->runners) {
        /* More runners only in pool domains, while there is a batch for each. */
        if (st->runners >= st->threads || st->len <= (size_t)st->runners * st->batch_max)
            return RUN_NONE;
        st->runners++;
        st->st.runs_scheduled++;
        return RUN_SCHEDULE;
    }
    st->runners = 1;
    if (tctx.dom == st->dom) {
        st->st.runs_direct++;
        return RUN_DIRECT;
    }
    st->st.runs_scheduled++;
    return RUN_SCHEDULE;
}

static void start_run(braid_stage *st, run_kind k) {
    if (k == RUN_SCHEDULE) {
        schedule(st);
    } else if (k == RUN_DIRECT) {
        st->direct_next = NULL;
        if (tctx.direct_tail) tctx.direct_tail->direct_next = st;
        else tctx.direct_head = st;
        tctx.direct_tail = st;
    }
}

/* Under st->mu: a refusal for lack of room clogs the queue (when a drain
 * can follow). */
static void refuse_full_locked(braid_stage *st, size_t n, bool *post) {
    st->st.rejected_full += n;
    if (!st->clogged && st->len + st->reserved > st->drain_at && note_locked(st, NOTE_CLOG))
        *post = true;
}

/* Append n events (room checked) and clear the caller's copies. */
static void push_locked(braid_stage *st, braid_stage_event *evs, size_t n, uint64_t now, bool *post) {
    for (size_t i = 0; i < n; i++) {
        size_t at = st->head + st->len;
        if (at >= st->cap) at -= st->cap;
        st->ring[at] = evs[i];
        if (st->ring_t) st->ring_t[at] = now;
        braid_ctx *c = braid__ctx_capture();
        if (BRAID__UNLIKELY(c != NULL)) {
            braid_ctx **rc = __atomic_load_n(&st->ring_c, __ATOMIC_ACQUIRE);
            if (rc) {
                rc[at] = c;
                st->nctx++;
            } else {
                braid__ctx_release(c);   /* committed in a context its prepare did not have */
            }
        }
        st->len++;
        evs[i].data = NULL;
    }
    st->st.accepted += n;
    if (st->len > st->st.queue_max) st->st.queue_max = st->len;
    if (!st->clogged && st->len + st->reserved >= st->clog_at && note_locked(st, NOTE_CLOG))
        *post = true;
}

/* Ask the user predicate about each event (no lock held). */
static bool admit_fn_ok(braid_stage *st, const braid_stage_event *evs, size_t n) {
    if (__atomic_load_n(&st->admit, __ATOMIC_RELAXED) != ADMIT_FN) return true;
    braid__stage_lock(st);
    braid_stage_admit_fn fn = st->admit == ADMIT_FN ? st->admit_fn : NULL;
    void *arg = st->admit_arg;
    size_t len = st->len;
    braid__stage_unlock(st);
    if (!fn) return true;
    for (size_t i = 0; i < n; i++)
        if (!fn(st, &evs[i], len + i, arg)) return false;
    return true;
}

/* An enqueue made by the handler running on this thread is an edge of the
 * graph: count it (cached for the common run of sends to one stage). */
static inline void count_edge(braid_stage *to, size_t n) {
    braid_stage *from = tctx.cur;
    if (!from || from == to) return;
    if (tctx.edge_to == to && !from->dom->pool) {   /* one thread runs a loop-domain stage */
        __atomic_store_n(tctx.edge_count, __atomic_load_n(tctx.edge_count, __ATOMIC_RELAXED) + n,
                         __ATOMIC_RELAXED);
        return;
    }
    uint64_t *c = braid__stage_edge_count(from, to, n);
    if (c) tctx.edge_to = to, tctx.edge_count = c;
}

void braid__stage_kick(braid_stage *st) {
    braid__stage_lock(st);
    run_kind k = st->len ? need_run_locked(st) : RUN_NONE;
    braid__stage_unlock(st);
    start_run(st, k);
}

/* Does admission read the clock (token buckets)? */
static bool needs_clock(braid_stage *st) {
    int a = __atomic_load_n(&st->admit, __ATOMIC_RELAXED);
    return a == ADMIT_RATE || a == ADMIT_CLASSES;
}

/* Under st->mu: may n events come in? Closed, then admission, then room;
 * each refusal counted by cause. Tokens taken for events that then find
 * no room are given back. */
static int check_locked(braid_stage *st, const braid_stage_event *evs, size_t n, uint64_t now,
                        bool fn_ok, double *tokens_out, bool *post) {
    double tokens = 0;
    st->st.arrivals += n;
    if (st->closed) {
        st->st.rejected_closed += n;
        return BRAID_ESTAGE_CLOSED;
    }
    if (!fn_ok || (st->admit > ADMIT_ALL && st->admit != ADMIT_FN &&
                   braid__stage_admit_locked(st, evs, n, now, &tokens) < 0)) {
        st->st.rejected_admission += n;
        return BRAID_ESTAGE_REJECTED;
    }
    if (st->len + st->reserved + n > st->cap) {
        braid__stage_refund_locked(st, tokens);
        refuse_full_locked(st, n, post);
        return BRAID_ESTAGE_FULL;
    }
    if (tokens_out) *tokens_out = tokens;
    return 0;
}

/* The context slots, made by the first enqueue under a context (a stage
 * never used with one has none). Any thread. */
__attribute__((noinline)) static int make_ring_c(braid_stage *st) {
    braid_ctx **p = braid_calloc(st->cap, sizeof *p), **expect_p = NULL;
    if (!p) return BRAID_ENOMEM;
    if (!__atomic_compare_exchange_n(&st->ring_c, &expect_p, p, false, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        braid_free(p);
    return 0;
}
static inline int need_ring_c(braid_stage *st) {
    if (BRAID__LIKELY(!braid__ctx_cur) || __atomic_load_n(&st->ring_c, __ATOMIC_ACQUIRE)) return 0;
    return make_ring_c(st);
}

int braid_stage_enqueue_many(braid_stage *st, braid_stage_event *evs, size_t n) {
    if (!st || (n && !evs)) return BRAID_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!evs[i].data) return BRAID_EINVAL;
    if (!n) return 0;
    if (BRAID__UNLIKELY(need_ring_c(st) < 0)) return BRAID_ENOMEM;
    if (st->flags & BRAID_STAGE_LOOP_ONLY) BRAID__LOOP_AFFINE(st->dom->loop);
    uint64_t now = st->ring_t || needs_clock(st) ? braid__stage_now(st->dom) : 0;
    bool fn_ok = admit_fn_ok(st, evs, n);
    bool post = false;
    int rc = 0;
    run_kind k = RUN_NONE;
    braid__stage_lock(st);
    rc = check_locked(st, evs, n, now, fn_ok, NULL, &post);
    if (rc == 0) {
        push_locked(st, evs, n, now, &post);
        k = need_run_locked(st);
    }
    braid__stage_unlock(st);
    if (post) braid_loop_post_node(st->dom->loop, &st->note);
    if (rc == 0) {
        count_edge(st, n);
        start_run(st, k);
    }
    return rc;
}

int braid_stage_enqueue(braid_stage *st, braid_stage_event *ev) {
    return braid_stage_enqueue_many(st, ev, 1);
}

bool braid_stage_enqueue_lossy(braid_stage *st, braid_stage_event *ev) {
    int rc = braid_stage_enqueue_many(st, ev, 1);
    if (rc == 0) return true;
    if (st && rc != BRAID_EINVAL) {
        braid__stage_lock(st);
        st->st.dropped++;
        braid__stage_unlock(st);
    }
    braid_stage_event_free(ev);
    return false;
}

/* ---- two-phase enqueue ------------------------------------------------------------------------ */
int braid_stage_prepare(braid_stage *st, const braid_stage_event *evs, size_t n,
                        braid_stage_reservation *out) {
    if (!st || !out || (n && !evs)) return BRAID_EINVAL;
    if (BRAID__UNLIKELY(need_ring_c(st) < 0)) return BRAID_ENOMEM;
    uint64_t now = braid__stage_now(st->dom);
    bool fn_ok = admit_fn_ok(st, evs, n);
    bool post = false;
    int rc = 0;
    double tokens = 0;
    braid__stage_lock(st);
    rc = check_locked(st, evs, n, now, fn_ok, &tokens, &post);
    if (rc == 0) st->reserved += n;
    braid__stage_unlock(st);
    if (post) braid_loop_post_node(st->dom->loop, &st->note);
    if (rc == 0) *out = (braid_stage_reservation){ .stage = st, .n = n, .tokens = tokens };
    return rc;
}

void braid_stage_commit(braid_stage_reservation *res, braid_stage_event *evs) {
    braid_stage *st = res->stage;
    if (!st) return;
    uint64_t now = st->ring_t ? braid__stage_now(st->dom) : 0;
    bool post = false;
    run_kind k;
    braid__stage_lock(st);
    BRAID__ASSERT(st->reserved >= res->n);
    st->reserved -= res->n;
    push_locked(st, evs, res->n, now, &post);
    k = res->n ? need_run_locked(st) : RUN_NONE;
    braid__stage_unlock(st);
    if (post) braid_loop_post_node(st->dom->loop, &st->note);
    if (res->n) count_edge(st, res->n);
    start_run(st, k);
    res->stage = NULL;
}

void braid_stage_abort(braid_stage_reservation *res) {
    braid_stage *st = res->stage;
    if (!st) return;
    bool post = false;
    braid__stage_lock(st);
    BRAID__ASSERT(st->reserved >= res->n);
    st->reserved -= res->n;
    st->st.arrivals -= res->n;   /* never arrived */
    braid__stage_refund_locked(st, res->tokens);
    check_drain_locked(st, &post);
    braid__stage_unlock(st);
    if (post) braid_loop_post_node(st->dom->loop, &st->note);
    res->stage = NULL;
}
