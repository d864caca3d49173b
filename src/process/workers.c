/* Worker-process pools, the parent's side: spawning and replacing
 * workers, the bounded queue, least-loaded dispatch, timeouts, faults,
 * recycling and shutdown. The wire format is rpc.c's; the worker's side
 * is worker.c. */
#include "process/process_internal.h"
#include <braid/introspect.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

typedef struct wcall wcall;
typedef struct worker worker;

struct wcall {
    wcall *next, *prev;            /* in the queue, or in its worker's list */
    braid_workers *pool;
    worker *w;                     /* NULL while queued */
    braid_deferred *d;             /* the producer's reference; NULL once cancelled */
    uint32_t id;
    uint64_t seq;                  /* sent: its number among its worker's calls (the slot page's k) */
    bool cancelled;                /* sent, then cancelled before its worker took it: it will be
                                    * dropped there (a FAIL BRAID_ECANCELED comes back) */
    bool idempotent, resent;
    bool box;                      /* the payload is a box's encoding */
    uint64_t request_id;           /* the caller's context's (0: none) */
    braid_timer timer;
    bool timer_armed;
    size_t command_len, len;
    char *command;                 /* inside this block */
    unsigned char *payload;        /* inside this block */
};

/* What a freed pool leaves to the loop: its workers' connections, whose
 * transports go in the loop's next ready phase. A handle named after the
 * pool stays open until they have, so that a braid_loop_free before then
 * says whose they are. */
typedef struct remnant {
    braid_loop *loop;
    braid_handle h;
    unsigned n;                    /* connections not yet gone */
    char name[320];
} remnant;

typedef struct wproto {
    braid_framing_protocol fp;
    worker *w;                     /* NULL once the worker let go of it */
    remnant *rem;                  /* its freed pool's, or NULL */
} wproto;

struct worker {
    worker *next, *prev;
    braid_workers *pool;
    braid_process *proc;
    wproto *proto;
    bool ready, retiring;
    bool broken;                   /* a send failed: its connection is going */
    bool killed;                   /* its stop_timer sent SIGKILL */
    uint64_t calls_failed;         /* of calls_done, answered with a failure */
    unsigned index;                /* the lowest free at its spawn: a replacement takes its predecessor's */
    unsigned in_flight;
    int down_reader;               /* the parent's copy of the worker's read end (-1: none) */
    uint64_t calls_assigned;       /* sent to it, ever: recycle_after bounds this */
    uint64_t calls_done;
    uint64_t calls_dropped;        /* of calls_done, dropped unrun (timed out or cancelled unstarted) */
    wcall head;                    /* calls sent to it (sentinel) */
    braid__slot_page slots;        /* shared with it (p NULL: none) */
    bool slots_on;                 /* its ready frame said it takes calls through them */
    uint64_t sent_seq;             /* calls sent to it: the next one's number */
    braid_timer stop_timer;        /* retiring: SIGKILL if it has not gone */
    braid_timer start_timer;       /* until its ready frame: start_timeout */
};

struct braid_workers {
    braid_loop *loop;
    braid_handle handle;
    braid_workers_options o;
    char *program;
    char **argv;
    braid_process_fd *fds;         /* the pool's 5, then opts.fds, then the slot page's */
    int up_fd;                     /* the child fd the worker writes its frames to */
    int slots_fd;                  /* the child fd of the worker's slot page */
    size_t nfds;
    char role_env[300];
    worker head;                   /* sentinel */
    unsigned alive;                /* workers in the list */
    wcall queue;                   /* sentinel */
    size_t queued;
    uint32_t next_id;
    unsigned start_failures;       /* workers lost before ready, in a row */
    uint64_t backoff;
    braid_timer respawn_timer;
    bool respawn_armed;
    bool shutting, draining;
    braid_timer drain_timer;
    bool drain_armed;
    braid_deferred *shutdown_d;
    int depth;                     /* inside callers' callbacks: free deferred */
    bool freeing, free_pending;
    struct braid_workers_stats st;
    char *role;                    /* for introspection; NULL: none */
    braid_introspect_node inode;   /* its entry in the loop's "workers" section */
};

static void dispatch(braid_workers *pool);
static void spawn_missing(braid_workers *pool);
static void maybe_shutdown_done(braid_workers *pool);
static void pool_final_free(braid_workers *pool);
static void spawn_missing_after(braid_workers *pool, bool after_backoff);

/* Leave a stretch that may run callers' callbacks: true if one of them
 * freed the pool (it is gone now: touch nothing). */
static bool depth_leave(braid_workers *pool) {
    if (--pool->depth == 0 && pool->free_pending) {
        pool_final_free(pool);
        return true;
    }
    return false;
}

/* ---- lists ------------------------------------------------------------------------------ */
static void call_unlink(wcall *c) {
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = c;
}
static void call_push(wcall *head, wcall *c, bool front) {
    wcall *at = front ? head : head->prev;
    c->next = at->next;
    c->prev = at;
    at->next->prev = c;
    at->next = c;
}

/* ---- calls ------------------------------------------------------------------------------- */
static void call_free(wcall *c) {
    if (c->timer_armed) braid_timer_stop(&c->timer);
    braid_free(c);
}

/* Fail (or, if nobody waits any more, just drop) a call that is in no list. */
static void call_fail(wcall *c, int code, const char *fmt, const char *detail) {
    braid_deferred *d = c->d;
    c->d = NULL;
    if (d) {
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%.*s", (int)c->command_len, c->command);
        braid_deferred_errback(d, braid_failure_new(code, fmt, cmd, detail ? detail : ""));
    }
    call_free(c);
}

static void call_timeout_cb(braid_timer *t, void *arg);

/* A sent call, not started by its worker: cancel it there (the slot page,
 * process_internal.h). True if the worker will drop it; false if it has
 * taken it — or has no slot page (a worker that predates it), whose calls
 * all count as started. */
static bool cancel_unstarted(wcall *c) {
    worker *w = c->w;
    return w->slots_on && !c->cancelled && braid__slots_cancel(&w->slots, c->seq);
}

/* How long a worker has to drop a cancelled call once nothing sent before
 * it is unanswered (it is then next in its pipe): past that the worker is
 * stuck outside any call (its loop blocked, or no longer reading) and is
 * replaced. */
#define DROP_GRACE BRAID_SECONDS(1)

/* A cancelled call at the front of its worker's list gets DROP_GRACE
 * (its timer; call_timeout_cb). */
static void front_check(worker *w) {
    wcall *f = w->head.next;
    if (f == &w->head || !f->cancelled || f->timer_armed) return;
    f->timer_armed = true;
    braid_timer_start(&f->timer, DROP_GRACE);
}

