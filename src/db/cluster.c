/* libbraid-db: a throwaway PostgreSQL server for tests and benchmarks.
 *
 * The caller forks a watchdog (its own session, so a signal to the test's
 * process group does not take it down first). The watchdog makes the temp
 * directory, runs initdb and pg_ctl start (as an unprivileged user when
 * running as root), writes one status line into a pipe, then waits for the
 * read end of a second pipe — whose write end only the caller holds — to
 * reach end of file: that happens at braid_db_pg_cluster_stop, at exit, or
 * when the caller is killed. Then it stops the server (immediate mode) and
 * removes the directory. Settings follow PostgreSQL's own test clusters and
 * pg_tmp: initdb -N -A trust, fsync/synchronous_commit/full_page_writes off,
 * listen_addresses='' and a short socket directory (sun_path is ~107 bytes);
 * like pg_tmp, the data directory is a copy of one initdb'd once, with 1 MB
 * WAL segments so that the copy is 28 MB rather than 39. */
#include "db_internal.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

struct braid_db_pg_cluster {
    pid_t watchdog;
    int hold_fd;            /* write end: closing it stops the cluster */
    char dir[64];
    char url[160];
};

static bool is_exec(const char *dir, const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return access(p, X_OK) == 0;
}

static bool find_bindir(const char *given, char *out, size_t n) {
    if (given && *given) {
        snprintf(out, n, "%s", given);
        return is_exec(out, "initdb") && is_exec(out, "pg_ctl");
    }
    const char *env = getenv("BRAID_PG_BINDIR");
    if (env && *env) {
        snprintf(out, n, "%s", env);
        return is_exec(out, "initdb") && is_exec(out, "pg_ctl");
    }
    FILE *p = popen("pg_config --bindir 2>/dev/null", "r");
    if (p) {
        char line[400] = "";
        if (fgets(line, sizeof line, p)) line[strcspn(line, "\n")] = 0;
        pclose(p);
        if (*line && is_exec(line, "initdb") && is_exec(line, "pg_ctl")) {
            snprintf(out, n, "%s", line);
            return true;
        }
    }
    int best = -1;
    DIR *d = opendir("/usr/lib/postgresql");
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            int v = atoi(e->d_name);
            char b[300];
            snprintf(b, sizeof b, "/usr/lib/postgresql/%s/bin", e->d_name);
            if (v > best && is_exec(b, "initdb") && is_exec(b, "pg_ctl")) {
                best = v;
                snprintf(out, n, "%s", b);
            }
        }
        closedir(d);
    }
    return best >= 0;
}

/* Run argv as uid/gid (when root), output to log; its exit status. */
static int run_as(uid_t uid, gid_t gid, char *const argv[], const char *log) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        if (geteuid() == 0) {   /* first: the log must belong to the server's user */
            if (setgroups(0, NULL) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(126);
        }
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        int nul = open("/dev/null", O_RDONLY);
        if (nul >= 0) dup2(nul, 0);
        setenv("LC_ALL", "C", 1);
        unsetenv("PGDATA");
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0) {}
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void rm_rf(const char *path) {
    char *argv[] = { (char *)"/bin/rm", (char *)"-rf", (char *)path, NULL };
    pid_t pid = fork();
    if (pid == 0) {
        execv(argv[0], argv);
        _exit(127);
    }
    if (pid > 0) waitpid(pid, NULL, 0);
}

static void tail_log(const char *log, char *why, size_t n) {
    FILE *f = fopen(log, "r");
    if (!f) return;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    long from = sz > (long)n - 1 ? sz - (long)n + 1 : 0;
    fseek(f, from, SEEK_SET);
    size_t got = fread(why, 1, n - 1, f);
    why[got] = 0;
    fclose(f);
}

static int run_initdb(const char *initdb, uid_t uid, gid_t gid, const char *data, const char *log) {
    char *ia[] = { (char *)initdb, (char *)"-N", (char *)"-A", (char *)"trust", (char *)"-U",
                   (char *)"postgres", (char *)"-E", (char *)"UTF8", (char *)"--locale=C",
                   (char *)"--wal-segsize=1", (char *)"-D", (char *)data, NULL };
    return run_as(uid, gid, ia, log);
}

