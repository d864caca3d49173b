/* Adapters between components and the rest of braid: a component fed from
 * a Deferred, one that fires a Deferred; and the carousel, a component that
 * builds a new child per message (Kamaelia's Chassis/Carousel.py). */
#include "component/component_internal.h"

#include <string.h>

/* ---- fed from a Deferred ------------------------------------------------------------------ */
/* The state lives until both the component and the Deferred's callback are
 * done with it: the callback may run after the component was freed. */
typedef struct from_d {
    braid_component *c;   /* NULL once the component is freed */
    braid_deferred *d;    /* consumer reference, until the component is freed */
    bool fired;
    braid_result r;
    braid_ctx *ctx;       /* the callback's context when d fired (a reference): what
                           * the component sends is sent in it */
} from_d;

static braid_result from_fired(braid_result r, void *arg) {
    from_d *f = arg;
    if (!f->c) {   /* the component is gone (it cancelled d) */
        braid_result_drop(r);
        braid_free(f);
        return braid_result_ok(NULL);
    }
    f->r = r;
    f->fired = true;
    f->ctx = braid__ctx_capture();   /* the context the callback was added in */
    braid_component_wake(f->c);
    return braid_result_ok(NULL);
}

static int from_sends(braid_component *c, from_d *f);

static int from_run(braid_component *c, void *state) {
    from_d *f = state;
    if (!f->fired) return braid_component_handle_control(c);
    braid_ctx *prev = braid__ctx_swap(f->ctx);
    int rc = from_sends(c, f);
    braid__ctx_swap(prev);
    return rc;
}

static int from_sends(braid_component *c, from_d *f) {
    if (f->r.failure) {
        int code = f->r.failure->code < 0 ? f->r.failure->code : BRAID_EINVAL;
        braid_result_drop(f->r);
        f->r = braid_result_ok(NULL);
        braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_SHUTDOWN, NULL);
        return code;
    }
    if (f->r.value || f->r.dtor) {
        int rc = braid_component_send(c, BRAID_COMPONENT_OUTBOX, f->r.value, f->r.dtor);
        if (rc == BRAID_EBOX_FULL) {
            braid_component_wake_on_pop(c, BRAID_COMPONENT_OUTBOX);
            return BRAID_COMPONENT_IDLE;
        }
        if (rc < 0) return rc;   /* kept: freed with the state */
        f->r = braid_result_ok(NULL);
    }
    if (braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_PRODUCER_FINISHED, NULL) == BRAID_EBOX_FULL) {
        braid_component_wake_on_pop(c, BRAID_COMPONENT_SIGNAL);
        return BRAID_COMPONENT_IDLE;
    }
    return BRAID_COMPONENT_DONE;
}

static void from_state_free(void *state) {
    from_d *f = state;
    f->c = NULL;
    braid_deferred *d = f->d;
    f->d = NULL;
    if (f->fired) {
        braid_result_drop(f->r);
        braid__ctx_release(f->ctx);
        if (d) braid_deferred_unref(d);
        braid_free(f);
        return;
    }
    /* d has not fired: cancelling it runs from_fired, which frees f then —
     * now, or whenever d finally fires */
    braid_deferred_cancel(d);
    braid_deferred_unref(d);
}

int braid_component_new_from_deferred(braid_loop *loop, braid_deferred *d, const braid_component_options *opts,
                                      braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!d || !out) return BRAID_EINVAL;
    from_d *f = braid_calloc(1, sizeof *f);
    if (!f) return BRAID_ENOMEM;
    braid_component_options o = { .name = "from_deferred" };
    if (opts) o = *opts;
    if (!o.name) o.name = "from_deferred";
    o.state_free = from_state_free;
    braid_component *c;
    int rc = braid_component_new(loop, from_run, f, &o, &c);
    if (rc < 0) {
        braid_free(f);
        return rc;
    }
    f->c = c;
    f->d = d;
    rc = braid_deferred_add_both(d, from_fired, f);
    if (rc < 0) {   /* the spill allocation failed: d stays the caller's */
        f->d = NULL;
        f->fired = true;   /* nothing to cancel; free f with the component */
        braid_component_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

/* ---- firing a Deferred ---------------------------------------------------------------------- */
static int to_run(braid_component *c, void *state) {
    braid_deferred **dp = state;
    braid_component_msg m;
    if (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        braid_deferred *d = *dp;
        *dp = NULL;
        braid_deferred_callback(d, m.ptr, m.free);
        return BRAID_COMPONENT_DONE;
    }
    while (braid_component_recv(c, BRAID_COMPONENT_CONTROL, &m) == 0) {
        if (braid_component_is_shutdown_msg(m.ptr)) {
            braid_deferred *d = *dp;
            *dp = NULL;
            braid_deferred_errback(d, braid_failure_new(BRAID_ESHUTDOWN, "component '%s' shut down before a message",
                                                        c->name));
            braid_component_send(c, BRAID_COMPONENT_SIGNAL, m.ptr, NULL);
            return BRAID_COMPONENT_DONE;
        }
        braid_component_msg_free(m);
    }
    return BRAID_COMPONENT_IDLE;
}

static void to_state_free(void *state) {
    braid_deferred **dp = state;
    if (*dp) braid_deferred_errback(*dp, braid_failure_new(BRAID_ECANCELED, "component freed before a message"));
    braid_free(dp);
}

int braid_component_new_to_deferred(braid_loop *loop, const braid_component_options *opts, braid_deferred **d,
                                    braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!d || !out) return BRAID_EINVAL;
    braid_deferred **dp = braid_calloc(1, sizeof *dp);
    if (!dp) return BRAID_ENOMEM;
    *dp = braid_deferred_new(loop);
    if (!*dp) {
        braid_free(dp);
        return BRAID_ENOMEM;
    }
    braid_deferred *consumer = *dp;
    braid_component_options o = { .name = "to_deferred" };
    if (opts) o = *opts;
    if (!o.name) o.name = "to_deferred";
    o.state_free = to_state_free;
    braid_component *c;
    int rc = braid_component_new(loop, to_run, dp, &o, &c);
    if (rc < 0) {
        braid_deferred_callback(consumer, NULL, NULL);   /* the producer's reference */
        braid_deferred_unref(consumer);
        braid_free(dp);
        return rc;
    }
    *d = consumer;
    *out = c;
    return 0;
}

