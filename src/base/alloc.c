/* The replaceable allocator, with fault injection for tests.
 *
 * Every allocation in braid goes through braid_malloc/realloc/free. Tests ask
 * for the Nth allocation from now to fail (SQLite's method) and walk N = 1,
 * 2, ... through a scenario, checking that an error comes back and that
 * nothing leaks: braid_test_alloc_outstanding() counts live blocks. */
#include "base/base.h"
#include <stdatomic.h>
#include <braid/testing.h>
#include <stdlib.h>
#include <string.h>

static void *sys_malloc(void *ctx, size_t n) { (void)ctx; return malloc(n); }
static void *sys_realloc(void *ctx, void *p, size_t n) { (void)ctx; return realloc(p, n); }
static void sys_free(void *ctx, void *p) { (void)ctx; free(p); }

static braid_allocator g_alloc = { sys_malloc, sys_realloc, sys_free, NULL };
static atomic_long g_outstanding;     /* live blocks */
static atomic_long g_count;           /* allocations made */
static atomic_long g_fail_countdown;  /* >0: fail when it reaches 1 */
static atomic_bool g_fail_sticky;
static atomic_bool g_failed;

int braid_allocator_set(const braid_allocator *a) {
    if (atomic_load(&g_outstanding) != 0) return BRAID_EBUSY;
    if (a) {
        if (!a->malloc_fn || !a->realloc_fn || !a->free_fn) return BRAID_EINVAL;
        g_alloc = *a;
    } else {
        g_alloc = (braid_allocator){ sys_malloc, sys_realloc, sys_free, NULL };
    }
    return 0;
}

/* True if this allocation should fail by injection. */
static bool inject_failure(void) {
    long c = atomic_load_explicit(&g_fail_countdown, memory_order_relaxed);
    if (BRAID__LIKELY(c == 0)) return false;
    if (atomic_load(&g_failed) && atomic_load(&g_fail_sticky)) return true;
    c = atomic_fetch_sub(&g_fail_countdown, 1);
    if (c == 1) {
        atomic_store(&g_failed, true);
        if (atomic_load(&g_fail_sticky)) atomic_store(&g_fail_countdown, 1 << 30);
        return true;
    }
    if (c <= 0) atomic_store(&g_fail_countdown, 0);
    return false;
}

void *braid_malloc(size_t size) {
    if (inject_failure()) return NULL;
    void *p = g_alloc.malloc_fn(g_alloc.ctx, size ? size : 1);
    if (p) {
        atomic_fetch_add_explicit(&g_outstanding, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&g_count, 1, memory_order_relaxed);
    }
    return p;
}

void *braid_calloc(size_t n, size_t size) {
    if (size && n > SIZE_MAX / size) return NULL;
    void *p = braid_malloc(n * size);
    if (p) memset(p, 0, n * size);
    return p;
}

void *braid_realloc(void *ptr, size_t size) {
    if (!ptr) return braid_malloc(size);
    if (inject_failure()) return NULL;
    void *p = g_alloc.realloc_fn(g_alloc.ctx, ptr, size ? size : 1);
    if (p) atomic_fetch_add_explicit(&g_count, 1, memory_order_relaxed);
    return p;
}

void braid_free(void *ptr) {
    if (!ptr) return;
    atomic_fetch_sub_explicit(&g_outstanding, 1, memory_order_relaxed);
    g_alloc.free_fn(g_alloc.ctx, ptr);
}

/* A block parked by its owner where no code of the program can reach it (the
 * debug quarantine of freed Deferreds) is not "outstanding": leak checks
 * that compare counts before and after a scenario must not see the
 * quarantine fill up. Unpark before freeing or reusing it. */
void braid__alloc_park(long blocks) {
    atomic_fetch_sub_explicit(&g_outstanding, blocks, memory_order_relaxed);
}

char *braid_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *p = braid_malloc(n);
    if (p) memcpy(p, s, n);
    return p;
}

/* ---- test hooks (<braid/testing.h>) ---- */
void braid_test_fail_alloc_after(long n, bool sticky) {
    atomic_store(&g_failed, false);
    atomic_store(&g_fail_sticky, sticky);
    atomic_store(&g_fail_countdown, n > 0 ? n : 0);
}
bool braid_test_alloc_failed(void) { return atomic_load(&g_failed); }
long braid_test_alloc_outstanding(void) { return atomic_load(&g_outstanding); }
long braid_test_alloc_count(void) { return atomic_load(&g_count); }
void braid__alloc_reset_injection(void) { braid_test_fail_alloc_after(0, false); }
