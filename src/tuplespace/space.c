/* The tuple space on the loop.
 *
 * Index: a chained hash table of buckets keyed by (arity, first field's type
 * and value). A bucket holds its tuples in priority levels (an array sorted
 * by descending priority), each level a FIFO list in out order, plus the
 * waiting calls whose template's first field is an actual of that key.
 * Waiting calls whose first field is a formal wait in their arity's "wild"
 * list. Every waiting call carries a global sequence number, so an out
 * serves the waiters of its bucket and of its arity's wild list merged in
 * call order.
 *
 * Leases: a leased tuple leaves its bucket and sits in the lease table (a
 * hash by lease id) and the lease heap (a min-heap by deadline) with one
 * timer armed for the earliest deadline. A nack with a delay keeps the tuple
 * in the heap (state RETURNING) but drops its id.
 *
 * Allocation failure never loses a tuple: what a path needs is reserved
 * before the tuple moves (a bucket's level slot, a heap slot), and a tuple
 * that cannot come back from a lease for want of memory stays in the heap
 * and tries again a second later.
 *
 * Reentrancy: firing a Deferred runs its callbacks at once, and they may call
 * back into the space. Every structure is consistent before a Deferred is
 * fired, and the loops that fire re-read the structures after each firing. */
#include "tuplespace_internal.h"
#include "loop/loop_module.h"
#include <braid/time.h>
#include <stdlib.h>

static const char *const ts_names[] = {
    "tuple space: full (max_tuples or max_bytes)",
    "tuple space: no tuple matches",
    "tuple space: no such lease (acked, nacked, expired or never granted)",
    "tuple space: the peer speaks another protocol version",
    "tuple space: malformed protocol message",
};
BRAID__ERROR_DOMAIN(tuplespace, "tuplespace", BRAID_ETUPLE_FULL, BRAID_ETUPLE_PROTO, ts_names);

#define TS_DEFAULT_LEASE BRAID_SECONDS(30)
#define TS_RETRY_LATER BRAID_SECONDS(1)

/* ---- structures ----------------------------------------------------------------- */
typedef struct ts_level {
    int32_t prio;
    ts_entry *first, *last;
} ts_level;

typedef struct ts_waiter ts_waiter;

typedef struct ts_bucket {
    ts_hnode h;                      /* in ts->buckets */
    struct ts_bucket *aprev, *anext; /* in its arity's list */
    uint32_t arity;
    uint32_t nlevels, caplevels;
    uint32_t reserved;               /* level slots promised to outs in progress */
    size_t count;                    /* tuples stored */
    ts_level *levels;
    ts_waiter *wfirst, *wlast;       /* waiting calls keyed on this bucket */
    braid_field key;                 /* the first field (blob bytes follow the struct) */
} ts_bucket;

typedef struct ts_arity {
    ts_bucket *buckets;              /* every bucket of this arity */
    ts_waiter *wfirst, *wlast;       /* waiting calls whose first field is a formal */
    size_t tuples, nbuckets, waiting;   /* introspection: stored, buckets, waiting calls */
} ts_arity;

enum { W_IN = 1, W_RD, W_LEASE, W_OUT };

struct ts_waiter {
    ts_waiter *prev, *next;
    braid_tuplespace *ts;
    braid_deferred *d;
    ts_bucket *bucket;               /* keyed on it, or NULL: wild (or an out) */
    uint64_t seq;
    uint64_t lease_ns;
    ts_entry *entry;                 /* W_OUT: the tuple waiting for room */
    uint8_t kind;
    uint32_t n;
    braid_field tmpl[];              /* blob bytes follow */
};

struct braid_tuple_watch {
    braid_tuplespace *ts;
    braid_tuple_watch_cb cb;
    void *arg;
    braid_deferred_queue *q;                  /* the stream form: copies go here */
    uint64_t dropped;
    bool dead;
    uint32_t n;
    braid_field tmpl[];
};

struct braid_tuplespace {
    braid_loop *loop;
    braid_handle handle;
    braid_tuplespace_options o;
    char *dead_tag;
    char *name;                      /* the options' name, copied */
    braid_introspect_node inode;     /* its entry in the loop's "tuplespaces" section */
    ts_htab buckets;
    ts_arity arity[BRAID_TUPLE_MAX_FIELDS + 1];
    uint64_t seq;                    /* tuples' out order and waiters' call order */
    size_t count, bytes;             /* stored + leased */
    size_t nstored, nleased, nwaiters;
    size_t by_type[6];               /* stored tuples by their first field's type */
    size_t by_kind[W_OUT + 1];       /* waiting calls by kind */
    ts_waiter *ofirst, *olast;       /* outs waiting for room */
    bool admitting;
    /* leases */
    ts_htab leases;
    ts_entry **heap;
    uint32_t heap_len, heap_cap;
    uint64_t lease_seq;
    braid_timer timer;
    /* notify */
    braid_tuple_watch **watches;
    size_t nwatches, capwatches;
    unsigned notifying;
    bool watch_dead;
    ts_store *store;                 /* a durable space's database, or NULL */
    /* served connections (server.c) */
    struct ts_conn *conns;
    braid_tuplespace_serve_options serve;
    braid_tuplespace_stats st;
};

static void timer_fired(braid_timer *t, void *arg);

static int bucket_reserve(struct ts_bucket *b);
static struct ts_bucket *bucket_get(braid_tuplespace *ts, uint32_t arity, const braid_field *f0);
static void bucket_store(braid_tuplespace *ts, struct ts_bucket *b, ts_entry *e, bool back);
static void bucket_maybe_free(braid_tuplespace *ts, struct ts_bucket *b);

/* A row of a durable space, loaded at open: stored in out order. */
static int load_row(void *arg, uint64_t rowid, uint64_t seq, int32_t priority, uint32_t deliveries,
                    const braid_field *f, size_t n) {
    braid_tuplespace *ts = arg;
    ts_entry *e = braid__ts_entry_new(f, n);
    if (!e) return BRAID_ENOMEM;
    e->t.priority = priority;
    e->t.deliveries = deliveries;
    e->seq = seq;
    e->rowid = rowid;
    e->bytes = braid__ts_accounted(f, n);
    struct ts_bucket *b = bucket_get(ts, (uint32_t)n, &e->t.f[0]);
    if (!b || bucket_reserve(b) < 0) {
        if (b) bucket_maybe_free(ts, b);
        braid_free(e);
        return BRAID_ENOMEM;
    }
    bucket_store(ts, b, e, false);
    ts->count++;
    ts->bytes += e->bytes;
    if (seq > ts->seq) ts->seq = seq;
    return 0;
}

static int open_store(braid_tuplespace *ts) {
    char err[512] = "";
    int rc = braid__ts_store_open(ts->o.path, ts->o.sync_full, &ts->store, err, sizeof err);
    if (rc == 0) rc = braid__ts_store_load(ts->store, load_row, ts);
    if (rc < 0) braid__log(ts->loop, BRAID_LOG_WARN, "durable space %s: %s", err[0] ? err : ts->o.path,
                           braid_strerror(rc));
    return rc;
}

