/* Running out of descriptors must not spin the CPU. A child process lowers
 * its RLIMIT_NOFILE, serves echo on a braid listener and is hammered with
 * connects from the parent until accept() fails with EMFILE. Its CPU time
 * over the hammering window (getrusage) must stay far below the wall time —
 * the naive level-triggered accept loop burns 100 % — and once the parent
 * lets go of its connections, service resumes: a new connection is echoed.
 *
 * The bound is generous (CPU < 40 % of wall over ~0.6 s; the spinning loop
 * measures ~100 %), and the back-off count is checked too, which does not
 * depend on timing precision. */
// ctest-labels: stream
#include "harness.h"
#include "support/net.h"
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct stats { double cpu_us, wall_us; uint64_t emfile, accepted; } stats;

/* ---- the child: an echo server on a starved descriptor table ---------------------- */
typedef struct child { braid_loop *loop; braid_listener *l; int ctl_r, ctl_w; braid_watch w;
                       struct rusage ru0; struct timespec t0; bool stop; } child;

static void echo_data(braid_protocol *p, const void *buf, size_t len) {
    braid_transport_write(p->transport, buf, len);
}
static const braid_protocol_ops echo_ops = { .data_received = echo_data };

static double tv_us(struct timeval tv) { return tv.tv_sec * 1e6 + tv.tv_usec; }

static void on_ctl(braid_watch *w, unsigned ev, void *arg) {
    child *c = arg;
    (void)w; (void)ev;
    char cmd;
    if (read(c->ctl_r, &cmd, 1) != 1) { c->stop = true; braid_loop_stop(c->loop); return; }
    if (cmd == 'M') {
        getrusage(RUSAGE_SELF, &c->ru0);
        clock_gettime(CLOCK_MONOTONIC, &c->t0);
    } else if (cmd == 'R') {
        struct rusage ru;
        struct timespec t;
        getrusage(RUSAGE_SELF, &ru);
        clock_gettime(CLOCK_MONOTONIC, &t);
        stats s = {
            .cpu_us = tv_us(ru.ru_utime) + tv_us(ru.ru_stime) - tv_us(c->ru0.ru_utime) - tv_us(c->ru0.ru_stime),
            .wall_us = (t.tv_sec - c->t0.tv_sec) * 1e6 + (t.tv_nsec - c->t0.tv_nsec) / 1e3,
            .emfile = braid_listener_emfile_events(c->l),
            .accepted = braid_listener_accepted(c->l) };
        if (write(c->ctl_w, &s, sizeof s) != sizeof s) _exit(3);
    } else if (cmd == 'Q') {
        c->stop = true;
        braid_loop_stop(c->loop);
    }
}

static int child_main(int ctl_r, int ctl_w) {
    child c = { .ctl_r = ctl_r, .ctl_w = ctl_w };
    if (braid_loop_new(&(braid_loop_options){ .flags = BRAID_LOOP_STRICT_BACKEND }, &c.loop) < 0) return 2;
    braid_factory f;
    braid_factory_init(&f, &echo_ops, sizeof(braid_protocol), NULL);
    if (braid_endpoint_listener(braid_endpoint_listen_typed(c.loop, &(braid_endpoint){
            .kind = BRAID_ENDPOINT_TCP, .host = "127.0.0.1", .backlog = 64 }, &f), &c.l) < 0)
        return 2;
    braid_address a;
    braid_listener_address(c.l, &a);
    int port = braid_address_port(&a);
    /* Leave room for only a handful of connections. */
    int probe = dup(0);
    struct rlimit rl = { (rlim_t)probe + 5, (rlim_t)probe + 5 };
    close(probe);
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) return 2;
    if (braid_watch_init(c.loop, &c.w, ctl_r, on_ctl, &c) < 0 || braid_watch_set_interest(&c.w, BRAID_WATCH_READ) < 0)
        return 2;
    if (write(ctl_w, &port, sizeof port) != sizeof port) return 2;
    while (!c.stop) braid_loop_run(c.loop);
    braid_watch_close(&c.w);
    braid_listener_close(c.l);
    /* accepted echo connections may remain open: the process exits */
    _exit(0);
}

/* ---- the parent ---------------------------------------------------------------------- */
static uint64_t now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

BT_IO_TEST(emfile_backoff_keeps_cpu_idle) {
    bt_loop_destroy(bt_loop_new(NULL));   /* skips here if the backend is missing */
    int down[2], up[2];
    BT_OK(pipe(down));
    BT_OK(pipe(up));
    pid_t pid = fork();
    BT_TRUE(pid >= 0);
    if (pid == 0) {
        close(down[1]);
        close(up[0]);
        _exit(child_main(down[0], up[1]));
    }
    close(down[0]);
    close(up[1]);
    int port = 0;
    BT_EQ(read(up[0], &port, sizeof port), (ssize_t)sizeof port);
    /* Hold connections open until the child's table is full. */
    int held[64], nheld = 0;
    for (int i = 0; i < 20; i++) {
        int s = bt_connect_tcp(port, BT_CONNECT_MAY_FAIL);
        if (s >= 0) held[nheld++] = s;
    }
    usleep(50000);
    BT_EQ(write(down[1], "M", 1), 1);
    /* Hammer: a steady stream of new connects for ~600 ms. */
    uint64_t end = now_ms() + 600;
    int hammered = 0;
    while (now_ms() < end) {
        int s = bt_connect_tcp(port, BT_CONNECT_ASYNC | BT_CONNECT_MAY_FAIL);
        if (s >= 0) { close(s); hammered++; }
        usleep(2000);
    }
    BT_EQ(write(down[1], "R", 1), 1);
    stats st;
    BT_EQ(read(up[0], &st, sizeof st), (ssize_t)sizeof st);
    fprintf(stderr, "emfile: cpu %.0f us over %.0f us wall (%.1f%%), %" PRIu64 " back-offs, %" PRIu64
            " accepted, %d connects\n", st.cpu_us, st.wall_us, 100.0 * st.cpu_us / st.wall_us,
            st.emfile, st.accepted, hammered);
    BT_GE(st.emfile, 1);                     /* the table really was full */
    BT_LE(st.emfile, 40);                    /* backing off, not retrying every iteration */
    BT_LT(st.cpu_us, 0.4 * st.wall_us);      /* near idle (a spin is ~100 %) */
    /* Let go: descriptors free up and service resumes. */
    for (int i = 0; i < nheld; i++) close(held[i]);
    int s = -1;
    bool echoed = false;
    uint64_t deadline = now_ms() + 5000;
    while (!echoed && now_ms() < deadline) {
        s = bt_connect_tcp(port, BT_CONNECT_MAY_FAIL);
        if (s < 0) { usleep(20000); continue; }
        struct timeval tv = { 1, 0 };
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        char buf[8];
        if (write(s, "alive", 5) == 5 && read(s, buf, sizeof buf) == 5 && !memcmp(buf, "alive", 5))
            echoed = true;
        close(s);
    }
    BT_TRUE(echoed);
    BT_EQ(write(down[1], "Q", 1), 1);
    int status;
    BT_EQ(waitpid(pid, &status, 0), pid);
    BT_TRUE(WIFEXITED(status));
    BT_EQ(WEXITSTATUS(status), 0);
    close(down[1]);
    close(up[0]);
}
