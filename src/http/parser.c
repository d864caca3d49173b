/* HTTP/1.1 message heads: a strict, zero-copy, allocation-free parser.
 *
 * The head is parsed from the start of the buffer on every call that could
 * make progress (picohttpparser's design): no state survives between calls
 * but the caller's prev_len, so a caller cannot desynchronise the parser, and
 * every byte read is inside buf[0..len) — the guard-page tests prove it.
 * Strictness is the point: anything that two implementations could read two
 * ways (RFC 9112 section 11.2, request smuggling) is refused. */
#include "base/base.h"
#include <braid/http.h>
#include <string.h>
#include <strings.h>

#include <stdlib.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <nmmintrin.h>
#endif

/* The http module's codes: its range (-4100 ... -4149), and an older one. */
static const char *const http_names[] = {
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_INCOMPLETE]        = "incomplete HTTP message (more input needed)",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_SYNTAX]            = "malformed HTTP message",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_FRAMING]           = "ambiguous or invalid HTTP body framing",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_CHUNK]             = "malformed chunked encoding",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_URI_TOO_LONG]      = "HTTP request line too long",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_HEADERS_TOO_LARGE] = "HTTP header fields too large",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_BODY_TOO_LARGE]    = "HTTP body too large",
    [BRAID_EHTTP_INCOMPLETE - BRAID_EHTTP_VERSION]           = "HTTP version not supported",
};
BRAID__ERROR_DOMAIN(http, "http", BRAID_EHTTP_INCOMPLETE, BRAID_EHTTP_VERSION, http_names);
static const char *const http_old_names[] = { "HTTP protocol error" };
BRAID__ERROR_DOMAIN(http_old, "http", BRAID_EHTTP, BRAID_EHTTP, http_old_names);

/* Character classes. tchar (RFC 9110 5.6.2): token characters. */
enum { C_TCHAR = 1, C_VCHAR = 2, C_FIELD = 4, C_TARGET = 8 };
static const uint8_t cls[256] = {
#define T (C_TCHAR | C_VCHAR | C_FIELD | C_TARGET)
#define V (C_VCHAR | C_FIELD | C_TARGET)
    ['\t'] = C_FIELD, [' '] = C_FIELD,
    ['!'] = T, ['"'] = V, ['#'] = T, ['$'] = T, ['%'] = T, ['&'] = T, ['\''] = T,
    ['('] = V, [')'] = V, ['*'] = T, ['+'] = T, [','] = V, ['-'] = T, ['.'] = T,
    ['/'] = V, ['0'] = T, ['1'] = T, ['2'] = T, ['3'] = T, ['4'] = T, ['5'] = T,
    ['6'] = T, ['7'] = T, ['8'] = T, ['9'] = T, [':'] = V, [';'] = V, ['<'] = V,
    ['='] = V, ['>'] = V, ['?'] = V, ['@'] = V,
    ['A'] = T, ['B'] = T, ['C'] = T, ['D'] = T, ['E'] = T, ['F'] = T, ['G'] = T,
    ['H'] = T, ['I'] = T, ['J'] = T, ['K'] = T, ['L'] = T, ['M'] = T, ['N'] = T,
    ['O'] = T, ['P'] = T, ['Q'] = T, ['R'] = T, ['S'] = T, ['T'] = T, ['U'] = T,
    ['V'] = T, ['W'] = T, ['X'] = T, ['Y'] = T, ['Z'] = T,
    ['['] = V, ['\\'] = V, [']'] = V, ['^'] = T, ['_'] = T, ['`'] = T,
    ['a'] = T, ['b'] = T, ['c'] = T, ['d'] = T, ['e'] = T, ['f'] = T, ['g'] = T,
    ['h'] = T, ['i'] = T, ['j'] = T, ['k'] = T, ['l'] = T, ['m'] = T, ['n'] = T,
    ['o'] = T, ['p'] = T, ['q'] = T, ['r'] = T, ['s'] = T, ['t'] = T, ['u'] = T,
    ['v'] = T, ['w'] = T, ['x'] = T, ['y'] = T, ['z'] = T,
    ['{'] = V, ['|'] = T, ['}'] = V, ['~'] = T,
    /* obs-text (0x80-0xFF) is allowed in field values and reason phrases, never
     * in tokens or the request-target. */
#define O8 C_FIELD, C_FIELD, C_FIELD, C_FIELD, C_FIELD, C_FIELD, C_FIELD, C_FIELD
#define O64 O8, O8, O8, O8, O8, O8, O8, O8
    [0x80] = O64, O64,
#undef O64
#undef O8
#undef T
#undef V
};

