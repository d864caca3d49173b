/* Endpoint descriptions (Twisted's serverFromString/clientFromString
 * grammar): fields separated by ':', '\' escapes the next character, a field
 * is either key=value or positional. Parsing never allocates; every error
 * names the part it did not like. */
#include "base/base.h"
#include <braid/dgram.h>
#include <braid/endpoint.h>
#include "net/sockets.h"
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static const char *const endpoint_names[] = { "malformed endpoint description" };
BRAID__ERROR_DOMAIN(endpoint, "endpoint", BRAID_EBAD_ENDPOINT, BRAID_EBAD_ENDPOINT, endpoint_names);

#define MAX_FIELDS 16
#define FIELD_LEN 512

/* A numeric interface address ("" = any); an IPv6 one for tcp6. */
static bool numeric_interface(const char *val, bool v6) {
    braid_address a;
    if (!*val) return true;
    if (braid_address_from_numeric(val, 0, &a) < 0) return false;
    return !v6 || a.ss.ss_family == AF_INET6;
}

typedef struct fields {
    int n;
    char f[MAX_FIELDS][FIELD_LEN];
} fields;

static int bad(char *err, size_t errlen, const char *desc, const char *fmt, ...)
    BRAID_PRINTF(4, 5);
static int bad(char *err, size_t errlen, const char *desc, const char *fmt, ...) {
    if (err && errlen) {
        int k = snprintf(err, errlen, "endpoint '%s': ", desc ? desc : "(null)");
        if (k >= 0 && (size_t)k < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + k, errlen - (size_t)k, fmt, ap);
            va_end(ap);
        }
    }
    return BRAID_EBAD_ENDPOINT;
}

static int split(const char *desc, fields *fs, char *err, size_t errlen) {
    fs->n = 0;
    size_t len = 0;
    char *cur = fs->f[0];
    for (const char *p = desc;; p++) {
        if (*p == '\\') {
            if (!p[1]) return bad(err, errlen, desc, "trailing '\\'");
            p++;
        } else if (*p == ':' || *p == 0) {
            cur[len] = 0;
            fs->n++;
            if (*p == 0) return 0;
            if (fs->n == MAX_FIELDS) return bad(err, errlen, desc, "more than %d fields", MAX_FIELDS);
            cur = fs->f[fs->n];
            len = 0;
            continue;
        }
        if (len + 1 >= FIELD_LEN) return bad(err, errlen, desc, "field %d too long", fs->n + 1);
        cur[len++] = *p;
    }
}

static bool parse_int(const char *s, long lo, long hi, int base, long *out) {
    if (!*s) return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, base);
    if (*end || errno || v < lo || v > hi) return false;
    *out = v;
    return true;
}

static bool parse_seconds(const char *s, uint64_t *ns) {
    if (!*s) return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*end || errno || !(v > 0) || v > 1e9) return false;
    *ns = (uint64_t)(v * 1e9);
    return true;
}

static bool parse_bool(const char *s, bool *out) {
    if (!strcmp(s, "1") || !strcmp(s, "true") || !strcmp(s, "yes")) { *out = true; return true; }
    if (!strcmp(s, "0") || !strcmp(s, "false") || !strcmp(s, "no")) { *out = false; return true; }
    return false;
}

static bool copy(char *dst, size_t n, const char *src) {
    size_t l = strlen(src);
    if (l >= n) return false;
    memcpy(dst, src, l + 1);
    return true;
}

