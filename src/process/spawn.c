/* Child processes: posix_spawn with a child fd map, exit through a pidfd
 * (or SIGCHLD where there is none), signals and kill_after.
 *
 * LINUX-SPECIFIC (marked place): pidfd_open, waitid(P_PIDFD) and
 * pidfd_send_signal, probed once per loop; elsewhere, or when they fail,
 * the SIGCHLD path runs (which needs braid_signal_start: signalfd). The
 * spawning itself is POSIX posix_spawn plus two GNU file actions
 * (addclosefrom_np, glibc >= 2.34; addchdir_np, glibc >= 2.29); with a C
 * library that lacks them (musl, the BSDs, macOS), or BRAID_PROCESS_FORK=1
 * in the environment, fork and exec do the same (fork_exec below). */
#include "process/process_internal.h"
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#ifndef P_PIDFD
#define P_PIDFD 3
#endif
#define MAX_CHILD_FD 1023

static const char *const process_error_names[] = {
    [BRAID_EPROCESS_EXITED - BRAID_EPROCESS_EXITED] = "process: already exited",
    [BRAID_EPROCESS_EXITED - BRAID_EWORKER_LOST] = "process: worker lost",
    [BRAID_EPROCESS_EXITED - BRAID_EWORKER_PROTOCOL] = "process: malformed frame from worker",
    [BRAID_EPROCESS_EXITED - BRAID_EWORKER_FRAME] = "process: frame larger than the limit",
    [BRAID_EPROCESS_EXITED - BRAID_EWORKER_COMMAND] = "process: no such worker command",
    [BRAID_EPROCESS_EXITED - BRAID_EWORKER_REMOTE] = "process: worker handler failed",
    [BRAID_EPROCESS_EXITED - BRAID_EBOX] = "process: malformed box",
    [BRAID_EPROCESS_EXITED - BRAID_EBOX_TYPE] = "process: box value of another type",
    [BRAID_EPROCESS_EXITED - BRAID_ESERVE_START] = "process: a serve loop could not start",
};
BRAID__ERROR_DOMAIN(process, "process", BRAID_EPROCESS_EXITED, BRAID_ESERVE_START,
                    process_error_names);

/* ---- per-loop state: the SIGCHLD fallback --------------------------------------------- */
typedef struct proc_loop_state {
    int use_pidfd;                 /* -1 unknown, 0 no, 1 yes */
    braid_signal sigchld;
    bool sig_started;
    struct braid_process *sig_list; /* children reaped on SIGCHLD */
} proc_loop_state;

static void state_free(braid_loop *loop, void *v) {
    (void)loop;
    braid_free(v);
}
static braid_loop_key proc_key = BRAID_LOOP_KEY_INIT("process", state_free, NULL);

/* A routed parent end: the protocol the transport of a pipe carries. */
typedef struct proc_pipe {
    braid_protocol base;
    struct braid_process *proc;    /* NULL once the process let go of it */
    int child_fd;
    braid_process_fd_kind kind;
} proc_pipe;

struct braid_process {
    braid_loop *loop;
    braid_handle handle;
    char handle_name[64];
    pid_t pid;
    int pidfd;                     /* -1: reaped on SIGCHLD */
    braid_watch watch;
    bool watching;
    const braid_process_protocol *proto;
    void *user;
    braid_process_on_free on_free;
    bool exited, ended, freed;
    int depth;                     /* inside our callbacks: free deferred */
    braid_process_status status;
    proc_pipe **pipes;             /* routed ends, NULL once closed */
    size_t npipes, open_pipes;
    braid_timer kill_timer;
    bool kill_armed;
    uint64_t kill_deadline;
    braid_deferred **waiters;
    size_t nwaiters;
    struct braid_process *sig_next, *sig_prev;
};

static proc_loop_state *loop_state(braid_loop *loop) {
    proc_loop_state *st = braid_loop_data(loop, &proc_key);
    if (st) return st;
    if (!(st = braid_calloc(1, sizeof *st))) return NULL;
    st->use_pidfd = -1;
    if (braid_loop_set_data(loop, &proc_key, st) < 0) {
        braid_free(st);
        return NULL;
    }
    return st;
}

static int sys_pidfd_open(pid_t pid) {
#ifdef SYS_pidfd_open
    return (int)syscall(SYS_pidfd_open, pid, 0);
#else
    (void)pid;
    errno = ENOSYS;
    return -1;
#endif
}

static int sys_pidfd_send_signal(int pidfd, int signo) {
#ifdef SYS_pidfd_send_signal
    return (int)syscall(SYS_pidfd_send_signal, pidfd, signo, NULL, 0);
#else
    (void)pidfd; (void)signo;
    errno = ENOSYS;
    return -1;
#endif
}

int braid__pidfd_open(pid_t pid) {
    const char *e = getenv("BRAID_PROCESS_SIGCHLD");
    if (e && *e && strcmp(e, "0")) return -1;
    return sys_pidfd_open(pid);
}

