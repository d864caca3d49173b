/* Thread pools (see <braid/pool.h>).
 *
 * Shape. One mutex per pool guards the class queues, the idle-worker stack
 * and the counters; it is held for a few dozen instructions at a time
 * (enqueue, dequeue, finish), never while work runs or a thread sleeps.
 * Workers sleep on a futex word of their own, so a submission wakes exactly
 * the worker it chose, outside the lock, and only when the queued work is
 * not already claimed by a spinning, waking or starting worker (or, for
 * short jobs, a running one, while a sentinel keeps watch: see find_taker
 * and the comment above it). Results go back with
 * braid_loop_post_node on a node embedded in the job, so completions
 * allocate nothing and a batch of them costs the loop one wake-up (or none,
 * while the loop busy-polls, see spin_for_posted in loop.c).
 *
 * Job memory. A braid_pool_defer job is taken from a per-loop cache
 * (under the pool's loop key) and given back there by the completion,
 * both on the loop thread, so the steady state allocates nothing but the
 * Deferred (itself from a per-loop free list). braid_pool_call jobs come
 * from any thread and are plain allocations freed by the worker.
 *
 * Lifetimes. A completion touches only its job and its loop, never the
 * pool, so a pool may be destroyed while completions are still queued on
 * their loops; the loop hold taken per job keeps the leak gate honest. */
#include "loop/loop_module.h"
#include <braid/pool.h>
#include <braid/introspect.h>
#include <linux/futex.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MAX_THREADS 4
#define DEFAULT_QUEUE_LIMIT 4096
#define DEFAULT_IDLE_TIMEOUT BRAID_SECONDS(10)
#define DEFAULT_SPIN BRAID_USEC(50)
#define JOB_CACHE_MAX 1024

enum { JOB_QUEUED = 1, JOB_RUNNING, JOB_CANCELLED };

typedef struct pool_job pool_job;
struct pool_job {
    braid_post post;             /* completion node, posted to job->loop */
    pool_job *next, *prev;       /* class queue (pool lock), or the loop's job cache */
    braid_pool *pool;
    braid_loop *loop;            /* NULL: a call_in_pool job (no completion) */
    braid_deferred *d;           /* producer reference until fired */
    braid_result_fn fn;
    braid_loop_call_cb call;
    void *arg;
    void (*arg_free)(void *);    /* loop thread, once fn is done with arg (or never ran) */
    braid_ctx *ctx;              /* the submitter's context, current while fn runs */
    braid_result result;
    uint64_t t_queued;
    _Atomic int state;           /* written under the pool lock */
    uint8_t cls;
    bool dropped;                /* loop thread: Deferred cancelled while running */
    bool spins;                  /* holds the loop's busy-poll (braid__loop_spin_hold) */
};

typedef struct pool_class {
    char name[32];
    pool_job *head, *tail;
    size_t queued, limit;
    unsigned running, max_running;
} pool_class;

typedef struct worker worker;
struct worker {
    pthread_t tid;
    braid_pool *pool;
    _Atomic uint32_t wake;       /* futex word: 1 once a submitter chose this worker */
    worker *next_idle;           /* idle stack (pool lock) */
    worker *next_all;            /* every thread started, for joining */
    uint64_t spin_cur;           /* this worker's adaptive spin budget */
    uint64_t chosen_at;          /* when a submitter chose it (pool lock) */
    uint64_t run_start;          /* when its current job started, 0 if none (pool lock) */
    uint64_t watch_ns;           /* its next watch as the sentinel (0: WATCH_NS) */
    uint64_t watch_seen;         /* pool->completed when its watch began */
    unsigned id;
    bool sleeping;               /* on the idle stack (pool lock) */
    bool exited;                 /* left worker_main; join and free it */
};

struct braid_pool {
    pthread_mutex_t mu;
    pool_class classes[BRAID_POOL_MAX_CLASSES];
    unsigned nclasses, rr;
    _Atomic size_t nqueued;      /* written under the lock, read by spinners without it */
    atomic_bool stopping;        /* shutdown began: spinners stop spinning */
    bool shutdown;
    unsigned min_threads, max_threads;
    unsigned nthreads;           /* started and not exited (including ones starting) */
    unsigned nstarting;          /* created, not yet under the lock in worker_main */
    unsigned nspinning;          /* idle workers spinning right now */
    unsigned npending;           /* workers woken but not yet back under the lock */
    unsigned nsleeping;          /* on the idle stack */
    unsigned nrunning;
    unsigned spin_cores;         /* spin only while fewer workers than this run (cores - 1) */
    unsigned next_id;
    worker *idle;
    worker *all;
    worker *sentinel;            /* the sleeper keeping watch over running jobs, or NULL */
    uint64_t sentinel_due;       /* when it wakes to look (mono_ns) */
    size_t stack_size;
    char name[16];
    uint64_t idle_timeout, spin_max, loop_spin;
    braid_clock *clock;
    unsigned flags;
    braid_loop *loop;
    braid_handle handle;
    braid_introspect_node inode;     /* in its loop's "pools" (<braid/introspect.h>) */
    double avg_run_ns;           /* running averages (pool lock), for find_taker */
    double avg_wake_ns;
    uint64_t completed, rejected, cancelled;
    uint64_t wait_hist[BRAID_POOL_HIST];
    uint64_t run_hist[BRAID_POOL_HIST];
};

/* ---- small helpers ------------------------------------------------------------------- */
static uint64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *addr, uint32_t val, uint64_t timeout_ns) {
    struct timespec ts, *tp = NULL;
    if (timeout_ns != BRAID_FOREVER) {
        ts.tv_sec = (time_t)(timeout_ns / 1000000000ull);
        ts.tv_nsec = (long)(timeout_ns % 1000000000ull);
        tp = &ts;
    }
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT_PRIVATE, val, tp, NULL, 0);
}

static void futex_wake(_Atomic uint32_t *addr) {
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
}

