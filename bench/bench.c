/* braid-bench: the experiment registry, rows and results.jsonl, notes, the
 * progress line and the measuring helpers (see bench.h). */
#include "driver.h"

#include <braid/loop.h>
#include <braid/process.h>
#include <braid/protocol.h>
#include <ctype.h>
#include <dirent.h>
#include <signal.h>
#include <spawn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- small utilities ------------------------------------------------------------ */
void *bench_xmalloc(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) { fprintf(stderr, "braid-bench: out of memory\n"); exit(2); }
    return p;
}

char *bench_xstrdup(const char *s) {
    if (!s) return NULL;
    size_t n = strlen(s) + 1;
    char *p = bench_xmalloc(n);
    memcpy(p, s, n);
    return p;
}

uint64_t bench_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

double bench_median(const double *v, int n) {
    if (n <= 0) return NAN;
    double tmp[BENCH_MAX_RUNS * 4];
    double *t = n <= (int)(sizeof tmp / sizeof tmp[0]) ? tmp : bench_xmalloc((size_t)n * sizeof *t);
    memcpy(t, v, (size_t)n * sizeof *t);
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    double m = n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2;
    if (t != tmp) free(t);
    return m;
}

double bench_min(const double *v, int n) {
    double m = INFINITY;
    for (int i = 0; i < n; i++) if (v[i] < m) m = v[i];
    return n ? m : NAN;
}

double bench_max(const double *v, int n) {
    double m = -INFINITY;
    for (int i = 0; i < n; i++) if (v[i] > m) m = v[i];
    return n ? m : NAN;
}

/* ---- registry ---------------------------------------------------------------------- */
#define BENCH_MAX_EXPERIMENTS 64
const bench_experiment *bench_experiments[BENCH_MAX_EXPERIMENTS];
int bench_nexperiments;

void bench_register(const bench_experiment *e) {
    if (bench_nexperiments == BENCH_MAX_EXPERIMENTS) {
        fprintf(stderr, "braid-bench: too many experiments (raise BENCH_MAX_EXPERIMENTS)\n");
        abort();
    }
    bench_experiments[bench_nexperiments++] = e;
}

const bench_experiment *bench_find_experiment(const char *name) {
    for (int i = 0; i < bench_nexperiments; i++)
        if (!strcmp(bench_experiments[i]->name, name)) return bench_experiments[i];
    return NULL;
}

static int exp_order(const bench_experiment *e) { return e->order ? e->order : 100; }

static int cmp_exp(const void *a, const void *b) {
    const bench_experiment *x = *(const bench_experiment *const *)a;
    const bench_experiment *y = *(const bench_experiment *const *)b;
    if (exp_order(x) != exp_order(y)) return exp_order(x) - exp_order(y);
    return strcmp(x->name, y->name);
}

void bench_sort_experiments(void) {
    qsort(bench_experiments, (size_t)bench_nexperiments, sizeof bench_experiments[0], cmp_exp);
}

/* ---- JSON writing ---------------------------------------------------------------------- */
void bench_json_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) fprintf(f, "\\u%04x", *p);
            else fputc(*p, f);
        }
    }
    fputc('"', f);
}

void bench_json_number(FILE *f, double v) {
    if (!isfinite(v)) { fputs("null", f); return; }
    if (v == floor(v) && fabs(v) < 1e15) fprintf(f, "%.0f", v);
    else fprintf(f, "%.6g", v);
}

static void write_row(FILE *f, const bench_row *r) {
    fputs("{\"experiment\":", f);
    bench_json_string(f, r->experiment);
    fputs(",\"impl\":", f);
    bench_json_string(f, r->impl);
    fputs(",\"backend\":", f);
    bench_json_string(f, r->backend);
    fputs(",\"params\":{", f);
    for (int i = 0; i < r->nparams; i++) {
        if (i) fputc(',', f);
        bench_json_string(f, r->params[i].key);
        fputc(':', f);
        if (r->params[i].is_str) bench_json_string(f, r->params[i].str);
        else bench_json_number(f, r->params[i].num);
    }
    fprintf(f, "},\"runs\":%d,\"metrics\":{", r->runs);
    for (int i = 0; i < r->nmetrics; i++) {
        const bench_metric *m = &r->metrics[i];
        if (i) fputc(',', f);
        bench_json_string(f, m->name);
        fputs(":{\"median\":", f);
        bench_json_number(f, m->median);
        fputs(",\"min\":", f);
        bench_json_number(f, m->min);
        fputs(",\"max\":", f);
        bench_json_number(f, m->max);
        fputs(",\"unit\":", f);
        bench_json_string(f, m->unit);
        if (m->samples) {
            fputs(",\"samples\":[", f);
            for (int k = 0; k < m->n; k++) {
                if (k) fputc(',', f);
                bench_json_number(f, m->samples[k]);
            }
            fputc(']', f);
        }
        fputc('}', f);
    }
    fputs("}}\n", f);
}

/* ---- JSON reading (just enough for the lines we write) ------------------------------------ */
typedef enum { J_NULL, J_NUM, J_STR, J_ARR, J_OBJ, J_BOOL } jtype;
typedef struct jval {
    jtype t;
    double num;
    char *str;
    int n;
    char **keys;             /* J_OBJ */
    struct jval **items;     /* J_OBJ values / J_ARR items */
} jval;

static void jfree(jval *v) {
    if (!v) return;
    free(v->str);
    for (int i = 0; i < v->n; i++) {
        if (v->keys) free(v->keys[i]);
        jfree(v->items[i]);
    }
    free(v->keys);
    free(v->items);
    free(v);
}

static void jskip(const char **p) { while (isspace((unsigned char)**p)) (*p)++; }

