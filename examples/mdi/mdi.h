/* mdi.h — documents ("plugs") that live in separate windows or as the tabs of
 * one notebook, and a button that moves every plug from one to the other.
 *
 * The interfaces of "every program does this, here is how" (glyph, 2005), in
 * C and GTK 3: IPlug (a widget, a name, an icon) is mdi_plug; IMultiPlug
 * (addPlug, removePlug, iterPlugs) is mdi_multi with two implementations,
 * MultiWindow (mdi_window_new: a top-level window per plug) and MultiTab
 * (mdi_tab_new: one notebook whose tab labels carry the icon, the name and a
 * close button; an empty notebook hides its window); Cycler is mdi_cycler.
 *
 *     mdi_multi *windows = mdi_window_new("MDI Demo: ");
 *     mdi_multi *tabs = mdi_tab_new(notebook, notebook_window);
 *     mdi_multi_add(windows, plug, -1);                 // at the end
 *     mdi_cycler *c = mdi_cycler_new(windows, tabs);    // the "cycle MDI" button
 *
 * One difference from the original: its addPlug inserts at position 0 by
 * default, so each cycle reversed the order of the plugs; the cycler here
 * appends, so the order is kept across cycles.
 *
 * Ownership: a plug's widget and icon are references the plug holds (the
 * widget survives moving between containers); a container never frees a plug.
 * When the user closes a plug (its window, or its tab's close button) the
 * container removes it and then calls on_close, whose job is to end the plug
 * (here: close its connection). GTK main thread only. */
#ifndef BRAID_EXAMPLE_MDI_H
#define BRAID_EXAMPLE_MDI_H

#include <gtk/gtk.h>
#include <stdbool.h>

typedef struct mdi_plug {
    GtkWidget *widget;        /* a reference (g_object_ref_sink) */
    char *name;
    GdkPixbuf *icon;          /* 64x64, a reference */
} mdi_plug;

/* Fill plug (caller storage): takes a reference to widget and icon (icon NULL:
 * a theme icon chosen by name). mdi_plug_clear drops them. */
void mdi_plug_init(mdi_plug *plug, const char *name, GtkWidget *widget, GdkPixbuf *icon);
void mdi_plug_clear(mdi_plug *plug);

typedef struct mdi_multi mdi_multi;
typedef void (*mdi_close_cb)(mdi_multi *m, mdi_plug *plug, void *arg);

typedef struct mdi_multi_ops {
    /* position: 0 first, -1 (or past the end) last */
    void (*add_plug)(mdi_multi *m, mdi_plug *plug, int position);
    void (*remove_plug)(mdi_multi *m, mdi_plug *plug);
    void (*free)(mdi_multi *m);
} mdi_multi_ops;

struct mdi_multi {
    const mdi_multi_ops *ops;
    GPtrArray *plugs;         /* mdi_plug *, in order; borrowed */
    mdi_close_cb on_close;    /* the user closed a plug (already removed) */
    void *on_close_arg;
};

static inline void mdi_multi_add(mdi_multi *m, mdi_plug *p, int position) { m->ops->add_plug(m, p, position); }
static inline void mdi_multi_remove(mdi_multi *m, mdi_plug *p) { m->ops->remove_plug(m, p); }
static inline void mdi_multi_free(mdi_multi *m) { if (m) m->ops->free(m); }
/* iterPlugs: a copy of the plug list (g_ptr_array_unref it), safe to walk
 * while plugs are removed. */
GPtrArray *mdi_multi_plugs(mdi_multi *m);
bool mdi_multi_has(mdi_multi *m, mdi_plug *p);

/* MultiWindow: a window titled prefix + name per plug, with the plug's icon. */
mdi_multi *mdi_window_new(const char *prefix);
/* Where a new plug window goes (before it is shown): without a window
 * manager (a test's virtual display) nobody else places windows. index is
 * the plug's position in the container. */
typedef void (*mdi_place_cb)(GtkWindow *window, unsigned index, void *arg);
void mdi_window_set_placement(mdi_multi *m, mdi_place_cb place, void *arg);
/* The window holding plug, or NULL. */
GtkWindow *mdi_window_of(mdi_multi *m, mdi_plug *plug);

/* MultiTab: pages of notebook, inside window (hidden while empty). Borrowed. */
mdi_multi *mdi_tab_new(GtkNotebook *notebook, GtkWindow *window);
/* The close button on plug's tab, or NULL. */
GtkWidget *mdi_tab_close_button(mdi_multi *m, mdi_plug *plug);

/* Cycler: a window titled "Cycler" with a 200x200 "cycle MDI" button moving
 * every plug of one container to the other, then swapping the two. */
typedef struct mdi_cycler {
    mdi_multi *from, *to;
    GtkWidget *window, *button;
} mdi_cycler;
mdi_cycler *mdi_cycler_new(mdi_multi *from, mdi_multi *to);
void mdi_cycler_cycle(mdi_cycler *c);   /* what the button does */
void mdi_cycler_free(mdi_cycler *c);

#endif
