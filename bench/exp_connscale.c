/* connscale: the threads-vs-events study argued about in "A grotesque parody
 * of science" and "I Can Draw Graphs Too" (Glyph Lefkowitz, 2005) and never
 * published. One protocol (connscale_proto.h: read 16
 * bytes {seq, x}, answer {seq, 2x+1}, close), served under four concurrency
 * models by the same protocol function:
 *
 *   thread  a thread per connection, blocking I/O (an acceptor thread
 *           starts a detached thread per accepted socket)
 *   pool    a fixed pool of worker threads with blocking I/O, fed by an
 *           acceptor thread through a queue
 *   loop    one braid loop (fd watchers), non-blocking I/O
 *   procs   N braid loops on braid_serve (braid/process.h): N processes
 *           (or threads with --threads) sharing the port by --method
 *           (default reuseport: a SO_REUSEPORT listener each, the kernel
 *           spreads connections), serving the stream model's protocol
 * and two peers: a raw hand-written epoll program (peers/epoll_raw.c, the
 * floor) and Twisted on its epoll reactor (peers/connscale_twisted.py).
 *
 *   braid-bench serve connscale --port P [--model loop|thread|pool|procs|stream]
 *       [--processes N] [--threads N] [--method M] [--stats-file F]
 *       [--backend B] [--seconds S] [--backlog B] [--pool T]
 * (stream: the protocol on braid's transport layer, when braid/stream.h is
 * in the build)
 * serves alone so any client can drive it: prints "ready PORT", serves until
 * a line "quit" on stdin or for S seconds (stdin at EOF: S seconds, or
 * forever without --seconds), then prints
 * "stats MAXRSS_KIB UTIME_US STIME_US NVCSW NIVCSW" (the procs model sums
 * its children).
 *
 * The load generator (this file, in braid-bench, on one braid loop) opens N
 * connections at once from source addresses rotating over 127.0.0.2-251,
 * waits until all are connected, then sends one request on each. */
#include "bench.h"
#include "connscale_proto.h"

#include <braid.h>
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define CS_BACKLOG 4096
#define CS_POOL 16
#define CS_THREAD_STACK (64 * 1024)

/* ======================================================================================
 * The servers
 * ====================================================================================== */
typedef struct cs_opts {
    int port;
    const char *model;
    int processes;
    const char *backend;
    int seconds;
    int backlog;
    int pool;
    int threads;                   /* procs model: loops in threads instead */
    const char *method;            /* procs model: braid_serve method */
    const char *stats_path;        /* procs model: per-loop counters (bench_loop_stats) */
} cs_opts;

static int cs_listen(int port, int backlog, bool reuseport, bool nonblock) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | (nonblock ? SOCK_NONBLOCK : 0), 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport) setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(fd, backlog) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    return fd;
}

static int cs_bound_port(int fd) {
    struct sockaddr_in a;
    socklen_t l = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &l) < 0) return -1;
    return ntohs(a.sin_port);
}

static void cs_nodelay(int fd) {
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

static void print_stats(const struct rusage *extra) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long maxrss = ru.ru_maxrss;
    long long ut = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec;
    long long st = (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    long nv = ru.ru_nvcsw, ni = ru.ru_nivcsw;
    if (extra) {   /* the procs model's children, summed (peak RSS too: they coexist) */
        maxrss += extra->ru_maxrss;
        ut += (long long)extra->ru_utime.tv_sec * 1000000 + extra->ru_utime.tv_usec;
        st += (long long)extra->ru_stime.tv_sec * 1000000 + extra->ru_stime.tv_usec;
        nv += extra->ru_nvcsw;
        ni += extra->ru_nivcsw;
    }
    printf("stats %ld %lld %lld %ld %ld\n", maxrss, ut, st, nv, ni);
    fflush(stdout);
}

/* Blocking I/O on one connection: the thread and pool models. */
static void serve_blocking(int fd) {
    uint8_t req[CS_MSG], resp[CS_MSG];
    size_t have = 0;
    while (have < CS_MSG) {
        ssize_t r = read(fd, req + have, CS_MSG - have);
        if (r > 0) have += (size_t)r;
        else if (r < 0 && errno == EINTR) continue;
        else break;
    }
    if (have == CS_MSG) {
        cs_reply(req, resp);
        size_t off = 0;
        while (off < CS_MSG) {
            ssize_t w = write(fd, resp + off, CS_MSG - off);
            if (w > 0) off += (size_t)w;
            else if (w < 0 && errno == EINTR) continue;
            else break;
        }
    }
    close(fd);
}

/* ---- thread per connection ----------------------------------------------------------------- */
static void *conn_thread(void *arg) {
    serve_blocking((int)(intptr_t)arg);
    return NULL;
}

static void *thread_acceptor(void *arg) {
    int lfd = (int)(intptr_t)arg;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, CS_THREAD_STACK);
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EMFILE || errno == ENFILE) usleep(1000);
            continue;
        }
        cs_nodelay(c);
        pthread_t t;
        if (pthread_create(&t, &attr, conn_thread, (void *)(intptr_t)c) != 0) close(c);   /* a failure the client sees */
    }
    return NULL;
}

/* ---- fixed pool ------------------------------------------------------------------------------- */
typedef struct fdq {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int *fds;
    size_t head, len, cap;
} fdq;

static fdq pool_q = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0 };

static void fdq_push(fdq *q, int fd) {
    pthread_mutex_lock(&q->mu);
    if (q->len == q->cap) {
        size_t ncap = q->cap ? q->cap * 2 : 1024;
        int *n = malloc(ncap * sizeof *n);
        if (!n) { pthread_mutex_unlock(&q->mu); close(fd); return; }
        for (size_t i = 0; i < q->len; i++) n[i] = q->fds[(q->head + i) % q->cap];
        free(q->fds);
        q->fds = n;
        q->cap = ncap;
        q->head = 0;
    }
    q->fds[(q->head + q->len++) % q->cap] = fd;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static void *pool_worker(void *arg) {
    fdq *q = arg;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->len == 0) pthread_cond_wait(&q->cv, &q->mu);
        int fd = q->fds[q->head];
        q->head = (q->head + 1) % q->cap;
        q->len--;
        pthread_mutex_unlock(&q->mu);
        serve_blocking(fd);
    }
    return NULL;
}

static void *pool_acceptor(void *arg) {
    int lfd = (int)(intptr_t)arg;
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EMFILE || errno == ENFILE) usleep(1000);
            continue;
        }
        cs_nodelay(c);
        fdq_push(&pool_q, c);
    }
    return NULL;
}

/* Wait for "quit" on stdin (or EOF) or the time limit. */
static void control_wait(int seconds) {
    uint64_t end = seconds > 0 ? bench_now_ns() + (uint64_t)seconds * 1000000000ull : UINT64_MAX;
    char line[128];
    for (;;) {
        uint64_t now = bench_now_ns();
        if (now >= end) return;
        int ms = end == UINT64_MAX ? -1 : (int)((end - now) / 1000000 + 1);
        struct pollfd p = { .fd = 0, .events = POLLIN };
        int n = poll(&p, 1, ms);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        ssize_t r = read(0, line, sizeof line - 1);
        if (r <= 0) {
            /* EOF: nobody controls us; serve until the time limit (or forever). */
            if (seconds <= 0) { pause(); }
            while (bench_now_ns() < end) usleep(100000);
            return;
        }
        line[r] = 0;
        if (strstr(line, "quit")) return;
    }
}