static char *jparse_string(const char **p) {
    if (**p != '"') return NULL;
    (*p)++;
    size_t cap = 64, len = 0;
    char *s = bench_xmalloc(cap);
    while (**p && **p != '"') {
        char c = **p;
        if (c == '\\') {
            (*p)++;
            switch (**p) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                unsigned cp = 0;
                for (int i = 1; i <= 4 && (*p)[i]; i++) {
                    char h = (*p)[i];
                    cp = cp * 16 + (unsigned)(isdigit((unsigned char)h) ? h - '0' : (tolower(h) - 'a' + 10));
                }
                *p += 4;
                c = cp < 0x80 ? (char)cp : '?';
                break;
            }
            case '\0': free(s); return NULL;
            default: c = **p;
            }
        }
        if (len + 2 > cap) {
            cap *= 2;
            char *ns = realloc(s, cap);
            if (!ns) { free(s); return NULL; }
            s = ns;
        }
        s[len++] = c;
        (*p)++;
    }
    if (**p != '"') { free(s); return NULL; }
    (*p)++;
    s[len] = 0;
    return s;
}

static jval *jparse(const char **p, int depth) {
    if (depth > 16) return NULL;
    jskip(p);
    jval *v = bench_xmalloc(sizeof *v);
    if (**p == '{' || **p == '[') {
        bool obj = **p == '{';
        v->t = obj ? J_OBJ : J_ARR;
        char close = obj ? '}' : ']';
        (*p)++;
        int cap = 0;
        jskip(p);
        if (**p == close) { (*p)++; return v; }
        for (;;) {
            char *key = NULL;
            if (obj) {
                jskip(p);
                key = jparse_string(p);
                jskip(p);
                if (!key || **p != ':') { free(key); jfree(v); return NULL; }
                (*p)++;
            }
            jval *item = jparse(p, depth + 1);
            if (!item) { free(key); jfree(v); return NULL; }
            if (v->n == cap) {
                cap = cap ? cap * 2 : 8;
                v->items = realloc(v->items, (size_t)cap * sizeof *v->items);
                if (obj) v->keys = realloc(v->keys, (size_t)cap * sizeof *v->keys);
                if (!v->items || (obj && !v->keys)) abort();
            }
            if (obj) v->keys[v->n] = key;
            v->items[v->n++] = item;
            jskip(p);
            if (**p == ',') { (*p)++; continue; }
            if (**p == close) { (*p)++; return v; }
            jfree(v);
            return NULL;
        }
    }
    if (**p == '"') {
        v->t = J_STR;
        v->str = jparse_string(p);
        if (!v->str) { free(v); return NULL; }
        return v;
    }
    if (!strncmp(*p, "null", 4)) { v->t = J_NULL; v->num = NAN; *p += 4; return v; }
    if (!strncmp(*p, "true", 4)) { v->t = J_BOOL; v->num = 1; *p += 4; return v; }
    if (!strncmp(*p, "false", 5)) { v->t = J_BOOL; v->num = 0; *p += 5; return v; }
    char *end;
    errno = 0;
    v->num = strtod(*p, &end);
    if (end == *p) { free(v); return NULL; }
    v->t = J_NUM;
    *p = end;
    return v;
}

static jval *jget(const jval *o, const char *key) {
    if (!o || o->t != J_OBJ) return NULL;
    for (int i = 0; i < o->n; i++)
        if (!strcmp(o->keys[i], key)) return o->items[i];
    return NULL;
}

static const char *jstr(const jval *v) { return v && v->t == J_STR ? v->str : NULL; }
static double jnum(const jval *v) { return v && (v->t == J_NUM || v->t == J_BOOL) ? v->num : NAN; }

void bench_row_free(bench_row *r) {
    if (!r) return;
    free(r->experiment);
    free(r->impl);
    free(r->backend);
    for (int i = 0; i < r->nparams; i++) {
        free(r->params[i].key);
        free(r->params[i].str);
    }
    for (int i = 0; i < r->nmetrics; i++) {
        free(r->metrics[i].name);
        free(r->metrics[i].unit);
        free(r->metrics[i].samples);
    }
    free(r);
}

bench_row *bench_parse_row(const char *line) {
    const char *p = line;
    jval *v = jparse(&p, 0);
    if (!v) return NULL;
    bench_row *r = NULL;
    const char *exp = jstr(jget(v, "experiment")), *impl = jstr(jget(v, "impl"));
    jval *params = jget(v, "params"), *metrics = jget(v, "metrics");
    if (!exp || !impl || !metrics || metrics->t != J_OBJ) goto out;
    r = bench_xmalloc(sizeof *r);
    r->experiment = bench_xstrdup(exp);
    r->impl = bench_xstrdup(impl);
    r->backend = bench_xstrdup(jstr(jget(v, "backend")) ? jstr(jget(v, "backend")) : "");
    r->runs = (int)jnum(jget(v, "runs"));
    if (params && params->t == J_OBJ) {
        for (int i = 0; i < params->n && r->nparams < BENCH_MAX_PARAMS; i++) {
            bench_param *bp = &r->params[r->nparams++];
            bp->key = bench_xstrdup(params->keys[i]);
            if (params->items[i]->t == J_STR) {
                bp->is_str = true;
                bp->str = bench_xstrdup(params->items[i]->str);
            } else {
                bp->num = jnum(params->items[i]);
            }
        }
    }
    for (int i = 0; i < metrics->n && r->nmetrics < BENCH_MAX_METRICS; i++) {
        jval *m = metrics->items[i];
        bench_metric *bm = &r->metrics[r->nmetrics++];
        bm->name = bench_xstrdup(metrics->keys[i]);
        bm->unit = bench_xstrdup(jstr(jget(m, "unit")) ? jstr(jget(m, "unit")) : "");
        bm->median = jnum(jget(m, "median"));
        bm->min = jnum(jget(m, "min"));
        bm->max = jnum(jget(m, "max"));
        jval *s = jget(m, "samples");
        if (s && s->t == J_ARR && s->n > 0) {
            bm->samples = bench_xmalloc((size_t)s->n * sizeof(double));
            for (int k = 0; k < s->n; k++) bm->samples[k] = jnum(s->items[k]);
            bm->n = s->n;
        }
    }
out:
    jfree(v);
    return r;
}

