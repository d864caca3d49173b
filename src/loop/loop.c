/* The loop: creation, one precisely defined iteration, fd watchers, posted
 * and ready calls, the handle registry and the leak gate.
 *
 * One iteration is poll -> I/O callbacks -> due timers -> posted calls ->
 * ready calls (see <braid/loop.h>). Each phase runs only the work that was
 * there when the phase began, so a flood in one phase cannot starve I/O. */
#include "loop/loop_internal.h"
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

/* ---- logging ------------------------------------------------------------------ */
/* Every line goes through the loop's logger (<braid/log.h>) as an event in
 * the namespace "braid.<module>"; with no loop, straight to stderr. */
void braid__log_at(braid_loop *loop, const char *ns, braid_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (loop && loop->logger) {
        char full[64];
        snprintf(full, sizeof full, "braid.%s", ns);
        braid_log_vemit(loop->logger, level, full, NULL, 0, fmt, ap);
    } else {
        braid__log_vwrite(NULL, NULL, ns, level, fmt, ap);
    }
    va_end(ap);
}

void braid_loop_log(braid_loop *loop, braid_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    if (loop && loop->logger) braid_log_vemit(loop->logger, level, NULL, NULL, 0, fmt, ap);
    else braid__log_vwrite(NULL, NULL, NULL, level, fmt, ap);
    va_end(ap);
}

braid_logger *braid_loop_logger(braid_loop *loop) { return loop ? loop->logger : NULL; }

static bool log_on_owner(void *arg) { return braid__loop_on_owner_thread(arg); }
static void log_drain(void *arg) {
    braid_loop *loop = arg;
    braid__logger_drain(loop->logger);
}
static void log_wake(void *arg) {
    braid_loop *loop = arg;
    braid_loop_post_node(loop, &loop->log_post);
}

/* ---- loop affinity ---------------------------------------------------------------- */
/* The owner is read and written with relaxed atomics: a thread that asks
 * "am I the loop's?" while the loop is being handed over to another gets
 * one answer or the other, never a torn one (and TSan sees no race). */
static inline pthread_t owner_of(const braid_loop *loop) {
    pthread_t t;
    __atomic_load(&loop->owner_thread, &t, __ATOMIC_RELAXED);
    return t;
}

bool braid__loop_on_owner_thread(const braid_loop *loop) {
    return pthread_equal(owner_of(loop), pthread_self());
}

void braid__loop_wrong_thread(const braid_loop *loop, const char *fn) {
    /* Straight to stderr: from this thread the logger would queue the line
     * for a loop that never gets to print it before the abort. */
    (void)loop;
    braid__log_write(NULL, NULL, braid__log_ns, BRAID_LOG_ERROR,
               "%s called from a thread that does not own the loop (only braid_loop_post and "
               "braid_loop_stop may be called from other threads; see docs/loop.md)", fn);
    abort();
}

/* run, run_once and destroy may be called from a thread other than the
 * owner: that is how a loop made on one thread is run on another. The
 * caller makes the hand-over safe (pthread_create, a join); debug builds
 * abort if the owner is inside run_once at that moment. Only a changed
 * owner is written; a reader on another thread (a pool worker, or the
 * loop's maker, asking "am I on the loop's thread?") may look at any time. */
static inline void take_over(braid_loop *loop, const char *fn) {
    pthread_t self = pthread_self();
    if (BRAID__LIKELY(pthread_equal(owner_of(loop), self))) return;
#ifdef BRAID_DEBUG
    if (atomic_load(&loop->running) > 0) braid__loop_wrong_thread(loop, fn);
#else
    BRAID__UNUSED(fn);
#endif
    __atomic_store(&loop->owner_thread, &self, __ATOMIC_RELAXED);
}

/* ---- backend choice ----------------------------------------------------------- */
/* The loop finds pollers by name in the poll layer's table (poll/poller.h);
 * the names are <braid/loop.h>'s braid_backend values. */
_Static_assert((unsigned)BRAID__POLL_READ == (unsigned)BRAID_WATCH_READ &&
               (unsigned)BRAID__POLL_WRITE == (unsigned)BRAID_WATCH_WRITE &&
               (unsigned)BRAID__POLL_ERROR == (unsigned)BRAID_WATCH_ERROR &&
               (unsigned)BRAID__POLL_HUP == (unsigned)BRAID_WATCH_HUP &&
               (unsigned)BRAID__POLL_EXCLUSIVE == (unsigned)BRAID_WATCH_EXCLUSIVE,
               "the poll layer's event bits are the loop's");
static const char *const backend_names[] = {
    [BRAID_BACKEND_SELECT] = "select", [BRAID_BACKEND_POLL] = "poll",
    [BRAID_BACKEND_EPOLL] = "epoll", [BRAID_BACKEND_URING] = "uring",
};
#define DEFAULT_BACKEND "epoll"   /* where there is no epoll: poll */