static int serve_threads(const cs_opts *o, bool pool) {
    int lfd = cs_listen(o->port, o->backlog, false, false);
    if (lfd < 0) { fprintf(stderr, "connscale: listen: %s\n", strerror(-lfd)); return 1; }
    pthread_t t;
    if (pool) {
        for (int i = 0; i < o->pool; i++) {
            pthread_attr_t attr;
            pthread_attr_init(&attr);
            pthread_attr_setstacksize(&attr, CS_THREAD_STACK);
            if (pthread_create(&t, &attr, pool_worker, &pool_q) != 0) return 1;
            pthread_detach(t);
        }
        if (pthread_create(&t, NULL, pool_acceptor, (void *)(intptr_t)lfd) != 0) return 1;
    } else {
        if (pthread_create(&t, NULL, thread_acceptor, (void *)(intptr_t)lfd) != 0) return 1;
    }
    pthread_detach(t);
    printf("ready %d\n", cs_bound_port(lfd));
    fflush(stdout);
    control_wait(o->seconds);
    print_stats(NULL);
    _exit(0);   /* threads may be blocked in I/O: do not wait for them */
}

/* ---- one braid loop ------------------------------------------------------------------------------ */
typedef struct cs_conn {
    braid_watch w;
    uint8_t buf[CS_MSG];
    uint8_t have, sent;
} cs_conn;

typedef struct cs_server {
    braid_loop *loop;
    braid_watch listen_w, ctl_w;
    braid_timer limit;
    int lfd;
    size_t open;
} cs_server;

static void conn_close(cs_server *s, cs_conn *c) {
    int fd = c->w.fd;
    braid_watch_close(&c->w);
    close(fd);
    braid_free(c);
    s->open--;
}

static void conn_cb(braid_watch *w, unsigned events, void *arg) {
    cs_server *s = arg;
    cs_conn *c = (cs_conn *)w;   /* the watcher is the first member */
    (void)events;
    if (c->have < CS_MSG) {
        ssize_t r = read(w->fd, c->buf + c->have, CS_MSG - c->have);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (r <= 0) { conn_close(s, c); return; }
        c->have += (uint8_t)r;
        if (c->have < CS_MSG) return;
        uint8_t req[CS_MSG];
        memcpy(req, c->buf, CS_MSG);
        cs_reply(req, c->buf);   /* the response replaces the request */
    }
    ssize_t n = write(w->fd, c->buf + c->sent, CS_MSG - c->sent);
    if (n > 0) c->sent += (uint8_t)n;
    if (n < 0 && errno == EAGAIN) { braid_watch_set_interest(w, BRAID_WATCH_WRITE); return; }
    if (n > 0 && c->sent < CS_MSG) { braid_watch_set_interest(w, BRAID_WATCH_WRITE); return; }
    conn_close(s, c);
}

static void listen_cb(braid_watch *w, unsigned events, void *arg) {
    cs_server *s = arg;
    (void)w; (void)events;
    for (;;) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) return;   /* EAGAIN, or EMFILE: the next readiness retries */
        cs_nodelay(fd);
        cs_conn *c = braid_malloc(sizeof *c);
        if (!c) { close(fd); continue; }
        c->have = c->sent = 0;
        if (braid_watch_init(s->loop, &c->w, fd, conn_cb, s) < 0 || braid_watch_set_interest(&c->w, BRAID_WATCH_READ) < 0) {
            braid_watch_close(&c->w);
            braid_free(c);
            close(fd);
            continue;
        }
        s->open++;
    }
}

static void ctl_cb(braid_watch *w, unsigned events, void *arg) {
    cs_server *s = arg;
    (void)events;
    char line[128];
    ssize_t r = read(w->fd, line, sizeof line - 1);
    if (r > 0) {
        line[r] = 0;
        if (!strstr(line, "quit")) return;
    }
    if (r <= 0) {   /* EOF: nobody controls us; serve until the time limit, or forever */
        braid_watch_close(w);
        return;
    }
    braid_loop_stop(s->loop);
}

static void limit_cb(braid_timer *t, void *arg) { (void)t; braid_loop_stop(((cs_server *)arg)->loop); }

static braid_backend cs_backend(const char *b) {
    if (!b) return BRAID_BACKEND_DEFAULT;
    if (!strcmp(b, "select")) return BRAID_BACKEND_SELECT;
    if (!strcmp(b, "poll")) return BRAID_BACKEND_POLL;
    if (!strcmp(b, "uring")) return BRAID_BACKEND_URING;
    return BRAID_BACKEND_EPOLL;
}

/* Run one braid loop serving lfd. ctl: watch stdin for "quit". */
static int run_loop_server(const cs_opts *o, int lfd, bool ctl, int ready_fd) {
    cs_server s;
    memset(&s, 0, sizeof s);
    s.lfd = lfd;
    braid_loop_options lo = { .backend = cs_backend(o->backend) };
    if (braid_loop_new(&lo, &s.loop) < 0) return 1;
    braid_watch_init(s.loop, &s.listen_w, lfd, listen_cb, &s);
    braid_watch_set_interest(&s.listen_w, BRAID_WATCH_READ);
    braid_timer_init(s.loop, &s.limit, limit_cb, &s);
    if (o->seconds > 0) braid_timer_start(&s.limit, BRAID_SECONDS(o->seconds));
    if (ctl) {
        braid_watch_init(s.loop, &s.ctl_w, 0, ctl_cb, &s);
        braid_watch_set_interest(&s.ctl_w, BRAID_WATCH_READ);
    }
    if (ready_fd >= 0) {
        ssize_t r = write(ready_fd, "r", 1);
        (void)r;
        close(ready_fd);
    } else {
        printf("ready %d\n", cs_bound_port(lfd));
        fflush(stdout);
    }
    braid_loop_run(s.loop);
    /* The process exits next: open connections and the loop go with it
     * (nothing to flush; the stats are read by the caller). */
    return 0;
}

/* ---- one braid loop on braid's transport layer (braid/stream.h) ------------------------------
 * The same protocol written as a braid protocol: data_received collects the
 * 16 bytes, writes the answer and loses the connection. This is what a
 * braid user writes; braid-loop above is the fd-watcher floor beneath it. */
#if __has_include(<braid/endpoint.h>)
#include <braid/endpoint.h>
#define CS_HAVE_STREAM 1

typedef struct cs_proto {
    braid_protocol base;
    uint8_t buf[CS_MSG];
    uint8_t have;
} cs_proto;

static void cs_data(braid_protocol *p, const void *data, size_t len) {
    cs_proto *c = (cs_proto *)p;
    if (c->have == CS_MSG) return;   /* already answered; the rest is ignored */
    size_t take = len < (size_t)(CS_MSG - c->have) ? len : (size_t)(CS_MSG - c->have);
    memcpy(c->buf + c->have, data, take);
    c->have += (uint8_t)take;
    if (c->have < CS_MSG) return;
    uint8_t resp[CS_MSG];
    cs_reply(c->buf, resp);
    if (p->user) __atomic_fetch_add((uint64_t *)p->user, 1, __ATOMIC_RELAXED);   /* procs: the loop's count */
    braid_transport_write(p->transport, resp, CS_MSG);
    braid_transport_close(p->transport, BRAID_FOREVER);
}

static const braid_protocol_ops cs_proto_ops = { .data_received = cs_data };

typedef struct cs_stream_server {
    braid_loop *loop;
    braid_watch ctl_w;
    braid_timer limit;
} cs_stream_server;

static void stream_ctl_cb(braid_watch *w, unsigned events, void *arg) {
    cs_stream_server *s = arg;
    (void)events;
    char line[128];
    ssize_t r = read(w->fd, line, sizeof line - 1);
    if (r <= 0) { braid_watch_close(w); return; }
    line[r] = 0;
    if (strstr(line, "quit")) braid_loop_stop(s->loop);
}

static void stream_limit_cb(braid_timer *t, void *arg) { (void)t; braid_loop_stop(((cs_stream_server *)arg)->loop); }

