/* UDP sockets: batched receive with recvmmsg, immediate send.
 *
 * The receive buffers (batch x max_datagram) belong to the socket, allocated
 * once at open: recvmmsg needs them all at once. A callback may close the
 * socket mid-batch; the close is then deferred until the batch loop has
 * stopped touching it. */
#include "net/net_internal.h"
#include <braid/dgram.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

struct braid_dgram {
    braid_loop *loop;
    const braid_dgram_ops *ops;
    void *arg;
    int fd;
    braid_watch watch;
    braid_handle handle;
    int batch;
    size_t max;
    char *bufs;
    struct mmsghdr *msgs;
    struct iovec *iovs;
    braid_address *addrs;
    bool paused, connected, in_batch, close_pending;
    uint64_t received, calls;
};

int braid_address_from_numeric(const char *host, int port, braid_address *out) {
    return braid__numeric_address(host, port, 0, out);
}

static void dgram_free(braid_dgram *d) {
    braid_watch_close(&d->watch);
    close(d->fd);
    braid_handle_close(d->loop, &d->handle);
    braid_free(d->bufs);
    braid_free(d->msgs);
    braid_free(d->iovs);
    braid_free(d->addrs);
    braid_free(d);
}

static void report(braid_dgram *d, int code) {
    if (d->ops->error) d->ops->error(d, code, d->arg);
}

static void on_readable(braid_watch *w, unsigned ev, void *arg) {
    braid_dgram *d = arg;
    (void)w; (void)ev;
    d->in_batch = true;
    /* A few batches per event at most: fairness with other sockets. */
    for (int round = 0; round < 4 && !d->paused && !d->close_pending; round++) {
        for (int i = 0; i < d->batch; i++) {
            d->iovs[i].iov_base = d->bufs + (size_t)i * d->max;
            d->iovs[i].iov_len = d->max;
            memset(&d->msgs[i].msg_hdr, 0, sizeof d->msgs[i].msg_hdr);
            d->msgs[i].msg_hdr.msg_iov = &d->iovs[i];
            d->msgs[i].msg_hdr.msg_iovlen = 1;
            d->msgs[i].msg_hdr.msg_name = &d->addrs[i].ss;
            d->msgs[i].msg_hdr.msg_namelen = sizeof d->addrs[i].ss;
        }
        int n = recvmmsg(d->fd, d->msgs, (unsigned)d->batch, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) report(d, -errno);
            break;
        }
        d->calls++;
        for (int i = 0; i < n && !d->close_pending; i++) {
            d->addrs[i].len = d->msgs[i].msg_hdr.msg_namelen;
            if (d->msgs[i].msg_hdr.msg_flags & MSG_TRUNC) {
                report(d, BRAID_EMSGSIZE);
                continue;
            }
            d->received++;
            if (d->ops->datagram_received)
                d->ops->datagram_received(d, d->iovs[i].iov_base, d->msgs[i].msg_len, &d->addrs[i], d->arg);
        }
        if (n < d->batch) break;
    }
    d->in_batch = false;
    if (d->close_pending) dgram_free(d);
}

int braid_dgram_open(braid_loop *loop, const braid_dgram_ops *ops, void *arg,
                     const braid_dgram_options *o, braid_dgram **out) {
    if (!o || !ops || !out) return BRAID_EINVAL;
    braid_address a;
    int rc = braid__numeric_address(o->host, o->port, o->ipv6 ? AF_INET6 : 0, &a);
    if (rc < 0) return rc;
    braid_dgram *d = braid_calloc(1, sizeof *d);
    if (!d) return BRAID_ENOMEM;
    d->loop = loop;
    d->ops = ops;
    d->arg = arg;
    d->batch = o->batch > 0 ? o->batch : 16;
    d->max = o->max_datagram ? o->max_datagram : 65536;
    d->bufs = braid_malloc((size_t)d->batch * d->max);
    d->msgs = braid_calloc((size_t)d->batch, sizeof *d->msgs);
    d->iovs = braid_calloc((size_t)d->batch, sizeof *d->iovs);
    d->addrs = braid_calloc((size_t)d->batch, sizeof *d->addrs);
    d->fd = -1;
    if (!d->bufs || !d->msgs || !d->iovs || !d->addrs) { rc = BRAID_ENOMEM; goto fail; }
    d->fd = socket(a.ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->fd < 0) { rc = -errno; goto fail; }
    int on = 1;
    if (o->reuseport && setsockopt(d->fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0) { rc = -errno; goto fail; }
    if (o->broadcast && setsockopt(d->fd, SOL_SOCKET, SO_BROADCAST, &on, sizeof on) < 0) { rc = -errno; goto fail; }
    if (o->ipv6) setsockopt(d->fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
    if (bind(d->fd, (struct sockaddr *)&a.ss, a.len) < 0) { rc = -errno; goto fail; }
    if ((rc = braid_watch_init(loop, &d->watch, d->fd, on_readable, d)) < 0) goto fail;
    if ((rc = braid_watch_set_interest(&d->watch, BRAID_WATCH_READ)) < 0) { braid_watch_close(&d->watch); goto fail; }
    braid_handle_open(loop, &d->handle, "udp");
    *out = d;
    return 0;
fail:
    if (d->fd >= 0) close(d->fd);
    braid_free(d->bufs);
    braid_free(d->msgs);
    braid_free(d->iovs);
    braid_free(d->addrs);
    braid_free(d);
    return rc;
}

int braid_dgram_send_to(braid_dgram *d, const void *buf, size_t len, const braid_address *to) {
    if (d->close_pending) return BRAID_ESHUTDOWN;
    ssize_t n;
    do {
        n = to ? sendto(d->fd, buf, len, MSG_NOSIGNAL, (const struct sockaddr *)&to->ss, to->len)
               : send(d->fd, buf, len, MSG_NOSIGNAL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return errno == EWOULDBLOCK ? BRAID_EAGAIN : -errno;
    return 0;
}

int braid_dgram_send(braid_dgram *d, const void *buf, size_t len) {
    if (!d->connected) return BRAID_EINVAL;
    return braid_dgram_send_to(d, buf, len, NULL);
}

int braid_dgram_connect(braid_dgram *d, const braid_address *peer) {
    if (connect(d->fd, (const struct sockaddr *)&peer->ss, peer->len) < 0) return -errno;
    d->connected = true;
    return 0;
}

int braid_dgram_address(const braid_dgram *d, braid_address *out) {
    memset(out, 0, sizeof *out);
    out->len = sizeof out->ss;
    return getsockname(d->fd, (struct sockaddr *)&out->ss, &out->len) < 0 ? -errno : 0;
}

void braid_dgram_pause_reading(braid_dgram *d) {
    if (d->paused) return;
    d->paused = true;
    braid_watch_set_interest(&d->watch, 0);
}

void braid_dgram_resume_reading(braid_dgram *d) {
    if (!d->paused) return;
    d->paused = false;
    braid_watch_set_interest(&d->watch, BRAID_WATCH_READ);
}

uint64_t braid_dgram_received(const braid_dgram *d) { return d->received; }
uint64_t braid_dgram_recv_calls(const braid_dgram *d) { return d->calls; }

void braid_dgram_close(braid_dgram *d) {
    if (!d || d->close_pending) return;
    if (d->in_batch) {
        d->close_pending = true;
        braid_watch_set_interest(&d->watch, 0);
        return;
    }
    dgram_free(d);
}