static uint64_t pool_now(braid_pool *pool) { return pool->clock->now(pool->clock); }

unsigned braid_pool_hist_bucket(uint64_t ns) {
    unsigned b = ns ? 63u - (unsigned)__builtin_clzll(ns) : 0;
    return b < BRAID_POOL_HIST ? b : BRAID_POOL_HIST - 1;
}

uint64_t braid_pool_hist_quantile(const uint64_t hist[BRAID_POOL_HIST], double q) {
    uint64_t total = 0;
    for (unsigned i = 0; i < BRAID_POOL_HIST; i++) total += hist[i];
    if (!total) return 0;
    if (q < 0) q = 0;
    if (q > 1) q = 1;
    uint64_t want = (uint64_t)(q * (double)total + 0.999999);
    if (want == 0) want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < BRAID_POOL_HIST; i++) {
        seen += hist[i];
        if (seen >= want) return i == BRAID_POOL_HIST - 1 ? UINT64_MAX : (2ull << i);
    }
    return UINT64_MAX;
}

/* ---- the per-loop job cache ---------------------------------------------------------- */
typedef struct loop_state {
    pool_job *free;
    size_t nfree;
} loop_state;

static void loop_state_destroy(braid_loop *loop, void *p) {
    (void)loop;
    loop_state *st = p;
    while (st->free) {
        pool_job *j = st->free;
        st->free = j->next;
        braid_free(j);
    }
    braid_free(st);
}

static braid_loop_key loop_state_key = BRAID_LOOP_KEY_INIT("pool", loop_state_destroy, NULL);

static loop_state *loop_state_get(braid_loop *loop) {
    loop_state *st = braid__loop_data(loop, &loop_state_key);
    if (!st) {
        st = braid_calloc(1, sizeof *st);
        if (!st) return NULL;
        if (braid_loop_set_data(loop, &loop_state_key, st) < 0) {
            braid_free(st);
            return NULL;
        }
    }
    return st;
}

static pool_job *job_get(braid_loop *loop) {
    loop_state *st = loop_state_get(loop);
    if (!st) return NULL;
    pool_job *j = st->free;
    if (j) {
        st->free = j->next;
        st->nfree--;
        return j;
    }
    return braid_malloc(sizeof *j);
}

static void job_put(braid_loop *loop, pool_job *j) {
    braid__ctx_release(j->ctx);
    j->ctx = NULL;
    loop_state *st = braid__loop_data(loop, &loop_state_key);
    if (st->nfree >= JOB_CACHE_MAX) { braid_free(j); return; }
    j->next = st->free;
    st->free = j;
    st->nfree++;
}

/* ---- queues (pool lock held) -------------------------------------------------------- */
static void queue_append(braid_pool *pool, pool_class *pc, pool_job *j) {
    j->next = NULL;
    j->prev = pc->tail;
    if (pc->tail) pc->tail->next = j;
    else pc->head = j;
    pc->tail = j;
    pc->queued++;
    atomic_store_explicit(&pool->nqueued, atomic_load_explicit(&pool->nqueued, memory_order_relaxed) + 1,
                          memory_order_release);
}

static void queue_unlink(braid_pool *pool, pool_job *j) {
    pool_class *pc = &pool->classes[j->cls];
    if (j->prev) j->prev->next = j->next;
    else pc->head = j->next;
    if (j->next) j->next->prev = j->prev;
    else pc->tail = j->prev;
    j->next = j->prev = NULL;
    pc->queued--;
    atomic_store_explicit(&pool->nqueued, atomic_load_explicit(&pool->nqueued, memory_order_relaxed) - 1,
                          memory_order_relaxed);
}

/* The next job to run: classes in turn (round robin from the one after the
 * class served last), skipping a class at its max_running. */
static pool_job *pick(braid_pool *pool) {
    if (!atomic_load_explicit(&pool->nqueued, memory_order_relaxed)) return NULL;
    for (unsigned k = 0; k < pool->nclasses; k++) {
        unsigned c = (pool->rr + k) % pool->nclasses;
        pool_class *pc = &pool->classes[c];
        if (!pc->head || pc->running >= pc->max_running) continue;
        pool_job *j = pc->head;
        queue_unlink(pool, j);
        pc->running++;
        pool->nrunning++;
        atomic_store_explicit(&j->state, JOB_RUNNING, memory_order_relaxed);
        pool->rr = c + 1;
        return j;
    }
    return NULL;
}

/* Run a picked job without the lock; then, under the lock, record it. The
 * job is gone (posted to its loop or freed) when this returns. */
static void run_job(braid_pool *pool, pool_job *j) {
    uint64_t t0 = pool_now(pool);
    uint64_t wait = t0 > j->t_queued ? t0 - j->t_queued : 0;
    unsigned cls = j->cls;
    if (j->loop) {
        braid_ctx *prev = braid__ctx_swap(j->ctx);   /* the job's reference: released by job_put */
        j->result = j->fn(j->arg);
        braid__ctx_swap(prev);
        uint64_t t1 = pool_now(pool);
        braid_loop_post_node(j->loop, &j->post);   /* j belongs to the loop now */
        t0 = t1 - t0;
    } else {
        braid_loop_call_cb call = j->call;
        void *arg = j->arg;
        braid_ctx *cx = j->ctx;
        braid_free(j);
        braid_ctx *prev = braid__ctx_swap(cx);
        call(arg);
        braid__ctx_swap(prev);
        braid__ctx_release(cx);
        t0 = pool_now(pool) - t0;
    }
    pthread_mutex_lock(&pool->mu);
    pool->classes[cls].running--;
    pool->nrunning--;
    pool->completed++;
    pool->avg_run_ns += ((double)t0 - pool->avg_run_ns) / 8;
    pool->wait_hist[braid_pool_hist_bucket(wait)]++;
    pool->run_hist[braid_pool_hist_bucket(t0)]++;
}

