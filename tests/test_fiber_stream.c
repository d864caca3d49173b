/* Fiber streams: reads (exactly, lines, some) across chunks, deadlines on the
 * fake clock, EOF and loss mid-read, cancellation while blocked, write
 * back-pressure and flush, close; over the memory transport and the pump,
 * and over real loopback sockets (factory + connect) on every backend. */
// ctest-labels: fiber stream
#include "harness.h"
#include "support/net.h"
#include "support/run.h"
#include <braid/fiber.h>
#include <braid/testing_deferred.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

/* braid_memory_transport_state as a value, for assertions. */
static struct braid_memory_transport_state mstate(const braid_memory_transport *m) {
    struct braid_memory_transport_state st;
    braid_memory_transport_state(m, &st);
    return st;
}

/* ---- helpers ------------------------------------------------------------------------ */
static braid_loop *fake_loop(braid_fake_clock **fc) {
    braid_fake_clock_new(0, fc);
    return bt_loop_new(braid_fake_clock_base(*fc));
}

static void fake_done(braid_loop *loop, braid_fake_clock *fc) {
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}

/* A fiber body under test: what it saw, step by step. */
typedef struct fx {
    braid_loop *loop;
    braid_fstream *s;
    int step;
    int rc[8];
    ssize_t n[8];
    char buf[8][256];
    size_t wrote;
    bool done;
} fx;

/* A memory-transport stream and a fiber running fn on it. */
static braid_memory_transport *mem_stream(braid_loop *loop, fx *x) {
    x->loop = loop;
    braid_fstream_new(loop, &x->s);
    BT_TRUE(x->s != NULL);
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, braid_fstream_protocol(x->s), &m);
    BT_TRUE(m != NULL);
    return m;
}

/* Close the memory transport from the peer, deliver the loss, free everything. */
static void mem_end(braid_loop *loop, braid_memory_transport *m, fx *x) {
    if (!mstate(m).closed) braid_memory_transport_peer_lost(m, BRAID_ECONNECTION_LOST);
    bt_drain(loop);
    braid_memory_transport_free(m);
    braid_fstream_free(x->s);
}

static braid_deferred *spawn(braid_loop *loop, braid_result_fn fn, fx *x) {
    braid_deferred *d = braid_fiber_spawn(loop, fn, x, NULL);
    BT_TRUE(d != NULL);
    return d;
}

/* ---- read exactly across many small chunks ------------------------------------------- */
static braid_result exact_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    x->rc[0] = braid_fstream_read_exactly(x->s, x->buf[0], 200, BRAID_FOREVER);
    x->step = 2;
    x->rc[1] = braid_fstream_read_exactly(x->s, x->buf[1], 3, BRAID_FOREVER);
    x->step = 3;
    return braid_result_ok(NULL);
}

BT_TEST(read_exactly_many_chunks) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, exact_fn, &x);
    bt_drain(loop);
    BT_EQ(x.step, 1);                         /* blocked: nothing there */
    char data[203];
    for (int i = 0; i < 203; i++) data[i] = (char)('a' + i % 26);
    /* 7 bytes at a time, a loop iteration between chunks */
    size_t off = 0;
    while (off < 200) {
        size_t k = 200 - off < 7 ? 200 - off : 7;
        BT_OK(braid_memory_transport_receive(m, data + off, k));
        off += k;
        bt_drain(loop);
        if (off < 200) BT_EQ(x.step, 1);      /* not before the last byte */
    }
    BT_EQ(x.step, 2);
    BT_OK(x.rc[0]);
    BT_TRUE(memcmp(x.buf[0], data, 200) == 0);
    BT_OK(braid_memory_transport_receive(m, data + 200, 3));
    bt_drain(loop);
    BT_EQ(x.step, 3);
    BT_OK(x.rc[1]);
    BT_TRUE(memcmp(x.buf[1], data + 200, 3) == 0);
    BT_EQ(braid_fstream_buffered(x.s), 0);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* Bytes already buffered are read without a fiber; only waiting needs one. */
