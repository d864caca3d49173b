/* braid inside GLib: a GSource that runs one non-blocking braid iteration per
 * dispatch (see <braid/glib.h>).
 *
 * What GLib waits on for braid:
 *  - epoll, io_uring: the backend fd, readable whenever braid has work
 *    (braid_loop_next_timeout, called in every prepare, also submits
 *    io_uring's queued interest changes, without which the ring fd would not
 *    wake for them);
 *  - select, poll: no backend fd, so the fds braid's watchers want
 *    (braid_loop_watched_fds), mirrored into the GSource in each prepare: a
 *    merge of two fd-sorted lists, O(watched fds) like those backends' own
 *    waits;
 *  - braid's next timer: on Linux a timerfd armed at the absolute deadline,
 *    so a braid timer fires within microseconds of it although GLib polls in
 *    whole milliseconds; elsewhere the timeout handed to GLib, rounded up to
 *    the next millisecond (rounding down would wake early, find nothing due
 *    and spin until the deadline: the spin Twisted's gtk reactor had).
 *
 * Neither side spins: when braid has nothing to do, prepare reports no
 * timeout and no interest beyond braid's own fds, and GLib sleeps in poll.
 *
 * Recursion: the source may be dispatched again from inside its own dispatch
 * (g_source_set_can_recurse), so a modal dialog opened from a braid callback
 * keeps braid running; braid_loop_run_once is re-entrant for that. */
#include "glib_internal.h"

#include <braid/time.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/timerfd.h>
#endif

typedef struct bg_mirror {
    int fd;
    unsigned events;       /* braid's READ/WRITE */
    gpointer tag;
} bg_mirror;

typedef struct bg_gsource {
    GSource base;
    braid_glib_source *owner;
} bg_gsource;

struct braid_glib_source {
    bg_gsource *gs;
    braid_loop *loop;
    GMainContext *context;        /* a reference */
    braid_handle handle;
    int backend_fd;               /* or -1: mirror braid's watched fds */
    gpointer backend_tag;
    int timer_fd;                 /* or -1: millisecond timeouts */
    gpointer timer_tag;
    bool timer_armed;
    uint64_t timer_deadline;      /* CLOCK_MONOTONIC ns while armed */
    bg_mirror *mirror, *mirror_next;
    size_t nmirror, cap_mirror;
    braid_loop_fd *scratch;
    size_t cap_scratch;
    unsigned depth;               /* dispatches on the stack */
    bool freed;                   /* braid_glib_source_free ran during a dispatch */
    bool idle;                    /* helper: parked while its driver iterates */
    bool logged_failure;
    bool logged_stop;
    void (*on_stop)(braid_loop *, void *);
    void *stop_arg;
    braid__glib_helper helper;    /* all NULL for a plain source */
};

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static GIOCondition to_gio(unsigned events) {
    return (GIOCondition)(((events & BRAID_WATCH_READ) ? G_IO_IN : 0) | ((events & BRAID_WATCH_WRITE) ? G_IO_OUT : 0));
}

static bool is_passive(braid_glib_source *s) {
    return s->helper.is_passive && s->helper.is_passive(s->helper.ctx);
}

/* ---- the select/poll mirror -------------------------------------------------------- */
static bool mirror_reserve(braid_glib_source *s, size_t want) {
    if (want <= s->cap_mirror) return true;
    size_t n = s->cap_mirror ? s->cap_mirror * 2 : 16;
    while (n < want) n *= 2;
    bg_mirror *a = realloc(s->mirror, n * sizeof *a);
    if (!a) return false;
    s->mirror = a;
    bg_mirror *b = realloc(s->mirror_next, n * sizeof *b);
    if (!b) return false;
    s->mirror_next = b;
    s->cap_mirror = n;
    return true;
}

/* Make the GSource's fds the ones in want[0..n) (both lists sorted by fd). */
static void mirror_set(braid_glib_source *s, const braid_loop_fd *want, size_t n) {
    GSource *g = &s->gs->base;
    size_t i = 0, j = 0, k = 0;
    bg_mirror *next = s->mirror_next;
    while (i < s->nmirror || j < n) {
        if (j == n || (i < s->nmirror && s->mirror[i].fd < want[j].fd)) {
            g_source_remove_unix_fd(g, s->mirror[i].tag);             /* no longer wanted */
            i++;
        } else if (i == s->nmirror || want[j].fd < s->mirror[i].fd) {
            next[k].fd = want[j].fd;                                   /* new */
            next[k].events = want[j].events;
            next[k].tag = g_source_add_unix_fd(g, want[j].fd, to_gio(want[j].events));
            k++, j++;
        } else {
            next[k] = s->mirror[i];                                    /* kept */
            if (next[k].events != want[j].events) {
                next[k].events = want[j].events;
                g_source_modify_unix_fd(g, next[k].tag, to_gio(want[j].events));
            }
            k++, i++, j++;
        }
    }
    s->mirror_next = s->mirror;
    s->mirror = next;
    s->nmirror = k;
}