int braid_http_error_status(int code) {
    switch (code) {
    case BRAID_EHTTP_URI_TOO_LONG: return 414;
    case BRAID_EHTTP_HEADERS_TOO_LARGE: return 431;
    case BRAID_EHTTP_BODY_TOO_LARGE: return 413;
    case BRAID_EHTTP_VERSION: return 505;
    default: return 400;
    }
}

const char *braid_http_status_reason(int s) {
    switch (s) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "";
    }
}

typedef struct lims {
    size_t line, head, headers;
    uint64_t body;
} lims;

static lims get_limits(const braid_http_limits *l, size_t max_hdrs) {
    lims o = { BRAID_HTTP_MAX_REQUEST_LINE, BRAID_HTTP_MAX_HEAD, BRAID_HTTP_MAX_HEADERS,
               BRAID_HTTP_MAX_BODY };
    if (l) {
        if (l->max_request_line) o.line = l->max_request_line;
        if (l->max_head) o.head = l->max_head;
        if (l->max_headers) o.headers = l->max_headers;
        if (l->max_body) o.body = l->max_body;
    }
    if (max_hdrs < o.headers) o.headers = max_hdrs;
    return o;
}

#define FAIL(code, why) do { m->error = (why); return (code); } while (0)

/* SIMD fast path (measured in docs/http.md: about a third faster on a
 * browser-sized request head, nothing on tiny ones). PCMPESTRI with ranges
 * finds the first byte outside the allowed ranges sixteen bytes at a time,
 * only while a whole block lies before end — never past it. Chosen at run
 * time: the library is built for baseline x86-64. BRAID_HTTP_NO_SIMD=1 in the
 * environment turns it off (for the comparison). */
#if defined(__x86_64__) && defined(__GNUC__)
#define BRAID_HTTP_SIMD 1
static bool use_sse42;
__attribute__((constructor)) static void http_simd_probe(void) {
    const char *off = getenv("BRAID_HTTP_NO_SIMD");
    __builtin_cpu_init();
    use_sse42 = __builtin_cpu_supports("sse4.2") && !(off && *off == '1');
}

__attribute__((target("sse4.2"))) static const char *
scan_ranges_sse42(const char *p, const char *end, const char *ranges, int nranges) {
    const __m128i r = _mm_loadu_si128((const __m128i *)ranges);
    while (end - p >= 16) {
        __m128i b = _mm_loadu_si128((const __m128i *)p);
        int i = _mm_cmpestri(r, nranges, b, 16,
                             _SIDD_UBYTE_OPS | _SIDD_CMP_RANGES | _SIDD_NEGATIVE_POLARITY);
        if (i != 16) return p + i;
        p += 16;
    }
    return p;
}
/* Ranges for PCMPESTRI, padded to 16 bytes. */
static const char field_ranges[16] = "\x20\x7e\x80\xff\x09\x09";
static const char target_ranges[16] = "\x21\x7e";
#endif

/* Scan a field value from p: the first byte that is not a field character
 * (HTAB, SP, VCHAR, obs-text). */
static inline const char *scan_field(const char *p, const char *end) {
#ifdef BRAID_HTTP_SIMD
    if (use_sse42 && end - p >= 16) p = scan_ranges_sse42(p, end, field_ranges, 6);
#endif
    while (p < end && (cls[(uint8_t)*p] & C_FIELD)) p++;
    return p;
}

/* The request-target: VCHAR only. */
static inline const char *scan_target(const char *p, const char *end) {
#ifdef BRAID_HTTP_SIMD
    if (use_sse42 && end - p >= 16) p = scan_ranges_sse42(p, end, target_ranges, 2);
#endif
    while (p < end && (cls[(uint8_t)*p] & C_TARGET)) p++;
    return p;
}

static inline const char *scan_token(const char *p, const char *end) {
    while (p < end && (cls[(uint8_t)*p] & C_TCHAR)) p++;
    return p;
}

/* Expect CRLF at *pp; INCOMPLETE if the buffer ends first. */
static int expect_crlf(braid_http_message *m, const char **pp, const char *end) {
    const char *p = *pp;
    if (p >= end) return BRAID_EHTTP_INCOMPLETE;
    if (*p == '\n') FAIL(BRAID_EHTTP_SYNTAX, "bare LF line ending");
    if (*p != '\r') FAIL(BRAID_EHTTP_SYNTAX, "invalid character");
    if (p + 1 >= end) return BRAID_EHTTP_INCOMPLETE;
    if (p[1] != '\n') FAIL(BRAID_EHTTP_SYNTAX, "bare CR");
    *pp = p + 2;
    return 0;
}