BT_TEST(read_outside_fiber) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    char b[16];
    BT_ERR(braid_fstream_read(x.s, b, sizeof b, BRAID_FOREVER), BRAID_ENOT_IN_FIBER);
    BT_OK(braid_memory_transport_receive(m, "abc\ndef", 7));
    BT_EQ(braid_fstream_read_line(x.s, b, sizeof b, '\n', BRAID_FOREVER), 4);
    BT_STREQ(b, "abc\n");
    BT_ERR(braid_fstream_read_exactly(x.s, b, 5, BRAID_FOREVER), BRAID_ENOT_IN_FIBER);
    BT_EQ(braid_fstream_buffered(x.s), 3);   /* nothing consumed by the failure */
    BT_EQ(braid_fstream_read(x.s, b, sizeof b, 0), 3);
    BT_TRUE(memcmp(b, "def", 3) == 0);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* ---- lines ---------------------------------------------------------------------------------- */
static braid_result lines_fn(void *arg) {
    fx *x = arg;
    for (int i = 0; i < 3; i++) {
        x->step = i + 1;
        x->n[i] = braid_fstream_read_line(x->s, x->buf[i], 16, '\n', BRAID_FOREVER);
    }
    x->step = 4;
    /* oversize: 15 bytes without a newline in a 16-byte buffer */
    x->n[3] = braid_fstream_read_line(x->s, x->buf[3], 16, '\n', BRAID_FOREVER);
    x->step = 5;
    /* the same bytes fit a bigger buffer, whose line ends after more input */
    x->n[4] = braid_fstream_read_line(x->s, x->buf[4], 64, '\n', BRAID_FOREVER);
    x->step = 6;
    x->n[5] = braid_fstream_read_line(x->s, x->buf[5], 64, '\n', BRAID_FOREVER);   /* "tail" at EOF */
    x->n[6] = braid_fstream_read_line(x->s, x->buf[6], 64, '\n', BRAID_FOREVER);   /* then 0 */
    x->step = 7;
    return braid_result_ok(NULL);
}

BT_TEST(read_line_split_delimiters_and_oversize) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, lines_fn, &x);
    bt_drain(loop);
    const char *chunks[] = { "hel", "lo\r", "\n", "wor", "ld\nx\n" };
    for (int i = 0; i < 5; i++) {
        BT_OK(braid_memory_transport_receive(m, chunks[i], strlen(chunks[i])));
        bt_drain(loop);
        if (i < 2) BT_EQ(x.step, 1);
    }
    BT_EQ(x.step, 4);
    BT_EQ(x.n[0], 7); BT_STREQ(x.buf[0], "hello\r\n");
    BT_EQ(x.n[1], 6); BT_STREQ(x.buf[1], "world\n");
    BT_EQ(x.n[2], 2); BT_STREQ(x.buf[2], "x\n");
    BT_OK(braid_memory_transport_receive(m, "0123456789", 10));
    bt_drain(loop);
    BT_EQ(x.step, 4);                         /* 10 < 15: still waiting */
    BT_OK(braid_memory_transport_receive(m, "abcdefgh", 8));
    bt_drain(loop);
    BT_EQ(x.step, 5);
    BT_ERR(x.n[3], BRAID_EMSGSIZE);           /* a clear error, nothing consumed */
    BT_OK(braid_memory_transport_receive(m, "\ntail", 5));
    bt_drain(loop);
    BT_EQ(x.n[4], 19);
    BT_STREQ(x.buf[4], "0123456789abcdefgh\n");
    BT_EQ(x.step, 6);
    braid_memory_transport_peer_eof(m);
    bt_drain(loop);
    BT_EQ(x.step, 7);
    BT_EQ(x.n[5], 4); BT_STREQ(x.buf[5], "tail");
    BT_EQ(x.n[6], 0);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* ---- deadlines on the fake clock ------------------------------------------------------------- */
