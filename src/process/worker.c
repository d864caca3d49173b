/* Worker-process pools, the worker's side: serve the parent's calls on
 * the pipes at the fds BRAID_WORKER names ("3,4": calls in, frames out;
 * "3": one socket both ways), until the connection closes or says STOP. */
#include "process/process_internal.h"
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <sys/stat.h>

typedef struct wconn {
    braid_loop *loop;
    braid_transport *t;            /* NULL once the connection is gone */
    int fd;                        /* t's socket (log events may go straight to it) */
    const braid_worker_command *cmds;
    size_t ncmds;
    size_t outstanding;            /* calls handed to handlers, not yet answered */
    braid__slot_page slots;        /* shared with the parent (p NULL: none) */
    uint64_t seq;                  /* calls received: the next one's number */
    size_t max_frame;              /* the pool's limit, either way */
    bool stopping;
    int result;
    /* Log events to the parent: an observer of the loop's logger; the
     * connection's producer pauses them (drops, counted) while its write
     * buffer is above the high watermark. */
    braid_log_observer *obs;
    braid_producer prod;
    bool log_paused, in_log;
    uint64_t log_dropped;          /* not yet reported to the parent */
    uint64_t logger_dropped;       /* the logger's own count (threads), as last seen */
} wconn;

typedef struct wside {
    braid_framing_protocol fp;
    wconn *c;
} wside;

struct braid_worker_call {
    wconn *conn;
    uint32_t id;
    braid_box *box;                /* a box call's, decoded; NULL for bytes */
    char command[256];
};

bool braid_worker_is_child(void) { return getenv("BRAID_WORKER") != NULL; }
const char *braid_worker_role(void) { return getenv("BRAID_WORKER_ROLE"); }

static void maybe_finish(wconn *c) {
    if (c->stopping && c->outstanding == 0 && c->t) braid_transport_close(c->t, BRAID_FOREVER);
}

static int send_msg(braid_worker_call *call, const braid__rpc_msg *m) {
    wconn *c = call->conn;
    int rc = c->t ? braid__rpc_write(c->t, m, c->max_frame) : BRAID_ESHUTDOWN;
    if (rc == BRAID_EMSGSIZE && (m->type == BRAID__RPC_REPLY || m->type == BRAID__RPC_REPLY_BOX)) {
        /* Too large for the pool's frames: the caller gets an error instead. */
        braid__rpc_msg f = { .type = BRAID__RPC_FAIL, .id = m->id, .code = BRAID_EMSGSIZE,
                             .payload = "reply larger than the pool's frame limit", .len = 40 };
        int frc = braid__rpc_write(c->t, &f, c->max_frame);
        if (frc < 0) rc = frc;   /* else: the handler learns its reply did not go */
    }
    c->outstanding--;
    braid_box_free(call->box);
    braid_free(call);
    maybe_finish(c);
    return rc;
}

int braid_worker_call_reply(braid_worker_call *call, const void *payload, size_t len) {
    braid__rpc_msg m = { .type = BRAID__RPC_REPLY, .id = call->id, .payload = payload, .len = len };
    return send_msg(call, &m);
}

int braid_worker_call_reply_box(braid_worker_call *call, const braid_box *b) {
    size_t n = braid_box_encoded_size(b);
    unsigned char small[512];
    unsigned char *buf = n <= sizeof small ? small : braid_malloc(n);
    if (!buf) return braid_worker_call_fail(call, BRAID_ENOMEM, "out of memory encoding the reply box");
    (void)braid_box_encode(b, buf, n, NULL);
    braid__rpc_msg m = { .type = BRAID__RPC_REPLY_BOX, .id = call->id, .payload = buf, .len = n };
    int rc = send_msg(call, &m);
    if (buf != small) braid_free(buf);
    return rc;
}

const braid_box *braid_worker_call_box(const braid_worker_call *call) { return call->box; }

int braid_worker_call_fail(braid_worker_call *call, int code, const char *message) {
    braid__rpc_msg m = { .type = BRAID__RPC_FAIL, .id = call->id, .code = code < 0 ? code : BRAID_EWORKER_REMOTE,
                         .payload = message ? message : "", .len = message ? strlen(message) : 0 };
    return send_msg(call, &m);
}

braid_loop *braid_worker_call_loop(const braid_worker_call *call) { return call->conn->loop; }
const char *braid_worker_call_command(const braid_worker_call *call) { return call->command; }

