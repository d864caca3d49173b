/* braid-bench's report: from the rows in the store (this run's plus those kept
 * from OUT/results.jsonl) write, in OUT,
 *   <experiment>.csv          every metric of every row, long format;
 *   <experiment>-*.svg        gnuplot plots (median with min-max bars);
 *   index.html                machine facts, then per experiment the question,
 *                             the method, notes, plots, the table with
 *                             pairwise braid/peer ratios, and the conclusion;
 *   summary.md                the headline table for the README.
 * Ratios are always taken pair by pair: run i of braid against run i of the
 * peer (both measured back to back), never median against median. */
#include "driver.h"

#include <braid.h>
#include <dirent.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#ifdef BENCH_HAVE_LIBUV
#include <uv.h>
#endif
#ifdef BENCH_HAVE_LIBEVENT
#include <event2/event.h>
#endif

#ifndef BENCH_BUILD_TYPE
#define BENCH_BUILD_TYPE "unknown"
#endif

/* ---- HTML helpers ------------------------------------------------------------------ */
static void html_esc(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* Plain text to HTML paragraphs: a blank line separates paragraphs. */
static void html_paras(FILE *f, const char *s) {
    if (!s || !*s) return;
    fputs("<p>", f);
    for (; *s; s++) {
        if (s[0] == '\n' && s[1] == '\n') {
            fputs("</p>\n<p>", f);
            while (s[1] == '\n') s++;
        } else if (*s == '<') fputs("&lt;", f);
        else if (*s == '>') fputs("&gt;", f);
        else if (*s == '&') fputs("&amp;", f);
        else fputc(*s, f);
    }
    fputs("</p>\n", f);
}

/* A number for people: 3 significant digits, thousands without exponent. */
static const char *fmt_num(char *buf, size_t len, double v) {
    if (!isfinite(v)) snprintf(buf, len, "–");
    else if (fabs(v) >= 1e6 && fabs(v) < 1e15) snprintf(buf, len, "%.0f", v);
    else if (fabs(v) >= 100) snprintf(buf, len, "%.0f", v);
    else if (fabs(v) >= 10) snprintf(buf, len, "%.1f", v);
    else if (fabs(v) >= 1) snprintf(buf, len, "%.2f", v);
    else if (v == 0) snprintf(buf, len, "0");
    else snprintf(buf, len, "%.3g", v);
    return buf;
}

static const char *fmt_ratio(char *buf, size_t len, double v) {
    if (!isfinite(v)) snprintf(buf, len, "–");
    else if (v >= 100) snprintf(buf, len, "%.0f", v);
    else if (v >= 10) snprintf(buf, len, "%.1f", v);
    else snprintf(buf, len, "%.2f", v);
    return buf;
}

/* ---- machine facts ---------------------------------------------------------------------- */
typedef struct fact { char key[64]; char val[512]; } fact;
static fact facts[40];
static int nfacts;

static void add_fact(const char *key, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void add_fact(const char *key, const char *fmt, ...) {
    if (nfacts == (int)(sizeof facts / sizeof facts[0])) return;
    snprintf(facts[nfacts].key, sizeof facts[nfacts].key, "%s", key);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(facts[nfacts].val, sizeof facts[nfacts].val, fmt, ap);
    va_end(ap);
    nfacts++;
}

static void read_first_line(const char *path, char *buf, size_t len) {
    buf[0] = 0;
    FILE *f = fopen(path, "r");
    if (!f) return;
    if (fgets(buf, (int)len, f)) buf[strcspn(buf, "\n")] = 0;
    fclose(f);
}

static void collect_facts(bench_ctx *ctx) {
    char buf[512];
    nfacts = 0;
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(buf, sizeof buf, "%Y-%m-%d %H:%M UTC", &tm);
    add_fact("date", "%s", buf);
    struct utsname u;
    if (uname(&u) == 0) add_fact("kernel", "%s %s %s", u.sysname, u.release, u.machine);
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f)) {
            if (!strncmp(line, "model name", 10)) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ') c++;
                    c[strcspn(c, "\n")] = 0;
                    add_fact("CPU", "%s", c);
                }
                break;
            }
        }
        fclose(f);
    }
    add_fact("cores", "%ld online", sysconf(_SC_NPROCESSORS_ONLN));
    f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        if (fgets(line, sizeof line, f)) {
            line[strcspn(line, "\n")] = 0;
            long kib = atol(line + 9);
            add_fact("memory", "%.1f GiB", (double)kib / 1048576.0);
        }
        fclose(f);
    }
    /* braid backends that really work here (no silent fallback). */
    char be[128] = "";
    static const struct { const char *name; braid_backend b; } bes[] = {
        { "select", BRAID_BACKEND_SELECT }, { "poll", BRAID_BACKEND_POLL },
        { "epoll", BRAID_BACKEND_EPOLL }, { "uring", BRAID_BACKEND_URING } };
    for (int i = 0; i < 4; i++) {
        braid_loop_options o = { .backend = bes[i].b, .flags = BRAID_LOOP_STRICT_BACKEND };
        braid_loop *loop;
        if (braid_loop_new(&o, &loop) == 0) {
            if (!strcmp(braid_loop_backend(loop), bes[i].name)) {
                strcat(be, be[0] ? " " : "");
                strcat(be, bes[i].name);
            }
            braid_loop_free(loop);
        }
    }
    add_fact("braid backends", "%s", be);
    if (ctx) {
        char used[128] = "";
        for (int i = 0; i < ctx->nbackends; i++) {
            strcat(used, i ? " " : "");
            strcat(used, ctx->backends[i]);
        }
        add_fact("backends measured", "%s", used);
    }
    add_fact("braid build", "%s, %s", BENCH_BUILD_TYPE, __VERSION__);
#ifdef BENCH_HAVE_LIBUV
    add_fact("libuv", "%s", uv_version_string());
#else
    add_fact("libuv", "not built in (libuv1-dev missing when braid-bench was built)");
#endif
#ifdef BENCH_HAVE_LIBEVENT
    add_fact("libevent", "%s", event_get_version());
