/* Stages: admission predicates and the three controllers.
 *
 * Predicates are evaluated under the stage's mutex on the enqueuing thread
 * (a user function without it). Controllers are looping calls on the
 * domain's loop: each look reads the stage's counters under its mutex,
 * decides, writes the new setting, and logs the decision with its inputs.
 * The constants are SEDA's (mdwelsh/seda, sandStorm/internal:
 * ThreadPoolController, AggThrottle, ResponseTimeControllerDirect). */
#include "stage_internal.h"
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* ---- token buckets ------------------------------------------------------------------------- */
static void bucket_refill(braid__bucket *b, uint64_t now) {
    if (now > b->last) {
        b->tokens += (double)(now - b->last) * b->rate / 1e9;
        if (b->tokens > b->depth) b->tokens = b->depth;
    }
    b->last = now;
}

static void bucket_init(braid__bucket *b, double rate, double depth, uint64_t now) {
    *b = (braid__bucket){ .rate = rate, .depth = depth, .tokens = depth, .last = now };
}

int braid__stage_admit_locked(braid_stage *st, const braid_stage_event *evs, size_t n,
                              uint64_t now, double *tokens) {
    switch (st->admit) {
    case ADMIT_THRESHOLD:
        if (st->len + st->reserved + n > st->threshold) return BRAID_ESTAGE_REJECTED;
        return 0;
    case ADMIT_RATE:
        bucket_refill(&st->bucket, now);
        if (st->bucket.tokens < (double)n) return BRAID_ESTAGE_REJECTED;
        st->bucket.tokens -= (double)n;
        if (tokens) *tokens = (double)n;
        return 0;
    case ADMIT_CLASSES: {
        if (!evs) return BRAID_ESTAGE_REJECTED;
        double need[BRAID_STAGE_MAX_CLASSES] = { 0 };
        for (size_t i = 0; i < n; i++) {
            unsigned c = st->classify(&evs[i], st->admit_arg);
            if (c >= st->nclasses) return BRAID_ESTAGE_REJECTED;
            need[c] += 1;
        }
        for (size_t c = 0; c < st->nclasses; c++) {
            if (need[c] == 0) continue;
            bucket_refill(&st->classes[c], now);
            if (st->classes[c].tokens < need[c]) return BRAID_ESTAGE_REJECTED;
        }
        for (size_t c = 0; c < st->nclasses; c++) st->classes[c].tokens -= need[c];
        return 0;
    }
    default:
        return 0;
    }
}

void braid__stage_refund_locked(braid_stage *st, double tokens) {
    if (st->admit != ADMIT_RATE || tokens <= 0) return;
    st->bucket.tokens += tokens;
    if (st->bucket.tokens > st->bucket.depth) st->bucket.tokens = st->bucket.depth;
}

void braid_stage_admit_all(braid_stage *st) {
    BRAID__LOOP_AFFINE(st->dom->loop);
    braid__stage_lock(st);
    __atomic_store_n(&st->admit, ADMIT_ALL, __ATOMIC_RELAXED);
    braid__stage_unlock(st);
}

void braid_stage_admit_threshold(braid_stage *st, size_t threshold) {
    BRAID__LOOP_AFFINE(st->dom->loop);
    braid__stage_lock(st);
    __atomic_store_n(&st->admit, ADMIT_THRESHOLD, __ATOMIC_RELAXED);
    st->threshold = threshold;
    braid__stage_unlock(st);
}

int braid_stage_admit_rate(braid_stage *st, double rate, double depth) {
    if (!st || !(rate > 0) || !(depth >= 1)) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(st->dom->loop);
    uint64_t now = braid__stage_now(st->dom);
    braid__stage_lock(st);
    __atomic_store_n(&st->admit, ADMIT_RATE, __ATOMIC_RELAXED);
    bucket_init(&st->bucket, rate, depth, now);
    braid__stage_unlock(st);
    return 0;
}

