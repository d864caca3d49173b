/* braid/component.h — components à la Kamaelia: inboxes, outboxes, links.
 *
 * A component is a small piece of a program that talks to the rest only
 * through named boxes: it reads messages from its *inboxes* ("inbox" for
 * data, "control" for signals) and writes to its *outboxes* ("outbox",
 * "signal"). Links join an outbox to an inbox; composites (pipelines,
 * graphlines) wire children together and are components themselves. This
 * is Kamaelia's Axon (BBC R&D, 2004–2010; Michael Sparks, "Pythonic
 * concurrency", python-dev, 2005) done on braid's loop:
 *
 *     static int upper(braid_component *c, void *state) {
 *         braid_component_msg m;
 *         while (braid_component_recv(c, BRAID_COMPONENT_INBOX, &m) == 0) {
 *             shout(m.ptr);                                   // ours now
 *             if (braid_component_send(c, BRAID_COMPONENT_OUTBOX, m.ptr, m.free) < 0)
 *                 braid_component_msg_free(m);                // box full: drop it
 *         }
 *         return braid_component_handle_control(c);           // IDLE, or DONE
 *     }
 *     braid_component *kids[3], *pipe;
 *     braid_component_new(loop, read_lines, r, NULL, &kids[0]);
 *     braid_component_new(loop, upper, NULL, NULL, &kids[1]);
 *     braid_component_new(loop, write_lines, w, NULL, &kids[2]);
 *     braid_component_pipeline_new(loop, kids, 3, NULL, &pipe);  // owns kids now
 *     braid_component_activate(pipe);
 *     braid_loop_run(loop);                     // returns when the graph is idle
 *     braid_component_free(pipe);
 *
 * Running. A component runs in one of two ways:
 *  - a *callback* (braid_component_new): called in the loop's ready phase
 *    when any of its inboxes received a message, or it was woken, since it
 *    last ran. It drains what it wants (a batch: braid_component_recv_many)
 *    and returns BRAID_COMPONENT_IDLE (sleep until the next message or
 *    wake-up), BRAID_COMPONENT_AGAIN (run again soon, even without
 *    messages: a source producing data), BRAID_COMPONENT_DONE, or a negative
 *    code (ended with that error). Messages it leaves queued do not wake it
 *    again: drain the boxes, or ask to be woken (Kamaelia's pause()).
 *  - a *fiber* (braid_component_new_fiber): straight-line code with
 *    braid_component_recv_wait / braid_component_send_wait /
 *    braid_component_wait, which may also braid_fiber_await Deferreds (fiber.h).
 *    It ends when its function returns.
 * Only components with pending messages or wake-ups run: an idle graph
 * costs nothing and keeps no loop running (braid_loop_run returns when the
 * whole graph is idle and nothing else is pending). A burst of messages
 * through a chain runs in one ready phase; a phase runs at most
 * BRAID_COMPONENT_RUN_BUDGET components, then lets I/O and timers in.
 *
 * Messages are a pointer and the function that frees it
 * (braid_component_msg); sending moves ownership to the box, receiving moves
 * it to the receiver. Nothing is copied. A message is freed exactly once:
 * by whoever holds it, or by braid when it is still in a box when its
 * component is freed, or when it is sent on an outbox linked to nothing (a
 * null sink, counted as dropped). On any error return the message stays
 * with the caller. free may be NULL for messages nobody owns (constants).
 *
 * Links (braid_component_link) are collapsed when they are made, as in Axon
 * 1.5: every outbox in a chain points at the final inbox, however deeply
 * the composites nest, so a send is one append to that inbox — no postman,
 * no hop per link. Making or removing a link walks the chain (O(boxes
 * upstream)); sending never does. An outbox has at most one destination
 * (BRAID_EBOX_LINKED): fan out through a splitter or a backplane. An inbox
 * takes any number of sources.
 *
 * Flow control. Every inbox is bounded (its declared capacity, default
 * BRAID_COMPONENT_DEFAULT_CAPACITY): a send into a full box fails with
 * BRAID_EBOX_FULL and the sender keeps the message. It can ask to be woken
 * when the consumer pops one (braid_component_wake_on_pop; a fiber simply
 * calls braid_component_send_wait).
 *
 * Shutdown (Kamaelia's protocol). BRAID_COMPONENT_PRODUCER_FINISHED ("no more
 * data") and BRAID_COMPONENT_SHUTDOWN ("stop now") travel on control; a
 * component that gets one forwards it on signal and ends, so a pipeline
 * drains and stops in order. braid_component_handle_control does exactly
 * that. A composite ends when all its children have ended.
 *
 * Ownership: braid_component_new* give you the component, yours to free with
 * braid_component_free (at any time, ending it if it runs); a composite owns
 * its children and frees them. Box names and doc strings are not copied
 * (use literals). Threads: everything is loop-affine; callbacks and fibers
 * run on the loop's thread (a threaded component's function runs on its own
 * thread and uses only braid_component_thread_*). See docs/component.md.
 */
