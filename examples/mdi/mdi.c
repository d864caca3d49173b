/* The MDI module: plugs, MultiWindow, MultiTab and the Cycler (see mdi.h). */
#include "mdi.h"

#include <string.h>

/* ---- plugs ------------------------------------------------------------------------------ */
static GdkPixbuf *theme_icon(const char *name) {
    /* A few names every freedesktop theme has, picked by the name's hash so
     * each plug keeps its icon; a drawn square if the theme has none. */
    static const char *const names[] = { "network-server", "mail-send", "media-playback-start",
                                         "weather-clear", "face-smile", "user-home" };
    guint h = g_str_hash(name);
    GtkIconTheme *theme = gtk_icon_theme_get_default();
    for (size_t i = 0; i < G_N_ELEMENTS(names); i++) {
        const char *n = names[(h + i) % G_N_ELEMENTS(names)];
        GdkPixbuf *p = gtk_icon_theme_load_icon(theme, n, 64, GTK_ICON_LOOKUP_FORCE_SIZE, NULL);
        if (p) return p;
    }
    GdkPixbuf *p = gdk_pixbuf_new(GDK_COLORSPACE_RGB, FALSE, 8, 64, 64);
    gdk_pixbuf_fill(p, 0x3465a4ffu ^ (h & 0x00ffff00u));
    return p;
}

void mdi_plug_init(mdi_plug *plug, const char *name, GtkWidget *widget, GdkPixbuf *icon) {
    plug->name = g_strdup(name);
    plug->widget = g_object_ref_sink(widget);
    plug->icon = icon ? g_object_ref(icon) : theme_icon(name);
}

void mdi_plug_clear(mdi_plug *plug) {
    g_clear_object(&plug->widget);
    g_clear_object(&plug->icon);
    g_clear_pointer(&plug->name, g_free);
}

GPtrArray *mdi_multi_plugs(mdi_multi *m) {
    GPtrArray *copy = g_ptr_array_sized_new(m->plugs->len);
    for (guint i = 0; i < m->plugs->len; i++) g_ptr_array_add(copy, m->plugs->pdata[i]);
    return copy;
}

bool mdi_multi_has(mdi_multi *m, mdi_plug *p) {
    guint i;
    return g_ptr_array_find(m->plugs, p, &i);
}

static guint insert_at(mdi_multi *m, mdi_plug *plug, int position) {
    guint at = position < 0 || (guint)position > m->plugs->len ? m->plugs->len : (guint)position;
    g_ptr_array_insert(m->plugs, (gint)at, plug);
    return at;
}

static void user_closed(mdi_multi *m, mdi_plug *plug) {
    mdi_multi_remove(m, plug);
    if (m->on_close) m->on_close(m, plug, m->on_close_arg);
}

/* ---- MultiWindow ----------------------------------------------------------------------------- */
typedef struct multi_window {
    mdi_multi base;
    char *prefix;
    GHashTable *windows;      /* mdi_plug * -> GtkWindow * */
    mdi_place_cb place;
    void *place_arg;
} multi_window;

typedef struct close_ctx { mdi_multi *m; mdi_plug *plug; } close_ctx;

static void close_ctx_free(gpointer data, GClosure *closure) {
    (void)closure;
    g_free(data);
}

static gboolean window_delete(GtkWidget *w, GdkEvent *ev, gpointer arg) {
    close_ctx *c = arg;
    (void)w;
    (void)ev;
    user_closed(c->m, c->plug);
    return TRUE;              /* removePlug destroyed the window already */
}

