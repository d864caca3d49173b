/* The network as a component (ConnectedServer): a handler component per
 * connection, bytes in on its inbox, bytes out from its outbox, close by
 * signal, backpressure by pausing the reads. */
// ctest-labels: component stream
#include "harness.h"
#include "support/net.h"
#include "support/run.h"

#include <braid/component.h>

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

/* An echo handler; with hold set it does not read until released. */
typedef struct echo_state {
    bool hold;
    int runs;
} echo_state;
static echo_state g_echo;
static int g_made;
static braid_component *g_handler;

static int echo_run(braid_component *c, void *st) {
    echo_state *e = st;
    e->runs++;
    if (e->hold) return BRAID_COMPONENT_IDLE;
    braid_component_msg m;
    while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0)
        if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, m.free) < 0) braid_component_msg_free(m);
    return braid_component_handle_control(c);
}
static int make_echo(braid_loop *loop, const braid_address *peer, void *arg, braid_component **out) {
    (void)peer;
    (void)arg;
    g_made++;
    braid_component_options o = { .name = "echo", .capacity = 2 };
    int rc = braid_component_new(loop, echo_run, &g_echo, &o, out);
    if (rc == 0) g_handler = *out;
    return rc;
}

/* Says bye and closes at once. */
static int bye_run(braid_component *c, void *st) {
    (void)st;
    braid_component_chunk *ch = braid_component_chunk_new("bye", 3);
    braid_component_send(c, BRAID_COMPONENT_OUTBOX, ch, braid_free);
    braid_component_send(c, BRAID_COMPONENT_SIGNAL, BRAID_COMPONENT_SHUTDOWN, NULL);
    return BRAID_COMPONENT_DONE;
}
static int make_bye(braid_loop *loop, const braid_address *peer, void *arg, braid_component **out) {
    (void)peer;
    (void)arg;
    return braid_component_new(loop, bye_run, NULL, NULL, out);
}

static void spin(braid_loop *loop) { bt_spin(loop, 50); }

static bool written(braid_memory_transport *m, const char *want) {
    size_t len;
    const char *d = braid_memory_transport_data(m, &len);
    return len == strlen(want) && memcmp(d, want, len) == 0;
}

BT_TEST(echo_handler_per_connection_and_eof_ends_it) {
    braid_loop *loop = bt_loop_new(NULL);
    g_echo = (echo_state){ 0 };
    braid_component_server *s;
    BT_OK(braid_component_server_new(loop, make_echo, NULL, &s));
    braid_protocol *p1 = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_protocol *p2 = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_memory_transport *m1 = NULL;
    braid_memory_transport_new(loop, p1, &m1);
    braid_memory_transport *m2 = NULL;
    braid_memory_transport_new(loop, p2, &m2);
    BT_EQ(braid_component_server_connections(s), 2);
    BT_OK(braid_memory_transport_receive(m1, "hello ", 6));
    BT_OK(braid_memory_transport_receive(m2, "other", 5));
    BT_OK(braid_memory_transport_receive(m1, "world", 5));
    spin(loop);
    BT_TRUE(written(m1, "hello world"));
    BT_TRUE(written(m2, "other"));
    /* the peer's EOF: the handler gets producer_finished, ends, and its
     * signal closes the connection; then both components are freed */
    braid_memory_transport_peer_eof(m1);
    spin(loop);
    braid_memory_transport_consume(m1, 100);
    spin(loop);
    BT_TRUE(mstate(m1).lost_delivered);
    BT_EQ(braid_component_server_connections(s), 1);
    /* a connection lost under the handler */
    braid_memory_transport_peer_lost(m2, BRAID_ECONNRESET);
    spin(loop);
    BT_EQ(braid_component_server_connections(s), 0);
    braid_memory_transport_free(m1);
    braid_memory_transport_free(m2);
    braid_component_server_free(s);
    BT_EQ(braid_component_count(loop), 0);
    bt_loop_destroy(loop);
}

