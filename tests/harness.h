/* braid's test harness.
 *
 * A test program holds cases declared with BT_TEST(name) (or BT_IO_TEST(name)
 * for cases CTest runs once per poller backend, with BRAID_BACKEND set).
 * `prog name` runs one case; `prog` runs them all in sequence; `prog --list`
 * lists them. Each CTest entry runs one case in its own process with a
 * timeout, so a hung case fails instead of hanging CI.
 *
 * Assertions print both operands:  BT_EQ(a, b), BT_NE, BT_LT, BT_LE, BT_GT,
 * BT_GE (integers), BT_STREQ, BT_TRUE, BT_PTR_EQ, BT_OK(rc) (rc >= 0, prints
 * braid_strerror). bt_skip("why") exits 77 (CTest: skipped).
 *
 * bt_loop_new() makes a loop on the backend under test (skips if it is not
 * available); bt_loop_destroy() is the leak gate: it fails the case if any
 * watcher, timer, signal, handle or posted call is still open. */
#ifndef BRAID_TEST_HARNESS_H
#define BRAID_TEST_HARNESS_H

#include <braid.h>
#include <braid/testing.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef void (*bt_fn)(void);
void bt_register(const char *name, bt_fn fn, int io);
_Noreturn void bt_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
_Noreturn void bt_skip(const char *why);

#define BT__REG(name, io)                                                    \
    static void bt_case_##name(void);                                        \
    __attribute__((constructor)) static void bt_reg_##name(void) {           \
        bt_register(#name, bt_case_##name, io);                              \
    }                                                                        \
    static void bt_case_##name(void)
#define BT_TEST(name) BT__REG(name, 0)
#define BT_IO_TEST(name) BT__REG(name, 1)

#define BT__CMP(a, b, op, fmt, type)                                         \
    do {                                                                     \
        type bt_a_ = (type)(a);                                              \
        type bt_b_ = (type)(b);                                              \
        if (!(bt_a_ op bt_b_))                                               \
            bt_fail(__FILE__, __LINE__, "%s %s %s: " fmt " vs " fmt, #a, #op, #b, bt_a_, bt_b_); \
    } while (0)
#define BT_EQ(a, b) BT__CMP(a, b, ==, "%" PRId64, int64_t)
#define BT_NE(a, b) BT__CMP(a, b, !=, "%" PRId64, int64_t)
#define BT_LT(a, b) BT__CMP(a, b, <, "%" PRId64, int64_t)
#define BT_LE(a, b) BT__CMP(a, b, <=, "%" PRId64, int64_t)
#define BT_GT(a, b) BT__CMP(a, b, >, "%" PRId64, int64_t)
#define BT_GE(a, b) BT__CMP(a, b, >=, "%" PRId64, int64_t)
#define BT_UEQ(a, b) BT__CMP(a, b, ==, "%" PRIu64, uint64_t)
#define BT_ULE(a, b) BT__CMP(a, b, <=, "%" PRIu64, uint64_t)
#define BT_UGE(a, b) BT__CMP(a, b, >=, "%" PRIu64, uint64_t)
#define BT_PTR_EQ(a, b) BT__CMP(a, b, ==, "%p", const void *)
#define BT_TRUE(x) do { if (!(x)) bt_fail(__FILE__, __LINE__, "expected true: %s", #x); } while (0)
#define BT_FALSE(x) do { if (x) bt_fail(__FILE__, __LINE__, "expected false: %s", #x); } while (0)
#define BT_STREQ(a, b)                                                       \
    do {                                                                     \
        const char *bt_a_ = (a), *bt_b_ = (b);                               \
        if (!bt_a_ || !bt_b_ || strcmp(bt_a_, bt_b_))                        \
            bt_fail(__FILE__, __LINE__, "%s == %s: \"%s\" vs \"%s\"", #a, #b, \
                    bt_a_ ? bt_a_ : "(null)", bt_b_ ? bt_b_ : "(null)");      \
    } while (0)
#define BT_OK(rc)                                                            \
    do {                                                                     \
        int bt_rc_ = (int)(rc);                                              \
        if (bt_rc_ < 0)                                                      \
            bt_fail(__FILE__, __LINE__, "%s failed: %d (%s)", #rc, bt_rc_, braid_strerror(bt_rc_)); \
    } while (0)
#define BT_ERR(rc, code)                                                     \
    do {                                                                     \
        int bt_rc_ = (int)(rc), bt_c_ = (int)(code);                         \
        if (bt_rc_ != bt_c_)                                                 \
            bt_fail(__FILE__, __LINE__, "%s: got %d (%s), want %d (%s)", #rc, bt_rc_, \
                    braid_strerror(bt_rc_), bt_c_, braid_strerror(bt_c_));   \
    } while (0)

/* The backend under test: $BRAID_BACKEND, or epoll. */
const char *bt_backend(void);
/* A loop on the backend under test (exit 77 if the backend is unavailable);
 * clock may be NULL for the real one. */
braid_loop *bt_loop_new(braid_clock *clock);
/* Leak gate: destroy must succeed. */
void bt_loop_destroy(braid_loop *loop);
/* Run the loop until *flag becomes nonzero; fails after max_iterations.
 * (More run-until helpers: support/run.h.) */
void bt_run_until(braid_loop *loop, volatile int *flag, int max_iterations);

/* What the case is doing now, printed by bt_fail after the case's name (a
 * helper running many rounds names the round: "walk core: allocation 7
 * failed"). bt_context(NULL) clears it. */
void bt_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