/* Do pidfds work here? Probed once per loop; BRAID_PROCESS_SIGCHLD=1 in the
 * environment forces the SIGCHLD path (tests of it). A sandbox may answer
 * EPERM rather than ENOSYS: any failure means no. */
static bool pidfds_work(proc_loop_state *st) {
    if (st->use_pidfd < 0) {
        int fd = braid__pidfd_open(getpid());
        st->use_pidfd = fd >= 0;
        if (fd >= 0) close(fd);
    }
    return st->use_pidfd == 1;
}

/* ---- ending ----------------------------------------------------------------------------- */
static void process_destroy(braid_process *p);

static void maybe_ended(braid_process *p) {
    if (!p->exited || p->open_pipes || p->ended) return;
    p->ended = true;
    braid_deferred **w = p->waiters;
    size_t n = p->nwaiters;
    p->waiters = NULL;
    p->nwaiters = 0;
    for (size_t i = 0; i < n; i++) braid_deferred_callback(w[i], &p->status, NULL);
    braid_free(w);
    if (!p->freed && p->proto && p->proto->ended) p->proto->ended(p, &p->status);
}

static void leave_depth(braid_process *p) {
    if (--p->depth == 0 && p->freed) process_destroy(p);
}

static void sig_unlink(braid_process *p) {
    proc_loop_state *st = braid_loop_data(p->loop, &proc_key);
    if (!st || (!p->sig_prev && st->sig_list != p)) return;
    if (p->sig_prev) p->sig_prev->sig_next = p->sig_next;
    else st->sig_list = p->sig_next;
    if (p->sig_next) p->sig_next->sig_prev = p->sig_prev;
    p->sig_next = p->sig_prev = NULL;
    if (!st->sig_list && st->sig_started) {
        braid_signal_stop(&st->sigchld);
        st->sig_started = false;
    }
}

static void set_status(braid_process *p, int code, int status) {
    if (code == CLD_EXITED) {
        p->status = (braid_process_status){ .exit_code = status, .signo = 0 };
    } else {
        p->status = (braid_process_status){ .exit_code = -1, .signo = status,
                                            .core_dumped = code == CLD_DUMPED };
    }
}

/* The child has been reaped: stop watching, let go of the write-only ends
 * (nobody will read them now, unless a grandchild does: they are flushed
 * first), tell the protocol. */
static void on_reaped(braid_process *p) {
    p->exited = true;
    if (p->watching) {
        braid_watch_close(&p->watch);
        p->watching = false;
    }
    if (p->pidfd >= 0) {
        close(p->pidfd);
        p->pidfd = -1;
    }
    sig_unlink(p);
    if (p->kill_armed) {
        braid_timer_stop(&p->kill_timer);
        p->kill_armed = false;
    }
    p->depth++;
    for (size_t i = 0; i < p->npipes; i++) {
        proc_pipe *pp = p->pipes[i];
        if (pp && pp->kind == BRAID_PROCESS_FD_TO_CHILD && pp->base.transport)
            braid_transport_close(pp->base.transport, BRAID_FOREVER);
    }
    if (!p->freed && p->proto && p->proto->exited) p->proto->exited(p, &p->status);
    maybe_ended(p);
    leave_depth(p);
}

static void pidfd_cb(braid_watch *w, unsigned events, void *arg) {
    braid_process *p = arg;
    (void)w; (void)events;
    siginfo_t si;
    memset(&si, 0, sizeof si);
    if (waitid(P_PIDFD, (id_t)p->pidfd, &si, WEXITED | WNOHANG) < 0) {
        if (errno == EINTR) return;
        /* ECHILD: somebody else reaped it (a waitpid(-1) elsewhere). */
        braid__log(p->loop, BRAID_LOG_WARN, "pid %d: waitid: %s (reaped elsewhere?)", (int)p->pid,
                   strerror(errno));
        p->status = (braid_process_status){ .exit_code = -1, .signo = 0 };
        on_reaped(p);
        return;
    }
    if (si.si_pid == 0) return;   /* not yet */
    set_status(p, si.si_code, si.si_status);
    on_reaped(p);
}

static bool try_waitpid(braid_process *p) {
    int status;
    pid_t r = waitpid(p->pid, &status, WNOHANG);
    if (r == 0) return false;
    if (r < 0) {
        if (errno == EINTR) return false;
        braid__log(p->loop, BRAID_LOG_WARN, "pid %d: waitpid: %s (reaped elsewhere?)", (int)p->pid,
                   strerror(errno));
        p->status = (braid_process_status){ .exit_code = -1, .signo = 0 };
    } else if (WIFEXITED(status)) {
        set_status(p, CLD_EXITED, WEXITSTATUS(status));
    } else {
        set_status(p, WCOREDUMP(status) ? CLD_DUMPED : CLD_KILLED, WTERMSIG(status));
    }
    on_reaped(p);
    return true;
}