int braid_stage_admit_classes(braid_stage *st, size_t n, const double *rates, const double *depths,
                              braid_stage_classify_fn classify, void *arg) {
    if (!st || !n || n > BRAID_STAGE_MAX_CLASSES || !rates || !depths || !classify)
        return BRAID_EINVAL;
    for (size_t i = 0; i < n; i++)
        if (!(rates[i] > 0) || !(depths[i] >= 1)) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(st->dom->loop);
    uint64_t now = braid__stage_now(st->dom);
    braid__stage_lock(st);
    __atomic_store_n(&st->admit, ADMIT_CLASSES, __ATOMIC_RELAXED);
    st->nclasses = n;
    for (size_t i = 0; i < n; i++) bucket_init(&st->classes[i], rates[i], depths[i], now);
    st->classify = classify;
    st->admit_arg = arg;
    braid__stage_unlock(st);
    return 0;
}

void braid_stage_admit_fn_set(braid_stage *st, braid_stage_admit_fn admit, void *arg) {
    BRAID__LOOP_AFFINE(st->dom->loop);
    braid__stage_lock(st);
    __atomic_store_n(&st->admit, admit ? ADMIT_FN : ADMIT_ALL, __ATOMIC_RELAXED);
    st->admit_fn = admit;
    st->admit_arg = arg;
    braid__stage_unlock(st);
}

/* ---- the thread controller -------------------------------------------------------------------- */
static void threads_look(braid_looping *lc, uint64_t ticks, void *arg) {
    (void)lc, (void)ticks;
    braid_stage *st = arg;
    uint64_t now = braid__stage_now(st->dom);
    braid__stage_lock(st);
    size_t len = st->len;
    if (len || st->running) st->last_busy = now;
    uint64_t idle = now - st->last_busy;
    unsigned before = st->threads;
    if (len >= st->tc.threshold && st->threads < st->tc.max) {
        st->threads++;
    } else if (!len && idle >= st->tc.idle_timeout && st->threads > st->tc.min) {
        st->threads--;
        st->last_busy = now;   /* one fewer per idle_timeout */
    }
    unsigned after = st->threads;
    braid__stage_unlock(st);
    if (after == before) return;
    braid__log(st->dom->loop, BRAID_LOG_INFO,
               "stage %s: threads %u -> %u (queue %zu, threshold %zu, idle %" PRIu64 " ns, bounds %u..%u)",
               st->name, before, after, len, st->tc.threshold, idle, st->tc.min, st->tc.max);
    if (after > before) braid__stage_kick(st);
}

int braid_stage_control_threads(braid_stage *st, const braid_stage_thread_control *c) {
    if (!st || !c) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(st->dom->loop);
    if (st->ctl_threads_on) braid_looping_stop(&st->ctl_threads);
    st->ctl_threads_on = false;
    if (!c->period) return 0;
    if (!st->dom->pool) return BRAID_EINVAL;   /* a loop domain has one thread */
    braid_stage_thread_control t = *c;
    if (!t.threshold) t.threshold = 10;
    if (!t.min) t.min = 1;
    if (!t.max) t.max = 20;
    if (!t.idle_timeout) t.idle_timeout = BRAID_SECONDS(1);
    if (t.min > t.max) return BRAID_EINVAL;
    braid__stage_lock(st);
    st->tc = t;
    if (st->threads < t.min) st->threads = t.min;
    if (st->threads > t.max) st->threads = t.max;
    st->last_busy = braid__stage_now(st->dom);
    braid__stage_unlock(st);
    int rc = braid_looping_start(st->dom->loop, &st->ctl_threads, t.period, false, threads_look, st);
    if (rc == 0) st->ctl_threads_on = true;
    return rc;
}