static int parse(const char *desc, braid_endpoint *ep, bool server, char *err, size_t errlen) {
    memset(ep, 0, sizeof *ep);
    ep->server = server;
    if (err && errlen) err[0] = 0;
    if (!desc || !*desc) return bad(err, errlen, desc, "empty description");
    fields fs;
    int rc = split(desc, &fs, err, errlen);
    if (rc < 0) return rc;
    const char *kind = fs.f[0];
    if (!strcmp(kind, "tcp")) ep->kind = BRAID_ENDPOINT_TCP;
    else if (!strcmp(kind, "tcp6")) ep->kind = BRAID_ENDPOINT_TCP6;
    else if (!strcmp(kind, "unix")) ep->kind = BRAID_ENDPOINT_UNIX;
    else if (!strcmp(kind, "fd")) {
        /* fd:N — a listening descriptor made elsewhere (socket activation) */
        if (!server) return bad(err, errlen, desc, "'fd' is a server endpoint only");
        if (fs.n != 2) return bad(err, errlen, desc, "want fd:N");
        const char *v = fs.f[1];
        if (!strncmp(v, "fileno=", 7)) v += 7;
        long n;
        if (!parse_int(v, 0, INT_MAX, 10, &n)) return bad(err, errlen, desc, "bad descriptor '%s'", v);
        ep->kind = BRAID_ENDPOINT_FD;
        ep->fd = (int)n;
        return 0;
    }
    else return bad(err, errlen, desc, "unknown endpoint type '%s' (want tcp, tcp6, unix or fd)", kind);
    bool is_unix = ep->kind == BRAID_ENDPOINT_UNIX;
    bool have_port = false, have_host = false, have_path = false;
    int npos = 0;
    for (int i = 1; i < fs.n; i++) {
        char *f = fs.f[i];
        char *eq = strchr(f, '=');
        const char *key, *val;
        if (!eq) {
            /* positional: tcp server PORT; tcp client HOST PORT; unix PATH */
            static const char *const tcp_server[] = { "port" };
            static const char *const tcp_client[] = { "host", "port" };
            static const char *const unix_pos[] = { "path" };
            const char *const *names = is_unix ? unix_pos : server ? tcp_server : tcp_client;
            int max = is_unix ? 1 : server ? 1 : 2;
            if (npos >= max) return bad(err, errlen, desc, "unexpected positional argument '%s'", f);
            key = names[npos++];
            val = f;
        } else {
            *eq = 0;
            key = f;
            val = eq + 1;
        }
        long v;
        if (!strcmp(key, "port") && !is_unix) {
            if (have_port) return bad(err, errlen, desc, "port given twice");
            if (!parse_int(val, server ? 0 : 1, 65535, 10, &v))
                return bad(err, errlen, desc, "bad port '%s'", val);
            ep->port = (int)v;
            have_port = true;
        } else if (!strcmp(key, "interface") && !is_unix && server) {
            if (!copy(ep->host, sizeof ep->host, val) ||
                !numeric_interface(val, ep->kind == BRAID_ENDPOINT_TCP6))
                return bad(err, errlen, desc, "bad interface '%s' (a numeric %saddress)", val,
                           ep->kind == BRAID_ENDPOINT_TCP6 ? "IPv6 " : "");
        } else if (!strcmp(key, "host") && !is_unix && !server) {
            if (have_host) return bad(err, errlen, desc, "host given twice");
            if (!*val || !copy(ep->host, sizeof ep->host, val))
                return bad(err, errlen, desc, "bad host '%s'", val);
            have_host = true;
        } else if (!strcmp(key, "backlog") && server) {
            if (!parse_int(val, 1, 65535, 10, &v)) return bad(err, errlen, desc, "bad backlog '%s'", val);
            ep->backlog = (int)v;
        } else if (!strcmp(key, "reuseport") && server && !is_unix) {
            if (!parse_bool(val, &ep->reuseport)) return bad(err, errlen, desc, "bad reuseport '%s'", val);
        } else if ((!strcmp(key, "path") || !strcmp(key, "address")) && is_unix) {
            if (have_path) return bad(err, errlen, desc, "path given twice");
            if (!*val || !copy(ep->path, sizeof ep->path, val))
                return bad(err, errlen, desc, "bad unix path '%s' (empty or longer than %zu)", val,
                           sizeof ep->path - 1);
            have_path = true;
        } else if (!strcmp(key, "mode") && is_unix && server) {
            if (!parse_int(val, 0, 07777, 8, &v)) return bad(err, errlen, desc, "bad mode '%s' (octal)", val);
            ep->mode = (int)v;
        } else if (!strcmp(key, "timeout") && !server) {
            if (!parse_seconds(val, &ep->timeout))
                return bad(err, errlen, desc, "bad timeout '%s' (seconds > 0)", val);
        } else if (!strcmp(key, "bindAddress") && !server && !is_unix) {
            char tmp[FIELD_LEN];
            if (!copy(tmp, sizeof tmp, val)) return bad(err, errlen, desc, "bad bindAddress");
            char *port = NULL;
            if (tmp[0] == '[') {
                char *close = strchr(tmp, ']');
                if (close && close[1] == ':') { port = close + 2; close[1] = 0; }
            } else {
                char *c = strchr(tmp, ':');
                if (c && !strchr(c + 1, ':')) { *c = 0; port = c + 1; }
            }
            long bp = 0;
            if ((port && !parse_int(port, 0, 65535, 10, &bp)) ||
                braid_address_from_numeric(tmp, 0, &(braid_address){ 0 }) < 0 ||
                !copy(ep->bind_host, sizeof ep->bind_host, tmp))
                return bad(err, errlen, desc, "bad bindAddress '%s'", val);
            ep->bind_port = (int)bp;
        } else {
            return bad(err, errlen, desc, "unknown parameter '%s' for a %s %s endpoint", key, kind,
                       server ? "server" : "client");
        }
    }
    if (is_unix && !have_path) return bad(err, errlen, desc, "missing unix path");
    if (!is_unix && !have_port) return bad(err, errlen, desc, "missing port");
    if (!is_unix && !server && !have_host) return bad(err, errlen, desc, "missing host");
    return 0;
}

