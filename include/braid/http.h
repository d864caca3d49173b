/* braid/http.h — HTTP/1.1: a zero-copy parser, a chunked codec, and (below)
 * a server and a client over any stream transport, TLS included.
 *
 * The parser is picohttpparser's shape: the caller owns the buffer, the
 * results point into it, nothing is allocated, and "incomplete: call again
 * with more bytes" is its own return (BRAID_EHTTP_INCOMPLETE). The parser is
 * stateless over the head: call it with the whole buffer collected so far and
 * the length you passed last time (prev_len, 0 the first time) so it can skip
 * a re-parse when nothing that could end a line has arrived.
 *
 *     braid_http_header hdrs[64];
 *     braid_http_message m;
 *     int n = braid_http_parse_request(&m, hdrs, 64, buf, len, prev_len, NULL);
 *     if (n == BRAID_EHTTP_INCOMPLETE) { prev_len = len; read more; }
 *     else if (n < 0) reply(braid_http_error_status(n)), close;   // m.error says why
 *     else { head is buf[0..n); m.method, m.target, hdrs[...] point into buf;
 *            m.body says how the body is framed (m.content_length, chunked) }
 *
 * The parser is strict where laxness lets one message be read two ways
 * (request smuggling): both Content-Length and Transfer-Encoding, duplicate or
 * malformed Content-Length, a transfer coding other than a final "chunked",
 * Transfer-Encoding on HTTP/1.0, bare CR or bare LF line ends, obs-fold
 * continuation lines, whitespace before a header's colon, control characters
 * and non-token characters where a token belongs, a missing or repeated Host
 * on HTTP/1.1 — each is an error, and each error code maps to the status the
 * server answers with (braid_http_error_status): 400, 414, 431, 413 or 505.
 *
 * The chunked decoder works in place and incrementally: feed it whatever
 * arrived; it moves the payload bytes to the front of the buffer, keeps its
 * position in a small state struct, and says when the body has ended and how
 * many bytes it consumed (the rest is the next pipelined message).
 *
 * Threads: every function here is pure (no loop, no globals) and may run on
 * any thread.
 */
#ifndef BRAID_HTTP_H
#define BRAID_HTTP_H

#include <braid/common.h>
#include <braid/context.h>
#include <braid/protocol.h>
#include <sys/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- error codes: the http range is -4100 ... -4149 ---------------------------- */
#define BRAID_EHTTP_INCOMPLETE        (-4100) /* not an error: need more bytes */
#define BRAID_EHTTP_SYNTAX            (-4101) /* malformed message          -> 400 */
#define BRAID_EHTTP_FRAMING           (-4102) /* ambiguous/invalid body framing (smuggling shapes) -> 400 */
#define BRAID_EHTTP_CHUNK             (-4103) /* bad chunked encoding       -> 400 */
#define BRAID_EHTTP_URI_TOO_LONG      (-4104) /* request line over limit    -> 414 */
#define BRAID_EHTTP_HEADERS_TOO_LARGE (-4105) /* head bytes / header count  -> 431 */
#define BRAID_EHTTP_BODY_TOO_LARGE    (-4106) /* body over limit            -> 413 */
#define BRAID_EHTTP_VERSION           (-4107) /* not HTTP/1.x               -> 505 */
#define BRAID_EHTTP                   (-4014) /* HTTP protocol error (older, so in the shared range) */

/* The status a server answers a parse error with (400 for codes outside the
 * table). */
BRAID_API int braid_http_error_status(int code);
/* The standard reason phrase of a status code ("Not Found"), "" if unknown. */
BRAID_API const char *braid_http_status_reason(int status);

/* ---- limits --------------------------------------------------------------------- */
typedef struct braid_http_limits {
    size_t max_request_line;   /* bytes of the request line, CRLF excluded (8192) */
    size_t max_head;           /* bytes of the whole head incl. start line (16384) */
    size_t max_headers;        /* header fields (100; also capped by the caller's array) */
    uint64_t max_body;         /* body bytes, Content-Length or chunked (1 MiB) */
} braid_http_limits;

/* Defaults, used when a limits pointer is NULL or a field is 0. */
#define BRAID_HTTP_MAX_REQUEST_LINE 8192u
#define BRAID_HTTP_MAX_HEAD         16384u
#define BRAID_HTTP_MAX_HEADERS      100u
#define BRAID_HTTP_MAX_BODY         (1024u * 1024u)

