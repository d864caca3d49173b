/* Parking a fiber (internal, never installed): published by the fiber
 * module for modules that block a fiber on something other than a Deferred
 * — fiber streams (src/fstream/) wait for their transport this way. */
#ifndef BRAID_FIBER_PARK_H
#define BRAID_FIBER_PARK_H

#include <braid/fiber.h>

/* Block the calling fiber until braid__fiber_unpark (returns its rc), the
 * timeout (BRAID_ETIMEDOUT; BRAID_FOREVER = none) or cancellation
 * (BRAID_ECANCELED). BRAID_ENOT_IN_FIBER outside a fiber. */
int braid__fiber_park(braid_loop *loop, uint64_t timeout_ns);
/* Wake a parked fiber (in the next ready phase) with rc; no-op otherwise. */
void braid__fiber_unpark(braid_fiber *f, int rc);

#endif
