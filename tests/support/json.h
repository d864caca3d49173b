/* A strict JSON reader for tests that check a document braid wrote (the
 * introspection document, JSON log lines): parse, then walk it by key and
 * index with types checked.
 *
 *     bt_json *doc = bt_json_parse(text, len);        // NULL: not valid JSON
 *     const bt_json *loop = bt_json_get(doc, "loop");  // NULL: absent or not an object
 *     BT_EQ(bt_json_type(bt_json_get(loop, "backend")), BT_JSON_STR);
 *     bt_json_free(doc);
 *
 * Numbers are kept as doubles; strings are unescaped (\uXXXX below 0x80
 * only: enough for what braid writes). */
#ifndef BRAID_TESTS_SUPPORT_JSON_H
#define BRAID_TESTS_SUPPORT_JSON_H

#include <stdbool.h>
#include <stddef.h>

typedef enum { BT_JSON_NULL, BT_JSON_BOOL, BT_JSON_NUM, BT_JSON_STR, BT_JSON_ARR, BT_JSON_OBJ } bt_json_type_t;

typedef struct bt_json {
    bt_json_type_t type;
    double num;
    bool b;
    char *str;                     /* STR: the value; a member: its key in .key */
    char *key;
    struct bt_json *kids;          /* ARR / OBJ: the first element */
    struct bt_json *next;          /* the next sibling */
    size_t n;                      /* ARR / OBJ: number of elements */
} bt_json;

bt_json *bt_json_parse(const char *text, size_t len);
void bt_json_free(bt_json *v);
/* Member key of object v (NULL if v is not an object or has none). */
const bt_json *bt_json_get(const bt_json *v, const char *key);
/* Element i of array v (NULL if out of range or not an array). */
const bt_json *bt_json_at(const bt_json *v, size_t i);
/* The type, or -1 for NULL. */
int bt_json_type(const bt_json *v);

/* ---- the introspection document (<braid/introspect.h>) ---------------------------------- */
struct braid_loop;
/* braid_introspect_json(loop) parsed (the test fails if it is not JSON). */
bt_json *bt_introspect_doc(struct braid_loop *loop);
/* The entry of doc's section whose "name" is name (NULL: none). */
const bt_json *bt_json_named(const bt_json *doc, const char *section, const char *name);

#endif