/* ---- parsed messages ------------------------------------------------------------ */
typedef struct braid_http_header {
    const char *name;          /* points into the caller's buffer; not NUL-terminated */
    size_t name_len;
    const char *value;         /* surrounding whitespace trimmed */
    size_t value_len;
} braid_http_header;

typedef enum braid_http_body {
    BRAID_HTTP_BODY_NONE = 0,  /* no body (no framing headers; HEAD/1xx/204/304 responses) */
    BRAID_HTTP_BODY_LENGTH,    /* content_length bytes follow the head */
    BRAID_HTTP_BODY_CHUNKED,   /* chunked: feed it to braid_http_chunked_decode */
    BRAID_HTTP_BODY_EOF,       /* responses only: the body runs until the connection closes */
} braid_http_body;

typedef struct braid_http_message {
    /* requests */
    const char *method;        /* into the buffer */
    size_t method_len;
    const char *target;        /* request-target as sent (origin-form, absolute-form, ...) */
    size_t target_len;
    /* responses */
    int status;
    const char *reason;
    size_t reason_len;
    /* both */
    int minor_version;         /* HTTP/1.<minor_version> */
    braid_http_header *headers;/* the caller's array */
    size_t num_headers;
    size_t head_len;           /* bytes of the head, = the parser's return value */
    braid_http_body body;
    uint64_t content_length;   /* when body == BRAID_HTTP_BODY_LENGTH */
    bool keep_alive;           /* after Connection: close/keep-alive and the version */
    bool expect_continue;      /* request carries Expect: 100-continue */
    bool upgrade;              /* Connection: upgrade with an Upgrade header */
    const char *host;          /* the Host value (NULL if absent) */
    size_t host_len;
    const char *error;         /* on failure: which rule the input broke (static text) */
} braid_http_message;

/* Parse a request head in buf[0..len). hdrs/max_hdrs is the caller's array;
 * prev_len is the len of the previous call on this buffer (0 the first time).
 * Returns the head length (> 0, body starts at buf + return), or
 * BRAID_EHTTP_INCOMPLETE, or another BRAID_EHTTP_* error with m->error set.
 * Never reads outside buf[0..len). lim may be NULL (defaults). */
BRAID_API int braid_http_parse_request(braid_http_message *m, braid_http_header *hdrs,
                                       size_t max_hdrs, const char *buf, size_t len,
                                       size_t prev_len, const braid_http_limits *lim);

/* Parse a response head. head_request: the request was HEAD (no body whatever
 * the headers say). Same return convention. Responses without Content-Length
 * or chunked framing get BRAID_HTTP_BODY_EOF. */
BRAID_API int braid_http_parse_response(braid_http_message *m, braid_http_header *hdrs,
                                        size_t max_hdrs, const char *buf, size_t len,
                                        size_t prev_len, bool head_request,
                                        const braid_http_limits *lim);

/* Case-insensitive lookup of a header by name: the first match or NULL. */
BRAID_API const braid_http_header *braid_http_find_header(const braid_http_message *m,
                                                          const char *name);

/* Does a comma-separated header value contain token (case-insensitive)? */
BRAID_API bool braid_http_value_has_token(const char *value, size_t len, const char *token);

/* ---- chunked transfer coding ---------------------------------------------------- */
typedef struct braid_http_chunked {
    uint64_t remaining;        /* payload bytes left in the current chunk */
    uint64_t total;            /* payload bytes decoded so far */
    uint64_t max_body;         /* limit (0: BRAID_HTTP_MAX_BODY) */
    uint32_t line;             /* bytes of the current size/trailer line */
    uint32_t trailer;          /* trailer bytes so far */
    uint32_t max_trailer;      /* limit on trailer bytes (0: BRAID_HTTP_MAX_HEAD) */
    uint8_t state;             /* private */
    uint8_t digits;            /* private */
} braid_http_chunked;

/* Start decoding a body (max_body 0: the default limit). */
BRAID_API void braid_http_chunked_init(braid_http_chunked *d, uint64_t max_body);

/* Decode buf[0..len) in place. The payload decoded from this call is moved to
 * buf[0..*out_len). Returns BRAID_EHTTP_INCOMPLETE if all len bytes were
 * consumed and the body goes on; n >= 0 when the body (last chunk and
 * trailers) ended after n bytes of the input — buf[n..len) is untouched and
 * belongs to the next message; BRAID_EHTTP_CHUNK on malformed coding;
 * BRAID_EHTTP_BODY_TOO_LARGE past max_body. Trailer fields are validated and
 * discarded. *out_len is set on every return, errors included. Never reads
 * outside buf[0..len). */
