/* The resolver's result type (internal). */
#ifndef BRAID_STREAM_RESOLVE_H
#define BRAID_STREAM_RESOLVE_H

#include "net/transport_impl.h"

typedef struct braid__addrlist {
    size_t n;
    braid_address addrs[];
} braid__addrlist;

/* The pool and class where this loop resolves host names: the one given to
 * braid_loop_set_resolver_pool, else a pool of the loop's own made on first
 * use (up to 4 threads, no spinning) and destroyed with the loop. NULL on
 * allocation failure. Loop thread. */
struct braid_pool;
struct braid_pool *braid__resolver_pool(braid_loop *loop, int *cls);

#endif