/* ---- workers -------------------------------------------------------------------------- */
/* How a queued job finds a thread. Each runnable queued job must have a
 * taker: a worker that will look at the queue before it sleeps — one
 * spinning, one woken and on its way (pending), or one starting. find_taker
 * keeps that true at every submission and every pick, waking a sleeper or
 * starting threads when there is more work than takers.
 *
 * A running worker also takes the next job when its own is done, and for
 * the tiny jobs that dominate round trips that happens long before a
 * sleeper could wake (~30 µs on an idle core): waking one then costs a core
 * a context switch for nothing, and on 2 cores slows everything. But a
 * runner is a taker only if its job turns out short, and blocking work,
 * which may run for seconds, is what a pool is for: a burst trusted to a
 * runner that then blocks waits behind it, with threads asleep or never
 * started. So runners are trusted only while a sentinel keeps watch: a
 * sleeping worker whose sleep has a deadline (the first to sleep while jobs
 * run becomes it, and stays it while jobs keep finishing). When its watch
 * ends with a job queued for STUCK_NS, or with any job queued and none
 * finished during the watch, it takes the work itself and passes the baton;
 * otherwise the runners are getting through the queue (one may just have
 * lost its core for a while) and it watches again. Runners are trusted only
 * if their jobs are fresh (younger than twice the average job and than a
 * wake-up), only where they would clear the queue before a sleeper could
 * wake, and only while the sentinel's deadline is at most WATCH_NS away: a
 * burst of long jobs misjudged as short starts late by about that much at
 * most (measured: 0.5-4 ms on a loaded 2-core machine), and once its first
 * job finishes the average says "long" and nobody is trusted. A watch in
 * which nothing finished doubles the next one (long jobs running for
 * minutes cost a wake-up a second, not hundreds), and once the deadline is
 * further than WATCH_NS nobody is trusted either. The watch's length trades
 * that bound against the sentinel's wake-ups while short jobs stream (500 a
 * second): at 0.5 ms they cost the 4-thread round trip of braid-bench pool
 * ~6 % of its calls/s, at 2 ms nothing measurable. */
#define WATCH_NS BRAID_MSEC(2)         /* the sentinel's watch; runners trusted within it */
#define WATCH_MAX_NS BRAID_SECONDS(1)  /* the longest watch, after doubling */
#define STUCK_NS (WATCH_NS / 4)        /* a queued job this old was left behind */

/* Pool lock held. Queued jobs a worker could start now: those of classes
 * below their max_running. */
static size_t runnable(const braid_pool *pool) {
    size_t n = 0;
    for (unsigned c = 0; c < pool->nclasses; c++) {
        const pool_class *pc = &pool->classes[c];
        if (pc->queued && pc->running < pc->max_running) {
            size_t room = pc->max_running - pc->running;
            n += pc->queued < room ? pc->queued : room;
        }
    }
    return n;
}

/* Pool lock held. How long the oldest queued job a worker could start now
 * has waited (pool clock: 0 if there is none, or if a test's fake clock
 * stands still — the sentinel then goes by finished jobs alone). */
static uint64_t oldest_wait(braid_pool *pool) {
    uint64_t now = pool_now(pool), most = 0;
    for (unsigned c = 0; c < pool->nclasses; c++) {
        const pool_class *pc = &pool->classes[c];
        if (pc->head && pc->running < pc->max_running && now > pc->head->t_queued &&
            now - pc->head->t_queued > most)
            most = now - pc->head->t_queued;
    }
    return most;
}

/* Pool lock held. Take sleeper w off the idle stack as chosen: its flag is
 * set here, under the lock, so it cannot see itself chosen before it is,
 * nor leave and be freed before the caller's futex_wake. */
static void idle_choose(braid_pool *pool, worker *w) {
    for (worker **pp = &pool->idle; *pp; pp = &(*pp)->next_idle)
        if (*pp == w) {
            *pp = w->next_idle;
            break;
        }
    if (pool->sentinel == w) pool->sentinel = NULL;
    w->sleeping = false;
    pool->nsleeping--;
    pool->npending++;
    w->chosen_at = mono_ns();
    atomic_store_explicit(&w->wake, 1, memory_order_release);
}

/* Pool lock held. Make sure every runnable queued job has a taker (see
 * above). Wakes a sleeper — not the sentinel while another sleeps. For
 * short jobs one at a time: wake-ups are chained, each woken worker passing
 * the baton when it picks a job and finds more work than takers, so a burst
 * costs its submitter at most one futex system call; jobs longer than a
 * wake-up get one each at once. With nobody asleep, starts a
 * thread per job beyond the takers, up to max_threads, all at once (a
 * thread that must wait for a core can take a scheduler tick to start: a
 * chain of them would take ticks). Returns the worker the caller must
 * futex_wake; sets *spawn to the number of threads the caller must start
 * (counted already in nthreads and nstarting, see start_takers). */
static worker *find_taker(braid_pool *pool, unsigned *spawn) {
    *spawn = 0;
    if (pool->flags & BRAID_POOL_MEMORY) return NULL;
    size_t want = runnable(pool);
    unsigned takers = pool->nspinning + pool->npending + pool->nstarting;
    if (want <= takers) return NULL;
    /* One sleeper waking at a time (it passes the baton) while jobs are
     * short; jobs longer than a wake-up start together instead, one wake-up
     * each, as a chain would start the last of them a wake-up per job late
     * (a tick each, on cores busy with CPU-bound jobs). */
    if (pool->idle && pool->npending && pool->avg_run_ns < pool->avg_wake_ns) return NULL;
    uint64_t now;
    if (pool->nrunning && pool->sentinel && pool->sentinel_due <= (now = mono_ns()) + WATCH_NS) {
        double fresh = 2 * pool->avg_run_ns > pool->avg_wake_ns ? 2 * pool->avg_run_ns : pool->avg_wake_ns;
        for (worker *x = pool->all; x; x = x->next_all)
            if (x->run_start && (double)(now - x->run_start) < fresh) takers++;
    }
    /* The takers will clear the queue before a sleeper could wake. */
    if (takers && (double)want * pool->avg_run_ns < (double)takers * pool->avg_wake_ns) return NULL;
    if (pool->idle) {
        worker *w = pool->idle;
        if (w == pool->sentinel && w->next_idle) w = w->next_idle;
        idle_choose(pool, w);
        return w;
    }
    if (pool->nthreads < pool->max_threads && !pool->shutdown) {
        size_t n = want - takers, room = pool->max_threads - pool->nthreads;
        if (n > room) n = room;
        pool->nthreads += (unsigned)n;
        pool->nstarting += (unsigned)n;
        *spawn = (unsigned)n;
    }
    return NULL;
}

