/* braid-mdi: the windows <-> tabs demo of "every program does this, here is
 * how" (glyph, 2005), in GTK 3, with live network content through braid.
 *
 *     braid-mdi [--plugs N] [--loop glib|braid] [--test]
 *
 * The program starts a small braid line server on 127.0.0.1 and opens one TCP
 * connection per plug to it. Each plug (a document) shows what its connection
 * brings: a counter the server ticks every second, the chat lines any plug
 * sends (type in a plug's entry and press Enter), and the messages of a load
 * run. The plugs start as separate windows (MultiWindow); "cycle MDI" moves
 * them all into one notebook (MultiTab) and back. Closing a plug — its window,
 * or its tab's close button — closes its connection; an empty notebook hides
 * its window. Network traffic and the UI share one thread.
 *
 * --loop glib (the default): GLib owns the thread (gtk_main) and braid runs
 * inside it through a braid_glib_source, as Twisted's gtk reactors do; a GTK
 * program stays a GTK program with one more line. --loop braid: braid owns the
 * thread (braid_loop_run) and drives GTK's GMainContext (braid_glib_context).
 *
 * --test: windows at fixed places, and commands on stdin, one per line, for
 * tests and braid-bench (answers on stdout, one line each):
 *   state               "state windows=W tabs=T notebook=shown|hidden
 *                        server_conns=S client_conns=C order=NAME,NAME,..."
 *                        (order: the notebook's pages if it has any, else the
 *                        windows in their container's order)
 *   geometry            "geom cycler X Y" and "geom close I X Y" per tab (root
 *                        coordinates of the buttons' centres, for xdotool)
 *   drawn               "drawn N" once the N mapped top-level windows have
 *                        painted their current state and the X server has it
 *                        (before a screenshot)
 *   close I             close plug I as its close button would
 *   load RATE SECONDS   the server sends RATE lines/s spread over the plugs;
 *                        meanwhile a GLib timeout every 5 ms records its
 *                        lateness; once every line sent has been shown:
 *                        "load rate=R seconds=S sent=N shown=N samples=K
 *                        p50_us=.. p99_us=.. max_us=.."
 *   modal N             from a braid callback, run a modal dialog
 *                        (gtk_dialog_run) and close it once N lines arrived
 *                        meanwhile: "modal received=N"
 *   quit                quit (as closing the Cycler window does)
 * Exit status 0 when everything closed cleanly (braid's leak gate passed). */
#include "mdi.h"

#include <braid.h>
#include <braid/glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LOAD_PROBE_MS 5

typedef struct app app;

/* ---- the line server ------------------------------------------------------------------------ */
typedef struct sconn {
    braid_framing_protocol fp;     /* first */
    app *a;
    char name[64];
} sconn;

/* ---- a plug: one document, one connection ---------------------------------------------------- */
typedef struct dplug {
    app *a;
    int index;
    mdi_plug plug;
    braid_factory factory;        /* one per plug: the connection finds its plug */
    braid_transport *t;           /* while connected */
    GtkLabel *tick, *chat, *count;
    GtkEntry *entry;
    uint64_t lines, load_lines;
    bool closing;
} dplug;

typedef struct cproto {
    braid_framing_protocol fp;     /* first */
    dplug *p;
} cproto;

struct app {
    braid_loop *loop;
    bool braid_main, test, quitting;
    braid_glib_source *src;
    braid_glib_context *gc;
    int status;

    /* server */
    braid_factory server_f;
    braid_listener *listener;
    GPtrArray *sconns;            /* sconn * */
    braid_timer tick;
    uint64_t ticks;

    /* plugs */
    int nplugs;
    GPtrArray *plugs;             /* dplug *, by index; NULL once gone */
    int client_conns;
    mdi_multi *windows, *tabs;
    mdi_cycler *cycler;
    GtkWidget *nb_window;
    GtkNotebook *notebook;

    /* load */
    braid_timer load_timer;
    uint64_t load_rate, load_start, load_end, load_sent, load_shown;
    double load_seconds;
    bool loading, load_sending, load_report;
    GArray *lateness_us;          /* gint64 */
    gint64 probe_deadline;
    guint probe;

    /* modal */
    bool modal_on;
    uint64_t modal_need, modal_got;
    GtkWidget *dialog;
    braid_timer modal_timer, modal_check;

