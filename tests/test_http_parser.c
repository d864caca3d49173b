/* The HTTP parser and chunked codec.
 *
 * Every input is parsed placed flush against a PROT_NONE page (guard()), so a
 * one-byte over-read crashes the case; and every proper prefix of it too, which
 * must say INCOMPLETE or fail with the same error the whole input fails with
 * (a prefix can't be better than the whole). The differential case compares
 * with Debian's libhttp-parser on a corpus; every disagreement is listed with
 * the reason braid differs. */
#include "harness.h"
#include <braid/http.h>
#include <sys/mman.h>
#include <unistd.h>
#ifdef BRAID_HAVE_HTTP_PARSER
#include <http_parser.h>
#endif

// ctest-labels: http

/* ---- guard pages ------------------------------------------------------------ */
typedef struct guard { char *map; size_t maplen; char *p; } guard;

/* Copy data so that its last byte is the last byte before a PROT_NONE page. */
static guard guard_place(const void *data, size_t len) {
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + pg - 1) / pg + 1;
    guard g;
    g.maplen = pages * pg;
    g.map = mmap(NULL, g.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    BT_TRUE(g.map != MAP_FAILED);
    BT_OK(mprotect(g.map + (pages - 1) * pg, pg, PROT_NONE));
    g.p = g.map + (pages - 1) * pg - len;
    if (len) memcpy(g.p, data, len);
    return g;
}
static void guard_free(guard *g) { munmap(g->map, g->maplen); }

typedef struct res {
    int rc;
    braid_http_message m;
    braid_http_header h[128];
    char copy[4096];   /* head copied out so fields survive guard_free */
} res;

/* Parse s as a request at the guard, with every prefix too; fields in r point
 * into r->copy. */
static void req_at(res *r, const char *s, size_t len, const braid_http_limits *lim) {
    int whole;
    {
        guard g = guard_place(s, len);
        whole = braid_http_parse_request(&r->m, r->h, 128, g.p, len, 0, lim);
        /* re-point into the copy */
        size_t n = len < sizeof r->copy ? len : sizeof r->copy;
        memcpy(r->copy, g.p, n);
        ptrdiff_t d = r->copy - g.p;
        if (whole > 0) {
            r->m.method += d; r->m.target += d;
            if (r->m.host) r->m.host += d;
            for (size_t i = 0; i < r->m.num_headers; i++) {
                r->h[i].name += d; r->h[i].value += d;
            }
        }
        guard_free(&g);
    }
    r->rc = whole;
    for (size_t k = 0; k < len; k++) {
        braid_http_message m;
        braid_http_header h[128];
        guard g = guard_place(s, k);
        int rc = braid_http_parse_request(&m, h, 128, g.p, k, 0, lim);
        guard_free(&g);
        if (rc == BRAID_EHTTP_INCOMPLETE) continue;
        if (whole > 0 && rc > 0) {
            /* A complete head inside a prefix: only possible if the head is
             * shorter than the prefix. */
            BT_EQ(rc, whole);
            continue;
        }
        if (rc != whole)
            bt_fail(__FILE__, __LINE__, "prefix %zu/%zu of \"%.*s\": %d (%s) but whole: %d", k, len,
                    (int)len, s, rc, m.error ? m.error : "", whole);
    }
}
#define REQ(r, lit) req_at((r), (lit), sizeof(lit) - 1, NULL)

static void resp_at(res *r, const char *s, size_t len, bool head) {
    guard g = guard_place(s, len);
    r->rc = braid_http_parse_response(&r->m, r->h, 128, g.p, len, 0, head, NULL);
    guard_free(&g);
    for (size_t k = 0; k < len; k++) {
        braid_http_message m;
        braid_http_header h[128];
        guard gk = guard_place(s, k);
        int rc = braid_http_parse_response(&m, h, 128, gk.p, k, 0, head, NULL);
        guard_free(&gk);
        if (rc == BRAID_EHTTP_INCOMPLETE || (rc > 0 && rc == r->rc)) continue;
        if (rc != r->rc) bt_fail(__FILE__, __LINE__, "response prefix %zu: %d vs %d", k, rc, r->rc);
    }
}
#define RESP(r, lit, head) resp_at((r), (lit), sizeof(lit) - 1, (head))

static bool eq(const char *p, size_t n, const char *s) {
    return n == strlen(s) && memcmp(p, s, n) == 0;
}

