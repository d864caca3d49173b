/* Components: boxes, collapsed links, the run queue, fibers, ending and
 * freeing. See component_internal.h for how the pieces are kept. */
#include "component/component_internal.h"

#include <string.h>

static const char *const component_names[] = {
    "destination inbox is full",                      /* -4500 */
    "box already linked to a destination",            /* -4501 */
    "no such box",                                    /* -4502 */
    "link would make a cycle",                        /* -4503 */
    "box is not linked",                              /* -4504 */
    "not allowed in the component's state",           /* -4505 */
    "no backplane of that name",                      /* -4506 */
    "message can be neither shared nor copied",       /* -4507 */
};
BRAID__ERROR_DOMAIN(component, "component", BRAID_EBOX_FULL, BRAID_EMSG_NOT_SHARABLE, component_names);

const braid_component_signal_msg braid_component_signal_msgs[3] = {
    { "producer_finished" },
    { "shutdown" },
    { "next" },
};

static const braid_component_box_spec default_in[2] = {
    { "inbox", "data", 0 },
    { "control", "signals: producer_finished, shutdown", 0 },
};
static const braid_component_box_spec default_out[2] = {
    { "outbox", "data", 0 },
    { "signal", "signals, forwarded", 0 },
};

/* ---- the per-loop scheduler ------------------------------------------------------------ */
static void sched_free(braid_loop *loop, void *v) {
    BRAID__UNUSED(loop);
    braid_free(v);
}

static bool sched_report(braid_loop *loop, void *v) {
    braid__sched *s = v;
    if (!s->count) return false;
    for (braid_component *c = s->all; c; c = c->all_next)
        braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: component '%s' still open", c->name);
    return true;
}

static braid_loop_key sched_key = BRAID_LOOP_KEY_INIT("component", sched_free, sched_report);

static void sched_run(void *arg);

braid__sched *braid__component_sched(braid_loop *loop) {
    braid__sched *s = braid_loop_data(loop, &sched_key);
    if (s) return s;
    s = braid_calloc(1, sizeof *s);
    if (!s) return NULL;
    s->loop = loop;
    s->soon.fn = sched_run;
    s->soon.arg = s;
    if (braid_loop_set_data(loop, &sched_key, s) < 0) {
        braid_free(s);
        return NULL;
    }
    return s;
}

/* The scheduler's run is queued in no context: whoever happens to wake the
 * first component of a burst must not lend its context to every run of
 * it. A component's run starts in none; each message received brings its
 * own (take_ctx). */
static void sched_kick(braid__sched *s) {
    if (s->scheduled) return;
    s->scheduled = true;
    braid_ctx *prev = braid__ctx_swap(NULL);
    braid_loop_soon_node(s->loop, &s->soon);
    braid__ctx_swap(prev);
}

static void runq_push(braid_component *c) {
    braid__sched *s = c->sched;
    BRAID__ASSERT(!c->queued);
    c->queued = true;
    c->run_next = NULL;
    c->run_prev = s->tail;
    if (s->tail) s->tail->run_next = c;
    else s->head = c;
    s->tail = c;
    sched_kick(s);
}

static void runq_remove(braid_component *c) {
    braid__sched *s = c->sched;
    if (!c->queued) return;
    if (c->run_prev) c->run_prev->run_next = c->run_next;
    else s->head = c->run_next;
    if (c->run_next) c->run_next->run_prev = c->run_prev;
    else s->tail = c->run_prev;
    c->queued = false;
    c->run_prev = c->run_next = NULL;
}

static void really_free(braid_component *c);

static void run_one(braid_component *c) {
    c->running = true;
    c->wake_pending = false;
    c->stats.runs++;
    braid_ctx *ambient = braid__ctx_cur;
    int rc = c->run(c, c->state);
    c->running = false;
    braid__ctx_cur = ambient;     /* the last received message's context ends with the run */
    braid__ctx_release(c->msg_ctx);
    c->msg_ctx = NULL;
    if (c->free_pending) {
        really_free(c);
        return;
    }
    if (c->done) return;   /* ended from inside (a composite's last child ...) */
    if (rc == BRAID_COMPONENT_IDLE) {
        if (c->wake_pending) runq_push(c);
    } else if (rc == BRAID_COMPONENT_AGAIN) {
        runq_push(c);
    } else if (rc == BRAID_COMPONENT_DONE) {
        braid__component_end(c, 0);
    } else {
        braid__component_end(c, rc < 0 ? rc : BRAID_EINVAL);
    }
}