    /* test commands */
    int drawn_pending, drawn_count;
    braid_watch in_watch;
    bool in_open;
    char in_buf[4096];
    size_t in_len;
};

static void quit(app *a) {
    if (a->quitting) return;
    a->quitting = true;
    if (a->braid_main) braid_loop_stop(a->loop);
    else gtk_main_quit();
}

/* ---- server side ------------------------------------------------------------------------------------ */
static void server_broadcast(app *a, const char *line) {
    for (guint i = 0; i < a->sconns->len; i++) {
        sconn *c = a->sconns->pdata[i];
        braid_framing_write_line(c->fp.base.transport, "\n", line, strlen(line));
    }
}

static int server_line(void *ctx, const void *data, size_t len) {
    sconn *c = ctx;
    char line[600];
    if (len >= 5 && !memcmp(data, "name ", 5)) {
        snprintf(c->name, sizeof c->name, "%.*s", (int)(len - 5), (const char *)data + 5);
    } else if (len >= 4 && !memcmp(data, "say ", 4)) {
        snprintf(line, sizeof line, "chat %s: %.*s", c->name, (int)(len - 4), (const char *)data + 4);
        server_broadcast(c->a, line);
    }
    return 0;
}

static void server_made(braid_protocol *p) {
    sconn *c = (sconn *)p;
    c->a = p->user;
    snprintf(c->name, sizeof c->name, "?");
    braid_framer_init_line(&c->fp.framer, "\n", 512, server_line, c);
    g_ptr_array_add(c->a->sconns, c);
}

static void server_lost(braid_protocol *p, const braid_failure *reason) {
    sconn *c = (sconn *)p;
    (void)reason;
    g_ptr_array_remove(c->a->sconns, c);
}

static const braid_protocol_ops server_ops = {
    .connection_made = server_made,
    .data_received = braid_framing_protocol_data_received,
    .connection_lost = server_lost,
    .destroy = braid_framing_protocol_destroy,
};

static void on_tick(braid_timer *t, void *arg) {
    app *a = arg;
    char line[64];
    snprintf(line, sizeof line, "tick %llu", (unsigned long long)++a->ticks);
    server_broadcast(a, line);
    braid_timer_start(t, BRAID_SECONDS(1));
}

/* ---- load: the server sends RATE lines/s, round robin over the plugs ----------------------------- */
static void load_maybe_done(app *a);

static void on_load_timer(braid_timer *t, void *arg) {
    app *a = arg;
    uint64_t now = braid_loop_now_fresh(a->loop);
    uint64_t until = a->load_end && now > a->load_end ? a->load_end : now;
    uint64_t due = (until - a->load_start) * a->load_rate / 1000000000ull;
    char line[64];
    while (a->load_sent < due && a->sconns->len) {
        sconn *c = a->sconns->pdata[a->load_sent % a->sconns->len];
        int n = snprintf(line, sizeof line, "load %llu", (unsigned long long)a->load_sent);
        braid_framing_write_line(c->fp.base.transport, "\n", line, (size_t)n);
        a->load_sent++;
    }
    if (a->load_end && now >= a->load_end) {
        a->load_sending = false;
        load_maybe_done(a);
        return;
    }
    braid_timer_start(t, BRAID_MSEC(1));
}

static gboolean on_probe(gpointer arg) {
    app *a = arg;
    gint64 late = g_get_monotonic_time() - a->probe_deadline;
    g_array_append_val(a->lateness_us, late);
    if (!a->load_sending) {
        a->probe = 0;
        return G_SOURCE_REMOVE;
    }
    a->probe_deadline = g_get_monotonic_time() + LOAD_PROBE_MS * 1000;
    a->probe = g_timeout_add(LOAD_PROBE_MS, on_probe, a);
    return G_SOURCE_REMOVE;
}

static int cmp_i64(const void *x, const void *y) {
    gint64 a = *(const gint64 *)x, b = *(const gint64 *)y;
    return a < b ? -1 : a > b;
}

static void load_start(app *a, uint64_t rate, double seconds, bool report) {
    a->loading = a->load_sending = true;
    a->load_report = report;
    a->load_rate = rate;
    a->load_seconds = seconds;
    a->load_sent = a->load_shown = 0;
    a->load_start = braid_loop_now_fresh(a->loop);
    a->load_end = seconds > 0 ? a->load_start + (uint64_t)(seconds * 1e9) : 0;
    g_array_set_size(a->lateness_us, 0);
    braid_timer_start(&a->load_timer, 0);
    if (report) {
        a->probe_deadline = g_get_monotonic_time() + LOAD_PROBE_MS * 1000;
        a->probe = g_timeout_add(LOAD_PROBE_MS, on_probe, a);
    }
}