#else
    add_fact("libevent", "not built in (libevent-dev missing when braid-bench was built)");
#endif
    bench_command_line("/usr/bin/python3 -c 'import sys, twisted; print(\"Python\", sys.version.split()[0], "
                       "\"Twisted\", twisted.__version__)'", buf, sizeof buf);
    add_fact("twisted", "%s", strstr(buf, "Twisted") ? buf : "not available");
    if (bench_have_program("nginx")) {
        bench_command_line("nginx -v || /usr/sbin/nginx -v", buf, sizeof buf);
        add_fact("nginx", "%s", buf);
    } else add_fact("nginx", "not installed");
    if (bench_have_program("wrk")) {
        bench_command_line("wrk -v", buf, sizeof buf);
        char *cp = strstr(buf, " Copyright");
        if (cp) *cp = 0;
        add_fact("wrk", "%s", buf);
    } else add_fact("wrk", "not installed");
    if (bench_have_program("gnuplot")) {
        bench_command_line("gnuplot --version", buf, sizeof buf);
        add_fact("gnuplot", "%s", buf);
    }
    read_first_line("/proc/sys/net/core/somaxconn", buf, sizeof buf);
    add_fact("net.core.somaxconn", "%s", buf);
    read_first_line("/proc/sys/net/ipv4/tcp_max_syn_backlog", buf, sizeof buf);
    add_fact("net.ipv4.tcp_max_syn_backlog", "%s", buf);
    read_first_line("/proc/sys/net/ipv4/ip_local_port_range", buf, sizeof buf);
    add_fact("net.ipv4.ip_local_port_range", "%s", buf);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) add_fact("ulimit -n", "%llu", (unsigned long long)rl.rlim_cur);
    if (getrlimit(RLIMIT_NPROC, &rl) == 0) {
        if (rl.rlim_cur == RLIM_INFINITY) add_fact("ulimit -u", "unlimited");
        else add_fact("ulimit -u", "%llu", (unsigned long long)rl.rlim_cur);
    }
    read_first_line("/proc/sys/kernel/threads-max", buf, sizeof buf);
    add_fact("kernel.threads-max", "%s", buf);
    if (bench_load_at_start[0]) add_fact("load average at start", "%s", bench_load_at_start);
    read_first_line("/proc/loadavg", buf, sizeof buf);
    add_fact("load average at the end", "%s", buf);
    if (ctx && ctx->argv) {
        char cmd[512] = "";
        for (int i = 0; ctx->argv[i]; i++) {
            const char *a = ctx->argv[i];
            if (i == 0) { const char *s = strrchr(a, '/'); a = s ? s + 1 : a; }
            if (strlen(cmd) + strlen(a) + 2 < sizeof cmd) {
                strcat(cmd, i ? " " : "");
                strcat(cmd, a);
            }
        }
        add_fact("command", "%s", cmd);
    }
}

/* ---- per-experiment views -------------------------------------------------------------------- */
typedef struct exp_view {
    const char *name;
    const bench_experiment *e;   /* NULL: rows of an experiment this binary does not know */
    bench_row **rows;
    int nrows;
    char *impls[32];             /* distinct impls in order */
    int nimpls;
    const char *base;            /* ratio base impl */
} exp_view;

static bool same_params(const bench_row *a, const bench_row *b, const char *except) {
    int na = 0, nb = 0;
    for (int i = 0; i < a->nparams; i++) {
        if (except && !strcmp(a->params[i].key, except)) continue;
        na++;
        const bench_param *p = &a->params[i];
        bool found = false;
        for (int k = 0; k < b->nparams; k++) {
            const bench_param *q = &b->params[k];
            if (strcmp(p->key, q->key)) continue;
            found = p->is_str == q->is_str && (p->is_str ? !strcmp(p->str, q->str) : p->num == q->num);
            break;
        }
        if (!found) return false;
    }
    for (int k = 0; k < b->nparams; k++)
        if (!except || strcmp(b->params[k].key, except)) nb++;
    return na == nb;
}

static void view_build(exp_view *v, const char *name) {
    memset(v, 0, sizeof *v);
    v->name = name;
    v->e = bench_find_experiment(name);
    v->rows = bench_xmalloc((size_t)(bench_results.nrows + 1) * sizeof *v->rows);
    for (int i = 0; i < bench_results.nrows; i++) {
        bench_row *r = bench_results.rows[i];
        if (strcmp(r->experiment, name)) continue;
        v->rows[v->nrows++] = r;
        bool seen = false;
        for (int k = 0; k < v->nimpls; k++) if (!strcmp(v->impls[k], r->impl)) seen = true;
        if (!seen && v->nimpls < 32) v->impls[v->nimpls++] = r->impl;
    }
    if (v->e && v->e->ratio_base) v->base = v->e->ratio_base;
    for (int k = 0; !v->base && k < v->nimpls; k++) if (!strcmp(v->impls[k], "braid")) v->base = v->impls[k];
    for (int k = 0; !v->base && k < v->nimpls; k++)
        if (!strncmp(v->impls[k], "braid", 5)) v->base = v->impls[k];
}

/* The base row to compare a peer row with: same params; the same backend
 * if the base has it, else epoll, else the first. */
static const bench_row *base_for(const exp_view *v, const bench_row *peer) {
    if (!v->base || !strcmp(peer->impl, v->base)) return NULL;
    const bench_row *first = NULL, *epoll = NULL;
    for (int i = 0; i < v->nrows; i++) {
        const bench_row *r = v->rows[i];
        if (strcmp(r->impl, v->base) || !same_params(r, peer, NULL)) continue;
        if (!strcmp(r->backend, peer->backend)) return r;
        if (!strcmp(r->backend, "epoll") && !epoll) epoll = r;
        if (!first) first = r;
    }
    return epoll ? epoll : first;
}

/* Series label: impl, plus the backend when this impl appears with several. */
static void series_label(const exp_view *v, const bench_row *r, char *buf, size_t len) {
    bool multi = false;
    for (int i = 0; i < v->nrows; i++)
        if (!strcmp(v->rows[i]->impl, r->impl) && strcmp(v->rows[i]->backend, r->backend)) multi = true;
    if (multi && r->backend[0]) snprintf(buf, len, "%s (%s)", r->impl, r->backend);
    else snprintf(buf, len, "%s", r->impl);
}

