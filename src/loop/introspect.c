/* Introspection (<braid/introspect.h>): a JSON writer, the loop's registry
 * of section nodes, and the document with the loop's own section. */
#include "loop_internal.h"
#include <braid/introspect.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

/* ---- the writer ----------------------------------------------------------------------- */
#define JSON_DEPTH 32

struct braid_json {
    char *buf;
    size_t len, cap;
    bool failed;
    unsigned depth;                  /* open containers */
    unsigned skip;                   /* containers opened past JSON_DEPTH */
    bool first[JSON_DEPTH + 1];      /* no element yet at this depth */
    char closer[JSON_DEPTH + 1];     /* '}' or ']' of the container at this depth */
    bool after_key;                  /* a key was written: the value follows without a comma */
};

static void put(braid_json *j, const char *s, size_t n) {
    if (j->failed) return;
    if (j->len + n + 1 > j->cap) {
        size_t cap = j->cap ? j->cap : 1024;
        while (cap < j->len + n + 1) cap *= 2;
        char *b = braid_realloc(j->buf, cap);
        if (!b) { j->failed = true; return; }
        j->buf = b;
        j->cap = cap;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = 0;
}
static void puts_(braid_json *j, const char *s) { put(j, s, strlen(s)); }
static void putf(braid_json *j, const char *fmt, ...) BRAID_PRINTF(2, 3);
static void putf(braid_json *j, const char *fmt, ...) {
    char tmp[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n > 0) put(j, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* Before a value or a key: the comma, unless first in its container or
 * right after a key. */
static void sep(braid_json *j) {
    if (j->after_key) { j->after_key = false; return; }
    if (j->depth == 0) return;
    if (!j->first[j->depth]) puts_(j, ",");
    j->first[j->depth] = false;
}

static void put_str(braid_json *j, const char *s) {
    puts_(j, "\"");
    const char *run = s;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch >= 0x20 && ch != '"' && ch != '\\') continue;
        put(j, run, (size_t)(s - run));
        if (ch == '"' || ch == '\\') putf(j, "\\%c", ch);
        else if (ch == '\n') puts_(j, "\\n");
        else putf(j, "\\u%04x", ch);
        run = s + 1;
    }
    put(j, run, (size_t)(s - run));
    puts_(j, "\"");
}

static void open_(braid_json *j, const char *c) {
    if (j->skip || j->depth == JSON_DEPTH) {      /* too deep: the value is null */
        if (!j->skip) { sep(j); puts_(j, "null"); }
        j->skip++;
        return;
    }
    sep(j);
    puts_(j, c);
    j->depth++;
    j->first[j->depth] = true;
    j->closer[j->depth] = c[0] == '{' ? '}' : ']';
}
/* Close the innermost container (whichever it is: a mismatched end is
 * taken as the right one, the document stays well formed). */
static void close_(braid_json *j) {
    if (j->skip) { j->skip--; return; }
    if (j->depth == 0) return;
    char c = j->closer[j->depth--];
    j->after_key = false;
    put(j, &c, 1);
}

void braid_json_object_begin(braid_json *j) { open_(j, "{"); }
void braid_json_object_end(braid_json *j) { close_(j); }
void braid_json_array_begin(braid_json *j) { open_(j, "["); }
void braid_json_array_end(braid_json *j) { close_(j); }

void braid_json_key(braid_json *j, const char *key) {
    if (j->skip) return;
    sep(j);
    put_str(j, key ? key : "");
    puts_(j, ":");
    j->after_key = true;
}
void braid_json_str(braid_json *j, const char *s) {
    if (j->skip) return;
    sep(j);
    if (s) put_str(j, s);
    else puts_(j, "null");
}
void braid_json_u64(braid_json *j, uint64_t v) {
    if (j->skip) return;
    sep(j);
    putf(j, "%llu", (unsigned long long)v);
}
void braid_json_i64(braid_json *j, int64_t v) {
    if (j->skip) return;
    sep(j);
    putf(j, "%lld", (long long)v);
}
void braid_json_f64(braid_json *j, double v) {
    if (j->skip) return;
    sep(j);
    if (isfinite(v)) putf(j, "%.17g", v);
    else puts_(j, "null");
}
void braid_json_bool(braid_json *j, bool v) {
    if (j->skip) return;
    sep(j);
    puts_(j, v ? "true" : "false");
}
void braid_json_null(braid_json *j) {
    if (j->skip) return;
    sep(j);
    puts_(j, "null");
}
void braid_json_kv_str(braid_json *j, const char *k, const char *s) { braid_json_key(j, k); braid_json_str(j, s); }
void braid_json_kv_u64(braid_json *j, const char *k, uint64_t v) { braid_json_key(j, k); braid_json_u64(j, v); }
void braid_json_kv_i64(braid_json *j, const char *k, int64_t v) { braid_json_key(j, k); braid_json_i64(j, v); }
void braid_json_kv_f64(braid_json *j, const char *k, double v) { braid_json_key(j, k); braid_json_f64(j, v); }
void braid_json_kv_bool(braid_json *j, const char *k, bool v) { braid_json_key(j, k); braid_json_bool(j, v); }

/* ---- the registry --------------------------------------------------------------------------- */
void braid__introspect_init(braid_loop *loop) {
    loop->inodes.next = loop->inodes.prev = &loop->inodes;
}

void braid_introspect_add(braid_loop *loop, braid_introspect_node *n, const char *section,
                          braid_introspect_fn fn, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    n->section = section;
    n->fn = fn;
    n->arg = arg;
    n->next = loop->inodes.next;
    n->prev = &loop->inodes;
    loop->inodes.next->prev = n;
    loop->inodes.next = n;
}

void braid_introspect_remove(braid_loop *loop, braid_introspect_node *n) {
    BRAID__LOOP_AFFINE(loop);
    if (!n->next) return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->next = n->prev = NULL;
}

/* ---- the document --------------------------------------------------------------------------- */
static void loop_section(braid_json *j, braid_loop *loop) {
    braid_json_key(j, "loop");
    braid_json_object_begin(j);
    braid_json_kv_str(j, "backend", braid_loop_backend(loop));
    braid_json_kv_u64(j, "iteration", loop->iteration);
    braid_json_kv_u64(j, "now_ns", loop->now);
    /* Handles by kind: kinds are few, counted in a small table. */
    enum { KINDS = 32 };
    const char *kind[KINDS];
    size_t count[KINDS], nk = 0, total = 0, other = 0;
    for (braid_handle *h = loop->handles.next; h != &loop->handles; h = h->next) {
        const char *k = h->kind ? h->kind : "?";
        total++;
        size_t i = 0;
        while (i < nk && strcmp(kind[i], k) != 0) i++;
        if (i == nk) {
            if (nk == KINDS) { other++; continue; }
            kind[nk] = k;
            count[nk++] = 0;
        }
        count[i]++;
    }
    braid_json_key(j, "handles");
    braid_json_object_begin(j);
    for (size_t i = 0; i < nk; i++) braid_json_kv_u64(j, kind[i], count[i]);
    if (other) braid_json_kv_u64(j, "(other)", other);
    braid_json_object_end(j);
    braid_json_kv_u64(j, "handles_open", total);
    braid_json_kv_u64(j, "watchers_open", loop->watchers_open);
    braid_json_kv_u64(j, "watchers_alive", loop->watchers_alive);
    braid_json_kv_u64(j, "fd_table_size", loop->nfds);
    braid_json_kv_u64(j, "timers_pending", loop->heap_len);
    braid_json_kv_u64(j, "timers_alive", loop->timers_alive);
    size_t soon = 0;
    for (braid_soon *s = loop->soon_head; s; s = s->next) soon++;
    braid_json_kv_u64(j, "soon_pending", soon);
    braid_json_object_end(j);
}

int braid_introspect_json(braid_loop *loop, char **out, size_t *len) {
    BRAID__LOOP_AFFINE(loop);
    braid_json j = { 0 };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    braid_json_object_begin(&j);
    braid_json_kv_u64(&j, "braid", 1);
    braid_json_kv_u64(&j, "time_ns", (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec);
    loop_section(&j, loop);
    /* Each section once, in the order of its newest node, its entries
     * newest first: O(nodes x sections). */
    enum { SECTIONS = 64 };
    const char *done[SECTIONS];
    size_t ndone = 0;
    braid_introspect_node *end = &loop->inodes;
    for (braid_introspect_node *n = end->next; n != end; n = n->next) {
        size_t i = 0;
        while (i < ndone && strcmp(done[i], n->section) != 0) i++;
        if (i < ndone) continue;
        if (ndone == SECTIONS) break;          /* more kinds of section than anyone has */
        done[ndone++] = n->section;
        braid_json_key(&j, n->section);
        braid_json_array_begin(&j);
        for (braid_introspect_node *m = n; m != end; m = m->next) {
            if (strcmp(m->section, n->section) != 0) continue;
            unsigned depth = j.depth;
            bool was_first = j.first[depth];
            size_t before = j.len;
            m->fn(&j, m->arg);
            while (j.skip) close_(&j);
            while (j.depth > depth) close_(&j);     /* a writer that left one open */
            j.after_key = false;
            if (j.len == before) {                  /* wrote nothing: keep the array valid */
                j.first[depth] = was_first;
            }
        }
        braid_json_array_end(&j);
    }
    braid_json_object_end(&j);
    if (j.failed || !j.buf) {
        braid_free(j.buf);
        return BRAID_ENOMEM;
    }
    *out = j.buf;
    if (len) *len = j.len;
    return 0;
}
