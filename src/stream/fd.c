/* Descriptor transports: TCP and Unix stream sockets, pipes and adopted fds.
 *
 * Readiness watchers drive both directions on every backend. The read path is
 * one function (fd_read) that fills the loop's shared buffer and hands it to
 * braid__transport_data; an io_uring completion path would call the same
 * braid__transport_data with its own buffer. Writes leave from fd_flush: the
 * whole contiguous buffer in one send() (or a sendmsg carrying descriptors),
 * and write interest is asked for only after the kernel said EAGAIN. */
#include "stream_internal.h"
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FDS_PER_MSG 16

typedef struct fd_transport {
    braid_transport base;
    braid__fd_kind kind;
    int rfd, wfd;                  /* equal for sockets; -1 once closed */
    braid_watch rw, ww;            /* ww only when wfd != rfd */
    bool write_blocked;            /* the kernel said EAGAIN: wait for writable */
} fd_transport;

int braid__set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
    return 0;
}

static bool split(const fd_transport *ft) { return ft->rfd != ft->wfd; }

/* Interest follows state: read while the protocol wants data, write only
 * while the kernel is full. */
static void update_watch(fd_transport *ft) {
    braid_transport *t = &ft->base;
    if (t->state & BRAID__T_CLOSED) return;
    unsigned rmask = braid__transport_reading(t) ? BRAID_READ : 0;
    unsigned wmask = ft->write_blocked ? BRAID_WRITE : 0;
    int rc = 0;
    if (!split(ft)) {
        rc = braid_watch_set(&ft->rw, rmask | wmask);
    } else {
        if (ft->rfd >= 0) rc = braid_watch_set(&ft->rw, rmask);
        if (rc == 0 && ft->wfd >= 0) rc = braid_watch_set(&ft->ww, wmask);
    }
    if (rc < 0) braid__transport_lost(t, rc);
}

static void fd_update_reading(braid_transport *t) { update_watch((fd_transport *)t); }

/* recvmsg for Unix sockets: descriptors first, then the bytes they came with. */
static ssize_t recv_unix(fd_transport *ft, char *buf, size_t len) {
    union { char b[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)]; struct cmsghdr align; } cbuf;
    struct iovec v = { buf, len };
    struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = cbuf.b,
                         .msg_controllen = sizeof cbuf.b };
    ssize_t n = recvmsg(ft->rfd, &mh, MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int nfd = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int fds[MAX_FDS_PER_MSG];
        memcpy(fds, CMSG_DATA(c), (size_t)nfd * sizeof(int));
        braid_protocol *p = ft->base.protocol;
        if (p && p->ops && p->ops->fds_received && !(ft->base.state & BRAID__T_CLOSED)) {
            p->ops->fds_received(p, fds, nfd);
        } else {
            for (int i = 0; i < nfd; i++) close(fds[i]);
        }
    }
    return n;
}

/* The read path. A few reads per readiness event if each fills the buffer,
 * then back to the loop so one busy peer cannot starve the others. */
static void fd_read(fd_transport *ft) {
    braid_transport *t = &ft->base;
    char *buf = braid__stream_read_buffer(t->loop);
    if (!buf) { braid__transport_lost(t, BRAID_ENOMEM); return; }
    for (int i = 0; i < 4 && braid__transport_reading(t); i++) {
        ssize_t n = ft->kind == BRAID__FD_UNIX ? recv_unix(ft, buf, BRAID__READ_BUF)
                                               : read(ft->rfd, buf, BRAID__READ_BUF);
        if (n > 0) {
            braid__transport_data(t, buf, (size_t)n);
            if ((size_t)n < BRAID__READ_BUF) break;
            continue;
        }
        if (n == 0) { braid__transport_eof(t); break; }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) break;
        braid__transport_lost(t, -errno);
        break;
    }
}

static ssize_t send_with_fds(fd_transport *ft, braid__fdmsg *m, const char *buf, size_t len) {
    union { char b[CMSG_SPACE(sizeof(int) * MAX_FDS_PER_MSG)]; struct cmsghdr align; } cbuf;
    memset(&cbuf, 0, sizeof cbuf);
    struct iovec v = { (void *)buf, len };
    struct msghdr mh = { .msg_iov = &v, .msg_iovlen = 1, .msg_control = cbuf.b,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)m->n) };
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)m->n);
    memcpy(CMSG_DATA(c), m->fds, sizeof(int) * (size_t)m->n);
    return sendmsg(ft->wfd, &mh, MSG_NOSIGNAL);
}

