/* Boxes, the typed key/value payloads of worker calls: every type through
 * encode and decode, the limits, malformed encodings (hand-made ones, every
 * truncation and every one-byte change of a valid one), and the
 * allocation-failure walk over building, encoding and decoding. The box
 * crossing a real worker connection is in test_process_workers.c. */
#include "harness.h"
#include "support/walk.h"
#include <braid/process.h>
#include <math.h>

static braid_box *sample(void) {
    braid_box *b;
    BT_OK(braid_box_new(&b));
    BT_OK(braid_box_set_bytes(b, "raw", "a\0b", 3));
    BT_OK(braid_box_set_bytes(b, "empty", NULL, 0));
    BT_OK(braid_box_set_str(b, "name", "caf\xc3\xa9 \xf0\x9f\x8d\xb5"));
    BT_OK(braid_box_set_i64(b, "min", INT64_MIN));
    BT_OK(braid_box_set_i64(b, "neg", -42));
    BT_OK(braid_box_set_u64(b, "max", UINT64_MAX));
    BT_OK(braid_box_set_f64(b, "pi", 3.25));
    BT_OK(braid_box_set_f64(b, "inf", -INFINITY));
    BT_OK(braid_box_set_bool(b, "yes", true));
    BT_OK(braid_box_set_bool(b, "no", false));
    BT_OK(braid_box_append(b, "list", "one", 3));
    BT_OK(braid_box_append(b, "list", "", 0));
    BT_OK(braid_box_append(b, "list", "three", 5));
    return b;
}

static void check_sample(const braid_box *b) {
    BT_EQ(braid_box_count(b), 11);
    BT_STREQ(braid_box_key(b, 0), "raw");
    BT_STREQ(braid_box_key(b, 10), "list");
    BT_TRUE(braid_box_key(b, 11) == NULL);
    const void *p;
    size_t n;
    BT_OK(braid_box_bytes(b, "raw", &p, &n));
    BT_EQ(n, 3);
    BT_TRUE(!memcmp(p, "a\0b", 3));
    BT_OK(braid_box_bytes(b, "empty", &p, &n));
    BT_EQ(n, 0);
    BT_STREQ(braid_box_str(b, "name"), "caf\xc3\xa9 \xf0\x9f\x8d\xb5");
    int64_t i;
    BT_OK(braid_box_i64(b, "min", &i));
    BT_TRUE(i == INT64_MIN);
    BT_OK(braid_box_i64(b, "neg", &i));
    BT_EQ(i, -42);
    uint64_t u;
    BT_OK(braid_box_u64(b, "max", &u));
    BT_TRUE(u == UINT64_MAX);
    double d;
    BT_OK(braid_box_f64(b, "pi", &d));
    BT_TRUE(d == 3.25);
    BT_OK(braid_box_f64(b, "inf", &d));
    BT_TRUE(isinf(d) && d < 0);
    bool y;
    BT_OK(braid_box_bool(b, "yes", &y));
    BT_TRUE(y);
    BT_OK(braid_box_bool(b, "no", &y));
    BT_FALSE(y);
    BT_EQ(braid_box_items(b, "list"), 3);
    BT_OK(braid_box_item(b, "list", 0, &p, &n));
    BT_TRUE(n == 3 && !memcmp(p, "one", 3));
    BT_OK(braid_box_item(b, "list", 1, &p, &n));
    BT_EQ(n, 0);
    BT_OK(braid_box_item(b, "list", 2, &p, &n));
    BT_TRUE(n == 5 && !memcmp(p, "three", 5));
    BT_EQ(braid_box_item(b, "list", 3, &p, &n), BRAID_ENOENT);
    BT_EQ(braid_box_kind(b, "pi"), BRAID_BOX_F64);
    BT_EQ(braid_box_kind(b, "list"), BRAID_BOX_LIST);
    BT_EQ(braid_box_kind(b, "nope"), 0);
}