/* "HTTP/1.x" at *pp. */
static int parse_version(braid_http_message *m, const char **pp, const char *end) {
    static const char pfx[] = "HTTP/";
    const char *p = *pp;
    for (int i = 0; i < 5; i++, p++) {
        if (p >= end) return BRAID_EHTTP_INCOMPLETE;
        if (*p != pfx[i]) FAIL(BRAID_EHTTP_SYNTAX, "malformed HTTP version");
    }
    if (p + 3 > end) {
        /* Validate what is there so garbage fails now, not after a timeout. */
        if (p < end && !(*p >= '0' && *p <= '9')) FAIL(BRAID_EHTTP_SYNTAX, "malformed HTTP version");
        if (p + 1 < end && p[1] != '.') FAIL(BRAID_EHTTP_SYNTAX, "malformed HTTP version");
        return BRAID_EHTTP_INCOMPLETE;
    }
    if (!(p[0] >= '0' && p[0] <= '9') || p[1] != '.' || !(p[2] >= '0' && p[2] <= '9'))
        FAIL(BRAID_EHTTP_SYNTAX, "malformed HTTP version");
    if (p[0] != '1') FAIL(BRAID_EHTTP_VERSION, "HTTP version is not 1.x");
    m->minor_version = p[2] - '0';
    *pp = p + 3;
    return 0;
}

/* Header fields up to and including the empty line. */
static int parse_fields(braid_http_message *m, braid_http_header *hdrs, const char **pp,
                        const char *end, size_t max_headers) {
    const char *p = *pp;
    size_t n = 0;
    for (;;) {
        if (p >= end) return BRAID_EHTTP_INCOMPLETE;
        if (*p == '\r') {
            int rc = expect_crlf(m, &p, end);
            if (rc) return rc;
            break;
        }
        if (*p == '\n') FAIL(BRAID_EHTTP_SYNTAX, "bare LF line ending");
        if (*p == ' ' || *p == '\t')
            FAIL(BRAID_EHTTP_SYNTAX, "obs-fold or whitespace at the start of a header line");
        const char *name = p;
        p = scan_token(p, end);
        if (p >= end) return BRAID_EHTTP_INCOMPLETE;
        if (*p != ':') {
            if (*p == ' ' || *p == '\t') FAIL(BRAID_EHTTP_SYNTAX, "whitespace before a header colon");
            FAIL(BRAID_EHTTP_SYNTAX, "invalid character in a header name");
        }
        if (p == name) FAIL(BRAID_EHTTP_SYNTAX, "empty header name");
        size_t name_len = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t')) p++;
        const char *value = p;
        p = scan_field(p, end);
        if (p >= end) return BRAID_EHTTP_INCOMPLETE;
        const char *vend = p;
        int rc = expect_crlf(m, &p, end);
        if (rc) {
            if (rc == BRAID_EHTTP_SYNTAX && *vend != '\r' && *vend != '\n')
                m->error = "control character in a header value";
            return rc;
        }
        while (vend > value && (vend[-1] == ' ' || vend[-1] == '\t')) vend--;
        if (n >= max_headers) FAIL(BRAID_EHTTP_HEADERS_TOO_LARGE, "too many header fields");
        hdrs[n].name = name;
        hdrs[n].name_len = name_len;
        hdrs[n].value = value;
        hdrs[n].value_len = (size_t)(vend - value);
        n++;
    }
    m->headers = hdrs;
    m->num_headers = n;
    *pp = p;
    return 0;
}

static inline bool name_is(const braid_http_header *h, const char *lname, size_t len) {
    return h->name_len == len && strncasecmp(h->name, lname, len) == 0;
}

bool braid_http_value_has_token(const char *v, size_t len, const char *token) {
    size_t tl = strlen(token);
    size_t i = 0;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t' || v[i] == ',')) i++;
        size_t s = i;
        while (i < len && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (e - s == tl && strncasecmp(v + s, token, tl) == 0) return true;
    }
    return false;
}

const braid_http_header *braid_http_find_header(const braid_http_message *m, const char *name) {
    size_t len = strlen(name);
    for (size_t i = 0; i < m->num_headers; i++)
        if (name_is(&m->headers[i], name, len)) return &m->headers[i];
    return NULL;
}

/* Transfer-Encoding: the codings, across all its fields, must be exactly
 * "chunked" once (we implement no other coding, and a final non-chunked coding
 * on a request is unframeable: RFC 9112 6.3). */
