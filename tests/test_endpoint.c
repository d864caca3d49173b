/* Endpoints: Twisted-style strings (good and malformed, each error naming
 * the bad part), listen/connect through strings over TCP and Unix on every
 * backend, and connect timeouts given in the string. */
// ctest-labels: stream
#include "harness.h"
#include "support/run.h"
#include <braid/pool.h>
#include <braid/testing_deferred.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

BT_TEST(parse_server_strings) {
    braid_endpoint ep;
    char err[256];
    BT_OK(braid_endpoint_parse_server("tcp:8080:interface=127.0.0.1:backlog=128", &ep, err, sizeof err));
    BT_EQ(ep.kind, BRAID_ENDPOINT_TCP);
    BT_EQ(ep.port, 8080);
    BT_STREQ(ep.host, "127.0.0.1");
    BT_EQ(ep.backlog, 128);
    BT_FALSE(ep.reuseport);
    BT_OK(braid_endpoint_parse_server("tcp6:port=443:interface=\\:\\:1:reuseport=1", &ep, err, sizeof err));
    BT_EQ(ep.kind, BRAID_ENDPOINT_TCP6);
    BT_STREQ(ep.host, "::1");
    BT_EQ(ep.port, 443);
    BT_TRUE(ep.reuseport);
    BT_OK(braid_endpoint_parse_server("unix:/tmp/x.sock:mode=660", &ep, err, sizeof err));
    BT_EQ(ep.kind, BRAID_ENDPOINT_UNIX);
    BT_STREQ(ep.path, "/tmp/x.sock");
    BT_EQ(ep.mode, 0660);
    BT_OK(braid_endpoint_parse_server("unix:address=/a\\:b", &ep, err, sizeof err));
    BT_STREQ(ep.path, "/a:b");
    BT_OK(braid_endpoint_parse_server("tcp:0", &ep, NULL, 0));
    BT_EQ(ep.port, 0);
    BT_OK(braid_endpoint_parse_server("fd:3", &ep, err, sizeof err));
    BT_EQ(ep.kind, BRAID_ENDPOINT_FD);
    BT_EQ(ep.fd, 3);
    BT_OK(braid_endpoint_parse_server("fd:fileno=7", &ep, err, sizeof err));
    BT_EQ(ep.fd, 7);
}

BT_TEST(parse_client_strings) {
    braid_endpoint ep;
    char err[256];
    BT_OK(braid_endpoint_parse_client("tcp:host=example.com:port=80:timeout=2.5", &ep, err, sizeof err));
    BT_STREQ(ep.host, "example.com");
    BT_EQ(ep.port, 80);
    BT_UEQ(ep.timeout, BRAID_MSEC(2500));
    BT_OK(braid_endpoint_parse_client("tcp:localhost:8000:bindAddress=127.0.0.1\\:5555", &ep, err, sizeof err));
    BT_STREQ(ep.host, "localhost");
    BT_EQ(ep.port, 8000);
    BT_STREQ(ep.bind_host, "127.0.0.1");
    BT_EQ(ep.bind_port, 5555);
    BT_OK(braid_endpoint_parse_client("unix:path=/run/x.sock:timeout=1", &ep, err, sizeof err));
    BT_STREQ(ep.path, "/run/x.sock");
    BT_OK(braid_endpoint_parse_client("tcp6:host=\\:\\:1:port=9", &ep, err, sizeof err));
    BT_STREQ(ep.host, "::1");
}

/* Each malformed string fails with BRAID_EBAD_ENDPOINT and a message
 * containing the part that was wrong. */
