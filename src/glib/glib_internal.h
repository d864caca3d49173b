/* Internals of libbraid-glib shared by source.c (braid inside GLib) and
 * context.c (GLib inside braid). Built on braid's public headers only. */
#ifndef BRAID_GLIB_INTERNAL_H
#define BRAID_GLIB_INTERNAL_H

#include <braid/glib.h>

/* A braid_glib_source working for a braid_glib_context: the driver iterates
 * the GMainContext itself, so the source stays idle (no fd interest, no
 * timeout, never ready) while is_passive(ctx) says the driver is the one
 * iterating. When someone else iterates the context (a nested main loop:
 * gtk_dialog_run from a callback), the source comes alive and runs braid from
 * GLib's side; went_active(ctx) is called on each such transition. */
typedef struct braid__glib_helper {
    bool (*is_passive)(void *ctx);
    void (*went_active)(void *ctx);
    void *ctx;
} braid__glib_helper;

int braid__glib_source_new_helper(braid_loop *loop, GMainContext *context,
                                  const braid__glib_helper *helper, braid_glib_source **out);
/* Dispatches of this source on the stack (a braid iteration run from GLib). */
unsigned braid__glib_source_depth(const braid_glib_source *s);

#endif