/* ---- introspection -------------------------------------------------------------------- */
static const char *const field_type_names[] = { "?", "int", "double", "string", "bytes", "bool" };

/* The space's entry in the loop's "tuplespaces" section: what it holds by
 * arity and by the type of the first field (the index key), the waiting
 * calls by kind, the leases, the connections serving it, its counters.
 * The tallies are kept as tuples and calls come and go, so the entry costs
 * the same whatever the space holds, but for one pass over the connections
 * serving it (and the leases each holds). Nothing allocated. */
static void describe(braid_json *j, void *arg) {
    braid_tuplespace *ts = arg;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", ts->name);
    braid_json_kv_bool(j, "durable", ts->store != NULL);
    braid_json_kv_u64(j, "tuples", ts->nstored);
    braid_json_kv_u64(j, "leased", ts->nleased);
    braid_json_kv_u64(j, "bytes", ts->bytes);
    braid_json_kv_u64(j, "max_tuples", ts->o.max_tuples);
    braid_json_kv_u64(j, "max_bytes", ts->o.max_bytes);
    braid_json_kv_u64(j, "buckets", ts->st.buckets);
    braid_json_key(j, "by_arity");
    braid_json_array_begin(j);
    for (uint32_t a = 1; a <= BRAID_TUPLE_MAX_FIELDS; a++) {
        const ts_arity *ar = &ts->arity[a];
        if (!ar->nbuckets && !ar->waiting) continue;
        braid_json_object_begin(j);
        braid_json_kv_u64(j, "arity", a);
        braid_json_kv_u64(j, "tuples", ar->tuples);
        braid_json_kv_u64(j, "buckets", ar->nbuckets);
        braid_json_kv_u64(j, "waiting", ar->waiting);
        braid_json_object_end(j);
    }
    braid_json_array_end(j);
    braid_json_key(j, "by_first_field");
    braid_json_object_begin(j);
    for (int t = 1; t < 6; t++) braid_json_kv_u64(j, field_type_names[t], ts->by_type[t]);
    braid_json_object_end(j);
    braid_json_key(j, "waiting");
    braid_json_object_begin(j);
    braid_json_kv_u64(j, "in", ts->by_kind[W_IN]);
    braid_json_kv_u64(j, "rd", ts->by_kind[W_RD]);
    braid_json_kv_u64(j, "in_lease", ts->by_kind[W_LEASE]);
    braid_json_kv_u64(j, "out_wait", ts->by_kind[W_OUT]);
    braid_json_object_end(j);
    braid_json_key(j, "leases");
    braid_json_object_begin(j);
    /* the heap holds the leased tuples and those nacked with a delay */
    braid_json_kv_u64(j, "held", ts->nleased);
    braid_json_kv_u64(j, "returning", ts->heap_len - ts->nleased);
    braid_json_key(j, "next_deadline_in_ns");
    if (ts->heap_len) {
        uint64_t now = braid_loop_now(ts->loop), dl = ts->heap[0]->deadline;
        braid_json_u64(j, dl > now ? dl - now : 0);
    } else {
        braid_json_null(j);
    }
    braid_json_object_end(j);
    braid_json_kv_u64(j, "watches", ts->nwatches);
    braid_json_key(j, "clients");            /* connections serving the space */
    braid__ts_server_describe(ts, j);
    braid_json_key(j, "ops");
    braid_json_object_begin(j);
    braid_json_kv_u64(j, "outs", ts->st.outs);
    braid_json_kv_u64(j, "ins", ts->st.ins);
    braid_json_kv_u64(j, "rds", ts->st.rds);
    braid_json_kv_u64(j, "acks", ts->st.acks);
    braid_json_kv_u64(j, "nacks", ts->st.nacks);
    braid_json_kv_u64(j, "expired", ts->st.expired);
    braid_json_kv_u64(j, "dead", ts->st.dead);
    braid_json_kv_u64(j, "full", ts->st.full);
    braid_json_object_end(j);
    braid_json_object_end(j);
}

/* ---- options, creation ------------------------------------------------------------ */
int braid_tuplespace_new(braid_loop *loop, const braid_tuplespace_options *opts,
                         braid_tuplespace **out) {
    BRAID__LOOP_AFFINE(loop);
    braid_tuplespace *ts = braid_calloc(1, sizeof *ts);
    if (!ts) return BRAID_ENOMEM;
    if (opts) ts->o = *opts;
    if (!ts->o.max_tuples) ts->o.max_tuples = 1000000;
    if (!ts->o.max_bytes) ts->o.max_bytes = 256u << 20;
    if (!ts->o.max_waiters) ts->o.max_waiters = 65536;
    if (!ts->o.max_deliveries) ts->o.max_deliveries = 10;
    ts->dead_tag = braid_strdup(ts->o.dead_letter_tag ? ts->o.dead_letter_tag : "dead");
    ts->o.dead_letter_tag = ts->dead_tag;
    ts->name = braid_strdup(ts->o.name ? ts->o.name : "tuplespace");
    ts->o.name = ts->name;
    ts->loop = loop;
    if (!ts->dead_tag || !ts->name || braid__ts_htab_init(&ts->buckets, 64) < 0 ||
        braid__ts_htab_init(&ts->leases, 64) < 0) {
        braid_free(ts->buckets.slots);
        braid_free(ts->name);
        braid_free(ts->dead_tag);
        braid_free(ts);
        return BRAID_ENOMEM;
    }
    braid_timer_init(loop, &ts->timer, timer_fired, ts);
    if (ts->o.path) {
        int rc = open_store(ts);
        if (rc < 0) {
            ts->o.path = NULL;
            braid_handle_open(loop, &ts->handle, "tuplespace");
            braid_tuplespace_free(ts);
            return rc;
        }
    }
    ts->o.path = NULL;               /* the caller's string: not kept */
    braid_handle_open(loop, &ts->handle, "tuplespace");
    braid_introspect_add(loop, &ts->inode, "tuplespaces", describe, ts);
    *out = ts;
    return 0;
}

braid_loop *braid_tuplespace_loop(const braid_tuplespace *ts) { return ts->loop; }

/* ---- buckets ------------------------------------------------------------------------ */
static ts_bucket *bucket_find(braid_tuplespace *ts, uint32_t arity, const braid_field *f0) {
    uint64_t h = braid__ts_key_hash(arity, f0);
    for (ts_hnode *n = ts->buckets.slots[h & ts->buckets.mask]; n; n = n->next) {
        ts_bucket *b = braid__container_of(n, ts_bucket, h);
        if (n->hash == h && b->arity == arity && braid__ts_key_eq(&b->key, f0)) return b;
    }
    return NULL;
}

static ts_bucket *bucket_get(braid_tuplespace *ts, uint32_t arity, const braid_field *f0) {
    ts_bucket *b = bucket_find(ts, arity, f0);
    if (b) return b;
    braid_field key = *f0;
    key.match = BRAID_FIELD_ACTUAL;
    size_t data = braid__ts_data_bytes(&key, 1);
    b = braid_malloc(sizeof *b + data);
    if (!b) return NULL;
    memset(b, 0, sizeof *b);
    char *d = (char *)(b + 1);
    braid__ts_copy_fields(&b->key, &key, 1, &d);
    b->arity = arity;
    b->h.hash = braid__ts_key_hash(arity, f0);
    braid__ts_htab_insert(&ts->buckets, &b->h);
    ts_arity *a = &ts->arity[arity];
    b->anext = a->buckets;
    if (a->buckets) a->buckets->aprev = b;
    a->buckets = b;
    a->nbuckets++;
    ts->st.buckets++;
    return b;
}

