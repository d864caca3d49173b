/* A minimal hand-written HTTP responder for braid-bench's http experiment:
 * one thread, epoll (level-triggered), non-blocking accept, TCP_NODELAY.
 * It does not parse: every "\r\n\r\n" in the input counts as one request
 * and gets the same canned 200 answer (Content-Length 13, no Date), all
 * answers of one read in one write. The floor for any real server.
 *
 * usage: braid-bench-http-epoll PORT */
#define _GNU_SOURCE
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

static const char ANSWER[] = "HTTP/1.1 200 OK\r\nServer: epoll-min\r\nContent-Type: text/plain\r\n"
                             "Content-Length: 13\r\n\r\nHello, World!";

typedef struct conn { int fd; int match; } conn;   /* match: bytes of "\r\n\r\n" seen */

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 511) < 0) { perror("listen"); return 1; }
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    static char buf[65536], out[65536];
    const size_t alen = sizeof ANSWER - 1;
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    struct epoll_event e = { .events = EPOLLIN, .data.ptr = nc };
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
                }
                continue;
            }
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                close(c->fd);
                free(c);
                continue;
            }
            size_t o = 0;
            for (ssize_t k = 0; k < r; k++) {
                char ch = buf[k];
                c->match = (ch == "\r\n\r\n"[c->match]) ? c->match + 1 : (ch == '\r' ? 1 : 0);
                if (c->match == 4) {
                    c->match = 0;
                    if (o + alen > sizeof out) { if (write(c->fd, out, o) < 0) {} o = 0; }
                    memcpy(out + o, ANSWER, alen);
                    o += alen;
                }
            }
            if (o && write(c->fd, out, o) < 0 && errno != EAGAIN) { close(c->fd); free(c); }
        }
    }
}