static void sigchld_cb(braid_signal *s, int signo, void *arg) {
    (void)s; (void)signo;
    proc_loop_state *st = arg;
    /* Reaping may unlink and free entries: restart after each one reaped. */
    for (bool again = true; again;) {
        again = false;
        for (braid_process *p = st->sig_list; p; p = p->sig_next) {
            if (try_waitpid(p)) { again = true; break; }
        }
        if (!st->sig_started) break;
    }
}

/* ---- the routed pipes ---------------------------------------------------------------- */
static void pipe_data(braid_protocol *bp, const void *buf, size_t len) {
    proc_pipe *pp = (proc_pipe *)bp;
    braid_process *p = pp->proc;
    if (!p || p->freed || !p->proto || !p->proto->data_received) return;
    p->depth++;
    p->proto->data_received(p, pp->child_fd, buf, len);
    leave_depth(p);
}

static void pipe_lost(braid_protocol *bp, const braid_failure *reason) {
    proc_pipe *pp = (proc_pipe *)bp;
    braid_process *p = pp->proc;
    if (!p) return;
    pp->proc = NULL;
    for (size_t i = 0; i < p->npipes; i++)
        if (p->pipes[i] == pp) p->pipes[i] = NULL;
    p->open_pipes--;
    p->depth++;
    if (!p->freed && p->proto && p->proto->fd_closed)
        p->proto->fd_closed(p, pp->child_fd, reason ? reason->code : BRAID_ECONNECTION_DONE);
    maybe_ended(p);
    leave_depth(p);
}

static void pipe_destroy(braid_protocol *bp) { braid_free(bp); }

static const braid_protocol_ops pipe_ops = {
    .data_received = pipe_data,
    .connection_lost = pipe_lost,
    .destroy = pipe_destroy,
};

static proc_pipe *find_pipe(braid_process *p, int child_fd) {
    for (size_t i = 0; i < p->npipes; i++)
        if (p->pipes[i] && p->pipes[i]->child_fd == child_fd) return p->pipes[i];
    return NULL;
}

/* ---- spawning -------------------------------------------------------------------------- */
/* What the parent prepares for one child fd. */
typedef struct slot {
    int child_fd;
    braid_process_fd_kind kind;
    int src;                       /* the fd dup2'ed onto child_fd (> every child fd), or -1 */
    bool src_owned;                /* close src in the parent after spawning */
    int parent_end;                /* pipes: the parent's end */
    braid_protocol *user_proto;
} slot;

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
#define HAVE_SPAWN_CLOSEFROM 1
#endif

static void close_if(int *fd) {
    if (*fd >= 0) close(*fd);
    *fd = -1;
}

/* Move fd above floor (close-on-exec), closing the original. */
static int lift(int fd, int floor) {
    if (fd > floor) return fd;
    int n = fcntl(fd, F_DUPFD_CLOEXEC, floor + 1);
    int e = errno;
    close(fd);
    errno = e;
    return n;
}

/* The child's environment: the parent's, exactly env, or the parent's with
 * env's entries added or replacing. The array is braid_malloc'd; strings
 * are borrowed. */
static char **build_env(const braid_process_options *o) {
    if (o->env_mode == BRAID_PROCESS_ENV_INHERIT) return NULL;
    size_t ne = 0, np = 0;
    if (o->env) while (o->env[ne]) ne++;
    if (o->env_mode == BRAID_PROCESS_ENV_EXTEND) while (environ[np]) np++;
    char **out = braid_malloc((ne + np + 1) * sizeof *out);
    if (!out) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < np; i++) {
        const char *eq = strchr(environ[i], '=');
        size_t nl = eq ? (size_t)(eq - environ[i]) : strlen(environ[i]);
        bool replaced = false;
        for (size_t j = 0; j < ne && !replaced; j++)
            replaced = !strncmp(o->env[j], environ[i], nl) && o->env[j][nl] == '=';
        if (!replaced) out[k++] = environ[i];
    }
    for (size_t j = 0; j < ne; j++) out[k++] = (char *)o->env[j];
    out[k] = NULL;
    return out;
}

static void spawn_failure(braid_failure **failure, int code, const char *file, const char *what) {
    if (!failure) return;
    *failure = braid_failure_new(code, "spawn '%s': %s%s%s", file, what ? what : "",
                                 what ? ": " : "", braid_strerror(code));
}

static void process_destroy(braid_process *p) {
    braid_loop *loop = p->loop;
    for (size_t i = 0; i < p->npipes; i++) {
        proc_pipe *pp = p->pipes[i];
        if (!pp) continue;
        pp->proc = NULL;
        if (pp->base.transport) braid_transport_abort(pp->base.transport);
    }
    braid_free(p->pipes);
    braid_deferred **w = p->waiters;
    size_t n = p->nwaiters;
    p->waiters = NULL;
    p->nwaiters = 0;
    for (size_t i = 0; i < n; i++)
        braid_deferred_errback(w[i], braid_failure_new(BRAID_ESHUTDOWN, "process freed before it ended"));
    braid_free(w);
    if (p->kill_armed) braid_timer_stop(&p->kill_timer);
    if (p->watching) braid_watch_close(&p->watch);
    if (p->pidfd >= 0) close(p->pidfd);
    sig_unlink(p);
    braid_handle_close(loop, &p->handle);
    braid_free(p);
}