static void load_stop_sending(app *a) {
    braid_timer_stop(&a->load_timer);
    a->load_sending = false;
}

/* Every line sent has been shown: report. */
static void load_maybe_done(app *a) {
    if (!a->loading || a->load_sending || a->load_shown < a->load_sent) return;
    a->loading = false;
    if (!a->load_report) return;
    GArray *l = a->lateness_us;
    qsort(l->data, l->len, sizeof(gint64), cmp_i64);
    gint64 p50 = l->len ? g_array_index(l, gint64, l->len / 2) : -1;
    gint64 p99 = l->len ? g_array_index(l, gint64, (l->len * 99) / 100 < l->len ? (l->len * 99) / 100 : l->len - 1) : -1;
    gint64 max = l->len ? g_array_index(l, gint64, l->len - 1) : -1;
    printf("load rate=%llu seconds=%g sent=%llu shown=%llu samples=%u p50_us=%lld p99_us=%lld max_us=%lld\n",
           (unsigned long long)a->load_rate, a->load_seconds, (unsigned long long)a->load_sent,
           (unsigned long long)a->load_shown, l->len, (long long)p50, (long long)p99, (long long)max);
    fflush(stdout);
}

/* ---- client side: what a plug shows -------------------------------------------------------------- */
static int client_line(void *ctx, const void *data, size_t len) {
    dplug *p = ctx;
    app *a = p->a;
    char text[600];
    snprintf(text, sizeof text, "%.*s", (int)len, (const char *)data);
    p->lines++;
    if (!strncmp(text, "tick ", 5)) {
        gtk_label_set_text(p->tick, text + 5);
    } else if (!strncmp(text, "chat ", 5)) {
        gtk_label_set_text(p->chat, text + 5);
    } else if (!strncmp(text, "load ", 5)) {
        p->load_lines++;
        char c[700];
        snprintf(c, sizeof c, "load line %.20s (%llu here)", text + 5, (unsigned long long)p->load_lines);
        gtk_label_set_text(p->count, c);     /* shown: the widget now says it */
        a->load_shown++;
        if (a->modal_on) a->modal_got++;
        load_maybe_done(a);
    }
    return 0;
}

static void client_made(braid_protocol *bp) {
    cproto *c = (cproto *)bp;
    dplug *p = bp->user;
    c->p = p;
    p->t = bp->transport;
    p->a->client_conns++;
    braid_framer_init_line(&c->fp.framer, "\n", 512, client_line, p);
    char line[80];
    int n = snprintf(line, sizeof line, "name %s", p->plug.name);
    braid_framing_write_line(p->t, "\n", line, (size_t)n);
    gtk_label_set_text(p->chat, "connected");
}

static void plug_forget(dplug *p);

static void client_lost(braid_protocol *bp, const braid_failure *reason) {
    dplug *p = bp->user;
    (void)reason;
    p->t = NULL;
    p->a->client_conns--;
}

static void client_destroy(braid_protocol *bp) {
    dplug *p = bp->user;
    braid_framing_protocol_destroy(bp);
    plug_forget(p);                /* the connection is over: so is the plug */
}

static const braid_protocol_ops client_ops = {
    .connection_made = client_made,
    .data_received = braid_framing_protocol_data_received,
    .connection_lost = client_lost,
    .destroy = client_destroy,
};

static void entry_activate(GtkEntry *e, gpointer arg) {
    dplug *p = arg;
    const char *text = gtk_entry_get_text(e);
    if (!p->t || !*text) return;
    char line[520];
    int n = snprintf(line, sizeof line, "say %.500s", text);
    braid_framing_write_line(p->t, "\n", line, (size_t)n);
    gtk_entry_set_text(e, "");
}