bool bench_parse_note(const char *line, bench_note_rec *out) {
    const char *p = line;
    jval *v = jparse(&p, 0);
    if (!v) return false;
    const char *e = jstr(jget(v, "experiment")), *t = jstr(jget(v, "note"));
    bool ok = e && t;
    if (ok) {
        out->experiment = bench_xstrdup(e);
        out->text = bench_xstrdup(t);
    }
    jfree(v);
    return ok;
}

/* ---- the store ------------------------------------------------------------------------------ */
bench_store bench_results;

static void store_add_row(bench_row *r) {
    bench_store *s = &bench_results;
    if (s->nrows == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 64;
        s->rows = realloc(s->rows, (size_t)s->cap * sizeof *s->rows);
        if (!s->rows) abort();
    }
    s->rows[s->nrows++] = r;
}

static void store_add_note(const char *exp, const char *text) {
    bench_store *s = &bench_results;
    if (s->nnotes == s->capnotes) {
        s->capnotes = s->capnotes ? s->capnotes * 2 : 32;
        s->notes = realloc(s->notes, (size_t)s->capnotes * sizeof *s->notes);
        if (!s->notes) abort();
    }
    s->notes[s->nnotes].experiment = bench_xstrdup(exp);
    s->notes[s->nnotes].text = bench_xstrdup(text);
    s->nnotes++;
}

static bool in_list(const char *name, const char *const *list, int n) {
    for (int i = 0; i < n; i++) if (!strcmp(list[i], name)) return true;
    return false;
}

static int mkdir_p(const char *dir) {
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", dir);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
        *p = '/';
    }
    if (mkdir(buf, 0755) < 0 && errno != EEXIST) return -errno;
    return 0;
}

/* Read lines of path, calling fn on each. */
static void read_lines(const char *path, void (*fn)(const char *line, void *arg), void *arg) {
    FILE *f = fopen(path, "r");
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 0) fn(line, arg);
    free(line);
    fclose(f);
}

typedef struct keep_arg { const char *const *rerun; int nrerun; } keep_arg;

static void keep_row(const char *line, void *arg) {
    keep_arg *k = arg;
    bench_row *r = bench_parse_row(line);
    if (!r) return;
    if (in_list(r->experiment, k->rerun, k->nrerun)) { bench_row_free(r); return; }
    store_add_row(r);
}

static void keep_note(const char *line, void *arg) {
    keep_arg *k = arg;
    bench_note_rec n;
    if (!bench_parse_note(line, &n)) return;
    if (!in_list(n.experiment, k->rerun, k->nrerun)) store_add_note(n.experiment, n.text);
    free(n.experiment);
    free(n.text);
}

static void write_note(FILE *f, const char *exp, const char *text) {
    fputs("{\"experiment\":", f);
    bench_json_string(f, exp);
    fputs(",\"note\":", f);
    bench_json_string(f, text);
    fputs("}\n", f);
}

int bench_store_open(const char *out_dir, const char *const *rerun, int nrerun) {
    int rc = mkdir_p(out_dir);
    if (rc < 0) {
        fprintf(stderr, "braid-bench: cannot create %s: %s\n", out_dir, strerror(-rc));
        return rc;
    }
    char path[4096];
    keep_arg k = { rerun, nrerun };
    snprintf(path, sizeof path, "%s/results.jsonl", out_dir);
    read_lines(path, keep_row, &k);
    bench_results.jsonl = fopen(path, "w");
    snprintf(path, sizeof path, "%s/notes.jsonl", out_dir);
    read_lines(path, keep_note, &k);
    bench_results.notes_file = fopen(path, "w");
    if (!bench_results.jsonl || !bench_results.notes_file) {
        fprintf(stderr, "braid-bench: cannot write in %s: %s\n", out_dir, strerror(errno));
        return -errno;
    }
    /* Rewrite what we kept so the files hold exactly the rows the report shows. */
    for (int i = 0; i < bench_results.nrows; i++) write_row(bench_results.jsonl, bench_results.rows[i]);
    for (int i = 0; i < bench_results.nnotes; i++)
        write_note(bench_results.notes_file, bench_results.notes[i].experiment, bench_results.notes[i].text);
    fflush(bench_results.jsonl);
    fflush(bench_results.notes_file);
    return 0;
}

void bench_store_close(void) {
    if (bench_results.jsonl) fclose(bench_results.jsonl);
    if (bench_results.notes_file) fclose(bench_results.notes_file);
    bench_results.jsonl = bench_results.notes_file = NULL;
}

/* ---- rows ---------------------------------------------------------------------------------- */
bench_row *bench_row_begin(bench_ctx *ctx, const char *impl, const char *backend) {
    bench_row *r = bench_xmalloc(sizeof *r);
    r->experiment = bench_xstrdup(ctx->experiment);
    r->impl = bench_xstrdup(impl ? impl : "");
    r->backend = bench_xstrdup(backend ? backend : "");
    return r;
}

static bench_param *row_param(bench_row *r, const char *key) {
    for (int i = 0; i < r->nparams; i++)
        if (!strcmp(r->params[i].key, key)) {
            free(r->params[i].str);
            r->params[i].str = NULL;
            return &r->params[i];
        }
    if (r->nparams == BENCH_MAX_PARAMS) {
        fprintf(stderr, "braid-bench: too many params in a row (max %d)\n", BENCH_MAX_PARAMS);
        abort();
    }
    bench_param *p = &r->params[r->nparams++];
    p->key = bench_xstrdup(key);
    return p;
}

void bench_row_param_int(bench_row *r, const char *key, long long v) {
    bench_param *p = row_param(r, key);
    p->is_str = false;
    p->num = (double)v;
}

void bench_row_param_double(bench_row *r, const char *key, double v) {
    bench_param *p = row_param(r, key);
    p->is_str = false;
    p->num = v;
}

