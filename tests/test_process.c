/* Child processes: the fd map (checked from inside the child), exit codes
 * and signals through pidfds and through SIGCHLD, kill_after on the fake
 * clock, spawn errors without a leaked descriptor, a burst of spawns with
 * no zombie left, the free policies and the allocation-failure walk.
 *
 * The children are this very program re-run (/proc/self/exe) with
 * BT_CHILD naming what to do: the constructor below runs before the
 * harness's main and never returns to it. */
#include "harness.h"
#include <braid/process.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- the children ------------------------------------------------------------------ */
static void say(const char *s) {
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(1, s, n);
        if (w <= 0) _exit(9);
        s += w;
        n -= (size_t)w;
    }
}

__attribute__((constructor)) static void child_main(void) {
    const char *role = getenv("BT_CHILD");
    if (!role) return;
    char buf[4096];
    if (!strncmp(role, "exit:", 5)) _exit(atoi(role + 5));
    if (!strcmp(role, "fds")) {            /* list our fds (but the one listing them) */
        DIR *d = opendir("/proc/self/fd");
        if (!d) _exit(8);
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' || atoi(e->d_name) == dirfd(d)) continue;
            snprintf(buf, sizeof buf, "%s ", e->d_name);
            say(buf);
        }
        closedir(d);
        if (getenv("BT_WRITE5") && write(5, "x", 1) != 1) _exit(7);
        _exit(0);
    }
    if (!strcmp(role, "echo")) {           /* stdin to stdout until EOF */
        ssize_t n;
        while ((n = read(0, buf, sizeof buf)) > 0) {
            buf[n] = 0;
            say(buf);
        }
        _exit(n == 0 ? 0 : 6);
    }
    if (!strcmp(role, "env")) {
        const char *x = getenv("BT_X"), *y = getenv("BT_Y");
        char cwd[512];
        snprintf(buf, sizeof buf, "X=%s Y=%s CWD=%s", x ? x : "-", y ? y : "-",
                 getcwd(cwd, sizeof cwd) ? cwd : "?");
        say(buf);
        _exit(0);
    }
    if (!strcmp(role, "sigstate")) {       /* SigBlk and SigIgn lines of our status */
        FILE *f = fopen("/proc/self/status", "r");
        if (!f) _exit(8);
        while (fgets(buf, sizeof buf, f))
            if (!strncmp(buf, "SigBlk:", 7) || !strncmp(buf, "SigIgn:", 7)) say(buf);
        fclose(f);
        _exit(0);
    }
    if (!strcmp(role, "ignore_term")) {    /* survive SIGTERM; say when ready */
        signal(SIGTERM, SIG_IGN);
        say("ready");
        for (;;) pause();
    }
    if (!strcmp(role, "sleep")) {
        for (;;) pause();
    }
    _exit(99);
}

/* ---- helpers ----------------------------------------------------------------------- */
typedef struct rec {
    char out[8192];
    size_t len;
    int exited_calls, ended_calls, closed_calls;
    bool exited_before_ended;
    braid_process_status st;
    int ended;
} rec;

static void rec_data(braid_process *p, int child_fd, const void *buf, size_t len) {
    rec *r = braid_process_user(p);
    (void)child_fd;
    if (r->len + len < sizeof r->out) {
        memcpy(r->out + r->len, buf, len);
        r->len += len;
        r->out[r->len] = 0;
    }
}
static void rec_closed(braid_process *p, int child_fd, int reason) {
    rec *r = braid_process_user(p);
    (void)child_fd; (void)reason;
    r->closed_calls++;
}
static void rec_exited(braid_process *p, const braid_process_status *st) {
    rec *r = braid_process_user(p);
    (void)st;
    r->exited_calls++;
}
static void rec_ended(braid_process *p, const braid_process_status *st) {
    rec *r = braid_process_user(p);
    r->ended_calls++;
    r->exited_before_ended = r->exited_calls == 1;
    r->st = *st;
    r->ended = 1;
}
static const braid_process_protocol rec_proto = {
    .data_received = rec_data, .fd_closed = rec_closed, .exited = rec_exited, .ended = rec_ended,
};

static int count_fds(void) {
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) n += e->d_name[0] != '.';
    closedir(d);
    return n - 1;
}

