/* Peer servers for the reqresp and echo experiments (exp_reqresp.c): the
 * same protocols written directly on epoll (the practical limit), on libuv
 * and on libevent. Each is what a careful user of that library would write:
 *  - every server sets TCP_NODELAY on accepted sockets, backlog 511, reads
 *    into a 64 KiB buffer and answers every complete request in a read with
 *    one write;
 *  - epoll: level-triggered, direct write(); EAGAIN leftovers are buffered
 *    and flushed on EPOLLOUT;
 *  - libuv: uv_read_start with one static 64 KiB buffer, uv_try_write first
 *    and uv_write (copying the rest) only if the kernel took less;
 *  - libevent: bufferevent (the library's standard stream API) with
 *    evbuffer_pullup in the read callback.
 * reqresp: 16-byte requests {u64 seq, u64 x} little-endian → {seq, 2x+1}.
 * echo: every byte read is written back. */
#include "reqresp_peers.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

size_t rr_answer(uint8_t *part, size_t *plen, const uint8_t *in, size_t n, uint8_t *out) {
    size_t o = 0;
    if (*plen) {
        size_t take = 16 - *plen < n ? 16 - *plen : n;
        memcpy(part + *plen, in, take);
        *plen += take;
        in += take;
        n -= take;
        if (*plen < 16) return 0;
        uint64_t seq, x;
        memcpy(&seq, part, 8);
        memcpy(&x, part + 8, 8);
        x = 2 * x + 1;
        memcpy(out, &seq, 8);
        memcpy(out + 8, &x, 8);
        o = 16;
        *plen = 0;
    }
    while (n >= 16) {
        uint64_t seq, x;
        memcpy(&seq, in, 8);
        memcpy(&x, in + 8, 8);
        x = 2 * x + 1;
        memcpy(out + o, &seq, 8);
        memcpy(out + o + 8, &x, 8);
        o += 16;
        in += 16;
        n -= 16;
    }
    if (n) { memcpy(part, in, n); *plen = n; }
    return o;
}

int rr_listen_socket(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, 511) < 0) { close(fd); return -1; }
    return fd;
}

static void nodelay(int fd) {
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

/* ---- plain epoll --------------------------------------------------------------------- */
typedef struct ep_conn {
    int fd;
    uint8_t part[16];
    size_t plen;
    uint8_t *pend;               /* unsent output after EAGAIN */
    size_t pend_len;
} ep_conn;

static void ep_close(int ep, ep_conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->pend);
    free(c);
}

static int ep_send(int ep, ep_conn *c, const uint8_t *p, size_t n) {
    if (c->pend_len) {                       /* keep order behind what waits */
        uint8_t *b = realloc(c->pend, c->pend_len + n);
        if (!b) return -1;
        memcpy(b + c->pend_len, p, n);
        c->pend = b;
        c->pend_len += n;
        return 0;
    }
    ssize_t w = write(c->fd, p, n);
    if (w < 0 && errno != EAGAIN) return -1;
    if (w < 0) w = 0;
    if ((size_t)w < n) {
        c->pend = malloc(n - (size_t)w);
        if (!c->pend) return -1;
        memcpy(c->pend, p + w, n - (size_t)w);
        c->pend_len = n - (size_t)w;
        struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT, .data.ptr = c };
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    }
    return 0;
}

int rr_serve_epoll(int port, int mode) {
    int lfd = rr_listen_socket(port);
    if (lfd < 0) return 1;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    static uint8_t in[65536], out[65536];
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return 1;
        for (int i = 0; i < n; i++) {
            ep_conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    nodelay(fd);
                    ep_conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = nc };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            if (evs[i].events & EPOLLOUT) {
                ssize_t w = write(c->fd, c->pend, c->pend_len);
                if (w < 0 && errno != EAGAIN) { ep_close(ep, c); continue; }
                if (w > 0) {
                    memmove(c->pend, c->pend + w, c->pend_len - (size_t)w);
                    c->pend_len -= (size_t)w;
                }
                if (!c->pend_len) {
                    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = c };
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            }
            if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                ssize_t r = read(c->fd, in, sizeof in);
                if (r == 0 || (r < 0 && errno != EAGAIN)) { ep_close(ep, c); continue; }
                if (r < 0) continue;
                int rc;
                if (mode == RR_MODE_ECHO) {
                    rc = ep_send(ep, c, in, (size_t)r);
                } else {
                    size_t o = rr_answer(c->part, &c->plen, in, (size_t)r, out);
                    rc = o ? ep_send(ep, c, out, o) : 0;
                }
                if (rc < 0) ep_close(ep, c);
            }
        }
    }
}

/* ---- libuv ---------------------------------------------------------------------------- */
#ifdef BENCH_HAVE_LIBUV
#include <uv.h>