static void call_cancel(braid_deferred *d, void *arg) {
    wcall *c = arg;
    (void)d;
    c->d = NULL;   /* braid errbacks d with BRAID_ECANCELED */
    if (!c->w) {   /* queued: gone */
        call_unlink(c);
        c->pool->queued--;
        call_free(c);
        return;
    }
    if (cancel_unstarted(c)) {
        /* Waiting inside its worker, not started: the worker drops it (its
         * FAIL frees the in-flight place); no timer is needed any more. */
        c->cancelled = true;
        c->pool->st.cancelled_queued++;
        if (c->timer_armed) {
            braid_timer_stop(&c->timer);
            c->timer_armed = false;
        }
        front_check(c->w);
        return;
    }
    /* Started: the reply will be dropped. The timer stays, so a worker
     * hung on it is still replaced. Tell the worker (advisory). */
    if (c->w->proto && c->w->proto->fp.base.transport) {
        braid__rpc_msg m = { .type = BRAID__RPC_CANCEL, .id = c->id };
        (void)braid__rpc_write(c->w->proto->fp.base.transport, &m, SIZE_MAX);
    }
}

/* ---- workers ------------------------------------------------------------------------------ */
/* How a process ended, for people: "signal 6 (core dumped)", "exit status 70". */
static void exit_cause(const braid_process_status *st, char *buf, size_t cap) {
    if (st->signo)
        snprintf(buf, cap, "signal %d%s", st->signo, st->core_dumped ? " (core dumped)" : "");
    else
        snprintf(buf, cap, "exit status %d", st->exit_code);
}

static void worker_remove(worker *w) {
    braid_workers *pool = w->pool;
    BRAID__ASSERT(w->head.next == &w->head);
    braid_timer_stop(&w->stop_timer);
    braid_timer_stop(&w->start_timer);
    w->prev->next = w->next;
    w->next->prev = w->prev;
    pool->alive--;
    if (w->proto) {
        wproto *wp = w->proto;
        wp->w = NULL;
        w->proto = NULL;
        if (wp->fp.base.transport) braid_transport_abort(wp->fp.base.transport);
    }
    braid_process_free(w->proc);   /* kills and reaps it if it still runs */
    if (w->down_reader >= 0) close(w->down_reader);
    braid__slots_free(&w->slots);
    braid_free(w);
}

/* The worker is lost (code says why): its calls fail with code, or go back
 * to the front of the queue once if idempotent; the call `culprit` (its
 * timeout fired) always fails. Then it is killed and replaced. */
static void worker_lost(worker *w, int code, const char *why, wcall *culprit) {
    braid_workers *pool = w->pool;
    pool->depth++;
    pool->st.lost++;
    if (!w->ready) pool->start_failures++;
    braid_process_status ps;
    if (braid_process_has_exited(w->proc, &ps)) exit_cause(&ps, pool->st.last_exit, sizeof pool->st.last_exit);
    else pool->st.last_exit[0] = 0;
    char detail[160];
    snprintf(detail, sizeof detail, " (worker pid %d: %s)", (int)braid_process_pid(w->proc), why);
    braid__log(pool->loop, BRAID_LOG_WARN, "worker pid %d lost: %s", (int)braid_process_pid(w->proc), why);
    /* Take the calls out first: failing one may run code that calls us. */
    wcall held;
    held.next = held.prev = &held;
    while (w->head.next != &w->head) {
        wcall *c = w->head.next;
        call_unlink(c);
        call_push(&held, c, false);
    }
    w->in_flight = 0;
    worker_remove(w);
    while (held.next != &held) {
        wcall *c = held.next;
        call_unlink(c);
        c->w = NULL;
        if (c == culprit) {
            pool->st.timeouts++;
            call_fail(c, BRAID_ETIMEDOUT, "call '%s' timed out%s", detail);
        } else if (c->idempotent && !c->resent && c->d && !pool->shutting) {
            c->resent = true;
            pool->st.resent++;
            call_push(&pool->queue, c, true);
            pool->queued++;
        } else {
            call_fail(c, code == BRAID_ETIMEDOUT ? BRAID_EWORKER_LOST : code,
                      "call '%s' lost with its worker%s", detail);
        }
    }
    if (pool->start_failures >= 3 && !pool->st.respawn_stopped) {
        pool->st.respawn_stopped = true;
        braid__log(pool->loop, BRAID_LOG_WARN,
                   "workers of '%s' die at start-up (%u in a row, the last: %s): none is started again "
                   "until braid_workers_free", pool->role ? pool->role : pool->program, pool->start_failures, why);
    }
    if (pool->start_failures >= 3) {
        /* The program cannot start: do not let callers wait for it. */
        while (pool->queue.next != &pool->queue) {
            wcall *c = pool->queue.next;
            call_unlink(c);
            pool->queued--;
            call_fail(c, BRAID_EWORKER_LOST, "call '%s': workers keep dying at start-up%s", detail);
        }
    }
    if (depth_leave(pool)) return;
    if (!pool->freeing) {
        spawn_missing(pool);
        dispatch(pool);
        maybe_shutdown_done(pool);
    }
}

static void start_timer_cb(braid_timer *t, void *arg) {
    worker *w = arg;
    (void)t;
    if (!w->ready) worker_lost(w, BRAID_EWORKER_LOST, "no ready frame within its start-up timeout", NULL);
}

static void stop_timer_cb(braid_timer *t, void *arg) {
    worker *w = arg;
    (void)t;
    w->killed = true;
    (void)braid_process_signal(w->proc, SIGKILL);
}

/* Tell an idle worker to go (recycling, shutdown): STOP, then EOF; the
 * process's end removes it; SIGKILL after 1 s if it lingers. */
static void worker_stop(worker *w) {
    w->retiring = true;
    if (w->proto && w->proto->fp.base.transport) {
        braid__rpc_msg m = { .type = BRAID__RPC_STOP };
        (void)braid__rpc_write(w->proto->fp.base.transport, &m, SIZE_MAX);
        (void)braid_transport_shutdown_write(w->proto->fp.base.transport);
    }
    braid_timer_start(&w->stop_timer, BRAID_SECONDS(1));
}

static void proc_ended(braid_process *p, const braid_process_status *st) {
    worker *w = braid_process_user(p);
    braid_workers *pool = w->pool;
    if (w->retiring && w->head.next == &w->head) {
        worker_remove(w);
        spawn_missing(pool);
        dispatch(pool);
        maybe_shutdown_done(pool);
        return;
    }
    /* Exited: its socket's EOF (which comes after any reply it sent) does
     * the rest, unless the socket is already gone. */
    if (!w->proto || !w->proto->fp.base.transport) {
        char why[96], cause[48];
        exit_cause(st, cause, sizeof cause);
        snprintf(why, sizeof why, "%s: %s", w->killed ? "closed its connection, killed" : "ended", cause);
        worker_lost(w, BRAID_EWORKER_LOST, why, NULL);
    }
}
static const braid_process_protocol worker_proc_proto = { .ended = proc_ended };