static void param_value(const bench_param *p, char *buf, size_t len) {
    if (p->is_str) snprintf(buf, len, "%s", p->str);
    else snprintf(buf, len, "%.15g", p->num);
}

/* "k=v, k=v" of a row's params (except one key). */
static void params_text(const bench_row *r, const char *except, char *buf, size_t len) {
    buf[0] = 0;
    for (int i = 0; i < r->nparams; i++) {
        if (except && !strcmp(r->params[i].key, except)) continue;
        char val[128];
        param_value(&r->params[i], val, sizeof val);
        size_t l = strlen(buf);
        snprintf(buf + l, len - l, "%s%s=%s", l ? ", " : "", r->params[i].key, val);
    }
}

static void slug(const char *in, char *out, size_t len) {
    size_t k = 0;
    for (; *in && k + 1 < len; in++) {
        char c = *in;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '.';
        out[k++] = ok ? c : '_';
    }
    out[k] = 0;
}

/* ---- CSV ---------------------------------------------------------------------------------------- */
static void write_csv(const exp_view *v, const char *out_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.csv", out_dir, v->name);
    FILE *f = fopen(path, "w");
    if (!f) return;
    /* Union of param keys, in first-seen order. */
    const char *keys[64];
    int nkeys = 0;
    for (int i = 0; i < v->nrows; i++)
        for (int p = 0; p < v->rows[i]->nparams; p++) {
            bool seen = false;
            for (int k = 0; k < nkeys; k++) if (!strcmp(keys[k], v->rows[i]->params[p].key)) seen = true;
            if (!seen && nkeys < 64) keys[nkeys++] = v->rows[i]->params[p].key;
        }
    fprintf(f, "experiment,impl,backend");
    for (int k = 0; k < nkeys; k++) fprintf(f, ",%s", keys[k]);
    fprintf(f, ",metric,unit,runs,median,min,max,ratio_base,ratio_median,ratio_min,ratio_max\n");
    for (int i = 0; i < v->nrows; i++) {
        const bench_row *r = v->rows[i];
        const bench_row *b = base_for(v, r);
        for (int m = 0; m < r->nmetrics; m++) {
            const bench_metric *mt = &r->metrics[m];
            fprintf(f, "%s,%s,%s", r->experiment, r->impl, r->backend);
            for (int k = 0; k < nkeys; k++) {
                const char *t = bench_row_param_text(r, keys[k]);
                fprintf(f, ",%s", t ? t : "");
            }
            fprintf(f, ",%s,%s,%d,%.6g,%.6g,%.6g", mt->name, mt->unit, mt->n, mt->median, mt->min, mt->max);
            double rm, rn, rx;
            if (b && bench_pair_ratio(b, r, mt->name, &rm, &rn, &rx))
                fprintf(f, ",%s,%.4g,%.4g,%.4g\n", v->base, rm, rn, rx);
            else
                fprintf(f, ",,,,\n");
        }
    }
    fclose(f);
}

/* Plots of an earlier run whose grouping no longer exists would linger
 * beside the new ones: remove <name>-*.svg before drawing. */
static void remove_old_plots(const char *out_dir, const char *name) {
    DIR *d = opendir(out_dir);
    if (!d) return;
    size_t nl = strlen(name);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l > nl + 5 && !strncmp(e->d_name, name, nl) && e->d_name[nl] == '-' && !strcmp(e->d_name + l - 4, ".svg")) {
            char path[4200];
            snprintf(path, sizeof path, "%s/%s", out_dir, e->d_name);
            unlink(path);
        }
    }
    closedir(d);
}

/* ---- plots ------------------------------------------------------------------------------------------ */
typedef struct plot_list { char files[64][256]; char captions[64][256]; int n; } plot_list;

