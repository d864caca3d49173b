/* What the tuple space's files share (private to src/tuplespace/).
 *
 * tuple.c   fields and tuples: validation, one-allocation copies, matching,
 *           hashing, formatting
 * space.c   the space on the loop: index, waiters, leases, notify, capacity
 * wire.c    the wire protocol's codec (pure: no loop, no transport; fuzzed)
 * server.c  a space served over stream transports
 * client.c  the client on a loop; sync.c the blocking client */
#ifndef BRAID_TUPLESPACE_INTERNAL_H
#define BRAID_TUPLESPACE_INTERNAL_H

#include "base/base.h"
#include <braid/introspect.h>
#include <braid/tuplespace.h>

/* The namespace of this module's log lines (base/base.h). */
static const char braid__log_ns[] = "tuplespace";

/* ---- a tuple's allocation ----------------------------------------------------------
 * Every braid_tuple lives at the end of a ts_entry, one allocation with its
 * fields and their bytes: the space's bookkeeping for a stored or leased
 * tuple, unused in a copy handed out (braid_tuple_free frees the entry). */
typedef struct ts_hnode {
    struct ts_hnode *next;
    uint64_t hash;
} ts_hnode;

/* A chained hash table of intrusive nodes (tuple.c): buckets by key,
 * leases by id, a client's requests by id. */
typedef struct ts_htab {
    ts_hnode **slots;
    size_t mask, count;
} ts_htab;
int braid__ts_htab_init(ts_htab *h, size_t slots);      /* slots: a power of two */
void braid__ts_htab_insert(ts_htab *h, ts_hnode *n);     /* never fails (chains grow) */
void braid__ts_htab_remove(ts_htab *h, ts_hnode *n);

struct ts_bucket;
typedef struct ts_entry {
    struct ts_entry *prev, *next;   /* in its bucket's level list */
    struct ts_bucket *bucket;       /* while stored */
    uint64_t seq;                   /* order of out: FIFO within a priority */
    ts_hnode lnode;                 /* leased: in the lease table, hash = lease id */
    uint64_t deadline;              /* leased or returning: when it comes back */
    uint32_t heap_index;            /* in the lease heap, UINT32_MAX if not */
    uint8_t state;                  /* TS_LOOSE, TS_STORED, TS_LEASED, TS_RETURNING */
    size_t bytes;                   /* what it counts against max_bytes */
    uint64_t rowid;                 /* a durable space's row, 0 if none */
    void *owner;                    /* leased to a served connection (server.c) */
    struct ts_entry *oprev, *onext; /* in that owner's list */
    braid_tuple t;                  /* last: the fields and their bytes follow */
} ts_entry;

enum { TS_LOOSE = 0, TS_STORED, TS_LEASED, TS_RETURNING };

static inline ts_entry *braid__ts_entry_of(const braid_tuple *t) {
    return braid__container_of(t, ts_entry, t);
}

/* Validate fields: as a tuple (every field an actual) or as a template.
 * 0 or BRAID_EINVAL. */
int braid__ts_check(const braid_field *f, size_t n, bool tmpl);
/* Bytes of field data (strings, bytes, prefixes) a copy needs. */
size_t braid__ts_data_bytes(const braid_field *f, size_t n);
/* A new entry holding a copy of f[0..n) (strings NUL-terminated), or NULL. */
ts_entry *braid__ts_entry_new(const braid_field *f, size_t n);
/* Copy fields into dst (n of them) with their bytes at *data (advanced). */
void braid__ts_copy_fields(braid_field *dst, const braid_field *src, size_t n, char **data);
/* One field / a whole template against a tuple's fields. */
bool braid__ts_field_matches(const braid_field *tf, const braid_field *v);
bool braid__ts_matches(const braid_field *tmpl, size_t n, const braid_tuple *t);
/* The index key of a tuple's first field (with its arity) and equality of keys. */
uint64_t braid__ts_key_hash(uint32_t arity, const braid_field *f0);
bool braid__ts_key_eq(const braid_field *a, const braid_field *b);
/* What a tuple of these fields counts against max_bytes. */
size_t braid__ts_accounted(const braid_field *f, size_t n);

/* ---- leases held by a served connection (server.c) -------------------------------- */
/* Tie a lease to an owner (a server connection) so that its end puts
 * every lease it holds back at once. 0 or BRAID_ETUPLE_NOLEASE. */
int braid__ts_lease_set_owner(braid_tuplespace *ts, uint64_t lease, ts_entry **list_head);
/* Put back every lease in the owner's list (as a nack). */
void braid__ts_owner_release(braid_tuplespace *ts, ts_entry **list_head);
/* The connections serving a space (server.c keeps the list; the space
 * holds its head so that freeing the space can close them). */
struct ts_conn;
struct ts_conn **braid__ts_conns(braid_tuplespace *ts);
/* Close every connection of the space, forgetting it (server.c; called by
 * braid_tuplespace_free once the waiting calls have failed). */