static void kill_timer_cb(braid_timer *t, void *arg) {
    braid_process *p = arg;
    (void)t;
    p->kill_armed = false;
    if (!p->exited) (void)braid_process_signal(p, SIGKILL);
}

/* Is fd one of the child's (mapped to a source)? */
static bool mapped_fd(const slot *slots, size_t nmap, int fd) {
    for (size_t i = 0; i < nmap; i++)
        if (slots[i].child_fd == fd && slots[i].src >= 0) return true;
    return false;
}

#ifdef HAVE_SPAWN_CLOSEFROM
/* posix_spawn (glibc's uses clone(CLONE_VM | CLONE_VFORK): no copy of a
 * large parent): the map by file actions, every other fd closed. 0 and
 * *pid, or -errno. */
static int spawn_posix(const char *file, const char *const *argv, char *const *envp, const slot *slots,
                       size_t nmap, int maxfd, const braid_process_options *o, pid_t *pid) {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    int rc = -posix_spawn_file_actions_init(&fa);
    if (rc < 0) return rc;
    if ((rc = -posix_spawnattr_init(&attr)) < 0) {
        posix_spawn_file_actions_destroy(&fa);
        return rc;
    }
    for (size_t i = 0; i < nmap && rc == 0; i++) {
        if (slots[i].src >= 0) rc = -posix_spawn_file_actions_adddup2(&fa, slots[i].src, slots[i].child_fd);
    }
    /* Every low fd the map does not fill is closed (closing one that is not
     * open is not an error for glibc's posix_spawn), then everything above. */
    for (int fd = 0; fd <= maxfd && rc == 0; fd++)
        if (!mapped_fd(slots, nmap, fd)) rc = -posix_spawn_file_actions_addclose(&fa, fd);
    if (rc == 0) rc = -posix_spawn_file_actions_addclosefrom_np(&fa, maxfd + 1);
    if (rc == 0 && o->cwd) rc = -posix_spawn_file_actions_addchdir_np(&fa, o->cwd);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (o->new_session) flags |= POSIX_SPAWN_SETSID;
    else if (o->new_process_group) flags |= POSIX_SPAWN_SETPGROUP;
    sigset_t none, all;
    sigemptyset(&none);
    /* Every signal to its default, glibc's internal ones too: sigfillset
     * leaves those out, and glibc's child then sets them to SIG_IGN, which
     * survives exec. */
    memset(&all, 0xff, sizeof all);
    if (rc == 0) rc = -posix_spawnattr_setflags(&attr, flags);
    if (rc == 0) rc = -posix_spawnattr_setsigmask(&attr, &none);
    if (rc == 0) rc = -posix_spawnattr_setsigdefault(&attr, &all);
    if (rc == 0 && (flags & POSIX_SPAWN_SETPGROUP)) rc = -posix_spawnattr_setpgroup(&attr, 0);
    if (rc == 0)
        rc = -(strchr(file, '/') ? posix_spawn(pid, file, &fa, &attr, (char *const *)argv, envp)
                                 : posix_spawnp(pid, file, &fa, &attr, (char *const *)argv, envp));
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    return rc;
}
#endif

/* The fallback: fork, then in the child only async-signal-safe calls —
 * every signal to its default, the session or group, the map by dup2,
 * every other fd closed (close_range where the kernel has it, else one by
 * one up to the descriptor limit), the directory, an empty mask, exec.
 * What fails in the child (exec's ENOENT, chdir's ENOTDIR ...) comes back
 * as its errno over a close-on-exec pipe, which reads end of file when the
 * exec succeeded; the parent then reaps that child, so the error is the
 * spawn's, as with posix_spawn. The PATH search (for a file without '/') is
 * prepared in the parent: the child only tries each candidate, keeping
 * EACCES over ENOENT as execvp does. All signals are blocked in the parent
 * around fork so no handler runs in the child before the reset. */
