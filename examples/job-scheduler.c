/* job-scheduler: a producer, a tuple space and N worker processes.
 *
 *     job-scheduler [JOBS] [WORKERS]        (default 200 jobs, 4 workers)
 *
 * The producer puts JOBS prioritised jobs ("job", id, x) into a space on its
 * loop and serves the space to WORKERS child processes, each through a
 * socketpair of its own (a two-way pipe). A worker takes a job on a 2 s
 * lease, works (squares x, a few milliseconds of "work"), writes ("result",
 * id, x*x, pid) and acks. A third of the way through, the producer kills one
 * worker with SIGKILL, most likely in the middle of a job: its connection
 * drops, the space puts its lease back at once, and another worker does the
 * job. The producer counts results through notify, de-duplicating by job id
 * (a worker killed after writing its result but before its ack makes the
 * job run twice: at-least-once delivery), and exits 0 once every job has
 * exactly one result in the set. */
#include <braid.h>
#include <braid/tuplespace.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXW 64

/* ---- a worker process: the blocking client, no loop ---------------------------------- */
static void worker(int fd) {
    braid_tuplespace_sync *s;
    if (braid_tuplespace_sync_new(fd, 0, &s) < 0) _exit(1);
    for (;;) {
        braid_tuple *t;
        int rc = braid_tuplespace_sync_in_lease(s, BRAID_FIELDS(braid_field_str("job"),
                                                                braid_field_any(BRAID_FIELD_INT),
                                                                braid_field_any(BRAID_FIELD_INT)),
                                                BRAID_SECONDS(2), BRAID_SECONDS(30), &t);
        if (rc < 0) {
            fprintf(stderr, "worker %d: %s\n", (int)getpid(), braid_strerror(rc));
            _exit(1);
        }
        int64_t id = t->f[1].v.i, x = t->f[2].v.i;
        if (id < 0) {                                   /* the producer says: stop */
            braid_tuplespace_sync_ack(s, t->lease);
            braid_tuple_free(t);
            break;
        }
        usleep(3000);                                   /* the work */
        rc = braid_tuplespace_sync_out(s, BRAID_FIELDS(braid_field_str("result"), braid_field_int(id),
                                                       braid_field_int(x * x), braid_field_int(getpid())), 0);
        if (rc == 0) rc = braid_tuplespace_sync_ack(s, t->lease);
        if (rc < 0 && rc != BRAID_ETUPLE_NOLEASE) _exit(1);   /* NOLEASE: it expired; redone elsewhere */
        braid_tuple_free(t);
    }
    braid_tuplespace_sync_free(s);
    _exit(0);
}

/* ---- the producer ----------------------------------------------------------------------- */
typedef struct producer {
    braid_loop *loop;
    braid_tuplespace *ts;
    long jobs, results, duplicates, wrong;
    unsigned char *seen;
    pid_t pids[MAXW];
    int workers;
    bool killed;
} producer;

static void on_result(const braid_tuple *t, void *arg) {
    producer *p = arg;
    int64_t id = t->f[1].v.i;
    if (id < 0 || id >= p->jobs) { p->wrong++; return; }
    if (t->f[2].v.i != id * id) p->wrong++;
    if (p->seen[id]++) { p->duplicates++; return; }
    p->results++;
    if (!p->killed && p->results >= p->jobs / 3) {     /* mid-run: kill a worker */
        p->killed = true;
        kill(p->pids[0], SIGKILL);
        printf("killed worker %d after %ld results\n", (int)p->pids[0], p->results);
    }
    if (p->results == p->jobs) braid_loop_stop(p->loop);
}

int main(int argc, char **argv) {
    producer p = { .jobs = argc > 1 ? atol(argv[1]) : 200, .workers = argc > 2 ? atoi(argv[2]) : 4 };
    if (p.jobs < 1 || p.workers < 2 || p.workers > MAXW) {
        fprintf(stderr, "usage: job-scheduler [JOBS >= 1] [WORKERS 2..%d]\n", MAXW);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    p.seen = calloc((size_t)p.jobs, 1);
    int rc = braid_loop_new(NULL, &p.loop);
    if (rc == 0) rc = braid_tuplespace_new(p.loop, NULL, &p.ts);
    if (rc < 0) { fprintf(stderr, "job-scheduler: %s\n", braid_strerror(rc)); return 1; }

    /* the workers, each on a socketpair of its own */
    for (int i = 0; i < p.workers; i++) {
        int sv[2];
        if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) { perror("socketpair"); return 1; }
        p.pids[i] = fork();
        if (p.pids[i] == 0) { close(sv[0]); worker(sv[1]); }
        close(sv[1]);
        if ((rc = braid_tuplespace_serve_fd(p.ts, sv[0], NULL)) < 0) {
            fprintf(stderr, "serve: %s\n", braid_strerror(rc));
            return 1;
        }
    }
    /* results as they come; then the jobs, a third of them urgent */
    braid_tuplespace_notify(p.ts, BRAID_FIELDS(braid_field_str("result"), braid_field_any(BRAID_FIELD_INT),
                                               braid_field_any(BRAID_FIELD_INT), braid_field_any(BRAID_FIELD_INT)),
                            on_result, &p, NULL);
    for (long id = 0; id < p.jobs; id++) {
        rc = braid_tuplespace_out(p.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(id),
                                                     braid_field_int(id)), id % 3 == 0 ? 10 : 0);
        if (rc < 0) { fprintf(stderr, "out: %s\n", braid_strerror(rc)); return 1; }
    }
    braid_loop_run(p.loop);                             /* until every job has a result */

    /* results are kept in the space too: take them all (what a consumer would do) */
    braid_tuple_list *l = NULL;
    braid_tuplespace_in_all(p.ts, BRAID_FIELDS(braid_field_str("result"), braid_field_any(BRAID_FIELD_INT),
                                               braid_field_any(BRAID_FIELD_INT), braid_field_any(BRAID_FIELD_INT)),
                            0, &l);
    size_t stored = l ? l->n : 0;
    braid_tuple_list_free(l);

    /* stop the survivors: one lowest-priority pill each */
    for (int i = 1; i < p.workers; i++)
        braid_tuplespace_out(p.ts, BRAID_FIELDS(braid_field_str("job"), braid_field_int(-1), braid_field_int(0)), -1);
    while (braid_tuplespace_connections(p.ts)) braid_loop_run_once(p.loop, 0);
    int failed = 0;
    for (int i = 0; i < p.workers; i++) {
        int st;
        waitpid(p.pids[i], &st, 0);
        if (i > 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0)) failed++;
    }
    braid_tuplespace_stats s;
    braid_tuplespace_stats_get(p.ts, &s);
    printf("%ld jobs, %ld distinct results (%zu stored), %ld duplicates, %ld wrong; "
           "%llu leases put back (%llu acks, %llu expired), %d workers failed\n",
           p.jobs, p.results, stored, p.duplicates, p.wrong, (unsigned long long)s.nacks,
           (unsigned long long)s.acks, (unsigned long long)s.expired, failed);
    braid_tuplespace_free(p.ts);
    rc = braid_loop_free(p.loop);
    free(p.seen);
    return p.results == p.jobs && !p.wrong && !failed && rc == 0 ? 0 : 1;
}