static void fd_flush(braid_transport *t) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->write_blocked) return;             /* the writable event will call us */
    while (t->wlen && !(t->state & BRAID__T_CLOSED)) {
        const char *p = t->wbuf + t->whead;
        size_t len = t->wlen;
        braid__fdmsg *m = t->fdq;
        ssize_t n;
        if (m && m->at == t->sent_total) {
            if (m->next && m->next->at - t->sent_total < len) len = (size_t)(m->next->at - t->sent_total);
            n = send_with_fds(ft, m, p, len);
            if (n > 0) {
                t->fdq = m->next;
                for (int i = 0; i < m->n; i++) close(m->fds[i]);
                braid_free(m);
            }
        } else {
            if (m && m->at - t->sent_total < len) len = (size_t)(m->at - t->sent_total);
            n = ft->kind == BRAID__FD_PIPE ? write(ft->wfd, p, len)
                                           : send(ft->wfd, p, len, MSG_NOSIGNAL);
        }
        if (n > 0) {
            braid__transport_wrote(t, (size_t)n);
            if ((size_t)n < len) break;        /* the kernel is full: wait for writable */
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        braid__transport_lost(t, n < 0 ? -errno : BRAID_EPIPE);
        return;
    }
    if (t->state & BRAID__T_CLOSED) return;
    bool blocked = t->wlen > 0;
    if (blocked != ft->write_blocked) {
        ft->write_blocked = blocked;
        update_watch(ft);
    }
}

ssize_t braid__transport_sendfile(braid_transport *t, int in_fd, off_t *off, size_t count) {
    if (t->vt->flush != fd_flush) return BRAID_ENOSYS;
    fd_transport *ft = (fd_transport *)t;
    if (t->wlen || t->fdq || ft->wfd < 0 ||
        (t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING | BRAID__T_SHUT_PENDING | BRAID__T_WRITE_SHUT)))
        return BRAID_ENOSYS;
    if (ft->write_blocked) return BRAID_EAGAIN;
    for (;;) {
        ssize_t n = sendfile(ft->wfd, in_fd, off, count);
        if (n > 0) {
            t->written_total += (uint64_t)n;
            t->sent_total += (uint64_t)n;
            return n;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            ft->write_blocked = true;          /* on writable: wrote(0) calls the producer */
            update_watch(ft);
            return BRAID_EAGAIN;
        }
        if (n == 0) return BRAID_EPIPE;        /* the file shrank under us */
        int rc = -errno;
        if (rc == -EINVAL || rc == -ENOSYS) return BRAID_ENOSYS;   /* fd cannot sendfile */
        braid__transport_lost(t, rc);
        return rc;
    }
}

static void on_event(fd_transport *ft, unsigned ev, bool is_write_fd) {
    braid_transport *t = &ft->base;
    if ((ev & BRAID_WRITE) && (is_write_fd || !split(ft))) {
        ft->write_blocked = false;
        fd_flush(t);
        if (t->wlen == 0 && !(t->state & BRAID__T_CLOSED))
            braid__transport_wrote(t, 0);      /* pending close / shutdown */
        if (!ft->write_blocked) update_watch(ft);
    }
    if ((ev & BRAID_READ) && !is_write_fd && !(t->state & BRAID__T_CLOSED)) fd_read(ft);
}

static void on_rw(braid_watch *w, unsigned ev, void *arg) { (void)w; on_event(arg, ev, false); }
static void on_ww(braid_watch *w, unsigned ev, void *arg) { (void)w; on_event(arg, ev, true); }

static int fd_shutdown_write(braid_transport *t) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->kind == BRAID__FD_PIPE) {
        if (split(ft) && ft->wfd >= 0) {
            braid_watch_close(&ft->ww);
            close(ft->wfd);
            ft->wfd = -1;
        } else if (!split(ft)) {
            return shutdown(ft->wfd, SHUT_WR) < 0 ? -errno : 0;   /* a socketpair as "pipe" */
        }
        return 0;
    }
    return shutdown(ft->wfd, SHUT_WR) < 0 ? -errno : 0;
}

static void fd_close(braid_transport *t) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->kind == BRAID__FD_TCP && (t->state & BRAID__T_ABORTED)) {
        /* abort means reset: do not linger sending what the kernel still holds */
        struct linger lg = { 1, 0 };
        setsockopt(ft->rfd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    if (ft->rfd >= 0) { braid_watch_close(&ft->rw); close(ft->rfd); }
    if (split(ft) && ft->wfd >= 0) { braid_watch_close(&ft->ww); close(ft->wfd); }
    ft->rfd = ft->wfd = -1;
}

static int fd_get_addr(braid_transport *t, bool peer, braid_address *out) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->kind == BRAID__FD_PIPE) return BRAID_ENOSYS;
    memset(out, 0, sizeof *out);
    out->len = sizeof out->ss;
    int rc = peer ? getpeername(ft->rfd, (struct sockaddr *)&out->ss, &out->len)
                  : getsockname(ft->rfd, (struct sockaddr *)&out->ss, &out->len);
    return rc < 0 ? -errno : 0;
}

static int fd_set_option(braid_transport *t, int opt, int a, int b) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->kind != BRAID__FD_TCP) return BRAID_ENOSYS;
    int on = a ? 1 : 0;
    if (opt == BRAID__OPT_NODELAY)
        return setsockopt(ft->rfd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on) < 0 ? -errno : 0;
    if (setsockopt(ft->rfd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof on) < 0) return -errno;
    if (on && b > 0 && setsockopt(ft->rfd, IPPROTO_TCP, TCP_KEEPIDLE, &b, sizeof b) < 0) return -errno;
    return 0;
}