static int check_te(braid_http_message *m, const char *v, size_t len, bool *chunked) {
    size_t i = 0;
    bool any = false;
    while (i < len) {
        while (i < len && (v[i] == ' ' || v[i] == '\t')) i++;
        size_t s = i;
        while (i < len && v[i] != ',') i++;
        size_t e = i;
        while (e > s && (v[e - 1] == ' ' || v[e - 1] == '\t')) e--;
        if (i < len) i++;   /* the comma */
        if (e == s) continue; /* empty list element (RFC 9110 5.6.1 allows them) */
        any = true;
        if (e - s == 7 && strncasecmp(v + s, "chunked", 7) == 0) {
            if (*chunked) FAIL(BRAID_EHTTP_FRAMING, "chunked applied twice");
            *chunked = true;
        } else {
            FAIL(BRAID_EHTTP_FRAMING, "unsupported transfer coding");
        }
    }
    if (!any) FAIL(BRAID_EHTTP_FRAMING, "empty Transfer-Encoding");
    return 0;
}

static int parse_length(braid_http_message *m, const char *v, size_t len, uint64_t *out) {
    if (len == 0) FAIL(BRAID_EHTTP_FRAMING, "empty Content-Length");
    uint64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9') FAIL(BRAID_EHTTP_FRAMING, "malformed Content-Length");
        if (n > (UINT64_MAX - 9) / 10) FAIL(BRAID_EHTTP_FRAMING, "Content-Length overflows");
        n = n * 10 + (uint64_t)(v[i] - '0');
    }
    *out = n;
    return 0;
}

/* Derive framing, persistence and the other semantic flags from the fields. */
static int semantics(braid_http_message *m, bool request, const lims *L) {
    bool have_cl = false, have_te = false, chunked = false, close = false, ka = false,
         upgrade_tok = false, have_upgrade = false;
    uint64_t cl = 0;
    for (size_t i = 0; i < m->num_headers; i++) {
        const braid_http_header *h = &m->headers[i];
        switch (h->name_len) {
        case 4:
            if (request && name_is(h, "host", 4)) {
                if (m->host) FAIL(BRAID_EHTTP_SYNTAX, "more than one Host");
                m->host = h->value;
                m->host_len = h->value_len;
            }
            break;
        case 6:
            if (request && name_is(h, "expect", 6)) {
                if (h->value_len == 12 && strncasecmp(h->value, "100-continue", 12) == 0)
                    m->expect_continue = true;
            }
            break;
        case 7:
            if (name_is(h, "upgrade", 7)) have_upgrade = true;
            break;
        case 10:
            if (name_is(h, "connection", 10)) {
                if (braid_http_value_has_token(h->value, h->value_len, "close")) close = true;
                if (braid_http_value_has_token(h->value, h->value_len, "keep-alive")) ka = true;
                if (braid_http_value_has_token(h->value, h->value_len, "upgrade")) upgrade_tok = true;
            }
            break;
        case 14:
            if (name_is(h, "content-length", 14)) {
                uint64_t v;
                int rc = parse_length(m, h->value, h->value_len, &v);
                if (rc) return rc;
                /* Two Content-Lengths are refused even when equal: it is the
                 * shape of an attack and no honest client sends it. */
                if (have_cl) FAIL(BRAID_EHTTP_FRAMING, v == cl ? "duplicate Content-Length"
                                                                : "conflicting Content-Length");
                have_cl = true;
                cl = v;
            }
            break;
        case 17:
            if (name_is(h, "transfer-encoding", 17)) {
                int rc = check_te(m, h->value, h->value_len, &chunked);
                if (rc) return rc;
                have_te = true;
            }
            break;
        }
    }
    if (have_te && have_cl) FAIL(BRAID_EHTTP_FRAMING, "both Content-Length and Transfer-Encoding");
    if (have_te && m->minor_version == 0)
        FAIL(BRAID_EHTTP_FRAMING, "Transfer-Encoding in an HTTP/1.0 message");
    if (request && m->minor_version >= 1 && !m->host)
        FAIL(BRAID_EHTTP_SYNTAX, "HTTP/1.1 request without Host");
    m->keep_alive = m->minor_version >= 1 ? !close : (ka && !close);
    m->upgrade = upgrade_tok && have_upgrade;
    if (chunked) {
        m->body = BRAID_HTTP_BODY_CHUNKED;
    } else if (have_cl) {
        if (cl > L->body) FAIL(BRAID_EHTTP_BODY_TOO_LARGE, "Content-Length over the body limit");
        m->content_length = cl;
        m->body = cl ? BRAID_HTTP_BODY_LENGTH : BRAID_HTTP_BODY_NONE;
    } else {
        m->body = request ? BRAID_HTTP_BODY_NONE : BRAID_HTTP_BODY_EOF;
    }
    return 0;
}

static void reset(braid_http_message *m) {
    memset(m, 0, sizeof *m);
}

/* Would re-parsing be a waste? Only a CR or LF can finish a line (or
 * reveal a bare-CR/LF error); meanwhile the limits still apply. Returns 1 if
 * the caller should report INCOMPLETE without parsing. */