/* ---- frames from a worker ---------------------------------------------------------------- */
static void send_call(worker *w, wcall *c);
static int on_log(worker *w, const braid__rpc_msg *m);
static void after_frame(worker *w);

static void reply_free(void *p) {
    braid_worker_reply *r = p;
    braid_box_free(r->box);
    braid_free(r);
}

/* box: a REPLY_BOX's, decoded (taken over). */
static void on_reply(worker *w, const braid__rpc_msg *m, braid_box *box) {
    braid_workers *pool = w->pool;
    wcall *c = w->head.next;
    while (c != &w->head && c->id != m->id) c = c->next;
    if (c == &w->head) {   /* a reply to nothing: a call already failed/cancelled... */
        braid_box_free(box);
        return;
    }
    call_unlink(c);
    c->w = NULL;
    w->in_flight--;
    w->calls_done++;   /* dropped ones too: recycle_after counts the calls it was given */
    front_check(w);
    if (c->cancelled && m->type == BRAID__RPC_FAIL && m->code == BRAID_ECANCELED) {
        /* Dropped unstarted, as asked: its caller had its answer already. */
        w->calls_dropped++;
        braid_box_free(box);
        call_free(c);
        return;
    }
    w->calls_failed += m->type == BRAID__RPC_FAIL;
    pool->st.calls++;
    braid_deferred *d = c->d;
    c->d = NULL;
    if (d) {
        if (m->type != BRAID__RPC_FAIL) {
            braid_worker_reply *r = braid_malloc(sizeof *r + m->len + 1);
            if (m->type == BRAID__RPC_REPLY_BOX && !box) {   /* its decoding ran out of memory */
                braid_free(r);
                r = NULL;
            }
            if (!r) {
                braid_box_free(box);
                box = NULL;
                braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "worker reply"));
            } else {
                r->box = box;
                box = NULL;
                r->len = m->len;
                if (m->len) memcpy(r->data, m->payload, m->len);
                r->data[m->len] = 0;
                braid_deferred_callback(d, r, reply_free);
            }
        } else {
            int code = m->code >= BRAID_ERRLAST ? m->code : BRAID_EWORKER_REMOTE;
            braid_deferred_errback(d, braid_failure_new(code, "call '%.*s' failed in worker pid %d: %.*s",
                                                        (int)c->command_len, c->command,
                                                        (int)braid_process_pid(w->proc), (int)m->len,
                                                        (const char *)m->payload));
        }
    }
    braid_box_free(box);
    call_free(c);
}

static int on_frame(void *ctx, const void *frame, size_t len) {
    wproto *wp = ctx;
    worker *w = wp->w;
    if (!w) return 1;
    braid__rpc_msg m;
    if (braid__rpc_parse(frame, len, &m) < 0) return BRAID_EPROTO_INPUT;
    braid_workers *pool = w->pool;
    switch (m.type) {
    case BRAID__RPC_READY:
        if (w->ready) return BRAID_EPROTO_INPUT;
        w->ready = true;
        w->slots_on = (m.id & BRAID__RPC_READY_SLOTS) && w->slots.p;
        braid_timer_stop(&w->start_timer);
        pool->start_failures = 0;
        pool->backoff = 0;
        break;
    case BRAID__RPC_LOG: {
        pool->depth++;   /* an observer may free the pool */
        int rc = on_log(w, &m);
        if (depth_leave(pool) || !wp->w) return 1;
        if (rc < 0) return rc;
        break;
    }
    case BRAID__RPC_REPLY:
    case BRAID__RPC_REPLY_BOX:
    case BRAID__RPC_FAIL: {
        if (!w->ready) return BRAID_EPROTO_INPUT;
        braid_box *box = NULL;
        if (m.type == BRAID__RPC_REPLY_BOX) {
            /* A garbage box is a garbage frame: the worker is killed. */
            int rc = braid_box_decode(m.payload, m.len, &box);
            if (rc == BRAID_EBOX) return BRAID_EPROTO_INPUT;
            if (rc < 0) box = NULL;   /* no memory: the call fails with BRAID_ENOMEM */
        }
        pool->depth++;
        on_reply(w, &m, box);
        if (depth_leave(pool) || !wp->w) return 1;   /* a callback freed the pool */
        break;
    }
    default:
        return BRAID_EPROTO_INPUT;
    }
    after_frame(w);
    return 0;
}

/* After a worker answered (or showed it dropped) a call: retire it if it
 * is due, and give out what waits. */
static void after_frame(worker *w) {
    braid_workers *pool = w->pool;
    if (pool->o.recycle_after && w->calls_done >= pool->o.recycle_after && !w->retiring) {
        w->retiring = true;
        pool->st.recycled++;
    }
    if (w->retiring && w->in_flight == 0 && !braid_timer_is_active(&w->stop_timer)) worker_stop(w);
    spawn_missing(pool);
    dispatch(pool);
    maybe_shutdown_done(pool);
}

/* A log event from the worker: to the parent's logger (its filters apply),
 * with the worker's index and pid, and the request id it carried. */
static int on_log(worker *w, const braid__rpc_msg *m) {
    braid_workers *pool = w->pool;
    braid_box *box;
    int rc = braid_box_decode(m->payload, m->len, &box);
    if (rc == BRAID_EBOX) return BRAID_EPROTO_INPUT;   /* a garbage box is a garbage frame */
    pool->st.log_events++;
    pool->st.log_dropped += m->dropped;
    if (rc < 0) {   /* no memory: this one is lost too */
        pool->st.log_dropped++;
        return 0;
    }
    braid_log_field f[BRAID_BOX_MAX_KEYS + 3];
    size_t n = braid__box_to_fields(box, f, BRAID_BOX_MAX_KEYS);
    f[n++] = BRAID_LOG_U64("worker", w->index);
    f[n++] = BRAID_LOG_I64("pid", (int64_t)braid_process_pid(w->proc));
    if (m->dropped) f[n++] = BRAID_LOG_U64("worker_dropped", m->dropped);
    char ns[256];
    snprintf(ns, sizeof ns, "%.*s", (int)m->ns_len, m->ns);
    braid_ctx_scope scope;
    bool scoped = (m->request_id || braid_ctx_get_u64(&braid_log_request_id_key, 0)) &&
                  braid_ctx_push_u64(&scope, &braid_log_request_id_key, m->request_id) == 0;
    /* Stamped with the worker's time: when it happened, not when it arrived. */
    braid_log_emit_at(braid_loop_logger(pool->loop), m->time_ns, (braid_log_level)m->level,
                      m->ns_len ? ns : NULL, f, n, "%.*s", (int)m->text_len, m->text);
    if (scoped) braid_ctx_pop(&scope);
    braid_box_free(box);
    return 0;
}