static int fork_exec(const char *file, const char *const *argv, char *const *envp, const slot *slots,
                     size_t nmap, int maxfd, const braid_process_options *o, pid_t *pid_out) {
    char **cand = NULL;
    size_t ncand = 0;
    if (!strchr(file, '/')) {
        const char *path = getenv("PATH");
        if (!path) path = "/bin:/usr/bin";
        size_t n = 1;
        for (const char *c = path; *c; c++) n += *c == ':';
        if (!(cand = braid_calloc(n, sizeof *cand))) return BRAID_ENOMEM;
        for (const char *dir = path;; ) {
            const char *colon = strchr(dir, ':');
            size_t dl = colon ? (size_t)(colon - dir) : strlen(dir);
            size_t fl = strlen(file);
            char *c = braid_malloc(dl + 1 + fl + 1);
            if (!c) {
                for (size_t i = 0; i < ncand; i++) braid_free(cand[i]);
                braid_free(cand);
                return BRAID_ENOMEM;
            }
            if (dl) {   /* an empty entry is the current directory */
                memcpy(c, dir, dl);
                c[dl] = '/';
                memcpy(c + dl + 1, file, fl + 1);
            } else {
                memcpy(c, file, fl + 1);
            }
            cand[ncand++] = c;
            if (!colon) break;
            dir = colon + 1;
        }
    }
    long open_max = sysconf(_SC_OPEN_MAX);
    if (open_max < 0 || open_max > 1 << 20) open_max = 1 << 20;
    int ep[2] = { -1, -1 };
    int rc = 0;
#ifdef __APPLE__   /* no pipe2: another thread's fork may copy these before FD_CLOEXEC */
    int prc = pipe(ep);
    if (prc == 0) prc = fcntl(ep[0], F_SETFD, FD_CLOEXEC) | fcntl(ep[1], F_SETFD, FD_CLOEXEC);
#else
    int prc = pipe2(ep, O_CLOEXEC);
#endif
    if (prc < 0 || (ep[0] = lift(ep[0], maxfd)) < 0 || (ep[1] = lift(ep[1], maxfd)) < 0) {
        rc = -errno;
        if (ep[0] >= 0) close(ep[0]);
        if (ep[1] >= 0) close(ep[1]);
        goto out;
    }
    sigset_t all, old, none;
    sigfillset(&all);
    sigemptyset(&none);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        int ewr = ep[1];
        for (int sig = 1; sig < NSIG; sig++) {
            struct sigaction sa;
            memset(&sa, 0, sizeof sa);
            sa.sa_handler = SIG_DFL;
            if (sigaction(sig, &sa, NULL) < 0 && errno == EINVAL && sig != SIGKILL && sig != SIGSTOP) {
#if defined(__linux__) && defined(SYS_rt_sigaction)
                /* The C library's own signals (glibc's 32 and 33), which its
                 * sigaction refuses: an ignored one stays ignored across
                 * exec (a parent started by posix_spawn may have them so).
                 * LINUX-ONLY: the kernel's call, with an all-zero struct —
                 * SIG_DFL, no flags, an empty mask whatever the arch's layout. */
                unsigned long ksa[8] = { 0 };
                (void)syscall(SYS_rt_sigaction, sig, ksa, NULL, (size_t)(NSIG - 1) / 8);
#endif
            }
        }
        int e = 0;
        if (o->new_session ? setsid() < 0 : o->new_process_group && setpgid(0, 0) < 0) e = errno;
        for (size_t i = 0; i < nmap && !e; i++)
            if (slots[i].src >= 0 && dup2(slots[i].src, slots[i].child_fd) < 0) e = errno;
        for (int fd = 0; fd <= maxfd && !e; fd++)
            if (!mapped_fd(slots, nmap, fd)) (void)close(fd);
        if (!e) {   /* everything above the map but the error pipe (close-on-exec) */
            bool ranged = false;
#ifdef SYS_close_range
            ranged = (ewr == maxfd + 1 || syscall(SYS_close_range, maxfd + 1, ewr - 1, 0) == 0) &&
                     syscall(SYS_close_range, ewr + 1, ~0u, 0) == 0;
#endif
            for (long fd = maxfd + 1; !ranged && fd < open_max; fd++)
                if (fd != ewr) (void)close((int)fd);
        }
        if (!e && o->cwd && chdir(o->cwd) < 0) e = errno;
        if (!e) {
            sigprocmask(SIG_SETMASK, &none, NULL);
            if (!cand) {
                execve(file, (char *const *)argv, envp);
                e = errno;
            } else {
                bool eacces = false;
                e = ENOENT;
                for (size_t i = 0; i < ncand; i++) {
                    execve(cand[i], (char *const *)argv, envp);
                    if (errno == EACCES) eacces = true;
                    else if (errno != ENOENT && errno != ENOTDIR) { e = errno; break; }
                }
                if (eacces && e == ENOENT) e = EACCES;
            }
        }
        while (write(ewr, &e, sizeof e) < 0 && errno == EINTR) {}
        _exit(127);
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    close(ep[1]);
    if (pid < 0) {
        rc = -fork_errno;
    } else {
        int e = 0;
        ssize_t n;
        while ((n = read(ep[0], &e, sizeof e)) < 0 && errno == EINTR) {}
        if (n == (ssize_t)sizeof e) {   /* the child failed before exec: reap it */
            while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
            rc = e > 0 ? -e : -EIO;
        } else {
            *pid_out = pid;
        }
    }
    close(ep[0]);
out:
    for (size_t i = 0; i < ncand; i++) braid_free(cand[i]);
    braid_free(cand);
    return rc;
}

/* The fork fallback instead of posix_spawn: where the C library lacks
 * what the posix_spawn path needs, or when BRAID_PROCESS_FORK=1 (tests). */
static bool spawn_by_fork(void) {
#ifdef HAVE_SPAWN_CLOSEFROM
    const char *e = getenv("BRAID_PROCESS_FORK");
    return e && *e && strcmp(e, "0");
#else
    return true;
#endif
}

