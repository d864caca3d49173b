/* Listening sockets: TCP v4/v6 and Unix, accept in batches with a per-
 * iteration budget (one busy listener cannot starve established
 * connections), and the EMFILE defence.
 *
 * Running out of descriptors is the classic accept() spin: the listening
 * socket stays readable, accept fails with EMFILE, and a level-triggered
 * loop calls us again at once, forever, at 100 % CPU. braid keeps one spare
 * descriptor (/dev/null) per listener; on EMFILE/ENFILE it closes the spare,
 * accepts the waiting connection and closes it at once (the client sees a
 * clean close instead of hanging in the backlog), reopens the spare, and
 * stops watching the listener for a back-off period (50 ms, doubling to 1 s
 * while the shortage lasts) so the CPU stays idle until descriptors free up. */
#include "net/net_internal.h"
#include "net/sockets.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

struct braid_listener {
    braid_loop *loop;
    braid_factory *factory;
    int fd;
    int reserve_fd;                /* the spare descriptor for EMFILE */
    braid__fd_kind kind;
    int budget;
    braid_watch watch;
    braid_timer backoff;
    uint64_t backoff_base, backoff_cur;
    uint64_t accepted, emfile_events;
    unsigned interest;             /* BRAID_WATCH_READ, with BRAID_WATCH_EXCLUSIVE if asked */
    char *unix_path;               /* unlinked on close */
    braid_handle handle;
};

static int open_reserve(void) { return open("/dev/null", O_RDONLY | O_CLOEXEC); }

static void accept_one_and_drop(braid_listener *l) {
    if (l->reserve_fd >= 0) { close(l->reserve_fd); l->reserve_fd = -1; }
    int fd = accept4(l->fd, NULL, NULL, SOCK_CLOEXEC);
    if (fd >= 0) close(fd);
    l->reserve_fd = open_reserve();
}

static void backoff_fire(braid_timer *t, void *arg) {
    braid_listener *l = arg;
    (void)t;
    braid_watch_set_interest(&l->watch, l->interest);
}

static void on_accept(braid_watch *w, unsigned ev, void *arg) {
    braid_listener *l = arg;
    (void)w; (void)ev;
    for (int i = 0; i < l->budget; i++) {
        braid_address peer;
        memset(&peer, 0, sizeof peer);
        peer.len = sizeof peer.ss;
        int fd = accept4(l->fd, (struct sockaddr *)&peer.ss, &peer.len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            int err = errno;
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                l->emfile_events++;
                accept_one_and_drop(l);
                braid_watch_set_interest(&l->watch, 0);
                l->backoff_cur = l->backoff_cur ? l->backoff_cur * 2 : l->backoff_base;
                if (l->backoff_cur > BRAID_SECONDS(1)) l->backoff_cur = BRAID_SECONDS(1);
                braid__log(l->loop, BRAID_LOG_WARN,
                           "listener: out of descriptors (%s); pausing accepts for %llu ms",
                           braid_strerror(-err), (unsigned long long)(l->backoff_cur / 1000000));
                braid_timer_start(&l->backoff, l->backoff_cur);
                return;
            }
            braid__log(l->loop, BRAID_LOG_ERROR, "listener: accept: %s", braid_strerror(-errno));
            break;
        }
        l->backoff_cur = 0;
        if (l->reserve_fd < 0) l->reserve_fd = open_reserve();
        l->accepted++;
        braid_transport *t;
        if (braid__fd_transport_new(l->loop, fd, fd, l->kind, true, &t) < 0) {
            close(fd);
            continue;
        }
        braid_protocol *p = braid_factory_build(l->factory, &peer);
        if (!p) {
            /* Refused (or out of memory): close without a protocol. */
            braid__transport_lost(t, BRAID_ECONNECTION_DONE);
            continue;
        }
        braid__transport_attach(t, p);
    }
}

static int listener_start(braid_loop *loop, int fd, braid__fd_kind kind, int budget,
                          braid_factory *f, braid_listener **out) {
    braid_listener *l = braid_calloc(1, sizeof *l);
    if (!l) return BRAID_ENOMEM;
    l->loop = loop;
    l->factory = f;
    l->fd = fd;
    l->kind = kind;
    l->budget = budget > 0 ? budget : 64;
    l->backoff_base = BRAID_MSEC(50);
    l->interest = BRAID_WATCH_READ;
    l->reserve_fd = open_reserve();
    int rc = braid_watch_init(loop, &l->watch, fd, on_accept, l);
    if (rc < 0) goto fail;
    if ((rc = braid_watch_set_interest(&l->watch, BRAID_WATCH_READ)) < 0) { braid_watch_close(&l->watch); goto fail; }
    braid_timer_init(loop, &l->backoff, backoff_fire, l);
    braid_handle_open(loop, &l->handle, "listener");
    braid_factory_ref(f);
    *out = l;
    return 0;
fail:
    if (l->reserve_fd >= 0) close(l->reserve_fd);
    braid_free(l);
    return rc;
}