static braid_result deadline_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    x->rc[0] = braid_fstream_read_exactly(x->s, x->buf[0], 10, BRAID_SECONDS(1));
    x->step = 2;
    x->n[1] = braid_fstream_read_line(x->s, x->buf[1], 64, '\n', BRAID_MSEC(500));
    x->step = 3;
    x->rc[2] = braid_fstream_read_exactly(x->s, x->buf[2], 10, BRAID_FOREVER);
    x->step = 4;
    x->n[3] = braid_fstream_read(x->s, x->buf[3], 64, 0);   /* nothing there: no wait */
    x->step = 5;
    return braid_result_ok(NULL);
}

BT_TEST(deadlines_on_fake_clock) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, deadline_fn, &x);
    bt_drain(loop);
    BT_OK(braid_memory_transport_receive(m, "abc", 3));
    bt_drain(loop);
    braid_loop_advance(loop, BRAID_MSEC(999));
    bt_drain(loop);
    BT_EQ(x.step, 1);                         /* the deadline covers the whole read */
    braid_loop_advance(loop, BRAID_MSEC(1));
    bt_drain(loop);
    BT_EQ(x.step, 2);
    BT_ERR(x.rc[0], BRAID_ETIMEDOUT);
    BT_EQ(braid_fstream_buffered(x.s), 3);   /* nothing consumed */
    braid_loop_advance(loop, BRAID_MSEC(500));
    bt_drain(loop);
    BT_EQ(x.step, 3);
    BT_ERR(x.n[1], BRAID_ETIMEDOUT);
    braid_loop_advance(loop, BRAID_SECONDS(3600));
    bt_drain(loop);
    BT_EQ(x.step, 3);                         /* no deadline: still waiting */
    BT_OK(braid_memory_transport_receive(m, "defghij", 7));
    bt_drain(loop);
    BT_EQ(x.step, 5);
    BT_OK(x.rc[2]);
    BT_TRUE(memcmp(x.buf[2], "abcdefghij", 10) == 0);
    BT_ERR(x.n[3], BRAID_ETIMEDOUT);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    fake_done(loop, fc);
}

/* ---- the peer closes mid-read ------------------------------------------------------------------ */
static braid_result eof_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    x->rc[0] = braid_fstream_read_exactly(x->s, x->buf[0], 10, BRAID_FOREVER);
    x->n[1] = braid_fstream_read(x->s, x->buf[1], 64, BRAID_FOREVER);
    x->n[2] = braid_fstream_read(x->s, x->buf[2], 64, BRAID_FOREVER);
    x->rc[3] = braid_fstream_read_exactly(x->s, x->buf[3], 1, BRAID_FOREVER);
    /* half-closed: we can still answer */
    x->rc[4] = braid_fstream_write(x->s, "bye", 3, BRAID_FOREVER);
    x->rc[5] = braid_fstream_close(x->s, BRAID_SECONDS(1));
    x->step = 2;
    return braid_result_ok(NULL);
}

BT_TEST(peer_eof_mid_read) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, eof_fn, &x);
    bt_drain(loop);
    BT_OK(braid_memory_transport_receive(m, "abcd", 4));
    bt_drain(loop);
    BT_EQ(x.step, 1);
    braid_memory_transport_peer_eof(m);
    for (int i = 0; i < 20 && x.step < 2; i++) {
        bt_drain(loop);
        braid_memory_transport_consume(m, 100);   /* the peer reads our "bye" */
    }
    BT_EQ(x.step, 2);
    BT_ERR(x.rc[0], BRAID_EEOF);
    BT_EQ(x.n[1], 4);                         /* the partial bytes stayed readable */
    BT_TRUE(memcmp(x.buf[1], "abcd", 4) == 0);
    BT_EQ(x.n[2], 0);                         /* then a clean EOF */
    BT_ERR(x.rc[3], BRAID_EEOF);
    BT_OK(x.rc[4]);
    BT_OK(x.rc[5]);                           /* closed cleanly */
    BT_UEQ(mstate(m).bytes_written, 3);
    BT_TRUE(mstate(m).lost_delivered);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

static braid_result lost_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    x->n[0] = braid_fstream_read_line(x->s, x->buf[0], 64, '\n', BRAID_FOREVER);
    x->n[1] = braid_fstream_read_line(x->s, x->buf[1], 64, '\n', BRAID_FOREVER);
    x->rc[2] = braid_fstream_write(x->s, "x", 1, BRAID_FOREVER);
    x->step = 2;
    return braid_result_ok(NULL);
}

