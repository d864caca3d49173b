/* Framers: line, u32 length prefix, netstring — every chunking of the input
 * yields the same frames; limits and malformed input give their errors;
 * the protocol glue aborts a connection with the framing error. */
// ctest-labels: stream
#include "harness.h"
#include "support/walk.h"

typedef struct frames { char data[4096]; size_t len; int n; int stop_after; } frames;
static int collect(void *ctx, const void *frame, size_t len) {
    frames *fr = ctx;
    /* record as "<frame>|" so boundaries show */
    memcpy(fr->data + fr->len, frame, len);
    fr->len += len;
    fr->data[fr->len++] = '|';
    fr->n++;
    return fr->stop_after && fr->n == fr->stop_after ? 7 : 0;
}

typedef enum { LINE, U32, NETSTRING } kind;
static int init(braid_framer *f, kind k, size_t max, frames *fr) {
    memset(fr, 0, sizeof *fr);
    if (k == LINE) return braid_framer_init_line(f, "\r\n", max, collect, fr);
    if (k == U32) braid_framer_init_u32(f, max, collect, fr);
    else braid_framer_init_netstring(f, max, collect, fr);
    return 0;
}

/* Feed input split at every pair of points; all must agree with one feed. */
static void every_split(kind k, const char *in, size_t n, size_t max, const char *want, int want_rc) {
    braid_framer f;
    frames whole;
    init(&f, k, max, &whole);
    int rc = braid_framer_feed(&f, in, n);
    BT_ERR(rc, want_rc);
    whole.data[whole.len] = 0;
    BT_STREQ(whole.data, want);
    braid_framer_close(&f);
    for (size_t a = 0; a <= n; a++)
        for (size_t b = a; b <= n; b++) {
            frames fr;
            init(&f, k, max, &fr);
            int r1 = braid_framer_feed(&f, in, a);
            int r2 = r1 ? r1 : braid_framer_feed(&f, in + a, b - a);
            int r3 = r2 ? r2 : braid_framer_feed(&f, in + b, n - b);
            fr.data[fr.len] = 0;
            if (r3 != want_rc || strcmp(fr.data, want))
                bt_fail(__FILE__, __LINE__, "split %zu/%zu: rc %d frames \"%s\", want %d \"%s\"", a, b,
                        r3, fr.data, want_rc, want);
            braid_framer_close(&f);
        }
}

BT_TEST(line_receiver) {
    const char in[] = "hello\r\nworld\r\n\r\npartial";
    every_split(LINE, in, sizeof in - 1, 16, "hello|world||", 0);
    const char lng[] = "short\r\nthis line is far too long\r\n";
    every_split(LINE, lng, sizeof lng - 1, 8, "short|", BRAID_EMSGSIZE);
    /* an endless line without delimiter is refused once it passes max */
    braid_framer f;
    frames fr;
    init(&f, LINE, 10, &fr);
    BT_OK(braid_framer_feed(&f, "0123456789", 10));
    BT_OK(braid_framer_feed(&f, "\r", 1));          /* could still be a delimiter */
    BT_EQ(braid_framer_pending(&f), 11);
    BT_ERR(braid_framer_feed(&f, "x", 1), BRAID_EMSGSIZE);
    BT_ERR(braid_framer_feed(&f, "\r\n", 2), BRAID_EMSGSIZE);   /* sticky */
    braid_framer_close(&f);
    /* a custom delimiter */
    memset(&fr, 0, sizeof fr);
    BT_OK(braid_framer_init_line(&f, "\n", 100, collect, &fr));
    BT_OK(braid_framer_feed(&f, "a\nb\nc", 5));
    fr.data[fr.len] = 0;
    BT_STREQ(fr.data, "a|b|");
    braid_framer_close(&f);
    BT_ERR(braid_framer_init_line(&f, "", 10, collect, &fr), BRAID_EINVAL);
}

BT_TEST(u32_prefixed) {
    const char in[] = "\0\0\0\3abc\0\0\0\0\0\0\0\2xy\0\0";
    every_split(U32, in, sizeof in - 1, 8, "abc||xy|", 0);
    const char big[] = "\0\0\0\1a\0\0\1\0";
    every_split(U32, big, sizeof big - 1, 255, "a|", BRAID_EMSGSIZE);
}

BT_TEST(netstrings) {
    const char in[] = "3:abc,0:,5:hello,12:";
    every_split(NETSTRING, in, sizeof in - 1, 100, "abc||hello|", 0);
    const char lead[] = "1:a,03:abc,";
    every_split(NETSTRING, lead, sizeof lead - 1, 100, "a|", BRAID_EPROTO_INPUT);
    const char comma[] = "3:abcX";
    every_split(NETSTRING, comma, sizeof comma - 1, 100, "", BRAID_EPROTO_INPUT);
    const char junk[] = "2:ab,x:";
    every_split(NETSTRING, junk, sizeof junk - 1, 100, "ab|", BRAID_EPROTO_INPUT);
    const char big[] = "2:ab,101:";
    every_split(NETSTRING, big, sizeof big - 1, 100, "ab|", BRAID_EMSGSIZE);
    const char huge[] = "99999999999999999999999999:";
    every_split(NETSTRING, huge, sizeof huge - 1, SIZE_MAX, "", BRAID_EMSGSIZE);
}

