/* epoll backend (Linux). The event's data is the watcher's tag (generation
 * << 32 | fd), never a pointer, so a stale event cannot reach freed memory.
 * Waits use epoll_pwait2 (ns timeout, Linux 5.11) and fall back to
 * epoll_wait with the timeout rounded up to whole ms, so we never wake early
 * by rounding down. */
#include "poll/poller.h"
#ifdef __linux__
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS BRAID__MAX_BATCH

typedef struct epoll_state {
    int epfd;
    bool no_pwait2;
    struct epoll_event ev[MAX_EVENTS];
} epoll_state;

static int ep_init(braid__poller *p) {
    epoll_state *s = braid_malloc(sizeof *s);
    if (!s) return BRAID_ENOMEM;
    s->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (s->epfd < 0) { int e = -errno; braid_free(s); return e; }
    s->no_pwait2 = false;
    p->state = s;
    return 0;
}

static void ep_destroy(braid__poller *p) {
    epoll_state *s = p->state;
    close(s->epfd);
    braid_free(s);
    p->state = NULL;
}

static int ep_update(braid__poller *p, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag) {
    epoll_state *s = p->state;
    struct epoll_event e = { 0 };
    e.data.u64 = tag;
    if (new_mask & BRAID__POLL_READ) e.events |= EPOLLIN | EPOLLRDHUP;
    if (new_mask & BRAID__POLL_WRITE) e.events |= EPOLLOUT;
    if (new_mask & BRAID__POLL_EXCLUSIVE) {
        /* EPOLLEXCLUSIVE is only accepted by EPOLL_CTL_ADD (and without
         * EPOLLRDHUP's kin it does not need): re-add to change the mask. */
        e.events = (e.events & ~(uint32_t)EPOLLRDHUP) | EPOLLEXCLUSIVE;
        if (old_mask && epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, &e) < 0 && errno != ENOENT) return -errno;
        return epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &e) == 0 ? 0 : -errno;
    }
    if (old_mask & BRAID__POLL_EXCLUSIVE) {
        /* and cannot be modified away either */
        if (epoll_ctl(s->epfd, EPOLL_CTL_DEL, fd, &e) < 0 && errno != ENOENT) return -errno;
        if (!new_mask) return 0;
        old_mask = 0;
    }
    int op = !old_mask ? EPOLL_CTL_ADD : !new_mask ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(s->epfd, op, fd, &e) == 0) return 0;
    int err = errno;
    if (op == EPOLL_CTL_DEL && (err == EBADF || err == ENOENT)) return 0;  /* fd already gone */
    if (op == EPOLL_CTL_MOD && err == ENOENT && epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &e) == 0)
        return 0;   /* the fd was closed and reopened under us: re-add */
    return -err;
}

static int ep_poll(braid__poller *p, uint64_t timeout_ns) {
    epoll_state *s = p->state;
    int n;
#ifdef SYS_epoll_pwait2
    if (!s->no_pwait2 && timeout_ns != BRAID_FOREVER && timeout_ns != 0) {
        struct timespec ts = { (time_t)(timeout_ns / 1000000000ull), (long)(timeout_ns % 1000000000ull) };
        n = epoll_pwait2(s->epfd, s->ev, MAX_EVENTS, &ts, NULL);
        if (n < 0 && errno == ENOSYS) { s->no_pwait2 = true; goto plain; }
        goto got;
    }
plain:
#endif
    {
        int ms;
        if (timeout_ns == BRAID_FOREVER) ms = -1;
        else if (timeout_ns >= (uint64_t)INT32_MAX * 1000000ull) ms = INT32_MAX;
        else ms = (int)((timeout_ns + 999999) / 1000000);
        n = epoll_wait(s->epfd, s->ev, MAX_EVENTS, ms);
    }
#ifdef SYS_epoll_pwait2
got:
#endif
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        unsigned ev = 0, e = s->ev[i].events;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLPRI)) ev |= BRAID__POLL_READ;
        if (e & EPOLLOUT) ev |= BRAID__POLL_WRITE;
        if (e & EPOLLERR) ev |= BRAID__POLL_ERROR;
        if (e & EPOLLHUP) ev |= BRAID__POLL_HUP;
        braid__poller_push(p, s->ev[i].data.u64, ev);  /* MAX_EVENTS == batch size */
    }
    return n;
}

static int ep_fd(const braid__poller *p) { return ((epoll_state *)p->state)->epfd; }

const braid__poller_ops braid__poller_epoll = {
    .name = "epoll", .init = ep_init, .destroy = ep_destroy, .update = ep_update, .poll = ep_poll,
    .backend_fd = ep_fd,
};
#endif