/* Spawn this program as role with stdout routed, stdin /dev/null, stderr inherited. */
static braid_process *spawn_role(braid_loop *loop, const char *role, rec *r) {
    char envbuf[128];
    snprintf(envbuf, sizeof envbuf, "BT_CHILD=%s", role);
    const char *env[] = { envbuf, NULL };
    const char *argv[] = { "test_process", NULL };
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_DEVNULL, 0, NULL },
                               { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 2, BRAID_PROCESS_FD_INHERIT, 2, NULL } };
    braid_process_options o = { .file = "/proc/self/exe", .argv = argv,
                                .env_mode = BRAID_PROCESS_ENV_EXTEND, .env = env,
                                .fds = fds, .nfds = 3, .protocol = &rec_proto, .user = r };
    braid_process *p = NULL;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    return p;
}

static void no_children_left(void) {
    errno = 0;
    BT_EQ(waitpid(-1, NULL, WNOHANG), -1);
    BT_EQ(errno, ECHILD);
}

/* ---- exit codes, signals ------------------------------------------------------------- */
static void exit_code_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { 0 };
    braid_process *p = spawn_role(loop, "exit:7", &r);
    BT_GT(braid_process_pid(p), 0);
    bt_run_until(loop, &r.ended, 100000);
    BT_EQ(r.st.exit_code, 7);
    BT_EQ(r.st.signo, 0);
    BT_EQ(r.exited_calls, 1);
    BT_EQ(r.ended_calls, 1);
    BT_EQ(r.closed_calls, 1);
    BT_TRUE(r.exited_before_ended);
    braid_process_status st;
    BT_TRUE(braid_process_has_exited(p, &st));
    BT_EQ(st.exit_code, 7);
    BT_ERR(braid_process_signal(p, SIGTERM), BRAID_EPROCESS_EXITED);
    braid_process_free(p);
    bt_loop_destroy(loop);
    no_children_left();
}
BT_IO_TEST(process_exit_code) { exit_code_case(); }
BT_IO_TEST(process_exit_code_sigchld) {
    setenv("BRAID_PROCESS_SIGCHLD", "1", 1);
    exit_code_case();
}

static braid_result got_status(braid_result r, void *arg) {
    *(braid_process_status *)arg = *(const braid_process_status *)r.value;
    return r;
}

static void signal_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { 0 };
    braid_process *p = spawn_role(loop, "sleep", &r);
    braid_process_status st = { .exit_code = 55 };
    braid_deferred *d = braid_process_ended(p);
    BT_OK(braid_deferred_add_callback(d, got_status, &st));
    braid_deferred_unref(d);
    BT_OK(braid_process_signal(p, SIGTERM));
    bt_run_until(loop, &r.ended, 100000);
    BT_EQ(r.st.exit_code, -1);
    BT_EQ(r.st.signo, SIGTERM);
    BT_EQ(st.signo, SIGTERM);      /* the Deferred fired with the status */
    /* After the end, a new Deferred has fired already. */
    d = braid_process_ended(p);
    BT_TRUE(braid_deferred_is_called(d));
    braid_deferred_unref(d);
    braid_process_free(p);
    bt_loop_destroy(loop);
    no_children_left();
}
BT_IO_TEST(process_signal) { signal_case(); }
BT_IO_TEST(process_signal_sigchld) {
    setenv("BRAID_PROCESS_SIGCHLD", "1", 1);
    signal_case();
}

/* A child that ignores SIGTERM is killed when kill_after's timeout passes
 * on the (fake) loop clock, and not before. */
