/* Descriptor transports: TCP and Unix stream sockets, pipes and adopted fds.
 *
 * Readiness watchers drive both directions on every backend. The read path is
 * one function (fd_read) that fills the loop's shared buffer and hands it to
 * braid__transport_data; the completion path below hands the same function
 * the chunks of a provided-buffer ring. Writes leave from fd_flush: the
 * whole contiguous buffer in one send() (or a sendmsg carrying descriptors),
 * and write interest is asked for only after the kernel said EAGAIN.
 *
 * On a loop with a completion service (io_uring: loop/completion.h) TCP
 * transports go by completions instead: a
 * multishot recv picks buffers from a per-loop provided-buffer ring (each
 * chunk handed to the protocol and the buffer given back when data_received
 * returns; chunks for a paused reader are pinned or copied), and the write
 * buffer leaves as a send submitted with the loop's next wait. No read()
 * or epoll-style readiness per request: one io_uring_enter per iteration
 * carries everything — except where a send() is cheaper: a large write with
 * nothing queued, a buffer past its high watermark, a quiet loop (one
 * receive per iteration). The buffer a send points into is pinned (see
 * braid_transport.wbuf_pinned). Ops outlive a closed transport until their
 * final completion: the memory waits as a "zombie" (freed by the final
 * completion, or with the loop), and so does the descriptor. An op names the
 * descriptor by number and the kernel looks the number up only when the op
 * is submitted (with the next wait): closed at once, the number could be
 * reused in the same iteration (an accept) and a queued send would write
 * this connection's bytes into the new one, a queued recv read the new
 * one's. So a closed transport's descriptor is closed only once its last op
 * has reported its final completion (ur_release_fd). Unix sockets (descriptor
 * passing needs recvmsg) and pipes keep the readiness path. On by default;
 * BRAID_STREAM_COMPLETIONS=0 in the environment (read once per loop) turns it off. */
#include "net/net_internal.h"
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <unistd.h>
#include "loop/completion.h"

#define MAX_FDS_PER_MSG 16
/* The per-loop buffer ring. Incremental (kernel 6.12): 64 KiB buffers whose
 * bytes every connection's receives share; 4 at first (256 KiB), and one
 * more per 16 connections on completions (doubling), up to 256 (16 MiB). A
 * small ring is also what keeps bulk transfer fast: the kernel reads ahead
 * only what the ring holds (the rest waits in the socket, as with
 * readiness), so a paused reader holds little and the buffers stay in the
 * cache. When a burst runs it dry (-ENOBUFS) the receive is simply
 * submitted again. Without incremental consumption every receive takes a
 * whole buffer, so the ring must hold one per connection active in an
 * iteration: 64 × 16 KiB at first (1 MiB), doubling on -ENOBUFS up to 1024
 * (16 MiB). */
#define UR_INC_SIZE (64u * 1024)
#define UR_INC_COUNT 4u
#define UR_INC_MAX 256u
#define UR_INC_CONNS_PER_BUF 16u
#define UR_PLAIN_SIZE (16u * 1024)
#define UR_PLAIN_COUNT 64u
#define UR_PLAIN_MAX 1024u
#define UR_HOLD_MAX (64u * 1024)   /* bytes a paused transport holds before cancelling its recv */

/* A chunk held for a paused reader: pinned in the ring (bid >= 0), or a
 * copy of its own (bid < 0) when the ring had no room for more pins. */
struct ur_seg { char *p; unsigned len; int bid; };

