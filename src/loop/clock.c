/* Clocks: the real monotonic clock and the fake clock tests advance by hand. */
#include "loop/loop_internal.h"
#include <time.h>

static uint64_t mono_now(braid_clock *c) {
    (void)c;
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static braid_clock g_monotonic = { mono_now, false };

braid_clock *braid_clock_monotonic(void) { return &g_monotonic; }

struct braid_fake_clock {
    braid_clock base;       /* first: braid_clock* converts back */
    uint64_t now;
};

static uint64_t fake_now(braid_clock *c) { return ((braid_fake_clock *)c)->now; }

int braid_fake_clock_new(uint64_t start, braid_fake_clock **out) {
    braid_fake_clock *c = braid_malloc(sizeof *c);
    if (!c) return BRAID_ENOMEM;
    c->base.now = fake_now;
    c->base.is_fake = true;
    c->now = start;
    *out = c;
    return 0;
}

void braid_fake_clock_free(braid_fake_clock *c) { braid_free(c); }
braid_clock *braid_fake_clock_base(braid_fake_clock *c) { return &c->base; }
void braid_fake_clock_advance(braid_fake_clock *c, uint64_t ns) {
    c->now = ns > UINT64_MAX - c->now ? UINT64_MAX : c->now + ns;
}
void braid_fake_clock_set(braid_fake_clock *c, uint64_t ns) {
    if (ns > c->now) c->now = ns;
}

int braid_loop_advance(braid_loop *loop, uint64_t ns) {
    if (!loop->clock->is_fake) return BRAID_EINVAL;
    braid_fake_clock *fc = (braid_fake_clock *)loop->clock;
    uint64_t target = ns > UINT64_MAX - fc->now ? UINT64_MAX : fc->now + ns;
    /* Step from deadline to deadline so each timer sees the clock at its own time. */
    for (;;) {
        uint64_t d = braid__timers_next_deadline(loop);
        if (d > target) break;
        if (d > fc->now) fc->now = d;
        int rc = braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
        if (rc < 0) return rc;
    }
    fc->now = target;
    int rc = braid_loop_run_once(loop, BRAID_LOOP_RUN_NOWAIT);
    return rc < 0 ? rc : 0;
}