static int cmp_x(const void *a, const void *b) {
    const double *x = a, *y = b;
    return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* One SVG per (metric, group of rows with equal params except x). */
static void make_plots(const exp_view *v, const char *out_dir, plot_list *pl, bool have_gnuplot) {
    pl->n = 0;
    const bench_experiment *e = v->e;
    if (!e || !e->plot_x || !e->plot_metric || !have_gnuplot) return;
    char metrics[512];
    snprintf(metrics, sizeof metrics, "%s", e->plot_metric);
    bool *done = bench_xmalloc((size_t)v->nrows + 1);
    for (char *save, *metric = strtok_r(metrics, ",", &save); metric; metric = strtok_r(NULL, ",", &save)) {
        while (*metric == ' ') metric++;
        memset(done, 0, (size_t)v->nrows + 1);
        for (int g = 0; g < v->nrows && pl->n < 64; g++) {
            const bench_row *lead = v->rows[g];
            double dummy;
            if (done[g] || !bench_row_param_num(lead, e->plot_x, &dummy) ||
                !bench_row_metric_get(lead, metric, NULL, NULL, NULL))
                continue;
            /* The group: rows with the same params apart from x. */
            int members[1024], nm = 0;
            for (int i = g; i < v->nrows && nm < 1024; i++) {
                if (done[i] || !same_params(v->rows[i], lead, e->plot_x)) continue;
                done[i] = true;
                members[nm++] = i;
            }
            /* A single x value is a point, not a curve: the table shows it. */
            bool spread = false;
            double x0 = NAN;
            for (int k = 0; k < nm; k++) {
                double xv;
                if (!bench_row_param_num(v->rows[members[k]], e->plot_x, &xv)) continue;
                if (isnan(x0)) x0 = xv;
                else if (xv != x0) spread = true;
            }
            if (!spread) continue;
            char group[256], gslug[256], unit[64] = "";
            params_text(lead, e->plot_x, group, sizeof group);
            slug(group, gslug, sizeof gslug);
            for (int m = 0; m < lead->nmetrics; m++)
                if (!strcmp(lead->metrics[m].name, metric)) snprintf(unit, sizeof unit, "%s", lead->metrics[m].unit);
            char base[512], gp[4096], svg[4096];
            snprintf(base, sizeof base, "%s-%s%s%s.svg", v->name, metric, gslug[0] ? "-" : "", gslug);
            snprintf(svg, sizeof svg, "%s/%s", out_dir, base);
            snprintf(gp, sizeof gp, "%s/.plot.gp", out_dir);
            FILE *f = fopen(gp, "w");
            if (!f) continue;
            fprintf(f, "set terminal svg size 760,440 dynamic font 'sans,11' background rgb 'white'\n");
            fprintf(f, "set output '%s'\n", svg);
            fprintf(f, "set title \"%s — %s%s%s\" noenhanced\n", e->title ? e->title : v->name, metric,
                    group[0] ? "\\n" : "", group);
            fprintf(f, "set xlabel '%s' noenhanced\nset ylabel '%s%s%s%s' noenhanced\n", e->plot_x, metric,
                    unit[0] ? " (" : "", unit, unit[0] ? ")" : "");
            fprintf(f, "set key outside right top noenhanced\nset grid\n");
            if (e->plot_logx) fprintf(f, "set logscale x\n");
            if (e->plot_logy) fprintf(f, "set logscale y\nset format y '%%g'\n");
            else fprintf(f, "set yrange [0:*]\n");
            fprintf(f, "set offsets graph 0.03, graph 0.03, graph 0.03, 0\n");
            /* Series: one per (impl, backend). */
            char labels[32][128];
            int nser = 0;
            int ser_of[1024];
            for (int k = 0; k < nm; k++) {
                char lab[128];
                series_label(v, v->rows[members[k]], lab, sizeof lab);
                int s = -1;
                for (int j = 0; j < nser; j++) if (!strcmp(labels[j], lab)) s = j;
                if (s < 0 && nser < 32) { s = nser; snprintf(labels[nser++], sizeof labels[0], "%s", lab); }
                ser_of[k] = s;
            }
            int ndata = 0;
            bool has[32] = { false };
            for (int si = 0; si < nser; si++) {
                double pts[1024][4];
                int np = 0;
                for (int k = 0; k < nm; k++) {
                    if (ser_of[k] != si) continue;
                    const bench_row *r = v->rows[members[k]];
                    double x, md, mn, mx;
                    if (!bench_row_param_num(r, e->plot_x, &x) || !bench_row_metric_get(r, metric, &md, &mn, &mx))
                        continue;
                    if (e->plot_logy && (md <= 0 || mn <= 0)) continue;
                    if (e->plot_logx && x <= 0) continue;
                    pts[np][0] = x; pts[np][1] = md; pts[np][2] = mn; pts[np][3] = mx;
                    np++;
                }
                if (!np) continue;
                qsort(pts, (size_t)np, sizeof pts[0], cmp_x);
                fprintf(f, "$d%d << EOD\n", si);
                for (int k = 0; k < np; k++) fprintf(f, "%.9g %.9g %.9g %.9g\n", pts[k][0], pts[k][1], pts[k][2], pts[k][3]);
                fprintf(f, "EOD\n");
                has[si] = true;
                ndata++;
            }
            if (!ndata) { fclose(f); unlink(gp); continue; }
            fprintf(f, "plot ");
            bool first = true;
            for (int si = 0; si < nser; si++) {
                if (!has[si]) continue;
                fprintf(f, "%s$d%d using 1:2:3:4 with yerrorlines lw 2 pt 7 ps 0.6 title \"%s\"", first ? "" : ", \\\n  ",
                        si, labels[si]);
                first = false;
            }
            fprintf(f, "\n");
            fclose(f);
            char cmd[8192];
            snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
            unlink(svg);
            FILE *p = popen(cmd, "r");
            char line[512];
            while (p && fgets(line, sizeof line, p))
                if (strcasestr(line, "error")) fprintf(stderr, "gnuplot: %s", line);   /* warnings are expected */
            if (p) pclose(p);
            unlink(gp);
            if (access(svg, R_OK) != 0) continue;
            snprintf(pl->files[pl->n], sizeof pl->files[0], "%s", base);
            snprintf(pl->captions[pl->n], sizeof pl->captions[0], "%s%s%s", metric, group[0] ? " — " : "", group);
            pl->n++;
        }
    }
    free(done);
}

/* ---- conclusions ---------------------------------------------------------------------------------- */
typedef struct cmp_summary {
    char peer[64], metric[64], unit[32], base_backend[32];
    int points, wins, losses;    /* losses: pairwise-median ratio on braid's worse side */
    int clear_losses;            /* ... and even the best pair was worse */
    double logsum;               /* for the geometric mean of the ratios */
    double best, worst;          /* best/worst ratio for braid */
    char best_at[160], worst_at[160];
    bool higher_better;
    double xs[256], logs[256];   /* plot_x and log(ratio) per point */
    double xmax;                  /* largest plot_x seen (NAN: no plot_x) */
    double at_xmax;               /* geometric mean of the ratios at xmax */
    char lost_at[8][128];         /* where braid was worse (pairwise median) */
    double lost_by[8];            /* ... by this factor */
    bool lost_clear[8];           /* ... in every run pair */
} cmp_summary;

/* The metrics a conclusion talks about: the plotted ones, else every metric. */
static int headline_metrics(const exp_view *v, char names[][64], int max) {
    int n = 0;
    if (v->e && v->e->plot_metric) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", v->e->plot_metric);
        for (char *save, *m = strtok_r(buf, ",", &save); m && n < max; m = strtok_r(NULL, ",", &save)) {
            while (*m == ' ') m++;
            snprintf(names[n++], 64, "%s", m);
        }
        return n;
    }
    for (int i = 0; i < v->nrows; i++)
        for (int m = 0; m < v->rows[i]->nmetrics && n < max; m++) {
            bool seen = false;
            for (int k = 0; k < n; k++) if (!strcmp(names[k], v->rows[i]->metrics[m].name)) seen = true;
            if (!seen) snprintf(names[n++], 64, "%s", v->rows[i]->metrics[m].name);
        }
    return n;
}