static void window_add(mdi_multi *m, mdi_plug *plug, int position) {
    multi_window *mw = (multi_window *)m;
    GtkWidget *win = gtk_window_new(GTK_WINDOW_TOPLEVEL);
    char *title = g_strconcat(mw->prefix, plug->name, NULL);
    gtk_window_set_title(GTK_WINDOW(win), title);
    g_free(title);
    gtk_window_set_icon(GTK_WINDOW(win), plug->icon);
    gtk_container_add(GTK_CONTAINER(win), plug->widget);
    close_ctx *c = g_new(close_ctx, 1);
    *c = (close_ctx){ m, plug };
    g_signal_connect_data(win, "delete-event", G_CALLBACK(window_delete), c, close_ctx_free, 0);
    g_hash_table_insert(mw->windows, plug, win);
    guint at = insert_at(m, plug, position);
    if (mw->place) mw->place(GTK_WINDOW(win), at, mw->place_arg);
    gtk_widget_show_all(win);
}

static void window_remove(mdi_multi *m, mdi_plug *plug) {
    multi_window *mw = (multi_window *)m;
    GtkWidget *win = g_hash_table_lookup(mw->windows, plug);
    if (!win) return;
    gtk_container_remove(GTK_CONTAINER(win), plug->widget);   /* our reference keeps it */
    gtk_widget_destroy(win);
    g_hash_table_remove(mw->windows, plug);
    g_ptr_array_remove(m->plugs, plug);
}

static void window_free(mdi_multi *m) {
    multi_window *mw = (multi_window *)m;
    GPtrArray *plugs = mdi_multi_plugs(m);
    for (guint i = 0; i < plugs->len; i++) window_remove(m, plugs->pdata[i]);
    g_ptr_array_unref(plugs);
    g_hash_table_unref(mw->windows);
    g_ptr_array_unref(m->plugs);
    g_free(mw->prefix);
    g_free(mw);
}

static const mdi_multi_ops window_ops = { window_add, window_remove, window_free };

mdi_multi *mdi_window_new(const char *prefix) {
    multi_window *mw = g_new0(multi_window, 1);
    mw->base.ops = &window_ops;
    mw->base.plugs = g_ptr_array_new();
    mw->prefix = g_strdup(prefix ? prefix : "");
    mw->windows = g_hash_table_new(NULL, NULL);
    return &mw->base;
}

void mdi_window_set_placement(mdi_multi *m, mdi_place_cb place, void *arg) {
    if (m->ops != &window_ops) return;
    ((multi_window *)m)->place = place;
    ((multi_window *)m)->place_arg = arg;
}

GtkWindow *mdi_window_of(mdi_multi *m, mdi_plug *plug) {
    if (m->ops != &window_ops) return NULL;
    return g_hash_table_lookup(((multi_window *)m)->windows, plug);
}

/* ---- MultiTab ------------------------------------------------------------------------------------ */
typedef struct multi_tab {
    mdi_multi base;
    GtkNotebook *notebook;
    GtkWindow *window;
    GHashTable *close_buttons;   /* mdi_plug * -> GtkButton * */
} multi_tab;

static void tab_close_clicked(GtkButton *b, gpointer arg) {
    close_ctx *c = arg;
    (void)b;
    user_closed(c->m, c->plug);
}

/* The seed's labelFactory: the icon at 16x16, the name, a flat close button. */
static GtkWidget *tab_label(multi_tab *mt, mdi_plug *plug) {
    GtkWidget *box = gtk_box_new(GTK_ORIENTATION_HORIZONTAL, 4);
    GdkPixbuf *small = gdk_pixbuf_scale_simple(plug->icon, 16, 16, GDK_INTERP_BILINEAR);
    GtkWidget *icon = gtk_image_new_from_pixbuf(small);
    g_object_unref(small);
    gtk_box_pack_start(GTK_BOX(box), icon, FALSE, FALSE, 2);
    gtk_box_pack_start(GTK_BOX(box), gtk_label_new(plug->name), TRUE, TRUE, 0);
    GtkWidget *close = gtk_button_new_from_icon_name("window-close-symbolic", GTK_ICON_SIZE_MENU);
    gtk_button_set_relief(GTK_BUTTON(close), GTK_RELIEF_NONE);
    gtk_widget_set_tooltip_text(close, "Close");
    close_ctx *c = g_new(close_ctx, 1);
    *c = (close_ctx){ &mt->base, plug };
    g_signal_connect_data(close, "clicked", G_CALLBACK(tab_close_clicked), c, close_ctx_free, 0);
    gtk_box_pack_start(GTK_BOX(box), close, FALSE, FALSE, 0);
    g_hash_table_insert(mt->close_buttons, plug, close);
    gtk_widget_show_all(box);
    return box;
}

