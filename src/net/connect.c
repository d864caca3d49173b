/* Outgoing connections: resolve (resolve.c), then a non-blocking connect to
 * each address in turn until one answers; the Deferred fires with the
 * connected protocol after its connection_made. Cancelling the Deferred —
 * directly or through its timeout — stops the resolution or closes the
 * socket in flight. */
#include "net/net_internal.h"
#include "net/sockets.h"
#include <netdb.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

typedef struct connector {
    braid_loop *loop;
    braid_factory *factory;
    braid_deferred *d;             /* ours to fire (producer reference) */
    braid_deferred *resolving;     /* not owned; valid until its callback ran */
    braid__addrlist *addrs;
    size_t next;
    int fd;
    bool watching;
    braid_watch w;
    braid__fd_kind kind;
    braid_address bind_addr;
    bool have_bind;
    int last_err;
    braid_handle handle;
} connector;

static void connector_free(connector *c) {
    if (c->watching) braid_watch_close(&c->w);
    if (c->fd >= 0) close(c->fd);
    braid_free(c->addrs);
    braid_handle_close(c->loop, &c->handle);
    braid_factory_unref(c->factory);
    braid_free(c);
}

static void fail(connector *c, int code, const char *what) {
    braid_deferred *d = c->d;
    char buf[160] = "";
    if (c->addrs && c->next > 0) braid_address_format(&c->addrs->addrs[c->next - 1], buf, sizeof buf);
    connector_free(c);
    braid_deferred_errback(d, braid_failure_new(code, "%s%s%s", what, buf[0] ? " " : "", buf));
}

static void try_next(connector *c);

static void connected(connector *c) {
    braid_watch_close(&c->w);
    c->watching = false;
    int fd = c->fd;
    c->fd = -1;
    braid_transport *t;
    int rc = braid__fd_transport_new(c->loop, fd, fd, c->kind, true, &t);
    if (rc < 0) { close(fd); fail(c, rc, "connect: transport"); return; }
    braid_address peer = c->addrs->addrs[c->next - 1];
    braid_protocol *p = braid_factory_build(c->factory, &peer);
    if (!p) {
        braid__transport_lost(t, BRAID_ECONNECTION_DONE);
        fail(c, BRAID_ENOMEM, "connect: build_protocol refused");
        return;
    }
    braid_deferred *d = c->d;
    connector_free(c);
    braid__transport_attach(t, p);
    braid_deferred_callback(d, p, NULL);
}

static void on_writable(braid_watch *w, unsigned ev, void *arg) {
    connector *c = arg;
    (void)w; (void)ev;
    int err = 0;
    socklen_t l = sizeof err;
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l) < 0) err = errno;
    if (err == 0) { connected(c); return; }
    c->last_err = -err;
    braid_watch_close(&c->w);
    c->watching = false;
    close(c->fd);
    c->fd = -1;
    try_next(c);
}

/* Start a connect to the next address; on immediate failure move on. */
static void try_next(connector *c) {
    while (c->next < c->addrs->n) {
        braid_address *a = &c->addrs->addrs[c->next++];
        int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { c->last_err = -errno; continue; }
        if (c->have_bind) {
            int on = 1;
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
            if (bind(fd, (struct sockaddr *)&c->bind_addr.ss, c->bind_addr.len) < 0) {
                c->last_err = -errno;
                close(fd);
                continue;
            }
        }
        int rc = connect(fd, (struct sockaddr *)&a->ss, a->len);
        if (rc < 0 && errno != EINPROGRESS) {
            c->last_err = -errno;
            close(fd);
            continue;
        }
        c->fd = fd;
        if ((rc = braid_watch_init(c->loop, &c->w, fd, on_writable, c)) < 0 ||
            (rc = braid_watch_set_interest(&c->w, BRAID_WATCH_WRITE)) < 0) {
            c->last_err = rc;
            if (rc != BRAID_EEXIST) braid_watch_close(&c->w);
            close(fd);
            c->fd = -1;
            continue;
        }
        c->watching = true;
        return;
    }
    fail(c, c->last_err ? c->last_err : -ECONNREFUSED, "connect to");
}

static braid_result resolved(braid_result r, void *arg) {
    connector *c = arg;
    c->resolving = NULL;
    c->addrs = r.value;             /* ownership taken from the result */
    try_next(c);
    return braid_result_ok(NULL);
}