BT_TEST(connection_lost_mid_read) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, lost_fn, &x);
    bt_drain(loop);
    BT_OK(braid_memory_transport_receive(m, "one\ntw", 6));
    braid_memory_transport_peer_lost(m, BRAID_ECONNRESET);
    bt_drain(loop);
    BT_EQ(x.step, 2);
    BT_EQ(x.n[0], 4);                         /* what arrived before the loss first */
    BT_ERR(x.n[1], BRAID_ECONNRESET);         /* then the reason, not a fake EOF */
    BT_ERR(x.rc[2], BRAID_ECONNRESET);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* ---- cancellation while blocked --------------------------------------------------------------- */
static braid_result cancel_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    x->n[0] = braid_fstream_read_line(x->s, x->buf[0], 64, '\n', BRAID_FOREVER);
    x->step = 2;
    /* cleanup after cancellation still works: say goodbye */
    x->rc[1] = braid_fstream_write(x->s, "cancelled\n", 10, BRAID_FOREVER);
    x->step = 3;
    return braid_result_ok(NULL);
}

BT_TEST(cancel_while_blocked_in_read) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, cancel_fn, &x);
    bt_drain(loop);
    BT_OK(braid_memory_transport_receive(m, "partial", 7));
    bt_drain(loop);
    BT_EQ(x.step, 1);
    braid_deferred_cancel(d);
    bt_drain(loop);
    BT_EQ(x.step, 3);
    BT_ERR(x.n[0], BRAID_ECANCELED);
    BT_EQ(braid_fstream_buffered(x.s), 7);
    BT_OK(x.rc[1]);
    size_t len;
    const char *w = braid_memory_transport_data(m, &len);
    BT_EQ(len, 10);
    BT_TRUE(memcmp(w, "cancelled\n", 10) == 0);
    braid_failure_free(braid_deferred_expect_failure(d, BRAID_ECANCELED));
    braid_deferred_unref(d);
    BT_EQ(braid_fiber_count(loop), 0);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

static braid_result two_readers_fn(void *arg) {
    fx *x = arg;
    int i = x->step++;
    x->n[i] = braid_fstream_read(x->s, x->buf[i], 64, BRAID_FOREVER);
    return braid_result_ok(NULL);
}

BT_TEST(second_reader_is_busy) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d1 = spawn(loop, two_readers_fn, &x);
    braid_deferred *d2 = spawn(loop, two_readers_fn, &x);
    bt_drain(loop);
    BT_ERR(x.n[1], BRAID_EBUSY);
    BT_OK(braid_memory_transport_receive(m, "hi", 2));
    bt_drain(loop);
    BT_EQ(x.n[0], 2);
    braid_deferred_expect_success(d1);
    braid_deferred_expect_success(d2);
    braid_deferred_unref(d1);
    braid_deferred_unref(d2);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* ---- writes: back-pressure from a peer that never reads ------------------------------------------ */
static char big[8192];

static braid_result writer_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    for (int i = 0; i < 32; i++) {            /* 256 KiB in 8 KiB writes */
        int rc = braid_fstream_write(x->s, big, sizeof big, BRAID_FOREVER);
        if (rc < 0) { x->rc[0] = rc; return braid_result_ok(NULL); }
        x->wrote += sizeof big;
    }
    x->step = 2;
    x->rc[1] = braid_fstream_flush(x->s, BRAID_FOREVER);
    x->step = 3;
    return braid_result_ok(NULL);
}