int braid_process_spawn(braid_loop *loop, const braid_process_options *o, braid_process **out,
                        braid_failure **failure) {
    BRAID__LOOP_AFFINE(loop);
    if (failure) *failure = NULL;
    if (!loop || !o || !o->file || !*o->file || !out || (o->nfds && !o->fds)) {
        if (failure) *failure = braid_failure_new(BRAID_EINVAL, "spawn: no program given");
        return BRAID_EINVAL;
    }
    const char *file = o->file;
    proc_loop_state *st = loop_state(loop);
    if (!st) {
        spawn_failure(failure, BRAID_ENOMEM, file, NULL);
        return BRAID_ENOMEM;
    }
    bool use_pidfd = pidfds_work(st);

    /* The map: the default one is 0, 1 and 2 inherited (those open). */
    braid_process_fd defmap[3];
    const braid_process_fd *map = o->fds;
    size_t nmap = o->nfds;
    if (!map) {
        nmap = 0;
        for (int i = 0; i < 3; i++)
            if (fcntl(i, F_GETFD) >= 0)
                defmap[nmap++] = (braid_process_fd){ i, BRAID_PROCESS_FD_INHERIT, i, NULL };
        map = defmap;
    }
    int maxfd = 2;
    for (size_t i = 0; i < nmap; i++) {
        int cfd = map[i].child_fd;
        bool bad = cfd < 0 || cfd > MAX_CHILD_FD || map[i].kind > BRAID_PROCESS_FD_DEVNULL ||
                   (map[i].kind == BRAID_PROCESS_FD_INHERIT && fcntl(map[i].parent_fd, F_GETFD) < 0) ||
                   (map[i].protocol && (map[i].kind < BRAID_PROCESS_FD_TO_CHILD ||
                                        map[i].kind > BRAID_PROCESS_FD_STREAM));
        for (size_t j = 0; j < i && !bad; j++) bad = map[j].child_fd == cfd;
        if (bad) {
            if (failure)
                *failure = braid_failure_new(BRAID_EINVAL, "spawn '%s': bad entry %zu of the fd map "
                                             "(child fd %d)", file, i, cfd);
            return BRAID_EINVAL;
        }
        if (cfd > maxfd) maxfd = cfd;
    }

    int rc = BRAID_ENOMEM;
    const char *what = NULL;
    char cwd_what[256];
    braid_process *p = braid_calloc(1, sizeof *p);
    slot *slots = braid_calloc(nmap ? nmap : 1, sizeof *slots);
    char **envp = build_env(o);
    size_t nroute = 0;
    for (size_t i = 0; i < nmap; i++)
        nroute += map[i].kind >= BRAID_PROCESS_FD_TO_CHILD && map[i].kind <= BRAID_PROCESS_FD_STREAM &&
                  !map[i].protocol;
    proc_pipe **pipes = braid_calloc(nroute ? nroute : 1, sizeof *pipes);
    for (size_t i = 0; slots && i < nmap; i++) slots[i].src = slots[i].parent_end = -1;
    if (!p || !slots || !pipes || (o->env_mode != BRAID_PROCESS_ENV_INHERIT && !envp)) goto fail;
    for (size_t i = 0, k = 0; i < nmap; i++) {
        if (map[i].kind >= BRAID_PROCESS_FD_TO_CHILD && map[i].kind <= BRAID_PROCESS_FD_STREAM &&
            !map[i].protocol && !(pipes[k++] = braid_calloc(1, sizeof(proc_pipe))))
            goto fail;
    }

    /* Descriptors: every source lifted above maxfd, so that no dup2 onto a
     * child fd can clobber another's source, and close-on-exec. */
    for (size_t i = 0; i < nmap; i++) {
        slot *s = &slots[i];
        s->child_fd = map[i].child_fd;
        s->kind = map[i].kind;
        s->user_proto = map[i].protocol;
        switch (s->kind) {
        case BRAID_PROCESS_FD_CLOSED:
            break;
        case BRAID_PROCESS_FD_INHERIT:
            s->src = fcntl(map[i].parent_fd, F_DUPFD_CLOEXEC, maxfd + 1);
            s->src_owned = true;
            if (s->src < 0) { rc = -errno; what = "duplicating an inherited fd"; goto fail; }
            break;
        case BRAID_PROCESS_FD_DEVNULL:
            s->src = open("/dev/null", O_RDWR | O_CLOEXEC);
            if (s->src >= 0) s->src = lift(s->src, maxfd);
            s->src_owned = true;
            if (s->src < 0) { rc = -errno; what = "opening /dev/null"; goto fail; }
            break;
        default: {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
                rc = -errno;
                what = "making a pipe";
                goto fail;
            }
            s->parent_end = sv[0];
            s->src = lift(sv[1], maxfd);
            s->src_owned = true;
            if (s->src < 0) { rc = -errno; what = "making a pipe"; goto fail; }
            if (s->kind == BRAID_PROCESS_FD_TO_CHILD) shutdown(s->src, SHUT_WR);
            else if (s->kind == BRAID_PROCESS_FD_FROM_CHILD) shutdown(s->parent_end, SHUT_WR);
            break;
        }
        }
    }

    /* Without pidfds, SIGCHLD is watched before the child exists, so its
     * exit cannot come before the signal is blocked and queued. */
    if (!use_pidfd && !st->sig_started) {
        if ((rc = braid_signal_start(loop, &st->sigchld, SIGCHLD, sigchld_cb, st)) < 0) {
            what = "watching SIGCHLD";
            goto fail;
        }
        st->sig_started = true;
    }

    const char *const default_argv[] = { file, NULL };
    const char *const *argv = o->argv ? o->argv : default_argv;
    pid_t pid = -1;
    char *const *env = envp ? envp : environ;
