/* braid_strerror: names for -errno codes and for braid's own range, where
 * each module names its codes in an error domain of its own (base/base.h:
 * BRAID__ERROR_DOMAIN; <braid/common.h>: braid_error_domain_register).
 * This file names only the codes of the range base, the loop and Deferreds
 * share (-4000 ... -4031). */
#include "base/base.h"
#include <pthread.h>
#include <string.h>

static const char *const base_names[] = {
    [BRAID_ERRBASE - BRAID_EALREADY_CALLED] = "Deferred already called",
    [BRAID_ERRBASE - BRAID_EQUEUE_FULL]     = "queue full",
    [BRAID_ERRBASE - BRAID_EQUEUE_EMPTY]    = "queue empty",
    [BRAID_ERRBASE - BRAID_EPROTO_INPUT]    = "malformed input from peer",
    [BRAID_ERRBASE - BRAID_EUNHANDLED]      = "unhandled failure",
    [BRAID_ERRBASE - BRAID_ESHUTDOWN]       = "shutting down",
    [BRAID_ERRBASE - BRAID_ELOCKED]         = "lock misuse",
    [BRAID_ERRBASE - BRAID_EFIRST_ERROR]    = "first error",
    [BRAID_ERRBASE - BRAID_EALL_FAILED]     = "every raced Deferred failed",
    [31] = NULL,
};
BRAID__ERROR_DOMAIN(base, "base", BRAID_ERRBASE, BRAID_ERRBASE - 31, base_names);

/* ---- the domains ------------------------------------------------------------------------ */
#if defined(__ELF__) && defined(__GNUC__)
/* The linker makes these for a section whose name is a C identifier. */
extern const braid_error_domain *const __start_braid_errors[] __attribute__((weak, visibility("hidden")));
extern const braid_error_domain *const __stop_braid_errors[] __attribute__((weak, visibility("hidden")));
#endif

/* Registered at run time: pushed under the lock, read without it. */
static braid_error_domain *registered;   /* __atomic builtins */
static pthread_mutex_t register_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *name_in(const braid_error_domain *d, int code) {
    if (code > d->first || code < d->last) return NULL;
    const char *n = d->names[d->first - code];
    return n && *n ? n : NULL;
}

/* The domain naming code (other than skip), or NULL. */
static const braid_error_domain *namer(int code, const braid_error_domain *skip) {
#if defined(__ELF__) && defined(__GNUC__)
    if (__start_braid_errors)
        for (const braid_error_domain *const *p = __start_braid_errors; p < __stop_braid_errors; p++)
            if (*p != skip && name_in(*p, code)) return *p;
#endif
    for (const braid_error_domain *d = __atomic_load_n(&registered, __ATOMIC_ACQUIRE); d; d = d->next)
        if (d != skip && name_in(d, code)) return d;
    return NULL;
}

int braid_error_domain_register(braid_error_domain *d) {
    if (!d || !d->names || d->first > BRAID_ERRBASE || d->last < BRAID_ERRLAST || d->first < d->last)
        return BRAID_EINVAL;
    pthread_mutex_lock(&register_lock);
    int rc = 0;
    for (braid_error_domain *r = registered; r; r = r->next)
        if (r == d) goto out;                           /* already there */
    for (int code = d->first; code >= d->last; code--) {
        if (name_in(d, code) && namer(code, d)) {
            rc = BRAID_EEXIST;
            goto out;
        }
    }
    d->next = registered;
    __atomic_store_n(&registered, d, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&register_lock);
    return rc;
}

bool braid__error_domains_check(int *dup) {
    for (int code = BRAID_ERRBASE; code >= BRAID_ERRLAST; code--) {
        const braid_error_domain *d = namer(code, NULL);
        if (d && namer(code, d)) {
            if (dup) *dup = code;
            return false;
        }
    }
    return true;
}

const char *braid_strerror(int code) {
    if (code == 0) return "success";
    if (code <= BRAID_ERRBASE && code >= BRAID_ERRLAST) {
        const braid_error_domain *d = namer(code, NULL);
        return d ? name_in(d, code) : "unknown braid error";
    }
    if (code < 0 && code > BRAID_ERRBASE) {
        /* strerrordesc_np is thread-safe and never allocates (glibc >= 2.32). */
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 32))
        const char *s = strerrordesc_np(-code);
        return s ? s : "unknown error";
#else
        return strerror(-code);
#endif
    }
    return "unknown error";
}