/* ---- the batch controller (SEDA's AggThrottle) --------------------------------------------- */
static void batch_look(braid_looping *lc, uint64_t ticks, void *arg) {
    (void)lc, (void)ticks;
    braid_stage *st = arg;
    uint64_t now = braid__stage_now(st->dom);
    braid__stage_lock(st);
    uint64_t handled = st->st.handled;
    size_t before = st->batch_max;
    double dt = (double)(now - st->bc_last) / 1e9;
    double tput = dt > 0 ? (double)(handled - st->bc_handled) / dt : 0;
    st->bc_handled = handled;
    st->bc_last = now;
    /* Nothing handled: no evidence either way; keep the batch size. */
    if (tput == 0) {
        braid__stage_unlock(st);
        return;
    }
    st->bc_ewma = st->bc_ewma == 0 ? tput : 0.7 * st->bc_ewma + 0.3 * tput;
    const char *why;
    size_t next = before;
    if (st->bc_ewma < 0.2 * st->bc_best) {
        why = "collapse below 0.2 x best: reset to max";
        next = st->bc.max;
        st->bc_best = st->bc_ewma;
        st->bc_dir = -1;
    } else {
        if (st->bc_ewma > st->bc_best) {
            st->bc_best = st->bc_ewma;
            st->bc_best_batch = before;
            why = "better: keep direction";
        } else {
            st->bc_dir = -st->bc_dir;
            why = "worse: reverse";
        }
        double f = st->bc_dir > 0 ? 1.2 : 1 / 1.2;
        next = (size_t)((double)before * f + 0.5);
        if (next == before) next = st->bc_dir > 0 ? before + 1 : before - 1;
    }
    if (next < st->bc.min) next = st->bc.min;
    if (next > st->bc.max) next = st->bc.max;
    st->batch_max = next;
    double ewma = st->bc_ewma, best = st->bc_best;
    braid__stage_unlock(st);
    braid__log(st->dom->loop, BRAID_LOG_INFO,
               "stage %s: batch %zu -> %zu (%s; throughput %.1f/s, smoothed %.1f/s, best %.1f/s)",
               st->name, before, next, why, tput, ewma, best);
}

int braid_stage_control_batch(braid_stage *st, const braid_stage_batch_control *c) {
    if (!st || !c) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(st->dom->loop);
    if (st->ctl_batch_on) braid_looping_stop(&st->ctl_batch);
    st->ctl_batch_on = false;
    if (!c->period) return 0;
    braid_stage_batch_control b = *c;
    if (!b.min) b.min = 1;
    if (!b.max) b.max = BRAID_STAGE_MAX_BATCH;
    if (b.min > b.max || b.max > BRAID_STAGE_MAX_BATCH) return BRAID_EINVAL;
    braid__stage_lock(st);
    st->bc = b;
    st->batch_max = b.max;   /* SEDA starts at the largest batch */
    st->bc_handled = st->st.handled;
    st->bc_last = braid__stage_now(st->dom);
    st->bc_ewma = st->bc_best = 0;
    st->bc_dir = -1;
    braid__stage_unlock(st);
    int rc = braid_looping_start(st->dom->loop, &st->ctl_batch, b.period, false, batch_look, st);
    if (rc == 0) st->ctl_batch_on = true;
    return rc;
}

/* ---- the response-time controller (USITS'03, ResponseTimeControllerDirect) ----------------- */
static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Under st->mu: the 90th percentile of the samples kept (0 if none). */
uint64_t braid__stage_p90_locked(braid_stage *st) {
    if (!st->nsamples) return 0;
    uint64_t s[BRAID__STAGE_SAMPLES];
    memcpy(s, st->samples, st->nsamples * sizeof s[0]);
    qsort(s, st->nsamples, sizeof s[0], cmp_u64);
    size_t i = (size_t)((double)st->nsamples * 0.9);
    if (i >= st->nsamples) i = st->nsamples - 1;
    return s[i];
}