static braid_backend backend_from_env(void) {
    const char *e = getenv("BRAID_BACKEND");
    if (!e || !*e) return BRAID_BACKEND_DEFAULT;
    if (!strcmp(e, "io_uring")) e = "uring";
    for (size_t b = 1; b < sizeof backend_names / sizeof backend_names[0]; b++)
        if (!strcmp(e, backend_names[b])) return (braid_backend)b;
    return (braid_backend)-1;
}

static const braid__poller_ops *default_backend(void) {
    const braid__poller_ops *ops = braid__poller_find(DEFAULT_BACKEND);
    return ops ? ops : braid__poller_find("poll");
}

/* The backend asked for, if it is built in, usable here and not turned off;
 * else the default one, unless BRAID_LOOP_STRICT_BACKEND (BRAID_ENOSYS). */
static const braid__poller_ops *pick_backend(braid_backend b, unsigned flags, int *err) {
    *err = 0;
    if (b == BRAID_BACKEND_DEFAULT) return default_backend();
    if ((unsigned)b >= sizeof backend_names / sizeof backend_names[0] || !backend_names[b]) {
        *err = BRAID_EINVAL;
        return NULL;
    }
    const braid__poller_ops *ops = braid__poller_find(backend_names[b]);
    /* io_uring's kill switch: BRAID_LOOP_NO_URING, or BRAID_NO_URING set to
     * anything but "" or "0". */
    const char *nu = getenv("BRAID_NO_URING");
    if (b == BRAID_BACKEND_URING && ((flags & BRAID_LOOP_NO_URING) || (nu && *nu && strcmp(nu, "0"))))
        ops = NULL;
    if (ops && (!ops->available || ops->available())) return ops;
    if (flags & BRAID_LOOP_STRICT_BACKEND) { *err = BRAID_ENOSYS; return NULL; }
    return default_backend();
}

/* ---- wakeup channel for posted calls ------------------------------------------ */
static void wake_cb(braid_watch *w, unsigned events, void *arg) {
    braid_loop *loop = arg;
    (void)w; (void)events;
    /* Drain the counter/pipe; the posted phase of this iteration runs the calls. */
    uint64_t buf[16];
    while (read(loop->wake_rfd, buf, sizeof buf) > 0 && loop->wake_rfd != loop->wake_wfd) {}
}

static int wake_open(braid_loop *loop) {
#ifdef __linux__
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd < 0) return -errno;
    loop->wake_rfd = loop->wake_wfd = fd;
#else
    int p[2];
    if (pipe(p) < 0) return -errno;
    for (int i = 0; i < 2; i++) {
        fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
        fcntl(p[i], F_SETFD, FD_CLOEXEC);
    }
    loop->wake_rfd = p[0]; loop->wake_wfd = p[1];
#endif
    return 0;
}

static void wake_close(braid_loop *loop) {
    if (loop->wake_rfd >= 0) close(loop->wake_rfd);
    if (loop->wake_wfd >= 0 && loop->wake_wfd != loop->wake_rfd) close(loop->wake_wfd);
    loop->wake_rfd = loop->wake_wfd = -1;
}

static void wake_signal(braid_loop *loop) {
#ifdef __linux__
    uint64_t one = 1;
    ssize_t r = write(loop->wake_wfd, &one, sizeof one);
#else
    char one = 1;
    ssize_t r = write(loop->wake_wfd, &one, 1);
#endif
    (void)r;   /* EAGAIN: already signalled, which is all we need */
}