BT_TEST(write_waits_for_never_reading_peer_then_resumes) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, writer_fn, &x);
    for (int i = 0; i < 50; i++) bt_drain(loop);
    BT_EQ(x.step, 1);
    BT_EQ(x.wrote, 7 * sizeof big);           /* the 8th write reached 64 KiB (high): waiting */
    size_t len;
    braid_memory_transport_data(m, &len);
    BT_EQ(len, 8 * sizeof big);
    BT_FALSE(mstate(m).closed);
    /* the peer reads down to 48 KiB: above the low watermark (16 KiB), still waiting */
    braid_memory_transport_consume(m, 16 * 1024);
    bt_drain(loop);
    BT_EQ(x.wrote, 7 * sizeof big);
    /* down to 16 KiB: resumed, and it writes until the next high watermark */
    braid_memory_transport_consume(m, 32 * 1024);
    bt_drain(loop);
    BT_EQ(x.step, 1);
    BT_EQ(x.wrote, 13 * sizeof big);
    uint64_t total = 0;
    for (int i = 0; i < 100 && x.step < 2; i++) {
        braid_memory_transport_data(m, &len);
        total += len;
        braid_memory_transport_consume(m, len);
        bt_drain(loop);
    }
    BT_EQ(x.step, 2);                         /* all written; flush waits for the rest */
    braid_memory_transport_data(m, &len);
    BT_GT(len, 0);
    braid_memory_transport_consume(m, len - 1);
    bt_drain(loop);
    BT_EQ(x.step, 2);                         /* one byte left: not flushed */
    braid_memory_transport_consume(m, 1);
    bt_drain(loop);
    BT_EQ(x.step, 3);
    BT_OK(x.rc[1]);
    BT_UEQ(mstate(m).bytes_written, 32 * sizeof big);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

static braid_result write_timeout_fn(void *arg) {
    fx *x = arg;
    x->step = 1;
    for (int i = 0; i < 32; i++) {
        x->rc[0] = braid_fstream_write(x->s, big, sizeof big, BRAID_SECONDS(5));
        if (x->rc[0] < 0) break;
    }
    x->step = 2;
    x->rc[1] = braid_fstream_close(x->s, BRAID_SECONDS(5));
    x->step = 3;
    return braid_result_ok(NULL);
}

/* A write waiting on a peer that never reads times out; close with a timeout
 * then aborts instead of waiting for ever. */
BT_TEST(write_and_close_time_out_on_fake_clock) {
    braid_fake_clock *fc;
    braid_loop *loop = fake_loop(&fc);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_deferred *d = spawn(loop, write_timeout_fn, &x);
    bt_drain(loop);
    BT_EQ(x.step, 1);
    braid_loop_advance(loop, BRAID_SECONDS(5));
    bt_drain(loop);
    BT_EQ(x.step, 2);
    BT_ERR(x.rc[0], BRAID_ETIMEDOUT);
    BT_FALSE(mstate(m).closed);
    braid_loop_advance(loop, BRAID_SECONDS(5));
    bt_drain(loop);
    BT_EQ(x.step, 3);
    BT_ERR(x.rc[1], BRAID_ETIMEDOUT);
    BT_TRUE(mstate(m).aborted);
    BT_TRUE(mstate(m).lost_delivered);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    mem_end(loop, m, &x);
    fake_done(loop, fc);
}

/* The stream stops reading the transport at its read limit, and goes on
 * as the fiber consumes. */
BT_TEST(read_limit_pauses_transport) {
    braid_loop *loop = bt_loop_new(NULL);
    fx x = { 0 };
    braid_memory_transport *m = mem_stream(loop, &x);
    braid_fstream_set_read_limit(x.s, 1000);
    BT_OK(braid_memory_transport_receive(m, big, 999));
    BT_FALSE(mstate(m).reading_paused);
    BT_OK(braid_memory_transport_receive(m, big, 1));
    BT_TRUE(mstate(m).reading_paused);
    BT_ERR(braid_memory_transport_receive(m, big, 1), BRAID_EAGAIN);
    char b[600];
    BT_EQ(braid_fstream_read(x.s, b, sizeof b, 0), 600);
    BT_FALSE(mstate(m).reading_paused);
    mem_end(loop, m, &x);
    bt_loop_destroy(loop);
}

/* ---- both ends fibers over the pump ------------------------------------------------------------ */
typedef struct pair { braid_loop *loop; braid_fstream *c, *s; int got; int server_rc; char last[64]; } pair;

