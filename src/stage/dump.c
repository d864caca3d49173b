/* Stages: statistics, the edges between stages, and the graph dump.
 *
 * Every stage is listed under its loop (a loop key), so the whole graph of
 * a loop can be written out with live counters: text for a terminal, JSON
 * for tools, Graphviz DOT for a picture. Edges are learnt as the program
 * runs: an enqueue made while a handler runs counts as an edge from that
 * handler's stage. */
#include "stage_internal.h"
#include <inttypes.h>
#include <string.h>

typedef struct registry {
    braid_stage *head;
} registry;

static void registry_free(braid_loop *loop, void *value) {
    (void)loop;
    braid_free(value);
}
static braid_loop_key registry_key = BRAID_LOOP_KEY_INIT("stage", registry_free, NULL);

int braid__stage_register(braid_stage *st) {
    braid_loop *loop = st->dom->loop;
    registry *r = braid_loop_data(loop, &registry_key);
    if (!r) {
        if (!(r = braid_calloc(1, sizeof *r))) return BRAID_ENOMEM;
        if (braid_loop_set_data(loop, &registry_key, r) < 0) {
            braid_free(r);
            return BRAID_ENOMEM;
        }
    }
    st->reg_prev = NULL;
    st->reg_next = r->head;
    if (r->head) r->head->reg_prev = st;
    r->head = st;
    return 0;
}

/* Where an edge to a freed stage pointed: never a stage's address. */
static char gone_mark;
#define GONE ((braid_stage *)(void *)&gone_mark)

void braid__stage_unregister(braid_stage *st) {
    registry *r = braid_loop_data(st->dom->loop, &registry_key);
    /* Edges into st keep their slot but no longer name it. */
    for (braid_stage *s = r->head; s; s = s->reg_next)
        for (int i = 0; i < BRAID__STAGE_EDGES; i++) {
            braid_stage *expect = st;
            __atomic_compare_exchange_n(&s->edges[i].to, &expect, GONE, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE);
        }
    if (st->reg_prev) st->reg_prev->reg_next = st->reg_next;
    else r->head = st->reg_next;
    if (st->reg_next) st->reg_next->reg_prev = st->reg_prev;
}

uint64_t *braid__stage_edge_count(braid_stage *from, braid_stage *to, size_t n) {
    for (int i = 0; i < BRAID__STAGE_EDGES; i++) {
        braid__stage_edge *e = &from->edges[i];
        braid_stage *t = __atomic_load_n(&e->to, __ATOMIC_ACQUIRE);
        if (!t) {
            braid_stage *expect = NULL;
            if (!__atomic_compare_exchange_n(&e->to, &expect, to, false, __ATOMIC_ACQ_REL,
                                             __ATOMIC_ACQUIRE))
                t = expect;
            else
                t = to;
        }
        if (t == to) {
            if (from->dom->pool) {
                __atomic_fetch_add(&e->count, n, __ATOMIC_RELAXED);
            } else {   /* only the loop's thread runs a loop-domain stage: no RMW needed */
                uint64_t c = __atomic_load_n(&e->count, __ATOMIC_RELAXED);
                __atomic_store_n(&e->count, c + n, __ATOMIC_RELAXED);
            }
            return &e->count;
        }
    }
    /* More than BRAID__STAGE_EDGES targets: the rest go uncounted. */
    return NULL;
}

void braid_stage_stats_get(braid_stage *st, braid_stage_stats *out) {
    braid__stage_lock(st);
    *out = st->st;
    out->queue_length = st->len;
    out->queue_limit = st->cap;
    out->reserved = st->reserved;
    out->batch_max = st->batch_max;
    out->threads = st->threads;
    out->running = st->running;
    out->admit_rate = st->admit == ADMIT_RATE ? st->bucket.rate : 0;
    out->p90_response = braid__stage_p90_locked(st);
    braid__stage_unlock(st);
}

/* ---- introspection ------------------------------------------------------------------------- */
/* One entry of the loop's "stages" section: the counters a dashboard
 * wants, and "links" (the names of the stages it has sent to) for the
 * introspection page's graph, with the counts in "edges". Loop thread. */