static void kill_after_case(void) {
    braid_fake_clock *fc = NULL;
    braid_fake_clock_new(0, &fc);
    braid_loop *loop = bt_loop_new(braid_fake_clock_base(fc));
    rec r = { 0 };
    braid_process *p = spawn_role(loop, "ignore_term", &r);
    for (int i = 0; i < 100000 && r.len < 5; i++) braid_loop_run_once(loop, 0);
    BT_STREQ(r.out, "ready");
    BT_OK(braid_process_kill_after(p, BRAID_SECONDS(10)));
    braid_fake_clock_advance(fc, BRAID_SECONDS(9));
    for (int i = 0; i < 20; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_FALSE(braid_process_has_exited(p, NULL));   /* SIGTERM ignored, SIGKILL not yet */
    braid_fake_clock_advance(fc, BRAID_SECONDS(1));
    bt_run_until(loop, &r.ended, 100000);
    BT_EQ(r.st.signo, SIGKILL);
    braid_process_free(p);
    bt_loop_destroy(loop);
    braid_fake_clock_free(fc);
}
BT_IO_TEST(process_kill_after) { kill_after_case(); }

/* ---- the fd map ------------------------------------------------------------------------ */
/* Whatever the parent has open — close-on-exec or not, at low numbers or
 * high — the child has exactly the fds of its map, and an inherited one is
 * the parent's file. */
static void fd_map_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    int leak[4];
    for (int i = 0; i < 4; i++) leak[i] = dup(2);   /* not close-on-exec */
    int hi = fcntl(2, F_DUPFD, 900);                 /* high, not close-on-exec */
    int pp[2];
    BT_OK(pipe(pp));                                 /* not close-on-exec either */
    rec r = { 0 };
    const char *env[] = { "BT_CHILD=fds", "BT_WRITE5=1", NULL };
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_DEVNULL, 0, NULL },
                               { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 2, BRAID_PROCESS_FD_INHERIT, 2, NULL },
                               { 5, BRAID_PROCESS_FD_INHERIT, pp[1], NULL },
                               { 7, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env, .fds = fds, .nfds = 5, .protocol = &rec_proto,
                                .user = &r };
    braid_process *p;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    bt_run_until(loop, &r.ended, 100000);
    BT_EQ(r.st.exit_code, 0);
    BT_STREQ(r.out, "0 1 2 5 7 ");
    char c = 0;
    BT_EQ(read(pp[0], &c, 1), 1);                    /* fd 5 was the parent's pipe */
    BT_EQ(c, 'x');
    braid_process_free(p);
    for (int i = 0; i < 4; i++) close(leak[i]);
    close(hi);
    close(pp[0]);
    close(pp[1]);
    bt_loop_destroy(loop);
}
BT_IO_TEST(process_fd_map) { fd_map_case(); }

/* A child fd mapped from a parent fd of the same number (the "dup2 onto
 * itself keeps close-on-exec" trap) and one mapped from another child
 * fd's number (a swap) both arrive. */
static void fd_map_swap_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    int a[2], b[2];
    BT_OK(pipe2(a, O_CLOEXEC));
    BT_OK(pipe2(b, O_CLOEXEC));
    /* Put a's write end at fd 40 (close-on-exec) and b's at 41. */
    BT_EQ(dup3(a[1], 40, O_CLOEXEC), 40);
    BT_EQ(dup3(b[1], 41, O_CLOEXEC), 41);
    rec r = { 0 };
    const char *env[] = { "BT_CHILD=fds", NULL };
    braid_process_fd fds[] = { { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 40, BRAID_PROCESS_FD_INHERIT, 41, NULL },   /* swap */
                               { 41, BRAID_PROCESS_FD_INHERIT, 40, NULL },
                               { 42, BRAID_PROCESS_FD_INHERIT, 42, NULL } };
    int fd42 = dup3(a[1], 42, O_CLOEXEC);              /* same number, close-on-exec */
    BT_EQ(fd42, 42);
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env, .fds = fds, .nfds = 4, .protocol = &rec_proto,
                                .user = &r };
    braid_process *p;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    bt_run_until(loop, &r.ended, 100000);
    BT_STREQ(r.out, "1 40 41 42 ");
    braid_process_free(p);
    for (int fd = 40; fd <= 42; fd++) close(fd);
    close(a[0]); close(a[1]); close(b[0]); close(b[1]);
    bt_loop_destroy(loop);
}
BT_IO_TEST(process_fd_map_swap) { fd_map_swap_case(); }

