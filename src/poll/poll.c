/* poll(2) backend: a dense pollfd array plus an fd -> index map, so update is
 * O(1) (swap-remove) and poll is O(registered fds). Portable POSIX. */
#include "poll/poller.h"
#include <limits.h>
#include <poll.h>
#include <string.h>

typedef struct poll_state {
    struct pollfd *pfds;
    uint64_t *tags;
    size_t n, cap;
    int32_t *index;          /* index[fd] = position in pfds, or -1 */
    size_t nindex;
    size_t rotor;            /* where the next over-full scan starts (fairness) */
} poll_state;

static int pl_init(braid__poller *p) {
    poll_state *s = braid_calloc(1, sizeof *s);
    if (!s) return BRAID_ENOMEM;
    p->state = s;
    return 0;
}

static void pl_destroy(braid__poller *p) {
    poll_state *s = p->state;
    braid_free(s->pfds);
    braid_free(s->tags);
    braid_free(s->index);
    braid_free(s);
    p->state = NULL;
}

static int reserve(poll_state *s, int fd) {
    if ((size_t)fd >= s->nindex) {
        size_t n = s->nindex ? s->nindex : 64;
        while (n <= (size_t)fd) n *= 2;
        int32_t *ix = braid_realloc(s->index, n * sizeof *ix);
        if (!ix) return BRAID_ENOMEM;
        for (size_t i = s->nindex; i < n; i++) ix[i] = -1;
        s->index = ix;
        s->nindex = n;
    }
    if (s->n == s->cap) {
        size_t n = s->cap ? s->cap * 2 : 64;
        struct pollfd *p = braid_realloc(s->pfds, n * sizeof *p);
        if (!p) return BRAID_ENOMEM;
        s->pfds = p;
        uint64_t *t = braid_realloc(s->tags, n * sizeof *t);
        if (!t) return BRAID_ENOMEM;
        s->tags = t;
        s->cap = n;
    }
    return 0;
}

static int pl_update(braid__poller *p, int fd, unsigned old_mask, unsigned new_mask, uint64_t tag) {
    poll_state *s = p->state;
    (void)old_mask;
    int32_t at = (size_t)fd < s->nindex ? s->index[fd] : -1;
    if (!new_mask) {
        if (at < 0) return 0;
        size_t last = --s->n;
        if ((size_t)at != last) {
            s->pfds[at] = s->pfds[last];
            s->tags[at] = s->tags[last];
            s->index[s->pfds[at].fd] = at;
        }
        s->index[fd] = -1;
        return 0;
    }
    if (at < 0) {
        int rc = reserve(s, fd);
        if (rc < 0) return rc;
        at = (int32_t)s->n++;
        s->index[fd] = at;
        s->pfds[at].fd = fd;
    }
    s->pfds[at].events = (short)(((new_mask & BRAID__POLL_READ) ? POLLIN : 0) |
                                 ((new_mask & BRAID__POLL_WRITE) ? POLLOUT : 0));
    s->pfds[at].revents = 0;
    s->tags[at] = tag;
    return 0;
}

static int pl_poll(braid__poller *p, uint64_t timeout_ns) {
    poll_state *s = p->state;
    int ms;
    if (timeout_ns == BRAID_FOREVER) ms = -1;
    else if (timeout_ns >= (uint64_t)INT_MAX * 1000000ull) ms = INT_MAX;
    else ms = (int)((timeout_ns + 999999) / 1000000);   /* round up: never early */
    int n = poll(s->pfds, (nfds_t)s->n, ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    /* More ready fds than one batch holds: start where the last over-full scan
     * stopped, so high positions are not starved by low ones. */
    size_t start = (size_t)n > BRAID__MAX_BATCH && s->n ? s->rotor % s->n : 0;
    int found = 0;
    for (size_t k = 0; k < s->n && found < n; k++) {
        size_t i = (start + k) % s->n;
        short re = s->pfds[i].revents;
        if (!re) continue;
        found++;
        unsigned ev = 0;
        if (re & (POLLIN | POLLPRI)) ev |= BRAID__POLL_READ;
        if (re & POLLOUT) ev |= BRAID__POLL_WRITE;
        if (re & (POLLERR | POLLNVAL)) ev |= BRAID__POLL_ERROR;
        if (re & POLLHUP) ev |= BRAID__POLL_HUP;
        if (braid__poller_push(p, s->tags[i], ev) < 0) { s->rotor = i; break; }
    }
    return n;
}

static int pl_fd(const braid__poller *p) { (void)p; return BRAID_ENOSYS; }

const braid__poller_ops braid__poller_poll = {
    .name = "poll", .init = pl_init, .destroy = pl_destroy, .update = pl_update, .poll = pl_poll,
    .backend_fd = pl_fd,
};