void braid__stage_describe(braid_json *j, void *arg) {
    braid_stage *st = arg;
    braid_stage_stats s;
    braid_stage_stats_get(st, &s);
    braid__stage_lock(st);
    bool clogged = st->clogged;
    braid__stage_unlock(st);
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", st->name);
    braid_json_kv_str(j, "domain", st->dom->name);
    braid_json_kv_bool(j, "pool", st->dom->pool != NULL);
    braid_json_kv_u64(j, "queue", s.queue_length);
    braid_json_kv_u64(j, "queue_limit", s.queue_limit);
    braid_json_kv_u64(j, "threads", s.threads);
    braid_json_kv_u64(j, "running", s.running);
    braid_json_kv_u64(j, "accepted", s.accepted);
    braid_json_kv_u64(j, "handled", s.handled);
    braid_json_kv_u64(j, "rejected", s.rejected_full + s.rejected_admission + s.rejected_closed);
    braid_json_kv_u64(j, "dropped", s.dropped);
    braid_json_kv_bool(j, "clogged", clogged);
    braid_json_kv_u64(j, "p90_response_ns", s.p90_response);
    braid_json_key(j, "links");
    braid_json_array_begin(j);
    for (int i = 0; i < BRAID__STAGE_EDGES; i++) {
        braid_stage *to = __atomic_load_n(&st->edges[i].to, __ATOMIC_ACQUIRE);
        if (to && to != GONE) braid_json_str(j, to->name);
    }
    braid_json_array_end(j);
    braid_json_key(j, "edges");
    braid_json_array_begin(j);
    for (int i = 0; i < BRAID__STAGE_EDGES; i++) {
        braid_stage *to = __atomic_load_n(&st->edges[i].to, __ATOMIC_ACQUIRE);
        if (!to || to == GONE) continue;
        braid_json_object_begin(j);
        braid_json_kv_str(j, "to", to->name);
        braid_json_kv_u64(j, "events", __atomic_load_n(&st->edges[i].count, __ATOMIC_RELAXED));
        braid_json_object_end(j);
    }
    braid_json_array_end(j);
    braid_json_object_end(j);
}

/* ---- the dump ------------------------------------------------------------------------------ */
static const char *admit_name(int a) {
    switch (a) {
    case ADMIT_THRESHOLD: return "threshold";
    case ADMIT_RATE: return "token-bucket";
    case ADMIT_CLASSES: return "class-buckets";
    case ADMIT_FN: return "function";
    default: return "all";
    }
}

/* JSON strings: names are the user's, so escape them. */
static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void dot_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