static int summarize(const exp_view *v, cmp_summary *out, int max, bool headline) {
    char metrics[16][64];
    int nmet = 0, n = 0;
    const char *hl = v->e ? (v->e->headline ? v->e->headline : v->e->plot_metric) : NULL;
    if (headline && hl) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", hl);
        for (char *save, *m = strtok_r(buf, ",", &save); m && nmet < (headline && !v->e->headline ? 1 : 16);
             m = strtok_r(NULL, ",", &save)) {
            while (*m == ' ') m++;
            snprintf(metrics[nmet++], 64, "%s", m);
        }
    } else {
        nmet = headline_metrics(v, metrics, 16);
    }
    if (!v->base) return 0;
    for (int pi = 0; pi < v->nimpls; pi++) {
        const char *peer = v->impls[pi];
        if (!strcmp(peer, v->base)) continue;
        for (int mi = 0; mi < nmet; mi++) {
            cmp_summary s = { 0 };
            snprintf(s.peer, sizeof s.peer, "%s", peer);
            snprintf(s.metric, sizeof s.metric, "%s", metrics[mi]);
            for (int i = 0; i < v->nrows; i++) {
                const bench_row *r = v->rows[i];
                if (strcmp(r->impl, peer)) continue;
                const bench_row *b = base_for(v, r);
                double rm, rn, rx;
                if (!b || !bench_pair_ratio(b, r, s.metric, &rm, &rn, &rx) || rm <= 0) continue;
                for (int m = 0; m < r->nmetrics; m++)
                    if (!strcmp(r->metrics[m].name, s.metric)) snprintf(s.unit, sizeof s.unit, "%s", r->metrics[m].unit);
                s.higher_better = bench_unit_higher_is_better(s.unit);
                snprintf(s.base_backend, sizeof s.base_backend, "%s", b->backend);
                /* good: braid's value better than the peer's */
                double good = s.higher_better ? rm : 1 / rm;
                bool win = good > 1, lose = good < 1;
                double best_pair = s.higher_better ? rx : 1 / rn;
                char at[160];
                params_text(r, NULL, at, sizeof at);
                if (s.points == 0 || good > s.best) { s.best = good; snprintf(s.best_at, sizeof s.best_at, "%s", at); }
                if (s.points == 0 || good < s.worst) { s.worst = good; snprintf(s.worst_at, sizeof s.worst_at, "%s", at); }
                double xv;
                if (s.points < 256) {
                    s.xs[s.points] = v->e && v->e->plot_x && bench_row_param_num(r, v->e->plot_x, &xv) ? xv : NAN;
                    s.logs[s.points] = log(rm);
                }
                if (lose && s.losses < 8) {
                    snprintf(s.lost_at[s.losses], sizeof s.lost_at[0], "%s", at);
                    s.lost_by[s.losses] = 1 / good;
                    s.lost_clear[s.losses] = best_pair < 1;
                }
                s.points++;
                s.wins += win;
                s.losses += lose;
                s.clear_losses += lose && best_pair < 1;
                s.logsum += log(rm);
            }
            s.xmax = NAN;
            s.at_xmax = NAN;
            int np = s.points < 256 ? s.points : 256;
            for (int k = 0; k < np; k++)
                if (isfinite(s.xs[k]) && (!isfinite(s.xmax) || s.xs[k] > s.xmax)) s.xmax = s.xs[k];
            if (isfinite(s.xmax)) {
                double ls = 0;
                int c = 0;
                for (int k = 0; k < np; k++) if (s.xs[k] == s.xmax) { ls += s.logs[k]; c++; }
                if (c) s.at_xmax = exp(ls / c);
            }
            if (s.points && n < max) out[n++] = s;
        }
    }
    return n;
}

/* The generic conclusion: for each peer and headline metric, where braid
 * wins and loses, by how much (pairwise ratios), and the worst point. */
static void generic_conclusion(const exp_view *v, FILE *f) {
    cmp_summary s[64];
    int n = summarize(v, s, 64, false);
    if (!v->base) {
        fputs("<p>No braid row to compare against; the table stands on its own.</p>\n", f);
        return;
    }
    if (!n) {
        fputs("<p>No peer measured beside braid here (see the notes), so there is no ratio to conclude from.</p>\n", f);
        return;
    }
    fputs("<ul>\n", f);
    for (int i = 0; i < n; i++) {
        char g[32], b[32], w[32];
        double gm = exp(s[i].logsum / s[i].points);
        fprintf(f, "<li><b>%s", v->base);
        if (s[i].base_backend[0]) fprintf(f, " (%s)", s[i].base_backend);
        fprintf(f, " vs %s</b>, <code>%s</code> (%s, %s is better): %s ÷ %s geometric mean %s over %d point%s; "
                   "%s better at %d, worse at %d",
                s[i].peer, s[i].metric, s[i].unit, s[i].higher_better ? "higher" : "lower", v->base, s[i].peer,
                fmt_ratio(g, sizeof g, gm), s[i].points, s[i].points == 1 ? "" : "s", v->base, s[i].wins, s[i].losses);
        if (s[i].losses)
            fprintf(f, " (%d of those worse in every run pair)", s[i].clear_losses);
        if (s[i].best >= 1) fprintf(f, ". Best for %s: %s× better", v->base, fmt_ratio(b, sizeof b, s[i].best));
        else fprintf(f, ". Closest: %s× worse", fmt_ratio(b, sizeof b, 1 / s[i].best));
        if (s[i].best_at[0]) { fputs(" at ", f); html_esc(f, s[i].best_at); }
        if (s[i].worst < 1) {
            fprintf(f, "; worst: %s× worse", fmt_ratio(w, sizeof w, 1 / s[i].worst));
        } else {
            fprintf(f, "; least ahead: %s×", fmt_ratio(w, sizeof w, s[i].worst));
        }
        if (s[i].worst_at[0]) { fputs(" at ", f); html_esc(f, s[i].worst_at); }
        fputs(".", f);
        if (s[i].losses) {
            fprintf(f, " %s is worse at: ", v->base);
            int shown = s[i].losses < 8 ? s[i].losses : 8;
            for (int k = 0; k < shown; k++) {
                char lb[32];
                fprintf(f, "%s", k ? "; " : "");
                html_esc(f, s[i].lost_at[k][0] ? s[i].lost_at[k] : "the only point");
                fprintf(f, " (%s×%s)", fmt_ratio(lb, sizeof lb, s[i].lost_by[k]),
                        s[i].lost_clear[k] ? ", every run pair" : ", within noise");
            }
            if (s[i].losses > shown) fprintf(f, "; and %d more", s[i].losses - shown);
            fputs(".", f);
        }
        fputs("</li>\n", f);
    }
    fputs("</ul>\n<p>Ratios are taken run by run (run <i>i</i> of one against run <i>i</i> of the other, measured back to back), "
          "and the table gives their median and range; where that range straddles 1.00 the difference is within this "
          "machine's run-to-run noise.</p>\n", f);
}

