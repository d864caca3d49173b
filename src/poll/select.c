/* select(2) backend: the oldest multiplexer, for the survey and for systems
 * with nothing better. fds >= FD_SETSIZE cannot be watched (BRAID_EINVAL). */
#include "poll/poller.h"
#include <string.h>
#include <sys/select.h>

typedef struct select_state {
    fd_set rfds, wfds;
    int maxfd;
    uint64_t tags[FD_SETSIZE];
    int rotor;               /* where the next over-full scan starts (fairness) */
} select_state;

static int sl_init(braid__poller *p) {
    select_state *s = braid_malloc(sizeof *s);
    if (!s) return BRAID_ENOMEM;
    FD_ZERO(&s->rfds);
    FD_ZERO(&s->wfds);
    s->maxfd = -1;
    p->state = s;
    return 0;
}

static void sl_destroy(braid__poller *p) {
    braid_free(p->state);
    p->state = NULL;
}

static int sl_update(braid__poller *p, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag) {
    select_state *s = p->state;
    (void)old_mask;
    if (fd >= FD_SETSIZE) return new_mask ? BRAID_EINVAL : 0;
    if (new_mask & BRAID__POLL_READ) FD_SET(fd, &s->rfds); else FD_CLR(fd, &s->rfds);
    if (new_mask & BRAID__POLL_WRITE) FD_SET(fd, &s->wfds); else FD_CLR(fd, &s->wfds);
    s->tags[fd] = tag;
    if (new_mask && fd > s->maxfd) s->maxfd = fd;
    while (s->maxfd >= 0 && !FD_ISSET(s->maxfd, &s->rfds) && !FD_ISSET(s->maxfd, &s->wfds))
        s->maxfd--;
    return 0;
}

static int sl_poll(braid__poller *p, uint64_t timeout_ns) {
    select_state *s = p->state;
    fd_set r = s->rfds, w = s->wfds;
    struct timeval tv, *tvp = NULL;
    if (timeout_ns != BRAID_FOREVER) {
        uint64_t us = (timeout_ns + 999) / 1000;     /* round up: never early */
        tv.tv_sec = (time_t)(us / 1000000);
        tv.tv_usec = (suseconds_t)(us % 1000000);
        tvp = &tv;
    }
    int n = select(s->maxfd + 1, &r, &w, NULL, tvp);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    int span = s->maxfd + 1;
    int start = n > BRAID__MAX_BATCH && span ? s->rotor % span : 0;
    for (int k = 0, left = n; k < span && left > 0; k++) {
        int fd = (start + k) % span;
        unsigned ev = 0;
        if (FD_ISSET(fd, &r)) ev |= BRAID__POLL_READ;
        if (FD_ISSET(fd, &w)) ev |= BRAID__POLL_WRITE;
        if (!ev) continue;
        left -= ((ev & BRAID__POLL_READ) != 0) + ((ev & BRAID__POLL_WRITE) != 0);
        if (braid__poller_push(p, s->tags[fd], ev) < 0) { s->rotor = fd; break; }  /* batch full */
    }
    return n;
}

static int sl_fd(const braid__poller *p) { (void)p; return BRAID_ENOSYS; }

const braid__poller_ops braid__poller_select = {
    .name = "select", .init = sl_init, .destroy = sl_destroy, .update = sl_update, .poll = sl_poll,
    .backend_fd = sl_fd,
};
