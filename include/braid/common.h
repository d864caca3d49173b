/* braid/common.h — what every braid module shares: error codes, the
 * replaceable allocator, time units and the export macro.
 *
 * Errors are return values (docs/architecture.md, principle 7): every call returns 0 or a
 * negative errno-style code, and callbacks receive the same codes. System
 * errors are -errno (BRAID_ECANCELED == -ECANCELED, ...); braid's own
 * conditions live in a private range below -4000. braid_strerror() names
 * either kind.
 *
 *     braid_loop *loop;
 *     int rc = braid_loop_new(&loop, NULL);
 *     if (rc < 0) fprintf(stderr, "braid: %s\n", braid_strerror(rc));
 *
 * Allocation: all of braid allocates through one replaceable allocator.
 * braid_set_allocator() must be called before any braid object exists (it is
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

#define BRAID_ERRBASE           (-4000)
#define BRAID_EALREADY_CALLED   (-4001)  /* a Deferred fired twice */
#define BRAID_EQUEUE_FULL       (-4002)  /* a bounded queue rejected work */
#define BRAID_EQUEUE_EMPTY      (-4003)  /* get from an empty queue that may not wait */
#define BRAID_EPROTO_INPUT      (-4004)  /* malformed input from a peer */
#define BRAID_EBUFFER_LIMIT     (-4005)  /* a write buffer passed its hard cap */
#define BRAID_ENOT_IN_FIBER     (-4006)  /* an awaiting call outside a fiber */
#define BRAID_EUNHANDLED        (-4007)  /* a failure nobody consumed */
#define BRAID_ESHUTDOWN         (-4008)  /* the object is shutting down */
#define BRAID_EBAD_ENDPOINT     (-4009)  /* malformed endpoint description */
#define BRAID_ECONNECTION_DONE  (-4010)  /* connection closed cleanly */
#define BRAID_ECONNECTION_LOST  (-4011)  /* connection closed uncleanly */
#define BRAID_ETLS              (-4012)  /* TLS error (message says which) */
#define BRAID_EVERIFY           (-4013)  /* peer certificate verification failed */
#define BRAID_EHTTP             (-4014)  /* HTTP protocol error */
#define BRAID_ELOCKED           (-4015)  /* lock/semaphore misuse */
#define BRAID_EFIRST_ERROR      (-4016)  /* combinator: first error of several */
#define BRAID_EALL_FAILED       (-4017)  /* race: every member failed */
/* fiber streams: -4032..-4039 */
#define BRAID_EEOF              (-4032)  /* the stream ended before the requested data */
/* tls: -4064..-4071 */
#define BRAID_ETLS_HOSTNAME     (-4064)  /* peer certificate does not name the host */
#define BRAID_ETLS_EXPIRED      (-4065)  /* peer certificate expired or not yet valid */
#define BRAID_ETLS_UNKNOWN_CA   (-4066)  /* peer certificate not issued by a trusted CA */
#define BRAID_ETLS_NO_CERT      (-4067)  /* peer sent no certificate where one is required */
#define BRAID_ETLS_TIMEOUT      (-4068)  /* TLS handshake took too long */
#define BRAID_ETLS_RENEGOTIATION (-4069) /* peer attempted renegotiation (refused) */
#define BRAID_ETLS_ALERT        (-4070)  /* peer aborted with a fatal alert (e.g. rejected our certificate) */
#define BRAID_ETLS_TRUNCATED    (-4071)  /* stream ended mid-handshake or without close_notify */
#define BRAID_ERRLAST           (-4099)

/* The name of a code: a negative errno gives strerror's text, braid's own
 * codes their description; never NULL. Thread-safe. */
BRAID_API const char *braid_strerror(int code);

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
BRAID_API int braid_set_allocator(const braid_allocator *a);

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

#ifdef __cplusplus
}
#endif
#endif