/* The connection's write-buffer cap must hold every call a worker may
 * have in flight at full size (the default 4 MiB would abort a 16 MiB call). */
size_t braid__rpc_buffer_cap(size_t max_frame, unsigned in_flight) {
    size_t per = max_frame + 4 + 64;
    size_t cap = per > SIZE_MAX / (in_flight + 1u) ? SIZE_MAX / 2 : per * (in_flight + 1u);
    return cap < (4u << 20) ? (4u << 20) : cap;
}

static void wp_made(braid_protocol *p) {
    wproto *wp = (wproto *)p;
    braid_workers *pool = wp->w->pool;
    braid_framer_init_u32(&wp->fp.framer, pool->o.max_frame, on_frame, wp);
    (void)braid_transport_set_limits(p->transport, 0, 0,
                                     braid__rpc_buffer_cap(pool->o.max_frame, pool->o.max_in_flight));
}

static void wp_lost(braid_protocol *p, const braid_failure *reason) {
    wproto *wp = (wproto *)p;
    worker *w = wp->w;
    if (!w) return;
    wp->w = NULL;
    w->proto = NULL;
    int code = reason ? reason->code : BRAID_ECONNECTION_DONE;
    if (w->retiring && w->head.next == &w->head) {
        /* Expected: it is going. Its process's end removes it. */
        if (braid_process_has_exited(w->proc, NULL)) {
            braid_workers *pool = w->pool;
            worker_remove(w);
            spawn_missing(pool);
            dispatch(pool);
            maybe_shutdown_done(pool);
        }
        return;
    }
    braid_process_status ps;
    if (code == BRAID_EMSGSIZE) {
        worker_lost(w, BRAID_EWORKER_FRAME, "sent a frame above the size limit", NULL);
    } else if (code == BRAID_EPROTO_INPUT) {
        worker_lost(w, BRAID_EWORKER_PROTOCOL, "sent a malformed frame", NULL);
    } else if (braid_process_has_exited(w->proc, &ps)) {
        char why[96], cause[48];
        exit_cause(&ps, cause, sizeof cause);
        snprintf(why, sizeof why, "ended: %s", cause);
        worker_lost(w, BRAID_EWORKER_LOST, why, NULL);
    } else {
        /* Its end (with the signal or exit status) comes next, as a rule
         * at once: proc_ended fails its calls then, saying how it ended. One
         * that closed its connection and lives on is killed after 1 s. */
        if (!braid_timer_is_active(&w->stop_timer)) braid_timer_start(&w->stop_timer, BRAID_SECONDS(1));
    }
}

static void wp_destroy(braid_protocol *p) {
    remnant *rem = ((wproto *)p)->rem;
    if (rem && --rem->n == 0) {
        braid_handle_close(rem->loop, &rem->h);
        braid_free(rem);
    }
    braid_framing_protocol_destroy(p);
    braid_free(p);
}

static const braid_protocol_ops wp_ops = {
    .connection_made = wp_made,
    .data_received = braid_framing_protocol_data_received,
    .connection_lost = wp_lost,
    .destroy = wp_destroy,
};

/* ---- spawning --------------------------------------------------------------------------------- */
static int worker_spawn(braid_workers *pool, braid_failure **failure) {
    worker *w = braid_calloc(1, sizeof *w);
    wproto *wp = braid_calloc(1, sizeof *wp);
    if (!w || !wp) {
        braid_free(w);
        braid_free(wp);
        return BRAID_ENOMEM;
    }
    w->pool = pool;
    w->down_reader = -1;
    w->head.next = w->head.prev = &w->head;
    for (bool taken = true; taken;) {   /* the lowest index no live worker has */
        taken = false;
        for (worker *o = pool->head.next; o != &pool->head; o = o->next)
            if (o->index == w->index && !o->retiring) taken = true;
        if (taken) w->index++;
    }
    braid_timer_init(pool->loop, &w->stop_timer, stop_timer_cb, w);
    braid_timer_init(pool->loop, &w->start_timer, start_timer_cb, w);
    wp->fp.base.ops = &wp_ops;
    wp->w = w;
    char maxenv[64], wenv[48], senv[48];
    snprintf(maxenv, sizeof maxenv, "BRAID_WORKER_MAX_FRAME=%zu", pool->o.max_frame);
    snprintf(wenv, sizeof wenv, "BRAID_WORKER=3,%d", pool->up_fd);
    snprintf(senv, sizeof senv, "BRAID_WORKER_SLOTS=%d", pool->slots_fd);
    /* The slot page: without one (no memory for it) the worker runs as one
     * that predates it, every call it is sent counting as started. */
    int page_fd = -1;
    if (braid__slots_new(pool->o.max_in_flight, &w->slots, &page_fd) < 0) page_fd = -1;
    const char *env[5];
    size_t ne = 0;
    env[ne++] = wenv;
    env[ne++] = maxenv;
    if (page_fd >= 0) env[ne++] = senv;
    if (pool->role_env[0]) env[ne++] = pool->role_env;
    env[ne] = NULL;
    /* The connection is a pair of pipes, not a socketpair: a round trip
     * over pipes costs about 1.7 µs less on Linux (docs/process.md,
     * "Measured"). down: parent -> worker, up: worker -> parent. */
    int down[2], up[2];
    if (pipe2(down, O_CLOEXEC) < 0) {
        int e = -errno;
        if (page_fd >= 0) close(page_fd);
        braid__slots_free(&w->slots);
        braid_free(w);
        braid_free(wp);
        return e;
    }
    if (pipe2(up, O_CLOEXEC) < 0) {
        int e = -errno;
        close(down[0]);
        close(down[1]);
        if (page_fd >= 0) close(page_fd);
        braid__slots_free(&w->slots);
        braid_free(w);
        braid_free(wp);
        return e;
    }
    int out = pool->o.devnull_output ? BRAID_PROCESS_FD_DEVNULL : BRAID_PROCESS_FD_INHERIT;
    braid_process_fd *fds = pool->fds;   /* 5 + the caller's extra ones */
    fds[0] = (braid_process_fd){ 0, BRAID_PROCESS_FD_DEVNULL, 0, NULL };
    fds[1] = (braid_process_fd){ 1, (braid_process_fd_kind)out, 1, NULL };
    fds[2] = (braid_process_fd){ 2, (braid_process_fd_kind)out, 2, NULL };
    fds[3] = (braid_process_fd){ 3, BRAID_PROCESS_FD_INHERIT, down[0], NULL };
    fds[4] = (braid_process_fd){ pool->up_fd, BRAID_PROCESS_FD_INHERIT, up[1], NULL };
    size_t nfds = pool->nfds;   /* the slot page's entry last: left out without one */
    if (page_fd >= 0) fds[nfds - 1] = (braid_process_fd){ pool->slots_fd, BRAID_PROCESS_FD_INHERIT, page_fd, NULL };
    else nfds--;
    /* A parent whose stdout/stderr is closed passes /dev/null instead. */
    if (out == BRAID_PROCESS_FD_INHERIT) {
        for (int i = 1; i <= 2; i++)
            if (fcntl(i, F_GETFD) < 0) fds[i].kind = BRAID_PROCESS_FD_DEVNULL;
    }
    braid_process_options po = { .file = pool->program, .argv = (const char *const *)pool->argv,
                                 .env_mode = BRAID_PROCESS_ENV_EXTEND, .env = env, .fds = fds,
                                 .nfds = nfds, .protocol = &worker_proc_proto, .user = w };
    /* In the list first: connection_made finds it complete. */
    w->next = &pool->head;
    w->prev = pool->head.prev;
    pool->head.prev->next = w;
    pool->head.prev = w;
    pool->alive++;
    w->proto = wp;
    int rc = braid_process_spawn(pool->loop, &po, &w->proc, failure);
    /* The parent keeps a reader on the pipe to the worker for as long as
     * the worker is in the pool: a write after the worker died then never
     * raises SIGPIPE (pipes have no MSG_NOSIGNAL); the worker's end is seen
     * by the EOF on the pipe from it and by its exit. */
    w->down_reader = down[0];
    close(up[1]);   /* the worker's end */
    if (page_fd >= 0) close(page_fd);   /* the mapping stays */
    if (rc == 0 && (rc = braid_transport_adopt_pipes(pool->loop, up[0], down[1], &wp->fp.base)) < 0) {
        braid_process_free(w->proc);   /* kills and reaps it */
        if (failure) *failure = braid_failure_new(rc, "worker: its connection: %s", braid_strerror(rc));
    }
    if (rc < 0) {   /* nothing adopted the parent's ends */
        close(down[0]);
        close(up[0]);
        close(down[1]);
        w->prev->next = w->next;
        w->next->prev = w->prev;
        pool->alive--;
        braid__slots_free(&w->slots);
        braid_free(wp);
        braid_free(w);
        return rc;
    }
    pool->st.spawned++;
    if (pool->o.start_timeout != BRAID_FOREVER) braid_timer_start(&w->start_timer, pool->o.start_timeout);
    return 0;
}