/* The ready-phase call: run queued components, those queued meanwhile too
 * (a burst flows down a chain in one phase), up to a budget. */
static void sched_run(void *arg) {
    braid__sched *s = arg;
    s->scheduled = false;
    unsigned budget = BRAID_COMPONENT_RUN_BUDGET;
    while (s->head && budget--) {
        braid_component *c = s->head;
        runq_remove(c);
        run_one(c);
    }
    if (s->head) sched_kick(s);
}

void braid__component_notify(braid_component *c) {
    c->wake_pending = true;
    if (c->done || !c->activated) return;
    if (c->kind == BRAID__C_CALLBACK) {
        if (!c->queued && !c->running) runq_push(c);
    } else if (c->kind == BRAID__C_FIBER) {
        if (c->parked) braid__fiber_unpark(c->fiber, 0);
    }
}

void braid_component_wake(braid_component *c) {
    BRAID__LOOP_AFFINE(c->loop);
    braid__component_notify(c);
}

/* ---- boxes -------------------------------------------------------------------------------- */
static void box_init(braid__box *b, braid_component *owner, const braid_component_box_spec *spec, bool inbox,
                     uint32_t default_cap) {
    memset(b, 0, sizeof *b);
    b->owner = owner;
    b->inbox = inbox;
    b->name = spec->name;
    b->doc = spec->doc;
    b->cap = spec->capacity ? spec->capacity : default_cap;
    b->real = inbox ? b : NULL;
}

static int box_grow(braid__box *ib) {
    uint32_t nsize = ib->size ? ib->size * 2 : 8;
    braid_component_msg *r = braid_malloc((size_t)nsize * sizeof *r);
    braid_ctx **cs = braid_malloc((size_t)nsize * sizeof *cs);
    if (!r || !cs) {
        braid_free(r);
        braid_free(cs);
        return BRAID_ENOMEM;
    }
    for (uint32_t i = 0; i < ib->len; i++) {
        r[i] = ib->ring[(ib->head + i) & (ib->size - 1)];
        cs[i] = ib->ctxs[(ib->head + i) & (ib->size - 1)];
    }
    braid_free(ib->ring);
    braid_free(ib->ctxs);
    ib->ring = r;
    ib->ctxs = cs;
    ib->size = nsize;
    ib->head = 0;
    return 0;
}

static void box_unwait(braid__box *ob) {
    braid__box *ib = ob->waiting_on;
    if (!ib) return;
    if (ob->wait_prev) ob->wait_prev->wait_next = ob->wait_next;
    else ib->waiters = ob->wait_next;
    if (ob->wait_next) ob->wait_next->wait_prev = ob->wait_prev;
    ob->wait_next = ob->wait_prev = ob->waiting_on = NULL;
}

static void box_wake_waiters(braid__box *ib) {
    while (ib->waiters) {
        braid__box *ob = ib->waiters;
        box_unwait(ob);
        braid__component_notify(ob->owner);
    }
}

void braid__box_wait(braid__box *ob) {
    braid__box *ib = ob->real;
    if (ob->waiting_on == ib && ib) return;
    box_unwait(ob);
    if (!ib || ib->len < ib->cap) {        /* room (or nowhere to wait): wake now */
        braid__component_notify(ob->owner);
        return;
    }
    ob->waiting_on = ib;
    ob->wait_prev = NULL;
    ob->wait_next = ib->waiters;
    if (ib->waiters) ib->waiters->wait_prev = ob;
    ib->waiters = ob;
}

int braid__box_put(braid__box *ib, braid_component_msg m) {
    if (BRAID__UNLIKELY(ib->len >= ib->cap)) return BRAID_EBOX_FULL;
    if (BRAID__UNLIKELY(ib->len == ib->size)) {
        int rc = box_grow(ib);
        if (rc < 0) return rc;
    }
    uint32_t at = (ib->head + ib->len) & (ib->size - 1);
    ib->ring[at] = m;
    ib->ctxs[at] = braid__ctx_capture();
    ib->len++;
    ib->received++;
    ib->owner->stats.received++;
    braid__component_notify(ib->owner);
    return 0;
}