/* ---- requests ------------------------------------------------------------------- */
BT_TEST(simple_get) {
    static res r;
    REQ(&r, "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent:  x/1 \r\nAccept: */*\r\n\r\n");
    BT_GT(r.rc, 0);
    BT_TRUE(eq(r.m.method, r.m.method_len, "GET"));
    BT_TRUE(eq(r.m.target, r.m.target_len, "/index.html?q=1"));
    BT_EQ(r.m.minor_version, 1);
    BT_EQ(r.m.num_headers, 3);
    BT_TRUE(eq(r.h[1].name, r.h[1].name_len, "User-Agent"));
    BT_TRUE(eq(r.h[1].value, r.h[1].value_len, "x/1"));   /* OWS trimmed both sides */
    BT_TRUE(eq(r.m.host, r.m.host_len, "example.com"));
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    BT_TRUE(r.m.keep_alive);
    BT_FALSE(r.m.expect_continue);
}

BT_TEST(keep_alive_rules) {
    static res r;
    REQ(&r, "GET / HTTP/1.0\r\n\r\n");
    BT_GT(r.rc, 0);
    BT_FALSE(r.m.keep_alive);
    REQ(&r, "GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
    BT_TRUE(r.m.keep_alive);
    REQ(&r, "GET / HTTP/1.1\r\nHost: a\r\nConnection: foo, close\r\n\r\n");
    BT_FALSE(r.m.keep_alive);
    REQ(&r, "GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n");
    BT_TRUE(r.m.expect_continue);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_LENGTH);
    BT_UEQ(r.m.content_length, 3);
    REQ(&r, "GET /chat HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    BT_TRUE(r.m.upgrade);
}

BT_TEST(pipelined_and_leading_crlf) {
    const char two[] = "\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    guard g = guard_place(two, sizeof two - 1);
    braid_http_message m;
    braid_http_header h[8];
    int n = braid_http_parse_request(&m, h, 8, g.p, sizeof two - 1, 0, NULL);
    BT_EQ(n, 30);
    BT_TRUE(eq(m.target, m.target_len, "/a"));
    int n2 = braid_http_parse_request(&m, h, 8, g.p + n, sizeof two - 1 - (size_t)n, 0, NULL);
    BT_EQ(n2, 28);
    BT_TRUE(eq(m.target, m.target_len, "/b"));
    guard_free(&g);
}

BT_TEST(chunked_and_length_framing) {
    static res r;
    REQ(&r, "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    BT_EQ(r.m.body, BRAID_HTTP_BODY_CHUNKED);
    REQ(&r, "POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: ,CHUNKED\r\n\r\n");
    BT_EQ(r.m.body, BRAID_HTTP_BODY_CHUNKED);
    REQ(&r, "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
    BT_GT(r.rc, 0);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    REQ(&r, "POST /u HTTP/1.1\r\nHost: a\r\nContent-Length: 1048576\r\n\r\n");
    BT_GT(r.rc, 0);
    BT_UEQ(r.m.content_length, 1048576);
}

typedef struct bad { const char *in; int code; const char *why; } bad;

/* Each shape of request smuggling and malformation, with the code (and so the
 * status) it must get. */
static const bad bads[] = {
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
      BRAID_EHTTP_FRAMING, "both Content-Length and Transfer-Encoding" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
      BRAID_EHTTP_FRAMING, "both Content-Length and Transfer-Encoding" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
      BRAID_EHTTP_FRAMING, "conflicting Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
      BRAID_EHTTP_FRAMING, "duplicate Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n", BRAID_EHTTP_FRAMING, "malformed Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n", BRAID_EHTTP_FRAMING, "malformed Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", BRAID_EHTTP_FRAMING, "malformed Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", BRAID_EHTTP_FRAMING, "malformed Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 0\r\n\r\n", BRAID_EHTTP_FRAMING, "malformed Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n", BRAID_EHTTP_FRAMING, "empty Content-Length" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\n",
      BRAID_EHTTP_FRAMING, "Content-Length overflows" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", BRAID_EHTTP_FRAMING, "unsupported transfer coding" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", BRAID_EHTTP_FRAMING, "unsupported transfer coding" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
      BRAID_EHTTP_FRAMING, "chunked applied twice" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n", BRAID_EHTTP_FRAMING, "unsupported transfer coding" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n\r\n", BRAID_EHTTP_FRAMING, "empty Transfer-Encoding" },
    { "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", BRAID_EHTTP_FRAMING, "Transfer-Encoding in an HTTP/1.0 message" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", BRAID_EHTTP_SYNTAX, "whitespace before a header colon" },
    { "POST / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n", BRAID_EHTTP_SYNTAX, "obs-fold or whitespace at the start of a header line" },
    { "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", BRAID_EHTTP_SYNTAX, "obs-fold or whitespace at the start of a header line" },
    { "GET / HTTP/1.1\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "bare LF line ending" },
    { "GET / HTTP/1.1\r\nHost: a\n\r\n", BRAID_EHTTP_SYNTAX, "bare LF line ending" },
    { "GET / HTTP/1.1\r\nHost: a\r\n\n", BRAID_EHTTP_SYNTAX, "bare LF line ending" },
    { "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", BRAID_EHTTP_SYNTAX, "bare CR" },
    { "GET / HTTP/1.1\rHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "bare CR" },
    { "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\x62\r\n\r\n", BRAID_EHTTP_SYNTAX, "control character in a header value" },
    { "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n", BRAID_EHTTP_SYNTAX, "control character in a header value" },
    { "GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "invalid character in a header name" },
    { "GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "empty header name" },
    { "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "invalid character in the method" },
    { " GET / HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "empty method" },
    { "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "empty request-target" },
    { "GET /a\x01 HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "invalid character in the request-target" },
    { "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "invalid character in the request-target" },
    { "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "junk after the HTTP version" },
    { "GET / HTTP/1.10\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "junk after the HTTP version" },
    { "GET / HTTX/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "malformed HTTP version" },
    { "GET / HTTP/1.x\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "malformed HTTP version" },
    { "GET / HTTP/2.0\r\nHost: a\r\n\r\n", BRAID_EHTTP_VERSION, "HTTP version is not 1.x" },
    { "GET / HTTP/0.9\r\n\r\n", BRAID_EHTTP_VERSION, "HTTP version is not 1.x" },
    { "GET /\r\n\r\n", BRAID_EHTTP_SYNTAX, "invalid character in the request-target" },
    { "GET / HTTP/1.1\r\n\r\n", BRAID_EHTTP_SYNTAX, "HTTP/1.1 request without Host" },
    { "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", BRAID_EHTTP_SYNTAX, "more than one Host" },
    { "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", BRAID_EHTTP_SYNTAX, "bare LF line ending" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1048577\r\n\r\n", BRAID_EHTTP_BODY_TOO_LARGE,
      "Content-Length over the body limit" },
};

BT_TEST(smuggling_and_malformed_rejected) {
    static res r;
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        req_at(&r, bads[i].in, strlen(bads[i].in) + (strstr(bads[i].in, "a\0b") ? 0 : 0), NULL);
        if (r.rc != bads[i].code)
            bt_fail(__FILE__, __LINE__, "case %zu \"%s\": got %d (%s) want %d", i, bads[i].in, r.rc,
                    r.m.error ? r.m.error : "-", bads[i].code);
        BT_STREQ(r.m.error, bads[i].why);
    }
    /* The NUL case: strlen stops at the NUL, so feed the real length. */
    static const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    req_at(&r, nul, sizeof nul - 1, NULL);
    BT_ERR(r.rc, BRAID_EHTTP_SYNTAX);
    BT_STREQ(r.m.error, "control character in a header value");
    BT_EQ(braid_http_error_status(BRAID_EHTTP_FRAMING), 400);
    BT_EQ(braid_http_error_status(BRAID_EHTTP_HEADERS_TOO_LARGE), 431);
    BT_EQ(braid_http_error_status(BRAID_EHTTP_BODY_TOO_LARGE), 413);
    BT_EQ(braid_http_error_status(BRAID_EHTTP_URI_TOO_LONG), 414);
    BT_EQ(braid_http_error_status(BRAID_EHTTP_VERSION), 505);
}

static char big[70000];

BT_TEST(limits) {
    static res r;
    braid_http_limits lim = { .max_request_line = 64, .max_head = 256, .max_headers = 4, .max_body = 10 };
    /* request line: complete and still arriving */
    int n = snprintf(big, sizeof big, "GET /%0100d HTTP/1.1\r\nHost: a\r\n\r\n", 0);
    req_at(&r, big, (size_t)n, &lim);
    BT_ERR(r.rc, BRAID_EHTTP_URI_TOO_LONG);
    n = snprintf(big, sizeof big, "GET /%0100d", 0);
    req_at(&r, big, (size_t)n, &lim);
    BT_ERR(r.rc, BRAID_EHTTP_URI_TOO_LONG);
    /* a request line exactly at the limit passes */
    n = snprintf(big, sizeof big, "GET /%0*d HTTP/1.1\r\nHost: a\r\n\r\n", 64 - 14, 0);
    req_at(&r, big, (size_t)n, &lim);
    BT_GT(r.rc, 0);
    /* head bytes */
    n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: a\r\nX: %0300d\r\n\r\n", 0);
    req_at(&r, big, (size_t)n, &lim);
    BT_ERR(r.rc, BRAID_EHTTP_HEADERS_TOO_LARGE);
    /* header count */
    REQ(&r, "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n");
    BT_GT(r.rc, 0);
    req_at(&r, "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 51, &lim);
    BT_ERR(r.rc, BRAID_EHTTP_HEADERS_TOO_LARGE);
    BT_STREQ(r.m.error, "too many header fields");
    /* body */
    req_at(&r, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n", 48, &lim);
    BT_ERR(r.rc, BRAID_EHTTP_BODY_TOO_LARGE);
    /* default limits: a 20 KB header is 431 */
    n = snprintf(big, sizeof big, "GET / HTTP/1.1\r\nHost: a\r\nX: %020000d\r\n\r\n", 0);
    braid_http_message m;
    braid_http_header h[8];
    guard g = guard_place(big, (size_t)n);
    BT_ERR(braid_http_parse_request(&m, h, 8, g.p, (size_t)n, 0, NULL), BRAID_EHTTP_HEADERS_TOO_LARGE);
    guard_free(&g);
}

/* Byte-at-a-time arrival with prev_len (the re-parse shortcut) gives the same
 * answer as the whole buffer, and limits still trip while dribbling. */
BT_TEST(incremental_prev_len) {
    const char *msgs[] = {
        "GET /x HTTP/1.1\r\nHost: a\r\nAccept: text/html\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\n\n",
    };
    for (size_t i = 0; i < 3; i++) {
        size_t len = strlen(msgs[i]);
        braid_http_message m;
        braid_http_header h[16];
        int want = braid_http_parse_request(&m, h, 16, msgs[i], len, 0, NULL);
        size_t prev = 0;
        int rc = BRAID_EHTTP_INCOMPLETE;
        for (size_t k = 1; k <= len; k++) {
            guard g = guard_place(msgs[i], k);
            rc = braid_http_parse_request(&m, h, 16, g.p, k, prev, NULL);
            guard_free(&g);
            if (rc != BRAID_EHTTP_INCOMPLETE) break;
            prev = k;
        }
        BT_EQ(rc, want);
    }
    /* dribbling a long request line trips 414 at the limit, not at the head limit */
    braid_http_limits lim = { .max_request_line = 100 };
    memset(big, 'a', 300);
    memcpy(big, "GET /", 5);
    size_t prev = 0;
    int rc = BRAID_EHTTP_INCOMPLETE;
    size_t k;
    for (k = 1; k <= 300 && rc == BRAID_EHTTP_INCOMPLETE; k++) {
        braid_http_message m;
        braid_http_header h[4];
        rc = braid_http_parse_request(&m, h, 4, big, k, prev, &lim);
        prev = k;
    }
    BT_ERR(rc, BRAID_EHTTP_URI_TOO_LONG);
    BT_EQ(k - 1, 102);   /* decided by the first limit + 2 bytes (line + CRLF) */
}

/* ---- responses -------------------------------------------------------------------- */
BT_TEST(responses) {
    static res r;
    RESP(&r, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\n", false);
    BT_GT(r.rc, 0);
    BT_EQ(r.m.status, 200);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_LENGTH);
    BT_UEQ(r.m.content_length, 5);
    BT_TRUE(r.m.keep_alive);
    RESP(&r, "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n", false);
    BT_EQ(r.m.status, 404);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_CHUNKED);
    RESP(&r, "HTTP/1.1 200 OK\r\n\r\n", false);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_EOF);
    BT_FALSE(r.m.keep_alive);
    RESP(&r, "HTTP/1.1 204 No Content\r\n\r\n", false);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    BT_TRUE(r.m.keep_alive);
    RESP(&r, "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", false);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    RESP(&r, "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    BT_TRUE(r.m.keep_alive);
    RESP(&r, "HTTP/1.1 100 Continue\r\n\r\n", false);
    BT_EQ(r.m.status, 100);
    BT_EQ(r.m.body, BRAID_HTTP_BODY_NONE);
    RESP(&r, "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false);
    BT_GT(r.rc, 0);
    BT_EQ(r.m.reason_len, 0);
    RESP(&r, "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false);
    BT_FALSE(r.m.keep_alive);
    RESP(&r, "HTTP/1.1 2x0 OK\r\n\r\n", false);
    BT_ERR(r.rc, BRAID_EHTTP_SYNTAX);
    RESP(&r, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", false);
    BT_ERR(r.rc, BRAID_EHTTP_FRAMING);
    RESP(&r, "HTTP/1.1 200 OK\nContent-Length: 1\r\n\r\n", false);
    BT_ERR(r.rc, BRAID_EHTTP_SYNTAX);
    RESP(&r, "HTTP/3.0 200 OK\r\n\r\n", false);
    BT_ERR(r.rc, BRAID_EHTTP_VERSION);
}

/* ---- chunked --------------------------------------------------------------------- */
/* Decode s split at every point (and byte by byte), each piece at the guard;
 * returns the code and the decoded payload. */
static ssize_t decode_split(const char *s, size_t len, size_t split, char *out, size_t *outn,
                            uint64_t max_body) {
    braid_http_chunked d;
    braid_http_chunked_init(&d, max_body);
    *outn = 0;
    size_t off = 0;
    while (off < len) {
        size_t n = split ? (len - off < split ? len - off : split) : len - off;
        guard g = guard_place(s + off, n);
        size_t dn = 0;
        ssize_t rc = braid_http_chunked_decode(&d, g.p, n, &dn);
        memcpy(out + *outn, g.p, dn);
        *outn += dn;
        guard_free(&g);
        if (rc >= 0) return (ssize_t)off + rc;
        if (rc != BRAID_EHTTP_INCOMPLETE) return rc;
        off += n;
    }
    return BRAID_EHTTP_INCOMPLETE;
}

BT_TEST(chunked_decode) {
    static const char body[] = "5\r\nhello\r\n6;name=\"v a\"\r\n world\r\n000\r\nX-T: 1\r\n\r\nNEXT";
    size_t len = sizeof body - 1;
    char out[256];
    for (size_t split = 0; split <= len; split++) {
        size_t n;
        ssize_t rc = decode_split(body, len, split, out, &n, 0);
        BT_EQ(rc, (ssize_t)len - 4);   /* "NEXT" is the next message */
        BT_EQ(n, 11);
        BT_TRUE(memcmp(out, "hello world", 11) == 0);
    }
    /* upper-case hex, leading zeros, no trailers */
    size_t n;
    BT_EQ(decode_split("0A\r\n0123456789\r\n0\r\n\r\n", 21, 0, out, &n, 0), 21);
    BT_EQ(n, 10);
    /* BWS before an extension */
    BT_EQ(decode_split("1 ;x\r\na\r\n0\r\n\r\n", 14, 3, out, &n, 0), 14);
}

BT_TEST(chunked_rejects) {
    static const struct { const char *in; ssize_t code; } cases[] = {
        { "\r\nx\r\n0\r\n\r\n", BRAID_EHTTP_CHUNK },              /* empty size */
        { "g\r\n", BRAID_EHTTP_CHUNK },                           /* not hex */
        { "-1\r\n", BRAID_EHTTP_CHUNK },
        { "0x5\r\nhello\r\n0\r\n\r\n", BRAID_EHTTP_CHUNK },
        { "+5\r\n", BRAID_EHTTP_CHUNK },
        { "5 \r\nhello\r\n", BRAID_EHTTP_CHUNK },                 /* BWS without extension */
        { "5\nhello\r\n", BRAID_EHTTP_CHUNK },                    /* bare LF */
        { "5\rhello\r\n", BRAID_EHTTP_CHUNK },                    /* bare CR */
        { "5\r\nhelloXX0\r\n\r\n", BRAID_EHTTP_CHUNK },           /* no CRLF after data */
        { "5\r\nhello\n0\r\n\r\n", BRAID_EHTTP_CHUNK },
        { "5;a\nb\r\nhello\r\n", BRAID_EHTTP_CHUNK },             /* LF inside an extension */
        { "10000000000000000\r\n", BRAID_EHTTP_CHUNK },           /* 65 bits */
        { "ffffffffffffffff\r\n", BRAID_EHTTP_BODY_TOO_LARGE },
        { "0\r\nX: a\nY: b\r\n\r\n", BRAID_EHTTP_CHUNK },         /* bare LF in trailers */
        { "0\r\n\n", BRAID_EHTTP_CHUNK },
        { "0\r\n:x\r\n\r\n", BRAID_EHTTP_CHUNK },
    };
    char out[256];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t len = strlen(cases[i].in), n;
        for (size_t split = 0; split <= 3; split++) {
            ssize_t rc = decode_split(cases[i].in, len, split, out, &n, 0);
            if (rc != cases[i].code)
                bt_fail(__FILE__, __LINE__, "case %zu split %zu: %zd want %zd", i, split, rc, cases[i].code);
        }
    }
    /* the body limit counts across chunks */
    size_t n;
    BT_EQ(decode_split("5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 25, 0, out, &n, 10), 25);
    BT_EQ(decode_split("5\r\nhello\r\n6\r\nworld!\r\n0\r\n\r\n", 26, 0, out, &n, 10), BRAID_EHTTP_BODY_TOO_LARGE);
}

BT_TEST(chunked_encode_roundtrip) {
    char head[BRAID_HTTP_CHUNK_HEAD_MAX];
    BT_EQ(braid_http_chunk_head(head, 0x1a2b), 6);
    BT_TRUE(memcmp(head, "1a2b\r\n", 6) == 0);
    BT_EQ(braid_http_chunk_head(head, SIZE_MAX), 18);
    char enc[512];
    size_t o = 0;
    const char *parts[] = { "a", "bcdefghijklmnopq", "r" };
    for (int i = 0; i < 3; i++) {
        size_t w = braid_http_chunk_encode(enc + o, sizeof enc - o, parts[i], strlen(parts[i]));
        BT_GT(w, 0);
        o += w;
    }
    BT_EQ(braid_http_chunk_encode(enc, 5, "abcd", 4), 0);   /* too small: 1\r\nabcd\r\n = 9 */
    memcpy(enc + o, BRAID_HTTP_CHUNKED_END, 5);
    o += 5;
    char out[64];
    size_t n;
    BT_EQ(decode_split(enc, o, 1, out, &n, 0), (ssize_t)o);
    BT_EQ(n, 18);
    BT_TRUE(memcmp(out, "abcdefghijklmnopqr", 18) == 0);
}

BT_TEST(dates) {
    char d[32];
    braid_http_format_date(784111777, d);
    BT_STREQ(d, "Sun, 06 Nov 1994 08:49:37 GMT");
    BT_EQ(braid_http_parse_date(d, strlen(d)), 784111777);
    BT_EQ(braid_http_parse_date("Sunday, 06-Nov-94 08:49:37 GMT", 30), 784111777);
    BT_EQ(braid_http_parse_date("Sun Nov  6 08:49:37 1994", 24), 784111777);
    BT_EQ(braid_http_parse_date("Sun, 06 Nov 1994 08:49:37 UTC", 29), -1);
    BT_EQ(braid_http_parse_date("yesterday", 9), -1);
}

/* ---- differential against libhttp-parser -------------------------------------------- */
#ifdef BRAID_HAVE_HTTP_PARSER
typedef struct hp_out {
    char url[512]; size_t url_len;
    char names[32][64]; char values[32][256]; size_t nl[32], vl[32]; int nh; int last_was_value;
    char body[512]; size_t body_len;
    int complete;
} hp_out;

static int hp_url(http_parser *p, const char *at, size_t n) {
    hp_out *o = p->data; memcpy(o->url + o->url_len, at, n); o->url_len += n; return 0;
}
static int hp_field(http_parser *p, const char *at, size_t n) {
    hp_out *o = p->data;
    if (o->last_was_value || o->nh == 0) { o->nh++; o->nl[o->nh - 1] = 0; o->vl[o->nh - 1] = 0; }
    memcpy(o->names[o->nh - 1] + o->nl[o->nh - 1], at, n); o->nl[o->nh - 1] += n;
    o->last_was_value = 0;
    return 0;
}
static int hp_value(http_parser *p, const char *at, size_t n) {
    hp_out *o = p->data;
    memcpy(o->values[o->nh - 1] + o->vl[o->nh - 1], at, n); o->vl[o->nh - 1] += n;
    o->last_was_value = 1;
    return 0;
}
static int hp_body(http_parser *p, const char *at, size_t n) {
    hp_out *o = p->data; memcpy(o->body + o->body_len, at, n); o->body_len += n; return 0;
}
static int hp_done(http_parser *p) { ((hp_out *)p->data)->complete = 1; return 0; }

/* Whole-message verdicts from both parsers. */
static bool hp_accepts(const char *s, size_t len, hp_out *o, http_parser *p) {
    memset(o, 0, sizeof *o);
    http_parser_settings st = { 0 };
    st.on_url = hp_url; st.on_header_field = hp_field; st.on_header_value = hp_value;
    st.on_body = hp_body; st.on_message_complete = hp_done;
    http_parser_init(p, HTTP_REQUEST);
    p->data = o;
    size_t n = http_parser_execute(p, &st, s, len);
    return n == len && HTTP_PARSER_ERRNO(p) == HPE_OK && o->complete;
}

static bool braid_accepts(const char *s, size_t len, braid_http_message *m, braid_http_header *h,
                          char *body, size_t *body_len) {
    guard g = guard_place(s, len);
    int n = braid_http_parse_request(m, h, 32, g.p, len, 0, NULL);
    bool ok = false;
    *body_len = 0;
    if (n > 0) {
        size_t rest = len - (size_t)n;
        if (m->body == BRAID_HTTP_BODY_NONE) ok = rest == 0;
        else if (m->body == BRAID_HTTP_BODY_LENGTH) {
            ok = rest == m->content_length;
            memcpy(body, g.p + n, rest);
            *body_len = rest;
        } else {
            braid_http_chunked d;
            braid_http_chunked_init(&d, 0);
            ssize_t rc = braid_http_chunked_decode(&d, g.p + n, rest, body_len);
            memcpy(body, g.p + n, *body_len);
            ok = rc == (ssize_t)rest;
        }
        /* fields point into the guard copy: rebase them into s */
        ptrdiff_t d = s - g.p;
        m->method += d; m->target += d;
        for (size_t i = 0; i < m->num_headers; i++) { h[i].name += d; h[i].value += d; }
    }
    guard_free(&g);
    return ok;
}

typedef struct dcase { const char *in; bool braid_result_ok; const char *differs; } dcase;

/* The corpus. `differs` is NULL where both parsers must agree on the verdict
 * and the fields; otherwise it says why braid's answer is the right one. */
static const dcase corpus[] = {
    { "GET / HTTP/1.1\r\nHost: a\r\n\r\n", true, NULL },
    { "GET /path/to?x=1&y=%20 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nX-Empty:\r\n\r\n", true, NULL },
    { "GET http://example.com/abs HTTP/1.1\r\nHost: example.com\r\n\r\n", true, NULL },
    { "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", true, NULL },
    { "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", true,
      "http_parser treats CONNECT as an upgrade and stops at the head; braid parses the "
      "head like any other and leaves tunnelling to the server" },
    { "POST /f HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", true, NULL },
    { "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", true, NULL },
    { "POST /f HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: x\r\n\r\n", true,
      "trailer fields: http_parser reports them as more header fields; braid validates and "
      "discards them (a trailer must not be mistaken for a header that framed the body)" },
    { "PUT /f HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc", true, NULL },
    { "GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: caf\xc3\xa9\r\n\r\n", true, NULL },
    { "GET / HTTP/1.1\r\nHost: a\r\nX:  padded \t\r\n\r\n", true,
      "braid trims trailing OWS from field values (RFC 9110 5.5); http_parser keeps it" },
    { "\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", true, NULL },
    { "GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", true, NULL },
    /* rejected by both */
    { "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", false, NULL },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false, NULL },
    { "GET / HTTP/1.1\r\nHo st: a\r\n\r\n", false,
      "a space inside a field name: not a token (RFC 9110 5.1); lenient http_parser takes "
      "\"Ho st\" as the name, another parser might see a Host" },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, NULL },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n", false, NULL },
    { "GET / HTTP/1.1\r\nHost: a\r\nX: a\x01\r\n\r\n", false, NULL },
    { "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n", false, NULL },
    { "GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", false, NULL },
    /* braid rejects, http_parser accepts: each is a smuggling or ambiguity vector */
    { "GET / HTTP/1.1\r\n\r\n", false,
      "RFC 9112 3.2: a server MUST answer 400 to an HTTP/1.1 request without Host; http_parser "
      "does not check semantics" },
    { "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", false,
      "two Hosts: the RFC's MUST 400; proxies and origins could pick different ones" },
    { "GET / HTTP/1.1\nHost: a\n\n", false,
      "bare LF line ends: http_parser accepts them; a front end that only splits on CRLF sees "
      "another message, so braid refuses" },
    { "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", false,
      "obs-fold: RFC 9112 5.2 lets a server reject it, and folding is a classic way to hide a "
      "header from one parser" },
    { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc", false, NULL },
    { "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", false,
      "braid implements no transfer coding but chunked, so it cannot deliver the body" },
    { "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", false,
      "RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 means the framing is faulty" },
    { "GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", false,
      "non-ASCII in the request-target: not a URI (RFC 3986); http_parser's lenient build allows it" },
    { "GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n", false,
      "whitespace after a chunk size without an extension is not in the grammar" },
};

static void differential(void) {
    static hp_out o;
    static char body[512];
    http_parser p;
    int agree = 0, justified = 0, mismatches = 0;
    for (size_t i = 0; i < sizeof corpus / sizeof corpus[0]; i++) {
        const char *s = corpus[i].in;
        size_t len = strlen(s);
        braid_http_message m;
        braid_http_header h[32];
        size_t blen;
        bool b = braid_accepts(s, len, &m, h, body, &blen);
        bool hp = hp_accepts(s, len, &o, &p);
        if (b != corpus[i].braid_result_ok)
            bt_fail(__FILE__, __LINE__, "corpus %zu: braid %s (%s), expected %s", i,
                    b ? "accepts" : "rejects", m.error ? m.error : "-", corpus[i].braid_result_ok ? "accept" : "reject");
        if (corpus[i].differs) {
            /* The justification must still be true: the parsers do differ,
             * in verdict or in fields. */
            bool fields_differ = false;
            if (b && hp) {
                if ((int)m.num_headers != o.nh) fields_differ = true;
                for (size_t k = 0; k < m.num_headers && (int)k < o.nh; k++)
                    if (h[k].value_len != o.vl[k] || memcmp(h[k].value, o.values[k], o.vl[k]))
                        fields_differ = true;
                if (p.upgrade || !o.complete) fields_differ = true;
            }
            if (b == hp && !fields_differ && !(b && p.upgrade))
                bt_fail(__FILE__, __LINE__, "corpus %zu: listed as differing but both agree", i);
            justified++;
            continue;
        }
        if (b != hp) {
            fprintf(stderr, "corpus %zu \"%s\": braid %d, http_parser %d (%s)\n", i, s, b, hp,
                    http_errno_name(HTTP_PARSER_ERRNO(&p)));
            mismatches++;
            continue;
        }
        if (b) {
            BT_TRUE(m.target_len == o.url_len && memcmp(m.target, o.url, o.url_len) == 0);
            BT_TRUE(m.method_len == strlen(http_method_str(p.method)) &&
                    memcmp(m.method, http_method_str(p.method), m.method_len) == 0);
            BT_EQ(m.minor_version, p.http_minor);
            BT_EQ((int)m.num_headers, o.nh);
            for (size_t k = 0; k < m.num_headers; k++) {
                BT_TRUE(h[k].name_len == o.nl[k] && memcmp(h[k].name, o.names[k], o.nl[k]) == 0);
                BT_TRUE(h[k].value_len == o.vl[k] && memcmp(h[k].value, o.values[k], o.vl[k]) == 0);
            }
            BT_EQ(blen, o.body_len);
            BT_TRUE(memcmp(body, o.body, blen) == 0);
            BT_EQ(m.keep_alive, http_should_keep_alive(&p) != 0);
        }
        agree++;
    }
    BT_EQ(mismatches, 0);
    BT_GT(agree, 15);
    BT_GT(justified, 5);
}
#endif

BT_TEST(differential_libhttp_parser) {
#ifdef BRAID_HAVE_HTTP_PARSER
    differential();
#else
    bt_skip("libhttp-parser-dev not installed");
#endif
}
