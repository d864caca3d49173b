/* braid-bench-epoll-raw: the practical floor for the connscale study - the
 * same protocol (connscale_proto.h) served by a minimal hand-written epoll
 * loop, no library at all. Per connection: 17 bytes in a table indexed by
 * fd. Same choices as braid's loop model: non-blocking listener, accept4
 * until EAGAIN, TCP_NODELAY, level-triggered EPOLLIN, read / reply / close.
 *
 *   braid-bench-epoll-raw --port P [--backlog B]
 * prints "ready P", serves until "quit" on stdin, then prints
 * "stats MAXRSS_KIB UTIME_US STIME_US NVCSW NIVCSW" and exits. */
#define _GNU_SOURCE
#include "../connscale_proto.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

typedef struct conn { uint8_t buf[CS_MSG]; uint8_t have; } conn;

static void print_stats(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("stats %ld %lld %lld %ld %ld\n", ru.ru_maxrss,
           (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec,
           (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec, ru.ru_nvcsw, ru.ru_nivcsw);
    fflush(stdout);
}

int main(int argc, char **argv) {
    int port = 0, backlog = 4096;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--backlog")) backlog = atoi(argv[i + 1]);
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, backlog) < 0) {
        perror("epoll-raw: listen");
        return 1;
    }
    socklen_t al = sizeof a;
    getsockname(lfd, (struct sockaddr *)&a, &al);
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    conn *conns = calloc(rl.rlim_cur, sizeof *conns);   /* untouched pages cost no RSS */
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = lfd };
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    ev.data.fd = 0;
    epoll_ctl(ep, EPOLL_CTL_ADD, 0, &ev);
    printf("ready %d\n", ntohs(a.sin_port));
    fflush(stdout);

    struct epoll_event evs[1024];
    for (;;) {
        int n = epoll_wait(ep, evs, 1024, -1);
        if (n < 0 && errno != EINTR) return 1;
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (c < 0) break;
                    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conns[c].have = 0;
                    struct epoll_event ce = { .events = EPOLLIN, .data.fd = c };
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &ce);
                }
            } else if (fd == 0) {
                char line[64];
                ssize_t r = read(0, line, sizeof line);
                if (r <= 0 || !strncmp(line, "quit", 4)) {
                    print_stats();
                    free(conns);
                    close(ep);
                    close(lfd);
                    return 0;
                }
            } else {
                conn *c = &conns[fd];
                ssize_t r = read(fd, c->buf + c->have, CS_MSG - c->have);
                if (r > 0) c->have += (uint8_t)r;
                if (r > 0 && c->have < CS_MSG) continue;
                if (r < 0 && errno == EAGAIN) continue;
                if (c->have == CS_MSG) {
                    uint8_t resp[CS_MSG];
                    cs_reply(c->buf, resp);
                    ssize_t w = write(fd, resp, CS_MSG);   /* 16 bytes into an empty socket buffer */
                    (void)w;
                }
                close(fd);   /* also removes it from the epoll set */
            }
        }
    }
}