typedef struct fd_transport {
    braid_transport base;
    braid__fd_kind kind;
    int rfd, wfd;                  /* equal for sockets; -1 once closed */
    braid_watch rw, ww;            /* ww only when wfd != rfd */
    bool write_blocked;            /* the kernel said EAGAIN: wait for writable */
    bool read_disarmed;            /* paused and data came: read interest dropped */
    bool ur;                       /* reads and writes by io_uring completions */
    bool rdone;                    /* the recv ended for good (EOF or error) */
    bool eof_pending;              /* EOF seen while paused: after the held data */
    bool zombie;                   /* freed by braid; waits for its final CQEs */
    bool held_queued;
    int zfd;                       /* closed, but ops still name it: closed after their final completions */
    braid__completion_op rop, wop;      /* multishot recv; send */
    char *zbuf;                    /* the pinned write buffer, detached at close */
    struct ur_seg *held;           /* chunks that arrived while paused, in order */
    int hfirst, nheld, capheld;    /* held[hfirst, nheld) still to deliver */
    size_t hlen;                   /* their bytes */
    braid_soon held_node;
    struct fd_transport *znext, *zprev;
} fd_transport;

int braid__set_nonblock(int fd) {
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -errno;
    return 0;
}

static bool split(const fd_transport *ft) { return ft->rfd != ft->wfd; }

/* Interest follows state: read while the protocol wants data, write only
 * while the kernel is full. */
static void ur_update_reading(fd_transport *ft);
static void ur_flush(fd_transport *ft);

/* Pausing is lazy (libuv's trick): a paused transport keeps its read
 * interest until data actually arrives while it is paused. A pause that ends
 * before that — the flow-control cycle of a busy connection: pause at the
 * high watermark, flush, resume — costs no system call. */
static bool only_paused(const braid_transport *t) {
    return (t->state & (BRAID__T_PAUSED | BRAID__T_READ_SHUT | BRAID__T_CLOSED |
                        BRAID__T_DISCONNECTING)) == BRAID__T_PAUSED;
}

