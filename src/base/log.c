/* Writing log lines: formatting, and the default sink (stderr).
 *
 * The sink is per loop (braid_loop_options.log); this file only formats a
 * line and hands it to the sink it is given, so the layers below the loop
 * (the pollers) log through the same path. */
#include "base/base.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void default_log(const char *ns, braid_log_level level, const char *msg) {
    static const char *const names[] = { "debug", "info", "warn", "error" };
    if (level == BRAID_LOG_DEBUG) {   /* debug lines only when asked for */
        const char *e = getenv("BRAID_LOG_DEBUG");
        if (!e || !*e || !strcmp(e, "0")) return;
    }
    if (ns) fprintf(stderr, "braid[%s] %s: %s\n", names[level & 3], ns, msg);
    else fprintf(stderr, "braid[%s]: %s\n", names[level & 3], msg);
}

void braid__assert_fail(const char *cond, const char *file, int line, const char *fn) {
    fprintf(stderr, "braid: assertion failed: %s (%s:%d, %s)\n", cond, file, line, fn);
    abort();
}

void braid__log_vwrite(braid_log_cb fn, void *ctx, const char *ns, braid_log_level level, const char *fmt,
                       va_list ap) {
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    if (fn) fn(ctx, level, buf);
    else default_log(ns, level, buf);
}

void braid__log_write(braid_log_cb fn, void *ctx, const char *ns, braid_log_level level, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    braid__log_vwrite(fn, ctx, ns, level, fmt, ap);
    va_end(ap);
}