/* Spin (without the lock) until work is queued or the pool stops, for at
 * most budget ns of real time. */
static bool spin_for_work(braid_pool *pool, uint64_t budget) {
    uint64_t end = mono_ns() + budget;
    for (unsigned i = 1;; i++) {
        if (atomic_load_explicit(&pool->nqueued, memory_order_acquire) ||
            atomic_load_explicit(&pool->stopping, memory_order_relaxed))
            return true;
        if ((i & 15) == 0 && mono_ns() >= end) return false;
        braid__spin_step(i);
    }
}

static int start_takers(braid_pool *pool, unsigned n);

static void *worker_main(void *arg) {
    worker *w = arg;
    braid_pool *pool = w->pool;
    char name[16];
    snprintf(name, sizeof name, "%.10s-%u", pool->name, w->id);
    pthread_setname_np(pthread_self(), name);

    pthread_mutex_lock(&pool->mu);
    pool->nstarting--;
    bool spun = false;         /* spun already in this idle spell */
    uint64_t idle_since = 0;   /* when this idle spell began (for the idle timeout) */
    bool rewatch = false;      /* the sentinel watches again, without a pick */
    bool keep_watch = false;   /* and stays one even if no job runs right now */
    for (;;) {
        pool_job *j = rewatch ? NULL : pick(pool);
        if (j) {
            w->run_start = mono_ns();
            unsigned spawn;
            worker *next = find_taker(pool, &spawn);   /* more work than takers: pass it on */
            pthread_mutex_unlock(&pool->mu);
            if (next) futex_wake(&next->wake);
            if (spawn) start_takers(pool, spawn);   /* on failure the work waits for us */
            run_job(pool, j);                 /* returns with the lock held */
            w->run_start = 0;
            w->watch_ns = 0;
            keep_watch = false;
            spun = false;
            idle_since = 0;
            continue;
        }
        if (pool->shutdown && !atomic_load_explicit(&pool->nqueued, memory_order_relaxed)) break;

        /* Nothing to do. One idle worker at a time may spin for a while: a
         * wake-up from sleep costs more than the work it brings. */
        if (!spun && w->spin_cur && pool->nspinning == 0 && pool->nrunning < pool->spin_cores &&
            !pool->shutdown) {
            pool->nspinning++;
            pthread_mutex_unlock(&pool->mu);
            bool found = spin_for_work(pool, w->spin_cur);
            pthread_mutex_lock(&pool->mu);
            pool->nspinning--;
            if (!found) w->spin_cur /= 2;   /* a quiet spell: spin less next time */
            /* Look again (submitters woke nobody for us), but spin only once
             * per idle spell: work we saw may belong to a class at its
             * max_running, and re-spinning on it would burn a core. */
            spun = true;
            continue;
        }

        /* Sleep until a submitter picks this worker, or the idle timeout
         * (threads above min_threads), or, as the sentinel, the end of its
         * watch. The first to sleep while jobs run becomes the sentinel; a
         * sentinel whose runners were busy stays one. */
        uint64_t t0 = mono_ns(), end = BRAID_FOREVER;
        if (!idle_since) idle_since = t0;
        bool timed = pool->nthreads > pool->min_threads && pool->idle_timeout != BRAID_FOREVER;
        if (timed) end = idle_since + pool->idle_timeout;
        if (!pool->sentinel && !pool->shutdown && (pool->nrunning || keep_watch)) {
            if (!w->watch_ns) w->watch_ns = WATCH_NS;
            pool->sentinel = w;
            pool->sentinel_due = t0 + w->watch_ns;
            w->watch_seen = pool->completed;
            if (pool->sentinel_due < end) end = pool->sentinel_due;
        }
        rewatch = keep_watch = false;
        atomic_store_explicit(&w->wake, 0, memory_order_relaxed);
        w->sleeping = true;
        w->next_idle = pool->idle;
        pool->idle = w;
        pool->nsleeping++;
        pthread_mutex_unlock(&pool->mu);
        uint64_t now = t0;
        while (!atomic_load_explicit(&w->wake, memory_order_acquire) && now < end) {
            futex_wait(&w->wake, 0, end == BRAID_FOREVER ? BRAID_FOREVER : end - now);
            if (end != BRAID_FOREVER) now = mono_ns();
        }
        pthread_mutex_lock(&pool->mu);
        spun = false;
        if (!w->sleeping) {
            /* Chosen by a submitter (or by shutdown). Woken soon after going
             * to sleep: the spin would have caught it, so spin fully again. */
            pool->npending--;
            now = mono_ns();
            if (w->chosen_at && now > w->chosen_at)
                pool->avg_wake_ns += ((double)(now - w->chosen_at) - pool->avg_wake_ns) / 8;
            w->chosen_at = 0;
            w->watch_ns = 0;
            idle_since = 0;
            if (!(pool->flags & BRAID_POOL_NO_SPIN) && now - t0 <= pool->spin_max)
                w->spin_cur = pool->spin_max;
            continue;
        }
        /* Timed out: off the idle stack without being chosen. */
        for (worker **pp = &pool->idle; *pp; pp = &(*pp)->next_idle)
            if (*pp == w) {
                *pp = w->next_idle;
                break;
            }
        w->sleeping = false;
        pool->nsleeping--;
        bool sentinel = pool->sentinel == w;
        if (sentinel) pool->sentinel = NULL;
        if (timed && now >= idle_since + pool->idle_timeout && pool->nthreads > pool->min_threads) break;
        if (sentinel) {
            /* The watch ended. A job queued for a while (STUCK_NS: the
             * runners it was left to would have taken it long ago), or any
             * job at all when none finished during the watch, was left
             * behind: take it (the pick above; it passes the baton).
             * Otherwise watch again — as long if jobs finished (the pool is
             * busy with short ones), else twice as long (long ones run). */
            spun = true;
            bool progress = pool->completed != w->watch_seen;
            bool left = runnable(pool) && (!progress || oldest_wait(pool) >= STUCK_NS);
            w->watch_ns = progress ? WATCH_NS : w->watch_ns * 2 < WATCH_MAX_NS ? w->watch_ns * 2 : WATCH_MAX_NS;
            rewatch = !left && !pool->shutdown;
            keep_watch = progress;
        }
    }
    /* Leaving. At shutdown the last job may have been run by another worker
     * while this one slept: whoever leaves wakes the sleepers so they leave too. */
    if (pool->shutdown) {
        while (pool->idle) {
            worker *s = pool->idle;
            idle_choose(pool, s);
            futex_wake(&s->wake);   /* under the lock: s may move on at once */
        }
    }
    pool->nthreads--;
    w->exited = true;
    pthread_mutex_unlock(&pool->mu);
    return NULL;
}

