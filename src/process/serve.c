/* N loops serving one port: N threads or N forked processes, each with its
 * own loop, sharing a TCP endpoint by SO_REUSEPORT listeners, one socket
 * watched with wake-one (EPOLLEXCLUSIVE), one socket watched by all (the
 * herd, for comparison), or an acceptor handing connections out; graceful
 * stop on SIGTERM/SIGINT and restart of crashed child processes.
 *
 * The supervisor (the calling thread) owns the listening sockets for the
 * whole run, so a restarted process takes over its predecessor's socket
 * (and its queue) instead of binding a new one: no connection waiting in a
 * SO_REUSEPORT queue is reset by a restart. */
#include "process/process_internal.h"
#include <braid/endpoint.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <stdlib.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif

#define SERVE_MAX_LOOPS 64

typedef struct serve_run serve_run;

/* One loop: a thread, or (processes) the state of one child. */
typedef struct serve_slot {
    serve_run *run;
    unsigned index;
    int listen_fd;                 /* its listening socket (borrowed from the run) */
    int hand_fd;                   /* acceptor + processes: the child's end of the hand-off pair */
    int hand_sock;                 /* ... in the child, its number (acknowledgements are sent on it) */
    int parent_hand_fd;            /* ... and the supervisor's */
    braid_transport *hand;         /* supervisor side of it, as a transport (the child: its side) */
    struct sup_hand *sup_hand;     /* the supervisor: hand's protocol */
    pthread_t thread;
    bool thread_started;
    pid_t pid;
    braid_loop *loop;              /* threads: the slot's loop (valid while it runs) */
    braid_factory *factory;
    braid_listener *listener;
    braid_timer drain_timer;
    bool draining;
    braid_signal sigterm, sigint;  /* processes: the child's stop signals */
    bool sigs;
    bool live, started, failed;    /* threads: under serve_lock */
    uint64_t accepted;
    bool serving;                  /* its loop started running (not a failed start) */
    bool drain_final;              /* drain_timer: the final stop is armed */
    bool forced;                   /* ... and it stopped the loop */
    int start_rc;                  /* threads: why it could not start */
    uint64_t started_ns;           /* processes: when the child was forked (CLOCK_MONOTONIC) */
    int pidfd;                     /* processes: the child's pidfd (-1: none; SIGCHLD only) */
    braid_watch pid_watch;         /* ... watched on the supervisor's loop */
    bool pid_watched;
    bool sigkilled;                /* processes: the stop's grace ran out (the child is not restarted) */
    uint64_t backoff;              /* processes: delay before the next quick restart */
    unsigned quick_deaths;         /* processes: deaths in a row within 1 s of the start */
    braid_timer restart_timer;     /* processes: a restart after the back-off */
    bool restart_timer_init;
    braid_prepare reorder;         /* EXCLUSIVE on epoll: re-add the listener now and then */
    uint64_t reordered_at;         /* the listener's accept count at the last re-add */
} serve_slot;

struct serve_run {
    braid_serve_options o;
    braid_endpoint ep;
    unsigned n;
    int fds[SERVE_MAX_LOOPS];      /* listening sockets: n for REUSEPORT, else 1 */
    int nfds;
    int stats_pipe[2];             /* processes: children report their counts here */
    serve_slot slots[SERVE_MAX_LOOPS];
    braid_loop *sup;               /* the supervisor's loop */
    braid_watch accept_watch;      /* ACCEPTOR */
    unsigned next;                 /* ACCEPTOR: round-robin */
    int port;                      /* the served port */
    bool stopping;
    unsigned alive;                /* threads or children running */
    uint64_t restarts, handed, killed, rehanded;
    braid_timer grace_timer;
    int failed_rc;                 /* a loop could not start: braid_serve returns it */
};

/* A child whose loop could not start exits with this status: restarting it
 * would fail the same way, so the supervisor stops instead (EX_CONFIG). */
enum { SERVE_EXIT_NOSTART = 78 };

static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- sockets ------------------------------------------------------------------------------ */
static int open_listener(const braid_endpoint *ep, int port, bool reuseport) {
    braid_address a;
    memset(&a, 0, sizeof a);
    int family = ep->kind == BRAID_ENDPOINT_TCP6 ? AF_INET6 : AF_INET;
    const char *host = ep->host[0] ? ep->host : family == AF_INET6 ? "::" : "0.0.0.0";
    if (family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&a.ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1) return BRAID_EINVAL;
        a.len = sizeof *s6;
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&a.ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        if (inet_pton(AF_INET, host, &s4->sin_addr) != 1) return BRAID_EINVAL;
        a.len = sizeof *s4;
    }
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if ((reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0) ||
        bind(fd, (struct sockaddr *)&a.ss, a.len) < 0 ||
        listen(fd, ep->backlog > 0 ? ep->backlog : 511) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static int bound_port(int fd) {
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0) return -errno;
    if (ss.ss_family == AF_INET6) return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    if (ss.ss_family == AF_INET) return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return BRAID_EINVAL;   /* not a TCP/IP socket */
}

