/* job-scheduler: a producer, a tuple space and N worker processes.
 *
 *     job-scheduler [JOBS] [WORKERS]        (default 200 jobs, 4 workers)
 *
 * The producer puts JOBS prioritised jobs ("job", id, x) into a space on its
 * loop and serves the space to WORKERS child processes: this program run
 * again with braid_tuplespace_spawn_worker, which gives each a socketpair of
 * its own at fd 3 (JOB_SCHEDULER_FD=3 tells it it is a worker and where the
 * space is). A worker takes a job on a 2 s
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
#include <unistd.h>

#define MAXW 64

/* ---- a worker process: the blocking client, no loop ---------------------------------- */
static int worker(int fd) {
    braid_tuplespace_sync *s;
    if (braid_tuplespace_sync_new(fd, 0, &s) < 0) return 1;
    for (;;) {
        braid_tuple *t;
        int rc = braid_tuplespace_sync_in_lease(s, BRAID_FIELDS(braid_field_str("job"),
                                                                braid_field_any(BRAID_FIELD_INT),
                                                                braid_field_any(BRAID_FIELD_INT)),
                                                BRAID_SECONDS(2), BRAID_SECONDS(30), &t);
        if (rc < 0) {
            fprintf(stderr, "worker %d: %s\n", (int)getpid(), braid_strerror(rc));
            braid_tuplespace_sync_free(s);
            return 1;
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
        braid_tuple_free(t);
        if (rc < 0 && rc != BRAID_ETUPLE_NOLEASE) {     /* NOLEASE: it expired; redone elsewhere */
            braid_tuplespace_sync_free(s);
            return 1;
        }
    }
    braid_tuplespace_sync_free(s);
    return 0;
}

/* ---- the producer ----------------------------------------------------------------------- */
typedef struct producer {
    braid_loop *loop;
    braid_tuplespace *ts;
    long jobs, results, duplicates, wrong;
    unsigned char *seen;
    braid_process *w[MAXW];
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
        braid_process_signal(p->w[0], SIGKILL);
        printf("killed worker %d after %ld results\n", (int)braid_process_pid(p->w[0]), p->results);
    }
    if (p->results == p->jobs) braid_loop_stop(p->loop);
}

int main(int argc, char **argv) {
    const char *fd = getenv("JOB_SCHEDULER_FD");
    if (fd) return worker(atoi(fd));                    /* run again as a worker */
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

    /* the workers: this program again (/proc/self/exe, as braid_workers
     * runs it), each served by the space on a socketpair at its fd 3, with
     * the producer's stdin, stdout and stderr */
    const char *env[] = { "JOB_SCHEDULER_FD=3", NULL };
    const char *wargv[] = { "job-scheduler-worker", NULL };
    braid_process_options wo = { .file = "/proc/self/exe", .argv = wargv,
                                 .env_mode = BRAID_PROCESS_ENV_EXTEND, .env = env };
    for (int i = 0; i < p.workers; i++) {
        braid_failure *why = NULL;
        if ((rc = braid_tuplespace_spawn_worker(p.ts, &wo, 3, NULL, &p.w[i], &why)) < 0) {
            fprintf(stderr, "job-scheduler: %s\n", why ? why->message : braid_strerror(rc));
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
    int failed = 0;
    for (int i = 0; i < p.workers; i++) {
        braid_process_status st;
        while (!braid_process_has_exited(p.w[i], &st)) braid_loop_run_once(p.loop, 0);
        if (i > 0 && st.exit_code != 0) failed++;
        braid_process_free(p.w[i]);
    }
    while (braid_tuplespace_connections(p.ts)) braid_loop_run_once(p.loop, 0);
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