#ifndef BRAID_COMPONENT_H
#define BRAID_COMPONENT_H

#include <braid/common.h>
#include <braid/deferred.h>
#include <braid/loop.h>
#include <braid/protocol.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors: the component module's range is -4500 ... -4599 ---------------------- */
#define BRAID_EBOX_FULL        (-4500)  /* the destination inbox is at its capacity */
#define BRAID_EBOX_LINKED      (-4501)  /* the box already has a destination */
#define BRAID_ENO_BOX          (-4502)  /* no box of that name or index */
#define BRAID_ELINK_CYCLE      (-4503)  /* the link would make a box its own destination */
#define BRAID_ENOT_LINKED      (-4504)  /* unlink of a box that has no destination */
#define BRAID_ECOMPONENT_STATE (-4505)  /* not allowed in the component's state (activated twice, a child of another) */
#define BRAID_ENO_BACKPLANE    (-4506)  /* no backplane of that name on the loop */
#define BRAID_EMSG_NOT_SHARABLE (-4507) /* fan-out of a message that can be neither shared nor copied */

typedef struct braid_component braid_component;

/* A message: ptr, and the function that frees it (NULL: nothing to free). */
typedef struct braid_component_msg {
    void *ptr;
    void (*free)(void *ptr);
} braid_component_msg;
static inline void braid_component_msg_free(braid_component_msg m) {
    if (m.free) m.free(m.ptr);
}

/* The shutdown messages (free == NULL; compare pointers). */
typedef struct braid_component_signal_msg { const char *name; } braid_component_signal_msg;
BRAID_API extern const braid_component_signal_msg braid_component_signal_msgs[3];
#define BRAID_COMPONENT_PRODUCER_FINISHED ((void *)&braid_component_signal_msgs[0])
#define BRAID_COMPONENT_SHUTDOWN          ((void *)&braid_component_signal_msgs[1])
/* A carousel's request for its next child (on its "requestNext" outbox). */
#define BRAID_COMPONENT_NEXT              ((void *)&braid_component_signal_msgs[2])
static inline bool braid_component_is_shutdown_msg(const void *p) {
    return p == BRAID_COMPONENT_PRODUCER_FINISHED || p == BRAID_COMPONENT_SHUTDOWN;
}

/* Box indices: inboxes and outboxes are numbered separately; the defaults
 * come first, declared extra boxes follow in declaration order. */
enum {
    BRAID_COMPONENT_INBOX = 0,
    BRAID_COMPONENT_CONTROL = 1,
    BRAID_COMPONENT_OUTBOX = 0,
    BRAID_COMPONENT_SIGNAL = 1,
    BRAID_COMPONENT_DEFAULT_BOXES = 2,
};
#define BRAID_COMPONENT_DEFAULT_CAPACITY 1024u
#define BRAID_COMPONENT_RUN_BUDGET 4096u