/* stdin to the child, stdout back, EOF by close_fd. */
static void stdin_stdout_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { 0 };
    const char *env[] = { "BT_CHILD=echo", NULL };
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_TO_CHILD, 0, NULL },
                               { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 2, BRAID_PROCESS_FD_INHERIT, 2, NULL } };
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env, .fds = fds, .nfds = 3, .protocol = &rec_proto,
                                .user = &r };
    braid_process *p;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    BT_TRUE(braid_process_transport(p, 0) != NULL);
    BT_TRUE(braid_process_transport(p, 3) == NULL);
    BT_OK(braid_process_write(p, 0, "hello ", 6));
    BT_OK(braid_process_write(p, 0, "world", 5));
    BT_ERR(braid_process_write(p, 7, "x", 1), BRAID_ENOENT);
    BT_OK(braid_process_close_fd(p, 0));
    bt_run_until(loop, &r.ended, 100000);
    BT_STREQ(r.out, "hello world");
    BT_EQ(r.st.exit_code, 0);
    BT_EQ(r.closed_calls, 2);
    braid_process_free(p);
    bt_loop_destroy(loop);
}
BT_IO_TEST(process_stdin_stdout) { stdin_stdout_case(); }

static void env_cwd_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    setenv("BT_Y", "parent", 1);
    const char *env1[] = { "BT_CHILD=env", "BT_X=42", NULL };
    braid_process_fd fds[] = { { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL } };
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env1, .fds = fds, .nfds = 1, .protocol = &rec_proto,
                                .cwd = "/", .new_process_group = true };
    rec r1 = { 0 }, r2 = { 0 };
    o.user = &r1;
    braid_process *p1, *p2;
    BT_OK(braid_process_spawn(loop, &o, &p1, NULL));
    BT_EQ(getpgid(braid_process_pid(p1)), braid_process_pid(p1));
    o.env_mode = BRAID_PROCESS_ENV_REPLACE;
    o.cwd = NULL;
    o.new_process_group = false;
    o.new_session = true;
    o.user = &r2;
    BT_OK(braid_process_spawn(loop, &o, &p2, NULL));
    BT_EQ(getsid(braid_process_pid(p2)), braid_process_pid(p2));   /* a session of its own */
    bt_run_until(loop, &r1.ended, 100000);
    bt_run_until(loop, &r2.ended, 100000);
    BT_STREQ(r1.out, "X=42 Y=parent CWD=/");
    char want[600], cwd[512];
    snprintf(want, sizeof want, "X=42 Y=- CWD=%s", getcwd(cwd, sizeof cwd));
    BT_STREQ(r2.out, want);
    braid_process_free(p1);
    braid_process_free(p2);
    bt_loop_destroy(loop);
}
BT_IO_TEST(process_env_cwd) { env_cwd_case(); }

/* A parent thread that blocks SIGTERM and ignores SIGUSR1 (as JVM and
 * libdispatch threads do) still gives its children a clean signal state. */
static void clean_signal_state_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &s, NULL);
    signal(SIGUSR1, SIG_IGN);
#if defined(__linux__) && defined(SYS_rt_sigaction)
    /* The C library's own signals (glibc's 32 and 33) ignored too, as in a
     * program that posix_spawn started (its sigaction refuses them: the
     * kernel's call). The fork path once left them ignored in the child. */
    unsigned long ign[8] = { (unsigned long)(uintptr_t)SIG_IGN };
    for (int sig = 32; sig <= 33 && sig < SIGRTMIN; sig++) (void)syscall(SYS_rt_sigaction, sig, ign, NULL, (size_t)(NSIG - 1) / 8);
#endif
    rec r = { 0 };
    braid_process *p = spawn_role(loop, "sigstate", &r);
    bt_run_until(loop, &r.ended, 100000);
    BT_STREQ(r.out, "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
    braid_process_free(p);
    bt_loop_destroy(loop);
}
BT_IO_TEST(process_clean_signal_state) { clean_signal_state_case(); }