int braid_stage_dump(braid_loop *loop, braid_stage_format fmt, FILE *out) {
    if (!loop || !out || fmt > BRAID_STAGE_DOT) return BRAID_EINVAL;
    BRAID__LOOP_AFFINE(loop);
    registry *r = braid_loop_data(loop, &registry_key);
    braid_stage *head = r ? r->head : NULL;
    /* The registry lists newest first; print in creation order. */
    size_t n = 0;
    for (braid_stage *s = head; s; s = s->reg_next) n++;
    braid_stage **v = n ? braid_malloc(n * sizeof *v) : NULL;
    if (n && !v) return BRAID_ENOMEM;
    size_t i = n;
    for (braid_stage *s = head; s; s = s->reg_next) v[--i] = s;

    if (fmt == BRAID_STAGE_JSON) fputs("{\"stages\":[", out);
    if (fmt == BRAID_STAGE_DOT) fputs("digraph stages {\n  rankdir=LR;\n  node [shape=box];\n", out);
    for (i = 0; i < n; i++) {
        braid_stage *s = v[i];
        braid_stage_stats ss;
        braid_stage_stats_get(s, &ss);
        braid__stage_lock(s);
        int admit = s->admit;
        braid__stage_unlock(s);
        uint64_t q50 = braid_pool_hist_quantile(ss.queue_hist, 0.5);
        uint64_t q99 = braid_pool_hist_quantile(ss.queue_hist, 0.99);
        uint64_t s50 = braid_pool_hist_quantile(ss.service_hist, 0.5);
        uint64_t s90 = braid_pool_hist_quantile(ss.service_hist, 0.9);
        uint64_t s99 = braid_pool_hist_quantile(ss.service_hist, 0.99);
        uint64_t r90 = braid_pool_hist_quantile(ss.response_hist, 0.9);
        switch (fmt) {
        case BRAID_STAGE_TEXT:
            fprintf(out,
                    "stage %s [domain %s] queue %zu/%zu (max %zu) arrivals %" PRIu64 " accepted %" PRIu64
                    " rejected full %" PRIu64 " admission %" PRIu64 " closed %" PRIu64 " dropped %" PRIu64
                    " handled %" PRIu64 " batches %" PRIu64 " batch_max %zu threads %u runs direct %" PRIu64
                    " scheduled %" PRIu64 " admit %s rate %.1f queue p50/p99 <= %" PRIu64 "/%" PRIu64
                    " ns service p50/p90/p99 <= %" PRIu64 "/%" PRIu64 "/%" PRIu64 " ns response p90 <= %" PRIu64
                    " ns\n",
                    s->name, s->dom->name, ss.queue_length, ss.queue_limit, ss.queue_max, ss.arrivals,
                    ss.accepted, ss.rejected_full, ss.rejected_admission, ss.rejected_closed, ss.dropped,
                    ss.handled, ss.batches, ss.batch_max, ss.threads, ss.runs_direct, ss.runs_scheduled,
                    admit_name(admit), ss.admit_rate, q50, q99, s50, s90, s99, r90);
            break;
        case BRAID_STAGE_JSON:
            fputs(i ? ",{\"name\":" : "{\"name\":", out);
            json_str(out, s->name);
            fputs(",\"domain\":", out);
            json_str(out, s->dom->name);
            fprintf(out,
                    ",\"queue\":%zu,\"limit\":%zu,\"queue_max\":%zu,\"arrivals\":%" PRIu64
                    ",\"accepted\":%" PRIu64 ",\"rejected\":{\"full\":%" PRIu64 ",\"admission\":%" PRIu64
                    ",\"closed\":%" PRIu64 "},\"dropped\":%" PRIu64 ",\"handled\":%" PRIu64
                    ",\"batches\":%" PRIu64 ",\"batch_max\":%zu,\"threads\":%u,\"runs_direct\":%" PRIu64
                    ",\"runs_scheduled\":%" PRIu64 ",\"admit\":\"%s\",\"rate\":%.3f"
                    ",\"queue_ns\":{\"p50\":%" PRIu64 ",\"p99\":%" PRIu64 "}"
                    ",\"service_ns\":{\"p50\":%" PRIu64 ",\"p90\":%" PRIu64 ",\"p99\":%" PRIu64 "}"
                    ",\"response_p90_ns\":%" PRIu64 ",\"edges\":[",
                    ss.queue_length, ss.queue_limit, ss.queue_max, ss.arrivals, ss.accepted,
                    ss.rejected_full, ss.rejected_admission, ss.rejected_closed, ss.dropped, ss.handled,
                    ss.batches, ss.batch_max, ss.threads, ss.runs_direct, ss.runs_scheduled,
                    admit_name(admit), ss.admit_rate, q50, q99, s50, s90, s99, r90);
            break;
        case BRAID_STAGE_DOT:
            fputs("  ", out);
            dot_str(out, s->name);
            fprintf(out, " [label=\"%s\\n%s | queue %zu/%zu | handled %" PRIu64 " | rejected %" PRIu64 "\"];\n",
                    s->name, s->dom->name, ss.queue_length, ss.queue_limit, ss.handled,
                    ss.rejected_full + ss.rejected_admission + ss.rejected_closed);
            break;
        }
        int ne = 0;
        for (int e = 0; e < BRAID__STAGE_EDGES; e++) {
            braid_stage *to = __atomic_load_n(&s->edges[e].to, __ATOMIC_ACQUIRE);
            if (!to) break;
            if (to == GONE) continue;
            uint64_t c = __atomic_load_n(&s->edges[e].count, __ATOMIC_RELAXED);
            switch (fmt) {
            case BRAID_STAGE_TEXT:
                fprintf(out, "  -> %s (%" PRIu64 ")\n", to->name, c);
                break;
            case BRAID_STAGE_JSON:
                fputs(ne ? ",{\"to\":" : "{\"to\":", out);
                json_str(out, to->name);
                fprintf(out, ",\"events\":%" PRIu64 "}", c);
                break;
            case BRAID_STAGE_DOT:
                fputs("  ", out);
                dot_str(out, s->name);
                fputs(" -> ", out);
                dot_str(out, to->name);
                fprintf(out, " [label=\"%" PRIu64 "\"];\n", c);
                break;
            }
            ne++;
        }
        if (fmt == BRAID_STAGE_JSON) fputs("]}", out);
    }
    if (fmt == BRAID_STAGE_JSON) fputs("]}\n", out);
    if (fmt == BRAID_STAGE_DOT) fputs("}\n", out);
    braid_free(v);
    return ferror(out) ? BRAID_EINVAL : 0;
}
