/* What the stage module's files share (never installed): the stage and
 * domain structs, the per-thread dispatch context, and the hooks between
 * the core (stage.c), admission and controllers (control.c) and the
 * statistics and graph dump (dump.c). */
#ifndef BRAID_STAGE_INTERNAL_H
#define BRAID_STAGE_INTERNAL_H

#include "base/base.h"
#include "context/capture.h"
#include "loop/loop_module.h"
#include <braid/introspect.h>
#include <braid/stage.h>
#include <pthread.h>

static const char braid__log_ns[] = "stage";

#define BRAID__STAGE_SAMPLES 100   /* response times kept for the p90 (SEDA's window) */
#define BRAID__STAGE_EDGES 8       /* outgoing edges remembered per stage */

struct braid_stage_domain {
    braid_loop *loop;
    braid_pool *pool;              /* NULL: the loop's thread */
    int cls;
    char *name;
    braid_clock *clock;
    braid_handle handle;
    size_t nstages;                /* loop thread */
    /* loop domains: stages waiting for a run, and the one wake-up in flight */
    pthread_mutex_t mu;
    braid_stage *runq_head, *runq_tail;
    size_t runq_len;
    bool armed;                    /* a post or soon node is queued on the loop */
    bool dead;                     /* freed while armed: the wake-up frees it */
    braid_post post;
    braid_soon soon;
    /* pool domains: while runs started from the loop's thread are going,
     * the loop is held (braid_loop_run waits for their answers) and
     * busy-polls its posted calls */
    uint64_t spin_ns;              /* 0: never spin */
    unsigned active;               /* mu: runs queued or going */
    bool held;                     /* mu: the hold is taken */
    bool release_pending;          /* mu: release_post is queued on the loop */
    braid_post release_post;
};

enum { ADMIT_ALL, ADMIT_THRESHOLD, ADMIT_RATE, ADMIT_CLASSES, ADMIT_FN };

typedef struct braid__bucket {
    double rate, depth, tokens;
    uint64_t last;                 /* clock time of the last refill */
} braid__bucket;

typedef struct braid__stage_edge {
    braid_stage *to;               /* atomic: set once */
    uint64_t count;                /* atomic */
} braid__stage_edge;

struct braid_stage {
    braid_stage_domain *dom;
    char *name;
    braid_stage_fn fn;
    void *arg;
    braid_handle handle;
    braid_stage *reg_prev, *reg_next;   /* the loop's list, for the dump */
    unsigned flags;

    pthread_mutex_t mu;                 /* everything below, unless marked */
    pthread_cond_t cv;                  /* runners reaching 0 while freeing */
    braid_stage_event *ring;
    uint64_t *ring_t;                   /* enqueue times (NULL with NO_TIMING) */
    size_t cap, head, len, reserved;
    size_t batch_max;
    unsigned threads;                   /* runner bound */
    unsigned runners;                   /* runs queued or going (a direct-list entry counts) */
    unsigned running;                   /* handler calls going */
    bool closed, freeing, clogged;
    size_t clog_at, drain_at;
    braid_stage_cb on_clog, on_drain;
    void *cb_arg;

    /* admission */
    int admit;
    size_t threshold;
    braid__bucket bucket;
    braid__bucket classes[BRAID_STAGE_MAX_CLASSES];
    size_t nclasses;
    braid_stage_classify_fn classify;
    braid_stage_admit_fn admit_fn;
    void *admit_arg;

    /* back-pressure notices to the loop */
    braid_post note;
    bool note_pending, dead;
    unsigned note_bits;                 /* NOTE_CLOG, NOTE_DRAIN */

    /* scheduling */
    braid_stage *run_next;              /* domain run queue (dom->mu) */
    bool in_runq;                       /* dom->mu */
    braid_stage *direct_next;           /* the owning thread's direct list */

    /* statistics */
    braid_stage_stats st;               /* counters and histograms; the rest filled on read */
    uint64_t samples[BRAID__STAGE_SAMPLES];
    unsigned nsamples, sample_pos;
    uint64_t last_busy;                 /* clock time the queue last held something */

    braid__stage_edge edges[BRAID__STAGE_EDGES];

    /* controllers (loop thread) */
    braid_looping ctl_threads, ctl_batch, ctl_response;
    bool ctl_threads_on, ctl_batch_on, ctl_response_on;
    braid_stage_thread_control tc;
    braid_stage_batch_control bc;
    braid_stage_response_control rc;
    uint64_t bc_handled, bc_last;       /* batch controller: handled at the last look, and when */
    double bc_ewma, bc_best;
    size_t bc_best_batch;
    int bc_dir;                         /* +1 grow, -1 shrink */
    uint64_t rc_handled, rc_last;       /* response controller: handled at the last look, and when */
    uint64_t rc_p90;                    /* response controller: the p90 at the last look with samples */

    braid_introspect_node inode;        /* its entry in the loop's "stages" section (cold) */
    /* contexts (st->mu), after the rest so that a stage without them lays out as before */
    braid_ctx **ring_c;                 /* each event's enqueuer's context (a reference), NULL in
                                           every slot not holding one: only events enqueued
                                           under a context touch it */
    size_t nctx;                        /* queued events with a context */
};

enum { NOTE_CLOG = 1u, NOTE_DRAIN = 2u };

/* The stage's lock, none for BRAID_STAGE_LOOP_ONLY stages (loop thread only). */
static inline void braid__stage_lock(braid_stage *st) {
    if (!(st->flags & BRAID_STAGE_LOOP_ONLY)) pthread_mutex_lock(&st->mu);
}
static inline void braid__stage_unlock(braid_stage *st) {
    if (!(st->flags & BRAID_STAGE_LOOP_ONLY)) pthread_mutex_unlock(&st->mu);
}

static inline uint64_t braid__stage_now(braid_stage_domain *d) { return d->clock->now(d->clock); }

/* control.c: admission under st->mu, for the n events evs. Returns 0 or
 * BRAID_ESTAGE_REJECTED; on success *tokens (if not NULL) says how many
 * tokens of the single bucket were taken. */
int braid__stage_admit_locked(braid_stage *st, const braid_stage_event *evs, size_t n,
                              uint64_t now, double *tokens);
/* Give back what an aborted reservation took. */
void braid__stage_refund_locked(braid_stage *st, double tokens);
/* Under st->mu: the 90th percentile of the response samples kept (0: none). */
uint64_t braid__stage_p90_locked(braid_stage *st);
/* stage.c: start another run if the stage's bound now lets one take queued work. */
void braid__stage_kick(braid_stage *st);
/* Stop every controller (loop thread). */
void braid__stage_controls_stop(braid_stage *st);

/* dump.c: the loop's registry of stages (and its introspection entry) */
int braid__stage_register(braid_stage *st);
void braid__stage_unregister(braid_stage *st);
/* Write st's entry of the "stages" section (a braid_introspect_fn). */
void braid__stage_describe(braid_json *j, void *arg);
/* Count n events sent from `from` (running on this thread) to `to`; the
 * edge's counter, or NULL past BRAID__STAGE_EDGES targets. */
uint64_t *braid__stage_edge_count(braid_stage *from, braid_stage *to, size_t n);

#endif