/* ---- spawn errors ------------------------------------------------------------------------ */
static void spawn_errors_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    int before = count_fds();
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_TO_CHILD, 0, NULL },
                               { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 2, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    braid_process_options o = { .file = "/no/such/program", .fds = fds, .nfds = 3 };
    braid_process *p = NULL;
    braid_failure *f = NULL;
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -ENOENT);
    BT_TRUE(p == NULL);
    BT_TRUE(f && strstr(f->message, "/no/such/program"));
    braid_failure_free(f);
    o.file = "no-such-program-in-path";
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -ENOENT);
    BT_TRUE(strstr(f->message, "no-such-program-in-path"));
    braid_failure_free(f);
    /* Not executable. */
    char path[] = "/tmp/braid-noexec-XXXXXX";
    int tfd = mkstemp(path);
    BT_GE(tfd, 0);
    BT_EQ(write(tfd, "#!/bin/sh\n", 10), 10);
    close(tfd);
    chmod(path, 0644);
    o.file = path;
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -EACCES);
    BT_TRUE(strstr(f->message, path));
    braid_failure_free(f);
    unlink(path);
    /* A bad map: a duplicate child fd, an inherited fd that is not open. */
    braid_process_fd dup_map[] = { { 1, BRAID_PROCESS_FD_DEVNULL, 0, NULL },
                                   { 1, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    o.file = "/bin/true";
    o.fds = dup_map;
    o.nfds = 2;
    BT_ERR(braid_process_spawn(loop, &o, &p, NULL), BRAID_EINVAL);
    braid_process_fd closed_map[] = { { 1, BRAID_PROCESS_FD_INHERIT, 999, NULL } };
    o.fds = closed_map;
    o.nfds = 1;
    BT_ERR(braid_process_spawn(loop, &o, &p, NULL), BRAID_EINVAL);
    /* EMFILE: room for two more descriptors, the map needs more. */
    struct rlimit old, lim;
    getrlimit(RLIMIT_NOFILE, &old);
    lim = old;
    lim.rlim_cur = 64;
    BT_OK(setrlimit(RLIMIT_NOFILE, &lim));
    int filler[64], nf = 0;
    while (nf < 64 && (filler[nf] = dup(0)) >= 0) nf++;
    BT_GE(nf, 2);
    close(filler[--nf]);
    close(filler[--nf]);
    o.file = "/bin/true";
    o.fds = fds;
    o.nfds = 3;
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -EMFILE);
    BT_TRUE(strstr(f->message, "/bin/true"));
    braid_failure_free(f);
    while (nf) close(filler[--nf]);
    BT_OK(setrlimit(RLIMIT_NOFILE, &old));
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    BT_EQ(count_fds(), before);
    bt_loop_destroy(loop);
    no_children_left();
}
BT_IO_TEST(process_spawn_errors) { spawn_errors_case(); }

/* EAGAIN at the process limit: in a child that is not root (root ignores
 * RLIMIT_NPROC), with the limit at what the user has already. */
BT_IO_TEST(process_spawn_eagain) {
    pid_t pid = fork();
    BT_GE(pid, 0);
    if (pid == 0) {
        if (getuid() == 0 && (setgid(65534) < 0 || setuid(65534) < 0)) _exit(77);
        struct rlimit lim = { 0, 0 };
        if (setrlimit(RLIMIT_NPROC, &lim) < 0) _exit(76);
        braid_loop *loop;
        if (braid_loop_new(NULL, &loop) < 0) _exit(75);
        braid_process_options o = { .file = "/bin/true" };
        braid_process *p;
        braid_failure *f = NULL;
        int rc = braid_process_spawn(loop, &o, &p, &f);
        bool named = f && strstr(f->message, "/bin/true");
        braid_failure_free(f);
        if (braid_loop_free(loop) < 0) _exit(74);
        _exit(rc == -EAGAIN && named ? 0 : 1);
    }
    int st;
    BT_EQ(waitpid(pid, &st, 0), pid);
    BT_TRUE(WIFEXITED(st));
    if (WEXITSTATUS(st) == 77) bt_skip("cannot drop root");
    BT_EQ(WEXITSTATUS(st), 0);
}

/* ---- bursts, free policies ------------------------------------------------------------- */
typedef struct burst { int ended, target, failed; } burst;
static void burst_ended(braid_process *p, const braid_process_status *st) {
    burst *b = braid_process_user(p);
    if (st->exit_code != 0) b->failed++;
    b->ended++;
    braid_process_free(p);   /* from its own callback */
}
static const braid_process_protocol burst_proto = { .ended = burst_ended };

