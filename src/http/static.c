/* Static files for the HTTP server: a prefix route whose handler maps the
 * rest of the path below a root directory.
 *
 * Path safety is layered: the path is percent-decoded once, and refused when
 * the decoding yields '/', '\\' or NUL (encoded separators), or a segment is
 * "." or ".."; the file is then opened with openat2(RESOLVE_BENEATH |
 * RESOLVE_NO_MAGICLINKS) relative to the root's descriptor, so no symlink
 * can lead out of the root. Where openat2 is missing (Linux < 5.6) the
 * opened file's real path (/proc/self/fd) must lie under the root's real
 * path. Every refusal answers 404: nothing tells a prober what exists
 * outside. Bodies leave with sendfile(2) where the transport allows it
 * (braid_http_request_respond_file).
 *
 * A user of the server like any other: a prefix route (whose argument the
 * server frees with it) and the answers of <braid/http.h>. */
#include "http/http_internal.h"
#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>
#ifdef __has_include
#if __has_include(<linux/openat2.h>)
#include <linux/openat2.h>
#define HS_HAVE_OPENAT2 1
#endif
#endif

typedef struct hs_static {
    int root_fd;
    char *root_real;            /* realpath of the root, for the fallback check */
} hs_static;

static int static_new(const char *root, hs_static **out) {
    char real[PATH_MAX];
    if (!realpath(root, real)) return -errno;
    int fd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return -errno;
    hs_static *st = braid_calloc(1, sizeof *st);
    if (!st || !(st->root_real = braid_strdup(real))) {
        braid_free(st);
        close(fd);
        return BRAID_ENOMEM;
    }
    st->root_fd = fd;
    *out = st;
    return 0;
}

static void static_free(void *arg) {
    hs_static *st = arg;
    close(st->root_fd);
    braid_free(st->root_real);
    braid_free(st);
}

static int hexval(char ch) {
    if (ch >= '0' && ch <= '9') return ch - '0';
    if ((ch | 0x20) >= 'a' && (ch | 0x20) <= 'f') return (ch | 0x20) - 'a' + 10;
    return -1;
}

/* Decode the URL path rest[0..n) into out as a relative path "a/b" (no
 * empty, "." or ".." segments). false if it must be refused. */
static bool safe_relative(const char *rest, size_t n, char *out, size_t cap) {
    size_t o = 0, seg_start = 0;
    for (size_t i = 0; i <= n; i++) {
        char ch;
        bool sep;
        if (i == n) {
            ch = 0;
            sep = true;
        } else if (rest[i] == '%') {
            if (i + 2 >= n) return false;
            int h = hexval(rest[i + 1]), l = hexval(rest[i + 2]);
            if (h < 0 || l < 0) return false;
            ch = (char)(h * 16 + l);
            i += 2;
            if (ch == '/' || ch == '\\' || ch == 0) return false;   /* encoded separators */
            sep = false;
        } else {
            ch = rest[i];
            if (ch == '\\') return false;
            sep = ch == '/';
        }
        if (sep) {
            size_t len = o - seg_start;
            if (len == 0) continue;                               /* "//" or leading '/' */
            if ((len == 1 && out[seg_start] == '.') ||
                (len == 2 && out[seg_start] == '.' && out[seg_start + 1] == '.'))
                return false;
            if (i == n) break;
            if (o + 1 >= cap) return false;
            out[o++] = '/';
            seg_start = o;
            continue;
        }
        if (o + 1 >= cap) return false;
        out[o++] = ch;
    }
    if (o && out[o - 1] == '/') o--;
    if (o == 0) { out[o++] = '.'; }
    out[o] = 0;
    return true;
}

