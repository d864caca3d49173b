/* Combinators: gather (fail fast or collect), race, and the DeferredList.
 *
 * One state block serves all three: it holds each member's consumer
 * reference until that member reports, and the producer reference of the
 * combined Deferred ("out") until it fires it. The state lives until every
 * member has reported and out has fired, whichever comes last; `remaining`
 * counts unreported members plus temporary holds taken while the state
 * calls out into code (cancelling members, firing out) that may re-enter
 * it, so it is never freed under its own feet. */
#include "deferred/deferred_internal.h"
#include <stdio.h>
#include <string.h>

typedef enum { K_GATHER, K_RACE, K_LIST } comb_kind;

struct comb;
typedef struct member {
    struct comb *st;
    size_t index;
    braid_deferred *d;          /* NULL once it reported */
} member;

typedef struct comb {
    braid_deferred *out;        /* valid until out_fired */
    comb_kind kind;
    unsigned flags;
    bool out_fired;
    bool cancelling;
    size_t n;
    size_t remaining;
    braid_deferred_results *res;         /* gather/list: results; race: failures */
    braid_deferred_race_win *win;        /* race */
    member m[];
} comb;

void braid_deferred_results_free(void *p) {
    braid_deferred_results *res = p;
    if (!res) return;
    for (size_t i = 0; i < res->n; i++) braid_result_drop(res->r[i]);
    braid_free(res);
}

void braid_deferred_race_win_free(void *p) {
    braid_deferred_race_win *w = p;
    if (!w) return;
    if (w->value && w->dtor) w->dtor(w->value);
    braid_free(w);
}

static void fire_out(comb *st, braid_result r) {
    st->out_fired = true;
    braid_deferred_fire(st->out, r);
}

/* "gather: 2 of 5 failed: #1 (code), #3 (code)" with the lowest-index
 * failure as the cause (moved out of res). */
static braid_failure *summarize(comb *st, int code, const char *what) {
    braid_deferred_results *res = st->res;
    char buf[512];
    int len = snprintf(buf, sizeof buf, "%s: %zu of %zu failed:", what, res->nfailed, res->n);
    braid_failure *cause = NULL;
    size_t listed = 0;
    for (size_t i = 0; i < res->n; i++) {
        braid_failure *f = res->r[i].failure;
        if (!f) continue;
        if (!cause) {
            cause = f;
            res->r[i].failure = NULL;
        }
        if (listed++ < 16 && len > 0 && (size_t)len < sizeof buf)
            len += snprintf(buf + len, sizeof buf - (size_t)len, " #%zu (%s)", i,
                            braid_strerror(f->code));
    }
    if (listed > 16 && len > 0 && (size_t)len < sizeof buf)
        snprintf(buf + len, sizeof buf - (size_t)len, " ...");
    return braid_failure_wrap(cause, code, "%s", buf);
}

/* Every member has reported: fire out if nobody did yet, free the state. */
static void maybe_finish(comb *st) {
    if (st->remaining) return;
    if (!st->out_fired) {
        switch (st->kind) {
        case K_GATHER:
            if (st->res->nfailed) {
                fire_out(st, braid_result_err(summarize(st, BRAID_EFIRST_ERROR, "gather")));
            } else {
                braid_deferred_results *res = st->res;
                st->res = NULL;
                fire_out(st, braid_result_ok_owned(res, braid_deferred_results_free));
            }
            break;
        case K_LIST: {
            braid_deferred_results *res = st->res;
            st->res = NULL;
            fire_out(st, braid_result_ok_owned(res, braid_deferred_results_free));
            break;
        }
        case K_RACE:
            if (st->n == 0)
                fire_out(st, braid_result_errf(BRAID_EINVAL, "race of no Deferreds"));
            else
                fire_out(st, braid_result_err(summarize(st, BRAID_EALL_FAILED, "race")));
            break;
        }
    }
    braid_deferred_results_free(st->res);
    braid_deferred_race_win_free(st->win);
    braid_free(st);
}

/* Cancel every member still pending except `except`. */
static void cancel_rest(comb *st, size_t except) {
    st->remaining++;          /* hold: cancelled members report synchronously */
    for (size_t j = 0; j < st->n; j++)
        if (j != except && st->m[j].d) braid_deferred_cancel(st->m[j].d);
    st->remaining--;
}

/* Added as callback and errback to each member: it consumes the member's
 * result (the member ends with braid_result_ok(NULL)) and drops our reference. */