BT_TEST(malformed_strings_name_the_bad_part) {
    static const struct { bool server; const char *desc, *needle; } cases[] = {
        { true, "", "empty" },
        { true, "tcpx:80", "tcpx" },
        { true, "tcp:http", "'http'" },
        { true, "tcp:70000", "'70000'" },
        { true, "tcp:80:bogus=1", "'bogus'" },
        { true, "tcp:80:backlog=lots", "backlog 'lots'" },
        { true, "tcp:80:interface=localhost", "interface 'localhost'" },
        { true, "tcp:80:81", "'81'" },
        { true, "tcp:interface=127.0.0.1", "missing port" },
        { true, "tcp:80:port=81", "twice" },
        { true, "tcp:80:reuseport=maybe", "reuseport 'maybe'" },
        { true, "unix:/x:mode=999", "mode '999'" },
        { true, "unix:mode=600", "missing unix path" },
        { true, "tcp:80\\", "trailing" },
        { true, "tcp:80:timeout=1", "'timeout'" },
        { false, "tcp:port=80", "missing host" },
        { false, "tcp:host=h", "missing port" },
        { false, "tcp:host=h:port=0", "port '0'" },
        { false, "tcp:host=h:port=1:timeout=-1", "timeout '-1'" },
        { false, "tcp:host=h:port=1:timeout=soon", "timeout 'soon'" },
        { false, "tcp:host=h:port=1:bindAddress=nowhere", "bindAddress 'nowhere'" },
        { false, "unix:path=", "unix path ''" },
        { false, "unix:/a:/b", "'/b'" },
        { false, "tcp:host=h:port=1:backlog=5", "'backlog'" },
        { true, "fd:x", "descriptor 'x'" },
        { true, "fd:-1", "descriptor '-1'" },
        { true, "fd:3:backlog=5", "fd:N" },
        { false, "fd:3", "server endpoint only" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        braid_endpoint ep;
        char err[256];
        int rc = cases[i].server ? braid_endpoint_parse_server(cases[i].desc, &ep, err, sizeof err)
                                 : braid_endpoint_parse_client(cases[i].desc, &ep, err, sizeof err);
        if (rc != BRAID_EBAD_ENDPOINT)
            bt_fail(__FILE__, __LINE__, "'%s' parsed (rc %d)", cases[i].desc, rc);
        if (!strstr(err, cases[i].needle))
            bt_fail(__FILE__, __LINE__, "'%s': message \"%s\" lacks \"%s\"", cases[i].desc, err,
                    cases[i].needle);
    }
    /* through braid_endpoint_listen: a failed Deferred with that message */
    braid_loop *loop = bt_loop_new(NULL);
    braid_factory f;
    braid_factory_init(&f, &(braid_protocol_ops){ 0 }, 0, NULL);
    braid_deferred *d = braid_endpoint_listen(loop, "tcp:80:bogus=1", &f);
    braid_failure *fl = braid_deferred_expect_failure(d, BRAID_EBAD_ENDPOINT);
    BT_TRUE(strstr(fl->message, "'bogus'") != NULL);
    braid_failure_free(fl);
    braid_deferred_unref(d);
    d = braid_endpoint_connect(loop, "tcp:host=x", &f);
    fl = braid_deferred_expect_failure(d, BRAID_EBAD_ENDPOINT);
    braid_failure_free(fl);
    braid_deferred_unref(d);
    bt_loop_destroy(loop);
}

/* ---- listen/connect through strings ------------------------------------------------- */
typedef struct ep_proto { braid_protocol base; } ep_proto;
static int lost_count;
static char got_buf[64];
static size_t got_len;
static void echo_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(p->transport, buf, len);
}
static void client_data(braid_protocol *p, const void *buf, size_t len) {
    (void)p;
    if (got_len + len <= sizeof got_buf) { memcpy(got_buf + got_len, buf, len); got_len += len; }
}
static void count_lost(braid_protocol *p, const braid_failure *f) { (void)p; (void)f; lost_count++; }
static const braid_protocol_ops echo_ops = { .data_received = echo_data, .connection_lost = count_lost };
static const braid_protocol_ops client_ops = { .data_received = client_data, .connection_lost = count_lost };

static int starts, stops;
static void f_start(braid_factory *f) { (void)f; starts++; }
static void f_stop(braid_factory *f) { (void)f; stops++; }

static void roundtrip(braid_loop *loop, const char *server_desc, const char *client_fmt) {
    braid_factory sf, cf;
    braid_factory_init(&sf, &echo_ops, sizeof(ep_proto), NULL);
    braid_factory_init(&cf, &client_ops, sizeof(ep_proto), NULL);
    sf.start = f_start;
    sf.stop = f_stop;
    starts = stops = 0;
    braid_deferred *d = braid_endpoint_listen(loop, server_desc, &sf);
    BT_TRUE(braid_deferred_is_called(d));
    braid_result r = braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    braid_listener *l = r.value;
    BT_EQ(starts, 1);
    braid_address a;
    BT_OK(braid_listener_address(l, &a));
    char desc[256];
    snprintf(desc, sizeof desc, client_fmt, braid_address_port(&a));
    d = braid_endpoint_connect(loop, desc, &cf);
    BT_RUN_UNTIL(loop, braid_deferred_is_called(d), 1000);
    r = braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    braid_protocol *p = r.value;
    got_len = 0;
    lost_count = 0;
    BT_OK(braid_transport_write(p->transport, "endpoint", 8));
    BT_RUN_UNTIL(loop, got_len >= 8, 1000);
    BT_EQ(got_len, 8);
    braid_transport_close(p->transport, BRAID_FOREVER);
    BT_RUN_UNTIL(loop, lost_count >= 2, 1000);
    BT_EQ(lost_count, 2);
    braid_listener_close(l);
    BT_EQ(stops, 1);
    BT_EQ(cf.refs, 0);
}

BT_IO_TEST(listen_connect_tcp_strings) {
    braid_loop *loop = bt_loop_new(NULL);
    roundtrip(loop, "tcp:0:interface=127.0.0.1:backlog=16", "tcp:host=127.0.0.1:port=%d:timeout=5");
    roundtrip(loop, "tcp:0:interface=127.0.0.1:reuseport=1", "tcp:127.0.0.1:%d:bindAddress=127.0.0.1");
    bt_loop_destroy(loop);
}