/* Threads: the supervisor posts to a slot's loop only while it is live. */
static pthread_mutex_t serve_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t serve_cond = PTHREAD_COND_INITIALIZER;
static void slot_set_live(serve_slot *s, bool live) {
    pthread_mutex_lock(&serve_lock);
    s->live = live;
    if (live) s->started = true;
    pthread_cond_broadcast(&serve_cond);
    pthread_mutex_unlock(&serve_lock);
}

/* ---- one loop ------------------------------------------------------------------------------- */
static void adopt_conn(serve_slot *s, int fd) {
    braid_protocol *p = braid_factory_build(s->factory, NULL);
    if (!p) {
        close(fd);
        return;
    }
    if (braid_transport_adopt(s->loop, fd, p) < 0) return;   /* adopt closed fd and dropped p */
    s->accepted++;
}

/* Processes + ACCEPTOR: connections arrive over the hand-off socket, each
 * one byte with its descriptor attached. The child answers on the same
 * socket, one byte per message:
 *   HAND_ACK    "I hold the next connection you handed me" — sent before
 *               the child adopts it, so before it can have read any of its
 *               bytes. The supervisor keeps its own copy of every handed
 *               connection until it is acknowledged; the copies still
 *               unacknowledged when the hand-off socket ends (the child
 *               died with them in its socket buffer, unread) are handed
 *               to another child instead of being lost.
 *   HAND_DRAIN  "hand me nothing more": the child is draining. The
 *               supervisor shuts its side's writing; the child serves what
 *               it received before that end of file, then closes. */
#define HAND_ACK 'a'
#define HAND_DRAIN 'd'
static bool hand_say(serve_slot *s, char what) {
    /* Straight to the socket, not through the transport's buffer: the
     * acknowledgement must have left before the connection is read. Only
     * these bytes are ever written on it, so nothing is overtaken. */
    return s->hand_sock >= 0 && send(s->hand_sock, &what, 1, MSG_DONTWAIT | MSG_NOSIGNAL) == 1;
}
typedef struct hand_proto {
    braid_protocol base;
    serve_slot *slot;
} hand_proto;
static void hand_fds(braid_protocol *p, const int *fds, int n) {
    hand_proto *h = (hand_proto *)p;
    /* Served even while draining: the supervisor handed it before the stop. */
    for (int i = 0; i < n; i++) {
        if (hand_say(h->slot, HAND_ACK)) adopt_conn(h->slot, fds[i]);
        else close(fds[i]);   /* not acknowledged: the supervisor's copy goes to another child */
    }
}
static void hand_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    serve_slot *s = ((hand_proto *)p)->slot;
    s->hand = NULL;
    s->hand_sock = -1;
}
static void hand_destroy(braid_protocol *p) { braid_free(p); }
static const braid_protocol_ops hand_ops = { .fds_received = hand_fds, .connection_lost = hand_lost,
                                             .destroy = hand_destroy };

/* After the drain time: shut down every connection still open so each
 * transport sees its end, then let the loop close them. The connections
 * are found in the process's descriptor table — a TCP transport on
 * io_uring completions is in no watch list — as the connected TCP sockets
 * whose local port is the served one (never a listener, never another
 * socket, which may be shared with the parent). Each is checked and shut
 * down through a duplicate made first, so a number another thread closes
 * and reuses meanwhile is never mistaken for it. In threads mode every
 * loop's drain ends at the same time and the first to get there shuts down
 * the others' connections too. A child also shuts down its hand-off
 * socket. */
static void drain_shutdown(serve_slot *s);
static void drain_expired(braid_timer *t, void *arg) {
    serve_slot *s = arg;
    if (s->drain_final) {
        /* The connections were shut down 250 ms ago and the loop still has
         * work: timers or handles the program left running. A stop must end. */
        braid__log(s->loop, BRAID_LOG_WARN,
                   "serve: loop %u still had work 250 ms after its drain (timers or handles left running — "
                   "close them in on_drain); stopping it",
                   s->index);
        s->forced = true;
        braid_loop_stop(s->loop);
        return;
    }
    drain_shutdown(s);
    s->drain_final = true;
    braid_timer_start(t, BRAID_MSEC(250));
    braid_timer_unref(t);
}

static void drain_shutdown(serve_slot *s) {
    if (s->hand_sock >= 0) shutdown(s->hand_sock, SHUT_RDWR);
    DIR *d = opendir("/proc/self/fd");
    if (!d) d = opendir("/dev/fd");
    if (!d) {   /* then only what the loop watches (not transports on completions) */
        braid_loop_fd fds[256];
        size_t n = braid_loop_watched_fds(s->loop, 256, fds);
        for (size_t i = 0; i < n && i < 256; i++)
            if (bound_port(fds[i].fd) == s->run->port) shutdown(fds[i].fd, SHUT_RDWR);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
        int fd = atoi(e->d_name);
        if (fd <= 2 || fd == dirfd(d)) continue;
        int dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
        if (dup < 0) continue;
        struct sockaddr_storage peer;
        socklen_t len = sizeof peer;
        if (bound_port(dup) == s->run->port && getpeername(dup, (struct sockaddr *)&peer, &len) == 0)
            shutdown(dup, SHUT_RDWR);
        close(dup);
    }
    closedir(d);
}

/* Stop accepting; the loop's run returns once the connections have closed
 * (or been shut down when the drain time ran out). */
