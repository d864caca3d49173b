/* The io_uring backend: that it is really io_uring, how it is chosen and
 * turned off, the completion interface (ops, cancellation, multishot recv
 * with a provided-buffer ring), embedding through the backend fd, and the
 * stale-event cases peculiar to multishot polls. The generic loop tests
 * (test_loop.c) also run on it through BT_IO_TEST. */
// ctest-labels: uring
#include "harness.h"
#include "support/run.h"
#include "support/net.h"
#include "support/walk.h"
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#if __has_include(<liburing.h>)
#include "loop/completion_uring.h"
#include "net/net_internal.h"
#define HAVE_URING_H 1
#endif

/* A loop on io_uring whatever BRAID_BACKEND says, or skip. */
static braid_loop *uring_loop(void) {
    braid_loop_options o = { .backend = BRAID_BACKEND_URING, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop = NULL;
    int rc = braid_loop_new(&o, &loop);
    if (rc == BRAID_ENOSYS) bt_skip("io_uring not available");
    BT_OK(rc);
    BT_STREQ(braid_loop_backend(loop), "uring");
    return loop;
}

typedef struct hits { int reads, writes, errors; unsigned last; int read_size; } hits;

static void on_io(braid_watch *w, unsigned ev, void *arg) {
    hits *h = arg;
    h->last = ev;
    if (ev & BRAID_WATCH_READ) {
        h->reads++;
        char buf[64];
        size_t want = h->read_size ? (size_t)h->read_size : sizeof buf;
        (void)!read(w->fd, buf, want);
    }
    if (ev & BRAID_WATCH_WRITE) h->writes++;
    if (ev & (BRAID_WATCH_ERROR | BRAID_WATCH_HUP)) h->errors++;
}

/* ---- choosing the backend ---------------------------------------------------------- */
BT_TEST(backend_is_really_io_uring) {
    braid_loop *loop = uring_loop();
    int fd = braid_loop_backend_fd(loop);
    BT_GE(fd, 0);
    char path[64], target[128] = { 0 };
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    BT_GT(readlink(path, target, sizeof target - 1), 0);
    BT_STREQ(target, "anon_inode:[io_uring]");
#ifdef HAVE_URING_H
    struct io_uring *ring = braid__completion_uring_ring(loop);
    BT_TRUE(ring != NULL);
    BT_EQ(ring->ring_fd, fd);
#endif
    bt_loop_destroy(loop);
}

static const char *backend_of(braid_backend b, unsigned flags, int *rc) {
    braid_loop_options o = { .backend = b, .flags = flags };
    braid_loop *loop = NULL;
    static char name[16];
    *rc = braid_loop_new(&o, &loop);
    if (*rc < 0) return "";
    snprintf(name, sizeof name, "%s", braid_loop_backend(loop));
    BT_OK(braid_loop_free(loop));
    return name;
}

BT_TEST(kill_switch_flag_and_env) {
    int rc;
    unsetenv("BRAID_NO_URING");
    unsetenv("BRAID_BACKEND");
    if (strcmp(backend_of(BRAID_BACKEND_URING, BRAID_LOOP_STRICT_BACKEND, &rc), "uring"))
        bt_skip("io_uring not available");
    /* The flag: falls back to epoll, or fails when strict. */
    BT_STREQ(backend_of(BRAID_BACKEND_URING, BRAID_LOOP_NO_URING, &rc), "epoll");
    backend_of(BRAID_BACKEND_URING, BRAID_LOOP_NO_URING | BRAID_LOOP_STRICT_BACKEND, &rc);
    BT_ERR(rc, BRAID_ENOSYS);
    /* The environment, with the backend picked by BRAID_BACKEND too. */
    setenv("BRAID_NO_URING", "1", 1);
    BT_STREQ(backend_of(BRAID_BACKEND_URING, 0, &rc), "epoll");
    backend_of(BRAID_BACKEND_URING, BRAID_LOOP_STRICT_BACKEND, &rc);
    BT_ERR(rc, BRAID_ENOSYS);
    setenv("BRAID_BACKEND", "uring", 1);
    BT_STREQ(backend_of(BRAID_BACKEND_DEFAULT, 0, &rc), "epoll");
    /* "0" and "" mean off. */
    setenv("BRAID_NO_URING", "0", 1);
    BT_STREQ(backend_of(BRAID_BACKEND_DEFAULT, 0, &rc), "uring");
    setenv("BRAID_NO_URING", "", 1);
    BT_STREQ(backend_of(BRAID_BACKEND_DEFAULT, 0, &rc), "uring");
    BT_STREQ(backend_of(BRAID_BACKEND_DEFAULT, BRAID_LOOP_NO_URING, &rc), "epoll");
    /* The kill switch touches nothing but io_uring. */
    setenv("BRAID_NO_URING", "1", 1);
    BT_STREQ(backend_of(BRAID_BACKEND_POLL, BRAID_LOOP_STRICT_BACKEND, &rc), "poll");
    unsetenv("BRAID_NO_URING");
    unsetenv("BRAID_BACKEND");
}

/* A kernel without io_uring, for real: a child process whose seccomp filter
 * makes io_uring_setup fail with ENOSYS (as on kernels built without it or
 * containers that forbid it). The once-per-process probe must say no, the
 * loop must fall back to epoll, and strict must fail. */
static int child_without_uring(void) {
    struct sock_filter f[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_setup, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = { sizeof f / sizeof f[0], f };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) return 10;
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) return 11;
    int rc;
    if (strcmp(backend_of(BRAID_BACKEND_URING, 0, &rc), "epoll")) return 1;
    backend_of(BRAID_BACKEND_URING, BRAID_LOOP_STRICT_BACKEND, &rc);
    if (rc != BRAID_ENOSYS) return 2;
    setenv("BRAID_BACKEND", "uring", 1);
    if (strcmp(backend_of(BRAID_BACKEND_DEFAULT, 0, &rc), "epoll")) return 3;
    /* and a fallback loop works */
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) return 4;
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    if (braid_watch_init(loop, &w, sv[0], on_io, &h) < 0 || braid_watch_set_interest(&w, BRAID_WATCH_READ) < 0) return 5;
    if (write(sv[1], "x", 1) != 1 || braid_loop_run_once(loop, 0) < 0 || h.reads != 1) return 6;
    braid_watch_close(&w);
    if (braid_loop_free(loop) < 0) return 7;
    return 0;
}