/* Free a bucket nobody needs any more. */
static void bucket_maybe_free(braid_tuplespace *ts, ts_bucket *b) {
    if (b->count || b->wfirst || b->reserved) return;
    braid__ts_htab_remove(&ts->buckets, &b->h);
    ts_arity *a = &ts->arity[b->arity];
    if (b->aprev) b->aprev->anext = b->anext;
    else a->buckets = b->anext;
    if (b->anext) b->anext->aprev = b->aprev;
    a->nbuckets--;
    ts->st.buckets--;
    braid_free(b->levels);
    braid_free(b);
}

/* Promise one more level slot (so a later store cannot fail). */
static int bucket_reserve(ts_bucket *b) {
    uint32_t need = b->nlevels + b->reserved + 1;
    if (b->caplevels < need) {
        uint32_t nc = b->caplevels ? b->caplevels * 2 : 4;
        while (nc < need) nc *= 2;
        ts_level *l = braid_realloc(b->levels, nc * sizeof *l);
        if (!l) return BRAID_ENOMEM;
        b->levels = l;
        b->caplevels = nc;
    }
    b->reserved++;
    return 0;
}

/* Store e in b (a slot reserved). Fresh tuples go to the end of their
 * level; a tuple coming back goes before every tuple out'd after it. */
static void bucket_store(braid_tuplespace *ts, ts_bucket *b, ts_entry *e, bool back) {
    BRAID__ASSERT(b->reserved > 0);
    b->reserved--;
    int32_t p = e->t.priority;
    uint32_t lo = 0, hi = b->nlevels;        /* levels sorted by descending priority */
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (b->levels[mid].prio > p) lo = mid + 1;
        else hi = mid;
    }
    if (lo == b->nlevels || b->levels[lo].prio != p) {
        BRAID__ASSERT(b->nlevels < b->caplevels);
        memmove(&b->levels[lo + 1], &b->levels[lo], (b->nlevels - lo) * sizeof *b->levels);
        b->levels[lo] = (ts_level){ p, NULL, NULL };
        b->nlevels++;
    }
    ts_level *l = &b->levels[lo];
    ts_entry *after = l->last;
    if (back) {
        after = NULL;
        for (ts_entry *x = l->first; x && x->seq < e->seq; x = x->next) after = x;
    }
    e->prev = after;
    e->next = after ? after->next : l->first;
    if (e->next) e->next->prev = e;
    else l->last = e;
    if (after) after->next = e;
    else l->first = e;
    e->bucket = b;
    e->state = TS_STORED;
    b->count++;
    ts->nstored++;
    ts->arity[b->arity].tuples++;
    ts->by_type[b->key.type < 6 ? b->key.type : 0]++;
}

/* Take e out of its bucket (the bucket may then be freed by the caller). */
static void bucket_unlink(braid_tuplespace *ts, ts_entry *e) {
    ts_bucket *b = e->bucket;
    uint32_t i = 0;
    while (b->levels[i].prio != e->t.priority) i++;
    ts_level *l = &b->levels[i];
    if (e->prev) e->prev->next = e->next;
    else l->first = e->next;
    if (e->next) e->next->prev = e->prev;
    else l->last = e->prev;
    if (!l->first) {
        memmove(&b->levels[i], &b->levels[i + 1], (b->nlevels - i - 1) * sizeof *b->levels);
        b->nlevels--;
    }
    b->count--;
    ts->nstored--;
    ts->arity[b->arity].tuples--;
    ts->by_type[b->key.type < 6 ? b->key.type : 0]--;
    e->bucket = NULL;
    e->prev = e->next = NULL;
    e->state = TS_LOOSE;
}

/* ---- finding tuples ------------------------------------------------------------------ */
/* The first tuple of b the template matches, skipping levels below min_prio
 * when have_min. */
static ts_entry *bucket_first_match(ts_bucket *b, const braid_field *tmpl, size_t n,
                                    bool have_min, int32_t min_prio) {
    /* The template's first field matches the bucket's key (the callers
     * check it), so when its other fields are all ANY the first tuple is
     * the answer: the usual job template costs no scan. */
    bool key_checked = true;
    for (size_t i = 1; i < n; i++)
        if (tmpl[i].match != BRAID_FIELD_ANY) { key_checked = false; break; }
    for (uint32_t i = 0; i < b->nlevels; i++) {
        if (have_min && b->levels[i].prio < min_prio) break;
        for (ts_entry *e = b->levels[i].first; e; e = e->next) {
            if (key_checked) return e;
            if (braid__ts_matches(tmpl, n, &e->t)) return e;
        }
    }
    return NULL;
}

static bool better(const ts_entry *a, const ts_entry *b) {   /* a goes before b */
    return !b || a->t.priority > b->t.priority || (a->t.priority == b->t.priority && a->seq < b->seq);
}

static ts_entry *find(braid_tuplespace *ts, const braid_field *tmpl, size_t n) {
    if (tmpl[0].match == BRAID_FIELD_ACTUAL) {
        ts_bucket *b = bucket_find(ts, (uint32_t)n, &tmpl[0]);
        if (!b || !braid__ts_field_matches(&tmpl[0], &b->key)) return NULL;   /* NaN */
        return bucket_first_match(b, tmpl, n, false, 0);
    }
    ts_entry *best = NULL;
    for (ts_bucket *b = ts->arity[n].buckets; b; b = b->anext) {
        if (!b->count || !braid__ts_field_matches(&tmpl[0], &b->key)) continue;
        ts_entry *e = bucket_first_match(b, tmpl, n, best != NULL, best ? best->t.priority : 0);
        if (e && better(e, best)) best = e;
    }
    return best;
}

/* ---- accounting and admission ------------------------------------------------------- */
static bool fits(const braid_tuplespace *ts, size_t bytes) {
    return ts->count + 1 <= ts->o.max_tuples && ts->bytes + bytes <= ts->o.max_bytes;
}

static void account_add(braid_tuplespace *ts, ts_entry *e) {
    ts->count++;
    ts->bytes += e->bytes;
}

static void offer(braid_tuplespace *ts, ts_bucket *b, ts_entry *e, bool back);

static void account_remove(braid_tuplespace *ts, ts_entry *e);

static int write_entry(braid_tuplespace *ts, ts_entry *e);

/* Admit waiting outs while there is room, in order. */
static void admit(braid_tuplespace *ts) {
    if (ts->admitting) return;
    ts->admitting = true;
    while (ts->ofirst && fits(ts, ts->ofirst->entry->bytes)) {
        ts_waiter *w = ts->ofirst;
        ts->ofirst = w->next;
        if (ts->ofirst) ts->ofirst->prev = NULL;
        else ts->olast = NULL;
        ts->nwaiters--;
        ts->by_kind[W_OUT]--;
        ts_entry *e = w->entry;
        braid_deferred *d = w->d;
        braid_free(w);
        if (write_entry(ts, e) < 0)
            braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "tuple space: out of memory"));
        else
            braid_deferred_callback(d, NULL, NULL);
    }
    ts->admitting = false;
}

