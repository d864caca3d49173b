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
        BAD("type 8", "\x01\x00\x01\x01" "a\x08\x00"),
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
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        braid_box *b = (braid_box *)1;
        int rc = braid_box_decode(bad[i].bytes, bad[i].len, &b);
        if (rc != BRAID_EBOX) bt_fail(__FILE__, __LINE__, "%s: decode gave %d", bad[i].what, rc);
        BT_PTR_EQ(b, (braid_box *)1);   /* *out untouched */
    }
    /* Every truncation of a valid encoding is malformed; every one-byte
     * change either decodes into something that encodes back to the
     * changed bytes, or is malformed. */
    braid_box *s = sample();
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
    braid_box_free(s);
}

/* ---- the allocation-failure walk: building, encoding, decoding ------------------------- */
static int walk_body(void *arg) {
    (void)arg;
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
