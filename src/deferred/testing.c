/* Synchronous Deferred assertions for tests (<braid/testing_deferred.h>). */
#include "deferred/deferred_internal.h"
#include <braid/testing_deferred.h>
#include <stdio.h>
#include <stdlib.h>

static braid_deferred_expect_fail_cb g_handler;
static void *g_ctx;

void braid_deferred_expect_set_handler(braid_deferred_expect_fail_cb fn, void *ctx) {
    g_handler = fn;
    g_ctx = ctx;
}

static void expect_failed(const char *file, int line, const char *msg) {
    if (g_handler) {
        g_handler(g_ctx, file, line, msg);
        return;
    }
    fprintf(stderr, "%s:%d: %s\n", file, line, msg);
    abort();
}

/* What d holds, in words, for the failure message. */
static void describe(const braid_deferred *d, char *buf, size_t size) {
    if (!(d->flags & BRAID__D_CALLED)) { snprintf(buf, size, "no result (never fired)"); return; }
    if (d->flags & BRAID__D_WAITING) { snprintf(buf, size, "no result (waiting on a chained Deferred)"); return; }
    if (d->flags & BRAID__D_RUNNING) { snprintf(buf, size, "no result (its callbacks are running)"); return; }
    if (d->paused) { snprintf(buf, size, "no result (paused)"); return; }
    if (d->result.failure) {
        int n = snprintf(buf, size, "a failure: ");
        if (n > 0 && (size_t)n < size) braid_failure_format(d->result.failure, buf + n, size - (size_t)n);
        return;
    }
    snprintf(buf, size, "a success result (value %p)", d->result.value);
}

braid_result braid_deferred_expect_success_at(braid_deferred *d, const char *file, int line) {
    braid_result r = { 0 };
    if (braid__deferred_has_result(d) && !d->result.failure) {
        braid_deferred_take(d, &r);
        return r;
    }
    char what[768], msg[1024];
    describe(d, what, sizeof what);
    snprintf(msg, sizeof msg, "expected a success result, the Deferred has %s", what);
    expect_failed(file, line, msg);
    return r;
}

braid_failure *braid_deferred_expect_failure_at(braid_deferred *d, int code, const char *file, int line) {
    if (braid__deferred_has_result(d) && d->result.failure &&
        (code == 0 || d->result.failure->code == code)) {
        braid_result r;
        braid_deferred_take(d, &r);
        return r.failure;
    }
    char what[768], msg[1024];
    describe(d, what, sizeof what);
    if (code)
        snprintf(msg, sizeof msg, "expected a failure %d (%s), the Deferred has %s", code,
                 braid_strerror(code), what);
    else
        snprintf(msg, sizeof msg, "expected a failure, the Deferred has %s", what);
    expect_failed(file, line, msg);
    return NULL;
}

void braid_deferred_expect_no_result_at(braid_deferred *d, const char *file, int line) {
    if (!braid__deferred_has_result(d)) return;
    char what[768], msg[1024];
    describe(d, what, sizeof what);
    snprintf(msg, sizeof msg, "expected no result, the Deferred has %s", what);
    expect_failed(file, line, msg);
}