BT_TEST(full_handler_pauses_reading_until_it_pops) {
    braid_loop *loop = bt_loop_new(NULL);
    g_echo = (echo_state){ .hold = true };
    braid_component_server *s;
    BT_OK(braid_component_server_new(loop, make_echo, NULL, &s));
    braid_protocol *p = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    spin(loop);
    BT_OK(braid_memory_transport_receive(m, "a", 1));
    BT_OK(braid_memory_transport_receive(m, "b", 1));
    BT_FALSE(mstate(m).reading_paused);
    BT_OK(braid_memory_transport_receive(m, "c", 1));   /* the handler's inbox (2) is full */
    BT_TRUE(mstate(m).reading_paused);
    BT_ERR(braid_memory_transport_receive(m, "d", 1), BRAID_EAGAIN);
    spin(loop);
    BT_TRUE(mstate(m).reading_paused);
    /* the handler reads again: what was held goes first, then reading resumes */
    g_echo.hold = false;
    braid_component_wake(g_handler);
    spin(loop);
    BT_FALSE(mstate(m).reading_paused);
    BT_OK(braid_memory_transport_receive(m, "d", 1));
    spin(loop);
    BT_TRUE(written(m, "abcd"));
    braid_memory_transport_peer_eof(m);
    spin(loop);
    braid_memory_transport_consume(m, 100);
    spin(loop);
    BT_EQ(braid_component_server_connections(s), 0);
    braid_memory_transport_free(m);
    braid_component_server_free(s);
    bt_loop_destroy(loop);
}

/* Freeing the server with a connection open aborts it and frees its components. */
BT_TEST(server_free_aborts_open_connections) {
    braid_loop *loop = bt_loop_new(NULL);
    g_echo = (echo_state){ .hold = true };
    braid_component_server *s;
    BT_OK(braid_component_server_new(loop, make_echo, NULL, &s));
    braid_protocol *p = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    BT_OK(braid_memory_transport_receive(m, "x", 1));
    braid_component_server_free(s);
    BT_EQ(braid_component_count(loop), 0);
    spin(loop);
    BT_TRUE(mstate(m).aborted);
    braid_memory_transport_free(m);
    bt_loop_destroy(loop);
}

BT_TEST(handler_signal_closes_after_writing) {
    braid_loop *loop = bt_loop_new(NULL);
    braid_component_server *s;
    BT_OK(braid_component_server_new(loop, make_bye, NULL, &s));
    braid_protocol *p = braid_factory_build(braid_component_server_factory(s), NULL);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, p, &m);
    spin(loop);
    BT_TRUE(written(m, "bye"));
    BT_TRUE(mstate(m).disconnecting || mstate(m).closed);
    braid_memory_transport_consume(m, 3);
    spin(loop);
    BT_TRUE(mstate(m).lost_delivered);
    BT_EQ(braid_component_server_connections(s), 0);
    braid_memory_transport_free(m);
    braid_component_server_free(s);
    bt_loop_destroy(loop);
}

/* ---- over real TCP, on every backend ------------------------------------------------ */
typedef struct client {
    braid_protocol base;
} client;
static char g_got[64];
static size_t g_ngot;
static int g_done;
static void cl_made(braid_protocol *p) { braid_transport_write(p->transport, "ping", 4); }
static void cl_data(braid_protocol *p, const void *buf, size_t len) {
    if (g_ngot + len <= sizeof g_got) memcpy(g_got + g_ngot, buf, len), g_ngot += len;
    if (g_ngot >= 4) braid_transport_close(p->transport, BRAID_FOREVER);
}
static void cl_lost(braid_protocol *p, const braid_failure *f) {
    (void)p;
    (void)f;
    g_done = 1;
}
static const braid_protocol_ops client_ops = { .connection_made = cl_made, .data_received = cl_data,
                                               .connection_lost = cl_lost };
static braid_result drop_result(braid_result r, void *arg) {
    (void)arg;
    braid_result_drop(r);
    return braid_result_ok(NULL);
}

BT_IO_TEST(echo_over_tcp) {
    braid_loop *loop = bt_loop_new(NULL);
    g_echo = (echo_state){ 0 };
    g_ngot = 0;
    g_done = 0;
    braid_component_server *s;
    BT_OK(braid_component_server_new(loop, make_echo, NULL, &s));
    braid_listener *l = bt_listen(loop, &(braid_endpoint){ .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1" },
                                  braid_component_server_factory(s));
    braid_address a;
    BT_OK(braid_listener_address(l, &a));
    braid_factory cf;
    braid_factory_init(&cf, &client_ops, sizeof(client), NULL);
    braid_endpoint co = { .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = braid_address_port(&a) };
    braid_deferred *d = braid_endpoint_connect_typed(loop, &co, &cf);
    BT_OK(braid_deferred_add_both(d, drop_result, NULL));
    braid_deferred_unref(d);
    bt_run_until(loop, &g_done, 10000);
    BT_EQ(g_ngot, 4);
    BT_TRUE(memcmp(g_got, "ping", 4) == 0);
    /* the server side sees the close, the handler ends, all is reaped */
    BT_RUN_UNTIL(loop, braid_component_server_connections(s) == 0, 1000);
    braid_listener_close(l);
    braid_component_server_free(s);
    spin(loop);
    bt_loop_destroy(loop);
}