static GtkWidget *plug_widget(dplug *p, const char *name) {
    GtkWidget *box = gtk_box_new(GTK_ORIENTATION_VERTICAL, 6);
    gtk_container_set_border_width(GTK_CONTAINER(box), 12);
    GtkWidget *title = gtk_label_new(NULL);
    char *markup = g_markup_printf_escaped("<big><b>%s</b></big>", name);
    gtk_label_set_markup(GTK_LABEL(title), markup);
    g_free(markup);
    p->tick = GTK_LABEL(gtk_label_new("…"));
    p->chat = GTK_LABEL(gtk_label_new("connecting"));
    p->count = GTK_LABEL(gtk_label_new(""));
    gtk_label_set_ellipsize(p->chat, PANGO_ELLIPSIZE_END);
    p->entry = GTK_ENTRY(gtk_entry_new());
    gtk_entry_set_placeholder_text(p->entry, "say something, Enter");
    g_signal_connect(p->entry, "activate", G_CALLBACK(entry_activate), p);
    GtkWidget *counter = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 6);
    gtk_box_pack_start(GTK_BOX(counter), gtk_label_new("server tick:"), FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(counter), GTK_WIDGET(p->tick), FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), title, FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), counter, FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), GTK_WIDGET(p->chat), TRUE, TRUE, 0);
    gtk_box_pack_start(GTK_BOX(box), GTK_WIDGET(p->count), FALSE, FALSE, 0);
    gtk_box_pack_start(GTK_BOX(box), GTK_WIDGET(p->entry), FALSE, FALSE, 0);
    gtk_widget_set_size_request(box, 300, 200);
    return box;
}

static mdi_multi *container_of_plug(app *a, dplug *p) {
    if (mdi_multi_has(a->windows, &p->plug)) return a->windows;
    if (mdi_multi_has(a->tabs, &p->plug)) return a->tabs;
    return NULL;
}

/* The user closed a plug (its window, its tab's close button): the
 * container has removed it; close its connection, which ends the plug. */
static void plug_closed(mdi_multi *m, mdi_plug *plug, void *arg) {
    dplug *p = (dplug *)((char *)plug - offsetof(dplug, plug));
    (void)m;
    (void)arg;
    p->closing = true;
    if (p->t) braid_transport_close(p->t, BRAID_SECONDS(2));
}

static void plug_forget(dplug *p) {
    app *a = p->a;
    mdi_multi *m = container_of_plug(a, p);
    if (m) mdi_multi_remove(m, &p->plug);
    a->plugs->pdata[p->index] = NULL;
    mdi_plug_clear(&p->plug);
    g_free(p);
}

static braid_result connect_failed(braid_result r, void *arg) {
    dplug *p = arg;
    char buf[200];
    braid_failure_format(r.failure, buf, sizeof buf);
    fprintf(stderr, "braid-mdi: %s: %s\n", p->plug.name, buf);
    braid_result_drop(r);
    plug_forget(p);
    return braid_result_ok(NULL);
}

/* ---- test mode ------------------------------------------------------------------------------------------ */
static bool root_center(GtkWidget *w, int *x, int *y) {
    if (!w || !gtk_widget_get_mapped(w)) return false;
    GtkWidget *top = gtk_widget_get_toplevel(w);
    int tx, ty, ox, oy;
    if (!gtk_widget_translate_coordinates(w, top, 0, 0, &tx, &ty)) return false;
    gdk_window_get_origin(gtk_widget_get_window(top), &ox, &oy);
    GtkAllocation al;
    gtk_widget_get_allocation(w, &al);
    *x = ox + tx + al.width / 2;
    *y = oy + ty + al.height / 2;
    return true;
}

static void print_state(app *a) {
    int windows = 0;
    for (guint i = 0; i < a->windows->plugs->len; i++) {
        GtkWindow *w = mdi_window_of(a->windows, a->windows->plugs->pdata[i]);
        if (w && gtk_widget_get_mapped(GTK_WIDGET(w))) windows++;
    }
    GString *order = g_string_new("");
    gint pages = gtk_notebook_get_n_pages(a->notebook);
    if (pages > 0) {
        for (gint i = 0; i < pages; i++) {      /* the notebook's own order */
            GtkWidget *page = gtk_notebook_get_nth_page(a->notebook, i);
            for (guint j = 0; j < a->tabs->plugs->len; j++) {
                mdi_plug *pl = a->tabs->plugs->pdata[j];
                if (pl->widget == page) g_string_append_printf(order, "%s%s", i ? "," : "", pl->name);
            }
        }
    } else {
        for (guint i = 0; i < a->windows->plugs->len; i++)
            g_string_append_printf(order, "%s%s", i ? "," : "", ((mdi_plug *)a->windows->plugs->pdata[i])->name);
    }
    printf("state windows=%d tabs=%d notebook=%s server_conns=%u client_conns=%d order=%s\n", windows, pages,
           gtk_widget_get_mapped(a->nb_window) ? "shown" : "hidden", a->sconns->len, a->client_conns,
           order->str);
    g_string_free(order, TRUE);
}