/* What a callback returns. */
enum {
    BRAID_COMPONENT_IDLE = 0,   /* sleep until a message arrives or a wake-up */
    BRAID_COMPONENT_AGAIN = 1,  /* run again in a coming ready phase */
    BRAID_COMPONENT_DONE = 2,   /* ended (success) */
};

typedef int (*braid_component_run_fn)(braid_component *c, void *state);
/* A fiber component's body: 0 or a negative code, which ends the component. */
typedef int (*braid_component_fiber_fn)(braid_component *c, void *state);

/* An extra box: its name (unique among the component's inboxes, or among
 * its outboxes), a doc string, and for an inbox its capacity (0: the
 * component's default). */
typedef struct braid_component_box_spec {
    const char *name;
    const char *doc;
    uint32_t capacity;
} braid_component_box_spec;

typedef struct braid_component_options {
    const char *name;                          /* for introspection; copied; NULL: "component" */
    const braid_component_box_spec *inboxes;   /* extra inboxes, after inbox and control */
    size_t n_inboxes;
    const braid_component_box_spec *outboxes;  /* extra outboxes, after outbox and signal */
    size_t n_outboxes;
    uint32_t capacity;                         /* inbox capacity; 0: BRAID_COMPONENT_DEFAULT_CAPACITY */
    size_t stack_size;                         /* fiber components; 0: fiber.h's default */
    void (*state_free)(void *state);           /* called by braid_component_free; may be NULL */
} braid_component_options;

/* ---- creating, running, ending ------------------------------------------------------ */
/* A callback component. 0 or BRAID_ENOMEM / BRAID_EINVAL (run NULL, a
 * duplicate box name). It does nothing until activated. */
BRAID_API int braid_component_new(braid_loop *loop, braid_component_run_fn run, void *state,
                                  const braid_component_options *opts, braid_component **out);
/* A fiber component: fn(c, state) runs in its own fiber once activated. */
BRAID_API int braid_component_new_fiber(braid_loop *loop, braid_component_fiber_fn fn, void *state,
                                        const braid_component_options *opts, braid_component **out);
/* Start it: a callback component runs once in the next ready phase (so a
 * source can produce), a fiber starts, a composite activates its children.
 * 0, BRAID_ECOMPONENT_STATE if already activated, BRAID_ENOMEM (fiber). */
BRAID_API int braid_component_activate(braid_component *c);
/* Free it and everything still in its inboxes, unlinking all its boxes
 * (senders linked to it then drop into the null sink). A running fiber is
 * cancelled (its waits return BRAID_ECANCELED) and its memory goes when the
 * fiber returns. Not from inside its own callback: return DONE instead. A
 * composite frees its children. NULL is a no-op. */
BRAID_API void braid_component_free(braid_component *c);
/* A Deferred (one reference, yours) that fires when c ends: with NULL, or
 * a failure with the code c ended with. Already ended: already fired. NULL
 * when out of memory. */
BRAID_API braid_deferred *braid_component_when_done(braid_component *c);
BRAID_API bool braid_component_is_done(const braid_component *c);
/* The code c ended with (0 while running or on success). */
BRAID_API int braid_component_result(const braid_component *c);
/* Make c run (callback) or return from its wait (fiber) as if a message
 * had arrived. */
BRAID_API void braid_component_wake(braid_component *c);

BRAID_API const char *braid_component_name(const braid_component *c);
BRAID_API braid_loop *braid_component_loop(const braid_component *c);
BRAID_API void *braid_component_state(const braid_component *c);
/* Index of the inbox / outbox with that name, or BRAID_ENO_BOX. */
BRAID_API int braid_component_inbox(const braid_component *c, const char *name);
BRAID_API int braid_component_outbox(const braid_component *c, const char *name);

/* ---- sending and receiving ------------------------------------------------------------ */
/* Send on outbox `box`: one append to the final inbox the link chain leads
 * to, which wakes its component. 0: the message is gone (delivered, or
 * dropped if the outbox leads nowhere); BRAID_EBOX_FULL: the final inbox is
 * full; BRAID_ENO_BOX. On error the message stays yours. */