static braid_result member_done(braid_result r, void *arg) {
    member *m = arg;
    comb *st = m->st;
    size_t i = m->index;
    braid_deferred *d = m->d;
    m->d = NULL;
    braid_deferred_unref(d);    /* d is running: freed when its chain ends */
    if (st->out_fired || st->cancelling) {
        braid_result_drop(r);     /* consumed: nobody asked for it any more */
    } else if (st->kind == K_RACE) {
        if (r.failure) {
            st->res->r[i] = r;
            st->res->nfailed++;
        } else {
            braid_deferred_race_win *w = st->win;
            st->win = NULL;
            w->index = i;
            w->value = r.value;
            w->dtor = r.dtor;
            st->remaining++;
            fire_out(st, braid_result_ok_owned(w, braid_deferred_race_win_free));
            cancel_rest(st, i);
            st->remaining--;
        }
    } else if (r.failure && st->kind == K_GATHER && !(st->flags & BRAID_DEFERRED_GATHER_COLLECT)) {
        st->remaining++;
        fire_out(st, braid_result_err(braid_failure_wrap(r.failure, BRAID_EFIRST_ERROR,
                                                  "gather: Deferred #%zu failed", i)));
        cancel_rest(st, i);
        st->remaining--;
    } else {
        st->res->r[i] = r;
        if (r.failure) st->res->nfailed++;
    }
    st->remaining--;
    maybe_finish(st);
    return braid_result_ok(NULL);
}

/* out's canceller: cancel the members first (as Twisted does), then fail out. */
static void comb_cancel(braid_deferred *out, void *arg) {
    comb *st = arg;
    (void)out;
    st->cancelling = true;
    st->remaining++;
    cancel_rest(st, SIZE_MAX);
    if (!st->out_fired) fire_out(st, braid_result_errf(BRAID_ECANCELED, "combined Deferred cancelled"));
    st->remaining--;
    maybe_finish(st);
}

static braid_deferred *combine(braid_loop *loop, braid_deferred *const *ds, size_t n,
                               comb_kind kind, unsigned flags) {
    if (n > (SIZE_MAX - sizeof(comb)) / sizeof(member) / 2) return NULL;
    comb *st = braid_calloc(1, sizeof *st + n * sizeof(member));
    braid_deferred_results *res = braid_calloc(1, sizeof *res + n * sizeof(braid_result));
    braid_deferred_race_win *win = kind == K_RACE ? braid_calloc(1, sizeof *win) : NULL;
    braid_deferred *out = braid_deferred_new_cancellable(loop, comb_cancel, st);
    bool ok = st && res && out && (kind != K_RACE || win);
    /* Make sure adding our callback to each member cannot fail halfway. */
    for (size_t i = 0; ok && i < n; i++) ok = braid__deferred_reserve(ds[i], 1) == 0;
    if (!ok) {
        if (out) {
            out->canceller = NULL;
            braid_deferred_callback(out, NULL, NULL);
            braid_deferred_unref(out);
        }
        braid_free(st);
        braid_free(res);
        braid_free(win);
        return NULL;
    }
    res->n = n;
    st->out = out;
    st->kind = kind;
    st->flags = flags;
    st->n = n;
    st->res = res;
    st->win = win;
    st->remaining = n + 1;       /* +1: members that already fired report at once */
    for (size_t i = 0; i < n; i++) {
        st->m[i].st = st;
        st->m[i].index = i;
        st->m[i].d = ds[i];
    }
    /* A race won (or a gather failed) by an early member cancels later ones
     * before their callback is added; they still report through it, with
     * their cancellation. */
    for (size_t i = 0; i < n; i++)
        braid_deferred_add_both(ds[i], member_done, &st->m[i]);   /* reserved: cannot fail */
    st->remaining--;
    maybe_finish(st);
    return out;
}

braid_deferred *braid_deferred_gather(braid_loop *loop, braid_deferred *const *ds, size_t n,
                             unsigned flags) {
    BRAID__LOOP_AFFINE(loop);
    return combine(loop, ds, n, K_GATHER, flags);
}
braid_deferred *braid_deferred_race(braid_loop *loop, braid_deferred *const *ds, size_t n) {
    BRAID__LOOP_AFFINE(loop);
    return combine(loop, ds, n, K_RACE, 0);
}
braid_deferred *braid_deferred_list(braid_loop *loop, braid_deferred *const *ds, size_t n) {
    BRAID__LOOP_AFFINE(loop);
    return combine(loop, ds, n, K_LIST, 0);
}
