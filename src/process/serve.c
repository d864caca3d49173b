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
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define SERVE_MAX_LOOPS 64

typedef struct serve_run serve_run;

/* One loop: a thread, or (processes) the state of one child. */
typedef struct serve_slot {
    serve_run *run;
    unsigned index;
    int listen_fd;                 /* its listening socket (borrowed from the run) */
    int hand_fd;                   /* acceptor + processes: the child's end of the hand-off pair */
    int parent_hand_fd;            /* ... and the supervisor's */
    braid_transport *hand;         /* supervisor side of it, as a transport */
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
    bool stopping;
    unsigned alive;                /* threads or children running */
    uint64_t restarts, handed;
    braid_timer grace_timer;
};

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
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
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

/* Processes + ACCEPTOR: connections arrive over the hand-off socket. */
typedef struct hand_proto {
    braid_protocol base;
    serve_slot *slot;
} hand_proto;
static void hand_fds(braid_protocol *p, const int *fds, int n) {
    hand_proto *h = (hand_proto *)p;
    for (int i = 0; i < n; i++) {
        if (h->slot->draining) close(fds[i]);
        else adopt_conn(h->slot, fds[i]);
    }
}
static void hand_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    ((hand_proto *)p)->slot->hand = NULL;
}
static void hand_destroy(braid_protocol *p) { braid_free(p); }
static const braid_protocol_ops hand_ops = { .fds_received = hand_fds, .connection_lost = hand_lost,
                                             .destroy = hand_destroy };

/* After the drain time: shut down every socket still open so each
 * transport sees its end, then let the loop close them. */
static void drain_expired(braid_timer *t, void *arg) {
    (void)t;
    serve_slot *s = arg;
    braid_loop_fd fds[256];
    size_t n = braid_loop_watched_fds(s->loop, 256, fds);
    if (n > 256) n = 256;
    for (size_t i = 0; i < n; i++) {
        int type;
        socklen_t len = sizeof type;
        if (getsockopt(fds[i].fd, SOL_SOCKET, SO_TYPE, &type, &len) == 0) shutdown(fds[i].fd, SHUT_RDWR);
    }
}

/* Stop accepting; the loop's run returns once the connections have closed
 * (or been shut down when the drain time ran out). */
static void begin_drain(void *arg) {
    serve_slot *s = arg;
    if (s->draining) return;
    s->draining = true;
    if (s->listener) {
        s->accepted += braid_listener_accepted(s->listener);
        braid_listener_close(s->listener);
        s->listener = NULL;
    }
    if (s->hand) braid_transport_close(s->hand, BRAID_FOREVER);
    if (s->sigs) {   /* they would keep the loop running */
        braid_signal_stop(&s->sigterm);
        braid_signal_stop(&s->sigint);
        s->sigs = false;
    }
    braid_timer_start(&s->drain_timer, s->run->o.drain_timeout);
    braid_timer_unref(&s->drain_timer);
}

static void on_stop_signal(braid_signal *sig, int signo, void *arg) {
    (void)sig; (void)signo;
    begin_drain(arg);
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
    if (!s->factory) { rc = BRAID_ENOMEM; goto out; }
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
    }
    if (r->o.on_loop) r->o.on_loop(s->loop, s->index, r->o.arg);
    slot_set_live(s, true);
    rc = braid_loop_run(s->loop);
out:
    if (!s->draining) begin_drain(s);   /* a start that failed: close what opened */
    braid_timer_stop(&s->drain_timer);
    /* Whatever the drain left (a protocol's own timers): one more bounded pass. */
    slot_set_live(s, false);
    for (int i = 0; i < 100 && braid_loop_free(s->loop) < 0; i++) {
        braid_loop_run_once(s->loop, BRAID_LOOP_RUN_NOWAIT);
        usleep(1000);
    }
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

/* Supervisor's side of a process's hand-off socket. */
typedef struct sup_hand {
    braid_protocol base;
    serve_slot *slot;
} sup_hand;
static void sup_hand_lost(braid_protocol *p, const braid_failure *why) {
    (void)why;
    sup_hand *h = (sup_hand *)p;
    if (h->slot->hand == p->transport) h->slot->hand = NULL;
}
static const braid_protocol_ops sup_hand_ops = { .connection_lost = sup_hand_lost, .destroy = hand_destroy };