static void response_look(braid_looping *lc, uint64_t ticks, void *arg) {
    (void)lc, (void)ticks;
    braid_stage *st = arg;
    const braid_stage_response_control *c = &st->rc;
    uint64_t now = braid__stage_now(st->dom);
    braid__stage_lock(st);
    if (st->admit != ADMIT_RATE) {
        braid__stage_unlock(st);
        return;   /* the user replaced the bucket: the controller stands aside */
    }
    unsigned nsamples = st->nsamples;
    uint64_t p90 = braid__stage_p90_locked(st);
    double dt = (double)(now - st->rc_last) / 1e9;
    double tput = dt > 0 ? (double)(st->st.handled - st->rc_handled) / dt : 0;
    st->rc_handled = st->st.handled;
    st->rc_last = now;
    double before = st->bucket.rate, next = before;
    const char *why = NULL;
    uint64_t last_p90 = st->rc_p90;
    if (nsamples) st->rc_p90 = p90;
    if (nsamples && (double)p90 > (double)c->target && (double)p90 > 0.9 * (double)last_p90) {
        /* Cut from what the stage actually served, when that is lower:
         * under overload the rate in force can be far above it. */
        next = (tput > 0 && tput < before ? tput : before) * c->cut;
        why = "p90 above target: cut";
    } else if (nsamples && (double)p90 > (double)c->target) {
        why = "p90 above target but falling: hold";
    } else if (nsamples && (double)p90 < 0.9 * (double)c->target) {
        next = before + c->add;
        why = "p90 below 0.9 x target: add";
    }
    if (next < c->rate_min) next = c->rate_min;
    if (next > c->rate_max) next = c->rate_max;
    st->bucket.rate = next;
    /* Each look judges the responses since the last one (SEDA resets its window). */
    st->nsamples = 0;
    st->sample_pos = 0;
    size_t len = st->len;
    braid__stage_unlock(st);
    bool hold = why && next == before && (double)p90 > (double)c->target;
    if (!why || (next == before && !hold)) return;   /* pinned at a bound: nothing decided */
    braid__log(st->dom->loop, BRAID_LOG_INFO,
               "stage %s: rate %.1f -> %.1f/s (%s; p90 %" PRIu64 " ns of %u samples, last %" PRIu64
               " ns, target %" PRIu64 " ns, served %.1f/s, queue %zu)",
               st->name, before, next, why, p90, nsamples, last_p90, c->target, tput, len);
}

int braid_stage_control_response(braid_stage *st, const braid_stage_response_control *c) {
    if (!st || !c) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(st->dom->loop);
    if (st->ctl_response_on) braid_looping_stop(&st->ctl_response);
    st->ctl_response_on = false;
    if (!c->period) return 0;
    if (!c->target || (st->flags & BRAID_STAGE_NO_TIMING)) return BRAID_EINVAL;
    braid_stage_response_control r = *c;
    if (!r.rate_min) r.rate_min = 1;
    if (!r.rate_max) r.rate_max = 100000;
    if (!r.rate_start) r.rate_start = r.rate_max;
    if (!r.add) r.add = r.rate_max * 0.02;
    if (!r.cut) r.cut = 0.5;
    if (!r.depth) r.depth = r.rate_max * 0.01 < 1 ? 1 : r.rate_max * 0.01;
    if (r.rate_min > r.rate_max || !(r.cut > 0 && r.cut < 1) || r.rate_start < r.rate_min ||
        r.rate_start > r.rate_max)
        return BRAID_EINVAL;
    int rc = braid_stage_admit_rate(st, r.rate_start, r.depth);
    if (rc < 0) return rc;
    st->rc = r;
    braid__stage_lock(st);
    st->nsamples = st->sample_pos = 0;
    st->rc_handled = st->st.handled;
    st->rc_last = braid__stage_now(st->dom);
    st->rc_p90 = 0;
    braid__stage_unlock(st);
    rc = braid_looping_start(st->dom->loop, &st->ctl_response, r.period, false, response_look, st);
    if (rc == 0) st->ctl_response_on = true;
    return rc;
}

void braid__stage_controls_stop(braid_stage *st) {
    if (st->ctl_threads_on) braid_looping_stop(&st->ctl_threads);
    if (st->ctl_batch_on) braid_looping_stop(&st->ctl_batch);
    if (st->ctl_response_on) braid_looping_stop(&st->ctl_response);
    st->ctl_threads_on = st->ctl_batch_on = st->ctl_response_on = false;
}