static void box_drain(braid__box *ib) {
    while (ib->len) {
        braid_component_msg m = ib->ring[ib->head];
        braid__ctx_release(ib->ctxs[ib->head]);
        ib->head = (ib->head + 1) & (ib->size - 1);
        ib->len--;
        braid_component_msg_free(m);
    }
}

/* Where b's chain ends: the last box, if it is an inbox. */
static braid__box *chain_end(braid__box *b) {
    while (b->sink) b = b->sink;
    return b->inbox ? b : NULL;
}

/* Point b and everything upstream of it at r. A producer waiting on an
 * inbox it no longer leads to is woken to retry against the new one. */
static void retarget(braid__box *b, braid__box *r) {
    if (b->real != r) {
        b->real = r;
        if (b->waiting_on) {
            box_unwait(b);
            braid__component_notify(b->owner);
        }
    }
    for (braid__box *s = b->sources; s; s = s->next_source) retarget(s, r);
}

int braid__box_link(braid__box *src, braid__box *dst) {
    if (src->sink) return BRAID_EBOX_LINKED;
    for (braid__box *b = dst; b; b = b->sink)
        if (b == src) return BRAID_ELINK_CYCLE;
    src->sink = dst;
    src->next_source = dst->sources;
    dst->sources = src;
    retarget(src, chain_end(dst));
    return 0;
}

void braid__box_unlink(braid__box *src) {
    braid__box *dst = src->sink;
    if (!dst) return;
    for (braid__box **p = &dst->sources; *p; p = &(*p)->next_source) {
        if (*p == src) {
            *p = src->next_source;
            break;
        }
    }
    src->sink = NULL;
    src->next_source = NULL;
    retarget(src, src->inbox ? src : NULL);
}

/* Cut every link into and out of b, and its waits. */
static void box_detach(braid__box *b) {
    braid__box_unlink(b);
    while (b->sources) braid__box_unlink(b->sources);
    box_unwait(b);
    box_wake_waiters(b);
}

/* ---- creating ------------------------------------------------------------------------------ */
static int find_box(braid__box *const *boxes, uint32_t n, const char *name) {
    if (!name) return BRAID_ENO_BOX;
    for (uint32_t i = 0; i < n; i++)
        if (strcmp(boxes[i]->name, name) == 0) return (int)i;
    return BRAID_ENO_BOX;
}

int braid__component_create(braid_loop *loop, enum braid__ckind kind, const braid_component_options *opts,
                            braid_component **out) {
    static const braid_component_options none;
    if (!opts) opts = &none;
    if ((opts->n_inboxes && !opts->inboxes) || (opts->n_outboxes && !opts->outboxes)) return BRAID_EINVAL;
    for (size_t i = 0; i < opts->n_inboxes; i++)
        if (!opts->inboxes[i].name) return BRAID_EINVAL;
    for (size_t i = 0; i < opts->n_outboxes; i++)
        if (!opts->outboxes[i].name) return BRAID_EINVAL;
    braid__sched *s = braid__component_sched(loop);
    if (!s) return BRAID_ENOMEM;
    uint32_t n_in = (uint32_t)(2 + opts->n_inboxes), n_out = (uint32_t)(2 + opts->n_outboxes);
    uint32_t cap = opts->capacity ? opts->capacity : BRAID_COMPONENT_DEFAULT_CAPACITY;
    int rc = BRAID_ENOMEM;
    /* one block: the component, its box pointers, its boxes (fewer cache
     * lines and allocations per component; a graph may have thousands) */
    size_t nb = (size_t)n_in + n_out;
    braid_component *c = braid_calloc(1, sizeof *c + nb * sizeof(braid__box *) + nb * sizeof(braid__box));
    if (!c) return BRAID_ENOMEM;
    c->in = (braid__box **)(void *)(c + 1);
    c->out = c->in + n_in;
    c->out_inline = true;
    c->boxes = (braid__box *)(void *)(c->out + n_out);
    c->name = braid_strdup(opts->name ? opts->name : "component");
    if (!c->name) goto nomem;
    c->loop = loop;
    c->sched = s;
    c->kind = kind;
    c->n_in = n_in;
    c->n_out = c->n_out_alloc = n_out;
    c->stack_size = opts->stack_size;
    c->state_free = opts->state_free;
    for (uint32_t i = 0; i < n_in; i++) {
        c->in[i] = &c->boxes[i];
        box_init(c->in[i], c, i < 2 ? &default_in[i] : &opts->inboxes[i - 2], true, cap);
        if (find_box(c->in, i, c->in[i]->name) >= 0) goto inval;
    }
    for (uint32_t i = 0; i < n_out; i++) {
        c->out[i] = &c->boxes[n_in + i];
        box_init(c->out[i], c, i < 2 ? &default_out[i] : &opts->outboxes[i - 2], false, cap);
        if (find_box(c->out, i, c->out[i]->name) >= 0) goto inval;
    }
    c->all_next = s->all;
    if (s->all) s->all->all_prev = c;
    s->all = c;
    s->count++;
    braid_introspect_add(loop, &c->inode, "components", braid__component_describe, c);
    *out = c;
    return 0;
inval:
    rc = BRAID_EINVAL;
nomem:
    braid_free(c->name);
    braid_free(c);
    return rc;
}