BT_IO_TEST(listen_connect_unix_strings) {
    braid_loop *loop = bt_loop_new(NULL);
    char sdesc[128], cdesc[128];
    snprintf(sdesc, sizeof sdesc, "unix:/tmp/braid-ep-%d.sock:mode=600", (int)getpid());
    snprintf(cdesc, sizeof cdesc, "unix:path=/tmp/braid-ep-%d.sock%%.0d", (int)getpid());
    roundtrip(loop, sdesc, cdesc);
    bt_loop_destroy(loop);
}

/* fd:N listens on a socket made elsewhere (socket activation): the
 * listener takes it over and serves on it like any other. */
BT_IO_TEST(listen_fd_string_adopts_a_listening_socket) {
    braid_loop *loop = bt_loop_new(NULL);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    BT_TRUE(fd >= 0);
    BT_TRUE(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0);
    BT_TRUE(listen(fd, 8) == 0);
    char desc[32];
    snprintf(desc, sizeof desc, "fd:%d", fd);
    roundtrip(loop, desc, "tcp:host=127.0.0.1:port=%d");   /* closes the listener, and fd with it */
    BT_TRUE(fcntl(fd, F_GETFD) < 0);
    bt_loop_destroy(loop);
}

BT_IO_TEST(connect_string_timeout) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    braid_factory cf;
    braid_factory_init(&cf, &client_ops, sizeof(ep_proto), NULL);
    /* a name resolution in flight when the timeout passes */
    braid_deferred *d = braid_endpoint_connect(loop, "tcp:host=localhost:port=9:timeout=3", &cf);
    braid_fake_clock_advance(fc, BRAID_SECONDS(3));
    for (int i = 0; i < 5 && !braid_deferred_is_called(d); i++)
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    if (!braid_deferred_is_failure(d)) bt_fail(__FILE__, __LINE__, "expected a timeout");
    braid_failure *f = braid_deferred_expect_failure(d, 0);
    /* refused can beat the timer only if the resolver pool answered first */
    BT_TRUE(f->code == BRAID_ETIMEDOUT || f->code == -ECONNREFUSED);
    braid_failure_free(f);
    braid_deferred_unref(d);
    /* the resolver pool job holds the loop until it reported back */
    for (int i = 0; i < 10000 && braid_loop_run_once(loop, 0) > 0; i++) {}
    BT_EQ(cf.refs, 0);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* Connect timeouts follow the options-struct convention: 0 is the default
 * (BRAID_ENDPOINT_CONNECT_TIMEOUT, 30 s), BRAID_FOREVER none. The name
 * resolution is held in a memory pool (it runs only when the test steps
 * the pool), so nothing but the timer can end the attempt. */
typedef struct held {
    braid_fake_clock *fc;
    braid_loop *loop;
    braid_pool *pool;
    braid_factory cf;
} held;

static braid_deferred *held_connect(held *h, uint64_t timeout, bool string) {
    braid_fake_clock_new(0, &h->fc);
    h->loop = bt_loop_new(braid_fake_clock_base(h->fc));
    braid_factory_init(&h->cf, &client_ops, sizeof(ep_proto), NULL);
    BT_OK(braid_pool_new(&(braid_pool_options){ .flags = BRAID_POOL_MEMORY }, &h->pool));
    BT_OK(braid_resolver_set_pool(h->loop, h->pool, 0));
    braid_deferred *d = string ? braid_endpoint_connect(h->loop, "tcp:host=localhost:port=9", &h->cf)
                               : braid_endpoint_connect_typed(h->loop, &(braid_endpoint){
                                     .kind = BRAID_ENDPOINT_TCP, .host = "localhost", .port = 9,
                                     .timeout = timeout }, &h->cf);
    BT_FALSE(braid_deferred_is_called(d));
    return d;
}

/* d must have failed with code: consume it, let the held resolution run
 * and report back, and free everything. */
static void held_done(held *h, braid_deferred *d, int code) {
    braid_failure *f = braid_deferred_expect_failure(d, code);
    braid_failure_free(f);
    braid_deferred_unref(d);
    while (braid_pool_step(h->pool) > 0) {}
    bt_drain(h->loop);
    braid_pool_free(h->pool);
    bt_loop_destroy(h->loop);
    braid_fake_clock_free(h->fc);
    BT_EQ(h->cf.refs, 0);
}

BT_IO_TEST(connect_default_timeout) {
    for (int string = 0; string < 2; string++) {
        held h;
        braid_deferred *d = held_connect(&h, 0, string);
        bt_advance(h.loop, BRAID_ENDPOINT_CONNECT_TIMEOUT - 1);
        braid_deferred_expect_no_result(d);
        bt_advance(h.loop, 1);
        held_done(&h, d, BRAID_ETIMEDOUT);
    }
}

BT_IO_TEST(connect_forever_never_times_out) {
    held h;
    braid_deferred *d = held_connect(&h, BRAID_FOREVER, false);
    bt_advance(h.loop, BRAID_SECONDS(86400) * 365);
    braid_deferred_expect_no_result(d);
    BT_EQ(braid_loop_timer_count(h.loop), 0);      /* no timer armed at all */
    braid_deferred_cancel(d);
    held_done(&h, d, BRAID_ECANCELED);
}