/* EPOLLEXCLUSIVE wakes the first loop in the listening socket's wait queue
 * that is asleep, so an idle server hands nearly every connection to the
 * loop that added the socket first. As nginx does (ngx_reorder_accept_events),
 * a loop that has accepted 16 connections since its last re-add removes and
 * adds its listener again, which moves it to the queue's tail. Checked before
 * each wait, when the batch just accepted is done. */
enum { SERVE_REORDER_EVERY = 16 };
static void reorder_check(braid_prepare *p, void *arg) {
    serve_slot *s = arg;
    (void)p;
    if (!s->listener) return;
    uint64_t n = braid_listener_accepted(s->listener);
    if (n - s->reordered_at < SERVE_REORDER_EVERY) return;
    s->reordered_at = n;
    if (braid_listener_set_exclusive(s->listener, false) == 0)
        (void)braid_listener_set_exclusive(s->listener, true);
}

static void begin_drain(void *arg) {
    serve_slot *s = arg;
    if (s->draining) return;
    s->draining = true;
    braid_prepare_stop(&s->reorder);
    if (s->listener) {
        s->accepted += braid_listener_accepted(s->listener);
        braid_listener_close(s->listener);
        s->listener = NULL;
    }
    if (s->hand && (!s->run->o.processes || !hand_say(s, HAND_DRAIN)))
        braid_transport_close(s->hand, BRAID_FOREVER);
    if (s->sigs) {   /* they would keep the loop running */
        braid_signal_stop(&s->sigterm);
        braid_signal_stop(&s->sigint);
        s->sigs = false;
    }
    braid_timer_start(&s->drain_timer, s->run->o.drain_timeout);
    braid_timer_unref(&s->drain_timer);
    if (s->serving && s->run->o.on_drain) s->run->o.on_drain(s->loop, s->index, s->run->o.arg);
}

static void on_stop_signal(braid_signal *sig, int signo, void *arg) {
    (void)sig; (void)signo;
    begin_drain(arg);
}

/* Free a loop of ours once what was closed on it is done closing (on
 * io_uring, until the cancelled operations' completions are back): up to
 * 100 iterations, 1 ms apart, silently; then braid_loop_free says what is
 * still open. true if freed. */
static bool free_loop_bounded(braid_loop *loop) {
    if (!loop) return true;
    for (int i = 0; i < 100; i++) {
        if (braid__loop_free_quiet(loop) == 0) return true;
        braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        usleep(1000);
    }
    return braid_loop_free(loop) == 0;
}

/* Serve slot s on a fresh loop until drained. 0, or a negative code if it
 * could not start. */
static int slot_serve(serve_slot *s) {
    serve_run *r = s->run;
    braid_loop_options lo = { .backend = r->o.backend };
    int rc = braid_loop_new(&lo, &s->loop);
    if (rc < 0) return rc;
    braid_timer_init(s->loop, &s->drain_timer, drain_expired, s);
    s->factory = r->o.factory(s->loop, s->index, r->o.arg);
    if (!s->factory) {
        braid__log(s->loop, BRAID_LOG_ERROR, "serve: loop %u: the factory returned NULL", s->index);
        rc = BRAID_ESERVE_START;
        goto out;
    }
    if (r->o.processes) {
        if ((rc = braid_signal_start(s->loop, &s->sigterm, SIGTERM, on_stop_signal, s)) < 0) goto out;
        if ((rc = braid_signal_start(s->loop, &s->sigint, SIGINT, on_stop_signal, s)) < 0) {
            braid_signal_stop(&s->sigterm);
            goto out;
        }
        s->sigs = true;
    }
    if (r->o.method == BRAID_SERVE_ACCEPTOR) {
        /* No listener keeps this loop running: a timer does until the drain. */
        braid_timer_start(&s->drain_timer, BRAID_SECONDS(86400) * 365);
        if (r->o.processes) {
            hand_proto *h = braid_calloc(1, sizeof *h);
            if (!h) { rc = BRAID_ENOMEM; goto out; }
            h->base.ops = &hand_ops;
            h->slot = s;
            int fd = s->hand_fd;
            s->hand_fd = -1;
            if ((rc = braid_transport_adopt(s->loop, fd, &h->base)) < 0) goto out;
            s->hand = h->base.transport;
            s->hand_sock = fd;
        }
    } else {
        int fd = fcntl(s->listen_fd, F_DUPFD_CLOEXEC, 0);
        if (fd < 0) { rc = -errno; goto out; }
        if ((rc = braid_endpoint_listener(braid_endpoint_listen_typed(s->loop, &(braid_endpoint){
                 .kind = BRAID_ENDPOINT_FD, .fd = fd }, s->factory), &s->listener)) < 0)
            goto out;
        if (r->o.processes) {   /* the child keeps only its listener's copy */
            close(s->listen_fd);
            s->listen_fd = -1;
        }
        if (r->o.method == BRAID_SERVE_EXCLUSIVE &&
            (rc = braid_listener_set_exclusive(s->listener, true)) < 0)
            goto out;
        if (r->o.method == BRAID_SERVE_EXCLUSIVE && !strcmp(braid_loop_backend(s->loop), "epoll")) {
            s->reordered_at = 0;
            braid_prepare_start(s->loop, &s->reorder, reorder_check, s);
        }
    }
    if (r->o.on_loop) r->o.on_loop(s->loop, s->index, r->o.arg);
    s->serving = true;
    slot_set_live(s, true);
    rc = braid_loop_run(s->loop);
out:
    if (!s->draining) begin_drain(s);   /* a start that failed: close what opened */
    braid_timer_stop(&s->drain_timer);
    /* Whatever the drain left (a protocol's own timers): one more bounded pass. */
    slot_set_live(s, false);
    bool freed = false;
    if (s->forced) {
        /* Stopped with the program's own handles alive (this free says
         * which): factory_done is its chance to close them (its
         * connections were shut down 250 ms ago), then the loop can go. */
        freed = braid_loop_free(s->loop) == 0;
        if (!freed && s->factory && r->o.factory_done) r->o.factory_done(s->factory, s->index, r->o.arg);
        if (!freed) s->factory = NULL;
    }
    if (!freed) (void)free_loop_bounded(s->loop);   /* if not, it said why, and the loop is left */
    if (s->factory && r->o.factory_done) r->o.factory_done(s->factory, s->index, r->o.arg);
    s->loop = NULL;
    return rc;
}