static int on_frame(void *ctx, const void *frame, size_t len) {
    wside *ws = ctx;
    wconn *c = ws->c;
    braid__rpc_msg m;
    if (braid__rpc_parse(frame, len, &m) < 0) return BRAID_EPROTO_INPUT;
    switch (m.type) {
    case BRAID__RPC_CALL:
    case BRAID__RPC_CALL_EX: {
        /* Taken now, or dropped: the parent gave up on it (its timeout, a
         * cancel) while it waited here; it kept its worker. */
        uint64_t k = c->seq++;
        if (c->slots.p && !braid__slots_take(&c->slots, k)) {
            braid__rpc_msg f = { .type = BRAID__RPC_FAIL, .id = m.id, .code = BRAID_ECANCELED,
                                 .payload = "cancelled before it started", .len = 27 };
            (void)braid__rpc_write(c->t, &f, SIZE_MAX);
            return 0;
        }
        braid_worker_call *call = braid_malloc(sizeof *call);
        if (!call) {
            braid__rpc_msg f = { .type = BRAID__RPC_FAIL, .id = m.id, .code = BRAID_ENOMEM,
                                 .payload = "out of memory in the worker", .len = 27 };
            (void)braid__rpc_write(c->t, &f, SIZE_MAX);
            return 0;
        }
        call->conn = c;
        call->id = m.id;
        call->box = NULL;
        memcpy(call->command, m.command, m.command_len);
        call->command[m.command_len] = 0;
        c->outstanding++;
        if (m.flags & BRAID__RPC_F_BOX) {
            /* A bad box from the parent is an error for this call only. */
            int rc = braid_box_decode(m.payload, m.len, &call->box);
            if (rc < 0) {
                (void)braid_worker_call_fail(call, rc, rc == BRAID_EBOX ? "malformed box in the call"
                                                                       : "out of memory decoding the call's box");
                return c->t ? 0 : 1;
            }
        }
        for (size_t i = 0; i < c->ncmds; i++) {
            if (!strcmp(c->cmds[i].name, call->command)) {
                /* The caller's request id, for what the handler logs and schedules. */
                braid_ctx_scope scope;
                bool scoped = m.request_id &&
                              braid_ctx_push_u64(&scope, &braid_log_request_id_key, m.request_id) == 0;
                c->cmds[i].fn(call, m.payload, m.len, c->cmds[i].arg);
                if (scoped) braid_ctx_pop(&scope);
                return c->t ? 0 : 1;
            }
        }
        char msg[300];
        snprintf(msg, sizeof msg, "no command '%s' in this worker", call->command);
        (void)braid_worker_call_fail(call, BRAID_EWORKER_COMMAND, msg);
        return 0;
    }
    case BRAID__RPC_STOP:
        c->stopping = true;
        maybe_finish(c);
        return 0;
    case BRAID__RPC_CANCEL:
        return 0;   /* advisory: the parent drops the reply */
    default:
        return BRAID_EPROTO_INPUT;
    }
}

/* ---- log events to the parent ------------------------------------------------------------- */
static void send_log(wconn *c, const braid_log_event *ev) {
    unsigned char fields[8192];
    size_t flen = braid__box_encode_fields(ev->fields, ev->nfields, fields, sizeof fields);
    size_t nl = ev->ns ? strlen(ev->ns) : 0;
    size_t tl = strlen(ev->msg);
    uint32_t dropped = c->log_dropped > UINT32_MAX ? UINT32_MAX : (uint32_t)c->log_dropped;
    braid__rpc_msg m = { .type = BRAID__RPC_LOG, .level = (unsigned)ev->level, .time_ns = ev->time_ns,
                         .request_id = ev->request_id, .dropped = dropped, .ns = ev->ns,
                         .ns_len = nl > 255 ? 255 : nl, .text = ev->msg, .text_len = tl > 65535 ? 65535 : tl,
                         .payload = fields, .len = flen };
    c->in_log = true;
    /* Now, not when the handler returns: it may block or crash next. */
    int rc = braid__rpc_write_log_now(c->t, c->fd, &m, c->max_frame);
    c->in_log = false;
    if (rc < 0) c->log_dropped++;
    else c->log_dropped -= dropped;
}