/* ---- the table --------------------------------------------------------------------------------------- */
/* One table per experiment: a line per row (impl, backend, params), a
 * column per metric. Each cell: the median, the min-max over runs, and for
 * a peer's row the pairwise ratio base / this (coloured: green where the
 * base is better in every run pair, red where it is worse in every pair,
 * pale where the range straddles 1). */
static void write_table(const exp_view *v, FILE *f) {
    const char *keys[64], *mets[BENCH_MAX_METRICS * 2], *units[BENCH_MAX_METRICS * 2];
    int nkeys = 0, nmets = 0;
    for (int i = 0; i < v->nrows; i++) {
        for (int p = 0; p < v->rows[i]->nparams; p++) {
            bool seen = false;
            for (int k = 0; k < nkeys; k++) if (!strcmp(keys[k], v->rows[i]->params[p].key)) seen = true;
            if (!seen && nkeys < 64) keys[nkeys++] = v->rows[i]->params[p].key;
        }
        for (int m = 0; m < v->rows[i]->nmetrics; m++) {
            bool seen = false;
            for (int k = 0; k < nmets; k++) if (!strcmp(mets[k], v->rows[i]->metrics[m].name)) seen = true;
            if (!seen && nmets < BENCH_MAX_METRICS * 2) {
                units[nmets] = v->rows[i]->metrics[m].unit;
                mets[nmets++] = v->rows[i]->metrics[m].name;
            }
        }
    }
    fputs("<div class=\"tw\"><table>\n<tr><th>impl</th><th>backend</th>", f);
    for (int k = 0; k < nkeys; k++) { fputs("<th>", f); html_esc(f, keys[k]); fputs("</th>", f); }
    for (int k = 0; k < nmets; k++) {
        fputs("<th>", f); html_esc(f, mets[k]);
        fputs("<br><small>", f); html_esc(f, units[k]);
        fprintf(f, ", %s better</small></th>", bench_unit_higher_is_better(units[k]) ? "higher" : "lower");
    }
    fputs("<th>runs</th></tr>\n", f);
    for (int i = 0; i < v->nrows; i++) {
        const bench_row *r = v->rows[i];
        const bench_row *b = base_for(v, r);
        bool is_base = v->base && !strcmp(r->impl, v->base);
        fprintf(f, "<tr%s><td>", is_base ? " class=\"base\"" : "");
        html_esc(f, r->impl);
        fputs("</td><td>", f);
        html_esc(f, r->backend);
        fputs("</td>", f);
        for (int k = 0; k < nkeys; k++) {
            const char *t = bench_row_param_text(r, keys[k]);
            fputs("<td>", f); html_esc(f, t ? t : ""); fputs("</td>", f);
        }
        for (int k = 0; k < nmets; k++) {
            const bench_metric *mt = NULL;
            for (int m = 0; m < r->nmetrics; m++) if (!strcmp(r->metrics[m].name, mets[k])) mt = &r->metrics[m];
            if (!mt || !isfinite(mt->median)) { fputs("<td class=\"n\">–</td>", f); continue; }
            char a1[32], a2[32], a3[32];
            fprintf(f, "<td class=\"n\"><b>%s</b>", fmt_num(a1, sizeof a1, mt->median));
            if (mt->min != mt->max)
                fprintf(f, " <small>%s–%s</small>", fmt_num(a2, sizeof a2, mt->min), fmt_num(a3, sizeof a3, mt->max));
            double rm, rn, rx;
            if (b && bench_pair_ratio(b, r, mt->name, &rm, &rn, &rx)) {
                bool hb = bench_unit_higher_is_better(mt->unit);
                bool better = hb ? rm > 1 : rm < 1;
                bool clear = hb ? rn > 1 : rx < 1, clear_worse = hb ? rx < 1 : rn > 1;
                const char *cls = clear ? "win" : clear_worse ? "lose" : better ? "lwin" : "llose";
                if (rm == 1 && rn == 1 && rx == 1) cls = "";
                fprintf(f, "<br><span class=\"r %s\" title=\"%s ÷ this, run by run\">÷ %s (%s–", cls, v->base,
                        fmt_ratio(a1, sizeof a1, rm), fmt_ratio(a2, sizeof a2, rn));
                fprintf(f, "%s)</span>", fmt_ratio(a3, sizeof a3, rx));
            }
            fputs("</td>", f);
        }
        fprintf(f, "<td class=\"n\">%d</td></tr>\n", r->runs);
    }
    fputs("</table></div>\n", f);
    if (v->base)
        fprintf(f, "<p><small>Each cell: <b>median</b> and min–max over runs; under a peer's value, \"÷ r (lo–hi)\" is "
                   "%s's value divided by this row's, run by run (median and range of the per-run ratios). "
                   "Green: %s better in every run pair; red: worse in every pair; pale: the range straddles 1.</small></p>\n",
                v->base, v->base);
}