static void account_remove(braid_tuplespace *ts, ts_entry *e) {
    ts->count--;
    ts->bytes -= e->bytes;
}

/* e leaves the space for good: its row goes (a failure leaves the row, so
 * the tuple comes back after a restart: at least once, never lost). */
static void forget(braid_tuplespace *ts, ts_entry *e) {
    if (!ts->store || !e->rowid) return;
    int rc = braid__ts_store_delete(ts->store, e->rowid);
    if (rc < 0) braid__log(ts->loop, BRAID_LOG_WARN, "durable space: deleting a row failed (%s)", braid_strerror(rc));
    e->rowid = 0;
}

/* ---- waiters --------------------------------------------------------------------- */
static void waiter_unlink(braid_tuplespace *ts, ts_waiter *w) {
    ts_waiter **first, **last;
    if (w->kind == W_OUT) { first = &ts->ofirst; last = &ts->olast; }
    else if (w->bucket) { first = &w->bucket->wfirst; last = &w->bucket->wlast; }
    else { first = &ts->arity[w->n].wfirst; last = &ts->arity[w->n].wlast; }
    if (w->prev) w->prev->next = w->next;
    else *first = w->next;
    if (w->next) w->next->prev = w->prev;
    else *last = w->prev;
    w->prev = w->next = NULL;
    ts->nwaiters--;
    ts->by_kind[w->kind]--;
    if (w->kind != W_OUT) ts->arity[w->n].waiting--;
    if (w->bucket) {
        ts_bucket *b = w->bucket;
        w->bucket = NULL;
        bucket_maybe_free(ts, b);
    }
}

static void waiter_free(ts_waiter *w) {
    if (w->entry) braid_free(w->entry);
    braid_free(w);
}

/* The first waiting call (in call order) whose template matches t. */
static ts_waiter *first_waiter(braid_tuplespace *ts, ts_bucket *b, const braid_tuple *t) {
    ts_waiter *x = b->wfirst, *y = ts->arity[t->n].wfirst;
    if (!x && !y) return NULL;
    while (x || y) {
        ts_waiter *w;
        if (x && (!y || x->seq < y->seq)) { w = x; x = x->next; }
        else { w = y; y = y->next; }
        if (braid__ts_matches(w->tmpl, w->n, t)) return w;
    }
    return NULL;
}

/* ---- leases ----------------------------------------------------------------------- */
static bool heap_less(const ts_entry *a, const ts_entry *b) { return a->deadline < b->deadline; }

static void heap_set(braid_tuplespace *ts, uint32_t i, ts_entry *e) {
    ts->heap[i] = e;
    e->heap_index = i;
}

static void heap_up(braid_tuplespace *ts, uint32_t i) {
    ts_entry *e = ts->heap[i];
    while (i > 0) {
        uint32_t p = (i - 1) / 2;
        if (!heap_less(e, ts->heap[p])) break;
        heap_set(ts, i, ts->heap[p]);
        i = p;
    }
    heap_set(ts, i, e);
}

static void heap_down(braid_tuplespace *ts, uint32_t i) {
    ts_entry *e = ts->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= ts->heap_len) break;
        if (c + 1 < ts->heap_len && heap_less(ts->heap[c + 1], ts->heap[c])) c++;
        if (!heap_less(ts->heap[c], e)) break;
        heap_set(ts, i, ts->heap[c]);
        i = c;
    }
    heap_set(ts, i, e);
}

static int heap_reserve(braid_tuplespace *ts) {
    if (ts->heap_len < ts->heap_cap) return 0;
    uint32_t nc = ts->heap_cap ? ts->heap_cap * 2 : 16;
    ts_entry **h = braid_realloc(ts->heap, nc * sizeof *h);
    if (!h) return BRAID_ENOMEM;
    ts->heap = h;
    ts->heap_cap = nc;
    return 0;
}

static void heap_push(braid_tuplespace *ts, ts_entry *e) {
    BRAID__ASSERT(ts->heap_len < ts->heap_cap);
    heap_set(ts, ts->heap_len++, e);
    heap_up(ts, e->heap_index);
}

static void heap_remove(braid_tuplespace *ts, ts_entry *e) {
    uint32_t i = e->heap_index;
    BRAID__ASSERT(i < ts->heap_len && ts->heap[i] == e);
    e->heap_index = UINT32_MAX;
    ts_entry *last = ts->heap[--ts->heap_len];
    if (i == ts->heap_len) return;
    heap_set(ts, i, last);
    heap_up(ts, i);
    heap_down(ts, last->heap_index);
}

/* The deadline of e moved: restore the heap's order. */
static void heap_fix(braid_tuplespace *ts, ts_entry *e) {
    heap_up(ts, e->heap_index);
    heap_down(ts, e->heap_index);
}

static void rearm(braid_tuplespace *ts) {
    if (!ts->heap_len) {
        braid_timer_stop(&ts->timer);
        return;
    }
    if (!braid_timer_is_active(&ts->timer) || braid_timer_deadline(&ts->timer) != ts->heap[0]->deadline) {
        braid_timer_start_at(&ts->timer, ts->heap[0]->deadline);
        braid_timer_unref(&ts->timer);
    }
}

static uint64_t deadline_after(braid_tuplespace *ts, uint64_t ns) {
    uint64_t now = braid_loop_now(ts->loop);
    return ns > UINT64_MAX - now ? UINT64_MAX : now + ns;
}

/* Grant a lease on loose e (a heap slot reserved): the copy for the taker. */
static void lease_grant(braid_tuplespace *ts, ts_entry *e, uint64_t lease_ns) {
    e->t.deliveries++;
    e->t.lease = ++ts->lease_seq;
    e->lnode.hash = e->t.lease;
    braid__ts_htab_insert(&ts->leases, &e->lnode);
    e->deadline = deadline_after(ts, lease_ns ? lease_ns : TS_DEFAULT_LEASE);
    e->state = TS_LEASED;
    ts->nleased++;
    if (ts->store && e->rowid && braid__ts_store_deliveries(ts->store, e->rowid, e->t.deliveries) < 0)
        braid__log(ts->loop, BRAID_LOG_WARN, "durable space: recording a delivery failed");
    heap_push(ts, e);
    rearm(ts);
}

static ts_entry *lease_find(braid_tuplespace *ts, uint64_t id) {
    if (!id) return NULL;
    for (ts_hnode *n = ts->leases.slots[id & ts->leases.mask]; n; n = n->next)
        if (n->hash == id) return braid__container_of(n, ts_entry, lnode);
    return NULL;
}

static void owner_unlink(ts_entry *e) {
    if (!e->owner) return;
    if (e->oprev) e->oprev->onext = e->onext;
    else *(ts_entry **)e->owner = e->onext;
    if (e->onext) e->onext->oprev = e->oprev;
    e->owner = NULL;
    e->oprev = e->onext = NULL;
}