int braid__numeric_address(const char *host, int port, int family, braid_address *out) {
    memset(out, 0, sizeof *out);
    if (port < 0 || port > 65535) return BRAID_EINVAL;
    char buf[64];
    if (host && host[0] == '[') {
        size_t n = strlen(host);
        if (n < 2 || host[n - 1] != ']' || n - 2 >= sizeof buf) return BRAID_EINVAL;
        memcpy(buf, host + 1, n - 2);
        buf[n - 2] = 0;
        host = buf;
        family = AF_INET6;
    }
    if (!host || !*host) host = family == AF_INET6 ? "::" : "0.0.0.0";
    struct sockaddr_in *s4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&out->ss;
    if (family != AF_INET6 && inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        out->len = sizeof *s4;
        return 0;
    }
    if (family != AF_INET && inet_pton(AF_INET6, host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        out->len = sizeof *s6;
        return 0;
    }
    return BRAID_EINVAL;
}

int braid__tcp_listen(braid_loop *loop, const braid__tcp_listen_options *o, braid_factory *f,
                      braid_listener **out) {
    if (!o || !f || !out) return BRAID_EINVAL;
    braid_address a;
    int rc = braid__numeric_address(o->host, o->port, o->ipv6 ? AF_INET6 : 0, &a);
    if (rc < 0) return rc;
    int fd = socket(a.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (o->reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0) goto err;
    if (a.ss.ss_family == AF_INET6 && o->ipv6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof on);
    if (bind(fd, (struct sockaddr *)&a.ss, a.len) < 0) goto err;
    if (listen(fd, o->backlog > 0 ? o->backlog : 511) < 0) goto err;
    rc = listener_start(loop, fd, BRAID__FD_TCP, o->accept_budget, f, out);
    if (rc < 0) close(fd);
    return rc;
err:
    rc = -errno;
    close(fd);
    return rc;
}

int braid__unix_listen(braid_loop *loop, const braid__unix_listen_options *o, braid_factory *f,
                       braid_listener **out) {
    if (!o || !o->path || !f || !out) return BRAID_EINVAL;
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    size_t n = strlen(o->path);
    if (n == 0 || n >= sizeof sa.sun_path) return BRAID_EINVAL;
    memcpy(sa.sun_path, o->path, n);
    /* A stale socket file from a previous run: remove it if nobody answers. */
    struct stat st;
    if (lstat(o->path, &st) == 0 && S_ISSOCK(st.st_mode)) {
        int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (probe >= 0) {
            if (connect(probe, (struct sockaddr *)&sa, sizeof sa) < 0 && errno == ECONNREFUSED)
                unlink(o->path);
            close(probe);
        }
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int rc;
    char *path = braid_strdup(o->path);
    if (!path) { close(fd); return BRAID_ENOMEM; }
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0) goto err;
    if (o->mode && chmod(o->path, (mode_t)o->mode) < 0) goto err_unlink;
    if (listen(fd, o->backlog > 0 ? o->backlog : 511) < 0) goto err_unlink;
    rc = listener_start(loop, fd, BRAID__FD_UNIX, o->accept_budget, f, out);
    if (rc < 0) { unlink(path); close(fd); braid_free(path); return rc; }
    (*out)->unix_path = path;
    return 0;
err_unlink:
    rc = -errno;
    unlink(o->path);
    close(fd);
    braid_free(path);
    return rc;
err:
    rc = -errno;
    close(fd);
    braid_free(path);
    return rc;
}

int braid__fd_listen(braid_loop *loop, int fd, int accept_budget, braid_factory *f,
                     braid_listener **out) {
    if (fd < 0 || !f || !out) return BRAID_EINVAL;
    int rc = braid__set_nonblock(fd);
    if (rc < 0) return rc;
    int dom = 0;
    socklen_t l = sizeof dom;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &dom, &l);
    return listener_start(loop, fd, dom == AF_UNIX ? BRAID__FD_UNIX : BRAID__FD_TCP, accept_budget, f,
                          out);
}

int braid_listener_address(const braid_listener *l, braid_address *out) {
    memset(out, 0, sizeof *out);
    out->len = sizeof out->ss;
    return getsockname(l->fd, (struct sockaddr *)&out->ss, &out->len) < 0 ? -errno : 0;
}

void braid_listener_close(braid_listener *l) {
    if (!l) return;
    braid_watch_close(&l->watch);
    braid_timer_stop(&l->backoff);
    close(l->fd);
    if (l->reserve_fd >= 0) close(l->reserve_fd);
    if (l->unix_path) { unlink(l->unix_path); braid_free(l->unix_path); }
    braid_handle_close(l->loop, &l->handle);
    braid_factory *f = l->factory;
    braid_free(l);
    braid_factory_unref(f);
}

uint64_t braid_listener_accepted(const braid_listener *l) { return l->accepted; }
uint64_t braid_listener_emfile_events(const braid_listener *l) { return l->emfile_events; }
void braid_listener_set_backoff(braid_listener *l, uint64_t ns) { l->backoff_base = ns ? ns : 1; }

int braid_listener_set_exclusive(braid_listener *l, bool on) {
    unsigned want = BRAID_WATCH_READ | (on ? BRAID_WATCH_EXCLUSIVE : 0u);
    if (want == l->interest) return 0;
    l->interest = want;
    if (braid_timer_is_active(&l->backoff)) return 0;   /* set when the back-off ends */
    return braid_watch_set_interest(&l->watch, want);
}
