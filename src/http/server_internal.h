/* Internal shape of the HTTP server (private to server.c). */
#ifndef BRAID_HTTP_SERVER_INTERNAL_H
#define BRAID_HTTP_SERVER_INTERNAL_H

#include "loop/loop_module.h"
#include <braid/endpoint.h>
#include <braid/http.h>
#include <braid/stream.h>
#include <braid/time.h>
#include "http/http_internal.h"
#include "net/transport_ext.h"

#define HS_MAX_HEADERS_CAP 65536u  /* limits.max_headers is clamped to this */
#define HS_XHDR_MAX 1024           /* added response header bytes */
#define HS_LINGER_NS   BRAID_SECONDS(5)    /* lingering close: how long input is drained */
#define HS_LINGER_BYTES (1024u * 1024)     /* ... and how much of it */

typedef struct hs_route {
    char *method;                  /* NULL = any */
    char *path;
    size_t path_len, method_len;
    unsigned flags;
    braid_http_handler_fn h;
    void *arg;
    void (*arg_free)(void *arg);   /* run when the server is freed */
} hs_route;

typedef struct hs_conn hs_conn;

struct braid_http_server {
    braid_loop *loop;
    braid_factory factory;
    uint64_t header_timeout, body_timeout, idle_timeout;
    uint64_t send_timeout;         /* BRAID_FOREVER: none */
    uint64_t shutdown_timeout;     /* BRAID_FOREVER: none */
    uint64_t shutdown_deadline;    /* absolute, loop clock; 0 = none */
    braid_timer shutdown_timer;
    bool shutdown_timer_on;
    bool allow_half_close;
    braid_http_limits limits;
    char *server_line;             /* "Server: braid\r\n" or "" */
    size_t server_line_len;
    hs_route *routes;
    size_t nroutes, caproutes;
    hs_conn *conns;                /* intrusive list of live connections */
    size_t nconns;
    uint64_t requests;
    bool shutting_down;
    /* Date header cache: refreshed when the loop clock passes date_next. */
    uint64_t date_next;
    /* a fresh clock reading, taken at most once per loop iteration (hs_now) */
    uint64_t now, now_iter;
    char date_line[6 + BRAID_HTTP_DATE_LEN + 3];   /* "Date: ...\r\n" + NUL */
};

/* Connection states. */
enum {
    HS_READING = 0,    /* parsing requests */
    HS_BODY,           /* head parsed, waiting for the body */
    HS_HANDLER,        /* inside the handler call */
    HS_DEFERRED,       /* the handler returned a Deferred, not fired yet */
    HS_STREAMING,      /* respond_start done, finish not yet */
    HS_FILE,           /* sending a static file */
    HS_CLOSING,        /* answered with close: ignore input (or drain it: lingering) */
};

/* Timer kinds: what the connection's timer enforces (the write-progress
 * timer, wtimer, is separate: it runs whatever the state). */
enum { HS_T_NONE = 0, HS_T_HEADER, HS_T_BODY, HS_T_IDLE, HS_T_LINGER };

struct hs_conn {
    braid_protocol base;
    braid_http_server *srv;
    hs_conn *prev, *next;
    braid_timer timer;
    uint64_t deadline;
    uint8_t tkind;
    uint8_t state;
    bool made;                     /* connection_made ran (listed in srv->conns) */
    bool dead;                     /* connection_lost ran */
    bool peer_eof;                 /* the peer shut its write side */
    bool lingering;                /* HS_CLOSING: write side shut, input drained and dropped */
    bool linger_next;              /* close the answer in progress by lingering */
    bool tail_input;               /* input follows the request in the lent buffer */
    bool answered;                 /* the current request got its answer head */
    bool keep_alive;               /* keep the connection after this answer */
    bool chunked_out;              /* the streamed answer is chunked */
    bool continue_sent;
    bool drain_wait;               /* paused until the write buffer drains */
    bool soon_queued;
    bool reading_paused;
    bool lent;                     /* the current request lives in the transport's lent buffer */
    /* input buffer (allocated when a request spans reads or waits) */
    char *buf;
    size_t pos, len, cap;          /* unprocessed bytes are buf[pos..len) */
    size_t prev_len;               /* parser hint for the head at pos */
    /* the request at pos */
    size_t head_len, cur_len;      /* head bytes; head + raw body once complete */
    uint64_t content_length;
    uint8_t body_kind;
    size_t body_len, raw;          /* chunked: decoded bytes, offset of undecoded input */
    braid_http_chunked chunked;
    const hs_route *route;
    int route_status;              /* 0, 400, 404 or 405 */
    braid_http_request req;
    braid_http_request_lost_cb lost_fn;    /* braid_http_request_on_lost */
    void *lost_arg;
    /* answer in progress */
    int64_t out_remaining;         /* Content-Length answers: bytes still due; -1 otherwise */
    braid_deferred *pending;
    bool user_producer;
    unsigned holds;                /* references beyond the transport: pending answer */
    char xhdr[HS_XHDR_MAX];
    size_t xhdr_len;
    /* static file answer */
    int file_fd;
    off_t file_off;
    uint64_t file_left;
    braid_producer prod;           /* file sender / drain waiter (pull producer) */
    braid_soon soon;
    /* write progress (send_timeout) */
    braid_timer wtimer;
    uint64_t wmark;                /* transport's sent_total when wtimer was armed */
    size_t linger_bytes;           /* input dropped while lingering */
    braid_http_header hdrs[];      /* limits.max_headers slots */
};


#endif