/* The lease ends (ack, nack or expiry): e leaves the table (and the heap
 * when remove_heap), its id dies. */
static void lease_end(braid_tuplespace *ts, ts_entry *e, bool remove_heap) {
    braid__ts_htab_remove(&ts->leases, &e->lnode);
    owner_unlink(e);
    if (remove_heap) heap_remove(ts, e);
    ts->nleased--;
    e->t.lease = 0;
    e->state = TS_LOOSE;
}

/* A tuple coming back from a lease (loose, counted): to the waiting calls
 * and the index, or to the dead letters. false if memory ran out (then e
 * is untouched and still loose). */
static bool come_back(braid_tuplespace *ts, ts_entry *e) {
    if (ts->o.max_deliveries != UINT32_MAX && e->t.deliveries >= ts->o.max_deliveries) {
        if (e->t.n >= BRAID_TUPLE_MAX_FIELDS) {
            braid__log(ts->loop, BRAID_LOG_WARN, "dead letter of %u fields dropped (no room for the tag)",
                       e->t.n);
            account_remove(ts, e);
            forget(ts, e);
            braid_free(e);
            ts->st.dead++;
            admit(ts);
            return true;
        }
        braid_field f[BRAID_TUPLE_MAX_FIELDS];
        f[0] = braid_field_str(ts->dead_tag);
        memcpy(&f[1], e->t.f, e->t.n * sizeof(braid_field));
        ts_entry *d = braid__ts_entry_new(f, e->t.n + 1u);
        if (!d) return false;
        d->t.priority = e->t.priority;
        d->t.deliveries = e->t.deliveries;
        d->seq = ++ts->seq;
        d->bytes = braid__ts_accounted(f, e->t.n + 1u);
        ts_bucket *b = bucket_get(ts, d->t.n, &d->t.f[0]);
        if (!b || bucket_reserve(b) < 0) {
            if (b) bucket_maybe_free(ts, b);
            braid_free(d);
            return false;
        }
        if (ts->store && braid__ts_store_insert(ts->store, &d->t, d->seq, &d->rowid) < 0)
            braid__log(ts->loop, BRAID_LOG_WARN, "durable space: writing a dead letter failed");
        account_remove(ts, e);
        forget(ts, e);
        braid_free(e);
        account_add(ts, d);
        ts->st.dead++;
        offer(ts, b, d, false);
        admit(ts);
        return true;
    }
    ts_bucket *b = bucket_get(ts, e->t.n, &e->t.f[0]);
    if (!b || bucket_reserve(b) < 0) {
        if (b) bucket_maybe_free(ts, b);
        return false;
    }
    offer(ts, b, e, true);
    return true;
}

/* Put back leased (or returning) e now; on want of memory it stays in the
 * heap and tries again later. e is in the heap. */
static void put_back(braid_tuplespace *ts, ts_entry *e) {
    uint8_t state = e->state;
    if (state == TS_LEASED) lease_end(ts, e, false);
    heap_remove(ts, e);
    e->state = TS_LOOSE;
    if (!come_back(ts, e)) {
        /* the heap has the slot e just left */
        e->state = TS_RETURNING;
        e->deadline = deadline_after(ts, TS_RETRY_LATER);
        heap_push(ts, e);
        braid__log(ts->loop, BRAID_LOG_WARN, "out of memory putting back a leased tuple; retrying in 1 s");
    }
}

static void timer_fired(braid_timer *t, void *arg) {
    (void)t;
    braid_tuplespace *ts = arg;
    uint64_t now = braid_loop_now(ts->loop);
    /* Bounded: each tuple due now is handled once; one retried after a
     * memory failure gets a later deadline. */
    while (ts->heap_len && ts->heap[0]->deadline <= now) {
        ts_entry *e = ts->heap[0];
        if (e->state == TS_LEASED) ts->st.expired++;
        put_back(ts, e);
    }
    rearm(ts);
}

int braid_tuplespace_ack(braid_tuplespace *ts, uint64_t lease) {
    BRAID__LOOP_AFFINE(ts->loop);
    ts_entry *e = lease_find(ts, lease);
    if (!e) return BRAID_ETUPLE_NOLEASE;
    lease_end(ts, e, true);
    account_remove(ts, e);
    forget(ts, e);
    braid_free(e);
    ts->st.acks++;
    rearm(ts);
    admit(ts);
    return 0;
}

int braid_tuplespace_nack(braid_tuplespace *ts, uint64_t lease, uint64_t delay) {
    BRAID__LOOP_AFFINE(ts->loop);
    ts_entry *e = lease_find(ts, lease);
    if (!e) return BRAID_ETUPLE_NOLEASE;
    ts->st.nacks++;
    if (delay) {
        lease_end(ts, e, false);
        e->state = TS_RETURNING;
        e->deadline = deadline_after(ts, delay);
        heap_fix(ts, e);
    } else {
        put_back(ts, e);
    }
    rearm(ts);
    return 0;
}

int braid_tuplespace_renew(braid_tuplespace *ts, uint64_t lease, uint64_t lease_ns) {
    BRAID__LOOP_AFFINE(ts->loop);
    ts_entry *e = lease_find(ts, lease);
    if (!e) return BRAID_ETUPLE_NOLEASE;
    e->deadline = deadline_after(ts, lease_ns ? lease_ns : TS_DEFAULT_LEASE);
    heap_fix(ts, e);
    rearm(ts);
    return 0;
}

int braid__ts_lease_set_owner(braid_tuplespace *ts, uint64_t lease, ts_entry **list_head) {
    ts_entry *e = lease_find(ts, lease);
    if (!e) return BRAID_ETUPLE_NOLEASE;
    owner_unlink(e);
    e->owner = list_head;
    e->oprev = NULL;
    e->onext = *list_head;
    if (e->onext) e->onext->oprev = e;
    *list_head = e;
    return 0;
}

void braid__ts_owner_release(braid_tuplespace *ts, ts_entry **list_head) {
    while (*list_head) {
        ts_entry *e = *list_head;
        ts->st.nacks++;
        put_back(ts, e);             /* unlinks e from the owner's list */
    }
    rearm(ts);
}

struct ts_conn **braid__ts_conns(braid_tuplespace *ts) { return &ts->conns; }

braid_tuplespace_serve_options *braid__ts_serve_options(braid_tuplespace *ts) { return &ts->serve; }

/* ---- offering a tuple to the waiting calls ------------------------------------------- */
static braid_failure *oom(void) { return braid_failure_new(BRAID_ENOMEM, "tuple space: out of memory"); }

/* Offer loose, counted e (its bucket exists with a slot reserved for it)
 * to the waiting calls in order; store it if no taker takes it. back: e
 * comes back from a lease (keeps its turn). */