static void mirror_sync(braid_glib_source *s) {
    size_t n = braid_loop_watched_fds(s->loop, s->cap_scratch, s->scratch);
    if (n > s->cap_scratch) {
        size_t cap = s->cap_scratch ? s->cap_scratch : 16;
        while (cap < n) cap *= 2;
        braid_loop_fd *p = realloc(s->scratch, cap * sizeof *p);
        if (!p) return;   /* out of memory: keep the old set until next time */
        s->scratch = p;
        s->cap_scratch = cap;
        n = braid_loop_watched_fds(s->loop, s->cap_scratch, s->scratch);
    }
    if (!mirror_reserve(s, n)) return;
    mirror_set(s, s->scratch, n);
}

/* ---- the timer --------------------------------------------------------------------- */
static void timer_disarm(braid_glib_source *s) {
#ifdef __linux__
    if (s->timer_fd >= 0 && s->timer_armed) {
        struct itimerspec its = { 0 };
        timerfd_settime(s->timer_fd, 0, &its, NULL);
    }
#endif
    s->timer_armed = false;
}

/* braid's next deadline is t ns away: arrange for GLib to wake by then. */
static void timer_arm(braid_glib_source *s, uint64_t t, gint *timeout) {
#ifdef __linux__
    if (s->timer_fd >= 0) {
        uint64_t deadline = mono_ns() + t;
        /* Re-arm when the deadline moved earlier, or much later (a wasted
         * wake-up otherwise); a few ns of drift between calls is no move. */
        if (!s->timer_armed || deadline < s->timer_deadline ||
            deadline > s->timer_deadline + 1000000) {
            struct itimerspec its = { .it_value = { (time_t)(deadline / 1000000000ull),
                                                    (long)(deadline % 1000000000ull) } };
            if (timerfd_settime(s->timer_fd, TFD_TIMER_ABSTIME, &its, NULL) == 0) {
                s->timer_armed = true;
                s->timer_deadline = deadline;
            } else {
                s->timer_armed = false;
            }
        }
        if (s->timer_armed) {
            *timeout = -1;
            return;
        }
    }
#endif
    /* Round up: never wake before the deadline. */
    uint64_t ms = (t + 999999) / 1000000;
    *timeout = ms > G_MAXINT ? G_MAXINT : (gint)ms;
}

/* ---- GSource functions -------------------------------------------------------------- */
/* Park (helper while its driver iterates): no interest, no timer. The changes
 * are made on transitions only: each one wakes the context once. */
static void park(braid_glib_source *s) {
    if (s->idle) return;
    s->idle = true;
    if (s->backend_tag) g_source_modify_unix_fd(&s->gs->base, s->backend_tag, 0);
    if (s->nmirror) mirror_set(s, NULL, 0);
    timer_disarm(s);
    if (s->timer_tag) g_source_modify_unix_fd(&s->gs->base, s->timer_tag, 0);
}

static void unpark(braid_glib_source *s) {
    if (!s->idle) return;
    s->idle = false;
    if (s->backend_tag) g_source_modify_unix_fd(&s->gs->base, s->backend_tag, G_IO_IN);
    if (s->timer_tag) g_source_modify_unix_fd(&s->gs->base, s->timer_tag, G_IO_IN);
    if (s->helper.went_active) s->helper.went_active(s->helper.ctx);
}

static gboolean bg_prepare(GSource *g, gint *timeout) {
    braid_glib_source *s = ((bg_gsource *)g)->owner;
    *timeout = -1;
    if (!s || s->freed) return FALSE;
    if (is_passive(s)) {
        park(s);
        return FALSE;
    }
    unpark(s);
    if (s->backend_fd < 0) mirror_sync(s);
    uint64_t t = braid_loop_next_timeout(s->loop);
    if (t == 0) {
        *timeout = 0;
        return TRUE;
    }
    if (t == BRAID_FOREVER) {
        timer_disarm(s);
        return FALSE;
    }
    timer_arm(s, t, timeout);
    return FALSE;
}

static gboolean bg_check(GSource *g) {
    braid_glib_source *s = ((bg_gsource *)g)->owner;
    if (!s || s->freed || s->idle) return FALSE;
    bool ready = false;
    if (s->backend_tag && g_source_query_unix_fd(g, s->backend_tag)) ready = true;
    if (s->timer_tag && (g_source_query_unix_fd(g, s->timer_tag) & G_IO_IN)) {
        uint64_t expirations;
        ssize_t r = read(s->timer_fd, &expirations, sizeof expirations);
        (void)r;
        s->timer_armed = false;
        ready = true;
    }
    for (size_t i = 0; i < s->nmirror && !ready; i++)
        if (g_source_query_unix_fd(g, s->mirror[i].tag)) ready = true;
    /* Without a timerfd, GLib's poll timing out is what says braid's timer is due. */
    return ready || braid_loop_next_timeout(s->loop) == 0;
}

static void destroy_now(braid_glib_source *s);