/* ---- the supervisor ------------------------------------------------------------------------ */
typedef struct handed_conn {
    serve_slot *slot;
    int fd;
} handed_conn;
static void handed_run(void *arg) {
    handed_conn *h = arg;
    if (h->slot->draining) close(h->fd);
    else adopt_conn(h->slot, h->fd);
    braid_free(h);
}

/* Supervisor's side of a process's hand-off socket: the copies of the
 * connections handed over it and not yet acknowledged, oldest first. */
#define SERVE_UNACKED 256
typedef struct sup_hand {
    braid_protocol base;
    serve_slot *slot;
    bool no_more;                  /* the child is draining, or we stop */
    unsigned head, count;
    int unacked[SERVE_UNACKED];
} sup_hand;

/* Hand fd (the supervisor's copy) to the next loop that takes it,
 * round-robin; false if none could. */
static bool hand_out(serve_run *r, int fd) {
    for (unsigned t = 0; t < r->n; t++) {
        serve_slot *s = &r->slots[r->next++ % r->n];
        if (r->o.processes) {
            sup_hand *h = s->hand ? s->sup_hand : NULL;
            if (!h || h->no_more || h->count == SERVE_UNACKED) continue;
            if (braid_transport_send_fds(s->hand, &fd, 1, "c", 1) < 0) continue;
            h->unacked[(h->head + h->count++) % SERVE_UNACKED] = fd;   /* kept until acknowledged */
            return true;
        }
        bool handed = false;
        pthread_mutex_lock(&serve_lock);
        if (s->live) {
            handed_conn *hc = braid_malloc(sizeof *hc);
            if (hc) {
                *hc = (handed_conn){ s, fd };
                if (braid_loop_post(s->loop, handed_run, hc) == 0) handed = true;
                else braid_free(hc);
            }
        }
        pthread_mutex_unlock(&serve_lock);
        if (handed) return true;   /* the slot's now */
    }
    return false;
}

static void sup_hand_stop(sup_hand *h) {
    if (h->no_more) return;
    h->no_more = true;
    (void)braid_transport_shutdown_write(h->base.transport);   /* the child reads to this end */
}
static void sup_hand_data(braid_protocol *p, const void *buf, size_t len) {
    sup_hand *h = (sup_hand *)p;
    const char *b = buf;
    for (size_t i = 0; i < len; i++) {
        if (b[i] == HAND_ACK && h->count) {
            close(h->unacked[h->head]);   /* the child holds it */
            h->head = (h->head + 1) % SERVE_UNACKED;
            h->count--;
        } else if (b[i] == HAND_DRAIN) {
            sup_hand_stop(h);
        }
    }
}
static void sup_hand_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    sup_hand *h = (sup_hand *)p;
    serve_run *r = h->slot->run;
    if (h->slot->hand == p->transport) {
        h->slot->hand = NULL;
        h->slot->sup_hand = NULL;
    }
    h->no_more = true;
    /* The child ended with these in its socket buffer, never read: hand
     * them to another child (a restarted one included). */
    if (h->count)
        braid__log(r->sup, BRAID_LOG_WARN, "serve: loop %u ended holding %u connections it had not taken; %s",
                   h->slot->index, h->count, r->stopping ? "closing them" : "handing them to the others");
    for (; h->count; h->count--, h->head = (h->head + 1) % SERVE_UNACKED) {
        int fd = h->unacked[h->head];
        if (r->stopping || !hand_out(r, fd)) close(fd);
        else r->rehanded++;
    }
}
static const braid_protocol_ops sup_hand_ops = { .data_received = sup_hand_data,
                                                 .connection_lost = sup_hand_lost, .destroy = hand_destroy };