static int serve_stream(const cs_opts *o) {
    cs_stream_server s;
    memset(&s, 0, sizeof s);
    braid_loop_options lo = { .backend = cs_backend(o->backend) };
    if (braid_loop_new(&lo, &s.loop) < 0) return 1;
    braid_factory f;
    braid_factory_init(&f, &cs_proto_ops, sizeof(cs_proto), NULL);
    braid_listener *l;
    braid_endpoint tl = { .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .port = o->port, .backlog = o->backlog };
    int rc = braid_endpoint_listener(braid_endpoint_listen_typed(s.loop, &tl, &f), &l);
    if (rc < 0) { fprintf(stderr, "connscale: braid_endpoint_listen_typed: %s\n", braid_strerror(rc)); return 1; }
    braid_address addr;
    braid_listener_address(l, &addr);
    braid_timer_init(s.loop, &s.limit, stream_limit_cb, &s);
    if (o->seconds > 0) braid_timer_start(&s.limit, BRAID_SECONDS(o->seconds));
    braid_watch_init(s.loop, &s.ctl_w, 0, stream_ctl_cb, &s);
    braid_watch_set_interest(&s.ctl_w, BRAID_WATCH_READ);
    printf("ready %d\n", braid_address_port(&addr));
    fflush(stdout);
    braid_loop_run(s.loop);
    print_stats(NULL);
    /* Open transports, the listener and the loop go with the process. */
    _exit(0);
}

/* ---- the procs model: N loops on braid_serve ------------------------------------------------
 * braid_serve runs the stream protocol above in N loops (processes, or
 * threads with --threads) sharing the port by --method. Each child process
 * sends its getrusage to the supervisor when its loop is gone (from
 * factory_done), which prints the sum; with a --stats-file each loop counts
 * its accepts and answers there. */
typedef struct cs_multi {
    const cs_opts *o;
    braid_factory proto[BENCH_LOOP_STATS_MAX], counting[BENCH_LOOP_STATS_MAX];
    bench_counting link[BENCH_LOOP_STATS_MAX];
    bench_loop_stats *stats;
    int report[2];                 /* children's rusage, to the supervisor */
} cs_multi;

static braid_factory *cs_multi_factory(braid_loop *loop, unsigned i, void *arg) {
    (void)loop;
    cs_multi *m = arg;
    braid_factory_init(&m->proto[i], &cs_proto_ops, sizeof(cs_proto), m->stats ? &m->stats->loop[i].requests : NULL);
    if (!m->stats) return &m->proto[i];
    m->link[i] = (bench_counting){ &m->proto[i], &m->stats->loop[i].accepts };
    bench_counting_factory_init(&m->counting[i], &m->link[i]);
    return &m->counting[i];
}

static void cs_multi_done(braid_factory *f, unsigned i, void *arg) {
    (void)f; (void)i;
    cs_multi *m = arg;
    if (!m->o->threads) {   /* a child: its own usage, summed by the supervisor */
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        if (write(m->report[1], &ru, sizeof ru) != (ssize_t)sizeof ru) {}
    }
}

/* "quit" on stdin or --seconds: SIGTERM to ourselves, which braid_serve
 * stops on (this thread starts from on_listening, inside braid_serve, so it
 * inherits the blocked SIGTERM as braid_serve asks of other threads). */
static void *cs_control(void *arg) {
    control_wait(((cs_multi *)arg)->o->seconds);
    kill(getpid(), SIGTERM);
    return NULL;
}
static void cs_multi_listening(int port, void *arg) {
    printf("ready %d\n", port);
    fflush(stdout);
    pthread_t t;
    if (pthread_create(&t, NULL, cs_control, arg) == 0) pthread_detach(t);
}

static int serve_procs(const cs_opts *o) {
    static cs_multi m;
    m.o = o;
    if (o->stats_path && !(m.stats = bench_loop_stats_map(o->stats_path, true))) {
        fprintf(stderr, "connscale: --stats-file %s: %s\n", o->stats_path, strerror(errno));
        return 1;
    }
    if (pipe2(m.report, O_CLOEXEC) < 0) return 1;
    char ep[96];
    snprintf(ep, sizeof ep, "tcp:%d:interface=127.0.0.1:backlog=%d", o->port, o->backlog);
    int n = o->threads > 0 ? o->threads : o->processes;
    braid_serve_options so = {
        .loops = (unsigned)(n < 1 ? 1 : n > 64 ? 64 : n), .processes = o->threads <= 0,
        .method = (braid_serve_method)bench_serve_method(o->method), .backend = cs_backend(o->backend),
        .drain_timeout = BRAID_SECONDS(1), .factory = cs_multi_factory, .factory_done = cs_multi_done,
        .on_listening = cs_multi_listening, .arg = &m,
    };
    int rc = braid_serve(ep, &so, NULL);
    if (rc < 0) {
        fprintf(stderr, "connscale: braid_serve %s: %s\n", ep, braid_strerror(rc));
        return 1;
    }
    close(m.report[1]);
    struct rusage sum, ru;
    memset(&sum, 0, sizeof sum);
    bool any = false;
    while (read(m.report[0], &ru, sizeof ru) == (ssize_t)sizeof ru) {
        any = true;
        sum.ru_maxrss += ru.ru_maxrss;   /* they coexist: peak RSS adds up */
        sum.ru_utime.tv_sec += ru.ru_utime.tv_sec;
        sum.ru_utime.tv_usec += ru.ru_utime.tv_usec;
        sum.ru_stime.tv_sec += ru.ru_stime.tv_sec;
        sum.ru_stime.tv_usec += ru.ru_stime.tv_usec;
        sum.ru_nvcsw += ru.ru_nvcsw;
        sum.ru_nivcsw += ru.ru_nivcsw;
    }
    print_stats(any ? &sum : NULL);   /* threads: the process's own usage holds every loop */
    _exit(0);
}
#endif

static int serve(int argc, char **argv) {
    cs_opts o = { .port = 0, .model = "loop", .processes = 0, .backend = NULL, .seconds = 0,
                  .backlog = CS_BACKLOG, .pool = CS_POOL, .method = "reuseport" };
    const bench_opt opts[] = {
        { .name = "--port", .kind = BENCH_OPT_INT, .value = &o.port, .metavar = "P",
          .help = "port to listen on (0: any, printed as \"ready PORT\")" },
        { .name = "--model", .kind = BENCH_OPT_STR, .value = &o.model, .metavar = "M", .help = "concurrency model",
#ifdef CS_HAVE_STREAM
          .choices = "loop|thread|pool|procs|stream" },
#else
          .choices = "loop|thread|pool" },
#endif
        { .name = "--processes", .kind = BENCH_OPT_INT, .value = &o.processes, .metavar = "N",
          .help = "processes of the procs model (0: one per CPU)" },
        { .name = "--threads", .kind = BENCH_OPT_INT, .value = &o.threads, .metavar = "N",
          .help = "procs model: N loops in threads instead of processes" },
        BENCH_SERVE_METHOD(&o.method),
        { .name = "--stats-file", .kind = BENCH_OPT_STR, .value = &o.stats_path, .metavar = "F",
          .help = "procs model: per-loop accept and answer counts, mapped shared (bench_loop_stats)" },
        { .name = "--backend", .kind = BENCH_OPT_STR, .value = &o.backend, .metavar = "B",
          .help = "braid backend", .choices = "select|poll|epoll|uring|io_uring" },
        { .name = "--seconds", .kind = BENCH_OPT_INT, .value = &o.seconds, .metavar = "S",
          .help = "serve at most S seconds (0: until stopped)" },
        { .name = "--backlog", .kind = BENCH_OPT_INT, .value = &o.backlog, .metavar = "N", .help = "listen backlog" },
        { .name = "--pool", .kind = BENCH_OPT_INT, .value = &o.pool, .metavar = "N",
          .help = "threads of the pool model" },
        { 0 } };
    int rc;
    if (!bench_serve_args("connscale", argc, argv, opts, &rc)) return rc;
    if (o.processes <= 0) o.processes = (int)sysconf(_SC_NPROCESSORS_ONLN);
    signal(SIGPIPE, SIG_IGN);
    if (!strcmp(o.model, "thread")) return serve_threads(&o, false);
    if (!strcmp(o.model, "pool")) return serve_threads(&o, true);