static void respawn_cb(braid_timer *t, void *arg) {
    braid_workers *pool = arg;
    (void)t;
    pool->respawn_armed = false;
    spawn_missing_after(pool, true);
    dispatch(pool);
}

/* Bring the pool back to count workers (retiring ones do not count):
 * at once, or after the back-off while workers die before their ready
 * frame or spawning fails. */
static void spawn_missing_after(braid_workers *pool, bool after_backoff) {
    if (pool->shutting || pool->freeing || pool->respawn_armed || pool->st.respawn_stopped) return;
    unsigned active = 0;
    for (worker *w = pool->head.next; w != &pool->head; w = w->next) active += !w->retiring;
    while (active < pool->o.count) {
        if (pool->start_failures > 0 && !after_backoff) {
            if (pool->backoff == 0) pool->backoff = BRAID_MSEC(10);
            pool->respawn_armed = true;
            braid_timer_start(&pool->respawn_timer, pool->backoff);
            pool->backoff = pool->backoff * 2 > BRAID_SECONDS(1) ? BRAID_SECONDS(1) : pool->backoff * 2;
            return;
        }
        after_backoff = false;
        braid_failure *f = NULL;
        int rc = worker_spawn(pool, &f);
        if (rc < 0) {
            braid__log(pool->loop, BRAID_LOG_WARN, "%s", f ? f->message : braid_strerror(rc));
            braid_failure_free(f);
            pool->start_failures++;
            continue;   /* arms the back-off above */
        }
        active++;
    }
}
static void spawn_missing(braid_workers *pool) { spawn_missing_after(pool, false); }

/* ---- dispatch ------------------------------------------------------------------------------- */
static void send_call(worker *w, wcall *c) {
    braid_workers *pool = w->pool;
    c->w = w;
    call_push(&w->head, c, false);
    w->in_flight++;
    braid__rpc_msg m = { .type = BRAID__RPC_CALL, .id = c->id, .command = c->command,
                         .command_len = c->command_len, .payload = c->payload, .len = c->len };
    if (c->box || c->request_id) {
        m.type = BRAID__RPC_CALL_EX;
        m.flags = (c->box ? BRAID__RPC_F_BOX : 0) | (c->request_id ? BRAID__RPC_F_RID : 0);
        m.request_id = c->request_id;
    }
    int rc = braid__rpc_write(w->proto->fp.base.transport, &m, pool->o.max_frame);
    if (rc == 0) c->seq = w->sent_seq++;   /* the worker numbers what it receives the same way */
    if (rc < 0) {
        /* The connection is going (its connection_lost handles the worker):
         * the call waits for another one. */
        call_unlink(c);
        c->w = NULL;
        w->in_flight--;
        w->broken = true;
        if (rc == BRAID_EBUFFER_LIMIT || rc == BRAID_EMSGSIZE) {
            call_fail(c, BRAID_EMSGSIZE, "call '%s' does not fit the connection's buffer%s", NULL);
        } else {
            call_push(&pool->queue, c, true);
            pool->queued++;
        }
    }
}

static void dispatch(braid_workers *pool) {
    if (pool->depth || pool->freeing) return;
    while (pool->queue.next != &pool->queue) {
        worker *best = NULL;
        for (worker *w = pool->head.next; w != &pool->head; w = w->next) {
            if (!w->ready || w->retiring || w->broken || !w->proto || !w->proto->fp.base.transport ||
                w->in_flight >= pool->o.max_in_flight ||
                (w->head.next != &w->head && w->head.next->cancelled) ||   /* in DROP_GRACE */
                (pool->o.recycle_after && w->calls_assigned >= pool->o.recycle_after))
                continue;
            if (!best || w->in_flight < best->in_flight) best = w;
        }
        if (!best) return;
        wcall *c = pool->queue.next;
        call_unlink(c);
        pool->queued--;
        best->calls_assigned++;
        send_call(best, c);
    }
}

