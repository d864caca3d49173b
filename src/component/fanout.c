/* Fan-out: shared messages, the splitter, backplanes (Kamaelia's
 * Util/Splitter.py PlugSplitter and Util/Backplane.py). Links have one
 * destination each; this is the one place a message goes to many. */
#include "component/component_internal.h"

#include <stddef.h>
#include <string.h>

/* ---- shared messages ------------------------------------------------------------------- */
typedef struct shared_hdr {
    size_t refs;
    void (*dtor)(void *payload);
    max_align_t align[];
} shared_hdr;

static shared_hdr *hdr_of(void *payload) { return (shared_hdr *)((char *)payload - offsetof(shared_hdr, align)); }

void *braid_component_shared_new(size_t size, void (*dtor)(void *payload)) {
    if (size > SIZE_MAX - sizeof(shared_hdr)) return NULL;
    shared_hdr *h = braid_calloc(1, sizeof *h + size);
    if (!h) return NULL;
    h->refs = 1;
    h->dtor = dtor;
    return h->align;
}

void *braid_component_shared_ref(void *payload) {
    hdr_of(payload)->refs++;
    return payload;
}

void braid_component_shared_unref(void *payload) {
    if (!payload) return;
    shared_hdr *h = hdr_of(payload);
    BRAID__ASSERT(h->refs > 0);
    if (--h->refs) return;
    if (h->dtor) h->dtor(payload);
    braid_free(h);
}

/* ---- splitter ---------------------------------------------------------------------------- */
typedef struct splitter {
    void *(*dup)(void *ptr);
    braid_component_msg cur;   /* the message being handed out */
    braid_ctx *ctx;            /* its sender's context (a reference): a copy sent on a
                                * later run, after a full box, is sent in it too */
    bool holding;
    uint32_t next;             /* next outbox index to deliver cur to */
} splitter;

static const braid__component_hooks splitter_hooks = { .kind = "splitter" };

/* A copy of m for one destination; false if it cannot be shared or copied. */
static bool copy_for(splitter *sp, braid_component_msg m, braid_component_msg *out) {
    if (!m.free) {
        *out = m;
        return true;
    }
    if (m.free == braid_component_shared_unref) {
        *out = (braid_component_msg){ braid_component_shared_ref(m.ptr), m.free };
        return true;
    }
    if (sp->dup) {
        void *p = sp->dup(m.ptr);
        if (!p) return false;
        *out = (braid_component_msg){ p, m.free };
        return true;
    }
    return false;
}

static int splitter_run(braid_component *c, void *state) {
    splitter *sp = state;
    for (;;) {
        if (!sp->holding) {
            if (braid_component_recv(c, BRAID_COMPONENT_INBOX, &sp->cur) < 0) break;
            sp->holding = true;
            sp->next = 0;
            sp->ctx = braid__ctx_capture();
            if (sp->cur.free && sp->cur.free != braid_component_shared_unref && !sp->dup) {
                braid__log(c->loop, BRAID_LOG_WARN, "splitter '%s': %s, dropped", c->name,
                           braid_strerror(BRAID_EMSG_NOT_SHARABLE));
                c->stats.dropped++;
                braid_component_msg_free(sp->cur);
                braid__ctx_release(sp->ctx);
                sp->ctx = NULL;
                sp->holding = false;
                continue;
            }
        }
        braid_ctx *prev = braid__ctx_swap(sp->ctx);
        /* destinations: outbox 0 (its own "outbox"), then 2.. (added ones) */
        while (sp->next < c->n_out) {
            uint32_t i = sp->next;
            if (i == BRAID_COMPONENT_SIGNAL || !c->out[i]->real) {
                sp->next++;
                continue;
            }
            braid_component_msg m;
            if (!copy_for(sp, sp->cur, &m)) {   /* dup ran out of memory: this one misses it */
                c->stats.dropped++;
                sp->next++;
                continue;
            }
            int rc = braid__box_put(c->out[i]->real, m);
            if (rc == BRAID_EBOX_FULL) {
                braid__ctx_swap(prev);
                braid_component_msg_free(m);   /* the copy or reference made for it */
                c->stats.full++;
                braid__box_wait(c->out[i]);
                return BRAID_COMPONENT_IDLE;
            }
            if (rc < 0) {
                braid_component_msg_free(m);   /* the copy or reference made for it */
                c->stats.dropped++;
            } else {
                c->stats.sent++;
            }
            sp->next++;
        }
        braid__ctx_swap(prev);
        braid_component_msg_free(sp->cur);
        braid__ctx_release(sp->ctx);
        sp->ctx = NULL;
        sp->holding = false;
    }
    return braid_component_handle_control(c);
}