void bench_row_param_str(bench_row *r, const char *key, const char *v) {
    bench_param *p = row_param(r, key);
    p->is_str = true;
    p->str = bench_xstrdup(v ? v : "");
}

void bench_row_metric(bench_row *r, const char *name, const double *samples, int n, const char *unit) {
    if (r->nmetrics == BENCH_MAX_METRICS) {
        fprintf(stderr, "braid-bench: too many metrics in a row (max %d)\n", BENCH_MAX_METRICS);
        abort();
    }
    bench_metric *m = &r->metrics[r->nmetrics++];
    m->name = bench_xstrdup(name);
    m->unit = bench_xstrdup(unit ? unit : "");
    /* Keep every sample in run order (pairwise ratios need the order); a run
     * that failed is NaN and is left out of median/min/max. */
    m->samples = bench_xmalloc((size_t)(n > 0 ? n : 1) * sizeof(double));
    double ok[BENCH_MAX_RUNS * 4] = { 0 };
    int nok = 0;
    for (int i = 0; i < n; i++) {
        m->samples[i] = samples[i];
        if (isfinite(samples[i]) && nok < (int)(sizeof ok / sizeof ok[0])) ok[nok++] = samples[i];
    }
    m->n = n;
    m->median = bench_median(ok, nok);
    m->min = bench_min(ok, nok);
    m->max = bench_max(ok, nok);
    if (n > r->runs) r->runs = n;
}

void bench_row_end(bench_row *r) {
    if (bench_results.jsonl) {
        write_row(bench_results.jsonl, r);
        fflush(bench_results.jsonl);
    }
    store_add_row(r);
}

/* ---- reading rows back ------------------------------------------------------------------------ */
int bench_nrows(bench_ctx *ctx) {
    int n = 0;
    for (int i = 0; i < bench_results.nrows; i++)
        if (!strcmp(bench_results.rows[i]->experiment, ctx->experiment)) n++;
    return n;
}

const bench_row *bench_get_row(bench_ctx *ctx, int idx) {
    for (int i = 0; i < bench_results.nrows; i++)
        if (!strcmp(bench_results.rows[i]->experiment, ctx->experiment) && idx-- == 0)
            return bench_results.rows[i];
    return NULL;
}

const char *bench_row_impl(const bench_row *r) { return r->impl; }
const char *bench_row_backend(const bench_row *r) { return r->backend; }

static const bench_param *find_param(const bench_row *r, const char *key) {
    for (int i = 0; i < r->nparams; i++)
        if (!strcmp(r->params[i].key, key)) return &r->params[i];
    return NULL;
}

bool bench_row_param_num(const bench_row *r, const char *key, double *out) {
    const bench_param *p = find_param(r, key);
    if (!p || p->is_str) return false;
    *out = p->num;
    return true;
}

const char *bench_row_param_text(const bench_row *r, const char *key) {
    static __thread char buf[4][64];
    static __thread int next;
    const bench_param *p = find_param(r, key);
    if (!p) return NULL;
    if (p->is_str) return p->str;
    char *b = buf[next++ & 3];
    snprintf(b, sizeof buf[0], "%.15g", p->num);
    return b;
}

static const bench_metric *find_metric(const bench_row *r, const char *name) {
    for (int i = 0; i < r->nmetrics; i++)
        if (!strcmp(r->metrics[i].name, name)) return &r->metrics[i];
    return NULL;
}

bool bench_row_metric_get(const bench_row *r, const char *name, double *median, double *min,
                          double *max) {
    const bench_metric *m = find_metric(r, name);
    if (!m || !isfinite(m->median)) return false;
    if (median) *median = m->median;
    if (min) *min = m->min;
    if (max) *max = m->max;
    return true;
}

const double *bench_row_samples(const bench_row *r, const char *name, int *n) {
    const bench_metric *m = find_metric(r, name);
    *n = m ? m->n : 0;
    return m ? m->samples : NULL;
}

const bench_row *bench_find_row(bench_ctx *ctx, const char *impl, const char *backend, ...) {
    for (int i = 0; i < bench_results.nrows; i++) {
        const bench_row *r = bench_results.rows[i];
        if (strcmp(r->experiment, ctx->experiment) || strcmp(r->impl, impl)) continue;
        if (backend && strcmp(r->backend, backend)) continue;
        va_list ap;
        va_start(ap, backend);
        bool match = true;
        for (const char *f; match && (f = va_arg(ap, const char *));) {
            const char *eq = strchr(f, '=');
            if (!eq) { match = false; break; }
            char key[128];
            snprintf(key, sizeof key, "%.*s", (int)(eq - f), f);
            const char *v = bench_row_param_text(r, key);
            if (!v) { match = false; break; }
            double want, have;
            if (bench_row_param_num(r, key, &have) && sscanf(eq + 1, "%lf", &want) == 1)
                match = want == have;
            else
                match = !strcmp(v, eq + 1);
        }
        va_end(ap);
        if (match) return r;
    }
    return NULL;
}

bool bench_pair_ratio(const bench_row *a, const bench_row *b, const char *metric,
                      double *median, double *min, double *max) {
    const bench_metric *ma = find_metric(a, metric), *mb = find_metric(b, metric);
    if (!ma || !mb || !ma->samples || !mb->samples) return false;
    int n = ma->n < mb->n ? ma->n : mb->n;
    double r[BENCH_MAX_RUNS * 4];
    int k = 0;
    for (int i = 0; i < n && k < (int)(sizeof r / sizeof r[0]); i++) {
        double x = ma->samples[i], y = mb->samples[i];
        /* A ratio of zero or negative values (counts of nothing, noisy
         * differences) means nothing: such pairs are left out. */
        if (isfinite(x) && isfinite(y) && x > 0 && y > 0) r[k++] = x / y;
    }
    if (!k) return false;
    if (median) *median = bench_median(r, k);
    if (min) *min = bench_min(r, k);
    if (max) *max = bench_max(r, k);
    return true;
}