static void print_geometry(app *a) {
    int x, y;
    if (root_center(a->cycler->button, &x, &y)) printf("geom cycler %d %d\n", x, y);
    for (guint i = 0; i < a->tabs->plugs->len; i++)
        if (root_center(mdi_tab_close_button(a->tabs, a->tabs->plugs->pdata[i]), &x, &y))
            printf("geom close %u %d %d\n", i, x, y);
    printf("geom end\n");
}

static void modal_check(braid_timer *t, void *arg) {
    app *a = arg;
    if (a->modal_got >= a->modal_need) gtk_dialog_response(GTK_DIALOG(a->dialog), GTK_RESPONSE_OK);
    else braid_timer_start(t, BRAID_MSEC(10));
}

/* A modal dialog opened from a braid callback: gtk_dialog_run runs a nested
 * main loop, inside which braid must keep delivering the plugs' lines. */
static void modal_run(braid_timer *t, void *arg) {
    app *a = arg;
    (void)t;
    a->dialog = gtk_message_dialog_new(NULL, GTK_DIALOG_MODAL, GTK_MESSAGE_INFO, GTK_BUTTONS_OK,
                                       "A modal dialog: the plugs keep receiving.");
    a->modal_on = true;
    a->modal_got = 0;
    load_start(a, 200, 0, false);
    braid_timer_start(&a->modal_check, BRAID_MSEC(10));
    gtk_dialog_run(GTK_DIALOG(a->dialog));
    braid_timer_stop(&a->modal_check);
    load_stop_sending(a);
    a->loading = false;
    a->modal_on = false;
    gtk_widget_destroy(a->dialog);
    a->dialog = NULL;
    printf("modal received=%llu\n", (unsigned long long)a->modal_got);
    fflush(stdout);
}

/* "drawn": answered once every mapped top-level window has painted what it
 * shows now (its frame clock's after-paint) and the X server has processed
 * the drawing (gdk_display_sync) — so a screenshot taken after the answer
 * shows this state, without guessing how long GTK takes to draw. */
typedef struct drawn_wait {
    app *a;
    gulong id;
} drawn_wait;

static void drawn_one(app *a) {
    if (--a->drawn_pending > 0) return;
    gdk_display_sync(gdk_display_get_default());
    printf("drawn %d\n", a->drawn_count);
    fflush(stdout);
}

static void on_after_paint(GdkFrameClock *clock, gpointer data) {
    drawn_wait *w = data;
    app *a = w->a;
    g_signal_handler_disconnect(clock, w->id);
    g_free(w);
    drawn_one(a);
}

static void drawn_start(app *a) {
    GList *tops = gtk_window_list_toplevels();
    a->drawn_pending = 1;              /* held until every window is asked */
    a->drawn_count = 0;
    for (GList *l = tops; l; l = l->next) {
        GtkWidget *w = l->data;
        GdkFrameClock *c = gtk_widget_get_mapped(w) ? gtk_widget_get_frame_clock(w) : NULL;
        if (!c) continue;
        drawn_wait *dw = g_new0(drawn_wait, 1);
        dw->a = a;
        dw->id = g_signal_connect(c, "after-paint", G_CALLBACK(on_after_paint), dw);
        a->drawn_pending++;
        a->drawn_count++;
        gtk_widget_queue_draw(w);
        gdk_frame_clock_request_phase(c, GDK_FRAME_CLOCK_PHASE_PAINT);
    }
    g_list_free(tops);
    drawn_one(a);
}

static void command(app *a, char *line) {
    unsigned long long rate;
    double seconds;
    int idx;
    if (!*line) return;
    if (!strcmp(line, "state")) {
        print_state(a);
    } else if (!strcmp(line, "geometry")) {
        print_geometry(a);
    } else if (!strcmp(line, "drawn")) {
        drawn_start(a);
        return;                        /* answered when painted */
    } else if (sscanf(line, "close %d", &idx) == 1) {
        if (idx >= 0 && (guint)idx < a->tabs->plugs->len) {
            GtkWidget *b = mdi_tab_close_button(a->tabs, a->tabs->plugs->pdata[idx]);
            if (b) gtk_button_clicked(GTK_BUTTON(b));
        }
        printf("closed %d\n", idx);
    } else if (sscanf(line, "load %llu %lf", &rate, &seconds) == 2) {
        load_start(a, rate, seconds, true);
        return;                        /* answered when done */
    } else if (sscanf(line, "modal %llu", &rate) == 1) {
        a->modal_need = rate;
        braid_timer_start(&a->modal_timer, 0);
        return;
    } else if (!strcmp(line, "quit")) {
        quit(a);
        return;
    } else {
        printf("error unknown command: %s\n", line);
    }
    fflush(stdout);
}