/* Join and free threads that exited on their idle timeout (not under the lock). */
static void reap(braid_pool *pool, bool all) {
    worker *dead = NULL;
    pthread_mutex_lock(&pool->mu);
    for (worker **pp = &pool->all; *pp;) {
        worker *w = *pp;
        if (all || w->exited) {
            *pp = w->next_all;
            w->next_all = dead;
            dead = w;
        } else {
            pp = &w->next_all;
        }
    }
    pthread_mutex_unlock(&pool->mu);
    while (dead) {
        worker *w = dead;
        dead = w->next_all;
        pthread_join(w->tid, NULL);
        braid_free(w);
    }
}

/* Start one worker; the caller already counted it in nthreads. Signals are
 * blocked in workers so that they go to the loop (braid_signal). */
static int spawn_worker(braid_pool *pool) {
    reap(pool, false);
    worker *w = braid_calloc(1, sizeof *w);
    if (!w) return BRAID_ENOMEM;
    w->pool = pool;
    w->spin_cur = (pool->flags & BRAID_POOL_NO_SPIN) ? 0 : pool->spin_max;
    atomic_init(&w->wake, 0);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (pool->stack_size) {
        int rc = pthread_attr_setstacksize(&attr, pool->stack_size);
        if (rc) { pthread_attr_destroy(&attr); braid_free(w); return -rc; }
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_mutex_lock(&pool->mu);
    w->id = pool->next_id++;
    pthread_mutex_unlock(&pool->mu);
    int rc = pthread_create(&w->tid, &attr, worker_main, w);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    pthread_attr_destroy(&attr);
    if (rc) { braid_free(w); return -rc; }
    pthread_mutex_lock(&pool->mu);
    w->next_all = pool->all;
    pool->all = w;
    pthread_mutex_unlock(&pool->mu);
    return 0;
}

/* Start the n threads find_taker asked for (lock not held). Those that fail
 * to start are uncounted; the work stays queued for the threads there are.
 * Returns 0 or the failure. */
static int start_takers(braid_pool *pool, unsigned n) {
    for (unsigned i = 0; i < n; i++) {
        int rc = spawn_worker(pool);
        if (rc < 0) {
            pthread_mutex_lock(&pool->mu);
            pool->nthreads -= n - i;
            pool->nstarting -= n - i;
            pthread_mutex_unlock(&pool->mu);
            return rc;
        }
    }
    return 0;
}

/* ---- creation --------------------------------------------------------------------------- */
/* One entry of its loop's introspection "pools": the stats snapshot, the
 * histograms as log2 buckets (counts; hist_bucket_ns[i] is bucket i's upper
 * bound) cut after the last non-empty bucket, and their medians and p99. */
static void json_hist(braid_json *j, const char *key, const uint64_t h[BRAID_POOL_HIST], unsigned n) {
    braid_json_key(j, key);
    braid_json_array_begin(j);
    for (unsigned i = 0; i < n; i++) braid_json_u64(j, h[i]);
    braid_json_array_end(j);
}
static void describe(braid_json *j, void *arg) {
    braid_pool *pool = arg;
    struct braid_pool_stats st;
    braid_pool_stats(pool, &st);
    unsigned n = 0;
    for (unsigned i = 0; i < BRAID_POOL_HIST; i++)
        if (st.wait_hist[i] || st.run_hist[i]) n = i + 1;
    braid_json_object_begin(j);
    braid_json_kv_str(j, "name", pool->name);
    braid_json_kv_u64(j, "threads", st.threads);
    braid_json_kv_u64(j, "idle", st.idle);
    braid_json_kv_u64(j, "queued", st.queued);
    braid_json_kv_u64(j, "running", st.running);
    braid_json_kv_u64(j, "completed", st.completed);
    braid_json_kv_u64(j, "rejected", st.rejected);
    braid_json_kv_u64(j, "cancelled", st.cancelled);
    braid_json_kv_u64(j, "wait_p50_ns", braid_pool_hist_quantile(st.wait_hist, 0.5));
    braid_json_kv_u64(j, "wait_p99_ns", braid_pool_hist_quantile(st.wait_hist, 0.99));
    braid_json_kv_u64(j, "run_p50_ns", braid_pool_hist_quantile(st.run_hist, 0.5));
    braid_json_kv_u64(j, "run_p99_ns", braid_pool_hist_quantile(st.run_hist, 0.99));
    json_hist(j, "wait_hist", st.wait_hist, n);
    json_hist(j, "run_hist", st.run_hist, n);
    braid_json_key(j, "hist_bucket_ns");
    braid_json_array_begin(j);
    for (unsigned i = 0; i < n; i++) braid_json_u64(j, i == BRAID_POOL_HIST - 1 ? UINT64_MAX : 2ull << i);
    braid_json_array_end(j);
    braid_json_object_end(j);
}

int braid_pool_new(const braid_pool_options *opts, braid_pool **out) {
    braid_pool_options o = { 0 };
    if (!out) return BRAID_EINVAL;
    *out = NULL;
    if (opts) o = *opts;
    if (!o.max_threads) o.max_threads = o.min_threads > DEFAULT_MAX_THREADS ? o.min_threads
                                                                           : DEFAULT_MAX_THREADS;
    if (o.min_threads > o.max_threads) return BRAID_EINVAL;
    braid_pool *pool = braid_calloc(1, sizeof *pool);
    if (!pool) return BRAID_ENOMEM;
    pthread_mutex_init(&pool->mu, NULL);
    atomic_init(&pool->nqueued, 0);
    atomic_init(&pool->stopping, false);
    pool->min_threads = o.min_threads;
    pool->max_threads = o.max_threads;
    pool->stack_size = o.stack_size;
    snprintf(pool->name, sizeof pool->name, "%s", o.name ? o.name : "braid-pool");
    pool->idle_timeout = o.idle_timeout ? o.idle_timeout : DEFAULT_IDLE_TIMEOUT;
    pool->flags = o.flags;
    bool spin = !(o.flags & (BRAID_POOL_NO_SPIN | BRAID_POOL_MEMORY));
    pool->spin_max = spin ? (o.spin_ns ? o.spin_ns : DEFAULT_SPIN) : 0;
    pool->loop_spin = spin ? (o.loop_spin_ns ? o.loop_spin_ns : DEFAULT_SPIN) : 0;
    pool->clock = o.clock ? o.clock : braid_clock_monotonic();
    pool->avg_wake_ns = 30000;   /* a first guess: a sleeping thread on an idle core */
    /* Leave a core to the loop: an idle worker spins only while the running
     * ones leave a core free (with 2 cores: only when no worker runs — a
     * running worker picks the next job itself when it is done anyway). */
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    pool->spin_cores = ncpu > 2 ? (unsigned)(ncpu - 1) : 1;
    pool_class *def = &pool->classes[0];
    snprintf(def->name, sizeof def->name, "default");
    def->limit = o.queue_limit ? o.queue_limit : DEFAULT_QUEUE_LIMIT;
    def->max_running = o.max_threads;
    pool->nclasses = 1;
    if (!(o.flags & BRAID_POOL_MEMORY)) {
        for (unsigned i = 0; i < o.min_threads; i++) {
            pthread_mutex_lock(&pool->mu);   /* workers already started read it */
            pool->nthreads++;
            pool->nstarting++;
            pthread_mutex_unlock(&pool->mu);
            int rc = start_takers(pool, 1);
            if (rc < 0) {
                pool->loop = NULL;
                braid_pool_shutdown(pool, BRAID_POOL_CANCEL);
                braid_pool_free(pool);
                return rc;
            }
        }
    }
    pool->loop = o.loop;
    if (pool->loop) {
        braid_handle_open(pool->loop, &pool->handle, "pool");
        pool->handle.name = pool->name;
        braid_introspect_add(pool->loop, &pool->inode, "pools", describe, pool);
    }
    *out = pool;
    return 0;
}

int braid_pool_add_class(braid_pool *pool, const char *name, size_t queue_limit,
                         unsigned max_running) {
    if (!pool) return BRAID_EINVAL;
    pthread_mutex_lock(&pool->mu);
    if (pool->nclasses == BRAID_POOL_MAX_CLASSES) {
        pthread_mutex_unlock(&pool->mu);
        return BRAID_EINVAL;
    }
    int id = (int)pool->nclasses;
    pool_class *pc = &pool->classes[id];
    snprintf(pc->name, sizeof pc->name, "%s", name ? name : "");
    pc->limit = queue_limit ? queue_limit : DEFAULT_QUEUE_LIMIT;
    pc->max_running = max_running && max_running < pool->max_threads ? max_running
                                                                     : pool->max_threads;
    pool->nclasses++;
    pthread_mutex_unlock(&pool->mu);
    return id;
}

unsigned braid_pool_classes(braid_pool *pool) {
    pthread_mutex_lock(&pool->mu);
    unsigned n = pool->nclasses;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

/* ---- submission ------------------------------------------------------------------------- */
/* Queue j in class cls and make sure someone will run it: a spinning or
 * already-woken worker, else one sleeping worker woken now, else a new
 * thread (up to max_threads). Returns 0 or the reason j was not queued. */
static int submit(braid_pool *pool, pool_job *j, int cls) {
    j->t_queued = pool_now(pool);
    pthread_mutex_lock(&pool->mu);
    if (cls < 0 || (unsigned)cls >= pool->nclasses) {
        pthread_mutex_unlock(&pool->mu);
        return BRAID_EINVAL;
    }
    if (pool->shutdown) {
        pool->rejected++;
        pthread_mutex_unlock(&pool->mu);
        return BRAID_ESHUTDOWN;
    }
    pool_class *pc = &pool->classes[cls];
    if (pc->queued >= pc->limit) {
        pool->rejected++;
        pthread_mutex_unlock(&pool->mu);
        return BRAID_EQUEUE_FULL;
    }
    j->cls = (uint8_t)cls;
    atomic_store_explicit(&j->state, JOB_QUEUED, memory_order_relaxed);
    queue_append(pool, pc, j);
    unsigned spawn;
    worker *wake = find_taker(pool, &spawn);
    pthread_mutex_unlock(&pool->mu);
    /* The flag was set under the lock (so the worker cannot have left and
     * been freed before it sees it); only the system call happens here. A
     * wake of a futex word whose worker already moved on is harmless. */
    if (wake) futex_wake(&wake->wake);
    if (spawn) {
        int rc = start_takers(pool, spawn);
        if (rc < 0) {
            /* Could not start a thread: fine if another will run j, else j
             * fails with the reason. */
            pthread_mutex_lock(&pool->mu);
            if (pool->nthreads == 0 && atomic_load(&j->state) == JOB_QUEUED) {
                queue_unlink(pool, j);
                pool->rejected++;
                pthread_mutex_unlock(&pool->mu);
                return rc;
            }
            pthread_mutex_unlock(&pool->mu);
        }
    }
    return 0;
}

/* The completion, on the loop's thread: hand the result to the Deferred (or
 * drop it if the Deferred was cancelled meanwhile). */
static void job_complete(void *arg) {
    pool_job *j = arg;
    braid_loop *loop = j->loop;
    braid_deferred *d = j->d;
    braid_result r = j->result;
    bool dropped = j->dropped;
    if (j->arg_free) j->arg_free(j->arg);
    if (j->spins) braid__loop_spin_release(loop);
    job_put(loop, j);
    braid_loop_release(loop);
    if (dropped) braid_result_drop(r);
    else braid_deferred_fire(d, r);
}

/* The Deferred's canceller (loop thread): work not started leaves the queue
 * and never runs; running work finishes and its result is dropped. */
static void job_cancel(braid_deferred *d, void *arg) {
    (void)d;
    pool_job *j = arg;
    if (atomic_load(&j->state) == JOB_QUEUED) {
        braid_pool *pool = j->pool;
        pthread_mutex_lock(&pool->mu);
        if (atomic_load(&j->state) == JOB_QUEUED) {
            queue_unlink(pool, j);
            pool->cancelled++;
            pthread_mutex_unlock(&pool->mu);
            braid_loop *loop = j->loop;
            if (j->arg_free) j->arg_free(j->arg);
            if (j->spins) braid__loop_spin_release(loop);
            job_put(loop, j);
            braid_loop_release(loop);
            return;   /* the Deferred then fails with BRAID_ECANCELED */
        }
        pthread_mutex_unlock(&pool->mu);
    }
    j->dropped = true;
}

braid_deferred *braid_pool_defer_full(braid_loop *loop, braid_pool *pool, int cls,
                                         braid_result_fn fn, void *arg, void (*arg_free)(void *)) {
    if (!loop) {
        if (arg_free) arg_free(arg);
        return NULL;
    }
    if (!pool || !fn) {
        if (arg_free) arg_free(arg);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "braid_pool_defer: no %s",
                                                  pool ? "function" : "pool"));
    }
    pool_job *j = job_get(loop);
    if (!j) {
        if (arg_free) arg_free(arg);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, NULL));
    }
    j->ctx = NULL;
    braid_deferred *d = braid_deferred_new_cancellable(loop, job_cancel, j);
    if (!d) {
        job_put(loop, j);
        if (arg_free) arg_free(arg);
        return NULL;
    }
    j->post.fn = job_complete;
    j->post.arg = j;
    j->pool = pool;
    j->loop = loop;
    j->d = d;
    j->fn = fn;
    j->call = NULL;
    j->arg = arg;
    j->arg_free = arg_free;
    j->dropped = false;
    j->spins = pool->loop_spin != 0;
    j->ctx = braid__ctx_capture();
    int rc = submit(pool, j, cls);
    if (rc < 0) {
        job_put(loop, j);
        if (arg_free) arg_free(arg);
        braid_deferred_errback(d, braid_failure_new(rc, "pool %s: work refused", pool->name));
        return d;
    }
    braid_loop_hold(loop);
    if (j->spins) braid__loop_spin_hold(loop, pool->loop_spin);
    return d;
}