/* ACCEPTOR: accept in the supervisor and hand out round-robin. */
static void on_acceptor(braid_watch *w, unsigned ev, void *arg) {
    (void)w; (void)ev;
    serve_run *r = arg;
    for (int k = 0; k < 64; k++) {
        int fd = accept4(r->fds[0], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;   /* EAGAIN, or an error for that connection */
        bool handed = false;
        for (unsigned t = 0; t < r->n && !handed; t++) {
            serve_slot *s = &r->slots[r->next++ % r->n];
            if (r->o.processes) {
                if (s->hand && braid_transport_send_fds(s->hand, &fd, 1, "c", 1) == 0) handed = true;
            } else {
                pthread_mutex_lock(&serve_lock);
                if (s->live) {
                    handed_conn *h = braid_malloc(sizeof *h);
                    if (h) {
                        *h = (handed_conn){ s, fd };
                        if (braid_loop_post(s->loop, handed_run, h) == 0) handed = true;
                        else braid_free(h);
                    }
                }
                pthread_mutex_unlock(&serve_lock);
                if (handed) fd = -1;   /* the slot's now */
            }
        }
        if (fd >= 0) close(fd);   /* processes: sent a duplicate; or nobody could take it */
        if (handed) r->handed++;
    }
}

static void *slot_thread(void *arg) {
    serve_slot *s = arg;
    int rc = slot_serve(s);
    pthread_mutex_lock(&serve_lock);
    if (rc < 0) s->failed = true;
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

/* Processes: fork slot s's child. */
static int fork_child(serve_run *r, serve_slot *s) {
    int pair[2] = { -1, -1 };
    if (r->o.method == BRAID_SERVE_ACCEPTOR &&
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
        return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        if (pair[0] >= 0) { close(pair[0]); close(pair[1]); }
        return e;
    }
    if (pid == 0) {
        /* The child: nothing of the supervisor's loop is touched, its
         * descriptors are closed; a loop of its own serves slot s. */
        if (r->sup) close(braid_loop_backend_fd(r->sup));
        for (int i = 0; i < r->nfds; i++)
            if (r->fds[i] != s->listen_fd) close(r->fds[i]);
        for (unsigned i = 0; i < r->n; i++)
            if (r->slots[i].parent_hand_fd >= 0) close(r->slots[i].parent_hand_fd);
        close(r->stats_pipe[0]);
        if (pair[0] >= 0) {
            close(pair[0]);
            s->hand_fd = pair[1];
        }
        s->accepted = 0;
        int rc = slot_serve(s);
        uint64_t rep[2] = { s->index, s->accepted };
        if (write(r->stats_pipe[1], rep, sizeof rep) != (ssize_t)sizeof rep) rc = rc < 0 ? rc : -EIO;
        _exit(rc < 0 ? 1 : 0);
    }
    s->pid = pid;
    r->alive++;
    if (pair[0] >= 0) {
        close(pair[1]);
        s->parent_hand_fd = pair[0];
        if (r->sup) {
            sup_hand *h = braid_calloc(1, sizeof *h);
            if (h) {
                h->base.ops = &sup_hand_ops;
                h->slot = s;
                if (braid_transport_adopt(r->sup, pair[0], &h->base) == 0) s->hand = h->base.transport;
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

static void on_child(braid_signal *sig, int signo, void *arg) {
    (void)sig; (void)signo;
    serve_run *r = arg;
    read_stats(r);
    for (unsigned i = 0; i < r->n; i++) {
        serve_slot *s = &r->slots[i];
        int st;
        if (s->pid <= 0 || waitpid(s->pid, &st, WNOHANG) != s->pid) continue;
        s->pid = 0;
        r->alive--;
        if (!r->stopping && !r->o.no_restart) {
            braid__log(r->sup, BRAID_LOG_WARN, "serve: loop %u (process) %s %d; restarting it", i,
                       WIFSIGNALED(st) ? "killed by signal" : "exited with", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st));
            if (fork_child(r, s) == 0) r->restarts++;
        }
    }
    if (r->alive == 0) braid_loop_stop(r->sup);
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

static void grace_expired(braid_timer *t, void *arg) {
    (void)t;
    serve_run *r = arg;
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].pid > 0) kill(r->slots[i].pid, SIGKILL);
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
        for (unsigned i = 0; i < r->n; i++)
            if (r->slots[i].pid > 0) kill(r->slots[i].pid, SIGTERM);
        braid_timer_start(&r->grace_timer, r->o.drain_timeout + BRAID_SECONDS(1));
    } else {
        post_drain_all(r);
    }
}

int braid_serve(const char *endpoint, const braid_serve_options *opts, struct braid_serve_stats *out) {
    if (!endpoint || !opts || !opts->factory) return BRAID_EINVAL;
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
        r->slots[i] = (serve_slot){ .run = r, .index = i, .listen_fd = -1, .hand_fd = -1, .parent_hand_fd = -1 };
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
        if (s->parent_hand_fd < 0) continue;
        sup_hand *h = braid_calloc(1, sizeof *h);
        if (!h) { rc = BRAID_ENOMEM; goto out_loop; }
        h->base.ops = &sup_hand_ops;
        h->slot = s;
        int fd = s->parent_hand_fd;
        s->parent_hand_fd = -1;
        if ((rc = braid_transport_adopt(r->sup, fd, &h->base)) < 0) goto out_loop;
        s->hand = h->base.transport;
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
            if (r->slots[i].failed) rc = BRAID_EINVAL;
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
    braid_signal_stop(&sterm);
    braid_signal_stop(&sint);
    if (r->o.processes) braid_signal_stop(&schld);
    for (unsigned i = 0; i < r->n; i++)
        if (r->slots[i].hand) braid_transport_close(r->slots[i].hand, BRAID_FOREVER);
out_loop:
    for (int i = 0; i < 100 && braid_loop_free(r->sup) < 0; i++) braid_loop_run_once(r->sup, BRAID_LOOP_RUN_NOWAIT);
out_kill:
    for (unsigned i = 0; i < r->n; i++) {
        serve_slot *s = &r->slots[i];
        if (s->pid > 0) {
            kill(s->pid, SIGKILL);
            waitpid(s->pid, NULL, 0);
        }
        if (s->parent_hand_fd >= 0) close(s->parent_hand_fd);
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