BRAID_API ssize_t braid_http_chunked_decode(braid_http_chunked *d, char *buf, size_t len,
                                            size_t *out_len);

/* Has the decoder seen the whole body? */
BRAID_API bool braid_http_chunked_is_done(const braid_http_chunked *d);

/* Encoder. The head of one chunk of n > 0 bytes ("1a2b\r\n") into out
 * (>= BRAID_HTTP_CHUNK_HEAD_MAX bytes); returns its length. The chunk is then
 * the payload followed by "\r\n"; the body ends with BRAID_HTTP_CHUNKED_END. */
#define BRAID_HTTP_CHUNK_HEAD_MAX 18
#define BRAID_HTTP_CHUNKED_END "0\r\n\r\n"
BRAID_API size_t braid_http_chunk_head(char *out, size_t n);
/* Encode one whole chunk (head, payload, CRLF) into out; returns the bytes
 * written, or 0 if out_cap is too small (n + 20 always suffices) or n == 0. */
BRAID_API size_t braid_http_chunk_encode(char *out, size_t out_cap, const void *data, size_t n);

/* ---- dates (IMF-fixdate, RFC 9110 5.6.7) ----------------------------------------- */
#define BRAID_HTTP_DATE_LEN 29
/* "Sun, 06 Nov 1994 08:49:37 GMT" into out (>= 30 bytes, NUL-terminated). */
BRAID_API void braid_http_format_date(time_t t, char *out);
/* Parse an IMF-fixdate (also RFC 850 and asctime forms); -1 if malformed. */
BRAID_API time_t braid_http_parse_date(const char *s, size_t len);

/* ---- server -------------------------------------------------------------------------
 *
 * An HTTP/1.1 server on any stream transport (TCP, Unix, the memory double):
 *
 *     static braid_deferred *hello(braid_http_request *req, void *arg) {
 *         braid_http_request_respond(req, 200, "text/plain", "Hello, World!", 13);
 *         return NULL;                       // answered synchronously
 *     }
 *     braid_http_server *s;
 *     braid_http_server_new(loop, NULL, &s);
 *     braid_http_server_route(s, "GET", "/", 0, hello, NULL);
 *     braid_http_server_route(s, NULL, "/api/", BRAID_HTTP_ROUTE_PREFIX, api, ctx);   // any method
 *     braid_http_server_static(s, "/files/", "/srv/www");                        // sendfile, Range
 *     braid_deferred *d = braid_http_server_listen(s, "tcp:8080:interface=127.0.0.1");
 *
 * A handler answers in one of three ways:
 *  - synchronously: braid_http_request_respond (or _respond_response) before it
 *    returns, and returns NULL;
 *  - later: it returns a Deferred (the server takes the consumer reference)
 *    that fires with a braid_http_response * made by braid_http_response_new
 *    (owned through its dtor, braid_http_response_free). A failure becomes a
 *    500. If the connection goes away first the Deferred is cancelled;
 *  - streaming: braid_http_request_respond_start, then braid_http_request_write any number of
 *    times (now or later, e.g. from a producer registered with
 *    braid_http_request_register_producer, which the transport pauses and resumes at
 *    its watermarks), then braid_http_request_finish. Content-Length when the length
 *    is known, chunked otherwise (close-delimited for HTTP/1.0).
 *    braid_http_request_finish must always be called, also after the connection was
 *    lost (braid_http_request_write then returns BRAID_ESHUTDOWN, a registered
 *    producer got stop_producing and the braid_http_request_on_lost hook ran): it
 *    releases the request.
 * The request (all pointers in it) stays valid until the response is
 * complete — for a synchronous answer, until the handler returns; for a
 * Deferred, until it fired or was cancelled.
 *
 * A client that goes away while its answer is pending is noticed at once:
 * the connection keeps reading while an answer is pending (into a bounded
 * buffer, see pipelining below), so a reset or a FIN from the client ends
 * the connection, cancels the pending Deferred (which cancels the work it
 * waits on, e.g. a queued pool job) and runs the request's on_lost hook.
 * A FIN while an answer is pending counts as the client leaving (nginx's
 * default for proxied requests); a client that half-closes after sending
 * its requests and still wants the answers needs allow_half_close. A client
 * whose pipelined input filled the bound is noticed when its answer is
 * written (reading is then paused).
 *
 * Per connection: requests are answered one after another (pipelined
 * requests wait in the connection's buffer, so responses leave in request
 * order). What is buffered is parsed before more is read, and reading pauses
 * while more than limits.max_head bytes of unparsed input wait (behind a
 * pending answer, or while 64 KiB of answers wait for a client that does not
 * read): a connection holds at most the request being answered plus about
 * max_head + 64 KiB of input. Keep-alive by default (HTTP/1.1, or HTTP/1.0
 * with Connection: keep-alive). Bodies arrive whole (Content-Length or
 * chunked, decoded) up to limits.max_body; a request with Expect:
 * 100-continue gets "100 Continue" before its body is read. HEAD runs the
 * GET route and the server drops the body. The Date header is formatted
 * once per second. Absolute-form targets ("GET http://host/p HTTP/1.1",
 * RFC 9112 3.2.2) are routed by their path, and their authority is the
 * request's host.
 *
 * Routing: exact paths first, then the longest matching prefix route; a path
 * that matches routes of other methods only gets 405 with an Allow header,
 * no route at all 404. The path is matched as sent (before '?'), undecoded.
 *
 * Errors the parser finds are answered with their status (400, 413, 414,
 * 431, 505) and "Connection: close": no ambiguous message is ever passed on
 * (see the parser above). An answer that closes the connection while the
 * client may still be sending (errors, 408, an unread body) closes as
 * nginx's lingering close does: the write side is shut after the answer,
 * input is read and dropped for up to 5 s and 1 MiB, then the connection
 * closes — so the client reads the answer instead of a reset.
 * Timeouts on the loop's clock: a request head must be complete within
 * header_timeout after its first byte (slowloris), its body within
 * body_timeout after the head (both answered with 408 and closed), an idle
 * keep-alive connection is closed after idle_timeout, and a connection whose
 * answer makes no write progress for send_timeout (a client that does not
 * read, or reads a byte a minute) is aborted.
 *
 * Ownership: the caller owns the server and frees it with
 * braid_http_server_free after its listeners are closed; the server owns its
 * connections (braid_http_server_shutdown closes them). Loop thread only. */