void braid__ts_server_detach(braid_tuplespace *ts);
/* The connections serving the space as a JSON array (its introspection entry). */
void braid__ts_server_describe(braid_tuplespace *ts, braid_json *j);
/* The options every served connection of the space uses. */
braid_tuplespace_serve_options *braid__ts_serve_options(braid_tuplespace *ts);

/* ---- durability (store.c) ----------------------------------------------------------- */
typedef struct ts_store ts_store;
typedef int (*braid__ts_store_row_fn)(void *arg, uint64_t rowid, uint64_t seq, int32_t priority,
                                      uint32_t deliveries, const braid_field *f, size_t n);
/* 0, -EIO (err says why), BRAID_ENOMEM, BRAID_ENOSYS (built without SQLite). */
int braid__ts_store_open(const char *path, bool sync_full, ts_store **out, char *err, size_t errlen);
void braid__ts_store_close(ts_store *s);
/* Every row in out order; stops at each's first error. */
int braid__ts_store_load(ts_store *s, braid__ts_store_row_fn each, void *arg);
int braid__ts_store_insert(ts_store *s, const braid_tuple *t, uint64_t seq, uint64_t *rowid);
int braid__ts_store_delete(ts_store *s, uint64_t rowid);
int braid__ts_store_deliveries(ts_store *s, uint64_t rowid, uint32_t deliveries);

/* ---- the wire codec (wire.c) ------------------------------------------------------ */
#define TS_WIRE_VERSION 1
#define TS_DEFAULT_MAX_FRAME (16u * 1024 * 1024)

typedef enum ts_op {
    TS_OP_OUT = 1,        /* i32 priority, tuple */
    TS_OP_IN = 2,         /* u64 timeout, template */
    TS_OP_RD = 3,         /* u64 timeout, template */
    TS_OP_IN_LEASE = 4,   /* u64 timeout, u64 lease_ns, template */
    TS_OP_IN_ALL = 5,     /* u64 max, template */
    TS_OP_RD_ALL = 6,     /* u64 max, template */
    TS_OP_ACK = 7,        /* u64 lease */
    TS_OP_NACK = 8,       /* u64 lease, u64 delay */
    TS_OP_RENEW = 9,      /* u64 lease, u64 lease_ns */
    TS_OP_CANCEL = 10,    /* (the id of the request to cancel) */
    TS_OP_REPLY = 64,     /* i32 status; then per the request: nothing, a tuple, or a list */
} ts_op;

/* A decoded message. Fields point into the frame (borrowed). */
typedef struct ts_msg {
    uint8_t op;
    uint32_t id;
    int32_t priority;          /* OUT */
    int32_t status;            /* REPLY */
    uint64_t a, b;             /* timeout / max / lease, lease_ns / delay */
    uint32_t n;                /* fields */
    braid_field *f;            /* n fields (the decoder's array) */
    /* REPLY with a tuple or a list: the tuples' headers */
    uint32_t ntuples;
    const uint8_t *rest;       /* REPLY: the encoded tuples, for braid__ts_wire_tuples */
    size_t rest_len;
} ts_msg;

/* A growable output buffer. */
typedef struct ts_buf {
    uint8_t *p;
    size_t len, cap;
    bool failed;               /* an allocation failed: the content is incomplete */
} ts_buf;
void braid__ts_buf_free(ts_buf *b);
/* Begin a frame (reserve the length), end it (fill the length in). */
size_t braid__ts_wire_begin(ts_buf *b, uint8_t op, uint32_t id);
void braid__ts_wire_end(ts_buf *b, size_t start);
void braid__ts_put_u8(ts_buf *b, uint8_t v);
void braid__ts_put_u32(ts_buf *b, uint32_t v);
void braid__ts_put_u64(ts_buf *b, uint64_t v);
void braid__ts_put_fields(ts_buf *b, const braid_field *f, size_t n);
/* A tuple as a reply carries it: priority, deliveries, lease, fields. */
void braid__ts_put_tuple(ts_buf *b, const braid_tuple *t);

/* Decode one frame body (without its length prefix). fields: caller's
 * array of BRAID_TUPLE_MAX_FIELDS. 0, BRAID_ETUPLE_VERSION, BRAID_ETUPLE_PROTO. */
int braid__ts_wire_decode(const uint8_t *p, size_t len, braid_field *fields, ts_msg *m);
/* A whole buffer of fields (a tuple's: all actuals) into f; 0 or BRAID_ETUPLE_PROTO. */
int braid__ts_wire_fields(const uint8_t *p, size_t len, braid_field *f, uint32_t *n);
/* Decode the next tuple of a reply's rest into a new tuple (yours).
 * 0, BRAID_ETUPLE_PROTO, BRAID_ENOMEM. */
int braid__ts_wire_tuple(const uint8_t **p, size_t *len, braid_tuple **out);

#endif
