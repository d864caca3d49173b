/* BRAID__ASSERT: debug builds check braid's invariants and abort naming
 * the condition, file and line (release builds compile them out). A ready
 * call or a posted node queued twice before it ran would make its queue a
 * cycle; the asserts on the queues catch it at the second insertion. */
#include "harness.h"
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#ifdef BRAID_DEBUG
/* Run fn in a child; it must abort, and its stderr must hold `want`. */
static void expect_assert(void (*fn)(void), const char *want) {
    int p[2];
    BT_EQ(pipe(p), 0);
    pid_t pid = fork();
    BT_TRUE(pid >= 0);
    if (pid == 0) {
        dup2(p[1], 2);
        close(p[0]);
        fn();
        _exit(0);
    }
    close(p[1]);
    char out[2048];
    size_t n = 0;
    ssize_t r;
    while (n + 1 < sizeof out && (r = read(p[0], out + n, sizeof out - 1 - n)) > 0) n += (size_t)r;
    out[n] = 0;
    close(p[0]);
    int st;
    BT_EQ(waitpid(pid, &st, 0), pid);
    BT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
    if (!strstr(out, want)) bt_fail(__FILE__, __LINE__, "stderr lacks \"%s\": %s", want, out);
}

static void nothing(void *arg) { (void)arg; }

static void soon_twice(void) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) _exit(2);
    static braid_soon node = { NULL, nothing, NULL };
    braid_loop_soon_node(loop, &node);
    braid_loop_soon_node(loop, &node);
}

static void post_twice(void) {
    braid_loop *loop;
    if (braid_loop_new(NULL, &loop) < 0) _exit(2);
    static braid_post node = { NULL, nothing, NULL };
    braid_loop_post_node(loop, &node);
    braid_loop_post_node(loop, &node);
}
#endif

BT_TEST(ready_call_queued_twice) {
#ifdef BRAID_DEBUG
    expect_assert(soon_twice, "braid: assertion failed: node->fn != NULL && node != loop->soon_tail (");
    expect_assert(soon_twice, "src/loop/loop.c:");
#else
    bt_skip("asserts are compiled out of release builds");
#endif
}

BT_TEST(posted_node_queued_twice) {
#ifdef BRAID_DEBUG
    expect_assert(post_twice, "braid: assertion failed: head != node (");
#else
    bt_skip("asserts are compiled out of release builds");
#endif
}