typedef struct braid_http_server braid_http_server;

typedef struct braid_http_request {
    const char *method;        /* "GET"; all pointers are into the connection's buffer */
    size_t method_len;
    const char *target;        /* as sent: "/a/b?x=1" */
    size_t target_len;
    const char *path;          /* target up to '?' */
    size_t path_len;
    const char *query;         /* after '?', NULL if none */
    size_t query_len;
    size_t match_len;          /* bytes of path the route matched (prefix routes) */
    int minor_version;
    const braid_http_header *headers;
    size_t num_headers;
    const char *body;          /* the decoded body (NULL, 0 if none) */
    size_t body_len;
    const char *host;          /* the authority of an absolute-form target, else the
                                * Host header (NULL if none: HTTP/1.0) */
    size_t host_len;
    bool head;                 /* a HEAD request: the body of the answer is dropped */
    bool keep_alive;           /* the connection stays open after the answer */
    braid_http_server *server;
    braid_transport *transport;/* NULL once the connection is lost */
} braid_http_request;

/* A handler: answer synchronously and return NULL, or return a Deferred of a
 * braid_http_response * (see above). */
typedef braid_deferred *(*braid_http_handler_fn)(braid_http_request *req, void *arg);

/* A handler runs in the context current when the request is dispatched,
 * plus this key = the request and braid_log_request_id_key (<braid/log.h>)
 * = the request's number on this server (1, 2, …: what
 * braid_http_server_requests counts), so every log event of its work carries
 * it; so does everything it schedules (callbacks, timers, pool jobs, fibers). Read it anywhere below
 * the handler with braid_ctx_get_ptr(&braid_http_request_key). Borrowed,
 * like the handler's req argument: valid until the request is answered. If
 * the context cannot be made (no memory), the request gets a 500 and the
 * handler is not called. */
BRAID_API extern const braid_ctx_key braid_http_request_key;

typedef struct braid_http_server_options {
    uint64_t header_timeout;      /* 0 = 10 s; BRAID_FOREVER = never (as every timeout below) */
    uint64_t body_timeout;        /* 0 = 30 s */
    uint64_t idle_timeout;        /* 0 = 15 s */
    /* Abort a connection whose pending output made no progress for this long
     * (nginx's send_timeout): 0 = 60 s, BRAID_FOREVER = never. */
    uint64_t send_timeout;
    /* braid_http_server_shutdown's deadline: connections still open this long
     * after it are aborted. 0 = 10 s, BRAID_FOREVER = wait for every answer. */
    uint64_t shutdown_timeout;
    /* zero fields take the parser's defaults; limits.max_headers sizes each
     * connection's header array (100 by default, at most 65536) */
    braid_http_limits limits;
    const char *server_name;      /* Server header; NULL = "braid", "" = none */
    /* A FIN from the client while its answer is pending: false (default) =
     * the client left, cancel the answer and close; true = a half-close,
     * answer anyway (then close). */
    bool allow_half_close;
} braid_http_server_options;