static void burst_case(int total) {
    braid_loop *loop = bt_loop_new(NULL);
    burst b = { 0 };
    int spawned = 0, done = 0;
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    braid_process_options o = { .file = "/bin/true", .fds = fds, .nfds = 1, .protocol = &burst_proto,
                                .user = &b };
    while (b.ended < total) {
        while (spawned < total && spawned - b.ended < 64) {
            braid_process *p;
            BT_OK(braid_process_spawn(loop, &o, &p, NULL));
            spawned++;
        }
        braid_loop_run_once(loop, 0);
    }
    done = b.ended;
    BT_EQ(done, total);
    BT_EQ(b.failed, 0);
    bt_loop_destroy(loop);
    no_children_left();
}
/* 1,000 through each exit path on the default backend; 200 on each backend. */
BT_TEST(process_burst_1000_no_zombies) { burst_case(1000); }
BT_TEST(process_burst_1000_no_zombies_sigchld) {
    setenv("BRAID_PROCESS_SIGCHLD", "1", 1);
    burst_case(1000);
}
BT_IO_TEST(process_burst_no_zombies) { burst_case(200); }

BT_IO_TEST(process_free_policies) {
    braid_loop *loop = bt_loop_new(NULL);
    rec r = { 0 };
    /* KILL (the default): gone and reaped when free returns. */
    braid_process *p = spawn_role(loop, "sleep", &r);
    pid_t pid = braid_process_pid(p);
    braid_process_free(p);
    errno = 0;
    BT_EQ(kill(pid, 0), -1);
    BT_EQ(errno, ESRCH);
    /* WAIT: still running after free, reaped by the loop once it exits;
     * the loop's leak gate waits for it. */
    const char *env[] = { "BT_CHILD=sleep", NULL };
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env, .on_free = BRAID_PROCESS_FREE_WAIT };
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    pid = braid_process_pid(p);
    braid_process_free(p);
    BT_EQ(kill(pid, 0), 0);
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);   /* names it */
    kill(pid, SIGTERM);
    braid_loop_run(loop);
    bt_loop_destroy(loop);
    no_children_left();
}

/* ---- the allocation-failure walk over spawn ----------------------------------------------- */
BT_IO_TEST(process_alloc_walk) {
    braid_loop *loop = bt_loop_new(NULL);
    const char *env[] = { "BT_CHILD=echo", NULL };
    braid_process_fd fds[] = { { 0, BRAID_PROCESS_FD_TO_CHILD, 0, NULL },
                               { 1, BRAID_PROCESS_FD_FROM_CHILD, 0, NULL },
                               { 2, BRAID_PROCESS_FD_INHERIT, 2, NULL } };
    int fds_before = count_fds();
    rec r;
    braid_process_options o = { .file = "/proc/self/exe", .env_mode = BRAID_PROCESS_ENV_EXTEND,
                                .env = env, .fds = fds, .nfds = 3, .protocol = &rec_proto,
                                .user = &r };
    /* Warm the loop's lazily made state (the process key, the read buffer). */
    memset(&r, 0, sizeof r);
    braid_process *p;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));
    braid_process_close_fd(p, 0);
    bt_run_until(loop, &r.ended, 100000);
    braid_process_free(p);
    braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    long base = braid_test_alloc_outstanding();
    int failures = 0;
    for (long n = 1; n < 200; n++) {
        memset(&r, 0, sizeof r);
        braid_test_fail_alloc_after(n, false);
        int rc = braid_process_spawn(loop, &o, &p, NULL);
        bool failed = braid_test_alloc_failed();
        braid_test_fail_alloc_after(0, false);
        if (rc == 0) {
            braid_process_write(p, 0, "hi", 2);
            braid_process_close_fd(p, 0);
            bt_run_until(loop, &r.ended, 100000);
            braid_process_free(p);
        } else {
            BT_ERR(rc, BRAID_ENOMEM);
            failures++;
        }
        for (int i = 0; i < 4; i++) braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        BT_EQ(braid_test_alloc_outstanding(), base);
        BT_EQ(count_fds(), fds_before);
        if (!failed) break;
    }
    BT_GT(failures, 3);
    bt_loop_destroy(loop);
    no_children_left();
}