static void splitter_state_free(void *state) {
    splitter *sp = state;
    if (sp->holding) {
        braid_component_msg_free(sp->cur);
        braid__ctx_release(sp->ctx);
    }
    braid_free(sp);
}

int braid_component_splitter_new(braid_loop *loop, const braid_component_splitter_options *opts,
                                 braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!out) return BRAID_EINVAL;
    splitter *sp = braid_calloc(1, sizeof *sp);
    if (!sp) return BRAID_ENOMEM;
    braid_component_options o = { .name = "splitter" };
    if (opts) {
        if (opts->base.name) o.name = opts->base.name;
        o.capacity = opts->base.capacity;
        sp->dup = opts->dup;
    }
    o.state_free = splitter_state_free;
    braid_component *c;
    int rc = braid_component_new(loop, splitter_run, sp, &o, &c);
    if (rc < 0) {
        braid_free(sp);
        return rc;
    }
    c->hooks = &splitter_hooks;
    c->impl = sp;
    *out = c;
    return 0;
}

static bool is_splitter(const braid_component *c) { return c->hooks == &splitter_hooks; }

int braid_component_splitter_add(braid_component *s, braid_component *dst, const char *box, int kind) {
    BRAID__LOOP_AFFINE(s->loop);
    if (!is_splitter(s) || s->loop != dst->loop) return BRAID_EINVAL;
    if (kind != BRAID_COMPONENT_LINK_NORMAL && kind != BRAID_COMPONENT_LINK_PASSTHROUGH_OUT) return BRAID_EINVAL;
    int i = kind == BRAID_COMPONENT_LINK_NORMAL ? braid_component_inbox(dst, box) : braid_component_outbox(dst, box);
    if (i < 0) return i;
    braid__box *d = kind == BRAID_COMPONENT_LINK_NORMAL ? dst->in[i] : dst->out[i];
    braid__box *b = braid__component_add_outbox(s, "destination");
    if (!b) return BRAID_ENOMEM;
    int rc = braid__box_link(b, d);
    if (rc < 0) braid__component_remove_outbox(s, b);
    return rc;
}

int braid_component_splitter_remove(braid_component *s, braid_component *dst, const char *box) {
    BRAID__LOOP_AFFINE(s->loop);
    if (!is_splitter(s)) return BRAID_EINVAL;
    splitter *sp = s->impl;
    for (uint32_t i = BRAID_COMPONENT_DEFAULT_BOXES; i < s->n_out; i++) {
        braid__box *b = s->out[i];
        if (b->sink && b->sink->owner == dst && strcmp(b->sink->name, box) == 0) {
            braid__component_remove_outbox(s, b);
            if (sp->holding && sp->next > i) sp->next--;
            return 0;
        }
    }
    return BRAID_ENOT_LINKED;
}

/* ---- backplanes ---------------------------------------------------------------------------- */
struct braid_backplane {
    braid_loop *loop;
    char *name;
    braid_component *splitter;
    braid_backplane *next;
};

static braid_backplane *find_backplane(braid__sched *s, const char *name) {
    for (braid_backplane *bp = s->backplanes; bp; bp = bp->next)
        if (strcmp(bp->name, name) == 0) return bp;
    return NULL;
}

int braid_backplane_new(braid_loop *loop, const char *name, const braid_component_splitter_options *opts,
                        braid_backplane **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!name || !out) return BRAID_EINVAL;
    braid__sched *s = braid__component_sched(loop);
    if (!s) return BRAID_ENOMEM;
    if (find_backplane(s, name)) return BRAID_EEXIST;
    braid_backplane *bp = braid_calloc(1, sizeof *bp);
    if (!bp) return BRAID_ENOMEM;
    bp->loop = loop;
    bp->name = braid_strdup(name);
    braid_component_splitter_options so = { .base = { .name = "backplane" } };
    if (opts) so = *opts;
    if (!so.base.name) so.base.name = "backplane";
    int rc = bp->name ? braid_component_splitter_new(loop, &so, &bp->splitter) : BRAID_ENOMEM;
    if (rc == 0) rc = braid_component_activate(bp->splitter);
    if (rc < 0) {
        braid_component_free(bp->splitter);
        braid_free(bp->name);
        braid_free(bp);
        return rc;
    }
    bp->next = s->backplanes;
    s->backplanes = bp;
    *out = bp;
    return 0;
}

