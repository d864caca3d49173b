/* Component internals shared by the files in src/component/ (never
 * installed). See <braid/component.h> for the model; this is how it is kept.
 *
 * A box is one struct whatever its kind. An inbox has storage (a ring that
 * grows by doubling up to the box's capacity, allocated on first use, so an
 * idle component costs no ring memory). Every box has `sink`, the box its
 * link leads to (NULL: none), the list of boxes whose links lead to it
 * (`sources`), and `real`: where its chain of links ends — the inbox whose
 * ring receives what is sent into it, or NULL for an outbox leading nowhere
 * (the null sink). Link and unlink recompute `real` for the box and all its
 * upstream; send reads only `real` (Axon 1.5's collapsed delivery).
 *
 * Scheduling: one braid__sched per loop (a loop key) holds the run queue of
 * callback components that have something to do and one braid_soon node
 * that runs the queue in a ready phase; nothing is queued for an idle
 * graph. Fiber components are woken by unparking their fiber. */
#ifndef BRAID_COMPONENT_INTERNAL_H
#define BRAID_COMPONENT_INTERNAL_H

#include "context/capture.h"
#include "fiber/park.h"
#include "loop/loop_module.h"
#include <braid/component.h>
#include <braid/fiber.h>
#include <braid/introspect.h>

static const char braid__log_ns[] = "component";

typedef struct braid__box braid__box;
struct braid__box {
    /* hot: what a send and a receive touch, in the first 64 bytes */
    braid__box *real;              /* collapsed destination (an inbox), NULL = null sink */
    braid_component *owner;
    braid_component_msg *ring;     /* inboxes: size slots (a power of two), or NULL */
    uint32_t size, head, len, cap; /* cap: the bound; size grows up to >= cap */
    braid__box *waiters;           /* inbox: outboxes waiting for a pop (wake-on-pop) */
    uint64_t received;             /* messages appended to this box's ring */
    braid_ctx **ctxs;              /* inboxes: each message's sender's context (a reference, or NULL), by slot */
    /* cold: links and names */
    bool inbox;
    bool dynamic;                  /* allocated on its own (a splitter's destination) */
    const char *name, *doc;
    braid__box *sink;              /* link destination, NULL if none */
    braid__box *sources;           /* boxes linked to this one ... */
    braid__box *next_source;       /* ... chained through this field */
    braid__box *wait_next, *wait_prev, *waiting_on;
};

enum braid__ckind {
    BRAID__C_CALLBACK,
    BRAID__C_FIBER,
    BRAID__C_COMPOSITE,
};

typedef struct braid__sched braid__sched;

/* Hooks a kind of component built in this folder adds (splitter, backplane
 * member). */
typedef struct braid__component_hooks {
    const char *kind;                     /* for introspection */
    void (*on_free)(braid_component *c);  /* before the boxes are unlinked */
    /* a child ended (instead of a composite's counting) */
    void (*on_child_end)(braid_component *parent, braid_component *child);
} braid__component_hooks;

struct braid_component {
    /* hot: what a run, a send and a receive touch come first */
    braid_component_run_fn run;
    void *state;
    braid__box **in, **out;
    uint32_t n_in, n_out;
    braid__sched *sched;
    bool queued, running, wake_pending, activated, done, free_pending, freeing;
    bool out_inline;                        /* out points into this allocation */
    enum braid__ckind kind;
    braid_component *run_prev, *run_next;
    struct braid_component_stats stats;
    braid_loop *loop;
    braid_ctx *msg_ctx;                     /* the last received message's context (a reference), current in the run */
    /* cold */
    char *name;
    const braid__component_hooks *hooks;
    braid_component_fiber_fn fiber_fn;
    void (*state_free)(void *state);
    uint32_t n_out_alloc;
    braid__box *boxes;                      /* the declared boxes, in this allocation */
    int result;
    braid_deferred **done_ds;               /* when_done waiters (producer refs) */
    size_t n_done_ds;
    /* composites */
    braid_component *parent, *first_child, *last_child, *next_sibling;
    char *child_name;                       /* a graphline child's name */
    size_t live_children;
    /* fibers */
    braid_fiber *fiber;
    braid_deferred *fiber_d;                /* consumer reference of the spawn Deferred */
    size_t stack_size;
    bool fiber_started, fiber_alive, parked;
    /* the loop's list of components, and its entry in the "components" section */
    braid_component *all_prev, *all_next;
    braid_introspect_node inode;
    void *impl;                             /* the kind's own data (splitter) */
};

struct braid__sched {
    braid_loop *loop;
    braid_component *head, *tail;           /* run queue */
    braid_soon soon;
    bool scheduled;
    braid_component *all;                   /* every live component */
    size_t count;
    braid_backplane *backplanes;
};

braid__sched *braid__component_sched(braid_loop *loop);
/* introspect.c: write c's entry of the loop's "components" section (a
 * braid_introspect_fn). */
void braid__component_describe(braid_json *j, void *arg);
/* Create a component of any kind (run/fiber_fn per kind) with the default
 * boxes plus opts' extra ones. */
int braid__component_create(braid_loop *loop, enum braid__ckind kind, const braid_component_options *opts,
                            braid_component **out);
/* Adopt child into composite (appended to its children). */
int braid__component_adopt(braid_component *parent, braid_component *child);
/* Link by box pointers (kind already checked). */
int braid__box_link(braid__box *src, braid__box *dst);
void braid__box_unlink(braid__box *src);
/* Append an outbox allocated on its own to c; returns it or NULL. */
braid__box *braid__component_add_outbox(braid_component *c, const char *name);
/* Unlink and free a dynamic outbox of c. */
void braid__component_remove_outbox(braid_component *c, braid__box *b);
/* Put a message in inbox ib's ring (the final inbox), with the current
 * context (captured); wakes its owner. */
int braid__box_put(braid__box *ib, braid_component_msg m);
/* Register ob (an outbox of a component) to be woken when ob->real pops. */
void braid__box_wait(braid__box *ob);
void braid__component_notify(braid_component *c);
void braid__component_end(braid_component *c, int code);
/* Start a threaded component's thread (0 for any other component). */
int braid__component_threaded_start(braid_component *c);

#endif