static void call_timeout_cb(braid_timer *t, void *arg) {
    wcall *c = arg;
    (void)t;
    c->timer_armed = false;
    braid_workers *pool = c->pool;
    if (!c->w) {   /* still queued */
        call_unlink(c);
        pool->queued--;
        pool->st.timeouts++;
        call_fail(c, BRAID_ETIMEDOUT, "call '%s' timed out waiting for a worker%s", NULL);
        return;
    }
    if (c->cancelled) {
        /* DROP_GRACE is over (front_check): a worker that went past the
         * call (its FAIL waits behind a call it runs now) keeps its place;
         * one that did not is stuck outside any call. */
        worker *w = c->w;
        if (braid__slots_dropped(&w->slots, c->seq)) {
            call_unlink(c);
            c->w = NULL;
            w->in_flight--;
            w->calls_done++;
            w->calls_dropped++;
            call_free(c);
            front_check(w);
            after_frame(w);
            return;
        }
        worker_lost(w, BRAID_EWORKER_LOST, "took no call for 1 s with nothing to run before it", NULL);
        return;
    }
    if (c->d && cancel_unstarted(c)) {
        /* Waiting inside its worker behind calls it is running: only this
         * call fails; the worker keeps them (and drops this one). The call
         * stays in its list, holding its in-flight place, until it does. */
        c->cancelled = true;
        pool->st.timeouts++;
        pool->st.cancelled_queued++;
        front_check(c->w);
        braid_deferred *d = c->d;
        c->d = NULL;
        char cmd[256];
        snprintf(cmd, sizeof cmd, "%.*s", (int)c->command_len, c->command);
        pool->depth++;   /* the errback may free the pool (and c with it) */
        braid_deferred_errback(d, braid_failure_new(BRAID_ETIMEDOUT,
                                                    "call '%s' timed out before its worker started it "
                                                    "(worker pid %d, busy with earlier calls, kept)",
                                                    cmd, (int)braid_process_pid(c->w->proc)));
        if (depth_leave(pool)) return;
        dispatch(pool);   /* what its callbacks called meanwhile */
        maybe_shutdown_done(pool);
        return;
    }
    worker_lost(c->w, BRAID_ETIMEDOUT, "a call timed out", c);
}

/* ---- introspection: the loop's "workers" section ---------------------------------------------- */
static const char *worker_state(const worker *w) {
    if (w->retiring) return "retiring";
    if (w->broken || !w->proto) return "closing";
    return w->ready ? "ready" : "starting";
}

static void describe(braid_json *j, void *arg) {
    braid_workers *pool = arg;
    struct braid_workers_stats s;
    braid_workers_stats(pool, &s);
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", pool->role ? pool->role : pool->program);
    braid_json_kv_str(j, "program", pool->program);
    braid_json_kv_str(j, "role", pool->role);
    braid_json_kv_u64(j, "count", pool->o.count);
    braid_json_kv_u64(j, "alive", s.workers);
    braid_json_kv_u64(j, "ready", s.ready);
    braid_json_kv_u64(j, "queued", s.queued);
    braid_json_kv_u64(j, "queue_limit", pool->o.queue_limit);
    braid_json_kv_u64(j, "in_flight", s.in_flight);
    braid_json_kv_u64(j, "max_in_flight", pool->o.max_in_flight);
    braid_json_kv_u64(j, "calls", s.calls);
    braid_json_kv_u64(j, "spawned", s.spawned);
    braid_json_kv_u64(j, "restarts", s.spawned > pool->o.count ? s.spawned - pool->o.count : 0);
    braid_json_kv_u64(j, "lost", s.lost);
    braid_json_kv_u64(j, "timeouts", s.timeouts);
    braid_json_kv_u64(j, "cancelled_queued", s.cancelled_queued);
    braid_json_kv_u64(j, "recycled", s.recycled);
    braid_json_kv_u64(j, "resent", s.resent);
    braid_json_kv_u64(j, "log_events", s.log_events);
    braid_json_kv_u64(j, "log_dropped", s.log_dropped);
    braid_json_kv_bool(j, "respawn_stopped", s.respawn_stopped);
    braid_json_kv_str(j, "last_exit", s.last_exit[0] ? s.last_exit : NULL);
    braid_json_kv_str(j, "state", pool->shutting ? (pool->draining ? "draining" : "stopping") : "running");
    braid_json_key(j, "workers");
    braid_json_array_begin(j);
    for (const worker *w = pool->head.next; w != &pool->head; w = w->next) {
        braid_json_object_begin(j);
        braid_json_kv_u64(j, "index", w->index);
        braid_json_kv_i64(j, "pid", (int64_t)braid_process_pid(w->proc));
        braid_json_kv_str(j, "state", worker_state(w));
        braid_json_kv_u64(j, "in_flight", w->in_flight);
        braid_json_kv_u64(j, "calls", w->calls_done - w->calls_dropped);
        braid_json_kv_u64(j, "failed", w->calls_failed);
        braid_json_kv_u64(j, "dropped", w->calls_dropped);
        braid_json_object_end(j);
    }
    braid_json_array_end(j);
    braid_json_object_end(j);
}