/* ---- index.html and summary.md ------------------------------------------------------------------------ */
static const char *CSS =
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}"
    "h1{margin-bottom:.2em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}"
    "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ddd;padding:2px 6px;vertical-align:top;white-space:nowrap}"
    "th{background:#f4f4f4}.n{text-align:right;font-variant-numeric:tabular-nums}tr.base td{background:#f7fbff}"
    ".r{font-size:11px;padding:0 2px}.win{background:#c8ecc8}.lwin{background:#eaf6ea}.lose{background:#f6cccc}.llose{background:#fbecec}"
    ".tw{overflow-x:auto;max-height:32em;overflow-y:auto}.facts td:first-child{font-weight:600}"
    ".note{color:#8a5a00}img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#555}"
    "code{background:#f4f4f4;padding:0 3px}";

static void write_summary_md(exp_view *views, int nviews, const char *out_dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/summary.md", out_dir);
    FILE *f = fopen(path, "w");
    if (!f) return;
    fprintf(f, "| experiment | comparison | metric | braid ÷ peer, all points | at the largest point | braid better / worse at |\n");
    fprintf(f, "|---|---|---|---|---|---|\n");
    for (int i = 0; i < nviews; i++) {
        cmp_summary s[64];
        if (!views[i].base || strncmp(views[i].base, "braid", 5)) continue;   /* braid rows only */
        int n = summarize(&views[i], s, 64, true);
        for (int k = 0; k < n; k++) {
            if (!strncmp(s[k].peer, "braid", 5)) continue;   /* braid variants are for the full report */
            char g[32], gx[32], xs[96] = "–";
            if (isfinite(s[k].at_xmax))
                snprintf(xs, sizeof xs, "%s (%s = %.15g)", fmt_ratio(gx, sizeof gx, s[k].at_xmax), views[i].e->plot_x,
                         s[k].xmax);
            fprintf(f, "| %s | %s vs %s | %s (%s, %s better) | %s | %s | %d / %d of %d |\n", views[i].name,
                    views[i].base, s[k].peer, s[k].metric, s[k].unit, s[k].higher_better ? "higher" : "lower",
                    fmt_ratio(g, sizeof g, exp(s[k].logsum / s[k].points)), xs, s[k].wins, s[k].losses, s[k].points);
        }
    }
    char cpu[256] = "", kern[256] = "", date[64] = "";
    for (int i = 0; i < nfacts; i++) {
        if (!strcmp(facts[i].key, "CPU")) snprintf(cpu, sizeof cpu, "%s", facts[i].val);
        if (!strcmp(facts[i].key, "kernel")) snprintf(kern, sizeof kern, "%s", facts[i].val);
        if (!strcmp(facts[i].key, "date")) snprintf(date, sizeof date, "%s", facts[i].val);
    }
    fprintf(f, "\nRatios are braid ÷ peer, taken run by run (braid's run i against the peer's run i) and combined as a "
               "geometric mean over the experiment's points; below 1 is better for braid where lower is better, above 1 "
               "where higher is better. Measured %s on %s, %ld cores, %s; full report with method, plots and "
               "conclusions: bench/report/index.html (raw rows: results.jsonl).\n",
            date, cpu, sysconf(_SC_NPROCESSORS_ONLN), kern);
    fclose(f);
}

