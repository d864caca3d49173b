/* Execution context: typed keys, immutable contexts as a persistent list
 * (each braid_ctx_with adds one node in front of a shared parent), the
 * calling thread's current context, and the capture/swap pair braid's
 * schedulers use (the inline copies are in capture.h).
 *
 * A lookup walks from the newest value to the oldest: O(depth). Contexts
 * hold a handful of values (a request, its id, a transaction), and a
 * handful of pointer compares beat hashing at that size. */
#include "context_internal.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__thread braid_ctx *braid__ctx_cur __attribute__((tls_model("initial-exec")));
__thread braid_ctx *braid__ctx_stash __attribute__((tls_model("initial-exec")));
__thread uint32_t braid__ctx_stash_n __attribute__((tls_model("initial-exec")));

static const char *const ctx_names[] = {
    [0] = "a context value of another type than its key's",
};
BRAID__ERROR_DOMAIN(context, "context", BRAID_ECTX_TYPE, BRAID_ECTX_TYPE, ctx_names);

static bool type_ok(braid_ctx_type t) { return t >= BRAID_CTX_PTR && t <= BRAID_CTX_STR; }

int braid_ctx_with_at(braid_ctx *parent, const braid_ctx_key *key, braid_ctx_type type, braid_ctx_value v,
                      const char *file, int line, braid_ctx **out) {
    if (!key || !out || !type_ok(key->type)) return BRAID_EINVAL;
    if (type != key->type) {
        return BRAID_ECTX_TYPE;
    }
    size_t extra = 0;
    if (key->type == BRAID_CTX_STR) {
        if (!v.str) return BRAID_EINVAL;
        extra = strlen(v.str) + 1;
    }
    braid_ctx *c = braid_malloc(sizeof *c + extra);
    if (!c) {
        if (key->type == BRAID_CTX_PTR && key->release && v.ptr) key->release(v.ptr);
        return BRAID_ENOMEM;
    }
    atomic_init(&c->refs, 1);
    c->depth = (parent ? parent->depth : 0) + 1;
    c->parent = braid_ctx_ref(parent);
    c->key = key;
    c->v = v;
    if (extra) {
        memcpy(c->str, v.str, extra);
        c->v.str = c->str;
    }
    c->file = file;
    c->line = line;
    *out = c;
    return 0;
}

braid_ctx *braid_ctx_ref(braid_ctx *ctx) {
    if (ctx) atomic_fetch_add_explicit(&ctx->refs, 1, memory_order_relaxed);
    return ctx;
}

/* Drop n references to ctx (n >= 1): the parent's one when it was the last. */
static void unref_n(braid_ctx *ctx, uint32_t n) {
    /* Iterative: dropping a deep chain uses no stack. */
    while (ctx) {
        /* acq_rel rather than release plus an acquire fence on the last
         * drop: the same instruction on x86, and ThreadSanitizer does not
         * model fences (a context freed on the loop after a pool worker
         * dropped its reference was reported as a race). */
        uint32_t was = atomic_fetch_sub_explicit(&ctx->refs, n, memory_order_acq_rel);
        BRAID__ASSERT(was >= n);
        if (was != n) return;
        braid_ctx *parent = ctx->parent;
        if (ctx->key->type == BRAID_CTX_PTR && ctx->key->release && ctx->v.ptr)
            ctx->key->release(ctx->v.ptr);
        braid_free(ctx);
        ctx = parent;
        n = 1;
    }
}

void braid_ctx_unref(braid_ctx *ctx) { unref_n(ctx, 1); }

void braid__ctx_take_slow(braid_ctx *c) {
    if (c == braid__ctx_stash) {      /* empty stash: buy a batch */
        atomic_fetch_add_explicit(&c->refs, BRAID__CTX_STASH_BATCH, memory_order_relaxed);
        braid__ctx_stash_n = BRAID__CTX_STASH_BATCH - 1;
    } else {
        atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
    }
}

/* Give back what the stash holds (plus `extra` references of the caller's
 * to the same context) and empty it. */
static void stash_flush(uint32_t extra, braid_ctx *c) {
    braid_ctx *s = braid__ctx_stash;
    uint32_t n = braid__ctx_stash_n;
    braid__ctx_stash = NULL;
    braid__ctx_stash_n = 0;
    if (s == c) {
        unref_n(c, n + extra);
        return;
    }
    if (s && n) unref_n(s, n);
    if (extra) unref_n(c, extra);
}