static void fd_free(braid_transport *t) { braid_free(t); }

static const braid__transport_vt vt_tcp = {
    "tcp", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free };
static const braid__transport_vt vt_unix = {
    "unix", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free };
static const braid__transport_vt vt_pipe = {
    "pipe", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free };

int braid__fd_transport_new(braid_loop *loop, int rfd, int wfd, braid__fd_kind kind,
                            braid_transport **out) {
    fd_transport *ft = braid_calloc(1, sizeof *ft);
    if (!ft) return BRAID_ENOMEM;
    int rc;
    if (rfd >= 0 && (rc = braid__set_nonblock(rfd)) < 0) goto fail;
    if (wfd >= 0 && wfd != rfd && (rc = braid__set_nonblock(wfd)) < 0) goto fail;
    /* A pipe pair with one side missing still needs distinct "fds" for split(). */
    ft->rfd = rfd;
    ft->wfd = wfd;
    ft->kind = kind;
    if (rfd >= 0 && (rc = braid_watch_init(loop, &ft->rw, rfd, on_rw, ft)) < 0) goto fail;
    if (wfd >= 0 && wfd != rfd && (rc = braid_watch_init(loop, &ft->ww, wfd, on_ww, ft)) < 0) {
        if (rfd >= 0) braid_watch_close(&ft->rw);
        goto fail;
    }
    braid__transport_init(&ft->base, loop,
                          kind == BRAID__FD_TCP ? &vt_tcp : kind == BRAID__FD_UNIX ? &vt_unix : &vt_pipe);
    if (kind == BRAID__FD_TCP) {
        /* Request/response protocols suffer from Nagle; braid's own write
         * batching already coalesces small writes. */
        int on = 1;
        setsockopt(rfd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    }
    if (rfd < 0) ft->base.state |= BRAID__T_READ_SHUT;
    if (wfd < 0) ft->base.state |= BRAID__T_WRITE_SHUT;
    update_watch(ft);
    *out = &ft->base;
    return 0;
fail:
    braid_free(ft);
    return rc;
}

/* ---- descriptors for Unix transports ------------------------------------------------- */
int braid_transport_send_fds(braid_transport *t, const int *fds, int n, const void *buf,
                             size_t len) {
    if (t->vt != &vt_unix) return BRAID_ENOSYS;
    if (n <= 0 || n > MAX_FDS_PER_MSG || len == 0) return BRAID_EINVAL;
    if (t->state & (BRAID__T_CLOSED | BRAID__T_DISCONNECTING | BRAID__T_SHUT_PENDING |
                    BRAID__T_WRITE_SHUT))
        return BRAID_ESHUTDOWN;
    braid__fdmsg *m = braid_malloc(sizeof *m + sizeof(int) * (size_t)n);
    if (!m) return BRAID_ENOMEM;
    m->next = NULL;
    m->n = 0;
    m->at = t->written_total;
    for (int i = 0; i < n; i++) {
        int d = fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
        if (d < 0) {
            int rc = -errno;
            for (int j = 0; j < m->n; j++) close(m->fds[j]);
            braid_free(m);
            return rc;
        }
        m->fds[m->n++] = d;
    }
    int rc = braid_transport_write(t, buf, len);
    if (rc < 0) {
        for (int j = 0; j < m->n; j++) close(m->fds[j]);
        braid_free(m);
        return rc;
    }
    braid__fdmsg **pp = &t->fdq;
    while (*pp) pp = &(*pp)->next;
    *pp = m;
    return 0;
}

/* ---- adopting ------------------------------------------------------------------------------ */
static braid__fd_kind detect_kind(int fd) {
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode)) {
        int dom = 0;
        socklen_t l = sizeof dom;
        if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l) == 0 && dom == AF_UNIX)
            return BRAID__FD_UNIX;
        return BRAID__FD_TCP;
    }
    return BRAID__FD_PIPE;
}

int braid_stream_adopt(braid_loop *loop, int fd, braid_protocol *p) {
    if (fd < 0 || !p) return BRAID_EINVAL;
    braid_transport *t;
    int rc = braid__fd_transport_new(loop, fd, fd, detect_kind(fd), &t);
    if (rc < 0) return rc;
    braid__transport_attach(t, p);
    return 0;
}

int braid_stream_adopt_pipes(braid_loop *loop, int rfd, int wfd, braid_protocol *p) {
    if ((rfd < 0 && wfd < 0) || !p || rfd == wfd) return BRAID_EINVAL;
    braid_transport *t;
    int rc = braid__fd_transport_new(loop, rfd, wfd, BRAID__FD_PIPE, &t);
    if (rc < 0) return rc;
    braid__transport_attach(t, p);
    return 0;
}
