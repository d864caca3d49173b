/* The allocation-failure walk (SQLite's method), written once for every test.
 *
 * A scenario runs again and again: the 1st braid allocation fails, then the
 * 2nd, the 3rd, … until a run completes without reaching the failing one.
 * After each run the walk checks that nothing crashed (it is still running),
 * nothing leaked (braid_test_alloc_outstanding() is back to where it was
 * before the first run), and the scenario answered cleanly: a run whose
 * allocation failed returned .want (the failure was absorbed, e.g. delivered
 * to a Deferred's errback; not with .must_fail) or a named BRAID_E* code
 * (with .enomem_only: BRAID_ENOMEM and nothing else); the run that reached
 * the end returned .want. A scenario
 * that owns its loop ends with bt_loop_destroy(), so every run passes the
 * loop's leak gate; with .loop (a loop the test keeps across runs) the walk
 * runs it .settle iterations after each run and checks that none of its
 * Deferreds is left alive.
 *
 *     static int scenario(void *arg) { ... return rc; }         // 0 or BRAID_E*
 *     bt_walk_result r = bt_alloc_walk(&(bt_walk){ .name = "framer", .body = scenario,
 *                                                  .enomem_only = true, .must_fail = true });
 *     BT_GE(r.errors, 5);      // the walk really went through several allocation sites
 *
 * The three steps: setup (injection off) makes what the run starts from,
 * body runs under injection, teardown (injection off) ends the run — frees
 * what setup made and checks the run's own results with BT_* (a failure
 * message names the walk and the allocation that failed). Each may use arg.
 * Who owns what: the walk owns nothing; setup/teardown own the state they
 * share with body through arg. */
#ifndef BRAID_TESTS_SUPPORT_WALK_H
#define BRAID_TESTS_SUPPORT_WALK_H

#include "../harness.h"

typedef struct bt_walk {
    const char *name;             /* names the walk in failure messages */
    void *arg;                    /* passed to setup, body and teardown */
    void (*setup)(void *arg);     /* before each run, injection off; NULL: none */
    int (*body)(void *arg);       /* the scenario, under injection: .want or a BRAID_E* code */
    void (*teardown)(void *arg, int rc, bool injected);   /* after each run, injection off; NULL: none */
    int want;                     /* what a run with no injected failure returns (default 0) */
    bool enomem_only;             /* the error a run returns is BRAID_ENOMEM, nothing else */
    bool must_fail;               /* a run whose allocation failed returns an error, never .want */
    bool warm_up;                 /* one plain run (must return .want) before the baseline: lazy
                                   * state that lives on (caches, TLS sessions) is made by it */
    braid_loop *loop;             /* a loop kept across runs: settled and checked after each */
    int settle;                   /* NOWAIT iterations of .loop after each run (default 3) */
    long max_runs;                /* the walk fails if not done after this many runs (default 10000) */
} bt_walk;

typedef struct bt_walk_result {
    long runs;                    /* runs made (the last, complete one included; warm-up not) */
    long injected;                /* runs in which the injected failure happened */
    long errors;                  /* of those, runs whose body returned an error code (not .want) */
} bt_walk_result;

bt_walk_result bt_alloc_walk(const bt_walk *w);

/* Is rc a negative code braid_strerror names (a system errno or a code of
 * a registered braid domain)? -9999 and friends are not. */
bool bt_is_error_code(int rc);

#endif