/* ---- create / destroy ---------------------------------------------------------- */
int braid_loop_new(const braid_loop_options *opts, braid_loop **out) {
    braid_loop_options o = { 0 };
    if (!out) return BRAID_EINVAL;
    *out = NULL;
    if (opts) o = *opts;
    braid_backend b = o.backend;
    if (b == BRAID_BACKEND_DEFAULT) {
        b = backend_from_env();
        if ((int)b == -1) return BRAID_EINVAL;
    }
    int err;
    const braid__poller_ops *ops = pick_backend(b, o.flags, &err);
    if (!ops) return err;

    braid_loop *loop = braid_calloc(1, sizeof *loop);
    if (!loop) return BRAID_ENOMEM;
    loop->poller.ops = ops;
    loop->poller.log = o.log;
    loop->poller.log_ctx = o.log_ctx;
    loop->owner_thread = pthread_self();
    atomic_init(&loop->running, 0);
    loop->clock = o.clock ? o.clock : braid_clock_monotonic();
    loop->flags = o.flags;
    loop->log = o.log;
    loop->log_ctx = o.log_ctx;
    loop->handles.next = loop->handles.prev = &loop->handles;
    braid__introspect_init(loop);
    loop->wake_rfd = loop->wake_wfd = -1;
    loop->sigfd = -1;
    sigemptyset(&loop->sigmask);
    loop->next_gen = 1;
    atomic_init(&loop->posted, NULL);
    atomic_init(&loop->stop, false);
    atomic_init(&loop->destroying, false);
    atomic_init(&loop->spinning, false);

    loop->poller.events = braid_malloc(BRAID__MAX_BATCH * sizeof *loop->poller.events);
    if (!loop->poller.events) { braid_free(loop); return BRAID_ENOMEM; }
    int rc = ops->init(&loop->poller);
    /* A backend can fail to set up after a good probe (io_uring: fd or
     * memlock limits): fall back to the default one. */
    if (rc == BRAID_ENOSYS && ops != default_backend() && !(o.flags & BRAID_LOOP_STRICT_BACKEND)) {
        loop->poller.ops = ops = default_backend();
        rc = ops->init(&loop->poller);
    }
    if (rc < 0) { braid_free(loop->poller.events); braid_free(loop); return rc; }
    if ((rc = wake_open(loop)) < 0) goto fail;
    if ((rc = braid_watch_init(loop, &loop->wake_watch, loop->wake_rfd, wake_cb, loop)) < 0)
        goto fail;
    loop->wake_watch.flags |= BRAID__WATCH_INTERNAL | BRAID__WATCH_UNREF;
    loop->watchers_open--;
    if ((rc = braid_watch_set_interest(&loop->wake_watch, BRAID_WATCH_READ)) < 0) {
        loop->watchers_open++;
        braid_watch_close(&loop->wake_watch);
        goto fail;
    }
    loop->log_post.fn = log_drain;
    loop->log_post.arg = loop;
    loop->logger = braid__logger_new(&(braid__logger_hooks){
        .on_owner = log_on_owner, .wake = log_wake, .arg = loop, .queue_limit = o.log_queue_limit,
        .legacy = o.log, .legacy_ctx = o.log_ctx });
    if (!loop->logger) {
        rc = BRAID_ENOMEM;
        loop->watchers_open++;
        braid_watch_close(&loop->wake_watch);
        goto fail;
    }
    loop->now = loop->clock->now(loop->clock);
    *out = loop;
    return 0;
fail:
    wake_close(loop);
    ops->destroy(&loop->poller);
    braid_free(loop->fds);
    braid_free(loop->poller.events);
    braid_free(loop);
    return rc;
}

/* The leak gate: name everything still open; true if anything is. */
static bool report_open(braid_loop *loop, bool say) {
    bool any = false;
    if (loop->watchers_open) {
        any = true;
        for (size_t fd = 0; fd < loop->nfds; fd++) {
            braid_watch *w = loop->fds[fd];
            if (w && !(w->flags & BRAID__WATCH_INTERNAL))
                if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: fd watcher still open (fd %zu)", fd);
        }
    }
    if (loop->heap_len) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: %zu timer(s) still active", loop->heap_len);
    }
    if (loop->signals) {
        any = true;
        for (braid_signal *s = loop->signals; s; s = s->next)
            if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: signal watcher still open (signal %d)",
                       s->signo);
    }
    for (braid_handle *h = loop->handles.next; h != &loop->handles; h = h->next) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: %s handle still open%s%s", h->kind,
                   h->name ? ": " : "", h->name ? h->name : "");
    }
    if (atomic_load(&loop->posted)) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: posted calls not yet run");
    }
    if (loop->soon_head) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: ready calls not yet run");
    }
    for (braid_prepare *p = loop->prepares; p; p = p->next) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: a prepare hook is started");
    }
    if (loop->holds) {
        any = true;
        if (say) braid__log(loop, BRAID_LOG_ERROR, "loop not destroyed: %zu hold(s) not released", loop->holds);
    }
    /* Modules' reports log what they find: asked only when the rest is
     * clear, or when the caller wants every reason said. */
    if (any && !say) return true;
    for (unsigned k = 0; k < loop->nkeys; k++) {
        unsigned i = loop->key_order[k];
        braid_loop_key *key = loop->keys[i];
        void *v = loop->head.key_data[i];
        if (v && key->report && key->report(loop, v)) any = true;
    }
    return any;
}

static int loop_free(braid_loop *loop, bool say) {
    if (!loop) return BRAID_EINVAL;
    take_over(loop, "braid_loop_free");
    /* Module state (e.g. the Deferred free list) may report its own leaks. */
    if (report_open(loop, say)) return BRAID_EBUSY;
    atomic_store(&loop->destroying, true);
    for (unsigned k = loop->nkeys; k-- > 0;) {
        unsigned i = loop->key_order[k];
        braid_loop_key *key = loop->keys[i];
        void *v = loop->head.key_data[i];
        if (v && key->free) key->free(loop, v);
    }
    loop->watchers_open++;
    braid_watch_close(&loop->wake_watch);
    wake_close(loop);
    braid__signals_close(loop);
    braid__timers_destroy(loop);
    braid__logger_free(loop->logger);
    loop->poller.ops->destroy(&loop->poller);
    braid_free(loop->fds);
    braid_free(loop->poller.events);
    braid_free(loop);
    return 0;
}