static void update_watch(fd_transport *ft) {
    braid_transport *t = &ft->base;
    if (t->state & BRAID__T_CLOSED) return;
    if (ft->ur) { ur_update_reading(ft); return; }
    bool reading = braid__transport_reading(t);
    if (reading) ft->read_disarmed = false;
    unsigned rmask = reading || (only_paused(t) && !ft->read_disarmed) ? BRAID_WATCH_READ : 0;
    unsigned wmask = ft->write_blocked ? BRAID_WATCH_WRITE : 0;
    int rc = 0;
    if (!split(ft)) {
        rc = braid_watch_set_interest(&ft->rw, rmask | wmask);
    } else {
        if (ft->rfd >= 0) rc = braid_watch_set_interest(&ft->rw, rmask);
        if (rc == 0 && ft->wfd >= 0) rc = braid_watch_set_interest(&ft->ww, wmask);
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
    braid__transport_read_begin(t);
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
    braid__transport_read_end(t);
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
    if (ft->ur) { ur_flush(ft); return; }
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
    if (ft->ur) return BRAID_ENOSYS;       /* completions: no write readiness to wait on */
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
    if ((ev & BRAID_WATCH_WRITE) && (is_write_fd || !split(ft))) {
        ft->write_blocked = false;
        fd_flush(t);
        if (t->wlen == 0 && !(t->state & BRAID__T_CLOSED))
            braid__transport_wrote(t, 0);      /* pending close / shutdown */
        if (!ft->write_blocked) update_watch(ft);
    }
    if ((ev & BRAID_WATCH_READ) && !is_write_fd && !(t->state & BRAID__T_CLOSED)) {
        if (braid__transport_reading(t)) {
            fd_read(ft);
        } else if (!ft->read_disarmed) {
            ft->read_disarmed = true;          /* paused, and data is here: now drop interest */
            update_watch(ft);
        }
    }
}

static void on_rw(braid_watch *w, unsigned ev, void *arg) { (void)w; on_event(arg, ev, false); }
static void on_ww(braid_watch *w, unsigned ev, void *arg) { (void)w; on_event(arg, ev, true); }

/* ---- completions (TCP on a loop with a completion service) ------------------------------ */
/* Per-loop state of fd transports on completions (under fd_key), made by
 * the first TCP transport of a loop that has a completion service. */
typedef struct fd_loop_state {
    braid__completion_bufs *ubufs;    /* the provided-buffer ring */
    int uring;                        /* 0 not decided, 1 completions, -1 readiness */
    unsigned ur_conns;                /* transports on completions (sizes the ring) */
    uint64_t ur_iter;                 /* the loop iteration ur_recvs counts */
    unsigned ur_recvs, ur_prev_recvs; /* receive completions in it, and in the last busy one */
    fd_transport *zombies;            /* transports waiting for their final completions */
} fd_loop_state;

static void fd_state_free(braid_loop *loop, void *ptr);
static braid_loop_key fd_key = BRAID_LOOP_KEY_INIT("fd transports", fd_state_free, NULL);

static inline fd_loop_state *fd_state(braid_loop *loop) { return braid__loop_data(loop, &fd_key); }

/* The loop's buffer ring, made on first use; NULL means "use readiness". */
static braid__completion_bufs *ur_bufs(braid_loop *loop) {
    if (!braid__completion_available(loop)) return NULL;
    fd_loop_state *st = fd_state(loop);
    if (!st) {
        if (!(st = braid_calloc(1, sizeof *st))) return NULL;
        if (braid_loop_set_data(loop, &fd_key, st) < 0) {
            braid_free(st);
            return NULL;
        }
    }
    if (st->uring < 0) return NULL;
    if (st->uring == 0) {
        const char *e = getenv("BRAID_STREAM_COMPLETIONS");
        const char *ring = getenv("BRAID_STREAM_RING");
        bool plain = ring && !strcmp(ring, "plain");
        braid__completion_bufs *b = NULL;
        /* On by default; BRAID_STREAM_COMPLETIONS=0 keeps TCP on readiness;
         * BRAID_STREAM_RING=plain declines incremental buffers. */
        int rc = BRAID_ENOSYS;
        if (!(e && e[0] == '0') && braid__completion_have_recv_multishot()) {
            rc = plain ? BRAID_ENOSYS
                       : braid__completion_bufs_new(loop, UR_INC_COUNT, UR_INC_MAX, UR_INC_SIZE, BRAID__COMPLETION_BUFS_INC, &b);
            if (rc == 0 && !braid__completion_bufs_incremental(b)) {
                braid__completion_bufs_free(b);      /* the kernel has no incremental rings */
                b = NULL;
                rc = BRAID_ENOSYS;
            }
            if (rc < 0 && rc != BRAID_ENOMEM)
                rc = braid__completion_bufs_new(loop, UR_PLAIN_COUNT, UR_PLAIN_MAX, UR_PLAIN_SIZE, 0, &b);
        }
        if (rc < 0) {
            st->uring = -1;            /* decided once per loop (ENOMEM included) */
            return NULL;
        }
        braid__completion_bufs_internal(b);
        st->ubufs = b;
        st->uring = 1;
    }
    return st->ubufs;
}

static void ur_seg_release(fd_transport *ft, struct ur_seg *g) {
    if (g->bid >= 0) {
        fd_loop_state *st = fd_state(ft->base.loop);
        if (st && st->ubufs) braid__completion_bufs_unpin(st->ubufs, (unsigned)g->bid);
    } else {
        braid_free(g->p);
    }
}

static void ur_drop_held(fd_transport *ft) {
    for (int i = ft->hfirst; i < ft->nheld; i++) ur_seg_release(ft, &ft->held[i]);
    braid_free(ft->held);
    ft->held = NULL;
    ft->hfirst = ft->nheld = ft->capheld = 0;
    ft->hlen = 0;
}

/* The descriptor of a closed transport goes once no op names it any more
 * (see the top of the file). */
static void ur_release_fd(fd_transport *ft) {
    if (ft->zfd < 0 || braid__completion_op_active(&ft->rop) || braid__completion_op_active(&ft->wop)) return;
    close(ft->zfd);
    ft->zfd = -1;
}

static void ur_zombie_maybe_free(fd_transport *ft) {
    ur_release_fd(ft);
    if (braid__completion_op_active(&ft->rop) || braid__completion_op_active(&ft->wop) || ft->held_queued)
        return;
    fd_loop_state *st = fd_state(ft->base.loop);
    if (ft->zprev) ft->zprev->znext = ft->znext;
    else st->zombies = ft->znext;
    if (ft->znext) ft->znext->zprev = ft->zprev;
    braid_free(ft->zbuf);
    braid_free(ft->base.wbuf_retired);
    ur_drop_held(ft);
    braid_free(ft);
}

braid__completion_bufs *braid__fd_ring(braid_loop *loop) {
    fd_loop_state *st = fd_state(loop);
    return st && st->uring == 1 ? st->ubufs : NULL;
}

static void fd_state_free(braid_loop *loop, void *ptr) {
    fd_loop_state *st = ptr;
    BRAID__UNUSED(loop);
    for (fd_transport *ft = st->zombies, *next; ft; ft = next) {
        next = ft->znext;
        /* The ring goes with the loop; the kernel cancels what is left. */
        if (ft->zfd >= 0) close(ft->zfd);
        braid_free(ft->zbuf);
        braid_free(ft->base.wbuf_retired);
        ur_drop_held(ft);
        braid_free(ft);
    }
    if (st->ubufs) braid__completion_bufs_free(st->ubufs);
    braid_free(st);
}

static void ur_on_recv(braid__completion_op *op, int res, unsigned flags);

static void ur_submit_recv(fd_transport *ft) {
    fd_loop_state *st = fd_state(ft->base.loop);
    int rc = braid__completion_recv_multishot(ft->base.loop, &ft->rop, ft->rfd, st->ubufs);
    if (rc < 0) braid__transport_lost(&ft->base, rc);
}

/* Deliver the chunks held while paused (in order, each as it came), then
 * EOF if it came meanwhile. */
static void ur_held_cb(void *arg) {
    fd_transport *ft = arg;
    braid_transport *t = &ft->base;
    ft->held_queued = false;
    if (ft->zombie) { ur_zombie_maybe_free(ft); return; }
    while (ft->hfirst < ft->nheld && braid__transport_reading(t)) {
        struct ur_seg g = ft->held[ft->hfirst++];
        ft->hlen -= g.len;
        braid__transport_read_begin(t);
        braid__transport_data(t, g.p, g.len);
        braid__transport_read_end(t);
        ur_seg_release(ft, &g);
    }
    if (t->state & BRAID__T_CLOSED) { ur_drop_held(ft); return; }
    if (ft->hfirst == ft->nheld) ur_drop_held(ft);
    if (ft->hlen || !braid__transport_reading(t)) return;
    if (ft->eof_pending) { ft->eof_pending = false; braid__transport_eof(t); return; }
    if (!ft->rdone && !braid__completion_op_active(&ft->rop)) ur_submit_recv(ft);
}

static void ur_update_reading(fd_transport *ft) {
    braid_transport *t = &ft->base;
    if (braid__transport_reading(t)) {
        if (ft->nheld || ft->eof_pending) {
            if (!ft->held_queued) {
                ft->held_queued = true;
                braid_loop_soon_node(t->loop, &ft->held_node);
            }
        } else if (!ft->rdone && !braid__completion_op_active(&ft->rop)) {
            ur_submit_recv(ft);
        }
    } else if (braid__completion_op_active(&ft->rop) && !(only_paused(t) && ft->hlen < UR_HOLD_MAX)) {
        braid__completion_cancel(&ft->rop);   /* late chunks are held (paused) or dropped */
    }
}

/* Keep a chunk that arrived while paused (or behind chunks still held):
 * pinned in the ring if it has room, else copied. */
static int ur_hold(fd_transport *ft, braid__completion_bufs *b, unsigned flags, const char *data, size_t len) {
    if (ft->nheld == ft->capheld) {
        if (ft->hfirst) {
            memmove(ft->held, ft->held + ft->hfirst, (size_t)(ft->nheld - ft->hfirst) * sizeof *ft->held);
            ft->nheld -= ft->hfirst;
            ft->hfirst = 0;
        } else {
            int cap = ft->capheld ? ft->capheld * 2 : 8;
            void *h = braid_realloc(ft->held, (size_t)cap * sizeof *ft->held);
            if (!h) return BRAID_ENOMEM;
            ft->held = h;
            ft->capheld = cap;
        }
    }
    struct ur_seg *g = &ft->held[ft->nheld];
    if (braid__completion_bufs_pin(b, flags)) {
        g->p = (char *)data;
        g->bid = (int)braid__completion_bid(flags);
    } else {
        if (!(g->p = braid_malloc(len))) return BRAID_ENOMEM;
        memcpy(g->p, data, len);
        g->bid = -1;
    }
    g->len = (unsigned)len;
    ft->nheld++;
    ft->hlen += len;
    return 0;
}

static void ur_on_recv(braid__completion_op *op, int res, unsigned flags) {
    fd_transport *ft = op->data;
    braid_transport *t = &ft->base;
    fd_loop_state *st = fd_state(t->loop);
    bool final = !(flags & BRAID__COMPLETION_MORE);
    bool live = !ft->zombie && !(t->state & BRAID__T_CLOSED);
    const char *data = (flags & BRAID__COMPLETION_BUFFER) ? braid__completion_bufs_data(st->ubufs, flags) : NULL;
    if (res > 0) {
        uint64_t iter = braid_loop_iteration(t->loop);
        if (st->ur_iter != iter) {
            st->ur_iter = iter;
            st->ur_prev_recvs = st->ur_recvs;
            st->ur_recvs = 0;
        }
        st->ur_recvs++;
    }
    if (res > 0 && data) {
        bool wanted = live && !(t->state & (BRAID__T_READ_SHUT | BRAID__T_DISCONNECTING));
        if (wanted && braid__transport_reading(t) && !ft->nheld) {
            braid__transport_read_begin(t);
            braid__transport_data(t, data, (size_t)res);
            braid__transport_read_end(t);
        } else if (wanted) {
            /* Paused (the cancel is on its way), or older chunks still wait
             * to be delivered: keep this one, in order. */
            if (ur_hold(ft, st->ubufs, flags, data, (size_t)res) < 0) braid__transport_lost(t, BRAID_ENOMEM);
            /* A pause is lazy (as with readiness): the recv goes on until
             * some bytes wait, then it is cancelled. */
            else if (ft->hlen >= UR_HOLD_MAX && !braid__transport_reading(t)) braid__completion_cancel(&ft->rop);
        }
    } else if (res == 0 && live) {
        ft->rdone = true;
        if (braid__transport_reading(t) && !ft->nheld) braid__transport_eof(t);
        else ft->eof_pending = true;     /* after the held bytes, once reading again */
    } else if (res < 0 && res != -ENOBUFS && res != -ECANCELED && live) {
        ft->rdone = true;
        braid__transport_lost(t, res);
    }
    if (flags & BRAID__COMPLETION_BUFFER) braid__completion_bufs_consumed(st->ubufs, flags, res > 0 ? res : 0);
    /* The ring ran dry: a burst wanted more buffers than it has. A plain
     * ring needs a buffer per active connection: grow it. */
    if (res == -ENOBUFS && !braid__completion_bufs_incremental(st->ubufs)) (void)braid__completion_bufs_grow(st->ubufs);
    if (!final) return;
    ur_release_fd(ft);
    if (ft->zombie) { ur_zombie_maybe_free(ft); return; }
    /* Ended without EOF (the ring ran dry, or a cancel): go on if wanted. */
    if (!(t->state & BRAID__T_CLOSED)) update_watch(ft);
}

static void ur_on_send(braid__completion_op *op, int res, unsigned flags);

static ssize_t fd_try_write(braid_transport *t, const void *buf, size_t len);

static void ur_flush(fd_transport *ft) {
    braid_transport *t = &ft->base;
    if (braid__completion_op_active(&ft->wop) || !t->wlen || (t->state & BRAID__T_CLOSED)) return;
    fd_loop_state *st = fd_state(t->loop);
    if ((t->state & BRAID__T_EARLY_FLUSH) || (st->ur_recvs <= 1 && st->ur_prev_recvs <= 1)) {
        /* From inside write, past the high watermark: a send SQE would only
         * leave with the next wait, so hand the kernel what it takes now.
         * Or a quiet loop (one receive per iteration, a ping-pong): the
         * send's own completion would end the next wait at once and cost a
         * second trip round the loop; a send() is cheaper. Busy loops (many
         * receives per iteration) batch their sends into the wait. */
        ssize_t n = fd_try_write(t, t->wbuf + t->whead, t->wlen);
        if (n < 0) { braid__transport_lost(t, (int)n); return; }
        if (n > 0) braid__transport_wrote(t, (size_t)n);
        if (!t->wlen || (t->state & BRAID__T_CLOSED)) return;   /* a producer may have closed it */
        /* the kernel is full: the rest by a send SQE, done when it drains */
    }
    int rc = braid__completion_send(t->loop, &ft->wop, ft->wfd, t->wbuf + t->whead, t->wlen, MSG_NOSIGNAL);
    if (rc < 0) { braid__transport_lost(t, rc); return; }
    t->wbuf_pinned = true;
}

static void ur_on_send(braid__completion_op *op, int res, unsigned flags) {
    (void)flags;
    fd_transport *ft = op->data;
    braid_transport *t = &ft->base;
    t->wbuf_pinned = false;
    braid_free(t->wbuf_retired);
    t->wbuf_retired = NULL;
    braid_free(ft->zbuf);
    ft->zbuf = NULL;
    ur_release_fd(ft);
    if (ft->zombie) { ur_zombie_maybe_free(ft); return; }
    if (t->state & BRAID__T_CLOSED) return;
    if (res < 0) {
        if (res == -EAGAIN || res == -EINTR) { ur_flush(ft); return; }
        braid__transport_lost(t, res);
        return;
    }
    braid__transport_wrote(t, (size_t)res);
    if (!(t->state & BRAID__T_CLOSED)) ur_flush(ft);
}

static void ur_close(fd_transport *ft) {
    braid_transport *t = &ft->base;
    if (braid__completion_op_active(&ft->rop)) {
        braid__completion_op_unref(&ft->rop);
        braid__completion_cancel(&ft->rop);
    }
    if (braid__completion_op_active(&ft->wop)) {
        braid__completion_op_unref(&ft->wop);
        braid__completion_cancel(&ft->wop);
        /* the kernel may still read it: ours until the final CQE */
        ft->zbuf = t->wbuf;
        t->wbuf = NULL;
        t->wcap = t->wlen = t->whead = 0;
        t->wbuf_pinned = false;
    }
    ur_drop_held(ft);
    ft->eof_pending = false;
}

/* vt->free: now, or once the last op reported. */
static bool ur_free(fd_transport *ft) {
    if (!braid__completion_op_active(&ft->rop) && !braid__completion_op_active(&ft->wop) && !ft->held_queued) {
        ur_release_fd(ft);
        braid_free(ft->zbuf);
        braid_free(ft->base.wbuf_retired);
        ur_drop_held(ft);
        return false;
    }
    fd_loop_state *st = fd_state(ft->base.loop);
    ft->zombie = true;
    ft->zprev = NULL;
    ft->znext = st->zombies;
    if (ft->znext) ft->znext->zprev = ft;
    st->zombies = ft;
    return true;
}

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
    if (ft->ur) {
        ur_close(ft);
        if (braid__completion_op_active(&ft->rop) || braid__completion_op_active(&ft->wop)) {
            /* Ops (queued or in flight) name the number: it stays ours
             * until their final completions (ur_release_fd). */
            braid_watch_close(&ft->rw);
            ft->zfd = ft->rfd;
            ft->rfd = ft->wfd = -1;
            return;
        }
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

/* Readiness kinds only (io_uring TCP sends by completion). */
static ssize_t fd_try_write(braid_transport *t, const void *buf, size_t len) {
    fd_transport *ft = (fd_transport *)t;
    /* Completions too: a large write with nothing queued or in flight goes
     * out by send() at once, uncopied — no SQE, no copy into the buffer;
     * what the kernel does not take is queued and leaves by a send SQE. */
    if (ft->ur && braid__completion_op_active(&ft->wop)) return 0;
    if (ft->write_blocked || ft->wfd < 0) return 0;
    for (;;) {
        ssize_t n = ft->kind == BRAID__FD_PIPE ? write(ft->wfd, buf, len)
                                               : send(ft->wfd, buf, len, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return -errno;
    }
}

static void fd_free(braid_transport *t) {
    fd_transport *ft = (fd_transport *)t;
    if (ft->ur) {
        fd_loop_state *st = fd_state(t->loop);
        st->ur_conns--;
        if (ur_free(ft)) return;
    }
    braid_free(t);
}

static const braid__transport_vt vt_tcp = {
    "tcp", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free, fd_try_write };
static const braid__transport_vt vt_unix = {
    "unix", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free, fd_try_write };
static const braid__transport_vt vt_pipe = {
    "pipe", fd_flush, fd_update_reading, fd_shutdown_write, fd_close, fd_get_addr, fd_set_option, fd_free, fd_try_write };

int braid__fd_transport_new(braid_loop *loop, int rfd, int wfd, braid__fd_kind kind,
                            bool nonblocking, braid_transport **out) {
    fd_transport *ft = braid_calloc(1, sizeof *ft);
    if (!ft) return BRAID_ENOMEM;
    ft->zfd = -1;
    int rc;
    if (rfd >= 0 && !nonblocking && (rc = braid__set_nonblock(rfd)) < 0) goto fail;
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
    if (kind == BRAID__FD_TCP && rfd >= 0 && rfd == wfd && ur_bufs(loop)) {
        ft->ur = true;
        fd_loop_state *st = fd_state(loop);
        if (++st->ur_conns > UR_INC_CONNS_PER_BUF * braid__completion_bufs_count(st->ubufs) &&
            braid__completion_bufs_incremental(st->ubufs))
            (void)braid__completion_bufs_grow(st->ubufs);   /* more connections, more buffers */
        braid__completion_op_init(&ft->rop, ur_on_recv, ft);
        braid__completion_op_init(&ft->wop, ur_on_send, ft);
        braid__completion_op_internal(&ft->rop);   /* the transport is the handle */
        braid__completion_op_internal(&ft->wop);
        ft->held_node.fn = ur_held_cb;
        ft->held_node.arg = ft;
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
    /* Queue the message first: a queued message keeps the write below off
     * the direct (uncopied) path, so the byte cannot leave without its fds. */
    braid__fdmsg **pp = &t->fdq;
    while (*pp) pp = &(*pp)->next;
    *pp = m;
    int rc = braid_transport_write(t, buf, len);
    if (rc < 0) {
        if (t->state & BRAID__T_CLOSED) return rc;   /* lost: the queue is freed with t */
        *pp = NULL;
        for (int j = 0; j < m->n; j++) close(m->fds[j]);
        braid_free(m);
        return rc;
    }
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

int braid_transport_adopt(braid_loop *loop, int fd, braid_protocol *p) {
    if (fd < 0 || !p) return BRAID_EINVAL;
    braid_transport *t;
    int rc = braid__fd_transport_new(loop, fd, fd, detect_kind(fd), false, &t);
    if (rc < 0) return rc;
    braid__transport_attach(t, p);
    return 0;
}

int braid_transport_adopt_pipes(braid_loop *loop, int rfd, int wfd, braid_protocol *p) {
    if ((rfd < 0 && wfd < 0) || !p || rfd == wfd) return BRAID_EINVAL;
    braid_transport *t;
    int rc = braid__fd_transport_new(loop, rfd, wfd, BRAID__FD_PIPE, false, &t);
    if (rc < 0) return rc;
    braid__transport_attach(t, p);
    return 0;
}