static void offer(braid_tuplespace *ts, ts_bucket *b, ts_entry *e, bool back) {
    BRAID__ASSERT(b && b->reserved > 0 && b == bucket_find(ts, e->t.n, &e->t.f[0]));
    for (;;) {
        ts_waiter *w = first_waiter(ts, b, &e->t);
        if (!w) break;
        braid_deferred *d = w->d;
        uint8_t kind = w->kind;
        uint64_t lease_ns = w->lease_ns;
        waiter_unlink(ts, w);         /* cannot free b: it is reserved */
        waiter_free(w);
        if (kind == W_RD) {
            braid_tuple *c = braid_tuple_copy(&e->t);
            if (c) {
                c->lease = 0;
                ts->st.rds++;
                braid_deferred_callback(d, c, braid_tuple_free_value);
            } else {
                braid_deferred_errback(d, oom());
            }
            continue;
        }
        if (kind == W_IN) {
            b->reserved--;
            bucket_maybe_free(ts, b);
            account_remove(ts, e);
            forget(ts, e);
            e->t.lease = 0;
            ts->st.ins++;
            braid_deferred_callback(d, &e->t, braid_tuple_free_value);
            admit(ts);
            return;
        }
        /* W_LEASE */
        braid_tuple *c = NULL;
        if (heap_reserve(ts) < 0 || !(c = braid_tuple_copy(&e->t))) {
            braid_deferred_errback(d, oom());
            continue;
        }
        b->reserved--;
        bucket_maybe_free(ts, b);
        lease_grant(ts, e, lease_ns);
        c->deliveries = e->t.deliveries;
        c->lease = e->t.lease;
        ts->st.ins++;
        braid_deferred_callback(d, c, braid_tuple_free_value);
        return;
    }
    bucket_store(ts, b, e, back);
}

/* ---- out -------------------------------------------------------------------------- */
static void notify(braid_tuplespace *ts, const braid_tuple *t) {
    if (!ts->nwatches) return;
    ts->notifying++;
    for (size_t i = 0; i < ts->nwatches; i++) {
        braid_tuple_watch *w = ts->watches[i];
        if (w->dead || !braid__ts_matches(w->tmpl, w->n, t)) continue;
        if (!w->q) { w->cb(t, w->arg); continue; }
        braid_tuple *c = braid_tuple_copy(t);
        if (!c || braid_deferred_queue_put(w->q, c, braid_tuple_free_value) < 0) {
            braid_tuple_free(c);      /* a put that fails leaves the value with us */
            w->dropped++;
        }
    }
    if (--ts->notifying == 0 && ts->watch_dead) {
        size_t k = 0;
        for (size_t i = 0; i < ts->nwatches; i++) {
            if (ts->watches[i]->dead) braid_free(ts->watches[i]);
            else ts->watches[k++] = ts->watches[i];
        }
        ts->nwatches = k;
        ts->watch_dead = false;
    }
}

/* A new entry for out (fields checked), accounted at `bytes`. */
static int prepare(const braid_field *f, size_t n, int32_t priority, size_t bytes, ts_entry **out) {
    ts_entry *e = braid__ts_entry_new(f, n);
    if (!e) return BRAID_ENOMEM;
    e->t.priority = priority;
    e->bytes = bytes;
    *out = e;
    return 0;
}

/* Write prepared e (room checked). */
static int write_entry(braid_tuplespace *ts, ts_entry *e) {
    ts_bucket *b = bucket_get(ts, e->t.n, &e->t.f[0]);
    if (!b || bucket_reserve(b) < 0) {
        if (b) bucket_maybe_free(ts, b);
        braid_free(e);
        return BRAID_ENOMEM;
    }
    e->seq = ++ts->seq;
    if (ts->store) {
        int rc = braid__ts_store_insert(ts->store, &e->t, e->seq, &e->rowid);
        if (rc < 0) {
            b->reserved--;
            bucket_maybe_free(ts, b);
            braid_free(e);
            return rc;
        }
    }
    account_add(ts, e);
    ts->st.outs++;
    /* The tuple is borrowed by notify callbacks; a callback cannot take it
     * (it is not in the space yet), and the bucket is held by the reservation. */
    notify(ts, &e->t);
    offer(ts, b, e, false);
    return 0;
}

int braid_tuplespace_out(braid_tuplespace *ts, const braid_field *f, size_t n, int32_t priority) {
    BRAID__LOOP_AFFINE(ts->loop);
    int rc = braid__ts_check(f, n, false);
    if (rc < 0) return rc;
    size_t bytes = braid__ts_accounted(f, n);
    if (!fits(ts, bytes) || ts->ofirst) {
        ts->st.full++;
        return BRAID_ETUPLE_FULL;
    }
    ts_entry *e;
    if ((rc = prepare(f, n, priority, bytes, &e)) < 0) return rc;
    return write_entry(ts, e);
}

static void waiter_cancel(braid_deferred *d, void *arg) {
    (void)d;
    ts_waiter *w = arg;
    waiter_unlink(w->ts, w);
    waiter_free(w);                 /* braid fails d with BRAID_ECANCELED */
}

static braid_deferred *fail_now(braid_loop *loop, int code, const char *what) {
    return braid_deferred_fail(loop, braid_failure_new(code, "%s", what));
}

/* Arm a timeout on a waiting call's Deferred; false (and d failed) if it
 * could not be allocated. */
static bool arm_timeout(braid_tuplespace *ts, ts_waiter *w, braid_deferred *d, uint64_t timeout) {
    if (timeout == BRAID_FOREVER) return true;
    if (braid_deferred_add_timeout(d, timeout) == 0) return true;
    waiter_unlink(ts, w);
    waiter_free(w);
    braid_deferred_errback(d, oom());
    return false;
}

braid_deferred *braid_tuplespace_out_wait(braid_tuplespace *ts, const braid_field *f, size_t n,
                                          int32_t priority, uint64_t timeout) {
    BRAID__LOOP_AFFINE(ts->loop);
    int rc = braid__ts_check(f, n, false);
    if (rc < 0) return fail_now(ts->loop, rc, "tuple space: out of an invalid tuple");
    size_t bytes = braid__ts_accounted(f, n);
    if (bytes > ts->o.max_bytes) return fail_now(ts->loop, BRAID_ETUPLE_FULL, "tuple larger than max_bytes");
    if (fits(ts, bytes) && !ts->ofirst) {
        rc = braid_tuplespace_out(ts, f, n, priority);
        if (rc < 0) return fail_now(ts->loop, rc, "tuple space: out");
        return braid_deferred_succeed(ts->loop, NULL, NULL);
    }
    if (timeout == 0) {
        ts->st.full++;
        return fail_now(ts->loop, BRAID_ETUPLE_FULL, "tuple space: full");
    }
    if (ts->nwaiters >= ts->o.max_waiters)
        return fail_now(ts->loop, BRAID_EQUEUE_FULL, "tuple space: too many waiting calls");
    ts_waiter *w = braid_calloc(1, sizeof *w);
    ts_entry *e = NULL;
    if (!w || prepare(f, n, priority, bytes, &e) < 0) {
        braid_free(w);
        return fail_now(ts->loop, BRAID_ENOMEM, "tuple space: out of memory");
    }
    braid_deferred *d = braid_deferred_new_cancellable(ts->loop, waiter_cancel, w);
    if (!d) {
        braid_free(e);
        braid_free(w);
        return NULL;
    }
    w->ts = ts;
    w->d = d;
    w->kind = W_OUT;
    w->entry = e;
    w->seq = ++ts->seq;
    w->prev = ts->olast;
    if (ts->olast) ts->olast->next = w;
    else ts->ofirst = w;
    ts->olast = w;
    ts->nwaiters++;
    ts->by_kind[W_OUT]++;
    arm_timeout(ts, w, d, timeout);
    return d;
}

