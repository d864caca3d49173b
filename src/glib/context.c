/* GLib inside braid: a GMainContext driven by a braid loop (see
 * <braid/glib.h>). The AOS pattern (frc971's glib_main_loop), split over one
 * braid iteration:
 *
 *   prepare   in a prepare hook, before braid computes its wait:
 *             g_main_context_prepare + query give the fds GLib wants and its
 *             timeout; they are diffed into braid watchers (add, drop, change
 *             interest) and one braid timer is armed for the timeout (0 if a
 *             source is ready now);
 *   wait      braid's poll, on every backend;
 *   check     a GLib fd reported ready re-arms that timer to 0, so in the
 *             timer phase of the same iteration, after all I/O callbacks,
 *             the timer hands GLib the readiness braid saw
 *             (g_main_context_check) and dispatches what is ready.
 *
 * GLib's prepare thus runs after every braid callback of the previous
 * iteration: a source attached or a widget changed from a braid callback is
 * seen before braid sleeps (GLib wakes nothing for a source attached by the
 * thread that owns the context). And GLib's callbacks run inside the braid
 * iteration that saw their fds, so braid_loop_run_once returns after them.
 *
 * Nested main loops. When someone else iterates the context (gtk_dialog_run
 * from a GLib or braid callback runs g_main_loop_run inside it), GLib polls
 * by itself and braid would stall. A helper braid_glib_source on the same
 * context stays parked while this driver iterates and comes alive otherwise:
 * then GLib polls braid's fds and runs braid iterations from inside the
 * nested loop. Meanwhile this driver's own watchers are muted (GLib polls its
 * fds itself) and its pending check is dropped, since the nested loop has
 * consumed what the watchers saw; the next prepare starts afresh. */
#include "glib_internal.h"

#include <braid/time.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

typedef struct bg_watch {
    braid_watch w;
    struct braid_glib_context *gc;
    int fd;
    int wfd;                /* the fd braid watches: a duplicate of fd */
    unsigned mask;          /* braid interest wanted this round */
    unsigned seen;          /* readiness braid reported since the last prepare */
    bool wanted;
} bg_watch;

struct braid_glib_context {
    braid_loop *loop;
    GMainContext *context;  /* a reference, acquired */
    braid_handle handle;
    braid_prepare hook;
    braid_timer timer;
    bool unref;
    GPollFD *fds;
    gint nfds, cap_fds;
    gint max_priority;
    bool prepared;          /* prepare + query done, check pending */
    bool check_due;         /* the timer is armed to check now */
    bool in_cycle;          /* inside our own prepare/query/check */
    bool foreign;           /* the context was iterated by someone else since */
    unsigned depth;         /* our dispatches on the stack */
    bool freed;
    bg_watch **byfd;        /* fd -> watcher */
    size_t nbyfd;
    braid_glib_source *helper;
};

/* ---- watchers ------------------------------------------------------------------------ */
static void on_ready(braid_watch *w, unsigned events, void *arg) {
    bg_watch *bw = arg;
    braid_glib_context *gc = bw->gc;
    (void)w;
    bw->seen |= events;
    if (!gc->check_due) {
        gc->check_due = true;
        braid_timer_start(&gc->timer, 0);   /* check in this iteration's timer phase */
    }
}

static bg_watch *watch_get(braid_glib_context *gc, int fd) {
    if ((size_t)fd >= gc->nbyfd) {
        size_t n = gc->nbyfd ? gc->nbyfd : 64;
        while (n <= (size_t)fd) n *= 2;
        bg_watch **p = realloc(gc->byfd, n * sizeof *p);
        if (!p) return NULL;
        memset(p + gc->nbyfd, 0, (n - gc->nbyfd) * sizeof *p);
        gc->byfd = p;
        gc->nbyfd = n;
    }
    if (gc->byfd[fd]) return gc->byfd[fd];
    bg_watch *bw = calloc(1, sizeof *bw);
    if (!bw) return NULL;
    bw->gc = gc;
    bw->fd = fd;
    /* braid watches a duplicate of GLib's fd, never the fd itself: a loop has
     * one watcher per fd, and a program may hand one descriptor to both loops
     * (a socket with a braid transport and a GIOChannel); with the duplicate,
     * neither side's watcher refuses the other's (BRAID_EEXIST). Same open
     * file, so the readiness is the same. */
    bw->wfd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    int rc = bw->wfd < 0 ? -errno : braid_watch_init(gc->loop, &bw->w, bw->wfd, on_ready, bw);
    if (rc < 0 && bw->wfd >= 0) close(bw->wfd);
    if (rc < 0) {
        /* GLib's source on it will not wake (out of descriptors or memory). */
        braid_loop_log(gc->loop, BRAID_LOG_WARN, "braid_glib_context: cannot watch GLib's fd %d: %s", fd,
                  braid_strerror(rc));
        free(bw);
        return NULL;
    }
    if (gc->unref) braid_watch_unref(&bw->w);
    gc->byfd[fd] = bw;
    return bw;
}

