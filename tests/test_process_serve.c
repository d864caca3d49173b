/* N loops on one port (braid_serve): every sharing method in threads and in
 * processes serves every connection; a graceful stop keeps serving open
 * connections while refusing new ones, and is bounded by the drain time
 * (no child is ever SIGKILLed); a crashed child process is restarted on its
 * socket; a connection open before the fork does not hold a child; a
 * connection the acceptor handed to a dying child is served by another.
 * Real loopback sockets, every case on every backend (on select, poll and
 * io_uring BRAID_SERVE_EXCLUSIVE is the wake-all shared socket), in the
 * sanitizer builds too. */
// ctest-labels: threads
#include "harness.h"
#include <braid/process.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- the server: echo; "crash" kills a child process ------------------------------------ */
/* "hold": the child stops serving (its loop blocks), says so on hold_said,
 * waits for a byte on hold_go, then dies. Inherited pipes (not
 * close-on-exec, so the children keep them). */
static int hold_said[2] = { -1, -1 }, hold_go[2] = { -1, -1 };
static void echo_data(braid_protocol *p, const void *buf, size_t len) {
    if (len == 5 && !memcmp(buf, "crash", 5)) _exit(9);
    if (len == 4 && !memcmp(buf, "hold", 4)) {
        char b = 'h';
        if (write(hold_said[1], &b, 1) == 1) (void)!read(hold_go[0], &b, 1);
        _exit(9);
    }
    braid_transport_write(p->transport, buf, len);
}
static const braid_protocol_ops echo_ops = { .data_received = echo_data };
static braid_factory *make(braid_loop *loop, unsigned i, void *arg) {
    (void)loop; (void)i; (void)arg;
    braid_factory *f = malloc(sizeof *f);
    if (f) braid_factory_init(f, &echo_ops, sizeof(braid_protocol), NULL);
    return f;
}
static void done(braid_factory *f, unsigned i, void *arg) {
    (void)i; (void)arg;
    free(f);
}

/* ---- the client (a thread) ---------------------------------------------------------------- */
static atomic_int port_seen;
static atomic_int early_fd = -1;   /* mode 4: dialled before the children exist */
static int dial_port(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    struct timeval tv = { 5, 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}
static int dial(void) { return dial_port(atomic_load(&port_seen)); }
static void on_listening(int port, void *arg) {
    const int *mode = arg;
    if (*mode == 4) atomic_store(&early_fd, dial_port(port));   /* before the client thread may go */
    atomic_store(&port_seen, port);
}
/* Send msg, read the echo: 1 if it came back whole. */
static int ping(int fd, const char *msg) {
    size_t n = strlen(msg);
    char buf[64];
    if (write(fd, msg, n) != (ssize_t)n) return 0;
    size_t got = 0;
    while (got < n) {
        ssize_t k = read(fd, buf + got, n - got);
        if (k <= 0) return 0;
        got += (size_t)k;
    }
    return !memcmp(buf, msg, n);
}
static void wait_port(void) {
    while (!atomic_load(&port_seen)) usleep(1000);
}

typedef struct client {
    int mode;          /* 0 plain, 1 drain, 2 drain timeout, 3 crash, 4 early connection, 5 hold */
    int nconn;
    atomic_int ok, refused_after_stop, eof_after_timeout;
} client;

static void *client_main(void *arg) {
    client *c = arg;
    wait_port();
    if (c->mode == 3) {   /* crash one child, then go on */
        int fd = dial();
        if (fd >= 0) {
            if (write(fd, "crash", 5) == 5) {
                char b;
                (void)read(fd, &b, 1);   /* EOF: the child died */
            }
            close(fd);
        }
    }
    if (c->mode == 4) {   /* the connection made before the fork: served, then closed */
        int fd = atomic_load(&early_fd);
        if (fd >= 0 && ping(fd, "early")) atomic_fetch_add(&c->ok, 1);
        if (fd >= 0) close(fd);
    }
    if (c->mode == 5) {
        /* Round-robin over two children: c0 -> X (which then holds), c1 -> Y,
         * c2 -> X (unread in X's hand-off socket), c3 -> Y. c3's echo means
         * c2 was handed to X before X dies. */
        int c0 = dial(), c1 = -1, c2 = -1, c3 = -1;
        char b;
        if (c0 >= 0 && write(c0, "hold", 4) == 4 && read(hold_said[0], &b, 1) == 1) {
            c1 = dial();
            if (c1 >= 0 && ping(c1, "one")) atomic_fetch_add(&c->ok, 1);
            c2 = dial();
            c3 = dial();
            if (c3 >= 0 && ping(c3, "three")) atomic_fetch_add(&c->ok, 1);
            (void)!write(hold_go[1], "g", 1);   /* X dies with c2 unread */
            if (c2 >= 0 && ping(c2, "two")) atomic_fetch_add(&c->ok, 1);
        }
        int all[4] = { c0, c1, c2, c3 };
        for (int i = 0; i < 4; i++)
            if (all[i] >= 0) close(all[i]);
    }
    for (int i = 0; i < c->nconn; i++) {
        int fd = -1;
        /* A connection to a restarting child's socket waits in its queue. */
        fd = dial();
        if (fd >= 0 && ping(fd, "ping")) atomic_fetch_add(&c->ok, 1);
        if (fd >= 0) close(fd);
    }
    if (c->mode == 1 || c->mode == 2) {
        int fd = dial();
        int held = fd >= 0 && ping(fd, "before");
        kill(getpid(), SIGTERM);
        /* New connections are refused once every loop stopped accepting. */
        for (int k = 0; k < 2000; k++) {
            int f2 = dial();
            if (f2 < 0) {
                atomic_store(&c->refused_after_stop, 1);
                break;
            }
            close(f2);
            usleep(1000);
        }
        if (c->mode == 1) {
            /* The open connection is still served while the server drains. */
            if (held && ping(fd, "after")) atomic_fetch_add(&c->ok, 1);
            close(fd);
        } else {
            char b;
            if (fd >= 0 && read(fd, &b, 1) <= 0) atomic_store(&c->eof_after_timeout, 1);   /* shut down */
            if (fd >= 0) close(fd);
        }
        return NULL;
    }
    kill(getpid(), SIGTERM);
    return NULL;
}

static uint64_t now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* braid_serve takes the stop signals as events: block them in the caller
 * (and the threads it starts) first. */
static void block_stop_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
}

