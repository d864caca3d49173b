/* The logger's interface for the loop (internal, never installed; published
 * to the loop in src/LAYERS). The log module knows no loop: the loop makes
 * one logger, tells it how to test for its own thread and how to wake
 * itself, and drains the cross-thread queue when woken. */
#ifndef BRAID_LOG_LOGGER_H
#define BRAID_LOG_LOGGER_H

#include "base/base.h"
#include <braid/log.h>

typedef struct braid__logger_hooks {
    bool (*on_owner)(void *arg);     /* is the calling thread the loop's? */
    void (*wake)(void *arg);         /* any thread: have braid__logger_drain run soon */
    void *arg;
    size_t queue_limit;              /* 0: 1024 */
    braid_log_cb legacy;             /* braid_loop_options.log: the first observer */
    void *legacy_ctx;
} braid__logger_hooks;

braid_logger *braid__logger_new(const braid__logger_hooks *h);
/* Loop thread, at loop destroy: drains, then frees observers and queue. */
void braid__logger_free(braid_logger *lg);
/* Loop thread: deliver the events queued by other threads. */
void braid__logger_drain(braid_logger *lg);
/* Is anything queued (the loop's leak gate drains it first)? */
bool braid__logger_pending(braid_logger *lg);

#endif