BRAID_API int braid_http_server_new(braid_loop *loop, const braid_http_server_options *o,
                                    braid_http_server **out);
/* Close every connection and refuse new ones (they are closed at once), with
 * a deadline of shutdown_timeout (10 s) on the loop clock. Escalation:
 * idle connections close now (flushing what they still owe); busy ones
 * finish the answer in progress and then close (no keep-alive); every close
 * is bounded by the deadline (braid_transport_close); when it passes,
 * what is still open is aborted: pending Deferreds cancelled, on_lost hooks
 * run, streams stopped, unsent bytes dropped (TCP peers get RST). Run the
 * loop until braid_http_server_connections is 0, then free. */
BRAID_API void braid_http_server_shutdown(braid_http_server *s);
/* Free; BRAID_EBUSY while connections are open (shut down and run the loop first). */
BRAID_API int braid_http_server_free(braid_http_server *s);
/* The factory to hand to a listener (braid_endpoint_listen or _listen_typed). */
BRAID_API braid_factory *braid_http_server_factory(braid_http_server *s);
/* braid_endpoint_listen(loop, endpoint, factory): a Deferred of the braid_listener *
 * (yours to close). "tcp:8080:reuseport=1" lets N processes share the port. */
BRAID_API braid_deferred *braid_http_server_listen(braid_http_server *s, const char *endpoint);
BRAID_API size_t braid_http_server_connections(const braid_http_server *s);
BRAID_API uint64_t braid_http_server_requests(const braid_http_server *s);

/* Routes. method NULL = any method; flags BRAID_HTTP_ROUTE_PREFIX: path is a
 * prefix ("/api/" matches "/api/x"). BRAID_EEXIST for the same method and
 * path twice, BRAID_EINVAL for a path not starting with '/'. */
#define BRAID_HTTP_ROUTE_PREFIX 1u
BRAID_API int braid_http_server_route(braid_http_server *s, const char *method, const char *path,
                               unsigned flags, braid_http_handler_fn h, void *arg);
/* Serve files under root_dir at prefix (GET and HEAD): sendfile(2) on
 * socket transports, single byte ranges (206/416), Last-Modified and
 * If-Modified-Since (304). ".." and "." segments, encoded '/', '\\' or NUL,
 * and symlinks leading out of root_dir are refused (404). A directory serves
 * its index.html. */
BRAID_API int braid_http_server_static(braid_http_server *s, const char *prefix, const char *root_dir);

/* Serve the server loop's introspection (<braid/introspect.h>): GET
 * path + ".json" answers the JSON document, GET path a self-contained HTML
 * page (no external assets) that shows it, refreshed every 2 s, with the
 * "stages" and "components" sections drawn as an SVG graph. Both answer
 * with Cache-Control: no-store. Guard it as you would any admin page (bind
 * it to a loopback listener, or check the request before): it shows peers'
 * addresses. BRAID_EINVAL, BRAID_EEXIST, BRAID_ENOMEM (the JSON route may
 * then be in place without the page). */
BRAID_API int braid_http_introspection_route(braid_http_server *s, const char *path);

/* ---- answering ---- */
/* Add a response header for the answer of req (before respond/respond_start).
 * BRAID_EINVAL if name or value hold CR, LF or NUL (header injection) or name
 * is not a token; BRAID_EMSGSIZE past 1 KiB of added headers. */
BRAID_API int braid_http_request_add_header(braid_http_request *req, const char *name, const char *value);
/* The whole answer at once (body copied; NULL content_type = no Content-Type).
 * BRAID_EALREADY_CALLED if req was already answered. */
BRAID_API int braid_http_request_respond(braid_http_request *req, int status, const char *content_type,
                                 const void *body, size_t len);
/* Answer with `length` bytes of the file fd from `offset` (Content-Length:
 * length; no body for HEAD). Takes fd: it is closed once the body is out,
 * when the connection is lost, or at once on an error. The body leaves by
 * sendfile(2) on socket transports, read through the write buffer on others
 * (TLS, memory); a file that turns out shorter aborts the connection (the
 * framing cannot be kept). braid_http_server_static answers this way.
 * BRAID_EALREADY_CALLED if req was already answered, BRAID_EINVAL for a bad
 * status, fd or range. */