/* The data directory: a copy of a template made once by initdb (pg_tmp's
 * trick: initdb takes a second or more, a copy a tenth of that), shared by
 * every cluster of this user and these binaries, made under a lock. The
 * template lives in the temporary directory as
 * braid-pg-template-<uid>-<hash of bindir>; BRAID_PG_TEMPLATE=0 turns it off. */
static int make_data_dir(const char *initdb, const char *bindir, uid_t uid, gid_t gid, const char *data,
                         const char *log) {
    const char *off = getenv("BRAID_PG_TEMPLATE");
    if (off && !strcmp(off, "0")) return run_initdb(initdb, uid, gid, data, log);
    unsigned long h = 5381;
    for (const char *p = bindir; *p; p++) h = h * 33 + (unsigned char)*p;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || strlen(tmp) > 30) tmp = "/tmp";
    char tpl[128], tpl_new[140], lock[140], version[160];
    snprintf(tpl, sizeof tpl, "%s/braid-pg-template-%u-%lx", tmp, (unsigned)uid, h);
    snprintf(tpl_new, sizeof tpl_new, "%s.new", tpl);
    snprintf(lock, sizeof lock, "%s.lock", tpl);
    snprintf(version, sizeof version, "%s/PG_VERSION", tpl);
    int lfd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lfd < 0 || flock(lfd, LOCK_EX) != 0) {
        if (lfd >= 0) close(lfd);
        return run_initdb(initdb, uid, gid, data, log);
    }
    if (access(version, F_OK) != 0) {
        rm_rf(tpl_new);
        rm_rf(tpl);
        if (run_initdb(initdb, uid, gid, tpl_new, log) != 0 || rename(tpl_new, tpl) != 0) {
            rm_rf(tpl_new);
            close(lfd);   /* unlocks */
            return run_initdb(initdb, uid, gid, data, log);
        }
    }
    char *cp[] = { (char *)"/bin/cp", (char *)"-a", tpl, (char *)data, NULL };
    int rc = run_as(uid, gid, cp, log);
    close(lfd);
    if (rc != 0) {
        rm_rf(data);
        return run_initdb(initdb, uid, gid, data, log);
    }
    return 0;
}

static _Noreturn void watchdog(const char *bindir, const char *dir, int status_fd, int hold_fd) {
    setsid();
    signal(SIGPIPE, SIG_IGN);
    uid_t uid = geteuid();
    gid_t gid = getegid();
    if (uid == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (!pw) pw = getpwnam("nobody");
        if (pw) {
            uid = pw->pw_uid;
            gid = pw->pw_gid;
        }
    }
    char log[128], data[128], initdb[512], pgctl[512], opts[400];
    snprintf(log, sizeof log, "%s/log", dir);
    snprintf(data, sizeof data, "%s/data", dir);
    snprintf(initdb, sizeof initdb, "%s/initdb", bindir);
    snprintf(pgctl, sizeof pgctl, "%s/pg_ctl", bindir);
    if (chown(dir, uid, gid) != 0 && geteuid() == 0) {
        dprintf(status_fd, "E cannot chown %s\n", dir);
        rm_rf(dir);
        _exit(1);
    }
    int rc = make_data_dir(initdb, bindir, uid, gid, data, log);
    if (rc == 0) {
        snprintf(opts, sizeof opts,
                 "-k %s -c listen_addresses= -F -c full_page_writes=off -c synchronous_commit=off "
                 "-c max_connections=150 -c shared_buffers=32MB",
                 dir);
        char *sa[] = { pgctl, (char *)"-D", data, (char *)"-l", log, (char *)"-w", (char *)"-t",
                       (char *)"60", (char *)"-o", opts, (char *)"start", NULL };
        rc = run_as(uid, gid, sa, log);
    }
    if (rc != 0) {
        char buf[900] = "";
        tail_log(log, buf, sizeof buf);
        for (char *p = buf; *p; p++)
            if (*p == '\n') *p = ' ';
        dprintf(status_fd, "E initdb/pg_ctl failed (%d): %s\n", rc, buf);
        if (!getenv("BRAID_PG_KEEP")) rm_rf(dir);
        _exit(1);
    }
    dprintf(status_fd, "OK\n");
    close(status_fd);
    char c;
    while (read(hold_fd, &c, 1) != 0) {}   /* EOF: the owner stopped or died */
    char *stop[] = { pgctl, (char *)"-D", data, (char *)"-m", (char *)"immediate", (char *)"-w",
                     (char *)"stop", NULL };
    run_as(uid, gid, stop, "/dev/null");
    rm_rf(dir);
    _exit(0);
}