static void on_stdin(braid_watch *w, unsigned ev, void *arg) {
    app *a = arg;
    (void)ev;
    ssize_t n = read(w->fd, a->in_buf + a->in_len, sizeof a->in_buf - 1 - a->in_len);
    if (n <= 0) {                      /* the test went away */
        braid_watch_close(w);
        a->in_open = false;
        quit(a);
        return;
    }
    a->in_len += (size_t)n;
    char *start = a->in_buf, *nl;
    while ((nl = memchr(start, '\n', a->in_len - (size_t)(start - a->in_buf)))) {
        *nl = 0;
        command(a, start);
        start = nl + 1;
    }
    a->in_len -= (size_t)(start - a->in_buf);
    memmove(a->in_buf, start, a->in_len);
    if (a->in_len == sizeof a->in_buf - 1) a->in_len = 0;   /* an over-long line: dropped */
}

/* ---- start and stop ------------------------------------------------------------------------------------ */
static braid_result listening(braid_result r, void *arg) {
    app *a = arg;
    a->listener = r.value;
    braid_address addr;
    char desc[96];
    braid_listener_address(a->listener, &addr);
    snprintf(desc, sizeof desc, "tcp:host=127.0.0.1:port=%d:timeout=5", braid_address_port(&addr));
    for (int i = 0; i < a->nplugs; i++) {
        dplug *p = g_new0(dplug, 1);
        p->a = a;
        p->index = i;
        char name[32];
        snprintf(name, sizeof name, "Plug #%d", i);
        mdi_plug_init(&p->plug, name, plug_widget(p, name), NULL);
        g_ptr_array_add(a->plugs, p);
        mdi_multi_add(a->windows, &p->plug, -1);
        braid_factory_init(&p->factory, &client_ops, sizeof(cproto), p);
        braid_deferred_then(braid_endpoint_connect(a->loop, desc, &p->factory), NULL, connect_failed, p);
    }
    braid_timer_start(&a->tick, BRAID_SECONDS(1));
    if (a->test) {
        printf("ready\n");
        fflush(stdout);
    }
    return r;
}

static braid_result listen_failed(braid_result r, void *arg) {
    app *a = arg;
    char buf[200];
    braid_failure_format(r.failure, buf, sizeof buf);
    fprintf(stderr, "braid-mdi: %s\n", buf);
    braid_result_drop(r);
    a->status = 1;
    quit(a);
    return braid_result_ok(NULL);
}

/* Test mode: fixed places, as no window manager places windows there. */
static void place_window(GtkWindow *w, unsigned index, void *arg) {
    (void)arg;
    gtk_window_move(w, 220 + (int)(index % 3) * 330, 10 + (int)(index / 3) * 260);
}

static void cycler_destroyed(GtkWidget *w, gpointer arg) {
    app *a = arg;
    (void)w;
    a->cycler->window = NULL;
    quit(a);
}

/* Close everything and let braid finish the closes; the leak gate decides. */
static int shutdown_all(app *a) {
    braid_glib_source_free(a->src);
    braid_glib_context_free(a->gc);
    braid_timer_stop(&a->tick);
    braid_timer_stop(&a->load_timer);
    braid_timer_stop(&a->modal_timer);
    braid_timer_stop(&a->modal_check);
    if (a->probe) g_source_remove(a->probe);
    if (a->in_open) braid_watch_close(&a->in_watch);
    if (a->listener) braid_listener_close(a->listener);
    for (guint i = 0; i < a->plugs->len; i++) {
        dplug *p = a->plugs->pdata[i];
        if (p && p->t) braid_transport_close(p->t, BRAID_SECONDS(2));
    }
    for (guint i = 0; i < a->sconns->len; i++)
        braid_transport_close(((sconn *)a->sconns->pdata[i])->fp.base.transport, BRAID_SECONDS(2));
    int rc = braid_loop_run(a->loop);      /* braid alone: the closes complete */
    mdi_cycler_free(a->cycler);
    mdi_multi_free(a->windows);
    mdi_multi_free(a->tabs);
    if (a->nb_window) gtk_widget_destroy(a->nb_window);
    g_ptr_array_unref(a->plugs);
    g_ptr_array_unref(a->sconns);
    g_array_unref(a->lateness_us);
    if (braid_loop_free(a->loop) < 0) return 2;
    return rc < 0 ? 1 : a->status;
}

