/* Log lines carry the namespace of the module that wrote them on the
 * default sink (stderr): "braid[error] loop: ...". A user sink gets the
 * line as it was; braid_loop_log (the user's own lines) has no namespace. */
#include "harness.h"
#include <sys/wait.h>
#include <unistd.h>

/* Run fn in a child with stderr captured into out. */
static void capture_stderr(void (*fn)(void), char *out, size_t cap) {
    int p[2];
    BT_OK(pipe(p) == 0 ? 0 : -errno);
    pid_t pid = fork();
    BT_TRUE(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        fn();
        _exit(0);
    }
    close(p[1]);
    size_t n = 0;
    ssize_t r;
    while (n + 1 < cap && (r = read(p[0], out + n, cap - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(p[0]);
    int st;
    BT_EQ(waitpid(pid, &st, 0), pid);
    BT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

static void noop(braid_timer *t, void *arg) { (void)t; (void)arg; }

static void leaky_loop(void) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) _exit(2);
    braid_timer t;
    braid_timer_init(loop, &t, noop, NULL);
    braid_timer_start(&t, BRAID_SECONDS(5));
    if (braid_loop_free(loop) != BRAID_EBUSY) _exit(3);    /* logs through the loop module */
    braid_loop_log(loop, BRAID_LOG_WARN, "a user line");
    braid_timer_stop(&t);
    if (braid_loop_free(loop) < 0) _exit(4);
}

BT_TEST(default_sink_names_the_module) {
    char out[4096];
    capture_stderr(leaky_loop, out, sizeof out);
    BT_TRUE(strstr(out, "braid[error] loop: loop not destroyed: 1 timer(s) still active\n") != NULL);
    BT_TRUE(strstr(out, "braid[warn]: a user line\n") != NULL);
}

static char got[512];
static void cap(void *ctx, braid_log_level level, const char *msg) {
    (void)ctx; (void)level;
    snprintf(got, sizeof got, "%s", msg);
}

BT_TEST(user_sink_gets_the_line_alone) {
    braid_loop *loop;
    braid_loop_options o = { .log = cap };
    BT_OK(braid_loop_new(&o, &loop));
    braid_timer t;
    braid_timer_init(loop, &t, noop, NULL);
    BT_OK(braid_timer_start(&t, BRAID_SECONDS(5)));
    BT_ERR(braid_loop_free(loop), BRAID_EBUSY);
    BT_STREQ(got, "loop not destroyed: 1 timer(s) still active");
    braid_timer_stop(&t);
    BT_OK(braid_loop_free(loop));
}