static unsigned char *encode(const braid_box *b, size_t *len) {
    size_t n = braid_box_encoded_size(b);
    unsigned char *buf = malloc(n);
    BT_TRUE(buf != NULL);
    BT_OK(braid_box_encode(b, buf, n, len));
    BT_EQ(*len, n);
    return buf;
}

BT_TEST(box_roundtrip_every_type) {
    braid_box *b = sample();
    check_sample(b);
    size_t n;
    unsigned char *enc = encode(b, &n);
    braid_box *c;
    BT_OK(braid_box_decode(enc, n, &c));
    check_sample(c);
    size_t n2;
    unsigned char *enc2 = encode(c, &n2);   /* canonical: the same bytes again */
    BT_EQ(n2, n);
    BT_TRUE(!memcmp(enc, enc2, n));
    /* NaN keeps its bits. */
    BT_OK(braid_box_set_f64(c, "pi", NAN));
    free(enc2);
    enc2 = encode(c, &n2);
    braid_box *e;
    BT_OK(braid_box_decode(enc2, n2, &e));
    double d;
    BT_OK(braid_box_f64(e, "pi", &d));
    BT_TRUE(isnan(d));
    braid_box_free(e);
    /* The wrong type, a missing key. */
    int64_t i;
    BT_EQ(braid_box_i64(c, "name", &i), BRAID_EBOX_TYPE);
    BT_EQ(braid_box_i64(c, "nope", &i), BRAID_ENOENT);
    BT_TRUE(braid_box_str(c, "raw") == NULL);
    const void *p;
    size_t len;
    BT_EQ(braid_box_bytes(c, "pi", &p, &len), BRAID_EBOX_TYPE);
    BT_OK(braid_box_bytes(c, "name", &p, &len));   /* text reads as bytes */
    BT_EQ(braid_box_append(c, "name", "x", 1), BRAID_EBOX_TYPE);
    /* Setting a key again replaces its value (and type) in place. */
    BT_OK(braid_box_set_i64(c, "raw", 7));
    BT_EQ(braid_box_count(c), 11);
    BT_STREQ(braid_box_key(c, 0), "raw");
    BT_OK(braid_box_i64(c, "raw", &i));
    BT_EQ(i, 7);
    /* A decoded box changes like a built one: a list grows, keys are added
     * past what it was decoded with. */
    BT_OK(braid_box_append(c, "list", "four", 4));
    BT_EQ(braid_box_items(c, "list"), 4);
    BT_OK(braid_box_item(c, "list", 3, &p, &len));
    BT_TRUE(len == 4 && !memcmp(p, "four", 4));
    BT_OK(braid_box_item(c, "list", 0, &p, &len));
    BT_TRUE(len == 3 && !memcmp(p, "one", 3));
    for (int k = 0; k < 20; k++) {
        char key[16];
        snprintf(key, sizeof key, "added%d", k);
        BT_OK(braid_box_set_i64(c, key, k));
    }
    BT_EQ(braid_box_count(c), 31);
    BT_STREQ(braid_box_str(c, "name"), "caf\xc3\xa9 \xf0\x9f\x8d\xb5");
    BT_OK(braid_box_i64(c, "added19", &i));
    BT_EQ(i, 19);
    /* An empty box. */
    braid_box *z;
    BT_OK(braid_box_new(&z));
    free(enc2);
    enc2 = encode(z, &n2);
    BT_EQ(n2, 3);
    braid_box_free(z);
    BT_OK(braid_box_decode(enc2, n2, &z));
    BT_EQ(braid_box_count(z), 0);
    braid_box_free(z);
    free(enc2);
    free(enc);
    braid_box_free(c);
    braid_box_free(b);
}