/* ---- the public API ----------------------------------------------------------------------------- */
int braid_workers_new(braid_loop *loop, const braid_workers_options *opts, braid_workers **out) {
    BRAID__LOOP_AFFINE(loop);
    braid_workers_options o = opts ? *opts : (braid_workers_options){ 0 };
    if (!o.count) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        o.count = n > 0 ? (unsigned)n : 1;
    }
    if (!o.max_in_flight) o.max_in_flight = 8;
    if (!o.queue_limit) o.queue_limit = 1024;
    if (!o.max_frame) o.max_frame = 16u << 20;
    if (o.max_frame < 512) o.max_frame = 512;
    if (!o.call_timeout) o.call_timeout = BRAID_SECONDS(60);
    if (!o.start_timeout) o.start_timeout = BRAID_SECONDS(10);
    if (o.role && strlen(o.role) > 250) return BRAID_EINVAL;
    if (o.nfds && !o.fds) return BRAID_EINVAL;
    for (size_t i = 0; i < o.nfds; i++) {
        const braid_process_fd *f = &o.fds[i];
        if (f->child_fd < 4 || f->child_fd > 1023 || f->protocol ||
            (f->kind != BRAID_PROCESS_FD_INHERIT && f->kind != BRAID_PROCESS_FD_DEVNULL) ||
            (f->kind == BRAID_PROCESS_FD_INHERIT && f->parent_fd < 0))
            return BRAID_EINVAL;
        for (size_t k = 0; k < i; k++)
            if (o.fds[k].child_fd == f->child_fd) return BRAID_EINVAL;
    }
    braid_workers *pool = braid_calloc(1, sizeof *pool);
    if (!pool) return BRAID_ENOMEM;
    pool->loop = loop;
    pool->o = o;
    pool->head.next = pool->head.prev = &pool->head;
    pool->queue.next = pool->queue.prev = &pool->queue;
    pool->next_id = 1;
    if (o.role) snprintf(pool->role_env, sizeof pool->role_env, "BRAID_WORKER_ROLE=%s", o.role);
    pool->program = braid_strdup(o.program ? o.program : "/proc/self/exe");
    /* The worker reads its calls at fd 3 and writes its frames at the
     * lowest fd from 4 that the caller's map leaves free. */
    pool->up_fd = 4;
    for (bool taken = true; taken;) {
        taken = false;
        for (size_t i = 0; i < o.nfds; i++)
            if (o.fds[i].child_fd == pool->up_fd) taken = true;
        if (taken) pool->up_fd++;
    }
    /* The slot page at the lowest fd from 4 left free by both. */
    pool->slots_fd = 4;
    for (bool taken = true; taken;) {
        taken = pool->slots_fd == pool->up_fd;
        for (size_t i = 0; i < o.nfds; i++)
            if (o.fds[i].child_fd == pool->slots_fd) taken = true;
        if (taken) pool->slots_fd++;
    }
    pool->nfds = 5 + o.nfds + 1;
    pool->fds = braid_calloc(pool->nfds, sizeof *pool->fds);
    if (pool->fds && o.nfds) memcpy(pool->fds + 5, o.fds, o.nfds * sizeof *o.fds);
    size_t na = 0;
    if (o.argv) while (o.argv[na]) na++;
    pool->argv = braid_calloc(na ? na + 1 : 2, sizeof(char *));
    int rc = BRAID_ENOMEM;
    if (!pool->program || !pool->argv || !pool->fds) goto fail;
    if (na) {
        for (size_t i = 0; i < na; i++)
            if (!(pool->argv[i] = braid_strdup(o.argv[i]))) goto fail;
    } else if (!(pool->argv[0] = braid_strdup(pool->program))) {
        goto fail;
    }
    pool->o.program = NULL;
    pool->o.argv = NULL;
    pool->o.role = NULL;
    pool->o.fds = NULL;
    if (o.role && !(pool->role = braid_strdup(o.role))) goto fail;
    braid_timer_init(loop, &pool->respawn_timer, respawn_cb, pool);
    braid_handle_open(loop, &pool->handle, "workers");
    for (unsigned i = 0; i < o.count; i++) {
        braid_failure *f = NULL;
        rc = worker_spawn(pool, i == 0 ? &f : NULL);
        if (rc < 0 && i == 0) {
            braid__log(loop, BRAID_LOG_ERROR, "%s", f ? f->message : braid_strerror(rc));
            braid_failure_free(f);
            braid_handle_close(loop, &pool->handle);
            goto fail;
        }
        if (rc < 0) {
            pool->start_failures++;
            spawn_missing(pool);
            break;
        }
    }
    braid_introspect_add(loop, &pool->inode, "workers", describe, pool);
    *out = pool;
    return 0;
fail:
    if (pool->argv)
        for (size_t i = 0; pool->argv[i]; i++) braid_free(pool->argv[i]);
    braid_free(pool->argv);
    braid_free(pool->fds);
    braid_free(pool->role);
    braid_free(pool->program);
    braid_free(pool);
    return rc;
}

/* A call of bytes (payload, len), or of box's encoding (len its size). */
static braid_deferred *call_submit(braid_workers *pool, const char *command, const void *payload,
                                   size_t len, const braid_box *box,
                                   const braid_workers_call_options *opts) {
    BRAID__LOOP_AFFINE(pool->loop);
    braid_loop *loop = pool->loop;
    size_t cl = command ? strlen(command) : 0;
    if (cl == 0 || cl > 255 || (len && !payload && !box))
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "worker call: bad command or payload"));
    if (pool->shutting)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ESHUTDOWN, "call '%s': the pool is shutting down",
                                                  command));
    uint64_t rid = braid_ctx_get_u64(&braid_log_request_id_key, 0);
    size_t ex = box || rid ? 1 + (rid ? 8 : 0) : 0;   /* CALL_EX's flags and request id */
    if (4 + BRAID__RPC_HEADER + ex + 1 + cl + len > pool->o.max_frame + 4)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EMSGSIZE, "call '%s': %zu bytes pass the frame limit",
                                                  command, len));
    if (pool->queued >= pool->o.queue_limit)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EQUEUE_FULL, "call '%s': %zu calls already queued",
                                                  command, pool->queued));
    wcall *c = braid_malloc(sizeof *c + cl + len);
    if (!c) return NULL;
    braid_deferred *d = braid_deferred_new_cancellable(loop, call_cancel, c);
    if (!d) {
        braid_free(c);
        return NULL;
    }
    memset(c, 0, sizeof *c);
    c->next = c->prev = c;
    c->pool = pool;
    c->d = d;
    c->id = pool->next_id++;
    if (pool->next_id == 0) pool->next_id = 1;
    c->command = (char *)(c + 1);
    c->command_len = cl;
    memcpy(c->command, command, cl);
    c->payload = (unsigned char *)c->command + cl;
    c->len = len;
    if (box) (void)braid_box_encode(box, c->payload, len, NULL);
    else if (len) memcpy(c->payload, payload, len);
    c->box = box != NULL;
    c->request_id = rid;
    c->idempotent = opts && opts->idempotent;
    uint64_t timeout = opts && opts->timeout ? opts->timeout : pool->o.call_timeout;
    braid_timer_init(loop, &c->timer, call_timeout_cb, c);
    if (timeout != BRAID_FOREVER) {
        c->timer_armed = true;
        braid_timer_start(&c->timer, timeout);
    }
    call_push(&pool->queue, c, false);
    pool->queued++;
    if (pool->start_failures >= 3 && pool->alive == 0) {
        /* Nothing can run it now: fail at once rather than wait. */
        call_unlink(c);
        pool->queued--;
        call_fail(c, BRAID_EWORKER_LOST, "call '%s': workers keep dying at start-up%s", NULL);
        return d;
    }
    dispatch(pool);
    return d;
}

braid_deferred *braid_workers_call(braid_workers *pool, const char *command, const void *payload,
                                   size_t len, const braid_workers_call_options *opts) {
    return call_submit(pool, command, payload, len, NULL, opts);
}

