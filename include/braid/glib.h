/* braid/glib.h — braid and GLib's main loop in one thread, either one driving.
 *
 * A library of its own (libbraid-glib, pkg-config braid-glib), built when
 * GLib 2 is installed. Two directions; use one per braid loop.
 *
 * braid inside GLib — GLib owns the thread (gtk_main, g_main_loop_run,
 * GApplication). A braid_glib_source is a GSource on a GMainContext that
 * waits for braid's work (the backend fd; on the select and poll backends,
 * the fds braid's watchers want) and for braid's next timer (a timerfd on
 * Linux, to the nanosecond; elsewhere the timeout rounded up to the next
 * millisecond, never early), and runs exactly one non-blocking braid
 * iteration per dispatch. Twisted's gtk reactors work this way.
 *
 *     braid_loop *loop;
 *     braid_loop_new(NULL, &loop);
 *     braid_glib_source *src;
 *     braid_glib_source_new(loop, NULL, NULL, &src);    // NULL: GLib's default context
 *     ...                                               // braid connections, GTK windows
 *     gtk_main();                                       // runs both, until gtk_main_quit()
 *     braid_glib_source_free(src);
 *     braid_loop_free(loop);                         // the leak gate
 *
 * GLib inside braid — braid owns the thread (braid_loop_run). A
 * braid_glib_context drives a GMainContext: its fds become braid watchers,
 * its next timeout a braid timer, and before each braid wait (a prepare hook,
 * braid_prepare_start) it runs GLib's check, dispatch, prepare and query, as
 * g_main_context_iteration would. The context is acquired for the thread
 * until braid_glib_context_free.
 *
 *     braid_glib_context *gc;
 *     braid_glib_context_new(loop, NULL, NULL, &gc);
 *     braid_loop_run(loop);                             // GLib sources run too
 *     braid_glib_context_free(gc);
 *
 * Nested main loops (gtk_dialog_run, g_main_loop_run inside a callback) keep
 * both sides running in either direction: the braid source may recurse
 * (g_source_set_can_recurse), and a braid iteration may run inside a braid
 * callback (see <braid/loop.h>). A braid_glib_context watches braid's fds
 * from GLib's side while someone else iterates its GMainContext.
 *
 * Threads: every function here is loop-affine (the braid loop's thread, which
 * is also the thread iterating the GMainContext). braid callbacks run on that
 * thread, inside the GSource's dispatch or inside braid_loop_run.
 * braid_loop_stop on a loop a braid_glib_source drives calls the source's
 * on_stop option (e.g. to quit the GLib loop): there is no braid_loop_run to
 * return from.
 */
#ifndef BRAID_GLIB_H
#define BRAID_GLIB_H

#include <braid/loop.h>
#include <glib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- braid inside GLib ---------------------------------------------------------- */
typedef struct braid_glib_source braid_glib_source;

typedef struct braid_glib_source_options {
    /* GLib priority of braid's dispatch. 0 is G_PRIORITY_DEFAULT, where GLib's
     * own I/O and timeouts run; GTK redraws at G_PRIORITY_HIGH_IDLE + 20 run
     * whenever no source of a higher priority is ready. */
    int priority;
    /* braid_loop_stop on a loop this source drives: there is no
     * braid_loop_run to return from, so after the iteration in which the stop
     * was asked the source takes the request (braid_loop_take_stop) and calls
     * on_stop(loop, stop_arg) — typically g_main_loop_quit or
     * g_application_quit. NULL: the request is dropped, with one warning in
     * the loop's log. Either way GLib does not spin on it. */
    void (*on_stop)(braid_loop *loop, void *stop_arg);
    void *stop_arg;
} braid_glib_source_options;

/* Attach a braid source for loop to context (NULL: g_main_context_default()).
 * opts may be NULL. Works on every braid backend. The source is a handle on
 * the loop: braid_loop_free refuses (BRAID_EBUSY) while it exists.
 * *out is yours to free with braid_glib_source_free. BRAID_ENOMEM, or a
 * negative errno if the timerfd cannot be made. */
BRAID_API int braid_glib_source_new(braid_loop *loop, GMainContext *context,
                                    const braid_glib_source_options *opts,
                                    braid_glib_source **out);
/* Detach and free. NULL is a no-op. Safe from inside a braid callback that the
 * source dispatched (the memory goes when that dispatch returns). */
BRAID_API void braid_glib_source_free(braid_glib_source *s);
/* The GSource itself (borrowed, valid until braid_glib_source_free): to
 * inspect it, or to block it with g_source_set_priority etc. Do not destroy
 * it yourself. */
BRAID_API GSource *braid_glib_source_gsource(braid_glib_source *s);

/* ---- GLib inside braid ---------------------------------------------------------- */
typedef struct braid_glib_context braid_glib_context;

typedef struct braid_glib_context_options {
    /* GLib's fds and timeout keep braid_loop_run going by default (a GTK
     * program then runs until braid_loop_stop); true makes them count for
     * nothing, like braid_watch_unref. */
    bool unref;
} braid_glib_context_options;

/* Drive context (NULL: g_main_context_default()) from loop. Acquires the
 * context for the calling thread (BRAID_EBUSY if another thread owns it).
 * A handle on the loop until braid_glib_context_free. *out is yours to free. */
BRAID_API int braid_glib_context_new(braid_loop *loop, GMainContext *context,
                                     const braid_glib_context_options *opts,
                                     braid_glib_context **out);
/* Stop driving, release the context, free. NULL is a no-op. Safe from inside
 * a GLib callback that this driver dispatched. GLib sources are not touched:
 * they stay attached to the context. */
BRAID_API void braid_glib_context_free(braid_glib_context *gc);

#ifdef __cplusplus
}
#endif
#endif