#ifdef CS_HAVE_STREAM
    if (!strcmp(o.model, "procs")) return serve_procs(&o);
    if (!strcmp(o.model, "stream")) return serve_stream(&o);
#endif
    int lfd = cs_listen(o.port, o.backlog, false, true);
    if (lfd < 0) { fprintf(stderr, "connscale: listen: %s\n", strerror(-lfd)); return 1; }
    run_loop_server(&o, lfd, true, -1);
    print_stats(NULL);
    /* Connections still open and the loop go with the process (a server
     * stopped by its driver has nothing to flush). */
    _exit(0);
}

/* ======================================================================================
 * The study: servers spawned one run at a time, a braid load generator
 * ====================================================================================== */
enum { K_MODEL, K_RAW, K_TWISTED };
typedef struct cs_impl {
    const char *name;     /* row impl */
    const char *model;    /* for K_MODEL */
    int kind;
    const char *backend;  /* row backend */
} cs_impl;

static const cs_impl all_impls[] = {
    { "braid-loop", "loop", K_MODEL, "epoll" },
    { "epoll-raw", NULL, K_RAW, "epoll" },
    { "braid-loop", "loop", K_MODEL, "uring" },
#ifdef CS_HAVE_STREAM
    { "braid-stream", "stream", K_MODEL, "epoll" },
#endif
    { "braid-procs", "procs", K_MODEL, "epoll" },
    { "threads", "thread", K_MODEL, "" },
    { "pool", "pool", K_MODEL, "" },
    { "twisted", NULL, K_TWISTED, "epoll" },
};
#define CS_NIMPL ((int)(sizeof all_impls / sizeof all_impls[0]))

typedef struct server_proc {
    pid_t pid;
    int in_fd, out_fd;
    char buf[512];
    size_t blen;
} server_proc;

/* Read one line from the server's stdout within ms milliseconds. */
static int sp_line(server_proc *sp, char *line, size_t len, int ms) {
    uint64_t end = bench_now_ns() + (uint64_t)ms * 1000000ull;
    for (;;) {
        char *nl = memchr(sp->buf, '\n', sp->blen);
        if (nl) {
            size_t l = (size_t)(nl - sp->buf);
            snprintf(line, len, "%.*s", (int)l, sp->buf);
            memmove(sp->buf, nl + 1, sp->blen - l - 1);
            sp->blen -= l + 1;
            return 0;
        }
        uint64_t now = bench_now_ns();
        if (now >= end || sp->blen == sizeof sp->buf) return -1;
        struct pollfd p = { .fd = sp->out_fd, .events = POLLIN };
        int n = poll(&p, 1, (int)((end - now) / 1000000 + 1));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) continue;
        ssize_t r = read(sp->out_fd, sp->buf + sp->blen, sizeof sp->buf - sp->blen);
        if (r <= 0) return -1;
        sp->blen += (size_t)r;
    }
}

/* Placement "split": the server (and its threads and children) on CPU 1,
 * the load generator on CPU 0. */
static void pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
}

static int spawn_server(bench_ctx *ctx, const cs_impl *im, int port, server_proc *sp, bool split) {
    char ports[16], raw[4200], py[4200], procs[16];
    snprintf(ports, sizeof ports, "%d", port);
    snprintf(procs, sizeof procs, "%ld", sysconf(_SC_NPROCESSORS_ONLN));
    const char *argv[20];
    int a = 0;
    if (im->kind == K_MODEL) {
        argv[a++] = ctx->self_exe; argv[a++] = "serve"; argv[a++] = "connscale";
        argv[a++] = "--port"; argv[a++] = ports; argv[a++] = "--model"; argv[a++] = im->model;
        if (!strcmp(im->model, "loop") || !strcmp(im->model, "procs") || !strcmp(im->model, "stream")) {
            argv[a++] = "--backend";
            argv[a++] = im->backend;
        }
        if (!strcmp(im->model, "procs")) { argv[a++] = "--processes"; argv[a++] = procs; }
    } else if (im->kind == K_RAW) {
        snprintf(raw, sizeof raw, "%s", ctx->self_exe);
        char *sl = strrchr(raw, '/');
        snprintf(sl ? sl + 1 : raw, sizeof raw - (size_t)(sl ? sl + 1 - raw : 0), "braid-bench-epoll-raw");
        argv[a++] = raw; argv[a++] = "--port"; argv[a++] = ports;
    } else {
        snprintf(py, sizeof py, "%s/peers/connscale_twisted.py", ctx->data_dir);
        argv[a++] = "/usr/bin/python3"; argv[a++] = py; argv[a++] = "--port"; argv[a++] = ports;
    }
    argv[a++] = "--backlog";
    char bl[16];
    snprintf(bl, sizeof bl, "%d", CS_BACKLOG);
    argv[a++] = bl;
    argv[a] = NULL;
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) < 0) return -1;
    if (pipe2(out, O_CLOEXEC) < 0) { close(in[0]); close(in[1]); return -1; }
    char logpath[4200];
    snprintf(logpath, sizeof logpath, "%s/connscale-server.log", ctx->out_dir);
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (split) pin_self(1);
        dup2(in[0], 0);
        dup2(out[1], 1);
        int lf = open(logpath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
        if (lf >= 0) dup2(lf, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(in[0]);
    close(out[1]);
    memset(sp, 0, sizeof *sp);
    sp->pid = pid;
    sp->in_fd = in[1];
    sp->out_fd = out[0];
    char line[256];
    if (sp_line(sp, line, sizeof line, 15000) < 0 || strncmp(line, "ready", 5)) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        close(sp->in_fd);
        close(sp->out_fd);
        return -1;
    }
    return 0;
}

typedef struct sp_stats { double maxrss_kib, utime_us, stime_us, csw; } sp_stats;

static int stop_server(server_proc *sp, sp_stats *st) {
    ssize_t w = write(sp->in_fd, "quit\n", 5);
    (void)w;
    char line[256];
    int rc = -1;
    if (sp_line(sp, line, sizeof line, 10000) == 0) {
        long maxrss;
        long long ut, stt;
        long nv, ni;
        if (sscanf(line, "stats %ld %lld %lld %ld %ld", &maxrss, &ut, &stt, &nv, &ni) == 5) {
            st->maxrss_kib = (double)maxrss;
            st->utime_us = (double)ut;
            st->stime_us = (double)stt;
            st->csw = (double)(nv + ni);
            rc = 0;
        }
    }
    close(sp->in_fd);
    close(sp->out_fd);
    /* Give it a moment to exit, then make sure. */
    for (int i = 0; i < 200; i++) {
        if (waitpid(sp->pid, NULL, WNOHANG) == sp->pid) return rc;
        usleep(10000);
    }
    kill(sp->pid, SIGKILL);
    waitpid(sp->pid, NULL, 0);
    return rc;
}

/* The server and its child processes (the procs model). */
static int tree_pids(pid_t pid, pid_t *out, int max) {
    int n = 0;
    out[n++] = pid;
    char path[96];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", pid, pid);
    FILE *f = fopen(path, "r");
    if (!f) return n;
    int c;
    while (n < max && fscanf(f, "%d", &c) == 1) out[n++] = c;
    fclose(f);
    return n;
}