static void log_observe(const braid_log_event *ev, void *arg) {
    wconn *c = arg;
    braid_logger_stats ls;
    braid_logger_stats_get(braid_loop_logger(c->loop), &ls);
    c->log_dropped += ls.dropped - c->logger_dropped;   /* lost between threads and the loop */
    c->logger_dropped = ls.dropped;
    if (!c->t || c->log_paused || c->in_log) {
        c->log_dropped++;
        return;
    }
    send_log(c, ev);
}

static void log_pause(braid_producer *p) { ((wconn *)p->arg)->log_paused = true; }
static void log_stop(braid_producer *p) { ((wconn *)p->arg)->log_paused = true; }
/* The parent caught up: say how many events were lost meanwhile. */
static void log_resume(braid_producer *p) {
    wconn *c = p->arg;
    c->log_paused = false;
    if (!c->log_dropped || !c->t || c->in_log) return;
    char msg[128];
    snprintf(msg, sizeof msg, "%llu log events dropped: the connection to the parent was full",
             (unsigned long long)c->log_dropped);
    braid_log_event ev = { .time_ns = 0, .level = BRAID_LOG_WARN, .ns = "braid.process", .msg = msg };
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ev.time_ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    send_log(c, &ev);
}

static void ws_made(braid_protocol *p) {
    wside *ws = (wside *)p;
    ws->c->t = p->transport;
    braid_framer_init_u32(&ws->fp.framer, ws->c->max_frame, on_frame, ws);
    (void)braid_transport_set_limits(p->transport, 0, 0, braid__rpc_buffer_cap(ws->c->max_frame, 8));
    wconn *c = ws->c;
    /* READY's call id: what this worker does beyond version 1's frames. */
    braid__rpc_msg m = { .type = BRAID__RPC_READY, .id = c->slots.p ? BRAID__RPC_READY_SLOTS : 0 };
    (void)braid__rpc_write(p->transport, &m, SIZE_MAX);
    c->prod = (braid_producer){ .pause_producing = log_pause, .resume_producing = log_resume,
                                .stop_producing = log_stop, .arg = c };
    (void)braid_transport_register_producer(p->transport, &c->prod, true);
}

static void ws_lost(braid_protocol *p, const braid_failure *reason) {
    wside *ws = (wside *)p;
    ws->c->t = NULL;
    ws->c->log_paused = true;
    if (reason && reason->code == BRAID_EPROTO_INPUT) ws->c->result = BRAID_EWORKER_PROTOCOL;
    braid_loop_stop(ws->c->loop);
}

static void ws_destroy(braid_protocol *p) {
    braid_framing_protocol_destroy(p);
    braid_free(p);
}

static const braid_protocol_ops ws_ops = {
    .connection_made = ws_made,
    .data_received = braid_framing_protocol_data_received,
    .connection_lost = ws_lost,
    .destroy = ws_destroy,
};

/* BRAID_WORKER's value: the decimal number of an open AF_UNIX stream
 * socket, 3 or above (the pool passes 3). Anything else is refused, and
 * fds 0-2 are never taken. */
/* A descriptor number in BRAID_WORKER: decimal, at least 3 (0-2 are never
 * taken), open. */
static int worker_num(const char *p, char **end) {
    errno = 0;
    long v = strtol(p, end, 10);
    if (errno || *end == p || v < 3 || v > INT_MAX) return BRAID_EINVAL;
    return (int)v;
}

static bool is_unix_stream(int fd) {
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISSOCK(st.st_mode)) return false;
    int type = 0;
    socklen_t tl = sizeof type;
    struct sockaddr_storage sa;
    socklen_t sl = sizeof sa;
    return getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) == 0 && type == SOCK_STREAM &&
           getsockname(fd, (struct sockaddr *)&sa, &sl) == 0 && sa.ss_family == AF_UNIX;
}

static bool is_fifo(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 && S_ISFIFO(st.st_mode);
}

/* BRAID_WORKER is "R,W" (calls come in on the pipe R, frames go out on the
 * pipe W) or "S" (one AF_UNIX stream socket both ways). BRAID_EINVAL for
 * anything else, touching no descriptor. */
static int worker_fds(const char *e, int *rfd, int *wfd) {
    char *end;
    int r = worker_num(e, &end);
    if (r < 0) return r;
    if (!*end) {
        if (!is_unix_stream(r)) return BRAID_EINVAL;
        *rfd = r;
        *wfd = -1;
        return 0;
    }
    if (*end != ',') return BRAID_EINVAL;
    const char *p = end + 1;
    int w = worker_num(p, &end);
    if (w < 0 || *end || w == r) return BRAID_EINVAL;
    if (!(is_fifo(r) || is_unix_stream(r)) || !(is_fifo(w) || is_unix_stream(w))) return BRAID_EINVAL;
    *rfd = r;
    *wfd = w;
    return 0;
}