typedef struct uv_conn { uv_tcp_t h; uint8_t part[16]; size_t plen; int mode; } uv_conn;
typedef struct uv_wreq { uv_write_t req; uv_buf_t buf; } uv_wreq;
static uint8_t uv_inbuf[65536], uv_outbuf[65536];
static int uv_mode;

static void uv_alloc(uv_handle_t *h, size_t sz, uv_buf_t *b) {
    (void)h; (void)sz;
    *b = uv_buf_init((char *)uv_inbuf, sizeof uv_inbuf);
}
static void uv_closed(uv_handle_t *h) { free(h); }
static void uv_written(uv_write_t *req, int status) {
    (void)status;
    uv_wreq *w = (uv_wreq *)req;
    free(w->buf.base);
    free(w);
}
static void uv_send(uv_conn *c, const uint8_t *p, size_t n) {
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int w = uv_try_write((uv_stream_t *)&c->h, &b, 1);
    if (w == (int)n) return;
    if (w < 0 && w != UV_EAGAIN) { uv_close((uv_handle_t *)&c->h, uv_closed); return; }
    if (w < 0) w = 0;
    uv_wreq *req = malloc(sizeof *req);
    req->buf = uv_buf_init(malloc(n - (size_t)w), (unsigned)(n - (size_t)w));
    memcpy(req->buf.base, p + w, n - (size_t)w);
    uv_write(&req->req, (uv_stream_t *)&c->h, &req->buf, 1, uv_written);
}
static void uv_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
    uv_conn *c = (uv_conn *)s;
    if (nread < 0) { uv_close((uv_handle_t *)s, uv_closed); return; }
    if (nread == 0) return;
    if (uv_mode == RR_MODE_ECHO) {
        uv_send(c, (const uint8_t *)buf->base, (size_t)nread);
    } else {
        size_t o = rr_answer(c->part, &c->plen, (const uint8_t *)buf->base, (size_t)nread, uv_outbuf);
        if (o) uv_send(c, uv_outbuf, o);
    }
}
static void uv_on_conn(uv_stream_t *server, int status) {
    if (status < 0) return;
    uv_conn *c = calloc(1, sizeof *c);
    uv_tcp_init(server->loop, &c->h);
    if (uv_accept(server, (uv_stream_t *)&c->h) < 0) { uv_close((uv_handle_t *)&c->h, uv_closed); return; }
    uv_tcp_nodelay(&c->h, 1);
    uv_read_start((uv_stream_t *)&c->h, uv_alloc, uv_on_read);
}
int rr_serve_libuv(int port, int mode) {
    uv_mode = mode;
    uv_loop_t *loop = uv_default_loop();
    uv_tcp_t server;
    uv_tcp_init(loop, &server);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", port, &a);
    if (uv_tcp_bind(&server, (const struct sockaddr *)&a, 0) < 0) return 1;
    if (uv_listen((uv_stream_t *)&server, 511, uv_on_conn) < 0) return 1;
    return uv_run(loop, UV_RUN_DEFAULT);
}
#else
int rr_serve_libuv(int port, int mode) { (void)port; (void)mode; return 77; }
#endif

/* ---- libevent --------------------------------------------------------------------------- */
#ifdef BENCH_HAVE_LIBEVENT
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

typedef struct ev_conn { uint8_t part[16]; size_t plen; } ev_conn;
static int ev_mode;
static uint8_t ev_outbuf[65536];

static void ev_read(struct bufferevent *bev, void *arg) {
    ev_conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    if (ev_mode == RR_MODE_ECHO) {
        bufferevent_write_buffer(bev, in);      /* moves the chains, no copy */
        return;
    }
    size_t n = evbuffer_get_length(in);
    while (n) {
        size_t take = n > sizeof ev_outbuf ? sizeof ev_outbuf : n;
        const uint8_t *p = evbuffer_pullup(in, (ev_ssize_t)take);
        size_t o = rr_answer(c->part, &c->plen, p, take, ev_outbuf);
        evbuffer_drain(in, take);
        if (o) bufferevent_write(bev, ev_outbuf, o);
        n -= take;
    }
}
static void ev_event(struct bufferevent *bev, short what, void *arg) {
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
        bufferevent_free(bev);
        free(arg);
    }
}
static void ev_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int len, void *arg) {
    (void)sa; (void)len; (void)arg;
    nodelay(fd);
    struct bufferevent *bev = bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
    ev_conn *c = calloc(1, sizeof *c);
    bufferevent_setcb(bev, ev_read, NULL, ev_event, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}
int rr_serve_libevent(int port, int mode) {
    ev_mode = mode;
    struct event_base *base = event_base_new();
    int lfd = rr_listen_socket(port);
    if (lfd < 0) return 1;
    struct evconnlistener *l = evconnlistener_new(base, ev_accept, NULL, LEV_OPT_CLOSE_ON_FREE, 511, lfd);
    if (!l) return 1;
    return event_base_dispatch(base);
}
#else
int rr_serve_libevent(int port, int mode) { (void)port; (void)mode; return 77; }
#endif
