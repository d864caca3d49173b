/* braid_http_request_respond_file: a handler answers with part of a file (the way
 * braid_http_server_static answers, now through the public API), over the memory
 * transport, where the body goes through the write buffer. Static files on
 * real sockets (sendfile) are test_http_server.c's static cases. */
#include "harness.h"
#include "support/run.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

static char path[64];

static int make_file(void) {
    snprintf(path, sizeof path, "/tmp/braid-http-file-XXXXXX");
    int fd = mkstemp(path);
    BT_TRUE(fd >= 0);
    char data[26];
    for (int i = 0; i < 26; i++) data[i] = (char)('a' + i);
    BT_EQ(write(fd, data, sizeof data), (ssize_t)sizeof data);
    close(fd);
    return 0;
}

static int open_fds(void) {
    int n = 0;
    for (int fd = 0; fd < 1024; fd++)
        if (fcntl(fd, F_GETFD) >= 0) n++;
    return n;
}

static int last_rc, second_rc;

/* "/f/<off>/<len>": bytes [off, off+len) of the file; "/twice": answers twice. */
static braid_deferred *h_file(braid_http_request *req, void *arg) {
    (void)arg;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    BT_TRUE(fd >= 0);
    unsigned off = 0, len = 26;
    char p[64];
    snprintf(p, sizeof p, "%.*s", (int)req->path_len, req->path);
    if (sscanf(p, "/f/%u/%u", &off, &len) != 2 && strcmp(p, "/twice")) off = 0, len = 26;
    last_rc = braid_http_request_respond_file(req, off ? 206 : 200, "text/plain", fd, off, len);
    if (!strcmp(p, "/twice")) {
        int fd2 = open(path, O_RDONLY | O_CLOEXEC);
        second_rc = braid_http_request_respond_file(req, 200, "text/plain", fd2, 0, 1);   /* closes fd2 */
    }
    return NULL;
}

typedef struct fx {
    braid_loop *loop;
    braid_http_server *s;
    braid_memory_transport *m;
} fx;

static void fx_init(fx *f) {
    make_file();
    f->loop = bt_loop_new(NULL);
    BT_OK(braid_http_server_new(f->loop, NULL, &f->s));
    BT_OK(braid_http_server_route(f->s, NULL, "/", BRAID_HTTP_ROUTE_PREFIX, h_file, NULL));
    braid_protocol *p = braid_factory_build(braid_http_server_factory(f->s), NULL);
    BT_TRUE(p != NULL);
    braid_memory_transport_new(f->loop, p, &f->m);
    BT_TRUE(f->m != NULL);
}

static const char *ask(fx *f, const char *req) {
    static char buf[8192];
    BT_OK(braid_memory_transport_receive(f->m, req, strlen(req)));
    bt_spin(f->loop, 8);
    size_t n;
    const void *d = braid_memory_transport_data(f->m, &n);
    if (n >= sizeof buf) n = sizeof buf - 1;
    memcpy(buf, d, n);
    buf[n] = 0;
    braid_memory_transport_consume(f->m, n);
    bt_spin(f->loop, 8);
    return buf;
}

static void fx_done(fx *f) {
    braid_memory_transport_free(f->m);
    bt_spin(f->loop, 8);
    BT_OK(braid_http_server_free(f->s));
    bt_loop_destroy(f->loop);
    unlink(path);
}

static void expect_body(const char *resp, const char *status, const char *body) {
    BT_TRUE(strncmp(resp, status, strlen(status)) == 0);
    char cl[64];
    snprintf(cl, sizeof cl, "Content-Length: %zu\r\n", strlen(body));
    BT_TRUE(strstr(resp, cl) != NULL);
    const char *b = strstr(resp, "\r\n\r\n");
    BT_TRUE(b != NULL);
    BT_STREQ(b + 4, body);
}

BT_TEST(whole_part_and_head) {
    fx f;
    fx_init(&f);
    int fds = open_fds();
    expect_body(ask(&f, "GET /all HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 200", "abcdefghijklmnopqrstuvwxyz");
    BT_OK(last_rc);
    expect_body(ask(&f, "GET /f/3/4 HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 206", "defg");
    const char *r = ask(&f, "HEAD /f/0/26 HTTP/1.1\r\nHost: x\r\n\r\n");
    BT_TRUE(strstr(r, "Content-Length: 26\r\n") != NULL);
    BT_STREQ(strstr(r, "\r\n\r\n") + 4, "");                /* HEAD: no body */
    BT_EQ(open_fds(), fds);                                   /* every fd closed */
    fx_done(&f);
}

BT_TEST(second_answer_refused_and_its_fd_closed) {
    fx f;
    fx_init(&f);
    int fds = open_fds();
    expect_body(ask(&f, "GET /twice HTTP/1.1\r\nHost: x\r\n\r\n"), "HTTP/1.1 200", "abcdefghijklmnopqrstuvwxyz");
    BT_OK(last_rc);
    BT_ERR(second_rc, BRAID_EALREADY_CALLED);
    BT_EQ(open_fds(), fds);
    fx_done(&f);
}

/* A file shorter than the length promised: the framing cannot be kept, so
 * the connection is aborted, and the fd is closed. */
BT_TEST(short_file_aborts) {
    fx f;
    fx_init(&f);
    int fds = open_fds();
    BT_OK(braid_memory_transport_receive(f.m, "GET /f/20/100 HTTP/1.1\r\nHost: x\r\n\r\n", 36));
    bt_spin(f.loop, 8);
    BT_OK(last_rc);
    BT_TRUE(mstate(f.m).aborted);
    BT_EQ(open_fds(), fds);
    fx_done(&f);
}