void braid_backplane_free(braid_backplane *bp) {
    if (!bp) return;
    BRAID__LOOP_AFFINE(bp->loop);
    braid__sched *s = braid__component_sched(bp->loop);
    for (braid_backplane **p = &s->backplanes; *p; p = &(*p)->next) {
        if (*p == bp) {
            *p = bp->next;
            break;
        }
    }
    braid_component_free(bp->splitter);
    braid_free(bp->name);
    braid_free(bp);
}

/* A publisher's inbox leads into the bus; what lands in its own inbox
 * (only once the bus is gone) is dropped. Its control ends it, and only it. */
static int publisher_run(braid_component *c, void *state) {
    BRAID__UNUSED(state);
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
        c->stats.dropped++;
        braid_component_msg_free(m);
    }
    braid_component_msg cm;
    while (braid_component_recv(c, BRAID_COMPONENT_CONTROL, &cm) == 0) {
        if (braid_component_is_shutdown_msg(cm.ptr)) return BRAID_COMPONENT_DONE;
        braid_component_msg_free(cm);
    }
    return BRAID_COMPONENT_IDLE;
}

static int subscriber_run(braid_component *c, void *state) {
    BRAID__UNUSED(state);
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) braid_component_msg_free(m);
    return braid_component_handle_control(c);
}

/* A subscriber leaving takes its destination out of the bus's splitter
 * (found by name: the backplane may be gone, or a new one of that name). */
static void subscriber_on_free(braid_component *c) {
    braid__sched *s = c->sched;
    braid_backplane *bp = find_backplane(s, c->impl);
    if (bp) braid_component_splitter_remove(bp->splitter, c, "outbox");
}

static void name_free(void *p) { braid_free(p); }

static const braid__component_hooks publisher_hooks = { .kind = "publisher" };
static const braid__component_hooks subscriber_hooks = { .kind = "subscriber", .on_free = subscriber_on_free };

/* The backplane a new member joins. */
static int join(braid_loop *loop, const char *name, braid_component **out, braid_backplane **bp) {
    if (!name || !out) return BRAID_EINVAL;
    braid__sched *s = braid__component_sched(loop);
    if (!s) return BRAID_ENOMEM;
    *bp = find_backplane(s, name);
    return *bp ? 0 : BRAID_ENO_BACKPLANE;
}

int braid_backplane_publisher_new(braid_loop *loop, const char *name, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    braid_backplane *bp;
    int jrc = join(loop, name, out, &bp);
    if (jrc < 0) return jrc;
    braid_component_options o = { .name = "publisher" };
    braid_component *c;
    int rc = braid_component_new(loop, publisher_run, NULL, &o, &c);
    if (rc < 0) return rc;
    c->hooks = &publisher_hooks;
    braid__box_link(c->in[BRAID_COMPONENT_INBOX], bp->splitter->in[BRAID_COMPONENT_INBOX]);
    *out = c;
    return 0;
}

int braid_backplane_subscriber_new(braid_loop *loop, const char *name, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    braid_backplane *bp;
    int rc = join(loop, name, out, &bp);
    if (rc < 0) return rc;
    char *nm = braid_strdup(name);
    if (!nm) return BRAID_ENOMEM;
    braid_component_options o = { .name = "subscriber", .state_free = name_free };
    braid_component *c;
    rc = braid_component_new(loop, subscriber_run, nm, &o, &c);
    if (rc < 0) {
        braid_free(nm);
        return rc;
    }
    c->impl = nm;
    rc = braid_component_splitter_add(bp->splitter, c, "outbox", BRAID_COMPONENT_LINK_PASSTHROUGH_OUT);
    if (rc < 0) {
        braid_component_free(c);
        return rc;
    }
    c->hooks = &subscriber_hooks;
    *out = c;
    return 0;
}
