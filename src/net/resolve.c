/* Host name resolution off the loop thread.
 *
 * getaddrinfo blocks (DNS), so a name is resolved in a pool (<braid/pool.h>):
 * the loop's resolver pool — a small pool the loop makes on first use, or a
 * class of the user's own pool given to braid_resolver_set_pool — so
 * slow lookups neither block the loop nor starve other work. This is the
 * only place braid resolves names. Numeric addresses never leave the loop
 * thread (no thread, no allocation beyond the result).
 *
 * The result is a braid__addrlist (owned by the result; its dtor frees it).
 * Cancelling the Deferred takes a lookup that has not started out of the
 * queue; one already running finishes and its answer is dropped. The pool
 * job holds the loop until it has reported back, so a loop cannot be
 * destroyed under a running lookup.
 *
 * The resolver pool is per loop, kept under this module's loop key. */
#include "net/net_internal.h"
#include <braid/pool.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>

/* ---- the loop's resolver pool -------------------------------------------------------------- */
typedef struct resolver {
    braid_pool *pool;
    int cls;
    bool owned;                  /* made by braid__resolver_pool: destroyed with the loop */
} resolver;

static void resolver_free(braid_loop *loop, void *p) {
    (void)loop;
    resolver *r = p;
    /* No lookup is in flight (each holds the loop, and destroy refuses a
     * held loop): this only joins idle threads. */
    if (r->owned) {
        braid_pool_shutdown(r->pool, BRAID_POOL_CANCEL);
        braid_pool_free(r->pool);
    }
    braid_free(r);
}

static braid_loop_key resolver_key = BRAID_LOOP_KEY_INIT("resolver", resolver_free, NULL);

static resolver *resolver_get(braid_loop *loop) {
    resolver *r = braid__loop_data(loop, &resolver_key);
    if (r) return r;
    if (!(r = braid_calloc(1, sizeof *r))) return NULL;
    if (braid_loop_set_data(loop, &resolver_key, r) < 0) {
        braid_free(r);
        return NULL;
    }
    return r;
}

int braid_resolver_set_pool(braid_loop *loop, braid_pool *pool, int cls) {
    if (!loop || !pool || cls < 0 || (unsigned)cls >= braid_pool_classes(pool)) return BRAID_EINVAL;
    resolver *r = resolver_get(loop);
    if (!r) return BRAID_ENOMEM;
    if (r->owned) braid_pool_free(r->pool);
    r->pool = pool;
    r->cls = cls;
    r->owned = false;
    return 0;
}

braid_pool *braid__resolver_pool(braid_loop *loop, int *cls) {
    resolver *r = resolver_get(loop);
    if (!r) return NULL;
    if (!r->pool) {
        /* Lookups are slow and rare next to a spin budget: never spin. */
        braid_pool_options o = { .max_threads = 4, .name = "resolve", .flags = BRAID_POOL_NO_SPIN,
                                 .queue_limit = 1024 };
        braid_pool *pool;
        if (braid_pool_new(&o, &pool) < 0) return NULL;
        r->pool = pool;
        r->cls = 0;
        r->owned = true;
    }
    *cls = r->cls;
    return r->pool;
}

/* ---- lookups ------------------------------------------------------------------------------- */
/* One lookup: owned by the pool job (freed by req_free on the loop thread
 * once the worker is done with it, or if it never ran). */
typedef struct resolve_req {
    char *host;
    int port;
    struct addrinfo hints;
} resolve_req;

static braid__addrlist *list_new(size_t n) {
    braid__addrlist *l = braid_calloc(1, sizeof *l + n * sizeof(braid_address));
    return l;
}

static void req_free(void *arg) {
    resolve_req *r = arg;
    braid_free(r->host);
    braid_free(r);
}

/* On a pool worker: the blocking call, and the answer as the job's result. */
static braid_result resolve_work(void *arg) {
    resolve_req *r = arg;
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", r->port);
    int gai = getaddrinfo(r->host, port, &r->hints, &res);
    int sys = errno;
    if (gai) {
        int code = gai == EAI_SYSTEM ? -sys : gai == EAI_MEMORY ? BRAID_ENOMEM : BRAID_ENOENT;
        return braid_result_errf(code, "resolving %s: %s", r->host, gai_strerror(gai));
    }
    size_t n = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) n++;
    braid__addrlist *l = list_new(n);
    if (l) {
        for (struct addrinfo *a = res; a; a = a->ai_next) {
            if (a->ai_addrlen > sizeof(struct sockaddr_storage)) continue;
            braid_address *dst = &l->addrs[l->n++];
            memcpy(&dst->ss, a->ai_addr, a->ai_addrlen);
            dst->len = a->ai_addrlen;
        }
    }
    freeaddrinfo(res);
    if (!l) return braid_result_errf(BRAID_ENOMEM, "resolving %s", r->host);
    if (l->n == 0) {
        braid_free(l);
        return braid_result_errf(BRAID_ENOENT, "resolving %s: no address", r->host);
    }
    return braid_result_ok_owned(l, braid_free);
}

braid_deferred *braid__resolve(braid_loop *loop, const char *host, int port,
                               const struct addrinfo *hints) {
    int family = hints ? hints->ai_family : AF_UNSPEC;
    braid_address a;
    if (braid__numeric_address(host, port, family == AF_UNSPEC ? 0 : family, &a) == 0) {
        braid__addrlist *l = list_new(1);
        if (!l) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s", host));
        l->n = 1;
        l->addrs[0] = a;
        return braid_deferred_succeed(loop, l, braid_free);
    }
    if (port < 0 || port > 65535)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "port %d out of range", port));
    resolve_req *r = braid_calloc(1, sizeof *r);
    if (!r) return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s", host));
    r->port = port;
    r->host = braid_strdup(host ? host : "");
    if (!r->host) {
        braid_free(r);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s", host));
    }
    if (hints) r->hints = *hints;
    r->hints.ai_socktype = SOCK_STREAM;
    r->hints.ai_flags |= AI_ADDRCONFIG;
    r->hints.ai_canonname = NULL; r->hints.ai_addr = NULL; r->hints.ai_next = NULL;
    int cls;
    braid_pool *pool = braid__resolver_pool(loop, &cls);
    if (!pool) {
        req_free(r);
        return braid_deferred_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s: no pool", host));
    }
    return braid_pool_defer_full(loop, pool, cls, resolve_work, r, req_free);
}