static void watch_drop(braid_glib_context *gc, bg_watch *bw) {
    gc->byfd[bw->fd] = NULL;
    braid_watch_close(&bw->w);
    close(bw->wfd);   /* our duplicate */
    free(bw);
}

static unsigned from_gio(gushort events) {
    return ((events & (G_IO_IN | G_IO_PRI)) ? BRAID_WATCH_READ : 0u) | ((events & G_IO_OUT) ? BRAID_WATCH_WRITE : 0u);
}

static gushort to_gio(unsigned seen, gushort wanted) {
    gushort r = 0;
    if (seen & BRAID_WATCH_READ) r |= wanted & (G_IO_IN | G_IO_PRI);
    if (seen & BRAID_WATCH_WRITE) r |= wanted & G_IO_OUT;
    if (seen & BRAID_WATCH_ERROR) r |= G_IO_ERR;
    if (seen & BRAID_WATCH_HUP) r |= G_IO_HUP;
    return r;
}

/* Make braid's watchers match GLib's poll set. An fd with no interest (a
 * parked helper's) is not watched; one fd in several GPollFDs gets the union. */
static void watch_sync(braid_glib_context *gc) {
    for (gint i = 0; i < gc->nfds; i++) {
        unsigned m = from_gio(gc->fds[i].events);
        if (!m || gc->fds[i].fd < 0) continue;
        bg_watch *bw = watch_get(gc, gc->fds[i].fd);
        if (!bw) continue;
        if (!bw->wanted) bw->mask = 0;
        bw->wanted = true;
        bw->mask |= m;
    }
    for (size_t fd = 0; fd < gc->nbyfd; fd++) {
        bg_watch *bw = gc->byfd[fd];
        if (!bw) continue;
        if (!bw->wanted) {
            watch_drop(gc, bw);
            continue;
        }
        bw->wanted = false;
        bw->seen = 0;
        braid_watch_set_interest(&bw->w, bw->mask);
    }
}

static void watch_mute_all(braid_glib_context *gc) {
    for (size_t fd = 0; fd < gc->nbyfd; fd++)
        if (gc->byfd[fd]) braid_watch_set_interest(&gc->byfd[fd]->w, 0);
    braid_timer_stop(&gc->timer);
}

/* ---- the cycle -------------------------------------------------------------------------- */
static void destroy_now(braid_glib_context *gc);

static bool busy(const braid_glib_context *gc) {
    /* Inside our own GLib calls, or GLib is being iterated by someone else
     * with braid running inside it (the helper's dispatch). */
    return gc->in_cycle || gc->depth || braid__glib_source_depth(gc->helper);
}

/* The timer: GLib's timeout passed or one of its fds is ready. */
static void on_timer(braid_timer *t, void *arg) {
    braid_glib_context *gc = arg;
    (void)t;
    gc->check_due = false;
    if (busy(gc) || !gc->prepared) return;
    gc->prepared = false;
    if (gc->foreign) return;   /* a nested loop consumed it; the next prepare starts afresh */
    for (gint i = 0; i < gc->nfds; i++) {
        GPollFD *p = &gc->fds[i];
        bg_watch *bw = p->fd >= 0 && (size_t)p->fd < gc->nbyfd ? gc->byfd[p->fd] : NULL;
        p->revents = bw ? to_gio(bw->seen, p->events) : 0;
    }
    gc->in_cycle = true;
    gboolean ready = g_main_context_check(gc->context, gc->max_priority, gc->fds, gc->nfds);
    gc->in_cycle = false;
    if (!ready) return;
    gc->depth++;
    g_main_context_dispatch(gc->context);
    gc->depth--;
    if (gc->freed && gc->depth == 0) destroy_now(gc);
}