int braid_worker_main(braid_loop *loop, const braid_worker_command *cmds, size_t n) {
    const char *e = getenv("BRAID_WORKER");
    if (!e) return BRAID_EINVAL;
    /* "3,W": calls come in on fd 3, frames go out on fd W (a pair of
     * pipes); "3" alone: one socket both ways. */
    int fd, wfd;
    int vrc = worker_fds(e, &fd, &wfd);
    if (vrc < 0) {
        fprintf(stderr, "braid_worker_main: BRAID_WORKER=%s names neither a pair of pipes \"R,W\" nor an "
                        "AF_UNIX stream socket, at fds >= 3\n", e);
        return vrc;
    }
    /* Our own children must not hold the parent's end of the pipe open. */
    if (wfd >= 0) (void)fcntl(wfd, F_SETFD, FD_CLOEXEC);
    /* A write to the pipe after the parent died fails with EPIPE (the
     * connection is lost and the worker ends) rather than killing it with
     * SIGPIPE, unless the program chose a disposition of its own. braid's
     * spawn resets every signal for this worker's own children. */
    struct sigaction sa;
    if (wfd >= 0 && sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
    /* Our own children are not workers unless they are told so. */
    unsetenv("BRAID_WORKER");
    braid_loop *own = NULL;
    if (!loop) {
        int rc = braid_loop_new(NULL, &own);
        if (rc < 0) return rc;
        loop = own;
    }
    /* c.fd is where frames go out: the write pipe, or the socket. */
    wconn c = { .loop = loop, .fd = wfd >= 0 ? wfd : fd, .cmds = cmds, .ncmds = n, .max_frame = 16u << 20 };
    const char *mf = getenv("BRAID_WORKER_MAX_FRAME");
    if (mf && strtoull(mf, NULL, 10) >= 512) c.max_frame = (size_t)strtoull(mf, NULL, 10);
    unsetenv("BRAID_WORKER_MAX_FRAME");
    /* The slot page (process_internal.h): without it (a parent that
     * predates it) every call runs, as before. */
    const char *se = getenv("BRAID_WORKER_SLOTS");
    if (se) {
        char *end;
        int sfd = worker_num(se, &end);
        if (sfd >= 0 && !*end && sfd != fd && sfd != wfd) (void)braid__slots_map(sfd, &c.slots);
        unsetenv("BRAID_WORKER_SLOTS");
    }
    wside *ws = braid_calloc(1, sizeof *ws);
    int rc = BRAID_ENOMEM;
    if (ws) {
        ws->fp.base.ops = &ws_ops;
        ws->c = &c;
        rc = wfd >= 0 ? braid_transport_adopt_pipes(loop, fd, wfd, &ws->fp.base)
                      : braid_transport_adopt(loop, fd, &ws->fp.base);
        if (rc < 0) braid_free(ws);
    }
    if (rc == 0) {
        /* From here the loop's log events go to the parent (with the ones
         * kept from before, replayed to this first observer). */
        braid_logger *lg = braid_loop_logger(loop);
        braid_logger_stats ls;
        braid_logger_stats_get(lg, &ls);
        c.logger_dropped = ls.dropped;
        if (braid_logger_add_callback(lg, log_observe, &c, &c.obs) < 0) c.obs = NULL;
        while (c.t) {
            if ((rc = braid_loop_run(loop)) < 0) break;
        }
        /* connection_lost has run (it stops the loop): let its transport go. */
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        if (c.obs) braid_log_observer_remove(c.obs);
        if (rc == 0) rc = c.result;
    }
    if (own && c.outstanding) {
        /* Stopped while handlers hold calls (and their timers, Deferreds):
         * the process exits next, so its loop is left to the exit rather
         * than refused half-way ("loop not destroyed"). Said with the pid:
         * the worker's stderr is the parent's. */
        fprintf(stderr, "braid worker pid %d: stopped with %zu call(s) unanswered\n", (int)getpid(),
                c.outstanding);
    } else if (own) {
        (void)braid_loop_free(own);
    }
    braid__slots_free(&c.slots);
    return rc;
}