braid_deferred *braid_workers_call_box(braid_workers *pool, const char *command, const braid_box *b,
                                       const braid_workers_call_options *opts) {
    if (!b) return call_submit(pool, command, NULL, 1, NULL, opts);   /* BRAID_EINVAL */
    return call_submit(pool, command, NULL, braid_box_encoded_size(b), b, opts);
}

/* Fail every queued call, and (when sent too) every sent one, with code.
 * True if a callback freed the pool. */
static bool fail_all(braid_workers *pool, int code, bool sent) {
    pool->depth++;
    while (pool->queue.next != &pool->queue) {
        wcall *c = pool->queue.next;
        call_unlink(c);
        pool->queued--;
        call_fail(c, code, "call '%s': the pool is shutting down%s", NULL);
    }
    if (sent) {
        for (worker *w = pool->head.next; w != &pool->head; w = w->next) {
            while (w->head.next != &w->head) {
                wcall *c = w->head.next;
                call_unlink(c);
                c->w = NULL;
                w->in_flight--;
                call_fail(c, code, "call '%s': the pool is shutting down%s", NULL);
            }
        }
    }
    return depth_leave(pool);
}

static void stop_idle_workers(braid_workers *pool) {
    for (worker *w = pool->head.next, *n; w != &pool->head; w = n) {
        n = w->next;
        if (w->in_flight == 0 && !braid_timer_is_active(&w->stop_timer)) {
            if (!w->proto) worker_remove(w);   /* its connection is gone already */
            else worker_stop(w);
        }
    }
}

static void maybe_shutdown_done(braid_workers *pool) {
    if (!pool->shutting || pool->freeing) return;
    if (pool->draining) {
        if (pool->queued) return;
        stop_idle_workers(pool);
    }
    if (pool->alive == 0 && pool->shutdown_d) {
        if (pool->drain_armed) {
            braid_timer_stop(&pool->drain_timer);
            pool->drain_armed = false;
        }
        braid_deferred *d = pool->shutdown_d;
        pool->shutdown_d = NULL;
        braid_deferred_callback(d, NULL, NULL);
    }
}

static void drain_timer_cb(braid_timer *t, void *arg) {
    braid_workers *pool = arg;
    (void)t;
    pool->drain_armed = false;
    pool->draining = false;
    if (fail_all(pool, BRAID_ESHUTDOWN, true)) return;
    stop_idle_workers(pool);
    maybe_shutdown_done(pool);
}

braid_deferred *braid_workers_shutdown(braid_workers *pool, bool drain, uint64_t timeout) {
    BRAID__LOOP_AFFINE(pool->loop);
    if (pool->shutdown_d || pool->shutting)
        return braid_deferred_fail(pool->loop, braid_failure_new(BRAID_EALREADY_CALLED, "workers: shutdown twice"));
    braid_deferred *d = braid_deferred_new(pool->loop);
    if (!d) return NULL;
    pool->shutting = true;
    pool->shutdown_d = d;   /* the producer's reference; the caller has the other */
    if (pool->respawn_armed) {
        braid_timer_stop(&pool->respawn_timer);
        pool->respawn_armed = false;
    }
    if (drain && timeout) {
        pool->draining = true;
        if (timeout != BRAID_FOREVER) {
            braid_timer_init(pool->loop, &pool->drain_timer, drain_timer_cb, pool);
            pool->drain_armed = true;
            braid_timer_start(&pool->drain_timer, timeout);
        }
    } else {
        if (fail_all(pool, BRAID_ESHUTDOWN, true)) return d;   /* a callback freed the pool (d fired) */
        stop_idle_workers(pool);
    }
    maybe_shutdown_done(pool);
    return d;
}

void braid_workers_free(braid_workers *pool) {
    if (!pool) return;
    BRAID__LOOP_AFFINE(pool->loop);
    if (pool->freeing) return;
    pool->shutting = true;
    pool->depth++;
    pool->freeing = true;
    pool->depth++;
    (void)fail_all(pool, BRAID_ESHUTDOWN, true);   /* cannot free: depth held */
    pool->depth--;
    if (--pool->depth > 0) {   /* from inside one of its calls' callbacks */
        pool->free_pending = true;
        return;
    }
    pool_final_free(pool);
}

static void pool_final_free(braid_workers *pool) {
    pool->freeing = true;
    pool->free_pending = false;
    pool->depth = 1;
    (void)fail_all(pool, BRAID_ESHUTDOWN, true);   /* depth held: never frees here */
    remnant *rem = braid_calloc(1, sizeof *rem);
    if (rem) {
        rem->loop = pool->loop;
        snprintf(rem->name, sizeof rem->name,
                 "worker pool '%s' freed, its connections close in the loop's next iteration",
                 pool->role ? pool->role : pool->program);
        for (worker *w = pool->head.next; w != &pool->head; w = w->next) {
            if (w->proto && w->proto->fp.base.transport) {
                w->proto->rem = rem;
                rem->n++;
            }
        }
        if (rem->n) {
            braid_handle_open(pool->loop, &rem->h, "workers");
            rem->h.name = rem->name;
        } else {
            braid_free(rem);
        }
    }
    while (pool->head.next != &pool->head) worker_remove(pool->head.next);
    if (pool->respawn_armed) braid_timer_stop(&pool->respawn_timer);
    if (pool->drain_armed) braid_timer_stop(&pool->drain_timer);
    if (pool->shutdown_d) {
        braid_deferred *d = pool->shutdown_d;
        pool->shutdown_d = NULL;
        braid_deferred_callback(d, NULL, NULL);
    }
    for (size_t i = 0; pool->argv[i]; i++) braid_free(pool->argv[i]);
    braid_free(pool->argv);
    braid_free(pool->fds);
    braid_free(pool->role);
    braid_free(pool->program);
    braid_introspect_remove(pool->loop, &pool->inode);
    braid_handle_close(pool->loop, &pool->handle);
    braid_free(pool);
}

void braid_workers_stats(const braid_workers *pool, struct braid_workers_stats *out) {
    *out = pool->st;
    out->workers = pool->alive;
    out->ready = 0;
    out->in_flight = 0;
    for (const worker *w = pool->head.next; w != &pool->head; w = w->next) {
        out->ready += w->ready;
        out->in_flight += w->in_flight;
    }
    out->queued = pool->queued;
}

size_t braid_workers_pids(const braid_workers *pool, pid_t *out, size_t cap) {
    size_t n = 0;
    for (const worker *w = pool->head.next; w != &pool->head; w = w->next) {
        if (n < cap) out[n] = braid_process_pid(w->proc);
        n++;
    }
    return n;
}