/* ---- in, rd, in_lease ----------------------------------------------------------------- */
/* Take or copy a found entry for a call that did not wait. */
static braid_tuple *take(braid_tuplespace *ts, ts_entry *e) {
    ts_bucket *b = e->bucket;
    bucket_unlink(ts, e);
    bucket_maybe_free(ts, b);
    account_remove(ts, e);
    forget(ts, e);
    ts->st.ins++;
    return &e->t;
}

static int take_lease(braid_tuplespace *ts, ts_entry *e, uint64_t lease_ns, braid_tuple **out) {
    braid_tuple *c;
    if (heap_reserve(ts) < 0 || !(c = braid_tuple_copy(&e->t))) return BRAID_ENOMEM;
    ts_bucket *b = e->bucket;
    bucket_unlink(ts, e);
    bucket_maybe_free(ts, b);
    lease_grant(ts, e, lease_ns);
    c->deliveries = e->t.deliveries;
    c->lease = e->t.lease;
    ts->st.ins++;
    *out = c;
    return 0;
}

int braid_tuplespace_inp(braid_tuplespace *ts, const braid_field *tmpl, size_t n, braid_tuple **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return rc;
    ts_entry *e = find(ts, tmpl, n);
    if (!e) return BRAID_ETUPLE_NOMATCH;
    *out = take(ts, e);
    admit(ts);
    return 0;
}

int braid_tuplespace_rdp(braid_tuplespace *ts, const braid_field *tmpl, size_t n, braid_tuple **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return rc;
    ts_entry *e = find(ts, tmpl, n);
    if (!e) return BRAID_ETUPLE_NOMATCH;
    braid_tuple *c = braid_tuple_copy(&e->t);
    if (!c) return BRAID_ENOMEM;
    c->lease = 0;
    ts->st.rds++;
    *out = c;
    return 0;
}

int braid_tuplespace_inp_lease(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                               uint64_t lease_ns, braid_tuple **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return rc;
    ts_entry *e = find(ts, tmpl, n);
    if (!e) return BRAID_ETUPLE_NOMATCH;
    return take_lease(ts, e, lease_ns, out);
}

static braid_deferred *wait_for(braid_tuplespace *ts, uint8_t kind, const braid_field *tmpl,
                                size_t n, uint64_t lease_ns, uint64_t timeout) {
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return fail_now(ts->loop, rc, "tuple space: invalid template");
    braid_tuple *t = NULL;
    if (kind == W_IN) rc = braid_tuplespace_inp(ts, tmpl, n, &t);
    else if (kind == W_RD) rc = braid_tuplespace_rdp(ts, tmpl, n, &t);
    else rc = braid_tuplespace_inp_lease(ts, tmpl, n, lease_ns, &t);
    if (rc == 0) return braid_deferred_succeed(ts->loop, t, braid_tuple_free_value);
    if (rc != BRAID_ETUPLE_NOMATCH || timeout == 0)
        return fail_now(ts->loop, rc, rc == BRAID_ETUPLE_NOMATCH ? "tuple space: no match" : "tuple space");
    if (ts->nwaiters >= ts->o.max_waiters)
        return fail_now(ts->loop, BRAID_EQUEUE_FULL, "tuple space: too many waiting calls");
    ts_bucket *b = NULL;
    if (tmpl[0].match == BRAID_FIELD_ACTUAL && !(b = bucket_get(ts, (uint32_t)n, &tmpl[0])))
        return fail_now(ts->loop, BRAID_ENOMEM, "tuple space: out of memory");
    ts_waiter *w = braid_malloc(sizeof *w + n * sizeof(braid_field) + braid__ts_data_bytes(tmpl, n));
    braid_deferred *d = w ? braid_deferred_new_cancellable(ts->loop, waiter_cancel, w) : NULL;
    if (!d) {
        braid_free(w);
        if (b) bucket_maybe_free(ts, b);
        return w ? NULL : fail_now(ts->loop, BRAID_ENOMEM, "tuple space: out of memory");
    }
    memset(w, 0, sizeof *w);
    char *data = (char *)&w->tmpl[n];
    braid__ts_copy_fields(w->tmpl, tmpl, n, &data);
    w->n = (uint32_t)n;
    w->ts = ts;
    w->d = d;
    w->kind = kind;
    w->lease_ns = lease_ns;
    w->bucket = b;
    w->seq = ++ts->seq;
    ts_waiter **first = b ? &b->wfirst : &ts->arity[n].wfirst;
    ts_waiter **last = b ? &b->wlast : &ts->arity[n].wlast;
    w->prev = *last;
    if (*last) (*last)->next = w;
    else *first = w;
    *last = w;
    ts->nwaiters++;
    ts->by_kind[kind]++;
    ts->arity[n].waiting++;
    arm_timeout(ts, w, d, timeout);
    return d;
}

braid_deferred *braid_tuplespace_in(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                    uint64_t timeout) {
    BRAID__LOOP_AFFINE(ts->loop);
    return wait_for(ts, W_IN, tmpl, n, 0, timeout);
}

braid_deferred *braid_tuplespace_rd(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                    uint64_t timeout) {
    BRAID__LOOP_AFFINE(ts->loop);
    return wait_for(ts, W_RD, tmpl, n, 0, timeout);
}

braid_deferred *braid_tuplespace_in_lease(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                                          uint64_t lease_ns, uint64_t timeout) {
    BRAID__LOOP_AFFINE(ts->loop);
    return wait_for(ts, W_LEASE, tmpl, n, lease_ns, timeout);
}