static long tree_rss_kib(pid_t pid) {
    pid_t p[70];
    int n = tree_pids(pid, p, 70);
    long sum = 0;
    for (int i = 0; i < n; i++) {
        long r = bench_rss_kib(p[i]);
        if (r > 0) sum += r;
    }
    return sum;
}

static double tree_cpu_us(pid_t pid) {
    pid_t p[70];
    int n = tree_pids(pid, p, 70);
    double sum = 0;
    for (int i = 0; i < n; i++) {
        double c = bench_cpu_us(p[i]);
        if (isfinite(c)) sum += c;
    }
    return sum;
}

static long tree_fds(pid_t pid) {
    pid_t p[70];
    int n = tree_pids(pid, p, 70);
    long sum = 0;
    for (int i = 0; i < n; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd", p[i]);
        DIR *d = opendir(path);
        if (!d) continue;
        struct dirent *e;
        while ((e = readdir(d))) if (e->d_name[0] != '.') sum++;
        closedir(d);
    }
    return sum;
}

/* TcpExt ListenOverflows + ListenDrops... kept apart: overflows are accept
 * queue full; drops count every SYN dropped at a listener (overflows too). */
static void listen_counters(long long *overflows, long long *drops) {
    *overflows = *drops = -1;
    FILE *f = fopen("/proc/net/netstat", "r");
    if (!f) return;
    char hdr[8192], val[8192];
    while (fgets(hdr, sizeof hdr, f) && fgets(val, sizeof val, f)) {
        if (strncmp(hdr, "TcpExt:", 7)) continue;
        char *hs, *vs;
        char *h = strtok_r(hdr, " \n", &hs), *v = strtok_r(val, " \n", &vs);
        while (h && v) {
            if (!strcmp(h, "ListenOverflows")) *overflows = atoll(v);
            if (!strcmp(h, "ListenDrops")) *drops = atoll(v);
            h = strtok_r(NULL, " \n", &hs);
            v = strtok_r(NULL, " \n", &vs);
        }
    }
    fclose(f);
}

/* ---- the load generator ------------------------------------------------------------------------ */
enum { CL_CONNECTING, CL_CONNECTED, CL_WAITING, CL_DONE, CL_FAILED };
typedef struct cl_conn {
    braid_watch w;
    uint8_t resp[CS_MSG];
    uint8_t have, state;
    uint32_t seq;
} cl_conn;

typedef struct client {
    braid_loop *loop;
    cl_conn *c;
    int n, connected, failed, done;
    uint64_t t_last;
    braid_timer deadline;
    bool timed_out;
} client;

static uint64_t cs_x(uint32_t seq) { return (uint64_t)seq * 0x9E3779B97F4A7C15ull >> 3; }

static void cl_fail(client *cl, cl_conn *c) {
    int fd = c->w.fd;
    braid_watch_close(&c->w);
    close(fd);
    c->state = CL_FAILED;
    cl->failed++;
}

static void cl_check_stop(client *cl, bool phase2) {
    int settled = phase2 ? cl->done + cl->failed : cl->connected + cl->failed;
    if (settled >= cl->n) braid_loop_stop(cl->loop);
}

static void cl_cb(braid_watch *w, unsigned events, void *arg) {
    client *cl = arg;
    cl_conn *c = (cl_conn *)w;
    if (c->state == CL_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof err;
        getsockopt(w->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) { cl_fail(cl, c); cl_check_stop(cl, false); return; }
        c->state = CL_CONNECTED;
        braid_watch_set_interest(w, 0);
        cl->connected++;
        cl->t_last = bench_now_ns();
        cl_check_stop(cl, false);
        return;
    }
    if (c->state != CL_WAITING) return;
    (void)events;
    ssize_t r = read(w->fd, c->resp + c->have, CS_MSG - c->have);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) { cl_fail(cl, c); cl_check_stop(cl, true); return; }
    c->have += (uint8_t)r;
    if (c->have < CS_MSG) return;
    bool ok = cs_get_le64(c->resp) == c->seq && cs_get_le64(c->resp + 8) == 2 * cs_x(c->seq) + 1;
    int fd = w->fd;
    braid_watch_close(w);
    close(fd);
    if (!ok) { c->state = CL_FAILED; cl->failed++; }
    else { c->state = CL_DONE; cl->done++; }
    cl->t_last = bench_now_ns();
    cl_check_stop(cl, true);
}

static void cl_deadline(braid_timer *t, void *arg) {
    client *cl = arg;
    (void)t;
    cl->timed_out = true;
    braid_loop_stop(cl->loop);
}

typedef struct run_result {
    double connect_ms, complete_ms, failures, overflows, drops;
    double mem_per_conn_b, sys_mem_per_conn_b, peak_rss_kib, cpu_us_per_conn, csw;
} run_result;