BRAID_API int braid_component_send(braid_component *c, int box, void *ptr, void (*free_fn)(void *));
/* Send msgs[0..n) in order, stopping at the first that does not fit;
 * returns how many went (the rest stay yours), or BRAID_ENO_BOX. The
 * consumer is woken once. */
BRAID_API int braid_component_send_many(braid_component *c, int box, const braid_component_msg *msgs,
                                        size_t n);
/* Put a message into c's inbox `box` from outside any component (a test,
 * an adapter): follows c's passthrough links like a send. Same returns. */
BRAID_API int braid_component_deliver(braid_component *c, int box, void *ptr, void (*free_fn)(void *));
/* Take the oldest message of inbox `box`: 0, BRAID_EAGAIN if it is empty,
 * BRAID_ENO_BOX. Popping from a full inbox wakes the producers waiting on it. */
BRAID_API int braid_component_recv(braid_component *c, int box, braid_component_msg *out);
/* Up to max messages at once (a batch); returns how many, or BRAID_ENO_BOX. */
BRAID_API int braid_component_recv_many(braid_component *c, int box, braid_component_msg *out, size_t max);
/* Messages waiting in inbox `box` (0 for a bad index). */
BRAID_API size_t braid_component_pending(const braid_component *c, int box);
/* Be woken (run, or return from a wait) when the inbox that outbox `box`
 * leads to pops a message, or the link changes. If it has room already,
 * the wake-up is immediate. 0 or BRAID_ENO_BOX. */
BRAID_API int braid_component_wake_on_pop(braid_component *c, int box);

/* The shutdown idiom for callbacks: pops control; on PRODUCER_FINISHED or
 * SHUTDOWN forwards it on signal and returns BRAID_COMPONENT_DONE;
 * otherwise frees what it popped and returns BRAID_COMPONENT_IDLE. Call it
 * after draining inbox, so data sent before the signal is handled first. */
BRAID_API int braid_component_handle_control(braid_component *c);

/* ---- fibers: straight-line waits (only inside the component's own fiber) ------------- */
/* Wait until a message arrives on any inbox or a wake-up (returns at once
 * if one came since the last wait). 0, BRAID_ETIMEDOUT, BRAID_ECANCELED (the
 * component is being freed), BRAID_ENOT_IN_FIBER. */
BRAID_API int braid_component_wait(braid_component *c, uint64_t timeout);
/* recv, waiting up to timeout for a message in `box`; BRAID_EAGAIN when
 * instead control has a message (box being another inbox), so a shutdown
 * is never waited past: check control then. */
BRAID_API int braid_component_recv_wait(braid_component *c, int box, braid_component_msg *out,
                                        uint64_t timeout);
/* send, waiting up to timeout for room (wake-on-pop). On error the message
 * stays yours. */
BRAID_API int braid_component_send_wait(braid_component *c, int box, void *ptr, void (*free_fn)(void *),
                                        uint64_t timeout);

/* ---- links ---------------------------------------------------------------------------- */
enum {
    BRAID_COMPONENT_LINK_NORMAL = 0,           /* src's outbox -> dst's inbox */
    BRAID_COMPONENT_LINK_PASSTHROUGH_IN = 1,   /* src's inbox -> dst's inbox (a composite to its child) */
    BRAID_COMPONENT_LINK_PASSTHROUGH_OUT = 2,  /* src's outbox -> dst's outbox (a child to its composite) */
};
/* Link box src_box of src to box dst_box of dst (names; kind as above).
 * Collapsed at once: every box upstream of src_box now sends straight to
 * the final inbox. 0, BRAID_ENO_BOX, BRAID_EBOX_LINKED (src_box already has a
 * destination), BRAID_ELINK_CYCLE, BRAID_EINVAL (different loops). Messages
 * already queued stay where they are. Producers waiting for room in the old
 * destination are woken to retry against the new one. */