braid_deferred *braid_pool_defer_class(braid_loop *loop, braid_pool *pool, int cls,
                                          braid_result_fn fn, void *arg) {
    return braid_pool_defer_full(loop, pool, cls, fn, arg, NULL);
}

braid_deferred *braid_pool_defer(braid_loop *loop, braid_pool *pool, braid_result_fn fn,
                                    void *arg) {
    return braid_pool_defer_class(loop, pool, 0, fn, arg);
}

int braid_pool_call_class(braid_pool *pool, int cls, braid_loop_call_cb fn, void *arg) {
    if (!pool || !fn) return BRAID_EINVAL;
    pool_job *j = braid_malloc(sizeof *j);
    if (!j) return BRAID_ENOMEM;
    memset(j, 0, sizeof *j);
    j->pool = pool;
    j->call = fn;
    j->arg = arg;
    j->ctx = braid__ctx_capture();
    int rc = submit(pool, j, cls);
    if (rc < 0) {
        braid__ctx_release(j->ctx);
        braid_free(j);
    }
    return rc;
}

int braid_pool_call(braid_pool *pool, braid_loop_call_cb fn, void *arg) {
    return braid_pool_call_class(pool, 0, fn, arg);
}

/* ---- blocking_call_from_thread -------------------------------------------------------------- */
typedef struct bcall {
    braid_post post;
    braid_loop *loop;
    braid_pool_blocking_fn fn;
    void *arg;
    braid_result r;
    bool done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} bcall;