static braid_result resolve_failed(braid_result r, void *arg) {
    connector *c = arg;
    c->resolving = NULL;
    braid_deferred *d = c->d;      /* NULL: our own Deferred was cancelled */
    connector_free(c);
    if (d) {
        braid_failure *f = r.failure;
        r.failure = NULL;
        braid_deferred_errback(d, f);
    }
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

static void cancel_connect(braid_deferred *d, void *arg) {
    connector *c = arg;
    (void)d;
    if (c->resolving) {
        /* Detach from the resolution; its errback will find c->d cleared. */
        braid_deferred *rd = c->resolving;
        c->d = NULL;
        braid_deferred_cancel(rd);  /* runs resolve_failed, which frees c */
        return;
    }
    connector_free(c);              /* closes the socket in flight */
}

static braid_deferred *start(braid_loop *loop, braid_factory *f, braid__fd_kind kind,
                             uint64_t timeout, connector **out) {
    connector *c = braid_calloc(1, sizeof *c);
    if (!c) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "connect"));
    c->loop = loop;
    c->factory = f;
    c->fd = -1;
    c->kind = kind;
    c->d = braid_deferred_new_cancellable(loop, cancel_connect, c);
    if (!c->d) { braid_free(c); return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "connect")); }
    braid_handle_open(loop, &c->handle, "connector");
    braid_factory_ref(f);
    if (timeout != BRAID_FOREVER && braid_deferred_add_timeout(c->d, timeout) < 0) {
        braid_deferred *d = c->d;
        connector_free(c);
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "connect: timeout"));
        return d;
    }
    *out = c;
    return c->d;
}

braid_deferred *braid__tcp_connect(braid_loop *loop, const braid__tcp_connect_options *o,
                                   braid_factory *f) {
    if (!o || !f || !o->host)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "connect: no host"));
    connector *c = NULL;
    braid_deferred *d = start(loop, f, BRAID__FD_TCP, o->timeout, &c);
    if (!c) return d;
    braid_deferred_ref(d);          /* the connector may finish inside this call */
    if (o->bind_host || o->bind_port) {
        int fam = 0;
        if (braid__numeric_address(o->bind_host, o->bind_port, fam, &c->bind_addr) < 0) {
            connector_free(c);
            braid_deferred_errback(d, braid_failure_new(BRAID_EINVAL, "connect: bad bind address %s",
                                                        o->bind_host ? o->bind_host : ""));
            braid_deferred_unref(d);
            return d;
        }
        c->have_bind = true;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = o->family ? o->family : (c->have_bind ? c->bind_addr.ss.ss_family : AF_UNSPEC);
    braid_deferred *rd = braid__resolve(loop, o->host, o->port, &hints);
    if (!rd) {                      /* out of memory making the resolution's Deferred */
        connector_free(c);
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "connect: resolving %s", o->host));
        braid_deferred_unref(d);
        return d;
    }
    c->resolving = rd;
    int rc = braid_deferred_add(rd, resolved, resolve_failed, c);
    if (rc < 0) {
        /* Never happens with the inline slots; kept so a failure cannot leak c. */
        c->resolving = NULL;
        braid_deferred_cancel(rd);
        braid_deferred_unref(rd);
        connector_free(c);
        braid_deferred_errback(d, braid_failure_new(rc, "connect: resolving %s", o->host));
        braid_deferred_unref(d);
        return d;
    }
    braid_deferred_unref(rd);
    braid_deferred_unref(d);
    return d;
}

braid_deferred *braid__unix_connect(braid_loop *loop, const char *path, uint64_t timeout,
                                    braid_factory *f) {
    struct sockaddr_un sa = { .sun_family = AF_UNIX };
    if (!path || !*path || strlen(path) >= sizeof sa.sun_path || !f)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "connect: bad unix path"));
    connector *c = NULL;
    braid_deferred *d = start(loop, f, BRAID__FD_UNIX, timeout, &c);
    if (!c) return d;
    c->addrs = braid_calloc(1, sizeof *c->addrs + sizeof(braid_address));
    if (!c->addrs) {
        connector_free(c);
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "connect"));
        return d;
    }
    memcpy(sa.sun_path, path, strlen(path));
    c->addrs->n = 1;
    memcpy(&c->addrs->addrs[0].ss, &sa, sizeof sa);
    c->addrs->addrs[0].len = sizeof sa;
    braid_deferred_ref(d);
    try_next(c);
    braid_deferred_unref(d);
    return d;
}
