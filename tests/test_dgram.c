/* UDP on every backend: send_to/receive with addresses, recvmmsg batching
 * (many datagrams, few system calls), connected mode with ICMP errors,
 * oversized datagrams reported, close from inside a callback. */
// ctest-labels: stream
#include "harness.h"
#include "support/run.h"
#include <unistd.h>

typedef struct drec {
    int n, errors, last_error;
    char last[64];
    size_t last_len;
    braid_address from;
    bool echo, close_in_cb;
} drec;

static void on_dgram(braid_dgram *d, const void *buf, size_t len, const braid_address *from, void *arg) {
    drec *r = arg;
    r->n++;
    r->last_len = len;
    memcpy(r->last, buf, len < sizeof r->last ? len : sizeof r->last);
    r->from = *from;
    if (r->echo) braid_dgram_send_to(d, buf, len, from);
    if (r->close_in_cb) { braid_dgram_close(d); r->close_in_cb = false; }
}
static void on_err(braid_dgram *d, int code, void *arg) {
    drec *r = arg;
    (void)d;
    r->errors++;
    r->last_error = code;
}
static const braid_dgram_ops ops = { .datagram_received = on_dgram, .error = on_err };

static braid_dgram *open_local(braid_loop *loop, drec *r, int batch, size_t max) {
    braid_dgram *d;
    BT_OK(braid_dgram_open(loop, &ops, r, &(braid_dgram_options){ .host = "127.0.0.1", .batch = batch,
                                                         .max_datagram = max }, &d));
    return d;
}

BT_IO_TEST(udp_send_receive_and_echo) {
    braid_loop *loop = bt_loop_new(NULL);
    drec ra = { 0 }, rb = { .echo = true };
    braid_dgram *a = open_local(loop, &ra, 0, 0), *b = open_local(loop, &rb, 0, 0);
    braid_address aa, ba;
    BT_OK(braid_dgram_address(a, &aa));
    BT_OK(braid_dgram_address(b, &ba));
    BT_OK(braid_dgram_send_to(a, "ping", 4, &ba));
    BT_RUN_UNTIL(loop, ra.n >= 1, 100);
    BT_EQ(rb.n, 1);
    BT_EQ(ra.n, 1);
    BT_EQ(ra.last_len, 4);
    BT_TRUE(memcmp(ra.last, "ping", 4) == 0);
    BT_EQ(braid_address_port(&rb.from), braid_address_port(&aa));
    BT_EQ(braid_address_port(&ra.from), braid_address_port(&ba));
    braid_dgram_close(a);
    braid_dgram_close(b);
    bt_loop_destroy(loop);
}

BT_IO_TEST(udp_recvmmsg_batches) {
    braid_loop *loop = bt_loop_new(NULL);
    drec ra = { 0 }, rb = { 0 };
    braid_dgram *a = open_local(loop, &ra, 0, 0), *b = open_local(loop, &rb, 16, 2048);
    braid_address ba;
    BT_OK(braid_dgram_address(b, &ba));
    for (int i = 0; i < 64; i++) BT_OK(braid_dgram_send_to(a, &i, sizeof i, &ba));
    BT_RUN_UNTIL(loop, rb.n >= 64, 100);
    BT_EQ(rb.n, 64);
    BT_UEQ(braid_dgram_received(b), 64);
    /* 64 datagrams already queued: 4 full batches of 16 (+ at most one empty try) */
    BT_ULE(braid_dgram_recv_calls(b), 5);
    braid_dgram_close(a);
    braid_dgram_close(b);
    bt_loop_destroy(loop);
}

BT_IO_TEST(udp_connected_mode_and_errors) {
    braid_loop *loop = bt_loop_new(NULL);
    drec ra = { 0 }, rb = { 0 };
    braid_dgram *a = open_local(loop, &ra, 4, 8), *b = open_local(loop, &rb, 0, 0);
    braid_address ba;
    BT_OK(braid_dgram_address(b, &ba));
    BT_ERR(braid_dgram_send(b, "x", 1), BRAID_EINVAL);     /* not connected */
    BT_OK(braid_dgram_connect(a, &ba));
    BT_OK(braid_dgram_send(a, "to b", 4));
    BT_RUN_UNTIL(loop, rb.n >= 1, 100);
    BT_EQ(rb.n, 1);
    /* b answers with a datagram larger than a's 8-byte buffers: reported, dropped */
    braid_address aa;
    BT_OK(braid_dgram_address(a, &aa));
    BT_OK(braid_dgram_send_to(b, "0123456789abcdef", 16, &aa));
    BT_RUN_UNTIL(loop, ra.errors >= 1, 100);
    BT_ERR(ra.last_error, BRAID_EMSGSIZE);
    BT_EQ(ra.n, 0);
    /* b goes away: a's next send draws ICMP port unreachable -> ECONNREFUSED */
    braid_dgram_close(b);
    BT_OK(braid_dgram_send(a, "anyone?", 7));
    for (int i = 0; i < 100 && ra.errors < 2; i++) {
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
        if (ra.errors < 2) usleep(1000);
    }
    BT_EQ(ra.errors, 2);
    BT_ERR(ra.last_error, -ECONNREFUSED);
    braid_dgram_close(a);
    bt_loop_destroy(loop);
}

BT_IO_TEST(udp_close_inside_callback_and_pause) {
    braid_loop *loop = bt_loop_new(NULL);
    drec ra = { 0 }, rb = { .close_in_cb = true };
    braid_dgram *a = open_local(loop, &ra, 0, 0), *b = open_local(loop, &rb, 0, 0);
    braid_address ba;
    BT_OK(braid_dgram_address(b, &ba));
    braid_dgram_pause_reading(b);
    for (int i = 0; i < 3; i++) BT_OK(braid_dgram_send_to(a, "x", 1, &ba));
    for (int i = 0; i < 5; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(rb.n, 0);
    braid_dgram_resume_reading(b);
    BT_RUN_UNTIL(loop, rb.n >= 1, 100);
    BT_EQ(rb.n, 1);            /* closed after the first: the rest of the batch is dropped */
    braid_dgram_close(a);
    bt_loop_destroy(loop);
}