static int skip_reparse(const char *buf, size_t len, size_t prev_len, const lims *L) {
    if (prev_len == 0 || prev_len >= len) return 0;
    if (len > L->head) return 0;
    const char *nb = buf + prev_len;
    size_t nl = len - prev_len;
    if (memchr(nb, '\n', nl) || memchr(nb, '\r', nl)) return 0;
    /* Still on the start line? Its limit is the tighter one. */
    if (len > L->line && !memchr(buf, '\n', prev_len)) return 0;
    return 1;
}

/* The start line is parsed within its first max_request_line + 2 bytes (the
 * line and its CRLF) and the head within its first max_head bytes. Only
 * those bytes decide the outcome, so a prefix of an input and the whole input
 * never disagree: an error earlier in the stream wins over a limit later. */
static int line_incomplete(braid_http_message *m, const char *line, const char *end, size_t len,
                           const lims *L, bool request);

/* INCOMPLETE inside the first max_head bytes while at least that many have
 * arrived: the head is over its limit. The parse itself only ever looks at
 * the first max_head bytes, so a longer input cannot turn this into another
 * error. */
static int incomplete(braid_http_message *m, size_t len, const lims *L) {
    if (len >= L->head) FAIL(BRAID_EHTTP_HEADERS_TOO_LARGE, "head over the limit");
    return BRAID_EHTTP_INCOMPLETE;
}

static int line_incomplete(braid_http_message *m, const char *line, const char *end, size_t len,
                           const lims *L, bool request) {
    if ((size_t)(end - line) >= L->line + 2)
        FAIL(BRAID_EHTTP_URI_TOO_LONG, request ? "request line over the limit" : "status line over the limit");
    return incomplete(m, len, L);
}

int braid_http_parse_request(braid_http_message *m, braid_http_header *hdrs, size_t max_hdrs,
                             const char *buf, size_t len, size_t prev_len,
                             const braid_http_limits *lim) {
    lims L = get_limits(lim, max_hdrs);
    reset(m);
    if (!len) return BRAID_EHTTP_INCOMPLETE;   /* buf may be NULL: no arithmetic on it */
    if (skip_reparse(buf, len, prev_len, &L)) return BRAID_EHTTP_INCOMPLETE;
    const char *p = buf, *end = buf + (len < L.head ? len : L.head);
    int rc;
    /* RFC 9112 2.2: ignore empty lines (CRLF) before the request line. */
    while (p < end && *p == '\r') {
        rc = expect_crlf(m, &p, end);
        if (rc == BRAID_EHTTP_INCOMPLETE) return incomplete(m, len, &L);
        if (rc) return rc;
    }
    const char *line = p, *full = end;
    if ((size_t)(end - line) > L.line + 2) end = line + L.line + 2;
#define LINE_INCOMPLETE() line_incomplete(m, line, full, len, &L, true)
    if (p < end && *p == '\n') FAIL(BRAID_EHTTP_SYNTAX, "bare LF line ending");
    m->method = p;
    p = scan_token(p, end);
    if (p >= end) return LINE_INCOMPLETE();
    if (*p != ' ') FAIL(BRAID_EHTTP_SYNTAX, p == m->method ? "empty method" : "invalid character in the method");
    if (p == m->method) FAIL(BRAID_EHTTP_SYNTAX, "empty method");
    m->method_len = (size_t)(p - m->method);
    m->target = ++p;
    p = scan_target(p, end);
    if (p >= end) return LINE_INCOMPLETE();
    if (*p != ' ') FAIL(BRAID_EHTTP_SYNTAX, "invalid character in the request-target");
    if (p == m->target) FAIL(BRAID_EHTTP_SYNTAX, "empty request-target");
    m->target_len = (size_t)(p - m->target);
    p++;
    rc = parse_version(m, &p, end);
    if (rc == BRAID_EHTTP_INCOMPLETE) return LINE_INCOMPLETE();
    if (rc) return rc;
    rc = expect_crlf(m, &p, end);
    if (rc == BRAID_EHTTP_INCOMPLETE) return LINE_INCOMPLETE();
    if (rc) {
        if (m->error && strcmp(m->error, "invalid character") == 0)
            m->error = "junk after the HTTP version";
        return rc;
    }
#undef LINE_INCOMPLETE
    if ((size_t)(p - 2 - line) > L.line) FAIL(BRAID_EHTTP_URI_TOO_LONG, "request line over the limit");
    end = full;
    rc = parse_fields(m, hdrs, &p, end, L.headers);
    if (rc == BRAID_EHTTP_INCOMPLETE) return incomplete(m, len, &L);
    if (rc) return rc;
    rc = semantics(m, true, &L);
    if (rc) return rc;
    m->head_len = (size_t)(p - buf);
    return (int)m->head_len;
}