/* One run: a fresh server, N connections, one request each. */
static int one_run(bench_ctx *ctx, const cs_impl *im, int n, int timeout_s, bool split, run_result *rr) {
    for (double *p = &rr->connect_ms; p <= &rr->csw; p++) *p = NAN;
    int port = bench_free_port();
    if (port <= 0) return -1;
    server_proc sp;
    if (spawn_server(ctx, im, port, &sp, split) < 0) return -1;
    cpu_set_t saved;
    sched_getaffinity(0, sizeof saved, &saved);
    if (split) pin_self(0);
    usleep(20000);   /* let it settle (python finishes importing, children listen) */
    long rss0 = tree_rss_kib(sp.pid);
    long fds0 = tree_fds(sp.pid);
    double cpu0 = tree_cpu_us(sp.pid);
    long avail0 = bench_mem_available_kib();
    long long ov0, dr0, ov1, dr1;
    listen_counters(&ov0, &dr0);

    client cl;
    memset(&cl, 0, sizeof cl);
    cl.n = n;
    cl.c = calloc((size_t)n, sizeof *cl.c);
    braid_loop_options lo = { .backend = BRAID_BACKEND_EPOLL };
    if (!cl.c || braid_loop_new(&lo, &cl.loop) < 0) {
        free(cl.c);
        sp_stats st;
        stop_server(&sp, &st);
        return -1;
    }
    braid_timer_init(cl.loop, &cl.deadline, cl_deadline, &cl);
    braid_timer_start(&cl.deadline, BRAID_SECONDS(timeout_s));

    /* Phase 1: N connects at once. */
    uint64_t t0 = bench_now_ns();
    cl.t_last = t0;
    struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    for (int i = 0; i < n; i++) {
        cl_conn *c = &cl.c[i];
        c->seq = (uint32_t)i;
        c->state = CL_FAILED;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) { cl.failed++; continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct sockaddr_in src = { .sin_family = AF_INET,
                                   .sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % 250)) };
        int rc = bind(fd, (struct sockaddr *)&src, sizeof src);
        if (rc == 0) rc = connect(fd, (struct sockaddr *)&dst, sizeof dst);
        if (rc < 0 && errno != EINPROGRESS) { close(fd); cl.failed++; continue; }
        if (braid_watch_init(cl.loop, &c->w, fd, cl_cb, &cl) < 0) { close(fd); cl.failed++; continue; }
        if (rc == 0) {
            c->state = CL_CONNECTED;
            cl.connected++;
            cl.t_last = bench_now_ns();
        } else {
            c->state = CL_CONNECTING;
            braid_watch_set_interest(&c->w, BRAID_WATCH_WRITE);
        }
    }
    if (cl.connected + cl.failed < n) braid_loop_run(cl.loop);
    uint64_t t_conn = (cl.timed_out ? bench_now_ns() : cl.t_last) - t0;
    int connected = cl.connected;
    for (int i = 0; i < n; i++)
        if (cl.c[i].state == CL_CONNECTING) cl_fail(&cl, &cl.c[i]);

    /* Memory at N idle connections: wait until the server holds them all. */
    uint64_t wait_end = bench_now_ns() + 5000000000ull;
    while (tree_fds(sp.pid) < fds0 + connected && bench_now_ns() < wait_end) usleep(5000);
    usleep(20000);
    long rss1 = tree_rss_kib(sp.pid);
    long avail1 = bench_mem_available_kib();

    /* Phase 2: one request on each. */
    cl.timed_out = false;
    braid_timer_start(&cl.deadline, BRAID_SECONDS(timeout_s));
    uint64_t t1 = bench_now_ns();
    cl.t_last = t1;
    for (int i = 0; i < n; i++) {
        cl_conn *c = &cl.c[i];
        if (c->state != CL_CONNECTED) continue;
        uint8_t req[CS_MSG];
        cs_put_le64(req, c->seq);
        cs_put_le64(req + 8, cs_x(c->seq));
        ssize_t w = write(c->w.fd, req, CS_MSG);
        if (w != CS_MSG) { cl_fail(&cl, c); continue; }
        c->state = CL_WAITING;
        braid_watch_set_interest(&c->w, BRAID_WATCH_READ);
    }
    if (cl.done + cl.failed < n) braid_loop_run(cl.loop);
    uint64_t t_req = (cl.timed_out ? bench_now_ns() : cl.t_last) - t1;
    for (int i = 0; i < n; i++)
        if (cl.c[i].state == CL_CONNECTED || cl.c[i].state == CL_WAITING) cl_fail(&cl, &cl.c[i]);
    braid_timer_stop(&cl.deadline);
    braid_loop_free(cl.loop);
    free(cl.c);

    listen_counters(&ov1, &dr1);
    double cpu1 = tree_cpu_us(sp.pid);
    sp_stats st = { NAN, NAN, NAN, NAN };
    int src = stop_server(&sp, &st);
    sched_setaffinity(0, sizeof saved, &saved);

    rr->connect_ms = (double)t_conn / 1e6;
    rr->complete_ms = (double)(t_conn + t_req) / 1e6;
    rr->failures = n - cl.done;
    rr->overflows = ov0 >= 0 && ov1 >= 0 ? (double)(ov1 - ov0) : NAN;
    rr->drops = dr0 >= 0 && dr1 >= 0 ? (double)(dr1 - dr0) : NAN;
    rr->mem_per_conn_b = (double)(rss1 - rss0) * 1024.0 / n;
    rr->sys_mem_per_conn_b = avail0 > 0 && avail1 > 0 ? (double)(avail0 - avail1) * 1024.0 / n : NAN;
    if (src == 0) {
        rr->peak_rss_kib = st.maxrss_kib;
        /* CPU from ready to the end: the final rusage (which counts exited
         * threads and reaped children) minus /proc at ready. */
        rr->cpu_us_per_conn = (st.utime_us + st.stime_us - cpu0) / n;
        rr->csw = st.csw;
    } else {
        rr->cpu_us_per_conn = (cpu1 - cpu0) / n;
    }
    return 0;
}

typedef struct cs_state {
    int n, timeout_s;
    bool split;
    bool split_all;        /* full mode: every model in the split placement too */
    bool skip[CS_NIMPL];
    run_result res[CS_NIMPL][BENCH_MAX_RUNS];
} cs_state;

/* Which impls run in the split placement: all but braid-procs (its
 * processes would share one CPU) in full mode; in quick mode only the pair
 * the target is about, braid-loop and epoll-raw. */
static bool split_runs(const cs_state *s, int impl) {
    const cs_impl *im = &all_impls[impl];
    if (im->model && !strcmp(im->model, "procs")) return false;
    return s->split_all || im->kind == K_RAW ||
           (im->model && (!strcmp(im->model, "loop") || !strcmp(im->model, "stream")) && !strcmp(im->backend, "epoll"));
}

static void measure(bench_ctx *ctx, int impl, int run, void *arg) {
    cs_state *s = arg;
    run_result *rr = &s->res[impl][run];
    bool skip = s->skip[impl] || (s->split && !split_runs(s, impl));
    if (skip || one_run(ctx, &all_impls[impl], s->n, s->timeout_s, s->split, rr) < 0) {
        for (double *p = &rr->connect_ms; p <= &rr->csw; p++) *p = NAN;
        if (!skip) bench_note(ctx, "%s: a run at N=%d could not start its server", all_impls[impl].name, s->n);
    }
    usleep(20000);   /* let the previous server's sockets drain before the next */
}

static int run(bench_ctx *ctx) {
    signal(SIGPIPE, SIG_IGN);
    static const int full_n[] = { 100, 1000, 5000, 10000 };
    static const int quick_n[] = { 100, 1000, 10000 };
    static const int smoke_n[] = { 20 };
    const int *ns = ctx->full ? full_n : ctx->smoke ? smoke_n : quick_n;
    int nn = ctx->full ? 4 : ctx->smoke ? 1 : 3;
    cs_state *s = calloc(1, sizeof *s);
    if (!s) return -1;
    s->timeout_s = ctx->full ? 60 : 20;
    char logpath[4200];
    snprintf(logpath, sizeof logpath, "%s/connscale-server.log", ctx->out_dir);
    FILE *lf = fopen(logpath, "w");   /* the servers' stderr, this invocation only */
    if (lf) fclose(lf);
    char raw[4200];
    snprintf(raw, sizeof raw, "%s", ctx->self_exe);
    char *sl = strrchr(raw, '/');
    snprintf(sl ? sl + 1 : raw, sizeof raw - (size_t)(sl ? sl + 1 - raw : 0), "braid-bench-epoll-raw");
    bool have_uring = false;
    for (int b = 0; b < ctx->nbackends; b++) if (!strcmp(ctx->backends[b], "uring")) have_uring = true;
    for (int i = 0; i < CS_NIMPL; i++)
        if (!strcmp(all_impls[i].backend, "uring") && !have_uring) s->skip[i] = true;
    if (!have_uring) bench_note(ctx, "braid's io_uring backend is not available (or not selected): no braid-loop (uring) rows");
    if (access(raw, X_OK) != 0) {
        for (int i = 0; i < CS_NIMPL; i++) if (all_impls[i].kind == K_RAW) s->skip[i] = true;
        bench_note(ctx, "braid-bench-epoll-raw was not built next to braid-bench: no raw epoll rows");
    }
    char py[4200];
    snprintf(py, sizeof py, "%s/peers/connscale_twisted.py", ctx->data_dir);
    if (!bench_have_python_module("twisted") || access(py, R_OK) != 0) {
        for (int i = 0; i < CS_NIMPL; i++) if (all_impls[i].kind == K_TWISTED) s->skip[i] = true;
        bench_note(ctx, "python3-twisted is not installed for /usr/bin/python3: no Twisted rows");
    }
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && (long)rl.rlim_cur < 10100 && !ctx->smoke)
        bench_note(ctx, "ulimit -n is %ld: the largest N may fail for lack of fds", (long)rl.rlim_cur);
    const int runs = ctx->runs;   /* quick mode: 3 (.quick_runs below) */
    const char *names[CS_NIMPL];
    static char labels[CS_NIMPL][48];
    for (int i = 0; i < CS_NIMPL; i++) {
        snprintf(labels[i], sizeof labels[i], "%s%s%s", all_impls[i].name,
                 !strcmp(all_impls[i].backend, "uring") ? "/" : "", !strcmp(all_impls[i].backend, "uring") ? "uring" : "");
        names[i] = labels[i];
    }
    bool two_cpus = sysconf(_SC_NPROCESSORS_ONLN) >= 2;
    if (!two_cpus) bench_note(ctx, "one CPU online: the split placement is not measured");
    else bench_note(ctx, "placement \"split\" pins the server (all its threads) to CPU 1 and the load generator to "
                         "CPU 0; braid-procs is not run there (its processes would share one CPU)%s",
                    ctx->full ? "" : "; quick mode measures only braid-loop and epoll-raw there, at the largest N");
    s->split_all = ctx->full;
    int nsteps = nn + (two_cpus ? (ctx->full ? nn : 1) : 0), step = 0;
    for (int ni = 0; ni < nn; ni++) {
        for (int pl = 0; pl < 2; pl++) {
            s->split = pl == 1;
            if (s->split && (!two_cpus || (!ctx->full && ni != nn - 1))) continue;
            s->n = ns[ni];
            bench_progress_fraction(ctx, (double)step++ / nsteps);
            char label[48];
            snprintf(label, sizeof label, "N=%d%s", s->n, s->split ? " split" : "");
            bench_alternate(ctx, label, CS_NIMPL, names, measure, s);
            for (int i = 0; i < CS_NIMPL; i++) {
                if (s->skip[i] || (s->split && !split_runs(s, i))) continue;
                double v[12][BENCH_MAX_RUNS];
                for (int r = 0; r < runs; r++) {
                    run_result *rr = &s->res[i][r];
                    v[0][r] = rr->connect_ms; v[1][r] = rr->complete_ms; v[2][r] = rr->failures;
                    v[3][r] = rr->overflows; v[4][r] = rr->drops; v[5][r] = rr->mem_per_conn_b;
                    v[6][r] = rr->sys_mem_per_conn_b; v[7][r] = rr->peak_rss_kib; v[8][r] = rr->cpu_us_per_conn;
                    v[9][r] = rr->csw;
                }
                bench_row *r = bench_row_begin(ctx, all_impls[i].name, all_impls[i].backend);
                bench_row_param_str(r, "placement", s->split ? "split" : "unpinned");
                bench_row_param_int(r, "connections", s->n);
                bench_row_metric(r, "connect_ms", v[0], runs, "ms");
                bench_row_metric(r, "complete_ms", v[1], runs, "ms");
                bench_row_metric(r, "failures", v[2], runs, "conns");
                bench_row_metric(r, "listen_overflows", v[3], runs, "count");
                bench_row_metric(r, "listen_drops", v[4], runs, "count");
                bench_row_metric(r, "mem_per_conn", v[5], runs, "B");
                bench_row_metric(r, "sys_mem_per_conn", v[6], runs, "B");
                bench_row_metric(r, "peak_rss", v[7], runs, "KiB");
                bench_row_metric(r, "cpu_per_conn", v[8], runs, "us");
                bench_row_metric(r, "ctx_switches", v[9], runs, "count");
                bench_row_end(r);
            }
        }
    }
    free(s);
    return 0;
}