#ifdef HAVE_SPAWN_CLOSEFROM
    rc = spawn_by_fork() ? fork_exec(file, argv, env, slots, nmap, maxfd, o, &pid)
                         : spawn_posix(file, argv, env, slots, nmap, maxfd, o, &pid);
#else
    rc = fork_exec(file, argv, env, slots, nmap, maxfd, o, &pid);
#endif
    if (rc < 0) {
        if (!use_pidfd && !st->sig_list) {
            braid_signal_stop(&st->sigchld);
            st->sig_started = false;
        }
        /* chdir's failure reads as the program's ("No such file or
         * directory"): name the directory when it is the one at fault. */
        struct stat cst;
        if (o->cwd && (rc == -ENOENT || rc == -ENOTDIR || rc == -EACCES) &&
            (stat(o->cwd, &cst) < 0 || !S_ISDIR(cst.st_mode) || access(o->cwd, X_OK) < 0)) {
            snprintf(cwd_what, sizeof cwd_what, "the directory to run in (cwd) '%.200s'", o->cwd);
            what = cwd_what;
        }
        goto fail;
    }
    braid_free(envp);
    envp = NULL;
    for (size_t i = 0; i < nmap; i++)
        if (slots[i].src_owned) close_if(&slots[i].src);

    p->loop = loop;
    p->pid = pid;
    p->pidfd = -1;
    p->proto = o->protocol;
    p->user = o->user;
    p->on_free = o->on_free;
    p->pipes = pipes;
    p->npipes = nroute;
    pipes = NULL;
    snprintf(p->handle_name, sizeof p->handle_name, "pid %d (%s)", (int)pid, file);
    braid_handle_open(loop, &p->handle, "process");
    p->handle.name = p->handle_name;
    braid_timer_init(loop, &p->kill_timer, kill_timer_cb, p);

    if (use_pidfd) {
        p->pidfd = sys_pidfd_open(pid);
        if (p->pidfd < 0) { rc = -errno; what = "pidfd_open"; goto fail_child; }
        what = "watching the pidfd";
        if ((rc = braid_watch_init(loop, &p->watch, p->pidfd, pidfd_cb, p)) < 0) goto fail_child;
        p->watching = true;
        if ((rc = braid_watch_set_interest(&p->watch, BRAID_WATCH_READ)) < 0) goto fail_child;
        what = NULL;
    } else {
        p->sig_next = st->sig_list;
        if (st->sig_list) st->sig_list->sig_prev = p;
        st->sig_list = p;
    }

    /* The parent ends become transports. */
    for (size_t i = 0, k = 0; i < nmap; i++) {
        slot *s = &slots[i];
        if (s->parent_end < 0) continue;
        braid_protocol *bp = s->user_proto;
        if (!bp) {
            proc_pipe *pp = p->pipes[k++];
            pp->base.ops = &pipe_ops;
            pp->proc = p;
            pp->child_fd = s->child_fd;
            pp->kind = s->kind;
            bp = &pp->base;
        }
        if ((rc = braid_transport_adopt(loop, s->parent_end, bp)) < 0) {
            what = "attaching a pipe";
            goto fail_child;
        }
        s->parent_end = -1;
        if (!s->user_proto) p->open_pipes++;
    }
    /* Unattached routed protocols (none unless an adopt failed) are freed
     * with the process; attached ones by their transports. */
    braid_free(slots);
    *out = p;
    return 0;

fail_child:
    /* The child exists but the parent cannot watch it: kill and reap it
     * now, let go of every end. */
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    for (size_t i = 0, k = 0; i < nmap; i++) {
        if (slots[i].kind < BRAID_PROCESS_FD_TO_CHILD || slots[i].kind > BRAID_PROCESS_FD_STREAM) continue;
        if (slots[i].user_proto) {
            if (slots[i].parent_end < 0 && slots[i].user_proto->transport)
                braid_transport_abort(slots[i].user_proto->transport);
            continue;
        }
        proc_pipe *pp = p->pipes[k];
        if (slots[i].parent_end >= 0) { braid_free(pp); p->pipes[k] = NULL; }
        k++;
    }
    for (size_t i = 0; i < nmap; i++) close_if(&slots[i].parent_end);
    braid_free(slots);
    p->exited = true;
    process_destroy(p);
    spawn_failure(failure, rc, file, what);
    return rc;