bool bench_unit_higher_is_better(const char *unit) {
    return unit && (strstr(unit, "/s") || strstr(unit, "per s") || !strcmp(unit, "ops") ||
                    !strcmp(unit, "Gbit/s"));
}

/* ---- notes ------------------------------------------------------------------------------------- */
void bench_note(bench_ctx *ctx, const char *fmt, ...) {
    char buf[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* Same note twice (e.g. once per run) is recorded once. */
    for (int i = 0; i < bench_results.nnotes; i++)
        if (!strcmp(bench_results.notes[i].experiment, ctx->experiment) &&
            !strcmp(bench_results.notes[i].text, buf))
            return;
    store_add_note(ctx->experiment, buf);
    if (bench_results.notes_file) {
        write_note(bench_results.notes_file, ctx->experiment, buf);
        fflush(bench_results.notes_file);
    }
    bool tty = isatty(1);
    fprintf(stdout, "%s  note [%s]: %s\n", tty ? "\r\033[K" : "", ctx->experiment, buf);
    fflush(stdout);
}

/* ---- progress ------------------------------------------------------------------------------------ */
static struct {
    const bench_experiment *exp;
    int index, total;
    double est, total_est, est_before;     /* seconds: this one, all, the ones done */
    uint64_t t_start, t_exp, t_last_line;
    double fraction;
    char step[200];
    bool tty;
    bool started;
} prog;

double bench_progress_elapsed(void) {
    return prog.started ? (double)(bench_now_ns() - prog.t_start) / 1e9 : 0;
}

static void fmt_dur(char *buf, size_t len, double s) {
    if (s < 0) s = 0;
    int t = (int)(s + 0.5);
    snprintf(buf, len, "%d:%02d", t / 60, t % 60);
}

static void progress_print(bool force) {
    uint64_t now = bench_now_ns();
    double el = (double)(now - prog.t_exp) / 1e9;
    double est = prog.est;
    if (prog.fraction > 0.05) est = el / prog.fraction;   /* the experiment's own measure */
    else if (el > est) est = el * 1.2;
    double total_el = (double)(now - prog.t_start) / 1e9;
    /* actual time so far + this one's remaining estimate + the estimates of those to come */
    double rest = prog.total_est - prog.est_before - prog.est;
    double total_est = total_el + (est > el ? est - el : 0) + (rest > 0 ? rest : 0);
    if (total_est < total_el) total_est = total_el;
    char e1[16], e2[16], e3[16], e4[16];
    fmt_dur(e1, sizeof e1, el);
    fmt_dur(e2, sizeof e2, est);
    fmt_dur(e3, sizeof e3, total_el);
    fmt_dur(e4, sizeof e4, total_est);
    if (prog.tty) {
        char line[512];
        snprintf(line, sizeof line, "[%d/%d %s] %s  %s of ~%s  (all: %s of ~%s)", prog.index + 1, prog.total,
                 prog.exp ? prog.exp->name : "", prog.step, e1, e2, e3, e4);
        int cols = 120;
        const char *c = getenv("COLUMNS");
        if (c && atoi(c) > 20) cols = atoi(c);
        if ((int)strlen(line) > cols - 1) line[cols - 1] = 0;
        fprintf(stdout, "\r\033[K%s", line);
        fflush(stdout);
    } else {
        /* Plain lines: one per step, at most one per second unless forced. */
        if (!force && now - prog.t_last_line < 1000000000ull) return;
        fprintf(stdout, "[%d/%d %s] %s (elapsed %s, estimate %s; all %s of ~%s)\n", prog.index + 1,
                prog.total, prog.exp ? prog.exp->name : "", prog.step, e1, e2, e3, e4);
        fflush(stdout);
    }
    prog.t_last_line = now;
}

void bench_progress_begin_experiment(bench_ctx *ctx, const bench_experiment *e, int index, int total,
                                     double est_seconds, double total_est, double est_before) {
    (void)ctx;
    if (!prog.started) {
        prog.started = true;
        prog.t_start = bench_now_ns();
        prog.tty = isatty(1);
    }
    prog.exp = e;
    prog.index = index;
    prog.total = total;
    prog.est = est_seconds;
    prog.total_est = total_est;
    prog.est_before = est_before;
    prog.t_exp = bench_now_ns();
    prog.fraction = 0;
    snprintf(prog.step, sizeof prog.step, "starting");
    progress_print(true);
}

void bench_progress_end_experiment(bench_ctx *ctx) {
    (void)ctx;
    char e1[16];
    fmt_dur(e1, sizeof e1, (double)(bench_now_ns() - prog.t_exp) / 1e9);
    fprintf(stdout, "%s[%d/%d %s] done in %s\n", prog.tty ? "\r\033[K" : "", prog.index + 1, prog.total,
            prog.exp ? prog.exp->name : "", e1);
    fflush(stdout);
}

void bench_progress(bench_ctx *ctx, const char *fmt, ...) {
    (void)ctx;
    char buf[sizeof prog.step];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    bool changed = strcmp(buf, prog.step) != 0;
    snprintf(prog.step, sizeof prog.step, "%s", buf);
    if (!prog.started) {
        prog.started = true;
        prog.t_start = prog.t_exp = bench_now_ns();
        prog.tty = isatty(1);
    }
    (void)changed;
    progress_print(false);
}

void bench_progress_fraction(bench_ctx *ctx, double done) {
    (void)ctx;
    if (done < 0) done = 0;
    if (done > 1) done = 1;
    prog.fraction = done;
}

void bench_alternate(bench_ctx *ctx, const char *label, int nimpl, const char *const *impl_names,
                     bench_measure_fn measure, void *arg) {
    for (int run = 0; run < ctx->runs; run++) {
        for (int k = 0; k < nimpl; k++) {
            int impl = (run + k) % nimpl;
            bench_progress(ctx, "%s %s run %d/%d", label ? label : "", impl_names ? impl_names[impl] : "",
                           run + 1, ctx->runs);
            measure(ctx, impl, run, arg);
        }
    }
}

/* ---- helpers ------------------------------------------------------------------------------------- */
static int read_proc(int pid, const char *what, char *buf, size_t len) {
    char path[64];
    if (pid > 0) snprintf(path, sizeof path, "/proc/%d/%s", pid, what);
    else snprintf(path, sizeof path, "/proc/self/%s", what);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, len - 1, f);
    fclose(f);
    buf[n] = 0;
    return (int)n;
}

