/* Host name resolution off the loop thread.
 *
 * getaddrinfo blocks (DNS), so a name is resolved on a small detached thread
 * per request, and the answer comes back through braid_loop_post_node. This
 * is the only place braid resolves names: the thread-pool module can later
 * move the blocking call onto a pool without touching the transports.
 * Numeric addresses never leave the loop thread (no thread, no allocation
 * beyond the result).
 *
 * The result is a braid__addrlist (owned by the result; its dtor frees it).
 * Cancelling the Deferred errbacks it at once with BRAID_ECANCELED; the
 * thread still finishes its getaddrinfo and its late answer is dropped. The
 * loop is held (braid_loop_hold) until the thread has reported back, so a
 * loop cannot be destroyed under a running resolver. */
#include "stream_internal.h"
#include "resolve.h"
#include <netdb.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

typedef struct resolve_job {
    braid_post post;
    braid_loop *loop;
    braid_deferred *d;
    char *host;
    int port;
    struct addrinfo hints;
    braid__addrlist *result;      /* filled by the thread */
    int gai_err, sys_err;
    bool cancelled;               /* loop thread only */
} resolve_job;

static braid__addrlist *list_new(size_t n) {
    braid__addrlist *l = braid_calloc(1, sizeof *l + n * sizeof(braid_address));
    return l;
}

static void *resolve_thread(void *arg) {
    resolve_job *j = arg;
    struct addrinfo *res = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", j->port);
    j->gai_err = getaddrinfo(j->host, port, &j->hints, &res);
    j->sys_err = errno;
    if (j->gai_err == 0) {
        size_t n = 0;
        for (struct addrinfo *a = res; a; a = a->ai_next) n++;
        j->result = list_new(n);
        if (j->result) {
            for (struct addrinfo *a = res; a; a = a->ai_next) {
                if (a->ai_addrlen > sizeof(struct sockaddr_storage)) continue;
                braid_address *dst = &j->result->addrs[j->result->n++];
                memcpy(&dst->ss, a->ai_addr, a->ai_addrlen);
                dst->len = a->ai_addrlen;
            }
        }
        freeaddrinfo(res);
    }
    braid_loop_post_node(j->loop, &j->post);
    return NULL;
}

static void job_free(resolve_job *j) {
    braid_free(j->result);
    braid_free(j->host);
    braid_free(j);
}

static void resolve_done(void *arg) {
    resolve_job *j = arg;
    braid_loop_release(j->loop);
    if (j->cancelled) { job_free(j); return; }
    braid_deferred *d = j->d;
    if (j->gai_err) {
        int code = j->gai_err == EAI_SYSTEM ? -j->sys_err
                 : j->gai_err == EAI_MEMORY ? BRAID_ENOMEM : BRAID_ENOENT;
        braid_deferred_errback(d, braid_failure_new(code, "resolving %s: %s", j->host,
                                                    gai_strerror(j->gai_err)));
    } else if (!j->result) {
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOMEM, "resolving %s", j->host));
    } else if (j->result->n == 0) {
        braid_deferred_errback(d, braid_failure_new(BRAID_ENOENT, "resolving %s: no address", j->host));
    } else {
        braid__addrlist *l = j->result;
        j->result = NULL;
        braid_deferred_callback(d, l, braid_free);
    }
    job_free(j);
}

static void resolve_cancel(braid_deferred *d, void *arg) {
    resolve_job *j = arg;
    (void)d;
    j->cancelled = true;     /* d is errbacked with BRAID_ECANCELED by the caller */
}

braid_deferred *braid__resolve(braid_loop *loop, const char *host, int port,
                               const struct addrinfo *hints) {
    int family = hints ? hints->ai_family : AF_UNSPEC;
    braid_address a;
    if (braid__numeric_address(host, port, family == AF_UNSPEC ? 0 : family, &a) == 0) {
        braid__addrlist *l = list_new(1);
        if (!l) return braid_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s", host));
        l->n = 1;
        l->addrs[0] = a;
        return braid_succeed(loop, l, braid_free);
    }
    if (port < 0 || port > 65535)
        return braid_fail(loop, braid_failure_new(BRAID_EINVAL, "port %d out of range", port));
    resolve_job *j = braid_calloc(1, sizeof *j);
    if (!j) return braid_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving %s", host));
    j->loop = loop;
    j->port = port;
    j->host = braid_strdup(host ? host : "");
    if (hints) j->hints = *hints;
    j->hints.ai_socktype = SOCK_STREAM;
    j->hints.ai_flags |= AI_ADDRCONFIG;
    j->hints.ai_canonname = NULL; j->hints.ai_addr = NULL; j->hints.ai_next = NULL;
    j->post.fn = resolve_done;
    j->post.arg = j;
    if (!j->host) { job_free(j); return braid_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving")); }
    j->d = braid_deferred_new_cancellable(loop, resolve_cancel, j);
    if (!j->d) { job_free(j); return braid_fail(loop, braid_failure_new(BRAID_ENOMEM, "resolving")); }
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    pthread_t th;
    braid_loop_hold(loop);
    int rc = pthread_create(&th, &attr, resolve_thread, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        braid_loop_release(loop);
        braid_deferred *d = j->d;
        j->cancelled = true;
        braid_deferred_errback(d, braid_failure_new(-rc, "resolving %s: no thread", host));
        job_free(j);
        return d;
    }
    return j->d;
}