fail:
    for (size_t i = 0; slots && i < nmap; i++) {
        if (slots[i].src_owned) close_if(&slots[i].src);
        close_if(&slots[i].parent_end);
    }
    if (pipes)
        for (size_t i = 0; i < nroute; i++) braid_free(pipes[i]);
    braid_free(pipes);
    braid_free(slots);
    braid_free(envp);
    braid_free(p);
    spawn_failure(failure, rc, file, what);
    return rc;
}

/* ---- the handle ------------------------------------------------------------------------- */
void braid_process_free(braid_process *p) {
    if (!p) return;
    BRAID__LOOP_AFFINE(p->loop);
    if (p->freed) return;
    p->freed = true;
    if (!p->exited) {
        if (p->on_free == BRAID_PROCESS_FREE_WAIT) {
            /* Routed ends go now; the watch stays until the reap frees it. */
            for (size_t i = 0; i < p->npipes; i++) {
                proc_pipe *pp = p->pipes[i];
                if (!pp) continue;
                p->pipes[i] = NULL;
                pp->proc = NULL;
                p->open_pipes--;
                if (pp->base.transport) braid_transport_abort(pp->base.transport);
            }
            snprintf(p->handle_name, sizeof p->handle_name, "(freed, still running) pid %d", (int)p->pid);
            return;   /* on_reaped frees it */
        }
        if (p->pidfd >= 0) sys_pidfd_send_signal(p->pidfd, SIGKILL);
        else kill(p->pid, SIGKILL);
        while (waitpid(p->pid, NULL, 0) < 0 && errno == EINTR) {}
        p->exited = true;
    }
    if (p->depth == 0) process_destroy(p);
}

pid_t braid_process_pid(const braid_process *p) { return p->pid; }
void *braid_process_user(const braid_process *p) { return p->user; }
braid_loop *braid_process_loop(const braid_process *p) { return p->loop; }

bool braid_process_has_exited(const braid_process *p, braid_process_status *out) {
    if (p->exited && out) *out = p->status;
    return p->exited;
}

braid_deferred *braid_process_ended(braid_process *p) {
    BRAID__LOOP_AFFINE(p->loop);
    if (p->ended) return braid_deferred_succeed(p->loop, &p->status, NULL);
    braid_deferred *d = braid_deferred_new(p->loop);
    if (!d) return NULL;
    braid_deferred **w = braid_realloc(p->waiters, (p->nwaiters + 1) * sizeof *w);
    if (!w) {
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "process: waiting for the end"));
        return d;
    }
    p->waiters = w;
    w[p->nwaiters++] = d;   /* the producer's reference, dropped when it fires */
    return d;
}

int braid_process_signal(braid_process *p, int signo) {
    BRAID__LOOP_AFFINE(p->loop);
    if (p->exited) return BRAID_EPROCESS_EXITED;
    int r = p->pidfd >= 0 ? sys_pidfd_send_signal(p->pidfd, signo) : kill(p->pid, signo);
    if (r < 0) return errno == ESRCH ? BRAID_EPROCESS_EXITED : -errno;
    return 0;
}

int braid_process_kill_after(braid_process *p, uint64_t timeout) {
    BRAID__LOOP_AFFINE(p->loop);
    if (p->exited) return BRAID_EPROCESS_EXITED;
    if (timeout == 0) return braid_process_signal(p, SIGKILL);
    uint64_t now = braid_loop_now_fresh(p->loop);
    uint64_t deadline = timeout > UINT64_MAX - now ? UINT64_MAX : now + timeout;
    if (p->kill_armed && deadline >= p->kill_deadline) return 0;
    int rc = braid_process_signal(p, SIGTERM);
    if (rc < 0) return rc;
    if (timeout == BRAID_FOREVER) return 0;
    p->kill_deadline = deadline;
    p->kill_armed = true;
    braid_timer_start(&p->kill_timer, timeout);
    return 0;
}

int braid_process_write(braid_process *p, int child_fd, const void *buf, size_t len) {
    BRAID__LOOP_AFFINE(p->loop);
    proc_pipe *pp = find_pipe(p, child_fd);
    if (!pp || !pp->base.transport) return BRAID_ENOENT;
    return braid_transport_write(pp->base.transport, buf, len);
}

int braid_process_close_fd(braid_process *p, int child_fd) {
    BRAID__LOOP_AFFINE(p->loop);
    proc_pipe *pp = find_pipe(p, child_fd);
    if (!pp || !pp->base.transport) return BRAID_ENOENT;
    if (pp->kind == BRAID_PROCESS_FD_TO_CHILD) {
        braid_transport_close(pp->base.transport, BRAID_FOREVER);
        return 0;
    }
    return braid_transport_shutdown_write(pp->base.transport);
}

braid_transport *braid_process_transport(braid_process *p, int child_fd) {
    BRAID__LOOP_AFFINE(p->loop);
    proc_pipe *pp = find_pipe(p, child_fd);
    return pp ? pp->base.transport : NULL;
}