/* ---- in_all, rd_all ---------------------------------------------------------------- */
static int cmp_entries(const void *a, const void *b) {
    const ts_entry *x = *(ts_entry *const *)a, *y = *(ts_entry *const *)b;
    if (x->t.priority != y->t.priority) return x->t.priority > y->t.priority ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Every matching entry, in priority order, into a new array. */
static int collect(braid_tuplespace *ts, const braid_field *tmpl, size_t n, ts_entry ***out,
                   size_t *count) {
    size_t k = 0, cap = 0;
    ts_entry **v = NULL;
    ts_bucket *only = NULL;
    if (tmpl[0].match == BRAID_FIELD_ACTUAL) {
        only = bucket_find(ts, (uint32_t)n, &tmpl[0]);
        if (!only) { *out = NULL; *count = 0; return 0; }
    }
    for (ts_bucket *b = only ? only : ts->arity[n].buckets; b; b = only ? NULL : b->anext) {
        if (!b->count || !braid__ts_field_matches(&tmpl[0], &b->key)) continue;
        for (uint32_t i = 0; i < b->nlevels; i++) {
            for (ts_entry *e = b->levels[i].first; e; e = e->next) {
                if (!braid__ts_matches(tmpl, n, &e->t)) continue;
                if (k == cap) {
                    size_t nc = cap ? cap * 2 : 16;
                    ts_entry **nv = braid_realloc(v, nc * sizeof *nv);
                    if (!nv) { braid_free(v); return BRAID_ENOMEM; }
                    v = nv;
                    cap = nc;
                }
                v[k++] = e;
            }
        }
    }
    if (!only && k > 1) qsort(v, k, sizeof *v, cmp_entries);
    *out = v;
    *count = k;
    return 0;
}

static int all(braid_tuplespace *ts, bool take_them, const braid_field *tmpl, size_t n, size_t max,
               braid_tuple_list **out) {
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0) return rc;
    ts_entry **v;
    size_t k;
    if ((rc = collect(ts, tmpl, n, &v, &k)) < 0) return rc;
    if (max && k > max) k = max;
    braid_tuple_list *l = braid_malloc(sizeof *l + k * sizeof(braid_tuple *));
    if (!l) { braid_free(v); return BRAID_ENOMEM; }
    l->n = 0;
    for (size_t i = 0; i < k; i++) {
        if (take_them) {
            l->t[l->n++] = take(ts, v[i]);
            continue;
        }
        braid_tuple *c = braid_tuple_copy(&v[i]->t);
        if (!c) { braid_tuple_list_free(l); braid_free(v); return BRAID_ENOMEM; }
        c->lease = 0;
        l->t[l->n++] = c;
        ts->st.rds++;
    }
    braid_free(v);
    *out = l;
    if (take_them) admit(ts);
    return 0;
}

int braid_tuplespace_in_all(braid_tuplespace *ts, const braid_field *tmpl, size_t n, size_t max,
                            braid_tuple_list **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    return all(ts, true, tmpl, n, max, out);
}

int braid_tuplespace_rd_all(braid_tuplespace *ts, const braid_field *tmpl, size_t n, size_t max,
                            braid_tuple_list **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    return all(ts, false, tmpl, n, max, out);
}

/* ---- notify ------------------------------------------------------------------------- */
static int watch_add(braid_tuplespace *ts, const braid_field *tmpl, size_t n, braid_tuple_watch_cb cb,
                     void *arg, braid_deferred_queue *q, braid_tuple_watch **out) {
    int rc = braid__ts_check(tmpl, n, true);
    if (rc < 0 || (!cb && !q)) return BRAID_EINVAL;
    if (ts->nwatches == ts->capwatches) {
        size_t nc = ts->capwatches ? ts->capwatches * 2 : 8;
        braid_tuple_watch **v = braid_realloc(ts->watches, nc * sizeof *v);
        if (!v) return BRAID_ENOMEM;
        ts->watches = v;
        ts->capwatches = nc;
    }
    braid_tuple_watch *w = braid_malloc(sizeof *w + n * sizeof(braid_field) + braid__ts_data_bytes(tmpl, n));
    if (!w) return BRAID_ENOMEM;
    char *data = (char *)&w->tmpl[n];
    braid__ts_copy_fields(w->tmpl, tmpl, n, &data);
    w->n = (uint32_t)n;
    w->ts = ts;
    w->cb = cb;
    w->arg = arg;
    w->q = q;
    w->dropped = 0;
    w->dead = false;
    ts->watches[ts->nwatches++] = w;
    if (out) *out = w;
    return 0;
}

int braid_tuplespace_notify(braid_tuplespace *ts, const braid_field *tmpl, size_t n,
                            braid_tuple_watch_cb cb, void *arg, braid_tuple_watch **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    return cb ? watch_add(ts, tmpl, n, cb, arg, NULL, out) : BRAID_EINVAL;
}

int braid_tuplespace_notify_queue(braid_tuplespace *ts, const braid_field *tmpl, size_t n, braid_deferred_queue *q,
                                  braid_tuple_watch **out) {
    BRAID__LOOP_AFFINE(ts->loop);
    return q ? watch_add(ts, tmpl, n, NULL, NULL, q, out) : BRAID_EINVAL;
}

uint64_t braid_tuple_watch_dropped(const braid_tuple_watch *w) { return w->dropped; }

void braid_tuple_watch_free(braid_tuple_watch *w) {
    if (!w) return;
    braid_tuplespace *ts = w->ts;
    BRAID__LOOP_AFFINE(ts->loop);
    if (ts->notifying) {
        w->dead = true;
        ts->watch_dead = true;
        return;
    }
    for (size_t i = 0; i < ts->nwatches; i++) {
        if (ts->watches[i] == w) {
            memmove(&ts->watches[i], &ts->watches[i + 1], (ts->nwatches - i - 1) * sizeof *ts->watches);
            ts->nwatches--;
            break;
        }
    }
    braid_free(w);
}

/* ---- statistics, teardown ----------------------------------------------------------- */
void braid_tuplespace_stats_get(const braid_tuplespace *ts, braid_tuplespace_stats *out) {
    *out = ts->st;
    out->tuples = ts->nstored;
    out->leased = ts->nleased;
    out->bytes = ts->bytes;
    out->waiters = ts->nwaiters;
}

static void fail_waiters(braid_tuplespace *ts, ts_waiter *w) {
    if (!w) return;
    braid_deferred *d = w->d;
    waiter_unlink(ts, w);
    waiter_free(w);
    braid_deferred_errback(d, braid_failure_new(BRAID_ESHUTDOWN, "tuple space freed"));
}

void braid_tuplespace_free(braid_tuplespace *ts) {
    if (!ts) return;
    BRAID__LOOP_AFFINE(ts->loop);
    braid_introspect_remove(ts->loop, &ts->inode);
    /* Waiting calls first: their callbacks may still look at the space. */
    while (ts->ofirst) fail_waiters(ts, ts->ofirst);
    for (size_t a = 1; a <= BRAID_TUPLE_MAX_FIELDS; a++) {
        while (ts->arity[a].wfirst) fail_waiters(ts, ts->arity[a].wfirst);
        for (ts_bucket *b = ts->arity[a].buckets; b;) {
            if (b->wfirst) { fail_waiters(ts, b->wfirst); b = ts->arity[a].buckets; continue; }
            b = b->anext;
        }
    }
    if (ts->conns) braid__ts_server_detach(ts);
    braid_timer_stop(&ts->timer);
    for (uint32_t i = 0; i < ts->heap_len; i++) braid_free(ts->heap[i]);
    braid_free(ts->heap);
    for (size_t a = 1; a <= BRAID_TUPLE_MAX_FIELDS; a++) {
        for (ts_bucket *b = ts->arity[a].buckets, *nb; b; b = nb) {
            nb = b->anext;
            for (uint32_t i = 0; i < b->nlevels; i++) {
                for (ts_entry *e = b->levels[i].first, *ne; e; e = ne) {
                    ne = e->next;
                    braid_free(e);
                }
            }
            braid_free(b->levels);
            braid_free(b);
        }
    }
    for (size_t i = 0; i < ts->nwatches; i++) braid_free(ts->watches[i]);
    braid_free(ts->watches);
    braid_free(ts->buckets.slots);
    braid_free(ts->leases.slots);
    braid_free(ts->dead_tag);
    braid_free(ts->name);
    braid__ts_store_close(ts->store);
    braid_handle_close(ts->loop, &ts->handle);
    braid_free(ts);
}