#ifdef CS_HAVE_STREAM
#define CS_STREAM_METHOD                                                                              \
    "braid-stream = one braid loop on epoll running the protocol on braid's transport layer "          \
    "(braid/stream.h: a braid_protocol whose data_received collects the 16 bytes, writes the answer "   \
    "and loses the connection; braid_endpoint_listen_typed with backlog 4096 and its default accept budget of 64 " \
    "per iteration; transports start with TCP_NODELAY) - the code a braid user writes; "
#else
#define CS_STREAM_METHOD                                                                              \
    "(braid's transport layer, braid/stream.h, was not in this build, so there is no braid-stream "    \
    "row); "
#endif

/* A target line: impl a within 1.1x of epoll-raw at N (pairwise). */
static void target_line(bench_ctx *ctx, FILE *html, const char *impl, const char *at, const char *placement) {
    const bench_row *a = bench_find_row(ctx, impl, "epoll", at, placement, NULL);
    const bench_row *r = bench_find_row(ctx, "epoll-raw", NULL, at, placement, NULL);
    double rm, rn, rx;
    if (!a || !r || !bench_pair_ratio(a, r, "complete_ms", &rm, &rn, &rx)) return;
    fprintf(html, "<li>%s ÷ epoll-raw completion time, %s: %.2f (run by run %.2f–%.2f): %s.</li>\n", impl,
            placement + strlen("placement="), rm, rn, rx, rm <= 1.1 ? "met" : "NOT met");
}

