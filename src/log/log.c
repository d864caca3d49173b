/* Structured logging: the logger (filters, observers, the early ring, the
 * cross-thread queue), the built-in observers (text, JSON lines, ring,
 * callback) and per-call-site rate limits.
 *
 * On the loop's thread an event is built on the stack and handed to each
 * observer. From another thread it is copied (one allocation: the event,
 * its fields and their strings) into a bounded queue under a mutex, and
 * the first event into an empty queue wakes the loop, which drains the
 * queue in its posted phase. Filters are read on the loop's thread; other
 * threads see only the lowest level any filter lets through (one relaxed
 * atomic), and the loop applies the namespace filters when it drains. */
#include "log_internal.h"
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

const braid_ctx_key braid_log_request_id_key =
    BRAID_CTX_KEY_INIT("log.request_id", BRAID_CTX_U64, "the request id log events carry (0: none)");

#define MSG_MAX 1024
#define DEFAULT_QUEUE 1024

typedef struct rule {
    char *ns;
    size_t len;
    braid_log_level level;
} rule;

typedef enum { OBS_CALLBACK, OBS_TEXT, OBS_JSON, OBS_RING, OBS_LEGACY } obs_kind;

struct braid_log_observer {
    braid_log_observer *next;
    braid_logger *lg;
    obs_kind kind;
    braid_log_observer_fn fn;
    void *arg;
    int fd;
    braid_log_cb legacy;
    /* ring */
    braid_log_event **ring;
    size_t cap, head, count;
};

struct braid_logger {
    braid__logger_hooks h;
    _Atomic int floor;                /* lowest level any filter passes */
    braid_log_level dflt;
    rule *rules;
    size_t nrules;
    braid_log_observer *obs;
    /* early ring: events kept while there is no observer, in slots of
     * EARLY_SLOT bytes made with the logger */
    char *early;
    size_t early_head, early_count;
    bool early_done;                  /* an observer was added once: stop keeping */
    /* cross-thread queue */
    pthread_mutex_t mu;
    braid_log_event **q;
    size_t qcap, qhead, qcount;
    _Atomic bool woken;
    _Atomic uint64_t emitted, queued, dropped;
    uint64_t early_lost;
};

static const char *const level_names[] = { "debug", "info", "warn", "error" };

/* ---- copies of events ---------------------------------------------------------------- */
/* An event and everything it points to in one block: its size, and the
 * copy made in mem (of that size). */
static size_t copy_size(const braid_log_event *ev) {
    size_t nlen = ev->ns ? strlen(ev->ns) + 1 : 0, mlen = strlen(ev->msg) + 1;
    size_t size = sizeof *ev + ev->nfields * sizeof(braid_log_field) + nlen + mlen;
    for (size_t i = 0; i < ev->nfields; i++) {
        size += strlen(ev->fields[i].key) + 1;
        if (ev->fields[i].type == BRAID_LOG_FIELD_STR && ev->fields[i].v.str)
            size += strlen(ev->fields[i].v.str) + 1;
    }
    return size;
}

static braid_log_event *copy_into(const braid_log_event *ev, void *mem) {
    braid_log_event *c = mem;
    *c = *ev;
    braid_log_field *f = (braid_log_field *)(c + 1);
    char *p = (char *)(f + ev->nfields);
#define COPY_STR(dst, src)                     \
    do {                                       \
        size_t n_ = strlen(src) + 1;           \
        memcpy(p, (src), n_);                  \
        (dst) = p;                             \
        p += n_;                               \
    } while (0)
    if (ev->ns) COPY_STR(c->ns, ev->ns);
    COPY_STR(c->msg, ev->msg);
    for (size_t i = 0; i < ev->nfields; i++) {
        f[i] = ev->fields[i];
        COPY_STR(f[i].key, ev->fields[i].key);
        if (f[i].type == BRAID_LOG_FIELD_STR && ev->fields[i].v.str) COPY_STR(f[i].v.str, ev->fields[i].v.str);
    }
#undef COPY_STR
    c->fields = f;
    return c;
}