/* ---- a program found on PATH, a directory that is not there ------------------------------ */
static void path_search_case(void) {
    braid_loop *loop = bt_loop_new(NULL);
    char *old_path = getenv("PATH") ? strdup(getenv("PATH")) : NULL;
    char dir[] = "/tmp/braid-path-XXXXXX";
    BT_TRUE(mkdtemp(dir) != NULL);
    char noexec[64];
    snprintf(noexec, sizeof noexec, "%s/braid-noexec", dir);
    int fd = open(noexec, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    BT_GE(fd, 0);
    close(fd);
    char path[128];
    snprintf(path, sizeof path, "/no/such/dir:%s:/bin:/usr/bin", dir);
    setenv("PATH", path, 1);
    braid_process_fd fds[] = { { 1, BRAID_PROCESS_FD_DEVNULL, 0, NULL } };
    rec r = { 0 };
    braid_process_options o = { .file = "true", .fds = fds, .nfds = 1, .protocol = &rec_proto, .user = &r };
    braid_process *p = NULL;
    braid_failure *f = NULL;
    BT_OK(braid_process_spawn(loop, &o, &p, NULL));   /* found after two misses */
    bt_run_until(loop, &r.ended, 100000);
    BT_EQ(r.st.exit_code, 0);
    braid_process_free(p);
    o.file = "braid-noexec";   /* found, but not executable: EACCES, not ENOENT */
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -EACCES);
    BT_TRUE(f && strstr(f->message, "braid-noexec"));
    braid_failure_free(f);
    o.file = "/bin/true";
    o.cwd = "/no/such/dir";   /* the message names the directory, not only the program */
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -ENOENT);
    BT_TRUE(f && strstr(f->message, "/bin/true") && strstr(f->message, "(cwd) '/no/such/dir'"));
    braid_failure_free(f);
    o.cwd = "/etc/passwd";
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -ENOTDIR);
    BT_TRUE(f && strstr(f->message, "(cwd) '/etc/passwd'"));
    braid_failure_free(f);
    o.cwd = "/";   /* a good directory, a missing program: the program's error, no cwd in it */
    o.file = "/no/such/program";
    BT_ERR(braid_process_spawn(loop, &o, &p, &f), -ENOENT);
    BT_TRUE(f && !strstr(f->message, "cwd"));
    braid_failure_free(f);
    if (old_path) setenv("PATH", old_path, 1);
    else unsetenv("PATH");
    free(old_path);
    unlink(noexec);
    rmdir(dir);
    bt_loop_destroy(loop);
    no_children_left();
}
BT_IO_TEST(process_path_search) { path_search_case(); }

/* ---- the fork/exec fallback -------------------------------------------------------------
 * Where the C library has no posix_spawn_file_actions_addclosefrom_np (musl,
 * the BSDs, macOS), braid forks and execs instead; BRAID_PROCESS_FORK=1 takes
 * that path on this machine too, so the same cases check it. */
static void use_fork(void) { setenv("BRAID_PROCESS_FORK", "1", 1); }
BT_IO_TEST(process_fork_exit_code) { use_fork(); exit_code_case(); }
BT_IO_TEST(process_fork_signal) { use_fork(); signal_case(); }
BT_IO_TEST(process_fork_signal_sigchld) {
    use_fork();
    setenv("BRAID_PROCESS_SIGCHLD", "1", 1);
    signal_case();
}
BT_IO_TEST(process_fork_kill_after) { use_fork(); kill_after_case(); }
BT_IO_TEST(process_fork_fd_map) { use_fork(); fd_map_case(); }
BT_IO_TEST(process_fork_fd_map_swap) { use_fork(); fd_map_swap_case(); }
BT_IO_TEST(process_fork_stdin_stdout) { use_fork(); stdin_stdout_case(); }
BT_IO_TEST(process_fork_env_cwd) { use_fork(); env_cwd_case(); }
BT_IO_TEST(process_fork_clean_signal_state) { use_fork(); clean_signal_state_case(); }
BT_IO_TEST(process_fork_spawn_errors) { use_fork(); spawn_errors_case(); }
BT_IO_TEST(process_fork_path_search) { use_fork(); path_search_case(); }
BT_IO_TEST(process_fork_burst_no_zombies) { use_fork(); burst_case(200); }