BRAID_API int braid_http_request_respond_file(braid_http_request *req, int status, const char *content_type,
                                      int fd, uint64_t offset, uint64_t length);
/* Start a streamed answer: content_length >= 0, or -1 for chunked. */
BRAID_API int braid_http_request_respond_start(braid_http_request *req, int status,
                                       const char *content_type, int64_t content_length);
BRAID_API int braid_http_request_write(braid_http_request *req, const void *buf, size_t len);
/* The transport's backpressure for a streamed body (unregistered at finish). */
BRAID_API int braid_http_request_register_producer(braid_http_request *req, braid_producer *p,
                                           bool streaming);
/* End the streamed answer and release req. A Content-Length answer that got
 * fewer bytes closes the connection (the peer cannot mistake the framing).
 * After the connection was lost it only releases req (returns
 * BRAID_ESHUTDOWN); req must not be used after it. */
BRAID_API int braid_http_request_finish(braid_http_request *req);
/* Be told if the connection of req is lost before req's answer is complete
 * (the client hung up or reset, send_timeout, an abort): fn runs once, from
 * the loop, before the pending Deferred (if any) is cancelled. req stays
 * valid in fn; a streamed answer still ends with braid_http_request_finish (from fn
 * or later). Set it from the handler or later while the answer is pending
 * (fn NULL removes it); it is cleared when the answer completes. 0,
 * BRAID_ESHUTDOWN if the connection is already lost (fn is not called),
 * BRAID_EINVAL when req has no answer pending. */
typedef void (*braid_http_request_lost_cb)(braid_http_request *req, void *arg);
BRAID_API int braid_http_request_on_lost(braid_http_request *req, braid_http_request_lost_cb fn, void *arg);

/* A response value for Deferreds. */
typedef struct braid_http_response {
    int status;
    char *content_type;        /* owned; NULL = none */
    char *headers;             /* owned: added header lines "Name: value\r\n"... */
    size_t headers_len;
    char *body;                /* owned */
    size_t body_len;
} braid_http_response;
/* body and content_type are copied. 0 and *out (yours: braid_http_response_free,
 * or hand it to a Deferred with that dtor), or BRAID_ENOMEM. */
BRAID_API int braid_http_response_new(int status, const char *content_type, const void *body,
                                      size_t len, braid_http_response **out);
BRAID_API int braid_http_response_add_header(braid_http_response *r, const char *name,
                                             const char *value);
BRAID_API void braid_http_response_free(void *r);
/* Answer req with r (copied; r stays the caller's). */
BRAID_API int braid_http_request_respond_response(braid_http_request *req, const braid_http_response *r);