BT_TEST(unavailable_io_uring_falls_back_to_epoll) {
    pid_t pid = fork();
    BT_GE(pid, 0);
    if (pid == 0) _exit(child_without_uring());
    int status = 0;
    BT_EQ(waitpid(pid, &status, 0), pid);
    BT_TRUE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 10 || WEXITSTATUS(status) == 11) bt_skip("seccomp not permitted here");
    BT_EQ(WEXITSTATUS(status), 0);
}

/* ---- embedding: the backend fd polls readable when the loop has work -------------- */
BT_IO_TEST(backend_fd_readable_when_watched_socket_has_data) {
    braid_loop *loop = bt_loop_new(NULL);
    int bfd = braid_loop_backend_fd(loop);
    if (!strcmp(bt_backend(), "select") || !strcmp(bt_backend(), "poll")) {
        BT_ERR(bfd, BRAID_ENOSYS);          /* nothing to embed with: said so */
        bt_loop_destroy(loop);
        return;
    }
    BT_GE(bfd, 0);
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    /* The outer loop's cycle: ask the timeout, wait on the fd, run NOWAIT. */
    BT_UEQ(braid_loop_next_timeout(loop), BRAID_FOREVER);
    struct pollfd p = { .fd = bfd, .events = POLLIN };
    BT_EQ(poll(&p, 1, 0), 0);               /* nothing yet */
    BT_EQ(write(sv[1], "data", 4), 4);
    BT_EQ(poll(&p, 1, 5000), 1);
    BT_TRUE(p.revents & POLLIN);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.reads, 1);
    /* Drained: the fd is quiet again, and wakes again for new data. */
    braid_loop_next_timeout(loop);
    BT_EQ(poll(&p, 1, 0), 0);
    BT_EQ(write(sv[1], "more", 4), 4);
    BT_EQ(poll(&p, 1, 5000), 1);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.reads, 2);
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* ---- level-triggered on every backend, multishot or not ------------------------------ */
BT_IO_TEST(unread_data_is_reported_again) {
    braid_loop *loop = bt_loop_new(NULL);
    int sv[2]; bt_socketpair(sv);
    hits h = { .read_size = 1 };             /* read one byte per callback */
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_EQ(write(sv[1], "abc", 3), 3);
    for (int i = 1; i <= 3; i++) {
        BT_OK(braid_loop_run_once(loop, 0));
        BT_EQ(h.reads, i);                   /* one callback per iteration */
    }
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.reads, 3);                       /* drained: quiet */
    /* A writable socket stays writable: reported each iteration. */
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_WRITE));
    for (int i = 1; i <= 3; i++) {
        BT_OK(braid_loop_run_once(loop, 0));
        BT_EQ(h.writes, i);
    }
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* More ready fds than one batch (BRAID__MAX_BATCH) holds: the rest come in
 * the next iterations, each exactly once. Also pushes the io_uring backend
 * past its SQ size while registering. */
BT_IO_TEST(more_ready_fds_than_one_batch) {
    if (!strcmp(bt_backend(), "select")) {
        /* FD_SETSIZE caps select well below this test's fd numbers. */
        braid_loop *loop = bt_loop_new(NULL);
        int sv[2]; bt_socketpair(sv);
        int hi = fcntl(sv[0], F_DUPFD_CLOEXEC, 1100);
        braid_watch w;
        BT_OK(braid_watch_init(loop, &w, hi, on_io, NULL));
        BT_ERR(braid_watch_set_interest(&w, BRAID_WATCH_READ), BRAID_EINVAL);
        braid_watch_close(&w);
        close(hi); close(sv[0]); close(sv[1]);
        bt_loop_destroy(loop);
        return;
    }
    braid_loop *loop = bt_loop_new(NULL);
    enum { N = 1500 };
    int (*sv)[2] = calloc(N, sizeof *sv);
    braid_watch *w = calloc(N, sizeof *w);
    hits *h = calloc(N, sizeof *h);
    for (int i = 0; i < N; i++) {
        bt_socketpair(sv[i]);
        BT_OK(braid_watch_init(loop, &w[i], sv[i][0], on_io, &h[i]));
        BT_OK(braid_watch_set_interest(&w[i], BRAID_WATCH_READ));
        BT_EQ(write(sv[i][1], "r", 1), 1);
    }
    int total = 0;
    for (int it = 0; it < 10 && total < N; it++) {
        BT_OK(braid_loop_run_once(loop, 0));
        total = 0;
        for (int i = 0; i < N; i++) total += h[i].reads;
    }
    BT_EQ(total, N);
    for (int i = 0; i < N; i++) BT_EQ(h[i].reads, 1);
    for (int i = 0; i < N; i++) { braid_watch_close(&w[i]); close(sv[i][0]); close(sv[i][1]); }
    free(sv); free(w); free(h);
    bt_loop_destroy(loop);
}

#ifdef HAVE_URING_H
/* ---- stale CQEs on io_uring --------------------------------------------------------- */
static void count_cb(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; ++*(int *)arg; }

/* A readiness CQE sits in the CQ ring when its watcher is closed, its fd
 * closed and the number reused for a new watcher: the CQE must reach
 * neither (the old poll's seq is dead), and the new watcher still works. */