BRAID_API int braid_component_link(braid_component *src, const char *src_box, braid_component *dst,
                                   const char *dst_box, int kind);
/* Remove the link leaving src_box (an outbox for NORMAL/PASSTHROUGH_OUT, an
 * inbox for PASSTHROUGH_IN); everything upstream of it then leads where
 * src_box leads now (nowhere, for an outbox). 0, BRAID_ENO_BOX,
 * BRAID_ENOT_LINKED. */
BRAID_API int braid_component_unlink(braid_component *src, const char *src_box, int kind);

/* ---- chassis -------------------------------------------------------------------------- */
/* A pipeline: children[i] outbox -> children[i+1] inbox and signal ->
 * control; its own inbox and control pass through to the first child, the
 * last child's outbox and signal to its own. Takes ownership of the n
 * children on success (on error they are untouched). It ends when all
 * children have ended. opts: name and capacity only. */
BRAID_API int braid_component_pipeline_new(braid_loop *loop, braid_component *const *children, size_t n,
                                           const braid_component_options *opts, braid_component **out);

/* A graphline: named children and a linkage table, in which the name
 * "self" means the graphline's own boxes: ("self", an inbox) -> (child, an
 * inbox) and (child, an outbox) -> ("self", an outbox) are passthroughs,
 * child -> child is a normal link. Extra own boxes come from opts. Takes
 * ownership of the children on success. Ends when all children have ended. */
typedef struct braid_component_graphline_child {
    const char *name;
    braid_component *component;
} braid_component_graphline_child;
typedef struct braid_component_linkage {
    const char *from, *from_box, *to, *to_box;
} braid_component_linkage;
BRAID_API int braid_component_graphline_new(braid_loop *loop, const braid_component_graphline_child *children,
                                            size_t n, const braid_component_linkage *links, size_t n_links,
                                            const braid_component_options *opts, braid_component **out);
/* A graphline's child by name (borrowed), or NULL. */
BRAID_API braid_component *braid_component_child(const braid_component *composite, const char *name);

/* A carousel (Kamaelia's Chassis/Carousel.py): each message on its "next"
 * inbox (index BRAID_COMPONENT_CAROUSEL_NEXT) is handed to factory, which
 * builds a new child (taking the message); the child replaces the current
 * one (freed), gets the carousel's inbox (passthrough; what queued while
 * there was no child is handed on) and its outbox leads to the
 * carousel's. When a child ends, the carousel sends BRAID_COMPONENT_NEXT on
 * "requestNext" (outbox BRAID_COMPONENT_CAROUSEL_REQUEST_NEXT). Shutdown on
 * its control goes to the current child; the carousel ends (forwarding it
 * on signal) once that child has ended. A factory error ends the carousel
 * with that code. */
typedef int (*braid_component_factory_fn)(braid_loop *loop, braid_component_msg msg, void *arg,
                                          braid_component **out);
enum { BRAID_COMPONENT_CAROUSEL_NEXT = 2, BRAID_COMPONENT_CAROUSEL_REQUEST_NEXT = 2 };
BRAID_API int braid_component_carousel_new(braid_loop *loop, braid_component_factory_fn factory, void *arg,
                                           const braid_component_options *opts, braid_component **out);

/* ---- Deferred adapters -------------------------------------------------------------- */
/* A component fed from a Deferred (takes d's consumer reference): when d
 * fires with a value it sends it on outbox (free = the result's dtor), then
 * PRODUCER_FINISHED on signal, and ends; a failure ends it with the
 * failure's code after SHUTDOWN on signal. Freed before d fires: d is
 * cancelled. */
BRAID_API int braid_component_new_from_deferred(braid_loop *loop, braid_deferred *d,
                                                const braid_component_options *opts, braid_component **out);
/* A component that fires a Deferred (*d, one reference, yours) with the
 * first message on its inbox (value = ptr, dtor = free) and ends; shutdown or
 * producer_finished on control first: BRAID_ESHUTDOWN; freed first:
 * BRAID_ECANCELED. */