/* The prepare hook, before every braid wait. */
static void hook(braid_prepare *p, void *arg) {
    braid_glib_context *gc = arg;
    (void)p;
    if (busy(gc)) return;
    gint timeout = -1;
    gc->foreign = false;
    gc->in_cycle = true;
    gboolean ready = g_main_context_prepare(gc->context, &gc->max_priority);
    gint n;
    while ((n = g_main_context_query(gc->context, gc->max_priority, &timeout, gc->fds, gc->cap_fds)) >
           gc->cap_fds) {
        gint cap = gc->cap_fds ? gc->cap_fds * 2 : 16;
        while (cap < n) cap *= 2;
        GPollFD *fds = realloc(gc->fds, (size_t)cap * sizeof *fds);
        if (!fds) {
            n = gc->cap_fds;   /* out of memory: watch what fits */
            break;
        }
        gc->fds = fds;
        gc->cap_fds = cap;
    }
    gc->in_cycle = false;
    gc->nfds = n;
    gc->prepared = true;
    watch_sync(gc);
    if (ready) timeout = 0;
    gc->check_due = timeout == 0;
    if (timeout < 0) braid_timer_stop(&gc->timer);
    else braid_timer_start(&gc->timer, (uint64_t)timeout * 1000000ull);
}

/* ---- the helper for nested loops -------------------------------------------------------- */
static bool helper_is_passive(void *ctx) {
    braid_glib_context *gc = ctx;
    if (gc->in_cycle) return true;
    gc->foreign = true;   /* someone else is iterating the context */
    return false;
}

static void helper_went_active(void *ctx) { watch_mute_all(ctx); }

/* ---- creation and teardown -------------------------------------------------------------- */
int braid_glib_context_new(braid_loop *loop, GMainContext *context,
                           const braid_glib_context_options *opts, braid_glib_context **out) {
    if (!loop || !out) return BRAID_EINVAL;
    GMainContext *ctx = context ? context : g_main_context_default();
    if (!g_main_context_acquire(ctx)) return BRAID_EBUSY;
    braid_glib_context *gc = calloc(1, sizeof *gc);
    if (!gc) {
        g_main_context_release(ctx);
        return BRAID_ENOMEM;
    }
    gc->loop = loop;
    gc->context = g_main_context_ref(ctx);
    gc->unref = opts && opts->unref;
    braid__glib_helper h = { helper_is_passive, helper_went_active, gc };
    int rc = braid__glib_source_new_helper(loop, ctx, &h, &gc->helper);
    if (rc < 0) {
        g_main_context_unref(ctx);
        g_main_context_release(ctx);
        free(gc);
        return rc;
    }
    braid_timer_init(loop, &gc->timer, on_timer, gc);
    if (gc->unref) braid_timer_unref(&gc->timer);
    braid_prepare_start(loop, &gc->hook, hook, gc);
    braid_handle_open(loop, &gc->handle, "glib-context");
    *out = gc;
    return 0;
}

static void destroy_now(braid_glib_context *gc) {
    g_main_context_release(gc->context);
    g_main_context_unref(gc->context);
    free(gc->fds);
    free(gc->byfd);
    free(gc);
}

void braid_glib_context_free(braid_glib_context *gc) {
    if (!gc || gc->freed) return;
    gc->freed = true;
    braid_prepare_stop(&gc->hook);
    braid_timer_stop(&gc->timer);
    for (size_t fd = 0; fd < gc->nbyfd; fd++)
        if (gc->byfd[fd]) watch_drop(gc, gc->byfd[fd]);
    braid_glib_source_free(gc->helper);
    gc->helper = NULL;
    braid_handle_close(gc->loop, &gc->handle);
    if (gc->depth == 0) destroy_now(gc);
}