int braid_endpoint_parse_server(const char *desc, braid_endpoint *ep, char *err, size_t errlen) {
    return parse(desc, ep, true, err, errlen);
}
int braid_endpoint_parse_client(const char *desc, braid_endpoint *ep, char *err, size_t errlen) {
    return parse(desc, ep, false, err, errlen);
}

static const braid_endpoint_type *type_named(const char *name, size_t len);

/* The TLS type of the registry, or a failed Deferred in *fail. */
static const braid_endpoint_type *tls_type(braid_loop *loop, const braid_endpoint *ep, bool server,
                                           braid_deferred **fail) {
    if (ep->kind != BRAID_ENDPOINT_TCP && ep->kind != BRAID_ENDPOINT_TCP6) {
        *fail = braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT,
                                    "an endpoint with .tls must be tcp or tcp6 (kind %d)", (int)ep->kind));
        return NULL;
    }
    const braid_endpoint_type *t = type_named("tls", 3);
    if (!t || !(server ? t->listen_typed : t->connect_typed)) {
        *fail = braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT,
            "TLS endpoint: the TLS module is not linked (call braid_tls_endpoints_register)"));
        return NULL;
    }
    return t;
}

braid_deferred *braid_endpoint_listen_typed(braid_loop *loop, const braid_endpoint *ep, braid_factory *f) {
    if (!ep || !f) return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "listen: no endpoint or factory"));
    if (ep->tls) {
        braid_deferred *d = NULL;
        const braid_endpoint_type *t = tls_type(loop, ep, true, &d);
        return t ? t->listen_typed(loop, ep, f) : d;
    }
    braid_listener *l = NULL;
    int rc;
    if (ep->kind == BRAID_ENDPOINT_FD) {
        rc = braid__fd_listen(loop, ep->fd, ep->accept_budget, f, &l);
        if (rc < 0) return braid_deferred_fail(loop, braid_failure_new(rc, "listen on fd %d", ep->fd));
    } else if (ep->kind == BRAID_ENDPOINT_UNIX) {
        braid__unix_listen_options o = { .path = ep->path, .mode = ep->mode, .backlog = ep->backlog,
                                         .accept_budget = ep->accept_budget };
        rc = braid__unix_listen(loop, &o, f, &l);
    } else if (ep->kind == BRAID_ENDPOINT_TCP || ep->kind == BRAID_ENDPOINT_TCP6) {
        braid__tcp_listen_options o = { .host = ep->host, .port = ep->port,
                                        .ipv6 = ep->kind == BRAID_ENDPOINT_TCP6,
                                        .backlog = ep->backlog, .reuseport = ep->reuseport,
                                        .accept_budget = ep->accept_budget };
        rc = braid__tcp_listen(loop, &o, f, &l);
    } else {
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT, "listen: unknown endpoint kind %d",
                                                           (int)ep->kind));
    }
    if (rc < 0) {
        return braid_deferred_fail(loop, braid_failure_new(rc, "listen on %s %s:%d", ep->kind == BRAID_ENDPOINT_UNIX ? "unix" : "tcp",
                                                  ep->kind == BRAID_ENDPOINT_UNIX ? ep->path : ep->host,
                                                  ep->port));
    }
    braid_deferred *d = braid_deferred_succeed(loop, l, NULL);
    if (!d) braid_listener_close(l);   /* braid_deferred_succeed only fails without memory */
    return d;
}

int braid_endpoint_listener(braid_deferred *d, braid_listener **out) {
    *out = NULL;
    if (!d) return BRAID_ENOMEM;
    braid_result r = { 0 };
    int rc = braid_deferred_take(d, &r);
    if (rc == BRAID_EAGAIN) {
        /* A registered kind that listens later: stop it, consume the result. */
        braid_deferred_cancel(d);
        if (braid_deferred_take(d, &r) < 0) r = (braid_result){ 0 };
    } else if (r.failure) {
        rc = r.failure->code < 0 ? r.failure->code : BRAID_EINVAL;
    } else {
        *out = r.value;
        r.value = NULL;
    }
    braid_result_drop(r);
    braid_deferred_unref(d);
    return rc;
}

/* The timeout convention of an options struct: 0 is the default,
 * BRAID_FOREVER no limit (what the net layer takes as "none"). */
static uint64_t connect_timeout(const braid_endpoint *ep) {
    return ep->timeout ? ep->timeout : BRAID_ENDPOINT_CONNECT_TIMEOUT;
}