BRAID_API int braid_component_new_to_deferred(braid_loop *loop, const braid_component_options *opts,
                                              braid_deferred **d, braid_component **out);

/* ---- threaded components ---------------------------------------------------------------
 * A component whose function runs in an OS thread of its own, for blocking
 * libraries (Kamaelia's threadedcomponent). It has the usual boxes on the
 * loop; between them and the thread are two bounded queues (the component's
 * inbox capacity each way). The function uses only the calls below, from
 * its own thread; it ends the component when it returns (its code as the
 * result; send SHUTDOWN / PRODUCER_FINISHED on signal yourself). While the
 * thread runs it holds the loop (braid_loop_hold). braid_component_free does
 * not wait for the thread: its waits return BRAID_ECANCELED at once, and
 * what is left is freed on the loop's thread when the function returns (so
 * the loop cannot be destroyed before that). Timeouts here are on the real
 * monotonic clock, not the loop's. */
typedef struct braid_component_thread braid_component_thread;
typedef int (*braid_component_thread_fn)(braid_component_thread *t, void *state);
BRAID_API int braid_component_new_threaded(braid_loop *loop, braid_component_thread_fn fn, void *state,
                                           const braid_component_options *opts, braid_component **out);
/* The component's thread only: the next message from any inbox, oldest
 * first (*box says which). 0, BRAID_ETIMEDOUT, BRAID_ECANCELED (freed).
 * The message's sender's context (<braid/context.h>) becomes the thread's
 * current context until the next receive or the function's return. */
BRAID_API int braid_component_thread_recv(braid_component_thread *t, int *box, braid_component_msg *out,
                                          uint64_t timeout);
/* The component's thread only: queue a message for outbox `box`, waiting
 * for room up to timeout. 0, BRAID_ETIMEDOUT, BRAID_ECANCELED, BRAID_ENO_BOX;
 * on error the message stays yours. It carries the thread's current
 * context, as a send on the loop does. */
BRAID_API int braid_component_thread_send(braid_component_thread *t, int box, void *ptr, void (*free_fn)(void *),
                                          uint64_t timeout);

/* ---- the network as a component (Kamaelia's ConnectedServer) -------------------------
 * A server gives every connection its own component: make(loop, peer, arg,
 * &handler) builds a handler per connection, which is wired to a
 * *connection* component standing for the socket — bytes read arrive on the
 * handler's inbox, what the handler sends on its outbox is written, as
 * chunks (braid_component_chunk, freed with braid_free). When the peer
 * closes, the handler gets PRODUCER_FINISHED on control; a SHUTDOWN or
 * PRODUCER_FINISHED the handler sends on signal closes the connection
 * (after writing what it sent before). A handler whose inbox is full
 * pauses reading from that peer until it pops (backpressure). Both
 * components are freed once the connection is gone and the handler has
 * ended. braid_component_server_factory is the protocol factory to listen
 * with (braid_endpoint_listen or _listen_typed); close the listeners before
 * braid_component_server_free, which aborts the connections still open
 * (run the loop once afterwards to let them finish). */
typedef struct braid_component_chunk {
    size_t len;
    unsigned char data[];
} braid_component_chunk;
/* A chunk holding a copy of len bytes of data (len 0 allowed); NULL when out
 * of memory. Send it with free = braid_free. */
BRAID_API braid_component_chunk *braid_component_chunk_new(const void *data, size_t len);

typedef int (*braid_component_connection_fn)(braid_loop *loop, const braid_address *peer, void *arg,
                                             braid_component **out);
typedef struct braid_component_server braid_component_server;
BRAID_API int braid_component_server_new(braid_loop *loop, braid_component_connection_fn make, void *arg,
                                         braid_component_server **out);
BRAID_API braid_factory *braid_component_server_factory(braid_component_server *s);
/* Connections whose components are alive. */
BRAID_API size_t braid_component_server_connections(const braid_component_server *s);
BRAID_API void braid_component_server_free(braid_component_server *s);