/* ---- carousel ---------------------------------------------------------------------------------- */
typedef struct carousel {
    braid_component_factory_fn factory;
    void *arg;
    braid_component *child;   /* the current one */
    void *shutdown;           /* the shutdown message being passed on, or NULL */
} carousel;

static void carousel_child_end(braid_component *p, braid_component *child) {
    carousel *cs = p->state;
    if (child == cs->child)
        braid_component_send(p, BRAID_COMPONENT_CAROUSEL_REQUEST_NEXT, BRAID_COMPONENT_NEXT, NULL);
    braid__component_notify(p);   /* its run frees the finished child */
}

static const braid__component_hooks carousel_hooks = { .kind = "carousel", .on_child_end = carousel_child_end };

/* Hand what queued in the carousel's own inbox (while it had no child) on. */
static void carousel_forward_queued(braid_component *c) {
    braid__box *own = c->in[BRAID_COMPONENT_INBOX], *dst = own->real;
    if (dst == own) return;
    braid_component_msg m;
    while (own->len) {
        m = own->ring[own->head];
        braid_ctx *sender = own->ctxs[own->head];
        braid_ctx *prev = braid__ctx_swap(sender);   /* forwarded in its sender's context */
        int rc = braid__box_put(dst, m);
        braid__ctx_swap(prev);
        if (rc < 0) return;   /* full: the rest on a later run */
        braid__ctx_release(sender);
        own->head = (own->head + 1) & (own->size - 1);
        own->len--;
    }
}

static int carousel_run(braid_component *c, void *state) {
    carousel *cs = state;
    /* free finished children (never from inside their own end) */
    for (braid_component *k = c->first_child, *next; k; k = next) {
        next = k->next_sibling;
        if (k->done) {
            if (k == cs->child) cs->child = NULL;
            braid_component_free(k);
        }
    }
    braid_component_msg m;
    while (!cs->shutdown && braid_component_recv(c, BRAID_COMPONENT_CAROUSEL_NEXT, &m) == 0) {
        if (cs->child) {   /* replaced */
            braid_component *old = cs->child;
            cs->child = NULL;
            braid_component_free(old);
        }
        braid_component *k;
        int rc = cs->factory(c->loop, m, cs->arg, &k);
        if (rc < 0) return rc;
        if (braid__component_adopt(c, k) < 0) {
            braid_component_free(k);
            return BRAID_ECOMPONENT_STATE;
        }
        braid__box_link(c->in[BRAID_COMPONENT_INBOX], k->in[BRAID_COMPONENT_INBOX]);
        if (!k->out[BRAID_COMPONENT_OUTBOX]->sink)
            braid__box_link(k->out[BRAID_COMPONENT_OUTBOX], c->out[BRAID_COMPONENT_OUTBOX]);
        cs->child = k;
        rc = k->activated ? 0 : braid_component_activate(k);
        if (rc < 0) return rc;
    }
    carousel_forward_queued(c);
    while (!cs->shutdown && braid_component_recv(c, BRAID_COMPONENT_CONTROL, &m) == 0) {
        if (!braid_component_is_shutdown_msg(m.ptr)) {
            braid_component_msg_free(m);
            continue;
        }
        cs->shutdown = m.ptr;
        if (cs->child && !cs->child->done) braid_component_deliver(cs->child, BRAID_COMPONENT_CONTROL, m.ptr, NULL);
    }
    if (cs->shutdown && (!cs->child || cs->child->done)) {
        braid_component_send(c, BRAID_COMPONENT_SIGNAL, cs->shutdown, NULL);
        return BRAID_COMPONENT_DONE;
    }
    return BRAID_COMPONENT_IDLE;
}

int braid_component_carousel_new(braid_loop *loop, braid_component_factory_fn factory, void *arg,
                                 const braid_component_options *opts, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!factory || !out) return BRAID_EINVAL;
    carousel *cs = braid_calloc(1, sizeof *cs);
    if (!cs) return BRAID_ENOMEM;
    cs->factory = factory;
    cs->arg = arg;
    static const braid_component_box_spec in[] = { { "next", "a message to build the next child from", 0 } };
    static const braid_component_box_spec outb[] = { { "requestNext", "NEXT when a child has ended", 0 } };
    braid_component_options o = { .name = "carousel" };
    if (opts) {
        if (opts->name) o.name = opts->name;
        o.capacity = opts->capacity;
    }
    o.inboxes = in;
    o.n_inboxes = 1;
    o.outboxes = outb;
    o.n_outboxes = 1;
    o.state_free = braid_free;
    braid_component *c;
    int rc = braid_component_new(loop, carousel_run, cs, &o, &c);
    if (rc < 0) {
        braid_free(cs);
        return rc;
    }
    c->hooks = &carousel_hooks;
    *out = c;
    return 0;
}