int main(int argc, char **argv) {
    app a = { .nplugs = 4 };
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--test")) a.test = true;
        else if (!strcmp(argv[i], "--plugs") && i + 1 < argc) a.nplugs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--loop") && i + 1 < argc) a.braid_main = !strcmp(argv[++i], "braid");
        else {
            fprintf(stderr, "usage: braid-mdi [--plugs N] [--loop glib|braid] [--test]\n");
            return 2;
        }
    }
    if (a.nplugs < 1 || a.nplugs > 64) a.nplugs = 4;
    if (!gtk_init_check(&argc, &argv)) {
        fprintf(stderr, "braid-mdi: cannot open a display (is DISPLAY set?)\n");
        return 77;
    }
    if (braid_loop_new(NULL, &a.loop) < 0) return 1;
    int rc = a.braid_main ? braid_glib_context_new(a.loop, NULL, NULL, &a.gc)
                          : braid_glib_source_new(a.loop, NULL, NULL, &a.src);
    if (rc < 0) {
        fprintf(stderr, "braid-mdi: %s\n", braid_strerror(rc));
        return 1;
    }
    a.sconns = g_ptr_array_new();
    a.plugs = g_ptr_array_new();
    a.lateness_us = g_array_new(FALSE, FALSE, sizeof(gint64));
    braid_timer_init(a.loop, &a.tick, on_tick, &a);
    braid_timer_init(a.loop, &a.load_timer, on_load_timer, &a);
    braid_timer_init(a.loop, &a.modal_timer, modal_run, &a);
    braid_timer_init(a.loop, &a.modal_check, modal_check, &a);

    /* The seed's test(): a MultiWindow, a notebook in its window, a Cycler. */
    a.windows = mdi_window_new("MDI Demo: ");
    a.nb_window = gtk_window_new(GTK_WINDOW_TOPLEVEL);
    gtk_window_set_title(GTK_WINDOW(a.nb_window), "MDI Notebook");
    gtk_window_set_default_size(GTK_WINDOW(a.nb_window), 760, 300);
    a.notebook = GTK_NOTEBOOK(gtk_notebook_new());
    gtk_notebook_set_scrollable(a.notebook, TRUE);
    gtk_container_add(GTK_CONTAINER(a.nb_window), GTK_WIDGET(a.notebook));
    g_signal_connect(a.nb_window, "delete-event", G_CALLBACK(gtk_widget_hide_on_delete), NULL);
    a.tabs = mdi_tab_new(a.notebook, GTK_WINDOW(a.nb_window));
    a.windows->on_close = a.tabs->on_close = plug_closed;
    a.windows->on_close_arg = a.tabs->on_close_arg = &a;
    a.cycler = mdi_cycler_new(a.windows, a.tabs);
    g_signal_connect(a.cycler->window, "destroy", G_CALLBACK(cycler_destroyed), &a);
    if (a.test) {
        mdi_window_set_placement(a.windows, place_window, &a);
        gtk_window_move(GTK_WINDOW(a.cycler->window), 0, 0);
        gtk_window_move(GTK_WINDOW(a.nb_window), 220, 540);
    }
    gtk_widget_show_all(a.cycler->window);

    braid_factory_init(&a.server_f, &server_ops, sizeof(sconn), &a);
    braid_deferred_then(braid_endpoint_listen(a.loop, "tcp:0:interface=127.0.0.1", &a.server_f),
                        listening, listen_failed, &a);
    if (a.test && braid_watch_init(a.loop, &a.in_watch, 0, on_stdin, &a) == 0) {
        a.in_open = true;
        braid_watch_set_interest(&a.in_watch, BRAID_WATCH_READ);
    }

    if (a.braid_main) braid_loop_run(a.loop);   /* braid owns the thread, GTK runs inside */
    else gtk_main();                             /* GTK owns the thread, braid runs inside */
    return shutdown_all(&a);
}