int braid_db_pg_cluster_start(const char *bindir_in, braid_db_pg_cluster **out, char *why,
                              size_t whylen) {
    char bindir[400];
    if (why && whylen) why[0] = 0;
    if (!find_bindir(bindir_in, bindir, sizeof bindir)) {
        if (why) snprintf(why, whylen, "no PostgreSQL server binaries (initdb, pg_ctl) found");
        return BRAID_ENOSYS;
    }
    braid_db_pg_cluster *c = calloc(1, sizeof *c);   /* not braid's: lives past leak gates */
    if (!c) return BRAID_ENOMEM;
    const char *tmp = getenv("TMPDIR");
    if (!tmp || strlen(tmp) > 30) tmp = "/tmp";
    snprintf(c->dir, sizeof c->dir, "%s/braid-pg-XXXXXX", tmp);
    if (!mkdtemp(c->dir)) {
        int e = -errno;
        if (why) snprintf(why, whylen, "mkdtemp: %s", strerror(-e));
        free(c);
        return e;
    }
    chmod(c->dir, 0755);
    int st[2], hold[2];
    if (pipe2(st, O_CLOEXEC) != 0) {
        rmdir(c->dir);
        free(c);
        return -errno;
    }
    if (pipe2(hold, O_CLOEXEC) != 0) {
        close(st[0]);
        close(st[1]);
        rmdir(c->dir);
        free(c);
        return -errno;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = -errno;
        close(st[0]); close(st[1]); close(hold[0]); close(hold[1]);
        rmdir(c->dir);
        free(c);
        return e;
    }
    if (pid == 0) {
        close(st[0]);
        close(hold[1]);
        /* no other descriptor of the parent's may keep anything alive */
        for (int fd = 3; fd < 1024; fd++)
            if (fd != st[1] && fd != hold[0]) close(fd);
        watchdog(bindir, c->dir, st[1], hold[0]);
    }
    close(st[1]);
    close(hold[0]);
    char line[1024];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof line - 1 && (r = read(st[0], line + got, sizeof line - 1 - got)) != 0) {
        if (r < 0) {
            if (errno == EINTR) continue;
            break;
        }
        got += (size_t)r;
        if (memchr(line, '\n', got)) break;
    }
    line[got] = 0;
    close(st[0]);
    if (strncmp(line, "OK", 2) != 0) {
        close(hold[1]);
        waitpid(pid, NULL, 0);
        if (why) snprintf(why, whylen, "%s", got ? line + 2 : "the watchdog died");
        free(c);
        return BRAID_EDB_CONNECT;
    }
    c->watchdog = pid;
    c->hold_fd = hold[1];
    snprintf(c->url, sizeof c->url, "postgresql:host=%s dbname=postgres user=postgres", c->dir);
    *out = c;
    return 0;
}

const char *braid_db_pg_cluster_url(const braid_db_pg_cluster *c) { return c->url; }
const char *braid_db_pg_cluster_conninfo(const braid_db_pg_cluster *c) { return c->url + 11; }

void braid_db_pg_cluster_stop(braid_db_pg_cluster *c) {
    if (!c) return;
    close(c->hold_fd);
    while (waitpid(c->watchdog, NULL, 0) < 0 && errno == EINTR) {}
    free(c);
}
