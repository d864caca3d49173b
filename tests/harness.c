/* The harness runner: registration, assertions, and loop helpers. */
#include "harness.h"
#include <stdarg.h>
#include <unistd.h>

#define MAX_CASES 512
static struct { const char *name; bt_fn fn; int io; } cases[MAX_CASES];
static int ncases;
static const char *current = "?";
static char context[256];

void bt_context(const char *fmt, ...) {
    context[0] = 0;
    if (!fmt) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
}

void bt_register(const char *name, bt_fn fn, int io) {
    if (ncases == MAX_CASES) { fprintf(stderr, "too many test cases\n"); exit(2); }
    cases[ncases].name = name;
    cases[ncases].fn = fn;
    cases[ncases].io = io;
    ncases++;
}

void bt_fail(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s [%s]%s%s%s %s:%d: ", current, bt_backend(), context[0] ? " (" : "", context,
            context[0] ? ")" : "", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

void bt_skip(const char *why) {
    fprintf(stderr, "SKIP %s [%s]: %s\n", current, bt_backend(), why);
    exit(77);
}

const char *bt_backend(void) {
    const char *b = getenv("BRAID_BACKEND");
    return b && *b ? b : "epoll";
}

braid_loop *bt_loop_new(braid_clock *clock) {
    braid_loop_options o = { .clock = clock, .flags = BRAID_LOOP_STRICT_BACKEND };
    braid_loop *loop = NULL;
    int rc = braid_loop_new(&o, &loop);
    if (rc == BRAID_ENOSYS) bt_skip("backend not available on this system");
    if (rc < 0) bt_fail(__FILE__, __LINE__, "braid_loop_new: %s", braid_strerror(rc));
    if (strcmp(braid_loop_backend(loop), bt_backend()) != 0)
        bt_fail(__FILE__, __LINE__, "asked for backend %s, got %s", bt_backend(),
                braid_loop_backend(loop));
    return loop;
}

void bt_loop_destroy(braid_loop *loop) {
    int rc = braid_loop_free(loop);
    if (rc < 0) bt_fail(__FILE__, __LINE__, "leak gate: braid_loop_free: %s", braid_strerror(rc));
}

void bt_run_until(braid_loop *loop, volatile int *flag, int max_iterations) {
    for (int i = 0; i < max_iterations && !*flag; i++) {
        int rc = braid_loop_run_once(loop, 0);
        if (rc < 0) bt_fail(__FILE__, __LINE__, "run_once: %s", braid_strerror(rc));
    }
    if (!*flag) bt_fail(__FILE__, __LINE__, "condition not reached in %d iterations", max_iterations);
}

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--list")) {
        for (int i = 0; i < ncases; i++) printf("%s%s\n", cases[i].name, cases[i].io ? " (io)" : "");
        return 0;
    }
    int ran = 0;
    for (int i = 0; i < ncases; i++) {
        if (argc > 1 && strcmp(argv[1], cases[i].name)) continue;
        current = cases[i].name;
        long before = braid_test_alloc_outstanding();
        cases[i].fn();
        long after = braid_test_alloc_outstanding();
        if (after != before) {
            fprintf(stderr, "FAIL %s [%s]: %ld braid allocation(s) leaked\n", current, bt_backend(),
                    after - before);
            return 1;
        }
        fprintf(stderr, "ok %s [%s]\n", current, bt_backend());
        ran++;
    }
    if (!ran) { fprintf(stderr, "no such test case: %s\n", argc > 1 ? argv[1] : "(none)"); return 2; }
    return 0;
}