int braid_loop_free(braid_loop *loop) { return loop_free(loop, true); }
int braid__loop_free_quiet(braid_loop *loop) { return loop_free(loop, false); }

const char *braid_loop_backend(const braid_loop *loop) { return loop->poller.ops->name; }
int braid_loop_backend_fd(const braid_loop *loop) { return loop->poller.ops->backend_fd(&loop->poller); }
uint64_t braid_loop_now(const braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    return loop->now;
}
uint64_t braid_loop_now_fresh(braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    return loop->clock->now(loop->clock);
}

size_t braid_loop_watched_fds(const braid_loop *loop, size_t cap, braid_loop_fd *out) {
    BRAID__LOOP_AFFINE(loop);
    size_t n = 0;
    for (size_t fd = 0; fd < loop->nfds; fd++) {
        const braid_watch *w = loop->fds[fd];
        if (!w || !(w->flags & BRAID__WATCH_OPEN) || !w->mask) continue;
        if (n < cap) out[n] = (braid_loop_fd){ .fd = (int)fd, .events = w->mask & (BRAID_WATCH_READ | BRAID_WATCH_WRITE) };
        n++;
    }
    return n;
}
braid_clock *braid_loop_clock(braid_loop *loop) { return loop->clock; }
uint64_t braid_loop_iteration(const braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    return loop->iteration;
}
void braid_loop_hold(braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    loop->holds++;
}
void braid_loop_release(braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    if (loop->holds == 0) { braid__log(loop, BRAID_LOG_ERROR, "braid_loop_release without hold"); abort(); }
    loop->holds--;
}
void braid_loop_set_unhandled(braid_loop *loop, braid_loop_unhandled_cb fn, void *ctx) {
    BRAID__LOOP_AFFINE(loop);
    loop->unhandled = fn;
    loop->unhandled_ctx = ctx;
}

bool braid__loop_unhandled(braid_loop *loop, const struct braid_failure *f) {
    if (!loop->unhandled) return false;
    loop->unhandled(loop->unhandled_ctx, loop, f);
    return true;
}

void braid__loop_spin_hold(braid_loop *loop, uint64_t spin_ns) {
    BRAID__LOOP_AFFINE(loop);
    loop->spin_holds++;
    if (loop->spin_max < spin_ns) loop->spin_max = loop->spin_cur = spin_ns;
}

void braid__loop_spin_release(braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    loop->spin_holds--;
}

bool braid__loop_has_ready(const braid_loop *loop) { return loop->soon_head != NULL; }

/* ---- keys: per-loop data of modules ---------------------------------------------- */
_Static_assert(offsetof(struct braid_loop, head) == 0, "loop/loop_module.h reads the head in place");
_Static_assert(BRAID_LOOP_MAX_KEYS <= 64, "keys_set is one uint64_t");

/* Keys are numbered once per process, on first set, under a lock (a key is
 * set for the first time a handful of times per process). */
static pthread_mutex_t keys_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned keys_numbered;