double bench_cpu_us(int pid) {
    char buf[2048];
    if (read_proc(pid, "stat", buf, sizeof buf) < 0) return NAN;
    /* Fields after the parenthesised command (which may hold spaces). */
    char *p = strrchr(buf, ')');
    if (!p) return NAN;
    unsigned long long utime, stime;
    long long cutime, cstime;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime cutime cstime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %lld %lld", &utime, &stime,
               &cutime, &cstime) != 4)
        return NAN;
    double hz = (double)sysconf(_SC_CLK_TCK);
    return (double)(utime + stime + (unsigned long long)(cutime + cstime)) * 1e6 / hz;
}

static long status_field(int pid, const char *field) {
    char buf[8192];
    if (read_proc(pid, "status", buf, sizeof buf) < 0) return -1;
    size_t fl = strlen(field);
    for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (!strncmp(p, field, fl) && p[fl] == ':') return atol(p + fl + 1);
    }
    return -1;
}

long bench_rss_kib(int pid) { return status_field(pid, "VmRSS"); }
long bench_peak_rss_kib(int pid) { return status_field(pid, "VmHWM"); }

long long bench_ctxt_switches(int pid) {
    long a = status_field(pid, "voluntary_ctxt_switches");
    long b = status_field(pid, "nonvoluntary_ctxt_switches");
    if (a < 0 || b < 0) return -1;
    return (long long)a + b;
}

long bench_mem_available_kib(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return -1;
    char line[256];
    long v = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "MemAvailable:", 13)) { v = atol(line + 13); break; }
    fclose(f);
    return v;
}

int bench_free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t len = sizeof a;
    int port = -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr *)&a, &len) == 0)
        port = ntohs(a.sin_port);
    else
        port = -errno;
    close(fd);
    return port;
}

bool bench_wait_accepting(int pid, int port) {
    for (int i = 0; i < 500; i++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        int rc = s < 0 ? -1 : connect(s, (struct sockaddr *)&a, sizeof a);
        if (s >= 0) close(s);
        if (rc == 0) return true;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) return false;
        usleep(10000);
    }
    return false;
}

void bench_stop_process(int pid, int sig, double timeout_s) {
    if (pid <= 0) return;
    kill(pid, sig);
    int st;
    for (double waited = 0; waited < timeout_s; waited += 0.005) {
        if (waitpid(pid, &st, WNOHANG) == pid) return;
        usleep(5000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
}

int bench_backend(const char *b) {
    if (b && !strcmp(b, "select")) return BRAID_BACKEND_SELECT;
    if (b && !strcmp(b, "poll")) return BRAID_BACKEND_POLL;
    if (b && (!strcmp(b, "uring") || !strcmp(b, "io_uring"))) return BRAID_BACKEND_URING;
    return BRAID_BACKEND_EPOLL;
}

void bench_stop_loop(void *loop) { braid_loop_stop(loop); }

const char *bench_command_line(const char *cmd, char *buf, size_t len) {
    buf[0] = 0;
    char full[1024];
    snprintf(full, sizeof full, "(%s) 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return buf;
    if (fgets(buf, (int)len, p)) buf[strcspn(buf, "\n")] = 0;
    char tmp[256];
    while (fgets(tmp, sizeof tmp, p)) {}
    pclose(p);
    return buf;
}

bool bench_have_program(const char *name) {
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s:/usr/sbin:/sbin", path ? path : "/usr/bin:/bin");
    for (char *save, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char full[4096];
        snprintf(full, sizeof full, "%s/%s", d, name);
        if (access(full, X_OK) == 0) return true;
    }
    return false;
}

bool bench_have_python_module(const char *module) {
    /* Debian's python3, as the peers are run with it (not whatever is first on PATH). */
    pid_t pid = fork();
    if (pid < 0) return false;
    if (pid == 0) {
        int devnull = open("/dev/null", 1);
        if (devnull >= 0) { dup2(devnull, 1); dup2(devnull, 2); }
        char code[256];
        snprintf(code, sizeof code, "import %s", module);
        execl("/usr/bin/python3", "python3", "-c", code, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

void bench_spin_ns(uint64_t ns) {
    uint64_t end = bench_now_ns() + ns;
    while (bench_now_ns() < end) __asm__ volatile("" ::: "memory");
}

/* ---- serve-mode arguments (bench.h) ------------------------------------------------- */
void bench_serve_usage(FILE *f, const char *experiment, const bench_opt *opts) {
    fprintf(f, "usage: braid-bench serve %s", experiment);
    for (const bench_opt *o = opts; o->name; o++)
        fprintf(f, o->required ? " %s %s" : " [%s %s]", o->name, o->metavar ? o->metavar : "V");
    fputc('\n', f);
    for (const bench_opt *o = opts; o->name; o++) {
        char left[64];
        snprintf(left, sizeof left, "%s %s", o->name, o->metavar ? o->metavar : "V");
        fprintf(f, "  %-22s %s", left, o->help ? o->help : "");
        if (o->choices) fprintf(f, " (%s)", o->choices);
        fputc('\n', f);
    }
}

static bool opt_choice_ok(const char *choices, const char *v) {
    size_t n = strlen(v);
    for (const char *c = choices; *c;) {
        const char *end = strchr(c, '|');
        size_t len = end ? (size_t)(end - c) : strlen(c);
        if (len == n && !strncmp(c, v, n)) return true;
        if (!end) break;
        c = end + 1;
    }
    return false;
}

static bool opt_set(const bench_opt *o, const char *v) {
    char *end;
    errno = 0;
    switch (o->kind) {
    case BENCH_OPT_INT: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno || x < INT_MIN || x > INT_MAX) return false;
        *(int *)o->value = (int)x;
        return true;
    }
    case BENCH_OPT_LONG: {
        long x = strtol(v, &end, 10);
        if (!*v || *end || errno) return false;
        *(long *)o->value = x;
        return true;
    }
    case BENCH_OPT_DOUBLE: {
        double x = strtod(v, &end);
        if (!*v || *end || errno || !isfinite(x)) return false;
        *(double *)o->value = x;
        return true;
    }
    case BENCH_OPT_STR:
        if (o->choices && !opt_choice_ok(o->choices, v)) return false;
        *(const char **)o->value = v;
        return true;
    }
    return false;
}

static bool serve_error(const char *experiment, const bench_opt *opts, int *exit_code, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "braid-bench serve %s: ", experiment);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    bench_serve_usage(stderr, experiment, opts);
    *exit_code = 2;
    return false;
}

bool bench_serve_args(const char *experiment, int argc, char **argv, const bench_opt *opts, int *exit_code) {
    enum { MAX_OPTS = 32 };
    bool seen[MAX_OPTS] = { false };
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            bench_serve_usage(stdout, experiment, opts);
            *exit_code = 0;
            return false;
        }
        int k = 0;
        while (opts[k].name && strcmp(opts[k].name, a)) k++;
        if (!opts[k].name) return serve_error(experiment, opts, exit_code, "unknown option '%s'", a);
        const bench_opt *o = &opts[k];
        if (i + 1 >= argc) return serve_error(experiment, opts, exit_code, "%s needs a value (%s)", a,
                                              o->metavar ? o->metavar : "V");
        const char *v = argv[++i];
        if (!opt_set(o, v)) {
            static const char *const what[] = { "an integer", "an integer", "a number", "text" };
            if (o->choices)
                return serve_error(experiment, opts, exit_code, "%s %s: not one of %s", a, v, o->choices);
            return serve_error(experiment, opts, exit_code, "%s %s: not %s", a, v, what[o->kind]);
        }
        if (k < MAX_OPTS) seen[k] = true;
    }
    for (int k = 0; opts[k].name; k++)
        if (opts[k].required && !(k < MAX_OPTS && seen[k]))
            return serve_error(experiment, opts, exit_code, "%s is required", opts[k].name);
    return true;
}

/* ---- CPU work ------------------------------------------------------------------------------ */
static double spin_iters_per_ns;
static volatile uint64_t spin_sink;
static void spin_iters(uint64_t n) {
    uint64_t x = 0;
    for (uint64_t i = 0; i < n; i++) {
        x += i * 2654435761u;
        __asm__ volatile("" : "+r"(x));
    }
    spin_sink = x;
}
static uint64_t thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}
void bench_cpu_calibrate(void) {
    double best = 0;
    for (int k = 0; k < 5; k++) {
        uint64_t t0 = thread_cpu_ns();
        spin_iters(2000000);
        uint64_t dt = thread_cpu_ns() - t0;
        double rate = dt ? 2000000.0 / (double)dt : 0;
        if (rate > best) best = rate;
    }
    spin_iters_per_ns = best;
}
void bench_cpu_spin(uint64_t ns) {
    uint64_t end = thread_cpu_ns() + ns, chunk = (uint64_t)(spin_iters_per_ns * 10000) + 1;
    while (thread_cpu_ns() < end) spin_iters(chunk);
}