/* ACCEPTOR: accept in the supervisor and hand out round-robin. */
static void on_acceptor(braid_watch *w, unsigned ev, void *arg) {
    (void)w; (void)ev;
    serve_run *r = arg;
    for (int k = 0; k < 64; k++) {
        int fd = accept4(r->fds[0], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;   /* EAGAIN, or an error for that connection */
        if (hand_out(r, fd)) r->handed++;
        else close(fd);       /* nobody could take it */
    }
}

static void *slot_thread(void *arg) {
    serve_slot *s = arg;
    int rc = slot_serve(s);
    pthread_mutex_lock(&serve_lock);
    if (rc < 0) {
        s->failed = true;
        s->start_rc = s->serving ? rc : rc == BRAID_ESERVE_START ? rc : BRAID_ESERVE_START;
    }
    s->started = true;
    pthread_cond_broadcast(&serve_cond);
    pthread_mutex_unlock(&serve_lock);
    return NULL;
}

static void post_drain_all(serve_run *r) {
    pthread_mutex_lock(&serve_lock);
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].live) braid_loop_post(r->slots[i].loop, begin_drain, &r->slots[i]);
    pthread_mutex_unlock(&serve_lock);
}

/* Processes, in a new child: every descriptor the child did not get from
 * braid_serve and that is close-on-exec (another thread's connection, the
 * supervisor's loop and hand-off sockets, a library's socket) is what its
 * owner meant never to reach a child; fork copies it anyway. A copy held
 * by the child keeps that file open: a connection the parent's thread
 * closed never ends for its peer — one of this child's own connections,
 * whose drain then waits for an end of file that cannot come. Each is
 * replaced by /dev/null opened read-only rather than closed, so its number
 * stays taken (a library still holding it can never write into a socket
 * that reused the number: a write fails with EBADF). Descriptors without
 * close-on-exec are inherited as fork inherits them.
 * LINUX-ONLY where /proc/self/fd lists them (/dev/fd elsewhere; without
 * either, the first 1024 numbers are checked). */
static void child_drop_fds(const int *keep, int nkeep) {
    int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (null_fd < 0) return;
    DIR *d = opendir("/proc/self/fd");
    if (!d) d = opendir("/dev/fd");
    int dir_fd = d ? dirfd(d) : -1;
    struct dirent *e;
    for (int probe = 3;;) {
        int fd;
        if (d) {
            if (!(e = readdir(d))) break;
            if (e->d_name[0] < '0' || e->d_name[0] > '9') continue;
            fd = atoi(e->d_name);
        } else {
            if (probe >= 1024) break;
            fd = probe++;
        }
        if (fd < 3 || fd == null_fd || fd == dir_fd) continue;
        bool kept = false;
        for (int i = 0; i < nkeep; i++) kept |= keep[i] == fd;
        int fl = fcntl(fd, F_GETFD);
        if (kept || fl < 0 || !(fl & FD_CLOEXEC)) continue;
        (void)dup3(null_fd, fd, O_CLOEXEC);
    }
    if (d) closedir(d);
    close(null_fd);
}

static void watch_pid(serve_run *r, serve_slot *s);
static void unwatch_pid(serve_slot *s);

/* Processes: fork slot s's child. */
static int fork_child(serve_run *r, serve_slot *s) {
    int pair[2] = { -1, -1 };
    if (r->o.method == BRAID_SERVE_ACCEPTOR &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        return -errno;
    pid_t supervisor = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        if (pair[0] >= 0) { close(pair[0]); close(pair[1]); }
        return e;
    }
    if (pid == 0) {
        /* A child does not outlive its supervisor: if the supervisor dies
         * (SIGKILL, a crash), the child gets SIGTERM and drains as after a
         * stop, instead of serving on, orphaned, with nobody to stop it.
         * The signal follows the forking thread, which is braid_serve's
         * caller, alive until every child is gone. The supervisor may
         * already be dead by the time the child asks: then stop now.
         * LINUX-ONLY (PR_SET_PDEATHSIG); elsewhere orphans serve on. */
#ifdef __linux__
        if (prctl(PR_SET_PDEATHSIG, SIGTERM) == 0 && getppid() != supervisor) raise(SIGTERM);
#else
        (void)supervisor;
#endif
        /* The child: nothing of the supervisor's is touched; of its
         * descriptors the child keeps its listener (none with the
         * acceptor: connections come over the hand-off socket), its end
         * of the hand-off socket and the stats pipe. A loop of its own
         * serves slot s. */
        if (r->o.method == BRAID_SERVE_ACCEPTOR) s->listen_fd = -1;
        s->hand = NULL;       /* the supervisor's, in this copy of its memory */
        s->sup_hand = NULL;
        if (pair[0] >= 0) s->hand_fd = pair[1];
        int keep[3] = { s->listen_fd, s->hand_fd, r->stats_pipe[1] };
        child_drop_fds(keep, 3);
        s->accepted = 0;
        int rc = slot_serve(s);
        if (rc < 0 && !s->serving) _exit(SERVE_EXIT_NOSTART);
        uint64_t rep[2] = { s->index, s->accepted };
        if (write(r->stats_pipe[1], rep, sizeof rep) != (ssize_t)sizeof rep) rc = rc < 0 ? rc : -EIO;
        _exit(rc < 0 ? 1 : 0);
    }
    s->pid = pid;
    s->sigkilled = false;
    s->started_ns = mono_ns();
    s->pidfd = braid__pidfd_open(pid);
    r->alive++;
    if (r->sup) watch_pid(r, s);
    if (pair[0] >= 0) {
        close(pair[1]);
        s->parent_hand_fd = pair[0];
        if (r->sup) {
            sup_hand *h = braid_calloc(1, sizeof *h);
            if (h) {
                h->base.ops = &sup_hand_ops;
                h->slot = s;
                if (braid_transport_adopt(r->sup, pair[0], &h->base) == 0) {
                    s->hand = h->base.transport;
                    s->sup_hand = h;
                }
            } else {
                close(pair[0]);
            }
            s->parent_hand_fd = -1;   /* the transport owns it now */
        }
    }
    return 0;
}