static gboolean bg_dispatch(GSource *g, GSourceFunc cb, gpointer data) {
    braid_glib_source *s = ((bg_gsource *)g)->owner;
    (void)cb;
    (void)data;
    if (!s || s->freed) return G_SOURCE_CONTINUE;
    s->depth++;
    int rc = braid_loop_run_once(s->loop, BRAID_LOOP_RUN_NOWAIT);
    s->depth--;
    if (s->freed) {
        if (s->depth == 0) destroy_now(s);
        return G_SOURCE_CONTINUE;
    }
    /* A plain source's loop has no braid_loop_run to end: take a stop asked
     * in this iteration (or from another thread), or next_timeout stays 0 and
     * GLib spins. A nested-loop helper leaves it for the braid_loop_run it
     * runs inside of. */
    if (!s->helper.ctx && braid_loop_take_stop(s->loop)) {
        if (s->on_stop) {
            s->depth++;
            s->on_stop(s->loop, s->stop_arg);
            s->depth--;
            if (s->freed) {
                if (s->depth == 0) destroy_now(s);
                return G_SOURCE_CONTINUE;
            }
        } else if (!s->logged_stop) {
            s->logged_stop = true;
            braid_loop_log(s->loop, BRAID_LOG_WARN,
                           "braid_glib_source: braid_loop_stop on a loop that GLib drives does nothing "
                           "(no braid_loop_run to return from); set braid_glib_source_options.on_stop "
                           "to quit the GLib loop");
        }
    }
    if (rc < 0 && !s->logged_failure) {
        s->logged_failure = true;
        braid_loop_log(s->loop, BRAID_LOG_ERROR, "braid_glib_source: the loop's poller failed: %s",
                  braid_strerror(rc));
    }
    return G_SOURCE_CONTINUE;
}

static void bg_finalize(GSource *g) {
    (void)g;   /* the owner is freed by braid_glib_source_free, not by GLib */
}

static GSourceFuncs bg_funcs = {
    .prepare = bg_prepare,
    .check = bg_check,
    .dispatch = bg_dispatch,
    .finalize = bg_finalize,
};

/* ---- creation and teardown ---------------------------------------------------------- */
static int source_new(braid_loop *loop, GMainContext *context, int priority,
                      const braid__glib_helper *helper, braid_glib_source **out) {
    if (!loop || !out) return BRAID_EINVAL;
    braid_glib_source *s = calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    s->loop = loop;
    s->timer_fd = -1;
    if (helper) s->helper = *helper;
#ifdef __linux__
    s->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (s->timer_fd < 0) {
        int rc = -errno;
        free(s);
        return rc;
    }
#endif
    s->context = context ? g_main_context_ref(context) : g_main_context_ref(g_main_context_default());
    s->gs = (bg_gsource *)g_source_new(&bg_funcs, sizeof(bg_gsource));
    s->gs->owner = s;
    GSource *g = &s->gs->base;
    g_source_set_name(g, helper ? "braid (nested loops)" : "braid");
    g_source_set_priority(g, priority);
    g_source_set_can_recurse(g, TRUE);
    int bfd = braid_loop_backend_fd(loop);
    s->backend_fd = bfd >= 0 ? bfd : -1;
    if (s->backend_fd >= 0) s->backend_tag = g_source_add_unix_fd(g, s->backend_fd, G_IO_IN);
    if (s->timer_fd >= 0) s->timer_tag = g_source_add_unix_fd(g, s->timer_fd, G_IO_IN);
    g_source_attach(g, s->context);
    if (!helper) braid_handle_open(loop, &s->handle, "glib-source");   /* a driver is its helper's handle */
    *out = s;
    return 0;
}

int braid_glib_source_new(braid_loop *loop, GMainContext *context,
                          const braid_glib_source_options *opts, braid_glib_source **out) {
    int rc = source_new(loop, context, opts ? opts->priority : G_PRIORITY_DEFAULT, NULL, out);
    if (rc == 0 && opts) {
        (*out)->on_stop = opts->on_stop;
        (*out)->stop_arg = opts->stop_arg;
    }
    return rc;
}

int braid__glib_source_new_helper(braid_loop *loop, GMainContext *context,
                                  const braid__glib_helper *helper, braid_glib_source **out) {
    return source_new(loop, context, G_PRIORITY_DEFAULT, helper, out);
}

unsigned braid__glib_source_depth(const braid_glib_source *s) { return s ? s->depth : 0; }

GSource *braid_glib_source_gsource(braid_glib_source *s) { return &s->gs->base; }

static void destroy_now(braid_glib_source *s) {
    s->gs->owner = NULL;
    g_source_unref(&s->gs->base);
    if (s->timer_fd >= 0) close(s->timer_fd);
    g_main_context_unref(s->context);
    free(s->mirror);
    free(s->mirror_next);
    free(s->scratch);
    free(s);
}

void braid_glib_source_free(braid_glib_source *s) {
    if (!s || s->freed) return;
    braid_handle_close(s->loop, &s->handle);   /* a no-op for a helper, which has none */
    s->freed = true;
    g_source_destroy(&s->gs->base);   /* detached now; GLib lets go of it after any dispatch */
    if (s->depth == 0) destroy_now(s);
}