int bench_report(bench_ctx *ctx, const char *out_dir, double total_seconds) {
    collect_facts(ctx);
    bool have_gnuplot = bench_have_program("gnuplot");
    /* Experiments with rows: registered ones in report order, then unknown names. */
    const char *names[128];
    int nnames = 0;
    for (int i = 0; i < bench_nexperiments; i++)
        for (int r = 0; r < bench_results.nrows; r++)
            if (!strcmp(bench_results.rows[r]->experiment, bench_experiments[i]->name)) {
                names[nnames++] = bench_experiments[i]->name;
                break;
            }
    for (int r = 0; r < bench_results.nrows && nnames < 128; r++) {
        bool seen = false;
        for (int k = 0; k < nnames; k++) if (!strcmp(names[k], bench_results.rows[r]->experiment)) seen = true;
        if (!seen) names[nnames++] = bench_results.rows[r]->experiment;
    }
    exp_view *views = bench_xmalloc((size_t)(nnames + 1) * sizeof *views);
    for (int i = 0; i < nnames; i++) view_build(&views[i], names[i]);

    char path[4096];
    snprintf(path, sizeof path, "%s/index.html", out_dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "braid-bench: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>braid benchmarks</title>\n<style>%s</style></head><body>\n", CSS);
    fputs("<h1>braid benchmarks</h1>\n", f);
    fputs("<p>braid is an event-driven networking framework in C. This report measures it beside the libraries and "
          "programs people would otherwise use (libuv, libevent, Twisted, hand-written epoll and pthreads programs), "
          "on one machine, in one invocation. Every implementation does the same work with the same socket options; "
          "braid and its peers run alternately (A B A B …), several runs each, and every table gives the median, the "
          "min–max over runs, and the ratio braid ÷ peer taken run by run. This machine's speed drifts between runs, "
          "so only ratios within one run mean much; a ratio whose min–max straddles 1.00 is noise. "
          "Raw rows: <a href=\"results.jsonl\">results.jsonl</a> (one JSON object per row, with every sample); "
          "headline: <a href=\"summary.md\">summary.md</a>.</p>\n", f);
    if (total_seconds > 0) fprintf(f, "<p>This run took %.0f s.</p>\n", total_seconds);
    if (strcmp(BENCH_BUILD_TYPE, "Release") && strcmp(BENCH_BUILD_TYPE, "RelWithDebInfo"))
        fprintf(f, "<p class=\"note\"><b>Warning:</b> braid-bench was built as %s; numbers from a non-optimised build "
                   "say little. Use <code>make bench</code> (Release).</p>\n", BENCH_BUILD_TYPE);
    fputs("<h2>Machine</h2>\n<table class=\"facts\">\n", f);
    for (int i = 0; i < nfacts; i++) {
        fputs("<tr><td>", f); html_esc(f, facts[i].key);
        fputs("</td><td>", f); html_esc(f, facts[i].val);
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n<p>Placement: unless an experiment says otherwise, processes are not pinned (the scheduler "
          "places them on the cores; a cross-core wake-up was measured at about 30 µs on this machine), and "
          "other work on the machine (see the load average above) adds noise.</p>\n", f);

    /* The headline: what summary.md says, for a reader starting here. */
    bool any_head = false;
    for (int i = 0; i < nnames; i++) {
        exp_view *v = &views[i];
        if (!v->base || strncmp(v->base, "braid", 5)) continue;
        cmp_summary *sm = bench_xmalloc(64 * sizeof *sm);
        int n = summarize(v, sm, 64, true);
        for (int k = 0; k < n; k++) {
            if (!strncmp(sm[k].peer, "braid", 5)) continue;
            if (!any_head)
                fputs("<h2>Headline</h2>\n<p>braid ÷ peer for each experiment's headline metric, ratios taken run by "
                      "run and combined as a geometric mean over the experiment's points (the largest point also on "
                      "its own). Below 1 is better for braid where lower is better, above 1 where higher is better. "
                      "Details, including every point where braid loses, are in each section.</p>\n<table>\n"
                      "<tr><th>experiment</th><th>comparison</th><th>metric</th><th>all points</th>"
                      "<th>largest point</th><th>braid better / worse at</th></tr>\n", f);
            any_head = true;
            char g[32], gx[32];
            double gm = exp(sm[k].logsum / sm[k].points);
            bool good = sm[k].higher_better ? gm > 1 : gm < 1;
            fprintf(f, "<tr><td><a href=\"#%s\">%s</a></td><td>", v->name, v->name);
            html_esc(f, v->base); fputs(" vs ", f); html_esc(f, sm[k].peer);
            fputs("</td><td>", f); html_esc(f, sm[k].metric);
            fprintf(f, " <small>(%s, %s better)</small></td><td class=\"n %s\">%s</td><td class=\"n\">", sm[k].unit,
                    sm[k].higher_better ? "higher" : "lower", good ? "lwin" : "llose", fmt_ratio(g, sizeof g, gm));
            if (isfinite(sm[k].at_xmax))
                fprintf(f, "%s <small>(%s = %.15g)</small>", fmt_ratio(gx, sizeof gx, sm[k].at_xmax), v->e->plot_x,
                        sm[k].xmax);
            else
                fputs("–", f);
            fprintf(f, "</td><td class=\"n\">%d / %d of %d</td></tr>\n", sm[k].wins, sm[k].losses, sm[k].points);
        }
        free(sm);
    }
    if (any_head) fputs("</table>\n", f);

    fputs("<h2>Contents</h2>\n<ul>\n", f);
    for (int i = 0; i < nnames; i++) {
        fprintf(f, "<li><a href=\"#%s\">", views[i].name);
        html_esc(f, views[i].e && views[i].e->title ? views[i].e->title : views[i].name);
        fputs("</a></li>\n", f);
    }
    fputs("</ul>\n", f);

    for (int i = 0; i < nnames; i++) {
        exp_view *v = &views[i];
        remove_old_plots(out_dir, v->name);
        write_csv(v, out_dir);
        plot_list *pl = bench_xmalloc(sizeof *pl);
        make_plots(v, out_dir, pl, have_gnuplot);
        fprintf(f, "<h2 id=\"%s\">", v->name);
        html_esc(f, v->e && v->e->title ? v->e->title : v->name);
        fprintf(f, " <small>(<code>%s</code>)</small></h2>\n", v->name);
        if (v->e && v->e->question) { fputs("<h3>Question</h3>\n", f); html_paras(f, v->e->question); }
        if (v->e && v->e->method) { fputs("<h3>Method</h3>\n", f); html_paras(f, v->e->method); }
        int rowruns = 0;
        for (int r = 0; r < v->nrows; r++) if (v->rows[r]->runs > rowruns) rowruns = v->rows[r]->runs;
        fprintf(f, "<p>Runs per row: up to %d, implementations alternating. CSV: <a href=\"%s.csv\">%s.csv</a>.</p>\n",
                rowruns, v->name, v->name);
        bool any_note = false;
        for (int n = 0; n < bench_results.nnotes; n++) {
            if (strcmp(bench_results.notes[n].experiment, v->name)) continue;
            if (!any_note) fputs("<h3>Notes</h3>\n<ul class=\"note\">\n", f);
            any_note = true;
            fputs("<li>", f); html_esc(f, bench_results.notes[n].text); fputs("</li>\n", f);
        }
        if (any_note) fputs("</ul>\n", f);
        if (pl->n) fputs("<h3>Plots</h3>\n", f);
        for (int p = 0; p < pl->n; p++) {
            fprintf(f, "<figure><img src=\"%s\" alt=\"", pl->files[p]);
            html_esc(f, pl->captions[p]);
            fputs("\"><figcaption>", f);
            html_esc(f, pl->captions[p]);
            fputs(" (points: median; bars: min–max over runs)</figcaption></figure>\n", f);
        }
        if (v->e && v->e->plot_x && !have_gnuplot)
            fputs("<p class=\"note\">gnuplot is not installed: no plots.</p>\n", f);
        fputs("<h3>Results</h3>\n", f);
        write_table(v, f);
        fputs("<h3>Conclusion</h3>\n", f);
        if (v->e && v->e->conclude) {
            bench_ctx c = ctx ? *ctx : (bench_ctx){ 0 };
            c.experiment = v->name;
            v->e->conclude(&c, f);
        }
        /* The generic braid-vs-peer summary, unless the experiment has its
         * own conclusion and no braid row to compare with. */
        if (!(v->e && v->e->conclude) || (v->base && !strncmp(v->base, "braid", 5)))
            generic_conclusion(v, f);
        free(pl);
    }
    if (!nnames) fputs("<p>No results yet: run <code>braid-bench</code>.</p>\n", f);
    fputs("<hr><p><small>Generated by braid-bench (bench/report.c). How to run and how to add an experiment: "
          "docs/bench.md.</small></p>\n</body></html>\n", f);
    fclose(f);
    write_summary_md(views, nnames, out_dir);
    for (int i = 0; i < nnames; i++) free(views[i].rows);
    free(views);
    return 0;
}
