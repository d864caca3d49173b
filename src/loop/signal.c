/* Signals as loop events.
 *
 * LINUX-ONLY (marked place): signalfd. The loop's signalfd carries the union
 * of the signals watched on it; the signals are blocked in the calling thread
 * so the kernel queues them for the fd instead of running a handler. Other
 * POSIX systems get BRAID_ENOSYS (a port would put a self-pipe written
 * from a sigaction handler in this file, behind the same calls). */
#include "loop/loop_internal.h"
#include <pthread.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/signalfd.h>
#endif

#ifdef __linux__
static void sig_cb(braid_watch *w, unsigned events, void *arg) {
    braid_loop *loop = arg;
    (void)w; (void)events;
    struct signalfd_siginfo si[16];
    for (;;) {
        ssize_t n = read(loop->sigfd, si, sizeof si);
        if (n <= 0) break;
        for (size_t i = 0; i < (size_t)n / sizeof si[0]; i++) {
            int signo = (int)si[i].ssi_signo;
            /* A callback may stop any watcher: find the next one afresh each time. */
            braid_signal *s = loop->signals;
            while (s) {
                braid_signal *next = s->next;
                if (s->signo == signo) s->cb(s, signo, s->arg);
                s = next;
            }
        }
    }
}
#endif

int braid_signal_start(braid_loop *loop, braid_signal *s, int signo, braid_signal_cb cb, void *arg) {
    BRAID__LOOP_AFFINE(loop);
#ifdef __linux__
    if (signo <= 0 || signo >= NSIG || !cb || signo == SIGKILL || signo == SIGSTOP)
        return BRAID_EINVAL;
    sigset_t mask = loop->sigmask;
    sigaddset(&mask, signo);
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, signo);
    pthread_sigmask(SIG_BLOCK, &one, NULL);
    int fd = signalfd(loop->sigfd, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (loop->sigfd < 0) {
        loop->sigfd = fd;
        int rc = braid_watch_init(loop, &loop->sig_watch, fd, sig_cb, loop);
        if (rc == 0) rc = braid_watch_set_interest(&loop->sig_watch, BRAID_WATCH_READ);
        if (rc < 0) {
            braid_watch_close(&loop->sig_watch);
            close(fd);
            loop->sigfd = -1;
            return rc;
        }
        loop->sig_watch.flags |= BRAID__WATCH_INTERNAL;
        braid_watch_unref(&loop->sig_watch);    /* liveness is counted per braid_signal */
        loop->watchers_open--;
    }
    loop->sigmask = mask;
    s->loop = loop;
    s->cb = cb;
    s->arg = arg;
    s->signo = signo;
    s->flags = 1;
    s->next = loop->signals;
    loop->signals = s;
    return 0;
#else
    (void)loop; (void)s; (void)signo; (void)cb; (void)arg;
    return BRAID_ENOSYS;
#endif
}

void braid_signal_stop(braid_signal *s) {
    if (!s->flags) return;
    braid_loop *loop = s->loop;
    BRAID__LOOP_AFFINE(loop);
    for (braid_signal **p = &loop->signals; *p; p = &(*p)->next)
        if (*p == s) { *p = s->next; break; }
    s->flags = 0;
#ifdef __linux__
    bool still = false;
    for (braid_signal *o = loop->signals; o; o = o->next) still |= o->signo == s->signo;
    if (!still) {
        /* The signal stays blocked in this thread (unblocking could run a
         * default handler for one already pending); it is no longer read. */
        sigdelset(&loop->sigmask, s->signo);
        (void)signalfd(loop->sigfd, &loop->sigmask, SFD_NONBLOCK | SFD_CLOEXEC);
    }
#endif
}

void braid__signals_close(braid_loop *loop) {
    if (loop->sigfd < 0) return;
    loop->watchers_open++;
    braid_watch_close(&loop->sig_watch);
    close(loop->sigfd);
    loop->sigfd = -1;
}
