/* Chassis: pipelines and graphlines, composites whose boxes pass straight
 * through to their children (Kamaelia's Chassis/Pipeline.py, Graphline.py).
 * A composite has no code of its own: its links are collapsed like any
 * other, so wrapping components in composites adds no hop. */
#include "component/component_internal.h"

#include <string.h>

static const braid__component_hooks pipeline_hooks = { .kind = "pipeline" };
static const braid__component_hooks graphline_hooks = { .kind = "graphline" };

static bool is_free_child(braid_loop *loop, braid_component *k) {
    return k && k->loop == loop && !k->parent && !k->activated && !k->done;
}

int braid_component_pipeline_new(braid_loop *loop, braid_component *const *children, size_t n,
                                 const braid_component_options *opts, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if (!children || !n || !out) return BRAID_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!is_free_child(loop, children[i])) return BRAID_ECOMPONENT_STATE;
        for (size_t j = 0; j < i; j++)
            if (children[j] == children[i]) return BRAID_EINVAL;
        /* the boxes the pipeline links from must be free, so no link below fails */
        braid_component *k = children[i];
        if (k->out[BRAID_COMPONENT_OUTBOX]->sink || k->out[BRAID_COMPONENT_SIGNAL]->sink) return BRAID_EBOX_LINKED;
    }
    braid_component_options o = { .name = "pipeline" };
    if (opts) {
        if (opts->name) o.name = opts->name;
        o.capacity = opts->capacity;
    }
    braid_component *c;
    int rc = braid__component_create(loop, BRAID__C_COMPOSITE, &o, &c);
    if (rc < 0) return rc;
    c->hooks = &pipeline_hooks;
    for (size_t i = 0; i < n; i++) braid__component_adopt(c, children[i]);
    braid_component *first = children[0], *last = children[n - 1];
    braid__box_link(c->in[BRAID_COMPONENT_INBOX], first->in[BRAID_COMPONENT_INBOX]);
    braid__box_link(c->in[BRAID_COMPONENT_CONTROL], first->in[BRAID_COMPONENT_CONTROL]);
    for (size_t i = 0; i + 1 < n; i++) {
        braid__box_link(children[i]->out[BRAID_COMPONENT_OUTBOX], children[i + 1]->in[BRAID_COMPONENT_INBOX]);
        braid__box_link(children[i]->out[BRAID_COMPONENT_SIGNAL], children[i + 1]->in[BRAID_COMPONENT_CONTROL]);
    }
    braid__box_link(last->out[BRAID_COMPONENT_OUTBOX], c->out[BRAID_COMPONENT_OUTBOX]);
    braid__box_link(last->out[BRAID_COMPONENT_SIGNAL], c->out[BRAID_COMPONENT_SIGNAL]);
    *out = c;
    return 0;
}

/* ---- graphline ----------------------------------------------------------------------------- */
static braid_component *resolve(braid_component *self, const braid_component_graphline_child *kids, size_t n,
                                const char *name) {
    if (!name) return NULL;
    if (strcmp(name, "self") == 0) return self;
    for (size_t i = 0; i < n; i++)
        if (strcmp(kids[i].name, name) == 0) return kids[i].component;
    return NULL;
}

int braid_component_graphline_new(braid_loop *loop, const braid_component_graphline_child *children, size_t n,
                                  const braid_component_linkage *links, size_t n_links,
                                  const braid_component_options *opts, braid_component **out) {
    BRAID__LOOP_AFFINE(loop);
    if ((n && !children) || (n_links && !links) || !out) return BRAID_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (!children[i].name || strcmp(children[i].name, "self") == 0) return BRAID_EINVAL;
        if (!is_free_child(loop, children[i].component)) return BRAID_ECOMPONENT_STATE;
        for (size_t j = 0; j < i; j++)
            if (strcmp(children[j].name, children[i].name) == 0 || children[j].component == children[i].component)
                return BRAID_EINVAL;
    }
    braid_component_options o = { .name = "graphline" };
    if (opts) {
        o = *opts;
        if (!o.name) o.name = "graphline";
    }
    o.state_free = NULL;
    o.stack_size = 0;
    braid_component *c;
    int rc = braid__component_create(loop, BRAID__C_COMPOSITE, &o, &c);
    if (rc < 0) return rc;
    c->hooks = &graphline_hooks;
    braid__box **made = n_links ? braid_calloc(n_links, sizeof *made) : NULL;
    if (n_links && !made) {
        braid_component_free(c);
        return BRAID_ENOMEM;
    }
    size_t n_made = 0;
    for (size_t i = 0; i < n; i++) {
        braid_component *k = children[i].component;
        k->child_name = braid_strdup(children[i].name);
        if (!k->child_name) {
            rc = BRAID_ENOMEM;
            goto undo;
        }
    }
    for (size_t i = 0; i < n_links; i++) {
        const braid_component_linkage *l = &links[i];
        braid_component *from = resolve(c, children, n, l->from), *to = resolve(c, children, n, l->to);
        if (!from || !to || (from == c && to == c)) {
            rc = BRAID_EINVAL;
            goto undo;
        }
        braid__box *s, *d;
        int si, di;
        if (from == c) {   /* own inbox -> child's inbox */
            si = braid_component_inbox(from, l->from_box);
            di = braid_component_inbox(to, l->to_box);
            s = si >= 0 ? from->in[si] : NULL;
            d = di >= 0 ? to->in[di] : NULL;
        } else {
            si = braid_component_outbox(from, l->from_box);
            di = to == c ? braid_component_outbox(to, l->to_box) : braid_component_inbox(to, l->to_box);
            s = si >= 0 ? from->out[si] : NULL;
            d = di >= 0 ? (to == c ? to->out[di] : to->in[di]) : NULL;
        }
        if (!s || !d) {
            rc = BRAID_ENO_BOX;
            goto undo;
        }
        rc = braid__box_link(s, d);
        if (rc < 0) goto undo;
        made[n_made++] = s;
    }
    for (size_t i = 0; i < n; i++) braid__component_adopt(c, children[i].component);
    braid_free(made);
    *out = c;
    return 0;
undo:
    while (n_made) braid__box_unlink(made[--n_made]);
    for (size_t i = 0; i < n; i++) {
        braid_free(children[i].component->child_name);
        children[i].component->child_name = NULL;
    }
    braid_free(made);
    braid_component_free(c);
    return rc;
}

braid_component *braid_component_child(const braid_component *composite, const char *name) {
    if (!name) return NULL;
    for (braid_component *k = composite->first_child; k; k = k->next_sibling)
        if (k->child_name && strcmp(k->child_name, name) == 0) return k;
    return NULL;
}