/* The public constructors of the two plain kinds. */
static int component_new(braid_loop *loop, enum braid__ckind kind, braid_component_run_fn run,
                         braid_component_fiber_fn fn, void *state, const braid_component_options *opts,
                         braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if ((!run && !fn) || !out) return BRAID_EINVAL;
    braid_component *c;
    int rc = braid__component_create(loop, kind, opts, &c);
    if (rc < 0) return rc;
    c->run = run;
    c->fiber_fn = fn;
    c->state = state;
    *out = c;
    return 0;
}

int braid_component_new(braid_loop *loop, braid_component_run_fn run, void *state,
                        const braid_component_options *opts, braid_component **out) {
    return component_new(loop, BRAID__C_CALLBACK, run, NULL, state, opts, out);
}

int braid_component_new_fiber(braid_loop *loop, braid_component_fiber_fn fn, void *state,
                              const braid_component_options *opts, braid_component **out) {
    return component_new(loop, BRAID__C_FIBER, NULL, fn, state, opts, out);
}

braid__box *braid__component_add_outbox(braid_component *c, const char *name) {
    if (c->n_out == c->n_out_alloc) {
        uint32_t n = c->n_out_alloc * 2;
        braid__box **o = braid_realloc(c->out_inline ? NULL : c->out, (size_t)n * sizeof *o);
        if (!o) return NULL;
        if (c->out_inline) memcpy(o, c->out, c->n_out * sizeof *o);
        c->out = o;
        c->out_inline = false;
        c->n_out_alloc = n;
    }
    braid__box *b = braid_malloc(sizeof *b);
    if (!b) return NULL;
    braid_component_box_spec spec = { name, "a destination", 0 };
    box_init(b, c, &spec, false, 0);
    b->dynamic = true;
    c->out[c->n_out++] = b;
    return b;
}

void braid__component_remove_outbox(braid_component *c, braid__box *b) {
    BRAID__ASSERT(b->dynamic);
    box_detach(b);
    for (uint32_t i = 0; i < c->n_out; i++) {
        if (c->out[i] == b) {
            memmove(&c->out[i], &c->out[i + 1], (c->n_out - i - 1) * sizeof *c->out);
            c->n_out--;
            break;
        }
    }
    braid_free(b);
}

/* ---- fibers ------------------------------------------------------------------------------- */
static braid_result fiber_main(void *arg) {
    braid_component *c = arg;
    c->fiber = braid_fiber_current(c->loop);
    c->fiber_started = true;
    c->fiber_alive = true;
    int rc = c->fiber_fn(c, c->state);
    c->fiber_alive = false;
    braid__ctx_release(c->msg_ctx);
    c->msg_ctx = NULL;
    c->parked = false;
    if (c->free_pending) really_free(c);
    else braid__component_end(c, rc);
    return braid_result_ok(NULL);
}