static void read_stats(serve_run *r) {
    uint64_t rep[2];
    while (read(r->stats_pipe[0], rep, sizeof rep) == (ssize_t)sizeof rep)
        if (rep[0] < r->n) r->slots[rep[0]].accepted += rep[1];
}

static void on_sup_stop(braid_signal *sig, int signo, void *arg);
static void restart_later(braid_timer *t, void *arg) {
    (void)t;
    serve_slot *s = arg;
    serve_run *r = s->run;
    r->alive--;   /* the placeholder taken when the restart was put off */
    if (!r->stopping && fork_child(r, s) == 0) r->restarts++;
    if (r->alive == 0) braid_loop_stop(r->sup);
}

/* Reap slot i's child if it has exited: restart it, or stop the run. */
static void slot_reap(serve_run *r, unsigned i) {
    serve_slot *s = &r->slots[i];
    int st;
    if (s->pid <= 0 || waitpid(s->pid, &st, WNOHANG) != s->pid) return;
    s->pid = 0;
    unwatch_pid(s);
    r->alive--;
    if (WIFEXITED(st) && WEXITSTATUS(st) == SERVE_EXIT_NOSTART) {
        /* Its loop could not start (the factory returned NULL ...): a
         * restart would fail the same way. Stop serving, say why. */
        braid__log(r->sup, BRAID_LOG_ERROR, "serve: loop %u (process) could not start; stopping", i);
        if (!r->failed_rc) r->failed_rc = BRAID_ESERVE_START;
        on_sup_stop(NULL, 0, r);
        return;
    }
    if (!r->stopping && !r->o.no_restart) {
        /* A child that dies within a second of its start again and
         * again waits before the next try (10 ms, doubling to 1 s): one
         * that crashes at once must not become a fork loop. The first
         * such death restarts at once. */
        bool quick = mono_ns() - s->started_ns < BRAID_SECONDS(1);
        s->quick_deaths = quick ? s->quick_deaths + 1 : 0;
        s->backoff = s->quick_deaths < 2 ? 0
                   : s->quick_deaths >= 9 ? BRAID_SECONDS(1) : BRAID_MSEC(10) << (s->quick_deaths - 2);
        if (s->backoff > BRAID_SECONDS(1)) s->backoff = BRAID_SECONDS(1);
        braid__log(r->sup, BRAID_LOG_WARN, "serve: loop %u (process) %s %d; restarting it%s", i,
                   WIFSIGNALED(st) ? "killed by signal" : "exited with",
                   WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), s->backoff ? " after a back-off" : "");
        if (s->backoff) {
            if (!s->restart_timer_init) {
                braid_timer_init(r->sup, &s->restart_timer, restart_later, s);
                s->restart_timer_init = true;
            }
            braid_timer_start(&s->restart_timer, s->backoff);
            r->alive++;   /* it counts as running until the restart (or the stop) */
        } else if (fork_child(r, s) == 0) {
            r->restarts++;
        }
    }
}

/* A child's exit is learned from its pidfd where there is one: SIGCHLD is
 * one signal for the whole process, and a thread of the program that does
 * not block it (a helper thread started before braid_serve, a library's)
 * receives it instead of the supervisor's signalfd — SIGCHLD's default
 * action then discards it, and the supervisor would never reap that child
 * nor return. SIGCHLD is still watched: without pidfds it is the only way
 * (then every thread must block it), and with them it is harmless (a child
 * already reaped is not waited for twice). */
static void on_child(braid_signal *sig, int signo, void *arg) {
    (void)sig; (void)signo;
    serve_run *r = arg;
    read_stats(r);
    for (unsigned i = 0; i < r->n; i++) slot_reap(r, i);
    if (r->alive == 0) braid_loop_stop(r->sup);
}

static void on_pidfd(braid_watch *w, unsigned ev, void *arg) {
    (void)w; (void)ev;
    serve_slot *s = arg;
    serve_run *r = s->run;
    read_stats(r);
    slot_reap(r, s->index);
    if (r->alive == 0) braid_loop_stop(r->sup);
}

static void watch_pid(serve_run *r, serve_slot *s) {
    if (s->pidfd < 0 || s->pid_watched) return;
    if (braid_watch_init(r->sup, &s->pid_watch, s->pidfd, on_pidfd, s) == 0) {
        if (braid_watch_set_interest(&s->pid_watch, BRAID_WATCH_READ) == 0) {
            s->pid_watched = true;
            return;
        }
        braid_watch_close(&s->pid_watch);
    }
    close(s->pidfd);   /* SIGCHLD then */
    s->pidfd = -1;
}