int braid_http_parse_response(braid_http_message *m, braid_http_header *hdrs, size_t max_hdrs,
                              const char *buf, size_t len, size_t prev_len, bool head_request,
                              const braid_http_limits *lim) {
    lims L = get_limits(lim, max_hdrs);
    reset(m);
    if (!len) return BRAID_EHTTP_INCOMPLETE;   /* buf may be NULL: no arithmetic on it */
    if (skip_reparse(buf, len, prev_len, &L)) return BRAID_EHTTP_INCOMPLETE;
    const char *p = buf, *end = buf + (len < L.head ? len : L.head), *full = end;
    if ((size_t)(end - buf) > L.line + 2) end = buf + L.line + 2;
#define LINE_INCOMPLETE() line_incomplete(m, buf, full, len, &L, false)
    int rc = parse_version(m, &p, end);
    if (rc == BRAID_EHTTP_INCOMPLETE) return LINE_INCOMPLETE();
    if (rc) return rc;
    if (p >= end) return LINE_INCOMPLETE();
    if (*p != ' ') FAIL(BRAID_EHTTP_SYNTAX, "no space after the HTTP version");
    p++;
    if (end - p < 3) {
        for (const char *q = p; q < end; q++)
            if (*q < '0' || *q > '9') FAIL(BRAID_EHTTP_SYNTAX, "malformed status code");
        return LINE_INCOMPLETE();
    }
    for (int i = 0; i < 3; i++)
        if (p[i] < '0' || p[i] > '9') FAIL(BRAID_EHTTP_SYNTAX, "malformed status code");
    m->status = (p[0] - '0') * 100 + (p[1] - '0') * 10 + (p[2] - '0');
    if (m->status < 100) FAIL(BRAID_EHTTP_SYNTAX, "status code below 100");
    p += 3;
    if (p >= end) return LINE_INCOMPLETE();
    if (*p == ' ') {
        p++;
        m->reason = p;
        p = scan_field(p, end);
        if (p >= end) return LINE_INCOMPLETE();
        m->reason_len = (size_t)(p - m->reason);
    } else {
        /* RFC 9112 4: the SP before an empty reason is required, but common
         * servers omit it; accept "HTTP/1.1 200\r\n" as an empty reason. */
        m->reason = p;
    }
    rc = expect_crlf(m, &p, end);
    if (rc == BRAID_EHTTP_INCOMPLETE) return LINE_INCOMPLETE();
    if (rc) return rc;
#undef LINE_INCOMPLETE
    if ((size_t)(p - 2 - buf) > L.line) FAIL(BRAID_EHTTP_URI_TOO_LONG, "status line over the limit");
    end = full;
    rc = parse_fields(m, hdrs, &p, end, L.headers);
    if (rc == BRAID_EHTTP_INCOMPLETE) return incomplete(m, len, &L);
    if (rc) return rc;
    rc = semantics(m, false, &L);
    if (rc) return rc;
    /* RFC 9112 6.3: these responses never have a body, whatever the fields
     * say; a body that runs to EOF ends the connection. */
    if (head_request || m->status < 200 || m->status == 204 || m->status == 304) {
        m->body = BRAID_HTTP_BODY_NONE;
        m->content_length = 0;
    } else if (m->body == BRAID_HTTP_BODY_EOF) {
        m->keep_alive = false;
    }
    m->head_len = (size_t)(p - buf);
    return (int)m->head_len;
}

/* ---- chunked ------------------------------------------------------------------- */
enum {
    CH_SIZE,        /* hex digits of a chunk size */
    CH_SIZE_WS,     /* BWS after the size: only ';' may follow */
    CH_EXT,         /* chunk extension up to CR */
    CH_SIZE_LF,     /* after CR of the size line */
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER_START,  /* start of a trailer line (or the final CRLF) */
    CH_TRAILER,        /* inside a trailer field line */
    CH_TRAILER_LF,
    CH_FINAL_LF,
    CH_DONE,
};

#define CH_MAX_LINE 4096   /* a size line with its extensions */

void braid_http_chunked_init(braid_http_chunked *d, uint64_t max_body) {
    memset(d, 0, sizeof *d);
    d->max_body = max_body ? max_body : BRAID_HTTP_MAX_BODY;
    d->max_trailer = BRAID_HTTP_MAX_HEAD;
    d->state = CH_SIZE;
}

bool braid_http_chunked_is_done(const braid_http_chunked *d) {
    return d->state == CH_DONE;
}