/* The spawn Deferred's result is consumed here; c may be gone already. */
static braid_result fiber_result(braid_result r, void *arg) {
    BRAID__UNUSED(arg);
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static int fiber_wait(braid_component *c, uint64_t timeout) {
    if (braid_fiber_current(c->loop) != c->fiber || !c->fiber) return BRAID_ENOT_IN_FIBER;
    if (c->free_pending) return BRAID_ECANCELED;
    if (c->wake_pending) {
        c->wake_pending = false;
        return 0;
    }
    if (timeout == 0) return BRAID_ETIMEDOUT;
    c->parked = true;
    int rc = braid__fiber_park(c->loop, timeout);
    c->parked = false;
    c->stats.runs++;
    if (c->free_pending) return BRAID_ECANCELED;
    if (rc == 0) c->wake_pending = false;
    return rc;
}

int braid_component_wait(braid_component *c, uint64_t timeout) {
    BRAID__LOOP_AFFINE(c->loop);
    return fiber_wait(c, timeout);
}

/* A deadline from a timeout, and what is left of it. */
static uint64_t deadline_of(braid_loop *loop, uint64_t timeout) {
    if (timeout == BRAID_FOREVER) return BRAID_FOREVER;
    uint64_t now = braid_loop_now_fresh(loop);
    return timeout > BRAID_FOREVER - now ? BRAID_FOREVER - 1 : now + timeout;
}
static uint64_t left_of(braid_loop *loop, uint64_t deadline) {
    if (deadline == BRAID_FOREVER) return BRAID_FOREVER;
    uint64_t now = braid_loop_now_fresh(loop);
    return deadline > now ? deadline - now : 0;
}

int braid_component_recv_wait(braid_component *c, int box, braid_component_msg *out, uint64_t timeout) {
    BRAID__LOOP_AFFINE(c->loop);
    uint64_t deadline = deadline_of(c->loop, timeout);
    for (;;) {
        int rc = braid_component_recv(c, box, out);
        if (rc != BRAID_EAGAIN) return rc;
        /* a signal on control is never waited past */
        if (box != BRAID_COMPONENT_CONTROL && c->in[BRAID_COMPONENT_CONTROL]->len) return BRAID_EAGAIN;
        rc = fiber_wait(c, left_of(c->loop, deadline));
        if (rc < 0) return rc;
    }
}

int braid_component_send_wait(braid_component *c, int box, void *ptr, void (*free_fn)(void *),
                              uint64_t timeout) {
    BRAID__LOOP_AFFINE(c->loop);
    uint64_t deadline = deadline_of(c->loop, timeout);
    for (;;) {
        int rc = braid_component_send(c, box, ptr, free_fn);
        if (rc != BRAID_EBOX_FULL) return rc;
        braid__box_wait(c->out[box]);
        rc = fiber_wait(c, left_of(c->loop, deadline));
        if (rc < 0) {
            box_unwait(c->out[box]);
            return rc;
        }
    }
}

/* ---- activating and ending ---------------------------------------------------------------- */
int braid_component_activate(braid_component *c) {
    BRAID__LOOP_AFFINE(c->loop);
    if (c->activated || c->done) return BRAID_ECOMPONENT_STATE;
    switch (c->kind) {
    case BRAID__C_CALLBACK: {
        int rc = braid__component_threaded_start(c);
        if (rc < 0) return rc;
        c->activated = true;
        runq_push(c);
        return 0;
    }
    case BRAID__C_FIBER: {
        braid_fiber_options fo = { .stack_size = c->stack_size, .name = c->name };
        braid_deferred *d = braid_fiber_spawn(c->loop, fiber_main, c, &fo);
        if (!d) return BRAID_ENOMEM;
        int rc = braid_deferred_add_both(d, fiber_result, NULL);
        if (rc < 0) {   /* cannot happen with inline slots; be safe */
            braid_deferred_cancel(d);
            braid_deferred_unref(d);
            return rc;
        }
        c->fiber_d = d;
        c->activated = true;
        return 0;
    }
    case BRAID__C_COMPOSITE:
        c->activated = true;
        c->live_children = 0;
        for (braid_component *k = c->first_child; k; k = k->next_sibling)
            if (!k->done) c->live_children++;
        for (braid_component *k = c->first_child; k; k = k->next_sibling) {
            if (k->activated) continue;
            int rc = braid_component_activate(k);
            if (rc < 0) {
                /* the child cannot run: it ends with the error, so does the composite */
                braid__component_end(k, rc);
            }
        }
        if (!c->live_children && !c->done) braid__component_end(c, 0);
        return 0;
    }
    return BRAID_EINVAL;
}

void braid__component_end(braid_component *c, int code) {
    if (c->done) return;
    c->done = true;
    c->result = code;
    runq_remove(c);
    for (size_t i = 0; i < c->n_done_ds; i++) {
        braid_deferred *d = c->done_ds[i];
        if (code == 0) braid_deferred_callback(d, NULL, NULL);
        else braid_deferred_errback(d, braid_failure_new(code, "component '%s' ended", c->name));
    }
    braid_free(c->done_ds);
    c->done_ds = NULL;
    c->n_done_ds = 0;
    braid_component *p = c->parent;
    if (p && !p->freeing && p->hooks && p->hooks->on_child_end) {
        p->hooks->on_child_end(p, c);
    } else if (p && p->kind == BRAID__C_COMPOSITE && p->activated && !p->done && !p->freeing) {
        if (code && !p->result) p->result = code;
        BRAID__ASSERT(p->live_children > 0);
        if (--p->live_children == 0) braid__component_end(p, p->result);
    }
}

braid_deferred *braid_component_when_done(braid_component *c) {
    BRAID__LOOP_AFFINE(c->loop);
    if (c->done) {
        if (c->result == 0) return braid_deferred_succeed(c->loop, NULL, NULL);
        return braid_deferred_fail(c->loop, braid_failure_new(c->result, "component '%s' ended", c->name));
    }
    braid_deferred **v = braid_realloc(c->done_ds, (c->n_done_ds + 1) * sizeof *v);
    if (!v) return NULL;
    c->done_ds = v;
    braid_deferred *d = braid_deferred_new(c->loop);
    if (!d) return NULL;
    v[c->n_done_ds++] = d;
    return d;
}

bool braid_component_is_done(const braid_component *c) { return c->done; }
int braid_component_result(const braid_component *c) { return c->result; }
const char *braid_component_name(const braid_component *c) { return c->name; }
braid_loop *braid_component_loop(const braid_component *c) { return c->loop; }
void *braid_component_state(const braid_component *c) { return c->state; }

int braid_component_inbox(const braid_component *c, const char *name) { return find_box(c->in, c->n_in, name); }
int braid_component_outbox(const braid_component *c, const char *name) {
    return find_box(c->out, c->n_out, name);
}

/* ---- composites' children ------------------------------------------------------------------- */
int braid__component_adopt(braid_component *parent, braid_component *child) {
    if (child->parent || child == parent || child->loop != parent->loop) return BRAID_ECOMPONENT_STATE;
    child->parent = parent;
    child->next_sibling = NULL;
    if (parent->last_child) parent->last_child->next_sibling = child;
    else parent->first_child = child;
    parent->last_child = child;
    return 0;
}

static void detach_from_parent(braid_component *c) {
    braid_component *p = c->parent;
    if (!p) return;
    braid_component **pp = &p->first_child;
    braid_component *prev = NULL;
    while (*pp && *pp != c) {
        prev = *pp;
        pp = &(*pp)->next_sibling;
    }
    if (*pp) *pp = c->next_sibling;
    if (p->last_child == c) p->last_child = prev;
    c->parent = NULL;
    c->next_sibling = NULL;
    if (p->kind == BRAID__C_COMPOSITE && p->activated && !p->done && !p->freeing && !c->done) {
        if (--p->live_children == 0) braid__component_end(p, p->result);
    }
}

/* ---- freeing ---------------------------------------------------------------------------------- */
static void really_free(braid_component *c) {
    braid__sched *s = c->sched;
    if (c->all_prev) c->all_prev->all_next = c->all_next;
    else s->all = c->all_next;
    if (c->all_next) c->all_next->all_prev = c->all_prev;
    s->count--;
    braid_introspect_remove(c->loop, &c->inode);
    /* nothing left to run: take the scheduler's ready call back, so a loop
     * destroyed right after its last component is freed has none left */
    if (!s->head && s->scheduled && braid_loop_soon_cancel(s->loop, &s->soon)) s->scheduled = false;
    for (uint32_t i = 0; i < c->n_in; i++) {
        box_drain(c->in[i]);
        braid_free(c->in[i]->ring);
        braid_free(c->in[i]->ctxs);
    }
    for (uint32_t i = 0; i < c->n_out; i++)
        if (c->out[i]->dynamic) braid_free(c->out[i]);
    if (c->fiber_d) braid_deferred_unref(c->fiber_d);
    if (c->state_free) c->state_free(c->state);
    braid_free(c->done_ds);
    braid_free(c->child_name);
    braid_free(c->name);
    if (!c->out_inline) braid_free(c->out);
    braid_free(c);
}

void braid_component_free(braid_component *c) {
    if (!c) return;
    BRAID__LOOP_AFFINE(c->loop);
    if (c->freeing) return;
    c->freeing = true;
    if (c->hooks && c->hooks->on_free) c->hooks->on_free(c);
    /* children first: their links into this composite go with them */
    while (c->first_child) {
        braid_component *k = c->first_child;
        c->first_child = k->next_sibling;
        k->parent = NULL;
        braid_component_free(k);
    }
    c->last_child = NULL;
    detach_from_parent(c);
    for (uint32_t i = 0; i < c->n_in; i++) box_detach(c->in[i]);
    for (uint32_t i = 0; i < c->n_out; i++) box_detach(c->out[i]);
    /* messages still queued go now: senders may hold references into them */
    for (uint32_t i = 0; i < c->n_in; i++) box_drain(c->in[i]);
    runq_remove(c);
    if (!c->done) braid__component_end(c, BRAID_ECANCELED);
    if (c->running) {           /* freed from inside its own callback */
        c->free_pending = true;
        return;
    }
    if (c->kind == BRAID__C_FIBER && c->fiber_d) {
        if (c->fiber_alive) {
            c->free_pending = true;            /* fiber_main frees it on return */
            braid_deferred_cancel(c->fiber_d);
            return;
        }
        if (!c->fiber_started) braid_deferred_cancel(c->fiber_d);   /* it never runs */
    }
    really_free(c);
}

/* ---- sending and receiving ------------------------------------------------------------------ */
int braid_component_send(braid_component *c, int box, void *ptr, void (*free_fn)(void *)) {
    BRAID__LOOP_AFFINE(c->loop);
    if (BRAID__UNLIKELY((unsigned)box >= c->n_out)) return BRAID_ENO_BOX;
    braid__box *ib = c->out[box]->real;
    if (!ib) {
        c->stats.dropped++;
        if (free_fn) free_fn(ptr);
        return 0;
    }
    int rc = braid__box_put(ib, (braid_component_msg){ ptr, free_fn });
    if (BRAID__UNLIKELY(rc < 0)) {
        if (rc == BRAID_EBOX_FULL) c->stats.full++;
        return rc;
    }
    c->stats.sent++;
    return 0;
}

int braid_component_send_many(braid_component *c, int box, const braid_component_msg *msgs, size_t n) {
    BRAID__LOOP_AFFINE(c->loop);
    if ((unsigned)box >= c->n_out) return BRAID_ENO_BOX;
    braid__box *ib = c->out[box]->real;
    size_t i = 0;
    if (!ib) {
        for (; i < n; i++) braid_component_msg_free(msgs[i]);
        c->stats.dropped += n;
        return (int)n;
    }
    for (; i < n; i++) {
        if (braid__box_put(ib, msgs[i]) < 0) {
            c->stats.full += ib->len >= ib->cap;
            break;
        }
    }
    c->stats.sent += i;
    return (int)i;
}

int braid_component_deliver(braid_component *c, int box, void *ptr, void (*free_fn)(void *)) {
    BRAID__LOOP_AFFINE(c->loop);
    if ((unsigned)box >= c->n_in) return BRAID_ENO_BOX;
    if (c->freeing) return BRAID_ECOMPONENT_STATE;
    return braid__box_put(c->in[box]->real, (braid_component_msg){ ptr, free_fn });
}

/* A message received by c brings its sender's context (ctx, a reference):
 * inside c's run (its callback, or its fiber) that context becomes current
 * until the next receive or the end of the run; received from outside a
 * run, it is dropped. With no context anywhere: two thread-local stores. */
static inline void take_ctx(braid_component *c, braid_ctx *ctx) {
    bool inside = c->running || (c->fiber_alive && braid_fiber_current(c->loop) == c->fiber);
    if (BRAID__UNLIKELY(!inside)) {
        braid__ctx_release(ctx);
        return;
    }
    braid_ctx *old = c->msg_ctx;
    c->msg_ctx = ctx;
    braid__ctx_cur = ctx;
    braid__ctx_release(old);
}

int braid_component_recv(braid_component *c, int box, braid_component_msg *out) {
    BRAID__LOOP_AFFINE(c->loop);
    if (BRAID__UNLIKELY((unsigned)box >= c->n_in)) return BRAID_ENO_BOX;
    braid__box *ib = c->in[box];
    if (!ib->len) return BRAID_EAGAIN;
    *out = ib->ring[ib->head];
    take_ctx(c, ib->ctxs[ib->head]);
    ib->head = (ib->head + 1) & (ib->size - 1);
    ib->len--;
    if (BRAID__UNLIKELY(ib->waiters != NULL)) box_wake_waiters(ib);
    return 0;
}

int braid_component_recv_many(braid_component *c, int box, braid_component_msg *out, size_t max) {
    BRAID__LOOP_AFFINE(c->loop);
    if ((unsigned)box >= c->n_in) return BRAID_ENO_BOX;
    braid__box *ib = c->in[box];
    size_t n = ib->len < max ? ib->len : max;
    for (size_t i = 0; i < n; i++) {
        out[i] = ib->ring[ib->head];
        take_ctx(c, ib->ctxs[ib->head]);
        ib->head = (ib->head + 1) & (ib->size - 1);
    }
    ib->len -= (uint32_t)n;
    if (n && ib->waiters) box_wake_waiters(ib);
    return (int)n;
}

size_t braid_component_pending(const braid_component *c, int box) {
    if ((unsigned)box >= c->n_in) return 0;
    return c->in[box]->len;
}

int braid_component_wake_on_pop(braid_component *c, int box) {
    BRAID__LOOP_AFFINE(c->loop);
    if ((unsigned)box >= c->n_out) return BRAID_ENO_BOX;
    braid__box_wait(c->out[box]);
    return 0;
}

int braid_component_handle_control(braid_component *c) {
    braid_component_msg m;
    int last = BRAID_COMPONENT_IDLE;
    while (braid_component_recv(c, BRAID_COMPONENT_CONTROL, &m) == 0) {
        if (braid_component_is_shutdown_msg(m.ptr)) {
            if (braid_component_send(c, BRAID_COMPONENT_SIGNAL, m.ptr, NULL) < 0)
                braid__log(c->loop, BRAID_LOG_WARN, "component '%s': signal box full, shutdown not forwarded",
                           c->name);
            last = BRAID_COMPONENT_DONE;
            break;
        }
        braid_component_msg_free(m);
    }
    return last;
}

/* ---- links ------------------------------------------------------------------------------------ */
static int box_of(braid_component *c, const char *name, bool inbox, braid__box **out) {
    int i = inbox ? find_box(c->in, c->n_in, name) : find_box(c->out, c->n_out, name);
    if (i < 0) return i;
    *out = inbox ? c->in[i] : c->out[i];
    return 0;
}

int braid_component_link(braid_component *src, const char *src_box, braid_component *dst, const char *dst_box,
                         int kind) {
    BRAID__LOOP_AFFINE(src->loop);
    if (src->loop != dst->loop) return BRAID_EINVAL;
    if (kind < BRAID_COMPONENT_LINK_NORMAL || kind > BRAID_COMPONENT_LINK_PASSTHROUGH_OUT) return BRAID_EINVAL;
    braid__box *s, *d;
    int rc = box_of(src, src_box, kind == BRAID_COMPONENT_LINK_PASSTHROUGH_IN, &s);
    if (rc < 0) return rc;
    rc = box_of(dst, dst_box, kind != BRAID_COMPONENT_LINK_PASSTHROUGH_OUT, &d);
    if (rc < 0) return rc;
    return braid__box_link(s, d);
}

int braid_component_unlink(braid_component *src, const char *src_box, int kind) {
    BRAID__LOOP_AFFINE(src->loop);
    braid__box *s;
    int rc = box_of(src, src_box, kind == BRAID_COMPONENT_LINK_PASSTHROUGH_IN, &s);
    if (rc < 0) return rc;
    if (!s->sink) return BRAID_ENOT_LINKED;
    braid__box_unlink(s);
    return 0;
}

/* ---- statistics ------------------------------------------------------------------------------- */
void braid_component_stats(const braid_component *c, struct braid_component_stats *out) { *out = c->stats; }

size_t braid_component_count(braid_loop *loop) {
    braid__sched *s = braid_loop_data(loop, &sched_key);
    return s ? s->count : 0;
}
