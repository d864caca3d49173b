/* braid introspection: the live state of a loop as one JSON document.
 *
 *     char *json; size_t len;
 *     if (braid_introspect_json(loop, &json, &len) == 0) {
 *         fwrite(json, 1, len, stdout);
 *         braid_free(json);
 *     }
 *
 * The document is an object:
 *
 *     { "braid": 1,                    schema version
 *       "time_ns": …,                  wall clock when made
 *       "loop": { "backend": "epoll", "iteration": …, "now_ns": …,
 *                 "handles": { "tcp": 2, "pool": 1, … }, "handles_open": …,
 *                 "watchers_open": …, "watchers_alive": …, "fd_table_size": …,
 *                 "timers_pending": …, "timers_alive": …, "soon_pending": … },
 *       "connections": [ { "kind": "tcp", "peer": "127.0.0.1:5000",
 *                          "buffered": 0, "written": …, "sent": …,
 *                          "paused": false, "closing": false }, … ],
 *       "pools": [ { "name": …, "threads": …, "idle": …, "queued": …,
 *                    "running": …, "completed": …, "rejected": …,
 *                    "cancelled": …, "wait_hist": [ … ], "run_hist": [ … ],
 *                    "hist_bucket_ns": [ … ] }, … ],
 *       "<section>": [ … ] }         one array per section registered
 *
 * Connections appear by themselves; a pool when it was made with
 * braid_pool_options.loop. braid's modules add sections of their own:
 * "stages", "components", "tuplespaces", "tuplespace_clients", "workers"
 * (worker-process pools) and, from libbraid-db, "databases"
 * (docs/introspect.md lists their members).
 * Other modules (and applications) add their own
 * entries with a node: each node writes one JSON value into the array of
 * its section. Stages and components that want to be drawn as a graph
 * (<braid/http.h>'s introspection page draws one) put them in sections
 * "stages" or "components", each entry an object with "name" and "links"
 * (an array of the names it sends to).
 *
 *     static void describe(braid_json *j, void *arg) {
 *         my_stage *s = arg;
 *         braid_json_object_begin(j);
 *         braid_json_kv_str(j, "name", s->name);
 *         braid_json_kv_u64(j, "queued", s->queued);
 *         braid_json_key(j, "links");
 *         braid_json_array_begin(j);
 *         braid_json_str(j, s->next->name);
 *         braid_json_array_end(j);
 *         braid_json_object_end(j);
 *     }
 *     braid_introspect_add(loop, &s->inode, "stages", describe, s);   // no allocation
 *     ...
 *     braid_introspect_remove(loop, &s->inode);                       // before s goes
 *
 * Cost: one pass over the loop's handles and the registered nodes; no
 * lock, nothing kept between calls (cheap enough to call every second).
 *
 * Threads: all of it on the loop's thread. */
#ifndef BRAID_INTROSPECT_H
#define BRAID_INTROSPECT_H

#include <braid/common.h>

#ifdef __cplusplus
extern "C" {
#endif

struct braid_loop;

/* ---- a JSON writer ---------------------------------------------------------------------
 * Appends to a growing buffer; commas are placed for you. Inside an object,
 * give each member's key first (braid_json_key, or the kv_ forms). A failed
 * allocation is remembered and reported by the call that finishes the
 * document; nesting is limited to 32 levels (deeper values become null). */
typedef struct braid_json braid_json;
BRAID_API void braid_json_object_begin(braid_json *j);
BRAID_API void braid_json_object_end(braid_json *j);
BRAID_API void braid_json_array_begin(braid_json *j);
BRAID_API void braid_json_array_end(braid_json *j);
BRAID_API void braid_json_key(braid_json *j, const char *key);
BRAID_API void braid_json_str(braid_json *j, const char *s);        /* NULL: null */
BRAID_API void braid_json_u64(braid_json *j, uint64_t v);
BRAID_API void braid_json_i64(braid_json *j, int64_t v);
BRAID_API void braid_json_f64(braid_json *j, double v);             /* not finite: null */
BRAID_API void braid_json_bool(braid_json *j, bool v);
BRAID_API void braid_json_null(braid_json *j);
BRAID_API void braid_json_kv_str(braid_json *j, const char *key, const char *s);
BRAID_API void braid_json_kv_u64(braid_json *j, const char *key, uint64_t v);
BRAID_API void braid_json_kv_i64(braid_json *j, const char *key, int64_t v);
BRAID_API void braid_json_kv_f64(braid_json *j, const char *key, double v);
BRAID_API void braid_json_kv_bool(braid_json *j, const char *key, bool v);

/* ---- sections ------------------------------------------------------------------------------ */
typedef void (*braid_introspect_fn)(braid_json *j, void *arg);   /* write one value */

typedef struct braid_introspect_node {     /* caller storage; private fields */
    struct braid_introspect_node *prev, *next;
    const char *section;
    braid_introspect_fn fn;
    void *arg;
} braid_introspect_node;

/* Add node to loop's document, in the array named section ("loop" and
 * "braid", "time_ns" are taken). section must outlive the node. Entries of
 * a section appear newest first. */
BRAID_API void braid_introspect_add(struct braid_loop *loop, braid_introspect_node *node,
                                    const char *section, braid_introspect_fn fn, void *arg);
/* Take it out again (a node never added, or removed, is ignored). */
BRAID_API void braid_introspect_remove(struct braid_loop *loop, braid_introspect_node *node);

/* The document, NUL-terminated, in *out (free it with braid_free); its
 * length without the NUL in *len (may be NULL). 0 or BRAID_ENOMEM. */
BRAID_API int braid_introspect_json(struct braid_loop *loop, char **out, size_t *len);

#ifdef __cplusplus
}
#endif
#endif