BT_TEST(box_limits) {
    braid_box *b;
    BT_OK(braid_box_new(&b));
    char key[300];
    memset(key, 'k', sizeof key);
    key[BRAID_BOX_MAX_KEY] = 0;
    BT_OK(braid_box_set_bool(b, key, true));          /* 255 bytes: the limit */
    key[BRAID_BOX_MAX_KEY] = 'k';
    key[BRAID_BOX_MAX_KEY + 1] = 0;
    BT_EQ(braid_box_set_bool(b, key, true), BRAID_EINVAL);
    BT_EQ(braid_box_set_bool(b, "", true), BRAID_EINVAL);
    BT_EQ(braid_box_set_bool(b, NULL, true), BRAID_EINVAL);
    BT_EQ(braid_box_set_str(b, "bad", "\xc0\xaf"), BRAID_EINVAL);      /* overlong '/' */
    BT_EQ(braid_box_set_str(b, "bad", "\xed\xa0\x80"), BRAID_EINVAL);  /* a surrogate */
    BT_EQ(braid_box_set_str(b, "bad", "\xf4\x90\x80\x80"), BRAID_EINVAL);   /* > U+10FFFF */
    BT_EQ(braid_box_set_str(b, "bad", "\xe2\x82"), BRAID_EINVAL);      /* cut short */
    BT_EQ(braid_box_kind(b, "bad"), 0);
    for (int i = 1; i < BRAID_BOX_MAX_KEYS; i++) {
        char k[16];
        snprintf(k, sizeof k, "k%d", i);
        BT_OK(braid_box_set_i64(b, k, i));
    }
    BT_EQ(braid_box_count(b), BRAID_BOX_MAX_KEYS);
    BT_EQ(braid_box_set_i64(b, "one-more", 1), BRAID_EMSGSIZE);
    BT_EQ(braid_box_append(b, "one-more", "x", 1), BRAID_EMSGSIZE);
    BT_OK(braid_box_set_i64(b, "k1", -1));            /* replacing is fine when full */
    /* A full box encodes and decodes; a buffer too small is refused. */
    size_t n;
    unsigned char *enc = encode(b, &n);
    braid_box *c;
    BT_OK(braid_box_decode(enc, n, &c));
    BT_EQ(braid_box_count(c), BRAID_BOX_MAX_KEYS);
    braid_box_free(c);
    BT_EQ(braid_box_encode(b, enc, n - 1, &n), BRAID_EMSGSIZE);
    free(enc);
    braid_box_free(b);
    /* A list stops at BRAID_BOX_MAX_ITEMS. */
    BT_OK(braid_box_new(&b));
    for (int i = 0; i < BRAID_BOX_MAX_ITEMS; i++) BT_OK(braid_box_append(b, "l", "", 0));
    BT_EQ(braid_box_append(b, "l", "", 0), BRAID_EMSGSIZE);
    BT_EQ(braid_box_items(b, "l"), BRAID_BOX_MAX_ITEMS);
    enc = encode(b, &n);
    BT_OK(braid_box_decode(enc, n, &c));
    BT_EQ(braid_box_items(c, "l"), BRAID_BOX_MAX_ITEMS);
    braid_box_free(c);
    free(enc);
    braid_box_free(b);
}

typedef struct bad_case {
    const char *what;
    const char *bytes;
    size_t len;
} bad_case;
#define BAD(what, lit) { what, lit, sizeof(lit) - 1 }