static braid_result pump_server(void *arg) {
    pair *p = arg;
    char line[64];
    for (;;) {
        ssize_t n = braid_fstream_read_line(p->s, line, sizeof line, '\n', BRAID_FOREVER);
        if (n <= 0) { p->server_rc = (int)n; break; }
        for (ssize_t i = 0; i < n - 1; i++)                /* upper case */
            if (line[i] >= 'a' && line[i] <= 'z') line[i] = (char)(line[i] - 'a' + 'A');
        if (braid_fstream_write(p->s, line, (size_t)n, BRAID_FOREVER) < 0) break;
    }
    braid_fstream_close(p->s, BRAID_FOREVER);
    return braid_result_ok(NULL);
}

static braid_result pump_client(void *arg) {
    pair *p = arg;
    char line[64];
    for (int i = 0; i < 100; i++) {
        int k = snprintf(line, sizeof line, "line%d\n", i);
        if (braid_fstream_write(p->c, line, (size_t)k, BRAID_FOREVER) < 0) break;
        if (braid_fstream_read_line(p->c, p->last, sizeof p->last, '\n', BRAID_FOREVER) <= 0) break;
        p->got++;
    }
    braid_fstream_shutdown_write(p->c);
    char b[8];
    return braid_result_ok((void *)(intptr_t)braid_fstream_read(p->c, b, sizeof b, BRAID_FOREVER));
}

BT_TEST(pump_fiber_client_and_server) {
    braid_loop *loop = bt_loop_new(NULL);
    pair p = { .loop = loop };
    braid_fstream_new(loop, &p.c);
    braid_fstream_new(loop, &p.s);
    braid_pump *pump = NULL;
    braid_pump_new(loop, braid_fstream_protocol(p.c), braid_fstream_protocol(p.s), &pump);
    BT_TRUE(pump != NULL);
    braid_deferred *ds = braid_fiber_spawn(loop, pump_server, &p, NULL);
    braid_deferred *dc = braid_fiber_spawn(loop, pump_client, &p, NULL);
    for (int i = 0; i < 2000 && braid_fiber_count(loop); i++) {
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        braid_pump_flush(pump);
    }
    BT_EQ(braid_fiber_count(loop), 0);
    BT_EQ(p.got, 100);
    BT_STREQ(p.last, "LINE99\n");
    BT_EQ(p.server_rc, 0);                    /* the server saw a clean EOF */
    braid_result r = braid_deferred_expect_success(dc);
    BT_EQ((intptr_t)r.value, 0);              /* and the client the server's close */
    braid_deferred_expect_success(ds);
    braid_deferred_unref(dc);
    braid_deferred_unref(ds);
    braid_pump_flush(pump);
    bt_drain(loop);
    braid_pump_free(pump);
    braid_fstream_free(p.c);
    braid_fstream_free(p.s);
    bt_loop_destroy(loop);
}

/* ---- real sockets: the factory and connect ----------------------------------------------------- */
static int echo_handler(braid_fstream *s, void *arg) {
    int *served = arg;
    char line[128];
    for (;;) {
        ssize_t n = braid_fstream_read_line(s, line, sizeof line, '\n', BRAID_SECONDS(30));
        if (n <= 0) return (int)n;
        int rc = braid_fstream_write(s, line, (size_t)n, BRAID_SECONDS(30));
        if (rc < 0) return rc;
        (*served)++;
    }
}

typedef struct net {
    braid_loop *loop;
    int port;
    int ok, rc, done;
    char got[3][128];
} net;

static braid_result tcp_client(void *arg) {
    net *n = arg;
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:host=127.0.0.1:port=%d", n->port);
    braid_fstream *s;
    n->rc = braid_fstream_connect(n->loop, ep, BRAID_SECONDS(10), &s);
    if (n->rc < 0) { n->done = 1; return braid_result_ok(NULL); }
    BT_TRUE(braid_fstream_transport(s) != NULL);
    /* one write in two pieces, the second line split */
    braid_fstream_write(s, "hello\nwor", 9, BRAID_SECONDS(10));
    braid_fstream_write(s, "ld\n", 3, BRAID_SECONDS(10));
    for (int i = 0; i < 2; i++)
        if (braid_fstream_read_line(s, n->got[i], sizeof n->got[i], '\n', BRAID_SECONDS(10)) > 0) n->ok++;
    n->rc = braid_fstream_close(s, BRAID_SECONDS(10));
    braid_fstream_free(s);
    n->done = 1;
    return braid_result_ok(NULL);
}