/* Loop thread: take the result and let the waiting thread go. b lives on
 * that thread's stack: nothing touches it after the unlock. */
static braid_result bcall_done(braid_result r, void *arg) {
    bcall *b = arg;
    pthread_mutex_lock(&b->mu);
    b->r = r;
    b->done = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return braid_result_ok(NULL);
}

static void bcall_run(void *arg) {
    bcall *b = arg;
    braid_deferred *d = b->fn(b->loop, b->arg);
    if (!d) {
        bcall_done(braid_result_err(braid_failure_new(BRAID_ENOMEM, "blocking call: no Deferred")), b);
        return;
    }
    int rc = braid_deferred_add_both(d, bcall_done, b);
    if (rc < 0) {
        /* Could not attach (no memory for a callback slot): cancel what we
         * cannot wait for, and tell the waiting thread. */
        braid_deferred_cancel(d);
        braid_deferred_unref(d);
        bcall_done(braid_result_err(braid_failure_new(rc, "blocking call: cannot wait")), b);
        return;
    }
    braid_deferred_unref(d);
}

braid_result braid_pool_blocking_call(braid_loop *loop, braid_pool_blocking_fn fn, void *arg) {
    if (!loop || !fn) return braid_result_err(braid_failure_new(BRAID_EINVAL, "blocking call: bad arguments"));
    /* On the loop's thread nobody would ever run fn: refuse rather than
     * hang (a thread-id comparison, in every build). */
    if (braid__loop_on_owner_thread(loop))
        return braid_result_err(braid_failure_new(BRAID_EDEADLK,
                                           "braid_pool_blocking_call called on the loop's own thread "
                                           "(it would wait forever for itself): call fn directly there"));
    bcall b;
    memset(&b, 0, sizeof b);
    b.loop = loop;
    b.fn = fn;
    b.arg = arg;
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    b.post.fn = bcall_run;
    b.post.arg = &b;
    braid_loop_post_node(loop, &b.post);
    pthread_mutex_lock(&b.mu);
    while (!b.done) pthread_cond_wait(&b.cv, &b.mu);
    pthread_mutex_unlock(&b.mu);
    pthread_cond_destroy(&b.cv);
    pthread_mutex_destroy(&b.mu);
    return b.r;
}