static unsigned key_number(braid_loop_key *key) {
    unsigned i = __atomic_load_n(&key->index, __ATOMIC_ACQUIRE);
    if (BRAID__LIKELY(i)) return i;
    pthread_mutex_lock(&keys_lock);
    i = key->index;
    if (!i && keys_numbered < BRAID_LOOP_MAX_KEYS) {
        i = ++keys_numbered;
        __atomic_store_n(&key->index, i, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&keys_lock);
    return i;
}

void *braid_loop_data(braid_loop *loop, braid_loop_key *key) {
    BRAID__LOOP_AFFINE(loop);
    return braid__loop_data(loop, key);
}

int braid_loop_set_data(braid_loop *loop, braid_loop_key *key, void *value) {
    BRAID__LOOP_AFFINE(loop);
    unsigned n = key_number(key);
    if (!n) {
        braid__log(loop, BRAID_LOG_ERROR, "braid_loop_set_data: key \"%s\": this process has %d keys already",
                   key->name ? key->name : "?", BRAID_LOOP_MAX_KEYS);
        return BRAID_ENOMEM;
    }
    if (!(loop->keys_set & (1ull << (n - 1)))) {
        loop->keys_set |= 1ull << (n - 1);
        loop->keys[n] = key;
        loop->key_order[loop->nkeys++] = (uint8_t)n;
    }
    loop->head.key_data[n] = value;
    return 0;
}

/* ---- handles ------------------------------------------------------------------ */
void braid_handle_open(braid_loop *loop, braid_handle *h, const char *kind) {
    BRAID__LOOP_AFFINE(loop);
    h->kind = kind;
    h->next = loop->handles.next;
    h->prev = &loop->handles;
    loop->handles.next->prev = h;
    loop->handles.next = h;
}

void braid_handle_close(braid_loop *loop, braid_handle *h) {
    if (!h->next) return;
    BRAID__LOOP_AFFINE(loop);
    h->prev->next = h->next;
    h->next->prev = h->prev;
    h->next = h->prev = NULL;
}

/* ---- fd watchers ---------------------------------------------------------------- */
static int fds_reserve(braid_loop *loop, int fd) {
    if ((size_t)fd < loop->nfds) return 0;
    size_t n = loop->nfds ? loop->nfds : 64;
    while (n <= (size_t)fd) n *= 2;
    braid_watch **p = braid_realloc(loop->fds, n * sizeof *p);
    if (!p) return BRAID_ENOMEM;
    memset(p + loop->nfds, 0, (n - loop->nfds) * sizeof *p);
    loop->fds = p;
    loop->nfds = n;
    return 0;
}

int braid_watch_init(braid_loop *loop, braid_watch *w, int fd, braid_watch_cb cb, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    if (fd < 0 || !cb) return BRAID_EINVAL;
    int rc = fds_reserve(loop, fd);
    if (rc < 0) return rc;
    if (loop->fds[fd]) return BRAID_EEXIST;
    memset(w, 0, sizeof *w);
    w->loop = loop;
    w->cb = cb;
    w->arg = arg;
    w->fd = fd;
    w->gen = loop->next_gen++;
    if (loop->next_gen == 0) loop->next_gen = 1;
    w->flags = BRAID__WATCH_OPEN;
    loop->fds[fd] = w;
    loop->watchers_open++;
    BRAID__ASSERT(w->gen != 0);                     /* 0 is never a live generation */
    return 0;
}

static bool watch_counts(const braid_watch *w) {
    return w->mask && !(w->flags & BRAID__WATCH_UNREF);
}

int braid_watch_set_interest(braid_watch *w, unsigned mask) {
    if (!(w->flags & BRAID__WATCH_OPEN)) return BRAID_EINVAL;
    braid_loop *loop = w->loop;
    BRAID__LOOP_AFFINE(loop);
    mask &= BRAID_WATCH_READ | BRAID_WATCH_WRITE | BRAID_WATCH_EXCLUSIVE;
    if (!(mask & (BRAID_WATCH_READ | BRAID_WATCH_WRITE))) mask = 0;
    BRAID__ASSERT((size_t)w->fd < loop->nfds && loop->fds[w->fd] == w);
    if (mask == w->mask) return 0;
    int rc = loop->poller.ops->update(&loop->poller, w->fd, w->mask, mask, braid__tag(w->gen, w->fd));
    if (rc < 0) return rc;
    bool before = watch_counts(w);
    BRAID__ASSERT(!before || loop->watchers_alive > 0);
    w->mask = mask;
    loop->watchers_alive += (size_t)watch_counts(w) - (size_t)before;
    return 0;
}

void braid_watch_unref(braid_watch *w) {
    BRAID__LOOP_AFFINE(w->loop);
    if (w->flags & BRAID__WATCH_UNREF) return;
    bool before = watch_counts(w);
    w->flags |= BRAID__WATCH_UNREF;
    if (before) w->loop->watchers_alive--;
}

void braid_watch_close(braid_watch *w) {
    if (!(w->flags & BRAID__WATCH_OPEN)) return;
    braid_loop *loop = w->loop;
    BRAID__LOOP_AFFINE(loop);
    if (w->mask) {
        /* Removing may fail with EBADF if the user closed the fd first; the
         * kernel already forgot it then, which is what we want. */
        (void)loop->poller.ops->update(&loop->poller, w->fd, w->mask, 0, braid__tag(w->gen, w->fd));
        /* A backend that queues its changes (io_uring) hands the removal to
         * the kernel now: an armed poll holds the file, so a socket the
         * caller closes next would otherwise live on until the next wait —
         * a closed UDP port still taking datagrams (no ICMP error for the
         * sender), a closed listener still completing handshakes. */
        if (loop->poller.ops->flush) (void)loop->poller.ops->flush(&loop->poller);
        if (watch_counts(w)) loop->watchers_alive--;
        w->mask = 0;
    }
    if ((size_t)w->fd < loop->nfds && loop->fds[w->fd] == w) loop->fds[w->fd] = NULL;
    w->flags &= ~BRAID__WATCH_OPEN;
    BRAID__ASSERT(loop->watchers_open > 0);
    loop->watchers_open--;
}

/* Deliver collected events. The watcher is looked up by fd and checked by
 * generation at delivery time, so a callback that closes another watcher (and
 * even opens a new one on the same fd number) stops stale events for it.
 *
 * Re-entrant: a callback may run an iteration of its own (a modal dialog's
 * main loop with braid embedded in it). The batch has one cursor, io_next,
 * so the nested iteration delivers what the outer one had not delivered yet,
 * each event once, and the outer one then finds the batch done. */
static void dispatch_io(braid_loop *loop) {
    while (loop->io_next < loop->poller.nevents) {
        braid__event e = loop->poller.events[loop->io_next++];
        uint32_t fd = (uint32_t)e.tag;
        if (fd >= loop->nfds) continue;
        braid_watch *w = loop->fds[fd];
        if (!w || w->gen != (uint32_t)(e.tag >> 32)) continue;   /* stale */
        BRAID__ASSERT(w->fd == (int)fd && (w->flags & BRAID__WATCH_OPEN) && w->loop == loop);
        unsigned ev = e.events;
        if (ev & (BRAID_WATCH_ERROR | BRAID_WATCH_HUP)) ev |= w->mask & (BRAID_WATCH_READ | BRAID_WATCH_WRITE);     /* wake whoever waits */
        ev &= (w->mask & (BRAID_WATCH_READ | BRAID_WATCH_WRITE)) | BRAID_WATCH_ERROR | BRAID_WATCH_HUP;
        if (!(ev & w->mask)) continue;
        w->cb(w, ev, w->arg);
    }
    loop->io_next = loop->poller.nevents = 0;
}

/* ---- posted calls (any thread) ----------------------------------------------------- */
void braid_loop_post_node(braid_loop *loop, braid_post *node) {
    BRAID__ASSERT(node && node->fn);
    braid_post *head = atomic_load_explicit(&loop->posted, memory_order_relaxed);
    BRAID__ASSERT(head != node);                    /* posted twice before it ran */
    node->ctx = braid__ctx_capture();               /* the poster's, restored for fn */
    do {
        node->next = head;
    } while (!atomic_compare_exchange_weak_explicit(&loop->posted, &head, node,
                                                    memory_order_seq_cst, memory_order_relaxed));
    /* Only the post that makes the queue non-empty wakes the loop: one
     * eventfd write per batch however many calls follow it. A loop that is
     * busy-polling the stack (spin_for_posted) sees the node without it; the
     * seq_cst push above and the loop's seq_cst clear-then-recheck of
     * `spinning` make sure one side notices the other. */
    if (head == NULL && !atomic_load(&loop->spinning)) wake_signal(loop);
}

typedef struct posted_call {
    braid_post node;
    braid_loop_call_cb fn;
    void *arg;
} posted_call;

static void posted_trampoline(void *p) {
    posted_call *c = p;
    braid_loop_call_cb fn = c->fn;
    void *arg = c->arg;
    braid_free(c);
    fn(arg);
}

int braid_loop_post(braid_loop *loop, braid_loop_call_cb fn, void *arg) {
    posted_call *c = braid_malloc(sizeof *c);
    if (!c) return BRAID_ENOMEM;
    c->fn = fn;
    c->arg = arg;
    c->node.fn = posted_trampoline;
    c->node.arg = c;
    braid_loop_post_node(loop, &c->node);
    return 0;
}

static void run_posted(braid_loop *loop) {
    if (!atomic_load_explicit(&loop->posted, memory_order_relaxed)) return;
    braid_post *list = atomic_exchange_explicit(&loop->posted, NULL, memory_order_acquire);
    /* The stack is newest-first; reverse it so each thread's calls run in order. */
    braid_post *fifo = NULL;
    while (list) {
        braid_post *next = list->next;
        list->next = fifo;
        fifo = list;
        list = next;
    }
    while (fifo) {
        braid_post *next = fifo->next;   /* fn may free or reuse its node */
        BRAID__ASSERT(fifo->fn != NULL && next != fifo);
        braid_ctx *cx = fifo->ctx;
        braid_ctx *prev = braid__ctx_swap(cx);
        fifo->fn(fifo->arg);
        braid__ctx_swap(prev);
        braid__ctx_release(cx);
        fifo = next;
    }
}

void braid_loop_stop(braid_loop *loop) {
    atomic_store(&loop->stop, true);
    wake_signal(loop);
}

bool braid_loop_take_stop(braid_loop *loop) {
    return atomic_exchange(&loop->stop, false);
}

/* ---- ready calls (loop thread) ------------------------------------------------------ */
void braid_loop_soon_node(braid_loop *loop, braid_soon *node) {
    BRAID__LOOP_AFFINE(loop);
    /* A node queued twice would make the queue a cycle: the ready phase
     * would never end. */
    BRAID__ASSERT(node->fn != NULL && node != loop->soon_tail);
    BRAID__ASSERT((loop->soon_head == NULL) == (loop->soon_tail == NULL));
    node->next = NULL;
    node->ctx = braid__ctx_capture();
    if (loop->soon_tail) loop->soon_tail->next = node;
    else loop->soon_head = node;
    loop->soon_tail = node;
}

bool braid_loop_soon_cancel(braid_loop *loop, braid_soon *node) {
    BRAID__LOOP_AFFINE(loop);
    braid_soon *prev = NULL;
    for (braid_soon *n = loop->soon_head; n; prev = n, n = n->next) {
        if (n != node) continue;
        if (prev) prev->next = n->next;
        else loop->soon_head = n->next;
        if (loop->soon_tail == n) loop->soon_tail = prev;
        n->next = NULL;
        braid__ctx_release(n->ctx);      /* the context captured when it was queued */
        n->ctx = NULL;
        return true;
    }
    return false;
}

typedef struct soon_call {
    braid_soon node;
    braid_loop_call_cb fn;
    void *arg;
} soon_call;

static void soon_trampoline(void *p) {
    soon_call *c = p;
    braid_loop_call_cb fn = c->fn;
    void *arg = c->arg;
    braid_free(c);
    fn(arg);
}

int braid_loop_soon(braid_loop *loop, braid_loop_call_cb fn, void *arg) {
    BRAID__LOOP_AFFINE(loop);
    soon_call *c = braid_malloc(sizeof *c);
    if (!c) return BRAID_ENOMEM;
    c->fn = fn;
    c->arg = arg;
    c->node.fn = soon_trampoline;
    c->node.arg = c;
    braid_loop_soon_node(loop, &c->node);
    return 0;
}

static void run_soon(braid_loop *loop) {
    braid_soon *n = loop->soon_head;
    loop->soon_head = loop->soon_tail = NULL;   /* new ones go to the next iteration */
    while (n) {
        braid_soon *next = n->next;
        braid_ctx *cx = n->ctx;          /* fn may free or re-queue n */
        braid_ctx *prev = braid__ctx_swap(cx);
        n->fn(n->arg);
        braid__ctx_swap(prev);
        braid__ctx_release(cx);
        n = next;
    }
}

/* ---- prepare hooks ------------------------------------------------------------------ */
void braid_prepare_start(braid_loop *loop, braid_prepare *p, braid_prepare_cb cb, void *arg) {
    if (p->started && p->loop == loop) {
        p->cb = cb;
        p->arg = arg;
        return;
    }
    p->loop = loop;
    p->cb = cb;
    p->arg = arg;
    p->next = NULL;
    p->prev = NULL;
    braid_prepare **at = &loop->prepares;
    while (*at) {
        p->prev = *at;
        at = &(*at)->next;
    }
    *at = p;
    p->started = true;
}

void braid_prepare_stop(braid_prepare *p) {
    if (!p->started) return;
    braid_loop *loop = p->loop;
    if (loop->prepare_next == p) loop->prepare_next = p->next;
    if (p->prev) p->prev->next = p->next; else loop->prepares = p->next;
    if (p->next) p->next->prev = p->prev;
    p->next = p->prev = NULL;
    p->started = false;
}

static void run_prepares(braid_loop *loop) {
    loop->in_prepare = true;
    for (braid_prepare *p = loop->prepares; p; p = loop->prepare_next) {
        loop->prepare_next = p->next;
        p->cb(p, p->arg);
    }
    loop->prepare_next = NULL;
    loop->in_prepare = false;
}

/* ---- running ------------------------------------------------------------------------ */
static bool timers_alive(braid_loop *loop) {
    if (!loop->timers_alive) return false;
    if (!loop->clock->is_fake) return true;
    /* Under a fake clock only a due timer is work: future ones wait for the test. */
    return braid__timers_next_deadline(loop) <= loop->clock->now(loop->clock);
}

static bool loop_alive(braid_loop *loop) {
    return loop->watchers_alive || loop->holds || loop->signals || loop->soon_head ||
           atomic_load_explicit(&loop->posted, memory_order_relaxed) || timers_alive(loop);
}

static uint64_t poll_timeout(braid_loop *loop) {
    if (loop->soon_head || atomic_load_explicit(&loop->posted, memory_order_relaxed) ||
        atomic_load_explicit(&loop->stop, memory_order_relaxed))
        return 0;
    uint64_t d = braid__timers_next_deadline(loop);
    if (d == UINT64_MAX) return BRAID_FOREVER;
    uint64_t now = loop->clock->now(loop->clock);
    if (d <= now) return 0;
    if (loop->clock->is_fake) {
        /* Fake time only moves when the test moves it: never sleep for a timer.
         * Block only if there is real I/O (or a hold) that can wake us. */
        return (loop->watchers_alive || loop->holds || loop->signals) ? BRAID_FOREVER : 0;
    }
    return d - now;
}

uint64_t braid_loop_next_timeout(braid_loop *loop) {
    BRAID__LOOP_AFFINE(loop);
    /* Embedders call this before waiting on the backend fd: make pending
     * interest changes effective first (io_uring queues them). */
    if (loop->poller.ops->flush) (void)loop->poller.ops->flush(&loop->poller);
    return poll_timeout(loop);
}

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Busy-poll the posted stack before a blocking poll, while other threads owe
 * this loop an answer (loop->spin_holds: braid__loop_spin_hold). Sleeping in the
 * poller and being woken through the eventfd costs ~30 µs on an idle core;
 * a pool job answering in a few µs would spend most of its round trip
 * there. The spin is bounded by spin_cur (always real time: a fake clock
 * must not stretch it) and adapts: a spin that found nothing halves the
 * next budget, down to no spinning at all; an answer arriving within
 * spin_max of the loop going to sleep restores it (see run_once). Returns
 * the timeout left for the real poll: 0 if something was posted. */
static uint64_t spin_for_posted(braid_loop *loop, uint64_t timeout, uint64_t *slept_at) {
    uint64_t budget = loop->spin_cur < timeout ? loop->spin_cur : timeout;
    uint64_t start = mono_ns();
    *slept_at = start;
    if (!budget) return timeout;
    atomic_store(&loop->spinning, true);
    uint64_t end = start + budget;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&loop->posted, memory_order_relaxed) ||
            atomic_load_explicit(&loop->stop, memory_order_relaxed))
            break;
        if ((i & 15) == 0 && mono_ns() >= end) break;
        braid__spin_step(i);
    }
    atomic_store(&loop->spinning, false);
    if (atomic_load(&loop->posted) || atomic_load_explicit(&loop->stop, memory_order_relaxed))
        return 0;
    loop->spin_cur /= 2;
    *slept_at = mono_ns();
    if (timeout == BRAID_FOREVER) return timeout;
    uint64_t spent = *slept_at - start;
    return timeout > spent ? timeout - spent : 0;
}