static void conclude(bench_ctx *ctx, FILE *html) {
    /* The largest N measured. */
    double nmax = 0;
    for (int i = 0; i < bench_nrows(ctx); i++) {
        double v;
        if (bench_row_param_num(bench_get_row(ctx, i), "connections", &v) && v > nmax) nmax = v;
    }
    if (nmax <= 0) return;
    char at[48];
    snprintf(at, sizeof at, "connections=%.0f", nmax);
    const char *unp = "placement=unpinned", *spl = "placement=split";
    const bench_row *loop = bench_find_row(ctx, "braid-loop", "epoll", at, unp, NULL);
    const bench_row *raw = bench_find_row(ctx, "epoll-raw", NULL, at, unp, NULL);
    fprintf(html, "<p>At %.0f simultaneous connections, unpinned:</p>\n<ul>\n", nmax);
    for (int i = 0; i < CS_NIMPL; i++) {
        const bench_row *r = bench_find_row(ctx, all_impls[i].name, all_impls[i].backend, at, unp, NULL);
        double conn, comp, fail, mem, cpu, csw;
        if (!r || !bench_row_metric_get(r, "complete_ms", &comp, NULL, NULL)) continue;
        bench_row_metric_get(r, "connect_ms", &conn, NULL, NULL);
        if (!bench_row_metric_get(r, "failures", &fail, NULL, NULL)) fail = NAN;
        if (!bench_row_metric_get(r, "mem_per_conn", &mem, NULL, NULL)) mem = NAN;
        if (!bench_row_metric_get(r, "cpu_per_conn", &cpu, NULL, NULL)) cpu = NAN;
        if (!bench_row_metric_get(r, "ctx_switches", &csw, NULL, NULL)) csw = NAN;
        fprintf(html, "<li><b>%s%s%s</b>: all connected after %.0f ms, all answered after %.0f ms; %.0f failed; "
                      "%.0f B of server memory (RSS) per connection; %.1f µs server CPU per connection; "
                      "%.0f context switches",
                all_impls[i].name, !strcmp(all_impls[i].backend, "uring") ? " (uring)" : "",
                "", conn, comp, fail, mem, cpu, csw);
        double rm, rn, rx;
        if (loop && r != loop && bench_pair_ratio(r, loop, "complete_ms", &rm, &rn, &rx))
            fprintf(html, "; %.2f× braid-loop's completion time (run by run %.2f–%.2f)", rm, rn, rx);
        fputs(".</li>\n", html);
    }
    fputs("</ul>\n", html);
    double mem;
    fprintf(html, "<p><b>Target</b>: braid's loop completes %.0f simultaneous connections within 1.1× of the raw "
                  "epoll program's time:</p>\n<ul>\n", nmax);
    target_line(ctx, html, "braid-loop", at, unp);
    target_line(ctx, html, "braid-loop", at, spl);
    target_line(ctx, html, "braid-stream", at, unp);
    target_line(ctx, html, "braid-stream", at, spl);
    fputs("</ul>\n", html);
    if (loop && raw) {
        double lcpu, rcpu;
        if (bench_row_metric_get(loop, "cpu_per_conn", &lcpu, NULL, NULL) &&
            bench_row_metric_get(raw, "cpu_per_conn", &rcpu, NULL, NULL))
            fprintf(html, "<p>Server CPU per connection, which does not depend on how the client is scheduled: "
                          "braid-loop %.1f µs, epoll-raw %.1f µs. Where a braid server finishes before the raw "
                          "program, the cause is scheduling on 2 shared cores (which process runs when, how many "
                          "wake-ups), not less work: braid makes at least the raw program's system calls per connection (plus an "
                          "epoll_ctl to unregister it).</p>\n",
                    lcpu, rcpu);
    }
    fputs("<p><b>Target</b> (≤ 1 KiB of user memory per connection):", html);
    for (int k = 0; k < 2; k++) {
        const bench_row *r = bench_find_row(ctx, k ? "braid-stream" : "braid-loop", "epoll", at, unp, NULL);
        if (r && bench_row_metric_get(r, "mem_per_conn", &mem, NULL, NULL))
            fprintf(html, " %s grew by %.0f B per connection: %s.", k ? "braid-stream" : "braid-loop", mem,
                    mem <= 1024 ? "met" : "NOT met");
    }
    fputs("</p>\n", html);
    /* The thread-per-connection result, whatever it is. */
    const bench_row *thr = bench_find_row(ctx, "threads", NULL, at, unp, NULL);
    double tf, tm, tc, lm = NAN, lc = NAN, tcomp, lcomp;
    if (thr && bench_row_metric_get(thr, "failures", &tf, NULL, NULL) &&
        bench_row_metric_get(thr, "complete_ms", &tcomp, NULL, NULL)) {
        if (!bench_row_metric_get(thr, "mem_per_conn", &tm, NULL, NULL)) tm = NAN;
        if (!bench_row_metric_get(thr, "cpu_per_conn", &tc, NULL, NULL)) tc = NAN;
        if (loop) {
            bench_row_metric_get(loop, "mem_per_conn", &lm, NULL, NULL);
            bench_row_metric_get(loop, "cpu_per_conn", &lc, NULL, NULL);
        }
        if (!loop || !bench_row_metric_get(loop, "complete_ms", &lcomp, NULL, NULL)) lcomp = NAN;
        double tratio = tcomp / lcomp;
        if (loop) bench_pair_ratio(thr, loop, "complete_ms", &tratio, NULL, NULL);
        if (tf > 0)
            fprintf(html, "<p><b>Thread per connection</b> failed %.0f of %.0f connections (median over runs) at this "
                          "size: see the server log (connscale-server.log) and the thread limits in the machine facts.",
                    tf, nmax);
        else
            fprintf(html, "<p><b>Thread per connection</b> served all %.0f connections: on this kernel, with 64 KiB "
                          "stacks, %.0f threads are no problem to create (in \"I Can Draw Graphs Too\", 2005, the machine stopped near 256). "
                          "It took %.2f× braid-loop's time to complete (median of the run-by-run ratios)",
                    nmax, nmax, tratio);
        if (tf <= 0 && isfinite(tm) && isfinite(lm) && lm > 0)
            fprintf(html, ", and each connection cost %.0f B of server memory (%.0f× braid-loop's %.0f B: a stack's "
                          "touched pages and thread bookkeeping)", tm, tm / lm, lm);
        if (tf <= 0 && isfinite(tc) && isfinite(lc) && lc > 0)
            fprintf(html, " and %.0f µs of server CPU (%.1f× braid-loop's, thread creation and scheduling)", tc, tc / lc);
        fputs(". Kernel-side costs (the thread's kernel stack, task struct) show in sys_mem_per_conn, which is "
              "system-wide and noisy on a shared machine.</p>\n", html);
    }
    fputs("<p>The pool bounds the number of threads but serves at most its size at once; with every request tiny "
          "and sent at once that limit costs little here, but a slow client would hold a worker. On 2 cores the load "
          "generator competes with the server, so the times measure the pair; CPU per connection separates the "
          "servers. Memory per connection comes from RSS, which grows in 4 KiB pages and allocator chunks: at "
          "N = 100 it is quantised noise; read it at the largest N.</p>\n", html);
}

BENCH_EXPERIMENT(connscale,
    .title = "Threads vs events: N simultaneous connections (\"I Can Draw Graphs Too\", 2005)",
    .question = "The oldest argument about servers: is a thread per connection as good as an event loop? In \"I Can "
                "Draw Graphs Too\" (2005) Twisted's author drew (but never published) graphs of the time to connect and the time to complete N "
                "simultaneous connections for threads and for Twisted's reactor. Here is that study, published: how "
                "long until N clients are all connected, how long until all are answered, and what each connection "
                "costs in memory and CPU - for a thread per connection, a thread pool, one braid loop, one braid loop "
                "per core, a hand-written epoll program and Twisted.",
    .method = "Protocol: the client sends 16 bytes {seq, x} (little-endian u64), the server answers {seq, 2x+1} and "
              "closes. braid's four models run the same protocol function (bench/connscale_proto.h): threads = an "
              "acceptor thread starting a detached thread per connection with blocking I/O (64 KiB stacks, the one "
              "tuning: the default 8 MiB would reserve 80 GB of address space at 10,000); pool = an acceptor thread "
              "feeding 16 worker threads (64 KiB stacks) through a queue, blocking I/O; braid-loop = one braid loop on "
              "epoll (and a second row on braid's io_uring backend) using braid's lowest layer, fd watchers "
              "(braid_watch: accept4 until EAGAIN, read, reply, close; a 20-byte state per connection); "
              CS_STREAM_METHOD
              "braid-procs = one braid loop per core in as many processes on braid_serve (method reuseport: a SO_REUSEPORT "
              "listener each), serving braid-stream's protocol. Peers: epoll-raw = a minimal hand-written epoll program (bench/peers/epoll_raw.c, 17 "
              "bytes of state per fd, the floor); twisted = Twisted's epoll reactor running a Protocol "
              "(bench/peers/connscale_twisted.py, Debian's /usr/bin/python3). Every server: listen backlog 4096 "
              "(= net.core.somaxconn), TCP_NODELAY on accepted sockets, logging off, bound to 127.0.0.1, a fresh "
              "process per run on a fresh port.\n\n"
              "The load generator (one braid loop in braid-bench) opens N non-blocking connections at once, source "
              "addresses rotating over 127.0.0.2-251 (IP_BIND_ADDRESS_NO_PORT) so ephemeral ports never run short; "
              "connect_ms = time from the first socket() until the last connection completed. It then waits until "
              "the server holds all N sockets and samples the server's RSS (all its processes) for memory per "
              "connection = (RSS now - RSS before) / N, and MemAvailable for sys_mem_per_conn (system-wide: includes "
              "the client's sockets, kernel socket buffers and thread stacks, and any other load on the machine). "
              "Then it sends one request on every connection; complete_ms = connect_ms + the time until the last "
              "response arrived (the pause is not counted). failures = connections not answered correctly within 20 "
              "s per phase. listen_overflows / listen_drops = the system-wide TcpExt counters' growth during the "
              "run. cpu_per_conn = server utime+stime from ready to exit (exited threads and children included) / N; "
              "ctx_switches = the server's voluntary+involuntary context switches over its life. Processes are not "
              "pinned; the client and server share the 2 cores. Placement: unpinned (the scheduler "
              "places client and server on the 2 cores), and \"split\" (server on CPU 1, client on CPU 0; at the "
              "largest N and for braid-loop and epoll-raw only in quick mode). Quick mode: N = 100, 1,000, 10,000, 3 runs each; full: N = 100, 1,000, "
              "5,000, 10,000. Implementations alternate within each N.",
    .run = run, .serve = serve, .conclude = conclude, .ratio_base = "braid-loop", .headline = "complete_ms,mem_per_conn",
    .quick_seconds = 65, .quick_runs = 3, .full_seconds = 500, .order = 5,
    .plot_x = "connections", .plot_metric = "connect_ms,complete_ms,mem_per_conn,cpu_per_conn",
    .plot_logx = true, .plot_logy = true);