static void unwatch_pid(serve_slot *s) {
    if (s->pid_watched) braid_watch_close(&s->pid_watch);
    s->pid_watched = false;
    if (s->pidfd >= 0) close(s->pidfd);
    s->pidfd = -1;
}

static void thread_done(void *arg) {
    serve_run *r = arg;
    if (--r->alive == 0) braid_loop_stop(r->sup);
}
static void *slot_thread_main(void *arg) {
    serve_slot *s = arg;
    slot_thread(s);
    braid_loop_post(s->run->sup, thread_done, s->run);
    return NULL;
}

/* drain_timeout + 1 s after the stop, then every second until every child
 * is reaped: a child that has exited is reaped here (without pidfds, its
 * SIGCHLD may have gone to another thread of the program, which discards
 * it: this bounds that loss), one still running is SIGKILLed, once. */
static void grace_expired(braid_timer *t, void *arg) {
    serve_run *r = arg;
    read_stats(r);
    for (unsigned i = 0; i < r->n; i++) slot_reap(r, i);
    for (unsigned i = 0; i < r->n; i++) {
        serve_slot *s = &r->slots[i];
        if (s->pid <= 0 || s->sigkilled) continue;
        if (kill(s->pid, SIGKILL) == 0) {
            braid__log(r->sup, BRAID_LOG_WARN, "serve: loop %u (process) did not finish its drain; killed", i);
            s->sigkilled = true;
            r->killed++;
        }
    }
    if (r->alive == 0) braid_loop_stop(r->sup);
    else braid_timer_start(t, BRAID_SECONDS(1));
}

static void on_sup_stop(braid_signal *sig, int signo, void *arg) {
    (void)sig; (void)signo;
    serve_run *r = arg;
    if (r->stopping) return;
    r->stopping = true;
    if (r->o.method == BRAID_SERVE_ACCEPTOR) braid_watch_close(&r->accept_watch);
    /* New connections are refused once every loop has closed its copy. */
    for (int i = 0; i < r->nfds; i++) close(r->fds[i]);
    r->nfds = 0;
    if (r->o.processes) {
        for (unsigned i = 0; i < r->n; i++) {
            serve_slot *sl = &r->slots[i];
            if (sl->restart_timer_init && braid_timer_is_active(&sl->restart_timer)) {
                braid_timer_stop(&sl->restart_timer);   /* a restart put off: not needed now */
                r->alive--;
            }
            if (sl->sup_hand) sup_hand_stop(sl->sup_hand);
            if (sl->pid > 0) kill(sl->pid, SIGTERM);
        }
        if (r->alive == 0) braid_loop_stop(r->sup);
        /* (braid_timer_start saturates: BRAID_FOREVER waits for ever) */
        uint64_t grace = r->o.drain_timeout > BRAID_FOREVER - BRAID_SECONDS(1) ? BRAID_FOREVER
                                                                               : r->o.drain_timeout + BRAID_SECONDS(1);
        braid_timer_start(&r->grace_timer, grace);
    } else {
        post_drain_all(r);
    }
}