static braid_log_event *event_copy(const braid_log_event *ev) {
    void *mem = braid_malloc(copy_size(ev));
    return mem ? copy_into(ev, mem) : NULL;
}

/* The early ring's slots are made with the logger: keeping an event there
 * allocates nothing. One that does not fit keeps its level, namespace and
 * as much of its message as fits, without its fields. */
#define EARLY_SLOT 512
static void early_keep(braid_logger *lg, const braid_log_event *ev);

/* ---- formatting -------------------------------------------------------------------- */
/* Append to buf[*n..cap), truncating. */
static void put(char *buf, size_t cap, size_t *n, const char *fmt, ...) BRAID_PRINTF(4, 5);
static void put(char *buf, size_t cap, size_t *n, const char *fmt, ...) {
    if (*n >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(buf + *n, cap - *n, fmt, ap);
    va_end(ap);
    if (k > 0) *n = *n + (size_t)k < cap ? *n + (size_t)k : cap - 1;
}

static void put_json_str(char *buf, size_t cap, size_t *n, const char *s) {
    put(buf, cap, n, "\"");
    for (; s && *s && *n + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') put(buf, cap, n, "\\%c", ch);
        else if (ch == '\n') put(buf, cap, n, "\\n");
        else if (ch < 0x20) put(buf, cap, n, "\\u%04x", ch);
        else buf[(*n)++] = (char)ch;
    }
    if (*n < cap) buf[*n] = 0;
    put(buf, cap, n, "\"");
}

static void put_field_value(char *buf, size_t cap, size_t *n, const braid_log_field *f, bool json) {
    switch (f->type) {
    case BRAID_LOG_FIELD_I64: put(buf, cap, n, "%lld", (long long)f->v.i64); break;
    case BRAID_LOG_FIELD_U64: put(buf, cap, n, "%llu", (unsigned long long)f->v.u64); break;
    case BRAID_LOG_FIELD_F64: put(buf, cap, n, "%.17g", f->v.f64); break;
    case BRAID_LOG_FIELD_BOOL: put(buf, cap, n, "%s", f->v.b ? "true" : "false"); break;
    case BRAID_LOG_FIELD_STR:
        if (json) put_json_str(buf, cap, n, f->v.str ? f->v.str : "");
        else put(buf, cap, n, "%s", f->v.str ? f->v.str : "");
        break;
    default: put(buf, cap, n, "null"); break;
    }
}

/* The default sink's line: "braid[warn] loop: msg key=value" (braid's own
 * namespaces are printed without their "braid." prefix). */
static size_t format_default(const braid_log_event *ev, char *buf, size_t cap) {
    size_t n = 0;
    const char *ns = ev->ns;
    if (ns && !strncmp(ns, "braid.", 6)) ns += 6;
    if (ns) put(buf, cap, &n, "braid[%s] %s: %s", level_names[ev->level & 3], ns, ev->msg);
    else put(buf, cap, &n, "braid[%s]: %s", level_names[ev->level & 3], ev->msg);
    for (size_t i = 0; i < ev->nfields; i++) {
        put(buf, cap, &n, " %s=", ev->fields[i].key);
        put_field_value(buf, cap, &n, &ev->fields[i], false);
    }
    if (ev->request_id) put(buf, cap, &n, " request_id=%llu", (unsigned long long)ev->request_id);
    put(buf, cap, &n, "\n");
    return n;
}

static size_t format_time(uint64_t t, char *buf, size_t cap) {
    time_t s = (time_t)(t / 1000000000u);
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(buf, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    int k = snprintf(buf + n, cap - n, ".%03uZ", (unsigned)(t / 1000000u % 1000u));
    return n + (k > 0 ? (size_t)k : 0);
}

static size_t format_text(const braid_log_event *ev, char *buf, size_t cap) {
    size_t n = format_time(ev->time_ns, buf, cap);
    put(buf, cap, &n, " %s %s: %s", level_names[ev->level & 3], ev->ns ? ev->ns : "-", ev->msg);
    for (size_t i = 0; i < ev->nfields; i++) {
        put(buf, cap, &n, " %s=", ev->fields[i].key);
        put_field_value(buf, cap, &n, &ev->fields[i], false);
    }
    if (ev->request_id) put(buf, cap, &n, " request_id=%llu", (unsigned long long)ev->request_id);
    put(buf, cap, &n, "\n");
    return n;
}

/* One JSON object: time (ns), level, ns, msg, request_id, then the fields
 * under "fields" (so a field cannot shadow the event's own keys). */
static size_t format_json(const braid_log_event *ev, char *buf, size_t cap) {
    size_t n = 0;
    char ts[40];
    format_time(ev->time_ns, ts, sizeof ts);
    put(buf, cap, &n, "{\"time\":\"%s\",\"time_ns\":%llu,\"level\":\"%s\",\"ns\":", ts,
        (unsigned long long)ev->time_ns, level_names[ev->level & 3]);
    if (ev->ns) put_json_str(buf, cap, &n, ev->ns);
    else put(buf, cap, &n, "null");
    put(buf, cap, &n, ",\"msg\":");
    put_json_str(buf, cap, &n, ev->msg);
    if (ev->request_id) put(buf, cap, &n, ",\"request_id\":%llu", (unsigned long long)ev->request_id);
    put(buf, cap, &n, ",\"fields\":{");
    for (size_t i = 0; i < ev->nfields; i++) {
        if (i) put(buf, cap, &n, ",");
        put_json_str(buf, cap, &n, ev->fields[i].key);
        put(buf, cap, &n, ":");
        put_field_value(buf, cap, &n, &ev->fields[i], true);
    }
    put(buf, cap, &n, "}}\n");
    if (n >= cap - 1) {            /* truncated: keep the line valid JSON */
        n = 0;
        put(buf, cap, &n, "{\"time_ns\":%llu,\"level\":\"%s\",\"msg\":\"(event too long)\",\"fields\":{}}\n",
            (unsigned long long)ev->time_ns, level_names[ev->level & 3]);
    }
    return n;
}

static void write_all(int fd, const char *buf, size_t n) {
    while (n) {
        ssize_t k = write(fd, buf, n);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) return;       /* a log line is not worth blocking or failing for */
        buf += k;
        n -= (size_t)k;
    }
}

/* ---- delivery (loop thread) ------------------------------------------------------------ */
static void ring_push(braid_log_event **ring, size_t cap, size_t *head, size_t *count,
                      braid_log_event *c, uint64_t *lost) {
    if (*count == cap) {
        braid_free(ring[*head]);
        ring[*head] = c;
        *head = (*head + 1) % cap;
        if (lost) (*lost)++;
    } else {
        ring[(*head + *count) % cap] = c;
        (*count)++;
    }
}

static void observe(braid_log_observer *o, const braid_log_event *ev) {
    char buf[MSG_MAX * 2];
    switch (o->kind) {
    case OBS_CALLBACK: o->fn(ev, o->arg); break;
    case OBS_LEGACY: o->legacy(o->arg, ev->level, ev->msg); break;
    case OBS_TEXT: write_all(o->fd, buf, format_text(ev, buf, sizeof buf)); break;
    case OBS_JSON: write_all(o->fd, buf, format_json(ev, buf, sizeof buf)); break;
    case OBS_RING: {
        braid_log_event *c = event_copy(ev);
        if (c) ring_push(o->ring, o->cap, &o->head, &o->count, c, NULL);
        break;
    }
    }
}

static braid_log_level level_for(const braid_logger *lg, const char *ns) {
    braid_log_level lv = lg->dflt;
    size_t best = 0;
    if (!ns) return lv;
    for (size_t i = 0; i < lg->nrules; i++) {
        const rule *r = &lg->rules[i];
        if (r->len < best || strncmp(ns, r->ns, r->len)) continue;
        if (ns[r->len] != 0 && ns[r->len] != '.') continue;
        best = r->len;
        lv = r->level;
    }
    return lv;
}

static void deliver(braid_logger *lg, const braid_log_event *ev) {
    if (lg->obs) {
        for (braid_log_observer *o = lg->obs, *next; o; o = next) {
            next = o->next;            /* an observer may remove itself */
            observe(o, ev);
        }
        return;
    }
    char buf[MSG_MAX * 2];
    size_t n = format_default(ev, buf, sizeof buf);
    fwrite(buf, 1, n, stderr);
    if (!lg->early_done) early_keep(lg, ev);
}

static void early_keep(braid_logger *lg, const braid_log_event *ev) {
    size_t i;
    if (lg->early_count == BRAID_LOG_EARLY) {
        i = lg->early_head;
        lg->early_head = (lg->early_head + 1) % BRAID_LOG_EARLY;
        lg->early_lost++;
    } else {
        i = (lg->early_head + lg->early_count++) % BRAID_LOG_EARLY;
    }
    char *slot = lg->early + i * EARLY_SLOT;
    if (copy_size(ev) <= EARLY_SLOT) {
        copy_into(ev, slot);
        return;
    }
    char msg[EARLY_SLOT];
    braid_log_event t = *ev;
    t.nfields = 0;
    t.fields = NULL;
    size_t nlen = t.ns ? strlen(t.ns) + 1 : 0;
    if (nlen > 64) t.ns = NULL, nlen = 0;
    size_t room = EARLY_SLOT - sizeof t - nlen;
    snprintf(msg, room < sizeof msg ? room : sizeof msg, "%s", ev->msg);
    t.msg = msg;
    copy_into(&t, slot);
}

static braid_log_event *early_at(braid_logger *lg, size_t k) {
    return (braid_log_event *)(lg->early + ((lg->early_head + k) % BRAID_LOG_EARLY) * EARLY_SLOT);
}

/* ---- the logger ----------------------------------------------------------------------- */
static void recompute_floor(braid_logger *lg) {
    int f = (int)lg->dflt;
    for (size_t i = 0; i < lg->nrules; i++)
        if ((int)lg->rules[i].level < f) f = (int)lg->rules[i].level;
    atomic_store_explicit(&lg->floor, f, memory_order_relaxed);
}

static int add_observer(braid_logger *lg, braid_log_observer *o);

braid_logger *braid__logger_new(const braid__logger_hooks *h) {
    braid_logger *lg = braid_calloc(1, sizeof *lg);
    if (!lg) return NULL;
    lg->h = *h;
    lg->qcap = h->queue_limit ? h->queue_limit : DEFAULT_QUEUE;
    lg->q = braid_malloc(lg->qcap * sizeof *lg->q);
    lg->early = braid_malloc((size_t)BRAID_LOG_EARLY * EARLY_SLOT);
    if (!lg->q || !lg->early) {
        braid_free(lg->q);
        braid_free(lg->early);
        braid_free(lg);
        return NULL;
    }
    pthread_mutex_init(&lg->mu, NULL);
    const char *e = getenv("BRAID_LOG_DEBUG");
    lg->dflt = e && *e && strcmp(e, "0") ? BRAID_LOG_DEBUG : BRAID_LOG_INFO;
    recompute_floor(lg);
    if (h->legacy) {
        braid_log_observer *o = braid_calloc(1, sizeof *o);
        if (!o) {
            braid__logger_free(lg);
            return NULL;
        }
        o->kind = OBS_LEGACY;
        o->legacy = h->legacy;
        o->arg = h->legacy_ctx;
        add_observer(lg, o);
        lg->dflt = BRAID_LOG_DEBUG;    /* the user's sink always had every line */
        recompute_floor(lg);
    }
    return lg;
}

void braid__logger_free(braid_logger *lg) {
    if (!lg) return;
    braid__logger_drain(lg);
    while (lg->obs) braid_log_observer_remove(lg->obs);
    braid_free(lg->early);
    for (size_t i = 0; i < lg->nrules; i++) braid_free(lg->rules[i].ns);
    braid_free(lg->rules);
    pthread_mutex_destroy(&lg->mu);
    braid_free(lg->q);
    braid_free(lg);
}

bool braid__logger_pending(braid_logger *lg) {
    pthread_mutex_lock(&lg->mu);
    bool p = lg->qcount != 0;
    pthread_mutex_unlock(&lg->mu);
    return p;
}

void braid__logger_drain(braid_logger *lg) {
    atomic_store(&lg->woken, false);   /* before taking: a later push wakes again */
    for (;;) {
        braid_log_event *batch[64];
        size_t n = 0;
        pthread_mutex_lock(&lg->mu);
        while (n < 64 && lg->qcount) {
            batch[n++] = lg->q[lg->qhead];
            lg->qhead = (lg->qhead + 1) % lg->qcap;
            lg->qcount--;
        }
        pthread_mutex_unlock(&lg->mu);
        if (!n) return;
        for (size_t i = 0; i < n; i++) {
            if (batch[i]->level >= level_for(lg, batch[i]->ns)) deliver(lg, batch[i]);
            braid_free(batch[i]);
        }
    }
}

static bool on_owner(braid_logger *lg) { return lg->h.on_owner ? lg->h.on_owner(lg->h.arg) : true; }

bool braid_log_enabled(braid_logger *lg, braid_log_level level, const char *ns) {
    if (!lg || (int)level < atomic_load_explicit(&lg->floor, memory_order_relaxed)) return false;
    if (!lg->nrules || !on_owner(lg)) return true;   /* others: the loop filters when it drains */
    return level >= level_for(lg, ns);
}

static uint64_t wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void emit(braid_logger *lg, uint64_t time_ns, braid_log_level level, const char *ns,
                 const braid_log_field *fields, size_t nfields, const char *fmt, va_list ap) {
    bool owner = on_owner(lg);
    if (owner && lg->nrules && level < level_for(lg, ns)) return;
    char msg[MSG_MAX];
    vsnprintf(msg, sizeof msg, fmt, ap);
    braid_log_event ev = {
        .time_ns = time_ns ? time_ns : wall_now(), .level = level, .ns = ns, .msg = msg, .fields = fields,
        .nfields = nfields, .request_id = braid_ctx_get_u64(&braid_log_request_id_key, 0),
        .from_thread = !owner,
    };
    if (owner) {
        atomic_fetch_add_explicit(&lg->emitted, 1, memory_order_relaxed);
        deliver(lg, &ev);
        return;
    }
    braid_log_event *c = event_copy(&ev);
    bool queued = false, wake = false;
    pthread_mutex_lock(&lg->mu);
    if (c && lg->qcount < lg->qcap) {
        lg->q[(lg->qhead + lg->qcount) % lg->qcap] = c;
        lg->qcount++;
        queued = true;
        wake = !atomic_exchange(&lg->woken, true);
    }
    pthread_mutex_unlock(&lg->mu);
    if (!queued) {            /* the queue is full (or no memory for the copy) */
        braid_free(c);
        atomic_fetch_add_explicit(&lg->dropped, 1, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&lg->emitted, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&lg->queued, 1, memory_order_relaxed);
    if (wake && lg->h.wake) lg->h.wake(lg->h.arg);
}

void braid_log_vemit(braid_logger *lg, braid_log_level level, const char *ns, const braid_log_field *fields,
                     size_t nfields, const char *fmt, va_list ap) {
    if (!lg || (int)level < atomic_load_explicit(&lg->floor, memory_order_relaxed)) return;
    emit(lg, 0, level, ns, fields, nfields, fmt, ap);
}

void braid_log_emit(braid_logger *lg, braid_log_level level, const char *ns, const braid_log_field *fields,
                    size_t nfields, const char *fmt, ...) {
    if (!lg || (int)level < atomic_load_explicit(&lg->floor, memory_order_relaxed)) return;
    va_list ap;
    va_start(ap, fmt);
    emit(lg, 0, level, ns, fields, nfields, fmt, ap);
    va_end(ap);
}

void braid_log_emit_at(braid_logger *lg, uint64_t time_ns, braid_log_level level, const char *ns,
                       const braid_log_field *fields, size_t nfields, const char *fmt, ...) {
    if (!lg || (int)level < atomic_load_explicit(&lg->floor, memory_order_relaxed)) return;
    va_list ap;
    va_start(ap, fmt);
    emit(lg, time_ns, level, ns, fields, nfields, fmt, ap);
    va_end(ap);
}

void braid_log_emit_limited(braid_logger *lg, braid_log_level level, const char *ns, uint64_t suppressed,
                            const braid_log_field *fields, size_t nfields, const char *fmt, ...) {
    braid_log_field f[17];
    if (suppressed && nfields < 16) {
        if (nfields) memcpy(f, fields, nfields * sizeof *f);
        f[nfields++] = BRAID_LOG_U64("suppressed", suppressed);
        fields = f;
    }
    va_list ap;
    va_start(ap, fmt);
    braid_log_vemit(lg, level, ns, fields, nfields, fmt, ap);
    va_end(ap);
}

/* A token bucket in one word: the high 40 bits are the time (ms) of the
 * last refill, the low 24 bits the tokens left. */
bool braid_log_limit_take(braid_log_limit *l, unsigned per_second, unsigned burst, uint64_t *suppressed) {
    uint64_t now_ms = wall_now() / 1000000u;
    if (burst == 0) burst = 1;
    if (burst > 0xffffff) burst = 0xffffff;
    uint64_t s = atomic_load_explicit(&l->state, memory_order_relaxed);
    for (;;) {
        uint64_t last = s >> 24, tokens = s & 0xffffff;
        if (s == 0) last = now_ms, tokens = burst;           /* first use: a full bucket */
        if (now_ms > last && per_second) {
            uint64_t add = (now_ms - last) * per_second / 1000u;
            if (add) {
                tokens = tokens + add > burst ? burst : tokens + add;
                last = now_ms;
            }
        }
        bool ok = tokens > 0;
        uint64_t ns = ((last & 0xffffffffffu) << 24) | (ok ? tokens - 1 : tokens);
        if (atomic_compare_exchange_weak_explicit(&l->state, &s, ns, memory_order_relaxed, memory_order_relaxed)) {
            if (!ok) {
                atomic_fetch_add_explicit(&l->suppressed, 1, memory_order_relaxed);
                return false;
            }
            *suppressed = atomic_exchange_explicit(&l->suppressed, 0, memory_order_relaxed);
            return true;
        }
    }
}

/* ---- observers ---------------------------------------------------------------------------- */
static int add_observer(braid_logger *lg, braid_log_observer *o) {
    o->lg = lg;
    /* Appended: observers see events in the order they were added. */
    braid_log_observer **pp = &lg->obs;
    while (*pp) pp = &(*pp)->next;
    *pp = o;
    if (!lg->early_done) {
        lg->early_done = true;
        for (size_t i = 0; i < lg->early_count; i++) observe(o, early_at(lg, i));
        lg->early_count = lg->early_head = 0;
    }
    return 0;
}

static int new_observer(braid_logger *lg, obs_kind kind, braid_log_observer **out, braid_log_observer **o) {
    (void)out;   /* may be NULL: the observer then lives until the loop goes */
    if (!lg) return BRAID_EINVAL;
    *o = braid_calloc(1, sizeof **o);
    if (!*o) return BRAID_ENOMEM;
    (*o)->kind = kind;
    return 0;
}

int braid_logger_add_callback(braid_logger *lg, braid_log_observer_fn fn, void *arg, braid_log_observer **out) {
    braid_log_observer *o;
    if (!fn) return BRAID_EINVAL;
    int rc = new_observer(lg, OBS_CALLBACK, out, &o);
    if (rc < 0) return rc;
    o->fn = fn;
    o->arg = arg;
    if (out) *out = o;
    return add_observer(lg, o);
}

static int add_fd(braid_logger *lg, obs_kind kind, int fd, braid_log_observer **out) {
    braid_log_observer *o;
    if (fd < 0) return BRAID_EINVAL;
    int rc = new_observer(lg, kind, out, &o);
    if (rc < 0) return rc;
    o->fd = fd;
    if (out) *out = o;
    return add_observer(lg, o);
}
int braid_logger_add_text(braid_logger *lg, int fd, braid_log_observer **out) { return add_fd(lg, OBS_TEXT, fd, out); }
int braid_logger_add_json(braid_logger *lg, int fd, braid_log_observer **out) { return add_fd(lg, OBS_JSON, fd, out); }

int braid_logger_add_ring(braid_logger *lg, size_t capacity, braid_log_observer **out) {
    braid_log_observer *o;
    if (capacity == 0) return BRAID_EINVAL;
    int rc = new_observer(lg, OBS_RING, out, &o);
    if (rc < 0) return rc;
    o->ring = braid_calloc(capacity, sizeof *o->ring);
    if (!o->ring) {
        braid_free(o);
        return BRAID_ENOMEM;
    }
    o->cap = capacity;
    if (out) *out = o;
    return add_observer(lg, o);
}

size_t braid_log_ring_visit(braid_log_observer *o, braid_log_observer_fn fn, void *arg) {
    if (!o || o->kind != OBS_RING) return 0;
    if (fn)
        for (size_t i = 0; i < o->count; i++) fn(o->ring[(o->head + i) % o->cap], arg);
    return o->count;
}

void braid_log_observer_remove(braid_log_observer *o) {
    if (!o) return;
    braid_logger *lg = o->lg;
    for (braid_log_observer **pp = &lg->obs; *pp; pp = &(*pp)->next)
        if (*pp == o) {
            *pp = o->next;
            break;
        }
    if (o->kind == OBS_RING) {
        for (size_t i = 0; i < o->count; i++) braid_free(o->ring[(o->head + i) % o->cap]);
        braid_free(o->ring);
    }
    braid_free(o);
}

/* ---- filters and statistics ------------------------------------------------------------------ */
int braid_logger_set_level(braid_logger *lg, const char *ns, braid_log_level level) {
    if (!lg || (unsigned)level > BRAID_LOG_ERROR) return BRAID_EINVAL;
    if (!ns) {
        lg->dflt = level;
        recompute_floor(lg);
        return 0;
    }
    size_t len = strlen(ns);
    for (size_t i = 0; i < lg->nrules; i++)
        if (lg->rules[i].len == len && !memcmp(lg->rules[i].ns, ns, len)) {
            lg->rules[i].level = level;
            recompute_floor(lg);
            return 0;
        }
    rule *r = braid_realloc(lg->rules, (lg->nrules + 1) * sizeof *r);
    if (!r) return BRAID_ENOMEM;
    lg->rules = r;
    char *copy = braid_malloc(len + 1);
    if (!copy) return BRAID_ENOMEM;
    memcpy(copy, ns, len + 1);
    r[lg->nrules++] = (rule){ copy, len, level };
    recompute_floor(lg);
    return 0;
}

void braid_logger_stats_get(braid_logger *lg, braid_logger_stats *out) {
    memset(out, 0, sizeof *out);
    if (!lg) return;
    out->emitted = atomic_load_explicit(&lg->emitted, memory_order_relaxed);
    out->queued = atomic_load_explicit(&lg->queued, memory_order_relaxed);
    out->dropped = atomic_load_explicit(&lg->dropped, memory_order_relaxed);
    out->queue_limit = lg->qcap;
    if (on_owner(lg)) out->early_lost = lg->early_lost;
}