static void run_case(braid_serve_method m, bool processes, int mode, uint64_t drain_ns, struct braid_serve_stats *st,
                     client *c, uint64_t *ms) {
    atomic_store(&port_seen, 0);
    block_stop_signals();   /* the client thread inherits it */
    c->mode = mode;
    pthread_t t;
    BT_EQ(pthread_create(&t, NULL, client_main, c), 0);
    braid_serve_options o = { .loops = 2, .processes = processes, .method = m, .drain_timeout = drain_ns,
                              .factory = make, .factory_done = done, .on_listening = on_listening,
                              .arg = &c->mode };
    uint64_t t0 = now_ms();
    int rc = braid_serve("tcp:0:interface=127.0.0.1", &o, st);
    *ms = now_ms() - t0;
    pthread_join(t, NULL);
    BT_OK(rc);
    BT_EQ(st->loops, 2);
    uint64_t sum = st->accepted[0] + st->accepted[1];
    BT_UEQ(sum, st->total);
    /* Every child ended its drain itself: none was SIGKILLed (and its
     * count lost) at drain_timeout + 1 s. */
    BT_UEQ(st->killed, 0);
}

static void serves_all(braid_serve_method m, bool processes) {
    client c = { .nconn = 20 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(m, processes, 0, BRAID_SECONDS(2), &st, &c, &ms);
    BT_EQ(atomic_load(&c.ok), 20);
    BT_UEQ(st.total, 20);
    BT_UEQ(st.restarts, 0);
}

BT_IO_TEST(serve_reuseport_threads) { serves_all(BRAID_SERVE_REUSEPORT, false); }
BT_IO_TEST(serve_exclusive_threads) { serves_all(BRAID_SERVE_EXCLUSIVE, false); }
BT_IO_TEST(serve_acceptor_threads) { serves_all(BRAID_SERVE_ACCEPTOR, false); }
BT_IO_TEST(serve_shared_threads) { serves_all(BRAID_SERVE_SHARED, false); }
BT_IO_TEST(serve_reuseport_processes) { serves_all(BRAID_SERVE_REUSEPORT, true); }
BT_IO_TEST(serve_exclusive_processes) { serves_all(BRAID_SERVE_EXCLUSIVE, true); }
BT_IO_TEST(serve_acceptor_processes) { serves_all(BRAID_SERVE_ACCEPTOR, true); }
BT_IO_TEST(serve_shared_processes) { serves_all(BRAID_SERVE_SHARED, true); }

/* The acceptor spreads connections over both loops (round-robin). */
BT_IO_TEST(serve_acceptor_balances) {
    client c = { .nconn = 20 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(BRAID_SERVE_ACCEPTOR, false, 0, BRAID_SECONDS(2), &st, &c, &ms);
    BT_UEQ(st.accepted[0], 10);
    BT_UEQ(st.accepted[1], 10);
}

/* EPOLLEXCLUSIVE wakes the loop that added the socket first whenever it is
 * asleep: one client dialling one connection at a time would land most
 * connections on it. Each loop re-adds its listener after 16 accepts (to the
 * wait queue's tail), which spreads them (34/30 or so on a quiet machine,
 * up to 50/14 without it). How even the split is depends on the scheduler,
 * so it is printed here, not asserted (a loaded machine gave 5/59 once):
 * braid-bench smp measures it. The re-adds must not lose a connection. */
static void exclusive_balances(bool processes) {
    client c = { .nconn = 64 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(BRAID_SERVE_EXCLUSIVE, processes, 0, BRAID_SECONDS(2), &st, &c, &ms);
    BT_EQ(atomic_load(&c.ok), 64);
    BT_UEQ(st.total, 64);
    fprintf(stderr, "exclusive_balances [%s]: loops accepted %llu / %llu\n", bt_backend(),
            (unsigned long long)st.accepted[0], (unsigned long long)st.accepted[1]);
}
BT_IO_TEST(serve_exclusive_balances_threads) { exclusive_balances(false); }
BT_IO_TEST(serve_exclusive_balances_processes) { exclusive_balances(true); }

/* SIGTERM: new connections refused, the open one still served, and the
 * run ends as soon as it closes (well before the drain time). */
static void drains(braid_serve_method m, bool processes) {
    client c = { .nconn = 2 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(m, processes, 1, BRAID_SECONDS(20), &st, &c, &ms);
    BT_EQ(atomic_load(&c.ok), 3);
    BT_EQ(atomic_load(&c.refused_after_stop), 1);
    BT_LT(ms, 15000);
}
BT_IO_TEST(serve_drain_threads) { drains(BRAID_SERVE_REUSEPORT, false); }
BT_IO_TEST(serve_drain_processes) { drains(BRAID_SERVE_EXCLUSIVE, true); }
BT_IO_TEST(serve_drain_acceptor_processes) { drains(BRAID_SERVE_ACCEPTOR, true); }
BT_IO_TEST(serve_drain_acceptor_threads) { drains(BRAID_SERVE_ACCEPTOR, false); }

/* A connection the client never closes is shut down when the drain time
 * ends, and the run ends then: well before the client's own 5 s read
 * timeout would close it, and (processes) before the supervisor's SIGKILL
 * at the drain time + 1 s, which would lose the child's count. */
static void drain_bounded(bool processes) {
    client c = { .nconn = 0 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(BRAID_SERVE_REUSEPORT, processes, 2, BRAID_MSEC(200), &st, &c, &ms);
    BT_EQ(atomic_load(&c.eof_after_timeout), 1);
    BT_UGE(st.total, 1);
    BT_LT(ms, 4000);
}
BT_IO_TEST(serve_drain_bounded_threads) { drain_bounded(false); }
BT_IO_TEST(serve_drain_bounded_processes) { drain_bounded(true); }

/* A child that dies is started again on the same socket: every later
 * connection is served, none reset. */
static void restarts(braid_serve_method m, int may_lose) {
    client c = { .nconn = 20 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(m, true, 3, BRAID_SECONDS(2), &st, &c, &ms);
    /* Without the restart, every connection for the dead child's share
     * would fail (about half of them). */
    BT_GE(atomic_load(&c.ok), 20 - may_lose);
    BT_UGE(st.restarts, 1);
}
BT_IO_TEST(serve_restart_reuseport) { restarts(BRAID_SERVE_REUSEPORT, 0); }
/* The acceptor hands connections to the dead child until it has seen the
 * death: the ones never acknowledged go to another child. */
BT_IO_TEST(serve_restart_acceptor) { restarts(BRAID_SERVE_ACCEPTOR, 0); }

BT_TEST(serve_bad_endpoint) {
    braid_serve_options o = { .loops = 1, .factory = make };
    BT_EQ(braid_serve("tcp:notaport", &o, NULL), BRAID_EBAD_ENDPOINT);
    BT_EQ(braid_serve("unix:/tmp/x", &o, NULL), BRAID_ENOSYS);
    o.loops = 65;   /* at most 64: an error, not a silent clamp */
    BT_EQ(braid_serve("tcp:0", &o, NULL), BRAID_EINVAL);
}

/* A connection the test's thread opened before the children were forked
 * (dialled from on_listening): fork copies its descriptor into every
 * child, and a child holding that copy keeps the connection open after
 * the client closes it, so the child serving it would wait out the whole
 * drain time for an end of file. The children drop the close-on-exec
 * descriptors they did not get from braid_serve: the run ends as soon as
 * the client has closed it and SIGTERM came, far before the drain time. */
static void early_connection(braid_serve_method m) {
    client c = { .nconn = 0 };
    struct braid_serve_stats st;
    uint64_t ms;
    atomic_store(&early_fd, -1);
    run_case(m, true, 4, BRAID_SECONDS(20), &st, &c, &ms);
    BT_EQ(atomic_load(&c.ok), 1);
    BT_UEQ(st.total, 1);
    BT_LT(ms, 10000);
}
BT_IO_TEST(serve_early_connection_reuseport) { early_connection(BRAID_SERVE_REUSEPORT); }
BT_IO_TEST(serve_early_connection_exclusive) { early_connection(BRAID_SERVE_EXCLUSIVE); }
BT_IO_TEST(serve_early_connection_acceptor) { early_connection(BRAID_SERVE_ACCEPTOR); }

/* The acceptor hands a connection to a child that is about to die and
 * never reads it: the supervisor, still holding its unacknowledged copy,
 * hands it to another child, which serves it. */
BT_IO_TEST(serve_acceptor_rehands_unread) {
    BT_EQ(pipe(hold_said), 0);
    BT_EQ(pipe(hold_go), 0);
    client c = { .nconn = 0 };
    struct braid_serve_stats st;
    uint64_t ms;
    run_case(BRAID_SERVE_ACCEPTOR, true, 5, BRAID_SECONDS(2), &st, &c, &ms);
    for (int i = 0; i < 2; i++) {
        close(hold_said[i]);
        close(hold_go[i]);
    }
    BT_EQ(atomic_load(&c.ok), 3);
    BT_UEQ(st.total, 3);   /* c1, c2, c3 by the living children (X's count died with it) */
    BT_UEQ(st.rehanded, 1);
}

/* The supervisor is SIGKILLed: its children do not serve on as orphans —
 * each gets SIGTERM and drains, and the port refuses connections within a
 * bounded time. The supervisor is a process of its own here (the test's
 * fork), so that it can be killed. */
static void report_port(int port, void *arg) {
    int fd = *(int *)arg;
    if (write(fd, &port, sizeof port) != (ssize_t)sizeof port) _exit(3);
}
static void supervisor_dies(braid_serve_method m) {
#ifndef __linux__
    bt_skip("children learn of their supervisor's death through PR_SET_PDEATHSIG (Linux only)");
#endif
    int pp[2];
    BT_EQ(pipe(pp), 0);
    pid_t sup = fork();
    BT_TRUE(sup >= 0);
    if (sup == 0) {
        close(pp[0]);
        block_stop_signals();
        struct braid_serve_stats st;
        braid_serve_options o = { .loops = 2, .processes = true, .method = m, .drain_timeout = BRAID_SECONDS(2),
                                  .factory = make, .factory_done = done, .on_listening = report_port,
                                  .arg = &pp[1] };
        _exit(braid_serve("tcp:0:interface=127.0.0.1", &o, &st) < 0 ? 1 : 0);
    }
    close(pp[1]);
    int port = 0;
    BT_EQ(read(pp[0], &port, sizeof port), (ssize_t)sizeof port);
    close(pp[0]);
    /* served (the children exist: retry until one answers) */
    int served = 0;
    for (int i = 0; i < 500 && !served; i++) {
        int fd = dial_port(port);
        if (fd >= 0) {
            served = ping(fd, "hello");
            close(fd);
        }
        if (!served) usleep(10000);
    }
    BT_TRUE(served);
    BT_EQ(kill(sup, SIGKILL), 0);
    int status;
    BT_EQ(waitpid(sup, &status, 0), sup);
    /* Without the parent-death signal the children serve on for ever. */
    int refused = 0;
    for (int i = 0; i < 1000 && !refused; i++) {   /* 10 s at most; the drain is 2 s */
        int fd = dial_port(port);
        if (fd < 0) refused = 1;
        else {
            close(fd);
            usleep(10000);
        }
    }
    BT_TRUE(refused);
}
BT_IO_TEST(serve_children_end_with_the_supervisor_reuseport) { supervisor_dies(BRAID_SERVE_REUSEPORT); }
BT_IO_TEST(serve_children_end_with_the_supervisor_acceptor) { supervisor_dies(BRAID_SERVE_ACCEPTOR); }

/* ---- a loop that cannot start, a stop that must end, a child that crashes at once ------- */
static void *term_after(void *arg) {
    usleep((useconds_t)(uintptr_t)arg);
    kill(getpid(), SIGTERM);
    return NULL;
}
static braid_factory *make_but_1(braid_loop *loop, unsigned i, void *arg) {
    return i == 1 ? NULL : make(loop, i, arg);
}

/* A factory that returns NULL fails braid_serve with BRAID_ESERVE_START —
 * in processes too, where the child is not restarted over and over. */
static void factory_null(bool processes) {
    block_stop_signals();
    struct braid_serve_stats st;
    braid_serve_options o = { .loops = 2, .processes = processes, .factory = make_but_1, .factory_done = done };
    uint64_t t0 = now_ms();
    BT_ERR(braid_serve("tcp:0:interface=127.0.0.1", &o, &st), BRAID_ESERVE_START);
    BT_LT(now_ms() - t0, 10000);
    BT_UEQ(st.restarts, 0);
}
BT_IO_TEST(serve_factory_null_threads) { factory_null(false); }
BT_IO_TEST(serve_factory_null_processes) { factory_null(true); }

/* A timer of the program's own keeps each loop alive: on_drain stops it and
 * the stop ends at once; without on_drain the loop is stopped 250 ms after
 * the drain time rather than serving on (before: never, in threads; a
 * SIGKILL and a lost count, in processes). */
static braid_timer own_timers[2];
static void own_tick(braid_timer *t, void *arg) {
    (void)arg;
    braid_timer_start(t, BRAID_MSEC(20));
}
static void own_start(braid_loop *loop, unsigned i, void *arg) {
    (void)arg;
    braid_timer_init(loop, &own_timers[i], own_tick, NULL);
    braid_timer_start(&own_timers[i], BRAID_MSEC(20));
}
static void own_stop(braid_loop *loop, unsigned i, void *arg) {
    (void)loop; (void)arg;
    braid_timer_stop(&own_timers[i]);
}
static void own_done(braid_factory *f, unsigned i, void *arg) {
    braid_timer_stop(&own_timers[i]);   /* abandoned with its loop: not run again */
    done(f, i, arg);
}
static void stop_ends(bool processes, bool with_on_drain) {
    block_stop_signals();
    struct braid_serve_stats st;
    braid_serve_options o = { .loops = 2, .processes = processes, .drain_timeout = BRAID_SECONDS(1),
                              .factory = make, .factory_done = own_done, .on_loop = own_start,
                              .on_drain = with_on_drain ? own_stop : NULL };
    pthread_t t;
    BT_EQ(pthread_create(&t, NULL, term_after, (void *)(uintptr_t)300000), 0);
    uint64_t t0 = now_ms();
    BT_OK(braid_serve("tcp:0:interface=127.0.0.1", &o, &st));
    uint64_t ms = now_ms() - t0;
    pthread_join(t, NULL);
    BT_UEQ(st.killed, 0);
    if (with_on_drain) BT_LT(ms, 1200);    /* 300 ms, then no drain to wait for */
    else BT_LT(ms, 5000);                  /* 300 ms + 1 s + 250 ms, and no more */
}
BT_IO_TEST(serve_on_drain_ends_the_stop_threads) { stop_ends(false, true); }
BT_IO_TEST(serve_on_drain_ends_the_stop_processes) { stop_ends(true, true); }
BT_IO_TEST(serve_stop_ends_despite_a_timer_threads) { stop_ends(false, false); }
BT_IO_TEST(serve_stop_ends_despite_a_timer_processes) { stop_ends(true, false); }

/* A child that dies as it starts is restarted after a growing back-off,
 * not in a fork loop: in 600 ms, a handful of restarts (10 + 20 + 40 + ...
 * ms), not thousands. */
static void crash_1(braid_loop *loop, unsigned i, void *arg) {
    (void)loop; (void)arg;
    if (i == 1) _exit(9);
}
BT_IO_TEST(serve_quick_crash_backs_off) {
    block_stop_signals();
    struct braid_serve_stats st;
    braid_serve_options o = { .loops = 2, .processes = true, .drain_timeout = BRAID_SECONDS(1),
                              .factory = make, .factory_done = done, .on_loop = crash_1 };
    pthread_t t;
    BT_EQ(pthread_create(&t, NULL, term_after, (void *)(uintptr_t)600000), 0);
    BT_OK(braid_serve("tcp:0:interface=127.0.0.1", &o, &st));
    pthread_join(t, NULL);
    BT_UGE(st.restarts, 2);
    BT_ULE(st.restarts, 12);
}

/* A thread of the program that blocks the stop signals but not SIGCHLD
 * (braid-bench's --seconds thread was one: it sends the SIGTERM, then
 * lives on a moment) takes the SIGCHLDs sent to the process while it
 * lives: the kernel delivers a process-wide signal to a thread that does
 * not block it, SIGCHLD's default action discards it, and the supervisor's
 * signalfd gets it only when it reads first (now and then). A
 * supervisor that learned of its children's exits only from SIGCHLD then
 * never reaped them and never returned (the bench.smoke hang). It watches
 * each child's pidfd instead, so the run ends as soon as the children have
 * drained; without pidfds (BRAID_PROCESS_SIGCHLD=1 forces that path) the
 * grace timer reaps what exited, drain_timeout + 1 s after the stop. Three
 * runs, as the race for the signal can hide the defect in one (before the
 * fix, 11 of these 16 cases failed in a run of them all). The thread
 * lives 6 s at most; then it blocks
 * SIGCHLD and sends one itself, so a supervisor that waits for SIGCHLD
 * still ends, late, and the bounds below fail rather than hang. */
static atomic_int serve_returned;
static void *sigchld_taker(void *arg) {
    (void)arg;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
    wait_port();
    usleep(300000);
    kill(getpid(), SIGTERM);
    for (int i = 0; i < 600 && !atomic_load(&serve_returned); i++) usleep(10000);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    if (!atomic_load(&serve_returned)) kill(getpid(), SIGCHLD);
    return NULL;
}
static void sigchld_elsewhere(braid_serve_method m, bool pidfds) {
    if (!pidfds) setenv("BRAID_PROCESS_SIGCHLD", "1", 1);
    for (int round = 0; round < 3; round++) {
        atomic_store(&port_seen, 0);
        atomic_store(&serve_returned, 0);
        block_stop_signals();
        int mode = 0;
        struct braid_serve_stats st;
        braid_serve_options o = { .loops = 2, .processes = true, .method = m, .drain_timeout = BRAID_SECONDS(2),
                                  .factory = make, .factory_done = done, .on_listening = on_listening,
                                  .arg = &mode };
        pthread_t t;
        BT_EQ(pthread_create(&t, NULL, sigchld_taker, NULL), 0);
        uint64_t t0 = now_ms();
        int rc = braid_serve("tcp:0:interface=127.0.0.1", &o, &st);
        uint64_t ms = now_ms() - t0;
        atomic_store(&serve_returned, 1);
        pthread_join(t, NULL);
        BT_OK(rc);
        BT_UEQ(st.killed, 0);
        BT_UEQ(st.restarts, 0);
        /* 300 ms, then nothing to drain; without pidfds, 300 ms + 2 s + 1 s */
        if (pidfds) BT_LT(ms, 2000);
        else BT_LT(ms, 5500);
    }
    unsetenv("BRAID_PROCESS_SIGCHLD");
}
BT_IO_TEST(serve_sigchld_taken_by_another_thread_reuseport) { sigchld_elsewhere(BRAID_SERVE_REUSEPORT, true); }
BT_IO_TEST(serve_sigchld_taken_by_another_thread_exclusive) { sigchld_elsewhere(BRAID_SERVE_EXCLUSIVE, true); }
BT_IO_TEST(serve_sigchld_taken_by_another_thread_acceptor) { sigchld_elsewhere(BRAID_SERVE_ACCEPTOR, true); }
BT_IO_TEST(serve_sigchld_taken_without_pidfds) { sigchld_elsewhere(BRAID_SERVE_REUSEPORT, false); }
