/* A strict JSON reader for tests (support/json.h). Recursive descent over
 * the text; depth is limited to 64. */
#include "json.h"
#include "../harness.h"
#include <braid/introspect.h>
#include <stdlib.h>
#include <string.h>

typedef struct rd {
    const char *p, *end;
    int depth;
} rd;

static void ws(rd *r) {
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r')) r->p++;
}

static bt_json *value(rd *r);

static char *string(rd *r) {
    if (r->p >= r->end || *r->p != '"') return NULL;
    r->p++;
    size_t cap = 16, n = 0;
    char *s = malloc(cap);
    if (!s) return NULL;
    while (r->p < r->end && *r->p != '"') {
        unsigned char c = (unsigned char)*r->p++;
        if (c < 0x20) goto bad;
        if (c == '\\') {
            if (r->p >= r->end) goto bad;
            char e = *r->p++;
            switch (e) {
            case '"': case '\\': case '/': c = (unsigned char)e; break;
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'u': {
                if (r->end - r->p < 4) goto bad;
                char hex[5] = { r->p[0], r->p[1], r->p[2], r->p[3], 0 };
                char *endp;
                long u = strtol(hex, &endp, 16);
                if (*endp || u >= 0x80) goto bad;
                c = (unsigned char)u;
                r->p += 4;
                break;
            }
            default: goto bad;
            }
        }
        if (n + 2 > cap) {
            char *t = realloc(s, cap *= 2);
            if (!t) goto bad;
            s = t;
        }
        s[n++] = (char)c;
    }
    if (r->p >= r->end) goto bad;
    r->p++;
    s[n] = 0;
    return s;
bad:
    free(s);
    return NULL;
}

static bool lit(rd *r, const char *w) {
    size_t n = strlen(w);
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, w, n) != 0) return false;
    r->p += n;
    return true;
}

static bt_json *container(rd *r, bool obj) {
    bt_json *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    v->type = obj ? BT_JSON_OBJ : BT_JSON_ARR;
    r->p++;
    ws(r);
    char close = obj ? '}' : ']';
    if (r->p < r->end && *r->p == close) { r->p++; return v; }
    bt_json **tail = &v->kids;
    for (;;) {
        char *key = NULL;
        if (obj) {
            ws(r);
            if (!(key = string(r))) goto bad;
            ws(r);
            if (r->p >= r->end || *r->p++ != ':') { free(key); goto bad; }
        }
        bt_json *k = value(r);
        if (!k) { free(key); goto bad; }
        k->key = key;
        *tail = k;
        tail = &k->next;
        v->n++;
        ws(r);
        if (r->p < r->end && *r->p == ',') { r->p++; continue; }
        if (r->p < r->end && *r->p == close) { r->p++; return v; }
        goto bad;
    }
bad:
    bt_json_free(v);
    return NULL;
}

static bt_json *value(rd *r) {
    if (++r->depth > 64) return NULL;
    ws(r);
    bt_json *v = NULL;
    if (r->p >= r->end) goto out;
    char c = *r->p;
    if (c == '{' || c == '[') { v = container(r, c == '{'); goto out; }
    v = calloc(1, sizeof *v);
    if (!v) goto out;
    if (c == '"') {
        v->type = BT_JSON_STR;
        if (!(v->str = string(r))) { free(v); v = NULL; }
    } else if (lit(r, "true")) { v->type = BT_JSON_BOOL; v->b = true; }
    else if (lit(r, "false")) { v->type = BT_JSON_BOOL; }
    else if (lit(r, "null")) { v->type = BT_JSON_NULL; }
    else if (c == '-' || (c >= '0' && c <= '9')) {
        char buf[64];
        size_t n = 0;
        while (r->p < r->end && n < sizeof buf - 1 && strchr("+-0123456789.eE", *r->p)) buf[n++] = *r->p++;
        buf[n] = 0;
        char *endp;
        v->type = BT_JSON_NUM;
        v->num = strtod(buf, &endp);
        if (*endp || n == 0) { free(v); v = NULL; }
    } else {
        free(v);
        v = NULL;
    }
out:
    r->depth--;
    return v;
}

bt_json *bt_json_parse(const char *text, size_t len) {
    rd r = { text, text + len, 0 };
    bt_json *v = value(&r);
    ws(&r);
    if (v && r.p != r.end) { bt_json_free(v); return NULL; }
    return v;
}

void bt_json_free(bt_json *v) {
    while (v) {
        bt_json *next = v->next;
        bt_json_free(v->kids);
        free(v->str);
        free(v->key);
        free(v);
        v = next;
    }
}

const bt_json *bt_json_get(const bt_json *v, const char *key) {
    if (!v || v->type != BT_JSON_OBJ) return NULL;
    for (const bt_json *k = v->kids; k; k = k->next)
        if (!strcmp(k->key, key)) return k;
    return NULL;
}

const bt_json *bt_json_at(const bt_json *v, size_t i) {
    if (!v || v->type != BT_JSON_ARR) return NULL;
    const bt_json *k = v->kids;
    while (k && i--) k = k->next;
    return k;
}

int bt_json_type(const bt_json *v) { return v ? (int)v->type : -1; }

bt_json *bt_introspect_doc(braid_loop *loop) {
    char *text;
    size_t len;
    BT_OK(braid_introspect_json(loop, &text, &len));
    BT_EQ(strlen(text), len);
    bt_json *doc = bt_json_parse(text, len);
    if (!doc) bt_fail(__FILE__, __LINE__, "not JSON: %s", text);
    braid_free(text);
    return doc;
}

const bt_json *bt_json_named(const bt_json *doc, const char *section, const char *name) {
    const bt_json *a = bt_json_get(doc, section);
    for (size_t i = 0; a && i < a->n; i++) {
        const bt_json *e = bt_json_at(a, i);
        const bt_json *n = bt_json_get(e, "name");
        if (n && n->type == BT_JSON_STR && strcmp(n->str, name) == 0) return e;
    }
    return NULL;
}