BT_TEST(callback_stops_parsing) {
    braid_framer f;
    frames fr;
    init(&f, LINE, 100, &fr);
    fr.stop_after = 2;
    BT_EQ(braid_framer_feed(&f, "a\r\nb\r\nc\r\n", 9), 7);
    BT_EQ(fr.n, 2);
    BT_EQ(braid_framer_feed(&f, "d\r\n", 3), 7);
    BT_EQ(fr.n, 2);
    braid_framer_close(&f);
}

typedef struct fwalk { braid_framer f; frames fr; } fwalk;
static void fwalk_setup(void *arg) {
    fwalk *w = arg;
    init(&w->f, U32, 1000, &w->fr);
}
static int fwalk_body(void *arg) {
    fwalk *w = arg;
    int rc = braid_framer_feed(&w->f, "\0\0\0\5ab", 6);
    if (rc == 0) rc = braid_framer_feed(&w->f, "cde", 3);
    return rc;
}
static void fwalk_teardown(void *arg, int rc, bool injected) {
    fwalk *w = arg;
    braid_framer_close(&w->f);
    BT_EQ(w->fr.n, injected ? 0 : 1);   /* no frame delivered from a failed feed */
    (void)rc;
}
BT_TEST(framer_alloc_failure_walk) {
    fwalk w;
    bt_alloc_walk(&(bt_walk){ .name = "framer", .arg = &w, .setup = fwalk_setup, .body = fwalk_body,
                              .teardown = fwalk_teardown, .enomem_only = true, .must_fail = true });
}

/* ---- over a pump: a line server that echoes lines, limit 16 ---------------------------- */
typedef struct liner { braid_framing_protocol fp; int lost_code; int lost; } liner;
static int on_line(void *ctx, const void *line, size_t len) {
    braid_protocol *p = ctx;
    return braid_framing_write_line(p->transport, "\n", line, len) < 0;
}
static void liner_made(braid_protocol *p) {
    braid_framer_init_line(&((liner *)p)->fp.framer, "\n", 16, on_line, p);
}
static void liner_lost(braid_protocol *p, const braid_failure *f) {
    ((liner *)p)->lost++;
    ((liner *)p)->lost_code = f->code;
}
static void liner_destroy(braid_protocol *p) { braid_framing_protocol_destroy(p); }
static const braid_protocol_ops liner_ops = {
    .connection_made = liner_made, .data_received = braid_framing_protocol_data_received,
    .connection_lost = liner_lost, .destroy = liner_destroy };

typedef struct rec { braid_protocol base; char in[256]; size_t len; int lost; } rec;
static void rec_data(braid_protocol *p, const void *b, size_t n) {
    rec *r = (rec *)p;
    memcpy(r->in + r->len, b, n);
    r->len += n;
}
static void rec_lost(braid_protocol *p, const braid_failure *f) { (void)f; ((rec *)p)->lost++; }
static const braid_protocol_ops rec_ops = { .data_received = rec_data, .connection_lost = rec_lost };

BT_TEST(framed_protocol_over_pump) {
    braid_loop *loop = bt_loop_new(NULL);
    liner s = { .fp.base.ops = &liner_ops };
    rec c = { .base.ops = &rec_ops };
    braid_pump *pump = NULL;
    braid_pump_new(loop, &c.base, &s.fp.base, &pump);
    BT_OK(braid_transport_write(c.base.transport, "one\ntw", 6));
    braid_pump_flush(pump);
    BT_OK(braid_transport_write(c.base.transport, "o\n", 2));
    braid_pump_flush(pump);
    BT_EQ(c.len, 8);
    BT_TRUE(memcmp(c.in, "one\ntwo\n", 8) == 0);
    BT_OK(braid_framing_write_line(c.base.transport, "\n", "this line is longer than sixteen", 32));
    braid_pump_flush(pump);
    BT_EQ(s.lost, 1);
    BT_ERR(s.lost_code, BRAID_EMSGSIZE);
    BT_EQ(c.lost, 1);
    braid_pump_free(pump);
    bt_loop_destroy(loop);
}

BT_TEST(encoders_roundtrip) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { .base.ops = &rec_ops };
    braid_memory_transport *m = NULL;
    braid_memory_transport_new(loop, &r.base, &m);
    BT_OK(braid_framing_write_u32(r.base.transport, "abc", 3));
    BT_OK(braid_framing_write_netstring(r.base.transport, "hello world", 11));
    size_t len;
    const char *d = braid_memory_transport_data(m, &len);
    BT_EQ(len, 7 + 15);
    BT_TRUE(memcmp(d, "\0\0\0\3abc11:hello world,", 22) == 0);
    braid_framer f;
    frames fr;
    init(&f, U32, 100, &fr);
    BT_OK(braid_framer_feed(&f, d, 7));
    braid_framer_close(&f);
    init(&f, NETSTRING, 100, &fr);
    BT_OK(braid_framer_feed(&f, d + 7, 15));
    fr.data[fr.len] = 0;
    BT_STREQ(fr.data, "hello world|");
    braid_framer_close(&f);
    braid_memory_transport_free(m);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    bt_loop_destroy(loop);
}