/* ---- fan-out: splitter, backplane, shared messages ------------------------------------ */
/* One message to many destinations needs either sharing or copying. A
 * *shared message* is a reference-counted block: braid_component_shared_new
 * returns its payload (size bytes, zeroed; dtor(payload) runs when the last
 * reference goes), sent with free = braid_component_shared_unref. Fan-out
 * takes a reference per destination: zero copy. Messages with free == NULL
 * fan out as they are; other messages are copied with the splitter's dup
 * (the copy is freed with the same free), or refused
 * (BRAID_EMSG_NOT_SHARABLE: dropped and counted) without one. */
BRAID_API void *braid_component_shared_new(size_t size, void (*dtor)(void *payload));
BRAID_API void *braid_component_shared_ref(void *payload);
BRAID_API void braid_component_shared_unref(void *payload);

typedef struct braid_component_splitter_options {
    braid_component_options base;              /* name, capacity */
    void *(*dup)(void *ptr);                   /* copy a message; NULL: none */
} braid_component_splitter_options;
/* A splitter (Kamaelia's PlugSplitter): every message on its inbox goes to
 * every destination added, in order; its own outbox gets it too when
 * linked. A destination that is full holds the splitter back
 * (wake-on-pop) — the slowest consumer paces the rest. */
BRAID_API int braid_component_splitter_new(braid_loop *loop, const braid_component_splitter_options *opts,
                                           braid_component **out);
/* Add / remove a destination: dst's inbox `box` (or, with
 * BRAID_COMPONENT_LINK_PASSTHROUGH_OUT, dst's outbox `box`, which then
 * leads wherever dst's outbox leads). */
BRAID_API int braid_component_splitter_add(braid_component *splitter, braid_component *dst, const char *box,
                                           int kind);
BRAID_API int braid_component_splitter_remove(braid_component *splitter, braid_component *dst,
                                              const char *box);

/* A backplane: a named publish/subscribe bus on the loop (Kamaelia's
 * Backplane, PublishTo, SubscribeTo). Publishers and subscribers join and
 * leave at any time. A publisher is a component whose inbox leads straight
 * into the bus (collapsed); a subscriber is a component whose outbox
 * receives everything published from when it joined: link it where the
 * messages should go. Shutting a publisher down does not stop the bus.
 * Freeing the backplane detaches its publishers (their messages drop) and
 * subscribers. Names are unique per loop (BRAID_EEXIST). */
typedef struct braid_backplane braid_backplane;
BRAID_API int braid_backplane_new(braid_loop *loop, const char *name, const braid_component_splitter_options *opts,
                                  braid_backplane **out);
BRAID_API void braid_backplane_free(braid_backplane *bp);
/* New components joined to the backplane called name (BRAID_ENO_BACKPLANE);
 * activate them like any component; free them to leave. */
BRAID_API int braid_backplane_publisher_new(braid_loop *loop, const char *name, braid_component **out);
BRAID_API int braid_backplane_subscriber_new(braid_loop *loop, const char *name, braid_component **out);

/* ---- statistics and introspection ----------------------------------------------------- */
struct braid_component_stats {
    uint64_t runs;       /* callback runs / fiber wake-ups */
    uint64_t received;   /* messages appended to its inboxes' storage */
    uint64_t sent;       /* messages it sent that were delivered */
    uint64_t dropped;    /* sent into a null sink */
    uint64_t full;       /* sends refused with BRAID_EBOX_FULL */
};
BRAID_API void braid_component_stats(const braid_component *c, struct braid_component_stats *out);

/* Components alive on the loop. */
BRAID_API size_t braid_component_count(braid_loop *loop);
/* The loop's components as JSON — each with its name, kind, state, parent,
 * inboxes (name, doc, depth, capacity), outboxes and links (where each box
 * leads and where the collapsed chain ends) — to draw the graph. *out is
 * yours (braid_free), NUL-terminated. 0 or BRAID_ENOMEM. */
BRAID_API int braid_component_introspect(braid_loop *loop, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