BT_TEST(stale_cqe_in_ring_after_close_and_fd_reuse) {
    braid_loop *loop = uring_loop();
    struct io_uring *ring = braid__completion_uring_ring(loop);
    int sv[2]; bt_socketpair(sv);
    int old_hits = 0, new_hits = 0;
    braid_watch *a = malloc(sizeof *a), b;
    BT_OK(braid_watch_init(loop, a, sv[0], count_cb, &old_hits));
    BT_OK(braid_watch_set_interest(a, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));   /* poll armed */
    BT_EQ(write(sv[1], "x", 1), 1);
    struct pollfd p = { .fd = braid_loop_backend_fd(loop), .events = POLLIN };
    BT_EQ(poll(&p, 1, 5000), 1);
    io_uring_get_events(ring);                            /* post it if deferred */
    BT_GE(io_uring_cq_ready(ring), 1);                    /* the CQE is there */
    int old = sv[0];
    braid_watch_close(a);
    free(a);
    close(sv[0]);
    close(sv[1]);
    bt_socketpair(sv);
    BT_EQ(sv[0], old);                                    /* number reused */
    BT_OK(braid_watch_init(loop, &b, sv[0], count_cb, &new_hits));
    BT_OK(braid_watch_set_interest(&b, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(old_hits, 0);
    BT_EQ(new_hits, 0);
    BT_EQ(write(sv[1], "y", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(new_hits, 1);
    braid_watch_close(&b);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* Interest toggled within one iteration costs nothing and loses nothing. */
BT_TEST(interest_changes_in_one_iteration_coalesce) {
    braid_loop *loop = uring_loop();
    struct io_uring *ring = braid__completion_uring_ring(loop);
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_OK(braid_watch_set_interest(&w, 0));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_WRITE));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_EQ(io_uring_sq_ready(ring), 0);        /* nothing queued yet: changes are recorded */
    braid_loop_next_timeout(loop);            /* reconciles and submits: one poll add */
    BT_EQ(io_uring_sq_ready(ring), 0);
    BT_EQ(write(sv[1], "x", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(h.reads, 1);
    BT_EQ(h.writes, 0);
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* A multishot poll that the kernel ends (here: cancelled by fd from outside,
 * a CQE without IORING_CQE_F_MORE) is re-armed: later data still arrives. */
static void record_res(braid__completion_op *op, int res, unsigned flags) {
    (void)flags;
    *(int *)op->data = res;
}

BT_TEST(ended_multishot_poll_is_rearmed) {
    braid_loop *loop = uring_loop();
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));   /* armed */
    int cancelled = -1000;
    braid__completion_op op;
    braid__completion_op_init(&op, record_res, &cancelled);
    struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
    BT_TRUE(sqe != NULL);
    io_uring_prep_cancel_fd(sqe, sv[0], IORING_ASYNC_CANCEL_ALL);
    braid__completion_uring_submit(loop, sqe, &op);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(cancelled, 1);                       /* our poll was the one cancelled */
    BT_FALSE(braid__completion_op_active(&op));
    BT_EQ(h.reads, 0);
    BT_EQ(write(sv[1], "x", 1), 1);
    BT_RUN_UNTIL(loop, h.reads, 3);
    BT_EQ(h.reads, 1);
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* io_uring cancels the requests of a thread that exits. A loop run for a
 * while by one thread and then by another must not go deaf: the polls that
 * the first thread armed end with -ECANCELED and are re-armed. */
static void *run_once_thread(void *arg) {
    braid_loop_run_once(arg, BRAID_LOOP_RUN_NOWAIT);
    return NULL;
}

BT_TEST(polls_survive_the_thread_that_armed_them) {
    braid_loop *loop = uring_loop();
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    pthread_t th;
    BT_EQ(pthread_create(&th, NULL, run_once_thread, loop), 0);   /* arms, then exits */
    BT_EQ(pthread_join(th, NULL), 0);
    BT_EQ(write(sv[1], "x", 1), 1);
    BT_RUN_UNTIL(loop, h.reads, 3);
    BT_EQ(h.reads, 1);
    BT_EQ(write(sv[1], "y", 1), 1);
    BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(h.reads, 2);
    braid_watch_close(&w);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* An fd closed before its poll reached the kernel: the poll fails with
 * EBADF, the watcher hears BRAID_WATCH_ERROR once and the poll is not retried in
 * a loop. */
BT_TEST(poll_on_closed_fd_reports_error_once) {
    braid_loop *loop = uring_loop();
    int sv[2]; bt_socketpair(sv);
    hits h = { 0 };
    braid_watch w;
    BT_OK(braid_watch_init(loop, &w, sv[0], on_io, &h));
    BT_OK(braid_watch_set_interest(&w, BRAID_WATCH_READ));
    close(sv[0]);                              /* before the add is submitted */
    for (int i = 0; i < 3; i++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(h.errors, 1);
    BT_TRUE(h.last & BRAID_WATCH_ERROR);
    braid_watch_close(&w);
    close(sv[1]);
    bt_loop_destroy(loop);
}

/* A completion callback runs before the readiness callbacks of the same
 * iteration; if it closes (and frees) a watcher whose event is already
 * collected, that event is dropped. */
typedef struct close_other { braid_watch *victim; int victim_hits; int op_done; } close_other;
static void victim_cb(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; ((close_other *)arg)->victim_hits++; }
static void closer_op(braid__completion_op *op, int res, unsigned flags) {
    (void)res; (void)flags;
    close_other *c = op->data;
    c->op_done = 1;
    braid_watch_close(c->victim);
    free(c->victim);
    c->victim = NULL;
}

BT_TEST(completion_callback_closes_watcher_with_collected_event) {
    braid_loop *loop = uring_loop();
    int sv[2]; bt_socketpair(sv);
    close_other c = { .victim = malloc(sizeof(braid_watch)) };
    BT_OK(braid_watch_init(loop, c.victim, sv[0], victim_cb, &c));
    BT_OK(braid_watch_set_interest(c.victim, BRAID_WATCH_READ));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(write(sv[1], "x", 1), 1);           /* readiness CQE posted ... */
    braid__completion_op op;
    braid__completion_op_init(&op, closer_op, &c);
    struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
    io_uring_prep_nop(sqe);                    /* ... and a completion after it */
    braid__completion_uring_submit(loop, sqe, &op);
    BT_OK(braid_loop_run_once(loop, 0));
    if (!c.op_done) BT_OK(braid_loop_run_once(loop, 0));
    BT_EQ(c.op_done, 1);
    BT_EQ(c.victim_hits, 0);
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* ---- the completion interface --------------------------------------------------------- */
BT_TEST(completion_interface_absent_on_other_backends) {
    braid_loop_options o = { .backend = BRAID_BACKEND_EPOLL };
    braid_loop *loop;
    BT_OK(braid_loop_new(&o, &loop));
    BT_TRUE(braid__completion_uring_ring(loop) == NULL);
    BT_TRUE(braid__completion_uring_sqe(loop) == NULL);
    braid__completion_bufs *b = (braid__completion_bufs *)1;
    BT_ERR(braid__completion_bufs_new(loop, 4, 4, 64, 0, &b), BRAID_ENOSYS);
    BT_TRUE(b == NULL);
    BT_ERR(braid__completion_flush(loop), BRAID_ENOSYS);
    bt_loop_destroy(loop);
}

/* An op keeps run() going until its final CQE, which arrives exactly once. */
typedef struct op_log { int calls, last_res; unsigned last_flags; } op_log;
static void log_op(braid__completion_op *op, int res, unsigned flags) {
    op_log *l = op->data;
    l->calls++;
    l->last_res = res;
    l->last_flags = flags;
}

BT_TEST(op_completes_once_and_keeps_loop_alive) {
    braid_loop *loop = uring_loop();
    op_log l = { 0 };
    braid__completion_op op;
    braid__completion_op_init(&op, log_op, &l);
    struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
    struct __kernel_timespec ts = { 0, 20 * 1000 * 1000 };
    io_uring_prep_timeout(sqe, &ts, 0, 0);     /* completes with -ETIME in 20 ms */
    braid__completion_uring_submit(loop, sqe, &op);
    BT_TRUE(braid__completion_op_active(&op));
    BT_OK(braid_loop_run(loop));               /* returns only once the op is done */
    BT_EQ(l.calls, 1);
    BT_EQ(l.last_res, -ETIME);
    BT_FALSE(braid__completion_op_active(&op));
    bt_loop_destroy(loop);
}

BT_TEST(cancelled_op_gets_ecanceled) {
    braid_loop *loop = uring_loop();
    int sv[2]; bt_socketpair(sv);
    op_log l = { 0 };
    braid__completion_op op;
    braid__completion_op_init(&op, log_op, &l);
    static char buf[16];
    struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
    io_uring_prep_recv(sqe, sv[0], buf, sizeof buf, 0);   /* nothing to receive: waits */
    braid__completion_uring_submit(loop, sqe, &op);
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    BT_EQ(l.calls, 0);
    BT_OK(braid__completion_cancel(&op));
    BT_OK(braid__completion_cancel(&op));           /* again: already cancelling */
    BT_OK(braid_loop_run(loop));
    BT_EQ(l.calls, 1);
    BT_EQ(l.last_res, -ECANCELED);
    BT_ERR(braid__completion_cancel(&op), BRAID_EINVAL);   /* not active any more */
    close(sv[0]); close(sv[1]);
    bt_loop_destroy(loop);
}

/* Multishot recv over a socketpair with a provided-buffer ring: chunks land
 * in kernel-chosen buffers, the ring running dry ends the recv with
 * -ENOBUFS, recycling and resubmitting resumes it, EOF ends it with 0. */
typedef struct rx {
    braid__completion_bufs *bufs;
    char got[256];
    size_t len;
    int chunks, finals, last_res, recycle;
    unsigned last_flags;
} rx;

static void on_chunk(braid__completion_op *op, int res, unsigned flags) {
    rx *r = op->data;
    r->last_res = res;
    r->last_flags = flags;
    if (!(flags & IORING_CQE_F_MORE)) r->finals++;
    if (res > 0) {
        BT_TRUE(flags & IORING_CQE_F_BUFFER);
        unsigned bid = braid__completion_bid(flags);
        memcpy(r->got + r->len, braid__completion_bufs_get(r->bufs, bid), (size_t)res);
        r->len += (size_t)res;
        r->chunks++;
        if (r->recycle) braid__completion_bufs_recycle(r->bufs, bid);
    }
}

BT_TEST(multishot_recv_with_buffer_ring) {
    braid_loop *loop = uring_loop();
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    int sv[2]; bt_socketpair(sv);
    rx r = { .recycle = 1 };
    BT_ERR(braid__completion_bufs_new(loop, 3, 4, 16, 0, &r.bufs), BRAID_EINVAL);   /* not a power of two */
    BT_OK(braid__completion_bufs_new(loop, 4, 4, 16, 0, &r.bufs));
    BT_EQ(braid__completion_bufs_size(r.bufs), 16);
    braid__completion_op op;
    braid__completion_op_init(&op, on_chunk, &r);
    BT_OK(braid__completion_recv_multishot(loop, &op, sv[0], r.bufs));
    /* Several messages, recycled as they come: the recv goes on. */
    for (int i = 0; i < 10; i++) {
        char msg[8];
        int n = snprintf(msg, sizeof msg, "m%d;", i);
        BT_EQ(write(sv[1], msg, (size_t)n), n);
        BT_OK(braid_loop_run_once(loop, 0));
    }
    r.got[r.len] = 0;
    BT_STREQ(r.got, "m0;m1;m2;m3;m4;m5;m6;m7;m8;m9;");
    BT_EQ(r.finals, 0);
    BT_TRUE(braid__completion_op_active(&op));
    /* Without recycling, 4 buffers of 16 bytes run dry: -ENOBUFS, final. */
    r.recycle = 0;
    r.len = 0;
    char big[100];
    memset(big, 'z', sizeof big);
    BT_EQ(write(sv[1], big, sizeof big), (ssize_t)sizeof big);
    BT_RUN_UNTIL(loop, r.finals, 10);
    BT_EQ(r.finals, 1);
    BT_EQ(r.last_res, -ENOBUFS);
    BT_EQ(r.len, 64);                          /* four full buffers */
    BT_FALSE(braid__completion_op_active(&op));
    /* Give the buffers back, resubmit: the rest of the data, then EOF. */
    for (unsigned bid = 0; bid < 4; bid++) braid__completion_bufs_recycle(r.bufs, bid);
    r.recycle = 1;
    BT_OK(braid__completion_recv_multishot(loop, &op, sv[0], r.bufs));
    BT_RUN_UNTIL(loop, r.len >= sizeof big, 10);
    BT_EQ(r.len, sizeof big);
    close(sv[1]);
    BT_RUN_UNTIL(loop, r.finals >= 2, 10);
    BT_EQ(r.finals, 2);
    BT_EQ(r.last_res, 0);                      /* EOF */
    braid__completion_bufs_free(r.bufs);
    close(sv[0]);
    bt_loop_destroy(loop);
}

/* An owner (a connection, say) closes with its multishot recv in flight: it
 * cancels, closes its fd at once, and frees itself from the op's final
 * callback. Until then the loop's leak gate names the op. */
typedef struct owner {
    int fd;
    braid__completion_op op;
    braid__completion_bufs *bufs;
    int *freed;
} owner;

static void owner_cb(braid__completion_op *op, int res, unsigned flags) {
    owner *o = op->data;
    if (res > 0 && (flags & IORING_CQE_F_BUFFER)) braid__completion_bufs_recycle(o->bufs, braid__completion_bid(flags));
    if (!(flags & IORING_CQE_F_MORE)) {
        BT_EQ(res, -ECANCELED);
        braid__completion_bufs_free(o->bufs);
        ++*o->freed;
        free(o);
    }
}

static int leak_logs;
static void leak_log(void *ctx, braid_log_level l, const char *msg) {
    (void)ctx;
    if (l == BRAID_LOG_ERROR && strstr(msg, "uring")) leak_logs++;
}

BT_TEST(op_outstanding_when_owner_closes) {
    braid_loop_options lo = { .backend = BRAID_BACKEND_URING, .flags = BRAID_LOOP_STRICT_BACKEND,
                              .log = leak_log };
    braid_loop *loop;
    int rc = braid_loop_new(&lo, &loop);
    if (rc == BRAID_ENOSYS) bt_skip("io_uring not available");
    BT_OK(rc);
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    int sv[2]; bt_socketpair(sv);
    int freed = 0;
    owner *o = malloc(sizeof *o);
    o->fd = sv[0];
    o->freed = &freed;
    BT_OK(braid__completion_bufs_new(loop, 8, 8, 32, 0, &o->bufs));
    braid__completion_op_init(&o->op, owner_cb, o);
    BT_OK(braid__completion_recv_multishot(loop, &o->op, o->fd, o->bufs));
    BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    /* The leak gate sees the op and the buffer ring. */
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_EQ(leak_logs, 2);
    /* Owner closes: cancel, close the fd now; memory goes in the callback. */
    BT_OK(braid__completion_cancel(&o->op));
    close(o->fd);
    BT_OK(braid_loop_run(loop));
    BT_EQ(freed, 1);
    close(sv[1]);
    BT_OK(braid_loop_free(loop));
}

/* The allocation-failure walk: loop creation on io_uring, watchers (fd
 * table growth in the backend), an op and a buffer ring. */
static void noop_io(braid_watch *w, unsigned ev, void *arg) { (void)w; (void)ev; (void)arg; }

static int uring_scenario(void *arg) {
    (void)arg;
    braid_loop_options lo = { .backend = BRAID_BACKEND_URING, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop;
    int rc = braid_loop_new(&lo, &loop);
    if (rc < 0) return rc;
    int sv[2];
    bt_socketpair(sv);
    int hi = fcntl(sv[0], F_DUPFD_CLOEXEC, 900);
    braid_watch w1, w2;
    int w1_open = 0, w2_open = 0;
    braid__completion_bufs *bufs = NULL;
    if ((rc = braid_watch_init(loop, &w1, sv[0], noop_io, NULL)) < 0) goto out;
    w1_open = 1;
    if ((rc = braid_watch_set_interest(&w1, BRAID_WATCH_READ)) < 0) goto out;
    if ((rc = braid_watch_init(loop, &w2, hi, noop_io, NULL)) < 0) goto out;
    w2_open = 1;
    if ((rc = braid_watch_set_interest(&w2, BRAID_WATCH_READ | BRAID_WATCH_WRITE)) < 0) goto out;
    if ((rc = braid__completion_bufs_new(loop, 4, 8, 64, 0, &bufs)) < 0) goto out;
    op_log l = { 0 };
    braid__completion_op op;
    braid__completion_op_init(&op, log_op, &l);
    struct io_uring_sqe *sqe = braid__completion_uring_sqe(loop);
    io_uring_prep_nop(sqe);
    braid__completion_uring_submit(loop, sqe, &op);
    while (braid__completion_op_active(&op))
        if ((rc = braid_loop_run_once(loop, 0)) < 0) abort();
    if (l.calls != 1) abort();
    rc = 0;
out:
    braid__completion_bufs_free(bufs);
    if (w1_open) braid_watch_close(&w1);
    if (w2_open) braid_watch_close(&w2);
    bt_loop_destroy(loop);
    close(sv[0]); close(sv[1]); close(hi);
    return rc;
}

BT_TEST(allocation_failure_walk_on_uring) {
    braid_loop *probe = uring_loop();      /* skips without io_uring */
    bt_loop_destroy(probe);
    bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "uring", .body = uring_scenario, .enomem_only = true,
                                                 .must_fail = true, .max_runs = 1000 });
    BT_GE(r.errors, 5);
}

/* ---- the buffer ring: incremental consumption, growth, pins ---------------------------- */
typedef struct irx {
    braid__completion_bufs *bufs;
    char got[4][4096];
    size_t len[4];
    int bid_seen[4];
    int more_flags, chunks;
} irx;
typedef struct irx_op { braid__completion_op op; irx *r; int idx, fd; braid_loop *loop; bool stop; } irx_op;

static void on_irx(braid__completion_op *op, int res, unsigned flags) {
    irx_op *o = (irx_op *)op;
    irx *r = o->r;
    if (res > 0 && (flags & IORING_CQE_F_BUFFER)) {
        const char *d = braid__completion_bufs_data(r->bufs, flags);
        BT_TRUE(d != NULL);
        BT_LE(r->len[o->idx] + (size_t)res, sizeof r->got[0]);
        memcpy(r->got[o->idx] + r->len[o->idx], d, (size_t)res);
        r->len[o->idx] += (size_t)res;
        r->bid_seen[o->idx] = (int)braid__completion_bid(flags);
        if (flags & BRAID__COMPLETION_BUF_MORE) r->more_flags++;
        r->chunks++;
    }
    if (flags & IORING_CQE_F_BUFFER) braid__completion_bufs_consumed(r->bufs, flags, res > 0 ? res : 0);
    /* The ring ran dry (the one buffer was full before it came back): again. */
    if (!(flags & IORING_CQE_F_MORE) && res == -ENOBUFS && !o->stop)
        BT_OK(braid__completion_recv_multishot(o->loop, op, o->fd, r->bufs));
}

/* With incremental consumption, small messages from four sockets share one
 * buffer (each chunk where the last ended), and the data is right. */
BT_TEST(incremental_ring_shares_one_buffer) {
    braid_loop *loop = uring_loop();
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    irx r = { 0 };
    BT_OK(braid__completion_bufs_new(loop, 1, 4, 1024, BRAID__COMPLETION_BUFS_INC, &r.bufs));
    if (!braid__completion_bufs_incremental(r.bufs)) {
        braid__completion_bufs_free(r.bufs);
        bt_loop_destroy(loop);
        bt_skip("kernel without incremental buffer rings (6.12)");
    }
    BT_EQ(braid__completion_bufs_count(r.bufs), 1);
    BT_EQ(braid__completion_bufs_memory(r.bufs), 1024);
    int sv[4][2];
    irx_op ops[4];
    for (int i = 0; i < 4; i++) {
        bt_socketpair(sv[i]);
        ops[i].r = &r;
        ops[i].idx = i;
        ops[i].fd = sv[i][0];
        ops[i].loop = loop;
        ops[i].stop = false;
        braid__completion_op_init(&ops[i].op, on_irx, NULL);
        BT_OK(braid__completion_recv_multishot(loop, &ops[i].op, sv[i][0], r.bufs));
    }
    /* 4 sockets × 20 messages of 10 bytes = 800 bytes: all in the one buffer */
    for (int m = 0; m < 20; m++) {
        for (int i = 0; i < 4; i++) {
            char msg[16];
            snprintf(msg, sizeof msg, "s%d-m%02d;..", i, m);
            BT_EQ(write(sv[i][1], msg, 10), 10);
        }
        BT_OK(braid_loop_run_once(loop, 0));
    }
    for (int k = 0; k < 10; k++) BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    for (int i = 0; i < 4; i++) {
        BT_EQ(r.len[i], 200);
        for (int m = 0; m < 20; m++) {
            char msg[16];
            snprintf(msg, sizeof msg, "s%d-m%02d;..", i, m);
            BT_TRUE(memcmp(r.got[i] + 10 * m, msg, 10) == 0);
        }
        BT_EQ(r.bid_seen[i], 0);
    }
    BT_GE(r.more_flags, 1);                       /* the kernel kept filling the buffer */
    /* More than the buffer holds: it is given back when full, and reused */
    char big[900];
    for (int k = 0; k < 3; k++) {
        memset(big, 'a' + k, sizeof big);
        BT_EQ(write(sv[0][1], big, sizeof big), (ssize_t)sizeof big);
        BT_RUN_UNTIL(loop, r.len[0] >= 200 + (size_t)(k + 1) * sizeof big, 10);
    }
    BT_EQ(r.len[0], 200 + 3 * sizeof big);
    for (int k = 0; k < 3; k++)
        for (size_t j = 0; j < sizeof big; j++) BT_EQ(r.got[0][200 + (size_t)k * sizeof big + j], 'a' + k);
    for (int i = 0; i < 4; i++) {
        ops[i].stop = true;
        if (braid__completion_op_active(&ops[i].op)) BT_OK(braid__completion_cancel(&ops[i].op));
        close(sv[i][1]);
    }
    for (int k = 0; k < 20; k++) {
        bool any = false;
        for (int i = 0; i < 4; i++) any |= braid__completion_op_active(&ops[i].op);
        if (!any) break;
        BT_OK(braid_loop_run_once(loop, 0));
    }
    for (int i = 0; i < 4; i++) close(sv[i][0]);
    braid__completion_bufs_free(r.bufs);
    bt_loop_destroy(loop);
}

/* Growth doubles the buffers up to max; pins keep a buffer out of the
 * kernel's hands until released, and are refused past half the ring. */
BT_TEST(ring_grows_and_pins_hold_buffers) {
    braid_loop *loop = uring_loop();
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    BT_ERR(braid__completion_bufs_new(loop, 8, 4, 16, 0, &(braid__completion_bufs *){ NULL }), BRAID_EINVAL);
    int sv[2]; bt_socketpair(sv);
    rx r = { .recycle = 0 };
    BT_OK(braid__completion_bufs_new(loop, 2, 8, 16, 0, &r.bufs));
    BT_EQ(braid__completion_bufs_count(r.bufs), 2);
    BT_EQ(braid__completion_bufs_grow(r.bufs), 1);
    BT_EQ(braid__completion_bufs_count(r.bufs), 4);
    BT_EQ(braid__completion_bufs_grow(r.bufs), 1);
    BT_EQ(braid__completion_bufs_count(r.bufs), 8);
    BT_EQ(braid__completion_bufs_grow(r.bufs), 0);      /* at max */
    BT_EQ(braid__completion_bufs_memory(r.bufs), 8 * 16);
    /* pins: half the ring at most */
    unsigned f0 = IORING_CQE_F_BUFFER | (0u << IORING_CQE_BUFFER_SHIFT);
    unsigned f1 = IORING_CQE_F_BUFFER | (1u << IORING_CQE_BUFFER_SHIFT);
    BT_TRUE(braid__completion_bufs_pin(r.bufs, f0));
    BT_TRUE(braid__completion_bufs_pin(r.bufs, f0));    /* a second chunk of the same buffer */
    for (unsigned bid = 1; bid < 4; bid++)
        BT_TRUE(braid__completion_bufs_pin(r.bufs, IORING_CQE_F_BUFFER | (bid << IORING_CQE_BUFFER_SHIFT)));
    BT_FALSE(braid__completion_bufs_pin(r.bufs, IORING_CQE_F_BUFFER | (4u << IORING_CQE_BUFFER_SHIFT)));
    BT_TRUE(braid__completion_bufs_pin(r.bufs, f1));    /* an already pinned buffer: always */
    for (unsigned bid = 1; bid < 4; bid++) braid__completion_bufs_unpin(r.bufs, bid);
    braid__completion_bufs_unpin(r.bufs, 1);
    /* A pinned buffer the kernel is done with is not given back: take
     * every buffer out of the ring (8 × 16 bytes) with buffer 0 pinned,
     * give them all back (consumed), and only 7 × 16 bytes more can
     * arrive; after the last unpin of buffer 0, 16 more. */
    braid__completion_op op;
    braid__completion_op_init(&op, on_chunk, &r);
    BT_OK(braid__completion_recv_multishot(loop, &op, sv[0], r.bufs));
    char big[200];
    memset(big, 'q', sizeof big);
    BT_EQ(write(sv[1], big, 128), 128);
    BT_RUN_UNTIL(loop, r.len >= 128, 10);
    BT_EQ(r.len, 128);
    for (unsigned bid = 0; bid < 8; bid++)   /* consumed: 0 stays out (pinned twice) */
        braid__completion_bufs_consumed(r.bufs, IORING_CQE_F_BUFFER | (bid << IORING_CQE_BUFFER_SHIFT), 16);
    r.len = 0;
    BT_EQ(write(sv[1], big, sizeof big), (ssize_t)sizeof big);
    BT_RUN_UNTIL(loop, r.finals, 10);
    BT_EQ(r.finals, 1);
    BT_EQ(r.len, 7 * 16);
    BT_EQ(r.last_res, -ENOBUFS);
    braid__completion_bufs_unpin(r.bufs, 0);            /* still pinned once */
    BT_FALSE(braid__completion_op_active(&op));
    BT_OK(braid__completion_recv_multishot(loop, &op, sv[0], r.bufs));
    BT_RUN_UNTIL(loop, r.finals >= 2, 10);
    BT_EQ(r.len, 7 * 16);                          /* nothing: no buffer */
    braid__completion_bufs_unpin(r.bufs, 0);            /* now it is back */
    BT_OK(braid__completion_recv_multishot(loop, &op, sv[0], r.bufs));
    BT_RUN_UNTIL(loop, r.finals >= 3, 10);
    BT_EQ(r.len, 8 * 16);
    BT_EQ(r.last_res, -ENOBUFS);
    BT_FALSE(braid__completion_op_active(&op));
    braid__completion_bufs_free(r.bufs);
    close(sv[0]);
    bt_loop_destroy(loop);
}

/* ---- TCP on completions: the ring's size, direct sends, paused readers --------------- */
typedef struct sink {
    braid_protocol base;
    uint64_t total;
    int pattern_errors, lost, lost_code;
    bool paused_from_start;
} sink;
static void sink_made(braid_protocol *p) {
    if (((sink *)p)->paused_from_start) braid_transport_pause_reading(p->transport);
}
static void sink_data(braid_protocol *p, const void *buf, size_t len) {
    sink *k = (sink *)p;
    const unsigned char *b = buf;
    for (size_t i = 0; i < len; i++)
        if (b[i] != (unsigned char)((k->total + i) % 251)) k->pattern_errors++;
    k->total += len;
}
static void sink_lost(braid_protocol *p, const braid_failure *f) {
    sink *k = (sink *)p;
    k->lost++;
    k->lost_code = f->code;
}
static const braid_protocol_ops sink_ops = { .connection_made = sink_made, .data_received = sink_data,
                                             .connection_lost = sink_lost };

static braid__completion_bufs *loop_ring(braid_loop *loop) { return braid__fd_ring(loop); }

/* The ring is sized to use: a loop with a few TCP connections on
 * completions holds at most 1 MiB of receive buffers (it was 16 MiB before
 * any connection spoke), and an incremental ring grows with the number of
 * connections (a plain one with demand). A large write on an idle
 * connection goes to the kernel at once, uncopied. */
BT_TEST(completion_ring_sized_to_use) {
    braid_loop *loop = uring_loop();
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    enum { N = 100 };
    static int fds[N][2];
    static sink k[N];
    memset(k, 0, sizeof k);
    for (int i = 0; i < 2; i++) {
        bt_tcp_socketpair(fds[i]);
        k[i].base.ops = &sink_ops;
        BT_OK(braid_transport_adopt(loop, fds[i][1], &k[i].base));
    }
    braid__completion_bufs *b = loop_ring(loop);
    BT_TRUE(b != NULL);
    BT_ULE(braid__completion_bufs_memory(b), 1u << 20);
    bool inc = braid__completion_bufs_incremental(b);
    /* a 256 KiB write on an idle connection: the kernel takes it now */
    static char big[256 * 1024];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (char)(i % 251);
    braid_transport *t = k[0].base.transport;
    BT_OK(braid_transport_write(t, big, sizeof big));
    BT_EQ(braid_transport_buffered(t), 0);
    /* it arrives whole at the other end */
    size_t got = 0;
    char rb[65536];
    while (got < sizeof big) {
        ssize_t n = read(fds[0][0], rb, sizeof rb);
        BT_GT(n, 0);
        for (ssize_t i = 0; i < n; i++) BT_EQ((unsigned char)rb[i], (unsigned char)((got + (size_t)i) % 251));
        got += (size_t)n;
    }
    /* more connections */
    for (int i = 2; i < N; i++) {
        bt_tcp_socketpair(fds[i]);
        k[i].base.ops = &sink_ops;
        BT_OK(braid_transport_adopt(loop, fds[i][1], &k[i].base));
    }
    if (inc) {
        BT_GE(braid__completion_bufs_count(b), N / 16);   /* one buffer per 16 connections at least */
        BT_ULE(braid__completion_bufs_memory(b), 8u << 20);
    }
    /* every connection speaks at once: all of it arrives, in order */
    uint64_t want = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            char msg[3000];
            for (size_t j = 0; j < sizeof msg; j++) msg[j] = (char)((want + j) % 251);
            BT_EQ(write(fds[i][0], msg, sizeof msg), (ssize_t)sizeof msg);
        }
        want += 3000;
        for (int it = 0; it < 200; it++) {
            bool all = true;
            for (int i = 0; i < N; i++) all &= k[i].total == want;
            if (all) break;
            BT_OK(braid_loop_run_once(loop, 0));
        }
    }
    for (int i = 0; i < N; i++) {
        BT_UEQ(k[i].total, want);
        BT_EQ(k[i].pattern_errors, 0);
    }
    if (!inc) BT_ULE(braid__completion_bufs_memory(b), 16u << 20);
    for (int i = 0; i < N; i++) {
        braid_transport_abort(k[i].base.transport);
        close(fds[i][0]);
    }
    for (int it = 0; it < 100; it++) {
        bool all = true;
        for (int i = 0; i < N; i++) all &= k[i].lost == 1;
        if (all) break;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    braid_loop_run(loop);
    bt_loop_destroy(loop);
}

/* Readers paused while data keeps arriving, more of them than half the ring
 * can hold pinned: what each holds (pinned chunks, then copies once the
 * ring's half is taken) is delivered in order when it resumes, with EOF
 * last; and the connections that were not paused kept receiving meanwhile. */
BT_TEST(paused_readers_hold_in_order_without_starving_others) {
    braid_loop *loop = uring_loop();
    if (!braid__completion_have_recv_multishot()) { bt_loop_destroy(loop); bt_skip("no multishot recv"); }
    enum { N = 12, ACTIVE = 2 };
    int fds[N][2];
    static sink k[N];
    memset(k, 0, sizeof k);
    for (int i = 0; i < N; i++) {
        bt_tcp_socketpair(fds[i]);
        int on = 1 << 20;
        setsockopt(fds[i][0], SOL_SOCKET, SO_SNDBUF, &on, sizeof on);
        k[i].base.ops = &sink_ops;
        k[i].paused_from_start = i >= ACTIVE;
        BT_OK(braid_transport_adopt(loop, fds[i][1], &k[i].base));
        /* the lazy pause lets the recv start; data then arrives while paused */
        braid_transport *t = k[i].base.transport;
        if (i >= ACTIVE) { braid_transport_resume_reading(t); braid_transport_pause_reading(t); }
    }
    static char data[200000];
    for (size_t j = 0; j < sizeof data; j++) data[j] = (char)(j % 251);
    for (int i = 0; i < N; i++) {
        int fl = fcntl(fds[i][0], F_GETFL);
        fcntl(fds[i][0], F_SETFL, fl | O_NONBLOCK);
        size_t off = 0;
        for (int tries = 0; off < sizeof data && tries < 1000; tries++) {
            ssize_t n = write(fds[i][0], data + off, sizeof data - off);
            if (n > 0) off += (size_t)n;
            BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
        }
        BT_EQ(off, sizeof data);
        shutdown(fds[i][0], SHUT_WR);
    }
    for (int it = 0; it < 2000; it++) {
        bool done = true;
        for (int i = 0; i < ACTIVE; i++) done &= k[i].lost == 1;
        if (done) break;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    for (int i = 0; i < ACTIVE; i++) {
        BT_UEQ(k[i].total, sizeof data);     /* the unpaused ones were not starved */
        BT_ERR(k[i].lost_code, BRAID_ECONNECTION_DONE);
    }
    for (int i = ACTIVE; i < N; i++) BT_EQ(k[i].lost, 0);
    for (int i = ACTIVE; i < N; i++) braid_transport_resume_reading(k[i].base.transport);
    for (int it = 0; it < 20000; it++) {
        bool done = true;
        for (int i = ACTIVE; i < N; i++) done &= k[i].lost == 1;
        if (done) break;
        BT_OK(braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT));
    }
    for (int i = 0; i < N; i++) {
        BT_UEQ(k[i].total, sizeof data);
        BT_EQ(k[i].pattern_errors, 0);
        BT_ERR(k[i].lost_code, BRAID_ECONNECTION_DONE);
        close(fds[i][0]);
    }
    braid_loop_run(loop);
    bt_loop_destroy(loop);
}
#endif