/* Open rel below dirfd without leaving root. -errno on failure. */
static int open_beneath(hs_static *st, int dirfd, const char *rel) {
#ifdef HS_HAVE_OPENAT2
    struct open_how how = { .flags = O_RDONLY | O_CLOEXEC | O_NOCTTY,
                            .resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS };
    long fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
    if (fd >= 0) return (int)fd;
    if (errno != ENOSYS && errno != EPERM) return -errno;   /* EPERM: seccomp filters */
#endif
    int f = openat(dirfd, rel, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (f < 0) return -errno;
    char link[64], real[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", f);
    ssize_t n = readlink(link, real, sizeof real - 1);
    size_t rl = strlen(st->root_real);
    if (n < 0 || (size_t)n < rl || memcmp(real, st->root_real, rl) ||
        ((size_t)n > rl && real[rl] != '/' && strcmp(st->root_real, "/"))) {
        close(f);
        return -EXDEV;
    }
    return f;
}

static const char *content_type_of(const char *path) {
    static const struct { const char *ext, *type; } types[] = {
        { "html", "text/html; charset=utf-8" }, { "htm", "text/html; charset=utf-8" },
        { "txt", "text/plain; charset=utf-8" }, { "css", "text/css" },
        { "js", "text/javascript" }, { "json", "application/json" },
        { "png", "image/png" }, { "jpg", "image/jpeg" }, { "jpeg", "image/jpeg" },
        { "gif", "image/gif" }, { "svg", "image/svg+xml" }, { "ico", "image/x-icon" },
        { "pdf", "application/pdf" }, { "wasm", "application/wasm" }, { "xml", "application/xml" },
    };
    const char *dot = strrchr(path, '.'), *slash = strrchr(path, '/');
    if (dot && (!slash || dot > slash))
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            if (!strcasecmp(dot + 1, types[i].ext)) return types[i].type;
    return "application/octet-stream";
}

static const braid_http_header *req_header(const braid_http_request *req, const char *name) {
    size_t nl = strlen(name);
    for (size_t i = 0; i < req->num_headers; i++)
        if (req->headers[i].name_len == nl && !strncasecmp(req->headers[i].name, name, nl))
            return &req->headers[i];
    return NULL;
}

/* Parse a single "bytes=a-b" / "bytes=a-" / "bytes=-n" range against size.
 * 1: satisfiable (*off, *len set); 0: ignore the header (malformed or
 * several ranges: send the whole file); -1: unsatisfiable (416). */
static int parse_range(const char *v, size_t n, uint64_t size, uint64_t *off, uint64_t *len) {
    if (n < 7 || strncasecmp(v, "bytes=", 6)) return 0;
    v += 6;
    n -= 6;
    if (memchr(v, ',', n)) return 0;
    uint64_t a = 0, b = 0;
    size_t i = 0;
    bool have_a = false, have_b = false;
    while (i < n && v[i] >= '0' && v[i] <= '9') {
        if (a > (UINT64_MAX - 9) / 10) return 0;
        a = a * 10 + (uint64_t)(v[i++] - '0');
        have_a = true;
    }
    if (i >= n || v[i] != '-') return 0;
    i++;
    while (i < n && v[i] >= '0' && v[i] <= '9') {
        if (b > (UINT64_MAX - 9) / 10) return 0;
        b = b * 10 + (uint64_t)(v[i++] - '0');
        have_b = true;
    }
    if (i != n || (!have_a && !have_b)) return 0;
    if (!have_a) {                        /* suffix: the last b bytes */
        if (b == 0) return -1;
        if (size == 0) return -1;
        *len = b > size ? size : b;
        *off = size - *len;
        return 1;
    }
    if (have_b && b < a) return 0;
    if (a >= size) return -1;
    uint64_t end = have_b && b < size ? b : size - 1;
    *off = a;
    *len = end - a + 1;
    return 1;
}

static braid_deferred *static_handler(braid_http_request *req, void *arg) {
    hs_static *st = arg;
    char rel[PATH_MAX];
    if (!safe_relative(req->path + req->match_len, req->path_len - req->match_len, rel, sizeof rel)) {
        braid_http_request_respond(req, 404, "text/plain", "Not Found\n", 10);
        return NULL;
    }
    int fd = open_beneath(st, st->root_fd, rel);
    struct stat sb;
    if (fd >= 0 && fstat(fd, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        int ifd = open_beneath(st, fd, "index.html");
        close(fd);
        fd = ifd;
        if (fd >= 0 && fstat(fd, &sb) < 0) { close(fd); fd = -errno; }
        if (fd >= 0) strncat(rel, "/index.html", sizeof rel - strlen(rel) - 1);
    }
    if (fd < 0 || !S_ISREG(sb.st_mode)) {
        if (fd >= 0) close(fd);
        if (fd == -EACCES) braid_http_request_respond(req, 403, "text/plain", "Forbidden\n", 10);
        else braid_http_request_respond(req, 404, "text/plain", "Not Found\n", 10);
        return NULL;
    }
    char date[BRAID_HTTP_DATE_LEN + 1];
    braid_http_format_date(sb.st_mtime, date);
    braid_http_request_add_header(req, "Last-Modified", date);
    const braid_http_header *ims = req_header(req, "If-Modified-Since");
    if (ims && !req_header(req, "Range")) {
        time_t t = braid_http_parse_date(ims->value, ims->value_len);
        if (t != (time_t)-1 && sb.st_mtime <= t) {
            close(fd);
            braid_http_request_respond(req, 304, NULL, NULL, 0);
            return NULL;
        }
    }
    braid_http_request_add_header(req, "Accept-Ranges", "bytes");
    uint64_t size = (uint64_t)sb.st_size, off = 0, len = size;
    int status = 200;
    const braid_http_header *range = req_header(req, "Range");
    if (range) {
        int r = parse_range(range->value, range->value_len, size, &off, &len);
        char cr[80];
        if (r < 0) {
            close(fd);
            snprintf(cr, sizeof cr, "bytes */%llu", (unsigned long long)size);
            braid_http_request_add_header(req, "Content-Range", cr);
            braid_http_request_respond(req, 416, "text/plain", "Range Not Satisfiable\n", 22);
            return NULL;
        }
        if (r > 0) {
            status = 206;
            snprintf(cr, sizeof cr, "bytes %llu-%llu/%llu", (unsigned long long)off,
                     (unsigned long long)(off + len - 1), (unsigned long long)size);
            braid_http_request_add_header(req, "Content-Range", cr);
        }
    }
    braid_http_request_respond_file(req, status, content_type_of(rel), fd, off, len);
    return NULL;
}

int braid_http_server_static(braid_http_server *s, const char *prefix, const char *root_dir) {
    if (!s || !prefix || prefix[0] != '/' || !root_dir) return BRAID_EINVAL;
    hs_static *st;
    int rc = static_new(root_dir, &st);
    if (rc < 0) return rc;
    rc = braid__http_route_owned(s, "GET", prefix, BRAID_HTTP_ROUTE_PREFIX, static_handler, st, static_free);
    if (rc < 0) static_free(st);
    return rc;
}
