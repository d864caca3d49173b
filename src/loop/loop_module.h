/* The loop's interface for braid's modules above it (internal, never
 * installed). Published by the loop layer (src/loop/) for every module that
 * builds on the loop: what <braid/loop.h> and <braid/time.h> offer users,
 * plus a few things only braid's own modules need. The loop's fields stay
 * in loop/loop_internal.h, which no module outside src/loop/ includes. */
#ifndef BRAID_LOOP_MODULE_H
#define BRAID_LOOP_MODULE_H

#include "base/base.h"
#include "context/capture.h"
#include <braid/loop.h>
#include <braid/time.h>

/* A log line through the loop's sink (braid_loop_options.log; stderr when
 * none, or when loop is NULL), in the calling module's namespace: the
 * braid__log_ns its internal header declares (base/base.h). */
#define braid__log(loop, level, ...) braid__log_at((loop), braid__log_ns, (level), __VA_ARGS__)
void braid__log_at(braid_loop *loop, const char *ns, braid_log_level level, const char *fmt, ...)
    BRAID_PRINTF(4, 5);

/* braid_loop_free, silent when something is still open (BRAID_EBUSY): for
 * a module that frees a loop of its own after closing what it opened, and
 * runs it an iteration or two more until the closes are done. */
int braid__loop_free_quiet(braid_loop *loop);

/* ---- loop affinity --------------------------------------------------------------
 * Every loop-affine entry point starts with BRAID__LOOP_AFFINE(loop). Debug
 * builds (BRAID_DEBUG) abort there, naming the function, when the caller is
 * not the loop's owning thread; release builds compile it to nothing. The
 * thread-safe entries (braid_loop_post, braid_loop_post_node,
 * braid_loop_stop) never check. */
_Noreturn void braid__loop_wrong_thread(const braid_loop *loop, const char *fn);
/* Is the calling thread the loop's owner (any build)? */
bool braid__loop_on_owner_thread(const braid_loop *loop);
#ifdef BRAID_DEBUG
#define BRAID__LOOP_AFFINE(loop)                                                      \
    do {                                                                              \
        if (BRAID__UNLIKELY(!braid__loop_on_owner_thread(loop)))                      \
            braid__loop_wrong_thread((loop), __func__);                               \
    } while (0)
#else
#define BRAID__LOOP_AFFINE(loop) ((void)0)
#endif

/* ---- waiting for other threads ---------------------------------------------------
 * Work in flight on another thread that will answer through braid_loop_post
 * (a pool job): waking a loop asleep in its poller costs tens of
 * microseconds, more than a fast job. While such work is held, run_once
 * first busy-polls the posted calls for up to spin_ns (adaptive: halved
 * after a spin that found nothing, restored when an answer came soon after
 * the loop went to sleep), and posters skip the wake-up write while it
 * spins. Hold before handing the work over (spin_ns: the budget that work
 * deserves; the loop keeps the largest asked for), release once its answer
 * ran or it was taken back. Neither keeps braid_loop_run going: hold the
 * loop for that (braid_loop_hold). Loop thread. */
void braid__loop_spin_hold(braid_loop *loop, uint64_t spin_ns);
void braid__loop_spin_release(braid_loop *loop);

/* Are ready calls (braid_loop_soon) queued? The memory pump runs the loop
 * only while they are. */
bool braid__loop_has_ready(const braid_loop *loop);

/* Hand a failure nobody consumed to the loop's braid_loop_set_unhandled
 * hook: true if there is one (it ran), false if the caller reports it. */
struct braid_failure;
bool braid__loop_unhandled(braid_loop *loop, const struct braid_failure *f);

/* ---- keys: braid_loop_data without a call ----------------------------------------
 * A braid_loop begins with this head, so a module's hot path (a Deferred
 * taken from its loop's free list) reads its key's value inline. */
struct braid__loop_head {
    /* by key index; [0], the index of a key never set, stays NULL, so the
     * lookup needs no test */
    void *key_data[BRAID_LOOP_MAX_KEYS + 1];
};
static inline void *braid__loop_data(braid_loop *loop, braid_loop_key *key) {
    unsigned i = __atomic_load_n(&key->index, __ATOMIC_ACQUIRE);
    return ((struct braid__loop_head *)(void *)loop)->key_data[i];
}

#endif