int braid_serve(const char *endpoint, const braid_serve_options *opts, struct braid_serve_stats *out) {
    if (!endpoint || !opts || !opts->factory || opts->loops > SERVE_MAX_LOOPS) return BRAID_EINVAL;
    if (out) memset(out, 0, sizeof *out);
    serve_run *r = braid_calloc(1, sizeof *r);
    if (!r) return BRAID_ENOMEM;
    r->o = *opts;
    if (!r->o.drain_timeout) r->o.drain_timeout = BRAID_SECONDS(5);
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    r->n = r->o.loops ? r->o.loops : ncpu > 0 ? (unsigned)ncpu : 1;
    if (r->n > SERVE_MAX_LOOPS) r->n = SERVE_MAX_LOOPS;
    r->stats_pipe[0] = r->stats_pipe[1] = -1;
    for (unsigned i = 0; i < r->n; i++)
        r->slots[i] = (serve_slot){ .run = r, .index = i, .listen_fd = -1, .hand_fd = -1, .hand_sock = -1,
                                  .parent_hand_fd = -1, .pidfd = -1 };
    int rc = braid_endpoint_parse_server(endpoint, &r->ep, NULL, 0);
    if (rc < 0) goto out_free;
    if (r->ep.kind == BRAID_ENDPOINT_UNIX) { rc = BRAID_ENOSYS; goto out_free; }

    /* Block the stop signals (and SIGCHLD) here: every loop's thread, and
     * every child, inherits the mask, and the loops take them as events. */
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &set, &old);

    /* The listening sockets, held by the supervisor for the whole run. */
    bool reuseport = r->o.method == BRAID_SERVE_REUSEPORT;
    int port = r->ep.port;
    for (unsigned i = 0; i < (reuseport ? r->n : 1); i++) {
        int fd = open_listener(&r->ep, port, reuseport);
        if (fd < 0) { rc = fd; goto out_fds; }
        r->fds[r->nfds++] = fd;
        if (port == 0 && (port = bound_port(fd)) < 0) { rc = port; goto out_fds; }
    }
    for (unsigned i = 0; i < r->n; i++) r->slots[i].listen_fd = r->fds[reuseport ? i : 0];
    r->port = port;
    if (r->o.on_listening) r->o.on_listening(port, r->o.arg);

    if (r->o.processes) {
        if (pipe2(r->stats_pipe, O_CLOEXEC | O_NONBLOCK) < 0) { rc = -errno; goto out_fds; }
        for (unsigned i = 0; i < r->n; i++)
            if ((rc = fork_child(r, &r->slots[i])) < 0) goto out_kill;
    }
    braid_loop_options lo = { .backend = r->o.backend };
    if ((rc = braid_loop_new(&lo, &r->sup)) < 0) goto out_kill;
    /* Processes forked before the supervisor's loop existed: their hand-off
     * sockets become transports now. */
    for (unsigned i = 0; i < r->n; i++) {
        serve_slot *s = &r->slots[i];
        watch_pid(r, s);
        if (s->parent_hand_fd < 0) continue;
        sup_hand *h = braid_calloc(1, sizeof *h);
        if (!h) { rc = BRAID_ENOMEM; goto out_loop; }
        h->base.ops = &sup_hand_ops;
        h->slot = s;
        int fd = s->parent_hand_fd;
        s->parent_hand_fd = -1;
        if ((rc = braid_transport_adopt(r->sup, fd, &h->base)) < 0) goto out_loop;
        s->hand = h->base.transport;
        s->sup_hand = h;
    }
    braid_signal sterm, sint, schld;
    braid_timer_init(r->sup, &r->grace_timer, grace_expired, r);
    braid_signal_start(r->sup, &sterm, SIGTERM, on_sup_stop, r);
    braid_signal_start(r->sup, &sint, SIGINT, on_sup_stop, r);
    if (r->o.processes) braid_signal_start(r->sup, &schld, SIGCHLD, on_child, r);
    if (r->o.method == BRAID_SERVE_ACCEPTOR) {
        braid_watch_init(r->sup, &r->accept_watch, r->fds[0], on_acceptor, r);
        braid_watch_set_interest(&r->accept_watch, BRAID_WATCH_READ);
    }
    if (!r->o.processes) {
        for (unsigned i = 0; i < r->n; i++) {
            serve_slot *s = &r->slots[i];
            if (pthread_create(&s->thread, NULL, slot_thread_main, s) != 0) { rc = BRAID_ENOMEM; break; }
            s->thread_started = true;
            r->alive++;
        }
        /* Wait until every loop serves (or failed to start). */
        pthread_mutex_lock(&serve_lock);
        for (unsigned i = 0; i < r->n; i++) {
            while (r->slots[i].thread_started && !r->slots[i].started) pthread_cond_wait(&serve_cond, &serve_lock);
            if (r->slots[i].failed) rc = r->slots[i].start_rc ? r->slots[i].start_rc : BRAID_ESERVE_START;
        }
        pthread_mutex_unlock(&serve_lock);
        if (rc < 0) on_sup_stop(NULL, 0, r);
    }
    if (r->alive) braid_loop_run(r->sup);
    if (!r->o.processes)
        for (unsigned i = 0; i < r->n; i++)
            if (r->slots[i].thread_started) pthread_join(r->slots[i].thread, NULL);
    if (r->o.processes) read_stats(r);
    if (r->o.method == BRAID_SERVE_ACCEPTOR && !r->stopping) braid_watch_close(&r->accept_watch);
    braid_timer_stop(&r->grace_timer);
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].restart_timer_init) braid_timer_stop(&r->slots[i].restart_timer);
    if (r->failed_rc && rc == 0) rc = r->failed_rc;
    braid_signal_stop(&sterm);
    braid_signal_stop(&sint);
    if (r->o.processes) braid_signal_stop(&schld);
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].hand) braid_transport_abort(r->slots[i].hand);   /* its child is gone */
out_loop:
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].pid_watched) {
            braid_watch_close(&r->slots[i].pid_watch);
            r->slots[i].pid_watched = false;
        }
    /* Closing takes a few iterations (on io_uring, until the cancelled
     * operations' completions came back): bounded, as slot_serve's. */
    (void)free_loop_bounded(r->sup);
out_kill:
    for (unsigned i = 0; i < r->n; i++) {
        serve_slot *s = &r->slots[i];
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
        }
        if (s->parent_hand_fd >= 0) close(s->parent_hand_fd);
        if (s->pidfd >= 0) close(s->pidfd);
    }
out_fds:
    for (int i = 0; i < r->nfds; i++) close(r->fds[i]);
    if (r->stats_pipe[0] >= 0) { close(r->stats_pipe[0]); close(r->stats_pipe[1]); }
    /* Signals that arrived while blocked stay pending; drop ours. */
    struct timespec zero = { 0, 0 };
    while (sigtimedwait(&set, NULL, &zero) > 0) {}
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (out) {
        out->loops = r->n;
        out->restarts = r->restarts;
        out->killed = r->killed;
        out->rehanded = r->rehanded;
        for (unsigned i = 0; i < r->n; i++) {
            out->accepted[i] = r->slots[i].accepted;
            out->total += r->slots[i].accepted;
        }
        out->port = port;
    }
out_free:
    braid_free(r);
    return rc;
}