static void mutations(const braid_box *s);
BT_TEST(box_malformed) {
    static const bad_case bad[] = {
        BAD("empty", ""),
        BAD("short header", "\x01\x00"),
        BAD("version 2", "\x02\x00\x00"),
        BAD("257 keys announced", "\x01\x01\x01"),
        BAD("one key announced, none there", "\x01\x00\x01"),
        BAD("key length 0", "\x01\x00\x01\x00\x06\x01"),
        BAD("key past the end", "\x01\x00\x01\x05" "ab"),
        BAD("no type", "\x01\x00\x01\x01" "a"),
        BAD("type 0", "\x01\x00\x01\x01" "a\x00"),
        BAD("type 12", "\x01\x00\x01\x01" "a\x0c\x00"),
        BAD("bool 2", "\x01\x00\x01\x01" "a\x06\x02"),
        BAD("i64 cut short", "\x01\x00\x01\x01" "a\x03\x00\x00\x00\x00\x00\x00\x00"),
        BAD("bytes past the end", "\x01\x00\x01\x01" "a\x01\x00\x00\x00\x05" "abcd"),
        BAD("bytes length cut short", "\x01\x00\x01\x01" "a\x01\x00\x00"),
        BAD("text with a NUL", "\x01\x00\x01\x01" "a\x02\x00\x00\x00\x03" "a\x00" "b"),
        BAD("text not UTF-8", "\x01\x00\x01\x01" "a\x02\x00\x00\x00\x02\xc0\xaf"),
        BAD("a key with a NUL", "\x01\x00\x01\x02" "a\x00\x06\x01"),
        BAD("the same key twice", "\x01\x00\x02\x01" "a\x06\x01\x01" "a\x06\x00"),
        BAD("list count over the limit", "\x01\x00\x01\x01" "a\x07\x00\x01\x00\x01"),
        BAD("list item past the end", "\x01\x00\x01\x01" "a\x07\x00\x00\x00\x01\x00\x00\x00\x09" "x"),
        BAD("list with fewer items than announced", "\x01\x00\x01\x01" "a\x07\x00\x00\x00\x02\x00\x00\x00\x00"),
        BAD("a byte after the last entry", "\x01\x00\x01\x01" "a\x06\x01\x00"),
        BAD("bytes length near 4 GiB", "\x01\x00\x01\x01" "a\x01\xff\xff\xff\xff" "abc"),
        BAD("time cut short", "\x01\x00\x01\x01" "a\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
        BAD("time offset of a day", "\x01\x00\x01\x01" "a\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x05\xa0"),
        BAD("time offset of minus a day", "\x01\x00\x01\x01" "a\x0a\x00\x00\x00\x00\x00\x00\x00\x00\xfa\x60"),
        BAD("decimal with two points", "\x01\x00\x01\x01" "a\x0b\x00\x00\x00\x03" "1.."),
        BAD("decimal empty", "\x01\x00\x01\x01" "a\x0b\x00\x00\x00\x00"),
        BAD("decimal exponent without digits", "\x01\x00\x01\x01" "a\x0b\x00\x00\x00\x02" "1e"),
        BAD("decimal as a word", "\x01\x00\x01\x01" "a\x0b\x00\x00\x00\x03" "nan"),
        BAD("nested box of another version", "\x01\x00\x01\x01" "a\x08\x00\x00\x00\x03\x02\x00\x00"),
        BAD("nested box with the same key twice",
            "\x01\x00\x01\x01" "a\x08\x00\x00\x00\x0b" "\x01\x00\x02\x01" "k\x06\x01\x01" "k\x06\x00"),
        BAD("nested box with a byte after it", "\x01\x00\x01\x01" "a\x08\x00\x00\x00\x04\x01\x00\x00\x00"),
        BAD("nested box past its value", "\x01\x00\x01\x01" "a\x08\x00\x00\x00\x02\x01\x00\x00"),
        BAD("list of boxes with a bad item",
            "\x01\x00\x01\x01" "a\x09\x00\x00\x00\x02" "\x00\x00\x00\x03\x01\x00\x00" "\x00\x00\x00\x01\x01"),
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        braid_box *b = (braid_box *)1;
        int rc = braid_box_decode(bad[i].bytes, bad[i].len, &b);
        if (rc != BRAID_EBOX) bt_fail(__FILE__, __LINE__, "%s: decode gave %d", bad[i].what, rc);
        BT_PTR_EQ(b, (braid_box *)1);   /* *out untouched */
    }
    braid_box *s = sample();
    mutations(s);
    braid_box_free(s);
    /* The same over AMP's other types: nested boxes are checked as the
     * outermost one is. */
    braid_box *in;
    BT_OK(braid_box_new(&s));
    BT_OK(braid_box_new(&in));
    BT_OK(braid_box_set_str(in, "k", "v"));
    BT_OK(braid_box_append(in, "l", "ab", 2));
    BT_OK(braid_box_set_box(s, "box", in));
    BT_OK(braid_box_append_box(s, "boxes", in));
    BT_OK(braid_box_set_bool(in, "b", true));
    BT_OK(braid_box_append_box(s, "boxes", in));
    BT_OK(braid_box_set_time(s, "t", 123456789, -300));
    BT_OK(braid_box_set_decimal(s, "d", "-1.5e3"));
    mutations(s);
    braid_box_free(in);
    braid_box_free(s);
}

/* Every truncation of a valid encoding is malformed; every one-byte
 * change either decodes into something that encodes back to the changed
 * bytes, or is malformed. */
static void mutations(const braid_box *s) {
    size_t n;
    unsigned char *enc = encode(s, &n);
    for (size_t cut = 0; cut < n; cut++) {
        braid_box *b;
        BT_EQ(braid_box_decode(enc, cut, &b), BRAID_EBOX);
    }
    unsigned char *mut = malloc(n);
    int accepted = 0;
    for (size_t at = 0; at < n; at++) {
        for (int bit = 0; bit < 8; bit++) {
            memcpy(mut, enc, n);
            mut[at] ^= (unsigned char)(1u << bit);
            braid_box *b;
            int rc = braid_box_decode(mut, n, &b);
            if (rc == BRAID_EBOX) continue;
            BT_OK(rc);
            accepted++;
            size_t n2;
            unsigned char *again = encode(b, &n2);
            BT_EQ(n2, n);
            BT_TRUE(!memcmp(again, mut, n));
            free(again);
            braid_box_free(b);
        }
    }
    BT_GT(accepted, 0);   /* flips inside values are still boxes */
    free(mut);
    free(enc);
}

/* ---- the allocation-failure walk: building, encoding, decoding ------------------------- */
static int walk_body(void *arg) {
    (void)arg;
    {   /* nested boxes, times and decimals */
        braid_box *in, *out;
        int rc = braid_box_new(&in);
        if (rc < 0) return rc;
        if ((rc = braid_box_new(&out)) < 0) {
            braid_box_free(in);
            return rc;
        }
        if ((rc = braid_box_set_str(in, "s", "x")) == 0 && (rc = braid_box_set_box(out, "b", in)) == 0 &&
            (rc = braid_box_append_box(out, "l", in)) == 0 && (rc = braid_box_append_box(out, "l", in)) == 0 &&
            (rc = braid_box_set_time(out, "t", 1, 2)) == 0 && (rc = braid_box_set_decimal(out, "d", "1.5")) == 0) {
            unsigned char buf[256];
            size_t n;
            braid_box *c = NULL, *got = NULL;
            if ((rc = braid_box_encode(out, buf, sizeof buf, &n)) == 0 && (rc = braid_box_decode(buf, n, &c)) == 0 &&
                (rc = braid_box_item_box(c, "l", 1, &got)) == 0 && !braid_box_str(got, "s"))
                rc = BRAID_EINVAL;
            braid_box_free(got);
            braid_box_free(c);
        }
        braid_box_free(in);
        braid_box_free(out);
        if (rc < 0) return rc;
    }
    braid_box *b;
    int rc = braid_box_new(&b);
    if (rc < 0) return rc;
    if ((rc = braid_box_set_str(b, "name", "walk")) < 0 || (rc = braid_box_set_i64(b, "n", 5)) < 0 ||
        (rc = braid_box_set_bytes(b, "raw", "xyz", 3)) < 0 || (rc = braid_box_append(b, "l", "a", 1)) < 0 ||
        (rc = braid_box_append(b, "l", "bc", 2)) < 0 || (rc = braid_box_set_bool(b, "ok", true)) < 0 ||
        (rc = braid_box_set_f64(b, "x", 0.5)) < 0 || (rc = braid_box_set_u64(b, "u", 9)) < 0) {
        braid_box_free(b);
        return rc;
    }
    unsigned char buf[256];
    size_t n;
    rc = braid_box_encode(b, buf, sizeof buf, &n);
    braid_box_free(b);
    if (rc < 0) return rc;
    braid_box *c;
    if ((rc = braid_box_decode(buf, n, &c)) < 0) return rc;
    int64_t v = 0;
    rc = braid_box_i64(c, "n", &v);
    if (rc == 0 && (v != 5 || braid_box_items(c, "l") != 2)) rc = BRAID_EINVAL;
    /* Changing the decoded box: an item, new keys past its entries. */
    if (rc == 0) rc = braid_box_append(c, "l", "d", 1);
    for (int k = 0; k < 6 && rc == 0; k++) {
        char key[8];
        snprintf(key, sizeof key, "k%d", k);
        rc = braid_box_set_bool(c, key, true);
    }
    if (rc == 0 && braid_box_items(c, "l") != 3) rc = BRAID_EINVAL;
    braid_box_free(c);
    return rc;
}

BT_TEST(box_alloc_walk) {
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "box", .body = walk_body, .enomem_only = true,
                                                 .must_fail = true });
    BT_GE(r.errors, 10);
}

