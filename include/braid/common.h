/* braid/common.h — what every braid module shares: error codes, the
 * replaceable allocator, time units and the export macro.
 *
 * Errors are return values (docs/architecture.md, principle 7): every call returns 0 or a
 * negative errno-style code, and callbacks receive the same codes. System
 * errors are -errno (BRAID_ECANCELED == -ECANCELED, ...); braid's own
 * conditions live in -4000 ... -4999, where each module owns a range and
 * declares its codes in its own header (the shared ones are below).
 * braid_strerror() names either kind.
 *
 *     braid_loop *loop;
 *     int rc = braid_loop_new(NULL, &loop);
 *     if (rc < 0) fprintf(stderr, "braid: %s\n", braid_strerror(rc));
 *
 * Allocation: all of braid allocates through one replaceable allocator.
 * braid_allocator_set() must be called before any braid object exists (it is
 * process-wide because objects cross threads: a pool job allocated on the loop
 * thread is freed on a worker). Tests use braid_test_fail_alloc_after() from
 * <braid/testing.h> to make the Nth allocation fail.
 */
#ifndef BRAID_COMMON_H
#define BRAID_COMMON_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define BRAID_API __attribute__((visibility("default")))
#define BRAID_PRINTF(f, a) __attribute__((format(printf, f, a)))
#define BRAID_NODISCARD __attribute__((warn_unused_result))
#else
#define BRAID_API
#define BRAID_PRINTF(f, a)
#define BRAID_NODISCARD
#endif

/* ---- error codes ---------------------------------------------------------- */
#define BRAID_ENOMEM      (-ENOMEM)
#define BRAID_EINVAL      (-EINVAL)
#define BRAID_EBUSY       (-EBUSY)       /* not destroyed: handles still open */
#define BRAID_EEXIST      (-EEXIST)      /* a watcher already exists for this fd */
#define BRAID_ENOENT      (-ENOENT)
#define BRAID_ECANCELED   (-ECANCELED)   /* operation cancelled */
#define BRAID_ETIMEDOUT   (-ETIMEDOUT)   /* a timeout fired */
#define BRAID_ENOSYS      (-ENOSYS)      /* backend or feature not available */
#define BRAID_EAGAIN      (-EAGAIN)
#define BRAID_EPIPE       (-EPIPE)
#define BRAID_ECONNRESET  (-ECONNRESET)
#define BRAID_EMSGSIZE    (-EMSGSIZE)    /* input larger than a configured limit */
#define BRAID_EDEADLK     (-EDEADLK)     /* the call would wait for its own thread */

/* braid's range, -4000 ... -4999. Base, the loop and Deferreds own -4000
 * ... -4031: the codes here. Every other module declares its codes in its
 * own header and names them itself; the ranges are in docs/conventions.md.
 * (-4005, -4006 and -4009 ... -4014, in this range, are other modules'
 * codes numbered before the ranges existed: they keep their values.) */
#define BRAID_ERRBASE           (-4000)
#define BRAID_EALREADY_CALLED   (-4001)  /* a Deferred fired twice */
#define BRAID_EQUEUE_FULL       (-4002)  /* a bounded queue rejected work */
#define BRAID_EQUEUE_EMPTY      (-4003)  /* get from an empty queue that may not wait */
#define BRAID_EPROTO_INPUT      (-4004)  /* malformed input from a peer */
#define BRAID_EUNHANDLED        (-4007)  /* a failure nobody consumed */
#define BRAID_ESHUTDOWN         (-4008)  /* the object is shutting down */
#define BRAID_ELOCKED           (-4015)  /* lock/semaphore misuse */
#define BRAID_EFIRST_ERROR      (-4016)  /* combinator: first error of several */
#define BRAID_EALL_FAILED       (-4017)  /* race: every member failed */
#define BRAID_ERRLAST           (-4999)

/* The name of a code: a negative errno gives strerror's text, braid's own
 * codes the name their module gave them ("unknown braid error" for a code
 * nobody named); never NULL. Thread-safe. */
BRAID_API const char *braid_strerror(int code);

/* ---- error domains: each module names its own codes ---------------------------
 * A module owns a range of braid's codes and names them in a domain it
 * declares itself; braid_strerror looks a code up in the domains. braid's
 * own modules declare theirs where they are built (no central table). A
 * library built on braid (its own range: docs/conventions.md) registers
 * its domain once, before its codes can reach anyone — from its
 * initialisation, any thread (a program linked with the static libbraid
 * has the names of the modules it uses: a module's names sit in one of its
 * objects):
 *
 *     static const char *const names[] = { "redis: server replied with an error",
 *                                          "redis: protocol violation" };
 *     static braid_error_domain redis_errors = { "redis", -4900, -4901, names, NULL };
 *     braid_error_domain_register(&redis_errors);
 *
 * names[i] names code first - i (NULL: not named by this domain); the
 * domain is static storage and stays registered. */
typedef struct braid_error_domain {
    const char *module;
    int first, last;                      /* first >= code >= last, within braid's range */
    const char *const *names;             /* first - last + 1 entries */
    struct braid_error_domain *next;      /* private */
} braid_error_domain;
/* 0 (also when d is registered already), BRAID_EINVAL for a range outside
 * BRAID_ERRBASE ... BRAID_ERRLAST, BRAID_EEXIST if a code d names is named
 * by another domain. */
BRAID_API int braid_error_domain_register(braid_error_domain *d);

/* ---- time units (all braid times are uint64_t nanoseconds) ---------------- */
#define BRAID_NSEC(n)    ((uint64_t)(n))
#define BRAID_USEC(n)    ((uint64_t)(n) * 1000ull)
#define BRAID_MSEC(n)    ((uint64_t)(n) * 1000000ull)
#define BRAID_SECONDS(n) ((uint64_t)(n) * 1000000000ull)
#define BRAID_FOREVER    UINT64_MAX

/* ---- allocator --------------------------------------------------------------- */
typedef struct braid_allocator {
    void *(*malloc_fn)(void *ctx, size_t size);
    void *(*realloc_fn)(void *ctx, void *ptr, size_t size);
    void (*free_fn)(void *ctx, void *ptr);
    void *ctx;
} braid_allocator;

/* Replace the allocator (NULL restores malloc/realloc/free). Call it before any
 * braid object exists; returns BRAID_EBUSY if braid memory is outstanding. */
BRAID_API int braid_allocator_set(const braid_allocator *a);

/* braid's own allocation entry points, for modules and for user code that
 * hands memory to braid to free. malloc/realloc may return NULL (and do under
 * fault injection); every caller handles it. */
BRAID_API void *braid_malloc(size_t size);
BRAID_API void *braid_calloc(size_t n, size_t size);
BRAID_API void *braid_realloc(void *ptr, size_t size);
BRAID_API void braid_free(void *ptr);
BRAID_API char *braid_strdup(const char *s);

/* ---- logging ------------------------------------------------------------------ */
typedef enum braid_log_level {
    BRAID_LOG_DEBUG, BRAID_LOG_INFO, BRAID_LOG_WARN, BRAID_LOG_ERROR
} braid_log_level;
/* Where a loop's log lines go (braid_loop_options.log): msg is one line. */
typedef void (*braid_log_cb)(void *ctx, braid_log_level level, const char *msg);

#ifdef __cplusplus
}
#endif
#endif