/* ---- multi-loop servers (bench.h) ----------------------------------------------------- */
bench_loop_stats *bench_loop_stats_map(const char *path, bool create) {
    int fd = open(path, O_RDWR | O_CLOEXEC | (create ? O_CREAT | O_TRUNC : 0), 0600);
    if (fd < 0) return NULL;
    if (create && ftruncate(fd, sizeof(bench_loop_stats)) < 0) {
        close(fd);
        return NULL;
    }
    void *p = mmap(NULL, sizeof(bench_loop_stats), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    return p == MAP_FAILED ? NULL : p;
}

void bench_loop_stats_unmap(bench_loop_stats *s) {
    if (s) munmap(s, sizeof *s);
}

static braid_protocol *counting_build(braid_factory *f, const braid_address *peer) {
    bench_counting *c = f->user;
    braid_protocol *p = braid_factory_build(c->inner, peer);
    if (p) __atomic_fetch_add(c->accepts, 1, __ATOMIC_RELAXED);
    return p;
}
static void counting_start(braid_factory *f) { braid_factory_ref(((bench_counting *)f->user)->inner); }
static void counting_stop(braid_factory *f) { braid_factory_unref(((bench_counting *)f->user)->inner); }

void bench_counting_factory_init(braid_factory *f, bench_counting *c) {
    memset(f, 0, sizeof *f);
    f->build_protocol = counting_build;
    f->start = counting_start;
    f->stop = counting_stop;
    f->user = c;
}

int bench_serve_method(const char *name) {
    if (name && !strcmp(name, "exclusive")) return BRAID_SERVE_EXCLUSIVE;
    if (name && !strcmp(name, "acceptor")) return BRAID_SERVE_ACCEPTOR;
    if (name && !strcmp(name, "shared")) return BRAID_SERVE_SHARED;
    return BRAID_SERVE_REUSEPORT;
}

int bench_spawn_quiet(char *const *argv) {
    pid_t pid;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ) != 0) pid = -1;
    posix_spawn_file_actions_destroy(&fa);
    return pid;
}

const char *bench_nginx_bin(void) {
    static const char *cands[] = { "/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx" };
    for (size_t i = 0; i < sizeof cands / sizeof cands[0]; i++)
        if (access(cands[i], X_OK) == 0) return cands[i];
    return bench_have_program("nginx") ? "nginx" : NULL;
}