/* AMP's other types: a box in a box, a list of boxes (AmpList), a time with
 * its UTC offset (DateTime), a decimal kept as text (Decimal). */
BT_TEST(box_nested_time_decimal) {
    braid_box *inner, *b;
    BT_OK(braid_box_new(&inner));
    BT_OK(braid_box_set_str(inner, "city", "Lyon"));
    BT_OK(braid_box_set_i64(inner, "zip", 69001));
    BT_OK(braid_box_new(&b));
    BT_OK(braid_box_set_box(b, "where", inner));
    for (int i = 0; i < 3; i++) {
        BT_OK(braid_box_set_i64(inner, "zip", 69001 + i));
        BT_OK(braid_box_append_box(b, "rows", inner));
    }
    BT_EQ(braid_box_set_box(b, "none", NULL), BRAID_EINVAL);
    /* 2026-12-03 10:00:00.5 at +01:00: 09:00:00.5 UTC */
    int64_t at = 1796288400LL * 1000000000LL + 500000000LL;
    BT_OK(braid_box_set_time(b, "when", at, 60));
    BT_OK(braid_box_set_time(b, "west", -1, -1439));
    BT_EQ(braid_box_set_time(b, "bad", 0, 1440), BRAID_EINVAL);
    BT_EQ(braid_box_set_time(b, "bad", 0, -1440), BRAID_EINVAL);
    BT_OK(braid_box_set_decimal(b, "price", "-12.50"));
    static const char *const good[] = { "0", "+1", ".5", "5.", "1.5e-3", "2E+10", "NaN", "-sNaN", "-Infinity",
                                        "NaN123", "-sNaN7",
                                        "123456789012345678901234567890.000000000000000000001" };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) BT_OK(braid_box_set_decimal(b, "d", good[i]));
    static const char *const bad[] = { "", "-", ".", "1.2.3", "1e", "e5", "1e+", "0x10", "inf", " 1", "1 ", "1,5",
                                       "NaN1.5", "NaNx", "Infinity1", "sNa" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) BT_EQ(braid_box_set_decimal(b, "bad", bad[i]), BRAID_EINVAL);
    BT_EQ(braid_box_kind(b, "bad"), 0);
    BT_EQ(braid_box_append_box(b, "price", inner), BRAID_EBOX_TYPE);
    BT_EQ(braid_box_append(b, "rows", "x", 1), BRAID_EBOX_TYPE);   /* a list of boxes takes boxes */
    braid_box_free(inner);

    size_t n;
    unsigned char *enc = encode(b, &n);
    braid_box *c;
    BT_OK(braid_box_decode(enc, n, &c));
    size_t n2;
    unsigned char *enc2 = encode(c, &n2);   /* canonical */
    BT_TRUE(n2 == n && !memcmp(enc, enc2, n));
    free(enc2);
    BT_EQ(braid_box_kind(c, "where"), BRAID_BOX_BOX);
    BT_EQ(braid_box_kind(c, "rows"), BRAID_BOX_BOXES);
    BT_EQ(braid_box_kind(c, "when"), BRAID_BOX_TIME);
    BT_EQ(braid_box_kind(c, "price"), BRAID_BOX_DECIMAL);
    braid_box *w;
    BT_OK(braid_box_box(c, "where", &w));
    BT_STREQ(braid_box_str(w, "city"), "Lyon");
    int64_t v;
    BT_OK(braid_box_i64(w, "zip", &v));
    BT_EQ(v, 69001);
    braid_box_free(w);
    BT_EQ(braid_box_items(c, "rows"), 3);
    for (size_t i = 0; i < 3; i++) {
        BT_OK(braid_box_item_box(c, "rows", i, &w));
        BT_OK(braid_box_i64(w, "zip", &v));
        BT_EQ(v, 69001 + (int64_t)i);
        braid_box_free(w);
    }
    BT_EQ(braid_box_item_box(c, "rows", 3, &w), BRAID_ENOENT);
    const void *p;
    size_t len;
    BT_EQ(braid_box_item(c, "rows", 0, &p, &len), BRAID_EBOX_TYPE);   /* boxes, not byte strings */
    BT_EQ(braid_box_item_box(c, "where", 0, &w), BRAID_EBOX_TYPE);
    BT_EQ(braid_box_box(c, "rows", &w), BRAID_EBOX_TYPE);
    BT_EQ(braid_box_box(c, "nope", &w), BRAID_ENOENT);
    int64_t ns;
    int tz;
    BT_OK(braid_box_time(c, "when", &ns, &tz));
    BT_TRUE(ns == at);
    BT_EQ(tz, 60);
    BT_OK(braid_box_time(c, "west", &ns, &tz));
    BT_TRUE(ns == -1);
    BT_EQ(tz, -1439);
    BT_OK(braid_box_time(c, "when", NULL, NULL));
    BT_EQ(braid_box_time(c, "price", &ns, &tz), BRAID_EBOX_TYPE);
    BT_STREQ(braid_box_decimal(c, "price"), "-12.50");
    BT_STREQ(braid_box_decimal(c, "d"), good[sizeof good / sizeof good[0] - 1]);   /* exact, not a double */
    BT_TRUE(braid_box_decimal(c, "when") == NULL);
    BT_TRUE(braid_box_str(c, "price") == NULL);
    /* A box may be put inside itself (its encoding at that moment). */
    BT_OK(braid_box_set_box(c, "self", c));
    BT_OK(braid_box_box(c, "self", &w));
    BT_EQ(braid_box_count(w), braid_box_count(c) - 1);
    braid_box_free(w);
    free(enc);
    braid_box_free(c);
    braid_box_free(b);
}