BT_IO_TEST(tcp_factory_and_connect_echo) {
    braid_loop *loop = bt_loop_new(NULL);
    int served = 0;
    braid_fstream_factory ff;
    braid_fiber_options fo = { .name = "echo-conn" };
    braid_fstream_factory_init(loop, &ff, echo_handler, &served, &fo);
    net n = { .loop = loop };
    braid_listener *l = bt_listen_tcp(loop, &ff.base, &n.port);
    braid_deferred *d = braid_fiber_spawn(loop, tcp_client, &n, NULL);
    bt_run_until(loop, &n.done, 10000);
    BT_OK(n.rc);
    BT_EQ(n.ok, 2);
    BT_STREQ(n.got[0], "hello\n");
    BT_STREQ(n.got[1], "world\n");
    BT_EQ(served, 2);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    /* the server fiber sees the client's close and ends */
    BT_RUN_UNTIL(loop, !braid_fstream_factory_count(&ff), 1000);
    BT_EQ(braid_fstream_factory_count(&ff), 0);
    braid_listener_close(l);
    for (int i = 0; i < 100 && braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) > 0; i++) {}
    bt_loop_destroy(loop);
}

static braid_result refused_client(void *arg) {
    net *n = arg;
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:host=127.0.0.1:port=%d", n->port);
    braid_fstream *s;
    n->rc = braid_fstream_connect(n->loop, ep, BRAID_SECONDS(10), &s);
    n->ok = s == NULL;
    n->done = 1;
    return braid_result_ok(NULL);
}

BT_IO_TEST(tcp_connect_refused) {
    braid_loop *loop = bt_loop_new(NULL);
    net n = { .loop = loop, .port = bt_free_port() };   /* a port nobody listens on */
    braid_deferred *d = braid_fiber_spawn(loop, refused_client, &n, NULL);
    bt_run_until(loop, &n.done, 10000);
    BT_ERR(n.rc, -ECONNREFUSED);
    BT_TRUE(n.ok);
    braid_deferred_expect_success(d);
    braid_deferred_unref(d);
    braid_fstream *s;
    BT_ERR(braid_fstream_connect(loop, "tcp:host=127.0.0.1:port=1", 0, &s), BRAID_ENOT_IN_FIBER);
    bt_loop_destroy(loop);
}

/* Server handlers over real sockets: one sees the peer close mid-read, the
 * others are blocked and get cancelled by cancel_all. */
typedef struct blk { int eof, cancelled, other; } blk;

static int blocking_handler(braid_fstream *s, void *arg) {
    blk *b = arg;
    char buf[100];
    int rc = braid_fstream_read_exactly(s, buf, sizeof buf, BRAID_FOREVER);
    if (rc == BRAID_EEOF) b->eof++;
    else if (rc == BRAID_ECANCELED) b->cancelled++;
    else b->other++;
    return rc;
}

/* Read from a raw socket until EOF, running the loop meanwhile (the close
 * happens in a later ready phase). Returns the bytes read before EOF, or -1
 * if no EOF came. */
static long raw_until_eof(braid_loop *loop, int fd) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    static char rb[65536];
    long total = 0;
    for (int i = 0; i < 100000; i++) {
        ssize_t k = read(fd, rb, sizeof rb);
        if (k == 0) return total;
        if (k > 0) total += k;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    return -1;
}

