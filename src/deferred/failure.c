/* Failures (the C Failure: code, message, cause, origin) and results.
 *
 * A failure and its message are one allocation. When that allocation
 * fails, a static failure stands in: for the codes braid raises itself the
 * code is kept (a cancellation stays a cancellation under memory pressure),
 * for anything else it becomes BRAID_ENOMEM. Static failures are never
 * freed and carry no cause. */
#include "deferred/deferred_internal.h"
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { FAILURE_STATIC = 1u };

#define STATIC_FAILURE(c, msg) \
    { (c), (char *)(msg " (no memory for details)"), NULL, __FILE__, "braid_failure_new_at", __LINE__, FAILURE_STATIC }
static braid_failure static_failures[] = {
    STATIC_FAILURE(BRAID_ENOMEM, "out of memory"),
    STATIC_FAILURE(BRAID_ECANCELED, "cancelled"),
    STATIC_FAILURE(BRAID_ETIMEDOUT, "timed out"),
    STATIC_FAILURE(BRAID_EINVAL, "invalid argument"),
    STATIC_FAILURE(BRAID_ESHUTDOWN, "shutting down"),
    STATIC_FAILURE(BRAID_EALREADY_CALLED, "Deferred already called"),
    STATIC_FAILURE(BRAID_EQUEUE_FULL, "queue full"),
    STATIC_FAILURE(BRAID_EQUEUE_EMPTY, "queue empty"),
    STATIC_FAILURE(BRAID_EFIRST_ERROR, "a combined Deferred failed"),
    STATIC_FAILURE(BRAID_EALL_FAILED, "every raced Deferred failed"),
    STATIC_FAILURE(BRAID_ELOCKED, "lock misuse"),
};

static braid_failure *static_for(int code) {
    for (size_t i = 0; i < sizeof static_failures / sizeof static_failures[0]; i++)
        if (static_failures[i].code == code) return &static_failures[i];
    return &static_failures[0];
}

braid_failure *braid_failure_vnew_at(int code, const char *file, int line, const char *func,
                                     const char *fmt, va_list ap) {
    int n = 0;
    if (fmt) {
        va_list ap2;
        va_copy(ap2, ap);
        n = vsnprintf(NULL, 0, fmt, ap2);
        va_end(ap2);
        if (n < 0) n = 0;
    }
    braid_failure *f = braid_malloc(sizeof *f + (fmt ? (size_t)n + 1 : 0));
    if (!f) return static_for(code);
    f->code = code;
    f->cause = NULL;
    f->file = file;
    f->line = line;
    f->func = func;
    f->flags = 0;
    f->message = NULL;
    if (fmt) {
        f->message = (char *)(f + 1);
        vsnprintf(f->message, (size_t)n + 1, fmt, ap);
    }
    return f;
}

braid_failure *braid_failure_new_at(int code, const char *file, int line, const char *func,
                                    const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    braid_failure *f = braid_failure_vnew_at(code, file, line, func, fmt, ap);
    va_end(ap);
    return f;
}

braid_failure *braid_failure_wrap_at(braid_failure *cause, int code, const char *file, int line,
                                     const char *func, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    braid_failure *f = braid_failure_vnew_at(code, file, line, func, fmt, ap);
    va_end(ap);
    if (f->flags & FAILURE_STATIC) {
        braid_failure_free(cause);   /* nowhere to hang it */
        return f;
    }
    f->cause = cause;
    return f;
}

void braid_failure_free(braid_failure *f) {
    /* Iterative: cause chains can be long. */
    while (f) {
        braid_failure *next = f->cause;
        if (!(f->flags & FAILURE_STATIC)) braid_free(f);
        f = next;
    }
}

size_t braid_failure_format(const braid_failure *f, char *buf, size_t size) {
    size_t len = 0;
    for (int depth = 0; f; f = f->cause, depth++) {
        char *at = len < size ? buf + len : NULL;
        size_t room = len < size ? size - len : 0;
        const char *name = braid_strerror(f->code);
        int n = snprintf(at, room, "%s%s%s%s (%d) at %s:%d in %s", depth ? "; caused by: " : "",
                         f->message ? f->message : "", f->message ? ": " : "", name, f->code,
                         f->file ? f->file : "?", f->line, f->func ? f->func : "?");
        if (n > 0) len += (size_t)n;
    }
    if (size && len >= size) buf[size - 1] = '\0';
    if (size && len == 0) buf[0] = '\0';
    return len;
}

void braid_result_drop(braid_result r) {
    if (r.value && r.dtor) r.dtor(r.value);
    if (r.failure) braid_failure_free(r.failure);
    if (r.chain) braid_deferred_unref(r.chain);
}