/* ---- shutdown --------------------------------------------------------------------------------- */
void braid_pool_shutdown(braid_pool *pool, braid_pool_mode mode) {
    if (!pool) return;
    pool_job *cancelled = NULL;
    pthread_mutex_lock(&pool->mu);
    pool->shutdown = true;
    atomic_store(&pool->stopping, true);
    if (mode == BRAID_POOL_CANCEL) {
        for (unsigned c = 0; c < pool->nclasses; c++) {
            while (pool->classes[c].head) {
                pool_job *j = pool->classes[c].head;
                queue_unlink(pool, j);
                atomic_store_explicit(&j->state, JOB_CANCELLED, memory_order_relaxed);
                pool->cancelled++;
                j->next = cancelled;
                cancelled = j;
            }
        }
    }
    /* Everyone sleeping wakes up to drain the queue or exit. */
    while (pool->idle) {
        worker *w = pool->idle;
        idle_choose(pool, w);
        futex_wake(&w->wake);   /* under the lock: w may move on at once (rare path) */
    }
    pthread_mutex_unlock(&pool->mu);
    /* Cancelled work: Deferreds fail on their own loops; calls are dropped.
     * Newest first is fine: each loop's completions carry no order promise
     * against work that never ran. */
    while (cancelled) {
        pool_job *j = cancelled;
        cancelled = j->next;
        if (j->loop) {
            j->result = braid_result_err(braid_failure_new(BRAID_ECANCELED, "pool %s shut down", pool->name));
            braid_loop_post_node(j->loop, &j->post);
        } else {
            braid__ctx_release(j->ctx);
            braid_free(j);
        }
    }
}

void braid_pool_free(braid_pool *pool) {
    if (!pool) return;
    braid_pool_shutdown(pool, BRAID_POOL_FINISH);   /* after a CANCEL: nothing left to run */
    if (pool->flags & BRAID_POOL_MEMORY)
        while (braid_pool_step(pool) > 0) {}
    /* Join everyone. A worker may be starting a thread right now (decided
     * before the shutdown: it is counted in nthreads but not yet on the
     * list), so join until no thread is left at all. */
    for (;;) {
        reap(pool, true);
        pthread_mutex_lock(&pool->mu);
        bool gone = !pool->nthreads && !pool->all;
        pthread_mutex_unlock(&pool->mu);
        if (gone) break;
        sched_yield();
    }
    if (pool->loop) {
        braid_handle_close(pool->loop, &pool->handle);
        braid_introspect_remove(pool->loop, &pool->inode);
    }
    pthread_mutex_destroy(&pool->mu);
    braid_free(pool);
}

/* ---- memory worker ------------------------------------------------------------------------------ */
int braid_pool_step(braid_pool *pool) {
    if (!pool || !(pool->flags & BRAID_POOL_MEMORY)) return BRAID_EINVAL;
    pthread_mutex_lock(&pool->mu);
    pool_job *j = pick(pool);
    if (!j) {
        pthread_mutex_unlock(&pool->mu);
        return 0;
    }
    pthread_mutex_unlock(&pool->mu);
    run_job(pool, j);
    pthread_mutex_unlock(&pool->mu);
    return 1;
}

/* ---- statistics -------------------------------------------------------------------------------- */
void braid_pool_stats(braid_pool *pool, struct braid_pool_stats *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&pool->mu);
    out->queued = atomic_load_explicit(&pool->nqueued, memory_order_relaxed);
    out->running = pool->nrunning;
    out->threads = pool->nthreads;
    out->idle = pool->nsleeping + pool->nspinning;
    out->spinning = pool->nspinning;
    out->completed = pool->completed;
    out->rejected = pool->rejected;
    out->cancelled = pool->cancelled;
    for (unsigned c = 0; c < pool->nclasses; c++) {
        out->class_queued[c] = pool->classes[c].queued;
        out->class_running[c] = pool->classes[c].running;
    }
    memcpy(out->wait_hist, pool->wait_hist, sizeof out->wait_hist);
    memcpy(out->run_hist, pool->run_hist, sizeof out->run_hist);
    pthread_mutex_unlock(&pool->mu);
}