int bench_nginx_hello_start(int workers, int port, char *dir, size_t dirlen) {
    const char *bin = bench_nginx_bin();
    if (!bin || dirlen < 32) return -1;
    snprintf(dir, dirlen, "/tmp/braid-bench-nginx-XXXXXX");
    if (!mkdtemp(dir)) {
        dir[0] = 0;
        return -1;
    }
    char conf[4200], text[8192];
    snprintf(conf, sizeof conf, "%s/nginx.conf", dir);
    snprintf(text, sizeof text,
             "worker_processes %d;\ndaemon off;\nerror_log %s/error.log;\npid %s/nginx.pid;\n"
             "events { worker_connections 4096; }\n"
             "http {\n  access_log off;\n  keepalive_requests 100000000;\n"
             "  client_body_temp_path %s/body;\n  proxy_temp_path %s/proxy;\n"
             "  fastcgi_temp_path %s/fcgi;\n  uwsgi_temp_path %s/uwsgi;\n  scgi_temp_path %s/scgi;\n"
             "  server {\n    listen 127.0.0.1:%d backlog=511;\n"
             "    location / { default_type text/plain; return 200 \"Hello, World!\"; }\n  }\n}\n",
             workers, dir, dir, dir, dir, dir, dir, dir, port);
    FILE *f = fopen(conf, "w");
    if (!f) return -1;
    fputs(text, f);
    fclose(f);
    char *argv[] = { (char *)bin, "-p", dir, "-c", conf, NULL };
    return bench_spawn_quiet(argv);
}

void bench_nginx_stop(int pid, char *dir) {
    if (pid > 0) bench_stop_process(pid, SIGQUIT, 3.0);
    if (dir && dir[0]) {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) {}
        dir[0] = 0;
    }
}

static double wrk_lat_us(const char *s) {
    char *end;
    double v = strtod(s, &end);
    if (end == s) return NAN;
    if (!strncmp(end, "us", 2)) return v;
    if (!strncmp(end, "ms", 2)) return v * 1e3;
    if (!strncmp(end, "s", 1)) return v * 1e6;
    return NAN;
}

static double children_cpu_us(void) {
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

bench_wrk bench_wrk_run(int port, int conns, int seconds, const char *extra) {
    bench_wrk r = { NAN, 0, NAN, NAN, NAN, false, "" };
    char cmd[512];
    snprintf(cmd, sizeof cmd, "wrk -t1 -c%d -d%ds --latency %s http://127.0.0.1:%d/ 2>&1", conns, seconds,
             extra ? extra : "", port);
    double c0 = children_cpu_us();   /* wrk (and its shell), once reaped by pclose */
    FILE *p = popen(cmd, "r");
    if (!p) return r;
    char line[512];
    bool wrong = false;
    while (fgets(line, sizeof line, p)) {
        char *s = line + strspn(line, " \t");
        double v;
        if (sscanf(s, "Requests/sec: %lf", &v) == 1) r.rps = v;
        else if (!strncmp(s, "50%", 3)) r.p50_us = wrk_lat_us(s + 3 + strspn(s + 3, " \t"));
        else if (!strncmp(s, "99%", 3)) r.p99_us = wrk_lat_us(s + 3 + strspn(s + 3, " \t"));
        else if (strstr(s, "requests in ")) r.requests = strtod(s, NULL);
        else if (strstr(s, "Non-2xx") || strstr(s, "Socket errors")) {
            s[strcspn(s, "\n")] = 0;
            size_t el = strlen(r.errors);
            snprintf(r.errors + el, sizeof r.errors - el, "%s%s", el ? "; " : "", s);
            if (strstr(s, "Non-2xx")) wrong = true;     /* wrong answers fail the run */
        }
    }
    pclose(p);
    r.cpu_us = children_cpu_us() - c0;
    r.ok = isfinite(r.rps) && r.requests > 0 && !wrong;
    return r;
}

int bench_tree_pids(int pid, int *kids, int cap) {
    char what[64];
    snprintf(what, sizeof what, "task/%d/children", pid);
    char buf[4096];
    if (read_proc(pid, what, buf, sizeof buf) < 0) return 0;
    int n = 0;
    for (char *p = buf, *end; ; p = end) {
        long c = strtol(p, &end, 10);
        if (end == p) break;
        if (kids && n < cap) kids[n] = (int)c;
        n++;
    }
    return n;
}

double bench_tree_cpu_us(int pid) {
    double sum = bench_cpu_us(pid);
    if (!isfinite(sum)) return NAN;
    int kids[BENCH_LOOP_STATS_MAX + 8];
    int n = bench_tree_pids(pid, kids, BENCH_LOOP_STATS_MAX + 8);
    for (int i = 0; i < n && i < BENCH_LOOP_STATS_MAX + 8; i++) {
        double c = bench_cpu_us(kids[i]);
        if (isfinite(c)) sum += c;
    }
    return sum;
}

/* Every thread of pid: /proc/PID/status counts only the thread it names. */
static long long tasks_ctxt_switches(int pid) {
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", pid);
    DIR *d = opendir(dir);
    if (!d) return -1;
    long long sum = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        char what[64], buf[8192];
        snprintf(what, sizeof what, "task/%s/status", e->d_name);
        if (read_proc(pid, what, buf, sizeof buf) < 0) continue;
        for (char *p = buf; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
            if (!strncmp(p, "voluntary_ctxt_switches:", 24)) sum += atoll(p + 24);
            else if (!strncmp(p, "nonvoluntary_ctxt_switches:", 27)) sum += atoll(p + 27);
    }
    closedir(d);
    return sum;
}

long long bench_tree_ctxt_switches(int pid) {
    long long sum = tasks_ctxt_switches(pid);
    if (sum < 0) return -1;
    int kids[BENCH_LOOP_STATS_MAX + 8];
    int n = bench_tree_pids(pid, kids, BENCH_LOOP_STATS_MAX + 8);
    for (int i = 0; i < n && i < BENCH_LOOP_STATS_MAX + 8; i++) {
        long long c = tasks_ctxt_switches(kids[i]);
        if (c > 0) sum += c;
    }
    return sum;
}