/* ---- client ---- */
/* An HTTP/1.1 client: a connection pool per (scheme, host, port) with
 * keep-alive, Content-Length / chunked / close-delimited bodies both ways,
 * timeouts on the loop's clock, redirects (off unless asked for), and a
 * Deferred of the response. https:// goes over braid's TLS (<braid/tls.h>)
 * with certificate and host-name verification on.
 *
 *     braid_http_client *c;
 *     braid_http_client_new(loop, NULL, &c);
 *     braid_deferred *d = braid_http_client_request(c, &(braid_http_client_req){
 *         .method = "GET", .url = "http://127.0.0.1:8080/hello" });
 *     braid_deferred_add(d, got_response, failed, arg);
 *     // got_response: r.value is a braid_http_client_response * with the whole body
 *     //   (buffered up to max_body), owned by the result: keep it (and free
 *     //   it with braid_http_client_response_free) or let the result drop it.
 *     ...
 *     braid_http_client_free(c);
 *
 * Bodies. By default the Deferred fires once the whole body has arrived
 * (resp->body, resp->body_len; NUL-terminated for convenience); a body over
 * max_body fails the request with BRAID_EHTTP_BODY_TOO_LARGE. With on_body
 * set the body streams instead: the Deferred fires at the end of the head
 * with a response *borrowed* from the client (valid until on_end returns),
 * then on_body is called with each piece as it arrives and on_end once with
 * 0 (complete) or the error. braid_http_client_response_pause/resume stop and
 * restart reading the connection (backpressure: the server's writes stall);
 * braid_http_client_response_abort ends the body early (the connection is closed,
 * on_end is not called).
 *
 * The pool. A connection whose response ended cleanly (framed body read to
 * its end, keep-alive on both sides, no stray bytes) goes back to its
 * origin's idle list; the next request to that origin reuses the most
 * recently used one. At most max_idle_per_host idle connections per origin
 * are kept (the surplus is closed) and each for idle_timeout. With
 * max_per_host set, requests beyond that many connections to one origin wait
 * in order for one (the wait counts toward the connect timeout). An idle
 * connection the server closes, or that receives unsolicited bytes, leaves the
 * pool at once. If a reused connection dies before any byte of the response
 * arrived (the server closed it as we reused it), an idempotent request
 * (GET, HEAD, PUT, DELETE, OPTIONS, TRACE) whose body is in memory is
 * retried once on a fresh connection. A response that fails to parse, a
 * timeout, a cancel or an abort closes its connection: it is never reused.
 *
 * Timeouts (ns, loop clock; 0: the default, BRAID_FOREVER: none), each
 * failing the request with BRAID_ETIMEDOUT and a message naming which:
 * connect (until the connection is made; TLS handshakes count toward the
 * header timeout), headers (from the moment the request is handed to the
 * connection until the whole response head has arrived), body (the longest
 * silence between two pieces of the body; not counted while paused).
 *
 * Redirects are returned as responses unless max_redirects > 0: then 301,
 * 302, 303, 307 and 308 with a Location are followed up to that many times
 * (303, and 301/302 after a POST, become a bodiless GET; 307/308 resend the
 * method and body); the discarded responses' bodies are read so their
 * connections are reused; Authorization and Cookie headers are not sent to
 * another origin. Past the limit: BRAID_EHTTP ("too many redirects"). A
 * Location with a scheme other than http or https (ftp:, file:, data: ...)
 * fails the request with BRAID_EHTTP ("redirect to an unsupported scheme");
 * an empty Location is no target: that 3xx is returned as the response.
 *
 * Cancelling the Deferred aborts the request (the connect attempt, or the
 * connection it runs on) and fails it with BRAID_ECANCELED.
 *
 * Errors: BRAID_EINVAL (bad URL, method or header), the parser's
 * BRAID_EHTTP_* codes for bad responses, BRAID_EHTTP for an unexpected 101
 * and too many redirects, BRAID_ECONNECTION_LOST for a body cut short (bytes
 * after a response only keep its connection out of the pool), connection
 * and TLS codes as they come (a TLS failure's message starts with TLS's own
 * reason, e.g. the certificate verification error).
 *
 * Ownership: the request struct and everything it points to are copied; the
 * client owns its connections; braid_http_client_free fails the requests in
 * flight with BRAID_ESHUTDOWN, closes every connection and frees the client
 * once the last connection is gone (run the loop an iteration to let that
 * happen before braid_loop_free). Loop thread only.
 */
typedef struct braid_http_client braid_http_client;
typedef struct braid_http_client_response braid_http_client_response;
struct braid_tls_ctx;
struct braid_factory;
struct braid_deferred;
struct braid_loop;

typedef struct braid_http_client_options {
    size_t max_idle_per_host;   /* idle keep-alive connections kept per origin (4) */
    size_t max_per_host;        /* connections per origin, idle ones included (0: no
                                 * limit); requests beyond it wait, in order, for one */
    /* 0 takes the default in parentheses; BRAID_FOREVER: no limit */
    uint64_t idle_timeout;      /* how long an idle connection is kept (60 s) */
    uint64_t connect_timeout;   /* (30 s) */
    uint64_t header_timeout;    /* (60 s) */
    uint64_t body_timeout;      /* silence while reading a body (60 s) */
    uint64_t max_body;          /* buffered bodies (8 MiB); per request overridable */
    size_t max_head;            /* response head bytes (BRAID_HTTP_MAX_HEAD) */
    int max_redirects;          /* default for requests (0: redirects not followed) */
    /* https: the TLS client context (a reference is taken). NULL: one made on
     * first use that verifies against the system CA store. */
    struct braid_tls_ctx *tls_ctx;
    /* Tests and custom transports: open a connection to host:port, returning
     * a Deferred of the connected protocol built by f (as
     * braid_endpoint_connect does). NULL: TCP. For https the client starts TLS on it itself. */
    struct braid_deferred *(*connect)(void *arg, struct braid_loop *loop, const char *host, int port,
                                      bool https, struct braid_factory *f);
    void *connect_arg;
} braid_http_client_options;

BRAID_API int braid_http_client_new(struct braid_loop *loop, const braid_http_client_options *o,
                                    braid_http_client **out);