braid_deferred *braid_endpoint_connect_typed(braid_loop *loop, const braid_endpoint *ep, braid_factory *f) {
    if (!ep || !f) return braid_deferred_fail(loop, braid_failure_new(BRAID_EINVAL, "connect: no endpoint or factory"));
    if (ep->kind == BRAID_ENDPOINT_FD)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT, "an fd endpoint only listens"));
    if (ep->tls) {
        braid_deferred *d = NULL;
        const braid_endpoint_type *t = tls_type(loop, ep, false, &d);
        return t ? t->connect_typed(loop, ep, f) : d;
    }
    if (ep->kind == BRAID_ENDPOINT_UNIX) return braid__unix_connect(loop, ep->path, connect_timeout(ep), f);
    if (ep->kind != BRAID_ENDPOINT_TCP && ep->kind != BRAID_ENDPOINT_TCP6)
        return braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT, "connect: unknown endpoint kind %d",
                                                           (int)ep->kind));
    braid__tcp_connect_options o = {
        .host = ep->host, .port = ep->port, .timeout = connect_timeout(ep),
        .bind_host = ep->bind_host[0] ? ep->bind_host : NULL, .bind_port = ep->bind_port,
        .family = ep->kind == BRAID_ENDPOINT_TCP6 ? AF_INET6 : 0 };
    return braid__tcp_connect(loop, &o, f);
}

/* ---- registered kinds ------------------------------------------------------------------ */
/* Pushed under the lock, read without it (a type is never removed). */
static braid_endpoint_type *types;   /* __atomic builtins */
static pthread_mutex_t types_lock = PTHREAD_MUTEX_INITIALIZER;

static bool builtin_kind(const char *name, size_t len) {
    static const char *const builtin[] = { "tcp", "tcp6", "unix", "fd" };
    for (size_t i = 0; i < sizeof builtin / sizeof builtin[0]; i++)
        if (strlen(builtin[i]) == len && !memcmp(builtin[i], name, len)) return true;
    return false;
}

int braid_endpoint_type_register(braid_endpoint_type *t) {
    if (!t || !t->name || !*t->name) return BRAID_EINVAL;
    if (builtin_kind(t->name, strlen(t->name))) return BRAID_EEXIST;
    pthread_mutex_lock(&types_lock);
    int rc = 0;
    for (braid_endpoint_type *r = types; r; r = r->next) {
        if (r == t) goto out;
        if (!strcmp(r->name, t->name)) { rc = BRAID_EEXIST; goto out; }
    }
    t->next = types;
    __atomic_store_n(&types, t, __ATOMIC_RELEASE);
out:
    pthread_mutex_unlock(&types_lock);
    return rc;
}

static const braid_endpoint_type *type_named(const char *name, size_t len) {
    for (const braid_endpoint_type *t = __atomic_load_n(&types, __ATOMIC_ACQUIRE); t; t = t->next)
        if (strlen(t->name) == len && !memcmp(t->name, name, len)) return t;
    return NULL;
}

/* The registered type named by desc's first field, or NULL. */
static const braid_endpoint_type *type_of(const char *desc) {
    if (!desc) return NULL;
    size_t len = strcspn(desc, ":\\");
    if (builtin_kind(desc, len)) return NULL;
    return type_named(desc, len);
}

static braid_deferred *no_side(braid_loop *loop, const char *desc, bool server) {
    return braid_deferred_fail(loop, braid_failure_new(BRAID_EBAD_ENDPOINT, "endpoint '%s': this kind has no %s",
                                                       desc, server ? "servers" : "clients"));
}

braid_deferred *braid_endpoint_listen(braid_loop *loop, const char *desc, braid_factory *f) {
    const braid_endpoint_type *t = type_of(desc);
    if (t) return t->listen ? t->listen(loop, desc, f) : no_side(loop, desc, true);
    braid_endpoint ep;
    char err[256];
    int rc = braid_endpoint_parse_server(desc, &ep, err, sizeof err);
    if (rc < 0) return braid_deferred_fail(loop, braid_failure_new(rc, "%s", err));
    return braid_endpoint_listen_typed(loop, &ep, f);
}

braid_deferred *braid_endpoint_connect(braid_loop *loop, const char *desc, braid_factory *f) {
    const braid_endpoint_type *t = type_of(desc);
    if (t) return t->connect ? t->connect(loop, desc, f) : no_side(loop, desc, false);
    braid_endpoint ep;
    char err[256];
    int rc = braid_endpoint_parse_client(desc, &ep, err, sizeof err);
    if (rc < 0) return braid_deferred_fail(loop, braid_failure_new(rc, "%s", err));
    return braid_endpoint_connect_typed(loop, &ep, f);
}