/* Boxes nest BRAID_BOX_MAX_DEPTH levels below the outermost and no more:
 * setting one deeper is refused, and so is decoding one (made by hand). */
BT_TEST(box_depth_limit) {
    braid_box *cur;
    BT_OK(braid_box_new(&cur));
    BT_OK(braid_box_set_bool(cur, "leaf", true));
    for (int level = 1; level <= BRAID_BOX_MAX_DEPTH; level++) {
        braid_box *up;
        BT_OK(braid_box_new(&up));
        BT_OK(level % 2 ? braid_box_set_box(up, "in", cur) : braid_box_append_box(up, "in", cur));
        braid_box_free(cur);
        cur = up;
    }
    braid_box *top;   /* one more level is too deep, either way */
    BT_OK(braid_box_new(&top));
    BT_EQ(braid_box_set_box(top, "in", cur), BRAID_EINVAL);
    BT_EQ(braid_box_append_box(top, "in", cur), BRAID_EINVAL);
    BT_EQ(braid_box_count(top), 0);
    braid_box_free(top);
    size_t n;
    unsigned char *enc = encode(cur, &n);
    braid_box *c;
    BT_OK(braid_box_decode(enc, n, &c));   /* the deepest allowed decodes */
    braid_box_free(c);
    /* By hand: wrap that encoding in one more box value. */
    unsigned char *deeper = malloc(n + 10);
    memcpy(deeper, "\x01\x00\x01\x01" "a\x08", 6);
    deeper[6] = (unsigned char)(n >> 24);
    deeper[7] = (unsigned char)(n >> 16);
    deeper[8] = (unsigned char)(n >> 8);
    deeper[9] = (unsigned char)n;
    memcpy(deeper + 10, enc, n);
    c = (braid_box *)1;
    BT_EQ(braid_box_decode(deeper, n + 10, &c), BRAID_EBOX);
    BT_PTR_EQ(c, (braid_box *)1);
    free(deeper);
    free(enc);
    braid_box_free(cur);
}

