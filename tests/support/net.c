/* Loopback sockets for tests: see net.h. */
#include "net.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

void bt_socketpair(int sv[2]) {
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
        bt_fail(__FILE__, __LINE__, "socketpair: %s", strerror(errno));
}

void bt_tcp_socketpair(int sv[2]) {
    int l = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t al = sizeof a;
    if (l < 0 || bind(l, (struct sockaddr *)&a, sizeof a) < 0 || listen(l, 8) < 0 ||
        getsockname(l, (struct sockaddr *)&a, &al) < 0)
        bt_fail(__FILE__, __LINE__, "loopback listen: %s", strerror(errno));
    sv[0] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sv[0] < 0 || connect(sv[0], (struct sockaddr *)&a, sizeof a) < 0)
        bt_fail(__FILE__, __LINE__, "loopback connect: %s", strerror(errno));
    sv[1] = accept4(l, NULL, NULL, SOCK_CLOEXEC);
    if (sv[1] < 0) bt_fail(__FILE__, __LINE__, "accept: %s", strerror(errno));
    close(l);
}

int bt_listener_port(braid_listener *l) {
    braid_address a;
    BT_OK(braid_listener_address(l, &a));
    int port = braid_address_port(&a);
    BT_GT(port, 0);
    return port;
}

braid_listener *bt_listen(braid_loop *loop, const braid_endpoint *ep, braid_factory *f) {
    braid_listener *l;
    BT_OK(braid_endpoint_listener(braid_endpoint_listen_typed(loop, ep, f), &l));
    return l;
}

braid_listener *bt_listen_tcp(braid_loop *loop, braid_factory *f, int *port) {
    braid_listener *l = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1" }, f);
    if (port) *port = bt_listener_port(l);
    return l;
}

braid_listener *bt_listen_tcp6(braid_loop *loop, braid_factory *f, int *port) {
    braid_listener *l;
    int rc = braid_endpoint_listener(braid_endpoint_listen_typed(loop, &(braid_endpoint){
        .kind = BRAID_ENDPOINT_TCP6, .host = "::1" }, f), &l);
    if (rc == -EADDRNOTAVAIL || rc == -EAFNOSUPPORT) return NULL;
    BT_OK(rc);
    if (port) *port = bt_listener_port(l);
    return l;
}

/* The process's directory for Unix sockets, removed at exit. */
static char tmpdir[64];
static pid_t tmpdir_owner;   /* a forked child that exits leaves it alone */
static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    remove(path);
    return 0;
}
static void rm_tmpdir(void) {
    if (tmpdir[0] && getpid() == tmpdir_owner) nftw(tmpdir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}
static const char *test_dir(void) {
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/braid-test-%d-XXXXXX", (int)getpid());
        if (!mkdtemp(tmpdir)) bt_fail(__FILE__, __LINE__, "mkdtemp: %s", strerror(errno));
        tmpdir_owner = getpid();
        atexit(rm_tmpdir);
    }
    return tmpdir;
}

const char *bt_unix_path(char *buf, size_t n, const char *tag) {
    static unsigned seq;
    int len = snprintf(buf, n, "%s/%s-%u.sock", test_dir(), tag, seq++);
    if (len < 0 || (size_t)len >= n || (size_t)len >= sizeof(((struct sockaddr_un *)0)->sun_path))
        bt_fail(__FILE__, __LINE__, "unix socket path too long: %s", buf);
    unlink(buf);
    return buf;
}

braid_listener *bt_listen_unix(braid_loop *loop, braid_factory *f, char *path, size_t n) {
    bt_unix_path(path, n, "listen");
    braid_endpoint ep = { .kind = BRAID_ENDPOINT_UNIX };
    snprintf(ep.path, sizeof ep.path, "%s", path);
    return bt_listen(loop, &ep, f);
}

int bt_free_port(void) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    socklen_t sl = sizeof sa;
    if (s < 0 || bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || getsockname(s, (struct sockaddr *)&sa, &sl) < 0)
        bt_fail(__FILE__, __LINE__, "bind 127.0.0.1:0: %s", strerror(errno));
    close(s);
    return ntohs(sa.sin_port);
}

static int finish_connect(int fd, int rc, unsigned flags, const char *what) {
    if (rc < 0 && !((flags & BT_CONNECT_ASYNC) && errno == EINPROGRESS)) {
        int e = errno;
        close(fd);
        errno = e;
        if (flags & BT_CONNECT_MAY_FAIL) return -1;
        bt_fail(__FILE__, __LINE__, "connect to %s: %s", what, strerror(e));
    }
    if ((flags & BT_CONNECT_NONBLOCK) && fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
        bt_fail(__FILE__, __LINE__, "O_NONBLOCK: %s", strerror(errno));
    return fd;
}

static int new_socket(int family, unsigned flags, int rcvbuf) {
    int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC | (flags & BT_CONNECT_ASYNC ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) {
        if (flags & BT_CONNECT_MAY_FAIL) return -1;
        bt_fail(__FILE__, __LINE__, "socket: %s", strerror(errno));
    }
    if (rcvbuf > 0 && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf) < 0)
        bt_fail(__FILE__, __LINE__, "SO_RCVBUF: %s", strerror(errno));
    return fd;
}

int bt_connect_tcp(int port, unsigned flags) { return bt_connect_tcp_rcvbuf(port, flags, 0); }

int bt_connect_tcp_rcvbuf(int port, unsigned flags, int rcvbuf) {
    int fd = new_socket(AF_INET, flags, rcvbuf);
    if (fd < 0) return -1;
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    return finish_connect(fd, connect(fd, (struct sockaddr *)&a, sizeof a), flags, "127.0.0.1");
}

int bt_connect_unix(const char *path, unsigned flags) {
    int fd = new_socket(AF_UNIX, flags, 0);
    if (fd < 0) return -1;
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    return finish_connect(fd, connect(fd, (struct sockaddr *)&a, sizeof a), flags, path);
}