BRAID_API void braid_http_client_free(braid_http_client *c);

typedef void (*braid_http_client_body_cb)(braid_http_client_response *r, const void *buf, size_t len, void *arg);
/* Streamed uploads: the request itself, as the source of its body sees it. */
typedef struct braid_http_upload braid_http_upload;
typedef void (*braid_http_upload_cb)(braid_http_upload *u, void *arg);
typedef void (*braid_http_client_end_cb)(braid_http_client_response *r, int code, void *arg);

typedef struct braid_http_client_req {
    const char *method;         /* NULL: "GET" */
    const char *url;            /* http://host[:port]/path?query or https://... */
    const braid_http_header *headers;  /* extra fields (Host is added unless given;
                                        * Content-Length/Transfer-Encoding are the client's) */
    size_t num_headers;
    const void *body;           /* request body (copied) */
    size_t body_len;
    bool chunked;               /* send the body with Transfer-Encoding: chunked */
    /* A streamed request body instead of body: called once the head is on
     * the connection and again each time its write buffer drains below the
     * low watermark (a pull producer: backpressure from the server's reading).
     * Write with braid_http_upload_write whenever data is ready (here or
     * later), finish with braid_http_upload_end. Sent chunked, or with
     * Content-Length: body_len if body_len > 0 (then exactly that many bytes).
     * Streamed requests are never retried and 307/308 are not followed; the
     * header timeout starts when the upload ends. */
    braid_http_upload_cb body_source;
    uint64_t max_body;          /* buffered response body limit (0: the client's) */
    int max_redirects;          /* 0: the client's; < 0: never follow */
    uint64_t connect_timeout, header_timeout, body_timeout;   /* 0: the client's; BRAID_FOREVER: none */
    /* Streaming response bodies (see above). */
    braid_http_client_body_cb on_body;
    braid_http_client_end_cb on_end;
    void *arg;
} braid_http_client_req;

struct braid_http_client_response {
    int status;
    int minor_version;          /* HTTP/1.<minor_version> */
    const char *reason;         /* NUL-terminated */
    braid_http_header *headers; /* names and values NUL-terminated, owned by the response */
    size_t num_headers;
    char *body;                 /* buffered mode: the body (NUL-terminated); else NULL */
    size_t body_len;
    const char *url;            /* the URL that answered (after redirects) */
    int redirects;              /* redirects followed */
    bool reused;                /* answered on a pooled (reused) connection */
    void *priv;                 /* private */
};

/* A Deferred of braid_http_client_response * (see above). NULL only when out of
 * memory; a bad request gives a failed Deferred (BRAID_EINVAL). */
BRAID_API struct braid_deferred *braid_http_client_request(braid_http_client *c,
                                                           const braid_http_client_req *req);
/* Streamed uploads (u is valid until the request's Deferred has fired, or in
 * streaming mode until on_end). write: 0, BRAID_ESHUTDOWN once the request
 * ended or the body was ended, BRAID_EINVAL past the announced length, or the
 * transport's error. end: 0, or BRAID_EINVAL when fewer bytes than the
 * announced length were written (the request then fails with it). */
BRAID_API int braid_http_upload_write(braid_http_upload *u, const void *buf, size_t len);
BRAID_API int braid_http_upload_end(braid_http_upload *u);

/* The value of the first header called name (case-insensitive), or NULL. */
BRAID_API const char *braid_http_client_response_header(const braid_http_client_response *r, const char *name);
/* Free a buffered-mode response (the Deferred result's dtor). */
BRAID_API void braid_http_client_response_free(braid_http_client_response *r);
/* Streaming mode only (no-ops otherwise or once the body has ended). */
BRAID_API void braid_http_client_response_pause(braid_http_client_response *r);
BRAID_API void braid_http_client_response_resume(braid_http_client_response *r);
BRAID_API void braid_http_client_response_abort(braid_http_client_response *r);

struct braid_http_client_stats {
    uint64_t connections;       /* connections opened (made) */
    uint64_t reused;            /* requests that ran on a pooled connection */
    uint64_t retried;           /* requests retried after a stale pooled connection */
    size_t idle;                /* idle connections now, all origins */
    size_t active;              /* connections alive now (idle included) */
    size_t waiting;             /* requests waiting for a connection (max_per_host) */
};
/* A snapshot of the client's counters (like stat(2): the struct and the
 * function share the name). */
BRAID_API void braid_http_client_stats(const braid_http_client *c, struct braid_http_client_stats *out);

#ifdef __cplusplus
}
#endif
#endif