/* Items are found by index at once, not by walking the list (a handler
 * reading a 65,536-item list with braid_box_item in a loop took 6 s before);
 * appending keeps every earlier item in place, in a built box, a decoded
 * one, and a decoded one appended to. Each item is its own index. */
static void check_items(const braid_box *b, const char *key, size_t n) {
    BT_EQ(braid_box_items(b, key), n);
    for (size_t i = 0; i < n; i++) {
        const void *p;
        size_t len;
        BT_OK(braid_box_item(b, key, i, &p, &len));
        char want[16];
        size_t wl = (size_t)snprintf(want, sizeof want, "%zu", i);
        if (len != wl || memcmp(p, want, wl)) bt_fail(__FILE__, __LINE__, "%s item %zu wrong", key, i);
    }
}
BT_TEST(box_long_lists) {
    braid_box *b;
    BT_OK(braid_box_new(&b));
    for (size_t i = 0; i < BRAID_BOX_MAX_ITEMS; i++) {
        char v[16];
        BT_OK(braid_box_append(b, "l", v, (size_t)snprintf(v, sizeof v, "%zu", i)));
    }
    check_items(b, "l", BRAID_BOX_MAX_ITEMS);
    size_t n;
    unsigned char *enc = encode(b, &n);
    braid_box *c;
    BT_OK(braid_box_decode(enc, n, &c));
    check_items(c, "l", BRAID_BOX_MAX_ITEMS);
    /* A decoded list that grows: its offsets move out of the decoded block. */
    braid_box *d;
    BT_OK(braid_box_new(&d));
    BT_OK(braid_box_append(d, "s", "0", 1));
    BT_OK(braid_box_append(d, "s", "1", 1));
    free(enc);
    enc = encode(d, &n);
    braid_box *e;
    BT_OK(braid_box_decode(enc, n, &e));
    for (size_t i = 2; i < 1000; i++) {
        char v[16];
        BT_OK(braid_box_append(e, "s", v, (size_t)snprintf(v, sizeof v, "%zu", i)));
    }
    check_items(e, "s", 1000);
    /* A list of boxes, read back by index. */
    braid_box *row, *rows;
    BT_OK(braid_box_new(&row));
    BT_OK(braid_box_new(&rows));
    for (int64_t i = 0; i < 5000; i++) {
        BT_OK(braid_box_set_i64(row, "i", i));
        BT_OK(braid_box_append_box(rows, "r", row));
    }
    for (size_t i = 4999;; i -= 7) {
        braid_box *got;
        int64_t v;
        BT_OK(braid_box_item_box(rows, "r", i, &got));
        BT_OK(braid_box_i64(got, "i", &v));
        BT_EQ(v, (int64_t)i);
        braid_box_free(got);
        if (i < 7) break;
    }
    braid_box_free(row);
    braid_box_free(rows);
    free(enc);
    braid_box_free(e);
    braid_box_free(d);
    braid_box_free(c);
    braid_box_free(b);
}