/* A scope's context becomes the thread's stash (the previous one, if
 * another, given back first). */
static void stash_adopt(braid_ctx *c) {
    if (braid__ctx_stash == c) return;
    if (braid__ctx_stash) stash_flush(0, NULL);
    braid__ctx_stash = c;
}

static const braid_ctx *find(const braid_ctx *ctx, const braid_ctx_key *key) {
    for (; ctx; ctx = ctx->parent)
        if (ctx->key == key) return ctx;
    return NULL;
}

bool braid_ctx_lookup(const braid_ctx *ctx, const braid_ctx_key *key, braid_ctx_value *out) {
    const braid_ctx *c = find(ctx, key);
    if (!c) return false;
    if (out) *out = c->v;
    return true;
}

bool braid_ctx_origin(const braid_ctx *ctx, const braid_ctx_key *key, const char **file, int *line) {
    const braid_ctx *c = find(ctx, key);
    if (!c) return false;
    if (file) *file = c->file;
    if (line) *line = c->line;
    return true;
}

static const braid_ctx *get_typed(const braid_ctx_key *key, braid_ctx_type t) {
#ifdef BRAID_DEBUG
    if (key->type != t) {
        fprintf(stderr, "braid: context key %s is not read with its own type\n", key->name);
        abort();
    }
#else
    (void)t;
#endif
    return find(braid__ctx_cur, key);
}

void *braid_ctx_get_ptr(const braid_ctx_key *key) {
    const braid_ctx *c = get_typed(key, BRAID_CTX_PTR);
    return c ? c->v.ptr : NULL;
}
int64_t braid_ctx_get_i64(const braid_ctx_key *key, int64_t dflt) {
    const braid_ctx *c = get_typed(key, BRAID_CTX_I64);
    return c ? c->v.i64 : dflt;
}
uint64_t braid_ctx_get_u64(const braid_ctx_key *key, uint64_t dflt) {
    const braid_ctx *c = get_typed(key, BRAID_CTX_U64);
    return c ? c->v.u64 : dflt;
}
double braid_ctx_get_f64(const braid_ctx_key *key, double dflt) {
    const braid_ctx *c = get_typed(key, BRAID_CTX_F64);
    return c ? c->v.f64 : dflt;
}
const char *braid_ctx_get_str(const braid_ctx_key *key) {
    const braid_ctx *c = get_typed(key, BRAID_CTX_STR);
    return c ? c->v.str : NULL;
}

size_t braid_ctx_depth(const braid_ctx *ctx) { return ctx ? ctx->depth : 0; }

void braid_ctx_visit(const braid_ctx *ctx, braid_ctx_visit_fn fn, void *arg) {
    for (const braid_ctx *c = ctx; c; c = c->parent) {
        if (find(ctx, c->key) != c) continue;     /* shadowed by a newer value */
        if (!fn(c->key, c->v, c->file, c->line, arg)) return;
    }
}

braid_ctx *braid_ctx_current(void) { return braid__ctx_cur; }

void braid_ctx_enter(braid_ctx_scope *s, braid_ctx *ctx) {
    s->ctx = braid_ctx_ref(ctx);
    s->prev = braid__ctx_swap(ctx);
    if (ctx) stash_adopt(ctx);
}

int braid_ctx_push_at(braid_ctx_scope *s, const braid_ctx_key *key, braid_ctx_type type, braid_ctx_value v,
                      const char *file, int line) {
    braid_ctx *c;
    int rc = braid_ctx_with_at(braid__ctx_cur, key, type, v, file, line, &c);
    if (rc < 0) return rc;
    s->ctx = c;
    s->prev = braid__ctx_swap(c);
    stash_adopt(c);
    return 0;
}

void braid_ctx_pop(braid_ctx_scope *s) {
    BRAID__ASSERT(braid__ctx_cur == s->ctx);    /* scopes pop in reverse order */
    braid__ctx_swap(s->prev);
    if (s->ctx && s->ctx == braid__ctx_stash) stash_flush(1, s->ctx);
    else braid_ctx_unref(s->ctx);
    s->ctx = s->prev = NULL;
}

braid_ctx *braid_ctx_capture(void) { return braid__ctx_capture(); }
braid_ctx *braid_ctx_swap(braid_ctx *c) { return braid__ctx_swap(c); }
