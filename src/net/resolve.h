/* The resolver's result type (internal). */
#ifndef BRAID_STREAM_RESOLVE_H
#define BRAID_STREAM_RESOLVE_H

#include "net/transport_impl.h"

typedef struct braid__addrlist {
    size_t n;
    braid_address addrs[];
} braid__addrlist;

#endif
