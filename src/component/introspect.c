/* Introspection: the loop's components, their boxes and links as JSON, to
 * draw the graph (Axon had an Introspector feeding a visualiser): the whole
 * graph from braid_component_introspect, and one entry per component in
 * the loop's introspection document (section "components"). */
#include "component/component_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

typedef struct jbuf {
    char *p;
    size_t len, cap;
    bool oom;
} jbuf;

static void jput(jbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (b->len + n + 1 > cap) cap *= 2;
        char *q = braid_realloc(b->p, cap);
        if (!q) {
            b->oom = true;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void jputs(jbuf *b, const char *s) { jput(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void jprintf(jbuf *b, const char *fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) jput(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

static void jstr(jbuf *b, const char *s) {
    if (!s) {
        jputs(b, "null");
        return;
    }
    jputs(b, "\"");
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            char e[2] = { '\\', (char)ch };
            jput(b, e, 2);
        } else if (ch < 0x20) {
            jprintf(b, "\\u%04x", ch);
        } else {
            jput(b, (const char *)&ch, 1);
        }
    }
    jputs(b, "\"");
}

/* {"component":"c0x…","box":"name","inbox":true} or null */
static void jbox_ref(jbuf *b, const braid__box *x) {
    if (!x) {
        jputs(b, "null");
        return;
    }
    jprintf(b, "{\"component\":\"c%p\",\"box\":", (const void *)x->owner);
    jstr(b, x->name);
    jprintf(b, ",\"inbox\":%s}", x->inbox ? "true" : "false");
}

static void jbox(jbuf *b, const braid__box *x) {
    jputs(b, "{\"name\":");
    jstr(b, x->name);
    jputs(b, ",\"doc\":");
    jstr(b, x->doc);
    if (x->inbox) jprintf(b, ",\"depth\":%u,\"capacity\":%u,\"received\":%llu", x->len, x->cap,
                          (unsigned long long)x->received);
    jputs(b, ",\"linked_to\":");
    jbox_ref(b, x->sink);
    jputs(b, ",\"delivers_to\":");
    jbox_ref(b, x->real == x ? NULL : x->real);
    jputs(b, "}");
}

static const char *kind_of(const braid_component *c) {
    if (c->hooks) return c->hooks->kind;
    switch (c->kind) {
    case BRAID__C_CALLBACK: return "callback";
    case BRAID__C_FIBER: return "fiber";
    case BRAID__C_COMPOSITE: return "composite";
    }
    return "?";
}

static const char *state_of(const braid_component *c) {
    if (c->done) return "done";
    if (!c->activated) return "new";
    if (c->running) return "running";
    if (c->queued) return "runnable";
    return "idle";
}

int braid_component_introspect(braid_loop *loop, char **out, size_t *len) {
    BRAID__LOOP_AFFINE(loop);
    jbuf b = { 0 };
    braid__sched *s = braid__component_sched(loop);
    if (!s) return BRAID_ENOMEM;
    jputs(&b, "{\"components\":[");
    for (braid_component *c = s->all; c; c = c->all_next) {
        if (c != s->all) jputs(&b, ",");
        jprintf(&b, "{\"id\":\"c%p\",\"name\":", (const void *)c);
        jstr(&b, c->name);
        jputs(&b, ",\"kind\":");
        jstr(&b, kind_of(c));
        jputs(&b, ",\"state\":");
        jstr(&b, state_of(c));
        if (c->parent) jprintf(&b, ",\"parent\":\"c%p\"", (const void *)c->parent);
        else jputs(&b, ",\"parent\":null");
        if (c->child_name) {
            jputs(&b, ",\"child_name\":");
            jstr(&b, c->child_name);
        }
        jputs(&b, ",\"inboxes\":[");
        for (uint32_t i = 0; i < c->n_in; i++) {
            if (i) jputs(&b, ",");
            jbox(&b, c->in[i]);
        }
        jputs(&b, "],\"outboxes\":[");
        for (uint32_t i = 0; i < c->n_out; i++) {
            if (i) jputs(&b, ",");
            jbox(&b, c->out[i]);
        }
        jprintf(&b, "],\"runs\":%llu,\"sent\":%llu,\"dropped\":%llu}", (unsigned long long)c->stats.runs,
                (unsigned long long)c->stats.sent, (unsigned long long)c->stats.dropped);
    }
    jputs(&b, "]}");
    if (b.oom) {
        braid_free(b.p);
        return BRAID_ENOMEM;
    }
    *out = b.p;
    if (len) *len = b.len;
    return 0;
}

/* The entry of c in the loop's "components" section: what it is, its
 * counters, its inboxes' depths, and "links": the names of the components
 * its outboxes deliver to (where each collapsed chain ends, each name
 * once), which the introspection page draws as the graph's arrows. */
void braid__component_describe(braid_json *j, void *arg) {
    braid_component *c = arg;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", c->name);
    braid_json_kv_str(j, "kind", kind_of(c));
    braid_json_kv_str(j, "state", state_of(c));
    braid_json_kv_str(j, "parent", c->parent ? c->parent->name : NULL);
    braid_json_kv_u64(j, "runs", c->stats.runs);
    braid_json_kv_u64(j, "received", c->stats.received);
    braid_json_kv_u64(j, "sent", c->stats.sent);
    braid_json_kv_u64(j, "dropped", c->stats.dropped);
    braid_json_kv_u64(j, "full", c->stats.full);
    braid_json_key(j, "inboxes");
    braid_json_object_begin(j);
    for (uint32_t i = 0; i < c->n_in; i++) braid_json_kv_u64(j, c->in[i]->name, c->in[i]->len);
    braid_json_object_end(j);
    braid_json_key(j, "links");
    braid_json_array_begin(j);
    for (uint32_t i = 0; i < c->n_out; i++) {
        const braid__box *r = c->out[i]->real;
        if (!r) continue;
        bool seen = false;
        for (uint32_t k = 0; k < i && !seen; k++) {
            const braid__box *q = c->out[k]->real;
            seen = q && q->owner == r->owner;
        }
        if (!seen) braid_json_str(j, r->owner->name);
    }
    braid_json_array_end(j);
    braid_json_object_end(j);
}