static int run_once(braid_loop *loop, unsigned flags);
int braid_loop_run_once(braid_loop *loop, unsigned flags) {
    take_over(loop, __func__);
#ifdef BRAID_DEBUG
    atomic_fetch_add(&loop->running, 1);
    int rc = run_once(loop, flags);
    atomic_fetch_sub(&loop->running, 1);
    return rc;
#else
    return run_once(loop, flags);
#endif
}

static int run_once(braid_loop *loop, unsigned flags) {
    if (loop->prepares && !loop->in_prepare) run_prepares(loop);
    /* Nested in an I/O callback with events of the outer batch still to
     * deliver: deliver those first (dispatch_io) and poll next time, so no
     * event is reported twice. */
    bool nested_in_batch = loop->io_next < loop->poller.nevents;
    uint64_t timeout = (flags & BRAID_LOOP_RUN_NOWAIT) || nested_in_batch ? 0 : poll_timeout(loop);
    if (timeout == BRAID_FOREVER && !loop_alive(loop)) timeout = 0;
    uint64_t slept_at = 0;
    bool spun = timeout && loop->spin_holds && loop->spin_max;
    if (spun) timeout = spin_for_posted(loop, timeout, &slept_at);
    int rc = nested_in_batch ? 0 : loop->poller.ops->poll(&loop->poller, timeout);
    if (spun && timeout && loop->spin_cur < loop->spin_max &&
        atomic_load_explicit(&loop->posted, memory_order_relaxed) &&
        mono_ns() - slept_at <= loop->spin_max)
        loop->spin_cur = loop->spin_max;   /* the answer came soon after all: spin again */
    if (rc < 0 && rc != -EINTR) {
        loop->io_next = loop->poller.nevents = 0;
        return rc;
    }
    dispatch_io(loop);
    uint64_t now = loop->clock->now(loop->clock);
    loop->now = now;
    braid__timers_run(loop, now);
    run_posted(loop);
    run_soon(loop);
    loop->iteration++;
    return loop_alive(loop) ? 1 : 0;
}

int braid_loop_run(braid_loop *loop) {
    take_over(loop, __func__);
    int rc = 0;
    while (!atomic_load_explicit(&loop->stop, memory_order_relaxed)) {
        rc = braid_loop_run_once(loop, 0);
        if (rc <= 0) break;
    }
    atomic_store(&loop->stop, false);
    return rc < 0 ? rc : 0;
}