static inline int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ssize_t braid_http_chunked_decode(braid_http_chunked *d, char *buf, size_t len, size_t *out_len) {
    size_t in = 0, out = 0;
    ssize_t rc;
    while (in < len) {
        char c = buf[in];
        switch (d->state) {
        case CH_SIZE: {
            int h = hexval(c);
            if (h >= 0) {
                /* 16 hex digits fill 64 bits; leading zeros don't count. */
                if (d->remaining >> 60) { rc = BRAID_EHTTP_CHUNK; goto out; }
                d->remaining = d->remaining << 4 | (uint64_t)h;
                d->digits++;
                in++;
                break;
            }
            if (d->digits == 0) { rc = BRAID_EHTTP_CHUNK; goto out; }
            if (c == '\r') { d->state = CH_SIZE_LF; in++; break; }
            if (c == ';') { d->state = CH_EXT; in++; break; }
            if (c == ' ' || c == '\t') { d->state = CH_SIZE_WS; in++; break; }
            { rc = BRAID_EHTTP_CHUNK; goto out; }
        }
        case CH_SIZE_WS:
            if (c == ' ' || c == '\t') { in++; break; }
            if (c == ';') { d->state = CH_EXT; in++; break; }
            { rc = BRAID_EHTTP_CHUNK; goto out; }
        case CH_EXT:
            /* Extensions are ignored, but they must be printable and short:
             * a bare LF or CR in them is a smuggling vector. */
            if (c == '\r') { d->state = CH_SIZE_LF; in++; break; }
            if (!(cls[(uint8_t)c] & C_FIELD)) { rc = BRAID_EHTTP_CHUNK; goto out; }
            if (++d->line > CH_MAX_LINE) { rc = BRAID_EHTTP_CHUNK; goto out; }
            in++;
            break;
        case CH_SIZE_LF:
            if (c != '\n') { rc = BRAID_EHTTP_CHUNK; goto out; }
            in++;
            d->line = 0;
            d->digits = 0;
            if (d->remaining == 0) {
                d->state = CH_TRAILER_START;
                break;
            }
            if (d->remaining > d->max_body - d->total || d->total > d->max_body)
                { rc = BRAID_EHTTP_BODY_TOO_LARGE; goto out; }
            d->state = CH_DATA;
            break;
        case CH_DATA: {
            size_t n = len - in;
            if (n > d->remaining) n = (size_t)d->remaining;
            if (out != in) memmove(buf + out, buf + in, n);
            out += n;
            in += n;
            d->remaining -= n;
            d->total += n;
            if (d->remaining == 0) d->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (c != '\r') { rc = BRAID_EHTTP_CHUNK; goto out; }
            d->state = CH_DATA_LF;
            in++;
            break;
        case CH_DATA_LF:
            if (c != '\n') { rc = BRAID_EHTTP_CHUNK; goto out; }
            d->state = CH_SIZE;
            in++;
            break;
        case CH_TRAILER_START:
            if (c == '\r') { d->state = CH_FINAL_LF; in++; break; }
            /* A trailer field: a token name then ':' — checked loosely (name
             * must start with a tchar), the rest as a field value. */
            if (!(cls[(uint8_t)c] & C_TCHAR)) { rc = BRAID_EHTTP_CHUNK; goto out; }
            d->state = CH_TRAILER;
            in++;
            if (++d->trailer > d->max_trailer) { rc = BRAID_EHTTP_HEADERS_TOO_LARGE; goto out; }
            break;
        case CH_TRAILER:
            if (c == '\r') { d->state = CH_TRAILER_LF; in++; break; }
            if (!(cls[(uint8_t)c] & C_FIELD)) { rc = BRAID_EHTTP_CHUNK; goto out; }
            if (++d->trailer > d->max_trailer) { rc = BRAID_EHTTP_HEADERS_TOO_LARGE; goto out; }
            in++;
            break;
        case CH_TRAILER_LF:
            if (c != '\n') { rc = BRAID_EHTTP_CHUNK; goto out; }
            d->state = CH_TRAILER_START;
            in++;
            break;
        case CH_FINAL_LF:
            if (c != '\n') { rc = BRAID_EHTTP_CHUNK; goto out; }
            d->state = CH_DONE;
            in++;
            rc = (ssize_t)in;
            goto out;
        case CH_DONE:
            rc = (ssize_t)in;
            goto out;
        }
    }
    rc = d->state == CH_DONE ? (ssize_t)in : BRAID_EHTTP_INCOMPLETE;
out:
    /* Set on every return, errors too, so a caller can account for what it
     * already got. */
    *out_len = out;
    return rc;
}

size_t braid_http_chunk_head(char *out, size_t n) {
    static const char hex[] = "0123456789abcdef";
    char tmp[16];
    size_t k = 0;
    do {
        tmp[k++] = hex[n & 15];
        n >>= 4;
    } while (n);
    size_t o = 0;
    while (k) out[o++] = tmp[--k];
    out[o++] = '\r';
    out[o++] = '\n';
    return o;
}

size_t braid_http_chunk_encode(char *out, size_t cap, const void *data, size_t n) {
    char head[BRAID_HTTP_CHUNK_HEAD_MAX];
    if (n == 0) return 0;
    size_t h = braid_http_chunk_head(head, n);
    if (cap < h + n + 2) return 0;
    memcpy(out, head, h);
    memcpy(out + h, data, n);
    out[h + n] = '\r';
    out[h + n + 1] = '\n';
    return h + n + 2;
}

/* ---- dates --------------------------------------------------------------------- */
static const char wday[7][4] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
static const char mon[12][4] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                 "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };

void braid_http_format_date(time_t t, char *out) {
    struct tm tm;
    gmtime_r(&t, &tm);
    /* By hand: strftime depends on the locale. */
    char *o = out;
    memcpy(o, wday[tm.tm_wday], 3); o += 3;
    *o++ = ','; *o++ = ' ';
    *o++ = (char)('0' + tm.tm_mday / 10); *o++ = (char)('0' + tm.tm_mday % 10);
    *o++ = ' ';
    memcpy(o, mon[tm.tm_mon], 3); o += 3;
    *o++ = ' ';
    int y = tm.tm_year + 1900;
    *o++ = (char)('0' + y / 1000 % 10); *o++ = (char)('0' + y / 100 % 10);
    *o++ = (char)('0' + y / 10 % 10); *o++ = (char)('0' + y % 10);
    *o++ = ' ';
    *o++ = (char)('0' + tm.tm_hour / 10); *o++ = (char)('0' + tm.tm_hour % 10); *o++ = ':';
    *o++ = (char)('0' + tm.tm_min / 10); *o++ = (char)('0' + tm.tm_min % 10); *o++ = ':';
    *o++ = (char)('0' + tm.tm_sec / 10); *o++ = (char)('0' + tm.tm_sec % 10);
    memcpy(o, " GMT", 5);
}

static int month_of(const char *s) {
    for (int i = 0; i < 12; i++)
        if (strncmp(s, mon[i], 3) == 0) return i;
    return -1;
}

static int num(const char *s, int n) {
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

time_t braid_http_parse_date(const char *s, size_t len) {
    struct tm tm = { 0 };
    char b[64];
    if (len >= sizeof b) return -1;
    memcpy(b, s, len);
    b[len] = 0;
    const char *c = strchr(b, ',');
    if (c && c - b == 3 && len == 29) {          /* IMF-fixdate */
        if (b[4] != ' ' || b[7] != ' ' || b[11] != ' ' || b[16] != ' ' || b[19] != ':' ||
            b[22] != ':' || strcmp(b + 25, " GMT"))
            return -1;
        tm.tm_mday = num(b + 5, 2);
        tm.tm_mon = month_of(b + 8);
        tm.tm_year = num(b + 12, 4) - 1900;
        tm.tm_hour = num(b + 17, 2);
        tm.tm_min = num(b + 20, 2);
        tm.tm_sec = num(b + 23, 2);
    } else if (c) {                               /* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
        const char *p = c + 1;
        if (strlen(p) != 23 || p[0] != ' ' || p[3] != '-' || p[7] != '-' || p[10] != ' ' ||
            p[13] != ':' || p[16] != ':' || strcmp(p + 19, " GMT"))
            return -1;
        tm.tm_mday = num(p + 1, 2);
        tm.tm_mon = month_of(p + 4);
        int y = num(p + 8, 2);
        tm.tm_year = y < 0 ? -1 : (y < 70 ? y + 100 : y);
        tm.tm_hour = num(p + 11, 2);
        tm.tm_min = num(p + 14, 2);
        tm.tm_sec = num(p + 17, 2);
    } else if (len == 24) {                       /* asctime: Sun Nov  6 08:49:37 1994 */
        if (b[3] != ' ' || b[7] != ' ' || b[10] != ' ' || b[13] != ':' || b[16] != ':' ||
            b[19] != ' ')
            return -1;
        tm.tm_mon = month_of(b + 4);
        tm.tm_mday = b[8] == ' ' ? num(b + 9, 1) : num(b + 8, 2);
        tm.tm_hour = num(b + 11, 2);
        tm.tm_min = num(b + 14, 2);
        tm.tm_sec = num(b + 17, 2);
        tm.tm_year = num(b + 20, 4) - 1900;
    } else {
        return -1;
    }
    if (tm.tm_mon < 0 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_year < 70 ||
        tm.tm_hour < 0 || tm.tm_hour > 23 || tm.tm_min < 0 || tm.tm_min > 59 ||
        tm.tm_sec < 0 || tm.tm_sec > 60)
        return -1;
    return timegm(&tm);
}