static void tab_add(mdi_multi *m, mdi_plug *plug, int position) {
    multi_tab *mt = (multi_tab *)m;
    guint at = insert_at(m, plug, position);
    gtk_notebook_insert_page(mt->notebook, plug->widget, tab_label(mt, plug), (gint)at);
    gtk_widget_show_all(plug->widget);
    gtk_widget_show_all(GTK_WIDGET(mt->window));
}

static void tab_remove(mdi_multi *m, mdi_plug *plug) {
    multi_tab *mt = (multi_tab *)m;
    gint page = gtk_notebook_page_num(mt->notebook, plug->widget);
    if (page < 0) return;
    gtk_notebook_remove_page(mt->notebook, page);      /* our reference keeps the widget */
    g_hash_table_remove(mt->close_buttons, plug);
    g_ptr_array_remove(m->plugs, plug);
    if (m->plugs->len == 0) gtk_widget_hide(GTK_WIDGET(mt->window));   /* as in the seed */
}

static void tab_free(mdi_multi *m) {
    multi_tab *mt = (multi_tab *)m;
    GPtrArray *plugs = mdi_multi_plugs(m);
    for (guint i = 0; i < plugs->len; i++) tab_remove(m, plugs->pdata[i]);
    g_ptr_array_unref(plugs);
    g_hash_table_unref(mt->close_buttons);
    g_ptr_array_unref(m->plugs);
    g_free(mt);
}

static const mdi_multi_ops tab_ops = { tab_add, tab_remove, tab_free };

mdi_multi *mdi_tab_new(GtkNotebook *notebook, GtkWindow *window) {
    multi_tab *mt = g_new0(multi_tab, 1);
    mt->base.ops = &tab_ops;
    mt->base.plugs = g_ptr_array_new();
    mt->notebook = notebook;
    mt->window = window;
    mt->close_buttons = g_hash_table_new(NULL, NULL);
    return &mt->base;
}

GtkWidget *mdi_tab_close_button(mdi_multi *m, mdi_plug *plug) {
    if (m->ops != &tab_ops) return NULL;
    return g_hash_table_lookup(((multi_tab *)m)->close_buttons, plug);
}

/* ---- Cycler ---------------------------------------------------------------------------------------- */
void mdi_cycler_cycle(mdi_cycler *c) {
    GPtrArray *plugs = mdi_multi_plugs(c->from);
    for (guint i = 0; i < plugs->len; i++) {
        mdi_multi_remove(c->from, plugs->pdata[i]);
        mdi_multi_add(c->to, plugs->pdata[i], -1);      /* appended: the order is kept */
    }
    g_ptr_array_unref(plugs);
    mdi_multi *t = c->from;
    c->from = c->to;
    c->to = t;
}

static void cycle_clicked(GtkButton *b, gpointer arg) {
    (void)b;
    mdi_cycler_cycle(arg);
}

mdi_cycler *mdi_cycler_new(mdi_multi *from, mdi_multi *to) {
    mdi_cycler *c = g_new0(mdi_cycler, 1);
    c->from = from;
    c->to = to;
    c->window = gtk_window_new(GTK_WINDOW_TOPLEVEL);
    gtk_window_set_title(GTK_WINDOW(c->window), "Cycler");
    c->button = gtk_button_new_with_label("cycle MDI");
    gtk_widget_set_size_request(c->button, 200, 200);
    gtk_container_add(GTK_CONTAINER(c->window), c->button);
    g_signal_connect(c->button, "clicked", G_CALLBACK(cycle_clicked), c);
    return c;
}

void mdi_cycler_free(mdi_cycler *c) {
    if (!c) return;
    if (c->window) gtk_widget_destroy(c->window);
    g_free(c);
}