BT_IO_TEST(tcp_peer_close_mid_read_and_cancel_all) {
    braid_loop *loop = bt_loop_new(NULL);
    blk b = { 0 };
    braid_fstream_factory ff;
    braid_fstream_factory_init(loop, &ff, blocking_handler, &b, NULL);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &ff.base, &port);
    int fds[3];
    for (int i = 0; i < 3; i++) fds[i] = bt_connect_tcp_rcvbuf(port, 0, 64 * 1024);
    BT_RUN_UNTIL(loop, braid_listener_accepted(l) >= 3, 1000);
    BT_EQ(braid_fstream_factory_count(&ff), 3);
    BT_EQ(write(fds[0], "0123456789", 10), 10);
    close(fds[0]);                            /* closes with 10 of 100 bytes sent */
    BT_RUN_UNTIL(loop, b.eof, 1000);
    BT_EQ(b.eof, 1);
    BT_RUN_UNTIL(loop, braid_fstream_factory_count(&ff) <= 2, 100);
    BT_EQ(braid_fstream_factory_count(&ff), 2);
    braid_listener_close(l);
    braid_fstream_factory_cancel_all(&ff);
    BT_RUN_UNTIL(loop, !braid_fstream_factory_count(&ff), 1000);
    BT_EQ(braid_fstream_factory_count(&ff), 0);
    BT_EQ(b.cancelled, 2);
    BT_EQ(b.other, 0);
    /* the connections were closed: the raw peers see EOF */
    for (int i = 1; i < 3; i++) {
        BT_EQ(raw_until_eof(loop, fds[i]), 0);
        close(fds[i]);
    }
    for (int i = 0; i < 100 && braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) > 0; i++) {}
    bt_loop_destroy(loop);
}

/* A handler writing 8 MiB to a peer that does not read: the write waits
 * (the buffer stays bounded, far under the 4 MiB cap); when the peer reads,
 * everything arrives and the handler finishes. */
typedef struct bulk { size_t sent; int rc; int done; size_t max_buffered; } bulk;

static int bulk_handler(braid_fstream *s, void *arg) {
    bulk *b = arg;
    braid_transport_set_nodelay(braid_fstream_transport(s), true);
    for (int i = 0; i < 1024; i++) {           /* 8 MiB */
        int rc = braid_fstream_write(s, big, sizeof big, BRAID_SECONDS(30));
        if (rc < 0) { b->rc = rc; break; }
        b->sent += sizeof big;
        size_t q = braid_transport_buffered(braid_fstream_transport(s));
        if (q > b->max_buffered) b->max_buffered = q;
    }
    if (!b->rc) b->rc = braid_fstream_flush(s, BRAID_SECONDS(30));
    b->done = 1;
    return b->rc;
}

BT_IO_TEST(tcp_write_waits_for_slow_reader) {
    braid_loop *loop = bt_loop_new(NULL);
    bulk b = { 0 };
    braid_fstream_factory ff;
    braid_fstream_factory_init(loop, &ff, bulk_handler, &b, NULL);
    int port;
    braid_listener *l = bt_listen_tcp(loop, &ff.base, &port);
    int fd = bt_connect_tcp_rcvbuf(port, 0, 64 * 1024);
    for (int i = 0; i < 2000; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_FALSE(b.done);
    BT_GT(b.sent, 0);
    BT_LT(b.sent, 8u << 20);                  /* blocked in a write */
    BT_ULE(b.max_buffered, 64 * 1024 + sizeof big);
    size_t before = b.sent;
    for (int i = 0; i < 200; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(b.sent, before);                    /* and stays blocked */
    fcntl(fd, F_SETFL, O_NONBLOCK);
    size_t got = 0;
    static char rbuf[65536];
    for (int i = 0; i < 1000000 && got < (8u << 20); i++) {
        ssize_t k = read(fd, rbuf, sizeof rbuf);
        if (k > 0) got += (size_t)k;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    BT_EQ(got, 8u << 20);
    BT_RUN_UNTIL(loop, b.done, 1000);
    BT_TRUE(b.done);
    BT_OK(b.rc);
    BT_RUN_UNTIL(loop, !braid_fstream_factory_count(&ff), 1000);
    BT_EQ(raw_until_eof(loop, fd), 0);        /* closed after the handler returned */
    close(fd);
    braid_listener_close(l);
    for (int i = 0; i < 100 && braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT) > 0; i++) {}
    bt_loop_destroy(loop);
}
